//! The commit thread: the only writer of the database. Callers hand it writes over a
//! channel; it gathers everything that is waiting into one atomic batch and commits it
//! with fsync (group commit), then tells each acknowledged write's caller. Writes that
//! need no acknowledgement (used codes, retry records) wait at most the write-behind
//! interval for company before they are committed. Expired codes and retry records are
//! swept out once a minute, inside a commit.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fjall::{Keyspace, PersistMode};
use tokio::sync::oneshot;

use super::records::{encode_code, encode_link, encode_retry, encode_status, expiry_of};
use super::{Engine, StorageError, Write};

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
pub(super) fn run(engine: Arc<Engine>, ops: Receiver<Op>, write_behind: Duration) {
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
            let result = commit(&engine, &batch, sweep);
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

/// Applies `batch` in order in one atomic batch, persisted with fsync.
fn commit(engine: &Engine, batch: &[Write], sweep: bool) -> Result<(), StorageError> {
    let mut commit = engine.db.batch().durability(Some(PersistMode::SyncAll));
    for write in batch {
        match write {
            Write::Link(credential, record) => {
                commit.insert(&engine.links, credential.0.as_slice(), encode_link(record))
            }
            Write::Unlink(credential) => commit.remove(&engine.links, credential.0.as_slice()),
            Write::Status(identity, status) => {
                commit.insert(
                    &engine.statuses,
                    identity.0.as_slice(),
                    encode_status(status).as_slice(),
                );
            }
            Write::Code { code, request, until } => {
                commit.insert(
                    &engine.codes,
                    code.0.as_slice(),
                    encode_code(*request, *until).as_slice(),
                );
            }
            Write::Retry { request, kept, until } => {
                commit.insert(
                    &engine.retries,
                    request.0.as_slice(),
                    encode_retry(kept, *until).as_slice(),
                );
            }
        }
    }
    if sweep {
        let now = unix_now_ms();
        let mut swept = 0;
        for keyspace in [&engine.codes, &engine.retries] {
            swept += sweep_expired(keyspace, now, &mut commit)?;
        }
        tracing::debug!(swept, "storage: expired codes and retry records swept");
    }
    commit.commit()?;
    Ok(())
}

/// Adds the removal of every record of `keyspace` that ended by `now` to `commit`.
fn sweep_expired(keyspace: &Keyspace, now: i64, commit: &mut fjall::OwnedWriteBatch) -> Result<usize, StorageError> {
    let mut swept = 0;
    for entry in keyspace.iter() {
        let (key, value) = entry.into_inner()?;
        if expiry_of(&value).is_none_or(|until| until <= now) {
            commit.remove(keyspace, key);
            swept += 1;
        }
    }
    Ok(swept)
}

/// Milliseconds since the Unix epoch, by the system clock.
fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
