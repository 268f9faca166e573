//! Address and interrupt allocation: [`MmioAllocator`] hands out
//! page-aligned MMIO windows from a range, [`GsiAllocator`] interrupt
//! numbers (GSIs) from a range, around numbers reserved for other devices.
//!
//! Both are plain data: they know nothing of a hypervisor, and nothing is
//! registered anywhere until the caller uses what they return (see
//! [`crate::virtio_mmio`] for the wiring). Both are `Clone`, so a caller can
//! try a series of allocations and go back to a saved copy if a later step
//! fails.
//!
//! ```
//! use vmkit_machine::resources::{GsiAllocator, MmioAllocator, MmioWindow};
//!
//! let mut mmio = MmioAllocator::new(0xd000_0000, 0xd000_3000)?;
//! assert_eq!(mmio.allocate(0x200)?, MmioWindow { base: 0xd000_0000, size: 0x1000 });
//! assert_eq!(mmio.allocate(0x1000)?.base, 0xd000_1000);
//! assert!(mmio.allocate(0x2000).is_err()); // one page left
//!
//! let mut gsis = GsiAllocator::new(5, 23)?;
//! gsis.reserve(6)?; // someone else's
//! assert_eq!((gsis.allocate()?, gsis.allocate()?), (5, 7));
//! assert!(gsis.reserve(7).is_err()); // taken
//! # Ok::<(), vmkit_machine::resources::ResourceError>(())
//! ```

use std::collections::BTreeSet;

/// The granule of MMIO windows: one 4 KiB page, so that each window can be
/// trapped (or mapped) on its own.
pub const PAGE_SIZE: u64 = 0x1000;

/// The errors of the allocators: each names the value it refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The MMIO range does not start on a page boundary.
    #[error("MMIO range base {base:#x} is not page-aligned ({PAGE_SIZE:#x})")]
    UnalignedMmioBase {
        /// The base given.
        base: u64,
    },
    /// The MMIO range holds no page.
    #[error("MMIO range {base:#x}..{limit:#x} holds no page")]
    EmptyMmioRange {
        /// The base given.
        base: u64,
        /// The limit given (exclusive).
        limit: u64,
    },
    /// A window of size 0 was asked for.
    #[error("an MMIO window of size 0 was asked for")]
    ZeroSizeWindow,
    /// A size-aligned window was asked for with a size that is not a power of two of at
    /// least a page.
    #[error("a size-aligned MMIO window of {size:#x} bytes was asked for: not a power of two of at least {PAGE_SIZE:#x}")]
    UnalignedSize {
        /// The size asked for.
        size: u64,
    },
    /// No room is left for a window of that size.
    #[error("no room for an MMIO window of {size:#x} bytes: only {next:#x}..{limit:#x} is left")]
    MmioExhausted {
        /// The size asked for.
        size: u64,
        /// Where the free part of the range starts.
        next: u64,
        /// The range's limit (exclusive).
        limit: u64,
    },
    /// The GSI range is empty.
    #[error("GSI range {first}..={last} is empty")]
    EmptyGsiRange {
        /// The first GSI given.
        first: u32,
        /// The last GSI given.
        last: u32,
    },
    /// Every GSI of the range is allocated or reserved.
    #[error("every GSI from {first} to {last} is allocated or reserved")]
    GsiExhausted {
        /// The range's first GSI.
        first: u32,
        /// The range's last GSI.
        last: u32,
    },
    /// The GSI is already allocated or reserved.
    #[error("GSI {gsi} is already allocated or reserved")]
    GsiInUse {
        /// The GSI.
        gsi: u32,
    },
}

/// A guest-physical MMIO window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmioWindow {
    /// The first address (page-aligned).
    pub base: u64,
    /// The size in bytes (whole pages).
    pub size: u64,
}

impl MmioWindow {
    /// The address just past the window.
    pub fn end(&self) -> u64 {
        // `MmioAllocator` never hands out a window that passes its limit.
        self.base.saturating_add(self.size)
    }
}

/// Hands out page-aligned MMIO windows one after the other from a range,
/// never past its limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmioAllocator {
    next: u64,
    limit: u64,
}

impl MmioAllocator {
    /// An allocator over `base..limit`: `base` must be page-aligned, and
    /// the range must hold at least one page (`limit` is exclusive).
    pub fn new(base: u64, limit: u64) -> Result<MmioAllocator, ResourceError> {
        if !base.is_multiple_of(PAGE_SIZE) {
            return Err(ResourceError::UnalignedMmioBase { base });
        }
        if limit.saturating_sub(base) < PAGE_SIZE {
            return Err(ResourceError::EmptyMmioRange { base, limit });
        }
        Ok(MmioAllocator { next: base, limit })
    }

    /// The next window of at least `size` bytes, rounded up to whole pages.
    pub fn allocate(&mut self, size: u64) -> Result<MmioWindow, ResourceError> {
        if size == 0 {
            return Err(ResourceError::ZeroSizeWindow);
        }
        let exhausted = ResourceError::MmioExhausted {
            size,
            next: self.next,
            limit: self.limit,
        };
        let pages = size.div_ceil(PAGE_SIZE);
        let rounded = pages.checked_mul(PAGE_SIZE).ok_or(exhausted.clone())?;
        let end = self.next.checked_add(rounded).ok_or(exhausted.clone())?;
        if end > self.limit {
            return Err(exhausted);
        }
        let window = MmioWindow {
            base: self.next,
            size: rounded,
        };
        self.next = end;
        Ok(window)
    }

    /// The next window of `size` bytes (a power of two, at least a page) aligned to its
    /// size, as a PCI BAR must be; the pages skipped to align it stay unused.
    pub fn allocate_aligned(&mut self, size: u64) -> Result<MmioWindow, ResourceError> {
        if size == 0 {
            return Err(ResourceError::ZeroSizeWindow);
        }
        let exhausted = ResourceError::MmioExhausted {
            size,
            next: self.next,
            limit: self.limit,
        };
        if !size.is_power_of_two() || size < PAGE_SIZE {
            return Err(ResourceError::UnalignedSize { size });
        }
        let base = self
            .next
            .checked_next_multiple_of(size)
            .ok_or(exhausted.clone())?;
        let end = base.checked_add(size).ok_or(exhausted.clone())?;
        if end > self.limit {
            return Err(exhausted);
        }
        self.next = end;
        Ok(MmioWindow { base, size })
    }

    /// Where the next window would start.
    pub fn next_base(&self) -> u64 {
        self.next
    }

    /// The range's limit (exclusive).
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// Hands out GSIs from `first..=last`, lowest free number first, skipping
/// the numbers reserved for other devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GsiAllocator {
    first: u32,
    last: u32,
    /// Allocated or reserved.
    used: BTreeSet<u32>,
}

impl GsiAllocator {
    /// An allocator over `first..=last` (e.g. `5..=23` for the IOAPIC pins
    /// left after the legacy devices of a PC).
    pub fn new(first: u32, last: u32) -> Result<GsiAllocator, ResourceError> {
        if first > last {
            return Err(ResourceError::EmptyGsiRange { first, last });
        }
        Ok(GsiAllocator {
            first,
            last,
            used: BTreeSet::new(),
        })
    }

    /// Marks `gsi` as taken by some other device, so that it is never
    /// allocated. Refuses a number already allocated or reserved. A number
    /// outside the range is recorded too (and so refused if reserved twice).
    pub fn reserve(&mut self, gsi: u32) -> Result<(), ResourceError> {
        if self.used.insert(gsi) {
            Ok(())
        } else {
            Err(ResourceError::GsiInUse { gsi })
        }
    }

    /// The lowest GSI of the range that is neither allocated nor reserved.
    pub fn allocate(&mut self) -> Result<u32, ResourceError> {
        let mut candidate = self.first;
        // `used` is ordered: walk the taken numbers from `first` until a gap.
        for &taken in self.used.range(self.first..=self.last) {
            if taken != candidate {
                break;
            }
            if candidate == self.last {
                return Err(ResourceError::GsiExhausted {
                    first: self.first,
                    last: self.last,
                });
            }
            candidate += 1;
        }
        self.used.insert(candidate);
        Ok(candidate)
    }

    /// Whether `gsi` is allocated or reserved.
    pub fn is_used(&self, gsi: u32) -> bool {
        self.used.contains(&gsi)
    }

    /// The range: `(first, last)`, inclusive.
    pub fn range(&self) -> (u32, u32) {
        (self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mmio_windows_are_pages_one_after_the_other_within_the_limit() {
        let mut a = MmioAllocator::new(0xd000_0000, 0xd000_4000).unwrap();
        assert_eq!(
            a.allocate(1).unwrap(),
            MmioWindow {
                base: 0xd000_0000,
                size: 0x1000
            }
        );
        assert_eq!(
            a.allocate(0x1001).unwrap(),
            MmioWindow {
                base: 0xd000_1000,
                size: 0x2000
            }
        );
        assert_eq!(a.next_base(), 0xd000_3000);
        assert_eq!(
            a.allocate(0x1001),
            Err(ResourceError::MmioExhausted {
                size: 0x1001,
                next: 0xd000_3000,
                limit: 0xd000_4000
            })
        );
        // A refusal takes nothing: the last page is still there.
        assert_eq!(a.allocate(0x1000).unwrap().end(), 0xd000_4000);
        assert!(a.allocate(1).is_err());
        assert_eq!(a.allocate(0), Err(ResourceError::ZeroSizeWindow));
    }

    #[test]
    fn mmio_ranges_are_checked() {
        assert_eq!(
            MmioAllocator::new(0xd000_0800, 0xd001_0000),
            Err(ResourceError::UnalignedMmioBase { base: 0xd000_0800 })
        );
        assert_eq!(
            MmioAllocator::new(0x2000, 0x2fff),
            Err(ResourceError::EmptyMmioRange {
                base: 0x2000,
                limit: 0x2fff
            })
        );
        assert!(MmioAllocator::new(0x3000, 0x2000).is_err());
        // At the top of the address space, sizes that would wrap are refused.
        let mut a = MmioAllocator::new(u64::MAX - 0xfff - 0x1000, u64::MAX).unwrap();
        assert!(a.allocate(u64::MAX).is_err());
        assert!(a.allocate(0x1000).is_ok());
        assert!(a.allocate(0x1000).is_err(), "the limit is exclusive");
    }

    #[test]
    fn gsis_skip_reserved_numbers_and_run_out() {
        let mut g = GsiAllocator::new(5, 8).unwrap();
        g.reserve(6).unwrap();
        g.reserve(40).unwrap();
        assert_eq!(g.reserve(6), Err(ResourceError::GsiInUse { gsi: 6 }));
        assert_eq!(g.allocate(), Ok(5));
        assert_eq!(g.allocate(), Ok(7));
        assert_eq!(g.reserve(7), Err(ResourceError::GsiInUse { gsi: 7 }));
        assert_eq!(g.allocate(), Ok(8));
        assert_eq!(
            g.allocate(),
            Err(ResourceError::GsiExhausted { first: 5, last: 8 })
        );
        assert!(g.is_used(6) && !g.is_used(9));
        assert_eq!(
            GsiAllocator::new(9, 8),
            Err(ResourceError::EmptyGsiRange { first: 9, last: 8 })
        );
        let mut top = GsiAllocator::new(u32::MAX, u32::MAX).unwrap();
        assert_eq!(top.allocate(), Ok(u32::MAX));
        assert!(top.allocate().is_err());
    }

    proptest! {
        /// Whatever the sizes, windows are page-aligned, in order, disjoint
        /// and inside the range, and a refusal changes nothing.
        #[test]
        fn mmio_windows_never_overlap(
            base_page in 0u64..0x10_0000,
            pages in 1u64..64,
            sizes in proptest::collection::vec(0u64..0x5000, 0..40),
        ) {
            let base = base_page * PAGE_SIZE;
            let limit = base + pages * PAGE_SIZE;
            let mut a = MmioAllocator::new(base, limit).unwrap();
            let mut end = base;
            for size in sizes {
                let before = a.clone();
                match a.allocate(size) {
                    Ok(w) => {
                        prop_assert_eq!(w.base, end);
                        prop_assert_eq!(w.base % PAGE_SIZE, 0);
                        prop_assert!(w.size >= size && w.size - size < PAGE_SIZE);
                        prop_assert!(w.end() <= limit);
                        end = w.end();
                    }
                    Err(_) => prop_assert_eq!(&a, &before),
                }
            }
        }

        /// GSIs come out lowest first, inside the range, never twice and
        /// never reserved ones, until the range is used up.
        #[test]
        fn gsis_are_unique_and_avoid_reservations(
            first in 0u32..64,
            len in 0u32..32,
            reserved in proptest::collection::vec(0u32..100, 0..16),
        ) {
            let last = first + len;
            let mut g = GsiAllocator::new(first, last).unwrap();
            let mut taken = BTreeSet::new();
            for r in reserved {
                prop_assert_eq!(g.reserve(r).is_ok(), taken.insert(r));
            }
            let free: Vec<u32> = (first..=last).filter(|n| !taken.contains(n)).collect();
            for want in free {
                prop_assert_eq!(g.allocate(), Ok(want));
            }
            prop_assert_eq!(g.allocate(), Err(ResourceError::GsiExhausted { first, last }));
        }
    }

    #[test]
    fn aligned_windows_skip_to_their_size() {
        let mut mmio = MmioAllocator::new(0xc000_1000, 0xc002_0000).unwrap();
        assert_eq!(
            mmio.allocate_aligned(0x8000).unwrap(),
            MmioWindow {
                base: 0xc000_8000,
                size: 0x8000
            }
        );
        assert_eq!(mmio.next_base(), 0xc001_0000);
        assert_eq!(
            mmio.allocate_aligned(0x3000),
            Err(ResourceError::UnalignedSize { size: 0x3000 })
        );
        assert_eq!(
            mmio.allocate_aligned(0x800),
            Err(ResourceError::UnalignedSize { size: 0x800 })
        );
        assert!(matches!(
            mmio.allocate_aligned(0x2_0000),
            Err(ResourceError::MmioExhausted { .. })
        ));
        assert_eq!(mmio.allocate_aligned(0x1_0000).unwrap().base, 0xc001_0000);
    }
}
