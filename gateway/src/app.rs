//! Wiring: everything `ridegate serve` runs, built from a validated [`Config`]. Data
//! files are loaded here, before anything binds; with Redis configured they are loaded
//! into the shared tier.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context as _;
use arc_swap::ArcSwap;
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
use crate::metrics::{Exposition, Metrics, Sources};
use crate::reload::ReloadTrigger;
use crate::serve::tls::TlsState;
use crate::stores::{IdempotencyBackend, LinkBackend, ReplayBackend, StatusReader, StatusSource};

/// Writes to the shared tier kept in flight while loading files into it.
const LOAD_CONCURRENCY: usize = 64;

/// A built ridegate: the decision path and the stores the services share. Only
/// [`serve`](crate::serve) takes it apart, handing each service and task the parts it
/// needs.
pub struct App {
    /// The configuration it was built from.
    pub(crate) config: Config,
    /// The decision path.
    pub(crate) authorizer: Arc<Authorizer>,
    /// The link store.
    pub(crate) links: LinkBackend,
    /// Where statuses come from and pushed statuses are written.
    pub(crate) status_source: StatusSource,
    /// Where decisions read statuses: the embedded store, or the cache in front of
    /// Redis or the platform.
    pub(crate) status_reader: StatusReader,
    /// The shared tier, when configured.
    pub(crate) shared: Option<Arc<SharedTier>>,
    /// Keyed hashing for ids.
    pub(crate) pseudonymizer: Pseudonymizer,
    /// The `/metrics` page.
    pub(crate) exposition: Arc<Exposition>,
    /// The audit writer.
    pub(crate) audit: Arc<JsonLinesAudit>,
    /// Verifies caller tokens for the link service and the health feed; swapped whole
    /// when the caller key set is reloaded.
    pub(crate) callers: Arc<ArcSwap<CallerVerifier>>,
    /// The linking rules.
    pub(crate) link_rules: LinkRules,
    /// Issuers whose ride accounts may be linked.
    pub(crate) issuer_ids: HashSet<String>,
    /// The gate port's TLS configuration, reloadable, when TLS is on.
    pub(crate) tls: Option<Arc<TlsState>>,
    /// What asks for keys and certificates to be reloaded, besides file changes.
    pub(crate) reload_trigger: Option<ReloadTrigger>,
    /// The wall clock.
    pub(crate) clock: Clock,
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
        let tls = if config.server.tls.enabled() {
            let state = TlsState::load(&config.server.tls)?;
            tracing::info!(
                mutual = config.server.tls.mutual(),
                trust_domain = %config.server.tls.trust_domain,
                "TLS on the gate port"
            );
            Some(Arc::new(state))
        } else {
            None
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
        let callers = Arc::new(ArcSwap::from_pointee(
            CallerVerifier::new(&config.caller_keys()?, config.caller_settings()?).context("callers: a caller key")?,
        ));
        if !callers.load().is_configured() {
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
        let replay_fallbacks = Arc::new(AtomicU64::new(0));
        let (links, mut status_source, replay, idempotency) = match &shared {
            None => (
                LinkBackend::Memory(Arc::new(MemoryLinks::new(config.links.second_card))),
                StatusSource::Memory(Arc::new(MemoryHealth::default())),
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
                StatusSource::Shared(RedisHealth::new(tier.clone())),
                ReplayBackend::Shared {
                    redis: RedisReplayGuard::new(tier.clone()),
                    local: MemoryReplayGuard::default(),
                    fallbacks: replay_fallbacks.clone(),
                },
                IdempotencyBackend::Shared(RedisIdempotency::new(tier.clone())),
            ),
        };
        if let Some(remote) = platform {
            status_source = StatusSource::Platform {
                remote,
                tier: shared.clone().map(RedisHealth::new),
                ttl: config.health.cache_ttl,
            };
        }
        load_files(&config, &pseudonymizer, &clock, &links, &status_source).await?;

        let status_reader = match &status_source {
            StatusSource::Memory(store) => StatusReader::Embedded(store.clone()),
            StatusSource::Shared(_) | StatusSource::Platform { .. } => StatusReader::Cached(HealthCache::new(
                Arc::new(status_source.clone()),
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
            health: status_reader.clone(),
            replay,
            idempotency,
            shared: shared.clone(),
            rules: config.policy.clone(),
            retry_window: config.deadline.retry_window,
            audit: audit.clone() as Arc<dyn AuditSink>,
            metrics: metrics.clone(),
        }));
        let exposition = Arc::new(Exposition::new(Sources {
            decisions: metrics,
            audit: audit.clone(),
            links: links.clone(),
            status_source: status_source.clone(),
            status_reader: status_reader.clone(),
            shared: shared.clone(),
            replay_fallbacks,
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
            status_source,
            status_reader,
            shared,
            pseudonymizer,
            exposition,
            audit,
            callers,
            link_rules,
            issuer_ids,
            tls,
            reload_trigger: None,
            clock,
        })
    }

    /// Reloads keys and certificates each time `trigger` yields (`ridegate serve`:
    /// SIGHUP), besides when their files change.
    #[must_use]
    pub fn reload_on(mut self, trigger: ReloadTrigger) -> Self {
        self.reload_trigger = Some(trigger);
        self
    }

    /// The decision path, for callers that decide in process (benchmarks, tests).
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    /// This instance's caches, for the tasks that follow changes made elsewhere.
    pub(crate) fn caches(&self) -> Caches {
        Caches {
            links: self.links.clone(),
            status_source: self.status_source.clone(),
            status_reader: self.status_reader.clone(),
        }
    }
}

/// This instance's caches, as the followers of other instances' changes and of the
/// platform's change feed keep them current.
#[derive(Clone)]
pub(crate) struct Caches {
    links: LinkBackend,
    status_source: StatusSource,
    status_reader: StatusReader,
}

impl Caches {
    /// Applies a change another instance made to this instance's caches.
    pub(crate) fn apply_change(&self, change: Change) {
        match change {
            Change::Status { identity, status } => self.status_reader.store(identity, status),
            Change::Link { credential } => self.links.invalidate(&credential),
            Change::Reset => {
                self.status_reader.clear();
                self.links.clear_cache();
            }
        }
    }

    /// Applies what the health platform's change feed says to the caches.
    pub(crate) fn apply_platform_event(&self, event: WatchEvent) {
        match event {
            WatchEvent::Change(identity, status) => {
                self.status_reader.store(identity, status);
                self.status_source.keep(identity, status);
            }
            WatchEvent::Reset => self.status_reader.clear(),
        }
    }
}

/// Loads the links and statuses files, if configured, into the chosen stores.
async fn load_files(
    config: &Config,
    pseudonymizer: &Pseudonymizer,
    clock: &Clock,
    links: &LinkBackend,
    status_source: &StatusSource,
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
            .map(|(i, s)| status_source.put(i, s))
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
