//! The port and MMIO ranges KVM's in-kernel devices claim
//! ([`Capabilities::reserved`](crate::Capabilities::reserved)).
//!
//! Without an irqchip KVM handles no guest port or MMIO access itself. `KVM_CREATE_IRQCHIP`
//! adds both 8259 PICs with their edge/level control registers, the IOAPIC and a local APIC
//! per vCPU (at its APIC base, the default shown; a split irqchip has only these);
//! `KVM_CREATE_PIT2` adds the 8254 and,
//! with vmkit's `KVM_PIT_SPEAKER_DUMMY`, a dummy PC speaker port 0x61.

use crate::reserved::{IoSpace, ReservedRange, ReservedWhen};

/// KVM's in-kernel device ranges.
pub(crate) fn ranges() -> Vec<ReservedRange> {
    use IoSpace::{Mmio, Pio};
    use ReservedWhen::{Irqchip, LocalApic, Pit};
    [
        (Pio, 0x20, 2, Irqchip, "8259 PIC (master)"),
        (Pio, 0xa0, 2, Irqchip, "8259 PIC (slave)"),
        (Pio, 0x4d0, 2, Irqchip, "8259 edge/level control (ELCR)"),
        (Mmio, 0xfec0_0000, 0x100, Irqchip, "IOAPIC"),
        (Mmio, 0xfee0_0000, 0x1000, LocalApic, "local APIC"),
        (Pio, 0x40, 4, Pit, "8254 PIT"),
        (Pio, 0x61, 1, Pit, "PC speaker port (dummy)"),
    ]
    .into_iter()
    .map(|(space, start, len, when, device)| ReservedRange::new(space, start, len, when, device))
    .collect()
}
