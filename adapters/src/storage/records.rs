//! The stored form of each record: fixed little-endian layouts with a version byte on
//! links, so a later version can read what this one wrote. Only pseudonymous data is
//! stored: keyed hashes of credentials, codes and requests, identity pseudonyms, masked
//! tails and caller names — never an ID number or a full credential.

use std::sync::Arc;

use crate::caller::CallerKind;
use crate::idempotency::Kept;
use crate::ids::{IdentityId, RequestKey};
use crate::link::{Consent, CredentialClass, LinkRecord};
use ridegate_core::model::{Colour, HealthStatus, UnixMillis};

/// The link layout's version.
const LINK_V1: u8 = 1;
/// `valid_until` of a link that never ends.
const FOREVER: i64 = i64::MAX;

fn class_code(class: CredentialClass) -> u8 {
    match class {
        CredentialClass::RideAccount => 1,
        CredentialClass::PhysicalCard => 2,
        CredentialClass::NfcCard => 3,
        CredentialClass::SingleJourneyTicket => 4,
        CredentialClass::CommemorativeTicket => 5,
    }
}

fn class_from(code: u8) -> Option<CredentialClass> {
    Some(match code {
        1 => CredentialClass::RideAccount,
        2 => CredentialClass::PhysicalCard,
        3 => CredentialClass::NfcCard,
        4 => CredentialClass::SingleJourneyTicket,
        5 => CredentialClass::CommemorativeTicket,
        _ => return None,
    })
}

fn consent_code(consent: Consent) -> u8 {
    match consent {
        Consent::AppPopup => 1,
        Consent::AppRegistration => 2,
        Consent::UpgradeService => 3,
        Consent::TicketPurchase => 4,
        Consent::StaffAssisted => 5,
        Consent::BulkProgramme => 6,
    }
}

fn consent_from(code: u8) -> Option<Consent> {
    Some(match code {
        1 => Consent::AppPopup,
        2 => Consent::AppRegistration,
        3 => Consent::UpgradeService,
        4 => Consent::TicketPurchase,
        5 => Consent::StaffAssisted,
        6 => Consent::BulkProgramme,
        _ => return None,
    })
}

fn caller_code(kind: CallerKind) -> u8 {
    match kind {
        CallerKind::App => 1,
        CallerKind::UpgradeService => 2,
        CallerKind::TicketWindow => 3,
        CallerKind::BackEnd => 4,
        CallerKind::HealthPlatform => 5,
    }
}

fn caller_from(code: u8) -> Option<CallerKind> {
    Some(match code {
        1 => CallerKind::App,
        2 => CallerKind::UpgradeService,
        3 => CallerKind::TicketWindow,
        4 => CallerKind::BackEnd,
        5 => CallerKind::HealthPlatform,
        _ => return None,
    })
}

fn colour_code(colour: Colour) -> u8 {
    match colour {
        Colour::Green => 1,
        Colour::Yellow => 2,
        Colour::Red => 3,
    }
}

fn colour_from(code: u8) -> Option<Colour> {
    Some(match code {
        1 => Colour::Green,
        2 => Colour::Yellow,
        3 => Colour::Red,
        _ => return None,
    })
}

fn put_name(out: &mut Vec<u8>, name: Option<&Arc<str>>) {
    let bytes = name.map_or(&b""[..], |n| n.as_bytes());
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

/// Names already read (callers, staff, issuers: a handful of distinct values among
/// millions of links), so each record shares them instead of allocating its own.
#[derive(Default)]
pub(crate) struct NameCache(std::collections::HashMap<Box<str>, Arc<str>>);

impl NameCache {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(name) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(name.into(), shared.clone());
        shared
    }
}

/// Reads fixed-size fields off the front of a stored value.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    fn name(&mut self, names: &mut NameCache) -> Option<Option<Arc<str>>> {
        let len = u16::from_le_bytes(self.array()?);
        let bytes = self.take(usize::from(len))?;
        let name = std::str::from_utf8(bytes).ok()?;
        Some((!name.is_empty()).then(|| names.get(name)))
    }
}

/// A link record, stored (41 bytes and the three names).
pub(crate) fn encode_link(record: &LinkRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.push(LINK_V1);
    out.extend_from_slice(&record.identity.0);
    out.push(class_code(record.class));
    out.push(consent_code(record.consent));
    out.push(caller_code(record.linked_by));
    out.extend_from_slice(&record.tail);
    out.extend_from_slice(&record.linked_at.0.to_le_bytes());
    out.extend_from_slice(&record.valid_until.map_or(FOREVER, |t| t.0).to_le_bytes());
    put_name(&mut out, record.issuer.as_ref());
    put_name(&mut out, Some(&record.caller_id));
    put_name(&mut out, record.staff_operator_id.as_ref());
    out
}

/// A link record from [`encode_link`], its names shared through `names`; `None` for
/// anything else.
pub(crate) fn decode_link(bytes: &[u8], names: &mut NameCache) -> Option<LinkRecord> {
    let mut r = Reader(bytes);
    if r.byte()? != LINK_V1 {
        return None;
    }
    let identity = IdentityId(r.array()?);
    let class = class_from(r.byte()?)?;
    let consent = consent_from(r.byte()?)?;
    let linked_by = caller_from(r.byte()?)?;
    let tail = r.array()?;
    let linked_at = UnixMillis(r.i64()?);
    let valid_until = r.i64()?;
    let issuer = r.name(names)?;
    let caller_id = r.name(names)?.unwrap_or_else(|| Arc::from(""));
    let staff_operator_id = r.name(names)?;
    Some(LinkRecord {
        identity,
        class,
        issuer,
        tail,
        linked_at,
        linked_by,
        caller_id,
        staff_operator_id,
        consent,
        valid_until: (valid_until != FOREVER).then_some(UnixMillis(valid_until)),
    })
}

/// A health status, stored (18 bytes).
pub(crate) fn encode_status(status: &HealthStatus) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[0] = colour_code(status.colour);
    out[1..9].copy_from_slice(&status.set_at.0.to_le_bytes());
    if let Some(test) = status.negative_test_at {
        out[9] = 1;
        out[10..18].copy_from_slice(&test.0.to_le_bytes());
    }
    out
}

/// A status from [`encode_status`].
pub(crate) fn decode_status(bytes: &[u8]) -> Option<HealthStatus> {
    let mut r = Reader(bytes);
    let colour = colour_from(r.byte()?)?;
    let set_at = UnixMillis(r.i64()?);
    let has_test = r.byte()?;
    let test = r.i64()?;
    Some(HealthStatus {
        colour,
        set_at,
        negative_test_at: (has_test == 1).then_some(UnixMillis(test)),
    })
}

/// A used code's owner and end, stored (24 bytes).
pub(crate) fn encode_code(request: RequestKey, until: UnixMillis) -> [u8; CODE_BYTES] {
    let mut out = [0u8; CODE_BYTES];
    out[..16].copy_from_slice(&request.0);
    out[16..].copy_from_slice(&until.0.to_le_bytes());
    out
}

/// A used code from [`encode_code`].
pub(crate) fn decode_code(bytes: &[u8]) -> Option<(RequestKey, UnixMillis)> {
    let mut r = Reader(bytes);
    Some((RequestKey(r.array()?), UnixMillis(r.i64()?)))
}

/// A retry record and its end, stored (38 bytes).
pub(crate) fn encode_retry(kept: &Kept, until: UnixMillis) -> [u8; RETRY_BYTES] {
    let mut out = [0u8; RETRY_BYTES];
    out[..30].copy_from_slice(&kept.to_bytes());
    out[30..].copy_from_slice(&until.0.to_le_bytes());
    out
}

/// A retry record from [`encode_retry`].
pub(crate) fn decode_retry(bytes: &[u8]) -> Option<(Kept, UnixMillis)> {
    let kept = Kept::from_bytes(bytes.get(..30)?)?;
    let until = i64::from_le_bytes(bytes.get(30..38)?.try_into().ok()?);
    Some((kept, UnixMillis(until)))
}

/// Bytes of a used code's value ([`encode_code`]).
pub(crate) const CODE_BYTES: usize = 24;
/// Bytes of a retry record's value ([`encode_retry`]).
pub(crate) const RETRY_BYTES: usize = 38;

/// The write-behind records of one commit, kept as one value: each record's 16-byte key
/// and its value, then the latest end among them (8 bytes, little-endian), so the sweep
/// removes the block once all of it has ended. One insert per commit instead of one per
/// tap keeps the commit thread's work, and the engine's, small at a tap rate.
#[derive(Debug, Default)]
pub(crate) struct Block {
    bytes: Vec<u8>,
    until: i64,
}

impl Block {
    /// Adds a record under `key`, ending at `until`.
    pub(crate) fn push(&mut self, key: &[u8; 16], value: &[u8], until: i64) {
        if self.bytes.is_empty() {
            self.until = until;
        }
        self.until = self.until.max(until);
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
    }

    /// The block's value, if it holds any record.
    pub(crate) fn finish(mut self) -> Option<Vec<u8>> {
        if self.bytes.is_empty() {
            return None;
        }
        self.bytes.extend_from_slice(&self.until.to_le_bytes());
        Some(self.bytes)
    }
}

/// The records of a [`Block`] whose values are `value_bytes` long, as `(key, value)`;
/// `None` when the block is not whole.
pub(crate) fn block_records(block: &[u8], value_bytes: usize) -> Option<impl Iterator<Item = ([u8; 16], &[u8])>> {
    let records = block.get(..block.len().checked_sub(8)?)?;
    let record_bytes = 16 + value_bytes;
    if !records.len().is_multiple_of(record_bytes) {
        return None;
    }
    Some(records.chunks_exact(record_bytes).map(|r| {
        let mut key = [0; 16];
        key.copy_from_slice(&r[..16]);
        (key, &r[16..])
    }))
}

/// The end (`until`) of a stored code, retry record or block of them, for the sweep: the
/// last eight bytes of each layout.
pub(crate) fn expiry_of(bytes: &[u8]) -> Option<i64> {
    let start = bytes.len().checked_sub(8)?;
    Some(i64::from_le_bytes(bytes.get(start..)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ridegate_core::model::{Answer, DecisionId, Mode, Reason, Verdict};

    #[test]
    fn every_record_reads_back_as_written() {
        let record = LinkRecord {
            identity: IdentityId([7; 16]),
            class: CredentialClass::SingleJourneyTicket,
            issuer: Some(Arc::from("alipay")),
            tail: *b"1234",
            linked_at: UnixMillis(1_700_000_000_000),
            linked_by: CallerKind::TicketWindow,
            caller_id: Arc::from("window-3"),
            staff_operator_id: Some(Arc::from("staff-9")),
            consent: Consent::TicketPurchase,
            valid_until: Some(UnixMillis(1_700_000_100_000)),
        };
        assert_eq!(
            decode_link(&encode_link(&record), &mut NameCache::default()),
            Some(record.clone())
        );
        let plain = LinkRecord {
            issuer: None,
            staff_operator_id: None,
            valid_until: None,
            ..record
        };
        assert_eq!(
            decode_link(&encode_link(&plain), &mut NameCache::default()),
            Some(plain)
        );
        assert_eq!(
            decode_link(&[2, 0, 0], &mut NameCache::default()),
            None,
            "an unknown version is unreadable"
        );

        for negative_test_at in [None, Some(UnixMillis(5))] {
            let status = HealthStatus {
                colour: Colour::Red,
                set_at: UnixMillis(42),
                negative_test_at,
            };
            assert_eq!(decode_status(&encode_status(&status)), Some(status));
        }
        let code = encode_code(RequestKey([3; 16]), UnixMillis(99));
        assert_eq!(decode_code(&code), Some((RequestKey([3; 16]), UnixMillis(99))));
        assert_eq!(expiry_of(&code), Some(99));
        let kept = Kept {
            answer: Answer {
                verdict: Verdict::Allow,
                reason: Reason::HealthGreen,
                decision_id: DecisionId(5),
                degraded: false,
                status_age_ms: Some(3),
                mode: Mode::Enforce,
                shadow: None,
            },
            tap: crate::ids::TapFingerprint([1; 8]),
        };
        let retry = encode_retry(&kept, UnixMillis(77));
        assert_eq!(decode_retry(&retry), Some((kept, UnixMillis(77))));
        assert_eq!(expiry_of(&retry), Some(77));
    }
}
