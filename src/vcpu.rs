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
    /// With a split irqchip ([`IrqchipKind::Split`](crate::IrqchipKind::Split)), the guest
    /// ended a level-triggered interrupt of `vector` at its local APIC: the VMM's IOAPIC
    /// clears the remote IRR of the pins that use the vector (and raises a pin again if its
    /// line is still asserted). vmkit-bus hands it to the listener set with
    /// `Bus::set_eoi_listener`.
    IoapicEoi {
        /// The vector the guest acknowledged.
        vector: u8,
    },
    /// A dirty ring of this vCPU is full: harvest the VM's dirty log before running it again.
    /// Never with emulated rings
    /// ([`Capabilities::dirty_ring_emulated`](crate::Capabilities::dirty_ring_emulated)).
    DirtyRingFull,
    /// An exit this version of vmkit does not decode, with the backend's raw exit code.
    Unknown {
        /// The raw exit reason (for KVM, `kvm_run.exit_reason`).
        code: u32,
    },
}

/// What an [`VcpuExit::InternalError`]'s `suberror` means, for the codes vmkit knows:
/// KVM's `KVM_INTERNAL_ERROR_*` (1 to 4; in backend-neutral words) and the Xen backend's
/// unserved I/O request.
pub fn internal_error_name(suberror: u32) -> Option<&'static str> {
    match suberror {
        1 => Some("emulation failure"),
        2 => Some("simultaneous exceptions"),
        3 => Some("unexpected exit during event delivery"),
        4 => Some("unexpected exit reason"),
        // The Xen backend's `INVALID_IOREQ` ("xn" 1), named here whatever the features.
        0x786e_0001 => Some("I/O request vmkit could not serve"),
        _ => None,
    }
}

/// The exit in words, e.g. "a 1-byte write to port 0x3f8" or "internal error 1 (emulation
/// failure)"; `{:?}` has every field.
///
/// ```
/// use vmkit::VcpuExit;
///
/// let exit = VcpuExit::InternalError { suberror: 1, data: &[] };
/// assert_eq!(exit.to_string(), "internal error 1 (emulation failure)");
/// assert_eq!(VcpuExit::Shutdown.to_string(), "a shutdown (triple fault)");
/// ```
impl fmt::Display for VcpuExit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcpuExit::IoIn { port, data, .. } => {
                write!(f, "a {}-byte read of port {port:#x}", data.len())
            }
            VcpuExit::IoOut { port, data, .. } => {
                write!(f, "a {}-byte write to port {port:#x}", data.len())
            }
            VcpuExit::MmioRead { addr, data } => {
                write!(f, "a {}-byte read of MMIO address {addr:#x}", data.len())
            }
            VcpuExit::MmioWrite { addr, data } => {
                write!(f, "a {}-byte write to MMIO address {addr:#x}", data.len())
            }
            VcpuExit::Hlt => f.write_str("hlt"),
            VcpuExit::Shutdown => f.write_str("a shutdown (triple fault)"),
            VcpuExit::SystemEvent { kind, .. } => write!(f, "a system event ({kind:?})"),
            VcpuExit::Debug(d) => {
                write!(f, "a debug event (vector {}) at {:#x}", d.exception, d.pc)
            }
            VcpuExit::InternalError { suberror, .. } => match internal_error_name(*suberror) {
                Some(name) => write!(f, "internal error {suberror} ({name})"),
                None => write!(f, "internal error {suberror}"),
            },
            VcpuExit::FailEntry { reason, cpu } => write!(
                f,
                "a failed entry (hardware reason {reason:#x}, host CPU {cpu})"
            ),
            VcpuExit::IoapicEoi { vector } => write!(f, "an IOAPIC EOI of vector {vector:#x}"),
            VcpuExit::Kicked => f.write_str("a kick"),
            VcpuExit::Interrupted => f.write_str("a signal"),
            VcpuExit::DirtyRingFull => f.write_str("a full dirty ring"),
            VcpuExit::Unknown { code } => write!(f, "an unknown exit (code {code})"),
        }
    }
}

/// The system-wide event a guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// This hypervisor, or this VM's configuration, lacks what the operation needs.
    #[error("{op} is not supported on vCPU {vcpu}: {reason}")]
    Unsupported {
        /// The vCPU.
        vcpu: u32,
        /// What was asked for, e.g. "local APIC state".
        op: &'static str,
        /// Why, e.g. "the VM has no in-kernel irqchip".
        reason: &'static str,
    },
    /// The pending-event state passed to [`Vcpu::set_vcpu_events`] sets a field this
    /// hypervisor cannot hold (see
    /// [`Capabilities::vcpu_event_fields`](crate::Capabilities::vcpu_event_fields)).
    #[cfg(target_arch = "x86_64")]
    #[error("{field} cannot be set on vCPU {vcpu}: {reason}")]
    EventFieldUnsupported {
        /// The vCPU.
        vcpu: u32,
        /// The field.
        field: crate::arch::x86_64::VcpuEventField,
        /// Why the hypervisor cannot hold it.
        reason: &'static str,
    },
}

/// What the trait's default methods return: the backend does not offer `op` at all.
fn unsupported<T>(vcpu: u32, op: &'static str, reason: &'static str) -> Result<T, VcpuError> {
    Err(VcpuError::Unsupported { vcpu, op, reason })
}

/// A virtual CPU.
///
/// `run()` enters the guest and returns at the next event the VMM must handle. Reads and
/// writes of state are allowed whenever the vCPU is not inside `run()`.
///
/// Guest debugging, the local APIC, XSAVE, XCRs and vCPU events are optional: a backend
/// that lacks one keeps the default method, which returns [`VcpuError::Unsupported`], and
/// reports the feature as absent in its [`Capabilities`](crate::Capabilities).
///
/// # A vCPU keeps its VM alive
///
/// Every backend keeps this contract: a vCPU holds its VM, and so the VM's guest memory,
/// alive. Dropping the [`Vm`](crate::Vm) while vCPUs exist leaves the hypervisor's VM (a KVM
/// VM, a Xen domain) and every region mapped in it in place until the last of those vCPUs
/// is dropped too; the vCPUs keep running guest code from that memory. A VMM can therefore
/// move vCPUs to their own threads without keeping the `Vm` around for their sake, and a
/// vCPU never runs on memory that was unmapped under it. (Removing a region with
/// [`Vm::remove_memory_region`](crate::Vm::remove_memory_region) is different: that is the
/// VMM's explicit request, and the guest loses that range.)
///
/// ```
/// use vmkit::vm_memory::{Bytes, GuestAddress};
/// use vmkit::{MemoryFlags, MemoryRegion, VcpuExit, VmConfig};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let vm = vmkit::open()?.create_vm(&VmConfig::default())?;
/// let ram = MemoryRegion::anonymous(GuestAddress(0), 0x1000, MemoryFlags::empty())?;
/// vm.add_memory_region(ram)?;
/// // mov al, 0x42; out 0x80, al; hlt
/// vm.memory().write_slice(&[0xb0, 0x42, 0xe6, 0x80, 0xf4], GuestAddress(0))?;
/// let mut vcpu = vm.create_vcpu(0)?;
/// drop(vm);
///
/// // Real mode at 0:0: the code above, still mapped.
/// let mut sregs = vcpu.sregs()?;
/// sregs.cs.base = 0;
/// sregs.cs.selector = 0;
/// vcpu.set_sregs(&sregs)?;
/// let mut regs = vcpu.regs()?;
/// regs.rip = 0;
/// regs.rflags = 0x2;
/// vcpu.set_regs(&regs)?;
/// assert!(matches!(vcpu.run()?, VcpuExit::IoOut { port: 0x80, data: [0x42], .. }));
/// assert!(matches!(vcpu.run()?, VcpuExit::Hlt));
/// # Ok(()) }
/// ```
///
/// The examples create a VM on whichever hypervisor the host has (see [`crate::open`]);
/// those marked `no_run` need a guest to run.
pub trait Vcpu: Send {
    /// This vCPU's id within its VM.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// assert_eq!(vm.create_vcpu(0)?.id(), 0);
    /// # Ok(()) }
    /// ```
    fn id(&self) -> u32;

    /// Runs the guest until the next exit.
    ///
    /// The exit borrows the vCPU: fill the data of a read exit, then drop the exit and call
    /// `run()` again to complete the access and continue.
    ///
    /// ```no_run
    /// use vmkit::VcpuExit;
    /// # fn f(mut vcpu: Box<dyn vmkit::Vcpu>) -> Result<(), vmkit::VcpuError> {
    /// loop {
    ///     match vcpu.run()? {
    ///         VcpuExit::IoIn { port: 0x3f8, data, .. } => data.fill(0), // answered at the next run()
    ///         VcpuExit::IoOut { port: 0x3f8, data, .. } => print!("{}", data[0] as char),
    ///         VcpuExit::Hlt | VcpuExit::Shutdown => break,
    ///         other => println!("unhandled exit: {other:?}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    fn run(&mut self) -> Result<VcpuExit<'_>, VcpuError>;

    /// A handle that kicks this vCPU out of `run()` from another thread.
    ///
    /// ```
    /// use vmkit::VcpuExit;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let mut vcpu = vm.create_vcpu(0)?;
    /// let kick = vcpu.kick_handle();
    /// kick.kick();
    /// // A kick made before run() ends that run() without entering the guest.
    /// assert!(matches!(vcpu.run()?, VcpuExit::Kicked));
    /// # Ok(()) }
    /// ```
    fn kick_handle(&self) -> KickHandle;

    /// Finishes the access of the last port-I/O or MMIO exit without running the guest on.
    ///
    /// A hypervisor may complete such an access, and move the instruction pointer past the
    /// instruction, only when the vCPU next runs (KVM does, on Intel and AMD alike), so state
    /// read right after the exit can still point at the instruction. Call this before saving
    /// a vCPU's state ([`snapshot::save_vcpu`](crate::snapshot::save_vcpu) does); it is
    /// harmless when nothing is pending. The default does nothing, for backends that complete
    /// accesses at once.
    ///
    /// ```no_run
    /// # fn f(mut vcpu: Box<dyn vmkit::Vcpu>) -> Result<(), vmkit::VcpuError> {
    /// if let vmkit::VcpuExit::IoOut { .. } = vcpu.run()? {
    ///     vcpu.complete_pending_io()?;
    ///     let rip = vcpu.regs()?.rip; // now past the `out` instruction
    /// #   let _ = rip;
    /// }
    /// # Ok(()) }
    /// ```
    fn complete_pending_io(&self) -> Result<(), VcpuError> {
        Ok(())
    }

    /// Enables or disables single-stepping and hardware breakpoints.
    ///
    /// ```
    /// use vmkit::GuestDebug;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().guest_debug { return Ok(()); }
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// // Stop before the instruction at 0x1000: run() returns VcpuExit::Debug there.
    /// let debug = GuestDebug { hw_breakpoints: vec![0x1000], ..GuestDebug::default() };
    /// vcpu.set_guest_debug(&debug)?;
    /// # Ok(()) }
    /// ```
    fn set_guest_debug(&self, debug: &GuestDebug) -> Result<(), VcpuError> {
        let _ = debug;
        unsupported(
            self.id(),
            "guest debugging",
            "this hypervisor backend cannot single-step or set breakpoints \
             (Capabilities::guest_debug is false)",
        )
    }

    /// Reads guest memory at the linear (guest-virtual) address `gva` as this vCPU sees it
    /// now, through its page tables, into `buf`, and returns how many bytes it read: fewer
    /// than `buf.len()` where the range reaches an unmapped page or an address without
    /// guest RAM. For small reads, such as the instruction bytes at `rip`. The default
    /// method: [`VcpuError::Unsupported`].
    ///
    /// ```no_run
    /// # fn f(vcpu: &dyn vmkit::Vcpu) -> Result<(), vmkit::VcpuError> {
    /// let rip = vcpu.regs()?.rip;
    /// let mut code = [0u8; 15];
    /// let n = vcpu.read_virtual(vcpu.sregs()?.cs.base.wrapping_add(rip), &mut code)?;
    /// println!("{:02x?}", &code[..n]);
    /// # Ok(()) }
    /// ```
    fn read_virtual(&self, gva: u64, buf: &mut [u8]) -> Result<usize, VcpuError> {
        let _ = (gva, buf);
        unsupported(
            self.id(),
            "reading guest-virtual memory",
            "this backend does not translate guest addresses",
        )
    }

    /// Reads the general-purpose registers.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// println!("the vCPU starts at {:#x}", vcpu.regs()?.rip);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn regs(&self) -> Result<Regs, VcpuError>;
    /// Writes the general-purpose registers.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let mut regs = vcpu.regs()?;
    /// regs.rip = 0x1000;
    /// regs.rflags = 0x2; // bit 1 is always set
    /// vcpu.set_regs(&regs)?;
    /// assert_eq!(vcpu.regs()?.rip, 0x1000);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_regs(&self, regs: &Regs) -> Result<(), VcpuError>;

    /// Reads the segment, control and descriptor-table registers.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let sregs = vcpu.sregs()?;
    /// assert_eq!(sregs.cr0 & 1, 0); // a fresh vCPU starts in real mode
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn sregs(&self) -> Result<SpecialRegs, VcpuError>;
    /// Writes the segment, control and descriptor-table registers.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// // Real mode, code segment at address 0.
    /// let mut sregs = vcpu.sregs()?;
    /// sregs.cs.base = 0;
    /// sregs.cs.selector = 0;
    /// vcpu.set_sregs(&sregs)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<(), VcpuError>;

    /// Reads the x87/SSE state.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// println!("MXCSR: {:#x}", vcpu.fpu()?.mxcsr);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn fpu(&self) -> Result<Fpu, VcpuError>;
    /// Writes the x87/SSE state.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let mut fpu = vcpu.fpu()?;
    /// fpu.fcw = 0x37f; // the x87 control word after FINIT
    /// fpu.mxcsr = 0x1f80; // SSE exceptions masked
    /// vcpu.set_fpu(&fpu)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_fpu(&self, fpu: &Fpu) -> Result<(), VcpuError>;

    /// Reads the MSRs with the given indices; fails if any of them cannot be read.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let sysenter_cs = vcpu.msrs(&[0x174])?;
    /// assert_eq!(sysenter_cs[0].index, 0x174);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn msrs(&self, indices: &[u32]) -> Result<Vec<Msr>, VcpuError>;
    /// Writes MSRs; fails, naming the first one refused, unless all were written.
    ///
    /// ```
    /// use vmkit::arch::x86_64::Msr;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// vcpu.set_msrs(&[Msr { index: 0x174, data: 0x10 }])?; // IA32_SYSENTER_CS
    /// assert_eq!(vcpu.msrs(&[0x174])?[0].data, 0x10);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_msrs(&self, msrs: &[Msr]) -> Result<(), VcpuError>;

    /// Reads the CPUID leaves the guest sees.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// vcpu.set_cpuid(&hypervisor.supported_cpuid())?;
    /// let leaf0 = vcpu.cpuid()?.into_iter().find(|e| e.function == 0);
    /// println!("highest basic leaf: {:?}", leaf0.map(|e| e.eax));
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn cpuid(&self) -> Result<Vec<CpuidEntry>, VcpuError>;
    /// Sets the CPUID leaves the guest sees (typically the hypervisor's supported CPUID,
    /// adjusted). Must happen before the first `run()`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let mut cpuid = hypervisor.supported_cpuid();
    /// // Hide the hypervisor-present bit (leaf 1, ECX bit 31) from the guest.
    /// for entry in cpuid.iter_mut().filter(|e| e.function == 1) {
    ///     entry.ecx &= !(1 << 31);
    /// }
    /// vcpu.set_cpuid(&cpuid)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<(), VcpuError>;

    /// Reads the local APIC's registers (needs a VM with an in-kernel irqchip).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().irqchip { return Ok(()); }
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default().irqchip(true))?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let lapic = vcpu.lapic()?;
    /// // The APIC id register (offset 0x20) holds the id in its top byte.
    /// println!("APIC id: {}", lapic.regs[0x23]);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn lapic(&self) -> Result<LapicState, VcpuError> {
        unsupported(
            self.id(),
            "local APIC state",
            "this hypervisor backend exposes no local APIC state",
        )
    }
    /// Writes the local APIC's registers (needs a VM with an in-kernel irqchip).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().irqchip { return Ok(()); }
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default().irqchip(true))?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let lapic = vcpu.lapic()?;
    /// vcpu.set_lapic(&lapic)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_lapic(&self, lapic: &LapicState) -> Result<(), VcpuError> {
        let _ = lapic;
        unsupported(
            self.id(),
            "local APIC state",
            "this hypervisor backend exposes no local APIC state",
        )
    }

    /// Reads the XSAVE area.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().xsave { return Ok(()); }
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// println!("{} bytes of XSAVE area", vcpu.xsave()?.region.len() * 4);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn xsave(&self) -> Result<Xsave, VcpuError> {
        unsupported(
            self.id(),
            "XSAVE state",
            "this hypervisor backend exposes no XSAVE area (Capabilities::xsave is false)",
        )
    }
    /// Writes the XSAVE area.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().xsave { return Ok(()); }
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let xsave = vcpu.xsave()?;
    /// vcpu.set_xsave(&xsave)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_xsave(&self, xsave: &Xsave) -> Result<(), VcpuError> {
        let _ = xsave;
        unsupported(
            self.id(),
            "XSAVE state",
            "this hypervisor backend exposes no XSAVE area (Capabilities::xsave is false)",
        )
    }

    /// Reads the extended control registers.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().xcrs { return Ok(()); }
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// for xcr in vcpu.xcrs()? {
    ///     println!("XCR{} = {:#x}", xcr.index, xcr.value);
    /// }
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn xcrs(&self) -> Result<Vec<Xcr>, VcpuError> {
        unsupported(
            self.id(),
            "XCRs",
            "this hypervisor backend exposes no XCRs (Capabilities::xcrs is false)",
        )
    }
    /// Writes the extended control registers.
    ///
    /// ```
    /// use vmkit::arch::x86_64::Xcr;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().xcrs { return Ok(()); }
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// // XCR0 may enable only what the guest's CPUID offers: x87 and SSE state here.
    /// vcpu.set_cpuid(&hypervisor.supported_cpuid())?;
    /// vcpu.set_xcrs(&[Xcr { index: 0, value: 0x3 }])?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_xcrs(&self, xcrs: &[Xcr]) -> Result<(), VcpuError> {
        let _ = xcrs;
        unsupported(
            self.id(),
            "XCRs",
            "this hypervisor backend exposes no XCRs (Capabilities::xcrs is false)",
        )
    }

    /// Reads pending exceptions, interrupts, NMIs and SMM state.
    ///
    /// A backend may hold only part of this state besides the event being injected:
    /// [`Capabilities::vcpu_event_fields`](crate::Capabilities::vcpu_event_fields) says which
    /// parts, and those it does not hold read as clear (Xen holds the injected event only:
    /// no NMI pending or masked, no interrupt shadow, no SMM).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().vcpu_events { return Ok(()); }
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// assert!(!vcpu.vcpu_events()?.nmi.pending);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn vcpu_events(&self) -> Result<VcpuEvents, VcpuError> {
        unsupported(
            self.id(),
            "vCPU events",
            "this hypervisor backend exposes no pending-event state \
             (Capabilities::vcpu_events is false)",
        )
    }
    /// Writes pending exceptions, interrupts, NMIs and SMM state.
    ///
    /// State the backend cannot hold (see
    /// [`Capabilities::vcpu_event_fields`](crate::Capabilities::vcpu_event_fields)) is
    /// refused with [`VcpuError::EventFieldUnsupported`] naming the field, before anything
    /// changes; it is never dropped silently.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// # if !hypervisor.capabilities().vcpu_events { return Ok(()); }
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// let mut events = vcpu.vcpu_events()?;
    /// if hypervisor.capabilities().vcpu_event_fields.nmi_state {
    ///     events.nmi.pending = true; // deliver an NMI at the next run()
    /// } else {
    ///     events.nmi.injected = true; // inject one
    /// }
    /// vcpu.set_vcpu_events(&events)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_vcpu_events(&self, events: &VcpuEvents) -> Result<(), VcpuError> {
        let _ = events;
        unsupported(
            self.id(),
            "vCPU events",
            "this hypervisor backend exposes no pending-event state \
             (Capabilities::vcpu_events is false)",
        )
    }

    /// Gives the vCPU `banks` machine-check banks, so that the guest's MCG_CAP MSR (`0x179`)
    /// reports that many in bits 0–7 (with MCG_CTL present, bit 8). Call it after
    /// [`set_cpuid`](Self::set_cpuid) and before the first [`run`](Self::run); the guest's
    /// CPUID should offer MCE and MCA (leaf 1 EDX bits 7 and 14).
    ///
    /// `banks` must be between 1 and [`Capabilities::mce_banks`](crate::Capabilities) (0
    /// there: the backend has no machine-check emulation and this returns
    /// [`VcpuError::Unsupported`]).
    ///
    /// MCG_CAP is not among the MSRs a VMM saves and writes back (KVM's list has MCG_STATUS
    /// and MCG_CTL, not MCG_CAP), so a VMM that restores a snapshot into a fresh vCPU calls
    /// this with the same count first: KVM refuses a nonzero saved MCG_CTL (a guest sets it
    /// to all ones) on a vCPU whose MCG_CAP lacks MCG_CTL_P.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// let max = hypervisor.capabilities().mce_banks;
    /// # if max == 0 { return Ok(()); }
    /// let vm = hypervisor.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// vcpu.set_cpuid(&hypervisor.supported_cpuid())?;
    /// vcpu.setup_mce(max.min(10) as u8)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn setup_mce(&self, banks: u8) -> Result<(), VcpuError> {
        let _ = banks;
        unsupported(
            self.id(),
            "machine-check banks",
            "this hypervisor backend emulates no machine-check architecture \
             (Capabilities::mce_banks is 0)",
        )
    }

    /// Reads the multiprocessing state.
    ///
    /// ```
    /// use vmkit::arch::x86_64::MpState;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// assert_eq!(vcpu.mp_state()?, MpState::Runnable);
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn mp_state(&self) -> Result<MpState, VcpuError>;
    /// Writes the multiprocessing state.
    ///
    /// ```
    /// use vmkit::arch::x86_64::MpState;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let vm = vmkit::open()?.create_vm(&vmkit::VmConfig::default())?;
    /// let vcpu = vm.create_vcpu(0)?;
    /// vcpu.set_mp_state(MpState::Runnable)?;
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn set_mp_state(&self, state: MpState) -> Result<(), VcpuError>;
}
