//! Decision metrics: counters by verdict and reason, a latency histogram, and the
//! Prometheus text rendering served at `GET /metrics`. Recording is a handful of relaxed
//! atomic adds; rendering happens only when scraped. No rider data, ever: labels are
//! verdicts, reasons and modes only.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ridegate_core::model::{Answer, Reason, Verdict};

/// Metric names, in one place.
pub mod names {
    /// Decisions by verdict and reason.
    pub const DECISIONS: &str = "ridegate_decisions_total";
    /// Decisions whose answer was degraded.
    pub const DEGRADED: &str = "ridegate_degraded_decisions_total";
    /// Answers given again to a retried request.
    pub const RETRIES: &str = "ridegate_retried_requests_total";
    /// Shadow-mode taps that enforcement would have refused.
    pub const SHADOW_REFUSALS: &str = "ridegate_shadow_refusals_total";
    /// Requests rejected as malformed.
    pub const INVALID: &str = "ridegate_invalid_requests_total";
    /// Decision latency, from receipt to answer.
    pub const LATENCY: &str = "ridegate_decision_seconds";
}

/// Latency bucket upper bounds, in microseconds.
const BUCKETS_US: [u64; 16] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 150_000, 200_000, 300_000, 500_000,
    1_000_000,
];

const VERDICTS: [Verdict; 3] = [Verdict::Allow, Verdict::Deny, Verdict::Assist];

fn verdict_index(v: Verdict) -> usize {
    match v {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
        Verdict::Assist => 2,
    }
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Assist => "assist",
    }
}

/// All of ridegate's decision counters.
#[derive(Debug)]
pub struct Metrics {
    decisions: [[AtomicU64; Reason::ALL.len()]; 3],
    degraded: AtomicU64,
    retries: AtomicU64,
    shadow_refusals: AtomicU64,
    invalid: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            decisions: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            degraded: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            shadow_refusals: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered tap.
    pub fn record(&self, answer: &Answer, retry: bool, latency: Duration) {
        self.decisions[verdict_index(answer.verdict)][answer.reason.index()].fetch_add(1, Ordering::Relaxed);
        if answer.degraded {
            self.degraded.fetch_add(1, Ordering::Relaxed);
        }
        if retry {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        if answer.shadow.is_some_and(|(v, _)| v != Verdict::Allow) {
            self.shadow_refusals.fetch_add(1, Ordering::Relaxed);
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Counts one malformed request.
    pub fn record_invalid(&self) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
    }

    /// Decisions counted so far with this verdict and reason.
    pub fn decisions(&self, verdict: Verdict, reason: Reason) -> u64 {
        self.decisions[verdict_index(verdict)][reason.index()].load(Ordering::Relaxed)
    }

    /// Renders the counters in the Prometheus text format, followed by `gauges`
    /// (name, help, value).
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut out = String::with_capacity(8 << 10);
        let _ = writeln!(out, "# HELP {} Gate decisions by verdict and reason.", names::DECISIONS);
        let _ = writeln!(out, "# TYPE {} counter", names::DECISIONS);
        for verdict in VERDICTS {
            for reason in Reason::ALL {
                let n = self.decisions(verdict, reason);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "{}{{verdict=\"{}\",reason=\"{}\"}} {n}",
                        names::DECISIONS,
                        verdict_label(verdict),
                        reason.label()
                    );
                }
            }
        }
        for (name, help, counter) in [
            (
                names::DEGRADED,
                "Decisions made without a fresh health status.",
                &self.degraded,
            ),
            (
                names::RETRIES,
                "Stored answers given again to retried requests.",
                &self.retries,
            ),
            (
                names::SHADOW_REFUSALS,
                "Shadow-mode taps that enforcement would have refused.",
                &self.shadow_refusals,
            ),
            (names::INVALID, "Requests rejected as malformed.", &self.invalid),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP {} Time from receiving a tap to answering it.",
            names::LATENCY
        );
        let _ = writeln!(out, "# TYPE {} histogram", names::LATENCY);
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{}_bucket{{le=\"{}\"}} {cumulative}",
                names::LATENCY,
                *bound as f64 / 1e6
            );
        }
        cumulative += self.latency_buckets[BUCKETS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {cumulative}", names::LATENCY);
        let _ = writeln!(
            out,
            "{}_sum {}",
            names::LATENCY,
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{}_count {cumulative}", names::LATENCY);
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use ridegate_core::model::{DecisionId, Mode};

    use super::*;

    fn answer(verdict: Verdict, reason: Reason) -> Answer {
        Answer {
            verdict,
            reason,
            decision_id: DecisionId(1),
            degraded: false,
            status_age_ms: None,
            mode: Mode::Enforce,
            shadow: None,
        }
    }

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.record(
            &answer(Verdict::Deny, Reason::HealthRed),
            false,
            Duration::from_micros(70),
        );
        m.record(
            &answer(Verdict::Allow, Reason::HealthGreen),
            true,
            Duration::from_millis(3),
        );
        let text = m.render(&[("ridegate_links", "Linked credentials.", 7)]);
        assert!(
            text.contains("ridegate_decisions_total{verdict=\"deny\",reason=\"health_red\"} 1"),
            "{text}"
        );
        assert!(text.contains("ridegate_retried_requests_total 1"));
        assert!(text.contains("ridegate_decision_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("ridegate_decision_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("ridegate_decision_seconds_count 2"));
        assert!(text.contains("ridegate_links 7"));
    }
}
