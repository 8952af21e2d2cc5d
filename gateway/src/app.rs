//! Wiring: everything `ridegate serve` runs, built from a validated [`Config`]. Data
//! files are loaded here, before anything binds; with Redis configured they are loaded
//! into the shared tier.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use futures::StreamExt as _;
use ridegate_adapters::audit::{AuditSink, JsonLinesAudit};
use ridegate_adapters::caller::CallerVerifier;
use ridegate_adapters::credential::ride_code::RideCodeVerifier;
use ridegate_adapters::health::{MemoryHealth, RedisHealth, RemoteHealth, WatchEvent, read_statuses};
use ridegate_adapters::idempotency::{MemoryIdempotency, RedisIdempotency};
use ridegate_adapters::ids::Pseudonymizer;
use ridegate_adapters::lines::ImportReport;
use ridegate_adapters::link::{LinkStore, MemoryLinks, RedisLinks, read_links};
use ridegate_adapters::replay::{MemoryReplayGuard, RedisReplayGuard};
use ridegate_adapters::shared::SharedTier;
use ridegate_adapters::shared::changes::Change;
use ridegate_core::clock::Clock;

use crate::authorize::{Authorizer, Parts};
use crate::cache::{CacheSettings, HealthCache};
use crate::config::Config;
use crate::linking::LinkRules;
use crate::metrics::Metrics;
use crate::stores::{HealthBackend, IdempotencyBackend, LinkBackend, ReplayBackend, Statuses};

/// Writes to the shared tier kept in flight while loading files into it.
const LOAD_CONCURRENCY: usize = 64;

/// A built ridegate: the decision path and the stores the services share.
pub struct App {
    /// The configuration it was built from.
    pub config: Config,
    /// The decision path.
    pub authorizer: Arc<Authorizer>,
    /// The link store.
    pub links: LinkBackend,
    /// The health-status source.
    pub statuses: HealthBackend,
    /// Where decisions read statuses: the embedded store, or the cache in front of
    /// Redis or the platform.
    pub health: Statuses,
    /// The shared tier, when configured.
    pub shared: Option<Arc<SharedTier>>,
    /// Keyed hashing for ids.
    pub pseudonymizer: Pseudonymizer,
    /// Decision counters.
    pub metrics: Arc<Metrics>,
    /// The audit writer.
    pub audit: Arc<JsonLinesAudit>,
    /// Verifies caller tokens for the link service and the health feed.
    pub callers: Arc<CallerVerifier>,
    /// The linking rules.
    pub link_rules: LinkRules,
    /// Issuers whose ride accounts may be linked.
    pub issuer_ids: HashSet<String>,
    /// The wall clock.
    pub clock: Clock,
}

impl App {
    /// Builds everything from `config`: keys, stores, data files, audit output.
    pub async fn build(config: Config, clock: Clock) -> anyhow::Result<Self> {
        config.validate()?;
        let pseudonymizer = if config.identity.secret.is_empty() {
            tracing::warn!(
                "identity.secret is not set: using a random secret, so pseudonyms differ between instances \
                 and restarts; set RIDEGATE_IDENTITY_SECRET in production"
            );
            Pseudonymizer::random()
        } else {
            Pseudonymizer::new(config.identity.secret.as_bytes())?
        };
        let specs = config.issuer_specs()?;
        let verifier = RideCodeVerifier::new(&specs, config.ride_codes).context("issuers")?;
        let issuer_ids: HashSet<String> = specs.iter().map(|s| s.id.clone()).collect();
        let keyed: Vec<&str> = specs
            .iter()
            .filter(|s| !s.keys.is_empty())
            .map(|s| s.id.as_str())
            .collect();
        tracing::info!(issuers = specs.len(), with_keys = ?keyed, "ride-code issuers loaded");
        let callers = Arc::new(
            CallerVerifier::new(&config.caller_keys()?, config.callers.clock_skew).context("callers: a caller key")?,
        );
        if !callers.is_configured() {
            tracing::warn!("no caller keys configured: the Links and HealthFeed services will refuse every call");
        }

        let shared = if config.redis.is_configured() {
            let tier = SharedTier::connect(config.redis.clone()).context("redis")?;
            if !tier.probe().await {
                tracing::warn!("Redis is not reachable yet: starting degraded, it will be used once it answers");
            }
            Some(tier)
        } else {
            None
        };
        let platform = if config.health.platform.is_configured() {
            let remote = RemoteHealth::connect(config.health.platform.clone()).context("health.platform")?;
            tracing::info!(url = %config.health.platform.url, "health statuses come from the health-code platform");
            Some(Arc::new(remote))
        } else {
            None
        };
        let (links, mut statuses, replay, idempotency) = match &shared {
            None => (
                LinkBackend::Memory(Arc::new(MemoryLinks::new(config.links.second_card))),
                HealthBackend::Memory(Arc::new(MemoryHealth::default())),
                ReplayBackend::Memory(MemoryReplayGuard::default()),
                IdempotencyBackend::Memory(MemoryIdempotency::default()),
            ),
            Some(tier) => (
                LinkBackend::Shared(Arc::new(RedisLinks::new(
                    tier.clone(),
                    config.links.second_card,
                    config.redis.link_cache_capacity,
                    config.redis.link_cache_ttl,
                ))),
                HealthBackend::Shared(RedisHealth::new(tier.clone())),
                ReplayBackend::Shared {
                    redis: RedisReplayGuard::new(tier.clone()),
                    local: MemoryReplayGuard::default(),
                    fallbacks: AtomicU64::new(0),
                },
                IdempotencyBackend::Shared(RedisIdempotency::new(tier.clone())),
            ),
        };
        if let Some(remote) = platform {
            statuses = HealthBackend::Platform {
                remote,
                tier: shared.clone().map(RedisHealth::new),
                ttl: config.health.cache_ttl,
            };
        }
        load_files(&config, &pseudonymizer, &clock, &links, &statuses).await?;

        let health = match &statuses {
            HealthBackend::Memory(store) => Statuses::Embedded(store.clone()),
            HealthBackend::Shared(_) | HealthBackend::Platform { .. } => Statuses::Cached(HealthCache::new(
                Arc::new(statuses.clone()),
                CacheSettings {
                    ttl: config.health.cache_ttl,
                    max_staleness: config.health.max_staleness,
                    capacity: config.health.cache_capacity,
                    fetch_timeout: config.health.fetch_timeout,
                    refresh_ahead: config.health.refresh_ahead,
                },
                clock.clone(),
            )),
        };
        let audit = Arc::new(open_audit(&config.audit.path)?);
        let metrics = Arc::new(Metrics::default());
        let authorizer = Arc::new(Authorizer::new(Parts {
            clock: clock.clone(),
            pseudonymizer: pseudonymizer.clone(),
            verifier,
            links: links.clone(),
            health: health.clone(),
            replay,
            idempotency,
            shared: shared.clone(),
            rules: config.policy.clone(),
            retry_window: config.deadline.retry_window,
            audit: audit.clone() as Arc<dyn AuditSink>,
            metrics: metrics.clone(),
        }));
        let link_rules = LinkRules {
            full_card_digits: config.links.full_card_digits,
            suspend_electronic_tickets: config.policy.electronic_single_journey_suspended,
            utc_offset_ms: i64::from(config.links.utc_offset_minutes) * 60_000,
        };
        Ok(Self {
            config,
            authorizer,
            links,
            statuses,
            health,
            shared,
            pseudonymizer,
            metrics,
            audit,
            callers,
            link_rules,
            issuer_ids,
            clock,
        })
    }

    /// Applies a change another instance made to this instance's caches.
    pub fn apply_change(&self, change: Change) {
        match change {
            Change::Status { identity, status } => self.health.store(identity, status),
            Change::Link { credential } => self.links.invalidate(&credential),
            Change::Reset => {
                self.health.clear();
                self.links.clear_cache();
            }
        }
    }

    /// Applies what the health platform's change feed says to the caches.
    pub fn apply_platform_event(&self, event: WatchEvent) {
        match event {
            WatchEvent::Change(identity, status) => {
                self.health.store(identity, status);
                self.statuses.keep(identity, status);
            }
            WatchEvent::Reset => self.health.clear(),
        }
    }

    /// Removes day-bound links (single-journey tickets) that have stopped resolving.
    pub fn sweep_links(&self) -> usize {
        self.links.sweep_expired(self.clock.now())
    }

    /// The Prometheus text for `GET /metrics`.
    pub fn render_metrics(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut gauges = vec![
            (
                "ridegate_audit_pending",
                "Audit events queued but not yet written.",
                self.audit.pending(),
            ),
            (
                "ridegate_audit_failed",
                "Audit events that could not be written (counter).",
                self.audit.failed(),
            ),
        ];
        if let Some(cache) = self.health.cache() {
            let stats = cache.stats();
            gauges.extend([
                ("ridegate_health_cache_entries", "Statuses cached.", cache.len()),
                (
                    "ridegate_health_cache_hits",
                    "Lookups answered fresh from the cache (counter).",
                    load(&stats.hits),
                ),
                (
                    "ridegate_health_cache_misses",
                    "Lookups that asked the source (counter).",
                    load(&stats.misses),
                ),
                (
                    "ridegate_health_fetches",
                    "Fetches sent to the source (counter).",
                    load(&stats.fetches),
                ),
                (
                    "ridegate_health_fetch_errors",
                    "Fetches that failed or timed out (counter).",
                    load(&stats.fetch_errors),
                ),
                (
                    "ridegate_health_stale_answers",
                    "Lookups answered from a stale entry (counter).",
                    load(&stats.stale),
                ),
                (
                    "ridegate_health_unavailable",
                    "Lookups with no usable status (counter).",
                    load(&stats.unavailable),
                ),
                (
                    "ridegate_health_refreshes",
                    "Background refreshes of ageing entries (counter).",
                    load(&stats.refreshes),
                ),
            ]);
        }
        if let Some(n) = self.links.local_len() {
            gauges.push((
                "ridegate_linked_credentials",
                "Credentials linked in the embedded store.",
                n as u64,
            ));
        }
        if let Some(n) = self.statuses.local_len() {
            gauges.push((
                "ridegate_health_statuses",
                "Statuses held by the embedded source.",
                n as u64,
            ));
        }
        if let Some(remote) = self.statuses.platform() {
            let platform = remote.stats();
            gauges.extend([
                (
                    "ridegate_platform_calls",
                    "Calls sent to the health platform, hedges included (counter).",
                    load(&platform.calls),
                ),
                (
                    "ridegate_platform_hedges",
                    "Second calls sent because the first was slow (counter).",
                    load(&platform.hedges),
                ),
                (
                    "ridegate_platform_hedges_refused",
                    "Slow calls not hedged because the hedge budget was spent (counter).",
                    load(&platform.hedges_refused),
                ),
                (
                    "ridegate_platform_retries",
                    "Second calls sent because the first failed fast (counter).",
                    load(&platform.retries),
                ),
                (
                    "ridegate_platform_failures",
                    "Platform fetches that failed or timed out (counter).",
                    load(&platform.failures),
                ),
                (
                    "ridegate_platform_short_circuited",
                    "Fetches not sent because the circuit breaker was open (counter).",
                    load(&platform.short_circuited),
                ),
                (
                    "ridegate_platform_breaker_opened",
                    "Times the circuit breaker opened (counter).",
                    load(&platform.breaker_opened),
                ),
                (
                    "ridegate_platform_breaker_open",
                    "1 while the circuit breaker keeps calls away from the platform.",
                    u64::from(remote.is_open()),
                ),
                (
                    "ridegate_platform_changes",
                    "Changes received on the platform's change feed (counter).",
                    load(&platform.changes),
                ),
                (
                    "ridegate_platform_resets",
                    "Times the change feed lost its place and the cache was cleared (counter).",
                    load(&platform.resets),
                ),
            ]);
        }
        if let Some(tier) = &self.shared {
            gauges.push((
                "ridegate_shared_tier_up",
                "1 while Redis answers, 0 while it is down.",
                u64::from(tier.is_up()),
            ));
            gauges.push((
                "ridegate_shared_errors",
                "Redis commands that failed or timed out (counter).",
                load(&tier.stats().errors),
            ));
            gauges.push((
                "ridegate_shared_skipped",
                "Redis commands not sent while it was down (counter).",
                load(&tier.stats().skipped),
            ));
            gauges.push((
                "ridegate_replay_local_fallbacks",
                "Ride codes checked against this instance only, Redis not answering (counter).",
                self.authorizer.replay_fallbacks(),
            ));
        }
        self.metrics.render(&gauges)
    }
}

/// Loads the links and statuses files, if configured, into the chosen stores.
async fn load_files(
    config: &Config,
    pseudonymizer: &Pseudonymizer,
    clock: &Clock,
    links: &LinkBackend,
    statuses: &HealthBackend,
) -> anyhow::Result<()> {
    let open = |field: &str, path: &std::path::Path| {
        File::open(path)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .with_context(|| format!("{field}: cannot open {}", path.display()))
    };
    if let Some(path) = &config.links.file {
        let reader = open("links.file", path)?;
        let now = clock.now();
        let report = match links {
            LinkBackend::Memory(store) => read_links(reader, pseudonymizer, now, |c, record| {
                store.link_now(c, &record).map(drop).map_err(|e| e.to_string())
            }),
            LinkBackend::Shared(_) => {
                let mut rows = Vec::new();
                let mut report = read_links(reader, pseudonymizer, now, |c, record| {
                    rows.push((c, record));
                    Ok(())
                })
                .with_context(|| format!("links.file: cannot read {}", path.display()))?;
                let failed = futures::stream::iter(rows)
                    .map(|(c, record)| links.link(c, record))
                    .buffer_unordered(LOAD_CONCURRENCY)
                    .filter(|r| std::future::ready(r.is_err()))
                    .count()
                    .await;
                report.imported -= failed as u64;
                report.rejected += failed as u64;
                Ok(report)
            }
        }
        .with_context(|| format!("links.file: cannot read {}", path.display()))?;
        log_import("links", &report);
    }
    if let Some(path) = &config.health.file {
        let reader = open("health.file", path)?;
        let mut rows = Vec::new();
        let mut report = read_statuses(reader, pseudonymizer, |i, s| rows.push((i, s)))
            .with_context(|| format!("health.file: cannot read {}", path.display()))?;
        let failed = futures::stream::iter(rows)
            .map(|(i, s)| statuses.put(i, s))
            .buffer_unordered(LOAD_CONCURRENCY)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        report.imported -= failed as u64;
        report.rejected += failed as u64;
        log_import("health statuses", &report);
    }
    Ok(())
}

fn log_import(what: &str, report: &ImportReport) {
    tracing::info!(
        lines = report.lines,
        imported = report.imported,
        rejected = report.rejected,
        "{what} imported"
    );
    for rejection in &report.first_rejections {
        tracing::warn!(line = rejection.line, reason = %rejection.reason, "{what}: line rejected");
    }
    if report.rejected > report.first_rejections.len() as u64 {
        tracing::warn!(
            more = report.rejected - report.first_rejections.len() as u64,
            "{what}: further lines rejected"
        );
    }
}

fn open_audit(path: &str) -> anyhow::Result<JsonLinesAudit> {
    let out: Box<dyn std::io::Write + Send> = if path == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("audit.path: cannot open {path} for appending"))?,
        )
    };
    JsonLinesAudit::new(out).context("audit: cannot start the writer thread")
}
