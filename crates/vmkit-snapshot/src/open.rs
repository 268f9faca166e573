//! Opening a snapshot file without trusting what the path names: a FIFO,
//! device or socket put in place of a snapshot file must be refused, not
//! read (a FIFO would block the open, or the first read, forever).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use thiserror::Error;

/// Why a snapshot file could not be opened.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The OS refused to open it, or to report its type.
    #[error("cannot open it")]
    Io(#[source] io::Error),
    /// It is not a regular file.
    #[error("it is a {0}, not a regular file")]
    NotARegularFile(&'static str),
}

/// Opens `path` for reading, refusing anything but a regular file.
///
/// The file is opened with `O_NONBLOCK`, so that opening a FIFO returns at
/// once instead of waiting for a writer, and its type is then checked on the
/// open descriptor (no race with a rename). On a regular file `O_NONBLOCK`
/// has no effect.
pub fn open_regular(path: &Path) -> Result<File, OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(OpenError::Io)?;
    let kind = file.metadata().map_err(OpenError::Io)?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let name = if kind.is_fifo() {
        "FIFO"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_char_device() {
        "character device"
    } else {
        "special file"
    };
    Err(OpenError::NotARegularFile(name))
}
