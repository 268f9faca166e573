//! `--save DIR` and `--restore DIR`: the machine's shape a snapshot records, the check that a
//! restoring run builds the same machine, and SIGUSR2, which asks for the save.
//!
//! A snapshot directory is vmkit's (`vmkit::snapshot::save`): the VM's configuration, VM-wide
//! state (clock, irqchip, PIT), each vCPU, guest memory, and one device section per device
//! (their `Persist` states, at the indexes below), plus [`SHAPE`]: the flags that decide which
//! devices exist and where (RAM, vCPUs, disk size and mode, network card and MAC, ring
//! layout). A restoring run is given the same flags again (not the kernel, initrd and command
//! line, which live in guest memory) and builds the same machine; any difference is refused
//! with [`RestoreError::Mismatch`] before a VM is created. Host resources are the restoring
//! run's own: the disk file it names and a new TAP on the network its `--net` names.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use signal_hook::consts::SIGUSR2;
use vmkit::snapshot::format::{Arch, Backend, Expected, SectionTag, Snapshot, StateError};
use vmkit::HypervisorKind;

use crate::options::Options;

/// The section holding the [`Shape`].
pub const SHAPE: SectionTag = SectionTag::new(*b"BLSH");
/// Its version.
pub const SHAPE_VERSION: u16 = 1;

/// The device sections' indexes.
pub const SERIAL: u32 = 0;
/// The i8042.
pub const I8042: u32 = 1;
/// The CMOS clock.
pub const CMOS: u32 = 2;
/// The ACPI PM block.
pub const PM: u32 = 3;
/// The virtio-blk disk's transport.
pub const DISK: u32 = 4;
/// The virtio-net card's transport.
pub const NET: u32 = 5;
/// The virtio-console's transport.
pub const CONSOLE: u32 = 6;

/// What decides which devices the machine has and where they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// `--mem`, in MiB.
    pub mem_mib: u64,
    /// `--vcpus`.
    pub vcpus: u32,
    /// `--disk`: its size in bytes, and whether it is read-only.
    pub disk: Option<(u64, bool)>,
    /// `--net`: the card's MAC address.
    pub net_mac: Option<[u8; 6]>,
    /// `--split-rings`.
    pub split_rings: bool,
}

impl Shape {
    /// The shape `options` ask for, with the disk of `disk_size` bytes.
    pub fn of(options: &Options, disk_size: Option<u64>) -> Shape {
        Shape {
            mem_mib: options.mem_mib,
            vcpus: options.vcpus,
            disk: disk_size.zip(options.disk.as_ref().map(|disk| disk.read_only)),
            net_mac: options.net.as_ref().map(|_| options.mac),
            split_rings: options.split_rings,
        }
    }
}

/// Why a snapshot cannot be restored by this run.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The snapshot's machine differs from the one this run's flags build.
    #[error(
        "--restore {}: the snapshot's machine has {what} {saved}, this run's flags give \
         {given}; pass the flags it was saved with",
        dir.display()
    )]
    Mismatch {
        /// The snapshot directory.
        dir: PathBuf,
        /// What differs (and the flag that sets it).
        what: &'static str,
        /// The snapshot's value.
        saved: String,
        /// This run's value.
        given: String,
    },
    /// vmkit refused the snapshot, or could not rebuild the VM from it.
    #[error("--restore {}", dir.display())]
    Snapshot {
        /// The snapshot directory.
        dir: PathBuf,
        /// What went wrong.
        #[source]
        source: vmkit::snapshot::SnapshotError,
    },
    /// The state file is unreadable, or has no (readable) shape section.
    #[error("--restore {}: its state file", dir.display())]
    State {
        /// The snapshot directory.
        dir: PathBuf,
        /// What is wrong.
        #[source]
        source: StateError,
    },
}

/// Reads the shape the snapshot in `dir` was saved with, and refuses it unless it is `given`.
pub fn check_shape(dir: &Path, kind: HypervisorKind, given: &Shape) -> Result<(), RestoreError> {
    let state_error = |source| RestoreError::State {
        dir: dir.to_path_buf(),
        source,
    };
    // vmkit has two backends; a snapshot of the other one is refused by the header check.
    let backend = match kind {
        HypervisorKind::Xen => Backend::Xen,
        _ => Backend::Kvm,
    };
    let expected = Expected {
        arch: Arch::X86_64,
        backend,
    };
    let snapshot =
        Snapshot::open(dir.join(vmkit::snapshot::STATE_FILE), expected).map_err(state_error)?;
    let saved: Shape = snapshot
        .read_section(SHAPE, 0, SHAPE_VERSION..=SHAPE_VERSION)
        .map_err(state_error)?;
    compare(dir, &saved, given)
}

/// `Ok` when `saved` is `given`, else the first difference.
fn compare(dir: &Path, saved: &Shape, given: &Shape) -> Result<(), RestoreError> {
    match difference(saved, given) {
        None => Ok(()),
        Some((what, saved, given)) => Err(RestoreError::Mismatch {
            dir: dir.to_path_buf(),
            what,
            saved,
            given,
        }),
    }
}

/// The first difference between a `saved` machine and the `given` one: what differs (and
/// the flag that sets it), the saved value and the given one. A snapshot's restore and a
/// migration's destination both check with it.
pub fn difference(saved: &Shape, given: &Shape) -> Option<(&'static str, String, String)> {
    let disk = |d: Option<(u64, bool)>| match d {
        Some((size, ro)) => format!("{size} bytes{}", if ro { ", read-only" } else { "" }),
        None => "none".to_owned(),
    };
    let mac = |m: Option<[u8; 6]>| match m {
        Some(m) => m.map(|b| format!("{b:02x}")).join(":"),
        None => "none".to_owned(),
    };
    if saved.mem_mib != given.mem_mib {
        return Some((
            "RAM (--mem, MiB)",
            saved.mem_mib.to_string(),
            given.mem_mib.to_string(),
        ));
    }
    if saved.vcpus != given.vcpus {
        return Some((
            "vCPUs (--vcpus)",
            saved.vcpus.to_string(),
            given.vcpus.to_string(),
        ));
    }
    if saved.disk != given.disk {
        return Some(("disk (--disk)", disk(saved.disk), disk(given.disk)));
    }
    if saved.net_mac != given.net_mac {
        return Some((
            "network card (--net, --mac)",
            mac(saved.net_mac),
            mac(given.net_mac),
        ));
    }
    if saved.split_rings != given.split_rings {
        return Some((
            "split rings only (--split-rings)",
            saved.split_rings.to_string(),
            given.split_rings.to_string(),
        ));
    }
    None
}

/// SIGUSR2 asks for a save, from [`SaveRequest::catch`] on (or another signal for another
/// request: [`SaveRequest::catch_signal`]).
pub struct SaveRequest {
    asked: Arc<AtomicBool>,
}

impl SaveRequest {
    /// Catches SIGUSR2 from now on (the handler only sets a flag).
    pub fn catch() -> std::io::Result<SaveRequest> {
        SaveRequest::catch_signal(SIGUSR2)
    }

    /// Catches `signal` from now on (`--migrate-to` takes SIGPWR this way).
    pub fn catch_signal(signal: i32) -> std::io::Result<SaveRequest> {
        let asked = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal, Arc::clone(&asked))?;
        Ok(SaveRequest { asked })
    }

    /// Whether the signal came since the last call.
    pub fn take(&self) -> bool {
        self.asked.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            mem_mib: 256,
            vcpus: 2,
            disk: Some((8 << 20, false)),
            net_mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            split_rings: false,
        }
    }

    #[test]
    fn the_same_shape_restores_and_each_difference_is_named() {
        let dir = Path::new("/snap");
        compare(dir, &shape(), &shape()).unwrap();
        type Case = (fn(&mut Shape), &'static str);
        let cases: [Case; 5] = [
            (
                |s| s.mem_mib = 512,
                "RAM (--mem, MiB) 256, this run's flags give 512",
            ),
            (
                |s| s.vcpus = 1,
                "vCPUs (--vcpus) 2, this run's flags give 1",
            ),
            (
                |s| s.disk = Some((8 << 20, true)),
                "disk (--disk) 8388608 bytes, this run's flags give 8388608 bytes, read-only",
            ),
            (
                |s| s.net_mac = None,
                "network card (--net, --mac) 52:54:00:12:34:56, this run's flags give none",
            ),
            (
                |s| s.split_rings = true,
                "split rings only (--split-rings) false",
            ),
        ];
        for (change, expected) in cases {
            let mut given = shape();
            change(&mut given);
            let err = compare(dir, &shape(), &given).unwrap_err().to_string();
            assert!(
                err.starts_with("--restore /snap: the snapshot's machine has "),
                "{err}"
            );
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
    }
}
