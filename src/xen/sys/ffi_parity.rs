//! The functions of Xen 4.17's C libraries behind the features that bring the Xen backend
//! towards KVM's: memory types and PCI functions claimed by an ioreq server
//! (`xendevicemodel.h`), and Xen's log-dirty mode (`xenctrl.h`). Kept apart
//! from `ffi` so that each feature's bindings stay next to one another. Every function
//! returns -1 and sets `errno` on failure.

use libc::{c_int, c_longlong, c_uint, c_ulong, c_void};

use super::abi::{DomId, HypercallBuffer, IoServId, ShadowOpStats};
use super::ffi::{DevicemodelHandle, XcInterface};

/// `HVMMEM_ram_rw`: ordinary guest RAM.
pub const HVMMEM_RAM_RW: c_uint = 0;
/// `HVMMEM_ioreq_server`: RAM whose accesses of the claimed kinds go to the ioreq server
/// that claimed the type.
pub const HVMMEM_IOREQ_SERVER: c_uint = 4;
/// `XEN_DMOP_IOREQ_MEM_ACCESS_WRITE`: forward writes (reads still come from RAM).
pub const XEN_DMOP_IOREQ_MEM_ACCESS_WRITE: u32 = 1 << 1;

#[link(name = "xendevicemodel")]
extern "C" {
    pub fn xendevicemodel_map_mem_type_to_ioreq_server(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        id: IoServId,
        kind: u16,
        flags: u32,
    ) -> c_int;
    pub fn xendevicemodel_map_pcidev_to_ioreq_server(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        id: IoServId,
        segment: u16,
        bus: u8,
        device: u8,
        function: u8,
    ) -> c_int;
    pub fn xendevicemodel_unmap_pcidev_from_ioreq_server(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        id: IoServId,
        segment: u16,
        bus: u8,
        device: u8,
        function: u8,
    ) -> c_int;
    pub fn xendevicemodel_set_mem_type(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        mem_type: c_uint,
        first_pfn: u64,
        nr: u32,
    ) -> c_int;
}

#[link(name = "xenctrl")]
extern "C" {
    pub fn xc_shadow_control(
        xch: *mut XcInterface,
        domid: u32,
        sop: c_uint,
        mb: *mut c_uint,
        mode: c_uint,
    ) -> c_int;
    /// Returns the number of pages the bitmap covers (at most `pages`), or -1.
    pub fn xc_logdirty_control(
        xch: *mut XcInterface,
        domid: u32,
        sop: c_uint,
        dirty_bitmap: *mut HypercallBuffer,
        pages: c_ulong,
        mode: c_uint,
        stats: *mut ShadowOpStats,
    ) -> c_longlong;
    pub fn xc__hypercall_buffer_alloc_pages(
        xch: *mut XcInterface,
        b: *mut HypercallBuffer,
        nr_pages: c_int,
    ) -> *mut c_void;
    pub fn xc__hypercall_buffer_free_pages(
        xch: *mut XcInterface,
        b: *mut HypercallBuffer,
        nr_pages: c_int,
    );
}
