//! Returning a used VM to its template's state, or saying why it cannot be.

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::Msr;
use crate::hypervisor::{Hypervisor, VmConfig};
use crate::memory::{self, GuestRange, MemoryFlags, MemorySlot};
use crate::snapshot::{self, Features, VcpuState, VmState};
use crate::vcpu::{Vcpu, VcpuError};
use crate::vm::Vm;

use super::error::PoolError;
use super::template::VmTemplate;

/// The state of a VM right after its template built it, read once from the pool's first VM;
/// every reset loads it again.
pub(super) struct Baseline {
    layout: Vec<(MemorySlot, GuestRange, MemoryFlags)>,
    vcpus: Vec<VcpuBaseline>,
    vm: VmState,
}

/// One vCPU's baseline.
struct VcpuBaseline {
    state: VcpuState,
    /// The MSRs of `state` that the hypervisor lets a VMM write, written back in one call.
    msrs: Vec<Msr>,
}

impl Baseline {
    /// Reads the state of a VM its template just built: every MSR the hypervisor lists and
    /// the vCPU can read, the FPU/XSAVE state, pending events, the LAPIC and the VM's
    /// in-kernel devices and clock, whatever the VM has.
    pub(super) fn capture(
        hypervisor: &dyn Hypervisor,
        config: &VmConfig,
        vm: &dyn Vm,
        vcpus: &[Box<dyn Vcpu>],
    ) -> Result<Self, PoolError> {
        let features = Features::for_vm(config, hypervisor.capabilities());
        let msrs = match vcpus.first() {
            Some(vcpu) => snapshot::readable_msrs(vcpu.as_ref(), &hypervisor.msr_index_list()),
            None => Vec::new(),
        };
        let mut baselines = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let state = snapshot::save_vcpu(vcpu.as_ref(), &msrs, features)?;
            baselines.push(VcpuBaseline {
                msrs: writable_msrs(vcpu.as_ref(), &state.msrs)?,
                state,
            });
        }
        Ok(Baseline {
            layout: vm.memory_layout(),
            vcpus: baselines,
            vm: snapshot::save_vm(vm, features)?,
        })
    }

    /// Brings a returned VM back to the template's state: its memory to zeros (or, for a
    /// snapshot template, to the memory file's contents) and then the template's bytes, every
    /// vCPU's state and the VM's to the baseline. An error means the VM must not be reused.
    pub(super) fn reset(
        &self,
        template: &VmTemplate,
        vm: &dyn Vm,
        vcpus: &[Box<dyn Vcpu>],
    ) -> Result<(), PoolError> {
        let found: Vec<u32> = vcpus.iter().map(|vcpu| vcpu.id()).collect();
        let expected: Vec<u32> = self.vcpus.iter().map(|vcpu| vcpu.state.id).collect();
        if found != expected {
            return Err(PoolError::VcpusChanged { expected, found });
        }
        if vm.memory_layout() != self.layout {
            return Err(PoolError::LayoutChanged);
        }
        // An exit left pending (a port read, say) would otherwise complete into the restored
        // registers on the next guest's first run.
        for vcpu in vcpus {
            vcpu.complete_pending_io()?;
        }
        let memory = vm.memory();
        for region in memory.iter() {
            let guest_addr = region.start_addr().0;
            match memory::discard_private(region) {
                Ok(true) => {}
                Ok(false) => return Err(PoolError::NotResettable { guest_addr }),
                Err(source) => return Err(PoolError::Discard { guest_addr, source }),
            }
        }
        if self
            .layout
            .iter()
            .any(|(_, _, flags)| flags.contains(MemoryFlags::LOG_DIRTY))
        {
            // The last guest's writes must not show up in the next guest's first harvest.
            vm.harvest_dirty_log()?;
            for region in memory.iter() {
                // The whole mapping's bitmap, not a GuestMemoryRegion slice of it.
                let mapping: &vm_memory::MmapRegion<memory::DirtyBitmap> = region;
                if let Some(bitmap) = mapping.bitmap() {
                    bitmap.reset();
                }
            }
        }
        for (vcpu, baseline) in vcpus.iter().zip(&self.vcpus) {
            baseline.load(vcpu.as_ref())?;
        }
        snapshot::restore_vm(vm, &self.vm)?;
        template.initialize(vm, vcpus)
    }
}

impl VcpuBaseline {
    /// Loads the baseline into `vcpu`, in the order of [`snapshot::restore_vcpu`], with the
    /// MSRs in one call.
    fn load(&self, vcpu: &dyn Vcpu) -> Result<(), VcpuError> {
        let state = &self.state;
        // Only the VMM can change a CPUID; KVM refuses to once the vCPU has run, so a
        // difference fails here and the VM is replaced.
        if vcpu.cpuid()? != state.cpuid {
            vcpu.set_cpuid(&state.cpuid)?;
        }
        vcpu.set_mp_state(state.mp_state)?;
        vcpu.set_sregs(&state.sregs)?;
        vcpu.set_regs(&state.regs)?;
        // Loading an XSAVE image whose header marks x87/SSE as in their initial state leaves
        // the legacy area's old bytes in KVM's buffer, where KVM_GET_FPU still reads them
        // (the guest sees the initial state): so the legacy FPU state is always written.
        vcpu.set_fpu(&state.fpu)?;
        if let Some(xsave) = &state.xsave {
            vcpu.set_xcrs(&state.xcrs)?;
            vcpu.set_xsave(xsave)?;
        }
        if let Some(lapic) = &state.lapic {
            vcpu.set_lapic(lapic)?;
        }
        vcpu.set_msrs(&self.msrs)?;
        vcpu.set_vcpu_events(&state.events)
    }
}

/// The MSRs of `saved` that `vcpu` takes back. A hypervisor lists some that a VMM may read
/// but not write in every configuration; one refused with the value 0 is left out (a guest
/// cannot make it anything else either), any other refusal is an error: that MSR could not
/// be reset.
fn writable_msrs(vcpu: &dyn Vcpu, saved: &[Msr]) -> Result<Vec<Msr>, VcpuError> {
    let mut writable = Vec::with_capacity(saved.len());
    for msr in saved {
        match vcpu.set_msrs(std::slice::from_ref(msr)) {
            Ok(()) => writable.push(*msr),
            Err(VcpuError::InvalidState { .. }) if msr.data == 0 => {}
            Err(err) => return Err(err),
        }
    }
    Ok(writable)
}
