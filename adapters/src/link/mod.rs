//! The link store: which identity a credential belongs to. Links are made with the
//! rider's consent (ride-code apps, the card upgrade service, ticket windows, bulk
//! back-end migrations); the gate only reads them.

mod import;
mod memory;

use std::future::Future;

pub use import::{LinkLine, read_links};
pub use memory::MemoryLinks;

use crate::ids::{CredentialId, IdentityId};

/// The link store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link store unavailable: {0}")]
pub struct LinkError(pub String);

/// Resolves credentials to identities.
pub trait LinkStore: Send + Sync + 'static {
    /// The identity `credential` is linked to, if any.
    fn resolve(&self, credential: CredentialId) -> impl Future<Output = Result<Option<IdentityId>, LinkError>> + Send;
}
