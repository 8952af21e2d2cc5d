//! The storage-engine comparison behind `adapters/src/storage`: redb against fjall on
//! ridegate's own workload — 16-byte keyed-hash keys, ~56-byte link records — in the
//! same run, each in its own temporary directory:
//!
//! - bulk insert: `N` links in transactions of 5,000 (a `BulkLink` batch), each
//!   committed with fsync;
//! - commit latency: 300 commits of one record each, fsync'ed (p50, p99);
//! - bytes on disk per link once written;
//! - reopen and full scan (what a restart does).
//!
//! `cargo bench -p ridegate-adapters --bench engines -- [N]` (N defaults to 1,000,000).
//! Set `TMPDIR` to put the data on another disk.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{ReadableDatabase as _, ReadableTable as _};

const BATCH: usize = 5_000;
const COMMITS: usize = 300;
const VALUE: [u8; 56] = [7; 56];
const TABLE: redb::TableDefinition<'_, &[u8; 16], &[u8]> = redb::TableDefinition::new("links");

/// Deterministic 16-byte keys (splitmix64), standing in for keyed hashes.
fn key(i: u64) -> [u8; 16] {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&mix(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    out[8..].copy_from_slice(&mix(i ^ 0x5555).to_le_bytes());
    out
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

struct Figures {
    insert: Duration,
    commit_p50: Duration,
    commit_p99: Duration,
    bytes: u64,
    reopen_scan: Duration,
    scanned: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn redb_run(dir: &Path, n: u64) -> Figures {
    let path = dir.join("bench.redb");
    let db = redb::Database::builder()
        .set_cache_size(64 << 20)
        .create(&path)
        .expect("create");
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let txn = db.begin_write().expect("begin");
        {
            let mut table = txn.open_table(TABLE).expect("table");
            for _ in 0..BATCH.min((n - i) as usize) {
                table.insert(&key(i), VALUE.as_slice()).expect("insert");
                i += 1;
            }
        }
        txn.commit().expect("commit");
    }
    let insert = started.elapsed();
    let mut latencies: Vec<Duration> = (0..COMMITS as u64)
        .map(|c| {
            let t = Instant::now();
            let txn = db.begin_write().expect("begin");
            txn.open_table(TABLE)
                .expect("table")
                .insert(&key(n + c), VALUE.as_slice())
                .expect("insert");
            txn.commit().expect("commit");
            t.elapsed()
        })
        .collect();
    latencies.sort();
    drop(db);
    let bytes = dir_bytes(dir);
    let started = Instant::now();
    let db = redb::Database::builder()
        .set_cache_size(64 << 20)
        .open(&path)
        .expect("open");
    let txn = db.begin_read().expect("read");
    let table = txn.open_table(TABLE).expect("table");
    let mut scanned = 0u64;
    for entry in table.iter().expect("iter") {
        let (k, v) = entry.expect("entry");
        scanned += u64::from(k.value()[0] == 0 && v.value().is_empty());
        scanned += 1;
    }
    Figures {
        insert,
        commit_p50: percentile(&latencies, 0.5),
        commit_p99: percentile(&latencies, 0.99),
        bytes,
        reopen_scan: started.elapsed(),
        scanned,
    }
}

fn fjall_run(dir: &Path, n: u64) -> Figures {
    let open = || {
        let db = fjall::Database::builder(dir).open().expect("open");
        let keyspace = db
            .keyspace("links", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        (db, keyspace)
    };
    let (db, links) = open();
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let mut batch = db.batch().durability(Some(fjall::PersistMode::SyncAll));
        for _ in 0..BATCH.min((n - i) as usize) {
            batch.insert(&links, key(i), VALUE.as_slice());
            i += 1;
        }
        batch.commit().expect("commit");
    }
    let insert = started.elapsed();
    let mut latencies: Vec<Duration> = (0..COMMITS as u64)
        .map(|c| {
            let t = Instant::now();
            let mut batch = db.batch().durability(Some(fjall::PersistMode::SyncAll));
            batch.insert(&links, key(n + c), VALUE.as_slice());
            batch.commit().expect("commit");
            t.elapsed()
        })
        .collect();
    latencies.sort();
    drop(links);
    drop(db);
    let bytes = dir_bytes(dir);
    let started = Instant::now();
    let (_db, links) = open();
    let mut scanned = 0u64;
    for guard in links.iter() {
        let (k, v) = guard.into_inner().expect("entry");
        scanned += u64::from(k.is_empty() && v.is_empty());
        scanned += 1;
    }
    Figures {
        insert,
        commit_p50: percentile(&latencies, 0.5),
        commit_p99: percentile(&latencies, 0.99),
        bytes,
        reopen_scan: started.elapsed(),
        scanned,
    }
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    println!("{n} links of 16 + 56 bytes; transactions of {BATCH}; {COMMITS} single-record commits; all fsync'ed\n");
    println!(
        "| engine | bulk insert | links/s | commit p50 | commit p99 | bytes on disk per link | reopen + full scan |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, run) in [("redb", redb_run as fn(&Path, u64) -> Figures), ("fjall", fjall_run)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = run(dir.path(), n);
        assert_eq!(f.scanned, n + COMMITS as u64, "{name} kept every record");
        println!(
            "| {name} | {:.2} s | {:.0} k | {:.2} ms | {:.2} ms | {:.1} | {:.2} s |",
            f.insert.as_secs_f64(),
            n as f64 / f.insert.as_secs_f64() / 1e3,
            f.commit_p50.as_secs_f64() * 1e3,
            f.commit_p99.as_secs_f64() * 1e3,
            f.bytes as f64 / (n + COMMITS as u64) as f64,
            f.reopen_scan.as_secs_f64(),
        );
    }
}
