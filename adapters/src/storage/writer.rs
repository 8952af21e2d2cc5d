//! The commit thread: the only writer of the database. Callers hand it writes over a
//! channel; it gathers everything that is waiting into one transaction and commits it
//! with fsync (group commit), then tells each acknowledged write's caller. Writes that
//! need no acknowledgement (used codes, retry records) wait at most the write-behind
//! interval for company before they are committed. Expired codes and retry records are
//! swept out once a minute, inside a commit.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, Durability, ReadableTableMetadata as _};
use tokio::sync::oneshot;

use super::records::{encode_code, encode_link, encode_retry, encode_status, expiry_of};
use super::{CODES, LINKS, RETRIES, STATUSES, StorageError, Write};

/// Most writes in one transaction: bounds a commit's time and memory under a burst.
const MAX_BATCH: usize = 50_000;
/// How often expired codes and retry records leave the database.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// One message to the commit thread.
pub(super) enum Op {
    /// A write; its caller waits for the commit when `ack` is set.
    Write(Write, Option<oneshot::Sender<Result<(), StorageError>>>),
    /// Commit everything before this, then answer.
    Flush(oneshot::Sender<Result<(), StorageError>>),
}

/// Runs until every sender is gone, committing what is left before it returns.
pub(super) fn run(db: Arc<Database>, ops: Receiver<Op>, write_behind: Duration) {
    let mut batch: Vec<Write> = Vec::new();
    let mut acks: Vec<oneshot::Sender<Result<(), StorageError>>> = Vec::new();
    // When the oldest unacknowledged write in `batch` arrived.
    let mut behind_since: Option<Instant> = None;
    // Sweep at the first commit: the database may hold records that expired while
    // ridegate was stopped.
    let mut last_sweep: Option<Instant> = None;
    loop {
        let first = match behind_since {
            None => ops.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(since) => ops.recv_timeout(write_behind.saturating_sub(since.elapsed())),
        };
        let closed = match first {
            Ok(op) => {
                take(op, &mut batch, &mut acks, &mut behind_since);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        while !closed && batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => take(op, &mut batch, &mut acks, &mut behind_since),
                Err(_) => break,
            }
        }
        let due = closed
            || !acks.is_empty()
            || batch.len() >= MAX_BATCH
            || behind_since.is_some_and(|since| since.elapsed() >= write_behind);
        if due && (!batch.is_empty() || !acks.is_empty()) {
            let sweep = last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
            let result = commit(&db, &batch, sweep);
            match &result {
                Ok(()) if sweep => last_sweep = Some(Instant::now()),
                Ok(()) => {}
                Err(e) => tracing::error!(
                    error = e as &dyn std::error::Error,
                    writes = batch.len(),
                    "storage: a commit failed; the writes in it were not kept"
                ),
            }
            for ack in acks.drain(..) {
                let _ = ack.send(result.clone());
            }
            batch.clear();
            behind_since = None;
        }
        if closed {
            return;
        }
    }
}

fn take(
    op: Op,
    batch: &mut Vec<Write>,
    acks: &mut Vec<oneshot::Sender<Result<(), StorageError>>>,
    behind_since: &mut Option<Instant>,
) {
    match op {
        Op::Write(write, Some(ack)) => {
            batch.push(write);
            acks.push(ack);
        }
        Op::Write(write, None) => {
            batch.push(write);
            behind_since.get_or_insert_with(Instant::now);
        }
        Op::Flush(ack) => acks.push(ack),
    }
}

/// Applies `batch` in order in one durable transaction.
fn commit(db: &Database, batch: &[Write], sweep: bool) -> Result<(), StorageError> {
    let mut txn = db.begin_write().map_err(StorageError::engine)?;
    txn.set_durability(Durability::Immediate)
        .map_err(StorageError::engine)?;
    {
        let mut links = txn.open_table(LINKS).map_err(StorageError::engine)?;
        let mut statuses = txn.open_table(STATUSES).map_err(StorageError::engine)?;
        let mut codes = txn.open_table(CODES).map_err(StorageError::engine)?;
        let mut retries = txn.open_table(RETRIES).map_err(StorageError::engine)?;
        for write in batch {
            match write {
                Write::Link(credential, record) => {
                    links.insert(&credential.0, encode_link(record).as_slice())?;
                }
                Write::Unlink(credential) => {
                    links.remove(&credential.0)?;
                }
                Write::Status(identity, status) => {
                    statuses.insert(&identity.0, encode_status(status).as_slice())?;
                }
                Write::Code { code, request, until } => {
                    codes.insert(&code.0, encode_code(*request, *until).as_slice())?;
                }
                Write::Retry { request, kept, until } => {
                    retries.insert(&request.0, encode_retry(kept, *until).as_slice())?;
                }
            }
        }
        if sweep {
            let now = unix_now_ms();
            let live = |_: &[u8; 16], value: &[u8]| expiry_of(value).is_some_and(|until| until > now);
            codes.retain(live)?;
            retries.retain(live)?;
            tracing::debug!(
                codes = codes.len()?,
                retries = retries.len()?,
                "storage: expired records swept"
            );
        }
    }
    txn.commit().map_err(StorageError::engine)
}

/// Milliseconds since the Unix epoch, by the system clock.
fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
