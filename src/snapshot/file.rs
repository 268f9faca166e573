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

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmkit_snapshot::{
    checksum, write_atomically, Arch, Backend, DiffRegion, Expected, Flags,
    MemoryError as MemoryFileError, MemoryFile, MemoryWriter, SectionTag, Snapshot, StateError,
    Writer,
};

#[cfg(doc)]
use super::save_vcpu;
use super::{restore_vcpu, restore_vm, save_vm, Features, VcpuState, VmState};
use crate::hypervisor::{
    Capabilities, Hypervisor, HypervisorError, HypervisorKind, MissingCapability, VmConfig,
};
use crate::memory::{MemoryError, MemoryFlags, MemoryRegion, PAGE_SIZE};
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
/// Section holding the memory layout: each region's address, size and flags.
pub const MEMORY_LAYOUT: SectionTag = SectionTag::MEMORY_LAYOUT;
/// Section of a diff snapshot naming the snapshot directory it builds on.
pub const BASE: SectionTag = SectionTag::new(*b"BASE");
/// Section holding the [`VmState`].
pub const VM_STATE: SectionTag = SectionTag::new(*b"VMST");

/// Version of the sections this module writes.
const VERSION: u16 = 1;
/// Version of the [`CAPABILITIES`] section: 2 since `Capabilities` gained the TSC-deadline
/// timer, machine-check banks and PIT reinjection control (its postcard encoding changed).
pub const CAPABILITIES_VERSION: u16 = 2;

/// Errors from saving or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A chain of diff snapshots is longer than [`MAX_CHAIN`] (or loops).
    #[error("the diff chain from {} has more than {max} snapshots", .dir.display())]
    ChainTooLong {
        /// The snapshot being restored.
        dir: PathBuf,
        /// The limit.
        max: usize,
    },
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

/// One region of the memory layout, with the flags it is mapped with.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct RegionLayout {
    guest_addr: u64,
    size: u64,
    flags: u32,
}

/// What a save records besides memory; shared by full and diff snapshots.
struct Capture<'a> {
    hypervisor: &'a dyn Hypervisor,
    config: &'a VmConfig,
    vm_state: VmState,
    vcpu_states: Vec<VcpuState>,
    layout: Vec<RegionLayout>,
}

impl<'a> Capture<'a> {
    fn take(
        hypervisor: &'a dyn Hypervisor,
        config: &'a VmConfig,
        vm: &dyn Vm,
        vcpus: &[VcpuState],
    ) -> Result<Self, SnapshotError> {
        let features = Features::for_vm(config, hypervisor.capabilities());
        let vm_state = save_vm(vm, features)?;
        let vcpu_states = vcpus.to_vec();
        let layout = vm
            .memory_layout()
            .into_iter()
            .map(|(_, range, flags)| RegionLayout {
                guest_addr: range.start,
                size: range.size,
                flags: flags.bits(),
            })
            .collect();
        Ok(Capture {
            hypervisor,
            config,
            vm_state,
            vcpu_states,
            layout,
        })
    }

    /// Writes the state file; a diff snapshot names its base.
    fn write_state(
        &self,
        dir: &Path,
        base: Option<&Path>,
        devices: impl FnOnce(&mut Writer<&mut File>) -> Result<(), StateError>,
    ) -> Result<(), SnapshotError> {
        let caps = self.hypervisor.capabilities();
        let state_path = dir.join(STATE_FILE);
        write_atomically(&state_path, |file| -> Result<(), StateError> {
            let kind = backend(self.hypervisor.kind());
            let mut writer = Writer::new(file, Arch::X86_64, kind, digest(caps));
            if let Some(base) = base {
                writer.set_flags(Flags::DIFF_MEMORY)?;
                writer.write_section(BASE, 0, VERSION, &base.to_string_lossy())?;
            }
            writer.write_section(CONFIG, 0, VERSION, self.config)?;
            writer.write_section(CAPABILITIES, 0, CAPABILITIES_VERSION, caps)?;
            writer.write_section(VM_STATE, 0, VERSION, &self.vm_state)?;
            writer.write_section(MEMORY_LAYOUT, 0, VERSION, &self.layout)?;
            for state in &self.vcpu_states {
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
}

/// Every region of `vm`'s memory with a copy of its contents.
fn copy_memory(vm: &dyn Vm) -> Result<Vec<(u64, Vec<u8>)>, SnapshotError> {
    let memory = vm.memory();
    let mut regions = Vec::new();
    for region in memory.iter() {
        let addr = region.start_addr().0;
        let mut contents = vec![0u8; region.len() as usize];
        memory
            .read_slice(&mut contents, GuestAddress(addr))
            .map_err(|source| SnapshotError::GuestMemory { addr, source })?;
        regions.push((addr, contents));
    }
    Ok(regions)
}

fn create_dir(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(|source| SnapshotError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Saves a paused VM to `dir` (created if needed): its configuration, this host's
/// capabilities, VM-wide state, the vCPU states in `vcpus`, guest memory, and the sections
/// `devices` adds (device and queue state: [`Writer::write_device`] for a device that
/// implements [`vmkit_snapshot::Persist`], or tags of your own, or
/// [`SectionTag::DEVICE`]/[`SectionTag::QUEUE`]).
///
/// The vCPU states come from [`VmRunner::save_all`](crate::runner::VmRunner::save_all) when
/// the vCPUs run on their own threads, or from [`save_vcpu`] for a vCPU at hand. Every vCPU
/// must stay outside `run()` until the save returns; a device must have no request in
/// flight. The memory file is written before the state file, so a state file only ever names
/// complete memory.
pub fn save(
    dir: &Path,
    hypervisor: &dyn Hypervisor,
    config: &VmConfig,
    vm: &dyn Vm,
    vcpus: &[VcpuState],
    devices: impl FnOnce(&mut Writer<&mut File>) -> Result<(), StateError>,
) -> Result<(), SnapshotError> {
    create_dir(dir)?;
    let capture = Capture::take(hypervisor, config, vm, vcpus)?;
    let regions = copy_memory(vm)?;
    let slices: Vec<(u64, &[u8])> = regions.iter().map(|(a, c)| (*a, c.as_slice())).collect();
    let memory_path = dir.join(MEMORY_FILE);
    write_atomically(&memory_path, |file| {
        MemoryWriter::new().write_full(file, &slices).map(|_| ())
    })
    .map_err(|source| SnapshotError::Memory {
        path: memory_path.clone(),
        source,
    })?;
    capture.write_state(dir, None, devices)
}

/// Tracks the guest pages written since the last snapshot, so that the next snapshot can be a
/// diff holding only those.
///
/// Both sources are merged: the hypervisor's dirty log (guest writes, in regions added with
/// [`MemoryFlags::LOG_DIRTY`]) and vm-memory's bitmaps (writes by the VMM's own devices).
/// Regions without `LOG_DIRTY` cannot be tracked and go into every diff whole. Pages
/// harvested for a diff whose write fails are kept for the next one, so a failed save loses
/// nothing.
#[derive(Debug, Default)]
pub struct DiffTracker {
    /// Region guest address -> dirty page indices not yet in a written snapshot.
    pending: BTreeMap<u64, BTreeSet<u64>>,
}

impl DiffTracker {
    /// Starts tracking `vm`, right after a full [`save`]: what was dirty before is forgotten.
    pub fn start(vm: &dyn Vm) -> Result<Self, SnapshotError> {
        let mut tracker = DiffTracker::default();
        tracker.collect(vm)?;
        tracker.pending.clear();
        Ok(tracker)
    }

    /// Pages waiting for the next diff.
    pub fn pending_pages(&self) -> usize {
        self.pending.values().map(BTreeSet::len).sum()
    }

    fn collect(&mut self, vm: &dyn Vm) -> Result<(), SnapshotError> {
        let log = vm.harvest_dirty_log()?;
        let memory = vm.memory();
        for region in memory.iter() {
            let addr = region.start_addr().0;
            let pages = region.len() / PAGE_SIZE as u64;
            let entry = self.pending.entry(addr).or_default();
            let logged = log.regions.iter().find(|r| r.guest_addr.0 == addr);
            match logged {
                // An overflowed ring, or an untracked region: all of it may have changed.
                _ if log.overflowed => entry.extend(0..pages),
                None => entry.extend(0..pages),
                Some(logged) => entry.extend(
                    logged
                        .dirty_pages()
                        .map(|page| (page.0 - addr) / PAGE_SIZE as u64),
                ),
            }
            if let Some(bitmap) = vm_memory::MmapRegion::bitmap(region) {
                for (word, bits) in bitmap.get_and_reset().into_iter().enumerate() {
                    entry.extend(
                        (0..64)
                            .filter(|bit| bits & (1 << bit) != 0)
                            .map(|bit| word as u64 * 64 + bit)
                            .filter(|&page| page < pages),
                    );
                }
            }
        }
        Ok(())
    }

    /// Saves a paused VM to `dir` as a diff on top of the snapshot in `base` (a full one or
    /// another diff): the state as in [`save`], and only the pages written since the base.
    #[allow(clippy::too_many_arguments)]
    pub fn save_diff(
        &mut self,
        dir: &Path,
        base: &Path,
        hypervisor: &dyn Hypervisor,
        config: &VmConfig,
        vm: &dyn Vm,
        vcpus: &[VcpuState],
        devices: impl FnOnce(&mut Writer<&mut File>) -> Result<(), StateError>,
    ) -> Result<(), SnapshotError> {
        create_dir(dir)?;
        let capture = Capture::take(hypervisor, config, vm, vcpus)?;
        self.collect(vm)?;
        let regions = copy_memory(vm)?;
        let pages: Vec<Vec<u64>> = regions
            .iter()
            .map(|(addr, _)| {
                self.pending
                    .get(addr)
                    .map(|set| set.iter().copied().collect())
                    .unwrap_or_default()
            })
            .collect();
        let diff: Vec<DiffRegion<'_>> = regions
            .iter()
            .zip(&pages)
            .map(|((addr, contents), dirty_pages)| DiffRegion {
                guest_addr: *addr,
                contents,
                dirty_pages,
            })
            .collect();
        let memory_path = dir.join(MEMORY_FILE);
        write_atomically(&memory_path, |file| {
            MemoryWriter::new().write_diff(file, &diff).map(|_| ())
        })
        .map_err(|source| SnapshotError::Memory {
            path: memory_path.clone(),
            source,
        })?;
        capture.write_state(dir, Some(base), devices)?;
        // Durably written: only now are these pages no longer owed to a snapshot.
        self.pending.clear();
        Ok(())
    }
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
        .read_section(CAPABILITIES, 0, CAPABILITIES_VERSION..=CAPABILITIES_VERSION)
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

    let layout: Vec<RegionLayout> = snapshot
        .read_section(MEMORY_LAYOUT, 0, VERSION..=VERSION)
        .map_err(state_error)?;
    let chain = base_chain(dir, &snapshot, expected)?;

    let vm = hypervisor.create_vm(&config)?;
    let flags = |addr: u64| {
        layout
            .iter()
            .find(|r| r.guest_addr == addr)
            .map_or(MemoryFlags::empty(), |r| {
                MemoryFlags::from_bits_truncate(r.flags)
            })
    };
    if chain.is_empty() {
        map_full(vm.as_ref(), dir, memory_restore, &flags)?;
    } else {
        // A chain is restored eagerly: the base's contents with each diff applied in order.
        let full = chain.last().map_or(dir, PathBuf::as_path);
        let mut regions = read_full(full)?;
        for diff_dir in chain
            .iter()
            .rev()
            .skip(1)
            .chain(std::iter::once(&dir.to_path_buf()))
        {
            apply_diff(diff_dir, &mut regions)?;
        }
        for (addr, contents) in regions {
            let region = MemoryRegion::anonymous(GuestAddress(addr), contents.len(), flags(addr))?;
            region
                .mapping()
                .write_slice(&contents, vm_memory::MemoryRegionAddress(0))
                .map_err(|source| SnapshotError::GuestMemory { addr, source })?;
            vm.add_memory_region(region)?;
        }
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

/// The most snapshots a diff chain may have, so that a looping chain is refused.
pub const MAX_CHAIN: usize = 64;

fn memory_error(path: &Path) -> impl Fn(MemoryFileError) -> SnapshotError + '_ {
    move |source| SnapshotError::Memory {
        path: path.to_path_buf(),
        source,
    }
}

fn open_memory(dir: &Path) -> Result<(File, MemoryFile, PathBuf), SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let mut file = File::open(&path).map_err(|source| {
        memory_error(&path)(MemoryFileError::Io {
            what: "opening the memory file",
            source,
        })
    })?;
    let header = MemoryFile::read_header(&mut file).map_err(memory_error(&path))?;
    Ok((file, header, path))
}

/// For a diff snapshot, the directories of its bases, nearest first, ending with the full one;
/// empty for a full snapshot.
fn base_chain(
    dir: &Path,
    snapshot: &Snapshot,
    expected: Expected,
) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut chain = Vec::new();
    let mut current = (dir.to_path_buf(), snapshot.header().flags);
    while current.1.contains(Flags::DIFF_MEMORY) {
        if chain.len() == MAX_CHAIN {
            return Err(SnapshotError::ChainTooLong {
                dir: dir.to_path_buf(),
                max: MAX_CHAIN,
            });
        }
        let state_path = current.0.join(STATE_FILE);
        let state_error = |source| SnapshotError::State {
            path: state_path.clone(),
            source,
        };
        let state = if chain.is_empty() {
            None
        } else {
            Some(Snapshot::open(&state_path, expected).map_err(state_error)?)
        };
        let base: String = state
            .as_ref()
            .unwrap_or(snapshot)
            .read_section(BASE, 0, VERSION..=VERSION)
            .map_err(state_error)?;
        let base = PathBuf::from(base);
        let base_state = base.join(STATE_FILE);
        let flags = Snapshot::open(&base_state, expected)
            .map_err(|source| SnapshotError::State {
                path: base_state.clone(),
                source,
            })?
            .header()
            .flags;
        chain.push(base.clone());
        current = (base, flags);
    }
    Ok(chain)
}

/// Maps (lazily) or copies (eagerly) a full snapshot's memory into `vm`.
fn map_full(
    vm: &dyn Vm,
    dir: &Path,
    memory_restore: MemoryRestore,
    flags: &dyn Fn(u64) -> MemoryFlags,
) -> Result<(), SnapshotError> {
    let (mut file, memory_file, path) = open_memory(dir)?;
    for (index, info) in memory_file.regions().iter().enumerate() {
        let size = info.size as usize;
        let region = match memory_restore {
            MemoryRestore::Lazy => {
                let clone = file.try_clone().map_err(|source| {
                    memory_error(&path)(MemoryFileError::Io {
                        what: "sharing the memory file",
                        source,
                    })
                })?;
                MemoryRegion::from_file_private(
                    GuestAddress(info.guest_addr),
                    size,
                    FileOffset::new(clone, info.file_offset),
                    flags(info.guest_addr),
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
                    .map_err(memory_error(&path))?;
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
    Ok(())
}

/// A full snapshot's memory, region by region, verified.
fn read_full(dir: &Path) -> Result<Vec<(u64, Vec<u8>)>, SnapshotError> {
    let (mut file, memory_file, path) = open_memory(dir)?;
    let mut regions = Vec::new();
    for (index, info) in memory_file.regions().iter().enumerate() {
        let mut contents = vec![0u8; info.size as usize];
        memory_file
            .read_region(&mut file, index, &mut contents)
            .map_err(memory_error(&path))?;
        regions.push((info.guest_addr, contents));
    }
    Ok(regions)
}

/// Applies the diff in `dir` to `regions`.
fn apply_diff(dir: &Path, regions: &mut [(u64, Vec<u8>)]) -> Result<(), SnapshotError> {
    let (mut file, memory_file, path) = open_memory(dir)?;
    let mut targets: Vec<(u64, &mut [u8])> = regions
        .iter_mut()
        .map(|(addr, contents)| (*addr, contents.as_mut_slice()))
        .collect();
    memory_file
        .apply_diff(&mut file, &mut targets)
        .map_err(memory_error(&path))
}
