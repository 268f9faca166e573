//! Dirty-page tracking: which guest pages were written since the last harvest.
//!
//! Regions added with [`MemoryFlags::LOG_DIRTY`](crate::MemoryFlags::LOG_DIRTY) are tracked.
//! [`Vm::harvest_dirty_log`](crate::Vm::harvest_dirty_log) returns the pages the guest wrote
//! since the previous harvest and re-arms tracking for them before it returns, so a VMM that
//! copies the reported pages *after* the call never misses a write: a write that raced with the
//! harvest is either in this log (and in the copy) or in the next one.

use vm_memory::GuestAddress;

use crate::memory::{MemorySlot, PAGE_SIZE};

/// How a VM tracks dirty pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DirtyLogMode {
    /// One bitmap per region, fetched (and cleared) by the VMM.
    #[default]
    Bitmap,
    /// Per-vCPU rings of dirty-page entries that the hypervisor appends to and the VMM
    /// consumes; cheaper when few pages are dirtied in large memory.
    Ring {
        /// Entries per vCPU ring (a power of two).
        entries: u32,
    },
}

/// The dirty pages of one region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyRegion {
    /// The region's slot.
    pub slot: MemorySlot,
    /// First guest-physical address of the region.
    pub guest_addr: GuestAddress,
    /// One bit per page of the region, least significant bit first: bit `i` of word `w` is page
    /// `64 * w + i`.
    pub bitmap: Vec<u64>,
}

impl DirtyRegion {
    /// Guest-physical addresses of the dirty pages, in ascending order.
    pub fn dirty_pages(&self) -> impl Iterator<Item = GuestAddress> + '_ {
        let base = self.guest_addr.0;
        set_bits(&self.bitmap).map(move |page| GuestAddress(base + page * PAGE_SIZE as u64))
    }

    /// How many pages are dirty.
    pub fn count(&self) -> usize {
        self.bitmap.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// Positions of the set bits of `bitmap` (least significant bit first), in ascending order.
/// Visits each set bit once and skips zero words whole, so that a sparse bitmap of a large
/// region costs little more than its word count.
pub(crate) fn set_bits(bitmap: &[u64]) -> impl Iterator<Item = u64> + '_ {
    bitmap.iter().enumerate().flat_map(|(word, &bits)| {
        let mut rest = bits;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let bit = u64::from(rest.trailing_zeros());
                rest &= rest - 1;
                word as u64 * 64 + bit
            })
        })
    })
}

/// The dirty pages of every tracked region, from one harvest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyLog {
    /// One entry per region that logs dirty pages, in slot order.
    pub regions: Vec<DirtyRegion>,
    /// A dirty ring was found completely full, so the hypervisor may have dropped entries:
    /// the log may be incomplete and the VMM should treat all tracked memory as dirty.
    ///
    /// A hypervisor normally stops a vCPU ([`VcpuExit::DirtyRingFull`]) before its ring fills;
    /// a nested, software-emulated KVM may not, when it emulates many guest instructions
    /// without re-entering its run loop.
    ///
    /// [`VcpuExit::DirtyRingFull`]: crate::VcpuExit::DirtyRingFull
    pub overflowed: bool,
}

impl DirtyLog {
    /// Guest-physical addresses of all dirty pages, region by region.
    pub fn dirty_pages(&self) -> impl Iterator<Item = GuestAddress> + '_ {
        self.regions.iter().flat_map(DirtyRegion::dirty_pages)
    }

    /// How many pages are dirty in all.
    pub fn count(&self) -> usize {
        self.regions.iter().map(DirtyRegion::count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_come_out_in_order_with_addresses() {
        let region = DirtyRegion {
            slot: MemorySlot(1),
            guest_addr: GuestAddress(0x4000_0000),
            bitmap: vec![0b101, 1 << 63],
        };
        let pages: Vec<u64> = region.dirty_pages().map(|a| a.0).collect();
        assert_eq!(
            pages,
            [0x4000_0000, 0x4000_2000, 0x4000_0000 + 127 * 0x1000]
        );
        assert_eq!(region.count(), 3);
    }

    #[test]
    fn set_bits_visits_each_bit_once_in_order() {
        let bitmap = [0, u64::MAX, 0, 1 << 63 | 1, 0];
        let bits: Vec<u64> = set_bits(&bitmap).collect();
        let expected: Vec<u64> = (64..128).chain([192, 255]).collect();
        assert_eq!(bits, expected);
        assert_eq!(set_bits(&[0; 8]).count(), 0);
    }
}
