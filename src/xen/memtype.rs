//! Tracked guest RAM: read-only regions through Xen's `p2m_ioreq_server` page type, and
//! dirty-page logging through Xen's log-dirty mode, both with KVM's semantics.
//!
//! Read-only: vmkit's ioreq server claims the type for writes
//! (`XEN_DMOP_IOREQ_MEM_ACCESS_WRITE`; only one server of a domain can), and vmkit sets it on
//! the region's pages with `HVMMEM_ioreq_server`. The guest reads such a page from RAM as
//! usual, while each write reaches vmkit as an MMIO write ioreq, leaves RAM unchanged and is
//! returned to the VMM as [`VcpuExit::MmioWrite`](crate::VcpuExit::MmioWrite), exactly KVM's
//! read-only memory (a plain read-only p2m type would drop the write silently). On AMD,
//! Xen's nested-paging code (`p2m-pt.c`) maps this type non-executable (EPT keeps it
//! executable), so a guest that runs code from a read-only page faults into Xen's emulator,
//! which cannot fetch it, and the vCPU stops with a triple fault;
//! `Capabilities::code_runs_in_read_only_memory` says which case a host is.
//!
//! Dirty logging ([`LOG_DIRTY`](crate::MemoryFlags::LOG_DIRTY)): Xen's log-dirty mode (see
//! [`super::logdirty`]) is on while at least one region logs. Its page type stays executable
//! on EPT and NPT, so a guest may run code and keep its page tables in logged RAM. The mode
//! is domain-wide: every RAM page is write-protected until its first write after a clean,
//! logged region or not (one fault per page and harvest, taken inside Xen), and a harvest
//! cleans Xen's whole bitmap. vmkit keeps what Xen reported for each logging region until
//! that region is harvested, ignores the other pages, and cleans once more when a region
//! starts logging while others do, so that a new region starts clean. Writes through vmkit's
//! own mapping ([`Vm::memory`](crate::Vm::memory)) are foreign mappings, not guest writes:
//! Xen does not log them (vm-memory's bitmap records them, as on KVM). Xen has no dirty
//! rings; vmkit's are emulated over this same harvest (see [`super::dirtyring`]).
//!
//! Xen refuses to enter log-dirty mode (`EBUSY`) while any page has the ioreq server's type
//! (`hap_enable_log_dirty`), although it lets pages take that type afterwards. So when the
//! first region starts logging while read-only regions exist, vmkit pauses the domain,
//! gives their pages the ordinary type, enters log-dirty mode, protects them again and
//! resumes the domain: the guest never sees them writable. (Xen gives the ioreq server's
//! type to `p2m_ram_rw` pages only, which new RAM is in log-dirty mode too, so read-only
//! regions added later need nothing special.)

use std::collections::BTreeMap;
use std::ops::Range;

use vm_memory::GuestAddress;

use super::libs::{DeviceModel, Xc, XenCallError};
use super::logdirty;
use super::sys::abi::{DomId, IoServId};
use super::sys::ffi_parity::{
    self as ffi, HVMMEM_IOREQ_SERVER, HVMMEM_RAM_RW, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE,
};
use crate::dirty::DirtyRegion;
use crate::memory::{GuestRange, MemorySlot, PAGE_SIZE};

const PAGE_SHIFT: u32 = 12;

/// The tracked pages of one domain.
#[derive(Debug, Default)]
pub(crate) struct Protected {
    /// Whether vmkit's ioreq server has claimed the type.
    claimed: bool,
    /// Read-only regions by first address: their size in pages.
    read_only: BTreeMap<u64, u64>,
    /// Dirty-logging regions by first address: their size in pages and the pages Xen
    /// reported written since the region's last harvest. Xen's log-dirty mode is on exactly
    /// while this is not empty.
    tracked: BTreeMap<u64, Tracked>,
}

#[derive(Debug)]
struct Tracked {
    pages: u64,
    bitmap: Vec<u64>,
}

/// The domain, its ioreq server and libxenctrl, for the device-model and log-dirty calls.
#[derive(Clone, Copy)]
pub(crate) struct Server<'a> {
    pub(crate) dm: &'a DeviceModel,
    pub(crate) xc: &'a Xc,
    pub(crate) domid: DomId,
    pub(crate) id: IoServId,
}

impl Server<'_> {
    /// Gives `pages` pages from `first` the memory type `kind`.
    fn set_type(&self, kind: libc::c_uint, first: u64, pages: u64) -> Result<(), XenCallError> {
        let op = if kind == HVMMEM_RAM_RW {
            "xendevicemodel_set_mem_type (HVMMEM_ram_rw)"
        } else {
            "xendevicemodel_set_mem_type (HVMMEM_ioreq_server)"
        };
        let mut done = 0u64;
        while done < pages {
            let nr = u32::try_from(pages - done).unwrap_or(u32::MAX);
            // SAFETY: plain values on a live handle.
            let rc = unsafe {
                ffi::xendevicemodel_set_mem_type(self.dm.raw(), self.domid, kind, first + done, nr)
            };
            if rc < 0 {
                return Err(XenCallError {
                    op,
                    source: std::io::Error::last_os_error(),
                });
            }
            done += u64::from(nr);
        }
        Ok(())
    }
}

/// The frames of `range`.
fn frames(range: GuestRange) -> Range<u64> {
    range.start >> PAGE_SHIFT..range.end().div_ceil(PAGE_SIZE as u64)
}

impl Protected {
    /// Write-protects every page of `range` (RAM just populated, a read-only region):
    /// writes become ioreqs.
    pub(crate) fn protect(
        &mut self,
        server: Server<'_>,
        range: GuestRange,
    ) -> Result<(), XenCallError> {
        if !self.claimed {
            // SAFETY: plain values on a live handle.
            let rc = unsafe {
                ffi::xendevicemodel_map_mem_type_to_ioreq_server(
                    server.dm.raw(),
                    server.domid,
                    server.id,
                    HVMMEM_IOREQ_SERVER as u16,
                    XEN_DMOP_IOREQ_MEM_ACCESS_WRITE,
                )
            };
            if rc < 0 {
                return Err(XenCallError {
                    op: "xendevicemodel_map_mem_type_to_ioreq_server",
                    source: std::io::Error::last_os_error(),
                });
            }
            self.claimed = true;
        }
        let frames = frames(range);
        server.set_type(HVMMEM_IOREQ_SERVER, frames.start, frames.end - frames.start)?;
        self.read_only
            .insert(range.start, frames.end - frames.start);
        Ok(())
    }

    /// Starts logging guest writes to `range` (RAM just populated), all pages clean.
    pub(crate) fn track(
        &mut self,
        server: Server<'_>,
        range: GuestRange,
    ) -> Result<(), XenCallError> {
        let frames = frames(range);
        if self.tracked.is_empty() {
            self.enable(server)?;
        } else {
            // Clears whatever Xen holds for the new region's pages (its population, an
            // earlier region there) and keeps the other regions' pages for their harvest.
            self.collect(server, frames.end.max(self.end_frame()))?;
        }
        let pages = frames.end - frames.start;
        self.tracked.insert(
            range.start,
            Tracked {
                pages,
                bitmap: vec![0; pages.div_ceil(64) as usize],
            },
        );
        Ok(())
    }

    /// Stops tracking `range` (before its pages are freed): a read-only region's pages get
    /// their ordinary type back; the last logging region takes Xen out of log-dirty mode.
    pub(crate) fn unprotect(
        &mut self,
        server: Server<'_>,
        range: GuestRange,
    ) -> Result<(), XenCallError> {
        if self.tracked.remove(&range.start).is_some() {
            if self.tracked.is_empty() {
                logdirty::disable(server.xc, server.domid.into())?;
            }
            return Ok(());
        }
        self.read_only.remove(&range.start);
        let frames = frames(range);
        server.set_type(HVMMEM_RAM_RW, frames.start, frames.end - frames.start)
    }

    /// Enters Xen's log-dirty mode, with read-only regions briefly unprotected while the
    /// domain is paused if there are any (see the module's documentation).
    fn enable(&self, server: Server<'_>) -> Result<(), XenCallError> {
        let domid = u32::from(server.domid);
        if self.read_only.is_empty() {
            return logdirty::enable(server.xc, domid);
        }
        server.xc.pause(domid)?;
        let mut done = Ok(());
        for (&start, &pages) in &self.read_only {
            done = done.and(server.set_type(HVMMEM_RAM_RW, start >> PAGE_SHIFT, pages));
        }
        let done = done.and_then(|()| logdirty::enable(server.xc, domid));
        // Protected again whatever happened, before the guest runs. Xen gives the type only
        // to `p2m_ram_rw` pages (`allow_p2m_type_change`), and log-dirty mode has just made
        // them `p2m_ram_logdirty`: through the ordinary type first.
        let mut again = Ok(());
        for (&start, &pages) in &self.read_only {
            let first = start >> PAGE_SHIFT;
            again = again
                .and_then(|()| server.set_type(HVMMEM_RAM_RW, first, pages))
                .and_then(|()| server.set_type(HVMMEM_IOREQ_SERVER, first, pages));
        }
        let resumed = server.xc.unpause(domid);
        done.and(again).and(resumed)
    }

    /// The frame after the last logging region's.
    fn end_frame(&self) -> u64 {
        self.tracked
            .iter()
            .map(|(&start, t)| (start >> PAGE_SHIFT) + t.pages)
            .max()
            .unwrap_or(0)
    }

    /// Cleans Xen's bitmap over frames `0..end` and adds the pages it reported to their
    /// logging regions.
    fn collect(&mut self, server: Server<'_>, end: u64) -> Result<(), XenCallError> {
        let bitmap = logdirty::clean(server.xc, server.domid.into(), end)?;
        for (&start, tracked) in &mut self.tracked {
            add_frames(
                &bitmap,
                start >> PAGE_SHIFT..(start >> PAGE_SHIFT) + tracked.pages,
                &mut tracked.bitmap,
            );
        }
        Ok(())
    }

    /// The pages written in each of `regions` since the previous harvest; Xen logs the
    /// writes after this returns for the next one.
    pub(crate) fn harvest(
        &mut self,
        server: Server<'_>,
        regions: &[(MemorySlot, GuestRange)],
    ) -> Result<Vec<DirtyRegion>, XenCallError> {
        if !self.tracked.is_empty() {
            self.collect(server, self.end_frame())?;
        }
        let mut log = Vec::with_capacity(regions.len());
        for &(slot, range) in regions {
            let bitmap = match self.tracked.get_mut(&range.start) {
                Some(tracked) => {
                    let clean = vec![0; tracked.bitmap.len()];
                    std::mem::replace(&mut tracked.bitmap, clean)
                }
                None => Vec::new(),
            };
            log.push(DirtyRegion {
                slot,
                guest_addr: GuestAddress(range.start),
                bitmap,
            });
        }
        Ok(log)
    }
}

/// Sets in `region` (one bit per page of the region that holds `frames`, as in
/// [`DirtyRegion::bitmap`]) the pages whose frames Xen's `bitmap` (one bit per frame, frame
/// `n` in bit `n % 8` of byte `n / 8`) marks. Skips Xen's zero bytes whole: most are, and a
/// harvest of a large region would otherwise test each of its pages.
fn add_frames(bitmap: &[u8], frames: Range<u64>, region: &mut [u64]) {
    let first = usize::try_from(frames.start / 8).unwrap_or(usize::MAX);
    let last = usize::try_from(frames.end.div_ceil(8)).unwrap_or(usize::MAX);
    let Some(bytes) = bitmap.get(first..last.min(bitmap.len())) else {
        return;
    };
    for (i, &byte) in bytes.iter().enumerate().filter(|(_, &b)| b != 0) {
        let byte_frame = (first + i) as u64 * 8;
        for bit in 0..8 {
            let frame = byte_frame + bit;
            if byte & (1 << bit) != 0 && frames.contains(&frame) {
                let page = frame - frames.start;
                if let Some(word) = region.get_mut((page / 64) as usize) {
                    *word |= 1 << (page % 64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_land_on_their_region_pages_only() {
        // Frames 3..200 (an unaligned start and end), Xen's bitmap over frames 0..256.
        let frames = 3..200u64;
        let mut xen = vec![0u8; 32];
        let marked = [0u64, 2, 3, 7, 8, 63, 66, 67, 130, 199, 200, 255];
        for frame in marked {
            xen[(frame / 8) as usize] |= 1 << (frame % 8);
        }
        let mut region = vec![0u64; 197usize.div_ceil(64)];
        add_frames(&xen, frames.clone(), &mut region);
        let got: Vec<u64> = crate::dirty::set_bits(&region).collect();
        let want: Vec<u64> = marked
            .iter()
            .filter(|f| frames.contains(f))
            .map(|f| f - frames.start)
            .collect();
        assert_eq!(got, want);
        // A bitmap shorter than the region (Xen covered fewer frames) sets what it has.
        let mut region = vec![0u64; 4];
        add_frames(&xen[..1], frames, &mut region);
        assert_eq!(crate::dirty::set_bits(&region).collect::<Vec<_>>(), [0, 4]);
        // A region past the bitmap's end sets nothing.
        let mut region = vec![0u64; 1];
        add_frames(&xen, 1000..1010, &mut region);
        assert_eq!(region, [0]);
    }

    #[test]
    fn a_range_covers_every_frame_it_touches() {
        let r = |start, size| GuestRange { start, size };
        assert_eq!(frames(r(0x4000_0000, 0x20_0000)), 0x40000..0x40200);
        assert_eq!(frames(r(0x1000, 0x1800)), 1..3);
    }
}
