//! The durable embedded default: what ridegate acknowledged is there after `kill -9`
//! and a restart on the same data directory — links (one by one and in bulk), pushed
//! statuses, used ride codes and retry records — and the pseudonym secret it made.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use ridegate_adapters::test_util::{CallerKind, SigningAlg, synthetic_resident_id};
use ridegate_proto::pb::health_feed_client::HealthFeedClient;
use ridegate_proto::pb::{self, Reason, Verdict};
use tokio_stream::StreamExt as _;

use ridegate_tests::codes;
use ridegate_tests::*;

fn link_card(number: &str, person: u64) -> pb::LinkRequest {
    pb::LinkRequest {
        credential: Some(pb::LinkCredential {
            credential: Some(pb::link_credential::Credential::Card(pb::Card {
                medium: pb::CardMedium::Physical.into(),
                number: number.into(),
            })),
        }),
        id_number: synthetic_resident_id(person),
        consent: pb::Consent::UpgradeService.into(),
        staff_operator_id: String::new(),
    }
}

fn status(person: u64, colour: pb::HealthColour, set_at: i64) -> pb::StatusUpdate {
    pb::StatusUpdate {
        subject: Some(pb::status_update::Subject::IdNumber(synthetic_resident_id(person))),
        colour: colour.into(),
        set_at_unix_ms: set_at,
        negative_test_at_unix_ms: now() - 3_600_000,
    }
}

async fn decide(gateway: &Gateway, request: pb::AuthorizeRequest) -> pb::AuthorizeResponse {
    gateway.gate().await.authorize(request).await.unwrap().into_inner()
}

/// The answers for `cards` (all of them, over one `Taps` stream), by card number.
async fn outcomes(gateway: &Gateway, cards: &[String]) -> Vec<(String, (Verdict, Reason))> {
    let requests: Vec<pb::AuthorizeRequest> = cards.iter().map(|c| tap(card(c)).id(c)).collect();
    let mut results = gateway
        .gate()
        .await
        .taps(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(result) = results.next().await {
        let Some(pb::tap_result::Result::Decision(response)) = result.unwrap().result else {
            panic!("every tap here is well-formed");
        };
        out.push((response.request_id.clone(), outcome(&response)));
    }
    out
}

#[tokio::test]
async fn links_statuses_used_codes_and_retries_survive_kill_9_and_sigterm() {
    let builder = GatewayBuilder::new()
        .feed()
        .issuer("alipay", SigningAlg::EdDsa)
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .account("alipay", "acct-9", 9);
    let (gateway, issuers) = builder.start().await;
    let minter = &issuers[0].minter;

    // A card linked over the API, a status pushed for its rider, rider 1 turned red.
    let upgrade = gateway.token(CallerKind::UpgradeService, "upgrade-1", None);
    let mut links = gateway.links().await;
    links
        .link(authed(link_card("1000000000000009", 9), &upgrade))
        .await
        .unwrap();
    let platform = gateway.token(CallerKind::HealthPlatform, "health-platform", None);
    let pushed = pb::PublishRequest {
        updates: vec![
            status(9, pb::HealthColour::Green, now()),
            status(1, pb::HealthColour::Red, now()),
        ],
    };
    let published = HealthFeedClient::new(gateway.channel().await)
        .publish(authed(pushed, &platform))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((published.applied, published.rejected.len()), (2, 0));
    // A ride code used, and a tap a gate may retry.
    let qr = codes::valid(minter, "acct-9");
    let first = decide(&gateway, tap(code(&qr)).id("code-1")).await;
    assert_eq!(outcome(&first), (Verdict::Allow, Reason::HealthGreen));
    let answered = decide(&gateway, tap(card("1000000000000009")).id("retry-1")).await;
    assert_eq!(outcome(&answered), (Verdict::Allow, Reason::HealthGreen));
    // Used codes are written behind the tap, within a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let mut gateway = gateway.kill().await.restart(&builder).await;
    for round in ["after kill -9", "after SIGTERM"] {
        let linked = decide(&gateway, tap(card("1000000000000009"))).await;
        assert_eq!(outcome(&linked), (Verdict::Allow, Reason::HealthGreen), "{round}");
        let red = decide(&gateway, tap(card("1000000000000001"))).await;
        assert_eq!(
            outcome(&red),
            (Verdict::Deny, Reason::HealthRed),
            "{round}: the pushed status is newer than the file's, which is imported, not reset"
        );
        let again = decide(&gateway, tap(code(&qr)).id("code-2")).await;
        assert_eq!(outcome(&again), (Verdict::Deny, Reason::CodeReplayed), "{round}");
        let retried = decide(&gateway, tap(card("1000000000000009")).id("retry-1")).await;
        assert!(retried.retry, "{round}: the retry record was kept");
        assert_eq!(retried.decision_id, answered.decision_id, "{round}");
        let (exit, stopped) = gateway.terminate().await;
        assert!(exit.success(), "{round}");
        gateway = stopped.restart(&builder).await;
    }
}

#[tokio::test]
async fn every_acknowledged_bulk_batch_survives_kill_9_during_bulk_link() {
    const BATCHES: u64 = 40;
    const ROWS: u64 = 1_000;
    let builder = GatewayBuilder::new();
    let (gateway, _) = builder.start().await;
    let token = gateway.token(CallerKind::BackEnd, "bulk-2022", None);
    let number = |b: u64, i: u64| format!("30{:014}", b * ROWS + i);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let mut results = gateway
        .links()
        .await
        .bulk_link(authed(tokio_stream::wrappers::ReceiverStream::new(rx), &token))
        .await
        .unwrap()
        .into_inner();
    let sender = tokio::spawn(async move {
        for b in 0..BATCHES {
            let rows = (0..ROWS)
                .map(|i| pb::LinkRow {
                    credential: Some(pb::LinkCredential {
                        credential: Some(pb::link_credential::Credential::Card(pb::Card {
                            medium: pb::CardMedium::Physical.into(),
                            number: number(b, i),
                        })),
                    }),
                    subject: Some(pb::link_row::Subject::IdNumber(synthetic_resident_id(
                        10_000 + b * ROWS + i,
                    ))),
                })
                .collect();
            if tx.send(pb::LinkBatch { rows, sequence: b }).await.is_err() {
                return;
            }
        }
    });
    // Kill it once a few batches are acknowledged, with more in flight.
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 5 {
        let result = results.message().await.unwrap().expect("a result per batch");
        assert_eq!(result.linked as u64, ROWS);
        acknowledged.push(result.sequence);
    }
    let gateway = gateway.kill().await;
    sender.abort();
    let gateway = gateway.restart(&builder).await;

    let cards: Vec<String> = acknowledged
        .iter()
        .flat_map(|&b| (0..ROWS).map(move |i| number(b, i)))
        .collect();
    let answers = outcomes(&gateway, &cards).await;
    assert_eq!(answers.len(), cards.len());
    for (card, answer) in answers {
        assert_eq!(
            answer,
            (Verdict::Assist, Reason::NoHealthRecord),
            "card {card} of an acknowledged batch is linked"
        );
    }
}

#[tokio::test]
async fn every_acknowledged_status_survives_kill_9_during_ingest() {
    const BATCHES: u64 = 30;
    const ROWS: u64 = 50;
    let card_of = |person: u64| format!("40{person:014}");
    let mut builder = GatewayBuilder::new().feed();
    for person in 0..BATCHES * ROWS {
        builder = builder
            .card(&card_of(person), 20_000 + person)
            .status(20_000 + person, GREEN);
    }
    let (gateway, _) = builder.start().await;
    let token = gateway.token(CallerKind::HealthPlatform, "health-platform", None);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let mut acks = HealthFeedClient::new(gateway.channel().await)
        .ingest(authed(tokio_stream::wrappers::ReceiverStream::new(rx), &token))
        .await
        .unwrap()
        .into_inner();
    let sender = tokio::spawn(async move {
        for b in 0..BATCHES {
            let updates = (0..ROWS)
                .map(|i| status(20_000 + b * ROWS + i, pb::HealthColour::Red, now()))
                .collect();
            if tx.send(pb::StatusBatch { sequence: b, updates }).await.is_err() {
                return;
            }
        }
    });
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 5 {
        let ack = acks.message().await.unwrap().expect("an ack per batch");
        assert_eq!((ack.applied as u64, ack.rejected.len()), (ROWS, 0));
        acknowledged.push(ack.sequence);
    }
    let gateway = gateway.kill().await;
    sender.abort();
    let gateway = gateway.restart(&builder).await;

    let cards: Vec<String> = acknowledged
        .iter()
        .flat_map(|&b| (0..ROWS).map(move |i| card_of(b * ROWS + i)))
        .collect();
    for (card, answer) in outcomes(&gateway, &cards).await {
        assert_eq!(
            answer,
            (Verdict::Deny, Reason::HealthRed),
            "rider of card {card}: an acknowledged red status, not the file's older green"
        );
    }
}

#[tokio::test]
async fn codes_used_more_than_a_second_before_kill_9_under_load_stay_used() {
    let builder = GatewayBuilder::new()
        .issuer("alipay", SigningAlg::EdDsa)
        .account("alipay", "acct-5", 5)
        .status(5, GREEN);
    let (gateway, issuers) = builder.start().await;
    let minter = issuers[0].minter.clone();
    // Four gates tapping fresh codes as fast as they are answered.
    let used = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let mut gates = Vec::new();
    for _ in 0..4 {
        let (mut client, minter, used) = (gateway.gate().await, minter.clone(), used.clone());
        gates.push(tokio::spawn(async move {
            loop {
                let qr = codes::valid(&minter, "acct-5");
                let Ok(response) = client.authorize(tap(code(&qr))).await else {
                    return;
                };
                assert_eq!(outcome(&response.into_inner()), (Verdict::Allow, Reason::HealthGreen));
                used.lock().unwrap().push((Instant::now(), qr));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let killed_at = Instant::now();
    let gateway = gateway.kill().await;
    for gate in gates {
        let _ = gate.await;
    }
    let gateway = gateway.restart(&builder).await;

    let old: Vec<String> = used
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| killed_at.duration_since(*at) > Duration::from_secs(1))
        .map(|(_, qr)| qr.clone())
        .collect();
    assert!(old.len() > 10, "the load ran: {} codes", old.len());
    let mut client = gateway.gate().await;
    for qr in old {
        let response = client.authorize(tap(code(&qr))).await.unwrap().into_inner();
        assert_eq!(outcome(&response), (Verdict::Deny, Reason::CodeReplayed));
    }
}

#[tokio::test]
async fn a_generated_pseudonym_secret_is_kept_private_and_reused() {
    let builder = GatewayBuilder::new().generated_secret();
    let (gateway, _) = builder.start().await;
    let upgrade = gateway.token(CallerKind::UpgradeService, "upgrade-1", None);
    gateway
        .links()
        .await
        .link(authed(link_card("1000000000000031", 31), &upgrade))
        .await
        .unwrap();
    let secret = gateway.data_dir().join("identity.secret");
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    let kept = std::fs::read_to_string(&secret).unwrap();

    let gateway = gateway.kill().await.restart(&builder).await;
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        kept,
        "reused, not made again"
    );
    // The card's rider is looked up by the same pseudonym as before the restart.
    let lookup = pb::LookupRequest {
        subject: Some(pb::lookup_request::Subject::IdNumber(synthetic_resident_id(31))),
    };
    let found = gateway
        .links()
        .await
        .lookup(authed(lookup, &upgrade))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.links.len(), 1, "{found:?}");
}

#[tokio::test]
async fn a_data_directory_in_use_is_refused_naming_the_setting() {
    let builder = GatewayBuilder::new();
    let (gateway, _) = builder.start().await;
    let output = std::process::Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--audit", "/dev/null", "--data-dir"])
        .arg(gateway.data_dir())
        .env_remove("RIDEGATE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("storage.data_dir"), "{stderr}");
}
