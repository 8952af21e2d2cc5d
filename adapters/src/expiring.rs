//! A sharded map whose entries expire: the embedded store behind single-use and
//! idempotency records. Expired entries are invisible at once. Each shard also keeps its
//! entries in insertion order, and every write removes a few expired ones from the
//! front: expiry costs O(1) per write, with no sweep of a whole shard under its lock
//! (at 30 k taps/s a two-minute retry window holds millions of records, and such a
//! sweep stalled every tap behind it).

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use crate::ids::IdHasher;
use ridegate_core::model::UnixMillis;

const SHARDS: usize = 32;

/// Expired entries a write removes at most: more than one, so a backlog (after an idle
/// spell) drains while writes go on, and few enough to keep each write short.
const EXPIRE_PER_WRITE: usize = 8;

struct Shard<V> {
    entries: HashMap<[u8; 16], (V, UnixMillis), IdHasher>,
    /// Keys with their expiry, oldest write first.
    order: VecDeque<([u8; 16], UnixMillis)>,
}

/// Maps 16-byte ids to values until each value's expiry time.
pub(crate) struct ExpiringMap<V> {
    shards: Box<[Mutex<Shard<V>>]>,
}

impl<V: Clone> ExpiringMap<V> {
    pub(crate) fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    entries: HashMap::with_hasher(IdHasher),
                    order: VecDeque::new(),
                })
            })
            .collect();
        Self { shards }
    }

    fn shard(&self, key: &[u8; 16]) -> &Mutex<Shard<V>> {
        &self.shards[usize::from(key[15]) % SHARDS]
    }

    /// The live value for `key`.
    pub(crate) fn get(&self, key: &[u8; 16], now: UnixMillis) -> Option<V> {
        let shard = self.shard(key).lock();
        shard
            .entries
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone())
    }

    /// Stores `value` unless a live value is already there; returns that value if so.
    pub(crate) fn insert_if_absent(&self, key: [u8; 16], value: V, until: UnixMillis, now: UnixMillis) -> Option<V> {
        let mut shard = self.shard(&key).lock();
        shard.expire(now);
        match shard.entries.get(&key) {
            Some((existing, existing_until)) if *existing_until > now => Some(existing.clone()),
            _ => {
                shard.entries.insert(key, (value, until));
                shard.order.push_back((key, until));
                None
            }
        }
    }

    /// How many entries are held, expired or not (for metrics and tests).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }
}

impl<V> Shard<V> {
    /// Removes up to [`EXPIRE_PER_WRITE`] expired entries from the front of the order.
    /// An entry written again after it expired has a later place (and expiry) in the
    /// order; its earlier place then no longer matches and only leaves the queue.
    fn expire(&mut self, now: UnixMillis) {
        for _ in 0..EXPIRE_PER_WRITE {
            match self.order.front() {
                Some(&(key, until)) if until <= now => {
                    self.order.pop_front();
                    if self.entries.get(&key).is_some_and(|(_, current)| *current == until) {
                        self.entries.remove(&key);
                    }
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_vanish_at_expiry_and_their_slot_is_free() {
        let map = ExpiringMap::new();
        let key = [7u8; 16];
        assert_eq!(map.insert_if_absent(key, 1, UnixMillis(100), UnixMillis(0)), None);
        assert_eq!(map.insert_if_absent(key, 2, UnixMillis(100), UnixMillis(50)), Some(1));
        assert_eq!(map.get(&key, UnixMillis(99)), Some(1));
        assert_eq!(map.get(&key, UnixMillis(100)), None);
        assert_eq!(
            map.insert_if_absent(key, 3, UnixMillis(300), UnixMillis(100)),
            None,
            "expired slot is free"
        );
        assert_eq!(map.insert_if_absent([9u8; 16], 4, UnixMillis(150), UnixMillis(0)), None);
        assert_eq!(
            map.insert_if_absent([9u8; 16], 5, UnixMillis(5_000), UnixMillis(2_000)),
            None
        );
        assert_eq!(map.len(), 2, "the expired entry was replaced, not kept beside");
        assert_eq!(map.get(&[9u8; 16], UnixMillis(2_000)), Some(5));
    }

    #[test]
    fn each_write_removes_a_few_expired_entries_and_a_backlog_drains() {
        let map = ExpiringMap::new();
        let key = |i: u32| {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_le_bytes());
            key
        };
        // 100 entries in shard 0 that expire at t=10.
        for i in 0..100 {
            map.insert_if_absent(key(i), 0, UnixMillis(10), UnixMillis(0));
        }
        assert_eq!(map.len(), 100);
        // Each later write removes EXPIRE_PER_WRITE of them, then only itself is left.
        map.insert_if_absent(key(1_000), 1, UnixMillis(5_000), UnixMillis(20));
        assert_eq!(map.len(), 100 - EXPIRE_PER_WRITE + 1);
        for i in 1_001..1_020 {
            map.insert_if_absent(key(i), 1, UnixMillis(5_000), UnixMillis(20));
        }
        assert_eq!(map.len(), 20, "the backlog drained, the live entries stayed");
    }

    #[test]
    fn an_entry_written_again_after_expiry_is_not_removed_by_its_old_place() {
        let map = ExpiringMap::new();
        let key = |i: u8| {
            let mut key = [3u8; 16];
            key[0] = i;
            key
        };
        // Enough entries ahead of it that the next write does not reach its old place.
        for i in 0..EXPIRE_PER_WRITE as u8 {
            map.insert_if_absent(key(100 + i), 0, UnixMillis(5), UnixMillis(0));
        }
        map.insert_if_absent(key(1), 1, UnixMillis(10), UnixMillis(0));
        // Expired at 10; written again at 20, live until 1000.
        assert_eq!(map.insert_if_absent(key(1), 2, UnixMillis(1_000), UnixMillis(20)), None);
        // A later write reaches the old place: the new entry stays.
        map.insert_if_absent(key(2), 3, UnixMillis(1_000), UnixMillis(30));
        assert_eq!(map.get(&key(1), UnixMillis(30)), Some(2));
        assert_eq!(map.len(), 2);
    }
}
