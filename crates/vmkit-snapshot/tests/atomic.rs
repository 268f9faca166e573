//! `write_atomically` and `AtomicFiles`: each target holds the old or the new
//! contents, never a mix, files are renamed in the order written, and no
//! temporary file is left behind.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Write};
use std::path::Path;

use vmkit_snapshot::{write_atomically, AtomicFiles, AtomicWriteError};

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

#[test]
fn files_are_committed_together() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state"), b"old state").unwrap();
    let mut files = AtomicFiles::in_dir(dir.path());
    files
        .write("memory", |f| f.write_all(b"new memory"))
        .unwrap();
    let n = files
        .write("state", |f| -> io::Result<u8> {
            f.write_all(b"new state")?;
            Ok(3)
        })
        .unwrap();
    assert_eq!(n, 3);
    // Nothing is in place before the commit: only the temporary files are new.
    assert_eq!(
        std::fs::read(dir.path().join("state")).unwrap(),
        b"old state"
    );
    assert!(!dir.path().join("memory").exists());
    assert_eq!(entries(dir.path()).len(), 3, "{:?}", entries(dir.path()));
    files.commit().unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("memory")).unwrap(),
        b"new memory"
    );
    assert_eq!(
        std::fs::read(dir.path().join("state")).unwrap(),
        b"new state"
    );
    assert_eq!(entries(dir.path()), ["memory", "state"]);
}

#[test]
fn files_dropped_uncommitted_leave_the_targets_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("memory"), b"old").unwrap();
    let mut files = AtomicFiles::in_dir(dir.path());
    files.write("memory", |f| f.write_all(b"new")).unwrap();
    let err = files
        .write("state", |f| -> io::Result<()> {
            f.write_all(b"half")?;
            Err(io::Error::other("device state refused"))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "device state refused");
    drop(files);
    assert_eq!(std::fs::read(dir.path().join("memory")).unwrap(), b"old");
    assert_eq!(entries(dir.path()), ["memory"]);
}

#[test]
fn a_failed_rename_keeps_the_files_renamed_before_it() {
    let dir = tempfile::tempdir().unwrap();
    // The second target is a non-empty directory: rename(2) refuses to replace it.
    let blocked = dir.path().join("state");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("inside"), b"keep").unwrap();
    let mut files = AtomicFiles::in_dir(dir.path());
    files
        .write("memory", |f| f.write_all(b"new memory"))
        .unwrap();
    files.write("state", |f| f.write_all(b"new state")).unwrap();
    let err = files.commit().unwrap_err();
    assert!(
        matches!(err, AtomicWriteError::Rename { ref to, .. } if to == &blocked),
        "{err:?}"
    );
    // The order is the order written: memory went in, state did not, no temporary is left.
    assert_eq!(
        std::fs::read(dir.path().join("memory")).unwrap(),
        b"new memory"
    );
    assert_eq!(std::fs::read(blocked.join("inside")).unwrap(), b"keep");
    assert_eq!(entries(dir.path()), ["memory", "state"]);
}

#[test]
fn create_dir_makes_the_missing_directories() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b/snap");
    let mut files = AtomicFiles::create_dir(&dir).unwrap();
    files.write("memory", |f| f.write_all(b"m")).unwrap();
    files.commit().unwrap();
    assert_eq!(std::fs::read(dir.join("memory")).unwrap(), b"m");
    // An existing directory is used as it is.
    let mut files = AtomicFiles::create_dir(&dir).unwrap();
    files.write("state", |f| f.write_all(b"s")).unwrap();
    files.commit().unwrap();
    assert_eq!(entries(&dir), ["memory", "state"]);
    // A file in the way is an error naming the directory.
    let file = root.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let err = AtomicFiles::create_dir(file.join("snap")).err().unwrap();
    assert!(
        matches!(err, AtomicWriteError::CreateDir { ref path, .. } if path == &file.join("snap")),
        "{err:?}"
    );
}

#[test]
fn a_name_must_be_a_plain_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = AtomicFiles::in_dir(dir.path());
    for name in ["sub/state", "..", ""] {
        let err = files
            .write(name, |_f| -> Result<(), AtomicWriteError> { Ok(()) })
            .unwrap_err();
        assert!(
            matches!(err, AtomicWriteError::NotAFile { .. }),
            "{name:?}: {err:?}"
        );
    }
    files.commit().unwrap();
    assert!(entries(dir.path()).is_empty());
}
