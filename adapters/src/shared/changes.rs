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

/// A position in the change stream: an entry id, `<ms>-<seq>`, compared numerically.
/// Every instance reads the same entries at the same positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamPosition(u64, u64);

impl StreamPosition {
    /// Before any entry.
    pub const START: Self = Self(0, 0);

    fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The position just before this one.
    pub fn before(self) -> Self {
        match self {
            Self(ms, 0) => Self(ms.saturating_sub(1), u64::MAX),
            Self(ms, seq) => Self(ms, seq - 1),
        }
    }

    /// The position as one number, ordered as positions are: the entry's milliseconds
    /// above 22 bits of its sequence number (entries past the 4,194,303rd of one
    /// millisecond, far beyond what a server writes, share its number).
    pub fn as_version(self) -> u64 {
        const SEQ_BITS: u32 = 22;
        (self.0 << SEQ_BITS) | self.1.min((1 << SEQ_BITS) - 1)
    }
}

impl std::fmt::Display for StreamPosition {
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
        // "n": a mark that changes nothing (see `ChangeReader::connect`); and kinds a
        // later version may add.
        _ => None,
    }
}

/// Follows the change stream for as long as the returned task runs, calling `apply`
/// for every change (and [`Change::Reset`] after a gap). Never gives up: connection
/// failures are retried with backoff.
pub fn follow(tier: Arc<SharedTier>, apply: impl Fn(Change) + Send + Sync + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = ChangeReader::new(tier);
        let mut backoff = Duration::from_millis(100);
        loop {
            match reader.next().await {
                Ok(changes) => {
                    backoff = Duration::from_millis(100);
                    changes.into_iter().for_each(|(_, change)| apply(change));
                }
                Err(e) => {
                    tracing::debug!(error = &e as &dyn std::error::Error, "change stream: reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    })
}

/// Reads the change stream in order on a connection of its own, from the newest entry
/// at its first connection on (or from the oldest one kept). After each read, and when
/// it reconnects after a break, it checks that nothing after its position was lost —
/// entries trimmed before it read them (it fell too far behind), the stream gone or
/// older than what it read (Redis restarted empty, or from an older file) — and if so
/// returns [`Change::Reset`] and goes on from the oldest entry kept.
pub struct ChangeReader {
    tier: Arc<SharedTier>,
    key: String,
    last: Option<StreamPosition>,
    /// Whether `last` stands in a stream that existed (so a missing stream means its
    /// entries were lost).
    anchored: bool,
    connection: Option<super::Connection>,
    from_oldest: bool,
}

impl ChangeReader {
    /// A reader of `tier`'s stream; nothing is read until [`connect`](Self::connect) or
    /// [`next`](Self::next).
    pub fn new(tier: Arc<SharedTier>) -> Self {
        let key = tier.changes_key();
        Self {
            tier,
            key,
            last: None,
            anchored: false,
            connection: None,
            from_oldest: false,
        }
    }

    /// A reader that starts with the oldest entry the stream keeps: it replays what
    /// the stream still holds.
    pub fn from_oldest(tier: Arc<SharedTier>) -> Self {
        Self {
            from_oldest: true,
            ..Self::new(tier)
        }
    }

    /// The position of the last entry returned; at first, where the reader started (the
    /// newest entry, or just before the oldest); `None` before it connected.
    pub fn position(&self) -> Option<StreamPosition> {
        self.last
    }

    /// Connects and positions the reader, unless it is connected; a gap found while
    /// positioning comes back as [`Change::Reset`]. Reading from the oldest entry of an
    /// empty stream, it first appends a mark that changes nothing, so that its position
    /// comes from the stream's own clock.
    pub async fn connect(&mut self) -> Result<Option<(StreamPosition, Change)>, SharedError> {
        if self.connection.is_some() {
            return Ok(None);
        }
        let mut connection = self.tier.dedicated(Duration::from_secs(5))?;
        let reset = match self.last {
            Some(seen) => self.lost_after(&mut connection, seen).await?,
            None if self.from_oldest => {
                let oldest = match self.edge(&mut connection, "XRANGE", "-", "+").await? {
                    Some(oldest) => oldest,
                    None => self.mark(&mut connection).await?,
                };
                self.last = Some(oldest.before());
                self.anchored = true;
                None
            }
            None => {
                let newest = self.edge(&mut connection, "XREVRANGE", "+", "-").await?;
                self.anchored = newest.is_some();
                self.last = Some(newest.unwrap_or(StreamPosition::START));
                None
            }
        };
        self.connection = Some(connection);
        Ok(reset)
    }

    /// The next changes in order, waiting up to a second for some (an empty batch when
    /// none came). On an error the connection is dropped; the next call reconnects.
    pub async fn next(&mut self) -> Result<Vec<(StreamPosition, Change)>, SharedError> {
        if let Some(reset) = self.connect().await? {
            return Ok(vec![reset]);
        }
        let from = self.last.unwrap_or(StreamPosition::START);
        let Some(mut connection) = self.connection.take() else {
            return Ok(Vec::new());
        };
        let read: Result<Option<StreamReadReply>, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(from.to_string())
            .query_async(&mut connection)
            .await;
        let reply = read.map_err(SharedError::Connection)?;
        // Entries after `from` trimmed before they were read: whatever came is not
        // all there was.
        if let Some(reset) = self.lost_after(&mut connection, from).await? {
            self.connection = Some(connection);
            return Ok(vec![reset]);
        }
        self.connection = Some(connection);
        let mut changes = Vec::new();
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            let Some(position) = StreamPosition::parse(&entry.id) else {
                continue;
            };
            self.last = Some(position);
            self.anchored = true;
            if let Some(change) = parse_entry(&entry.map) {
                changes.push((position, change));
            }
        }
        Ok(changes)
    }

    /// Whether an entry after `seen` may have been lost, and if so the reset, with the
    /// reader moved to just before the oldest entry kept. Lost: the stream is gone
    /// (having been there); it never reached `seen` (restored from an older file);
    /// entries were added after `seen` and the oldest kept is not the next one. A
    /// reader not yet anchored (it found no stream and has read nothing) has nothing
    /// to lose track of.
    async fn lost_after(
        &mut self,
        connection: &mut super::Connection,
        seen: StreamPosition,
    ) -> Result<Option<(StreamPosition, Change)>, SharedError> {
        if !self.anchored {
            return Ok(None);
        }
        let exists: bool = redis::cmd("EXISTS")
            .arg(&self.key)
            .query_async(connection)
            .await
            .map_err(SharedError::Connection)?;
        let lost = if exists {
            let info: redis::Value = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&self.key)
                .query_async(connection)
                .await
                .map_err(SharedError::Connection)?;
            let last_added = info_id(&info, "last-generated-id").unwrap_or(StreamPosition::START);
            match info_id(&info, "first-entry") {
                _ if last_added < seen => true,
                _ if last_added == seen => false,
                Some(oldest) => oldest.before() > seen,
                None => true,
            }
        } else {
            true
        };
        if !lost {
            return Ok(None);
        }
        tracing::warn!("change stream: changes may have been missed; clearing local caches");
        let oldest = self.edge(connection, "XRANGE", "-", "+").await?;
        let position = oldest.map_or(StreamPosition::START, StreamPosition::before);
        self.last = Some(position);
        self.anchored = oldest.is_some();
        Ok(Some((position, Change::Reset)))
    }

    /// Appends a mark that changes nothing; its position.
    async fn mark(&self, connection: &mut super::Connection) -> Result<StreamPosition, SharedError> {
        let id: String = redis::cmd("XADD")
            .arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.tier.settings().changes_max_len)
            .arg("*")
            .arg("k")
            .arg("n")
            .query_async(connection)
            .await
            .map_err(SharedError::Connection)?;
        StreamPosition::parse(&id).ok_or_else(|| {
            SharedError::Rejected(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "XADD returned no entry id",
            )))
        })
    }

    /// The first entry's position in `command`'s order (`XRANGE`: the oldest,
    /// `XREVRANGE`: the newest).
    async fn edge(
        &self,
        connection: &mut super::Connection,
        command: &str,
        from: &str,
        to: &str,
    ) -> Result<Option<StreamPosition>, SharedError> {
        let edge: Vec<(String, Vec<(String, String)>)> = redis::cmd(command)
            .arg(&self.key)
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(1)
            .query_async(connection)
            .await
            .map_err(SharedError::Connection)?;
        Ok(edge.first().and_then(|(id, _)| StreamPosition::parse(id)))
    }
}

/// An entry id among `XINFO STREAM`'s fields (for `first-entry`, the entry's id).
fn info_id(info: &redis::Value, name: &str) -> Option<StreamPosition> {
    let fields: Vec<redis::Value> = match info {
        redis::Value::Array(fields) => fields.clone(),
        redis::Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
        _ => return None,
    };
    let value = fields
        .chunks(2)
        .find(|pair| redis::from_redis_value_ref::<String>(&pair[0]).is_ok_and(|key| key == name))
        .and_then(|pair| pair.get(1))?;
    let id = match value {
        redis::Value::Array(entry) => entry.first()?,
        id => id,
    };
    StreamPosition::parse(&redis::from_redis_value_ref::<String>(id).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_from_xinfo_fields() {
        let text = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let info = redis::Value::Array(vec![
            text("length"),
            redis::Value::Int(2),
            text("last-generated-id"),
            text("5-1"),
            text("first-entry"),
            redis::Value::Array(vec![text("6-0"), redis::Value::Array(vec![text("k"), text("n")])]),
        ]);
        assert_eq!(info_id(&info, "last-generated-id"), Some(StreamPosition(5, 1)));
        assert_eq!(info_id(&info, "first-entry"), Some(StreamPosition(6, 0)));
        assert_eq!(info_id(&info, "max-deleted-entry-id"), None);
        assert_eq!(info_id(&redis::Value::Nil, "length"), None);
    }

    #[test]
    fn positions_order_numerically_and_as_versions() {
        let parse = |id| StreamPosition::parse(id).unwrap();
        let ordered = [
            parse("1700000000000-9"),
            parse("1700000000000-10"),
            parse("1700000000001-0"),
        ];
        assert!(ordered.windows(2).all(|w| w[0] < w[1]));
        assert!(ordered.windows(2).all(|w| w[0].as_version() < w[1].as_version()));
        assert_eq!(StreamPosition::parse("bad"), None);
        assert_eq!(StreamPosition(5, 6).to_string(), "5-6");
        assert_eq!(StreamPosition::START.as_version(), 0);
        for position in ordered {
            assert!(position.before() < position);
            assert!(position.before().as_version() < position.as_version());
        }
        assert_eq!(parse("7-0").before(), StreamPosition(6, u64::MAX));
    }
}
