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
//! With `--redis`, on the shared tier: a `redis-server` of its own and two instances, A
//! and B. Cards are linked and changes pushed through B while the gate follows A (the
//! change travels B → Redis stream → A's copy → gate), and the gate resumes at B.
//!
//! `cargo bench -p ridegate-tools --bench gate_feed [-- N] [--redis]` (default 1,000,000).

#![allow(clippy::unwrap_used)] // a benchmark that cannot set itself up should stop loudly

use std::time::{Duration, Instant};

use ridegate_adapters::caller::CallerKind;
use ridegate_adapters::ids::synthetic_resident_id;
use ridegate_core::clock::Clock;
use ridegate_gate::{GateSettings, OfflineGate};
use ridegate_proto::pb;
use ridegate_proto::pb::health_feed_client::HealthFeedClient;
use ridegate_proto::pb::links_client::LinksClient;
use support::{Callers, Redis, Ridegate, authed, percentile};
use tokio_stream::StreamExt as _;

mod support;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 5_000;
const CHANGES: usize = 300;
const RESUME_CHANGES: u64 = 10_000;

fn status(person: u64, colour: pb::HealthColour, set_at: i64) -> pb::StatusUpdate {
    pb::StatusUpdate {
        subject: Some(pb::status_update::Subject::IdNumber(synthetic_resident_id(person))),
        colour: colour.into(),
        set_at_unix_ms: set_at,
        negative_test_at_unix_ms: set_at - 3_600_000,
    }
}

/// Waits until `gate` holds `version` (polling each millisecond); how long it took.
async fn until_version(gate: &OfflineGate, version: u64, since: Instant) -> Duration {
    while gate.status().version < version {
        assert!(since.elapsed() < Duration::from_secs(600), "the gate never caught up");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    since.elapsed()
}

/// The feed's version once it has stopped moving (every change pushed is applied).
async fn settled_version(ridegate: &Ridegate) -> u64 {
    let mut last = ridegate.metric("ridegate_gate_state_version");
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = ridegate.metric("ridegate_gate_state_version");
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let shared = std::env::args().any(|a| a == "--redis");
    let dir = tempfile::tempdir().unwrap();
    let callers = Callers::new(dir.path());
    let config = dir.path().join("ridegate.toml");
    let text = callers.config_line() + "[health]\nfeed_enabled = true\n[health.brake]\nenabled = false\n";
    std::fs::write(&config, text).unwrap();
    let (_redis, a, b) = if shared {
        let redis = Redis::start();
        let args = ["--redis".to_owned(), format!("redis://127.0.0.1:{}", redis.1)];
        let a = Ridegate::start(dir.path(), "a", &config, &args).await;
        let b = Ridegate::start(dir.path(), "b", &config, &args).await;
        (Some(redis), a, Some(b))
    } else {
        let args = ["--data-dir".to_owned(), dir.path().join("data").display().to_string()];
        (None, Ridegate::start(dir.path(), "a", &config, &args).await, None)
    };
    // Changes go in through B on the shared tier; the gate follows A, then resumes at B.
    let writer = b.as_ref().unwrap_or(&a);
    let channel = writer.channel().await;
    let addr = a.addr.clone();
    let token = |kind| callers.token(kind);

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
    // A batch with rows refused (Redis timed out under the load) is sent again, as a
    // back end would: linking is idempotent.
    let mut pending = batches;
    for _attempt in 0..5 {
        let mut results = LinksClient::new(channel.clone())
            .max_encoding_message_size(16 << 20)
            .bulk_link(authed(tokio_stream::iter(pending.clone()), &token(CallerKind::BackEnd)))
            .await
            .unwrap()
            .into_inner();
        let mut refused = std::collections::HashSet::new();
        while let Some(result) = results.next().await {
            let result = result.unwrap();
            if !result.rejected.is_empty() {
                refused.insert(result.sequence);
            }
        }
        pending.retain(|batch| refused.contains(&batch.sequence));
        if pending.is_empty() {
            break;
        }
        eprintln!("{} batches had rows refused: sending them again", pending.len());
    }
    assert!(pending.is_empty(), "batches still refused after 5 attempts");

    // Snapshot.
    let gate_dir = tempfile::tempdir().unwrap();
    let settings = |dir: &std::path::Path, addr: &str| GateSettings {
        retry_every: Duration::from_millis(50),
        ..GateSettings::new(format!("http://{addr}"), dir)
    };
    let gate = OfflineGate::open(settings(gate_dir.path(), &addr), Clock::System).unwrap();
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
        // Versions rise by one on the embedded store, by stream positions on the shared
        // tier: the change is held once the gate's version passes the one before it.
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
    let target = settled_version(writer).await;
    assert!(target >= before + RESUME_CHANGES);
    drop(gate);
    let gate = OfflineGate::open(settings(gate_dir.path(), &writer.addr), Clock::System).unwrap();
    let started = Instant::now();
    let follower = gate.follow();
    let resume = until_version(&gate, target, started).await;
    follower.abort();
    let resumed_without_snapshot = writer.metric("ridegate_gate_state_snapshots_total") == u64::from(!shared);
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = OfflineGate::open(settings(fresh_dir.path(), &writer.addr), Clock::System).unwrap();
    let started = Instant::now();
    let fresh_follower = fresh.follow();
    let fresh_snapshot = until_version(&fresh, target, started).await;
    fresh_follower.abort();

    // On the shared tier, a new instance: from its start to a gate holding the snapshot
    // of its copy (the walk of every key, the statuses, the stream replayed).
    let new_instance = if let Some(redis) = &_redis {
        let args = ["--redis".to_owned(), format!("redis://127.0.0.1:{}", redis.1)];
        let started = Instant::now();
        let c = Ridegate::start(dir.path(), "c", &config, &args).await;
        let c_dir = tempfile::tempdir().unwrap();
        let gate = OfflineGate::open(settings(c_dir.path(), &c.addr), Clock::System).unwrap();
        let follower = gate.follow();
        while gate.status().entries < n as usize {
            assert!(started.elapsed() < Duration::from_secs(600), "no snapshot from C");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        follower.abort();
        let took = started.elapsed();
        // The copy's memory: C against D, an instance without one, both idle.
        let without = dir.path().join("without-copy.toml");
        let text = std::fs::read_to_string(&config).unwrap() + "[gate_state]\nshared = false\n";
        std::fs::write(&without, text).unwrap();
        let d = Ridegate::start(dir.path(), "d", &without, &args).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let copy_bytes = c.resident_bytes().saturating_sub(d.resident_bytes());
        Some((took, copy_bytes))
    } else {
        None
    };
    let tier = if shared {
        "shared tier: written through B, followed at A, resumed at B"
    } else {
        "durable default"
    };
    println!("\n| what ({tier}) | figure |");
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
        "| resume after {RESUME_CHANGES} changes ({:.0} kB of entries){} | {:.0} ms; a fresh snapshot in the same run: {:.2} s |",
        RESUME_CHANGES as f64 * 13.0 / 1e3,
        if resumed_without_snapshot {
            ", no snapshot"
        } else {
            ", BUT A SNAPSHOT WAS SENT"
        },
        resume.as_secs_f64() * 1e3,
        fresh_snapshot.as_secs_f64()
    );
    if let Some((took, copy_bytes)) = new_instance {
        println!(
            "| a new instance: from its start to a gate holding the snapshot of its copy of {n} links | {:.2} s |",
            took.as_secs_f64()
        );
        println!(
            "| its copy's resident memory (against an instance with `shared = false`) | {:.0} MB, {:.0} B per link |",
            copy_bytes as f64 / 1e6,
            copy_bytes as f64 / n as f64
        );
    }
}
