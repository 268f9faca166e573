//! Safe wrappers over the handles of Xen's C libraries: each opens on construction, closes
//! on drop, and turns a failed call into a [`XenCallError`] naming the call and carrying
//! `errno`. Nothing outside this module and `sys` calls the C functions.

use std::io;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use super::sys::abi::{
    CpuidLeaf, CreateDomain, DomId, DomainInfo, EvtchnPort, IoServId, Logger, Physinfo,
    VcpuGuestContext, VcpuInfo, XenPfn, XEN_CPUID_NO_SUBLEAF,
};
use super::sys::ffi;

/// A call into a Xen library failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed")]
pub struct XenCallError {
    /// The library function (and what it was asked), e.g. `xc_domain_create`.
    pub op: &'static str,
    /// The `errno` it left.
    #[source]
    pub source: io::Error,
}

/// Captures `errno` right after a failed call.
fn fail(op: &'static str) -> XenCallError {
    XenCallError {
        op,
        source: io::Error::last_os_error(),
    }
}

/// Turns a C return code (negative: failure with `errno`) into a `Result`.
fn check(op: &'static str, rc: libc::c_int) -> Result<libc::c_int, XenCallError> {
    if rc < 0 {
        Err(fail(op))
    } else {
        Ok(rc)
    }
}

unsafe extern "C" fn quiet_vmessage(
    _: *mut Logger,
    _: libc::c_int,
    _: libc::c_int,
    _: *const libc::c_char,
    _: *const libc::c_char,
    _: *mut libc::c_void,
) {
}

unsafe extern "C" fn quiet_progress(
    _: *mut Logger,
    _: *const libc::c_char,
    _: *const libc::c_char,
    _: libc::c_int,
    _: libc::c_ulong,
    _: libc::c_ulong,
) {
}

unsafe extern "C" fn quiet_destroy(_: *mut Logger) {}

/// A logger that drops the libraries' messages: vmkit reports every failure itself, with
/// `errno`, and some calls fail by design (probing). It is never written to.
struct QuietLogger(Logger);

// SAFETY: the logger holds only function pointers and is never mutated.
unsafe impl Sync for QuietLogger {}

static QUIET: QuietLogger = QuietLogger(Logger {
    vmessage: quiet_vmessage,
    progress: quiet_progress,
    destroy: quiet_destroy,
});

/// The logger to hand the libraries: silent, unless `VMKIT_XEN_DEBUG` is set, in which case
/// each library logs to stderr (its default for a NULL logger).
fn logger() -> *mut Logger {
    if std::env::var_os("VMKIT_XEN_DEBUG").is_some() {
        ptr::null_mut()
    } else {
        // The libraries take a non-const pointer but only ever call through it.
        ptr::addr_of!(QUIET.0).cast_mut()
    }
}

/// An open libxenctrl interface (`xc_interface`), for domctls, sysctls and memory ops.
#[derive(Debug)]
pub(crate) struct Xc {
    raw: NonNull<ffi::XcInterface>,
}

// SAFETY: libxenctrl handles opened without XC_OPENFLAG_NON_REENTRANT may be used from any
// thread concurrently (xenctrl.h); the pointer is owned and closed exactly once.
unsafe impl Send for Xc {}
// SAFETY: as above.
unsafe impl Sync for Xc {}

impl Drop for Xc {
    fn drop(&mut self) {
        // SAFETY: `raw` came from xc_interface_open and is closed only here.
        unsafe { ffi::xc_interface_close(self.raw.as_ptr()) };
    }
}

impl Xc {
    /// Opens libxenctrl (which opens `/dev/xen/privcmd` and `/dev/xen/hypercall`).
    pub(crate) fn open() -> Result<Self, XenCallError> {
        // SAFETY: the loggers are valid for the life of the handle (static or NULL).
        let raw = unsafe { ffi::xc_interface_open(logger(), logger(), 0) };
        NonNull::new(raw)
            .map(|raw| Xc { raw })
            .ok_or_else(|| fail("xc_interface_open"))
    }

    /// The raw handle, for the feature modules' own bindings (`sys::ffi_parity`).
    pub(crate) fn xch(&self) -> *mut ffi::XcInterface {
        self.raw.as_ptr()
    }

    pub(crate) fn physinfo(&self) -> Result<Physinfo, XenCallError> {
        let mut info = Physinfo::default();
        // SAFETY: `info` is a valid, writable xc_physinfo_t.
        check("xc_physinfo", unsafe {
            ffi::xc_physinfo(self.xch(), &mut info)
        })?;
        Ok(info)
    }

    /// Creates a domain (paused) and returns its id.
    pub(crate) fn domain_create(&self, config: &mut CreateDomain) -> Result<u32, XenCallError> {
        // 0 asks Xen to pick the id.
        let mut domid = 0u32;
        // SAFETY: both pointers are valid for the call; the library copies the config.
        check("xc_domain_create", unsafe {
            ffi::xc_domain_create(self.xch(), &mut domid, config)
        })?;
        Ok(domid)
    }

    pub(crate) fn max_vcpus(&self, domid: u32, max: u32) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xc_domain_max_vcpus", unsafe {
            ffi::xc_domain_max_vcpus(self.xch(), domid, max)
        })
        .map(drop)
    }

    pub(crate) fn destroy(&self, domid: u32) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xc_domain_destroy", unsafe {
            ffi::xc_domain_destroy(self.xch(), domid)
        })
        .map(drop)
    }

    pub(crate) fn pause(&self, domid: u32) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xc_domain_pause", unsafe {
            ffi::xc_domain_pause(self.xch(), domid)
        })
        .map(drop)
    }

    pub(crate) fn unpause(&self, domid: u32) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xc_domain_unpause", unsafe {
            ffi::xc_domain_unpause(self.xch(), domid)
        })
        .map(drop)
    }

    pub(crate) fn resume(&self, domid: u32) -> Result<(), XenCallError> {
        // SAFETY: plain values; `fast` = 0 is XEN_DOMCTL_resumedomain for an HVM domain.
        check("xc_domain_resume", unsafe {
            ffi::xc_domain_resume(self.xch(), domid, 0)
        })
        .map(drop)
    }

    /// The domain's information, or `None` if no domain has this id.
    pub(crate) fn domain_info(&self, domid: u32) -> Result<Option<DomainInfo>, XenCallError> {
        let mut info = DomainInfo::default();
        // SAFETY: one writable element.
        let n = check("xc_domain_getinfolist", unsafe {
            ffi::xc_domain_getinfolist(self.xch(), domid, 1, &mut info)
        })?;
        // The call starts at `domid` and returns the next domain that exists.
        Ok((n == 1 && u32::from(info.domain) == domid).then_some(info))
    }

    /// Every domain on the host.
    pub(crate) fn domains(&self) -> Result<Vec<DomainInfo>, XenCallError> {
        let mut all = Vec::new();
        let mut next = 0u32;
        loop {
            let mut batch = vec![DomainInfo::default(); 64];
            // SAFETY: `batch` holds 64 writable elements.
            let n = check("xc_domain_getinfolist", unsafe {
                ffi::xc_domain_getinfolist(self.xch(), next, 64, batch.as_mut_ptr())
            })?;
            let n = usize::try_from(n).unwrap_or(0).min(batch.len());
            batch.truncate(n);
            let Some(last) = batch.last() else {
                return Ok(all);
            };
            next = u32::from(last.domain) + 1;
            all.extend(batch);
            if n < 64 {
                return Ok(all);
            }
        }
    }

    pub(crate) fn set_max_mem_kb(&self, domid: u32, kb: u64) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xc_domain_setmaxmem", unsafe {
            ffi::xc_domain_setmaxmem(self.xch(), domid, kb)
        })
        .map(drop)
    }

    pub(crate) fn set_paging_mempool_size(
        &self,
        domid: u32,
        bytes: u64,
    ) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xc_set_paging_mempool_size", unsafe {
            ffi::xc_set_paging_mempool_size(self.xch(), domid, bytes)
        })
        .map(drop)
    }

    /// Allocates guest frames of `2^order` pages at each of `frames` (first frame numbers).
    /// Returns how many extents Xen allocated, from the start of `frames`; fewer than asked
    /// means it ran out of (contiguous) memory.
    pub(crate) fn populate(
        &self,
        domid: u32,
        order: u32,
        frames: &mut [XenPfn],
    ) -> Result<usize, XenCallError> {
        // SAFETY: `frames` holds `len` elements the call reads (and may rewrite).
        let done = check("xc_domain_populate_physmap", unsafe {
            ffi::xc_domain_populate_physmap(
                self.xch(),
                domid,
                frames.len() as libc::c_ulong,
                order,
                0,
                frames.as_mut_ptr(),
            )
        })?;
        Ok(usize::try_from(done).unwrap_or(0).min(frames.len()))
    }

    /// Frees the guest frames of `2^order` pages at each of `frames`.
    pub(crate) fn decrease_reservation(
        &self,
        domid: u32,
        order: u32,
        frames: &mut [XenPfn],
    ) -> Result<(), XenCallError> {
        // SAFETY: `frames` holds `len` elements the call reads.
        check("xc_domain_decrease_reservation_exact", unsafe {
            ffi::xc_domain_decrease_reservation_exact(
                self.xch(),
                domid,
                frames.len() as libc::c_ulong,
                order,
                frames.as_mut_ptr(),
            )
        })
        .map(drop)
    }

    pub(crate) fn vcpu_info(&self, domid: u32, vcpu: u32) -> Result<VcpuInfo, XenCallError> {
        let mut info = VcpuInfo::default();
        // SAFETY: `info` is a valid, writable xc_vcpuinfo_t.
        check("xc_vcpu_getinfo", unsafe {
            ffi::xc_vcpu_getinfo(self.xch(), domid, vcpu, &mut info)
        })?;
        Ok(info)
    }

    pub(crate) fn vcpu_context(
        &self,
        domid: u32,
        vcpu: u32,
    ) -> Result<Box<VcpuGuestContext>, XenCallError> {
        let mut ctxt = Box::<VcpuGuestContext>::default();
        // SAFETY: `ctxt` is as large as vcpu_guest_context_any_t (checked by the layout
        // test), all the library writes.
        check("xc_vcpu_getcontext", unsafe {
            ffi::xc_vcpu_getcontext(self.xch(), domid, vcpu, &mut *ctxt)
        })?;
        Ok(ctxt)
    }

    pub(crate) fn set_vcpu_context(
        &self,
        domid: u32,
        vcpu: u32,
        ctxt: &mut VcpuGuestContext,
    ) -> Result<(), XenCallError> {
        // SAFETY: as for getcontext; the library only reads the context.
        check("xc_vcpu_setcontext", unsafe {
            ffi::xc_vcpu_setcontext(self.xch(), domid, vcpu, ctxt)
        })
        .map(drop)
    }

    /// The domain's whole HVM context: a header, then every record, then an end marker.
    pub(crate) fn hvm_context(&self, domid: u32) -> Result<Vec<u8>, XenCallError> {
        // SAFETY: a NULL buffer asks for the size only.
        let size = check("xc_domain_hvm_getcontext (size)", unsafe {
            ffi::xc_domain_hvm_getcontext(self.xch(), domid, ptr::null_mut(), 0)
        })?;
        let mut buffer = vec![0u8; usize::try_from(size).unwrap_or(0)];
        // SAFETY: `buffer` holds the `len` bytes passed as the size.
        let used = check("xc_domain_hvm_getcontext", unsafe {
            ffi::xc_domain_hvm_getcontext(
                self.xch(),
                domid,
                buffer.as_mut_ptr(),
                buffer.len() as u32,
            )
        })?;
        buffer.truncate(usize::try_from(used).unwrap_or(0));
        Ok(buffer)
    }

    /// One HVM record (e.g. the CPU record of one vCPU) into `buffer`, which must be exactly
    /// the record's size.
    pub(crate) fn hvm_record(
        &self,
        domid: u32,
        typecode: u16,
        instance: u16,
        buffer: &mut [u8],
    ) -> Result<(), XenCallError> {
        // SAFETY: `buffer` is writable for the size passed.
        check("xc_domain_hvm_getcontext_partial", unsafe {
            ffi::xc_domain_hvm_getcontext_partial(
                self.xch(),
                domid,
                typecode,
                instance,
                buffer.as_mut_ptr().cast(),
                buffer.len() as u32,
            )
        })
        .map(drop)
    }

    pub(crate) fn set_hvm_context(
        &self,
        domid: u32,
        context: &mut [u8],
    ) -> Result<(), XenCallError> {
        // SAFETY: the library reads `len` bytes.
        check("xc_domain_hvm_setcontext", unsafe {
            ffi::xc_domain_hvm_setcontext(
                self.xch(),
                domid,
                context.as_mut_ptr(),
                context.len() as u32,
            )
        })
        .map(drop)
    }

    pub(crate) fn set_hvm_param(
        &self,
        domid: u32,
        param: u32,
        value: u64,
    ) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xc_hvm_param_set", unsafe {
            ffi::xc_hvm_param_set(self.xch(), domid, param, value)
        })
        .map(drop)
    }

    /// Enables the domain's monitor vm_event ring (`xc_monitor_enable`: the page at the gfn
    /// in `HVM_PARAM_MONITOR_RING_PFN`, populated, mapped here and taken out of the guest's
    /// physmap); returns the mapped page and Xen's event channel port for it.
    pub(crate) fn monitor_enable(
        &self,
        domid: u32,
    ) -> Result<(NonNull<u8>, EvtchnPort), XenCallError> {
        let mut port = 0u32;
        // SAFETY: `port` is a live u32 for the call.
        let page = unsafe { ffi::xc_monitor_enable(self.xch(), domid, &mut port) };
        NonNull::new(page.cast::<u8>())
            .map(|page| (page, port as EvtchnPort))
            .ok_or_else(|| fail("xc_monitor_enable"))
    }

    /// Sends the domain's debug exceptions (#DB) to the monitor ring, the vCPU paused until
    /// answered (`sync`), or stops sending them.
    pub(crate) fn monitor_debug_exceptions(
        &self,
        domid: u32,
        enable: bool,
    ) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xc_monitor_debug_exceptions", unsafe {
            ffi::xc_monitor_debug_exceptions(self.xch(), domid, enable, true)
        })
        .map(drop)
    }

    /// The CPUID leaves of a system policy (`XEN_SYSCTL_cpu_policy_*`) or, with `domain`,
    /// of that domain's policy.
    pub(crate) fn cpuid_policy(
        &self,
        source: PolicySource,
    ) -> Result<Vec<CpuidLeaf>, XenCallError> {
        let (mut nr_leaves, mut nr_msrs) = (0u32, 0u32);
        // SAFETY: two writable integers.
        check("xc_cpu_policy_get_size", unsafe {
            ffi::xc_cpu_policy_get_size(self.xch(), &mut nr_leaves, &mut nr_msrs)
        })?;
        let policy = CpuPolicy::new()?;
        match source {
            // SAFETY: `policy` is a live policy object.
            PolicySource::System(index) => check("xc_cpu_policy_get_system", unsafe {
                ffi::xc_cpu_policy_get_system(self.xch(), index, policy.0.as_ptr())
            })?,
            // SAFETY: as above.
            PolicySource::Domain(domid) => check("xc_cpu_policy_get_domain", unsafe {
                ffi::xc_cpu_policy_get_domain(self.xch(), domid, policy.0.as_ptr())
            })?,
        };
        let mut leaves = vec![CpuidLeaf::default(); nr_leaves as usize];
        // SAFETY: `leaves` holds `nr_leaves` elements; no MSRs are asked for.
        check("xc_cpu_policy_serialise", unsafe {
            ffi::xc_cpu_policy_serialise(
                self.xch(),
                policy.0.as_ptr(),
                leaves.as_mut_ptr(),
                &mut nr_leaves,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        })?;
        leaves.truncate(nr_leaves as usize);
        Ok(leaves)
    }

    /// Replaces the given CPUID leaves of the domain's policy. On refusal the error names
    /// the leaf Xen objected to, if it said.
    pub(crate) fn set_domain_cpuid(
        &self,
        domid: u32,
        leaves: &mut [CpuidLeaf],
    ) -> Result<(), (XenCallError, Option<(u32, u32)>)> {
        let (mut err_leaf, mut err_subleaf, mut err_msr) = (!0u32, !0u32, !0u32);
        // SAFETY: `leaves` holds `len` elements; the error outputs are writable.
        let rc = unsafe {
            ffi::xc_set_domain_cpu_policy(
                self.xch(),
                domid,
                leaves.len() as u32,
                leaves.as_mut_ptr(),
                0,
                ptr::null_mut(),
                &mut err_leaf,
                &mut err_subleaf,
                &mut err_msr,
            )
        };
        if rc < 0 {
            let err = fail("xc_set_domain_cpu_policy");
            let leaf = (err_leaf != !0).then_some((err_leaf, err_subleaf));
            return Err((err, leaf));
        }
        Ok(())
    }
}

/// Where [`Xc::cpuid_policy`] reads a policy from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PolicySource {
    /// A system policy, `XEN_SYSCTL_cpu_policy_*`.
    System(u32),
    /// A domain's.
    Domain(u32),
}

/// An `xc_cpu_policy_t`, destroyed on drop.
struct CpuPolicy(NonNull<ffi::XcCpuPolicy>);

impl CpuPolicy {
    fn new() -> Result<Self, XenCallError> {
        // SAFETY: no arguments; the result is checked.
        let raw = unsafe { ffi::xc_cpu_policy_init() };
        NonNull::new(raw)
            .map(CpuPolicy)
            .ok_or_else(|| fail("xc_cpu_policy_init"))
    }
}

impl Drop for CpuPolicy {
    fn drop(&mut self) {
        // SAFETY: created by xc_cpu_policy_init, destroyed once.
        unsafe { ffi::xc_cpu_policy_destroy(self.0.as_ptr()) };
    }
}

/// Whether a serialized leaf has sub-leaves.
pub(crate) fn has_subleaf(leaf: &CpuidLeaf) -> bool {
    leaf.subleaf != XEN_CPUID_NO_SUBLEAF
}

/// An open libxendevicemodel handle, for ioreq servers and interrupt injection.
#[derive(Debug)]
pub(crate) struct DeviceModel {
    raw: NonNull<ffi::DevicemodelHandle>,
}

// SAFETY: the handle wraps a libxencall handle whose buffer cache is locked; calls from
// several threads are allowed (QEMU makes them from its vCPU threads).
unsafe impl Send for DeviceModel {}
// SAFETY: as above.
unsafe impl Sync for DeviceModel {}

impl Drop for DeviceModel {
    fn drop(&mut self) {
        // SAFETY: opened by xendevicemodel_open, closed once.
        unsafe { ffi::xendevicemodel_close(self.raw.as_ptr()) };
    }
}

impl DeviceModel {
    pub(crate) fn open() -> Result<Self, XenCallError> {
        // SAFETY: the logger outlives the handle.
        let raw = unsafe { ffi::xendevicemodel_open(logger(), 0) };
        NonNull::new(raw)
            .map(|raw| DeviceModel { raw })
            .ok_or_else(|| fail("xendevicemodel_open"))
    }

    /// The raw handle, for the feature modules' own bindings (`sys::ffi_parity`).
    pub(crate) fn raw(&self) -> *mut ffi::DevicemodelHandle {
        self.raw.as_ptr()
    }

    pub(crate) fn create_ioreq_server(&self, domid: DomId) -> Result<IoServId, XenCallError> {
        let mut id: IoServId = 0;
        // SAFETY: `id` is writable.
        check("xendevicemodel_create_ioreq_server", unsafe {
            ffi::xendevicemodel_create_ioreq_server(
                self.raw.as_ptr(),
                domid,
                super::sys::abi::HVM_IOREQSRV_BUFIOREQ_OFF,
                &mut id,
            )
        })?;
        Ok(id)
    }

    /// Sends guest accesses to `start..=end` (ports, or MMIO with `mmio`) to the server.
    pub(crate) fn map_io_range(
        &self,
        domid: DomId,
        id: IoServId,
        mmio: bool,
        start: u64,
        end: u64,
    ) -> Result<(), XenCallError> {
        let kind = if mmio {
            super::sys::abi::XEN_DMOP_IO_RANGE_MEMORY
        } else {
            super::sys::abi::XEN_DMOP_IO_RANGE_PORT
        };
        // SAFETY: plain values.
        check("xendevicemodel_map_io_range_to_ioreq_server", unsafe {
            ffi::xendevicemodel_map_io_range_to_ioreq_server(
                self.raw.as_ptr(),
                domid,
                id,
                kind,
                start,
                end,
            )
        })
        .map(drop)
    }

    pub(crate) fn set_ioreq_server_state(
        &self,
        domid: DomId,
        id: IoServId,
        enabled: bool,
    ) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xendevicemodel_set_ioreq_server_state", unsafe {
            ffi::xendevicemodel_set_ioreq_server_state(
                self.raw.as_ptr(),
                domid,
                id,
                libc::c_int::from(enabled),
            )
        })
        .map(drop)
    }

    /// Sets the level of ISA IRQ `irq` (0-15): Xen's PIC input `irq` and IOAPIC pin
    /// `irq` (pin 2 for IRQ 0).
    pub(crate) fn set_isa_irq_level(
        &self,
        domid: DomId,
        irq: u8,
        level: bool,
    ) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xendevicemodel_set_isa_irq_level", unsafe {
            ffi::xendevicemodel_set_isa_irq_level(
                self.raw.as_ptr(),
                domid,
                irq,
                libc::c_uint::from(level),
            )
        })
        .map(drop)
    }

    /// Injects hardware exception `vector` (no error code) into vCPU `vcpu`.
    pub(crate) fn inject_exception(
        &self,
        domid: DomId,
        vcpu: u32,
        vector: u8,
    ) -> Result<(), XenCallError> {
        // XEN_DMOP_EVENT_hw_exc; error code ~0: none.
        const HW_EXCEPTION: u8 = 3;
        // SAFETY: plain values.
        check("xendevicemodel_inject_event", unsafe {
            ffi::xendevicemodel_inject_event(
                self.raw.as_ptr(),
                domid,
                vcpu as libc::c_int,
                vector,
                HW_EXCEPTION,
                u32::MAX,
                0,
                0,
            )
        })
        .map(drop)
    }

    /// Sets the level of INTx pin `intx` (0-3) of PCI device `device` on bus 0.
    pub(crate) fn set_pci_intx_level(
        &self,
        domid: DomId,
        device: u8,
        intx: u8,
        level: bool,
    ) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xendevicemodel_set_pci_intx_level", unsafe {
            ffi::xendevicemodel_set_pci_intx_level(
                self.raw.as_ptr(),
                domid,
                0,
                0,
                device,
                intx,
                libc::c_uint::from(level),
            )
        })
        .map(drop)
    }

    /// Sends the MSI `address`/`data` to the domain.
    pub(crate) fn inject_msi(
        &self,
        domid: DomId,
        address: u64,
        data: u32,
    ) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xendevicemodel_inject_msi", unsafe {
            ffi::xendevicemodel_inject_msi(self.raw.as_ptr(), domid, address, data)
        })
        .map(drop)
    }

    pub(crate) fn destroy_ioreq_server(
        &self,
        domid: DomId,
        id: IoServId,
    ) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xendevicemodel_destroy_ioreq_server", unsafe {
            ffi::xendevicemodel_destroy_ioreq_server(self.raw.as_ptr(), domid, id)
        })
        .map(drop)
    }
}

/// An open libxenforeignmemory handle.
#[derive(Debug)]
pub(crate) struct ForeignMemory {
    raw: NonNull<ffi::ForeignmemoryHandle>,
}

// SAFETY: the handle is an fd plus immutable state; mapping calls are independent.
unsafe impl Send for ForeignMemory {}
// SAFETY: as above.
unsafe impl Sync for ForeignMemory {}

impl Drop for ForeignMemory {
    fn drop(&mut self) {
        // SAFETY: opened by xenforeignmemory_open, closed once (resources hold an Arc).
        unsafe { ffi::xenforeignmemory_close(self.raw.as_ptr()) };
    }
}

impl ForeignMemory {
    pub(crate) fn open() -> Result<Arc<Self>, XenCallError> {
        // SAFETY: the logger outlives the handle.
        let raw = unsafe { ffi::xenforeignmemory_open(logger(), 0) };
        NonNull::new(raw)
            .map(|raw| Arc::new(ForeignMemory { raw }))
            .ok_or_else(|| fail("xenforeignmemory_open"))
    }

    /// The raw handle, for the feature modules' own bindings (`sys::ffi_pv`).
    pub(crate) fn raw(&self) -> *mut ffi::ForeignmemoryHandle {
        self.raw.as_ptr()
    }

    /// Maps `frames` frames of a domain's resource (e.g. an ioreq server's pages) read-write.
    pub(crate) fn map_resource(
        self: &Arc<Self>,
        domid: DomId,
        kind: u32,
        id: u32,
        frame: u64,
        frames: u64,
    ) -> Result<Resource, XenCallError> {
        let mut addr: *mut libc::c_void = ptr::null_mut();
        // SAFETY: `addr` is writable; a NULL hint lets the library choose the address.
        let handle = unsafe {
            ffi::xenforeignmemory_map_resource(
                self.raw.as_ptr(),
                domid,
                kind,
                id,
                frame as libc::c_ulong,
                frames as libc::c_ulong,
                &mut addr,
                libc::PROT_READ | libc::PROT_WRITE,
                0,
            )
        };
        let handle = NonNull::new(handle).ok_or_else(|| fail("xenforeignmemory_map_resource"))?;
        let Some(addr) = NonNull::new(addr.cast::<u8>()) else {
            // SAFETY: `handle` was just returned and is released once.
            unsafe { ffi::xenforeignmemory_unmap_resource(self.raw.as_ptr(), handle.as_ptr()) };
            return Err(XenCallError {
                op: "xenforeignmemory_map_resource",
                source: io::Error::other("the library returned no address"),
            });
        };
        Ok(Resource {
            fmem: Arc::clone(self),
            handle,
            addr,
            len: (frames as usize) * 4096,
        })
    }
}

/// A mapped domain resource, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Resource {
    fmem: Arc<ForeignMemory>,
    handle: NonNull<ffi::ResourceHandle>,
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is process memory; access goes through the owner's synchronization.
unsafe impl Send for Resource {}
// SAFETY: as above: `Resource` itself only hands out its address.
unsafe impl Sync for Resource {}

impl Resource {
    /// The first byte of the mapping, valid for [`Resource::len`] bytes while `self` lives.
    pub(crate) fn addr(&self) -> NonNull<u8> {
        self.addr
    }

    /// The mapping's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Resource {
    fn drop(&mut self) {
        // SAFETY: `handle` came from xenforeignmemory_map_resource on `fmem`; released once.
        unsafe {
            ffi::xenforeignmemory_unmap_resource(self.fmem.raw.as_ptr(), self.handle.as_ptr())
        };
    }
}

/// An open libxenevtchn handle (its own `/dev/xen/evtchn` file descriptor).
#[derive(Debug)]
pub(crate) struct Evtchn {
    raw: NonNull<ffi::EvtchnHandle>,
}

// SAFETY: the handle is an fd; vmkit uses each one from one thread at a time (its vCPU's).
unsafe impl Send for Evtchn {}

impl Drop for Evtchn {
    fn drop(&mut self) {
        // SAFETY: opened by xenevtchn_open, closed once; closing unbinds every port.
        unsafe { ffi::xenevtchn_close(self.raw.as_ptr()) };
    }
}

impl Evtchn {
    pub(crate) fn open() -> Result<Self, XenCallError> {
        // SAFETY: the logger outlives the handle.
        let raw = unsafe { ffi::xenevtchn_open(logger(), 0) };
        NonNull::new(raw)
            .map(|raw| Evtchn { raw })
            .ok_or_else(|| fail("xenevtchn_open"))
    }

    /// The file descriptor that becomes readable when a bound port fires.
    pub(crate) fn fd(&self) -> RawFd {
        // SAFETY: a live handle.
        unsafe { ffi::xenevtchn_fd(self.raw.as_ptr()) }
    }

    /// Binds a local port to `remote_port` of domain `domid`; returns the local port.
    pub(crate) fn bind_interdomain(
        &self,
        domid: u32,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, XenCallError> {
        // SAFETY: plain values.
        let port = check("xenevtchn_bind_interdomain", unsafe {
            ffi::xenevtchn_bind_interdomain(self.raw.as_ptr(), domid, remote_port)
        })?;
        Ok(port as EvtchnPort)
    }

    pub(crate) fn notify(&self, port: EvtchnPort) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xenevtchn_notify", unsafe {
            ffi::xenevtchn_notify(self.raw.as_ptr(), port)
        })
        .map(drop)
    }

    /// The next pending port (the fd must be readable, else this blocks), or an error.
    pub(crate) fn pending(&self) -> Result<EvtchnPort, XenCallError> {
        // SAFETY: a live handle.
        let port = check("xenevtchn_pending", unsafe {
            ffi::xenevtchn_pending(self.raw.as_ptr())
        })?;
        Ok(port as EvtchnPort)
    }

    pub(crate) fn unmask(&self, port: EvtchnPort) -> Result<(), XenCallError> {
        // SAFETY: plain values.
        check("xenevtchn_unmask", unsafe {
            ffi::xenevtchn_unmask(self.raw.as_ptr(), port)
        })
        .map(drop)
    }
}
