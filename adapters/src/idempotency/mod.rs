//! Idempotency records: the answer given to a request, kept for a while so a gate that
//! retries (same gate id, same request id) gets the same answer again — whichever
//! instance the retry reaches.
//!
//! One operation does both halves: the decision is made, then recorded unless an answer
//! for the request is already held, in which case that earlier answer is returned and
//! given instead. A retry costs a decision that is thrown away; a first request costs
//! one write and no read.

mod memory;
mod redis;

use std::future::Future;

pub use memory::MemoryIdempotency;
pub use redis::RedisIdempotency;

use crate::ids::RequestKey;
use crate::shared::SharedError;
use ridegate_core::model::{Answer, UnixMillis};

/// The record store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("idempotency store unavailable")]
pub struct IdempotencyError(#[from] pub SharedError);

/// Keeps answers by request.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Keeps `answer` for `request` until `until`, unless an answer is already kept: then
    /// returns that one.
    fn record(
        &self,
        request: RequestKey,
        answer: Answer,
        until: UnixMillis,
        now: UnixMillis,
    ) -> impl Future<Output = Result<Option<Answer>, IdempotencyError>> + Send;
}
