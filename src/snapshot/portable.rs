//! Restoring a snapshot on another backend than the one that took it (KVM ↔ Xen).
//!
//! The state is backend-neutral already; what differs is what each backend can hold. The
//! writing host's capabilities say what *it* offered, most of which the VM never used, so a
//! snapshot from another backend is checked against what the VM used instead: its
//! configuration, the state it carries (pending events, the clock, XSAVE, interrupt
//! controllers), its vCPUs' CPUID feature bits and the MSRs holding a value. Everything the
//! target lacks is listed, before anything is created, by the same
//! [`Capabilities::missing_in`] a same-backend restore uses.

use std::collections::{BTreeMap, BTreeSet};

use super::file::RegionLayout;
use super::{VcpuState, VmState};
use crate::arch::x86_64::CpuidEntry;
use crate::hypervisor::{Capabilities, IrqchipKind, VmConfig};
use crate::memory::MemoryFlags;

/// The CPUID leaves a hypervisor describes itself in (KVM's `KVMKVMKVM`, Xen's
/// `XenVMMXenVMM`): the target offers its own, so the source's are not carried over.
const HYPERVISOR_LEAVES: std::ops::RangeInclusive<u32> = 0x4000_0000..=0x4fff_ffff;

/// `IA32_TSC`.
const MSR_TSC: u32 = 0x10;

/// The MSRs that [`SpecialRegs`](crate::arch::x86_64::SpecialRegs) carries as well: `EFER`
/// and `IA32_APIC_BASE`.
const IN_SPECIAL_REGISTERS: [u32; 2] = [0xc000_0080, 0x1b];

/// CPUID.1:ECX bit 26, XSAVE.
const CPUID_XSAVE: u32 = 1 << 26;

/// The MSRs that every vmkit backend saves and restores: the architectural ones a 64-bit
/// guest's kernel sets up (system-call entry points, segment bases, SYSENTER), the TSC and
/// its auxiliary value, EFER and the APIC base. A VMM that means its snapshot to be restored
/// on another backend saves these ([`readable_msrs`](super::readable_msrs) of this list)
/// rather than everything its hypervisor lists; a backend-specific MSR holding a value is
/// refused on a target without it.
pub const PORTABLE_MSRS: [u32; 14] = [
    0xc000_0080, // EFER
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x10,        // TSC
    0xc000_0103, // TSC_AUX
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0x1b,        // APIC_BASE
];

/// Adapts state taken on another backend to `host`: the source hypervisor's own CPUID
/// leaves are dropped; the XSAVE area of a vCPU whose guest was never offered XSAVE is
/// dropped on a host that cannot hold one (the legacy FPU state, saved with it, is all the
/// guest used); the VM clock is dropped on a host without one (Xen) when every vCPU carries
/// its TSC, which is the guest's time there. Anything else that cannot cross stays, for
/// [`required`] to report.
pub(super) fn adapt(vm_state: &mut VmState, states: &mut [VcpuState], host: &Capabilities) {
    let carries_tsc = |s: &VcpuState| s.msrs.iter().any(|m| m.index == MSR_TSC);
    if !host.clock && states.iter().all(carries_tsc) {
        vm_state.clock = None;
    }
    for state in states {
        state
            .cpuid
            .retain(|e| !HYPERVISOR_LEAVES.contains(&e.function));
        let offered_xsave = leaf(&state.cpuid, 1, 0).is_some_and(|e| e.ecx & CPUID_XSAVE != 0);
        let host_holds_xsave = host.xsave && host.xcrs;
        if !(offered_xsave || host_holds_xsave) {
            state.xsave = None;
            state.xcrs.clear();
        }
    }
}

fn leaf(cpuid: &[CpuidEntry], function: u32, index: u32) -> Option<&CpuidEntry> {
    cpuid
        .iter()
        .find(|e| e.function == function && e.index == index)
}

/// What a VM uses, as capabilities a target must have: compared with the target's by
/// [`Capabilities::missing_in`].
pub(super) fn required(
    config: &VmConfig,
    vm_state: &VmState,
    vcpus: &[VcpuState],
    layout: &[RegionLayout],
) -> Capabilities {
    let mut caps = Capabilities {
        max_vcpus: config.max_vcpus,
        max_memory_slots: u32::try_from(layout.len()).unwrap_or(u32::MAX),
        irqchip: config.irqchip,
        irqchip_state: vm_state.irqchip.is_some(),
        split_irqchip: matches!(config.irqchip_kind, IrqchipKind::Split { .. }),
        pit: config.pit,
        dirty_ring_max_entries: config.dirty_ring.unwrap_or(0),
        clock: vm_state.clock.is_some(),
        // Restore writes them.
        vcpu_events: true,
        ..Capabilities::default()
    };
    let flags = |flag: MemoryFlags| {
        layout
            .iter()
            .any(|r| MemoryFlags::from_bits_truncate(r.flags).contains(flag))
    };
    caps.read_only_memory = flags(MemoryFlags::READ_ONLY);
    caps.dirty_log = flags(MemoryFlags::LOG_DIRTY);
    // Maps, not list searches: a state file's tables are hostile input of any length.
    let mut cpuid: BTreeMap<(u32, u32), CpuidEntry> = BTreeMap::new();
    let mut msrs = BTreeSet::new();
    for state in vcpus {
        caps.xsave |= state.xsave.is_some();
        caps.xcrs |= !state.xcrs.is_empty();
        caps.mce_banks = caps.mce_banks.max(state.mce_banks.map_or(0, u32::from));
        // Every vCPU's feature bits, merged leaf by leaf.
        for entry in &state.cpuid {
            cpuid
                .entry((entry.function, entry.index))
                .and_modify(|merged| {
                    merged.eax |= entry.eax;
                    merged.ebx |= entry.ebx;
                    merged.ecx |= entry.ecx;
                    merged.edx |= entry.edx;
                })
                .or_insert(*entry);
        }
        // An MSR at 0 is the fresh vCPU's value already: restore skips it where refused.
        // EFER and the APIC base are special registers too, which every backend restores
        // (KVM lists neither as an MSR).
        for msr in state
            .msrs
            .iter()
            .filter(|m| m.data != 0 && !IN_SPECIAL_REGISTERS.contains(&m.index))
        {
            msrs.insert(msr.index);
        }
    }
    caps.cpuid = cpuid.into_values().collect();
    caps.msrs = msrs.into_iter().collect();
    caps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::Msr;

    fn state(cpuid: Vec<CpuidEntry>, msrs: Vec<Msr>) -> VcpuState {
        VcpuState {
            id: 0,
            cpuid,
            mp_state: Default::default(),
            regs: Default::default(),
            sregs: Default::default(),
            fpu: Default::default(),
            xsave: Some(crate::arch::x86_64::Xsave {
                region: vec![0; 1024],
            }),
            xcrs: vec![Default::default()],
            lapic: None,
            msrs,
            events: Default::default(),
            mce_banks: None,
        }
    }

    fn entry(function: u32, ecx: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            ecx,
            ..Default::default()
        }
    }

    #[test]
    fn hypervisor_leaves_and_an_unused_xsave_area_do_not_cross() {
        let mut states = [state(
            vec![entry(1, 0), entry(0x4000_0000, 1), entry(0x4000_0001, 1)],
            Vec::new(),
        )];
        adapt(&mut vm_state(), &mut states, &Capabilities::default());
        assert_eq!(states[0].cpuid, [entry(1, 0)]);
        assert_eq!(states[0].xsave, None);
        assert!(states[0].xcrs.is_empty());
    }

    #[test]
    fn an_offered_xsave_is_kept_and_then_required() {
        let mut states = [state(vec![entry(1, CPUID_XSAVE)], Vec::new())];
        let mut vm_state = vm_state();
        adapt(&mut vm_state, &mut states, &Capabilities::default());
        assert!(states[0].xsave.is_some());
        // No TSC carried: the clock stays, and is required.
        assert!(vm_state.clock.is_some());
        let layout = [RegionLayout {
            guest_addr: 0,
            size: 4096,
            flags: 0,
        }];
        let required = required(&VmConfig::default(), &vm_state, &states, &layout);
        let missing: Vec<String> = required
            .missing_in(&Capabilities {
                max_vcpus: 1,
                max_memory_slots: 1,
                vcpu_events: true,
                cpuid: vec![entry(1, 0)],
                ..Default::default()
            })
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            missing.iter().any(|m| m.contains("XSAVE state")),
            "{missing:?}"
        );
        assert!(missing.iter().any(|m| m.contains("CPUID")), "{missing:?}");
        assert!(
            missing.iter().any(|m| m.contains("VM clock")),
            "{missing:?}"
        );
        assert_eq!(missing.len(), 4, "{missing:?}");
    }

    #[test]
    fn a_carried_tsc_stands_for_the_clock_on_a_host_without_one() {
        let tsc = Msr {
            index: MSR_TSC,
            data: 1 << 30,
        };
        let mut states = [state(Vec::new(), vec![tsc])];
        let mut vm_state = vm_state();
        adapt(&mut vm_state, &mut states, &Capabilities::default());
        assert_eq!(vm_state.clock, None);
        let mut vm_state = self::vm_state();
        let host = Capabilities {
            clock: true,
            ..Default::default()
        };
        adapt(&mut vm_state, &mut states, &host);
        assert!(vm_state.clock.is_some());
    }

    fn vm_state() -> VmState {
        VmState {
            clock: Some(Default::default()),
            irqchip: None,
            pit: None,
        }
    }

    #[test]
    fn only_msrs_holding_a_value_are_required() {
        let msrs = vec![
            Msr {
                index: 0x10,
                data: 5,
            },
            Msr {
                index: 0x277,
                data: 0,
            },
        ];
        let efer = Msr {
            index: 0xc000_0080,
            data: 0x500,
        };
        let states = [state(Vec::new(), [msrs, vec![efer]].concat())];
        let required = required(&VmConfig::default(), &vm_state(), &states, &[]);
        assert_eq!(required.msrs, [0x10]);
        assert!(required.clock && required.vcpu_events && !required.irqchip);
    }
}
