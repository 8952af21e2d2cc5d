//! Decision cost as a ratio to its baseline, measured alternately: on a shared, noisy
//! machine only ratios taken in the same moment mean anything.
//!
//! Each round times the baseline and the decision back to back over the same number of
//! operations, in ABBA order (baseline first on even rounds, decision first on odd), and
//! the report gives the median of the per-round ratios with the spread between rounds:
//!
//! - card decision, embedded link and status (1M linked identities) vs a moka `get` (1M keys);
//! - ride-code decision vs the bare signature check it contains (key parsed once), per
//!   algorithm and form.
//!
//! `cargo bench -p ridegate --bench ratios [-- ROUNDS] [card|code]` (default 15 rounds).

#![allow(clippy::unwrap_used)] // a test or benchmark that cannot set itself up should stop loudly

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant as StdInstant};

use aws_lc_rs::signature::ParsedPublicKey;
use common::*;
use ridegate::authorize::Authorizer;
use ridegate_adapters::credential::ride_code::SigningAlg;
use ridegate_core::clock::Clock;
use ridegate_core::credential::{CardMedium, CardNumber, Credential};
use ridegate_core::decision::GateRequest;
use ridegate_core::model::Verdict;
use tokio::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BUDGET: Duration = Duration::from_millis(180);

/// Decides every request, one after another inside one task (as a connection's task
/// awaits its taps; entering the runtime once per decision would add the harness's cost
/// to every one); returns ns per decision. Panics if any was not ALLOW.
fn decide_all(rt: &tokio::runtime::Runtime, authorizer: &Authorizer, requests: Vec<GateRequest>) -> f64 {
    let n = requests.len();
    let started = StdInstant::now();
    rt.block_on(async {
        for req in requests {
            let received = Instant::now();
            let decided = authorizer.authorize(req, received, received + BUDGET).await;
            assert!(
                decided.answer.verdict == Verdict::Allow && !decided.retry,
                "{:?}",
                decided.answer
            );
            black_box(decided);
        }
    });
    started.elapsed().as_nanos() as f64 / n as f64
}

fn time_ns(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let started = StdInstant::now();
    for i in 0..n {
        f(i);
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

struct Series {
    name: String,
    baseline: &'static str,
    ratios: Vec<f64>,
    decision_ns: Vec<f64>,
    baseline_ns: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(series: &[Series]) {
    println!("\n| decision | baseline | median decision | median baseline | ratio median | ratio min–max |");
    println!("|---|---|---|---|---|---|");
    for s in series {
        let (lo, hi) = s
            .ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        println!(
            "| {} | {} | {:.2} µs | {:.2} µs | {:.3} | {:.3}–{:.3} |",
            s.name,
            s.baseline,
            median(&s.decision_ns) / 1e3,
            median(&s.baseline_ns) / 1e3,
            median(&s.ratios),
            lo,
            hi
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let rounds: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(15);
    // `card` or `code` runs only that series.
    let only = args.iter().find(|a| *a == "card" || *a == "code").cloned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    eprintln!("building the world (1M riders)…");
    let world = world();
    let order = shuffled(RIDERS);
    let (moka, _) = baseline_maps();
    let mut series = Vec::new();
    let mut seq = 0u64;

    // Card taps (embedded) vs moka gets.
    const CARD_OPS: usize = 100_000;
    let mut card = Series {
        name: "card tap, embedded, 1M identities".into(),
        baseline: "moka get, 1M keys",
        ratios: vec![],
        decision_ns: vec![],
        baseline_ns: vec![],
    };
    for round in 0..rounds * usize::from(only.as_deref() != Some("code")) {
        let offset = round * CARD_OPS;
        let requests: Vec<GateRequest> = (0..CARD_OPS)
            .map(|i| {
                seq += 1;
                let number = CardNumber::parse(&card_number(order[(offset + i) % order.len()])).unwrap();
                request(
                    Credential::Card {
                        medium: CardMedium::Physical,
                        number,
                    },
                    "ratio-card",
                    seq,
                )
            })
            .collect();
        let baseline = || {
            time_ns(CARD_OPS, |i| {
                black_box(moka.get(&order[(offset + i) % order.len()]));
            })
        };
        let (d, b) = if round % 2 == 0 {
            let b = baseline();
            (decide_all(&rt, &world.authorizer, requests), b)
        } else {
            let d = decide_all(&rt, &world.authorizer, requests);
            (d, baseline())
        };
        card.ratios.push(d / b);
        card.decision_ns.push(d);
        card.baseline_ns.push(b);
    }
    if !card.ratios.is_empty() {
        series.push(card);
    }

    // Ride codes vs the bare signature check they contain.
    const CODE_OPS: usize = 2_000;
    let now = || Clock::System.now();
    let lifetime = Duration::from_secs(30);
    let mut forms: Vec<Form<'_>> = Vec::new();
    for ((alg, minter), (_, jwk)) in world.minters.iter().zip(&world.keys) {
        let sample = minter.code("acct-1", "sample", now(), lifetime).unwrap();
        forms.push(Form {
            name: format!("ride code, issuer-signed {alg}"),
            mint: Box::new(move |i| {
                minter
                    .code(&format!("acct-{}", i % RIDERS), &format!("r{i}"), now(), lifetime)
                    .unwrap()
            }),
            bare: (parsed_key(jwk), message_and_signature(&sample)),
        });
    }
    // A device-signed code costs one EdDSA check by the phone's key (its certificate is
    // cached); any EdDSA check over a code of the same size is the same work.
    let (eddsa_minter, eddsa_jwk) = world
        .minters
        .iter()
        .zip(&world.keys)
        .find(|((alg, _), _)| *alg == SigningAlg::EdDsa)
        .map(|((_, m), (_, j))| (m, j))
        .unwrap();
    for (alg, phone) in &world.phones {
        let sample = eddsa_minter.code("acct-1", "sample", now(), lifetime).unwrap();
        forms.push(Form {
            name: format!("ride code, device-signed EdDSA ({alg} certificate, cached)"),
            mint: Box::new(move |i| phone.code(&format!("d{i}"), now(), lifetime).unwrap()),
            bare: (parsed_key(eddsa_jwk), message_and_signature(&sample)),
        });
    }
    for form in forms.iter().filter(|_| only.as_deref() != Some("card")) {
        let (key, (message, signature)) = &form.bare;
        let mut s = Series {
            name: form.name.clone(),
            baseline: "bare signature check",
            ratios: vec![],
            decision_ns: vec![],
            baseline_ns: vec![],
        };
        for round in 0..rounds {
            // Minted before the clock starts: minting is not part of either side.
            let requests: Vec<GateRequest> = (0..CODE_OPS)
                .map(|_| {
                    seq += 1;
                    request(Credential::RideCode((form.mint)(seq)), "ratio-code", seq)
                })
                .collect();
            let baseline = || time_ns(CODE_OPS, |_| key.verify_sig(message, signature).unwrap());
            let (d, b) = if round % 2 == 0 {
                let b = baseline();
                (decide_all(&rt, &world.authorizer, requests), b)
            } else {
                let d = decide_all(&rt, &world.authorizer, requests);
                (d, baseline())
            };
            s.ratios.push(d / b);
            s.decision_ns.push(d);
            s.baseline_ns.push(b);
        }
        series.push(s);
    }
    println!(
        "\n{rounds} alternating rounds (ABBA); {CARD_OPS} card taps and {CODE_OPS} ride codes per round and side."
    );
    report(&series);
}

/// One kind of ride code: how to mint it, and the bare check it contains.
struct Form<'a> {
    name: String,
    mint: Box<dyn Fn(u64) -> String + 'a>,
    bare: (ParsedPublicKey, (Vec<u8>, Vec<u8>)),
}
