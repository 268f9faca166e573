//! Guest memory regions: what a VMM maps into a VM, and how the VM keeps track of them.
//!
//! A [`MemoryRegion`] is a host mapping (a vm-memory [`MmapRegion`]) placed at a guest-physical
//! address, with [`MemoryFlags`]. The VMM hands a region to [`Vm::add_memory_region`], the VM owns
//! it while it is mapped, and [`Vm::remove_memory_region`] hands it back. No caller writes
//! `unsafe` to share memory with a guest.
//!
//! Regions whose flags include [`MemoryFlags::LOG_DIRTY`] carry a vm-memory [`AtomicBitmap`] so
//! that writes made by the VMM itself (device emulation) are tracked too, not only the guest's.
//!
//! [`Vm::add_memory_region`]: crate::Vm::add_memory_region
//! [`Vm::remove_memory_region`]: crate::Vm::remove_memory_region

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;

use bitflags::bitflags;
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryRegion, GuestUsize, MmapRegion};

/// The page size that region addresses and sizes must be aligned to.
pub const PAGE_SIZE: usize = 4096;

/// The dirty-page bitmap kept for VMM-side writes: present only on regions that log dirty pages.
pub type DirtyBitmap = Option<AtomicBitmap>;

/// One guest memory region as vm-memory sees it, with vmkit's dirty bitmap type.
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<DirtyBitmap>;

/// The guest's memory as vm-memory sees it: every region currently mapped into a VM.
///
/// Obtained from [`Vm::memory`](crate::Vm::memory); it is a cheap, immutable snapshot of the
/// layout (regions are reference-counted), usable with the whole vm-memory API (`Bytes`,
/// `GuestMemory`, …) and with crates built on it, such as linux-loader.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<DirtyBitmap>;

bitflags! {
    /// How the guest may use a memory region.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct MemoryFlags: u32 {
        /// The guest may read but not write the region; guest writes become MMIO write exits.
        const READ_ONLY = 1 << 0;
        /// The hypervisor logs which pages the guest writes (and vm-memory logs the VMM's
        /// writes), for live migration and incremental snapshots.
        const LOG_DIRTY = 1 << 1;
        /// The host may merge identical pages of the region with other processes' (KSM,
        /// `MADV_MERGEABLE`), applied when [`MemoryRegion`] maps it (not by
        /// [`MemoryRegion::from_mapping`], whose caller maps). Off by default, because the
        /// saving comes with a side channel: a guest that writes a page and times the
        /// write can tell whether another guest on the host holds a page with the same
        /// contents (a merged page is copied on write, which takes longer), and so learn
        /// what another guest's memory contains. Use it only for guests that trust one
        /// another, and only where KSM runs (`/sys/kernel/mm/ksm/run`); a kernel without
        /// KSM refuses the advice ([`MemoryError::Advice`]).
        const MERGEABLE = 1 << 2;
    }
}

/// Identifies a region mapped into a VM. Returned by `add_memory_region`, taken by
/// `remove_memory_region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemorySlot(pub u32);

impl fmt::Display for MemorySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// A guest-physical range `[start, start + size)`, printed as `0xstart..0xend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    /// First guest-physical address of the range.
    pub start: u64,
    /// Length of the range in bytes.
    pub size: u64,
}

impl GuestRange {
    /// One past the last address; saturates so that a wrapping range still prints.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }

    // Only backends place regions; vmkit built without one (as the device crates take it) has
    // no caller.
    #[cfg_attr(not(any(feature = "kvm", feature = "xen")), allow(dead_code))]
    fn overlaps(&self, other: &GuestRange) -> bool {
        self.start < other.end() && other.start < self.end()
    }
}

impl fmt::Display for GuestRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.start, self.end())
    }
}

/// Errors about memory regions: building them, and placing them in a VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The region has no bytes.
    #[error("memory region at {guest_addr:#x} has size zero")]
    ZeroSize {
        /// Requested guest-physical address.
        guest_addr: u64,
    },
    /// The address or the size is not a multiple of the page size.
    #[error("memory region {range} is not aligned to the {PAGE_SIZE}-byte page size")]
    Unaligned {
        /// The offending range.
        range: GuestRange,
    },
    /// `guest_addr + size` does not fit in 64 bits.
    #[error("memory region at {guest_addr:#x} with size {size:#x} wraps past the end of the address space")]
    AddressOverflow {
        /// Requested guest-physical address.
        guest_addr: u64,
        /// Requested size.
        size: u64,
    },
    /// Creating the host mapping failed.
    #[error("failed to map {size:#x} bytes for the memory region at {guest_addr:#x}")]
    Mmap {
        /// Requested guest-physical address.
        guest_addr: u64,
        /// Requested size.
        size: u64,
        /// What vm-memory reported.
        #[source]
        source: MmapRegionError,
    },
    /// The new region overlaps one the VM already has.
    #[error("memory region {new} overlaps region {existing} in {slot}")]
    Overlap {
        /// The region being added.
        new: GuestRange,
        /// The region already mapped.
        existing: GuestRange,
        /// The slot of the region already mapped.
        slot: MemorySlot,
    },
    /// Every memory slot the hypervisor offers is in use.
    #[error("no free memory slot for region {range}: all {max} slots are in use")]
    SlotsExhausted {
        /// The region that did not fit.
        range: GuestRange,
        /// How many slots the hypervisor offers.
        max: u32,
    },
    /// No region is mapped in that slot.
    #[error("no memory region is mapped in {0}")]
    NoSuchSlot(MemorySlot),
    /// The kernel refused the `madvise` a region flag asks for (e.g. [`MemoryFlags::MERGEABLE`]
    /// on a kernel without KSM).
    #[error("memory region {range}: the kernel refused {flag} (madvise {advice})")]
    Advice {
        /// The region.
        range: GuestRange,
        /// The flag that asked for it.
        flag: &'static str,
        /// The advice.
        advice: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// [`MemoryRegion::discard`] was asked for a range that is not page-aligned RAM of one
    /// region.
    #[error("cannot discard {range}: not page-aligned inside one RAM region")]
    DiscardOutside {
        /// The guest-physical range asked for.
        range: GuestRange,
    },
    /// [`MemoryRegion::discard`] on a read-only region.
    #[error("cannot discard {range}: its region is read-only")]
    DiscardReadOnly {
        /// The guest-physical range asked for.
        range: GuestRange,
    },
}

/// A host mapping to be placed at a guest-physical address.
///
/// # Example
///
/// ```
/// use vmkit::memory::{MemoryFlags, MemoryRegion};
/// use vm_memory::{Bytes, GuestAddress};
///
/// let region = MemoryRegion::anonymous(GuestAddress(0x10_0000), 0x4000, MemoryFlags::empty())?;
/// assert_eq!(region.size(), 0x4000);
/// // The VMM can fill it before handing it to a VM, e.g. with a kernel image.
/// region.mapping().write_slice(b"hello", vm_memory::MemoryRegionAddress(0))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct MemoryRegion {
    mapping: Arc<GuestRegionMmap>,
    flags: MemoryFlags,
}

impl MemoryRegion {
    /// Maps `size` bytes of fresh, zeroed anonymous memory for guest address `guest_addr`,
    /// backed by transparent huge pages from [`HUGE_PAGES_MIN_SIZE`] up
    /// ([`HugePages::Auto`]).
    pub fn anonymous(
        guest_addr: GuestAddress,
        size: usize,
        flags: MemoryFlags,
    ) -> Result<Self, MemoryError> {
        Self::anonymous_with(guest_addr, size, flags, HugePages::Auto)
    }

    /// Maps `size` bytes of fresh, zeroed anonymous memory for guest address `guest_addr`,
    /// saying whether transparent huge pages back it (see [`HugePages`]).
    pub fn anonymous_with(
        guest_addr: GuestAddress,
        size: usize,
        flags: MemoryFlags,
        huge_pages: HugePages,
    ) -> Result<Self, MemoryError> {
        Self::map_with(
            guest_addr,
            size,
            Backing::Anonymous {
                huge: huge_pages.applies(size),
            },
            flags,
        )
    }

    /// Maps `size` bytes of a file (shared with the file, `MAP_SHARED`) for guest address
    /// `guest_addr`.
    pub fn from_file(
        guest_addr: GuestAddress,
        size: usize,
        file: FileOffset,
        flags: MemoryFlags,
    ) -> Result<Self, MemoryError> {
        Self::map_with(
            guest_addr,
            size,
            Backing::File {
                file,
                sharing: libc::MAP_SHARED,
            },
            flags,
        )
    }

    /// Maps `size` bytes of a file copy-on-write (`MAP_PRIVATE`) for guest address
    /// `guest_addr`: pages are read from the file when first touched, and guest writes stay in
    /// this process. This is how a snapshot's memory is restored lazily.
    pub fn from_file_private(
        guest_addr: GuestAddress,
        size: usize,
        file: FileOffset,
        flags: MemoryFlags,
    ) -> Result<Self, MemoryError> {
        Self::map_with(
            guest_addr,
            size,
            Backing::File {
                file,
                sharing: libc::MAP_PRIVATE,
            },
            flags,
        )
    }

    /// Wraps a mapping the caller built with vm-memory (for example with special `mmap` flags).
    ///
    /// Its placement is checked when it is added to a VM.
    pub fn from_mapping(mapping: GuestRegionMmap, flags: MemoryFlags) -> Self {
        MemoryRegion {
            mapping: Arc::new(mapping),
            flags,
        }
    }

    /// Maps a region.
    fn map_with(
        guest_addr: GuestAddress,
        size: usize,
        backing: Backing,
        flags: MemoryFlags,
    ) -> Result<Self, MemoryError> {
        let range = check_placement(guest_addr.0, size as u64)?;
        let mmap_error = |source| MemoryError::Mmap {
            guest_addr: range.start,
            size: range.size,
            source,
        };
        let bitmap = flags.contains(MemoryFlags::LOG_DIRTY).then(|| {
            // PAGE_SIZE is a nonzero constant.
            AtomicBitmap::new(
                size,
                NonZeroUsize::new(PAGE_SIZE).unwrap_or(NonZeroUsize::MIN),
            )
        });
        let mut builder = MmapRegionBuilder::new_with_bitmap(size, bitmap)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        let mut huge = false;
        builder = match backing {
            Backing::File { file, sharing } => builder
                .with_file_offset(file)
                .with_mmap_flags(sharing | libc::MAP_NORESERVE),
            Backing::Anonymous { huge: wanted } => {
                huge = wanted && size >= HUGE_PAGE_SIZE;
                builder
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            }
        };
        let hole = huge.then(|| HugePageHole::reserve(size, guest_addr.0));
        let mmap: MmapRegion<DirtyBitmap> = builder.build().map_err(mmap_error)?;
        drop(hole);
        if huge {
            // SAFETY: advice about a mapping this function just made and nothing else owns
            // yet; madvise neither moves nor unmaps it. A kernel without THP refuses the
            // advice, which changes nothing.
            unsafe {
                libc::madvise(mmap.as_ptr().cast(), size, libc::MADV_HUGEPAGE);
            }
        }
        // check_placement proved that guest_addr + size does not overflow.
        let mapping =
            GuestRegionMmap::new(mmap, guest_addr).ok_or(MemoryError::AddressOverflow {
                guest_addr: range.start,
                size: range.size,
            })?;
        advise_mergeable(&mapping, range, flags)?;
        Ok(Self::from_mapping(mapping, flags))
    }

    /// First guest-physical address of the region.
    pub fn guest_addr(&self) -> GuestAddress {
        self.mapping.start_addr()
    }

    /// Size of the region in bytes.
    pub fn size(&self) -> u64 {
        self.mapping.len()
    }

    /// The guest-physical range the region covers.
    pub fn range(&self) -> GuestRange {
        GuestRange {
            start: self.guest_addr().0,
            size: self.size(),
        }
    }

    /// How the guest may use the region.
    pub fn flags(&self) -> MemoryFlags {
        self.flags
    }

    /// The vm-memory region, for reading and writing guest memory from the host.
    pub fn mapping(&self) -> &Arc<GuestRegionMmap> {
        &self.mapping
    }

    /// Host virtual address of the first byte of the mapping.
    pub fn host_addr(&self) -> u64 {
        self.mapping.as_ptr() as u64
    }

    /// Gives the host pages of `[addr, addr + len)` (guest-physical) back to the host, so that
    /// they read back as zeros: what a balloon device does with the pages a guest frees.
    ///
    /// The range must be page aligned, non-empty and inside this region, and the region must
    /// not be read-only (a ROM is no memory to give back). A private mapping (anonymous, or a
    /// file copy-on-write) takes `MADV_DONTNEED`; a shared one (memfd or file) takes
    /// `MADV_REMOVE`, which frees the backing pages where `MADV_DONTNEED` would only unmap
    /// them from this process. A private file mapping (a snapshot restored lazily) then reads
    /// back the file's contents rather than zeros: the guest's own earlier data, which a guest
    /// must not rely on either way. On a [`MemoryFlags::LOG_DIRTY`] region the range is marked
    /// dirty, so that an incremental snapshot records the zeros.
    pub fn discard(&self, addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
        let range = GuestRange {
            start: addr.0,
            size: len,
        };
        let page = PAGE_SIZE as u64;
        let offset = addr.0.checked_sub(self.guest_addr().0);
        let inside = offset.filter(|o| {
            len != 0
                && o.is_multiple_of(page)
                && len.is_multiple_of(page)
                && o.checked_add(len).is_some_and(|end| end <= self.size())
        });
        let (Some(offset), Ok(len_usize)) = (inside, usize::try_from(len)) else {
            return Err(MemoryError::DiscardOutside { range });
        };
        if self.flags.contains(MemoryFlags::READ_ONLY) {
            return Err(MemoryError::DiscardReadOnly { range });
        }
        // The region is at most the size of a host mapping, so its offsets fit a usize.
        let offset_usize =
            usize::try_from(offset).map_err(|_| MemoryError::DiscardOutside { range })?;
        let (advice, name) = if self.mapping.flags() & libc::MAP_SHARED != 0 {
            (libc::MADV_REMOVE, "MADV_REMOVE")
        } else {
            (libc::MADV_DONTNEED, "MADV_DONTNEED")
        };
        // SAFETY: offset + len lies inside this region's mapping (checked above), which the
        // region owns (through its Arc) and keeps mapped while `self` lives; the advice only
        // drops the pages' contents (guest RAM, which the caller gives up), never unmaps or
        // moves the mapping, so no Rust reference into it is invalidated: guest memory is only
        // accessed through volatile copies.
        let rc = unsafe {
            libc::madvise(
                self.mapping.as_ptr().wrapping_add(offset_usize).cast(),
                len_usize,
                advice,
            )
        };
        if rc != 0 {
            return Err(MemoryError::Advice {
                range,
                flag: "discard",
                advice: name,
                source: std::io::Error::last_os_error(),
            });
        }
        if self.flags.contains(MemoryFlags::LOG_DIRTY) {
            self.mapping.bitmap().mark_dirty(offset_usize, len_usize);
        }
        Ok(())
    }
}

/// Applies [`MemoryFlags::MERGEABLE`] to a mapping just made.
fn advise_mergeable(
    mapping: &GuestRegionMmap,
    range: GuestRange,
    flags: MemoryFlags,
) -> Result<(), MemoryError> {
    if !flags.contains(MemoryFlags::MERGEABLE) {
        return Ok(());
    }
    // SAFETY: advice about the whole of a mapping the caller just made and nothing else uses
    // yet; MADV_MERGEABLE neither moves nor unmaps it nor changes its contents.
    let rc = unsafe {
        libc::madvise(
            mapping.as_ptr().cast(),
            mapping.size(),
            libc::MADV_MERGEABLE,
        )
    };
    if rc != 0 {
        return Err(MemoryError::Advice {
            range,
            flag: "MERGEABLE",
            advice: "MADV_MERGEABLE",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Discards `[addr, addr + len)` from whichever of `regions` holds it wholly (see
/// [`MemoryRegion::discard`]); a range in no region, or across two, is refused.
pub fn discard(regions: &[MemoryRegion], addr: GuestAddress, len: u64) -> Result<(), MemoryError> {
    let range = GuestRange {
        start: addr.0,
        size: len,
    };
    regions
        .iter()
        .find(|r| r.guest_addr().0 <= addr.0 && addr.0 < r.range().end())
        .ok_or(MemoryError::DiscardOutside { range })?
        .discard(addr, len)
}

/// What backs a region's mapping.
enum Backing {
    /// Anonymous private memory, with transparent huge pages or not.
    Anonymous { huge: bool },
    /// A file, `MAP_SHARED` or `MAP_PRIVATE`.
    File {
        file: FileOffset,
        sharing: libc::c_int,
    },
}

/// The huge page size of x86-64 that both the host (transparent huge pages) and the
/// hypervisor's second-level page tables use.
const HUGE_PAGE_SIZE: usize = 2 << 20;

/// The size from which [`HugePages::Auto`] backs anonymous memory with transparent huge pages.
///
/// A huge page costs its first touch the zeroing of 2 MiB: 75 to 100 µs on this project's
/// (nested) CI host, against 1.2 to 1.4 µs for each 4 KiB page, so huge pages pay once a
/// guest touches more than about one page in eight of each 2 MiB it uses, and a guest that
/// writes all of its memory faults it in four to nine times faster (`cargo bench --bench
/// kvm_overhead -- first_touch` measures both on the host at hand). A small VM that runs
/// briefly touches a few pages: with huge pages, getting a 4 MiB VM ready (`vm_ready` in the
/// same bench) took 1.32 times as long as with bare kvm-ioctls' 4 KiB pages (461 against
/// 327 µs); without, 0.98 times. The guests that touch much of their memory are the large
/// ones (an OS that boots, caches, allocates), so the size decides: from 64 MiB up, huge
/// pages; below, 4 KiB pages.
pub const HUGE_PAGES_MIN_SIZE: usize = 64 << 20;

/// Whether transparent huge pages back an anonymous region (`madvise(MADV_HUGEPAGE)`, with
/// the mapping aligned so that 2 MiB guest frames are 2 MiB host pages the hypervisor can map
/// whole). The host's THP setting still decides (`/sys/kernel/mm/transparent_hugepage`);
/// with THP off, every choice gives 4 KiB pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HugePages {
    /// Huge pages for regions of at least [`HUGE_PAGES_MIN_SIZE`] bytes, 4 KiB pages below.
    #[default]
    Auto,
    /// Huge pages for any region of at least 2 MiB: for a small guest that touches most of
    /// its memory.
    Always,
    /// 4 KiB pages: for a guest of any size that touches little of its memory and is gone
    /// soon, where zeroing 2 MiB on each first touch is the larger cost.
    Never,
}

impl HugePages {
    /// Whether a region of `size` bytes gets huge pages.
    fn applies(self, size: usize) -> bool {
        match self {
            HugePages::Auto => size >= HUGE_PAGES_MIN_SIZE,
            HugePages::Always => size >= HUGE_PAGE_SIZE,
            HugePages::Never => false,
        }
    }
}

/// A free hole of address space fenced by two `PROT_NONE` guard mappings, at an address
/// congruent to a region's guest address modulo 2 MiB, made just before an anonymous region
/// is mapped.
///
/// The kernel places a new mapping in the highest free gap that fits, so the region's
/// mapping lands in the hole: then every 2 MiB-aligned guest frame is a 2 MiB-aligned host
/// range, which transparent huge pages can back and the hypervisor can map with one large
/// page-table entry. (QEMU aligns guest RAM for the same reason; Linux aligns large anonymous
/// mappings by itself only from 6.7.) If another mapping takes the hole first, the region is
/// simply mapped elsewhere, unaligned; nothing depends on the alignment but speed.
struct HugePageHole {
    /// `(address, length)` of the guard mappings.
    guards: [(usize, usize); 2],
}

impl HugePageHole {
    /// Reserves the hole for a `size`-byte region at `guest_addr`; `None` when the region is
    /// too small to benefit or the reservation fails.
    fn reserve(size: usize, guest_addr: u64) -> Option<Self> {
        if size < HUGE_PAGE_SIZE {
            return None;
        }
        let len = size.checked_add(HUGE_PAGE_SIZE)?;
        // SAFETY: a new inaccessible mapping at an address the kernel chooses; it overlaps
        // nothing that exists.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let base = base as usize;
        let offset = (guest_addr % HUGE_PAGE_SIZE as u64) as usize;
        // The first address at or above `base` congruent to `offset`; less than one huge page
        // above `base`, so the hole ends inside the reservation.
        let start = base + (offset + HUGE_PAGE_SIZE - base % HUGE_PAGE_SIZE) % HUGE_PAGE_SIZE;
        let end = start + size;
        // SAFETY: `start..end` lies inside the reservation just made, which nothing else uses.
        unsafe {
            libc::munmap(start as *mut libc::c_void, size);
        }
        Some(HugePageHole {
            guards: [(base, start - base), (end, base + len - end)],
        })
    }
}

impl Drop for HugePageHole {
    fn drop(&mut self) {
        for (addr, len) in self.guards {
            if len > 0 {
                // SAFETY: each guard is the part of this hole's own reservation that was
                // never unmapped or handed to anyone; unmapping it touches nothing else.
                unsafe {
                    libc::munmap(addr as *mut libc::c_void, len);
                }
            }
        }
    }
}

/// Drops a private mapping's contents (`MADV_DONTNEED`), so that it reads as it did when it
/// was mapped: zeros for anonymous memory, the file's bytes for a copy-on-write file mapping.
/// `Ok(false)` for a shared mapping, whose contents `MADV_DONTNEED` would not reset.
///
/// The caller makes sure nothing runs on the memory meanwhile (no vCPU in `run()`, no device
/// thread): it changes under anyone still using it.
#[cfg_attr(not(any(feature = "kvm", feature = "xen")), allow(dead_code))]
pub(crate) fn discard_private(region: &GuestRegionMmap) -> std::io::Result<bool> {
    if region.flags() & libc::MAP_PRIVATE == 0 {
        return Ok(false);
    }
    // SAFETY: the range is exactly the region's own live mapping; MADV_DONTNEED neither
    // unmaps nor moves it, it only replaces its pages with fresh ones, which Rust code sees
    // (through vm-memory's volatile accesses) as guest memory changing, as it may at any
    // time. The hypervisor is told through its MMU notifier.
    let rc = unsafe { libc::madvise(region.as_ptr().cast(), region.size(), libc::MADV_DONTNEED) };
    if rc == 0 {
        Ok(true)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Checks that a region's address and size can be mapped: nonzero, page aligned, no wrap.
fn check_placement(guest_addr: u64, size: GuestUsize) -> Result<GuestRange, MemoryError> {
    let range = GuestRange {
        start: guest_addr,
        size,
    };
    if size == 0 {
        return Err(MemoryError::ZeroSize { guest_addr });
    }
    if guest_addr.checked_add(size).is_none() {
        return Err(MemoryError::AddressOverflow { guest_addr, size });
    }
    let page = PAGE_SIZE as u64;
    if !guest_addr.is_multiple_of(page) || !size.is_multiple_of(page) {
        return Err(MemoryError::Unaligned { range });
    }
    Ok(range)
}

/// The slot table every backend keeps: which region is in which slot, with overlap and
/// exhaustion checks, and the vm-memory view of all of them.
///
/// Backends call [`RegionTable::reserve`] before telling the hypervisor about a region and
/// [`RegionTable::commit`] once the hypervisor has accepted it, so a failed hypercall or ioctl
/// leaves the table unchanged.
#[derive(Debug)]
#[cfg_attr(not(any(feature = "kvm", feature = "xen")), allow(dead_code))]
pub(crate) struct RegionTable {
    max_slots: u32,
    regions: BTreeMap<MemorySlot, MemoryRegion>,
    /// Start address -> (end, slot), for overlap checks in O(log n).
    by_addr: BTreeMap<u64, (u64, MemorySlot)>,
    /// Slots below `next_slot` that were freed, reused lowest first.
    freed: BTreeSet<u32>,
    next_slot: u32,
    /// The vm-memory view, rebuilt lazily after a change.
    memory: Option<GuestMemoryMmap>,
}

#[cfg_attr(not(any(feature = "kvm", feature = "xen")), allow(dead_code))]
impl RegionTable {
    pub(crate) fn new(max_slots: u32) -> Self {
        RegionTable {
            max_slots,
            regions: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            freed: BTreeSet::new(),
            next_slot: 0,
            memory: None,
        }
    }

    /// Validates `region` against the table and picks the slot it would get.
    pub(crate) fn reserve(&self, region: &MemoryRegion) -> Result<MemorySlot, MemoryError> {
        let new = check_placement(region.guest_addr().0, region.size())?;
        // The only regions that can overlap `new` are the last one starting before its end.
        if let Some((&start, &(end, slot))) = self.by_addr.range(..new.end()).next_back() {
            let existing = GuestRange {
                start,
                size: end - start,
            };
            if existing.overlaps(&new) {
                return Err(MemoryError::Overlap {
                    new,
                    existing,
                    slot,
                });
            }
        }
        if let Some(&slot) = self.freed.first() {
            return Ok(MemorySlot(slot));
        }
        if self.next_slot >= self.max_slots {
            return Err(MemoryError::SlotsExhausted {
                range: new,
                max: self.max_slots,
            });
        }
        Ok(MemorySlot(self.next_slot))
    }

    /// Records `region` in `slot`, which [`RegionTable::reserve`] returned.
    pub(crate) fn commit(&mut self, slot: MemorySlot, region: MemoryRegion) {
        if !self.freed.remove(&slot.0) {
            self.next_slot = self.next_slot.max(slot.0 + 1);
        }
        let range = region.range();
        self.by_addr.insert(range.start, (range.end(), slot));
        self.regions.insert(slot, region);
        self.memory = None;
    }

    /// The region in `slot`, if any.
    pub(crate) fn get(&self, slot: MemorySlot) -> Result<&MemoryRegion, MemoryError> {
        self.regions.get(&slot).ok_or(MemoryError::NoSuchSlot(slot))
    }

    /// Every mapped region with its slot, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (MemorySlot, &MemoryRegion)> {
        self.regions.iter().map(|(slot, region)| (*slot, region))
    }

    /// Forgets the region in `slot` and returns it.
    pub(crate) fn remove(&mut self, slot: MemorySlot) -> Result<MemoryRegion, MemoryError> {
        let region = self
            .regions
            .remove(&slot)
            .ok_or(MemoryError::NoSuchSlot(slot))?;
        self.by_addr.remove(&region.guest_addr().0);
        self.freed.insert(slot.0);
        self.memory = None;
        Ok(region)
    }

    /// The vm-memory view of all regions.
    pub(crate) fn memory(&mut self) -> GuestMemoryMmap {
        if let Some(memory) = &self.memory {
            return memory.clone();
        }
        let mut regions: Vec<Arc<GuestRegionMmap>> = self
            .regions
            .values()
            .map(|region| Arc::clone(region.mapping()))
            .collect();
        regions.sort_by_key(|region| region.start_addr());
        // The table never holds overlapping regions, so the only failure is "no regions".
        let memory = GuestMemoryMmap::from_arc_regions(regions).unwrap_or_default();
        self.memory = Some(memory.clone());
        memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, MemoryRegionAddress};

    fn pattern(region: &MemoryRegion, len: usize) {
        region
            .mapping()
            .write_slice(&vec![0x5au8; len], MemoryRegionAddress(0))
            .unwrap();
    }

    fn read(region: &MemoryRegion, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        region
            .mapping()
            .read_slice(&mut buf, MemoryRegionAddress(offset))
            .unwrap();
        buf
    }

    #[test]
    fn discard_drops_private_pages() {
        let base = 0x10_0000;
        let region =
            MemoryRegion::anonymous(GuestAddress(base), 0x4000, MemoryFlags::LOG_DIRTY).unwrap();
        pattern(&region, 0x4000);
        let mmap: &MmapRegion<DirtyBitmap> = region.mapping();
        mmap.bitmap().as_ref().unwrap().reset();
        region.discard(GuestAddress(base + 0x1000), 0x2000).unwrap();
        assert!(read(&region, 0x1000, 0x2000).iter().all(|&b| b == 0));
        assert!(read(&region, 0, 0x1000).iter().all(|&b| b == 0x5a));
        assert!(read(&region, 0x3000, 0x1000).iter().all(|&b| b == 0x5a));
        // The discarded pages are dirty (an incremental snapshot records the zeros), the
        // others are not.
        let bitmap = region.mapping().bitmap();
        assert!(bitmap.dirty_at(0x1000) && bitmap.dirty_at(0x2000));
        assert!(!bitmap.dirty_at(0) && !bitmap.dirty_at(0x3000));
    }

    #[test]
    fn discard_frees_shared_file_pages() {
        let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.set_len(0x4000).unwrap();
        let region = MemoryRegion::from_file(
            GuestAddress(0),
            0x4000,
            FileOffset::new(file.try_clone().unwrap(), 0),
            MemoryFlags::empty(),
        )
        .unwrap();
        pattern(&region, 0x4000);
        region.discard(GuestAddress(0x2000), 0x1000).unwrap();
        assert!(read(&region, 0x2000, 0x1000).iter().all(|&b| b == 0));
        // MADV_REMOVE punched the file too: the pages are freed, not only unmapped.
        let mut back = vec![0xffu8; 0x1000];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 0x2000).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        assert!(read(&region, 0x1000, 0x1000).iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn discard_refuses_what_is_not_ram_of_the_region() {
        let base = 0x10_0000;
        let region = region(base, 0x4000);
        pattern(&region, 0x4000);
        for (addr, len) in [
            (base - 0x1000, 0x1000),
            (base + 0x3000, 0x2000),
            (base + 0x800, 0x1000),
            (base, 0x800),
            (base, 0),
            (base + 0x1000, u64::MAX),
            (u64::MAX - 0xfff, 0x1000),
        ] {
            assert!(
                matches!(
                    region.discard(GuestAddress(addr), len),
                    Err(MemoryError::DiscardOutside { .. })
                ),
                "{addr:#x}+{len:#x}"
            );
        }
        assert!(read(&region, 0, 0x4000).iter().all(|&b| b == 0x5a));
        let rom = MemoryRegion::anonymous(GuestAddress(0), 0x1000, MemoryFlags::READ_ONLY).unwrap();
        pattern(&rom, 0x1000);
        assert!(matches!(
            rom.discard(GuestAddress(0), 0x1000),
            Err(MemoryError::DiscardReadOnly { .. })
        ));
        assert!(read(&rom, 0, 0x1000).iter().all(|&b| b == 0x5a));
        // Over a list of regions: a hole between two is refused.
        let regions = [rom, region];
        assert!(discard(&regions, GuestAddress(0x2000), 0x1000).is_err());
        discard(&regions, GuestAddress(base), 0x1000).unwrap();
        assert!(read(&regions[1], 0, 0x1000).iter().all(|&b| b == 0));
    }

    #[test]
    fn mergeable_advice_is_applied_or_refused_by_name() {
        let made = MemoryRegion::anonymous(GuestAddress(0), 0x4000, MemoryFlags::MERGEABLE);
        if std::path::Path::new("/sys/kernel/mm/ksm").exists() {
            assert!(made.unwrap().flags().contains(MemoryFlags::MERGEABLE));
        } else {
            let err = made.unwrap_err();
            assert!(err.to_string().contains("MERGEABLE"), "{err}");
            assert!(matches!(err, MemoryError::Advice { .. }));
        }
    }

    fn region(addr: u64, size: usize) -> MemoryRegion {
        MemoryRegion::anonymous(GuestAddress(addr), size, MemoryFlags::empty()).unwrap()
    }

    #[test]
    fn rejects_bad_placement() {
        assert!(matches!(
            MemoryRegion::anonymous(GuestAddress(0x1000), 0, MemoryFlags::empty()),
            Err(MemoryError::ZeroSize { guest_addr: 0x1000 })
        ));
        let err = MemoryRegion::anonymous(GuestAddress(0x1001), 0x1000, MemoryFlags::empty())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory region 0x1001..0x2001 is not aligned to the 4096-byte page size"
        );
        assert!(matches!(
            MemoryRegion::anonymous(GuestAddress(0), 0x1800, MemoryFlags::empty()),
            Err(MemoryError::Unaligned { .. })
        ));
        assert!(matches!(
            MemoryRegion::anonymous(GuestAddress(u64::MAX - 0xfff), 0x2000, MemoryFlags::empty()),
            Err(MemoryError::AddressOverflow { .. })
        ));
    }

    #[test]
    fn table_detects_overlaps_on_both_sides() {
        let mut table = RegionTable::new(8);
        let a = region(0x10000, 0x4000);
        let slot = table.reserve(&a).unwrap();
        table.commit(slot, a);
        for (addr, size) in [(0xf000, 0x2000), (0x13000, 0x1000), (0x8000, 0x10000)] {
            match table.reserve(&region(addr, size)) {
                Err(MemoryError::Overlap { existing, slot, .. }) => {
                    assert_eq!(existing.start, 0x10000);
                    assert_eq!(slot, MemorySlot(0));
                }
                other => panic!("{addr:#x}+{size:#x}: expected overlap, got {other:?}"),
            }
        }
        // Adjacent on both sides is fine.
        for (addr, size) in [(0xc000, 0x4000), (0x14000, 0x1000)] {
            let r = region(addr, size);
            let slot = table.reserve(&r).unwrap();
            table.commit(slot, r);
        }
        assert_eq!(table.memory().num_regions(), 3);
    }

    #[test]
    fn table_reuses_freed_slots_and_reports_exhaustion() {
        let mut table = RegionTable::new(2);
        for i in 0..2 {
            let r = region(i * 0x1000, 0x1000);
            let slot = table.reserve(&r).unwrap();
            assert_eq!(slot, MemorySlot(i as u32));
            table.commit(slot, r);
        }
        let err = table.reserve(&region(0x10000, 0x1000)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free memory slot for region 0x10000..0x11000: all 2 slots are in use"
        );
        let removed = table.remove(MemorySlot(0)).unwrap();
        assert_eq!(removed.guest_addr(), GuestAddress(0));
        assert!(matches!(
            table.remove(MemorySlot(0)),
            Err(MemoryError::NoSuchSlot(MemorySlot(0)))
        ));
        let r = region(0x10000, 0x1000);
        assert_eq!(table.reserve(&r).unwrap(), MemorySlot(0));
    }

    use vm_memory::GuestMemoryBackend;
}
