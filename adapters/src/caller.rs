//! Callers of ridegate's non-gate services, authenticated by a bearer token: a JWT
//! signed with one of the caller keys the operator configured, naming the caller's kind
//! and id (and, for ride-code apps, the issuer they speak for).
//!
//! Claims, all required but `issuer`: `sub` (caller id), `kind` (`app`,
//! `upgrade_service`, `ticket_window`, `back_end`, `health_platform`), `issuer` (apps
//! only), `aud` (must name [`CallerSettings::audience`]), `jti` (the token's id, for
//! revocation), `iat`, `exp` (at most the kind's maximum lifetime after `iat`).
//! Verified with jsonwebtoken (ES256 or EdDSA, `kid` picks the key); a token whose `jti`
//! or `kid` is revoked is refused. A verified token is cached by its SHA-256 until it
//! expires, so a caller's next call costs a hash.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::credential::ride_code::{KeyError, VerifyingKey};
use crate::settings::{InvalidSetting, invalid};
use ridegate_core::model::UnixMillis;
// Minting is for the tools and tests only (feature `test-util`).
#[cfg(any(test, feature = "test-util"))]
use {
    crate::credential::ride_code::{SigningAlg, SigningKey},
    jsonwebtoken::{Algorithm, Header},
};

/// The `aud` caller tokens carry unless `[callers] audience` says otherwise.
pub const AUDIENCE: &str = "ridegate";

/// Longest `sub` accepted, in bytes.
const MAX_SUB_BYTES: usize = 128;
/// Longest `jti` accepted, in bytes.
const MAX_JTI_BYTES: usize = 128;

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

    /// The caller in words, with its article, for messages: "an app", "the back end".
    pub fn described(self) -> &'static str {
        match self {
            Self::App => "an app",
            Self::UpgradeService => "the upgrade service",
            Self::TicketWindow => "a ticket window",
            Self::BackEnd => "the back end",
            Self::HealthPlatform => "the health platform",
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

/// `[callers.max_lifetime]`: the longest a token of each kind may live (`exp - iat`), so
/// a leaked token cannot serve for years.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaxLifetimes {
    /// Ride-code app back ends.
    #[serde(with = "humantime_serde")]
    pub app: Duration,
    /// The card upgrade service.
    #[serde(with = "humantime_serde")]
    pub upgrade_service: Duration,
    /// Ticket windows and machines (a shift).
    #[serde(with = "humantime_serde")]
    pub ticket_window: Duration,
    /// The operator's back end, which may do anything: short-lived.
    #[serde(with = "humantime_serde")]
    pub back_end: Duration,
    /// The health-code platform.
    #[serde(with = "humantime_serde")]
    pub health_platform: Duration,
}

impl Default for MaxLifetimes {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        Self {
            app: Duration::from_secs(24 * HOUR),
            upgrade_service: Duration::from_secs(24 * HOUR),
            ticket_window: Duration::from_secs(12 * HOUR),
            back_end: Duration::from_secs(HOUR),
            health_platform: Duration::from_secs(24 * HOUR),
        }
    }
}

impl MaxLifetimes {
    /// The maximum for `kind`.
    pub fn of(&self, kind: CallerKind) -> Duration {
        match kind {
            CallerKind::App => self.app,
            CallerKind::UpgradeService => self.upgrade_service,
            CallerKind::TicketWindow => self.ticket_window,
            CallerKind::BackEnd => self.back_end,
            CallerKind::HealthPlatform => self.health_platform,
        }
    }
}

/// How caller tokens are judged (`[callers]`, beside the keys).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallerSettings {
    /// The `aud` a token must carry (one of, if it is a list).
    pub audience: String,
    /// Clock skew tolerated on a token's `exp` and `iat`.
    #[serde(with = "humantime_serde")]
    pub clock_skew: Duration,
    /// The longest lifetime per caller kind.
    pub max_lifetime: MaxLifetimes,
    /// Token ids (`jti`) refused although their signature is good: a leaked token.
    pub revoked_tokens: Vec<String>,
    /// Key ids (`kid`) whose tokens are all refused: a leaked signing key, while the
    /// key set that still lists it is being replaced.
    pub revoked_keys: Vec<String>,
}

impl Default for CallerSettings {
    fn default() -> Self {
        Self {
            audience: AUDIENCE.into(),
            clock_skew: Duration::from_secs(30),
            max_lifetime: MaxLifetimes::default(),
            revoked_tokens: Vec::new(),
            revoked_keys: Vec::new(),
        }
    }
}

impl CallerSettings {
    /// Checks values the types alone do not.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let max = &self.max_lifetime;
        if self.audience.is_empty() {
            return invalid("audience", "must not be empty");
        }
        for (field, value) in [
            ("max_lifetime.app", max.app),
            ("max_lifetime.upgrade_service", max.upgrade_service),
            ("max_lifetime.ticket_window", max.ticket_window),
            ("max_lifetime.back_end", max.back_end),
            ("max_lifetime.health_platform", max.health_platform),
        ] {
            if value.is_zero() {
                return invalid(field, "must be more than 0");
            }
        }
        Ok(())
    }
}

/// Why a token was refused. Messages are written for the caller: they say what to fix,
/// never name a Rust type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
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
    /// Its `kid` names a revoked key.
    #[error("the token's signing key has been revoked")]
    KeyRevoked,
    /// Its `jti` is revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// The signature does not verify under the key its `kid` names.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// Its `alg` is not its key's algorithm.
    #[error("the token's alg does not match its key")]
    WrongAlgorithm,
    /// A required claim is missing or of the wrong type.
    #[error("the token lacks a valid {0} claim")]
    MissingClaim(&'static str),
    /// Its `aud` does not name this ridegate.
    #[error("the token's aud does not name this ridegate")]
    WrongAudience,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `iat` is in the future.
    #[error("the token is issued in the future")]
    IssuedInFuture,
    /// `exp - iat` is longer than the kind's maximum.
    #[error("{kind} token may live at most {max_secs} s (exp - iat); mint a shorter one")]
    LifetimeTooLong {
        /// The caller kind, described.
        kind: &'static str,
        /// The maximum, in seconds.
        max_secs: u64,
    },
    /// Claims inconsistent (an app token without its issuer, say).
    #[error("the token's claims are not usable: {0}")]
    Claims(&'static str),
}

/// A token's `aud`: one string or a list.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

/// The claims, each optional on the way in so that a missing one is named.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    kind: Option<CallerKind>,
    issuer: Option<String>,
    aud: Option<Audience>,
    jti: Option<String>,
    exp: Option<u64>,
    iat: Option<u64>,
}

struct CallerKey {
    decoding: DecodingKey,
    validation: Validation,
}

/// Verifies caller tokens.
pub struct CallerVerifier {
    keys: HashMap<String, CallerKey>,
    settings: CallerSettings,
    revoked_tokens: HashSet<String>,
    revoked_keys: HashSet<String>,
    skew_ms: i64,
    verified: moka::sync::Cache<[u8; 32], (Caller, UnixMillis)>,
}

impl fmt::Debug for CallerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallerVerifier({} keys)", self.keys.len())
    }
}

fn seconds(claim: Option<u64>, name: &'static str) -> Result<UnixMillis, CallerError> {
    let secs = claim.ok_or(CallerError::MissingClaim(name))?;
    Ok(UnixMillis::from_secs(
        i64::try_from(secs).map_err(|_| CallerError::MissingClaim(name))?,
    ))
}

impl CallerVerifier {
    /// A verifier for tokens signed by `keys` (ES256 or EdDSA JWKs with distinct `kid`s),
    /// judged by `settings`.
    pub fn new(keys: &[Jwk], settings: CallerSettings) -> Result<Self, KeyError> {
        let mut by_kid = HashMap::new();
        for jwk in keys {
            let kid = jwk.common.key_id.clone().ok_or(KeyError::MissingKid)?;
            // Validates the key type and point, as ride-code keys are.
            let alg = VerifyingKey::from_jwk(jwk)?.alg();
            let decoding = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Crypto(e.to_string()))?;
            let mut validation = Validation::new(alg.jose());
            // Times, audience and required claims are judged below, with ridegate's
            // clock and errors that name the claim.
            validation.validate_exp = false;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            by_kid.insert(kid, CallerKey { decoding, validation });
        }
        let verified = moka::sync::Cache::builder().max_capacity(10_000).build();
        Ok(Self {
            keys: by_kid,
            revoked_tokens: settings.revoked_tokens.iter().cloned().collect(),
            revoked_keys: settings.revoked_keys.iter().cloned().collect(),
            skew_ms: ridegate_core::clock::millis(settings.clock_skew),
            settings,
            verified,
        })
    }

    /// Whether any caller key is configured.
    pub fn is_configured(&self) -> bool {
        !self.keys.is_empty()
    }

    /// How many caller keys are configured.
    pub fn key_count(&self) -> usize {
        self.keys.len()
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
        let kid = header.kid.as_deref().ok_or(CallerError::UnknownKey)?;
        if self.revoked_keys.contains(kid) {
            return Err(CallerError::KeyRevoked);
        }
        let key = self.keys.get(kid).ok_or(CallerError::UnknownKey)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.decoding, &key.validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => CallerError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    CallerError::WrongAlgorithm
                }
                _ => CallerError::Malformed,
            })?;
        let claims = data.claims;
        let (caller, expires) = self.judge(claims, now)?;
        self.verified.insert(hash, (caller.clone(), expires));
        Ok(caller)
    }

    /// The caller named by signature-checked `claims`, and when it stops being valid.
    fn judge(&self, claims: Claims, now: UnixMillis) -> Result<(Caller, UnixMillis), CallerError> {
        let jti = claims.jti.ok_or(CallerError::MissingClaim("jti"))?;
        if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
            return Err(CallerError::MissingClaim("jti"));
        }
        if self.revoked_tokens.contains(&jti) {
            return Err(CallerError::Revoked);
        }
        let audience = claims.aud.ok_or(CallerError::MissingClaim("aud"))?;
        if !audience.names(&self.settings.audience) {
            return Err(CallerError::WrongAudience);
        }
        let kind = claims.kind.ok_or(CallerError::MissingClaim("kind"))?;
        let expires = seconds(claims.exp, "exp")?;
        let issued = seconds(claims.iat, "iat")?;
        if now >= expires.plus_ms(self.skew_ms) {
            return Err(CallerError::Expired);
        }
        if issued.plus_ms(-self.skew_ms) > now {
            return Err(CallerError::IssuedInFuture);
        }
        let max = self.settings.max_lifetime.of(kind);
        if expires.0.saturating_sub(issued.0) > ridegate_core::clock::millis(max) {
            return Err(CallerError::LifetimeTooLong {
                kind: kind.described(),
                max_secs: max.as_secs(),
            });
        }
        let sub = claims.sub.ok_or(CallerError::MissingClaim("sub"))?;
        if sub.is_empty() || sub.len() > MAX_SUB_BYTES {
            return Err(CallerError::Claims("sub must be 1-128 bytes"));
        }
        let issuer = match (kind, claims.issuer) {
            (CallerKind::App, Some(issuer)) if !issuer.is_empty() => Some(Arc::from(issuer)),
            (CallerKind::App, _) => return Err(CallerError::Claims("an app token must name its issuer")),
            (_, Some(_)) => return Err(CallerError::Claims("only app tokens name an issuer")),
            (_, None) => None,
        };
        let caller = Caller {
            kind,
            id: sub.into(),
            issuer,
        };
        Ok((caller, expires.plus_ms(self.skew_ms)))
    }
}

/// The claims of a token to mint (tools and tests; behind `test-util`).
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone, Serialize)]
pub struct TokenClaims {
    /// The caller's id.
    pub sub: String,
    /// The caller's kind.
    pub kind: CallerKind,
    /// For apps: the issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The audience.
    pub aud: String,
    /// The token's id.
    pub jti: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
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

    /// The claims of a token for `kind` / `id` (and `issuer` for apps), valid from `now`
    /// for `lifetime`, with a random `jti` and the default audience: change them before
    /// [`sign`](Self::sign) to mint something else.
    pub fn claims(
        kind: CallerKind,
        id: &str,
        issuer: Option<&str>,
        now: impl Into<UnixMillis>,
        lifetime: Duration,
    ) -> TokenClaims {
        let iat = u64::try_from(now.into().0 / 1000).unwrap_or(0);
        let mut jti = [0u8; 16];
        // A failed random source leaves a zero id: still a valid, if revocable-together,
        // token for tests.
        let _ = aws_lc_rs::rand::fill(&mut jti);
        TokenClaims {
            sub: id.into(),
            kind,
            issuer: issuer.map(Into::into),
            aud: AUDIENCE.into(),
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            iat,
            exp: iat.saturating_add(lifetime.as_secs()),
        }
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
        self.sign(&Self::claims(kind, id, issuer, now, lifetime))
    }

    /// A token carrying `claims`.
    pub fn sign(&self, claims: &TokenClaims) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(match self.key.alg() {
            SigningAlg::Es256 => Algorithm::ES256,
            SigningAlg::EdDsa => Algorithm::EdDSA,
        });
        header.kid = Some(self.key.kid().to_owned());
        jsonwebtoken::encode(&header, claims, self.key.encoding())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const NOW: UnixMillis = UnixMillis(1_900_000_000_000);

    fn setup_with(settings: CallerSettings) -> (CallerVerifier, CallerTokenMinter) {
        let key = SigningKey::generate(SigningAlg::EdDsa, "callers-1").unwrap();
        let verifier = CallerVerifier::new(&[key.public_jwk().unwrap()], settings).unwrap();
        (verifier, CallerTokenMinter::new(key))
    }

    fn setup() -> (CallerVerifier, CallerTokenMinter) {
        setup_with(CallerSettings::default())
    }

    #[test]
    fn a_good_token_names_its_caller_and_is_cached() {
        let (verifier, minter) = setup();
        let token = minter
            .token(CallerKind::App, "alipay-backend", Some("alipay"), NOW, HOUR)
            .unwrap();
        let caller = verifier.verify(&token, NOW).unwrap();
        assert_eq!(
            (caller.kind, &*caller.id, caller.issuer.as_deref()),
            (CallerKind::App, "alipay-backend", Some("alipay"))
        );
        assert_eq!(verifier.verify(&token, NOW).unwrap(), caller);
        let later = NOW.plus_ms(2 * 3_600_000);
        assert_eq!(verifier.verify(&token, later), Err(CallerError::Expired));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let (verifier, minter) = setup();
        assert_eq!(verifier.verify("not a token", NOW), Err(CallerError::Malformed));
        let stranger = CallerTokenMinter::new(SigningKey::generate(SigningAlg::EdDsa, "other").unwrap());
        let token = stranger.token(CallerKind::BackEnd, "x", None, NOW, HOUR).unwrap();
        assert_eq!(verifier.verify(&token, NOW), Err(CallerError::UnknownKey));
        let impostor = CallerTokenMinter::new(SigningKey::generate(SigningAlg::EdDsa, "callers-1").unwrap());
        let token = impostor.token(CallerKind::BackEnd, "x", None, NOW, HOUR).unwrap();
        assert_eq!(verifier.verify(&token, NOW), Err(CallerError::BadSignature));
        let expired = minter
            .token(CallerKind::BackEnd, "x", None, NOW.plus_ms(-7_200_000), HOUR)
            .unwrap();
        assert_eq!(verifier.verify(&expired, NOW), Err(CallerError::Expired));
        let future = minter
            .token(CallerKind::BackEnd, "x", None, NOW.plus_ms(600_000), HOUR)
            .unwrap();
        assert_eq!(verifier.verify(&future, NOW), Err(CallerError::IssuedInFuture));
        let app_without_issuer = minter.token(CallerKind::App, "x", None, NOW, HOUR).unwrap();
        assert!(matches!(
            verifier.verify(&app_without_issuer, NOW),
            Err(CallerError::Claims(_))
        ));
        let empty = CallerVerifier::new(&[], CallerSettings::default()).unwrap();
        assert_eq!(empty.verify("a.b.c", NOW), Err(CallerError::NoKeys));
    }

    #[test]
    fn every_required_claim_is_named_when_missing_and_aud_must_name_this_ridegate() {
        let (verifier, minter) = setup();
        let claims = || CallerTokenMinter::claims(CallerKind::BackEnd, "ops", None, NOW, HOUR);
        // Drop one claim at a time from the JSON the minter would sign.
        for claim in ["exp", "iat", "aud", "jti", "sub", "kind"] {
            let mut value = serde_json::to_value(claims()).unwrap();
            value.as_object_mut().unwrap().remove(claim);
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = Some("callers-1".into());
            let token = jsonwebtoken::encode(&header, &value, minter.key.encoding()).unwrap();
            let expected = CallerError::MissingClaim(claim);
            assert_eq!(verifier.verify(&token, NOW), Err(expected), "{claim}");
            assert_eq!(expected.to_string(), format!("the token lacks a valid {claim} claim"));
        }
        let mut other = claims();
        other.aud = "another-service".into();
        assert_eq!(
            verifier.verify(&minter.sign(&other).unwrap(), NOW),
            Err(CallerError::WrongAudience)
        );
        // A list naming this ridegate among others is accepted.
        let mut value = serde_json::to_value(claims()).unwrap();
        value["aud"] = serde_json::json!(["another-service", AUDIENCE]);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("callers-1".into());
        let token = jsonwebtoken::encode(&header, &value, minter.key.encoding()).unwrap();
        assert!(verifier.verify(&token, NOW).is_ok());
    }

    #[test]
    fn a_token_longer_lived_than_its_kind_allows_is_refused() {
        let (verifier, minter) = setup();
        let century = Duration::from_secs(100 * 365 * 86_400);
        let token = minter.token(CallerKind::BackEnd, "ops", None, NOW, century).unwrap();
        let refused = verifier.verify(&token, NOW).unwrap_err();
        assert_eq!(
            refused,
            CallerError::LifetimeTooLong {
                kind: "the back end",
                max_secs: 3600
            }
        );
        assert_eq!(
            refused.to_string(),
            "the back end token may live at most 3600 s (exp - iat); mint a shorter one"
        );
        // The same lifetime is fine for a kind allowed longer.
        let token = minter
            .token(CallerKind::TicketWindow, "w", None, NOW, 2 * HOUR)
            .unwrap();
        assert!(verifier.verify(&token, NOW).is_ok());
        let token = minter.token(CallerKind::BackEnd, "ops", None, NOW, 2 * HOUR).unwrap();
        assert!(matches!(
            verifier.verify(&token, NOW),
            Err(CallerError::LifetimeTooLong { .. })
        ));
    }

    #[test]
    fn revoked_token_ids_and_key_ids_are_refused() {
        let mut claims = CallerTokenMinter::claims(CallerKind::BackEnd, "ops", None, NOW, HOUR);
        claims.jti = "leaked-1".into();
        let settings = CallerSettings {
            revoked_tokens: vec!["leaked-1".into()],
            ..CallerSettings::default()
        };
        let (verifier, minter) = setup_with(settings);
        assert_eq!(
            verifier.verify(&minter.sign(&claims).unwrap(), NOW),
            Err(CallerError::Revoked)
        );
        let fresh = minter.token(CallerKind::BackEnd, "ops", None, NOW, HOUR).unwrap();
        assert!(verifier.verify(&fresh, NOW).is_ok());
        let settings = CallerSettings {
            revoked_keys: vec!["callers-1".into()],
            ..CallerSettings::default()
        };
        let (verifier, minter) = setup_with(settings);
        let token = minter.token(CallerKind::BackEnd, "ops", None, NOW, HOUR).unwrap();
        assert_eq!(verifier.verify(&token, NOW), Err(CallerError::KeyRevoked));
    }

    #[test]
    fn no_message_names_a_rust_type() {
        let errors = [
            CallerError::NoKeys,
            CallerError::Malformed,
            CallerError::UnknownKey,
            CallerError::KeyRevoked,
            CallerError::Revoked,
            CallerError::BadSignature,
            CallerError::WrongAlgorithm,
            CallerError::MissingClaim("exp"),
            CallerError::WrongAudience,
            CallerError::Expired,
            CallerError::IssuedInFuture,
            CallerError::LifetimeTooLong {
                kind: "an app",
                max_secs: 60,
            },
            CallerError::Claims("sub must be 1-128 bytes"),
        ];
        for e in errors {
            let message = e.to_string();
            // A Rust type or variant name mixes cases (InvalidAudience); JWT does not.
            let mixed = |word: &str| {
                word.chars().any(|c| c.is_ascii_uppercase()) && word.chars().any(|c| c.is_ascii_lowercase())
            };
            assert!(!message.split_whitespace().any(mixed), "a type name in {message:?}");
        }
    }

    #[test]
    fn settings_name_the_invalid_field() {
        let mut settings = CallerSettings::default();
        settings.max_lifetime.ticket_window = Duration::ZERO;
        assert_eq!(settings.validate().unwrap_err().field, "max_lifetime.ticket_window");
        let settings = CallerSettings {
            audience: String::new(),
            ..CallerSettings::default()
        };
        assert_eq!(settings.validate().unwrap_err().field, "audience");
    }
}
