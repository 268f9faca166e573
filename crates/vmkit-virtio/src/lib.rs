//! Virtqueues, device side, over [`vm_memory`]: the split and the packed
//! layouts of the virtio 1.2 specification, written for a hostile driver.
//!
//! Every value the guest controls — ring indices, descriptor addresses,
//! lengths, flags, `next` links, indirect tables, event suppression fields —
//! is checked against the specification and against guest memory before it
//! is used. A violation gives an [`Error`] that names the value; nothing the
//! guest writes can make this crate panic, read or write outside guest
//! memory, loop without bound or allocate memory: chains are iterated in
//! place, and iteration is bounded by the table size.
//!
//! - [`SplitQueue`] pops [`SplitChain`]s from the available ring and returns
//!   them with [`SplitQueue::add_used`].
//! - [`PackedQueue`] pops [`PackedChain`]s from the descriptor ring and
//!   writes used descriptors back with [`PackedQueue::add_used`].
//! - Both iterate validated [`Descriptor`]s, direct and indirect, implement
//!   notification suppression (EVENT_IDX or flags), and save and restore
//!   their state ([`SplitQueueState`], [`PackedQueueState`]).
//! - [`Queue`] is either one, behind one interface ([`Chain`], [`ChainHead`],
//!   [`QueueAccess`], [`QueueState`]): what transports hold and devices
//!   process, so every device works on both layouts. Both layouts share
//!   their setters and configuration checks; [`QueueLayout`] says which
//!   rules apply.
//!
//! On top of the queues:
//!
//! - [`VirtioDevice`] ([`device`]): what a device back end implements.
//! - [`pci::PciTransport`]: the virtio-pci modern transport, a PCI function
//!   (vmkit-pci) with its structures in BAR 0 and MSI-X; [`Transport`] is
//!   what device threads need of either transport.
//! - [`mmio::MmioTransport`]: the virtio-mmio transport (version 2
//!   registers), usable on a `vm-device` bus, with interrupts through an
//!   `EventFd` and notifications by MMIO write or ioeventfd.
//! - [`blk::Block`]: virtio-blk on a host file; [`blk::Request::parse`]
//!   validates requests.
//! - [`console::Console`]: a single-port virtio-console.
//! - [`balloon::Balloon`]: virtio-balloon (inflate, deflate, statistics,
//!   free page reporting), discarding pages through a VMM-supplied
//!   [`balloon::DiscardPages`].
//! - Snapshots: every device and the transport implement [`Persist`],
//!   vmkit's one convention for device state. The transport's
//!   `save_state` gives a serde [`mmio::MmioTransportState`] (registers,
//!   queues, and the device's own typed state, such as
//!   [`blk::BlockState`]); its `restore_state`, on a transport freshly
//!   built around a fresh device, validates it as untrusted input.
//!
//! A VMM puts a disk at a guest address like this:
//!
//! ```
//! use std::sync::Arc;
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//! use vmkit_virtio::blk::{Block, BlockOptions};
//! use vmkit_virtio::mmio::{MmioTransport, MMIO_REGION_SIZE, NOTIFY_OFFSET};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?);
//! let disk = vmm_sys_util::tempfile::TempFile::new()?.into_file();
//! disk.set_len(64 * 512)?;
//! let blk = Block::new(disk, BlockOptions::default())?;
//! let irq = EventFd::new(EFD_NONBLOCK)?; // register as an irqfd for the device's GSI
//! let transport = Arc::new(MmioTransport::new(blk, mem, irq)?);
//!
//! // Register `transport.clone()` on a vm-device MMIO bus at, say,
//! // 0xd100_0000..+MMIO_REGION_SIZE. Optionally register an ioeventfd at
//! // 0xd100_0000 + NOTIFY_OFFSET (datamatch 0) and, when it fires, call:
//! let interrupted = transport.process_queue(0)?;
//! assert!(!interrupted); // the driver has not set the device up yet
//! # let _ = (MMIO_REGION_SIZE, NOTIFY_OFFSET);
//! # Ok(())
//! # }
//! ```
//!
//! # Example
//!
//! A driver places a two-descriptor chain (one readable, one writable
//! buffer) on a split queue; the device pops it, walks its buffers and
//! returns it.
//!
//! ```
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//! use vmkit_virtio::{SplitQueue, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)])?;
//! let (desc, avail, used) = (0x1000u64, 0x2000u64, 0x3000u64);
//!
//! // Driver side: descriptor 0 -> 1, head 0 in avail.ring[0], avail.idx = 1.
//! let write_desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
//!     let at = desc + 16 * i;
//!     mem.write_obj(addr, GuestAddress(at)).unwrap();
//!     mem.write_obj(len, GuestAddress(at + 8)).unwrap();
//!     mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
//!     mem.write_obj(next, GuestAddress(at + 14)).unwrap();
//! };
//! write_desc(0, 0x4000, 16, VIRTQ_DESC_F_NEXT, 1);
//! write_desc(1, 0x5000, 512, VIRTQ_DESC_F_WRITE, 0);
//! mem.write_obj(0u16, GuestAddress(avail + 4))?;
//! mem.write_obj(1u16, GuestAddress(avail + 2))?;
//!
//! // Device side.
//! let mut q = SplitQueue::new(256)?;
//! q.set_size(16)?;
//! q.set_desc_table(GuestAddress(desc))?;
//! q.set_avail_ring(GuestAddress(avail))?;
//! q.set_used_ring(GuestAddress(used))?;
//! q.set_ready(true);
//! q.validate(&mem)?;
//!
//! let chain = q.pop(&mem)?.expect("one chain is available");
//! let head = chain.head_index();
//! let mut written = 0;
//! for d in chain {
//!     let d = d?; // a malformed chain is an error here, never a panic
//!     if d.is_write_only() {
//!         written += d.len(); // a real device writes its reply here
//!     }
//! }
//! q.add_used(&mem, head, written)?;
//! assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2))?, 1); // used.idx
//! assert_eq!(mem.read_obj::<u32>(GuestAddress(used + 8))?, 512); // used.ring[0].len
//! assert!(q.pop(&mem)?.is_none());
//!
//! // For batches, `access` resolves the rings once for many chains.
//! mem.write_obj(2u16, GuestAddress(avail + 2))?; // head 0 again, in avail.ring[1]
//! let mut batch = q.access(&mem)?;
//! while let Some(chain) = batch.pop()? {
//!     let head = chain.head_index();
//!     let n = chain.filter(|d| d.is_ok()).count();
//!     assert_eq!(n, 2);
//!     batch.add_used(head, 0)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Errors and device failure
//!
//! Errors while iterating a chain concern that request only: the device
//! fails it (returns it with length 0, or with a device-specific error
//! status) and carries on. Errors that leave the ring itself untrustworthy
//! (an available index that jumps, a head index out of range, more buffers
//! than the queue holds) mark the queue broken; it then answers
//! [`Error::Broken`] until it is reset, and the device should set
//! `DEVICE_NEEDS_RESET`.

#![forbid(unsafe_code)]

pub mod balloon;
pub mod blk;
mod config;
pub mod console;
pub mod device;
mod error;
mod interrupt;
mod mem;
pub mod mmio;
pub mod net;
pub mod packed;
pub mod pci;
mod queue;
pub mod split;
mod transport;

pub use config::QueueLayout;
pub use device::{DeviceError, StateError, VirtioDevice};
pub use error::{DescIndex, Error, Result, RingArea};
pub use mem::Descriptor;
pub use packed::{PackedAccess, PackedChain, PackedQueue, PackedQueueState};
pub use queue::{Chain, ChainHead, Queue, QueueAccess, QueueState};
pub use split::{
    SplitAccess, SplitChain, SplitQueue, SplitQueueState, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};
pub use transport::Transport;
pub use vmkit_snapshot::Persist;

/// The largest queue size the specification allows (split and packed).
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// The most descriptors an indirect table may hold. The specification sets
/// no limit of its own; this is the largest queue size, so no indirect
/// chain is longer than the longest direct one could be.
pub const MAX_INDIRECT_DESCRIPTORS: u32 = MAX_QUEUE_SIZE as u32;

fn check_max_size(max: u16) -> Result<()> {
    if max == 0 || max > MAX_QUEUE_SIZE {
        return Err(Error::InvalidMaxSize { max });
    }
    Ok(())
}

/// The standard EVENT_IDX test: whether moving an index from `old` to `new`
/// crossed `event` (all free-running 16-bit indices), i.e. whether the other
/// side asked to be notified at `event`.
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::vring_need_event;
    use proptest::prelude::*;

    /// The indices an index moving from `old` to `new` passes through:
    /// `old`, `old + 1`, …, `new - 1` (mod 2^16).
    fn crossed(event: u16, new: u16, old: u16) -> bool {
        let mut i = old;
        while i != new {
            if i == event {
                return true;
            }
            i = i.wrapping_add(1);
        }
        false
    }

    #[test]
    fn need_event_at_the_edges_and_across_the_wrap() {
        // The other side asked at 5: moving 3 -> 6 passes it, 3 -> 5 stops short.
        assert!(vring_need_event(5, 6, 3));
        assert!(!vring_need_event(5, 5, 3));
        // Already past it before the move: no notification.
        assert!(!vring_need_event(2, 6, 3));
        // No move, no notification, whatever the event.
        assert!(!vring_need_event(7, 7, 7));
        // Across the 16-bit wrap: 65534 -> 2 passes 65535 and 0 and 1.
        assert!(vring_need_event(65535, 2, 65534));
        assert!(vring_need_event(0, 2, 65534));
        assert!(vring_need_event(1, 2, 65534));
        assert!(!vring_need_event(2, 2, 65534));
        assert!(!vring_need_event(65533, 2, 65534));
    }

    proptest! {
        #[test]
        fn need_event_is_whether_the_move_crossed_the_event(
            old in any::<u16>(),
            step in 0u16..1024,
            event_off in any::<u16>(),
        ) {
            let new = old.wrapping_add(step);
            // Events near the move, and anywhere.
            for event in [old.wrapping_add(event_off % 1100), old.wrapping_sub(event_off % 64), event_off] {
                prop_assert_eq!(vring_need_event(event, new, old), crossed(event, new, old));
            }
        }
    }
}
