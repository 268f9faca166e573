//! The arithmetic of a PV console ring (`xen/io/console.h`): free-running 32-bit producer
//! and consumer indices, masked into a power-of-two byte array. The guest writes the
//! producer of the output ring and the consumer of the input ring, so both are hostile:
//! a span is only ever computed from indices checked against the ring's size.

/// The guest's indices of one ring claim more bytes than the ring holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the PV console's {ring} ring has producer {prod:#x} and consumer {cons:#x}: \
     {} bytes in a ring of {size}",
    prod.wrapping_sub(*cons)
)]
pub struct RingError {
    /// `"output"` or `"input"`.
    pub ring: &'static str,
    /// The producer index read.
    pub prod: u32,
    /// The consumer index read.
    pub cons: u32,
    /// The ring's size in bytes.
    pub size: u32,
}

/// One ring: its size (a power of two) and name for errors.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ring {
    pub(crate) size: u32,
    pub(crate) name: &'static str,
}

/// A run of ring bytes: `len` bytes from offset `start` of the ring (never past its end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) len: usize,
}

impl Ring {
    /// How many bytes lie between `cons` and `prod`, checked against the size.
    pub(crate) fn used(&self, cons: u32, prod: u32) -> Result<u32, RingError> {
        let used = prod.wrapping_sub(cons);
        if used > self.size {
            return Err(RingError {
                ring: self.name,
                prod,
                cons,
                size: self.size,
            });
        }
        Ok(used)
    }

    /// The offset of index `idx` in the ring.
    fn offset(&self, idx: u32) -> usize {
        (idx & (self.size - 1)) as usize
    }

    /// The spans (at most two: the ring wraps) of `count` bytes from index `from`, `count`
    /// being at most the size.
    pub(crate) fn spans(&self, from: u32, count: u32) -> [Span; 2] {
        let count = count.min(self.size) as usize;
        let start = self.offset(from);
        let first = count.min(self.size as usize - start);
        [
            Span { start, len: first },
            Span {
                start: 0,
                len: count - first,
            },
        ]
    }

    /// The spans of the bytes to read (at most `max`) from a ring with these indices.
    pub(crate) fn readable(
        &self,
        cons: u32,
        prod: u32,
        max: usize,
    ) -> Result<[Span; 2], RingError> {
        let used = self.used(cons, prod)?;
        let count = used.min(u32::try_from(max).unwrap_or(u32::MAX));
        Ok(self.spans(cons, count))
    }

    /// The spans that `max` bytes may be written to (fewer if the ring is fuller).
    pub(crate) fn writable(
        &self,
        cons: u32,
        prod: u32,
        max: usize,
    ) -> Result<[Span; 2], RingError> {
        let free = self.size - self.used(cons, prod)?;
        let count = free.min(u32::try_from(max).unwrap_or(u32::MAX));
        Ok(self.spans(prod, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: Ring = Ring {
        size: 2048,
        name: "output",
    };

    fn total(spans: [Span; 2]) -> usize {
        spans.iter().map(|s| s.len).sum()
    }

    #[test]
    fn indices_that_claim_more_than_the_ring_are_refused() {
        let err = OUT.readable(0, 2049, 4096).unwrap_err();
        assert_eq!((err.prod, err.cons, err.size), (2049, 0, 2048));
        // A producer behind the consumer is a huge distance, not a negative one.
        assert!(OUT.readable(10, 9, 4096).is_err());
        assert!(OUT.writable(10, 9, 4096).is_err());
        assert!(
            err.to_string().contains("2049 bytes in a ring of 2048"),
            "{err}"
        );
    }

    #[test]
    fn a_wrapped_run_is_split_at_the_ring_end() {
        let spans = OUT.readable(2040, 2050, 100).unwrap();
        assert_eq!(
            spans[0],
            Span {
                start: 2040,
                len: 8
            }
        );
        assert_eq!(spans[1], Span { start: 0, len: 2 });
    }

    #[test]
    fn indices_wrap_around_u32() {
        let spans = OUT.readable(u32::MAX - 1, 3, 100).unwrap();
        assert_eq!(total(spans), 5);
        assert_eq!(spans[0].start, 2046);
    }

    #[test]
    fn reads_and_writes_are_bounded_by_the_caller_and_the_ring() {
        assert_eq!(total(OUT.readable(0, 100, 10).unwrap()), 10);
        assert_eq!(total(OUT.readable(5, 5, 10).unwrap()), 0);
        assert_eq!(total(OUT.writable(0, 2000, 100).unwrap()), 48);
        assert_eq!(total(OUT.writable(0, 2048, 100).unwrap()), 0);
    }

    #[test]
    fn every_span_stays_inside_the_ring() {
        // Every consumer offset against every fill level, and a sample of hostile pairs.
        for cons in (0..4096u32).chain([u32::MAX - 5, u32::MAX]) {
            for used in [0, 1, 7, 1024, 2047, 2048] {
                let prod = cons.wrapping_add(used);
                for spans in [
                    OUT.readable(cons, prod, usize::MAX).unwrap(),
                    OUT.writable(cons, prod, usize::MAX).unwrap(),
                ] {
                    for s in spans {
                        assert!(s.start + s.len <= 2048, "{cons} {prod} {s:?}");
                    }
                }
                assert_eq!(
                    total(OUT.readable(cons, prod, usize::MAX).unwrap()),
                    used as usize
                );
            }
            assert!(OUT.readable(cons, cons.wrapping_add(2049), 1).is_err());
        }
    }
}
