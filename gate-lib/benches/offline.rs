//! The gate library at size, in process: N linked cards (1% red), as a snapshot.
//!
//! - the snapshot: bytes, time to apply it (through the brake) and keep it on disk, and
//!   to open it again (a gate restarting);
//! - resuming: a delta of 10,000 changes, bytes and time, against the snapshot;
//! - deciding offline: a card tap (median and p99 of 20,000, each with its offline
//!   record written), and a ride code against the bare signature check it contains
//!   (alternating rounds, medians and their ratio).
//!
//! `cargo bench -p ridegate-gate --bench offline [-- N]` (default 1,000,000).

#![allow(clippy::unwrap_used)] // a benchmark that cannot set itself up should stop loudly

use std::time::{Duration, Instant};

use ridegate_adapters::credential::ride_code::{
    CodeMinter, IssuerSettings, IssuerSpec, RideCodeVerifier, SigningAlg, SigningKey, VerifierLimits,
};
use ridegate_adapters::ids::Pseudonymizer;
use ridegate_core::clock::Clock;
use ridegate_core::credential::{CardMedium, CardNumber, Credential, LinkKey};
use ridegate_core::decision::{GateContext, GateRequest, Rules};
use ridegate_core::gate_state::{CredentialTag, ENTRY_BYTES, Entry, EntryStatus};
use ridegate_core::model::{Colour, Direction, UnixMillis};
use ridegate_gate::{GateSettings, OfflineGate};
use ridegate_proto::pb;

fn card_number(i: u64) -> String {
    format!("1000{i:012}")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn request(gate_id: &str, credential: Credential, now: UnixMillis) -> GateRequest {
    GateRequest {
        request_id: String::new(),
        gate: GateContext {
            gate_id: gate_id.into(),
            station_id: "s1".into(),
            line_id: "l1".into(),
            direction: Direction::Entry,
            tapped_at: now,
            budget: None,
        },
        credential,
    }
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let clock = Clock::System;
    let now = clock.now();
    let pseudonymizer = Pseudonymizer::new(b"offline-benchmark-secret").unwrap();
    let key = SigningKey::generate(SigningAlg::Es256, "yitongxing-1").unwrap();
    let jwk = key.public_jwk().unwrap();
    let issuers = vec![IssuerSpec {
        id: "yitongxing".into(),
        name: "Yitongxing".into(),
        keys: vec![jwk],
        settings: IssuerSettings::default(),
    }];
    let config_json = serde_json::json!({
        "rules": Rules::default(),
        "issuers": issuers,
        "limits": VerifierLimits::default(),
        "credential_key": pseudonymizer.credentials().key_hex(),
    })
    .to_string();

    eprintln!("building {n} entries…");
    let tested = Some(now.plus_ms(-3_600_000));
    let mut entries = Vec::with_capacity(n as usize * ENTRY_BYTES);
    for i in 0..n {
        let number = card_number(i);
        let colour = if i % 100 == 99 { Colour::Red } else { Colour::Green };
        Entry {
            tag: CredentialTag::of(&pseudonymizer.credential(&LinkKey::Card { number: &number }).0),
            status: Some(EntryStatus {
                colour,
                negative_test_at: tested,
            }),
        }
        .encode(&mut entries);
    }
    // The account the ride codes below are for.
    Entry {
        tag: CredentialTag::of(
            &pseudonymizer
                .credential(&LinkKey::RideAccount {
                    issuer: "yitongxing",
                    account: "acct-1",
                })
                .0,
        ),
        status: Some(EntryStatus {
            colour: Colour::Green,
            negative_test_at: tested,
        }),
    }
    .encode(&mut entries);

    let dir = tempfile::tempdir().unwrap();
    let settings = || GateSettings::new("http://127.0.0.1:1", dir.path());
    let gate = OfflineGate::open(settings(), clock.clone()).unwrap();
    let begin = pb::SnapshotBegin {
        epoch: 1,
        version: 1,
        config_json,
        entries: n + 1,
    };
    let started = Instant::now();
    gate.apply_snapshot(&begin, &entries).unwrap();
    let apply = started.elapsed();
    let file = std::fs::metadata(dir.path().join("state.bin")).unwrap().len();
    drop(gate);
    let started = Instant::now();
    let gate = OfflineGate::open(settings(), clock.clone()).unwrap();
    let reopen = started.elapsed();
    assert_eq!(gate.status().entries as u64, n + 1);

    // Resume: 10,000 changes in one delta (green ↔ red for cards 0..10,000).
    let mut set = Vec::new();
    for i in 0..10_000u64 {
        let number = card_number(i);
        Entry {
            tag: CredentialTag::of(&pseudonymizer.credential(&LinkKey::Card { number: &number }).0),
            status: Some(EntryStatus {
                colour: Colour::Yellow,
                negative_test_at: tested,
            }),
        }
        .encode(&mut set);
    }
    let delta = pb::Delta {
        version: 2,
        set,
        removed: Vec::new(),
        config_json: String::new(),
    };
    let delta_bytes = delta.set.len();
    let started = Instant::now();
    gate.apply_delta(&delta).unwrap();
    let resume = started.elapsed();
    let held = gate.status().held;

    // Card taps, each one an offline record written.
    const TAPS: u64 = 20_000;
    let requests: Vec<GateRequest> = (0..TAPS)
        .map(|i| {
            let number = card_number((i * 7_919) % n);
            request(
                "g1",
                Credential::Card {
                    medium: CardMedium::Physical,
                    number: CardNumber::parse(&number).unwrap(),
                },
                now,
            )
        })
        .collect();
    let mut card_ns: Vec<f64> = Vec::with_capacity(TAPS as usize);
    for r in &requests {
        let started = Instant::now();
        std::hint::black_box(gate.decide(r).unwrap());
        card_ns.push(started.elapsed().as_nanos() as f64);
    }
    let card_p99 = {
        let mut sorted = card_ns.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() * 99 / 100]
    };
    let card_median = median(&mut card_ns);

    // Ride codes against the bare verification (the signature check and claims) in
    // alternating rounds.
    let minter = CodeMinter::new("yitongxing", key);
    let bare = RideCodeVerifier::new(&issuers, VerifierLimits::default()).unwrap();
    const ROUNDS: usize = 9;
    const CODES: usize = 300;
    let (mut code_ns, mut bare_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let codes: Vec<String> = (0..CODES)
            .map(|i| {
                minter
                    .code("acct-1", &format!("r{round}-{i}"), now, Duration::from_secs(30))
                    .unwrap()
            })
            .collect();
        let decide = || {
            let started = Instant::now();
            for code in &codes {
                let answer = gate
                    .decide(&request("g1", Credential::RideCode(code.clone()), now))
                    .unwrap();
                assert_eq!(answer.verdict, ridegate_core::model::Verdict::Allow);
            }
            started.elapsed().as_nanos() as f64 / CODES as f64
        };
        let verify = || {
            let started = Instant::now();
            for code in &codes {
                std::hint::black_box(bare.verify(code, now).unwrap());
            }
            started.elapsed().as_nanos() as f64 / CODES as f64
        };
        let (d, b) = if round % 2 == 0 {
            let b = verify();
            (decide(), b)
        } else {
            let d = decide();
            (d, verify())
        };
        code_ns.push(d);
        bare_ns.push(b);
        ratios.push(d / b);
    }

    println!("\n| what | figure |");
    println!("|---|---|");
    println!("| entries | {} ({} B each) |", n + 1, ENTRY_BYTES);
    println!(
        "| snapshot entries on the wire | {:.1} MB |",
        entries.len() as f64 / 1e6
    );
    println!("| state file | {:.1} MB |", file as f64 / 1e6);
    println!(
        "| apply the snapshot and keep it (fsync) | {:.2} s |",
        apply.as_secs_f64()
    );
    println!(
        "| open the state again (a gate restart) | {:.2} s |",
        reopen.as_secs_f64()
    );
    println!(
        "| resume: a delta of 10,000 changes | {:.0} kB, {:.1} ms (held by the brake: {held}) |",
        delta_bytes as f64 / 1e3,
        resume.as_secs_f64() * 1e3
    );
    println!(
        "| card tap offline (record written) | median {:.1} µs, p99 {:.1} µs |",
        card_median / 1e3,
        card_p99 / 1e3
    );
    println!(
        "| ride code offline / bare verification ({ROUNDS} alternating rounds) | {:.1} µs / {:.1} µs, ratio {:.2} |",
        median(&mut code_ns) / 1e3,
        median(&mut bare_ns) / 1e3,
        median(&mut ratios)
    );
}
