//! Errors print each cause once: a VMM prints an error's message and then `: cause` for each
//! `source()`, so an error that shows its source in its message must not also return it.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;
use std::io;

use vm_memory::{GuestAddress, GuestMemoryError};
use vmkit_virtio::blk::BlkError;
use vmkit_virtio::mmio::MmioError;
use vmkit_virtio::DeviceError;

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
fn a_queue_failure_seen_through_the_transport() {
    // The transport reports the device, which reports the queue, which reports the memory
    // access that failed.
    let memory = GuestMemoryError::InvalidGuestAddress(GuestAddress(0xdead_0000));
    let err = MmioError::Device(DeviceError::Queue {
        index: 1,
        source: vmkit_virtio::Error::Memory {
            addr: 0xdead_0000,
            source: memory,
        },
    });
    let line = printed_once(&err);
    assert!(line.contains("queue 1"), "{line}");
}

#[test]
fn an_os_error_is_printed_once() {
    printed_once(&BlkError::DiskSize(io::Error::from_raw_os_error(
        5, /* EIO */
    )));
    printed_once(&MmioError::Interrupt(io::Error::from_raw_os_error(
        9, /* EBADF */
    )));
}
