//! `write_atomically`: the target holds the old or the new contents, never
//! a mix, and no temporary file is left behind.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Write};
use std::path::Path;

use vmkit_snapshot::{write_atomically, AtomicWriteError};

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn creates_and_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target");
    let n = write_atomically(&path, |f| -> io::Result<u32> {
        f.write_all(b"first")?;
        Ok(7)
    })
    .unwrap();
    assert_eq!(n, 7);
    assert_eq!(std::fs::read(&path).unwrap(), b"first");
    write_atomically(&path, |f| f.write_all(b"second")).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    assert_eq!(entries(dir.path()), ["target"]);
}

#[test]
fn error_leaves_target_untouched_and_removes_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target");
    std::fs::write(&path, b"old").unwrap();
    let err = write_atomically(&path, |f| -> io::Result<()> {
        f.write_all(b"half of the new cont")?;
        Err(io::Error::other("disk on fire"))
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "disk on fire");
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(entries(dir.path()), ["target"]);
}

#[test]
fn panic_removes_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target");
    let r = std::panic::catch_unwind(|| {
        let _ = write_atomically(&path, |f| -> io::Result<()> {
            f.write_all(b"x")?;
            panic!("writer bug");
        });
    });
    assert!(r.is_err());
    assert!(!path.exists());
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn rename_failure_is_reported_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    // The target is a non-empty directory: rename(2) refuses to replace it.
    let path = dir.path().join("target");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("inside"), b"keep").unwrap();
    let err = write_atomically(&path, |f| -> Result<(), AtomicWriteError> {
        f.write_all(b"new").unwrap();
        Ok(())
    })
    .unwrap_err();
    assert!(
        matches!(err, AtomicWriteError::Rename { ref to, .. } if to == &path),
        "{err:?}"
    );
    assert_eq!(std::fs::read(path.join("inside")).unwrap(), b"keep");
    assert_eq!(entries(dir.path()), ["target"]);
}

#[test]
fn not_a_file_path() {
    let err = write_atomically("/", |_f| -> Result<(), AtomicWriteError> { Ok(()) }).unwrap_err();
    assert!(matches!(err, AtomicWriteError::NotAFile { .. }));
}

#[test]
fn missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/file");
    let err = write_atomically(&path, |_f| -> Result<(), AtomicWriteError> { Ok(()) }).unwrap_err();
    assert!(matches!(err, AtomicWriteError::Create { .. }), "{err:?}");
}
