//! `ridegate health-sim`: runs the health-code platform simulator
//! ([`crate::healthsim`]).

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ridegate::config::LogConfig;
use ridegate_adapters::ids::{MIN_SECRET_BYTES, Pseudonymizer};
use ridegate_core::clock::Clock;
use ridegate_proto::pb::health_platform_server::HealthPlatformServer;
use ridegate_proto::pb::health_simulator_server::HealthSimulatorServer;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::{Failure, runtime, shutdown_signal, write_ready_file};
use crate::healthsim::{Faults, SimService, Simulator};
use crate::population::{HealthMix, MAX_RIDERS, Population};

/// The address `ridegate health-sim` listens on by default.
const DEFAULT_SIM_LISTEN: &str = "127.0.0.1:50071";

/// Where the control API listens when `--listen` is not loopback and no
/// `--control-listen` is given.
const DEFAULT_CONTROL_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50072);

/// Where the control API listens: `control` if given; else beside the platform API when
/// that is on loopback (None); else [`DEFAULT_CONTROL_LISTEN`].
fn control_listen(listen: SocketAddr, control: Option<SocketAddr>) -> Option<SocketAddr> {
    match control {
        Some(addr) => Some(addr),
        None if listen.ip().is_loopback() => None,
        None => Some(DEFAULT_CONTROL_LISTEN),
    }
}

/// `ridegate health-sim` options.
#[derive(Debug, clap::Args)]
pub(super) struct HealthSimArgs {
    /// Address to listen on (the platform API).
    #[arg(long, default_value = DEFAULT_SIM_LISTEN)]
    listen: SocketAddr,
    /// Address of the control API (`ridegate.v1.HealthSimulator`: faults, statuses).
    /// Default: the `--listen` port when that is loopback, else 127.0.0.1:50072 — the
    /// control API is never exposed beyond this machine unless asked.
    #[arg(long)]
    control_listen: Option<SocketAddr>,
    /// Serve the platform API over TLS with this certificate chain (PEM), as a real
    /// platform does.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key for `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The pseudonym secret shared with ridegate (at least 16 bytes).
    #[arg(long, env = "RIDEGATE_IDENTITY_SECRET", hide_env_values = true)]
    secret: String,
    /// JSON-lines statuses file (the format of ridegate's `health.file`).
    #[arg(long, conflicts_with = "riders")]
    statuses: Option<PathBuf>,
    /// Generate this many riders (numbered from 0, as `ridegate load` numbers them).
    #[arg(long)]
    riders: Option<u64>,
    /// Seed of the generated population's health codes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of generated riders with a yellow code.
    #[arg(long, default_value_t = HealthMix::default().yellow)]
    yellow: f64,
    /// Share of generated riders with a red code.
    #[arg(long, default_value_t = HealthMix::default().red)]
    red: f64,
    /// Share of generated riders that are green but untested.
    #[arg(long, default_value_t = HealthMix::default().untested)]
    untested: f64,
    /// Share of generated riders the platform has no record of.
    #[arg(long, default_value_t = HealthMix::default().no_record)]
    no_record: f64,
    /// Latency added to every call, e.g. `5ms`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0ms")]
    latency: Duration,
    /// Latency of the slow tail, e.g. `300ms`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0ms")]
    tail_latency: Duration,
    /// Share of calls in the slow tail (0–1).
    #[arg(long, default_value_t = 0.0)]
    tail_fraction: f64,
    /// Share of calls answered UNAVAILABLE (0–1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Start down (every call fails until faults are changed at run time).
    #[arg(long)]
    down: bool,
    /// Changes kept for subscribers that resume.
    #[arg(long, default_value_t = 100_000)]
    change_log: usize,
    /// Once listening, write `{"addr": "<ip:port>"}` to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Log filter.
    #[arg(long, env = "RIDEGATE_LOG", default_value = "info")]
    log: String,
}

impl HealthSimArgs {
    fn faults(&self) -> Result<Faults, Failure> {
        for (name, share) in [
            ("--tail-fraction", self.tail_fraction),
            ("--error-rate", self.error_rate),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(Failure::usage(anyhow::anyhow!("{name}: must be between 0 and 1")));
            }
        }
        Ok(Faults {
            latency: self.latency,
            tail_latency: self.tail_latency,
            tail_fraction: self.tail_fraction,
            error_rate: self.error_rate,
            down: self.down,
        })
    }
}

/// Runs `ridegate health-sim`.
pub(super) fn run(args: HealthSimArgs) -> Result<(), Failure> {
    ridegate::telemetry::init(&LogConfig {
        filter: args.log.clone(),
        ..LogConfig::default()
    })
    .map_err(Failure::usage)?;
    if args.secret.len() < MIN_SECRET_BYTES {
        return Err(Failure::usage(anyhow::anyhow!(
            "--secret (or RIDEGATE_IDENTITY_SECRET): must be at least {MIN_SECRET_BYTES} bytes"
        )));
    }
    let pseudonymizer = Pseudonymizer::new(args.secret.as_bytes()).map_err(Failure::usage)?;
    let faults = args.faults()?;
    let sim = Arc::new(Simulator::new(pseudonymizer, Clock::System, faults, args.change_log));
    match (&args.statuses, args.riders) {
        (Some(path), _) => {
            let file = File::open(path)
                .with_context(|| format!("--statuses: cannot open {}", path.display()))
                .map_err(Failure::usage)?;
            let report = sim
                .load_file(BufReader::with_capacity(1 << 20, file))
                .with_context(|| format!("--statuses: cannot read {}", path.display()))
                .map_err(Failure::usage)?;
            tracing::info!(
                imported = report.imported,
                rejected = report.rejected,
                "statuses loaded"
            );
            for rejection in &report.first_rejections {
                tracing::warn!(line = rejection.line, reason = %rejection.reason, "statuses: line rejected");
            }
        }
        (None, Some(riders)) => {
            if riders > MAX_RIDERS {
                return Err(Failure::usage(anyhow::anyhow!("--riders: at most {MAX_RIDERS}")));
            }
            let mix = HealthMix {
                yellow: args.yellow,
                red: args.red,
                untested: args.untested,
                no_record: args.no_record,
            };
            mix.validate().map_err(|e| Failure::usage(anyhow::anyhow!(e)))?;
            sim.load_population(&Population {
                riders,
                seed: args.seed,
                mix,
            });
            tracing::info!(riders, statuses = sim.len(), seed = args.seed, "population generated");
        }
        (None, None) => tracing::info!("no population: statuses are added with SetStatus"),
    }
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))
            .map_err(Failure::runtime)?;
        let addr = listener.local_addr().map_err(Failure::runtime)?;
        let control = match control_listen(args.listen, args.control_listen) {
            Some(at) => Some(
                tokio::net::TcpListener::bind(at)
                    .await
                    .with_context(|| format!("cannot listen on {at} (--control-listen)"))
                    .map_err(Failure::runtime)?,
            ),
            None => None,
        };
        let control_addr = match &control {
            Some(listener) => listener.local_addr().map_err(Failure::runtime)?,
            None => addr,
        };
        let shutdown = shutdown_signal()?;
        if let Some(path) = &args.ready_file {
            write_ready_file(path, addr, None).map_err(Failure::runtime)?;
        }
        tracing::info!(%addr, control = %control_addr, ?faults, "health platform simulator serving");
        let service = SimService(sim);
        // On a stop request the server stops accepting; calls in flight get a short
        // grace, and open `WatchChanges` streams (which never end by themselves) are
        // closed when it expires.
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let mut builder = Server::builder();
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            let read = |path: &PathBuf| {
                std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))
                    .map_err(Failure::usage)
            };
            let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .context("--tls-cert, --tls-key")
                .map_err(Failure::usage)?;
        }
        let mut platform = builder.add_service(HealthPlatformServer::new(service.clone()));
        let control_task = match control {
            // The control API on a listener of its own.
            Some(listener) => Some(tokio::spawn(
                Server::builder()
                    .add_service(HealthSimulatorServer::new(service))
                    .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
            )),
            None => {
                platform = platform.add_service(HealthSimulatorServer::new(service));
                None
            }
        };
        let server =
            platform.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
                shutdown.await;
                let _ = stopping_tx.send(());
            });
        let grace_expired = async {
            match stopping_rx.await {
                Ok(()) => tokio::time::sleep(STOP_GRACE).await,
                Err(_) => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            result = server => result.context("simulator server failed").map_err(Failure::runtime),
            () = grace_expired => Ok(()),
        };
        if let Some(task) = control_task {
            task.abort();
        }
        outcome
    })
}

/// How long calls in flight may take to finish once the simulator is asked to stop.
const STOP_GRACE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_api_stays_on_loopback_unless_asked() {
        let loopback: SocketAddr = "127.0.0.1:50071".parse().unwrap();
        let everywhere: SocketAddr = "0.0.0.0:50071".parse().unwrap();
        let chosen: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        assert_eq!(control_listen(loopback, None), None, "beside a loopback platform API");
        assert_eq!(control_listen(everywhere, None), Some(DEFAULT_CONTROL_LISTEN));
        assert_eq!(control_listen(everywhere, Some(chosen)), Some(chosen));
    }
}
