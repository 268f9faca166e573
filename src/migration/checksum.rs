//! The frames' checksum, CRC-64/NVME (the snapshot format's), computed by whichever of two
//! implementations is faster on this CPU: vmkit-snapshot's (crc-fast, carry-less
//! multiplication) or a slicing-by-16 table (the `crc` crate).
//!
//! Carry-less multiplication is the fastest where the CPU has it in hardware, and among the
//! slowest where it is emulated (QEMU's TCG computes each `pclmulqdq` bit by bit), which made
//! the checksum the migration stream's bottleneck there. Both give the same value, so the
//! pick (timed once per process on 64 KiB) never changes what goes on the wire.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// CRC-64/NVME by table lookups, 16 bytes per step.
static TABLE: crc::Crc<u64, crc::Table<16>> =
    crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_NVME);

/// An implementation of the checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// vmkit-snapshot's (crc-fast: carry-less multiplication where the CPU has it).
    Clmul,
    /// Slicing-by-16 tables.
    Table,
}

impl Implementation {
    /// The checksum of `bytes`.
    pub fn checksum(self, bytes: &[u8]) -> u64 {
        match self {
            Implementation::Clmul => vmkit_snapshot::checksum(bytes),
            Implementation::Table => TABLE.checksum(bytes),
        }
    }

    /// The faster implementation on this CPU (timed on the first call).
    pub fn fastest() -> Implementation {
        static PICKED: OnceLock<Implementation> = OnceLock::new();
        *PICKED.get_or_init(|| {
            let sample: Vec<u8> = (0..64u32 << 10)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            let best = |imp: Implementation| {
                (0..3)
                    .map(|_| {
                        let started = Instant::now();
                        std::hint::black_box(imp.checksum(std::hint::black_box(&sample)));
                        started.elapsed()
                    })
                    .min()
                    .unwrap_or(Duration::MAX)
            };
            match best(Implementation::Table) < best(Implementation::Clmul) {
                true => Implementation::Table,
                false => Implementation::Clmul,
            }
        })
    }
}

/// The checksum of `bytes`, by the [fastest](Implementation::fastest) implementation.
pub fn checksum(bytes: &[u8]) -> u64 {
    Implementation::fastest().checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_implementations_give_the_snapshot_checksum() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for len in [0, 1, 15, 16, 17, 127, 128, 129, 4096, 10_000] {
            let expected = vmkit_snapshot::checksum(&bytes[..len]);
            assert_eq!(
                Implementation::Table.checksum(&bytes[..len]),
                expected,
                "{len}"
            );
            assert_eq!(
                Implementation::Clmul.checksum(&bytes[..len]),
                expected,
                "{len}"
            );
            assert_eq!(checksum(&bytes[..len]), expected, "{len}");
        }
    }
}
