//! The embedded health-code source: statuses held in this process, newest wins.

use std::collections::HashMap;

use parking_lot::RwLock;
use tokio::time::Instant;

use super::{HealthSource, SourceError};
use crate::ids::{IdHasher, IdentityId};
use crate::observe::Observer;
use ridegate_core::model::HealthStatus;

const SHARDS: usize = 64;

/// What storing a status did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Stored: it is now the identity's status.
    Stored,
    /// Ignored: the store already holds a status set later.
    Older,
}

/// Statuses held in memory.
pub struct MemoryHealth {
    shards: Box<[RwLock<HashMap<IdentityId, HealthStatus, IdHasher>>]>,
    /// Told of each identity whose status changed.
    changes: Observer<IdentityId>,
}

impl Default for MemoryHealth {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(IdHasher)))
                .collect(),
            changes: Observer::default(),
        }
    }
}

impl std::fmt::Debug for MemoryHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryHealth({} statuses)", self.len())
    }
}

impl MemoryHealth {
    fn shard(&self, identity: &IdentityId) -> &RwLock<HashMap<IdentityId, HealthStatus, IdHasher>> {
        &self.shards[usize::from(identity.0[15]) % SHARDS]
    }

    /// The status held for `identity`.
    pub fn get(&self, identity: &IdentityId) -> Option<HealthStatus> {
        self.shard(identity).read().get(identity).copied()
    }

    /// Stores `status` unless a status set later is already held.
    pub fn put(&self, identity: IdentityId, status: HealthStatus) -> Applied {
        let mut shard = self.shard(&identity).write();
        let (applied, changed) = match shard.get(&identity) {
            Some(held) if held.set_at > status.set_at => (Applied::Older, false),
            _ => (Applied::Stored, shard.insert(identity, status) != Some(status)),
        };
        drop(shard);
        if changed {
            self.changes.notify(identity);
        }
        applied
    }

    /// Where changes are announced: see [`Observer`].
    pub fn changes(&self) -> &Observer<IdentityId> {
        &self.changes
    }

    /// Makes room for about `expected` more statuses at once (before a large load).
    pub fn reserve(&self, expected: usize) {
        for shard in self.shards.iter() {
            shard.write().reserve(expected / SHARDS + 1);
        }
    }

    /// How many identities have a status.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// True when no status is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl HealthSource for MemoryHealth {
    async fn fetch(&self, identity: IdentityId, _deadline: Instant) -> Result<Option<HealthStatus>, SourceError> {
        Ok(self.get(&identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ridegate_core::model::{Colour, UnixMillis};

    fn status(colour: Colour, at: i64) -> HealthStatus {
        HealthStatus {
            colour,
            set_at: UnixMillis(at),
            negative_test_at: None,
        }
    }

    #[test]
    fn the_newest_status_wins_whatever_the_arrival_order() {
        let store = MemoryHealth::default();
        let id = IdentityId([4; 16]);
        assert_eq!(store.put(id, status(Colour::Green, 10)), Applied::Stored);
        assert_eq!(store.put(id, status(Colour::Red, 20)), Applied::Stored);
        assert_eq!(store.put(id, status(Colour::Green, 15)), Applied::Older);
        assert_eq!(store.get(&id).map(|s| s.colour), Some(Colour::Red));
    }
}
