//! Bad requests get a clear status or a DENY with a reason, and never take the server
//! down.

use ridegate_adapters::test_util::SigningAlg;
use ridegate_proto::pb::{self, Reason, Verdict};
use tokio::io::AsyncWriteExt as _;
use tokio_stream::StreamExt as _;
use tonic::Code;

use ridegate_tests::*;

async fn gateway() -> Gateway {
    GatewayBuilder::new()
        .issuer("alipay", SigningAlg::EdDsa)
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .start()
        .await
        .0
}

async fn assert_still_serving(gateway: &mut Gateway) {
    assert!(gateway.is_running(), "the server died:\n{}", gateway.log());
    let response = gateway
        .gate()
        .await
        .authorize(tap(card("1000000000000001")))
        .await
        .expect("still answers");
    assert_eq!(outcome(&response.into_inner()), (Verdict::Allow, Reason::HealthGreen));
    assert!(!gateway.log().contains("panicked"), "{}", gateway.log());
}

#[tokio::test]
async fn structurally_bad_requests_are_invalid_argument_naming_the_field() {
    let mut gateway = gateway().await;
    let mut client = gateway.gate().await;
    let with = |f: fn(&mut pb::AuthorizeRequest)| {
        let mut r = tap(card("1000000000000001"));
        f(&mut r);
        r
    };
    let cases: Vec<(pb::AuthorizeRequest, &str)> = vec![
        (with(|r| r.credential = None), "credential: one of"),
        (with(|r| r.gate = None), "gate: is required"),
        (
            with(|r| r.gate.as_mut().unwrap().gate_id.clear()),
            "gate.gate_id: is required",
        ),
        (
            with(|r| r.gate.as_mut().unwrap().gate_id = "g".repeat(65)),
            "gate.gate_id: must be at most 64 bytes",
        ),
        (
            with(|r| r.gate.as_mut().unwrap().direction = 0),
            "gate.direction: is required",
        ),
        (
            with(|r| r.gate.as_mut().unwrap().direction = 9),
            "gate.direction: unknown value 9",
        ),
        (
            with(|r| r.request_id = "r".repeat(129)),
            "request_id: must be at most 128 bytes",
        ),
        (
            with(|r| {
                r.credential = Some(pb::authorize_request::Credential::Card(pb::Card {
                    medium: 42,
                    number: "1000000000000001".into(),
                }))
            }),
            "card.medium: unknown value 42",
        ),
        (
            with(|r| r.credential = Some(card("1234"))),
            "card.number: must be 8 to 20 characters, got 4",
        ),
        (
            with(|r| r.credential = Some(card("1000 0000 0000"))),
            "card.number: has an invalid character at position 5",
        ),
        (
            with(|r| {
                r.credential = Some(pb::authorize_request::Credential::Ticket(pb::Ticket {
                    kind: 77,
                    number: "T-1".into(),
                }))
            }),
            "ticket.kind: unknown value 77",
        ),
        (
            with(|r| r.credential = Some(uncovered(pb::UncoveredKind::Unspecified))),
            "uncovered.kind: is required",
        ),
    ];
    for (request, message) in cases {
        let status = client.authorize(request).await.expect_err(message);
        assert_eq!(status.code(), Code::InvalidArgument, "{message}");
        assert!(
            status.message().starts_with(message),
            "{:?} does not start with {message:?}",
            status.message()
        );
    }
    assert_still_serving(&mut gateway).await;
}

#[tokio::test]
async fn garbage_bytes_and_broken_utf8_are_invalid_argument() {
    let mut gateway = gateway().await;
    let garbage: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for body in [garbage.clone(), vec![0xff; 3], vec![0x0a, 0x02, 0xc3, 0x28]] {
        let raw = raw::call(&gateway.addr, "/ridegate.v1.Gate/Authorize", &[], raw::frame(&body)).await;
        assert_eq!(raw.status, Code::InvalidArgument as i32, "{}", raw.message);
        assert!(raw.message.contains("malformed protobuf message"), "{}", raw.message);
    }
    // A frame header that promises more bytes than it carries.
    let mut truncated = raw::frame(&garbage).to_vec();
    truncated.truncate(20);
    let raw = raw::call(&gateway.addr, "/ridegate.v1.Gate/Authorize", &[], truncated.into()).await;
    assert_ne!(raw.status, 0);
    // Not gRPC at all.
    let mut tcp = tokio::net::TcpStream::connect(&gateway.addr).await.unwrap();
    tcp.write_all(b"HELLO\r\n\r\n\x00\x01\x02garbage").await.unwrap();
    drop(tcp);
    assert_still_serving(&mut gateway).await;
}

#[tokio::test]
async fn a_request_beyond_the_size_limit_gets_a_clear_status() {
    let mut gateway = gateway().await;
    let status = gateway
        .gate()
        .await
        .authorize(tap(code(&"A".repeat(3 << 20))))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with("request message too large"), "{status:?}");
    assert_still_serving(&mut gateway).await;
}

#[tokio::test]
async fn an_oversize_tap_on_a_stream_ends_it_with_resource_exhausted_after_answering_what_came_before() {
    let mut gateway = gateway().await;
    let good = prost::Message::encode_to_vec(&tap(card("1000000000000001")).id("before"));
    let huge = prost::Message::encode_to_vec(&tap(code(&"A".repeat(3 << 20))).id("huge"));
    let mut body = raw::frame(&good).to_vec();
    body.extend_from_slice(&raw::frame(&huge));
    let raw = raw::call(&gateway.addr, "/ridegate.v1.Gate/Taps", &[], body.into()).await;
    assert_eq!(raw.status, Code::ResourceExhausted as i32, "{}", raw.message);
    assert!(raw.message.starts_with("request message too large"), "{}", raw.message);
    assert_eq!(raw.messages.len(), 1, "the tap before the oversize one was answered");
    assert_still_serving(&mut gateway).await;
}

#[tokio::test]
async fn a_bad_tap_on_a_stream_gets_an_error_result_and_the_stream_goes_on() {
    let mut gateway = gateway().await;
    let mut client = gateway.gate().await;
    let mut bad = tap(card("1000000000000001")).id("bad");
    bad.credential = None;
    let requests = vec![bad, tap(card("1000000000000001")).id("good")];
    let mut results = client.taps(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Some(result) = results.next().await {
        match result.expect("item").result.expect("result") {
            pb::tap_result::Result::Error(e) => {
                assert_eq!((e.request_id.as_str(), e.code), ("bad", Code::InvalidArgument as i32));
                assert!(e.message.starts_with("credential:"), "{}", e.message);
                seen.push("bad");
            }
            pb::tap_result::Result::Decision(d) => {
                assert_eq!((d.request_id.as_str(), d.reason()), ("good", Reason::HealthGreen));
                seen.push("good");
            }
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, ["bad", "good"]);
    assert_still_serving(&mut gateway).await;
}

#[tokio::test]
async fn garbage_on_a_stream_gets_a_tap_error_in_place_and_the_stream_goes_on() {
    let mut gateway = gateway().await;
    let before = prost::Message::encode_to_vec(&tap(card("1000000000000001")).id("before"));
    let after = prost::Message::encode_to_vec(&tap(card("1000000000000001")).id("after"));
    let mut body = raw::frame(&before).to_vec();
    body.extend_from_slice(&raw::frame(&[0xff, 0xff, 0xff]));
    body.extend_from_slice(&raw::frame(&after));
    let raw = raw::call(&gateway.addr, "/ridegate.v1.Gate/Taps", &[], body.into()).await;
    assert_eq!(raw.status, Code::Ok as i32, "{}", raw.message);
    assert_eq!(raw.messages.len(), 3, "every message answered");
    let mut decided = Vec::new();
    let mut errors = Vec::new();
    for message in &raw.messages {
        match <pb::TapResult as prost::Message>::decode(message.clone())
            .unwrap()
            .result
        {
            Some(pb::tap_result::Result::Decision(d)) => decided.push(d.request_id),
            Some(pb::tap_result::Result::Error(e)) => errors.push(e),
            None => panic!("an empty result"),
        }
    }
    decided.sort();
    assert_eq!(decided, ["after", "before"]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, Code::InvalidArgument as i32);
    assert!(
        errors[0].message.starts_with("malformed protobuf message"),
        "{}",
        errors[0].message
    );
    assert_still_serving(&mut gateway).await;
}
