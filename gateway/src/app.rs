//! Wiring: everything `ridegate serve` runs, built from a validated [`Config`]. Without
//! Redis, the durable store in the data directory is loaded first (unless
//! `storage.ephemeral`); data files are then imported on top of it, before anything
//! binds. With Redis configured they are loaded into the shared tier.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use ridegate_adapters::audit::{
    AuditFile, AuditOutput, AuditSettings, AuditSink, Both, JsonLinesAudit, RedisStreamAudit,
};
use ridegate_adapters::caller::CallerVerifier;
use ridegate_adapters::credential::ride_code::RideCodeVerifier;
use ridegate_adapters::health::{Applied, MemoryHealth, RedisHealth, RemoteHealth, WatchEvent, read_statuses};
use ridegate_adapters::idempotency::{MemoryIdempotency, RedisIdempotency};
use ridegate_adapters::ids::Pseudonymizer;
use ridegate_adapters::link::{Linked, MemoryLinks, RedisLinks, read_links};
use ridegate_adapters::replay::{MemoryReplayGuard, RedisReplayGuard};
use ridegate_adapters::shared::SharedTier;
use ridegate_adapters::shared::changes::Change;
use ridegate_adapters::storage::{Storage, Write, identity_secret};
use ridegate_core::clock::Clock;

use crate::authorize::{Authorizer, Parts};
use crate::brake::MassDenyBrake;
use crate::cache::{CacheSettings, HealthCache};
use crate::config::Config;
use crate::gate_state::{GateConfig, GateStateFeed, Stores};
use crate::import::{self, StartupImport};
use crate::linking::LinkRules;
use crate::metrics::{Exposition, Metrics, Sources};
use crate::reload::ReloadTrigger;
use crate::serve::tls::TlsState;
use crate::stores::{IdempotencyBackend, Journal, LinkBackend, ReplayBackend, StatusReader, StatusSource};

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
    /// The durable embedded store, when state is kept in the data directory.
    pub(crate) storage: Option<Storage>,
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
    /// Rows of the data files still to be written into the shared tier.
    pub(crate) import: Option<StartupImport>,
    /// The feed offline-capable gates follow: on the embedded store, or on a copy of the
    /// shared tier (`gate_state.shared`).
    pub(crate) gate_state: Option<Arc<GateStateFeed>>,
    /// The mass-deny brake on pushed statuses.
    pub(crate) brake: Arc<MassDenyBrake>,
}

impl App {
    /// Builds everything from `config`: keys, stores, data files, audit output.
    pub async fn build(config: Config, clock: Clock) -> anyhow::Result<Self> {
        config.validate()?;
        // Without Redis, state is kept in the data directory unless told otherwise.
        let durable = !config.redis.is_configured() && !config.storage.ephemeral;
        let pseudonymizer = match config.identity.secret_bytes()? {
            Some(secret) => Pseudonymizer::new(&secret)?,
            None if durable => {
                let secret = identity_secret(&config.storage.data_dir).with_context(|| {
                    format!(
                        "storage.data_dir: cannot keep the pseudonym secret in {}",
                        config.storage.data_dir.display()
                    )
                })?;
                Pseudonymizer::new(secret.as_bytes())?
            }
            None => {
                // Only ephemeral and without Redis and a platform: validation refuses it
                // otherwise.
                tracing::warn!(
                    "identity.secret is not set: using a random secret, so pseudonyms differ between restarts; \
                     set RIDEGATE_IDENTITY_SECRET or identity.secret_file in production"
                );
                Pseudonymizer::random()
            }
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
        let storage = if durable {
            let dir = &config.storage.data_dir;
            let storage = Storage::open(&config.storage).with_context(|| {
                format!(
                    "storage.data_dir: cannot open the database in {} (is another ridegate using it?)",
                    dir.display()
                )
            })?;
            tracing::info!(data_dir = %dir.display(), "state is kept in the data directory");
            Some(storage)
        } else {
            if shared.is_none() {
                tracing::info!("storage.ephemeral: state is kept in memory only and lost at exit");
            }
            None
        };
        // Links that ended while ridegate was stopped are not announced to gates: if
        // any, gates take a snapshot.
        let mut links_ended_at_restore = false;
        let (links, mut status_source, replay, idempotency) = match (&shared, &storage) {
            (None, Some(storage)) => {
                let links = Arc::new(MemoryLinks::new(config.links.second_card));
                let statuses = Arc::new(MemoryHealth::default());
                let (codes, retries) = (MemoryReplayGuard::default(), MemoryIdempotency::default());
                let restored = storage
                    .restore(clock.now(), &links, &statuses, &codes, &retries)
                    .with_context(|| format!("storage: cannot load {}", storage.path().display()))?;
                links_ended_at_restore = restored.expired_links > 0;
                (
                    LinkBackend::Durable(links, Journal::new(storage.clone())),
                    StatusSource::Durable(statuses, Journal::new(storage.clone())),
                    ReplayBackend::Durable(codes, storage.clone()),
                    IdempotencyBackend::Durable(retries, storage.clone()),
                )
            }
            (None, None) => (
                LinkBackend::Memory(Arc::new(MemoryLinks::new(config.links.second_card))),
                StatusSource::Memory(Arc::new(MemoryHealth::default())),
                ReplayBackend::Memory(MemoryReplayGuard::default()),
                IdempotencyBackend::Memory(MemoryIdempotency::default()),
            ),
            (Some(tier), _) => (
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
        // Gates follow the embedded store from here on, the files imported below
        // included; on the shared tier, a copy of it (loaded while serving).
        let gate_config = GateConfig {
            rules: config.policy.clone(),
            issuers: specs.clone(),
            limits: config.ride_codes,
            credential_key: pseudonymizer.credentials().key_hex(),
        };
        let gate_state = match (&links, &status_source, &platform) {
            (
                LinkBackend::Memory(l) | LinkBackend::Durable(l, _),
                StatusSource::Memory(h) | StatusSource::Durable(h, _),
                None,
            ) => Some(GateStateFeed::start(
                Stores {
                    links: l.clone(),
                    health: h.clone(),
                },
                gate_config,
                config.gate_state,
                storage.as_ref().map(|_| config.storage.data_dir.as_path()),
                !links_ended_at_restore,
                clock.clone(),
            )),
            (LinkBackend::Shared(_), StatusSource::Shared(_), None) if config.gate_state.shared => Some(
                GateStateFeed::for_shared_tier(gate_config, config.gate_state, clock.clone()),
            ),
            _ => None,
        };
        let brake = Arc::new(MassDenyBrake::new(config.health.brake));
        if let Some(remote) = platform {
            status_source = StatusSource::Platform {
                remote,
                tier: shared.clone().map(RedisHealth::new),
                ttl: config.health.cache_ttl,
            };
        }
        let import = load_files(
            &config,
            &pseudonymizer,
            &clock,
            shared.as_deref(),
            &links,
            &status_source,
        )
        .await?;
        if let Some(storage) = &storage {
            storage
                .flush()
                .await
                .context("storage: the imported files could not be kept")?;
        }

        let status_reader = match &status_source {
            StatusSource::Memory(store) | StatusSource::Durable(store, _) => StatusReader::Embedded(store.clone()),
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
        let audit = Arc::new(open_audit(&config.audit)?);
        // The central trail: a Redis stream beside the file, when asked for.
        let audit_stream = shared.as_ref().filter(|_| config.audit.stream).map(|tier| {
            Arc::new(RedisStreamAudit::start(
                tier.clone(),
                config.audit.stream_max_len,
                config.audit.stream_queue,
            ))
        });
        let sink: Arc<dyn AuditSink> = match &audit_stream {
            Some(stream) => Arc::new(Both(audit.clone(), stream.clone())),
            None => audit.clone(),
        };
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
            audit: sink,
            metrics: metrics.clone(),
        }));
        let exposition = Arc::new(Exposition::new(Sources {
            decisions: metrics,
            audit: audit.clone(),
            audit_stream,
            links: links.clone(),
            status_source: status_source.clone(),
            status_reader: status_reader.clone(),
            shared: shared.clone(),
            replay_fallbacks,
            brake: brake.clone(),
            gate_state: gate_state.clone(),
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
            storage,
            pseudonymizer,
            exposition,
            audit,
            callers,
            link_rules,
            issuer_ids,
            tls,
            reload_trigger: None,
            clock,
            import,
            gate_state,
            brake,
        })
    }

    /// Reloads keys and certificates each time `trigger` yields (`ridegate serve`:
    /// SIGHUP), besides when their files change.
    #[must_use]
    pub fn reload_on(mut self, trigger: ReloadTrigger) -> Self {
        self.reload_trigger = Some(trigger);
        self
    }

    /// Makes the shared tier ready as `serve` does before it answers — probes it and
    /// lands the start-up import — for callers that decide in process (benchmarks).
    pub async fn land_import(&mut self) -> anyhow::Result<()> {
        let Some(tier) = self.shared.clone() else {
            return Ok(());
        };
        anyhow::ensure!(tier.probe().await, "the shared tier (Redis) is not up");
        if let Some(import) = self.import.take() {
            let deadline = tokio::time::Instant::now() + self.config.redis.import_timeout;
            import
                .run(&tier, &self.links, &self.status_source, deadline)
                .await
                .context("the start-up import into the shared tier")?;
            tier.set_importing(false);
        }
        Ok(())
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

/// Loads the links and statuses files, if configured. Into this process's stores they
/// are loaded at once — into the durable store as an import on top of what it holds: a
/// status older than the one held is ignored, an unchanged link or status is not written
/// again, and the caller flushes the writes before serving. For the shared tier they are
/// read (bad lines reported) and their rows returned, to be written while serving (see
/// [`import`]).
async fn load_files(
    config: &Config,
    pseudonymizer: &Pseudonymizer,
    clock: &Clock,
    tier: Option<&SharedTier>,
    links: &LinkBackend,
    status_source: &StatusSource,
) -> anyhow::Result<Option<StartupImport>> {
    let open = |field: &str, path: &std::path::Path| {
        File::open(path)
            .map(|f| BufReader::with_capacity(1 << 20, f))
            .with_context(|| format!("{field}: cannot open {}", path.display()))
    };
    let mut pending = StartupImport {
        links: None,
        statuses: None,
    };
    if let Some(path) = &config.links.file {
        let reader = open("links.file", path)?;
        let now = clock.now();
        match links {
            LinkBackend::Memory(store) => {
                let report = read_links(reader, pseudonymizer, now, |_, c, record| {
                    store.link_now(c, &record).map(drop).map_err(|e| e.to_string())
                })
                .with_context(|| format!("links.file: cannot read {}", path.display()))?;
                import::log_import("links", &report);
            }
            LinkBackend::Durable(store, journal) => {
                let report = read_links(reader, pseudonymizer, now, |_, c, record| {
                    let linked = store.link_now(c, &record).map_err(|e| e.to_string())?;
                    let storage = journal.storage();
                    match linked {
                        Linked::Refreshed => {}
                        Linked::New => storage.write_behind(Write::Link(c, record)),
                        Linked::Replaced { previous, .. } => {
                            storage.write_behind(Write::Unlink(previous));
                            storage.write_behind(Write::Link(c, record));
                        }
                    }
                    Ok(())
                })
                .with_context(|| format!("links.file: cannot read {}", path.display()))?;
                import::log_import("links", &report);
            }
            LinkBackend::Shared(_) => {
                let mut rows = Vec::new();
                let report = read_links(reader, pseudonymizer, now, |line, c, record| {
                    rows.push((line, (c, record)));
                    Ok(())
                })
                .with_context(|| format!("links.file: cannot read {}", path.display()))?;
                pending.links = Some((rows, report));
            }
        }
    }
    if let Some(path) = &config.health.file {
        let reader = open("health.file", path)?;
        match status_source {
            StatusSource::Memory(store) => {
                let report = read_statuses(reader, pseudonymizer, |_, i, s| {
                    let _ = store.put(i, s);
                })
                .with_context(|| format!("health.file: cannot read {}", path.display()))?;
                import::log_import("health statuses", &report);
            }
            StatusSource::Durable(store, journal) => {
                let report = read_statuses(reader, pseudonymizer, |_, identity, status| {
                    let unchanged = store.get(&identity) == Some(status);
                    if store.put(identity, status) == Applied::Stored && !unchanged {
                        journal.storage().write_behind(Write::Status(identity, status));
                    }
                })
                .with_context(|| format!("health.file: cannot read {}", path.display()))?;
                import::log_import("health statuses", &report);
            }
            StatusSource::Shared(_) | StatusSource::Platform { .. } => {
                let mut rows = Vec::new();
                let report = read_statuses(reader, pseudonymizer, |line, i, s| rows.push((line, (i, s))))
                    .with_context(|| format!("health.file: cannot read {}", path.display()))?;
                pending.statuses = Some((rows, report));
            }
        }
    }
    let pending = (pending.links.is_some() || pending.statuses.is_some()).then_some(pending);
    if let (Some(tier), Some(_)) = (tier, &pending) {
        tier.set_importing(true);
    }
    Ok(pending)
}

fn open_audit(settings: &AuditSettings) -> anyhow::Result<JsonLinesAudit> {
    let out: Box<dyn AuditOutput> = if settings.path == "-" {
        Box::new(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()))
    } else {
        Box::new(
            AuditFile::open(settings.clone())
                .with_context(|| format!("audit.path: cannot open {} for appending", settings.path))?,
        )
    };
    JsonLinesAudit::new(out).context("audit: cannot start the writer thread")
}
