//! The errors of a migration: which side failed, in which phase, and why.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::frame::FrameError;
use crate::hypervisor::HypervisorError;
use crate::memory::MemoryError;
use crate::runner::RunnerError;
use crate::vcpu::VcpuError;
use crate::vm::VmError;

/// One end of a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The process the VM leaves.
    Source,
    /// The process the VM moves to.
    Destination,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// The steps of a migration, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The source offers capabilities, configuration and memory layout; the destination
    /// accepts or refuses. Nothing is paused.
    Handshake,
    /// Pre-copy round `round` (0 sends all memory, later rounds what was dirtied); the guest
    /// runs on the source.
    PreCopy {
        /// The round, from 0.
        round: u32,
    },
    /// The source's vCPUs are paused; the last dirty pages, vCPU, VM and device state go out.
    StopAndCopy,
    /// The destination restores the VM and its devices from what it received.
    Restore,
    /// The destination confirms that it holds the VM; the source waits for that.
    Confirm,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Handshake => f.write_str("handshake"),
            Phase::PreCopy { round } => write!(f, "pre-copy round {round}"),
            Phase::StopAndCopy => f.write_str("stop-and-copy"),
            Phase::Restore => f.write_str("restore"),
            Phase::Confirm => f.write_str("confirmation"),
        }
    }
}

/// Why a destination refuses a VM. Sent to the source before the destination gives up, so
/// that the source's error says it too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The stream's protocol version is not the destination's.
    #[error(
        "protocol version {found} is not supported (the destination speaks version {supported})"
    )]
    Version {
        /// The version the source used.
        found: u16,
        /// The version the destination speaks.
        supported: u16,
    },
    /// The VM was built for another architecture or hypervisor backend.
    #[error("the VM runs on {found} but the destination has {expected}")]
    Platform {
        /// The source's architecture and backend.
        found: String,
        /// The destination's.
        expected: String,
    },
    /// The destination lacks capabilities the VM uses (each one described).
    #[error("the destination cannot host the VM: {}", .0.join("; "))]
    MissingCapabilities(Vec<String>),
    /// The VM's configuration or vCPU list is out of the destination's limits.
    #[error("the VM's configuration: {0}")]
    Config(String),
    /// The memory layout, or a page run, is outside what the destination accepts.
    #[error("the memory layout: {0}")]
    Layout(String),
    /// A frame was corrupt, truncated or out of order.
    #[error("the stream: {0}")]
    Stream(String),
    /// Building the VM, or restoring its vCPU, VM or device state, failed.
    #[error("restoring the VM: {0}")]
    Restore(String),
}

/// What went wrong (see [`MigrationError`] for where).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Reason {
    /// The destination refused the VM, with its reason.
    #[error("the destination refused")]
    Refused(#[source] Refusal),
    /// The stream failed: I/O error, end of stream, a corrupt or oversized frame.
    #[error("the migration stream")]
    Stream(#[source] FrameError),
    /// The peer sent a well-formed frame that does not belong at this point.
    #[error("expected {expected}, received {found}")]
    Unexpected {
        /// What this side waited for.
        expected: &'static str,
        /// What came.
        found: &'static str,
    },
    /// What the source announced or sent is outside the announced layout or the
    /// destination's limits.
    #[error(transparent)]
    Check(#[from] super::check::CheckError),
    /// The source gave up and said why.
    #[error("the source aborted: {0}")]
    Aborted(String),
    /// The guest stopped (powered off, reset, a vCPU failed) on the source meanwhile.
    #[error("the guest stopped on the source during the migration")]
    GuestStopped,
    /// Creating the destination's VM failed.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// A VM operation failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A vCPU operation failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// A runner command (pause, save) failed.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// Mapping destination memory failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Encoding or decoding the final state (vCPUs, VM, devices) failed.
    #[error("the VM's state sections")]
    State(#[source] vmkit_snapshot::StateError),
    /// Reading or writing guest memory failed.
    #[error("guest memory at {addr:#x}")]
    GuestMemory {
        /// The guest address.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The VMM's device restore failed.
    #[error("restoring the devices")]
    Devices(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The VMM's first step for its devices, on the empty VM
    /// ([`receive_prepared`](super::receive_prepared)), failed.
    #[error("preparing the devices")]
    PrepareDevices(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The migration failed after the source paused its vCPUs, and resuming them failed
    /// too: the VM is paused on the source. `failure` is the first error.
    #[error("resuming the source's vCPUs after the failure ({failure})")]
    NotResumed {
        /// The failure that made the source resume.
        failure: String,
        /// Why resuming failed.
        #[source]
        source: RunnerError,
    },
}

/// A migration failed: on which side, in which phase, and why.
///
/// On the source, every error means the VM still runs there (its vCPUs were never paused, or
/// were resumed), except [`Reason::NotResumed`]. On the destination, every error means no VM
/// was handed to the caller.
///
/// A broken, truncated or corrupt stream is blamed on the peer of the side that noticed it:
/// the source reports a lost destination as `side: Destination`.
#[derive(Debug, thiserror::Error)]
#[error("migration failed on the {side} side in the {phase} phase")]
pub struct MigrationError {
    /// The side that failed or refused.
    pub side: Side,
    /// The phase it failed in.
    pub phase: Phase,
    /// What went wrong.
    #[source]
    pub reason: Reason,
}

impl MigrationError {
    /// An error of `side` in `phase`.
    pub fn new(side: Side, phase: Phase, reason: impl Into<Reason>) -> Self {
        MigrationError {
            side,
            phase,
            reason: reason.into(),
        }
    }

    /// The destination's refusal, if that is what this is.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.reason {
            Reason::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }
}
