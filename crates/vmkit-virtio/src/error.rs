//! The error type shared by the split and packed queues.

use std::fmt;

use vm_memory::GuestMemoryError;

/// A guest-visible memory area used by a virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingArea {
    /// Split queue: the descriptor table.
    DescriptorTable,
    /// Split queue: the available (driver) ring.
    AvailRing,
    /// Split queue: the used (device) ring.
    UsedRing,
    /// Packed queue: the descriptor ring.
    DescriptorRing,
    /// Packed queue: the driver event suppression structure (driver area).
    DriverArea,
    /// Packed queue: the device event suppression structure (device area).
    DeviceArea,
}

impl fmt::Display for RingArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RingArea::DescriptorTable => "descriptor table",
            RingArea::AvailRing => "available ring",
            RingArea::UsedRing => "used ring",
            RingArea::DescriptorRing => "descriptor ring",
            RingArea::DriverArea => "driver event suppression area",
            RingArea::DeviceArea => "device event suppression area",
        })
    }
}

/// Where a descriptor sits: in the queue's own table/ring, or in an indirect table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescIndex {
    /// `true` if the index is into an indirect descriptor table.
    pub indirect: bool,
    /// The index inside that table (or ring).
    pub index: u16,
}

impl DescIndex {
    /// A descriptor of the queue's own descriptor table (split) or ring (packed).
    pub const fn ring(index: u16) -> Self {
        DescIndex {
            indirect: false,
            index,
        }
    }

    /// A descriptor of an indirect descriptor table.
    pub const fn indirect(index: u16) -> Self {
        DescIndex {
            indirect: true,
            index,
        }
    }
}

impl fmt::Display for DescIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.indirect {
            write!(f, "indirect descriptor {}", self.index)
        } else {
            write!(f, "descriptor {}", self.index)
        }
    }
}

/// Everything that can go wrong configuring or driving a virtqueue.
///
/// Errors caused by the driver (the guest) mean it violated the virtio
/// specification. Errors that make the queue unusable (an available index
/// that jumps, a head index out of range) also mark the queue *broken*: every
/// later `pop` returns [`Error::Broken`] until the queue is reset or its state
/// restored, and the device should set `DEVICE_NEEDS_RESET`. Errors found
/// while iterating one descriptor chain affect that request only: the device
/// fails it (e.g. returns it to the used ring with length 0) and carries on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The maximum queue size given to a constructor is 0 or above 32768.
    #[error("maximum queue size {max} is invalid: it must be between 1 and 32768")]
    InvalidMaxSize {
        /// The rejected maximum.
        max: u16,
    },
    /// The queue size is 0, above the maximum, or (split queues) not a power of two.
    #[error("queue size {size} is invalid: it must be between 1 and {max}{}", if *.power_of_two { " and a power of two" } else { "" })]
    InvalidQueueSize {
        /// The rejected size.
        size: u16,
        /// The queue's maximum size.
        max: u16,
        /// Whether the layout requires a power of two (split queues do).
        power_of_two: bool,
    },
    /// A ring address is not aligned as the specification requires.
    #[error("{area} address {addr:#x} is not aligned to {align} bytes")]
    MisalignedAddress {
        /// Which area.
        area: RingArea,
        /// The rejected address.
        addr: u64,
        /// The required alignment.
        align: u64,
    },
    /// A ring area's address plus its length wraps around the 64-bit address space.
    #[error("{area} at {addr:#x} with {len} bytes wraps around the address space")]
    AreaOverflow {
        /// Which area.
        area: RingArea,
        /// Its guest address.
        addr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// A ring area is not (entirely) backed by guest memory.
    #[error("{area} at {addr:#x} with {len} bytes is not in guest memory")]
    AreaOutOfMemory {
        /// Which area.
        area: RingArea,
        /// Its guest address.
        addr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// The queue configuration was changed while the queue is ready.
    #[error("queue configuration cannot change while the queue is ready")]
    ConfigWhileReady,
    /// The queue was used before it was made ready.
    #[error("queue is not ready")]
    NotReady,
    /// An earlier error made the queue unusable; it must be reset.
    #[error("queue is broken by an earlier driver error; it must be reset")]
    Broken,
    /// The driver's available index moved further than the queue size.
    #[error("available index {avail_idx} is {} entries past next_avail {next_avail}, more than the queue size {size}", .avail_idx.wrapping_sub(*.next_avail))]
    AvailIndexJump {
        /// The index read from the available ring.
        avail_idx: u16,
        /// The device's next available index.
        next_avail: u16,
        /// The queue size.
        size: u16,
    },
    /// The driver made more buffers available than the queue holds while the
    /// device still owns `in_flight` of them.
    #[error("driver made a buffer available with {in_flight} already in flight, the queue size {size} at most")]
    TooManyInFlight {
        /// Entries (split: chains; packed: descriptors) popped and not yet used.
        in_flight: u32,
        /// The queue size.
        size: u16,
    },
    /// A head index read from the available ring is not below the queue size.
    #[error(
        "head index {index} from available ring slot {slot} is out of range for queue size {size}"
    )]
    HeadIndexOutOfRange {
        /// The rejected head index.
        index: u16,
        /// The available ring slot it was read from.
        slot: u16,
        /// The queue size.
        size: u16,
    },
    /// A `next` field points outside the table being walked.
    #[error("{at} points to next index {next}, outside a table of {table_len} descriptors")]
    NextIndexOutOfRange {
        /// The descriptor carrying the bad `next`.
        at: DescIndex,
        /// The rejected next index.
        next: u16,
        /// The number of descriptors in that table.
        table_len: u32,
    },
    /// A chain visits more descriptors than its table holds (a loop, or too long).
    #[error("descriptor chain with head {head} is longer than {limit} descriptors (loop?)")]
    ChainTooLong {
        /// The chain's head index (split) or first ring slot (packed).
        head: u16,
        /// The limit that was exceeded.
        limit: u32,
    },
    /// An indirect descriptor was found but `VIRTIO_F_INDIRECT_DESC` was not negotiated.
    #[error("{at} is indirect but VIRTIO_F_INDIRECT_DESC was not negotiated")]
    IndirectNotNegotiated {
        /// The indirect descriptor.
        at: DescIndex,
    },
    /// An indirect descriptor also has the NEXT flag.
    #[error("{at} has both the INDIRECT and NEXT flags")]
    IndirectWithNext {
        /// The offending descriptor.
        at: DescIndex,
    },
    /// Packed queues: an indirect descriptor is part of a multi-descriptor list.
    #[error("{at} is indirect but part of a descriptor list")]
    IndirectInList {
        /// The offending descriptor.
        at: DescIndex,
    },
    /// An indirect table contains another indirect descriptor.
    #[error("{at} is indirect inside an indirect table")]
    NestedIndirect {
        /// The offending descriptor.
        at: DescIndex,
    },
    /// An indirect table's byte length is zero or not a multiple of 16.
    #[error("{at}: indirect table length {len} is not a non-zero multiple of 16")]
    InvalidIndirectLength {
        /// The indirect descriptor.
        at: DescIndex,
        /// The rejected length in bytes.
        len: u32,
    },
    /// An indirect table holds more descriptors than [`crate::MAX_INDIRECT_DESCRIPTORS`].
    #[error("{at}: indirect table of {len} bytes holds more than {max} descriptors")]
    IndirectTableTooLarge {
        /// The indirect descriptor.
        at: DescIndex,
        /// The table length in bytes.
        len: u32,
        /// The limit in descriptors.
        max: u32,
    },
    /// A buffer or indirect table address plus length wraps around the address space.
    #[error("{at}: address {addr:#x} + length {len} wraps around the address space")]
    BufferOverflow {
        /// The descriptor.
        at: DescIndex,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A buffer or indirect table is not (entirely) in guest memory.
    #[error("{at}: {addr:#x} with {len} bytes is not in guest memory")]
    BufferOutOfMemory {
        /// The descriptor.
        at: DescIndex,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// The sum of the buffer lengths of a chain exceeds `u32::MAX`.
    #[error("{at}: total chain length overflows 32 bits")]
    ChainLengthOverflow {
        /// The descriptor whose length made the total overflow.
        at: DescIndex,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("{at} is device-readable but follows a device-writable descriptor")]
    ReadableAfterWritable {
        /// The offending descriptor.
        at: DescIndex,
    },
    /// Split queues: `add_used` got a head index not below the queue size.
    #[error("used head index {head} is out of range for queue size {size}")]
    InvalidUsedHead {
        /// The rejected head index.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// `add_used` was called for more buffers (or descriptors) than are in flight.
    #[error("add_used of {count} entries with only {in_flight} in flight")]
    NothingInFlight {
        /// Entries (split: chains; packed: descriptors) being returned.
        count: u32,
        /// Entries currently popped and not yet used.
        in_flight: u32,
    },
    /// Packed queues: the driver's event suppression flags hold a reserved or unnegotiated value.
    #[error("driver event suppression flags {flags:#x} are invalid")]
    InvalidEventFlags {
        /// The flags value.
        flags: u16,
    },
    /// Packed queues: the driver's event offset is not below the queue size.
    #[error("driver event offset/wrap {off_wrap:#x} names a slot beyond queue size {size}")]
    InvalidEventOffset {
        /// The raw `desc_event_off_wrap` value.
        off_wrap: u16,
        /// The queue size.
        size: u16,
    },
    /// A saved queue state is inconsistent.
    #[error("invalid queue state: {field} = {value}: {reason}")]
    InvalidState {
        /// The field (or the quantity derived from fields) that is wrong.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Guest memory could not be accessed.
    #[error("guest memory access at {addr:#x} failed")]
    Memory {
        /// The guest address.
        addr: u64,
        /// The underlying error.
        #[source]
        source: GuestMemoryError,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
