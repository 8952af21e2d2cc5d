//! Deadline-aware admission for gate calls: every tap is decided before its deadline or
//! refused within a few milliseconds with RESOURCE_EXHAUSTED and a retry hint
//! (`grpc-retry-pushback-ms`) — never queued past the point where it could still be
//! answered in time.
//!
//! Two checks:
//!
//! 1. **A cap on gate calls open at once** ([`AdmissionConfig::max_in_flight`]), taken
//!    before a call's request is read: beyond it a call is refused at once, so memory
//!    held by arriving requests stays below `max_in_flight × server.max_tap_bytes`.
//! 2. **The deadline.** Each call is stamped as its headers come off the connection
//!    ([`Arrived`](super::transport::Arrived)). When its tap has been read, the time it
//!    will have spent queued in this process by the time its answer is sent is
//!    predicted — what it has waited so far, plus how long recent calls spent queued
//!    from arrival until their answer was sent, their decision itself left out (which
//!    also covers the wait before a call is stamped: a request waits about as long to
//!    be read as an answer waits to leave) — and compared with the share of its budget
//!    its kind may use. The decision itself is not predicted: it answers by the
//!    deadline whatever its back ends do, and a slow back end costs no capacity.
//!    Below 1 ms of predicted queueing nothing is shed: there is no queue to speak of.
//!
//!    | kind | share of the budget |
//!    |---|---|
//!    | exits, and retries of requests already decided | 1.0 |
//!    | card, phone-card and ticket entries | `card_share` (0.8) |
//!    | ride-code entries (a signature check each) | `code_share` (0.6) |
//!
//!    At any moment the same prediction is compared with each share, so as load rises
//!    ride-code entries are shed first, then card entries, and exits last: an exit is
//!    never shed while an entry is admitted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ridegate_core::decision::Urgency;
use tokio::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tonic::Status;

use super::transport::{Arrived, Guarded};
use crate::config::AdmissionConfig;
use crate::metrics::Metrics;
use crate::telemetry::Throttled;

/// Predicted queueing below which nothing is shed, whatever the budget: without a queue,
/// deciding is about as quick as refusing, and a gate with no time left still gets its
/// answer rather than a refusal.
const NO_QUEUE: Duration = Duration::from_millis(1);
/// The shortest and longest retry hint given with a refusal.
const PUSHBACK: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(2));

/// A call refused so that the calls admitted can be answered in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ridegate is overloaded: retry after grpc-retry-pushback-ms, with jitter, or decide offline")]
pub struct Overloaded {
    /// When the gate may try again.
    pub retry_after: Duration,
}

/// The admission state of one server.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    load: Arc<Load>,
    metrics: Arc<Metrics>,
    log: Throttled,
}

/// What admission knows of the server's load: calls open, and recent means (weight
/// 1/8 per sample), in ns.
#[derive(Debug, Default)]
struct Load {
    open_calls: AtomicUsize,
    /// How long a call waited from arrival until its tap was looked at.
    wait_ns: AtomicU64,
    /// How long a unary call spent from arrival until its answer was sent, less its
    /// decision: its time queued.
    queued_ns: AtomicU64,
}

/// How long a call's decision took: set on its response by the gate service, so that
/// admission can leave it out of the call's time queued.
#[derive(Debug, Clone, Copy)]
pub struct DecisionTime(pub Duration);

impl Admission {
    /// Admission under `config`, counting refusals into `metrics`.
    pub fn new(config: AdmissionConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            load: Arc::default(),
            metrics,
            log: Throttled::default(),
        }
    }

    /// Opens a gate call, or refuses it when `max_in_flight` are open already. The
    /// call counts as open until the returned guard is dropped; given when a unary call
    /// `arrived`, the guard also times it until its answer is sent (see
    /// [`OpenCall::decided_in`]).
    pub fn open_call(&self, arrived: Option<Instant>) -> Result<OpenCall, Overloaded> {
        let open = self.load.open_calls.fetch_add(1, Ordering::AcqRel);
        if open >= self.config.max_in_flight {
            self.load.open_calls.fetch_sub(1, Ordering::AcqRel);
            self.metrics.record_shed_at_capacity();
            let overloaded = Overloaded {
                retry_after: self.pushback(),
            };
            self.note(None, overloaded);
            return Err(overloaded);
        }
        Ok(OpenCall {
            load: self.load.clone(),
            arrived,
            decision: Duration::ZERO,
        })
    }

    /// Admits a tap of kind `urgency` that arrived at `arrived` and must be answered by
    /// `answer_by`, or refuses it if its answer is predicted to be late for its kind.
    pub fn admit(&self, urgency: Urgency, arrived: Instant, answer_by: Instant) -> Result<(), Overloaded> {
        let waited = Instant::now().saturating_duration_since(arrived);
        let load = &self.load;
        let recent_wait = ewma(&load.wait_ns, nanos(waited));
        let recent = load.queued_ns.load(Ordering::Relaxed).max(recent_wait);
        let predicted = waited + Duration::from_nanos(recent);
        let budget = answer_by.saturating_duration_since(arrived);
        let share = match urgency {
            Urgency::Exit | Urgency::Retry => 1.0,
            Urgency::CardEntry => self.config.card_share,
            Urgency::CodeEntry => self.config.code_share,
        };
        if predicted > NO_QUEUE && predicted > budget.mul_f64(share) {
            self.metrics.record_shed(urgency);
            let overloaded = Overloaded {
                retry_after: self.pushback(),
            };
            self.note(Some(urgency), overloaded);
            return Err(overloaded);
        }
        Ok(())
    }

    /// The retry hint: about how long the backlog takes to clear, within
    /// [`PUSHBACK`].
    fn pushback(&self) -> Duration {
        let recent = Duration::from_nanos(self.load.queued_ns.load(Ordering::Relaxed));
        (recent * 2).clamp(PUSHBACK.0, PUSHBACK.1)
    }

    fn note(&self, urgency: Option<Urgency>, overloaded: Overloaded) {
        self.log.note(|shed| {
            tracing::warn!(
                shed,
                kind = urgency.map_or("any (at max_in_flight)", Urgency::label),
                retry_after_ms = overloaded.retry_after.as_millis(),
                "overloaded: gate calls refused so that the admitted ones are answered in time"
            );
        });
    }
}

/// The path prefix of gate calls.
const GATE_CALLS: &str = "/ridegate.v1.Gate/";

/// Middleware over the whole router: opens each gate call against `max_in_flight`
/// before its request is read, and keeps it open until its answer (or its `Taps`
/// stream) is done. Other services pass through.
pub(super) async fn cap_gate_calls(State(admission): State<Arc<Admission>>, request: Request, next: Next) -> Response {
    let Some(method) = request.uri().path().strip_prefix(GATE_CALLS) else {
        return next.run(request).await;
    };
    // Unary calls are timed until their answer is sent; a Taps stream is not one call.
    let arrived = (method == "Authorize")
        .then(|| request.extensions().get::<Arrived>().map(|a| a.0))
        .flatten();
    match admission.open_call(arrived) {
        Err(overloaded) => Status::from(overloaded).into_http(),
        Ok(mut open) => {
            let response = next.run(request).await;
            if let Some(decision) = response.extensions().get::<DecisionTime>() {
                open.decided_in(decision.0);
            }
            response.map(|body| axum::body::Body::new(Guarded::new(body, open)))
        }
    }
}

/// A gate call counted as open (and, for a unary call, timed) until dropped.
#[derive(Debug)]
pub struct OpenCall {
    load: Arc<Load>,
    arrived: Option<Instant>,
    decision: Duration,
}

impl OpenCall {
    /// Notes how long the call's decision took, to leave out of its time queued.
    pub fn decided_in(&mut self, decision: Duration) {
        self.decision = decision;
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.load.open_calls.fetch_sub(1, Ordering::AcqRel);
        if let Some(arrived) = self.arrived {
            let queued = arrived.elapsed().saturating_sub(self.decision);
            ewma(&self.load.queued_ns, nanos(queued));
        }
    }
}

/// Folds `sample` into the moving average in `mean` (weight 1/8); returns the new mean.
/// Concurrent updates may lose one another's sample, which an estimate can afford.
fn ewma(mean: &AtomicU64, sample: u64) -> u64 {
    let old = mean.load(Ordering::Relaxed);
    let new = if sample >= old {
        old + (sample - old) / 8
    } else {
        old - (old - sample) / 8
    };
    mean.store(new, Ordering::Relaxed);
    new
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_in_flight: usize) -> Admission {
        Admission::new(
            AdmissionConfig {
                max_in_flight,
                ..AdmissionConfig::default()
            },
            Arc::default(),
        )
    }

    #[test]
    fn calls_beyond_the_cap_are_refused_until_one_closes() {
        let a = admission(2);
        let first = a.open_call(None).unwrap();
        let _second = a.open_call(None).unwrap();
        assert!(a.open_call(None).is_err());
        drop(first);
        assert!(a.open_call(None).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unloaded_server_admits_everything_even_without_budget() {
        let a = admission(10);
        let arrived = Instant::now();
        for urgency in Urgency::ALL {
            a.admit(urgency, arrived, arrived + Duration::from_millis(180)).unwrap();
            a.admit(urgency, arrived, arrived).unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn as_the_wait_grows_codes_go_first_then_cards_and_exits_last() {
        let a = admission(10);
        let budget = Duration::from_millis(100);
        // Waits of 0..150 ms; at each, which kinds are admitted.
        let mut first_shed = std::collections::BTreeMap::new();
        for waited_ms in (0..150).step_by(5) {
            let arrived = Instant::now();
            tokio::time::advance(Duration::from_millis(waited_ms)).await;
            let admitted: Vec<bool> = Urgency::ALL
                .iter()
                .map(|&u| a.admit(u, arrived, arrived + budget).is_ok())
                .collect();
            // Never a less urgent kind admitted while a more urgent one is shed.
            for (i, more_urgent) in admitted.iter().enumerate() {
                for less_urgent in &admitted[i + 1..] {
                    assert!(*more_urgent || !*less_urgent, "at {waited_ms} ms: {admitted:?}");
                }
            }
            for (u, ok) in Urgency::ALL.iter().zip(&admitted) {
                if !ok {
                    first_shed.entry(*u).or_insert(waited_ms);
                }
            }
        }
        assert!(first_shed[&Urgency::CodeEntry] < first_shed[&Urgency::CardEntry]);
        assert!(first_shed[&Urgency::CardEntry] < first_shed[&Urgency::Exit]);
        assert!(first_shed[&Urgency::CardEntry] < first_shed[&Urgency::Retry]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_carries_a_bounded_retry_hint() {
        let a = admission(1);
        let _open = a.open_call(None).unwrap();
        let refused = a.open_call(None).unwrap_err();
        assert!(refused.retry_after >= PUSHBACK.0 && refused.retry_after <= PUSHBACK.1);
        assert!(refused.to_string().contains("grpc-retry-pushback-ms"));
    }
}
