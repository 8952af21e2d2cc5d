//! The embedded durable store: what an instance without Redis keeps across restarts —
//! links, pushed health statuses, used ride codes and retry records — in a
//! [fjall](https://github.com/fjall-rs/fjall) database (`state/`) in the data directory,
//! and the pseudonym secret beside it.
//!
//! The tap path never reads it: the in-memory stores (`MemoryLinks`, `MemoryHealth`,
//! `MemoryReplayGuard`, `MemoryIdempotency`) stay what decisions read. At start the
//! database is loaded into them ([`Storage::restore`]); at run time each change goes to
//! memory and to the database's commit thread, which groups whatever is waiting into one
//! fsync'ed transaction:
//!
//! - links and statuses are acknowledged to their caller only once committed
//!   ([`Storage::write`] returns a [`Pending`] to await);
//! - used codes and retry records are written behind the tap ([`Storage::write_behind`]):
//!   committed within `storage.write_behind` (200 ms by default, at most 500 ms) plus
//!   one commit, so a code used more than a second before a crash is still used after it.
//!
//! Why fjall (measured against redb in `benches/engines.rs`, figures in BENCHMARKS.md):
//! ridegate's keys are keyed hashes, random by design, so a B-tree (redb) rewrites a
//! 4 KiB leaf page for nearly every row of a bulk load and slows as the tree outgrows its
//! cache (5 M `BulkLink` rows did not finish in 2 minutes); an LSM tree (fjall) appends
//! each commit to its journal and sorts in the background, at the same bytes on disk
//! per link. Every commit is an atomic batch persisted with `SyncAll` (fsync).
//!
//! Records hold pseudonyms and keyed hashes only, never an ID number.

mod records;
mod secret;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use serde::Deserialize;
use tokio::sync::oneshot;

pub use secret::{SECRET_FILE, identity_secret};

use crate::health::MemoryHealth;
use crate::idempotency::{Kept, MemoryIdempotency};
use crate::ids::{CodeKey, CredentialId, IdentityId, RequestKey};
use crate::link::{LinkRecord, MemoryLinks};
use crate::replay::MemoryReplayGuard;
use crate::settings::{InvalidSetting, invalid};
use ridegate_core::model::{HealthStatus, UnixMillis};

/// The database's directory inside the data directory.
pub const DATABASE_DIR: &str = "state";
/// The data directory when none is configured: `ridegate-data` in the working directory.
pub const DEFAULT_DATA_DIR: &str = "ridegate-data";
/// How long a used code or retry record may wait for company before it is committed.
pub const DEFAULT_WRITE_BEHIND: Duration = Duration::from_millis(200);
/// The longest write-behind allowed: with one commit after it, a code used more than a
/// second before a crash is kept.
pub const MAX_WRITE_BEHIND: Duration = Duration::from_millis(500);
/// The database's block cache. Decisions never read the database, so a small cache
/// serves the commit thread and the load at start.
const CACHE_BYTES: u64 = 32 << 20;

/// The database and its keyspaces: one LSM tree per kind of record, keyed by the
/// record's 16-byte pseudonym or keyed hash — and used codes and retry records in
/// blocks, one per commit, keyed by a block number (`codes` and `retries` hold them one
/// by one as earlier versions wrote them, read at restore until they expire).
pub(crate) struct Engine {
    db: Database,
    links: Keyspace,
    statuses: Keyspace,
    codes: Keyspace,
    retries: Keyspace,
    code_blocks: Keyspace,
    retry_blocks: Keyspace,
}

/// `[storage]`: where an instance without Redis keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// The data directory: the database (`state/`) and the generated pseudonym
    /// secret (`identity.secret`). Created if missing.
    pub data_dir: PathBuf,
    /// Keep everything in memory: nothing survives a restart (demos, tests,
    /// benchmarks that want it).
    pub ephemeral: bool,
    /// Longest a used ride code or retry record waits before it is committed
    /// (at most 500 ms).
    #[serde(with = "humantime_serde")]
    pub write_behind: Duration,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            ephemeral: false,
            write_behind: DEFAULT_WRITE_BEHIND,
        }
    }
}

impl StorageSettings {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !self.ephemeral && self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must name a directory (or set ephemeral = true)");
        }
        if self.write_behind.is_zero() || self.write_behind > MAX_WRITE_BEHIND {
            return invalid("write_behind", "must be more than 0 and at most 500ms");
        }
        Ok(())
    }
}

/// The store failed. Cloned to every caller waiting on one commit, so the engine's
/// error is kept behind an `Arc`; its text is for logs, never for callers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The data directory or a file in it could not be created, read or written.
    #[error("data directory {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The database could not be opened, read or committed to.
    #[error("storage engine failed")]
    Engine(#[source] Arc<fjall::Error>),
    /// The commit thread is gone (the store was closed).
    #[error("the store is closed")]
    Closed,
}

impl StorageError {
    fn engine(e: fjall::Error) -> Self {
        Self::Engine(Arc::new(e))
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }
}

impl From<fjall::Error> for StorageError {
    fn from(e: fjall::Error) -> Self {
        Self::engine(e)
    }
}

/// One change to keep.
#[derive(Debug, Clone)]
pub enum Write {
    /// `credential` is linked as the record says.
    Link(CredentialId, LinkRecord),
    /// `credential` is no longer linked.
    Unlink(CredentialId),
    /// `identity`'s status (the newest one: the caller has compared `set_at`).
    Status(IdentityId, HealthStatus),
    /// A ride code was used by `request`, until `until`.
    Code {
        /// The code.
        code: CodeKey,
        /// Who used it.
        request: RequestKey,
        /// When it expires.
        until: UnixMillis,
    },
    /// The answer given to `request`, kept until `until`.
    Retry {
        /// The request.
        request: RequestKey,
        /// The answer and the tap's fingerprint.
        kept: Kept,
        /// When it expires.
        until: UnixMillis,
    },
}

/// A write on its way to disk: await [`Pending::durable`] before acknowledging it.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<(), StorageError>>);

impl Pending {
    /// Resolves once the write is committed with fsync (or failed).
    pub async fn durable(self) -> Result<(), StorageError> {
        self.0.await.unwrap_or(Err(StorageError::Closed))
    }
}

/// What [`Storage::restore`] loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Links loaded.
    pub links: u64,
    /// Statuses loaded.
    pub statuses: u64,
    /// Used codes still live.
    pub codes: u64,
    /// Retry records still live.
    pub retries: u64,
    /// Links that had ended (day-bound tickets), now removed.
    pub expired_links: u64,
    /// Records this version could not read (skipped, and logged).
    pub unreadable: u64,
}

/// The open database and its commit thread. Cheap to clone; the thread commits what
/// is left and stops when the last clone is dropped.
#[derive(Clone)]
pub struct Storage {
    engine: Arc<Engine>,
    queue: Arc<writer::Queue>,
    _owner: Arc<Owner>,
    path: Arc<Path>,
}

/// Closes the commit thread's queue when the last [`Storage`] goes.
struct Owner(Arc<writer::Queue>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.path.display())
    }
}

impl Storage {
    /// Opens (or creates) the database in `settings.data_dir` and starts its commit
    /// thread. Only one process may have it open.
    pub fn open(settings: &StorageSettings) -> Result<Self, StorageError> {
        let dir = &settings.data_dir;
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        let path = dir.join(DATABASE_DIR);
        // Journal recovery after a crash happens here.
        let db = Database::builder(&path).cache_size(CACHE_BYTES).open()?;
        let keyspace = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        let engine = Arc::new(Engine {
            links: keyspace("links")?,
            statuses: keyspace("statuses")?,
            codes: keyspace("codes")?,
            retries: keyspace("retries")?,
            code_blocks: keyspace("code_blocks")?,
            retry_blocks: keyspace("retry_blocks")?,
            db,
        });
        // Blocks are numbered on from the highest kept (its 8-byte key; a key of another
        // length is damage, passed over).
        let mut next_block = 0;
        for blocks in [&engine.code_blocks, &engine.retry_blocks] {
            for entry in blocks.iter().rev() {
                let key = entry.key()?;
                if let Ok(number) = <[u8; 8]>::try_from(key.as_ref()) {
                    let after = u64::from_be_bytes(number).checked_add(1).ok_or_else(|| {
                        StorageError::io(&path, std::io::Error::other("write-behind block numbers exhausted"))
                    })?;
                    next_block = next_block.max(after);
                    break;
                }
            }
        }
        let queue = Arc::new(writer::Queue::default());
        let (thread_engine, thread_queue, write_behind) = (engine.clone(), queue.clone(), settings.write_behind);
        std::thread::Builder::new()
            .name("ridegate-storage".into())
            .spawn(move || writer::run(thread_engine, thread_queue, write_behind, next_block))
            .map_err(|e| StorageError::io(dir, e))?;
        Ok(Self {
            engine,
            _owner: Arc::new(Owner(queue.clone())),
            queue,
            path: Arc::from(path.as_path()),
        })
    }

    /// The database's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes the database takes on disk (its journal and tables).
    pub fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.path)
    }

    /// Queues `write` for the next commit; await the [`Pending`] before acknowledging
    /// it. Writes are committed in the order they were queued.
    pub fn write(&self, write: Write) -> Pending {
        let (ack, pending) = oneshot::channel();
        // A commit thread that has gone drops the sender: the caller sees `Closed`.
        self.queue.push(writer::Op::Write(write, Some(ack)));
        Pending(pending)
    }

    /// Queues `write` to be committed within the write-behind interval, without waiting.
    pub fn write_behind(&self, write: Write) {
        self.queue.push(writer::Op::Write(write, None));
    }

    /// Commits everything queued so far (at shutdown, and in tests).
    pub async fn flush(&self) -> Result<(), StorageError> {
        let (ack, pending) = oneshot::channel();
        self.queue.push(writer::Op::Flush(ack));
        Pending(pending).durable().await
    }

    /// Loads everything kept into the in-memory stores, as of `now`: live links,
    /// statuses, and codes and retry records that have not expired. Links and statuses
    /// load on two threads. Ended links are removed from the database.
    pub fn restore(
        &self,
        now: UnixMillis,
        links: &MemoryLinks,
        health: &MemoryHealth,
        codes: &MemoryReplayGuard,
        retries: &MemoryIdempotency,
    ) -> Result<Restored, StorageError> {
        let started = Instant::now();
        let engine = &*self.engine;
        let (link_part, status_part) = std::thread::scope(|scope| {
            let statuses = scope.spawn(|| load_statuses(engine, health));
            let linked = load_links(engine, links, now);
            let statuses = statuses.join().unwrap_or(Err(StorageError::Closed));
            (linked, statuses)
        });
        let (links_loaded, ended, link_unreadable) = link_part?;
        let (statuses_loaded, status_unreadable) = status_part?;
        let mut restored = Restored {
            links: links_loaded,
            statuses: statuses_loaded,
            expired_links: ended.len() as u64,
            unreadable: link_unreadable + status_unreadable,
            ..Restored::default()
        };
        // Each record: loaded if still live, skipped if ended, counted if unreadable.
        let mut count = |loaded: Option<bool>, live: &mut u64| match loaded {
            Some(true) => *live += 1,
            Some(false) => {}
            None => restored.unreadable += 1,
        };
        let load_code = |code: [u8; 16], value: &[u8]| {
            let (request, until) = records::decode_code(value)?;
            let live = until > now;
            if live {
                codes.claim_now(CodeKey(code), request, until, now);
            }
            Some(live)
        };
        let (mut live_codes, mut live_retries) = (0, 0);
        for entry in engine.codes.iter() {
            let (key, value) = entry.into_inner()?;
            count(id16(&key).and_then(|code| load_code(code, &value)), &mut live_codes);
        }
        for entry in engine.code_blocks.iter() {
            let (_, block) = entry.into_inner()?;
            match records::block_records(&block, records::CODE_BYTES) {
                Some(records) => records.for_each(|(code, value)| count(load_code(code, value), &mut live_codes)),
                None => count(None, &mut live_codes),
            }
        }
        let load_retry = |request: [u8; 16], value: &[u8]| {
            let (kept, until) = records::decode_retry(value)?;
            let live = until > now;
            if live {
                retries.record_now(RequestKey(request), kept, until, now);
            }
            Some(live)
        };
        for entry in engine.retries.iter() {
            let (key, value) = entry.into_inner()?;
            count(
                id16(&key).and_then(|request| load_retry(request, &value)),
                &mut live_retries,
            );
        }
        for entry in engine.retry_blocks.iter() {
            let (_, block) = entry.into_inner()?;
            match records::block_records(&block, records::RETRY_BYTES) {
                Some(records) => {
                    records.for_each(|(request, value)| count(load_retry(request, value), &mut live_retries))
                }
                None => count(None, &mut live_retries),
            }
        }
        restored.codes = live_codes;
        restored.retries = live_retries;
        for credential in ended {
            self.write_behind(Write::Unlink(credential));
        }
        tracing::info!(
            links = restored.links,
            statuses = restored.statuses,
            codes = restored.codes,
            retries = restored.retries,
            expired_links = restored.expired_links,
            unreadable = restored.unreadable,
            disk_bytes = self.disk_bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "storage: state restored"
        );
        Ok(restored)
    }
}

/// Loads every stored status into `health`: how many, and how many were unreadable.
fn load_statuses(engine: &Engine, health: &MemoryHealth) -> Result<(u64, u64), StorageError> {
    let (mut loaded, mut unreadable) = (0, 0);
    health.reserve(engine.statuses.approximate_len());
    for entry in engine.statuses.iter() {
        let (key, value) = entry.into_inner()?;
        match (id16(&key), records::decode_status(&value)) {
            (Some(identity), Some(status)) => {
                health.put(IdentityId(identity), status);
                loaded += 1;
            }
            _ => unreadable += 1,
        }
    }
    Ok((loaded, unreadable))
}

/// Loads every stored link live at `now` into `links`: how many, the ended ones (to
/// remove), and how many were unreadable.
fn load_links(
    engine: &Engine,
    links: &MemoryLinks,
    now: UnixMillis,
) -> Result<(u64, Vec<CredentialId>, u64), StorageError> {
    let (mut ended, mut unreadable, mut failed) = (Vec::new(), 0, None);
    let mut names = records::NameCache::default();
    let entries = engine.links.iter().map_while(|entry| match entry.into_inner() {
        Ok(entry) => Some(entry),
        Err(e) => {
            failed = Some(e);
            None
        }
    });
    let live = entries.filter_map(|(key, value)| {
        let (Some(credential), Some(record)) = (id16(&key), records::decode_link(&value, &mut names)) else {
            unreadable += 1;
            return None;
        };
        let credential = CredentialId(credential);
        if !record.is_live(now) {
            ended.push(credential);
            return None;
        }
        Some((credential, record))
    });
    // The database holds what memory held: the rules hold already.
    let loaded = links.restore(engine.links.approximate_len(), live);
    match failed {
        Some(e) => Err(e.into()),
        None => Ok((loaded, ended, unreadable)),
    }
}

/// A stored key as the 16 bytes it must be.
fn id16(key: &[u8]) -> Option<[u8; 16]> {
    key.try_into().ok()
}

/// The bytes of the files under `path`.
fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

#[cfg(test)]
mod tests;
