//! Checking that the files of a snapshot belong together, on the files alone, before a VM is
//! created: the state file against the host, the memory file against the state file (kind,
//! identity, layout), each diff against the base it names, and the vCPU sections against
//! themselves and the configuration.

use std::fs::File;
use std::path::{Path, PathBuf};

use vmkit_snapshot::{
    open_regular, Arch, Backend, Expected, Flags, MemoryError as MemoryFileError, MemoryFile,
    MemoryKind, SectionTag, Snapshot, SnapshotId, StateError,
};

use super::file::{
    backend, RegionLayout, SnapshotError, BASE, CAPABILITIES, CAPABILITIES_VERSION, CONFIG,
    MAX_CHAIN, MEMORY_FILE, MEMORY_LAYOUT, STATE_FILE, VCPU_VERSION, VERSION,
};
use super::{portable, VcpuState, VmState};
use crate::hypervisor::{Hypervisor, VmConfig};

/// How the files of a snapshot disagree (see [`SnapshotError::Mismatch`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Mismatch {
    /// The state file says full (or diff) and the memory file is the other kind.
    #[error("the state file is of a {state} snapshot but the memory file holds {memory} memory")]
    Kind {
        /// What the state file says: "full" or "diff".
        state: &'static str,
        /// What the memory file holds.
        memory: &'static str,
    },
    /// The memory file was saved with another state file.
    #[error("the state file is snapshot {state} but the memory file belongs to snapshot {memory}")]
    Identity {
        /// The state file's snapshot identity.
        state: SnapshotId,
        /// The memory file's.
        memory: SnapshotId,
    },
    /// A diff's base directory holds another snapshot than the one the diff was taken on.
    #[error("the diff applies on top of snapshot {expected} but its base is snapshot {found}")]
    Base {
        /// The base identity the diff's memory file records.
        expected: SnapshotId,
        /// The identity of the snapshot in the base directory.
        found: SnapshotId,
    },
    /// The memory layout section lists no region.
    #[error("the memory layout lists no region")]
    NoRegions,
    /// The layout and a memory file list different numbers of regions.
    #[error("the memory layout lists {layout} regions but the memory file {memory}")]
    RegionCount {
        /// Regions in the layout section.
        layout: usize,
        /// Regions in the memory file.
        memory: usize,
    },
    /// A region (in guest-address order) differs between the layout and a memory file.
    #[error(
        "region #{index}: the memory layout has {layout_addr:#x} (+{layout_size:#x} bytes), \
         the memory file {memory_addr:#x} (+{memory_size:#x} bytes)"
    )]
    Region {
        /// Position in guest-address order.
        index: usize,
        /// Guest address in the layout.
        layout_addr: u64,
        /// Size in the layout.
        layout_size: u64,
        /// Guest address in the memory file.
        memory_addr: u64,
        /// Size in the memory file.
        memory_size: u64,
    },
    /// The state file has no vCPU section.
    #[error("the state file has no vCPU section")]
    NoVcpus,
    /// A vCPU section's index and the id in its state differ.
    #[error("vCPU section {section} holds the state of vCPU {state}")]
    VcpuId {
        /// The section's index.
        section: u32,
        /// The id in the state.
        state: u32,
    },
    /// A vCPU id is not below the configuration's `max_vcpus`.
    #[error("vCPU {id} is out of range: the configuration allows ids below {max_vcpus}")]
    VcpuOutOfRange {
        /// The id.
        id: u32,
        /// The configuration's limit.
        max_vcpus: u32,
    },
}

/// One memory file of a snapshot, opened and its header checked.
pub(super) struct OpenMemory {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) header: MemoryFile,
}

/// A snapshot whose files were checked against the host and against each other, ready to be
/// restored: [`check`] returns it, [`restore`](super::restore) consumes it.
pub struct Checked {
    pub(super) config: VmConfig,
    pub(super) vm_state: VmState,
    pub(super) vcpu_states: Vec<VcpuState>,
    pub(super) layout: Vec<RegionLayout>,
    pub(super) snapshot: Snapshot,
    /// The full memory file first, then each diff in the order they apply.
    pub(super) memory: Vec<OpenMemory>,
}

impl Checked {
    /// The configuration the VM will be created with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The state file.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// How many snapshots' memory the restore combines: 1 for a full snapshot, 1 + the
    /// number of diffs otherwise.
    pub fn chain_len(&self) -> usize {
        self.memory.len()
    }

    /// The vCPU ids to create.
    pub fn vcpu_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.vcpu_states.iter().map(|s| s.id)
    }
}

fn state_error(path: &Path) -> impl Fn(StateError) -> SnapshotError + '_ {
    move |source| SnapshotError::State {
        path: path.to_path_buf(),
        source,
    }
}

fn memory_error(path: &Path) -> impl Fn(MemoryFileError) -> SnapshotError + '_ {
    move |source| SnapshotError::Memory {
        path: path.to_path_buf(),
        source,
    }
}

fn mismatch(state: &Path, memory: &Path, source: Mismatch) -> SnapshotError {
    SnapshotError::Mismatch {
        state: state.to_path_buf(),
        memory: memory.to_path_buf(),
        source,
    }
}

/// Opens a memory file (refusing special files, so that a FIFO cannot block) and checks its
/// header.
fn open_memory(dir: &Path) -> Result<OpenMemory, SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let mut file = open_regular(&path).map_err(|source| SnapshotError::Open {
        path: path.clone(),
        source,
    })?;
    let header = MemoryFile::read_header(&mut file).map_err(memory_error(&path))?;
    Ok(OpenMemory { path, file, header })
}

fn kind_name(diff: bool) -> &'static str {
    if diff {
        "diff"
    } else {
        "full"
    }
}

/// Checks one snapshot directory's memory file against its state file: kind, identity and
/// regions.
fn check_memory(
    state_path: &Path,
    snapshot: &Snapshot,
    layout: &[RegionLayout],
    memory: &OpenMemory,
) -> Result<(), SnapshotError> {
    let diff = snapshot.header().flags.contains(Flags::DIFF_MEMORY);
    let memory_diff = memory.header.kind() == MemoryKind::Diff;
    if diff != memory_diff {
        return Err(mismatch(
            state_path,
            &memory.path,
            Mismatch::Kind {
                state: kind_name(diff),
                memory: kind_name(memory_diff),
            },
        ));
    }
    let (state_id, memory_id) = (snapshot.header().snapshot_id, memory.header.snapshot_id());
    if state_id != memory_id {
        return Err(mismatch(
            state_path,
            &memory.path,
            Mismatch::Identity {
                state: state_id,
                memory: memory_id,
            },
        ));
    }
    check_layout(layout, &memory.header)
        .map_err(|source| mismatch(state_path, &memory.path, source))
}

/// The layout and the memory file's region table list the same regions (as sets: both come
/// from the VM's region list, compared in guest-address order).
fn check_layout(layout: &[RegionLayout], memory: &MemoryFile) -> Result<(), Mismatch> {
    if layout.is_empty() {
        return Err(Mismatch::NoRegions);
    }
    if layout.len() != memory.regions().len() {
        return Err(Mismatch::RegionCount {
            layout: layout.len(),
            memory: memory.regions().len(),
        });
    }
    let mut ours: Vec<(u64, u64)> = layout.iter().map(|r| (r.guest_addr, r.size)).collect();
    let mut theirs: Vec<(u64, u64)> = memory
        .regions()
        .iter()
        .map(|r| (r.guest_addr, r.size))
        .collect();
    ours.sort_unstable();
    theirs.sort_unstable();
    for (index, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        if a != b {
            return Err(Mismatch::Region {
                index,
                layout_addr: a.0,
                layout_size: a.1,
                memory_addr: b.0,
                memory_size: b.1,
            });
        }
    }
    Ok(())
}

/// The vCPU sections: at least one, each holding its own id, each id in the configuration's
/// range.
fn vcpu_states(
    state_path: &Path,
    snapshot: &Snapshot,
    config: &VmConfig,
) -> Result<Vec<VcpuState>, SnapshotError> {
    let inconsistent = |source| SnapshotError::Inconsistent {
        path: state_path.to_path_buf(),
        source,
    };
    let mut states = Vec::new();
    for section in snapshot.instances(SectionTag::VCPU) {
        let state: VcpuState = section
            .decode(VCPU_VERSION..=VCPU_VERSION)
            .map_err(state_error(state_path))?;
        if state.id != section.index() {
            return Err(inconsistent(Mismatch::VcpuId {
                section: section.index(),
                state: state.id,
            }));
        }
        if state.id >= config.max_vcpus {
            return Err(inconsistent(Mismatch::VcpuOutOfRange {
                id: state.id,
                max_vcpus: config.max_vcpus,
            }));
        }
        states.push(state);
    }
    if states.is_empty() {
        return Err(inconsistent(Mismatch::NoVcpus));
    }
    Ok(states)
}

/// Opens a state file written by this host's backend `ours` or by another one vmkit knows
/// (a restore across backends, see [`portable`]); returns it with what it was opened as.
fn open_state(path: &Path, ours: Backend) -> Result<(Snapshot, Expected), SnapshotError> {
    let expected = Expected {
        arch: Arch::X86_64,
        backend: ours,
    };
    match Snapshot::open(path, expected) {
        Err(StateError::BackendMismatch { found, .. }) => {
            let theirs = Expected {
                backend: found,
                ..expected
            };
            Snapshot::open(path, theirs)
                .map(|snapshot| (snapshot, theirs))
                .map_err(state_error(path))
        }
        opened => opened
            .map(|snapshot| (snapshot, expected))
            .map_err(state_error(path)),
    }
}

/// Checks the snapshot in `dir` for a restore on `hypervisor`, reading only the files: the
/// state file's header, checksums and architecture; the capabilities of the host that wrote
/// it against this host's (for a snapshot of the other backend, KVM or Xen: what the VM used,
/// its configuration, state, CPUID feature bits and the MSRs holding a value, see
/// [`PORTABLE_MSRS`](super::PORTABLE_MSRS)); the vCPU sections, and their pending events
/// against what this host can hold; the memory file's header, kind, identity and region
/// table against the state file; for a diff, every snapshot down to the full one, each diff's
/// recorded base identity against the base directory's snapshot. Region data is not read
/// (see [`MemoryRestore`](super::MemoryRestore)).
///
/// Every error names the file (or both files) and what is wrong. Nothing is created, so a
/// VMM can call this to vet a snapshot directory; [`restore`](super::restore) calls it first.
pub fn check(dir: &Path, hypervisor: &dyn Hypervisor) -> Result<Checked, SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let ours = backend(hypervisor.kind());
    let (snapshot, expected) = open_state(&state_path, ours)?;
    let config: VmConfig = snapshot
        .read_section(CONFIG, 0, VERSION..=VERSION)
        .map_err(state_error(&state_path))?;
    let section: super::CapabilitiesSection = snapshot
        .read_section(CAPABILITIES, 0, CAPABILITIES_VERSION..=CAPABILITIES_VERSION)
        .map_err(state_error(&state_path))?;
    let their_caps = section
        .capabilities()
        .map_err(|source| SnapshotError::Capabilities {
            path: state_path.clone(),
            source,
        })?;
    let host = hypervisor.capabilities();
    let same_backend = expected.backend == ours;
    if same_backend {
        let missing = their_caps.missing_in(host);
        if !missing.is_empty() {
            return Err(SnapshotError::MissingCapabilities { missing });
        }
    }
    let mut vm_state: VmState =
        super::read_vm_state(&snapshot).map_err(state_error(&state_path))?;
    let mut vcpu_states = vcpu_states(&state_path, &snapshot, &config)?;
    let layout: Vec<RegionLayout> = snapshot
        .read_section(MEMORY_LAYOUT, 0, VERSION..=VERSION)
        .map_err(state_error(&state_path))?;
    let mut missing = Vec::new();
    if !same_backend {
        // From another backend: held to what the VM used, not to what its host offered.
        portable::adapt(&mut vm_state, &mut vcpu_states, host);
        missing = portable::required(&config, &vm_state, &vcpu_states, &layout).missing_in(host);
    }
    // Pending events this host cannot hold (an NMI blocked, an interrupt shadow…) would be
    // refused by set_vcpu_events halfway through the restore.
    missing.extend(
        vcpu_states
            .iter()
            .flat_map(|s| host.missing_events(s.id, &s.events)),
    );
    // Likewise a halted vCPU where the host cannot load one.
    missing.extend(
        vcpu_states
            .iter()
            .filter_map(|s| host.missing_mp_state(s.id, s.mp_state)),
    );
    if !missing.is_empty() {
        return Err(SnapshotError::MissingCapabilities { missing });
    }
    let memory = open_memory(dir)?;
    check_memory(&state_path, &snapshot, &layout, &memory)?;

    // Down the chain of bases: each must be the snapshot the diff above it was taken on, with
    // the same regions.
    let mut chain = vec![memory];
    let mut current = (state_path.clone(), snapshot.header().flags);
    let mut current_base: Option<PathBuf> = None;
    while current.1.contains(Flags::DIFF_MEMORY) {
        if chain.len() > MAX_CHAIN {
            return Err(SnapshotError::ChainTooLong {
                dir: dir.to_path_buf(),
                max: MAX_CHAIN,
            });
        }
        let base: String = match &current_base {
            None => snapshot.read_section(BASE, 0, VERSION..=VERSION),
            Some(path) => Snapshot::open(path, expected)
                .and_then(|s| s.read_section(BASE, 0, VERSION..=VERSION)),
        }
        .map_err(state_error(&current.0))?;
        let base_dir = PathBuf::from(base);
        let base_state_path = base_dir.join(STATE_FILE);
        let base_state =
            Snapshot::open(&base_state_path, expected).map_err(state_error(&base_state_path))?;
        let base_layout: Vec<RegionLayout> = base_state
            .read_section(MEMORY_LAYOUT, 0, VERSION..=VERSION)
            .map_err(state_error(&base_state_path))?;
        let base_memory = open_memory(&base_dir)?;
        check_memory(&base_state_path, &base_state, &base_layout, &base_memory)?;
        let above = chain.last().map(|m| (m.header.base_id(), m.path.clone()));
        if let Some((expected_id, diff_memory)) = above {
            let found = base_state.header().snapshot_id;
            if expected_id != found {
                return Err(mismatch(
                    &base_state_path,
                    &diff_memory,
                    Mismatch::Base {
                        expected: expected_id,
                        found,
                    },
                ));
            }
        }
        // The diff writes into the base's regions: they must be the same.
        check_layout(&layout, &base_memory.header)
            .map_err(|source| mismatch(&state_path, &base_memory.path, source))?;
        current = (base_state_path.clone(), base_state.header().flags);
        current_base = Some(base_state_path);
        chain.push(base_memory);
    }
    chain.reverse();
    Ok(Checked {
        config,
        vm_state,
        vcpu_states,
        layout,
        snapshot,
        memory: chain,
    })
}
