//! Wall-clock time for everything judged against data: code expiry, status age, link
//! dates. Injectable so tests move time instead of sleeping.
//!
//! Deadlines (how long a caller may wait) use `tokio::time::Instant` instead, which
//! tests control with `tokio::time::pause`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::UnixMillis;

/// A source of the current wall-clock time.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The operating system's clock.
    #[default]
    System,
    /// A clock that only moves when told to (tests, simulations).
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `start`.
    pub fn manual(start: UnixMillis) -> Self {
        Self::Manual(Arc::new(AtomicI64::new(start.0)))
    }

    /// The current time.
    pub fn now(&self) -> UnixMillis {
        match self {
            Self::System => UnixMillis(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            ),
            Self::Manual(now) => UnixMillis(now.load(Ordering::Relaxed)),
        }
    }

    /// Moves a manual clock forward; the system clock cannot be moved and ignores this.
    pub fn advance(&self, by: Duration) {
        if let Self::Manual(now) = self {
            now.fetch_add(millis(by), Ordering::Relaxed);
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = Clock::manual(UnixMillis(1_000));
        assert_eq!(clock.now(), UnixMillis(1_000));
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now(), UnixMillis(1_250));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(Clock::System.now().0 > 1_577_836_800_000);
    }
}
