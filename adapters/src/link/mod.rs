//! The link store: which identity a credential belongs to, who linked it, on what
//! consent, and until when. Links are made by callers that hold the rider's consent
//! (ride-code apps, the card upgrade service, ticket windows, back-end programmes); the
//! gate only resolves them.
//!
//! Two rules hold in every store: a credential belongs to exactly one identity, and an
//! identity has at most one physical card and one NFC card — linking another either
//! replaces the previous one or is refused, as [`SecondCard`] says.

mod import;
mod memory;
mod redis;
mod target;

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use import::{FILE_CALLER, LinkLine, read_links};
pub use memory::MemoryLinks;
pub use redis::RedisLinks;
pub use target::{LinkTarget, TargetError};

use crate::caller::CallerKind;
use crate::ids::{CredentialId, IdentityId};
use crate::shared::SharedError;
use ridegate_core::model::UnixMillis;

/// The kind of credential a link is for; limits and scopes depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialClass {
    /// A ride-code account at an issuer.
    RideAccount,
    /// A physical Yikatong card (one per identity).
    PhysicalCard,
    /// A phone NFC or NFC-SIM card (one per identity).
    NfcCard,
    /// A single-journey ticket, bound for its day of sale.
    SingleJourneyTicket,
    /// A commemorative ticket.
    CommemorativeTicket,
}

impl CredentialClass {
    /// Whether an identity may hold only one credential of this class.
    pub fn one_per_identity(self) -> bool {
        matches!(self, Self::PhysicalCard | Self::NfcCard)
    }
}

/// What a link rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consent {
    /// The one-tap pop-up in a ride-code app.
    AppPopup,
    /// Linked when the rider registered with the app.
    AppRegistration,
    /// The rider used the upgrade service with the full card number.
    UpgradeService,
    /// The buyer's ID was checked when the ticket was sold.
    TicketPurchase,
    /// Staff helped the rider in person.
    StaffAssisted,
    /// A back-end programme (bulk links).
    BulkProgramme,
}

/// One link, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    /// Whose credential it is.
    pub identity: IdentityId,
    /// What kind of credential.
    pub class: CredentialClass,
    /// For ride accounts: the issuer.
    pub issuer: Option<Arc<str>>,
    /// The credential's last four characters, for masked display.
    pub tail: [u8; 4],
    /// When it was linked.
    pub linked_at: UnixMillis,
    /// Who linked it.
    pub linked_by: CallerKind,
    /// The caller's id.
    pub caller_id: Arc<str>,
    /// The staff member who helped, if one did.
    pub staff_operator_id: Option<Arc<str>>,
    /// What it rests on.
    pub consent: Consent,
    /// When it stops resolving (single-journey tickets); `None` for never.
    pub valid_until: Option<UnixMillis>,
}

impl LinkRecord {
    /// The credential masked for display: `****` and the last four characters.
    pub fn masked(&self) -> String {
        masked_tail(&self.tail)
    }

    /// Whether the link resolves at `now`.
    pub fn is_live(&self, now: UnixMillis) -> bool {
        self.valid_until.is_none_or(|until| now < until)
    }
}

/// `****` and the last four characters.
pub fn masked_tail(tail: &[u8; 4]) -> String {
    let tail: String = tail.iter().filter(|b| **b != 0).map(|b| char::from(*b)).collect();
    format!("****{tail}")
}

/// What linking another physical or NFC card does when the identity already has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondCard {
    /// Unlink the previous card and link the new one (a replaced or new phone card).
    #[default]
    Replace,
    /// Refuse until the previous card is unlinked.
    Refuse,
}

/// What a link did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linked {
    /// A new link.
    New,
    /// Already linked to this identity; the record was refreshed.
    Refreshed,
    /// Linked, and the identity's previous card of the class was unlinked.
    Replaced {
        /// The credential that was unlinked.
        previous: CredentialId,
        /// Its record.
        record: LinkRecord,
    },
}

/// Why a link could not be made, or the store could not answer. The refusals carry
/// messages meant for the caller; a store failure keeps its cause for logs only.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The credential is linked to another identity.
    #[error("this credential is linked to another rider; it must be unlinked first")]
    LinkedToAnother,
    /// The identity already has a card of this class and the policy refuses a second.
    #[error("this rider already has a {class} linked ({masked}); unlink it first")]
    SecondCard {
        /// The class ("physical card", "NFC card").
        class: &'static str,
        /// The linked card, masked.
        masked: String,
    },
    /// The store could not be reached, failed, or did not answer in time.
    #[error("link store unavailable")]
    Unavailable(#[from] SharedError),
    /// The durable embedded store could not keep the change.
    #[error("link store unavailable")]
    Storage(#[source] crate::storage::StorageError),
    /// The store holds or returned something this version cannot read.
    #[error("link store entry unreadable: {0}")]
    Unreadable(&'static str),
}

/// Stores links and resolves credentials to identities.
pub trait LinkStore: Send + Sync + 'static {
    /// The identity `credential` is linked to at `now`, if any (the gate's question).
    fn resolve(
        &self,
        credential: CredentialId,
        now: UnixMillis,
    ) -> impl Future<Output = Result<Option<IdentityId>, LinkError>> + Send;

    /// Links `credential` as `record` says, enforcing the store's rules.
    fn link(
        &self,
        credential: CredentialId,
        record: LinkRecord,
    ) -> impl Future<Output = Result<Linked, LinkError>> + Send;

    /// Removes `credential`'s link; returns the record it had.
    fn unlink(&self, credential: CredentialId) -> impl Future<Output = Result<Option<LinkRecord>, LinkError>> + Send;

    /// `credential`'s link record, if it is live at `now`.
    fn get(
        &self,
        credential: CredentialId,
        now: UnixMillis,
    ) -> impl Future<Output = Result<Option<LinkRecord>, LinkError>> + Send;

    /// Every live link of `identity`.
    fn links_of(
        &self,
        identity: IdentityId,
        now: UnixMillis,
    ) -> impl Future<Output = Result<Vec<(CredentialId, LinkRecord)>, LinkError>> + Send;
}
