//! The [`Hypervisor`] trait: what a host's hypervisor can do, and creating VMs on it.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[cfg(target_arch = "x86_64")]
use crate::arch::x86_64::{CpuidEntry, VcpuEventField, VcpuEventFields};
use crate::reserved::{IoSpace, ReservedRange};
use crate::vm::Vm;

/// Which hypervisor a backend drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HypervisorKind {
    /// Linux KVM, through `/dev/kvm`.
    Kvm,
    /// Xen, from a dom0 through `/dev/xen/privcmd`.
    Xen,
}

impl fmt::Display for HypervisorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HypervisorKind::Kvm => "KVM",
            HypervisorKind::Xen => "Xen",
        })
    }
}

/// What a hypervisor supports, as plain data that can be logged, serialized and compared.
///
/// A VMM saves the capabilities of the host a VM ran on (e.g. in a snapshot) and, before
/// restoring elsewhere, asks [`Capabilities::missing_in`] what the new host lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// The most vCPUs one VM may have.
    pub max_vcpus: u32,
    /// The most memory slots one VM may have.
    pub max_memory_slots: u32,
    /// Read-only memory regions ([`MemoryFlags::READ_ONLY`](crate::MemoryFlags::READ_ONLY)).
    pub read_only_memory: bool,
    /// Dirty-page logging with bitmaps ([`MemoryFlags::LOG_DIRTY`](crate::MemoryFlags::LOG_DIRTY)).
    pub dirty_log: bool,
    /// Bitmaps are cleared page by page (KVM's manual dirty-log protection), which makes
    /// harvesting large memories cheaper.
    pub dirty_log_manual_clear: bool,
    /// The most entries a per-vCPU dirty ring may have; 0 if there are no dirty rings.
    pub dirty_ring_max_entries: u32,
    /// Dirty rings ([`VmConfig::dirty_ring`]) are emulated from one bitmap for the whole VM
    /// (Xen's log-dirty mode) instead of kept by the hypervisor for each vCPU (KVM).
    /// [`Vm::harvest_dirty_log`] keeps its guarantee: every page the guest wrote since the
    /// previous harvest is reported, once. What differs: the ring never fills. Its size is
    /// checked as on KVM (a power of two, at least 256, at most
    /// [`Capabilities::dirty_ring_max_entries`]) and means nothing else; pages beyond it stay
    /// in the bitmap for the harvest, so no vCPU stops with
    /// [`VcpuExit::DirtyRingFull`](crate::VcpuExit::DirtyRingFull) and
    /// [`DirtyLog::overflowed`](crate::DirtyLog::overflowed) is never set (a VMM that counts
    /// on that exit to slow down a guest that dirties memory fast gets no pause; if Xen cannot
    /// grow its bitmap, the harvest fails with an error instead of reporting less). A harvest's
    /// cost grows with the guest's memory, as a bitmap harvest's does, not only with the
    /// pages written. There are no per-vCPU entries in the order written (no backend's API shows
    /// them). False where rings are real, or absent.
    #[serde(default)]
    pub dirty_ring_emulated: bool,
    /// An in-kernel interrupt controller ([`VmConfig::irqchip`]).
    pub irqchip: bool,
    /// An in-kernel PIT ([`VmConfig::pit`]).
    pub pit: bool,
    /// Eventfds that inject interrupts.
    pub irqfd: bool,
    /// Eventfds that guest writes signal.
    pub ioeventfd: bool,
    /// Sending MSIs directly.
    pub msi: bool,
    /// Setting the GSI routing table.
    pub gsi_routing: bool,
    /// Single-stepping and hardware breakpoints.
    pub guest_debug: bool,
    /// Reading and setting the VM clock.
    pub clock: bool,
    /// The XSAVE area can be read and written.
    pub xsave: bool,
    /// The extended control registers (XCR0) can be read and written.
    pub xcrs: bool,
    /// Pending events can be read and written.
    pub vcpu_events: bool,
    /// The local APIC's TSC-deadline timer mode can be offered to a guest (CPUID.1:ECX bit
    /// 24). KVM emulates it with an in-kernel irqchip but leaves the bit out of its supported
    /// CPUID, so a VMM sets it itself when this is true; without it a guest falls back to a
    /// slower APIC timer mode.
    #[serde(default)]
    pub tsc_deadline_timer: bool,
    /// The most machine-check banks a vCPU can have
    /// ([`Vcpu::setup_mce`](crate::Vcpu::setup_mce)); 0 when the hypervisor emulates no
    /// machine-check architecture.
    #[serde(default)]
    pub mce_banks: u32,
    /// The in-kernel PIT's lost-tick policy can be chosen
    /// ([`Vm::set_pit_reinject`]).
    #[serde(default)]
    pub pit_reinject_control: bool,
    /// A split irqchip can be asked for ([`VmConfig::split_irqchip`]): local APICs in the
    /// hypervisor, the IOAPIC and PIC left to the VMM (KVM's `KVM_CAP_SPLIT_IRQCHIP`).
    #[serde(default)]
    pub split_irqchip: bool,
    /// How the hypervisor numbers the vCPUs' local APICs: vCPU `n` has APIC ID
    /// `n * apic_id_stride` (0 counts as 1). KVM lets the VMM choose and vmkit gives `n`
    /// (0); Xen fixes `2n` (2). Firmware tables (the MADT) must say the same.
    #[serde(default)]
    pub apic_id_stride: u32,
    /// An irqfd can be level-triggered with a resample eventfd
    /// ([`Vm::register_irqfd`]'s `resample`), which needs the
    /// hypervisor to tell the guest's EOI.
    #[serde(default)]
    pub irqfd_resample: bool,
    /// The in-kernel interrupt controllers' state can be read and written
    /// ([`Vm::irqchip_state`]).
    #[serde(default)]
    pub irqchip_state: bool,
    /// The port and MMIO ranges the hypervisor handles itself, by configuration (see
    /// [`crate::reserved`]): guest accesses there never reach the VMM, so its devices must
    /// not sit there ([`Capabilities::reserved_conflict`] checks one).
    #[serde(default)]
    pub reserved: Vec<ReservedRange>,
    /// PCI configuration cycles through ports 0xCF8/0xCFC reach the VMM as port I/O for the
    /// functions it claimed with [`Vm::claim_pci_config`], so a root bus there (vmkit-pci)
    /// answers them. On KVM every cycle reaches the VMM, claimed or not; on Xen a cycle for
    /// a function no one claimed reads all ones (Xen takes a data-port access with 0xCF8's
    /// enable bit set itself and sends it only to the ioreq server that claimed the
    /// function). ECAM (MMIO) needs no claim on any backend.
    #[serde(default)]
    pub pci_config_ports: bool,
    /// Which parts of the pending-event state besides the event being injected the
    /// hypervisor holds ([`Vcpu::set_vcpu_events`](crate::Vcpu::set_vcpu_events) refuses
    /// the others, naming the field). A snapshot or migrated vCPU whose events set a field
    /// missing here is refused before anything is created.
    #[cfg(target_arch = "x86_64")]
    #[serde(default)]
    pub vcpu_event_fields: VcpuEventFields,
    /// Guest RAM is backed on first touch: a region costs the host only the pages the guest
    /// (or a restore) writes, so a sparse region may be larger than the host's memory. KVM
    /// maps the caller's memory and does; Xen allocates every frame of a region when it is
    /// added ([`Vm::add_memory_region`]), and a region larger than the free memory is
    /// refused.
    #[serde(default)]
    pub ram_on_demand: bool,
    /// A guest can run code from a read-only region
    /// ([`MemoryFlags::READ_ONLY`](crate::MemoryFlags::READ_ONLY)). KVM: always. Xen: vmkit
    /// sends writes to such regions to the VMM through the ioreq server's page type, which
    /// Xen maps executable with Intel's EPT but not with AMD's nested paging (`p2m-pt.c`):
    /// there an instruction fetch from such a page faults into Xen's emulator, which cannot
    /// run it, and the vCPU stops with a triple fault. Keep code out of read-only regions
    /// where this is false. Dirty-logging regions
    /// ([`MemoryFlags::LOG_DIRTY`](crate::MemoryFlags::LOG_DIRTY)) run code on every
    /// backend (Xen logs them with its log-dirty mode, whose page type stays executable).
    #[serde(default)]
    pub code_runs_in_read_only_memory: bool,
    /// A vCPU paused in the middle of a port or MMIO access (a kick or a runner pause between
    /// the exit and the next `run()`) takes state writes (`set_regs`,
    /// [`VcpuState`](crate::snapshot::VcpuState) restores…). KVM completes the access first
    /// ([`Vcpu::complete_pending_io`](crate::Vcpu::complete_pending_io)). Xen: for port
    /// writes, which Xen retires at the exit (a kick serves a request the vCPU just sent
    /// before it pauses it, so the VMM has seen it); a Xen vCPU paused inside a port read, a
    /// string access or an MMIO access keeps it in flight until it runs again, and its state
    /// writes refuse with [`VcpuError::InvalidState`](crate::VcpuError::InvalidState) until
    /// then. Reads work on both, and so does loading state into a fresh vCPU (a restore).
    #[serde(default)]
    pub state_writes_mid_io: bool,
    /// A vCPU can be loaded halted (`set_mp_state(MpState::Halted)`), as restoring one
    /// saved inside `hlt` needs; where it cannot, a snapshot with a halted vCPU is refused
    /// before anything is created ([`MissingCapability::HaltedVcpu`]). KVM: yes. Xen: yes,
    /// emulated, since its HVM records keep no halted state (Xen's own restore wakes such
    /// a vCPU after its `hlt`): the vCPU's first `run()` checks whether an interrupt is
    /// deliverable to it at once (an event being injected, or with RFLAGS.IF set a vector
    /// in its local APIC's IRR above the processor priority from the TPR and ISR). If one
    /// is, it starts where it is and Xen delivers it, as KVM would wake it; if not, `rip`
    /// goes back onto its `hlt` (the byte before `rip` must be 0xF4, or `run()` fails
    /// with [`VcpuError::InvalidState`](crate::VcpuError::InvalidState)) and the vCPU halts
    /// again in Xen. The one difference: an interrupt that becomes pending between that
    /// check and the vCPU's start (or one held in the PIC) is taken before the
    /// re-executed `hlt`, so the guest halts again after its handler where KVM would have
    /// gone on past the `hlt`.
    #[serde(default)]
    pub halted_vcpus: bool,
    /// The CPUID leaves the hypervisor can offer a guest.
    #[cfg(target_arch = "x86_64")]
    pub cpuid: Vec<CpuidEntry>,
    /// The MSRs a VMM can read and write.
    #[cfg(target_arch = "x86_64")]
    pub msrs: Vec<u32>,
}

/// One thing a host lacks compared with another, from [`Capabilities::missing_in`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingCapability {
    /// A feature is absent.
    Feature(&'static str),
    /// A limit is lower.
    Limit {
        /// Which limit.
        what: &'static str,
        /// The value required.
        required: u32,
        /// The value available.
        available: u32,
    },
    /// A CPUID leaf is not offered at all.
    CpuidLeaf {
        /// Leaf.
        function: u32,
        /// Sub-leaf.
        index: u32,
    },
    /// Feature bits of a CPUID leaf are not offered.
    CpuidBits {
        /// Leaf.
        function: u32,
        /// Sub-leaf.
        index: u32,
        /// The register, `"eax"` to `"edx"`.
        register: &'static str,
        /// The bits that are set in the requirement and clear on the host.
        bits: u32,
    },
    /// An MSR cannot be read or written.
    Msr(u32),
    /// A vCPU was saved halted (inside `hlt`), which the host cannot load
    /// ([`Capabilities::halted_vcpus`]).
    HaltedVcpu {
        /// The vCPU.
        vcpu: u32,
    },
    /// A vCPU's pending-event state sets a field the host cannot hold
    /// ([`Capabilities::vcpu_event_fields`]).
    #[cfg(target_arch = "x86_64")]
    VcpuEvent {
        /// The vCPU.
        vcpu: u32,
        /// The field.
        field: VcpuEventField,
    },
}

impl fmt::Display for MissingCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissingCapability::Feature(what) => write!(f, "{what} is not supported"),
            MissingCapability::Limit {
                what,
                required,
                available,
            } => write!(f, "{what}: {required} required, {available} available"),
            MissingCapability::CpuidLeaf { function, index } => {
                write!(f, "CPUID leaf {function:#x}.{index} is not offered")
            }
            MissingCapability::CpuidBits {
                function,
                index,
                register,
                bits,
            } => write!(
                f,
                "CPUID leaf {function:#x}.{index} {register} lacks feature bits {bits:#010x}"
            ),
            MissingCapability::Msr(index) => write!(f, "MSR {index:#x} is not available"),
            MissingCapability::HaltedVcpu { vcpu } => write!(
                f,
                "vCPU {vcpu} was saved halted (inside hlt), which this host cannot load"
            ),
            #[cfg(target_arch = "x86_64")]
            MissingCapability::VcpuEvent { vcpu, field } => {
                write!(f, "vCPU {vcpu} has {field}, which this host cannot hold")
            }
        }
    }
}

/// Which CPUID registers are feature bitmaps (a set bit means "supported"), by leaf and
/// sub-leaf: `[eax, ebx, ecx, edx]`. Other registers hold values (leaf 1 EBX, for one, holds
/// the APIC id of the CPU that answered), which differ between hosts and even between runs.
#[cfg(target_arch = "x86_64")]
const CPUID_FEATURE_REGISTERS: [(u32, u32, [bool; 4]); 5] = [
    (1, 0, [false, false, true, true]),
    (7, 0, [false, true, true, true]),
    (7, 1, [true, false, false, true]),
    (0xd, 1, [true, false, false, false]),
    (0x8000_0001, 0, [false, false, true, true]),
];

impl Capabilities {
    /// Everything `self` has that `host` lacks: features, limits, CPUID feature bits and MSRs.
    /// Empty when a VM that ran with `self` can run on `host`.
    ///
    /// ```
    /// # use vmkit::Capabilities;
    /// let mut old = Capabilities::default();
    /// old.irqfd = true;
    /// old.max_vcpus = 8;
    /// let mut new = Capabilities::default();
    /// new.max_vcpus = 4;
    /// let missing: Vec<String> = old.missing_in(&new).iter().map(|m| m.to_string()).collect();
    /// assert_eq!(missing, ["irqfd is not supported", "max vCPUs: 8 required, 4 available"]);
    /// ```
    pub fn missing_in(&self, host: &Capabilities) -> Vec<MissingCapability> {
        let mut missing = Vec::new();
        let features = [
            (
                "read-only memory",
                self.read_only_memory,
                host.read_only_memory,
            ),
            ("dirty logging", self.dirty_log, host.dirty_log),
            (
                "manual dirty-log clearing",
                self.dirty_log_manual_clear,
                host.dirty_log_manual_clear,
            ),
            ("an in-kernel irqchip", self.irqchip, host.irqchip),
            ("an in-kernel PIT", self.pit, host.pit),
            ("irqfd", self.irqfd, host.irqfd),
            ("ioeventfd", self.ioeventfd, host.ioeventfd),
            ("MSI injection", self.msi, host.msi),
            ("GSI routing", self.gsi_routing, host.gsi_routing),
            ("guest debugging", self.guest_debug, host.guest_debug),
            ("the VM clock", self.clock, host.clock),
            ("XSAVE state", self.xsave, host.xsave),
            ("XCRs", self.xcrs, host.xcrs),
            ("vCPU events", self.vcpu_events, host.vcpu_events),
            (
                "the TSC-deadline timer",
                self.tsc_deadline_timer,
                host.tsc_deadline_timer,
            ),
            (
                "level-triggered irqfds (resample)",
                self.irqfd_resample,
                host.irqfd_resample,
            ),
            (
                "irqchip state access",
                self.irqchip_state,
                host.irqchip_state,
            ),
            (
                "PIT reinjection control",
                self.pit_reinject_control,
                host.pit_reinject_control,
            ),
            ("a split irqchip", self.split_irqchip, host.split_irqchip),
        ];
        for (name, required, available) in features {
            if required && !available {
                missing.push(MissingCapability::Feature(name));
            }
        }
        let limits = [
            ("max vCPUs", self.max_vcpus, host.max_vcpus),
            ("memory slots", self.max_memory_slots, host.max_memory_slots),
            (
                "dirty ring entries",
                self.dirty_ring_max_entries,
                host.dirty_ring_max_entries,
            ),
            ("machine-check banks", self.mce_banks, host.mce_banks),
        ];
        for (what, required, available) in limits {
            if required > available {
                missing.push(MissingCapability::Limit {
                    what,
                    required,
                    available,
                });
            }
        }
        #[cfg(target_arch = "x86_64")]
        self.missing_x86_in(host, &mut missing);
        missing
    }

    /// The fields of vCPU `vcpu`'s pending-event state that `self` (the host to restore on)
    /// cannot hold, as [`MissingCapability::VcpuEvent`]s; empty when it can hold them all.
    ///
    /// ```
    /// use vmkit::arch::x86_64::VcpuEvents;
    /// let mut events = VcpuEvents::default();
    /// events.interrupt.shadow = 1;
    /// let missing = vmkit::Capabilities::default().missing_events(0, &events);
    /// assert_eq!(missing[0].to_string(),
    ///     "vCPU 0 has an interrupt shadow (interrupt.shadow), which this host cannot hold");
    /// ```
    #[cfg(target_arch = "x86_64")]
    pub fn missing_events(
        &self,
        vcpu: u32,
        events: &crate::arch::x86_64::VcpuEvents,
    ) -> Vec<MissingCapability> {
        events
            .unsupported_in(self.vcpu_event_fields)
            .into_iter()
            .map(|field| MissingCapability::VcpuEvent { vcpu, field })
            .collect()
    }

    /// What keeps `self` (the host to restore on) from loading vCPU `vcpu` in `mp_state`:
    /// a halted vCPU where the host cannot hold one ([`Capabilities::halted_vcpus`]).
    ///
    /// ```
    /// use vmkit::arch::x86_64::MpState;
    /// let host = vmkit::Capabilities::default();
    /// assert!(host.missing_mp_state(1, MpState::Runnable).is_none());
    /// assert_eq!(host.missing_mp_state(1, MpState::Halted).unwrap().to_string(),
    ///     "vCPU 1 was saved halted (inside hlt), which this host cannot load");
    /// ```
    #[cfg(target_arch = "x86_64")]
    pub fn missing_mp_state(
        &self,
        vcpu: u32,
        mp_state: crate::arch::x86_64::MpState,
    ) -> Option<MissingCapability> {
        (mp_state == crate::arch::x86_64::MpState::Halted && !self.halted_vcpus)
            .then_some(MissingCapability::HaltedVcpu { vcpu })
    }

    /// The first range the hypervisor handles itself in a VM created with `config` that
    /// `len` ports or bytes from `start` overlap, if any: a device of the VMM there would
    /// never see the guest's accesses.
    ///
    /// ```
    /// use vmkit::reserved::{IoSpace, ReservedRange, ReservedWhen};
    /// use vmkit::{Capabilities, VmConfig};
    /// let mut caps = Capabilities::default();
    /// caps.reserved.push(ReservedRange::new(IoSpace::Pio, 0x40, 4, ReservedWhen::Pit, "PIT"));
    /// let config = VmConfig::default().irqchip(true).pit(true);
    /// assert!(caps.reserved_conflict(&config, IoSpace::Pio, 0x42, 1).is_some());
    /// assert!(caps.reserved_conflict(&config, IoSpace::Pio, 0x3f8, 8).is_none());
    /// ```
    pub fn reserved_conflict(
        &self,
        config: &VmConfig,
        space: IoSpace,
        start: u64,
        len: u64,
    ) -> Option<&ReservedRange> {
        crate::reserved::conflict(&self.reserved, config, space, start, len)
    }

    #[cfg(target_arch = "x86_64")]
    fn missing_x86_in(&self, host: &Capabilities, missing: &mut Vec<MissingCapability>) {
        let find = |caps: &Capabilities, function: u32, index: u32| {
            caps.cpuid
                .iter()
                .find(|e| e.function == function && e.index == index)
                .copied()
        };
        for (function, index, features) in CPUID_FEATURE_REGISTERS {
            let Some(required) = find(self, function, index) else {
                continue;
            };
            let Some(available) = find(host, function, index) else {
                missing.push(MissingCapability::CpuidLeaf { function, index });
                continue;
            };
            let registers = [
                ("eax", required.eax, available.eax),
                ("ebx", required.ebx, available.ebx),
                ("ecx", required.ecx, available.ecx),
                ("edx", required.edx, available.edx),
            ];
            for ((register, required, available), is_features) in
                registers.into_iter().zip(features)
            {
                if !is_features {
                    continue;
                }
                let bits = required & !available;
                if bits != 0 {
                    missing.push(MissingCapability::CpuidBits {
                        function,
                        index,
                        register,
                        bits,
                    });
                }
            }
        }
        for &msr in &self.msrs {
            if !host.msrs.contains(&msr) {
                missing.push(MissingCapability::Msr(msr));
            }
        }
    }
}

/// How to build a VM.
///
/// ```
/// let config = vmkit::VmConfig::default().max_vcpus(4).irqchip(true);
/// assert_eq!(config.max_vcpus, 4);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct VmConfig {
    /// How many vCPUs the VM may have; vCPU ids run from 0 to `max_vcpus - 1`.
    pub max_vcpus: u32,
    /// Emulate the interrupt controllers (PIC, IOAPIC, local APICs) in the hypervisor.
    ///
    /// With it a vCPU that executes `hlt` waits in the hypervisor for an interrupt instead of
    /// returning [`VcpuExit::Hlt`](crate::VcpuExit::Hlt), and each vCPU has a local APIC whose
    /// state can be read and written.
    pub irqchip: bool,
    /// Emulate the 8254 PIT in the hypervisor (needs `irqchip`, and the full one: see
    /// [`IrqchipKind::Split`]).
    pub pit: bool,
    /// Which parts of the interrupt controllers the hypervisor emulates when `irqchip` is
    /// set: all of them (the default), or only the local APICs ([`VmConfig::split_irqchip`]).
    #[serde(default)]
    pub irqchip_kind: IrqchipKind,
    /// Track dirty pages with per-vCPU rings of this many entries (a power of two, from
    /// [`VmConfig::MIN_DIRTY_RING_ENTRIES`] to [`Capabilities::dirty_ring_max_entries`])
    /// instead of bitmaps; see [`DirtyLogMode`](crate::dirty::DirtyLogMode).
    pub dirty_ring: Option<u32>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            max_vcpus: 1,
            irqchip: false,
            pit: false,
            irqchip_kind: IrqchipKind::Full,
            dirty_ring: None,
        }
    }
}

impl VmConfig {
    /// Sets how many vCPUs the VM may have.
    pub fn max_vcpus(mut self, max_vcpus: u32) -> Self {
        self.max_vcpus = max_vcpus;
        self
    }

    /// Chooses whether the hypervisor emulates the interrupt controllers.
    pub fn irqchip(mut self, irqchip: bool) -> Self {
        self.irqchip = irqchip;
        self
    }

    /// Asks for a split irqchip: local APICs in the hypervisor, the IOAPIC (and PIC, if any)
    /// in the VMM, with `ioapic_routes` GSIs (24 to [`IrqchipKind::MAX_IOAPIC_ROUTES`]) kept
    /// for the VMM's IOAPIC pins. Sets `irqchip` too; see [`IrqchipKind::Split`] for what
    /// the VMM then does.
    ///
    /// ```
    /// let config = vmkit::VmConfig::default().split_irqchip(24);
    /// assert!(config.irqchip);
    /// assert_eq!(config.split_ioapic_routes(), Some(24));
    /// ```
    pub fn split_irqchip(mut self, ioapic_routes: u32) -> Self {
        self.irqchip = true;
        self.irqchip_kind = IrqchipKind::Split { ioapic_routes };
        self
    }

    /// The GSIs kept for the VMM's IOAPIC when the VM has a split irqchip; `None` otherwise.
    pub fn split_ioapic_routes(&self) -> Option<u32> {
        match self.irqchip_kind {
            IrqchipKind::Split { ioapic_routes } if self.irqchip => Some(ioapic_routes),
            _ => None,
        }
    }

    /// The fewest entries a dirty ring ([`VmConfig::dirty_ring`]) may have: one page of KVM's
    /// 16-byte entries, the least KVM takes. Xen, whose rings are emulated, checks the same.
    pub const MIN_DIRTY_RING_ENTRIES: u32 = 256;

    /// What is wrong with this configuration's dirty-ring size on a hypervisor whose rings
    /// hold at most `max_entries`, the same on every backend: it must be a power of two from
    /// [`MIN_DIRTY_RING_ENTRIES`](Self::MIN_DIRTY_RING_ENTRIES) to `max_entries`. `None` if
    /// nothing is, or if the configuration asks for no ring.
    #[cfg_attr(
        not(any(feature = "kvm", feature = "xen")),
        expect(dead_code, reason = "only the backends check a configuration")
    )]
    pub(crate) fn dirty_ring_problem(&self, max_entries: u32) -> Option<&'static str> {
        let entries = self.dirty_ring?;
        let fits = (Self::MIN_DIRTY_RING_ENTRIES..=max_entries).contains(&entries);
        (!entries.is_power_of_two() || !fits).then_some(
            "dirty ring entries must be a power of two, at least 256 \
             (VmConfig::MIN_DIRTY_RING_ENTRIES) and at most Capabilities::dirty_ring_max_entries",
        )
    }

    /// What is wrong with this configuration's split irqchip, the same on every backend that
    /// has one: a route count outside 24..=48, a PIT (it needs the in-kernel PIC and IOAPIC),
    /// or a split irqchip asked for without the irqchip. `None` if nothing is.
    #[cfg_attr(
        not(any(feature = "kvm", feature = "xen")),
        expect(dead_code, reason = "only the backends check a configuration")
    )]
    pub(crate) fn split_irqchip_problem(&self) -> Option<&'static str> {
        match self.split_ioapic_routes() {
            Some(routes)
                if !(IrqchipKind::MIN_IOAPIC_ROUTES..=IrqchipKind::MAX_IOAPIC_ROUTES)
                    .contains(&routes) =>
            {
                Some(
                    "a split irqchip reserves 24 to 48 (IrqchipKind::MAX_IOAPIC_ROUTES) IOAPIC \
                     routes",
                )
            }
            Some(_) if self.pit => Some(
                "an in-kernel PIT needs the in-kernel PIC and IOAPIC, which a split irqchip \
                 leaves to the VMM",
            ),
            Some(_) => None,
            None => matches!(self.irqchip_kind, IrqchipKind::Split { .. })
                .then_some("a split irqchip needs VmConfig::irqchip"),
        }
    }

    /// Chooses whether the hypervisor emulates the PIT (needs the irqchip). On Xen the
    /// irqchip's platform always includes Xen's PIT (ports 0x40-0x43 and 0x61, see
    /// [`Capabilities::reserved`]); there `pit(false)` only refuses the PIT's state calls
    /// ([`VmError::NoPit`](crate::VmError::NoPit)).
    pub fn pit(mut self, pit: bool) -> Self {
        self.pit = pit;
        self
    }

    /// Tracks dirty pages with per-vCPU rings of `entries` entries, or with bitmaps (`None`).
    pub fn dirty_ring(mut self, entries: Option<u32>) -> Self {
        self.dirty_ring = entries;
        self
    }
}

/// Which interrupt controllers a hypervisor's irqchip ([`VmConfig::irqchip`]) emulates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum IrqchipKind {
    /// The local APICs, the IOAPIC and the two PICs.
    #[default]
    Full,
    /// The local APICs only (KVM's `KVM_CAP_SPLIT_IRQCHIP`); the VMM emulates the IOAPIC
    /// (e.g. vmkit-devices' `IoApic`) and sends its interrupts as MSIs.
    ///
    /// The hypervisor reserves GSIs `0..ioapic_routes` for the VMM's IOAPIC pins: the VMM
    /// routes each to the MSI the pin's redirection entry gives
    /// ([`Vm::set_gsi_routing`]), so an irqfd on a pin's GSI
    /// keeps working, and the hypervisor learns from those routes which vectors are
    /// level-triggered: a guest's EOI of such a vector stops the vCPU with
    /// [`VcpuExit::IoapicEoi`](crate::VcpuExit::IoapicEoi) for the IOAPIC to see (on Xen,
    /// which reports no EOI, vmkit reads it from the local APIC's registers: the exit comes
    /// up to a millisecond after the EOI, the guest running on meanwhile). There is
    /// no in-kernel PIT (it needs the in-kernel PIC and IOAPIC), so [`VmConfig::pit`] is
    /// refused with it, and no `Vm::irqchip_state` (the IOAPIC's state is the VMM's).
    Split {
        /// GSIs reserved for the IOAPIC's pins: 24 to [`IrqchipKind::MAX_IOAPIC_ROUTES`].
        ioapic_routes: u32,
    },
}

impl IrqchipKind {
    /// The most GSIs a split irqchip reserves for IOAPIC pins (KVM's
    /// `MAX_NR_RESERVED_IOAPIC_PINS`).
    pub const MAX_IOAPIC_ROUTES: u32 = 48;
    /// The fewest: one per pin of a PC's IOAPIC.
    pub const MIN_IOAPIC_ROUTES: u32 = 24;
}

/// Errors from opening a hypervisor, querying it and creating VMs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HypervisorError {
    /// A device node could not be opened.
    #[error("failed to open {path}")]
    Open {
        /// The device node.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// The kernel interface has a version this backend does not speak.
    #[error("{what} reports API version {found}, expected {expected}")]
    ApiVersion {
        /// The interface.
        what: &'static str,
        /// The version found.
        found: i32,
        /// The version this backend needs.
        expected: i32,
    },
    /// An ioctl or hypercall failed.
    #[error("{op} failed")]
    Os {
        /// The ioctl or hypercall, e.g. `KVM_CREATE_VM`.
        op: &'static str,
        /// What the OS reported.
        #[source]
        source: io::Error,
    },
    /// The configuration asks for more vCPUs than the hypervisor allows.
    #[error("a VM with {requested} vCPUs was requested, but the hypervisor allows at most {max}")]
    TooManyVcpus {
        /// Requested vCPU count.
        requested: u32,
        /// The hypervisor's limit.
        max: u32,
    },
    /// The configuration is invalid whatever the hypervisor.
    #[error("invalid VM configuration: {reason}")]
    InvalidConfig {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The configuration asks for something this hypervisor does not have.
    #[error("{feature} is not supported by this hypervisor")]
    Unsupported {
        /// What was asked for.
        feature: &'static str,
    },
}

/// A hypervisor on this host.
///
/// Obtain one with [`crate::open`] (whichever the host has) or from a backend directly, such as
/// [`crate::kvm::Kvm::new`]. The trait is object safe: VMMs hold a `Box<dyn Hypervisor>`.
pub trait Hypervisor: Send + Sync {
    /// Which hypervisor this is.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// println!("running on {}", hypervisor.kind()); // "KVM" or "Xen"
    /// # Ok(()) }
    /// ```
    fn kind(&self) -> HypervisorKind;

    /// The seccomp rules of a vCPU thread of this hypervisor's VMs, for
    /// [`RunnerOptions::seccomp`](crate::runner::RunnerOptions::seccomp): by default
    /// [`seccomp::vcpu_rules`](crate::seccomp::vcpu_rules) for [`kind`](Self::kind). A VMM
    /// whose exit handlers make more calls extends them before compiling.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// let rules = hypervisor.vcpu_seccomp_rules();
    /// assert!(rules.allows(libc::SYS_ioctl));
    /// assert!(!rules.allows(libc::SYS_execve));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "seccomp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "seccomp")))]
    fn vcpu_seccomp_rules(&self) -> crate::seccomp::Rules {
        crate::seccomp::vcpu_rules(self.kind())
    }

    /// What this hypervisor supports.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// let caps = hypervisor.capabilities();
    /// println!("up to {} vCPUs per VM", caps.max_vcpus);
    /// if !caps.irqfd {
    ///     println!("devices will raise interrupts through the VMM");
    /// }
    /// # Ok(()) }
    /// ```
    fn capabilities(&self) -> &Capabilities;

    /// Creates a VM with no memory and no vCPUs.
    ///
    /// ```
    /// use vmkit::VmConfig;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// let config = VmConfig::default().max_vcpus(2);
    /// let vm = hypervisor.create_vm(&config)?;
    /// let vcpu = vm.create_vcpu(1)?;
    /// # let _ = vcpu;
    /// # Ok(()) }
    /// ```
    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn Vm>, HypervisorError>;

    /// The CPUID leaves this hypervisor can present to a guest, with every supported feature
    /// set: a starting point for [`Vcpu::set_cpuid`](crate::Vcpu::set_cpuid).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// let cpuid = hypervisor.supported_cpuid();
    /// // Leaf 1, EDX bit 25: SSE.
    /// let sse = cpuid.iter().any(|e| e.function == 1 && e.edx & (1 << 25) != 0);
    /// println!("SSE for guests: {sse}");
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn supported_cpuid(&self) -> Vec<CpuidEntry> {
        self.capabilities().cpuid.clone()
    }

    /// The MSRs whose values a VMM can read and write (and should save and restore).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hypervisor = vmkit::open()?;
    /// const IA32_SYSENTER_CS: u32 = 0x174;
    /// assert!(hypervisor.msr_index_list().contains(&IA32_SYSENTER_CS));
    /// # Ok(()) }
    /// ```
    #[cfg(target_arch = "x86_64")]
    fn msr_index_list(&self) -> Vec<u32> {
        self.capabilities().msrs.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::VmConfig;

    #[test]
    fn dirty_ring_sizes_are_powers_of_two_within_kvm_limits() {
        let max = 65536;
        assert_eq!(VmConfig::default().dirty_ring_problem(max), None);
        for good in [VmConfig::MIN_DIRTY_RING_ENTRIES, 4096, max] {
            let config = VmConfig::default().dirty_ring(Some(good));
            assert_eq!(config.dirty_ring_problem(max), None, "{good}");
        }
        for bad in [0, 1, 128, 1000, 4095, max * 2, u32::MAX] {
            let config = VmConfig::default().dirty_ring(Some(bad));
            let problem = config.dirty_ring_problem(max);
            assert!(
                problem.is_some_and(|p| p.contains("power of two")),
                "{bad}: {problem:?}"
            );
        }
    }
}
