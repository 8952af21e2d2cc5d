//! Writes the seed corpus: valid and near-valid inputs for each target, minted with
//! the fixed fuzz keys at the fixed clock. `cargo run --example make-corpus` from `fuzz/`.

use std::fs;
use std::path::Path;
use std::time::Duration;

use prost::Message as _;
use ridegate_fuzz::{NOW, minters, phone};
use ridegate_proto::pb;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("create the corpus folder");
    fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let (alipay, ytx) = minters();
    let life = Duration::from_secs(30);
    let codes = [
        alipay.code("acct-1", "j-1", NOW, life).expect("mint"),
        ytx.code("acct-2", "j-2", NOW, life).expect("mint"),
        phone(0, "cert-a").code("d-1", NOW, life).expect("mint"),
        phone(1, "cert-b").code("d-2", NOW, life).expect("mint"),
        alipay.code("acct-1", "j-3", NOW.plus_ms(-120_000), life).expect("mint"),
        ytx.code("acct-3", "j-4", NOW, Duration::from_secs(600)).expect("mint"),
        phone(0, "revoked-cert").code("d-3", NOW, life).expect("mint"),
    ];
    for (i, code) in codes.iter().enumerate() {
        write("ride_code", &format!("seed-{i}"), code.as_bytes());
        if let Some((cert, _)) = code.split_once('~') {
            write("device_certificate", &format!("seed-{i}"), cert.as_bytes());
        }
    }
    let taps = [
        pb::authorize_request::Credential::RideCode(pb::RideCode {
            qr_text: codes[0].clone(),
        }),
        pb::authorize_request::Credential::Card(pb::Card {
            medium: pb::CardMedium::Physical as i32,
            number: "1000754312345678".into(),
        }),
        pb::authorize_request::Credential::Ticket(pb::Ticket {
            kind: pb::TicketKind::SingleJourney as i32,
            number: "SJ-2022-0001".into(),
        }),
        pb::authorize_request::Credential::Uncovered(pb::UncoveredCredential {
            kind: pb::UncoveredKind::BankCard as i32,
        }),
    ];
    for (i, credential) in taps.into_iter().enumerate() {
        let request = pb::AuthorizeRequest {
            request_id: format!("r-{i}"),
            gate: Some(pb::GateContext {
                gate_id: "G-7".into(),
                station_id: "S0107".into(),
                line_id: "L1".into(),
                direction: pb::Direction::Entry as i32,
                tapped_at_unix_ms: NOW.0,
                budget_ms: 150,
            }),
            credential: Some(credential),
        };
        write("gate_request", &format!("seed-{i}"), &request.encode_to_vec());
    }
    let example = include_str!("../../deploy/ridegate.example.toml");
    write("config", "example", example.as_bytes());
    write("config", "minimal", b"[server]\nlisten = \"127.0.0.1:50061\"\n");
    write(
        "config",
        "policy",
        b"[policy]\nyellow = \"assist\"\nnegative_test_within = \"72h\"\n[policy.stations]\nS1 = \"shadow\"\n",
    );
}
