//! What a rider can present at a gate, checked for shape: ride codes (verified by the
//! ride-code adapter), transit cards, tickets, and credentials outside the scheme — and
//! the [`LinkKey`] by which each is linked to an identity.

use serde::{Deserialize, Serialize};

/// A credential as presented at a gate, after its fields were checked for shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// The scanned QR text of a ride code (not yet verified).
    RideCode(String),
    /// A transit card.
    Card {
        /// Where the card lives.
        medium: CardMedium,
        /// Its full number.
        number: CardNumber,
    },
    /// A ticket.
    Ticket {
        /// What kind.
        kind: TicketKind,
        /// Its number.
        number: TicketNumber,
    },
    /// A credential outside the scheme.
    Uncovered(UncoveredKind),
}

/// Where a transit card lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardMedium {
    /// A physical Yikatong card.
    Physical,
    /// A card in the phone's secure element.
    PhoneNfc,
    /// A card on the carrier's NFC-SIM.
    NfcSim,
}

impl CardMedium {
    /// True for the two phone-borne media (one NFC card per identity may be linked).
    pub fn is_nfc(self) -> bool {
        matches!(self, Self::PhoneNfc | Self::NfcSim)
    }
}

/// Kinds of tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketKind {
    /// Sold at a station to a buyer whose ID was checked.
    SingleJourney,
    /// Linked through the upgrade service; each purchase is linked again.
    Commemorative,
    /// Suspended; refunded through the channel that sold it.
    ElectronicSingleJourney,
}

impl TicketKind {
    /// A stable label, used inside credential hashes and audit records.
    pub fn label(self) -> &'static str {
        match self {
            Self::SingleJourney => "single_journey",
            Self::Commemorative => "commemorative",
            Self::ElectronicSingleJourney => "electronic_single_journey",
        }
    }
}

/// Credentials outside the health-check scheme: answered with a manual check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UncoveredKind {
    /// A bank card.
    BankCard,
    /// A digital-RMB wearable.
    DigitalRmbWearable,
    /// A prepaid single-journey e-ticket from a payment app.
    PrepaidETicket,
    /// An air-rail combined ticket.
    AirRailTicket,
}

impl UncoveredKind {
    /// A stable label, used inside tap fingerprints.
    pub fn label(self) -> &'static str {
        match self {
            Self::BankCard => "bank_card",
            Self::DigitalRmbWearable => "digital_rmb_wearable",
            Self::PrepaidETicket => "prepaid_e_ticket",
            Self::AirRailTicket => "air_rail_ticket",
        }
    }
}

/// What kind of credential was presented, without any of its numbers: for audit
/// records and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A ride code.
    RideCode,
    /// A card on the given medium.
    Card(CardMedium),
    /// A ticket of the given kind.
    Ticket(TicketKind),
    /// A credential outside the scheme.
    Uncovered(UncoveredKind),
}

impl Credential {
    /// What this credential is linked by, when that is known from the credential itself:
    /// a card's or ticket's number. A ride code's account is known only once the code
    /// is verified; a credential outside the scheme is linked by nothing.
    pub fn link_key(&self) -> Option<LinkKey<'_>> {
        match self {
            Self::Card { number, .. } => Some(LinkKey::Card {
                number: number.as_str(),
            }),
            Self::Ticket { kind, number } => Some(LinkKey::Ticket {
                kind: *kind,
                number: number.as_str(),
            }),
            Self::RideCode(_) | Self::Uncovered(_) => None,
        }
    }

    /// The kind of this credential.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Self::RideCode(_) => CredentialKind::RideCode,
            Self::Card { medium, .. } => CredentialKind::Card(*medium),
            Self::Ticket { kind, .. } => CredentialKind::Ticket(*kind),
            Self::Uncovered(kind) => CredentialKind::Uncovered(*kind),
        }
    }
}

/// A full transit-card number: 8 to 20 decimal digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CardNumber(String);

/// A ticket number: 4 to 32 characters of `[0-9A-Za-z-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TicketNumber(String);

/// A card or ticket number of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Empty.
    #[error("is empty")]
    Empty,
    /// Outside the allowed length.
    #[error("must be {min} to {max} characters, got {got}")]
    Length {
        /// Shortest allowed.
        min: usize,
        /// Longest allowed.
        max: usize,
        /// What was given.
        got: usize,
    },
    /// A character outside the allowed set.
    #[error("has an invalid character at position {0}")]
    Character(usize),
}

fn check_number(s: &str, min: usize, max: usize, ok: impl Fn(u8) -> bool) -> Result<(), NumberError> {
    if s.is_empty() {
        return Err(NumberError::Empty);
    }
    if let Some(i) = s.bytes().position(|c| !ok(c)) {
        return Err(NumberError::Character(i + 1));
    }
    if !(min..=max).contains(&s.len()) {
        return Err(NumberError::Length { min, max, got: s.len() });
    }
    Ok(())
}

impl CardNumber {
    /// Shortest full card number accepted.
    pub const MIN_LEN: usize = 8;
    /// Longest card number accepted.
    pub const MAX_LEN: usize = 20;

    /// Checks the number's shape.
    pub fn parse(s: &str) -> Result<Self, NumberError> {
        check_number(s, Self::MIN_LEN, Self::MAX_LEN, |c| c.is_ascii_digit())?;
        Ok(Self(s.to_owned()))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TicketNumber {
    /// Checks the number's shape.
    pub fn parse(s: &str) -> Result<Self, NumberError> {
        check_number(s, 4, 32, |c| c.is_ascii_alphanumeric() || c == b'-')?;
        Ok(Self(s.to_owned()))
    }

    /// The number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a credential is linked by: the part of it that names one rider's credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKey<'a> {
    /// A ride-code account at an issuer.
    RideAccount {
        /// The issuer's id (for example `alipay`).
        issuer: &'a str,
        /// The account at that issuer.
        account: &'a str,
    },
    /// A transit card, by number (the same number on any medium is the same card).
    Card {
        /// The full card number.
        number: &'a str,
    },
    /// A ticket.
    Ticket {
        /// What kind.
        kind: TicketKind,
        /// Its number.
        number: &'a str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_must_be_full_digit_strings() {
        assert!(CardNumber::parse("1000754312345678").is_ok());
        assert_eq!(CardNumber::parse(""), Err(NumberError::Empty));
        assert_eq!(
            CardNumber::parse("1234"),
            Err(NumberError::Length {
                min: 8,
                max: 20,
                got: 4
            })
        );
        assert_eq!(CardNumber::parse("1000 7543"), Err(NumberError::Character(5)));
        assert_eq!(
            CardNumber::parse("1".repeat(21).as_str()),
            Err(NumberError::Length {
                min: 8,
                max: 20,
                got: 21
            })
        );
    }

    #[test]
    fn ticket_numbers_allow_letters_digits_and_dashes() {
        assert!(TicketNumber::parse("SJ-2022-0609-0001").is_ok());
        assert_eq!(TicketNumber::parse("a b c d"), Err(NumberError::Character(2)));
        assert_eq!(
            TicketNumber::parse("abc"),
            Err(NumberError::Length {
                min: 4,
                max: 32,
                got: 3
            })
        );
    }
}
