//! Xen vCPUs: `run()` over the ioreq server, and state access through Xen's vCPU context
//! and HVM CPU record.
//!
//! `run()` first answers the exit it returned last (the data of a read goes into the ioreq
//! slot, which becomes `STATE_IORESP_READY`, then the vCPU's event channel is signalled),
//! lets the vCPU run (brings it online; the first `run()` of a VM also unpauses the domain),
//! and waits in `ppoll` on the event channel and the kick eventfd. A ready ioreq becomes the
//! next exit. Xen sends no event when a vCPU halts or the domain shuts down, so while
//! waiting `run()` also looks at the vCPU and the domain, soon after it let the vCPU go and
//! then less and less often (up to every [`MAX_CHECK_INTERVAL`]).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::context::{self, EventRefusal, Record, XsaveRecord};
use super::control::{same_request, Parked, StateError, Status};
use super::halted::Resume;
use super::ioreq::{Exchange, ExitKind, Invalid, Next, RawRequest, Step, MAX_BATCH_BYTES};
use super::kick::XenKick;
use super::libs::{Evtchn, PolicySource, XenCallError};
use super::mce::{self, VmceRecord};
use super::sys::abi::{
    CpuidLeaf, EvtchnPort, HvmHwCpu, Pod, VcpuGuestContext, FLAT_KERNEL_CS64, FLAT_KERNEL_DS64,
    FLAT_KERNEL_SS64, HVM_LAPIC_REGS_SIZE, HVM_MTRR_DEF_TYPE_OFFSET, HVM_MTRR_SIZE,
    HVM_SAVE_CODE_CPU, HVM_SAVE_CODE_CPU_XSAVE, HVM_SAVE_CODE_LAPIC_REGS, HVM_SAVE_CODE_MTRR,
    HVM_SAVE_CODE_VMCE_VCPU, HVM_VMCE_VCPU_SIZE, SHUTDOWN_CRASH, SHUTDOWN_POWEROFF,
    SHUTDOWN_REBOOT, STATE_IOREQ_INPROCESS, STATE_IOREQ_READY, STATE_IORESP_READY, VGCF_I387_VALID,
    VGCF_IN_KERNEL, XEN_SYSCTL_CPU_POLICY_HVM_DEFAULT,
};
use super::vm::{self, DomainKind, Shutdown, VmShared, TRIPLE_FAULT_REASON};
use super::{cpuid_entry, cpuid_leaf};
use crate::arch::x86_64::{
    CpuidEntry, Fpu, LapicState, MpState, Msr, Regs, SpecialRegs, VcpuEvents, Xcr, Xsave,
};
use crate::vcpu::{DebugExit, GuestDebug, KickHandle, SystemEventKind, Vcpu, VcpuError, VcpuExit};

/// The longest `run()` waits before looking whether the vCPU halted or the domain shut down.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// The first look, after the vCPU was let go.
const FIRST_CHECK: Duration = Duration::from_millis(2);
/// How long a kick waits at least, and at most, for a running vCPU's next I/O request
/// before taking the vCPU offline: a vCPU that waits for an answer is stopped already, and
/// taking one offline costs several hypercalls with the whole domain paused. Within these
/// bounds the wait is four times the vCPU's recent time from an answer to its next request.
const KICK_GRACE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(50));

/// `InternalError::suberror` of an ioreq vmkit could not serve (`data`: type, address,
/// size, count).
pub const INVALID_IOREQ: u32 = 0x786e_0001;

/// The offset of `apic_base_msr` in the local APIC record (`struct hvm_hw_lapic`).
const LAPIC_RECORD_SIZE: usize = 24;
const HVM_SAVE_CODE_LAPIC: u16 = 5;

/// The start state of a PV vCPU ([`XenVcpu::set_pv_start`]): 64-bit kernel mode on Xen's
/// flat selectors, with `regs` and the page tables whose top level (L4) is in machine
/// frame `page_table`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PvStart {
    /// The registers; `rsp` is also the kernel stack the vCPU returns to from user mode.
    pub regs: Regs,
    /// Machine frame number of the L4 page table (see
    /// [`XenVm::pv_machine_frame`](super::XenVm::pv_machine_frame)).
    pub page_table: u64,
}

/// Where a vCPU is, as `run()` left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Offline in Xen: not started yet, kicked, or halted by the guest.
    Parked { halted: bool },
    /// Online: running, or waiting for the answer to an I/O request.
    Running,
    /// Online, paused by Xen after a debug exception until vmkit answers it (see `debug`).
    Debug,
    /// The domain shut down; `run()` keeps reporting it.
    Stopped(Shutdown),
}

/// What [`XenVcpu::serve_ready`] did.
enum Served {
    /// No request was ready.
    Nothing,
    /// The request needs the VMM: this exit.
    Exit(Step),
    /// vmkit could not serve the request; it was answered with all-ones.
    Invalid(Invalid),
    /// Answered without the VMM.
    Answered,
}

/// A Xen vCPU.
#[derive(Debug)]
pub struct XenVcpu {
    id: u32,
    vm: Arc<VmShared>,
    /// The ioreq event channel and its local port (a PVH vCPU's only).
    evtchn: Option<(Evtchn, EvtchnPort)>,
    kick: Arc<XenKick>,
    phase: Phase,
    /// An application processor that has not run yet and waits for INIT and SIPI (see
    /// `new`); `set_mp_state(Runnable)` clears it.
    awaiting_sipi: AtomicBool,
    /// The vCPU was loaded halted (`set_mp_state(Halted)`) and has not run since: its first
    /// `run()` makes it halt again (see the `halted` module).
    load_halted: AtomicBool,
    /// A kick took the vCPU offline while it was halted in Xen (`hlt` with interrupts
    /// enabled); it stays halted when it comes back, so its `mp_state` is `Halted`.
    parked_in_hlt: bool,
    /// The request being served and the exit returned for it last.
    exchange: Option<(Exchange, Option<Step>)>,
    buf: Vec<u8>,
    /// Data of `SystemEvent` and `InternalError` exits.
    event_data: [u64; 4],
    /// The request being served and the last one answered, with the answer.
    current: RawRequest,
    last: Option<(RawRequest, u64)>,
    /// When `run()` next looks at the vCPU and domain, and the interval after that.
    next_check: Instant,
    interval: Duration,
    /// When the last answer went out, and the running average of the time from an answer
    /// to the vCPU's next request.
    answered_at: Option<Instant>,
    turnaround: Duration,
    /// Single-stepping and hardware breakpoints (`set_guest_debug`).
    debug: std::sync::Mutex<DebugState>,
    /// With a split irqchip, when the local APIC was last read for watched EOIs (`eoi.rs`).
    eoi_read_at: Option<Instant>,
}

/// A vCPU's guest debugging, and the guest's own state it covers.
#[derive(Debug, Default)]
struct DebugState {
    /// Single-stepping: the vCPU runs with RFLAGS.TF set, and `guest_tf` is the guest's own.
    single_step: bool,
    guest_tf: bool,
    /// The hardware breakpoints, and the guest's DR0-DR3 and DR7 while they are set.
    breakpoints: Vec<u64>,
    guest_drs: Option<[u64; 5]>,
}

/// RFLAGS.TF.
const RFLAGS_TF: u64 = 1 << 8;
/// DR6 as a debug exception leaves it before its status bits: the bits that read as 1.
const DR6_FIXED: u64 = 0xffff_0ff0;
/// DR6.BS: the exception is a single step.
const DR6_BS: u64 = 1 << 14;
/// DR7's bit 10, which reads as 1.
const DR7_FIXED: u64 = 1 << 10;

fn os(vcpu: u32) -> impl Fn(XenCallError) -> VcpuError {
    move |err| VcpuError::Os {
        vcpu,
        op: err.op,
        source: err.source,
    }
}

impl XenVcpu {
    pub(crate) fn new(
        id: u32,
        vm: Arc<VmShared>,
        evtchn: Option<(Evtchn, EvtchnPort)>,
        kick: Arc<XenKick>,
    ) -> Self {
        // With Xen's local APICs an application processor waits, offline in Xen, for the
        // INIT and startup IPIs that bring it up (Xen handles them), as on KVM: its first
        // run() must not put it online in the state it was created in, unless the VMM made
        // it runnable (set_mp_state).
        let awaiting_sipi = AtomicBool::new(id != 0 && vm.config.irqchip);
        XenVcpu {
            id,
            vm,
            evtchn,
            kick,
            phase: Phase::Parked { halted: false },
            awaiting_sipi,
            load_halted: AtomicBool::new(false),
            parked_in_hlt: false,
            exchange: None,
            buf: vec![0; MAX_BATCH_BYTES],
            event_data: [0; 4],
            current: RawRequest::default(),
            last: None,
            next_check: Instant::now(),
            interval: FIRST_CHECK,
            answered_at: None,
            turnaround: Duration::ZERO,
            debug: std::sync::Mutex::default(),
            eoi_read_at: None,
        }
    }

    /// With a split irqchip: a level-triggered vector this vCPU was sent that the guest has
    /// ended since, read from its local APIC at most every `EOI_POLL` (see `eoi.rs`).
    fn ended_level_vector(&mut self) -> Result<Option<u8>, VcpuError> {
        let Some(watch) = self.vm.eoi_watch() else {
            return Ok(None);
        };
        if !watch.watching(self.id)
            || self
                .eoi_read_at
                .is_some_and(|at| at.elapsed() < super::eoi::EOI_POLL)
        {
            return Ok(None);
        }
        self.eoi_read_at = Some(Instant::now());
        let mut regs = vec![0u8; HVM_LAPIC_REGS_SIZE];
        let instance = u16::try_from(self.id).unwrap_or(u16::MAX);
        self.vm
            .xc()
            .hvm_record(self.vm.domid, HVM_SAVE_CODE_LAPIC_REGS, instance, &mut regs)
            .map_err(os(self.id))?;
        Ok(watch.take_ended(self.id, &regs))
    }

    /// How long the wait may sleep: until the next check, and no longer than `EOI_POLL`
    /// while this vCPU watches for an EOI.
    fn sleep_for(&self) -> Duration {
        let until_check = self.next_check.saturating_duration_since(Instant::now());
        match self.vm.eoi_watch() {
            Some(watch) if watch.watching(self.id) => until_check.min(super::eoi::EOI_POLL),
            _ => until_check,
        }
    }

    fn state_error(&self, what: &'static str) -> impl Fn(StateError) -> VcpuError + '_ {
        move |err| match err {
            StateError::Xen(err) => VcpuError::Os {
                vcpu: self.id,
                op: err.op,
                source: err.source,
            },
            other => VcpuError::InvalidState {
                vcpu: self.id,
                what,
                reason: other.to_string(),
            },
        }
    }

    /// Fails for a PV vCPU, which has no HVM state (segments, control registers and MSRs
    /// as an HVM vCPU has them, a local APIC).
    fn require_pvh(&self, feature: &'static str) -> Result<(), VcpuError> {
        if self.vm.kind() == DomainKind::Pvh {
            return Ok(());
        }
        Err(VcpuError::Unsupported {
            vcpu: self.id,
            op: feature,
            reason: "a PV vCPU has no HVM state; use its vCPU context (set_pv_start, regs)",
        })
    }

    /// Sets a PV vCPU's start state. Xen checks the page tables (every table frame must
    /// belong to the guest and be mapped by nobody else writable; see
    /// [`XenVm::seal_pv_region`](super::XenVm::seal_pv_region)). The vCPU starts running
    /// at the next `run()`.
    pub fn set_pv_start(&self, start: &PvStart) -> Result<(), VcpuError> {
        if self.vm.kind() != DomainKind::Pv {
            return Err(VcpuError::Unsupported {
                vcpu: self.id,
                op: "a PV start state",
                reason: "this is a PVH vCPU; set its registers instead",
            });
        }
        if self.phase != (Phase::Parked { halted: false }) {
            return Err(VcpuError::InvalidState {
                vcpu: self.id,
                what: "PV start state",
                reason: "the vCPU has run already".into(),
            });
        }
        let mut ctx = VcpuGuestContext {
            // Kernel mode, offline until run().
            flags: VGCF_IN_KERNEL,
            kernel_ss: u64::from(FLAT_KERNEL_SS64),
            kernel_sp: start.regs.rsp,
            ..VcpuGuestContext::default()
        };
        context::set_regs(&mut ctx.user_regs, &start.regs);
        ctx.user_regs.cs = FLAT_KERNEL_CS64;
        ctx.user_regs.ss = FLAT_KERNEL_SS64;
        ctx.user_regs.ds = FLAT_KERNEL_DS64;
        ctx.user_regs.es = FLAT_KERNEL_DS64;
        // `xen_pfn_to_cr3` for a 64-bit guest.
        ctx.ctrlreg[3] = start.page_table << 12;
        let _control = self.vm.control();
        self.vm
            .xc()
            .set_vcpu_context(self.vm.domid, self.id, &mut ctx)
            .map_err(os(self.id))
    }

    /// The vCPU's MTRR record (`struct hvm_hw_mtrr`), [`HVM_MTRR_SIZE`] bytes.
    fn mtrr_record(&self) -> Result<Vec<u8>, VcpuError> {
        let mut records = self
            .vm
            .read_records(self.id, &[(HVM_SAVE_CODE_MTRR, HVM_MTRR_SIZE)])
            .map_err(os(self.id))?;
        match records.pop() {
            Some(record) if record.len() == HVM_MTRR_SIZE => Ok(record),
            _ => Err(VcpuError::InvalidState {
                vcpu: self.id,
                what: "MTRR record",
                reason: format!("Xen did not return its {HVM_MTRR_SIZE} bytes"),
            }),
        }
    }

    /// The vCPU's machine-check record (see the `mce` module).
    fn vmce_record(&self) -> Result<VmceRecord, VcpuError> {
        let records = self
            .vm
            .read_records(self.id, &[(HVM_SAVE_CODE_VMCE_VCPU, HVM_VMCE_VCPU_SIZE)])
            .map_err(os(self.id))?;
        records
            .first()
            .and_then(|r| VmceRecord::from_bytes(r))
            .ok_or_else(|| VcpuError::InvalidState {
                vcpu: self.id,
                what: "machine-check record",
                reason: format!("Xen did not return its {HVM_VMCE_VCPU_SIZE} bytes"),
            })
    }

    /// Looks soon: the vCPU was just let go.
    fn check_soon(&mut self) {
        self.interval = FIRST_CHECK;
        self.next_check = Instant::now() + FIRST_CHECK;
    }

    /// Answers the request in the slot and signals Xen.
    fn respond(&mut self, data: u64) -> Result<(), VcpuError> {
        let slot = self.vm.slot(self.id).ok_or_else(|| self.no_slot())?;
        slot.set_data(data);
        slot.set_state(STATE_IORESP_READY);
        self.last = Some((self.current, data));
        self.vm.count_answer(self.id);
        self.answered_at = Some(Instant::now());
        if let Some((evtchn, port)) = &self.evtchn {
            evtchn.notify(*port).map_err(os(self.id))?;
        }
        self.check_soon();
        Ok(())
    }

    fn no_slot(&self) -> VcpuError {
        VcpuError::InvalidState {
            vcpu: self.id,
            what: "ioreq slot",
            reason: "the ioreq page has no slot for this vCPU".into(),
        }
    }

    /// The exit for `step`, its data in the buffer.
    fn exit(&mut self, step: Step) -> VcpuExit<'_> {
        let data = &mut self.buf[..step.len];
        match step.kind {
            ExitKind::PioIn { port, size } => VcpuExit::IoIn { port, size, data },
            ExitKind::PioOut { port, size } => VcpuExit::IoOut { port, size, data },
            ExitKind::MmioRead { addr } => VcpuExit::MmioRead { addr, data },
            ExitKind::MmioWrite { addr } => VcpuExit::MmioWrite { addr, data },
        }
    }

    /// Puts the answer of a port read the VMM was handed but Xen has not completed yet into
    /// `regs.rax`, as the vCPU will hold it once it runs (what KVM's `complete_pending_io`
    /// does). Xen moves `rip` past an `in` when it sends the request but writes `rax` only
    /// when the vCPU next runs, so without this a snapshot taken between the exit and the next
    /// `run()` would resume past the `in` without its data.
    fn merge_pending_port_read(&self, regs: &mut Regs) {
        let Some((exchange, Some(step))) = &self.exchange else {
            return;
        };
        let Some(size) = exchange.register_port_read() else {
            return;
        };
        if !matches!(step.kind, ExitKind::PioIn { .. }) || step.len != size {
            return;
        }
        let Some(answer) = self.buf.get(..size) else {
            return;
        };
        regs.rax = merge_read(regs.rax, answer);
    }

    /// Takes `exchange`'s next step: one that needs the VMM (returned) or its answer (`None`).
    fn advance(&mut self, mut exchange: Exchange) -> Result<Option<Step>, VcpuError> {
        let memory = self.vm.guest_memory();
        match exchange.next(&memory, &mut self.buf) {
            Next::Exit(step) => {
                self.exchange = Some((exchange, Some(step)));
                Ok(Some(step))
            }
            Next::Respond { data } => {
                self.exchange = None;
                self.respond(data)?;
                Ok(None)
            }
        }
    }

    /// The exit for a shutdown of the domain.
    fn shutdown_exit(&mut self, shutdown: Shutdown) -> VcpuExit<'_> {
        if shutdown.reason == TRIPLE_FAULT_REASON {
            return VcpuExit::Shutdown;
        }
        self.event_data[0] = u64::from(shutdown.reason);
        let kind = match shutdown.reason {
            SHUTDOWN_POWEROFF => SystemEventKind::Shutdown,
            SHUTDOWN_REBOOT => SystemEventKind::Reset,
            SHUTDOWN_CRASH => SystemEventKind::Crash,
            other => SystemEventKind::Other(other),
        };
        VcpuExit::SystemEvent {
            kind,
            data: &self.event_data[..1],
        }
    }

    fn invalid_exit(&mut self, invalid: &Invalid) -> VcpuExit<'_> {
        let r = invalid.request;
        self.event_data = [
            u64::from(r.kind),
            r.addr,
            u64::from(r.size),
            u64::from(r.count),
        ];
        VcpuExit::InternalError {
            suberror: INVALID_IOREQ,
            data: &self.event_data,
        }
    }

    /// Takes the vCPU's ready request, if any, and serves it until it needs the VMM.
    fn serve_ready(&mut self) -> Result<Served, VcpuError> {
        let id = self.id;
        // A PV vCPU has no slot: nothing is emulated for it.
        let Some(slot) = self.vm.slot(id).filter(|s| s.state() == STATE_IOREQ_READY) else {
            return Ok(Served::Nothing);
        };
        let bytes = slot.bytes();
        let raw = RawRequest::from_bytes(&bytes);
        slot.set_state(STATE_IOREQ_INPROCESS);
        if let Some(at) = self.answered_at.take() {
            self.turnaround = (self.turnaround * 7 + at.elapsed()) / 8;
        }
        trace!("vCPU {id} ioreq {raw}: {}", hex(&bytes));
        self.current = raw;
        if self.vm.take_replay(id, &raw) {
            // A state load made the vCPU send this again: the VMM has seen it.
            if let Some((last, data)) = self.last {
                if same_request(&last, &raw) {
                    self.respond(data)?;
                    return Ok(Served::Answered);
                }
            }
        }
        if self.vm.ioeventfds.signal(&raw) {
            // A write an ioeventfd watches: signalled, answered, no exit.
            self.respond(raw.data)?;
            return Ok(Served::Answered);
        }
        match Exchange::start(raw) {
            Ok(exchange) => match self.advance(exchange)? {
                Some(step) => Ok(Served::Exit(step)),
                None => Ok(Served::Answered),
            },
            Err(invalid) => {
                // Answer (reads get all-ones) so the vCPU goes on, and report it.
                self.respond(u64::MAX)?;
                Ok(Served::Invalid(invalid))
            }
        }
    }

    /// Waits for the vCPU's next exit; it is online.
    fn wait(&mut self) -> Result<VcpuExit<'_>, VcpuError> {
        let id = self.id;
        // A kick came in while the vCPU was sending a request: that request is served first
        // and, if it needs the VMM, is this run()'s exit, the kick kept for the next run().
        // So a vCPU paused by a kick has no request the VMM has not seen (see the module
        // docs on state writes).
        let mut kicked = false;
        loop {
            if let Some(exit) = self.take_debug_event()? {
                if kicked {
                    self.kick.restore();
                }
                return Ok(exit);
            }
            match self.serve_ready()? {
                Served::Nothing => {}
                Served::Exit(step) => {
                    if kicked {
                        self.kick.restore();
                    }
                    return Ok(self.exit(step));
                }
                Served::Invalid(invalid) => {
                    if kicked {
                        // Answered, so the vCPU runs on: stop it before the kick is kept.
                        match self.vm.park(id).map_err(os(id))? {
                            Parked::Offline { blocked } => {
                                self.phase = Phase::Parked { halted: false };
                                self.parked_in_hlt = blocked;
                            }
                            Parked::Halted => self.phase = Phase::Parked { halted: true },
                            Parked::InIo | Parked::ShuttingDown => {}
                        }
                        self.kick.restore();
                    }
                    return Ok(self.invalid_exit(&invalid));
                }
                Served::Answered if !kicked => continue,
                // Answered without the VMM: the kick now takes the vCPU out.
                Served::Answered => {}
            }
            if kicked || self.kick.take() {
                if !kicked {
                    self.kick.drain();
                    let grace = (self.turnaround * 4).clamp(KICK_GRACE.0, KICK_GRACE.1);
                    if self.request_within(grace)? {
                        // The vCPU now waits for an answer: it is stopped already.
                        trace!("vCPU {id} kicked while sending a request");
                        kicked = true;
                        continue;
                    }
                }
                let parked = self.vm.park(id).map_err(os(id))?;
                trace!("vCPU {id} kicked: {parked:?}");
                match parked {
                    Parked::Offline { blocked } => {
                        self.phase = Phase::Parked { halted: false };
                        self.parked_in_hlt = blocked;
                    }
                    // The request came after all: serve it first, as above.
                    Parked::InIo if !kicked && self.request_ready() => {
                        kicked = true;
                        continue;
                    }
                    Parked::InIo | Parked::ShuttingDown => {}
                    Parked::Halted if self.vm.config.irqchip => {
                        // Halted in Xen, as in KVM with an irqchip: the kick ends run(), the
                        // vCPU stays halted.
                        self.phase = Phase::Parked { halted: true };
                    }
                    Parked::Halted => {
                        // The halt came first: report it, and the kick on the next run().
                        self.kick.restore();
                        self.phase = Phase::Parked { halted: true };
                        return Ok(VcpuExit::Hlt);
                    }
                }
                return Ok(VcpuExit::Kicked);
            }
            if let Some(vector) = self.ended_level_vector()? {
                return Ok(VcpuExit::IoapicEoi { vector });
            }
            let now = Instant::now();
            if now >= self.next_check {
                let status = self.vm.status(id).map_err(os(id))?;
                if status != Status::Running {
                    trace!("vCPU {id}: {status:?}");
                }
                match status {
                    Status::Running => {}
                    // With an irqchip the hypervisor keeps a halted vCPU, as KVM does: it
                    // waits there for INIT/SIPI (Xen brings it back itself) or a kick.
                    Status::Halted if self.vm.config.irqchip => {}
                    Status::Halted => {
                        self.phase = Phase::Parked { halted: true };
                        return Ok(VcpuExit::Hlt);
                    }
                    Status::Shutdown(shutdown) => {
                        self.phase = Phase::Stopped(shutdown);
                        return Ok(self.shutdown_exit(shutdown));
                    }
                }
                self.next_check = now + self.interval;
                self.interval = (self.interval * 2).min(MAX_CHECK_INTERVAL);
            }
            self.sleep(self.sleep_for())?;
        }
    }

    /// The debug exit for this vCPU's debug exception on the monitor ring, if there is one:
    /// the vCPU is then paused by Xen until the next `run()` answers it.
    fn take_debug_event(&mut self) -> Result<Option<VcpuExit<'static>>, VcpuError> {
        let Some(monitor) = self.vm.monitor() else {
            return Ok(None);
        };
        let Some(event) = monitor.take(&self.vm, self.id).map_err(os(self.id))? else {
            return Ok(None);
        };
        self.phase = Phase::Debug;
        let debug = lock_debug(&self.debug);
        // Xen's vm_event carries no DR6 on AMD (its save of the VMCB leaves it out), so the
        // status is what vmkit knows: a single step, and the breakpoints at this address.
        let mut dr6 = DR6_FIXED;
        if debug.single_step {
            dr6 |= DR6_BS;
        }
        for (i, &addr) in debug.breakpoints.iter().enumerate() {
            if addr == event.pc {
                dr6 |= 1 << i;
            }
        }
        trace!("vCPU {}: debug exception at {:#x}", self.id, event.pc);
        Ok(Some(VcpuExit::Debug(DebugExit {
            pc: event.pc,
            exception: 1,
            dr6,
            dr7: event.dr7,
        })))
    }

    /// Sets RFLAGS.TF for single-stepping (keeping the guest's own in `debug`), or gives
    /// the guest its own back.
    fn set_trap_flag(&self, debug: &mut DebugState, on: bool) -> Result<(), VcpuError> {
        if debug.single_step == on {
            return Ok(());
        }
        let control = self.vm.control();
        let xc = self.vm.xc();
        let mut ctx = xc
            .vcpu_context(self.vm.domid, self.id)
            .map_err(os(self.id))?;
        let rflags = ctx.user_regs.rflags;
        if on {
            debug.guest_tf = rflags & RFLAGS_TF != 0;
            ctx.user_regs.rflags = rflags | RFLAGS_TF;
        } else {
            ctx.user_regs.rflags = rflags & !RFLAGS_TF | guest_tf(debug);
        }
        self.vm
            .set_context(&control, self.id, &mut ctx)
            .map_err(self.state_error("single-stepping"))?;
        debug.single_step = on;
        Ok(())
    }

    /// Puts `breakpoints` into DR0-DR3 and DR7 (keeping the guest's own registers in
    /// `debug`), or, with none, gives the guest its own back.
    fn set_breakpoints(
        &self,
        debug: &mut DebugState,
        breakpoints: &[u64],
    ) -> Result<(), VcpuError> {
        if debug.breakpoints == breakpoints {
            return Ok(());
        }
        let mut saved = debug.guest_drs;
        self.vm
            .edit_cpu(
                self.id,
                |cpu| {
                    let guest = *saved.get_or_insert([cpu.dr0, cpu.dr1, cpu.dr2, cpu.dr3, cpu.dr7]);
                    let [dr0, dr1, dr2, dr3, dr7] = if breakpoints.is_empty() {
                        guest
                    } else {
                        let mut regs = [0, 0, 0, 0, DR7_FIXED];
                        for (i, &addr) in breakpoints.iter().enumerate() {
                            regs[i] = addr;
                            // G<i>; R/W and LEN 0: break on execution.
                            regs[4] |= 1 << (2 * i + 1);
                        }
                        regs
                    };
                    (cpu.dr0, cpu.dr1, cpu.dr2, cpu.dr3, cpu.dr7) = (dr0, dr1, dr2, dr3, dr7);
                },
                &[],
            )
            .map_err(self.state_error("debug registers"))?;
        debug.guest_drs = if breakpoints.is_empty() { None } else { saved };
        debug.breakpoints = breakpoints.to_vec();
        Ok(())
    }

    /// Whether the vCPU has sent a request vmkit has not taken yet.
    fn request_ready(&self) -> bool {
        self.vm
            .slot(self.id)
            .is_some_and(|s| s.state() == STATE_IOREQ_READY)
    }

    /// Waits up to `grace` for the vCPU to send a request; true if one is ready.
    fn request_within(&mut self, grace: Duration) -> Result<bool, VcpuError> {
        let until = Instant::now() + grace;
        loop {
            let ready = self.request_ready();
            let left = until.saturating_duration_since(Instant::now());
            if ready || left.is_zero() {
                return Ok(ready);
            }
            self.sleep(left)?;
        }
    }

    /// Sleeps until the event channel fires, a kick arrives, or `timeout` passes.
    fn sleep(&mut self, timeout: Duration) -> Result<(), VcpuError> {
        // A PV vCPU has no event channel: -1 makes ppoll skip the entry.
        let evtchn_fd = self.evtchn.as_ref().map_or(-1, |(evtchn, _)| evtchn.fd());
        // The monitor ring's, where debug exceptions arrive (taken in `wait`).
        let monitor_fd = self.vm.monitor().map_or(-1, |m| m.fd());
        let mut fds = [
            libc::pollfd {
                fd: evtchn_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.kick.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: monitor_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `fds` is an array of three pollfds and `ts` a valid timespec, both live
        // for the call; no signal mask is passed.
        let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 3, &ts, std::ptr::null()) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                // A signal (perhaps one whose handler kicked): the loop looks at the flag.
                return Ok(());
            }
            return Err(VcpuError::Os {
                vcpu: self.id,
                op: "ppoll on the event channel",
                source: err,
            });
        }
        if fds[1].revents & libc::POLLIN != 0 {
            // A kick's wake-up. Empty the eventfd now even if the flag turns out clear (a late
            // write of a kick that `run()` already reported): left readable, it would make
            // every later ppoll return at once. A kick always sets the flag before writing,
            // and the caller checks the flag next, so draining here loses none.
            self.kick.drain();
        }
        if let (Some((evtchn, _)), true) = (&self.evtchn, fds[0].revents & libc::POLLIN != 0) {
            let port = evtchn.pending().map_err(os(self.id))?;
            evtchn.unmask(port).map_err(os(self.id))?;
        }
        Ok(())
    }

    /// The vCPU's CPU record and its `IA32_APIC_BASE` (from the local APIC record).
    fn cpu_and_apic_base(&self) -> Result<(HvmHwCpu, u64), VcpuError> {
        let records = self
            .vm
            .read_records(
                self.id,
                &[
                    (HVM_SAVE_CODE_CPU, std::mem::size_of::<HvmHwCpu>()),
                    (HVM_SAVE_CODE_LAPIC, LAPIC_RECORD_SIZE),
                ],
            )
            .map_err(os(self.id))?;
        let (Some(cpu), Some(lapic)) = (
            records.first().and_then(|r| HvmHwCpu::from_bytes(r)),
            records.get(1).and_then(|r| r.get(..8)),
        ) else {
            return Err(VcpuError::InvalidState {
                vcpu: self.id,
                what: "CPU record",
                reason: "Xen returned a short record".into(),
            });
        };
        let mut apic_base = [0u8; 8];
        apic_base.copy_from_slice(lapic);
        Ok((cpu, u64::from_le_bytes(apic_base)))
    }

    /// The vCPU's XSAVE record and the domain's CPUID policy. Xen keeps no record for a vCPU
    /// whose XCR0 was never set: then the record is made from its FXSAVE image, with XCR0
    /// at its reset value (x87 only) and x87 and SSE state present.
    fn xsave_state(&self) -> Result<(XsaveRecord, Vec<CpuidLeaf>), VcpuError> {
        self.require_pvh("XSAVE state")?;
        let (record, leaves) = self
            .vm
            .read_xsave(self.id)
            .map_err(self.state_error("XSAVE area"))?;
        if let Some(record) = record {
            return Ok((record, leaves));
        }
        // Whether the host has XSAVE: Xen's HVM default policy offers it then.
        let host = self
            .vm
            .xc()
            .cpuid_policy(PolicySource::System(XEN_SYSCTL_CPU_POLICY_HVM_DEFAULT))
            .map_err(os(self.id))?;
        if !context::has_xsave(&host) {
            return Err(VcpuError::Unsupported {
                vcpu: self.id,
                op: "XSAVE state",
                reason: "the host has no XSAVE (Capabilities::xsave is false)",
            });
        }
        // No record: XCR0 was never set, or this domain's CPUID policy has no XSAVE (Xen
        // keeps none then; KVM still reports such a vCPU's FPU state as an XSAVE area).
        let ctx = self
            .vm
            .xc()
            .vcpu_context(self.vm.domid, self.id)
            .map_err(os(self.id))?;
        let mut area = vec![0u8; context::XSAVE_MIN_SIZE];
        area[..512].copy_from_slice(&ctx.fpu_ctxt);
        area[context::XSTATE_BV..context::XSTATE_BV + 8]
            .copy_from_slice(&context::XSTATE_FP_SSE.to_le_bytes());
        let record = XsaveRecord {
            xfeature_mask: context::xcr0_max(&leaves),
            xcr0: 1,
            xcr0_accum: context::XSTATE_FP_SSE,
            area,
        };
        Ok((record, leaves))
    }

    /// Sets the vCPU context's FXSAVE image (x87 and SSE state) to `image` (512 bytes).
    fn set_fxsave_image(&self, image: &[u8], what: &'static str) -> Result<(), VcpuError> {
        self.check_idle(what)?;
        let _control = self.vm.control();
        let xc = self.vm.xc();
        let mut ctx = xc
            .vcpu_context(self.vm.domid, self.id)
            .map_err(os(self.id))?;
        ctx.fpu_ctxt.copy_from_slice(image);
        ctx.flags |= VGCF_I387_VALID;
        xc.set_vcpu_context(self.vm.domid, self.id, &mut ctx)
            .map_err(os(self.id))
    }

    /// Loads `record` as the vCPU's XSAVE state (with its current CPU record).
    fn load_xsave(&self, record: &XsaveRecord, what: &'static str) -> Result<(), VcpuError> {
        self.vm
            .edit_cpu(
                self.id,
                |_| {},
                &[Record {
                    typecode: HVM_SAVE_CODE_CPU_XSAVE,
                    instance: self.id as u16,
                    data: record.to_bytes(),
                }],
            )
            .map_err(self.state_error(what))
    }

    /// The size of the XSAVE area vmkit exchanges for this domain: every component its
    /// CPUID policy allows, and at least KVM's legacy 4 KiB (so areas move between
    /// backends).
    fn xsave_exchange_size(&self, leaves: &[CpuidLeaf]) -> Result<usize, VcpuError> {
        let all = context::xsave_area_size(context::xcr0_max(leaves), leaves).ok_or_else(|| {
            VcpuError::InvalidState {
                vcpu: self.id,
                what: "XSAVE area",
                reason: "the domain's CPUID policy does not size every XSAVE component".into(),
            }
        })?;
        Ok(all.max(Xsave::LEGACY_SIZE))
    }

    /// Starts a vCPU loaded halted: at its `hlt` again unless an interrupt is deliverable to
    /// it (see the `halted` module). Either way it comes online in the next step of `run()`.
    fn resume_halted(&mut self) -> Result<(), VcpuError> {
        let resume = self
            .vm
            .halted_resume(self.id)
            .map_err(self.state_error("halted vCPU"))?;
        trace!("vCPU {} loaded halted: {resume:?}", self.id);
        if let Resume::Rehalt { rip } = resume {
            let mut regs = self.regs()?;
            regs.rip = rip;
            self.set_regs(&regs)?;
        }
        self.load_halted.store(false, Ordering::SeqCst);
        self.awaiting_sipi.store(false, Ordering::SeqCst);
        // Online at once, to halt (or take the interrupt) in Xen.
        self.phase = Phase::Parked { halted: false };
        Ok(())
    }

    /// Refuses to change state Xen would reset an in-flight access of this vCPU with.
    fn check_idle(&self, what: &'static str) -> Result<(), VcpuError> {
        if self.vm.io_blocks_state_writes(self.id) {
            return Err(VcpuError::InvalidState {
                vcpu: self.id,
                what,
                reason: "an I/O access of this vCPU is in flight; run() completes it".into(),
            });
        }
        Ok(())
    }
}

/// `rax` after a port read of `answer.len()` bytes: a dword read clears the upper half (as
/// a 32-bit register write does), narrower ones replace their bytes only.
fn merge_read(rax: u64, answer: &[u8]) -> u64 {
    let mut bytes = if answer.len() == 4 {
        [0; 8]
    } else {
        rax.to_le_bytes()
    };
    for (byte, value) in bytes.iter_mut().zip(answer) {
        *byte = *value;
    }
    u64::from_le_bytes(bytes)
}

/// Bytes in hexadecimal, for traces.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Vcpu for XenVcpu {
    fn id(&self) -> u32 {
        self.id
    }

    fn run(&mut self) -> Result<VcpuExit<'_>, VcpuError> {
        if self.kick.take() {
            self.kick.drain();
            return Ok(VcpuExit::Kicked);
        }
        if let Phase::Stopped(shutdown) = self.phase {
            return Ok(self.shutdown_exit(shutdown));
        }
        // Complete the exit returned last; a string access may need another exit.
        if let Some((mut exchange, Some(step))) = self.exchange.take() {
            let memory = self.vm.guest_memory();
            exchange.complete(&memory, &self.buf[..step.len]);
            if let Some(step) = self.advance(exchange)? {
                return Ok(self.exit(step));
            }
        }
        if self.phase == Phase::Debug {
            // Paused by Xen at a debug exception: answering lets it go on.
            if let Some(monitor) = self.vm.monitor() {
                monitor.resume(self.id).map_err(os(self.id))?;
            }
            self.phase = Phase::Running;
            self.check_soon();
        }
        if self.load_halted.load(Ordering::SeqCst) {
            self.resume_halted()?;
        }
        if self.awaiting_sipi.swap(false, Ordering::SeqCst)
            && self.phase == (Phase::Parked { halted: false })
        {
            // Offline in Xen until the guest's startup IPI: wait as for a halted vCPU.
            self.phase = Phase::Parked { halted: true };
        }
        if self.phase == (Phase::Parked { halted: true }) && self.vm.config.irqchip {
            // Still halted in Xen (see wait()): wait on, without bringing it back online.
            self.phase = Phase::Running;
            self.check_soon();
        }
        if let Phase::Parked { .. } = self.phase {
            trace!("vCPU {} unparked", self.id);
            self.parked_in_hlt = false;
            self.vm.unpark(self.id).map_err(os(self.id))?;
            self.phase = Phase::Running;
            self.check_soon();
        }
        self.wait()
    }

    fn kick_handle(&self) -> KickHandle {
        KickHandle::new(self.kick.clone())
    }

    fn regs(&self) -> Result<Regs, VcpuError> {
        let ctx = self
            .vm
            .xc()
            .vcpu_context(self.vm.domid, self.id)
            .map_err(os(self.id))?;
        let mut regs = context::regs_from(&ctx.user_regs);
        self.merge_pending_port_read(&mut regs);
        let debug = lock_debug(&self.debug);
        if debug.single_step {
            // TF is vmkit's while single-stepping: the guest's own shows.
            regs.rflags = regs.rflags & !RFLAGS_TF | guest_tf(&debug);
        }
        Ok(regs)
    }

    fn set_regs(&self, regs: &Regs) -> Result<(), VcpuError> {
        self.check_idle("registers")?;
        let mut debug = lock_debug(&self.debug);
        let control = self.vm.control();
        let xc = self.vm.xc();
        let mut ctx = xc
            .vcpu_context(self.vm.domid, self.id)
            .map_err(os(self.id))?;
        context::set_regs(&mut ctx.user_regs, regs);
        if debug.single_step {
            // The guest's TF is kept aside; the vCPU's stays set.
            debug.guest_tf = regs.rflags & RFLAGS_TF != 0;
            ctx.user_regs.rflags |= RFLAGS_TF;
        }
        self.vm
            .set_context(&control, self.id, &mut ctx)
            .map_err(self.state_error("registers"))
    }

    fn sregs(&self) -> Result<SpecialRegs, VcpuError> {
        self.require_pvh("special registers")?;
        let (cpu, apic_base) = self.cpu_and_apic_base()?;
        Ok(context::sregs_from(&cpu, apic_base))
    }

    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<(), VcpuError> {
        self.require_pvh("special registers")?;
        self.vm
            .edit_cpu(self.id, |cpu| context::set_sregs(cpu, sregs), &[])
            .map_err(self.state_error("special registers"))
    }

    fn fpu(&self) -> Result<Fpu, VcpuError> {
        let ctx = self
            .vm
            .xc()
            .vcpu_context(self.vm.domid, self.id)
            .map_err(os(self.id))?;
        Ok(context::fpu_from(&ctx.fpu_ctxt))
    }

    fn set_fpu(&self, fpu: &Fpu) -> Result<(), VcpuError> {
        self.check_idle("FPU state")?;
        let control = self.vm.control();
        let xc = self.vm.xc();
        let mut ctx = xc
            .vcpu_context(self.vm.domid, self.id)
            .map_err(os(self.id))?;
        context::set_fpu(&mut ctx.fpu_ctxt, fpu);
        ctx.flags |= VGCF_I387_VALID;
        self.vm
            .set_context(&control, self.id, &mut ctx)
            .map_err(self.state_error("FPU state"))
    }

    fn msrs(&self, indices: &[u32]) -> Result<Vec<Msr>, VcpuError> {
        self.require_pvh("MSRs")?;
        let (cpu, apic_base) = self.cpu_and_apic_base()?;
        let mtrr = match indices.contains(&context::MSR_MTRR_DEF_TYPE) {
            true => Some(self.mtrr_record()?),
            false => None,
        };
        let vmce = match indices.iter().any(|&i| mce::is_mce_msr(i)) {
            true => Some(self.vmce_record()?),
            false => None,
        };
        indices
            .iter()
            .map(|&index| {
                let data = if index == context::MSR_APIC_BASE {
                    Some(apic_base)
                } else if index == context::MSR_MTRR_DEF_TYPE {
                    mtrr.as_deref().map(mtrr_def_type)
                } else if let (true, Some(vmce)) = (mce::is_mce_msr(index), &vmce) {
                    vmce.msr(index)
                } else {
                    context::msr(&cpu, index)
                };
                data.map(|data| Msr { index, data })
                    .ok_or_else(|| VcpuError::InvalidState {
                        vcpu: self.id,
                        what: "MSR list",
                        reason: format!("MSR {index:#x} cannot be read"),
                    })
            })
            .collect()
    }

    fn set_msrs(&self, msrs: &[Msr]) -> Result<(), VcpuError> {
        self.require_pvh("MSRs")?;
        let mut probe = HvmHwCpu::default();
        // IA32_APIC_BASE lives in the local APIC record, which vmkit does not write: the
        // value it holds already is accepted (a saved MSR list carries it), another refused.
        let apic_base = if msrs.iter().any(|m| m.index == context::MSR_APIC_BASE) {
            Some(self.cpu_and_apic_base()?.1)
        } else {
            None
        };
        // MCG_CAP and MCG_CTL are fixed in Xen but for setup_mce (see `mce`): likewise.
        let vmce = match msrs.iter().any(|m| mce::is_mce_msr(m.index)) {
            true => Some(self.vmce_record()?),
            false => None,
        };
        if let Some(msr) = msrs
            .iter()
            .find(|m| vmce.and_then(|v| v.accepts(m)) == Some(false))
        {
            return Err(VcpuError::InvalidState {
                vcpu: self.id,
                what: "MSR list",
                reason: format!(
                    "MSR {:#x} refused the value {:#x}: Xen's machine-check emulation holds \
                     {:#x} there (MCG_CTL reads all ones with MCG_CTL_P in MCG_CAP, zero \
                     without, and ignores writes; MCG_CAP changes only through setup_mce)",
                    msr.index,
                    msr.data,
                    vmce.and_then(|v| v.msr(msr.index)).unwrap_or_default()
                ),
            });
        }
        let msrs: Vec<Msr> = msrs
            .iter()
            .filter(|m| !(m.index == context::MSR_APIC_BASE && Some(m.data) == apic_base))
            .filter(|m| !mce::is_mce_msr(m.index))
            .copied()
            .collect();
        let in_cpu = |m: &&Msr| m.index != context::MSR_MTRR_DEF_TYPE;
        if let Some(msr) = msrs
            .iter()
            .filter(in_cpu)
            .find(|m| !context::set_msr(&mut probe, m))
        {
            return Err(VcpuError::InvalidState {
                vcpu: self.id,
                what: "MSR list",
                reason: format!("MSR {:#x} refused the value {:#x}", msr.index, msr.data),
            });
        }
        if msrs.is_empty() {
            return Ok(());
        }
        // MTRRdefType lives in the MTRR record: the vCPU's, with that field changed (the
        // last value given wins, as with the others).
        let mut extra = Vec::new();
        if let Some(def_type) = msrs
            .iter()
            .rev()
            .find(|m| m.index == context::MSR_MTRR_DEF_TYPE)
        {
            let mut record = self.mtrr_record()?;
            record[HVM_MTRR_DEF_TYPE_OFFSET..HVM_MTRR_DEF_TYPE_OFFSET + 8]
                .copy_from_slice(&def_type.data.to_le_bytes());
            extra.push(Record {
                typecode: HVM_SAVE_CODE_MTRR,
                instance: self.id as u16,
                data: record,
            });
        }
        self.vm
            .edit_cpu(
                self.id,
                |cpu| {
                    for msr in msrs.iter().filter(in_cpu) {
                        context::set_msr(cpu, msr);
                    }
                },
                &extra,
            )
            .map_err(self.state_error("MSR list"))
    }

    fn cpuid(&self) -> Result<Vec<CpuidEntry>, VcpuError> {
        let leaves = vm::domain_cpuid(&self.vm).map_err(os(self.id))?;
        Ok(leaves.iter().map(cpuid_entry).collect())
    }

    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), VcpuError> {
        if vm::started(&self.vm) {
            return Err(VcpuError::InvalidState {
                vcpu: self.id,
                what: "CPUID",
                reason: "Xen fixes a domain's CPUID policy when it first runs".into(),
            });
        }
        let mut leaves: Vec<_> = entries
            .iter()
            .filter(|e| super::xen_takes(e))
            .map(cpuid_leaf)
            .collect();
        self.vm
            .xc()
            .set_domain_cpuid(self.vm.domid, &mut leaves)
            .map_err(|(err, leaf)| match leaf {
                Some((leaf, subleaf)) => VcpuError::InvalidState {
                    vcpu: self.id,
                    what: "CPUID",
                    reason: format!(
                        "Xen refused leaf {leaf:#x} sub-leaf {subleaf:#x}: {}",
                        err.source
                    ),
                },
                None => os(self.id)(err),
            })
    }

    fn lapic(&self) -> Result<LapicState, VcpuError> {
        self.require_pvh("local APIC state")?;
        let records = self
            .vm
            .read_records(self.id, &[(HVM_SAVE_CODE_LAPIC_REGS, HVM_LAPIC_REGS_SIZE)])
            .map_err(os(self.id))?;
        let regs = records.first().map_or(&[][..], |r| &r[..]);
        let mut lapic = LapicState::default();
        let n = lapic.regs.len().min(regs.len());
        lapic.regs[..n].copy_from_slice(&regs[..n]);
        Ok(lapic)
    }

    fn set_lapic(&self, lapic: &LapicState) -> Result<(), VcpuError> {
        self.require_pvh("local APIC state")?;
        self.vm
            .edit_cpu(
                self.id,
                |_| {},
                &[Record {
                    typecode: HVM_SAVE_CODE_LAPIC_REGS,
                    instance: self.id as u16,
                    data: lapic.regs.to_vec(),
                }],
            )
            .map_err(self.state_error("local APIC state"))
    }

    fn xsave(&self) -> Result<Xsave, VcpuError> {
        let (record, leaves) = self.xsave_state()?;
        let mut area = record.area;
        area.resize(self.xsave_exchange_size(&leaves)?.max(area.len()), 0);
        let region = area
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        Ok(Xsave { region })
    }

    fn set_xsave(&self, xsave: &Xsave) -> Result<(), VcpuError> {
        self.check_idle("XSAVE area")?;
        let (mut record, leaves) = self.xsave_state()?;
        let invalid = |reason: String| VcpuError::InvalidState {
            vcpu: self.id,
            what: "XSAVE area",
            reason,
        };
        let bytes = self.xsave_exchange_size(&leaves)?;
        if xsave.region.len() * 4 != bytes {
            return Err(invalid(format!(
                "{} bytes given, Xen exchanges {bytes}",
                xsave.region.len() * 4
            )));
        }
        let area: Vec<u8> = xsave.region.iter().flat_map(|w| w.to_le_bytes()).collect();
        let xcomp_bv = u64::from_le_bytes(
            area[context::XSTATE_BV + 8..context::XSTATE_BV + 16]
                .try_into()
                .unwrap_or_default(),
        );
        if xcomp_bv != 0 {
            return Err(invalid(format!(
                "XCOMP_BV {xcomp_bv:#x}: the area is compacted; Xen takes the standard format"
            )));
        }
        let xstate_bv = context::xstate_bv(&area);
        let max = context::xcr0_max(&leaves);
        if xstate_bv & !max != 0 {
            return Err(invalid(format!(
                "XSTATE_BV {xstate_bv:#x} names components this domain's CPUID policy does \
                 not offer (it allows {max:#x})"
            )));
        }
        if !context::has_xsave(&leaves) {
            // Without XSAVE in the domain's policy Xen keeps x87 and SSE state only: in the
            // vCPU context's FXSAVE image.
            if xstate_bv & !context::XSTATE_FP_SSE != 0 {
                return Err(invalid(format!(
                    "XSTATE_BV {xstate_bv:#x}: this domain's CPUID policy has no XSAVE, so \
                     Xen keeps x87 and SSE state only"
                )));
            }
            return self.set_fxsave_image(&area[..512], "XSAVE area");
        }
        // The record holds every component the area has state for.
        record.xcr0_accum |= xstate_bv;
        let size = context::xsave_area_size(record.xcr0_accum, &leaves)
            .ok_or_else(|| invalid(format!("XSTATE_BV {xstate_bv:#x} cannot be sized")))?;
        record.area = area;
        record.area.truncate(size);
        self.load_xsave(&record, "XSAVE area")
    }

    fn xcrs(&self) -> Result<Vec<Xcr>, VcpuError> {
        let (record, _) = self.xsave_state()?;
        Ok(vec![Xcr {
            index: 0,
            value: record.xcr0,
        }])
    }

    fn set_xcrs(&self, xcrs: &[Xcr]) -> Result<(), VcpuError> {
        self.check_idle("XCRs")?;
        let invalid = |reason: String| VcpuError::InvalidState {
            vcpu: self.id,
            what: "XCRs",
            reason,
        };
        if let Some(other) = xcrs.iter().find(|x| x.index != 0) {
            return Err(invalid(format!(
                "XCR{} given; Xen keeps XCR0 only",
                other.index
            )));
        }
        let Some(xcr0) = xcrs.last().map(|x| x.value) else {
            return Ok(());
        };
        if xcr0 & 1 == 0 {
            return Err(invalid(format!(
                "XCR0 {xcr0:#x} lacks x87 state (bit 0), which XCR0 must always enable"
            )));
        }
        let (mut record, leaves) = self.xsave_state()?;
        let max = context::xcr0_max(&leaves);
        if xcr0 & !max != 0 {
            return Err(invalid(format!(
                "XCR0 {xcr0:#x} enables components this domain's CPUID policy does not offer \
                 (it allows {max:#x})"
            )));
        }
        if !context::has_xsave(&leaves) {
            // XCR0 is 1 for good without XSAVE in the domain's policy (what xcrs() reads).
            if xcr0 != 1 {
                return Err(invalid(format!(
                    "XCR0 {xcr0:#x}: this domain's CPUID policy has no XSAVE, so XCR0 stays 1"
                )));
            }
            return Ok(());
        }
        record.xcr0 = xcr0;
        record.xcr0_accum |= xcr0;
        let size = context::xsave_area_size(record.xcr0_accum, &leaves)
            .ok_or_else(|| invalid(format!("XCR0 {xcr0:#x} cannot be sized")))?;
        record.area.resize(size, 0);
        self.load_xsave(&record, "XCRs")
    }

    fn vcpu_events(&self) -> Result<VcpuEvents, VcpuError> {
        self.require_pvh("vCPU events")?;
        let (cpu, _) = self.cpu_and_apic_base()?;
        Ok(context::events_from(&cpu))
    }

    fn set_vcpu_events(&self, events: &VcpuEvents) -> Result<(), VcpuError> {
        self.require_pvh("vCPU events")?;
        // Refused before the domain is touched.
        let mut probe = HvmHwCpu::default();
        context::set_events(&mut probe, events).map_err(|refusal| match refusal {
            EventRefusal::Field(field, reason) => VcpuError::EventFieldUnsupported {
                vcpu: self.id,
                field,
                reason,
            },
            EventRefusal::Invalid(reason) => VcpuError::InvalidState {
                vcpu: self.id,
                what: "vCPU events",
                reason,
            },
        })?;
        self.vm
            .edit_cpu(
                self.id,
                |cpu| {
                    cpu.pending_event = probe.pending_event;
                    cpu.error_code = probe.error_code;
                },
                &[],
            )
            .map_err(self.state_error("vCPU events"))
    }

    fn set_guest_debug(&self, request: &GuestDebug) -> Result<(), VcpuError> {
        if request.hw_breakpoints.len() > GuestDebug::MAX_HW_BREAKPOINTS {
            return Err(VcpuError::InvalidState {
                vcpu: self.id,
                what: "guest debug",
                reason: format!(
                    "{} hardware breakpoints, x86 has {}",
                    request.hw_breakpoints.len(),
                    GuestDebug::MAX_HW_BREAKPOINTS
                ),
            });
        }
        if self.vm.kind() != DomainKind::Pvh {
            return Err(VcpuError::Unsupported {
                vcpu: self.id,
                op: "guest debugging",
                reason: "Xen's monitor ring, which reports debug exceptions, serves HVM \
                         domains only, and a PV vCPU has no HVM CPU record for breakpoints",
            });
        }
        self.check_idle("guest debugging")?;
        let on = request.single_step || !request.hw_breakpoints.is_empty();
        let mut debug = lock_debug(&self.debug);
        let monitor = match on {
            true => Some(self.vm.enable_monitor().map_err(os(self.id))?),
            false => self.vm.monitor(),
        };
        if let Some(monitor) = &monitor {
            if on {
                monitor
                    .set_debugging(&self.vm, self.id, true)
                    .map_err(os(self.id))?;
            }
        }
        self.set_trap_flag(&mut debug, request.single_step)?;
        self.set_breakpoints(&mut debug, &request.hw_breakpoints)?;
        if let (Some(monitor), false) = (&monitor, on) {
            monitor
                .set_debugging(&self.vm, self.id, false)
                .map_err(os(self.id))?;
        }
        Ok(())
    }

    fn setup_mce(&self, banks: u8) -> Result<(), VcpuError> {
        self.require_pvh("machine-check banks")?;
        if banks == 0 || banks > mce::GUEST_MC_BANKS {
            return Err(VcpuError::InvalidState {
                vcpu: self.id,
                what: "machine-check bank count",
                reason: format!(
                    "{banks} banks requested; Xen's machine-check emulation keeps state for \
                     1 to {} (GUEST_MC_BANK_NUM)",
                    mce::GUEST_MC_BANKS
                ),
            });
        }
        self.check_idle("machine-check banks")?;
        let record = self.vmce_record()?.with_banks(banks);
        self.vm
            .edit_cpu(
                self.id,
                |_| {},
                &[Record {
                    typecode: HVM_SAVE_CODE_VMCE_VCPU,
                    instance: self.id as u16,
                    data: record.to_bytes(),
                }],
            )
            .map_err(self.state_error("machine-check banks"))
    }

    fn mp_state(&self) -> Result<MpState, VcpuError> {
        if self.awaiting_sipi.load(Ordering::SeqCst) {
            return Ok(MpState::Uninitialized);
        }
        if self.load_halted.load(Ordering::SeqCst) {
            return Ok(MpState::Halted);
        }
        // Halted by the guest: offline in Xen (`hlt` with interrupts disabled), or blocked
        // in Xen when a kick took it offline. A vCPU inside run() reads as runnable.
        Ok(match self.phase {
            Phase::Parked { halted: true } => MpState::Halted,
            Phase::Parked { halted: false } if self.parked_in_hlt => MpState::Halted,
            _ => MpState::Runnable,
        })
    }

    fn set_mp_state(&self, state: MpState) -> Result<(), VcpuError> {
        match state {
            MpState::Runnable => {
                self.awaiting_sipi.store(false, Ordering::SeqCst);
                self.load_halted.store(false, Ordering::SeqCst);
                Ok(())
            }
            // As on KVM, only with the irqchip (its local APIC wakes the vCPU); see the
            // `halted` module for how Xen is made to keep it halted.
            MpState::Halted if self.vm.config.irqchip && self.vm.kind() == DomainKind::Pvh => {
                self.awaiting_sipi.store(false, Ordering::SeqCst);
                self.load_halted.store(true, Ordering::SeqCst);
                Ok(())
            }
            // Back to waiting for INIT and SIPI, as long as it has not run.
            MpState::Uninitialized
                if self.vm.config.irqchip && self.phase == (Phase::Parked { halted: false }) =>
            {
                self.awaiting_sipi.store(true, Ordering::SeqCst);
                Ok(())
            }
            _ => Err(VcpuError::Unsupported {
                vcpu: self.id,
                op: "this multiprocessing state",
                reason: "a Xen vCPU can be set runnable, halted (with the irqchip) or, before \
                         it first runs, waiting for INIT and SIPI (with the irqchip)",
            }),
        }
    }
}

/// The guest's own RFLAGS.TF, kept aside while single-stepping.
fn guest_tf(debug: &DebugState) -> u64 {
    if debug.guest_tf {
        RFLAGS_TF
    } else {
        0
    }
}

fn lock_debug(debug: &std::sync::Mutex<DebugState>) -> std::sync::MutexGuard<'_, DebugState> {
    // Every critical section leaves the state consistent before it can fail.
    debug
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// MTRRdefType from an MTRR record of [`HVM_MTRR_SIZE`] bytes.
fn mtrr_def_type(record: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&record[HVM_MTRR_DEF_TYPE_OFFSET..HVM_MTRR_DEF_TYPE_OFFSET + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mtrr_default_type_is_read_at_its_offset() {
        let mut record = vec![0u8; HVM_MTRR_SIZE];
        record[HVM_MTRR_DEF_TYPE_OFFSET..HVM_MTRR_DEF_TYPE_OFFSET + 8]
            .copy_from_slice(&0xc06u64.to_le_bytes());
        assert_eq!(mtrr_def_type(&record), 0xc06);
    }

    #[test]
    fn a_port_reads_answer_goes_into_rax_as_the_instruction_writes_it() {
        let rax = 0x1122_3344_5566_7788;
        assert_eq!(merge_read(rax, &[0xaa]), 0x1122_3344_5566_77aa);
        assert_eq!(merge_read(rax, &[0xaa, 0xbb]), 0x1122_3344_5566_bbaa);
        // `in eax` writes a 32-bit register: the upper half is cleared.
        assert_eq!(merge_read(rax, &[1, 2, 3, 4]), 0x0403_0201);
    }
}
