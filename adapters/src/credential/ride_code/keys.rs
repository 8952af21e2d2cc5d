//! Signing and verifying keys for ride codes: ES256 (P-256) and EdDSA (Ed25519) only.
//!
//! Private keys travel as PKCS#8 PEM, public keys as JWKs with a `kid`. A verifying
//! key is bound to exactly one algorithm, so a token can never choose how its own key
//! is interpreted (no HMAC-with-a-public-key confusion).

use std::fmt;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use serde::{Deserialize, Serialize};
// Signing is for the tools and tests only (feature `test-util`).
#[cfg(any(test, feature = "test-util"))]
use {
    aws_lc_rs::rand::SystemRandom,
    aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair},
    base64::engine::general_purpose::STANDARD,
    jsonwebtoken::EncodingKey,
};

/// The signature algorithms ridegate accepts for ride codes and device certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningAlg {
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl SigningAlg {
    /// The JOSE algorithm.
    pub fn jose(self) -> Algorithm {
        match self {
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }

    /// The algorithm for a JOSE `alg`, if ridegate supports it.
    pub fn from_jose(alg: Algorithm) -> Option<Self> {
        match alg {
            Algorithm::ES256 => Some(Self::Es256),
            Algorithm::EdDSA => Some(Self::EdDsa),
            _ => None,
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        })
    }
}

/// A key that could not be generated, read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The PEM text is not a PKCS#8 private key.
    #[error("not a PKCS#8 PEM private key (expected -----BEGIN PRIVATE KEY-----)")]
    NotPem,
    /// The PKCS#8 key is neither Ed25519 nor P-256.
    #[error("unsupported private key: only Ed25519 (EdDSA) and P-256 (ES256) keys are accepted")]
    UnsupportedPrivateKey,
    /// The JWK is not an Ed25519 or P-256 public key, or is inconsistent.
    #[error("unsupported public key: {0}")]
    UnsupportedJwk(&'static str),
    /// The JWK has no `kid`.
    #[error("public key has no kid")]
    MissingKid,
    /// The crypto library refused (no randomness, internal error).
    #[error("key operation failed: {0}")]
    Crypto(String),
}

/// A public key bound to its one algorithm, parsed once (not on every scan), ready to
/// verify signatures.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: SigningAlg,
    key: ParsedPublicKey,
    thumbprint: [u8; 32],
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", self.alg)
    }
}

impl VerifyingKey {
    /// Reads an Ed25519 (`OKP`/`Ed25519`) or P-256 (`EC`/`P-256`) JWK. A JWK `alg`, if
    /// present, must agree with the key type. The point is validated now, not at the
    /// first scan.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let (alg, raw) = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(p) => {
                if p.curve != EllipticCurve::P256 {
                    return Err(KeyError::UnsupportedJwk("EC keys must be on P-256"));
                }
                let mut raw = vec![0x04];
                raw.extend(b64url(&p.x)?);
                raw.extend(b64url(&p.y)?);
                (SigningAlg::Es256, raw)
            }
            AlgorithmParameters::OctetKeyPair(p) => {
                if p.curve != EllipticCurve::Ed25519 {
                    return Err(KeyError::UnsupportedJwk("OKP keys must be Ed25519"));
                }
                (SigningAlg::EdDsa, b64url(&p.x)?)
            }
            _ => {
                return Err(KeyError::UnsupportedJwk(
                    "only EC P-256 and OKP Ed25519 keys are accepted",
                ));
            }
        };
        let declared = jwk.common.key_algorithm;
        let agrees = matches!(
            (declared, alg),
            (None, _) | (Some(KeyAlgorithm::ES256), SigningAlg::Es256) | (Some(KeyAlgorithm::EdDSA), SigningAlg::EdDsa)
        );
        if !agrees {
            return Err(KeyError::UnsupportedJwk("the JWK's alg does not match its key type"));
        }
        let verification = match alg {
            SigningAlg::Es256 => &ECDSA_P256_SHA256_FIXED as &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
            SigningAlg::EdDsa => &ED25519,
        };
        let key = ParsedPublicKey::new(verification, &raw)
            .map_err(|_| KeyError::UnsupportedJwk("the public key is not a valid point"))?;
        let mut hashed = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        hashed.update(alg.to_string().as_bytes());
        hashed.update(&raw);
        let thumbprint = hashed
            .finish()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::UnsupportedJwk("the key could not be hashed"))?;
        Ok(Self { alg, key, thumbprint })
    }

    /// The one algorithm this key verifies.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// SHA-256 over the algorithm's name and the public key's bytes: the same key gives
    /// the same thumbprint however its JWK is written.
    pub fn thumbprint(&self) -> [u8; 32] {
        self.thumbprint
    }

    /// Whether the compact JWS `header.payload.signature` carries a valid signature by
    /// this key: the bare check every ride-code decision contains, for benchmarks to
    /// compare a decision with.
    pub fn verifies(&self, jws: &str) -> bool {
        jws.rsplit_once('.')
            .is_some_and(|(message, signature)| self.verify(message.as_bytes(), signature) == Ok(true))
    }

    /// Whether `signature` (base64url, as in a compact JWS) is valid for `message`.
    /// `Err` means the signature was not even decodable.
    pub(crate) fn verify(&self, message: &[u8], signature: &str) -> Result<bool, ()> {
        // Both algorithms sign with 64 bytes; decode into the stack, not the heap.
        let mut raw = [0u8; 64];
        match URL_SAFE_NO_PAD.decode_slice(signature, &mut raw) {
            Ok(64) => Ok(self.key.verify_sig(message, &raw).is_ok()),
            Ok(_) => Ok(false),
            Err(_) => Err(()),
        }
    }
}

fn b64url(s: &str) -> Result<Vec<u8>, KeyError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| KeyError::UnsupportedJwk("key coordinates are not base64url"))
}

/// A private signing key with its `kid`: what an issuer (or a phone) signs codes with
/// (behind the `test-util` feature: the server only verifies).
#[cfg(any(test, feature = "test-util"))]
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    alg: SigningAlg,
    pkcs8: Vec<u8>,
    encoding: EncodingKey,
}

#[cfg(any(test, feature = "test-util"))]
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, {})", self.kid, self.alg)
    }
}

#[cfg(any(test, feature = "test-util"))]
impl SigningKey {
    /// A fresh random key.
    pub fn generate(alg: SigningAlg, kid: impl Into<String>) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            SigningAlg::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map(|d| d.as_ref().to_vec())
            }
            SigningAlg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng).map(|d| d.as_ref().to_vec()),
        }
        .map_err(|e| KeyError::Crypto(e.to_string()))?;
        Ok(Self::from_parts(kid.into(), alg, pkcs8))
    }

    /// Reads a PKCS#8 PEM private key (Ed25519 or P-256).
    pub fn from_pkcs8_pem(pem: &str, kid: impl Into<String>) -> Result<Self, KeyError> {
        let body: String = pem
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
            .skip(1)
            .take_while(|l| *l != "-----END PRIVATE KEY-----")
            .collect();
        let der = STANDARD.decode(body).map_err(|_| KeyError::NotPem)?;
        if der.is_empty() {
            return Err(KeyError::NotPem);
        }
        let alg = if Ed25519KeyPair::from_pkcs8(&der).is_ok() {
            SigningAlg::EdDsa
        } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).is_ok() {
            SigningAlg::Es256
        } else {
            return Err(KeyError::UnsupportedPrivateKey);
        };
        Ok(Self::from_parts(kid.into(), alg, der))
    }

    fn from_parts(kid: String, alg: SigningAlg, pkcs8: Vec<u8>) -> Self {
        let encoding = match alg {
            SigningAlg::Es256 => EncodingKey::from_ec_der(&pkcs8),
            SigningAlg::EdDsa => EncodingKey::from_ed_der(&pkcs8),
        };
        Self {
            kid,
            alg,
            pkcs8,
            encoding,
        }
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key's algorithm.
    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pkcs8_pem(&self) -> String {
        let b64 = STANDARD.encode(&self.pkcs8);
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    /// The public half as a JWK with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Result<Jwk, KeyError> {
        let crypto = |e: aws_lc_rs::error::KeyRejected| KeyError::Crypto(e.to_string());
        let value = match self.alg {
            SigningAlg::EdDsa => {
                let pair = Ed25519KeyPair::from_pkcs8(&self.pkcs8).map_err(crypto)?;
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                })
            }
            SigningAlg::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.pkcs8).map_err(crypto)?;
                // Uncompressed SEC1 point: 0x04 || x || y.
                let point = pair.public_key().as_ref();
                serde_json::json!({
                    "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                })
            }
        };
        serde_json::from_value(value).map_err(|e| KeyError::Crypto(e.to_string()))
    }

    pub(crate) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_algorithm() {
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
            let key = SigningKey::generate(alg, "k1").unwrap();
            let back = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem(), "k1").unwrap();
            assert_eq!(back.alg(), alg);
            assert_eq!(back.public_jwk().unwrap(), key.public_jwk().unwrap());
        }
    }

    #[test]
    fn public_jwks_load_as_verifying_keys_bound_to_their_algorithm() {
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
            let jwk = SigningKey::generate(alg, "k").unwrap().public_jwk().unwrap();
            assert_eq!(VerifyingKey::from_jwk(&jwk).unwrap().alg(), alg);
        }
    }

    #[test]
    fn rejects_garbage_pem_and_unsupported_jwks() {
        assert_eq!(SigningKey::from_pkcs8_pem("hello", "k").unwrap_err(), KeyError::NotPem);
        let hmac: Jwk = serde_json::from_str(r#"{"kty":"oct","k":"c2VjcmV0","kid":"h"}"#).unwrap();
        assert!(matches!(
            VerifyingKey::from_jwk(&hmac),
            Err(KeyError::UnsupportedJwk(_))
        ));
        let p384: Jwk = serde_json::from_str(r#"{"kty":"EC","crv":"P-384","x":"AAAA","y":"AAAA","kid":"p"}"#).unwrap();
        assert!(matches!(
            VerifyingKey::from_jwk(&p384),
            Err(KeyError::UnsupportedJwk(_))
        ));
        let mut lying = SigningKey::generate(SigningAlg::EdDsa, "e")
            .unwrap()
            .public_jwk()
            .unwrap();
        lying.common.key_algorithm = Some(KeyAlgorithm::ES256);
        assert!(matches!(
            VerifyingKey::from_jwk(&lying),
            Err(KeyError::UnsupportedJwk(_))
        ));
    }

    #[test]
    fn rejects_a_point_not_on_the_curve() {
        let jwk: Jwk = serde_json::from_str(&format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{0}","y":"{0}","kid":"bad"}}"#,
            URL_SAFE_NO_PAD.encode([1u8; 32])
        ))
        .unwrap();
        assert!(matches!(VerifyingKey::from_jwk(&jwk), Err(KeyError::UnsupportedJwk(_))));
    }
}
