//! Every reason code, reached over gRPC: unary `Authorize` and the `Taps` stream.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use ridegate_adapters::test_util::SigningAlg;
use ridegate_proto::pb::{self, Reason, Verdict};
use tokio_stream::StreamExt as _;

use ridegate_tests::codes;
use ridegate_tests::*;

const HOUR: i64 = 3_600_000;

/// One tap and what it must get.
struct Scenario {
    name: &'static str,
    /// Taps sent (unary) before this one, e.g. the first use of a replayed code.
    before: Vec<pb::AuthorizeRequest>,
    request: pb::AuthorizeRequest,
    expect: (Verdict, Reason),
    /// A `grpc-timeout` to send (unary only).
    timeout: Option<&'static str>,
}

fn scenario(name: &'static str, request: pb::AuthorizeRequest, expect: (Verdict, Reason)) -> Scenario {
    Scenario {
        name,
        before: Vec::new(),
        request,
        expect,
        timeout: None,
    }
}

async fn population() -> (Gateway, Vec<Issuer>) {
    GatewayBuilder::new()
        .issuer("alipay", SigningAlg::EdDsa)
        .issuer("yitongxing", SigningAlg::Es256)
        .revoke("cert-revoked")
        .card("1000000000000001", 1)
        .account("alipay", "acct-green", 1)
        .account("yitongxing", "ytx-green", 1)
        .ticket("commemorative", "CM-0001", 1)
        .status(1, GREEN)
        .card("1000000000000002", 2)
        .status(2, YELLOW)
        .card("1000000000000003", 3)
        .status(3, RED)
        .card("1000000000000004", 4)
        .status(4, UNTESTED)
        .card("1000000000000005", 5)
        .card("1000000000000007", 7)
        .status(7, GREEN)
        .station("S-SHADOW", "shadow")
        .station("S-OFF", "off")
        .start()
        .await
}

/// Fresh scenarios (new codes each call, since codes are single-use).
fn scenarios(issuers: &[Issuer], unary: bool) -> Vec<Scenario> {
    let alipay = &issuers[0].minter;
    let ytx = &issuers[1].minter;
    let day = Duration::from_secs(86_400);
    let t = now();
    let replayed = codes::valid(alipay, "acct-green");
    let mut list = vec![
        scenario(
            "green card",
            tap(card("1000000000000001")),
            (Verdict::Allow, Reason::HealthGreen),
        ),
        scenario(
            "green ride code",
            tap(code(&codes::valid(alipay, "acct-green"))),
            (Verdict::Allow, Reason::HealthGreen),
        ),
        scenario(
            "green offline code",
            tap(code(&codes::device(&codes::phone(
                ytx,
                "ytx-green",
                &codes::jti(),
                t,
                day,
            )))),
            (Verdict::Allow, Reason::HealthGreen),
        ),
        scenario(
            "green commemorative ticket",
            tap(ticket(pb::TicketKind::Commemorative, "CM-0001")),
            (Verdict::Allow, Reason::HealthGreen),
        ),
        scenario(
            "yellow",
            tap(card("1000000000000002")),
            (Verdict::Deny, Reason::HealthYellow),
        ),
        scenario("red", tap(card("1000000000000003")), (Verdict::Deny, Reason::HealthRed)),
        scenario(
            "no test in 48 h",
            tap(card("1000000000000004")),
            (Verdict::Deny, Reason::TestMissing),
        ),
        scenario(
            "no health record",
            tap(card("1000000000000005")),
            (Verdict::Assist, Reason::NoHealthRecord),
        ),
        scenario(
            "not linked",
            tap(card("1000000000000006")),
            (Verdict::Assist, Reason::NotLinked),
        ),
        scenario(
            "bank card",
            tap(uncovered(pb::UncoveredKind::BankCard)),
            (Verdict::Assist, Reason::NotCovered),
        ),
        scenario(
            "exit while red",
            tap(card("1000000000000003")).exit(),
            (Verdict::Allow, Reason::Exit),
        ),
        scenario(
            "check off",
            tap(card("1000000000000003")).at("S-OFF"),
            (Verdict::Allow, Reason::CheckOff),
        ),
        scenario(
            "shadow red",
            tap(card("1000000000000003")).at("S-SHADOW"),
            (Verdict::Allow, Reason::CheckShadow),
        ),
        scenario(
            "electronic single-journey",
            tap(ticket(pb::TicketKind::ElectronicSingleJourney, "ESJ-0001")),
            (Verdict::Deny, Reason::TicketSuspended),
        ),
        scenario(
            "malformed code",
            tap(code("not-a-ride-code")),
            (Verdict::Deny, Reason::CodeMalformed),
        ),
        scenario("empty code", tap(code("")), (Verdict::Deny, Reason::CodeMalformed)),
        scenario(
            "oversize code",
            tap(code(&"A".repeat(5_000))),
            (Verdict::Deny, Reason::CodeOversize),
        ),
        scenario(
            "20 KiB code",
            tap(code(&"A".repeat(20 << 10))),
            (Verdict::Deny, Reason::CodeOversize),
        ),
        scenario(
            "alg none",
            tap(code(&codes::alg_none("alipay", "alipay-1", "acct-green"))),
            (Verdict::Deny, Reason::CodeAlgNotAllowed),
        ),
        scenario(
            "unknown issuer",
            tap(code(&codes::unknown_key("hangzhou-metro", "a"))),
            (Verdict::Deny, Reason::CodeUnknownIssuer),
        ),
        scenario(
            "unknown key",
            tap(code(&codes::unknown_key("alipay", "acct-green"))),
            (Verdict::Deny, Reason::CodeUnknownKey),
        ),
        scenario(
            "forged",
            tap(code(&codes::tampered(alipay, "acct-green", "alipay"))),
            (Verdict::Deny, Reason::CodeBadSignature),
        ),
        scenario(
            "expired",
            tap(code(&codes::at(
                alipay,
                "acct-green",
                t + -600_000,
                Duration::from_secs(30),
            ))),
            (Verdict::Deny, Reason::CodeExpired),
        ),
        scenario(
            "from the future",
            tap(code(&codes::at(
                alipay,
                "acct-green",
                t + 120_000,
                Duration::from_secs(30),
            ))),
            (Verdict::Deny, Reason::CodeNotYetValid),
        ),
        scenario(
            "lifetime too long",
            tap(code(&codes::at(alipay, "acct-green", t, Duration::from_secs(600)))),
            (Verdict::Deny, Reason::CodeLifetimeTooLong),
        ),
        scenario(
            "certificate expired",
            tap(code(&codes::device(&codes::phone(
                ytx,
                "ytx-green",
                &codes::jti(),
                t + -50 * HOUR,
                day,
            )))),
            (Verdict::Deny, Reason::CodeCertExpired),
        ),
        scenario(
            "certificate forged",
            tap(code(&codes::device(&codes::phone(
                &codes::impostor("yitongxing", "yitongxing-1"),
                "ytx-green",
                &codes::jti(),
                t,
                day,
            )))),
            (Verdict::Deny, Reason::CodeCertInvalid),
        ),
        scenario(
            "certificate revoked",
            tap(code(&codes::device(&codes::phone(
                ytx,
                "ytx-green",
                "cert-revoked",
                t,
                day,
            )))),
            (Verdict::Deny, Reason::CodeCertRevoked),
        ),
        Scenario {
            name: "replayed",
            before: vec![tap(code(&replayed))],
            request: tap(code(&replayed)),
            expect: (Verdict::Deny, Reason::CodeReplayed),
            timeout: None,
        },
        scenario(
            "bare certificate",
            tap(code(
                codes::phone(ytx, "ytx-green", &codes::jti(), t, day)
                    .code("x", t, Duration::from_secs(30))
                    .unwrap()
                    .split('~')
                    .next()
                    .unwrap(),
            )),
            (Verdict::Deny, Reason::CodeWrongType),
        ),
    ];
    if unary {
        // No time left at all: the embedded status needs no waiting, so it still
        // decides — and ridegate answers rather than letting the call time out. (With a
        // status that must be fetched, the unavailable-policy answers: platform.rs.)
        list.push(Scenario {
            name: "no budget left",
            before: Vec::new(),
            request: tap(card("1000000000000007")),
            expect: (Verdict::Allow, Reason::HealthGreen),
            timeout: Some("1n"),
        });
    }
    list
}

fn all_wire_reasons() -> BTreeSet<i32> {
    (1..64).filter(|i| Reason::try_from(*i).is_ok()).collect()
}

#[tokio::test]
async fn every_reason_is_reached_over_unary_authorize() {
    let (gateway, issuers) = population().await;
    let mut client = gateway.gate().await;
    let mut reached = BTreeSet::new();
    for s in scenarios(&issuers, true) {
        for before in s.before {
            client.authorize(before).await.expect("setup tap");
        }
        let response = match s.timeout {
            // tonic's client would enforce this timeout itself; send it raw.
            Some(timeout) => {
                let body = raw::frame(&prost::Message::encode_to_vec(&s.request));
                // On a busy machine the setup taps may have queued: a tap with no time
                // left is then refused with a retry hint (admission), and a gate sends
                // it again after the hint, as this does.
                let mut raw = None;
                for _ in 0..50 {
                    let answer = raw::call(
                        &gateway.addr,
                        "/ridegate.v1.Gate/Authorize",
                        &[("grpc-timeout", timeout)],
                        body.clone(),
                    )
                    .await;
                    if answer.status != tonic::Code::ResourceExhausted as i32 {
                        raw = Some(answer);
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                let raw = raw.unwrap_or_else(|| panic!("{}: refused 50 times", s.name));
                assert_eq!(raw.status, 0, "{}: {}", s.name, raw.message);
                <pb::AuthorizeResponse as prost::Message>::decode(raw.messages[0].clone()).expect("response")
            }
            None => client
                .authorize(s.request)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", s.name))
                .into_inner(),
        };
        assert_eq!(outcome(&response), s.expect, "{}", s.name);
        assert!(
            !response.message_zh.is_empty() && !response.message_en.is_empty(),
            "{}",
            s.name
        );
        assert_eq!(response.decision_id.len(), 16, "{}", s.name);
        if s.name == "shadow red" {
            assert_eq!(
                (response.shadow_verdict(), response.shadow_reason()),
                (Verdict::Deny, Reason::HealthRed)
            );
            assert_eq!(response.mode(), pb::CheckMode::Shadow);
        }
        if s.name == "no budget left" {
            assert!(!response.degraded, "the embedded status is current");
        }
        reached.insert(response.reason);
    }
    let mut wanted = all_wire_reasons();
    // Reached with a platform that cannot answer (platform.rs) and with a replay guard
    // that cannot answer (shared.rs).
    wanted.remove(&(Reason::HealthUnavailable as i32));
    wanted.remove(&(Reason::CodeSingleUseUnknown as i32));
    assert_eq!(reached, wanted, "every reason code is reached");
}

#[tokio::test]
async fn every_reason_but_health_unavailable_is_reached_over_the_taps_stream() {
    let (gateway, issuers) = population().await;
    let mut client = gateway.gate().await;
    let scenarios = scenarios(&issuers, false);
    let mut expected = HashMap::new();
    let mut requests = Vec::new();
    for (i, s) in scenarios.into_iter().enumerate() {
        for before in s.before {
            client.authorize(before).await.expect("setup tap");
        }
        let id = format!("s-{i}");
        expected.insert(id.clone(), (s.name, s.expect));
        requests.push(s.request.id(&id));
    }
    let mut results = client
        .taps(tokio_stream::iter(requests))
        .await
        .expect("stream")
        .into_inner();
    let mut reached = BTreeSet::new();
    while let Some(result) = results.next().await {
        let Some(pb::tap_result::Result::Decision(response)) = result.expect("stream item").result else {
            panic!("every tap here is well-formed");
        };
        let (name, expect) = expected.remove(&response.request_id).expect("one answer per tap");
        assert_eq!(outcome(&response), expect, "{name}");
        reached.insert(response.reason);
    }
    assert!(expected.is_empty(), "unanswered: {expected:?}");
    let mut wanted = all_wire_reasons();
    wanted.remove(&(Reason::HealthUnavailable as i32));
    wanted.remove(&(Reason::CodeSingleUseUnknown as i32));
    assert_eq!(reached, wanted);
}

#[tokio::test]
async fn a_retry_gets_the_original_answer_and_another_request_gets_replayed() {
    let (gateway, issuers) = population().await;
    let mut client = gateway.gate().await;
    let qr = codes::valid(&issuers[0].minter, "acct-green");
    let first = client.authorize(tap(code(&qr)).id("r-42")).await.unwrap().into_inner();
    let retry = client.authorize(tap(code(&qr)).id("r-42")).await.unwrap().into_inner();
    assert_eq!(outcome(&first), (Verdict::Allow, Reason::HealthGreen));
    assert_eq!(
        (retry.decision_id.as_str(), retry.retry, outcome(&retry)),
        (first.decision_id.as_str(), true, outcome(&first))
    );
    let other = client.authorize(tap(code(&qr)).id("r-43")).await.unwrap().into_inner();
    assert_eq!(outcome(&other), (Verdict::Deny, Reason::CodeReplayed));
    // The same request id from another gate is another request.
    let mut elsewhere = tap(code(&qr)).id("r-42");
    elsewhere.gate.as_mut().unwrap().gate_id = "L10-S07-G04".into();
    assert_eq!(
        outcome(&client.authorize(elsewhere).await.unwrap().into_inner()).1,
        Reason::CodeReplayed
    );
}

#[tokio::test]
async fn shadow_taps_are_audited_with_the_verdict_they_would_have_had() {
    let (gateway, _) = population().await;
    let mut client = gateway.gate().await;
    let response = client
        .authorize(tap(card("1000000000000003")).at("S-SHADOW"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.verdict(), Verdict::Allow);
    let (_, gateway) = gateway.terminate().await;
    let audit = gateway.audit();
    let event = audit
        .iter()
        .find(|e| e["decision_id"] == response.decision_id.as_str())
        .expect("audited");
    assert_eq!(event["verdict"], "allow");
    assert_eq!(event["mode"], "shadow");
    assert_eq!(event["shadow"], serde_json::json!(["deny", "health_red"]));
    assert_eq!(event["station_id"], "S-SHADOW");
    assert_eq!(event["identity"].as_str().map(str::len), Some(32), "pseudonym, as hex");
}
