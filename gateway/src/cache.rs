//! The health-status cache in front of the health-code source.
//!
//! A cached answer is *fresh* for `ttl` after it was confirmed with the source. Past
//! that, the tap asks the source again; if the source cannot answer before the tap's
//! deadline, the old answer is still used — marked degraded — until it is
//! `max_staleness` old, after which the status is *unavailable* and the policy's
//! unavailable-verdict applies. Concurrent misses for one identity share one fetch; the
//! fetch carries the remaining budget of the tap that started it (never more than
//! `fetch_timeout`) and keeps running after that tap is answered, so the next tap finds
//! the status cached. A hit on an entry past `refresh_ahead` of its freshness starts a
//! background refresh: the rider in the queue does not pay for the fetch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use moka::ops::compute::Op;
use parking_lot::Mutex;
use ridegate_adapters::health::{HealthSource, SourceError};
use ridegate_adapters::ids::{IdHasher, IdentityId};
use ridegate_core::clock::{Clock, millis};
use ridegate_core::model::{HealthStatus, UnixMillis};
use tokio::time::Instant;

use ridegate_core::decision::HealthView;

/// How the cache behaves.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// How long an answer is fresh.
    pub ttl: Duration,
    /// How old an answer may be and still be used, degraded.
    pub max_staleness: Duration,
    /// Most entries kept.
    pub capacity: u64,
    /// Upper bound on one fetch from the source.
    pub fetch_timeout: Duration,
    /// Share of `ttl` after which a hit also refreshes the entry in the background
    /// (0 turns refresh-ahead off).
    pub refresh_ahead: f64,
}

/// The source's answer for one identity: a status, or `None` for "no record".
#[derive(Debug, Clone, Copy)]
struct Entry {
    status: Option<HealthStatus>,
    confirmed_at: UnixMillis,
}

type FetchResult = Result<Option<HealthStatus>, SourceError>;
type Fetch = Shared<BoxFuture<'static, FetchResult>>;

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Lookups answered from a fresh entry.
    pub hits: AtomicU64,
    /// Lookups that had to ask the source (started or joined a fetch).
    pub misses: AtomicU64,
    /// Fetches actually sent to the source.
    pub fetches: AtomicU64,
    /// Fetches that failed or timed out.
    pub fetch_errors: AtomicU64,
    /// Background refreshes started by hits on ageing entries.
    pub refreshes: AtomicU64,
    /// Lookups answered from an entry past its freshness (degraded).
    pub stale: AtomicU64,
    /// Lookups with nothing usable (degraded, unavailable-policy).
    pub unavailable: AtomicU64,
}

struct Inner<S> {
    source: Arc<S>,
    entries: moka::sync::Cache<IdentityId, Entry, IdHasher>,
    inflight: Mutex<HashMap<IdentityId, Fetch, IdHasher>>,
    ttl_ms: i64,
    max_staleness_ms: i64,
    fetch_timeout: Duration,
    refresh_after_ms: Option<i64>,
    clock: Clock,
    stats: CacheStats,
}

/// Health statuses by identity, cached in front of a [`HealthSource`].
pub struct HealthCache<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for HealthCache<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: HealthSource> HealthCache<S> {
    /// A cache over `source`.
    pub fn new(source: Arc<S>, settings: CacheSettings, clock: Clock) -> Self {
        // No moka expiry policy: it would read the clock and keep timestamps on every
        // `get`. Each entry carries its confirmation time and `lookup` judges its age;
        // entries past `max_staleness` are never used and age out by capacity.
        // LRU rather than TinyLFU: the cache is sized for the active population, so
        // recency is the signal, and LRU skips the frequency sketch on every read.
        let entries = moka::sync::Cache::builder()
            .max_capacity(settings.capacity)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build_with_hasher(IdHasher);
        Self {
            inner: Arc::new(Inner {
                source,
                entries,
                inflight: Mutex::new(HashMap::with_hasher(IdHasher)),
                ttl_ms: millis(settings.ttl),
                max_staleness_ms: millis(settings.max_staleness),
                fetch_timeout: settings.fetch_timeout,
                refresh_after_ms: (settings.refresh_ahead > 0.0)
                    .then(|| (millis(settings.ttl) as f64 * settings.refresh_ahead.min(1.0)) as i64),
                clock,
                stats: CacheStats::default(),
            }),
        }
    }

    /// What is known of `identity`'s status at `now`, by `deadline` at the latest. A
    /// fresh entry answers at once; only a miss or a stale entry waits for the source.
    pub async fn lookup(&self, identity: IdentityId, now: UnixMillis, deadline: Instant) -> HealthView {
        match self.fresh(identity, now) {
            Ok(view) => view,
            Err(cached) => self.refresh(identity, cached, now, deadline).await,
        }
    }

    /// The fresh cached answer, or what is cached (if anything) when it is not fresh.
    fn fresh(&self, identity: IdentityId, now: UnixMillis) -> Result<HealthView, Option<Entry>> {
        let inner = &self.inner;
        match inner.entries.get(&identity) {
            Some(entry) if now.since(entry.confirmed_at) < inner.ttl_ms => {
                inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                let age_ms = now.since(entry.confirmed_at).max(0);
                if inner.refresh_after_ms.is_some_and(|after| age_ms >= after) {
                    inner.stats.refreshes.fetch_add(1, Ordering::Relaxed);
                    drop(self.fetch(identity, Some(entry.confirmed_at), Instant::now() + inner.fetch_timeout));
                }
                Ok(HealthView::Known {
                    status: entry.status,
                    age_ms,
                    degraded: false,
                })
            }
            cached => Err(cached),
        }
    }

    /// Asks the source (joining a fetch in flight); falls back to the stale entry within
    /// the staleness bound, else reports the status unavailable.
    async fn refresh(
        &self,
        identity: IdentityId,
        cached: Option<Entry>,
        now: UnixMillis,
        deadline: Instant,
    ) -> HealthView {
        let inner = &self.inner;
        inner.stats.misses.fetch_add(1, Ordering::Relaxed);
        // The fetch gets the tap's remaining budget; with the budget spent, it gets
        // `fetch_timeout` and fills the cache for the next tap.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let fetch_deadline = Instant::now()
            + if remaining.is_zero() {
                inner.fetch_timeout
            } else {
                remaining.min(inner.fetch_timeout)
            };
        let fetch = self.fetch(identity, cached.map(|e| e.confirmed_at), fetch_deadline);
        // With the budget already spent, do not even wait one poll: answer now.
        if Instant::now() < deadline
            && let Ok(Ok(status)) = tokio::time::timeout_at(deadline, fetch).await
        {
            return HealthView::Known {
                status,
                age_ms: 0,
                degraded: false,
            };
        }
        match cached {
            Some(entry) if now.since(entry.confirmed_at) <= inner.max_staleness_ms => {
                inner.stats.stale.fetch_add(1, Ordering::Relaxed);
                HealthView::Known {
                    status: entry.status,
                    age_ms: now.since(entry.confirmed_at),
                    degraded: true,
                }
            }
            _ => {
                inner.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                HealthView::Unavailable
            }
        }
    }

    /// Records a status pushed by the platform, confirmed now. An older status than
    /// the one cached is ignored.
    pub fn store(&self, identity: IdentityId, status: HealthStatus) {
        self.inner.store(identity, Some(status));
    }

    /// The fetch for `identity` in flight, or a new one that gives up at `deadline`.
    /// `seen` is when the entry the caller looked at was confirmed: if a fetch has
    /// confirmed it since (and left the in-flight map), its answer is used instead of
    /// asking the source again.
    fn fetch(&self, identity: IdentityId, seen: Option<UnixMillis>, deadline: Instant) -> Fetch {
        let mut inflight = self.inner.inflight.lock();
        if let Some(fetch) = inflight.get(&identity) {
            return fetch.clone();
        }
        // A fetch stores its answer before it leaves the map, so under the map's lock
        // a completed fetch's answer is visible here.
        if let Some(entry) = self.inner.entries.get(&identity)
            && Some(entry.confirmed_at) != seen
        {
            return futures::future::ready(Ok(entry.status)).boxed().shared();
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let fetch: Fetch = async move { rx.await.unwrap_or(Err(SourceError::Abandoned)) }
            .boxed()
            .shared();
        inflight.insert(identity, fetch.clone());
        drop(inflight);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.stats.fetches.fetch_add(1, Ordering::Relaxed);
            let result = tokio::time::timeout_at(deadline, inner.source.fetch(identity, deadline))
                .await
                .unwrap_or(Err(SourceError::Timeout));
            match &result {
                Ok(status) => inner.store(identity, *status),
                Err(_) => {
                    inner.stats.fetch_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Cached before leaving the in-flight map, so no tap can slip between and
            // start a second fetch.
            inner.inflight.lock().remove(&identity);
            let _ = tx.send(result);
        });
        fetch
    }

    /// Forgets every cached status (changes may have been missed).
    pub fn clear(&self) {
        self.inner.entries.invalidate_all();
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &CacheStats {
        &self.inner.stats
    }

    /// Entries held (approximate: moka counts asynchronously).
    pub fn len(&self) -> u64 {
        self.inner.entries.entry_count()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<S> Inner<S> {
    /// Caches the source's answer, unless a status set later is already cached.
    fn store(&self, identity: IdentityId, status: Option<HealthStatus>) {
        let confirmed_at = self.clock.now();
        self.entries.entry(identity).and_compute_with(|existing| {
            let held_is_newer = existing
                .and_then(|e| e.into_value().status)
                .zip(status)
                .is_some_and(|(held, new)| held.set_at > new.set_at);
            if held_is_newer {
                Op::Nop
            } else {
                Op::Put(Entry { status, confirmed_at })
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use ridegate_adapters::health::MemoryHealth;
    use ridegate_core::model::Colour;

    use super::*;

    const T0: UnixMillis = UnixMillis(1_900_000_000_000);

    fn settings() -> CacheSettings {
        CacheSettings {
            ttl: Duration::from_secs(30),
            max_staleness: Duration::from_secs(600),
            capacity: 1_000,
            fetch_timeout: Duration::from_secs(1),
            refresh_ahead: 0.0,
        }
    }

    fn status(colour: Colour, set_at: UnixMillis) -> HealthStatus {
        HealthStatus {
            colour,
            set_at,
            negative_test_at: None,
        }
    }

    /// A source that counts calls and can be made slow or failing.
    #[derive(Default)]
    struct Scripted {
        calls: AtomicUsize,
        delay: Mutex<Duration>,
        failing: Mutex<bool>,
        store: MemoryHealth,
    }

    impl HealthSource for Scripted {
        async fn fetch(&self, identity: IdentityId, _deadline: Instant) -> Result<Option<HealthStatus>, SourceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let delay = *self.delay.lock();
            tokio::time::sleep(delay).await;
            if *self.failing.lock() {
                return Err(SourceError::CircuitOpen);
            }
            Ok(self.store.get(&identity))
        }
    }

    fn deadline_in(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn a_miss_fetches_then_hits_until_the_ttl() {
        let clock = Clock::manual(T0);
        let source = Arc::new(Scripted::default());
        let id = IdentityId([1; 16]);
        source.store.put(id, status(Colour::Green, T0));
        let cache = HealthCache::new(source.clone(), settings(), clock.clone());
        let view = cache.lookup(id, clock.now(), deadline_in(100)).await;
        assert!(
            matches!(view, HealthView::Known { status: Some(s), degraded: false, .. } if s.colour == Colour::Green)
        );
        clock.advance(Duration::from_secs(29));
        assert_eq!(
            cache.lookup(id, clock.now(), deadline_in(100)).await,
            HealthView::Known {
                status: Some(status(Colour::Green, T0)),
                age_ms: 29_000,
                degraded: false
            }
        );
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_secs(2));
        cache.lookup(id, clock.now(), deadline_in(100)).await;
        assert_eq!(source.calls.load(Ordering::SeqCst), 2, "refetched after the ttl");
    }

    #[tokio::test(start_paused = true)]
    async fn no_record_is_cached_as_an_answer_too() {
        let source = Arc::new(Scripted::default());
        let cache = HealthCache::new(source.clone(), settings(), Clock::manual(T0));
        let id = IdentityId([2; 16]);
        for _ in 0..3 {
            assert_eq!(
                cache.lookup(id, T0, deadline_in(100)).await,
                HealthView::Known {
                    status: None,
                    age_ms: 0,
                    degraded: false
                }
            );
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_for_one_identity_make_one_fetch() {
        let source = Arc::new(Scripted::default());
        *source.delay.lock() = Duration::from_millis(20);
        let cache = HealthCache::new(source.clone(), settings(), Clock::manual(T0));
        let id = IdentityId([3; 16]);
        let lookups: Vec<_> = (0..1_000).map(|_| cache.lookup(id, T0, deadline_in(100))).collect();
        let views = futures::future::join_all(lookups).await;
        assert!(
            views
                .iter()
                .all(|v| matches!(v, HealthView::Known { degraded: false, .. }))
        );
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_miss_that_finds_a_fetch_just_completed_uses_its_answer() {
        let source = Arc::new(Scripted::default());
        let cache = HealthCache::new(source.clone(), settings(), Clock::manual(T0));
        let id = IdentityId([7; 16]);
        // The tap saw no entry; before it reached the in-flight map, a fetch stored
        // the answer and left.
        cache.inner.store(id, Some(status(Colour::Green, T0)));
        let answer = cache.fetch(id, None, deadline_in(100)).await.unwrap();
        assert_eq!(answer.map(|s| s.colour), Some(Colour::Green));
        assert_eq!(source.calls.load(Ordering::SeqCst), 0, "the source was not asked again");
        // A caller that saw this very entry (refreshing it) does ask.
        let confirmed = cache.inner.entries.get(&id).unwrap().confirmed_at;
        cache.fetch(id, Some(confirmed), deadline_in(100)).await.unwrap();
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ageing_entry_is_refreshed_by_a_hit_without_making_it_wait() {
        let clock = Clock::manual(T0);
        let source = Arc::new(Scripted::default());
        let id = IdentityId([8; 16]);
        source.store.put(id, status(Colour::Green, T0));
        let cache = HealthCache::new(
            source.clone(),
            CacheSettings {
                refresh_ahead: 0.5,
                ..settings()
            },
            clock.clone(),
        );
        cache.lookup(id, clock.now(), deadline_in(100)).await;
        *source.delay.lock() = Duration::from_millis(50);
        clock.advance(Duration::from_secs(16));
        let started = Instant::now();
        let view = cache.lookup(id, clock.now(), deadline_in(100)).await;
        assert_eq!(Instant::now(), started, "answered at once");
        assert!(matches!(view, HealthView::Known { degraded: false, .. }));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(source.calls.load(Ordering::SeqCst), 2, "refreshed behind the hit");
        // 31 s after the first fetch, 15 s after the refresh: still fresh.
        clock.advance(Duration::from_secs(15));
        cache.lookup(id, clock.now(), deadline_in(100)).await;
        assert_eq!(cache.stats().misses.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_source_is_answered_from_the_stale_entry_then_unavailable() {
        let clock = Clock::manual(T0);
        let source = Arc::new(Scripted::default());
        let id = IdentityId([4; 16]);
        source.store.put(id, status(Colour::Red, T0));
        let cache = HealthCache::new(source.clone(), settings(), clock.clone());
        cache.lookup(id, clock.now(), deadline_in(100)).await;
        *source.delay.lock() = Duration::from_millis(500);
        clock.advance(Duration::from_secs(60));
        let started = Instant::now();
        let view = cache.lookup(id, clock.now(), deadline_in(100)).await;
        assert_eq!(
            Instant::now() - started,
            Duration::from_millis(100),
            "answered at the deadline, not later"
        );
        assert_eq!(
            view,
            HealthView::Known {
                status: Some(status(Colour::Red, T0)),
                age_ms: 60_000,
                degraded: true
            }
        );
        tokio::time::sleep(Duration::from_secs(1)).await; // let the slow fetch land
        clock.advance(Duration::from_secs(601));
        let view = cache.lookup(id, clock.now(), deadline_in(100)).await;
        assert_eq!(view, HealthView::Unavailable, "past max staleness");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_source_with_nothing_cached_is_unavailable() {
        let source = Arc::new(Scripted::default());
        *source.failing.lock() = true;
        let cache = HealthCache::new(source, settings(), Clock::manual(T0));
        assert_eq!(
            cache.lookup(IdentityId([5; 16]), T0, deadline_in(100)).await,
            HealthView::Unavailable
        );
        assert_eq!(cache.stats().fetch_errors.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn pushed_statuses_replace_the_cached_one_unless_older() {
        let clock = Clock::manual(T0);
        let source = Arc::new(Scripted::default());
        let id = IdentityId([6; 16]);
        source.store.put(id, status(Colour::Green, T0));
        let cache = HealthCache::new(source.clone(), settings(), clock.clone());
        cache.lookup(id, clock.now(), deadline_in(100)).await;
        cache.store(id, status(Colour::Red, T0.plus_ms(10)));
        cache.store(id, status(Colour::Green, T0.plus_ms(5)));
        let HealthView::Known { status: Some(s), .. } = cache.lookup(id, clock.now(), deadline_in(100)).await else {
            panic!()
        };
        assert_eq!(s.colour, Colour::Red);
        assert_eq!(source.calls.load(Ordering::SeqCst), 1, "the push made the entry fresh");
    }
}
