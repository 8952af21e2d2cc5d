//! A central audit trail across instances: each event also appended to a Redis stream
//! (`<prefix>:audit`, XADD with `MAXLEN ~`), so one place holds every instance's
//! decisions. It never blocks a tap: `record` only offers the event to a bounded queue;
//! a full queue drops the event, and a write Redis refuses or cannot take loses it —
//! both counted. The local audit file stays the complete trail; the stream is a
//! bounded, best-effort central copy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::{AuditEvent, AuditSink};
use crate::shared::SharedTier;

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Events appended to the stream.
    pub shipped: AtomicU64,
    /// Events dropped because the queue to the stream was full.
    pub dropped: AtomicU64,
    /// Events lost because Redis refused or did not take the write.
    pub failed: AtomicU64,
}

/// Appends audit events to a Redis stream from a background task.
#[derive(Debug)]
pub struct RedisStreamAudit {
    tx: mpsc::Sender<AuditEvent>,
    stats: Arc<StreamStats>,
}

impl RedisStreamAudit {
    /// Starts the shipping task (on the current tokio runtime) appending to
    /// `<prefix>:audit`, trimmed to about `max_len` entries, with at most `queue`
    /// events waiting.
    pub fn start(tier: Arc<SharedTier>, max_len: u64, queue: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(queue.max(1));
        let stats = Arc::new(StreamStats::default());
        let task_stats = stats.clone();
        let key = tier.key_of("audit");
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let Ok(json) = serde_json::to_string(&event) else {
                    task_stats.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max_len)
                    .arg("*")
                    .arg("e")
                    .arg(json);
                let counter = match tier.query::<String>(&cmd, None).await {
                    Ok(_) => &task_stats.shipped,
                    Err(_) => &task_stats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Self { tx, stats }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }
}

impl AuditSink for RedisStreamAudit {
    fn record(&self, event: AuditEvent) {
        if self.tx.try_send(event).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Two sinks: every event goes to both (the local file and the central stream).
pub struct Both<A, B>(pub A, pub B);

impl<A: AuditSink, B: AuditSink> AuditSink for Both<A, B> {
    fn record(&self, event: AuditEvent) {
        self.1.record(event.clone());
        self.0.record(event);
    }
}

impl<T: AuditSink + ?Sized> AuditSink for Arc<T> {
    fn record(&self, event: AuditEvent) {
        (**self).record(event);
    }
}
