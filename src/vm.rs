//! The [`Vm`] trait: guest memory and vCPUs of one virtual machine.

use std::io;

use crate::memory::{GuestMemoryMmap, GuestRange, MemoryError, MemoryRegion, MemorySlot};
use crate::vcpu::Vcpu;

/// Errors from configuring a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The region could not be placed (overlap, alignment, no free slot, unknown slot…).
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The hypervisor refused to map or unmap a region.
    #[error("{op} failed for region {range} in {slot}")]
    MapRegion {
        /// The ioctl or hypercall, e.g. `KVM_SET_USER_MEMORY_REGION`.
        op: &'static str,
        /// The slot.
        slot: MemorySlot,
        /// The region.
        range: GuestRange,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// A region asks for a feature this hypervisor does not have.
    #[error("region {range} needs {feature}, which this hypervisor does not support")]
    RegionUnsupported {
        /// The region.
        range: GuestRange,
        /// The missing feature, e.g. "read-only memory".
        feature: &'static str,
    },
    /// The vCPU id is not below the VM's `max_vcpus`.
    #[error("vCPU id {id} is out of range: this VM allows ids 0 to {}", .max_vcpus.saturating_sub(1))]
    VcpuIdOutOfRange {
        /// Requested id.
        id: u32,
        /// The VM's `max_vcpus`.
        max_vcpus: u32,
    },
    /// A vCPU with that id exists already.
    #[error("vCPU {id} already exists")]
    VcpuExists {
        /// Requested id.
        id: u32,
    },
    /// Creating a vCPU failed.
    #[error("{op} failed for vCPU {id}")]
    CreateVcpu {
        /// The ioctl or hypercall.
        op: &'static str,
        /// Requested id.
        id: u32,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
}

/// One virtual machine: its memory and its vCPUs.
///
/// Methods take `&self` so that a VMM can share the VM between threads (for example to add
/// memory while vCPUs run on their own threads).
pub trait Vm: Send + Sync {
    /// Maps `region` into the guest and returns the slot it occupies.
    ///
    /// Fails without changing anything if the region overlaps one already mapped, is not page
    /// aligned, needs a feature the hypervisor lacks, or no slot is free. The error names the
    /// region (and the one it overlaps).
    fn add_memory_region(&self, region: MemoryRegion) -> Result<MemorySlot, VmError>;

    /// Unmaps the region in `slot` from the guest and hands it back.
    ///
    /// The mapping itself stays valid as long as the returned region or any
    /// [`GuestMemoryMmap`] obtained earlier still refers to it.
    fn remove_memory_region(&self, slot: MemorySlot) -> Result<MemoryRegion, VmError>;

    /// The guest's memory as it is mapped now, for the host to read and write.
    ///
    /// This is a snapshot of the layout: regions added or removed later are not reflected in a
    /// value obtained before.
    fn memory(&self) -> GuestMemoryMmap;

    /// Creates the vCPU `id` (from 0 to the VM's `max_vcpus - 1`).
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, VmError>;
}
