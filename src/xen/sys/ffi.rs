//! The functions of Xen 4.17's C libraries that vmkit calls, as Debian's libxen-dev declares
//! them (`xenctrl.h`, `xenguest.h`, `xendevicemodel.h`, `xenforeignmemory.h`,
//! `xenevtchn.h`). Every function returns -1 (or NULL) and sets `errno` on failure.

#![allow(dead_code)] // The library's interface as declared, not all of it used yet.

use libc::{c_int, c_uint, c_ulong, c_void};

use super::abi::{
    CpuidLeaf, CreateDomain, DomId, DomainInfo, EvtchnPort, IoServId, Logger, MsrEntry, Physinfo,
    VcpuGuestContext, VcpuInfo, XenPfn,
};

/// `xc_interface`: an open libxenctrl handle.
#[repr(C)]
pub struct XcInterface {
    _opaque: [u8; 0],
}

/// `xc_cpu_policy_t`.
#[repr(C)]
pub struct XcCpuPolicy {
    _opaque: [u8; 0],
}

/// `xendevicemodel_handle`.
#[repr(C)]
pub struct DevicemodelHandle {
    _opaque: [u8; 0],
}

/// `xenforeignmemory_handle`.
#[repr(C)]
pub struct ForeignmemoryHandle {
    _opaque: [u8; 0],
}

/// `xenforeignmemory_resource_handle`.
#[repr(C)]
pub struct ResourceHandle {
    _opaque: [u8; 0],
}

/// `xenevtchn_handle`.
#[repr(C)]
pub struct EvtchnHandle {
    _opaque: [u8; 0],
}

#[link(name = "xenctrl")]
extern "C" {
    pub fn xc_interface_open(
        logger: *mut Logger,
        dombuild_logger: *mut Logger,
        open_flags: c_uint,
    ) -> *mut XcInterface;
    pub fn xc_interface_close(xch: *mut XcInterface) -> c_int;
    pub fn xc_physinfo(xch: *mut XcInterface, info: *mut Physinfo) -> c_int;
    pub fn xc_domain_create(
        xch: *mut XcInterface,
        domid: *mut u32,
        config: *mut CreateDomain,
    ) -> c_int;
    pub fn xc_domain_max_vcpus(xch: *mut XcInterface, domid: u32, max: c_uint) -> c_int;
    pub fn xc_domain_destroy(xch: *mut XcInterface, domid: u32) -> c_int;
    pub fn xc_domain_pause(xch: *mut XcInterface, domid: u32) -> c_int;
    pub fn xc_domain_unpause(xch: *mut XcInterface, domid: u32) -> c_int;
    pub fn xc_domain_getinfolist(
        xch: *mut XcInterface,
        first_domain: u32,
        max_domains: c_uint,
        info: *mut DomainInfo,
    ) -> c_int;
    pub fn xc_domain_setmaxmem(xch: *mut XcInterface, domid: u32, max_memkb: u64) -> c_int;
    pub fn xc_set_paging_mempool_size(xch: *mut XcInterface, domid: u32, size: u64) -> c_int;
    pub fn xc_domain_populate_physmap(
        xch: *mut XcInterface,
        domid: u32,
        nr_extents: c_ulong,
        extent_order: c_uint,
        mem_flags: c_uint,
        extent_start: *mut XenPfn,
    ) -> c_int;
    pub fn xc_domain_decrease_reservation_exact(
        xch: *mut XcInterface,
        domid: u32,
        nr_extents: c_ulong,
        extent_order: c_uint,
        extent_start: *mut XenPfn,
    ) -> c_int;
    pub fn xc_vcpu_getinfo(
        xch: *mut XcInterface,
        domid: u32,
        vcpu: u32,
        info: *mut VcpuInfo,
    ) -> c_int;
    pub fn xc_vcpu_getcontext(
        xch: *mut XcInterface,
        domid: u32,
        vcpu: u32,
        ctxt: *mut VcpuGuestContext,
    ) -> c_int;
    pub fn xc_vcpu_setcontext(
        xch: *mut XcInterface,
        domid: u32,
        vcpu: u32,
        ctxt: *mut VcpuGuestContext,
    ) -> c_int;
    pub fn xc_domain_hvm_getcontext(
        xch: *mut XcInterface,
        domid: u32,
        ctxt_buf: *mut u8,
        size: u32,
    ) -> c_int;
    pub fn xc_domain_hvm_getcontext_partial(
        xch: *mut XcInterface,
        domid: u32,
        typecode: u16,
        instance: u16,
        ctxt_buf: *mut c_void,
        size: u32,
    ) -> c_int;
    pub fn xc_domain_hvm_setcontext(
        xch: *mut XcInterface,
        domid: u32,
        hvm_ctxt: *mut u8,
        size: u32,
    ) -> c_int;
    pub fn xc_hvm_param_set(handle: *mut XcInterface, dom: u32, param: u32, value: u64) -> c_int;
    pub fn xc_monitor_enable(xch: *mut XcInterface, domain_id: u32, port: *mut u32) -> *mut c_void;
    pub fn xc_monitor_disable(xch: *mut XcInterface, domain_id: u32) -> c_int;
    pub fn xc_monitor_debug_exceptions(
        xch: *mut XcInterface,
        domain_id: u32,
        enable: bool,
        sync: bool,
    ) -> c_int;
}

#[link(name = "xenguest")]
extern "C" {
    pub fn xc_domain_resume(xch: *mut XcInterface, domid: u32, fast: c_int) -> c_int;
    pub fn xc_cpu_policy_init() -> *mut XcCpuPolicy;
    pub fn xc_cpu_policy_destroy(policy: *mut XcCpuPolicy);
    pub fn xc_cpu_policy_get_system(
        xch: *mut XcInterface,
        policy_idx: c_uint,
        policy: *mut XcCpuPolicy,
    ) -> c_int;
    pub fn xc_cpu_policy_get_domain(
        xch: *mut XcInterface,
        domid: u32,
        policy: *mut XcCpuPolicy,
    ) -> c_int;
    pub fn xc_cpu_policy_serialise(
        xch: *mut XcInterface,
        policy: *const XcCpuPolicy,
        leaves: *mut CpuidLeaf,
        nr_leaves: *mut u32,
        msrs: *mut MsrEntry,
        nr_msrs: *mut u32,
    ) -> c_int;
    pub fn xc_cpu_policy_get_size(
        xch: *mut XcInterface,
        nr_leaves: *mut u32,
        nr_msrs: *mut u32,
    ) -> c_int;
    pub fn xc_set_domain_cpu_policy(
        xch: *mut XcInterface,
        domid: u32,
        nr_leaves: u32,
        leaves: *mut CpuidLeaf,
        nr_msrs: u32,
        msrs: *mut MsrEntry,
        err_leaf_p: *mut u32,
        err_subleaf_p: *mut u32,
        err_msr_p: *mut u32,
    ) -> c_int;
}

#[link(name = "xendevicemodel")]
extern "C" {
    pub fn xendevicemodel_open(logger: *mut Logger, open_flags: c_uint) -> *mut DevicemodelHandle;
    pub fn xendevicemodel_close(dmod: *mut DevicemodelHandle) -> c_int;
    pub fn xendevicemodel_create_ioreq_server(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        handle_bufioreq: c_int,
        id: *mut IoServId,
    ) -> c_int;
    pub fn xendevicemodel_map_io_range_to_ioreq_server(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        id: IoServId,
        is_mmio: c_int,
        start: u64,
        end: u64,
    ) -> c_int;
    pub fn xendevicemodel_set_ioreq_server_state(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        id: IoServId,
        enabled: c_int,
    ) -> c_int;
    pub fn xendevicemodel_destroy_ioreq_server(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        id: IoServId,
    ) -> c_int;
    pub fn xendevicemodel_set_pci_intx_level(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        segment: u16,
        bus: u8,
        device: u8,
        intx: u8,
        level: c_uint,
    ) -> c_int;
    pub fn xendevicemodel_inject_event(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        vcpu: c_int,
        vector: u8,
        kind: u8,
        error_code: u32,
        insn_len: u8,
        extra: u64,
    ) -> c_int;
    pub fn xendevicemodel_set_isa_irq_level(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        irq: u8,
        level: c_uint,
    ) -> c_int;
    pub fn xendevicemodel_inject_msi(
        dmod: *mut DevicemodelHandle,
        domid: DomId,
        msi_addr: u64,
        msi_data: u32,
    ) -> c_int;
}

#[link(name = "xenforeignmemory")]
extern "C" {
    pub fn xenforeignmemory_open(
        logger: *mut Logger,
        open_flags: c_uint,
    ) -> *mut ForeignmemoryHandle;
    pub fn xenforeignmemory_close(fmem: *mut ForeignmemoryHandle) -> c_int;
    pub fn xenforeignmemory_map_resource(
        fmem: *mut ForeignmemoryHandle,
        domid: DomId,
        type_: c_uint,
        id: c_uint,
        frame: c_ulong,
        nr_frames: c_ulong,
        paddr: *mut *mut c_void,
        prot: c_int,
        flags: c_int,
    ) -> *mut ResourceHandle;
    pub fn xenforeignmemory_unmap_resource(
        fmem: *mut ForeignmemoryHandle,
        fres: *mut ResourceHandle,
    ) -> c_int;
}

#[link(name = "xenevtchn")]
extern "C" {
    pub fn xenevtchn_open(logger: *mut Logger, open_flags: c_uint) -> *mut EvtchnHandle;
    pub fn xenevtchn_close(xce: *mut EvtchnHandle) -> c_int;
    pub fn xenevtchn_fd(xce: *mut EvtchnHandle) -> c_int;
    pub fn xenevtchn_notify(xce: *mut EvtchnHandle, port: EvtchnPort) -> c_int;
    pub fn xenevtchn_bind_interdomain(
        xce: *mut EvtchnHandle,
        domid: u32,
        remote_port: EvtchnPort,
    ) -> c_int;
    pub fn xenevtchn_unbind(xce: *mut EvtchnHandle, port: EvtchnPort) -> c_int;
    pub fn xenevtchn_pending(xce: *mut EvtchnHandle) -> c_int;
    pub fn xenevtchn_unmask(xce: *mut EvtchnHandle, port: EvtchnPort) -> c_int;
}
