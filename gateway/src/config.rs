//! Configuration: typed, documented, defaulted, and validated before anything binds.
//!
//! Sources, lowest precedence first: built-in defaults, the TOML file (`--config`),
//! environment variables (`RIDEGATE_*`), command-line flags. Every field is documented
//! in `deploy/ridegate.example.toml`, which a test parses. Invalid configuration is an
//! error that names the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use ridegate_adapters::credential::ride_code::{IssuerSpec, SigningAlg, VerifierLimits};
use ridegate_adapters::health::RemoteSettings;
use ridegate_adapters::ids::MIN_SECRET_BYTES;
use ridegate_adapters::link::SecondCard;
use ridegate_adapters::shared::{SharedSettings, Topology};
use ridegate_core::decision::Rules;
use serde::Deserialize;

/// The address `ridegate serve` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50061";

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with the key, line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("{field}: {message}")]
    Invalid {
        /// The dotted field name.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Everything `ridegate serve` needs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening and transport limits.
    pub server: ServerConfig,
    /// Answer budgets.
    pub deadline: DeadlineConfig,
    /// The pseudonym secret.
    pub identity: IdentityConfig,
    /// Limits that apply to every ride code.
    pub ride_codes: RideCodeConfig,
    /// Ride-code issuers by id, merged onto the built-in list.
    pub issuers: BTreeMap<String, IssuerConfig>,
    /// Keys that sign caller tokens (link service, health feed).
    pub callers: CallersConfig,
    /// The embedded link store and the linking rules.
    pub links: LinksConfig,
    /// The health-status source and cache.
    pub health: HealthConfig,
    /// The decision rules.
    pub policy: Rules,
    /// The shared tier (Redis, Redis Cluster); none: everything stays in this process.
    pub redis: RedisConfig,
    /// Where decisions are recorded.
    pub audit: AuditConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address for gRPC (and `GET /metrics`).
    pub listen: SocketAddr,
    /// Largest request decoded, in bytes. Large enough that an oversize QR gets a deny
    /// with a reason rather than a transport error.
    pub max_request_bytes: usize,
    /// Requests in flight per connection before further ones wait.
    pub concurrency_per_connection: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Ping interval that keeps idle gate connections alive through NATs.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// On SIGTERM/SIGINT: time to report NOT_SERVING before refusing new calls, so
    /// load balancers move traffic away first.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// On SIGTERM/SIGINT: how long in-flight calls and streams may take to finish.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Largest number of taps decided at once on one `Taps` stream.
    pub stream_concurrency: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 50061))),
            max_request_bytes: 2 << 20,
            concurrency_per_connection: 256,
            max_concurrent_streams: 1024,
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            drain_delay: Duration::ZERO,
            drain_grace: Duration::from_secs(10),
            stream_concurrency: 64,
        }
    }
}

/// `[deadline]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadlineConfig {
    /// Budget for a tap whose caller sent no `grpc-timeout` (and no `budget_ms`).
    #[serde(with = "humantime_serde")]
    pub default_budget: Duration,
    /// Safety margin: ridegate answers this long before the caller's deadline (or at
    /// half the budget, whichever leaves more time).
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    /// How long a gate's retry (same gate id and request id) gets the original answer.
    #[serde(with = "humantime_serde")]
    pub retry_window: Duration,
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        Self {
            default_budget: Duration::from_millis(200),
            margin: Duration::from_millis(20),
            retry_window: Duration::from_secs(120),
        }
    }
}

/// `[identity]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Secret for the keyed hash that turns ID numbers into pseudonyms (at least 16
    /// bytes). Prefer `RIDEGATE_IDENTITY_SECRET`. Empty: a random secret per process,
    /// so pseudonyms are not comparable across instances or restarts.
    pub secret: String,
}

/// `[ride_codes]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RideCodeConfig {
    /// Longest QR text accepted, in bytes.
    pub max_code_bytes: usize,
    /// How many verified device certificates to cache.
    pub certificate_cache_capacity: u64,
}

impl Default for RideCodeConfig {
    fn default() -> Self {
        let limits = VerifierLimits::default();
        Self {
            max_code_bytes: limits.max_code_bytes,
            certificate_cache_capacity: limits.certificate_cache_capacity,
        }
    }
}

/// `[issuers.<id>]`: one ride-code issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerConfig {
    /// Whether codes from this issuer are accepted at all.
    pub enabled: bool,
    /// Display name (defaults to the built-in name, or the id).
    pub name: String,
    /// Algorithms its codes may use: `ES256`, `EdDSA`.
    pub algorithms: Vec<SigningAlg>,
    /// Path to a JWK Set file with its public keys.
    pub jwks_file: Option<PathBuf>,
    /// Public keys inline, as JWKs (merged with `jwks_file`).
    pub keys: Vec<toml::Table>,
    /// Longest code lifetime (`exp` − `iat`).
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Clock skew tolerated on `exp`, `iat`, `nbf`.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Whether it certifies phone keys for offline codes.
    pub device_certificates: bool,
    /// Longest device-certificate lifetime.
    #[serde(with = "humantime_serde")]
    pub max_certificate_lifetime: Duration,
    /// Revoked device-certificate ids.
    pub revoked_certificates: Vec<String>,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            name: String::new(),
            algorithms: vec![SigningAlg::Es256, SigningAlg::EdDsa],
            jwks_file: None,
            keys: Vec::new(),
            max_lifetime: Duration::from_secs(60),
            clock_skew: Duration::from_secs(5),
            device_certificates: true,
            max_certificate_lifetime: Duration::from_secs(30 * 86_400),
            revoked_certificates: Vec::new(),
        }
    }
}

/// The issuers every deployment knows: Beijing's own and the interoperating cities'.
pub const BUILTIN_ISSUERS: [(&str, &str); 9] = [
    ("yitongxing", "亿通行 Yitongxing"),
    ("alipay", "支付宝 Alipay"),
    ("unionpay", "云闪付 UnionPay QuickPass"),
    ("cmb", "招商银行 China Merchants Bank"),
    ("shanghai-metro", "上海地铁 Metro大都会 (Shanghai)"),
    ("tianjin-metro", "天津地铁 (Tianjin)"),
    ("guangzhou-metro", "广州地铁 (Guangzhou)"),
    ("hohhot-metro", "呼和浩特地铁 (Hohhot)"),
    ("chongqing-metro", "重庆轨道交通 (Chongqing)"),
];

/// `[callers]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallersConfig {
    /// JWK Set of the keys that sign caller tokens (ES256 / EdDSA, distinct `kid`s).
    pub jwks_file: Option<PathBuf>,
    /// The same keys inline, as JWKs (added to those from `jwks_file`).
    pub keys: Vec<toml::Table>,
    /// Clock skew tolerated on a token's `exp` and `iat`.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
}

impl Default for CallersConfig {
    fn default() -> Self {
        Self {
            jwks_file: None,
            keys: Vec::new(),
            clock_skew: Duration::from_secs(30),
        }
    }
}

/// `[links]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinksConfig {
    /// JSON-lines file of links imported at start-up (see `ridegate_adapters::link`).
    pub file: Option<PathBuf>,
    /// Digits in a full card number: what the upgrade service and ticket windows must
    /// be given (phone apps show only part of it).
    pub full_card_digits: usize,
    /// A second physical (or NFC) card for the same rider: `replace` the first, or
    /// `refuse` until it is unlinked.
    pub second_card: SecondCard,
    /// The local time zone's offset from UTC, in minutes (Beijing: 480): a single-journey
    /// ticket is bound until the end of its local day of sale.
    pub utc_offset_minutes: i32,
}

impl Default for LinksConfig {
    fn default() -> Self {
        Self {
            file: None,
            full_card_digits: 16,
            second_card: SecondCard::Replace,
            utc_offset_minutes: 480,
        }
    }
}

/// `[health]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// JSON-lines file of statuses loaded into the embedded source at start-up.
    pub file: Option<PathBuf>,
    /// A cached status is fresh for this long; after it, the next tap refetches.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// A status confirmed longer ago than this is never used, even degraded.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    /// Most statuses cached.
    pub cache_capacity: u64,
    /// Upper bound on one fetch from the source (the tap's budget also bounds it).
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Serve `ridegate.v1.HealthFeed` so statuses can be pushed at run time.
    pub feed_enabled: bool,
    /// Share of `cache_ttl` after which a tap that hits the entry also refreshes it in
    /// the background, so the rider in the queue does not pay for the fetch (0: off).
    pub refresh_ahead: f64,
    /// The health-code platform, when statuses come from it over the network.
    pub platform: PlatformConfig,
}

/// `[health.platform]`: the health-code platform (`ridegate.v1.HealthPlatform`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// The platform's address, `http://host:port`; empty: no platform (statuses come
    /// from `health.file`, the feed, or Redis).
    pub url: String,
    /// Send a second request when the first is slower than this percentile of recent
    /// calls (0 turns hedging off).
    pub hedge_percentile: f64,
    /// The hedge delay is kept between these bounds.
    #[serde(with = "humantime_serde")]
    pub hedge_min_delay: Duration,
    /// See `hedge_min_delay`.
    #[serde(with = "humantime_serde")]
    pub hedge_max_delay: Duration,
    /// Most hedges per call on average (0.1: one call in ten), so a platform that slows
    /// down is not sent twice its load.
    pub hedge_budget: f64,
    /// Failures in a row that open the circuit breaker: taps stop waiting for the
    /// platform and are answered from the cache, degraded.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one call probes the platform again.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Longest wait to connect.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Follow the platform's change feed and apply changes to the cache at once.
    pub watch: bool,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            hedge_percentile: 0.95,
            hedge_min_delay: Duration::from_millis(2),
            hedge_max_delay: Duration::from_millis(100),
            hedge_budget: 0.1,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            watch: true,
        }
    }
}

impl PlatformConfig {
    /// The client settings, or `None` when no platform is configured.
    pub fn remote_settings(&self) -> Option<RemoteSettings> {
        (!self.url.is_empty()).then(|| RemoteSettings {
            url: self.url.clone(),
            hedge_percentile: self.hedge_percentile,
            hedge_min_delay: self.hedge_min_delay,
            hedge_max_delay: self.hedge_max_delay,
            hedge_budget: self.hedge_budget,
            breaker_failures: self.breaker_failures,
            breaker_cooldown: self.breaker_cooldown,
            connect_timeout: self.connect_timeout,
        })
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            file: None,
            cache_ttl: Duration::from_secs(30),
            max_staleness: Duration::from_secs(600),
            cache_capacity: 2_000_000,
            fetch_timeout: Duration::from_millis(150),
            feed_enabled: false,
            refresh_ahead: 0.8,
            platform: PlatformConfig::default(),
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// One server: `redis://[user:password@]host:port[/db]`, `rediss://` for TLS.
    pub url: String,
    /// Redis Cluster seed nodes (same URL forms). Exclusive with `url`.
    pub cluster: Vec<String>,
    /// Username, if not in the URLs.
    pub username: String,
    /// Password, if not in the URLs. Prefer `RIDEGATE_REDIS_PASSWORD`.
    pub password: String,
    /// Prefix of every key ridegate writes.
    pub prefix: String,
    /// Longest wait for one Redis command; the tap's own deadline may cut it shorter.
    /// Keep it well under the gate's budget: a timeout marks Redis down and later taps
    /// fall back at once.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Longest wait to connect.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often a down Redis is probed.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// Change-stream entries kept (approximately): how far behind an instance may fall
    /// and still catch up instead of clearing its caches.
    pub changes_max_len: u64,
    /// Links cached locally.
    pub link_cache_capacity: u64,
    /// How long a cached link answer is kept (changes invalidate it sooner).
    #[serde(with = "humantime_serde")]
    pub link_cache_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            cluster: Vec::new(),
            username: String::new(),
            password: String::new(),
            prefix: "rg".into(),
            operation_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_millis(500),
            changes_max_len: 100_000,
            link_cache_capacity: 2_000_000,
            link_cache_ttl: Duration::from_secs(60),
        }
    }
}

impl RedisConfig {
    /// The shared-tier settings, or `None` when no Redis is configured.
    pub fn shared_settings(&self) -> Option<SharedSettings> {
        let topology = if !self.cluster.is_empty() {
            Topology::Cluster(self.cluster.clone())
        } else if !self.url.is_empty() {
            Topology::Single(self.url.clone())
        } else {
            return None;
        };
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Some(SharedSettings {
            topology,
            username: non_empty(&self.username),
            password: non_empty(&self.password),
            prefix: self.prefix.clone(),
            operation_timeout: self.operation_timeout,
            connect_timeout: self.connect_timeout,
            changes_max_len: self.changes_max_len,
        })
    }
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Where audit events go as JSON lines: `-` for stdout, or a file path (appended).
    pub path: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { path: "-".into() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object a line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Text or JSON lines, on stderr.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `ridegate=debug,info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Checks values that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.deadline;
        if d.default_budget.is_zero() {
            return Err(invalid("deadline.default_budget", "must be more than 0"));
        }
        if d.margin >= d.default_budget {
            return Err(invalid("deadline.margin", "must be less than deadline.default_budget"));
        }
        let secret = self.identity.secret.as_bytes();
        if !secret.is_empty() && secret.len() < MIN_SECRET_BYTES {
            return Err(invalid(
                "identity.secret",
                format!("must be at least {MIN_SECRET_BYTES} bytes"),
            ));
        }
        let h = &self.health;
        if h.max_staleness < h.cache_ttl {
            return Err(invalid("health.max_staleness", "must be at least health.cache_ttl"));
        }
        if h.cache_capacity == 0 {
            return Err(invalid("health.cache_capacity", "must be more than 0"));
        }
        if h.fetch_timeout.is_zero() {
            return Err(invalid("health.fetch_timeout", "must be more than 0"));
        }
        if !(0.0..=1.0).contains(&h.refresh_ahead) {
            return Err(invalid("health.refresh_ahead", "must be between 0 and 1"));
        }
        let p = &h.platform;
        if !p.url.is_empty() {
            if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                return Err(invalid(
                    "health.platform.url",
                    "must be http://host:port or https://host:port",
                ));
            }
            if h.file.is_some() {
                return Err(invalid(
                    "health.file",
                    "cannot be used with health.platform.url: the platform is the source of statuses",
                ));
            }
        }
        if !(0.0..1.0).contains(&p.hedge_percentile) {
            return Err(invalid(
                "health.platform.hedge_percentile",
                "must be at least 0 and below 1",
            ));
        }
        if !(0.0..=1.0).contains(&p.hedge_budget) {
            return Err(invalid("health.platform.hedge_budget", "must be between 0 and 1"));
        }
        if p.hedge_min_delay > p.hedge_max_delay {
            return Err(invalid(
                "health.platform.hedge_min_delay",
                "must not exceed hedge_max_delay",
            ));
        }
        if p.breaker_failures == 0 {
            return Err(invalid("health.platform.breaker_failures", "must be more than 0"));
        }
        if self.ride_codes.max_code_bytes == 0 || self.ride_codes.max_code_bytes > self.server.max_request_bytes {
            return Err(invalid(
                "ride_codes.max_code_bytes",
                "must be between 1 and server.max_request_bytes",
            ));
        }
        if !(8..=20).contains(&self.links.full_card_digits) {
            return Err(invalid("links.full_card_digits", "must be between 8 and 20"));
        }
        if !(-14 * 60..=14 * 60).contains(&self.links.utc_offset_minutes) {
            return Err(invalid("links.utc_offset_minutes", "must be between -840 and 840"));
        }
        let r = &self.redis;
        if !r.url.is_empty() && !r.cluster.is_empty() {
            return Err(invalid(
                "redis",
                "set either url (one server) or cluster (seed nodes), not both",
            ));
        }
        if r.prefix.is_empty()
            || r.prefix.len() > 16
            || !r
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "redis.prefix",
                "must be 1-16 characters of letters, digits, '-' and '_'",
            ));
        }
        if r.operation_timeout.is_zero() || r.probe_interval.is_zero() {
            return Err(invalid(
                "redis",
                "operation_timeout and probe_interval must be more than 0",
            ));
        }
        if self.audit.path.is_empty() {
            return Err(invalid("audit.path", "must be - (stdout) or a file path"));
        }
        if self.server.concurrency_per_connection == 0 || self.server.stream_concurrency == 0 {
            return Err(invalid(
                "server",
                "concurrency_per_connection and stream_concurrency must be more than 0",
            ));
        }
        for (id, issuer) in &self.issuers {
            if issuer.enabled && issuer.algorithms.is_empty() {
                return Err(invalid(
                    format!("issuers.{id}.algorithms"),
                    "must list at least one of ES256, EdDSA",
                ));
            }
            if issuer.max_lifetime.is_zero() {
                return Err(invalid(format!("issuers.{id}.max_lifetime"), "must be more than 0"));
            }
        }
        Ok(())
    }

    /// The caller-token keys.
    pub fn caller_keys(&self) -> Result<Vec<jsonwebtoken::jwk::Jwk>, ConfigError> {
        load_jwks("callers", self.callers.jwks_file.as_deref(), &self.callers.keys)
    }

    /// The enabled issuers, built-in ones first, with their keys loaded.
    pub fn issuer_specs(&self) -> Result<Vec<IssuerSpec>, ConfigError> {
        let mut merged: Vec<(String, IssuerConfig)> = BUILTIN_ISSUERS
            .iter()
            .map(|(id, name)| {
                let mut issuer = self.issuers.get(*id).cloned().unwrap_or_default();
                if issuer.name.is_empty() {
                    issuer.name = (*name).to_owned();
                }
                ((*id).to_owned(), issuer)
            })
            .collect();
        for (id, issuer) in &self.issuers {
            if !BUILTIN_ISSUERS.iter().any(|(b, _)| b == id) {
                let mut issuer = issuer.clone();
                if issuer.name.is_empty() {
                    issuer.name.clone_from(id);
                }
                merged.push((id.clone(), issuer));
            }
        }
        merged
            .into_iter()
            .filter(|(_, issuer)| issuer.enabled)
            .map(|(id, issuer)| {
                let keys = issuer_keys(&id, &issuer)?;
                Ok(IssuerSpec {
                    id,
                    name: issuer.name,
                    algorithms: issuer.algorithms,
                    keys,
                    max_lifetime: issuer.max_lifetime,
                    clock_skew: issuer.clock_skew,
                    device_certificates: issuer.device_certificates,
                    max_certificate_lifetime: issuer.max_certificate_lifetime,
                    revoked_certificates: issuer.revoked_certificates,
                })
            })
            .collect()
    }
}

fn issuer_keys(id: &str, issuer: &IssuerConfig) -> Result<Vec<jsonwebtoken::jwk::Jwk>, ConfigError> {
    load_jwks(&format!("issuers.{id}"), issuer.jwks_file.as_deref(), &issuer.keys)
}

/// Keys from a JWK Set file and inline JWKs; errors name `<section>.jwks_file` or
/// `<section>.keys[i]`.
fn load_jwks(
    section: &str,
    file: Option<&Path>,
    inline: &[toml::Table],
) -> Result<Vec<jsonwebtoken::jwk::Jwk>, ConfigError> {
    let mut keys = Vec::new();
    if let Some(path) = file {
        let field = format!("{section}.jwks_file");
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(&field, format!("cannot read {}: {e}", path.display())))?;
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|e| invalid(&field, format!("{} is not a JWK Set: {e}", path.display())))?;
        keys.extend(set.keys);
    }
    for (index, table) in inline.iter().enumerate() {
        let jwk = serde_json::to_value(table)
            .and_then(serde_json::from_value)
            .map_err(|e| invalid(format!("{section}.keys[{index}]"), format!("not a JWK: {e}")))?;
        keys.push(jwk);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ridegate_core::model::Mode;

    #[test]
    fn defaults_validate_and_list_the_builtin_issuers() {
        let config = Config::default();
        config.validate().unwrap();
        let ids: Vec<String> = config.issuer_specs().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), 9);
        assert_eq!(ids[0], "yitongxing");
        assert_eq!(config.server.listen.port(), 50061);
    }

    #[test]
    fn the_example_config_in_deploy_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/ridegate.example.toml");
        let config = Config::from_file(&path).unwrap();
        config.validate().unwrap();
        // Every section is present in the example, so a typo there would fail here.
        let text = std::fs::read_to_string(&path).unwrap();
        for section in [
            "[server]",
            "[deadline]",
            "[identity]",
            "[ride_codes]",
            "[links]",
            "[health]",
            "[policy]",
            "[audit]",
            "[log]",
        ] {
            assert!(text.contains(section), "example lacks {section}");
        }
        assert_eq!(config.policy.stations.get("S0107"), Some(&Mode::Shadow));
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let err = Config::from_toml("[policy]\nyelow = \"deny\"\n").unwrap_err();
        assert!(err.contains("yelow"), "{err}");
        let err = Config::from_toml("[policy]\nyellow = \"maybe\"\n").unwrap_err();
        assert!(err.contains("yellow") && err.contains("maybe"), "{err}");
        let err = Config::from_toml("[deadline]\ndefault_budget = \"fast\"\n").unwrap_err();
        assert!(err.contains("default_budget"), "{err}");
        let config = Config::from_toml("[deadline]\ndefault_budget = \"10ms\"\nmargin = \"20ms\"\n").unwrap();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "deadline.margin: must be less than deadline.default_budget"
        );
        let config = Config::from_toml("[identity]\nsecret = \"short\"\n").unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("identity.secret")
        );
    }

    #[test]
    fn issuers_merge_onto_the_builtin_list() {
        let config = Config::from_toml(
            "[issuers.alipay]\nmax_lifetime = \"30s\"\n\n[issuers.cmb]\nenabled = false\n\n[issuers.hangzhou-metro]\nalgorithms = [\"EdDSA\"]\n",
        )
        .unwrap();
        let specs = config.issuer_specs().unwrap();
        let alipay = specs.iter().find(|s| s.id == "alipay").unwrap();
        assert_eq!(
            (alipay.name.as_str(), alipay.max_lifetime),
            ("支付宝 Alipay", Duration::from_secs(30))
        );
        assert!(specs.iter().all(|s| s.id != "cmb"));
        assert_eq!(specs.last().unwrap().id, "hangzhou-metro");
    }

    #[test]
    fn a_missing_jwks_file_names_the_issuer_field() {
        let config = Config::from_toml("[issuers.alipay]\njwks_file = \"/nonexistent/keys.json\"\n").unwrap();
        let err = config.issuer_specs().unwrap_err().to_string();
        assert!(err.starts_with("issuers.alipay.jwks_file"), "{err}");
    }
}
