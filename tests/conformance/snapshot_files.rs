//! The files of a snapshot belong together: a restore checks them against each other before
//! it creates anything. Each scenario saves real VMs with the real save path, then puts the
//! wrong combination of files on disk, as a user could, and checks the typed error, its
//! message, and that no VM was created (through a hypervisor wrapper that counts them).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmkit::snapshot::format::memory::{MEMORY_HEADER_LEN, MEMORY_MAGIC, REGION_ENTRY_LEN};
use vmkit::snapshot::format::{
    checksum, OpenError, Section, SectionTag, Snapshot, SnapshotId, Writer, PAGE_SIZE,
};
use vmkit::snapshot::{self, Features, MemoryRestore, Mismatch, SnapshotError};
use vmkit::{
    Capabilities, Hypervisor, HypervisorError, HypervisorKind, MemoryFlags, MemoryRegion, Vm,
    VmConfig,
};
use vmm_sys_util::tempdir::TempDir;

const MIB: usize = 1 << 20;

/// A hypervisor that counts the VMs created through it.
struct Counting<'a> {
    inner: &'a dyn Hypervisor,
    vms: AtomicUsize,
}

impl Hypervisor for Counting<'_> {
    fn kind(&self) -> HypervisorKind {
        self.inner.kind()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn create_vm(&self, config: &VmConfig) -> Result<Box<dyn Vm>, HypervisorError> {
        self.vms.fetch_add(1, Ordering::SeqCst);
        self.inner.create_vm(config)
    }
}

/// Restores `dir` both ways and checks it on its own: all three must fail alike, and no VM
/// may have been created. Returns the error.
fn refused(hv: &dyn Hypervisor, dir: &Path) -> SnapshotError {
    let counting = Counting {
        inner: hv,
        vms: AtomicUsize::new(0),
    };
    let mut messages = Vec::new();
    for mode in [MemoryRestore::Lazy, MemoryRestore::Eager] {
        match snapshot::restore(dir, &counting, mode) {
            Ok(_) => panic!("{} restored {mode:?}", dir.display()),
            Err(err) => messages.push(chain(&err)),
        }
    }
    assert_eq!(counting.vms.load(Ordering::SeqCst), 0, "a VM was created");
    let err = match snapshot::check(dir, hv) {
        Ok(_) => panic!("{} passed the check", dir.display()),
        Err(err) => err,
    };
    assert_eq!(messages, [chain(&err), chain(&err)]);
    err
}

/// The error and its sources, as a VMM would print them.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out += &format!(": {s}");
        source = s.source();
    }
    out
}

/// Saves a fresh VM with these regions (a marker written in each) and one vCPU to `dir`.
fn save_vm(hv: &dyn Hypervisor, dir: &Path, regions: &[(u64, usize, MemoryFlags)], marker: u8) {
    let config = VmConfig::default();
    let vm = hv.create_vm(&config).unwrap();
    for &(addr, size, flags) in regions {
        let region = MemoryRegion::anonymous(GuestAddress(addr), size, flags).unwrap();
        vm.add_memory_region(region).unwrap();
    }
    for &(addr, _, flags) in regions {
        if !flags.contains(MemoryFlags::READ_ONLY) {
            vm.memory()
                .write_obj(marker, GuestAddress(addr + 0x1000))
                .unwrap();
        }
    }
    let vcpu = vm.create_vcpu(0).unwrap();
    let features = Features::for_vm(&config, hv.capabilities());
    let msrs = snapshot::readable_msrs(vcpu.as_ref(), &hv.msr_index_list());
    let state = snapshot::save_vcpu(vcpu.as_ref(), &msrs, features).unwrap();
    snapshot::save(dir, hv, &config, vm.as_ref(), &[state], |_| Ok(())).unwrap();
}

fn ram(size: usize) -> [(u64, usize, MemoryFlags); 1] {
    [(0, size, MemoryFlags::empty())]
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap();
}

/// Rewrites `dir`'s state file, header unchanged: `edit` writes each section (or not) to the
/// new file; [`keep`] copies one as it is.
fn rewrite_state(dir: &Path, mut edit: impl FnMut(&Section, &mut Writer<Vec<u8>>)) {
    let path = dir.join(snapshot::STATE_FILE);
    let old = Snapshot::from_bytes(&std::fs::read(&path).unwrap(), expected_any(&path)).unwrap();
    let h = old.header();
    let mut w = Writer::new(Vec::new(), h.arch, h.backend, h.capabilities);
    w.set_flags(h.flags).unwrap();
    w.set_snapshot_id(h.snapshot_id);
    for section in old.iter() {
        edit(section, &mut w);
    }
    std::fs::write(&path, w.finish().unwrap()).unwrap();
}

fn keep(section: &Section, w: &mut Writer<Vec<u8>>) {
    w.write_raw_section(
        section.tag(),
        section.index(),
        section.version(),
        section.payload(),
    )
    .unwrap();
}

/// What the state file at `path` says it is (to read it back whatever the backend).
fn expected_any(path: &Path) -> snapshot::format::Expected {
    let bytes = std::fs::read(path).unwrap();
    let h = snapshot::format::Header::decode(bytes[..88].try_into().unwrap()).unwrap();
    snapshot::format::Expected {
        arch: h.arch,
        backend: h.backend,
    }
}

/// The layout section's shape (vmkit's own type is private to it; the encoding is the same).
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug)]
struct RegionLayout {
    guest_addr: u64,
    size: u64,
    flags: u32,
}

fn root() -> TempDir {
    TempDir::new_with_prefix("/tmp/vmkit-snapfiles-").unwrap()
}

fn mismatch(err: SnapshotError) -> (PathBuf, PathBuf, Mismatch) {
    match err {
        SnapshotError::Mismatch {
            state,
            memory,
            source,
        } => (state, memory, source),
        other => panic!("not a mismatch: {other:?}"),
    }
}

/// A full snapshot's state file with a diff's memory file: before, a lazy restore mapped past
/// the file's end (SIGBUS when a device read a page there) and an eager one gave zeroed RAM.
pub fn a_diff_memory_file_in_a_full_snapshot_is_refused(hv: &dyn Hypervisor) {
    let root = root();
    let (full, diff, mixed) = (
        root.as_path().join("full"),
        root.as_path().join("diff"),
        root.as_path().join("mixed"),
    );
    let config = VmConfig::default();
    let vm = hv.create_vm(&config).unwrap();
    let region = MemoryRegion::anonymous(GuestAddress(0), 4 * MIB, MemoryFlags::LOG_DIRTY).unwrap();
    vm.add_memory_region(region).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let features = Features::for_vm(&config, hv.capabilities());
    let state = snapshot::save_vcpu(vcpu.as_ref(), &[], features).unwrap();
    snapshot::save(
        &full,
        hv,
        &config,
        vm.as_ref(),
        std::slice::from_ref(&state),
        |_| Ok(()),
    )
    .unwrap();
    let mut tracker = snapshot::DiffTracker::start(vm.as_ref()).unwrap();
    vm.memory().write_obj(7u8, GuestAddress(0x2000)).unwrap();
    tracker
        .save_diff(&diff, &full, hv, &config, vm.as_ref(), &[state], |_| Ok(()))
        .unwrap();
    copy(
        &full.join(snapshot::STATE_FILE),
        &mixed.join(snapshot::STATE_FILE),
    );
    copy(
        &diff.join(snapshot::MEMORY_FILE),
        &mixed.join(snapshot::MEMORY_FILE),
    );

    let err = refused(hv, &mixed);
    let text = chain(&err);
    let (state, memory, source) = mismatch(err);
    assert_eq!(state, mixed.join(snapshot::STATE_FILE));
    assert_eq!(memory, mixed.join(snapshot::MEMORY_FILE));
    assert!(
        matches!(
            source,
            Mismatch::Kind {
                state: "full",
                memory: "diff"
            }
        ),
        "{source:?}"
    );
    assert_eq!(
        text,
        format!(
            "snapshot files {} and {} do not belong together: the state file is of a full \
             snapshot but the memory file holds diff memory",
            state.display(),
            memory.display()
        )
    );
    // The other way round: a diff's state file with a full memory file.
    copy(
        &diff.join(snapshot::STATE_FILE),
        &mixed.join(snapshot::STATE_FILE),
    );
    copy(
        &full.join(snapshot::MEMORY_FILE),
        &mixed.join(snapshot::MEMORY_FILE),
    );
    let (_, _, source) = mismatch(refused(hv, &mixed));
    assert!(matches!(
        source,
        Mismatch::Kind {
            state: "diff",
            memory: "full"
        }
    ));
}

/// Another snapshot's memory file: the same VM saved later, or a smaller VM.
pub fn another_snapshots_memory_file_is_refused(hv: &dyn Hypervisor) {
    let root = root();
    let dir = |name: &str| root.as_path().join(name);
    save_vm(hv, &dir("early"), &ram(4 * MIB), 1);
    save_vm(hv, &dir("late"), &ram(4 * MIB), 2);
    save_vm(hv, &dir("small"), &ram(2 * MIB), 3);
    let early = Snapshot::open(
        dir("early").join(snapshot::STATE_FILE),
        expected_any(&dir("early").join(snapshot::STATE_FILE)),
    )
    .unwrap()
    .header()
    .snapshot_id;
    for other in ["late", "small"] {
        let mixed = dir(&format!("early+{other}"));
        copy(
            &dir("early").join(snapshot::STATE_FILE),
            &mixed.join(snapshot::STATE_FILE),
        );
        copy(
            &dir(other).join(snapshot::MEMORY_FILE),
            &mixed.join(snapshot::MEMORY_FILE),
        );
        let err = refused(hv, &mixed);
        let text = chain(&err);
        let (_, memory, source) = mismatch(err);
        assert_eq!(memory, mixed.join(snapshot::MEMORY_FILE));
        match source {
            Mismatch::Identity { state, memory } => {
                assert_eq!(state, early);
                assert_ne!(memory, early);
                assert!(
                    text.ends_with(&format!(
                        "the state file is snapshot {state} but the memory file belongs to \
                         snapshot {memory}"
                    )),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The layout section against the memory file's region table: no region, a moved one, a
/// shrunk one, one too many.
pub fn a_layout_that_disagrees_with_the_memory_file_is_refused(hv: &dyn Hypervisor) {
    let root = root();
    let base = root.as_path().join("base");
    save_vm(hv, &base, &ram(4 * MIB), 1);
    let size = (4 * MIB) as u64;
    let cases: [(&str, Vec<RegionLayout>); 4] = [
        ("none", vec![]),
        (
            "moved",
            vec![RegionLayout {
                guest_addr: 0x10_0000,
                size,
                flags: 0,
            }],
        ),
        (
            "shrunk",
            vec![RegionLayout {
                guest_addr: 0,
                size: size / 2,
                flags: 0,
            }],
        ),
        (
            "extra",
            vec![
                RegionLayout {
                    guest_addr: 0,
                    size,
                    flags: 0,
                },
                RegionLayout {
                    guest_addr: 0x1000_0000,
                    size,
                    flags: 0,
                },
            ],
        ),
    ];
    for (name, layout) in cases {
        let dir = root.as_path().join(name);
        for file in [snapshot::STATE_FILE, snapshot::MEMORY_FILE] {
            copy(&base.join(file), &dir.join(file));
        }
        rewrite_state(&dir, |section, w| {
            if section.tag() == SectionTag::MEMORY_LAYOUT {
                w.write_section(section.tag(), 0, section.version(), &layout)
                    .unwrap();
            } else {
                keep(section, w);
            }
        });
        let err = refused(hv, &dir);
        let text = chain(&err);
        let (_, _, source) = mismatch(err);
        match (name, &source) {
            ("none", Mismatch::NoRegions) => {
                assert!(
                    text.ends_with("the memory layout lists no region"),
                    "{text}"
                )
            }
            (
                "moved",
                Mismatch::Region {
                    index: 0,
                    layout_addr: 0x10_0000,
                    memory_addr: 0,
                    ..
                },
            ) => {
                assert!(
                    text.ends_with(
                        "region #0: the memory layout has 0x100000 (+0x400000 bytes), the \
                         memory file 0x0 (+0x400000 bytes)"
                    ),
                    "{text}"
                )
            }
            (
                "shrunk",
                Mismatch::Region {
                    layout_size,
                    memory_size,
                    ..
                },
            ) => {
                assert_eq!((*layout_size, *memory_size), (size / 2, size))
            }
            (
                "extra",
                Mismatch::RegionCount {
                    layout: 2,
                    memory: 1,
                },
            ) => {
                assert!(
                    text.ends_with("the memory layout lists 2 regions but the memory file 1"),
                    "{text}"
                )
            }
            _ => panic!("{name}: {source:?}"),
        }
    }
}

/// The vCPU sections: none at all, one holding another vCPU's state, one out of range.
pub fn vcpu_sections_are_checked(hv: &dyn Hypervisor) {
    let root = root();
    let base = root.as_path().join("base");
    save_vm(hv, &base, &ram(4 * MIB), 1);
    let state_path = |dir: &Path| dir.join(snapshot::STATE_FILE);
    for case in ["none", "another id", "out of range"] {
        let dir = root.as_path().join(case.replace(' ', "-"));
        for file in [snapshot::STATE_FILE, snapshot::MEMORY_FILE] {
            copy(&base.join(file), &dir.join(file));
        }
        rewrite_state(&dir, |section, w| {
            if section.tag() != SectionTag::VCPU {
                return keep(section, w);
            }
            let mut state: snapshot::VcpuState = section
                .decode(snapshot::VCPU_VERSION..=snapshot::VCPU_VERSION)
                .unwrap();
            match case {
                "none" => {}
                "another id" => {
                    state.id = 0;
                    w.write_section(SectionTag::VCPU, 1, snapshot::VCPU_VERSION, &state)
                        .unwrap();
                }
                _ => {
                    state.id = 1;
                    w.write_section(SectionTag::VCPU, 1, snapshot::VCPU_VERSION, &state)
                        .unwrap();
                }
            }
        });
        let err = refused(hv, &dir);
        let text = chain(&err);
        let SnapshotError::Inconsistent { path, source } = err else {
            panic!("{case}: {err:?}");
        };
        assert_eq!(path, state_path(&dir));
        let expected = match (case, &source) {
            ("none", Mismatch::NoVcpus) => "the state file has no vCPU section",
            (
                "another id",
                Mismatch::VcpuId {
                    section: 1,
                    state: 0,
                },
            ) => "vCPU section 1 holds the state of vCPU 0",
            (
                "out of range",
                Mismatch::VcpuOutOfRange {
                    id: 1,
                    max_vcpus: 1,
                },
            ) => "vCPU 1 is out of range: the configuration allows ids below 1",
            _ => panic!("{case}: {source:?}"),
        };
        assert_eq!(
            text,
            format!(
                "snapshot state file {} is inconsistent: {expected}",
                path.display()
            )
        );
    }

    // Pending events this host cannot hold (KVM: an exception pending but not injected, as
    // vmkit enables no exception payloads; Xen: NMI state too) are refused, by vCPU and
    // field, before any VM is created.
    let fields = hv.capabilities().vcpu_event_fields;
    let dir = root.as_path().join("events");
    for file in [snapshot::STATE_FILE, snapshot::MEMORY_FILE] {
        copy(&base.join(file), &dir.join(file));
    }
    let mut expected = Vec::new();
    rewrite_state(&dir, |section, w| {
        if section.tag() != SectionTag::VCPU {
            return keep(section, w);
        }
        let mut state: snapshot::VcpuState = section
            .decode(snapshot::VCPU_VERSION..=snapshot::VCPU_VERSION)
            .unwrap();
        state.events.exception.pending = true;
        state.events.exception.nr = 14;
        state.events.nmi.masked = true;
        expected = hv.capabilities().missing_events(state.id, &state.events);
        w.write_section(
            SectionTag::VCPU,
            section.index(),
            snapshot::VCPU_VERSION,
            &state,
        )
        .unwrap();
    });
    if fields.pending_exception && fields.nmi_state {
        return; // a host that holds both
    }
    assert!(!expected.is_empty());
    match refused(hv, &dir) {
        SnapshotError::MissingCapabilities { missing } => assert_eq!(missing, expected),
        err => panic!("{err:?}"),
    }
}

/// A diff restored on top of another snapshot than the one it was taken on: its base was
/// saved again in the same directory.
pub fn a_diff_on_the_wrong_base_is_refused(hv: &dyn Hypervisor) {
    let root = root();
    let (base, diff) = (root.as_path().join("base"), root.as_path().join("diff"));
    let config = VmConfig::default();
    let vm = hv.create_vm(&config).unwrap();
    let region = MemoryRegion::anonymous(GuestAddress(0), 4 * MIB, MemoryFlags::LOG_DIRTY).unwrap();
    vm.add_memory_region(region).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let features = Features::for_vm(&config, hv.capabilities());
    let state = snapshot::save_vcpu(vcpu.as_ref(), &[], features).unwrap();
    let save_base = || {
        snapshot::save(
            &base,
            hv,
            &config,
            vm.as_ref(),
            std::slice::from_ref(&state),
            |_| Ok(()),
        )
        .unwrap()
    };
    save_base();
    let mut tracker = snapshot::DiffTracker::start(vm.as_ref()).unwrap();
    vm.memory().write_obj(9u8, GuestAddress(0x3000)).unwrap();
    tracker
        .save_diff(
            &diff,
            &base,
            hv,
            &config,
            vm.as_ref(),
            std::slice::from_ref(&state),
            |_| Ok(()),
        )
        .unwrap();
    // The right base restores.
    snapshot::check(&diff, hv).unwrap();
    // Saved again: same VM, same place, another snapshot.
    save_base();
    let err = refused(hv, &diff);
    let text = chain(&err);
    let (state_file, memory, source) = mismatch(err);
    assert_eq!(state_file, base.join(snapshot::STATE_FILE));
    assert_eq!(memory, diff.join(snapshot::MEMORY_FILE));
    let Mismatch::Base { expected, found } = source else {
        panic!("{source:?}");
    };
    assert_ne!(expected, found);
    assert!(
        text.ends_with(&format!(
            "the diff applies on top of snapshot {expected} but its base is snapshot {found}"
        )),
        "{text}"
    );
}

/// A FIFO (or a directory) in place of the memory file is refused, promptly.
pub fn special_files_are_refused_without_blocking(hv: &dyn Hypervisor) {
    let root = root();
    let dir = root.as_path().join("snap");
    save_vm(hv, &dir, &ram(4 * MIB), 1);
    let memory = dir.join(snapshot::MEMORY_FILE);
    std::fs::remove_file(&memory).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&memory)
        .status()
        .unwrap();
    assert!(status.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = tx.send(refused(hv, &dir));
        });
        let result = rx.recv_timeout(Duration::from_secs(60));
        if result.is_err() {
            // Unblock the reader (a writer end pairs with it), so that the scope can end.
            let _ = std::fs::OpenOptions::new().write(true).open(&memory);
        }
        result
    });
    let err = result.expect("restoring a snapshot whose memory file is a FIFO blocked");
    let text = chain(&err);
    assert!(
        matches!(
            &err,
            SnapshotError::Open { path, source: OpenError::NotARegularFile("FIFO") }
                if *path == memory
        ),
        "{err:?}"
    );
    assert_eq!(
        text,
        format!(
            "snapshot file {}: it is a FIFO, not a regular file",
            memory.display()
        )
    );
    std::fs::remove_file(&memory).unwrap();
    std::fs::create_dir(&memory).unwrap();
    let err = refused(hv, &dir);
    assert!(matches!(
        err,
        SnapshotError::Open {
            source: OpenError::NotARegularFile("directory"),
            ..
        }
    ));
}

/// Each region comes back with the flags it was saved with, lazily and eagerly.
pub fn regions_keep_their_flags(hv: &dyn Hypervisor) {
    let root = root();
    let dir = root.as_path().join("snap");
    let mut regions = vec![(0, 4 * MIB, MemoryFlags::LOG_DIRTY)];
    if hv.capabilities().read_only_memory {
        regions.push((0x1000_0000, 2 * MIB, MemoryFlags::READ_ONLY));
    }
    save_vm(hv, &dir, &regions, 5);
    for mode in [MemoryRestore::Lazy, MemoryRestore::Eager] {
        let restored = snapshot::restore(&dir, hv, mode).unwrap();
        let mut layout: Vec<(u64, u64, MemoryFlags)> = restored
            .vm
            .memory_layout()
            .into_iter()
            .map(|(_, range, flags)| (range.start, range.size, flags))
            .collect();
        layout.sort_by_key(|r| r.0);
        let saved: Vec<(u64, u64, MemoryFlags)> = regions
            .iter()
            .map(|&(addr, size, flags)| (addr, size as u64, flags))
            .collect();
        assert_eq!(layout, saved, "{mode:?}");
        let marker: u8 = restored.vm.memory().read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(marker, 5, "{mode:?}");
    }
}

/// A sparse 64 GiB region restores eagerly without a region-sized buffer: the memory file is
/// streamed into the guest mapping, its holes skipped.
pub fn a_sparse_huge_region_restores_eagerly(hv: &dyn Hypervisor) {
    const HUGE: u64 = 64 << 30;
    let root = root();
    let dir = root.as_path().join("snap");
    save_vm(hv, &dir, &ram(4 * MIB), 1);
    // The state file now describes one 64 GiB region, and the memory file holds it, all zero
    // but one page: a sparse file written here in the documented format (a save would need
    // the 64 GiB in memory to checksum them).
    let mut id = SnapshotId::NONE;
    rewrite_state(&dir, |section, w| {
        if section.tag() == SectionTag::MEMORY_LAYOUT {
            let layout = vec![RegionLayout {
                guest_addr: 0,
                size: HUGE,
                flags: 0,
            }];
            w.write_section(section.tag(), 0, section.version(), &layout)
                .unwrap();
        } else {
            keep(section, w);
        }
        id = w.header().snapshot_id;
    });
    write_sparse_memory(&dir.join(snapshot::MEMORY_FILE), id, HUGE, 0x5a);
    for mode in [MemoryRestore::Eager, MemoryRestore::Lazy] {
        let restored = snapshot::restore(&dir, hv, mode).unwrap();
        let memory = restored.vm.memory();
        let first: u8 = memory.read_obj(GuestAddress(0x1000)).unwrap();
        let far: u8 = memory.read_obj(GuestAddress(HUGE - 1)).unwrap();
        assert_eq!((first, far), (0x5a, 0), "{mode:?}");
    }
}

/// A full memory file of one region of `size` bytes at guest address 0, all zero (a hole)
/// but the byte at 0x1000.
fn write_sparse_memory(path: &Path, id: SnapshotId, size: u64, byte: u8) {
    const CHUNK: u64 = 2 << 20;
    let chunks = size / CHUNK;
    let table_len = MEMORY_HEADER_LEN as u64 + REGION_ENTRY_LEN as u64 + chunks * 8;
    let header_len = table_len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let file_len = header_len + size;
    let mut area = vec![0u8; header_len as usize];
    let put = |area: &mut Vec<u8>, off: usize, bytes: &[u8]| {
        area[off..off + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut area, 0, &MEMORY_MAGIC);
    put(&mut area, 8, &2u16.to_le_bytes());
    put(&mut area, 12, &1u16.to_le_bytes()); // full
    put(&mut area, 16, &(PAGE_SIZE as u32).to_le_bytes());
    put(&mut area, 20, &(CHUNK as u32).to_le_bytes());
    put(&mut area, 24, &1u32.to_le_bytes());
    put(&mut area, 32, &header_len.to_le_bytes());
    put(&mut area, 40, &file_len.to_le_bytes());
    put(&mut area, 56, &id.0);
    let mut off = MEMORY_HEADER_LEN;
    for v in [0, size, header_len, size] {
        put(&mut area, off, &v.to_le_bytes());
        off += 8;
    }
    let mut first_chunk = vec![0u8; CHUNK as usize];
    first_chunk[0x1000] = byte;
    let sums = [checksum(&first_chunk), checksum(&vec![0u8; CHUNK as usize])];
    for k in 0..chunks {
        put(&mut area, off, &sums[usize::from(k > 0)].to_le_bytes());
        off += 8;
    }
    let tables = checksum(&area[MEMORY_HEADER_LEN..]);
    put(&mut area, 48, &tables.to_le_bytes());
    let header = checksum(&area[..88]);
    put(&mut area, 88, &header.to_le_bytes());
    let file = File::create(path).unwrap();
    file.write_all_at(&area, 0).unwrap();
    file.write_all_at(&[byte], header_len + 0x1000).unwrap();
    file.set_len(file_len).unwrap();
}

crate::scenarios![
    a_diff_memory_file_in_a_full_snapshot_is_refused => crate::diff_snapshots,
    another_snapshots_memory_file_is_refused => crate::snapshots,
    a_layout_that_disagrees_with_the_memory_file_is_refused => crate::snapshots,
    vcpu_sections_are_checked => crate::snapshots,
    a_diff_on_the_wrong_base_is_refused => crate::diff_snapshots,
    special_files_are_refused_without_blocking => crate::snapshots,
    regions_keep_their_flags => crate::diff_snapshots,
    a_sparse_huge_region_restores_eagerly => crate::sparse_snapshots,
];
