//! Audit: one event per decision, written off the hot path. Events name riders only by
//! pseudonym and credentials only by kind and keyed hash.

mod file;
mod json_lines;
mod memory;
mod stream;

use std::sync::Arc;

use serde::Serialize;

pub use file::{AuditFile, AuditSettings};
pub use json_lines::{FLUSH_INTERVAL, JsonLinesAudit};
pub use memory::MemoryAudit;
pub use stream::{Both, RedisStreamAudit, StreamStats};

/// Where the JSON-lines writer puts its lines: a file, stdout, or a test's buffer.
/// Called only on the writer thread.
pub trait AuditOutput: std::io::Write + Send {
    /// After each flush: fsync when due, rotate when due. Nothing, by default.
    fn maintain(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// On close: make everything written durable. Just a flush, by default.
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

/// Stdout: whoever collects it (a container runtime) keeps it.
impl AuditOutput for std::io::BufWriter<std::io::Stdout> {}

/// Nowhere, for benchmarks.
impl AuditOutput for std::io::Sink {}

use crate::ids::{CredentialId, IdentityId};
use ridegate_core::credential::CredentialKind;
use ridegate_core::model::{Answer, Direction, UnixMillis};

/// What was decided for one tap, and on what grounds.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// When ridegate answered.
    pub at: UnixMillis,
    /// The gate.
    pub gate_id: String,
    /// Its station.
    pub station_id: String,
    /// Its line.
    pub line_id: String,
    /// Entry or exit.
    pub direction: Direction,
    /// When the rider tapped, by the gate's clock.
    pub tapped_at: UnixMillis,
    /// What was presented.
    pub credential_kind: CredentialKind,
    /// The ride code's issuer, for ride codes that verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Arc<str>>,
    /// The credential's keyed hash, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialId>,
    /// The rider's pseudonym, once resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityId>,
    /// The answer.
    #[serde(flatten)]
    pub answer: Answer,
    /// The answer was a stored one, given again to a retry.
    pub retry: bool,
    /// Decided by a gate library while ridegate was unreachable, and uploaded later:
    /// `at` is the gate's time of the decision, and `status_age_ms` the age of its state.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
    /// Time from receiving the request to having the answer, in microseconds.
    pub latency_us: u64,
}

/// Receives audit events. `record` must not block: the caller is answering a gate.
pub trait AuditSink: Send + Sync + 'static {
    /// Takes one event.
    fn record(&self, event: AuditEvent);
}
