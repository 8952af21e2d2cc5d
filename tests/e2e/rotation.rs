//! Keys and certificates rotate without a restart: on SIGHUP and when their files
//! change. Open gate connections keep working; a reload that fails keeps what is in use.

use std::future::Future;
use std::time::Duration;

use ridegate_adapters::test_util::{CallerKind, CallerTokenMinter, CodeMinter, SigningAlg, SigningKey};
use ridegate_proto::pb::gate_client::GateClient;
use ridegate_proto::pb::{self, Reason, Verdict};
use tonic::Code;

use ridegate_tests::pki::Pki;
use ridegate_tests::*;

const GATE: &str = "L10-S07-G03";
const CARD: &str = "1000000000000001";

/// Retries `attempt` for up to 10 s until it returns true.
async fn eventually<F: Future<Output = bool>>(what: &str, mut attempt: impl FnMut() -> F) {
    for _ in 0..100 {
        if attempt().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never: {what}");
}

async fn served(gate: &mut GateClient<tonic::transport::Channel>) -> bool {
    gate.authorize(tap(card(CARD)))
        .await
        .is_ok_and(|r| (r.get_ref().verdict(), r.get_ref().reason()) == (Verdict::Allow, Reason::HealthGreen))
}

#[tokio::test]
async fn on_sighup_a_new_certificate_and_client_ca_serve_new_connections_while_open_ones_keep_working() {
    let (ca_2026, ca_2027) = (Pki::new("operator CA 2026"), Pki::new("operator CA 2027"));
    let (gateway, _) = GatewayBuilder::new()
        .card(CARD, 1)
        .status(1, GREEN)
        .server(r#"reload_interval = "0s""#)
        .tls(ca_2026.server())
        .client_ca(ca_2026.ca_pem())
        .start()
        .await;
    let mut open = gateway.gate_over(ca_2026.client(Some(&ca_2026.gate(GATE)))).await;
    assert!(served(&mut open).await);

    // The new server certificate comes from the 2027 CA; gates of both CAs are trusted
    // while they are reissued.
    let server = ca_2027.server();
    std::fs::write(gateway.path("server.pem"), &server.cert).unwrap();
    std::fs::write(gateway.path("server.key.pem"), &server.key).unwrap();
    std::fs::write(
        gateway.path("client-ca.pem"),
        format!("{}{}", ca_2026.ca_pem(), ca_2027.ca_pem()),
    )
    .unwrap();
    gateway.reload();
    let renewed = ca_2027.client(Some(&ca_2027.gate(GATE)));
    eventually("a gate of the 2027 CA is served", || {
        let (gateway, renewed) = (&gateway, renewed.clone());
        async move {
            match gateway.tls_channel(renewed).await {
                Ok(channel) => served(&mut GateClient::new(channel)).await,
                Err(_) => false,
            }
        }
    })
    .await;
    // The connection opened before the rotation was never dropped: it still answers
    // (a new connection from this client, which trusts only the 2026 CA, would fail).
    for _ in 0..3 {
        assert!(served(&mut open).await, "the open connection keeps working");
    }
    let stale = ca_2026.client(Some(&ca_2026.gate(GATE)));
    if let Ok(channel) = gateway.tls_channel(stale).await {
        let status = GateClient::new(channel).authorize(tap(card(CARD))).await.unwrap_err();
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled),
            "a client that trusts only the old CA is refused: {status:?}"
        );
    }

    // A broken certificate file is refused; what is in use stays, and the log says why.
    std::fs::write(gateway.path("server.pem"), "not a certificate").unwrap();
    gateway.reload();
    gateway.wait_for_log("TLS not reloaded").await;
    assert!(gateway.log().contains("server.tls.cert"), "{}", gateway.log());
    let mut fresh = gateway.gate_over(ca_2027.client(Some(&ca_2027.gate(GATE)))).await;
    assert!(served(&mut fresh).await);
    assert!(served(&mut open).await);
}

#[tokio::test]
async fn caller_and_issuer_key_sets_are_reloaded_when_their_files_change() {
    let builder = GatewayBuilder::new()
        .issuer("alipay", SigningAlg::EdDsa)
        .account("alipay", "acct-green", 1)
        .status(1, GREEN)
        .server(r#"reload_interval = "100ms""#);
    let (gateway, issuers) = builder.start().await;
    let old_token = gateway.token(CallerKind::BackEnd, "ops", None);
    let lookup = || pb::LookupRequest {
        subject: Some(pb::lookup_request::Subject::IdNumber(
            ridegate_adapters::test_util::synthetic_resident_id(1),
        )),
    };
    let mut links = gateway.links().await;
    links.lookup(authed(lookup(), &old_token)).await.unwrap();

    // The caller key is replaced: new tokens work, the old key's are refused.
    let new_key = SigningKey::generate(SigningAlg::EdDsa, "callers-2027").unwrap();
    let set = serde_json::json!({ "keys": [new_key.public_jwk().unwrap()] });
    std::fs::write(gateway.path("callers.jwks.json"), set.to_string()).unwrap();
    let minter = CallerTokenMinter::new(new_key);
    let new_token = minter
        .token(CallerKind::BackEnd, "ops", None, now(), Duration::from_secs(600))
        .unwrap();
    eventually("a token under the new caller key is accepted", || {
        let (mut links, token) = (links.clone(), new_token.clone());
        async move { links.lookup(authed(lookup(), &token)).await.is_ok() }
    })
    .await;
    let status = links.lookup(authed(lookup(), &old_token)).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "the token's key id is not a configured caller key"
        )
    );

    // The issuer's key rotates: codes under the new key are allowed, the old key's are
    // of an unknown key.
    let new_issuer_key = SigningKey::generate(SigningAlg::EdDsa, "alipay-2").unwrap();
    let set = serde_json::json!({ "keys": [new_issuer_key.public_jwk().unwrap()] });
    std::fs::write(gateway.path("alipay.jwks.json"), set.to_string()).unwrap();
    let new_minter = CodeMinter::new("alipay", new_issuer_key);
    let mut gate = gateway.gate().await;
    eventually("a code under the issuer's new key is allowed", || {
        let (mut gate, qr) = (gate.clone(), ridegate_tests::codes::valid(&new_minter, "acct-green"));
        async move {
            gate.authorize(tap(code(&qr)))
                .await
                .is_ok_and(|r| outcome(r.get_ref()) == (Verdict::Allow, Reason::HealthGreen))
        }
    })
    .await;
    let old_code = ridegate_tests::codes::valid(&issuers[0].minter, "acct-green");
    let answer = gate.authorize(tap(code(&old_code))).await.unwrap().into_inner();
    assert_eq!(outcome(&answer), (Verdict::Deny, Reason::CodeUnknownKey));

    // A broken key set is refused and logged; the keys in use stay.
    std::fs::write(gateway.path("callers.jwks.json"), "{ not json").unwrap();
    gateway.wait_for_log("key sets not reloaded").await;
    assert!(gateway.log().contains("callers.jwks_file"), "{}", gateway.log());
    links.lookup(authed(lookup(), &new_token)).await.unwrap();
}

#[tokio::test]
async fn a_token_revoked_in_the_revocations_file_is_refused_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let revocations = dir.path().join("revocations.json");
    std::fs::write(&revocations, r#"{"tokens": []}"#).unwrap();
    let (gateway, _) = GatewayBuilder::new()
        .server(r#"reload_interval = "0s""#)
        .callers_setting(&format!("revocations_file = \"{}\"", revocations.display()))
        .start()
        .await;
    let mut claims = CallerTokenMinter::claims(CallerKind::BackEnd, "ops", None, now(), Duration::from_secs(600));
    claims.jti = "leaked-2027-01".into();
    let token = gateway.callers.sign(&claims).unwrap();
    let lookup = || pb::LookupRequest {
        subject: Some(pb::lookup_request::Subject::IdNumber(
            ridegate_adapters::test_util::synthetic_resident_id(1),
        )),
    };
    let mut links = gateway.links().await;
    links.lookup(authed(lookup(), &token)).await.unwrap();
    std::fs::write(&revocations, r#"{"tokens": ["leaked-2027-01"]}"#).unwrap();
    gateway.reload();
    gateway.wait_for_log("key sets reloaded").await;
    eventually("the revoked token is refused", || {
        let (mut links, token) = (links.clone(), token.clone());
        async move {
            links
                .lookup(authed(lookup(), &token))
                .await
                .is_err_and(|s| s.message() == "the token has been revoked")
        }
    })
    .await;
    // Other tokens still work.
    let other = gateway.token(CallerKind::BackEnd, "ops", None);
    links.lookup(authed(lookup(), &other)).await.unwrap();
}
