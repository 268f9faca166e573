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

/// The VM's clock (on KVM, kvmclock's time base; on Xen, the guest's TSC in nanoseconds at
/// the domain's TSC frequency), to carry across a snapshot and restore.
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
#[non_exhaustive]
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
    /// one although the hypervisor offers it (see [`VmError::Unsupported`] for hypervisors
    /// that have none).
    #[error("{op} needs an in-kernel irqchip; create the VM with VmConfig::irqchip(true)")]
    NoIrqchip {
        /// What was attempted.
        op: &'static str,
    },
    /// The operation needs the hypervisor's IOAPIC and PICs, which a split irqchip
    /// ([`IrqchipKind::Split`](crate::IrqchipKind::Split)) leaves to the VMM.
    #[error("{op} needs the in-kernel IOAPIC and PICs, but the VM has a split irqchip")]
    SplitIrqchip {
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
    /// The VM was created without the in-kernel PIT although the hypervisor offers it.
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
    /// This hypervisor (or vmkit's backend for it) does not offer the operation at all;
    /// [`Capabilities`](crate::Capabilities) tells beforehand.
    #[error("{op} is not supported: {reason}")]
    Unsupported {
        /// What was attempted, e.g. "registering an irqfd".
        op: &'static str,
        /// Why it is not available, e.g. "Xen has no irqfd".
        reason: &'static str,
    },
}

/// What the trait's default methods return: the backend does not offer `op` at all.
fn unsupported<T>(op: &'static str, reason: &'static str) -> Result<T, VmError> {
    Err(VmError::Unsupported { op, reason })
}

/// One virtual machine: its memory and its vCPUs.
///
/// Methods take `&self` so that a VMM can share the VM between threads (for example to add
/// memory while vCPUs run on their own threads).
///
/// Memory and vCPUs are required of every backend. The interrupt, dirty-log, device-state
/// and clock methods are optional: a backend that lacks one keeps the default method, which
/// returns [`VmError::Unsupported`], and reports the feature as absent in its
/// [`Capabilities`](crate::Capabilities), so a VMM can check before it asks.
///
/// Dropping the `Vm` does not pull the VM from under its vCPUs: each vCPU keeps the VM and
/// its guest memory alive until it is dropped too, on every backend (see
/// [`Vcpu`](crate::Vcpu#a-vcpu-keeps-its-vm-alive)).
///
/// The examples create a VM on whichever hypervisor the host has (see [`crate::open`]).
pub trait Vm: Send + Sync {
    /// Maps `region` into the guest and returns the slot it occupies.
    ///
    /// Fails without changing anything if the region overlaps one already mapped, is not page
    /// aligned, needs a feature the hypervisor lacks, or no slot is free. The error names the
    /// region (and the one it overlaps).
    ///
    /// ```
    /// use vmkit::vm_memory::GuestAddress;
    /// use vmkit::{MemoryFlags, MemoryRegion, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&VmConfig::default())?;
    /// let ram = MemoryRegion::anonymous(GuestAddress(0), 0x10_0000, MemoryFlags::empty())?;
    /// vm.add_memory_region(ram)?;
    /// // A region over addresses already mapped is refused.
    /// let overlap = MemoryRegion::anonymous(GuestAddress(0x8000), 0x1000, MemoryFlags::empty())?;
    /// assert!(vm.add_memory_region(overlap).is_err());
    /// # Ok(()) }
    /// ```
    fn add_memory_region(&self, region: MemoryRegion) -> Result<MemorySlot, VmError>;

    /// Unmaps the region in `slot` from the guest and hands it back.
    ///
    /// The mapping itself stays valid as long as the returned region or any
    /// [`GuestMemoryMmap`] obtained earlier still refers to it.
    ///
    /// ```
    /// use vmkit::vm_memory::GuestAddress;
    /// use vmkit::{MemoryFlags, MemoryRegion, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&VmConfig::default())?;
    /// let ram = MemoryRegion::anonymous(GuestAddress(0), 0x1000, MemoryFlags::empty())?;
    /// let slot = vm.add_memory_region(ram)?;
    /// let ram = vm.remove_memory_region(slot)?;
    /// assert_eq!(ram.size(), 0x1000);
    /// # Ok(()) }
    /// ```
    fn remove_memory_region(&self, slot: MemorySlot) -> Result<MemoryRegion, VmError>;

    /// The guest's memory as it is mapped now, for the host to read and write.
    ///
    /// This is a snapshot of the layout: regions added or removed later are not reflected in a
    /// value obtained before.
    ///
    /// ```
    /// use vmkit::vm_memory::{Bytes, GuestAddress};
    /// use vmkit::{MemoryFlags, MemoryRegion, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&VmConfig::default())?;
    /// let ram = MemoryRegion::anonymous(GuestAddress(0), 0x2000, MemoryFlags::empty())?;
    /// vm.add_memory_region(ram)?;
    /// let memory = vm.memory();
    /// memory.write_obj(0xf4u8, GuestAddress(0x1000))?; // hlt
    /// assert_eq!(memory.read_obj::<u8>(GuestAddress(0x1000))?, 0xf4);
    /// # Ok(()) }
    /// ```
    fn memory(&self) -> GuestMemoryMmap;

    /// Every mapped region: its slot, guest range and flags, in slot order.
    ///
    /// ```
    /// use vmkit::vm_memory::GuestAddress;
    /// use vmkit::{MemoryFlags, MemoryRegion, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&VmConfig::default())?;
    /// let ram = MemoryRegion::anonymous(GuestAddress(0x10_0000), 0x1000, MemoryFlags::empty())?;
    /// let slot = vm.add_memory_region(ram)?;
    /// let (first_slot, range, _flags) = vm.memory_layout()[0];
    /// assert_eq!((first_slot, range.start, range.size), (slot, 0x10_0000, 0x1000));
    /// # Ok(()) }
    /// ```
    fn memory_layout(&self) -> Vec<(MemorySlot, GuestRange, MemoryFlags)>;

    /// Creates the vCPU `id` (from 0 to the VM's `max_vcpus - 1`). The vCPU keeps this VM
    /// and its guest memory alive, even after the `Vm` is dropped.
    ///
    /// ```
    /// use vmkit::VmConfig;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&VmConfig::default().max_vcpus(2))?;
    /// let vcpu = vm.create_vcpu(1)?;
    /// assert_eq!(vcpu.id(), 1);
    /// assert!(vm.create_vcpu(2).is_err()); // ids run from 0 to max_vcpus - 1
    /// # Ok(()) }
    /// ```
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, VmError>;

    /// Sets the level of interrupt line `gsi` (needs an in-kernel irqchip).
    ///
    /// For an edge-triggered input, raise then lower it; a level-triggered input stays
    /// asserted until lowered.
    ///
    /// ```
    /// use vmkit::VmConfig;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().irqchip { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true))?;
    /// // Pulse ISA IRQ 4 (COM1's), an edge-triggered input.
    /// vm.set_irq_line(4, true)?;
    /// vm.set_irq_line(4, false)?;
    /// # Ok(()) }
    /// ```
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), VmError> {
        let _ = (gsi, level);
        unsupported(
            "setting an interrupt line",
            "this hypervisor backend emulates no PIC or IOAPIC (Capabilities::irqchip is false)",
        )
    }

    /// Sends a message-signalled interrupt.
    ///
    /// ```
    /// use vmkit::{MsiMessage, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().msi || !hypervisor.capabilities().irqchip { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true))?;
    /// let _vcpu = vm.create_vcpu(0)?; // an MSI that reaches no vCPU is an error
    /// // Vector 0x30 to the local APIC with id 0.
    /// vm.signal_msi(MsiMessage::x86(0, 0x30))?;
    /// # Ok(()) }
    /// ```
    fn signal_msi(&self, msi: MsiMessage) -> Result<(), VmError> {
        let _ = msi;
        unsupported(
            "sending an MSI",
            "this hypervisor backend cannot inject MSIs (Capabilities::msi is false)",
        )
    }

    /// Replaces the whole GSI routing table (needs an in-kernel irqchip). Start from
    /// [`IrqRoute::pc_defaults`] to keep the legacy routes.
    ///
    /// ```
    /// use vmkit::{IrqRoute, MsiMessage, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().gsi_routing { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true))?;
    /// let mut routes = IrqRoute::pc_defaults();
    /// // GSI 24 sends vector 0x30 to the local APIC with id 0.
    /// routes.push(IrqRoute::Msi { gsi: 24, msi: MsiMessage::x86(0, 0x30) });
    /// vm.set_gsi_routing(&routes)?;
    /// # Ok(()) }
    /// ```
    fn set_gsi_routing(&self, routes: &[IrqRoute]) -> Result<(), VmError> {
        let _ = routes;
        unsupported(
            "setting the GSI routing",
            "this hypervisor backend has no GSI routing table (Capabilities::gsi_routing is false)",
        )
    }

    /// Makes every write to `fd` raise `gsi` (needs an in-kernel irqchip).
    ///
    /// With `resample`, the GSI is treated as level-triggered: it stays asserted until the guest
    /// acknowledges it (EOI), at which point the hypervisor lowers it and writes `resample`, so
    /// the device can re-raise it if its condition still holds.
    ///
    /// ```
    /// use vmkit::{EventFd, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().irqfd { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true))?;
    /// let irq = EventFd::new(0)?;
    /// vm.register_irqfd(&irq, 5, None)?;
    /// irq.write(1)?; // raises GSI 5, from any thread, without a call into vmkit
    /// # Ok(()) }
    /// ```
    fn register_irqfd(
        &self,
        fd: &EventFd,
        gsi: u32,
        resample: Option<&EventFd>,
    ) -> Result<(), VmError> {
        let _ = (fd, gsi, resample);
        unsupported(
            "registering an irqfd",
            "this hypervisor backend has no irqfds (Capabilities::irqfd is false)",
        )
    }

    /// Undoes [`Vm::register_irqfd`].
    ///
    /// ```
    /// use vmkit::{EventFd, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().irqfd { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true))?;
    /// let irq = EventFd::new(0)?;
    /// vm.register_irqfd(&irq, 5, None)?;
    /// vm.unregister_irqfd(&irq, 5)?;
    /// # Ok(()) }
    /// ```
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        let _ = (fd, gsi);
        unsupported(
            "unregistering an irqfd",
            "this hypervisor backend has no irqfds (Capabilities::irqfd is false)",
        )
    }

    /// Makes guest writes to `addr` that match `datamatch` signal `fd` instead of exiting to
    /// the VMM.
    ///
    /// ```
    /// use vmkit::{DataMatch, EventFd, IoEventAddress, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().ioeventfd { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default())?;
    /// // A virtio-mmio doorbell: the guest writes the queue index to QueueNotify (0x50).
    /// let doorbell = EventFd::new(0)?;
    /// vm.register_ioeventfd(&doorbell, IoEventAddress::Mmio(0xd000_0050), DataMatch::U32(0))?;
    /// # Ok(()) }
    /// ```
    fn register_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), VmError> {
        let _ = (fd, addr, datamatch);
        unsupported(
            "registering an ioeventfd",
            "this hypervisor backend has no ioeventfds (Capabilities::ioeventfd is false)",
        )
    }

    /// Undoes [`Vm::register_ioeventfd`] (with the same address and data match).
    ///
    /// ```
    /// use vmkit::{DataMatch, EventFd, IoEventAddress, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().ioeventfd { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default())?;
    /// let doorbell = EventFd::new(0)?;
    /// vm.register_ioeventfd(&doorbell, IoEventAddress::Pio(0x510), DataMatch::Any)?;
    /// vm.unregister_ioeventfd(&doorbell, IoEventAddress::Pio(0x510), DataMatch::Any)?;
    /// # Ok(()) }
    /// ```
    fn unregister_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), VmError> {
        let _ = (fd, addr, datamatch);
        unsupported(
            "unregistering an ioeventfd",
            "this hypervisor backend has no ioeventfds (Capabilities::ioeventfd is false)",
        )
    }

    /// How this VM tracks dirty pages (chosen with [`VmConfig::dirty_ring`](crate::VmConfig)).
    /// The default says [`DirtyLogMode::Bitmap`], for backends without rings (and those
    /// without dirty logging, whose [`Vm::harvest_dirty_log`] fails).
    ///
    /// ```
    /// use vmkit::{DirtyLogMode, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&VmConfig::default())?;
    /// assert_eq!(vm.dirty_log_mode(), DirtyLogMode::Bitmap);
    /// # Ok(()) }
    /// ```
    fn dirty_log_mode(&self) -> DirtyLogMode {
        DirtyLogMode::Bitmap
    }

    /// The pages the guest wrote since the previous harvest, in every region that logs dirty
    /// pages; tracking is re-armed for them before this returns (see [`crate::dirty`]).
    ///
    /// ```
    /// use vmkit::vm_memory::GuestAddress;
    /// use vmkit::{MemoryFlags, MemoryRegion, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().dirty_log { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default())?;
    /// let ram = MemoryRegion::anonymous(GuestAddress(0), 0x4000, MemoryFlags::LOG_DIRTY)?;
    /// vm.add_memory_region(ram)?;
    /// // ... run the guest ...
    /// let log = vm.harvest_dirty_log()?;
    /// for page in log.dirty_pages() {
    ///     println!("the guest wrote the page at {:#x}", page.0);
    /// }
    /// # Ok(()) }
    /// ```
    fn harvest_dirty_log(&self) -> Result<DirtyLog, VmError> {
        unsupported(
            "harvesting the dirty log",
            "this hypervisor backend does not log dirty pages (Capabilities::dirty_log is false)",
        )
    }

    /// Reads the in-kernel interrupt controllers' state (needs an in-kernel irqchip).
    ///
    /// ```
    /// use vmkit::VmConfig;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().irqchip { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true))?;
    /// let state = vm.irqchip_state()?;
    /// println!("IOAPIC id: {}", state.ioapic.id);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn irqchip_state(&self) -> Result<IrqchipState, VmError> {
        unsupported(
            "reading the irqchip state",
            "this hypervisor backend emulates no PIC or IOAPIC (Capabilities::irqchip is false)",
        )
    }

    /// Restores the in-kernel interrupt controllers' state (needs an in-kernel irqchip).
    ///
    /// ```
    /// use vmkit::VmConfig;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().irqchip { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true))?;
    /// let state = vm.irqchip_state()?;
    /// vm.set_irqchip_state(&state)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_irqchip_state(&self, state: &IrqchipState) -> Result<(), VmError> {
        let _ = state;
        unsupported(
            "setting the irqchip state",
            "this hypervisor backend emulates no PIC or IOAPIC (Capabilities::irqchip is false)",
        )
    }

    /// Reads the in-kernel PIT's state (needs [`VmConfig::pit`](crate::VmConfig)).
    ///
    /// ```
    /// use vmkit::VmConfig;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().pit { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true).pit(true))?;
    /// let pit = vm.pit_state()?;
    /// println!("PIT channel 0 counts from {}", pit.channels[0].count);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn pit_state(&self) -> Result<PitState, VmError> {
        unsupported(
            "reading the PIT state",
            "this hypervisor backend emulates no PIT (Capabilities::pit is false)",
        )
    }

    /// Restores the in-kernel PIT's state (needs [`VmConfig::pit`](crate::VmConfig)).
    ///
    /// ```
    /// use vmkit::VmConfig;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().pit { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true).pit(true))?;
    /// let pit = vm.pit_state()?;
    /// vm.set_pit_state(&pit)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_pit_state(&self, state: &PitState) -> Result<(), VmError> {
        let _ = state;
        unsupported(
            "setting the PIT state",
            "this hypervisor backend emulates no PIT (Capabilities::pit is false)",
        )
    }

    /// Chooses the in-kernel PIT's lost-tick policy (needs [`VmConfig::pit`](crate::VmConfig)
    /// and [`Capabilities::pit_reinject_control`](crate::Capabilities)).
    ///
    /// With `true` (KVM's default) a tick the guest has not acknowledged when the next one is
    /// due stays pending and is delivered later, so a guest that counts ticks to keep time
    /// (older kernels, some other OSes) catches up after it was descheduled, in a burst. With
    /// `false` ticks that find the previous one still pending are dropped: no burst, for
    /// guests that read a clock rather than count ticks (a modern Linux, which also stops
    /// using the PIT once its local APIC timer runs).
    ///
    /// ```
    /// use vmkit::VmConfig;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().pit_reinject_control { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true).pit(true))?;
    /// vm.set_pit_reinject(false)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_pit_reinject(&self, reinject: bool) -> Result<(), VmError> {
        let _ = reinject;
        unsupported(
            "choosing the PIT's lost-tick policy",
            "this hypervisor backend offers no PIT reinjection control \
             (Capabilities::pit_reinject_control is false)",
        )
    }

    /// Reads the VM clock.
    ///
    /// ```
    /// use vmkit::VmConfig;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().clock { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default())?;
    /// println!("guest time: {} ns", vm.clock()?.ns);
    /// # Ok(()) }
    /// ```
    fn clock(&self) -> Result<ClockState, VmError> {
        unsupported(
            "reading the VM clock",
            "this hypervisor backend has no VM clock to read (Capabilities::clock is false)",
        )
    }

    /// Sets the VM clock, e.g. to the value saved with a snapshot.
    ///
    /// ```
    /// use vmkit::{ClockState, VmConfig};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().clock { return Ok(()); }
    /// let vm = hypervisor.create_vm(&VmConfig::default())?;
    /// vm.set_clock(&ClockState { ns: 1_000_000_000, stable: false })?;
    /// # Ok(()) }
    /// ```
    fn set_clock(&self, clock: &ClockState) -> Result<(), VmError> {
        let _ = clock;
        unsupported(
            "setting the VM clock",
            "this hypervisor backend has no VM clock to set (Capabilities::clock is false)",
        )
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::vcpu::{KickHandle, VcpuError, VcpuExit};

    // A backend that implements only the required methods of Vm and Vcpu gets Unsupported
    // from every optional one, naming what it lacks.

    /// A VM with memory and vCPUs and nothing optional.
    struct Minimal;

    impl Vm for Minimal {
        fn add_memory_region(&self, region: MemoryRegion) -> Result<MemorySlot, VmError> {
            Err(VmError::RegionUnsupported {
                range: region.range(),
                feature: "memory",
            })
        }
        fn remove_memory_region(&self, slot: MemorySlot) -> Result<MemoryRegion, VmError> {
            Err(MemoryError::NoSuchSlot(slot).into())
        }
        fn memory(&self) -> GuestMemoryMmap {
            GuestMemoryMmap::default()
        }
        fn memory_layout(&self) -> Vec<(MemorySlot, GuestRange, MemoryFlags)> {
            Vec::new()
        }
        fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, VmError> {
            Err(VmError::VcpuIdOutOfRange { id, max_vcpus: 0 })
        }
    }

    #[test]
    fn optional_methods_default_to_unsupported() {
        let vm = Minimal;
        let fd = EventFd::new(0).expect("eventfd");
        let results = [
            vm.set_irq_line(4, true).err(),
            vm.signal_msi(MsiMessage::x86(0, 0x30)).err(),
            vm.set_gsi_routing(&IrqRoute::pc_defaults()).err(),
            vm.register_irqfd(&fd, 4, None).err(),
            vm.unregister_irqfd(&fd, 4).err(),
            vm.register_ioeventfd(&fd, IoEventAddress::Pio(0x510), DataMatch::Any)
                .err(),
            vm.unregister_ioeventfd(&fd, IoEventAddress::Pio(0x510), DataMatch::Any)
                .err(),
            vm.harvest_dirty_log().err(),
            vm.irqchip_state().err(),
            vm.set_irqchip_state(&IrqchipState::default()).err(),
            vm.pit_state().err(),
            vm.set_pit_state(&PitState::default()).err(),
            vm.set_pit_reinject(false).err(),
            vm.clock().err(),
            vm.set_clock(&ClockState::default()).err(),
        ];
        for result in results {
            match result {
                Some(VmError::Unsupported { op, reason }) => {
                    assert!(reason.contains("Capabilities::"), "{op}: {reason}");
                }
                other => panic!("expected Unsupported, got {other:?}"),
            }
        }
        assert_eq!(vm.dirty_log_mode(), DirtyLogMode::Bitmap);
    }

    /// A vCPU with registers and nothing optional.
    struct MinimalVcpu;

    impl Vcpu for MinimalVcpu {
        fn id(&self) -> u32 {
            3
        }
        fn run(&mut self) -> Result<VcpuExit<'_>, VcpuError> {
            Ok(VcpuExit::Hlt)
        }
        fn kick_handle(&self) -> KickHandle {
            #[derive(Debug)]
            struct NoKick;
            impl crate::vcpu::Kick for NoKick {
                fn kick(&self) {}
            }
            KickHandle::new(std::sync::Arc::new(NoKick))
        }
        fn regs(&self) -> Result<crate::arch::x86_64::Regs, VcpuError> {
            Ok(Default::default())
        }
        fn set_regs(&self, _: &crate::arch::x86_64::Regs) -> Result<(), VcpuError> {
            Ok(())
        }
        fn sregs(&self) -> Result<crate::arch::x86_64::SpecialRegs, VcpuError> {
            Ok(Default::default())
        }
        fn set_sregs(&self, _: &crate::arch::x86_64::SpecialRegs) -> Result<(), VcpuError> {
            Ok(())
        }
        fn fpu(&self) -> Result<crate::arch::x86_64::Fpu, VcpuError> {
            Ok(Default::default())
        }
        fn set_fpu(&self, _: &crate::arch::x86_64::Fpu) -> Result<(), VcpuError> {
            Ok(())
        }
        fn msrs(&self, _: &[u32]) -> Result<Vec<crate::arch::x86_64::Msr>, VcpuError> {
            Ok(Vec::new())
        }
        fn set_msrs(&self, _: &[crate::arch::x86_64::Msr]) -> Result<(), VcpuError> {
            Ok(())
        }
        fn cpuid(&self) -> Result<Vec<crate::arch::x86_64::CpuidEntry>, VcpuError> {
            Ok(Vec::new())
        }
        fn set_cpuid(&self, _: &[crate::arch::x86_64::CpuidEntry]) -> Result<(), VcpuError> {
            Ok(())
        }
        fn mp_state(&self) -> Result<crate::arch::x86_64::MpState, VcpuError> {
            Ok(Default::default())
        }
        fn set_mp_state(&self, _: crate::arch::x86_64::MpState) -> Result<(), VcpuError> {
            Ok(())
        }
    }

    #[test]
    fn optional_vcpu_methods_default_to_unsupported() {
        use crate::arch::x86_64::{LapicState, VcpuEvents, Xsave};
        let vcpu = MinimalVcpu;
        let results = [
            vcpu.set_guest_debug(&crate::GuestDebug::default()).err(),
            vcpu.lapic().err(),
            vcpu.set_lapic(&LapicState::default()).err(),
            vcpu.xsave().err(),
            vcpu.set_xsave(&Xsave { region: Vec::new() }).err(),
            vcpu.xcrs().err(),
            vcpu.set_xcrs(&[]).err(),
            vcpu.vcpu_events().err(),
            vcpu.set_vcpu_events(&VcpuEvents::default()).err(),
        ];
        for result in results {
            match result {
                Some(VcpuError::Unsupported { vcpu: 3, .. }) => {}
                other => panic!("expected Unsupported on vCPU 3, got {other:?}"),
            }
        }
        assert!(vcpu.complete_pending_io().is_ok());
    }
}
