//! Interrupt plumbing shared by every backend: MSI messages, GSI routes, and the addresses and
//! data matches of I/O event notifiers.
//!
//! A VMM raises interrupts either directly ([`Vm::set_irq_line`], [`Vm::signal_msi`]) or by
//! handing the hypervisor an [`EventFd`](vmm_sys_util::eventfd::EventFd) that injects an
//! interrupt when written ([`Vm::register_irqfd`]); guest writes to a doorbell address can
//! likewise signal an eventfd without a round trip through the VMM
//! ([`Vm::register_ioeventfd`]).
//!
//! [`Vm::set_irq_line`]: crate::Vm::set_irq_line
//! [`Vm::signal_msi`]: crate::Vm::signal_msi
//! [`Vm::register_irqfd`]: crate::Vm::register_irqfd
//! [`Vm::register_ioeventfd`]: crate::Vm::register_ioeventfd

use std::fmt;

/// A message-signalled interrupt: the address and data a device writes.
///
/// On x86 the address selects the destination local APIC (`0xfee0_0000 | apic_id << 12`) and
/// the low byte of the data is the vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MsiMessage {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

impl MsiMessage {
    /// The MSI that delivers `vector` to the local APIC with id `apic_id`, fixed delivery,
    /// edge-triggered.
    pub fn x86(apic_id: u8, vector: u8) -> Self {
        MsiMessage {
            address: 0xfee0_0000 | (u64::from(apic_id) << 12),
            data: u32::from(vector),
        }
    }
}

/// An interrupt controller input that a GSI can be routed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IrqChip {
    /// The first 8259 PIC (pins 0–7).
    PicMaster,
    /// The second 8259 PIC (pins 0–7, ISA IRQs 8–15).
    PicSlave,
    /// The IOAPIC (pins 0–23).
    IoApic,
}

/// Where one GSI goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IrqRoute {
    /// To a pin of an in-kernel interrupt controller.
    Irqchip {
        /// The GSI being routed.
        gsi: u32,
        /// The controller.
        chip: IrqChip,
        /// Its input pin.
        pin: u32,
    },
    /// To an MSI, so that raising the GSI (e.g. through an irqfd) sends that message.
    Msi {
        /// The GSI being routed.
        gsi: u32,
        /// The message sent.
        msi: MsiMessage,
    },
}

impl IrqRoute {
    /// The GSI this route is for.
    pub fn gsi(&self) -> u32 {
        match *self {
            IrqRoute::Irqchip { gsi, .. } | IrqRoute::Msi { gsi, .. } => gsi,
        }
    }

    /// The routes KVM sets up by default, as a PC wires them: ISA IRQs 0–15 to both PICs and
    /// the same IOAPIC pin, GSIs 16–23 to the IOAPIC. Start from these when adding MSI
    /// routes, since setting routes replaces the whole table.
    pub fn pc_defaults() -> Vec<IrqRoute> {
        let mut routes = Vec::with_capacity(40);
        for gsi in 0..24 {
            if gsi < 16 {
                let (chip, pin) = if gsi < 8 {
                    (IrqChip::PicMaster, gsi)
                } else {
                    (IrqChip::PicSlave, gsi - 8)
                };
                routes.push(IrqRoute::Irqchip { gsi, chip, pin });
            }
            routes.push(IrqRoute::Irqchip {
                gsi,
                chip: IrqChip::IoApic,
                pin: gsi,
            });
        }
        routes
    }
}

/// An address whose guest writes an ioeventfd watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoEventAddress {
    /// An I/O port.
    Pio(u16),
    /// A guest-physical MMIO address.
    Mmio(u64),
}

impl fmt::Display for IoEventAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoEventAddress::Pio(port) => write!(f, "port {port:#x}"),
            IoEventAddress::Mmio(addr) => write!(f, "MMIO address {addr:#x}"),
        }
    }
}

/// Which guest writes an ioeventfd reacts to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DataMatch {
    /// Any write, of any width.
    #[default]
    Any,
    /// Only 1-byte writes of this value.
    U8(u8),
    /// Only 2-byte writes of this value.
    U16(u16),
    /// Only 4-byte writes of this value.
    U32(u32),
    /// Only 8-byte writes of this value.
    U64(u64),
}
