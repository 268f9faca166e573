//! Errors print each cause once: a VMM prints an error's message and then `: cause` for each
//! `source()`, so an error that shows its source in its message must not also return it.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;
use std::io;

use vmkit_devices::DeviceError;

#[test]
fn an_eventfd_error_prints_the_os_error_once() {
    let err = DeviceError::EventFd {
        device: "serial port",
        purpose: "interrupt",
        source: io::Error::from_raw_os_error(24 /* EMFILE */),
    };
    let cause = err.source().map(ToString::to_string).unwrap_or_default();
    let line = format!("{err}: {cause}");
    assert_eq!(line.matches(&cause).count(), 1, "{line}");
}
