//! The gate's files, in its state directory, so a gate that restarts while ridegate is
//! unreachable still decides:
//!
//! - `state.bin`: the last snapshot (with every delta folded in at compaction), written
//!   to a temporary file, fsynced and renamed;
//! - `deltas.bin`: each applied delta since, appended and fsynced;
//! - `held.bin`: the changes the brake holds;
//! - `codes.bin`: ride codes used at this gate, written before the gate opens;
//! - `offline.bin`: decisions made offline, not yet uploaded (length-delimited
//!   `ridegate.v1.OfflineDecision`).
//!
//! A used code and an offline decision are written (to the kernel) before the answer,
//! so a crash of the gate's process loses none; they are fsynced within a second
//! ([`Disk::sync`] on a timer), which bounds what a power loss can take.
//!
//! Every record is little-endian with its lengths; a torn last record (a crash while
//! appending) is ignored.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use ridegate_core::gate_state::{CredentialTag, Entry};
use ridegate_core::model::UnixMillis;

use crate::GateError;

const STATE_MAGIC: &[u8; 8] = b"RGSTATE1";
/// Deltas past this size are folded into the state file.
pub(crate) const COMPACT_AT_BYTES: u64 = 8 << 20;

/// The state directory's files.
pub(crate) struct Disk {
    dir: PathBuf,
    deltas: File,
    codes: File,
    offline: File,
}

/// A state file's or delta's contents.
pub(crate) struct Stored {
    pub(crate) epoch: u64,
    pub(crate) version: u64,
    pub(crate) confirmed_at: UnixMillis,
    pub(crate) config: String,
    pub(crate) set: Vec<Entry>,
    pub(crate) removed: Vec<CredentialTag>,
}

fn io(path: &Path, e: std::io::Error) -> GateError {
    GateError::Disk(format!("{}: {e}", path.display()))
}

fn append(path: &Path) -> Result<File, GateError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| io(path, e))
}

/// A cursor over a file's bytes that stops at the first torn record.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn bytes(&mut self) -> Option<&[u8]> {
        let n = self
            .take(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))?;
        self.take(n as usize)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode(record: &Stored, set: &[u8], removed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + record.config.len() + set.len() + removed.len());
    out.extend_from_slice(&record.epoch.to_le_bytes());
    out.extend_from_slice(&record.version.to_le_bytes());
    out.extend_from_slice(&record.confirmed_at.0.to_le_bytes());
    put_bytes(&mut out, record.config.as_bytes());
    put_bytes(&mut out, set);
    put_bytes(&mut out, removed);
    out
}

fn decode(r: &mut Reader<'_>) -> Option<Stored> {
    let epoch = r.u64()?;
    let version = r.u64()?;
    let confirmed_at = UnixMillis(r.i64()?);
    let config = String::from_utf8(r.bytes()?.to_vec()).ok()?;
    let set = Entry::decode_all(r.bytes()?).ok()?;
    let removed = Entry::decode_tags(r.bytes()?).ok()?;
    Some(Stored {
        epoch,
        version,
        confirmed_at,
        config,
        set,
        removed,
    })
}

fn read_all(path: &Path) -> Result<Vec<u8>, GateError> {
    match File::open(path) {
        Ok(mut f) => {
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes).map_err(|e| io(path, e))?;
            Ok(bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(path, e)),
    }
}

/// Writes `bytes` to `path` through a temporary file, fsynced, then renamed.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), GateError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io(&tmp, e))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// What the directory held at open.
pub(crate) struct Opened {
    pub(crate) disk: Disk,
    /// The state file, then each delta, in order.
    pub(crate) records: Vec<Stored>,
    pub(crate) held: Vec<Entry>,
    pub(crate) codes: Vec<([u8; 16], UnixMillis)>,
    pub(crate) offline: Vec<Vec<u8>>,
}

impl Disk {
    /// Opens (creating) the state directory and reads what it holds.
    pub(crate) fn open(dir: &Path) -> Result<Opened, GateError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut records = Vec::new();
        let state = read_all(&dir.join("state.bin"))?;
        if !state.is_empty() {
            let mut r = Reader(&state);
            if r.take(8) != Some(STATE_MAGIC.as_slice()) {
                return Err(GateError::Disk(format!(
                    "{}: not a gate state file",
                    dir.join("state.bin").display()
                )));
            }
            records.push(decode(&mut r).ok_or_else(|| GateError::Disk("state.bin is damaged".into()))?);
        }
        let deltas = read_all(&dir.join("deltas.bin"))?;
        let mut r = Reader(&deltas);
        let mut deltas_good = 0;
        while !r.is_empty() {
            match decode(&mut r) {
                Some(delta) => {
                    records.push(delta);
                    deltas_good = deltas.len() - r.0.len();
                }
                None => break, // torn by a crash while appending
            }
        }
        let held = Entry::decode_all(&read_all(&dir.join("held.bin"))?).unwrap_or_default();
        let code_bytes = read_all(&dir.join("codes.bin"))?;
        let codes = code_bytes
            .chunks_exact(24)
            .map(|c| {
                let mut key = [0; 16];
                key.copy_from_slice(&c[..16]);
                let until = i64::from_le_bytes(c[16..].try_into().unwrap_or_default());
                (key, UnixMillis(until))
            })
            .collect();
        let offline_bytes = read_all(&dir.join("offline.bin"))?;
        let mut offline = Vec::new();
        let mut r = Reader(&offline_bytes);
        while let Some(one) = r.bytes() {
            offline.push(one.to_vec());
        }
        let offline_good = offline_bytes.len() - r.0.len();
        // A record torn by a crash is cut off, so what is appended next can be read.
        let open_at = |name: &str, good: usize| -> Result<File, GateError> {
            let path = dir.join(name);
            let file = append(&path)?;
            file.set_len(good as u64).map_err(|e| io(&path, e))?;
            Ok(file)
        };
        let disk = Disk {
            deltas: open_at("deltas.bin", deltas_good)?,
            codes: open_at("codes.bin", code_bytes.len() - code_bytes.len() % 24)?,
            offline: open_at("offline.bin", offline_good)?,
            dir: dir.to_owned(),
        };
        Ok(Opened {
            disk,
            records,
            held,
            codes,
            offline,
        })
    }

    /// Replaces the state file with `state` and empties the deltas.
    pub(crate) fn write_state(&mut self, state: &Stored, entries: &[u8]) -> Result<(), GateError> {
        let mut bytes = STATE_MAGIC.to_vec();
        bytes.extend(encode(state, entries, &[]));
        write_durably(&self.dir.join("state.bin"), &bytes)?;
        let path = self.dir.join("deltas.bin");
        self.deltas.set_len(0).map_err(|e| io(&path, e))?;
        self.deltas.sync_all().map_err(|e| io(&path, e))
    }

    /// Appends an applied delta; returns the deltas file's size.
    pub(crate) fn append_delta(&mut self, delta: &Stored, set: &[u8], removed: &[u8]) -> Result<u64, GateError> {
        let path = self.dir.join("deltas.bin");
        self.deltas
            .write_all(&encode(delta, set, removed))
            .and_then(|()| self.deltas.sync_data())
            .map_err(|e| io(&path, e))?;
        self.deltas.metadata().map(|m| m.len()).map_err(|e| io(&path, e))
    }

    /// Keeps the held changes (empty: none).
    pub(crate) fn write_held(&self, held: &[u8]) -> Result<(), GateError> {
        let path = self.dir.join("held.bin");
        if held.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, e)),
                _ => Ok(()),
            };
        }
        write_durably(&path, held)
    }

    /// Keeps only `live` of the used codes (at open: the expired ones go).
    pub(crate) fn rewrite_codes(&mut self, live: &[([u8; 16], UnixMillis)]) -> Result<(), GateError> {
        let path = self.dir.join("codes.bin");
        let mut bytes = Vec::with_capacity(live.len() * 24);
        for (key, until) in live {
            bytes.extend_from_slice(key);
            bytes.extend_from_slice(&until.0.to_le_bytes());
        }
        write_durably(&path, &bytes)?;
        self.codes = append(&path)?;
        Ok(())
    }

    /// Keeps a used code before the gate opens for it.
    pub(crate) fn append_code(&mut self, key: &[u8; 16], until: UnixMillis) -> Result<(), GateError> {
        let mut record = [0u8; 24];
        record[..16].copy_from_slice(key);
        record[16..].copy_from_slice(&until.0.to_le_bytes());
        let path = self.dir.join("codes.bin");
        self.codes.write_all(&record).map_err(|e| io(&path, e))
    }

    /// Keeps an offline decision until it is uploaded.
    pub(crate) fn append_offline(&mut self, encoded: &[u8]) -> Result<(), GateError> {
        let mut record = Vec::with_capacity(4 + encoded.len());
        put_bytes(&mut record, encoded);
        let path = self.dir.join("offline.bin");
        self.offline.write_all(&record).map_err(|e| io(&path, e))
    }

    /// Fsyncs the used codes and offline decisions written since the last call.
    pub(crate) fn sync(&self) -> Result<(), GateError> {
        self.codes.sync_data().map_err(|e| io(&self.dir.join("codes.bin"), e))?;
        self.offline
            .sync_data()
            .map_err(|e| io(&self.dir.join("offline.bin"), e))
    }

    /// Keeps only `rest` of the offline decisions (ridegate has the others).
    pub(crate) fn drop_uploaded(&mut self, rest: &[Vec<u8>]) -> Result<(), GateError> {
        let path = self.dir.join("offline.bin");
        let mut bytes = Vec::new();
        for one in rest {
            put_bytes(&mut bytes, one);
        }
        write_durably(&path, &bytes)?;
        self.offline = append(&path)?;
        Ok(())
    }
}
