//! An audit sink that keeps events in memory, for tests and the demo.

use parking_lot::Mutex;

use super::{AuditEvent, AuditSink};

/// Keeps every event.
#[derive(Debug, Default)]
pub struct MemoryAudit {
    events: Mutex<Vec<AuditEvent>>,
}

impl MemoryAudit {
    /// A copy of the events so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().clone()
    }
}

impl AuditSink for MemoryAudit {
    fn record(&self, event: AuditEvent) {
        self.events.lock().push(event);
    }
}
