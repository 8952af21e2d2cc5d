//! The embedded idempotency store: one process's memory.

use super::{IdempotencyError, IdempotencyStore, Kept};
use crate::expiring::ExpiringMap;
use crate::ids::RequestKey;
use ridegate_core::model::UnixMillis;

/// Answers kept in this process until they expire.
pub struct MemoryIdempotency {
    answers: ExpiringMap<Kept>,
}

impl Default for MemoryIdempotency {
    fn default() -> Self {
        Self {
            answers: ExpiringMap::new(),
        }
    }
}

impl std::fmt::Debug for MemoryIdempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryIdempotency({} answers)", self.answers.len())
    }
}

impl MemoryIdempotency {
    /// [`IdempotencyStore::record`] without the future.
    pub fn record_now(&self, request: RequestKey, kept: Kept, until: UnixMillis, now: UnixMillis) -> Option<Kept> {
        self.answers.insert_if_absent(request.0, kept, until, now)
    }

    /// Whether an answer is kept for `request`.
    pub fn holds(&self, request: RequestKey, now: UnixMillis) -> bool {
        self.answers.get(&request.0, now).is_some()
    }
}

impl IdempotencyStore for MemoryIdempotency {
    async fn record(
        &self,
        request: RequestKey,
        kept: Kept,
        until: UnixMillis,
        now: UnixMillis,
    ) -> Result<Option<Kept>, IdempotencyError> {
        Ok(self.record_now(request, kept, until, now))
    }
}
