//! A sharded map whose entries expire: the embedded store behind single-use and
//! idempotency records. Expired entries are invisible at once. Each shard keeps its
//! records in one ring, oldest write first, and an index of where each key's record is;
//! every write removes a few expired records from the front: expiry costs O(1) per
//! write, with no sweep of a whole shard under its lock (at 30 k taps/s a two-minute
//! retry window holds millions of records, and such a sweep stalled every tap behind it).
//!
//! A herd held at full speed for the retry window leaves millions of records, so their
//! memory is what the window costs: each record is held once, flat, in fixed-size chunks
//! (no doubling to grow into, no copy of the key in the index), and the index holds a
//! 4-byte position per key. BENCHMARKS.md has the bytes per record.

use std::collections::VecDeque;

use hashbrown::HashTable;
use parking_lot::Mutex;

use ridegate_core::model::UnixMillis;

const SHARDS: usize = 32;

/// Records per chunk of a shard's ring: a chunk is allocated whole and freed whole once
/// every record in it has expired, except the one a shard is writing into. (Tests use
/// tiny chunks, so that they cross chunks.)
#[cfg(not(test))]
const CHUNK: usize = 4096;
#[cfg(test)]
const CHUNK: usize = 3;

/// Expired entries a write removes at most: more than one, so a backlog (after an idle
/// spell) drains while writes go on, and few enough to keep each write short.
const EXPIRE_PER_WRITE: usize = 8;

/// One write: its key, its expiry and its value.
#[derive(Clone, Copy)]
struct Record<V> {
    key: [u8; 16],
    until: UnixMillis,
    value: V,
}

/// A shard's records, oldest write first, in chunks of [`CHUNK`]; each has a sequence
/// number (wrapping: a shard holds far fewer than 2³² records).
struct Ring<V> {
    chunks: VecDeque<Vec<Record<V>>>,
    /// Where the oldest record held is in the first chunk (those before it expired).
    head: usize,
    /// The sequence number of the oldest record held.
    first: u32,
    /// How many records are held.
    len: usize,
}

impl<V: Copy> Ring<V> {
    fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            head: 0,
            first: 0,
            len: 0,
        }
    }

    /// The record with sequence number `seq`, which must be held.
    fn get(&self, seq: u32) -> &Record<V> {
        let at = self.head + seq.wrapping_sub(self.first) as usize;
        &self.chunks[at / CHUNK][at % CHUNK]
    }

    /// The oldest record held.
    fn front(&self) -> Option<&Record<V>> {
        (self.len > 0).then(|| &self.chunks[0][self.head])
    }

    /// Appends `record`; returns its sequence number.
    fn push(&mut self, record: Record<V>) -> u32 {
        if self.chunks.back().is_none_or(|chunk| chunk.len() == CHUNK) {
            self.chunks.push_back(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.chunks.back_mut() {
            chunk.push(record);
        }
        let seq = self.first.wrapping_add(self.len as u32);
        self.len += 1;
        seq
    }

    /// Lets go of the oldest record (its chunk goes when all of its records have).
    fn pop_front(&mut self) {
        if self.len == 0 {
            return;
        }
        self.len -= 1;
        self.first = self.first.wrapping_add(1);
        self.head += 1;
        if self.head == CHUNK {
            self.chunks.pop_front();
            self.head = 0;
        }
    }
}

struct Shard<V> {
    ring: Ring<V>,
    /// For each key held, the sequence number of its latest record.
    index: HashTable<u32>,
}

/// Maps 16-byte ids to values until each value's expiry time.
pub(crate) struct ExpiringMap<V> {
    shards: Box<[Mutex<Shard<V>>]>,
}

/// Keys are keyed hashes already: their first eight bytes are a good hash.
fn hash(key: &[u8; 16]) -> u64 {
    u64::from_le_bytes([key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7]])
}

impl<V: Copy> Default for ExpiringMap<V> {
    fn default() -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    ring: Ring::new(),
                    index: HashTable::new(),
                })
            })
            .collect();
        Self { shards }
    }
}

impl<V: Copy> ExpiringMap<V> {
    fn shard(&self, key: &[u8; 16]) -> &Mutex<Shard<V>> {
        &self.shards[usize::from(key[15]) % SHARDS]
    }

    /// The live value for `key`.
    pub(crate) fn get(&self, key: &[u8; 16], now: UnixMillis) -> Option<V> {
        let shard = self.shard(key).lock();
        let seq = shard.index.find(hash(key), |&seq| shard.ring.get(seq).key == *key)?;
        let record = shard.ring.get(*seq);
        (record.until > now).then_some(record.value)
    }

    /// Stores `value` unless a live value is already there; returns that value if so.
    pub(crate) fn insert_if_absent(&self, key: [u8; 16], value: V, until: UnixMillis, now: UnixMillis) -> Option<V> {
        let mut guard = self.shard(&key).lock();
        guard.expire(now);
        let Shard { ring, index } = &mut *guard;
        let record = Record { key, until, value };
        match index.find_mut(hash(&key), |&seq| ring.get(seq).key == key) {
            Some(held) => {
                let latest = ring.get(*held);
                if latest.until > now {
                    return Some(latest.value);
                }
                // Expired: the new record takes its key's slot; the old one stays in
                // the ring until it reaches the front.
                *held = ring.push(record);
            }
            None => {
                let seq = ring.push(record);
                index.insert_unique(hash(&key), seq, |&seq| hash(&ring.get(seq).key));
            }
        }
        None
    }

    /// How many keys are held, expired or not (for metrics and tests).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().index.len()).sum()
    }
}

impl<V: Copy> Shard<V> {
    /// Removes up to [`EXPIRE_PER_WRITE`] expired records from the front of the ring,
    /// and the index slot of each that is still its key's latest.
    fn expire(&mut self, now: UnixMillis) {
        for _ in 0..EXPIRE_PER_WRITE {
            let Some(front) = self.ring.front().filter(|record| record.until <= now) else {
                return;
            };
            let oldest = self.ring.first;
            if let Ok(slot) = self.index.find_entry(hash(&front.key), |&seq| seq == oldest) {
                slot.remove();
            }
            self.ring.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_vanish_at_expiry_and_their_slot_is_free() {
        let map = ExpiringMap::default();
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
        let map = ExpiringMap::default();
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
        let map = ExpiringMap::default();
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

    #[test]
    fn sequence_numbers_wrap_without_losing_a_record() {
        let map = ExpiringMap::default();
        for shard in map.shards.iter() {
            shard.lock().ring.first = u32::MAX - 3;
        }
        let key = |i: u8| [i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        for i in 0..10 {
            let until = UnixMillis(if i < 6 { 10 } else { 1_000 });
            assert_eq!(map.insert_if_absent(key(i), i, until, UnixMillis(0)), None);
        }
        // Past the wrap: the expired six leave, the live four stay findable.
        map.insert_if_absent(key(50), 50, UnixMillis(1_000), UnixMillis(20));
        for i in 0..10 {
            let held = map.get(&key(i), UnixMillis(20));
            assert_eq!(held, (i >= 6).then_some(i), "key {i}");
        }
        assert_eq!(map.len(), 5);
        assert_eq!(
            map.insert_if_absent(key(7), 70, UnixMillis(2_000), UnixMillis(30)),
            Some(7)
        );
    }

    proptest::proptest! {
        /// Against a plain map of the latest live write per key, over writes and reads
        /// with a clock that moves on: the same answers, whatever has been expired.
        #[test]
        fn answers_as_a_plain_map_of_live_entries_would(
            ops in proptest::collection::vec((0u8..6, 0u8..2, 0i64..30, 1i64..60), 1..400)
        ) {
            let map = ExpiringMap::default();
            let mut model: std::collections::HashMap<u8, (u32, i64)> = std::collections::HashMap::new();
            let mut now = 0i64;
            for (n, (id, shard, step, life)) in ops.into_iter().enumerate() {
                now += step;
                let key = [id, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0, shard];
                let model_key = id * 2 + shard;
                let value = n as u32;
                let live = model.get(&model_key).filter(|(_, until)| *until > now).map(|(v, _)| *v);
                if n % 3 == 0 {
                    proptest::prop_assert_eq!(map.get(&key, UnixMillis(now)), live);
                } else {
                    let got = map.insert_if_absent(key, value, UnixMillis(now + life), UnixMillis(now));
                    proptest::prop_assert_eq!(got, live);
                    if live.is_none() {
                        model.insert(model_key, (value, now + life));
                    }
                }
            }
        }
    }
}
