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
    service_state(gateway, "ridegate.v1.SharedState").await
}

async fn service_state(gateway: &Gateway, service: &str) -> Option<ServingStatus> {
    let mut health = HealthClient::new(gateway.channel().await);
    let response = health
        .check(HealthCheckRequest {
            service: service.into(),
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

    // Redis comes back empty (it keeps nothing on disk) while both instances are
    // tapped steadily for linked riders. Both remember the epoch marker Redis held and
    // find it gone: the data is lost, so neither trusts Redis — SharedState stays
    // NOT_SERVING and every answer is degraded, never a confident NOT_LINKED for a
    // rider who is linked (the old behaviour, fixed by issue 12).
    redis.restart();
    let during_loss = {
        let (a_gate, b_gate) = (a.gate().await, b.gate().await);
        tokio::spawn(async move {
            let mut results = Vec::new();
            for i in 0..40 {
                for (name, gate) in [("A", &a_gate), ("B", &b_gate)] {
                    let mut gate = gate.clone();
                    let mut request =
                        tonic::Request::new(tap(card("1000000000000002")).id(&format!("lost-{name}-{i}")));
                    request.set_timeout(budget);
                    let response = gate.authorize(request).await;
                    results.push((name, response.map(tonic::Response::into_inner)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            results
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        shared_state(&a).await,
        Some(ServingStatus::NotServing),
        "A\n{}",
        a.log()
    );
    assert_eq!(
        shared_state(&b).await,
        Some(ServingStatus::NotServing),
        "B\n{}",
        b.log()
    );
    for (name, response) in during_loss.await.unwrap() {
        let response = response.unwrap_or_else(|e| panic!("a tap at {name} failed: {e}"));
        assert_ne!(
            outcome(&response).1,
            Reason::NotLinked,
            "{name} told a linked rider NOT_LINKED from an empty Redis"
        );
        assert!(response.degraded, "{name} answered {:?} undegraded", outcome(&response));
    }
    assert_eq!(a.metric("ridegate_shared_data_lost").await, 1.0);
    assert_eq!(a.metric("ridegate_shared_data_losses_total").await, 1.0);
    assert_eq!(a.metric("ridegate_shared_tier_up").await, 0.0);
    assert!(a.log().contains("lost its data"), "{}", a.log());
    // Still so later: an empty Redis is not trusted again by itself.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = b
        .gate()
        .await
        .authorize(tap(card("1000000000000002")))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(outcome(&later).1, Reason::NotLinked);
    assert!(later.degraded);
    assert_eq!(shared_state(&b).await, Some(ServingStatus::NotServing));

    // The operator confirms (after re-importing what was lost) with the command the
    // ERROR line names; both instances use Redis again.
    let confirm = a
        .log()
        .lines()
        .find_map(|line| {
            line.split_once("confirm with ")
                .map(|(_, command)| command.trim().to_owned())
        })
        .expect("the ERROR line names the command");
    let args: Vec<&str> = confirm
        .split_whitespace()
        .take(3)
        .map(|w| w.trim_matches('"'))
        .collect();
    assert_eq!(args[0], "SET", "{confirm}");
    redis.cli(&args);
    wait_shared_state(&a, ServingStatus::Serving, Duration::from_secs(5)).await;
    wait_shared_state(&b, ServingStatus::Serving, Duration::from_secs(5)).await;
    assert_eq!(a.metric("ridegate_shared_data_lost").await, 0.0);
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
    // And the change stream carries changes again. A credential never linked is "not
    // linked" on B, then (the link arriving) "no health record", then (the status
    // arriving) green.
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
    // Its links and statuses files cannot land in Redis yet: not ready.
    assert_eq!(
        service_state(&gateway, "ridegate.v1.Gate").await,
        Some(ServingStatus::NotServing)
    );
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
    // The files land; then it is ready, and the file's rider resolves.
    let started = Instant::now();
    while service_state(&gateway, "ridegate.v1.Gate").await != Some(ServingStatus::Serving) {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", gateway.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = gateway
        .gate()
        .await
        .authorize(tap(card("1000000000000002")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (outcome(&response), response.degraded),
        ((Verdict::Allow, Reason::HealthGreen), false)
    );
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
    // Redis stops answering for 150 ms (three operation timeouts). Meanwhile a herd of
    // 40 code taps at the patient instance, all waiting on Redis together: one stall,
    // counted once, not 40 timeouts in a row. (On a starved machine admission may refuse
    // some of them as predicted late: refused, not waiting on Redis.) One code tap at
    // the hasty one.
    let codes_a: Vec<String> = (0..40).map(|_| codes::valid(&issuers_a[0].minter, "acct-1")).collect();
    let code_b = codes::valid(&issuers_b[0].minter, "acct-1");
    let freezer = {
        let redis = redis.clone();
        tokio::task::spawn_blocking(move || redis.freeze_for(Duration::from_millis(150)))
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let herd = codes_a.iter().map(|code_a| {
        let mut gate = gate_a.clone();
        async move { gate.authorize(tap(code(code_a))).await }
    });
    let (a_answers, b_answer) = tokio::join!(futures::future::join_all(herd), gate_b.authorize(tap(code(&code_b))));
    let b_answer = b_answer.unwrap().into_inner();
    freezer.await.unwrap();
    let mut a_decided = Vec::new();
    for answer in a_answers {
        match answer {
            Ok(answer) => a_decided.push(answer.into_inner()),
            Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}"),
        }
    }
    assert!(a_decided.len() >= 5, "only {} of the herd decided", a_decided.len());
    for answer in a_decided.iter().chain([&b_answer]) {
        assert_eq!(outcome(answer).0, Verdict::Allow, "{answer:?}");
        assert!(answer.degraded, "a code the shared guard did not confirm is degraded");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !a.log().contains("shared tier (Redis) down"),
        "one stall marked Redis down:\n{}",
        a.log()
    );
    assert!(
        b.log().contains("shared tier (Redis) down"),
        "with a threshold of one, the same timeout marks it down:\n{}",
        b.log()
    );
    // Counting a stall once never hides an outage: Redis frozen for 400 ms while taps
    // keep coming, one after another, is timeouts in a row for the patient one too.
    let freezer = {
        let redis = redis.clone();
        tokio::task::spawn_blocking(move || redis.freeze_for(Duration::from_millis(400)))
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    while !freezer.is_finished() {
        let code_a = codes::valid(&issuers_a[0].minter, "acct-1");
        match gate_a.authorize(tap(code(&code_a))).await {
            Ok(answer) => assert_eq!(outcome(answer.get_ref()).0, Verdict::Allow, "{answer:?}"),
            Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}"),
        }
    }
    freezer.await.unwrap();
    assert!(
        a.log().contains("shared tier (Redis) down"),
        "a 400 ms outage did not mark Redis down:\n{}",
        a.log()
    );
}

#[tokio::test]
async fn no_code_is_accepted_twice_across_instances_whatever_the_gates_send() {
    let redis = RedisServer::start();
    let builder = builder("--redis", &redis.url());
    let (a, issuers) = builder.start().await;
    let (b, _) = builder.start().await;
    for gateway in [&a, &b] {
        wait_shared_state(gateway, ServingStatus::Serving, Duration::from_secs(5)).await;
    }
    let gates = [a.gate().await, b.gate().await];
    let codes: Vec<String> = (0..6).map(|_| codes::valid(&issuers[0].minter, "acct-1")).collect();
    // A fixed pseudo-random schedule (SplitMix64): which instance, which code, which
    // request id (a small pool, so ids collide across codes and instances), which
    // station, in which direction. Bounded: 300 taps.
    let mut state = 0x5eed_u64;
    let mut next = move |n: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    };
    let mut accepted = vec![0u32; codes.len()];
    let mut kept: std::collections::HashMap<(u64, usize, &str, bool), String> = std::collections::HashMap::new();
    for _ in 0..300 {
        let (instance, which, id, station, exit) = (
            next(2) as usize,
            next(codes.len() as u64) as usize,
            next(5),
            next(2),
            next(5) == 0,
        );
        let station = if station == 0 { "S07" } else { "S08" };
        let mut request = tap(code(&codes[which])).id(&format!("r-{id}")).at(station);
        if exit {
            request = request.exit();
        }
        let answer = gates[instance].clone().authorize(request).await.unwrap().into_inner();
        let same_tap = (id, which, station, exit);
        if answer.retry {
            assert_eq!(
                kept.get(&same_tap),
                Some(&answer.decision_id),
                "a retry got another tap's answer"
            );
            continue;
        }
        kept.entry(same_tap).or_insert_with(|| answer.decision_id.clone());
        if answer.verdict() == Verdict::Allow {
            accepted[which] += 1;
        }
    }
    assert!(
        accepted.iter().all(|&n| n <= 1),
        "a code was accepted more than once: {accepted:?}"
    );
    assert!(accepted.contains(&1), "the schedule accepted some code: {accepted:?}");
}

#[test]
fn a_start_up_import_redis_refuses_is_reported_row_by_row_and_serve_stops_with_exit_1() {
    let redis = RedisServer::start();
    // An existing deployment (its epoch in place) on a Redis that refuses every write.
    redis.cli(&["SET", "rg:epoch", "e2e-epoch"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let links = dir.path().join("links.jsonl");
    let rows: Vec<String> = (1..=3)
        .map(|n| format!("{{\"card\": {{\"number\": \"100000000000000{n}\"}}, \"identity\": \"{n:032x}\"}}"))
        .collect();
    std::fs::write(&links, rows.join("\n")).unwrap();
    let config = dir.path().join("ridegate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_delay = \"0s\"\n[identity]\nsecret = \"{SECRET}\"\n\
             [redis]\nurl = \"{}\"\n\
             [links]\nfile = \"{}\"\n[audit]\npath = \"/dev/null\"\n",
            redis.url(),
            links.display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(binary())
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("links.file: 3 of 3 rows could not be written to the shared tier"),
        "{stderr}"
    );
    for line in 1..=3 {
        assert!(
            stderr.lines().any(|l| l.contains("could not be written")
                && l.contains(&format!("line={line} "))
                && l.contains("OOM")),
            "line {line} is not reported with its reason:\n{stderr}"
        );
    }
    assert!(!stderr.contains("import landed"), "{stderr}");
}

#[tokio::test]
async fn every_instance_ships_its_audit_events_to_one_redis_stream_and_counts_what_it_cannot() {
    let mut redis = RedisServer::start();
    let builder = builder("--redis", &redis.url()).audit_setting("stream = true\nstream_max_len = 1000");
    let (a, _) = builder.start().await;
    let (b, _) = builder.start().await;
    for gateway in [&a, &b] {
        for _ in 0..3 {
            gateway
                .gate()
                .await
                .authorize(tap(card("1000000000000002")))
                .await
                .unwrap();
        }
    }
    let started = Instant::now();
    while redis.cli(&["XLEN", "rg:audit"]).trim() != "6" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{}",
            redis.cli(&["XLEN", "rg:audit"])
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entry = redis.cli(&["XRANGE", "rg:audit", "-", "+", "COUNT", "1"]);
    assert!(entry.contains("\"reason\":\"health_green\""), "{entry}");
    assert!(
        !entry.contains("1000000000000002"),
        "no card number in the stream: {entry}"
    );
    assert_eq!(a.metric("ridegate_audit_stream_shipped_total").await, 3.0);
    // Redis gone: taps are answered all the same; what could not be shipped is counted,
    // and the file still has every event.
    redis.kill();
    wait_shared_state(&a, ServingStatus::NotServing, Duration::from_secs(3)).await;
    for _ in 0..2 {
        let response = a
            .gate()
            .await
            .authorize(tap(card("1000000000000002")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outcome(&response), (Verdict::Allow, Reason::HealthGreen));
    }
    let started = Instant::now();
    while a.metric("ridegate_audit_stream_failed_total").await < 2.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", a.metrics().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, a) = a.terminate().await;
    assert_eq!(a.audit().len(), 5);
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

#[tokio::test]
async fn the_gate_state_feed_is_refused_when_its_copy_of_the_shared_tier_is_switched_off() {
    use ridegate_proto::pb::gate_state_client::GateStateClient;
    let redis = RedisServer::start();
    let (gateway, _) = builder("--redis", &redis.url())
        .toml("[gate_state]\nshared = false\n")
        .start()
        .await;
    let status = GateStateClient::new(gateway.channel().await)
        .follow(ridegate_proto::pb::FollowRequest::default())
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("gate_state.shared"), "{}", status.message());
}

#[tokio::test]
async fn the_change_reader_reports_entries_lost_before_it_read_them() {
    use ridegate_adapters::ids::CredentialId;
    use ridegate_adapters::shared::changes::{Change, ChangeReader};
    use ridegate_adapters::shared::{SharedSettings, SharedTier};
    let redis = RedisServer::start();
    let tier = SharedTier::connect(SharedSettings {
        url: redis.url(),
        ..SharedSettings::default()
    })
    .unwrap();
    assert!(tier.probe().await);
    let link = |n: u8| Change::Link {
        credential: CredentialId([n; 16]),
    };
    let mut reader = ChangeReader::new(tier.clone());
    assert!(reader.connect().await.unwrap().is_none());
    tier.publish(&link(1)).await.unwrap();
    let read = reader.next().await.unwrap();
    assert_eq!(read.iter().map(|(_, c)| *c).collect::<Vec<_>>(), [link(1)]);

    // Two more entries, trimmed away before the reader gets to them: it says so.
    tier.publish(&link(2)).await.unwrap();
    tier.publish(&link(3)).await.unwrap();
    redis.cli(&["XTRIM", "rg:changes", "MAXLEN", "0"]);
    let read = reader.next().await.unwrap();
    assert_eq!(read.iter().map(|(_, c)| *c).collect::<Vec<_>>(), [Change::Reset]);
    // Then it goes on from what the stream keeps.
    tier.publish(&link(4)).await.unwrap();
    let read = reader.next().await.unwrap();
    assert_eq!(read.iter().map(|(_, c)| *c).collect::<Vec<_>>(), [link(4)]);

    // The stream replaced by an older one (Redis restored from an earlier file): it
    // never reached what the reader read, so something may be missing.
    redis.cli(&["DEL", "rg:changes"]);
    redis.cli(&["XADD", "rg:changes", "1-1", "k", "n"]);
    let read = reader.next().await.unwrap();
    assert_eq!(read.iter().map(|(_, c)| *c).collect::<Vec<_>>(), [Change::Reset]);

    // A reader of an empty stream from its oldest entry starts at a mark of its own,
    // and an idle stream is no gap.
    redis.cli(&["DEL", "rg:changes"]);
    let mut replaying = ChangeReader::from_oldest(tier.clone());
    assert!(replaying.connect().await.unwrap().is_none());
    assert!(replaying.position().unwrap().as_version() > 0);
    assert!(replaying.next().await.unwrap().is_empty(), "the mark changes nothing");
    tier.publish(&link(5)).await.unwrap();
    let read = replaying.next().await.unwrap();
    assert_eq!(read.iter().map(|(_, c)| *c).collect::<Vec<_>>(), [link(5)]);
}
