//! KVM dirty-page tracking: bitmaps (with manual clearing where the host has it) and the
//! per-vCPU dirty rings (`KVM_CAP_DIRTY_LOG_RING`), which kvm-ioctls does not wrap.
//!
//! Ring protocol (Documentation/virt/kvm/api.rst): KVM appends `kvm_dirty_gfn` entries with
//! the DIRTY flag to each vCPU's ring; the VMM reads entries in order while DIRTY is set
//! (load-acquire), records each and marks it RESET (store-release), then calls
//! `KVM_RESET_DIRTY_RINGS`, which write-protects the recorded pages again and frees the entries.
//! Until that reset, writes to a harvested page are not logged again, so callers copy page
//! contents only after [`crate::Vm::harvest_dirty_log`] returned, which resets before returning.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_dirty_gfn, kvm_enable_cap, KVMIO, KVM_CAP_DIRTY_LOG_RING,
    KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
    KVM_DIRTY_LOG_PAGE_OFFSET,
};
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};
use vmm_sys_util::{ioctl_io_nr, ioctl_iowr_nr};

use crate::memory::PAGE_SIZE;

ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

/// Bytes of one ring entry.
pub(crate) const ENTRY_SIZE: u32 = std::mem::size_of::<kvm_dirty_gfn>() as u32;
/// The entry holds a page the VMM has not collected yet.
const GFN_DIRTY: u32 = 1 << 0;
/// The VMM collected the entry; KVM may reuse it after `KVM_RESET_DIRTY_RINGS`.
const GFN_RESET: u32 = 1 << 1;

/// How a KVM VM tracks dirty pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `KVM_GET_DIRTY_LOG` fetches and clears in one go.
    Bitmap,
    /// `KVM_GET_DIRTY_LOG` fetches, `KVM_CLEAR_DIRTY_LOG` re-protects exactly what was fetched.
    BitmapManualClear,
    /// Per-vCPU rings.
    Ring { entries: u32 },
}

pub(crate) fn enable_ring(fd: &VmFd, entries: u32) -> errno::Result<()> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_DIRTY_LOG_RING,
        ..Default::default()
    };
    cap.args[0] = u64::from(entries) * u64::from(ENTRY_SIZE);
    fd.enable_cap(&cap)
}

pub(crate) fn enable_manual_clear(fd: &VmFd) -> errno::Result<()> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
        ..Default::default()
    };
    // Without KVM_DIRTY_LOG_INITIALLY_SET: pages start clean and write-protected.
    cap.args[0] = u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
    fd.enable_cap(&cap)
}

/// Re-protects the pages set in `bitmap` (which covers the whole slot) after a
/// `KVM_GET_DIRTY_LOG` in manual-clear mode.
pub(crate) fn clear_dirty_log(
    fd: &VmFd,
    slot: u32,
    pages: u64,
    bitmap: &mut [u64],
) -> io::Result<()> {
    let num_pages = u32::try_from(pages).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "slot too large to clear at once",
        )
    })?;
    let mut clear = kvm_clear_dirty_log {
        slot,
        num_pages,
        first_page: 0,
        ..Default::default()
    };
    clear.__bindgen_anon_1.dirty_bitmap = bitmap.as_mut_ptr().cast();
    // SAFETY: `clear` describes `num_pages` bits starting at page 0, and `bitmap` holds one
    // bit per page of the slot (it came from KVM_GET_DIRTY_LOG for the same slot), so the
    // kernel reads only inside it. The fd is a VM fd; the return value is checked.
    let ret = unsafe { ioctl_with_ref(fd, KVM_CLEAR_DIRTY_LOG(), &clear) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets KVM reuse the ring entries marked RESET and write-protect their pages again.
pub(crate) fn reset_rings(fd: &VmFd) -> io::Result<()> {
    // SAFETY: KVM_RESET_DIRTY_RINGS takes no argument; the fd is a VM fd.
    let ret = unsafe { ioctl(fd, KVM_RESET_DIRTY_RINGS()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One vCPU's dirty ring, mapped from its fd.
#[derive(Debug)]
pub(crate) struct DirtyRing {
    entries: NonNull<kvm_dirty_gfn>,
    /// Entries in the ring: a power of two (KVM refuses other sizes), so `index & (len - 1)`
    /// wraps an index without a division per entry.
    len: u32,
    /// Index (modulo `len`) of the next entry to collect.
    next: AtomicU32,
}

// SAFETY: the ring is shared memory that both KVM and vmkit access only through atomic loads
// and stores of the flags word (and plain reads of an entry after its DIRTY flag was observed
// with acquire ordering); `next` is atomic. Moving or sharing the handle between threads is
// therefore sound.
unsafe impl Send for DirtyRing {}
// SAFETY: see `Send`.
unsafe impl Sync for DirtyRing {}

impl DirtyRing {
    /// Maps the dirty ring of `vcpu`, which has `len` entries.
    pub(crate) fn map(vcpu: &VcpuFd, len: u32) -> io::Result<Self> {
        if !len.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("dirty ring of {len} entries: not a power of two"),
            ));
        }
        let bytes = len as usize * ENTRY_SIZE as usize;
        let offset = KVM_DIRTY_LOG_PAGE_OFFSET as libc::off_t * PAGE_SIZE as libc::off_t;
        // SAFETY: a fresh shared mapping of the vCPU fd at the offset KVM documents for the
        // dirty ring, of the size the ring was enabled with; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let entries = NonNull::new(addr.cast()).ok_or_else(io::Error::last_os_error)?;
        Ok(DirtyRing {
            entries,
            len,
            next: AtomicU32::new(0),
        })
    }

    /// Number of entries in the ring.
    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// Collects every entry KVM has published, calling `record(slot, page offset)` for each,
    /// and marks them for reset. Returns how many were collected.
    pub(crate) fn harvest(&self, mut record: impl FnMut(u32, u64)) -> usize {
        let mut next = self.next.load(Ordering::Relaxed);
        let mut collected = 0;
        let wrap = self.len - 1;
        // At most one lap: KVM never publishes more than `len` entries before a reset.
        while collected < self.len as usize {
            // SAFETY: `len` is a power of two, so the masked index is below `len` and the entry
            // lies inside the mapping.
            let entry = unsafe { self.entries.as_ptr().add((next & wrap) as usize) };
            // SAFETY: `entry` points at an entry inside the live mapping (above).
            let flags_ptr = unsafe { std::ptr::addr_of_mut!((*entry).flags) };
            // SAFETY: `flags` is a properly aligned u32 inside the live mapping; KVM and vmkit
            // only access it atomically.
            let flags = unsafe { AtomicU32::from_ptr(flags_ptr) };
            if flags.load(Ordering::Acquire) & GFN_DIRTY == 0 {
                break;
            }
            // SAFETY: KVM wrote slot and offset before publishing DIRTY (observed above with
            // acquire ordering) and does not touch the entry again until it is reset.
            let entry = unsafe { entry.read() };
            let (slot, offset) = (entry.slot, entry.offset);
            record(slot, offset);
            flags.store(GFN_RESET, Ordering::Release);
            next = next.wrapping_add(1);
            collected += 1;
        }
        self.next.store(next, Ordering::Relaxed);
        collected
    }
}

impl Drop for DirtyRing {
    fn drop(&mut self) {
        let bytes = self.len as usize * ENTRY_SIZE as usize;
        // SAFETY: unmaps exactly the mapping created in `map`, which nothing uses any more.
        unsafe { libc::munmap(self.entries.as_ptr().cast(), bytes) };
    }
}
