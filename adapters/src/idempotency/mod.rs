//! Idempotency records: the answer given to a request, kept for a while so a gate that
//! retries (same gate id, same request id) gets the same answer again.

mod memory;

use std::future::Future;

pub use memory::MemoryIdempotency;

use crate::ids::RequestKey;
use crate::model::{Answer, UnixMillis};

/// The record store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("idempotency store unavailable: {0}")]
pub struct IdempotencyError(pub String);

/// Keeps answers by request.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// The answer given to `request`, if it is still kept.
    fn get(
        &self,
        request: RequestKey,
        now: UnixMillis,
    ) -> impl Future<Output = Result<Option<Answer>, IdempotencyError>> + Send;

    /// Keeps `answer` for `request` until `until`.
    fn put(
        &self,
        request: RequestKey,
        answer: Answer,
        until: UnixMillis,
        now: UnixMillis,
    ) -> impl Future<Output = Result<(), IdempotencyError>> + Send;
}
