//! libxenguest's domain builder (`xc_dom_*`) over a PV domain vmkit created: it parses the
//! kernel's ELF and its Xen notes, allocates the domain's memory, loads the kernel and the
//! initramfs, builds the start-of-day page tables, `start_info` and the p2m list, and sets
//! vCPU 0's context. What vmkit needs back are the machine frames of the console and
//! xenstore pages the builder allocated.

use std::ffi::CString;
use std::io;
use std::ptr::{self, NonNull};

use super::super::libs::{Xc, XenCallError};
use super::super::sys::abi_pv::{DomImage, XC_DOM_PV_CONTAINER};
use super::super::sys::ffi_pv as ffi;

/// What the build left for vmkit to serve.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Built {
    /// Machine frame of the console ring page.
    pub(crate) console_mfn: u64,
    /// Machine frame of the xenstore ring page.
    pub(crate) store_mfn: u64,
}

/// The inputs of one build. The images are borrowed: the builder keeps pointers to them
/// (`xc_dom_kernel_mem` does not copy) until it is released, which happens before
/// [`build`] returns.
pub(crate) struct Inputs<'a> {
    pub(crate) domid: u32,
    pub(crate) kernel: &'a [u8],
    pub(crate) initrd: Option<&'a [u8]>,
    pub(crate) cmdline: &'a CString,
    pub(crate) mem_mib: u32,
    pub(crate) vcpus: u32,
    pub(crate) console_port: u32,
    pub(crate) store_port: u32,
}

/// The builder's image, released on drop.
struct Image(NonNull<DomImage>);

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: from xc_dom_allocate, released once.
        unsafe { ffi::xc_dom_release(self.0.as_ptr()) };
    }
}

fn step(op: &'static str, rc: libc::c_int) -> Result<(), XenCallError> {
    if rc == 0 {
        return Ok(());
    }
    // The builder reports through its logger and does not always set errno.
    let errno = io::Error::last_os_error();
    let source = match errno.raw_os_error() {
        Some(0) | None => {
            io::Error::other("the domain builder refused (VMKIT_XEN_DEBUG=1 shows why)")
        }
        Some(_) => errno,
    };
    Err(XenCallError { op, source })
}

/// Builds the domain (created, paused, with its maximum memory set) from `inputs`.
pub(crate) fn build(xc: &Xc, inputs: &Inputs<'_>) -> Result<Built, XenCallError> {
    // SAFETY: a live handle, a NUL-terminated command line (the builder copies it) and
    // no feature string.
    let raw = unsafe { ffi::xc_dom_allocate(xc.xch(), inputs.cmdline.as_ptr(), ptr::null()) };
    let image = Image(NonNull::new(raw).ok_or_else(|| XenCallError {
        op: "xc_dom_allocate",
        source: io::Error::last_os_error(),
    })?);
    let dom = image.0.as_ptr();
    {
        // SAFETY: `dom` is the builder's live image, not used elsewhere while this
        // reference lives; these are plain fields it reads later.
        let image = unsafe { &mut *dom };
        image.container_type = XC_DOM_PV_CONTAINER;
        image.flags = 0;
        image.console_evtchn = inputs.console_port;
        image.xenstore_evtchn = inputs.store_port;
        // dom0 serves both (vmkit the console, xenstored the store): the grant table's
        // reserved entries name it.
        image.console_domid = 0;
        image.xenstore_domid = 0;
        image.max_vcpus = inputs.vcpus;
    }
    // SAFETY: `kernel` outlives `image` (borrowed for the whole function).
    step("xc_dom_kernel_mem", unsafe {
        ffi::xc_dom_kernel_mem(dom, inputs.kernel.as_ptr().cast(), inputs.kernel.len())
    })?;
    if let Some(initrd) = inputs.initrd {
        // SAFETY: as above; no module command line.
        step("xc_dom_module_mem", unsafe {
            ffi::xc_dom_module_mem(dom, initrd.as_ptr().cast(), initrd.len(), ptr::null())
        })?;
    }
    // Each step on the live image and handle, in the order the builder needs.
    // SAFETY: (each step) `dom` is the live image, `xc` a live handle.
    step("xc_dom_boot_xen_init", unsafe {
        ffi::xc_dom_boot_xen_init(dom, xc.xch(), inputs.domid)
    })?;
    // SAFETY: as above.
    step("xc_dom_parse_image", unsafe {
        ffi::xc_dom_parse_image(dom)
    })?;
    // SAFETY: as above.
    step("xc_dom_mem_init", unsafe {
        ffi::xc_dom_mem_init(dom, inputs.mem_mib)
    })?;
    // SAFETY: as above.
    step("xc_dom_boot_mem_init", unsafe {
        ffi::xc_dom_boot_mem_init(dom)
    })?;
    // SAFETY: as above.
    step("xc_dom_build_image", unsafe {
        ffi::xc_dom_build_image(dom)
    })?;
    // SAFETY: as above.
    step("xc_dom_boot_image", unsafe { ffi::xc_dom_boot_image(dom) })?;
    // SAFETY: as above.
    step("xc_dom_gnttab_init", unsafe {
        ffi::xc_dom_gnttab_init(dom)
    })?;
    // SAFETY: the built image, alive until `image` drops; only read.
    let built = unsafe { &*dom };
    let (console_pfn, store_pfn, p2m, p2m_size) = (
        built.console_pfn,
        built.xenstore_pfn,
        built.pv_p2m,
        built.p2m_size,
    );
    let mfn = |pfn: u64| -> Result<u64, XenCallError> {
        if p2m.is_null() || pfn >= p2m_size {
            return Err(XenCallError {
                op: "xc_dom_p2m",
                source: io::Error::other(format!(
                    "frame {pfn:#x} is outside the guest's p2m list of {p2m_size} frames"
                )),
            });
        }
        let entry = p2m.wrapping_add(pfn as usize);
        // SAFETY: `pfn` < `p2m_size`, the list's length; the image is still alive.
        Ok(unsafe { *entry })
    };
    Ok(Built {
        console_mfn: mfn(console_pfn)?,
        store_mfn: mfn(store_pfn)?,
    })
}
