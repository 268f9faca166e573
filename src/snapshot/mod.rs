//! Capturing and restoring the state of a VM's vCPUs and in-hypervisor devices as
//! backend-neutral values, the pieces a snapshot is made of.
//!
//! [`VcpuState`] is everything about one vCPU; [`VmState`] the VM-wide state the hypervisor
//! keeps (clock, interrupt controllers, PIT). Both are serde values built from vmkit's own
//! types, never a dump of one backend's structures, so a snapshot taken on one host (or
//! backend) can be checked and restored on another.
//!
//! Capture only while every vCPU is outside `run()` (see [`crate::runner`]).

mod capabilities;
mod check;
mod file;
mod portable;

/// The snapshot file formats, re-exported so that a VMM writes its device sections with the
/// same version vmkit uses.
pub use vmkit_snapshot as format;

pub use capabilities::{CapabilitiesError, CapabilitiesSection};
pub use check::{check, Checked, Mismatch};
pub use file::{
    restore, save, DiffTracker, MemoryRestore, Restored, SnapshotError, BASE, CAPABILITIES,
    CAPABILITIES_VERSION, CONFIG, MAX_CHAIN, MEMORY_FILE, STATE_FILE, VCPU_VERSION, VM_STATE,
};
pub use portable::PORTABLE_MSRS;

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::{
    CpuidEntry, Fpu, IrqchipState, LapicState, MpState, Msr, PitState, Regs, SpecialRegs,
    VcpuEvents, Xcr, Xsave,
};
use crate::hypervisor::{Capabilities, VmConfig};
use crate::vcpu::{Vcpu, VcpuError};
use crate::vm::{ClockState, Vm, VmError};

/// Everything about one vCPU that a snapshot carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's id.
    pub id: u32,
    /// The CPUID the guest sees.
    pub cpuid: Vec<CpuidEntry>,
    /// Multiprocessing state.
    pub mp_state: MpState,
    /// General-purpose registers.
    pub regs: Regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: SpecialRegs,
    /// x87/SSE state (also inside `xsave` when that is present).
    pub fpu: Fpu,
    /// The XSAVE area, when the hypervisor exposes it.
    pub xsave: Option<Xsave>,
    /// Extended control registers, when the hypervisor exposes them.
    pub xcrs: Vec<Xcr>,
    /// The local APIC, when the VM has an in-kernel irqchip.
    pub lapic: Option<LapicState>,
    /// Every MSR that could be read.
    pub msrs: Vec<Msr>,
    /// Pending exceptions, interrupts, NMIs and SMM state.
    pub events: VcpuEvents,
    /// The machine-check banks [`Vcpu::setup_mce`] gave the vCPU (`None`: it was never
    /// called, or the backend has no machine-check emulation). No MSR write can set this
    /// (MCG_CAP is read-only), and KVM refuses a saved MCG_CTL on a vCPU without it, so
    /// [`restore_vcpu`] calls `setup_mce` with it before the MSRs.
    pub mce_banks: Option<u8>,
}

/// The MCG_CAP MSR: machine-check bank count in bits 0–7, MCG_CTL present in bit 8.
const MSR_MCG_CAP: u32 = 0x179;
/// MCG_CAP's MCG_CTL_P bit, which [`Vcpu::setup_mce`] always sets and a fresh KVM vCPU lacks.
const MCG_CTL_P: u64 = 1 << 8;

/// The bank count [`Vcpu::setup_mce`] gave `vcpu`, read back from MCG_CAP: a vCPU it was
/// never called on (MCG_CTL_P clear, or MCG_CAP unreadable, as on a backend without
/// machine-check emulation) has none to restore.
fn mce_banks(vcpu: &dyn Vcpu) -> Option<u8> {
    let cap = vcpu.msrs(&[MSR_MCG_CAP]).ok()?.first()?.data;
    (cap & MCG_CTL_P != 0)
        .then(|| u8::try_from(cap & 0xff).ok())
        .flatten()
        .filter(|&banks| banks != 0)
}

/// The VM-wide state a hypervisor keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmState {
    /// The VM clock; `None` on a backend without one (Xen, where the guest's time is each
    /// vCPU's TSC, carried in its MSRs).
    pub clock: Option<ClockState>,
    /// The in-kernel PICs and IOAPIC, when the VM has them.
    pub irqchip: Option<IrqchipState>,
    /// The in-kernel PIT, when the VM has one.
    pub pit: Option<PitState>,
}

/// Which optional state a VM has, to capture exactly that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// The VM has an in-kernel irqchip (and so LAPICs).
    pub irqchip: bool,
    /// The VM has an in-kernel PIT.
    pub pit: bool,
    /// The hypervisor exposes XSAVE and XCRs.
    pub xsave: bool,
    /// The hypervisor has a VM clock.
    pub clock: bool,
}

impl Features {
    /// The optional state of a VM created with `config` on a hypervisor with `capabilities`.
    ///
    /// ```
    /// use vmkit::snapshot::Features;
    /// # fn f(hypervisor: &dyn vmkit::Hypervisor) {
    /// let config = vmkit::VmConfig::default().irqchip(true);
    /// let features = Features::for_vm(&config, hypervisor.capabilities());
    /// assert!(features.irqchip);
    /// # }
    /// ```
    pub fn for_vm(config: &VmConfig, capabilities: &Capabilities) -> Features {
        Features {
            irqchip: config.irqchip,
            pit: config.pit,
            xsave: capabilities.xsave && capabilities.xcrs,
            clock: capabilities.clock,
        }
    }
}

/// The MSRs of `candidates` that `vcpu` can read: a hypervisor lists some that are only
/// readable with particular CPUID or configuration.
pub fn readable_msrs(vcpu: &dyn Vcpu, candidates: &[u32]) -> Vec<u32> {
    candidates
        .iter()
        .copied()
        .filter(|&index| vcpu.msrs(&[index]).is_ok())
        .collect()
}

/// Captures `vcpu`'s state, after completing the access its last exit left pending (see
/// [`Vcpu::complete_pending_io`]). `msrs` are the MSRs to save (see [`readable_msrs`]).
pub fn save_vcpu(
    vcpu: &dyn Vcpu,
    msrs: &[u32],
    features: Features,
) -> Result<VcpuState, VcpuError> {
    // An access the last exit left pending would otherwise be replayed after restore.
    vcpu.complete_pending_io()?;
    // The order follows what KVM needs on restore, in reverse: events last, since MSR and
    // register writes can change them.
    let mp_state = vcpu.mp_state()?;
    let regs = vcpu.regs()?;
    let sregs = vcpu.sregs()?;
    let fpu = vcpu.fpu()?;
    let (xsave, xcrs) = if features.xsave {
        (Some(vcpu.xsave()?), vcpu.xcrs()?)
    } else {
        (None, Vec::new())
    };
    let lapic = features.irqchip.then(|| vcpu.lapic()).transpose()?;
    let msrs = vcpu.msrs(msrs)?;
    let events = vcpu.vcpu_events()?;
    Ok(VcpuState {
        id: vcpu.id(),
        cpuid: vcpu.cpuid()?,
        mp_state,
        regs,
        sregs,
        fpu,
        xsave,
        xcrs,
        lapic,
        msrs,
        events,
        mce_banks: mce_banks(vcpu),
    })
}

/// Loads `state` into `vcpu`, a fresh vCPU with the same id in a VM built like the original,
/// or the same vCPU later (rolling it back). Machine-check banks the state records are set up
/// first ([`Vcpu::setup_mce`]), as the saved MCG_CTL needs them.
///
/// A vCPU that has run keeps its CPUID: KVM refuses `KVM_SET_CPUID2` after the first
/// `KVM_RUN` unless the table is unchanged, so the saved CPUID is set only where it differs
/// from the vCPU's, and a difference on a vCPU that has run is that refusal.
pub fn restore_vcpu(vcpu: &dyn Vcpu, state: &VcpuState) -> Result<(), VcpuError> {
    if vcpu.id() != state.id {
        return Err(VcpuError::InvalidState {
            vcpu: vcpu.id(),
            what: "saved vCPU state",
            reason: format!("it belongs to vCPU {}", state.id),
        });
    }
    if vcpu.cpuid()? != state.cpuid {
        vcpu.set_cpuid(&state.cpuid)?;
    }
    // After the CPUID (KVM wants it first), before the MSRs (MCG_CTL needs MCG_CTL_P).
    if let Some(banks) = state.mce_banks {
        vcpu.setup_mce(banks)?;
    }
    vcpu.set_mp_state(state.mp_state)?;
    vcpu.set_sregs(&state.sregs)?;
    vcpu.set_regs(&state.regs)?;
    // With XSAVE, it carries the FPU state too (and more); without, the legacy FPU does.
    match &state.xsave {
        Some(xsave) => {
            vcpu.set_xcrs(&state.xcrs)?;
            vcpu.set_xsave(xsave)?;
        }
        None => vcpu.set_fpu(&state.fpu)?,
    }
    if let Some(lapic) = &state.lapic {
        vcpu.set_lapic(lapic)?;
    }
    restore_msrs(vcpu, &state.msrs)?;
    vcpu.set_vcpu_events(&state.events)?;
    Ok(())
}

/// Writes saved MSRs one by one. A hypervisor may list MSRs that it lets a VM read but not
/// write in every configuration (KVM's async-page-fault interrupt MSR needs an in-kernel
/// LAPIC; Xen's APIC base is read-only); one refused with a value the vCPU already holds
/// (its reset value, 0, or the value read back) is skipped. Any other refusal is an error
/// naming the MSR.
fn restore_msrs(vcpu: &dyn Vcpu, msrs: &[Msr]) -> Result<(), VcpuError> {
    for msr in msrs {
        match vcpu.set_msrs(std::slice::from_ref(msr)) {
            Err(VcpuError::InvalidState { .. }) if msr.data == 0 => {}
            Err(err @ VcpuError::InvalidState { .. }) => {
                let holds = vcpu
                    .msrs(&[msr.index])
                    .ok()
                    .and_then(|m| m.first().copied());
                if holds != Some(*msr) {
                    return Err(err);
                }
            }
            result => result?,
        }
    }
    Ok(())
}

/// Captures the VM-wide state.
pub fn save_vm(vm: &dyn Vm, features: Features) -> Result<VmState, VmError> {
    Ok(VmState {
        clock: features.clock.then(|| vm.clock()).transpose()?,
        irqchip: features.irqchip.then(|| vm.irqchip_state()).transpose()?,
        pit: features.pit.then(|| vm.pit_state()).transpose()?,
    })
}

/// Loads VM-wide state into a fresh VM built like the original.
pub fn restore_vm(vm: &dyn Vm, state: &VmState) -> Result<(), VmError> {
    if let Some(irqchip) = &state.irqchip {
        vm.set_irqchip_state(irqchip)?;
    }
    if let Some(pit) = &state.pit {
        vm.set_pit_state(pit)?;
    }
    match &state.clock {
        Some(clock) => vm.set_clock(clock),
        None => Ok(()),
    }
}

/// [`VmState`] as the first version of its section held it, with a clock always.
#[derive(Deserialize)]
struct VmStateV1 {
    clock: ClockState,
    irqchip: Option<IrqchipState>,
    pit: Option<PitState>,
}

/// Version of the [`VM_STATE`] section (2: the clock is optional).
pub(crate) const VM_STATE_VERSION: u16 = 2;

/// Decodes a [`VM_STATE`] section of version 1 or 2.
pub(crate) fn decode_vm_state(section: &format::Section) -> Result<VmState, format::StateError> {
    if section.version() == 1 {
        let v1: VmStateV1 = section.decode(1..=1)?;
        return Ok(VmState {
            clock: Some(v1.clock),
            irqchip: v1.irqchip,
            pit: v1.pit,
        });
    }
    section.decode(VM_STATE_VERSION..=VM_STATE_VERSION)
}

/// Reads the [`VM_STATE`] section of `snapshot` (version 1 or 2).
pub(crate) fn read_vm_state(snapshot: &format::Snapshot) -> Result<VmState, format::StateError> {
    let section = snapshot
        .get(VM_STATE, 0)
        .ok_or(format::StateError::MissingSection {
            tag: VM_STATE,
            index: 0,
        })?;
    decode_vm_state(section)
}
