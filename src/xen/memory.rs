//! Guest RAM on Xen: allocating a range of guest frames in the domain, mapping them into
//! this process, and giving them back.
//!
//! KVM maps the VMM's own memory into the guest; Xen does the opposite: the hypervisor
//! allocates the guest's frames (`XENMEM_populate_physmap`) and the VMM maps them through
//! the privcmd driver. The mapping is made so that vm-memory owns it: vm-memory `mmap`s
//! `/dev/xen/privcmd` itself (a privcmd VMA) and vmkit fills it with
//! `IOCTL_PRIVCMD_MMAPBATCH_V2`; dropping the last [`GuestRegionMmap`] clone `munmap`s it,
//! which releases the frames. So a [`GuestMemoryMmap`](crate::GuestMemoryMmap) handed out
//! by [`Vm::memory`](crate::Vm::memory) stays valid however long the caller keeps it, on
//! Xen as on KVM.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryRegion, MemoryRegionAddress};

use super::libs::{Xc, XenCallError};
use super::sys::abi::{PrivcmdMmapBatchV2, XenPfn, IOCTL_PRIVCMD_MMAPBATCH_V2};
use crate::memory::{DirtyBitmap, GuestRange, GuestRegionMmap, PAGE_SIZE};

/// Frames in a 2 MiB superpage.
const SUPERPAGE_ORDER: u32 = 9;
const SUPERPAGE_FRAMES: u64 = 1 << SUPERPAGE_ORDER;
const PAGE_SHIFT: u32 = 12;

/// The frame numbers of `range`, split into 2 MiB-aligned superpages (first frame of each)
/// and the 4 KiB frames before and after them.
fn split(range: GuestRange) -> (Vec<XenPfn>, Vec<XenPfn>) {
    let first = range.start >> PAGE_SHIFT;
    let end = range.end() >> PAGE_SHIFT;
    let super_start = first.next_multiple_of(SUPERPAGE_FRAMES).min(end);
    let super_end = (end / SUPERPAGE_FRAMES * SUPERPAGE_FRAMES).max(super_start);
    let superpages = (super_start..super_end)
        .step_by(SUPERPAGE_FRAMES as usize)
        .collect();
    let pages = (first..super_start).chain(super_end..end).collect();
    (superpages, pages)
}

/// Allocates every guest frame of `range` in domain `domid`, in 2 MiB superpages where the
/// range is aligned and Xen has them, else in 4 KiB pages. On failure, whatever was
/// allocated is freed again.
pub(crate) fn populate(xc: &Xc, domid: u32, range: GuestRange) -> Result<(), XenCallError> {
    let (mut superpages, mut pages) = split(range);
    let done = xc.populate(domid, SUPERPAGE_ORDER, &mut superpages)?;
    // Superpages Xen could not provide (fragmented memory) are tried page by page.
    for &start in &superpages[done..] {
        pages.extend(start..start + SUPERPAGE_FRAMES);
    }
    superpages.truncate(done);
    let populated_pages = match xc.populate(domid, 0, &mut pages) {
        Ok(n) if n == pages.len() => return Ok(()),
        Ok(n) => n,
        Err(err) => {
            let _ = xc.decrease_reservation(domid, SUPERPAGE_ORDER, &mut superpages);
            return Err(err);
        }
    };
    // Out of memory: give back what was allocated and report it.
    let _ = xc.decrease_reservation(domid, SUPERPAGE_ORDER, &mut superpages);
    let _ = xc.decrease_reservation(domid, 0, &mut pages[..populated_pages]);
    Err(XenCallError {
        op: "xc_domain_populate_physmap",
        source: io::Error::from_raw_os_error(libc::ENOMEM),
    })
}

/// Allocates the frames of `range` in PV domain `domid`, one 4 KiB page each, and returns
/// their machine frame numbers (which a PV guest's page tables and vmkit's mapping use).
/// On failure, whatever was allocated is freed again.
pub(crate) fn populate_pv(
    xc: &Xc,
    domid: u32,
    range: GuestRange,
) -> Result<Vec<XenPfn>, XenCallError> {
    let first = range.start >> PAGE_SHIFT;
    let mut frames: Vec<XenPfn> = (first..range.end() >> PAGE_SHIFT).collect();
    // For a guest without its own physical address space Xen writes each allocated frame's
    // machine frame number back into the array.
    let done = xc.populate(domid, 0, &mut frames)?;
    if done == frames.len() {
        return Ok(frames);
    }
    let _ = xc.decrease_reservation(domid, 0, &mut frames[..done]);
    Err(XenCallError {
        op: "xc_domain_populate_physmap",
        source: io::Error::from_raw_os_error(libc::ENOMEM),
    })
}

/// The guest frame numbers of `range` (what a PVH guest's frames are called by).
pub(crate) fn frames_of(range: GuestRange) -> Vec<XenPfn> {
    (range.start >> PAGE_SHIFT..range.end() >> PAGE_SHIFT).collect()
}

/// Frees the guest frames of `range`. Frames still mapped by this process (a caller kept a
/// [`GuestMemoryMmap`](crate::GuestMemoryMmap)) are freed by Xen when that mapping goes.
pub(crate) fn release(xc: &Xc, domid: u32, range: GuestRange) -> Result<(), XenCallError> {
    // Xen removes a decreased extent page by page, whatever size it was allocated in.
    let (mut superpages, mut pages) = split(range);
    xc.decrease_reservation(domid, SUPERPAGE_ORDER, &mut superpages)?;
    xc.decrease_reservation(domid, 0, &mut pages)
}

/// Why guest frames could not be mapped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MapError {
    /// `mmap` of `/dev/xen/privcmd` failed.
    #[error("mmap of /dev/xen/privcmd for {size:#x} bytes failed")]
    Mmap {
        size: u64,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The privcmd ioctl failed as a whole.
    #[error("IOCTL_PRIVCMD_MMAPBATCH_V2 failed")]
    Ioctl(#[source] io::Error),
    /// Xen refused to map a frame.
    #[error("Xen refused to map guest frame {frame:#x}")]
    Frame {
        frame: XenPfn,
        #[source]
        source: io::Error,
    },
}

/// Maps the (populated) `frames` of domain `domid`, which make up `range` of its memory
/// (guest frame numbers for PVH, machine frame numbers for PV), into this process, as a
/// vm-memory region that owns the mapping; with `bitmap`, one that records the VMM's writes
/// (as a [`LOG_DIRTY`](crate::MemoryFlags::LOG_DIRTY) region's does on KVM).
pub(crate) fn map(
    privcmd: &Arc<File>,
    domid: u32,
    range: GuestRange,
    frames: &[XenPfn],
    bitmap: bool,
) -> Result<GuestRegionMmap, MapError> {
    let size = frames.len() * PAGE_SIZE;
    let bitmap = bitmap.then(|| {
        AtomicBitmap::new(
            size,
            NonZeroUsize::new(PAGE_SIZE).unwrap_or(NonZeroUsize::MIN),
        )
    });
    let mmap = MmapRegionBuilder::<DirtyBitmap>::new_with_bitmap(size, bitmap)
        .with_file_offset(FileOffset::from_arc(Arc::clone(privcmd), 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .map_err(|source| MapError::Mmap {
            size: range.size,
            source,
        })?;
    let mut errors = vec![0i32; frames.len()];
    let mut batch = PrivcmdMmapBatchV2 {
        num: frames.len() as u32,
        dom: domid as u16,
        addr: mmap.as_ptr() as u64,
        arr: frames.as_ptr(),
        err: errors.as_mut_ptr(),
    };
    // SAFETY: `batch` points at the live privcmd VMA vm-memory just created (exactly
    // `frames.len()` pages, the whole VMA, as the driver requires) and at the two arrays of
    // `num` elements; the driver fills that VMA with the guest's frames and the error array.
    // The VMA stays owned by `mmap`, whose drop unmaps it.
    let rc = unsafe { libc::ioctl(privcmd.as_raw_fd(), IOCTL_PRIVCMD_MMAPBATCH_V2, &mut batch) };
    if rc < 0 {
        return Err(MapError::Ioctl(io::Error::last_os_error()));
    }
    if let Some((i, &err)) = errors.iter().enumerate().find(|(_, &e)| e != 0) {
        return Err(MapError::Frame {
            frame: frames[i],
            source: io::Error::from_raw_os_error(-err),
        });
    }
    // `range` was checked not to wrap when the region was built.
    GuestRegionMmap::new(mmap, GuestAddress(range.start)).ok_or(MapError::Ioctl(
        io::Error::from_raw_os_error(libc::EOVERFLOW),
    ))
}

/// Makes `to` hold what `from` holds: every page of `from` that is not all zeroes is
/// copied; with `to_is_stale` (fresh guest frames) every other page of `to` is zeroed, and
/// without (a zeroed mapping of this process) left alone. Fresh guest frames are not zero: Xen does
/// not scrub what it allocates to a domain that has not run yet (that is the toolstack's
/// job), so they may hold an earlier, destroyed domain's data (seen as a pool VM built from
/// a snapshot reading bytes its template does not have). Pages of an anonymous mapping that
/// were never touched are not read (`mincore`), only zeroed in `to`.
pub(crate) fn copy_region(from: &GuestRegionMmap, to: &GuestRegionMmap, to_is_stale: bool) {
    const CHUNK: usize = 64 * 1024;
    let len = from.len().min(to.len()) as usize;
    let anonymous = from.file_offset().is_none();
    let mut buf = vec![0u8; CHUNK];
    let mut resident = vec![0u8; CHUNK / PAGE_SIZE];
    let mut offset = 0usize;
    while offset < len {
        let n = CHUNK.min(len - offset);
        let pages = n.div_ceil(PAGE_SIZE);
        if anonymous {
            // SAFETY: `offset < len`, the length of `from`'s mapping.
            let start = unsafe { from.as_ptr().add(offset) };
            // SAFETY: `offset..offset + n` lies inside `from`'s live mapping, whose start is
            // page aligned, and `resident` has a byte for each of its `pages` pages.
            let rc = unsafe { libc::mincore(start.cast(), n, resident.as_mut_ptr()) };
            if rc == 0 && resident[..pages].iter().all(|&r| r & 1 == 0) {
                if to_is_stale {
                    zero(to, offset, n);
                }
                offset += n;
                continue;
            }
        }
        let chunk = &mut buf[..n];
        // Both regions cover `offset..offset + n`.
        if from
            .read_slice(chunk, MemoryRegionAddress(offset as u64))
            .is_err()
        {
            break;
        }
        for (i, page) in chunk.chunks(PAGE_SIZE).enumerate() {
            let at = offset + i * PAGE_SIZE;
            if page.iter().any(|&b| b != 0) {
                let _ = to.write_slice(page, MemoryRegionAddress(at as u64));
            } else if to_is_stale {
                // The frame under `to` may hold stale data.
                zero(to, at, page.len());
            }
        }
        offset += n;
    }
}

/// Zeroes `len` bytes of `to` from `offset`, a range inside it, without marking them in its
/// dirty bitmap: clearing a fresh frame is not a write of the VMM's (a logging region's
/// bitmap must show only what the VMM and the guest wrote).
fn zero(to: &GuestRegionMmap, offset: usize, len: usize) {
    let len = len.min((to.len() as usize).saturating_sub(offset));
    if len == 0 {
        return;
    }
    // SAFETY: `offset < to.len()` (len is non-zero after the clamp), inside the mapping.
    let start = unsafe { to.as_ptr().add(offset) };
    // SAFETY: `start..start + len` lies inside `to`'s live, writable mapping (clamped to its
    // length above), which nothing else in this process accesses while a region is added.
    unsafe { std::ptr::write_bytes(start, 0, len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_into_superpages_and_edge_pages() {
        let mib = |n: u64| n << 20;
        // 4 MiB at 0: two superpages.
        let (s, p) = split(GuestRange {
            start: 0,
            size: mib(4),
        });
        assert_eq!((s, p.len()), (vec![0, 512], 0));
        // 1 MiB + 3 MiB: up to 2 MiB in pages, then one superpage.
        let (s, p) = split(GuestRange {
            start: mib(1),
            size: mib(3),
        });
        assert_eq!(s, vec![512]);
        assert_eq!((p.first(), p.len()), (Some(&256), 256));
        // A small unaligned range is all pages.
        let (s, p) = split(GuestRange {
            start: 0x3000,
            size: 0x2000,
        });
        assert!(s.is_empty());
        assert_eq!(p, vec![3, 4]);
    }
}
