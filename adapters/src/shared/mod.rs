//! The shared tier: Redis (one server) or Redis Cluster, holding what every ridegate
//! instance behind a load balancer must agree on — links, health statuses, used ride
//! codes, idempotency records — and the change stream that keeps their local caches
//! fresh (see [`changes`]).
//!
//! Keys, all under one prefix (default `rg`), each naming no person:
//!
//! | key | value |
//! |---|---|
//! | `rg:l:<credential id>` | a link record: identity pseudonym, class, consent, who, when, until |
//! | `rg:i:<identity id>` | hash of the identity's credentials and its card slots |
//! | `rg:h:<identity id>` | a health status: colour, set-at, negative-test time |
//! | `rg:c:<code key>` | a used ride code: the request that used it, expiring 10 s after the code |
//! | `rg:r:<request key>` | an answer, for retries, expiring after the retry window |
//! | `rg:changes` | the change stream (status changes, link changes), trimmed |
//! | `rg:epoch` | this deployment's epoch marker, written once, checked on every probe |
//! | `rg:audit` | the central audit stream, when `audit.stream` is on, trimmed |
//!
//! Every command is bounded by the operation timeout and by the tap's own deadline.
//! When a command fails the tier is marked down and callers fall back at once (no
//! waiting on a dead server for every tap) until a probe finds it up again.
//!
//! A Redis that comes back *empty* (restarted without persistence, a failover to a
//! replica that had nothing) answers every command, yet every answer is wrong: each
//! linked rider would be "not linked". The epoch marker catches it. The first instance
//! to find no marker at start-up writes one (a new deployment: an empty Redis then is
//! fine); every instance remembers the marker it found and checks it on every probe.
//! Once the marker is missing or changed, the data is lost: the tier counts as down
//! ([`SharedError::DataLost`]) — answers come from local caches, marked degraded,
//! never a confident "not linked" — until the marker holds the remembered epoch again:
//! Redis restored from its AOF or RDB file brings it back by itself, and an operator
//! who re-imported the data confirms with `SET <prefix>:epoch <epoch>` (the epoch is
//! in the ERROR line).

pub mod bulk;
pub mod changes;
pub(crate) mod encoding;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisFuture, Value};
use serde::Deserialize;
use tokio::time::Instant;

use crate::settings::{InvalidSetting, invalid};

/// How to reach and use the shared tier: `[redis]` in the configuration. With neither
/// `url` nor `cluster` set there is no shared tier, and everything stays in the process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedSettings {
    /// One server: `redis://[user:password@]host:port[/db]`, `rediss://` for TLS.
    pub url: String,
    /// Redis Cluster seed nodes (same URL forms). Exclusive with `url`.
    pub cluster: Vec<String>,
    /// For `rediss://`: the CA (PEM) that signed the servers' certificates; none: the
    /// system's roots. The server's certificate is always verified.
    pub ca_file: Option<std::path::PathBuf>,
    /// Username, if not in the URLs (overrides any there).
    pub username: String,
    /// Password, if not in the URLs (overrides any there). Prefer
    /// `RIDEGATE_REDIS_PASSWORD`.
    pub password: String,
    /// Prefix of every key ridegate writes.
    pub prefix: String,
    /// Longest wait for one Redis command; the tap's own deadline may cut it shorter.
    /// Keep it well under the gate's budget: after `down_after_timeouts` timeouts in a
    /// row Redis is marked down and later taps fall back at once.
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Timeouts in a row before Redis is marked down. One slow reply under a CPU spike
    /// is not an outage; a refused or dropped connection marks it down at once. Commands
    /// that were waiting together when one timed out count once (one stall seen by a
    /// herd of taps is one timeout), so this is about how many operation timeouts long
    /// a stall must be.
    pub down_after_timeouts: u32,
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
    /// How long the start-up import of `links.file` / `health.file` into Redis may take,
    /// retries included (Redis down or timing out), before ridegate gives up and exits
    /// non-zero. Until the import lands, `ridegate.v1.Gate` reports NOT_SERVING.
    #[serde(with = "humantime_serde")]
    pub import_timeout: Duration,
}

impl Default for SharedSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            cluster: Vec::new(),
            ca_file: None,
            username: String::new(),
            password: String::new(),
            prefix: "rg".into(),
            operation_timeout: Duration::from_millis(50),
            down_after_timeouts: 3,
            connect_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_millis(500),
            changes_max_len: 100_000,
            link_cache_capacity: 2_000_000,
            link_cache_ttl: Duration::from_secs(60),
            import_timeout: Duration::from_secs(600),
        }
    }
}

impl SharedSettings {
    /// Whether a shared tier is configured at all.
    pub fn is_configured(&self) -> bool {
        !self.url.is_empty() || !self.cluster.is_empty()
    }

    /// Checks what the types alone do not; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !self.url.is_empty() && !self.cluster.is_empty() {
            return invalid(
                "cluster",
                "set either url (one server) or cluster (seed nodes), not both",
            );
        }
        let urls = || {
            std::iter::once(&self.url)
                .chain(&self.cluster)
                .filter(|u| !u.is_empty())
        };
        if urls().any(|u| u.contains("#insecure")) {
            return invalid("url", "certificate verification cannot be turned off (#insecure)");
        }
        if self.ca_file.is_some() && !urls().all(|u| u.starts_with("rediss://")) {
            return invalid("ca_file", "needs rediss:// URLs: TLS is never implied");
        }
        let prefix_ok = (1..=16).contains(&self.prefix.len())
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !prefix_ok {
            return invalid("prefix", "must be 1-16 characters of letters, digits, '-' and '_'");
        }
        if self.operation_timeout.is_zero() {
            return invalid("operation_timeout", "must be more than 0");
        }
        if self.probe_interval.is_zero() {
            return invalid("probe_interval", "must be more than 0");
        }
        if self.import_timeout.is_zero() {
            return invalid("import_timeout", "must be more than 0");
        }
        if self.down_after_timeouts == 0 {
            return invalid("down_after_timeouts", "must be at least 1");
        }
        Ok(())
    }
}

/// The shared tier could not answer. Cheap to make and to clone: no text is formatted
/// when a command fails; the Redis error is kept as the source, for logs only.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SharedError {
    /// It is known to be down; the command was not sent.
    #[error("shared tier down")]
    Down,
    /// No answer within the time allowed.
    #[error("shared tier timed out")]
    Timeout,
    /// The connection failed or broke: an outage (the tier is marked down).
    #[error("shared tier connection failed")]
    Connection(#[source] redis::RedisError),
    /// The server refused the command (a wrong type, a script error): not an outage.
    #[error("shared tier refused a command")]
    Rejected(#[source] redis::RedisError),
    /// The configuration cannot be used (a bad URL).
    #[error("shared tier configuration is not usable")]
    Config(#[source] redis::RedisError),
    /// Redis lost its data (its epoch marker is gone or changed): it is not used until
    /// it is restored, since its answers would be confidently wrong.
    #[error("shared tier lost its data; not used until restored")]
    DataLost,
}

/// A connection to either topology; both multiplex and reconnect on their own.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct SharedStats {
    /// Commands that failed or timed out.
    pub errors: AtomicU64,
    /// Commands not sent because the tier was down.
    pub skipped: AtomicU64,
    /// Times the tier was found to have lost its data (its epoch marker gone).
    pub data_lost: AtomicU64,
}

/// The shared tier.
pub struct SharedTier {
    settings: SharedSettings,
    connection: Connection,
    up: AtomicBool,
    /// The epoch marker found (or written) at the first successful probe.
    epoch: parking_lot::Mutex<Option<String>>,
    /// Set while the marker is missing or changed: the data is lost.
    data_lost: AtomicBool,
    /// Set while this instance's start-up import is still writing into the tier.
    importing: AtomicBool,
    /// Timeouts since the last success.
    stall: parking_lot::Mutex<Stall>,
    /// Set while `stall` holds a count (successes then clear it): a success need not
    /// take the lock otherwise.
    stalled: AtomicBool,
    stats: SharedStats,
}

/// The timeouts counted since the last success.
#[derive(Debug, Default)]
struct Stall {
    /// Timeouts counted.
    counted: u32,
    /// When the last counted one fired: a command already waiting then is part of the
    /// same stall and is not counted again.
    last_counted_at: Option<Instant>,
}

impl Stall {
    /// Counts a timeout of a command sent at `started` that fired at `now`, unless the
    /// command was already waiting when the last counted one fired; returns the count.
    fn count(&mut self, started: Instant, now: Instant) -> u32 {
        if self.last_counted_at.is_none_or(|at| started >= at) {
            self.counted = self.counted.saturating_add(1);
            self.last_counted_at = Some(now);
        }
        self.counted
    }
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (url, cluster) = (&self.settings.url, &self.settings.cluster);
        write!(f, "SharedTier({url:?}, {cluster:?}, up: {})", self.is_up())
    }
}

impl SharedTier {
    /// Prepares the connection without waiting for the server: ridegate starts (marked
    /// degraded) while Redis is down, and connects when it comes up.
    pub fn connect(settings: SharedSettings) -> Result<Arc<Self>, SharedError> {
        let connection = open(&settings, settings.operation_timeout)?;
        Ok(Arc::new(Self {
            settings,
            connection,
            up: AtomicBool::new(false),
            epoch: parking_lot::Mutex::new(None),
            data_lost: AtomicBool::new(false),
            importing: AtomicBool::new(false),
            stall: parking_lot::Mutex::new(Stall::default()),
            stalled: AtomicBool::new(false),
            stats: SharedStats::default(),
        }))
    }

    /// A fresh connection of its own, for a blocking reader (the change stream), whose
    /// reads may wait `read_timeout`.
    pub(crate) fn dedicated(&self, read_timeout: Duration) -> Result<Connection, SharedError> {
        open(&self.settings, read_timeout)
    }

    /// The key `<prefix>:<kind>:<id>`.
    pub fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}:{kind}:{id}", self.settings.prefix)
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &SharedSettings {
        &self.settings
    }

    /// Whether the tier can be trusted: the last command or probe succeeded and the
    /// data has not been lost.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.is_data_lost()
    }

    /// Whether Redis lost its data (its epoch marker is missing or changed) and has not
    /// been restored.
    pub fn is_data_lost(&self) -> bool {
        self.data_lost.load(Ordering::Relaxed)
    }

    /// Whether the tier's answers can be given as confident ones: it is up, and this
    /// instance's start-up import has landed (a half-imported Redis would call riders
    /// on the missing rows "not linked").
    pub fn is_trusted(&self) -> bool {
        self.is_up() && !self.importing.load(Ordering::Relaxed)
    }

    /// Marks this instance's start-up import as running (`true`) or landed (`false`).
    pub fn set_importing(&self, importing: bool) {
        self.importing.store(importing, Ordering::Relaxed);
    }

    /// The epoch this instance found or wrote, once a probe has succeeded.
    pub fn epoch(&self) -> Option<String> {
        self.epoch.lock().clone()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &SharedStats {
        &self.stats
    }

    /// Runs `cmd`, bounded by the operation timeout and `deadline`. While the tier is
    /// down, fails at once with [`SharedError::Down`].
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd, deadline: Option<Instant>) -> Result<T, SharedError> {
        if !self.is_up() {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return Err(if self.is_data_lost() {
                SharedError::DataLost
            } else {
                SharedError::Down
            });
        }
        self.send(cmd, deadline).await
    }

    /// Runs `cmd` whether or not the tier is marked down (probes, writes that must not
    /// be skipped silently). A command that only succeeded on a new connection (Redis
    /// restarted since the last one) fails with [`SharedError::Down`] and marks the tier
    /// down: the new server may be an empty one, and only a probe, which checks the
    /// epoch marker, brings the tier back.
    pub async fn send<T: FromRedisValue>(&self, cmd: &Cmd, deadline: Option<Instant>) -> Result<T, SharedError> {
        let started = Instant::now();
        let limit = started + self.settings.operation_timeout;
        let deadline = deadline.map_or(limit, |d| d.min(limit));
        let mut connection = self.connection.clone();
        let attempt = async {
            match cmd.query_async::<T>(&mut connection).await {
                // A connection that broke since the last command (Redis restarted) is
                // re-established by the connection manager: try once more. Safe, since
                // every ridegate write is idempotent or a compare-and-set.
                Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                    (cmd.query_async::<T>(&mut connection).await, true)
                }
                other => (other, false),
            }
        };
        let result = match tokio::time::timeout_at(deadline, attempt).await {
            Ok((Ok(_), true)) => {
                self.mark_down();
                Err(SharedError::Down)
            }
            Ok((Ok(value), false)) => Ok(value),
            Ok((Err(e), _)) if is_reply_error(&e) => Err(SharedError::Rejected(e)),
            Ok((Err(e), _)) if e.is_timeout() => {
                self.note_timeout(started);
                Err(SharedError::Connection(e))
            }
            Ok((Err(e), _)) => {
                self.mark_down();
                Err(SharedError::Connection(e))
            }
            Err(_) => {
                self.note_timeout(started);
                Err(SharedError::Timeout)
            }
        };
        if result.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        } else if self.stalled.load(Ordering::Relaxed) {
            // Set and cleared under the lock, so it is set whenever a count is held.
            let mut stall = self.stall.lock();
            *stall = Stall::default();
            self.stalled.store(false, Ordering::Relaxed);
        }
        result
    }

    /// Reads the epoch marker, checks it against the one remembered (writing one if
    /// there is none yet at the first probe), and records whether the tier is up and
    /// whether its data is lost; returns [`is_up`](Self::is_up).
    pub async fn probe(&self) -> bool {
        let key = self.key_of("epoch");
        let Ok(found) = self.send::<Option<String>>(redis::cmd("GET").arg(&key), None).await else {
            return false;
        };
        let known = self.epoch();
        match (known, found) {
            (None, found) => {
                let epoch = match found {
                    Some(epoch) => epoch,
                    None => {
                        // A new deployment (or a Redis that lost its data before any
                        // instance of this deployment was running to notice).
                        let epoch = crate::ids::random_hex::<16>();
                        let written: Result<Option<String>, _> =
                            self.send(redis::cmd("SET").arg(&key).arg(&epoch).arg("NX"), None).await;
                        let Ok(()) = written.map(drop) else { return false };
                        let Ok(Some(held)) = self.send::<Option<String>>(redis::cmd("GET").arg(&key), None).await
                        else {
                            return false;
                        };
                        if held == epoch {
                            tracing::info!(%epoch, "shared tier (Redis) had no epoch marker: wrote a new one");
                        }
                        held
                    }
                };
                *self.epoch.lock() = Some(epoch);
            }
            (Some(known), Some(found)) if known == found => {
                if self.data_lost.swap(false, Ordering::Relaxed) {
                    tracing::info!(epoch = %known, "shared tier (Redis) restored: its epoch marker is back");
                }
            }
            (Some(known), found) => {
                if !self.data_lost.swap(true, Ordering::Relaxed) {
                    self.stats.data_lost.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        epoch = %known,
                        found = found.as_deref().unwrap_or("none"),
                        key = %key,
                        "shared tier (Redis) lost its data (epoch marker missing or changed): answering from \
                         local caches, marked degraded, until it is restored; restore Redis from its AOF or RDB \
                         file, or re-import the data and confirm with SET {key} {known}"
                    );
                }
            }
        }
        self.mark_up();
        self.is_up()
    }

    /// The key `<prefix>:<name>`.
    pub fn key_of(&self, name: &str) -> String {
        format!("{}:{name}", self.settings.prefix)
    }

    /// Counts a timeout of a command sent at `started` (see [`Stall::count`]); marks the
    /// tier down at `down_after_timeouts`.
    fn note_timeout(&self, started: Instant) {
        let counted = {
            let mut stall = self.stall.lock();
            self.stalled.store(true, Ordering::Relaxed);
            stall.count(started, Instant::now())
        };
        if counted >= self.settings.down_after_timeouts {
            self.mark_down();
        }
    }

    fn mark_down(&self) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!("shared tier (Redis) down: answering from local caches, marked degraded");
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("shared tier (Redis) up");
        }
    }
}

/// An error the server answered with (wrong type, script error) is not an outage.
fn is_reply_error(e: &redis::RedisError) -> bool {
    !(e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error())
}

fn open(settings: &SharedSettings, response_timeout: Duration) -> Result<Connection, SharedError> {
    let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    // With a CA file, rediss:// servers are verified against it instead of the system's
    // roots; a plaintext or misnamed server fails the handshake either way.
    let certificates = match &settings.ca_file {
        Some(path) => Some(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(path).map_err(|e| {
                SharedError::Config(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "ca_file cannot be read",
                    format!("{}: {e}", path.display()),
                )))
            })?),
        }),
        None => None,
    };
    let (username, password) = (non_empty(&settings.username), non_empty(&settings.password));
    if settings.cluster.is_empty() {
        let info =
            redis::IntoConnectionInfo::into_connection_info(settings.url.as_str()).map_err(SharedError::Config)?;
        let mut redis_settings = info.redis_settings().clone();
        if let Some(password) = &password {
            redis_settings = redis_settings.set_password(password);
        }
        if let Some(username) = &username {
            redis_settings = redis_settings.set_username(username);
        }
        let info = info.set_redis_settings(redis_settings);
        let client = match certificates {
            Some(certificates) => redis::Client::build_with_tls(info, certificates),
            None => redis::Client::open(info),
        }
        .map_err(SharedError::Config)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        return ConnectionManager::new_lazy_with_config(client, config)
            .map(Connection::Single)
            .map_err(SharedError::Config);
    }
    let mut builder = ClusterClientBuilder::new(settings.cluster.iter().map(String::as_str))
        .connection_timeout(settings.connect_timeout)
        .response_timeout(response_timeout)
        .retries(1);
    if let Some(password) = password {
        builder = builder.password(password);
    }
    if let Some(username) = username {
        builder = builder.username(username);
    }
    if let Some(certificates) = certificates {
        builder = builder.certs(certificates);
    }
    let client = builder.build().map_err(SharedError::Config)?;
    let config = redis::cluster::ClusterConfig::new()
        .set_connection_timeout(settings.connect_timeout)
        .set_response_timeout(response_timeout);
    Ok(Connection::Cluster(
        client.get_pending_async_connection_with_config(config),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_seen_by_many_commands_at_once_counts_once() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut stall = Stall::default();
        // A herd of 500 commands sent in the first 10 ms, timing out 50 ms later.
        for i in 0..500 {
            let sent = ms(i % 10);
            assert_eq!(stall.count(sent, sent + Duration::from_millis(50)), 1);
        }
        // Commands sent after the first timeout fired start a new count each time.
        assert_eq!(stall.count(ms(55), ms(105)), 2);
        assert_eq!(stall.count(ms(60), ms(110)), 2, "waiting when the second fired");
        assert_eq!(stall.count(ms(106), ms(156)), 3);
    }
}
