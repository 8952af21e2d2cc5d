//! The decision path: from a validated tap to an answer, recorded.
//!
//! 1. The credential's own checks: ride-code signature, times, single use.
//! 2. If the rules need it ([`Rules::needs_rider`]: not for exits, stations with the
//!    check off, refused credentials or credentials outside the scheme), the credential
//!    resolves to an identity and its health status comes from the store within the
//!    deadline.
//! 3. The pure decision ([`Rules::decide`]) turns those facts into the outcome.
//! 4. The answer is recorded for retries — and if an answer for the same gate and
//!    request id was recorded first, that one is given instead (a retry) — then
//!    counted, and audited off the hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use ridegate_adapters::audit::{AuditEvent, AuditSink};
use ridegate_adapters::credential::ride_code::{RideCodeVerifier, VerifiedCode};
use ridegate_adapters::idempotency::{Kept, RequestIds};
use ridegate_adapters::ids::{
    CodeKey, CredentialId, IdentityId, Pseudonymizer, RequestKey, TapFingerprint, random_bytes,
};
use ridegate_adapters::replay::Claim;
use ridegate_adapters::shared::SharedTier;
use ridegate_core::clock::{Clock, millis};
use ridegate_core::credential::{Credential, CredentialKind, LinkKey};
use ridegate_core::model::{Answer, DecisionId, Mode, Reason, UnixMillis, Verdict};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::stores::{Claimed, IdempotencyBackend, LinkBackend, ReplayBackend, StatusReader};
use crate::telemetry::Throttled;
use ridegate_core::decision::{CredentialCheck, GateContext, GateRequest, HealthView, Outcome, Rules, Subject, Tap};

/// An answer and whether it was a stored one given again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// The answer.
    pub answer: Answer,
    /// True when it was stored for an earlier request with the same id.
    pub retry: bool,
}

/// A decision a gate library made while ridegate was unreachable, as it uploaded it.
#[derive(Debug, Clone)]
pub struct OfflineRecord {
    /// The gate; `tapped_at` is when it decided, by its clock.
    pub gate: GateContext,
    /// What was shown.
    pub credential_kind: CredentialKind,
    /// The ride code's issuer, if a code verified.
    pub issuer: Option<Arc<str>>,
    /// The ride code's single-use key and until when it is valid, if one was accepted.
    pub code: Option<(CodeKey, UnixMillis)>,
    /// What the gate did.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The check mode the gate applied.
    pub mode: Mode,
    /// The gate's answer was degraded.
    pub degraded: bool,
    /// Age of the gate's state when it decided (-1: it had none).
    pub state_age_ms: i64,
    /// The gate's id for the decision, so an upload sent again is recorded once.
    pub decision_id: [u8; 16],
}

/// What recording an offline decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineRecorded {
    /// Recorded; for a ride code, whether this was its first use (false: it had been
    /// used elsewhere too).
    Recorded {
        /// `None` without a code.
        code_first_use: Option<bool>,
    },
    /// The same gate uploaded this decision before (within the retry window).
    Duplicate,
}

/// Hands out decision ids: a random 16-bit process prefix and a 48-bit counter.
#[derive(Debug)]
struct DecisionIds {
    prefix: u64,
    next: AtomicU64,
}

impl DecisionIds {
    fn new() -> Self {
        let prefix = u64::from(u16::from_le_bytes(random_bytes::<2>())) << 48;
        Self {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> DecisionId {
        DecisionId(self.prefix | (self.next.fetch_add(1, Ordering::Relaxed) & ((1 << 48) - 1)))
    }
}

/// What the decision learned along the way, for the audit record.
#[derive(Debug, Default)]
struct Trace {
    issuer: Option<Arc<str>>,
    /// Until when the ride code used stays acceptable.
    code_valid_until: Option<UnixMillis>,
    credential: Option<CredentialId>,
    identity: Option<IdentityId>,
}

/// The parts the decision needs, built once at start-up.
pub struct Authorizer {
    clock: Clock,
    pseudonymizer: Pseudonymizer,
    /// Swapped whole when the issuers' key sets are reloaded.
    verifier: ArcSwap<RideCodeVerifier>,
    replay: ReplayBackend,
    idempotency: IdempotencyBackend,
    /// The first tap this instance saw under each request id: to notice a request id
    /// reused for another tap, to tell a retry (`is_retry`), and to record an uploaded
    /// offline decision once.
    request_ids: RequestIds,
    links: LinkBackend,
    health: StatusReader,
    shared: Option<Arc<SharedTier>>,
    rules: Rules,
    retry_window: Duration,
    audit: Arc<dyn AuditSink>,
    metrics: Arc<Metrics>,
    ids: DecisionIds,
    degraded_log: Throttled,
    conflict_log: Throttled,
}

/// Everything [`Authorizer::new`] takes.
pub struct Parts {
    /// See [`Clock`].
    pub clock: Clock,
    /// Keyed hashing.
    pub pseudonymizer: Pseudonymizer,
    /// Ride-code verification.
    pub verifier: RideCodeVerifier,
    /// The link store.
    pub links: LinkBackend,
    /// Where statuses are read.
    pub health: StatusReader,
    /// The single-use guard.
    pub replay: ReplayBackend,
    /// Idempotency records.
    pub idempotency: IdempotencyBackend,
    /// The shared tier, when configured: answers are degraded while it is down.
    pub shared: Option<Arc<SharedTier>>,
    /// The rules.
    pub rules: Rules,
    /// How long retries get the stored answer.
    pub retry_window: Duration,
    /// Where decisions are recorded.
    pub audit: Arc<dyn AuditSink>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Authorizer {
    /// Assembles the decision path.
    pub fn new(parts: Parts) -> Self {
        Self {
            clock: parts.clock,
            pseudonymizer: parts.pseudonymizer,
            verifier: ArcSwap::from_pointee(parts.verifier),
            replay: parts.replay,
            idempotency: parts.idempotency,
            request_ids: RequestIds::default(),
            links: parts.links,
            health: parts.health,
            shared: parts.shared,
            rules: parts.rules,
            retry_window: parts.retry_window,
            audit: parts.audit,
            metrics: parts.metrics,
            ids: DecisionIds::new(),
            degraded_log: Throttled::default(),
            conflict_log: Throttled::default(),
        }
    }

    /// Decides one tap, answering by `deadline`. `received` is when the request
    /// arrived, for the recorded latency.
    pub async fn authorize(&self, request: GateRequest, received: Instant, deadline: Instant) -> Decided {
        let now = self.clock.now();
        let request_key = (!request.request_id.is_empty())
            .then(|| self.pseudonymizer.request(&request.gate.gate_id, &request.request_id));
        let decision_id = self.ids.next();
        let mut trace = Trace::default();
        let (outcome, tap) = self
            .decide(&request, request_key, decision_id, now, deadline, &mut trace)
            .await;
        // While the shared tier is down, links and used codes are this instance's view
        // only: say so.
        let shared_down = self.shared.as_ref().is_some_and(|tier| !tier.is_trusted());
        let answer = Answer {
            verdict: outcome.verdict,
            reason: outcome.reason,
            decision_id,
            degraded: outcome.degraded || shared_down,
            status_age_ms: outcome.status_age_ms,
            mode: outcome.mode,
            shadow: outcome.shadow,
        };
        // A retry — the same gate, request id and tap — gets the answer recorded for the
        // first attempt, wherever that was decided; the fresh decision is dropped. The
        // record is kept by request and tap fingerprint (the owner), so another tap
        // reusing the request id (a gate that restarted its counter) is decided afresh
        // and kept on its own: it never gets someone else's answer. Such reuse is
        // counted and logged as this instance sees it.
        if let Some(key) = request_key {
            // A record outlives the code it answered: until the code expires, a late
            // retry of its tap still gets the kept answer, never a second acceptance.
            let until = now
                .plus_ms(millis(self.retry_window))
                .max(trace.code_valid_until.unwrap_or_default());
            if self
                .request_ids
                .note(key, tap, until, now)
                .is_some_and(|seen| seen != tap)
            {
                self.metrics.record_request_id_conflict();
                self.conflict_log.note(|taps| {
                    tracing::warn!(
                        taps,
                        gate_id = %request.gate.gate_id,
                        "request id reused for a different tap: decided afresh (has the gate restarted its counter?)"
                    );
                });
            }
            let owner = self.pseudonymizer.owner(key, tap);
            let kept = Kept { answer, tap };
            if let Some(first) = self.idempotency.record_by(owner, kept, until, now, deadline).await
                && first.tap == tap
            {
                self.record(request, first.answer, Trace::default(), true, received, now);
                return Decided {
                    answer: first.answer,
                    retry: true,
                };
            }
        }
        self.record(request, answer, trace, false, received, now);
        Decided { answer, retry: false }
    }

    /// Records a decision a gate library made offline: into the audit trail (marked
    /// offline), and its ride code, if any, into the single-use guard, so the code is
    /// refused from now on. A decision the same gate uploaded before (within the retry
    /// window) is not recorded twice.
    pub async fn record_offline(&self, record: OfflineRecord, deadline: Instant) -> OfflineRecorded {
        let now = self.clock.now();
        let key = self
            .pseudonymizer
            .request(&record.gate.gate_id, &RequestKey(record.decision_id).to_string());
        let until = now.plus_ms(millis(self.retry_window));
        // An uploaded decision has no tap of its own here: any fingerprint marks it seen.
        if self.request_ids.note(key, TapFingerprint([0; 8]), until, now).is_some() {
            return OfflineRecorded::Duplicate;
        }
        let code_first_use = match record.code {
            Some((code, until)) => {
                // The gate's word for how long the code lives, held to what any code can:
                // a record kept far into the future would pin the guard's memory.
                let until = until.min(self.verifier.load().latest_valid_until(now));
                let claimed = self.replay.claim_by(code, key, until, now, deadline).await;
                let first = claimed.claim != Claim::Replayed;
                if !first {
                    self.metrics.record_offline_code_reused();
                }
                Some(first)
            }
            None => None,
        };
        let GateContext {
            gate_id,
            station_id,
            line_id,
            direction,
            tapped_at,
            ..
        } = record.gate;
        self.audit.record(AuditEvent {
            at: tapped_at,
            gate_id,
            station_id,
            line_id,
            direction,
            tapped_at,
            credential_kind: record.credential_kind,
            issuer: record.issuer,
            credential: None,
            identity: None,
            answer: Answer {
                verdict: record.verdict,
                reason: record.reason,
                decision_id: self.ids.next(),
                degraded: record.degraded,
                status_age_ms: (record.state_age_ms >= 0).then_some(record.state_age_ms),
                mode: record.mode,
                shadow: None,
            },
            retry: false,
            offline: true,
            latency_us: 0,
        });
        OfflineRecorded::Recorded { code_first_use }
    }

    /// Whether this instance has answered `request`'s request id before: a retry, which
    /// costs a lookup rather than a decision.
    pub fn is_retry(&self, request: &GateRequest) -> bool {
        !request.request_id.is_empty()
            && self.request_ids.holds(
                self.pseudonymizer.request(&request.gate.gate_id, &request.request_id),
                self.clock.now(),
            )
    }

    /// Verifies ride codes with `verifier` from the next tap on (the issuers' key sets
    /// were reloaded); taps being decided finish with the one they started with.
    pub fn replace_verifier(&self, verifier: RideCodeVerifier) {
        self.verifier.store(Arc::new(verifier));
    }

    /// Counts a request rejected as malformed before it reached the decision.
    pub fn record_invalid(&self) {
        self.metrics.record_invalid();
    }

    /// Counts a tap refused for its gate.
    pub fn record_gate_refused(&self) {
        self.metrics.record_gate_refused();
    }

    /// The tap path's counters, for the transport's own.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Gathers the facts about a tap — the credential's own checks, then (only if the
    /// rules need them) the rider's link and health status — and hands them to the
    /// pure decision. Returns the outcome and the tap's fingerprint.
    ///
    /// A request and what it asked own the codes it uses, so a retry of the same tap is
    /// never a replay but another tap under the same request id is. Without a request
    /// id, the decision's own id owns them: a second use is always a replay.
    async fn decide(
        &self,
        request: &GateRequest,
        request_key: Option<RequestKey>,
        decision_id: DecisionId,
        now: UnixMillis,
        deadline: Instant,
        trace: &mut Trace,
    ) -> (Outcome, TapFingerprint) {
        let gate = &request.gate;
        let fingerprint = || {
            self.pseudonymizer
                .tap(&request.credential, gate.direction, &gate.station_id, &gate.line_id)
        };
        let mut code_fingerprint = None;
        let code: VerifiedCode;
        let (check, link_key) = match &request.credential {
            Credential::RideCode(text) => match self.verifier.load().verify(text, now) {
                Err(e) => (CredentialCheck::Refused(e.reason()), None),
                Ok(verified) => {
                    code = verified;
                    trace.issuer = Some(code.issuer.clone());
                    trace.code_valid_until = Some(code.valid_until);
                    let key = code.code_key(self.pseudonymizer.credentials());
                    let code_tap = self
                        .pseudonymizer
                        .code_tap(key, gate.direction, &gate.station_id, &gate.line_id);
                    code_fingerprint = Some(code_tap);
                    let owner =
                        request_key.map_or_else(|| owner_of(decision_id), |k| self.pseudonymizer.owner(k, code_tap));
                    let account = LinkKey::RideAccount {
                        issuer: &code.issuer,
                        account: &code.account,
                    };
                    match self.replay.claim_by(key, owner, code.valid_until, now, deadline).await {
                        // Used before, by the shared guard's or this instance's own record.
                        Claimed {
                            claim: Claim::Replayed, ..
                        } => (CredentialCheck::Refused(Reason::CodeReplayed), None),
                        Claimed { confirmed: false, .. } => (CredentialCheck::SingleUseUnknown, Some(account)),
                        Claimed { confirmed: true, .. } => {
                            (CredentialCheck::Passed(CredentialKind::RideCode), Some(account))
                        }
                    }
                }
            },
            other => (CredentialCheck::Passed(other.kind()), other.link_key()),
        };
        let facts = Tap {
            station_id: &gate.station_id,
            line_id: &gate.line_id,
            direction: gate.direction,
            credential: check,
        };
        let rider = match link_key {
            Some(key) if self.rules.needs_rider(&facts) => Some(self.rider(key, now, deadline, trace).await),
            _ => None,
        };
        let outcome = self.rules.decide(&facts, rider, now);
        (outcome, code_fingerprint.unwrap_or_else(fingerprint))
    }

    /// The rider behind a credential: its link, then its health status, within the
    /// deadline.
    async fn rider(&self, key: LinkKey<'_>, now: UnixMillis, deadline: Instant, trace: &mut Trace) -> Subject {
        let credential = self.pseudonymizer.credential(&key);
        trace.credential = Some(credential);
        match self.links.resolve_by(credential, now, deadline).await {
            Ok(None) => Subject::NotLinked,
            Ok(Some(identity)) => {
                trace.identity = Some(identity);
                Subject::Linked(self.health.lookup(identity, now, deadline).await)
            }
            Err(_) => Subject::Linked(HealthView::Unavailable),
        }
    }

    fn record(
        &self,
        request: GateRequest,
        answer: Answer,
        trace: Trace,
        retry: bool,
        received: Instant,
        now: UnixMillis,
    ) {
        let latency = received.elapsed();
        self.metrics.record(&answer, retry, latency);
        if answer.degraded {
            self.degraded_log.note(|answers| {
                tracing::warn!(
                    answers,
                    reason = answer.reason.label(),
                    station_id = %request.gate.station_id,
                    "degraded answers: the health platform or the shared tier did not answer in time"
                );
            });
        }
        let GateRequest { gate, credential, .. } = request;
        self.audit.record(AuditEvent {
            at: now,
            gate_id: gate.gate_id,
            station_id: gate.station_id,
            line_id: gate.line_id,
            direction: gate.direction,
            tapped_at: gate.tapped_at,
            credential_kind: credential.kind(),
            issuer: trace.issuer,
            credential: trace.credential,
            identity: trace.identity,
            answer,
            retry,
            offline: false,
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        });
    }
}

/// A request key that no gate's request can have: the decision id's bytes under a
/// marker that keyed hashes (uniform over all 2^128 values) hit with probability 2^-64.
fn owner_of(id: DecisionId) -> RequestKey {
    let mut key = [0xffu8; 16];
    key[..8].copy_from_slice(&id.0.to_le_bytes());
    RequestKey(key)
}
