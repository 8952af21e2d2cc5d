//! `ridegate load`: a load generator with ghz's habits that sends what real gates send.
//!
//! Requests are encoded (and their ride codes minted) before the timed phase. Then
//! `concurrency` workers share `connections` HTTP/2 connections; each takes the next
//! request number, waits for its slot when a rate is set, sends the request and records
//! the answer. The run ends after `total` requests, after `duration`, or when the
//! single-use ride codes are used up, whichever comes first.

mod client;
mod report;
pub mod setup;
pub mod traffic;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::time::Instant;

pub use report::Report;
use report::{RunFacts, Tally, cpu_time};
use traffic::Templates;

/// How to run the load.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    /// `host:port`.
    pub target: String,
    /// The gRPC method path, e.g. `/ridegate.v1.Gate/Authorize`.
    pub path: String,
    /// Requests to send (with `duration`, whichever ends first).
    pub total: Option<u64>,
    /// How long to send.
    #[serde(with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Connections they share.
    pub connections: usize,
    /// Requests per second, all workers together (none: as fast as answered).
    pub rps: Option<f64>,
    /// Each call's deadline, sent as `grpc-timeout` and enforced by the tool.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A process whose CPU time is reported per request (the server under test).
    pub server_pid: Option<u32>,
}

/// Runs the load: `templates` must hold the requests to send.
pub async fn run(options: &Options, templates: Arc<Templates>) -> anyhow::Result<Report> {
    anyhow::ensure!(options.concurrency > 0, "-c/--concurrency: must be at least 1");
    anyhow::ensure!(
        (1..=options.concurrency).contains(&options.connections),
        "--connections: must be between 1 and the concurrency"
    );
    let mut connections = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        connections.push(
            client::Connection::open(&options.target, &options.path, options.timeout)
                .await
                .with_context(|| format!("cannot connect to {}", options.target))?,
        );
    }
    let limit = options.total.unwrap_or(u64::MAX);
    let next = Arc::new(AtomicU64::new(0));
    let ran_out = Arc::new(AtomicU64::new(0));
    let server_before = options.server_pid.and_then(cpu_time);
    let client_before = cpu_time(std::process::id());
    let started_at = SystemTime::now();
    let started = Instant::now();
    let end = options.duration.map(|d| started + d);
    let workers: Vec<_> = (0..options.concurrency)
        .map(|w| {
            let mut connection = connections[w % connections.len()].clone();
            let (templates, next, ran_out) = (templates.clone(), next.clone(), ran_out.clone());
            let (rps, timeout) = (options.rps, options.timeout);
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= limit || end.is_some_and(|end| Instant::now() >= end) {
                        break;
                    }
                    if let Some(rps) = rps {
                        let due = started + Duration::from_secs_f64(k as f64 / rps);
                        if end.is_some_and(|end| due >= end) {
                            break;
                        }
                        tokio::time::sleep_until(due).await;
                    }
                    let Some(body) = templates.request(k) else {
                        ran_out.store(1, Ordering::Relaxed);
                        break;
                    };
                    let sent = Instant::now();
                    let reply = match tokio::time::timeout(timeout, connection.call(body)).await {
                        Ok(reply) => reply,
                        Err(_) => client::Reply {
                            code: 4,
                            message: "deadline exceeded (the load tool's timeout)".into(),
                            answer: None,
                        },
                    };
                    tally.record(sent.elapsed(), &reply);
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::new();
    for worker in workers {
        tally.merge(worker.await.context("a load worker failed")?);
    }
    let total = started.elapsed();
    let since = |before: Option<Duration>, now: Option<Duration>| Some(now?.saturating_sub(before?));
    let end_reason = if ran_out.load(Ordering::Relaxed) == 1 {
        "codes used up"
    } else if options.total.is_some_and(|n| next.load(Ordering::Relaxed) >= n) {
        "normal"
    } else {
        "timeout"
    };
    let facts = RunFacts {
        name: options.path.trim_start_matches('/').to_owned(),
        end_reason,
        started: started_at,
        options: serde_json::to_value(options).unwrap_or_default(),
        total,
        server_cpu: since(server_before, options.server_pid.and_then(cpu_time)),
        client_cpu: since(client_before, cpu_time(std::process::id())),
        signature_checks: templates.signature_checks.clone(),
    };
    Ok(Report::new(tally, facts))
}
