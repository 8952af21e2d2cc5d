//! The edge between wire and domain: protobuf requests become [`GateRequest`]s (or an
//! [`InvalidRequest`] naming the field), answers become protobuf responses. Nothing
//! past this module sees a prost type.

use std::time::Duration;

use ridegate_core::credential::{CardMedium, CardNumber, Credential, TicketKind, TicketNumber, UncoveredKind};
use ridegate_core::model::{Direction, Mode, Reason, UnixMillis, Verdict};
use ridegate_proto::pb;

use crate::authorize::Decided;
use ridegate_core::decision::{GateContext, GateRequest, screen_message};

/// A batch larger than a service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch of {got} items is larger than the limit of {limit}")]
pub struct BatchTooLarge {
    /// Items sent.
    pub got: usize,
    /// Items accepted per call.
    pub limit: usize,
}

/// A request that cannot be decided, and which field is why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidRequest {
    /// The protobuf field path.
    pub field: &'static str,
    /// What is wrong with it (never its value).
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> InvalidRequest {
    InvalidRequest {
        field,
        problem: problem.into(),
    }
}

/// Longest request id, gate, station or line id accepted, in bytes.
const MAX_REQUEST_ID: usize = 128;
const MAX_NAME: usize = 64;

fn name(field: &'static str, value: String, required: bool) -> Result<String, InvalidRequest> {
    if required && value.is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.len() > MAX_NAME {
        return Err(invalid(field, format!("must be at most {MAX_NAME} bytes")));
    }
    Ok(value)
}

/// Reads an open protobuf enum: unset and unknown values are both errors.
fn known<E>(field: &'static str, raw: i32, unset: E) -> Result<E, InvalidRequest>
where
    E: TryFrom<i32> + PartialEq,
{
    match E::try_from(raw) {
        Ok(value) if value == unset => Err(invalid(field, "is required")),
        Ok(value) => Ok(value),
        Err(_) => Err(invalid(field, format!("unknown value {raw}"))),
    }
}

/// A tap from the wire, validated: the decision never sees wire types.
pub fn gate_request(request: pb::AuthorizeRequest) -> Result<GateRequest, InvalidRequest> {
    {
        if request.request_id.len() > MAX_REQUEST_ID {
            return Err(invalid("request_id", format!("must be at most {MAX_REQUEST_ID} bytes")));
        }
        let gate = request.gate.ok_or_else(|| invalid("gate", "is required"))?;
        let direction = direction("gate.direction", gate.direction)?;
        let gate = GateContext {
            gate_id: name("gate.gate_id", gate.gate_id, true)?,
            station_id: name("gate.station_id", gate.station_id, false)?,
            line_id: name("gate.line_id", gate.line_id, false)?,
            direction,
            tapped_at: UnixMillis(gate.tapped_at_unix_ms),
            budget: (gate.budget_ms > 0).then(|| Duration::from_millis(u64::from(gate.budget_ms))),
        };
        let credential = credential(request.credential)?;
        Ok(GateRequest {
            request_id: request.request_id,
            gate,
            credential,
        })
    }
}

fn credential(credential: Option<pb::authorize_request::Credential>) -> Result<Credential, InvalidRequest> {
    use pb::authorize_request::Credential as C;
    Ok(match credential {
        None => {
            return Err(invalid(
                "credential",
                "one of ride_code, card, ticket or uncovered is required",
            ));
        }
        // The code's content is judged by the verifier: a bad code is a DENY with a
        // reason, not a malformed request.
        Some(C::RideCode(code)) => Credential::RideCode(code.qr_text),
        Some(C::Card(card)) => {
            let medium = card_medium(card.medium)?;
            let number = CardNumber::parse(&card.number).map_err(|e| invalid("card.number", e.to_string()))?;
            Credential::Card { medium, number }
        }
        Some(C::Ticket(ticket)) => {
            let kind = ticket_kind(ticket.kind)?;
            let number = TicketNumber::parse(&ticket.number).map_err(|e| invalid("ticket.number", e.to_string()))?;
            Credential::Ticket { kind, number }
        }
        Some(C::Uncovered(uncovered)) => Credential::Uncovered(uncovered_kind("uncovered.kind", uncovered.kind)?),
    })
}

/// A direction from the wire.
pub(super) fn direction(field: &'static str, raw: i32) -> Result<Direction, InvalidRequest> {
    Ok(match known(field, raw, pb::Direction::Unspecified)? {
        pb::Direction::Exit => Direction::Exit,
        _ => Direction::Entry,
    })
}

/// A credential outside the scheme from the wire.
pub(super) fn uncovered_kind(field: &'static str, raw: i32) -> Result<UncoveredKind, InvalidRequest> {
    Ok(match known(field, raw, pb::UncoveredKind::Unspecified)? {
        pb::UncoveredKind::DigitalRmbWearable => UncoveredKind::DigitalRmbWearable,
        pb::UncoveredKind::PrepaidETicket => UncoveredKind::PrepaidETicket,
        pb::UncoveredKind::AirRailTicket => UncoveredKind::AirRailTicket,
        _ => UncoveredKind::BankCard,
    })
}

/// A verdict from the wire (what a gate library decided offline).
pub(super) fn verdict_from(field: &'static str, raw: i32) -> Result<Verdict, InvalidRequest> {
    [Verdict::Allow, Verdict::Deny, Verdict::Assist]
        .into_iter()
        .find(|v| verdict(*v) as i32 == raw)
        .ok_or_else(|| invalid(field, format!("unknown value {raw}")))
}

/// A check mode from the wire (what a gate library applied offline).
pub(super) fn mode_from(field: &'static str, raw: i32) -> Result<Mode, InvalidRequest> {
    [Mode::Enforce, Mode::Shadow, Mode::Off]
        .into_iter()
        .find(|m| mode(*m) as i32 == raw)
        .ok_or_else(|| invalid(field, format!("unknown value {raw}")))
}

/// A reason from the wire (what a gate library decided offline).
pub(super) fn reason_from(field: &'static str, raw: i32) -> Result<Reason, InvalidRequest> {
    Reason::ALL
        .into_iter()
        .find(|r| reason(*r) as i32 == raw)
        .ok_or_else(|| invalid(field, format!("unknown value {raw}")))
}

/// A card medium from the wire (`card.medium`).
pub(super) fn card_medium(raw: i32) -> Result<CardMedium, InvalidRequest> {
    Ok(match known("card.medium", raw, pb::CardMedium::Unspecified)? {
        pb::CardMedium::PhoneNfc => CardMedium::PhoneNfc,
        pb::CardMedium::NfcSim => CardMedium::NfcSim,
        _ => CardMedium::Physical,
    })
}

/// A ticket kind from the wire (`ticket.kind`).
pub(super) fn ticket_kind(raw: i32) -> Result<TicketKind, InvalidRequest> {
    Ok(match known("ticket.kind", raw, pb::TicketKind::Unspecified)? {
        pb::TicketKind::Commemorative => TicketKind::Commemorative,
        pb::TicketKind::ElectronicSingleJourney => TicketKind::ElectronicSingleJourney,
        _ => TicketKind::SingleJourney,
    })
}

/// The wire verdict.
pub(super) fn verdict(v: Verdict) -> pb::Verdict {
    match v {
        Verdict::Allow => pb::Verdict::Allow,
        Verdict::Deny => pb::Verdict::Deny,
        Verdict::Assist => pb::Verdict::Assist,
    }
}

/// The wire mode.
pub(super) fn mode(m: Mode) -> pb::CheckMode {
    match m {
        Mode::Enforce => pb::CheckMode::Enforce,
        Mode::Shadow => pb::CheckMode::Shadow,
        Mode::Off => pb::CheckMode::Off,
    }
}

/// The wire reason.
pub(super) fn reason(r: Reason) -> pb::Reason {
    match r {
        Reason::HealthGreen => pb::Reason::HealthGreen,
        Reason::HealthYellow => pb::Reason::HealthYellow,
        Reason::HealthRed => pb::Reason::HealthRed,
        Reason::TestMissing => pb::Reason::TestMissing,
        Reason::NoHealthRecord => pb::Reason::NoHealthRecord,
        Reason::NotLinked => pb::Reason::NotLinked,
        Reason::NotCovered => pb::Reason::NotCovered,
        Reason::HealthUnavailable => pb::Reason::HealthUnavailable,
        Reason::Exit => pb::Reason::Exit,
        Reason::CheckOff => pb::Reason::CheckOff,
        Reason::CheckShadow => pb::Reason::CheckShadow,
        Reason::TicketSuspended => pb::Reason::TicketSuspended,
        Reason::CodeMalformed => pb::Reason::CodeMalformed,
        Reason::CodeOversize => pb::Reason::CodeOversize,
        Reason::CodeAlgNotAllowed => pb::Reason::CodeAlgNotAllowed,
        Reason::CodeUnknownIssuer => pb::Reason::CodeUnknownIssuer,
        Reason::CodeUnknownKey => pb::Reason::CodeUnknownKey,
        Reason::CodeBadSignature => pb::Reason::CodeBadSignature,
        Reason::CodeExpired => pb::Reason::CodeExpired,
        Reason::CodeNotYetValid => pb::Reason::CodeNotYetValid,
        Reason::CodeLifetimeTooLong => pb::Reason::CodeLifetimeTooLong,
        Reason::CodeCertExpired => pb::Reason::CodeCertExpired,
        Reason::CodeCertInvalid => pb::Reason::CodeCertInvalid,
        Reason::CodeCertRevoked => pb::Reason::CodeCertRevoked,
        Reason::CodeReplayed => pb::Reason::CodeReplayed,
        Reason::CodeWrongType => pb::Reason::CodeWrongType,
        Reason::CodeSingleUseUnknown => pb::Reason::CodeSingleUseUnknown,
    }
}

/// The wire response for a decision.
pub(super) fn response(request_id: String, decided: Decided) -> pb::AuthorizeResponse {
    let a = decided.answer;
    let (zh, en) = screen_message(a.verdict, a.reason);
    let (shadow_verdict, shadow_reason) = a
        .shadow
        .map_or((pb::Verdict::Unspecified, pb::Reason::Unspecified), |(v, r)| {
            (verdict(v), reason(r))
        });
    pb::AuthorizeResponse {
        request_id,
        verdict: verdict(a.verdict).into(),
        reason: reason(a.reason).into(),
        message_zh: zh.to_owned(),
        message_en: en.to_owned(),
        decision_id: a.decision_id.to_string(),
        degraded: a.degraded,
        status_age_ms: a.status_age_ms,
        mode: mode(a.mode).into(),
        shadow_verdict: shadow_verdict.into(),
        shadow_reason: shadow_reason.into(),
        retry: decided.retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::AuthorizeRequest {
        pb::AuthorizeRequest {
            request_id: "r-1".into(),
            gate: Some(pb::GateContext {
                gate_id: "G1".into(),
                station_id: "S1".into(),
                line_id: "L1".into(),
                direction: pb::Direction::Entry.into(),
                tapped_at_unix_ms: 5,
                budget_ms: 0,
            }),
            credential: Some(pb::authorize_request::Credential::Card(pb::Card {
                medium: pb::CardMedium::Physical.into(),
                number: "1000754312345678".into(),
            })),
        }
    }

    fn field_of(r: pb::AuthorizeRequest) -> &'static str {
        gate_request(r).unwrap_err().field
    }

    #[test]
    fn a_good_request_converts() {
        let r = gate_request(request()).unwrap();
        assert_eq!(r.gate.direction, Direction::Entry);
        assert!(matches!(
            r.credential,
            Credential::Card {
                medium: CardMedium::Physical,
                ..
            }
        ));
    }

    #[test]
    fn each_missing_or_bad_field_is_named() {
        let mut r = request();
        r.gate = None;
        assert_eq!(field_of(r), "gate");
        let mut r = request();
        r.credential = None;
        assert_eq!(field_of(r), "credential");
        let mut r = request();
        r.gate.as_mut().unwrap().gate_id.clear();
        assert_eq!(field_of(r), "gate.gate_id");
        let mut r = request();
        r.gate.as_mut().unwrap().direction = 0;
        assert_eq!(field_of(r), "gate.direction");
        let mut r = request();
        r.gate.as_mut().unwrap().direction = 9;
        assert_eq!(
            gate_request(r).unwrap_err().to_string(),
            "gate.direction: unknown value 9"
        );
        let mut r = request();
        r.credential = Some(pb::authorize_request::Credential::Card(pb::Card {
            medium: 42,
            number: "1000754312345678".into(),
        }));
        assert_eq!(field_of(r), "card.medium");
        let mut r = request();
        r.credential = Some(pb::authorize_request::Credential::Card(pb::Card {
            medium: 1,
            number: "12".into(),
        }));
        assert_eq!(field_of(r), "card.number");
        let mut r = request();
        r.credential = Some(pb::authorize_request::Credential::Ticket(pb::Ticket {
            kind: 77,
            number: "T-0001".into(),
        }));
        assert_eq!(field_of(r), "ticket.kind");
        let mut r = request();
        r.credential = Some(pb::authorize_request::Credential::Uncovered(pb::UncoveredCredential {
            kind: 0,
        }));
        assert_eq!(field_of(r), "uncovered.kind");
        let mut r = request();
        r.request_id = "x".repeat(129);
        assert_eq!(field_of(r), "request_id");
    }

    #[test]
    fn every_reason_has_a_wire_value() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert_ne!(reason(r), pb::Reason::Unspecified);
            assert!(seen.insert(reason(r)), "{r} maps onto another reason's wire value");
        }
    }
}
