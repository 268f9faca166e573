//! Guest memory helpers: ring areas resolved once to a host slice, and a
//! cached check that descriptor buffers lie in guest memory.

use std::sync::atomic::Ordering;

use vm_memory::bitmap::BS;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, Permissions,
    VolatileMemory, VolatileSlice,
};

use crate::error::{DescIndex, Error, Result, RingArea};

/// A raw 16-byte descriptor as two little-endian 64-bit words.
///
/// Split layout: `addr`, then `len: u32, flags: u16, next: u16`.
/// Packed layout: `addr`, then `len: u32, id: u16, flags: u16`.
pub(crate) type RawDesc = [u64; 2];

/// Byte size of one descriptor, split or packed.
pub(crate) const DESC_SIZE: usize = 16;

/// A contiguous guest memory area (ring or table), resolved to a host slice
/// when it lies in one region, and accessed through `Bytes` otherwise.
pub(crate) struct Area<'m, M: GuestMemory + ?Sized> {
    mem: &'m M,
    base: GuestAddress,
    len: usize,
    slice: Option<VolatileSlice<'m, BS<'m, M::Bitmap>>>,
}

impl<M: GuestMemory + ?Sized> Clone for Area<'_, M> {
    fn clone(&self) -> Self {
        Area {
            mem: self.mem,
            base: self.base,
            len: self.len,
            slice: self.slice.clone(),
        }
    }
}

/// A guest memory region known to exist, with a host slice covering it when
/// the memory has no IOMMU: buffers and indirect tables that fall inside it
/// need no further lookup.
pub(crate) struct Hint<'m, M: GuestMemory + ?Sized> {
    lo: u64,
    /// Exclusive end.
    hi: u64,
    slice: Option<VolatileSlice<'m, BS<'m, M::Bitmap>>>,
}

impl<M: GuestMemory + ?Sized> Clone for Hint<'_, M> {
    fn clone(&self) -> Self {
        Hint {
            lo: self.lo,
            hi: self.hi,
            slice: self.slice.clone(),
        }
    }
}

impl<'m, M: GuestMemory + ?Sized> Hint<'m, M> {
    /// An empty hint.
    pub(crate) const fn none() -> Self {
        Hint {
            lo: 0,
            hi: 0,
            slice: None,
        }
    }

    /// The region holding `addr`, if the memory is plain physical memory.
    pub(crate) fn region_of(mem: &'m M, addr: GuestAddress) -> Self {
        let Some(pm) = mem.physical_memory() else {
            return Self::none();
        };
        let Some(r) = pm.find_region(addr) else {
            return Self::none();
        };
        let lo = r.start_addr().0;
        let Ok(len) = usize::try_from(r.len()) else {
            return Self::none();
        };
        let hi = lo.saturating_add(r.len());
        let slice = mem
            .get_slices(GuestAddress(lo), len, Permissions::ReadWrite)
            .ok()
            .and_then(|mut it| match it.next() {
                Some(Ok(s)) if s.len() == len => Some(s),
                _ => None,
            });
        Hint { lo, hi, slice }
    }

    #[inline]
    fn contains(&self, addr: u64, end: u64) -> bool {
        addr >= self.lo && end <= self.hi
    }
}

/// What the per-call queue API keeps between calls instead of host
/// pointers: the guest range of the memory region that held the queue's
/// descriptor area last time.
///
/// It holds no pointer, so it cannot go stale. Each call resolves the range
/// again in the memory it is given, with one lookup that then serves all
/// the rings and the chain's buffers in that region (where each ring and
/// each buffer region used to cost one), and uses it only if it still lies
/// in one region with a host mapping. When the memory layout changes
/// (regions added or removed, or another memory object passed, as after a
/// hotplug swap), that lookup fails or no longer covers the descriptor
/// area: the call looks the region up afresh and remembers the new one,
/// and any ring outside it takes the full per-area lookup and its errors.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RegionCache {
    lo: u64,
    /// 0: nothing cached.
    len: usize,
}

impl RegionCache {
    /// The region holding the guest address `at` in `mem`, as a [`Hint`].
    #[inline(always)]
    pub(crate) fn hint<'m, M: GuestMemory + ?Sized>(
        &mut self,
        mem: &'m M,
        at: GuestAddress,
    ) -> Hint<'m, M> {
        if let Some(hint) = self.resolve(mem) {
            if hint.lo <= at.0 && at.0 < hint.hi {
                return hint;
            }
        }
        self.learn(mem, at)
    }

    /// The cached range resolved in `mem`, if it still lies in one region
    /// of plain (non-IOMMU) memory, as the hints [`Hint::region_of`] makes.
    #[inline(always)]
    fn resolve<'m, M: GuestMemory + ?Sized>(&self, mem: &'m M) -> Option<Hint<'m, M>> {
        if self.len == 0 {
            return None;
        }
        mem.physical_memory()?;
        let hi = self.lo.checked_add(self.len as u64)?;
        let mut slices = mem
            .get_slices(GuestAddress(self.lo), self.len, Permissions::ReadWrite)
            .ok()?;
        match slices.next() {
            Some(Ok(s)) if s.len() == self.len => Some(Hint {
                lo: self.lo,
                hi,
                slice: Some(s),
            }),
            _ => None,
        }
    }

    #[cold]
    fn learn<'m, M: GuestMemory + ?Sized>(&mut self, mem: &'m M, at: GuestAddress) -> Hint<'m, M> {
        let hint = Hint::region_of(mem, at);
        *self = match (&hint.slice, usize::try_from(hint.hi - hint.lo)) {
            (Some(_), Ok(len)) => RegionCache { lo: hint.lo, len },
            _ => RegionCache::default(),
        };
        hint
    }
}

/// The host slice of the last guest memory region a buffer was found in,
/// so that buffers moved in place (virtio-net's `readv`/`writev`) cost no
/// region lookup while they stay in it.
pub(crate) struct SliceCache<'m, M: GuestMemory + ?Sized> {
    hint: Hint<'m, M>,
}

impl<'m, M: GuestMemory + ?Sized> SliceCache<'m, M> {
    /// An empty cache.
    pub(crate) const fn new() -> Self {
        SliceCache { hint: Hint::none() }
    }

    /// `[addr, addr + len)` as one host slice, if it lies in one region of
    /// plain memory; `None` otherwise (the caller asks the memory).
    pub(crate) fn slice(
        &mut self,
        mem: &'m M,
        addr: u64,
        len: usize,
    ) -> Option<VolatileSlice<'m, BS<'m, M::Bitmap>>> {
        let end = addr.checked_add(len as u64)?;
        if !self.hint.contains(addr, end) || self.hint.slice.is_none() {
            self.hint = Hint::region_of(mem, GuestAddress(addr));
            if !self.hint.contains(addr, end) {
                return None;
            }
        }
        let off = usize::try_from(addr - self.hint.lo).ok()?;
        self.hint.slice.as_ref()?.subslice(off, len).ok()
    }
}

fn mem_err(addr: u64) -> impl FnOnce(vm_memory::GuestMemoryError) -> Error {
    move |source| Error::Memory { addr, source }
}

fn vol_err(addr: u64) -> impl FnOnce(vm_memory::VolatileMemoryError) -> Error {
    move |e| Error::Memory {
        addr,
        source: e.into(),
    }
}

impl<'m, M: GuestMemory + ?Sized> Area<'m, M> {
    /// Resolves a queue ring area, checking wraparound and that it is in guest memory.
    #[inline(always)]
    pub(crate) fn ring(
        mem: &'m M,
        area: RingArea,
        base: GuestAddress,
        len: usize,
        access: Permissions,
    ) -> Result<Self> {
        let err_len = len as u64;
        if base.0.checked_add(err_len).is_none() {
            return Err(Error::AreaOverflow {
                area,
                addr: base.0,
                len: err_len,
            });
        }
        match Self::resolve(mem, base, len, access) {
            Some(a) => Ok(a),
            None => Err(Error::AreaOutOfMemory {
                area,
                addr: base.0,
                len: err_len,
            }),
        }
    }

    /// As [`Area::ring`], but without a lookup when the area lies in
    /// `hint`'s region (hints exist only for plain memory, where every
    /// access is allowed).
    #[inline(always)]
    pub(crate) fn ring_in(
        mem: &'m M,
        hint: &Hint<'m, M>,
        area: RingArea,
        base: GuestAddress,
        len: usize,
        access: Permissions,
    ) -> Result<Self> {
        match Self::in_hint(mem, hint, base.0, len) {
            Some(a) => Ok(a),
            None => Self::ring(mem, area, base, len, access),
        }
    }

    /// An area inside a region whose host slice is already known.
    #[inline(always)]
    fn in_hint(mem: &'m M, hint: &Hint<'m, M>, base: u64, len: usize) -> Option<Self> {
        let end = base.checked_add(len as u64)?;
        if !hint.contains(base, end) {
            return None;
        }
        let slice = hint.slice.as_ref()?;
        let off = usize::try_from(base - hint.lo).ok()?;
        let sub = slice.subslice(off, len).ok()?;
        Some(Area {
            mem,
            base: GuestAddress(base),
            len,
            slice: Some(sub),
        })
    }

    /// Resolves an area whose range the caller has already checked for
    /// wraparound; `None` if it is not entirely in guest memory.
    #[inline(always)]
    pub(crate) fn resolve(
        mem: &'m M,
        base: GuestAddress,
        len: usize,
        access: Permissions,
    ) -> Option<Self> {
        let mut slices = mem.get_slices(base, len, access).ok()?;
        let slice = match slices.next() {
            Some(Ok(s)) if s.len() == len => Some(s),
            Some(Ok(_)) => {
                // Spans several regions: fall back to per-access lookups.
                if !mem.check_range(base, len, access) {
                    return None;
                }
                None
            }
            _ => return None,
        };
        Some(Area {
            mem,
            base,
            len,
            slice,
        })
    }

    fn addr(&self, off: usize, size: usize) -> Result<GuestAddress> {
        // `off + size <= len` and `base + len` does not wrap (checked at
        // construction), so the sum below cannot wrap either.
        match off.checked_add(size) {
            Some(end) if end <= self.len => Ok(GuestAddress(self.base.0.wrapping_add(off as u64))),
            _ => Err(Error::Memory {
                addr: self.base.0.wrapping_add(off as u64),
                source: vm_memory::GuestMemoryError::InvalidBackendAddress,
            }),
        }
    }

    /// Atomically loads a little-endian `u16`.
    #[inline]
    pub(crate) fn load_u16(&self, off: usize, order: Ordering) -> Result<u16> {
        let addr = self.addr(off, 2)?;
        let v: u16 = match &self.slice {
            Some(s) => s.load(off, order).map_err(vol_err(addr.0))?,
            None => self.mem.load(addr, order).map_err(mem_err(addr.0))?,
        };
        Ok(u16::from_le(v))
    }

    /// Atomically stores a little-endian `u16`.
    #[inline]
    pub(crate) fn store_u16(&self, off: usize, v: u16, order: Ordering) -> Result<()> {
        let addr = self.addr(off, 2)?;
        match &self.slice {
            Some(s) => s.store(v.to_le(), off, order).map_err(vol_err(addr.0)),
            None => self
                .mem
                .store(v.to_le(), addr, order)
                .map_err(mem_err(addr.0)),
        }
    }

    /// Reads a little-endian `u16` (volatile, no ordering).
    #[inline]
    pub(crate) fn read_u16(&self, off: usize) -> Result<u16> {
        let addr = self.addr(off, 2)?;
        let v: u16 = match &self.slice {
            Some(s) => s.get_ref::<u16>(off).map_err(vol_err(addr.0))?.load(),
            None => self.mem.read_obj(addr).map_err(mem_err(addr.0))?,
        };
        Ok(u16::from_le(v))
    }

    /// Reads one raw descriptor at byte offset `off`.
    #[inline]
    pub(crate) fn read_desc(&self, off: usize) -> Result<RawDesc> {
        let addr = self.addr(off, DESC_SIZE)?;
        let v: RawDesc = match &self.slice {
            Some(s) => s.get_ref::<RawDesc>(off).map_err(vol_err(addr.0))?.load(),
            None => self.mem.read_obj(addr).map_err(mem_err(addr.0))?,
        };
        Ok([u64::from_le(v[0]), u64::from_le(v[1])])
    }

    /// Writes two little-endian `u32`s (a split used element).
    #[inline]
    pub(crate) fn write_u32x2(&self, off: usize, v: [u32; 2]) -> Result<()> {
        let addr = self.addr(off, 8)?;
        let v = [v[0].to_le(), v[1].to_le()];
        match &self.slice {
            Some(s) => {
                s.get_ref::<[u32; 2]>(off)
                    .map_err(vol_err(addr.0))?
                    .store(v);
                Ok(())
            }
            None => self.mem.write_obj(v, addr).map_err(mem_err(addr.0)),
        }
    }

    /// Writes a little-endian `u32`, then a little-endian `u16` right after it
    /// (a packed used descriptor's `len` and `id`).
    #[inline]
    pub(crate) fn write_u32_u16(&self, off: usize, a: u32, b: u16) -> Result<()> {
        let addr = self.addr(off, 6)?;
        match &self.slice {
            Some(s) => {
                s.get_ref::<u32>(off)
                    .map_err(vol_err(addr.0))?
                    .store(a.to_le());
                s.get_ref::<u16>(off + 4)
                    .map_err(vol_err(addr.0))?
                    .store(b.to_le());
                Ok(())
            }
            None => {
                self.mem
                    .write_obj(a.to_le(), addr)
                    .map_err(mem_err(addr.0))?;
                let addr2 = GuestAddress(addr.0.wrapping_add(4));
                self.mem
                    .write_obj(b.to_le(), addr2)
                    .map_err(mem_err(addr2.0))
            }
        }
    }
}

/// A device-visible buffer: one validated descriptor of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    addr: GuestAddress,
    len: u32,
    write_only: bool,
}

impl Descriptor {
    /// The guest physical address of the buffer.
    pub fn addr(&self) -> GuestAddress {
        self.addr
    }

    /// The length of the buffer in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `true` if the device may only write the buffer, `false` if it may only read it.
    pub fn is_write_only(&self) -> bool {
        self.write_only
    }
}

/// Per-chain validation state: buffer ranges, total length, and the
/// readable-before-writable ordering.
pub(crate) struct ChainCheck<'m, M: GuestMemory + ?Sized> {
    /// A guest range known to lie inside one memory region.
    hint: Hint<'m, M>,
    total: u32,
    seen_writable: bool,
}

impl<'m, M: GuestMemory + ?Sized> ChainCheck<'m, M> {
    pub(crate) fn new(hint: Hint<'m, M>) -> Self {
        ChainCheck {
            hint,
            total: 0,
            seen_writable: false,
        }
    }

    /// Checks that `[addr, addr + len)` does not wrap and lies in guest memory.
    #[inline]
    pub(crate) fn check_range(
        &mut self,
        mem: &M,
        at: DescIndex,
        addr: u64,
        len: u32,
        access: Permissions,
    ) -> Result<()> {
        let end = addr
            .checked_add(u64::from(len))
            .ok_or(Error::BufferOverflow { at, addr, len })?;
        if len == 0 || self.hint.contains(addr, end) {
            return Ok(());
        }
        if let Some(pm) = mem.physical_memory() {
            if let Some(r) = pm.find_region(GuestAddress(addr)) {
                let lo = r.start_addr().0;
                let hi = lo.saturating_add(r.len());
                if end <= hi {
                    self.hint = Hint {
                        lo,
                        hi,
                        slice: None,
                    };
                    return Ok(());
                }
            }
        }
        // Spans several regions, or memory behind an IOMMU.
        if mem.check_range(GuestAddress(addr), len as usize, access) {
            Ok(())
        } else {
            Err(Error::BufferOutOfMemory { at, addr, len })
        }
    }

    /// Validates one buffer descriptor and turns it into a [`Descriptor`].
    #[inline]
    pub(crate) fn buffer(
        &mut self,
        mem: &M,
        at: DescIndex,
        addr: u64,
        len: u32,
        write_only: bool,
    ) -> Result<Descriptor> {
        if write_only {
            self.seen_writable = true;
        } else if self.seen_writable {
            return Err(Error::ReadableAfterWritable { at });
        }
        let access = if write_only {
            Permissions::Write
        } else {
            Permissions::Read
        };
        self.check_range(mem, at, addr, len, access)?;
        self.total = self
            .total
            .checked_add(len)
            .ok_or(Error::ChainLengthOverflow { at })?;
        Ok(Descriptor {
            addr: GuestAddress(addr),
            len,
            write_only,
        })
    }

    /// Total length of the buffers validated so far.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }
}

/// Validates an indirect descriptor's table (length rules, wraparound,
/// memory) and resolves it. Returns the table and its descriptor count.
#[inline(always)]
pub(crate) fn indirect_table<'m, M: GuestMemory + ?Sized>(
    mem: &'m M,
    check: &ChainCheck<'m, M>,
    at: DescIndex,
    addr: u64,
    len: u32,
) -> Result<(Area<'m, M>, u32)> {
    if len == 0 || !len.is_multiple_of(DESC_SIZE as u32) {
        return Err(Error::InvalidIndirectLength { at, len });
    }
    let count = len / DESC_SIZE as u32;
    if count > crate::MAX_INDIRECT_DESCRIPTORS {
        return Err(Error::IndirectTableTooLarge {
            at,
            len,
            max: crate::MAX_INDIRECT_DESCRIPTORS,
        });
    }
    if addr.checked_add(u64::from(len)).is_none() {
        return Err(Error::BufferOverflow { at, addr, len });
    }
    if let Some(area) = Area::in_hint(mem, &check.hint, addr, len as usize) {
        return Ok((area, count));
    }
    let area = Area::resolve(mem, GuestAddress(addr), len as usize, Permissions::Read)
        .ok_or(Error::BufferOutOfMemory { at, addr, len })?;
    Ok((area, count))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use vm_memory::GuestMemoryMmap;

    use super::*;

    type Mem = GuestMemoryMmap<()>;

    fn memory(ranges: &[(u64, usize)]) -> Mem {
        let ranges: Vec<_> = ranges.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    fn host(h: &Hint<'_, Mem>) -> *const u8 {
        h.slice.as_ref().expect("a host slice").ptr_guard().as_ptr()
    }

    #[test]
    fn region_cache_is_checked_against_each_memory() {
        let a = memory(&[(0, 0x1_0000), (0x2_0000, 0x1_0000)]);
        let mut c = RegionCache::default();
        let h = c.hint(&a, GuestAddress(0x1000));
        assert_eq!((h.lo, h.hi), (0, 0x1_0000));
        assert_eq!((c.lo, c.len), (0, 0x1_0000));
        // Found again by the one lookup, in the same mapping.
        let again = c.resolve(&a).expect("still one region");
        assert_eq!(host(&again), a.get_host_address(GuestAddress(0)).unwrap());

        // The area moved to the other region: the cache follows it.
        let h = c.hint(&a, GuestAddress(0x2_0100));
        assert_eq!((h.lo, h.hi), (0x2_0000, 0x3_0000));
        assert_eq!((c.lo, c.len), (0x2_0000, 0x1_0000));

        // Another memory with the same range: its own mapping, not a's.
        let b = memory(&[(0x2_0000, 0x1_0000)]);
        let h = c.hint(&b, GuestAddress(0x2_0100));
        assert_eq!(
            host(&h),
            b.get_host_address(GuestAddress(0x2_0000)).unwrap()
        );
        assert_ne!(
            host(&h),
            a.get_host_address(GuestAddress(0x2_0000)).unwrap()
        );

        // The range now spans two regions: not used; the region of the
        // area is learned instead.
        let split = memory(&[(0x2_0000, 0x8000), (0x2_8000, 0x8000)]);
        assert!(c.resolve(&split).is_none());
        let h = c.hint(&split, GuestAddress(0x2_8100));
        assert_eq!((h.lo, h.hi), (0x2_8000, 0x3_0000));

        // No region at all: an empty hint, and nothing cached.
        let far = memory(&[(0x100_0000, 0x1000)]);
        let h = c.hint(&far, GuestAddress(0x2_8100));
        assert!(h.slice.is_none() && !h.contains(0x2_8100, 0x2_8101));
        assert_eq!(c.len, 0);
        assert!(c.resolve(&split).is_none());
    }
}
