//! `ridegate load`: a load generator with ghz's habits that sends what real gates send.
//!
//! Requests are encoded (and their ride codes minted) before the timed phase. Then
//! `concurrency` workers share `connections` HTTP/2 connections; each takes the next
//! request number, waits for its slot when a rate is set, sends the request and records
//! the answer. Like a gate, a worker backs off before its next request after a call
//! that brought no decision ([`Backoff`]: the server's `grpc-retry-pushback-ms` plus
//! jitter after a refusal, a growing random pause after timeouts; unless
//! `--ignore-pushback`), and a broken connection is reopened. The run ends after
//! `total` requests, after `duration`, or when the single-use ride codes are used up,
//! whichever comes first.

mod client;
mod report;
pub mod setup;
pub mod traffic;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use ridegate_gate::Backoff;
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
    /// Back off as a gate does ([`Backoff`]): after a refusal, the retry hint plus
    /// jitter; after a timeout or a lost connection, a pause that grows with each in a
    /// row. Without it the next call goes at once, as ghz sends.
    pub honor_pushback: bool,
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
        connections.push(tokio::sync::Mutex::new((0, open(options).await?)));
    }
    let connections = Arc::new(connections);
    let limit = options.total.unwrap_or(u64::MAX);
    let next = Arc::new(AtomicU64::new(0));
    // One tally per connection, shared by its workers: a histogram per worker would
    // cost the tool more than the calls at thousands in flight.
    let tallies: Arc<Vec<parking_lot::Mutex<Tally>>> = Arc::new(
        (0..options.connections)
            .map(|_| parking_lot::Mutex::new(Tally::new()))
            .collect(),
    );
    let server_before = options.server_pid.and_then(cpu_time);
    let client_before = cpu_time(std::process::id());
    let started_at = SystemTime::now();
    let started = Instant::now();
    let end = options.duration.map(|d| started + d);
    let done = Arc::new(AtomicBool::new(false));
    let lag = tokio::spawn(own_lag(done.clone()));
    let workers: Vec<_> = (0..options.concurrency)
        .map(|w| {
            let slot = w % connections.len();
            let (templates, next, connections, options, tallies) = (
                templates.clone(),
                next.clone(),
                connections.clone(),
                options.clone(),
                tallies.clone(),
            );
            let (rps, timeout) = (options.rps, options.timeout);
            let mut backoff = Backoff::new(w as u64);
            tokio::spawn(async move {
                let (mut generation, mut connection) = connections[slot].lock().await.clone();
                loop {
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
                        Err(_) => client::Reply::error(4, "deadline exceeded (the load tool's timeout)"),
                    };
                    tallies[slot].lock().record(sent.elapsed(), &reply);
                    let broken = reply.code == 14 && reply.message.starts_with(client::TRANSPORT);
                    if broken {
                        // Reopened by the first worker that finds it broken.
                        (generation, connection) = reopen(&connections[slot], generation, &options).await;
                    }
                    // Back off as a gate would (ridegate_gate::Backoff), or, ghz-like,
                    // send again at once (after a pause to reconnect).
                    let pause = match (reply.code, reply.pushback) {
                        _ if !options.honor_pushback => broken.then_some(RECONNECT_PAUSE),
                        (8, Some(hint)) => Some(backoff.refused(hint)),
                        // No answer in time, unavailable, or refused without a hint.
                        (4 | 8 | 14, _) => Some(backoff.failed()),
                        _ => {
                            backoff.answered();
                            None
                        }
                    };
                    if let Some(pause) = pause {
                        let until = Instant::now() + pause;
                        if end.is_some_and(|end| until >= end) {
                            break Stop::Time;
                        }
                        tokio::time::sleep_until(until).await;
                    }
                }
            })
        })
        .collect();
    let mut finished = Vec::with_capacity(workers.len());
    for worker in workers {
        finished.push(worker.await);
    }
    let total = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let own_lag = lag.await.context("the lag probe failed")?;
    let finished = finished
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("a load worker failed")?;
    let server_cpu = since(server_before, options.server_pid.and_then(cpu_time));
    let client_cpu = since(client_before, cpu_time(std::process::id()));
    let end_reason = [Stop::RanOut, Stop::Time, Stop::Count]
        .into_iter()
        .find(|stop| finished.contains(stop))
        .unwrap_or(Stop::Count);
    let mut tally = Tally::new();
    for connection_tally in tallies.iter() {
        tally.merge(std::mem::replace(&mut *connection_tally.lock(), Tally::new()));
    }
    let facts = RunFacts {
        name: options.path.trim_start_matches('/').to_owned(),
        end_reason: end_reason.as_str(),
        started: started_at,
        options: serde_json::to_value(options).unwrap_or_default(),
        total,
        server_cpu,
        client_cpu,
        own_lag,
        signature_checks: templates.signature_checks.clone(),
    };
    Ok(Report::new(tally, facts))
}

/// How often the lag probe asks to be woken.
const LAG_TICK: Duration = Duration::from_millis(5);

/// The tool's own scheduling lag, until `done`: how late a task asking to be woken every
/// [`LAG_TICK`] was woken. A busy load tool is late to read its answers too; a call it
/// timed past its deadline may have been answered in time.
async fn own_lag(done: Arc<AtomicBool>) -> Histogram<u64> {
    let mut lags = Histogram::new(3).expect("3 significant digits are supported");
    ridegate::telemetry::watch_wake_lag(LAG_TICK, |late| {
        // The histogram grows to hold any lag, so recording cannot fail.
        let _ = lags.record(u64::try_from(late.as_nanos()).unwrap_or(u64::MAX).max(1));
        if done.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .await;
    lags
}

/// How long a worker waits after finding its connection broken.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// Opens one connection as `options` say.
async fn open(options: &Options) -> anyhow::Result<client::Connection> {
    client::Connection::open(&options.target, &options.path, options.timeout, options.tls.as_ref())
        .await
        .with_context(|| format!("cannot connect to {}", options.target))
}

/// The connection in `slot`, reopened if it is still the broken one of `generation`
/// (another worker may have reopened it already). If it cannot be reopened, the broken
/// one is kept, and the next call finds out again.
async fn reopen(
    slot: &tokio::sync::Mutex<(u64, client::Connection)>,
    generation: u64,
    options: &Options,
) -> (u64, client::Connection) {
    let mut held = slot.lock().await;
    if held.0 == generation
        && let Ok(Ok(fresh)) = tokio::time::timeout(options.timeout, open(options)).await
    {
        *held = (generation + 1, fresh);
    }
    held.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lag_probe_samples_until_told_to_stop() {
        let done = Arc::new(AtomicBool::new(false));
        let probe = tokio::spawn(own_lag(done.clone()));
        tokio::time::sleep(LAG_TICK * 10).await;
        done.store(true, Ordering::Relaxed);
        let lags = tokio::time::timeout(Duration::from_secs(5), probe)
            .await
            .expect("the probe stops")
            .unwrap();
        assert!(lags.len() >= 3, "{} samples", lags.len());
    }
}
