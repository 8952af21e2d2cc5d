//! Idempotency records in the shared tier: `SET <key> <answer> NX PXAT <until> GET` —
//! one round trip that either records the answer or returns the one recorded before.

use std::sync::Arc;

use super::{IdempotencyError, IdempotencyStore, Kept};
use crate::ids::RequestKey;
use crate::shared::SharedTier;
use ridegate_core::model::UnixMillis;

/// Answers kept in Redis.
#[derive(Debug, Clone)]
pub struct RedisIdempotency {
    tier: Arc<SharedTier>,
}

impl RedisIdempotency {
    /// Records in `tier`.
    pub fn new(tier: Arc<SharedTier>) -> Self {
        Self { tier }
    }
}

impl IdempotencyStore for RedisIdempotency {
    async fn record(
        &self,
        request: RequestKey,
        kept: Kept,
        until: UnixMillis,
        _now: UnixMillis,
    ) -> Result<Option<Kept>, IdempotencyError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.tier.key("r", request))
            .arg(kept.to_bytes().as_slice())
            .arg("NX")
            .arg("PXAT")
            .arg(until.0)
            .arg("GET");
        let earlier: Option<Vec<u8>> = self.tier.query(&cmd, None).await?;
        Ok(earlier.as_deref().and_then(Kept::from_bytes))
    }
}
