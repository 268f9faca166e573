//! Errors print each cause once: a VMM prints an error's message and then `: cause` for each
//! `source()`, so an error that shows its source in its message must not also return it.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;
use std::io;

use vmkit_net::netlink::NetlinkError;
use vmkit_net::{ModeError, TapError};

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
fn tap_errors_print_the_os_error_once() {
    printed_once(&TapError::Open {
        path: "/dev/net/tun",
        source: io::Error::from_raw_os_error(libc::ENOENT),
    });
    printed_once(&TapError::Ioctl {
        ioctl: "TUNSETIFF",
        name: "tap0".into(),
        source: io::Error::from_raw_os_error(libc::EPERM),
    });
}

#[test]
fn a_netlink_error_seen_through_a_network_mode() {
    let err = ModeError::from(NetlinkError::Request {
        op: "adding link",
        target: "br0".into(),
        source: io::Error::from_raw_os_error(libc::EEXIST),
    });
    let line = printed_once(&err);
    assert!(line.contains("File exists"), "{line}");
}

#[test]
fn persistent_tap_errors_print_the_os_error_once() {
    use vmkit_net::persistent::PersistentError;

    let line = printed_once(&PersistentError::from(TapError::Ioctl {
        ioctl: "TUNSETOWNER",
        name: "vmkvm0".into(),
        source: io::Error::from_raw_os_error(libc::EPERM),
    }));
    assert!(
        line.starts_with("TUNSETOWNER on TAP \"vmkvm0\" failed: "),
        "{line}"
    );
    let line = printed_once(&PersistentError::Lookup {
        name: "vmkvm0".into(),
        source: NetlinkError::Socket(io::Error::from_raw_os_error(libc::EACCES)),
    });
    assert!(
        line.starts_with("cannot look up link \"vmkvm0\": netlink socket: "),
        "{line}"
    );
    printed_once(&PersistentError::InUse {
        name: "vmkvm0".into(),
    });
}
