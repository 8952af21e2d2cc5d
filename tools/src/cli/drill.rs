//! `ridegate drill`: hold a server's transport resources the way a broken or hostile
//! client would, while a probe keeps tapping; report what the probe saw and the
//! server's memory. Bounded in connections, streams and time; loopback targets in tests.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{Failure, runtime};
use crate::drill::{self, Drill, Options};

/// `ridegate drill` arguments.
#[derive(Debug, Args)]
pub(super) struct DrillArgs {
    /// The drill: idle TCP connections, calls never read, or partial messages.
    #[arg(value_enum)]
    drill: Drill,
    /// The server's gate port, `host:port`.
    target: String,
    /// Connections to open.
    #[arg(short = 'c', long, default_value_t = 100)]
    connections: usize,
    /// Calls per connection (unread, partial).
    #[arg(short = 's', long, default_value_t = 1000)]
    streams: usize,
    /// The size a partial call declares.
    #[arg(long, default_value_t = 1_900_000)]
    declare_bytes: usize,
    /// The bytes of it a partial call sends.
    #[arg(long, default_value_t = 65_536)]
    send_bytes: usize,
    /// How long to hold everything open.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    hold: Duration,
    /// The server's process id, to report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the JSON report here instead of stdout.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

/// Runs `ridegate drill`.
pub(super) fn run(args: DrillArgs) -> Result<(), Failure> {
    if args.connections == 0 || args.connections > 100_000 || args.streams > 100_000 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--connections must be 1..=100000 and --streams at most 100000"
        )));
    }
    if args.hold > Duration::from_secs(3600) {
        return Err(Failure::usage(anyhow::anyhow!("--hold: at most 1h")));
    }
    let options = Options {
        drill: args.drill,
        target: args.target,
        connections: args.connections,
        streams: args.streams,
        declare_bytes: args.declare_bytes,
        send_bytes: args.send_bytes,
        hold: args.hold,
        server_pid: args.server_pid,
    };
    let report = runtime()?.block_on(drill::run(options)).map_err(Failure::runtime)?;
    let json = serde_json::to_string_pretty(&report).map_err(Failure::runtime)?;
    match args.output {
        Some(path) => std::fs::write(&path, json + "\n")
            .map_err(|e| Failure::runtime(anyhow::anyhow!("cannot write {}: {e}", path.display())))?,
        None => println!("{json}"),
    }
    Ok(())
}
