//! The JWT attack corpus: forged, confused and malleated ride codes, each refused with
//! the reason the module docs give — or, where the attack is harmless (a malleated
//! ECDSA signature), shown to change nothing that matters.

use super::*;

fn header() -> serde_json::Value {
    json!({"alg": "EdDSA", "typ": CODE_TYP, "kid": "alipay-1"})
}

fn signed(f: &Fixture, header: serde_json::Value, claims: serde_json::Value) -> String {
    forge(header, claims, f.alipay_key.encoding(), Algorithm::EdDSA)
}

/// `header.payload.signature` with the signature of a valid code put on other parts.
fn with_parts(header_b64: &str, payload_b64: &str, signature: &str) -> String {
    format!("{header_b64}.{payload_b64}.{signature}")
}

#[test]
fn alg_none_in_every_spelling_is_refused() {
    let f = fixture();
    let payload = b64(&claims("alipay", NOW, 30));
    for alg in [
        "none",
        "None",
        "NONE",
        "nOnE",
        "none ",
        "",
        "EdDSA\u{0}",
        "ed25519",
        "ES256K",
        "RS256",
    ] {
        for signature in ["AAAA", "x"] {
            let head = b64(&json!({"alg": alg, "typ": CODE_TYP, "kid": "alipay-1"}));
            let err = verify(&f, &with_parts(&head, &payload, signature)).unwrap_err();
            assert_eq!(err, CodeError::AlgNotAllowed, "alg {alg:?}");
        }
        let head = b64(&json!({"alg": alg, "typ": CODE_TYP, "kid": "alipay-1"}));
        let unsigned = format!("{head}.{payload}.");
        assert_eq!(
            verify(&f, &unsigned),
            Err(CodeError::Malformed),
            "alg {alg:?}, no signature"
        );
    }
    // alg missing, or not a string.
    for head in [
        json!({"typ": CODE_TYP, "kid": "alipay-1"}),
        json!({"alg": 0, "typ": CODE_TYP}),
    ] {
        let token = with_parts(&b64(&head), &payload, "AAAA");
        assert_eq!(verify(&f, &token), Err(CodeError::Malformed), "{head}");
    }
}

#[test]
fn hmac_keyed_with_any_form_of_a_public_key_is_refused() {
    let f = fixture();
    let es_key = SigningKey::generate(SigningAlg::Es256, "ytx-1").unwrap();
    let jwk = serde_json::to_vec(&es_key.public_jwk().unwrap()).unwrap();
    let pem = es_key.to_pkcs8_pem();
    for (alg, kid, iss) in [
        (Algorithm::HS256, "alipay-1", "alipay"),
        (Algorithm::HS384, "ytx-1", "yitongxing"),
        (Algorithm::HS512, "ytx-1", "yitongxing"),
    ] {
        for secret in [jwk.as_slice(), pem.as_bytes(), b"".as_slice()] {
            let name = serde_json::to_value(alg).unwrap();
            let token = forge(
                json!({"alg": name, "typ": CODE_TYP, "kid": kid}),
                claims(iss, NOW, 30),
                &EncodingKey::from_secret(secret),
                alg,
            );
            assert_eq!(verify(&f, &token), Err(CodeError::AlgNotAllowed), "{alg:?} kid {kid}");
        }
    }
}

#[test]
fn a_code_that_brings_its_own_key_is_refused() {
    let f = fixture();
    let attacker = SigningKey::generate(SigningAlg::EdDsa, "alipay-1").unwrap();
    let attacker_jwk = serde_json::to_value(attacker.public_jwk().unwrap()).unwrap();
    for (member, value) in [
        ("jwk", attacker_jwk),
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut head = header();
        head[member] = value;
        let token = forge(head, claims("alipay", NOW, 30), attacker.encoding(), Algorithm::EdDSA);
        assert_eq!(verify(&f, &token), Err(CodeError::Malformed), "{member}");
    }
}

#[test]
fn crit_in_any_form_is_refused() {
    let f = fixture();
    for crit in [json!(["exp"]), json!([]), json!(["b64"])] {
        let mut head = header();
        head["crit"] = crit.clone();
        assert_eq!(
            verify(&f, &signed(&f, head, claims("alipay", NOW, 30))),
            Err(CodeError::Malformed),
            "crit {crit}"
        );
    }
}

#[test]
fn kid_tricks_find_no_key() {
    let f = fixture();
    for kid in [
        json!("../../../dev/null"),
        json!("alipay-1' OR '1'='1"),
        json!("alipay-1\u{0}"),
        json!(" alipay-1"),
        json!("ALIPAY-1"),
        json!(""),
    ] {
        let mut head = header();
        head["kid"] = kid.clone();
        let err = verify(&f, &signed(&f, head, claims("alipay", NOW, 30))).unwrap_err();
        assert_eq!(err, CodeError::UnknownKey, "kid {kid}");
    }
    for kid in [json!(1), json!(null), json!(["alipay-1"]), json!({"kid": "alipay-1"})] {
        let mut head = header();
        head["kid"] = kid.clone();
        let err = verify(&f, &signed(&f, head, claims("alipay", NOW, 30))).unwrap_err();
        assert!(
            matches!(err, CodeError::Malformed | CodeError::UnknownKey),
            "kid {kid}: {err:?}"
        );
    }
    let mut head = header();
    head.as_object_mut().unwrap().remove("kid");
    assert_eq!(
        verify(&f, &signed(&f, head, claims("alipay", NOW, 30))),
        Err(CodeError::UnknownKey)
    );
}

/// n − s for P-256, big-endian.
fn negate_s(s: &[u8]) -> Vec<u8> {
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6,
        0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
    ];
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(N[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

#[test]
fn a_malleated_ecdsa_signature_is_the_same_code() {
    let f = fixture();
    let p = Pseudonymizer::new(b"0123456789abcdef").unwrap();
    let code = f.yitongxing.code("acct-1", "j-malleable", NOW, LIFETIME).unwrap();
    let (message, signature) = code.rsplit_once('.').unwrap();
    let raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let mut malleated = raw[..32].to_vec();
    malleated.extend(negate_s(&raw[32..]));
    let twin = format!("{message}.{}", URL_SAFE_NO_PAD.encode(&malleated));
    assert_ne!(twin, code);
    let (a, b) = (verify(&f, &code).unwrap(), verify(&f, &twin).unwrap());
    // It verifies (ECDSA is malleable), but single use is keyed by jti, not signature.
    assert_eq!(a.code_key(p.credentials()), b.code_key(p.credentials()));
}

#[test]
fn non_canonical_base64_is_refused() {
    let f = fixture();
    let code = f.alipay.code("acct-1", "j-1", NOW, LIFETIME).unwrap();
    let (message, signature) = code.rsplit_once('.').unwrap();
    // An Ed25519 signature is 64 bytes: 86 base64url characters, the last carrying 2
    // unused bits. Setting them leaves the decoded bytes the same in lax decoders.
    let mut chars: Vec<char> = signature.chars().collect();
    let last = chars.pop().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = alphabet.find(last).unwrap();
    let sloppy: String = chars
        .iter()
        .chain([alphabet.chars().nth(index | 1).unwrap()].iter())
        .collect();
    if sloppy != signature {
        assert_eq!(verify(&f, &format!("{message}.{sloppy}")), Err(CodeError::Malformed));
    }
    for bad in [
        format!("{signature}=="),
        signature.replace('-', "+").replace('_', "/"),
        format!("{signature} "),
    ] {
        if bad != signature {
            let err = verify(&f, &format!("{message}.{bad}")).unwrap_err();
            assert!(matches!(err, CodeError::Malformed | CodeError::BadSignature), "{err:?}");
        }
    }
    // Padding or standard-alphabet characters in the header or payload.
    let (head, rest) = code.split_once('.').unwrap();
    let err = verify(&f, &format!("{head}=.{rest}")).unwrap_err();
    assert!(
        matches!(err, CodeError::Malformed | CodeError::AlgNotAllowed),
        "{err:?}"
    );
}

#[test]
fn duplicate_members_are_malformed() {
    let f = fixture();
    let now_s = NOW.0 / 1000;
    let raw_claims = format!(
        r#"{{"iss":"alipay","sub":"acct-1","sub":"someone-else","jti":"j-1","iat":{now_s},"exp":{}}}"#,
        now_s + 30
    );
    let message = format!("{}.{}", b64(&header()), URL_SAFE_NO_PAD.encode(raw_claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), f.alipay_key.encoding(), Algorithm::EdDSA).unwrap();
    assert_eq!(verify(&f, &format!("{message}.{signature}")), Err(CodeError::Malformed));
    let raw_header = format!(r#"{{"alg":"EdDSA","alg":"EdDSA","typ":"{CODE_TYP}","kid":"alipay-1"}}"#);
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(raw_header),
        b64(&claims("alipay", NOW, 30))
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), f.alipay_key.encoding(), Algorithm::EdDSA).unwrap();
    assert_eq!(verify(&f, &format!("{message}.{signature}")), Err(CodeError::Malformed));
}

#[test]
fn deep_and_huge_json_is_refused_without_harm() {
    let f = fixture();
    let deep = format!("{}1{}", "[".repeat(3_000), "]".repeat(3_000));
    let mut c = claims("alipay", NOW, 30);
    c["extra"] = json!("x");
    let raw = serde_json::to_string(&c).unwrap().replace("\"x\"", &deep);
    let message = format!("{}.{}", b64(&header()), URL_SAFE_NO_PAD.encode(raw));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), f.alipay_key.encoding(), Algorithm::EdDSA).unwrap();
    let err = verify(&f, &format!("{message}.{signature}")).unwrap_err();
    assert!(matches!(err, CodeError::Malformed | CodeError::Oversize), "{err:?}");
    let shallow_deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let raw = serde_json::to_string(&c).unwrap().replace("\"x\"", &shallow_deep);
    let message = format!("{}.{}", b64(&header()), URL_SAFE_NO_PAD.encode(raw));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), f.alipay_key.encoding(), Algorithm::EdDSA).unwrap();
    // Unknown claims are ignored, however nested, within the size limit.
    assert!(verify(&f, &format!("{message}.{signature}")).is_ok());
    let mut big = claims("alipay", NOW, 30);
    big["pad"] = json!("p".repeat(10_000));
    assert_eq!(verify(&f, &signed(&f, header(), big)), Err(CodeError::Oversize));
}

#[test]
fn a_certificate_cannot_stand_in_for_a_code_nor_a_code_for_a_certificate() {
    let f = fixture();
    let phone = SigningKey::generate(SigningAlg::EdDsa, "device").unwrap();
    let cert = f
        .yitongxing
        .device_certificate("acct", "c-1", &phone, NOW, Duration::from_secs(3600))
        .unwrap();
    assert_eq!(verify(&f, &cert), Err(CodeError::WrongType));
    // An issuer-signed code in the certificate's place.
    let code = f.yitongxing.code("acct", "j-1", NOW, LIFETIME).unwrap();
    let device_code = DeviceCodeMinter::new(cert, phone).code("j-2", NOW, LIFETIME).unwrap();
    let (_, signed_by_phone) = device_code.split_once('~').unwrap();
    assert_eq!(
        verify(&f, &format!("{code}~{signed_by_phone}")),
        Err(CodeError::CertInvalid)
    );
    // Two separators.
    assert_eq!(
        verify(&f, &format!("{device_code}~{signed_by_phone}")),
        Err(CodeError::Malformed)
    );
}
