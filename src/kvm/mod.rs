//! The KVM backend (cargo feature `kvm`), over `kvm-ioctls` and `kvm-bindings`.
//!
//! [`Kvm`] opens `/dev/kvm`; its VMs are [`KvmVm`]s and their vCPUs [`KvmVcpu`]s. Everything is
//! reached through the [`Hypervisor`], [`Vm`] and [`Vcpu`](crate::Vcpu) traits; the
//! concrete types are public so a VMM that only ever runs on KVM can name them.
//!
//! ```no_run
//! use vmkit::{kvm::Kvm, Hypervisor, VmConfig};
//!
//! let kvm = Kvm::new()?;
//! println!("up to {} vCPUs per VM", kvm.capabilities().max_vcpus);
//! let vm = kvm.create_vm(&VmConfig::default())?;
//! # Ok::<(), vmkit::Error>(())
//! ```

mod convert;
mod vcpu;
mod vm;

use std::io;
use std::sync::Arc;

use kvm_ioctls::Cap;

use crate::arch::x86_64::CpuidEntry;
use crate::hypervisor::{Capabilities, Hypervisor, HypervisorError, HypervisorKind, VmConfig};
use crate::vm::Vm;

pub use vcpu::KvmVcpu;
pub use vm::KvmVm;

/// The device node of KVM.
pub const KVM_PATH: &str = "/dev/kvm";

/// The only KVM API version there has ever been.
const KVM_API_VERSION: i32 = 12;

/// Guest-physical address of the three pages Intel VMX needs for its TSS in real mode; in the
/// last 4 GiB hole, below the BIOS area, as other VMMs place it.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Turns the errno of a failed ioctl into an `io::Error`.
pub(crate) fn os_error(err: vmm_sys_util::errno::Error) -> io::Error {
    io::Error::from_raw_os_error(err.errno())
}

/// The KVM hypervisor: an open `/dev/kvm`.
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
    capabilities: Capabilities,
}

impl Kvm {
    /// Opens `/dev/kvm` and reads its capabilities.
    pub fn new() -> Result<Self, HypervisorError> {
        let kvm = kvm_ioctls::Kvm::new().map_err(|err| HypervisorError::Open {
            path: KVM_PATH.into(),
            source: os_error(err),
        })?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(HypervisorError::ApiVersion {
                what: KVM_PATH,
                found: version,
                expected: KVM_API_VERSION,
            });
        }
        let capabilities = Capabilities {
            max_vcpus: u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX),
            max_memory_slots: u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX),
            read_only_memory: kvm.check_extension(Cap::ReadonlyMem),
            // KVM_MEM_LOG_DIRTY_PAGES has been part of the base API since the beginning.
            dirty_log: true,
            irqchip: kvm.check_extension(Cap::Irqchip),
            xsave: kvm.check_extension(Cap::Xsave),
            xcrs: kvm.check_extension(Cap::Xcrs),
            vcpu_events: kvm.check_extension(Cap::VcpuEvents),
        };
        Ok(Kvm { kvm, capabilities })
    }

    /// The underlying `kvm-ioctls` handle, for what vmkit does not wrap.
    pub fn as_kvm_ioctls(&self) -> &kvm_ioctls::Kvm {
        &self.kvm
    }

    /// Creates a VM, with the concrete KVM type.
    pub fn create_kvm_vm(&self, config: &VmConfig) -> Result<KvmVm, HypervisorError> {
        let caps = &self.capabilities;
        if config.max_vcpus == 0 {
            return Err(HypervisorError::InvalidConfig {
                reason: "max_vcpus must be at least 1",
            });
        }
        if config.max_vcpus > caps.max_vcpus {
            return Err(HypervisorError::TooManyVcpus {
                requested: config.max_vcpus,
                max: caps.max_vcpus,
            });
        }
        if config.irqchip && !caps.irqchip {
            return Err(HypervisorError::Unsupported {
                feature: "an in-kernel irqchip",
            });
        }
        let fd = self.kvm.create_vm().map_err(|err| HypervisorError::Os {
            op: "KVM_CREATE_VM",
            source: os_error(err),
        })?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(|err| HypervisorError::Os {
                op: "KVM_SET_TSS_ADDR",
                source: os_error(err),
            })?;
        if config.irqchip {
            fd.create_irq_chip().map_err(|err| HypervisorError::Os {
                op: "KVM_CREATE_IRQCHIP",
                source: os_error(err),
            })?;
        }
        Ok(KvmVm::new(
            fd,
            config.clone(),
            Arc::new(self.capabilities.clone()),
        ))
    }
}

impl Hypervisor for Kvm {
    fn kind(&self) -> HypervisorKind {
        HypervisorKind::Kvm
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn Vm>, HypervisorError> {
        Ok(Box::new(self.create_kvm_vm(config)?))
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>, HypervisorError> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|err| HypervisorError::Os {
                op: "KVM_GET_SUPPORTED_CPUID",
                source: os_error(err),
            })?;
        Ok(cpuid
            .as_slice()
            .iter()
            .copied()
            .map(CpuidEntry::from)
            .collect())
    }

    fn msr_index_list(&self) -> Result<Vec<u32>, HypervisorError> {
        let list = self
            .kvm
            .get_msr_index_list()
            .map_err(|err| HypervisorError::Os {
                op: "KVM_GET_MSR_INDEX_LIST",
                source: os_error(err),
            })?;
        Ok(list.as_slice().to_vec())
    }
}
