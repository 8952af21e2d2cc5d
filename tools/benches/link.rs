//! Linking over gRPC against the real binary on loopback:
//!
//! - bulk: 5,000,000 rows through `Links.BulkLink` (batches of 5,000; rows built before
//!   the clock starts), from first batch sent to last result received;
//! - single: `Links.Link` latency, one call at a time, alternated with a
//!   `grpc.health.v1` check on the same connection — the cheapest call the same server
//!   answers — so the report gives the link's cost over the stack's in the same moment.
//!
//! `cargo bench -p ridegate-tools --bench link [-- ROWS]` (default 5,000,000).

#![allow(clippy::unwrap_used)] // a benchmark that cannot set itself up should stop loudly

use std::time::{Duration, Instant};

use ridegate_adapters::caller::CallerKind;
use ridegate_adapters::ids::synthetic_resident_id;
use ridegate_proto::pb;
use ridegate_proto::pb::links_client::LinksClient;
use support::{Callers, Ridegate, authed, percentile};
use tokio_stream::StreamExt as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

mod support;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 5_000;
const SINGLE: usize = 2_000;

fn card(number: String) -> pb::LinkCredential {
    pb::LinkCredential {
        credential: Some(pb::link_credential::Credential::Card(pb::Card {
            medium: pb::CardMedium::Physical.into(),
            number,
        })),
    }
}

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let dir = tempfile::tempdir().unwrap();
    let callers = Callers::new(dir.path());
    let config = dir.path().join("ridegate.toml");
    std::fs::write(&config, callers.config_line()).unwrap();
    // The durable default: every acknowledged batch is committed with fsync.
    let args = ["--data-dir".to_owned(), dir.path().join("data").display().to_string()];
    let ridegate = Ridegate::start(dir.path(), "ridegate", &config, &args).await;
    let channel = ridegate.channel().await;
    let token = |kind| callers.token(kind);
    let mut links = LinksClient::new(channel.clone()).max_encoding_message_size(16 << 20);

    // Bulk.
    eprintln!("building {rows} rows…");
    let batches: Vec<pb::LinkBatch> = (0..rows.div_ceil(BATCH))
        .map(|b| pb::LinkBatch {
            sequence: b,
            rows: (b * BATCH..((b + 1) * BATCH).min(rows))
                .map(|i| pb::LinkRow {
                    credential: Some(card(format!("1000{i:012}"))),
                    subject: Some(pb::link_row::Subject::IdNumber(synthetic_resident_id(i))),
                })
                .collect(),
        })
        .collect();
    let back_end = token(CallerKind::BackEnd);
    let started = Instant::now();
    let mut results = links
        .bulk_link(authed(tokio_stream::iter(batches), &back_end))
        .await
        .unwrap()
        .into_inner();
    let (mut linked, mut rejected) = (0u64, 0u64);
    while let Some(result) = results.next().await {
        let result = result.unwrap();
        linked += u64::from(result.linked);
        rejected += result.rejected.len() as u64;
    }
    let bulk = started.elapsed();
    assert_eq!((linked, rejected), (rows, 0), "every row links");
    println!(
        "bulk link over gRPC: {rows} links in {:.2} s = {:.0} links/s (target: 5,000,000 in under 120 s)",
        bulk.as_secs_f64(),
        rows as f64 / bulk.as_secs_f64()
    );

    // Single links, alternated with health checks.
    let upgrade = token(CallerKind::UpgradeService);
    let mut health = HealthClient::new(channel);
    let (mut link_times, mut check_times) = (Vec::with_capacity(SINGLE), Vec::with_capacity(SINGLE));
    for i in 0..SINGLE as u64 {
        let request = pb::LinkRequest {
            credential: Some(card(format!("2000{i:012}"))),
            id_number: synthetic_resident_id(rows + i),
            consent: pb::Consent::UpgradeService.into(),
            staff_operator_id: String::new(),
        };
        let t = Instant::now();
        links.link(authed(request, &upgrade)).await.unwrap();
        link_times.push(t.elapsed());
        let t = Instant::now();
        health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .unwrap();
        check_times.push(t.elapsed());
    }
    link_times.sort();
    check_times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "single link over gRPC ({SINGLE} calls, one at a time): p50 {:.0} µs, p99 {:.0} µs; health check in the same run: \
         p50 {:.0} µs, p99 {:.0} µs; link − check at p50: {:.0} µs",
        us(percentile(&link_times, 0.5)),
        us(percentile(&link_times, 0.99)),
        us(percentile(&check_times, 0.5)),
        us(percentile(&check_times, 0.99)),
        us(percentile(&link_times, 0.5)) - us(percentile(&check_times, 0.5)),
    );
}
