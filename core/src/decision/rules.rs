//! The rules, as configuration deserializes them, and the whole decision as pure
//! functions of what is known about a tap.
//!
//! Order of precedence, in [`Rules::decide`]:
//! 1. a credential that failed its own checks (a ride code's signature, times, single
//!    use) is refused in every mode and direction;
//! 2. a suspended ticket kind is refused in every mode and direction;
//! 3. exits are never refused on health grounds, and a station with the check off lets
//!    the rider through;
//! 4. a credential outside the scheme gets the `not_covered` verdict;
//! 5. otherwise the rider's link and health status decide — with the station's
//!    unavailable-policy when no status could be had;
//! 6. in shadow mode the gate is told ALLOW while the real verdict is kept beside it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{CredentialCheck, HealthView, Outcome, SingleUseFallback, Subject, Tap};
use crate::clock::millis;
use crate::credential::{CredentialKind, TicketKind};
use crate::model::{Colour, Direction, HealthStatus, Mode, Reason, UnixMillis, Verdict};

/// The configured rules (`[policy]` in ridegate's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// Verdict for a green code.
    pub green: Verdict,
    /// Verdict for a yellow code.
    pub yellow: Verdict,
    /// Verdict for a red code.
    pub red: Verdict,
    /// Require a negative test within this long (`0s` turns the rule off).
    #[serde(with = "humantime_serde")]
    pub negative_test_within: Duration,
    /// Verdict when the required test is missing or too old.
    pub test_missing: Verdict,
    /// Verdict for a credential that is not linked.
    pub not_linked: Verdict,
    /// Verdict for an identity without a health record.
    pub no_record: Verdict,
    /// Verdict for credentials outside the scheme.
    pub not_covered: Verdict,
    /// Verdict when no status can be had within the budget and the staleness bound.
    pub unavailable: Verdict,
    /// `unavailable` by station id (wins over the line's).
    pub unavailable_stations: BTreeMap<String, Verdict>,
    /// `unavailable` by line id.
    pub unavailable_lines: BTreeMap<String, Verdict>,
    /// Refuse electronic single-journey tickets (suspended; refunded by the seller).
    pub electronic_single_journey_suspended: bool,
    /// A verified ride code whose single use the shared guard cannot confirm in time:
    /// `local` (this instance's memory, answer degraded), `deny` or `assist`.
    pub single_use_unknown: SingleUseFallback,
    /// Mode where no station or line mode is set.
    pub default_mode: Mode,
    /// Mode by station id (wins over the line's).
    pub stations: BTreeMap<String, Mode>,
    /// Mode by line id.
    pub lines: BTreeMap<String, Mode>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            green: Verdict::Allow,
            yellow: Verdict::Deny,
            red: Verdict::Deny,
            negative_test_within: Duration::from_secs(48 * 3600),
            test_missing: Verdict::Deny,
            not_linked: Verdict::Assist,
            no_record: Verdict::Assist,
            not_covered: Verdict::Assist,
            unavailable: Verdict::Assist,
            unavailable_stations: BTreeMap::new(),
            unavailable_lines: BTreeMap::new(),
            electronic_single_journey_suspended: true,
            single_use_unknown: SingleUseFallback::Local,
            default_mode: Mode::Enforce,
            stations: BTreeMap::new(),
            lines: BTreeMap::new(),
        }
    }
}

impl Rules {
    /// The whole decision for a tap: `rider` is what the link store and the health
    /// source said, or `None` when they were not asked (because [`Rules::needs_rider`]
    /// said no — or, defensively, could not be: then the unavailable-policy applies).
    pub fn decide(&self, tap: &Tap<'_>, rider: Option<Subject>, now: UnixMillis) -> Outcome {
        let mode = self.mode(tap.station_id, tap.line_id);
        let mut judgement = match self.without_rider(tap, mode) {
            Some(judgement) => judgement,
            None => {
                let subject = rider.unwrap_or(Subject::Linked(HealthView::Unavailable));
                self.judge(subject, now, tap.station_id, tap.line_id)
            }
        };
        // A code trusted on this instance's memory alone is a guess: say so.
        judgement.degraded |= tap.credential == CredentialCheck::SingleUseUnknown;
        apply_mode(mode, judgement)
    }

    /// Whether deciding `tap` needs the rider's link and health status: false when the
    /// credential is refused on its own, for exits, stations with the check off and
    /// credentials outside the scheme.
    pub fn needs_rider(&self, tap: &Tap<'_>) -> bool {
        self.without_rider(tap, self.mode(tap.station_id, tap.line_id))
            .is_none()
    }

    /// The mode at a station: its own, else its line's, else the default.
    pub fn mode(&self, station_id: &str, line_id: &str) -> Mode {
        self.stations
            .get(station_id)
            .or_else(|| self.lines.get(line_id))
            .copied()
            .unwrap_or(self.default_mode)
    }

    /// The verdict when no status can be had, at a station: its own, else its line's,
    /// else the default.
    pub fn unavailable_at(&self, station_id: &str, line_id: &str) -> Verdict {
        self.unavailable_stations
            .get(station_id)
            .or_else(|| self.unavailable_lines.get(line_id))
            .copied()
            .unwrap_or(self.unavailable)
    }

    /// The judgement reached without the rider's link and status, if there is one.
    /// Refusals of the credential itself are enforced whatever the station's mode.
    fn without_rider(&self, tap: &Tap<'_>, mode: Mode) -> Option<Judgement> {
        let refuse = |reason| Some(Judgement::plain(Verdict::Deny, reason).enforced());
        let kind = match tap.credential {
            CredentialCheck::Refused(reason) => return refuse(reason),
            CredentialCheck::Passed(kind) => kind,
            CredentialCheck::SingleUseUnknown => match self.single_use_unknown {
                SingleUseFallback::Local => CredentialKind::RideCode,
                SingleUseFallback::Deny => return refuse(Reason::CodeSingleUseUnknown),
                SingleUseFallback::Assist => {
                    let assist = Judgement::plain(Verdict::Assist, Reason::CodeSingleUseUnknown);
                    return Some(assist.enforced());
                }
            },
        };
        if kind == CredentialKind::Ticket(TicketKind::ElectronicSingleJourney)
            && self.electronic_single_journey_suspended
        {
            return refuse(Reason::TicketSuspended);
        }
        match (tap.direction, mode) {
            (Direction::Exit, _) => return Some(Judgement::plain(Verdict::Allow, Reason::Exit)),
            (Direction::Entry, Mode::Off) => return Some(Judgement::plain(Verdict::Allow, Reason::CheckOff)),
            (Direction::Entry, Mode::Enforce | Mode::Shadow) => {}
        }
        matches!(kind, CredentialKind::Uncovered(_)).then(|| Judgement::plain(self.not_covered, Reason::NotCovered))
    }

    /// The health check's verdict for an entry at a station.
    fn judge(&self, subject: Subject, now: UnixMillis, station_id: &str, line_id: &str) -> Judgement {
        match subject {
            Subject::NotCovered => Judgement::plain(self.not_covered, Reason::NotCovered),
            Subject::NotLinked => Judgement::plain(self.not_linked, Reason::NotLinked),
            Subject::Linked(HealthView::Unavailable) => Judgement {
                verdict: self.unavailable_at(station_id, line_id),
                reason: Reason::HealthUnavailable,
                degraded: true,
                status_age_ms: None,
                enforced: false,
            },
            Subject::Linked(HealthView::Known {
                status,
                age_ms,
                degraded,
            }) => {
                let (verdict, reason) = match status {
                    None => (self.no_record, Reason::NoHealthRecord),
                    Some(status) => self.judge_status(&status, now),
                };
                Judgement {
                    verdict,
                    reason,
                    degraded,
                    status_age_ms: Some(age_ms),
                    enforced: false,
                }
            }
        }
    }

    fn judge_status(&self, status: &HealthStatus, now: UnixMillis) -> (Verdict, Reason) {
        let by_colour = match status.colour {
            Colour::Green => (self.green, Reason::HealthGreen),
            Colour::Yellow => (self.yellow, Reason::HealthYellow),
            Colour::Red => (self.red, Reason::HealthRed),
        };
        if by_colour.0 != Verdict::Allow {
            return by_colour;
        }
        let window = millis(self.negative_test_within);
        if window > 0 && status.negative_test_at.is_none_or(|t| now.since(t) > window) {
            return (self.test_missing, Reason::TestMissing);
        }
        by_colour
    }
}

/// A verdict with its grounds, before the station's mode is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Judgement {
    verdict: Verdict,
    reason: Reason,
    /// The status behind it was not fresh, or there was none.
    degraded: bool,
    /// Age of the status behind it.
    status_age_ms: Option<i64>,
    /// Given whatever the station's mode (a refusal of the credential itself).
    enforced: bool,
}

impl Judgement {
    /// A judgement that used no health status.
    fn plain(verdict: Verdict, reason: Reason) -> Self {
        Self {
            verdict,
            reason,
            degraded: false,
            status_age_ms: None,
            enforced: false,
        }
    }

    /// This judgement, given in every mode.
    fn enforced(self) -> Self {
        Self { enforced: true, ..self }
    }
}

/// Applies the station's mode: in shadow mode the gate is told ALLOW and the real
/// verdict is kept beside it — except for exits, stations with the check off, and
/// refusals of the credential itself, which every mode enforces.
fn apply_mode(mode: Mode, judgement: Judgement) -> Outcome {
    let Judgement {
        verdict,
        reason,
        degraded,
        status_age_ms,
        enforced,
    } = judgement;
    match mode {
        Mode::Shadow if !enforced && !matches!(reason, Reason::Exit | Reason::CheckOff) => Outcome {
            verdict: Verdict::Allow,
            reason: Reason::CheckShadow,
            shadow: Some((verdict, reason)),
            degraded,
            status_age_ms,
            mode,
        },
        _ => Outcome {
            verdict,
            reason,
            shadow: None,
            degraded,
            status_age_ms,
            mode,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{CardMedium, UncoveredKind};

    const NOW: UnixMillis = UnixMillis(1_900_000_000_000);
    const HOUR: i64 = 3_600_000;
    const CARD: CredentialCheck = CredentialCheck::Passed(CredentialKind::Card(CardMedium::Physical));

    fn tap(credential: CredentialCheck, direction: Direction, station_id: &'static str) -> Tap<'static> {
        Tap {
            station_id,
            line_id: "L1",
            direction,
            credential,
        }
    }

    fn entry(credential: CredentialCheck) -> Tap<'static> {
        tap(credential, Direction::Entry, "S1")
    }

    fn known(colour: Colour, tested_hours_ago: Option<i64>) -> Subject {
        Subject::Linked(HealthView::Known {
            status: Some(HealthStatus {
                colour,
                set_at: NOW.plus_ms(-HOUR),
                negative_test_at: tested_hours_ago.map(|h| NOW.plus_ms(-h * HOUR)),
            }),
            age_ms: 1_000,
            degraded: false,
        })
    }

    fn no_record() -> Subject {
        Subject::Linked(HealthView::Known {
            status: None,
            age_ms: 0,
            degraded: false,
        })
    }

    fn verdict(rules: &Rules, tap: &Tap<'_>, rider: Option<Subject>) -> (Verdict, Reason) {
        let o = rules.decide(tap, rider, NOW);
        (o.verdict, o.reason)
    }

    #[test]
    fn every_rule_on_entry_under_the_default_rules() {
        use Verdict::*;
        let rules = Rules::default();
        let code = CredentialCheck::Passed(CredentialKind::RideCode);
        let uncovered = CredentialCheck::Passed(CredentialKind::Uncovered(UncoveredKind::BankCard));
        let e_ticket = CredentialCheck::Passed(CredentialKind::Ticket(TicketKind::ElectronicSingleJourney));
        let ticket = CredentialCheck::Passed(CredentialKind::Ticket(TicketKind::SingleJourney));
        // A scenario: its name, the credential check, the subject's status, the answer.
        type Row = (&'static str, CredentialCheck, Option<Subject>, (Verdict, Reason));
        let table: Vec<Row> = vec![
            (
                "green, tested 3 h ago",
                CARD,
                Some(known(Colour::Green, Some(3))),
                (Allow, Reason::HealthGreen),
            ),
            (
                "green, tested exactly 48 h ago",
                CARD,
                Some(known(Colour::Green, Some(48))),
                (Allow, Reason::HealthGreen),
            ),
            (
                "green, tested 49 h ago",
                CARD,
                Some(known(Colour::Green, Some(49))),
                (Deny, Reason::TestMissing),
            ),
            (
                "green, never tested",
                code,
                Some(known(Colour::Green, None)),
                (Deny, Reason::TestMissing),
            ),
            (
                "yellow",
                CARD,
                Some(known(Colour::Yellow, Some(3))),
                (Deny, Reason::HealthYellow),
            ),
            (
                "red, whatever the test",
                CARD,
                Some(known(Colour::Red, None)),
                (Deny, Reason::HealthRed),
            ),
            ("no record", CARD, Some(no_record()), (Assist, Reason::NoHealthRecord)),
            (
                "not linked",
                ticket,
                Some(Subject::NotLinked),
                (Assist, Reason::NotLinked),
            ),
            ("not covered", uncovered, None, (Assist, Reason::NotCovered)),
            (
                "status unavailable",
                CARD,
                Some(Subject::Linked(HealthView::Unavailable)),
                (Assist, Reason::HealthUnavailable),
            ),
            ("rider not looked up", CARD, None, (Assist, Reason::HealthUnavailable)),
            (
                "code refused",
                CredentialCheck::Refused(Reason::CodeExpired),
                Some(known(Colour::Green, Some(1))),
                (Deny, Reason::CodeExpired),
            ),
            (
                "code replayed",
                CredentialCheck::Refused(Reason::CodeReplayed),
                None,
                (Deny, Reason::CodeReplayed),
            ),
            (
                "electronic ticket",
                e_ticket,
                Some(known(Colour::Green, Some(1))),
                (Deny, Reason::TicketSuspended),
            ),
        ];
        for (name, credential, rider, expected) in table {
            assert_eq!(verdict(&rules, &entry(credential), rider), expected, "{name}");
        }
    }

    #[test]
    fn an_unconfirmed_single_use_follows_the_configured_fallback() {
        let green = Some(known(Colour::Green, Some(1)));
        let local = Rules::default().decide(&entry(CredentialCheck::SingleUseUnknown), green, NOW);
        assert_eq!(
            (local.verdict, local.reason, local.degraded),
            (Verdict::Allow, Reason::HealthGreen, true)
        );
        for (fallback, verdict) in [
            (SingleUseFallback::Deny, Verdict::Deny),
            (SingleUseFallback::Assist, Verdict::Assist),
        ] {
            for mode in [Mode::Enforce, Mode::Shadow, Mode::Off] {
                let rules = Rules {
                    single_use_unknown: fallback,
                    default_mode: mode,
                    ..Rules::default()
                };
                let o = rules.decide(&entry(CredentialCheck::SingleUseUnknown), green, NOW);
                assert_eq!(
                    (o.verdict, o.reason, o.degraded, o.shadow),
                    (verdict, Reason::CodeSingleUseUnknown, true, None),
                    "{fallback:?} {mode:?}"
                );
                assert!(!rules.needs_rider(&entry(CredentialCheck::SingleUseUnknown)));
            }
        }
    }

    #[test]
    fn which_taps_need_the_rider_looked_up() {
        let rules = Rules::default();
        let uncovered = CredentialCheck::Passed(CredentialKind::Uncovered(UncoveredKind::AirRailTicket));
        assert!(rules.needs_rider(&entry(CARD)));
        assert!(!rules.needs_rider(&tap(CARD, Direction::Exit, "S1")));
        assert!(!rules.needs_rider(&entry(uncovered)));
        assert!(!rules.needs_rider(&entry(CredentialCheck::Refused(Reason::CodeBadSignature))));
        let mut off = Rules::default();
        off.stations.insert("S1".into(), Mode::Off);
        assert!(!off.needs_rider(&entry(CARD)));
    }

    #[test]
    fn configured_verdicts_replace_the_defaults() {
        let rules = Rules {
            yellow: Verdict::Assist,
            negative_test_within: Duration::ZERO,
            unavailable: Verdict::Deny,
            electronic_single_journey_suspended: false,
            ..Rules::default()
        };
        let e_ticket = CredentialCheck::Passed(CredentialKind::Ticket(TicketKind::ElectronicSingleJourney));
        assert_eq!(
            verdict(&rules, &entry(CARD), Some(known(Colour::Yellow, None))),
            (Verdict::Assist, Reason::HealthYellow)
        );
        assert_eq!(
            verdict(&rules, &entry(CARD), Some(known(Colour::Green, None))),
            (Verdict::Allow, Reason::HealthGreen),
            "0s turns the test rule off"
        );
        assert_eq!(verdict(&rules, &entry(CARD), None).0, Verdict::Deny);
        assert_eq!(
            verdict(&rules, &entry(e_ticket), Some(Subject::NotLinked)),
            (Verdict::Assist, Reason::NotLinked)
        );
    }

    #[test]
    fn degraded_statuses_carry_their_age_and_flag() {
        let stale = Subject::Linked(HealthView::Known {
            status: Some(HealthStatus {
                colour: Colour::Red,
                set_at: NOW,
                negative_test_at: None,
            }),
            age_ms: 90_000,
            degraded: true,
        });
        let o = Rules::default().decide(&entry(CARD), Some(stale), NOW);
        assert_eq!(
            (o.verdict, o.degraded, o.status_age_ms),
            (Verdict::Deny, true, Some(90_000))
        );
        let o = Rules::default().decide(&entry(CARD), Some(Subject::Linked(HealthView::Unavailable)), NOW);
        assert_eq!((o.degraded, o.status_age_ms), (true, None));
    }

    #[test]
    fn exits_are_never_refused_on_health_grounds_in_any_mode() {
        for mode in [Mode::Enforce, Mode::Shadow, Mode::Off] {
            let rules = Rules {
                default_mode: mode,
                ..Rules::default()
            };
            for rider in [Some(known(Colour::Red, None)), Some(Subject::NotLinked), None] {
                let o = rules.decide(&tap(CARD, Direction::Exit, "S1"), rider, NOW);
                assert_eq!(
                    (o.verdict, o.reason, o.shadow),
                    (Verdict::Allow, Reason::Exit, None),
                    "{mode:?}"
                );
            }
        }
    }

    #[test]
    fn credential_refusals_hold_in_every_mode_and_direction() {
        for mode in [Mode::Enforce, Mode::Shadow, Mode::Off] {
            let rules = Rules {
                default_mode: mode,
                ..Rules::default()
            };
            for direction in [Direction::Entry, Direction::Exit] {
                let o = rules.decide(
                    &tap(CredentialCheck::Refused(Reason::CodeReplayed), direction, "S1"),
                    None,
                    NOW,
                );
                assert_eq!(
                    (o.verdict, o.reason, o.shadow, o.mode),
                    (Verdict::Deny, Reason::CodeReplayed, None, mode),
                    "{mode:?} {direction:?}"
                );
            }
        }
    }

    #[test]
    fn shadow_mode_allows_and_keeps_the_real_verdict() {
        let rules = Rules {
            default_mode: Mode::Shadow,
            ..Rules::default()
        };
        let o = rules.decide(&entry(CARD), Some(known(Colour::Red, None)), NOW);
        assert_eq!(
            (o.verdict, o.reason, o.shadow, o.mode),
            (
                Verdict::Allow,
                Reason::CheckShadow,
                Some((Verdict::Deny, Reason::HealthRed)),
                Mode::Shadow
            )
        );
        let o = Rules::default().decide(&entry(CARD), Some(known(Colour::Red, None)), NOW);
        assert_eq!(
            (o.verdict, o.reason, o.shadow),
            (Verdict::Deny, Reason::HealthRed, None)
        );
    }

    #[test]
    fn off_stations_let_every_valid_credential_in() {
        let mut rules = Rules::default();
        rules.stations.insert("S1".into(), Mode::Off);
        let uncovered = CredentialCheck::Passed(CredentialKind::Uncovered(UncoveredKind::BankCard));
        for credential in [CARD, uncovered] {
            assert_eq!(
                verdict(&rules, &entry(credential), Some(Subject::NotLinked)),
                (Verdict::Allow, Reason::CheckOff)
            );
        }
    }

    #[test]
    fn station_mode_wins_over_line_mode_which_wins_over_the_default() {
        let mut rules = Rules::default();
        rules.lines.insert("L10".into(), Mode::Shadow);
        rules.stations.insert("S1".into(), Mode::Off);
        assert_eq!(rules.mode("S1", "L10"), Mode::Off);
        assert_eq!(rules.mode("S2", "L10"), Mode::Shadow);
        assert_eq!(rules.mode("S2", "L4"), Mode::Enforce);
    }

    #[test]
    fn the_unavailable_verdict_can_be_set_per_station_and_line() {
        let mut rules = Rules::default();
        rules.unavailable_lines.insert("L10".into(), Verdict::Allow);
        rules.unavailable_stations.insert("S1".into(), Verdict::Deny);
        let unavailable = |station, line| {
            let tap = Tap {
                station_id: station,
                line_id: line,
                direction: Direction::Entry,
                credential: CARD,
            };
            rules
                .decide(&tap, Some(Subject::Linked(HealthView::Unavailable)), NOW)
                .verdict
        };
        assert_eq!(unavailable("S1", "L10"), Verdict::Deny);
        assert_eq!(unavailable("S2", "L10"), Verdict::Allow);
        assert_eq!(unavailable("S2", "L4"), Verdict::Assist);
    }

    #[test]
    fn rules_deserialize_from_toml_with_defaults_and_reject_unknown_fields() {
        let rules: Rules =
            toml::from_str("yellow = \"assist\"\nnegative_test_within = \"72h\"\n[stations]\nS9 = \"shadow\"\n")
                .expect("valid rules");
        assert_eq!(rules.yellow, Verdict::Assist);
        assert_eq!(rules.negative_test_within, Duration::from_secs(72 * 3600));
        assert_eq!(rules.mode("S9", ""), Mode::Shadow);
        assert_eq!(rules.red, Verdict::Deny);
        assert!(toml::from_str::<Rules>("colour = \"red\"").is_err());
    }
}
