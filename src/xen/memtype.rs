//! Write-protected guest RAM through Xen's `p2m_ioreq_server` page type: read-only regions
//! and dirty-page logging, both with KVM's semantics.
//!
//! vmkit's ioreq server claims the type for writes (`XEN_DMOP_IOREQ_MEM_ACCESS_WRITE`; only
//! one server of a domain can), and vmkit sets it on pages with `HVMMEM_ioreq_server`. The
//! guest then reads such a page from RAM as usual, while each write reaches vmkit as an MMIO
//! write ioreq and leaves RAM unchanged. For a
//! [`READ_ONLY`](crate::MemoryFlags::READ_ONLY) region that write is returned to the VMM as
//! [`VcpuExit::MmioWrite`](crate::VcpuExit::MmioWrite), exactly KVM's read-only memory (a
//! plain read-only p2m type would drop the write silently).
//!
//! For a [`LOG_DIRTY`](crate::MemoryFlags::LOG_DIRTY) region vmkit absorbs the write
//! instead: it stores the data in RAM, marks the page dirty and gives the page back its
//! ordinary type, so later writes to it run at full speed; the write never reaches the VMM.
//! A harvest protects the reported pages again before it returns, so a write that races with
//! it is in this log or the next, as on KVM. Writes through vmkit's own mapping
//! ([`Vm::memory`](crate::Vm::memory)) are not guest writes: they are not logged (vm-memory's
//! bitmap records them, as on KVM).
//!
//! Why not Xen's log-dirty mode (`XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY`): it is
//! domain-wide (every RAM page is write-protected and its writes fault, tracked region or
//! not), while KVM logs per region; the memory type confines the cost to the regions that
//! asked for it and shares one mechanism with read-only memory. The cost is one ioreq round
//! trip per page and harvest, paid by the first write to a clean page. Xen has no dirty
//! rings: `Capabilities::dirty_ring_max_entries` is 0.
//!
//! The price of the memory type on AMD: Xen's nested-paging code (`p2m-pt.c`) maps
//! `p2m_ioreq_server` pages non-executable (EPT keeps them executable), so a guest that runs
//! code from a read-only or logged page faults into Xen's emulator, which cannot fetch it,
//! and the vCPU stops with a triple fault. `Capabilities::code_runs_in_tracked_memory` says
//! which case a host is; switching such hosts to Xen's log-dirty mode (whose type stays
//! executable) is the way out, at the domain-wide cost above.

use std::collections::BTreeMap;
use std::ops::Range;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::libs::{DeviceModel, XenCallError};
use super::sys::abi::{DomId, IoServId};
use super::sys::ffi_parity::{
    self as ffi, HVMMEM_IOREQ_SERVER, HVMMEM_RAM_RW, XEN_DMOP_IOREQ_MEM_ACCESS_WRITE,
};
use crate::dirty::{self, DirtyRegion};
use crate::memory::{GuestMemoryMmap, GuestRange, MemorySlot, PAGE_SIZE};

const PAGE_SHIFT: u32 = 12;

/// The write-protected pages of one domain.
#[derive(Debug, Default)]
pub(crate) struct Protected {
    /// Whether vmkit's ioreq server has claimed the type.
    claimed: bool,
    /// Dirty-logging regions by first address: their size in pages and the pages written
    /// since the last harvest.
    tracked: BTreeMap<u64, Tracked>,
}

#[derive(Debug)]
struct Tracked {
    pages: u64,
    bitmap: Vec<u64>,
}

/// The domain and its ioreq server, for the device-model calls.
#[derive(Clone, Copy)]
pub(crate) struct Server<'a> {
    pub(crate) dm: &'a DeviceModel,
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
    /// Write-protects every page of `range` (RAM just populated): writes become ioreqs.
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
        server.set_type(HVMMEM_IOREQ_SERVER, frames.start, frames.end - frames.start)
    }

    /// Starts logging guest writes to `range` (RAM just populated), all pages clean.
    pub(crate) fn track(
        &mut self,
        server: Server<'_>,
        range: GuestRange,
    ) -> Result<(), XenCallError> {
        self.protect(server, range)?;
        let pages = range.size.div_ceil(PAGE_SIZE as u64);
        self.tracked.insert(
            range.start,
            Tracked {
                pages,
                bitmap: vec![0; pages.div_ceil(64) as usize],
            },
        );
        Ok(())
    }

    /// Gives the pages of `range` their ordinary type back and stops logging them (before
    /// they are freed).
    pub(crate) fn unprotect(
        &mut self,
        server: Server<'_>,
        range: GuestRange,
    ) -> Result<(), XenCallError> {
        self.tracked.remove(&range.start);
        let frames = frames(range);
        server.set_type(HVMMEM_RAM_RW, frames.start, frames.end - frames.start)
    }

    /// Handles a guest write of `data` at `addr` if it fell in a dirty-logging region:
    /// stores it, marks its pages dirty and unprotects them. False if the write is not
    /// vmkit's to absorb (it goes to the VMM).
    pub(crate) fn absorb(
        &mut self,
        server: Server<'_>,
        memory: &GuestMemoryMmap,
        addr: u64,
        data: &[u8],
    ) -> Result<bool, XenCallError> {
        let Some(end) = addr.checked_add(data.len() as u64) else {
            return Ok(false);
        };
        let Some((&start, tracked)) = self.tracked.range_mut(..=addr).next_back() else {
            return Ok(false);
        };
        let region_end = start + tracked.pages * PAGE_SIZE as u64;
        if data.is_empty() || end > region_end {
            return Ok(false);
        }
        if !store(memory, addr, data) {
            return Ok(false);
        }
        let first = (addr - start) >> PAGE_SHIFT;
        let last = (end - 1 - start) >> PAGE_SHIFT;
        for page in first..=last {
            tracked.bitmap[(page / 64) as usize] |= 1 << (page % 64);
        }
        server.set_type(
            HVMMEM_RAM_RW,
            (start >> PAGE_SHIFT) + first,
            last - first + 1,
        )?;
        Ok(true)
    }

    /// The pages written in each of `regions` since the previous harvest; they are
    /// write-protected again before this returns.
    pub(crate) fn harvest(
        &mut self,
        server: Server<'_>,
        regions: &[(MemorySlot, GuestRange)],
    ) -> Result<Vec<DirtyRegion>, XenCallError> {
        let mut log = Vec::with_capacity(regions.len());
        for &(slot, range) in regions {
            let bitmap = match self.tracked.get_mut(&range.start) {
                Some(tracked) => {
                    let clean = vec![0; tracked.bitmap.len()];
                    std::mem::replace(&mut tracked.bitmap, clean)
                }
                None => Vec::new(),
            };
            let region = DirtyRegion {
                slot,
                guest_addr: GuestAddress(range.start),
                bitmap,
            };
            let base = range.start >> PAGE_SHIFT;
            for run in region.dirty_runs() {
                if let Err(err) =
                    server.set_type(HVMMEM_IOREQ_SERVER, base + run.start, run.end - run.start)
                {
                    // Keep what was not reported, so that the next harvest has it.
                    if let Some(tracked) = self.tracked.get_mut(&range.start) {
                        for page in dirty::set_bits(&region.bitmap) {
                            tracked.bitmap[(page / 64) as usize] |= 1 << (page % 64);
                        }
                    }
                    return Err(err);
                }
            }
            log.push(region);
        }
        Ok(log)
    }
}

/// Stores a guest write in RAM through vmkit's mapping without marking vm-memory's bitmap,
/// which records the VMM's own writes only. False if `addr` is not mapped RAM.
fn store(memory: &GuestMemoryMmap, addr: u64, data: &[u8]) -> bool {
    let Some(region) = memory.find_region(GuestAddress(addr)) else {
        return false;
    };
    let offset = addr - region.start_addr().0;
    if offset + data.len() as u64 > region.len() {
        return false;
    }
    let Ok(host) = region.get_host_address(MemoryRegionAddress(offset)) else {
        return false;
    };
    // SAFETY: `host..host + data.len()` lies inside the region's live mapping (checked
    // above), which `memory` keeps mapped for the call; a volatile slice without a bitmap is
    // how vm-memory writes guest memory that the guest may access at the same time.
    let slice = unsafe { vm_memory::VolatileSlice::new(host, data.len()) };
    slice.copy_from(data);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_covers_every_frame_it_touches() {
        let r = |start, size| GuestRange { start, size };
        assert_eq!(frames(r(0x4000_0000, 0x20_0000)), 0x40000..0x40200);
        assert_eq!(frames(r(0x1000, 0x1800)), 1..3);
    }
}
