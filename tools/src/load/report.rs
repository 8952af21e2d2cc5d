//! The load report, shaped like ghz's: count, total, average, fastest, slowest,
//! requests/s, latency percentiles (p10…p99, plus p99.9 and max), a histogram and the
//! status-code distribution — and ridegate's own: verdicts and reasons. Durations in
//! the JSON form are integer nanoseconds, as in ghz's; histogram marks are seconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use ridegate_proto::pb;
use serde::Serialize;

use super::client::Reply;
use super::traffic::SignatureCheck;

/// What one worker counted; merged into the report at the end.
pub(super) struct Tally {
    latencies: Histogram<u64>,
    sum_ns: u128,
    count: u64,
    statuses: BTreeMap<i32, u64>,
    errors: BTreeMap<String, u64>,
    verdicts: BTreeMap<i32, u64>,
    reasons: BTreeMap<i32, u64>,
}

/// Distinct error messages kept (the rest are counted under "other").
const MAX_ERROR_KINDS: usize = 50;

impl Tally {
    pub(super) fn new() -> Self {
        Self {
            // Nanoseconds at 3 significant digits, growing with the slowest call seen
            // (about 90 KB per worker for latencies up to a second).
            latencies: Histogram::new(3).expect("3 significant digits are supported"),
            sum_ns: 0,
            count: 0,
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            reasons: BTreeMap::new(),
        }
    }

    /// Counts one call. Latency statistics cover successful calls only (as ghz's do).
    pub(super) fn record(&mut self, latency: Duration, reply: &Reply) {
        self.count += 1;
        *self.statuses.entry(reply.code).or_default() += 1;
        if reply.code == 0 {
            let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
            // The histogram grows to hold any latency, so recording cannot fail.
            let _ = self.latencies.record(ns);
            self.sum_ns += u128::from(ns);
            if let Some((verdict, reason)) = reply.answer {
                *self.verdicts.entry(verdict).or_default() += 1;
                *self.reasons.entry(reason).or_default() += 1;
            }
        } else {
            let key = if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&reply.message) {
                reply.message.clone()
            } else {
                "other".into()
            };
            *self.errors.entry(key).or_default() += 1;
        }
    }

    pub(super) fn merge(&mut self, other: Self) {
        let _ = self.latencies.add(&other.latencies);
        self.sum_ns += other.sum_ns;
        self.count += other.count;
        for (map, from) in [
            (&mut self.statuses, other.statuses),
            (&mut self.verdicts, other.verdicts),
            (&mut self.reasons, other.reasons),
        ] {
            for (k, v) in from {
                *map.entry(k).or_default() += v;
            }
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// One point of the latency distribution.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyPoint {
    /// The percentile.
    pub percentage: f64,
    /// Its latency, ns.
    pub latency: u64,
}

/// One histogram bucket.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Its upper bound, seconds.
    pub mark: f64,
    /// Calls in it.
    pub count: u64,
    /// Its share of the calls.
    pub frequency: f64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// What was called.
    pub name: String,
    /// `normal` (all requests sent), `timeout` (the duration ran out), or `codes used up`.
    pub end_reason: String,
    /// When the run started (RFC 3339).
    pub date: String,
    /// The options the run used.
    pub options: serde_json::Value,
    /// Calls made, errors included.
    pub count: u64,
    /// Wall time, ns.
    pub total: u64,
    /// Mean latency of successful calls, ns.
    pub average: u64,
    /// Fastest successful call, ns.
    pub fastest: u64,
    /// Slowest successful call, ns.
    pub slowest: u64,
    /// Calls per second (count / total).
    pub rps: f64,
    /// Errors by message.
    pub error_distribution: BTreeMap<String, u64>,
    /// Calls by gRPC status.
    pub status_code_distribution: BTreeMap<String, u64>,
    /// p10, p25, p50, p75, p90, p95, p99, p99.9 and max (100).
    pub latency_distribution: Vec<LatencyPoint>,
    /// 11 buckets from fastest to slowest.
    pub histogram: Vec<Bucket>,
    /// ridegate's verdicts.
    pub verdicts: BTreeMap<String, u64>,
    /// ridegate's reasons.
    pub reasons: BTreeMap<String, u64>,
    /// Server CPU time per call, µs (with `--server-pid`).
    pub server_cpu_per_request_micros: Option<f64>,
    /// The load tool's own CPU time per call, µs.
    pub client_cpu_per_request_micros: Option<f64>,
    /// How late the load tool's own tasks were woken (its core busy): calls it timed
    /// late by up to this much may have been answered in time.
    pub client_lag: ClientLag,
    /// The bare signature check of each kind of ride code sent, measured by the tool.
    pub signature_checks: Vec<SignatureCheck>,
}

/// The load tool's own scheduling lag, ns.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ClientLag {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// The worst.
    pub max: u64,
}

impl ClientLag {
    fn of(lags: &Histogram<u64>) -> Self {
        if lags.is_empty() {
            return Self::default();
        }
        Self {
            p50: lags.value_at_quantile(0.5),
            p99: lags.value_at_quantile(0.99),
            max: lags.max(),
        }
    }
}

/// What a run measured besides the tally.
pub(super) struct RunFacts {
    pub name: String,
    pub end_reason: &'static str,
    pub started: SystemTime,
    pub options: serde_json::Value,
    pub total: Duration,
    pub server_cpu: Option<Duration>,
    pub client_cpu: Option<Duration>,
    pub own_lag: Histogram<u64>,
    pub signature_checks: Vec<SignatureCheck>,
}

/// ghz's (Go's) name for a gRPC status code.
fn code_name(code: i32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c))
        .map_or_else(|| format!("Code({code})"), |n| (*n).to_owned())
}

fn verdict_name(v: i32) -> String {
    pb::Verdict::try_from(v).map_or_else(
        |_| format!("VERDICT_{v}"),
        |v| v.as_str_name().trim_start_matches("VERDICT_").to_owned(),
    )
}

fn reason_name(r: i32) -> String {
    pb::Reason::try_from(r).map_or_else(
        |_| format!("REASON_{r}"),
        |r| r.as_str_name().trim_start_matches("REASON_").to_owned(),
    )
}

impl Report {
    pub(super) fn new(tally: Tally, facts: RunFacts) -> Self {
        let h = &tally.latencies;
        let ok = h.len();
        let total_ns = u64::try_from(facts.total.as_nanos()).unwrap_or(u64::MAX).max(1);
        let per_call = |cpu: Option<Duration>| {
            cpu.filter(|_| tally.count > 0)
                .map(|d| d.as_secs_f64() * 1e6 / tally.count as f64)
        };
        let (fastest, slowest) = if ok > 0 { (h.min(), h.max()) } else { (0, 0) };
        let mut latency_distribution: Vec<LatencyPoint> = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9]
            .into_iter()
            .map(|percentage| LatencyPoint {
                percentage,
                latency: if ok > 0 {
                    h.value_at_quantile(percentage / 100.0)
                } else {
                    0
                },
            })
            .collect();
        latency_distribution.push(LatencyPoint {
            percentage: 100.0,
            latency: slowest,
        });
        let histogram = if ok == 0 {
            Vec::new()
        } else {
            let step = (slowest - fastest) as f64 / 10.0;
            let mut previous = 0u64;
            (0..=10)
                .map(|i| {
                    let mark = if i == 10 {
                        slowest
                    } else {
                        fastest + (step * f64::from(i)) as u64
                    };
                    let upto = h.count_between(0, mark);
                    let count = upto - previous;
                    previous = upto;
                    Bucket {
                        mark: mark as f64 / 1e9,
                        count,
                        frequency: count as f64 / ok as f64,
                    }
                })
                .collect()
        };
        Self {
            name: facts.name,
            end_reason: facts.end_reason.into(),
            date: humantime::format_rfc3339_seconds(facts.started).to_string(),
            options: facts.options,
            count: tally.count,
            total: total_ns,
            average: if ok > 0 {
                (tally.sum_ns / u128::from(ok)) as u64
            } else {
                0
            },
            fastest,
            slowest,
            rps: tally.count as f64 / facts.total.as_secs_f64().max(1e-9),
            error_distribution: tally.errors,
            status_code_distribution: tally.statuses.into_iter().map(|(c, n)| (code_name(c), n)).collect(),
            latency_distribution,
            histogram,
            verdicts: tally.verdicts.into_iter().map(|(v, n)| (verdict_name(v), n)).collect(),
            reasons: tally.reasons.into_iter().map(|(r, n)| (reason_name(r), n)).collect(),
            server_cpu_per_request_micros: per_call(facts.server_cpu),
            client_cpu_per_request_micros: per_call(facts.client_cpu),
            client_lag: ClientLag::of(&facts.own_lag),
            signature_checks: facts.signature_checks,
        }
    }

    /// The latency at `percentage` (one of the reported ones), ns.
    #[cfg(test)]
    fn percentile(&self, percentage: f64) -> Option<u64> {
        self.latency_distribution
            .iter()
            .find(|p| (p.percentage - percentage).abs() < 1e-9)
            .map(|p| p.latency)
    }

    /// The text summary, laid out like ghz's.
    pub fn summary(&self) -> String {
        let ms = |ns: u64| format!("{:.2} ms", ns as f64 / 1e6);
        let mut out = String::new();
        let _ = writeln!(out, "\nSummary:");
        let _ = writeln!(out, "  Name:\t{}", self.name);
        let _ = writeln!(out, "  Count:\t{}", self.count);
        let _ = writeln!(out, "  Total:\t{}", ms(self.total));
        let _ = writeln!(out, "  Slowest:\t{}", ms(self.slowest));
        let _ = writeln!(out, "  Fastest:\t{}", ms(self.fastest));
        let _ = writeln!(out, "  Average:\t{}", ms(self.average));
        let _ = writeln!(out, "  Requests/sec:\t{:.2}", self.rps);
        let _ = writeln!(out, "  End reason:\t{}", self.end_reason);
        if !self.histogram.is_empty() {
            let _ = writeln!(out, "\nResponse time histogram:");
            let most = self.histogram.iter().map(|b| b.count).max().unwrap_or(1).max(1);
            for bucket in &self.histogram {
                let bar = "∎".repeat(((bucket.count * 40).div_ceil(most)) as usize);
                let _ = writeln!(out, "  {:.3} [{}]\t|{bar}", bucket.mark * 1e3, bucket.count);
            }
            let _ = writeln!(out, "\nLatency distribution:");
            for point in &self.latency_distribution {
                let label = if point.percentage >= 100.0 {
                    "  max in".to_owned()
                } else {
                    format!("  {} % in", point.percentage)
                };
                let _ = writeln!(out, "{label} {}", ms(point.latency));
            }
        }
        let _ = writeln!(out, "\nStatus code distribution:");
        for (code, n) in &self.status_code_distribution {
            let _ = writeln!(out, "  [{code}]\t{n} responses");
        }
        if !self.error_distribution.is_empty() {
            let _ = writeln!(out, "\nError distribution:");
            for (message, n) in &self.error_distribution {
                let _ = writeln!(out, "  [{n}]\t{message}");
            }
        }
        if !self.verdicts.is_empty() {
            let _ = writeln!(out, "\nVerdicts:");
            for (verdict, n) in &self.verdicts {
                let _ = writeln!(out, "  {verdict}\t{n}");
            }
            let _ = writeln!(out, "\nReasons:");
            for (reason, n) in &self.reasons {
                let _ = writeln!(out, "  {reason}\t{n}");
            }
        }
        if self.server_cpu_per_request_micros.is_some() || self.client_cpu_per_request_micros.is_some() {
            let _ = writeln!(out, "\nCPU per request:");
            if let Some(us) = self.server_cpu_per_request_micros {
                let _ = writeln!(out, "  server\t{us:.1} µs");
            }
            if let Some(us) = self.client_cpu_per_request_micros {
                let _ = writeln!(out, "  load tool\t{us:.1} µs");
            }
        }
        let lag = self.client_lag;
        let _ = writeln!(
            out,
            "\nLoad tool's own scheduling lag: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lag.p50 as f64 / 1e6,
            lag.p99 as f64 / 1e6,
            lag.max as f64 / 1e6
        );
        if !self.signature_checks.is_empty() {
            let _ = writeln!(out, "\nBare signature check (measured by the load tool):");
            for check in &self.signature_checks {
                let _ = writeln!(
                    out,
                    "  {}\t{:.1} µs\t({} codes sent)",
                    check.what, check.micros, check.codes
                );
            }
        }
        out
    }
}

/// CPU time (user + system) of process `pid` so far, from `/proc/<pid>/stat`.
pub(super) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: i32, answer: Option<(i32, i32)>) -> Reply {
        Reply {
            code,
            message: if code == 0 { String::new() } else { "boom".into() },
            answer,
            pushback: None,
        }
    }

    #[test]
    fn counts_add_up_and_latency_covers_successes_only() {
        let mut a = Tally::new();
        let mut b = Tally::new();
        for i in 1..=90u64 {
            a.record(Duration::from_micros(i * 10), &reply(0, Some((1, 1))));
        }
        for _ in 0..10 {
            b.record(Duration::from_millis(500), &reply(4, None));
        }
        b.record(Duration::from_micros(1_000), &reply(0, Some((2, 3))));
        a.merge(b);
        let report = Report::new(
            a,
            RunFacts {
                name: "test".into(),
                end_reason: "normal",
                started: SystemTime::now(),
                options: serde_json::Value::Null,
                total: Duration::from_secs(1),
                server_cpu: Some(Duration::from_millis(101)),
                client_cpu: None,
                own_lag: Histogram::new(3).unwrap(),
                signature_checks: Vec::new(),
            },
        );
        assert_eq!(report.count, 101);
        assert_eq!(report.status_code_distribution["OK"], 91);
        assert_eq!(report.status_code_distribution["DeadlineExceeded"], 10);
        assert_eq!(report.error_distribution["boom"], 10);
        assert_eq!(report.verdicts["ALLOW"] + report.verdicts["DENY"], 91);
        assert_eq!(report.reasons["HEALTH_GREEN"], 90);
        assert!((report.rps - 101.0).abs() < 1e-6);
        assert_eq!(report.histogram.iter().map(|b| b.count).sum::<u64>(), 91);
        let slowest = report.slowest as f64;
        assert!(
            (slowest - 1e6).abs() / 1e6 < 0.01,
            "slowest {slowest} ns: errors are not latencies"
        );
        assert!((report.fastest as f64 - 1e4).abs() / 1e4 < 0.01);
        let p50 = report.percentile(50.0).unwrap() as f64;
        assert!((p50 - 460e3).abs() / 460e3 < 0.03, "p50 {p50}");
        assert!((report.server_cpu_per_request_micros.unwrap() - 1_000.0).abs() < 1e-6);
        let summary = report.summary();
        assert!(summary.contains("Requests/sec:\t101.00") && summary.contains("[DeadlineExceeded]\t10 responses"));
        assert!(summary.contains("99.9 % in"));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_time(std::process::id()).is_some());
        assert_eq!(cpu_time(u32::MAX), None);
    }
}
