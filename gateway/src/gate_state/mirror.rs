//! The feed on the shared tier: a copy of every link in Redis and of its identity's
//! status, loaded at start and kept current by the change stream.
//!
//! The copy is taken after the oldest entry the stream keeps is read; then every entry
//! the stream holds is applied to it again and recorded at its own position (the
//! state now is read for each, so replaying is harmless). Positions are the same on
//! every instance, so a gate that followed one instance — or this one before a restart
//! — resumes here by deltas while the stream still holds its version; the epoch comes
//! from the shared tier's epoch marker. A link change is read back from Redis (the
//! stream names only the credential), with its identity's status.
//!
//! The copy is live — followers get heartbeats — only while Redis is up and the last
//! read of the stream caught up with it; otherwise their state ages, as it would
//! offline. After a gap in the stream (entries trimmed before they were read, Redis
//! restarted empty or from an older file) the copy is loaded again, once the tier is
//! trusted, and followers from before it take a snapshot.

use std::sync::Arc;
use std::time::Duration;

use ridegate_adapters::health::{MemoryHealth, RedisHealth};
use ridegate_adapters::ids::{CredentialId, IdentityId};
use ridegate_adapters::link::{MemoryLinks, RedisLinks, SecondCard};
use ridegate_adapters::shared::bulk::BulkReader;
use ridegate_adapters::shared::changes::{Change as Shared, ChangeReader, StreamPosition};
use ridegate_adapters::shared::{SharedError, SharedTier};

use super::{Change, GateStateFeed, Stores};

/// How often the tier is checked while it cannot be trusted.
const UNTRUSTED_POLL: Duration = Duration::from_millis(200);
/// Longest wait between attempts after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Entries one read of the stream returns at most: a full read means more wait.
const READ_BATCH: usize = 1000;

/// What the copy is read from.
pub struct Source {
    /// The shared tier.
    pub tier: Arc<SharedTier>,
    /// Its links.
    pub links: Arc<RedisLinks>,
    /// Its statuses.
    pub health: RedisHealth,
    /// The second-card rule the copy's link store is made with (never applied: the
    /// copy takes what Redis holds).
    pub second_card: SecondCard,
}

/// Keeps `feed` a copy of `source` for as long as the returned task runs.
pub fn spawn(feed: Arc<GateStateFeed>, source: Source) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Err(e) = copy_and_follow(&feed, &source).await;
            feed.set_live(false);
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                "gate state: the copy of the shared tier is loaded again (gates that followed it take a snapshot)"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

/// Why a copy stopped being followed.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error("reading the shared tier failed")]
    Shared(#[from] SharedError),
    #[error("changes may have been missed (the stream was trimmed past this copy, or Redis restarted)")]
    Gap,
    #[error("Redis went down, or lost its data, while the copy was loaded")]
    Untrusted,
}

/// Whether the tier can be trusted now: probed (its epoch marker read) and trusted.
/// Not the last probe's word: the copy's own connections may see a restarted Redis
/// before the prober does.
async fn trusted(tier: &SharedTier) -> bool {
    tier.probe().await && tier.is_trusted()
}

/// Loads a copy once the tier is trusted and follows the stream until a gap.
async fn copy_and_follow(feed: &Arc<GateStateFeed>, source: &Source) -> Result<std::convert::Infallible, Stopped> {
    while !trusted(&source.tier).await {
        tokio::time::sleep(UNTRUSTED_POLL).await;
    }
    let epoch = source
        .tier
        .epoch()
        .map(|marker| super::mix(FNV_OFFSET, marker.as_bytes()))
        .ok_or(SharedError::Down)?;
    let mut reader = ChangeReader::from_oldest(source.tier.clone());
    if reader.connect().await?.is_some() {
        return Err(Stopped::Gap);
    }
    let start = reader.position().unwrap_or(StreamPosition::START);
    let started = std::time::Instant::now();
    let stores = load(source).await?;
    // A Redis that restarted empty meanwhile would have given an empty copy.
    if !trusted(&source.tier).await {
        return Err(Stopped::Untrusted);
    }
    // Entries trimmed before they are read (the walk outlasted the stream's
    // retention) are a gap the reader reports at its first read: loaded again.
    tracing::info!(
        links = stores.links.len(),
        statuses = stores.health.len(),
        seconds = started.elapsed().as_secs_f64(),
        "gate state: loaded a copy of the shared tier"
    );
    // A snapshot being walked holds the feed's lock: wait for it off the workers.
    let (reloaded, copy) = (feed.clone(), stores.clone());
    tokio::task::spawn_blocking(move || reloaded.reload(copy, epoch, start.as_version()))
        .await
        .map_err(|_| Stopped::Gap)?;
    // One bulk connection for reading back what the stream names.
    let mut bulk = source.links.bulk_reader().await?;
    let mut backoff = Duration::from_millis(100);
    loop {
        let changes = match reader.next().await {
            Ok(changes) => changes,
            Err(e) => {
                // The reader reconnects at the next read, and finds any gap itself.
                feed.set_live(false);
                tracing::debug!(error = &e as &dyn std::error::Error, "gate state: change stream broke");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let caught_up = changes.len() < READ_BATCH;
        apply(feed, source, &mut bulk, &stores, changes).await?;
        feed.set_live(caught_up && source.tier.is_up());
    }
}

/// Every link in the tier, and the status of each linked identity.
async fn load(source: &Source) -> Result<Stores, SharedError> {
    let stores = Stores {
        links: Arc::new(MemoryLinks::new(source.second_card)),
        health: Arc::new(MemoryHealth::default()),
    };
    let mut reader = source.links.bulk_reader().await?;
    while let Some(links) = source.links.next_links(&mut reader).await? {
        let identities: Vec<IdentityId> = links.iter().map(|(_, record)| record.identity).collect();
        let statuses = source.health.read_many(&mut reader, &identities).await?;
        for (identity, status) in identities.into_iter().zip(statuses) {
            if let Some(status) = status {
                stores.health.put(identity, status);
            }
        }
        stores.links.restore(links.len(), links);
    }
    Ok(stores)
}

/// Applies a batch of stream entries to the copy and records each at its position.
/// Links are read back from Redis as they are now (later than every entry of the
/// batch), with their identities' statuses; statuses keep the newest.
async fn apply(
    feed: &GateStateFeed,
    source: &Source,
    bulk: &mut BulkReader,
    stores: &Stores,
    changes: Vec<(StreamPosition, Shared)>,
) -> Result<(), Stopped> {
    let credentials: Vec<CredentialId> = changes
        .iter()
        .filter_map(|(_, change)| match change {
            Shared::Link { credential } => Some(*credential),
            _ => None,
        })
        .collect();
    let mut linked = std::collections::HashMap::new();
    if !credentials.is_empty() {
        let records = source.links.read_many(bulk, &credentials).await?;
        let identities: Vec<IdentityId> = records.iter().flatten().map(|r| r.identity).collect();
        let statuses = source.health.read_many(bulk, &identities).await?;
        for (identity, status) in identities.into_iter().zip(statuses) {
            if let Some(status) = status {
                stores.health.put(identity, status);
            }
        }
        linked.extend(credentials.into_iter().zip(records));
    }
    for (position, change) in changes {
        let version = position.as_version();
        match change {
            Shared::Status { identity, status } => {
                // Only linked identities reach a gate; a later link reads the status.
                if !stores.links.links_of_now(&identity, feed.clock.now()).is_empty() {
                    stores.health.put(identity, status);
                }
                feed.record_at(version, Change::Identity(identity));
            }
            Shared::Link { credential } => {
                // A credential may come more than once in a batch: each time, the record
                // read is the one it has now.
                match linked.get(&credential).cloned().flatten() {
                    Some(record) => {
                        stores.links.restore(1, [(credential, record)]);
                    }
                    None => {
                        stores.links.unlink_now(&credential);
                    }
                }
                feed.record_at(version, Change::Credential(credential));
            }
            Shared::Reset => return Err(Stopped::Gap),
        }
    }
    Ok(())
}

/// FNV-1a's offset basis: where the epoch's hash of Redis's epoch marker starts.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
