//! Xen's log-dirty mode for one domain (`XEN_DOMCTL_shadow_op`): while it is on, Xen
//! write-protects every ordinary RAM page of the domain (`p2m_ram_logdirty`, executable on
//! EPT and NPT alike), and the first guest write to a page marks it in Xen's bitmap and
//! makes the page writable until the next clean. [`super::memtype`] decides when it is on
//! and which of its bits are reported.

use std::io;

use super::libs::{Xc, XenCallError};
use super::sys::abi::{
    HypercallBuffer, ShadowOpStats, XEN_DOMCTL_SHADOW_OP_CLEAN,
    XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, XEN_DOMCTL_SHADOW_OP_OFF,
};
use super::sys::ffi_parity as ffi;

const PAGE_SIZE: u64 = 4096;

/// Turns log-dirty mode on, every page clean. Xen refuses (`EBUSY`) while any page of the
/// domain has the ioreq server's memory type.
pub(crate) fn enable(xc: &Xc, domid: u32) -> Result<(), XenCallError> {
    shadow_op(
        xc,
        domid,
        XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY,
        "xc_shadow_control (XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY)",
    )
}

/// Turns log-dirty mode off: the domain's RAM is writable at full speed again.
pub(crate) fn disable(xc: &Xc, domid: u32) -> Result<(), XenCallError> {
    shadow_op(
        xc,
        domid,
        XEN_DOMCTL_SHADOW_OP_OFF,
        "xc_shadow_control (XEN_DOMCTL_SHADOW_OP_OFF)",
    )
}

fn shadow_op(xc: &Xc, domid: u32, op: u32, name: &'static str) -> Result<(), XenCallError> {
    // SAFETY: plain values on a live handle; no allocation size is passed (`mb` NULL).
    let rc = unsafe { ffi::xc_shadow_control(xc.xch(), domid, op, std::ptr::null_mut(), 0) };
    if rc < 0 {
        return Err(XenCallError {
            op: name,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The pages written since the previous clean among frames `0..frames`, one bit per frame
/// (frame `n` is bit `n % 8` of byte `n / 8`), and Xen's bitmap cleared for them. Frames
/// past the domain's last one are never set.
pub(crate) fn clean(xc: &Xc, domid: u32, frames: u64) -> Result<Vec<u8>, XenCallError> {
    const OP: &str = "xc_logdirty_control (XEN_DOMCTL_SHADOW_OP_CLEAN)";
    let bytes = frames.div_ceil(8);
    let too_big = || XenCallError {
        op: OP,
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a dirty bitmap of {frames} frames does not fit a hypercall buffer"),
        ),
    };
    let nr_pages = libc::c_int::try_from(bytes.div_ceil(PAGE_SIZE)).map_err(|_| too_big())?;
    let len = usize::try_from(bytes).map_err(|_| too_big())?;
    let pages = libc::c_ulong::try_from(frames).map_err(|_| too_big())?;
    if nr_pages == 0 {
        return Ok(Vec::new());
    }
    let mut buffer = Buffer::alloc(xc, nr_pages).ok_or_else(|| XenCallError {
        op: "xc_hypercall_buffer_alloc_pages (dirty bitmap)",
        source: io::Error::last_os_error(),
    })?;
    let mut stats = ShadowOpStats::default();
    // SAFETY: `buffer` is a live hypercall buffer of `nr_pages` pages, at least `pages`
    // bits; `stats` is writable.
    let covered = unsafe {
        ffi::xc_logdirty_control(
            xc.xch(),
            domid,
            XEN_DOMCTL_SHADOW_OP_CLEAN,
            buffer.raw(),
            pages,
            0,
            &mut stats,
        )
    };
    if covered < 0 {
        return Err(XenCallError {
            op: OP,
            source: io::Error::last_os_error(),
        });
    }
    // Xen says how many frames it wrote, never more than asked; anything else is refused
    // rather than read past what was asked.
    let covered = u64::try_from(covered)
        .ok()
        .filter(|&n| n <= frames)
        .ok_or_else(|| XenCallError {
            op: OP,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("Xen reported a bitmap of {covered} frames, asked for {frames}"),
            ),
        })?;
    let mut bitmap = buffer.bytes(len).to_vec();
    // Bits past what Xen wrote are stale buffer contents.
    let whole = (covered / 8) as usize;
    if let Some(partial) = bitmap.get_mut(whole) {
        *partial &= ((1u16 << (covered % 8)) - 1) as u8;
    }
    for byte in bitmap.iter_mut().skip(whole + 1) {
        *byte = 0;
    }
    Ok(bitmap)
}

/// A hypercall buffer of whole pages, freed on drop.
struct Buffer<'a> {
    xc: &'a Xc,
    // Boxed: libxenctrl may keep the descriptor's address while the buffer lives.
    desc: Box<HypercallBuffer>,
    nr_pages: libc::c_int,
}

impl<'a> Buffer<'a> {
    fn alloc(xc: &'a Xc, nr_pages: libc::c_int) -> Option<Self> {
        // DECLARE_HYPERCALL_BUFFER's initial value: no bounce buffer.
        let mut desc = Box::new(HypercallBuffer {
            hbuf: std::ptr::null_mut(),
            param_shadow: std::ptr::null_mut(),
            dir: 0,
            ubuf: usize::MAX as *mut libc::c_void,
            sz: 0,
        });
        // SAFETY: `desc` is a valid descriptor that outlives the buffer (freed in drop).
        let ptr = unsafe { ffi::xc__hypercall_buffer_alloc_pages(xc.xch(), &mut *desc, nr_pages) };
        if ptr.is_null() {
            return None;
        }
        Some(Buffer { xc, desc, nr_pages })
    }

    fn raw(&mut self) -> *mut HypercallBuffer {
        &mut *self.desc
    }

    /// The first `len` bytes (at most the buffer's size).
    fn bytes(&self, len: usize) -> &[u8] {
        let size = self.nr_pages as usize * PAGE_SIZE as usize;
        // SAFETY: `hbuf` points at `size` bytes that libxenctrl allocated and that live
        // until drop; Xen no longer writes them once the hypercall returned.
        unsafe { std::slice::from_raw_parts(self.desc.hbuf.cast::<u8>(), len.min(size)) }
    }
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        // SAFETY: allocated by xc__hypercall_buffer_alloc_pages with this descriptor and
        // page count; freed exactly once.
        unsafe {
            ffi::xc__hypercall_buffer_free_pages(self.xc.xch(), &mut *self.desc, self.nr_pages)
        };
    }
}
