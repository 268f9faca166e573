//! Dirty rings on Xen, emulated from log-dirty mode ([`super::memtype`]).
//!
//! Xen has no per-vCPU dirty rings: its log-dirty mode keeps one bitmap for the whole
//! domain. vmkit accepts [`VmConfig::dirty_ring`](crate::VmConfig::dirty_ring) anyway, checks
//! the size as KVM does, reports [`DirtyLogMode::Ring`](crate::DirtyLogMode::Ring) and
//! harvests the same way as in bitmap mode, so a VMM written for rings runs unchanged and
//! keeps their guarantee: every page the guest wrote since the last harvest is reported once.
//!
//! What differs (`Capabilities::dirty_ring_emulated` says so):
//! - The ring never fills. A KVM vCPU whose ring is about to fill stops with
//!   [`VcpuExit::DirtyRingFull`](crate::VcpuExit::DirtyRingFull); Xen cannot stop a vCPU
//!   after a number of written pages, but its bitmap has no limit, so pages beyond the
//!   ring's size stay in it for the next harvest. No vCPU stops, nothing is dropped and
//!   [`DirtyLog::overflowed`](crate::DirtyLog::overflowed) stays false; a VMM that relies on
//!   the exit to slow down a guest that writes fast gets no such pause. The one way Xen can
//!   miss a page is failing to allocate memory for its bitmap (`paging_mark_pfn_dirty`
//!   counts `failed_allocs`); it then fails every clean with `ENOMEM` until log-dirty mode
//!   is turned off (`paging_log_dirty_op`), so the harvest returns that error, never a
//!   shorter log.
//! - A harvest's cost grows with the guest's memory (Xen's bitmap up to the last logging
//!   region's end), as a bitmap harvest's does, not only with the pages written.
//! - There are no per-vCPU entries in the order written; no backend's API exposes them.

/// The largest ring accepted: KVM's own limit (`KVM_DIRTY_RING_MAX_ENTRIES`), so that a VM
/// configured on Xen also fits a KVM host. Nothing on Xen depends on the size.
pub(crate) const MAX_ENTRIES: u32 = 65536;

/// The smallest ring accepted: one page of KVM's 16-byte entries, the least KVM takes.
pub(crate) const MIN_ENTRIES: u32 = 256;

/// Checks a ring size as KVM does: a power of two, from [`MIN_ENTRIES`] to [`MAX_ENTRIES`].
pub(crate) fn check(entries: u32) -> Result<(), &'static str> {
    if entries.is_power_of_two() && (MIN_ENTRIES..=MAX_ENTRIES).contains(&entries) {
        Ok(())
    } else {
        Err(
            "dirty ring entries must be a power of two, at least 256 and at most \
             Capabilities::dirty_ring_max_entries",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_powers_of_two_within_kvm_limits() {
        for good in [MIN_ENTRIES, 4096, MAX_ENTRIES] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for bad in [0, 1, 128, 1000, 4095, MAX_ENTRIES * 2, u32::MAX] {
            let err = check(bad).unwrap_err();
            assert!(err.contains("power of two"), "{bad}: {err}");
        }
    }
}
