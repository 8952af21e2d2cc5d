//! Health statuses in the shared tier, behind each instance's local cache. A status is
//! stored in the compact text form of [`crate::shared::encoding`]; a newer status
//! always wins, whichever instance writes it and in whatever order.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Applied, HealthSource, SourceError};
use crate::ids::IdentityId;
use crate::shared::bulk::BulkReader;
use crate::shared::changes::Change;
use crate::shared::encoding::{decode_status, encode_status};
use crate::shared::{SharedError, SharedTier};
use ridegate_core::model::HealthStatus;

/// Stores `ARGV[1]` at `KEYS[1]` unless the status there was set later than `ARGV[2]`;
/// with `ARGV[3]` > 0, it expires after that many milliseconds.
const PUT_IF_NEWER: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  local held_at = tonumber(string.match(held, '^%a:(%d+)'))
  if held_at and held_at > tonumber(ARGV[2]) then return 0 end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
";

/// Statuses in Redis.
#[derive(Debug, Clone)]
pub struct RedisHealth {
    tier: Arc<SharedTier>,
}

impl RedisHealth {
    /// Statuses in `tier`.
    pub fn new(tier: Arc<SharedTier>) -> Self {
        Self { tier }
    }

    /// Stores `status` unless a later one is held, and announces it to every instance.
    pub async fn put(&self, identity: IdentityId, status: HealthStatus) -> Result<Applied, SharedError> {
        if !self.put_if_newer(identity, &status, 0).await? {
            return Ok(Applied::Older);
        }
        self.tier.publish(&Change::Status { identity, status }).await?;
        Ok(Applied::Stored)
    }

    /// Keeps a status the health platform gave for `ttl`, unless a later one is held,
    /// without announcing it: every instance follows the platform's change feed itself.
    pub async fn cache(&self, identity: IdentityId, status: HealthStatus, ttl: Duration) -> Result<(), SharedError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.put_if_newer(identity, &status, ttl_ms).await?;
        Ok(())
    }

    /// The statuses of `identities` as the tier holds them now, in their order.
    pub async fn read_many(
        &self,
        reader: &mut BulkReader,
        identities: &[IdentityId],
    ) -> Result<Vec<Option<HealthStatus>>, SharedError> {
        let keys: Vec<String> = identities.iter().map(|i| self.tier.key("h", i)).collect();
        let texts = reader.get_many(&keys).await?;
        Ok(texts
            .into_iter()
            .map(|t| t.as_deref().and_then(decode_status))
            .collect())
    }

    /// Stores `status` unless a later one is held, expiring after `ttl_ms` (0: never);
    /// whether it was stored.
    async fn put_if_newer(
        &self,
        identity: IdentityId,
        status: &HealthStatus,
        ttl_ms: u64,
    ) -> Result<bool, SharedError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUT_IF_NEWER)
            .arg(1)
            .arg(self.tier.key("h", identity))
            .arg(encode_status(status))
            .arg(status.set_at.0)
            .arg(ttl_ms);
        let stored: i64 = self.tier.send(&cmd, None).await?;
        Ok(stored != 0)
    }
}

impl HealthSource for RedisHealth {
    async fn fetch(&self, identity: IdentityId, deadline: Instant) -> Result<Option<HealthStatus>, SourceError> {
        let text: Option<String> = self
            .tier
            .query(redis::cmd("GET").arg(self.tier.key("h", identity)), Some(deadline))
            .await
            .map_err(|e| match e {
                SharedError::Timeout => SourceError::Timeout,
                other => SourceError::Shared(Arc::new(other)),
            })?;
        Ok(text.as_deref().and_then(decode_status))
    }
}
