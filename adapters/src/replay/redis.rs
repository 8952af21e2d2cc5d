//! The single-use guard in the shared tier: `SET <code key> <request key> NX PXAT
//! <valid until + grace> GET`. The first claim stores the request that used the code; a later
//! claim gets that request back and is a retry if it is the same one, a replay if not.

use std::sync::Arc;

use super::{Claim, ReplayError, ReplayGuard, USED_CODE_GRACE_MS};
use crate::ids::{CodeKey, RequestKey};
use crate::shared::SharedTier;
use ridegate_core::model::UnixMillis;

/// Used codes kept in Redis until they expire.
#[derive(Debug, Clone)]
pub struct RedisReplayGuard {
    tier: Arc<SharedTier>,
}

impl RedisReplayGuard {
    /// A guard over `tier`.
    pub fn new(tier: Arc<SharedTier>) -> Self {
        Self { tier }
    }
}

impl ReplayGuard for RedisReplayGuard {
    async fn claim(
        &self,
        code: CodeKey,
        request: RequestKey,
        valid_until: UnixMillis,
        _now: UnixMillis,
    ) -> Result<Claim, ReplayError> {
        let owner = request.to_string();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.tier.key("c", code))
            .arg(&owner)
            .arg("NX")
            .arg("PXAT")
            .arg(valid_until.plus_ms(USED_CODE_GRACE_MS).0)
            .arg("GET");
        let earlier: Option<String> = self.tier.query(&cmd, None).await?;
        Ok(match earlier {
            None => Claim::First,
            Some(earlier) if earlier == owner => Claim::Retry,
            Some(_) => Claim::Replayed,
        })
    }
}
