//! The embedded link store: a sharded hash map in this process.

use std::collections::HashMap;

use parking_lot::RwLock;

use super::{LinkError, LinkStore};
use crate::ids::{CredentialId, IdHasher, IdentityId};

const SHARDS: usize = 64;

/// Links held in memory. Reads take a shard's read lock for one hash lookup.
pub struct MemoryLinks {
    shards: Box<[RwLock<HashMap<CredentialId, IdentityId, IdHasher>>]>,
}

impl Default for MemoryLinks {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashMap::with_hasher(IdHasher)))
                .collect(),
        }
    }
}

impl std::fmt::Debug for MemoryLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryLinks({} links)", self.len())
    }
}

impl MemoryLinks {
    fn shard(&self, credential: &CredentialId) -> &RwLock<HashMap<CredentialId, IdentityId, IdHasher>> {
        &self.shards[usize::from(credential.0[15]) % SHARDS]
    }

    /// The identity `credential` is linked to.
    pub fn get(&self, credential: &CredentialId) -> Option<IdentityId> {
        self.shard(credential).read().get(credential).copied()
    }

    /// Links `credential` to `identity`, replacing any earlier link; returns the
    /// identity it was linked to before.
    pub fn insert(&self, credential: CredentialId, identity: IdentityId) -> Option<IdentityId> {
        self.shard(&credential).write().insert(credential, identity)
    }

    /// Removes `credential`'s link; returns the identity it was linked to.
    pub fn remove(&self, credential: &CredentialId) -> Option<IdentityId> {
        self.shard(credential).write().remove(credential)
    }

    /// How many credentials are linked.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// True when nothing is linked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LinkStore for MemoryLinks {
    async fn resolve(&self, credential: CredentialId) -> Result<Option<IdentityId>, LinkError> {
        Ok(self.get(&credential))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_replaced_and_removed() {
        let links = MemoryLinks::default();
        let (card, a, b) = (CredentialId([1; 16]), IdentityId([2; 16]), IdentityId([3; 16]));
        assert_eq!(links.insert(card, a), None);
        assert_eq!(links.insert(card, b), Some(a));
        assert_eq!(links.get(&card), Some(b));
        assert_eq!(links.remove(&card), Some(b));
        assert!(links.is_empty());
    }
}
