//! A split irqchip's level-triggered EOIs on Xen: which vCPU must report
//! [`VcpuExit::IoapicEoi`](crate::VcpuExit::IoapicEoi), and when.
//!
//! With a split irqchip the domain has Xen's local APICs only (the PVH set,
//! `XEN_X86_EMU_LAPIC`); the VMM's IOAPIC answers its MMIO window through the ioreq server
//! and sends every interrupt as an MSI (`XEN_DMOP_inject_msi`). Xen honours the MSI's
//! trigger-mode bit: a level-triggered message sets the vector's bit in the target local
//! APIC's TMR (`vlapic_set_irq`), and the guest's EOI of it goes to `vioapic_update_EOI`,
//! which does nothing in a domain without Xen's IOAPIC. Xen 4.17 tells a device model
//! nothing of that EOI, so vmkit watches for it in the local APICs' registers, which Xen's
//! `LAPIC_REGS` HVM record holds (one per vCPU, read with
//! `xc_domain_hvm_getcontext_partial`):
//!
//! - When vmkit sends a level-triggered MSI it pauses the domain, injects it and reads every
//!   vCPU's registers: the vCPUs whose IRR or ISR now holds the vector are the ones it went
//!   to (paused, none can have taken and ended it yet). Each is told to watch it.
//! - While a vCPU watches a vector, its `run()` reads its own registers every [`EOI_POLL`]:
//!   once neither IRR nor ISR holds the vector, the guest has ended it, and `run()` returns
//!   `IoapicEoi` with it (up to that much, plus a domctl, after the EOI; KVM stops the vCPU
//!   at the EOI itself).
//!
//! The VMM's IOAPIC sends a pin's level interrupt again only after that EOI, so the vector
//! cannot be re-raised by the same pin between two reads. A vector that another source
//! raises in the meantime (an edge MSI of the same vector) delays the report until that one
//! is ended too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::kick::XenKick;

/// How often a vCPU that watches a vector reads its local APIC's registers.
pub(crate) const EOI_POLL: Duration = Duration::from_millis(1);

/// The trigger-mode bit of an x86 MSI's data (set: level-triggered).
pub(crate) const MSI_DATA_LEVEL: u32 = 1 << 15;

/// Offsets of the in-service and request registers in the local APIC's register page
/// (eight 32-bit words each, one every 16 bytes).
const APIC_ISR: usize = 0x100;
const APIC_IRR: usize = 0x200;

/// Whether the local APIC register page `regs` has `vector` requested or in service.
pub(crate) fn holds(regs: &[u8], vector: u8) -> bool {
    let word = usize::from(vector / 32) * 16;
    let bit = u32::from(vector % 32);
    [APIC_ISR, APIC_IRR].iter().any(|base| {
        regs.get(base + word..base + word + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .is_some_and(|b| u32::from_le_bytes(b) & (1 << bit) != 0)
    })
}

/// The vectors each vCPU watches, and how to wake its `run()`.
#[derive(Debug, Default)]
pub(crate) struct EoiWatch {
    /// (vCPU, vector) pairs awaiting the guest's EOI.
    awaiting: Mutex<Vec<(u32, u8)>>,
    /// Each vCPU's kick, whose eventfd alone (without the kick flag) wakes its wait.
    wakers: Mutex<HashMap<u32, Arc<XenKick>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EoiWatch {
    /// Records how to wake vCPU `vcpu`'s `run()`.
    pub(crate) fn add_vcpu(&self, vcpu: u32, kick: Arc<XenKick>) {
        lock(&self.wakers).insert(vcpu, kick);
    }

    /// vCPU `vcpu` now watches `vector` (a level-triggered interrupt it was sent).
    pub(crate) fn watch(&self, vcpu: u32, vector: u8) {
        let mut awaiting = lock(&self.awaiting);
        if !awaiting.contains(&(vcpu, vector)) {
            awaiting.push((vcpu, vector));
        }
        drop(awaiting);
        if let Some(kick) = lock(&self.wakers).get(&vcpu) {
            kick.wake();
        }
    }

    /// Whether vCPU `vcpu` watches some vector.
    pub(crate) fn watching(&self, vcpu: u32) -> bool {
        lock(&self.awaiting).iter().any(|&(v, _)| v == vcpu)
    }

    /// Given vCPU `vcpu`'s register page, takes one vector it watched that the guest has
    /// ended.
    pub(crate) fn take_ended(&self, vcpu: u32, regs: &[u8]) -> Option<u8> {
        let mut awaiting = lock(&self.awaiting);
        let index = awaiting
            .iter()
            .position(|&(v, vector)| v == vcpu && !holds(regs, vector))?;
        Some(awaiting.remove(index).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs_with(offset: usize, vector: u8) -> Vec<u8> {
        let mut regs = vec![0u8; 1024];
        let at = offset + usize::from(vector / 32) * 16;
        let word = 1u32 << (vector % 32);
        regs[at..at + 4].copy_from_slice(&word.to_le_bytes());
        regs
    }

    #[test]
    fn a_vector_is_held_while_requested_or_in_service() {
        for vector in [0x20u8, 0x31, 0x5f, 0xff] {
            assert!(holds(&regs_with(APIC_IRR, vector), vector));
            assert!(holds(&regs_with(APIC_ISR, vector), vector));
            assert!(!holds(&regs_with(APIC_ISR, vector), vector ^ 1));
            assert!(!holds(&[0u8; 1024], vector));
        }
        assert!(!holds(&[], 0x31), "a short page holds nothing");
    }

    #[test]
    fn an_ended_vector_is_reported_once_to_its_vcpu() {
        let watch = EoiWatch::default();
        watch.watch(0, 0x31);
        watch.watch(0, 0x31);
        assert!(watch.watching(0) && !watch.watching(1));
        assert_eq!(watch.take_ended(1, &[0u8; 1024]), None, "not vCPU 1's");
        assert_eq!(watch.take_ended(0, &regs_with(APIC_ISR, 0x31)), None);
        assert_eq!(watch.take_ended(0, &[0u8; 1024]), Some(0x31));
        assert_eq!(watch.take_ended(0, &[0u8; 1024]), None);
        assert!(!watch.watching(0));
    }
}
