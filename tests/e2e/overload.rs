//! Overload and the transport's limits, from outside: per-service message sizes, the
//! connection cap, the handshake and idle timeouts, the cap on gate calls open at once,
//! and which taps an overloaded server refuses first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use ridegate_adapters::test_util::{CallerKind, SigningAlg, synthetic_resident_id};
use ridegate_proto::pb::gate_client::GateClient;
use ridegate_proto::pb::{self, Reason, Verdict};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

use ridegate_tests::codes;
use ridegate_tests::*;

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: with the preface, all a client must send to be greeted.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

const SHED: &str = "ridegate_shed_calls_total";

fn shed(kind: &str) -> String {
    format!("{SHED}{{kind=\"{kind}\"}}")
}

fn closed(reason: &str) -> String {
    format!("ridegate_connections_closed_total{{reason=\"{reason}\"}}")
}

/// A raw TCP connection that has sent the HTTP/2 preface and an empty SETTINGS frame.
async fn greeted(addr: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(PREFACE).await.expect("preface");
    tcp.write_all(&EMPTY_SETTINGS).await.expect("settings");
    tcp
}

/// Reads (and drops) whatever the server sends until it closes the connection (a read
/// of 0 bytes, or an error such as a reset): how long that took, or `None` if it was
/// still open after `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Polls `metric` until `done` holds for its value (up to `within`); the last value.
/// A gateway that takes three connections at most, with one green rider's card, once
/// the connection of its own start-up checks has gone.
async fn capped_at_three() -> Gateway {
    let (gateway, _) = GatewayBuilder::new()
        .server("max_connections = 3")
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .start()
        .await;
    wait_open(&gateway, 0).await;
    gateway
}

/// Waits (up to 5 s) until `n` connections are open on the gate port.
async fn wait_open(gateway: &Gateway, n: u32) {
    let open = wait_metric(gateway, "ridegate_connections_open", Duration::from_secs(5), |v| {
        v == f64::from(n)
    })
    .await;
    assert_eq!(open, f64::from(n), "connections open");
}

async fn wait_metric(gateway: &Gateway, metric: &str, within: Duration, done: impl Fn(f64) -> bool) -> f64 {
    let until = Instant::now() + within;
    loop {
        let value = gateway.metric(metric).await;
        if done(value) || Instant::now() >= until {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects a gate client and sends one green-card tap, retrying every 100 ms for up to
/// `within` (a refused connection fails at connect or at the call): the answer, or the
/// last error.
async fn answer_within(addr: &str, within: Duration, number: &str) -> Result<pb::AuthorizeResponse, String> {
    let until = Instant::now() + within;
    loop {
        let attempt = async {
            let channel = Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect_timeout(Duration::from_millis(500))
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let mut request = tonic::Request::new(tap(card(number)));
            request.set_timeout(Duration::from_secs(1));
            GateClient::new(channel)
                .authorize(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("call: {s}"))
        };
        let result = attempt.await;
        if result.is_ok() || Instant::now() >= until {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `grpc-retry-pushback-ms` a refusal carries, if any.
fn pushback(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The gate sees a 20 KiB QR text (too big for a ride code, within `max_tap_bytes`):
/// DENY with CODE_OVERSIZE; a 40 KiB one (over `max_tap_bytes`): RESOURCE_EXHAUSTED,
/// with no retry hint since it will never fit. A back end's bulk-link batch well over
/// 32 KiB still lands, and one over `max_request_bytes` (2 MiB) does not: the gate
/// port's limits are per service.
#[tokio::test]
async fn taps_and_link_batches_have_their_own_size_limits() {
    let (gateway, _) = GatewayBuilder::new()
        .issuer("alipay", SigningAlg::EdDsa)
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .start()
        .await;
    let mut gate = gateway.gate().await;

    let answer = gate
        .authorize(tap(code(&"A".repeat(20 << 10))))
        .await
        .expect("a 20 KiB tap is decided")
        .into_inner();
    assert_eq!(outcome(&answer), (Verdict::Deny, Reason::CodeOversize));

    let status = gate
        .authorize(tap(code(&"A".repeat(40 << 10))))
        .await
        .expect_err("a 40 KiB tap is over max_tap_bytes");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with("request message too large"), "{status:?}");
    assert_eq!(pushback(&status), None, "an oversize tap never fits: no retry hint");

    // The gate port still answers.
    let answer = gate
        .authorize(tap(card("1000000000000001")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&answer), (Verdict::Allow, Reason::HealthGreen));

    let token = gateway.token(CallerKind::BackEnd, "bulk-overload", None);
    let row = |number: String, subject: pb::link_row::Subject| pb::LinkRow {
        credential: Some(pb::LinkCredential {
            credential: Some(pb::link_credential::Credential::Card(pb::Card {
                medium: pb::CardMedium::Physical.into(),
                number,
            })),
        }),
        subject: Some(subject),
    };
    let batch = pb::LinkBatch {
        rows: (0..2_000u64)
            .map(|i| {
                row(
                    format!("40{i:014}"),
                    pb::link_row::Subject::IdNumber(synthetic_resident_id(20_000 + i)),
                )
            })
            .collect(),
        sequence: 1,
    };
    let size = batch.encoded_len();
    assert!(size > 2 * (32 << 10) && size < 2 << 20, "{size} bytes");
    let results: Vec<pb::LinkBatchResult> = gateway
        .links()
        .await
        .bulk_link(authed(tokio_stream::iter([batch]), &token))
        .await
        .expect("bulk link")
        .into_inner()
        .map(|r| r.expect("a batch over max_tap_bytes is accepted on Links"))
        .collect()
        .await;
    assert_eq!(results.len(), 1);
    assert_eq!(
        (results[0].sequence, results[0].linked),
        (1, 2_000),
        "{:?}",
        results[0].rejected
    );
    // The batch's last row resolves at the gate (its rider has no status: no record).
    let answer = gate
        .authorize(tap(card(&format!("40{:014}", 1_999))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&answer), (Verdict::Assist, Reason::NoHealthRecord));

    // Over max_request_bytes: refused by the decoder.
    let huge = pb::LinkBatch {
        rows: (0..8_000u64)
            .map(|i| row(format!("50{i:014}"), pb::link_row::Subject::Identity("f".repeat(300))))
            .collect(),
        sequence: 2,
    };
    assert!(huge.encoded_len() > 2 << 20);
    let mut stream = gateway
        .links()
        .await
        .bulk_link(authed(tokio_stream::iter([huge]), &token))
        .await
        .expect("bulk link")
        .into_inner();
    let status = stream.next().await.expect("an item").expect_err("over 2 MiB");
    // The limit named is max_request_bytes. (An oversize message inside a Links stream
    // still carries tonic's OUT_OF_RANGE: only unary calls and `Taps` map it to
    // RESOURCE_EXHAUSTED.)
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{status:?}"
    );
    assert!(status.message().contains("the limit is: 2097152 bytes"), "{status:?}");
}

/// Three connections are open (each sent the HTTP/2 preface); a fourth one, over
/// `max_connections`, is closed at once while the three are still served. Once one of
/// the three goes away, a gate connects and gets its answer.
#[tokio::test]
async fn a_connection_over_the_cap_is_closed_at_once_and_a_freed_slot_is_used_again() {
    let gateway = capped_at_three().await;

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(greeted(&gateway.addr).await);
    }
    wait_open(&gateway, 3).await;

    let mut fourth = TcpStream::connect(&gateway.addr).await.expect("the kernel accepts");
    let _ = fourth.write_all(PREFACE).await;
    let _ = fourth.write_all(&EMPTY_SETTINGS).await;
    let took = closed_within(&mut fourth, Duration::from_secs(2)).await;
    assert!(took.is_some(), "the fourth connection is still open after 2 s");
    assert!(gateway.metric("ridegate_connections_refused_total").await >= 1.0);
    assert_eq!(gateway.metric("ridegate_connections_open").await, 3.0);
    // The three are still served: none of them was closed.
    for tcp in &mut held {
        assert_eq!(closed_within(tcp, Duration::from_millis(50)).await, None);
    }

    drop(held.pop());
    let answer = answer_within(&gateway.addr, Duration::from_secs(3), "1000000000000001")
        .await
        .expect("a freed slot takes a new connection");
    assert_eq!(outcome(&answer), (Verdict::Allow, Reason::HealthGreen));
}

/// At the cap, a connection that has not sent a byte makes way: three silent
/// connections hold every slot of `max_connections = 3`, yet a gate that connects is
/// answered at once (well before the 10 s handshake timeout), and the oldest silent one
/// is closed.
#[tokio::test]
async fn at_the_cap_the_oldest_silent_connection_makes_way_for_a_gate() {
    let gateway = capped_at_three().await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(&gateway.addr).await.expect("connect"));
    }
    wait_open(&gateway, 3).await;
    let answer = answer_within(&gateway.addr, Duration::from_secs(2), "1000000000000001")
        .await
        .expect("a gate is answered although silent connections held every slot");
    assert_eq!(outcome(&answer), (Verdict::Allow, Reason::HealthGreen));
    assert!(
        closed_within(&mut silent[0], Duration::from_secs(1)).await.is_some(),
        "the oldest silent connection was closed"
    );
    assert_eq!(gateway.metric("ridegate_connections_refused_total").await, 0.0);
}

/// A connection that sends nothing is closed once `handshake_timeout` (500 ms) has
/// passed, and counted; a gate that connects normally is answered.
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let (gateway, _) = GatewayBuilder::new()
        .server("handshake_timeout = \"500ms\"")
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .start()
        .await;
    let mut silent = TcpStream::connect(&gateway.addr).await.expect("connect");
    let took = closed_within(&mut silent, Duration::from_secs(2))
        .await
        .expect("the silent connection is closed within 2 s");
    assert!(
        took >= Duration::from_millis(450),
        "closed after {took:?}, before the timeout"
    );
    let handshake = wait_metric(&gateway, &closed("handshake"), Duration::from_secs(1), |v| v >= 1.0).await;
    assert!(handshake >= 1.0, "{handshake}");
    let answer = answer_within(&gateway.addr, Duration::from_secs(2), "1000000000000001")
        .await
        .expect("a normal gate is answered");
    assert_eq!(outcome(&answer), (Verdict::Allow, Reason::HealthGreen));
}

/// A connection that sent the HTTP/2 preface at once is still open, and not counted as
/// a handshake timeout, well after `handshake_timeout` (500 ms) has passed.
#[tokio::test]
async fn a_greeted_connection_outlives_the_handshake_timeout() {
    let (gateway, _) = GatewayBuilder::new()
        .server("handshake_timeout = \"500ms\"")
        .start()
        .await;
    let mut polite = greeted(&gateway.addr).await;
    let closed_after = closed_within(&mut polite, Duration::from_millis(1_500)).await;
    assert_eq!(closed_after, None, "a greeted connection was closed");
    assert_eq!(gateway.metric(&closed("handshake")).await, 0.0);
}

/// A `Taps` stream open on an HTTP/2 connection for longer than `idle_timeout` (500 ms).
struct OpenTaps {
    client: h2::client::SendRequest<bytes::Bytes>,
    _send: h2::SendStream<bytes::Bytes>,
    _body: h2::RecvStream,
}

/// Opens a `Taps` stream over a bare HTTP/2 connection (so that a GOAWAY is seen:
/// after one, no new stream can be opened), sends one tap and reads its result.
async fn open_taps(addr: &str, number: &str) -> OpenTaps {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let (response, mut send) = client.send_request(grpc_request(addr, "Taps"), false).expect("send");
    let message = tap(card(number)).id("held").encode_to_vec();
    send.send_data(raw::frame(&message), false).expect("tap");
    let mut body = response.await.expect("response").into_body();
    let mut data = Vec::new();
    while data.len() < 5 || data.len() < 5 + u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize {
        let chunk = body.data().await.expect("a result").expect("chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let result = pb::TapResult::decode(&data[5..]).expect("a tap result");
    assert!(
        matches!(result.result, Some(pb::tap_result::Result::Decision(_))),
        "{result:?}"
    );
    OpenTaps {
        client,
        _send: send,
        _body: body,
    }
}

fn grpc_request(addr: &str, method: &str) -> http::Request<()> {
    http::Request::post(format!("http://{addr}/ridegate.v1.Gate/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// A gate connection with no call open for `idle_timeout` (500 ms) is sent GOAWAY and
/// counted; the gate's channel reconnects by itself for its next tap. A connection with
/// a `Taps` stream open all along is not idle: it still takes new calls.
#[tokio::test]
async fn a_connection_without_calls_is_sent_goaway_after_the_idle_timeout() {
    let (gateway, _) = GatewayBuilder::new()
        .server("idle_timeout = \"500ms\"")
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .start()
        .await;
    let mut streaming = open_taps(&gateway.addr, "1000000000000001").await;
    let mut gate = gateway.gate().await;
    let answer = gate
        .authorize(tap(card("1000000000000001")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&answer), (Verdict::Allow, Reason::HealthGreen));

    // The idle check runs every idle_timeout: the idle connection goes within 2 × 500 ms.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let idle = wait_metric(&gateway, &closed("idle"), Duration::from_secs(1), |v| v >= 1.0).await;
    assert!(idle >= 1.0, "{idle}");

    let answer = gate
        .authorize(tap(card("1000000000000001")))
        .await
        .expect("the channel reconnects after GOAWAY")
        .into_inner();
    assert_eq!(outcome(&answer), (Verdict::Allow, Reason::HealthGreen));

    // No GOAWAY on the connection with the open stream: a new call on it is answered.
    let (response, mut send) = streaming
        .client
        .send_request(grpc_request(&gateway.addr, "Authorize"), false)
        .expect("no GOAWAY on a connection with a call open");
    let message = tap(card("1000000000000001")).encode_to_vec();
    send.send_data(raw::frame(&message), true).expect("tap");
    let response = tokio::time::timeout(Duration::from_secs(2), response)
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
}

/// With `max_in_flight = 1` and a gate's `Taps` stream open, a unary tap is refused at
/// once with RESOURCE_EXHAUSTED and a retry hint in `grpc-retry-pushback-ms`, and
/// counted; once the stream ends, unary taps are answered again.
#[tokio::test]
async fn beyond_max_in_flight_a_call_is_refused_with_a_retry_hint() {
    let (gateway, _) = GatewayBuilder::new()
        .toml("[admission]\nmax_in_flight = 1\n")
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .start()
        .await;
    let mut gate = gateway.gate().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut results = gate
        .taps(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tx.send(tap(card("1000000000000001")).id("on-stream")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), results.next())
        .await
        .expect("answered in time")
        .expect("a result")
        .expect("an item");
    let Some(pb::tap_result::Result::Decision(decision)) = first.result else {
        panic!("{first:?}");
    };
    assert_eq!(outcome(&decision), (Verdict::Allow, Reason::HealthGreen));

    let refused_at = Instant::now();
    let status = gateway
        .gate()
        .await
        .authorize(tap(card("1000000000000001")))
        .await
        .expect_err("one gate call is open already");
    assert!(refused_at.elapsed() < Duration::from_secs(1), "refused at once");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let hint = pushback(&status).unwrap_or_else(|| panic!("no grpc-retry-pushback-ms: {status:?}"));
    assert!((10..=2_000).contains(&hint), "{hint} ms");
    assert!(gateway.metric(&shed("at_capacity")).await >= 1.0);
    // Operators see the hint the gates are given.
    let shown = gateway.metric("ridegate_retry_hint_seconds").await;
    assert!((shown * 1e3 - hint as f64).abs() < 1.0, "{shown} s against {hint} ms");

    // The stream is still served.
    tx.send(tap(card("1000000000000001")).id("still")).await.unwrap();
    let second = results.next().await.expect("a result").expect("an item");
    assert!(
        matches!(second.result, Some(pb::tap_result::Result::Decision(ref d)) if d.request_id == "still"),
        "{second:?}"
    );
    drop(tx);
    let rest = tokio::time::timeout(Duration::from_secs(5), results.collect::<Vec<_>>())
        .await
        .expect("the stream ends");
    assert!(rest.is_empty(), "{rest:?}");

    let until = Instant::now() + Duration::from_secs(2);
    loop {
        match gate.authorize(tap(card("1000000000000001"))).await {
            Ok(answer) => {
                assert_eq!(outcome(&answer.into_inner()), (Verdict::Allow, Reason::HealthGreen));
                break;
            }
            Err(status) if status.code() == Code::ResourceExhausted && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("still refused after the stream ended: {status:?}"),
        }
    }
}

/// The deadline of each tap under overload.
const TAP_TIMEOUT: Duration = Duration::from_millis(30);

/// What the client saw for one kind of tap.
#[derive(Debug, Default)]
struct Seen {
    sent: u64,
    ok: u64,
    /// OK answers that took longer than the deadline by the client's own clock (which
    /// also counts the client's own scheduling delays on a busy machine).
    ok_slow: u64,
    /// RESOURCE_EXHAUSTED with a retry hint in 10..=2000 ms.
    refused: u64,
    /// Past the client's own deadline (tonic's CANCELLED "Timeout expired", or
    /// DEADLINE_EXCEEDED).
    late: u64,
    /// Failed with the connection under it (a GOAWAY, a broken pipe), not with a status
    /// from ridegate.
    lost: u64,
    /// Verdict and reason of each OK answer.
    answers: BTreeMap<(i32, i32), u64>,
    /// Anything else.
    other: Vec<String>,
}

impl Seen {
    fn record(&mut self, took: Duration, result: Result<tonic::Response<pb::AuthorizeResponse>, tonic::Status>) {
        match result {
            Ok(answer) => {
                let answer = answer.into_inner();
                self.ok += 1;
                if took > TAP_TIMEOUT {
                    self.ok_slow += 1;
                }
                *self.answers.entry((answer.verdict, answer.reason)).or_default() += 1;
            }
            Err(status) if status.code() == Code::ResourceExhausted && pushback(&status).is_some() => {
                match pushback(&status) {
                    Some(10..=2_000) => self.refused += 1,
                    _ => self.other.push(format!("a hint out of range: {status:?}")),
                }
            }
            Err(status) if matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded) => self.late += 1,
            Err(status)
                if std::error::Error::source(&status)
                    .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some()) =>
            {
                self.lost += 1;
            }
            Err(status) => self.other.push(format!("{status:?}")),
        }
    }

    fn add(&mut self, other: Self) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.ok_slow += other.ok_slow;
        self.refused += other.refused;
        self.late += other.late;
        self.lost += other.lost;
        for (k, v) in other.answers {
            *self.answers.entry(k).or_default() += v;
        }
        self.other.extend(other.other);
    }
}

/// What the server counted for one kind of tap.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Counted {
    shed: u64,
    decided: u64,
}

impl Counted {
    /// The share of the taps the server looked at that it refused.
    fn shed_share(self) -> f64 {
        self.shed as f64 / (self.shed + self.decided).max(1) as f64
    }
}

/// The server's counts for exits and for ride-code entries, and its other shed
/// counters (`card_entry`, `retry`, `at_capacity`).
async fn counted(gateway: &Gateway) -> (Counted, Counted, [u64; 3]) {
    let page = gateway.metrics().await;
    let value = |name: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let decisions: Vec<(&str, u64)> = page
        .lines()
        .filter_map(|l| {
            let (name, n) = l.strip_prefix("ridegate_decisions_total{")?.rsplit_once(' ')?;
            Some((name, n.parse::<f64>().ok()? as u64))
        })
        .collect();
    let exits_decided: u64 = decisions
        .iter()
        .filter(|(labels, _)| labels.contains("reason=\"exit\""))
        .map(|(_, n)| n)
        .sum();
    let all_decided: u64 = decisions.iter().map(|(_, n)| n).sum();
    (
        Counted {
            shed: value(&shed("exit")),
            decided: exits_decided,
        },
        Counted {
            shed: value(&shed("code_entry")),
            decided: all_decided - exits_decided,
        },
        [
            value(&shed("card_entry")),
            value(&shed("retry")),
            value(&shed("at_capacity")),
        ],
    )
}

/// Many gates at once on a small machine (400 calling at a time at most, over 8
/// connections), each tap with a 30 ms deadline, half exits (cards) and half ride-code
/// entries: of the taps the server looked at, it refuses ride-code entries at least as
/// often as exits. Every call is answered (exits ALLOW, codes ALLOW), refused with a
/// retry hint, or ends at the client's deadline — or fails with its connection, which
/// is reported, not asserted (see the note it prints).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_ride_code_entries_are_shed_before_exits() {
    const RIDERS: u64 = 8;
    const CHANNELS: usize = 8;
    const TASKS: usize = 400;
    const CALLS: usize = 4_000;
    const RAMP: Duration = Duration::from_secs(2);
    let mut builder = GatewayBuilder::new().issuer("alipay", SigningAlg::EdDsa);
    for person in 1..=RIDERS {
        builder = builder
            .card(&format!("10000000000000{person:02}"), person)
            .account("alipay", &format!("acct-{person}"), person)
            .status(person, GREEN);
    }
    let (gateway, issuers) = builder.start().await;
    let minter = &issuers[0].minter;
    let mut channels = Vec::new();
    for _ in 0..CHANNELS {
        channels.push(gateway.gate().await);
    }
    // Every tap made (ride codes minted) before the clock starts; the kinds alternate.
    let taps: Arc<Vec<(bool, pb::AuthorizeRequest)>> = Arc::new(
        (0..CALLS)
            .map(|i| {
                let person = (i as u64 % RIDERS) + 1;
                if i % 2 == 0 {
                    (true, tap(card(&format!("10000000000000{person:02}"))).exit())
                } else {
                    (false, tap(code(&codes::valid(minter, &format!("acct-{person}")))))
                }
            })
            .collect(),
    );
    // The gates come one after another (a call at a time each) until all are calling:
    // the load passes through the range where only ride-code entries are too late,
    // then overloads the server outright.
    let calling = Arc::new(tokio::sync::Semaphore::new(0));
    let ramp = {
        let calling = calling.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(RAMP / (TASKS as u32 / 2));
            for _ in 0..TASKS / 2 {
                every.tick().await;
                calling.add_permits(2);
            }
        })
    };
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop_at = tokio::time::Instant::now() + Duration::from_secs(20);
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let mut client = channels[t % CHANNELS].clone();
            let (taps, next, calling) = (taps.clone(), next.clone(), calling.clone());
            tokio::spawn(async move {
                let (mut exits, mut entries) = (Seen::default(), Seen::default());
                loop {
                    let _turn = calling.acquire().await.expect("open");
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((is_exit, message)) = taps.get(i).cloned() else {
                        break;
                    };
                    if tokio::time::Instant::now() >= stop_at {
                        break;
                    }
                    let seen = if is_exit { &mut exits } else { &mut entries };
                    seen.sent += 1;
                    let mut request = tonic::Request::new(message);
                    request.set_timeout(TAP_TIMEOUT);
                    let sent = Instant::now();
                    let result = client.authorize(request).await;
                    seen.record(sent.elapsed(), result);
                }
                (exits, entries)
            })
        })
        .collect();
    let (mut exits, mut entries) = (Seen::default(), Seen::default());
    for task in tasks {
        let (x, e) = task.await.expect("task");
        exits.add(x);
        entries.add(e);
    }
    let elapsed = start.elapsed();
    ramp.abort();

    // Calls the client gave up on may still be looked at by the server: wait until its
    // counters stop moving.
    let mut counts = counted(&gateway).await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = counted(&gateway).await;
        if now == counts {
            break;
        }
        counts = now;
    }
    let (exit_counts, code_counts, others) = counts;
    let report = format!(
        "in {elapsed:?}, the client saw: exits {exits:?}, ride-code entries {entries:?}; the server counted: \
         exits {exit_counts:?} ({:.1} % shed), ride-code entries {code_counts:?} ({:.1} % shed), other kinds \
         shed (card entries, retries, at capacity) {others:?}",
        100.0 * exit_counts.shed_share(),
        100.0 * code_counts.shed_share(),
    );
    println!("{report}");

    assert!(
        exits.other.is_empty() && entries.other.is_empty(),
        "only answers, refusals with a hint, and calls past their deadline: {report}"
    );
    // Only the kinds sent are shed, and only by their deadline (no cap was reached).
    assert_eq!(others, [0, 0, 0], "{report}");
    // Every refusal the client saw was counted (the server may have counted more, whose
    // refusals reached the client after its deadline).
    assert!(
        exit_counts.shed >= exits.refused && code_counts.shed >= entries.refused,
        "{report}"
    );
    // An exit is always allowed; an admitted ride code of a green rider too.
    let exit_answer = (Verdict::Allow as i32, Reason::Exit as i32);
    assert!(exits.answers.keys().all(|k| *k == exit_answer), "{report}");
    assert!(
        entries
            .answers
            .keys()
            .all(|(verdict, _)| *verdict == Verdict::Allow as i32),
        "{report}"
    );
    if exits.late + entries.late + exits.ok_slow + entries.ok_slow > 0 {
        println!(
            "note: {} calls ended at their 30 ms deadline on the client (tonic never returns an answer \
             after it), and {} answers took over 30 ms by the client's clock; the client shares this \
             machine with the server",
            exits.late + entries.late,
            exits.ok_slow + entries.ok_slow
        );
    }
    if exits.lost + entries.lost > 0 {
        println!(
            "note: {} calls failed with their connection (GOAWAY ENHANCE_YOUR_CALM \"too_many_resets\" \
             from the server, or a broken pipe after it)",
            exits.lost + entries.lost
        );
    }
    if exit_counts.shed + code_counts.shed == 0 {
        println!("note: nothing was shed on this machine: the shedding order was not exercised");
        assert_eq!(exits.refused + entries.refused, 0, "{report}");
        return;
    }
    assert!(
        code_counts.shed_share() >= exit_counts.shed_share(),
        "ride-code entries are shed at least as often as exits: {report}"
    );
}
