//! Bulk link import: five million links from a JSON-lines file, as `ridegate serve
//! --links FILE` loads them.
//!
//! Measures (a) the import itself in-process, median of three runs, and (b) the real
//! binary from start to listening with that file, once. The population is two million
//! riders with cards, phone cards and ride accounts at several issuers, each line naming
//! the rider by ID number (validated and hashed on import).
//!
//! `cargo bench -p ridegate-tools --bench import [-- LINKS]` (default 5,000,000).

#![allow(clippy::unwrap_used)] // a benchmark that cannot set itself up should stop loudly

use std::io::{BufReader, BufWriter, Write as _};
use std::time::{Duration, Instant};

use ridegate_adapters::ids::{Pseudonymizer, synthetic_resident_id};
use ridegate_adapters::link::{MemoryLinks, read_links};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ISSUERS: [&str; 4] = ["yitongxing", "alipay", "unionpay", "cmb"];

fn write_population(path: &std::path::Path, links: u64) {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut written = 0u64;
    let mut rider = 0u64;
    while written < links {
        let id = synthetic_resident_id(rider);
        // Every rider has a card; most have a ride account; some a phone card too.
        writeln!(
            out,
            r#"{{"card": {{"number": "1000{rider:012}"}}, "id_number": "{id}"}}"#
        )
        .unwrap();
        written += 1;
        if written < links && rider % 4 != 3 {
            let issuer = ISSUERS[(rider % 4) as usize];
            writeln!(out, r#"{{"ride_account": {{"issuer": "{issuer}", "account": "{issuer}-{rider:010}"}}, "id_number": "{id}"}}"#)
                .unwrap();
            written += 1;
        }
        if written < links && rider.is_multiple_of(2) {
            writeln!(
                out,
                r#"{{"card": {{"number": "2000{rider:012}", "medium": "phone_nfc"}}, "id_number": "{id}"}}"#
            )
            .unwrap();
            written += 1;
        }
        rider += 1;
    }
    out.flush().unwrap();
}

fn main() {
    let links: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("links.jsonl");
    let started = Instant::now();
    write_population(&path, links);
    let size = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "wrote {links} links ({:.0} MB) in {:.1} s",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let pseudonymizer = Pseudonymizer::new(b"import-benchmark-secret").unwrap();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let store = MemoryLinks::default();
        let started = Instant::now();
        let file = std::fs::File::open(&path).unwrap();
        let now = ridegate_core::clock::Clock::System.now();
        let report = read_links(
            BufReader::with_capacity(1 << 20, file),
            &pseudonymizer,
            now,
            |_, c, record| store.link_now(c, &record).map(drop).map_err(|e| e.to_string()),
        )
        .unwrap();
        let elapsed = started.elapsed();
        assert_eq!((report.imported, report.rejected), (links, 0));
        assert_eq!(store.len() as u64, links);
        runs.push(elapsed);
    }
    runs.sort();
    let median = runs[1];
    println!(
        "in-process import: {links} links in {:.2} s (median of 3: {:.2} / {:.2} / {:.2} s) = {:.0} links/s",
        median.as_secs_f64(),
        runs[0].as_secs_f64(),
        runs[1].as_secs_f64(),
        runs[2].as_secs_f64(),
        links as f64 / median.as_secs_f64()
    );

    // The real binary, from exec to listening.
    let ready = dir.path().join("ready.json");
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ridegate"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--audit",
            "/dev/null",
            "--log",
            "warn",
            "--links",
        ])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--ready-file")
        .arg(&ready)
        .env("RIDEGATE_IDENTITY_SECRET", "import-benchmark-secret")
        .spawn()
        .unwrap();
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not ready after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let to_ready = started.elapsed();
    let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap_or(0))
        })
        .unwrap_or(0);
    child.kill().unwrap();
    let _ = child.wait();
    println!(
        "ridegate serve --links: listening {:.2} s after start ({:.0} links/s); resident memory {:.0} MB ({:.0} bytes per link)",
        to_ready.as_secs_f64(),
        links as f64 / to_ready.as_secs_f64(),
        rss_kb as f64 / 1e3,
        rss_kb as f64 * 1e3 / links as f64
    );
}
