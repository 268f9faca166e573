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
use crate::arch::x86_64::Paging;

/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
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
        let paging = Paging::new(cpu.cr0, cpu.cr3, cpu.cr4, cpu.msr_efer);
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
}
