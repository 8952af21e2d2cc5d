//! A restart of the durable embedded store at full size: `N` links and `N` statuses
//! (10,000,000 each by default) written through [`Storage`], then the time from
//! opening the database to every record loaded into the in-memory stores the tap path
//! reads — what `ridegate serve` does before it listens — and the bytes on disk per
//! link and status.
//!
//! The baseline, measured in the same run: the same records built in memory and loaded
//! into the same stores with no database at all (the floor a restart cannot beat), so
//! the ratio says what the database adds on a machine shared with other work.
//!
//! `cargo bench -p ridegate-adapters --bench restore -- [N]`. The data goes in a
//! temporary directory (`TMPDIR`), removed afterwards; it needs about 3 GB of disk and
//! 3 GB of memory at the default size.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set itself up should stop loudly

use std::sync::Arc;
use std::time::Instant;

use ridegate_adapters::caller::CallerKind;
use ridegate_adapters::health::MemoryHealth;
use ridegate_adapters::idempotency::MemoryIdempotency;
use ridegate_adapters::ids::{CredentialId, IdentityId};
use ridegate_adapters::link::{Consent, CredentialClass, LinkRecord, MemoryLinks, SecondCard};
use ridegate_adapters::replay::MemoryReplayGuard;
use ridegate_adapters::storage::{Storage, StorageSettings, Write};
use ridegate_core::model::{Colour, HealthStatus, UnixMillis};

/// Deterministic 16-byte ids (splitmix64), standing in for keyed hashes.
fn id(i: u64, salt: u64) -> [u8; 16] {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&mix(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt).to_le_bytes());
    out[8..].copy_from_slice(&mix(i ^ salt.rotate_left(17)).to_le_bytes());
    out
}

fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or(0, |kb| kb / 1024)
}

fn record(i: u64, now: UnixMillis, caller: &Arc<str>) -> LinkRecord {
    LinkRecord {
        identity: IdentityId(id(i, 2)),
        class: CredentialClass::PhysicalCard,
        issuer: None,
        tail: *b"0042",
        linked_at: now,
        linked_by: CallerKind::BackEnd,
        caller_id: caller.clone(),
        staff_operator_id: None,
        consent: Consent::BulkProgramme,
        valid_until: None,
    }
}

fn status(now: UnixMillis) -> HealthStatus {
    HealthStatus {
        colour: Colour::Green,
        set_at: now,
        negative_test_at: Some(now),
    }
}

/// The floor: the same links and statuses loaded into memory, two threads, no disk.
fn baseline(n: u64, now: UnixMillis, caller: &Arc<str>) -> f64 {
    let started = Instant::now();
    let links = MemoryLinks::new(SecondCard::Replace);
    let health = MemoryHealth::default();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            health.reserve(n as usize);
            for i in 0..n {
                health.put(IdentityId(id(i, 2)), status(now));
            }
        });
        links.restore(
            n as usize,
            (0..n).map(|i| (CredentialId(id(i, 1)), record(i, now, caller))),
        );
    });
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!((links.len() as u64, health.len() as u64), (n, n));
    elapsed
}

fn open(settings: &StorageSettings) -> Storage {
    (0..1_000)
        .find_map(|_| {
            Storage::open(settings)
                .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(10)))
                .ok()
        })
        .unwrap()
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let settings = StorageSettings {
        data_dir: dir.path().to_owned(),
        ..StorageSettings::default()
    };
    let now = UnixMillis(1_700_000_000_000);
    let caller: Arc<str> = Arc::from("bulk-2022");

    // Setup: written in key order, as a long-running store's pages end up; not timed
    // as part of the restart.
    let started = Instant::now();
    {
        let storage = open(&settings);
        let mut keys: Vec<(CredentialId, u64)> = (0..n).map(|i| (CredentialId(id(i, 1)), i)).collect();
        keys.sort_unstable_by_key(|k| k.0.0);
        for (credential, i) in keys {
            storage.write_behind(Write::Link(credential, record(i, now, &caller)));
        }
        storage.flush().await.unwrap();
        let links_bytes = storage.disk_bytes();
        let mut identities: Vec<[u8; 16]> = (0..n).map(|i| id(i, 2)).collect();
        identities.sort_unstable();
        for identity in identities {
            storage.write_behind(Write::Status(IdentityId(identity), status(now)));
        }
        storage.flush().await.unwrap();
        let bytes = storage.disk_bytes();
        println!(
            "written: {n} links and {n} statuses in {:.1} s; file {:.0} MB: {:.0} bytes per link (links alone), {:.0} per link and status",
            started.elapsed().as_secs_f64(),
            bytes as f64 / 1e6,
            links_bytes as f64 / n as f64,
            bytes as f64 / n as f64,
        );
    }

    let floor = baseline(n, now, &caller);
    let before = rss_mb();
    let started = Instant::now();
    let storage = open(&settings);
    let opened = started.elapsed();
    let links = MemoryLinks::new(SecondCard::Replace);
    let health = MemoryHealth::default();
    let restored = storage
        .restore(
            now,
            &links,
            &health,
            &MemoryReplayGuard::default(),
            &MemoryIdempotency::default(),
        )
        .unwrap();
    let elapsed = started.elapsed();
    drop(storage);
    assert_eq!((restored.links, restored.statuses), (n, n));
    assert_eq!((links.len() as u64, health.len() as u64), (n, n));
    println!(
        "restart: opened (journal recovered) in {:.1} s, and loaded {n} links and {n} statuses into memory in {:.1} s in all (target < 30 s); resident memory +{} MB",
        opened.as_secs_f64(),
        elapsed.as_secs_f64(),
        rss_mb().saturating_sub(before)
    );
    println!(
        "baseline in the same run (the same records loaded into memory, no database): {floor:.1} s; ratio {:.2}",
        elapsed.as_secs_f64() / floor
    );
}
