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
