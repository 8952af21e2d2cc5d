//! What tests outside the product may use (feature `test-util`): the minters that sign
//! ride codes, device certificates and caller tokens as issuers, phones and callers do;
//! made-up but valid resident ID numbers; and the pseudonym a health platform that
//! shares ridegate's secret would compute. End-to-end tests import this module and the
//! wire contract, nothing else of ridegate.

pub use crate::caller::{CallerKind, CallerTokenMinter, TokenClaims};
pub use crate::credential::ride_code::{CodeMinter, DeviceCodeMinter, MintError, SigningAlg, SigningKey};
pub use crate::ids::{random_bytes, synthetic_resident_id};

use crate::ids::{Pseudonymizer, ResidentId};

/// The pseudonym (hex) of the rider with resident ID number `id_number` under `secret`,
/// as a health platform sharing the secret sends it; `None` if the secret is too short
/// or the number is not valid.
pub fn pseudonym(secret: &[u8], id_number: &str) -> Option<String> {
    let pseudonymizer = Pseudonymizer::new(secret).ok()?;
    let id = ResidentId::parse(id_number).ok()?;
    Some(pseudonymizer.identity(&id).to_string())
}
