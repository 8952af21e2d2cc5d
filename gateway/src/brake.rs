//! The mass-deny brake: when more riders turn from green to yellow or red within a
//! window than a configured share of everyone held, further such changes are held —
//! refused to the publisher, who sends them again later — until an operator confirms
//! them. The failure it guards against is a corrupt feed or a bug at the platform that
//! would refuse a city's riders in good standing at every gate at once.
//!
//! Nothing held is acknowledged: the publisher is told the update was not applied and
//! why, so nothing is lost. Changes that do not refuse anyone (to green, between
//! yellow and red, new identities) are never held.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use ridegate_adapters::settings::InvalidSetting;
use serde::Deserialize;
use tokio::time::Instant;

use crate::telemetry::Throttled;

/// `[health.brake]`
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrakeConfig {
    /// Whether the brake is on.
    pub enabled: bool,
    /// The window turns are counted in.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The share of identities held that may turn non-green within the window.
    pub max_share: f64,
    /// Turns within the window that never engage the brake, however few identities are
    /// held.
    pub min_turns: u64,
}

impl Default for BrakeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(300),
            max_share: 0.01,
            min_turns: 1_000,
        }
    }
}

impl BrakeConfig {
    /// Checks what the types alone do not.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(self.max_share > 0.0 && self.max_share <= 1.0) {
            return Err(InvalidSetting {
                field: "max_share",
                problem: "must be more than 0 and at most 1",
            });
        }
        if self.window.is_zero() {
            return Err(InvalidSetting {
                field: "window",
                problem: "must be more than 0",
            });
        }
        Ok(())
    }
}

/// A change held by the brake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "held by the mass-deny brake ({turns} riders turned non-green within the window): send it again after an operator confirms"
)]
pub struct Held {
    /// Turns counted when the brake engaged.
    pub turns: u64,
}

#[derive(Debug, Default)]
struct State {
    /// When each recent turn was let through, oldest first.
    turns: VecDeque<Instant>,
    /// Set while the brake holds changes: the turns counted when it engaged.
    engaged: Option<u64>,
    /// Changes held since it engaged.
    held: u64,
    /// After an operator's confirmation, turns pass until then.
    confirmed_until: Option<Instant>,
}

/// The brake's state, for metrics and the admin page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrakeStatus {
    /// Whether changes are being held.
    pub engaged: bool,
    /// Changes held since it engaged.
    pub held: u64,
}

/// The brake on pushed statuses.
#[derive(Debug)]
pub struct MassDenyBrake {
    config: BrakeConfig,
    state: Mutex<State>,
    log: Throttled,
}

impl MassDenyBrake {
    /// A brake with `config`.
    pub fn new(config: BrakeConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
            log: Throttled::default(),
        }
    }

    /// Whether a change that turns a rider from green to non-green may be applied, with
    /// `population` identities held: counts it if so.
    pub fn admit_turn(&self, population: usize) -> Result<(), Held> {
        if !self.config.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let mut state = self.state.lock();
        if state.confirmed_until.is_some_and(|until| now < until) {
            return Ok(());
        }
        if let Some(turns) = state.engaged {
            state.held += 1;
            let held = state.held;
            drop(state);
            self.log.note(|_| {
                tracing::error!(
                    held,
                    turns,
                    "mass-deny brake engaged: changes turning riders non-green are held; confirm with POST /brake/confirm on the admin port once checked"
                );
            });
            return Err(Held { turns });
        }
        while state
            .turns
            .front()
            .is_some_and(|at| now.duration_since(*at) >= self.config.window)
        {
            state.turns.pop_front();
        }
        let limit = ((population as f64 * self.config.max_share) as u64).max(self.config.min_turns);
        let turns = state.turns.len() as u64;
        if turns >= limit {
            state.engaged = Some(turns);
            state.held = 1;
            drop(state);
            tracing::error!(
                turns,
                limit,
                population,
                window_s = self.config.window.as_secs(),
                "mass-deny brake engaged: more riders turned non-green within the window than allowed; further such \
                 changes are held until an operator confirms (POST /brake/confirm on the admin port)"
            );
            return Err(Held { turns });
        }
        state.turns.push_back(now);
        Ok(())
    }

    /// An operator confirmed the changes: the brake lets turns through for one window
    /// (the publisher's resends land), then counts afresh.
    pub fn confirm(&self) -> BrakeStatus {
        let mut state = self.state.lock();
        let before = BrakeStatus {
            engaged: state.engaged.is_some(),
            held: state.held,
        };
        tracing::warn!(
            held = state.held,
            "mass-deny brake confirmed by an operator: held changes are let through for one window"
        );
        *state = State {
            confirmed_until: Some(Instant::now() + self.config.window),
            ..State::default()
        };
        before
    }

    /// Whether it holds changes, and how many.
    pub fn status(&self) -> BrakeStatus {
        let state = self.state.lock();
        BrakeStatus {
            engaged: state.engaged.is_some(),
            held: state.held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brake(max_share: f64, min_turns: u64) -> MassDenyBrake {
        MassDenyBrake::new(BrakeConfig {
            enabled: true,
            window: Duration::from_secs(60),
            max_share,
            min_turns,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn holds_turns_beyond_the_share_until_confirmed() {
        let brake = brake(0.01, 2);
        // 1% of 500 is 5 turns per window.
        for _ in 0..5 {
            brake.admit_turn(500).unwrap();
        }
        assert_eq!(brake.admit_turn(500), Err(Held { turns: 5 }));
        assert_eq!(brake.admit_turn(500), Err(Held { turns: 5 }));
        assert_eq!(brake.status(), BrakeStatus { engaged: true, held: 2 });
        // Engaged, it stays engaged when the window passes: only an operator releases it.
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(brake.admit_turn(500).is_err());
        assert!(brake.confirm().engaged);
        for _ in 0..50 {
            brake.admit_turn(500).unwrap();
        }
        // After the confirmed window, counting starts again.
        tokio::time::advance(Duration::from_secs(61)).await;
        for _ in 0..5 {
            brake.admit_turn(500).unwrap();
        }
        assert!(brake.admit_turn(500).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn turns_leave_the_window_and_small_populations_get_the_floor() {
        let brake = brake(0.01, 3);
        for _ in 0..3 {
            brake.admit_turn(10).unwrap();
        }
        assert!(brake.admit_turn(10).is_err());
        let brake = self::brake(0.5, 1);
        brake.admit_turn(2).unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        // The first turn left the window.
        brake.admit_turn(2).unwrap();
        assert!(brake.admit_turn(2).is_err());
    }

    #[test]
    fn a_disabled_brake_never_holds() {
        let brake = MassDenyBrake::new(BrakeConfig {
            enabled: false,
            ..BrakeConfig::default()
        });
        for _ in 0..10_000 {
            brake.admit_turn(1).unwrap();
        }
    }

    #[test]
    fn settings_are_checked() {
        let bad = BrakeConfig {
            max_share: 0.0,
            ..BrakeConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "max_share");
        assert!(BrakeConfig::default().validate().is_ok());
    }
}
