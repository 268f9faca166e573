//! The [`Hypervisor`] trait: what a host's hypervisor can do, and creating VMs on it.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[cfg(target_arch = "x86_64")]
use crate::arch::x86_64::CpuidEntry;
use crate::vm::Vm;

/// Which hypervisor a backend drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// What a hypervisor supports, as plain data that can be logged or compared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The most vCPUs one VM may have.
    pub max_vcpus: u32,
    /// The most memory slots one VM may have.
    pub max_memory_slots: u32,
    /// Read-only memory regions ([`MemoryFlags::READ_ONLY`](crate::MemoryFlags::READ_ONLY)).
    pub read_only_memory: bool,
    /// Dirty-page logging ([`MemoryFlags::LOG_DIRTY`](crate::MemoryFlags::LOG_DIRTY)).
    pub dirty_log: bool,
    /// An in-kernel interrupt controller ([`VmConfig::irqchip`]).
    pub irqchip: bool,
    /// The XSAVE area can be read and written.
    pub xsave: bool,
    /// The extended control registers (XCR0) can be read and written.
    pub xcrs: bool,
    /// Pending events can be read and written.
    pub vcpu_events: bool,
}

/// How to build a VM.
///
/// ```
/// let config = vmkit::VmConfig::default().max_vcpus(4).irqchip(true);
/// assert_eq!(config.max_vcpus, 4);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            max_vcpus: 1,
            irqchip: false,
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
}

/// Errors from opening a hypervisor, querying it and creating VMs.
#[derive(Debug, thiserror::Error)]
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
    fn kind(&self) -> HypervisorKind;

    /// What this hypervisor supports.
    fn capabilities(&self) -> &Capabilities;

    /// Creates a VM with no memory and no vCPUs.
    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn Vm>, HypervisorError>;

    /// The CPUID leaves this hypervisor can present to a guest, with every supported feature set.
    #[cfg(target_arch = "x86_64")]
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>, HypervisorError>;

    /// The MSRs whose values a VMM can read and write (and should save and restore).
    #[cfg(target_arch = "x86_64")]
    fn msr_index_list(&self) -> Result<Vec<u32>, HypervisorError>;
}
