//! Resident memory per entry, measured as the growth of this process's resident set:
//!
//! - `cache`: N statuses in the health cache (moka) — what each instance holds per
//!   cached status when statuses come from Redis or the health platform;
//! - `embedded`: N linked credentials and N statuses in the embedded stores — the whole
//!   embedded population (decisions read the embedded statuses directly: no cache);
//! - `retries`: what decisions leave for the retry window (`deadline.retry_window`) at
//!   steady state, N decisions per window: N kept, then N more written as the first N
//!   expire, as a herd held at full speed leaves them (5.2 M is two minutes at 43 k
//!   decisions a second). A decision with a request id leaves two records: its tap
//!   under the request id (to notice reuse) and its answer (for retries).
//!
//! Each measurement runs in a process of its own (allocators keep freed memory). `cache`
//! also measures, in the same run, a bare moka cache with the same key and value sizes —
//! the floor moka itself sets; `retries` measures the same records in one flat vector
//! (key, answer, expiry: the bytes themselves) and the time to push them, as its floor.
//!
//! `cargo bench -p ridegate --bench memory -- cache 1000000` (default),
//! `-- embedded 10000000` or `-- retries 5200000`.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set itself up should stop loudly

use std::sync::Arc;
use std::time::Duration;

use ridegate::cache::{CacheSettings, HealthCache};
use ridegate_adapters::caller::CallerKind;
use ridegate_adapters::health::MemoryHealth;
use ridegate_adapters::idempotency::{Kept, MemoryIdempotency, RequestIds};
use ridegate_adapters::ids::{CredentialId, IdentityId, Pseudonymizer, RequestKey, TapFingerprint};
use ridegate_adapters::link::{Consent, CredentialClass, LinkRecord, MemoryLinks};
use ridegate_core::clock::Clock;
use ridegate_core::model::{Answer, Colour, DecisionId, HealthStatus, Mode, Reason, UnixMillis, Verdict};

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
    let modes = [
        "cache",
        "embedded",
        "retries",
        "measure-cache",
        "measure-moka",
        "measure-embedded",
        "measure-retries",
        "measure-flat",
    ];
    let mode = args
        .iter()
        .find(|a| modes.contains(&a.as_str()))
        .cloned()
        .unwrap_or_else(|| "cache".into());
    let n: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(match mode.as_str() {
        "cache" => 1_000_000,
        "retries" | "measure-retries" | "measure-flat" => 5_200_000,
        _ => 10_000_000,
    });
    if let Some(measured) = ["cache", "embedded", "retries"].iter().find(|m| **m == mode) {
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
        match *measured {
            "cache" => run("moka"),
            "retries" => run("flat"),
            _ => {}
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
        "measure-retries" | "measure-flat" => kept_answers(&p, n, mode == "measure-flat"),
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

/// `n` decisions a window, kept for retries as the server keeps them (or, with `flat`,
/// the same records in two vectors): the resident set at steady state and the time per
/// decision.
fn kept_answers(p: &Pseudonymizer, n: u64, flat: bool) {
    const WINDOW_MS: i64 = 120_000;
    let tap = |i: u64| TapFingerprint(i.to_le_bytes());
    let kept = |i: u64| Kept {
        answer: Answer {
            verdict: Verdict::Allow,
            reason: Reason::HealthGreen,
            decision_id: DecisionId(i),
            degraded: false,
            status_age_ms: Some(1_000),
            mode: Mode::Enforce,
            shadow: None,
        },
        tap: tap(i),
    };
    // Decision i at i × window / n, kept for one window.
    let at = |i: u64| UnixMillis(i as i64 * WINDOW_MS / n as i64);
    let writes = if flat { n } else { 2 * n };
    let requests: Vec<RequestKey> = (0..writes).map(|i| RequestKey(id(p, i))).collect();
    let owners: Vec<RequestKey> = (0..writes).map(|i| RequestKey(id(p, u64::MAX - i))).collect();
    let before = resident_bytes();
    let started = std::time::Instant::now();
    let (what, grown) = if flat {
        let mut taps = Vec::with_capacity(n as usize);
        let mut answers = Vec::with_capacity(n as usize);
        for i in 0..n {
            let until = UnixMillis(at(i).0 + WINDOW_MS);
            taps.push((requests[i as usize], tap(i), until));
            answers.push((owners[i as usize], kept(i), until));
        }
        let grown = resident_bytes() - before;
        std::hint::black_box((&taps, &answers));
        ("floor: the same records in two flat vectors", grown)
    } else {
        let (request_ids, answers) = (RequestIds::default(), MemoryIdempotency::default());
        for i in 0..writes {
            let (now, k) = (at(i), i as usize);
            let until = UnixMillis(now.0 + WINDOW_MS);
            assert!(request_ids.note(requests[k], tap(i), until, now).is_none());
            assert!(answers.record_now(owners[k], kept(i), until, now).is_none());
        }
        let grown = resident_bytes() - before;
        std::hint::black_box((&request_ids, &answers));
        (
            "kept for retries (RequestIds and MemoryIdempotency), steady state",
            grown,
        )
    };
    println!(
        "{what}: {n} decisions a window hold {:.0} MB = {:.0} bytes per decision; {:.0} ns per decision",
        grown as f64 / 1e6,
        grown as f64 / n as f64,
        started.elapsed().as_nanos() as f64 / writes as f64
    );
}
