//! The health-code platform over the network (`ridegate.v1.HealthPlatform`).
//!
//! - Each call carries a deadline taken from the tap's remaining budget, sent as
//!   `grpc-timeout` so the platform stops working when nobody waits any more.
//! - Hedging: when a call is slower than the configured percentile of recent calls, a
//!   second identical call is sent, within a budget (a share of calls); the first good
//!   answer wins. A call that fails fast
//!   (UNAVAILABLE) is retried once while the budget lasts.
//! - A circuit breaker: after `breaker_failures` failures in a row the platform is not
//!   called for `breaker_cooldown`; then one call probes it. While open, fetches fail at
//!   once and taps are answered from the cache (degraded) without waiting.
//! - [`RemoteHealth::watch`] follows the change feed into the caches, resuming from the
//!   last change seen after a break; when the platform no longer has that change, the
//!   caches are told to forget everything ([`WatchEvent::Reset`]).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use ridegate_proto::pb;
use ridegate_proto::pb::health_platform_client::HealthPlatformClient;
use serde::Deserialize;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{HealthSource, SourceError};
use crate::ids::IdentityId;
use crate::settings::{InvalidSetting, invalid};
use ridegate_core::model::{Colour, HealthStatus, UnixMillis};

/// How to call the platform: `[health.platform]` in the configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteSettings {
    /// The platform's address, `https://host:port` (or `http://` on a trusted network);
    /// empty: no platform (statuses come from a file, the feed, or Redis). An `https://`
    /// platform's certificate is always verified: never a silent fall back to plaintext.
    pub url: String,
    /// For `https://`: the CA (PEM) that signed the platform's certificate; none: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// For `https://`: the name the platform's certificate must carry, when it is not
    /// the URL's host (an IP address in the URL, say).
    pub server_name: String,
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
    /// Follow the platform's change feed ([`RemoteHealth::watch`]) and apply changes to
    /// the cache at once.
    pub watch: bool,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            ca_file: None,
            server_name: String::new(),
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

impl RemoteSettings {
    /// Whether a platform is configured at all (an empty `url` means none).
    pub fn is_configured(&self) -> bool {
        !self.url.is_empty()
    }

    /// Whether the platform is called over TLS.
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// Checks what the types alone do not; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.is_configured() && !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return invalid("url", "must be http://host:port or https://host:port");
        }
        if !self.uses_tls() && self.ca_file.is_some() {
            return invalid("ca_file", "needs an https:// url: TLS is never implied");
        }
        if !self.uses_tls() && !self.server_name.is_empty() {
            return invalid("server_name", "needs an https:// url: TLS is never implied");
        }
        if !(0.0..1.0).contains(&self.hedge_percentile) {
            return invalid("hedge_percentile", "must be at least 0 and below 1");
        }
        if !(0.0..=1.0).contains(&self.hedge_budget) {
            return invalid("hedge_budget", "must be between 0 and 1");
        }
        if self.hedge_min_delay > self.hedge_max_delay {
            return invalid("hedge_min_delay", "must not exceed hedge_max_delay");
        }
        if self.breaker_failures == 0 {
            return invalid("breaker_failures", "must be more than 0");
        }
        Ok(())
    }
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct RemoteStats {
    /// Calls sent (hedges included).
    pub calls: AtomicU64,
    /// Second calls sent because the first was slow.
    pub hedges: AtomicU64,
    /// Slow calls not hedged because the hedge budget was spent.
    pub hedges_refused: AtomicU64,
    /// Second calls sent because the first failed fast (UNAVAILABLE).
    pub retries: AtomicU64,
    /// Fetches refused at once because the breaker was open.
    pub short_circuited: AtomicU64,
    /// Fetches that failed or timed out.
    pub failures: AtomicU64,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
    /// Changes received on the change feed.
    pub changes: AtomicU64,
    /// Times the change feed lost its place (the caches were told to forget).
    pub resets: AtomicU64,
}

/// What the change feed tells the caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    /// An identity's status changed.
    Change(IdentityId, HealthStatus),
    /// Changes may have been missed: forget every cached status.
    Reset,
}

#[derive(Debug)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is out; if it never reports (cancelled), another may go after
    /// the cooldown.
    HalfOpen {
        probe_sent: Instant,
    },
}

/// The most recent call latencies, for the hedge percentile.
const WINDOW: usize = 512;
/// Fewer samples than this: no hedging yet.
const MIN_SAMPLES: usize = 20;
/// The hedge delay is recomputed after this many new samples.
const RECOMPUTE_EVERY: usize = 32;
/// One hedge, in the budget's units (thousandths of a hedge).
const HEDGE: u32 = 1_000;
/// Hedges that may be sent in a burst (the budget refills by `hedge_budget` a call).
const MAX_HEDGE_TOKENS: u32 = 3 * HEDGE;

/// What hedging decides from: recent latencies, the delay they give, and the budget.
#[derive(Debug)]
struct Hedging {
    latencies: VecDeque<Duration>,
    since_recompute: usize,
    delay: Option<Duration>,
    /// Thousandths of a hedge.
    tokens: u32,
}
/// Wait before resubscribing to the change feed, doubling up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// See `MIN_BACKOFF`.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The health-code platform.
pub struct RemoteHealth {
    client: HealthPlatformClient<Channel>,
    settings: RemoteSettings,
    hedging: Mutex<Hedging>,
    breaker: Mutex<Breaker>,
    stats: RemoteStats,
}

impl std::fmt::Debug for RemoteHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteHealth({})", self.settings.url)
    }
}

/// A status as the platform sends it.
pub fn to_wire(status: &HealthStatus) -> pb::PlatformStatus {
    let colour = match status.colour {
        Colour::Green => pb::HealthColour::Green,
        Colour::Yellow => pb::HealthColour::Yellow,
        Colour::Red => pb::HealthColour::Red,
    };
    pb::PlatformStatus {
        colour: colour as i32,
        set_at_unix_ms: status.set_at.0,
        negative_test_at_unix_ms: status.negative_test_at.map_or(0, |t| t.0),
    }
}

/// A status from the wire; `None` for an unusable one.
pub fn from_wire(status: Option<pb::PlatformStatus>) -> Option<HealthStatus> {
    let status = status?;
    let colour = match pb::HealthColour::try_from(status.colour).ok()? {
        pb::HealthColour::Green => Colour::Green,
        pb::HealthColour::Yellow => Colour::Yellow,
        pb::HealthColour::Red => Colour::Red,
        pb::HealthColour::Unspecified => return None,
    };
    Some(HealthStatus {
        colour,
        set_at: UnixMillis(status.set_at_unix_ms),
        negative_test_at: (status.negative_test_at_unix_ms > 0).then_some(UnixMillis(status.negative_test_at_unix_ms)),
    })
}

/// A client for the platform cannot be made from the settings.
#[derive(Debug, thiserror::Error)]
pub enum InvalidPlatformUrl {
    /// The URL is not usable.
    #[error("the health platform URL is not usable")]
    Url(#[source] tonic::transport::Error),
    /// The CA file cannot be read.
    #[error("ca_file: cannot read {path}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS settings (the CA's PEM, the server name) are not usable.
    #[error("ca_file or server_name: not usable for TLS")]
    Tls(#[source] tonic::transport::Error),
}

type Call = (Result<tonic::Response<pb::GetStatusResponse>, tonic::Status>, Duration);

impl RemoteHealth {
    /// A client for the platform at `settings.url`; connects on first use, so ridegate
    /// starts while the platform is down.
    pub fn connect(settings: RemoteSettings) -> Result<Self, InvalidPlatformUrl> {
        let mut endpoint = Endpoint::from_shared(settings.url.clone())
            .map_err(InvalidPlatformUrl::Url)?
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if settings.uses_tls() {
            // The platform proves who it is, against the configured CA or the system's
            // roots; a plaintext or misnamed peer fails the handshake, and the call.
            let mut tls = match &settings.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| InvalidPlatformUrl::CaFile {
                        path: path.clone(),
                        source,
                    })?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_native_roots(),
            };
            if !settings.server_name.is_empty() {
                tls = tls.domain_name(settings.server_name.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(InvalidPlatformUrl::Tls)?;
        }
        Ok(Self {
            client: HealthPlatformClient::new(endpoint.connect_lazy()),
            settings,
            hedging: Mutex::new(Hedging {
                latencies: VecDeque::with_capacity(WINDOW),
                since_recompute: 0,
                delay: None,
                tokens: MAX_HEDGE_TOKENS,
            }),
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            stats: RemoteStats::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &RemoteStats {
        &self.stats
    }

    /// True while the breaker keeps calls away from the platform.
    pub fn is_open(&self) -> bool {
        matches!(*self.breaker.lock(), Breaker::Open { .. })
    }

    /// Whether the breaker lets a call through now (and, half-open, claims the probe).
    fn allow(&self) -> bool {
        let mut breaker = self.breaker.lock();
        let now = Instant::now();
        match *breaker {
            Breaker::Closed { .. } => true,
            Breaker::Open { until } if now < until => false,
            Breaker::HalfOpen { probe_sent } if now < probe_sent + self.settings.breaker_cooldown => false,
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => {
                *breaker = Breaker::HalfOpen { probe_sent: now };
                true
            }
        }
    }

    fn succeeded(&self, latency: Duration) {
        *self.breaker.lock() = Breaker::Closed { failures: 0 };
        let mut hedging = self.hedging.lock();
        if hedging.latencies.len() == WINDOW {
            hedging.latencies.pop_front();
        }
        hedging.latencies.push_back(latency);
        hedging.since_recompute += 1;
        let samples = hedging.latencies.len();
        if samples >= MIN_SAMPLES && (hedging.delay.is_none() || hedging.since_recompute >= RECOMPUTE_EVERY) {
            hedging.since_recompute = 0;
            let mut sorted: Vec<Duration> = hedging.latencies.iter().copied().collect();
            sorted.sort_unstable();
            let index = ((samples - 1) as f64 * self.settings.hedge_percentile.min(1.0)).round() as usize;
            hedging.delay = Some(sorted[index].clamp(self.settings.hedge_min_delay, self.settings.hedge_max_delay));
        }
    }

    fn failed(&self) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let mut breaker = self.breaker.lock();
        let open = match *breaker {
            Breaker::Closed { failures } if failures + 1 >= self.settings.breaker_failures => true,
            Breaker::Closed { failures } => {
                *breaker = Breaker::Closed { failures: failures + 1 };
                false
            }
            Breaker::HalfOpen { .. } => true,
            Breaker::Open { .. } => false,
        };
        if open {
            *breaker = Breaker::Open {
                until: Instant::now() + self.settings.breaker_cooldown,
            };
            self.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(cooldown = ?self.settings.breaker_cooldown, "health platform failing: circuit open");
        }
    }

    /// How long to wait before hedging a call about to be sent, if hedging applies;
    /// every call earns the budget its share of a hedge.
    fn hedge_delay(&self) -> Option<Duration> {
        if self.settings.hedge_percentile <= 0.0 {
            return None;
        }
        let mut hedging = self.hedging.lock();
        let earned = (self.settings.hedge_budget.clamp(0.0, 1.0) * f64::from(HEDGE)).round() as u32;
        hedging.tokens = (hedging.tokens + earned).min(MAX_HEDGE_TOKENS);
        hedging.delay
    }

    /// Spends one hedge from the budget, if there is one left.
    fn take_hedge(&self) -> bool {
        let mut hedging = self.hedging.lock();
        let left = hedging.tokens >= HEDGE;
        if left {
            hedging.tokens -= HEDGE;
        }
        left
    }

    async fn call(&self, identity: &str, deadline: Instant) -> Call {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(pb::GetStatusRequest {
            identity: identity.to_owned(),
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let started = Instant::now();
        let result = client.get_status(request).await;
        (result, started.elapsed())
    }

    /// The first call; a hedge if it is slow, or one retry if it fails fast with
    /// UNAVAILABLE while there is budget left. The first good answer wins.
    async fn hedged(&self, identity: &str, deadline: Instant) -> Call {
        let first = self.call(identity, deadline);
        tokio::pin!(first);
        let finished = match self.hedge_delay() {
            None => Some((&mut first).await),
            Some(delay) => tokio::select! {
                result = &mut first => Some(result),
                () = tokio::time::sleep(delay) => None,
            },
        };
        let finished = match finished {
            None if !self.take_hedge() => {
                self.stats.hedges_refused.fetch_add(1, Ordering::Relaxed);
                Some((&mut first).await)
            }
            finished => finished,
        };
        if let Some(result) = finished {
            let retry = matches!(&result.0, Err(status) if status.code() == tonic::Code::Unavailable)
                && Instant::now() < deadline;
            if !retry {
                return result;
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            return self.call(identity, deadline).await;
        }
        self.stats.hedges.fetch_add(1, Ordering::Relaxed);
        let second = self.call(identity, deadline);
        tokio::pin!(second);
        tokio::select! {
            result = &mut first => if result.0.is_ok() { result } else { second.await },
            result = &mut second => if result.0.is_ok() { result } else { first.await },
        }
    }

    /// Follows the change feed for as long as the returned task runs, resubscribing
    /// after a break from the last change seen. Never gives up.
    pub fn watch(self: Arc<Self>, apply: impl Fn(WatchEvent) + Send + Sync + 'static) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut backoff = MIN_BACKOFF;
            loop {
                let mut client = self.client.clone();
                let lost_place = match client
                    .watch_changes(pb::WatchChangesRequest { after_sequence: last })
                    .await
                {
                    Ok(stream) => {
                        backoff = MIN_BACKOFF;
                        self.follow(stream.into_inner(), &mut last, &apply).await
                    }
                    Err(status) => {
                        // Said once per outage (the backoff grows while it lasts): a
                        // platform that cannot be reached, or fails the TLS handshake.
                        if backoff == MIN_BACKOFF && status.code() != tonic::Code::OutOfRange {
                            // The status's debug form carries the transport's cause (a
                            // refused certificate, say), which its message does not.
                            tracing::warn!(
                                status = ?status,
                                "health change feed: the platform cannot be reached"
                            );
                        }
                        status.code() == tonic::Code::OutOfRange
                    }
                };
                if lost_place {
                    tracing::warn!(
                        after = last,
                        "health change feed lost its place: clearing cached statuses"
                    );
                    self.stats.resets.fetch_add(1, Ordering::Relaxed);
                    apply(WatchEvent::Reset);
                    last = 0;
                    continue;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }

    /// Applies changes from one subscription until it ends; true when the platform
    /// says the cursor is too old (changes were lost).
    async fn follow(
        &self,
        mut stream: tonic::Streaming<pb::StatusChange>,
        last: &mut u64,
        apply: &impl Fn(WatchEvent),
    ) -> bool {
        loop {
            match stream.message().await {
                Ok(Some(change)) => {
                    if *last != 0 && change.sequence != *last + 1 {
                        return true;
                    }
                    *last = change.sequence;
                    self.stats.changes.fetch_add(1, Ordering::Relaxed);
                    let identity = change.identity.parse::<IdentityId>().ok();
                    if let (Some(identity), Some(status)) = (identity, from_wire(change.status)) {
                        apply(WatchEvent::Change(identity, status));
                    }
                }
                Ok(None) => return false,
                Err(status) => return status.code() == tonic::Code::OutOfRange,
            }
        }
    }
}

impl HealthSource for RemoteHealth {
    async fn fetch(&self, identity: IdentityId, deadline: Instant) -> Result<Option<HealthStatus>, SourceError> {
        if !self.allow() {
            self.stats.short_circuited.fetch_add(1, Ordering::Relaxed);
            return Err(SourceError::CircuitOpen);
        }
        let hex = identity.to_string();
        match tokio::time::timeout_at(deadline, self.hedged(&hex, deadline)).await {
            Ok((Ok(response), latency)) => {
                self.succeeded(latency);
                let response = response.into_inner();
                if !response.found {
                    return Ok(None);
                }
                from_wire(response.status).map(Some).ok_or(SourceError::Unusable)
            }
            Ok((Err(status), _)) => {
                self.failed();
                Err(match status.code() {
                    tonic::Code::DeadlineExceeded => SourceError::Timeout,
                    _ => SourceError::Platform(Arc::new(status)),
                })
            }
            Err(_) => {
                self.failed();
                Err(SourceError::Timeout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(url: &str) -> RemoteHealth {
        RemoteHealth::connect(RemoteSettings {
            url: url.into(),
            hedge_percentile: 0.9,
            hedge_min_delay: Duration::from_millis(2),
            hedge_max_delay: Duration::from_millis(50),
            hedge_budget: 0.1,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(100),
            watch: false,
            ..RemoteSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn tls_settings_need_an_https_url() {
        let settings = |url: &str, ca: Option<&str>, name: &str| RemoteSettings {
            url: url.into(),
            ca_file: ca.map(PathBuf::from),
            server_name: name.into(),
            ..RemoteSettings::default()
        };
        assert_eq!(
            settings("http://p:1", Some("/ca.pem"), "")
                .validate()
                .unwrap_err()
                .field,
            "ca_file"
        );
        assert_eq!(
            settings("http://p:1", None, "platform").validate().unwrap_err().field,
            "server_name"
        );
        assert!(settings("https://p:1", Some("/ca.pem"), "platform").validate().is_ok());
        assert!(matches!(
            RemoteHealth::connect(settings("https://p:1", Some("/nonexistent-ca.pem"), "")),
            Err(InvalidPlatformUrl::CaFile { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_failures_in_a_row_and_one_probe_closes_it() {
        let r = remote("http://127.0.0.1:9");
        r.failed();
        r.failed();
        r.succeeded(Duration::from_millis(1));
        r.failed();
        r.failed();
        assert!(r.allow() && !r.is_open(), "a success resets the count");
        r.failed();
        assert!(r.is_open());
        assert!(!r.allow(), "open: refused during the cooldown");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(r.allow(), "one probe after the cooldown");
        assert!(!r.allow(), "only one");
        r.failed();
        assert!(r.is_open() && !r.allow(), "a failed probe opens it again");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(r.allow());
        // A probe that never reports (its fetch was cancelled) does not wedge it.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(r.allow());
        r.succeeded(Duration::from_millis(1));
        assert!(r.allow() && r.allow(), "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn the_hedge_waits_for_the_percentile_within_bounds_once_there_are_samples() {
        let r = remote("http://127.0.0.1:9");
        for ms in 1..MIN_SAMPLES as u64 {
            r.succeeded(Duration::from_millis(ms));
        }
        assert_eq!(r.hedge_delay(), None, "too few samples");
        for ms in MIN_SAMPLES as u64..=100 {
            r.succeeded(Duration::from_millis(ms));
        }
        // p90 of 1..=100 ms is 90 ms, clamped to the 50 ms maximum.
        assert_eq!(r.hedge_delay(), Some(Duration::from_millis(50)));
        let fast = remote("http://127.0.0.1:9");
        for _ in 0..100 {
            fast.succeeded(Duration::from_micros(300));
        }
        assert_eq!(
            fast.hedge_delay(),
            Some(Duration::from_millis(2)),
            "clamped to the minimum"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_are_limited_by_the_budget() {
        let r = remote("http://127.0.0.1:9");
        assert!((0..3).all(|_| r.take_hedge()), "a burst of three");
        assert!(!r.take_hedge(), "then the budget is spent");
        for _ in 0..10 {
            r.hedge_delay(); // ten calls at a 10% budget earn one hedge
        }
        assert!(r.take_hedge());
        assert!(!r.take_hedge());
    }

    #[tokio::test]
    async fn an_unreachable_platform_fails_fast_then_short_circuits() {
        // Nothing listens on the discard port of loopback.
        let r = remote("http://127.0.0.1:9");
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..3 {
            let err = r.fetch(IdentityId([1; 16]), deadline).await.unwrap_err();
            assert!(matches!(err, SourceError::Platform(_)), "{err:?}");
        }
        assert!(r.is_open());
        let started = Instant::now();
        assert!(matches!(
            r.fetch(IdentityId([1; 16]), deadline).await,
            Err(SourceError::CircuitOpen)
        ));
        assert!(started.elapsed() < Duration::from_secs(1), "no call while open");
        assert_eq!(r.stats().short_circuited.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn statuses_round_trip_through_the_wire_form() {
        let status = HealthStatus {
            colour: Colour::Yellow,
            set_at: UnixMillis(1_654_732_800_000),
            negative_test_at: None,
        };
        assert_eq!(from_wire(Some(to_wire(&status))), Some(status));
        assert_eq!(from_wire(Some(pb::PlatformStatus::default())), None, "no colour");
        assert_eq!(from_wire(None), None);
    }
}
