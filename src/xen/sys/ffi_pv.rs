//! The functions behind PV Linux guests: libxenguest's domain builder (`xenguest.h`'s
//! `xc_dom_*`), the event channels and memory map a PV domain needs (`xenctrl.h`), mapping
//! its frames (`xenforeignmemory.h`) and libxenstore (`xenstore.h`). Kept apart from `ffi`
//! so that the feature's bindings stay together. Each returns -1, NULL or false on failure
//! (libxenstore with `errno` set; the builder's `errno` is not always meaningful: its own
//! messages go to the libxenctrl logger, which `VMKIT_XEN_DEBUG` turns on).

use libc::{c_char, c_int, c_uint, c_ulong, c_void};

use super::abi::XenPfn;
use super::abi_pv::{DomImage, XsPermissions};
use super::ffi::{ForeignmemoryHandle, XcInterface};

/// `struct xs_handle`: an open connection to xenstored.
#[repr(C)]
pub struct XsHandle {
    _opaque: [u8; 0],
}

#[link(name = "xenguest")]
extern "C" {
    pub fn xc_dom_allocate(
        xch: *mut XcInterface,
        cmdline: *const c_char,
        features: *const c_char,
    ) -> *mut DomImage;
    pub fn xc_dom_release(dom: *mut DomImage);
    pub fn xc_dom_kernel_mem(dom: *mut DomImage, mem: *const c_void, memsize: usize) -> c_int;
    pub fn xc_dom_module_mem(
        dom: *mut DomImage,
        mem: *const c_void,
        memsize: usize,
        cmdline: *const c_char,
    ) -> c_int;
    pub fn xc_dom_boot_xen_init(dom: *mut DomImage, xch: *mut XcInterface, domid: u32) -> c_int;
    pub fn xc_dom_parse_image(dom: *mut DomImage) -> c_int;
    pub fn xc_dom_mem_init(dom: *mut DomImage, mem_mb: c_uint) -> c_int;
    pub fn xc_dom_boot_mem_init(dom: *mut DomImage) -> c_int;
    pub fn xc_dom_build_image(dom: *mut DomImage) -> c_int;
    pub fn xc_dom_boot_image(dom: *mut DomImage) -> c_int;
    pub fn xc_dom_gnttab_init(dom: *mut DomImage) -> c_int;
}

#[link(name = "xenctrl")]
extern "C" {
    /// Returns the new port in `dom`, or -1.
    pub fn xc_evtchn_alloc_unbound(xch: *mut XcInterface, dom: u32, remote_dom: u32) -> c_int;
    pub fn xc_domain_set_memmap_limit(
        xch: *mut XcInterface,
        domid: u32,
        map_limitkb: c_ulong,
    ) -> c_int;
}

#[link(name = "xenforeignmemory")]
extern "C" {
    pub fn xenforeignmemory_map(
        fmem: *mut ForeignmemoryHandle,
        dom: u32,
        prot: c_int,
        pages: usize,
        arr: *const XenPfn,
        err: *mut c_int,
    ) -> *mut c_void;
    pub fn xenforeignmemory_unmap(
        fmem: *mut ForeignmemoryHandle,
        addr: *mut c_void,
        pages: usize,
    ) -> c_int;
}

#[link(name = "xenstore")]
extern "C" {
    pub fn xs_open(flags: c_ulong) -> *mut XsHandle;
    pub fn xs_close(xsh: *mut XsHandle);
    pub fn xs_write(
        h: *mut XsHandle,
        t: u32,
        path: *const c_char,
        data: *const c_void,
        len: c_uint,
    ) -> bool;
    pub fn xs_mkdir(h: *mut XsHandle, t: u32, path: *const c_char) -> bool;
    pub fn xs_rm(h: *mut XsHandle, t: u32, path: *const c_char) -> bool;
    pub fn xs_set_permissions(
        h: *mut XsHandle,
        t: u32,
        path: *const c_char,
        perms: *mut XsPermissions,
        num_perms: c_uint,
    ) -> bool;
    pub fn xs_transaction_start(h: *mut XsHandle) -> u32;
    pub fn xs_transaction_end(h: *mut XsHandle, t: u32, abort: bool) -> bool;
    pub fn xs_introduce_domain(
        h: *mut XsHandle,
        domid: c_uint,
        mfn: c_ulong,
        eventchn: c_uint,
    ) -> bool;
    pub fn xs_release_domain(h: *mut XsHandle, domid: c_uint) -> bool;
    pub fn xs_read(h: *mut XsHandle, t: u32, path: *const c_char, len: *mut c_uint) -> *mut c_void;
}
