//! What can go wrong building a pooled VM, and why a returned one was replaced.

use std::path::PathBuf;

use crate::hypervisor::HypervisorError;
use crate::memory::MemoryError;
use crate::snapshot::SnapshotError;
use crate::vcpu::VcpuError;
use crate::vm::VmError;

/// The error a template's setup function returns.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of a [`VmPool`](super::VmPool): building a VM from its template, starting the
/// refill thread, or resetting a returned VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The template asks for no vCPU.
    #[error("a pool template needs at least one vCPU")]
    NoVcpus,
    /// The hypervisor refused to create the VM.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// A memory region of the template could not be mapped.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A VM-level call failed (mapping memory, creating a vCPU, VM state).
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A vCPU call failed (reading or loading its state).
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Restoring or checking the template's snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The template's snapshot is a diff: a diff is restored into anonymous memory, which a
    /// reset would zero, so only a full snapshot (mapped from its memory file) can be a
    /// template.
    #[error(
        "snapshot {dir} is a chain of {chain} snapshots; a pool template must be a full snapshot"
    )]
    SnapshotChain {
        /// The snapshot directory.
        dir: PathBuf,
        /// How many snapshots the chain holds.
        chain: usize,
    },
    /// The template's bytes do not fit in its memory.
    #[error("the template's {len} bytes at {addr:#x} do not fit in its memory")]
    Load {
        /// Guest-physical address of the bytes.
        addr: u64,
        /// How many bytes.
        len: usize,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The template's setup function failed.
    #[error("the pool template's setup failed")]
    Setup(#[source] SetupError),
    /// The refill thread could not be started.
    #[error("spawning the pool's refill thread")]
    Spawn(#[source] std::io::Error),
    /// A returned VM came from another pool.
    #[error("the VM was taken from another pool")]
    ForeignVm,
    /// A returned VM does not have the template's vCPUs (one was lost, say to a panicking
    /// runner thread).
    #[error("the VM came back with vCPUs {found:?}, not the template's {expected:?}")]
    VcpusChanged {
        /// The template's vCPU ids.
        expected: Vec<u32>,
        /// The ids that came back.
        found: Vec<u32>,
    },
    /// A returned VM's memory layout is not the template's (a region was added or removed).
    #[error("the VM came back with a memory layout other than the template's")]
    LayoutChanged,
    /// A returned VM's memory is not a private mapping, which a reset cannot return to its
    /// initial contents without copying it (shared or foreign memory, such as Xen's).
    #[error(
        "guest memory at {guest_addr:#x} is not a private mapping, so it cannot be reset in place"
    )]
    NotResettable {
        /// Guest-physical address of the region.
        guest_addr: u64,
    },
    /// Dropping a returned VM's memory contents failed.
    #[error("madvise(MADV_DONTNEED) of guest memory at {guest_addr:#x} failed")]
    Discard {
        /// Guest-physical address of the region.
        guest_addr: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
