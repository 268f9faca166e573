//! The split virtqueue (virtio 1.2, section 2.7): a descriptor table, an
//! available ring written by the driver and a used ring written by the device.

use std::sync::atomic::{fence, Ordering};

use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::config::{QueueLayout, RingConfig, SavedConfig};
use crate::error::{DescIndex, Error, Result, RingArea};
use crate::mem::{indirect_table, Area, ChainCheck, Descriptor, Hint, RegionCache, DESC_SIZE};
use crate::{vring_need_event, MAX_QUEUE_SIZE};

/// Descriptor flag: the buffer continues in the descriptor named by `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device write-only.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds a table of indirect descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver asks not to be interrupted.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device asks not to be notified.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Required alignment of the descriptor table.
pub const DESC_TABLE_ALIGN: u64 = 16;
/// Required alignment of the available ring.
pub const AVAIL_RING_ALIGN: u64 = 2;
/// Required alignment of the used ring.
pub const USED_RING_ALIGN: u64 = 4;

/// Size in bytes of the descriptor table of a queue of `size` entries.
pub const fn desc_table_len(size: u16) -> usize {
    DESC_SIZE * size as usize
}

/// Size in bytes of the available ring (flags, idx, ring, used_event).
pub const fn avail_ring_len(size: u16) -> usize {
    6 + 2 * size as usize
}

/// Size in bytes of the used ring (flags, idx, ring, avail_event).
pub const fn used_ring_len(size: u16) -> usize {
    6 + 8 * size as usize
}

/// The saved state of a [`SplitQueue`]: everything needed to resume it.
///
/// What is not here: the last `avail.idx` read (it is read again), and the
/// count of used entries not yet announced to the driver (the first
/// [`SplitQueue::needs_notification`] after [`SplitQueue::from_state`]
/// answers `true`, so no interrupt is lost). Rings and buffers live in
/// guest memory, which is saved separately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SplitQueueState {
    /// Maximum size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Whether the driver made the queue ready.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// Free-running index of the next available ring entry to pop.
    pub next_avail: u16,
    /// Free-running index of the next used ring entry to write.
    pub next_used: u16,
    /// Whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// Whether `VIRTIO_F_INDIRECT_DESC` was negotiated.
    pub indirect: bool,
    /// Whether an earlier driver error broke the queue.
    pub broken: bool,
}

/// A split virtqueue, device side.
///
/// The queue holds no reference to guest memory: every operation takes the
/// memory as an argument, so it keeps working across memory map changes.
#[derive(Clone, Debug)]
pub struct SplitQueue {
    /// Size, areas (descriptor table, available ring, used ring), flags.
    pub(crate) cfg: RingConfig,
    next_avail: u16,
    next_used: u16,
    /// The last `avail.idx` read from the guest.
    cached_avail: u16,
    /// Used entries added since the last `needs_notification`.
    num_added: u16,
    /// Notify at the next `needs_notification` regardless of suppression.
    force_notify: bool,
    /// The region of the descriptor table at the last per-call operation.
    region: RegionCache,
}

impl SplitQueue {
    /// Creates a queue offering at most `max_size` entries (1 to 32768).
    /// Its initial size is the largest power of two not above `max_size`.
    pub fn new(max_size: u16) -> Result<Self> {
        Ok(SplitQueue::with_config(RingConfig::new(
            QueueLayout::Split,
            max_size,
        )?))
    }

    pub(crate) fn with_config(cfg: RingConfig) -> Self {
        SplitQueue {
            cfg,
            next_avail: 0,
            next_used: 0,
            cached_avail: 0,
            num_added: 0,
            force_notify: false,
            region: RegionCache::default(),
        }
    }

    /// Returns the queue to its state right after [`SplitQueue::new`].
    pub fn reset(&mut self) {
        self.cfg.reset();
        let cfg = self.cfg.clone();
        *self = SplitQueue::with_config(cfg);
    }

    /// The maximum size offered by the device.
    pub fn max_size(&self) -> u16 {
        self.cfg.max_size
    }

    /// The current queue size.
    pub fn size(&self) -> u16 {
        self.cfg.size
    }

    /// Sets the queue size: a power of two between 1 and the maximum.
    pub fn set_size(&mut self, size: u16) -> Result<()> {
        self.cfg.set_size(size)
    }

    /// Sets the descriptor table address (16-byte aligned).
    pub fn set_desc_table(&mut self, addr: GuestAddress) -> Result<()> {
        self.cfg.set_desc(addr)
    }

    /// Sets the available ring address (2-byte aligned).
    pub fn set_avail_ring(&mut self, addr: GuestAddress) -> Result<()> {
        self.cfg.set_driver(addr)
    }

    /// Sets the used ring address (4-byte aligned).
    pub fn set_used_ring(&mut self, addr: GuestAddress) -> Result<()> {
        self.cfg.set_device(addr)
    }

    /// Records whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.cfg.event_idx = enabled;
    }

    /// Records whether `VIRTIO_F_INDIRECT_DESC` was negotiated. Without it,
    /// indirect descriptors are rejected.
    pub fn set_indirect(&mut self, enabled: bool) {
        self.cfg.indirect = enabled;
    }

    /// Whether the queue is ready.
    pub fn ready(&self) -> bool {
        self.cfg.ready
    }

    /// Marks the queue ready (or not). Ring placement in guest memory is
    /// checked by [`SplitQueue::validate`] and again on every access.
    pub fn set_ready(&mut self, ready: bool) {
        self.cfg.ready = ready;
    }

    /// Whether an earlier driver error broke the queue.
    pub fn is_broken(&self) -> bool {
        self.cfg.broken
    }

    /// The free-running index of the next available entry to pop.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// The free-running index of the next used entry to write.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// Checks that the three ring areas lie in guest memory and do not wrap.
    pub fn validate<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<()> {
        self.desc_area(mem)?;
        self.avail_area(mem)?;
        self.used_area(mem)?;
        Ok(())
    }

    /// The region holding the descriptor table (see [`RegionCache`]): the
    /// per-call operations resolve their rings and buffers in it.
    #[inline(always)]
    fn region<'m, M: GuestMemory + ?Sized>(&mut self, mem: &'m M) -> Hint<'m, M> {
        self.region.hint(mem, self.cfg.desc)
    }

    #[inline(always)]
    fn desc_area<'m, M: GuestMemory + ?Sized>(&self, mem: &'m M) -> Result<Area<'m, M>> {
        self.desc_area_in(mem, &Hint::none())
    }

    #[inline(always)]
    fn desc_area_in<'m, M: GuestMemory + ?Sized>(
        &self,
        mem: &'m M,
        hint: &Hint<'m, M>,
    ) -> Result<Area<'m, M>> {
        Area::ring_in(
            mem,
            hint,
            RingArea::DescriptorTable,
            self.cfg.desc,
            desc_table_len(self.cfg.size),
            Permissions::Read,
        )
    }

    #[inline(always)]
    fn avail_area<'m, M: GuestMemory + ?Sized>(&self, mem: &'m M) -> Result<Area<'m, M>> {
        self.avail_area_in(mem, &Hint::none())
    }

    #[inline(always)]
    fn avail_area_in<'m, M: GuestMemory + ?Sized>(
        &self,
        mem: &'m M,
        hint: &Hint<'m, M>,
    ) -> Result<Area<'m, M>> {
        Area::ring_in(
            mem,
            hint,
            RingArea::AvailRing,
            self.cfg.driver,
            avail_ring_len(self.cfg.size),
            Permissions::Read,
        )
    }

    #[inline(always)]
    fn used_area<'m, M: GuestMemory + ?Sized>(&self, mem: &'m M) -> Result<Area<'m, M>> {
        self.used_area_in(mem, &Hint::none())
    }

    #[inline(always)]
    fn used_area_in<'m, M: GuestMemory + ?Sized>(
        &self,
        mem: &'m M,
        hint: &Hint<'m, M>,
    ) -> Result<Area<'m, M>> {
        Area::ring_in(
            mem,
            hint,
            RingArea::UsedRing,
            self.cfg.device,
            used_ring_len(self.cfg.size),
            Permissions::Write,
        )
    }

    /// Reads `avail.idx` (then an Acquire fence) and checks it did not move
    /// more than the queue size past `next_avail`.
    fn read_avail_idx<M: GuestMemory + ?Sized>(&mut self, avail: &Area<'_, M>) -> Result<u16> {
        let idx = avail.load_u16(2, Ordering::Relaxed)?;
        fence(Ordering::Acquire);
        if idx.wrapping_sub(self.next_avail) > self.cfg.size {
            self.cfg.broken = true;
            return Err(Error::AvailIndexJump {
                avail_idx: idx,
                next_avail: self.next_avail,
                size: self.cfg.size,
            });
        }
        self.cached_avail = idx;
        Ok(idx)
    }

    /// [`SplitQueue::peek_head`], called out of line: the batch loop runs
    /// faster with it (and [`SplitQueue::write_used_outlined`]) as calls,
    /// the per-call operations with both inlined.
    #[inline(never)]
    fn peek_head_outlined<M: GuestMemory + ?Sized>(
        &mut self,
        avail: &Area<'_, M>,
    ) -> Result<Option<u16>> {
        self.peek_head(avail)
    }

    /// Checks `avail.idx` and reads the head of the next chain, without
    /// consuming it. Errors here break the queue.
    #[inline(always)]
    fn peek_head<M: GuestMemory + ?Sized>(&mut self, avail: &Area<'_, M>) -> Result<Option<u16>> {
        if self.cached_avail == self.next_avail && self.read_avail_idx(avail)? == self.next_avail {
            return Ok(None);
        }
        let in_flight = self.next_avail.wrapping_sub(self.next_used);
        if in_flight >= self.cfg.size {
            self.cfg.broken = true;
            return Err(Error::TooManyInFlight {
                in_flight: u32::from(in_flight),
                size: self.cfg.size,
            });
        }
        let slot = self.next_avail & (self.cfg.size - 1);
        let head = avail.read_u16(4 + 2 * slot as usize)?;
        if head >= self.cfg.size {
            self.cfg.broken = true;
            return Err(Error::HeadIndexOutOfRange {
                index: head,
                slot,
                size: self.cfg.size,
            });
        }
        Ok(Some(head))
    }

    #[inline(always)]
    fn make_chain<'m, M: GuestMemory + ?Sized>(
        &mut self,
        mem: &'m M,
        table: Area<'m, M>,
        head: u16,
        hint: Hint<'m, M>,
    ) -> SplitChain<'m, M> {
        self.next_avail = self.next_avail.wrapping_add(1);
        SplitChain {
            mem,
            table,
            table_len: u32::from(self.cfg.size),
            in_indirect: false,
            indirect_ok: self.cfg.indirect,
            head,
            next: head,
            visited: 0,
            done: false,
            check: ChainCheck::new(hint),
        }
    }

    /// Pops the next available descriptor chain, or `None` if the driver has
    /// made none available.
    ///
    /// The chain is validated lazily as it is iterated; a chain error fails
    /// that request only (return its head with [`SplitQueue::add_used`]).
    /// Errors here (an available index that jumps, a head out of range,
    /// more chains in flight than the queue size) break the queue.
    ///
    /// Each call looks up the memory region of the descriptor table once
    /// (the queue remembers its guest range, never a host pointer, so a
    /// memory map change between calls cannot leave a stale mapping in
    /// use) and resolves the rings and buffers that lie in it without
    /// further lookups. To process several chains, [`SplitQueue::access`]
    /// resolves the rings once for all of them and is faster still.
    #[inline]
    pub fn pop<'m, M: GuestMemory + ?Sized>(
        &mut self,
        mem: &'m M,
    ) -> Result<Option<SplitChain<'m, M>>> {
        self.cfg.check_usable()?;
        let hint = self.region(mem);
        let avail = self.avail_area_in(mem, &hint)?;
        let Some(head) = self.peek_head(&avail)? else {
            return Ok(None);
        };
        let table = self.desc_area_in(mem, &hint)?;
        Ok(Some(self.make_chain(mem, table, head, hint)))
    }

    /// Resolves the three rings in `mem` once (checking that they lie in
    /// guest memory) and returns a handle that pops and returns chains
    /// without looking them up again: the fast path for batches. Nothing
    /// is checked less.
    pub fn access<'q, 'm, M: GuestMemory + ?Sized>(
        &'q mut self,
        mem: &'m M,
    ) -> Result<SplitAccess<'q, 'm, M>> {
        self.cfg.check_ready()?;
        let desc = self.desc_area(mem)?;
        let avail = self.avail_area(mem)?;
        let used = self.used_area(mem)?;
        let hint = Hint::region_of(mem, self.cfg.desc);
        Ok(SplitAccess {
            queue: self,
            mem,
            desc,
            avail,
            used,
            hint,
        })
    }

    /// Un-pops the last popped chain, so the next [`SplitQueue::pop`] returns
    /// it again. Returns `false` if no chain is in flight.
    pub fn undo_pop(&mut self) -> bool {
        if self.next_avail == self.next_used {
            return false;
        }
        self.next_avail = self.next_avail.wrapping_sub(1);
        true
    }

    /// Returns the chain with head index `head` to the driver, with `len`
    /// bytes written to it. Publishes the new `used.idx` after a Release fence.
    #[inline]
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<()> {
        self.cfg.check_ready()?;
        if head >= self.cfg.size {
            return Err(Error::InvalidUsedHead {
                head,
                size: self.cfg.size,
            });
        }
        let in_flight = self.next_avail.wrapping_sub(self.next_used);
        if in_flight == 0 {
            return Err(Error::NothingInFlight {
                count: 1,
                in_flight: 0,
            });
        }
        let hint = self.region(mem);
        let used = self.used_area_in(mem, &hint)?;
        self.write_used(&used, head, len)
    }

    /// [`SplitQueue::write_used`], called out of line (see
    /// [`SplitQueue::peek_head_outlined`]).
    #[inline(never)]
    fn write_used_outlined<M: GuestMemory + ?Sized>(
        &mut self,
        used: &Area<'_, M>,
        head: u16,
        len: u32,
    ) -> Result<()> {
        self.write_used(used, head, len)
    }

    #[inline(always)]
    fn write_used<M: GuestMemory + ?Sized>(
        &mut self,
        used: &Area<'_, M>,
        head: u16,
        len: u32,
    ) -> Result<()> {
        let slot = (self.next_used & (self.cfg.size - 1)) as usize;
        used.write_u32x2(4 + 8 * slot, [u32::from(head), len])?;
        self.next_used = self.next_used.wrapping_add(1);
        fence(Ordering::Release);
        used.store_u16(2, self.next_used, Ordering::Relaxed)?;
        match self.num_added.checked_add(1) {
            Some(n) => self.num_added = n,
            None => self.force_notify = true,
        }
        Ok(())
    }

    /// Whether the driver must be notified (interrupted) about the used
    /// entries added since the last call: `used_event` with EVENT_IDX
    /// (`vring_need_event`), else the `VIRTQ_AVAIL_F_NO_INTERRUPT` flag.
    pub fn needs_notification<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool> {
        self.cfg.check_ready()?;
        let hint = self.region(mem);
        let avail = self.avail_area_in(mem, &hint)?;
        // Order the used.idx store before reading the driver's suppression.
        fence(Ordering::SeqCst);
        let added = self.num_added;
        let force = self.force_notify;
        self.num_added = 0;
        self.force_notify = false;
        if force {
            return Ok(true);
        }
        if added == 0 {
            return Ok(false);
        }
        if self.cfg.event_idx {
            let used_event = avail.load_u16(4 + 2 * self.cfg.size as usize, Ordering::Relaxed)?;
            let old = self.next_used.wrapping_sub(added);
            Ok(vring_need_event(used_event, self.next_used, old))
        } else {
            let flags = avail.load_u16(0, Ordering::Relaxed)?;
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Asks the driver to notify the device of new buffers: writes
    /// `avail_event = next_avail` with EVENT_IDX, else clears
    /// `VIRTQ_USED_F_NO_NOTIFY`. Returns `true` if buffers are already
    /// available (the caller should pop them rather than wait).
    pub fn enable_notification<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool> {
        self.cfg.check_usable()?;
        let hint = self.region(mem);
        let used = self.used_area_in(mem, &hint)?;
        if self.cfg.event_idx {
            used.store_u16(
                4 + 8 * self.cfg.size as usize,
                self.next_avail,
                Ordering::Relaxed,
            )?;
        } else {
            used.store_u16(0, 0, Ordering::Relaxed)?;
        }
        // Order the store above before re-reading avail.idx.
        fence(Ordering::SeqCst);
        let avail = self.avail_area_in(mem, &hint)?;
        Ok(self.read_avail_idx(&avail)? != self.next_avail)
    }

    /// Asks the driver not to notify the device: sets
    /// `VIRTQ_USED_F_NO_NOTIFY` (without EVENT_IDX; with it, `avail_event`
    /// is simply left behind).
    pub fn disable_notification<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<()> {
        self.cfg.check_usable()?;
        if !self.cfg.event_idx {
            let hint = self.region(mem);
            let used = self.used_area_in(mem, &hint)?;
            used.store_u16(0, VIRTQ_USED_F_NO_NOTIFY, Ordering::Relaxed)?;
        }
        Ok(())
    }

    /// Saves the queue's state.
    pub fn state(&self) -> SplitQueueState {
        let c = self.cfg.saved();
        SplitQueueState {
            max_size: c.max_size,
            size: c.size,
            ready: c.ready,
            desc_table: c.areas[0],
            avail_ring: c.areas[1],
            used_ring: c.areas[2],
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx: c.event_idx,
            indirect: c.indirect,
            broken: c.broken,
        }
    }

    /// Rebuilds a queue from a saved state, validating it as if each value
    /// had been set by the driver. The first `needs_notification` after a
    /// restore always answers `true`.
    pub fn from_state(state: &SplitQueueState) -> Result<Self> {
        let cfg = RingConfig::restore(
            QueueLayout::Split,
            &SavedConfig {
                max_size: state.max_size,
                size: state.size,
                ready: state.ready,
                areas: [state.desc_table, state.avail_ring, state.used_ring],
                event_idx: state.event_idx,
                indirect: state.indirect,
                broken: state.broken,
            },
        )?;
        let in_flight = state.next_avail.wrapping_sub(state.next_used);
        if in_flight > state.size {
            return Err(Error::InvalidState {
                field: "next_avail - next_used",
                value: u64::from(in_flight),
                reason: "more chains in flight than the queue size",
            });
        }
        let mut q = SplitQueue::with_config(cfg);
        q.next_avail = state.next_avail;
        q.next_used = state.next_used;
        q.cached_avail = state.next_avail;
        q.force_notify = true;
        Ok(q)
    }
}

/// A descriptor chain popped from a [`SplitQueue`]: an iterator over its
/// validated buffers, following `next` links and at most one indirect table.
///
/// Each item is a [`Descriptor`] or the first error found; iteration stops
/// after an error. Checks: `next` inside the table, at most as many
/// descriptors as the table holds (loops), indirect rules (feature
/// negotiated, no NEXT with INDIRECT, no nesting, length a non-zero multiple
/// of 16 and at most [`crate::MAX_INDIRECT_DESCRIPTORS`] entries), buffers
/// that neither wrap nor leave guest memory, a total length that fits in
/// 32 bits, and device-readable buffers before device-writable ones (a
/// readable buffer after a writable one is an error, as the spec requires
/// of drivers). Direct descriptors may precede the indirect one.
pub struct SplitChain<'m, M: GuestMemory + ?Sized> {
    mem: &'m M,
    table: Area<'m, M>,
    table_len: u32,
    in_indirect: bool,
    indirect_ok: bool,
    head: u16,
    next: u16,
    visited: u32,
    done: bool,
    check: ChainCheck<'m, M>,
}

impl<'m, M: GuestMemory + ?Sized> SplitChain<'m, M> {
    /// The chain's head index, to pass to [`SplitQueue::add_used`].
    pub fn head_index(&self) -> u16 {
        self.head
    }

    /// The guest memory the chain's buffers live in.
    pub fn memory(&self) -> &'m M {
        self.mem
    }

    /// Sum of the lengths of the buffers yielded so far.
    pub fn total_len(&self) -> u32 {
        self.check.total()
    }

    fn step(&mut self) -> Result<Option<Descriptor>> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.visited >= self.table_len {
                return Err(Error::ChainTooLong {
                    head: self.head,
                    limit: self.table_len,
                });
            }
            self.visited += 1;
            let at = DescIndex {
                indirect: self.in_indirect,
                index: self.next,
            };
            let raw = self.table.read_desc(self.next as usize * DESC_SIZE)?;
            let addr = raw[0];
            let len = raw[1] as u32;
            let flags = (raw[1] >> 32) as u16;
            let next = (raw[1] >> 48) as u16;
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if self.in_indirect {
                    return Err(Error::NestedIndirect { at });
                }
                if !self.indirect_ok {
                    return Err(Error::IndirectNotNegotiated { at });
                }
                if flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(Error::IndirectWithNext { at });
                }
                let (table, count) = indirect_table(self.mem, &self.check, at, addr, len)?;
                self.table = table;
                self.table_len = count;
                self.in_indirect = true;
                self.next = 0;
                self.visited = 0;
                continue;
            }
            let desc =
                self.check
                    .buffer(self.mem, at, addr, len, flags & VIRTQ_DESC_F_WRITE != 0)?;
            if flags & VIRTQ_DESC_F_NEXT != 0 {
                if u32::from(next) >= self.table_len {
                    return Err(Error::NextIndexOutOfRange {
                        at,
                        next,
                        table_len: self.table_len,
                    });
                }
                self.next = next;
            } else {
                self.done = true;
            }
            return Ok(Some(desc));
        }
    }
}

impl<M: GuestMemory + ?Sized> Iterator for SplitChain<'_, M> {
    type Item = Result<Descriptor>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(d)) => Some(Ok(d)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<M: GuestMemory + ?Sized> std::iter::FusedIterator for SplitChain<'_, M> {}

impl<M: GuestMemory + ?Sized> std::fmt::Debug for SplitChain<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitChain")
            .field("head", &self.head)
            .field("next", &self.next)
            .field("in_indirect", &self.in_indirect)
            .field("done", &self.done)
            .finish()
    }
}

const _: () = assert!(MAX_QUEUE_SIZE.is_power_of_two());

/// A [`SplitQueue`] with its rings resolved in one guest memory: pops and
/// returns chains without looking the rings up again. Made by
/// [`SplitQueue::access`]; chains it pops borrow only the memory, so they
/// can be returned through the same handle.
pub struct SplitAccess<'q, 'm, M: GuestMemory + ?Sized> {
    queue: &'q mut SplitQueue,
    mem: &'m M,
    desc: Area<'m, M>,
    avail: Area<'m, M>,
    used: Area<'m, M>,
    hint: Hint<'m, M>,
}

impl<'m, M: GuestMemory + ?Sized> SplitAccess<'_, 'm, M> {
    /// As [`SplitQueue::pop`].
    pub fn pop(&mut self) -> Result<Option<SplitChain<'m, M>>> {
        self.queue.cfg.check_usable()?;
        let Some(head) = self.queue.peek_head_outlined(&self.avail)? else {
            return Ok(None);
        };
        Ok(Some(self.queue.make_chain(
            self.mem,
            self.desc.clone(),
            head,
            self.hint.clone(),
        )))
    }

    /// As [`SplitQueue::add_used`].
    pub fn add_used(&mut self, head: u16, len: u32) -> Result<()> {
        let q = &mut *self.queue;
        if head >= q.cfg.size {
            return Err(Error::InvalidUsedHead {
                head,
                size: q.cfg.size,
            });
        }
        if q.next_avail == q.next_used {
            return Err(Error::NothingInFlight {
                count: 1,
                in_flight: 0,
            });
        }
        q.write_used_outlined(&self.used, head, len)
    }

    /// As [`SplitQueue::needs_notification`].
    pub fn needs_notification(&mut self) -> Result<bool> {
        self.queue.needs_notification(self.mem)
    }

    /// As [`SplitQueue::enable_notification`].
    pub fn enable_notification(&mut self) -> Result<bool> {
        self.queue.enable_notification(self.mem)
    }

    /// As [`SplitQueue::disable_notification`].
    pub fn disable_notification(&mut self) -> Result<()> {
        self.queue.disable_notification(self.mem)
    }

    /// The queue behind this handle.
    pub fn queue(&self) -> &SplitQueue {
        self.queue
    }
}
