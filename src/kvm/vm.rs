//! KVM VMs: memory slots and vCPU creation.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kvm_bindings::{
    kvm_clock_data, kvm_userspace_memory_region, KVM_CLOCK_TSC_STABLE, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::dirty::{self, DirtyRing, Mode};
use super::kick;
use super::{os_error, KvmVcpu};
use crate::arch::x86_64::{IrqchipState, PitState};
use crate::dirty::{DirtyLog, DirtyLogMode, DirtyRegion};
use crate::hypervisor::{Capabilities, VmConfig};
use crate::interrupt::{DataMatch, IoEventAddress, IrqRoute, MsiMessage};
use crate::memory::{
    GuestMemoryMmap, GuestRange, MemoryFlags, MemoryRegion, MemorySlot, RegionTable, PAGE_SIZE,
};
use crate::vcpu::Vcpu;
use crate::vm::{ClockState, Vm, VmError};

/// What a VM and its vCPUs share. vCPUs hold it too, so guest memory stays mapped for as long
/// as any vCPU can run.
#[derive(Debug)]
pub(crate) struct VmShared {
    // Declared first so that the VM fd closes before the mappings in `regions` are unmapped.
    pub(crate) fd: VmFd,
    regions: Mutex<RegionTable>,
    pub(crate) config: VmConfig,
    pub(crate) capabilities: Arc<Capabilities>,
    dirty_mode: Mode,
    /// Size of each vCPU's kvm_run mapping.
    pub(crate) vcpu_mmap_size: usize,
    /// Every vCPU's dirty ring (ring mode only); harvested with the table locked.
    rings: Mutex<Vec<Arc<DirtyRing>>>,
}

impl VmShared {
    pub(super) fn regions(&self) -> MutexGuard<'_, RegionTable> {
        // The table is consistent at every unlock (it changes only after the ioctl succeeded),
        // so a panic elsewhere while holding the lock leaves nothing half done.
        lock(&self.regions)
    }
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct KvmVm {
    pub(super) shared: Arc<VmShared>,
}

impl KvmVm {
    pub(crate) fn new(
        fd: VmFd,
        config: VmConfig,
        capabilities: Arc<Capabilities>,
        dirty_mode: Mode,
        vcpu_mmap_size: usize,
    ) -> Self {
        let regions = Mutex::new(RegionTable::new(capabilities.max_memory_slots));
        KvmVm {
            shared: Arc::new(VmShared {
                fd,
                regions,
                config,
                capabilities,
                dirty_mode,
                vcpu_mmap_size,
                rings: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The underlying `kvm-ioctls` VM, for what vmkit does not wrap.
    pub fn as_vm_fd(&self) -> &VmFd {
        &self.shared.fd
    }

    /// Creates a vCPU, with the concrete KVM type.
    pub fn create_kvm_vcpu(&self, id: u32) -> Result<KvmVcpu, VmError> {
        let max_vcpus = self.shared.config.max_vcpus;
        if id >= max_vcpus {
            return Err(VmError::VcpuIdOutOfRange { id, max_vcpus });
        }
        let fd = self
            .shared
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|err| match err.errno() {
                libc::EEXIST => VmError::VcpuExists { id },
                _ => VmError::CreateVcpu {
                    op: "KVM_CREATE_VCPU",
                    id,
                    source: os_error(err),
                },
            })?;
        let create_error = |op, source| VmError::CreateVcpu { op, id, source };
        kick::install_signal_handler()
            .map_err(|err| create_error("installing the kick signal handler", err))?;
        if let Mode::Ring { entries } = self.shared.dirty_mode {
            let ring = DirtyRing::map(&fd, entries)
                .map_err(|err| create_error("mmap of the vCPU dirty ring", err))?;
            lock(&self.shared.rings).push(Arc::new(ring));
        }
        Ok(KvmVcpu::new(fd, id, Arc::clone(&self.shared)))
    }

    /// Bitmap modes: fetch (and, with manual clearing, re-protect) each logging region.
    fn harvest_bitmaps(&self, table: &RegionTable) -> Result<DirtyLog, VmError> {
        let mut log = DirtyLog::default();
        for (slot, region) in table
            .iter()
            .filter(|(_, r)| r.flags().contains(MemoryFlags::LOG_DIRTY))
        {
            let os = |op| move |source| VmError::DirtyLog { op, slot, source };
            let mut bitmap = self
                .shared
                .fd
                .get_dirty_log(slot.0, region.size() as usize)
                .map_err(|err| os("KVM_GET_DIRTY_LOG")(os_error(err)))?;
            if self.shared.dirty_mode == Mode::BitmapManualClear && bitmap.iter().any(|&w| w != 0) {
                let pages = region.size() / PAGE_SIZE as u64;
                dirty::clear_dirty_log(&self.shared.fd, slot.0, pages, &mut bitmap)
                    .map_err(os("KVM_CLEAR_DIRTY_LOG"))?;
            }
            log.regions.push(DirtyRegion {
                slot,
                guest_addr: region.guest_addr(),
                bitmap,
            });
        }
        Ok(log)
    }

    /// Ring mode: collect every vCPU's ring into per-region bitmaps, then reset the rings.
    fn harvest_rings(&self, table: &RegionTable) -> Result<DirtyLog, VmError> {
        let mut log = DirtyLog::default();
        for (slot, region) in table
            .iter()
            .filter(|(_, r)| r.flags().contains(MemoryFlags::LOG_DIRTY))
        {
            let pages = region.size() / PAGE_SIZE as u64;
            log.regions.push(DirtyRegion {
                slot,
                guest_addr: region.guest_addr(),
                bitmap: vec![0; pages.div_ceil(64) as usize],
            });
        }
        // Entries come in runs from one slot: remember the last slot's region (`None` for a
        // slot that was removed meanwhile, whose entries are dropped).
        let mut last: Option<(u32, Option<usize>)> = None;
        for ring in lock(&self.shared.rings).iter() {
            let collected = ring.harvest(|raw_slot, page| {
                let index = match last {
                    Some((cached, index)) if cached == raw_slot => index,
                    _ => {
                        // The upper 16 bits name the address space; vmkit uses only the first.
                        let slot = MemorySlot(raw_slot & 0xffff);
                        let index = log.regions.iter().position(|r| r.slot == slot);
                        last = Some((raw_slot, index));
                        index
                    }
                };
                let Some(region) = index.and_then(|i| log.regions.get_mut(i)) else {
                    return;
                };
                // The offset comes from shared memory: out-of-range pages are dropped.
                let word = (page / 64) as usize;
                if let Some(bits) = region.bitmap.get_mut(word) {
                    *bits |= 1 << (page % 64);
                }
            });
            // KVM keeps entries in reserve so that a ring it stops in time is never full.
            log.overflowed |= collected == ring.len();
        }
        dirty::reset_rings(&self.shared.fd).map_err(|source| VmError::Os {
            op: "KVM_RESET_DIRTY_RINGS",
            source,
        })?;
        Ok(log)
    }

    fn set_slot(
        &self,
        slot: MemorySlot,
        region: &MemoryRegion,
        memory_size: u64,
    ) -> Result<(), VmError> {
        let mut flags = 0;
        if region.flags().contains(MemoryFlags::READ_ONLY) {
            flags |= KVM_MEM_READONLY;
        }
        if region.flags().contains(MemoryFlags::LOG_DIRTY) {
            flags |= KVM_MEM_LOG_DIRTY_PAGES;
        }
        let raw = kvm_userspace_memory_region {
            slot: slot.0,
            flags,
            guest_phys_addr: region.guest_addr().0,
            memory_size,
            userspace_addr: region.host_addr(),
        };
        // SAFETY: `userspace_addr` and `memory_size` describe a live mapping owned (through an
        // `Arc`) by `region`. When adding, the region goes into this VM's table right after and
        // stays there, mapped, until the slot is deleted (memory_size 0) by `remove_memory_region`;
        // vCPUs keep the table alive, so KVM never holds a slot whose mapping was unmapped.
        unsafe { self.shared.fd.set_user_memory_region(raw) }.map_err(|err| VmError::MapRegion {
            op: "KVM_SET_USER_MEMORY_REGION",
            slot,
            range: region.range(),
            source: os_error(err),
        })
    }
}

impl Vm for KvmVm {
    fn add_memory_region(&self, region: MemoryRegion) -> Result<MemorySlot, VmError> {
        if region.flags().contains(MemoryFlags::READ_ONLY)
            && !self.shared.capabilities.read_only_memory
        {
            return Err(VmError::RegionUnsupported {
                range: region.range(),
                feature: "read-only memory (KVM_CAP_READONLY_MEM)",
            });
        }
        let mut table = self.shared.regions();
        let slot = table.reserve(&region)?;
        self.set_slot(slot, &region, region.size())?;
        table.commit(slot, region);
        Ok(slot)
    }

    fn remove_memory_region(&self, slot: MemorySlot) -> Result<MemoryRegion, VmError> {
        let mut table = self.shared.regions();
        // Deleting a slot is KVM_SET_USER_MEMORY_REGION with size 0.
        self.set_slot(slot, table.get(slot)?, 0)?;
        Ok(table.remove(slot)?)
    }

    fn memory(&self) -> GuestMemoryMmap {
        self.shared.regions().memory()
    }

    fn memory_layout(&self) -> Vec<(MemorySlot, GuestRange, MemoryFlags)> {
        self.shared
            .regions()
            .iter()
            .map(|(slot, region)| (slot, region.range(), region.flags()))
            .collect()
    }

    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, VmError> {
        Ok(Box::new(self.create_kvm_vcpu(id)?))
    }

    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), VmError> {
        self.irq_line(gsi, level)
    }

    fn signal_msi(&self, msi: MsiMessage) -> Result<(), VmError> {
        self.msi(msi)
    }

    fn set_gsi_routing(&self, routes: &[IrqRoute]) -> Result<(), VmError> {
        self.gsi_routing(routes)
    }

    fn register_irqfd(
        &self,
        fd: &EventFd,
        gsi: u32,
        resample: Option<&EventFd>,
    ) -> Result<(), VmError> {
        self.irqfd(fd, gsi, resample)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.irqfd_remove(fd, gsi)
    }

    fn register_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), VmError> {
        self.ioeventfd(fd, addr, datamatch, true)
    }

    fn unregister_ioeventfd(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: DataMatch,
    ) -> Result<(), VmError> {
        self.ioeventfd(fd, addr, datamatch, false)
    }

    fn dirty_log_mode(&self) -> DirtyLogMode {
        match self.shared.dirty_mode {
            Mode::Bitmap | Mode::BitmapManualClear => DirtyLogMode::Bitmap,
            Mode::Ring { entries } => DirtyLogMode::Ring { entries },
        }
    }

    fn harvest_dirty_log(&self) -> Result<DirtyLog, VmError> {
        let table = self.shared.regions();
        match self.shared.dirty_mode {
            Mode::Bitmap | Mode::BitmapManualClear => self.harvest_bitmaps(&table),
            Mode::Ring { .. } => self.harvest_rings(&table),
        }
    }

    fn irqchip_state(&self) -> Result<IrqchipState, VmError> {
        self.irqchip_get()
    }

    fn set_irqchip_state(&self, state: &IrqchipState) -> Result<(), VmError> {
        self.irqchip_set(state)
    }

    fn pit_state(&self) -> Result<PitState, VmError> {
        self.pit_get()
    }

    fn set_pit_state(&self, state: &PitState) -> Result<(), VmError> {
        self.pit_set(state)
    }

    fn set_pit_reinject(&self, reinject: bool) -> Result<(), VmError> {
        if !self.shared.config.pit {
            return Err(VmError::NoPit {
                op: "KVM_REINJECT_CONTROL",
            });
        }
        super::platform::reinject_control(&self.shared.fd, reinject).map_err(|err| VmError::Os {
            op: "KVM_REINJECT_CONTROL",
            source: os_error(err),
        })
    }

    // Every port access reaches the VMM as an exit on KVM: nothing to claim.
    fn claim_pci_config(&self, _functions: crate::pci::PciFunctions) -> Result<(), VmError> {
        Ok(())
    }

    fn release_pci_config(&self, _functions: crate::pci::PciFunctions) -> Result<(), VmError> {
        Ok(())
    }

    fn clock(&self) -> Result<ClockState, VmError> {
        let raw = self.shared.fd.get_clock().map_err(|err| VmError::Os {
            op: "KVM_GET_CLOCK",
            source: os_error(err),
        })?;
        Ok(ClockState {
            ns: raw.clock,
            stable: raw.flags & KVM_CLOCK_TSC_STABLE != 0,
        })
    }

    fn set_clock(&self, clock: &ClockState) -> Result<(), VmError> {
        let raw = kvm_clock_data {
            clock: clock.ns,
            ..Default::default()
        };
        self.shared.fd.set_clock(&raw).map_err(|err| VmError::Os {
            op: "KVM_SET_CLOCK",
            source: os_error(err),
        })
    }
}

/// Locks a mutex whose data stays consistent across panics (it is only ever replaced whole).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
