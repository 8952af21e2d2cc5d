//! How urgent, and how cheap, a tap is: what an overloaded server sheds last.

use super::GateRequest;
use crate::credential::Credential;
use crate::model::Direction;

/// What kind of tap a call carries, most urgent and cheapest first: under overload,
/// the less urgent kinds are refused first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Urgency {
    /// A rider leaving (never refused on health grounds, holds up the platform).
    Exit,
    /// A request already decided here: its kept answer is given again.
    Retry,
    /// An entry with a card, phone card or ticket.
    CardEntry,
    /// An entry with a ride code: a signature check.
    CodeEntry,
}

impl Urgency {
    /// Every kind, in [`Urgency::index`] order.
    pub const ALL: [Self; 4] = [Self::Exit, Self::Retry, Self::CardEntry, Self::CodeEntry];

    /// The kind of `request`; `is_retry` says whether its request id was answered here.
    pub fn of(request: &GateRequest, is_retry: impl FnOnce() -> bool) -> Self {
        match (request.gate.direction, &request.credential) {
            (Direction::Exit, _) => Self::Exit,
            _ if is_retry() => Self::Retry,
            (Direction::Entry, Credential::RideCode(_)) => Self::CodeEntry,
            (Direction::Entry, _) => Self::CardEntry,
        }
    }

    /// Its position in [`Urgency::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Exit => "exit",
            Self::Retry => "retry",
            Self::CardEntry => "card_entry",
            Self::CodeEntry => "code_entry",
        }
    }
}
