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

use crate::brake::BrakeConfig;
use crate::gate_state::GateStateConfig;
use jsonwebtoken::jwk::JwkSet;
use ridegate_adapters::audit::AuditSettings;
use ridegate_adapters::caller::CallerSettings;
use ridegate_adapters::credential::ride_code::{IssuerSettings, IssuerSpec, VerifierLimits};
use ridegate_adapters::health::RemoteSettings;
use ridegate_adapters::ids::MIN_SECRET_BYTES;
use ridegate_adapters::link::SecondCard;
use ridegate_adapters::settings::InvalidSetting;
use ridegate_adapters::shared::SharedSettings;
use ridegate_adapters::storage::StorageSettings;
use ridegate_core::decision::Rules;
use serde::Deserialize;

/// The address `ridegate serve` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50061";

/// How long a draining instance reports NOT_SERVING before it refuses new calls.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(10);
/// The admin address (`/metrics`, `/readyz`, `/livez`) by default: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

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

/// Turns an adapter's [`InvalidSetting`] into a [`ConfigError`] naming the field in
/// full, under `section`.
fn in_section(section: &str) -> impl Fn(InvalidSetting) -> ConfigError + '_ {
    move |e| invalid(format!("{section}.{}", e.field), e.problem)
}

/// Everything `ridegate serve` needs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening and transport limits.
    pub server: ServerConfig,
    /// Answer budgets.
    pub deadline: DeadlineConfig,
    /// Shedding gate calls that cannot be answered in time.
    pub admission: AdmissionConfig,
    /// The gate registry by gate id (`[gates.<id>]`); empty: no registry, a gate's
    /// station and line are what it says.
    pub gates: BTreeMap<String, GateEntry>,
    /// The pseudonym secret.
    pub identity: IdentityConfig,
    /// Limits that apply to every ride code (`[ride_codes]`).
    pub ride_codes: VerifierLimits,
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
    /// The shared tier (Redis, Redis Cluster) (`[redis]`); none: everything stays in
    /// this process.
    pub redis: SharedSettings,
    /// Where an instance without Redis keeps its state across restarts (`[storage]`).
    pub storage: StorageSettings,
    /// Where decisions are recorded.
    pub audit: AuditSettings,
    /// The feed offline-capable gates follow (`[gate_state]`).
    pub gate_state: GateStateConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address for gRPC: gates and callers, nothing else.
    pub listen: SocketAddr,
    /// Address for operators: `GET /metrics`, `/readyz` and `/livez`, never on the gate
    /// port. Loopback by default; expose it only to the monitoring network.
    pub admin_listen: SocketAddr,
    /// Largest `Gate` request (a tap on `Authorize` or `Taps`), in bytes. Larger than
    /// `ride_codes.max_code_bytes`, so that an oversize QR gets a deny with a reason
    /// rather than a transport error; small, because every tap in flight may hold this
    /// much while it arrives.
    pub max_tap_bytes: usize,
    /// Largest `Links` or `HealthFeed` request (a batch), in bytes.
    pub max_request_bytes: usize,
    /// Connections open at once; one over is closed at once. Lowered at start to fit
    /// the open-file limit (whose soft limit is raised to the hard one first).
    pub max_connections: usize,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Largest HTTP/2 header list a call may send, in bytes.
    pub max_header_list_bytes: u32,
    /// HTTP/2 flow-control window per stream: what a client may send on one call
    /// before ridegate has read it.
    pub stream_window_bytes: u32,
    /// HTTP/2 flow-control window per connection: what a client may send on all its
    /// calls before ridegate has read it.
    pub connection_window_bytes: u32,
    /// What ridegate buffers per stream for a client that does not read its answers.
    pub send_buffer_bytes: usize,
    /// A connection must finish TLS (if on) and send its first HTTP/2 bytes within this
    /// long, or it is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection with no call open for this long is sent GOAWAY.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A connection this old (±10 % jitter) is sent GOAWAY, so clients rebalance
    /// across instances.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// How long an aged-out connection may finish its calls before it is closed.
    #[serde(with = "humantime_serde")]
    pub max_connection_age_grace: Duration,
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
    /// load balancers move traffic away first. The default (10 s) outlasts a
    /// Kubernetes endpoint update and a readiness probe of `periodSeconds: 5`,
    /// `failureThreshold: 2`.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// On SIGTERM/SIGINT: how long in-flight calls and streams may take to finish.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Largest number of taps decided at once on one `Taps` stream.
    pub stream_concurrency: usize,
    /// How often the files that hold keys and certificates (`server.tls` cert, key and
    /// client CA; the caller and issuer key sets) are checked for changes and reloaded;
    /// they are also reloaded on SIGHUP. 0: only on SIGHUP.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// TLS and mutual TLS on the gRPC port (`[server.tls]`); none: plaintext.
    pub tls: TlsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 50061))),
            admin_listen: DEFAULT_ADMIN_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9464))),
            max_tap_bytes: 32 << 10,
            max_request_bytes: 2 << 20,
            max_connections: 2048,
            max_concurrent_streams: 128,
            max_header_list_bytes: 16 << 10,
            stream_window_bytes: 64 << 10,
            connection_window_bytes: 128 << 10,
            send_buffer_bytes: 64 << 10,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(900),
            max_connection_age: Duration::from_secs(3600),
            max_connection_age_grace: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            drain_delay: DEFAULT_DRAIN_DELAY,
            drain_grace: Duration::from_secs(10),
            stream_concurrency: 64,
            reload_interval: Duration::from_secs(5),
            tls: TlsConfig::default(),
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("server.max_tap_bytes", self.max_tap_bytes),
            ("server.max_request_bytes", self.max_request_bytes),
            ("server.max_connections", self.max_connections),
            ("server.max_concurrent_streams", self.max_concurrent_streams as usize),
            ("server.send_buffer_bytes", self.send_buffer_bytes),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be more than 0"));
            }
        }
        // HTTP/2's own bounds (RFC 9113 §6.5.2, §6.9.1).
        for (field, value) in [
            ("server.stream_window_bytes", self.stream_window_bytes),
            ("server.connection_window_bytes", self.connection_window_bytes),
        ] {
            if !(65_535..=(1 << 31) - 1).contains(&value) {
                return Err(invalid(field, "must be between 65535 and 2147483647"));
            }
        }
        if self.max_header_list_bytes < 1024 {
            return Err(invalid("server.max_header_list_bytes", "must be at least 1024"));
        }
        for (field, value) in [
            ("server.handshake_timeout", self.handshake_timeout),
            ("server.idle_timeout", self.idle_timeout),
            ("server.max_connection_age", self.max_connection_age),
            ("server.max_connection_age_grace", self.max_connection_age_grace),
        ] {
            // A year at most: deadlines are instants, and an instant cannot be that far.
            if value.is_zero() || value > Duration::from_secs(365 * 24 * 3600) {
                return Err(invalid(field, "must be more than 0 and at most a year"));
            }
        }
        if self.stream_concurrency == 0 {
            return Err(invalid("server.stream_concurrency", "must be more than 0"));
        }
        if self.admin_listen == self.listen && self.listen.port() != 0 {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen: metrics and probes are never served on the gate port",
            ));
        }
        self.tls.validate()
    }
}

/// Whether a client must present a certificate when `client_ca` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificates {
    /// Every connection presents a certificate from `client_ca`, or the handshake
    /// fails: gates and every other caller.
    #[default]
    Required,
    /// Connections without a certificate are accepted (non-gate callers with bearer
    /// tokens); gate calls still need the gate's certificate.
    Optional,
}

/// `[server.tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM, leaf first). With `key`, turns TLS on.
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
    /// The operator's CA for client certificates (PEM; several allowed): turns mutual
    /// TLS on, and binds each gate to the gate id its certificate names.
    pub client_ca: Option<PathBuf>,
    /// Whether every client must present a certificate (`required`) or only gates
    /// (`optional`).
    pub client_certificates: ClientCertificates,
    /// The trust domain of gate certificates: a gate's certificate names it with the
    /// SAN URI `spiffe://<trust_domain>/gate/<gate_id>`.
    pub trust_domain: String,
}

/// The trust domain of gate certificates unless configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "ridegate";

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            client_ca: None,
            client_certificates: ClientCertificates::Required,
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
        }
    }
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// Whether gates must present certificates (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(invalid("server.tls.key", "is required with server.tls.cert")),
            (None, Some(_)) => return Err(invalid("server.tls.cert", "is required with server.tls.key")),
            _ => {}
        }
        if self.client_ca.is_some() && self.cert.is_none() {
            return Err(invalid(
                "server.tls.client_ca",
                "needs server.tls.cert and server.tls.key: mutual TLS is TLS first",
            ));
        }
        let domain = &self.trust_domain;
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(invalid(
                "server.tls.trust_domain",
                "must be a non-empty name of lowercase letters, digits, dots and dashes",
            ));
        }
        Ok(())
    }
}

/// `[gates.<gate_id>]`: a gate in ridegate's registry. Where a registry is configured,
/// a gate's station and line come from it, a tap that names others is refused, and a
/// gate not in it is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateEntry {
    /// The gate's station.
    pub station: String,
    /// The gate's line (may be empty).
    pub line: String,
}

/// `[admission]`: how gate calls are admitted under overload (see
/// `serve::admission`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Gate calls (unary taps and `Taps` streams) open at once; one more is refused
    /// before its request is read.
    pub max_in_flight: usize,
    /// Share of its budget a card, phone-card or ticket entry may expect to spend before
    /// its answer leaves; predicted to take longer, it is refused.
    pub card_share: f64,
    /// The same for a ride-code entry. Exits and retries may use the whole budget.
    pub code_share: f64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 4096,
            card_share: 0.8,
            code_share: 0.6,
        }
    }
}

impl AdmissionConfig {
    /// Checks the settings; the error names the field.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_in_flight == 0 {
            return Err(invalid("admission.max_in_flight", "must be more than 0"));
        }
        if !(self.code_share > 0.0 && self.code_share <= self.card_share && self.card_share <= 1.0) {
            return Err(invalid(
                "admission.code_share",
                "must satisfy 0 < code_share <= card_share <= 1: cheaper, more urgent taps are shed last",
            ));
        }
        Ok(())
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
    /// How long a gate's retry (same gate id, request id and tap) gets the original
    /// answer; a ride-code tap's record lives at least as long as its code.
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

impl DeadlineConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.default_budget.is_zero() {
            return Err(invalid("deadline.default_budget", "must be more than 0"));
        }
        if self.margin >= self.default_budget {
            return Err(invalid("deadline.margin", "must be less than deadline.default_budget"));
        }
        Ok(())
    }
}

/// `[identity]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Secret for the keyed hash that turns ID numbers into pseudonyms (at least 16
    /// bytes). Prefer `RIDEGATE_IDENTITY_SECRET` or `secret_file`. Empty (and no file):
    /// a random secret per process, so pseudonyms are not comparable across instances
    /// or restarts — refused with a shared tier or a health platform.
    pub secret: String,
    /// A file holding the secret (a mounted Kubernetes Secret, say); surrounding
    /// whitespace is ignored. Exclusive with `secret`. `RIDEGATE_IDENTITY_SECRET_FILE`.
    pub secret_file: Option<PathBuf>,
}

impl IdentityConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let secret = self.secret.as_bytes();
        if !secret.is_empty() && self.secret_file.is_some() {
            return Err(invalid(
                "identity.secret_file",
                "set either secret or secret_file, not both",
            ));
        }
        if !secret.is_empty() && secret.len() < MIN_SECRET_BYTES {
            return Err(invalid(
                "identity.secret",
                format!("must be at least {MIN_SECRET_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    /// Whether a secret is configured (inline or as a file).
    pub fn is_configured(&self) -> bool {
        !self.secret.is_empty() || self.secret_file.is_some()
    }

    /// The configured secret, read from `secret_file` if that is where it is; `None`
    /// when none is configured. The error names the field.
    pub fn secret_bytes(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.secret_file else {
            return Ok((!self.secret.is_empty()).then(|| self.secret.as_bytes().to_vec()));
        };
        let text = std::fs::read(path)
            .map_err(|e| invalid("identity.secret_file", format!("cannot read {}: {e}", path.display())))?;
        let secret = text.trim_ascii().to_vec();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(invalid(
                "identity.secret_file",
                format!("{} must hold at least {MIN_SECRET_BYTES} bytes", path.display()),
            ));
        }
        Ok(Some(secret))
    }
}

/// `[issuers.<id>]`: one ride-code issuer: where its keys come from, and how its codes
/// are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerConfig {
    /// Whether codes from this issuer are accepted at all.
    pub enabled: bool,
    /// Display name (defaults to the built-in name, or the id).
    pub name: String,
    /// Path to a JWK Set file with its public keys.
    pub jwks_file: Option<PathBuf>,
    /// Public keys inline, as JWKs (merged with `jwks_file`).
    pub keys: Vec<toml::Table>,
    /// How its codes are checked (algorithms, lifetimes, revoked certificates), in the
    /// same table.
    #[serde(flatten)]
    pub settings: IssuerSettings,
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            name: String::new(),
            jwks_file: None,
            keys: Vec::new(),
            settings: IssuerSettings::default(),
        }
    }
}

impl IssuerConfig {
    /// Checks `[issuers.<id>]`. A disabled issuer is never loaded, so only an enabled
    /// one's checks are validated.
    fn validate(&self, id: &str) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        self.settings.validate().map_err(in_section(&format!("issuers.{id}")))
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
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallersConfig {
    /// JWK Set of the keys that sign caller tokens (ES256 / EdDSA, distinct `kid`s).
    /// Reloaded on SIGHUP and when the file changes.
    pub jwks_file: Option<PathBuf>,
    /// The same keys inline, as JWKs (added to those from `jwks_file`).
    pub keys: Vec<toml::Table>,
    /// A JSON file of revocations, `{"tokens": ["<jti>", …], "keys": ["<kid>", …]}`,
    /// added to `revoked_tokens` and `revoked_keys`; reloaded on SIGHUP and when it
    /// changes, so a leaked token is refused without a restart.
    pub revocations_file: Option<PathBuf>,
    /// How tokens are judged: audience, clock skew, lifetimes, revocations, in the
    /// same table.
    #[serde(flatten)]
    pub settings: CallerSettings,
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

impl LinksConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(8..=20).contains(&self.full_card_digits) {
            return Err(invalid("links.full_card_digits", "must be between 8 and 20"));
        }
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_minutes) {
            return Err(invalid("links.utc_offset_minutes", "must be between -840 and 840"));
        }
        Ok(())
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
    /// The health-code platform (`[health.platform]`), when statuses come from it over
    /// the network.
    pub platform: RemoteSettings,
    /// The mass-deny brake on pushed statuses (`[health.brake]`).
    pub brake: BrakeConfig,
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
            platform: RemoteSettings::default(),
            brake: BrakeConfig::default(),
        }
    }
}

impl HealthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_staleness < self.cache_ttl {
            return Err(invalid("health.max_staleness", "must be at least health.cache_ttl"));
        }
        if self.cache_capacity == 0 {
            return Err(invalid("health.cache_capacity", "must be more than 0"));
        }
        if self.fetch_timeout.is_zero() {
            return Err(invalid("health.fetch_timeout", "must be more than 0"));
        }
        if !(0.0..=1.0).contains(&self.refresh_ahead) {
            return Err(invalid("health.refresh_ahead", "must be between 0 and 1"));
        }
        self.platform.validate().map_err(in_section("health.platform"))?;
        self.brake.validate().map_err(in_section("health.brake"))?;
        if self.platform.is_configured() && self.file.is_some() {
            return Err(invalid(
                "health.file",
                "cannot be used with health.platform.url: the platform is the source of statuses",
            ));
        }
        Ok(())
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

    /// Checks values that the types alone do not, section by section; the error names
    /// the first field found wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.deadline.validate()?;
        self.identity.validate()?;
        self.admission.validate()?;
        self.health.validate()?;
        self.ride_codes.validate().map_err(in_section("ride_codes"))?;
        if self.ride_codes.max_code_bytes >= self.server.max_tap_bytes {
            return Err(invalid(
                "ride_codes.max_code_bytes",
                "must be less than server.max_tap_bytes, so an oversize code still reaches the verifier",
            ));
        }
        self.links.validate()?;
        self.callers.settings.validate().map_err(in_section("callers"))?;
        self.redis.validate().map_err(in_section("redis"))?;
        self.storage.validate().map_err(in_section("storage"))?;
        self.audit.validate().map_err(in_section("audit"))?;
        self.gate_state.validate().map_err(in_section("gate_state"))?;
        self.server.validate()?;
        for (id, issuer) in &self.issuers {
            issuer.validate(id)?;
        }
        if self.audit.stream && !self.redis.is_configured() {
            return Err(invalid(
                "audit.stream",
                "needs a shared tier ([redis]): the stream is kept in Redis",
            ));
        }
        // Pseudonyms in Redis or asked of the platform must be the same in every process
        // and after every restart: a random secret would make them all wrong.
        let shares_pseudonyms = self.redis.is_configured() || self.health.platform.is_configured();
        if shares_pseudonyms && !self.identity.is_configured() {
            return Err(invalid(
                "identity.secret",
                "required with a shared tier ([redis]) or a health platform ([health.platform]): pseudonyms must \
                 be the same in every process and after restarts; set identity.secret, identity.secret_file, \
                 RIDEGATE_IDENTITY_SECRET or RIDEGATE_IDENTITY_SECRET_FILE",
            ));
        }
        for (id, gate) in &self.gates {
            if gate.station.is_empty() {
                return Err(invalid(format!("gates.{id}.station"), "is required"));
            }
        }
        Ok(())
    }

    /// How caller tokens are judged, with the revocations file's entries added.
    pub fn caller_settings(&self) -> Result<CallerSettings, ConfigError> {
        let mut settings = self.callers.settings.clone();
        if let Some(path) = &self.callers.revocations_file {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Revocations {
                #[serde(default)]
                tokens: Vec<String>,
                #[serde(default)]
                keys: Vec<String>,
            }
            let field = "callers.revocations_file";
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))?;
            let revocations: Revocations = serde_json::from_str(&text).map_err(|e| {
                invalid(
                    field,
                    format!("{} is not {{\"tokens\": [...], \"keys\": [...]}}: {e}", path.display()),
                )
            })?;
            settings.revoked_tokens.extend(revocations.tokens);
            settings.revoked_keys.extend(revocations.keys);
        }
        Ok(settings)
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
                    keys,
                    settings: issuer.settings,
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
            "[server.tls]",
            "[deadline]",
            "[admission]",
            "[identity]",
            "[ride_codes]",
            "[links]",
            "[health]",
            "[health.brake]",
            "[gate_state]",
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
        for (toml, field) in [
            (
                "[admission]\ncode_share = 0.9\ncard_share = 0.8\n",
                "admission.code_share",
            ),
            ("[admission]\nmax_in_flight = 0\n", "admission.max_in_flight"),
            ("[server]\nstream_window_bytes = 1000\n", "server.stream_window_bytes"),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            (
                "[server]\nmax_connection_age = \"1000000y\"\n",
                "server.max_connection_age",
            ),
            ("[server]\nmax_tap_bytes = 4096\n", "ride_codes.max_code_bytes"),
        ] {
            let config = Config::from_toml(toml).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with(field), "{toml}: {err}");
        }
        let config = Config::from_toml("[identity]\nsecret = \"short\"\n").unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("identity.secret")
        );
    }

    /// The `ridegate.toml: |` blocks of a Kubernetes manifest's ConfigMaps.
    fn config_maps(yaml: &str) -> Vec<String> {
        let mut blocks = Vec::new();
        let mut lines = yaml.lines().peekable();
        while let Some(line) = lines.next() {
            if line.trim() != "ridegate.toml: |" {
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            let mut block = String::new();
            while let Some(next) = lines.next_if(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent) {
                block.push_str(next.get(indent + 2..).unwrap_or(""));
                block.push('\n');
            }
            blocks.push(block);
        }
        blocks
    }

    #[test]
    fn the_configs_the_deployments_ship_parse_and_validate() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut configs = vec![(
            "compose/ridegate.toml".to_owned(),
            std::fs::read_to_string(deploy.join("compose/ridegate.toml")).unwrap(),
        )];
        for manifest in ["shared.yaml", "embedded.yaml"] {
            let yaml = std::fs::read_to_string(deploy.join("kubernetes").join(manifest)).unwrap();
            let blocks = config_maps(&yaml);
            assert_eq!(blocks.len(), 1, "{manifest}");
            configs.extend(blocks.into_iter().map(|b| (manifest.to_owned(), b)));
        }
        for (name, text) in configs {
            let mut config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            // As every deployment sets it: RIDEGATE_IDENTITY_SECRET from a secret.
            config.identity.secret = "0123456789abcdef0123".into();
            config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(config.server.listen.port(), 50061, "{name}");
            assert!(
                !config.server.listen.ip().is_loopback(),
                "{name}: a container must not listen on loopback"
            );
        }
    }

    #[test]
    fn a_shared_tier_or_a_platform_needs_a_configured_secret() {
        for toml in [
            "[redis]\nurl = \"redis://a\"\n",
            "[redis]\ncluster = [\"redis://a\"]\n",
            "[health.platform]\nurl = \"http://a\"\n",
        ] {
            let err = Config::from_toml(toml).unwrap().validate().unwrap_err().to_string();
            assert!(err.starts_with("identity.secret: required with"), "{toml}: {err}");
            let with = format!("{toml}[identity]\nsecret = \"0123456789abcdef\"\n");
            Config::from_toml(&with).unwrap().validate().unwrap();
            let with = format!("{toml}[identity]\nsecret_file = \"/run/secrets/ridegate\"\n");
            Config::from_toml(&with).unwrap().validate().unwrap();
        }
        Config::default().validate().unwrap();
    }

    #[test]
    fn a_secret_file_is_read_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("ridegate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "0123456789abcdef\n").unwrap();
        let identity = IdentityConfig {
            secret: String::new(),
            secret_file: Some(file.clone()),
        };
        assert_eq!(identity.secret_bytes().unwrap(), Some(b"0123456789abcdef".to_vec()));
        std::fs::write(&file, "short\n").unwrap();
        let err = identity.secret_bytes().unwrap_err().to_string();
        assert!(err.starts_with("identity.secret_file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let both = IdentityConfig {
            secret: "0123456789abcdef".into(),
            secret_file: Some(file),
        };
        assert!(
            both.validate()
                .unwrap_err()
                .to_string()
                .starts_with("identity.secret_file")
        );
    }

    #[test]
    fn adapter_settings_deny_unknown_fields_and_name_invalid_ones_in_full() {
        for (toml, unknown) in [
            ("[redis]\nurll = \"redis://x\"\n", "urll"),
            ("[health.platform]\nhedge = 0.5\n", "hedge"),
            ("[ride_codes]\nmax_bytes = 5\n", "max_bytes"),
            // Issuer checks are flattened into the issuer's table: still denied.
            ("[issuers.alipay]\nmax_lifetme = \"30s\"\n", "max_lifetme"),
        ] {
            let err = Config::from_toml(toml).unwrap_err();
            assert!(err.contains(unknown), "{err}");
        }
        for (toml, message) in [
            (
                "[redis]\noperation_timeout = \"0s\"\n",
                "redis.operation_timeout: must be more than 0",
            ),
            (
                "[redis]\nurl = \"redis://a\"\ncluster = [\"redis://b\"]\n",
                "redis.cluster: set either url (one server) or cluster (seed nodes), not both",
            ),
            (
                "[health.platform]\nbreaker_failures = 0\n",
                "health.platform.breaker_failures: must be more than 0",
            ),
            (
                "[issuers.hangzhou-metro]\nalgorithms = []\n",
                "issuers.hangzhou-metro.algorithms: must list at least one of ES256, EdDSA",
            ),
            (
                "[ride_codes]\nmax_code_bytes = 0\n",
                "ride_codes.max_code_bytes: must be more than 0",
            ),
            (
                "[audit]\nstream = true\n",
                "audit.stream: needs a shared tier ([redis]): the stream is kept in Redis",
            ),
            ("[audit]\nkeep = 0\n", "audit.keep: must be at least 1"),
        ] {
            let config = Config::from_toml(toml).unwrap();
            assert_eq!(config.validate().unwrap_err().to_string(), message);
        }
        let config = Config::from_toml("[issuers.cmb]\nenabled = false\nalgorithms = []\n").unwrap();
        config.validate().unwrap();
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
            (alipay.name.as_str(), alipay.settings.max_lifetime),
            ("支付宝 Alipay", Duration::from_secs(30))
        );
        assert!(specs.iter().all(|s| s.id != "cmb"));
        assert_eq!(specs.last().unwrap().id, "hangzhou-metro");
    }

    #[test]
    fn the_revocations_file_adds_to_the_inline_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.json");
        std::fs::write(&path, r#"{"tokens": ["t2"], "keys": ["k2"]}"#).unwrap();
        let config = Config::from_toml(&format!(
            "[callers]\nrevoked_tokens = [\"t1\"]\nrevocations_file = \"{}\"\n",
            path.display()
        ))
        .unwrap();
        let settings = config.caller_settings().unwrap();
        assert_eq!(settings.revoked_tokens, ["t1", "t2"]);
        assert_eq!(settings.revoked_keys, ["k2"]);
        std::fs::write(&path, r#"{"tokens": "t3"}"#).unwrap();
        let err = config.caller_settings().unwrap_err().to_string();
        assert!(err.starts_with("callers.revocations_file"), "{err}");
    }

    #[test]
    fn a_missing_jwks_file_names_the_issuer_field() {
        let config = Config::from_toml("[issuers.alipay]\njwks_file = \"/nonexistent/keys.json\"\n").unwrap();
        let err = config.issuer_specs().unwrap_err().to_string();
        assert!(err.starts_with("issuers.alipay.jwks_file"), "{err}");
    }
}
