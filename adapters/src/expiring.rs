//! A sharded map whose entries expire: the embedded store behind single-use and
//! idempotency records. Expired entries are invisible at once. A shard is swept on a
//! write once a second, or sooner when it has doubled since its last sweep — so the
//! map stays within about twice its live entries at any write rate, and sweeping stays
//! amortised O(1) per write.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::ids::IdHasher;
use crate::model::UnixMillis;

const SHARDS: usize = 32;
const SWEEP_INTERVAL_MS: i64 = 1_000;

struct Shard<V> {
    entries: HashMap<[u8; 16], (V, UnixMillis), IdHasher>,
    next_sweep: UnixMillis,
    sweep_at_len: usize,
}

/// Shards smaller than this are only swept by time.
const MIN_SWEEP_LEN: usize = 256;

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
                    next_sweep: UnixMillis(0),
                    sweep_at_len: MIN_SWEEP_LEN,
                })
            })
            .collect();
        Self { shards }
    }

    fn shard(&self, key: &[u8; 16]) -> &Mutex<Shard<V>> {
        &self.shards[usize::from(key[15]) % SHARDS]
    }

    /// The live value for `key`.
    #[cfg(test)]
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
        shard.sweep(now);
        match shard.entries.get(&key) {
            Some((existing, existing_until)) if *existing_until > now => Some(existing.clone()),
            _ => {
                shard.entries.insert(key, (value, until));
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
    fn sweep(&mut self, now: UnixMillis) {
        if now >= self.next_sweep || self.entries.len() >= self.sweep_at_len {
            self.entries.retain(|_, (_, until)| *until > now);
            self.next_sweep = now.plus_ms(SWEEP_INTERVAL_MS);
            self.sweep_at_len = (2 * self.entries.len()).max(MIN_SWEEP_LEN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_vanish_at_expiry_and_are_swept_on_later_writes() {
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
    fn a_shard_that_doubles_is_swept_before_the_second_is_up() {
        let map = ExpiringMap::new();
        // Fill shard 0 with entries that expire at t=10, then keep writing live ones to
        // it within the same second: the expired ones go once the shard has doubled.
        for i in 0..MIN_SWEEP_LEN as u32 {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_le_bytes());
            map.insert_if_absent(key, 0, UnixMillis(10), UnixMillis(0));
        }
        for i in 0..MIN_SWEEP_LEN as u32 {
            let mut key = [1u8; 16];
            key[15] = 0;
            key[..4].copy_from_slice(&i.to_le_bytes());
            map.insert_if_absent(key, 1, UnixMillis(900), UnixMillis(20));
        }
        assert!(
            map.len() < 2 * MIN_SWEEP_LEN,
            "expired entries were swept early: {}",
            map.len()
        );
    }

    #[test]
    fn expired_entries_are_removed_by_the_sweep() {
        let map = ExpiringMap::new();
        for i in 0..100u8 {
            let mut key = [0u8; 16];
            key[0] = i;
            map.insert_if_absent(key, i, UnixMillis(10), UnixMillis(0));
        }
        assert_eq!(map.len(), 100);
        let mut fresh = [0u8; 16];
        fresh[0] = 200;
        map.insert_if_absent(fresh, 0, UnixMillis(5_000), UnixMillis(2_000));
        assert_eq!(
            map.len(),
            1,
            "the sweep on the write removed the 100 expired entries in shard 0"
        );
    }
}
