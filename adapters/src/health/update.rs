//! Pushed status updates from the wire (`pb::StatusUpdate`, sent to ridegate's
//! `HealthFeed` and to the platform simulator's control API) into the domain: the
//! identity they are for and the status, or why they cannot be used.

use ridegate_core::model::{Colour, HealthStatus, UnixMillis};
use ridegate_proto::pb;

use crate::ids::{IdentityId, Pseudonymizer};

/// A pushed status update, checked: the identity it is for (an ID number is turned
/// into its pseudonym at once) and the status; or why it cannot be used.
pub fn parse_update(
    pseudonymizer: &Pseudonymizer,
    update: pb::StatusUpdate,
) -> Result<(IdentityId, HealthStatus), String> {
    use pb::status_update::Subject;
    let identity = match update.subject {
        Some(Subject::Identity(hex)) => {
            let id = hex.parse::<IdentityId>().map_err(|e| format!("identity: {e}"))?;
            pseudonymizer.subject(None, Some(id))
        }
        Some(Subject::IdNumber(number)) => pseudonymizer.subject(Some(&number), None),
        None => return Err("subject: one of identity or id_number is required".into()),
    }
    .map_err(|e| e.to_string())?;
    let colour = match pb::HealthColour::try_from(update.colour) {
        Ok(pb::HealthColour::Green) => Colour::Green,
        Ok(pb::HealthColour::Yellow) => Colour::Yellow,
        Ok(pb::HealthColour::Red) => Colour::Red,
        Ok(pb::HealthColour::Unspecified) => return Err("colour: is required".into()),
        Err(_) => return Err(format!("colour: unknown value {}", update.colour)),
    };
    if update.set_at_unix_ms <= 0 {
        return Err("set_at_unix_ms: must be a positive time".into());
    }
    let negative_test_at = (update.negative_test_at_unix_ms > 0).then_some(UnixMillis(update.negative_test_at_unix_ms));
    Ok((
        identity,
        HealthStatus {
            colour,
            set_at: UnixMillis(update.set_at_unix_ms),
            negative_test_at,
        },
    ))
}
