//! Callers of ridegate's non-gate services, authenticated by a bearer token: a JWT
//! signed with one of the caller keys the operator configured, naming the caller's kind
//! and id (and, for ride-code apps, the issuer they speak for).
//!
//! Claims: `sub` (caller id), `kind` (`app`, `upgrade_service`, `ticket_window`,
//! `back_end`, `health_platform`), `issuer` (apps only), `aud` = [`AUDIENCE`], `exp`,
//! `iat`. Verified with jsonwebtoken (ES256 or EdDSA, `kid` picks the key); a verified
//! token is cached by its SHA-256 until it expires, so a caller's next call costs a hash.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::credential::ride_code::{KeyError, VerifyingKey};
// Minting is for the tools and tests only (feature `test-util`).
use ridegate_core::model::UnixMillis;
#[cfg(any(test, feature = "test-util"))]
use {
    crate::credential::ride_code::{SigningAlg, SigningKey},
    jsonwebtoken::{Algorithm, Header},
};

/// The `aud` every caller token must carry.
pub const AUDIENCE: &str = "ridegate";

/// What kind of system is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerKind {
    /// A ride-code app's back end.
    App,
    /// The card upgrade service.
    UpgradeService,
    /// A station ticket window or ticket machine.
    TicketWindow,
    /// The operator's back end.
    BackEnd,
    /// The health-code platform.
    HealthPlatform,
}

impl CallerKind {
    /// A stable label.
    pub fn label(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::UpgradeService => "upgrade_service",
            Self::TicketWindow => "ticket_window",
            Self::BackEnd => "back_end",
            Self::HealthPlatform => "health_platform",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its kind.
    pub kind: CallerKind,
    /// Its id (`sub`).
    pub id: Arc<str>,
    /// For apps: the ride-code issuer it speaks for.
    pub issuer: Option<Arc<str>>,
}

/// Why a token was refused. Messages are safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallerError {
    /// No caller keys are configured, so nobody can be authenticated.
    #[error("no caller keys are configured on this ridegate")]
    NoKeys,
    /// The token is not a well-formed JWT.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// Its `kid` names no configured caller key.
    #[error("the token's key id is not a configured caller key")]
    UnknownKey,
    /// Signature, algorithm, audience or times do not check out.
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// Claims missing or inconsistent (an app token without its issuer, say).
    #[error("the token's claims are not usable: {0}")]
    Claims(&'static str),
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    kind: CallerKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    aud: String,
    exp: u64,
    iat: u64,
}

struct CallerKey {
    decoding: DecodingKey,
    validation: Validation,
}

/// Verifies caller tokens.
pub struct CallerVerifier {
    keys: HashMap<String, CallerKey>,
    skew_ms: i64,
    verified: moka::sync::Cache<[u8; 32], (Caller, UnixMillis)>,
}

impl fmt::Debug for CallerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallerVerifier({} keys)", self.keys.len())
    }
}

impl CallerVerifier {
    /// A verifier for tokens signed by `keys` (ES256 or EdDSA JWKs with distinct `kid`s),
    /// tolerating `clock_skew`.
    pub fn new(keys: &[Jwk], clock_skew: Duration) -> Result<Self, KeyError> {
        let mut by_kid = HashMap::new();
        for jwk in keys {
            let kid = jwk.common.key_id.clone().ok_or(KeyError::MissingKid)?;
            // Validates the key type and point, as ride-code keys are.
            let alg = VerifyingKey::from_jwk(jwk)?.alg();
            let decoding = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Crypto(e.to_string()))?;
            let mut validation = Validation::new(alg.jose());
            // Times are judged with ridegate's clock below, like every other time.
            validation.validate_exp = false;
            validation.set_audience(&[AUDIENCE]);
            validation.set_required_spec_claims(&["exp", "sub", "aud"]);
            by_kid.insert(kid, CallerKey { decoding, validation });
        }
        let verified = moka::sync::Cache::builder().max_capacity(10_000).build();
        Ok(Self {
            keys: by_kid,
            skew_ms: ridegate_core::clock::millis(clock_skew),
            verified,
        })
    }

    /// Whether any caller key is configured.
    pub fn is_configured(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The caller a token names, if the token verifies at `now`.
    pub fn verify(&self, token: &str, now: UnixMillis) -> Result<Caller, CallerError> {
        if self.keys.is_empty() {
            return Err(CallerError::NoKeys);
        }
        let hash: [u8; 32] = digest::digest(&digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| CallerError::Malformed)?;
        if let Some((caller, expires)) = self.verified.get(&hash) {
            if now < expires {
                return Ok(caller);
            }
            self.verified.invalidate(&hash);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| CallerError::Malformed)?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(CallerError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation)
            .map_err(|e| CallerError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let expires = UnixMillis::from_secs(i64::try_from(claims.exp).unwrap_or(i64::MAX));
        let issued = UnixMillis::from_secs(i64::try_from(claims.iat).unwrap_or(i64::MAX));
        if now >= expires.plus_ms(self.skew_ms) {
            return Err(CallerError::Invalid("the token has expired".into()));
        }
        if issued.plus_ms(-self.skew_ms) > now {
            return Err(CallerError::Invalid("the token is issued in the future".into()));
        }
        if claims.sub.is_empty() || claims.sub.len() > 128 {
            return Err(CallerError::Claims("sub must be 1-128 bytes"));
        }
        let issuer = match (claims.kind, claims.issuer) {
            (CallerKind::App, Some(issuer)) if !issuer.is_empty() => Some(Arc::from(issuer)),
            (CallerKind::App, _) => return Err(CallerError::Claims("an app token must name its issuer")),
            (_, Some(_)) => return Err(CallerError::Claims("only app tokens name an issuer")),
            (_, None) => None,
        };
        let caller = Caller {
            kind: claims.kind,
            id: claims.sub.into(),
            issuer,
        };
        self.verified
            .insert(hash, (caller.clone(), expires.plus_ms(self.skew_ms)));
        Ok(caller)
    }
}

/// Mints caller tokens: for `ridegate keys token`, the demo and tests (behind the
/// `test-util` feature: the server never mints).
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone)]
pub struct CallerTokenMinter {
    key: SigningKey,
}

#[cfg(any(test, feature = "test-util"))]
impl CallerTokenMinter {
    /// A minter signing with `key`.
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    /// A token for `kind` / `id` (and `issuer` for apps), valid from `now` for `lifetime`.
    pub fn token(
        &self,
        kind: CallerKind,
        id: &str,
        issuer: Option<&str>,
        now: impl Into<UnixMillis>,
        lifetime: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = u64::try_from(now.into().0 / 1000).unwrap_or(0);
        let claims = Claims {
            sub: id.into(),
            kind,
            issuer: issuer.map(Into::into),
            aud: AUDIENCE.into(),
            exp: iat.saturating_add(lifetime.as_secs()),
            iat,
        };
        let mut header = Header::new(match self.key.alg() {
            SigningAlg::Es256 => Algorithm::ES256,
            SigningAlg::EdDsa => Algorithm::EdDSA,
        });
        header.kid = Some(self.key.kid().to_owned());
        jsonwebtoken::encode(&header, &claims, self.key.encoding())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn setup() -> (CallerVerifier, CallerTokenMinter) {
        let key = SigningKey::generate(SigningAlg::EdDsa, "callers-1").unwrap();
        let verifier = CallerVerifier::new(&[key.public_jwk().unwrap()], Duration::from_secs(30)).unwrap();
        (verifier, CallerTokenMinter::new(key))
    }

    #[test]
    fn a_good_token_names_its_caller_and_is_cached() {
        let (verifier, minter) = setup();
        let now = UnixMillis(1_900_000_000_000);
        let token = minter
            .token(CallerKind::App, "alipay-backend", Some("alipay"), now, HOUR)
            .unwrap();
        let caller = verifier.verify(&token, now).unwrap();
        assert_eq!(
            (caller.kind, &*caller.id, caller.issuer.as_deref()),
            (CallerKind::App, "alipay-backend", Some("alipay"))
        );
        assert_eq!(verifier.verify(&token, now).unwrap(), caller);
        let later = now.plus_ms(2 * 3_600_000);
        assert_eq!(
            verifier.verify(&token, later),
            Err(CallerError::Invalid("the token has expired".into()))
        );
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let (verifier, minter) = setup();
        let now = UnixMillis(1_900_000_000_000);
        assert_eq!(verifier.verify("not a token", now), Err(CallerError::Malformed));
        let stranger = CallerTokenMinter::new(SigningKey::generate(SigningAlg::EdDsa, "other").unwrap());
        let token = stranger.token(CallerKind::BackEnd, "x", None, now, HOUR).unwrap();
        assert_eq!(verifier.verify(&token, now), Err(CallerError::UnknownKey));
        let impostor = CallerTokenMinter::new(SigningKey::generate(SigningAlg::EdDsa, "callers-1").unwrap());
        let token = impostor.token(CallerKind::BackEnd, "x", None, now, HOUR).unwrap();
        assert!(matches!(verifier.verify(&token, now), Err(CallerError::Invalid(_))));
        let expired = minter
            .token(CallerKind::BackEnd, "x", None, now.plus_ms(-7_200_000), HOUR)
            .unwrap();
        assert_eq!(
            verifier.verify(&expired, now),
            Err(CallerError::Invalid("the token has expired".into()))
        );
        let future = minter
            .token(CallerKind::BackEnd, "x", None, now.plus_ms(600_000), HOUR)
            .unwrap();
        assert_eq!(
            verifier.verify(&future, now),
            Err(CallerError::Invalid("the token is issued in the future".into()))
        );
        let app_without_issuer = minter.token(CallerKind::App, "x", None, now, HOUR).unwrap();
        assert!(matches!(
            verifier.verify(&app_without_issuer, now),
            Err(CallerError::Claims(_))
        ));
        let empty = CallerVerifier::new(&[], Duration::ZERO).unwrap();
        assert_eq!(empty.verify("a.b.c", now), Err(CallerError::NoKeys));
    }
}
