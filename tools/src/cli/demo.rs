//! `ridegate demo`: one command that shows ridegate working. It starts a real server on
//! a free loopback port with three issuers (fresh keys), a synthetic population loaded
//! through the same files an operator would use, and a station in shadow mode; then it
//! acts as a gate controller over gRPC, prints a table of decisions and a latency
//! summary, and checks every answer — a wrong one fails the command.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ridegate_adapters::caller::{CallerKind, CallerTokenMinter};
use ridegate_adapters::credential::ride_code::{CodeMinter, DeviceCodeMinter, SigningAlg, SigningKey};
use ridegate_adapters::ids::synthetic_resident_id;
use ridegate_core::clock::Clock;
use ridegate_core::model::{Mode, UnixMillis};
use ridegate_proto::pb::gate_client::GateClient;
use ridegate_proto::pb::health_feed_client::HealthFeedClient;
use ridegate_proto::pb::links_client::LinksClient;
use ridegate_proto::pb::{self, Reason, Verdict};
use tonic::transport::Channel;

use super::keys::random_jti;
use super::{Failure, runtime};
use ridegate::config::{Config, IssuerConfig, LogConfig};

/// `ridegate demo` options.
#[derive(Debug, clap::Args)]
pub(super) struct DemoArgs {
    /// Card taps in the latency run.
    #[arg(long, default_value_t = 2_000)]
    taps: u32,
    /// Ride-code taps in the latency run (each code freshly minted beforehand).
    #[arg(long, default_value_t = 500)]
    code_taps: u32,
    /// Taps in flight at once in the latency run.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Riders in the synthetic population.
    #[arg(long, default_value_t = 10_000)]
    riders: u64,
}

/// Riders with a role in the table; the rest of the population is green.
const YELLOW: u64 = 1;
const RED: u64 = 2;
const UNTESTED: u64 = 3;
const NO_RECORD: u64 = 4;
const TURNS_RED: u64 = 5;
const LINKS_ON_THE_SPOT: u64 = 6;
/// A card number no rider has linked (beyond the population).
const UNLINKED: u64 = 99_999_999;
const GREEN: u64 = 10;

fn card_number(rider: u64) -> String {
    format!("10007543{rider:08}")
}

fn account(issuer: &str, rider: u64) -> String {
    format!("{issuer}-{rider:08}")
}

struct Issuers {
    alipay: CodeMinter,
    yitongxing: CodeMinter,
    unionpay: CodeMinter,
}

/// Runs the demo.
pub(super) fn run(args: DemoArgs) -> Result<(), Failure> {
    ridegate::telemetry::init(&LogConfig {
        filter: "warn".into(),
        ..LogConfig::default()
    })
    .map_err(Failure::usage)?;
    runtime()?.block_on(demo(args)).map_err(Failure::runtime)
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let (config, issuers, callers) = prepare(dir.path(), args.riders)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind")?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ridegate::run(config, listener, async {
        let _ = stop_rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .context("connect")?;
    // Like a gate controller, check health once connected: the first call on a fresh
    // client connection pays the client's own set-up, not ridegate's.
    tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ridegate.v1.Gate".into(),
        })
        .await
        .context("health check")?;
    let mut gate = GateClient::new(channel.clone());
    println!(
        "ridegate demo — server on {addr}, {} riders, issuers: alipay, yitongxing, unionpay\n",
        args.riders
    );

    let mut services = Services {
        feed: HealthFeedClient::new(channel.clone()),
        links: LinksClient::new(channel),
        callers: &callers,
    };
    let failures = table(&mut gate, &mut services, &issuers).await?;
    latency(&gate, &issuers, &args).await?;

    let _ = stop_tx.send(());
    server.await.context("server task")??;
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
    println!(
        "\naudit: {} decisions recorded as JSON lines (riders appear only as pseudonyms)",
        audit.lines().count()
    );
    if let Some(shadow) = audit.lines().find(|l| l.contains("\"mode\":\"shadow\"")) {
        println!("a shadow-mode record: {shadow}");
    }
    anyhow::ensure!(failures.is_empty(), "unexpected answers: {}", failures.join("; "));
    Ok(())
}

/// Keys, population files and configuration in `dir`.
fn prepare(dir: &Path, riders: u64) -> anyhow::Result<(Config, Issuers, CallerTokenMinter)> {
    let mut config = Config::default();
    // A demonstration keeps nothing.
    config.storage.ephemeral = true;
    // The caller key that signs the health platform's and the upgrade service's tokens.
    let caller_key = SigningKey::generate(SigningAlg::EdDsa, "callers-demo")?;
    let callers_jwks = dir.join("callers.jwks.json");
    std::fs::write(
        &callers_jwks,
        serde_json::json!({ "keys": [caller_key.public_jwk()?] }).to_string(),
    )?;
    config.callers.jwks_file = Some(callers_jwks);
    let mut minter = |id: &str, alg| -> anyhow::Result<CodeMinter> {
        let key = SigningKey::generate(alg, format!("{id}-demo"))?;
        let jwks = dir.join(format!("{id}.jwks.json"));
        std::fs::write(&jwks, serde_json::json!({ "keys": [key.public_jwk()?] }).to_string())?;
        config.issuers.insert(
            id.into(),
            IssuerConfig {
                jwks_file: Some(jwks),
                ..IssuerConfig::default()
            },
        );
        Ok(CodeMinter::new(id, key))
    };
    let issuers = Issuers {
        alipay: minter("alipay", SigningAlg::EdDsa)?,
        yitongxing: minter("yitongxing", SigningAlg::Es256)?,
        unionpay: minter("unionpay", SigningAlg::EdDsa)?,
    };

    let now = now().0;
    let mut links = std::io::BufWriter::new(std::fs::File::create(dir.join("links.jsonl"))?);
    let mut health = std::io::BufWriter::new(std::fs::File::create(dir.join("health.jsonl"))?);
    for rider in 1..=riders {
        let id = synthetic_resident_id(rider);
        writeln!(
            links,
            r#"{{"card": {{"number": "{}"}}, "id_number": "{id}"}}"#,
            card_number(rider)
        )?;
        for issuer in ["alipay", "yitongxing"] {
            writeln!(
                links,
                r#"{{"ride_account": {{"issuer": "{issuer}", "account": "{}"}}, "id_number": "{id}"}}"#,
                account(issuer, rider)
            )?;
        }
        let (colour, tested) = match rider {
            YELLOW => ("yellow", true),
            RED => ("red", true),
            UNTESTED => ("green", false),
            NO_RECORD => continue,
            _ => ("green", true),
        };
        let tested = if tested {
            format!(r#", "negative_test_at_unix_ms": {}"#, now - 5 * 3_600_000)
        } else {
            String::new()
        };
        writeln!(
            health,
            r#"{{"id_number": "{id}", "colour": "{colour}", "set_at_unix_ms": {}{tested}}}"#,
            now - 86_400_000
        )?;
    }
    let commemorative = synthetic_resident_id(GREEN);
    writeln!(
        links,
        r#"{{"ticket": {{"kind": "commemorative", "number": "CM-2022-0609"}}, "id_number": "{commemorative}"}}"#
    )?;
    links.flush()?;
    health.flush()?;

    config.server.listen = "127.0.0.1:0".parse()?;
    config.server.drain_grace = Duration::from_secs(1);
    config.server.drain_delay = Duration::ZERO;
    config.identity.secret = ridegate_adapters::ids::random_hex::<16>();
    config.links.file = Some(dir.join("links.jsonl"));
    config.health.file = Some(dir.join("health.jsonl"));
    config.health.feed_enabled = true;
    config.policy.stations.insert("S-SHADOW".into(), Mode::Shadow);
    config.audit.path = dir.join("audit.jsonl").display().to_string();
    config.validate()?;
    Ok((config, issuers, CallerTokenMinter::new(caller_key)))
}

fn now() -> UnixMillis {
    Clock::System.now()
}

fn tap(credential: pb::authorize_request::Credential) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        request_id: random_jti(),
        gate: Some(pb::GateContext {
            gate_id: "L10-S07-G03".into(),
            station_id: "S07".into(),
            line_id: "L10".into(),
            direction: pb::Direction::Entry.into(),
            tapped_at_unix_ms: now().0,
            budget_ms: 0,
        }),
        credential: Some(credential),
    }
}

fn code(qr: String) -> pb::authorize_request::Credential {
    pb::authorize_request::Credential::RideCode(pb::RideCode { qr_text: qr })
}

fn card(medium: pb::CardMedium, rider: u64) -> pb::authorize_request::Credential {
    pb::authorize_request::Credential::Card(pb::Card {
        medium: medium.into(),
        number: card_number(rider),
    })
}

fn phone(issuer: &CodeMinter, rider: u64) -> anyhow::Result<DeviceCodeMinter> {
    let key = SigningKey::generate(SigningAlg::EdDsa, "phone")?;
    let now = now();
    let cert = issuer.device_certificate(
        &account("yitongxing", rider),
        &random_jti(),
        &key,
        now,
        Duration::from_secs(86_400),
    )?;
    Ok(DeviceCodeMinter::new(cert, key))
}

/// The non-gate services the table drives, and the key for their callers' tokens.
struct Services<'a> {
    feed: HealthFeedClient<Channel>,
    links: LinksClient<Channel>,
    callers: &'a CallerTokenMinter,
}

impl Services<'_> {
    fn authed<T>(&self, message: T, kind: CallerKind, id: &str) -> anyhow::Result<tonic::Request<T>> {
        let token = self.callers.token(kind, id, None, now(), Duration::from_secs(300))?;
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        Ok(request)
    }
}

/// The scenario table; returns the scenarios whose answer was not the expected one.
async fn table(
    gate: &mut GateClient<Channel>,
    services: &mut Services<'_>,
    issuers: &Issuers,
) -> anyhow::Result<Vec<String>> {
    let now = now();
    let fresh = |minter: &CodeMinter, rider: u64, issuer: &str| {
        minter.code(&account(issuer, rider), &random_jti(), now, Duration::from_secs(30))
    };
    let used = tap(code(fresh(&issuers.alipay, GREEN, "alipay")?));
    let mut retried = used.clone();
    retried.request_id = used.request_id.clone();
    let mut replayed = used.clone();
    replayed.request_id = random_jti();
    let mut forged = fresh(&issuers.alipay, GREEN, "alipay")?;
    forged.replace_range(forged.len() - 6.., "AAAAAA");
    let mut exit = tap(card(pb::CardMedium::Physical, RED));
    if let Some(g) = exit.gate.as_mut() {
        g.direction = pb::Direction::Exit.into();
    }
    let mut shadow = tap(card(pb::CardMedium::Physical, RED));
    if let Some(g) = shadow.gate.as_mut() {
        g.station_id = "S-SHADOW".into();
    }
    let stranger = CodeMinter::new("hangzhou-metro", SigningKey::generate(SigningAlg::EdDsa, "hz-1")?);

    let rows: Vec<(&str, pb::AuthorizeRequest, (Verdict, Reason))> = vec![
        (
            "Alipay ride code, green rider",
            used,
            (Verdict::Allow, Reason::HealthGreen),
        ),
        (
            "Yitongxing offline code (device key)",
            tap(code(phone(&issuers.yitongxing, GREEN)?.code(
                &random_jti(),
                now,
                Duration::from_secs(15),
            )?)),
            (Verdict::Allow, Reason::HealthGreen),
        ),
        (
            "Yikatong card, yellow rider",
            tap(card(pb::CardMedium::Physical, YELLOW)),
            (Verdict::Deny, Reason::HealthYellow),
        ),
        (
            "Phone NFC card, red rider",
            tap(card(pb::CardMedium::PhoneNfc, RED)),
            (Verdict::Deny, Reason::HealthRed),
        ),
        (
            "NFC-SIM card, no test in 48 h",
            tap(card(pb::CardMedium::NfcSim, UNTESTED)),
            (Verdict::Deny, Reason::TestMissing),
        ),
        (
            "Card never linked",
            tap(card(pb::CardMedium::Physical, UNLINKED)),
            (Verdict::Assist, Reason::NotLinked),
        ),
        (
            "Linked, no health record",
            tap(card(pb::CardMedium::Physical, NO_RECORD)),
            (Verdict::Assist, Reason::NoHealthRecord),
        ),
        (
            "Gate retries the first tap",
            retried,
            (Verdict::Allow, Reason::HealthGreen),
        ),
        ("Same code shown again", replayed, (Verdict::Deny, Reason::CodeReplayed)),
        (
            "Expired code (10 min old)",
            tap(code(issuers.alipay.code(
                &account("alipay", GREEN),
                &random_jti(),
                now.plus_ms(-600_000),
                Duration::from_secs(30),
            )?)),
            (Verdict::Deny, Reason::CodeExpired),
        ),
        (
            "Forged code (signature altered)",
            tap(code(forged)),
            (Verdict::Deny, Reason::CodeBadSignature),
        ),
        (
            "Code from an unknown app",
            tap(code(stranger.code("x", &random_jti(), now, Duration::from_secs(30))?)),
            (Verdict::Deny, Reason::CodeUnknownIssuer),
        ),
        (
            "UnionPay code, account not linked",
            tap(code(fresh(&issuers.unionpay, GREEN, "unionpay")?)),
            (Verdict::Assist, Reason::NotLinked),
        ),
        ("Red rider leaving (exit)", exit, (Verdict::Allow, Reason::Exit)),
        (
            "Red rider at a shadow-mode station",
            shadow,
            (Verdict::Allow, Reason::CheckShadow),
        ),
        (
            "Bank card",
            tap(pb::authorize_request::Credential::Uncovered(pb::UncoveredCredential {
                kind: pb::UncoveredKind::BankCard.into(),
            })),
            (Verdict::Assist, Reason::NotCovered),
        ),
        (
            "Commemorative ticket, linked",
            tap(pb::authorize_request::Credential::Ticket(pb::Ticket {
                kind: pb::TicketKind::Commemorative.into(),
                number: "CM-2022-0609".into(),
            })),
            (Verdict::Allow, Reason::HealthGreen),
        ),
        (
            "Electronic single-journey ticket",
            tap(pb::authorize_request::Credential::Ticket(pb::Ticket {
                kind: pb::TicketKind::ElectronicSingleJourney.into(),
                number: "ESJ-0001".into(),
            })),
            (Verdict::Deny, Reason::TicketSuspended),
        ),
    ];
    println!(
        "{:>2}  {:<38} {:<7} {:<22} {:>8}  gate screen",
        "#", "tap", "verdict", "reason", "ms"
    );
    let mut failures = Vec::new();
    let mut n = 0;
    let mut show = |label: &str, response: &pb::AuthorizeResponse, elapsed: Duration, expect: (Verdict, Reason)| {
        n += 1;
        let got = (response.verdict(), response.reason());
        let mut screen = format!("{} / {}", response.message_en, response.message_zh);
        if response.shadow_verdict() != Verdict::Unspecified {
            let _ = write!(
                screen,
                "  [would be {} {}]",
                verdict_name(response.shadow_verdict()),
                reason_name(response.shadow_reason())
            );
        }
        if response.retry {
            screen.push_str("  [stored answer]");
        }
        let mark = if got == expect { ' ' } else { '!' };
        println!(
            "{n:>2}{mark} {label:<38} {:<7} {:<22} {:>8.2}  {screen}",
            verdict_name(got.0),
            reason_name(got.1),
            elapsed.as_secs_f64() * 1e3
        );
        if got != expect {
            failures.push(format!("{label}: got {got:?}, expected {expect:?}"));
        }
    };
    for (label, request, expect) in rows {
        let started = Instant::now();
        let response = gate.authorize(request).await?.into_inner();
        show(label, &response, started.elapsed(), expect);
    }
    // The health platform turns a rider red: the very next tap is refused.
    let update = pb::StatusUpdate {
        subject: Some(pb::status_update::Subject::IdNumber(synthetic_resident_id(TURNS_RED))),
        colour: pb::HealthColour::Red.into(),
        set_at_unix_ms: self::now().0,
        negative_test_at_unix_ms: 0,
    };
    let publish = services.authed(
        pb::PublishRequest { updates: vec![update] },
        CallerKind::HealthPlatform,
        "health-platform",
    )?;
    services.feed.publish(publish).await?;
    let started = Instant::now();
    let response = gate
        .authorize(tap(card(pb::CardMedium::Physical, TURNS_RED)))
        .await?
        .into_inner();
    show(
        "Rider turned red by a pushed status",
        &response,
        started.elapsed(),
        (Verdict::Deny, Reason::HealthRed),
    );
    // The unlinked card's rider links it on the spot at the upgrade service, helped by
    // staff; the next tap goes through.
    let link = pb::LinkRequest {
        credential: Some(pb::LinkCredential {
            credential: Some(pb::link_credential::Credential::Card(pb::Card {
                medium: pb::CardMedium::Physical.into(),
                number: card_number(UNLINKED),
            })),
        }),
        id_number: synthetic_resident_id(LINKS_ON_THE_SPOT),
        consent: pb::Consent::StaffAssisted.into(),
        staff_operator_id: "staff-S07-0042".into(),
    };
    services
        .links
        .link(services.authed(link, CallerKind::UpgradeService, "upgrade-service")?)
        .await?;
    let started = Instant::now();
    let response = gate
        .authorize(tap(card(pb::CardMedium::Physical, UNLINKED)))
        .await?
        .into_inner();
    show(
        "Same card, linked at the upgrade service",
        &response,
        started.elapsed(),
        (Verdict::Allow, Reason::HealthGreen),
    );
    Ok(failures)
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "ALLOW",
        Verdict::Deny => "DENY",
        Verdict::Assist => "ASSIST",
        Verdict::Unspecified => "-",
    }
}

fn reason_name(r: Reason) -> &'static str {
    r.as_str_name().trim_start_matches("REASON_")
}

/// Card and ride-code taps at a fixed concurrency; prints percentiles.
async fn latency(gate: &GateClient<Channel>, issuers: &Issuers, args: &DemoArgs) -> anyhow::Result<()> {
    let now = now();
    let riders = args.riders.max(GREEN + 1);
    let cards: Vec<pb::AuthorizeRequest> = (0..u64::from(args.taps))
        .map(|i| tap(card(pb::CardMedium::Physical, GREEN + i % (riders - GREEN))))
        .collect();
    let codes = (0..u64::from(args.code_taps))
        .map(|i| {
            let rider = GREEN + i % (riders - GREEN);
            Ok(tap(code(issuers.alipay.code(
                &account("alipay", rider),
                &random_jti(),
                now,
                Duration::from_secs(60),
            )?)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "\nlatency, client-observed over loopback gRPC (concurrency {}):",
        args.concurrency
    );
    println!(
        "  {:<12} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "taps", "count", "taps/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (label, requests) in [("cards", cards), ("ride codes", codes)] {
        run_load(gate, label, requests, args.concurrency).await?;
    }
    Ok(())
}

async fn run_load(
    gate: &GateClient<Channel>,
    label: &str,
    requests: Vec<pb::AuthorizeRequest>,
    concurrency: usize,
) -> anyhow::Result<()> {
    if requests.is_empty() {
        return Ok(());
    }
    let count = requests.len();
    let queue = Arc::new(parking_lot::Mutex::new(requests));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (queue, mut gate) = (queue.clone(), gate.clone());
            tokio::spawn(async move {
                let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
                loop {
                    let Some(request) = queue.lock().pop() else { break };
                    let t = Instant::now();
                    gate.authorize(request).await?;
                    histogram.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?;
                }
                anyhow::Ok(histogram)
            })
        })
        .collect();
    let mut all = hdrhistogram::Histogram::<u64>::new(3)?;
    for worker in workers {
        all.add(worker.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |q: f64| all.value_at_quantile(q) as f64 / 1e3;
    println!(
        "  {label:<12} {count:>6} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        count as f64 / elapsed,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        all.max() as f64 / 1e3
    );
    Ok(())
}
