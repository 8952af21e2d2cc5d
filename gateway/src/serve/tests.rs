//! Service-level tests: the tap path and every gRPC service of an [`App`] built from an
//! in-memory configuration (embedded stores, no Redis) on a manual clock, called
//! directly — or, for streams and health checking, over a server on 127.0.0.1:0.

use std::time::Duration;

use ridegate_adapters::caller::{CallerKind, CallerTokenMinter};
use ridegate_adapters::credential::ride_code::{CodeMinter, SigningAlg, SigningKey};
use ridegate_adapters::ids::synthetic_resident_id;
use ridegate_core::clock::Clock;
use ridegate_core::credential::{CardMedium, CardNumber, Credential};
use ridegate_core::decision::{GateContext, GateRequest};
use ridegate_core::model::{Direction, Reason, UnixMillis, Verdict};
use ridegate_proto::pb;
use ridegate_proto::pb::gate_server::Gate as _;
use ridegate_proto::pb::health_feed_server::HealthFeed as _;
use ridegate_proto::pb::links_server::Links as _;
use tokio::time::Instant;
use tonic::service::Interceptor as _;
use tonic::{Code, Request, Status};

use super::Services;
use crate::app::App;
use crate::authorize::Decided;
use crate::config::{Config, IssuerConfig};

/// 2025-06-15T15:06:40Z: any fixed time will do.
const START: UnixMillis = UnixMillis(1_750_000_000_000);
/// Short enough that a code outlives it (codes live up to a minute).
const RETRY_WINDOW: Duration = Duration::from_secs(10);
const CARD: &str = "1000000000000001";
const ACCOUNT: &str = "2088000011112222";
const HOUR_MS: i64 = 3_600_000;

/// One ridegate, built in process, with the keys to talk to it.
struct Fixture {
    app: App,
    services: Services,
    clock: Clock,
    codes: CodeMinter,
    callers: CallerTokenMinter,
    /// Kept so `Taps` streams are not told to drain.
    _draining: tokio::sync::watch::Sender<bool>,
}

/// A public key as an inline `keys = [...]` table.
fn inline_jwk(key: &SigningKey) -> toml::Table {
    let jwk = serde_json::to_value(key.public_jwk().expect("jwk")).expect("json");
    serde_json::from_value(jwk).expect("a table")
}

/// The configuration: embedded defaults (in memory only), an `alipay` issuer key, a
/// caller key, the feed on, audit discarded.
fn config(issuer: &SigningKey, callers: &SigningKey) -> Config {
    let mut config = Config::default();
    config.identity.secret = "service-test-secret".into();
    config.audit.path = "/dev/null".into();
    // Service tests keep nothing between runs.
    config.storage.ephemeral = true;
    config.health.feed_enabled = true;
    config.deadline.retry_window = RETRY_WINDOW;
    config.issuers.insert(
        "alipay".into(),
        IssuerConfig {
            keys: vec![inline_jwk(issuer)],
            ..IssuerConfig::default()
        },
    );
    config.callers.keys = vec![inline_jwk(callers)];
    config
}

impl Fixture {
    async fn new() -> Self {
        let issuer = SigningKey::generate(SigningAlg::EdDsa, "alipay-1").expect("issuer key");
        let caller = SigningKey::generate(SigningAlg::EdDsa, "callers-1").expect("caller key");
        let clock = Clock::manual(START);
        let app = App::build(config(&issuer, &caller), clock.clone())
            .await
            .expect("builds");
        let (draining, draining_rx) = tokio::sync::watch::channel(false);
        Self {
            services: Services::new(&app, draining_rx),
            app,
            clock,
            codes: CodeMinter::new("alipay", issuer),
            callers: CallerTokenMinter::new(caller),
            _draining: draining,
        }
    }

    /// A caller token valid for an hour from the manual clock's now.
    fn token(&self, kind: CallerKind, issuer: Option<&str>) -> String {
        self.callers
            .token(
                kind,
                "service-test",
                issuer,
                self.clock.now(),
                Duration::from_secs(3600),
            )
            .expect("token")
    }

    /// `message` as the interceptor passes it on: with the caller `token` stands for.
    fn authed<T>(&self, message: T, token: &str) -> Result<Request<T>, Status> {
        let mut head = Request::new(());
        head.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("header"));
        let (metadata, extensions, ()) = self.services.authenticator.clone().call(head)?.into_parts();
        Ok(Request::from_parts(metadata, extensions, message))
    }

    /// A ride code for [`ACCOUNT`], living a minute from now.
    fn code(&self, jti: &str) -> String {
        self.codes
            .code(ACCOUNT, jti, self.clock.now(), Duration::from_secs(60))
            .expect("mint")
    }

    /// Links [`CARD`] and [`ACCOUNT`] to the `person`-th synthetic resident, through
    /// the Links service.
    async fn link(&self, person: u64) {
        let back_end = self.token(CallerKind::BackEnd, None);
        let card = pb::LinkRequest {
            credential: Some(link_card(CARD)),
            id_number: synthetic_resident_id(person),
            consent: pb::Consent::BulkProgramme.into(),
            staff_operator_id: String::new(),
        };
        let account = pb::LinkRequest {
            credential: Some(link_account("alipay", ACCOUNT)),
            consent: pb::Consent::AppPopup.into(),
            ..card.clone()
        };
        let app = self.token(CallerKind::App, Some("alipay"));
        for (request, token) in [(card, &back_end), (account, &app)] {
            let linked = self
                .services
                .links
                .link(self.authed(request, token).expect("authenticated"))
                .await;
            assert_eq!(linked.expect("linked").into_inner().outcome(), pb::LinkOutcome::Linked);
        }
    }

    /// Publishes `colour` (tested an hour ago) for the `person`-th resident.
    async fn publish(&self, person: u64, colour: pb::HealthColour) {
        let platform = self.token(CallerKind::HealthPlatform, None);
        let request = pb::PublishRequest {
            updates: vec![update(person, colour, self.clock.now())],
        };
        let published = self
            .services
            .feed
            .as_ref()
            .expect("the feed is enabled")
            .publish(self.authed(request, &platform).expect("authenticated"))
            .await
            .expect("published")
            .into_inner();
        assert_eq!((published.applied, published.rejected.len()), (1, 0));
    }

    /// Decides `credential` under `request_id` on the tap path itself.
    async fn decide(&self, request_id: &str, credential: Credential) -> Decided {
        self.decide_at(request_id, credential, "S07", Direction::Entry).await
    }

    /// [`Fixture::decide`] at another station or in another direction (the gate id
    /// stays the same).
    async fn decide_at(
        &self,
        request_id: &str,
        credential: Credential,
        station: &str,
        direction: Direction,
    ) -> Decided {
        let received = Instant::now();
        let request = GateRequest {
            request_id: request_id.into(),
            gate: GateContext {
                gate_id: "L10-S07-G03".into(),
                station_id: station.into(),
                line_id: "L10".into(),
                direction,
                tapped_at: self.clock.now(),
                budget: None,
            },
            credential,
        };
        self.app
            .authorizer()
            .authorize(request, received, received + Duration::from_millis(180))
            .await
    }
}

fn link_card(number: &str) -> pb::LinkCredential {
    pb::LinkCredential {
        credential: Some(pb::link_credential::Credential::Card(pb::Card {
            medium: pb::CardMedium::Physical.into(),
            number: number.into(),
        })),
    }
}

fn link_account(issuer: &str, account: &str) -> pb::LinkCredential {
    pb::LinkCredential {
        credential: Some(pb::link_credential::Credential::RideAccount(pb::RideAccount {
            issuer: issuer.into(),
            account: account.into(),
        })),
    }
}

fn update(person: u64, colour: pb::HealthColour, at: UnixMillis) -> pb::StatusUpdate {
    pb::StatusUpdate {
        subject: Some(pb::status_update::Subject::IdNumber(synthetic_resident_id(person))),
        colour: colour.into(),
        set_at_unix_ms: at.0,
        negative_test_at_unix_ms: at.0 - HOUR_MS,
    }
}

fn card() -> Credential {
    Credential::Card {
        medium: CardMedium::Physical,
        number: CardNumber::parse(CARD).expect("card number"),
    }
}

fn ride_code(text: String) -> Credential {
    Credential::RideCode(text)
}

/// A wire tap with `request_id`.
fn tap(request_id: &str, credential: pb::authorize_request::Credential, now: UnixMillis) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        request_id: request_id.into(),
        gate: Some(pb::GateContext {
            gate_id: "L10-S07-G03".into(),
            station_id: "S07".into(),
            line_id: "L10".into(),
            direction: pb::Direction::Entry.into(),
            tapped_at_unix_ms: now.0,
            budget_ms: 0,
        }),
        credential: Some(credential),
    }
}

fn wire_card() -> pb::authorize_request::Credential {
    pb::authorize_request::Credential::Card(pb::Card {
        medium: pb::CardMedium::Physical.into(),
        number: CARD.into(),
    })
}

fn outcome(decided: &Decided) -> (Verdict, Reason) {
    (decided.answer.verdict, decided.answer.reason)
}

// The tap path: `Authorizer::authorize`.

#[tokio::test]
async fn a_linked_green_rider_is_allowed_and_an_unlinked_card_gets_assist() {
    let f = Fixture::new().await;
    let unlinked = f.decide("r-1", card()).await;
    assert_eq!(outcome(&unlinked), (Verdict::Assist, Reason::NotLinked));
    f.link(1).await;
    f.publish(1, pb::HealthColour::Green).await;
    let allowed = f.decide("r-2", card()).await;
    assert_eq!(outcome(&allowed), (Verdict::Allow, Reason::HealthGreen));
    assert!(!allowed.retry && !allowed.answer.degraded);
}

#[tokio::test]
async fn a_retry_with_the_same_gate_and_request_id_gets_the_stored_answer() {
    let f = Fixture::new().await;
    f.link(1).await;
    f.publish(1, pb::HealthColour::Green).await;
    let first = f.decide("r-1", card()).await;
    assert_eq!(outcome(&first), (Verdict::Allow, Reason::HealthGreen));
    assert!(!first.retry);

    // The rider turns red; a retry of the first request still gets its answer.
    f.clock.advance(Duration::from_secs(1));
    f.publish(1, pb::HealthColour::Red).await;
    let retried = f.decide("r-1", card()).await;
    assert_eq!(retried.answer, first.answer, "the stored answer, decision id included");
    assert!(retried.retry);
    // A new request id is a new tap.
    let fresh = f.decide("r-2", card()).await;
    assert_eq!(outcome(&fresh), (Verdict::Deny, Reason::HealthRed));
    assert!(!fresh.retry);
}

#[tokio::test]
async fn a_request_id_reused_for_another_tap_is_decided_afresh_never_given_the_stored_answer() {
    let f = Fixture::new().await;
    f.link(1).await;
    f.publish(1, pb::HealthColour::Green).await;
    let first = f.decide("42", card()).await;
    assert_eq!(outcome(&first), (Verdict::Allow, Reason::HealthGreen));
    // A gate that restarted its counter: the same id for an unlinked card.
    let stranger = Credential::Card {
        medium: CardMedium::Physical,
        number: CardNumber::parse("1000754399999999").expect("card number"),
    };
    let other = f.decide("42", stranger).await;
    assert_eq!(outcome(&other), (Verdict::Assist, Reason::NotLinked));
    assert!(!other.retry);
    // The same card leaving is another tap too.
    let exit = f.decide_at("42", card(), "S07", Direction::Exit).await;
    assert_eq!((outcome(&exit), exit.retry), ((Verdict::Allow, Reason::Exit), false));
    // The first tap's own retry still gets its answer.
    let retried = f.decide("42", card()).await;
    assert_eq!((retried.answer, retried.retry), (first.answer, true));
    let page = f.app.exposition.render().expect("metrics render");
    assert!(page.contains("ridegate_request_id_conflicts_total 2"), "{page}");
}

#[tokio::test]
async fn a_ride_code_under_a_reused_request_id_elsewhere_is_a_replay() {
    let f = Fixture::new().await;
    f.link(1).await;
    f.publish(1, pb::HealthColour::Green).await;
    let qr = f.code("jti-reuse");
    let first = f.decide("7", ride_code(qr.clone())).await;
    assert_eq!(outcome(&first), (Verdict::Allow, Reason::HealthGreen));
    // Same gate id and request id, same code, another station: not a retry of the tap.
    let elsewhere = f.decide_at("7", ride_code(qr.clone()), "S08", Direction::Entry).await;
    assert_eq!(
        (outcome(&elsewhere), elsewhere.retry),
        ((Verdict::Deny, Reason::CodeReplayed), false)
    );
    // The genuine retry is still answered as the first tap was.
    let retried = f.decide("7", ride_code(qr)).await;
    assert_eq!((retried.answer, retried.retry), (first.answer, true));
}

#[tokio::test]
async fn after_the_retry_window_the_same_request_id_is_decided_afresh() {
    let f = Fixture::new().await;
    f.link(1).await;
    f.publish(1, pb::HealthColour::Green).await;
    let first = f.decide("r-1", card()).await;
    f.publish(1, pb::HealthColour::Red).await;
    f.clock.advance(RETRY_WINDOW + Duration::from_secs(1));
    let later = f.decide("r-1", card()).await;
    assert!(!later.retry);
    assert_ne!(later.answer.decision_id, first.answer.decision_id);
    assert_eq!(outcome(&later), (Verdict::Deny, Reason::HealthRed));
}

#[tokio::test]
async fn a_ride_code_retried_under_its_request_id_is_not_a_replay_but_under_a_new_id_it_is() {
    let f = Fixture::new().await;
    f.link(1).await;
    f.publish(1, pb::HealthColour::Green).await;
    let qr = f.code("jti-1");
    let first = f.decide("A", ride_code(qr.clone())).await;
    assert_eq!(outcome(&first), (Verdict::Allow, Reason::HealthGreen));

    // Within the window: the stored answer.
    let retried = f.decide("A", ride_code(qr.clone())).await;
    assert!(retried.retry);
    assert_eq!(retried.answer, first.answer);

    // Past the window the code is still valid: the record lives as long as the code, so
    // a late retry still gets the kept answer — never a second acceptance.
    f.clock.advance(RETRY_WINDOW + Duration::from_secs(1));
    let late = f.decide("A", ride_code(qr.clone())).await;
    assert_eq!((late.answer, late.retry), (first.answer, true));

    // Under another request id, the same code is a replay.
    let replayed = f.decide("B", ride_code(qr)).await;
    assert!(!replayed.retry);
    assert_eq!(outcome(&replayed), (Verdict::Deny, Reason::CodeReplayed));
}

#[tokio::test]
async fn without_a_request_id_a_second_use_of_a_code_is_always_a_replay() {
    let f = Fixture::new().await;
    f.link(1).await;
    f.publish(1, pb::HealthColour::Green).await;
    let qr = f.code("jti-2");
    assert_eq!(
        outcome(&f.decide("", ride_code(qr.clone())).await),
        (Verdict::Allow, Reason::HealthGreen)
    );
    let again = f.decide("", ride_code(qr)).await;
    assert_eq!(outcome(&again), (Verdict::Deny, Reason::CodeReplayed));
    assert!(!again.retry);
}

// ridegate.v1.Gate, called directly.

#[tokio::test]
async fn gate_authorize_echoes_the_request_id_and_marks_retries() {
    let f = Fixture::new().await;
    f.link(1).await;
    f.publish(1, pb::HealthColour::Green).await;
    let gate = &f.services.gate;
    let now = f.clock.now();
    let first = gate
        .authorize(Request::new(tap("req-7", wire_card(), now)))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(
        (first.request_id.as_str(), first.verdict(), first.reason(), first.retry),
        ("req-7", pb::Verdict::Allow, pb::Reason::HealthGreen, false)
    );
    let again = gate
        .authorize(Request::new(tap("req-7", wire_card(), now)))
        .await
        .expect("answered")
        .into_inner();
    assert!(again.retry);
    assert_eq!(again.decision_id, first.decision_id);
}

#[tokio::test]
async fn gate_authorize_rejects_a_request_without_a_gate_as_invalid_argument() {
    let f = Fixture::new().await;
    let mut request = tap("req-8", wire_card(), f.clock.now());
    request.gate = None;
    let status = f
        .services
        .gate
        .authorize(Request::new(request))
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("gate"), "{}", status.message());
}

// ridegate.v1.Links, called directly behind the authenticator.

#[tokio::test]
async fn links_require_a_caller_token() {
    let f = Fixture::new().await;
    let missing = f.services.authenticator.clone().call(Request::new(()));
    assert_eq!(missing.expect_err("refused").code(), Code::Unauthenticated);
    let forged = f.authed((), "not-a-token");
    assert_eq!(forged.expect_err("refused").code(), Code::Unauthenticated);
}

#[tokio::test]
async fn links_link_look_up_and_unlink_and_the_gate_sees_each_step() {
    let f = Fixture::new().await;
    f.link(1).await;
    f.publish(1, pb::HealthColour::Green).await;
    let back_end = f.token(CallerKind::BackEnd, None);

    let lookup = pb::LookupRequest {
        subject: Some(pb::lookup_request::Subject::IdNumber(synthetic_resident_id(1))),
    };
    let found = f
        .services
        .links
        .lookup(f.authed(lookup, &back_end).expect("authenticated"))
        .await
        .expect("looked up")
        .into_inner();
    let mut masked: Vec<&str> = found.links.iter().map(|l| l.credential_masked.as_str()).collect();
    masked.sort_unstable();
    assert_eq!(masked, ["****0001", "****2222"]);
    assert_eq!(
        outcome(&f.decide("r-1", card()).await),
        (Verdict::Allow, Reason::HealthGreen)
    );

    let unlink = pb::UnlinkRequest {
        credential: Some(link_card(CARD)),
        staff_operator_id: "staff-42".into(),
    };
    let unlinked = f
        .services
        .links
        .unlink(f.authed(unlink, &back_end).expect("authenticated"))
        .await
        .expect("unlinked")
        .into_inner();
    assert_eq!(unlinked.credential_masked, "****0001");
    assert_eq!(
        outcome(&f.decide("r-2", card()).await),
        (Verdict::Assist, Reason::NotLinked)
    );
}

#[tokio::test]
async fn an_app_may_not_link_another_issuers_account() {
    let f = Fixture::new().await;
    let app = f.token(CallerKind::App, Some("alipay"));
    let request = pb::LinkRequest {
        credential: Some(link_account("cmb", ACCOUNT)),
        id_number: synthetic_resident_id(1),
        consent: pb::Consent::AppPopup.into(),
        staff_operator_id: String::new(),
    };
    let status = f
        .services
        .links
        .link(f.authed(request, &app).expect("authenticated"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
}

// ridegate.v1.HealthFeed, called directly behind the authenticator.

#[tokio::test]
async fn the_feed_applies_valid_updates_rejects_bad_ones_by_index_and_the_gate_sees_them() {
    let f = Fixture::new().await;
    f.link(1).await;
    let platform = f.token(CallerKind::HealthPlatform, None);
    let now = f.clock.now();
    let mut unspecified = update(2, pb::HealthColour::Green, now);
    unspecified.colour = pb::HealthColour::Unspecified.into();
    let request = pb::PublishRequest {
        updates: vec![update(1, pb::HealthColour::Red, now), unspecified],
    };
    let feed = f.services.feed.as_ref().expect("the feed is enabled");
    let published = feed
        .publish(f.authed(request, &platform).expect("authenticated"))
        .await
        .expect("published")
        .into_inner();
    assert_eq!(published.applied, 1);
    assert_eq!(published.rejected.len(), 1);
    assert_eq!(published.rejected[0].index, 1);
    assert!(
        published.rejected[0].reason.starts_with("colour"),
        "{:?}",
        published.rejected
    );
    assert_eq!(
        outcome(&f.decide("r-1", card()).await),
        (Verdict::Deny, Reason::HealthRed)
    );
}

#[tokio::test]
async fn only_the_platform_and_the_back_end_may_publish() {
    let f = Fixture::new().await;
    let app = f.token(CallerKind::App, Some("alipay"));
    let request = pb::PublishRequest {
        updates: vec![update(1, pb::HealthColour::Red, f.clock.now())],
    };
    let feed = f.services.feed.as_ref().expect("the feed is enabled");
    let status = feed
        .publish(f.authed(request, &app).expect("authenticated"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
}

// Streams and health checking, over a server on 127.0.0.1:0.

mod loopback {
    use futures::StreamExt as _;
    use ridegate_proto::pb::gate_client::GateClient;
    use tonic::transport::Channel;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    /// `app` served on a loopback port until the returned sender fires.
    async fn start(
        app: App,
    ) -> (
        Channel,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::serve(app, listener, None, async {
            let _ = stopped.await;
        }));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        (channel, stop, server)
    }

    async fn gate_status(health: &mut HealthClient<Channel>) -> ServingStatus {
        let request = HealthCheckRequest {
            service: "ridegate.v1.Gate".into(),
        };
        health.check(request).await.expect("checked").into_inner().status()
    }

    #[tokio::test]
    async fn health_checking_reports_serving_then_not_serving_while_draining() {
        let mut f = Fixture::new().await;
        f.app.config.server.drain_delay = Duration::from_millis(300);
        let (channel, stop, server) = start(f.app).await;
        let mut health = HealthClient::new(channel);
        assert_eq!(gate_status(&mut health).await, ServingStatus::Serving);
        let overall = health
            .check(HealthCheckRequest { service: String::new() })
            .await
            .expect("checked")
            .into_inner();
        assert_eq!(overall.status(), ServingStatus::Serving);

        stop.send(()).expect("server running");
        // Reported at once; calls are still accepted for `drain_delay`.
        let started = Instant::now();
        let draining = loop {
            let status = gate_status(&mut health).await;
            if status != ServingStatus::Serving {
                break status;
            }
            assert!(started.elapsed() < Duration::from_millis(250), "still SERVING");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(draining, ServingStatus::NotServing);
        server.await.expect("joined").expect("stopped cleanly");
    }

    #[tokio::test]
    async fn the_taps_stream_answers_every_tap_by_request_id_and_a_bad_one_in_place() {
        let f = Fixture::new().await;
        f.link(1).await;
        f.publish(1, pb::HealthColour::Green).await;
        let now = f.clock.now();
        let qr = f.code("jti-stream");
        let (channel, stop, server) = start(f.app).await;
        let mut gate = GateClient::new(channel);

        let mut no_gate = tap("t-bad", wire_card(), now);
        no_gate.gate = None;
        let code = pb::authorize_request::Credential::RideCode(pb::RideCode { qr_text: qr });
        let taps = vec![
            tap("t-card", wire_card(), now),
            tap("t-code", code.clone(), now),
            no_gate,
            tap("t-replay", code, now),
        ];
        let mut results = gate
            .taps(futures::stream::iter(taps))
            .await
            .expect("stream opened")
            .into_inner();
        let mut answers = std::collections::BTreeMap::new();
        while let Some(result) = results.next().await {
            match result.expect("a result").result.expect("set") {
                pb::tap_result::Result::Decision(d) => {
                    answers.insert(d.request_id.clone(), (d.verdict(), d.reason()));
                }
                pb::tap_result::Result::Error(e) => {
                    assert_eq!(e.code, Code::InvalidArgument as i32);
                    answers.insert(e.request_id, (pb::Verdict::Unspecified, pb::Reason::Unspecified));
                }
            }
        }
        assert_eq!(answers.len(), 4, "{answers:?}");
        assert_eq!(answers["t-card"], (pb::Verdict::Allow, pb::Reason::HealthGreen));
        assert_eq!(answers["t-bad"], (pb::Verdict::Unspecified, pb::Reason::Unspecified));
        // The code's two uses race within the stream: exactly one is a replay.
        let mut code_outcomes = [answers["t-code"], answers["t-replay"]];
        code_outcomes.sort_by_key(|(v, _)| *v as i32);
        assert_eq!(
            code_outcomes,
            [
                (pb::Verdict::Allow, pb::Reason::HealthGreen),
                (pb::Verdict::Deny, pb::Reason::CodeReplayed)
            ]
        );
        stop.send(()).expect("server running");
        server.await.expect("joined").expect("stopped cleanly");
    }
}

/// Arbitrary sequences of taps from a confused or hostile gate — request ids reused
/// across riders, codes shown again and again, at other stations, in both directions,
/// with time passing — against one in-process ridegate. Whatever the sequence: no entry
/// is let through for a rider who is not green and tested, no code is accepted twice,
/// and a retry gets only its own tap's answer.
mod sequences {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Who taps: a card of each kind of rider, or one of a few ride codes of the green
    /// rider's account.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Rider {
        Green,
        Red,
        Yellow,
        Untested,
        NoRecord,
        Unlinked,
        Code(u8),
    }

    impl Rider {
        fn card(self) -> Option<&'static str> {
            Some(match self {
                Rider::Green => CARD,
                Rider::Red => "1000000000000002",
                Rider::Yellow => "1000000000000003",
                Rider::Untested => "1000000000000004",
                Rider::NoRecord => "1000000000000005",
                Rider::Unlinked => "1000000000000009",
                Rider::Code(_) => return None,
            })
        }

        /// May this rider enter on health grounds?
        fn fit(self) -> bool {
            matches!(self, Rider::Green | Rider::Code(_))
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Tap {
            rider: Rider,
            request_id: Option<u8>,
            exit: bool,
            station: &'static str,
        },
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        let rider = prop_oneof![
            Just(Rider::Green),
            Just(Rider::Red),
            Just(Rider::Yellow),
            Just(Rider::Untested),
            Just(Rider::NoRecord),
            Just(Rider::Unlinked),
            (0u8..3).prop_map(Rider::Code),
        ];
        let tap = (
            rider,
            proptest::option::weighted(0.8, 0u8..4),
            proptest::bool::weighted(0.2),
            prop_oneof![Just("S07"), Just("S08")],
        )
            .prop_map(|(rider, request_id, exit, station)| Step::Tap {
                rider,
                request_id,
                exit,
                station,
            });
        prop_oneof![6 => tap, 1 => (0u64..20_000).prop_map(Step::Wait)]
    }

    /// Links `number` to the `person`-th resident through the Links service.
    async fn link_to(f: &Fixture, number: &str, person: u64) {
        let request = pb::LinkRequest {
            credential: Some(super::link_card(number)),
            id_number: synthetic_resident_id(person),
            consent: pb::Consent::BulkProgramme.into(),
            staff_operator_id: String::new(),
        };
        let token = f.token(CallerKind::BackEnd, None);
        f.services
            .links
            .link(f.authed(request, &token).expect("authenticated"))
            .await
            .expect("linked");
    }

    /// The population: green (person 1, card and account), red, yellow, green without
    /// a recent test, linked without a record, and an unlinked card.
    async fn population() -> (Fixture, HashMap<u8, String>) {
        let f = Fixture::new().await;
        f.link(1).await;
        f.publish(1, pb::HealthColour::Green).await;
        for (rider, person, colour) in [
            (Rider::Red, 2, Some(pb::HealthColour::Red)),
            (Rider::Yellow, 3, Some(pb::HealthColour::Yellow)),
            (Rider::Untested, 4, Some(pb::HealthColour::Green)),
            (Rider::NoRecord, 5, None),
        ] {
            link_to(&f, rider.card().expect("a card"), person).await;
            if let Some(colour) = colour {
                let mut status = update(person, colour, f.clock.now());
                if rider == Rider::Untested {
                    status.negative_test_at_unix_ms = f.clock.now().0 - 100 * HOUR_MS;
                }
                let token = f.token(CallerKind::HealthPlatform, None);
                let request = pb::PublishRequest { updates: vec![status] };
                let feed = f.services.feed.as_ref().expect("the feed is enabled");
                feed.publish(f.authed(request, &token).expect("authenticated"))
                    .await
                    .expect("published");
            }
        }
        let codes = (0..3).map(|k| (k, f.code(&format!("seq-{k}")))).collect();
        (f, codes)
    }

    async fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
        let (f, codes) = population().await;
        let mut accepted_codes: HashMap<u8, u64> = HashMap::new();
        // The answer kept for each tap under each request id, and when (ms since the
        // start) it was kept.
        type Kept = (ridegate_core::model::DecisionId, u64);
        let mut kept: HashMap<(u8, (Rider, bool, &'static str)), Kept> = HashMap::new();
        let mut elapsed = 0u64;
        let window = u64::try_from(RETRY_WINDOW.as_millis()).expect("small");
        for step in steps {
            let (rider, request_id, exit, station) = match step {
                Step::Wait(ms) => {
                    f.clock.advance(Duration::from_millis(ms));
                    elapsed += ms;
                    continue;
                }
                Step::Tap {
                    rider,
                    request_id,
                    exit,
                    station,
                } => (rider, request_id, exit, station),
            };
            let credential = match rider {
                Rider::Code(k) => ride_code(codes[&k].clone()),
                card_rider => Credential::Card {
                    medium: CardMedium::Physical,
                    number: CardNumber::parse(card_rider.card().expect("a card")).expect("number"),
                },
            };
            let direction = if exit { Direction::Exit } else { Direction::Entry };
            let id = request_id.map_or_else(String::new, |r| format!("r-{r}"));
            let decided = f.decide_at(&id, credential, station, direction).await;
            let answer = decided.answer;
            let tap = (rider, exit, station);
            let held = request_id.and_then(|r| kept.get(&(r, tap)).copied());
            if decided.retry {
                let (decision, _) = held.expect("a retry is given an answer kept for the same tap");
                prop_assert_eq!(decision, answer.decision_id, "a retry was given another answer");
                continue;
            }
            if let Some(r) = request_id {
                match held {
                    Some((_, at)) if elapsed - at < window => {
                        prop_assert!(false, "the same tap within the window was decided afresh");
                    }
                    _ => {
                        kept.insert((r, tap), (answer.decision_id, elapsed));
                    }
                }
            }
            if !exit && answer.verdict == Verdict::Allow {
                prop_assert!(rider.fit(), "{rider:?} let in: {answer:?}");
                prop_assert_eq!(answer.reason, Reason::HealthGreen);
            }
            if let (Rider::Code(k), Verdict::Allow) = (rider, answer.verdict) {
                let uses = accepted_codes.entry(k).or_default();
                *uses += 1;
                prop_assert!(*uses <= 1, "code {k} accepted {uses} times");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn no_sequence_of_taps_lets_the_wrong_rider_in_or_a_code_in_twice(
            steps in proptest::collection::vec(step(), 1..40)
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("a runtime");
            runtime.block_on(run(steps))?;
        }
    }
}

/// An offline upload whose gate claims its ride code lives for ever: the guard keeps it
/// only as long as any code can live (60 s, 5 s of skew either side), plus its grace.
#[tokio::test]
async fn a_gate_cannot_make_the_guard_keep_a_code_for_ever() {
    use ridegate_adapters::ids::CodeKey;
    use ridegate_adapters::replay::USED_CODE_GRACE_MS;
    use ridegate_core::credential::CredentialKind;
    use ridegate_core::model::Mode;

    use crate::authorize::{OfflineRecord, OfflineRecorded};

    let f = Fixture::new().await;
    let upload = |decision: u8| OfflineRecord {
        gate: GateContext {
            gate_id: "L10-S07-G03".into(),
            station_id: "S07".into(),
            line_id: "L10".into(),
            direction: Direction::Entry,
            tapped_at: f.clock.now(),
            budget: None,
        },
        credential_kind: CredentialKind::RideCode,
        issuer: Some("alipay".into()),
        code: Some((CodeKey([5; 16]), UnixMillis(i64::MAX))),
        verdict: Verdict::Allow,
        reason: Reason::HealthGreen,
        mode: Mode::Enforce,
        degraded: true,
        state_age_ms: 0,
        decision_id: [decision; 16],
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    let authorizer = f.app.authorizer();
    let first = authorizer.record_offline(upload(1), deadline).await;
    assert_eq!(
        first,
        OfflineRecorded::Recorded {
            code_first_use: Some(true)
        }
    );
    let longest = 60_000 + 2 * 5_000 + USED_CODE_GRACE_MS;
    f.clock
        .advance(Duration::from_millis(u64::try_from(longest - 1_000).expect("positive")));
    let within = authorizer.record_offline(upload(2), deadline).await;
    assert_eq!(
        within,
        OfflineRecorded::Recorded {
            code_first_use: Some(false)
        }
    );
    f.clock.advance(Duration::from_millis(2_000));
    let after = authorizer.record_offline(upload(3), deadline).await;
    assert_eq!(
        after,
        OfflineRecorded::Recorded {
            code_first_use: Some(true)
        }
    );
}
