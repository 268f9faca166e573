//! The packed virtqueue (virtio 1.2, section 2.8): one descriptor ring
//! shared by driver and device, with wrap counters, plus the driver and
//! device event suppression structures.

use std::sync::atomic::{fence, Ordering};

use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::config::{QueueLayout, RingConfig, SavedConfig};
use crate::error::{DescIndex, Error, Result, RingArea};
use crate::mem::{indirect_table, Area, ChainCheck, Descriptor, Hint, RegionCache, DESC_SIZE};
use crate::split::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use crate::vring_need_event;

/// Packed descriptor flag: the AVAIL bit.
pub const VIRTQ_DESC_F_AVAIL: u16 = 1 << 7;
/// Packed descriptor flag: the USED bit.
pub const VIRTQ_DESC_F_USED: u16 = 1 << 15;

/// Event suppression flags: notifications enabled.
pub const RING_EVENT_FLAGS_ENABLE: u16 = 0;
/// Event suppression flags: notifications disabled.
pub const RING_EVENT_FLAGS_DISABLE: u16 = 1;
/// Event suppression flags: notify at the descriptor named by `off_wrap`
/// (needs `VIRTIO_F_EVENT_IDX`).
pub const RING_EVENT_FLAGS_DESC: u16 = 2;

/// Required alignment of the descriptor ring.
pub const DESC_RING_ALIGN: u64 = 16;
/// Required alignment of the driver and device event suppression areas.
pub const EVENT_AREA_ALIGN: u64 = 4;
/// Size of an event suppression structure (`off_wrap`, `flags`).
pub const EVENT_AREA_LEN: usize = 4;

/// The saved state of a [`PackedQueue`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackedQueueState {
    /// Maximum size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Whether the driver made the queue ready.
    pub ready: bool,
    /// Guest address of the descriptor ring.
    pub desc_ring: u64,
    /// Guest address of the driver event suppression structure.
    pub driver_area: u64,
    /// Guest address of the device event suppression structure.
    pub device_area: u64,
    /// Ring slot of the next descriptor to pop.
    pub next_avail: u16,
    /// The driver ring wrap counter the device expects at `next_avail`.
    pub avail_wrap: bool,
    /// Ring slot of the next used descriptor to write.
    pub next_used: u16,
    /// The device ring wrap counter.
    pub used_wrap: bool,
    /// Descriptor slots popped but not yet returned.
    pub in_flight: u16,
    /// Whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// Whether `VIRTIO_F_INDIRECT_DESC` was negotiated.
    pub indirect: bool,
    /// Whether an earlier driver error broke the queue.
    pub broken: bool,
}

/// A packed virtqueue, device side.
#[derive(Clone, Debug)]
pub struct PackedQueue {
    /// Size, areas (descriptor ring, driver and device event suppression), flags.
    pub(crate) cfg: RingConfig,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    in_flight: u16,
    /// Descriptor slots used since the last `needs_notification`.
    num_added: u32,
    force_notify: bool,
    /// The region of the descriptor ring at the last per-call operation.
    region: RegionCache,
}

/// Advances a ring slot by `n` (at most the ring size), flipping the wrap
/// counter when it passes the end.
fn advance(idx: u16, wrap: bool, n: u16, size: u16) -> (u16, bool) {
    let next = u32::from(idx) + u32::from(n);
    if next >= u32::from(size) {
        ((next - u32::from(size)) as u16, !wrap)
    } else {
        (next as u16, wrap)
    }
}

/// Position of a slot in the double lap `[0, 2 * size)` that wrap counters span.
fn lap_pos(idx: u16, wrap: bool, size: u16) -> u32 {
    u32::from(idx) + if wrap { 0 } else { u32::from(size) }
}

impl PackedQueue {
    /// Creates a queue whose maximum (and initial) size is `max_size`
    /// (1 to 32768; packed queues need not be a power of two).
    pub fn new(max_size: u16) -> Result<Self> {
        Ok(PackedQueue::with_config(RingConfig::new(
            QueueLayout::Packed,
            max_size,
        )?))
    }

    pub(crate) fn with_config(cfg: RingConfig) -> Self {
        PackedQueue {
            cfg,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            in_flight: 0,
            num_added: 0,
            force_notify: false,
            region: RegionCache::default(),
        }
    }

    /// Returns the queue to its state right after [`PackedQueue::new`].
    pub fn reset(&mut self) {
        self.cfg.reset();
        let cfg = self.cfg.clone();
        *self = PackedQueue::with_config(cfg);
    }

    /// The maximum size offered by the device.
    pub fn max_size(&self) -> u16 {
        self.cfg.max_size
    }

    /// The current queue size.
    pub fn size(&self) -> u16 {
        self.cfg.size
    }

    /// Sets the queue size: between 1 and the maximum.
    pub fn set_size(&mut self, size: u16) -> Result<()> {
        self.cfg.set_size(size)
    }

    /// Sets the descriptor ring address (16-byte aligned).
    pub fn set_desc_ring(&mut self, addr: GuestAddress) -> Result<()> {
        self.cfg.set_desc(addr)
    }

    /// Sets the driver event suppression area address (4-byte aligned).
    pub fn set_driver_area(&mut self, addr: GuestAddress) -> Result<()> {
        self.cfg.set_driver(addr)
    }

    /// Sets the device event suppression area address (4-byte aligned).
    pub fn set_device_area(&mut self, addr: GuestAddress) -> Result<()> {
        self.cfg.set_device(addr)
    }

    /// Records whether `VIRTIO_F_EVENT_IDX` was negotiated.
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.cfg.event_idx = enabled;
    }

    /// Records whether `VIRTIO_F_INDIRECT_DESC` was negotiated.
    pub fn set_indirect(&mut self, enabled: bool) {
        self.cfg.indirect = enabled;
    }

    /// Whether the queue is ready.
    pub fn ready(&self) -> bool {
        self.cfg.ready
    }

    /// Marks the queue ready (or not).
    pub fn set_ready(&mut self, ready: bool) {
        self.cfg.ready = ready;
    }

    /// Whether an earlier driver error broke the queue.
    pub fn is_broken(&self) -> bool {
        self.cfg.broken
    }

    /// The ring slot of the next descriptor to pop, and the wrap counter expected there.
    pub fn next_avail(&self) -> (u16, bool) {
        (self.next_avail, self.avail_wrap)
    }

    /// The ring slot of the next used descriptor, and the device wrap counter.
    pub fn next_used(&self) -> (u16, bool) {
        (self.next_used, self.used_wrap)
    }

    /// Checks that the ring and both event areas lie in guest memory.
    pub fn validate<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<()> {
        let none = Hint::none();
        self.ring_area(mem, &none, Permissions::Read)?;
        self.driver(mem, &none)?;
        self.device(mem, &none)?;
        Ok(())
    }

    /// The region holding the descriptor ring (see [`RegionCache`]): the
    /// per-call operations resolve their areas and buffers in it.
    #[inline(always)]
    fn region<'m, M: GuestMemory + ?Sized>(&mut self, mem: &'m M) -> Hint<'m, M> {
        self.region.hint(mem, self.cfg.desc)
    }

    #[inline(always)]
    fn ring_area<'m, M: GuestMemory + ?Sized>(
        &self,
        mem: &'m M,
        hint: &Hint<'m, M>,
        access: Permissions,
    ) -> Result<Area<'m, M>> {
        Area::ring_in(
            mem,
            hint,
            RingArea::DescriptorRing,
            self.cfg.desc,
            DESC_SIZE * self.cfg.size as usize,
            access,
        )
    }

    fn driver<'m, M: GuestMemory + ?Sized>(
        &self,
        mem: &'m M,
        hint: &Hint<'m, M>,
    ) -> Result<Area<'m, M>> {
        Area::ring_in(
            mem,
            hint,
            RingArea::DriverArea,
            self.cfg.driver,
            EVENT_AREA_LEN,
            Permissions::Read,
        )
    }

    fn device<'m, M: GuestMemory + ?Sized>(
        &self,
        mem: &'m M,
        hint: &Hint<'m, M>,
    ) -> Result<Area<'m, M>> {
        Area::ring_in(
            mem,
            hint,
            RingArea::DeviceArea,
            self.cfg.device,
            EVENT_AREA_LEN,
            Permissions::Write,
        )
    }

    /// Whether the descriptor at `next_avail` is available (its flags read
    /// with an Acquire fence after).
    fn avail_at<M: GuestMemory + ?Sized>(&self, ring: &Area<'_, M>) -> Result<bool> {
        let flags = ring.load_u16(self.next_avail as usize * DESC_SIZE + 14, Ordering::Relaxed)?;
        fence(Ordering::Acquire);
        let avail = flags & VIRTQ_DESC_F_AVAIL != 0;
        let used = flags & VIRTQ_DESC_F_USED != 0;
        Ok(avail == self.avail_wrap && used != self.avail_wrap)
    }

    /// Pops the next available descriptor list, or `None` if the descriptor
    /// at `next_avail` is not available.
    ///
    /// The list's length and buffer ID are found here by following NEXT
    /// flags through the ring (a list longer than the ring, or more
    /// descriptors in flight than the ring holds, breaks the queue); the
    /// buffers themselves are validated as the chain is iterated. Only the
    /// first descriptor's AVAIL/USED bits are checked, as the driver makes
    /// that one available last.
    ///
    /// Each call looks up the memory region of the descriptor ring once
    /// (the queue remembers its guest range, never a host pointer, so a
    /// memory map change between calls cannot leave a stale mapping in
    /// use) and resolves the ring and the buffers that lie in it without
    /// further lookups. To process several lists, [`PackedQueue::access`]
    /// resolves the ring once for all of them.
    #[inline]
    pub fn pop<'m, M: GuestMemory + ?Sized>(
        &mut self,
        mem: &'m M,
    ) -> Result<Option<PackedChain<'m, M>>> {
        self.cfg.check_usable()?;
        let hint = self.region(mem);
        let ring = self.ring_area(mem, &hint, Permissions::Read)?;
        self.pop_from(mem, ring, hint)
    }

    fn pop_from<'m, M: GuestMemory + ?Sized>(
        &mut self,
        mem: &'m M,
        ring: Area<'m, M>,
        hint: Hint<'m, M>,
    ) -> Result<Option<PackedChain<'m, M>>> {
        if !self.avail_at(&ring)? {
            return Ok(None);
        }
        let mut count: u16 = 1;
        let mut idx = self.next_avail;
        let id = loop {
            let raw = ring.read_desc(idx as usize * DESC_SIZE)?;
            let flags = (raw[1] >> 48) as u16;
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                break (raw[1] >> 32) as u16;
            }
            if count >= self.cfg.size {
                self.cfg.broken = true;
                return Err(Error::ChainTooLong {
                    head: self.next_avail,
                    limit: u32::from(self.cfg.size),
                });
            }
            count += 1;
            idx = if idx + 1 == self.cfg.size { 0 } else { idx + 1 };
        };
        if u32::from(self.in_flight) + u32::from(count) > u32::from(self.cfg.size) {
            self.cfg.broken = true;
            return Err(Error::TooManyInFlight {
                in_flight: u32::from(self.in_flight),
                size: self.cfg.size,
            });
        }
        let start = self.next_avail;
        (self.next_avail, self.avail_wrap) =
            advance(self.next_avail, self.avail_wrap, count, self.cfg.size);
        self.in_flight += count;
        Ok(Some(PackedChain {
            mem,
            ring,
            ring_size: self.cfg.size,
            start,
            count,
            pos: 0,
            id,
            indirect_ok: self.cfg.indirect,
            table: None,
            done: false,
            check: ChainCheck::new(hint),
        }))
    }

    /// Resolves the descriptor ring in `mem` once and returns a handle that
    /// pops and returns lists without looking it up again. Nothing is
    /// checked less.
    pub fn access<'q, 'm, M: GuestMemory + ?Sized>(
        &'q mut self,
        mem: &'m M,
    ) -> Result<PackedAccess<'q, 'm, M>> {
        self.cfg.check_ready()?;
        let ring = self.ring_area(mem, &Hint::none(), Permissions::ReadWrite)?;
        let hint = Hint::region_of(mem, self.cfg.desc);
        Ok(PackedAccess {
            queue: self,
            mem,
            ring,
            hint,
        })
    }

    /// Un-pops the last popped list of `desc_count` ring slots (see
    /// [`PackedChain::desc_count`]), so the next [`PackedQueue::pop`]
    /// returns it again. Returns `false` (and changes nothing) if fewer
    /// slots are in flight, or `desc_count` is 0.
    ///
    /// Only the most recently popped lists can be un-popped, newest first;
    /// their slots have not been overwritten by used descriptors, since
    /// those are written at `next_used`, behind every slot in flight.
    pub fn undo_pop(&mut self, desc_count: u16) -> bool {
        if desc_count == 0 || desc_count > self.in_flight {
            return false;
        }
        let (idx, wrap) = if self.next_avail >= desc_count {
            (self.next_avail - desc_count, self.avail_wrap)
        } else {
            // Back across slot 0: into the previous lap. The sum is below
            // 2 * 32768 and the result below `size`.
            (
                (u32::from(self.next_avail) + u32::from(self.cfg.size) - u32::from(desc_count))
                    as u16,
                !self.avail_wrap,
            )
        };
        self.next_avail = idx;
        self.avail_wrap = wrap;
        self.in_flight -= desc_count;
        true
    }

    /// Writes back a used descriptor for the buffer `id` that occupied
    /// `desc_count` ring slots (see [`PackedChain::desc_count`]), with `len`
    /// bytes written. The flags (AVAIL and USED equal to the device wrap
    /// counter, WRITE if `len` is non-zero) are stored after a Release fence.
    #[inline]
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        id: u16,
        len: u32,
        desc_count: u16,
    ) -> Result<()> {
        self.check_used(desc_count)?;
        let hint = self.region(mem);
        let ring = self.ring_area(mem, &hint, Permissions::Write)?;
        self.write_used(&ring, id, len, desc_count)
    }

    fn check_used(&self, desc_count: u16) -> Result<()> {
        self.cfg.check_ready()?;
        if desc_count == 0 || desc_count > self.in_flight {
            return Err(Error::NothingInFlight {
                count: u32::from(desc_count),
                in_flight: u32::from(self.in_flight),
            });
        }
        Ok(())
    }

    fn write_used<M: GuestMemory + ?Sized>(
        &mut self,
        ring: &Area<'_, M>,
        id: u16,
        len: u32,
        desc_count: u16,
    ) -> Result<()> {
        let off = self.next_used as usize * DESC_SIZE;
        ring.write_u32_u16(off + 8, len, id)?;
        let mut flags = if self.used_wrap {
            VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
        } else {
            0
        };
        if len != 0 {
            flags |= VIRTQ_DESC_F_WRITE;
        }
        fence(Ordering::Release);
        ring.store_u16(off + 14, flags, Ordering::Relaxed)?;
        (self.next_used, self.used_wrap) =
            advance(self.next_used, self.used_wrap, desc_count, self.cfg.size);
        self.in_flight -= desc_count;
        self.num_added = self.num_added.saturating_add(u32::from(desc_count));
        Ok(())
    }

    /// Whether the driver must be notified about the used descriptors
    /// written since the last call, per the driver event suppression
    /// structure (ENABLE, DISABLE, or DESC with EVENT_IDX).
    pub fn needs_notification<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool> {
        self.cfg.check_ready()?;
        let hint = self.region(mem);
        let driver = self.driver(mem, &hint)?;
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
        let flags = driver.load_u16(2, Ordering::Relaxed)?;
        match flags & 3 {
            RING_EVENT_FLAGS_ENABLE => Ok(true),
            RING_EVENT_FLAGS_DISABLE => Ok(false),
            RING_EVENT_FLAGS_DESC if self.cfg.event_idx => {
                let off_wrap = driver.load_u16(0, Ordering::Relaxed)?;
                let off = off_wrap & 0x7fff;
                if off >= self.cfg.size {
                    return Err(Error::InvalidEventOffset {
                        off_wrap,
                        size: self.cfg.size,
                    });
                }
                if added >= u32::from(self.cfg.size) {
                    return Ok(true);
                }
                let event = if (off_wrap >> 15 != 0) == self.used_wrap {
                    off
                } else {
                    off.wrapping_sub(self.cfg.size)
                };
                let new = self.next_used;
                let old = new.wrapping_sub(added as u16);
                Ok(vring_need_event(event, new, old))
            }
            _ => Err(Error::InvalidEventFlags { flags }),
        }
    }

    /// Asks the driver for notifications: the device event suppression
    /// structure gets DESC at `next_avail` with EVENT_IDX, else ENABLE.
    /// Returns `true` if a descriptor is already available.
    pub fn enable_notification<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<bool> {
        self.cfg.check_usable()?;
        let hint = self.region(mem);
        let device = self.device(mem, &hint)?;
        if self.cfg.event_idx {
            let off_wrap = self.next_avail | (u16::from(self.avail_wrap) << 15);
            device.store_u16(0, off_wrap, Ordering::Relaxed)?;
            device.store_u16(2, RING_EVENT_FLAGS_DESC, Ordering::Relaxed)?;
        } else {
            device.store_u16(2, RING_EVENT_FLAGS_ENABLE, Ordering::Relaxed)?;
        }
        fence(Ordering::SeqCst);
        let ring = self.ring_area(mem, &hint, Permissions::Read)?;
        self.avail_at(&ring)
    }

    /// Asks the driver not to notify (DISABLE in the device event suppression structure).
    pub fn disable_notification<M: GuestMemory + ?Sized>(&mut self, mem: &M) -> Result<()> {
        self.cfg.check_usable()?;
        let hint = self.region(mem);
        self.device(mem, &hint)?
            .store_u16(2, RING_EVENT_FLAGS_DISABLE, Ordering::Relaxed)
    }

    /// Saves the queue's state.
    pub fn state(&self) -> PackedQueueState {
        let c = self.cfg.saved();
        PackedQueueState {
            max_size: c.max_size,
            size: c.size,
            ready: c.ready,
            desc_ring: c.areas[0],
            driver_area: c.areas[1],
            device_area: c.areas[2],
            next_avail: self.next_avail,
            avail_wrap: self.avail_wrap,
            next_used: self.next_used,
            used_wrap: self.used_wrap,
            in_flight: self.in_flight,
            event_idx: c.event_idx,
            indirect: c.indirect,
            broken: c.broken,
        }
    }

    /// Rebuilds a queue from a saved state, validating every value. The
    /// first `needs_notification` after a restore always answers `true`.
    pub fn from_state(state: &PackedQueueState) -> Result<Self> {
        let cfg = RingConfig::restore(
            QueueLayout::Packed,
            &SavedConfig {
                max_size: state.max_size,
                size: state.size,
                ready: state.ready,
                areas: [state.desc_ring, state.driver_area, state.device_area],
                event_idx: state.event_idx,
                indirect: state.indirect,
                broken: state.broken,
            },
        )?;
        if state.next_avail >= state.size || state.next_used >= state.size {
            return Err(Error::InvalidState {
                field: "next_avail/next_used",
                value: u64::from(state.next_avail.max(state.next_used)),
                reason: "ring position beyond the queue size",
            });
        }
        if state.in_flight > state.size {
            return Err(Error::InvalidState {
                field: "in_flight",
                value: u64::from(state.in_flight),
                reason: "more descriptors in flight than the queue size",
            });
        }
        let span = 2 * u32::from(state.size);
        let a = lap_pos(state.next_avail, state.avail_wrap, state.size);
        let u = lap_pos(state.next_used, state.used_wrap, state.size);
        if (a + span - u) % span != u32::from(state.in_flight) {
            return Err(Error::InvalidState {
                field: "in_flight",
                value: u64::from(state.in_flight),
                reason: "in-flight count does not match the ring positions",
            });
        }
        let mut q = PackedQueue::with_config(cfg);
        q.next_avail = state.next_avail;
        q.avail_wrap = state.avail_wrap;
        q.next_used = state.next_used;
        q.used_wrap = state.used_wrap;
        q.in_flight = state.in_flight;
        q.force_notify = true;
        Ok(q)
    }
}

/// A [`PackedQueue`] with its descriptor ring resolved in one guest memory.
/// Made by [`PackedQueue::access`].
pub struct PackedAccess<'q, 'm, M: GuestMemory + ?Sized> {
    queue: &'q mut PackedQueue,
    mem: &'m M,
    ring: Area<'m, M>,
    hint: Hint<'m, M>,
}

impl<'m, M: GuestMemory + ?Sized> PackedAccess<'_, 'm, M> {
    /// As [`PackedQueue::pop`].
    pub fn pop(&mut self) -> Result<Option<PackedChain<'m, M>>> {
        self.queue.cfg.check_usable()?;
        self.queue
            .pop_from(self.mem, self.ring.clone(), self.hint.clone())
    }

    /// As [`PackedQueue::add_used`].
    pub fn add_used(&mut self, id: u16, len: u32, desc_count: u16) -> Result<()> {
        self.queue.check_used(desc_count)?;
        self.queue.write_used(&self.ring, id, len, desc_count)
    }

    /// As [`PackedQueue::needs_notification`].
    pub fn needs_notification(&mut self) -> Result<bool> {
        self.queue.needs_notification(self.mem)
    }

    /// As [`PackedQueue::enable_notification`].
    pub fn enable_notification(&mut self) -> Result<bool> {
        self.queue.enable_notification(self.mem)
    }

    /// As [`PackedQueue::disable_notification`].
    pub fn disable_notification(&mut self) -> Result<()> {
        self.queue.disable_notification(self.mem)
    }

    /// The queue behind this handle.
    pub fn queue(&self) -> &PackedQueue {
        self.queue
    }
}

/// Iteration state inside an indirect table.
struct IndirectTable<'m, M: GuestMemory + ?Sized> {
    area: Area<'m, M>,
    len: u32,
    pos: u32,
}

/// A descriptor list popped from a [`PackedQueue`]: an iterator over its
/// validated buffers (ring descriptors in order, or one indirect table).
///
/// Checks as for [`crate::SplitChain`]; in addition an indirect descriptor
/// must be the only one of its list, and inside an indirect table NEXT and
/// the buffer ID are ignored, as the specification says.
pub struct PackedChain<'m, M: GuestMemory + ?Sized> {
    mem: &'m M,
    ring: Area<'m, M>,
    ring_size: u16,
    start: u16,
    count: u16,
    pos: u16,
    id: u16,
    indirect_ok: bool,
    table: Option<IndirectTable<'m, M>>,
    done: bool,
    check: ChainCheck<'m, M>,
}

impl<'m, M: GuestMemory + ?Sized> PackedChain<'m, M> {
    /// The buffer ID (from the list's last descriptor), for [`PackedQueue::add_used`].
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The number of ring slots the list occupies, for [`PackedQueue::add_used`].
    pub fn desc_count(&self) -> u16 {
        self.count
    }

    /// The ring slot of the list's first descriptor.
    pub fn head_slot(&self) -> u16 {
        self.start
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
            if let Some(t) = &mut self.table {
                if t.pos >= t.len {
                    self.done = true;
                    return Ok(None);
                }
                // `t.len` is at most MAX_INDIRECT_DESCRIPTORS (32768).
                let at = DescIndex::indirect(t.pos as u16);
                let raw = t.area.read_desc(t.pos as usize * DESC_SIZE)?;
                t.pos += 1;
                let flags = (raw[1] >> 48) as u16;
                if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                    return Err(Error::NestedIndirect { at });
                }
                let d = self.check.buffer(
                    self.mem,
                    at,
                    raw[0],
                    raw[1] as u32,
                    flags & VIRTQ_DESC_F_WRITE != 0,
                )?;
                return Ok(Some(d));
            }
            if self.pos >= self.count {
                self.done = true;
                return Ok(None);
            }
            let (idx, _) = advance(self.start, false, self.pos, self.ring_size);
            self.pos += 1;
            let at = DescIndex::ring(idx);
            let raw = self.ring.read_desc(idx as usize * DESC_SIZE)?;
            let flags = (raw[1] >> 48) as u16;
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if !self.indirect_ok {
                    return Err(Error::IndirectNotNegotiated { at });
                }
                if self.count > 1 {
                    return Err(Error::IndirectInList { at });
                }
                if flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(Error::IndirectWithNext { at });
                }
                let (area, len) = indirect_table(self.mem, &self.check, at, raw[0], raw[1] as u32)?;
                self.table = Some(IndirectTable { area, len, pos: 0 });
                continue;
            }
            let d = self.check.buffer(
                self.mem,
                at,
                raw[0],
                raw[1] as u32,
                flags & VIRTQ_DESC_F_WRITE != 0,
            )?;
            return Ok(Some(d));
        }
    }
}

impl<M: GuestMemory + ?Sized> Iterator for PackedChain<'_, M> {
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

impl<M: GuestMemory + ?Sized> std::iter::FusedIterator for PackedChain<'_, M> {}

impl<M: GuestMemory + ?Sized> std::fmt::Debug for PackedChain<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedChain")
            .field("id", &self.id)
            .field("start", &self.start)
            .field("count", &self.count)
            .field("pos", &self.pos)
            .field("done", &self.done)
            .finish()
    }
}
