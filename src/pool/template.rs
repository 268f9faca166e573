//! What every VM of a pool looks like when it is handed out, and how one is built.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::error::{PoolError, SetupError};
use crate::arch::x86_64::CpuidEntry;
use crate::hypervisor::{Hypervisor, VmConfig};
use crate::memory::{MemoryFlags, MemoryRegion};
use crate::snapshot::{self, MemoryRestore};
use crate::vcpu::Vcpu;
use crate::vm::Vm;

/// A template's setup: sets the vCPUs' registers (and may write guest memory, such as page
/// tables) once the template's bytes are loaded.
type SetupFn = dyn Fn(&dyn Vm, &[Box<dyn Vcpu>]) -> Result<(), SetupError> + Send + Sync;

/// What every VM of a [`VmPool`](super::VmPool) looks like when it is handed out.
///
/// Either built: a [`VmConfig`], anonymous memory regions, a number of vCPUs, bytes to load
/// and a setup function for the registers; or a full snapshot, restored lazily (its memory
/// file is mapped copy-on-write, see [`snapshot::restore`]).
///
/// The setup runs on every new VM and again on every reset one, after its memory was zeroed
/// and its vCPUs' state returned to what it was right after the first setup; it must do the
/// same every time (no randomness, no counters). Give the vCPUs their CPUID with
/// [`cpuid`](Self::cpuid), not in the setup: KVM refuses to change the CPUID of a vCPU that
/// has run, which a reset one has.
///
/// ```
/// use vmkit::pool::VmTemplate;
/// use vmkit::vm_memory::GuestAddress;
/// use vmkit::{MemoryFlags, VmConfig};
///
/// // 2 MiB of RAM, one vCPU, `hlt` at 0x1000 in real mode.
/// let template = VmTemplate::new(VmConfig::default())
///     .memory(GuestAddress(0), 2 << 20, MemoryFlags::empty())
///     .load(GuestAddress(0x1000), vec![0xf4])
///     .setup(|_vm, vcpus| {
///         let mut sregs = vcpus[0].sregs()?;
///         sregs.cs.base = 0;
///         sregs.cs.selector = 0;
///         vcpus[0].set_sregs(&sregs)?;
///         let mut regs = vcpus[0].regs()?;
///         regs.rip = 0x1000;
///         vcpus[0].set_regs(&regs)?;
///         Ok(())
///     });
/// # let _ = template;
/// ```
#[derive(Clone)]
pub struct VmTemplate {
    pub(super) source: Source,
}

/// A VM its template just built.
pub(super) struct Built {
    pub(super) vm: Box<dyn Vm>,
    pub(super) vcpus: Vec<Box<dyn Vcpu>>,
    pub(super) config: VmConfig,
}

#[derive(Clone)]
pub(super) enum Source {
    Build(Build),
    Snapshot(PathBuf),
}

#[derive(Clone)]
pub(super) struct Build {
    config: VmConfig,
    regions: Vec<(GuestAddress, usize, MemoryFlags)>,
    vcpus: u32,
    images: Vec<(GuestAddress, Arc<[u8]>)>,
    cpuid: Option<Arc<[CpuidEntry]>>,
    setup: Option<Arc<SetupFn>>,
}

impl fmt::Debug for VmTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Build(build) => f
                .debug_struct("VmTemplate")
                .field("config", &build.config)
                .field("regions", &build.regions)
                .field("vcpus", &build.vcpus)
                .field(
                    "images",
                    &build
                        .images
                        .iter()
                        .map(|(addr, bytes)| (addr.0, bytes.len()))
                        .collect::<Vec<_>>(),
                )
                .field("cpuid", &build.cpuid.as_ref().map(|entries| entries.len()))
                .field("setup", &build.setup.is_some())
                .finish(),
            Source::Snapshot(dir) => f.debug_tuple("VmTemplate").field(dir).finish(),
        }
    }
}

impl VmTemplate {
    /// A template for VMs created with `config`, with one vCPU and no memory yet.
    pub fn new(config: VmConfig) -> Self {
        VmTemplate {
            source: Source::Build(Build {
                config,
                regions: Vec::new(),
                vcpus: 1,
                images: Vec::new(),
                cpuid: None,
                setup: None,
            }),
        }
    }

    /// A template restored from the full snapshot in `dir`: every VM maps the snapshot's
    /// memory file copy-on-write and loads its vCPU and VM state, and a reset drops the
    /// guest's private copies so that its memory reads the file again. A diff snapshot is
    /// refused when the pool is created ([`PoolError::SnapshotChain`]). The memory file must
    /// not change while the pool exists (see [`snapshot::restore`]).
    pub fn snapshot(dir: impl Into<PathBuf>) -> Self {
        VmTemplate {
            source: Source::Snapshot(dir.into()),
        }
    }

    /// Adds `size` bytes of anonymous memory at `guest_addr`, zero at first. Ignored by a
    /// snapshot template.
    pub fn memory(mut self, guest_addr: GuestAddress, size: usize, flags: MemoryFlags) -> Self {
        if let Source::Build(build) = &mut self.source {
            build.regions.push((guest_addr, size, flags));
        }
        self
    }

    /// Sets the number of vCPUs (ids `0..count`); 1 unless set. Ignored by a snapshot
    /// template, which has the snapshot's.
    pub fn vcpus(mut self, count: u32) -> Self {
        if let Source::Build(build) = &mut self.source {
            build.vcpus = count;
        }
        self
    }

    /// Copies `bytes` to guest address `guest_addr` of every VM, before the setup runs.
    /// Ignored by a snapshot template.
    pub fn load(mut self, guest_addr: GuestAddress, bytes: impl Into<Arc<[u8]>>) -> Self {
        if let Source::Build(build) = &mut self.source {
            build.images.push((guest_addr, bytes.into()));
        }
        self
    }

    /// Gives every vCPU this CPUID (for example the hypervisor's
    /// [`supported_cpuid`](Hypervisor::supported_cpuid)) when it is created, before the setup
    /// runs; a reset keeps it. Ignored by a snapshot template, which has the snapshot's.
    pub fn cpuid(mut self, entries: impl Into<Arc<[CpuidEntry]>>) -> Self {
        if let Source::Build(build) = &mut self.source {
            build.cpuid = Some(entries.into());
        }
        self
    }

    /// Sets the function that prepares the vCPUs (entry point registers, page tables…) once
    /// the bytes are loaded. Ignored by a snapshot template.
    pub fn setup<F>(mut self, setup: F) -> Self
    where
        F: Fn(&dyn Vm, &[Box<dyn Vcpu>]) -> Result<(), SetupError> + Send + Sync + 'static,
    {
        if let Source::Build(build) = &mut self.source {
            build.setup = Some(Arc::new(setup));
        }
        self
    }

    /// Checks what can be checked before any VM exists.
    pub(super) fn check(&self, hypervisor: &dyn Hypervisor) -> Result<(), PoolError> {
        match &self.source {
            Source::Build(build) if build.vcpus == 0 => Err(PoolError::NoVcpus),
            Source::Build(_) => Ok(()),
            Source::Snapshot(dir) => {
                let chain = snapshot::check(dir, hypervisor)?.chain_len();
                if chain == 1 {
                    Ok(())
                } else {
                    Err(PoolError::SnapshotChain {
                        dir: dir.clone(),
                        chain,
                    })
                }
            }
        }
    }

    /// Creates a VM in the template's state.
    pub(super) fn build(&self, hypervisor: &dyn Hypervisor) -> Result<Built, PoolError> {
        match &self.source {
            Source::Build(build) => {
                let vm = hypervisor.create_vm(&build.config)?;
                for &(guest_addr, size, flags) in &build.regions {
                    vm.add_memory_region(MemoryRegion::anonymous(guest_addr, size, flags)?)?;
                }
                let vcpus = (0..build.vcpus)
                    .map(|id| vm.create_vcpu(id))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(cpuid) = &build.cpuid {
                    for vcpu in &vcpus {
                        vcpu.set_cpuid(cpuid)?;
                    }
                }
                self.initialize(vm.as_ref(), &vcpus)?;
                Ok(Built {
                    vm,
                    vcpus,
                    config: build.config.clone(),
                })
            }
            Source::Snapshot(dir) => {
                let restored = snapshot::restore(dir, hypervisor, MemoryRestore::Lazy)?;
                Ok(Built {
                    vm: restored.vm,
                    vcpus: restored.vcpus,
                    config: restored.config,
                })
            }
        }
    }

    /// Loads the template's bytes and runs its setup: on a new VM, and on a reset one once
    /// its memory is zero again.
    pub(super) fn initialize(&self, vm: &dyn Vm, vcpus: &[Box<dyn Vcpu>]) -> Result<(), PoolError> {
        let Source::Build(build) = &self.source else {
            return Ok(());
        };
        if !build.images.is_empty() {
            let memory = vm.memory();
            for (addr, bytes) in &build.images {
                memory
                    .write_slice(bytes, *addr)
                    .map_err(|source| PoolError::Load {
                        addr: addr.0,
                        len: bytes.len(),
                        source,
                    })?;
            }
        }
        if let Some(setup) = &build.setup {
            setup(vm, vcpus).map_err(PoolError::Setup)?;
        }
        Ok(())
    }
}
