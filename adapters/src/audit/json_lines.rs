//! An audit sink that writes JSON lines (to a file or stdout) from its own thread.
//!
//! `record` only queues the event; the writer thread serialises and writes, and flushes
//! every [`FLUSH_INTERVAL`] — the most a SIGKILL can take (see [`super::AuditFile`] for
//! fsync and rotation). The queue is unbounded so no event is ever dropped:
//! if the disk stalls it grows, and [`JsonLinesAudit::pending`] shows by how much.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use super::{AuditEvent, AuditOutput, AuditSink};

enum Message {
    Event(AuditEvent),
    Close(mpsc::Sender<()>),
}

#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
}

/// Writes events as JSON lines on a dedicated thread.
pub struct JsonLinesAudit {
    tx: mpsc::Sender<Message>,
    counters: Arc<Counters>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for JsonLinesAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonLinesAudit(pending {})", self.pending())
    }
}

impl JsonLinesAudit {
    /// Starts the writer thread over `out`.
    pub fn new(out: Box<dyn AuditOutput>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let writer = std::thread::Builder::new()
            .name("ridegate-audit".into())
            .spawn(move || write_loop(rx, out, &thread_counters))?;
        Ok(Self {
            tx,
            counters,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Events queued but not yet written.
    pub fn pending(&self) -> u64 {
        let done = self.counters.written.load(Ordering::Relaxed) + self.counters.failed.load(Ordering::Relaxed);
        self.counters.queued.load(Ordering::Relaxed).saturating_sub(done)
    }

    /// Events that could not be written (I/O errors).
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// Writes everything queued so far, flushes, and stops the writer. Later events are
    /// not written. Safe to call more than once.
    pub fn close(&self) {
        let Some(writer) = self.writer.lock().take() else {
            return;
        };
        let (ack_tx, ack_rx) = mpsc::channel();
        if self.tx.send(Message::Close(ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
        let _ = writer.join();
    }
}

impl AuditSink for JsonLinesAudit {
    fn record(&self, event: AuditEvent) {
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Message::Event(event)).is_err() {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for JsonLinesAudit {
    fn drop(&mut self) {
        self.close();
    }
}

/// How often the writer wakes to drain the queue and flush: the most decisions a
/// SIGKILL can take from the audit trail.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// Drains the queue, writes, flushes, then sleeps. The writer sleeps instead of blocking
/// on the channel: a receiver parked on the channel makes every `record` pay a futex
/// wake-up (a system call on the gate's hot path); a sleeping one costs senders nothing.
fn write_loop(rx: mpsc::Receiver<Message>, mut out: Box<dyn AuditOutput>, counters: &Counters) {
    let mut line = Vec::with_capacity(512);
    loop {
        loop {
            match rx.try_recv() {
                Ok(Message::Event(event)) => write_event(&mut out, &mut line, &event, counters),
                Ok(Message::Close(ack)) => {
                    sync(&mut out);
                    let _ = ack.send(());
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    sync(&mut out);
                    return;
                }
            }
        }
        flush(&mut out);
        if let Err(e) = out.maintain() {
            tracing::error!(error = %e, "audit fsync or rotation failed");
        }
        std::thread::sleep(FLUSH_INTERVAL);
    }
}

fn sync(out: &mut Box<dyn AuditOutput>) {
    if let Err(e) = out.sync() {
        tracing::error!(error = %e, "audit fsync failed");
    }
}

fn write_event(out: &mut impl Write, line: &mut Vec<u8>, event: &AuditEvent, counters: &Counters) {
    line.clear();
    let result = serde_json::to_writer(&mut *line, event)
        .map_err(std::io::Error::from)
        .and_then(|()| {
            line.push(b'\n');
            out.write_all(line)
        });
    match result {
        Ok(()) => counters.written.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            tracing::error!(error = %e, "audit write failed");
            counters.failed.fetch_add(1, Ordering::Relaxed)
        }
    };
}

fn flush(out: &mut impl Write) {
    if let Err(e) = out.flush() {
        tracing::error!(error = %e, "audit flush failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ridegate_core::credential::CredentialKind;
    use ridegate_core::model::{Answer, DecisionId, Direction, Mode, Reason, UnixMillis, Verdict};

    fn event(n: u64) -> AuditEvent {
        AuditEvent {
            at: UnixMillis(1),
            gate_id: "g".into(),
            station_id: "s".into(),
            line_id: "l".into(),
            direction: Direction::Entry,
            tapped_at: UnixMillis(0),
            credential_kind: CredentialKind::RideCode,
            issuer: None,
            credential: None,
            identity: None,
            answer: Answer {
                verdict: Verdict::Deny,
                reason: Reason::HealthRed,
                decision_id: DecisionId(n),
                degraded: false,
                status_age_ms: Some(5),
                mode: Mode::Shadow,
                shadow: Some((Verdict::Deny, Reason::HealthRed)),
            },
            retry: false,
            offline: false,
            latency_us: 9,
        }
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl AuditOutput for Shared {}

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn close_writes_every_queued_event_as_one_json_line() {
        let out = Shared::default();
        let audit = JsonLinesAudit::new(Box::new(out.clone())).unwrap();
        for n in 0..1_000 {
            audit.record(event(n));
        }
        audit.close();
        assert_eq!(audit.pending(), 0);
        let text = String::from_utf8(out.0.lock().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 1_000);
        assert_eq!(lines[7]["decision_id"], "0000000000000007");
        assert_eq!(lines[7]["reason"], "health_red");
        assert_eq!(lines[7]["credential_kind"], "ride_code");
    }
}
