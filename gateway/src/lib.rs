//! ridegate: a low-latency gRPC gateway between fare gates and ride-code, card and
//! health-code back ends. A gate presents what a rider showed it; ridegate resolves it
//! to a linked identity, checks the identity's cached health-code status, and answers
//! allow / deny / assist within the gate's timing budget.
//!
//! This is the server library. The `ridegate` command line (package `ridegate-tools`)
//! parses arguments and calls [`run`] for `ridegate serve`; its demo calls it too.

#![forbid(unsafe_code)]

pub mod app;
pub mod authorize;
pub mod brake;
pub mod cache;
pub mod config;
pub mod gate_state;
pub mod import;
pub mod linking;
pub mod metrics;
pub mod reload;
pub mod serve;
pub mod stores;
pub mod telemetry;

use std::future::Future;

pub use app::App;
use ridegate_core::clock::Clock;
pub use serve::serve;
use tokio::net::TcpListener;

/// Builds ridegate from `config` and serves it on `listener` until `shutdown`, without
/// the admin endpoints (the demo's way; `ridegate serve` binds an admin listener too).
pub async fn run(
    config: config::Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve(App::build(config, Clock::System).await?, listener, None, shutdown).await
}
