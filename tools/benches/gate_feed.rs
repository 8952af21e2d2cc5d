//! The gate state feed against the real binary on loopback (durable default), followed
//! by the gate library as a vendor runs it:
//!
//! - snapshot: N linked cards (BulkLink, batches of 5,000), from `Follow` to the state
//!   applied and fsynced at the gate, and its bytes;
//! - propagation: one status change at a time pushed through `HealthFeed.Publish`
//!   (alternately red and green), from the push to the gate holding the new version:
//!   p50, p99 and max of 300;
//! - resume: the follower stopped, 10,000 changes made, the follower back — its catch-up
//!   time and bytes against a fresh snapshot in the same run.
//!
//! `cargo bench -p ridegate-tools --bench gate_feed [-- N]` (default 1,000,000).

#![allow(clippy::unwrap_used)] // a benchmark that cannot set itself up should stop loudly

use std::time::{Duration, Instant};

use ridegate_adapters::caller::{CallerKind, CallerTokenMinter};
use ridegate_adapters::credential::ride_code::{SigningAlg, SigningKey};
use ridegate_adapters::ids::synthetic_resident_id;
use ridegate_core::clock::Clock;
use ridegate_gate::{GateSettings, OfflineGate};
use ridegate_proto::pb;
use ridegate_proto::pb::health_feed_client::HealthFeedClient;
use ridegate_proto::pb::links_client::LinksClient;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 5_000;
const CHANGES: usize = 300;
const RESUME_CHANGES: u64 = 10_000;

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn status(person: u64, colour: pb::HealthColour, set_at: i64) -> pb::StatusUpdate {
    pb::StatusUpdate {
        subject: Some(pb::status_update::Subject::IdNumber(synthetic_resident_id(person))),
        colour: colour.into(),
        set_at_unix_ms: set_at,
        negative_test_at_unix_ms: set_at - 3_600_000,
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Waits until `gate` holds `version` (polling each millisecond); how long it took.
async fn until_version(gate: &OfflineGate, version: u64, since: Instant) -> Duration {
    while gate.status().version < version {
        assert!(since.elapsed() < Duration::from_secs(600), "the gate never caught up");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    since.elapsed()
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(SigningAlg::EdDsa, "bench-callers").unwrap();
    let jwks = dir.path().join("callers.jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({ "keys": [key.public_jwk().unwrap()] }).to_string(),
    )
    .unwrap();
    let config = dir.path().join("ridegate.toml");
    std::fs::write(
        &config,
        format!(
            "[callers]\njwks_file = {:?}\n[health]\nfeed_enabled = true\n[health.brake]\nenabled = false\n",
            jwks.display().to_string()
        ),
    )
    .unwrap();
    let ready = dir.path().join("ready.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ridegate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--audit",
            "/dev/null",
            "--log",
            "warn",
            "--ready-file",
        ])
        .arg(&ready)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RIDEGATE_IDENTITY_SECRET", "gate-feed-benchmark-secret")
        .env("RIDEGATE_CONFIG", &config)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ready.exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "ridegate did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let addr = ready["addr"].as_str().unwrap().to_owned();
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let callers = CallerTokenMinter::new(key);
    let token = |kind| {
        callers
            .token(kind, "bench", None, Clock::System.now(), Duration::from_secs(3600))
            .unwrap()
    };

    eprintln!("linking {n} cards…");
    let batches: Vec<pb::LinkBatch> = (0..n.div_ceil(BATCH))
        .map(|b| pb::LinkBatch {
            sequence: b,
            rows: (b * BATCH..((b + 1) * BATCH).min(n))
                .map(|i| pb::LinkRow {
                    credential: Some(pb::LinkCredential {
                        credential: Some(pb::link_credential::Credential::Card(pb::Card {
                            medium: pb::CardMedium::Physical.into(),
                            number: format!("1000{i:012}"),
                        })),
                    }),
                    subject: Some(pb::link_row::Subject::IdNumber(synthetic_resident_id(i))),
                })
                .collect(),
        })
        .collect();
    let mut results = LinksClient::new(channel.clone())
        .max_encoding_message_size(16 << 20)
        .bulk_link(authed(tokio_stream::iter(batches), &token(CallerKind::BackEnd)))
        .await
        .unwrap()
        .into_inner();
    while let Some(result) = results.next().await {
        assert!(result.unwrap().rejected.is_empty());
    }

    // Snapshot.
    let gate_dir = tempfile::tempdir().unwrap();
    let settings = |dir: &std::path::Path| GateSettings {
        retry_every: Duration::from_millis(50),
        ..GateSettings::new(format!("http://{addr}"), dir)
    };
    let gate = OfflineGate::open(settings(gate_dir.path()), Clock::System).unwrap();
    let started = Instant::now();
    let follower = gate.follow();
    while gate.status().entries < n as usize {
        assert!(started.elapsed() < Duration::from_secs(600), "no snapshot");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let snapshot = started.elapsed();

    // Propagation, one change at a time.
    let platform = token(CallerKind::HealthPlatform);
    let mut feed = HealthFeedClient::new(channel.clone());
    let mut took = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let colour = if i % 2 == 0 {
            pb::HealthColour::Red
        } else {
            pb::HealthColour::Green
        };
        let version = gate.status().version;
        let pushed = Instant::now();
        let update = status((i % 100) as u64, colour, Clock::System.now().0 + i as i64);
        let published = feed
            .publish(authed(pb::PublishRequest { updates: vec![update] }, &platform))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(published.applied, 1);
        took.push(until_version(&gate, version + 1, pushed).await);
    }
    took.sort();

    // Resume after 10,000 changes, against a fresh snapshot.
    follower.abort();
    let _ = follower.await;
    let before = gate.status().version;
    let now = Clock::System.now().0 + 1_000_000;
    for chunk in (0..RESUME_CHANGES).collect::<Vec<_>>().chunks(1_000) {
        let updates = chunk
            .iter()
            .map(|&p| status(p, pb::HealthColour::Yellow, now))
            .collect();
        let published = feed
            .publish(authed(pb::PublishRequest { updates }, &platform))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(published.applied as usize, chunk.len());
    }
    let target = before + RESUME_CHANGES;
    let started = Instant::now();
    let follower = gate.follow();
    let resume = until_version(&gate, target, started).await;
    follower.abort();
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = OfflineGate::open(settings(fresh_dir.path()), Clock::System).unwrap();
    let started = Instant::now();
    let fresh_follower = fresh.follow();
    let fresh_snapshot = until_version(&fresh, target, started).await;
    fresh_follower.abort();
    let _ = child.kill();
    let _ = child.wait();

    println!("\n| what | figure |");
    println!("|---|---|");
    println!(
        "| snapshot of {n} linked cards ({:.1} MB of entries) to a following gate, applied and fsynced | {:.2} s |",
        n as f64 * 13.0 / 1e6,
        snapshot.as_secs_f64()
    );
    println!(
        "| one status change, pushed to held at the gate ({CHANGES} changes) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        percentile(&took, 0.5).as_secs_f64() * 1e3,
        percentile(&took, 0.99).as_secs_f64() * 1e3,
        took.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "| resume after {RESUME_CHANGES} changes ({:.0} kB of entries) | {:.0} ms; a fresh snapshot in the same run: {:.2} s |",
        RESUME_CHANGES as f64 * 13.0 / 1e3,
        resume.as_secs_f64() * 1e3,
        fresh_snapshot.as_secs_f64()
    );
}
