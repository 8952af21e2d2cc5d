//! The single-use guard: a ride code is accepted once, and remembered as used until it
//! expires. A gate's retry of the same request (same gate id and request id) is not a
//! replay.

mod memory;
mod redis;

use std::future::Future;

pub use memory::MemoryReplayGuard;
pub use redis::RedisReplayGuard;

use crate::ids::{CodeKey, RequestKey};
use crate::shared::SharedError;
use ridegate_core::model::UnixMillis;

/// How long past its validity a used code is remembered, by every guard. A decision
/// checks the code against the clock as it starts and claims it with that reading; were
/// the record gone the moment the code expired, a replay checked just before expiry but
/// claimed just after (a decision that waited to be run while another claim expired the
/// record, or a Redis whose clock is a little ahead) would find none and pass as a first
/// use.
pub const USED_CODE_GRACE_MS: i64 = 10_000;

/// What claiming a code found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First use: the code is now marked used by this request.
    First,
    /// Already used, by this same request: a retry.
    Retry,
    /// Already used by another request.
    Replayed,
}

/// The guard's store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("single-use store unavailable")]
pub struct ReplayError(#[from] pub SharedError);

/// Remembers used ride codes.
pub trait ReplayGuard: Send + Sync + 'static {
    /// Marks `code` as used by `request` until [`USED_CODE_GRACE_MS`] past
    /// `valid_until`, unless it already is.
    fn claim(
        &self,
        code: CodeKey,
        request: RequestKey,
        valid_until: UnixMillis,
        now: UnixMillis,
    ) -> impl Future<Output = Result<Claim, ReplayError>> + Send;
}
