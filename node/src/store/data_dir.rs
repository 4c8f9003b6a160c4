//! The node's data directory: created on first start, locked for the lifetime of the
//! process so that a second node on the same directory fails at once with a clear error
//! instead of racing on the identity or the database.
//!
//! Layout: `identity.key` (ed25519, mode 0600), `db/` (RocksDB), `pyagent.lock`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data directory {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot open lock file {path}: {source}")]
    LockFile { path: PathBuf, source: std::io::Error },
    #[error(
        "data directory {path} is in use by another pyagent node{holder}; \
         stop it first, or give this node its own --data-dir"
    )]
    Locked { path: PathBuf, holder: String },
}

/// A locked data directory. The lock is released when this value is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates (mode 0700) and locks `path`.
    pub fn open(path: &Path) -> Result<Self, DataDirError> {
        create_private_dir(path).map_err(|source| DataDirError::Create { path: path.to_owned(), source })?;
        let lock_path = path.join("pyagent.lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|source| DataDirError::LockFile { path: lock_path.clone(), source })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path)
                    .ok()
                    .map(|pid| pid.trim().to_owned())
                    .filter(|pid| !pid.is_empty())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                return Err(DataDirError::Locked { path: path.to_owned(), holder });
            }
            Err(TryLockError::Error(source)) => return Err(DataDirError::LockFile { path: lock_path, source }),
        }
        // Record the holder for the error message of a second node; best effort.
        let _ = lock.set_len(0).and_then(|()| write!(lock, "{}", std::process::id()));
        Ok(Self { path: path.to_owned(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn identity_file(&self) -> PathBuf {
        self.path.join("identity.key")
    }

    pub fn db_dir(&self) -> PathBuf {
        self.path.join("db")
    }
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_fails_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err();
        assert!(matches!(err, DataDirError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another pyagent node"), "{err}");
        assert!(err.to_string().contains(&std::process::id().to_string()), "{err}");
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }
}
