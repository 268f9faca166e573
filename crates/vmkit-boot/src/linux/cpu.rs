//! What each vCPU needs before a Linux kernel runs on it: CPUID that tells the guest who it is,
//! that it runs on a hypervisor and that its local APIC has the TSC-deadline timer, its
//! machine-check banks, boot MSRs, the local APIC's LINT pins, and the bootstrap processor's
//! entry registers.

use vm_memory::GuestMemoryBackend;

use super::layout::{PVH_START_INFO, ZERO_PAGE};
use super::load::{KernelEntry, LoadedKernel};
use super::LinuxBootError;
use crate::entry as boot;
use vmkit::arch::x86_64::{CpuidEntry, LapicState, Msr};
use vmkit::{Capabilities, Vcpu};

/// CPUID.1:ECX bit 31: a hypervisor is present. `KVM_GET_SUPPORTED_CPUID` leaves it clear;
/// without it Linux calibrates the TSC against the PIT and can hang doing so.
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:ECX bit 24: the local APIC's TSC-deadline timer mode. KVM's supported CPUID leaves
/// it out even when KVM emulates it (`KVM_CAP_TSC_DEADLINE_TIMER`); without it Linux uses the
/// APIC timer's one-shot mode, which costs it a division per timer and calibration at boot.
pub const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// How many machine-check banks each vCPU gets when the hypervisor allows that many (QEMU's
/// default too); fewer when it allows fewer.
pub const DEFAULT_MCE_BANKS: u8 = 10;
/// CPUID.1:EDX bit 28: more than one logical processor per package may be reported.
const CPUID_1_EDX_HTT: u32 = 1 << 28;
/// The hypervisor leaves' base, where KVM's signature lives.
const HYPERVISOR_LEAF: u32 = 0x4000_0000;
/// KVM's paravirtual features leaf.
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
/// "KVMKVMKVM\0\0\0" in EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE: u32 = vmkit::arch::x86_64::msr_index::MISC_ENABLE;
/// MTRRs enabled, default memory type write-back: all RAM is cacheable without the guest
/// having to program variable ranges.
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;
/// IA32_MISC_ENABLE bit 0: fast string operations.
const MISC_ENABLE_FAST_STRINGS: u64 = 1;

/// LVT delivery modes (bits 8–10).
const LVT_DELIVERY_EXTINT: u32 = 0b111 << 8;
const LVT_DELIVERY_NMI: u32 = 0b100 << 8;
const LVT_DELIVERY_MASK: u32 = 0b111 << 8;

/// The CPUID a Linux guest should see on vCPU `index` of `vcpus`, from what the hypervisor
/// supports: the APIC ID in leaves 1, 0xb and 0x1f, the logical processor count, the
/// hypervisor bit, the TSC-deadline timer bit when `tsc_deadline` is set (and cleared when
/// not), and KVM's signature and paravirtual-features leaves (added when the supported list
/// lacks them, with no feature bits).
pub fn guest_cpuid(
    supported: &[CpuidEntry],
    index: u32,
    vcpus: u32,
    tsc_deadline: bool,
) -> Vec<CpuidEntry> {
    let mut entries = supported.to_vec();
    let apic_id = index & 0xff;
    for entry in &mut entries {
        match entry.function {
            1 => {
                entry.ecx |= CPUID_1_ECX_HYPERVISOR;
                if tsc_deadline {
                    entry.ecx |= CPUID_1_ECX_TSC_DEADLINE;
                } else {
                    entry.ecx &= !CPUID_1_ECX_TSC_DEADLINE;
                }
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((vcpus & 0xff) << 16);
                if vcpus > 1 {
                    entry.edx |= CPUID_1_EDX_HTT;
                }
            }
            // The x2APIC ID of this logical processor, in every sub-leaf.
            0xb | 0x1f => entry.edx = index,
            HYPERVISOR_LEAF => {
                entry.eax = entry.eax.max(KVM_FEATURES_LEAF);
            }
            _ => {}
        }
    }
    if !entries.iter().any(|e| e.function == HYPERVISOR_LEAF) {
        entries.push(CpuidEntry {
            function: HYPERVISOR_LEAF,
            eax: KVM_FEATURES_LEAF,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..CpuidEntry::default()
        });
    }
    if !entries.iter().any(|e| e.function == KVM_FEATURES_LEAF) {
        entries.push(CpuidEntry {
            function: KVM_FEATURES_LEAF,
            ..CpuidEntry::default()
        });
    }
    entries
}

/// The MSRs a kernel expects firmware to have set.
pub fn boot_msrs() -> [Msr; 2] {
    [
        Msr {
            index: vmkit::arch::x86_64::msr_index::MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRINGS,
        },
        Msr {
            index: MSR_MTRR_DEF_TYPE,
            data: MTRR_ENABLE_WRITE_BACK,
        },
    ]
}

/// Wires the local APIC's LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a PC BIOS does.
/// Needs an in-kernel irqchip.
pub fn configure_lapic_lints(vcpu: &dyn Vcpu) -> Result<(), LinuxBootError> {
    let mut lapic: LapicState = vcpu.lapic()?;
    for (offset, mode) in [
        (LapicState::LVT_LINT0, LVT_DELIVERY_EXTINT),
        (LapicState::LVT_LINT1, LVT_DELIVERY_NMI),
    ] {
        let value = lapic.register(offset).unwrap_or(0);
        lapic.set_register(offset, (value & !LVT_DELIVERY_MASK) | mode);
    }
    vcpu.set_lapic(&lapic)?;
    Ok(())
}

/// The machine-check banks a vCPU gets on a hypervisor with `caps`: [`DEFAULT_MCE_BANKS`],
/// clamped to [`Capabilities::mce_banks`]; `None` when the hypervisor has none.
pub fn mce_banks(caps: &Capabilities) -> Option<u8> {
    let max = u8::try_from(caps.mce_banks).unwrap_or(u8::MAX);
    (max > 0).then(|| DEFAULT_MCE_BANKS.min(max))
}

/// Prepares vCPU `index` of `vcpus` to run `kernel` on a hypervisor with `caps`: CPUID from
/// `caps.cpuid` (see [`guest_cpuid`]; the TSC-deadline timer is offered when `irqchip` is set
/// and [`Capabilities::tsc_deadline_timer`] is true), machine-check banks ([`mce_banks`]), the
/// boot MSRs, the LINT pins when `irqchip` is set, and, for the bootstrap processor (index
/// 0), the entry registers of the kernel's boot protocol.
///
/// Application processors are left waiting for the INIT and startup IPIs that the guest
/// sends through the in-kernel local APIC, so SMP needs `irqchip`.
pub fn configure_vcpu<M: GuestMemoryBackend>(
    vcpu: &dyn Vcpu,
    memory: &M,
    kernel: &LoadedKernel,
    (index, vcpus): (u32, u32),
    caps: &Capabilities,
    irqchip: bool,
) -> Result<(), LinuxBootError> {
    // The TSC-deadline timer is part of the local APIC, which only the in-kernel irqchip has.
    let tsc_deadline = irqchip && caps.tsc_deadline_timer;
    // The APIC ID the hypervisor gives this vCPU (Xen's CPUID says so whatever vmkit sets).
    let apic_index = index.saturating_mul(caps.apic_id_stride.max(1));
    vcpu.set_cpuid(&guest_cpuid(&caps.cpuid, apic_index, vcpus, tsc_deadline))?;
    if let Some(banks) = mce_banks(caps) {
        vcpu.setup_mce(banks)?;
    }
    // IA32_MISC_ENABLE only where the hypervisor lets a VMM set it (Xen answers it from its
    // own CPU policy): its fast-strings bit is a hint, not something Linux needs.
    let msrs: Vec<Msr> = boot_msrs()
        .into_iter()
        .filter(|m| m.index != MISC_ENABLE || caps.msrs.contains(&MISC_ENABLE))
        .collect();
    vcpu.set_msrs(&msrs)?;
    if irqchip {
        configure_lapic_lints(vcpu)?;
    }
    if index != 0 {
        return Ok(());
    }
    match kernel.entry {
        KernelEntry::Pvh(entry) => {
            let entry = u32::try_from(entry.0)
                .map_err(|_| LinuxBootError::EntryAbove4G { entry: entry.0 })?;
            boot::configure_pvh(vcpu, memory, entry, PVH_START_INFO as u32)?;
        }
        KernelEntry::Linux64(entry) => {
            boot::configure_long_mode(vcpu, memory, entry.0)?;
            let mut regs = vcpu.regs()?;
            regs.rsi = ZERO_PAGE;
            vcpu.set_regs(&regs)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(entries: &[CpuidEntry], function: u32) -> CpuidEntry {
        *entries.iter().find(|e| e.function == function).unwrap()
    }

    #[test]
    fn cpuid_reports_the_hypervisor_and_the_apic_id() {
        let supported = [
            CpuidEntry {
                function: 1,
                ebx: 0xff00_0800,
                ecx: 0x1,
                ..Default::default()
            },
            CpuidEntry {
                function: 0xb,
                index: 1,
                edx: 7,
                ..Default::default()
            },
        ];
        let entries = guest_cpuid(&supported, 3, 4, false);
        let one = leaf(&entries, 1);
        assert_eq!(one.ecx, 0x1 | CPUID_1_ECX_HYPERVISOR);
        assert_eq!(one.ebx, 0x0304_0800);
        assert_ne!(one.edx & CPUID_1_EDX_HTT, 0);
        assert_eq!(leaf(&entries, 0xb).edx, 3);
        let signature = leaf(&entries, HYPERVISOR_LEAF);
        assert_eq!([signature.ebx, signature.ecx, signature.edx], KVM_SIGNATURE);
        assert_eq!(signature.eax, KVM_FEATURES_LEAF);
        assert_eq!(leaf(&entries, KVM_FEATURES_LEAF).eax, 0);
    }

    #[test]
    fn cpuid_keeps_the_hypervisors_own_kvm_leaves() {
        let supported = [
            CpuidEntry {
                function: HYPERVISOR_LEAF,
                eax: 0x4000_0001,
                ebx: KVM_SIGNATURE[0],
                ..Default::default()
            },
            CpuidEntry {
                function: KVM_FEATURES_LEAF,
                eax: 0x1234,
                ..Default::default()
            },
        ];
        let entries = guest_cpuid(&supported, 0, 1, false);
        assert_eq!(entries.len(), 2);
        assert_eq!(leaf(&entries, KVM_FEATURES_LEAF).eax, 0x1234);
    }

    #[test]
    fn the_tsc_deadline_bit_follows_the_capability() {
        let supported = [CpuidEntry {
            function: 1,
            ecx: 0x1 | CPUID_1_ECX_TSC_DEADLINE,
            ..Default::default()
        }];
        let with = leaf(&guest_cpuid(&supported, 0, 1, true), 1);
        assert_eq!(
            with.ecx,
            0x1 | CPUID_1_ECX_TSC_DEADLINE | CPUID_1_ECX_HYPERVISOR
        );
        let without = leaf(&guest_cpuid(&supported, 0, 1, false), 1);
        assert_eq!(without.ecx, 0x1 | CPUID_1_ECX_HYPERVISOR);
        // No leaf 1 in the list: nothing to set, nothing added.
        let none = guest_cpuid(&[], 0, 1, true);
        assert!(none.iter().all(|e| e.function != 1));
    }

    #[test]
    fn mce_banks_default_to_ten_within_the_hosts_limit() {
        let mut caps = Capabilities::default();
        assert_eq!(mce_banks(&caps), None);
        for (host, expected) in [(1, 1), (9, 9), (10, 10), (32, 10), (1000, 10)] {
            caps.mce_banks = host;
            assert_eq!(mce_banks(&caps), Some(expected), "host limit {host}");
        }
    }
}
