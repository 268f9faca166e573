//! A type-0 configuration space: [`ConfigSpace`].
//!
//! The space keeps a write mask beside its bytes: a guest write changes only
//! the bits the mask allows, so read-only fields (identifiers, the BAR type
//! bits, the capability list) stay as the device built them, and the BAR
//! sizing protocol needs no special case: a BAR's mask clears its size bits,
//! so writing all ones and reading back gives the size.

/// The size of the configuration space a function answers through ECAM
/// (PCI Express extended configuration space).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// The part reachable through ports `0xCF8`/`0xCFC` (conventional PCI).
pub const LEGACY_CONFIG_SIZE: usize = 256;
/// The number of BARs of a type-0 header.
pub const BAR_COUNT: usize = 6;

/// The command register's bits a guest may set: I/O space, memory space, bus master and
/// INTx disable.
const COMMAND_WRITABLE: u16 = 0x0407;
/// Command bit: the function decodes its I/O BARs.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command bit: the function decodes its memory BARs.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command bit: the function may master the bus (DMA, MSI).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command bit: INTx is disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status bit: the function has a capability list.
const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Where capabilities start (after the type-0 header).
const FIRST_CAPABILITY: usize = 0x40;
/// Offsets of header fields.
mod reg {
    pub const VENDOR: usize = 0x00;
    pub const DEVICE: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION: usize = 0x08;
    pub const CLASS: usize = 0x09;
    pub const CACHE_LINE: usize = 0x0c;
    pub const BAR0: usize = 0x10;
    pub const SUBSYSTEM_VENDOR: usize = 0x2c;
    pub const SUBSYSTEM: usize = 0x2e;
    pub const CAPABILITIES: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3c;
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// What a function is: the identifiers of its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class, subclass and programming interface (24 bits).
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// Memory below 4 GiB.
    Memory32,
    /// Memory anywhere; takes this BAR and the next.
    Memory64 {
        /// Whether reads have no side effects.
        prefetchable: bool,
    },
    /// I/O ports.
    Io,
}

impl BarKind {
    /// The read-only type bits at the bottom of the BAR.
    fn type_bits(self) -> u32 {
        match self {
            BarKind::Memory32 => 0,
            BarKind::Memory64 { prefetchable } => 0b100 | if prefetchable { 0b1000 } else { 0 },
            BarKind::Io => 1,
        }
    }

    /// The smallest size of a BAR of this kind.
    fn min_size(self) -> u64 {
        match self {
            BarKind::Io => 4,
            _ => 16,
        }
    }

    /// The largest size of a BAR of this kind.
    fn max_size(self) -> u64 {
        match self {
            BarKind::Io => 256,
            BarKind::Memory32 => 1 << 31,
            BarKind::Memory64 { .. } => 1 << 63,
        }
    }
}

/// A BAR the function decodes now: its address as the guest programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    /// The BAR's index (0 to 5).
    pub index: u8,
    /// The first address (guest-physical, or an I/O port).
    pub base: u64,
    /// The size in bytes (a power of two).
    pub size: u64,
    /// Whether it is an I/O BAR.
    pub io: bool,
}

impl BarRegion {
    /// Whether `len` bytes at `addr` fall wholly in the region; the offset if so.
    pub fn offset_of(&self, addr: u64, len: usize) -> Option<u64> {
        let offset = addr.checked_sub(self.base)?;
        let end = offset.checked_add(len as u64)?;
        (end <= self.size).then_some(offset)
    }
}

/// Errors building a configuration space; each names the value refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A BAR index beyond 5 (or 4, for a 64-bit BAR, which takes two).
    #[error("BAR index {index} is out of range for a {kind:?} BAR")]
    BarIndex {
        /// The index.
        index: usize,
        /// The kind asked for.
        kind: BarKind,
    },
    /// The BAR (or its upper half) is already defined.
    #[error("BAR {index} is already in use")]
    BarInUse {
        /// The index.
        index: usize,
    },
    /// The size is not a power of two within the kind's limits.
    #[error("BAR {index}: size {size:#x} is not a power of two from {min:#x} to {max:#x}")]
    BarSize {
        /// The index.
        index: usize,
        /// The size asked for.
        size: u64,
        /// The smallest size of its kind.
        min: u64,
        /// The largest size of its kind.
        max: u64,
    },
    /// No BAR is defined at the index.
    #[error("BAR {index} is not defined")]
    NoSuchBar {
        /// The index.
        index: usize,
    },
    /// The address is not aligned to the BAR's size, or out of its kind's reach.
    #[error("BAR {index}: address {addr:#x} is not aligned to its size {size:#x} or out of reach")]
    BarAddress {
        /// The index.
        index: usize,
        /// The address.
        addr: u64,
        /// The BAR's size.
        size: u64,
    },
    /// The capability does not fit in the configuration space left.
    #[error("a capability of {len} bytes does not fit: {left} bytes are left below 0x100")]
    CapabilitySpace {
        /// Its length with its header.
        len: usize,
        /// The space left.
        left: usize,
    },
    /// The capability's write mask is longer than its body.
    #[error("capability write mask of {mask} bytes is longer than its {body}-byte body")]
    CapabilityMask {
        /// The mask's length.
        mask: usize,
        /// The body's length.
        body: usize,
    },
}

/// Whether a configuration access is one the specification allows: 1, 2 or 4 bytes, naturally
/// aligned, inside a space of `limit` bytes.
pub fn valid_access(offset: u64, len: usize, limit: usize) -> bool {
    matches!(len, 1 | 2 | 4)
        && offset.is_multiple_of(len as u64)
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= limit as u64)
}

/// A type-0 configuration space (4 KiB, the first 256 bytes conventional); see the
/// [module documentation](self).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: Box<[u8]>,
    wmask: Box<[u8]>,
    bars: [Option<(u64, BarKind)>; BAR_COUNT],
    /// Where the next capability goes.
    cap_next: usize,
    /// The offset of the last capability's `next` byte (or of the capabilities pointer).
    cap_link: usize,
}

impl ConfigSpace {
    /// A space with the identifiers `ids`, no BARs, no capabilities, no interrupt pin.
    pub fn new(ids: PciIds) -> ConfigSpace {
        let mut space = ConfigSpace {
            bytes: vec![0; CONFIG_SPACE_SIZE].into_boxed_slice(),
            wmask: vec![0; CONFIG_SPACE_SIZE].into_boxed_slice(),
            bars: [None; BAR_COUNT],
            cap_next: FIRST_CAPABILITY,
            cap_link: reg::CAPABILITIES,
        };
        space.put(reg::VENDOR, &ids.vendor.to_le_bytes());
        space.put(reg::DEVICE, &ids.device.to_le_bytes());
        space.put(reg::REVISION, &[ids.revision]);
        space.put(reg::CLASS, &ids.class.to_le_bytes()[..3]);
        space.put(reg::SUBSYSTEM_VENDOR, &ids.subsystem_vendor.to_le_bytes());
        space.put(reg::SUBSYSTEM, &ids.subsystem.to_le_bytes());
        space.mask(reg::COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        space.mask(reg::CACHE_LINE, &[0xff]);
        space.mask(reg::INTERRUPT_LINE, &[0xff]);
        space
    }

    /// Writes `data` at `offset` as the device (no mask). Out-of-range bytes are dropped.
    pub fn put(&mut self, offset: usize, data: &[u8]) {
        if let Some(dst) = self
            .bytes
            .get_mut(offset..offset.saturating_add(data.len()))
        {
            dst.copy_from_slice(data);
        }
    }

    /// Sets which bits of the bytes at `offset` the guest may write.
    fn mask(&mut self, offset: usize, mask: &[u8]) {
        if let Some(dst) = self
            .wmask
            .get_mut(offset..offset.saturating_add(mask.len()))
        {
            dst.copy_from_slice(mask);
        }
    }

    /// Reads `data.len()` bytes at `offset` as the device sees them (bytes out of range read
    /// as zero).
    pub fn get(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// The little-endian 16-bit value at `offset`.
    pub fn get_u16(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.get(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// The little-endian 32-bit value at `offset`.
    pub fn get_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.get(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The guest's read: `false` (and all ones in `data`) for an access the specification
    /// does not allow (see [`valid_access`]).
    pub fn read(&self, offset: u64, data: &mut [u8]) -> bool {
        if !valid_access(offset, data.len(), CONFIG_SPACE_SIZE) {
            data.fill(0xff);
            return false;
        }
        self.get(offset as usize, data);
        true
    }

    /// The guest's write: only the bits the write mask allows change. `false` (and nothing
    /// changed) for an access the specification does not allow.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        if !valid_access(offset, data.len(), CONFIG_SPACE_SIZE) {
            return false;
        }
        let at = offset as usize;
        for (i, &v) in data.iter().enumerate() {
            if let (Some(b), Some(&m)) = (self.bytes.get_mut(at + i), self.wmask.get(at + i)) {
                *b = (*b & !m) | (v & m);
            }
        }
        true
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get_u16(reg::COMMAND)
    }

    /// Sets the interrupt pin (1 = INTA, …, 4 = INTD; 0 = none) and the line the firmware
    /// routed it to (what the guest reads from the interrupt line register).
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.put(reg::INTERRUPT_PIN, &[pin.min(4)]);
        self.put(reg::INTERRUPT_LINE, &[line]);
    }

    /// Defines BAR `index` of `size` bytes (a power of two) and `kind`, at address 0 until
    /// [`ConfigSpace::set_bar_address`].
    pub fn add_bar(&mut self, index: usize, size: u64, kind: BarKind) -> Result<(), ConfigError> {
        let wide = matches!(kind, BarKind::Memory64 { .. });
        if index >= BAR_COUNT || (wide && index + 1 >= BAR_COUNT) {
            return Err(ConfigError::BarIndex { index, kind });
        }
        let taken = |i: usize| {
            self.bars[i].is_some()
                || (i > 0 && matches!(self.bars[i - 1], Some((_, BarKind::Memory64 { .. }))))
        };
        if taken(index) || (wide && taken(index + 1)) {
            return Err(ConfigError::BarInUse { index });
        }
        let (min, max) = (kind.min_size(), kind.max_size());
        if !size.is_power_of_two() || size < min || size > max {
            return Err(ConfigError::BarSize {
                index,
                size,
                min,
                max,
            });
        }
        let low_bits: u32 = if kind == BarKind::Io { 0b11 } else { 0b1111 };
        let at = reg::BAR0 + 4 * index;
        self.bars[index] = Some((size, kind));
        self.put(at, &kind.type_bits().to_le_bytes());
        let low_mask = !((size - 1) as u32) & !low_bits;
        self.mask(at, &low_mask.to_le_bytes());
        if wide {
            let high_mask = !((size - 1) >> 32) as u32;
            self.mask(at + 4, &high_mask.to_le_bytes());
        }
        Ok(())
    }

    /// Places BAR `index` at `addr` (aligned to its size; below 4 GiB for a 32-bit BAR, below
    /// 64 KiB for an I/O BAR), as firmware would before the guest boots.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), ConfigError> {
        let (size, kind) = self
            .bars
            .get(index)
            .copied()
            .flatten()
            .ok_or(ConfigError::NoSuchBar { index })?;
        let reach = match kind {
            BarKind::Io => 1 << 16,
            BarKind::Memory32 => 1 << 32,
            BarKind::Memory64 { .. } => u64::MAX,
        };
        let fits = addr.checked_add(size - 1).is_some_and(|last| last < reach);
        if !addr.is_multiple_of(size) || !fits {
            return Err(ConfigError::BarAddress { index, addr, size });
        }
        let at = reg::BAR0 + 4 * index;
        let low = (addr as u32) | kind.type_bits();
        self.put(at, &low.to_le_bytes());
        if matches!(kind, BarKind::Memory64 { .. }) {
            self.put(at + 4, &((addr >> 32) as u32).to_le_bytes());
        }
        Ok(())
    }

    /// The size and kind of BAR `index`, if defined.
    pub fn bar(&self, index: usize) -> Option<(u64, BarKind)> {
        self.bars.get(index).copied().flatten()
    }

    /// The address BAR `index` holds now (as the guest last programmed it).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let (_, kind) = self.bar(index)?;
        let at = reg::BAR0 + 4 * index;
        let low = u64::from(self.get_u32(at));
        Some(match kind {
            BarKind::Io => low & !0b11,
            BarKind::Memory32 => low & !0b1111,
            BarKind::Memory64 { .. } => (low & !0b1111) | (u64::from(self.get_u32(at + 4)) << 32),
        })
    }

    /// The BARs the function decodes now: memory BARs while memory decoding is on, I/O BARs
    /// while I/O decoding is on. A BAR the guest is sizing (all ones) does not decode.
    pub fn decoded_bars(&self) -> [Option<BarRegion>; BAR_COUNT] {
        let command = self.command();
        let mut regions = [None; BAR_COUNT];
        for (index, region) in regions.iter_mut().enumerate() {
            let (Some((size, kind)), Some(base)) = (self.bar(index), self.bar_address(index))
            else {
                continue;
            };
            let io = kind == BarKind::Io;
            let on = if io {
                command & COMMAND_IO != 0
            } else {
                command & COMMAND_MEMORY != 0
            };
            let sizing = base == (!(size - 1) & self.bar_reach_mask(kind));
            if on && !sizing && base != 0 {
                *region = Some(BarRegion {
                    index: index as u8,
                    base,
                    size,
                    io,
                });
            }
        }
        regions
    }

    fn bar_reach_mask(&self, kind: BarKind) -> u64 {
        match kind {
            BarKind::Io => 0xffff_fffc,
            BarKind::Memory32 => 0xffff_fff0,
            BarKind::Memory64 { .. } => !0xf,
        }
    }

    /// Appends a capability with id `id` and `body` (what follows the id and next bytes);
    /// `wmask` gives the body's guest-writable bits (shorter than the body: the rest is
    /// read-only). Returns the capability's offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        wmask: &[u8],
    ) -> Result<u16, ConfigError> {
        if wmask.len() > body.len() {
            return Err(ConfigError::CapabilityMask {
                mask: wmask.len(),
                body: body.len(),
            });
        }
        let len = 2 + body.len();
        let at = self.cap_next;
        let left = LEGACY_CONFIG_SIZE - at;
        if len > left {
            return Err(ConfigError::CapabilitySpace { len, left });
        }
        self.put(at, &[id, 0]);
        self.put(at + 2, body);
        self.mask(at + 2, wmask);
        self.put(self.cap_link, &[at as u8]);
        self.cap_link = at + 1;
        self.cap_next = (at + len).next_multiple_of(4);
        let status = self.get_u16(reg::STATUS) | STATUS_CAPABILITIES;
        self.put(reg::STATUS, &status.to_le_bytes());
        Ok(at as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x01_80_00,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    fn read32(space: &ConfigSpace, offset: u64) -> u32 {
        let mut b = [0; 4];
        assert!(space.read(offset, &mut b));
        u32::from_le_bytes(b)
    }

    #[test]
    fn identifiers_are_read_only() {
        let mut space = ConfigSpace::new(ids());
        assert_eq!(read32(&space, 0), 0x1042_1af4);
        assert!(space.write(0, &[0; 4]));
        assert_eq!(read32(&space, 0), 0x1042_1af4);
        assert_eq!(read32(&space, 8) >> 8, 0x01_80_00);
    }

    #[test]
    fn only_the_command_bits_the_spec_allows_change() {
        let mut space = ConfigSpace::new(ids());
        assert!(space.write(4, &0xffffu16.to_le_bytes()));
        assert_eq!(space.command(), COMMAND_WRITABLE);
    }

    #[test]
    fn bar_sizing_protocol_gives_the_size_and_keeps_the_type_bits() {
        let mut space = ConfigSpace::new(ids());
        space.add_bar(0, 0x4000, BarKind::Memory32).unwrap();
        space
            .add_bar(2, 1 << 33, BarKind::Memory64 { prefetchable: true })
            .unwrap();
        space.add_bar(4, 0x20, BarKind::Io).unwrap();
        space.set_bar_address(0, 0xd000_0000).unwrap();
        assert_eq!(read32(&space, 0x10), 0xd000_0000);
        for bar in [0x10u64, 0x18, 0x1c, 0x20] {
            assert!(space.write(bar, &u32::MAX.to_le_bytes()));
        }
        assert_eq!(read32(&space, 0x10), !(0x4000 - 1));
        assert_eq!(read32(&space, 0x18), 0b1100); // 64-bit prefetchable, size bits below 4 GiB clear
        assert_eq!(read32(&space, 0x1c), !((1u32 << 1) - 1)); // 8 GiB: bit 33 up
        assert_eq!(read32(&space, 0x20), !(0x20 - 1) | 1);
        // Unused BARs and the ROM BAR size as zero: nothing there.
        assert!(space.write(0x24, &u32::MAX.to_le_bytes()));
        assert_eq!(read32(&space, 0x24), 0);
        assert!(space.write(0x30, &u32::MAX.to_le_bytes()));
        assert_eq!(read32(&space, 0x30), 0);
    }

    #[test]
    fn decoding_follows_the_command_register_and_sizing() {
        let mut space = ConfigSpace::new(ids());
        space.add_bar(0, 0x1000, BarKind::Memory32).unwrap();
        space.set_bar_address(0, 0xe000_0000).unwrap();
        assert_eq!(space.decoded_bars()[0], None);
        assert!(space.write(4, &COMMAND_MEMORY.to_le_bytes()));
        let region = space.decoded_bars()[0].unwrap();
        assert_eq!(
            (region.base, region.size, region.io),
            (0xe000_0000, 0x1000, false)
        );
        assert_eq!(region.offset_of(0xe000_0ffc, 4), Some(0xffc));
        assert_eq!(region.offset_of(0xe000_0ffe, 4), None);
        assert!(space.write(0x10, &u32::MAX.to_le_bytes()));
        assert_eq!(space.decoded_bars()[0], None);
    }

    #[test]
    fn bad_accesses_are_refused() {
        let mut space = ConfigSpace::new(ids());
        let mut b = [0u8; 4];
        assert!(!space.read(1, &mut b[..2]));
        assert_eq!(b[..2], [0xff, 0xff]);
        assert!(!space.read(4096, &mut b));
        assert!(!space.read(u64::MAX, &mut b[..1]));
        assert!(!space.read(0, &mut [0u8; 8]));
        assert!(!space.read(0, &mut [0u8; 3]));
        assert!(!space.write(6, &[0xff; 4]));
        assert!(!space.write(4094, &[0xff; 4]));
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut space = ConfigSpace::new(ids());
        assert!(matches!(
            space.add_bar(6, 0x1000, BarKind::Memory32),
            Err(ConfigError::BarIndex { .. })
        ));
        assert!(matches!(
            space.add_bar(
                5,
                0x1000,
                BarKind::Memory64 {
                    prefetchable: false
                }
            ),
            Err(ConfigError::BarIndex { .. })
        ));
        assert!(matches!(
            space.add_bar(0, 0x1800, BarKind::Memory32),
            Err(ConfigError::BarSize { .. })
        ));
        assert!(matches!(
            space.add_bar(0, 512, BarKind::Io),
            Err(ConfigError::BarSize { .. })
        ));
        space
            .add_bar(
                0,
                0x1000,
                BarKind::Memory64 {
                    prefetchable: false,
                },
            )
            .unwrap();
        assert_eq!(
            space.add_bar(1, 0x1000, BarKind::Memory32),
            Err(ConfigError::BarInUse { index: 1 })
        );
        assert!(matches!(
            space.set_bar_address(0, 0x1800),
            Err(ConfigError::BarAddress { .. })
        ));
        assert_eq!(
            space.set_bar_address(3, 0),
            Err(ConfigError::NoSuchBar { index: 3 })
        );
        space.add_bar(2, 0x1000, BarKind::Memory32).unwrap();
        assert!(matches!(
            space.set_bar_address(2, 0xffff_f000 + 0x1000),
            Err(ConfigError::BarAddress { .. })
        ));
        space.set_bar_address(0, 0x1_0000_0000).unwrap();
        assert_eq!(space.bar_address(0), Some(0x1_0000_0000));
    }

    #[test]
    fn capabilities_chain_and_keep_their_masks() {
        let mut space = ConfigSpace::new(ids());
        let a = space.add_capability(0x09, &[14, 1, 2, 3], &[]).unwrap();
        let b = space.add_capability(0x11, &[0, 0], &[0, 0xc0]).unwrap();
        assert_eq!((a, b), (0x40, 0x48));
        assert_eq!(read32(&space, 0x34) & 0xff, 0x40);
        assert_ne!(space.get_u16(6) & STATUS_CAPABILITIES, 0);
        assert_eq!(space.get_u16(0x40), 0x4809);
        assert!(space.write(0x48, &[0xff; 4]));
        assert_eq!(space.get_u32(0x48), 0xc000_0011);
        let big = [0u8; 200];
        assert!(matches!(
            space.add_capability(0x09, &big, &[]),
            Err(ConfigError::CapabilitySpace { .. })
        ));
        assert!(matches!(
            space.add_capability(0x09, &[0], &[0, 0]),
            Err(ConfigError::CapabilityMask { .. })
        ));
    }
}
