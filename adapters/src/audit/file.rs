//! The audit file: appended JSON lines, fsynced on a timer, rotated by size and age
//! with a bounded number of rotated files kept.
//!
//! Loss bounds. Lines reach the kernel at every flush of the writer thread (every
//! [`FLUSH_INTERVAL`](super::FLUSH_INTERVAL)): a process killed with SIGKILL loses at
//! most the decisions of one flush interval (measured in BENCHMARKS.md). They reach the
//! disk at every fsync (`fsync_interval`): a machine that loses power loses at most that
//! long. SIGTERM loses nothing: the queue is drained, flushed and fsynced.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::AuditOutput;
use crate::settings::{InvalidSetting, invalid};

/// `[audit]`: where audit events go and how the file is kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// `-` for stdout, or a file to append JSON lines to.
    pub path: String,
    /// How often written lines are fsynced to disk: the most a power loss can take.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Rotate the file once it holds this many bytes; 0: never by size.
    pub rotate_bytes: u64,
    /// Rotate the file once this process has written to it this long; 0: never by age.
    #[serde(with = "humantime_serde")]
    pub rotate_age: Duration,
    /// Rotated files kept (`<path>.<unix millis>`); older ones are deleted.
    pub keep: usize,
    /// Also append every event to the Redis stream `<prefix>:audit` (needs `[redis]`):
    /// a central trail across instances, best effort, never delaying a tap.
    pub stream: bool,
    /// Entries the stream keeps (approximately; XADD `MAXLEN ~`).
    pub stream_max_len: u64,
    /// Events waiting to be shipped to the stream; beyond it, events are dropped from
    /// the stream (and counted), never from the file.
    pub stream_queue: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            path: "-".into(),
            fsync_interval: Duration::from_secs(1),
            rotate_bytes: 256 << 20,
            rotate_age: Duration::from_secs(24 * 3600),
            keep: 14,
            stream: false,
            stream_max_len: 10_000_000,
            stream_queue: 100_000,
        }
    }
}

impl AuditSettings {
    /// Checks what the types alone do not; the error names the field.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.path.is_empty() {
            return invalid("path", "must be - (stdout) or a file path");
        }
        if self.fsync_interval.is_zero() {
            return invalid("fsync_interval", "must be more than 0");
        }
        if self.keep == 0 {
            return invalid("keep", "must be at least 1");
        }
        if self.stream && (self.stream_max_len == 0 || self.stream_queue == 0) {
            return invalid("stream_max_len", "stream_max_len and stream_queue must be more than 0");
        }
        Ok(())
    }
}

/// An appended audit file that fsyncs on a timer and rotates itself. A path that is not
/// a regular file (`/dev/null`, a named pipe) is written to, never fsynced or rotated.
#[derive(Debug)]
pub struct AuditFile {
    path: PathBuf,
    out: BufWriter<File>,
    /// A regular file: fsync and rotation apply.
    regular: bool,
    settings: AuditSettings,
    /// Bytes in the current file.
    bytes: u64,
    /// When this process opened the current file.
    opened: std::time::Instant,
    /// When it was last fsynced.
    synced: std::time::Instant,
    /// Whether lines were written since.
    dirty: bool,
}

impl AuditFile {
    /// Opens (creating or appending to) `settings.path`.
    pub fn open(settings: AuditSettings) -> std::io::Result<Self> {
        let path = PathBuf::from(&settings.path);
        let file = append(&path)?;
        let metadata = file.metadata()?;
        let bytes = metadata.len();
        let now = std::time::Instant::now();
        Ok(Self {
            path,
            out: BufWriter::with_capacity(1 << 16, file),
            regular: metadata.is_file(),
            settings,
            bytes,
            opened: now,
            synced: now,
            dirty: false,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.sync()?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut rotated = self.path.as_os_str().to_owned();
        rotated.push(format!(".{millis}"));
        std::fs::rename(&self.path, &rotated)?;
        self.out = BufWriter::with_capacity(1 << 16, append(&self.path)?);
        self.bytes = 0;
        self.opened = std::time::Instant::now();
        prune(&self.path, self.settings.keep)
    }
}

impl Write for AuditFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.bytes += n as u64;
        self.dirty = true;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl AuditOutput for AuditFile {
    fn maintain(&mut self) -> std::io::Result<()> {
        if self.dirty && self.synced.elapsed() >= self.settings.fsync_interval {
            self.sync()?;
        }
        let by_size = self.settings.rotate_bytes > 0 && self.bytes >= self.settings.rotate_bytes;
        let by_age = !self.settings.rotate_age.is_zero() && self.opened.elapsed() >= self.settings.rotate_age;
        if self.regular && self.bytes > 0 && (by_size || by_age) {
            self.rotate()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.regular {
            self.out.get_ref().sync_data()?;
        }
        self.synced = std::time::Instant::now();
        self.dirty = false;
        Ok(())
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Deletes the oldest rotated files of `path` beyond `keep`.
fn prune(path: &Path, keep: usize) -> std::io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}.");
    let mut rotated: Vec<(u128, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let file_name = entry.file_name();
            let stamp = file_name.to_str()?.strip_prefix(&prefix)?.parse().ok()?;
            Some((stamp, entry.path()))
        })
        .collect();
    rotated.sort_unstable();
    let excess = rotated.len().saturating_sub(keep);
    for (_, old) in rotated.into_iter().take(excess) {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> AuditSettings {
        AuditSettings {
            path: dir.join("audit.jsonl").display().to_string(),
            fsync_interval: Duration::from_millis(1),
            rotate_bytes: 100,
            rotate_age: Duration::ZERO,
            keep: 2,
            ..AuditSettings::default()
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rotates_by_size_and_keeps_only_the_newest_rotated_files() {
        let dir = std::env::temp_dir().join(format!("ridegate-audit-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = AuditFile::open(settings(&dir)).unwrap();
        for round in 0..4 {
            file.write_all(&[b'x'; 60]).unwrap();
            file.write_all(b"\n").unwrap();
            file.maintain().unwrap();
            file.write_all(&[b'y'; 60]).unwrap();
            file.write_all(b"\n").unwrap();
            file.flush().unwrap();
            file.maintain().unwrap();
            // Rotated names carry the time in milliseconds: keep them apart.
            std::thread::sleep(Duration::from_millis(2));
            assert!(files(&dir).len() <= 3, "round {round}: {:?}", files(&dir));
        }
        let names = files(&dir);
        assert_eq!(names.len(), 3, "{names:?}");
        assert_eq!(names[0], "audit.jsonl");
        assert!(names[1..].iter().all(|n| n.starts_with("audit.jsonl.")), "{names:?}");
        for rotated in &names[1..] {
            let text = std::fs::read_to_string(dir.join(rotated)).unwrap();
            assert_eq!(text.len(), 122, "whole lines only: {text:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dev_null_is_written_never_fsynced_or_rotated() {
        let mut file = AuditFile::open(AuditSettings {
            path: "/dev/null".into(),
            fsync_interval: Duration::ZERO,
            rotate_bytes: 1,
            ..AuditSettings::default()
        })
        .unwrap();
        for _ in 0..3 {
            file.write_all(b"a line\n").unwrap();
            // fsync on /dev/null is EINVAL; a rename would move the device.
            file.maintain().unwrap();
        }
        file.sync().unwrap();
        assert!(Path::new("/dev/null").exists());
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let bad = AuditSettings {
            keep: 0,
            ..AuditSettings::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "keep");
        let bad = AuditSettings {
            fsync_interval: Duration::ZERO,
            ..AuditSettings::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "fsync_interval");
        AuditSettings::default().validate().unwrap();
    }
}
