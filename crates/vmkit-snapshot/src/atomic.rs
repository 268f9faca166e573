//! Crash-safe file replacement.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// Errors of [`write_atomically`]'s own steps (the closure's errors are
/// passed through unchanged).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AtomicWriteError {
    /// The target path has no file name.
    #[error("{path}: not a file path")]
    NotAFile {
        /// The target.
        path: PathBuf,
    },
    /// The temporary file could not be created.
    #[error("creating temporary file {path}")]
    Create {
        /// The temporary file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The temporary file could not be synced to disk.
    #[error("syncing {path}")]
    Sync {
        /// The temporary file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The temporary file could not be renamed over the target.
    #[error("renaming {from} to {to}")]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The target.
        to: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The directory could not be synced after the rename: the target has
    /// been replaced, but the replacement may not survive a crash.
    #[error("syncing directory {dir} after replacing the file")]
    SyncDir {
        /// The directory.
        dir: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl From<AtomicWriteError> for io::Error {
    fn from(e: AtomicWriteError) -> io::Error {
        let kind = match &e {
            AtomicWriteError::NotAFile { .. } => io::ErrorKind::InvalidInput,
            AtomicWriteError::Create { source, .. }
            | AtomicWriteError::Sync { source, .. }
            | AtomicWriteError::Rename { source, .. }
            | AtomicWriteError::SyncDir { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

/// Removes the temporary file on drop unless disarmed, so that an error or
/// a panic in the closure leaves nothing behind.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the file is ours and unused; nothing to report to.
            let _ = fs::remove_file(&self.path);
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes a file so that `path` holds either its old contents or the complete
/// new ones, even across a crash.
///
/// `write` fills a new temporary file created in the same directory as
/// `path` (named `.NAME.tmp-PID-N`); then the file is fsynced, renamed over
/// `path`, and the directory is fsynced so that the rename itself is durable.
/// If `write` or any step before the rename fails, `path` is untouched and the
/// temporary file is removed (also if `write` panics). If only the final
/// directory sync fails, `path` already has the new contents but they may not
/// survive a crash; that is reported as [`AtomicWriteError::SyncDir`].
///
/// The closure's error type must absorb [`AtomicWriteError`]; this crate's
/// error types and `std::io::Error` do.
pub fn write_atomically<T, E, F>(path: impl AsRef<Path>, write: F) -> Result<T, E>
where
    F: FnOnce(&mut File) -> Result<T, E>,
    E: From<AtomicWriteError>,
{
    let path = path.as_ref();
    let name = path.file_name().ok_or_else(|| AtomicWriteError::NotAFile {
        path: path.to_path_buf(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (mut file, guard) = create_temp(&dir, name)?;
    let value = write(&mut file)?;
    file.sync_all().map_err(|source| AtomicWriteError::Sync {
        path: guard.path.clone(),
        source,
    })?;
    drop(file);
    fs::rename(&guard.path, path).map_err(|source| AtomicWriteError::Rename {
        from: guard.path.clone(),
        to: path.to_path_buf(),
        source,
    })?;
    let mut guard = guard;
    guard.armed = false;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| AtomicWriteError::SyncDir { dir, source })?;
    Ok(value)
}

fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> Result<(File, TempGuard), AtomicWriteError> {
    let pid = std::process::id();
    let mut attempt = 0;
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{pid}-{n}"));
        let path = dir.join(tmp_name);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((file, TempGuard { path, armed: true })),
            // A stale file from a crashed process that had our pid: try the
            // next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(source) => return Err(AtomicWriteError::Create { path, source }),
        }
    }
}
