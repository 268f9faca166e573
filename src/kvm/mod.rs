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
mod dirty;
mod exit;
mod irq;
mod kick;
mod platform;
mod reserved;
#[cfg(feature = "seccomp")]
pub(crate) mod seccomp;
mod vcpu;
mod vm;

use std::io;
use std::sync::Arc;

use kvm_ioctls::Cap;

use crate::arch::x86_64::{CpuidEntry, VcpuEventFields};
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

/// Maps a failed ioctl to a [`HypervisorError`] naming it.
fn hv_os(op: &'static str) -> impl Fn(vmm_sys_util::errno::Error) -> HypervisorError {
    move |err| HypervisorError::Os {
        op,
        source: os_error(err),
    }
}

/// The KVM hypervisor: an open `/dev/kvm`.
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
    /// Read once; every VM shares them.
    capabilities: Arc<Capabilities>,
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
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(hv_os("KVM_GET_SUPPORTED_CPUID"))?;
        let msrs = kvm
            .get_msr_index_list()
            .map_err(hv_os("KVM_GET_MSR_INDEX_LIST"))?;
        let has = |cap| kvm.check_extension(cap);
        // KVM_CHECK_EXTENSION(KVM_CAP_MCE) answers the bank limit (KVM_MAX_MCE_BANKS);
        // KVM_X86_GET_MCE_CAP_SUPPORTED gives only MCG_CAP's flag bits.
        let mce_banks = u32::try_from(kvm.check_extension_int(Cap::Mce)).unwrap_or(0);
        let ring_bytes = u32::try_from(kvm.check_extension_int(Cap::DirtyLogRing)).unwrap_or(0);
        let capabilities = Capabilities {
            max_vcpus: u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX),
            max_memory_slots: u32::try_from(kvm.get_nr_memslots()).unwrap_or(u32::MAX),
            read_only_memory: has(Cap::ReadonlyMem),
            // KVM_MEM_LOG_DIRTY_PAGES has been part of the base API since the beginning.
            dirty_log: true,
            dirty_log_manual_clear: kvm
                .check_extension_raw(kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2.into())
                > 0,
            dirty_ring_max_entries: ring_bytes / dirty::ENTRY_SIZE,
            // KVM's rings are its own, per vCPU, with DirtyRingFull exits.
            dirty_ring_emulated: false,
            irqchip: has(Cap::Irqchip),
            pit: has(Cap::Pit2),
            irqfd: has(Cap::Irqfd),
            ioeventfd: has(Cap::Ioeventfd),
            msi: has(Cap::SignalMsi),
            gsi_routing: has(Cap::IrqRouting),
            guest_debug: has(Cap::SetGuestDebug),
            clock: has(Cap::AdjustClock),
            xsave: has(Cap::Xsave),
            xcrs: has(Cap::Xcrs),
            vcpu_events: has(Cap::VcpuEvents),
            tsc_deadline_timer: has(Cap::TscDeadlineTimer),
            mce_banks,
            pit_reinject_control: has(Cap::ReinjectControl),
            split_irqchip: kvm.check_extension_raw(kvm_bindings::KVM_CAP_SPLIT_IRQCHIP.into()) > 0,
            irqfd_resample: has(Cap::IrqfdResample),
            irqchip_state: has(Cap::Irqchip),
            reserved: reserved::ranges(),
            pci_config_ports: true,
            ram_on_demand: true,
            code_runs_in_read_only_memory: true,
            state_writes_mid_io: true,
            halted_vcpus: true,
            vcpu_event_fields: VcpuEventFields {
                smm: kvm.check_extension_raw(kvm_bindings::KVM_CAP_X86_SMM.into()) > 0,
                // vmkit does not enable KVM_CAP_EXCEPTION_PAYLOAD, without which KVM reports
                // (and takes) a pending exception as injected.
                pending_exception: false,
                ..VcpuEventFields::ALL
            },
            // vmkit gives vCPU n APIC ID n (KVM_CREATE_VCPU's id).
            apic_id_stride: 0,
            cpuid: cpuid
                .as_slice()
                .iter()
                .copied()
                .map(CpuidEntry::from)
                .collect(),
            msrs: msrs.as_slice().to_vec(),
        };
        Ok(Kvm {
            kvm,
            capabilities: Arc::new(capabilities),
        })
    }

    /// The underlying `kvm-ioctls` handle, for what vmkit does not wrap.
    pub fn as_kvm_ioctls(&self) -> &kvm_ioctls::Kvm {
        &self.kvm
    }

    /// Creates a VM, with the concrete KVM type.
    pub fn create_kvm_vm(&self, config: &VmConfig) -> Result<KvmVm, HypervisorError> {
        let caps = &self.capabilities;
        let invalid = |reason| Err(HypervisorError::InvalidConfig { reason });
        let unsupported = |feature| Err(HypervisorError::Unsupported { feature });
        if config.max_vcpus == 0 {
            return invalid("max_vcpus must be at least 1");
        }
        if config.max_vcpus > caps.max_vcpus {
            return Err(HypervisorError::TooManyVcpus {
                requested: config.max_vcpus,
                max: caps.max_vcpus,
            });
        }
        if config.irqchip && !caps.irqchip {
            return unsupported("an in-kernel irqchip");
        }
        if config.pit && !config.irqchip {
            return invalid("an in-kernel PIT needs the in-kernel irqchip too");
        }
        let split = config.split_ioapic_routes();
        if split.is_some() && !caps.split_irqchip {
            return unsupported("a split irqchip (KVM_CAP_SPLIT_IRQCHIP)");
        }
        if let Some(problem) = config.split_irqchip_problem() {
            return invalid(problem);
        }
        if config.pit && !caps.pit {
            return unsupported("an in-kernel PIT");
        }
        if config.dirty_ring.is_some() {
            if caps.dirty_ring_max_entries == 0 {
                return unsupported("dirty rings");
            }
            // KVM refuses a ring under one page with a bare EINVAL: say why first.
            if let Some(problem) = config.dirty_ring_problem(caps.dirty_ring_max_entries) {
                return invalid(problem);
            }
        }

        let fd = self.kvm.create_vm().map_err(hv_os("KVM_CREATE_VM"))?;
        let run_size = fd.run_size();
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(hv_os("KVM_SET_TSS_ADDR"))?;
        if let Some(routes) = split {
            // Before any vCPU exists: each vCPU's local APIC is made in the kernel.
            let mut cap = kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = u64::from(routes);
            fd.enable_cap(&cap)
                .map_err(hv_os("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)"))?;
        } else if config.irqchip {
            fd.create_irq_chip().map_err(hv_os("KVM_CREATE_IRQCHIP"))?;
        }
        if config.pit {
            let pit = kvm_bindings::kvm_pit_config {
                flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(hv_os("KVM_CREATE_PIT2"))?;
        }
        // The dirty-tracking mode must be chosen before any vCPU or memory slot exists.
        let dirty = match config.dirty_ring {
            Some(entries) => {
                dirty::enable_ring(&fd, entries)
                    .map_err(hv_os("KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING)"))?;
                dirty::Mode::Ring { entries }
            }
            None if caps.dirty_log_manual_clear => {
                dirty::enable_manual_clear(&fd)
                    .map_err(hv_os("KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)"))?;
                dirty::Mode::BitmapManualClear
            }
            None => dirty::Mode::Bitmap,
        };
        Ok(KvmVm::new(
            fd,
            config.clone(),
            Arc::clone(&self.capabilities),
            dirty,
            // kvm-ioctls asked KVM_GET_VCPU_MMAP_SIZE when it created the VM.
            run_size,
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
}
