//! Level-triggered irqfds (a `resample` eventfd) on Xen: when to raise the line and when the
//! guest's EOI has taken it out of service.
//!
//! KVM holds a resample irqfd's line high until the guest's EOI, then lowers it and signals
//! the resample eventfd; the VMM writes the irqfd again if its device still needs the
//! interrupt. Xen 4.17 tells a device model nothing about an EOI (no ioreq type, dm_op or
//! event channel for it: its vIOAPIC's `vioapic_update_EOI` clears the pin's remote IRR and
//! re-delivers a line still asserted, all inside Xen). What Xen does expose is the IOAPIC's
//! state, remote IRR included, in its `IOAPIC` HVM record, readable with
//! `xc_domain_hvm_getcontext_partial` (a domctl that pauses the domain while it copies the
//! record, so each read is a consistent snapshot). So vmkit keeps the line's level itself
//! and lets Xen see only a pulse, once Xen will latch it:
//!
//! - **Waiting** (the irqfd was written): the line is high for vmkit. When the pin is
//!   level-triggered, unmasked and not in service, vmkit pulses it with the domain paused;
//!   Xen then delivers it and sets the pin's remote IRR in the same step (its
//!   `vioapic_irq_positive_edge`), so the pin is **in service**. A masked pin, or one in
//!   service for another source, stays waiting, as KVM's IOAPIC holds the level until the
//!   unmask or the EOI.
//! - **In service**: when the record shows remote IRR clear, the guest's EOI has happened
//!   (an EOI clears it; so may the guest's reprogramming the pin). Xen's line is already
//!   low, so Xen re-delivers nothing; vmkit lowers its level and signals the resample
//!   eventfd, never before the EOI.
//!
//! The reactor reads the record every [`EOI_POLL`] while some resample line is high (and not
//! at all otherwise), which adds up to that much, plus one domctl, to the EOI's notice; KVM's
//! is immediate. A pin the guest programmed edge-triggered keeps no in-service state in Xen,
//! so a resample line there waits until the guest makes the pin level-triggered. The line is
//! followed on the IOAPIC only: a guest that takes an ISA IRQ from the 8259 PIC instead
//! (its IOAPIC pin masked) never sees a resample irqfd's interrupt.

use std::time::Duration;

/// How often the reactor reads the IOAPIC record while a resample line is high.
pub(crate) const EOI_POLL: Duration = Duration::from_millis(1);

/// A redirection entry's bits (`union vioapic_redir_entry`, as the IOAPIC's).
const REMOTE_IRR: u64 = 1 << 14;
const LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;

/// Where a resample irqfd's line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Low: the device needs nothing (the resample eventfd was signalled, or nothing was
    /// written yet).
    Low,
    /// High, not yet delivered.
    Waiting,
    /// Delivered (pulsed; the pin's remote IRR set), until the guest's EOI.
    InService,
}

/// What the reactor does for one resample line, given its pin's redirection entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing yet.
    Wait,
    /// Pulse the line (with the domain paused): Xen delivers it and marks it in service.
    Pulse,
    /// The guest's EOI happened: the line is low, signal the resample eventfd.
    Eoi,
}

/// The step for a line at `stage` whose pin's redirection entry is `entry`.
pub(crate) fn step(stage: Stage, entry: u64) -> Step {
    match stage {
        Stage::Low => Step::Wait,
        Stage::Waiting => {
            if entry & (LEVEL | MASKED | REMOTE_IRR) == LEVEL {
                Step::Pulse
            } else {
                Step::Wait
            }
        }
        Stage::InService => {
            if entry & REMOTE_IRR == 0 {
                Step::Eoi
            } else {
                Step::Wait
            }
        }
    }
}

/// The stage after `step` was taken.
pub(crate) fn after(stage: Stage, step: Step) -> Stage {
    match step {
        Step::Wait => stage,
        Step::Pulse => Stage::InService,
        Step::Eoi => Stage::Low,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: u64 = 0x31;

    #[test]
    fn a_level_pin_is_pulsed_then_followed_to_its_eoi() {
        let idle = LEVEL | VECTOR;
        assert_eq!(step(Stage::Low, idle), Step::Wait, "nothing written");
        assert_eq!(step(Stage::Waiting, idle), Step::Pulse);
        let stage = after(Stage::Waiting, Step::Pulse);
        assert_eq!(stage, Stage::InService);
        // Xen set remote IRR when it delivered: in service until the guest's EOI clears it.
        assert_eq!(step(stage, idle | REMOTE_IRR), Step::Wait);
        assert_eq!(step(stage, idle), Step::Eoi);
        assert_eq!(after(stage, Step::Eoi), Stage::Low);
    }

    #[test]
    fn a_masked_busy_or_edge_pin_holds_the_level() {
        for entry in [
            LEVEL | MASKED | VECTOR,
            LEVEL | REMOTE_IRR | VECTOR,
            VECTOR, // edge-triggered: Xen would keep no in-service state
        ] {
            assert_eq!(step(Stage::Waiting, entry), Step::Wait, "{entry:#x}");
            assert_eq!(after(Stage::Waiting, Step::Wait), Stage::Waiting);
        }
        // Unmasked later: delivered then, as KVM's IOAPIC does on the unmask.
        assert_eq!(step(Stage::Waiting, LEVEL | VECTOR), Step::Pulse);
    }
}
