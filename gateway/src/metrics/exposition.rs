//! The Prometheus text exposition served at `GET /metrics`: on each scrape, a
//! [`Collector`] reads the decision counters and the stores' own statistics and writes
//! them with their right types through `prometheus-client`'s text encoder.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use ridegate_adapters::audit::{JsonLinesAudit, RedisStreamAudit};
use ridegate_adapters::shared::SharedTier;
use ridegate_core::decision::Urgency;
use ridegate_core::model::Reason;

use super::{BUCKETS_US, ConnectionClosed, Metrics, VERDICTS, names, verdict_index, verdict_label};
use crate::brake::MassDenyBrake;
use crate::gate_state::GateStateFeed;
use crate::stores::{LinkBackend, StatusReader, StatusSource};

/// Everything a scrape reads. Each part is shared with whoever updates it; nothing here
/// is written.
pub struct Sources {
    /// The tap path's counters and latency histogram.
    pub decisions: Arc<Metrics>,
    /// The audit writer, for its queue and failures.
    pub audit: Arc<JsonLinesAudit>,
    /// The audit stream to Redis, when enabled.
    pub audit_stream: Option<Arc<RedisStreamAudit>>,
    /// The link store, for its size when it is in this process.
    pub links: LinkBackend,
    /// The health-status source, for its size or the platform client's statistics.
    pub status_source: StatusSource,
    /// Where decisions read statuses, for the health cache's statistics.
    pub status_reader: StatusReader,
    /// The shared tier, when configured.
    pub shared: Option<Arc<SharedTier>>,
    /// Ride-code claims decided locally because Redis did not answer.
    pub replay_fallbacks: Arc<AtomicU64>,
    /// The mass-deny brake on pushed statuses.
    pub brake: Arc<MassDenyBrake>,
    /// The gate state feed, on the embedded store.
    pub gate_state: Option<Arc<GateStateFeed>>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// The `/metrics` page: a registry holding one collector over [`Sources`].
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// The `Content-Type` of [`Exposition::render`]'s text (Prometheus text 0.0.4).
    pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

    /// An exposition reading `sources` on every scrape.
    pub fn new(sources: Sources) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(sources));
        Self { registry }
    }

    /// The page, in the Prometheus text format.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8 << 10);
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Collector for Sources {
    fn encode(&self, mut out: DescriptorEncoder<'_>) -> fmt::Result {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        encode_decisions(&self.decisions, &mut out)?;
        let brake = self.brake.status();
        gauge(
            &mut out,
            names::BRAKE_ENGAGED,
            "1 while the mass-deny brake holds status changes.",
            u64::from(brake.engaged),
        )?;
        gauge(
            &mut out,
            names::BRAKE_HELD,
            "Status changes held since the mass-deny brake engaged.",
            brake.held,
        )?;
        if let Some(feed) = &self.gate_state {
            gauge(
                &mut out,
                names::GATE_STATE_VERSION,
                "The gate state feed's latest version.",
                feed.current(),
            )?;
            gauge(
                &mut out,
                names::GATE_STATE_LIVE,
                "1 while the gate state feed's stores are known to be current (no heartbeat to gates otherwise).",
                u64::from(feed.is_live()),
            )?;
            counter(
                &mut out,
                names::GATE_STATE_SNAPSHOTS,
                "Gate state snapshots sent to followers that could not resume.",
                feed.snapshots_taken(),
            )?;
        }
        gauge(
            &mut out,
            names::AUDIT_PENDING,
            "Audit events queued but not yet written.",
            self.audit.pending(),
        )?;
        counter(
            &mut out,
            names::AUDIT_FAILED,
            "Audit events that could not be written.",
            self.audit.failed(),
        )?;
        if let Some(stream) = &self.audit_stream {
            let stats = stream.stats();
            for (name, help, value) in [
                (
                    names::AUDIT_STREAM_SHIPPED,
                    "Audit events appended to the Redis stream.",
                    &stats.shipped,
                ),
                (
                    names::AUDIT_STREAM_DROPPED,
                    "Audit events not shipped to the stream: its queue was full.",
                    &stats.dropped,
                ),
                (
                    names::AUDIT_STREAM_FAILED,
                    "Audit events not shipped to the stream: Redis refused or was down.",
                    &stats.failed,
                ),
            ] {
                counter(&mut out, name, help, load(value))?;
            }
        }
        if let Some(cache) = self.status_reader.cache() {
            let stats = cache.stats();
            gauge(&mut out, names::HEALTH_CACHE_ENTRIES, "Statuses cached.", cache.len())?;
            for (name, help, value) in [
                (
                    names::HEALTH_CACHE_HITS,
                    "Lookups answered fresh from the cache.",
                    &stats.hits,
                ),
                (
                    names::HEALTH_CACHE_MISSES,
                    "Lookups that asked the source.",
                    &stats.misses,
                ),
                (names::HEALTH_FETCHES, "Fetches sent to the source.", &stats.fetches),
                (
                    names::HEALTH_FETCH_ERRORS,
                    "Fetches that failed or timed out.",
                    &stats.fetch_errors,
                ),
                (
                    names::HEALTH_STALE_ANSWERS,
                    "Lookups answered from a stale entry.",
                    &stats.stale,
                ),
                (
                    names::HEALTH_UNAVAILABLE,
                    "Lookups with no usable status.",
                    &stats.unavailable,
                ),
                (
                    names::HEALTH_REFRESHES,
                    "Background refreshes of ageing entries.",
                    &stats.refreshes,
                ),
            ] {
                counter(&mut out, name, help, load(value))?;
            }
        }
        if let Some(n) = self.links.local_len() {
            gauge(
                &mut out,
                names::LINKED_CREDENTIALS,
                "Credentials linked in the embedded store.",
                n as u64,
            )?;
        }
        if let Some(n) = self.status_source.local_len() {
            gauge(
                &mut out,
                names::HEALTH_STATUSES,
                "Statuses held by the embedded source.",
                n as u64,
            )?;
        }
        if let Some(remote) = self.status_source.platform() {
            let stats = remote.stats();
            for (name, help, value) in [
                (
                    names::PLATFORM_CALLS,
                    "Calls sent to the health platform, hedges included.",
                    &stats.calls,
                ),
                (
                    names::PLATFORM_HEDGES,
                    "Second calls sent because the first was slow.",
                    &stats.hedges,
                ),
                (
                    names::PLATFORM_HEDGES_REFUSED,
                    "Slow calls not hedged because the hedge budget was spent.",
                    &stats.hedges_refused,
                ),
                (
                    names::PLATFORM_RETRIES,
                    "Second calls sent because the first failed fast.",
                    &stats.retries,
                ),
                (
                    names::PLATFORM_FAILURES,
                    "Platform fetches that failed or timed out.",
                    &stats.failures,
                ),
                (
                    names::PLATFORM_SHORT_CIRCUITED,
                    "Fetches not sent because the circuit breaker was open.",
                    &stats.short_circuited,
                ),
                (
                    names::PLATFORM_BREAKER_OPENED,
                    "Times the circuit breaker opened.",
                    &stats.breaker_opened,
                ),
                (
                    names::PLATFORM_CHANGES,
                    "Changes received on the platform's change feed.",
                    &stats.changes,
                ),
                (
                    names::PLATFORM_RESETS,
                    "Times the change feed lost its place and the cache was cleared.",
                    &stats.resets,
                ),
            ] {
                counter(&mut out, name, help, load(value))?;
            }
            gauge(
                &mut out,
                names::PLATFORM_BREAKER_OPEN,
                "1 while the circuit breaker keeps calls away from the platform.",
                u64::from(remote.is_open()),
            )?;
        }
        if let Some(tier) = &self.shared {
            gauge(
                &mut out,
                names::SHARED_TIER_UP,
                "1 while Redis answers and holds its data, 0 while it is down or has lost its data.",
                u64::from(tier.is_up()),
            )?;
            gauge(
                &mut out,
                names::SHARED_DATA_LOST,
                "1 while Redis has lost its data (epoch marker missing) and is not restored.",
                u64::from(tier.is_data_lost()),
            )?;
            counter(
                &mut out,
                names::SHARED_DATA_LOSSES,
                "Times Redis was found to have lost its data.",
                load(&tier.stats().data_lost),
            )?;
            counter(
                &mut out,
                names::SHARED_ERRORS,
                "Redis commands that failed or timed out.",
                load(&tier.stats().errors),
            )?;
            counter(
                &mut out,
                names::SHARED_SKIPPED,
                "Redis commands not sent while it was down.",
                load(&tier.stats().skipped),
            )?;
            counter(
                &mut out,
                names::REPLAY_LOCAL_FALLBACKS,
                "Ride codes checked against this instance only, Redis not answering.",
                load(&self.replay_fallbacks),
            )?;
        }
        Ok(())
    }
}

/// The tap path's counters and its latency histogram.
fn encode_decisions(m: &Metrics, out: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut decisions = out.encode_descriptor(
        family(names::DECISIONS),
        "Gate decisions by verdict and reason.",
        None,
        MetricType::Counter,
    )?;
    for verdict in VERDICTS {
        for reason in Reason::ALL {
            let n = load(&m.decisions[verdict_index(verdict)][reason.index()]);
            if n > 0 {
                let labels = [("verdict", verdict_label(verdict)), ("reason", reason.label())];
                decisions
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
    }
    for (name, help, value) in [
        (
            names::DEGRADED,
            "Decisions made without a fresh health status.",
            &m.degraded,
        ),
        (
            names::RETRIES,
            "Stored answers given again to retried requests.",
            &m.retries,
        ),
        (
            names::REQUEST_ID_CONFLICTS,
            "Taps that reused a request id kept for a different tap, decided afresh.",
            &m.request_id_conflicts,
        ),
        (
            names::OFFLINE_CODES_REUSED,
            "Ride codes uploaded as used offline that had been used elsewhere too.",
            &m.offline_codes_reused,
        ),
        (
            names::SHADOW_REFUSALS,
            "Shadow-mode taps that enforcement would have refused.",
            &m.shadow_refusals,
        ),
        (names::INVALID, "Requests rejected as malformed.", &m.invalid),
        (
            names::TLS_HANDSHAKE_FAILURES,
            "TLS handshakes refused or timed out on the gate port.",
            &m.tls_handshake_failures,
        ),
        (
            names::GATE_REFUSALS,
            "Taps refused for their gate: another gate's certificate, none, or not as registered.",
            &m.gate_refusals,
        ),
        (
            names::ANSWERS_LATE,
            "Unary gate answers ready only after the caller's own deadline, timed from when the call was read.",
            &m.answers_late,
        ),
    ] {
        counter(out, name, help, load(value))?;
    }
    counter(
        out,
        names::CONNECTIONS_REFUSED,
        "Connections closed at once: server.max_connections were open.",
        load(&m.connections_refused),
    )?;
    counter(
        out,
        names::ACCEPT_ERRORS,
        "Failed accepts on the gate port.",
        load(&m.accept_errors),
    )?;
    out.encode_descriptor(
        names::RETRY_HINT,
        "The retry hint (grpc-retry-pushback-ms) the latest refusal carried.",
        None,
        MetricType::Gauge,
    )?
    .encode_gauge(&(load(&m.retry_hint_ns) as f64 / 1e9))?;
    out.encode_descriptor(
        names::RUNTIME_LAG,
        "How late the runtime wakes a task, recent mean: about how long a call's bytes wait to be read.",
        None,
        MetricType::Gauge,
    )?
    .encode_gauge(&(load(&m.runtime_lag_ns) as f64 / 1e9))?;
    gauge(
        out,
        names::CONNECTIONS_OPEN,
        "Connections open on the gate port.",
        load(&m.connections_open),
    )?;
    let mut closed = out.encode_descriptor(
        family(names::CONNECTIONS_CLOSED),
        "Connections ridegate closed, by reason.",
        None,
        MetricType::Counter,
    )?;
    for why in ConnectionClosed::ALL {
        closed
            .encode_family(&[("reason", why.label())])?
            .encode_counter::<NoLabelSet, _, u64>(&load(&m.connections_closed[why as usize]), None)?;
    }
    let mut shed = out.encode_descriptor(
        family(names::SHED),
        "Gate calls refused under overload (RESOURCE_EXHAUSTED), by kind.",
        None,
        MetricType::Counter,
    )?;
    shed.encode_family(&[("kind", "at_capacity")])?
        .encode_counter::<NoLabelSet, _, u64>(&load(&m.shed_at_capacity), None)?;
    for urgency in Urgency::ALL {
        shed.encode_family(&[("kind", urgency.label())])?
            .encode_counter::<NoLabelSet, _, u64>(&load(&m.shed[urgency.index()]), None)?;
    }
    // Per-bucket counts (the encoder makes them cumulative), the overflow under +Inf.
    let buckets: Vec<(f64, u64)> = BUCKETS_US
        .iter()
        .map(|&us| us as f64 / 1e6)
        .chain([f64::INFINITY])
        .zip(m.latency_buckets.iter().map(load))
        .collect();
    let count = buckets.iter().map(|(_, n)| n).sum();
    let sum = load(&m.latency_sum_us) as f64 / 1e6;
    out.encode_descriptor(
        names::LATENCY,
        "Time from receiving a tap to answering it.",
        None,
        MetricType::Histogram,
    )?
    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// The family name the encoder takes for a counter: it adds the `_total` back.
fn family(counter_name: &str) -> &str {
    counter_name.strip_suffix("_total").unwrap_or(counter_name)
}

fn counter(out: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    out.encode_descriptor(family(name), help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(out: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    out.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ridegate_adapters::health::MemoryHealth;
    use ridegate_adapters::link::{MemoryLinks, SecondCard};
    use ridegate_core::model::{Answer, DecisionId, Mode, Verdict};

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

    /// An embedded deployment's sources over `decisions`.
    fn embedded(decisions: Arc<Metrics>) -> Exposition {
        let statuses = Arc::new(MemoryHealth::default());
        Exposition::new(Sources {
            decisions,
            audit: Arc::new(JsonLinesAudit::new(Box::new(std::io::sink())).expect("audit writer")),
            audit_stream: None,
            links: LinkBackend::Memory(Arc::new(MemoryLinks::new(SecondCard::default()))),
            status_source: StatusSource::Memory(statuses.clone()),
            status_reader: StatusReader::Embedded(statuses),
            shared: None,
            replay_fallbacks: Arc::default(),
            brake: Arc::new(MassDenyBrake::new(crate::brake::BrakeConfig::default())),
            gate_state: None,
        })
    }

    /// The `# TYPE` of every family on `page`, by family name.
    fn types(page: &str) -> Vec<(&str, &str)> {
        page.lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
            .collect()
    }

    fn value<'a>(page: &'a str, sample: &str) -> Option<&'a str> {
        page.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
    }

    #[test]
    fn counters_are_counters_named_total_and_levels_are_gauges() {
        let metrics = Arc::new(Metrics::default());
        metrics.record(
            &answer(Verdict::Deny, Reason::HealthRed),
            true,
            Duration::from_micros(70),
        );
        metrics.record_invalid();
        metrics.set_runtime_lag(Duration::from_millis(3));
        let page = embedded(metrics).render().expect("renders");
        let types = types(&page);
        for (name, kind) in &types {
            match *kind {
                "counter" => assert!(name.ends_with("_total"), "{name}: a counter without _total"),
                "gauge" | "histogram" => assert!(!name.ends_with("_total"), "{name}: a {kind} named _total"),
                other => panic!("{name}: unexpected type {other}"),
            }
        }
        for (name, kind) in [
            (names::DECISIONS, "counter"),
            (names::RETRIES, "counter"),
            (names::INVALID, "counter"),
            (names::AUDIT_FAILED, "counter"),
            (names::AUDIT_PENDING, "gauge"),
            (names::LINKED_CREDENTIALS, "gauge"),
            (names::HEALTH_STATUSES, "gauge"),
            (names::LATENCY, "histogram"),
            (names::RUNTIME_LAG, "gauge"),
        ] {
            assert!(types.contains(&(name, kind)), "{name} is not a {kind}:\n{page}");
        }
        assert_eq!(
            value(
                &page,
                "ridegate_decisions_total{verdict=\"deny\",reason=\"health_red\"}"
            ),
            Some("1"),
            "{page}"
        );
        assert_eq!(value(&page, names::RETRIES), Some("1"));
        assert_eq!(value(&page, names::INVALID), Some("1"));
        assert_eq!(value(&page, names::LINKED_CREDENTIALS), Some("0"));
        assert_eq!(value(&page, names::RUNTIME_LAG), Some("0.003"), "{page}");
    }

    #[test]
    fn the_latency_histogram_has_cumulative_buckets_a_sum_and_a_count() {
        let metrics = Arc::new(Metrics::default());
        for latency in [
            Duration::from_micros(70),
            Duration::from_millis(3),
            Duration::from_secs(2),
        ] {
            metrics.record(&answer(Verdict::Allow, Reason::HealthGreen), false, latency);
        }
        let page = embedded(metrics).render().expect("renders");
        let buckets: Vec<(&str, u64)> = page
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("ridegate_decision_seconds_bucket{le=\"")?;
                let (le, n) = rest.split_once("\"} ")?;
                Some((le, n.parse().ok()?))
            })
            .collect();
        assert_eq!(buckets.len(), BUCKETS_US.len() + 1, "{page}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "not cumulative: {buckets:?}"
        );
        assert_eq!(buckets.iter().find(|(le, _)| *le == "0.0001"), Some(&("0.0001", 1)));
        assert_eq!(buckets.iter().find(|(le, _)| *le == "0.005"), Some(&("0.005", 2)));
        assert_eq!(buckets.iter().find(|(le, _)| *le == "1"), Some(&("1", 2)));
        assert_eq!(buckets.last(), Some(&("+Inf", 3)));
        assert_eq!(value(&page, "ridegate_decision_seconds_count"), Some("3"));
        let sum: f64 = value(&page, "ridegate_decision_seconds_sum")
            .expect("sum")
            .parse()
            .expect("a number");
        assert!((sum - 2.00307).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn every_counter_name_ends_in_total() {
        for name in [
            names::DECISIONS,
            names::DEGRADED,
            names::RETRIES,
            names::REQUEST_ID_CONFLICTS,
            names::SHADOW_REFUSALS,
            names::INVALID,
            names::AUDIT_FAILED,
            names::AUDIT_STREAM_SHIPPED,
            names::AUDIT_STREAM_DROPPED,
            names::AUDIT_STREAM_FAILED,
            names::HEALTH_CACHE_HITS,
            names::HEALTH_CACHE_MISSES,
            names::HEALTH_FETCHES,
            names::HEALTH_FETCH_ERRORS,
            names::HEALTH_STALE_ANSWERS,
            names::HEALTH_UNAVAILABLE,
            names::HEALTH_REFRESHES,
            names::PLATFORM_CALLS,
            names::PLATFORM_HEDGES,
            names::PLATFORM_HEDGES_REFUSED,
            names::PLATFORM_RETRIES,
            names::PLATFORM_FAILURES,
            names::PLATFORM_SHORT_CIRCUITED,
            names::PLATFORM_BREAKER_OPENED,
            names::PLATFORM_CHANGES,
            names::PLATFORM_RESETS,
            names::SHARED_ERRORS,
            names::SHARED_SKIPPED,
            names::SHARED_DATA_LOSSES,
            names::REPLAY_LOCAL_FALLBACKS,
        ] {
            assert_ne!(family(name), name, "{name}");
        }
    }
}
