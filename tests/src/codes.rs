//! Ride codes for tests: valid ones in both forms, and each kind of bad one.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ridegate_adapters::test_util::{CodeMinter, DeviceCodeMinter, SigningAlg, SigningKey, random_bytes};

use crate::now;

/// A fresh random jti.
pub fn jti() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<12>())
}

/// A valid issuer-signed code.
pub fn valid(minter: &CodeMinter, account: &str) -> String {
    minter
        .code(account, &jti(), now(), Duration::from_secs(30))
        .expect("mint")
}

/// A code issued at `issued_at` with `lifetime`.
pub fn at(minter: &CodeMinter, account: &str, issued_at: i64, lifetime: Duration) -> String {
    minter.code(account, &jti(), issued_at, lifetime).expect("mint")
}

/// A phone certified by `minter` for `account`.
pub fn phone(
    minter: &CodeMinter,
    account: &str,
    cert_id: &str,
    issued_at: i64,
    lifetime: Duration,
) -> DeviceCodeMinter {
    let key = SigningKey::generate(SigningAlg::EdDsa, "device").expect("key");
    let cert = minter
        .device_certificate(account, cert_id, &key, issued_at, lifetime)
        .expect("certificate");
    DeviceCodeMinter::new(cert, key)
}

/// A valid device-signed code.
pub fn device(phone: &DeviceCodeMinter) -> String {
    phone.code(&jti(), now(), Duration::from_secs(30)).expect("mint")
}

/// A valid code with its payload replaced (so its signature no longer matches).
pub fn tampered(minter: &CodeMinter, account: &str, issuer: &str) -> String {
    let code = valid(minter, account);
    let mut parts: Vec<String> = code.split('.').map(str::to_owned).collect();
    let t = now() / 1000;
    parts[1] = b64(&serde_json::json!({"iss": issuer, "sub": "someone-else", "jti": jti(), "iat": t, "exp": t + 30}));
    parts.join(".")
}

/// An unsigned (`alg: none`) code.
pub fn alg_none(issuer: &str, kid: &str, account: &str) -> String {
    let t = now() / 1000;
    let header = b64(&serde_json::json!({"alg": "none", "typ": "rc+jwt", "kid": kid}));
    let claims = b64(&serde_json::json!({"iss": issuer, "sub": account, "jti": jti(), "iat": t, "exp": t + 30}));
    format!("{header}.{claims}.AAAA")
}

/// A code signed by a key ridegate does not know, claiming `issuer`.
pub fn unknown_key(issuer: &str, account: &str) -> String {
    let stranger = SigningKey::generate(SigningAlg::EdDsa, format!("{issuer}-unknown")).expect("key");
    valid(&CodeMinter::new(issuer, stranger), account)
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

/// A minter that claims to be `issuer` and signs under its real `kid`, with another key.
pub fn impostor(issuer: &str, kid: &str) -> CodeMinter {
    CodeMinter::new(issuer, SigningKey::generate(SigningAlg::Es256, kid).expect("key"))
}
