//! KVM VMs: memory slots and vCPU creation.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;

use super::{os_error, KvmVcpu};
use crate::hypervisor::{Capabilities, VmConfig};
use crate::memory::{GuestMemoryMmap, MemoryFlags, MemoryRegion, MemorySlot, RegionTable};
use crate::vcpu::Vcpu;
use crate::vm::{Vm, VmError};

/// What a VM and its vCPUs share. vCPUs hold it too, so guest memory stays mapped for as long
/// as any vCPU can run.
#[derive(Debug)]
pub(crate) struct VmShared {
    // Declared first so that the VM fd closes before the mappings in `regions` are unmapped.
    pub(crate) fd: VmFd,
    regions: Mutex<RegionTable>,
    pub(crate) config: VmConfig,
    pub(crate) capabilities: Arc<Capabilities>,
}

impl VmShared {
    fn regions(&self) -> MutexGuard<'_, RegionTable> {
        // The table is consistent at every unlock (it changes only after the ioctl succeeded),
        // so a panic elsewhere while holding the lock leaves nothing half done.
        self.regions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct KvmVm {
    shared: Arc<VmShared>,
}

impl KvmVm {
    pub(crate) fn new(fd: VmFd, config: VmConfig, capabilities: Arc<Capabilities>) -> Self {
        let regions = Mutex::new(RegionTable::new(capabilities.max_memory_slots));
        KvmVm {
            shared: Arc::new(VmShared {
                fd,
                regions,
                config,
                capabilities,
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
        Ok(KvmVcpu::new(fd, id, Arc::clone(&self.shared)))
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

    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, VmError> {
        Ok(Box::new(self.create_kvm_vcpu(id)?))
    }
}
