//! ridegate against the health-code platform: the real `ridegate health-sim` on
//! loopback, made slow, erroring, flapping, down and killed, while the real `ridegate`
//! answers taps. Every call carries the gate's deadline as `grpc-timeout`, so an answer
//! after it would fail the call; the audit records show each decision's own latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ridegate_proto::pb::gate_client::GateClient;
use ridegate_proto::pb::{self, Reason, Verdict};
use tonic::transport::Channel;

use ridegate_tests::platform::{HealthSim, Role, card_number};
use ridegate_tests::redis::RedisServer;
use ridegate_tests::*;

/// The gate's budget in these tests (ridegate's default).
const BUDGET: Duration = Duration::from_millis(200);

/// A gateway with a card linked for each of `riders`, statuses from `sim`.
fn linked(sim: &HealthSim, riders: &[u64], platform: &str) -> GatewayBuilder {
    riders
        .iter()
        .fold(GatewayBuilder::new().platform(&sim.url(), platform), |builder, n| {
            builder.card(&card_number(*n), *n)
        })
}

/// Rider `n`'s card tap at `station`, with the gate's budget as its deadline. An answer
/// after the deadline is a DEADLINE_EXCEEDED error.
async fn tap_at(gate: &mut GateClient<Channel>, n: u64, station: &str) -> pb::AuthorizeResponse {
    tap_within(gate, n, station, BUDGET).await
}

async fn tap_within(gate: &mut GateClient<Channel>, n: u64, station: &str, budget: Duration) -> pb::AuthorizeResponse {
    let mut request = tonic::Request::new(tap(card(&card_number(n))).at(station));
    request.set_timeout(budget);
    match gate.authorize(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => panic!("rider {n}: {status:?}"),
    }
}

async fn tap_rider(gate: &mut GateClient<Channel>, n: u64) -> pb::AuthorizeResponse {
    tap_at(gate, n, "S07").await
}

fn down(is_down: bool) -> pb::SimFaults {
    pb::SimFaults {
        down: is_down,
        ..pb::SimFaults::default()
    }
}

/// Every decision in the audit log took less than the budget. The audit writer flushes
/// every few milliseconds, so the log is given up to two seconds to show the decisions.
fn assert_no_late_decisions(gateway: &Gateway) {
    let started = std::time::Instant::now();
    let mut audit = gateway.audit();
    while audit.is_empty() && started.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
        audit = gateway.audit();
    }
    assert!(!audit.is_empty(), "no decision reached the audit log");
    for event in &audit {
        let latency_us = event["latency_us"].as_u64().unwrap();
        assert!(
            latency_us < BUDGET.as_micros() as u64,
            "a decision took {latency_us} µs"
        );
    }
}

/// Taps rider `n` until a fresh (not degraded) answer comes back.
async fn wait_fresh(gate: &mut GateClient<Channel>, n: u64, within: Duration) -> pb::AuthorizeResponse {
    let started = Instant::now();
    loop {
        let response = tap_rider(gate, n).await;
        if !response.degraded {
            return response;
        }
        assert!(started.elapsed() < within, "still degraded after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until ridegate has subscribed to the change feed `times` times.
async fn wait_subscribed(sim: &HealthSim, times: u64) {
    for _ in 0..200 {
        if sim.stats().await.watch_subscriptions >= times {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("ridegate did not subscribe to the change feed");
}

#[tokio::test]
async fn every_colour_is_judged_from_the_platform_and_a_rider_turned_red_is_denied_within_a_second() {
    let sim = HealthSim::start(2_000, &[]).await;
    let cast: Vec<(u64, Verdict, Reason)> = [
        (Role::Green, Verdict::Allow, Reason::HealthGreen),
        (Role::Yellow, Verdict::Deny, Reason::HealthYellow),
        (Role::Red, Verdict::Deny, Reason::HealthRed),
        (Role::Untested, Verdict::Deny, Reason::TestMissing),
        (Role::NoRecord, Verdict::Assist, Reason::NoHealthRecord),
    ]
    .into_iter()
    .map(|(role, verdict, reason)| (sim.riders(role, 1)[0], verdict, reason))
    .collect();
    let turning = sim.riders(Role::Green, 2)[1];
    let mut riders: Vec<u64> = cast.iter().map(|c| c.0).collect();
    riders.push(turning);
    let (gateway, _) = linked(&sim, &riders, "").start().await;
    let mut gate = gateway.gate().await;
    for (n, verdict, reason) in &cast {
        let response = tap_rider(&mut gate, *n).await;
        assert_eq!(outcome(&response), (*verdict, *reason), "rider {n}");
        assert!(!response.degraded);
    }
    assert!(sim.stats().await.get_status_calls >= cast.len() as u64);
    wait_subscribed(&sim, 1).await;

    // A steady stream of taps (every 5 ms) by a green rider who turns red in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let tapper = {
        let (mut gate, stop) = (gate.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..1_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let response = tap_rider(&mut gate, turning).await;
                seen.push((Instant::now(), response.verdict()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let turned = Instant::now();
    sim.set_colour(turning, pb::HealthColour::Red).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = tapper.await.unwrap();
    assert!(seen.iter().any(|(at, v)| *at < turned && *v == Verdict::Allow));
    let first_deny = seen
        .iter()
        .find(|(at, v)| *at > turned && *v == Verdict::Deny)
        .expect("the red rider was denied");
    let took = first_deny.0 - turned;
    assert!(took < Duration::from_secs(1), "denied {took:?} after turning red");
    assert!(
        seen.iter()
            .filter(|(at, _)| *at >= first_deny.0)
            .all(|(_, v)| *v == Verdict::Deny),
        "once denied, always denied"
    );
    assert!(gateway.metric("ridegate_platform_changes_total").await >= 1.0);
    assert_no_late_decisions(&gateway);
}

#[tokio::test]
async fn a_platform_slower_than_the_budget_never_delays_an_answer_and_is_used_again_when_fast() {
    let sim = HealthSim::start(1_000, &["--latency", "400ms"]).await;
    let green = sim.riders(Role::Green, 30);
    let (gateway, _) = linked(&sim, &green, "").start().await;
    let gate = gateway.gate().await;
    let answers = futures::future::join_all(green.iter().map(|n| {
        let mut gate = gate.clone();
        async move { tap_rider(&mut gate, *n).await }
    }))
    .await;
    for response in &answers {
        assert_eq!(outcome(response), (Verdict::Assist, Reason::HealthUnavailable));
        assert!(response.degraded);
    }
    assert!(gateway.metric("ridegate_platform_breaker_opened_total").await >= 1.0);
    assert_no_late_decisions(&gateway);

    sim.faults(pb::SimFaults::default()).await;
    let mut gate = gate.clone();
    let response = wait_fresh(&mut gate, green[0], Duration::from_secs(5)).await;
    assert_eq!(outcome(&response), (Verdict::Allow, Reason::HealthGreen));
}

#[tokio::test]
async fn while_the_platform_is_down_the_last_known_status_is_used_within_the_staleness_bound_then_the_station_policy() {
    let sim = HealthSim::start(1_000, &[]).await;
    let green = sim.riders(Role::Green, 2);
    let red = sim.riders(Role::Red, 1)[0];
    let (known, unknown) = (green[0], green[1]);
    let (gateway, _) = linked(&sim, &[known, unknown, red], "")
        .health_setting("cache_ttl = \"1s\"")
        .health_setting("max_staleness = \"3s\"")
        .toml("[policy.unavailable_stations]\nS99 = \"allow\"\n")
        .start()
        .await;
    let mut gate = gateway.gate().await;
    assert_eq!(tap_rider(&mut gate, known).await.verdict(), Verdict::Allow);
    assert_eq!(tap_rider(&mut gate, red).await.verdict(), Verdict::Deny);
    let confirmed = Instant::now();

    sim.faults(down(true)).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let stale = tap_rider(&mut gate, known).await;
    assert_eq!(outcome(&stale), (Verdict::Allow, Reason::HealthGreen));
    assert!(
        stale.degraded && stale.status_age_ms.is_some_and(|age| age >= 1_000),
        "{stale:?}"
    );
    let stale_red = tap_rider(&mut gate, red).await;
    assert_eq!(outcome(&stale_red), (Verdict::Deny, Reason::HealthRed));
    assert!(stale_red.degraded);
    let never_seen = tap_rider(&mut gate, unknown).await;
    assert_eq!(outcome(&never_seen), (Verdict::Assist, Reason::HealthUnavailable));
    assert!(never_seen.degraded);
    let at_s99 = tap_at(&mut gate, unknown, "S99").await;
    assert_eq!(
        outcome(&at_s99),
        (Verdict::Allow, Reason::HealthUnavailable),
        "S99 opens its gates while no status can be had"
    );
    assert!(at_s99.degraded);

    tokio::time::sleep(Duration::from_secs(3).saturating_sub(confirmed.elapsed()) + Duration::from_millis(200)).await;
    let too_old = tap_rider(&mut gate, known).await;
    assert_eq!(outcome(&too_old), (Verdict::Assist, Reason::HealthUnavailable));

    assert!(gateway.metric("ridegate_degraded_decisions_total").await >= 5.0);
    assert!(gateway.log().contains("degraded answers"), "{}", gateway.log());

    sim.faults(down(false)).await;
    let back = wait_fresh(&mut gate, known, Duration::from_secs(5)).await;
    assert_eq!(outcome(&back), (Verdict::Allow, Reason::HealthGreen));
    assert_no_late_decisions(&gateway);
}

#[tokio::test]
async fn a_killed_platform_restarted_on_its_port_is_used_again_and_its_change_feed_followed_afresh() {
    let mut sim = HealthSim::start(1_000, &[]).await;
    let green = sim.riders(Role::Green, 3);
    let (gateway, _) = linked(&sim, &green, "").start().await;
    let mut gate = gateway.gate().await;
    wait_subscribed(&sim, 1).await;
    // A change ridegate sees: its cursor is now 1.
    sim.set_colour(green[2], pb::HealthColour::Yellow).await;
    assert_eq!(tap_rider(&mut gate, green[0]).await.verdict(), Verdict::Allow);
    tokio::time::sleep(Duration::from_millis(200)).await;

    sim.kill().await;
    for _ in 0..20 {
        let response = tap_rider(&mut gate, green[0]).await;
        assert_eq!(outcome(&response), (Verdict::Allow, Reason::HealthGreen));
        let never_seen = tap_rider(&mut gate, green[1]).await;
        assert_eq!(outcome(&never_seen), (Verdict::Assist, Reason::HealthUnavailable));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The new process has an empty change log: ridegate's cursor is unknown to it, so
    // ridegate forgets what it cached and follows the new log from its start.
    sim.restart().await;
    let back = wait_fresh(&mut gate, green[1], Duration::from_secs(5)).await;
    assert_eq!(outcome(&back), (Verdict::Allow, Reason::HealthGreen));
    wait_subscribed(&sim, 1).await;
    let started = Instant::now();
    while gateway.metric("ridegate_platform_resets_total").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "the cursor was not reset");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let turned = Instant::now();
    sim.set_colour(green[0], pb::HealthColour::Red).await;
    loop {
        if tap_rider(&mut gate, green[0]).await.verdict() == Verdict::Deny {
            break;
        }
        assert!(
            turned.elapsed() < Duration::from_secs(1),
            "not denied within 1 s of turning red"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_no_late_decisions(&gateway);
}

#[tokio::test]
async fn a_flapping_platform_gets_every_tap_answered_in_time_with_the_right_verdict() {
    let sim = HealthSim::start(1_000, &[]).await;
    let green = sim.riders(Role::Green, 10);
    let red = sim.riders(Role::Red, 2);
    let riders: Vec<u64> = green.iter().chain(&red).copied().collect();
    let (gateway, _) = linked(&sim, &riders, "")
        .health_setting("cache_ttl = \"300ms\"")
        .start()
        .await;
    let gate = gateway.gate().await;
    for n in &riders {
        tap_rider(&mut gate.clone(), *n).await;
    }
    // Down for longer than the cache's 300 ms freshness, up for less: a status confirmed
    // just before an outage goes stale within it, so the outages must show as degraded
    // answers (with shorter outages, refresh-ahead in the up windows can hide them all).
    let flapper = {
        let control = sim.control().await;
        tokio::spawn(async move {
            let mut control = control;
            for i in 0..12 {
                let is_down = i % 2 == 0;
                control.set_faults(down(is_down)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(if is_down { 400 } else { 150 })).await;
            }
            control.set_faults(down(false)).await.unwrap();
        })
    };
    let tappers: Vec<_> = (0..4)
        .map(|t| {
            let (mut gate, riders, red) = (gate.clone(), riders.clone(), red.clone());
            tokio::spawn(async move {
                let mut degraded = 0;
                for i in 0..150 {
                    let n = riders[(i * 4 + t) % riders.len()];
                    let response = tap_rider(&mut gate, n).await;
                    let want = if red.contains(&n) {
                        (Verdict::Deny, Reason::HealthRed)
                    } else {
                        (Verdict::Allow, Reason::HealthGreen)
                    };
                    assert_eq!(outcome(&response), want, "rider {n}");
                    degraded += usize::from(response.degraded);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                degraded
            })
        })
        .collect();
    let mut degraded = 0;
    for tapper in tappers {
        degraded += tapper.await.unwrap();
    }
    flapper.await.unwrap();
    assert!(degraded > 0, "the outages showed in the answers");
    let back = wait_fresh(&mut gate.clone(), green[0], Duration::from_secs(5)).await;
    assert_eq!(outcome(&back), (Verdict::Allow, Reason::HealthGreen));
    assert_no_late_decisions(&gateway);
}

#[tokio::test]
async fn a_platform_failing_thirty_percent_of_calls_never_yields_a_wrong_verdict() {
    let sim = HealthSim::start(2_000, &["--error-rate", "0.3"]).await;
    let green = sim.riders(Role::Green, 100);
    let red = sim.riders(Role::Red, 10);
    let riders: Vec<u64> = green.iter().chain(&red).copied().collect();
    let (gateway, _) = linked(&sim, &riders, "").start().await;
    let mut gate = gateway.gate().await;
    let mut right = 0;
    for n in &riders {
        let response = tap_rider(&mut gate, *n).await;
        let want = if red.contains(n) {
            (Verdict::Deny, Reason::HealthRed)
        } else {
            (Verdict::Allow, Reason::HealthGreen)
        };
        if outcome(&response) == want {
            assert!(!response.degraded);
            right += 1;
        } else {
            assert_eq!(
                (outcome(&response), response.degraded),
                ((Verdict::Assist, Reason::HealthUnavailable), true),
                "rider {n}: only the unavailable answer may replace the right one"
            );
        }
    }
    // One retry per fetch turns a 30% failure rate into about 9%.
    assert!(right >= 85, "{right} of {} right", riders.len());
    assert!(gateway.metric("ridegate_platform_retries_total").await >= 1.0);
    assert_no_late_decisions(&gateway);
}

#[tokio::test]
async fn a_thousand_concurrent_misses_for_one_rider_make_one_platform_call() {
    let sim = HealthSim::start(100, &["--latency", "50ms"]).await;
    let rider = sim.riders(Role::Green, 1)[0];
    let (gateway, _) = linked(&sim, &[rider], "").start().await;
    let mut gates = Vec::new();
    for _ in 0..4 {
        gates.push(gateway.gate().await);
    }
    let before = sim.stats().await.get_status_calls;
    // A generous deadline: a thousand calls at once queue for this machine's two cores
    // (client and server share them), and this test is about calls to the platform.
    let answers = futures::future::join_all((0..1_000).map(|i| {
        let mut gate = gates[i % gates.len()].clone();
        async move { tap_within(&mut gate, rider, "S07", Duration::from_secs(10)).await }
    }))
    .await;
    assert!(
        answers
            .iter()
            .all(|r| outcome(r) == (Verdict::Allow, Reason::HealthGreen))
    );
    assert_eq!(sim.stats().await.get_status_calls - before, 1);
}

#[tokio::test]
async fn an_ageing_entry_is_refreshed_in_the_background_so_the_next_rider_does_not_wait() {
    let sim = HealthSim::start(100, &["--latency", "20ms"]).await;
    let rider = sim.riders(Role::Green, 1)[0];
    let (gateway, _) = linked(&sim, &[rider], "")
        .health_setting("cache_ttl = \"2s\"")
        .health_setting("refresh_ahead = 0.5")
        .start()
        .await;
    let mut gate = gateway.gate().await;
    tap_rider(&mut gate, rider).await;
    let first = Instant::now();
    assert_eq!(gateway.metric("ridegate_health_cache_misses_total").await, 1.0);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // Past half its freshness: answered from the cache, refreshed behind it.
    assert!(!tap_rider(&mut gate, rider).await.degraded);
    tokio::time::sleep(Duration::from_millis(2_300).saturating_sub(first.elapsed())).await;
    // Past the first answer's freshness, but the refresh renewed it: still a hit.
    assert!(!tap_rider(&mut gate, rider).await.degraded);
    assert_eq!(gateway.metric("ridegate_health_cache_misses_total").await, 1.0);
    assert!(gateway.metric("ridegate_health_refreshes_total").await >= 1.0);
    assert!(sim.stats().await.get_status_calls >= 2);
}

#[tokio::test]
async fn a_slow_tail_is_cut_by_a_hedged_second_call() {
    let sim = HealthSim::start(
        1_000,
        &["--latency", "1ms", "--tail-latency", "120ms", "--tail-fraction", "0.2"],
    )
    .await;
    let green = sim.riders(Role::Green, 80);
    let (gateway, _) = linked(&sim, &green, "hedge_percentile = 0.5").start().await;
    let mut gate = gateway.gate().await;
    for n in &green {
        let response = tap_rider(&mut gate, *n).await;
        assert_eq!(outcome(&response), (Verdict::Allow, Reason::HealthGreen));
    }
    assert!(gateway.metric("ridegate_platform_hedges_total").await >= 1.0);
    assert_no_late_decisions(&gateway);
}

#[tokio::test]
async fn with_redis_one_instance_s_fetch_serves_the_others() {
    let redis = RedisServer::start();
    let sim = HealthSim::start(100, &[]).await;
    let rider = sim.riders(Role::Green, 1)[0];
    let builder = linked(&sim, &[rider], "")
        .arg("--redis")
        .arg(&format!("redis://127.0.0.1:{}", redis.port));
    let (a, _) = builder.start().await;
    let (b, _) = builder.start().await;
    assert_eq!(tap_rider(&mut a.gate().await, rider).await.verdict(), Verdict::Allow);
    let calls = sim.stats().await.get_status_calls;
    tokio::time::sleep(Duration::from_millis(100)).await; // the write-back is in the background
    assert_eq!(tap_rider(&mut b.gate().await, rider).await.verdict(), Verdict::Allow);
    assert_eq!(sim.stats().await.get_status_calls, calls, "B found it in Redis");
}

#[tokio::test]
async fn the_simulator_stops_on_sigterm_even_with_a_change_feed_open() {
    let mut sim = HealthSim::start(10, &[]).await;
    let channel = tonic::transport::Channel::from_shared(sim.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut feed = pb::health_platform_client::HealthPlatformClient::new(channel)
        .watch_changes(pb::WatchChangesRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    wait_subscribed(&sim, 1).await;
    let exit = sim.terminate().await;
    assert!(exit.success(), "{exit:?}");
    // The open stream ends (cleanly or with an error), rather than hanging.
    let ended = tokio::time::timeout(Duration::from_secs(5), feed.message()).await;
    assert!(matches!(ended, Ok(Ok(None) | Err(_))), "{ended:?}");
}

/// A simulator serving the platform API over TLS with `server` (its certificate and
/// key written to `dir`).
async fn tls_sim(dir: &std::path::Path, server: &ridegate_tests::pki::CertPair) -> HealthSim {
    let (cert, key) = (dir.join("platform.pem"), dir.join("platform.key.pem"));
    std::fs::write(&cert, &server.cert).unwrap();
    std::fs::write(&key, &server.key).unwrap();
    HealthSim::start(
        100,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    )
    .await
}

/// A gateway taking statuses from `url`, trusting the CA in `ca_pem`, with `rider`'s
/// card linked.
async fn over_tls(dir: &std::path::Path, url: &str, ca_pem: &str, rider: u64) -> Gateway {
    let ca = dir.join(format!("platform-ca-{}.pem", now()));
    std::fs::write(&ca, ca_pem).unwrap();
    let settings = format!("ca_file = \"{}\"\nserver_name = \"localhost\"", ca.display());
    GatewayBuilder::new()
        .platform(url, &settings)
        .card(&card_number(rider), rider)
        .start()
        .await
        .0
}

#[tokio::test]
async fn an_https_platform_is_verified_against_the_configured_ca_and_never_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    let (operator, stranger) = (
        ridegate_tests::pki::Pki::new("platform CA"),
        ridegate_tests::pki::Pki::new("another CA"),
    );
    let sim = tls_sim(dir.path(), &operator.server()).await;
    let rider = sim.riders(Role::Green, 1)[0];
    let https = format!("https://{}", sim.addr);

    // The platform's certificate checks out: statuses flow (once the first handshake
    // is done; a loaded machine may answer the very first tap degraded).
    let gateway = over_tls(dir.path(), &https, operator.ca_pem(), rider).await;
    let mut gate = gateway.gate().await;
    let mut answer = tap_within(&mut gate, rider, "S07", Duration::from_secs(2)).await;
    for _ in 0..20 {
        if !answer.degraded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = tap_within(&mut gate, rider, "S07", Duration::from_secs(2)).await;
    }
    assert_eq!(
        outcome(&answer),
        (Verdict::Allow, Reason::HealthGreen),
        "{}",
        gateway.log()
    );
    assert!(!answer.degraded);

    // Another CA's trust: the handshake fails, no status is fetched, the gate gets the
    // unavailable policy (degraded), and the log says so.
    let gateway = over_tls(dir.path(), &https, stranger.ca_pem(), rider).await;
    let answer = tap_within(&mut gateway.gate().await, rider, "S07", Duration::from_secs(2)).await;
    assert_eq!(outcome(&answer), (Verdict::Assist, Reason::HealthUnavailable));
    assert!(answer.degraded);
    assert!(gateway.metric("ridegate_platform_failures_total").await >= 1.0);
    gateway
        .wait_for_log("health change feed: the platform cannot be reached")
        .await;

    // A certificate for another name, from the trusted CA: refused too.
    let misnamed = tls_sim(dir.path(), &operator.server_named("platform.example")).await;
    let gateway = over_tls(
        dir.path(),
        &format!("https://{}", misnamed.addr),
        operator.ca_pem(),
        rider,
    )
    .await;
    let answer = tap_rider(&mut gateway.gate().await, rider).await;
    assert_eq!(outcome(&answer), (Verdict::Assist, Reason::HealthUnavailable));

    // https:// to a plaintext platform: no fall back to cleartext.
    let plain = HealthSim::start(100, &[]).await;
    let gateway = over_tls(dir.path(), &format!("https://{}", plain.addr), operator.ca_pem(), rider).await;
    let answer = tap_rider(&mut gateway.gate().await, rider).await;
    assert_eq!(outcome(&answer), (Verdict::Assist, Reason::HealthUnavailable));
    assert_eq!(
        plain.stats().await.get_status_calls,
        0,
        "nothing reached the plaintext platform"
    );
}
