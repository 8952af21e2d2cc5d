//! The decision rules, as pure functions of what is known about a tap.
//!
//! Order of precedence: a credential that fails its own checks is refused before any
//! rule here runs (the caller does that). Then: exits are never refused on health
//! grounds; a station with the check off lets the rider through; otherwise the rider's
//! link and health status decide, and in shadow mode the gate is told ALLOW while the
//! real verdict is recorded.

use std::collections::HashMap;

use ridegate_adapters::clock::millis;
use ridegate_adapters::model::{Colour, Direction, HealthStatus, Mode, Reason, UnixMillis, Verdict};

use crate::config::PolicyConfig;

/// What is known about the rider, once the credential itself is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The credential is outside the scheme.
    NotCovered,
    /// The credential is not linked to anyone.
    NotLinked,
    /// Linked; here is what is known of the rider's health status.
    Linked(HealthView),
}

/// What is known of a linked rider's health status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthView {
    /// The source's answer — a status, or `None` for "no record" — confirmed `age_ms`
    /// ago. `degraded` when the answer was past its freshness because the source could
    /// not be asked again in time.
    Known {
        /// The status, or `None` when the platform has no record.
        status: Option<HealthStatus>,
        /// Milliseconds since it was confirmed with the source.
        age_ms: i64,
        /// Served past its freshness.
        degraded: bool,
    },
    /// Nothing usable within the budget and the staleness bound.
    Unavailable,
}

/// A verdict with its grounds, before the station's mode is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    /// What the rules say.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The status behind it was not fresh, or there was none.
    pub degraded: bool,
    /// Age of the status behind it.
    pub status_age_ms: Option<i64>,
}

impl Judgement {
    /// A judgement that used no health status.
    pub fn plain(verdict: Verdict, reason: Reason) -> Self {
        Self {
            verdict,
            reason,
            degraded: false,
            status_age_ms: None,
        }
    }
}

/// A judgement with the station's mode applied: what the gate is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The verdict the gate acts on.
    pub verdict: Verdict,
    /// Its reason.
    pub reason: Reason,
    /// In shadow mode, the verdict and reason that enforcement would have given.
    pub shadow: Option<(Verdict, Reason)>,
    /// See [`Judgement::degraded`].
    pub degraded: bool,
    /// See [`Judgement::status_age_ms`].
    pub status_age_ms: Option<i64>,
}

/// The configured rules.
#[derive(Debug, Clone)]
pub struct Policy {
    green: Verdict,
    yellow: Verdict,
    red: Verdict,
    test_window_ms: Option<i64>,
    test_missing: Verdict,
    not_linked: Verdict,
    no_record: Verdict,
    not_covered: Verdict,
    unavailable: Verdict,
    unavailable_stations: HashMap<String, Verdict>,
    unavailable_lines: HashMap<String, Verdict>,
    default_mode: Mode,
    stations: HashMap<String, Mode>,
    lines: HashMap<String, Mode>,
}

impl Policy {
    /// The rules from `[policy]`.
    pub fn new(config: &PolicyConfig) -> Self {
        Self {
            green: config.green,
            yellow: config.yellow,
            red: config.red,
            test_window_ms: Some(millis(config.negative_test_within)).filter(|w| *w > 0),
            test_missing: config.test_missing,
            not_linked: config.not_linked,
            no_record: config.no_record,
            not_covered: config.not_covered,
            unavailable: config.unavailable,
            unavailable_stations: config
                .unavailable_stations
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            unavailable_lines: config.unavailable_lines.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            default_mode: config.default_mode,
            stations: config.stations.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            lines: config.lines.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
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

    /// The answer for a tap that needs no health check — an exit, or a station with
    /// the check off — or `None` when the check runs.
    pub fn without_check(direction: Direction, mode: Mode) -> Option<Judgement> {
        match (direction, mode) {
            (Direction::Exit, _) => Some(Judgement::plain(Verdict::Allow, Reason::Exit)),
            (Direction::Entry, Mode::Off) => Some(Judgement::plain(Verdict::Allow, Reason::CheckOff)),
            (Direction::Entry, Mode::Enforce | Mode::Shadow) => None,
        }
    }

    /// The health check's verdict for an entry at a station.
    pub fn judge(&self, subject: Subject, now: UnixMillis, station_id: &str, line_id: &str) -> Judgement {
        match subject {
            Subject::NotCovered => Judgement::plain(self.not_covered, Reason::NotCovered),
            Subject::NotLinked => Judgement::plain(self.not_linked, Reason::NotLinked),
            Subject::Linked(HealthView::Unavailable) => Judgement {
                verdict: self.unavailable_at(station_id, line_id),
                reason: Reason::HealthUnavailable,
                degraded: true,
                status_age_ms: None,
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
        match self.test_window_ms {
            Some(window) if status.negative_test_at.is_none_or(|t| now.since(t) > window) => {
                (self.test_missing, Reason::TestMissing)
            }
            _ => by_colour,
        }
    }

    /// Applies the station's mode: in shadow mode the gate is told ALLOW and the real
    /// verdict is kept beside it.
    pub fn apply_mode(mode: Mode, judgement: Judgement) -> Outcome {
        let Judgement {
            verdict,
            reason,
            degraded,
            status_age_ms,
        } = judgement;
        match mode {
            Mode::Shadow if !matches!(reason, Reason::Exit | Reason::CheckOff) => Outcome {
                verdict: Verdict::Allow,
                reason: Reason::CheckShadow,
                shadow: Some((verdict, reason)),
                degraded,
                status_age_ms,
            },
            _ => Outcome {
                verdict,
                reason,
                shadow: None,
                degraded,
                status_age_ms,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NOW: UnixMillis = UnixMillis(1_900_000_000_000);
    const HOUR: i64 = 3_600_000;

    fn policy() -> Policy {
        Policy::new(&PolicyConfig::default())
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

    fn verdict(p: &Policy, s: Subject) -> (Verdict, Reason) {
        let j = p.judge(s, NOW, "S1", "L1");
        (j.verdict, j.reason)
    }

    #[test]
    fn colours_map_to_the_configured_verdicts() {
        let p = policy();
        assert_eq!(
            verdict(&p, known(Colour::Green, Some(3))),
            (Verdict::Allow, Reason::HealthGreen)
        );
        assert_eq!(
            verdict(&p, known(Colour::Yellow, Some(3))),
            (Verdict::Deny, Reason::HealthYellow)
        );
        assert_eq!(
            verdict(&p, known(Colour::Red, Some(3))),
            (Verdict::Deny, Reason::HealthRed)
        );
        let lenient = Policy::new(&PolicyConfig {
            yellow: Verdict::Assist,
            ..PolicyConfig::default()
        });
        assert_eq!(
            verdict(&lenient, known(Colour::Yellow, Some(3))),
            (Verdict::Assist, Reason::HealthYellow)
        );
    }

    #[test]
    fn green_needs_a_negative_test_within_the_window() {
        let p = policy();
        assert_eq!(
            verdict(&p, known(Colour::Green, Some(48))).1,
            Reason::HealthGreen,
            "exactly 48 h is within"
        );
        assert_eq!(
            verdict(&p, known(Colour::Green, Some(49))),
            (Verdict::Deny, Reason::TestMissing)
        );
        assert_eq!(
            verdict(&p, known(Colour::Green, None)),
            (Verdict::Deny, Reason::TestMissing)
        );
        // A red code is refused for being red, whatever the test says.
        assert_eq!(verdict(&p, known(Colour::Red, None)).1, Reason::HealthRed);
    }

    #[test]
    fn the_test_rule_can_be_turned_off() {
        let p = Policy::new(&PolicyConfig {
            negative_test_within: Duration::ZERO,
            ..PolicyConfig::default()
        });
        assert_eq!(
            verdict(&p, known(Colour::Green, None)),
            (Verdict::Allow, Reason::HealthGreen)
        );
    }

    #[test]
    fn unlinked_unrecorded_uncovered_and_unavailable_send_the_rider_to_staff() {
        let p = policy();
        assert_eq!(verdict(&p, Subject::NotLinked), (Verdict::Assist, Reason::NotLinked));
        assert_eq!(verdict(&p, Subject::NotCovered), (Verdict::Assist, Reason::NotCovered));
        let no_record = Subject::Linked(HealthView::Known {
            status: None,
            age_ms: 0,
            degraded: false,
        });
        assert_eq!(verdict(&p, no_record), (Verdict::Assist, Reason::NoHealthRecord));
        let j = p.judge(Subject::Linked(HealthView::Unavailable), NOW, "S1", "L1");
        assert_eq!(
            (j.verdict, j.reason, j.degraded),
            (Verdict::Assist, Reason::HealthUnavailable, true)
        );
        let strict = Policy::new(&PolicyConfig {
            unavailable: Verdict::Deny,
            ..PolicyConfig::default()
        });
        assert_eq!(
            verdict(&strict, Subject::Linked(HealthView::Unavailable)).0,
            Verdict::Deny
        );
    }

    #[test]
    fn degraded_statuses_carry_their_age_and_flag() {
        let p = policy();
        let stale = Subject::Linked(HealthView::Known {
            status: Some(HealthStatus {
                colour: Colour::Red,
                set_at: NOW,
                negative_test_at: None,
            }),
            age_ms: 90_000,
            degraded: true,
        });
        let j = p.judge(stale, NOW, "S1", "L1");
        assert_eq!(
            (j.verdict, j.degraded, j.status_age_ms),
            (Verdict::Deny, true, Some(90_000))
        );
    }

    #[test]
    fn exits_are_never_checked_and_off_stations_let_everyone_in() {
        for mode in [Mode::Enforce, Mode::Shadow, Mode::Off] {
            let j = Policy::without_check(Direction::Exit, mode).unwrap();
            assert_eq!((j.verdict, j.reason), (Verdict::Allow, Reason::Exit));
        }
        assert_eq!(
            Policy::without_check(Direction::Entry, Mode::Off).unwrap().reason,
            Reason::CheckOff
        );
        assert_eq!(Policy::without_check(Direction::Entry, Mode::Enforce), None);
        assert_eq!(Policy::without_check(Direction::Entry, Mode::Shadow), None);
    }

    #[test]
    fn shadow_mode_allows_and_keeps_the_real_verdict() {
        let red = Judgement::plain(Verdict::Deny, Reason::HealthRed);
        let o = Policy::apply_mode(Mode::Shadow, red);
        assert_eq!(
            (o.verdict, o.reason, o.shadow),
            (
                Verdict::Allow,
                Reason::CheckShadow,
                Some((Verdict::Deny, Reason::HealthRed))
            )
        );
        let o = Policy::apply_mode(Mode::Enforce, red);
        assert_eq!(
            (o.verdict, o.reason, o.shadow),
            (Verdict::Deny, Reason::HealthRed, None)
        );
    }

    #[test]
    fn station_mode_wins_over_line_mode_which_wins_over_the_default() {
        let mut config = PolicyConfig::default();
        config.lines.insert("L10".into(), Mode::Shadow);
        config.stations.insert("S1".into(), Mode::Off);
        let p = Policy::new(&config);
        assert_eq!(p.mode("S1", "L10"), Mode::Off);
        assert_eq!(p.mode("S2", "L10"), Mode::Shadow);
        assert_eq!(p.mode("S2", "L4"), Mode::Enforce);
    }

    #[test]
    fn the_unavailable_verdict_can_be_set_per_station_and_line() {
        let mut config = PolicyConfig::default();
        config.unavailable_lines.insert("L10".into(), Verdict::Allow);
        config.unavailable_stations.insert("S1".into(), Verdict::Deny);
        let p = Policy::new(&config);
        let unavailable = |station, line| {
            p.judge(Subject::Linked(HealthView::Unavailable), NOW, station, line)
                .verdict
        };
        assert_eq!(unavailable("S1", "L10"), Verdict::Deny);
        assert_eq!(unavailable("S2", "L10"), Verdict::Allow);
        assert_eq!(unavailable("S2", "L4"), Verdict::Assist);
    }
}
