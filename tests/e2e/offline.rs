//! Offline gates: the gate library (`ridegate-gate`) follows the real binary's
//! `GateState` feed, keeps deciding — the same verdicts and reasons, marked offline —
//! while ridegate is stopped, resumes without a snapshot when it returns, and uploads
//! what it decided, whose ride codes ridegate then refuses.

use std::time::{Duration, Instant};

use ridegate_adapters::test_util::{CallerKind, SigningAlg, synthetic_resident_id};
use ridegate_core::clock::Clock;
use ridegate_core::credential::{CardMedium, CardNumber, Credential};
use ridegate_core::decision::{GateContext, GateRequest};
use ridegate_core::model::{Direction, Reason as CoreReason, UnixMillis, Verdict as CoreVerdict};
use ridegate_gate::{GateSettings, OfflineAnswer, OfflineGate};
use ridegate_proto::pb::gate_state_client::GateStateClient;
use ridegate_proto::pb::health_feed_client::HealthFeedClient;
use ridegate_proto::pb::{self, Reason, Verdict};

use ridegate_tests::codes;
use ridegate_tests::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn offline_tap(gate_id: &str, credential: Credential) -> GateRequest {
    GateRequest {
        request_id: String::new(),
        gate: GateContext {
            gate_id: gate_id.into(),
            station_id: "s1".into(),
            line_id: "l1".into(),
            direction: Direction::Entry,
            tapped_at: UnixMillis(now()),
            budget: None,
        },
        credential,
    }
}

fn offline_card(number: &str) -> Credential {
    Credential::Card {
        medium: CardMedium::Physical,
        number: CardNumber::parse(number).unwrap(),
    }
}

fn said(answer: OfflineAnswer) -> (CoreVerdict, CoreReason) {
    assert!(answer.offline);
    (answer.verdict, answer.reason)
}

async fn publish(gateway: &Gateway, person: u64, colour: pb::HealthColour) {
    let token = gateway.token(CallerKind::HealthPlatform, "health-platform", None);
    let update = pb::StatusUpdate {
        subject: Some(pb::status_update::Subject::IdNumber(synthetic_resident_id(person))),
        colour: colour.into(),
        set_at_unix_ms: now(),
        negative_test_at_unix_ms: now() - 3_600_000,
    };
    let published = HealthFeedClient::new(gateway.channel().await)
        .publish(authed(pb::PublishRequest { updates: vec![update] }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(published.applied, 1, "{:?}", published.rejected);
}

/// A gate library following ridegate on `port`, keeping its state in `dir`, retrying
/// every 100 ms.
fn open_gate(port: u16, dir: &std::path::Path) -> OfflineGate {
    let settings = GateSettings {
        retry_every: Duration::from_millis(100),
        ..GateSettings::new(format!("http://127.0.0.1:{port}"), dir)
    };
    OfflineGate::open(settings, Clock::System).unwrap()
}

/// Waits up to 10 s for `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} never happened");
}

#[tokio::test]
async fn a_gate_library_decides_while_ridegate_is_stopped_then_resumes_and_uploads() {
    let port = free_port();
    let builder = GatewayBuilder::new()
        .feed()
        .issuer("yitongxing", SigningAlg::Es256)
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .card("1000000000000002", 2)
        .status(2, GREEN)
        .account("yitongxing", "acct-3", 3)
        .status(3, GREEN)
        .arg("--listen")
        .arg(&format!("127.0.0.1:{port}"));
    let (gateway, issuers) = builder.start().await;
    let state_dir = tempfile::tempdir().unwrap();
    let gate = open_gate(port, state_dir.path());
    let follower = gate.follow();
    eventually("the snapshot", || gate.status().entries == 3).await;

    // Rider 2 turns red while the gate follows: the change reaches it.
    let version = gate.status().version;
    let pushed = Instant::now();
    publish(&gateway, 2, pb::HealthColour::Red).await;
    eventually("the change at the gate", || gate.status().version > version).await;
    let reached_in = pushed.elapsed();
    assert!(reached_in < Duration::from_secs(2), "{reached_in:?}");
    let before_stop = gate.status();

    // ridegate stops: the gate decides alone.
    let (exit, stopped) = gateway.terminate().await;
    assert!(exit.success());
    assert!(
        !stopped.log().contains("drain grace expired"),
        "the feed ends at the drain, so a stop does not wait for gates: {}",
        stopped.log()
    );
    let qr = codes::valid(&issuers[0].minter, "acct-3");
    let answers = [
        said(
            gate.decide(&offline_tap("g1", offline_card("1000000000000001")))
                .unwrap(),
        ),
        said(
            gate.decide(&offline_tap("g1", offline_card("1000000000000002")))
                .unwrap(),
        ),
        said(
            gate.decide(&offline_tap("g1", offline_card("1000000000000009")))
                .unwrap(),
        ),
        said(
            gate.decide(&offline_tap("g1", Credential::RideCode(qr.clone())))
                .unwrap(),
        ),
        said(
            gate.decide(&offline_tap("g2", Credential::RideCode(qr.clone())))
                .unwrap(),
        ),
    ];
    assert_eq!(
        answers,
        [
            (CoreVerdict::Allow, CoreReason::HealthGreen),
            (CoreVerdict::Deny, CoreReason::HealthRed),
            (CoreVerdict::Assist, CoreReason::NotLinked),
            (CoreVerdict::Allow, CoreReason::HealthGreen),
            (CoreVerdict::Deny, CoreReason::CodeReplayed),
        ]
    );
    assert_eq!(gate.status().pending_uploads, 5);

    // ridegate returns on the same port and data directory: the gate resumes from its
    // version (no snapshot) and uploads.
    let gateway = stopped.restart(&builder).await;
    eventually("the upload", || gate.status().pending_uploads == 0).await;
    let after = gate.status();
    assert_eq!(
        after.epoch, before_stop.epoch,
        "same epoch: resumed, not a new snapshot"
    );
    assert!(after.version >= before_stop.version);
    assert_eq!(
        gateway.metric("ridegate_gate_state_snapshots_total").await,
        0.0,
        "the restarted ridegate sent no snapshot"
    );
    let offline: Vec<serde_json::Value> = gateway.audit().into_iter().filter(|e| e["offline"] == true).collect();
    assert_eq!(offline.len(), 5, "every offline decision is in the audit trail");
    assert!(
        offline
            .iter()
            .any(|e| e["reason"] == "code_replayed" && e["gate_id"] == "g2")
    );
    // The code used offline is refused online.
    let online = gateway
        .gate()
        .await
        .authorize(tap(code(&qr)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&online), (Verdict::Deny, Reason::CodeReplayed));

    // A crash: ridegate comes back in a new epoch, and the gate takes its snapshot.
    let gateway = gateway.kill().await.restart(&builder).await;
    eventually("the new epoch at the gate", || gate.status().epoch != after.epoch).await;
    assert_eq!(gateway.metric("ridegate_gate_state_snapshots_total").await, 1.0);
    assert_eq!(gate.status().entries, 3);
    let still_red = gate
        .decide(&offline_tap("g1", offline_card("1000000000000002")))
        .unwrap();
    assert_eq!(said(still_red), (CoreVerdict::Deny, CoreReason::HealthRed));
    follower.abort();
}

#[tokio::test]
async fn a_follower_from_another_epoch_gets_a_snapshot_and_a_bad_upload_is_refused() {
    let builder = GatewayBuilder::new().card("1000000000000001", 1).status(1, GREEN);
    let (gateway, _) = builder.start().await;
    let mut client = GateStateClient::new(gateway.channel().await);
    let mut updates = client
        .follow(pb::FollowRequest {
            group: "line-1".into(),
            from_version: 42,
            epoch: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::StateUpdate {
        kind: Some(pb::state_update::Kind::Begin(begin)),
    }) = updates.message().await.unwrap()
    else {
        panic!("a snapshot first");
    };
    assert_eq!(begin.entries, 1);
    let config: serde_json::Value = serde_json::from_str(&begin.config_json).unwrap();
    assert_eq!(config["credential_key"].as_str().unwrap().len(), 32);
    let Some(pb::StateUpdate {
        kind: Some(pb::state_update::Kind::Chunk(chunk)),
    }) = updates.message().await.unwrap()
    else {
        panic!("its entries");
    };
    assert_eq!(chunk.entries.len(), 13);
    // No raw card number anywhere in what a gate is sent.
    assert!(!begin.config_json.contains("1000000000000001"));
    // Then the end, and heartbeats while nothing changes.
    assert!(matches!(
        updates.message().await.unwrap().and_then(|u| u.kind),
        Some(pb::state_update::Kind::End(_))
    ));
    assert!(matches!(
        updates.message().await.unwrap().and_then(|u| u.kind),
        Some(pb::state_update::Kind::Heartbeat(_))
    ));

    // A decision that cannot be recorded is dropped and reported, with the field named;
    // the good one beside it lands, once, however often the upload is sent.
    let bad = pb::OfflineDecision {
        gate_id: "g1".into(),
        direction: pb::Direction::Entry.into(),
        ..pb::OfflineDecision::default()
    };
    let good = offline_decision("g1", [7; 16]);
    let summary = client
        .upload(tokio_stream::iter(vec![bad, good.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.recorded, summary.rejected), (1, 1));
    assert!(
        summary.first_rejection.contains("credential_kind"),
        "{}",
        summary.first_rejection
    );
    let again = client
        .upload(tokio_stream::iter(vec![good]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.recorded, again.duplicates), (0, 1));
}

#[tokio::test]
async fn gate_sim_answers_online_while_ridegate_answers_and_offline_when_it_does_not() {
    let (gateway, _) = GatewayBuilder::new().start().await;
    let run = |target: String, state: std::path::PathBuf, extra: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary())
                .args(["gate-sim", &target, "--state-dir"])
                .arg(state)
                .args(["--rate", "25", "-z", "2s", "--gates", "2"])
                .args(extra)
                .output()
                .unwrap()
        })
    };
    let state = tempfile::tempdir().unwrap();
    let online = run(gateway.addr.clone(), state.path().join("a"), &[]).await.unwrap();
    assert!(online.status.success(), "{}", String::from_utf8_lossy(&online.stderr));
    let table = String::from_utf8_lossy(&online.stdout).into_owned();
    assert!(
        table.contains("| online | VERDICT_ASSIST | REASON_NOT_LINKED |"),
        "{table}"
    );
    assert!(!table.contains("| offline |"), "{table}");
    // Nobody listens there: every tap is decided by the library, which never had a
    // state, so riders go to staff.
    let dead = format!("127.0.0.1:{}", free_port());
    let offline = run(dead, state.path().join("b"), &["--budget", "50ms"]).await.unwrap();
    assert!(offline.status.success(), "{}", String::from_utf8_lossy(&offline.stderr));
    let table = String::from_utf8_lossy(&offline.stdout).into_owned();
    assert!(
        table.contains("| offline | VERDICT_ASSIST | REASON_HEALTH_UNAVAILABLE |"),
        "{table}"
    );
    let bad = std::process::Command::new(binary())
        .args(["gate-sim", &gateway.addr, "--gates", "0", "--state-dir"])
        .arg(state.path().join("c"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--gates"));
}

#[tokio::test]
async fn on_the_shared_tier_a_gate_resumes_at_another_instance_and_its_state_ages_while_redis_is_down() {
    let mut redis = ridegate_tests::redis::RedisServer::start();
    let (port_a, port_b) = (free_port(), free_port());
    let builder = |port: u16| {
        GatewayBuilder::new()
            .feed()
            .card("1000000000000001", 1)
            .status(1, GREEN)
            .card("1000000000000002", 2)
            .status(2, GREEN)
            .arg("--redis")
            .arg(&redis.url())
            .arg("--listen")
            .arg(&format!("127.0.0.1:{port}"))
    };
    let (a, _) = builder(port_a).start().await;
    let (b, _) = builder(port_b).start().await;
    let state_dir = tempfile::tempdir().unwrap();
    let gate = open_gate(port_a, state_dir.path());
    let follower = gate.follow();
    eventually("the snapshot of A's copy", || gate.status().entries == 2).await;

    // A status pushed through B reaches the gate through A, by the change stream.
    let version = gate.status().version;
    let pushed = Instant::now();
    publish(&b, 2, pb::HealthColour::Red).await;
    eventually("the change at the gate", || gate.status().version > version).await;
    assert!(pushed.elapsed() < Duration::from_secs(2), "{:?}", pushed.elapsed());
    let red = gate
        .decide(&offline_tap("g1", offline_card("1000000000000002")))
        .unwrap();
    assert_eq!(said(red), (CoreVerdict::Deny, CoreReason::HealthRed));

    // A stops; meanwhile rider 1 turns red through B. The gate, pointed at B, resumes
    // from its version (versions are stream positions, the same on both) and gets the
    // change as a delta, without a snapshot.
    let before = gate.status();
    follower.abort();
    drop(gate);
    let (exit, _a) = a.terminate().await;
    assert!(exit.success());
    publish(&b, 1, pb::HealthColour::Red).await;
    let gate = open_gate(port_b, state_dir.path());
    let follower = gate.follow();
    eventually("the delta from B", || gate.status().version > before.version).await;
    let after = gate.status();
    assert_eq!((after.epoch, after.entries), (before.epoch, 2));
    let red = gate
        .decide(&offline_tap("g1", offline_card("1000000000000001")))
        .unwrap();
    assert_eq!(said(red), (CoreVerdict::Deny, CoreReason::HealthRed));
    assert_eq!(
        b.metric("ridegate_gate_state_snapshots_total").await,
        0.0,
        "B sent no snapshot"
    );

    // Redis comes back empty: B cannot know what changed, tells the gate nothing, and
    // the gate's state ages (a heartbeat would have reset it within a second).
    redis.restart();
    eventually("the state ageing at the gate", || {
        gate.status().state_age_ms.is_some_and(|age| age > 3_000)
    })
    .await;
    let still_red = gate
        .decide(&offline_tap("g1", offline_card("1000000000000002")))
        .unwrap();
    assert_eq!(
        said(still_red),
        (CoreVerdict::Deny, CoreReason::HealthRed),
        "the last known state holds"
    );
    follower.abort();
}

#[tokio::test]
async fn on_redis_cluster_the_copy_holds_the_links_of_every_node() {
    let cluster = ridegate_tests::redis::RedisCluster::start();
    let port = free_port();
    let mut builder = GatewayBuilder::new()
        .feed()
        .arg("--redis-cluster")
        .arg(&cluster.seeds())
        .arg("--listen")
        .arg(&format!("127.0.0.1:{port}"));
    // Enough links that every node holds some.
    for person in 1..=30u64 {
        builder = builder
            .card(&format!("10000000000{person:05}"), person)
            .status(person, GREEN);
    }
    let (gateway, _) = builder.start().await;
    for node in &cluster.nodes {
        let keys = node.cli(&["--scan", "--pattern", "rg:l:*"]);
        assert!(keys.lines().count() > 0, "every node holds links");
    }
    let state_dir = tempfile::tempdir().unwrap();
    let gate = open_gate(port, state_dir.path());
    let follower = gate.follow();
    eventually("the snapshot", || gate.status().entries == 30).await;
    let version = gate.status().version;
    publish(&gateway, 17, pb::HealthColour::Red).await;
    eventually("the change", || gate.status().version > version).await;
    let red = gate
        .decide(&offline_tap("g1", offline_card("1000000000000017")))
        .unwrap();
    assert_eq!(said(red), (CoreVerdict::Deny, CoreReason::HealthRed));
    let green = gate
        .decide(&offline_tap("g1", offline_card("1000000000000018")))
        .unwrap();
    assert_eq!(said(green), (CoreVerdict::Allow, CoreReason::HealthGreen));
    follower.abort();
}
