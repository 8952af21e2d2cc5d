//! `ridegate-gate`: the gate side of ridegate's offline mode. A gate (or a station
//! controller serving several) opens an [`OfflineGate`] on a local state directory and
//! lets it follow ridegate's `GateState` feed; when ridegate cannot be reached, the
//! gate asks [`OfflineGate::decide`] instead and gets the answer ridegate would have
//! given — the same rules ([`Rules::decide`], from `ridegate-core`), the same ride-code
//! verification, the same credential hashes — marked `offline`. Once ridegate answers
//! again, the offline decisions are uploaded to its audit trail and the codes used
//! offline enter its single-use guard.
//!
//! What the gate holds: every linked credential's entry (13 bytes: a keyed hash and its
//! rider's status), the policy and the issuers' public keys. A credential without an
//! entry is not linked. Ride codes are verified locally (issuer- and device-signed) and
//! remembered as used on disk before the gate opens. When the state is older than
//! [`GateSettings::max_state_age`], riders who need a health check get the policy's
//! answer for an unavailable status (`HEALTH_UNAVAILABLE`, ASSIST by default): a guess
//! is never answered as fact.
//!
//! Online, a gate asks [`Backoff`] how long to wait after a call that brought no
//! decision — refused with a retry hint, timed out, or lost with its connection — and
//! decides offline until then, rather than resending at once with every other gate.
//!
//! A mass change — more riders turning from green to non-green within a window than a
//! share of all entries — is held, not applied, until [`OfflineGate::confirm_held`].
//!
//! From C: wrap [`OfflineGate::open`], [`OfflineGate::follow`] (on a Tokio runtime the
//! wrapper owns) and [`OfflineGate::decide`] in `extern "C"` functions taking the
//! credential as a string and returning the verdict and reason as integers (the
//! `ridegate.v1` enum values), and generate the header with cbindgen; the README shows
//! the shape.

#![forbid(unsafe_code)]

mod backoff;
mod disk;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use ridegate_adapters::ids::{CodeKey, RequestKey, random_bytes};
use ridegate_adapters::replay::{Claim, MemoryReplayGuard};
use ridegate_core::clock::{Clock, millis};
use ridegate_core::credential::{Credential, CredentialKind, LinkKey};
use ridegate_core::decision::{CredentialCheck, GateRequest, HealthView, Subject, Tap};
use ridegate_core::gate_state::{ENTRY_BYTES, Entry};
use ridegate_core::model::{Direction, Mode, Reason, UnixMillis, Verdict};
use ridegate_proto::pb;
use ridegate_proto::pb::gate_state_client::GateStateClient;
use ridegate_proto::pb::state_update::Kind;
use tonic::transport::{Channel, Endpoint};

pub use backoff::Backoff;
pub use state::BrakeSettings;

use disk::{COMPACT_AT_BYTES, Disk, Stored};
use state::{Loaded, State};

/// Why the gate library could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// The state directory could not be read or written.
    #[error("gate state directory: {0}")]
    Disk(String),
    /// The feed sent something that cannot be used.
    #[error("gate state feed: {0}")]
    Feed(String),
    /// ridegate could not be reached or refused the call.
    #[error("ridegate: {0}")]
    Unreachable(String),
}

/// How a gate library runs.
#[derive(Debug, Clone)]
pub struct GateSettings {
    /// ridegate's gate port, e.g. `http://127.0.0.1:50051`.
    pub endpoint: String,
    /// The station group the gates belong to.
    pub group: String,
    /// Where the state, used codes and offline decisions are kept.
    pub state_dir: PathBuf,
    /// Past this age without word from ridegate, health checks are not answered from
    /// the state.
    pub max_state_age: Duration,
    /// The mass-deny brake.
    pub brake: BrakeSettings,
    /// How long to wait between attempts to reach ridegate, on average: each pause is
    /// drawn between half and one and a half times it ([`Backoff::around`]), so gates
    /// that lost ridegate together do not come back together.
    pub retry_every: Duration,
}

impl GateSettings {
    /// Settings for `endpoint`, keeping state in `state_dir`, with the defaults: a
    /// state older than 10 minutes is not trusted, the brake at 1% within 5 minutes.
    pub fn new(endpoint: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: endpoint.into(),
            group: "default".into(),
            state_dir: state_dir.into(),
            max_state_age: Duration::from_secs(600),
            brake: BrakeSettings::default(),
            retry_every: Duration::from_millis(500),
        }
    }
}

/// An answer decided at the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineAnswer {
    /// What the gate does.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The station's check mode.
    pub mode: Mode,
    /// In shadow mode, what enforcement would have done.
    pub shadow: Option<(Verdict, Reason)>,
    /// Not a fresh answer: the status behind it was not confirmed, or a code's single
    /// use could only be checked at this gate.
    pub degraded: bool,
    /// Age of the state it was decided on, in milliseconds (`None`: no state yet).
    pub state_age_ms: Option<i64>,
    /// Always true: decided here, not by ridegate.
    pub offline: bool,
}

/// Where the gate stands, for its screen and its operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateStatus {
    /// The feed's epoch and the version held.
    pub epoch: u64,
    /// The version held.
    pub version: u64,
    /// Linked credentials held.
    pub entries: usize,
    /// Changes the brake holds.
    pub held: usize,
    /// Offline decisions not yet uploaded.
    pub pending_uploads: usize,
    /// Age of the state (`None`: no state yet).
    pub state_age_ms: Option<i64>,
}

struct Inner {
    settings: GateSettings,
    clock: Clock,
    state: RwLock<State>,
    codes: MemoryReplayGuard,
    disk: Mutex<Disk>,
    /// Encoded offline decisions not yet uploaded.
    pending: Mutex<Vec<Vec<u8>>>,
}

/// The gate library: state, decisions, and the link to ridegate. Cheap to clone.
#[derive(Clone)]
pub struct OfflineGate(Arc<Inner>);

impl std::fmt::Debug for OfflineGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OfflineGate({:?})", self.status())
    }
}

impl OfflineGate {
    /// Opens the state directory (creating it) and loads what it holds: the state as
    /// last applied, used codes still valid, and decisions not yet uploaded.
    pub fn open(settings: GateSettings, clock: Clock) -> Result<Self, GateError> {
        let opened = Disk::open(&settings.state_dir)?;
        let mut disk = opened.disk;
        let mut state = State::default();
        let mut records = opened.records.into_iter();
        if let Some(snapshot) = records.next() {
            state.config = Some(Loaded::parse(&snapshot.config)?);
            state.epoch = snapshot.epoch;
            state.version = snapshot.version;
            state.confirmed_at = Some(snapshot.confirmed_at);
            state.entries = snapshot.set.iter().map(|e| (e.tag, e.status)).collect();
        }
        // Deltas after the state file's version, of its epoch (older ones are left over
        // from before the state file was last replaced).
        for delta in records {
            if delta.epoch != state.epoch || delta.version <= state.version {
                continue;
            }
            if !delta.config.is_empty() {
                state.config = Some(Loaded::parse(&delta.config)?);
            }
            state.version = delta.version;
            state.confirmed_at = Some(delta.confirmed_at);
            state.entries.extend(delta.set.iter().map(|e| (e.tag, e.status)));
            for tag in &delta.removed {
                state.entries.remove(tag);
            }
        }
        state.held = opened.held.iter().map(|e| (e.tag, e.status)).collect();
        let now = clock.now();
        let codes = MemoryReplayGuard::default();
        let live: Vec<_> = opened.codes.into_iter().filter(|(_, until)| *until > now).collect();
        for (key, until) in &live {
            codes.claim_now(CodeKey(*key), RequestKey([0; 16]), *until, now);
        }
        disk.rewrite_codes(&live)?;
        let inner = Arc::new(Inner {
            settings,
            clock,
            state: RwLock::new(state),
            codes,
            disk: Mutex::new(disk),
            pending: Mutex::new(opened.offline),
        });
        spawn_syncer(Arc::downgrade(&inner))?;
        Ok(Self(inner))
    }

    /// Where the gate stands.
    pub fn status(&self) -> GateStatus {
        let state = self.0.state.read();
        GateStatus {
            epoch: state.epoch,
            version: state.version,
            entries: state.entries.len(),
            held: state.held.len(),
            pending_uploads: self.0.pending.lock().len(),
            state_age_ms: state.confirmed_at.map(|at| self.0.clock.now().since(at)),
        }
    }

    /// Decides `request` here, as ridegate would have on this state, and keeps the
    /// decision for upload. A ride code accepted is kept as used (on disk) first.
    pub fn decide(&self, request: &GateRequest) -> Result<OfflineAnswer, GateError> {
        let inner = &*self.0;
        let now = inner.clock.now();
        let state = inner.state.read();
        let state_age_ms = state.confirmed_at.map(|at| now.since(at));
        let Some(config) = &state.config else {
            // Never followed the feed: nothing to decide on.
            let answer = OfflineAnswer {
                verdict: Verdict::Assist,
                reason: Reason::HealthUnavailable,
                mode: Mode::Enforce,
                shadow: None,
                degraded: true,
                state_age_ms: None,
                offline: true,
            };
            drop(state);
            self.keep(request, &answer, None, None)?;
            return Ok(answer);
        };
        let gate = &request.gate;
        let mut code = None;
        let mut issuer = None;
        let verified;
        let (check, link_key) = match &request.credential {
            Credential::RideCode(text) => match config.verifier.verify(text, now) {
                Err(e) => (CredentialCheck::Refused(e.reason()), None),
                Ok(ok) => {
                    verified = ok;
                    issuer = Some(verified.issuer.to_string());
                    let key = verified.code_key(&config.hasher);
                    let owner = RequestKey(random_bytes::<16>());
                    match inner.codes.claim_now(key, owner, verified.valid_until, now) {
                        Claim::Replayed => (CredentialCheck::Refused(Reason::CodeReplayed), None),
                        Claim::First | Claim::Retry => {
                            inner.disk.lock().append_code(&key.0, verified.valid_until)?;
                            code = Some((key, verified.valid_until));
                            (
                                CredentialCheck::Passed(CredentialKind::RideCode),
                                Some(LinkKey::RideAccount {
                                    issuer: &verified.issuer,
                                    account: &verified.account,
                                }),
                            )
                        }
                    }
                }
            },
            other => (CredentialCheck::Passed(other.kind()), other.link_key()),
        };
        let tap = Tap {
            station_id: &gate.station_id,
            line_id: &gate.line_id,
            direction: gate.direction,
            credential: check,
        };
        let fresh = state_age_ms.is_some_and(|age| age <= millis(inner.settings.max_state_age));
        let rider = match link_key {
            Some(key) if config.rules.needs_rider(&tap) => Some(if fresh {
                let tag = ridegate_core::gate_state::CredentialTag::of(&config.hasher.credential(&key).0);
                match state.entries.get(&tag) {
                    None => Subject::NotLinked,
                    Some(status) => Subject::Linked(HealthView::Known {
                        status: status.map(|s| s.health_status()),
                        age_ms: state_age_ms.unwrap_or_default(),
                        degraded: false,
                    }),
                }
            } else {
                Subject::Linked(HealthView::Unavailable)
            }),
            _ => None,
        };
        let outcome = config.rules.decide(&tap, rider, now);
        drop(state);
        let answer = OfflineAnswer {
            verdict: outcome.verdict,
            reason: outcome.reason,
            mode: outcome.mode,
            shadow: outcome.shadow,
            degraded: outcome.degraded,
            state_age_ms,
            offline: true,
        };
        self.keep(request, &answer, code, issuer)?;
        Ok(answer)
    }

    /// Keeps an offline decision on disk for upload.
    fn keep(
        &self,
        request: &GateRequest,
        answer: &OfflineAnswer,
        code: Option<(CodeKey, UnixMillis)>,
        issuer: Option<String>,
    ) -> Result<(), GateError> {
        use pb::offline_decision::CredentialKind as Kind;
        let gate = &request.gate;
        let credential_kind = match request.credential.kind() {
            CredentialKind::RideCode => Kind::RideCode(true),
            CredentialKind::Card(medium) => Kind::Card(wire_enum(medium_name(medium), pb::CardMedium::from_str_name)),
            CredentialKind::Ticket(kind) => Kind::Ticket(wire_enum(
                &format!("TICKET_KIND_{}", kind.label().to_ascii_uppercase()),
                pb::TicketKind::from_str_name,
            )),
            CredentialKind::Uncovered(kind) => Kind::Uncovered(wire_enum(
                &format!("UNCOVERED_KIND_{}", kind.label().to_ascii_uppercase()),
                pb::UncoveredKind::from_str_name,
            )),
        };
        let decision = pb::OfflineDecision {
            gate_id: gate.gate_id.clone(),
            station_id: gate.station_id.clone(),
            line_id: gate.line_id.clone(),
            direction: match gate.direction {
                Direction::Entry => pb::Direction::Entry,
                Direction::Exit => pb::Direction::Exit,
            } as i32,
            decided_at_ms: self.0.clock.now().0,
            issuer: issuer.unwrap_or_default(),
            code_key: code.map(|(k, _)| k.0.to_vec()).unwrap_or_default(),
            code_valid_until_ms: code.map_or(0, |(_, until)| until.0),
            verdict: wire_verdict(answer.verdict),
            reason: wire_reason(answer.reason),
            state_age_ms: answer.state_age_ms.unwrap_or(-1),
            credential_kind: Some(credential_kind),
            decision_id: random_bytes::<16>().to_vec(),
            degraded: answer.degraded,
            mode: wire_mode(answer.mode),
        };
        let encoded = decision.encode_to_vec();
        // Pending, then disk: the order `upload` takes them in too.
        let mut pending = self.0.pending.lock();
        self.0.disk.lock().append_offline(&encoded)?;
        pending.push(encoded);
        Ok(())
    }

    /// Applies the changes the brake holds (an operator checked them); returns how many.
    pub fn confirm_held(&self) -> Result<usize, GateError> {
        let mut state = self.0.state.write();
        let n = state.confirm_held();
        let entries = state.encoded_entries();
        let record = Stored {
            epoch: state.epoch,
            version: state.version,
            confirmed_at: state.confirmed_at.unwrap_or_default(),
            config: state.config.as_ref().map(|c| c.json.clone()).unwrap_or_default(),
            set: Vec::new(),
            removed: Vec::new(),
        };
        let mut disk = self.0.disk.lock();
        disk.write_state(&record, &entries)?;
        disk.write_held(&[])?;
        tracing::warn!(applied = n, "gate: held changes confirmed by an operator and applied");
        Ok(n)
    }

    /// Follows ridegate's feed for as long as the returned task runs: reconnects after
    /// every failure (about every `retry_every`, jittered), resumes from the version
    /// held, and uploads offline decisions each time it connects.
    pub fn follow(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let mut jitter = Backoff::new(u64::from_le_bytes(random_bytes()));
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.follow_once().await {
                    tracing::debug!(error = %e, "gate: ridegate unreachable; deciding offline until it answers");
                }
                tokio::time::sleep(jitter.around(this.0.settings.retry_every)).await;
            }
        })
    }

    async fn connect(&self) -> Result<Channel, GateError> {
        Endpoint::from_shared(self.0.settings.endpoint.clone())
            .map_err(|e| GateError::Unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| GateError::Unreachable(e.to_string()))
    }

    /// One connection: upload, then follow until the stream breaks.
    async fn follow_once(&self) -> Result<(), GateError> {
        let channel = self.connect().await?;
        self.upload_now(channel.clone()).await;
        let (epoch, version) = {
            let state = self.0.state.read();
            (state.epoch, state.version)
        };
        let mut client = GateStateClient::new(channel.clone());
        let mut updates = client
            .follow(pb::FollowRequest {
                group: self.0.settings.group.clone(),
                from_version: version,
                epoch,
            })
            .await
            .map_err(|s| GateError::Unreachable(s.message().to_owned()))?
            .into_inner();
        let mut snapshot: Option<(pb::SnapshotBegin, Vec<u8>)> = None;
        loop {
            let update = updates
                .message()
                .await
                .map_err(|s| GateError::Unreachable(s.message().to_owned()))?;
            let Some(pb::StateUpdate { kind: Some(kind) }) = update else {
                return Err(GateError::Unreachable("the feed ended".into()));
            };
            match kind {
                Kind::Begin(begin) => {
                    // Grown as chunks come; the count is only checked at the end.
                    let capacity = usize::try_from(begin.entries).unwrap_or(0).saturating_mul(ENTRY_BYTES);
                    snapshot = Some((begin, Vec::with_capacity(capacity.min(MAX_PREALLOCATED))));
                }
                Kind::Chunk(chunk) => match &mut snapshot {
                    Some((_, entries)) => entries.extend_from_slice(&chunk.entries),
                    None => return Err(GateError::Feed("a chunk outside a snapshot".into())),
                },
                Kind::End(end) => {
                    let (begin, entries) = snapshot
                        .take()
                        .ok_or_else(|| GateError::Feed("a snapshot end without its beginning".into()))?;
                    if end.version != begin.version {
                        return Err(GateError::Feed("a snapshot ended at another version".into()));
                    }
                    if entries.len() as u64 != begin.entries.saturating_mul(ENTRY_BYTES as u64) {
                        return Err(GateError::Feed(
                            "a snapshot's entries do not add up to its count".into(),
                        ));
                    }
                    self.apply_snapshot(&begin, &entries)?;
                }
                Kind::Delta(delta) => self.apply_delta(&delta)?,
                Kind::Heartbeat(beat) => {
                    let mut state = self.0.state.write();
                    if beat.version == state.version {
                        state.confirmed_at = Some(self.0.clock.now());
                    }
                }
            }
            if !self.0.pending.lock().is_empty() {
                self.upload_now(channel.clone()).await;
            }
        }
    }

    /// Applies a snapshot (as the feed sends it; also for provisioning a gate from a
    /// file), through the brake, and keeps it on disk.
    pub fn apply_snapshot(&self, begin: &pb::SnapshotBegin, entries: &[u8]) -> Result<(), GateError> {
        let decoded = Entry::decode_all(entries).map_err(|e| GateError::Feed(e.to_string()))?;
        let config = Loaded::parse(&begin.config_json)?;
        let now = self.0.clock.now();
        let mut state = self.0.state.write();
        let held = state.replace(decoded, &self.0.settings.brake, now);
        state.epoch = begin.epoch;
        state.version = begin.version;
        state.config = Some(config);
        state.confirmed_at = Some(now);
        let record = Stored {
            epoch: begin.epoch,
            version: begin.version,
            confirmed_at: now,
            config: begin.config_json.clone(),
            set: Vec::new(),
            removed: Vec::new(),
        };
        let encoded = state.encoded_entries();
        let held_entries = encode_held(&state);
        drop(state);
        let mut disk = self.0.disk.lock();
        disk.write_state(&record, &encoded)?;
        disk.write_held(&held_entries)?;
        if held > 0 {
            tracing::error!(
                held,
                "gate: mass-deny brake engaged on a snapshot: changes held until confirmed"
            );
        }
        tracing::info!(
            version = begin.version,
            entries = begin.entries,
            "gate: snapshot applied"
        );
        Ok(())
    }

    /// Applies a delta after the version held (an older one is ignored), through the
    /// brake, and keeps it on disk.
    pub fn apply_delta(&self, delta: &pb::Delta) -> Result<(), GateError> {
        let set = Entry::decode_all(&delta.set).map_err(|e| GateError::Feed(e.to_string()))?;
        let removed = Entry::decode_tags(&delta.removed).map_err(|e| GateError::Feed(e.to_string()))?;
        let config = if delta.config_json.is_empty() {
            None
        } else {
            Some(Loaded::parse(&delta.config_json)?)
        };
        let now = self.0.clock.now();
        let mut state = self.0.state.write();
        if delta.version <= state.version {
            return Ok(());
        }
        let held_before = state.held.len();
        let held = state.apply(&set, &removed, &self.0.settings.brake, now);
        state.version = delta.version;
        state.confirmed_at = Some(now);
        if let Some(config) = config {
            state.config = Some(config);
        }
        // What was applied goes to the deltas file; what is held, to the held file.
        let mut applied = Vec::with_capacity(set.len() * ENTRY_BYTES);
        for entry in set.iter().filter(|e| !state.held.contains_key(&e.tag)) {
            entry.encode(&mut applied);
        }
        let record = Stored {
            epoch: state.epoch,
            version: delta.version,
            confirmed_at: now,
            config: delta.config_json.clone(),
            set: Vec::new(),
            removed: Vec::new(),
        };
        let held_entries = (held_before > 0 || !state.held.is_empty()).then(|| encode_held(&state));
        // Decisions read the state while the delta is written: the disk is the follower's
        // alone, so deltas reach it in order.
        drop(state);
        let size = {
            let mut disk = self.0.disk.lock();
            let size = disk.append_delta(&record, &applied, &delta.removed)?;
            if let Some(held_entries) = &held_entries {
                disk.write_held(held_entries)?;
            }
            size
        };
        if size > COMPACT_AT_BYTES {
            let state = self.0.state.read();
            let record = Stored {
                version: state.version,
                config: state.config.as_ref().map(|c| c.json.clone()).unwrap_or_default(),
                ..record
            };
            let entries = state.encoded_entries();
            drop(state);
            self.0.disk.lock().write_state(&record, &entries)?;
        }
        if held > 0 {
            tracing::error!(
                held,
                "gate: mass-deny brake engaged: changes turning riders non-green held until confirmed"
            );
        }
        Ok(())
    }

    /// Uploads the offline decisions kept, logging a failure (they are sent again at
    /// the next connection or update).
    async fn upload_now(&self, channel: Channel) {
        if let Err(e) = self.upload(channel).await {
            tracing::warn!(error = %e, "gate: offline decisions not uploaded yet");
        }
    }

    /// Uploads the offline decisions kept, then forgets them.
    async fn upload(&self, channel: Channel) -> Result<(), GateError> {
        let batch: Vec<Vec<u8>> = self.0.pending.lock().clone();
        if batch.is_empty() {
            return Ok(());
        }
        let decisions: Vec<pb::OfflineDecision> = batch
            .iter()
            .filter_map(|bytes| pb::OfflineDecision::decode(bytes.as_slice()).ok())
            .collect();
        let summary = GateStateClient::new(channel)
            .upload(tokio_stream::iter(decisions))
            .await
            .map_err(|s| GateError::Unreachable(s.message().to_owned()))?
            .into_inner();
        let mut pending = self.0.pending.lock();
        let uploaded = batch.len().min(pending.len());
        let rest: Vec<Vec<u8>> = pending.split_off(uploaded);
        self.0.disk.lock().drop_uploaded(&rest)?;
        *pending = rest;
        if summary.rejected > 0 {
            tracing::error!(
                rejected = summary.rejected,
                first = %summary.first_rejection,
                "gate: ridegate rejected offline decisions"
            );
        }
        tracing::info!(
            recorded = summary.recorded,
            duplicates = summary.duplicates,
            codes = summary.codes,
            codes_used_twice = summary.codes_used_twice,
            "gate: offline decisions uploaded"
        );
        Ok(())
    }
}

/// The most a snapshot's announced size reserves before its entries arrive.
const MAX_PREALLOCATED: usize = 64 << 20;

/// How often used codes and offline decisions are fsynced.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Fsyncs the gate's appended files every [`SYNC_EVERY`] until the gate is dropped.
fn spawn_syncer(inner: std::sync::Weak<Inner>) -> Result<(), GateError> {
    std::thread::Builder::new()
        .name("ridegate-gate-sync".into())
        .spawn(move || {
            loop {
                std::thread::sleep(SYNC_EVERY);
                let Some(inner) = inner.upgrade() else { return };
                if let Err(e) = inner.disk.lock().sync() {
                    tracing::error!(error = %e, "gate: used codes and offline decisions could not be fsynced");
                }
            }
        })
        .map(drop)
        .map_err(|e| GateError::Disk(format!("cannot start the sync thread: {e}")))
}

fn encode_held(state: &State) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, status) in &state.held {
        Entry {
            tag: *tag,
            status: *status,
        }
        .encode(&mut out);
    }
    out
}

fn medium_name(medium: ridegate_core::credential::CardMedium) -> &'static str {
    match medium {
        ridegate_core::credential::CardMedium::Physical => "CARD_MEDIUM_PHYSICAL",
        ridegate_core::credential::CardMedium::PhoneNfc => "CARD_MEDIUM_PHONE_NFC",
        ridegate_core::credential::CardMedium::NfcSim => "CARD_MEDIUM_NFC_SIM",
    }
}

/// A `ridegate.v1` enum value by its name (0, unspecified, if the name is unknown: a
/// test checks every name).
fn wire_enum<E: Into<i32>>(name: &str, from_name: fn(&str) -> Option<E>) -> i32 {
    from_name(name).map_or(0, Into::into)
}

/// A verdict's `ridegate.v1.Verdict` value.
pub fn wire_verdict(verdict: Verdict) -> i32 {
    let name = match verdict {
        Verdict::Allow => "VERDICT_ALLOW",
        Verdict::Deny => "VERDICT_DENY",
        Verdict::Assist => "VERDICT_ASSIST",
    };
    wire_enum(name, pb::Verdict::from_str_name)
}

/// A check mode's `ridegate.v1.CheckMode` value.
pub fn wire_mode(mode: Mode) -> i32 {
    let name = match mode {
        Mode::Enforce => "CHECK_MODE_ENFORCE",
        Mode::Shadow => "CHECK_MODE_SHADOW",
        Mode::Off => "CHECK_MODE_OFF",
    };
    wire_enum(name, pb::CheckMode::from_str_name)
}

/// A reason's `ridegate.v1.Reason` value.
pub fn wire_reason(reason: Reason) -> i32 {
    wire_enum(
        &format!("REASON_{}", reason.label().to_ascii_uppercase()),
        pb::Reason::from_str_name,
    )
}

#[cfg(test)]
mod tests;
