//! Wiring: everything `ridegate serve` runs, built from a validated [`Config`]. Data
//! files are loaded here, before anything binds.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use anyhow::Context as _;
use std::collections::HashSet;

use ridegate_adapters::audit::{AuditSink, JsonLinesAudit};
use ridegate_adapters::caller::CallerVerifier;
use ridegate_adapters::clock::Clock;
use ridegate_adapters::credential::ride_code::{RideCodeVerifier, VerifierLimits};
use ridegate_adapters::health::{MemoryHealth, read_statuses};
use ridegate_adapters::ids::Pseudonymizer;
use ridegate_adapters::lines::ImportReport;
use ridegate_adapters::link::{MemoryLinks, read_links};
use ridegate_adapters::model::UnixMillis;

use crate::authorize::{Authorizer, Parts};
use crate::cache::{CacheSettings, HealthCache};
use crate::config::Config;
use crate::decision::Policy;
use crate::linking::LinkRules;
use crate::metrics::Metrics;

/// A built ridegate: the decision path and the stores the services share.
pub struct App {
    /// The configuration it was built from.
    pub config: Config,
    /// The decision path.
    pub authorizer: Arc<Authorizer>,
    /// The embedded link store.
    pub links: Arc<MemoryLinks>,
    /// The embedded health-status source.
    pub statuses: Arc<MemoryHealth>,
    /// The health cache in front of it.
    pub health: HealthCache<MemoryHealth>,
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
    pub fn build(config: Config, clock: Clock) -> anyhow::Result<Self> {
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
        let limits = VerifierLimits {
            max_code_bytes: config.ride_codes.max_code_bytes,
            certificate_cache_capacity: config.ride_codes.certificate_cache_capacity,
        };
        let verifier = RideCodeVerifier::new(&specs, limits).context("issuers")?;
        let issuer_ids: HashSet<String> = specs.iter().map(|s| s.id.clone()).collect();
        let callers = Arc::new(
            CallerVerifier::new(&config.caller_keys()?, config.callers.clock_skew).context("callers: a caller key")?,
        );
        if !callers.is_configured() {
            tracing::warn!("no caller keys configured: the Links and HealthFeed services will refuse every call");
        }
        let keyed: Vec<&str> = specs
            .iter()
            .filter(|s| !s.keys.is_empty())
            .map(|s| s.id.as_str())
            .collect();
        tracing::info!(issuers = specs.len(), with_keys = ?keyed, "ride-code issuers loaded");

        let links = Arc::new(MemoryLinks::new(config.links.second_card));
        if let Some(path) = &config.links.file {
            let file = File::open(path).with_context(|| format!("links.file: cannot open {}", path.display()))?;
            let now = clock.now();
            let report = read_links(
                BufReader::with_capacity(1 << 20, file),
                &pseudonymizer,
                now,
                |c, record| links.link_now(c, &record).map(drop).map_err(|e| e.to_string()),
            )
            .with_context(|| format!("links.file: cannot read {}", path.display()))?;
            log_import("links", &report);
        }
        let statuses = Arc::new(MemoryHealth::default());
        if let Some(path) = &config.health.file {
            let file = File::open(path).with_context(|| format!("health.file: cannot open {}", path.display()))?;
            let report = read_statuses(BufReader::with_capacity(1 << 20, file), &pseudonymizer, |i, s| {
                statuses.put(i, s);
            })
            .with_context(|| format!("health.file: cannot read {}", path.display()))?;
            log_import("health statuses", &report);
        }
        let health = HealthCache::new(
            statuses.clone(),
            CacheSettings {
                ttl: config.health.cache_ttl,
                max_staleness: config.health.max_staleness,
                capacity: config.health.cache_capacity,
                fetch_timeout: config.health.fetch_timeout,
            },
            clock.clone(),
        );
        let audit = Arc::new(open_audit(&config.audit.path)?);
        let metrics = Arc::new(Metrics::default());
        let authorizer = Arc::new(Authorizer::new(Parts {
            clock: clock.clone(),
            pseudonymizer: pseudonymizer.clone(),
            verifier,
            links: links.clone(),
            health: health.clone(),
            policy: Policy::new(&config.policy),
            suspend_electronic_tickets: config.policy.electronic_single_journey_suspended,
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
            pseudonymizer,
            metrics,
            audit,
            callers,
            link_rules,
            issuer_ids,
            clock,
        })
    }

    /// Removes day-bound links (single-journey tickets) that have stopped resolving.
    pub fn sweep_links(&self) -> usize {
        let now: UnixMillis = self.clock.now();
        self.links.sweep_expired(now)
    }

    /// The Prometheus text for `GET /metrics`.
    pub fn render_metrics(&self) -> String {
        let stats = self.health.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        self.metrics.render(&[
            (
                "ridegate_linked_credentials",
                "Credentials linked in the embedded store.",
                self.links.len() as u64,
            ),
            (
                "ridegate_health_statuses",
                "Statuses held by the embedded source.",
                self.statuses.len() as u64,
            ),
            ("ridegate_health_cache_entries", "Statuses cached.", self.health.len()),
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
                "ridegate_audit_pending",
                "Audit events queued but not yet written.",
                self.audit.pending(),
            ),
            (
                "ridegate_audit_failed",
                "Audit events that could not be written (counter).",
                self.audit.failed(),
            ),
        ])
    }
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
