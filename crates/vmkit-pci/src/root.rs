//! The root bus and its host bridge: [`PciRoot`].
//!
//! The root holds up to 32 functions on bus 0 (function 0 of each slot;
//! slot 0 is the host bridge). The guest reaches their configuration space
//! two ways: the conventional mechanism, an address written to port `0xCF8`
//! and data through ports `0xCFC`–`0xCFF` ([`PciRoot`] implements
//! [`DevicePio`] for those eight ports), and ECAM, a memory window with
//! 4 KiB per function ([`Ecam`]). Accesses to BARs reach the root through
//! [`BarWindow`], an MMIO range that the VMM puts on its bus covering every
//! memory BAR; the root finds the function whose decoded BAR holds the
//! address, so a guest that moves a BAR inside the window keeps working.
//!
//! Every access is checked: a configuration access of a width or alignment
//! the specification does not allow, or to a function that does not exist,
//! reads all ones and writes nothing; so does a BAR access that no decoded
//! BAR holds. [`PciRoot::invalid_accesses`] counts them.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{DeviceMmio, DevicePio};

use crate::config::{
    valid_access, BarRegion, ConfigSpace, PciIds, BAR_COUNT, CONFIG_SPACE_SIZE, LEGACY_CONFIG_SIZE,
};

/// The I/O port of the configuration address register.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// The ports [`PciRoot`] answers from [`CONFIG_ADDRESS_PORT`]: address and data.
pub const CONFIG_PORTS: u16 = 8;
/// The slots of a bus.
pub const SLOTS: usize = 32;
/// The size of the ECAM window for bus 0 (32 slots × 8 functions × 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
/// The configuration address register's enable bit.
const ADDRESS_ENABLE: u32 = 1 << 31;

/// The host bridge's identifiers: Red Hat's ID for a generic PCIe host bridge, class
/// "host bridge".
pub const HOST_BRIDGE_IDS: PciIds = PciIds {
    vendor: 0x1b36,
    device: 0x0008,
    revision: 0,
    class: 0x06_00_00,
    subsystem_vendor: 0x1b36,
    subsystem: 0,
};

/// A function on the root bus. The root calls it with accesses it has already checked
/// (configuration offsets inside the 4 KiB space, 1, 2 or 4 bytes, naturally aligned; BAR
/// accesses inside a BAR the function decodes).
pub trait PciDevice: Send + Sync {
    /// Reads the configuration space.
    fn config_read(&self, offset: u16, data: &mut [u8]);
    /// Writes the configuration space.
    fn config_write(&self, offset: u16, data: &[u8]);
    /// The BARs the function decodes now (see `ConfigSpace::decoded_bars`).
    fn decoded_bars(&self) -> [Option<BarRegion>; BAR_COUNT];
    /// Reads `data.len()` bytes at `offset` in BAR `bar`.
    fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` in BAR `bar`.
    fn bar_write(&self, bar: u8, offset: u64, data: &[u8]);
}

/// A function with a configuration space and no BARs: the host bridge.
#[derive(Debug)]
pub struct ConfigOnly(Mutex<ConfigSpace>);

impl ConfigOnly {
    /// A function with `space` as its configuration space.
    pub fn new(space: ConfigSpace) -> ConfigOnly {
        ConfigOnly(Mutex::new(space))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is a plain store: state after a panic elsewhere is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PciDevice for ConfigOnly {
    fn config_read(&self, offset: u16, data: &mut [u8]) {
        lock(&self.0).read(u64::from(offset), data);
    }
    fn config_write(&self, offset: u16, data: &[u8]) {
        lock(&self.0).write(u64::from(offset), data);
    }
    fn decoded_bars(&self) -> [Option<BarRegion>; BAR_COUNT] {
        [None; BAR_COUNT]
    }
    fn bar_read(&self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

/// Errors placing functions on the root bus.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// Every slot holds a function.
    #[error("every one of the {SLOTS} slots of bus 0 is taken")]
    BusFull,
    /// The slot is out of range or taken.
    #[error("slot {slot} is out of range (0 to 31) or taken")]
    SlotTaken {
        /// The slot.
        slot: u8,
    },
}

/// The root bus behind the host bridge; see the [module documentation](self).
pub struct PciRoot {
    slots: Vec<Option<Arc<dyn PciDevice>>>,
    address: AtomicU32,
    invalid: AtomicU64,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used: Vec<usize> = (0..SLOTS).filter(|&s| self.slots[s].is_some()).collect();
        f.debug_struct("PciRoot")
            .field("slots", &used)
            .field("address", &self.address)
            .field("invalid", &self.invalid)
            .finish()
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        PciRoot::new()
    }
}

impl PciRoot {
    /// A root bus with the host bridge ([`HOST_BRIDGE_IDS`]) at slot 0.
    pub fn new() -> PciRoot {
        let mut slots: Vec<Option<Arc<dyn PciDevice>>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(ConfigOnly::new(ConfigSpace::new(HOST_BRIDGE_IDS))));
        PciRoot {
            slots,
            address: AtomicU32::new(0),
            invalid: AtomicU64::new(0),
        }
    }

    /// Puts `device` in the lowest free slot; returns the slot.
    pub fn add_device(&mut self, device: Arc<dyn PciDevice>) -> Result<u8, RootError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(RootError::BusFull)?;
        self.slots[slot] = Some(device);
        Ok(slot as u8)
    }

    /// The lowest free slot, if any (where [`PciRoot::add_device`] would put a function).
    pub fn free_slot(&self) -> Option<u8> {
        self.slots.iter().position(Option::is_none).map(|s| s as u8)
    }

    /// How many accesses were refused (width, alignment, no such function or BAR).
    pub fn invalid_accesses(&self) -> u64 {
        self.invalid.load(Ordering::Relaxed)
    }

    fn refuse(&self) {
        self.invalid.fetch_add(1, Ordering::Relaxed);
    }

    /// The function at `bus`/`slot`/`function`, if there is one (bus 0, function 0 only).
    fn function(&self, bus: u32, slot: u32, function: u32) -> Option<&Arc<dyn PciDevice>> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(slot as usize)?.as_ref()
    }

    /// A configuration read of the function at `bus`/`slot`/`function`, `offset` in its
    /// space of `limit` bytes; all ones if refused.
    pub fn config_read(
        &self,
        bus: u32,
        slot: u32,
        function: u32,
        offset: u64,
        limit: usize,
        data: &mut [u8],
    ) {
        match self.function(bus, slot, function) {
            Some(dev) if valid_access(offset, data.len(), limit) => {
                dev.config_read(offset as u16, data)
            }
            found => {
                data.fill(0xff);
                // An absent function is how the guest enumerates: not an error.
                if found.is_some() {
                    self.refuse();
                }
            }
        }
    }

    /// A configuration write; ignored if refused.
    pub fn config_write(
        &self,
        bus: u32,
        slot: u32,
        function: u32,
        offset: u64,
        limit: usize,
        data: &[u8],
    ) {
        match self.function(bus, slot, function) {
            Some(dev) if valid_access(offset, data.len(), limit) => {
                dev.config_write(offset as u16, data)
            }
            _ => self.refuse(),
        }
    }

    /// Splits an ECAM offset into bus, slot, function and register.
    fn ecam(offset: u64) -> (u32, u32, u32, u64) {
        let bus = (offset >> 20) as u32;
        let slot = ((offset >> 15) & 0x1f) as u32;
        let function = ((offset >> 12) & 0x7) as u32;
        (bus, slot, function, offset & 0xfff)
    }

    /// An access through ports `0xCFC`–`0xCFF` at `port_offset` (0 to 3): the register the
    /// address register selects, if it is enabled.
    fn data_port(&self, port_offset: u64, len: usize) -> Option<(u32, u32, u32, u64)> {
        let address = self.address.load(Ordering::Relaxed);
        if address & ADDRESS_ENABLE == 0 || port_offset + len as u64 > 4 {
            return None;
        }
        let bus = (address >> 16) & 0xff;
        let slot = (address >> 11) & 0x1f;
        let function = (address >> 8) & 0x7;
        let register = u64::from(address & 0xfc) + port_offset;
        Some((bus, slot, function, register))
    }

    /// A read of port `0xCF8 + offset`.
    pub fn port_read(&self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.load(Ordering::Relaxed).to_le_bytes());
            return;
        }
        match offset
            .checked_sub(4)
            .and_then(|o| self.data_port(o, data.len()))
        {
            Some((b, s, f, r)) => self.config_read(b, s, f, r, LEGACY_CONFIG_SIZE, data),
            None => {
                data.fill(0xff);
                self.refuse();
            }
        }
    }

    /// A write of port `0xCF8 + offset`.
    pub fn port_write(&self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Ok(b) = <[u8; 4]>::try_from(data) {
                // The reserved bits (30:24, 1:0) read back as zero.
                let v = u32::from_le_bytes(b) & 0x80ff_fffc;
                self.address.store(v, Ordering::Relaxed);
                return;
            }
        }
        match offset
            .checked_sub(4)
            .and_then(|o| self.data_port(o, data.len()))
        {
            Some((b, s, f, r)) => self.config_write(b, s, f, r, LEGACY_CONFIG_SIZE, data),
            None => self.refuse(),
        }
    }

    /// A read at `offset` in the ECAM window.
    pub fn ecam_read(&self, offset: u64, data: &mut [u8]) {
        let (b, s, f, r) = PciRoot::ecam(offset);
        self.config_read(b, s, f, r, CONFIG_SPACE_SIZE, data);
    }

    /// A write at `offset` in the ECAM window.
    pub fn ecam_write(&self, offset: u64, data: &[u8]) {
        let (b, s, f, r) = PciRoot::ecam(offset);
        self.config_write(b, s, f, r, CONFIG_SPACE_SIZE, data);
    }

    /// The function and BAR whose decoded memory BAR holds `data.len()` bytes at `addr`.
    fn bar_at(&self, addr: u64, len: usize) -> Option<(&Arc<dyn PciDevice>, u8, u64)> {
        self.slots.iter().flatten().find_map(|dev| {
            dev.decoded_bars()
                .into_iter()
                .flatten()
                .filter(|r| !r.io)
                .find_map(|r| r.offset_of(addr, len).map(|o| (dev, r.index, o)))
        })
    }

    /// A read of guest-physical `addr` in some function's memory BAR.
    pub fn bar_read(&self, addr: u64, data: &mut [u8]) {
        match self.bar_at(addr, data.len()) {
            Some((dev, bar, offset)) => dev.bar_read(bar, offset, data),
            None => {
                data.fill(0xff);
                self.refuse();
            }
        }
    }

    /// A write of guest-physical `addr` in some function's memory BAR.
    pub fn bar_write(&self, addr: u64, data: &[u8]) {
        match self.bar_at(addr, data.len()) {
            Some((dev, bar, offset)) => dev.bar_write(bar, offset, data),
            None => self.refuse(),
        }
    }
}

impl DevicePio for PciRoot {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.port_read(u64::from(offset), data);
    }
    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.port_write(u64::from(offset), data);
    }
}

/// The ECAM window of a [`PciRoot`], for an MMIO bus ([`ECAM_BUS_SIZE`] bytes for bus 0).
#[derive(Clone, Debug)]
pub struct Ecam(pub Arc<PciRoot>);

impl DeviceMmio for Ecam {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.0.ecam_read(offset, data);
    }
    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.0.ecam_write(offset, data);
    }
}

/// The memory BAR window of a [`PciRoot`], for an MMIO bus: put it at the range the BARs
/// are allocated from (the host bridge's memory window).
#[derive(Clone, Debug)]
pub struct BarWindow(pub Arc<PciRoot>);

impl DeviceMmio for BarWindow {
    fn mmio_read(&self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        match base.0.checked_add(offset) {
            Some(addr) => self.0.bar_read(addr, data),
            None => data.fill(0xff),
        }
    }
    fn mmio_write(&self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        if let Some(addr) = base.0.checked_add(offset) {
            self.0.bar_write(addr, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BarKind, COMMAND_MEMORY};

    #[derive(Debug)]
    struct Echo(Mutex<ConfigSpace>, Mutex<Vec<(u8, u64, Vec<u8>)>>);

    impl PciDevice for Echo {
        fn config_read(&self, offset: u16, data: &mut [u8]) {
            lock(&self.0).read(u64::from(offset), data);
        }
        fn config_write(&self, offset: u16, data: &[u8]) {
            lock(&self.0).write(u64::from(offset), data);
        }
        fn decoded_bars(&self) -> [Option<BarRegion>; BAR_COUNT] {
            lock(&self.0).decoded_bars()
        }
        fn bar_read(&self, bar: u8, offset: u64, data: &mut [u8]) {
            data.fill(bar + offset as u8);
        }
        fn bar_write(&self, bar: u8, offset: u64, data: &[u8]) {
            lock(&self.1).push((bar, offset, data.to_vec()));
        }
    }

    fn root_with_device() -> (PciRoot, Arc<Echo>) {
        let mut space = ConfigSpace::new(PciIds {
            vendor: 0x1af4,
            device: 0x1041,
            revision: 1,
            class: 0x02_00_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        space.add_bar(1, 0x1000, BarKind::Memory32).unwrap();
        space.set_bar_address(1, 0xd000_1000).unwrap();
        let dev = Arc::new(Echo(Mutex::new(space), Mutex::new(Vec::new())));
        let mut root = PciRoot::new();
        assert_eq!(root.add_device(dev.clone()).unwrap(), 1);
        (root, dev)
    }

    fn cf8(root: &PciRoot, slot: u32, register: u32) {
        root.port_write(0, &(ADDRESS_ENABLE | slot << 11 | register).to_le_bytes());
    }

    #[test]
    fn both_mechanisms_reach_the_same_function() {
        let (root, _) = root_with_device();
        let mut id = [0u8; 4];
        cf8(&root, 1, 0);
        root.port_read(4, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1041_1af4);
        let mut via_ecam = [0u8; 4];
        root.ecam_read(1 << 15, &mut via_ecam);
        assert_eq!(via_ecam, id);
        // The host bridge at 00.0.
        root.ecam_read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0008_1b36);
        // A byte of the device ID through port 0xCFE.
        let mut byte = [0u8; 1];
        cf8(&root, 1, 0);
        root.port_read(6, &mut byte);
        assert_eq!(byte, [0x41]);
        assert_eq!(root.invalid_accesses(), 0);
    }

    #[test]
    fn absent_functions_and_bad_accesses_read_all_ones() {
        let (root, _) = root_with_device();
        let mut v = [0u8; 4];
        for offset in [2u64 << 15, 1 << 20, (1 << 15) | (1 << 12)] {
            root.ecam_read(offset, &mut v);
            assert_eq!(v, [0xff; 4], "{offset:#x}");
        }
        assert_eq!(root.invalid_accesses(), 0);
        // Misaligned, through the ports and through ECAM.
        cf8(&root, 1, 0);
        let mut two = [0u8; 2];
        root.port_read(7, &mut two);
        assert_eq!(two, [0xff; 2]);
        root.ecam_read((1 << 15) + 1, &mut two);
        assert_eq!(two, [0xff; 2]);
        root.ecam_read(1 << 15, &mut [0u8; 8]);
        // Disabled address register.
        root.port_write(0, &0u32.to_le_bytes());
        root.port_read(4, &mut v);
        assert_eq!(v, [0xff; 4]);
        assert_eq!(root.invalid_accesses(), 4);
        // The address register keeps only its defined bits.
        root.port_write(0, &u32::MAX.to_le_bytes());
        root.port_read(0, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x80ff_fffc);
    }

    #[test]
    fn bar_accesses_follow_the_programmed_and_decoded_bar() {
        let (root, dev) = root_with_device();
        let mut v = [0u8; 4];
        root.bar_read(0xd000_1010, &mut v);
        assert_eq!(v, [0xff; 4], "memory decoding is off");
        root.ecam_write((1 << 15) | 4, &COMMAND_MEMORY.to_le_bytes());
        root.bar_read(0xd000_1010, &mut v);
        assert_eq!(v, [0x11; 4]);
        // The guest moves the BAR.
        root.ecam_write((1 << 15) | 0x14, &0xd000_8000u32.to_le_bytes());
        root.bar_write(0xd000_8004, &[1, 2]);
        assert_eq!(*lock(&dev.1), [(1, 4, vec![1, 2])]);
        root.bar_read(0xd000_1010, &mut v);
        assert_eq!(v, [0xff; 4]);
        // Straddling the end.
        root.bar_read(0xd000_8ffe, &mut v);
        assert_eq!(v, [0xff; 4]);
    }

    #[test]
    fn slots_fill_up() {
        let mut root = PciRoot::new();
        for _ in 1..SLOTS {
            root.add_device(Arc::new(ConfigOnly::new(ConfigSpace::new(HOST_BRIDGE_IDS))))
                .unwrap();
        }
        assert_eq!(root.free_slot(), None);
        assert_eq!(
            root.add_device(Arc::new(ConfigOnly::new(ConfigSpace::new(HOST_BRIDGE_IDS)))),
            Err(RootError::BusFull)
        );
    }
}
