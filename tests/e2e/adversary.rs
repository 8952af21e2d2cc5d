//! A confused or hostile gate, over the wire: request ids reused for other riders,
//! device codes moved under other certificates, keys of one issuer passed off as
//! another's, impossible ID numbers. None of them gets a wrong ALLOW.

use std::time::Duration;

use ridegate_adapters::test_util::{
    CallerKind, CodeMinter, DeviceCodeMinter, SigningAlg, SigningKey, synthetic_resident_id,
};
use ridegate_proto::pb::{self, Reason, Verdict};
use tonic::Code;

use ridegate_tests::codes;
use ridegate_tests::*;

async fn population() -> (Gateway, Vec<Issuer>) {
    GatewayBuilder::new()
        .issuer("alipay", SigningAlg::EdDsa)
        .issuer("yitongxing", SigningAlg::Es256)
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .card("1000000000000003", 3)
        .status(3, RED)
        .account("yitongxing", "ytx-green", 1)
        .account("yitongxing", "ytx-other", 3)
        .start()
        .await
}

async fn authorize(gateway: &Gateway, request: pb::AuthorizeRequest) -> pb::AuthorizeResponse {
    gateway.gate().await.authorize(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn a_request_id_reused_for_another_rider_never_gets_the_stored_answer() {
    let (gateway, _) = population().await;
    let green = authorize(&gateway, tap(card("1000000000000001")).id("42")).await;
    assert_eq!(outcome(&green), (Verdict::Allow, Reason::HealthGreen));
    // The gate restarted and counts from 42 again: a red rider, an unlinked card.
    for (number, expected) in [
        ("1000000000000003", (Verdict::Deny, Reason::HealthRed)),
        ("1000000000000009", (Verdict::Assist, Reason::NotLinked)),
    ] {
        let other = authorize(&gateway, tap(card(number)).id("42")).await;
        assert_eq!((outcome(&other), other.retry), (expected, false), "{number}");
        assert_ne!(other.decision_id, green.decision_id);
    }
    // The green rider's own retry still gets the first answer.
    let retry = authorize(&gateway, tap(card("1000000000000001")).id("42")).await;
    assert_eq!(
        (retry.decision_id.as_str(), retry.retry),
        (green.decision_id.as_str(), true)
    );
    assert_eq!(gateway.metric("ridegate_request_id_conflicts_total").await, 2.0);
    assert!(gateway.log().contains("request id reused for a different tap"));
}

/// A phone key certified twice by `issuer`, for `accounts`.
fn certified(issuer: &CodeMinter, key: &SigningKey, accounts: &[(&str, &str)]) -> Vec<DeviceCodeMinter> {
    accounts
        .iter()
        .map(|(account, cert_id)| {
            let cert = issuer
                .device_certificate(account, cert_id, key, now(), Duration::from_secs(86_400))
                .expect("certificate");
            DeviceCodeMinter::new(cert, key.clone())
        })
        .collect()
}

#[tokio::test]
async fn a_device_code_is_single_use_whichever_certificate_carries_it() {
    let (gateway, issuers) = population().await;
    let phone_key = SigningKey::generate(SigningAlg::EdDsa, "device").expect("key");
    let phones = certified(
        &issuers[1].minter,
        &phone_key,
        &[
            ("ytx-green", "cert-a"),
            ("ytx-green", "cert-b"),
            ("ytx-other", "cert-c"),
        ],
    );
    let first = codes::device(&phones[0]);
    let answer = authorize(&gateway, tap(code(&first))).await;
    assert_eq!(outcome(&answer), (Verdict::Allow, Reason::HealthGreen));
    let (_, signed) = first.split_once('~').expect("device form");
    for phone in &phones {
        let (certificate, _) = codes::device(phone)
            .split_once('~')
            .map(|(c, s)| (c.to_owned(), s.to_owned()))
            .expect("device form");
        let moved = authorize(&gateway, tap(code(&format!("{certificate}~{signed}")))).await;
        assert_eq!(outcome(&moved), (Verdict::Deny, Reason::CodeReplayed));
    }
}

#[tokio::test]
async fn a_known_issuers_key_under_another_issuers_name_is_an_unknown_key() {
    let (gateway, issuers) = population().await;
    // Signed with alipay's key (and kid), claiming to be yitongxing.
    let borrowed = CodeMinter::new("yitongxing", issuers[0].key().clone());
    let answer = authorize(&gateway, tap(code(&codes::valid(&borrowed, "ytx-green")))).await;
    assert_eq!(outcome(&answer), (Verdict::Deny, Reason::CodeUnknownKey));
    assert_eq!(
        answer.message_en, "Invalid ride code",
        "not 'this app is not accepted here'"
    );
    // A device certificate under a kid no issuer has.
    let stranger = CodeMinter::new(
        "yitongxing",
        SigningKey::generate(SigningAlg::Es256, "yitongxing-stranger").expect("key"),
    );
    let phone = codes::phone(&stranger, "ytx-green", "cert-x", now(), Duration::from_secs(3600));
    let answer = authorize(&gateway, tap(code(&codes::device(&phone)))).await;
    assert_eq!(outcome(&answer), (Verdict::Deny, Reason::CodeCertInvalid));
}

#[tokio::test]
async fn an_id_number_born_in_the_future_is_refused() {
    let (gateway, _) = population().await;
    let token = gateway.token(CallerKind::UpgradeService, "upgrade", None);
    let request = pb::LinkRequest {
        credential: Some(pb::LinkCredential {
            credential: Some(pb::link_credential::Credential::Card(pb::Card {
                medium: pb::CardMedium::Physical.into(),
                number: "1000754312345678".into(),
            })),
        }),
        id_number: "110105209901010012".into(),
        consent: pb::Consent::UpgradeService.into(),
        staff_operator_id: String::new(),
    };
    let status = gateway
        .links()
        .await
        .link(authed(request.clone(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("in the future"), "{}", status.message());
    // A real one links.
    let ok = pb::LinkRequest {
        id_number: synthetic_resident_id(5),
        ..request
    };
    gateway
        .links()
        .await
        .link(authed(ok, &token))
        .await
        .expect("a valid ID number links");
}

#[tokio::test]
async fn signed_codes_with_odd_times_get_the_documented_reasons() {
    let (gateway, issuers) = population().await;
    let minter = &issuers[0].minter;
    let now_s = now() / 1000;
    let claims = |iat: serde_json::Value, exp: serde_json::Value, nbf: Option<i64>| {
        let mut c =
            serde_json::json!({"iss": "alipay", "sub": "acct-green", "jti": codes::jti(), "iat": iat, "exp": exp});
        if let Some(nbf) = nbf {
            c["nbf"] = nbf.into();
        }
        minter.code_with_claims(&c).expect("mint")
    };
    let cases = [
        // A fractional exp is a valid NumericDate: the code is judged, not refused as malformed.
        (
            "fractional exp",
            claims(now_s.into(), (now_s as f64 + 29.5).into(), None),
            Reason::NotLinked,
        ),
        (
            "future nbf on a long-lived code",
            claims(now_s.into(), (now_s + 120).into(), Some(now_s + 60)),
            Reason::CodeNotYetValid,
        ),
        (
            "exp before iat",
            claims(now_s.into(), (now_s - 1).into(), None),
            Reason::CodeMalformed,
        ),
        (
            "expired and too long-lived",
            claims((now_s - 600).into(), (now_s - 480).into(), None),
            Reason::CodeExpired,
        ),
        (
            "valid now but too long-lived",
            claims(now_s.into(), (now_s + 61).into(), None),
            Reason::CodeLifetimeTooLong,
        ),
    ];
    for (name, qr, reason) in cases {
        let answer = authorize(&gateway, tap(code(&qr))).await;
        assert_eq!(answer.reason(), reason, "{name}");
    }
}
