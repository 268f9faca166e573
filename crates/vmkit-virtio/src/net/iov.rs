//! Packets moved in place between guest memory and a backend: the
//! descriptors of a chain as slices of guest memory, for one vectored
//! system call (`writev`, `readv`) instead of a copy through a bounce
//! buffer.
//!
//! Only the virtio-net header is copied: out of the chain on transmit
//! (so that the header the backend gets is the one validated, whatever the
//! guest writes meanwhile), into it on receive (so that the header the
//! guest gets is the one the device checked and completed).

use vm_memory::bitmap::{BitmapSlice, BS};

/// The most pieces a packet is handed to a backend in (Linux's
/// `UIO_MAXIOV`, less one for the header); a packet in more is copied.
pub(super) const MAX_SLICES: usize = 1023;

/// The smallest transmit frame sent in place; smaller ones are copied
/// through the device's buffer and sent with one `write`. Measured with
/// `cargo bench -p vmkit-net --bench tap -- tap_tx` (device in place vs
/// copying, interleaved): in place costs 8 % more at 1514 bytes, the same
/// at 4096, 7 % less at 9014 and 25 % less at 64 KiB (GSO).
pub(super) const IN_PLACE_MIN: usize = 4096;

/// A slice of the guest memory `M`.
pub(super) type GuestSlice<'m, M> = VolatileSlice<'m, BS<'m, <M as GuestMemory>::Bitmap>>;
use vm_memory::{Bytes, GuestMemory, Permissions, VolatileSlice};

use super::header::{NetHeader, TxError, TxPacket, NET_HDR_LEN};
use super::{MAX_FRAME_LEN, MIN_FRAME_LEN};
pub(super) use crate::mem::SliceCache;
use crate::Descriptor;

/// Appends the guest memory of `d` past `skip` bytes to `out`, as slices
/// (more than one where it crosses regions).
fn push_range<'m, M: GuestMemory + ?Sized>(
    mem: &'m M,
    cache: &mut SliceCache<'m, M>,
    d: &Descriptor,
    skip: usize,
    access: Permissions,
    out: &mut Vec<GuestSlice<'m, M>>,
) -> Result<(), vm_memory::GuestMemoryError> {
    let len = d.len() as usize;
    if skip >= len {
        return Ok(());
    }
    // skip < len <= u32::MAX, and addr + len does not wrap (checked by the queue).
    let addr = d.addr().0 + skip as u64;
    if let Some(s) = cache.slice(mem, addr, len - skip) {
        out.push(s);
        return Ok(());
    }
    for s in mem.get_slices(vm_memory::GuestAddress(addr), len - skip, access)? {
        out.push(s?);
    }
    Ok(())
}

/// A transmit chain gathered in place: [`TxPacket::parse`]'s checks and
/// errors, in the same order, without the copy. The frame (the chain past
/// the header) is appended to `frame` as guest memory slices; the header
/// is copied out and validated. `cache` remembers the last region a buffer
/// was found in; the caller keeps it for a whole pass, so that a batch of
/// frames in one region costs one region lookup, not one per frame (it
/// borrows `mem`, so it cannot outlive the memory it resolved).
pub(super) fn gather_tx<'m, M, I>(
    chain: I,
    mem: &'m M,
    features: u64,
    cache: &mut SliceCache<'m, M>,
    frame: &mut Vec<GuestSlice<'m, M>>,
) -> Result<TxPacket, TxError>
where
    M: GuestMemory + ?Sized,
    I: IntoIterator<Item = crate::Result<Descriptor>>,
{
    const MAX: usize = NET_HDR_LEN + MAX_FRAME_LEN;
    let mut hb = [0u8; NET_HDR_LEN];
    let mut at = 0usize;
    let mut too_long = false;
    for d in chain {
        let d = d?;
        if d.is_write_only() {
            return Err(TxError::WritableBuffer {
                addr: d.addr().0,
                len: d.len(),
            });
        }
        let len = d.len() as usize;
        if too_long || len > MAX - at {
            // Keep walking, as `parse` does.
            too_long = true;
            continue;
        }
        let read_err = |source| TxError::Read {
            addr: d.addr().0,
            source,
        };
        // The header's bytes are copied out; the rest stays in place.
        let in_header = NET_HDR_LEN.saturating_sub(at).min(len);
        if in_header > 0 {
            let dst = hb.get_mut(at..at + in_header).unwrap_or(&mut []);
            match cache.slice(mem, d.addr().0, in_header) {
                Some(s) => {
                    s.copy_to(dst);
                }
                None => mem.read_slice(dst, d.addr()).map_err(read_err)?,
            }
        }
        push_range(mem, cache, &d, in_header, Permissions::Read, frame).map_err(read_err)?;
        at += len;
    }
    if too_long {
        return Err(TxError::TooLong { max: MAX });
    }
    if at < NET_HDR_LEN + MIN_FRAME_LEN {
        return Err(TxError::TooShort { len: at as u64 });
    }
    let header = NetHeader::from_bytes(&hb);
    let frame_len = at - NET_HDR_LEN;
    header.validate_tx(features, frame_len)?;
    Ok(TxPacket { header, frame_len })
}

/// The writable buffers `descs` as guest memory slices, after `skip`
/// bytes, appended to `out`. `None` if guest memory refuses one (the
/// queue validated it, so memory changed under us).
pub(super) fn scatter_slices<'m, M: GuestMemory + ?Sized>(
    mem: &'m M,
    descs: &[Descriptor],
    skip: usize,
    out: &mut Vec<GuestSlice<'m, M>>,
) -> Option<()> {
    let mut skip = skip;
    let mut cache = SliceCache::new();
    for d in descs {
        let len = d.len() as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        push_range(mem, &mut cache, d, skip, Permissions::Write, out).ok()?;
        skip = 0;
    }
    Some(())
}

/// Marks the first `n` bytes of `slices` dirty (what a backend wrote).
pub(super) fn mark_dirty<B: BitmapSlice>(slices: &[VolatileSlice<'_, B>], mut n: usize) {
    for s in slices {
        if n == 0 {
            break;
        }
        let k = n.min(s.len());
        s.bitmap().mark_dirty(0, k);
        n -= k;
    }
}

/// Copies `slices` one after the other into `dst` (as far as it goes).
pub(super) fn copy_out<B: BitmapSlice>(slices: &[VolatileSlice<'_, B>], dst: &mut [u8]) {
    let mut at = 0usize;
    for s in slices {
        at += s.copy_to(dst.get_mut(at..).unwrap_or(&mut []));
    }
}
