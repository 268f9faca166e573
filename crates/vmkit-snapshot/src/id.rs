//! The identity of a snapshot: a random 128-bit value written into both of
//! its files, so that a state file and a memory file that were not saved
//! together, or a diff and a base it was not taken on, are told apart before
//! anything is restored.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};

/// A snapshot's identity. [`SnapshotId::random`] makes a fresh one for each
/// save; the all-zero value ([`SnapshotId::NONE`]) means "none" (a full
/// snapshot's base).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SnapshotId(pub [u8; 16]);

impl SnapshotId {
    /// No snapshot: the base of a full snapshot.
    pub const NONE: SnapshotId = SnapshotId([0; 16]);

    /// A fresh random identity, read from `/dev/urandom` (which never
    /// blocks once the kernel's pool is initialised, as it is long before a
    /// VMM runs).
    pub fn random() -> io::Result<SnapshotId> {
        let mut id = [0u8; 16];
        File::open("/dev/urandom")?.read_exact(&mut id)?;
        Ok(SnapshotId(id))
    }

    /// Whether this is [`SnapshotId::NONE`].
    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SnapshotId({self})")
    }
}
