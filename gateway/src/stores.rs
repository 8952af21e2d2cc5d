//! Where state lives: in this process (embedded, the default) or in the shared tier
//! (Redis or Redis Cluster) when several instances serve one city. Each store is an
//! enum over them — no generics through the decision path, no dynamic dispatch per
//! tap — and its hot-path methods take the tap's deadline.
//!
//! Embedded state is kept durably by default (the `Durable` variants): decisions read
//! memory as before, and every change also goes to the [`Storage`] commit thread. A
//! link or status change is acknowledged only once committed; the change is made in
//! memory and queued under one lock per store ([`Journal`]), so the database sees
//! changes in the order memory did. Used codes and retry records are written behind the
//! tap (within `storage.write_behind`), so a tap never waits for the disk.
//!
//! When the shared tier is down: links come from the local cache, statuses from the
//! health cache within their staleness bound, retries are decided afresh, and ride
//! codes are checked against this instance's own memory of used codes. That last
//! fallback is a documented risk: while Redis is down, a code used at one instance
//! could be used once more at another. Every answer given meanwhile is marked degraded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ridegate_adapters::health::{Applied, HealthSource, MemoryHealth, RedisHealth, RemoteHealth, SourceError};
use ridegate_adapters::idempotency::{IdempotencyStore, Kept, MemoryIdempotency, RedisIdempotency};
use ridegate_adapters::ids::{CodeKey, CredentialId, IdentityId, RequestKey};
use ridegate_adapters::link::{LinkError, LinkRecord, LinkStore, Linked, MemoryLinks, RedisLinks};
use ridegate_adapters::replay::{Claim, MemoryReplayGuard, RedisReplayGuard, ReplayGuard};
use ridegate_adapters::shared::SharedError;
use ridegate_adapters::storage::{Pending, Storage, StorageError, Write};
use ridegate_core::model::{HealthStatus, UnixMillis};
use tokio::time::{Instant, timeout_at};

use crate::cache::HealthCache;
use ridegate_core::decision::HealthView;

/// The durable store for one kind of record, and the lock that keeps changes in memory
/// and in the database in the same order.
#[derive(Clone)]
pub struct Journal {
    storage: Storage,
    order: Arc<parking_lot::Mutex<()>>,
}

impl Journal {
    /// A journal writing to `storage`.
    pub fn new(storage: Storage) -> Self {
        Self {
            storage,
            order: Arc::new(parking_lot::Mutex::new(())),
        }
    }

    /// The store written to.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Runs `change` on memory and queues the writes it returns, under the order lock;
    /// returns its outcome and the last write's [`Pending`] (commits are in order, so
    /// the last one durable means all of them are).
    fn change<T, E>(&self, change: impl FnOnce() -> Result<(T, Vec<Write>), E>) -> Result<(T, Option<Pending>), E> {
        let _order = self.order.lock();
        let (outcome, writes) = change()?;
        let mut last = None;
        for write in writes {
            last = Some(self.storage.write(write));
        }
        Ok((outcome, last))
    }
}

/// Writes to a durable embedded store kept in flight per call (a `BulkLink` batch, an
/// `Ingest` batch), so one batch shares a few commits instead of one commit per row.
const DURABLE_CONCURRENCY: usize = 1_024;

/// Awaits `pending`, if there is one.
async fn durable(pending: Option<Pending>) -> Result<(), StorageError> {
    match pending {
        Some(pending) => pending.durable().await,
        None => Ok(()),
    }
}

/// The link store.
#[derive(Clone)]
pub enum LinkBackend {
    /// In this process.
    Memory(Arc<MemoryLinks>),
    /// In Redis, behind a local cache.
    Shared(Arc<RedisLinks>),
    /// In this process, and kept in the data directory.
    Durable(Arc<MemoryLinks>, Journal),
}

impl LinkBackend {
    /// The gate's question, answered by `deadline`.
    pub async fn resolve_by(
        &self,
        credential: CredentialId,
        now: UnixMillis,
        deadline: Instant,
    ) -> Result<Option<IdentityId>, LinkError> {
        match self {
            Self::Memory(m) | Self::Durable(m, _) => Ok(m.resolve_now(&credential, now)),
            Self::Shared(r) => timeout_at(deadline, r.resolve(credential, now))
                .await
                .unwrap_or(Err(LinkError::Unavailable(SharedError::Timeout))),
        }
    }

    /// Forgets what this instance cached about `credential`.
    pub fn invalidate(&self, credential: &CredentialId) {
        if let Self::Shared(r) = self {
            r.invalidate(credential);
        }
    }

    /// Forgets everything this instance cached.
    pub fn clear_cache(&self) {
        if let Self::Shared(r) = self {
            r.clear_cache();
        }
    }

    /// Credentials linked, when the store is in this process.
    pub fn local_len(&self) -> Option<usize> {
        match self {
            Self::Memory(m) | Self::Durable(m, _) => Some(m.len()),
            Self::Shared(_) => None,
        }
    }

    /// How many link calls of one batch may be in flight at once: many for the
    /// durable store (they share commits), one otherwise (rows apply one by one).
    pub fn batch_concurrency(&self) -> usize {
        match self {
            Self::Durable(..) => DURABLE_CONCURRENCY,
            Self::Memory(_) | Self::Shared(_) => 1,
        }
    }

    /// Removes expired day-bound links held in this process.
    pub fn sweep_expired(&self, now: UnixMillis) -> usize {
        match self {
            // The database drops ended links when it is next loaded.
            Self::Memory(m) | Self::Durable(m, _) => m.sweep_expired(now),
            // Redis records carry their own end; nothing to sweep here.
            Self::Shared(_) => 0,
        }
    }
}

impl LinkStore for LinkBackend {
    async fn resolve(&self, credential: CredentialId, now: UnixMillis) -> Result<Option<IdentityId>, LinkError> {
        match self {
            Self::Memory(m) | Self::Durable(m, _) => m.resolve(credential, now).await,
            Self::Shared(r) => r.resolve(credential, now).await,
        }
    }

    async fn link(&self, credential: CredentialId, record: LinkRecord) -> Result<Linked, LinkError> {
        match self {
            Self::Memory(m) => m.link(credential, record).await,
            Self::Shared(r) => r.link(credential, record).await,
            Self::Durable(m, journal) => {
                let (linked, pending) = journal.change(|| {
                    let linked = m.link_now(credential, &record)?;
                    let mut writes = Vec::with_capacity(2);
                    if let Linked::Replaced { previous, .. } = &linked {
                        writes.push(Write::Unlink(*previous));
                    }
                    writes.push(Write::Link(credential, record));
                    Ok::<_, LinkError>((linked, writes))
                })?;
                durable(pending).await.map_err(LinkError::Storage)?;
                Ok(linked)
            }
        }
    }

    async fn unlink(&self, credential: CredentialId) -> Result<Option<LinkRecord>, LinkError> {
        match self {
            Self::Memory(m) => m.unlink(credential).await,
            Self::Shared(r) => r.unlink(credential).await,
            Self::Durable(m, journal) => {
                let (record, pending) = journal.change(|| {
                    let record = m.unlink_now(&credential);
                    let writes = record.iter().map(|_| Write::Unlink(credential)).collect();
                    Ok::<_, LinkError>((record, writes))
                })?;
                durable(pending).await.map_err(LinkError::Storage)?;
                Ok(record)
            }
        }
    }

    async fn get(&self, credential: CredentialId, now: UnixMillis) -> Result<Option<LinkRecord>, LinkError> {
        match self {
            Self::Memory(m) | Self::Durable(m, _) => m.get(credential, now).await,
            Self::Shared(r) => r.get(credential, now).await,
        }
    }

    async fn links_of(
        &self,
        identity: IdentityId,
        now: UnixMillis,
    ) -> Result<Vec<(CredentialId, LinkRecord)>, LinkError> {
        match self {
            Self::Memory(m) | Self::Durable(m, _) => m.links_of(identity, now).await,
            Self::Shared(r) => r.links_of(identity, now).await,
        }
    }
}

/// Where health statuses come from and are written to: the embedded store, Redis, or the
/// health-code platform. The feed writes here; decisions never read it directly, they
/// read through the [`StatusReader`] in front of it.
#[derive(Clone)]
pub enum StatusSource {
    /// In this process, fed from a file and the feed.
    Memory(Arc<MemoryHealth>),
    /// In this process, and kept in the data directory.
    Durable(Arc<MemoryHealth>, Journal),
    /// In Redis, shared by every instance.
    Shared(RedisHealth),
    /// The health-code platform over the network; with Redis configured, statuses it
    /// gave are kept there for `cache_ttl`, so one instance's fetch serves them all.
    Platform {
        /// The platform.
        remote: Arc<RemoteHealth>,
        /// Redis in front of it, when configured.
        tier: Option<RedisHealth>,
        /// How long a fetched status is kept in Redis.
        ttl: Duration,
    },
}

/// A status could not be stored. Its message is safe to give the publisher; the shared
/// tier's error is kept as the source, for logs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time: sending the status
    /// again later may work.
    #[error("the status store is unavailable; send it again")]
    Unavailable(#[source] SharedError),
    /// The store refused the write: sending it again will not help.
    #[error("the status store refused the status")]
    Refused(#[source] SharedError),
    /// The durable embedded store could not keep it: sending it again may work.
    #[error("the status store is unavailable; send it again")]
    NotKept(#[source] StorageError),
}

impl From<SharedError> for StoreError {
    fn from(e: SharedError) -> Self {
        match e {
            SharedError::Rejected(_) => Self::Refused(e),
            SharedError::Down
            | SharedError::DataLost
            | SharedError::Timeout
            | SharedError::Connection(_)
            | SharedError::Config(_) => Self::Unavailable(e),
        }
    }
}

impl StatusSource {
    /// Stores a status unless a later one is held; in Redis, announces it to every
    /// instance. With the platform and no Redis, there is no store of its own: the
    /// caller's cache is all there is (`Applied::Stored`).
    pub async fn put(&self, identity: IdentityId, status: HealthStatus) -> Result<Applied, StoreError> {
        let redis = match self {
            Self::Memory(m) => return Ok(m.put(identity, status)),
            Self::Durable(m, journal) => {
                let (applied, pending) = journal.change(|| {
                    let unchanged = m.get(&identity) == Some(status);
                    let applied = m.put(identity, status);
                    let writes = if applied == Applied::Stored && !unchanged {
                        vec![Write::Status(identity, status)]
                    } else {
                        Vec::new()
                    };
                    Ok::<_, StoreError>((applied, writes))
                })?;
                durable(pending).await.map_err(StoreError::NotKept)?;
                return Ok(applied);
            }
            Self::Shared(r) | Self::Platform { tier: Some(r), .. } => r,
            Self::Platform { tier: None, .. } => return Ok(Applied::Stored),
        };
        Ok(redis.put(identity, status).await?)
    }

    /// Statuses held, when they are held in this process.
    pub fn local_len(&self) -> Option<usize> {
        match self {
            Self::Memory(m) | Self::Durable(m, _) => Some(m.len()),
            Self::Shared(_) | Self::Platform { .. } => None,
        }
    }

    /// How many puts of one batch may be in flight at once: many for the durable
    /// store (they share commits), one otherwise (updates apply one by one).
    pub fn batch_concurrency(&self) -> usize {
        match self {
            Self::Durable(..) => DURABLE_CONCURRENCY,
            Self::Memory(_) | Self::Shared(_) | Self::Platform { .. } => 1,
        }
    }

    /// The in-memory store, when statuses are held in this process.
    pub fn embedded(&self) -> Option<&Arc<MemoryHealth>> {
        match self {
            Self::Memory(m) | Self::Durable(m, _) => Some(m),
            Self::Shared(_) | Self::Platform { .. } => None,
        }
    }

    /// The platform client, when statuses come from the platform.
    pub fn platform(&self) -> Option<&Arc<RemoteHealth>> {
        match self {
            Self::Platform { remote, .. } => Some(remote),
            Self::Memory(_) | Self::Durable(..) | Self::Shared(_) => None,
        }
    }

    /// Keeps a status the platform announced in Redis too (when configured), in the
    /// background.
    pub fn keep(&self, identity: IdentityId, status: HealthStatus) {
        if let Self::Platform {
            tier: Some(redis), ttl, ..
        } = self
        {
            let (redis, ttl) = (redis.clone(), *ttl);
            tokio::spawn(async move { redis.cache(identity, status, ttl).await });
        }
    }
}

impl HealthSource for StatusSource {
    async fn fetch(&self, identity: IdentityId, deadline: Instant) -> Result<Option<HealthStatus>, SourceError> {
        match self {
            Self::Memory(m) | Self::Durable(m, _) => m.fetch(identity, deadline).await,
            Self::Shared(r) => r.fetch(identity, deadline).await,
            Self::Platform { remote, tier, .. } => {
                // Redis first (an error there is no reason not to ask the platform).
                if let Some(redis) = tier
                    && let Ok(Some(status)) = redis.fetch(identity, deadline).await
                {
                    return Ok(Some(status));
                }
                let status = remote.fetch(identity, deadline).await?;
                if let Some(status) = status {
                    self.keep(identity, status);
                }
                Ok(status)
            }
        }
    }
}

/// Where the decision path reads health statuses: the embedded store itself, or the
/// health cache in front of a remote [`StatusSource`].
#[derive(Clone)]
pub enum StatusReader {
    /// The embedded store, read directly: it is memory already and always current, so a
    /// cache in front of it would only double the memory and the cost of a lookup.
    Embedded(Arc<MemoryHealth>),
    /// The health cache in front of Redis or the platform.
    Cached(HealthCache<StatusSource>),
}

impl StatusReader {
    /// The view for one decision, by `deadline` at the latest.
    pub async fn lookup(&self, identity: IdentityId, now: UnixMillis, deadline: Instant) -> HealthView {
        match self {
            Self::Embedded(m) => HealthView::Known {
                status: m.get(&identity),
                age_ms: 0,
                degraded: false,
            },
            Self::Cached(cache) => cache.lookup(identity, now, deadline).await,
        }
    }

    /// Caches a status stored or announced elsewhere (the embedded store needs nothing:
    /// the status was put into it).
    pub fn store(&self, identity: IdentityId, status: HealthStatus) {
        if let Self::Cached(cache) = self {
            cache.store(identity, status);
        }
    }

    /// Forgets every cached status.
    pub fn clear(&self) {
        if let Self::Cached(cache) = self {
            cache.clear();
        }
    }

    /// The cache, when there is one.
    pub fn cache(&self) -> Option<&HealthCache<StatusSource>> {
        match self {
            Self::Embedded(_) => None,
            Self::Cached(cache) => Some(cache),
        }
    }
}

/// The single-use guard for ride codes.
pub enum ReplayBackend {
    /// This process's memory.
    Memory(MemoryReplayGuard),
    /// This process's memory, with each first use written behind to the data directory.
    Durable(MemoryReplayGuard, Storage),
    /// Redis, with this process's memory as the fallback while Redis is unreachable.
    Shared {
        /// The shared guard.
        redis: RedisReplayGuard,
        /// What this instance itself has seen: kept always, used when Redis fails.
        local: MemoryReplayGuard,
        /// Claims decided by the local guard because Redis did not answer (shared with
        /// the metrics).
        fallbacks: Arc<AtomicU64>,
    },
}

/// What claiming a code found, and whether the guard that decides was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The claim.
    pub claim: Claim,
    /// False when the shared guard could not answer in time and the claim is this
    /// instance's memory alone.
    pub confirmed: bool,
}

impl ReplayBackend {
    /// Claims `code` for `request`, by `deadline`.
    pub async fn claim_by(
        &self,
        code: CodeKey,
        request: RequestKey,
        valid_until: UnixMillis,
        now: UnixMillis,
        deadline: Instant,
    ) -> Claimed {
        match self {
            Self::Memory(m) => Claimed {
                claim: m.claim_now(code, request, valid_until, now),
                confirmed: true,
            },
            Self::Durable(m, storage) => {
                let claim = m.claim_now(code, request, valid_until, now);
                if claim == Claim::First {
                    storage.write_behind(Write::Code {
                        code,
                        request,
                        until: valid_until,
                    });
                }
                Claimed { claim, confirmed: true }
            }
            Self::Shared {
                redis,
                local,
                fallbacks,
            } => {
                let local_claim = local.claim_now(code, request, valid_until, now);
                match timeout_at(deadline, redis.claim(code, request, valid_until, now)).await {
                    Ok(Ok(claim)) => Claimed { claim, confirmed: true },
                    _ => {
                        fallbacks.fetch_add(1, Ordering::Relaxed);
                        Claimed {
                            claim: local_claim,
                            confirmed: false,
                        }
                    }
                }
            }
        }
    }
}

/// Idempotency records.
pub enum IdempotencyBackend {
    /// This process's memory.
    Memory(MemoryIdempotency),
    /// This process's memory, with each record written behind to the data directory.
    Durable(MemoryIdempotency, Storage),
    /// Redis: a retry reaching another instance still gets the original answer.
    Shared(RedisIdempotency),
}

impl IdempotencyBackend {
    /// Records `answer` unless one is held (then returns it), by `deadline`. A store
    /// that cannot answer in time records nothing: the retry is decided afresh.
    pub async fn record_by(
        &self,
        request: RequestKey,
        kept: Kept,
        until: UnixMillis,
        now: UnixMillis,
        deadline: Instant,
    ) -> Option<Kept> {
        match self {
            Self::Memory(m) => m.record_now(request, kept, until, now),
            Self::Durable(m, storage) => {
                let held = m.record_now(request, kept, until, now);
                if held.is_none() {
                    storage.write_behind(Write::Retry { request, kept, until });
                }
                held
            }
            Self::Shared(r) => timeout_at(deadline, r.record(request, kept, until, now))
                .await
                .ok()?
                .ok()?,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ridegate_adapters::caller::CallerKind;
    use ridegate_adapters::link::{Consent, CredentialClass};
    use ridegate_adapters::replay::USED_CODE_GRACE_MS;
    use ridegate_adapters::storage::StorageSettings;

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

    fn card(identity: u8) -> LinkRecord {
        LinkRecord {
            identity: IdentityId([identity; 16]),
            class: CredentialClass::PhysicalCard,
            issuer: None,
            tail: *b"0001",
            linked_at: NOW,
            linked_by: CallerKind::UpgradeService,
            caller_id: Arc::from("upgrade-1"),
            staff_operator_id: None,
            consent: Consent::UpgradeService,
            valid_until: None,
        }
    }

    /// Opens the store in `dir`, once a previous handle's commit thread has let it go.
    fn open(dir: &Path) -> Storage {
        let settings = StorageSettings {
            data_dir: dir.to_owned(),
            ..StorageSettings::default()
        };
        (0..500)
            .find_map(|_| {
                Storage::open(&settings)
                    .inspect_err(|_| std::thread::sleep(Duration::from_millis(10)))
                    .ok()
            })
            .expect("open")
    }

    #[tokio::test]
    async fn what_a_durable_link_call_answered_is_what_a_restart_finds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second, other) = (CredentialId([1; 16]), CredentialId([2; 16]), CredentialId([3; 16]));
        {
            let links = LinkBackend::Durable(Arc::new(MemoryLinks::default()), Journal::new(open(dir.path())));
            assert_eq!(links.link(first, card(9)).await.expect("linked"), Linked::New);
            // A second physical card replaces the first, in memory and on disk.
            let replaced = links.link(second, card(9)).await.expect("linked");
            assert!(matches!(replaced, Linked::Replaced { previous, .. } if previous == first));
            links.link(other, card(8)).await.expect("linked");
            assert!(links.unlink(other).await.expect("unlinked").is_some());
        }
        let restored = Arc::new(MemoryLinks::default());
        open(dir.path())
            .restore(
                NOW,
                &restored,
                &MemoryHealth::default(),
                &MemoryReplayGuard::default(),
                &MemoryIdempotency::default(),
            )
            .expect("restored");
        assert_eq!(restored.resolve_now(&first, NOW), None, "the replaced card");
        assert_eq!(restored.resolve_now(&second, NOW), Some(IdentityId([9; 16])));
        assert_eq!(restored.resolve_now(&other, NOW), None, "the unlinked card");
        assert_eq!(restored.len(), 1);
    }

    #[tokio::test]
    async fn a_code_claimed_with_a_reading_from_before_its_expiry_finds_its_use_after_it() {
        let guard = ReplayBackend::Memory(MemoryReplayGuard::default());
        let deadline = Instant::now() + Duration::from_secs(1);
        let (code, first, replay) = (CodeKey([1; 16]), RequestKey([2; 16]), RequestKey([3; 16]));
        let valid_until = NOW.plus_ms(1_000);
        let claimed = guard.claim_by(code, first, valid_until, NOW, deadline).await;
        assert_eq!(claimed.claim, Claim::First);
        // Other codes of the same shard are claimed once the code has expired: each
        // claim removes expired records from the front.
        for i in 100..132u8 {
            let mut other = [i; 16];
            other[15] = 1;
            let later = valid_until.plus_ms(USED_CODE_GRACE_MS / 2);
            guard
                .claim_by(CodeKey(other), first, later.plus_ms(60_000), later, deadline)
                .await;
        }
        // A replay checked just before expiry, claimed with that reading.
        let claimed = guard
            .claim_by(code, replay, valid_until, valid_until.plus_ms(-1), deadline)
            .await;
        assert_eq!(claimed.claim, Claim::Replayed);
    }
}
