//! Ride-code verification: compact JWS codes signed by an issuer, or signed on the
//! phone by a device key that the issuer certified.
//!
//! Two forms of QR text:
//! - **issuer-signed**: `header.payload.signature`, header `typ` = [`CODE_TYP`], claims
//!   `iss` (issuer id), `sub` (ride account), `jti`, `iat`, `exp`, optional `nbf`;
//! - **device-signed**: `<certificate>~<code>`. The certificate is an issuer-signed JWS
//!   with `typ` = [`CERT_TYP`] and claims `iss`, `sub`, `jti` (certificate id), `iat`,
//!   `exp` and `cnf.jwk` (the phone's public key); the code is a JWS signed by that key
//!   with `typ` = [`CODE_TYP`] and claims `jti`, `iat`, `exp`, optional `nbf`. A phone can
//!   show such codes with no network. Verified certificates are cached by their SHA-256,
//!   so a scan then costs one signature check.
//!
//! Every failure is a [`CodeError`] that maps to its own deny reason. Times are judged
//! by ridegate's clock with the issuer's clock skew.
//!
//! The order of checks, and so which reason a code with several faults gets (the
//! README's "Ride codes" section and `ridegate.v1.Reason` document the same):
//! 1. size: longer than the limit → `CODE_OVERSIZE`;
//! 2. device form only — the certificate: not three base64url parts or bad JSON →
//!    `CODE_CERT_INVALID`; an algorithm other than ES256/EdDSA → `CODE_ALG_NOT_ALLOWED`;
//!    a `kid` no issuer has → `CODE_CERT_INVALID` (or `CODE_UNKNOWN_ISSUER` when its
//!    `iss` is no configured issuer); bad signature, claims, lifetime or an issuer that
//!    does not certify devices → `CODE_CERT_INVALID`; then revoked → `CODE_CERT_REVOKED`,
//!    expired → `CODE_CERT_EXPIRED`, issued in the future → `CODE_CERT_INVALID`;
//! 3. the code's shape: three non-empty base64url parts with a JSON header, no `crit`,
//!    no key of its own (`jwk`, `jku`, `x5u`, `x5c`) → else `CODE_MALFORMED`; an
//!    algorithm other than ES256/EdDSA → `CODE_ALG_NOT_ALLOWED`; `typ` must be
//!    `rc+jwt` (a certificate's `typ` → `CODE_WRONG_TYPE`);
//! 4. the key (issuer form): a `kid` no issuer has → `CODE_UNKNOWN_KEY` if the
//!    (unverified) `iss` is a configured issuer, else `CODE_UNKNOWN_ISSUER`; the header's
//!    `alg` must match the key and be allowed for its issuer → `CODE_ALG_NOT_ALLOWED`;
//! 5. the signature → `CODE_BAD_SIGNATURE` (undecodable → `CODE_MALFORMED`);
//! 6. the claims: `jti` (1–128 bytes), `iat`, `exp`, and in the issuer form `sub`, each
//!    present once with the right type → else `CODE_MALFORMED`; in the issuer form `iss`
//!    must be the key's issuer: missing → `CODE_MALFORMED`, another configured issuer →
//!    `CODE_UNKNOWN_KEY` (that issuer has no such key), unknown → `CODE_UNKNOWN_ISSUER`;
//! 7. the times — `iat`, `exp` and `nbf` are JWT NumericDates: seconds, fractions
//!    allowed — `exp` before `iat` → `CODE_MALFORMED`; then expired (`exp` + skew ≤ now)
//!    → `CODE_EXPIRED`; not yet valid (the later of `iat` and `nbf`, − skew, > now) →
//!    `CODE_NOT_YET_VALID`; `exp` − `iat` beyond the issuer's maximum →
//!    `CODE_LIFETIME_TOO_LONG`.
//!
//! A code is single-use by [`VerifiedCode::code_key`]: the issuer and `jti` for an
//! issuer-signed code; the phone key's SHA-256 thumbprint and `jti` for a device-signed
//! one — whichever certificate carries it. ECDSA signatures are malleable (high-S);
//! that does not matter, since nothing is keyed by the signature.

mod keys;
#[cfg(any(test, feature = "test-util"))]
mod mint;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "test-util"))]
pub use keys::SigningKey;
pub use keys::{KeyError, SigningAlg, VerifyingKey};
#[cfg(any(test, feature = "test-util"))]
pub use mint::{CodeMinter, DeviceCodeMinter, MintError};

use crate::ids::{CodeKey, CredentialHasher};
use crate::settings::{InvalidSetting, invalid};
use ridegate_core::clock::millis;
use ridegate_core::model::{Reason, UnixMillis};

/// `typ` header of a ride code.
pub const CODE_TYP: &str = "rc+jwt";
/// `typ` header of a device certificate.
pub const CERT_TYP: &str = "rc-cert+jwt";

/// One issuer of ride codes, as configured (and as the gate state feed hands it to
/// gates).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuerSpec {
    /// Short stable id, the `iss` claim of its codes (for example `alipay`).
    pub id: String,
    /// Name for operators' screens and logs.
    pub name: String,
    /// Its public keys; every key needs a `kid` unique across all issuers.
    pub keys: Vec<Jwk>,
    /// How its codes are checked.
    pub settings: IssuerSettings,
}

/// How one issuer's codes are checked: the checks in `[issuers.<id>]` of the
/// configuration (where its keys come from is the configuration's business).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerSettings {
    /// Algorithms its codes and certificates may use: `ES256`, `EdDSA`.
    pub algorithms: Vec<SigningAlg>,
    /// Longest allowed code lifetime (`exp` − `iat`).
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Clock skew tolerated on `exp`, `iat` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// Whether it certifies device keys (the offline form).
    pub device_certificates: bool,
    /// Longest allowed device-certificate lifetime.
    #[serde(with = "humantime_serde")]
    pub max_certificate_lifetime: Duration,
    /// Certificate ids (`jti`) it has revoked.
    pub revoked_certificates: Vec<String>,
}

impl Default for IssuerSettings {
    fn default() -> Self {
        Self {
            algorithms: vec![SigningAlg::Es256, SigningAlg::EdDsa],
            max_lifetime: Duration::from_secs(60),
            clock_skew: Duration::from_secs(5),
            device_certificates: true,
            max_certificate_lifetime: Duration::from_secs(30 * 86_400),
            revoked_certificates: Vec::new(),
        }
    }
}

impl IssuerSettings {
    /// Checks what the types alone do not; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.algorithms.is_empty() {
            return invalid("algorithms", "must list at least one of ES256, EdDSA");
        }
        if self.max_lifetime.is_zero() {
            return invalid("max_lifetime", "must be more than 0");
        }
        Ok(())
    }
}

/// Knobs that apply to every issuer: `[ride_codes]` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifierLimits {
    /// Longest QR text accepted, in bytes.
    pub max_code_bytes: usize,
    /// How many verified device certificates to cache.
    pub certificate_cache_capacity: u64,
}

impl Default for VerifierLimits {
    fn default() -> Self {
        Self {
            max_code_bytes: 4096,
            certificate_cache_capacity: 100_000,
        }
    }
}

impl VerifierLimits {
    /// Checks what the types alone do not; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.max_code_bytes == 0 {
            return invalid("max_code_bytes", "must be more than 0");
        }
        Ok(())
    }
}

/// Why a set of issuers could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerSetError {
    /// Two issuers share an id.
    #[error("issuer id {0:?} is configured twice")]
    DuplicateIssuer(String),
    /// An issuer id is empty or has characters outside `[a-z0-9_-]`.
    #[error("issuer id {0:?} must be 1-32 characters of a-z, 0-9, '-' and '_'")]
    BadIssuerId(String),
    /// Two keys share a `kid`.
    #[error("key id {kid:?} is used by both {first:?} and {second:?}; kids must be unique")]
    DuplicateKid {
        /// The kid.
        kid: String,
        /// The issuer that has it first.
        first: String,
        /// The issuer that has it again.
        second: String,
    },
    /// A key could not be used.
    #[error("issuer {issuer:?}, key {index}: {error}")]
    BadKey {
        /// The issuer.
        issuer: String,
        /// The key's position in the issuer's key set.
        index: usize,
        /// What is wrong.
        error: KeyError,
    },
    /// A key's algorithm is not in its issuer's allowed list.
    #[error("issuer {issuer:?}: key {kid:?} is {alg} but the issuer allows only {allowed:?}")]
    KeyAlgNotAllowed {
        /// The issuer.
        issuer: String,
        /// The key.
        kid: String,
        /// The key's algorithm.
        alg: SigningAlg,
        /// What the issuer allows.
        allowed: Vec<SigningAlg>,
    },
}

/// Why a ride code was refused. Each maps to its own [`Reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not a well-formed code.
    #[error("malformed ride code")]
    Malformed,
    /// Longer than the configured maximum.
    #[error("ride code too long")]
    Oversize,
    /// An algorithm the issuer may not use (`none`, HMAC, RSA, …).
    #[error("algorithm not allowed")]
    AlgNotAllowed,
    /// An issuer ridegate does not know.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// A `kid` the issuer does not have.
    #[error("unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Past `exp` (plus skew).
    #[error("expired")]
    Expired,
    /// Before `iat` or `nbf` (minus skew).
    #[error("not yet valid")]
    NotYetValid,
    /// `exp` − `iat` beyond the issuer's maximum.
    #[error("lifetime too long")]
    LifetimeTooLong,
    /// The device certificate has expired.
    #[error("device certificate expired")]
    CertExpired,
    /// The device certificate is malformed, badly signed or not allowed.
    #[error("device certificate invalid")]
    CertInvalid,
    /// The device certificate was revoked.
    #[error("device certificate revoked")]
    CertRevoked,
    /// A valid JWS of another kind (a certificate shown as a code, say).
    #[error("wrong token type")]
    WrongType,
}

impl CodeError {
    /// The deny reason for this failure.
    pub fn reason(self) -> Reason {
        match self {
            Self::Malformed => Reason::CodeMalformed,
            Self::Oversize => Reason::CodeOversize,
            Self::AlgNotAllowed => Reason::CodeAlgNotAllowed,
            Self::UnknownIssuer => Reason::CodeUnknownIssuer,
            Self::UnknownKey => Reason::CodeUnknownKey,
            Self::BadSignature => Reason::CodeBadSignature,
            Self::Expired => Reason::CodeExpired,
            Self::NotYetValid => Reason::CodeNotYetValid,
            Self::LifetimeTooLong => Reason::CodeLifetimeTooLong,
            Self::CertExpired => Reason::CodeCertExpired,
            Self::CertInvalid => Reason::CodeCertInvalid,
            Self::CertRevoked => Reason::CodeCertRevoked,
            Self::WrongType => Reason::CodeWrongType,
        }
    }
}

/// A code that verified: whose it is and how long it must be remembered as used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCode {
    /// The issuer's id.
    pub issuer: Arc<str>,
    /// The ride account at that issuer.
    pub account: Arc<str>,
    /// The device certificate's id, for device-signed codes.
    pub certificate: Option<Arc<str>>,
    /// SHA-256 over the phone's public key, for device-signed codes: the code is
    /// single-use per phone key, not per certificate.
    pub device_key: Option<[u8; 32]>,
    /// The code's `jti`.
    pub jti: String,
    /// When the code stops being acceptable (`exp` plus skew): the single-use guard
    /// remembers it until then.
    pub valid_until: UnixMillis,
}

impl VerifiedCode {
    /// The key the single-use guard remembers this code by: the phone key and `jti` of
    /// a device-signed code (so the same code under another certificate — reissued,
    /// signed by the issuer's other key, or for another account — is the same code), the
    /// issuer and `jti` of an issuer-signed one.
    pub fn code_key(&self, hasher: &CredentialHasher) -> CodeKey {
        match &self.device_key {
            Some(thumbprint) => hasher.code(b"device", thumbprint, &self.jti),
            None => hasher.code(b"issuer", self.issuer.as_bytes(), &self.jti),
        }
    }
}

struct Issuer {
    id: Arc<str>,
    algorithms: Vec<SigningAlg>,
    max_lifetime_ms: i64,
    skew_ms: i64,
    device_certificates: bool,
    max_certificate_lifetime_ms: i64,
    revoked: HashSet<String>,
}

/// A device certificate that verified once, cached by the SHA-256 of its text.
struct DeviceCertificate {
    issuer: usize,
    account: Arc<str>,
    id: Arc<str>,
    key: VerifyingKey,
    thumbprint: [u8; 32],
    issued_at: UnixMillis,
    expires_at: UnixMillis,
}

/// Verifies ride codes against the configured issuers.
pub struct RideCodeVerifier {
    issuers: Vec<Issuer>,
    issuer_by_id: HashMap<String, usize>,
    keys: HashMap<String, (usize, VerifyingKey)>,
    certificates: moka::sync::Cache<[u8; 32], Arc<DeviceCertificate>>,
    max_code_bytes: usize,
}

impl std::fmt::Debug for RideCodeVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RideCodeVerifier")
            .field("issuers", &self.issuers.iter().map(|i| &*i.id).collect::<Vec<_>>())
            .field("keys", &self.keys.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct CodeClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    jti: String,
    iat: NumericDate,
    exp: NumericDate,
    #[serde(default)]
    nbf: Option<NumericDate>,
}

#[derive(Deserialize)]
struct CertificateClaims {
    iss: String,
    sub: String,
    jti: String,
    iat: NumericDate,
    exp: NumericDate,
    cnf: Confirmation,
}

/// A JWT NumericDate: seconds since the epoch, fractions allowed (RFC 7519 §2), read to
/// the millisecond (rounded down). Values beyond ±10^11 s are refused as malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NumericDate(UnixMillis);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = f64::deserialize(d)?;
        if !secs.is_finite() || secs.abs() > 1e11 {
            return Err(serde::de::Error::custom("NumericDate out of range"));
        }
        // In range, so the product fits an i64 exactly enough for milliseconds.
        #[allow(clippy::cast_possible_truncation)]
        Ok(Self(UnixMillis((secs * 1_000.0).floor() as i64)))
    }
}

#[derive(Deserialize)]
struct Confirmation {
    jwk: Jwk,
}

/// The three parts of a compact JWS, and its parsed header.
struct Jws<'a> {
    header: jsonwebtoken::Header,
    message: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl RideCodeVerifier {
    /// Loads the issuers; fails on anything that would make verification ambiguous.
    pub fn new(specs: &[IssuerSpec], limits: VerifierLimits) -> Result<Self, IssuerSetError> {
        let mut issuers = Vec::with_capacity(specs.len());
        let mut issuer_by_id = HashMap::new();
        let mut keys: HashMap<String, (usize, VerifyingKey)> = HashMap::new();
        for (index, spec) in specs.iter().enumerate() {
            let id_ok = !spec.id.is_empty()
                && spec.id.len() <= 32
                && spec
                    .id
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
            if !id_ok {
                return Err(IssuerSetError::BadIssuerId(spec.id.clone()));
            }
            if issuer_by_id.insert(spec.id.clone(), index).is_some() {
                return Err(IssuerSetError::DuplicateIssuer(spec.id.clone()));
            }
            for (key_index, jwk) in spec.keys.iter().enumerate() {
                let bad_key = |error| IssuerSetError::BadKey {
                    issuer: spec.id.clone(),
                    index: key_index,
                    error,
                };
                let kid = jwk.common.key_id.clone().ok_or_else(|| bad_key(KeyError::MissingKid))?;
                let key = VerifyingKey::from_jwk(jwk).map_err(bad_key)?;
                if !spec.settings.algorithms.contains(&key.alg()) {
                    return Err(IssuerSetError::KeyAlgNotAllowed {
                        issuer: spec.id.clone(),
                        kid,
                        alg: key.alg(),
                        allowed: spec.settings.algorithms.clone(),
                    });
                }
                if let Some((first, _)) = keys.get(&kid) {
                    return Err(IssuerSetError::DuplicateKid {
                        kid,
                        first: specs[*first].id.clone(),
                        second: spec.id.clone(),
                    });
                }
                keys.insert(kid, (index, key));
            }
            issuers.push(Issuer {
                id: spec.id.as_str().into(),
                algorithms: spec.settings.algorithms.clone(),
                max_lifetime_ms: millis(spec.settings.max_lifetime),
                skew_ms: millis(spec.settings.clock_skew),
                device_certificates: spec.settings.device_certificates,
                max_certificate_lifetime_ms: millis(spec.settings.max_certificate_lifetime),
                revoked: spec.settings.revoked_certificates.iter().cloned().collect(),
            });
        }
        let certificates = moka::sync::Cache::builder()
            .max_capacity(limits.certificate_cache_capacity)
            .time_to_idle(Duration::from_secs(3600))
            .build();
        Ok(Self {
            issuers,
            issuer_by_id,
            keys,
            certificates,
            max_code_bytes: limits.max_code_bytes,
        })
    }

    /// The configured issuer ids, in configuration order.
    pub fn issuer_ids(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| &*i.id)
    }

    /// The latest a code that verifies at `now` can still verify: issued up to the skew
    /// ahead, living at most its issuer's longest lifetime, accepted up to the skew after.
    /// What a gate reports of a code's validity is held to it.
    pub fn latest_valid_until(&self, now: UnixMillis) -> UnixMillis {
        let longest = self
            .issuers
            .iter()
            .map(|i| i.max_lifetime_ms.saturating_add(i.skew_ms.saturating_mul(2)))
            .max()
            .unwrap_or(0);
        now.plus_ms(longest)
    }

    /// Verifies a scanned code at time `now`.
    pub fn verify(&self, qr_text: &str, now: UnixMillis) -> Result<VerifiedCode, CodeError> {
        if qr_text.len() > self.max_code_bytes {
            return Err(CodeError::Oversize);
        }
        match qr_text.split_once('~') {
            None => self.verify_issuer_signed(qr_text, now),
            Some((certificate, code)) => self.verify_device_signed(certificate, code, now),
        }
    }

    fn verify_issuer_signed(&self, token: &str, now: UnixMillis) -> Result<VerifiedCode, CodeError> {
        let jws = parse_jws(token)?;
        expect_typ(&jws.header, CODE_TYP)?;
        let (issuer_index, key) = self.issuer_key(&jws)?;
        verify_signature(&jws, key, CodeError::BadSignature)?;
        let claims: CodeClaims = decode_claims(jws.payload).ok_or(CodeError::Malformed)?;
        let issuer = &self.issuers[issuer_index];
        match claims.iss.as_deref() {
            Some(iss) if iss == &*issuer.id => {}
            None => return Err(CodeError::Malformed),
            // Signed with one issuer's key but naming another: that issuer has no such key.
            Some(iss) if self.issuer_by_id.contains_key(iss) => return Err(CodeError::UnknownKey),
            Some(_) => return Err(CodeError::UnknownIssuer),
        }
        let account = claims.sub.filter(|s| valid_account(s)).ok_or(CodeError::Malformed)?;
        let valid_until = check_times(issuer, claims.iat, claims.exp, claims.nbf, now)?;
        check_jti(&claims.jti)?;
        Ok(VerifiedCode {
            issuer: issuer.id.clone(),
            account: account.into(),
            certificate: None,
            device_key: None,
            jti: claims.jti,
            valid_until,
        })
    }

    fn verify_device_signed(&self, certificate: &str, code: &str, now: UnixMillis) -> Result<VerifiedCode, CodeError> {
        let cert = self.certificate(certificate)?;
        let issuer = &self.issuers[cert.issuer];
        if issuer.revoked.contains(&*cert.id) {
            return Err(CodeError::CertRevoked);
        }
        if now >= cert.expires_at.plus_ms(issuer.skew_ms) {
            return Err(CodeError::CertExpired);
        }
        if cert.issued_at.plus_ms(-issuer.skew_ms) > now {
            return Err(CodeError::CertInvalid);
        }
        let jws = parse_jws(code)?;
        expect_typ(&jws.header, CODE_TYP)?;
        if SigningAlg::from_jose(jws.header.alg) != Some(cert.key.alg()) {
            return Err(CodeError::AlgNotAllowed);
        }
        verify_signature(&jws, &cert.key, CodeError::BadSignature)?;
        let claims: CodeClaims = decode_claims(jws.payload).ok_or(CodeError::Malformed)?;
        let valid_until = check_times(issuer, claims.iat, claims.exp, claims.nbf, now)?;
        check_jti(&claims.jti)?;
        Ok(VerifiedCode {
            issuer: issuer.id.clone(),
            account: cert.account.clone(),
            certificate: Some(cert.id.clone()),
            device_key: Some(cert.thumbprint),
            jti: claims.jti,
            valid_until,
        })
    }

    /// The verified certificate for `text`, from the cache or verified now. Expiry and
    /// revocation are checked by the caller on every use, not only at first sight.
    fn certificate(&self, text: &str) -> Result<Arc<DeviceCertificate>, CodeError> {
        let hash: [u8; 32] = digest::digest(&digest::SHA256, text.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| CodeError::CertInvalid)?;
        if let Some(cert) = self.certificates.get(&hash) {
            return Ok(cert);
        }
        let cert = Arc::new(self.verify_certificate(text)?);
        self.certificates.insert(hash, cert.clone());
        Ok(cert)
    }

    fn verify_certificate(&self, text: &str) -> Result<DeviceCertificate, CodeError> {
        let jws = parse_jws(text).map_err(cert_error)?;
        expect_typ(&jws.header, CERT_TYP).map_err(|_| CodeError::CertInvalid)?;
        let (issuer_index, key) = self.issuer_key(&jws).map_err(|e| match e {
            // A certificate under a key no issuer has is not a valid certificate.
            CodeError::UnknownKey => CodeError::CertInvalid,
            e => e,
        })?;
        verify_signature(&jws, key, CodeError::CertInvalid)?;
        let claims: CertificateClaims = decode_claims(jws.payload).ok_or(CodeError::CertInvalid)?;
        let issuer = &self.issuers[issuer_index];
        if claims.iss != *issuer.id {
            return Err(if self.issuer_by_id.contains_key(&claims.iss) {
                CodeError::CertInvalid
            } else {
                CodeError::UnknownIssuer
            });
        }
        if !issuer.device_certificates || !valid_account(&claims.sub) || claims.jti.is_empty() || claims.jti.len() > 128
        {
            return Err(CodeError::CertInvalid);
        }
        let lifetime_ms = claims.exp.0.since(claims.iat.0);
        if lifetime_ms <= 0 || lifetime_ms > issuer.max_certificate_lifetime_ms {
            return Err(CodeError::CertInvalid);
        }
        let device_key = VerifyingKey::from_jwk(&claims.cnf.jwk).map_err(|_| CodeError::CertInvalid)?;
        if !issuer.algorithms.contains(&device_key.alg()) {
            return Err(CodeError::CertInvalid);
        }
        let thumbprint = device_key.thumbprint();
        Ok(DeviceCertificate {
            issuer: issuer_index,
            account: claims.sub.into(),
            id: claims.jti.into(),
            key: device_key,
            thumbprint,
            issued_at: claims.iat.0,
            expires_at: claims.exp.0,
        })
    }

    /// The issuer and key named by the JWS's `kid`, with the algorithm checked against
    /// both the key and the issuer.
    fn issuer_key(&self, jws: &Jws<'_>) -> Result<(usize, &VerifyingKey), CodeError> {
        let Some(alg) = SigningAlg::from_jose(jws.header.alg) else {
            return Err(CodeError::AlgNotAllowed);
        };
        let Some((issuer, key)) = jws.header.kid.as_deref().and_then(|kid| self.keys.get(kid)) else {
            return Err(self.unknown_key_or_issuer(jws.payload));
        };
        if key.alg() != alg || !self.issuers[*issuer].algorithms.contains(&alg) {
            return Err(CodeError::AlgNotAllowed);
        }
        Ok((*issuer, key))
    }

    /// For an unknown `kid`, tells an unknown issuer apart from a known issuer's
    /// unknown key by peeking at the (unverified) `iss` claim. Error path only.
    fn unknown_key_or_issuer(&self, payload: &str) -> CodeError {
        #[derive(Deserialize)]
        struct Iss {
            iss: Option<String>,
        }
        match decode_claims::<Iss>(payload).and_then(|c| c.iss) {
            Some(iss) if self.issuer_by_id.contains_key(&iss) => CodeError::UnknownKey,
            Some(_) => CodeError::UnknownIssuer,
            None => CodeError::UnknownKey,
        }
    }
}

fn cert_error(e: CodeError) -> CodeError {
    match e {
        CodeError::AlgNotAllowed => CodeError::AlgNotAllowed,
        _ => CodeError::CertInvalid,
    }
}

/// Splits a compact JWS into exactly three parts and parses its header. A header that
/// names an algorithm JOSE does not know (`none`, …) is an algorithm failure, not a
/// format failure; `crit` is refused since ridegate understands no extensions.
fn parse_jws(token: &str) -> Result<Jws<'_>, CodeError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CodeError::Malformed);
    };
    if header_b64.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(CodeError::Malformed);
    }
    let message = &token[..header_b64.len() + 1 + payload.len()];
    let header = match jsonwebtoken::decode_header(token) {
        Ok(header) => header,
        Err(_) => return Err(classify_bad_header(header_b64)),
    };
    // ridegate understands no extensions, and a code never brings its own key: keys
    // come from the issuers' configured sets only.
    if header.crit.is_some()
        || header.jwk.is_some()
        || header.jku.is_some()
        || header.x5u.is_some()
        || header.x5c.is_some()
    {
        return Err(CodeError::Malformed);
    }
    Ok(Jws {
        header,
        message,
        payload,
        signature,
    })
}

/// A header the JOSE parser refused: an algorithm failure when it names an algorithm
/// JOSE does not know (`none`, `HS999`, …), a format failure otherwise (bad base64 or
/// JSON, duplicate members, wrong types).
fn classify_bad_header(header_b64: &str) -> CodeError {
    let unknown_alg = URL_SAFE_NO_PAD
        .decode(header_b64)
        .ok()
        .and_then(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
        .and_then(|v| v.get("alg").and_then(|alg| alg.as_str().map(str::to_owned)))
        .is_some_and(|alg| alg.parse::<jsonwebtoken::Algorithm>().is_err());
    if unknown_alg {
        CodeError::AlgNotAllowed
    } else {
        CodeError::Malformed
    }
}

fn expect_typ(header: &jsonwebtoken::Header, want: &str) -> Result<(), CodeError> {
    match header.typ.as_deref() {
        Some(typ) if typ == want => Ok(()),
        Some(CODE_TYP | CERT_TYP) => Err(CodeError::WrongType),
        _ => Err(CodeError::Malformed),
    }
}

fn verify_signature(jws: &Jws<'_>, key: &VerifyingKey, bad: CodeError) -> Result<(), CodeError> {
    match key.verify(jws.message.as_bytes(), jws.signature) {
        Ok(true) => Ok(()),
        Ok(false) => Err(bad),
        Err(()) => Err(if bad == CodeError::BadSignature {
            CodeError::Malformed
        } else {
            bad
        }),
    }
}

fn decode_claims<T: serde::de::DeserializeOwned>(payload: &str) -> Option<T> {
    let raw = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&raw).ok()
}

fn valid_account(account: &str) -> bool {
    !account.is_empty() && account.len() <= 128
}

fn check_jti(jti: &str) -> Result<(), CodeError> {
    if jti.is_empty() || jti.len() > 128 {
        Err(CodeError::Malformed)
    } else {
        Ok(())
    }
}

/// Consistency, expiry, not-before and lifetime, in that order (see the module docs);
/// returns when the code stops being acceptable.
fn check_times(
    issuer: &Issuer,
    iat: NumericDate,
    exp: NumericDate,
    nbf: Option<NumericDate>,
    now: UnixMillis,
) -> Result<UnixMillis, CodeError> {
    let (iat, exp) = (iat.0, exp.0);
    let lifetime = exp.since(iat);
    if lifetime < 0 {
        return Err(CodeError::Malformed);
    }
    let valid_until = exp.plus_ms(issuer.skew_ms);
    if now >= valid_until {
        return Err(CodeError::Expired);
    }
    let not_before = nbf.map_or(iat, |nbf| nbf.0.max(iat));
    if not_before.plus_ms(-issuer.skew_ms) > now {
        return Err(CodeError::NotYetValid);
    }
    if lifetime > issuer.max_lifetime_ms {
        return Err(CodeError::LifetimeTooLong);
    }
    Ok(valid_until)
}

#[cfg(test)]
mod tests;
