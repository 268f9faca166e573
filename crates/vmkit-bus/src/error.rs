//! Errors of device registration.

use crate::{Space, Span};

/// Why a device could not be registered or deregistered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// A range of size 0 holds no address.
    #[error("cannot register an empty {space} range at {base:#x}")]
    EmptyRange {
        /// The address space.
        space: Space,
        /// The base address given.
        base: u64,
    },
    /// The range would run past the last address of its space (`0xffff` for ports,
    /// `u64::MAX` for MMIO).
    #[error("{space} range at {base:#x} of size {size:#x} runs past the end of the {space} space")]
    RangeWraps {
        /// The address space.
        space: Space,
        /// The base address given.
        base: u64,
        /// The size given.
        size: u64,
    },
    /// The range overlaps one registered before.
    #[error("{space} range {new} overlaps the registered {space} range {existing}")]
    Overlap {
        /// The address space.
        space: Space,
        /// The range that was refused.
        new: Span,
        /// The registered range it overlaps.
        existing: Span,
    },
    /// No device is registered with that base address.
    #[error("no {space} device is registered at base {base:#x}")]
    NotRegistered {
        /// The address space.
        space: Space,
        /// The base address given.
        base: u64,
    },
}
