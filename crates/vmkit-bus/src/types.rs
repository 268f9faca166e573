//! The values the bus reports: address spaces, ranges, access directions and exit outcomes.

use std::fmt;

/// One of the two address spaces a bus dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// x86 I/O ports, `0..=0xffff`.
    Pio,
    /// Guest-physical memory-mapped I/O addresses, `0..=u64::MAX`.
    Mmio,
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Space::Pio => "port",
            Space::Mmio => "MMIO",
        })
    }
}

/// Whether the guest read or wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// A read (`in`, or a load from MMIO): the bus fills the exit's data.
    Read,
    /// A write (`out`, or a store to MMIO).
    Write,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// An inclusive address range `first..=last`, as registered for a device.
///
/// Unlike vm-device's `BusRange` (whose equality compares base addresses only), two spans are
/// equal only when both ends are; it prints as `0x3f8..=0x3ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    /// The first address of the range.
    pub first: u64,
    /// The last address of the range (inclusive), never below `first`.
    pub last: u64,
}

impl Span {
    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: u64) -> bool {
        self.first <= addr && addr <= self.last
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x}", self.first, self.last)
    }
}

/// Why an exit was inconsistent, so the bus refused to pass it to any device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The exit carried no data bytes at all.
    #[error("the exit carries no data")]
    Empty,
    /// A port access width other than 1, 2 or 4 bytes.
    #[error("port access width {size} is not 1, 2 or 4 bytes")]
    PioWidth {
        /// The width the exit gave.
        size: u8,
    },
    /// The data of a port exit is not a whole number of accesses of the given width.
    #[error("{len} data bytes are not a whole number of {size}-byte port accesses")]
    RaggedPioData {
        /// The width of one access.
        size: u8,
        /// The length of the exit's data.
        len: usize,
    },
    /// An MMIO access wider than [`crate::MAX_MMIO_WIDTH`] bytes.
    #[error("MMIO access of {len} bytes is wider than {max} bytes", max = crate::MAX_MMIO_WIDTH)]
    MmioWidth {
        /// The length of the exit's data.
        len: usize,
    },
}

/// What [`Bus::handle_exit`](crate::Bus::handle_exit) (or one of the direct access methods)
/// did with an exit.
///
/// In every case but [`ExitOutcome::NotBusExit`], the data of a read has been filled: by the
/// device, or with all-ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitOutcome {
    /// A device took the access(es).
    Handled {
        /// The address space.
        space: Space,
        /// Read or write.
        access: Access,
        /// The range the device is registered at; `range.first` identifies the device.
        range: Span,
        /// Offset of the accessed address from `range.first`, as passed to the device.
        offset: u64,
        /// How many accesses the device received: more than one only for a port exit that
        /// batches a string instruction (`rep ins` / `rep outs`).
        accesses: usize,
    },
    /// No single device holds the accessed bytes: a read was answered with all-ones, a write
    /// was dropped, and the bus's [`UnmappedCounts`] went up by `accesses`.
    Unmapped {
        /// The address space.
        space: Space,
        /// Read or write.
        access: Access,
        /// The accessed port or address.
        addr: u64,
        /// Width of one access in bytes.
        width: usize,
        /// How many accesses the exit held.
        accesses: usize,
        /// The registered range the access ran into, when it was partly inside one (it
        /// started inside and ran past its end, or started in a hole and ran into it); `None`
        /// when it touched no device at all.
        straddles: Option<Span>,
    },
    /// The exit was inconsistent: no device saw it, a read was answered with all-ones, and the
    /// bus's malformed-exit count went up by one.
    Malformed {
        /// The address space.
        space: Space,
        /// Read or write.
        access: Access,
        /// The accessed port or address.
        addr: u64,
        /// What was wrong with it.
        problem: Malformed,
    },
    /// An IOAPIC EOI exit went to the bus's EOI listener.
    Eoi {
        /// The vector the guest ended.
        vector: u8,
    },
    /// The exit is not a port or MMIO access (for example `Hlt`), nor an IOAPIC EOI the bus
    /// has a listener for; the bus left it alone.
    NotBusExit,
}

/// How many accesses reached no device, per address space and direction.
///
/// A port exit that batches `n` accesses counts `n`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnmappedCounts {
    /// Port reads answered with all-ones.
    pub pio_reads: u64,
    /// Port writes dropped.
    pub pio_writes: u64,
    /// MMIO reads answered with all-ones.
    pub mmio_reads: u64,
    /// MMIO writes dropped.
    pub mmio_writes: u64,
}
