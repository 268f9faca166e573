//! The Xen backend (cargo feature `xen`): vmkit's VMs as PVH domains of a Xen 4.17 host,
//! driven from dom0, with vmkit as their device model (and, through [`Xen::create_pv_vm`],
//! 64-bit PV domains).
//!
//! [`Xen`] opens the hypervisor; its VMs are [`XenVm`]s and their vCPUs [`XenVcpu`]s, used
//! through the same [`Hypervisor`], [`Vm`] and [`Vcpu`](crate::Vcpu) traits as KVM.
//!
//! ```no_run
//! use vmkit::{xen::Xen, Hypervisor, VmConfig};
//!
//! let xen = Xen::new()?;
//! let vm = xen.create_vm(&VmConfig::default())?;
//! # Ok::<(), vmkit::Error>(())
//! ```
//!
//! # How vmkit talks to Xen
//!
//! Through Xen's own C libraries, as Debian's `libxen-dev` ships them for Xen 4.17:
//! libxenctrl (domain control: create, pause, memory, vCPU and HVM context), libxenguest
//! (CPU policies, resuming a domain), libxendevicemodel (the ioreq server), libxenforeignmemory
//! (mapping the ioreq page) and libxenevtchn (event channels); plus one privcmd ioctl,
//! `IOCTL_PRIVCMD_MMAPBATCH_V2`, to map guest RAM. The libraries, not raw hypercalls,
//! because the domctl interface that most of this uses is unstable: its structures and
//! version number change with every Xen release, and libxenctrl is the layer Xen keeps in
//! step with it (it fills in `XEN_DOMCTL_INTERFACE_VERSION`, bounces buffers into
//! hypercall-safe memory, retries preempted operations). The bindings are tied to Xen
//! 4.17; the structures vmkit itself passes (domain creation, domain and vCPU information,
//! HVM save records, vCPU contexts, the ioreq slot) are checked against the installed C
//! headers by a test (`sys::layout_tests`). Guest RAM is mapped with the privcmd ioctl
//! directly (a stable Linux ABI) so that vm-memory, not the library, owns the mapping; see
//! the `memory` module for why. Building with the `xen` feature therefore needs
//! libxen-dev; running needs those libraries, a Xen dom0 and root.
//!
//! # What a vmkit VM is on Xen
//!
//! A PVH domain: an HVM container with hardware-assisted paging and only a local APIC
//! emulated by Xen (`XEN_X86_EMU_LAPIC`), no firmware, no QEMU. With
//! [`VmConfig::irqchip`] it is an HVM domain with Xen's whole emulated platform instead
//! (PICs, IOAPIC, PIT, RTC, HPET, ACPI PM timer besides the local APICs: the other set of
//! emulation flags Xen 4.17 accepts for a guest; see the `platform` module for the ranges
//! Xen then claims, which [`Capabilities::reserved`] lists as data), still without firmware
//! or QEMU. vmkit registers itself as
//! the domain's only ioreq server for all of port and MMIO space, so every port or MMIO
//! access that Xen does not handle itself (the local APIC, port 0xE9) becomes an ioreq,
//! which `run()` returns as the same [`VcpuExit`](crate::VcpuExit)s as KVM's. Guest RAM
//! is populated on [`Vm::add_memory_region`] and the caller's contents are copied in;
//! [`Vm::remove_memory_region`] copies the guest's contents out into a fresh region and
//! frees the frames. A VM is destroyed, frames and all, when the last handle to it goes.
//!
//! A vCPU runs only while its thread is in `run()`, as on KVM: outside it, vmkit keeps the
//! vCPU offline in Xen, or it is waiting for vmkit's answer to an I/O request. A kick wakes
//! `run()` through an eventfd next to the event channel; see `control.rs` for how vCPUs are
//! stopped and started, and how loading one vCPU's HVM state spares the others' I/O.
//!
//! Differences from KVM that a VMM sees:
//! - `hlt` with interrupts disabled returns [`VcpuExit::Hlt`](crate::VcpuExit::Hlt), as on
//!   KVM (Xen takes such a vCPU offline, and powers the domain off once all are; vmkit
//!   notices within [`MAX_CHECK_INTERVAL`], undoes the power-off, and brings the vCPU back
//!   on the next `run()`). With interrupts enabled the vCPU sleeps in Xen until an
//!   interrupt.
//! - A triple fault ends the domain; `run()` returns
//!   [`VcpuExit::Shutdown`](crate::VcpuExit::Shutdown). Guest shutdown hypercalls (power
//!   off, reboot, crash) become [`VcpuExit::SystemEvent`](crate::VcpuExit::SystemEvent)
//!   with the Xen reason code as data. Either way `run()` keeps returning it.
//! - Xen lets HVM guests reach the real port 0x80 (and 0xED) with byte accesses, unless it
//!   was booted with `hvm_port80=0`: those never exit. Port 0xE9 is Xen's debug console.
//! - At an MMIO exit (and a string port access's) the instruction has not retired yet:
//!   `rip` still points at it until the next `run()` completes it. An `in` or `out` has
//!   retired at its exit: Xen moves `rip` past it before sending the request, and writes an
//!   `in`'s answer into `rax` on the next `run()`.
//! - State writes while the vCPU's own access is in flight (between an exit and the next
//!   `run()`, e.g. a vCPU paused by a kick or the runner): taken when the access is an
//!   `out`, which Xen has retired and takes nothing back from (the write applies to the
//!   state after the `out`, as on KVM after `complete_pending_io`); refused with
//!   `VcpuError::InvalidState` for any other access (a port read, a string access, MMIO):
//!   Xen writes their answer into the vCPU or emulates the instruction again on the next
//!   `run()`, and a write cancels that emulation. So
//!   `Capabilities::state_writes_mid_io` holds for port writes only. Loads of the VM's
//!   own state (the irqchip's, the PIT's, the clock's) go through whatever the vCPUs are
//!   doing: they keep every vCPU's record as it is (the clock's moves only the TSC), and
//!   an access in flight is answered again.
//! - A kick that finds the vCPU running first waits a little for its next I/O request
//!   (four times its recent answer-to-request time, 1 to 50 ms) and, if it comes, serves
//!   it: a request that needs the VMM is this `run()`'s exit and the kick ends the next
//!   `run()` (as on KVM, where a kick racing an exit does the same). So a kicked vCPU never
//!   holds a request the VMM has not seen, which a state write could otherwise leave to be
//!   served in the new state's timeline. Otherwise the kick takes the vCPU offline.
//! - Read-only regions use the ioreq server's memory type (`p2m_ioreq_server`, writes only;
//!   see `memtype.rs`): a guest write to one is an [`MmioWrite`](crate::VcpuExit::MmioWrite)
//!   exit and RAM keeps its contents, as on KVM. Dirty-page logging uses Xen's log-dirty
//!   mode while a region logs (`logdirty.rs`): domain-wide, so every RAM page's first write
//!   after a harvest faults into Xen, logged region or not; only the logged regions' pages
//!   are reported. Dirty rings ([`VmConfig::dirty_ring`]) are emulated over the same mode
//!   (`dirtyring.rs`, `Capabilities::dirty_ring_emulated`): the same harvest, a ring that
//!   never fills because Xen's bitmap keeps what a ring would not hold.
//! - Interrupts need [`VmConfig::irqchip`] (see the `irq` module): IRQ lines go through
//!   Xen's device-model operations (GSI `n` is ISA IRQ `n` for 1-15 and a PCI INTx for
//!   16-47; GSI 0 cannot be raised, Xen wires ISA IRQ 0 to pin 2), MSIs through
//!   `xendevicemodel_inject_msi`; GSI routing accepts Xen's fixed wiring plus MSI routes;
//!   irqfds are served by a thread of the library. An irqfd with `resample` is held high
//!   until the guest's EOI, which the thread reads from the IOAPIC's HVM record every
//!   millisecond while such a line is high (Xen sends a device model no EOI notice; see
//!   `resample.rs`). A split irqchip
//!   ([`VmConfig::split_irqchip`](crate::VmConfig::split_irqchip)) is a domain with Xen's
//!   local APICs only (the PVH set) and only MSI routes: the VMM's IOAPIC serves its MMIO
//!   window through the ioreq server and sends MSIs; a level-triggered one is watched in
//!   the target's local APIC registers until the guest ends it, which that vCPU's `run()`
//!   returns as [`VcpuExit::IoapicEoi`](crate::VcpuExit::IoapicEoi) (see `eoi.rs`). With
//!   an irqchip a halted vCPU stays halted in Xen, as in KVM, instead of returning `Hlt`. Xen's PIT always comes with the platform
//!   (ports 0x40-0x43 and 0x61 are Xen's whenever the VM has the irqchip):
//!   [`VmConfig::pit`] asks for its state calls, which read and load Xen's HVM records,
//!   as do the PIC and IOAPIC state calls (see `platform_state.rs` for how each field maps,
//!   and what is refused: IOAPIC pins 24-47, which vmkit's type lacks, an IOAPIC IRR, PIT
//!   load times that Xen restarts as KVM does). The PIT's lost-tick policy is Xen's
//!   domain-wide `HVM_PARAM_TIMER_MODE`, so it covers Xen's other emulated timers too
//!   (RTC, HPET, local APIC timer): reinjection is `no_delay_for_missed_ticks` (vmkit's
//!   default, as libxl's), none is `one_missed_tick_pending`.
//!   An application processor waits offline in Xen for the INIT and startup IPIs that its
//!   local APIC takes (Xen brings it up), as on KVM: its `mp_state` is `Uninitialized` until
//!   it first runs, and `set_mp_state(Runnable)` makes its first `run()` start it from the
//!   registers set instead. Xen numbers vCPU n's local APIC 2n
//!   (`Capabilities::apic_id_stride`).
//! - PCI configuration cycles on ports 0xCFC-0xCFF reach vmkit only for the functions
//!   mapped to its ioreq server, which [`Vm::claim_pci_config`]
//!   does (the `pci` module); Xen's `IOREQ_TYPE_PCI_CONFIG` request becomes the data-port
//!   exit the guest's instruction is (the `ioreq` module), after the 0xCF8 write Xen
//!   forwarded too, so the VMM sees what it sees on KVM. Unclaimed functions read all ones.
//! - CPUID: Xen answers the hypervisor leaves (0x40000000 up) itself, with its signature
//!   and at least its leaf 0x40000002 (the hypercall page): a guest always sees Xen there.
//!   `set_cpuid` leaves the entries of that range out (KVM's signature and features leaf,
//!   which vmkit-boot's Linux CPUID has). A Linux guest therefore takes Xen's paravirtual
//!   interfaces that need no toolstack (its clock, event channels, the vector callback);
//!   with no xenstore for the domain, its xenbus finds nothing and it uses vmkit's devices.
//! - ioeventfds (with or without an irqchip) are matched in the ioreq path: a single
//!   write to a registered address and value signals the eventfd and is answered without
//!   returning from `run()`.
//! - XSAVE state and XCR0 travel in Xen's `CPU_XSAVE` HVM record (standard format; vmkit
//!   exchanges at least KVM's 4 KiB area), offered when the host has XSAVE. Xen keeps no
//!   record for a vCPU whose XCR0 was never set, nor in a domain whose CPUID policy has no
//!   XSAVE: it reads as XCR0 = 1 with its FXSAVE image (as KVM reports such a vCPU), and in
//!   such a domain only that is taken (XCR0 1, x87 and SSE state, set through the image). Every state load carries each vCPU's XSAVE record, since loading a CPU record
//!   resets the components above SSE, and marks the FPU initialised when it loads an XSAVE
//!   area (Xen would otherwise reset that area at the next vCPU context set). A vCPU
//!   context set (`xc_vcpu_setcontext`) also resets XSTATE_BV to x87 and SSE (Xen's
//!   `vcpu_setup_fpu`, which nothing in the call skips): setting registers or the FPU,
//!   single-stepping, and vmkit's own offline/online moves (a kick, a read of an offline
//!   vCPU's records) are context sets. In a domain whose CPUID policy has XSAVE, vmkit
//!   therefore reads the vCPU's XSAVE record before each one and loads it back after (the
//!   domain paused; with the x87 and SSE state just set), and keeps the record of a vCPU it
//!   takes offline until the vCPU comes back online (an XSAVE read of it returns that
//!   record). That costs a record read and a load per context set, in such domains only.
//! - vCPU events are the CPU record's `pending_event`: the one event being injected (an
//!   exception with its error code, an external interrupt, an NMI). The record has no NMI
//!   pending or masked bit, no interrupt shadow and no SMM, and Xen drops an injected
//!   software interrupt, `#BP` or `#OF` on load (the guest executes the instruction
//!   again): those read as clear, and `set_vcpu_events` refuses them with
//!   [`VcpuError::EventFieldUnsupported`](crate::VcpuError::EventFieldUnsupported) naming
//!   the field ([`Capabilities::vcpu_event_fields`] is all false). `sipi_vector` is not kept
//!   (it matters only for a vCPU waiting in `SipiReceived`, which a Xen vCPU cannot be set
//!   to).
//! - The VM clock is the guest's TSC in nanoseconds at the domain's TSC frequency (see the
//!   `clock` module): setting it moves every vCPU's TSC together, and a vCPU created later
//!   starts at the clock's value. A PV domain has none ([`VmError::Unsupported`](crate::VmError::Unsupported)).
//! - Guest debugging (single-stepping, hardware breakpoints) takes debug exceptions from
//!   Xen's monitor vm_event ring (see the `debug` module): single-stepping sets RFLAGS.TF in
//!   the guest, hidden from `regs()` as KVM does on AMD, since Xen 4.17 steps with VMX's
//!   monitor trap flag only; the breakpoints are DR0-DR3 and DR7 of the vCPU's CPU record.
//!   A debug exit's DR6 is composed by vmkit (BS while single-stepping, B0-B3 for the
//!   breakpoints at its address), since Xen's event carries none on AMD. PV vCPUs refuse.
//! - A vCPU loaded halted (`set_mp_state(Halted)`, with the irqchip as on KVM): Xen's HVM
//!   records have no halted state, so its first `run()` moves `rip` back onto its `hlt`
//!   (the byte there must be 0xF4) unless an interrupt is deliverable to it at once, and
//!   the vCPU halts again in Xen; see the `halted` module and
//!   [`Capabilities::halted_vcpus`] for the one race. `mp_state` reads `Halted` for a vCPU
//!   the guest halted: offline in Xen (`cli; hlt`), or blocked in Xen (`sti; hlt`) when a
//!   kick took it out of `run()`.
//! - Machine checks: Xen's virtual MCE keeps state for two banks per vCPU
//!   ([`Capabilities::mce_banks`] is 2); `setup_mce` takes 1 or 2 and loads the vCPU's
//!   `VMCE_VCPU` record with that count and MCG_CTL_P, keeping Xen's vendor bits. MCG_CTL
//!   reads all ones with MCG_CTL_P (zero without) and takes no other value, MCG_CAP changes
//!   only through `setup_mce`, and MCG_STATUS is not offered (it is not in the record; see
//!   the `mce` module). The TSC-deadline timer ([`Capabilities::tsc_deadline_timer`]) is
//!   Xen's vlapic's, offered when the host has it.
//! - Exits cost more: every one is a round trip through Xen's scheduler and an event
//!   channel, and state access goes through domctls.
//!
//! Setting `VMKIT_XEN_TRACE` makes the backend log its vCPU transitions and every ioreq to
//! stderr; `VMKIT_XEN_DEBUG` lets Xen's libraries log their own errors there.

/// Prints a line on stderr when `VMKIT_XEN_TRACE` is set (read once), for debugging the
/// backend on a real Xen: vCPU transitions, status checks, ioreqs.
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::xen::tracing() {
            eprintln!("vmkit-xen: {}", format_args!($($arg)*));
        }
    };
}

/// Whether `VMKIT_XEN_TRACE` is set.
pub(crate) fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("VMKIT_XEN_TRACE").is_some())
}

mod clock;
mod context;
mod control;
pub(crate) mod debug;
mod dirtyring;
mod eoi;
mod halted;
mod ioeventfd;
mod ioreq;
mod irq;
mod kick;
mod libs;
mod logdirty;
mod mce;
mod memory;
mod memtype;
mod page;
mod pci;
mod platform;
mod platform_state;
mod pv;
mod resample;
#[cfg(feature = "seccomp")]
pub(crate) mod seccomp;
mod sys;
mod vcpu;
mod vm;

use std::fs::{File, OpenOptions};
use std::sync::Arc;

use crate::arch::x86_64::CpuidEntry;
use crate::hypervisor::{Capabilities, Hypervisor, HypervisorError, HypervisorKind, VmConfig};
use crate::vm::Vm;

use libs::{DeviceModel, ForeignMemory, PolicySource, Xc, XenCallError};
use sys::abi::{
    CpuidLeaf, XEN_CPUID_NO_SUBLEAF, XEN_SYSCTL_CPU_POLICY_HVM_DEFAULT, XEN_SYSCTL_PHYSCAP_HAP,
    XEN_SYSCTL_PHYSCAP_HVM, XEN_SYSCTL_PHYSCAP_PV,
};

pub use pv::{
    PvConsole, PvDomain, PvError, PvLinuxConfig, PvShutdown, PvState, RingError, StoreError,
    PV_MAX_CMDLINE_BYTES, PV_MAX_INITRD_BYTES, PV_MAX_KERNEL_BYTES, PV_MAX_MEM_MIB, PV_MAX_VCPUS,
    PV_MIN_MEM_MIB,
};
pub use vcpu::{PvStart, XenVcpu, INVALID_IOREQ, MAX_CHECK_INTERVAL};
pub use vm::{DomainKind, XenVm};

/// The device node of the privcmd driver, through which dom0 talks to Xen.
pub const PRIVCMD_PATH: &str = "/dev/xen/privcmd";

/// The most vCPUs a PVH domain may have (`HVM_MAX_VCPUS`; also what one ioreq page holds).
const MAX_VCPUS: u32 = 128;

/// How many memory regions a VM may have; each is one privcmd mapping, so the limit is
/// vmkit's, not Xen's.
const MAX_MEMORY_SLOTS: u32 = 256;

/// The library handles every VM of one [`Xen`] shares.
#[derive(Debug)]
pub(crate) struct Handles {
    pub(crate) xc: Xc,
    pub(crate) dm: DeviceModel,
    pub(crate) fmem: Arc<ForeignMemory>,
    /// `/dev/xen/privcmd`, for mapping guest RAM (see [`memory`]).
    pub(crate) privcmd: Arc<File>,
}

fn hv_err(err: XenCallError) -> HypervisorError {
    HypervisorError::Os {
        op: err.op,
        source: err.source,
    }
}

/// Host memory as Xen accounts it, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMemory {
    /// All memory Xen manages.
    pub total: u64,
    /// Memory no domain owns.
    pub free: u64,
}

/// Xen, from dom0: an open `/dev/xen/privcmd` and the libraries' handles.
#[derive(Debug)]
pub struct Xen {
    handles: Arc<Handles>,
    capabilities: Capabilities,
    /// Xen's `XEN_SYSCTL_PHYSCAP_*` bits.
    physcaps: u32,
}

impl Xen {
    /// Opens Xen's control interfaces and reads the host's capabilities. Fails unless this
    /// is a Xen dom0 (with root) whose Xen can run HVM guests with hardware-assisted paging.
    pub fn new() -> Result<Self, HypervisorError> {
        let privcmd = OpenOptions::new()
            .read(true)
            .write(true)
            .open(PRIVCMD_PATH)
            .map_err(|source| HypervisorError::Open {
                path: PRIVCMD_PATH.into(),
                source,
            })?;
        let xc = Xc::open().map_err(hv_err)?;
        let physinfo = xc.physinfo().map_err(hv_err)?;
        let needed = XEN_SYSCTL_PHYSCAP_HVM | XEN_SYSCTL_PHYSCAP_HAP;
        if physinfo.capabilities & needed != needed {
            return Err(HypervisorError::Unsupported {
                feature:
                    "HVM guests with hardware-assisted paging (Xen's physinfo lacks hvm or hap)",
            });
        }
        let cpuid: Vec<CpuidEntry> = xc
            .cpuid_policy(PolicySource::System(XEN_SYSCTL_CPU_POLICY_HVM_DEFAULT))
            .map_err(hv_err)?
            .iter()
            .map(cpuid_entry)
            .collect();
        // XSAVE state and XCR0 travel in the CPU_XSAVE record, which Xen keeps only when
        // the host has XSAVE (CPUID leaf 1, ECX bit 26) and offers it to HVM guests.
        let xsave = cpuid
            .iter()
            .any(|e| e.function == 1 && e.index == 0 && e.ecx >> 26 & 1 == 1);
        let amd = amd_nested_paging(&cpuid);
        // Xen's vlapic emulates the TSC-deadline timer mode (`vlapic.c`: the LVT timer's
        // mode and MSR_IA32_TSC_DEADLINE), and its HVM policy offers it (CPUID.1:ECX bit 24)
        // exactly when the host has it (a plain `S` feature, not forced on as x2APIC is).
        let tsc_deadline_timer = cpuid
            .iter()
            .any(|e| e.function == 1 && e.index == 0 && e.ecx >> 24 & 1 == 1);
        let handles = Handles {
            xc,
            dm: DeviceModel::open().map_err(hv_err)?,
            fmem: ForeignMemory::open().map_err(hv_err)?,
            privcmd: Arc::new(privcmd),
        };
        let capabilities = Capabilities {
            max_vcpus: MAX_VCPUS,
            max_memory_slots: MAX_MEMORY_SLOTS,
            cpuid,
            msrs: context::MSRS.to_vec(),
            // Xen's vlapic: vCPU n has APIC ID 2n (and CPUID says so).
            apic_id_stride: 2,
            // Both through the ioreq server's memory type (see `memtype`).
            read_only_memory: true,
            dirty_log: true,
            // Rings emulated over log-dirty mode (see `dirtyring`).
            dirty_ring_max_entries: dirtyring::MAX_ENTRIES,
            dirty_ring_emulated: true,
            // Xen's platform (VmConfig::irqchip), with vmkit's MSI routes and irqfd thread.
            irqchip: true,
            irqfd: true,
            // Held high until the EOI the IOAPIC's record shows (see `resample`).
            irqfd_resample: true,
            // Xen's local APICs, the VMM's IOAPIC; level EOIs watched for (see `eoi`).
            split_irqchip: true,
            msi: true,
            gsi_routing: true,
            // Matched in the ioreq path.
            ioeventfd: true,
            reserved: platform::reserved_ranges(),
            // Config cycles go only to a server that mapped the device (see Capabilities).
            pci_config_ports: true,
            xsave,
            xcrs: xsave,
            // Xen's PIT, PICs and IOAPIC through their HVM records (see `platform_state`),
            // the lost-tick policy through HVM_PARAM_TIMER_MODE.
            pit: true,
            irqchip_state: true,
            pit_reinject_control: true,
            // The event being injected, through the CPU record; see `vcpu.rs` for what else
            // the record lacks (`vcpu_event_fields` stays all false).
            vcpu_events: true,
            // The guest TSC in nanoseconds (see `clock`).
            clock: true,
            // Through the monitor ring (see `debug`).
            guest_debug: true,
            // Read-only memory's page type is executable with EPT only (see Capabilities);
            // log-dirty mode's is executable everywhere.
            code_runs_in_read_only_memory: !amd,
            // For port writes, which Xen retires at the exit; other accesses in flight
            // still refuse (`VmShared::io_blocks_state_writes`).
            state_writes_mid_io: true,
            // Not in the HVM records: a vCPU loaded halted executes its hlt again (`halted`).
            halted_vcpus: true,
            // Xen's virtual MCE keeps state for two banks (see `mce`).
            mce_banks: u32::from(mce::GUEST_MC_BANKS),
            tsc_deadline_timer,
            ..Capabilities::default()
        };
        Ok(Xen {
            handles: Arc::new(handles),
            capabilities,
            physcaps: physinfo.capabilities,
        })
    }

    /// Creates a VM (a PVH domain), with the concrete Xen type.
    pub fn create_xen_vm(&self, config: &VmConfig) -> Result<XenVm, HypervisorError> {
        XenVm::create(
            Arc::clone(&self.handles),
            config,
            Arc::new(self.capabilities.clone()),
            DomainKind::Pvh,
        )
    }

    /// Creates a 64-bit PV domain instead: no emulation at all (no I/O exits; the guest
    /// talks to Xen by hypercall), guest page tables of machine frames (see
    /// [`XenVm::pv_machine_frame`], [`XenVm::seal_pv_region`]), and a start state set with
    /// [`XenVcpu::set_pv_start`]. `run()` returns kicks, shutdowns and halts
    /// (`VCPUOP_down`). Debian's Xen runs 64-bit PV guests only.
    pub fn create_pv_vm(&self, config: &VmConfig) -> Result<XenVm, HypervisorError> {
        if self.physcaps & XEN_SYSCTL_PHYSCAP_PV == 0 {
            return Err(HypervisorError::Unsupported {
                feature: "PV guests (Xen's physinfo lacks pv)",
            });
        }
        XenVm::create(
            Arc::clone(&self.handles),
            config,
            Arc::new(self.capabilities.clone()),
            DomainKind::Pv,
        )
    }

    /// Xen's total and free memory (`xl info`'s `total_memory` and `free_memory`).
    pub fn host_memory(&self) -> Result<HostMemory, HypervisorError> {
        let info = self.handles.xc.physinfo().map_err(hv_err)?;
        Ok(HostMemory {
            total: info.total_pages * 4096,
            free: info.free_pages * 4096,
        })
    }

    /// The ids of every domain on the host, dom0 included.
    pub fn domain_ids(&self) -> Result<Vec<u32>, HypervisorError> {
        Ok(self
            .handles
            .xc
            .domains()
            .map_err(hv_err)?
            .iter()
            .map(|d| u32::from(d.domain))
            .collect())
    }
}

impl Hypervisor for Xen {
    fn kind(&self) -> HypervisorKind {
        HypervisorKind::Xen
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn Vm>, HypervisorError> {
        Ok(Box::new(self.create_xen_vm(config)?))
    }
}

/// Whether Xen runs HVM guests on AMD's nested paging (an AMD or Hygon CPU: Xen's `p2m-pt`
/// code) rather than Intel's EPT, from the vendor in `cpuid`'s leaf 0.
fn amd_nested_paging(cpuid: &[CpuidEntry]) -> bool {
    // "AuthenticAMD" and "HygonGenuine" as leaf 0's EBX, EDX, ECX.
    const AMD: [u32; 3] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];
    const HYGON: [u32; 3] = [0x6f67_7948, 0x6e65_476e, 0x656e_6975];
    cpuid
        .iter()
        .find(|e| e.function == 0 && e.index == 0)
        .is_some_and(|e| [AMD, HYGON].contains(&[e.ebx, e.edx, e.ecx]))
}

/// Xen's serialized CPUID leaf as vmkit's entry.
fn cpuid_entry(leaf: &CpuidLeaf) -> CpuidEntry {
    let indexed = libs::has_subleaf(leaf);
    CpuidEntry {
        function: leaf.leaf,
        index: if indexed { leaf.subleaf } else { 0 },
        flags: if indexed {
            CpuidEntry::SIGNIFICANT_INDEX
        } else {
            0
        },
        eax: leaf.a,
        ebx: leaf.b,
        ecx: leaf.c,
        edx: leaf.d,
    }
}

/// The hypervisor leaves, which Xen answers itself (signature `XenVMMXenVMM` at
/// 0x40000000, or at 0x40000100 with Viridian).
const HYPERVISOR_LEAVES: std::ops::RangeInclusive<u32> = 0x4000_0000..=0x4fff_ffff;

/// Whether Xen's CPUID policy takes `entry`: not in the hypervisor leaves. There Xen
/// takes only EAX of 0x40000000 and 0x40000100, as how many of its own leaves the guest
/// sees (at least 2, so Xen stays visible), which is not what EAX means there on KVM (the
/// last leaf); another hypervisor's leaves (KVM's features leaf) it refuses.
fn xen_takes(entry: &CpuidEntry) -> bool {
    !HYPERVISOR_LEAVES.contains(&entry.function)
}

/// vmkit's CPUID entry as Xen's serialized leaf.
fn cpuid_leaf(entry: &CpuidEntry) -> CpuidLeaf {
    CpuidLeaf {
        leaf: entry.function,
        subleaf: if entry.flags & CpuidEntry::SIGNIFICANT_INDEX != 0 {
            entry.index
        } else {
            XEN_CPUID_NO_SUBLEAF
        },
        a: entry.eax,
        b: entry.ebx,
        c: entry.ecx,
        d: entry.edx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf0(vendor: &[u8; 12]) -> Vec<CpuidEntry> {
        let word =
            |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
        vec![CpuidEntry {
            function: 0,
            ebx: word(0),
            edx: word(4),
            ecx: word(8),
            ..CpuidEntry::default()
        }]
    }

    #[test]
    fn nested_paging_is_told_by_the_vendor() {
        assert!(amd_nested_paging(&leaf0(b"AuthenticAMD")));
        assert!(amd_nested_paging(&leaf0(b"HygonGenuine")));
        assert!(!amd_nested_paging(&leaf0(b"GenuineIntel")));
        assert!(!amd_nested_paging(&[]));
    }

    #[test]
    fn the_hypervisor_leaves_stay_xens() {
        let leaf = |function| CpuidEntry {
            function,
            ..CpuidEntry::default()
        };
        for function in [0x4000_0000, 0x4000_0001, 0x4000_0100, 0x4fff_ffff] {
            assert!(!xen_takes(&leaf(function)), "{function:#x}");
        }
        for function in [0, 1, 0xd, 0x3fff_ffff, 0x5000_0000, 0x8000_0001] {
            assert!(xen_takes(&leaf(function)), "{function:#x}");
        }
    }
}
