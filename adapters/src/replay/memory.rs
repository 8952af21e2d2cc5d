//! The embedded single-use guard: one process's memory.

use super::{Claim, ReplayError, ReplayGuard, USED_CODE_GRACE_MS};
use crate::expiring::ExpiringMap;
use crate::ids::{CodeKey, RequestKey};
use ridegate_core::model::UnixMillis;

/// Used codes, kept in this process until they expire.
#[derive(Default)]
pub struct MemoryReplayGuard {
    used: ExpiringMap<RequestKey>,
}

impl std::fmt::Debug for MemoryReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryReplayGuard({} codes)", self.used.len())
    }
}

impl MemoryReplayGuard {
    /// The same claim as [`ReplayGuard::claim`], without the future.
    pub fn claim_now(&self, code: CodeKey, request: RequestKey, valid_until: UnixMillis, now: UnixMillis) -> Claim {
        let until = valid_until.plus_ms(USED_CODE_GRACE_MS);
        match self.used.insert_if_absent(code.0, request, until, now) {
            None => Claim::First,
            Some(owner) if owner == request => Claim::Retry,
            Some(_) => Claim::Replayed,
        }
    }
}

impl ReplayGuard for MemoryReplayGuard {
    async fn claim(
        &self,
        code: CodeKey,
        request: RequestKey,
        valid_until: UnixMillis,
        now: UnixMillis,
    ) -> Result<Claim, ReplayError> {
        Ok(self.claim_now(code, request, valid_until, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_then_retry_then_replay_then_free_after_expiry() {
        let guard = MemoryReplayGuard::default();
        let (code, gate_a, gate_b) = (CodeKey([1; 16]), RequestKey([2; 16]), RequestKey([3; 16]));
        let until = UnixMillis(1_000);
        assert_eq!(guard.claim_now(code, gate_a, until, UnixMillis(0)), Claim::First);
        assert_eq!(guard.claim_now(code, gate_a, until, UnixMillis(10)), Claim::Retry);
        assert_eq!(guard.claim_now(code, gate_b, until, UnixMillis(20)), Claim::Replayed);
        assert_eq!(guard.claim_now(code, gate_b, until, UnixMillis(999)), Claim::Replayed);
        // Remembered for the grace past its validity, then free.
        let ended = 1_000 + USED_CODE_GRACE_MS;
        assert_eq!(
            guard.claim_now(code, gate_b, until, UnixMillis(ended - 1)),
            Claim::Replayed
        );
        assert_eq!(
            guard.claim_now(code, gate_b, UnixMillis(ended + 1_000), UnixMillis(ended)),
            Claim::First
        );
    }
}
