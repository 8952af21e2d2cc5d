//! Identifiers that stand in for personal data: identity pseudonyms, credential ids and
//! the keyed hashes behind single-use and idempotency records, plus validation of the
//! resident ID numbers they are derived from.
//!
//! Every id is a 128-bit keyed hash under the operator's secret with a per-purpose
//! domain, so the same ID number (or card number) always maps to the same id on every
//! instance that shares the secret, while the number itself cannot be recovered or
//! guessed without it. No raw ID number is kept past [`Pseudonymizer::identity`].
//!
//! Identity pseudonyms use HMAC-SHA-256 (truncated): ID numbers have little entropy, the
//! hash is computed only when a link is made, and HMAC is the conservative choice.
//! Credential, request and code keys are computed on every tap and use SipHash-2-4 with
//! 128-bit output under a key derived from the secret — a PRF designed for short inputs
//! ("SipHash: a fast short-input PRF", Aumasson & Bernstein) at about 35 ns instead of
//! 170 ns.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

use ridegate_core::clock::Clock;
use ridegate_core::credential::{Credential, LinkKey};
use ridegate_core::model::{Direction, UnixMillis};

/// A 128-bit keyed hash, rendered as 32 lowercase hex characters.
macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(hex_str(&hex16(&self.0)))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = InvalidHexId;

            fn from_str(s: &str) -> Result<Self, InvalidHexId> {
                parse_hex16(s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(hex_str(&hex16(&self.0)))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hash_id! {
    /// A rider's identity pseudonym: the keyed hash of their ID number.
    IdentityId
}
hash_id! {
    /// A credential's id: the keyed hash of its link key (issuer and ride account, card
    /// number, or ticket kind and number).
    CredentialId
}
hash_id! {
    /// The keyed hash of a ride code's issuer (or phone key) and `jti`: what the
    /// single-use guard remembers.
    CodeKey
}
hash_id! {
    /// The keyed hash of a gate id and request id: what idempotency records are kept by.
    RequestKey
}

/// A keyed hash of what a tap asked (see [`Pseudonymizer::tap`]), kept beside the answer
/// to a request so that reusing a request id for another tap is seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TapFingerprint(pub [u8; 8]);

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// 16 bytes as 32 lowercase hex digits, by table: ids are rendered on every decision
/// (for its audit record), and per-byte `{:02x}` formatting showed in profiles.
fn hex16(bytes: &[u8; 16]) -> [u8; 32] {
    let mut digits = [0u8; 32];
    for (pair, b) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX_DIGITS[usize::from(b >> 4)];
        pair[1] = HEX_DIGITS[usize::from(b & 0x0f)];
    }
    digits
}

/// Hex digits as text (they are ASCII, so this never falls back to the empty string).
fn hex_str(digits: &[u8]) -> &str {
    std::str::from_utf8(digits).unwrap_or_default()
}

/// A hex id that is not 32 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 32 hex characters")]
pub struct InvalidHexId;

fn parse_hex16(s: &str) -> Result<[u8; 16], InvalidHexId> {
    let bytes = s.as_bytes();
    if bytes.len() != 32 {
        return Err(InvalidHexId);
    }
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = hex_value(pair[0]).ok_or(InvalidHexId)?;
        let lo = hex_value(pair[1]).ok_or(InvalidHexId)?;
        out[i] = hi << 4 | lo;
    }
    Ok(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A `BuildHasher` for maps keyed by the ids above. The ids are HMAC outputs: their
/// bytes are already uniform and unpredictable without the secret, so hashing them
/// again (SipHash) would be wasted work on the hot path; the first eight bytes serve.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdHasher;

impl std::hash::BuildHasher for IdHasher {
    type Hasher = IdHasherState;

    fn build_hasher(&self) -> IdHasherState {
        IdHasherState(0)
    }
}

/// The state of [`IdHasher`]: folds written bytes into a `u64`.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdHasherState(u64);

impl std::hash::Hasher for IdHasherState {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    // Arrays hash their length first; it is the same for every id, so skip it.
    fn write_usize(&mut self, _: usize) {}
}

/// `N` random bytes (see [`random_bytes`]) as `2N` lowercase hex digits.
pub fn random_hex<const N: usize>() -> String {
    random_bytes::<N>().iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from the system's secure random generator. Should the generator fail (it
/// does not on Linux once booted), the bytes come from the clock and process id instead:
/// callers use them for uniqueness, and a panic would be worse.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            ^ u128::from(std::process::id()) << 64;
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = nanos.to_le_bytes()[i % 16];
        }
    }
    bytes
}

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// Turns personal data into keyed hashes. One per process, built from the operator's
/// secret; instances that share state must share the secret.
///
/// HMAC-SHA-256 from RustCrypto: the keyed inner and outer states are computed once and
/// cloned per hash, and SHA-NI does the compression (≈170 ns here, against ≈300 ns
/// through aws-lc's HMAC context copy). SipHash keys are derived from the same secret.
#[derive(Clone)]
pub struct Pseudonymizer {
    keyed: Hmac<Sha256>,
    credentials: CredentialHasher,
}

/// The keyed hashes of what a gate is shown — credentials and ride codes — under the
/// credential key, a SipHash key derived from the secret. It is all an offline gate
/// needs to find a credential in the gate state feed; it cannot compute identity
/// pseudonyms, which are keyed by the secret itself.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialHasher {
    key: [u8; 16],
}

impl fmt::Debug for CredentialHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialHasher(..)")
    }
}

impl CredentialHasher {
    fn new(key: [u8; 16]) -> Self {
        Self { key }
    }

    /// The key as 32 hex characters, for handing to gates.
    pub fn key_hex(&self) -> String {
        hex_str(&hex16(&self.key)).to_owned()
    }

    /// A hasher under the key [`CredentialHasher::key_hex`] gave.
    pub fn from_hex(key: &str) -> Result<Self, InvalidHexId> {
        parse_hex16(key).map(Self::new)
    }

    /// The id of a credential.
    pub fn credential(&self, key: &LinkKey<'_>) -> CredentialId {
        let id = match key {
            LinkKey::RideAccount { issuer, account } => {
                self.sip(b"ride-account", &[issuer.as_bytes(), account.as_bytes()])
            }
            LinkKey::Card { number } => self.sip(b"card", &[number.as_bytes()]),
            LinkKey::Ticket { kind, number } => self.sip(b"ticket", &[kind.label().as_bytes(), number.as_bytes()]),
        };
        CredentialId(id)
    }

    /// The single-use key of a ride code.
    pub fn code(&self, form: &[u8], scope: &[u8], jti: &str) -> CodeKey {
        CodeKey(self.sip(b"code", &[form, scope, jti.as_bytes()]))
    }

    /// SipHash-2-4-128 over a domain and length-prefixed parts.
    fn sip(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; 16] {
        use std::hash::Hasher as _;
        let mut h = siphasher::sip128::SipHasher24::new_with_key(&self.key);
        h.write(domain);
        for part in parts {
            h.write(&(part.len() as u64).to_le_bytes());
            h.write(part);
        }
        siphasher::sip128::Hasher128::finish128(&h).as_bytes()
    }
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymizer(..)")
    }
}

/// A secret shorter than [`MIN_SECRET_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pseudonym secret must be at least {MIN_SECRET_BYTES} bytes, got {0}")]
pub struct SecretTooShort(pub usize);

impl Pseudonymizer {
    /// A pseudonymizer keyed by `secret`.
    pub fn new(secret: &[u8]) -> Result<Self, SecretTooShort> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretTooShort(secret.len()));
        }
        Ok(Self::keyed(secret))
    }

    /// A pseudonymizer with a fresh random secret: pseudonyms are stable only within
    /// this process.
    pub fn random() -> Self {
        Self::keyed(&random_bytes::<32>())
    }

    fn keyed(secret: &[u8]) -> Self {
        let keyed = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
            Ok(keyed) => keyed,
            // HMAC takes keys of every length.
            Err(_) => unreachable!("HMAC-SHA-256 accepts any key length"),
        };
        let mut this = Self {
            keyed,
            credentials: CredentialHasher::new([0; 16]),
        };
        this.credentials = CredentialHasher::new(this.mac(b"siphash-key", &[]));
        this
    }

    /// The hashes of credentials and codes alone, for gates.
    pub fn credentials(&self) -> &CredentialHasher {
        &self.credentials
    }

    /// The pseudonym of a validated resident ID.
    pub fn identity(&self, id: &ResidentId) -> IdentityId {
        IdentityId(self.mac(b"identity", &[&id.0]))
    }

    /// The id of a credential.
    pub fn credential(&self, key: &LinkKey<'_>) -> CredentialId {
        self.credentials.credential(key)
    }

    /// What a tap asked, for telling a gate's retry from another tap that reuses its
    /// request id: the credential as presented, the direction, the station and line.
    pub fn tap(
        &self,
        credential: &Credential,
        direction: Direction,
        station_id: &str,
        line_id: &str,
    ) -> TapFingerprint {
        let direction: &[u8] = match direction {
            Direction::Entry => b"entry",
            Direction::Exit => b"exit",
        };
        let (kind, number): (&[u8], &str) = match credential {
            Credential::RideCode(text) => (b"code", text),
            Credential::Card { number, .. } => (b"card", number.as_str()),
            Credential::Ticket { kind, number } => (kind.label().as_bytes(), number.as_str()),
            Credential::Uncovered(kind) => (b"uncovered", kind.label()),
        };
        let h = self.sip(
            b"tap",
            &[
                kind,
                number.as_bytes(),
                direction,
                station_id.as_bytes(),
                line_id.as_bytes(),
            ],
        );
        let mut out = [0u8; 8];
        out.copy_from_slice(&h[..8]);
        TapFingerprint(out)
    }

    /// What a ride-code tap asked, once its code verified: the code's single-use key
    /// stands for the code (the same code under any certificate or signature encoding is
    /// the same tap), so the QR text need not be hashed again.
    pub fn code_tap(&self, code: CodeKey, direction: Direction, station_id: &str, line_id: &str) -> TapFingerprint {
        let direction: &[u8] = match direction {
            Direction::Entry => b"entry",
            Direction::Exit => b"exit",
        };
        let h = self.sip(
            b"code-tap",
            &[&code.0, direction, station_id.as_bytes(), line_id.as_bytes()],
        );
        let mut out = [0u8; 8];
        out.copy_from_slice(&h[..8]);
        TapFingerprint(out)
    }

    /// Who owns the ride codes a tap uses: its request and what it asked, so a retry of
    /// the same tap is never a replay, but another tap under the same request id is.
    pub fn owner(&self, request: RequestKey, tap: TapFingerprint) -> RequestKey {
        RequestKey(self.sip(b"owner", &[&request.0, &tap.0]))
    }

    /// The idempotency key of a gate's request.
    pub fn request(&self, gate_id: &str, request_id: &str) -> RequestKey {
        RequestKey(self.sip(b"request", &[gate_id.as_bytes(), request_id.as_bytes()]))
    }

    /// SipHash-2-4-128 under the credential key.
    fn sip(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; 16] {
        self.credentials.sip(domain, parts)
    }

    /// HMAC over a domain and length-prefixed parts, so no two inputs collide by
    /// concatenation.
    fn mac(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; 16] {
        let mut mac = self.keyed.clone();
        mac.update(domain);
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag[..16]);
        out
    }
}

/// Who a record is about, as given by a file or a caller: the ID number or the
/// pseudonym itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The ID number is not valid.
    #[error(transparent)]
    BadIdNumber(#[from] ResidentIdError),
    /// Neither or both were given.
    #[error("exactly one of id_number and identity is required")]
    NeedExactlyOne,
}

impl Pseudonymizer {
    /// The pseudonym for a record that names its subject by ID number or by pseudonym.
    pub fn subject(&self, id_number: Option<&str>, identity: Option<IdentityId>) -> Result<IdentityId, SubjectError> {
        match (id_number, identity) {
            (Some(number), None) => Ok(self.identity(&ResidentId::parse(number)?)),
            (None, Some(identity)) => Ok(identity),
            _ => Err(SubjectError::NeedExactlyOne),
        }
    }
}

/// An 18-character PRC resident ID number that passed validation. Its contents are
/// never printed: `Debug` shows a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct ResidentId([u8; 18]);

impl fmt::Debug for ResidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResidentId(<redacted>)")
    }
}

/// Why an ID number was rejected. Messages name the part that is wrong, never the
/// number itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResidentIdError {
    /// Not 18 characters.
    #[error("ID number must be 18 characters, got {0}")]
    WrongLength(usize),
    /// A non-digit among the first 17 characters, or a last character other than a
    /// digit or X.
    #[error("ID number has an invalid character at position {0} (digits only, last may be X)")]
    BadCharacter(usize),
    /// The first two digits are not a province code.
    #[error("ID number's region code (characters 1-6) is not a valid province")]
    BadRegion,
    /// Characters 7–14 are not a real date.
    #[error("ID number's birth date (characters 7-14) is not a real date")]
    BadBirthDate,
    /// Characters 7–14 are a date after today (in China Standard Time).
    #[error("ID number's birth date (characters 7-14) is in the future")]
    BirthInFuture,
    /// The check digit does not match.
    #[error("ID number's check digit (character 18) does not match the first 17")]
    BadCheckDigit,
}

const CHECK_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK_CHARS: &[u8; 11] = b"10X98765432";
const PROVINCES: [u8; 34] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53, 54, 61, 62, 63,
    64, 65, 71, 81, 82,
];

impl ResidentId {
    /// Validates format, region, birth date (a real date, not after today by the system
    /// clock) and check digit (GB 11643-1999).
    pub fn parse(s: &str) -> Result<Self, ResidentIdError> {
        Self::parse_at(s, Clock::System.now())
    }

    /// [`ResidentId::parse`] with "today" taken from `now` in China Standard Time.
    pub fn parse_at(s: &str, now: UnixMillis) -> Result<Self, ResidentIdError> {
        let raw = s.as_bytes();
        if raw.len() != 18 {
            return Err(ResidentIdError::WrongLength(s.chars().count()));
        }
        let mut id = [0u8; 18];
        for (i, &c) in raw.iter().enumerate() {
            id[i] = match c {
                b'0'..=b'9' => c,
                b'x' | b'X' if i == 17 => b'X',
                _ => return Err(ResidentIdError::BadCharacter(i + 1)),
            };
        }
        let digit = |i: usize| u32::from(id[i] - b'0');
        let province = (digit(0) * 10 + digit(1)) as u8;
        if !PROVINCES.contains(&province) {
            return Err(ResidentIdError::BadRegion);
        }
        let year = (6..10).fold(0, |acc, i| acc * 10 + digit(i));
        let month = digit(10) * 10 + digit(11);
        let day = digit(12) * 10 + digit(13);
        if !(1900..=2099).contains(&year) || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month)
        {
            return Err(ResidentIdError::BadBirthDate);
        }
        if (year, month, day) > china_date(now) {
            return Err(ResidentIdError::BirthInFuture);
        }
        if id[17] != check_char(&id) {
            return Err(ResidentIdError::BadCheckDigit);
        }
        Ok(Self(id))
    }
}

fn check_char(id: &[u8]) -> u8 {
    let sum: u32 = CHECK_WEIGHTS.iter().zip(id).map(|(w, c)| w * u32::from(c - b'0')).sum();
    CHECK_CHARS[(sum % 11) as usize]
}

/// The civil date (year, month, day) at `at` in China Standard Time (UTC+8).
fn china_date(at: UnixMillis) -> (u32, u32, u32) {
    const CST_OFFSET_MS: i64 = 8 * 3_600_000;
    // Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's civil_from_days).
    let days = at.0.saturating_add(CST_OFFSET_MS).div_euclid(86_400_000) + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let clamp = |v: i64| u32::try_from(v).unwrap_or(0);
    (clamp(year), clamp(month), clamp(day))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A valid but made-up resident ID number, distinct for every `n` below 10^9: for
/// demos, load tests and fixtures. Region 110101 (Beijing Dongcheng); the birth date and
/// sequence encode `n`.
#[cfg(any(test, feature = "test-util"))]
pub fn synthetic_resident_id(n: u64) -> String {
    let day_index = n / 1000;
    let seq = n % 1000;
    let year = 1940 + (day_index / 336) % 80;
    let month = 1 + (day_index / 28) % 12;
    let day = 1 + day_index % 28;
    let mut id = format!("110101{year:04}{month:02}{day:02}{seq:03}").into_bytes();
    let check = check_char(&id);
    id.push(check);
    // Only ASCII was written above.
    String::from_utf8(id).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "11010519491231002X";

    #[test]
    fn a_birth_date_after_today_is_refused() {
        // The example: born 2099-01-01, check digit right.
        assert_eq!(
            ResidentId::parse("110105209901010012"),
            Err(ResidentIdError::BirthInFuture)
        );
        // 2026-12-01 16:30 UTC is already 2026-12-02 in Beijing.
        let at = UnixMillis(1_796_142_600_000);
        assert_eq!(china_date(at), (2026, 12, 2));
        assert_eq!(china_date(UnixMillis(0)), (1970, 1, 1));
        assert_eq!(china_date(UnixMillis(951_782_400_000)), (2000, 2, 29));
        let born = |date: &str| {
            let mut id = format!("110105{date}001").into_bytes();
            id.push(check_char(&id));
            String::from_utf8(id).unwrap()
        };
        assert!(ResidentId::parse_at(&born("20261202"), at).is_ok(), "born today");
        assert_eq!(
            ResidentId::parse_at(&born("20261203"), at),
            Err(ResidentIdError::BirthInFuture)
        );
    }

    #[test]
    fn accepts_a_known_valid_number_and_lowercase_x() {
        assert!(ResidentId::parse(VALID).is_ok());
        assert!(ResidentId::parse(&VALID.to_lowercase()).is_ok());
    }

    #[test]
    fn rejects_each_kind_of_bad_number_with_its_own_error() {
        assert_eq!(
            ResidentId::parse("1101051949123100"),
            Err(ResidentIdError::WrongLength(16))
        );
        assert_eq!(
            ResidentId::parse("11010519491231002XX"),
            Err(ResidentIdError::WrongLength(19))
        );
        assert_eq!(
            ResidentId::parse("1101A519491231002X"),
            Err(ResidentIdError::BadCharacter(5))
        );
        assert_eq!(
            ResidentId::parse("X10105194912310020"),
            Err(ResidentIdError::BadCharacter(1))
        );
        assert_eq!(ResidentId::parse("99010519491231002X"), Err(ResidentIdError::BadRegion));
        assert_eq!(
            ResidentId::parse("110105194902300021"),
            Err(ResidentIdError::BadBirthDate)
        );
        assert_eq!(
            ResidentId::parse("110105194913010021"),
            Err(ResidentIdError::BadBirthDate)
        );
        assert_eq!(
            ResidentId::parse("110105194912310021"),
            Err(ResidentIdError::BadCheckDigit)
        );
    }

    #[test]
    fn leap_days_follow_the_gregorian_rule() {
        let with_check = |body: &str| {
            let mut id = body.as_bytes().to_vec();
            id.push(check_char(&id));
            String::from_utf8(id).unwrap()
        };
        assert!(ResidentId::parse(&with_check("11010520000229001")).is_ok());
        assert_eq!(
            ResidentId::parse(&with_check("11010519000229001")),
            Err(ResidentIdError::BadBirthDate)
        );
    }

    #[test]
    fn errors_never_contain_the_number() {
        for bad in ["110105194912310021", "99010519491231002X", "1101051949123100"] {
            let msg = ResidentId::parse(bad).unwrap_err().to_string();
            assert!(!msg.contains("1949"), "{msg}");
        }
        assert!(!format!("{:?}", ResidentId::parse(VALID).unwrap()).contains("1949"));
    }

    #[test]
    fn synthetic_ids_are_valid_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..20_000).map(synthetic_resident_id).collect();
        assert_eq!(ids.len(), 20_000);
        for id in ids.iter().take(2_000) {
            ResidentId::parse(id).unwrap();
        }
    }

    #[test]
    fn pseudonyms_are_keyed_and_stable() {
        let a = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        let b = Pseudonymizer::new(b"fedcba9876543210").unwrap();
        let id = ResidentId::parse(VALID).unwrap();
        assert_eq!(a.identity(&id), a.identity(&id));
        assert_ne!(a.identity(&id), b.identity(&id));
        assert_eq!(Pseudonymizer::new(b"short").unwrap_err(), SecretTooShort(5));
    }

    #[test]
    fn domains_and_parts_do_not_collide() {
        let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        assert_ne!(p.request("ab", "c"), p.request("a", "bc"));
        assert_ne!(p.credentials().code(b"a", b"", "b").0, p.request("a", "b").0);
        assert_ne!(
            p.credentials().code(b"issuer", b"ab", "c"),
            p.credentials().code(b"issuer", b"a", "bc")
        );
    }

    #[test]
    fn hex_ids_round_trip_and_reject_garbage() {
        let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
        let id = p.identity(&ResidentId::parse(VALID).unwrap());
        assert_eq!(id.to_string().parse::<IdentityId>(), Ok(id));
        assert_eq!("xyz".parse::<IdentityId>(), Err(InvalidHexId));
        assert_eq!("g".repeat(32).parse::<IdentityId>(), Err(InvalidHexId));
        let mut bytes = [0u8; 16];
        bytes[0] = 0x0f;
        bytes[15] = 0xa9;
        let known = IdentityId(bytes);
        assert_eq!(known.to_string(), "0f0000000000000000000000000000a9");
        assert_eq!(
            serde_json::to_string(&known).unwrap(),
            "\"0f0000000000000000000000000000a9\""
        );
    }
}
