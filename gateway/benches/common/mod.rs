//! The world the decision benchmarks run in: one million riders, each with a card and a
//! ride account at two issuers (ES256 and EdDSA), green and tested, statuses in the
//! embedded store (as `ridegate serve` keeps them without Redis or a platform), and the
//! durable default behind it: each tap's retry record and used code are written behind
//! to a data directory in a temporary directory, as in service.

#![allow(dead_code, unreachable_pub)] // each benchmark uses part of it

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use ridegate::authorize::{Authorizer, Parts};
use ridegate::stores::{IdempotencyBackend, LinkBackend, ReplayBackend, StatusReader};
use ridegate_adapters::audit::JsonLinesAudit;
use ridegate_adapters::caller::CallerKind;
use ridegate_adapters::credential::ride_code::{
    CodeMinter, DeviceCodeMinter, IssuerSettings, IssuerSpec, RideCodeVerifier, SigningAlg, SigningKey, VerifierLimits,
};
use ridegate_adapters::health::MemoryHealth;
use ridegate_adapters::idempotency::MemoryIdempotency;
use ridegate_adapters::ids::{IdentityId, Pseudonymizer};
use ridegate_adapters::link::{Consent, LinkRecord, LinkTarget, MemoryLinks};
use ridegate_adapters::replay::MemoryReplayGuard;
use ridegate_adapters::storage::{Storage, StorageSettings};
use ridegate_core::clock::Clock;
use ridegate_core::credential::CardMedium;
use ridegate_core::credential::Credential;
use ridegate_core::decision::{GateContext, GateRequest, Rules};
use ridegate_core::model::{Colour, Direction, HealthStatus, UnixMillis};

pub const RIDERS: u64 = 1_000_000;

pub fn card_number(i: u64) -> String {
    format!("1000{i:012}")
}

/// A fixed shuffle of `0..n`, so lookups land on cold cache lines as real taps do.
pub fn shuffled(n: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..n).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for i in (1..order.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

pub struct World {
    pub authorizer: Authorizer,
    /// The data directory; removed when the world is dropped.
    pub data: tempfile::TempDir,
    pub minters: Vec<(SigningAlg, CodeMinter)>,
    pub phones: Vec<(SigningAlg, DeviceCodeMinter)>,
    pub keys: Vec<(SigningAlg, Jwk)>,
}

/// One million riders, each with a card and a ride account at every issuer, green and
/// tested.
pub fn world() -> World {
    let clock = Clock::System;
    let now = clock.now();
    let pseudonymizer = Pseudonymizer::new(b"benchmark-secret-0123456789").unwrap();
    let mut specs = Vec::new();
    let mut minters = Vec::new();
    let mut keys = Vec::new();
    for (id, alg) in [("yitongxing", SigningAlg::Es256), ("alipay", SigningAlg::EdDsa)] {
        let key = SigningKey::generate(alg, format!("{id}-1")).unwrap();
        keys.push((alg, key.public_jwk().unwrap()));
        specs.push(IssuerSpec {
            id: id.into(),
            name: id.into(),
            keys: vec![key.public_jwk().unwrap()],
            settings: IssuerSettings {
                algorithms: vec![alg, SigningAlg::EdDsa],
                max_certificate_lifetime: Duration::from_secs(86_400 * 30),
                ..IssuerSettings::default()
            },
        });
        minters.push((alg, CodeMinter::new(id, key)));
    }
    let verifier = RideCodeVerifier::new(&specs, VerifierLimits::default()).unwrap();
    let links = Arc::new(MemoryLinks::default());
    let statuses = Arc::new(MemoryHealth::default());
    let status = HealthStatus {
        colour: Colour::Green,
        set_at: now,
        negative_test_at: Some(now),
    };
    let caller: Arc<str> = Arc::from("benchmark");
    let mut identities = Vec::with_capacity(RIDERS as usize);
    for i in 0..RIDERS {
        let identity = IdentityId(pseudonymizer.request("rider", &i.to_string()).0);
        let targets = [
            LinkTarget::card(CardMedium::Physical, &card_number(i)).unwrap(),
            LinkTarget::ride_account("yitongxing", &format!("acct-{i}")).unwrap(),
            LinkTarget::ride_account("alipay", &format!("acct-{i}")).unwrap(),
        ];
        for target in targets {
            let record = LinkRecord {
                identity,
                class: target.class(),
                issuer: target.issuer().map(Arc::from),
                tail: target.tail(),
                linked_at: now,
                linked_by: CallerKind::BackEnd,
                caller_id: caller.clone(),
                staff_operator_id: None,
                consent: Consent::BulkProgramme,
                valid_until: None,
            };
            links
                .link_now(pseudonymizer.credential(&target.key()), &record)
                .unwrap();
        }
        statuses.put(identity, status);
        identities.push(identity);
    }
    let health = StatusReader::Embedded(statuses);
    let data = tempfile::tempdir().unwrap();
    let storage = Storage::open(&StorageSettings {
        data_dir: data.path().to_owned(),
        ..StorageSettings::default()
    })
    .unwrap();
    let audit = Arc::new(JsonLinesAudit::new(Box::new(std::io::sink())).unwrap());
    let authorizer = Authorizer::new(Parts {
        clock,
        pseudonymizer,
        verifier,
        links: LinkBackend::Memory(links),
        health,
        replay: ReplayBackend::Durable(MemoryReplayGuard::default(), storage.clone()),
        idempotency: IdempotencyBackend::Durable(MemoryIdempotency::default(), storage),
        shared: None,
        rules: Rules::default(),
        // Every benchmarked tap has a new request id, and the benchmark taps ~1,000× faster
        // than a station group. A window of 0.2 s keeps the request-record map at about
        // the size it has in service (400 taps/s × 120 s ≈ 48k) instead of 260k/s × 120 s.
        retry_window: Duration::from_millis(200),
        audit,
        metrics: Arc::default(),
    });
    let phones = minters
        .iter()
        .map(|(alg, minter)| {
            let device = SigningKey::generate(SigningAlg::EdDsa, "phone").unwrap();
            let cert = minter
                .device_certificate("acct-7", "cert-7", &device, now, Duration::from_secs(86_400))
                .unwrap();
            (*alg, DeviceCodeMinter::new(cert, device))
        })
        .collect();
    World {
        authorizer,
        data,
        minters,
        phones,
        keys,
    }
}

/// A tap with a request id unique to `series` and `n` (a reused id would be answered
/// from its idempotency record).
pub fn request(credential: Credential, series: &str, n: u64) -> GateRequest {
    GateRequest {
        request_id: format!("{series}-{n}"),
        gate: GateContext {
            gate_id: "L10-S07-G03".into(),
            station_id: "S07".into(),
            line_id: "L10".into(),
            direction: Direction::Entry,
            tapped_at: UnixMillis(0),
            budget: None,
        },
        credential,
    }
}

/// The public key of `jwk` parsed once, as ridegate holds it: the bare signature check
/// every ride-code decision contains.
pub fn parsed_key(jwk: &Jwk) -> ParsedPublicKey {
    let (verification, public): (&'static dyn VerificationAlgorithm, Vec<u8>) = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => {
            let mut point = vec![4u8];
            point.extend(URL_SAFE_NO_PAD.decode(&p.x).unwrap());
            point.extend(URL_SAFE_NO_PAD.decode(&p.y).unwrap());
            (&ECDSA_P256_SHA256_FIXED, point)
        }
        AlgorithmParameters::OctetKeyPair(p) => (&ED25519, URL_SAFE_NO_PAD.decode(&p.x).unwrap()),
        _ => unreachable!("ridegate keys are EC or OKP"),
    };
    ParsedPublicKey::new(verification, public).unwrap()
}

/// A code's signed message and raw signature, for the bare check.
pub fn message_and_signature(code: &str) -> (Vec<u8>, Vec<u8>) {
    let (message, signature) = code.rsplit_once('.').unwrap();
    (message.as_bytes().to_vec(), URL_SAFE_NO_PAD.decode(signature).unwrap())
}

/// A bare moka cache and a std HashMap over the same one-million-key working set.
pub fn baseline_maps() -> (moka::sync::Cache<u64, u64>, HashMap<u64, u64>) {
    let moka = moka::sync::Cache::new(2 * RIDERS);
    let mut map = HashMap::with_capacity(RIDERS as usize);
    for i in 0..RIDERS {
        moka.insert(i, i);
        map.insert(i, i);
    }
    moka.run_pending_tasks();
    (moka, map)
}
