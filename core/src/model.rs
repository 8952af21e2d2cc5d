//! The vocabulary shared by the decision and its adapters: times, health statuses,
//! verdicts and reasons, and the answer that audit and idempotency records keep.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// Whole seconds since the epoch, as JWT `NumericDate` claims count them.
    pub fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1_000))
    }

    /// `self - earlier` in milliseconds (negative if `earlier` is later).
    pub fn since(self, earlier: UnixMillis) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    /// This time moved by `ms` milliseconds.
    pub fn plus_ms(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}

/// Plain milliseconds since the epoch (what the wire carries).
impl From<i64> for UnixMillis {
    fn from(ms: i64) -> Self {
        Self(ms)
    }
}

/// A health-code colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// No restriction.
    Green,
    /// Restricted (by default refused at the gate).
    Yellow,
    /// Restricted (refused at the gate).
    Red,
}

/// One identity's health-code status as the platform set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// The colour.
    pub colour: Colour,
    /// When the platform set the colour.
    pub set_at: UnixMillis,
    /// When the last negative test was taken, if any is on record.
    pub negative_test_at: Option<UnixMillis>,
}

/// Entering or leaving the paid area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Entering: the health check applies.
    Entry,
    /// Leaving: never refused on health grounds.
    Exit,
}

/// How the health check applies at a station.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decide and enforce.
    Enforce,
    /// Decide and record, but let the rider through (testing phase).
    Shadow,
    /// Check only the credential itself.
    Off,
}

/// What the gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Open.
    Allow,
    /// Stay closed.
    Deny,
    /// Stay closed and send the rider to staff.
    Assist,
}

/// Why a verdict was given. Mirrors `ridegate.v1.Reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)] // each variant is documented on the wire enum
pub enum Reason {
    HealthGreen,
    HealthYellow,
    HealthRed,
    TestMissing,
    NoHealthRecord,
    NotLinked,
    NotCovered,
    HealthUnavailable,
    Exit,
    CheckOff,
    CheckShadow,
    TicketSuspended,
    CodeMalformed,
    CodeOversize,
    CodeAlgNotAllowed,
    CodeUnknownIssuer,
    CodeUnknownKey,
    CodeBadSignature,
    CodeExpired,
    CodeNotYetValid,
    CodeLifetimeTooLong,
    CodeCertExpired,
    CodeCertInvalid,
    CodeCertRevoked,
    CodeReplayed,
    CodeWrongType,
    CodeSingleUseUnknown,
}

impl Reason {
    /// Every reason, in wire order; used to size per-reason metrics.
    pub const ALL: [Reason; 27] = [
        Reason::HealthGreen,
        Reason::HealthYellow,
        Reason::HealthRed,
        Reason::TestMissing,
        Reason::NoHealthRecord,
        Reason::NotLinked,
        Reason::NotCovered,
        Reason::HealthUnavailable,
        Reason::Exit,
        Reason::CheckOff,
        Reason::CheckShadow,
        Reason::TicketSuspended,
        Reason::CodeMalformed,
        Reason::CodeOversize,
        Reason::CodeAlgNotAllowed,
        Reason::CodeUnknownIssuer,
        Reason::CodeUnknownKey,
        Reason::CodeBadSignature,
        Reason::CodeExpired,
        Reason::CodeNotYetValid,
        Reason::CodeLifetimeTooLong,
        Reason::CodeCertExpired,
        Reason::CodeCertInvalid,
        Reason::CodeCertRevoked,
        Reason::CodeReplayed,
        Reason::CodeWrongType,
        Reason::CodeSingleUseUnknown,
    ];

    /// A stable snake_case label for metrics and audit records.
    pub fn label(self) -> &'static str {
        match self {
            Reason::HealthGreen => "health_green",
            Reason::HealthYellow => "health_yellow",
            Reason::HealthRed => "health_red",
            Reason::TestMissing => "test_missing",
            Reason::NoHealthRecord => "no_health_record",
            Reason::NotLinked => "not_linked",
            Reason::NotCovered => "not_covered",
            Reason::HealthUnavailable => "health_unavailable",
            Reason::Exit => "exit",
            Reason::CheckOff => "check_off",
            Reason::CheckShadow => "check_shadow",
            Reason::TicketSuspended => "ticket_suspended",
            Reason::CodeMalformed => "code_malformed",
            Reason::CodeOversize => "code_oversize",
            Reason::CodeAlgNotAllowed => "code_alg_not_allowed",
            Reason::CodeUnknownIssuer => "code_unknown_issuer",
            Reason::CodeUnknownKey => "code_unknown_key",
            Reason::CodeBadSignature => "code_bad_signature",
            Reason::CodeExpired => "code_expired",
            Reason::CodeNotYetValid => "code_not_yet_valid",
            Reason::CodeLifetimeTooLong => "code_lifetime_too_long",
            Reason::CodeCertExpired => "code_cert_expired",
            Reason::CodeCertInvalid => "code_cert_invalid",
            Reason::CodeCertRevoked => "code_cert_revoked",
            Reason::CodeReplayed => "code_replayed",
            Reason::CodeWrongType => "code_wrong_type",
            Reason::CodeSingleUseUnknown => "code_single_use_unknown",
        }
    }

    /// The index of this reason in [`Reason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Names one decision in audit records and answers: the high 16 bits identify the
/// process that decided, the low 48 bits count its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionId(pub u64);

impl fmt::Display for DecisionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for DecisionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The answer to one tap: what the gate was told and why. Kept by idempotency records
/// (so a retry gets it again) and carried by audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// What the gate does.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// This decision's id.
    pub decision_id: DecisionId,
    /// The health status behind the answer was not fresh, or none could be had.
    pub degraded: bool,
    /// How long ago the status behind the answer was confirmed with its source.
    pub status_age_ms: Option<i64>,
    /// The check mode at the gate's station.
    pub mode: Mode,
    /// In shadow mode, the verdict and reason that enforcement would have given.
    pub shadow: Option<(Verdict, Reason)>,
}

impl Answer {
    /// The compact binary form kept in idempotency records (22 bytes).
    pub fn to_bytes(&self) -> [u8; 22] {
        let mut out = [0u8; 22];
        out[0] = 1; // format version
        out[1] = verdict_byte(self.verdict);
        out[2] = self.reason.index() as u8;
        out[3..11].copy_from_slice(&self.decision_id.0.to_le_bytes());
        out[11] = u8::from(self.degraded);
        out[12..20].copy_from_slice(&self.status_age_ms.unwrap_or(-1).to_le_bytes());
        out[20] = match self.mode {
            Mode::Enforce => 0,
            Mode::Shadow => 1,
            Mode::Off => 2,
        };
        out[21] = self
            .shadow
            .map_or(0, |(v, r)| (verdict_byte(v) << 6) | (r.index() as u8 + 1));
        out
    }

    /// An answer from [`Answer::to_bytes`]; `None` for anything else.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 22] = bytes.try_into().ok()?;
        if bytes[0] != 1 {
            return None;
        }
        let age = i64::from_le_bytes(bytes[12..20].try_into().ok()?);
        let shadow = match bytes[21] {
            0 => None,
            b => Some((
                byte_verdict(b >> 6)?,
                *Reason::ALL.get(usize::from(b & 0x3f).checked_sub(1)?)?,
            )),
        };
        Some(Self {
            verdict: byte_verdict(bytes[1])?,
            reason: *Reason::ALL.get(usize::from(bytes[2]))?,
            decision_id: DecisionId(u64::from_le_bytes(bytes[3..11].try_into().ok()?)),
            degraded: bytes[11] != 0,
            status_age_ms: (age >= 0).then_some(age),
            mode: match bytes[20] {
                0 => Mode::Enforce,
                1 => Mode::Shadow,
                2 => Mode::Off,
                _ => return None,
            },
            shadow,
        })
    }
}

fn verdict_byte(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
        Verdict::Assist => 2,
    }
}

fn byte_verdict(b: u8) -> Option<Verdict> {
    match b {
        0 => Some(Verdict::Allow),
        1 => Some(Verdict::Deny),
        2 => Some(Verdict::Assist),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_index_matches_its_place_in_all() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i, "{reason}");
        }
    }

    #[test]
    fn answers_round_trip_through_their_binary_form() {
        let answers = [
            Answer {
                verdict: Verdict::Allow,
                reason: Reason::CheckShadow,
                decision_id: DecisionId(u64::MAX),
                degraded: true,
                status_age_ms: Some(12_345),
                mode: Mode::Shadow,
                shadow: Some((Verdict::Deny, Reason::CodeWrongType)),
            },
            Answer {
                verdict: Verdict::Assist,
                reason: Reason::NotLinked,
                decision_id: DecisionId(7),
                degraded: false,
                status_age_ms: None,
                mode: Mode::Off,
                shadow: None,
            },
        ];
        for answer in answers {
            assert_eq!(Answer::from_bytes(&answer.to_bytes()), Some(answer));
        }
        assert_eq!(Answer::from_bytes(b"short"), None);
    }

    #[test]
    fn decision_id_renders_as_fixed_width_hex() {
        assert_eq!(DecisionId(0xab).to_string(), "00000000000000ab");
    }
}
