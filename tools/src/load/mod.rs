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

pub use client::Tls;
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
    /// TLS (and a client certificate) for the connections; none: plaintext.
    #[serde(skip)]
    pub tls: Option<client::Tls>,
}

/// Runs the load: `templates` must hold the requests to send.
pub async fn run(options: &Options, templates: Arc<Templates>) -> anyhow::Result<Report> {
    anyhow::ensure!(options.concurrency > 0, "-c/--concurrency: must be at least 1");
    anyhow::ensure!(
        (1..=options.concurrency).contains(&options.connections),
        "--connections: must be between 1 and the concurrency"
    );
    anyhow::ensure!(
        options.total.is_some() || options.duration.is_some(),
        "a run needs a count (-n) or a duration (-z)"
    );
    anyhow::ensure!(
        options.rps.is_none_or(|rps| rps.is_finite() && rps >= MIN_RPS),
        "-r/--rps: must be at least {MIN_RPS}"
    );
    let mut connections = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        connections.push(
            client::Connection::open(&options.target, &options.path, options.timeout, options.tls.as_ref())
                .await
                .with_context(|| format!("cannot connect to {}", options.target))?,
        );
    }
    let limit = options.total.unwrap_or(u64::MAX);
    let next = Arc::new(AtomicU64::new(0));
    let tallies: Vec<Tally> = (0..options.concurrency).map(|_| Tally::new()).collect();
    let server_before = options.server_pid.and_then(cpu_time);
    let client_before = cpu_time(std::process::id());
    let started_at = SystemTime::now();
    let started = Instant::now();
    let end = options.duration.map(|d| started + d);
    let workers: Vec<_> = tallies
        .into_iter()
        .enumerate()
        .map(|(w, mut tally)| {
            let mut connection = connections[w % connections.len()].clone();
            let (templates, next) = (templates.clone(), next.clone());
            let (rps, timeout) = (options.rps, options.timeout);
            tokio::spawn(async move {
                let stop = loop {
                    if end.is_some_and(|end| Instant::now() >= end) {
                        break Stop::Time;
                    }
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= limit {
                        break Stop::Count;
                    }
                    if let Some(rps) = rps {
                        let due = started + Duration::from_secs_f64(k as f64 / rps);
                        if end.is_some_and(|end| due >= end) {
                            break Stop::Time;
                        }
                        tokio::time::sleep_until(due).await;
                    }
                    let Some(body) = templates.request(k) else {
                        break Stop::RanOut;
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
                };
                (tally, stop)
            })
        })
        .collect();
    let mut finished = Vec::with_capacity(workers.len());
    for worker in workers {
        finished.push(worker.await.context("a load worker failed")?);
    }
    let total = started.elapsed();
    let server_cpu = since(server_before, options.server_pid.and_then(cpu_time));
    let client_cpu = since(client_before, cpu_time(std::process::id()));
    let end_reason = [Stop::RanOut, Stop::Time, Stop::Count]
        .into_iter()
        .find(|stop| finished.iter().any(|(_, s)| s == stop))
        .unwrap_or(Stop::Count);
    let mut tally = Tally::new();
    for (worker_tally, _) in finished {
        tally.merge(worker_tally);
    }
    let facts = RunFacts {
        name: options.path.trim_start_matches('/').to_owned(),
        end_reason: end_reason.as_str(),
        started: started_at,
        options: serde_json::to_value(options).unwrap_or_default(),
        total,
        server_cpu,
        client_cpu,
        signature_checks: templates.signature_checks.clone(),
    };
    Ok(Report::new(tally, facts))
}

/// The lowest rate `--rps` accepts: one request in about 17 minutes.
pub const MIN_RPS: f64 = 0.001;

/// Why a worker stopped; the run's end reason is the first of these any worker saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The single-use ride codes were used up.
    RanOut,
    /// The duration ran out.
    Time,
    /// Every request of the count was sent.
    Count,
}

impl Stop {
    /// ghz's names, and ours for codes used up.
    fn as_str(self) -> &'static str {
        match self {
            Self::RanOut => "codes used up",
            Self::Time => "timeout",
            Self::Count => "normal",
        }
    }
}

/// The CPU time a process spent between two readings, if both were taken.
fn since(before: Option<Duration>, now: Option<Duration>) -> Option<Duration> {
    Some(now?.saturating_sub(before?))
}
