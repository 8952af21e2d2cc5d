//! The gate library's decisions on a state it was handed, and what survives a restart.

use ridegate_adapters::credential::ride_code::{CodeMinter, IssuerSettings, IssuerSpec, SigningAlg, SigningKey};
use ridegate_adapters::ids::Pseudonymizer;
use ridegate_core::credential::{CardMedium, CardNumber, TicketKind, UncoveredKind};
use ridegate_core::decision::{GateContext, Rules};
use ridegate_core::gate_state::{CredentialTag, EntryStatus};
use ridegate_core::model::Colour;

use super::*;

const NOW: UnixMillis = UnixMillis(1_700_000_000_000);

struct Fixture {
    gate: OfflineGate,
    minter: CodeMinter,
    pseudonymizer: Pseudonymizer,
    clock: Clock,
    dir: tempfile::TempDir,
}

fn config_json(pseudonymizer: &Pseudonymizer, key: &SigningKey) -> String {
    let issuers = vec![IssuerSpec {
        id: "yitongxing".into(),
        name: "Yitongxing".into(),
        keys: vec![key.public_jwk().unwrap()],
        settings: IssuerSettings::default(),
    }];
    serde_json::json!({
        "rules": Rules::default(),
        "issuers": issuers,
        "limits": ridegate_adapters::credential::ride_code::VerifierLimits::default(),
        "credential_key": pseudonymizer.credentials().key_hex(),
    })
    .to_string()
}

fn tag(pseudonymizer: &Pseudonymizer, key: &LinkKey<'_>) -> CredentialTag {
    CredentialTag::of(&pseudonymizer.credential(key).0)
}

fn entry(tag: CredentialTag, colour: Colour) -> Entry {
    Entry {
        tag,
        status: Some(EntryStatus {
            colour,
            negative_test_at: Some(NOW.plus_ms(-3_600_000)),
        }),
    }
}

/// A gate holding: card …01 green, card …02 red, ride account acct-1 green.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(NOW);
    let pseudonymizer = Pseudonymizer::new(b"0123456789abcdef").unwrap();
    let key = SigningKey::generate(SigningAlg::Es256, "yitongxing-1").unwrap();
    let json = config_json(&pseudonymizer, &key);
    let gate = OfflineGate::open(GateSettings::new("http://127.0.0.1:1", dir.path()), clock.clone()).unwrap();
    let mut entries = Vec::new();
    entry(
        tag(
            &pseudonymizer,
            &LinkKey::Card {
                number: "1000000000000001",
            },
        ),
        Colour::Green,
    )
    .encode(&mut entries);
    entry(
        tag(
            &pseudonymizer,
            &LinkKey::Card {
                number: "1000000000000002",
            },
        ),
        Colour::Red,
    )
    .encode(&mut entries);
    entry(
        tag(
            &pseudonymizer,
            &LinkKey::RideAccount {
                issuer: "yitongxing",
                account: "acct-1",
            },
        ),
        Colour::Green,
    )
    .encode(&mut entries);
    let begin = pb::SnapshotBegin {
        epoch: 7,
        version: 3,
        config_json: json,
        entries: 3,
    };
    gate.apply_snapshot(&begin, &entries).unwrap();
    Fixture {
        gate,
        minter: CodeMinter::new("yitongxing", key),
        pseudonymizer,
        clock,
        dir,
    }
}

/// Applies a delta at `version` that turns card `number` red.
fn turn_card_red(f: &Fixture, number: &str, version: u64) {
    let mut set = Vec::new();
    entry(tag(&f.pseudonymizer, &LinkKey::Card { number }), Colour::Red).encode(&mut set);
    f.gate
        .apply_delta(&pb::Delta {
            version,
            set,
            removed: Vec::new(),
            config_json: String::new(),
        })
        .unwrap();
}

fn tap(gate_id: &str, credential: Credential, direction: Direction) -> GateRequest {
    GateRequest {
        request_id: String::new(),
        gate: GateContext {
            gate_id: gate_id.into(),
            station_id: "s1".into(),
            line_id: "l1".into(),
            direction,
            tapped_at: NOW,
            budget: None,
        },
        credential,
    }
}

fn card(number: &str) -> Credential {
    Credential::Card {
        medium: CardMedium::Physical,
        number: CardNumber::parse(number).unwrap(),
    }
}

fn verdict_and_reason(a: OfflineAnswer) -> (Verdict, Reason) {
    assert!(a.offline);
    (a.verdict, a.reason)
}

#[test]
fn decides_as_ridegate_would_on_the_state_it_holds() {
    let f = fixture();
    let decide = |c: Credential| verdict_and_reason(f.gate.decide(&tap("g1", c, Direction::Entry)).unwrap());
    assert_eq!(decide(card("1000000000000001")), (Verdict::Allow, Reason::HealthGreen));
    assert_eq!(decide(card("1000000000000002")), (Verdict::Deny, Reason::HealthRed));
    assert_eq!(decide(card("1000000000000003")), (Verdict::Assist, Reason::NotLinked));
    assert_eq!(
        decide(Credential::Uncovered(UncoveredKind::BankCard)),
        (Verdict::Assist, Reason::NotCovered)
    );
    let exit = f
        .gate
        .decide(&tap("g1", card("1000000000000002"), Direction::Exit))
        .unwrap();
    assert_eq!((exit.verdict, exit.reason), (Verdict::Allow, Reason::Exit));
    assert_eq!(f.gate.status().pending_uploads, 5);
}

#[test]
fn a_ride_code_verifies_here_and_is_refused_the_second_time_at_any_gate() {
    let f = fixture();
    let code = f.minter.code("acct-1", "jti-1", NOW, Duration::from_secs(30)).unwrap();
    let first = f
        .gate
        .decide(&tap("g1", Credential::RideCode(code.clone()), Direction::Entry))
        .unwrap();
    assert_eq!((first.verdict, first.reason), (Verdict::Allow, Reason::HealthGreen));
    let second = f
        .gate
        .decide(&tap("g2", Credential::RideCode(code), Direction::Entry))
        .unwrap();
    assert_eq!((second.verdict, second.reason), (Verdict::Deny, Reason::CodeReplayed));
    let forged = f
        .gate
        .decide(&tap("g1", Credential::RideCode("not.a.code".into()), Direction::Entry))
        .unwrap();
    assert_eq!(forged.verdict, Verdict::Deny);
    // The first use is kept for upload with its single-use key.
    let pending = f.gate.0.pending.lock();
    let uploaded = pb::OfflineDecision::decode(pending[0].as_slice()).unwrap();
    assert_eq!(uploaded.code_key.len(), 16);
    assert_eq!(uploaded.issuer, "yitongxing");
    assert_eq!(uploaded.verdict, pb::Verdict::Allow as i32);
}

#[test]
fn a_device_signed_code_verifies_offline_and_is_single_use_too() {
    use ridegate_adapters::credential::ride_code::DeviceCodeMinter;
    let f = fixture();
    let phone_key = SigningKey::generate(SigningAlg::EdDsa, "device").unwrap();
    let certificate = f
        .minter
        .device_certificate("acct-1", "cert-1", &phone_key, NOW, Duration::from_secs(86_400))
        .unwrap();
    let phone = DeviceCodeMinter::new(certificate, phone_key);
    let code = phone.code("d-1", NOW, Duration::from_secs(30)).unwrap();
    let first = f
        .gate
        .decide(&tap("g1", Credential::RideCode(code.clone()), Direction::Entry))
        .unwrap();
    assert_eq!((first.verdict, first.reason), (Verdict::Allow, Reason::HealthGreen));
    let second = f
        .gate
        .decide(&tap("g2", Credential::RideCode(code), Direction::Entry))
        .unwrap();
    assert_eq!(second.reason, Reason::CodeReplayed);
}

#[test]
fn a_state_past_its_age_is_not_answered_as_fact() {
    let f = fixture();
    f.clock.advance(Duration::from_secs(601));
    let stale = f
        .gate
        .decide(&tap("g1", card("1000000000000001"), Direction::Entry))
        .unwrap();
    assert_eq!(
        (stale.verdict, stale.reason),
        (Verdict::Assist, Reason::HealthUnavailable)
    );
    assert_eq!(stale.state_age_ms, Some(601_000));
}

#[test]
fn a_negative_test_that_expires_offline_is_seen_at_the_gate() {
    let f = fixture();
    // Tested an hour before NOW; the default rules want a test within 72 hours.
    f.clock.advance(Duration::from_secs(71 * 3600 - 60));
    // Keep the state fresh: a heartbeat just now.
    f.gate.0.state.write().confirmed_at = Some(f.clock.now());
    let a = f
        .gate
        .decide(&tap("g1", card("1000000000000001"), Direction::Entry))
        .unwrap();
    assert_eq!(a.reason, Reason::TestMissing);
}

#[test]
fn a_gate_that_never_had_a_state_sends_riders_to_staff() {
    let dir = tempfile::tempdir().unwrap();
    let gate = OfflineGate::open(GateSettings::new("http://127.0.0.1:1", dir.path()), Clock::manual(NOW)).unwrap();
    let a = gate
        .decide(&tap("g1", card("1000000000000001"), Direction::Entry))
        .unwrap();
    assert_eq!(
        (a.verdict, a.reason, a.degraded),
        (Verdict::Assist, Reason::HealthUnavailable, true)
    );
}

#[test]
fn state_used_codes_and_offline_decisions_survive_a_restart() {
    let f = fixture();
    let code = f.minter.code("acct-1", "jti-9", NOW, Duration::from_secs(30)).unwrap();
    f.gate
        .decide(&tap("g1", Credential::RideCode(code.clone()), Direction::Entry))
        .unwrap();
    // A delta turns card …01 red.
    turn_card_red(&f, "1000000000000001", 4);
    let settings = GateSettings::new("http://127.0.0.1:1", f.dir.path());
    drop(f.gate);
    let gate = OfflineGate::open(settings, f.clock.clone()).unwrap();
    let status = gate.status();
    assert_eq!((status.epoch, status.version, status.entries), (7, 4, 3));
    assert_eq!(status.pending_uploads, 1);
    let red = gate
        .decide(&tap("g1", card("1000000000000001"), Direction::Entry))
        .unwrap();
    assert_eq!((red.verdict, red.reason), (Verdict::Deny, Reason::HealthRed));
    let again = gate
        .decide(&tap("g2", Credential::RideCode(code), Direction::Entry))
        .unwrap();
    assert_eq!(again.reason, Reason::CodeReplayed);
}

#[test]
fn every_verdict_reason_and_kind_has_its_wire_value() {
    for reason in Reason::ALL {
        assert_ne!(wire_reason(reason), 0, "{reason:?}");
    }
    for verdict in [Verdict::Allow, Verdict::Deny, Verdict::Assist] {
        assert_ne!(wire_verdict(verdict), 0);
    }
    for mode in [Mode::Enforce, Mode::Shadow, Mode::Off] {
        assert_ne!(wire_mode(mode), 0);
    }
    for medium in [CardMedium::Physical, CardMedium::PhoneNfc, CardMedium::NfcSim] {
        assert_ne!(wire_enum(medium_name(medium), pb::CardMedium::from_str_name), 0);
    }
    for kind in [
        TicketKind::SingleJourney,
        TicketKind::Commemorative,
        TicketKind::ElectronicSingleJourney,
    ] {
        let name = format!("TICKET_KIND_{}", kind.label().to_ascii_uppercase());
        assert_ne!(wire_enum(&name, pb::TicketKind::from_str_name), 0);
    }
    for kind in [
        UncoveredKind::BankCard,
        UncoveredKind::DigitalRmbWearable,
        UncoveredKind::PrepaidETicket,
        UncoveredKind::AirRailTicket,
    ] {
        let name = format!("UNCOVERED_KIND_{}", kind.label().to_ascii_uppercase());
        assert_ne!(wire_enum(&name, pb::UncoveredKind::from_str_name), 0);
    }
}

#[test]
fn a_record_torn_by_a_crash_is_cut_off_and_what_follows_reads_back() {
    let f = fixture();
    f.gate
        .decide(&tap("g1", card("1000000000000001"), Direction::Entry))
        .unwrap();
    let settings = GateSettings::new("http://127.0.0.1:1", f.dir.path());
    drop(f.gate);
    // A crash in the middle of the next record: a length prefix and half a record.
    let path = f.dir.path().join("offline.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&path, bytes).unwrap();
    let gate = OfflineGate::open(settings.clone(), f.clock.clone()).unwrap();
    assert_eq!(gate.status().pending_uploads, 1);
    gate.decide(&tap("g1", card("1000000000000002"), Direction::Entry))
        .unwrap();
    drop(gate);
    let gate = OfflineGate::open(settings, f.clock.clone()).unwrap();
    assert_eq!(gate.status().pending_uploads, 2);
}

#[test]
fn deltas_left_over_from_before_a_snapshot_are_not_replayed() {
    let f = fixture();
    turn_card_red(&f, "1000000000000001", 4);
    let stale = std::fs::read(f.dir.path().join("deltas.bin")).unwrap();
    // A new epoch's snapshot (ridegate crashed and came back) with card …01 green.
    let config = f.gate.0.state.read().config.as_ref().unwrap().json.clone();
    let mut entries = Vec::new();
    entry(
        tag(
            &f.pseudonymizer,
            &LinkKey::Card {
                number: "1000000000000001",
            },
        ),
        Colour::Green,
    )
    .encode(&mut entries);
    let begin = pb::SnapshotBegin {
        epoch: 8,
        version: 1,
        config_json: config,
        entries: 1,
    };
    f.gate.apply_snapshot(&begin, &entries).unwrap();
    // A crash after the state file was replaced, before the deltas were emptied.
    std::fs::write(f.dir.path().join("deltas.bin"), stale).unwrap();
    let settings = GateSettings::new("http://127.0.0.1:1", f.dir.path());
    drop(f.gate);
    let gate = OfflineGate::open(settings, f.clock.clone()).unwrap();
    let status = gate.status();
    assert_eq!((status.epoch, status.version, status.entries), (8, 1, 1));
    let green = gate
        .decide(&tap("g1", card("1000000000000001"), Direction::Entry))
        .unwrap();
    assert_eq!(green.reason, Reason::HealthGreen);
}
