//! `ridegate demo` (placeholder while the server is assembled).

use super::Failure;

/// Demo options.
#[derive(Debug, clap::Args)]
pub(super) struct DemoArgs {}

/// Runs the demo.
pub(super) fn run(_args: DemoArgs) -> Result<(), Failure> {
    Ok(())
}
