//! The decision: the tap as the decision sees it (no wire types), the facts gathered
//! about it, and [`Rules::decide`], the one pure function from facts to outcome.

mod messages;
mod rules;
mod urgency;

use std::time::Duration;

pub use messages::screen_message;
pub use rules::Rules;
pub use urgency::Urgency;

use serde::{Deserialize, Serialize};

use crate::credential::{Credential, CredentialKind};
use crate::model::{Direction, HealthStatus, Mode, Reason, UnixMillis, Verdict};

/// One tap, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRequest {
    /// The gate's id for this tap; empty when the gate does not retry.
    pub request_id: String,
    /// Where and how.
    pub gate: GateContext,
    /// What was presented.
    pub credential: Credential,
}

/// The gate's context for a tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateContext {
    /// The gate.
    pub gate_id: String,
    /// Its station (may be empty).
    pub station_id: String,
    /// Its line (may be empty).
    pub line_id: String,
    /// Entry or exit.
    pub direction: Direction,
    /// When the rider tapped, by the gate's clock.
    pub tapped_at: UnixMillis,
    /// The budget the gate asked for in the request itself, if any.
    pub budget: Option<Duration>,
}

/// The facts about a tap that come before the rider is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tap<'a> {
    /// The gate's station.
    pub station_id: &'a str,
    /// The gate's line.
    pub line_id: &'a str,
    /// Entry or exit.
    pub direction: Direction,
    /// What the credential's own checks found.
    pub credential: CredentialCheck,
}

/// What a credential's own checks found: for a ride code, verification and its single
/// use; other credentials are checked for shape before they get here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialCheck {
    /// Valid, of this kind.
    Passed(CredentialKind),
    /// Refused for this reason (a `Code*` reason).
    Refused(Reason),
    /// A ride code that verified, whose single use the shared guard could not confirm
    /// in time (this instance had not seen it used): [`Rules::single_use_unknown`]
    /// decides.
    SingleUseUnknown,
}

/// What to do with a verified ride code whose single use cannot be confirmed because
/// the shared replay guard (Redis) is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SingleUseFallback {
    /// Trust this instance's own memory of used codes, and mark the answer degraded (a
    /// code could be used once at each instance while Redis is unreachable).
    Local,
    /// Refuse ride codes: DENY, `CODE_SINGLE_USE_UNKNOWN`.
    Deny,
    /// Send the rider to staff: ASSIST, `CODE_SINGLE_USE_UNKNOWN`.
    Assist,
}

/// What is known about the rider, once the credential itself is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The credential is outside the scheme.
    NotCovered,
    /// The credential is not linked to anyone.
    NotLinked,
    /// Linked; here is what is known of the rider's health status.
    Linked(HealthView),
}

/// What is known of a linked rider's health status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthView {
    /// The source's answer — a status, or `None` for "no record" — confirmed `age_ms`
    /// ago. `degraded` when the answer was past its freshness because the source could
    /// not be asked again in time.
    Known {
        /// The status, or `None` when the platform has no record.
        status: Option<HealthStatus>,
        /// Milliseconds since it was confirmed with the source.
        age_ms: i64,
        /// Served past its freshness.
        degraded: bool,
    },
    /// Nothing usable within the budget and the staleness bound.
    Unavailable,
}

/// The decision with the station's mode applied: what the gate is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The verdict the gate acts on.
    pub verdict: Verdict,
    /// Its reason.
    pub reason: Reason,
    /// In shadow mode, the verdict and reason that enforcement would have given.
    pub shadow: Option<(Verdict, Reason)>,
    /// The status behind it was not fresh, or there was none.
    pub degraded: bool,
    /// Age of the status behind it.
    pub status_age_ms: Option<i64>,
    /// The check mode at the gate's station.
    pub mode: Mode,
}
