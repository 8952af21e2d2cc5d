//! The health-code source: where an identity's status comes from when the cache does
//! not have it. The embedded source is a store in memory, fed from a file and updated
//! at run time; Redis holds statuses every instance shares; the remote platform client
//! asks the health-code platform itself.

mod import;
mod memory;
mod redis;
mod remote;
mod update;

use std::future::Future;
use std::sync::Arc;

pub use import::{StatusLine, read_statuses};
pub use memory::{Applied, MemoryHealth};
pub use redis::RedisHealth;
pub use remote::{InvalidPlatformUrl, RemoteHealth, RemoteSettings, RemoteStats, WatchEvent, from_wire, to_wire};
pub use update::parse_update;

use tokio::time::Instant;

use crate::ids::IdentityId;
use crate::shared::SharedError;
use ridegate_core::model::HealthStatus;

/// The source could not answer. Cloned to every tap waiting on one fetch, so it holds
/// its cause behind an `Arc`, and formats no text until it is displayed; the cause is
/// for logs, never for callers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// It did not answer in time.
    #[error("health source timed out")]
    Timeout,
    /// The platform is not being called for now: its circuit breaker is open.
    #[error("health platform circuit breaker open")]
    CircuitOpen,
    /// The platform answered with an error.
    #[error("health platform failed")]
    Platform(#[source] Arc<tonic::Status>),
    /// The platform answered with a status that cannot be used.
    #[error("health platform sent an unusable status")]
    Unusable,
    /// The shared tier could not answer.
    #[error("health statuses in the shared tier unavailable")]
    Shared(#[source] Arc<SharedError>),
    /// The fetch ended before it answered (its task was dropped).
    #[error("health fetch abandoned")]
    Abandoned,
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
