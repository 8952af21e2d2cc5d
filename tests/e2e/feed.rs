//! Health statuses pushed at run time through `ridegate.v1.HealthFeed`.

use ridegate_adapters::test_util::{CallerKind, pseudonym, synthetic_resident_id};
use ridegate_proto::pb::health_feed_client::HealthFeedClient;
use ridegate_proto::pb::{self, Reason, Verdict};
use tonic::Code;

use ridegate_tests::*;

fn update(subject: pb::status_update::Subject, colour: pb::HealthColour, set_at: i64) -> pb::StatusUpdate {
    pb::StatusUpdate {
        subject: Some(subject),
        colour: colour.into(),
        set_at_unix_ms: set_at,
        negative_test_at_unix_ms: now() - 3_600_000,
    }
}

fn by_id_number(person: u64) -> pb::status_update::Subject {
    pb::status_update::Subject::IdNumber(synthetic_resident_id(person))
}

#[tokio::test]
async fn a_pushed_status_changes_the_very_next_tap() {
    let (gateway, _) = GatewayBuilder::new()
        .feed()
        .card("1000000000000001", 1)
        .status(1, GREEN)
        .start()
        .await;
    let mut gate = gateway.gate().await;
    let mut feed = HealthFeedClient::new(gateway.channel().await);
    assert_eq!(
        outcome(
            &gate
                .authorize(tap(card("1000000000000001")))
                .await
                .unwrap()
                .into_inner()
        )
        .0,
        Verdict::Allow
    );

    let token = gateway.token(CallerKind::HealthPlatform, "health-platform", None);
    let red = pb::PublishRequest {
        updates: vec![update(by_id_number(1), pb::HealthColour::Red, now())],
    };
    let published = feed.publish(authed(red, &token)).await.unwrap().into_inner();
    assert_eq!((published.applied, published.rejected.len()), (1, 0));
    let response = gate
        .authorize(tap(card("1000000000000001")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&response), (Verdict::Deny, Reason::HealthRed));

    // By pseudonym, as a platform that shares the secret would send it.
    let pseudonym = pseudonym(SECRET.as_bytes(), &synthetic_resident_id(1)).unwrap();
    let subject = pb::status_update::Subject::Identity(pseudonym);
    let yellow = pb::PublishRequest {
        updates: vec![update(subject, pb::HealthColour::Yellow, now() + 1)],
    };
    feed.publish(authed(yellow, &token)).await.unwrap();
    assert_eq!(
        gate.authorize(tap(card("1000000000000001")))
            .await
            .unwrap()
            .into_inner()
            .reason(),
        Reason::HealthYellow
    );

    // An update older than the status held changes nothing.
    let stale = pb::PublishRequest {
        updates: vec![update(by_id_number(1), pb::HealthColour::Green, 1_000)],
    };
    feed.publish(authed(stale, &token)).await.unwrap();
    assert_eq!(
        gate.authorize(tap(card("1000000000000001")))
            .await
            .unwrap()
            .into_inner()
            .reason(),
        Reason::HealthYellow
    );
}

#[tokio::test]
async fn bad_updates_are_rejected_by_index_and_the_good_ones_applied() {
    let (gateway, _) = GatewayBuilder::new().feed().card("1000000000000002", 2).start().await;
    let mut feed = HealthFeedClient::new(gateway.channel().await);
    let bad_id = "110105194912310021"; // wrong check digit
    let updates = vec![
        update(
            pb::status_update::Subject::IdNumber(bad_id.into()),
            pb::HealthColour::Red,
            now(),
        ),
        update(by_id_number(2), pb::HealthColour::Green, now()),
        pb::StatusUpdate {
            subject: None,
            colour: 1,
            set_at_unix_ms: 5,
            negative_test_at_unix_ms: 0,
        },
        pb::StatusUpdate {
            colour: 9,
            ..update(by_id_number(3), pb::HealthColour::Green, now())
        },
        update(by_id_number(4), pb::HealthColour::Green, 0),
        update(
            pb::status_update::Subject::Identity("not-hex".into()),
            pb::HealthColour::Green,
            now(),
        ),
    ];
    let token = gateway.token(CallerKind::BackEnd, "ops-console", None);
    let response = feed
        .publish(authed(pb::PublishRequest { updates }, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.applied, 1);
    let rejected: Vec<(u32, &str)> = response.rejected.iter().map(|r| (r.index, r.reason.as_str())).collect();
    assert_eq!(rejected.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 2, 3, 4, 5]);
    assert!(
        rejected[0].1.contains("check digit") && !rejected[0].1.contains(bad_id),
        "{}",
        rejected[0].1
    );
    assert!(rejected[2].1.contains("colour: unknown value 9"), "{}", rejected[2].1);
    let mut gate = gateway.gate().await;
    let response = gate
        .authorize(tap(card("1000000000000002")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        outcome(&response),
        (Verdict::Allow, Reason::HealthGreen),
        "the good row landed"
    );
}

#[tokio::test]
async fn oversized_batches_are_refused_and_a_disabled_feed_is_unimplemented() {
    let (gateway, _) = GatewayBuilder::new().feed().start().await;
    let mut feed = HealthFeedClient::new(gateway.channel().await);
    let token = gateway.token(CallerKind::HealthPlatform, "health-platform", None);
    let updates = vec![update(by_id_number(1), pb::HealthColour::Green, 5); 10_001];
    let status = feed
        .publish(authed(pb::PublishRequest { updates }, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let (closed, _) = GatewayBuilder::new().start().await;
    let status = HealthFeedClient::new(closed.channel().await)
        .publish(pb::PublishRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn publishing_needs_a_health_platform_or_back_end_token() {
    let (gateway, _) = GatewayBuilder::new().feed().start().await;
    let mut feed = HealthFeedClient::new(gateway.channel().await);
    let request = || pb::PublishRequest {
        updates: vec![update(by_id_number(1), pb::HealthColour::Red, now())],
    };
    let status = feed.publish(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("Bearer"), "{}", status.message());
    let status = feed.publish(authed(request(), "not.a.token")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let app = gateway.token(CallerKind::App, "alipay-backend", Some("alipay"));
    assert_eq!(
        feed.publish(authed(request(), &app)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn an_ingest_stream_acknowledges_each_batch_in_order_and_ends_on_an_oversize_one() {
    let (gateway, _) = GatewayBuilder::new()
        .feed()
        .card("1000000000000011", 11)
        .status(11, GREEN)
        .card("1000000000000012", 12)
        .start()
        .await;
    let mut feed = HealthFeedClient::new(gateway.channel().await);
    let mut gate = gateway.gate().await;
    let token = gateway.token(CallerKind::HealthPlatform, "health-platform", None);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = feed
        .ingest(authed(tokio_stream::wrappers::ReceiverStream::new(rx), &token))
        .await
        .unwrap()
        .into_inner();

    // Batch 7 turns rider 11 red; its second row has no subject and is rejected.
    let bad = pb::StatusUpdate {
        subject: None,
        ..update(by_id_number(12), pb::HealthColour::Green, now())
    };
    let batch = pb::StatusBatch {
        sequence: 7,
        updates: vec![update(by_id_number(11), pb::HealthColour::Red, now()), bad],
    };
    tx.send(batch).await.unwrap();
    let ack = acks.message().await.unwrap().unwrap();
    assert_eq!((ack.sequence, ack.applied), (7, 1));
    assert_eq!(ack.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [1]);
    let response = gate
        .authorize(tap(card("1000000000000011")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        outcome(&response),
        (Verdict::Deny, Reason::HealthRed),
        "applied when acknowledged"
    );

    // The rejected row, sent again, lands; acks come back in order.
    for sequence in [8, 9] {
        let batch = pb::StatusBatch {
            sequence,
            updates: vec![update(by_id_number(12), pb::HealthColour::Green, now())],
        };
        tx.send(batch).await.unwrap();
    }
    for sequence in [8, 9] {
        let ack = acks.message().await.unwrap().unwrap();
        assert_eq!((ack.sequence, ack.applied, ack.rejected.len()), (sequence, 1, 0));
    }
    let response = gate
        .authorize(tap(card("1000000000000012")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&response), (Verdict::Allow, Reason::HealthGreen));

    let oversize = pb::StatusBatch {
        sequence: 10,
        updates: vec![update(by_id_number(12), pb::HealthColour::Green, 5); 10_001],
    };
    tx.send(oversize).await.unwrap();
    let status = acks.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("batch 10:"), "{}", status.message());
}

#[tokio::test]
async fn an_ingest_stream_needs_a_health_platform_or_back_end_token() {
    let (gateway, _) = GatewayBuilder::new().feed().start().await;
    let mut feed = HealthFeedClient::new(gateway.channel().await);
    let status = feed
        .ingest(tokio_stream::iter(Vec::<pb::StatusBatch>::new()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let app = gateway.token(CallerKind::App, "alipay-backend", Some("alipay"));
    let status = feed
        .ingest(authed(tokio_stream::iter(Vec::<pb::StatusBatch>::new()), &app))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn the_mass_deny_brake_holds_a_flood_of_red_until_an_operator_confirms() {
    const RIDERS: u64 = 20;
    let card_of = |person: u64| format!("50{person:014}");
    let mut builder = GatewayBuilder::new()
        .feed()
        .toml("[health.brake]\nmax_share = 0.1\nmin_turns = 2\nwindow = \"10m\"");
    for person in 0..RIDERS {
        builder = builder
            .card(&card_of(person), 60_000 + person)
            .status(60_000 + person, GREEN);
    }
    let (gateway, _) = builder.start().await;
    let token = gateway.token(CallerKind::HealthPlatform, "health-platform", None);
    let mut feed = HealthFeedClient::new(gateway.channel().await);
    let red_all = || pb::PublishRequest {
        updates: (0..RIDERS)
            .map(|p| update(by_id_number(60_000 + p), pb::HealthColour::Red, now()))
            .collect(),
    };
    // 10% of 20 riders may turn within the window: 2 pass, 18 are held, not applied,
    // and each is reported with why.
    let published = feed.publish(authed(red_all(), &token)).await.unwrap().into_inner();
    assert_eq!(published.applied, 2);
    assert_eq!(published.rejected.len(), 18);
    assert!(
        published.rejected[0].reason.contains("mass-deny brake"),
        "{}",
        published.rejected[0].reason
    );
    assert_eq!(gateway.metric("ridegate_brake_engaged").await, 1.0);
    assert_eq!(gateway.metric("ridegate_brake_held").await, 18.0);
    let mut gate = gateway.gate().await;
    let mut red = 0;
    for person in 0..RIDERS {
        let answer = gate.authorize(tap(card(&card_of(person)))).await.unwrap().into_inner();
        red += usize::from(outcome(&answer) == (Verdict::Deny, Reason::HealthRed));
    }
    assert_eq!(red, 2, "held changes do not reach the gates");
    assert!(gateway.log().contains("mass-deny brake engaged"));
    // Going green is never held.
    let green = pb::PublishRequest {
        updates: vec![update(by_id_number(60_000), pb::HealthColour::Green, now())],
    };
    assert_eq!(
        feed.publish(authed(green, &token)).await.unwrap().into_inner().applied,
        1
    );

    // The operator checks and confirms; the platform sends the held changes again.
    let confirmed = gateway.admin_post("/brake/confirm").await;
    assert!(
        confirmed.contains("200 OK") && confirmed.contains("held=18"),
        "{confirmed}"
    );
    assert_eq!(gateway.metric("ridegate_brake_engaged").await, 0.0);
    let published = feed.publish(authed(red_all(), &token)).await.unwrap().into_inner();
    assert_eq!((published.applied, published.rejected.len()), (20, 0));
    let answer = gate
        .authorize(tap(card(&card_of(RIDERS - 1))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&answer), (Verdict::Deny, Reason::HealthRed));
}
