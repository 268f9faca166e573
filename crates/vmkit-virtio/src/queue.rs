//! One interface over both queue layouts: [`Queue`], what a transport owns
//! and a device processes, whichever layout the driver negotiated.
//!
//! # Why an enum, not a trait
//!
//! [`crate::VirtioDevice`] is object safe (a transport may hold a
//! `Box<dyn VirtioDevice>`), so `process_queue` cannot be generic over a
//! queue trait; a `&mut dyn` queue trait would cost an indirect call per
//! pop, per descriptor and per used entry, and would need boxed or
//! type-erased chains. An enum keeps everything static: each method is one
//! `match` on a discriminant that never changes while the queue is in use
//! (the branch predictor learns it after the first call), the arms are the
//! layouts' own inlinable methods (the per-descriptor [`Chain::next`] and
//! the per-chain [`QueueAccess`] calls are always inlined), chains are
//! values on the stack, and nothing is allocated. What remains is the
//! branch and a chain the size of the larger layout's: the
//! `vmkit-virtio-queue-enum` case of `benches/virtqueue.rs` measures it
//! against the same split queue used directly (a few nanoseconds a chain,
//! still well ahead of the `virtio-queue` crate).

use vm_memory::GuestMemory;

use crate::config::{QueueLayout, RingConfig};
use crate::error::Result;
use crate::mem::Descriptor;
use crate::packed::{PackedAccess, PackedChain, PackedQueue, PackedQueueState};
use crate::split::{SplitAccess, SplitChain, SplitQueue, SplitQueueState};

/// A virtqueue of either layout, device side.
///
/// A transport creates it split, and switches it to packed when the driver
/// negotiates `VIRTIO_F_RING_PACKED` ([`Queue::set_layout`]). The setters
/// take the transport's names for the three areas (descriptor, driver,
/// device area); what each area is and how it must be aligned depends on
/// the layout.
#[derive(Clone, Debug)]
pub enum Queue {
    /// A split queue.
    Split(SplitQueue),
    /// A packed queue.
    Packed(PackedQueue),
}

/// Identifies a popped chain when it is returned ([`Queue::add_used`]) or
/// un-popped ([`Queue::undo_pop`]): the split head index, or the packed
/// buffer ID with the number of ring slots the list took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainHead {
    id: u16,
    slots: u16,
}

impl ChainHead {
    /// A chain head from its parts, for a device that saved a chain it
    /// holds across calls (as [`ChainHead::id`] and [`ChainHead::slots`])
    /// and returns it after a restore. A head that is not in flight makes
    /// [`Queue::add_used`] fail.
    pub fn new(id: u16, slots: u16) -> Self {
        ChainHead { id, slots }
    }

    /// The head index (split) or buffer ID (packed).
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The ring slots the chain took: 1 for a split chain (one available
    /// ring entry), the descriptor count for a packed list.
    pub fn slots(&self) -> u16 {
        self.slots
    }
}

/// The saved state of a [`Queue`]: its layout and that layout's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum QueueState {
    /// A split queue.
    Split(SplitQueueState),
    /// A packed queue.
    Packed(PackedQueueState),
}

impl Default for QueueState {
    fn default() -> Self {
        QueueState::Split(SplitQueueState::default())
    }
}

impl QueueState {
    /// The layout.
    pub fn layout(&self) -> QueueLayout {
        match self {
            QueueState::Split(_) => QueueLayout::Split,
            QueueState::Packed(_) => QueueLayout::Packed,
        }
    }

    /// The saved maximum size.
    pub fn max_size(&self) -> u16 {
        match self {
            QueueState::Split(s) => s.max_size,
            QueueState::Packed(s) => s.max_size,
        }
    }

    /// The saved size.
    pub fn size(&self) -> u16 {
        match self {
            QueueState::Split(s) => s.size,
            QueueState::Packed(s) => s.size,
        }
    }

    /// Whether the queue was ready.
    pub fn ready(&self) -> bool {
        match self {
            QueueState::Split(s) => s.ready,
            QueueState::Packed(s) => s.ready,
        }
    }

    /// The descriptor, driver and device area addresses.
    pub fn areas(&self) -> [u64; 3] {
        match self {
            QueueState::Split(s) => [s.desc_table, s.avail_ring, s.used_ring],
            QueueState::Packed(s) => [s.desc_ring, s.driver_area, s.device_area],
        }
    }

    /// The split queue's state, if the queue is split.
    pub fn as_split(&self) -> Option<&SplitQueueState> {
        match self {
            QueueState::Split(s) => Some(s),
            QueueState::Packed(_) => None,
        }
    }

    /// The split queue's state, mutably, if the queue is split.
    pub fn as_split_mut(&mut self) -> Option<&mut SplitQueueState> {
        match self {
            QueueState::Split(s) => Some(s),
            QueueState::Packed(_) => None,
        }
    }

    /// The packed queue's state, if the queue is packed.
    pub fn as_packed(&self) -> Option<&PackedQueueState> {
        match self {
            QueueState::Packed(s) => Some(s),
            QueueState::Split(_) => None,
        }
    }

    /// The packed queue's state, mutably, if the queue is packed.
    pub fn as_packed_mut(&mut self) -> Option<&mut PackedQueueState> {
        match self {
            QueueState::Packed(s) => Some(s),
            QueueState::Split(_) => None,
        }
    }

    /// The saved `event_idx` and `indirect` flags.
    pub fn feature_flags(&self) -> (bool, bool) {
        match self {
            QueueState::Split(s) => (s.event_idx, s.indirect),
            QueueState::Packed(s) => (s.event_idx, s.indirect),
        }
    }
}

impl From<SplitQueue> for Queue {
    fn from(q: SplitQueue) -> Self {
        Queue::Split(q)
    }
}

impl From<PackedQueue> for Queue {
    fn from(q: PackedQueue) -> Self {
        Queue::Packed(q)
    }
}

impl Queue {
    /// Creates a queue of `layout` offering at most `max_size` entries (1
    /// to 32768).
    pub fn new(layout: QueueLayout, max_size: u16) -> Result<Self> {
        Ok(match layout {
            QueueLayout::Split => Queue::Split(SplitQueue::new(max_size)?),
            QueueLayout::Packed => Queue::Packed(PackedQueue::new(max_size)?),
        })
    }

    #[inline(always)]
    fn cfg(&self) -> &RingConfig {
        match self {
            Queue::Split(q) => &q.cfg,
            Queue::Packed(q) => &q.cfg,
        }
    }

    #[inline(always)]
    fn cfg_mut(&mut self) -> &mut RingConfig {
        match self {
            Queue::Split(q) => &mut q.cfg,
            Queue::Packed(q) => &mut q.cfg,
        }
    }

    /// The layout.
    pub fn layout(&self) -> QueueLayout {
        self.cfg().layout
    }

    /// Makes this a fresh queue of `layout` with the same maximum size
    /// (as after [`Queue::reset`]).
    pub fn set_layout(&mut self, layout: QueueLayout) {
        let cfg = RingConfig::fresh(layout, self.cfg().max_size);
        *self = match layout {
            QueueLayout::Split => Queue::Split(SplitQueue::with_config(cfg)),
            QueueLayout::Packed => Queue::Packed(PackedQueue::with_config(cfg)),
        };
    }

    /// Returns the queue to its state right after [`Queue::new`], in the
    /// same layout.
    pub fn reset(&mut self) {
        match self {
            Queue::Split(q) => q.reset(),
            Queue::Packed(q) => q.reset(),
        }
    }

    /// The maximum size offered by the device.
    pub fn max_size(&self) -> u16 {
        self.cfg().max_size
    }

    /// The current size.
    pub fn size(&self) -> u16 {
        self.cfg().size
    }

    /// Sets the size: 1 to the maximum, and a power of two for split.
    pub fn set_size(&mut self, size: u16) -> Result<()> {
        self.cfg_mut().set_size(size)
    }

    /// Sets the descriptor area: the split descriptor table or the packed
    /// descriptor ring (16-byte aligned).
    pub fn set_desc_area(&mut self, addr: vm_memory::GuestAddress) -> Result<()> {
        self.cfg_mut().set_desc(addr)
    }

    /// Sets the driver area: the split available ring (2-byte aligned) or
    /// the packed driver event suppression structure (4-byte aligned).
    pub fn set_driver_area(&mut self, addr: vm_memory::GuestAddress) -> Result<()> {
        self.cfg_mut().set_driver(addr)
    }

    /// Sets the device area: the split used ring or the packed device event
    /// suppression structure (4-byte aligned).
    pub fn set_device_area(&mut self, addr: vm_memory::GuestAddress) -> Result<()> {
        self.cfg_mut().set_device(addr)
    }

    /// Records whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.cfg_mut().event_idx = enabled;
    }

    /// Records whether `VIRTIO_F_INDIRECT_DESC` was negotiated.
    pub fn set_indirect(&mut self, enabled: bool) {
        self.cfg_mut().indirect = enabled;
    }

    /// Whether the queue is ready.
    pub fn ready(&self) -> bool {
        self.cfg().ready
    }

    /// Marks the queue ready (or not).
    pub fn set_ready(&mut self, ready: bool) {
        self.cfg_mut().ready = ready;
    }

    /// Whether an earlier driver error broke the queue.
    pub fn is_broken(&self) -> bool {
        self.cfg().broken
    }

    /// Checks that the queue's three areas lie in guest memory.
    pub fn validate<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<()> {
        match self {
            Queue::Split(q) => q.validate(mem),
            Queue::Packed(q) => q.validate(mem),
        }
    }

    /// Pops the next available chain (see [`SplitQueue::pop`] and
    /// [`PackedQueue::pop`]).
    #[inline]
    pub fn pop<'m, M: GuestMemory + ?Sized>(&mut self, mem: &'m M) -> Result<Option<Chain<'m, M>>> {
        Ok(match self {
            Queue::Split(q) => q.pop(mem)?.map(Chain::Split),
            Queue::Packed(q) => q.pop(mem)?.map(Chain::Packed),
        })
    }

    /// Resolves the rings once for a batch (see [`SplitQueue::access`] and
    /// [`PackedQueue::access`]).
    #[inline]
    pub fn access<'q, 'm, M: GuestMemory + ?Sized>(
        &'q mut self,
        mem: &'m M,
    ) -> Result<QueueAccess<'q, 'm, M>> {
        Ok(match self {
            Queue::Split(q) => QueueAccess::Split(q.access(mem)?),
            Queue::Packed(q) => QueueAccess::Packed(q.access(mem)?),
        })
    }

    /// Returns the chain `head` to the driver with `len` bytes written.
    #[inline]
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: ChainHead,
        len: u32,
    ) -> Result<()> {
        match self {
            Queue::Split(q) => q.add_used(mem, head.id, len),
            Queue::Packed(q) => q.add_used(mem, head.id, len, head.slots),
        }
    }

    /// Un-pops chains taking `slots` ring slots in all (the sum of their
    /// [`ChainHead::slots`]): the most recently popped ones, not yet
    /// returned. Returns `false`, changing nothing, if fewer are in flight.
    pub fn undo_pop(&mut self, slots: u16) -> bool {
        match self {
            Queue::Split(q) => {
                if q.next_avail().wrapping_sub(q.next_used()) < slots {
                    return false;
                }
                for _ in 0..slots {
                    q.undo_pop();
                }
                true
            }
            Queue::Packed(q) => slots == 0 || q.undo_pop(slots),
        }
    }

    /// Whether the driver must be interrupted about the chains returned
    /// since the last call.
    #[inline]
    pub fn needs_notification<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool> {
        match self {
            Queue::Split(q) => q.needs_notification(mem),
            Queue::Packed(q) => q.needs_notification(mem),
        }
    }

    /// Asks the driver for notifications; `true` if chains are already
    /// available.
    #[inline]
    pub fn enable_notification<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool> {
        match self {
            Queue::Split(q) => q.enable_notification(mem),
            Queue::Packed(q) => q.enable_notification(mem),
        }
    }

    /// Asks the driver not to notify.
    #[inline]
    pub fn disable_notification<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<()> {
        match self {
            Queue::Split(q) => q.disable_notification(mem),
            Queue::Packed(q) => q.disable_notification(mem),
        }
    }

    /// Saves the queue's layout and state.
    pub fn state(&self) -> QueueState {
        match self {
            Queue::Split(q) => QueueState::Split(q.state()),
            Queue::Packed(q) => QueueState::Packed(q.state()),
        }
    }

    /// Rebuilds a queue from a saved state, validating every value.
    pub fn from_state(state: &QueueState) -> Result<Self> {
        Ok(match state {
            QueueState::Split(s) => Queue::Split(SplitQueue::from_state(s)?),
            QueueState::Packed(s) => Queue::Packed(PackedQueue::from_state(s)?),
        })
    }
}

/// A chain popped from a [`Queue`]: an iterator over its validated
/// [`Descriptor`]s, as [`SplitChain`] or [`PackedChain`].
#[derive(Debug)]
pub enum Chain<'m, M: GuestMemory + ?Sized> {
    /// From a split queue.
    Split(SplitChain<'m, M>),
    /// From a packed queue.
    Packed(PackedChain<'m, M>),
}

impl<'m, M: GuestMemory + ?Sized> Chain<'m, M> {
    /// What to pass to [`Queue::add_used`] or [`Queue::undo_pop`].
    #[inline(always)]
    pub fn head(&self) -> ChainHead {
        match self {
            Chain::Split(c) => ChainHead {
                id: c.head_index(),
                slots: 1,
            },
            Chain::Packed(c) => ChainHead {
                id: c.id(),
                slots: c.desc_count(),
            },
        }
    }

    /// The guest memory the chain's buffers live in.
    pub fn memory(&self) -> &'m M {
        match self {
            Chain::Split(c) => c.memory(),
            Chain::Packed(c) => c.memory(),
        }
    }

    /// Sum of the lengths of the buffers yielded so far.
    pub fn total_len(&self) -> u32 {
        match self {
            Chain::Split(c) => c.total_len(),
            Chain::Packed(c) => c.total_len(),
        }
    }
}

impl<M: GuestMemory + ?Sized> Iterator for Chain<'_, M> {
    type Item = Result<Descriptor>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Chain::Split(c) => c.next(),
            Chain::Packed(c) => c.next(),
        }
    }
}

impl<M: GuestMemory + ?Sized> std::iter::FusedIterator for Chain<'_, M> {}

/// A [`Queue`] with its rings resolved in one guest memory, for batches:
/// [`SplitAccess`] or [`PackedAccess`]. Made by [`Queue::access`].
pub enum QueueAccess<'q, 'm, M: GuestMemory + ?Sized> {
    /// Of a split queue.
    Split(SplitAccess<'q, 'm, M>),
    /// Of a packed queue.
    Packed(PackedAccess<'q, 'm, M>),
}

impl<'m, M: GuestMemory + ?Sized> QueueAccess<'_, 'm, M> {
    /// As [`Queue::pop`].
    #[inline(always)]
    pub fn pop(&mut self) -> Result<Option<Chain<'m, M>>> {
        Ok(match self {
            QueueAccess::Split(a) => a.pop()?.map(Chain::Split),
            QueueAccess::Packed(a) => a.pop()?.map(Chain::Packed),
        })
    }

    /// As [`Queue::add_used`].
    #[inline(always)]
    pub fn add_used(&mut self, head: ChainHead, len: u32) -> Result<()> {
        match self {
            QueueAccess::Split(a) => a.add_used(head.id, len),
            QueueAccess::Packed(a) => a.add_used(head.id, len, head.slots),
        }
    }

    /// As [`Queue::needs_notification`].
    pub fn needs_notification(&mut self) -> Result<bool> {
        match self {
            QueueAccess::Split(a) => a.needs_notification(),
            QueueAccess::Packed(a) => a.needs_notification(),
        }
    }

    /// As [`Queue::enable_notification`].
    pub fn enable_notification(&mut self) -> Result<bool> {
        match self {
            QueueAccess::Split(a) => a.enable_notification(),
            QueueAccess::Packed(a) => a.enable_notification(),
        }
    }

    /// As [`Queue::disable_notification`].
    pub fn disable_notification(&mut self) -> Result<()> {
        match self {
            QueueAccess::Split(a) => a.disable_notification(),
            QueueAccess::Packed(a) => a.disable_notification(),
        }
    }

    /// The queue's size.
    pub fn size(&self) -> u16 {
        match self {
            QueueAccess::Split(a) => a.queue().size(),
            QueueAccess::Packed(a) => a.queue().size(),
        }
    }
}
