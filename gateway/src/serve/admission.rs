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
//!    predicted — the runtime's lag (how long its bytes waited to be read, before the
//!    stamp), what it has waited so far, plus the recent time queued (twice a call's
//!    wait from arrival to being looked at: an answer waits about as long to leave as
//!    its request waited to be read) — and compared with the share of its budget its
//!    kind may use. The decision itself is not predicted: it answers by the deadline
//!    whatever its back ends do, and a slow back end costs no capacity. Nor is a
//!    client's reading of its answer: one that never reads cannot make others late.
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
//!
//!    While calls are queueing, a unary tap is judged twice: first as it arrives, in its
//!    connection's task ([`Admission::at_arrival`]: its kind and budget read from the
//!    first bytes of its body, the prediction the lag plus the time queued that 95 % of
//!    recent calls stayed under), so that its refusal leaves before it waits behind the
//!    others; then
//!    when its tap is decoded ([`Admission::admit`]).
//!
//! A refusal's retry hint adapts to the herd ([`Load::tally`]): a gate held back comes
//! back after the hint, so the hint grows while refusals outnumber a tenth of the calls
//! admitted, and shrinks once they are fewer and the gates it held back have had time
//! to come back, or the queue has cleared — the server spends its time deciding, not
//! refusing the same gates again and again.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ridegate_core::decision::Urgency;
use tokio::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tonic::Status;

use super::deadline::{Deadlines, parse_grpc_timeout};
use super::transport::{Guarded, Peeked};
use crate::config::AdmissionConfig;
use crate::metrics::Metrics;
use crate::telemetry::{Throttled, watch_wake_lag};

/// Predicted queueing below which nothing is shed, whatever the budget: without a queue,
/// deciding is about as quick as refusing, and a gate with no time left still gets its
/// answer rather than a refusal.
const NO_QUEUE: Duration = Duration::from_millis(1);
/// How fast the estimate of time queued fades without fresh samples.
const FADE_HALF_LIFE: Duration = Duration::from_millis(100);
/// The shortest and longest retry hint given with a refusal.
const PUSHBACK: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(2));
/// How often the lag probe asks to be woken ([`Admission::spawn_lag_probe`]).
const LAG_TICK: Duration = Duration::from_millis(2);
/// How often the retry hint is adapted to the refusals of the last period.
const HINT_PERIOD: Duration = Duration::from_millis(100);
/// Recent time queued below which the gates held back could be served: the retry
/// hint comes down.
const QUEUE_CLEARED: Duration = Duration::from_millis(5);
/// Refusals in a period below which the retry hint never grows: a few calls refused for
/// a budget too small to meet are not a herd.
const HERD_REFUSALS: f64 = 20.0;
/// Refusals per admitted call the retry hint aims for: a refusal costs the server less
/// than a decision (its headers read, its answer written), so at this rate refusals take
/// a small part of its work.
const REFUSALS_PER_ADMITTED: f64 = 0.1;

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
    deadlines: Deadlines,
    load: Arc<Load>,
    metrics: Arc<Metrics>,
    log: Throttled,
}

/// What admission knows of the server's load: calls open, recent means (weight 1/8 per
/// sample) of time queued and of the runtime's lag, and the retry hint; times in ns.
#[derive(Debug)]
struct Load {
    open_calls: AtomicUsize,
    /// How long a call will have spent queued in this process by the time its answer
    /// is sent: twice its wait from arrival until its tap was looked at.
    queued_ns: AtomicU64,
    /// The time queued that 95 % of recent calls stayed under (a running estimate).
    queued_p95_ns: AtomicU64,
    /// When `queued_ns` last had a sample, in ns after `epoch`: an estimate without
    /// fresh samples (every call refused at arrival) fades, so admission recovers.
    queued_at_ns: AtomicU64,
    /// How late a woken task runs, on average: the time a call waits to be read once
    /// its bytes have come, before the transport can stamp it.
    lag_ns: AtomicU64,
    /// The retry hint, in ns, adapted every [`HINT_PERIOD`] ([`Load::tally`]).
    hint_ns: AtomicU64,
    /// When the hint last grew, in ns after `epoch`.
    grown_at_ns: AtomicU64,
    /// Calls admitted and refused since the period began at `period_ns` after `epoch`.
    admitted: AtomicU64,
    refused: AtomicU64,
    period_ns: AtomicU64,
    epoch: Instant,
}

impl Load {
    fn new() -> Self {
        Self {
            open_calls: AtomicUsize::new(0),
            queued_ns: AtomicU64::new(0),
            queued_p95_ns: AtomicU64::new(0),
            queued_at_ns: AtomicU64::new(0),
            lag_ns: AtomicU64::new(0),
            hint_ns: AtomicU64::new(nanos(PUSHBACK.0)),
            grown_at_ns: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            period_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// How late a woken task runs, on average.
    fn lag(&self) -> Duration {
        Duration::from_nanos(self.lag_ns.load(Ordering::Relaxed))
    }

    /// Counts one call admitted or refused `at` (the caller's clock reading, so the hot
    /// path reads the clock once), and adapts the retry hint once a period.
    ///
    /// A refused gate comes back after the hint, so refusals per second are about the
    /// gates held back divided by the hint: under a herd many times what the server
    /// can decide, a hint of a few milliseconds has the server spend most of its time
    /// refusing. So the hint grows each period in which refusals (at least
    /// [`HERD_REFUSALS`]) were more than [`REFUSALS_PER_ADMITTED`] of the calls admitted
    /// — by half, or by as many times as they outnumbered that, up to four. It shrinks by
    /// a quarter each period with fewer than [`HERD_REFUSALS`] once every gate it held
    /// back has had time to come back (twice the hint since it last grew: judged sooner,
    /// refusals look rare only because the gates are still away), or at once when a
    /// period had no refusal and ended with the queue cleared ([`QUEUE_CLEARED`]).
    /// Otherwise — a herd held at the aim — it holds.
    fn tally(&self, refused: bool, at: Instant) {
        let counter = if refused { &self.refused } else { &self.admitted };
        counter.fetch_add(1, Ordering::Relaxed);
        let now = nanos(at.saturating_duration_since(self.epoch));
        let began = self.period_ns.load(Ordering::Relaxed);
        if now.saturating_sub(began) < nanos(HINT_PERIOD) {
            return;
        }
        // Read before the period moves on: what faded while no call came stays faded.
        let hint = nanos(self.hint());
        if self
            .period_ns
            .compare_exchange(began, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let admitted = self.admitted.swap(0, Ordering::Relaxed) as f64;
        let refused = self.refused.swap(0, Ordering::Relaxed) as f64;
        let aimed = REFUSALS_PER_ADMITTED * admitted.max(1.0);
        let all_back = now.saturating_sub(self.grown_at_ns.load(Ordering::Relaxed)) >= 2 * hint;
        let next = if refused > aimed && refused >= HERD_REFUSALS {
            self.grown_at_ns.store(now, Ordering::Relaxed);
            // By half, and faster the more refusals outnumber the aim: a herd's first
            // second would otherwise be spent refusing it.
            (hint as f64 * (refused / aimed).clamp(1.5, 4.0)) as u64
        } else if (refused < HERD_REFUSALS && all_back)
            || (refused == 0.0 && self.lag() + self.queued().0 < QUEUE_CLEARED)
        {
            hint - hint / 4
        } else {
            hint
        };
        self.hint_ns
            .store(next.clamp(nanos(PUSHBACK.0), nanos(PUSHBACK.1)), Ordering::Relaxed);
    }

    /// The retry hint as last adapted, shrunk by a quarter for each period since in
    /// which no call came at all: a herd long gone leaves no long hint behind.
    fn hint(&self) -> Duration {
        let since = nanos(self.epoch.elapsed()).saturating_sub(self.period_ns.load(Ordering::Relaxed));
        let silent_periods = (since / nanos(HINT_PERIOD)).saturating_sub(1);
        let hint = Duration::from_nanos(self.hint_ns.load(Ordering::Relaxed));
        hint.mul_f64(0.75f64.powf(silent_periods as f64)).max(PUSHBACK.0)
    }

    fn note_queued(&self, queued: Duration) {
        // What faded while no samples came stays faded.
        let (mean, p95) = self.queued();
        let sample = nanos(queued);
        self.queued_ns.store(nanos(mean), Ordering::Relaxed);
        ewma(&self.queued_ns, sample);
        // A quantile by stochastic steps: up by 95 parts when a sample is above it,
        // down by 5 when below, each part 1/1024 of the estimate (at least 1 µs).
        let p95 = nanos(p95);
        let part = (p95 / 1024).max(1_000);
        let next = if sample > p95 {
            p95 + 95 * part
        } else {
            p95.saturating_sub(5 * part)
        };
        self.queued_p95_ns.store(next, Ordering::Relaxed);
        self.queued_at_ns.store(nanos(self.epoch.elapsed()), Ordering::Relaxed);
    }

    /// Recent time queued, on average, and at the 95th percentile; each halved for
    /// every [`FADE_HALF_LIFE`] without a sample.
    fn queued(&self) -> (Duration, Duration) {
        let since = self
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.queued_at_ns.load(Ordering::Relaxed)));
        // Samples come every few microseconds under load: fade only after a real pause.
        let fade = if since < Duration::from_millis(1) {
            1.0
        } else {
            0.5f64.powf(since.as_secs_f64() / FADE_HALF_LIFE.as_secs_f64())
        };
        let read = |ns: &AtomicU64| Duration::from_nanos(ns.load(Ordering::Relaxed)).mul_f64(fade);
        (read(&self.queued_ns), read(&self.queued_p95_ns))
    }
}

impl Admission {
    /// Admission under `config`, counting refusals into `metrics`.
    pub fn new(config: AdmissionConfig, deadlines: Deadlines, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            deadlines,
            load: Arc::new(Load::new()),
            metrics,
            log: Throttled::default(),
        }
    }

    /// Starts measuring the runtime's lag, counted in every prediction and shown as
    /// `ridegate_runtime_lag_seconds`, for as long as this admission lives: a call's
    /// bytes wait about as long for its connection's task to read them, a wait the
    /// transport's stamp cannot see.
    pub fn spawn_lag_probe(&self) {
        let load = Arc::downgrade(&self.load);
        let metrics = self.metrics.clone();
        tokio::spawn(watch_wake_lag(LAG_TICK, move |late| match load.upgrade() {
            Some(load) => {
                ewma(&load.lag_ns, nanos(late));
                metrics.set_runtime_lag(load.lag());
                ControlFlow::Continue(())
            }
            None => ControlFlow::Break(()),
        }));
    }

    /// Opens a gate call, or refuses it when `max_in_flight` are open already. The
    /// call counts as open until the returned guard is dropped.
    pub fn open_call(&self) -> Result<OpenCall, Overloaded> {
        let open = self.load.open_calls.fetch_add(1, Ordering::AcqRel);
        if open >= self.config.max_in_flight {
            self.load.open_calls.fetch_sub(1, Ordering::AcqRel);
            self.load.tally(true, Instant::now());
            self.metrics.record_shed_at_capacity();
            let overloaded = Overloaded {
                retry_after: self.pushback(),
            };
            self.note(None, overloaded);
            return Err(overloaded);
        }
        Ok(OpenCall(self.load.clone()))
    }

    /// Admits a tap that arrived at `arrived` and must be answered by `answer_by`, or
    /// refuses it if its answer is predicted to be late for its kind. `urgency` is asked
    /// only while calls are queueing.
    pub fn admit(
        &self,
        urgency: impl FnOnce() -> Urgency,
        arrived: Instant,
        answer_by: Instant,
    ) -> Result<(), Overloaded> {
        let now = Instant::now();
        let waited = now.saturating_duration_since(arrived);
        // Its answer waits about as long to leave as it waited to be looked at: twice
        // the wait is its time queued (whether or not its client reads the answer).
        self.load.note_queued(waited * 2);
        let predicted = self.load.lag() + waited + self.load.queued().0;
        let judged = if predicted <= NO_QUEUE {
            Ok(())
        } else {
            self.judge(urgency(), predicted, answer_by.saturating_duration_since(arrived), now)
        };
        if judged.is_ok() {
            self.load.tally(false, now);
        }
        judged
    }

    /// The gatekeeper, run in a call's connection task as it arrives: while calls are
    /// queueing, a unary tap predicted to be late for its kind is refused here, before
    /// it waits behind the others — its refusal leaves sooner, and the gate backs off
    /// sooner. Without a queue, or when the tap cannot be read yet, it passes to
    /// [`Admission::admit`].
    pub fn at_arrival(&self, request: &mut http::Request<Peeked>) -> Option<Response> {
        // Judged by the slow end of recent calls: a call admitted now must make its
        // deadline even if it waits as long as they did.
        let (mean, p95) = self.load.queued();
        let lag = self.load.lag();
        if lag + mean <= NO_QUEUE || request.uri().path() != AUTHORIZE {
            return None;
        }
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.to_str().ok()?));
        let tap = peek_tap(request.body_mut().peek()?)?;
        let now = Instant::now();
        let answer_by = self.deadlines.answer_by(now, timeout, tap.budget);
        let refused = self.judge(tap.urgency, lag + p95, answer_by.saturating_duration_since(now), now);
        refused.err().map(|overloaded| Status::from(overloaded).into_http())
    }

    /// Refuses a tap of kind `urgency` predicted to take `predicted` when its kind may
    /// use its share of `budget`; `now` is when it is judged.
    fn judge(&self, urgency: Urgency, predicted: Duration, budget: Duration, now: Instant) -> Result<(), Overloaded> {
        let share = match urgency {
            Urgency::Exit | Urgency::Retry => 1.0,
            Urgency::CardEntry => self.config.card_share,
            Urgency::CodeEntry => self.config.code_share,
        };
        if predicted > NO_QUEUE && predicted > budget.mul_f64(share) {
            self.load.tally(true, now);
            self.metrics.record_shed(urgency);
            let overloaded = Overloaded {
                retry_after: self.pushback(),
            };
            self.note(Some(urgency), overloaded);
            return Err(overloaded);
        }
        Ok(())
    }

    /// The retry hint: the hint adapted to recent refusals ([`Load::tally`]), and at
    /// least twice the recent time queued (about how long the backlog takes to clear),
    /// within [`PUSHBACK`].
    fn pushback(&self) -> Duration {
        let pushback = self
            .load
            .hint()
            .max(self.load.queued().0 * 2)
            .clamp(PUSHBACK.0, PUSHBACK.1);
        self.metrics.set_retry_hint(pushback);
        pushback
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
/// The path of unary taps.
const AUTHORIZE: &str = "/ridegate.v1.Gate/Authorize";

/// What admission reads of a tap at its arrival: its kind and its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TapPeek {
    urgency: Urgency,
    budget: Option<Duration>,
}

/// Reads the kind and budget of the tap in `frame` (one gRPC message, the start of a
/// unary call's body) without decoding it whole; `None` if it is not all there or not
/// well-formed (the service then decodes it and says what is wrong). A retry is not
/// told apart here: that needs the request id's pseudonym.
fn peek_tap(frame: &[u8]) -> Option<TapPeek> {
    use bytes::Buf as _;
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let (&0, rest) = frame.split_first()? else {
        return None;
    };
    let len = usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
    let mut message = rest.get(4..4 + len)?;
    let (mut exit, mut ride_code, mut budget) = (false, false, None);
    while message.has_remaining() {
        let (tag, wire_type) = decode_key(&mut message).ok()?;
        match (tag, wire_type) {
            // GateContext: direction (4) and budget_ms (6).
            (2, WireType::LengthDelimited) => {
                let len = usize::try_from(decode_varint(&mut message).ok()?).ok()?;
                let mut gate = message.get(..len)?;
                message.advance(len);
                while gate.has_remaining() {
                    let (tag, wire_type) = decode_key(&mut gate).ok()?;
                    match (tag, wire_type) {
                        (4, WireType::Varint) => exit = decode_varint(&mut gate).ok()? == 2,
                        (6, WireType::Varint) => {
                            let ms = decode_varint(&mut gate).ok()?;
                            budget = (ms > 0).then(|| Duration::from_millis(ms));
                        }
                        _ => skip_field(wire_type, tag, &mut gate, DecodeContext::default()).ok()?,
                    }
                }
            }
            _ => {
                ride_code |= tag == 10;
                skip_field(wire_type, tag, &mut message, DecodeContext::default()).ok()?;
            }
        }
    }
    let urgency = match (exit, ride_code) {
        (true, _) => Urgency::Exit,
        (false, true) => Urgency::CodeEntry,
        (false, false) => Urgency::CardEntry,
    };
    Some(TapPeek { urgency, budget })
}

/// Middleware over the whole router: opens each gate call against `max_in_flight`
/// before its request is read, and keeps it open until its answer (or its `Taps`
/// stream) is done. Other services pass through.
pub(super) async fn cap_gate_calls(State(admission): State<Arc<Admission>>, request: Request, next: Next) -> Response {
    let Some(method) = request.uri().path().strip_prefix(GATE_CALLS) else {
        return next.run(request).await;
    };
    match admission.open_call() {
        Err(overloaded) => Status::from(overloaded).into_http(),
        // A unary call is done with its answer: what is left is the transport's, and a
        // client that never reads it must not hold a slot.
        Ok(_open) if method == "Authorize" => next.run(request).await,
        Ok(open) => next
            .run(request)
            .await
            .map(|body| axum::body::Body::new(Guarded::new(body, open))),
    }
}

/// A gate call counted as open until dropped.
#[derive(Debug)]
pub struct OpenCall(Arc<Load>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.open_calls.fetch_sub(1, Ordering::AcqRel);
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
        let deadlines = Deadlines {
            default_budget: Duration::from_millis(200),
            margin: Duration::from_millis(20),
        };
        Admission::new(
            AdmissionConfig {
                max_in_flight,
                ..AdmissionConfig::default()
            },
            deadlines,
            Arc::default(),
        )
    }

    fn framed(tap: &ridegate_proto::pb::AuthorizeRequest) -> Vec<u8> {
        let message = prost::Message::encode_to_vec(tap);
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&message);
        frame
    }

    #[test]
    fn a_tap_s_kind_and_budget_are_read_without_decoding_it() {
        use ridegate_proto::pb;
        let tap = |direction: pb::Direction, credential, budget_ms| pb::AuthorizeRequest {
            request_id: "r-1".into(),
            gate: Some(pb::GateContext {
                gate_id: "G1".into(),
                station_id: "S1".into(),
                line_id: "L1".into(),
                direction: direction.into(),
                tapped_at_unix_ms: 1_700_000_000_000,
                budget_ms,
            }),
            credential: Some(credential),
        };
        let card = pb::authorize_request::Credential::Card(pb::Card {
            medium: pb::CardMedium::Physical.into(),
            number: "1000000000000001".into(),
        });
        let code = pb::authorize_request::Credential::RideCode(pb::RideCode {
            qr_text: "x.y.z".into(),
        });
        for (request, urgency, budget) in [
            (tap(pb::Direction::Exit, code.clone(), 0), Urgency::Exit, None),
            (tap(pb::Direction::Entry, code, 150), Urgency::CodeEntry, Some(150)),
            (tap(pb::Direction::Entry, card, 0), Urgency::CardEntry, None),
        ] {
            let peek = peek_tap(&framed(&request)).unwrap();
            assert_eq!(peek.urgency, urgency);
            assert_eq!(peek.budget, budget.map(Duration::from_millis));
        }
        // Cut short, compressed, or not protobuf: left to the service to judge.
        let whole = framed(&tap(
            pb::Direction::Exit,
            pb::authorize_request::Credential::Card(pb::Card::default()),
            0,
        ));
        assert_eq!(peek_tap(&whole[..whole.len() - 1]), None);
        let mut compressed = whole.clone();
        compressed[0] = 1;
        assert_eq!(peek_tap(&compressed), None);
        assert_eq!(peek_tap(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]), None);
    }

    #[tokio::test]
    async fn operators_see_how_late_the_runtime_wakes_tasks() {
        let a = admission(10);
        a.spawn_lag_probe();
        tokio::time::sleep(LAG_TICK * 5).await;
        // The one worker thread is kept busy for 200 ms: the probe's next wake is late.
        std::thread::sleep(Duration::from_millis(200));
        tokio::time::sleep(LAG_TICK * 3).await;
        let shown = a.metrics.runtime_lag();
        assert!(shown >= Duration::from_millis(5), "{shown:?}");
        assert_eq!(shown, a.load.lag(), "the gauge shows what admission counts");
    }

    #[test]
    fn calls_beyond_the_cap_are_refused_until_one_closes() {
        let a = admission(2);
        let first = a.open_call().unwrap();
        let _second = a.open_call().unwrap();
        assert!(a.open_call().is_err());
        drop(first);
        assert!(a.open_call().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unloaded_server_admits_everything_even_without_budget() {
        let a = admission(10);
        let arrived = Instant::now();
        for urgency in Urgency::ALL {
            a.admit(|| urgency, arrived, arrived + Duration::from_millis(180))
                .unwrap();
            a.admit(|| urgency, arrived, arrived).unwrap();
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
                .map(|&u| a.admit(|| u, arrived, arrived + budget).is_ok())
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
    async fn the_estimate_fades_without_fresh_samples() {
        let a = admission(10);
        for _ in 0..64 {
            a.load.note_queued(Duration::from_millis(300));
        }
        assert!(a.load.queued().0 > Duration::from_millis(250));
        tokio::time::advance(FADE_HALF_LIFE * 10).await;
        assert!(a.load.queued().0 < Duration::from_millis(1), "{:?}", a.load.queued());
        // A fresh sample starts from the faded estimate, not from before the pause.
        a.load.note_queued(Duration::from_micros(100));
        let (mean, p95) = a.load.queued();
        assert!(
            mean < Duration::from_millis(1) && p95 < Duration::from_millis(1),
            "{mean:?} {p95:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_hint_grows_while_refusals_outnumber_admissions_and_shrinks_after() {
        let a = admission(10);
        let period = |refused: u32, admitted: u32, queued_ms: u64| {
            a.load.note_queued(Duration::from_millis(queued_ms));
            for _ in 0..refused {
                a.load.tally(true, Instant::now());
            }
            for _ in 0..admitted {
                a.load.tally(false, Instant::now());
            }
        };
        let mut hints = vec![a.load.hint()];
        for _ in 0..20 {
            tokio::time::advance(HINT_PERIOD).await;
            period(100, 100, 150);
            hints.push(a.load.hint());
        }
        assert!(hints.windows(2).all(|w| w[1] >= w[0]), "{hints:?}");
        assert_eq!(a.load.hint(), PUSHBACK.1);
        assert!(a.pushback() <= PUSHBACK.1);
        // A herd held at the aim while calls still queue: the hint holds.
        for _ in 0..60 {
            tokio::time::advance(HINT_PERIOD).await;
            period(25, 1000, 150);
        }
        assert_eq!(a.load.hint(), PUSHBACK.1);
        // A few refusals: once the gates held back have had time to come back (twice
        // the hint since it last grew), the hint comes down.
        tokio::time::advance(HINT_PERIOD).await;
        period(100, 100, 150);
        for _ in 0..35 {
            tokio::time::advance(HINT_PERIOD).await;
            period(5, 1000, 150);
        }
        assert_eq!(a.load.hint(), PUSHBACK.1);
        tokio::time::advance(HINT_PERIOD * 5).await;
        for _ in 0..10 {
            tokio::time::advance(HINT_PERIOD).await;
            period(5, 1000, 150);
        }
        assert!(a.load.hint() < PUSHBACK.1 / 2, "{:?}", a.load.hint());
        // Back to a herd, then the queue clears: the hint comes down to its floor
        // within seconds.
        for _ in 0..10 {
            tokio::time::advance(HINT_PERIOD).await;
            period(100, 100, 150);
        }
        assert_eq!(a.load.hint(), PUSHBACK.1);
        // The queue clears: the hint comes down to its floor within seconds.
        for _ in 0..30 {
            tokio::time::advance(HINT_PERIOD).await;
            for _ in 0..64 {
                a.load.note_queued(Duration::ZERO);
            }
            period(0, 100, 0);
        }
        assert_eq!(a.load.hint(), PUSHBACK.0);
        // And a server that no call reaches forgets a herd too.
        for _ in 0..20 {
            tokio::time::advance(HINT_PERIOD).await;
            period(100, 1, 150);
        }
        assert_eq!(a.load.hint(), PUSHBACK.1);
        tokio::time::advance(HINT_PERIOD * 30).await;
        assert_eq!(a.load.hint(), PUSHBACK.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_few_refusals_are_not_a_herd() {
        let a = admission(10);
        a.load.note_queued(Duration::from_millis(150));
        for _ in 0..20 {
            tokio::time::advance(HINT_PERIOD).await;
            for _ in 0..10 {
                a.load.tally(true, Instant::now());
            }
        }
        assert_eq!(a.load.hint(), PUSHBACK.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_carries_a_bounded_retry_hint() {
        let a = admission(1);
        let _open = a.open_call().unwrap();
        let refused = a.open_call().unwrap_err();
        assert!(refused.retry_after >= PUSHBACK.0 && refused.retry_after <= PUSHBACK.1);
        assert!(refused.to_string().contains("grpc-retry-pushback-ms"));
    }
}
