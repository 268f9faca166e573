//! Which pages the source still owes the destination: the hypervisor's dirty log (ring or
//! bitmap), vm-memory's bitmaps (writes by the VMM's devices through the VM's memory), and
//! pages the VMM marks itself ([`MarkedPages`]).

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::wire::Region;
use crate::dirty::{set_bits, DirtyRegion};
use crate::memory::{MemorySlot, PAGE_SIZE};
use crate::vm::{Vm, VmError};

/// Guest pages a VMM wrote by a path that no dirty log sees (a mapping of its own, a
/// `vhost` backend it drives, DMA it emulates outside vm-memory), for a migration to send
/// again. Clone it into whatever writes; [`mark`](Self::mark) is cheap and thread-safe.
///
/// ```
/// use vmkit::migration::MarkedPages;
/// use vmkit::vm_memory::GuestAddress;
/// let marked = MarkedPages::default();
/// marked.mark(GuestAddress(0x1ff0), 0x20); // spans two pages
/// assert_eq!(marked.len(), 2);
/// ```
#[derive(Clone, Debug, Default)]
pub struct MarkedPages(Arc<Mutex<BTreeSet<u64>>>);

impl MarkedPages {
    /// Marks the pages of `len` bytes at `addr` as written.
    pub fn mark(&self, addr: GuestAddress, len: u64) {
        if len == 0 {
            return;
        }
        let page = PAGE_SIZE as u64;
        let first = addr.0 / page;
        let last = addr.0.saturating_add(len - 1) / page;
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(first..=last);
    }

    /// How many pages are marked and not yet taken by a migration.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no page is marked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every marked page frame number.
    fn take(&self) -> BTreeSet<u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The pages of each region that are owed, one bitmap per region in layout order.
pub(super) struct Owed {
    regions: Vec<Region>,
    bitmaps: Vec<Vec<u64>>,
}

impl Owed {
    /// Starts tracking: whatever was dirty before is forgotten (round 0 sends everything).
    pub(super) fn start(
        vm: &dyn Vm,
        regions: &[Region],
        marked: Option<&MarkedPages>,
    ) -> Result<Self, VmError> {
        let mut owed = Owed {
            regions: regions.to_vec(),
            bitmaps: regions
                .iter()
                .map(|r| vec![0; r.pages().div_ceil(64) as usize])
                .collect(),
        };
        owed.collect(vm, marked)?;
        owed.clear();
        Ok(owed)
    }

    fn clear(&mut self) {
        for bitmap in &mut self.bitmaps {
            bitmap.fill(0);
        }
    }

    fn set(&mut self, region: usize, page: u64) {
        let pages = self.regions.get(region).map_or(0, Region::pages);
        if page < pages {
            if let Some(word) = self
                .bitmaps
                .get_mut(region)
                .and_then(|b| b.get_mut((page / 64) as usize))
            {
                *word |= 1 << (page % 64);
            }
        }
    }

    fn set_all(&mut self, region: usize) {
        let pages = self.regions.get(region).map_or(0, Region::pages);
        for page in 0..pages {
            self.set(region, page);
        }
    }

    /// Adds what was dirtied since the last collection; returns how many pages are owed.
    pub(super) fn collect(
        &mut self,
        vm: &dyn Vm,
        marked: Option<&MarkedPages>,
    ) -> Result<u64, VmError> {
        let log = vm.harvest_dirty_log()?;
        let memory = vm.memory();
        for index in 0..self.regions.len() {
            let addr = self.regions[index].guest_addr;
            match log.regions.iter().find(|r| r.guest_addr.0 == addr) {
                // An overflowed ring, or a region without a dirty log: all of it may have
                // changed.
                _ if log.overflowed => self.set_all(index),
                None => self.set_all(index),
                Some(logged) => {
                    for page in logged.dirty_page_indices() {
                        self.set(index, page);
                    }
                }
            }
            if let Some(region) = memory.find_region(GuestAddress(addr)) {
                if region.start_addr().0 == addr {
                    if let Some(bitmap) = vm_memory::MmapRegion::bitmap(region) {
                        let words = bitmap.get_and_reset();
                        for page in set_bits(&words) {
                            self.set(index, page);
                        }
                    }
                }
            }
        }
        if let Some(marked) = marked {
            let page = PAGE_SIZE as u64;
            for pfn in marked.take() {
                let addr = pfn * page;
                if let Some(index) = self
                    .regions
                    .iter()
                    .position(|r| r.guest_addr <= addr && addr - r.guest_addr < r.size)
                {
                    let first = self.regions[index].guest_addr / page;
                    self.set(index, pfn - first);
                }
            }
        }
        Ok(self.count())
    }

    /// Pages owed.
    pub(super) fn count(&self) -> u64 {
        self.bitmaps
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    /// Takes the owed pages as runs: (region index, page range), and forgets them.
    pub(super) fn take_runs(&mut self) -> Vec<(u32, Range<u64>)> {
        let mut runs = Vec::new();
        for (index, bitmap) in self.bitmaps.iter().enumerate() {
            let region = DirtyRegion {
                slot: MemorySlot(0),
                guest_addr: GuestAddress(0),
                bitmap: bitmap.clone(),
            };
            runs.extend(region.dirty_runs().map(|r| (index as u32, r)));
        }
        self.clear();
        runs
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::hypervisor::VmConfig;
    use crate::memory::{MemoryFlags, MemoryRegion};

    /// Device writes (vm-memory's bitmap) and pages the VMM marks are both owed, once; what
    /// was dirty before tracking started is not.
    #[test]
    fn owed_pages_merge_device_writes_and_marks() {
        let hypervisor = crate::open().unwrap();
        let vm = hypervisor.create_vm(&VmConfig::default()).unwrap();
        let region =
            MemoryRegion::anonymous(GuestAddress(0x10_0000), 0x10_000, MemoryFlags::LOG_DIRTY)
                .unwrap();
        vm.add_memory_region(region).unwrap();
        let regions = [Region {
            guest_addr: 0x10_0000,
            size: 0x10_000,
            flags: MemoryFlags::LOG_DIRTY.bits(),
        }];
        let memory = vm.memory();
        memory.write_obj(1u64, GuestAddress(0x10_0000)).unwrap();
        let marked = MarkedPages::default();
        marked.mark(GuestAddress(0x10_1000), 1);

        let mut owed = Owed::start(vm.as_ref(), &regions, Some(&marked)).unwrap();
        assert_eq!(owed.count(), 0);
        memory.write_obj(2u64, GuestAddress(0x10_3008)).unwrap();
        marked.mark(GuestAddress(0x10_6ff0), 0x20); // pages 6 and 7
        marked.mark(GuestAddress(0x20_0000), 8); // outside every region: ignored
        assert_eq!(owed.collect(vm.as_ref(), Some(&marked)).unwrap(), 3);
        assert!(marked.is_empty());
        assert_eq!(owed.take_runs(), [(0, 3..4), (0, 6..8)]);
        assert_eq!(owed.collect(vm.as_ref(), Some(&marked)).unwrap(), 0);
    }
}
