//! Persistent TAPs, so that a VMM can run without privileges.
//!
//! Setting a network up needs `CAP_NET_ADMIN`; running a VM does not. An
//! operator with that capability runs [`create`] once: it makes a
//! persistent TAP owned by the VMM's user (and/or group) and puts it into a
//! [`TapMode`] as [`Attachment::open`](crate::Attachment::open) does. The
//! VMM, with no capabilities at all, opens that TAP by name with
//! [`Tap::open`]: the kernel lets a TAP's owner attach to it (`TUNSETIFF`
//! on an existing TAP checks its owner and group, and asks for
//! `CAP_NET_ADMIN` only from others), and `TUNSETVNETHDRSZ` and
//! `TUNSETOFFLOAD` need nothing more. It also needs read-write access to
//! `/dev/net/tun` (mode 0666 on distributions). When the VMM closes the
//! TAP, it stays, on its bridge, for the next run. [`remove`] (the operator
//! again) deletes it and leaves the network, tearing it down if no other
//! VM is on it.
//!
//! The TAP is made with the flags [`Tap::open`] uses (`IFF_TAP`,
//! `IFF_NO_PI`, `IFF_VNET_HDR`, single queue). What must match when the
//! VMM opens it is the kind and the queueing: a TUN or a multi-queue
//! device of that name is refused (`EINVAL`); `IFF_NO_PI` and
//! `IFF_VNET_HDR` are the opener's to choose, each `TUNSETIFF` sets them
//! anew. With both an owner and a group set, the kernel wants the opener
//! to match both, and refuses anyone else without `CAP_NET_ADMIN`
//! (`EPERM`, as it does for a name that does not exist).
//!
//! Owner records ([`owners`](crate::owners)): [`create`] sets the network
//! up as an owner, attaches the TAP, then hands the network over to its
//! port and removes its record, since it exits long before the VMs run. A
//! bridge with a port on it is never taken for a leftover, so the VMM,
//! which only opens its TAP, never writes under `/run/vmkit-net`.
//! [`remove`] deletes the TAP first, then sets the network up again (which
//! finds the bridge without ports, owned by no live process) and tears it
//! down, unless other VMs' ports are on it.
//!
//! ```no_run
//! use vmkit_net::persistent::{self, TapAccess};
//! use vmkit_net::Tap;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mode = "isolated:vmkiso0".parse()?;
//! // The operator (CAP_NET_ADMIN), once:
//! persistent::create("vmkvm0", TapAccess { user: Some(1000), group: None }, &mode)?;
//! // The VMM, as uid 1000 without capabilities, each run:
//! let tap = Tap::open("vmkvm0")?;
//! # drop(tap);
//! // The operator, at the end:
//! persistent::remove("vmkvm0", &mode)?;
//! # Ok(())
//! # }
//! ```

use crate::attach::{AttachError, Departure, TapMode};
use crate::mode::{ModeError, Network, NetworkMode};
use crate::netlink::{NetlinkError, Rtnl};
use crate::tap::{Tap, TapError, TapOptions};

/// Who may open a persistent TAP without `CAP_NET_ADMIN`. With both set,
/// a process must match both (its effective uid, and its effective or a
/// supplementary group).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapAccess {
    /// The owning user id (`TUNSETOWNER`).
    pub user: Option<u32>,
    /// The owning group id (`TUNSETGROUP`).
    pub group: Option<u32>,
}

/// The errors of [`create`] and [`remove`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PersistentError {
    /// The name is a pattern: the VMM must be told the TAP's exact name.
    #[error("a persistent TAP needs a fixed name, not the pattern {name:?}")]
    Pattern {
        /// The name given.
        name: String,
    },
    /// Neither a user nor a group was given: only a privileged process could open the TAP.
    #[error("a persistent TAP for an unprivileged VMM needs a user or a group to own it")]
    NoOwner,
    /// A link of that name exists already.
    #[error("link {name:?} already exists; remove it first or pick another name")]
    Exists {
        /// The name.
        name: String,
    },
    /// The link to remove is not a single-queue TAP.
    #[error("link {name:?} is not a TAP (or is a multi-queue one), refusing to remove it")]
    NotATap {
        /// The name.
        name: String,
    },
    /// The TAP to remove is open: a VMM is using it.
    #[error("TAP {name:?} is in use (a VMM has it open); stop the VMM first")]
    InUse {
        /// The name.
        name: String,
    },
    /// Opening or configuring the TAP failed.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// Setting up, joining or leaving the network failed.
    #[error(transparent)]
    Network(#[from] AttachError),
    /// The links could not be listed.
    #[error("cannot look up link {name:?}")]
    Lookup {
        /// The link.
        name: String,
        /// Why.
        #[source]
        source: NetlinkError,
    },
}

/// What [`remove`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// The TAP existed and was deleted (`false`: it was gone already).
    pub tap_deleted: bool,
    /// What became of the network; `None` when its bridge was gone already.
    pub network: Option<Departure>,
}

/// The errno of a failed ioctl.
fn errno(e: &TapError) -> Option<i32> {
    match e {
        TapError::Ioctl { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

fn check_fixed(name: &str) -> Result<(), PersistentError> {
    if name.contains('%') {
        return Err(PersistentError::Pattern {
            name: name.to_string(),
        });
    }
    Ok(())
}

fn options(name: &str) -> TapOptions {
    TapOptions {
        name: name.to_string(),
        vnet_hdr: true,
    }
}

/// Creates the persistent TAP `name` owned as `access` says and puts it
/// into `mode`'s network (set up if needed); see the [module
/// documentation](self). Needs `CAP_NET_ADMIN` (and, for the isolated and
/// NAT modes, write access to `/run/vmkit-net`). Refuses an existing link
/// of that name. On failure, whatever this call made is undone.
pub fn create(name: &str, access: TapAccess, mode: &TapMode) -> Result<(), PersistentError> {
    check_fixed(name)?;
    if access.user.is_none() && access.group.is_none() {
        return Err(PersistentError::NoOwner);
    }
    // IFF_TUN_EXCL: create, never attach to a TAP someone else made.
    let tap = Tap::open_flagged(&options(name), libc::IFF_TUN_EXCL).map_err(|e| {
        if errno(&e) == Some(libc::EBUSY) {
            PersistentError::Exists {
                name: name.to_string(),
            }
        } else {
            PersistentError::Tap(e)
        }
    })?;
    if let Some(uid) = access.user {
        tap.set_value("TUNSETOWNER", libc::TUNSETOWNER, uid.into())?;
    }
    if let Some(gid) = access.group {
        tap.set_value("TUNSETGROUP", libc::TUNSETGROUP, gid.into())?;
    }
    // Until here, dropping `tap` removes the interface.
    tap.set_value("TUNSETPERSIST", libc::TUNSETPERSIST, 1)?;
    if let TapMode::Network(mode) = mode {
        if let Err(e) = join(name, mode) {
            // Best effort: the first error is the one to report.
            let _ = tap.set_value("TUNSETPERSIST", libc::TUNSETPERSIST, 0);
            return Err(e);
        }
    }
    Ok(())
}

/// Sets `mode` up, attaches the TAP `name` and hands the network over to it.
fn join(name: &str, mode: &NetworkMode) -> Result<(), PersistentError> {
    let bridge = mode.bridge().to_string();
    let mut network = Network::setup(mode.clone()).map_err(|source| AttachError::Setup {
        bridge: bridge.clone(),
        source,
    })?;
    let joined = network
        .attach(name)
        .and_then(|()| network.hand_over())
        .map_err(|source| AttachError::Attach {
            tap: name.to_string(),
            bridge,
            source,
        });
    if joined.is_err() {
        let _ = network.teardown();
    }
    joined.map_err(PersistentError::from)
}

/// Deletes the persistent TAP `name` and leaves `mode`'s network, tearing
/// it down unless other ports are on it; see the [module
/// documentation](self). `mode` is the one given to [`create`]: with
/// another, the TAP goes but its network stays. Idempotent: a TAP or bridge
/// already gone is fine.
/// Needs `CAP_NET_ADMIN` (or the TAP's ownership, for a lone TAP), and, for
/// the isolated and NAT modes, write access to `/run/vmkit-net`.
pub fn remove(name: &str, mode: &TapMode) -> Result<Removal, PersistentError> {
    check_fixed(name)?;
    let lookup = |name: &str| -> Result<bool, PersistentError> {
        let mut rtnl = Rtnl::new().map_err(|source| PersistentError::Lookup {
            name: name.to_string(),
            source,
        })?;
        rtnl.link(name)
            .map(|l| l.is_some())
            .map_err(|source| PersistentError::Lookup {
                name: name.to_string(),
                source,
            })
    };
    let tap_deleted = lookup(name)?;
    if tap_deleted {
        let tap = Tap::open_with(&options(name)).map_err(|e| match errno(&e) {
            Some(libc::EBUSY) => PersistentError::InUse {
                name: name.to_string(),
            },
            Some(libc::EINVAL) => PersistentError::NotATap {
                name: name.to_string(),
            },
            _ => PersistentError::Tap(e),
        })?;
        // Not persistent any more: closing it deletes it, off its bridge.
        tap.set_value("TUNSETPERSIST", libc::TUNSETPERSIST, 0)?;
    }
    let network = match mode {
        TapMode::Alone => Some(Departure::Alone),
        // The host's bridge stays; deleting the TAP took it off.
        TapMode::Network(NetworkMode::Bridged { bridge }) => Some(Departure::Left {
            bridge: bridge.clone(),
        }),
        TapMode::Network(mode) if !lookup(mode.bridge())? => None,
        TapMode::Network(mode) => Some(leave(mode)?),
    };
    Ok(Removal {
        tap_deleted,
        network,
    })
}

/// Joins `mode`'s network as an owner and leaves it as the last VM out would.
fn leave(mode: &NetworkMode) -> Result<Departure, PersistentError> {
    let bridge = mode.bridge().to_string();
    let mut network = Network::setup(mode.clone()).map_err(|source| AttachError::Setup {
        bridge: bridge.clone(),
        source,
    })?;
    match network.teardown() {
        Ok(()) => Ok(Departure::TornDown { bridge }),
        Err(ModeError::BridgeBusy { ports, .. }) => Ok(Departure::LeftToOthers { bridge, ports }),
        Err(source) => Err(AttachError::Teardown { bridge, source }.into()),
    }
}
