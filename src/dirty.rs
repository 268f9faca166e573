//! Dirty-page tracking: which guest pages were written since the last harvest.
//!
//! Regions added with [`MemoryFlags::LOG_DIRTY`](crate::MemoryFlags::LOG_DIRTY) are tracked.
//! [`Vm::harvest_dirty_log`](crate::Vm::harvest_dirty_log) returns the pages the guest wrote
//! since the previous harvest and re-arms tracking for them before it returns, so a VMM that
//! copies the reported pages *after* the call never misses a write: a write that raced with the
//! harvest is either in this log (and in the copy) or in the next one.

use std::ops::Range;

use vm_memory::GuestAddress;

use crate::memory::{MemorySlot, PAGE_SIZE};

/// How a VM tracks dirty pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DirtyLogMode {
    /// One bitmap per region, fetched (and cleared) by the VMM.
    #[default]
    Bitmap,
    /// Per-vCPU rings of dirty-page entries that the hypervisor appends to and the VMM
    /// consumes; cheaper when few pages are dirtied in large memory. Emulated from a bitmap
    /// where [`Capabilities::dirty_ring_emulated`](crate::Capabilities::dirty_ring_emulated)
    /// says so (Xen): the same harvest, without the saving, and a ring that never fills.
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
        self.dirty_page_indices()
            .map(move |page| GuestAddress(base + page * PAGE_SIZE as u64))
    }

    /// Indices of the dirty pages within the region (page `i` starts at
    /// `guest_addr + i * 4096`), in ascending order. Costs one step per dirty page plus one
    /// per bitmap word, not one per page of the region.
    pub fn dirty_page_indices(&self) -> impl Iterator<Item = u64> + '_ {
        set_bits(&self.bitmap)
    }

    /// Runs of consecutive dirty pages, as ranges of page indices within the region, in
    /// ascending order: what a VMM copying dirty memory wants for one copy per run.
    pub fn dirty_runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        Runs {
            words: &self.bitmap,
            from: 0,
        }
    }

    /// How many pages are dirty.
    pub fn count(&self) -> usize {
        self.bitmap.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// The set bits of one bitmap word, lowest first, as page indices from `first`.
struct SetBits {
    bits: u64,
    first: u64,
}

impl Iterator for SetBits {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.bits == 0 {
            return None;
        }
        let bit = self.bits.trailing_zeros();
        // Clears the lowest set bit.
        self.bits &= self.bits - 1;
        Some(self.first + u64::from(bit))
    }
}

/// Runs of set bits in a bitmap; `from` is the first bit not yet looked at.
struct Runs<'a> {
    words: &'a [u64],
    from: u64,
}

impl Runs<'_> {
    /// The first bit at or after `from` that is set (`set`) or clear (`!set`).
    fn first_bit(&self, from: u64, set: bool) -> Option<u64> {
        let mut word = usize::try_from(from / 64).ok()?;
        let pick = |bits: u64| if set { bits } else { !bits };
        // Bits below `from` in its word do not count.
        let mut bits = pick(*self.words.get(word)?) & (!0u64 << (from % 64));
        while bits == 0 {
            word += 1;
            bits = pick(*self.words.get(word)?);
        }
        Some(word as u64 * 64 + u64::from(bits.trailing_zeros()))
    }
}

impl Iterator for Runs<'_> {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        let start = self.first_bit(self.from, true)?;
        // A run that reaches the last word ends with the bitmap.
        let end = self
            .first_bit(start, false)
            .unwrap_or(self.words.len() as u64 * 64);
        self.from = end;
        Some(start..end)
    }
}

/// Positions of the set bits of `bitmap` (least significant bit first), in ascending order.
/// Visits each set bit once and skips zero words whole, so that a sparse bitmap of a large
/// region costs little more than its word count.
pub(crate) fn set_bits(bitmap: &[u64]) -> impl Iterator<Item = u64> + '_ {
    bitmap.iter().enumerate().flat_map(|(word, &bits)| SetBits {
        bits,
        first: word as u64 * 64,
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
    /// without re-entering its run loop. Emulated rings never fill, so never set this.
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

    /// Bitmaps with sparse bits, full words and runs across word boundaries, from a fixed
    /// xorshift sequence.
    fn bitmaps() -> Vec<Vec<u64>> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut maps = vec![
            vec![],
            vec![0; 4],
            vec![!0; 3],
            vec![1 << 63, 1, 0, 1 << 63],
            vec![!0 << 60, !0, 0x0f, 0, !0],
        ];
        for _ in 0..50 {
            let words = (next() % 9) as usize;
            maps.push(
                (0..words)
                    .map(|_| match next() % 4 {
                        0 => 0,
                        1 => !0,
                        2 => next() & next() & next(),
                        _ => next(),
                    })
                    .collect(),
            );
        }
        maps
    }

    /// Page indices by testing every bit, the obvious way.
    fn naive(bitmap: &[u64]) -> Vec<u64> {
        (0..bitmap.len() as u64 * 64)
            .filter(|&page| bitmap[(page / 64) as usize] & (1 << (page % 64)) != 0)
            .collect()
    }

    #[test]
    fn indices_and_runs_match_every_bit() {
        for bitmap in bitmaps() {
            let region = DirtyRegion {
                slot: MemorySlot(0),
                guest_addr: GuestAddress(0x10_0000),
                bitmap: bitmap.clone(),
            };
            let want = naive(&bitmap);
            let indices: Vec<u64> = region.dirty_page_indices().collect();
            assert_eq!(indices, want, "{bitmap:x?}");
            let addrs: Vec<u64> = region.dirty_pages().map(|a| a.0).collect();
            let want_addrs: Vec<u64> = want.iter().map(|p| 0x10_0000 + p * 4096).collect();
            assert_eq!(addrs, want_addrs, "{bitmap:x?}");
            assert_eq!(region.count(), want.len());

            let runs: Vec<Range<u64>> = region.dirty_runs().collect();
            // The runs cover exactly the dirty pages, and are separated by clean ones.
            let covered: Vec<u64> = runs.iter().cloned().flatten().collect();
            assert_eq!(covered, want, "{bitmap:x?}: {runs:?}");
            for pair in runs.windows(2) {
                assert!(pair[0].end < pair[1].start, "{bitmap:x?}: {runs:?}");
            }
            assert!(runs.iter().all(|r| !r.is_empty()), "{runs:?}");
        }
    }

    #[test]
    fn runs_cross_words_and_reach_the_end() {
        let region = DirtyRegion {
            slot: MemorySlot(0),
            guest_addr: GuestAddress(0),
            bitmap: vec![!0 << 62, !0, 0b1, 0, 1 << 63],
        };
        let runs: Vec<Range<u64>> = region.dirty_runs().collect();
        assert_eq!(runs, [62..129, 319..320]);
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
