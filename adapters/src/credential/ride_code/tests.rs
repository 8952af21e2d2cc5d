//! Every way a ride code can fail, and the ways it must succeed; [`attacks`] holds the
//! JWT attack corpus.

mod attacks;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use super::*;
use crate::ids::Pseudonymizer;

const NOW: UnixMillis = UnixMillis(1_900_000_000_000);
const LIFETIME: Duration = Duration::from_secs(30);

struct Fixture {
    verifier: RideCodeVerifier,
    alipay: CodeMinter,
    alipay_key: SigningKey,
    yitongxing: CodeMinter,
    phone: DeviceCodeMinter,
}

fn spec(id: &str, algorithms: Vec<SigningAlg>, keys: &[&SigningKey], devices: bool) -> IssuerSpec {
    IssuerSpec {
        id: id.into(),
        name: id.into(),
        keys: keys.iter().map(|k| k.public_jwk().unwrap()).collect(),
        settings: IssuerSettings {
            algorithms,
            max_lifetime: Duration::from_secs(60),
            clock_skew: Duration::from_secs(5),
            device_certificates: devices,
            max_certificate_lifetime: Duration::from_secs(30 * 86_400),
            revoked_certificates: vec!["revoked-cert".into()],
        },
    }
}

fn fixture() -> Fixture {
    let alipay_key = SigningKey::generate(SigningAlg::EdDsa, "alipay-1").unwrap();
    let yitongxing_key = SigningKey::generate(SigningAlg::Es256, "ytx-1").unwrap();
    let verifier = RideCodeVerifier::new(
        &[
            spec("alipay", vec![SigningAlg::EdDsa], &[&alipay_key], false),
            spec(
                "yitongxing",
                vec![SigningAlg::Es256, SigningAlg::EdDsa],
                &[&yitongxing_key],
                true,
            ),
        ],
        VerifierLimits::default(),
    )
    .unwrap();
    let yitongxing = CodeMinter::new("yitongxing", yitongxing_key);
    let phone = device(&yitongxing, "cert-1", NOW, Duration::from_secs(86_400));
    Fixture {
        verifier,
        alipay: CodeMinter::new("alipay", alipay_key.clone()),
        alipay_key,
        yitongxing,
        phone,
    }
}

fn device(issuer: &CodeMinter, cert_id: &str, issued_at: UnixMillis, lifetime: Duration) -> DeviceCodeMinter {
    let key = SigningKey::generate(SigningAlg::EdDsa, "device").unwrap();
    let cert = issuer
        .device_certificate("ytx-account-9", cert_id, &key, issued_at, lifetime)
        .unwrap();
    DeviceCodeMinter::new(cert, key)
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A token with an arbitrary header and claims, signed by `key` as `alg`.
fn forge(header: serde_json::Value, claims: serde_json::Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn claims(iss: &str, iat: UnixMillis, lifetime_s: i64) -> serde_json::Value {
    json!({"iss": iss, "sub": "acct-1", "jti": "j-1", "iat": iat.0 / 1000, "exp": iat.0 / 1000 + lifetime_s})
}

fn verify(f: &Fixture, text: &str) -> Result<VerifiedCode, CodeError> {
    f.verifier.verify(text, NOW)
}

#[test]
fn issuer_signed_codes_verify_with_both_algorithms() {
    let f = fixture();
    let code = f.alipay.code("acct-1", "j-1", NOW, LIFETIME).unwrap();
    let v = verify(&f, &code).unwrap();
    assert_eq!(
        (&*v.issuer, &*v.account, v.jti.as_str(), v.certificate),
        ("alipay", "acct-1", "j-1", None)
    );
    assert_eq!(v.valid_until, NOW.plus_ms(35_000));
    let code = f.yitongxing.code("acct-2", "j-2", NOW, LIFETIME).unwrap();
    assert_eq!(&*verify(&f, &code).unwrap().issuer, "yitongxing");
}

#[test]
fn device_signed_codes_verify_and_carry_the_certified_account() {
    let f = fixture();
    let code = f.phone.code("d-1", NOW, LIFETIME).unwrap();
    let v = verify(&f, &code).unwrap();
    assert_eq!(
        (&*v.issuer, &*v.account, v.certificate.as_deref()),
        ("yitongxing", "ytx-account-9", Some("cert-1"))
    );
    // A second code from the same phone reuses the cached certificate.
    let again = f.phone.code("d-2", NOW, LIFETIME).unwrap();
    assert!(verify(&f, &again).is_ok());
    f.verifier.certificates.run_pending_tasks();
    assert_eq!(f.verifier.certificates.entry_count(), 1);
}

#[test]
fn code_keys_differ_by_jti_and_form() {
    let f = fixture();
    let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
    let a = verify(&f, &f.alipay.code("acct-1", "j-1", NOW, LIFETIME).unwrap()).unwrap();
    let b = verify(&f, &f.alipay.code("acct-1", "j-2", NOW, LIFETIME).unwrap()).unwrap();
    let c = verify(&f, &f.phone.code("j-1", NOW, LIFETIME).unwrap()).unwrap();
    assert_ne!(a.code_key(p.credentials()), b.code_key(p.credentials()));
    assert_ne!(a.code_key(p.credentials()), c.code_key(p.credentials()));
}

#[test]
fn a_device_code_is_the_same_code_under_any_certificate_for_its_key() {
    let f = fixture();
    let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
    let phone_key = SigningKey::generate(SigningAlg::EdDsa, "device").unwrap();
    let first = DeviceCodeMinter::new(
        f.yitongxing
            .device_certificate("ytx-account-9", "cert-a", &phone_key, NOW, Duration::from_secs(3600))
            .unwrap(),
        phone_key.clone(),
    );
    let code = first.code("d-1", NOW, LIFETIME).unwrap();
    let (_, signed) = code.split_once('~').unwrap();
    // Another certificate for the same key: reissued, and for another account.
    for (account, cert_id) in [("ytx-account-9", "cert-b"), ("ytx-account-10", "cert-c")] {
        let other = f
            .yitongxing
            .device_certificate(account, cert_id, &phone_key, NOW, Duration::from_secs(3600))
            .unwrap();
        let moved = verify(&f, &format!("{other}~{signed}")).unwrap();
        assert_eq!(
            moved.code_key(p.credentials()),
            verify(&f, &code).unwrap().code_key(p.credentials()),
            "{cert_id}"
        );
    }
}

#[test]
fn oversize_and_empty_and_garbage_are_refused() {
    let f = fixture();
    assert_eq!(verify(&f, &"a".repeat(4097)), Err(CodeError::Oversize));
    assert_eq!(verify(&f, &"a".repeat(1 << 20)), Err(CodeError::Oversize));
    for garbage in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "!!.!!.!!",
        "eyJhbGciOiJFZERTQSJ9..sig",
        "~",
        "a~b",
    ] {
        let err = verify(&f, garbage).unwrap_err();
        assert!(
            matches!(err, CodeError::Malformed | CodeError::CertInvalid),
            "{garbage:?} gave {err:?}"
        );
    }
}

#[test]
fn a_tampered_payload_fails_the_signature() {
    let f = fixture();
    let code = f.alipay.code("acct-1", "j-1", NOW, LIFETIME).unwrap();
    let mut parts: Vec<&str> = code.split('.').collect();
    let forged_payload = b64(
        &json!({"iss": "alipay", "sub": "someone-else", "jti": "j-1", "iat": NOW.0 / 1000, "exp": NOW.0 / 1000 + 30}),
    );
    parts[1] = &forged_payload;
    assert_eq!(verify(&f, &parts.join(".")), Err(CodeError::BadSignature));
}

#[test]
fn a_code_signed_by_another_key_under_a_known_kid_fails_the_signature() {
    let f = fixture();
    let impostor = SigningKey::generate(SigningAlg::EdDsa, "alipay-1").unwrap();
    let code = CodeMinter::new("alipay", impostor)
        .code("acct-1", "j-1", NOW, LIFETIME)
        .unwrap();
    assert_eq!(verify(&f, &code), Err(CodeError::BadSignature));
}

#[test]
fn unknown_kid_is_unknown_key_for_a_known_issuer_and_unknown_issuer_otherwise() {
    let f = fixture();
    let stranger = SigningKey::generate(SigningAlg::EdDsa, "nobody-1").unwrap();
    let known = CodeMinter::new("alipay", stranger.clone())
        .code("a", "j", NOW, LIFETIME)
        .unwrap();
    assert_eq!(verify(&f, &known), Err(CodeError::UnknownKey));
    let unknown = CodeMinter::new("hangzhou-metro", stranger)
        .code("a", "j", NOW, LIFETIME)
        .unwrap();
    assert_eq!(verify(&f, &unknown), Err(CodeError::UnknownIssuer));
}

#[test]
fn a_code_naming_another_issuer_than_its_key_is_refused() {
    let f = fixture();
    // A known issuer, under a kid it does not have: that issuer has no such key.
    let code = CodeMinter::new("yitongxing", f.alipay_key.clone())
        .code("a", "j", NOW, LIFETIME)
        .unwrap();
    assert_eq!(verify(&f, &code), Err(CodeError::UnknownKey));
    let code = CodeMinter::new("hangzhou-metro", f.alipay_key.clone())
        .code("a", "j", NOW, LIFETIME)
        .unwrap();
    assert_eq!(verify(&f, &code), Err(CodeError::UnknownIssuer));
    let mut no_iss = claims("alipay", NOW, 30);
    no_iss.as_object_mut().unwrap().remove("iss");
    let token = forge(
        json!({"alg": "EdDSA", "typ": CODE_TYP, "kid": "alipay-1"}),
        no_iss,
        f.alipay_key.encoding(),
        Algorithm::EdDSA,
    );
    assert_eq!(verify(&f, &token), Err(CodeError::Malformed));
}

#[test]
fn expiry_honours_the_clock_skew() {
    let f = fixture();
    let code = f.alipay.code("a", "j", NOW, LIFETIME).unwrap();
    assert!(
        f.verifier.verify(&code, NOW.plus_ms(34_999)).is_ok(),
        "inside exp + skew"
    );
    assert_eq!(f.verifier.verify(&code, NOW.plus_ms(35_000)), Err(CodeError::Expired));
}

#[test]
fn codes_from_the_future_are_not_yet_valid() {
    let f = fixture();
    let code = f.alipay.code("a", "j", NOW.plus_ms(10_000), LIFETIME).unwrap();
    assert_eq!(verify(&f, &code), Err(CodeError::NotYetValid));
    let within_skew = f.alipay.code("a", "j", NOW.plus_ms(4_000), LIFETIME).unwrap();
    assert!(verify(&f, &within_skew).is_ok());
    let key = f.alipay_key.encoding();
    let mut c = claims("alipay", NOW, 30);
    c["nbf"] = json!(NOW.0 / 1000 + 20);
    let nbf = forge(
        json!({"alg": "EdDSA", "typ": CODE_TYP, "kid": "alipay-1"}),
        c,
        key,
        Algorithm::EdDSA,
    );
    assert_eq!(verify(&f, &nbf), Err(CodeError::NotYetValid));
}

#[test]
fn lifetimes_beyond_the_issuers_maximum_are_refused() {
    let f = fixture();
    let code = f.alipay.code("a", "j", NOW, Duration::from_secs(61)).unwrap();
    assert_eq!(verify(&f, &code), Err(CodeError::LifetimeTooLong));
    let key = f.alipay_key.encoding();
    let backwards = forge(
        json!({"alg": "EdDSA", "typ": CODE_TYP, "kid": "alipay-1"}),
        claims("alipay", NOW, -5),
        key,
        Algorithm::EdDSA,
    );
    assert_eq!(verify(&f, &backwards), Err(CodeError::Malformed));
}

#[test]
fn the_times_are_checked_in_the_documented_order() {
    let f = fixture();
    let header = json!({"alg": "EdDSA", "typ": CODE_TYP, "kid": "alipay-1"});
    let signed = |c: serde_json::Value| forge(header.clone(), c, f.alipay_key.encoding(), Algorithm::EdDSA);
    let now_s = NOW.0 / 1000;
    // Expired and too long-lived: expired first (the rider can refresh).
    let mut c = claims("alipay", NOW.plus_ms(-600_000), 120);
    assert_eq!(verify(&f, &signed(c.clone())), Err(CodeError::Expired));
    // A future nbf on a long-lived code: not yet valid first (the phone's clock).
    c = claims("alipay", NOW, 120);
    c["nbf"] = json!(now_s + 60);
    assert_eq!(verify(&f, &signed(c)), Err(CodeError::NotYetValid));
    // A future iat within its lifetime, beyond the skew.
    c = claims("alipay", NOW.plus_ms(30_000), 30);
    assert_eq!(verify(&f, &signed(c)), Err(CodeError::NotYetValid));
    // Valid now, but too long-lived.
    c = claims("alipay", NOW, 61);
    assert_eq!(verify(&f, &signed(c)), Err(CodeError::LifetimeTooLong));
    // exp before iat is inconsistent whatever the clock says.
    c = claims("alipay", NOW, 30);
    c["exp"] = json!(now_s - 1);
    assert_eq!(verify(&f, &signed(c)), Err(CodeError::Malformed));
}

#[test]
fn numeric_dates_may_have_fractions() {
    let f = fixture();
    let now_s = NOW.0 / 1000;
    let mut c = claims("alipay", NOW, 30);
    c["iat"] = json!(now_s as f64 + 0.25);
    c["exp"] = json!(now_s as f64 + 30.5);
    c["nbf"] = json!(now_s as f64 - 0.75);
    let token = forge(
        json!({"alg": "EdDSA", "typ": CODE_TYP, "kid": "alipay-1"}),
        c,
        f.alipay_key.encoding(),
        Algorithm::EdDSA,
    );
    assert_eq!(verify(&f, &token).unwrap().valid_until, NOW.plus_ms(35_500));
    for bad in [json!("1900000030"), json!(1e300), json!(null), json!([1])] {
        let mut c = claims("alipay", NOW, 30);
        c["exp"] = bad.clone();
        let token = forge(
            json!({"alg": "EdDSA", "typ": CODE_TYP, "kid": "alipay-1"}),
            c,
            f.alipay_key.encoding(),
            Algorithm::EdDSA,
        );
        assert_eq!(verify(&f, &token), Err(CodeError::Malformed), "exp = {bad}");
    }
}

#[test]
fn alg_none_is_refused() {
    let f = fixture();
    let header = b64(&json!({"alg": "none", "typ": CODE_TYP, "kid": "alipay-1"}));
    let token = format!("{header}.{}.", b64(&claims("alipay", NOW, 30)));
    assert_eq!(verify(&f, &token), Err(CodeError::Malformed), "empty signature part");
    let token = format!("{header}.{}.AAAA", b64(&claims("alipay", NOW, 30)));
    assert_eq!(verify(&f, &token), Err(CodeError::AlgNotAllowed));
}

#[test]
fn hmac_signed_with_the_public_key_is_refused() {
    let f = fixture();
    let public = f.alipay_key.public_jwk().unwrap();
    let jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) = &public.algorithm else {
        panic!()
    };
    let secret = URL_SAFE_NO_PAD.decode(&p.x).unwrap();
    let token = forge(
        json!({"alg": "HS256", "typ": CODE_TYP, "kid": "alipay-1"}),
        claims("alipay", NOW, 30),
        &EncodingKey::from_secret(&secret),
        Algorithm::HS256,
    );
    assert_eq!(verify(&f, &token), Err(CodeError::AlgNotAllowed));
}

#[test]
fn a_header_alg_that_does_not_match_the_key_is_refused() {
    let f = fixture();
    let es = SigningKey::generate(SigningAlg::Es256, "x").unwrap();
    let token = forge(
        json!({"alg": "ES256", "typ": CODE_TYP, "kid": "alipay-1"}),
        claims("alipay", NOW, 30),
        es.encoding(),
        Algorithm::ES256,
    );
    assert_eq!(verify(&f, &token), Err(CodeError::AlgNotAllowed));
}

#[test]
fn missing_claims_and_unknown_crit_are_malformed() {
    let f = fixture();
    let key = f.alipay_key.encoding();
    let header = json!({"alg": "EdDSA", "typ": CODE_TYP, "kid": "alipay-1"});
    for drop in ["jti", "sub", "iat", "exp"] {
        let mut c = claims("alipay", NOW, 30);
        c.as_object_mut().unwrap().remove(drop);
        assert_eq!(
            verify(&f, &forge(header.clone(), c, key, Algorithm::EdDSA)),
            Err(CodeError::Malformed),
            "without {drop}"
        );
    }
    let crit = json!({"alg": "EdDSA", "typ": CODE_TYP, "kid": "alipay-1", "crit": ["exp"]});
    assert_eq!(
        verify(&f, &forge(crit, claims("alipay", NOW, 30), key, Algorithm::EdDSA)),
        Err(CodeError::Malformed)
    );
    let untyped = json!({"alg": "EdDSA", "kid": "alipay-1"});
    assert_eq!(
        verify(&f, &forge(untyped, claims("alipay", NOW, 30), key, Algorithm::EdDSA)),
        Err(CodeError::Malformed)
    );
}

#[test]
fn a_bare_device_certificate_is_the_wrong_type() {
    let f = fixture();
    let key = SigningKey::generate(SigningAlg::EdDsa, "d").unwrap();
    let cert = f
        .yitongxing
        .device_certificate("acct", "c", &key, NOW, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(verify(&f, &cert), Err(CodeError::WrongType));
}

#[test]
fn expired_and_revoked_certificates_are_refused_on_every_use() {
    let f = fixture();
    let phone = device(&f.yitongxing, "cert-short", NOW, Duration::from_secs(3600));
    assert!(verify(&f, &phone.code("a", NOW, LIFETIME).unwrap()).is_ok());
    let later = NOW.plus_ms(3_600_000 + 5_000);
    let code = phone.code("b", later, LIFETIME).unwrap();
    assert_eq!(
        f.verifier.verify(&code, later),
        Err(CodeError::CertExpired),
        "cached, but expired since"
    );
    let revoked = device(&f.yitongxing, "revoked-cert", NOW, Duration::from_secs(3600));
    assert_eq!(
        verify(&f, &revoked.code("a", NOW, LIFETIME).unwrap()),
        Err(CodeError::CertRevoked)
    );
}

#[test]
fn bad_certificates_are_invalid() {
    let f = fixture();
    // Signed by a key the issuer does not have under its kid.
    let impostor = CodeMinter::new("yitongxing", SigningKey::generate(SigningAlg::Es256, "ytx-1").unwrap());
    let forged = device(&impostor, "c", NOW, Duration::from_secs(3600));
    assert_eq!(
        verify(&f, &forged.code("a", NOW, LIFETIME).unwrap()),
        Err(CodeError::CertInvalid)
    );
    // From an issuer that does not certify devices.
    let alipay_phone = device(&f.alipay, "c", NOW, Duration::from_secs(3600));
    assert_eq!(
        verify(&f, &alipay_phone.code("a", NOW, LIFETIME).unwrap()),
        Err(CodeError::CertInvalid)
    );
    // A certificate lifetime beyond the maximum.
    let long = device(&f.yitongxing, "c", NOW, Duration::from_secs(31 * 86_400));
    assert_eq!(
        verify(&f, &long.code("a", NOW, LIFETIME).unwrap()),
        Err(CodeError::CertInvalid)
    );
    // Signed under a kid no issuer has.
    let stranger = CodeMinter::new(
        "yitongxing",
        SigningKey::generate(SigningAlg::EdDsa, "nobody-9").unwrap(),
    );
    let unknown_key = device(&stranger, "c", NOW, Duration::from_secs(3600));
    assert_eq!(
        verify(&f, &unknown_key.code("a", NOW, LIFETIME).unwrap()),
        Err(CodeError::CertInvalid)
    );
    // Garbage in place of the certificate.
    assert_eq!(
        verify(
            &f,
            &format!("x.y.z~{}", f.alipay.code("a", "j", NOW, LIFETIME).unwrap())
        ),
        Err(CodeError::CertInvalid)
    );
}

#[test]
fn a_device_code_signed_by_another_phone_fails_the_signature() {
    let f = fixture();
    let other = device(&f.yitongxing, "cert-2", NOW, Duration::from_secs(3600));
    let stolen_cert_code = other.code("a", NOW, LIFETIME).unwrap();
    let (_, code) = stolen_cert_code.split_once('~').unwrap();
    let (mine, _) = f
        .phone
        .code("x", NOW, LIFETIME)
        .unwrap()
        .split_once('~')
        .map(|(c, s)| (c.to_owned(), s.to_owned()))
        .unwrap();
    assert_eq!(verify(&f, &format!("{mine}~{code}")), Err(CodeError::BadSignature));
}

#[test]
fn device_codes_obey_code_time_rules() {
    let f = fixture();
    let expired = f.phone.code("a", NOW.plus_ms(-60_000), LIFETIME).unwrap();
    assert_eq!(verify(&f, &expired), Err(CodeError::Expired));
    let long = f.phone.code("b", NOW, Duration::from_secs(600)).unwrap();
    assert_eq!(verify(&f, &long), Err(CodeError::LifetimeTooLong));
}

#[test]
fn issuer_sets_that_would_be_ambiguous_are_refused() {
    let k = SigningKey::generate(SigningAlg::EdDsa, "shared").unwrap();
    let err = RideCodeVerifier::new(
        &[
            spec("a", vec![SigningAlg::EdDsa], &[&k], false),
            spec("b", vec![SigningAlg::EdDsa], &[&k], false),
        ],
        VerifierLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, IssuerSetError::DuplicateKid { .. }), "{err}");
    let err = RideCodeVerifier::new(
        &[spec("a", vec![SigningAlg::Es256], &[&k], false)],
        VerifierLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, IssuerSetError::KeyAlgNotAllowed { .. }), "{err}");
    let err = RideCodeVerifier::new(&[spec("Bad Id", vec![], &[], false)], VerifierLimits::default()).unwrap_err();
    assert_eq!(err, IssuerSetError::BadIssuerId("Bad Id".into()));
    let err = RideCodeVerifier::new(
        &[spec("a", vec![], &[], false), spec("a", vec![], &[], false)],
        VerifierLimits::default(),
    )
    .unwrap_err();
    assert_eq!(err, IssuerSetError::DuplicateIssuer("a".into()));
}

#[test]
fn every_error_has_a_distinct_reason() {
    let errors = [
        CodeError::Malformed,
        CodeError::Oversize,
        CodeError::AlgNotAllowed,
        CodeError::UnknownIssuer,
        CodeError::UnknownKey,
        CodeError::BadSignature,
        CodeError::Expired,
        CodeError::NotYetValid,
        CodeError::LifetimeTooLong,
        CodeError::CertExpired,
        CodeError::CertInvalid,
        CodeError::CertRevoked,
        CodeError::WrongType,
    ];
    let reasons: HashSet<Reason> = errors.iter().map(|e| e.reason()).collect();
    assert_eq!(reasons.len(), errors.len());
}
