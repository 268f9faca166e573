//! Saving a VM to a snapshot directory and restoring it, in the vmkit-snapshot formats.
//!
//! A snapshot directory holds `state` (a vmkit-snapshot state file: the VM configuration, the
//! capabilities of the host that wrote it, VM-wide state, one section per vCPU, and whatever
//! sections the VMM adds for its devices) and `memory` (a vmkit-snapshot memory file). Both
//! are written crash-safely: to a temporary name, fsynced, renamed. Both carry the same random
//! snapshot identity; a diff's memory file also carries its base's.
//!
//! Restoring checks the files against this host and against each other *before* creating
//! anything ([`check`](fn@super::check)), then maps the memory file copy-on-write
//! ([`MemoryRestore::Lazy`], pages load when the guest first touches them) or streams it in
//! ([`MemoryRestore::Eager`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
    VolatileSlice,
};
use vmkit_snapshot::{
    checksum, Arch, AtomicFiles, AtomicWriteError, Backend, DiffRegion, Expected, Flags,
    MemoryError as MemoryFileError, MemoryWriter, RegionSource, SectionTag, Snapshot, SnapshotId,
    StateError, Writer,
};

use super::check::{check, Checked, Mismatch, OpenMemory};
#[cfg(doc)]
use super::save_vcpu;

use super::{restore_vcpu, restore_vm, save_vm, Features, VcpuState, VmState};
use crate::dirty::set_bits;
use crate::hypervisor::{
    Capabilities, Hypervisor, HypervisorError, HypervisorKind, MissingCapability, VmConfig,
};
use crate::memory::{GuestMemoryMmap, MemoryError, MemoryFlags, MemoryRegion, PAGE_SIZE};
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
pub(super) const VERSION: u16 = 1;
/// Version of the vCPU sections ([`SectionTag::VCPU`], a [`VcpuState`]): 2 since the state
/// records its machine-check banks (`mce_banks`). Version 1 sections are refused: without the
/// bank count a guest that enabled machine checks could not be restored.
pub const VCPU_VERSION: u16 = 2;
/// Version of the [`CAPABILITIES`] section: 4 since it holds named entries, so that a
/// field added to [`Capabilities`] leaves existing snapshots readable (an older writer's
/// file lacks the entry, which reads as the default; see [`CapabilitiesError`](super::CapabilitiesError)
/// for what is refused). Versions 1 to 3 encoded the struct itself, whose layout changed with every
/// field, and are refused by version rather than misread.
pub const CAPABILITIES_VERSION: u16 = 4;

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
    /// A snapshot file could not be opened, or is not a regular file (a FIFO, a device…).
    #[error("snapshot file {}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: vmkit_snapshot::OpenError,
    },
    /// Two files of a snapshot directory (or of a diff and its base) do not belong together:
    /// another snapshot's memory file, the wrong kind, other regions, another base.
    #[error("snapshot files {} and {} do not belong together", .state.display(), .memory.display())]
    Mismatch {
        /// The state file.
        state: PathBuf,
        /// The memory file.
        memory: PathBuf,
        /// How they disagree.
        #[source]
        source: Mismatch,
    },
    /// A state file contradicts itself (its vCPU sections, or its configuration).
    #[error("snapshot state file {} is inconsistent", .path.display())]
    Inconsistent {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: Mismatch,
    },
    /// The state file's capabilities section cannot be read: it names a capability this
    /// version of vmkit does not know, or holds a malformed entry.
    #[error("snapshot state file {}: its host's capabilities", .path.display())]
    Capabilities {
        /// The state file.
        path: PathBuf,
        /// Which entry, and what is wrong with it.
        #[source]
        source: super::CapabilitiesError,
    },
    /// No random identity could be drawn for a new snapshot.
    #[error("drawing a random snapshot identity from /dev/urandom")]
    Identity(#[source] std::io::Error),
    /// The snapshot's files, written, could not be put in place durably: a sync, a rename
    /// or the directory's sync failed (the source says which file and step; see
    /// [`AtomicFiles::commit`] for what each failure leaves).
    #[error("putting the snapshot files in place in {}", .dir.display())]
    Commit {
        /// The snapshot directory.
        dir: PathBuf,
        /// The step that failed.
        #[source]
        source: AtomicWriteError,
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
    /// On Xen, whose guest memory is Xen's own frames mapped into vmkit, adding the region
    /// copies the mapped file in at once (its zero pages skipped), so the VM keeps no link
    /// to the file there.
    #[default]
    Lazy,
    /// Copy every region into fresh anonymous memory, chunk by chunk straight into the guest
    /// mapping, verifying every chunk checksum; holes of the file are skipped. Nothing ties the
    /// VM to the file afterwards. Diff snapshots are always restored this way.
    Eager,
}

pub(super) fn backend(kind: HypervisorKind) -> Backend {
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
pub(super) struct RegionLayout {
    pub(super) guest_addr: u64,
    pub(super) size: u64,
    pub(super) flags: u32,
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

    /// Writes the snapshot into `dir`: the memory file (`memory` fills it, given a writer that
    /// carries the identities), then the state file (a diff's names its base), then puts both
    /// in place ([`AtomicFiles::commit`]).
    fn write(
        &self,
        mut files: AtomicFiles,
        dir: &Path,
        id: SnapshotId,
        base: Option<(&Path, SnapshotId)>,
        memory: impl FnOnce(MemoryWriter, &mut File) -> Result<(), MemoryFileError>,
        devices: impl FnOnce(&mut Writer<&mut File>) -> Result<(), StateError>,
    ) -> Result<(), SnapshotError> {
        let base_id = base.map_or(SnapshotId::NONE, |(_, base_id)| base_id);
        files
            .write(MEMORY_FILE, |file| {
                memory(MemoryWriter::new().with_identity(id, base_id), file)
            })
            .map_err(|source| SnapshotError::Memory {
                path: dir.join(MEMORY_FILE),
                source,
            })?;
        let base = base.map(|(path, _)| path);
        let caps = self.hypervisor.capabilities();
        files
            .write(STATE_FILE, |file| -> Result<(), StateError> {
                let kind = backend(self.hypervisor.kind());
                let mut writer = Writer::new(file, Arch::X86_64, kind, digest(caps));
                writer.set_snapshot_id(id);
                if let Some(base) = base {
                    writer.set_flags(Flags::DIFF_MEMORY)?;
                    writer.write_section(BASE, 0, VERSION, &base.to_string_lossy())?;
                }
                writer.write_section(CONFIG, 0, VERSION, self.config)?;
                writer.write_section(
                    CAPABILITIES,
                    0,
                    CAPABILITIES_VERSION,
                    &super::CapabilitiesSection::new(caps),
                )?;
                writer.write_section(VM_STATE, 0, super::VM_STATE_VERSION, &self.vm_state)?;
                writer.write_section(MEMORY_LAYOUT, 0, VERSION, &self.layout)?;
                for state in &self.vcpu_states {
                    writer.write_section(SectionTag::VCPU, state.id, VCPU_VERSION, state)?;
                }
                devices(&mut writer)?;
                writer.finish()?;
                Ok(())
            })
            .map_err(|source| SnapshotError::State {
                path: dir.join(STATE_FILE),
                source,
            })?;
        commit(files, dir)
    }
}

/// A guest memory region as the memory writer's source: read through vm-memory's volatile
/// copy, a chunk or a run of dirty pages at a time, never borrowed as `&[u8]`. Whatever writes
/// guest memory meanwhile (a vCPU left running, a device, the kernel's vhost datapath) can tear
/// the snapshot but cannot make the save a data race.
struct GuestSource<'a, B: BitmapSlice>(VolatileSlice<'a, B>);

impl<B: BitmapSlice> RegionSource for GuestSource<'_, B> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let offset = usize::try_from(offset).map_err(std::io::Error::other)?;
        let copied = self
            .0
            .subslice(offset, buf.len())
            .map_err(std::io::Error::other)?
            .copy_to(buf);
        if copied == buf.len() {
            Ok(())
        } else {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        }
    }
}

/// Every region of `memory` with its guest address, as a source for the memory writer.
fn guest_sources(
    memory: &GuestMemoryMmap,
) -> Result<Vec<(u64, GuestSource<'_, impl BitmapSlice + '_>)>, SnapshotError> {
    memory
        .iter()
        .map(|region| {
            let addr = region.start_addr().0;
            region
                .as_volatile_slice()
                .map(|slice| (addr, GuestSource(slice)))
                .map_err(|source| SnapshotError::GuestMemory { addr, source })
        })
        .collect()
}

/// The snapshot directory, created if needed, for the files of one snapshot.
fn snapshot_files(dir: &Path) -> Result<AtomicFiles, SnapshotError> {
    AtomicFiles::create_dir(dir).map_err(|e| match e {
        AtomicWriteError::CreateDir { path, source } => SnapshotError::CreateDir { path, source },
        other => SnapshotError::Commit {
            dir: dir.to_path_buf(),
            source: other,
        },
    })
}

/// Puts the written files of a snapshot in place (see [`AtomicFiles::commit`]).
fn commit(files: AtomicFiles, dir: &Path) -> Result<(), SnapshotError> {
    files.commit().map_err(|source| SnapshotError::Commit {
        dir: dir.to_path_buf(),
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
/// must stay outside `run()` until the save returns, and a device must have no request in
/// flight, for the snapshot to be consistent. Guest memory is read through vm-memory's
/// volatile copies, a few pages at a time into bounded buffers (never as a `&[u8]` over the
/// mapping), so a save while something still writes guest memory (a running vCPU, a device,
/// the kernel's vhost-net datapath) is memory-safe but gives a torn snapshot: pages from
/// different moments, each chunk still matching its checksum.
///
/// Both files are written under temporary names, synced together, then renamed into place,
/// the memory file first, and the directory synced ([`AtomicFiles`]): a state file only ever
/// names memory that is on disk. A crash between the two renames can leave the new memory
/// file beside an older state file; both carry the snapshot's identity, and
/// [`restore`] refuses such a pair ([`SnapshotError::Mismatch`]).
pub fn save(
    dir: &Path,
    hypervisor: &dyn Hypervisor,
    config: &VmConfig,
    vm: &dyn Vm,
    vcpus: &[VcpuState],
    devices: impl FnOnce(&mut Writer<&mut File>) -> Result<(), StateError>,
) -> Result<(), SnapshotError> {
    let files = snapshot_files(dir)?;
    let capture = Capture::take(hypervisor, config, vm, vcpus)?;
    let memory = vm.memory();
    let sources = guest_sources(&memory)?;
    let id = SnapshotId::random().map_err(SnapshotError::Identity)?;
    let memory_file =
        |writer: MemoryWriter, file: &mut File| writer.write_full(file, &sources).map(|_| ());
    capture.write(files, dir, id, None, memory_file, devices)
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
                let words = bitmap.get_and_reset();
                entry.extend(set_bits(&words).filter(|&page| page < pages));
            }
        }
        Ok(())
    }

    /// Saves a paused VM to `dir` as a diff on top of the snapshot in `base` (a full one or
    /// another diff): the state as in [`save`], and only the pages written since the base.
    /// The base's state file is read for its identity, which the diff records: a restore
    /// refuses the diff on top of anything else, including a snapshot saved into `base`
    /// again later.
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
        // The diff records its base's identity, so that it is never applied to another.
        let base_state = base.join(STATE_FILE);
        let expected = Expected {
            arch: Arch::X86_64,
            backend: backend(hypervisor.kind()),
        };
        let base_id = Snapshot::open(&base_state, expected)
            .map_err(|source| SnapshotError::State {
                path: base_state.clone(),
                source,
            })?
            .header()
            .snapshot_id;
        let id = SnapshotId::random().map_err(SnapshotError::Identity)?;
        let files = snapshot_files(dir)?;
        let capture = Capture::take(hypervisor, config, vm, vcpus)?;
        self.collect(vm)?;
        let memory = vm.memory();
        let regions = guest_sources(&memory)?;
        let pages: Vec<Vec<u64>> = regions
            .iter()
            .map(|(addr, _)| {
                self.pending
                    .get(addr)
                    .map(|set| set.iter().copied().collect())
                    .unwrap_or_default()
            })
            .collect();
        let diff: Vec<DiffRegion<'_, _>> = regions
            .into_iter()
            .zip(&pages)
            .map(|((guest_addr, contents), dirty_pages)| DiffRegion {
                guest_addr,
                contents,
                dirty_pages,
            })
            .collect();
        let memory_file =
            |writer: MemoryWriter, file: &mut File| writer.write_diff(file, &diff).map(|_| ());
        capture.write(files, dir, id, Some((base, base_id)), memory_file, devices)?;
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
/// [`check`] comes first and creates nothing: the state file's header, every section's
/// checksum, the architecture and backend, the capabilities the VM used against this host's
/// (the error lists everything missing), the vCPU sections, and whether the memory file (and,
/// for a diff, each base down to the full snapshot) belongs with the state file. Only then is
/// the VM created and its memory mapped ([`MemoryRestore::Lazy`], full snapshots only) or
/// copied in chunk by chunk, verified, with each region's flags as saved.
///
/// # Memory files must not change under a lazily restored VM
///
/// A lazy restore maps the memory file: the guest's pages are read from it when first
/// touched, for as long as the VM runs. If the file is truncated (or rewritten) meanwhile, a
/// touch past its new end raises `SIGBUS` in whichever thread touched it: the vCPU's, or the
/// VMM's own when a device reads guest memory, which kills the VMM. No check at restore time
/// can rule that out. Keep snapshot files read-only (`chmod a-w`, or a read-only bind mount)
/// on a local file system that nothing else modifies while the VM runs, and never save a new
/// snapshot over the directory a running VM was restored from; when that cannot be
/// guaranteed, restore with [`MemoryRestore::Eager`], which copies memory in and keeps no
/// link to the file.
pub fn restore(
    dir: &Path,
    hypervisor: &dyn Hypervisor,
    memory_restore: MemoryRestore,
) -> Result<Restored, SnapshotError> {
    let checked = check(dir, hypervisor)?;
    let vm = hypervisor.create_vm(&checked.config)?;
    populate(vm.as_ref(), checked.memory, &checked.layout, memory_restore)?;
    let mut vcpus = Vec::with_capacity(checked.vcpu_states.len());
    for state in &checked.vcpu_states {
        let vcpu = vm.create_vcpu(state.id)?;
        restore_vcpu(vcpu.as_ref(), state)?;
        vcpus.push(vcpu);
    }
    restore_vm(vm.as_ref(), &checked.vm_state)?;
    let Checked {
        config, snapshot, ..
    } = checked;
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

/// Adds every region of the checked memory files to `vm`, with the flags the layout records:
/// a full snapshot restored lazily maps its memory file copy-on-write; otherwise each region is
/// fresh anonymous memory into which the full file, then each diff in order, is streamed.
fn populate(
    vm: &dyn Vm,
    mut chain: Vec<OpenMemory>,
    layout: &[RegionLayout],
    memory_restore: MemoryRestore,
) -> Result<(), SnapshotError> {
    let flags = |addr: u64| {
        layout
            .iter()
            .find(|r| r.guest_addr == addr)
            .map_or(MemoryFlags::empty(), |r| {
                MemoryFlags::from_bits_truncate(r.flags)
            })
    };
    let lazy = memory_restore == MemoryRestore::Lazy && chain.len() == 1;
    let regions = chain
        .first()
        .map(|full| full.header.regions().to_vec())
        .unwrap_or_default();
    for info in regions {
        let addr = GuestAddress(info.guest_addr);
        // The memory file's region table was checked against this host's address width only
        // through the layout; a size that does not fit is refused by the mapping.
        let size = usize::try_from(info.size).unwrap_or(usize::MAX);
        let region = if let (true, Some(full)) = (lazy, chain.first()) {
            let clone = full.file.try_clone().map_err(|source| {
                memory_error(&full.path)(MemoryFileError::Io {
                    what: "sharing the memory file",
                    source,
                })
            })?;
            MemoryRegion::from_file_private(
                addr,
                size,
                FileOffset::new(clone, info.file_offset),
                flags(info.guest_addr),
            )?
        } else {
            let region = MemoryRegion::anonymous(addr, size, flags(info.guest_addr))?;
            for memory in &mut chain {
                stream_into(memory, info.guest_addr, &region)?;
            }
            region
        };
        vm.add_memory_region(region)?;
    }
    Ok(())
}

/// Copies the region at `guest_addr` of one memory file into `region`'s mapping, chunk by
/// chunk, each verified first; holes of the file are skipped (the mapping is zero there).
fn stream_into(
    memory: &mut OpenMemory,
    guest_addr: u64,
    region: &MemoryRegion,
) -> Result<(), SnapshotError> {
    let Some(index) = memory
        .header
        .regions()
        .iter()
        .position(|r| r.guest_addr == guest_addr)
    else {
        // `check` matched every file's regions to the layout; nothing to copy otherwise.
        return Ok(());
    };
    let mapping = region.mapping();
    let fd = memory.file.as_raw_fd();
    let mut data_from = None;
    memory
        .header
        .stream_region(
            &mut memory.file,
            index,
            |offset, len| in_hole(fd, &mut data_from, offset, len),
            |offset, bytes| {
                mapping
                    .write_slice(bytes, MemoryRegionAddress(offset))
                    .map_err(|source| MemoryFileError::Io {
                        what: "writing into guest memory",
                        source: std::io::Error::other(source),
                    })
            },
        )
        .map_err(memory_error(&memory.path))
}

/// Whether `offset..offset + len` of the file `fd` is wholly a hole, from `lseek(SEEK_DATA)`.
/// `data_from` caches the start of the next data at or after the last offset asked (`u64::MAX`
/// when none follows), so that a long hole costs one call. Unsure answers are `false`.
fn in_hole(fd: RawFd, data_from: &mut Option<(u64, u64)>, offset: u64, len: u64) -> bool {
    let end = offset.saturating_add(len);
    if let Some((asked, next)) = *data_from {
        if asked <= offset && offset < next {
            return end <= next;
        }
    }
    let Ok(at) = libc::off_t::try_from(offset) else {
        return false;
    };
    // SAFETY: lseek takes no pointer; `fd` is the memory file, open for the whole call.
    // Moving its position is harmless: every read seeks first.
    let next = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
    let next = if next >= 0 {
        next as u64
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
        u64::MAX
    } else {
        return false;
    };
    *data_from = Some((offset, next));
    end <= next
}
