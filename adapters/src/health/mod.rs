//! The health-code source: where an identity's status comes from when the cache does
//! not have it. The embedded source is a store in memory, fed from a file and updated
//! at run time; a remote platform client implements the same contract.

mod import;
mod memory;
pub(crate) mod redis;

use std::future::Future;

pub use import::{StatusLine, read_statuses};
pub use memory::{Applied, MemoryHealth};
pub use redis::RedisHealth;

use crate::ids::IdentityId;
use crate::model::HealthStatus;

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
    /// The status of `identity`; `None` when the platform has no record of it.
    fn fetch(&self, identity: IdentityId) -> impl Future<Output = Result<Option<HealthStatus>, SourceError>> + Send;
}
