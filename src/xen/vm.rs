//! Xen VMs: creating and destroying the PVH (or PV) domain, its ioreq server and guest
//! RAM; the [`Vm`] trait over them. How vCPUs are stopped and started is `control.rs`.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::clock::{self, ClockBase};
use super::context::{self, Record, XsaveRecord};
use super::control::{Control, Replay, StateError};
use super::ioeventfd::IoEventFds;
use super::irq::Interrupts;
use super::kick::XenKick;
use super::libs::{Evtchn, PolicySource, XenCallError};
use super::memtype::Server;
use super::page::{IoreqPage, Slot};
use super::sys::abi::{
    ArchDomainConfig, CreateDomain, DomainInfo, HVM_PARAM_HPET_ENABLED, HVM_PARAM_TIMER_MODE,
    HVM_PARAM_TRIPLE_FAULT_REASON, SHUTDOWN_SOFT_RESET, XENMEM_RESOURCE_IOREQ_SERVER,
    XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0, XEN_DOMCTL_CDF_HAP, XEN_DOMCTL_CDF_HVM,
    XEN_DOMCTL_GRANT_VERSION_1,
};
use super::sys::abi::{HvmHwCpu, XenPfn};
use super::{memory as ram, Handles, XenVcpu};
use crate::dirty::{DirtyLog, DirtyLogMode};
use crate::hypervisor::{Capabilities, HypervisorError, VmConfig};
use crate::memory::{
    GuestMemoryMmap, GuestRange, MemoryFlags, MemoryRegion, MemorySlot, RegionTable,
};
use crate::vcpu::Vcpu;
use crate::vm::{ClockState, Vm, VmError};

/// The shutdown reason Xen is told to use for a triple fault (`HVM_PARAM_TRIPLE_FAULT_REASON`),
/// so that `run()` can tell it from a guest's shutdown request and report
/// [`VcpuExit::Shutdown`](crate::VcpuExit::Shutdown) as KVM does. No guest vmkit runs asks
/// for a soft reset itself.
pub(crate) const TRIPLE_FAULT_REASON: u32 = SHUTDOWN_SOFT_RESET;

/// Event channels the domain may have: its own plus one per vCPU for the ioreq server.
const MAX_EVTCHN_PORT: u32 = 1023;

/// Extra memory the domain may hold beyond its RAM regions (Xen allocates a few pages on
/// its behalf), in KiB.
const MAXMEM_SLACK_KB: u64 = 1024;

/// The domain's shutdown, as `run()` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shutdown {
    /// `SHUTDOWN_*`.
    pub(crate) reason: u32,
}

/// The ioreq server of a PVH domain, and the header of its HVM context.
#[derive(Debug)]
pub(crate) struct Hvm {
    server_id: u16,
    page: IoreqPage,
    /// The header record of the domain's HVM context, which every load starts with.
    pub(crate) header: Record,
}

/// The kind of domain a [`XenVm`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainKind {
    /// A PVH domain: an HVM container with only a local APIC emulated by Xen, and vmkit as
    /// its device model. What [`Hypervisor::create_vm`](crate::Hypervisor::create_vm)
    /// creates; with [`VmConfig::irqchip`] the same HVM container has Xen's whole emulated
    /// platform (see the `platform` module).
    Pvh,
    /// A 64-bit PV domain ([`Xen::create_pv_vm`](super::Xen::create_pv_vm)): no
    /// emulation at all, guest page tables of machine frames, hypercalls for everything.
    Pv,
}

/// What a VM and its vCPUs share; vCPUs hold it too, so the domain lives while they do.
#[derive(Debug)]
pub(crate) struct VmShared {
    pub(crate) handles: Arc<Handles>,
    pub(crate) domid: u32,
    pub(crate) config: VmConfig,
    regions: Mutex<RegionTable>,
    /// What only a PVH domain has (`None` for a PV domain, and while dropping).
    pub(crate) hvm: Option<Hvm>,
    /// A PV domain's machine frames, by the guest-physical address of their region: its
    /// guest frame numbers are machine frame numbers, which vmkit learns when it allocates
    /// them.
    pv_frames: Mutex<BTreeMap<u64, Vec<XenPfn>>>,
    control: Mutex<Control>,
    /// Per vCPU: how many requests it has had answered.
    pub(crate) answered: Vec<AtomicU64>,
    /// Per vCPU: a request to answer again (see [`Replay`]).
    pub(crate) replays: Mutex<Vec<Option<Replay>>>,
    /// Tracked pages: read-only and dirty-logging regions (locked after `regions`).
    protected: Mutex<super::memtype::Protected>,
    /// Guest writes that signal an eventfd instead of exiting.
    pub(crate) ioeventfds: IoEventFds,
    /// IRQ lines, MSIs and irqfds (a VM with an irqchip's only).
    interrupts: Option<Interrupts>,
    /// PCI functions whose configuration cycles Xen sends to vmkit.
    pci: super::pci::PciClaims,
    /// The monitor ring that reports debug exceptions, once a vCPU debugs (locked before
    /// `regions`).
    monitor: Mutex<Option<Arc<super::debug::Monitor>>>,
    /// Per vCPU: the XSAVE record of a vCPU vmkit took offline, loaded back when it comes
    /// online (a vCPU context set resets the components above SSE; see
    /// `VmShared::set_context`). Locked with the control lock held.
    pub(crate) offline_xsave: Mutex<Vec<Option<XsaveRecord>>>,
}

/// A Xen VM: a PVH domain with vmkit as its device model.
#[derive(Debug)]
pub struct XenVm {
    pub(super) shared: Arc<VmShared>,
}

/// Why a PV domain has no VM clock.
const NO_PV_CLOCK: &str = "a PV guest keeps time from Xen's system time (the same for every \
                           domain); vmkit's Xen clock is an HVM guest's TSC";

/// A clock operation's error from a state error.
fn clock_error(op: &'static str) -> impl Fn(StateError) -> VmError {
    move |err| match err {
        StateError::Xen(err) => VmError::Os {
            op: err.op,
            source: err.source,
        },
        // An I/O access in flight, or a context vmkit cannot read (as create_vcpu reports).
        other => VmError::Os {
            op,
            source: io::Error::other(other.to_string()),
        },
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent before it can panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl XenVm {
    pub(crate) fn create(
        handles: Arc<Handles>,
        config: &VmConfig,
        capabilities: Arc<Capabilities>,
        kind: DomainKind,
    ) -> Result<Self, HypervisorError> {
        let invalid = |reason| Err(HypervisorError::InvalidConfig { reason });
        let unsupported = |feature| Err(HypervisorError::Unsupported { feature });
        if config.max_vcpus == 0 {
            return invalid("max_vcpus must be at least 1");
        }
        if config.max_vcpus > capabilities.max_vcpus {
            return Err(HypervisorError::TooManyVcpus {
                requested: config.max_vcpus,
                max: capabilities.max_vcpus,
            });
        }
        // Xen's local APICs and the VMM's IOAPIC (see `eoi.rs`), checked as on KVM.
        let split = config.split_ioapic_routes();
        if let Some(problem) = config.split_irqchip_problem() {
            return invalid(problem);
        }
        if config.pit && !config.irqchip {
            return invalid("an in-kernel PIT needs the in-kernel irqchip too");
        }
        // pit(true) asks for Xen's PIT and its state calls. Xen's platform always has its
        // PIT, so pit(false) with the irqchip is allowed too, as on KVM: the PIT still
        // answers ports 0x40-0x43 and 0x61 (Capabilities::reserved says so, for the VMM to
        // keep its own devices off them) and only the state calls are refused (NoPit).
        // Refusing it would break VMMs and tests that need interrupts but no timer.
        if config.irqchip && kind == DomainKind::Pv {
            return unsupported("an in-kernel irqchip in a PV domain (PV has no emulation)");
        }
        if config.dirty_ring.is_some() {
            // Emulated over log-dirty mode (see `dirtyring`), which needs a PVH domain.
            if kind == DomainKind::Pv {
                return unsupported("dirty rings in a PV domain (no log-dirty mode there)");
            }
            if let Some(reason) = config.dirty_ring_problem(super::dirtyring::MAX_ENTRIES) {
                return Err(HypervisorError::InvalidConfig { reason });
            }
        }
        let os = |err: XenCallError| HypervisorError::Os {
            op: err.op,
            source: err.source,
        };
        let (flags, emulation_flags) = match kind {
            DomainKind::Pvh => (
                XEN_DOMCTL_CDF_HVM | XEN_DOMCTL_CDF_HAP,
                // A split irqchip has Xen's local APICs only, as a VM without one.
                super::platform::emulation_flags(config.irqchip && split.is_none()),
            ),
            DomainKind::Pv => (0, 0),
        };
        let mut create = CreateDomain {
            flags,
            max_vcpus: config.max_vcpus,
            max_evtchn_port: MAX_EVTCHN_PORT,
            // Negative: Xen's defaults.
            max_grant_frames: -1,
            max_maptrack_frames: -1,
            grant_opts: XEN_DOMCTL_GRANT_VERSION_1,
            arch: ArchDomainConfig {
                emulation_flags,
                misc_flags: 0,
            },
            ..CreateDomain::default()
        };
        create.handle[..5].copy_from_slice(b"vmkit");
        let domid = handles.xc.domain_create(&mut create).map_err(os)?;
        // From here on the domain is destroyed if anything fails.
        let guard = DestroyOnError {
            handles: &handles,
            domid,
        };
        let xc = &handles.xc;
        xc.max_vcpus(domid, config.max_vcpus).map_err(os)?;
        xc.set_max_mem_kb(domid, MAXMEM_SLACK_KB).map_err(os)?;
        let hvm = match kind {
            DomainKind::Pvh => Some(Self::create_pvh(&handles, domid, config)?),
            DomainKind::Pv => None,
        };
        std::mem::forget(guard);
        let interrupts = (config.irqchip && hvm.is_some()).then(|| {
            let split = split.map(|_| super::irq::Split {
                eoi: Arc::default(),
                vcpus: config.max_vcpus,
            });
            Interrupts::new(Arc::clone(&handles), domid as u16, split)
        });

        Ok(XenVm {
            shared: Arc::new(VmShared {
                domid,
                config: config.clone(),
                regions: Mutex::new(RegionTable::new(capabilities.max_memory_slots)),
                hvm,
                pv_frames: Mutex::new(BTreeMap::new()),
                answered: (0..config.max_vcpus).map(|_| AtomicU64::new(0)).collect(),
                replays: Mutex::new(vec![None; config.max_vcpus as usize]),
                offline_xsave: Mutex::new(vec![None; config.max_vcpus as usize]),
                protected: Mutex::default(),
                control: Mutex::new(Control {
                    started: false,
                    created: vec![false; config.max_vcpus as usize],
                    clock: ClockBase::new(),
                }),
                handles,
                ioeventfds: IoEventFds::default(),
                interrupts,
                pci: Default::default(),
                monitor: Mutex::new(None),
            }),
        })
    }

    /// Sets up what a PVH domain needs beyond a PV one: the HAP pool, the triple-fault
    /// reason, and vmkit's ioreq server.
    fn create_pvh(
        handles: &Handles,
        domid: u32,
        config: &VmConfig,
    ) -> Result<Hvm, HypervisorError> {
        let os = |err: XenCallError| HypervisorError::Os {
            op: err.op,
            source: err.source,
        };
        let xc = &handles.xc;
        xc.set_paging_mempool_size(domid, paging_pool_bytes(config.max_vcpus, 0))
            .map_err(os)?;
        xc.set_hvm_param(
            domid,
            HVM_PARAM_TRIPLE_FAULT_REASON,
            u64::from(TRIPLE_FAULT_REASON),
        )
        .map_err(os)?;
        if config.irqchip {
            // Xen's HPET answers only when enabled; the platform is whole with it (a split
            // irqchip's domain has no HPET).
            if config.split_ioapic_routes().is_none() {
                xc.set_hvm_param(domid, HVM_PARAM_HPET_ENABLED, 1)
                    .map_err(os)?;
            }
            // KVM's default lost-tick policy (reinjection on), which libxl also chooses.
            xc.set_hvm_param(
                domid,
                HVM_PARAM_TIMER_MODE,
                super::platform_state::timer_mode(true),
            )
            .map_err(os)?;
        }

        // The ioreq server: all of port and MMIO space, one page of synchronous requests.
        let dom = domid as u16;
        let dm = &handles.dm;
        let server_id = dm.create_ioreq_server(dom).map_err(os)?;
        let resource = handles
            .fmem
            .map_resource(
                dom,
                XENMEM_RESOURCE_IOREQ_SERVER,
                u32::from(server_id),
                XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0,
                1,
            )
            .map_err(os)?;
        let page = IoreqPage::new(resource);
        if page.slots() < config.max_vcpus {
            return Err(HypervisorError::TooManyVcpus {
                requested: config.max_vcpus,
                max: page.slots(),
            });
        }
        dm.map_io_range(dom, server_id, false, 0, 0xffff)
            .map_err(os)?;
        dm.map_io_range(dom, server_id, true, 0, u64::MAX)
            .map_err(os)?;
        dm.set_ioreq_server_state(dom, server_id, true)
            .map_err(os)?;
        // No vCPU is up yet, so the context is little more than its header.
        let context = xc.hvm_context(domid).map_err(os)?;
        let header = context::parse(&context)
            .ok()
            .and_then(|records| records.into_iter().next())
            .ok_or(HypervisorError::Os {
                op: "xc_domain_hvm_getcontext (no header record)",
                source: io::Error::from_raw_os_error(libc::EPROTO),
            })?;
        Ok(Hvm {
            server_id,
            page,
            header,
        })
    }

    /// The domain id of this VM.
    pub fn domid(&self) -> u32 {
        self.shared.domid
    }

    /// Creates a vCPU, with the concrete Xen type.
    pub fn create_xen_vcpu(&self, id: u32) -> Result<XenVcpu, VmError> {
        let shared = &self.shared;
        let max_vcpus = shared.config.max_vcpus;
        if id >= max_vcpus {
            return Err(VmError::VcpuIdOutOfRange { id, max_vcpus });
        }
        let create_error = |err: XenCallError| VmError::CreateVcpu {
            op: err.op,
            id,
            source: err.source,
        };
        {
            let control = lock(&shared.control);
            if control.created[id as usize] {
                return Err(VmError::VcpuExists { id });
            }
        }
        // A PVH vCPU's ioreq event channel; a PV vCPU has none (nothing is emulated).
        let evtchn = match shared.slot(id) {
            Some(slot) => {
                let evtchn = Evtchn::open().map_err(create_error)?;
                let remote = slot.vp_eport();
                let port = evtchn
                    .bind_interdomain(shared.domid, remote)
                    .map_err(create_error)?;
                trace!(
                    "d{} vCPU {id}: event channel {remote} bound to local port {port}",
                    shared.domid
                );
                Some((evtchn, port))
            }
            None => None,
        };
        let kick = XenKick::new().map_err(|source| VmError::CreateVcpu {
            op: "eventfd for kicks",
            id,
            source,
        })?;
        let kick = Arc::new(kick);
        if let Some(watch) = shared.eoi_watch() {
            watch.add_vcpu(id, Arc::clone(&kick));
        }
        // A PVH vCPU starts in the architectural reset state, offline until its first run().
        // A PV vCPU has no state until the VMM sets its start state (set_pv_start).
        let mut control = lock(&shared.control);
        if control.created[id as usize] {
            return Err(VmError::VcpuExists { id });
        }
        if shared.kind() == DomainKind::Pvh {
            shared
                .with_paused(&control, |vm| {
                    // The TSC starts at the VM clock (see `clock`), in step with the others.
                    let reset = HvmHwCpu {
                        tsc: clock::ns_to_ticks(control.clock.now(), vm.gtsc_khz()?),
                        ..context::reset_cpu()
                    };
                    vm.load_records(id, Some(reset), |_| {}, &[])?;
                    // The load brought the vCPU online: it waits offline for its first run().
                    vm.set_online(id, false)?;
                    Ok::<_, StateError>(())
                })
                .map_err(|err| match err {
                    StateError::Xen(err) => create_error(err),
                    other => VmError::CreateVcpu {
                        op: "setting the reset state",
                        id,
                        source: io::Error::other(other.to_string()),
                    },
                })?;
        }
        control.created[id as usize] = true;
        drop(control);
        Ok(XenVcpu::new(id, Arc::clone(shared), evtchn, kick))
    }
}

/// Destroys a half-created domain when dropped (forgotten once creation succeeded).
struct DestroyOnError<'a> {
    handles: &'a Handles,
    domid: u32,
}

impl Drop for DestroyOnError<'_> {
    fn drop(&mut self) {
        let _ = self.handles.xc.destroy(self.domid);
    }
}

/// The HAP paging pool a domain needs (as libxl sizes it: 1 MiB per vCPU plus 8 KiB per
/// MiB of RAM), rounded up to a MiB, with one MiB to spare.
fn paging_pool_bytes(vcpus: u32, ram_bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let bytes = u64::from(vcpus) * MIB + ram_bytes / 128 + MIB;
    bytes.next_multiple_of(MIB)
}

impl VmShared {
    /// vCPU `id`'s slot in the ioreq page (a PVH domain's only).
    pub(crate) fn slot(&self, id: u32) -> Option<Slot<'_>> {
        self.hvm.as_ref().and_then(|hvm| hvm.page.slot(id))
    }

    /// The domain's ioreq server, for memory types (a PVH domain's only).
    pub(crate) fn server(&self) -> Option<Server<'_>> {
        self.hvm.as_ref().map(|hvm| Server {
            dm: &self.handles.dm,
            xc: &self.handles.xc,
            domid: self.domid as u16,
            id: hvm.server_id,
        })
    }

    /// Frees the frames of `range`: a PV domain's are `frames` (machine frames).
    fn release(&self, range: GuestRange, frames: &mut [XenPfn]) -> Result<(), XenCallError> {
        match self.kind() {
            DomainKind::Pvh => ram::release(self.xc(), self.domid, range),
            DomainKind::Pv => self.xc().decrease_reservation(self.domid, 0, frames),
        }
    }

    /// What kind of domain this is.
    pub(crate) fn kind(&self) -> DomainKind {
        if self.hvm.is_some() {
            DomainKind::Pvh
        } else {
            DomainKind::Pv
        }
    }

    pub(crate) fn xc(&self) -> &super::libs::Xc {
        &self.handles.xc
    }

    pub(crate) fn domain_info(&self) -> Result<DomainInfo, XenCallError> {
        self.xc()
            .domain_info(self.domid)?
            .ok_or_else(|| XenCallError {
                op: "xc_domain_getinfolist (the domain is gone)",
                source: io::Error::from_raw_os_error(libc::ESRCH),
            })
    }

    /// The guest's RAM as it is mapped now.
    pub(crate) fn guest_memory(&self) -> GuestMemoryMmap {
        lock(&self.regions).memory()
    }

    /// Runs `f` with the control lock held (the caller passes its guard) and the domain
    /// paused; the domain is unpaused whatever `f` returns.
    pub(crate) fn with_paused<R, E: From<XenCallError>>(
        &self,
        _control: &MutexGuard<'_, Control>,
        f: impl FnOnce(&Self) -> Result<R, E>,
    ) -> Result<R, E> {
        self.xc().pause(self.domid)?;
        let result = f(self);
        let unpaused = self.xc().unpause(self.domid);
        let value = result?;
        unpaused?;
        Ok(value)
    }

    pub(crate) fn control(&self) -> MutexGuard<'_, Control> {
        lock(&self.control)
    }

    /// The domain's monitor ring, if a vCPU has debugged.
    pub(crate) fn monitor(&self) -> Option<Arc<super::debug::Monitor>> {
        lock(&self.monitor).clone()
    }

    /// The domain's monitor ring (see the `debug` module), set up on first use. Its page
    /// goes, for the moment of the setup, at the first frame above guest RAM.
    pub(crate) fn enable_monitor(&self) -> Result<Arc<super::debug::Monitor>, XenCallError> {
        let mut monitor = lock(&self.monitor);
        if let Some(monitor) = &*monitor {
            return Ok(Arc::clone(monitor));
        }
        // Held so that no region appears at that frame meanwhile.
        let regions = lock(&self.regions);
        let end = regions
            .iter()
            .map(|(_, r)| r.guest_addr().0.saturating_add(r.size()))
            .max()
            .unwrap_or(0);
        let gfn = end.div_ceil(4096).max(1);
        let enabled = Arc::new(super::debug::Monitor::enable(
            self,
            gfn,
            self.config.max_vcpus as usize,
        )?);
        drop(regions);
        *monitor = Some(Arc::clone(&enabled));
        Ok(enabled)
    }

    /// With a split irqchip, the vectors the vCPUs watch for the guest's EOI (`eoi.rs`).
    pub(crate) fn eoi_watch(&self) -> Option<&super::eoi::EoiWatch> {
        self.interrupts.as_ref().and_then(Interrupts::eoi_watch)
    }
}

impl Drop for VmShared {
    fn drop(&mut self) {
        let dom = self.domid as u16;
        if let Some(hvm) = self.hvm.take() {
            drop(hvm.page);
            let _ = self
                .handles
                .dm
                .set_ioreq_server_state(dom, hvm.server_id, false);
            let _ = self.handles.dm.destroy_ioreq_server(dom, hvm.server_id);
        }
        // Unmap guest RAM first (unless a caller still holds a view of it), so that Xen can
        // free the domain's memory right away.
        let regions = std::mem::replace(&mut *lock(&self.regions), RegionTable::new(0));
        drop(regions);
        let _ = self.handles.xc.destroy(self.domid);
    }
}

impl XenVm {
    fn grow_limits(&self, table: &RegionTable, extra: u64) -> Result<(), XenCallError> {
        let ram: u64 = table.iter().map(|(_, r)| r.size()).sum::<u64>() + extra;
        let shared = &self.shared;
        let info = shared.domain_info()?;
        // Frames of removed regions that a caller still maps stay charged to the domain.
        let kb = (info.tot_pages * 4).saturating_add(extra / 1024) + MAXMEM_SLACK_KB;
        shared
            .xc()
            .set_max_mem_kb(shared.domid, kb.max(ram / 1024 + MAXMEM_SLACK_KB))?;
        if shared.kind() == DomainKind::Pvh {
            shared.xc().set_paging_mempool_size(
                shared.domid,
                paging_pool_bytes(shared.config.max_vcpus, ram),
            )?;
        }
        Ok(())
    }

    /// Whether this is a PVH or a PV domain.
    pub fn kind(&self) -> DomainKind {
        self.shared.kind()
    }

    /// The machine frame number behind guest-physical address `addr` of a PV domain (a PV
    /// guest's page tables, and its `CR3`, hold machine frame numbers), or `None` if this is
    /// not a PV domain or `addr` is not in one of its regions.
    pub fn pv_machine_frame(&self, addr: u64) -> Option<u64> {
        let frames = lock(&self.shared.pv_frames);
        let (start, frames) = frames.range(..=addr).next_back()?;
        frames.get(((addr - start) >> 12) as usize).copied()
    }

    /// Gives up vmkit's mapping of the region in `slot` of a PV domain, keeping its frames
    /// in the guest: Xen lets a PV guest use a frame as a page table only while nothing
    /// else maps it writable, so the VMM writes the page tables into a region of their own
    /// and seals it before setting the vCPU's start state. The region leaves
    /// [`Vm::memory`] and the slot becomes free; its frames go with the domain. Every
    /// [`GuestMemoryMmap`] obtained before that includes the region must be dropped too.
    pub fn seal_pv_region(&self, slot: MemorySlot) -> Result<(), VmError> {
        if self.kind() != DomainKind::Pv {
            return Err(VmError::Unsupported {
                op: "sealing a region",
                reason: "only a PV domain's page tables need it; this is a PVH domain",
            });
        }
        lock(&self.shared.regions).remove(slot)?;
        Ok(())
    }
}

impl Vm for XenVm {
    fn clock(&self) -> Result<ClockState, VmError> {
        let shared = &self.shared;
        if shared.kind() != DomainKind::Pvh {
            return Err(VmError::Unsupported {
                op: "reading the VM clock",
                reason: NO_PV_CLOCK,
            });
        }
        let (first, base) = {
            let control = shared.control();
            (control.created.iter().position(|&c| c), control.clock)
        };
        let Some(first) = first else {
            return Ok(ClockState {
                ns: base.now(),
                stable: true,
            });
        };
        let (tsc, khz) = shared
            .guest_tsc(first as u32)
            .map_err(clock_error("reading the VM clock"))?;
        Ok(ClockState {
            ns: clock::ticks_to_ns(tsc, khz).unwrap_or(0),
            // Every vCPU's TSC was set together; the guest may have written its own since.
            stable: false,
        })
    }

    fn set_clock(&self, clock: &ClockState) -> Result<(), VmError> {
        let shared = &self.shared;
        if shared.kind() != DomainKind::Pvh {
            return Err(VmError::Unsupported {
                op: "setting the VM clock",
                reason: NO_PV_CLOCK,
            });
        }
        let vcpus: Vec<u32> = {
            let control = shared.control();
            (0..shared.config.max_vcpus)
                .filter(|&id| control.created[id as usize])
                .collect()
        };
        if !vcpus.is_empty() {
            shared
                .set_guest_time(&vcpus, clock.ns)
                .map_err(clock_error("setting the VM clock"))?;
        }
        shared.control().clock = ClockBase::at(clock.ns);
        Ok(())
    }

    fn add_memory_region(&self, region: MemoryRegion) -> Result<MemorySlot, VmError> {
        let range = region.range();
        let shared = &self.shared;
        // Both need the ioreq server's memory type, which only a PVH domain has.
        for (flag, feature) in [
            (MemoryFlags::READ_ONLY, "read-only memory in a PV domain"),
            (MemoryFlags::LOG_DIRTY, "dirty-page logging in a PV domain"),
        ] {
            if region.flags().contains(flag) && shared.kind() == DomainKind::Pv {
                return Err(VmError::RegionUnsupported { range, feature });
            }
        }
        let mut table = lock(&shared.regions);
        let slot = table.reserve(&region)?;
        let map_err = |op: &'static str, source: io::Error| VmError::MapRegion {
            op,
            slot,
            range,
            source,
        };
        self.grow_limits(&table, range.size)
            .map_err(|e| map_err(e.op, e.source))?;
        let mut frames = match shared.kind() {
            DomainKind::Pvh => {
                ram::populate(shared.xc(), shared.domid, range)
                    .map_err(|e| map_err(e.op, e.source))?;
                ram::frames_of(range)
            }
            DomainKind::Pv => ram::populate_pv(shared.xc(), shared.domid, range)
                .map_err(|e| map_err(e.op, e.source))?,
        };
        let logged = region.flags().contains(MemoryFlags::LOG_DIRTY);
        let mapping = match ram::map(
            &shared.handles.privcmd,
            shared.domid,
            range,
            &frames,
            logged,
        ) {
            Ok(mapping) => mapping,
            Err(err) => {
                let _ = shared.release(range, &mut frames);
                return Err(map_err(
                    "mapping guest frames into vmkit",
                    io::Error::other(err),
                ));
            }
        };
        // Xen's fresh frames may hold an earlier domain's data: every page is written.
        ram::copy_region(region.mapping(), &mapping, true);
        if let Some(server) = shared.server() {
            let mut protected = lock(&shared.protected);
            let done = if region.flags().contains(MemoryFlags::READ_ONLY) {
                protected.protect(server, range)
            } else if logged {
                protected.track(server, range)
            } else {
                Ok(())
            };
            if let Err(err) = done {
                let _ = protected.unprotect(server, range);
                drop(mapping);
                let _ = shared.release(range, &mut frames);
                return Err(map_err(err.op, err.source));
            }
        }
        table.commit(slot, MemoryRegion::from_mapping(mapping, region.flags()));
        if shared.kind() == DomainKind::Pv {
            lock(&shared.pv_frames).insert(range.start, frames);
        }
        Ok(slot)
    }

    fn remove_memory_region(&self, slot: MemorySlot) -> Result<MemoryRegion, VmError> {
        let shared = &self.shared;
        let mut table = lock(&shared.regions);
        let region = table.get(slot)?.clone();
        let range = region.range();
        let copy =
            MemoryRegion::anonymous(region.guest_addr(), range.size as usize, region.flags())?;
        ram::copy_region(region.mapping(), copy.mapping(), false);
        let protected = region
            .flags()
            .intersects(MemoryFlags::READ_ONLY | MemoryFlags::LOG_DIRTY);
        if let (true, Some(server)) = (protected, shared.server()) {
            lock(&shared.protected)
                .unprotect(server, range)
                .map_err(|e| VmError::MapRegion {
                    op: e.op,
                    slot,
                    range,
                    source: e.source,
                })?;
        }
        let mut frames = match shared.kind() {
            DomainKind::Pvh => Vec::new(),
            DomainKind::Pv => lock(&shared.pv_frames)
                .remove(&range.start)
                .unwrap_or_default(),
        };
        shared
            .release(range, &mut frames)
            .map_err(|e| VmError::MapRegion {
                op: e.op,
                slot,
                range,
                source: e.source,
            })?;
        table.remove(slot)?;
        Ok(copy)
    }

    fn memory(&self) -> GuestMemoryMmap {
        self.shared.guest_memory()
    }

    fn memory_layout(&self) -> Vec<(MemorySlot, GuestRange, MemoryFlags)> {
        lock(&self.shared.regions)
            .iter()
            .map(|(slot, region)| (slot, region.range(), region.flags()))
            .collect()
    }

    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, VmError> {
        Ok(Box::new(self.create_xen_vcpu(id)?))
    }

    fn dirty_log_mode(&self) -> DirtyLogMode {
        // Rings are emulated (see `dirtyring`): the harvest below serves both modes.
        match self.shared.config.dirty_ring {
            Some(entries) => DirtyLogMode::Ring { entries },
            None => DirtyLogMode::Bitmap,
        }
    }

    fn harvest_dirty_log(&self) -> Result<DirtyLog, VmError> {
        let shared = &self.shared;
        let table = lock(&shared.regions);
        let tracked: Vec<(MemorySlot, GuestRange)> = table
            .iter()
            .filter(|(_, r)| r.flags().contains(MemoryFlags::LOG_DIRTY))
            .map(|(slot, r)| (slot, r.range()))
            .collect();
        let Some(server) = shared.server() else {
            return Ok(DirtyLog::default());
        };
        let regions = lock(&shared.protected)
            .harvest(server, &tracked)
            .map_err(|err| VmError::Os {
                op: err.op,
                source: err.source,
            })?;
        Ok(DirtyLog {
            regions,
            // Xen's bitmap has no size limit; an emulated ring never drops a page.
            overflowed: false,
        })
    }

    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), VmError> {
        self.interrupts("setting an interrupt line")?
            .set_irq_line(gsi, level)
    }

    fn signal_msi(&self, msi: crate::MsiMessage) -> Result<(), VmError> {
        self.interrupts("sending an MSI")?.signal_msi(msi)
    }

    fn set_gsi_routing(&self, routes: &[crate::IrqRoute]) -> Result<(), VmError> {
        self.interrupts("setting the GSI routing")?
            .set_gsi_routing(routes)
    }

    fn register_irqfd(
        &self,
        fd: &vmm_sys_util::eventfd::EventFd,
        gsi: u32,
        resample: Option<&vmm_sys_util::eventfd::EventFd>,
    ) -> Result<(), VmError> {
        self.interrupts("registering an irqfd")?
            .register_irqfd(fd, gsi, resample)
    }

    fn unregister_irqfd(
        &self,
        fd: &vmm_sys_util::eventfd::EventFd,
        gsi: u32,
    ) -> Result<(), VmError> {
        self.interrupts("unregistering an irqfd")?
            .unregister_irqfd(fd, gsi)
    }

    fn register_ioeventfd(
        &self,
        fd: &vmm_sys_util::eventfd::EventFd,
        addr: crate::IoEventAddress,
        datamatch: crate::DataMatch,
    ) -> Result<(), VmError> {
        self.require_ioreqs("registering an ioeventfd")?;
        self.shared.ioeventfds.register(fd, addr, datamatch)
    }

    fn unregister_ioeventfd(
        &self,
        fd: &vmm_sys_util::eventfd::EventFd,
        addr: crate::IoEventAddress,
        datamatch: crate::DataMatch,
    ) -> Result<(), VmError> {
        self.require_ioreqs("unregistering an ioeventfd")?;
        self.shared.ioeventfds.unregister(fd, addr, datamatch)
    }

    // The irqchip and PIT state: Xen's HVM records (see `platform_state`).
    fn irqchip_state(&self) -> Result<crate::arch::x86_64::IrqchipState, VmError> {
        self.full_irqchip("reading the irqchip state")?;
        super::platform_state::irqchip_state(&self.shared)
    }

    fn set_irqchip_state(&self, state: &crate::arch::x86_64::IrqchipState) -> Result<(), VmError> {
        self.full_irqchip("setting the irqchip state")?;
        super::platform_state::set_irqchip_state(&self.shared, state)
    }

    fn pit_state(&self) -> Result<crate::arch::x86_64::PitState, VmError> {
        self.require_pit("HVM record PIT (reading)")?;
        super::platform_state::pit_state(&self.shared)
    }

    fn set_pit_state(&self, state: &crate::arch::x86_64::PitState) -> Result<(), VmError> {
        self.require_pit("HVM record PIT (loading)")?;
        super::platform_state::set_pit_state(&self.shared, state)
    }

    fn set_pit_reinject(&self, reinject: bool) -> Result<(), VmError> {
        self.require_pit("HVM_PARAM_TIMER_MODE")?;
        super::platform_state::set_pit_reinject(&self.shared, reinject)
    }

    fn claim_pci_config(&self, functions: crate::pci::PciFunctions) -> Result<(), VmError> {
        let op = "claiming PCI configuration cycles";
        self.require_ioreqs(op)?;
        let server = self.shared.server().ok_or(VmError::Unsupported {
            op,
            reason: "the domain has no ioreq server",
        })?;
        self.shared.pci.claim(server, functions)
    }

    fn release_pci_config(&self, functions: crate::pci::PciFunctions) -> Result<(), VmError> {
        let op = "releasing PCI configuration cycles";
        self.require_ioreqs(op)?;
        let server = self.shared.server().ok_or(VmError::Unsupported {
            op,
            reason: "the domain has no ioreq server",
        })?;
        self.shared.pci.release(server, functions)
    }
}

impl XenVm {
    /// The interrupt plumbing, or the error for `op` on a VM without Xen's platform.
    fn interrupts(&self, op: &'static str) -> Result<&Interrupts, VmError> {
        match (&self.shared.interrupts, self.kind()) {
            (Some(interrupts), _) => Ok(interrupts),
            (None, DomainKind::Pv) => Err(VmError::Unsupported {
                op,
                reason: "a PV domain has no emulated interrupt controllers",
            }),
            (None, DomainKind::Pvh) => Err(VmError::NoIrqchip { op }),
        }
    }

    /// Refuses `op` unless the VM has Xen's PICs and IOAPIC (not a split irqchip).
    fn full_irqchip(&self, op: &'static str) -> Result<(), VmError> {
        if self.interrupts(op)?.is_split() {
            return Err(VmError::SplitIrqchip { op });
        }
        Ok(())
    }

    /// Refuses `op` unless the VM asked for the PIT ([`VmConfig::pit`], which implies Xen's
    /// platform).
    fn require_pit(&self, op: &'static str) -> Result<(), VmError> {
        self.interrupts(op)?;
        if self.shared.config.pit {
            Ok(())
        } else {
            Err(VmError::NoPit { op })
        }
    }

    /// Refuses `op` on a PV domain, which sends vmkit no I/O requests.
    fn require_ioreqs(&self, op: &'static str) -> Result<(), VmError> {
        match self.kind() {
            DomainKind::Pvh => Ok(()),
            DomainKind::Pv => Err(VmError::Unsupported {
                op,
                reason: "a PV domain sends vmkit no I/O requests",
            }),
        }
    }
}

/// Reads the domain's CPUID policy.
pub(crate) fn domain_cpuid(
    shared: &VmShared,
) -> Result<Vec<super::sys::abi::CpuidLeaf>, XenCallError> {
    shared.xc().cpuid_policy(PolicySource::Domain(shared.domid))
}

/// Whether `run()` has unpaused the domain yet (CPUID may only change before).
pub(crate) fn started(shared: &VmShared) -> bool {
    shared.control().started
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paging_pool_grows_with_vcpus_and_ram() {
        assert_eq!(paging_pool_bytes(1, 0), 2 << 20);
        assert_eq!(paging_pool_bytes(4, 0), 5 << 20);
        // 8 KiB per MiB of RAM: 4 GiB needs 32 MiB more.
        assert_eq!(paging_pool_bytes(1, 4 << 30), 34 << 20);
    }
}
