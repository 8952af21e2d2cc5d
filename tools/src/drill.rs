//! `ridegate drill`: the transport drills — clients that hold a server's resources
//! without doing any work — run against a server while a probe keeps tapping, so an
//! operator can see what a gate would see and how much memory the server pins.
//!
//! - `idle`: TCP connections that never send a byte.
//! - `unread`: HTTP/2 connections that open many calls and never open their receive
//!   window, so no answer can be sent.
//! - `partial`: calls that declare a large message and send only part of it.
//!
//! Every drill is bounded: a count of connections and streams, and a hold time.

use std::time::Duration;

use anyhow::Context as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderValue, Method, Request};
use prost::Message as _;
use ridegate_proto::pb;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Which drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Drill {
    /// TCP connections that never send a byte.
    Idle,
    /// Calls whose answers can never be sent: the client's receive window stays 0.
    Unread,
    /// Calls that declare a large message and send only part of it.
    Partial,
}

/// How to run a drill.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// The drill.
    pub drill: Drill,
    /// `host:port` of the gate port.
    pub target: String,
    /// Connections the drill opens.
    pub connections: usize,
    /// Calls per connection (`unread`, `partial`).
    pub streams: usize,
    /// Message size a `partial` call declares.
    pub declare_bytes: usize,
    /// Bytes of it a `partial` call sends.
    pub send_bytes: usize,
    /// How long the drill holds what it opened.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// The server's process, for its memory.
    pub server_pid: Option<u32>,
}

/// What a drill saw.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The options.
    pub options: Options,
    /// Connections the drill managed to open.
    pub opened: usize,
    /// Of those, how many the server had closed by the end of the hold.
    pub closed_by_server: usize,
    /// Calls the server accepted (headers sent, `unread` and `partial`).
    pub calls_started: usize,
    /// Calls answered at once with an error status (refused, too large).
    pub calls_refused: usize,
    /// Probe taps sent during the hold (one at a time, new connection each 10th).
    pub probes: usize,
    /// Probe taps answered within 1 s.
    pub probes_answered: usize,
    /// The slowest answered probe, in ms.
    pub probe_max_ms: f64,
    /// The server's resident memory before the drill, MiB.
    pub server_rss_before_mib: Option<f64>,
    /// Its highest resident memory seen during the hold, MiB.
    pub server_rss_peak_mib: Option<f64>,
    /// Its resident memory at the end, after the drill let go, MiB.
    pub server_rss_after_mib: Option<f64>,
}

/// Runs the drill and reports.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    // Open as many sockets as asked: raise this process's own limit first.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rss = || options.server_pid.and_then(resident_mib);
    let before = rss();
    let mut held = Vec::new();
    let mut calls_started = 0;
    let mut calls_refused = 0;
    for _ in 0..options.connections {
        let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&options.target)).await
        else {
            break;
        };
        match options.drill {
            Drill::Idle => held.push(Held::Tcp(tcp)),
            Drill::Unread | Drill::Partial => {
                let mut builder = h2::client::Builder::new();
                if options.drill == Drill::Unread {
                    builder.initial_window_size(0);
                }
                let Ok(Ok((send, connection))) =
                    tokio::time::timeout(Duration::from_secs(2), builder.handshake::<_, Bytes>(tcp)).await
                else {
                    break;
                };
                let driver = tokio::spawn(async move {
                    let _ = connection.await;
                });
                let (started, refused, streams) = open_calls(&options, send).await;
                calls_started += started;
                calls_refused += refused;
                held.push(Held::H2 {
                    driver,
                    _streams: streams,
                });
            }
        }
    }
    let opened = held.len();
    let (probes, probes_answered, probe_max) = probe_while(&options.target, options.hold, &rss).await;
    let mut closed_by_server = 0;
    for h in &held {
        closed_by_server += usize::from(h.closed().await);
    }
    let peak = probe_max.1;
    drop(held);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Report {
        opened,
        closed_by_server,
        calls_started,
        calls_refused,
        probes,
        probes_answered,
        probe_max_ms: probe_max.0.as_secs_f64() * 1e3,
        server_rss_before_mib: before,
        server_rss_peak_mib: peak,
        server_rss_after_mib: rss(),
        options,
    })
}

/// What the drill holds open.
enum Held {
    Tcp(TcpStream),
    H2 {
        driver: tokio::task::JoinHandle<()>,
        _streams: Vec<h2::SendStream<Bytes>>,
    },
}

impl Held {
    /// Whether the server has closed it.
    async fn closed(&self) -> bool {
        match self {
            Self::Tcp(tcp) => {
                // Past what the server sent (its HTTP/2 SETTINGS), the end of the stream
                // is the server's FIN (an error, its reset).
                let mut buf = [0u8; 4096];
                loop {
                    if tokio::time::timeout(Duration::from_millis(5), tcp.readable())
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    match tcp.try_read(&mut buf) {
                        Ok(0) => return true,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return true,
                    }
                }
            }
            Self::H2 { driver, .. } => driver.is_finished(),
        }
    }
}

/// Opens the drill's calls on one connection; returns how many started, how many were
/// refused at once, and the streams to hold.
async fn open_calls(
    options: &Options,
    mut send: h2::client::SendRequest<Bytes>,
) -> (usize, usize, Vec<h2::SendStream<Bytes>>) {
    let body = match options.drill {
        Drill::Partial => {
            let mut body = BytesMut::with_capacity(5 + options.send_bytes);
            body.put_u8(0);
            body.put_u32(u32::try_from(options.declare_bytes).unwrap_or(u32::MAX));
            body.put_bytes(b'A', options.send_bytes);
            body.freeze()
        }
        _ => framed(&probe_tap()),
    };
    let (mut started, mut refused, mut streams, mut responses) = (0, 0, Vec::new(), Vec::new());
    for _ in 0..options.streams {
        // The server's stream limit: a call that cannot start within a moment is not
        // going to.
        let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_millis(200), send.clone().ready()).await else {
            break;
        };
        send = ready;
        let Ok((response, mut stream)) = send.send_request(grpc_request("/ridegate.v1.Gate/Authorize"), false) else {
            break;
        };
        started += 1;
        // `partial` never ends its message; `unread` ends it and never reads.
        let _ = stream.send_data(body.clone(), options.drill == Drill::Unread);
        streams.push(stream);
        responses.push(response);
    }
    // Answered within a second with an error status: refused (too large, overloaded).
    let mut responses: futures::stream::FuturesUnordered<_> = responses.into_iter().collect();
    let until = Instant::now() + Duration::from_secs(1);
    while let Ok(Some(response)) = tokio::time::timeout_at(until, futures::StreamExt::next(&mut responses)).await {
        if response.is_ok_and(|r| r.headers().get("grpc-status").is_some_and(|s| s != "0")) {
            refused += 1;
        }
    }
    (started, refused, streams)
}

/// Taps once at a time on `target` for `hold`, reading the server's memory between
/// taps; returns the taps sent, those answered within 1 s, the slowest answered one
/// and the highest memory seen.
async fn probe_while(
    target: &str,
    hold: Duration,
    rss: impl Fn() -> Option<f64>,
) -> (usize, usize, (Duration, Option<f64>)) {
    let end = Instant::now() + hold;
    let (mut sent, mut answered, mut slowest, mut peak) = (0, 0, Duration::ZERO, None::<f64>);
    let mut connection = None;
    while Instant::now() < end {
        if sent % 10 == 0 {
            connection = open_probe(target).await.ok();
        }
        sent += 1;
        let started = Instant::now();
        if let Some(send) = connection.as_mut()
            && let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), probe(send)).await
        {
            answered += 1;
            slowest = slowest.max(started.elapsed());
        }
        if let Some(mib) = rss() {
            peak = Some(peak.map_or(mib, |p| p.max(mib)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (sent, answered, (slowest, peak))
}

async fn open_probe(target: &str) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let tcp = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target))
        .await
        .context("connect timed out")??;
    let (send, connection) = tokio::time::timeout(Duration::from_secs(1), h2::client::handshake(tcp))
        .await
        .context("handshake timed out")??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// One probe tap: answered means an OK status came back.
async fn probe(send: &mut h2::client::SendRequest<Bytes>) -> anyhow::Result<()> {
    let mut ready = send.clone().ready().await?;
    let (response, mut stream) = ready.send_request(grpc_request("/ridegate.v1.Gate/Authorize"), false)?;
    stream.send_data(framed(&probe_tap()), true)?;
    let mut body = response.await?.into_body();
    while let Some(chunk) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk?.len());
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    anyhow::ensure!(
        trailers.get("grpc-status").is_some_and(|s| s == "0"),
        "not OK: {trailers:?}"
    );
    Ok(())
}

fn grpc_request(path: &str) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = format!("http://ridegate{path}").parse().unwrap_or_default();
    let headers = request.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("te", HeaderValue::from_static("trailers"));
    headers.insert("grpc-timeout", HeaderValue::from_static("1S"));
    request
}

/// A card exit: decided without a rider lookup, answered OK by any configuration.
fn probe_tap() -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        request_id: String::new(),
        gate: Some(pb::GateContext {
            gate_id: "drill-probe".into(),
            station_id: "S01".into(),
            line_id: "L1".into(),
            direction: pb::Direction::Exit.into(),
            tapped_at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0)),
            budget_ms: 0,
        }),
        credential: Some(pb::authorize_request::Credential::Card(pb::Card {
            medium: pb::CardMedium::Physical.into(),
            number: "1000000000000001".into(),
        })),
    }
}

/// `message` as one uncompressed, length-prefixed gRPC message.
fn framed(message: &pb::AuthorizeRequest) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut body = BytesMut::with_capacity(5 + encoded.len());
    body.put_u8(0);
    body.put_u32(u32::try_from(encoded.len()).unwrap_or(u32::MAX));
    body.put_slice(&encoded);
    body.freeze()
}

/// A process's resident memory, MiB (Linux).
fn resident_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}
