//! Loading a halted vCPU on Xen (`set_mp_state(MpState::Halted)`), which Xen's HVM records
//! cannot say: vmkit makes the vCPU halt again itself.
//!
//! A vCPU saved halted has `rip` just past its `hlt`, on KVM and on Xen. KVM keeps such a
//! vCPU halted until an interrupt it can take, then delivers it with the return address
//! past the `hlt`. On Xen, before the vCPU first runs, vmkit looks whether an interrupt is
//! deliverable to it at once: an event being injected (the CPU record's pending event), or,
//! with interrupts enabled (RFLAGS.IF), a vector in its software-enabled local APIC's IRR
//! of a higher priority class than the processor priority (the TPR's and the highest
//! in-service vector's). If so, `rip` stays: Xen delivers the interrupt as the vCPU starts,
//! as KVM would wake it. If not, `rip` goes back to the `hlt` (the byte before `rip` must
//! be 0xF4, or the load is refused) and the vCPU executes it again: Xen blocks it until an
//! interrupt (interrupts enabled) or takes it offline (disabled), as at its first `hlt`.
//!
//! The one difference from KVM: an interrupt that becomes pending between that look and
//! the vCPU's start (or one held in the PIC, which is not looked at) is taken before the
//! re-executed `hlt`, so the guest's handler returns to the `hlt` and the guest halts again
//! where KVM would have gone on past it.

use vm_memory::{Bytes, GuestAddress};

use super::control::StateError;
use super::sys::abi::{
    HvmHwCpu, Pod, HVM_LAPIC_REGS_SIZE, HVM_SAVE_CODE_CPU, HVM_SAVE_CODE_LAPIC_REGS,
};
use super::vm::VmShared;

/// The `hlt` instruction.
const HLT: u8 = 0xf4;

/// What a vCPU loaded halted does when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resume {
    /// An interrupt is deliverable: it starts where it is and takes it at once.
    Wake,
    /// Nothing is: it starts at its `hlt` (this `rip`) and halts again.
    Rehalt { rip: u64 },
}

/// Offsets in the local APIC's register page, and the spurious-vector register's enable.
const APIC_TPR: usize = 0x80;
const APIC_SVR: usize = 0xf0;
const APIC_ISR: usize = 0x100;
const APIC_IRR: usize = 0x200;
const APIC_SVR_ENABLED: u32 = 1 << 8;

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;
/// The CPU record's `pending_event` valid bit.
const PENDING_VALID: u32 = 1 << 31;

/// The 32-bit register at `offset` of a local APIC page (0 past its end).
fn apic_reg(page: &[u8], offset: usize) -> u32 {
    page.get(offset..offset + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The highest vector set in the 256-bit register array at `base` (eight registers 16
/// bytes apart), if any.
fn highest_vector(page: &[u8], base: usize) -> Option<u32> {
    (0..8u32).rev().find_map(|i| {
        let word = apic_reg(page, base + i as usize * 16);
        (word != 0).then(|| i * 32 + 31 - word.leading_zeros())
    })
}

/// Whether a local APIC (its register page, `HVM_SAVE_CODE(LAPIC_REGS)`) would deliver an
/// interrupt now to a vCPU that accepts one: it is software-enabled and its highest
/// requested vector's priority class is above the processor priority's.
pub(crate) fn apic_has_deliverable(page: &[u8]) -> bool {
    if apic_reg(page, APIC_SVR) & APIC_SVR_ENABLED == 0 {
        return false;
    }
    let Some(irr) = highest_vector(page, APIC_IRR) else {
        return false;
    };
    let tpr = apic_reg(page, APIC_TPR) & 0xff;
    let isr = highest_vector(page, APIC_ISR).unwrap_or(0);
    irr >> 4 > (tpr >> 4).max(isr >> 4)
}

/// Whether an interrupt reaches a vCPU in the state of `cpu` with local APIC `page` at once.
pub(crate) fn interrupt_deliverable(cpu: &HvmHwCpu, page: &[u8]) -> bool {
    cpu.pending_event & PENDING_VALID != 0
        || cpu.rflags & RFLAGS_IF != 0 && apic_has_deliverable(page)
}

/// The paging state of a vCPU that decides how its linear addresses translate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Paging {
    pub(crate) cr0: u64,
    pub(crate) cr3: u64,
    pub(crate) cr4: u64,
    pub(crate) efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bits 51:12 of a 64-bit paging entry: the frame it points at.
const FRAME_MASK: u64 = 0x000f_ffff_ffff_f000;

impl Paging {
    /// The guest-physical address of `linear`, walking the guest's page tables with `read`
    /// (a `size`-byte, 4 or 8, little-endian read of guest-physical memory; `None` where
    /// there is none). `None` if an entry on the way is absent or unreadable. The tables
    /// are the guest's and so untrusted: every entry is masked to the address bits its
    /// format has and nothing else is taken from it.
    pub(crate) fn translate(
        &self,
        linear: u64,
        read: impl Fn(u64, usize) -> Option<u64>,
    ) -> Option<u64> {
        if self.cr0 & CR0_PG == 0 {
            return Some(linear & 0xffff_ffff);
        }
        if self.efer & EFER_LMA != 0 {
            // 4-level (or 5-level) paging: 9 index bits a level from bit 39 (48).
            let levels: u32 = if self.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
            let mut table = self.cr3 & FRAME_MASK;
            for level in (1..=levels).rev() {
                let shift = 12 + 9 * (level - 1);
                let entry = read(table + (linear >> shift & 0x1ff) * 8, 8)?;
                if entry & PRESENT == 0 {
                    return None;
                }
                // A 1 GiB (level 3) or 2 MiB (level 2) page.
                if (level == 2 || level == 3) && entry & PAGE_SIZE_BIT != 0 {
                    let mask = (1u64 << shift) - 1;
                    return Some(entry & FRAME_MASK & !mask | linear & mask);
                }
                table = entry & FRAME_MASK;
            }
            return Some(table | linear & 0xfff);
        }
        let linear = linear & 0xffff_ffff;
        if self.cr4 & CR4_PAE != 0 {
            // PAE: four PDPT entries at CR3 (32-byte aligned), then 2 MiB or 4 KiB pages.
            let pdpte = read((self.cr3 & 0xffff_ffe0) + (linear >> 30) * 8, 8)?;
            if pdpte & PRESENT == 0 {
                return None;
            }
            let pde = read((pdpte & FRAME_MASK) + (linear >> 21 & 0x1ff) * 8, 8)?;
            if pde & PRESENT == 0 {
                return None;
            }
            if pde & PAGE_SIZE_BIT != 0 {
                return Some(pde & FRAME_MASK & !0x1f_ffff | linear & 0x1f_ffff);
            }
            let pte = read((pde & FRAME_MASK) + (linear >> 12 & 0x1ff) * 8, 8)?;
            return (pte & PRESENT != 0).then_some(pte & FRAME_MASK | linear & 0xfff);
        }
        // 32-bit paging: 4-byte entries, 4 MiB pages with CR4.PSE.
        let pde = read((self.cr3 & 0xffff_f000) + (linear >> 22) * 4, 4)?;
        if pde & PRESENT == 0 {
            return None;
        }
        if self.cr4 & CR4_PSE != 0 && pde & PAGE_SIZE_BIT != 0 {
            return Some(pde & 0xffc0_0000 | linear & 0x3f_ffff);
        }
        let pte = read((pde & 0xffff_f000) + (linear >> 12 & 0x3ff) * 4, 4)?;
        (pte & PRESENT != 0).then_some(pte & 0xffff_f000 | linear & 0xfff)
    }
}

/// Whether a CPU record's code segment is a 64-bit one in long mode (where its base is
/// ignored).
fn long_mode_code(cpu: &HvmHwCpu) -> bool {
    cpu.msr_efer & EFER_LMA != 0 && cpu.cs_arbytes >> 9 & 1 == 1
}

impl VmShared {
    /// Where vCPU `id`, loaded halted, starts (see the module docs). Takes the control lock
    /// and pauses the domain, bringing the vCPU online for the moment if it is offline.
    pub(crate) fn halted_resume(&self, id: u32) -> Result<Resume, StateError> {
        let control = self.control();
        self.with_paused(&control, |vm| {
            let online = vm.is_online(id)?;
            if !online {
                vm.set_online(id, true)?;
            }
            let resume = vm.halted_resume_online(id);
            if !online {
                vm.set_online(id, false)?;
            }
            resume
        })
    }

    fn halted_resume_online(&self, id: u32) -> Result<Resume, StateError> {
        let mut bytes = vec![0u8; std::mem::size_of::<HvmHwCpu>()];
        self.xc()
            .hvm_record(self.domid, HVM_SAVE_CODE_CPU, id as u16, &mut bytes)?;
        let cpu = HvmHwCpu::from_bytes(&bytes)
            .ok_or_else(|| StateError::Context(format!("a CPU record of {} bytes", bytes.len())))?;
        let mut page = vec![0u8; HVM_LAPIC_REGS_SIZE];
        self.xc()
            .hvm_record(self.domid, HVM_SAVE_CODE_LAPIC_REGS, id as u16, &mut page)?;
        if interrupt_deliverable(&cpu, &page) {
            return Ok(Resume::Wake);
        }
        let rip = cpu.rip;
        let refused = |why: String| {
            StateError::Refused(format!(
                "vCPU {id} was loaded halted, but {why}; a halted vCPU's rip follows its hlt"
            ))
        };
        let hlt_rip = rip
            .checked_sub(1)
            .ok_or_else(|| refused("its rip is 0".into()))?;
        let linear = if long_mode_code(&cpu) {
            hlt_rip
        } else {
            cpu.cs_base.wrapping_add(hlt_rip) & 0xffff_ffff
        };
        let paging = Paging {
            cr0: cpu.cr0,
            cr3: cpu.cr3,
            cr4: cpu.cr4,
            efer: cpu.msr_efer,
        };
        let memory = self.guest_memory();
        let read = |gpa: u64, size: usize| -> Option<u64> {
            let mut entry = [0u8; 8];
            memory
                .read_slice(&mut entry[..size.min(8)], GuestAddress(gpa))
                .ok()?;
            Some(u64::from_le_bytes(entry))
        };
        let gpa = paging
            .translate(linear, read)
            .ok_or_else(|| refused(format!("linear address {linear:#x} is not mapped")))?;
        let byte: u8 = memory
            .read_obj(GuestAddress(gpa))
            .map_err(|_| refused(format!("{gpa:#x} (rip - 1) is not in its RAM")))?;
        if byte != HLT {
            return Err(refused(format!(
                "the byte before rip {rip:#x} is {byte:#04x}, not hlt ({HLT:#04x})"
            )));
        }
        Ok(Resume::Rehalt { rip: hlt_rip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn page_with(edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut page = vec![0u8; HVM_LAPIC_REGS_SIZE];
        page[APIC_SVR + 1] = 1; // enabled
        edit(&mut page);
        page
    }

    fn set_vector(page: &mut [u8], base: usize, vector: usize) {
        page[base + vector / 32 * 16 + vector % 32 / 8] |= 1 << (vector % 8);
    }

    #[test]
    fn a_requested_vector_is_deliverable_above_the_processor_priority() {
        assert!(!apic_has_deliverable(&page_with(|_| {})));
        let irr_0x31 = page_with(|p| set_vector(p, APIC_IRR, 0x31));
        assert!(apic_has_deliverable(&irr_0x31));
        // The TPR's class masks it; a lower TPR class does not.
        let mut masked = irr_0x31.clone();
        masked[APIC_TPR] = 0x30;
        assert!(!apic_has_deliverable(&masked));
        masked[APIC_TPR] = 0x2f;
        assert!(apic_has_deliverable(&masked));
        // A vector of the same or a higher class in service masks it.
        let mut in_service = irr_0x31.clone();
        set_vector(&mut in_service, APIC_ISR, 0x3f);
        assert!(!apic_has_deliverable(&in_service));
        set_vector(&mut in_service, APIC_IRR, 0xec);
        assert!(apic_has_deliverable(&in_service));
        // A software-disabled APIC delivers nothing.
        let mut disabled = irr_0x31;
        disabled[APIC_SVR + 1] = 0;
        assert!(!apic_has_deliverable(&disabled));
        assert_eq!(highest_vector(&in_service, APIC_IRR), Some(0xec));
    }

    #[test]
    fn interrupts_disabled_mask_the_apic_but_not_an_injected_event() {
        let page = page_with(|p| set_vector(p, APIC_IRR, 0x40));
        let mut cpu = HvmHwCpu {
            rflags: 0x2,
            ..HvmHwCpu::default()
        };
        assert!(!interrupt_deliverable(&cpu, &page));
        cpu.rflags |= RFLAGS_IF;
        assert!(interrupt_deliverable(&cpu, &page));
        cpu.rflags = 0x2;
        cpu.pending_event = PENDING_VALID | 0x30;
        assert!(interrupt_deliverable(&cpu, &page_with(|_| {})));
    }

    /// Guest memory as a map of 8-byte words.
    fn reader(words: &HashMap<u64, u64>) -> impl Fn(u64, usize) -> Option<u64> + '_ {
        move |gpa, size| {
            let word = *words.get(&(gpa & !7))?;
            let shifted = word >> ((gpa & 7) * 8);
            Some(if size == 4 {
                shifted & 0xffff_ffff
            } else {
                shifted
            })
        }
    }

    #[test]
    fn long_mode_tables_translate_4k_2m_and_1g_pages() {
        let long = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | 1 << 8,
        };
        let mut words = HashMap::new();
        // PML4[0] -> PDPT at 0x2000; PDPT[0] -> PD at 0x3000; PD[0] -> PT at 0x4000;
        // PT[1] -> 0x9000. PD[1]: a 2 MiB page at 0x40_0000. PDPT[1]: a 1 GiB page at 0.
        words.insert(0x1000, 0x2003);
        words.insert(0x2000, 0x3003);
        words.insert(0x3000, 0x4003);
        words.insert(0x4008, 0x9003);
        words.insert(0x3008, 0x40_0083);
        words.insert(0x2008, 0x83);
        let read = reader(&words);
        assert_eq!(long.translate(0x1234, &read), Some(0x9234));
        assert_eq!(long.translate(0x20_0042, &read), Some(0x40_0042));
        assert_eq!(long.translate(0x4000_1000, &read), Some(0x1000));
        // PT[2] is absent; so is PML4[1].
        assert_eq!(long.translate(0x2000, &read), None);
        assert_eq!(long.translate(1 << 39, &read), None);
        // No paging: the linear address is the physical one.
        let flat = Paging::default();
        assert_eq!(flat.translate(0xf_fff0, &read), Some(0xf_fff0));
    }

    #[test]
    fn pae_and_32_bit_tables_translate() {
        let mut words = HashMap::new();
        // PAE: PDPT at 0x1000 (PDPTE 0 -> PD 0x2000), PD[0] -> PT 0x3000, PT[5] -> 0x7000.
        words.insert(0x1000, 0x2001);
        words.insert(0x2000, 0x3003);
        words.insert(0x3028, 0x7003);
        let pae = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: 0,
        };
        assert_eq!(pae.translate(0x5010, reader(&words)), Some(0x7010));
        // 32-bit: PD at 0x1000 (4-byte entries): PDE 0 -> PT 0x3000 (its entry 5 is the
        // low half of the word above: 0x3014 holds 0 -> absent), PDE 1 a 4 MiB page.
        let mut words32 = HashMap::new();
        words32.insert(0x1000, 0x0080_0083_u64 << 32 | 0x3003);
        words32.insert(0x3010, 0x8003);
        let flat32 = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PSE,
            efer: 0,
        };
        let read = reader(&words32);
        assert_eq!(flat32.translate(0x4abc, &read), Some(0x8abc));
        assert_eq!(flat32.translate(0x5000, &read), None);
        assert_eq!(flat32.translate(0x40_1234, &read), Some(0x80_1234));
    }
}
