//! The change stream: how a status pushed, or a credential linked or unlinked, through
//! one instance reaches every instance's local caches.
//!
//! Changes are appended to one Redis Stream (`<prefix>:changes`, trimmed to about
//! `changes_max_len` entries). Each instance follows it with a blocking read on a
//! connection of its own, so a change arrives within milliseconds. After a break the
//! reader resumes from the last entry it applied; if entries it had not seen were
//! trimmed meanwhile, or the stream vanished (Redis restarted empty), it cannot know
//! what changed and tells its caches to forget everything ([`Change::Reset`]) rather than
//! serve stale entries.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::StreamReadReply;

use super::encoding::{decode_status, encode_status};
use super::{SharedError, SharedTier};
use crate::ids::{CredentialId, IdentityId};
use ridegate_core::model::HealthStatus;

/// A change another instance must apply to its caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// An identity's status changed.
    Status {
        /// Whose.
        identity: IdentityId,
        /// The new status.
        status: HealthStatus,
    },
    /// A credential was linked, relinked or unlinked.
    Link {
        /// Which.
        credential: CredentialId,
    },
    /// Changes may have been missed: forget every cached entry.
    Reset,
}

/// A stream entry id, `<ms>-<seq>`, compared numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntryId(u64, u64);

impl EntryId {
    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

impl SharedTier {
    fn changes_key(&self) -> String {
        format!("{}:changes", self.settings().prefix)
    }

    /// Appends `change` to the stream.
    pub async fn publish(&self, change: &Change) -> Result<(), SharedError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.changes_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.settings().changes_max_len)
            .arg("*");
        match change {
            Change::Status { identity, status } => {
                cmd.arg("k")
                    .arg("s")
                    .arg("i")
                    .arg(identity.to_string())
                    .arg("v")
                    .arg(encode_status(status));
            }
            Change::Link { credential } => {
                cmd.arg("k").arg("l").arg("i").arg(credential.to_string());
            }
            Change::Reset => {
                cmd.arg("k").arg("r");
            }
        }
        self.query::<String>(&cmd, None).await.map(drop)
    }
}

fn parse_entry(fields: &std::collections::HashMap<String, redis::Value>) -> Option<Change> {
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
    };
    match text("k")?.as_str() {
        "s" => Some(Change::Status {
            identity: text("i")?.parse().ok()?,
            status: decode_status(&text("v")?)?,
        }),
        "l" => Some(Change::Link {
            credential: text("i")?.parse().ok()?,
        }),
        "r" => Some(Change::Reset),
        _ => None,
    }
}

/// Follows the change stream for as long as the returned task runs, calling `apply`
/// for every change (and [`Change::Reset`] after a gap). Never gives up: connection
/// failures are retried with backoff.
pub fn follow(tier: Arc<SharedTier>, apply: impl Fn(Change) + Send + Sync + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let key = tier.changes_key();
        let mut last: Option<EntryId> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            match read_from(&tier, &key, &mut last, &apply).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::debug!(error = &e as &dyn std::error::Error, "change stream: reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    })
}

/// One connection's worth of reading: positions (or checks for a gap), then blocks on
/// new entries until the connection fails.
async fn read_from(
    tier: &SharedTier,
    key: &str,
    last: &mut Option<EntryId>,
    apply: &impl Fn(Change),
) -> Result<(), SharedError> {
    let mut connection = tier.dedicated(Duration::from_secs(5))?;
    let oldest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut connection)
        .await
        .map_err(SharedError::Connection)?;
    let oldest = oldest.first().and_then(|(id, _)| EntryId::parse(id));
    match (*last, oldest) {
        // First start: caches are empty, follow from the newest entry on.
        (None, _) => {
            let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut connection)
                .await
                .map_err(SharedError::Connection)?;
            *last = Some(
                newest
                    .first()
                    .and_then(|(id, _)| EntryId::parse(id))
                    .unwrap_or(EntryId(0, 0)),
            );
        }
        // Resuming, and what we last saw is still there (or nothing was ever written).
        (Some(seen), Some(oldest)) if oldest <= seen => {}
        (Some(EntryId(0, 0)), None) => {}
        // Resuming after entries we had not seen were trimmed, or the stream vanished.
        (Some(_), _) => {
            tracing::warn!("change stream: changes may have been missed; clearing local caches");
            apply(Change::Reset);
            *last = oldest
                .map(|EntryId(ms, seq)| EntryId(ms, seq.saturating_sub(1)))
                .or(Some(EntryId(0, 0)));
        }
    }
    loop {
        let from = last.map_or_else(|| "0-0".to_owned(), |id| id.to_string());
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(key)
            .arg(from)
            .query_async(&mut connection)
            .await
            .map_err(SharedError::Connection)?;
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            if let Some(change) = parse_entry(&entry.map) {
                apply(change);
            }
            *last = EntryId::parse(&entry.id).or(*last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_numerically() {
        assert!(EntryId::parse("1700000000000-10").unwrap() > EntryId::parse("1700000000000-9").unwrap());
        assert!(EntryId::parse("1700000000001-0").unwrap() > EntryId::parse("1700000000000-99").unwrap());
        assert_eq!(EntryId::parse("bad"), None);
        assert_eq!(EntryId(5, 6).to_string(), "5-6");
    }
}
