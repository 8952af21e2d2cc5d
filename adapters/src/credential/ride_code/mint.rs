//! Minting real signed ride codes: for `ridegate keys`, the demo, the load tool and
//! tests (behind the `test-util` feature: the server never mints). Issuers and phones do
//! the same with their own software; the format is in the parent module's documentation.

use std::time::Duration;

use jsonwebtoken::Header;
use jsonwebtoken::jwk::Jwk;
use serde::Serialize;

use super::keys::{KeyError, SigningKey};
use super::{CERT_TYP, CODE_TYP};
use ridegate_core::model::UnixMillis;

/// A code could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// The key could not sign or export its public half.
    #[error("signing failed: {0}")]
    Sign(String),
    /// The device key's public half could not be exported.
    #[error(transparent)]
    Key(#[from] KeyError),
}

#[derive(Serialize)]
struct CodeClaims<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    jti: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Serialize)]
struct CertificateClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    jti: &'a str,
    iat: i64,
    exp: i64,
    cnf: Confirmation<'a>,
}

#[derive(Serialize)]
struct Confirmation<'a> {
    jwk: &'a Jwk,
}

fn secs(t: UnixMillis) -> i64 {
    t.0.div_euclid(1_000)
}

fn lifetime_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn sign(key: &SigningKey, typ: &str, claims: &impl Serialize) -> Result<String, MintError> {
    let mut header = Header::new(key.alg().jose());
    header.typ = Some(typ.to_owned());
    header.kid = Some(key.kid().to_owned());
    jsonwebtoken::encode(&header, claims, key.encoding()).map_err(|e| MintError::Sign(e.to_string()))
}

/// Signs codes and device certificates as one issuer.
#[derive(Debug, Clone)]
pub struct CodeMinter {
    issuer: String,
    key: SigningKey,
}

impl CodeMinter {
    /// A minter for `issuer` signing with `key` (whose public JWK the verifier has).
    pub fn new(issuer: impl Into<String>, key: SigningKey) -> Self {
        Self {
            issuer: issuer.into(),
            key,
        }
    }

    /// An issuer-signed code for `account`, valid from `issued_at` for `lifetime`.
    pub fn code(
        &self,
        account: &str,
        jti: &str,
        issued_at: impl Into<UnixMillis>,
        lifetime: Duration,
    ) -> Result<String, MintError> {
        let iat = secs(issued_at.into());
        let claims = CodeClaims {
            iss: Some(&self.issuer),
            sub: Some(account),
            jti,
            iat,
            exp: iat.saturating_add(lifetime_secs(lifetime)),
        };
        sign(&self.key, CODE_TYP, &claims)
    }

    /// A code with exactly these claims (any JSON), signed as this issuer's codes are:
    /// for tests of odd but signed claim sets (fractional times, future `nbf`, …).
    pub fn code_with_claims(&self, claims: &serde_json::Value) -> Result<String, MintError> {
        sign(&self.key, CODE_TYP, claims)
    }

    /// A certificate binding `device`'s public key to `account`, so the phone can sign
    /// its own codes offline.
    pub fn device_certificate(
        &self,
        account: &str,
        certificate_id: &str,
        device: &SigningKey,
        issued_at: impl Into<UnixMillis>,
        lifetime: Duration,
    ) -> Result<String, MintError> {
        let mut jwk = device.public_jwk()?;
        jwk.common.key_id = None;
        let iat = secs(issued_at.into());
        let claims = CertificateClaims {
            iss: &self.issuer,
            sub: account,
            jti: certificate_id,
            iat,
            exp: iat.saturating_add(lifetime_secs(lifetime)),
            cnf: Confirmation { jwk: &jwk },
        };
        sign(&self.key, CERT_TYP, &claims)
    }
}

/// Signs codes on a phone with a certified device key.
#[derive(Debug, Clone)]
pub struct DeviceCodeMinter {
    certificate: String,
    key: SigningKey,
}

impl DeviceCodeMinter {
    /// A phone holding `certificate` (from [`CodeMinter::device_certificate`]) and the
    /// matching private `key`.
    pub fn new(certificate: String, key: SigningKey) -> Self {
        Self { certificate, key }
    }

    /// The QR text of a fresh code: `<certificate>~<code>`.
    pub fn code(&self, jti: &str, issued_at: impl Into<UnixMillis>, lifetime: Duration) -> Result<String, MintError> {
        let iat = secs(issued_at.into());
        let claims = CodeClaims {
            iss: None,
            sub: None,
            jti,
            iat,
            exp: iat.saturating_add(lifetime_secs(lifetime)),
        };
        let code = sign(&self.key, CODE_TYP, &claims)?;
        Ok(format!("{}~{code}", self.certificate))
    }
}
