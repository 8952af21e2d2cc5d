//! `ridegate gate-sim`: a line of simulated offline-capable gates. They share one gate
//! library (as a station controller would), follow ridegate's `GateState` feed, and
//! send the load tool's traffic (a `load-setup` population, or card taps) at a steady
//! rate: each tap is asked of ridegate within the budget, and decided offline by the
//! library when ridegate does not answer. A line a second shows where the gates stand;
//! the end, what was answered online and offline, by verdict and reason.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use prost::Message as _;
use ridegate::serve::convert::gate_request;
use ridegate_core::clock::Clock;
use ridegate_gate::{BrakeSettings, GateSettings, OfflineGate, wire_reason, wire_verdict};
use ridegate_proto::pb;
use ridegate_proto::pb::gate_client::GateClient;
use tonic::transport::Endpoint;

use super::{Failure, runtime};
use crate::load::setup::Manifest;
use crate::load::traffic::{Mix, Shares, Source, Templates};

/// `ridegate gate-sim` options.
#[derive(Debug, clap::Args)]
pub(super) struct GateSimArgs {
    /// ridegate's gate port, `host:port`.
    #[arg(default_value = "127.0.0.1:50061")]
    target: String,
    /// Where the gate library keeps its state, used codes and offline decisions.
    #[arg(long, default_value = "gate-sim-state")]
    state_dir: PathBuf,
    /// A `ridegate load-setup` directory: its population's taps. Without it, card taps
    /// by riders 0–999.
    #[arg(long)]
    population: Option<PathBuf>,
    /// Credential kinds by weight (as `ridegate load --mix`).
    #[arg(long)]
    mix: Option<Mix>,
    /// Gates on the line (one library serves them all).
    #[arg(long, default_value_t = 4)]
    gates: u32,
    /// Taps per second, all gates together.
    #[arg(short = 'r', long, default_value_t = 20.0)]
    rate: f64,
    /// How long to run.
    #[arg(short = 'z', long, value_parser = humantime::parse_duration, default_value = "30s")]
    duration: Duration,
    /// Each online call's budget; past it the gate decides offline.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "300ms")]
    budget: Duration,
    /// Past this age without word from ridegate, the library answers health checks
    /// with the policy's unavailable verdict.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    max_state_age: Duration,
    /// The station group.
    #[arg(long, default_value = "gate-sim")]
    group: String,
    /// Seed of the traffic draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Counts by where a tap was answered, verdict and reason.
#[derive(Default)]
struct Tally(BTreeMap<(&'static str, String, String), u64>);

impl Tally {
    fn add(&mut self, place: &'static str, verdict: &str, reason: &str) {
        *self
            .0
            .entry((place, verdict.to_owned(), reason.to_owned()))
            .or_default() += 1;
    }

    fn count(&self, place: &str) -> u64 {
        self.0.iter().filter(|((p, ..), _)| *p == place).map(|(_, n)| n).sum()
    }
}

/// Runs `ridegate gate-sim`.
pub(super) fn run(args: GateSimArgs) -> Result<(), Failure> {
    if !(args.rate.is_finite() && args.rate > 0.0) || args.gates == 0 || args.duration.is_zero() {
        return Err(Failure::usage(anyhow::anyhow!(
            "-r/--rate, --gates and -z/--duration must be above zero"
        )));
    }
    let manifest = args
        .population
        .as_ref()
        .map(|dir| Manifest::read(dir))
        .transpose()
        .map_err(Failure::usage)?;
    let source = match (&args.population, &manifest) {
        (Some(dir), Some(manifest)) => Source::Setup { dir, manifest },
        _ => Source::Cards,
    };
    let mix = args
        .mix
        .unwrap_or(if manifest.is_some() { Mix::default() } else { Mix::CARDS });
    let count = (args.rate * args.duration.as_secs_f64()).ceil().max(1.0) as usize;
    let templates = Templates::build(&source, mix, Shares::default(), count, args.seed).map_err(Failure::usage)?;
    let settings = GateSettings {
        group: args.group.clone(),
        max_state_age: args.max_state_age,
        brake: BrakeSettings::default(),
        ..GateSettings::new(format!("http://{}", args.target), &args.state_dir)
    };
    let gate = OfflineGate::open(settings, Clock::System)
        .with_context(|| format!("--state-dir: cannot use {}", args.state_dir.display()))
        .map_err(Failure::usage)?;
    runtime()?.block_on(simulate(&args, gate, &templates, count))
}

async fn simulate(args: &GateSimArgs, gate: OfflineGate, templates: &Templates, count: usize) -> Result<(), Failure> {
    let follower = gate.follow();
    let endpoint = Endpoint::from_shared(format!("http://{}", args.target))
        .map_err(|e| Failure::usage(anyhow::anyhow!("target: {e}")))?
        .connect_timeout(args.budget)
        .timeout(args.budget);
    let client = GateClient::new(endpoint.connect_lazy());
    let mut tally = Tally::default();
    let every = Duration::from_secs_f64(1.0 / args.rate);
    let started = Instant::now();
    let mut next_line = started + Duration::from_secs(1);
    let mut ticks = tokio::time::interval(every);
    for k in 0..count as u64 {
        ticks.tick().await;
        let Some(frame) = templates.request(k) else { break };
        let mut request = pb::AuthorizeRequest::decode(frame.slice(5..)).map_err(Failure::runtime)?;
        if let Some(g) = request.gate.as_mut() {
            g.gate_id = format!("sim-gate-{}", k % u64::from(args.gates));
        }
        match client.clone().authorize(request.clone()).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                tally.add("online", answer.verdict().as_str_name(), answer.reason().as_str_name());
            }
            Err(_) => {
                let tap = gate_request(request).map_err(|e| Failure::runtime(anyhow::anyhow!("{e}")))?;
                let answer = gate.decide(&tap).map_err(Failure::runtime)?;
                let verdict = pb::Verdict::try_from(wire_verdict(answer.verdict)).unwrap_or_default();
                let reason = pb::Reason::try_from(wire_reason(answer.reason)).unwrap_or_default();
                tally.add("offline", verdict.as_str_name(), reason.as_str_name());
            }
        }
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            let status = gate.status();
            eprintln!(
                "t={:>4.0}s online={} offline={} version={} entries={} state_age={} pending_uploads={} held={}",
                started.elapsed().as_secs_f64(),
                tally.count("online"),
                tally.count("offline"),
                status.version,
                status.entries,
                status
                    .state_age_ms
                    .map_or_else(|| "none".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1e3)),
                status.pending_uploads,
                status.held
            );
        }
    }
    follower.abort();
    println!("| answered | verdict | reason | taps |");
    println!("|---|---|---|---|");
    for ((place, verdict, reason), n) in &tally.0 {
        println!("| {place} | {verdict} | {reason} | {n} |");
    }
    Ok(())
}
