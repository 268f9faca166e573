//! PCI functions a VMM's host bridge serves, for [`Vm::claim_pci_config`](crate::Vm::claim_pci_config).
//!
//! A guest reaches PCI configuration space through ports 0xCF8 (address) and 0xCFC-0xCFF
//! (data), or through an ECAM window (MMIO). ECAM is plain MMIO on every backend. The ports
//! are too on KVM, but Xen latches the address itself and sends a data-port access only to
//! the device model that claimed the addressed function; unclaimed functions read all ones.
//! A VMM therefore names the functions its host bridge answers for, and on every backend
//! the accesses then reach it as the same port I/O exits.

use std::fmt;
use std::ops::RangeInclusive;

/// The devices (slots) on a PCI bus.
pub const PCI_DEVICES: u8 = 32;
/// The functions of a PCI device.
pub const PCI_FUNCTIONS: u8 = 8;

/// A bus/device/function number that does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PciAddressError {
    /// The device number is 32 or more.
    #[error("PCI device {device} is out of range: a bus has devices 0 to 31")]
    Device {
        /// The device number given.
        device: u8,
    },
    /// The function number is 8 or more.
    #[error("PCI function {function} is out of range: a device has functions 0 to 7")]
    Function {
        /// The function number given.
        function: u8,
    },
}

/// One PCI function on segment 0: bus, device and function number ("BDF").
///
/// ```
/// use vmkit::pci::PciBdf;
/// let bdf = PciBdf::new(0, 3, 0)?;
/// assert_eq!(bdf.to_string(), "00:03.0");
/// assert!(PciBdf::new(0, 32, 0).is_err());
/// # Ok::<(), vmkit::pci::PciAddressError>(())
/// ```
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PciBdf {
    bus: u8,
    device: u8,
    function: u8,
}

impl PciBdf {
    /// The function `function` (0-7) of device `device` (0-31) on bus `bus`.
    pub fn new(bus: u8, device: u8, function: u8) -> Result<PciBdf, PciAddressError> {
        if device >= PCI_DEVICES {
            return Err(PciAddressError::Device { device });
        }
        if function >= PCI_FUNCTIONS {
            return Err(PciAddressError::Function { function });
        }
        Ok(PciBdf {
            bus,
            device,
            function,
        })
    }

    /// The function with routing id `id` (bus in bits 15-8, device 7-3, function 2-0).
    pub fn from_routing_id(id: u16) -> PciBdf {
        PciBdf {
            bus: (id >> 8) as u8,
            device: ((id >> 3) & 0x1f) as u8,
            function: (id & 7) as u8,
        }
    }

    /// The bus number.
    pub fn bus(self) -> u8 {
        self.bus
    }

    /// The device number (0-31).
    pub fn device(self) -> u8 {
        self.device
    }

    /// The function number (0-7).
    pub fn function(self) -> u8 {
        self.function
    }

    /// The routing id: bus in bits 15-8, device in 7-3, function in 2-0 (bits 23-8 of the
    /// 0xCF8 address register).
    pub fn routing_id(self) -> u16 {
        u16::from(self.bus) << 8 | u16::from(self.device) << 3 | u16::from(self.function)
    }
}

impl fmt::Display for PciBdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// PCI functions whose configuration cycles the VMM's host bridge answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PciFunctions {
    /// Every function of a bus (256: 32 devices × 8 functions). A bridge that answers for
    /// a whole bus also answers for its empty slots, with all ones, as hardware does.
    Bus(u8),
    /// One function.
    Function(PciBdf),
}

impl PciFunctions {
    /// The routing ids these functions cover, in order.
    pub fn routing_ids(self) -> RangeInclusive<u16> {
        match self {
            PciFunctions::Bus(bus) => {
                let first = u16::from(bus) << 8;
                first..=first | 0xff
            }
            PciFunctions::Function(bdf) => bdf.routing_id()..=bdf.routing_id(),
        }
    }
}

impl fmt::Display for PciFunctions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciFunctions::Bus(bus) => write!(f, "PCI bus {bus:02x}"),
            PciFunctions::Function(bdf) => write!(f, "PCI function {bdf}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdfs_are_checked_and_round_trip_through_routing_ids() {
        assert_eq!(
            PciBdf::new(0, 32, 0),
            Err(PciAddressError::Device { device: 32 })
        );
        assert_eq!(
            PciBdf::new(0, 0, 8),
            Err(PciAddressError::Function { function: 8 })
        );
        let bdf = PciBdf::new(0xab, 31, 7).unwrap();
        assert_eq!(bdf.routing_id(), 0xabff);
        for id in [0u16, 0x18, 0xabff, 0x0108, u16::MAX] {
            assert_eq!(PciBdf::from_routing_id(id).routing_id(), id);
        }
        assert_eq!(PciBdf::from_routing_id(0x0119).to_string(), "01:03.1");
    }

    #[test]
    fn a_bus_covers_its_256_functions() {
        let ids = PciFunctions::Bus(2).routing_ids();
        assert_eq!((*ids.start(), *ids.end()), (0x200, 0x2ff));
        let one = PciFunctions::Function(PciBdf::new(0, 1, 0).unwrap()).routing_ids();
        assert_eq!(one.count(), 1);
    }
}
