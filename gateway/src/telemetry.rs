//! Logging through `tracing`, to stderr, as text or JSON lines. Log events carry gate,
//! station and counts — never rider data (no ID numbers, card numbers, codes or
//! pseudonyms): those belong to the audit stream alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("log.filter: {0}")]
pub struct BadFilter(String);

/// Installs the global subscriber. A second call (tests, the demo) keeps the first.
pub fn init(config: &LogConfig) -> Result<(), BadFilter> {
    let filter = EnvFilter::try_new(&config.filter).map_err(|e| BadFilter(e.to_string()))?;
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// Tokio's timer wakes at millisecond ticks: a task woken within one was woken on time.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// Measures how late the runtime wakes a task that asks to be woken every `tick`: each
/// lateness goes to `sample`, until it says to stop. A busy runtime is about as late to
/// run every other task it has woken — a connection with bytes to read, a client with
/// an answer waiting.
pub async fn watch_wake_lag(tick: Duration, mut sample: impl FnMut(Duration) -> std::ops::ControlFlow<()>) {
    let mut due = Instant::now() + tick;
    loop {
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        if sample(now.saturating_duration_since(due).saturating_sub(TIMER_RESOLUTION)).is_break() {
            return;
        }
        due = now + tick;
    }
}

/// An alarm that can storm (degraded answers, reused request ids, shed calls): counted
/// on every occurrence, logged at most once per [`Throttled::EVERY`] with the count
/// since the last line, so an outage shows in the log without flooding it.
#[derive(Debug, Default)]
pub struct Throttled {
    since_last: AtomicU64,
    last_logged: parking_lot::Mutex<Option<Instant>>,
}

impl Throttled {
    /// At most one line this often.
    pub const EVERY: Duration = Duration::from_secs(1);

    /// Counts one occurrence; calls `log` with the count since the last line when a line
    /// is due. Never waits: if another caller is logging, this one is only counted.
    pub fn note(&self, log: impl FnOnce(u64)) {
        self.since_last.fetch_add(1, Ordering::Relaxed);
        let Some(mut last) = self.last_logged.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|at| now - at < Self::EVERY) {
            return;
        }
        *last = Some(now);
        log(self.since_last.swap(0, Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wake_lag_shows_a_blocked_runtime_and_stops_when_told() {
        let (tick, mut lags) = (Duration::from_millis(5), Vec::new());
        let watch = watch_wake_lag(tick, |late| {
            if lags.len() == 2 {
                // Blocks the runtime's one thread: the next wake is late.
                std::thread::sleep(tick * 10);
            }
            lags.push(late);
            if lags.len() < 5 {
                std::ops::ControlFlow::Continue(())
            } else {
                std::ops::ControlFlow::Break(())
            }
        });
        tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("stops when told");
        assert_eq!(lags.len(), 5);
        // Blocked for ten ticks: woken at least five late, however busy the machine.
        assert!(lags[3] >= tick * 5, "{lags:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_logs_once_a_second_with_the_count() {
        let throttled = Throttled::default();
        let mut lines = Vec::new();
        for _ in 0..5 {
            throttled.note(|n| lines.push(n));
        }
        tokio::time::advance(Throttled::EVERY).await;
        throttled.note(|n| lines.push(n));
        assert_eq!(lines, [1, 5]);
    }
}
