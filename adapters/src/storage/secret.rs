//! The pseudonym secret of an embedded instance: generated at first start, kept in the
//! data directory (mode 0600) and reused, so pseudonyms — and with them every stored
//! link and status — mean the same after a restart.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use super::StorageError;
use crate::ids::random_hex;

/// The secret's file inside the data directory.
pub const SECRET_FILE: &str = "identity.secret";

/// The secret kept in `data_dir`, made (32 random bytes, as hex) if there is none yet.
/// A new secret is written to a temporary file, synced and renamed into place, so a
/// crash never leaves half a secret; the file is readable by its owner only.
pub fn identity_secret(data_dir: &Path) -> Result<String, StorageError> {
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path)
                .map_err(|e| StorageError::io(&path, e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the pseudonym secret file is readable by others: chmod 600 it");
            }
            return Ok(text.trim().to_owned());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::io(&path, e)),
    }
    std::fs::create_dir_all(data_dir).map_err(|e| StorageError::io(data_dir, e))?;
    let secret = random_hex::<32>();
    let partial = data_dir.join(format!("{SECRET_FILE}.new"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| StorageError::io(&partial, e))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| StorageError::io(&partial, e))?;
    std::fs::rename(&partial, &path).map_err(|e| StorageError::io(&path, e))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| StorageError::io(data_dir, e))?;
    tracing::info!(path = %path.display(), "pseudonym secret generated and kept in the data directory");
    Ok(secret)
}
