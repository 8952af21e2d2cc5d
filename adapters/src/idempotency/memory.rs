//! The embedded idempotency store: one process's memory.

use super::{IdempotencyError, IdempotencyStore, Kept};
use crate::expiring::ExpiringMap;
use crate::ids::{RequestKey, TapFingerprint};
use ridegate_core::model::UnixMillis;

/// Answers kept in this process until they expire.
#[derive(Default)]
pub struct MemoryIdempotency {
    answers: ExpiringMap<Kept>,
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
    #[cfg(test)]
    pub fn holds(&self, request: RequestKey, now: UnixMillis) -> bool {
        self.answers.get(&request.0, now).is_some()
    }
}

/// The tap this process first saw under each request id, kept until it expires: enough
/// to notice a request id reused for another tap, at half the memory of a kept answer.
#[derive(Default)]
pub struct RequestIds {
    taps: ExpiringMap<TapFingerprint>,
}

impl std::fmt::Debug for RequestIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RequestIds({} held)", self.taps.len())
    }
}

impl RequestIds {
    /// Notes `tap` under `request` until `until`, unless a tap is already held for it:
    /// then returns that one.
    pub fn note(
        &self,
        request: RequestKey,
        tap: TapFingerprint,
        until: UnixMillis,
        now: UnixMillis,
    ) -> Option<TapFingerprint> {
        self.taps.insert_if_absent(request.0, tap, until, now)
    }

    /// Whether a tap is held for `request`.
    pub fn holds(&self, request: RequestKey, now: UnixMillis) -> bool {
        self.taps.get(&request.0, now).is_some()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_keeps_the_first_tap_until_it_expires() {
        let ids = RequestIds::default();
        let (request, first, other) = (RequestKey([1; 16]), TapFingerprint([1; 8]), TapFingerprint([2; 8]));
        assert_eq!(ids.note(request, first, UnixMillis(100), UnixMillis(0)), None);
        assert_eq!(ids.note(request, other, UnixMillis(200), UnixMillis(50)), Some(first));
        assert!(ids.holds(request, UnixMillis(99)));
        assert!(!ids.holds(request, UnixMillis(100)));
        assert_eq!(ids.note(request, other, UnixMillis(200), UnixMillis(100)), None);
        assert!(!ids.holds(RequestKey([2; 16]), UnixMillis(0)));
    }
}
