//! TLS and mutual TLS on the gate port, with real certificates: a gate with its own
//! certificate is served and speaks only for itself; a missing, expired or foreign
//! certificate is refused at the handshake; the gate registry supplies station and line.

use ridegate_adapters::test_util::CallerKind;
use ridegate_proto::pb::gate_client::GateClient;
use ridegate_proto::pb::links_client::LinksClient;
use ridegate_proto::pb::{self, Reason, Verdict};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::ClientTlsConfig;

use ridegate_tests::pki::Pki;
use ridegate_tests::*;

/// The gate every `tap` comes from.
const GATE: &str = "L10-S07-G03";
const CARD: &str = "1000000000000001";

async fn mutual(pki: &Pki) -> Gateway {
    GatewayBuilder::new()
        .card(CARD, 1)
        .status(1, GREEN)
        .tls(pki.server())
        .client_ca(pki.ca_pem())
        .start()
        .await
        .0
}

/// Asserts that a client with `tls` gets no gRPC answer: the handshake fails, or (TLS
/// 1.3 finishes the client's side first) the first call fails in the transport.
async fn assert_refused(gateway: &Gateway, tls: ClientTlsConfig, what: &str) {
    let Ok(channel) = gateway.tls_channel(tls).await else {
        return;
    };
    let status = GateClient::new(channel)
        .authorize(tap(card(CARD)))
        .await
        .expect_err(what);
    // A transport failure (the server closed the connection), never a gRPC answer.
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled),
        "{what}: {status:?}"
    );
}

#[tokio::test]
async fn a_gate_with_its_own_certificate_is_served_and_cannot_speak_for_another() {
    let pki = Pki::new("operator CA");
    let gateway = mutual(&pki).await;
    let mut gate = gateway.gate_over(pki.client(Some(&pki.gate(GATE)))).await;
    let answer = gate.authorize(tap(card(CARD))).await.unwrap().into_inner();
    assert_eq!(outcome(&answer), (Verdict::Allow, Reason::HealthGreen));

    let mut other = tap(card(CARD));
    other.gate.as_mut().unwrap().gate_id = "L10-S07-G04".into();
    let status = gate.authorize(other.clone()).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "the client certificate is for gate L10-S07-G03; it cannot speak for gate.gate_id L10-S07-G04"
        )
    );
    // On the Taps stream too: the other gate's tap is refused in place, the own answered.
    let taps = vec![other.id("t-other"), tap(card(CARD)).id("t-own")];
    let mut results = gate.taps(tokio_stream::iter(taps)).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Some(result) = results.next().await {
        match result.unwrap().result.unwrap() {
            pb::tap_result::Result::Decision(d) => seen.push((d.request_id.clone(), Code::Ok as i32)),
            pb::tap_result::Result::Error(e) => seen.push((e.request_id, e.code)),
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("t-other".to_owned(), Code::PermissionDenied as i32),
            ("t-own".to_owned(), Code::Ok as i32)
        ]
    );
    // A caller's certificate from the same CA opens the connection, but names no gate.
    let mut caller = gateway
        .gate_over(pki.client(Some(&pki.caller("upgrade-service"))))
        .await;
    let status = caller.authorize(tap(card(CARD))).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("names no gate"), "{status:?}");
    assert_eq!(gateway.metric("ridegate_gate_refusals_total").await, 3.0);
}

#[tokio::test]
async fn missing_expired_and_foreign_certificates_are_refused_at_the_handshake() {
    let pki = Pki::new("operator CA");
    let foreign = Pki::new("someone else's CA");
    let gateway = mutual(&pki).await;
    assert_refused(&gateway, pki.client(None), "no client certificate").await;
    assert_refused(
        &gateway,
        pki.client(Some(&pki.expired_gate(GATE))),
        "an expired certificate",
    )
    .await;
    // A foreign CA's certificate for the very same gate id.
    let forged = foreign.gate(GATE);
    assert_refused(&gateway, pki.client(Some(&forged)), "a foreign CA's certificate").await;
    // A plaintext client gets nothing either.
    let status = gateway
        .gate()
        .await
        .authorize(tap(card(CARD)))
        .await
        .expect_err("plaintext");
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{status:?}"
    );
    // And the right certificate still works on the same server.
    let mut gate = gateway.gate_over(pki.client(Some(&pki.gate(GATE)))).await;
    assert_eq!(
        outcome(&gate.authorize(tap(card(CARD))).await.unwrap().into_inner()),
        (Verdict::Allow, Reason::HealthGreen)
    );
    // Each refusal was counted, on the admin listener.
    let failures = gateway.metric("ridegate_tls_handshake_failures_total").await;
    assert!(failures >= 4.0, "{failures} handshake failures counted");
}

#[tokio::test]
async fn a_client_refuses_a_server_its_ca_did_not_sign_or_for_another_name() {
    let pki = Pki::new("operator CA");
    let gateway = GatewayBuilder::new()
        .card(CARD, 1)
        .status(1, GREEN)
        .tls(pki.server())
        .start()
        .await
        .0;
    // TLS without client certificates: any client that trusts the CA is served.
    let mut gate = gateway.gate_over(pki.client(None)).await;
    assert_eq!(
        outcome(&gate.authorize(tap(card(CARD))).await.unwrap().into_inner()),
        (Verdict::Allow, Reason::HealthGreen)
    );
    let stranger = Pki::new("someone else's CA");
    assert_refused(&gateway, stranger.client(None), "a server from another CA").await;
    let misnamed = GatewayBuilder::new()
        .tls(pki.server_named("gates.example"))
        .start()
        .await
        .0;
    assert_refused(&misnamed, pki.client(None), "a server certificate for another name").await;
}

#[tokio::test]
async fn with_optional_client_certificates_token_callers_connect_without_one_but_gates_cannot() {
    let pki = Pki::new("operator CA");
    let gateway = GatewayBuilder::new()
        .card(CARD, 1)
        .status(1, GREEN)
        .tls(pki.server())
        .client_ca(pki.ca_pem())
        .tls_setting(r#"client_certificates = "optional""#)
        .start()
        .await
        .0;
    let channel = gateway.tls_channel(pki.client(None)).await.unwrap();
    let token = gateway.token(CallerKind::BackEnd, "ops", None);
    let lookup = pb::LookupRequest {
        subject: Some(pb::lookup_request::Subject::IdNumber(
            ridegate_adapters::test_util::synthetic_resident_id(1),
        )),
    };
    LinksClient::new(channel.clone())
        .lookup(authed(lookup, &token))
        .await
        .expect("a token caller without a certificate");
    let status = GateClient::new(channel).authorize(tap(card(CARD))).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "gate calls need the gate's client certificate")
    );
    // A foreign CA's certificate is still refused: optional is not "any".
    let foreign = Pki::new("someone else's CA");
    assert_refused(&gateway, pki.client(Some(&foreign.gate(GATE))), "a foreign certificate").await;
}

#[tokio::test]
async fn the_gate_registry_supplies_station_and_line_and_refuses_what_it_does_not_have() {
    let (gateway, _) = GatewayBuilder::new()
        .card(CARD, 1)
        .status(1, GREEN)
        .station("S07", "shadow")
        .toml("[gates.L10-S07-G03]\nstation = \"S07\"\nline = \"L10\"\n")
        .start()
        .await;
    let mut gate = gateway.gate().await;
    // The station comes from the registry: S07 is in shadow mode.
    let mut bare = tap(card(CARD));
    bare.gate.as_mut().unwrap().station_id = String::new();
    bare.gate.as_mut().unwrap().line_id = String::new();
    assert_eq!(
        outcome(&gate.authorize(bare).await.unwrap().into_inner()),
        (Verdict::Allow, Reason::CheckShadow)
    );
    let status = gate.authorize(tap(card(CARD)).at("S99")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "gate.station_id differs from the registry's for gate L10-S07-G03"
        )
    );
    let mut unknown = tap(card(CARD));
    unknown.gate.as_mut().unwrap().gate_id = "L99-S01-G01".into();
    let status = gate.authorize(unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn the_gate_state_feed_follows_gate_admission_a_caller_certificate_gets_nothing() {
    use ridegate_proto::pb::gate_state_client::GateStateClient;
    let pki = Pki::new("operator CA");
    let gateway = mutual(&pki).await;
    // A caller's certificate from the same CA names no gate: no state, no key.
    let caller = gateway
        .tls_channel(pki.client(Some(&pki.caller("upgrade-service"))))
        .await
        .unwrap();
    let follow = pb::FollowRequest {
        group: "line-10".into(),
        from_version: 0,
        epoch: 0,
    };
    let status = GateStateClient::new(caller)
        .follow(follow.clone())
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // A gate may follow, and may upload only its own decisions.
    let channel = gateway.tls_channel(pki.client(Some(&pki.gate(GATE)))).await.unwrap();
    let mut client = GateStateClient::new(channel);
    let mut updates = client.follow(follow).await.unwrap().into_inner();
    assert!(matches!(
        updates.message().await.unwrap().and_then(|u| u.kind),
        Some(pb::state_update::Kind::Begin(_))
    ));
    let summary = client
        .upload(tokio_stream::iter(vec![
            offline_decision(GATE, [1; 16]),
            offline_decision("L10-S07-G04", [2; 16]),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.recorded, summary.rejected), (1, 1));
    assert!(
        summary.first_rejection.contains("cannot speak for"),
        "{}",
        summary.first_rejection
    );
}
