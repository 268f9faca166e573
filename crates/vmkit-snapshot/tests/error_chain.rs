//! Errors print each cause once: a VMM prints an error's message and then `: cause` for each
//! `source()`, so an error that shows its source in its message must not also return it.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;
use std::fs::File;

use vmkit_snapshot::{write_atomically, Arch, Backend, Expected, MemoryFile, Snapshot, StateError};

/// Prints `err` as a VMM does and checks that no cause's text appears twice in the line.
fn printed_once(err: &dyn Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    let line = parts.join(": ");
    for part in &parts {
        assert_eq!(
            line.matches(part.as_str()).count(),
            1,
            "{part:?} repeats in: {line}"
        );
    }
    line
}

#[test]
fn a_missing_state_file() {
    let expected = Expected {
        arch: Arch::X86_64,
        backend: Backend::Kvm,
    };
    let err = Snapshot::open("/nonexistent/vmkit/state", expected).unwrap_err();
    let line = printed_once(&err);
    assert!(line.contains("No such file or directory"), "{line}");
}

#[test]
fn a_file_written_into_a_missing_directory() {
    let err =
        write_atomically("/nonexistent/vmkit/state", |_| Ok::<_, StateError>(())).unwrap_err();
    let line = printed_once(&err);
    assert!(line.contains("No such file or directory"), "{line}");
}

#[test]
fn a_memory_file_that_cannot_be_read() {
    // A directory opens, but reading it fails.
    let err = MemoryFile::read_header(&mut File::open("/").unwrap()).unwrap_err();
    let line = printed_once(&err);
    assert!(line.contains("Is a directory"), "{line}");
}
