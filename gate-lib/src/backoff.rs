//! When a gate should call ridegate again after a call that brought no decision, and
//! decide offline until then ([`Backoff`]).
//!
//! A gate that resends at once after a refusal or a timeout is the thundering herd: when
//! thousands do it together, an instance spends its time reading and refusing calls
//! that time out before it takes them up, and decides almost nothing. So:
//!
//! - **refused with a hint** (RESOURCE_EXHAUSTED and `grpc-retry-pushback-ms`): wait the
//!   hint plus a random share of it up to as much again, so the gates held back together
//!   do not return together (a hint above [`Backoff::MAX_CEILING`] is taken as that:
//!   a confused or hostile server cannot park a gate's online path);
//! - **no answer in time, the connection lost, UNAVAILABLE, or a refusal without a
//!   hint**: wait a random time up to a ceiling
//!   that starts at [`Backoff::FIRST_CEILING`] and doubles with each such failure in a
//!   row, up to [`Backoff::MAX_CEILING`] ("full jitter"): an instance too slow for the
//!   herd sees it thin out until what comes back is what it can answer;
//! - **an answer** (a decision, or any other status): call at once again.

use std::time::Duration;

/// The pause before a gate's next call to ridegate, from what its last calls brought.
/// Holds no clock: the caller sleeps, or decides offline, for the pause returned.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Calls in a row that brought no answer in time.
    failures: u32,
    /// xorshift state: spread, not secrecy.
    jitter: u64,
}

impl Backoff {
    /// The ceiling of the pause after the first call in a row with no answer in time:
    /// about one gate deadline.
    pub const FIRST_CEILING: Duration = Duration::from_millis(200);
    /// The highest ceiling: a rider at a gate deciding offline waits for nothing, and a
    /// gate still learns within seconds that ridegate answers again.
    pub const MAX_CEILING: Duration = Duration::from_secs(5);

    /// A backoff whose jitter starts from `seed` (give each gate, or each worker, its own).
    pub fn new(seed: u64) -> Self {
        Self {
            failures: 0,
            jitter: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// The call was refused with ridegate's retry hint: the pause before the next
    /// (the hint held to [`Self::MAX_CEILING`]).
    pub fn refused(&mut self, hint: Duration) -> Duration {
        self.failures = 0;
        let hint = hint.min(Self::MAX_CEILING);
        hint + self.up_to(hint)
    }

    /// The call brought no answer in time, its connection was lost, or it was refused
    /// without a hint: the pause before the next.
    pub fn failed(&mut self) -> Duration {
        let ceiling = Self::FIRST_CEILING
            .saturating_mul(1 << self.failures.min(16))
            .min(Self::MAX_CEILING);
        self.failures = self.failures.saturating_add(1);
        self.up_to(ceiling)
    }

    /// A pause of `every` on average, drawn between half and one and a half times it:
    /// gates that lost ridegate at the same moment do not all try it again together.
    pub fn around(&mut self, every: Duration) -> Duration {
        (every / 2).saturating_add(self.up_to(every))
    }

    /// The call was answered: the next goes at once.
    pub fn answered(&mut self) {
        self.failures = 0;
    }

    /// A pause between 0 and `max`.
    fn up_to(&mut self, max: Duration) -> Duration {
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        max.mul_f64((self.jitter >> 11) as f64 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_waits_the_hint_and_up_to_as_much_again() {
        let mut backoff = Backoff::new(7);
        let hint = Duration::from_millis(300);
        let pauses: Vec<_> = (0..1000).map(|_| backoff.refused(hint)).collect();
        assert!(pauses.iter().all(|p| (hint..=hint * 2).contains(p)), "{pauses:?}");
        // Spread over the range, so the gates held back together come back apart.
        assert!(pauses.iter().any(|p| *p < hint + hint / 4));
        assert!(pauses.iter().any(|p| *p > hint * 2 - hint / 4));
    }

    #[test]
    fn a_hint_beyond_the_highest_ceiling_is_held_to_it() {
        let mut backoff = Backoff::new(5);
        for hint in [Duration::from_secs(3600), Duration::MAX] {
            let pause = backoff.refused(hint);
            assert!(
                (Backoff::MAX_CEILING..=Backoff::MAX_CEILING * 2).contains(&pause),
                "{pause:?}"
            );
        }
    }

    #[test]
    fn failures_in_a_row_double_the_ceiling_up_to_the_most() {
        let mut ceiling = Backoff::FIRST_CEILING;
        for in_a_row in 0..12 {
            // The pause after `in_a_row` failures, drawn by many gates: near the
            // ceiling at most, never above it.
            let most = (0..500)
                .map(|seed| {
                    let mut backoff = Backoff::new(seed);
                    for _ in 0..in_a_row {
                        backoff.failed();
                    }
                    backoff.failed()
                })
                .max()
                .unwrap();
            assert!(
                most <= ceiling && most > ceiling * 9 / 10,
                "{most:?} against {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(Backoff::MAX_CEILING);
        }
        assert_eq!(ceiling, Backoff::MAX_CEILING);
    }

    #[test]
    fn an_answer_or_a_refusal_ends_the_run_of_failures() {
        let mut backoff = Backoff::new(11);
        for _ in 0..10 {
            backoff.failed();
        }
        backoff.answered();
        assert!((0..100).all(|_| {
            let mut trial = backoff.clone();
            trial.failed() <= Backoff::FIRST_CEILING
        }));
        for _ in 0..10 {
            backoff.failed();
        }
        backoff.refused(Duration::from_millis(10));
        assert!(backoff.failed() <= Backoff::FIRST_CEILING);
    }

    #[test]
    fn a_pause_around_an_interval_spreads_over_half_to_one_and_a_half_of_it() {
        let mut backoff = Backoff::new(13);
        let every = Duration::from_millis(500);
        let pauses: Vec<_> = (0..1000).map(|_| backoff.around(every)).collect();
        assert!(
            pauses.iter().all(|p| (every / 2..=every * 3 / 2).contains(p)),
            "{pauses:?}"
        );
        assert!(pauses.iter().any(|p| *p < every * 3 / 5));
        assert!(pauses.iter().any(|p| *p > every * 7 / 5));
        // However long an integrator sets it, the pause is drawn, not a panic.
        assert!(backoff.around(Duration::MAX) >= Duration::MAX / 2);
    }

    #[test]
    fn gates_seeded_apart_draw_apart() {
        let draws = |seed| {
            let mut backoff = Backoff::new(seed);
            (0..8)
                .map(|_| backoff.refused(Duration::from_millis(100)))
                .collect::<Vec<_>>()
        };
        assert_ne!(draws(1), draws(2));
    }
}
