//! Metrics: every name served at `GET /metrics`, the decision counters the tap path
//! records, and (in [`exposition`]) the Prometheus text rendering of all of it.
//!
//! Recording a tap is a handful of relaxed atomic adds on fixed arrays — no locks, no
//! label lookups; rendering happens only when scraped. Monotonic counts are exported as
//! `counter`s named `…_total`, current levels as `gauge`s, decision latency as a
//! `histogram`. No rider data, ever: labels are verdicts and reasons only.

mod exposition;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::sync::Arc;

use ridegate_core::decision::Urgency;
use ridegate_core::model::{Answer, Reason, Verdict};

pub use exposition::{Exposition, Sources};

/// Metric names, in one place: the names as queried (counters with their `_total`).
pub mod names {
    /// Counter: decisions by verdict and reason.
    pub const DECISIONS: &str = "ridegate_decisions_total";
    /// Counter: decisions whose answer was degraded.
    pub const DEGRADED: &str = "ridegate_degraded_decisions_total";
    /// Counter: answers given again to a retried request.
    pub const RETRIES: &str = "ridegate_retried_requests_total";
    /// Counter: taps that reused a request id kept for a different tap (decided afresh).
    pub const REQUEST_ID_CONFLICTS: &str = "ridegate_request_id_conflicts_total";
    /// Counter: ride codes uploaded as used offline that had been used elsewhere too.
    pub const OFFLINE_CODES_REUSED: &str = "ridegate_offline_codes_reused_total";
    /// Gauge: status changes held since the mass-deny brake engaged.
    pub const BRAKE_HELD: &str = "ridegate_brake_held";
    /// Gauge: 1 while the mass-deny brake holds changes.
    pub const BRAKE_ENGAGED: &str = "ridegate_brake_engaged";
    /// Counter: gate state snapshots sent (followers that could not resume).
    pub const GATE_STATE_SNAPSHOTS: &str = "ridegate_gate_state_snapshots_total";
    /// Gauge: the gate state feed's latest version.
    pub const GATE_STATE_VERSION: &str = "ridegate_gate_state_version";
    /// Gauge: 1 while the gate state feed's stores are known to be current (on the
    /// shared tier: the copy is loaded, Redis up, the stream caught up).
    pub const GATE_STATE_LIVE: &str = "ridegate_gate_state_live";
    /// Counter: shadow-mode taps that enforcement would have refused.
    pub const SHADOW_REFUSALS: &str = "ridegate_shadow_refusals_total";
    /// Counter: requests rejected as malformed.
    pub const INVALID: &str = "ridegate_invalid_requests_total";
    /// Histogram: decision latency, from receipt to answer, in seconds.
    pub const LATENCY: &str = "ridegate_decision_seconds";

    /// Gauge: audit events queued but not yet written.
    pub const AUDIT_PENDING: &str = "ridegate_audit_pending";
    /// Counter: audit events that could not be written.
    pub const AUDIT_FAILED: &str = "ridegate_audit_failed_total";
    /// Counter: audit events appended to the Redis stream.
    pub const AUDIT_STREAM_SHIPPED: &str = "ridegate_audit_stream_shipped_total";
    /// Counter: audit events not shipped to the stream: its queue was full.
    pub const AUDIT_STREAM_DROPPED: &str = "ridegate_audit_stream_dropped_total";
    /// Counter: audit events not shipped to the stream: Redis refused or was down.
    pub const AUDIT_STREAM_FAILED: &str = "ridegate_audit_stream_failed_total";

    /// Gauge: statuses in the health cache.
    pub const HEALTH_CACHE_ENTRIES: &str = "ridegate_health_cache_entries";
    /// Counter: lookups answered fresh from the health cache.
    pub const HEALTH_CACHE_HITS: &str = "ridegate_health_cache_hits_total";
    /// Counter: lookups that asked the status source.
    pub const HEALTH_CACHE_MISSES: &str = "ridegate_health_cache_misses_total";
    /// Counter: fetches sent to the status source.
    pub const HEALTH_FETCHES: &str = "ridegate_health_fetches_total";
    /// Counter: fetches that failed or timed out.
    pub const HEALTH_FETCH_ERRORS: &str = "ridegate_health_fetch_errors_total";
    /// Counter: lookups answered from a stale entry.
    pub const HEALTH_STALE_ANSWERS: &str = "ridegate_health_stale_answers_total";
    /// Counter: lookups with no usable status.
    pub const HEALTH_UNAVAILABLE: &str = "ridegate_health_unavailable_total";
    /// Counter: background refreshes of ageing entries.
    pub const HEALTH_REFRESHES: &str = "ridegate_health_refreshes_total";

    /// Gauge: credentials linked in the embedded store.
    pub const LINKED_CREDENTIALS: &str = "ridegate_linked_credentials";
    /// Gauge: statuses held by the embedded source.
    pub const HEALTH_STATUSES: &str = "ridegate_health_statuses";

    /// Counter: calls sent to the health platform, hedges included.
    pub const PLATFORM_CALLS: &str = "ridegate_platform_calls_total";
    /// Counter: second calls sent because the first was slow.
    pub const PLATFORM_HEDGES: &str = "ridegate_platform_hedges_total";
    /// Counter: slow calls not hedged because the hedge budget was spent.
    pub const PLATFORM_HEDGES_REFUSED: &str = "ridegate_platform_hedges_refused_total";
    /// Counter: second calls sent because the first failed fast.
    pub const PLATFORM_RETRIES: &str = "ridegate_platform_retries_total";
    /// Counter: platform fetches that failed or timed out.
    pub const PLATFORM_FAILURES: &str = "ridegate_platform_failures_total";
    /// Counter: fetches not sent because the circuit breaker was open.
    pub const PLATFORM_SHORT_CIRCUITED: &str = "ridegate_platform_short_circuited_total";
    /// Counter: times the circuit breaker opened.
    pub const PLATFORM_BREAKER_OPENED: &str = "ridegate_platform_breaker_opened_total";
    /// Gauge: 1 while the circuit breaker keeps calls away from the platform.
    pub const PLATFORM_BREAKER_OPEN: &str = "ridegate_platform_breaker_open";
    /// Counter: changes received on the platform's change feed.
    pub const PLATFORM_CHANGES: &str = "ridegate_platform_changes_total";
    /// Counter: times the change feed lost its place and the cache was cleared.
    pub const PLATFORM_RESETS: &str = "ridegate_platform_resets_total";

    /// Gauge: 1 while Redis answers and holds its data, 0 while it is down or has lost
    /// its data.
    pub const SHARED_TIER_UP: &str = "ridegate_shared_tier_up";
    /// Gauge: 1 while Redis has lost its data (epoch marker missing) and is not restored.
    pub const SHARED_DATA_LOST: &str = "ridegate_shared_data_lost";
    /// Counter: times Redis was found to have lost its data.
    pub const SHARED_DATA_LOSSES: &str = "ridegate_shared_data_losses_total";
    /// Counter: Redis commands that failed or timed out.
    pub const SHARED_ERRORS: &str = "ridegate_shared_errors_total";
    /// Counter: Redis commands not sent while it was down.
    pub const SHARED_SKIPPED: &str = "ridegate_shared_skipped_total";
    /// Counter: ride codes checked against this instance only, Redis not answering.
    pub const REPLAY_LOCAL_FALLBACKS: &str = "ridegate_replay_local_fallbacks_total";
    /// Counter: TLS handshakes refused or timed out on the gate port (no client
    /// certificate, a foreign CA, an expired certificate, a plaintext client).
    pub const TLS_HANDSHAKE_FAILURES: &str = "ridegate_tls_handshake_failures_total";
    /// Counter: taps refused for their gate (certificate of another gate, none, or a
    /// gate or place the registry does not have).
    pub const GATE_REFUSALS: &str = "ridegate_gate_refusals_total";

    /// Counter: gate calls refused under overload (RESOURCE_EXHAUSTED), by kind:
    /// `exit`, `retry`, `card_entry`, `code_entry`, or `at_capacity` (refused before
    /// the tap was read, `admission.max_in_flight` open).
    pub const SHED: &str = "ridegate_shed_calls_total";
    /// Counter: unary gate answers ready only after the caller's own deadline
    /// (`grpc-timeout`, timed from when the call came off its connection, so neither
    /// the wait to be read nor the answer's wait to be written counts): the gate had
    /// given up.
    pub const ANSWERS_LATE: &str = "ridegate_answers_late_total";
    /// Gauge: the retry hint (`grpc-retry-pushback-ms`) the latest refusal carried, in
    /// seconds.
    pub const RETRY_HINT: &str = "ridegate_retry_hint_seconds";
    /// Gauge: how late the runtime wakes a task, recent mean, in seconds: about how
    /// long a call's bytes wait before ridegate reads them. Milliseconds that persist
    /// mean the instance is short of CPU.
    pub const RUNTIME_LAG: &str = "ridegate_runtime_lag_seconds";
    /// Gauge: connections open on the gate port.
    pub const CONNECTIONS_OPEN: &str = "ridegate_connections_open";
    /// Counter: connections closed at once, `server.max_connections` open.
    pub const CONNECTIONS_REFUSED: &str = "ridegate_connections_refused_total";
    /// Counter: connections closed by ridegate, by reason: `handshake` (no TLS or HTTP/2
    /// within `handshake_timeout`), `idle`, `age`.
    pub const CONNECTIONS_CLOSED: &str = "ridegate_connections_closed_total";
    /// Counter: failed accepts (EMFILE and the like back off).
    pub const ACCEPT_ERRORS: &str = "ridegate_accept_errors_total";
}

/// Why ridegate closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionClosed {
    /// No TLS handshake or first HTTP/2 bytes within `server.handshake_timeout`.
    Handshake,
    /// No call open for `server.idle_timeout`.
    Idle,
    /// Older than `server.max_connection_age`.
    Age,
}

impl ConnectionClosed {
    const ALL: [Self; 3] = [Self::Handshake, Self::Idle, Self::Age];

    fn label(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Idle => "idle",
            Self::Age => "age",
        }
    }
}

/// Latency bucket upper bounds, in microseconds.
const BUCKETS_US: [u64; 16] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 150_000, 200_000, 300_000, 500_000,
    1_000_000,
];

const VERDICTS: [Verdict; 3] = [Verdict::Allow, Verdict::Deny, Verdict::Assist];

fn verdict_index(v: Verdict) -> usize {
    match v {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
        Verdict::Assist => 2,
    }
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Assist => "assist",
    }
}

/// The counters the tap path records: decisions by verdict and reason, degraded
/// answers, retries, shadow refusals, malformed requests, and the latency histogram.
#[derive(Debug)]
pub struct Metrics {
    decisions: [[AtomicU64; Reason::ALL.len()]; 3],
    degraded: AtomicU64,
    retries: AtomicU64,
    request_id_conflicts: AtomicU64,
    offline_codes_reused: AtomicU64,
    shadow_refusals: AtomicU64,
    invalid: AtomicU64,
    tls_handshake_failures: AtomicU64,
    gate_refusals: AtomicU64,
    shed: [AtomicU64; Urgency::ALL.len()],
    shed_at_capacity: AtomicU64,
    answers_late: AtomicU64,
    retry_hint_ns: AtomicU64,
    runtime_lag_ns: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    connections_closed: [AtomicU64; ConnectionClosed::ALL.len()],
    accept_errors: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            decisions: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            degraded: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            request_id_conflicts: AtomicU64::new(0),
            offline_codes_reused: AtomicU64::new(0),
            shadow_refusals: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            gate_refusals: AtomicU64::new(0),
            shed: std::array::from_fn(|_| AtomicU64::new(0)),
            shed_at_capacity: AtomicU64::new(0),
            answers_late: AtomicU64::new(0),
            retry_hint_ns: AtomicU64::new(0),
            runtime_lag_ns: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_closed: std::array::from_fn(|_| AtomicU64::new(0)),
            accept_errors: AtomicU64::new(0),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered tap.
    pub fn record(&self, answer: &Answer, retry: bool, latency: Duration) {
        self.decisions[verdict_index(answer.verdict)][answer.reason.index()].fetch_add(1, Ordering::Relaxed);
        if answer.degraded {
            self.degraded.fetch_add(1, Ordering::Relaxed);
        }
        if retry {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        if answer.shadow.is_some_and(|(v, _)| v != Verdict::Allow) {
            self.shadow_refusals.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Counts one tap that reused a request id kept for a different tap.
    pub fn record_request_id_conflict(&self) {
        self.request_id_conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one ride code uploaded as used offline that had been used elsewhere.
    pub fn record_offline_code_reused(&self) {
        self.offline_codes_reused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one malformed request.
    pub fn record_invalid(&self) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refused or timed-out TLS handshake.
    pub fn record_tls_handshake_failure(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one tap refused for its gate.
    pub fn record_gate_refused(&self) {
        self.gate_refusals.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one gate call refused under overload after its tap was read.
    pub fn record_shed(&self, urgency: Urgency) {
        self.shed[urgency.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answer ready after its caller's deadline.
    pub fn record_answer_late(&self) {
        self.answers_late.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the retry hint the latest refusal carried.
    pub fn set_retry_hint(&self, hint: std::time::Duration) {
        let ns = u64::try_from(hint.as_nanos()).unwrap_or(u64::MAX);
        self.retry_hint_ns.store(ns, Ordering::Relaxed);
    }

    /// Sets how late the runtime wakes a task, as admission last measured it.
    pub fn set_runtime_lag(&self, lag: Duration) {
        let ns = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX);
        self.runtime_lag_ns.store(ns, Ordering::Relaxed);
    }

    /// How late the runtime wakes a task, as last set.
    #[cfg(test)]
    pub(crate) fn runtime_lag(&self) -> Duration {
        Duration::from_nanos(self.runtime_lag_ns.load(Ordering::Relaxed))
    }

    /// Counts one gate call refused before its tap was read, at `max_in_flight`.
    pub fn record_shed_at_capacity(&self) {
        self.shed_at_capacity.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection open until the returned guard is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Counts one connection closed at once at the connection cap.
    pub fn record_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one connection ridegate closed, and why.
    pub fn record_connection_closed(&self, why: ConnectionClosed) {
        self.connections_closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed accept.
    pub fn record_accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Decisions counted so far with this verdict and reason.
    pub fn decisions(&self, verdict: Verdict, reason: Reason) -> u64 {
        self.decisions[verdict_index(verdict)][reason.index()].load(Ordering::Relaxed)
    }
}

/// A connection counted in [`names::CONNECTIONS_OPEN`] until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}
