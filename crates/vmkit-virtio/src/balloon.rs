//! virtio-balloon (virtio 1.2, section 5.5): the guest gives memory back to
//! the host.
//!
//! # Queues
//!
//! Queues exist only for the features the driver accepted, and are numbered
//! densely in the specification's order, so an index means different
//! queues under different features:
//!
//! | index | always    | `STATS_VQ` | `REPORTING` | both          |
//! |-------|-----------|------------|-------------|---------------|
//! | 0     | inflateq  | inflateq   | inflateq    | inflateq      |
//! | 1     | deflateq  | deflateq   | deflateq    | deflateq      |
//! | 2     |           | statsq     | reporting_vq| statsq        |
//! | 3     |           |            |             | reporting_vq  |
//!
//! (`FREE_PAGE_HINT`, which would sit between them, is not offered.)
//!
//! - **inflateq**: arrays of 32-bit page frame numbers (4 KiB pages) the
//!   guest gives up. Runs of consecutive frames are discarded from the host
//!   mapping through a [`DiscardPages`] back end, which the VMM supplies:
//!   this crate holds no host mapping and has no `unsafe`. A discarded page
//!   reads back as zeros (private anonymous memory or a shared memfd) when
//!   the guest takes it back.
//! - **deflateq**: frames the guest takes back. Nothing to do on the host
//!   (the next access faults a zero page in); the frames are still checked.
//! - **statsq**: the guest's memory statistics, tag/value pairs. The device
//!   keeps the driver's buffer until the VMM asks for new figures
//!   ([`Balloon::request_stats`]); returning it is the request.
//! - **reporting_vq** (`VIRTIO_BALLOON_F_REPORTING`): free page reporting.
//!   Each descriptor's `(addr, len)` is a free range; the device discards it
//!   and returns the chain. The guest reports continuously, without a
//!   target.
//!
//! The VMM polls the statistics at the interval it chooses with
//! [`MmioTransport::poll_balloon_stats`] (or asks once with
//! [`MmioTransport::request_balloon_stats`]), and reads them with
//! [`Balloon::stats`], which says when they arrived.
//!
//! The VMM sets the target ([`Balloon::set_target_pages`]) and then raises a
//! configuration change interrupt (the transport's
//! `notify_config_change`); [`MmioTransport::set_balloon_target`] does both.
//!
//! # Hostile input
//!
//! Every frame or range is checked before anything is discarded: it must be
//! page aligned, lie wholly inside one guest memory region, and the back
//! end checks it again against its own list of RAM regions (refusing
//! read-only ones). A refused frame or range is counted
//! ([`BalloonCounters::refused`]) and its error kept for the VMM
//! ([`Balloon::take_error`]); the chain is returned and the device goes on
//! (a single bad request does not break the device, as for the other
//! devices of this crate). One chain carries at most
//! [`MAX_PFNS_PER_CHAIN`] frames (the rest are refused) and one
//! notification handles at most [`crate::device::PROCESS_BUDGET`] chains,
//! so a notification's cost is bounded.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryBackend, GuestMemoryRegion,
};

use crate::device::{
    read_config_bytes, DeviceError, StateError, VirtioDevice, PROCESS_BUDGET, VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_ID_BALLOON,
};
use crate::mmio::{MmioError, MmioTransport};
use crate::{ChainHead, Descriptor, Persist, Queue};

/// Feature bit 1: the statistics queue exists.
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// Feature bit 2: the guest deflates the balloon when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Feature bit 5: free page reporting (the reporting queue exists).
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;

/// The balloon's page size: page frame numbers count 4 KiB pages whatever
/// the guest's own page size.
pub const BALLOON_PAGE_SIZE: u64 = 4096;
/// The maximum size of each queue.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// The most page frame numbers one inflate or deflate chain may carry
/// (Linux sends at most 256); the rest are refused.
pub const MAX_PFNS_PER_CHAIN: usize = 4096;
/// The most tag/value pairs read from one statistics buffer (the
/// specification defines 16 tags).
pub const MAX_STATS: usize = 64;

/// Statistics tag: memory swapped in (bytes).
pub const STAT_SWAP_IN: u16 = 0;
/// Statistics tag: memory swapped out (bytes).
pub const STAT_SWAP_OUT: u16 = 1;
/// Statistics tag: major page faults.
pub const STAT_MAJOR_FAULTS: u16 = 2;
/// Statistics tag: minor page faults.
pub const STAT_MINOR_FAULTS: u16 = 3;
/// Statistics tag: memory the guest does not use at all (bytes).
pub const STAT_FREE_MEMORY: u16 = 4;
/// Statistics tag: memory the guest can use (bytes).
pub const STAT_TOTAL_MEMORY: u16 = 5;
/// Statistics tag: memory available for new work without swapping (bytes).
pub const STAT_AVAILABLE_MEMORY: u16 = 6;
/// Statistics tag: memory in the guest's disk caches (bytes).
pub const STAT_DISK_CACHES: u16 = 7;

/// Size of the configuration space: `num_pages`, `actual`.
const CONFIG_LEN: usize = 8;
/// Size of one statistics entry: `tag: u16`, `val: u64`, packed.
const STAT_LEN: usize = 10;

/// What a queue index means under the negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// The queue roles in index order for the features `acked`.
fn roles(acked: u64) -> impl Iterator<Item = Role> {
    [
        Some(Role::Inflate),
        Some(Role::Deflate),
        (acked & VIRTIO_BALLOON_F_STATS_VQ != 0).then_some(Role::Stats),
        (acked & VIRTIO_BALLOON_F_REPORTING != 0).then_some(Role::Reporting),
    ]
    .into_iter()
    .flatten()
}

/// Why the back end did not discard a range.
#[derive(Debug, thiserror::Error)]
#[error("cannot discard guest range {addr:#x}+{len:#x}")]
pub struct DiscardError {
    /// First guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// What the back end reported (not RAM, read-only, `madvise` failed…).
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Discards guest RAM from its host mapping: what the VMM gives a
/// [`Balloon`].
///
/// The device calls it with page-aligned ranges it has checked lie in one
/// guest memory region. The implementation must check again that the range
/// is RAM it owns and may discard (not read-only, not a device's memory),
/// then drop the host pages so that they read back as zeros:
/// `MADV_DONTNEED` for a private anonymous mapping, `MADV_REMOVE` for a
/// shared one (memfd or file), where `MADV_DONTNEED` would only drop this
/// process's page table entries and free nothing. `vmkit`'s
/// `MemoryRegion::discard` does this.
pub trait DiscardPages {
    /// Discards `len` bytes of guest RAM at `addr`.
    fn discard(&mut self, addr: GuestAddress, len: u64) -> Result<(), DiscardError>;
}

impl<F: FnMut(GuestAddress, u64) -> Result<(), DiscardError>> DiscardPages for F {
    fn discard(&mut self, addr: GuestAddress, len: u64) -> Result<(), DiscardError> {
        self(addr, len)
    }
}

/// A frame or range the device refused; see [`Balloon::take_error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BalloonError {
    /// The range is not wholly inside one guest memory region (outside
    /// RAM, in a hole, or across regions).
    #[error("{queue}: guest range {addr:#x}+{len:#x} is not inside one guest RAM region")]
    NotRam {
        /// The queue ("inflateq", "deflateq", "reporting_vq").
        queue: &'static str,
        /// First guest-physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A reported range is not aligned to the 4 KiB balloon page.
    #[error("{queue}: guest range {addr:#x}+{len:#x} is not aligned to {BALLOON_PAGE_SIZE} bytes")]
    Unaligned {
        /// The queue.
        queue: &'static str,
        /// First guest-physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// A chain carried more frames than [`MAX_PFNS_PER_CHAIN`], or a frame
    /// array whose length is not a multiple of 4.
    #[error("{queue}: a chain of {bytes} bytes of frame numbers exceeds {MAX_PFNS_PER_CHAIN} frames or is not a multiple of 4 bytes")]
    BadPfnArray {
        /// The queue.
        queue: &'static str,
        /// The bytes of frame numbers in the chain.
        bytes: u64,
    },
    /// The chain could not be read (the queue rejected it).
    #[error("{queue}: malformed chain")]
    Chain {
        /// The queue.
        queue: &'static str,
        /// What the queue reported.
        #[source]
        source: crate::Error,
    },
    /// The back end refused the range or failed.
    #[error("{queue}: discard failed")]
    Discard {
        /// The queue.
        queue: &'static str,
        /// The back end's error.
        #[source]
        source: DiscardError,
    },
}

/// Which optional features a [`Balloon`] offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonOptions {
    /// Offer the statistics queue (`VIRTIO_BALLOON_F_STATS_VQ`).
    pub stats: bool,
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: the guest may take pages
    /// back, below the target, when it would otherwise run out of memory.
    pub deflate_on_oom: bool,
    /// Offer free page reporting (`VIRTIO_BALLOON_F_REPORTING`).
    pub free_page_reporting: bool,
}

impl Default for BalloonOptions {
    /// Everything on.
    fn default() -> Self {
        BalloonOptions {
            stats: true,
            deflate_on_oom: true,
            free_page_reporting: true,
        }
    }
}

/// Counters of a [`Balloon`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonCounters {
    /// Pages discarded on inflation.
    pub inflated_pages: u64,
    /// Pages the guest took back.
    pub deflated_pages: u64,
    /// Bytes discarded through free page reporting.
    pub reported_bytes: u64,
    /// Frames and ranges refused (see [`BalloonError`]).
    pub refused: u64,
    /// Statistics buffers received.
    pub stats_updates: u64,
}

/// The guest's memory statistics, as last reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonStats {
    /// The tag/value pairs, in the guest's order (unknown tags kept).
    pub values: Vec<(u16, u64)>,
}

impl BalloonStats {
    /// The value of `tag`, if the guest reported it.
    pub fn get(&self, tag: u16) -> Option<u64> {
        self.values.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v)
    }

    /// Free memory in bytes ([`STAT_FREE_MEMORY`]).
    pub fn free_memory(&self) -> Option<u64> {
        self.get(STAT_FREE_MEMORY)
    }

    /// Available memory in bytes ([`STAT_AVAILABLE_MEMORY`]).
    pub fn available_memory(&self) -> Option<u64> {
        self.get(STAT_AVAILABLE_MEMORY)
    }

    /// Disk caches in bytes ([`STAT_DISK_CACHES`]).
    pub fn disk_caches(&self) -> Option<u64> {
        self.get(STAT_DISK_CACHES)
    }

    /// Total memory in bytes ([`STAT_TOTAL_MEMORY`]).
    pub fn total_memory(&self) -> Option<u64> {
        self.get(STAT_TOTAL_MEMORY)
    }
}

/// The saved state of a [`Balloon`] ([`Persist::State`]). The negotiated
/// features come back through the transport (which activates the device).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonState {
    /// The target, in pages (`num_pages`).
    pub num_pages: u32,
    /// The driver's `actual` field.
    pub actual: u32,
    /// The statistics buffer the device holds, as (head or buffer ID, ring
    /// slots), so that the restored device can return it.
    pub stats_buffer: Option<(u16, u16)>,
    /// Whether the VMM asked for statistics not yet delivered.
    pub stats_requested: bool,
    /// The last statistics.
    pub stats: Option<BalloonStats>,
    /// The counters.
    pub counters: BalloonCounters,
}

/// A virtio balloon discarding pages through `P`.
#[derive(Debug)]
pub struct Balloon<P> {
    discard: P,
    options: BalloonOptions,
    queue_sizes: Vec<u16>,
    acked: u64,
    num_pages: u32,
    actual: u32,
    stats_buffer: Option<ChainHead>,
    stats_requested: bool,
    stats: Option<(BalloonStats, Instant)>,
    counters: BalloonCounters,
    last_error: Option<BalloonError>,
    pfns: Vec<u32>,
}

impl<P: DiscardPages> Balloon<P> {
    /// A balloon with target 0, discarding through `discard`.
    pub fn new(discard: P, options: BalloonOptions) -> Self {
        let queues = 2 + usize::from(options.stats) + usize::from(options.free_page_reporting);
        Balloon {
            discard,
            options,
            queue_sizes: vec![QUEUE_MAX_SIZE; queues],
            acked: 0,
            num_pages: 0,
            actual: 0,
            stats_buffer: None,
            stats_requested: false,
            stats: None,
            counters: BalloonCounters::default(),
            last_error: None,
            pfns: Vec::new(),
        }
    }

    /// Sets the target size (`num_pages`, in 4 KiB pages). Follow with a
    /// configuration change interrupt, or use
    /// [`MmioTransport::set_balloon_target`].
    pub fn set_target_pages(&mut self, pages: u32) {
        self.num_pages = pages;
    }

    /// The target, in pages.
    pub fn target_pages(&self) -> u32 {
        self.num_pages
    }

    /// The pages the driver says the balloon holds (`actual`).
    pub fn actual_pages(&self) -> u32 {
        self.actual
    }

    /// Asks for new statistics: the held buffer goes back to the guest on
    /// the next processing of the statistics queue (see
    /// [`MmioTransport::request_balloon_stats`]). Returns whether the
    /// statistics queue was negotiated.
    pub fn request_stats(&mut self) -> bool {
        self.stats_requested = true;
        self.acked & VIRTIO_BALLOON_F_STATS_VQ != 0
    }

    /// The last statistics and when they arrived.
    pub fn stats(&self) -> Option<(&BalloonStats, Instant)> {
        self.stats.as_ref().map(|(s, t)| (s, *t))
    }

    /// The counters.
    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    /// Takes the last refused frame or range, if any.
    pub fn take_error(&mut self) -> Option<BalloonError> {
        self.last_error.take()
    }

    /// The index of the statistics queue under the negotiated features.
    pub fn stats_queue(&self) -> Option<u16> {
        self.index_of(Role::Stats)
    }

    /// The index of the reporting queue under the negotiated features.
    pub fn reporting_queue(&self) -> Option<u16> {
        self.index_of(Role::Reporting)
    }

    fn index_of(&self, role: Role) -> Option<u16> {
        roles(self.acked)
            .position(|r| r == role)
            .and_then(|i| u16::try_from(i).ok())
    }

    fn refuse(&mut self, e: BalloonError) {
        self.counters.refused = self.counters.refused.saturating_add(1);
        self.last_error = Some(e);
    }

    /// Checks that `[addr, addr + len)` lies in one region of `mem`.
    fn in_ram<M: GuestMemory + ?Sized>(mem: &M, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let Some(pm) = mem.physical_memory() else {
            return false;
        };
        pm.find_region(GuestAddress(addr))
            .is_some_and(|r| end <= r.start_addr().0.saturating_add(r.len()))
    }

    /// Checks and discards one page-aligned range.
    fn discard_range<M: GuestMemory + ?Sized>(
        &mut self,
        queue: &'static str,
        mem: &M,
        addr: u64,
        len: u64,
        discard: bool,
    ) -> bool {
        if !addr.is_multiple_of(BALLOON_PAGE_SIZE) || !len.is_multiple_of(BALLOON_PAGE_SIZE) {
            self.refuse(BalloonError::Unaligned { queue, addr, len });
            return false;
        }
        if len == 0 {
            return true;
        }
        if !Self::in_ram(mem, addr, len) {
            self.refuse(BalloonError::NotRam { queue, addr, len });
            return false;
        }
        if discard {
            if let Err(source) = self.discard.discard(GuestAddress(addr), len) {
                self.refuse(BalloonError::Discard { queue, source });
                return false;
            }
        }
        true
    }

    /// Reads the frame numbers of one chain into `self.pfns`.
    fn read_pfns<M: GuestMemory + ?Sized>(
        &mut self,
        queue: &'static str,
        descs: &[Descriptor],
        mem: &M,
    ) -> bool {
        self.pfns.clear();
        let bytes: u64 = descs
            .iter()
            .filter(|d| !d.is_write_only())
            .map(|d| u64::from(d.len()))
            .sum();
        // Each buffer holds whole frame numbers (a driver never splits one).
        let split = descs
            .iter()
            .any(|d| !d.is_write_only() && !d.len().is_multiple_of(4));
        if split || bytes / 4 > MAX_PFNS_PER_CHAIN as u64 {
            self.refuse(BalloonError::BadPfnArray { queue, bytes });
            return false;
        }
        for d in descs.iter().filter(|d| !d.is_write_only()) {
            let mut buf = vec![0u8; d.len() as usize];
            if mem.read_slice(&mut buf, d.addr()).is_err() {
                self.refuse(BalloonError::NotRam {
                    queue,
                    addr: d.addr().0,
                    len: u64::from(d.len()),
                });
                return false;
            }
            self.pfns.extend(buf.chunks_exact(4).map(|c| {
                let mut w = [0u8; 4];
                w.copy_from_slice(c);
                u32::from_le_bytes(w)
            }));
        }
        true
    }

    /// Inflates (`discard`) or deflates the frames in `self.pfns`, in runs
    /// of consecutive frames; returns the pages accepted.
    fn apply_pfns<M: GuestMemory + ?Sized>(
        &mut self,
        queue: &'static str,
        mem: &M,
        discard: bool,
    ) -> u64 {
        let pfns = std::mem::take(&mut self.pfns);
        let mut accepted = 0u64;
        let mut i = 0;
        while let Some(&first) = pfns.get(i) {
            let mut n = 1usize;
            while pfns
                .get(i + n)
                .is_some_and(|&p| u64::from(p) == u64::from(first) + n as u64)
            {
                n += 1;
            }
            let addr = u64::from(first) * BALLOON_PAGE_SIZE;
            let len = n as u64 * BALLOON_PAGE_SIZE;
            if self.discard_range(queue, mem, addr, len, discard) {
                accepted += n as u64;
            }
            i += n;
        }
        self.pfns = pfns;
        accepted
    }

    /// Pops and handles chains of `queue` with `handle`, which returns the
    /// used length.
    fn drain<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &M,
        mut handle: impl FnMut(&mut Self, &[Descriptor], &M),
    ) -> Result<(), DeviceError> {
        let err = |source| DeviceError::Queue { index, source };
        let mut budget = PROCESS_BUDGET;
        loop {
            while budget > 0 {
                let Some(chain) = queue.pop(mem).map_err(err)? else {
                    break;
                };
                budget -= 1;
                let head = chain.head();
                match chain.collect::<crate::Result<Vec<_>>>() {
                    Ok(descs) => handle(self, &descs, mem),
                    Err(source) => self.refuse(BalloonError::Chain {
                        queue: name(index, self.acked),
                        source,
                    }),
                }
                queue.add_used(mem, head, 0).map_err(err)?;
            }
            if budget == 0 || !queue.enable_notification(mem).map_err(err)? {
                return Ok(());
            }
        }
    }

    fn inflate(&mut self, descs: &[Descriptor], mem: &(impl GuestMemory + ?Sized)) {
        if self.read_pfns("inflateq", descs, mem) {
            let n = self.apply_pfns("inflateq", mem, true);
            self.counters.inflated_pages = self.counters.inflated_pages.saturating_add(n);
        }
    }

    fn deflate(&mut self, descs: &[Descriptor], mem: &(impl GuestMemory + ?Sized)) {
        if self.read_pfns("deflateq", descs, mem) {
            let n = self.apply_pfns("deflateq", mem, false);
            self.counters.deflated_pages = self.counters.deflated_pages.saturating_add(n);
        }
    }

    fn report(&mut self, descs: &[Descriptor], mem: &(impl GuestMemory + ?Sized)) {
        for d in descs {
            let (addr, len) = (d.addr().0, u64::from(d.len()));
            if self.discard_range("reporting_vq", mem, addr, len, true) {
                self.counters.reported_bytes = self.counters.reported_bytes.saturating_add(len);
            }
        }
    }

    /// The statistics queue: returns the held buffer if asked to, then
    /// reads and holds the next one.
    fn process_stats<M: GuestMemory + ?Sized>(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<(), DeviceError> {
        let err = |source| DeviceError::Queue { index, source };
        if self.stats_requested {
            if let Some(head) = self.stats_buffer.take() {
                self.stats_requested = false;
                queue.add_used(mem, head, 0).map_err(err)?;
            }
        }
        let mut budget = PROCESS_BUDGET;
        loop {
            while budget > 0 {
                let Some(chain) = queue.pop(mem).map_err(err)? else {
                    break;
                };
                budget -= 1;
                let head = chain.head();
                match chain.collect::<crate::Result<Vec<_>>>() {
                    Ok(descs) => self.read_stats(&descs, mem),
                    Err(source) => self.refuse(BalloonError::Chain {
                        queue: "statsq",
                        source,
                    }),
                }
                // Fresh figures answer a pending request.
                self.stats_requested = false;
                // The driver keeps one buffer on the queue; a second one would
                // wait forever, so the older one goes back at once.
                if let Some(old) = self.stats_buffer.replace(head) {
                    queue.add_used(mem, old, 0).map_err(err)?;
                }
            }
            if budget == 0 || !queue.enable_notification(mem).map_err(err)? {
                return Ok(());
            }
        }
    }

    fn read_stats<M: GuestMemory + ?Sized>(&mut self, descs: &[Descriptor], mem: &M) {
        let mut bytes = Vec::new();
        for d in descs.iter().filter(|d| !d.is_write_only()) {
            let room = MAX_STATS * STAT_LEN - bytes.len();
            let n = (d.len() as usize).min(room);
            let at = bytes.len();
            bytes.resize(at + n, 0);
            if mem.read_slice(&mut bytes[at..], d.addr()).is_err() {
                bytes.truncate(at);
                break;
            }
        }
        let values = bytes
            .chunks_exact(STAT_LEN)
            .map(|e| {
                let mut v = [0u8; 8];
                v.copy_from_slice(&e[2..]);
                (u16::from_le_bytes([e[0], e[1]]), u64::from_le_bytes(v))
            })
            .collect();
        self.counters.stats_updates = self.counters.stats_updates.saturating_add(1);
        self.stats = Some((BalloonStats { values }, Instant::now()));
    }
}

/// The name of queue `index` under `acked`, for errors.
fn name(index: u16, acked: u64) -> &'static str {
    match roles(acked).nth(usize::from(index)) {
        Some(Role::Inflate) => "inflateq",
        Some(Role::Deflate) => "deflateq",
        Some(Role::Stats) => "statsq",
        Some(Role::Reporting) => "reporting_vq",
        None => "no such queue",
    }
}

impl<M: GuestMemory + ?Sized, P: DiscardPages> VirtioDevice<M> for Balloon<P> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn features(&self) -> u64 {
        let mut f =
            VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_F_RING_PACKED;
        if self.options.stats {
            f |= VIRTIO_BALLOON_F_STATS_VQ;
        }
        if self.options.deflate_on_oom {
            f |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if self.options.free_page_reporting {
            f |= VIRTIO_BALLOON_F_REPORTING;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; CONFIG_LEN];
        space[..4].copy_from_slice(&self.num_pages.to_le_bytes());
        space[4..].copy_from_slice(&self.actual.to_le_bytes());
        read_config_bytes(&space, offset, data);
    }

    /// Only `actual` (bytes 4..8) is writable; a partial write updates the
    /// bytes it covers.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut actual = self.actual.to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            let at = offset.checked_add(i as u64).and_then(|o| o.checked_sub(4));
            if let Some(slot) = at
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| actual.get_mut(o))
            {
                *slot = *b;
            }
        }
        self.actual = u32::from_le_bytes(actual);
    }

    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        self.acked = features;
        Ok(())
    }

    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<bool, DeviceError> {
        match roles(self.acked).nth(usize::from(index)) {
            Some(Role::Inflate) => self.drain(index, queue, mem, |b, d, m| b.inflate(d, m))?,
            Some(Role::Deflate) => self.drain(index, queue, mem, |b, d, m| b.deflate(d, m))?,
            Some(Role::Reporting) => self.drain(index, queue, mem, |b, d, m| b.report(d, m))?,
            Some(Role::Stats) => self.process_stats(index, queue, mem)?,
            None => {
                return Err(DeviceError::NoSuchQueue {
                    index,
                    count: roles(self.acked).count(),
                })
            }
        }
        queue
            .needs_notification(mem)
            .map_err(|source| DeviceError::Queue { index, source })
    }

    /// Forgets the negotiated features, the held statistics buffer and
    /// `actual`; the target and the last statistics stay.
    fn reset(&mut self) {
        self.acked = 0;
        self.actual = 0;
        self.stats_buffer = None;
        self.stats_requested = false;
    }
}

/// Target, `actual`, the held statistics buffer, the last statistics and
/// the counters ([`BalloonState`]).
impl<P> Persist for Balloon<P> {
    const KIND: &'static str = "virtio-balloon";
    const VERSION: u16 = 1;
    type State = BalloonState;
    type Error = StateError;

    fn save_state(&self) -> BalloonState {
        BalloonState {
            num_pages: self.num_pages,
            actual: self.actual,
            stats_buffer: self.stats_buffer.map(|h| (h.id(), h.slots())),
            stats_requested: self.stats_requested,
            stats: self.stats.as_ref().map(|(s, _)| s.clone()),
            counters: self.counters,
        }
    }

    /// Refuses a held statistics buffer when this balloon has no statistics
    /// queue, and more statistics than [`MAX_STATS`]. A held buffer whose
    /// head is not in flight in the restored queue makes the queue fail when
    /// it is returned (a device error, never a panic).
    fn restore_state(&mut self, saved: &BalloonState) -> Result<(), StateError> {
        if saved.stats_buffer.is_some() && !self.options.stats {
            return Err(StateError::Invalid {
                kind: Self::KIND,
                reason: "stats_buffer is set but the device has no statistics queue".into(),
            });
        }
        if let Some(s) = &saved.stats {
            if s.values.len() > MAX_STATS {
                return Err(StateError::TooLarge {
                    field: "stats",
                    len: s.values.len(),
                    limit: MAX_STATS,
                });
            }
        }
        self.num_pages = saved.num_pages;
        self.actual = saved.actual;
        self.stats_buffer = saved
            .stats_buffer
            .map(|(id, slots)| ChainHead::new(id, slots));
        self.stats_requested = saved.stats_requested;
        self.stats = saved.stats.clone().map(|s| (s, Instant::now()));
        self.counters = saved.counters;
        Ok(())
    }
}

impl<S, P> MmioTransport<S, Balloon<P>>
where
    S: GuestAddressSpace,
    P: DiscardPages,
{
    /// Sets the balloon's target to `pages` 4 KiB pages and tells the
    /// driver (configuration change interrupt).
    pub fn set_balloon_target(&self, pages: u32) {
        self.with_device(|b| b.set_target_pages(pages));
        self.notify_config_change();
    }

    /// Asks the guest for new statistics: returns the held statistics
    /// buffer now if the driver is live. The figures arrive when the driver
    /// refills it; read them with [`Balloon::stats`] (through
    /// `with_device`). Call it at the polling interval the VMM wants.
    /// Returns whether the driver was interrupted.
    pub fn request_balloon_stats(&self) -> Result<bool, MmioError> {
        match self.with_device(|b| b.request_stats().then(|| b.stats_queue()).flatten()) {
            Some(index) => self.process_queue(index),
            None => Ok(false),
        }
    }

    /// Polls the guest's statistics: asks for them
    /// ([`MmioTransport::request_balloon_stats`]) every `interval` until
    /// `stop` receives a message or its sender is dropped. Run it on a
    /// thread of the VMM's choosing (with the VMM's seccomp filter: it
    /// needs the base rules only); read the figures with [`Balloon::stats`].
    pub fn poll_balloon_stats(
        &self,
        interval: Duration,
        stop: &mpsc::Receiver<()>,
    ) -> Result<(), MmioError> {
        loop {
            match stop.recv_timeout(interval) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.request_balloon_stats()?;
                }
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
}
