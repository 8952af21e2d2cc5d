//! The command line: `ridegate serve`, `ridegate demo`, `ridegate keys`,
//! `ridegate health-sim`, the load-testing tools `ridegate load`, `load-setup` and
//! `baseline`, the transport drills `ridegate drill`, and `ridegate gate-sim`.
//!
//! Exit codes: 0 success; 1 a runtime failure (cannot bind, server error); 2 bad usage or
//! invalid configuration (the message names the field).

mod cert;
mod demo;
mod drill;
mod gate_sim;
mod health_sim;
mod keys;
mod load;
mod serve;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Exit code for a runtime failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "ridegate",
    version,
    about = "Gate authorization gateway: ride codes, cards and tickets → allow / deny / assist"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gate decisions over gRPC (embedded defaults unless configured).
    Serve(serve::ServeArgs),
    /// Start a server with a demo population and show a table of decisions.
    Demo(demo::DemoArgs),
    /// Generate issuer keys and mint signed ride codes.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Simulate the health-code platform (for demos, tests and load tests).
    HealthSim(health_sim::HealthSimArgs),
    /// Load-test a gate server with realistic taps (ghz's flags and report).
    Load(load::LoadArgs),
    /// Write a population, issuer keys and a configuration for `ridegate load`.
    LoadSetup(load::LoadSetupArgs),
    /// Serve the baseline: ridegate's contract and stack, answering a constant at once.
    Baseline(load::BaselineArgs),
    /// Transport drills: idle connections, unread calls, partial messages, with a probe.
    Drill(drill::DrillArgs),
    /// A line of offline-capable gates: follow the gate state feed, send the load
    /// tool's traffic, decide offline when ridegate does not answer.
    GateSim(gate_sim::GateSimArgs),
}

/// A failure with the exit code it should end the process with.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// Bad usage or configuration.
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: EXIT_USAGE,
            error: error.into(),
        }
    }

    /// A runtime failure.
    pub fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: EXIT_FAILURE,
            error: error.into(),
        }
    }
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Keys(command) => keys::run(command),
        Command::HealthSim(args) => health_sim::run(args),
        Command::Load(args) => load::run_load(args),
        Command::LoadSetup(args) => load::run_setup(args),
        Command::Baseline(args) => load::run_baseline(args),
        Command::Drill(args) => drill::run(args),
        Command::GateSim(args) => gate_sim::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("ridegate: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

/// A multi-threaded tokio runtime for a command.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)
}

/// A future that resolves when the process is asked to stop (SIGINT, or SIGTERM on
/// Unix). The handlers are installed by this call, not on first poll: call it before
/// announcing readiness, so a stop request that comes right after is not fatal.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static, Failure> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(Failure::runtime)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(Failure::runtime)?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Once a command listens, writes its bound address (`{"addr": "<ip:port>"}`, and
/// `"admin"` when it has an admin listener) for the scripts and tests that started it
/// on port 0; atomically (temp file, then rename).
fn write_ready_file(path: &Path, addr: SocketAddr, admin: Option<SocketAddr>) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut ready = serde_json::json!({ "addr": addr.to_string() });
    if let Some(admin) = admin {
        ready["admin"] = admin.to_string().into();
    }
    std::fs::write(&tmp, ready.to_string()).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}
