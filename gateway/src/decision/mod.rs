//! The decision: the request as the decision code sees it (no wire types), and the
//! pure rules that turn what is known about a tap into a verdict and a reason.

mod messages;
mod policy;

use std::time::Duration;

use ridegate_adapters::credential::Credential;
use ridegate_adapters::model::{Direction, UnixMillis};

pub use messages::screen_message;
pub use policy::{HealthView, Judgement, Outcome, Policy, Subject};

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
