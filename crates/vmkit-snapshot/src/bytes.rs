//! Little-endian field access and short-read-tolerant reads, shared by the
//! state-file and memory-file code. Nothing here indexes out of bounds: every
//! access goes through `get` and falls back to a value the caller has already
//! ruled out by a length check.

use std::io::{self, Read};

/// Copies `N` bytes at `off` out of `b`; zeros if the range is outside `b`.
/// Callers only use it on buffers whose length they checked first.
pub(crate) fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = off.checked_add(N).and_then(|end| b.get(off..end)) {
        out.copy_from_slice(src);
    }
    out
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(arr(b, off))
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(arr(b, off))
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(arr(b, off))
}

/// Writes `src` at `off` in `b` if it fits (callers size `b` beforehand).
pub(crate) fn put(b: &mut [u8], off: usize, src: &[u8]) {
    if let Some(dst) = off
        .checked_add(src.len())
        .and_then(|end| b.get_mut(off..end))
    {
        dst.copy_from_slice(src);
    }
}

/// Reads until `buf` is full or the source reaches end of file; returns how
/// many bytes were read (less than `buf.len()` only at end of file).
pub(crate) fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads exactly `len` bytes into a new vector whose size follows the bytes
/// actually received, not `len`: a source that claims much but holds little
/// never causes a large allocation. Returns the (possibly short) vector.
pub(crate) fn read_up_to<R: Read + ?Sized>(r: &mut R, len: u64) -> io::Result<Vec<u8>> {
    const INITIAL: u64 = 64 * 1024;
    let mut buf = Vec::with_capacity(usize::try_from(len.min(INITIAL)).unwrap_or(0));
    r.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arr_out_of_range_is_zero() {
        assert_eq!(arr::<4>(&[1, 2], 0), [0; 4]);
        assert_eq!(arr::<2>(&[1, 2, 3], 1), [2, 3]);
        assert_eq!(arr::<2>(&[1, 2, 3], usize::MAX), [0; 2]);
    }

    #[test]
    fn read_up_to_short_source() {
        let data = [7u8; 10];
        let got = read_up_to(&mut &data[..], 1 << 40).unwrap();
        assert_eq!(got.len(), 10);
    }
}
