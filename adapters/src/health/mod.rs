//! The health-code source: where an identity's status comes from when the cache does
//! not have it. The embedded source is a store in memory, fed from a file and updated
//! at run time; Redis holds statuses every instance shares; the remote platform client
//! asks the health-code platform itself.

mod import;
mod memory;
pub(crate) mod redis;
mod remote;
mod update;

use std::future::Future;

pub use import::{StatusLine, read_statuses};
pub use memory::{Applied, MemoryHealth};
pub use redis::RedisHealth;
pub use remote::{RemoteHealth, RemoteSettings, RemoteStats, WatchEvent, from_wire, to_wire};
pub use update::parse_update;

use tokio::time::Instant;

use crate::ids::IdentityId;
use ridegate_core::model::HealthStatus;

/// The source could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// It did not answer in time.
    #[error("health source timed out")]
    Timeout,
    /// It answered with an error, or could not be reached.
    #[error("health source unavailable: {0}")]
    Unavailable(String),
}

/// Fetches health statuses.
pub trait HealthSource: Send + Sync + 'static {
    /// The status of `identity`, by `deadline` (a remote source tells the far end);
    /// `None` when there is no record of it.
    fn fetch(
        &self,
        identity: IdentityId,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<HealthStatus>, SourceError>> + Send;
}
