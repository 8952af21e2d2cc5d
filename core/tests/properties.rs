//! Properties of the decision over arbitrary facts: under enforcing rules, no entry by a
//! red, yellow, untested, unlinked or unrecorded rider is ever let through, exits are
//! never refused, and a credential refused on its own is refused everywhere.

use std::time::Duration;

use proptest::prelude::*;
use ridegate_core::credential::{CardMedium, CredentialKind, TicketKind, UncoveredKind};
use ridegate_core::decision::{CredentialCheck, HealthView, Rules, Subject, Tap};
use ridegate_core::model::{Colour, Direction, HealthStatus, Mode, Reason, UnixMillis, Verdict};

const NOW: UnixMillis = UnixMillis(1_900_000_000_000);

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![Just(Verdict::Allow), Just(Verdict::Deny), Just(Verdict::Assist)]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Enforce), Just(Mode::Shadow), Just(Mode::Off)]
}

fn kind() -> impl Strategy<Value = CredentialKind> {
    prop_oneof![
        Just(CredentialKind::RideCode),
        Just(CredentialKind::Card(CardMedium::Physical)),
        Just(CredentialKind::Card(CardMedium::PhoneNfc)),
        Just(CredentialKind::Ticket(TicketKind::SingleJourney)),
        Just(CredentialKind::Ticket(TicketKind::Commemorative)),
        Just(CredentialKind::Ticket(TicketKind::ElectronicSingleJourney)),
        Just(CredentialKind::Uncovered(UncoveredKind::BankCard)),
    ]
}

fn check() -> impl Strategy<Value = CredentialCheck> {
    prop_oneof![
        3 => kind().prop_map(CredentialCheck::Passed),
        1 => proptest::sample::select(Reason::ALL.to_vec()).prop_map(CredentialCheck::Refused),
    ]
}

fn subject() -> impl Strategy<Value = Option<Subject>> {
    let colour = prop_oneof![Just(Colour::Green), Just(Colour::Yellow), Just(Colour::Red)];
    let status = (colour, proptest::option::of(0i64..200)).prop_map(|(colour, tested_hours_ago)| HealthStatus {
        colour,
        set_at: NOW.plus_ms(-3_600_000),
        negative_test_at: tested_hours_ago.map(|h| NOW.plus_ms(-h * 3_600_000)),
    });
    let known = (proptest::option::of(status), 0i64..600_000, any::<bool>()).prop_map(|(status, age_ms, degraded)| {
        HealthView::Known {
            status,
            age_ms,
            degraded,
        }
    });
    proptest::option::of(prop_oneof![
        Just(Subject::NotCovered),
        Just(Subject::NotLinked),
        Just(Subject::Linked(HealthView::Unavailable)),
        known.prop_map(Subject::Linked),
    ])
}

/// Rules whose verdicts for every non-green state are configured to refuse, with the
/// test rule on, in the given default mode.
fn strict(mode: Mode, unavailable: Verdict) -> Rules {
    Rules {
        default_mode: mode,
        unavailable,
        ..Rules::default()
    }
}

/// Whether this rider, by the rules' own standard (green, tested within 48 h), may
/// enter on health grounds.
fn fit(subject: Option<Subject>) -> bool {
    match subject {
        Some(Subject::Linked(HealthView::Known { status: Some(s), .. })) => {
            s.colour == Colour::Green && s.negative_test_at.is_some_and(|t| NOW.since(t) <= 48 * 3_600_000)
        }
        _ => false,
    }
}

proptest! {
    #[test]
    fn no_unfit_rider_enters_where_the_check_is_enforced(
        check in check(),
        rider in subject(),
        unavailable in verdict(),
    ) {
        let rules = strict(Mode::Enforce, unavailable);
        let tap = Tap { station_id: "S1", line_id: "L1", direction: Direction::Entry, credential: check };
        let o = rules.decide(&tap, rider, NOW);
        let uncovered = matches!(check, CredentialCheck::Passed(CredentialKind::Uncovered(_)));
        let unavailable_allowed = matches!(rider, Some(Subject::Linked(HealthView::Unavailable)) | None)
            && unavailable == Verdict::Allow;
        if o.verdict == Verdict::Allow {
            prop_assert!(
                fit(rider) || unavailable_allowed,
                "allowed {check:?} {rider:?} as {:?}", o.reason
            );
            prop_assert!(matches!(check, CredentialCheck::Passed(_)) && !uncovered);
            prop_assert!(matches!(o.reason, Reason::HealthGreen | Reason::HealthUnavailable));
        }
        prop_assert_eq!(o.mode, Mode::Enforce);
        prop_assert_eq!(o.shadow, None);
    }

    #[test]
    fn exits_are_never_refused_on_health_grounds(kind in kind(), rider in subject(), mode in mode()) {
        let tap = Tap { station_id: "S1", line_id: "L1", direction: Direction::Exit, credential: CredentialCheck::Passed(kind) };
        let o = strict(mode, Verdict::Deny).decide(&tap, rider, NOW);
        if kind == CredentialKind::Ticket(TicketKind::ElectronicSingleJourney) {
            prop_assert_eq!((o.verdict, o.reason), (Verdict::Deny, Reason::TicketSuspended));
        } else {
            prop_assert_eq!((o.verdict, o.reason), (Verdict::Allow, Reason::Exit));
        }
    }

    #[test]
    fn a_refused_credential_is_refused_in_every_mode_and_direction(
        reason in proptest::sample::select(Reason::ALL.to_vec()),
        rider in subject(),
        mode in mode(),
        exit in any::<bool>(),
    ) {
        let direction = if exit { Direction::Exit } else { Direction::Entry };
        let tap = Tap { station_id: "S1", line_id: "L1", direction, credential: CredentialCheck::Refused(reason) };
        let o = strict(mode, Verdict::Allow).decide(&tap, rider, NOW);
        prop_assert_eq!((o.verdict, o.reason, o.shadow), (Verdict::Deny, reason, None));
    }

    #[test]
    fn shadow_mode_tells_the_gate_allow_and_keeps_the_real_answer(check in check(), rider in subject()) {
        let rules = strict(Mode::Shadow, Verdict::Assist);
        let tap = Tap { station_id: "S1", line_id: "L1", direction: Direction::Entry, credential: check };
        let enforced = strict(Mode::Enforce, Verdict::Assist).decide(&tap, rider, NOW);
        let o = rules.decide(&tap, rider, NOW);
        if matches!(check, CredentialCheck::Refused(_)) || enforced.reason == Reason::TicketSuspended {
            prop_assert_eq!(o.verdict, enforced.verdict);
        } else {
            prop_assert_eq!((o.verdict, o.reason), (Verdict::Allow, Reason::CheckShadow));
            prop_assert_eq!(o.shadow, Some((enforced.verdict, enforced.reason)));
        }
    }
}

#[test]
fn the_test_window_is_the_configured_one() {
    // A sanity anchor for `fit`: the default window is 48 h.
    assert_eq!(Rules::default().negative_test_within, Duration::from_secs(48 * 3600));
}
