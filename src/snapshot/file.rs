//! Saving a VM to a snapshot directory and restoring it, in the vmkit-snapshot formats.
//!
//! A snapshot directory holds `state` (a vmkit-snapshot state file: the VM configuration, the
//! capabilities of the host that wrote it, VM-wide state, one section per vCPU, and whatever
//! sections the VMM adds for its devices) and `memory` (a vmkit-snapshot memory file). Both
//! are written crash-safely: to a temporary name, fsynced, renamed.
//!
//! Restoring checks the state file and the capabilities against this host *before* mapping
//! anything, then maps the memory file copy-on-write ([`MemoryRestore::Lazy`], pages load when
//! the guest first touches them) or copies it in ([`MemoryRestore::Eager`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, FileOffset, GuestAddress};
use vmkit_snapshot::{
    checksum, write_atomically, Arch, Backend, Expected, MemoryError as MemoryFileError,
    MemoryFile, MemoryWriter, SectionTag, Snapshot, StateError, Writer,
};

use super::{restore_vcpu, restore_vm, save_vcpu, save_vm, Features, VcpuState, VmState};
use crate::hypervisor::{
    Capabilities, Hypervisor, HypervisorError, HypervisorKind, MissingCapability, VmConfig,
};
use crate::memory::{MemoryError, MemoryFlags, MemoryRegion};
use crate::vcpu::{Vcpu, VcpuError};
use crate::vm::{Vm, VmError};

/// File name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// File name of the memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Section holding the [`VmConfig`].
pub const CONFIG: SectionTag = SectionTag::new(*b"VMCF");
/// Section holding the writing host's [`Capabilities`].
pub const CAPABILITIES: SectionTag = SectionTag::new(*b"CAPS");
/// Section holding the [`VmState`].
pub const VM_STATE: SectionTag = SectionTag::new(*b"VMST");

/// Version of the sections this module writes.
const VERSION: u16 = 1;

/// Errors from saving or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file is unreadable, corrupt or from an incompatible writer.
    #[error("snapshot state file {}", .path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: StateError,
    },
    /// The memory file is unreadable or corrupt.
    #[error("snapshot memory file {}", .path.display())]
    Memory {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: MemoryFileError,
    },
    /// The snapshot directory could not be created.
    #[error("creating the snapshot directory {}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
    /// This host lacks capabilities the snapshot's VM used.
    #[error("this host cannot run the snapshot: {}", .missing.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; "))]
    MissingCapabilities {
        /// Everything missing.
        missing: Vec<MissingCapability>,
    },
    /// Creating the VM failed.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// A VM operation failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A vCPU operation failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Mapping restored memory failed.
    #[error(transparent)]
    Region(#[from] MemoryError),
    /// Reading guest memory to save it failed.
    #[error("reading guest memory at {addr:#x} to save it")]
    GuestMemory {
        /// The region's guest address.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// How restored guest memory is populated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryRestore {
    /// Map the memory file copy-on-write: restore cost does not grow with memory size; pages
    /// are read when the guest first touches them. Chunk checksums are not verified.
    #[default]
    Lazy,
    /// Copy every region into fresh anonymous memory, verifying every chunk checksum.
    Eager,
}

fn backend(kind: HypervisorKind) -> Backend {
    match kind {
        HypervisorKind::Kvm => Backend::Kvm,
        HypervisorKind::Xen => Backend::Xen,
    }
}

/// A 32-byte digest of `capabilities`, for the state file's header: four CRC-64s of their
/// encoding, each with a different trailing byte. It identifies, it does not authenticate;
/// restore compares the full capabilities section.
fn digest(capabilities: &Capabilities) -> [u8; 32] {
    let bytes = format!("{capabilities:?}").into_bytes();
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut seeded = bytes.clone();
        seeded.push(i as u8);
        chunk.copy_from_slice(&checksum(&seeded).to_le_bytes());
    }
    out
}

/// Saves a paused VM to `dir` (created if needed): its configuration, this host's
/// capabilities, VM-wide state, every vCPU in `vcpus`, guest memory, and the sections
/// `devices` adds (device and queue state; use tags of your own or
/// [`SectionTag::DEVICE`]/[`SectionTag::QUEUE`]).
///
/// Every vCPU must be outside `run()`; a device must have no request in flight.
#[allow(clippy::too_many_arguments)]
pub fn save(
    dir: &Path,
    hypervisor: &dyn Hypervisor,
    config: &VmConfig,
    vm: &dyn Vm,
    vcpus: &[&dyn Vcpu],
    msrs: &[u32],
    devices: impl FnOnce(&mut Writer<&mut File>) -> Result<(), StateError>,
) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(|source| SnapshotError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let caps = hypervisor.capabilities();
    let features = Features {
        irqchip: config.irqchip,
        pit: config.pit,
        xsave: caps.xsave && caps.xcrs,
    };
    let vm_state = save_vm(vm, features)?;
    let vcpu_states = vcpus
        .iter()
        .map(|vcpu| save_vcpu(*vcpu, msrs, features))
        .collect::<Result<Vec<_>, _>>()?;

    // Memory first: a state file only ever refers to a complete memory file.
    let memory = vm.memory();
    let mut regions = Vec::new();
    for region in vm_memory::GuestMemoryBackend::iter(&memory) {
        let addr = vm_memory::GuestMemoryRegion::start_addr(region).0;
        let mut contents = vec![0u8; vm_memory::GuestMemoryRegion::len(region) as usize];
        memory
            .read_slice(&mut contents, GuestAddress(addr))
            .map_err(|source| SnapshotError::GuestMemory { addr, source })?;
        regions.push((addr, contents));
    }
    let slices: Vec<(u64, &[u8])> = regions.iter().map(|(a, c)| (*a, c.as_slice())).collect();
    let memory_path = dir.join(MEMORY_FILE);
    write_atomically(&memory_path, |file| {
        MemoryWriter::new().write_full(file, &slices).map(|_| ())
    })
    .map_err(|source| SnapshotError::Memory {
        path: memory_path.clone(),
        source,
    })?;

    let state_path = dir.join(STATE_FILE);
    write_atomically(&state_path, |file| -> Result<(), StateError> {
        let mut writer = Writer::new(file, Arch::X86_64, backend(hypervisor.kind()), digest(caps));
        writer.write_section(CONFIG, 0, VERSION, config)?;
        writer.write_section(CAPABILITIES, 0, VERSION, caps)?;
        writer.write_section(VM_STATE, 0, VERSION, &vm_state)?;
        for state in &vcpu_states {
            writer.write_section(SectionTag::VCPU, state.id, VERSION, state)?;
        }
        devices(&mut writer)?;
        writer.finish()?;
        Ok(())
    })
    .map_err(|source| SnapshotError::State {
        path: state_path.clone(),
        source,
    })
}

/// A VM rebuilt from a snapshot, ready to run, with the state file for the VMM's devices.
pub struct Restored {
    /// The VM, with its memory mapped and its VM-wide state loaded.
    pub vm: Box<dyn Vm>,
    /// Its vCPUs, by id, with their state loaded.
    pub vcpus: Vec<Box<dyn Vcpu>>,
    /// The configuration the VM was created with.
    pub config: VmConfig,
    /// The whole state file, for the VMM to read its device sections from.
    pub snapshot: Snapshot,
}

/// Restores the snapshot in `dir` on `hypervisor`.
///
/// Checks come first and map nothing: the state file's header, every section's checksum,
/// the architecture and backend, and the capabilities the VM used against this host's
/// (the error lists everything missing).
pub fn restore(
    dir: &Path,
    hypervisor: &dyn Hypervisor,
    memory_restore: MemoryRestore,
) -> Result<Restored, SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let state_error = |source| SnapshotError::State {
        path: state_path.clone(),
        source,
    };
    let expected = Expected {
        arch: Arch::X86_64,
        backend: backend(hypervisor.kind()),
    };
    let snapshot = Snapshot::open(&state_path, expected).map_err(state_error)?;
    let config: VmConfig = snapshot
        .read_section(CONFIG, 0, VERSION..=VERSION)
        .map_err(state_error)?;
    let their_caps: Capabilities = snapshot
        .read_section(CAPABILITIES, 0, VERSION..=VERSION)
        .map_err(state_error)?;
    let missing = their_caps.missing_in(hypervisor.capabilities());
    if !missing.is_empty() {
        return Err(SnapshotError::MissingCapabilities { missing });
    }
    let vm_state: VmState = snapshot
        .read_section(VM_STATE, 0, VERSION..=VERSION)
        .map_err(state_error)?;
    let vcpu_states = snapshot
        .instances(SectionTag::VCPU)
        .map(|section| section.decode::<VcpuState>(VERSION..=VERSION))
        .collect::<Result<Vec<_>, _>>()
        .map_err(state_error)?;

    let memory_path = dir.join(MEMORY_FILE);
    let memory_error = |source| SnapshotError::Memory {
        path: memory_path.clone(),
        source,
    };
    let io_error = |what: &'static str| {
        let path = memory_path.clone();
        move |source| SnapshotError::Memory {
            path,
            source: MemoryFileError::Io { what, source },
        }
    };
    let mut file = File::open(&memory_path).map_err(io_error("opening the memory file"))?;
    let memory_file = MemoryFile::read_header(&mut file).map_err(memory_error)?;

    let vm = hypervisor.create_vm(&config)?;
    for (index, info) in memory_file.regions().iter().enumerate() {
        let size = info.size as usize;
        let region = match memory_restore {
            MemoryRestore::Lazy => {
                let clone = file
                    .try_clone()
                    .map_err(io_error("sharing the memory file"))?;
                MemoryRegion::from_file_private(
                    GuestAddress(info.guest_addr),
                    size,
                    FileOffset::new(clone, info.file_offset),
                    MemoryFlags::empty(),
                )?
            }
            MemoryRestore::Eager => {
                let region = MemoryRegion::anonymous(
                    GuestAddress(info.guest_addr),
                    size,
                    MemoryFlags::empty(),
                )?;
                let mut contents = vec![0u8; size];
                memory_file
                    .read_region(&mut file, index, &mut contents)
                    .map_err(memory_error)?;
                region
                    .mapping()
                    .write_slice(&contents, vm_memory::MemoryRegionAddress(0))
                    .map_err(|source| SnapshotError::GuestMemory {
                        addr: info.guest_addr,
                        source,
                    })?;
                region
            }
        };
        vm.add_memory_region(region)?;
    }
    let mut vcpus = Vec::with_capacity(vcpu_states.len());
    for state in &vcpu_states {
        let vcpu = vm.create_vcpu(state.id)?;
        restore_vcpu(vcpu.as_ref(), state)?;
        vcpus.push(vcpu);
    }
    restore_vm(vm.as_ref(), &vm_state)?;
    Ok(Restored {
        vm,
        vcpus,
        config,
        snapshot,
    })
}
