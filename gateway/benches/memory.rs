//! Resident memory per entry, measured as the growth of this process's resident set:
//!
//! - `cache`: N statuses in the health cache (moka) — what each instance holds per
//!   cached status when statuses come from Redis or the health platform;
//! - `embedded`: N linked credentials and N statuses in the embedded stores — the whole
//!   embedded population (decisions read the embedded statuses directly: no cache).
//!
//! Each measurement runs in a process of its own (allocators keep freed memory), and
//! `cache` also measures, in the same run, a bare moka cache with the same key and value
//! sizes — the floor moka itself sets.
//!
//! `cargo bench -p ridegate --bench memory -- cache 1000000` (default) or
//! `-- embedded 10000000`.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set itself up should stop loudly

use std::sync::Arc;
use std::time::Duration;

use ridegate::cache::{CacheSettings, HealthCache};
use ridegate_adapters::caller::CallerKind;
use ridegate_adapters::health::MemoryHealth;
use ridegate_adapters::ids::{CredentialId, IdentityId, Pseudonymizer};
use ridegate_adapters::link::{Consent, CredentialClass, LinkRecord, MemoryLinks};
use ridegate_core::clock::Clock;
use ridegate_core::model::{Colour, HealthStatus};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .unwrap()
        * 1024
}

fn id(p: &Pseudonymizer, i: u64) -> [u8; 16] {
    p.request("memory", &i.to_string()).0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let modes = ["cache", "embedded", "measure-cache", "measure-moka", "measure-embedded"];
    let mode = args
        .iter()
        .find(|a| modes.contains(&a.as_str()))
        .cloned()
        .unwrap_or_else(|| "cache".into());
    let n: u64 =
        args.iter()
            .find_map(|a| a.parse().ok())
            .unwrap_or(if mode == "cache" { 1_000_000 } else { 10_000_000 });
    if let Some(measured) = ["cache", "embedded"].iter().find(|m| **m == mode) {
        let run = |what: &str| {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .arg(format!("measure-{what}"))
                .arg(n.to_string())
                .output()
                .unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            print!("{}", String::from_utf8_lossy(&output.stdout));
        };
        run(measured);
        if *measured == "cache" {
            run("moka");
        }
        return;
    }
    let p = Pseudonymizer::new(b"memory-benchmark-secret").unwrap();
    let now = Clock::System.now();
    let status = HealthStatus {
        colour: Colour::Green,
        set_at: now,
        negative_test_at: Some(now),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let source = Arc::new(MemoryHealth::default());
    let settings = CacheSettings {
        ttl: Duration::from_secs(3600),
        max_staleness: Duration::from_secs(7200),
        capacity: n + n / 10,
        fetch_timeout: Duration::from_secs(1),
        refresh_ahead: 0.0,
    };
    let before = resident_bytes();
    match mode.as_str() {
        "measure-moka" => {
            // moka alone, with ridegate's key (16 bytes) and value (40 bytes) sizes.
            let moka: moka::sync::Cache<[u8; 16], [u8; 40]> = moka::sync::Cache::builder()
                .max_capacity(n + n / 10)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build();
            for i in 0..n {
                moka.insert(id(&p, i), [0; 40]);
            }
            moka.run_pending_tasks();
            let grown = resident_bytes() - before;
            println!(
                "bare moka, same key and value sizes: {:.0} bytes per entry",
                grown as f64 / n as f64
            );
            std::hint::black_box(moka);
        }
        "measure-cache" => {
            let cache = HealthCache::new(source, settings, Clock::System);
            for i in 0..n {
                cache.store(IdentityId(id(&p, i)), status);
            }
            let grown = resident_bytes() - before;
            assert!(cache.len() > n * 9 / 10, "entries: {}", cache.len());
            println!(
                "health cache: {n} cached statuses grow the resident set by {:.0} MB = {:.0} bytes per entry (target: under 200)",
                grown as f64 / 1e6,
                grown as f64 / n as f64
            );
            std::hint::black_box(cache);
        }
        _ => {
            // measure-embedded
            let links = MemoryLinks::default();
            let caller: Arc<str> = Arc::from("links-file");
            for i in 0..n {
                let identity = IdentityId(id(&p, i));
                let record = LinkRecord {
                    identity,
                    class: CredentialClass::PhysicalCard,
                    issuer: None,
                    tail: *b"5678",
                    linked_at: now,
                    linked_by: CallerKind::BackEnd,
                    caller_id: caller.clone(),
                    staff_operator_id: None,
                    consent: Consent::BulkProgramme,
                    valid_until: None,
                };
                links.link_now(CredentialId(id(&p, n + i)), &record).unwrap();
                source.put(identity, status);
            }
            let grown = resident_bytes() - before;
            println!(
                "embedded: {n} linked credentials + {n} statuses grow the resident set by {:.0} MB = {:.0} bytes per \
                 entry (target: under 250), {:.0} bytes per rider (a link and a status)",
                grown as f64 / 1e6,
                grown as f64 / (2 * n) as f64,
                grown as f64 / n as f64
            );
            std::hint::black_box((links, source));
        }
    }
}
