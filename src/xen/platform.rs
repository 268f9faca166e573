//! Which of Xen's emulated devices a vmkit domain has, and the port and MMIO ranges they
//! take from vmkit (the domain's device model).
//!
//! Xen 4.17 accepts exactly two sets of emulation flags for an HVM domain that is not dom0
//! (`emulation_flags_ok` in `xen/arch/x86/domain.c`): the local APIC alone (PVH), or
//! every device Xen can emulate except vPCI (which only dom0 may have) — the set libxl
//! gives HVM guests. vmkit asks for the first without an irqchip and for the second with
//! one ([`VmConfig::irqchip`](crate::VmConfig::irqchip)).
//!
//! Xen's own handlers run before any ioreq server's, so what they claim never reaches
//! vmkit:
//!
//! | range | device | when |
//! | --- | --- | --- |
//! | port 0xE9 | debug console (`(dN) …` lines on Xen's console); writes only, reads reach vmkit | always |
//! | ports 0x80, 0xED | passed through to the real hardware (unless Xen was booted with `hvm_port80=0`) | always |
//! | MMIO 0xFEE00000, 4 KiB | local APIC (at each vCPU's APIC base) | always |
//! | ports 0x20-0x21, 0xA0-0xA1 | 8259 PICs | irqchip |
//! | ports 0x4D0-0x4D1 | the PICs' edge/level control | irqchip |
//! | ports 0x40-0x43, 0x61 | 8254 PIT, PC speaker port | irqchip |
//! | ports 0x70-0x71 | MC146818 RTC / CMOS | irqchip |
//! | ports 0x1F40-0x1F43, 0x1F48-0x1F4B | ACPI PM1a event block and PM timer (Xen's default `HVM_PARAM_ACPI_IOPORTS_LOCATION` 0) | irqchip |
//! | MMIO 0xFEC00000, 256 bytes | IOAPIC (48 pins) | irqchip |
//! | MMIO 0xFED00000, 1 KiB | HPET (vmkit sets `HVM_PARAM_HPET_ENABLED`) | irqchip |
//!
//! With the irqchip Xen also watches, but still forwards to vmkit, the VGA sequencer and
//! graphics ports (0x3C4-0x3C5, 0x3CE-0x3CF); the ACPI PM1a control register (0x1F44) is
//! the device model's. On every domain (irqchip or not: the port scenario runs without one)
//! Xen latches 4-byte writes to the PCI configuration address port 0xCF8 and forwards them
//! too, and an access to 0xCFC-0xCFF while that latch holds an enabled address is a PCI
//! configuration cycle, which Xen sends only to an ioreq server that mapped that device:
//! vmkit maps those the VMM claims ([`Vm::claim_pci_config`](crate::Vm::claim_pci_config),
//! the `pci` module); the others read all ones. Without the enable bit they are plain port
//! I/O for vmkit. Xen's PIT is part of the set: a Xen VM with an irqchip always has it,
//! whatever [`VmConfig::pit`](crate::VmConfig::pit) says (`pit(false)` only refuses the PIT's
//! state calls, as on KVM).

use super::sys::abi::{XEN_X86_EMU_ALL, XEN_X86_EMU_LAPIC, XEN_X86_EMU_VPCI};
use crate::reserved::{IoSpace, ReservedRange, ReservedWhen};

/// The emulation flags of a vmkit HVM domain: with `irqchip`, Xen's whole platform.
pub(crate) fn emulation_flags(irqchip: bool) -> u32 {
    if irqchip {
        XEN_X86_EMU_ALL & !XEN_X86_EMU_VPCI
    } else {
        XEN_X86_EMU_LAPIC
    }
}

/// The ranges of the table in the module docs.
pub(crate) fn reserved_ranges() -> Vec<ReservedRange> {
    use IoSpace::{Mmio, Pio};
    use ReservedWhen::{Always, Irqchip};
    [
        (Pio, 0xe9, 1, Always, "Xen debug console (writes)"),
        (
            Pio,
            0x80,
            1,
            Always,
            "real port 0x80 (Xen passes it through)",
        ),
        (
            Pio,
            0xed,
            1,
            Always,
            "real port 0xED (Xen passes it through)",
        ),
        (Mmio, 0xfee0_0000, 0x1000, Always, "local APIC"),
        (Pio, 0x20, 2, Irqchip, "8259 PIC (master)"),
        (Pio, 0xa0, 2, Irqchip, "8259 PIC (slave)"),
        (Pio, 0x4d0, 2, Irqchip, "8259 edge/level control (ELCR)"),
        (Pio, 0x40, 4, Irqchip, "8254 PIT"),
        (
            Pio,
            0x61,
            1,
            Irqchip,
            "PC speaker port (PIT channel 2 gate)",
        ),
        (Pio, 0x70, 2, Irqchip, "RTC / CMOS"),
        (Pio, 0x1f40, 4, Irqchip, "ACPI PM1a event block"),
        (Pio, 0x1f48, 4, Irqchip, "ACPI PM timer"),
        (Mmio, 0xfec0_0000, 0x100, Irqchip, "IOAPIC"),
        (Mmio, 0xfed0_0000, 0x400, Irqchip, "HPET"),
    ]
    .into_iter()
    .map(|(space, start, len, when, device)| ReservedRange::new(space, start, len, when, device))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VmConfig;

    #[test]
    fn the_two_flag_sets_xen_accepts() {
        assert_eq!(emulation_flags(false), XEN_X86_EMU_LAPIC);
        let all = emulation_flags(true);
        assert_eq!(all & XEN_X86_EMU_VPCI, 0, "vPCI is dom0's only");
        // LAPIC, HPET, PM, RTC, IOAPIC, PIC, VGA, IOMMU, PIT, USE_PIRQ.
        assert_eq!(all, 0x3ff);
    }

    #[test]
    fn the_platform_ranges_apply_only_with_an_irqchip() {
        let ranges = reserved_ranges();
        let pvh = VmConfig::default();
        let hvm = VmConfig::default().irqchip(true);
        let hit = |config, space, start| {
            crate::reserved::conflict(&ranges, config, space, start, 1).map(|r| r.device.clone())
        };
        assert_eq!(
            hit(&pvh, IoSpace::Pio, 0xe9).as_deref(),
            Some("Xen debug console (writes)")
        );
        assert_eq!(hit(&pvh, IoSpace::Pio, 0x70), None);
        assert_eq!(hit(&hvm, IoSpace::Pio, 0x71).as_deref(), Some("RTC / CMOS"));
        assert_eq!(
            hit(&hvm, IoSpace::Mmio, 0xfed0_03ff).as_deref(),
            Some("HPET")
        );
        // A 16550 at COM1 and the PM1a control register stay the VMM's.
        assert_eq!(hit(&hvm, IoSpace::Pio, 0x3f8), None);
        assert_eq!(hit(&hvm, IoSpace::Pio, 0x1f44), None);
    }
}
