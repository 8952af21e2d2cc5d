//! The gate state feed's source: a versioned log of what changed in the embedded
//! stores, and the entries an offline gate keeps (see [`ridegate_core::gate_state`]).
//!
//! The stores announce every changed credential and identity ([`Observer`]); each
//! announcement gets the next version. A follower that holds version `v` is sent the
//! changes after `v` as a delta whose entries are read from the stores when it is sent
//! — the state now, never an older one — so a delta applied twice, or after a snapshot
//! that already held it, changes nothing. A follower too far behind (its version has
//! left the log, or belongs to another epoch) gets a snapshot, taken at the version
//! read before the stores are walked: whatever changes while they are walked comes
//! again as a delta.
//!
//! The epoch and version survive a clean stop (SIGTERM) through a mark in the data
//! directory, so gates resume without a snapshot after a routine restart; after a crash,
//! or without a data directory, a new epoch begins and followers take a snapshot.
//!
//! On the shared tier the stores are a copy of Redis kept by [`mirror`], and versions
//! are change-stream positions: the same on every instance, so a gate resumes from
//! whichever instance it reaches.
//!
//! [`Observer`]: ridegate_adapters::observe::Observer

pub mod mirror;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use ridegate_adapters::credential::ride_code::{IssuerSpec, VerifierLimits};
use ridegate_adapters::health::MemoryHealth;
use ridegate_adapters::ids::{CredentialId, IdentityId, random_bytes};
use ridegate_adapters::link::MemoryLinks;
use ridegate_adapters::settings::InvalidSetting;
use ridegate_core::clock::Clock;
use ridegate_core::decision::Rules;
use ridegate_core::gate_state::{CredentialTag, Entry, EntryStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The file that keeps the epoch and version across a clean stop.
const MARK_FILE: &str = "gate-state.json";

/// `[gate_state]`: the feed offline-capable gates follow.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateStateConfig {
    /// Changes kept for followers to resume from; one further behind gets a snapshot.
    pub log_capacity: usize,
    /// How often an idle follower is told its state is current.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Entries per snapshot chunk (13 bytes each).
    pub chunk_entries: usize,
    /// On the shared tier: serve the feed from a copy of every link and linked status
    /// in Redis, kept in each instance's memory (about 300 bytes per link, its status
    /// included). Off: `Follow` answers FAILED_PRECONDITION there.
    pub shared: bool,
}

impl GateStateConfig {
    /// Checks what the types alone do not.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for (field, zero) in [
            ("log_capacity", self.log_capacity == 0),
            ("heartbeat", self.heartbeat.is_zero()),
            ("chunk_entries", self.chunk_entries == 0),
        ] {
            if zero {
                return Err(InvalidSetting {
                    field,
                    problem: "must be more than 0",
                });
            }
        }
        Ok(())
    }
}

impl Default for GateStateConfig {
    fn default() -> Self {
        Self {
            log_capacity: 262_144,
            heartbeat: Duration::from_secs(1),
            chunk_entries: 65_536,
            shared: true,
        }
    }
}

/// What changed: the entries to send are read from the stores when a delta is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A credential was linked, relinked or unlinked.
    Credential(CredentialId),
    /// An identity's status changed: every credential linked to it.
    Identity(IdentityId),
    /// The policy or the issuers' keys changed.
    Config,
}

#[derive(Default)]
struct Log {
    version: u64,
    /// Every change after this version is in `changes`: a follower at `floor` or later
    /// can be brought on by deltas.
    floor: u64,
    /// `(version, change)`, oldest first; versions rise, not always by one.
    changes: VecDeque<(u64, Change)>,
}

impl Log {
    /// A log that knows nothing before `version`.
    fn at(version: u64) -> Self {
        Self {
            version,
            floor: version,
            changes: VecDeque::new(),
        }
    }

    fn resumable(&self, from_version: u64) -> bool {
        (self.floor..=self.version).contains(&from_version)
    }
}

/// The stores a feed reads: the embedded ones, or a copy of the shared tier.
#[derive(Debug, Clone, Default)]
pub struct Stores {
    /// The links.
    pub links: Arc<MemoryLinks>,
    /// The statuses.
    pub health: Arc<MemoryHealth>,
}

/// What a gate needs besides entries (the `config_json` of the feed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateConfig {
    /// The decision rules (`[policy]`).
    pub rules: Rules,
    /// The ride-code issuers: their public keys and checks.
    pub issuers: Vec<IssuerSpec>,
    /// The ride-code limits.
    pub limits: VerifierLimits,
    /// The credential key, 32 hex characters.
    pub credential_key: String,
}

/// A snapshot's entries and the version they are current at.
pub struct Snapshot {
    /// The feed's epoch.
    pub epoch: u64,
    /// The version it was taken at.
    pub version: u64,
    /// The configuration document.
    pub config_json: Arc<String>,
    /// Every linked credential's entry, encoded.
    pub entries: Vec<u8>,
}

/// The changes after a version, as a follower is sent them.
#[derive(Debug, Default)]
pub struct Delta {
    /// The last version it covers.
    pub version: u64,
    /// Entries to set, encoded.
    pub set: Vec<u8>,
    /// Tags no longer linked, encoded.
    pub removed: Vec<u8>,
    /// The configuration, when it changed.
    pub config_json: Option<Arc<String>>,
}

/// The feed's source over the embedded link and status stores, or a copy of the shared
/// tier's.
pub struct GateStateFeed {
    epoch: AtomicU64,
    stores: ArcSwap<Stores>,
    /// Whether the stores are known to be current: heartbeats tell followers so only
    /// then (a copy of a shared tier that is down, or being loaded, is not).
    live: watch::Sender<bool>,
    /// On the shared tier, the hash of Redis's epoch marker: the epoch is it and the
    /// configuration together, the same on every instance configured alike.
    shared_base: Option<AtomicU64>,
    clock: Clock,
    config_json: ArcSwap<String>,
    gate_config: Mutex<GateConfig>,
    log: Mutex<Log>,
    version: watch::Sender<u64>,
    settings: GateStateConfig,
    mark: Option<PathBuf>,
    /// Snapshots taken (each one walked the stores).
    snapshots: AtomicU64,
    /// The last snapshot, shared by every follower that needs one while deltas can
    /// still follow it and a follower still holds it (after a new epoch, every gate of a
    /// city asks at once); the lock also keeps two walks from running at once.
    last_snapshot: Mutex<Weak<Snapshot>>,
}

impl std::fmt::Debug for GateStateFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GateStateFeed(epoch {}, version {})", self.epoch(), self.current())
    }
}

/// The epoch and version kept over a clean stop, with the configuration gates were
/// sent: if it differs at the next start, gates need a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct Mark {
    epoch: u64,
    version: u64,
    config: String,
}

impl GateStateFeed {
    /// A feed over `links` and `health`, listening to their changes from now on. With a
    /// data directory, the epoch and version of a clean stop are taken up when nothing
    /// changed unannounced since (`unchanged`: no link ended at the restore; the same
    /// configuration) — and the mark removed, so a crash from here on starts a new
    /// epoch.
    pub fn start(
        stores: Stores,
        config: GateConfig,
        settings: GateStateConfig,
        data_dir: Option<&Path>,
        unchanged: bool,
        clock: Clock,
    ) -> Arc<Self> {
        let mark = data_dir.map(|dir| dir.join(MARK_FILE));
        let kept = mark
            .as_deref()
            .and_then(take_mark)
            .filter(|m| unchanged && m.config == encode_config(&config));
        let (epoch, version) = match kept {
            Some(Mark { epoch, version, .. }) => (epoch, version),
            // Never 0: a follower without state says 0.
            None => (u64::from_le_bytes(random_bytes::<8>()) | 1, 0),
        };
        let feed = Self::new(stores, config, settings, mark, None, clock);
        feed.reload(feed.stores(), epoch, version);
        feed.live.send_replace(true);
        let weak: Weak<Self> = Arc::downgrade(&feed);
        let stores = feed.stores();
        stores.links.changes().set({
            let weak = weak.clone();
            move |credential| {
                if let Some(feed) = weak.upgrade() {
                    feed.record(Change::Credential(credential));
                }
            }
        });
        stores.health.changes().set(move |identity| {
            if let Some(feed) = weak.upgrade() {
                feed.record(Change::Identity(identity));
            }
        });
        feed
    }

    /// A feed that is not live until [`mirror`] has loaded a copy of the shared tier
    /// and [reloaded](Self::reload) it.
    pub fn for_shared_tier(config: GateConfig, settings: GateStateConfig, clock: Clock) -> Arc<Self> {
        Self::new(
            Stores::default(),
            config,
            settings,
            None,
            Some(AtomicU64::new(0)),
            clock,
        )
    }

    fn new(
        stores: Stores,
        config: GateConfig,
        settings: GateStateConfig,
        mark: Option<PathBuf>,
        shared_base: Option<AtomicU64>,
        clock: Clock,
    ) -> Arc<Self> {
        let config_json = encode_config(&config);
        Arc::new(Self {
            epoch: AtomicU64::new(0),
            stores: ArcSwap::from_pointee(stores),
            live: watch::Sender::new(false),
            shared_base,
            clock,
            config_json: ArcSwap::from_pointee(config_json),
            gate_config: Mutex::new(config),
            log: Mutex::new(Log::default()),
            version: watch::Sender::new(0),
            settings,
            mark,
            snapshots: AtomicU64::new(0),
            last_snapshot: Mutex::new(Weak::new()),
        })
    }

    /// The feed's epoch (0 until a shared tier's copy is loaded).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The stores read now.
    pub fn stores(&self) -> Stores {
        Stores::clone(&self.stores.load())
    }

    /// Whether the stores are known to be current.
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// Marks the stores as known to be current, or not.
    pub fn set_live(&self, live: bool) {
        self.live.send_if_modified(|held| std::mem::replace(held, live) != live);
    }

    /// Waits until the stores are known to be current.
    pub async fn until_live(&self) {
        let _ = self.live.subscribe().wait_for(|live| *live).await;
    }

    /// Reads `stores` from now on, as of `version` of `epoch` (on the shared tier, the
    /// hash of Redis's epoch marker, which the configuration is mixed into): followers
    /// at an earlier version, or of another epoch, take a snapshot. Waits for a
    /// snapshot being taken (a walk of the stores, up to seconds at 10 M links): the
    /// copy's loader calls it off the runtime's workers.
    pub fn reload(&self, stores: Stores, epoch: u64, version: u64) {
        // In the order `snapshot` takes them.
        let mut last = self.last_snapshot.lock();
        let mut log = self.log.lock();
        self.stores.store(Arc::new(stores));
        let epoch = match &self.shared_base {
            Some(base) => {
                base.store(epoch, Ordering::Release);
                mix(epoch, self.config_json.load().as_bytes())
            }
            None => epoch,
        };
        self.epoch.store(epoch, Ordering::Release);
        *log = Log::at(version);
        *last = Weak::new();
        self.version.send_replace(version);
    }

    /// The latest version.
    pub fn current(&self) -> u64 {
        *self.version.borrow()
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &GateStateConfig {
        &self.settings
    }

    /// Wakes on every new version.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Takes new issuer key sets (reloaded): followers get the configuration again — in
    /// a delta, or on the shared tier (where versions are stream positions and none is
    /// this instance's to take) in a snapshot of the new epoch the configuration makes.
    pub fn replace_issuers(&self, issuers: Vec<IssuerSpec>) {
        let mut config = self.gate_config.lock();
        config.issuers = issuers;
        let config_json = encode_config(&config);
        drop(config);
        if *self.config_json.load_full() == config_json {
            return;
        }
        self.config_json.store(Arc::new(config_json));
        match &self.shared_base {
            Some(base) => {
                let version = self.current();
                self.reload(self.stores(), base.load(Ordering::Acquire), version);
            }
            None => self.record(Change::Config),
        }
    }

    /// Whether a follower at `from_version` of `epoch` can resume from the log (a
    /// follower without state sends epoch 0, which is never a feed's).
    pub fn resumable(&self, epoch: u64, from_version: u64) -> bool {
        let log = self.log.lock();
        epoch != 0 && epoch == self.epoch() && log.resumable(from_version)
    }

    /// Snapshots taken so far.
    pub fn snapshots_taken(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// Every linked credential's entry, at the version read before the walk: the last
    /// one taken while the log can still bring a follower on from it, else a new one.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let mut last = self.last_snapshot.lock();
        if let Some(snapshot) = last.upgrade().filter(|s| self.resumable(s.epoch, s.version)) {
            return snapshot;
        }
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        let (epoch, version, stores) = {
            let _log = self.log.lock();
            (self.epoch(), self.current(), self.stores())
        };
        let config_json = self.config_json.load_full();
        let now = self.clock.now();
        let mut entries = Vec::with_capacity(stores.links.len() * ridegate_core::gate_state::ENTRY_BYTES);
        stores.links.for_each_live(now, |credential, identity| {
            entry(&stores, credential, identity).encode(&mut entries);
        });
        let snapshot = Arc::new(Snapshot {
            epoch,
            version,
            config_json,
            entries,
        });
        *last = Arc::downgrade(&snapshot);
        snapshot
    }

    /// The changes after `from_version` of `epoch`, at most `max` of them, read as the
    /// stores hold them now; `None` when the log no longer holds them, or the epoch has
    /// changed (the follower needs a snapshot).
    pub fn delta_after(&self, epoch: u64, from_version: u64, max: usize) -> Option<Delta> {
        let (changes, stores): (Vec<(u64, Change)>, Stores) = {
            let log = self.log.lock();
            if epoch != self.epoch() || !log.resumable(from_version) {
                return None;
            }
            let skip = log.changes.partition_point(|(v, _)| *v <= from_version);
            let changes = log.changes.iter().skip(skip).take(max).copied().collect();
            (changes, self.stores())
        };
        let Some(&(version, _)) = changes.last() else {
            return Some(Delta {
                version: from_version,
                ..Delta::default()
            });
        };
        let now = self.clock.now();
        let mut credentials = HashSet::new();
        let mut config = false;
        for (_, change) in changes {
            match change {
                Change::Credential(c) => {
                    credentials.insert(c);
                }
                Change::Identity(i) => {
                    credentials.extend(stores.links.links_of_now(&i, now).into_iter().map(|(c, _)| c))
                }
                Change::Config => config = true,
            }
        }
        let mut delta = Delta {
            version,
            config_json: config.then(|| self.config_json.load_full()),
            ..Delta::default()
        };
        for credential in credentials {
            match stores.links.resolve_now(&credential, now) {
                Some(identity) => entry(&stores, credential, identity).encode(&mut delta.set),
                None => delta.removed.extend_from_slice(&CredentialTag::of(&credential.0).0),
            }
        }
        Some(delta)
    }

    /// Keeps the epoch and version for the next start (at a clean stop, once every
    /// write is durable).
    pub fn keep_mark(&self) {
        let Some(path) = &self.mark else { return };
        let mark = Mark {
            epoch: self.epoch(),
            version: self.log.lock().version,
            config: self.config_json.load().to_string(),
        };
        let written = serde_json::to_vec(&mark)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_durably(path, &bytes));
        if let Err(e) = written {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                path = %path.display(),
                "gate state: the feed's version could not be kept; gates will take a snapshot after the restart"
            );
        }
    }

    /// Records a change the embedded stores announced, at the next version.
    fn record(&self, change: Change) {
        let mut log = self.log.lock();
        let version = log.version + 1;
        self.append(&mut log, version, change);
    }

    /// Records a change to the copy of the shared tier at `version` (its stream
    /// position), after it was applied to the copy; one at or below the floor the copy
    /// was loaded at is already in it.
    pub fn record_at(&self, version: u64, change: Change) {
        let mut log = self.log.lock();
        if version > log.version {
            self.append(&mut log, version, change);
        }
    }

    fn append(&self, log: &mut Log, version: u64, change: Change) {
        log.version = version;
        log.changes.push_back((version, change));
        while log.changes.len() > self.settings.log_capacity {
            if let Some((dropped, _)) = log.changes.pop_front() {
                log.floor = dropped;
            }
        }
        // Under the lock, so the announced version never goes back.
        self.version.send_replace(version);
    }
}

/// `credential`'s entry: its tag and its identity's status.
fn entry(stores: &Stores, credential: CredentialId, identity: IdentityId) -> Entry {
    Entry {
        tag: CredentialTag::of(&credential.0),
        status: stores.health.get(&identity).as_ref().map(EntryStatus::of),
    }
}

/// `epoch` with `bytes` mixed in (FNV-1a), never 0: the same on every instance.
pub(crate) fn mix(epoch: u64, bytes: &[u8]) -> u64 {
    let hash = bytes.iter().fold(epoch, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    hash | 1
}

/// The configuration document gates are sent.
fn encode_config(config: &GateConfig) -> String {
    // Plain data (strings, numbers, maps with string keys): serializing cannot fail.
    serde_json::to_string(config).unwrap_or_default()
}

/// Reads and removes the mark of a clean stop.
fn take_mark(path: &Path) -> Option<Mark> {
    let bytes = std::fs::read(path).ok()?;
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(
            error = &e as &dyn std::error::Error,
            "gate state: cannot remove the mark; starting a new epoch"
        );
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// Writes `bytes` to `path` through a temporary file, fsynced, then renamed.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use ridegate_adapters::caller::CallerKind;
    use ridegate_adapters::link::{Consent, CredentialClass, LinkRecord};
    use ridegate_core::gate_state::ENTRY_BYTES;
    use ridegate_core::model::{Colour, HealthStatus, UnixMillis};

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

    fn link(identity: u8) -> LinkRecord {
        LinkRecord {
            identity: IdentityId([identity; 16]),
            class: CredentialClass::PhysicalCard,
            issuer: None,
            tail: *b"1234",
            linked_at: NOW,
            linked_by: CallerKind::BackEnd,
            caller_id: Arc::from("test"),
            staff_operator_id: None,
            consent: Consent::BulkProgramme,
            valid_until: None,
        }
    }

    fn status(colour: Colour, set_at: i64) -> HealthStatus {
        HealthStatus {
            colour,
            set_at: UnixMillis(set_at),
            negative_test_at: None,
        }
    }

    fn gate_config() -> GateConfig {
        GateConfig {
            rules: Rules::default(),
            issuers: Vec::new(),
            limits: VerifierLimits::default(),
            credential_key: "00".repeat(16),
        }
    }

    fn feed(capacity: usize, dir: Option<&Path>) -> (Arc<GateStateFeed>, Arc<MemoryLinks>, Arc<MemoryHealth>) {
        let (links, health) = (Arc::new(MemoryLinks::default()), Arc::new(MemoryHealth::default()));
        let config = gate_config();
        let settings = GateStateConfig {
            log_capacity: capacity,
            ..GateStateConfig::default()
        };
        let stores = Stores {
            links: links.clone(),
            health: health.clone(),
        };
        let feed = GateStateFeed::start(stores, config, settings, dir, true, Clock::manual(NOW));
        (feed, links, health)
    }

    fn entries(bytes: &[u8]) -> Vec<Entry> {
        let mut all = Entry::decode_all(bytes).unwrap();
        all.sort_by_key(|e| e.tag);
        all
    }

    #[test]
    fn a_snapshot_holds_every_linked_credential_and_deltas_carry_the_state_now() {
        let (feed, links, health) = feed(100, None);
        links.link_now(CredentialId([1; 16]), &link(7)).unwrap();
        links.link_now(CredentialId([2; 16]), &link(8)).unwrap();
        health.put(IdentityId([7; 16]), status(Colour::Green, 1));
        let snapshot = feed.snapshot();
        assert_eq!(snapshot.version, 3);
        assert_eq!(snapshot.entries.len(), 2 * ENTRY_BYTES);
        let got = entries(&snapshot.entries);
        assert_eq!(got[0].status.unwrap().colour, Colour::Green);
        assert_eq!(got[1].status, None, "no record for identity 8");

        // Turned red, then unlinked another credential: one delta with both.
        health.put(IdentityId([7; 16]), status(Colour::Red, 2));
        links.unlink_now(&CredentialId([2; 16]));
        assert!(feed.resumable(feed.epoch(), 3));
        let delta = feed.delta_after(feed.epoch(), 3, 100).unwrap();
        assert_eq!(delta.version, 5);
        let set = entries(&delta.set);
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].tag, CredentialTag([1; 8]));
        assert_eq!(set[0].status.unwrap().colour, Colour::Red);
        assert_eq!(Entry::decode_tags(&delta.removed).unwrap(), [CredentialTag([2; 8])]);
        // Current: an empty delta at the same version.
        assert_eq!(feed.delta_after(feed.epoch(), 5, 100).unwrap().version, 5);
        // A follower without state (epoch 0), another epoch, or a version from the
        // future is not resumed.
        assert!(!feed.resumable(0, 0));
        assert!(!feed.resumable(feed.epoch() ^ 2, 3));
        assert!(feed.delta_after(feed.epoch(), 9, 100).is_none());
    }

    #[test]
    fn followers_share_a_snapshot_while_deltas_can_follow_it() {
        let (feed, links, _) = feed(2, None);
        links.link_now(CredentialId([1; 16]), &link(1)).unwrap();
        let first = feed.snapshot();
        links.link_now(CredentialId([2; 16]), &link(2)).unwrap();
        let second = feed.snapshot();
        assert!(Arc::ptr_eq(&first, &second), "version 1 can still be followed");
        assert_eq!(feed.snapshots_taken(), 1);
        for i in 3..=5u8 {
            links.link_now(CredentialId([i; 16]), &link(i)).unwrap();
        }
        let third = feed.snapshot();
        assert_eq!(
            (third.version, feed.snapshots_taken()),
            (5, 2),
            "version 1 left the log"
        );
    }

    #[test]
    fn a_snapshot_of_a_feed_that_has_not_changed_is_resumed_from() {
        let (feed, _, _) = feed(10, None);
        let snapshot = feed.snapshot();
        assert_eq!(snapshot.version, 0);
        assert!(feed.resumable(snapshot.epoch, snapshot.version));
        assert_eq!(feed.delta_after(feed.epoch(), 0, 10).unwrap().version, 0);
    }

    #[test]
    fn a_follower_whose_version_left_the_log_needs_a_snapshot() {
        let (feed, links, _) = feed(2, None);
        for i in 1..=4u8 {
            links.link_now(CredentialId([i; 16]), &link(i)).unwrap();
        }
        // Versions 3 and 4 are kept: a follower at 2 resumes, one at 1 cannot.
        assert!(feed.resumable(feed.epoch(), 2));
        assert!(!feed.resumable(feed.epoch(), 1));
        assert!(feed.delta_after(feed.epoch(), 1, 10).is_none());
        assert_eq!(entries(&feed.delta_after(feed.epoch(), 2, 10).unwrap().set).len(), 2);
        // At most `max` changes per delta.
        assert_eq!(feed.delta_after(feed.epoch(), 2, 1).unwrap().version, 3);
    }

    #[test]
    fn a_copy_of_the_shared_tier_is_followed_at_stream_positions() {
        let settings = GateStateConfig {
            log_capacity: 2,
            ..GateStateConfig::default()
        };
        let feed = GateStateFeed::for_shared_tier(gate_config(), settings, Clock::manual(NOW));
        assert!(!feed.is_live());
        assert!(
            !feed.resumable(0, 0),
            "nothing to resume from before the copy is loaded"
        );

        let stores = Stores::default();
        stores.links.link_now(CredentialId([1; 16]), &link(1)).unwrap();
        feed.reload(stores.clone(), 77, 1000);
        let epoch = feed.epoch();
        assert_eq!(
            epoch,
            mix(77, encode_config(&gate_config()).as_bytes()),
            "marker and config"
        );
        assert_eq!(feed.current(), 1000);
        assert!(
            feed.resumable(epoch, 1000) && !feed.resumable(epoch, 999),
            "the copy's floor"
        );

        // Changes at their (sparse) positions; one at or below the last is in the copy.
        stores.health.put(IdentityId([1; 16]), status(Colour::Red, 1));
        feed.record_at(1500, Change::Identity(IdentityId([1; 16])));
        feed.record_at(900, Change::Identity(IdentityId([1; 16])));
        assert_eq!(feed.current(), 1500);
        let delta = feed.delta_after(epoch, 1000, 10).unwrap();
        assert_eq!(delta.version, 1500);
        assert_eq!(entries(&delta.set)[0].status.unwrap().colour, Colour::Red);
        // A follower between two positions resumes: it missed nothing.
        assert_eq!(feed.delta_after(epoch, 1499, 10).unwrap().version, 1500);
        assert!(feed.delta_after(epoch ^ 2, 1499, 10).is_none(), "another epoch");

        // The log keeps two changes: the floor rises to the first one dropped.
        feed.record_at(1600, Change::Credential(CredentialId([1; 16])));
        feed.record_at(1700, Change::Credential(CredentialId([1; 16])));
        assert!(!feed.resumable(epoch, 1499));
        assert!(feed.resumable(epoch, 1500));
        assert_eq!(feed.delta_after(epoch, 1500, 10).unwrap().version, 1700);

        // New issuer keys: no version of this instance's own, but a new epoch (the
        // configuration is in it), so followers take a snapshot with the new keys.
        feed.replace_issuers(gate_config().issuers);
        assert!(feed.resumable(epoch, 1500), "the same keys: nothing changes");
        feed.replace_issuers(vec![IssuerSpec {
            id: "alipay".into(),
            name: "Alipay".into(),
            keys: Vec::new(),
            settings: Default::default(),
        }]);
        assert_eq!(feed.current(), 1700);
        assert!(!feed.resumable(epoch, 1700));
        feed.record_at(1701, Change::Credential(CredentialId([1; 16])));
        assert_eq!(feed.current(), 1701);

        // A copy loaded again (after a gap): followers of the old one take a snapshot.
        feed.reload(Stores::default(), 77, 5000);
        assert!(!feed.resumable(feed.epoch(), 1701));
        assert_eq!(feed.snapshot().entries.len(), 0);
    }

    #[test]
    fn the_epoch_and_version_survive_a_clean_stop_only() {
        let dir = tempfile::tempdir().unwrap();
        let (feed1, links, _) = feed(10, Some(dir.path()));
        links.link_now(CredentialId([1; 16]), &link(1)).unwrap();
        feed1.keep_mark();
        let (epoch, version) = (feed1.epoch(), feed1.current());
        let (feed2, _, _) = feed(10, Some(dir.path()));
        assert_eq!((feed2.epoch(), feed2.current()), (epoch, version));
        assert!(feed2.resumable(epoch, version), "nothing changed since: resumed");
        // No mark kept this time (a crash): a new epoch.
        let (feed3, _, _) = feed(10, Some(dir.path()));
        assert_ne!(feed3.epoch(), epoch);
        assert_eq!(feed3.current(), 0);
    }
}
