//! ridegate against the health-code platform: the release `ridegate health-sim` and
//! `ridegate serve` processes on loopback, driven over gRPC from this process.
//!
//! 1. Miss overhead: a tap whose status is not cached, against a direct `GetStatus`
//!    call to the simulator and a cache-hit tap, alternating round by round, at 0 ms
//!    and 5 ms of simulated platform latency.
//! 2. Coalescing: 1,000 concurrent taps by one uncached rider, repeated for 20 riders;
//!    the simulator counts the calls it received.
//! 3. Platform down vs up: the same traffic (90% cache hits, 10% never-seen riders, 16
//!    in flight) with the simulator up (5 ms) and down, alternating; p50/p99 of each and
//!    the calls that missed their 200 ms deadline.
//!
//! `cargo bench -p ridegate-tools --bench platform`.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set itself up should stop loudly

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use ridegate_adapters::ids::Pseudonymizer;
use ridegate_proto::pb;
use ridegate_proto::pb::gate_client::GateClient;
use ridegate_proto::pb::health_platform_client::HealthPlatformClient;
use ridegate_proto::pb::health_simulator_client::HealthSimulatorClient;
use ridegate_tools::population::Population;
use tonic::transport::Channel;

const SECRET: &str = "platform-benchmark-secret";
const RIDERS: u64 = 200_000;
/// Riders whose statuses are cached before the timed phases.
const WARM: u64 = 20_000;
const ROUNDS: usize = 9;
const MISSES_PER_ROUND: u64 = 200;
const BUDGET: Duration = Duration::from_millis(200);

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn spawn(dir: &Path, name: &str, args: &[&str]) -> (Process, String) {
    let ready = dir.join(format!("{name}.ready"));
    let child = Command::new(env!("CARGO_BIN_EXE_ridegate"))
        // A data directory, if one is kept, stays in the benchmark's directory.
        .current_dir(dir)
        .args(args)
        .arg("--ready-file")
        .arg(&ready)
        .env("RIDEGATE_IDENTITY_SECRET", SECRET)
        .env("RIDEGATE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let process = Process(child);
    let started = Instant::now();
    while !ready.exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "{name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    (process, format!("http://{}", addr["addr"].as_str().unwrap()))
}

fn write_links(dir: &Path) -> PathBuf {
    let path = dir.join("links.jsonl");
    let mut links = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for n in 0..RIDERS {
        writeln!(
            links,
            r#"{{"card": {{"number": "{}"}}, "id_number": "{}"}}"#,
            Population::card_number(n),
            Population::resident_id(n)
        )
        .unwrap();
    }
    links.flush().unwrap();
    path
}

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_owned()).unwrap().connect().await.unwrap()
}

fn tap(n: u64) -> tonic::Request<pb::AuthorizeRequest> {
    let mut request = tonic::Request::new(pb::AuthorizeRequest {
        request_id: String::new(),
        gate: Some(pb::GateContext {
            gate_id: "G1".into(),
            station_id: "S1".into(),
            line_id: "L1".into(),
            direction: pb::Direction::Entry.into(),
            ..Default::default()
        }),
        credential: Some(pb::authorize_request::Credential::Card(pb::Card {
            medium: pb::CardMedium::Physical.into(),
            number: Population::card_number(n),
        })),
    });
    request.set_timeout(BUDGET);
    request
}

/// Microseconds for one tap; panics on an error (a missed deadline included).
async fn timed_tap(gate: &mut GateClient<Channel>, n: u64) -> (f64, pb::AuthorizeResponse) {
    let started = Instant::now();
    let response = gate.authorize(tap(n)).await.unwrap().into_inner();
    (started.elapsed().as_secs_f64() * 1e6, response)
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

async fn set_latency(control: &mut HealthSimulatorClient<Channel>, ms: u32, down: bool) {
    control
        .set_faults(pb::SimFaults {
            latency_ms: ms,
            down,
            ..Default::default()
        })
        .await
        .unwrap();
}

struct Clients {
    gate: GateClient<Channel>,
    platform: HealthPlatformClient<Channel>,
    control: HealthSimulatorClient<Channel>,
    pseudonymizer: Pseudonymizer,
    /// The next rider never looked up.
    fresh: u64,
}

impl Clients {
    fn next_fresh(&mut self) -> u64 {
        self.fresh += 1;
        assert!(self.fresh < RIDERS, "population exhausted");
        self.fresh
    }
}

async fn miss_overhead(c: &mut Clients, latency_ms: u32) {
    set_latency(&mut c.control, latency_ms, false).await;
    let (mut direct, mut miss, mut hit) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let order: [u8; 3] = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for which in order {
            let mut times = Vec::new();
            for i in 0..MISSES_PER_ROUND {
                match which {
                    0 => {
                        let n = c.next_fresh();
                        let identity = Population::identity(&c.pseudonymizer, n).to_string();
                        let started = Instant::now();
                        c.platform.get_status(pb::GetStatusRequest { identity }).await.unwrap();
                        times.push(started.elapsed().as_secs_f64() * 1e6);
                    }
                    1 => {
                        let n = c.next_fresh();
                        let (us, response) = timed_tap(&mut c.gate, n).await;
                        assert!(!response.degraded, "a miss must be answered by the platform");
                        times.push(us);
                    }
                    _ => {
                        let (us, response) = timed_tap(&mut c.gate, i % WARM).await;
                        assert!(!response.degraded);
                        times.push(us);
                    }
                }
            }
            match which {
                0 => direct.push(median(&times)),
                1 => miss.push(median(&times)),
                _ => hit.push(median(&times)),
            }
        }
    }
    let (direct, miss, hit) = (median(&direct), median(&miss), median(&hit));
    println!(
        "| {latency_ms} ms | {direct:.0} µs | {miss:.0} µs | {:.0} µs | {hit:.0} µs | {:.0} µs |",
        miss - direct,
        miss - direct - hit
    );
}

/// An unlabelled metric from ridegate's `GET /metrics`.
async fn metric(url: &str, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut page = String::new();
    tcp.read_to_string(&mut page).await.unwrap();
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn coalescing(c: &mut Clients, url: &str) {
    set_latency(&mut c.control, 5, false).await;
    let mut gates = Vec::new();
    for _ in 0..8 {
        gates.push(GateClient::new(connect(url).await));
    }
    let (mut calls, mut fetches, mut hedges) = (Vec::new(), Vec::new(), 0.0);
    let received_before = c.control.get_stats(pb::SimStatsRequest {}).await.unwrap().into_inner();
    for _ in 0..20 {
        let n = c.next_fresh();
        let counters = [
            "ridegate_health_fetches_total",
            "ridegate_platform_calls_total",
            "ridegate_platform_hedges_total",
        ];
        let mut before = Vec::new();
        for name in counters {
            before.push(metric(url, name).await);
        }
        let taps = (0..1_000).map(|i| {
            let mut gate = gates[i % gates.len()].clone();
            async move {
                let mut request = tap(n);
                request.set_timeout(Duration::from_secs(10));
                gate.authorize(request).await.unwrap().into_inner()
            }
        });
        let answers = futures::future::join_all(taps).await;
        assert!(answers.iter().all(|a| !a.degraded));
        fetches.push(metric(url, counters[0]).await - before[0]);
        calls.push(metric(url, counters[1]).await - before[1]);
        hedges += metric(url, counters[2]).await - before[2];
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received_after = c.control.get_stats(pb::SimStatsRequest {}).await.unwrap().into_inner();
    let range = |v: &[f64]| {
        (
            v.iter().copied().fold(f64::MAX, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        )
    };
    let (calls_min, calls_max) = range(&calls);
    let (fetches_min, fetches_max) = range(&fetches);
    println!(
        "\ncoalescing, 1,000 concurrent taps by one uncached rider, 20 riders (target: 1 platform call): \
         fetches per rider {fetches_min}–{fetches_max}; calls sent per rider {calls_min}–{calls_max} \
         (hedged second calls: {hedges} of 20); the simulator received {} calls in all",
        received_after.get_status_calls - received_before.get_status_calls
    );
}

/// `count` taps, 16 in flight: 90% by warm riders, 10% by never-seen ones. Returns the
/// latencies (µs) and the calls that failed (a missed deadline is one).
async fn traffic(c: &mut Clients, count: usize, offset: u64) -> (Vec<f64>, usize) {
    let riders: Vec<u64> = (0..count as u64)
        .map(|i| {
            if i % 10 == 9 {
                c.next_fresh()
            } else {
                (offset + i * 7) % WARM
            }
        })
        .collect();
    let gate = c.gate.clone();
    let results: Vec<Result<f64, tonic::Status>> = futures::stream::iter(riders)
        .map(|n| {
            let mut gate = gate.clone();
            async move {
                let started = Instant::now();
                gate.authorize(tap(n)).await?;
                Ok(started.elapsed().as_secs_f64() * 1e6)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    (results.into_iter().filter_map(Result::ok).collect(), failed)
}

async fn down_vs_up(c: &mut Clients) {
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let (mut up_failed, mut down_failed) = (0, 0);
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for is_down in order {
            set_latency(&mut c.control, 5, is_down).await;
            // Let the breaker settle into the new state with a few taps first.
            let _ = traffic(c, 200, round as u64).await;
            let (times, failed) = traffic(c, 2_000, round as u64 * 31).await;
            if is_down {
                down.extend(times);
                down_failed += failed;
            } else {
                up.extend(times);
                up_failed += failed;
            }
        }
    }
    set_latency(&mut c.control, 0, false).await;
    println!("\n| platform | taps | p50 | p99 | p99.9 | deadline misses |");
    println!("|---|---|---|---|---|---|");
    for (name, times, failed) in [("up, 5 ms", &up, up_failed), ("down", &down, down_failed)] {
        println!(
            "| {name} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {failed} |",
            times.len() + failed,
            percentile(times, 0.5),
            percentile(times, 0.99),
            percentile(times, 0.999)
        );
    }
    println!(
        "p99 down / p99 up: {:.2} (target: at most 1)",
        percentile(&down, 0.99) / percentile(&up, 0.99)
    );
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let links = write_links(dir.path());
    let riders = RIDERS.to_string();
    let (_sim, sim_url) = spawn(
        dir.path(),
        "sim",
        &["health-sim", "--listen", "127.0.0.1:0", "--riders", &riders],
    );
    let (_gateway, url) = spawn(
        dir.path(),
        "gateway",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--links",
            links.to_str().unwrap(),
            "--health-platform",
            &sim_url,
            "--audit",
            "/dev/null",
        ],
    );
    let sim_channel = connect(&sim_url).await;
    let mut c = Clients {
        gate: GateClient::new(connect(&url).await),
        platform: HealthPlatformClient::new(sim_channel.clone()),
        control: HealthSimulatorClient::new(sim_channel),
        pseudonymizer: Pseudonymizer::new(SECRET.as_bytes()).unwrap(),
        fresh: WARM,
    };
    // Warm the cache for riders 0..WARM (cache_ttl is 30 s; the run is shorter than
    // that per phase, and refresh-ahead keeps hot entries fresh).
    let gate = c.gate.clone();
    futures::stream::iter(0..WARM)
        .map(|n| {
            let mut gate = gate.clone();
            async move { gate.authorize(tap(n)).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;

    println!(
        "\n| platform latency | direct GetStatus (median) | miss tap (median) | miss overhead | hit tap | overhead beyond a hit |"
    );
    println!("|---|---|---|---|---|---|");
    miss_overhead(&mut c, 0).await;
    miss_overhead(&mut c, 5).await;
    println!(
        "({ROUNDS} rounds × {MISSES_PER_ROUND} sequential calls per kind, order alternating; medians of round medians)"
    );
    coalescing(&mut c, &url).await;
    down_vs_up(&mut c).await;
}
