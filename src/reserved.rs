//! Guest port and MMIO ranges the hypervisor itself handles, as data
//! ([`Capabilities::reserved`](crate::Capabilities::reserved)): a VMM checks that its devices
//! do not sit there, since guest accesses to them never reach it.
//!
//! Which ranges apply depends on the VM's configuration: KVM claims nothing without an
//! in-kernel irqchip, Xen always handles its debug port and the local APIC, and either one
//! adds the emulated platform's devices when the VM has an irqchip (and, on KVM, a PIT).

use std::fmt;

use crate::hypervisor::VmConfig;

/// The address space of a [`ReservedRange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum IoSpace {
    /// I/O ports.
    Pio,
    /// Guest-physical MMIO addresses.
    Mmio,
}

/// For which VMs a [`ReservedRange`] is claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ReservedWhen {
    /// Every VM.
    Always,
    /// VMs created with the whole in-kernel irqchip ([`VmConfig::irqchip`]; not a split
    /// one, whose IOAPIC and PICs are the VMM's).
    Irqchip,
    /// VMs created with any in-kernel irqchip, whole or split ([`VmConfig::split_irqchip`]):
    /// the local APICs.
    LocalApic,
    /// VMs created with [`VmConfig::pit`] (which needs the irqchip).
    Pit,
}

impl ReservedWhen {
    /// Whether a VM created with `config` has the range.
    pub fn applies_to(self, config: &VmConfig) -> bool {
        match self {
            ReservedWhen::Always => true,
            ReservedWhen::Irqchip => config.irqchip && config.split_ioapic_routes().is_none(),
            ReservedWhen::LocalApic => config.irqchip,
            ReservedWhen::Pit => config.irqchip && config.pit,
        }
    }
}

/// A range of guest port or MMIO space that the hypervisor handles itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ReservedRange {
    /// Ports or MMIO.
    pub space: IoSpace,
    /// The first port or address.
    pub start: u64,
    /// How many ports or bytes.
    pub len: u64,
    /// For which VMs.
    pub when: ReservedWhen,
    /// What the hypervisor emulates there, e.g. "PIT"; it says so when the hypervisor takes
    /// only writes (Xen's debug port).
    pub device: String,
}

impl ReservedRange {
    /// A range of `len` ports or bytes from `start`.
    pub fn new(space: IoSpace, start: u64, len: u64, when: ReservedWhen, device: &str) -> Self {
        ReservedRange {
            space,
            start,
            len,
            when,
            device: device.to_owned(),
        }
    }

    /// Whether `len` ports or bytes from `start` in `space` overlap this range.
    pub fn overlaps(&self, space: IoSpace, start: u64, len: u64) -> bool {
        if space != self.space || len == 0 || self.len == 0 {
            return false;
        }
        // Inclusive last addresses, so that a range ending at the top of the space works.
        let last = start.saturating_add(len - 1);
        let own_last = self.start.saturating_add(self.len - 1);
        start <= own_last && self.start <= last
    }
}

impl fmt::Display for ReservedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let space = match self.space {
            IoSpace::Pio => "ports",
            IoSpace::Mmio => "MMIO",
        };
        let last = self.start.saturating_add(self.len.saturating_sub(1));
        write!(
            f,
            "{space} {:#x}-{last:#x} ({}, {:?})",
            self.start, self.device, self.when
        )
    }
}

/// The first of `ranges` that a VM created with `config` has and that overlaps `len` ports
/// or bytes from `start`.
pub fn conflict<'a>(
    ranges: &'a [ReservedRange],
    config: &VmConfig,
    space: IoSpace,
    start: u64,
    len: u64,
) -> Option<&'a ReservedRange> {
    ranges
        .iter()
        .find(|r| r.when.applies_to(config) && r.overlaps(space, start, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_half_open_and_per_space() {
        let pit = ReservedRange::new(IoSpace::Pio, 0x40, 4, ReservedWhen::Pit, "PIT");
        assert!(pit.overlaps(IoSpace::Pio, 0x43, 1));
        assert!(pit.overlaps(IoSpace::Pio, 0x3f, 2));
        assert!(!pit.overlaps(IoSpace::Pio, 0x44, 1));
        assert!(!pit.overlaps(IoSpace::Pio, 0x3f, 1));
        assert!(!pit.overlaps(IoSpace::Mmio, 0x40, 4));
        assert!(!pit.overlaps(IoSpace::Pio, 0x40, 0));
        // No overflow at the top of the space.
        let top = ReservedRange::new(IoSpace::Mmio, u64::MAX - 1, 2, ReservedWhen::Always, "x");
        assert!(top.overlaps(IoSpace::Mmio, u64::MAX, 1));
    }

    #[test]
    fn a_split_irqchip_claims_only_the_local_apics() {
        let split = VmConfig::default().split_irqchip(24);
        assert!(ReservedWhen::LocalApic.applies_to(&split));
        assert!(!ReservedWhen::Irqchip.applies_to(&split));
        let whole = VmConfig::default().irqchip(true);
        assert!(
            ReservedWhen::LocalApic.applies_to(&whole) && ReservedWhen::Irqchip.applies_to(&whole)
        );
        assert!(!ReservedWhen::LocalApic.applies_to(&VmConfig::default()));
    }

    #[test]
    fn ranges_apply_by_configuration() {
        let ranges = [
            ReservedRange::new(IoSpace::Pio, 0xe9, 1, ReservedWhen::Always, "debug port"),
            ReservedRange::new(IoSpace::Pio, 0x20, 2, ReservedWhen::Irqchip, "PIC"),
            ReservedRange::new(IoSpace::Pio, 0x40, 4, ReservedWhen::Pit, "PIT"),
        ];
        let plain = VmConfig::default();
        let irqchip = VmConfig::default().irqchip(true);
        let pit = irqchip.clone().pit(true);
        assert_eq!(
            conflict(&ranges, &plain, IoSpace::Pio, 0xe9, 1).map(|r| r.device.as_str()),
            Some("debug port")
        );
        assert!(conflict(&ranges, &plain, IoSpace::Pio, 0x20, 1).is_none());
        assert!(conflict(&ranges, &irqchip, IoSpace::Pio, 0x21, 1).is_some());
        assert!(conflict(&ranges, &irqchip, IoSpace::Pio, 0x40, 1).is_none());
        assert!(conflict(&ranges, &pit, IoSpace::Pio, 0x40, 1).is_some());
        assert_eq!(
            ranges[2].to_string(),
            "ports 0x40-0x43 (PIT, Pit)".to_string()
        );
    }
}
