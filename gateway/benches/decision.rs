//! In-process cost of one gate decision (criterion), with its baselines in the same run:
//!
//! - `card`: a card tap (embedded link and status) with one million linked identities, next
//!   to a moka `get` and a std `HashMap` lookup over a one-million-key working set, and
//!   the cost of the harness itself;
//! - `ride_code`: a full ride-code decision (verify, single-use claim, link, health,
//!   policy, idempotency record, audit) next to the bare signature check it contains,
//!   for ES256 and EdDSA, issuer-signed and device-signed.
//!
//! `cargo bench -p ridegate --bench decision`. Criterion runs each function in turn; on
//! a noisy machine use `--bench ratios`, which alternates decision and baseline.

#![allow(clippy::unwrap_used)] // a test or benchmark that cannot set itself up should stop loudly

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ridegate::authorize::Decided;
use ridegate_core::clock::Clock;
use ridegate_core::credential::{CardMedium, CardNumber, Credential};
use ridegate_core::model::Verdict;
use tokio::time::Instant;

/// The allocator the `ridegate` binary uses, so the benchmark allocates as it does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Decisions that were not the expected ALLOW: a benchmark of the wrong path is void.
static UNEXPECTED: AtomicU64 = AtomicU64::new(0);

fn check(decided: &Decided) {
    if decided.answer.verdict != Verdict::Allow || decided.retry {
        UNEXPECTED.fetch_add(1, Ordering::Relaxed);
    }
}

fn assert_all_allowed() {
    let unexpected = UNEXPECTED.load(Ordering::Relaxed);
    assert_eq!(
        unexpected, 0,
        "{unexpected} benchmarked decisions were not ALLOW: the benchmark measured the wrong path"
    );
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let world = world();
    let order = shuffled(RIDERS);
    let cards: Vec<CardNumber> = order
        .iter()
        .map(|i| CardNumber::parse(&card_number(*i)).unwrap())
        .collect();
    // As the server does: the deadline counts from when the tap was received.
    let budget = Duration::from_millis(180);

    let mut group = c.benchmark_group("card");
    group.sample_size(50).measurement_time(Duration::from_secs(8));
    let mut n = 0u64;
    group.bench_function("decision_cache_hit_1M", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let number = cards[(n % RIDERS) as usize].clone();
            let req = request(
                Credential::Card {
                    medium: CardMedium::Physical,
                    number,
                },
                "card",
                n,
            );
            let authorizer = &world.authorizer;
            async move {
                let received = Instant::now();
                let decided = authorizer.authorize(req, received, received + budget).await;
                check(&decided);
                black_box(decided)
            }
        });
    });
    // What the harness itself costs: building the same request and running an async
    // block on the runtime, without deciding anything.
    let mut h = 0u64;
    group.bench_function("harness_only", |b| {
        b.to_async(&rt).iter(|| {
            h += 1;
            let number = cards[(h % RIDERS) as usize].clone();
            let req = request(
                Credential::Card {
                    medium: CardMedium::Physical,
                    number,
                },
                "harness",
                h,
            );
            async move { black_box(req) }
        });
    });
    let (moka, map) = baseline_maps();
    let mut k = 0usize;
    group.bench_function("baseline_moka_get_1M", |b| {
        b.iter(|| {
            k = (k + 1) % order.len();
            black_box(moka.get(&order[k]))
        });
    });
    group.bench_function("baseline_hashmap_get_1M", |b| {
        b.iter(|| {
            k = (k + 1) % order.len();
            black_box(map.get(&order[k]).copied())
        });
    });
    group.finish();
    assert_all_allowed();

    let mut group = c.benchmark_group("ride_code");
    group.sample_size(50).measurement_time(Duration::from_secs(6));
    for ((alg, minter), (_, jwk)) in world.minters.iter().zip(&world.keys) {
        let sample = minter
            .code("acct-1", "jti-sample", Clock::System.now(), Duration::from_secs(30))
            .unwrap();
        let (message, signature) = message_and_signature(&sample);
        let key = parsed_key(jwk);
        group.bench_function(format!("bare_verify/{alg}"), |b| {
            b.iter(|| key.verify_sig(&message, &signature).unwrap());
        });
        let mut i = 0u64;
        let series = format!("code-{alg}");
        group.bench_function(format!("decision/{alg}"), |b| {
            b.to_async(&rt).iter_batched(
                || {
                    i += 1;
                    let account = format!("acct-{}", i % RIDERS);
                    let code = minter.code(&account, &format!("j{i}"), Clock::System.now(), Duration::from_secs(30));
                    request(Credential::RideCode(code.unwrap()), &series, i)
                },
                |req| async {
                    let received = Instant::now();
                    let decided = world.authorizer.authorize(req, received, received + budget).await;
                    check(&decided);
                    black_box(decided)
                },
                BatchSize::SmallInput,
            );
        });
    }
    for (alg, phone) in &world.phones {
        let mut i = 0u64;
        let series = format!("device-{alg}");
        group.bench_function(format!("decision_device_signed/{alg}-certified-EdDSA"), |b| {
            b.to_async(&rt).iter_batched(
                || {
                    i += 1;
                    let code = phone.code(&format!("d{i}"), Clock::System.now(), Duration::from_secs(30));
                    request(Credential::RideCode(code.unwrap()), &series, i)
                },
                |req| async {
                    let received = Instant::now();
                    let decided = world.authorizer.authorize(req, received, received + budget).await;
                    check(&decided);
                    black_box(decided)
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
    assert_all_allowed();
}

criterion_group!(decision, benches);
criterion_main!(decision);
