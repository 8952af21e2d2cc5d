//! The commit thread: the only writer of the database. Callers hand it writes through
//! a [`Queue`]; it gathers everything that is waiting into one atomic batch and commits
//! it with fsync (group commit), then tells each acknowledged write's caller. Writes
//! that need no acknowledgement (used codes, retry records) wait at most the
//! write-behind interval for company before they are committed, and do not wake the
//! thread one by one; each commit keeps them as one block per kind
//! ([`Block`](super::records::Block)). Expired codes and retry records are swept out
//! once a minute, inside a commit.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fjall::{Keyspace, PersistMode};
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::records::{Block, encode_code, encode_link, encode_retry, encode_status, expiry_of};
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

/// The writes waiting for the commit thread. A write someone waits for wakes the
/// thread at once; a write-behind only wakes it when it is the first one waiting (to
/// start the interval), so taps that write behind never cost a thread switch each.
#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<Waiting>,
    wake: Condvar,
}

#[derive(Default)]
struct Waiting {
    ops: Vec<Op>,
    /// A write or flush is waited for: commit now.
    urgent: bool,
    /// When the oldest write-behind waiting arrived.
    behind_since: Option<Instant>,
    /// No more writes will come: commit what is left and stop.
    closed: bool,
}

impl Queue {
    /// Queues `op`; see the type's description for when the thread wakes.
    pub(super) fn push(&self, op: Op) {
        let mut waiting = self.state.lock();
        let wake = match &op {
            Op::Write(_, None) => {
                let first = waiting.behind_since.is_none();
                waiting.behind_since.get_or_insert_with(Instant::now);
                first
            }
            Op::Write(_, Some(_)) | Op::Flush(_) => {
                waiting.urgent = true;
                true
            }
        };
        waiting.ops.push(op);
        drop(waiting);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Tells the thread to commit what is left and stop.
    pub(super) fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_one();
    }

    /// Waits until a commit is due; returns the writes to commit and whether the queue
    /// closed.
    fn next(&self, write_behind: Duration) -> (Vec<Op>, bool) {
        let mut waiting = self.state.lock();
        loop {
            let due = waiting.urgent
                || waiting.closed
                || waiting
                    .behind_since
                    .is_some_and(|since| since.elapsed() >= write_behind);
            if due {
                break;
            }
            match waiting.behind_since {
                Some(since) => {
                    let left = write_behind.saturating_sub(since.elapsed());
                    let _ = self.wake.wait_for(&mut waiting, left);
                }
                None => self.wake.wait(&mut waiting),
            }
        }
        waiting.urgent = false;
        waiting.behind_since = None;
        (std::mem::take(&mut waiting.ops), waiting.closed)
    }
}

/// Runs until the queue closes, committing what is left before it returns. Blocks of
/// write-behind records are keyed from `next_block` on.
pub(super) fn run(engine: Arc<Engine>, queue: Arc<Queue>, write_behind: Duration, mut next_block: u64) {
    // Sweep at the first commit: the database may hold records that expired while
    // ridegate was stopped.
    let mut last_sweep: Option<Instant> = None;
    loop {
        let (ops, closed) = queue.next(write_behind);
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let mut batch = Vec::new();
            let mut acks = Vec::new();
            for op in ops.by_ref().take(MAX_BATCH) {
                match op {
                    Op::Write(write, ack) => {
                        batch.push(write);
                        acks.extend(ack);
                    }
                    Op::Flush(ack) => acks.push(ack),
                }
            }
            let sweep = last_sweep.is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
            let result = commit(&engine, &batch, sweep, &mut next_block);
            match &result {
                Ok(()) if sweep => last_sweep = Some(Instant::now()),
                Ok(()) => {}
                Err(e) => tracing::error!(
                    error = e as &dyn std::error::Error,
                    writes = batch.len(),
                    "storage: a commit failed; the writes in it were not kept"
                ),
            }
            for ack in acks {
                let _ = ack.send(result.clone());
            }
        }
        if closed {
            return;
        }
    }
}

/// Applies `batch` in order in one atomic batch, persisted with fsync; used codes and
/// retry records go in as one block per kind, keyed `next_block` on.
fn commit(engine: &Engine, batch: &[Write], sweep: bool, next_block: &mut u64) -> Result<(), StorageError> {
    let mut commit = engine.db.batch().durability(Some(PersistMode::SyncAll));
    let (mut codes, mut retries) = (Block::default(), Block::default());
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
            Write::Code { code, request, until } => codes.push(&code.0, &encode_code(*request, *until), until.0),
            Write::Retry { request, kept, until } => retries.push(&request.0, &encode_retry(kept, *until), until.0),
        }
    }
    for (keyspace, block) in [(&engine.code_blocks, codes), (&engine.retry_blocks, retries)] {
        if let Some(value) = block.finish() {
            commit.insert(keyspace, next_block.to_be_bytes().as_slice(), value);
            // Numbers are checked at open: 2^64 commits are not reached.
            *next_block = next_block.wrapping_add(1);
        }
    }
    if sweep {
        let now = unix_now_ms();
        let mut swept = 0;
        for keyspace in [
            &engine.codes,
            &engine.retries,
            &engine.code_blocks,
            &engine.retry_blocks,
        ] {
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
