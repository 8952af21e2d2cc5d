//! The shared tier's costs, against a real `redis-server` on loopback:
//!
//! - decision latency, in process, alternating three configurations round by round:
//!   embedded (no Redis); Redis with the local caches warm (one Redis round trip: the
//!   retry record); Redis with both caches cold (link and status read from Redis too);
//! - propagation: two real `ridegate` processes on one Redis; a status pushed through one
//!   until the other's next decision shows it, repeated, as percentiles.
//!
//! `cargo bench -p ridegate-tools --bench shared` (`RIDEGATE_BENCH_NO_COPY=1`: the
//! instances keep no copy of the tier for offline gates, `[gate_state] shared = false`).

#![allow(clippy::unwrap_used)] // a benchmark that cannot set itself up should stop loudly

use std::io::Write as _;
use std::time::{Duration, Instant as StdInstant};

use ridegate::App;
use ridegate::config::Config;
use ridegate_adapters::caller::CallerKind;
use ridegate_adapters::ids::synthetic_resident_id;
use ridegate_core::clock::Clock;
use ridegate_core::credential::{CardMedium, CardNumber, Credential};
use ridegate_core::decision::{GateContext, GateRequest};
use ridegate_core::model::{Direction, UnixMillis, Verdict};
use ridegate_proto::pb;
use support::{Callers, Redis, Ridegate, metric};
use tokio::time::Instant;

mod support;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RIDERS: u64 = 30_000;
const ROUNDS: usize = 9;
const PER_ROUND: u64 = 1_000;
/// The identity secret `support::Ridegate` starts instances with.
const SECRET: &str = "benchmark-secret";

fn card_number(i: u64) -> String {
    format!("1000{i:012}")
}

fn write_population(dir: &std::path::Path) {
    let now = Clock::System.now().0;
    let mut links = std::io::BufWriter::new(std::fs::File::create(dir.join("links.jsonl")).unwrap());
    let mut health = std::io::BufWriter::new(std::fs::File::create(dir.join("health.jsonl")).unwrap());
    for i in 0..RIDERS {
        let id = synthetic_resident_id(i);
        writeln!(
            links,
            r#"{{"card": {{"number": "{}"}}, "id_number": "{id}"}}"#,
            card_number(i)
        )
        .unwrap();
        writeln!(
            health,
            r#"{{"id_number": "{id}", "colour": "green", "set_at_unix_ms": {now}, "negative_test_at_unix_ms": {now}}}"#
        )
        .unwrap();
    }
}

fn config(dir: &std::path::Path, redis: Option<u16>) -> Config {
    let mut config = Config::default();
    config.identity.secret = SECRET.into();
    config.links.file = Some(dir.join("links.jsonl"));
    config.health.file = Some(dir.join("health.jsonl"));
    config.audit.path = "/dev/null".into();
    // The embedded side is measured in memory, as the decision path reads it.
    config.storage.ephemeral = true;
    if let Some(port) = redis {
        config.redis.url = format!("redis://127.0.0.1:{port}");
    }
    config
}

fn tap(rider: u64, n: u64) -> GateRequest {
    GateRequest {
        request_id: format!("bench-{n}"),
        gate: GateContext {
            gate_id: "G1".into(),
            station_id: "S1".into(),
            line_id: "L1".into(),
            direction: Direction::Entry,
            tapped_at: UnixMillis(0),
            budget: None,
        },
        credential: Credential::Card {
            medium: CardMedium::Physical,
            number: CardNumber::parse(&card_number(rider)).unwrap(),
        },
    }
}

/// Median microseconds per decision over `riders`.
async fn decide(app: &App, riders: impl Iterator<Item = u64>, seq: &mut u64) -> Vec<f64> {
    let mut times = Vec::new();
    for rider in riders {
        *seq += 1;
        let received = Instant::now();
        let decided = app
            .authorizer()
            .authorize(tap(rider, *seq), received, received + Duration::from_millis(180))
            .await;
        times.push(received.elapsed().as_secs_f64() * 1e6);
        assert_eq!(decided.answer.verdict, Verdict::Allow, "{:?}", decided.answer);
        assert!(!decided.answer.degraded);
    }
    times
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

async fn latency(dir: &std::path::Path, redis: &Redis) {
    let embedded = App::build(config(dir, None), Clock::System).await.unwrap();
    let mut shared = App::build(config(dir, Some(redis.1)), Clock::System).await.unwrap();
    shared.land_import().await.unwrap();
    let mut seq = 0;
    // Warm both caches for the first half of the riders.
    let warm = 0..RIDERS / 2;
    decide(&embedded, warm.clone(), &mut seq).await;
    decide(&shared, warm, &mut seq).await;
    let (mut e, mut h, mut m) = (Vec::new(), Vec::new(), Vec::new());
    let mut cold = RIDERS / 2;
    for round in 0..ROUNDS {
        let hot = (round as u64 * PER_ROUND..(round as u64 + 1) * PER_ROUND).map(|i| i % (RIDERS / 2));
        let order: [u8; 3] = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for which in order {
            match which {
                0 => e.push(median(decide(&embedded, hot.clone(), &mut seq).await)),
                1 => h.push(median(decide(&shared, hot.clone(), &mut seq).await)),
                _ => {
                    // Riders never looked up before: link and status come from Redis.
                    let riders = cold..cold + PER_ROUND;
                    cold += PER_ROUND;
                    m.push(median(decide(&shared, riders, &mut seq).await));
                }
            }
        }
    }
    let (e, h, m) = (median(e), median(h), median(m));
    println!("\n| configuration | median decision (in process) | ratio to embedded |");
    println!("|---|---|---|");
    println!("| embedded (link and status in process) | {e:.1} µs | 1.00 |");
    println!(
        "| Redis, local caches warm (1 round trip: retry record) | {h:.1} µs | {:.2} |",
        h / e
    );
    println!(
        "| Redis, caches cold (link and status from Redis) | {m:.1} µs | {:.2} |",
        m / e
    );
    println!(
        "({ROUNDS} rounds, {PER_ROUND} taps per configuration per round, order alternating; medians of round medians)"
    );
}

/// Starts an instance on `redis`; the copy offline gates follow is kept unless
/// `RIDEGATE_BENCH_NO_COPY` is set (to measure what the copy costs).
async fn spawn_ridegate(dir: &std::path::Path, name: &str, redis: u16, callers: &Callers) -> Ridegate {
    let copy = std::env::var_os("RIDEGATE_BENCH_NO_COPY").is_none();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "{}[health]\nfeed_enabled = true\n[redis]\nurl = \"redis://127.0.0.1:{redis}\"\n\
             [gate_state]\nshared = {copy}\n",
            callers.config_line(),
        ),
    )
    .unwrap();
    let ridegate = Ridegate::start(dir, name, &config, &[]).await;
    // Measured once the copy for offline gates is loaded and has caught up (its
    // start-up replay would be measured otherwise).
    let started = StdInstant::now();
    while copy && metric(&ridegate.admin, "ridegate_gate_state_live") != Some(1) {
        assert!(started.elapsed() < Duration::from_secs(120), "the copy never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ridegate
}

async fn propagation(dir: &std::path::Path, redis: &Redis) {
    let callers = Callers::new(dir);
    let a = spawn_ridegate(dir, "a", redis.1, &callers).await;
    let b = spawn_ridegate(dir, "b", redis.1, &callers).await;
    let (a_channel, b_channel) = (a.channel().await, b.channel().await);
    let mut feed = pb::health_feed_client::HealthFeedClient::new(a_channel);
    let mut gate_b = pb::gate_client::GateClient::new(b_channel);
    let token = callers.token(CallerKind::HealthPlatform);
    let request = |rider: u64| pb::AuthorizeRequest {
        request_id: String::new(),
        gate: Some(pb::GateContext {
            gate_id: "G1".into(),
            direction: pb::Direction::Entry.into(),
            ..Default::default()
        }),
        credential: Some(pb::authorize_request::Credential::Card(pb::Card {
            medium: pb::CardMedium::Physical.into(),
            number: card_number(rider),
        })),
    };
    let mut took = Vec::new();
    for rider in 0..200u64 {
        // B has the rider cached green…
        assert_eq!(
            gate_b.authorize(request(rider)).await.unwrap().into_inner().reason(),
            pb::Reason::HealthGreen
        );
        let update = pb::StatusUpdate {
            subject: Some(pb::status_update::Subject::IdNumber(synthetic_resident_id(rider))),
            colour: pb::HealthColour::Red.into(),
            set_at_unix_ms: Clock::System.now().0 + 1,
            negative_test_at_unix_ms: 0,
        };
        let mut publish = tonic::Request::new(pb::PublishRequest { updates: vec![update] });
        publish
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        // …the platform turns them red through A; time until B's next decision says so.
        let started = StdInstant::now();
        feed.publish(publish).await.unwrap();
        while gate_b.authorize(request(rider)).await.unwrap().into_inner().reason() != pb::Reason::HealthRed {
            assert!(started.elapsed() < Duration::from_secs(5), "no propagation");
        }
        took.push(started.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "\npropagation, status pushed through A until B's next decision shows it (200 changes): p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms (target: within 1 s)",
        percentile(took.clone(), 0.5),
        percentile(took.clone(), 0.99),
        percentile(took, 1.0)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    write_population(dir.path());
    let redis = Redis::start();
    latency(dir.path(), &redis).await;
    propagation(dir.path(), &redis).await;
}
