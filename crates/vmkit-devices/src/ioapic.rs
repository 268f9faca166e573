//! A userspace IOAPIC (an 82093AA-style I/O APIC, version 0x20) for a VM with a split
//! irqchip: the hypervisor emulates the local APICs, this device the 24 interrupt pins and
//! their redirection table, and every interrupt leaves it as an MSI.
//!
//! # How interrupts get through
//!
//! The device knows no hypervisor: it talks to the VMM through an [`IoApicSink`], which
//! does two things with the `Vm`:
//!
//! - [`IoApicSink::send_msi`]: the interrupt of a pin the VMM raised with
//!   [`IoApic::set_irq`], sent as the MSI its redirection entry gives (`Vm::signal_msi`).
//! - [`IoApicSink::update_routes`]: after every guest write that changes what a pin sends,
//!   the MSI of each of the 24 pins (`None` for a masked pin), which the VMM installs as GSI
//!   routes `0..24` (`Vm::set_gsi_routing`). So a device whose interrupt is an irqfd on its
//!   legacy GSI (the serial port on GSI 4, a virtio-mmio device on its own) works unchanged:
//!   the hypervisor sends the route's MSI when the eventfd is written, without this device
//!   seeing it. The routes also tell the hypervisor which vectors are level-triggered, and
//!   so which EOIs to report as `VcpuExit::IoapicEoi`, for [`IoApic::end_of_interrupt`].
//!
//! A masked pin has no route, so an irqfd edge on it is dropped as a real IOAPIC drops an
//! edge on a masked pin; a level-triggered pin whose interrupt is in service (remote IRR
//! set) keeps its route even while masked, so that the guest's EOI of it is still reported.
//!
//! # Registers
//!
//! The MMIO window ([`IoApic::BASE`], [`IoApic::SIZE`] bytes) has IOREGSEL at offset `0x00`,
//! IOWIN at `0x10` and the version-0x20 EOI register at `0x40`, each a 32-bit register:
//! accesses of another width or at another offset read as 0 and are otherwise ignored
//! (counted by [`IoApic::ignored_accesses`]). Through IOWIN: the ID (register 0, bits
//! 24–27 writable), the version (register 1, read-only: 24 entries, version 0x20), the
//! arbitration ID (register 2, read-only) and the 24 redirection entries (registers
//! `0x10 + 2n` low half, `0x11 + 2n` high half). Of an entry, the guest writes the vector,
//! delivery mode, destination mode, polarity, trigger mode, mask and destination; the
//! delivery-status and remote-IRR bits are read-only and the reserved bits read as 0.
//! Registers that do not exist read as 0 and ignore writes.
//!
//! Entries whose delivery mode is reserved (3, 6) or ExtINT (7; there is no PIC to ask for
//! the vector) send nothing: such interrupts are counted by [`IoApic::dropped`].
//! [`IoApic::set_irq`]'s level means "asserted": the polarity bit is kept for the guest to
//! read back but does not invert the line, as in KVM's own IOAPIC.

use std::sync::{Arc, Mutex, MutexGuard};

use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;
use vmkit_snapshot::Persist;

use crate::error::RestoreError;

/// Pins of the IOAPIC (GSIs `0..24`).
pub const IOAPIC_PINS: usize = 24;

/// Offset of IOREGSEL in the MMIO window.
const IOREGSEL: u64 = 0x00;
/// Offset of IOWIN.
const IOWIN: u64 = 0x10;
/// Offset of the EOI register (version 0x20).
const EOI: u64 = 0x40;

const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARBITRATION: u8 = 0x02;
const REG_REDIRECTION: u8 = 0x10;
/// Version 0x20, highest entry 23.
const VERSION: u32 = 0x20 | ((IOAPIC_PINS as u32 - 1) << 16);
/// The ID register's bits (24–27).
const ID_SHIFT: u32 = 24;
const ID_MAX: u8 = 0x0f;

const VECTOR: u64 = 0xff;
const DELIVERY_MODE_SHIFT: u32 = 8;
const DELIVERY_MODE: u64 = 0x7 << DELIVERY_MODE_SHIFT;
const DEST_MODE_LOGICAL: u64 = 1 << 11;
/// Delivery status: never set, delivery being immediate.
#[cfg(test)]
const DELIVERY_STATUS: u64 = 1 << 12;
const POLARITY_LOW: u64 = 1 << 13;
const REMOTE_IRR: u64 = 1 << 14;
const TRIGGER_LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const DEST_SHIFT: u32 = 56;
/// The bits of an entry the guest writes.
const WRITABLE: u64 = VECTOR
    | DELIVERY_MODE
    | DEST_MODE_LOGICAL
    | POLARITY_LOW
    | TRIGGER_LEVEL
    | MASKED
    | (0xff << DEST_SHIFT);
/// Every bit an entry can hold (the writable ones and remote IRR; delivery status is always
/// 0, since delivery is immediate).
const HELD: u64 = WRITABLE | REMOTE_IRR;
/// An entry after reset: masked, edge-triggered, vector 0.
const RESET_ENTRY: u64 = MASKED;

/// The MSI an interrupt leaves the IOAPIC as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IoApicMsi {
    /// Message address: `0xfee0_0000`, destination in bits 12–19, logical destination mode
    /// in bit 2.
    pub address: u64,
    /// Message data: vector in bits 0–7, delivery mode in bits 8–10, level-triggered in bit
    /// 15 (and bit 14, "assert", with it).
    pub data: u32,
}

/// Where the IOAPIC's interrupts go: the VMM's side of [`IoApic`] (see the [module
/// documentation](self)). Called with the device's lock held: an implementation must not
/// call back into the same [`IoApic`]. Failures are the sink's to report (it knows the VMM's
/// logging); the device cannot do better than drop the interrupt.
pub trait IoApicSink: Send + Sync {
    /// Sends one interrupt (e.g. `Vm::signal_msi`).
    fn send_msi(&self, msi: IoApicMsi);
    /// The MSI of every pin now (`None`: masked); route GSI `n` to `routes[n]` (e.g. with
    /// `Vm::set_gsi_routing`, beside any other routes the VMM keeps).
    fn update_routes(&self, routes: &[Option<IoApicMsi>; IOAPIC_PINS]);
}

/// Why the VMM's request to the IOAPIC was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IoApicError {
    /// The pin does not exist.
    #[error("IOAPIC pin {pin} does not exist (there are {IOAPIC_PINS})")]
    NoSuchPin {
        /// The pin asked for.
        pin: u32,
    },
}

/// The saved state of an [`IoApic`] ([`Persist::State`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IoApicState {
    /// The IOAPIC ID (0–15).
    pub id: u8,
    /// IOREGSEL.
    pub select: u8,
    /// The 24 redirection entries, remote IRR included.
    pub redirection: Vec<u64>,
    /// The asserted lines, bit `n` for pin `n`.
    pub lines: u32,
}

#[derive(Debug)]
struct Registers {
    id: u8,
    select: u8,
    redirection: [u64; IOAPIC_PINS],
    lines: u32,
}

impl Default for Registers {
    fn default() -> Self {
        Registers {
            id: 0,
            select: 0,
            redirection: [RESET_ENTRY; IOAPIC_PINS],
            lines: 0,
        }
    }
}

/// The MSI of a redirection entry; `None` if its delivery mode sends nothing.
fn entry_msi(entry: u64) -> Option<IoApicMsi> {
    let mode = (entry & DELIVERY_MODE) >> DELIVERY_MODE_SHIFT;
    // Fixed, lowest priority, SMI, NMI, INIT; not reserved (3, 6) nor ExtINT (7).
    if !matches!(mode, 0 | 1 | 2 | 4 | 5) {
        return None;
    }
    let dest = (entry >> DEST_SHIFT) & 0xff;
    let logical = u64::from(entry & DEST_MODE_LOGICAL != 0);
    let level = entry & TRIGGER_LEVEL != 0;
    let mut data = (entry & (VECTOR | DELIVERY_MODE)) as u32;
    if level {
        data |= (TRIGGER_LEVEL | REMOTE_IRR) as u32;
    }
    Some(IoApicMsi {
        address: 0xfee0_0000 | (dest << 12) | (logical << 2),
        data,
    })
}

/// The userspace IOAPIC. See the [module documentation](self).
pub struct IoApic {
    regs: Mutex<Registers>,
    sink: Arc<dyn IoApicSink>,
    ignored: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for IoApic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoApic")
            .field("state", &self.save_state())
            .field("ignored", &self.ignored_accesses())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl IoApic {
    /// Where PCs put the IOAPIC's registers (and the MADT says so).
    pub const BASE: u64 = 0xfec0_0000;
    /// Bytes of its MMIO window.
    pub const SIZE: u64 = 0x1000;

    /// An IOAPIC after reset (every pin masked) that sends its interrupts to `sink`. It
    /// gives `sink` its routes (all `None`) at once, so stale routes of the GSIs go.
    pub fn new(sink: Arc<dyn IoApicSink>) -> Self {
        let ioapic = IoApic {
            regs: Mutex::new(Registers::default()),
            sink,
            ignored: Default::default(),
            dropped: Default::default(),
        };
        let regs = ioapic.lock();
        ioapic.push_routes(&regs);
        drop(regs);
        ioapic
    }

    fn lock(&self) -> MutexGuard<'_, Registers> {
        // A panic elsewhere cannot leave the registers half-written: every update is one
        // store. So a poisoned lock is still good.
        self.regs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Accesses of a wrong width or offset so far.
    pub fn ignored_accesses(&self) -> u64 {
        self.ignored.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Interrupts that an entry's delivery mode (reserved or ExtINT) kept from being sent.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The redirection entry of `pin`, as the guest reads it.
    pub fn entry(&self, pin: u32) -> Result<u64, IoApicError> {
        let index = Self::pin_index(pin)?;
        Ok(self.lock().redirection[index])
    }

    fn pin_index(pin: u32) -> Result<usize, IoApicError> {
        usize::try_from(pin)
            .ok()
            .filter(|&index| index < IOAPIC_PINS)
            .ok_or(IoApicError::NoSuchPin { pin })
    }

    /// Sets the line of `pin` asserted (`true`) or not. An edge-triggered pin sends its
    /// interrupt on each assertion; a level-triggered one when asserted and not in service
    /// (remote IRR clear), and again after the guest's EOI while it stays asserted. A masked
    /// pin sends nothing (a level-triggered one sends when unmasked while still asserted).
    pub fn set_irq(&self, pin: u32, level: bool) -> Result<(), IoApicError> {
        let index = Self::pin_index(pin)?;
        let mut regs = self.lock();
        let bit = 1u32 << index;
        let was = regs.lines & bit != 0;
        if level {
            regs.lines |= bit;
        } else {
            regs.lines &= !bit;
        }
        let entry = regs.redirection[index];
        let level_triggered = entry & TRIGGER_LEVEL != 0;
        if level && (level_triggered || !was) {
            self.service(&mut regs, index);
        }
        Ok(())
    }

    /// The guest ended an interrupt of `vector` (a split irqchip's `VcpuExit::IoapicEoi`, or
    /// a write to the EOI register): every level-triggered pin in service with that vector
    /// leaves service, and sends again if its line is still asserted.
    pub fn end_of_interrupt(&self, vector: u8) {
        let mut regs = self.lock();
        self.eoi_locked(&mut regs, vector);
    }

    fn eoi_locked(&self, regs: &mut Registers, vector: u8) {
        let mut routes_changed = false;
        for index in 0..IOAPIC_PINS {
            let entry = regs.redirection[index];
            if entry & REMOTE_IRR == 0 || entry & VECTOR != u64::from(vector) {
                continue;
            }
            regs.redirection[index] = entry & !REMOTE_IRR;
            // A masked pin kept its route only while in service.
            routes_changed |= entry & MASKED != 0;
            if regs.lines & (1 << index) != 0 {
                self.service(regs, index);
            }
        }
        if routes_changed {
            self.push_routes(regs);
        }
    }

    /// Sends pin `index`'s interrupt if its entry lets it.
    fn service(&self, regs: &mut Registers, index: usize) {
        let entry = regs.redirection[index];
        let level_triggered = entry & TRIGGER_LEVEL != 0;
        if entry & MASKED != 0 || (level_triggered && entry & REMOTE_IRR != 0) {
            return;
        }
        let Some(msi) = entry_msi(entry) else {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        };
        if level_triggered {
            regs.redirection[index] = entry | REMOTE_IRR;
        }
        self.sink.send_msi(msi);
    }

    fn routes(regs: &Registers) -> [Option<IoApicMsi>; IOAPIC_PINS] {
        let mut routes = [None; IOAPIC_PINS];
        for (route, &entry) in routes.iter_mut().zip(&regs.redirection) {
            let in_service = entry & (TRIGGER_LEVEL | REMOTE_IRR) == TRIGGER_LEVEL | REMOTE_IRR;
            if entry & MASKED == 0 || in_service {
                *route = entry_msi(entry);
            }
        }
        routes
    }

    fn push_routes(&self, regs: &Registers) {
        self.sink.update_routes(&Self::routes(regs));
    }

    fn read_register(regs: &Registers) -> u32 {
        match regs.select {
            REG_ID | REG_ARBITRATION => u32::from(regs.id) << ID_SHIFT,
            REG_VERSION => VERSION,
            select => match Self::entry_half(select) {
                Some((index, high)) => {
                    let entry = regs.redirection[index];
                    if high {
                        (entry >> 32) as u32
                    } else {
                        entry as u32
                    }
                }
                None => 0,
            },
        }
    }

    /// The entry and half (high?) that register `select` is, if it is one.
    fn entry_half(select: u8) -> Option<(usize, bool)> {
        let offset = usize::from(select.checked_sub(REG_REDIRECTION)?);
        let index = offset / 2;
        (index < IOAPIC_PINS).then_some((index, offset % 2 == 1))
    }

    fn write_register(&self, regs: &mut Registers, value: u32) {
        match regs.select {
            REG_ID => regs.id = ((value >> ID_SHIFT) as u8) & ID_MAX,
            select => {
                let Some((index, high)) = Self::entry_half(select) else {
                    // Read-only or absent registers ignore writes.
                    return;
                };
                let old = regs.redirection[index];
                let written = if high {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                } else {
                    (old & !0xffff_ffff) | u64::from(value)
                };
                let mut entry = (written & WRITABLE) | (old & REMOTE_IRR);
                if entry & TRIGGER_LEVEL == 0 {
                    // Remote IRR means nothing for an edge-triggered pin.
                    entry &= !REMOTE_IRR;
                }
                regs.redirection[index] = entry;
                if entry != old {
                    self.push_routes(regs);
                }
                // Unmasking a level-triggered pin whose line is asserted sends it now.
                if entry & TRIGGER_LEVEL != 0 && regs.lines & (1 << index) != 0 {
                    self.service(regs, index);
                }
            }
        }
    }

    fn ignore(&self, data: &mut [u8]) {
        data.fill(0);
        self.ignored
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A guest read at `offset` in the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let Ok(bytes) = <&mut [u8; 4]>::try_from(&mut *data) else {
            return self.ignore(data);
        };
        let regs = self.lock();
        let value = match offset {
            IOREGSEL => u32::from(regs.select),
            IOWIN => Self::read_register(&regs),
            _ => {
                drop(regs);
                return self.ignore(data);
            }
        };
        *bytes = value.to_le_bytes();
    }

    /// A guest write at `offset` in the window.
    pub fn write(&self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return self.ignore(&mut []);
        };
        let value = u32::from_le_bytes(bytes);
        let mut regs = self.lock();
        match offset {
            IOREGSEL => regs.select = value as u8,
            IOWIN => self.write_register(&mut regs, value),
            EOI => self.eoi_locked(&mut regs, value as u8),
            _ => {
                drop(regs);
                self.ignore(&mut []);
            }
        }
    }
}

impl DeviceMmio for IoApic {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.read(offset, data);
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.write(offset, data);
    }
}

impl Persist for IoApic {
    const KIND: &'static str = "ioapic";
    const VERSION: u16 = 1;
    type State = IoApicState;
    type Error = RestoreError;

    fn save_state(&self) -> IoApicState {
        let regs = self.lock();
        IoApicState {
            id: regs.id,
            select: regs.select,
            redirection: regs.redirection.to_vec(),
            lines: regs.lines,
        }
    }

    /// Checks every field as the register interface would allow (an ID of at most 15, 24
    /// entries without reserved or delivery-status bits, remote IRR only on level-triggered
    /// entries, lines only of the 24 pins), then loads it and gives the sink the routes.
    /// Nothing is sent: an interrupt in service stays so until the guest's EOI.
    fn restore_state(&mut self, state: &IoApicState) -> Result<(), RestoreError> {
        let bad = |field: &'static str, value: u64, reason: &'static str| {
            Err(RestoreError::IoApic {
                field,
                value,
                reason,
            })
        };
        if state.id > ID_MAX {
            return bad("id", u64::from(state.id), "an IOAPIC ID has 4 bits");
        }
        if state.lines >> IOAPIC_PINS != 0 {
            return bad("lines", u64::from(state.lines), "there are 24 pins");
        }
        let Ok(redirection) = <[u64; IOAPIC_PINS]>::try_from(state.redirection.as_slice()) else {
            return bad(
                "redirection",
                state.redirection.len() as u64,
                "there are 24 redirection entries",
            );
        };
        for entry in redirection {
            if entry & !HELD != 0 {
                return bad(
                    "redirection",
                    entry,
                    "reserved or delivery-status bits are set",
                );
            }
            if entry & (REMOTE_IRR | TRIGGER_LEVEL) == REMOTE_IRR {
                return bad(
                    "redirection",
                    entry,
                    "remote IRR is set on an edge-triggered entry",
                );
            }
        }
        let mut regs = self.lock();
        *regs = Registers {
            id: state.id,
            select: state.select,
            redirection,
            lines: state.lines,
        };
        self.push_routes(&regs);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the IOAPIC sends and routes.
    #[derive(Default)]
    struct Recorder {
        sent: Mutex<Vec<IoApicMsi>>,
        routes: Mutex<Vec<[Option<IoApicMsi>; IOAPIC_PINS]>>,
    }

    impl IoApicSink for Recorder {
        fn send_msi(&self, msi: IoApicMsi) {
            self.sent.lock().unwrap().push(msi);
        }
        fn update_routes(&self, routes: &[Option<IoApicMsi>; IOAPIC_PINS]) {
            self.routes.lock().unwrap().push(*routes);
        }
    }

    impl Recorder {
        fn take_sent(&self) -> Vec<IoApicMsi> {
            std::mem::take(&mut self.sent.lock().unwrap())
        }
        fn last_routes(&self) -> [Option<IoApicMsi>; IOAPIC_PINS] {
            *self.routes.lock().unwrap().last().unwrap()
        }
    }

    fn setup() -> (Arc<Recorder>, IoApic) {
        let sink = Arc::new(Recorder::default());
        let ioapic = IoApic::new(sink.clone());
        (sink, ioapic)
    }

    fn write_reg(ioapic: &IoApic, select: u32, value: u32) {
        ioapic.write(IOREGSEL, &select.to_le_bytes());
        ioapic.write(IOWIN, &value.to_le_bytes());
    }

    fn read_reg(ioapic: &IoApic, select: u32) -> u32 {
        ioapic.write(IOREGSEL, &select.to_le_bytes());
        let mut data = [0; 4];
        ioapic.read(IOWIN, &mut data);
        u32::from_le_bytes(data)
    }

    fn program(ioapic: &IoApic, pin: u32, low: u32, dest: u8) {
        write_reg(ioapic, 0x11 + 2 * pin, u32::from(dest) << 24);
        write_reg(ioapic, 0x10 + 2 * pin, low);
    }

    #[test]
    fn identification_registers_read_as_a_version_0x20_ioapic_with_24_entries() {
        let (sink, ioapic) = setup();
        assert_eq!(sink.last_routes(), [None; IOAPIC_PINS]);
        assert_eq!(read_reg(&ioapic, 1), 0x0017_0020);
        write_reg(&ioapic, 0, 0xff00_0000);
        assert_eq!(read_reg(&ioapic, 0), 0x0f00_0000);
        assert_eq!(read_reg(&ioapic, 2), 0x0f00_0000);
        // Read-only and absent registers ignore writes.
        write_reg(&ioapic, 1, 0);
        write_reg(&ioapic, 0x40, 0x1234);
        assert_eq!(read_reg(&ioapic, 1), 0x0017_0020);
        assert_eq!(read_reg(&ioapic, 0x40), 0);
        // Every entry starts masked.
        assert_eq!(read_reg(&ioapic, 0x10 + 2 * 23), MASKED as u32);
    }

    #[test]
    fn an_edge_pin_sends_its_msi_on_each_rising_edge_and_routes_its_gsi() {
        let (sink, ioapic) = setup();
        ioapic.set_irq(4, true).unwrap();
        assert!(sink.take_sent().is_empty(), "masked");
        ioapic.set_irq(4, false).unwrap();
        // Vector 0x24, fixed, logical destination 0x3.
        program(&ioapic, 4, 0x24 | (1 << 11), 3);
        let msi = IoApicMsi {
            address: 0xfee0_3004,
            data: 0x24,
        };
        assert_eq!(sink.last_routes()[4], Some(msi));
        ioapic.set_irq(4, true).unwrap();
        ioapic.set_irq(4, true).unwrap();
        ioapic.set_irq(4, false).unwrap();
        ioapic.set_irq(4, true).unwrap();
        assert_eq!(sink.take_sent(), [msi, msi]);
        // Masked again: no route, nothing sent.
        program(&ioapic, 4, 0x24 | MASKED as u32, 3);
        assert_eq!(sink.last_routes()[4], None);
        ioapic.set_irq(4, false).unwrap();
        ioapic.set_irq(4, true).unwrap();
        assert!(sink.take_sent().is_empty());
        assert_eq!(
            ioapic.set_irq(24, true),
            Err(IoApicError::NoSuchPin { pin: 24 })
        );
    }

    #[test]
    fn a_level_pin_waits_for_the_eoi_and_sends_again_while_asserted() {
        let (sink, ioapic) = setup();
        program(
            &ioapic,
            9,
            0x39 | TRIGGER_LEVEL as u32 | POLARITY_LOW as u32,
            0,
        );
        let msi = IoApicMsi {
            address: 0xfee0_0000,
            data: 0xc039,
        };
        assert_eq!(sink.last_routes()[9], Some(msi));
        ioapic.set_irq(9, true).unwrap();
        ioapic.set_irq(9, true).unwrap();
        assert_eq!(sink.take_sent(), [msi], "once until the EOI");
        assert_ne!(read_reg(&ioapic, 0x10 + 18) & REMOTE_IRR as u32, 0);
        // An EOI of another vector changes nothing.
        ioapic.end_of_interrupt(0x38);
        assert!(sink.take_sent().is_empty());
        // Still asserted at the EOI: sent again.
        ioapic.end_of_interrupt(0x39);
        assert_eq!(sink.take_sent(), [msi]);
        // Deasserted, then EOI (through the EOI register): out of service, nothing sent.
        ioapic.set_irq(9, false).unwrap();
        ioapic.write(EOI, &0x39u32.to_le_bytes());
        assert!(sink.take_sent().is_empty());
        assert_eq!(read_reg(&ioapic, 0x10 + 18) & REMOTE_IRR as u32, 0);
    }

    #[test]
    fn a_masked_level_pin_in_service_keeps_its_route_until_the_eoi() {
        let (sink, ioapic) = setup();
        let low = 0x41 | TRIGGER_LEVEL as u32;
        program(&ioapic, 10, low, 1);
        ioapic.set_irq(10, true).unwrap();
        assert_eq!(sink.take_sent().len(), 1);
        program(&ioapic, 10, low | MASKED as u32, 1);
        assert!(sink.last_routes()[10].is_some(), "in service");
        ioapic.end_of_interrupt(0x41);
        assert!(sink.take_sent().is_empty(), "masked");
        assert_eq!(sink.last_routes()[10], None);
        // Unmasked with the line still asserted: sent now.
        program(&ioapic, 10, low, 1);
        assert_eq!(sink.take_sent().len(), 1);
    }

    #[test]
    fn undeliverable_modes_and_bad_accesses_are_dropped_and_counted() {
        let (sink, ioapic) = setup();
        // ExtINT (7) and reserved (3): no route, nothing sent.
        program(&ioapic, 0, 0x7 << 8, 0);
        program(&ioapic, 1, 0x3 << 8, 0);
        assert_eq!(sink.last_routes()[0], None);
        assert_eq!(sink.last_routes()[1], None);
        ioapic.set_irq(0, true).unwrap();
        ioapic.set_irq(1, true).unwrap();
        assert!(sink.take_sent().is_empty());
        assert_eq!(ioapic.dropped(), 2);
        // Reserved bits and delivery status never stick; remote IRR is not writable.
        write_reg(&ioapic, 0x12, u32::MAX);
        assert_eq!(read_reg(&ioapic, 0x12), (WRITABLE & 0xffff_ffff) as u32);
        write_reg(&ioapic, 0x13, u32::MAX);
        assert_eq!(read_reg(&ioapic, 0x13), 0xff00_0000);
        // Wrong widths and offsets.
        let mut byte = [0xaa];
        ioapic.read(IOWIN, &mut byte);
        assert_eq!(byte, [0]);
        ioapic.write(0x20, &[0; 4]);
        ioapic.write(IOREGSEL, &[1, 2]);
        assert_eq!(ioapic.ignored_accesses(), 3);
    }

    #[test]
    fn state_round_trips_and_hostile_state_is_refused() {
        let (_, ioapic) = setup();
        program(&ioapic, 3, 0x33 | TRIGGER_LEVEL as u32, 2);
        ioapic.set_irq(3, true).unwrap();
        let state = ioapic.save_state();
        let (sink, mut fresh) = setup();
        fresh.restore_state(&state).unwrap();
        assert_eq!(fresh.save_state(), state);
        assert!(sink.last_routes()[3].is_some());
        assert!(sink.take_sent().is_empty());
        // The EOI after the restore resends the still-asserted line.
        fresh.end_of_interrupt(0x33);
        assert_eq!(sink.take_sent().len(), 1);

        let bad = [
            IoApicState {
                id: 16,
                ..state.clone()
            },
            IoApicState {
                lines: 1 << 24,
                ..state.clone()
            },
            IoApicState {
                redirection: vec![0; 23],
                ..state.clone()
            },
            IoApicState {
                redirection: vec![1 << 17; 24],
                ..state.clone()
            },
            IoApicState {
                redirection: vec![DELIVERY_STATUS; 24],
                ..state.clone()
            },
            IoApicState {
                redirection: vec![REMOTE_IRR; 24],
                ..state.clone()
            },
        ];
        for state in bad {
            let (_, mut fresh) = setup();
            let err = fresh.restore_state(&state).unwrap_err();
            assert!(matches!(err, RestoreError::IoApic { .. }), "{err}");
        }
    }
}
