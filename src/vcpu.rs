//! The [`Vcpu`] trait: running a virtual CPU and reading or writing its state.

use std::fmt;
use std::io;
use std::sync::Arc;

#[cfg(target_arch = "x86_64")]
use crate::arch::x86_64::{
    CpuidEntry, Fpu, LapicState, MpState, Msr, Regs, SpecialRegs, VcpuEvents, Xcr, Xsave,
};

/// Why the guest stopped a `run()`, i.e. what the VMM has to do before running it again.
///
/// Data of a read (`IoIn`, `MmioRead`) must be filled in before the next [`Vcpu::run`], which
/// hands it to the guest.
#[derive(Debug)]
#[non_exhaustive]
pub enum VcpuExit<'a> {
    /// The guest read from an I/O port: fill `data`.
    ///
    /// `data` holds `data.len() / size` consecutive accesses of `size` bytes each: more than
    /// one only for string instructions (`rep ins`), which a hypervisor may batch.
    IoIn {
        /// The port.
        port: u16,
        /// Width of one access: 1, 2 or 4 bytes.
        size: u8,
        /// Where the value(s) go, little-endian.
        data: &'a mut [u8],
    },
    /// The guest wrote to an I/O port.
    ///
    /// `data` holds `data.len() / size` consecutive accesses of `size` bytes each.
    IoOut {
        /// The port.
        port: u16,
        /// Width of one access: 1, 2 or 4 bytes.
        size: u8,
        /// The value(s) written, little-endian.
        data: &'a [u8],
    },
    /// The guest read from an address with no memory behind it: fill `data`.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Where the value goes, little-endian; its length is the access width.
        data: &'a mut [u8],
    },
    /// The guest wrote to an address with no (writable) memory behind it.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The value written, little-endian; its length is the access width.
        data: &'a [u8],
    },
    /// The guest executed `hlt` and the hypervisor does not handle it (no in-kernel irqchip).
    Hlt,
    /// The guest triple-faulted: the vCPU cannot continue.
    Shutdown,
    /// The guest asked for a system-wide event (power off, reset, crash) through a
    /// hypervisor-handled mechanism such as PSCI or a Xen shutdown hypercall.
    SystemEvent {
        /// What the guest asked for.
        kind: SystemEventKind,
        /// Backend-specific details (for KVM, `kvm_run.system_event.data`).
        data: &'a [u64],
    },
    /// A single-step or breakpoint debug event.
    Debug(DebugExit),
    /// The hypervisor could not emulate something the guest did.
    InternalError {
        /// The hypervisor's sub-error code (for KVM, `KVM_INTERNAL_ERROR_*`).
        suberror: u32,
        /// Details the hypervisor attached.
        data: &'a [u64],
    },
    /// The hypervisor failed to enter the guest (invalid vCPU state).
    FailEntry {
        /// Hardware reason code.
        reason: u64,
        /// Host CPU the entry failed on.
        cpu: u32,
    },
    /// `run()` returned because of a [`KickHandle::kick`] (made before or during this call).
    Kicked,
    /// `run()` returned early because the thread got a signal other than a kick.
    Interrupted,
    /// A dirty ring of this vCPU is full: harvest the VM's dirty log before running it again.
    DirtyRingFull,
    /// An exit this version of vmkit does not decode, with the backend's raw exit code.
    Unknown {
        /// The raw exit reason (for KVM, `kvm_run.exit_reason`).
        code: u32,
    },
}

/// The system-wide event a guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SystemEventKind {
    /// Power off.
    Shutdown,
    /// Reboot.
    Reset,
    /// The guest crashed (panicked).
    Crash,
    /// Another event, with the backend's raw code.
    Other(u32),
}

/// The details of a debug exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugExit {
    /// Guest instruction pointer when the event hit.
    pub pc: u64,
    /// The exception vector (1 for #DB, 3 for #BP).
    pub exception: u32,
    /// Debug status register.
    pub dr6: u64,
    /// Debug control register.
    pub dr7: u64,
}

/// Guest-debugging controls: single-stepping and hardware breakpoints.
///
/// While enabled, the events they cause end `run()` with [`VcpuExit::Debug`] instead of reaching
/// the guest. `GuestDebug::default()` turns debugging off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestDebug {
    /// Stop after every guest instruction.
    pub single_step: bool,
    /// Guest addresses at which to stop before executing (at most
    /// [`GuestDebug::MAX_HW_BREAKPOINTS`]).
    pub hw_breakpoints: Vec<u64>,
}

impl GuestDebug {
    /// How many hardware breakpoints x86 offers (DR0–DR3).
    pub const MAX_HW_BREAKPOINTS: usize = 4;
}

/// Something that can make a vCPU return from `run()`; see [`KickHandle`].
pub trait Kick: Send + Sync + fmt::Debug {
    /// Makes the vCPU return [`VcpuExit::Kicked`] from its current `run()`, or from the next
    /// one if it is not running. Never blocks; async-signal-safe.
    fn kick(&self);
}

/// A cloneable handle that kicks one vCPU out of `run()`, from any thread (or a signal
/// handler).
///
/// No kick is lost: if the vCPU is in `run()` it returns promptly; if it is about to call
/// `run()`, or is handling an exit, its next `run()` returns [`VcpuExit::Kicked`] without
/// entering the guest. Kicks that arrive before the vCPU observes one are merged into it.
///
/// ```no_run
/// # fn f(mut vcpu: Box<dyn vmkit::Vcpu>) -> Result<(), vmkit::VcpuError> {
/// let kick = vcpu.kick_handle();
/// std::thread::spawn(move || kick.kick());
/// loop {
///     if let vmkit::VcpuExit::Kicked = vcpu.run()? {
///         break;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct KickHandle(Arc<dyn Kick>);

impl KickHandle {
    /// Wraps a backend's kick mechanism.
    pub fn new(kick: Arc<dyn Kick>) -> Self {
        KickHandle(kick)
    }

    /// Kicks the vCPU; see [`Kick::kick`].
    pub fn kick(&self) {
        self.0.kick()
    }
}

/// Errors from running a vCPU or reading and writing its state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// An ioctl or hypercall on the vCPU failed.
    #[error("{op} failed on vCPU {vcpu}")]
    Os {
        /// The vCPU.
        vcpu: u32,
        /// The ioctl or hypercall, e.g. `KVM_SET_SREGS`.
        op: &'static str,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// The state passed in cannot be given to the hypervisor.
    #[error("invalid {what} for vCPU {vcpu}: {reason}")]
    InvalidState {
        /// The vCPU.
        vcpu: u32,
        /// Which state, e.g. "XSAVE area".
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// This hypervisor, or this VM's configuration, lacks the feature.
    #[error("{feature} is not available on vCPU {vcpu}: {reason}")]
    Unsupported {
        /// The vCPU.
        vcpu: u32,
        /// The feature, e.g. "local APIC state".
        feature: &'static str,
        /// Why, e.g. "the VM has no in-kernel irqchip".
        reason: &'static str,
    },
}

/// A virtual CPU.
///
/// `run()` enters the guest and returns at the next event the VMM must handle. Reads and
/// writes of state are allowed whenever the vCPU is not inside `run()`.
pub trait Vcpu: Send {
    /// This vCPU's id within its VM.
    fn id(&self) -> u32;

    /// Runs the guest until the next exit.
    ///
    /// The exit borrows the vCPU: fill the data of a read exit, then drop the exit and call
    /// `run()` again to complete the access and continue.
    fn run(&mut self) -> Result<VcpuExit<'_>, VcpuError>;

    /// A handle that kicks this vCPU out of `run()` from another thread.
    fn kick_handle(&self) -> KickHandle;

    /// Finishes the access of the last port-I/O or MMIO exit without running the guest on.
    ///
    /// A hypervisor may complete such an access, and move the instruction pointer past the
    /// instruction, only when the vCPU next runs (KVM does, on Intel and AMD alike), so state
    /// read right after the exit can still point at the instruction. Call this before saving
    /// a vCPU's state ([`snapshot::save_vcpu`](crate::snapshot::save_vcpu) does); it is
    /// harmless when nothing is pending. The default does nothing, for backends that complete
    /// accesses at once.
    fn complete_pending_io(&self) -> Result<(), VcpuError> {
        Ok(())
    }

    /// Enables or disables single-stepping and hardware breakpoints.
    fn set_guest_debug(&self, debug: &GuestDebug) -> Result<(), VcpuError>;

    /// Reads the general-purpose registers.
    #[cfg(target_arch = "x86_64")]
    fn regs(&self) -> Result<Regs, VcpuError>;
    /// Writes the general-purpose registers.
    #[cfg(target_arch = "x86_64")]
    fn set_regs(&self, regs: &Regs) -> Result<(), VcpuError>;

    /// Reads the segment, control and descriptor-table registers.
    #[cfg(target_arch = "x86_64")]
    fn sregs(&self) -> Result<SpecialRegs, VcpuError>;
    /// Writes the segment, control and descriptor-table registers.
    #[cfg(target_arch = "x86_64")]
    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<(), VcpuError>;

    /// Reads the x87/SSE state.
    #[cfg(target_arch = "x86_64")]
    fn fpu(&self) -> Result<Fpu, VcpuError>;
    /// Writes the x87/SSE state.
    #[cfg(target_arch = "x86_64")]
    fn set_fpu(&self, fpu: &Fpu) -> Result<(), VcpuError>;

    /// Reads the MSRs with the given indices; fails if any of them cannot be read.
    #[cfg(target_arch = "x86_64")]
    fn msrs(&self, indices: &[u32]) -> Result<Vec<Msr>, VcpuError>;
    /// Writes MSRs; fails, naming the first one refused, unless all were written.
    #[cfg(target_arch = "x86_64")]
    fn set_msrs(&self, msrs: &[Msr]) -> Result<(), VcpuError>;

    /// Reads the CPUID leaves the guest sees.
    #[cfg(target_arch = "x86_64")]
    fn cpuid(&self) -> Result<Vec<CpuidEntry>, VcpuError>;
    /// Sets the CPUID leaves the guest sees (typically the hypervisor's supported CPUID,
    /// adjusted). Must happen before the first `run()`.
    #[cfg(target_arch = "x86_64")]
    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), VcpuError>;

    /// Reads the local APIC's registers (needs a VM with an in-kernel irqchip).
    #[cfg(target_arch = "x86_64")]
    fn lapic(&self) -> Result<LapicState, VcpuError>;
    /// Writes the local APIC's registers (needs a VM with an in-kernel irqchip).
    #[cfg(target_arch = "x86_64")]
    fn set_lapic(&self, lapic: &LapicState) -> Result<(), VcpuError>;

    /// Reads the XSAVE area.
    #[cfg(target_arch = "x86_64")]
    fn xsave(&self) -> Result<Xsave, VcpuError>;
    /// Writes the XSAVE area.
    #[cfg(target_arch = "x86_64")]
    fn set_xsave(&self, xsave: &Xsave) -> Result<(), VcpuError>;

    /// Reads the extended control registers.
    #[cfg(target_arch = "x86_64")]
    fn xcrs(&self) -> Result<Vec<Xcr>, VcpuError>;
    /// Writes the extended control registers.
    #[cfg(target_arch = "x86_64")]
    fn set_xcrs(&self, xcrs: &[Xcr]) -> Result<(), VcpuError>;

    /// Reads pending exceptions, interrupts, NMIs and SMM state.
    #[cfg(target_arch = "x86_64")]
    fn vcpu_events(&self) -> Result<VcpuEvents, VcpuError>;
    /// Writes pending exceptions, interrupts, NMIs and SMM state.
    #[cfg(target_arch = "x86_64")]
    fn set_vcpu_events(&self, events: &VcpuEvents) -> Result<(), VcpuError>;

    /// Reads the multiprocessing state.
    #[cfg(target_arch = "x86_64")]
    fn mp_state(&self) -> Result<MpState, VcpuError>;
    /// Writes the multiprocessing state.
    #[cfg(target_arch = "x86_64")]
    fn set_mp_state(&self, state: MpState) -> Result<(), VcpuError>;
}
