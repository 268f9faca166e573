//! The structures of Xen 4.17's PV domain builder (`xenguest.h`'s `struct xc_dom_image`),
//! of libxenstore (`xenstore_lib.h`) and of the PV console ring (`xen/io/console.h`), for
//! x86-64. `layout_tests` checks each against the installed headers.

#![allow(dead_code)] // Mirrors of C structures: every field is there for the layout.

use libc::{c_char, c_int, c_uint, c_ulong, c_void};

use super::ffi::XcInterface;

/// `struct xc_dom_seg`: a range of the guest's virtual and physical space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DomSeg {
    pub vstart: u64,
    pub vend: u64,
    pub pfn: u64,
    pub pages: u64,
}

/// `struct xc_dom_module`: a module (the initramfs) handed to the builder.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DomModule {
    pub blob: *mut c_void,
    pub size: usize,
    pub cmdline: *mut c_void,
    pub seg: DomSeg,
}

/// `struct xc_hvm_firmware_module`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FirmwareModule {
    pub data: *mut u8,
    pub length: u32,
    pub guest_addr_out: u64,
}

/// `XG_MAX_MODULES`.
pub const XG_MAX_MODULES: usize = 2;
/// `XENFEAT_NR_SUBMAPS`.
pub const XENFEAT_NR_SUBMAPS: usize = 1;
/// `XC_DOM_PV_CONTAINER` (`container_type`).
pub const XC_DOM_PV_CONTAINER: c_uint = 0;

/// `struct xc_dom_image`: the domain builder's state. Allocated and freed by libxenguest
/// (`xc_dom_allocate`, `xc_dom_release`); vmkit only sets the event channels before the
/// build and reads the special pages' frames after it.
#[repr(C)]
#[derive(Debug)]
pub struct DomImage {
    pub kernel_blob: *mut c_void,
    pub kernel_size: usize,
    pub num_modules: c_uint,
    pub modules: [DomModule; XG_MAX_MODULES],
    pub devicetree_blob: *mut c_void,
    pub devicetree_size: usize,
    pub max_kernel_size: usize,
    pub max_module_size: usize,
    pub max_devicetree_size: usize,
    pub cmdline: *mut c_char,
    pub cmdline_size: usize,
    pub f_requested: [u32; XENFEAT_NR_SUBMAPS],
    pub parms: *mut c_void,
    pub guest_type: *const c_char,
    pub kernel_seg: DomSeg,
    pub p2m_seg: DomSeg,
    pub pgtables_seg: DomSeg,
    pub devicetree_seg: DomSeg,
    pub start_info_seg: DomSeg,
    pub start_info_pfn: u64,
    pub console_pfn: u64,
    pub xenstore_pfn: u64,
    pub shared_info_pfn: u64,
    pub bootstack_pfn: u64,
    pub pfn_alloc_end: u64,
    pub virt_alloc_end: u64,
    pub bsd_symtab_start: u64,
    pub initrd_start: u64,
    pub initrd_len: u64,
    pub alloc_bootstack: c_uint,
    pub virt_pgtab_end: u64,
    pub f_active: [u32; XENFEAT_NR_SUBMAPS],
    pub pv_p2m: *mut u64,
    pub p2m_size: u64,
    pub rambase_pfn: u64,
    pub total_pages: u64,
    pub phys_pages: *mut c_void,
    pub memblocks: *mut c_void,
    pub alloc_malloc: usize,
    pub alloc_mem_map: usize,
    pub alloc_file_map: usize,
    pub alloc_dom_u_map: usize,
    pub flags: c_ulong,
    pub console_evtchn: c_uint,
    pub xenstore_evtchn: c_uint,
    pub console_domid: u32,
    pub xenstore_domid: u32,
    pub shared_info_mfn: u64,
    pub xch: *mut XcInterface,
    pub guest_domid: u32,
    pub claim_enabled: c_int,
    pub xen_version: c_int,
    pub xen_caps: [c_char; 1024],
    pub kernel_loader: *mut c_void,
    pub private_loader: *mut c_void,
    pub vmemranges: *mut c_void,
    pub nr_vmemranges: c_uint,
    pub vnode_to_pnode: *mut c_uint,
    pub nr_vnodes: c_uint,
    pub arch_private: *mut c_void,
    pub arch_hooks: *mut c_void,
    pub allocate: Option<unsafe extern "C" fn(*mut DomImage) -> c_int>,
    pub container_type: c_uint,
    pub target_pages: u64,
    pub mmio_start: u64,
    pub mmio_size: u64,
    pub lowmem_end: u64,
    pub highmem_end: u64,
    pub vga_hole_size: u64,
    pub device_model: bool,
    pub system_firmware_module: FirmwareModule,
    pub acpi_modules: [FirmwareModule; 4],
    pub smbios_module: FirmwareModule,
    pub e820: *mut c_void,
    pub e820_entries: c_uint,
    pub vuart_gfn: u64,
    pub max_vcpus: c_uint,
}

/// `struct xs_permissions`: one entry of a xenstore node's access list (the first names
/// the owner and what everyone else may do).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XsPermissions {
    pub id: c_uint,
    pub perms: c_uint,
}

/// `XS_PERM_NONE`.
pub const XS_PERM_NONE: c_uint = 0;
/// `XS_PERM_READ`.
pub const XS_PERM_READ: c_uint = 1;
/// `XS_PERM_WRITE`.
pub const XS_PERM_WRITE: c_uint = 2;
/// `XBT_NULL`: no transaction.
pub const XBT_NULL: u32 = 0;

/// `sizeof(((struct xencons_interface *)0)->in)`.
pub const XENCONS_IN_SIZE: u32 = 1024;
/// `sizeof(((struct xencons_interface *)0)->out)`.
pub const XENCONS_OUT_SIZE: u32 = 2048;
/// `offsetof(struct xencons_interface, in)`.
pub const XENCONS_IN_OFFSET: usize = 0;
/// `offsetof(struct xencons_interface, out)`.
pub const XENCONS_OUT_OFFSET: usize = 1024;
/// `offsetof(struct xencons_interface, in_cons)`.
pub const XENCONS_IN_CONS: usize = 3072;
/// `offsetof(struct xencons_interface, in_prod)`.
pub const XENCONS_IN_PROD: usize = 3076;
/// `offsetof(struct xencons_interface, out_cons)`.
pub const XENCONS_OUT_CONS: usize = 3080;
/// `offsetof(struct xencons_interface, out_prod)`.
pub const XENCONS_OUT_PROD: usize = 3084;
