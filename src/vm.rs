//! The [`Vm`] trait: guest memory and vCPUs of one virtual machine.

use std::io;

use vmm_sys_util::eventfd::EventFd;

#[cfg(target_arch = "x86_64")]
use crate::arch::x86_64::{IrqchipState, PitState};
use crate::dirty::{DirtyLog, DirtyLogMode};
use crate::interrupt::{DataMatch, IoEventAddress, IrqRoute, MsiMessage};
use crate::memory::{
    GuestMemoryMmap, GuestRange, MemoryError, MemoryFlags, MemoryRegion, MemorySlot,
};
use crate::vcpu::Vcpu;

/// The VM's clock (on KVM, kvmclock's time base), to carry across a snapshot and restore.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ClockState {
    /// Nanoseconds of guest time.
    pub ns: u64,
    /// The clock is the same on every vCPU (a stable TSC); informational when read, ignored
    /// when set.
    pub stable: bool,
}

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
    /// The operation needs an in-kernel interrupt controller, and the VM was created without
    /// one.
    #[error("{op} needs an in-kernel irqchip; create the VM with VmConfig::irqchip(true)")]
    NoIrqchip {
        /// What was attempted.
        op: &'static str,
    },
    /// An interrupt operation on a GSI failed.
    #[error("{op} failed for GSI {gsi}")]
    Irq {
        /// The ioctl or hypercall.
        op: &'static str,
        /// The GSI.
        gsi: u32,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// Sending an MSI failed.
    #[error("sending the MSI (address {:#x}, data {:#x}) failed", .msi.address, .msi.data)]
    Msi {
        /// The message.
        msi: MsiMessage,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// The routing table is not acceptable.
    #[error("invalid GSI route for GSI {gsi}: {reason}")]
    InvalidRoute {
        /// The GSI of the offending route.
        gsi: u32,
        /// Why.
        reason: &'static str,
    },
    /// Registering or unregistering an ioeventfd failed.
    #[error("{op} failed for the ioeventfd at {addr}")]
    IoEvent {
        /// The ioctl.
        op: &'static str,
        /// The watched address.
        addr: IoEventAddress,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// Reading or clearing the dirty log of a region failed.
    #[error("{op} failed for {slot}")]
    DirtyLog {
        /// The ioctl.
        op: &'static str,
        /// The region's slot.
        slot: MemorySlot,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// Another VM-wide operation failed.
    #[error("{op} failed")]
    Os {
        /// The ioctl or hypercall, e.g. `KVM_GET_CLOCK`.
        op: &'static str,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// The VM was created without the in-kernel PIT.
    #[error("{op} needs an in-kernel PIT; create the VM with VmConfig::pit(true)")]
    NoPit {
        /// What was attempted.
        op: &'static str,
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

    /// Every mapped region: its slot, guest range and flags, in slot order.
    fn memory_layout(&self) -> Vec<(MemorySlot, GuestRange, MemoryFlags)>;

    /// Creates the vCPU `id` (from 0 to the VM's `max_vcpus - 1`).
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, VmError>;

    /// Sets the level of interrupt line `gsi` (needs an in-kernel irqchip).
    ///
    /// For an edge-triggered input, raise then lower it; a level-triggered input stays
    /// asserted until lowered.
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), VmError>;

    /// Sends a message-signalled interrupt.
    fn signal_msi(&self, msi: MsiMessage) -> Result<(), VmError>;

    /// Replaces the whole GSI routing table (needs an in-kernel irqchip). Start from
    /// [`IrqRoute::pc_defaults`] to keep the legacy routes.
    fn set_gsi_routing(&self, routes: &[IrqRoute]) -> Result<(), VmError>;

    /// Makes every write to `fd` raise `gsi` (needs an in-kernel irqchip).
    ///
    /// With `resample`, the GSI is treated as level-triggered: it stays asserted until the guest
    /// acknowledges it (EOI), at which point the hypervisor lowers it and writes `resample`, so
    /// the device can re-raise it if its condition still holds.
    fn register_irqfd(
        &self,
        fd: &EventFd,
        gsi: u32,
        resample: Option<&EventFd>,
    ) -> Result<(), VmError>;

    /// Undoes [`Vm::register_irqfd`].
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError>;

    /// Makes guest writes to `addr` that match `datamatch` signal `fd` instead of exiting to
    /// the VMM.
    fn register_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), VmError>;

    /// Undoes [`Vm::register_ioeventfd`] (with the same address and data match).
    fn unregister_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), VmError>;

    /// How this VM tracks dirty pages (chosen with [`VmConfig::dirty_ring`](crate::VmConfig)).
    fn dirty_log_mode(&self) -> DirtyLogMode;

    /// The pages the guest wrote since the previous harvest, in every region that logs dirty
    /// pages; tracking is re-armed for them before this returns (see [`crate::dirty`]).
    fn harvest_dirty_log(&self) -> Result<DirtyLog, VmError>;

    /// Reads the in-kernel interrupt controllers' state (needs an in-kernel irqchip).
    #[cfg(target_arch = "x86_64")]
    fn irqchip_state(&self) -> Result<IrqchipState, VmError>;

    /// Restores the in-kernel interrupt controllers' state (needs an in-kernel irqchip).
    #[cfg(target_arch = "x86_64")]
    fn set_irqchip_state(&self, state: &IrqchipState) -> Result<(), VmError>;

    /// Reads the in-kernel PIT's state (needs [`VmConfig::pit`](crate::VmConfig)).
    #[cfg(target_arch = "x86_64")]
    fn pit_state(&self) -> Result<PitState, VmError>;

    /// Restores the in-kernel PIT's state (needs [`VmConfig::pit`](crate::VmConfig)).
    #[cfg(target_arch = "x86_64")]
    fn set_pit_state(&self, state: &PitState) -> Result<(), VmError>;

    /// Reads the VM clock.
    fn clock(&self) -> Result<ClockState, VmError>;

    /// Sets the VM clock, e.g. to the value saved with a snapshot.
    fn set_clock(&self, clock: &ClockState) -> Result<(), VmError>;
}
