//! What a link is made for, validated: a ride account, a card (with its full number), or
//! a ticket.

use crate::link::CredentialClass;
use ridegate_core::credential::{CardMedium, CardNumber, LinkKey, NumberError, TicketKind, TicketNumber};

/// A credential to be linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkTarget {
    /// An account at a ride-code issuer.
    RideAccount {
        /// The issuer's id.
        issuer: String,
        /// The account.
        account: String,
    },
    /// A transit card.
    Card {
        /// Where it lives.
        medium: CardMedium,
        /// Its number.
        number: CardNumber,
    },
    /// A ticket.
    Ticket {
        /// What kind.
        kind: TicketKind,
        /// Its number.
        number: TicketNumber,
    },
}

/// Why a credential cannot be linked as given. Messages never contain the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// An empty issuer, or an account that is not 1–128 printable ASCII characters.
    #[error("ride account must be 1-128 printable ASCII characters, with an issuer")]
    Account,
    /// A card number that is a shortened or masked form, as phone apps display it.
    #[error(
        "the full card number is needed ({digits} digits); phone apps show only part of it: read the full number \
         at a station self-service machine or ticket window, or ask Yikatong online customer service (WeChat \
         official account or the Beijing Yikatong app)"
    )]
    TruncatedCard {
        /// Digits in a full number.
        digits: usize,
    },
    /// A card number of the wrong shape.
    #[error("card number must be {digits} digits")]
    CardShape {
        /// Digits in a full number.
        digits: usize,
    },
    /// A card or ticket number of the wrong shape.
    #[error("number {0}")]
    Number(#[from] NumberError),
}

/// Characters that phone apps and receipts use to hide part of a card number.
const MASKS: &[char] = &['*', '•', '·', '●', '…', 'x', 'X', '#'];

impl LinkTarget {
    /// A ride account.
    pub fn ride_account(issuer: &str, account: &str) -> Result<Self, TargetError> {
        let printable = |s: &str| s.bytes().all(|b| b.is_ascii_graphic());
        if issuer.is_empty() || account.is_empty() || account.len() > 128 || !printable(account) || !printable(issuer) {
            return Err(TargetError::Account);
        }
        Ok(Self::RideAccount {
            issuer: issuer.to_owned(),
            account: account.to_owned(),
        })
    }

    /// A card entered by a rider: the full number of exactly `digits` digits. A masked
    /// or shortened number gets [`TargetError::TruncatedCard`], which says where to
    /// read the full one.
    pub fn full_card(medium: CardMedium, number: &str, digits: usize) -> Result<Self, TargetError> {
        let compact: String = number.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
        if compact.contains(MASKS) || (compact.bytes().all(|b| b.is_ascii_digit()) && compact.len() < digits) {
            return Err(TargetError::TruncatedCard { digits });
        }
        if compact.len() != digits || !compact.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TargetError::CardShape { digits });
        }
        Ok(Self::Card {
            medium,
            number: CardNumber::parse(&compact)?,
        })
    }

    /// A card from a trusted back end: any valid card-number shape (8–20 digits).
    pub fn card(medium: CardMedium, number: &str) -> Result<Self, TargetError> {
        Ok(Self::Card {
            medium,
            number: CardNumber::parse(number)?,
        })
    }

    /// A ticket.
    pub fn ticket(kind: TicketKind, number: &str) -> Result<Self, TargetError> {
        Ok(Self::Ticket {
            kind,
            number: TicketNumber::parse(number)?,
        })
    }

    /// The key the credential is linked by (the gate computes the same from a tap).
    pub fn key(&self) -> LinkKey<'_> {
        match self {
            Self::RideAccount { issuer, account } => LinkKey::RideAccount { issuer, account },
            Self::Card { number, .. } => LinkKey::Card {
                number: number.as_str(),
            },
            Self::Ticket { kind, number } => LinkKey::Ticket {
                kind: *kind,
                number: number.as_str(),
            },
        }
    }

    /// Its class.
    pub fn class(&self) -> CredentialClass {
        match self {
            Self::RideAccount { .. } => CredentialClass::RideAccount,
            Self::Card { medium, .. } if medium.is_nfc() => CredentialClass::NfcCard,
            Self::Card { .. } => CredentialClass::PhysicalCard,
            Self::Ticket {
                kind: TicketKind::Commemorative,
                ..
            } => CredentialClass::CommemorativeTicket,
            Self::Ticket { .. } => CredentialClass::SingleJourneyTicket,
        }
    }

    /// The issuer, for ride accounts.
    pub fn issuer(&self) -> Option<&str> {
        match self {
            Self::RideAccount { issuer, .. } => Some(issuer),
            _ => None,
        }
    }

    /// The last four characters, for masked display.
    pub fn tail(&self) -> [u8; 4] {
        let text = match self {
            Self::RideAccount { account, .. } => account.as_str(),
            Self::Card { number, .. } => number.as_str(),
            Self::Ticket { number, .. } => number.as_str(),
        };
        let bytes = text.as_bytes();
        let mut tail = [0u8; 4];
        let start = bytes.len().saturating_sub(4);
        tail[..bytes.len() - start].copy_from_slice(&bytes[start..]);
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::masked_tail;

    #[test]
    fn full_card_numbers_are_accepted_with_spaces_or_dashes() {
        for number in ["1000754312345678", "1000 7543 1234 5678", "1000-7543-1234-5678"] {
            let target = LinkTarget::full_card(CardMedium::Physical, number, 16).unwrap();
            assert_eq!(masked_tail(&target.tail()), "****5678");
            assert_eq!(target.class(), CredentialClass::PhysicalCard);
        }
        assert_eq!(
            LinkTarget::full_card(CardMedium::NfcSim, "1000754312345678", 16)
                .unwrap()
                .class(),
            CredentialClass::NfcCard
        );
    }

    #[test]
    fn masked_or_shortened_numbers_say_where_to_find_the_full_one() {
        for truncated in [
            "3104 **** **** 1234",
            "3104••••1234",
            "****1234",
            "31041234",
            "3104xxxxxxxx1234",
        ] {
            let err = LinkTarget::full_card(CardMedium::PhoneNfc, truncated, 16).unwrap_err();
            assert_eq!(err, TargetError::TruncatedCard { digits: 16 }, "{truncated}");
            assert!(err.to_string().contains("station self-service machine"));
        }
        assert_eq!(
            LinkTarget::full_card(CardMedium::Physical, "10007543123456789", 16).unwrap_err(),
            TargetError::CardShape { digits: 16 }
        );
        assert_eq!(
            LinkTarget::full_card(CardMedium::Physical, "1000abcd12345678", 16).unwrap_err(),
            TargetError::CardShape { digits: 16 }
        );
    }

    #[test]
    fn ride_accounts_must_be_printable_ascii() {
        assert!(LinkTarget::ride_account("alipay", "2088000011112222").is_ok());
        assert_eq!(
            LinkTarget::ride_account("alipay", "").unwrap_err(),
            TargetError::Account
        );
        assert_eq!(
            LinkTarget::ride_account("alipay", "账户").unwrap_err(),
            TargetError::Account
        );
        assert_eq!(LinkTarget::ride_account("", "a").unwrap_err(), TargetError::Account);
    }

    #[test]
    fn short_credentials_mask_what_they_have() {
        let t = LinkTarget::ticket(TicketKind::SingleJourney, "SJ-1").unwrap();
        assert_eq!(masked_tail(&t.tail()), "****SJ-1");
        assert_eq!(t.class(), CredentialClass::SingleJourneyTicket);
    }
}
