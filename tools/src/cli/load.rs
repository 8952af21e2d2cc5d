//! `ridegate load`, `ridegate load-setup` and `ridegate baseline`: the load-testing
//! tools (see [`crate::load`] and [`crate::baseline`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use ridegate::config::ServerConfig;

use super::{Failure, runtime, shutdown_signal, write_ready_file};
use crate::load::setup::{Manifest, write_setup};
use crate::load::traffic::{Mix, Shares, Source, Templates};
use crate::load::{MIN_RPS, Options, run};
use crate::population::{HealthMix, MAX_RIDERS, Population};

/// The most requests encoded ahead (cards cycle through them; codes are single-use).
const MAX_ENCODED: usize = 1_000_000;

/// The only method `ridegate load` calls.
const AUTHORIZE: &str = "ridegate.v1.Gate/Authorize";

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// Text, laid out like ghz's summary.
    Summary,
    /// JSON with ghz's field names (durations in nanoseconds).
    Json,
}

/// `ridegate load` options (ghz's names where ghz has them).
#[derive(Debug, clap::Args)]
pub(super) struct LoadArgs {
    /// The server, `host:port`.
    #[arg(default_value = "127.0.0.1:50061")]
    target: String,
    /// A `ridegate load-setup` directory: realistic taps by its population. Without it,
    /// card taps only, by riders 0–999.
    #[arg(long)]
    population: Option<PathBuf>,
    /// Requests to send (default 200 unless -z is given).
    #[arg(short = 'n', long = "total")]
    total: Option<u64>,
    /// Requests in flight at once.
    #[arg(short = 'c', long, default_value_t = 50)]
    concurrency: usize,
    /// Connections the concurrency is spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests per second, all workers together (0: as fast as answered; else at least
    /// 0.001).
    #[arg(short = 'r', long, default_value_t = 0.0)]
    rps: f64,
    /// Send for this long, e.g. `10s` (with -n, whichever ends first).
    #[arg(short = 'z', long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Each call's deadline (sent as grpc-timeout).
    #[arg(short = 't', long, value_parser = humantime::parse_duration, default_value = "20s")]
    timeout: Duration,
    /// Send the next request at once after a refusal or a timeout, as ghz does, instead
    /// of backing off first as a gate should (ridegate-gate's Backoff: the server's
    /// grpc-retry-pushback-ms plus jitter after a refusal; after timeouts or a lost
    /// connection, a random pause whose ceiling doubles from 200 ms up to 5 s).
    #[arg(long)]
    ignore_pushback: bool,
    /// The method: ridegate.v1.Gate/Authorize (also written ridegate.v1.Gate.Authorize).
    #[arg(long, default_value = AUTHORIZE)]
    call: String,
    /// Report format.
    #[arg(short = 'O', long, value_enum, default_value = "summary")]
    format: Format,
    /// Write the report here instead of stdout.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// Credential kinds by weight [default with --population:
    /// cards=45,codes=35,device-codes=10,tickets=10; without: cards].
    #[arg(long)]
    mix: Option<Mix>,
    /// Share of exits.
    #[arg(long, default_value_t = Shares::default().exits)]
    exits: f64,
    /// Share of taps by riders with a yellow code.
    #[arg(long, default_value_t = Shares::default().yellow)]
    yellow: f64,
    /// Share of taps by riders with a red code.
    #[arg(long, default_value_t = Shares::default().red)]
    red: f64,
    /// Share of taps with a credential nobody linked.
    #[arg(long, default_value_t = Shares::default().unlinked)]
    unlinked: f64,
    /// Share of ride codes that are forged.
    #[arg(long, default_value_t = Shares::default().forged)]
    forged: f64,
    /// Requests encoded ahead when the count is not known (-z without -n and -r): with
    /// ride codes in the mix, the run ends when they are used up.
    #[arg(long, default_value_t = 500_000)]
    pool: usize,
    /// Seed of the traffic draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Report this process's CPU time per request (the server under test).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Call over TLS, trusting this CA (PEM) for the server's certificate.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: the client certificate (PEM) to present, e.g. a gate's from
    /// `ridegate keys cert gate` (use --gate-id with it).
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// The private key for --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the server's certificate must carry.
    #[arg(long, default_value = "localhost")]
    tls_name: String,
    /// Send every tap as this gate (a gate certificate speaks for one gate id only).
    #[arg(long)]
    gate_id: Option<String>,
    /// Write one framed request (a card tap, with no request id so that every copy is
    /// decided afresh) to this file for other tools (h2load `--data`), and exit.
    #[arg(long)]
    write_body: Option<PathBuf>,
    /// Mint the requests, print the bare signature check of each kind of code as JSON,
    /// and exit (benchmarks run it pinned to the server's core).
    #[arg(long)]
    checks_only: bool,
}

impl LoadArgs {
    /// The credential kinds to send: as asked, else realistic with a population and
    /// cards without one.
    fn mix(&self) -> Mix {
        match (self.mix, &self.population) {
            (Some(mix), _) => mix,
            (None, Some(_)) => Mix::default(),
            (None, None) => Mix::CARDS,
        }
    }

    fn path(&self) -> Result<String, Failure> {
        let call = self.call.replace('.', "/");
        if call != AUTHORIZE.replace('.', "/") {
            return Err(Failure::usage(anyhow::anyhow!(
                "--call: only {AUTHORIZE} is supported, got {}",
                self.call
            )));
        }
        Ok(format!("/{AUTHORIZE}"))
    }

    fn shares(&self) -> Result<Shares, Failure> {
        let shares = Shares {
            exits: self.exits,
            yellow: self.yellow,
            red: self.red,
            unlinked: self.unlinked,
            forged: self.forged,
        };
        shares.validate().map_err(|e| Failure::usage(anyhow::anyhow!(e)))?;
        Ok(shares)
    }

    /// How many requests to encode ahead.
    fn count(&self) -> Result<usize, Failure> {
        let by_rate = self
            .duration
            .filter(|_| self.rps > 0.0)
            .map(|d| (d.as_secs_f64() * self.rps).ceil() as u64);
        let n = match (self.total, self.duration) {
            (Some(n), _) => n.min(by_rate.unwrap_or(u64::MAX)),
            (None, Some(_)) => by_rate.unwrap_or(self.pool as u64),
            (None, None) => 200,
        };
        if n == 0 {
            return Err(Failure::usage(anyhow::anyhow!(
                "nothing to send: -n, -z, -r and --pool must each be above zero when given"
            )));
        }
        // Cards cycle through the encoded requests; codes cannot be reused, and minting
        // more than this takes most of their 60 s lifetime.
        if n > MAX_ENCODED as u64 && self.mix().has_codes() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{n} requests with ride codes: at most {MAX_ENCODED} can be minted ahead; use a smaller -n, -z or --pool"
            )));
        }
        Ok(usize::try_from(n).map_or(MAX_ENCODED, |n| n.min(MAX_ENCODED)))
    }
}

/// Runs `ridegate load`.
pub(super) fn run_load(args: LoadArgs) -> Result<(), Failure> {
    let path = args.path()?;
    let shares = args.shares()?;
    if !(args.rps == 0.0 || args.rps.is_finite() && args.rps >= MIN_RPS) {
        return Err(Failure::usage(anyhow::anyhow!(
            "-r/--rps: must be 0 (as fast as answered) or at least {MIN_RPS}, got {}",
            args.rps
        )));
    }
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err(Failure::usage(anyhow::anyhow!("-z/--duration: must be above zero")));
    }
    if args.concurrency == 0 || !(1..=args.concurrency).contains(&args.connections) {
        return Err(Failure::usage(anyhow::anyhow!(
            "-c/--concurrency must be at least 1 and --connections between 1 and the concurrency"
        )));
    }
    let manifest = match &args.population {
        Some(dir) => Some(Manifest::read(dir).map_err(Failure::usage)?),
        None => None,
    };
    let source = match (&args.population, &manifest) {
        (Some(dir), Some(manifest)) => Source::Setup { dir, manifest },
        _ => Source::Cards,
    };
    let count = if args.write_body.is_some() { 1 } else { args.count()? };
    let mix = if args.write_body.is_some() {
        Mix::CARDS
    } else {
        args.mix()
    };
    eprintln!("encoding {count} requests…");
    let minting = std::time::Instant::now();
    let mut templates = Templates::build(&source, mix, shares, count, args.seed).map_err(Failure::usage)?;
    if let Some(gate) = &args.gate_id {
        templates = templates.from_gate(gate).map_err(Failure::runtime)?;
    }
    if let Some(path) = &args.write_body {
        let body = templates.repeatable().context("no request").map_err(Failure::runtime)?;
        std::fs::write(path, &body)
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(Failure::runtime)?;
        return Ok(());
    }
    if args.checks_only {
        println!(
            "{}",
            serde_json::to_string_pretty(&templates.signature_checks).map_err(Failure::runtime)?
        );
        return Ok(());
    }
    let code_age_at_end = minting.elapsed() + args.duration.unwrap_or_default();
    if mix.has_codes() && code_age_at_end > Duration::from_secs(50) {
        eprintln!(
            "warning: ride codes are valid for 60 s from minting; minting took {:.0?}, so late taps may see CODE_EXPIRED",
            minting.elapsed()
        );
    }
    let options = Options {
        target: args.target.clone(),
        path,
        total: args.total.or(if args.duration.is_none() { Some(200) } else { None }),
        duration: args.duration,
        concurrency: args.concurrency,
        connections: args.connections,
        rps: (args.rps > 0.0).then_some(args.rps),
        timeout: args.timeout,
        honor_pushback: !args.ignore_pushback,
        server_pid: args.server_pid,
        tls: match &args.tls_ca {
            Some(ca) => Some(
                crate::load::Tls::load(
                    ca,
                    args.tls_cert.as_deref().zip(args.tls_key.as_deref()),
                    &args.tls_name,
                )
                .map_err(Failure::usage)?,
            ),
            None => None,
        },
    };
    let report = runtime()?
        .block_on(run(&options, Arc::new(templates)))
        .map_err(Failure::runtime)?;
    let text = match args.format {
        Format::Summary => report.summary(),
        Format::Json => serde_json::to_string_pretty(&report).map_err(Failure::runtime)? + "\n",
    };
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(Failure::runtime),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// `ridegate load-setup` options.
#[derive(Debug, clap::Args)]
pub(super) struct LoadSetupArgs {
    /// Directory to write (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Riders in the population (each: a card, an account at each issuer, a ticket).
    #[arg(long, default_value_t = 100_000)]
    riders: u64,
    /// Seed of their health roles (`ridegate health-sim --seed` serves the same).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Runs `ridegate load-setup`.
pub(super) fn run_setup(args: LoadSetupArgs) -> Result<(), Failure> {
    if args.riders == 0 || args.riders > MAX_RIDERS {
        return Err(Failure::usage(anyhow::anyhow!("--riders: between 1 and {MAX_RIDERS}")));
    }
    let population = Population {
        riders: args.riders,
        seed: args.seed,
        mix: HealthMix::default(),
    };
    let (config, _) = write_setup(&args.out, &population).map_err(Failure::runtime)?;
    println!(
        "wrote {} riders to {}\n  serve:      ridegate serve --config {}\n  load:       ridegate load --population {} -n 100000 -c 64\n  \
         platform:   RIDEGATE_IDENTITY_SECRET=$(cat {}) ridegate health-sim --riders {} --seed {}",
        args.riders,
        args.out.display(),
        config.display(),
        args.out.display(),
        args.out.join("secret").display(),
        args.riders,
        args.seed,
    );
    Ok(())
}

/// `ridegate baseline` options.
#[derive(Debug, clap::Args)]
pub(super) struct BaselineArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50062")]
    listen: SocketAddr,
    /// Once listening, write `{"addr": "<ip:port>"}` to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// Runs `ridegate baseline`.
pub(super) fn run_baseline(args: BaselineArgs) -> Result<(), Failure> {
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))
            .map_err(Failure::runtime)?;
        let shutdown = shutdown_signal()?;
        if let Some(path) = &args.ready_file {
            let addr = listener.local_addr().map_err(Failure::runtime)?;
            write_ready_file(path, addr, None).map_err(Failure::runtime)?;
        }
        crate::baseline::serve_baseline(listener, &ServerConfig::default(), shutdown)
            .await
            .map_err(Failure::runtime)
    })
}
