//! Two ridegate instances sharing one Redis, and one Redis Cluster: a ride code used on
//! one is replayed on the other, a link made through one resolves on the other, a
//! status pushed through one changes the other's next decision within a second — and
//! when Redis dies mid-stream every tap is still answered before its deadline, until
//! Redis is back and used again.

use std::time::{Duration, Instant};

use ridegate_adapters::test_util::{CallerKind, SigningAlg, synthetic_resident_id};
use ridegate_proto::pb::health_feed_client::HealthFeedClient;
use ridegate_proto::pb::{self, Reason, Verdict};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use ridegate_tests::codes;
use ridegate_tests::redis::{RedisCluster, RedisServer};
use ridegate_tests::*;

const PROPAGATION: Duration = Duration::from_secs(1);

fn builder(flag: &str, target: &str) -> GatewayBuilder {
    GatewayBuilder::new()
        .issuer("alipay", SigningAlg::EdDsa)
        .account("alipay", "acct-1", 1)
        .status(1, GREEN)
        .card("1000000000000002", 2)
        .status(2, GREEN)
        .status(3, GREEN)
        .feed()
        .arg(flag)
        .arg(target)
}

async fn shared_state(gateway: &Gateway) -> Option<ServingStatus> {
    let mut health = HealthClient::new(gateway.channel().await);
    let response = health
        .check(HealthCheckRequest {
            service: "ridegate.v1.SharedState".into(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status())
}

async fn wait_shared_state(gateway: &Gateway, want: ServingStatus, within: Duration) {
    let started = Instant::now();
    while shared_state(gateway).await != Some(want) {
        assert!(
            started.elapsed() < within,
            "SharedState not {want:?} within {within:?}:\n{}",
            gateway.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Taps `credential` at `gateway` until `want` comes back; returns how long it took.
async fn until_reason(gateway: &Gateway, credential: &pb::authorize_request::Credential, want: Reason) -> Duration {
    let mut gate = gateway.gate().await;
    let started = Instant::now();
    loop {
        let response = gate.authorize(tap(credential.clone())).await.unwrap().into_inner();
        if response.reason() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < 5 * PROPAGATION,
            "still {:?} after 5 s",
            response.reason()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn link_card(gateway: &Gateway, number: &str, person: u64) {
    let token = gateway.token(CallerKind::UpgradeService, "upgrade", None);
    let request = pb::LinkRequest {
        credential: Some(pb::LinkCredential {
            credential: Some(pb::link_credential::Credential::Card(pb::Card {
                medium: pb::CardMedium::Physical.into(),
                number: number.into(),
            })),
        }),
        id_number: synthetic_resident_id(person),
        consent: pb::Consent::UpgradeService.into(),
        staff_operator_id: String::new(),
    };
    gateway.links().await.link(authed(request, &token)).await.unwrap();
}

async fn publish(gateway: &Gateway, person: u64, colour: pb::HealthColour) {
    let token = gateway.token(CallerKind::HealthPlatform, "health-platform", None);
    let update = pb::StatusUpdate {
        subject: Some(pb::status_update::Subject::IdNumber(synthetic_resident_id(person))),
        colour: colour.into(),
        set_at_unix_ms: now(),
        negative_test_at_unix_ms: now() - 3_600_000,
    };
    let response = HealthFeedClient::new(gateway.channel().await)
        .publish(authed(pb::PublishRequest { updates: vec![update] }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.applied, response.rejected.len()), (1, 0), "{response:?}");
}

async fn two_instances_agree(flag: &str, target: &str) {
    let builder = builder(flag, target);
    let (a, issuers) = builder.start().await;
    let (b, _) = builder.start().await;
    wait_shared_state(&a, ServingStatus::Serving, Duration::from_secs(5)).await;
    wait_shared_state(&b, ServingStatus::Serving, Duration::from_secs(5)).await;
    let (mut gate_a, mut gate_b) = (a.gate().await, b.gate().await);

    // A ride code used on one instance is a replay on the other; a retry of the same
    // request on the other gets the first answer.
    let qr = codes::valid(&issuers[0].minter, "acct-1");
    let first = gate_a.authorize(tap(code(&qr)).id("tap-1")).await.unwrap().into_inner();
    assert_eq!(outcome(&first), (Verdict::Allow, Reason::HealthGreen));
    let replayed = gate_b.authorize(tap(code(&qr)).id("tap-2")).await.unwrap().into_inner();
    assert_eq!(outcome(&replayed), (Verdict::Deny, Reason::CodeReplayed));
    let retried = gate_b.authorize(tap(code(&qr)).id("tap-1")).await.unwrap().into_inner();
    assert_eq!(
        (retried.retry, retried.decision_id.as_str()),
        (true, first.decision_id.as_str())
    );

    // A link made through one resolves on the other (whose cache said "not linked").
    assert_eq!(
        outcome(
            &gate_b
                .authorize(tap(card("1000000000000003")))
                .await
                .unwrap()
                .into_inner()
        )
        .1,
        Reason::NotLinked
    );
    link_card(&a, "1000000000000003", 3).await;
    let took = until_reason(&b, &card("1000000000000003"), Reason::HealthGreen).await;
    assert!(took < PROPAGATION, "link reached the other instance after {took:?}");

    // A status pushed through one changes the other's next decision within a second.
    assert_eq!(
        outcome(
            &gate_b
                .authorize(tap(card("1000000000000002")))
                .await
                .unwrap()
                .into_inner()
        )
        .1,
        Reason::HealthGreen
    );
    publish(&a, 2, pb::HealthColour::Red).await;
    let took = until_reason(&b, &card("1000000000000002"), Reason::HealthRed).await;
    assert!(took < PROPAGATION, "status reached the other instance after {took:?}");
    eprintln!("propagation to the other instance: {took:?}");
}

#[tokio::test]
async fn two_instances_share_one_redis() {
    let redis = RedisServer::start();
    two_instances_agree("--redis", &redis.url()).await;
    // Nothing personal in Redis: keys and values name pseudonyms only.
    let dump = redis.cli(&["--scan"]);
    assert!(
        !dump.contains("1000000000000003") && !dump.contains(&synthetic_resident_id(3)),
        "{dump}"
    );
    for key in dump.lines().filter(|k| k.starts_with("rg:l:")).take(5) {
        let value = redis.cli(&["GET", key]);
        assert!(
            !value.contains(&synthetic_resident_id(3)) && !value.contains("1000000000000003"),
            "{value}"
        );
    }
}

#[tokio::test]
async fn two_instances_share_a_three_master_redis_cluster() {
    let cluster = RedisCluster::start();
    two_instances_agree("--redis-cluster", &cluster.seeds()).await;
    // The keys really are spread over the masters.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["DBSIZE"]).trim() != "0")
        .count();
    assert!(holding >= 2, "keys on {holding} of 3 masters");
}

#[tokio::test]
async fn when_redis_dies_every_tap_is_answered_in_time_and_redis_is_used_again_when_back() {
    let mut redis = RedisServer::start();
    let builder = builder("--redis", &redis.url());
    let (a, issuers) = builder.start().await;
    let (b, _) = builder.start().await;
    wait_shared_state(&a, ServingStatus::Serving, Duration::from_secs(5)).await;
    let budget = Duration::from_millis(200);
    // Warm A's caches for the card and the ride account, then tap steadily while Redis
    // is killed.
    until_reason(&a, &card("1000000000000002"), Reason::HealthGreen).await;
    let warm = codes::valid(&issuers[0].minter, "acct-1");
    assert_eq!(
        outcome(&a.gate().await.authorize(tap(code(&warm))).await.unwrap().into_inner()).1,
        Reason::HealthGreen
    );
    let taps = {
        let gate = a.gate().await;
        tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..60 {
                let mut gate = gate.clone();
                let mut request = tonic::Request::new(tap(card("1000000000000002")).id(&format!("steady-{i}")));
                request.set_timeout(budget);
                let started = Instant::now();
                let response = gate.authorize(request).await;
                results.push((response.map(tonic::Response::into_inner), started.elapsed()));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            results
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    wait_shared_state(&a, ServingStatus::NotServing, Duration::from_secs(3)).await;
    // A ride code during the outage: checked against A's own memory of used codes, the
    // link and status from A's caches; answered, and marked degraded.
    let qr = codes::valid(&issuers[0].minter, "acct-1");
    let during = a.gate().await.authorize(tap(code(&qr))).await.unwrap().into_inner();
    assert_eq!(outcome(&during), (Verdict::Allow, Reason::HealthGreen));
    assert!(during.degraded);
    let again = a.gate().await.authorize(tap(code(&qr))).await.unwrap().into_inner();
    assert_eq!(
        outcome(&again).1,
        Reason::CodeReplayed,
        "the local guard still refuses a second use here"
    );
    // A credential A never saw cannot be resolved: the unavailable-policy answers.
    let unknown = a
        .gate()
        .await
        .authorize(tap(card("1000000000000009")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (outcome(&unknown), unknown.degraded),
        ((Verdict::Assist, Reason::HealthUnavailable), true)
    );
    let results = taps.await.unwrap();
    let mut degraded = 0;
    for (i, (response, took)) in results.iter().enumerate() {
        let response = response.as_ref().unwrap_or_else(|e| panic!("tap {i} failed: {e}"));
        assert!(*took < budget, "tap {i} answered after {took:?}");
        assert_eq!(outcome(response), (Verdict::Allow, Reason::HealthGreen), "tap {i}");
        degraded += usize::from(response.degraded);
    }
    assert!(
        degraded > 10,
        "answers during the outage are marked degraded ({degraded})"
    );

    // Redis comes back (empty: it keeps nothing on disk) and is used again.
    redis.restart();
    wait_shared_state(&a, ServingStatus::Serving, Duration::from_secs(5)).await;
    wait_shared_state(&b, ServingStatus::Serving, Duration::from_secs(5)).await;
    let qr = codes::valid(&issuers[0].minter, "acct-1");
    a.gate().await.authorize(tap(code(&qr)).id("after-1")).await.unwrap();
    let replayed = b
        .gate()
        .await
        .authorize(tap(code(&qr)).id("after-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        outcome(&replayed),
        (Verdict::Deny, Reason::CodeReplayed),
        "the used code is shared again\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert!(!replayed.degraded);
    // And the change stream carries changes again. Redis came back empty, so the
    // rider's status is gone too: B first sees "not linked", then (the link arriving)
    // "no health record", then (the status arriving) green.
    let fresh_card = card("1000000000000003");
    assert_eq!(
        outcome(
            &b.gate()
                .await
                .authorize(tap(fresh_card.clone()))
                .await
                .unwrap()
                .into_inner()
        )
        .1,
        Reason::NotLinked
    );
    link_card(&a, "1000000000000003", 3).await;
    let took = until_reason(&b, &fresh_card, Reason::NoHealthRecord).await;
    assert!(
        took < PROPAGATION,
        "after the restart a link reached the other instance after {took:?}"
    );
    publish(&a, 3, pb::HealthColour::Green).await;
    let took = until_reason(&b, &fresh_card, Reason::HealthGreen).await;
    assert!(
        took < PROPAGATION,
        "after the restart a status reached the other instance after {took:?}"
    );
}

#[tokio::test]
async fn an_instance_started_while_redis_is_down_serves_degraded_then_uses_redis_when_it_appears() {
    // A port where nothing listens yet; Redis will be started there.
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let (gateway, _) = builder("--redis", &url).start().await;
    wait_shared_state(&gateway, ServingStatus::NotServing, Duration::from_secs(3)).await;
    let response = gateway
        .gate()
        .await
        .authorize(tap(card("1000000000000002")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (outcome(&response), response.degraded),
        ((Verdict::Assist, Reason::HealthUnavailable), true)
    );
    redis.restart();
    wait_shared_state(&gateway, ServingStatus::Serving, Duration::from_secs(5)).await;
    link_card(&gateway, "1000000000000004", 3).await;
    publish(&gateway, 3, pb::HealthColour::Green).await;
    let response = gateway
        .gate()
        .await
        .authorize(tap(card("1000000000000004")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (outcome(&response), response.degraded),
        ((Verdict::Allow, Reason::HealthGreen), false)
    );
}

#[tokio::test]
async fn while_the_replay_guard_is_unreachable_ride_codes_follow_the_single_use_policy() {
    let mut redis = RedisServer::start();
    let mut gateways = Vec::new();
    for policy in ["local", "deny", "assist"] {
        let builder = builder("--redis", &redis.url()).toml(&format!("[policy]\nsingle_use_unknown = \"{policy}\"\n"));
        let (gateway, issuers) = builder.start().await;
        wait_shared_state(&gateway, ServingStatus::Serving, Duration::from_secs(5)).await;
        // Warm the link and status caches for the account while Redis answers.
        let warm = codes::valid(&issuers[0].minter, "acct-1");
        let warmed = gateway
            .gate()
            .await
            .authorize(tap(code(&warm)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outcome(&warmed), (Verdict::Allow, Reason::HealthGreen), "{policy}");
        gateways.push((policy, gateway, issuers));
    }
    redis.kill();
    for (policy, gateway, issuers) in &gateways {
        wait_shared_state(gateway, ServingStatus::NotServing, Duration::from_secs(3)).await;
        let qr = codes::valid(&issuers[0].minter, "acct-1");
        let answer = gateway
            .gate()
            .await
            .authorize(tap(code(&qr)))
            .await
            .unwrap()
            .into_inner();
        let expected = match *policy {
            // The code itself passes on this instance's memory; the rider is then judged
            // from the caches (green), or by the unavailable-policy if the follower has
            // dropped them since Redis went away.
            "local" => outcome(&answer),
            "deny" => (Verdict::Deny, Reason::CodeSingleUseUnknown),
            _ => (Verdict::Assist, Reason::CodeSingleUseUnknown),
        };
        assert_eq!(outcome(&answer), expected, "{policy}");
        if *policy == "local" {
            assert!(
                [
                    (Verdict::Allow, Reason::HealthGreen),
                    (Verdict::Assist, Reason::HealthUnavailable)
                ]
                .contains(&expected),
                "local: {answer:?}"
            );
        }
        assert!(
            answer.degraded,
            "{policy}: a code the shared guard could not confirm is degraded"
        );
        // A code this instance itself has seen is a replay under every policy (under
        // deny and assist too: the rider refreshes the code, as for any refusal).
        let again = gateway
            .gate()
            .await
            .authorize(tap(code(&qr)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            outcome(&again),
            (Verdict::Deny, Reason::CodeReplayed),
            "{policy}: second use"
        );
        // Cards need no replay guard: never CODE_SINGLE_USE_UNKNOWN, always degraded.
        let tapped = gateway
            .gate()
            .await
            .authorize(tap(card("1000000000000002")))
            .await
            .unwrap()
            .into_inner();
        assert_ne!(outcome(&tapped).1, Reason::CodeSingleUseUnknown, "{policy}");
        assert!(tapped.degraded, "{policy}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_slow_redis_reply_is_not_an_outage_but_timeouts_in_a_row_are() {
    let redis = std::sync::Arc::new(RedisServer::start());
    let patient = builder("--redis", &redis.url());
    let hasty = builder("--redis", &redis.url()).toml("[redis]\ndown_after_timeouts = 1\n");
    let (a, issuers_a) = patient.start().await;
    let (b, issuers_b) = hasty.start().await;
    for gateway in [&a, &b] {
        wait_shared_state(gateway, ServingStatus::Serving, Duration::from_secs(5)).await;
    }
    let (mut gate_a, mut gate_b) = (a.gate().await, b.gate().await);
    // Warm the link and status caches, so the frozen Redis is asked only about the code.
    for (gate, issuers) in [(&mut gate_a, &issuers_a), (&mut gate_b, &issuers_b)] {
        let warm = codes::valid(&issuers[0].minter, "acct-1");
        let answer = gate.authorize(tap(code(&warm))).await.unwrap().into_inner();
        assert_eq!(outcome(&answer), (Verdict::Allow, Reason::HealthGreen));
    }
    // Redis stops answering for 150 ms (three operation timeouts); one code tap each
    // meanwhile: one timeout each.
    let freezer = {
        let redis = redis.clone();
        tokio::task::spawn_blocking(move || redis.freeze_for(Duration::from_millis(150)))
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let code_a = codes::valid(&issuers_a[0].minter, "acct-1");
    let code_b = codes::valid(&issuers_b[0].minter, "acct-1");
    let a_answer = gate_a.authorize(tap(code(&code_a))).await.unwrap().into_inner();
    let b_answer = gate_b.authorize(tap(code(&code_b))).await.unwrap().into_inner();
    freezer.await.unwrap();
    for answer in [&a_answer, &b_answer] {
        assert_eq!(outcome(answer).0, Verdict::Allow, "{answer:?}");
        assert!(answer.degraded, "a code the shared guard did not confirm is degraded");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !a.log().contains("shared tier (Redis) down"),
        "one timeout marked Redis down:\n{}",
        a.log()
    );
    assert!(
        b.log().contains("shared tier (Redis) down"),
        "with a threshold of one, the same timeout marks it down:\n{}",
        b.log()
    );
}

/// A `redis-server` speaking TLS only, with `server`'s certificate; killed on drop.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(server: &ridegate_tests::pki::CertPair, ca_pem: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (cert, key, ca) = (
            write("redis.pem", &server.cert),
            write("redis.key.pem", &server.key),
            write("ca.pem", ca_pem),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, _dir: dir }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway on `url` trusting the CA `ca_pem`; waits up to `tenths` tenths of a second
/// for Redis to be up and returns whether it came up.
async fn redis_up_over_tls(url: &str, ca_pem: &str, tenths: u32) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("redis-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let (gateway, _) = GatewayBuilder::new()
        .toml(&format!(
            "[redis]\nurl = \"{url}\"\nca_file = \"{}\"\nprobe_interval = \"100ms\"\n",
            ca.display()
        ))
        .start()
        .await;
    for _ in 0..tenths {
        if gateway.metric("ridegate_shared_tier_up").await == 1.0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn rediss_is_verified_against_the_configured_ca_and_never_downgraded() {
    let (operator, stranger) = (
        ridegate_tests::pki::Pki::new("redis CA"),
        ridegate_tests::pki::Pki::new("another CA"),
    );
    let redis = TlsRedis::start(&operator.server(), operator.ca_pem());
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    assert!(redis_up_over_tls(&url, operator.ca_pem(), 100).await, "the right CA");
    assert!(!redis_up_over_tls(&url, stranger.ca_pem(), 20).await, "another CA");
    let misnamed = TlsRedis::start(&operator.server_named("redis.example"), operator.ca_pem());
    let url = format!("rediss://127.0.0.1:{}", misnamed.port);
    assert!(!redis_up_over_tls(&url, operator.ca_pem(), 20).await, "another name");
    let plain = RedisServer::start();
    let url = format!("rediss://127.0.0.1:{}", plain.port);
    assert!(
        !redis_up_over_tls(&url, operator.ca_pem(), 20).await,
        "a plaintext server"
    );
}
