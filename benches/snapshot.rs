//! Snapshot save and restore cost by guest memory size (64 MiB to 4 GiB), lazy restore
//! (copy-on-write mapping) against eager copy in the same run, and diff-snapshot save cost
//! against the number of dirty pages.
//!
//! ```text
//! cargo bench --bench snapshot
//! cargo bench --bench snapshot -- save_vs_plain    # full save against plain writes
//! cargo bench --bench snapshot -- diff_vs_plain    # diff save against plain writes
//! ```
//!
//! A quarter of each VM's pages hold data (the rest are zero and become holes in the memory
//! file). Snapshots go to a directory under /tmp; the 4 GiB case needs about 1 GiB of it.
//!
//! `save_vs_plain` and `diff_vs_plain` time vmkit's save (what criterion reports) and, right
//! after each one, the floor it is held to: the same bytes written with plain `pwrite`s into
//! a sparse file (a full save: each data page at its offset, the length set, holes for the
//! zero pages; a diff: the dirty pages back to back), then one `fsync`. They print both
//! medians and the median of the per-round ratios vmkit / plain. `diff_vs_plain` also times
//! the plain write made as durable as a snapshot, by hand: a snapshot is a new directory with
//! two files (memory and state), written under temporary names, synced together, renamed into
//! place, then the directory and its parent synced, so that a state file never names memory
//! that is not on disk and the whole snapshot survives a crash once the save returns. That is
//! three syncs where the plain write has one, and for a few pages the syncs are nearly all
//! the cost. Both sides write new files:
//! the last round's are removed untimed, each side's right before its own write (so neither
//! inherits the writeback of the other's removal), and in `save_vs_plain` the two sides take
//! turns going first. On a file system mounted with `-o discard`, that
//! removal issues a discard per extent of the sparse file, synchronously, and can take far
//! longer than the save itself (so does a save over an older snapshot of the same directory,
//! which replaces its memory file).

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::{OnceCell, RefCell};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use vm_memory::{Bytes, GuestAddress};
use vmkit::snapshot::{self, DiffTracker, MemoryRestore};
use vmkit::{Hypervisor, MemoryFlags, MemoryRegion, Vcpu, Vm, VmConfig};
use vmkit_boot::entry;

const SIZES_MIB: [usize; 4] = [64, 256, 1024, 4096];

struct Fixture {
    hv: Box<dyn Hypervisor>,
    config: VmConfig,
    vm: Box<dyn Vm>,
    vcpu: Box<dyn Vcpu>,
    msrs: Vec<u32>,
}

fn fixture(mib: usize, flags: MemoryFlags) -> Fixture {
    let hv = vmkit::open().unwrap();
    let config = VmConfig::default();
    let vm = hv.create_vm(&config).unwrap();
    let size = mib << 20;
    let ram = MemoryRegion::anonymous(GuestAddress(0), size, flags).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    // Data in one page of every four.
    let page = [0x5au8; 4096];
    for addr in (0..size as u64).step_by(4 * 4096) {
        memory.write_slice(&page, GuestAddress(addr)).unwrap();
    }
    let vcpu = vm.create_vcpu(0).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, 0x10_0000).unwrap();
    let msrs = snapshot::readable_msrs(vcpu.as_ref(), &hv.msr_index_list());
    Fixture {
        hv,
        config,
        vm,
        vcpu,
        msrs,
    }
}

impl Fixture {
    /// The vCPU's state, as a save captures it (part of the measured cost).
    fn vcpu_state(&self) -> snapshot::VcpuState {
        let features = snapshot::Features::for_vm(&self.config, self.hv.capabilities());
        snapshot::save_vcpu(self.vcpu.as_ref(), &self.msrs, features).unwrap()
    }

    fn save(&self, dir: &std::path::Path) -> Duration {
        let start = Instant::now();
        snapshot::save(
            dir,
            self.hv.as_ref(),
            &self.config,
            self.vm.as_ref(),
            &[self.vcpu_state()],
            |_| Ok(()),
        )
        .unwrap();
        start.elapsed()
    }
}

fn save_and_restore(c: &mut Criterion) {
    let root =
        vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-bench-snapshot-").unwrap();
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    for mib in SIZES_MIB {
        let dir = root.as_path().join(format!("{mib}"));
        // Built (and saved once, so that the restore benchmarks also run on their own) only
        // when a benchmark of this size runs: a filter skips the rest.
        let fixture = OnceCell::new();
        let saved = || {
            fixture.get_or_init(|| {
                let fixture = self::fixture(mib, MemoryFlags::empty());
                fixture.save(&dir);
                fixture
            })
        };
        group.bench_function(BenchmarkId::new("save", format!("{mib}MiB")), |b| {
            let fixture = saved();
            b.iter_custom(|iters| (0..iters).map(|_| fixture.save(&dir)).sum())
        });
        let hv = vmkit::open().unwrap();
        for (name, mode) in [
            ("restore_lazy", MemoryRestore::Lazy),
            ("restore_eager", MemoryRestore::Eager),
        ] {
            group.bench_function(BenchmarkId::new(name, format!("{mib}MiB")), |b| {
                saved();
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let start = Instant::now();
                            let restored = snapshot::restore(&dir, hv.as_ref(), mode).unwrap();
                            let took = start.elapsed();
                            drop(restored);
                            took
                        })
                        .sum()
                })
            });
        }
        drop(fixture);
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

fn diff_save(c: &mut Criterion) {
    let root = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-bench-diff-").unwrap();
    let fixture = fixture(64, MemoryFlags::LOG_DIRTY);
    let base = root.as_path().join("base");
    fixture.save(&base);
    let mut tracker = DiffTracker::start(fixture.vm.as_ref()).unwrap();
    let diff = root.as_path().join("diff");
    let memory = fixture.vm.memory();
    let mut group = c.benchmark_group("diff_save_64MiB");
    group.sample_size(10);
    for pages in [16u64, 256, 4096] {
        group.bench_with_input(BenchmarkId::from_parameter(pages), &pages, |b, &pages| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Dirty `pages` pages (through vm-memory, so the bitmap records them).
                    for i in 0..pages {
                        memory.write_obj(i, GuestAddress(i * 4096 * 3)).unwrap();
                    }
                    let start = Instant::now();
                    tracker
                        .save_diff(
                            &diff,
                            &base,
                            fixture.hv.as_ref(),
                            &fixture.config,
                            fixture.vm.as_ref(),
                            &[fixture.vcpu_state()],
                            |_| Ok(()),
                        )
                        .unwrap();
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

/// The plain-write floor: `pages` (guest page numbers) of `fixture`'s memory written with one
/// `pwrite` each at `offset(k, page)` of a fresh file at `path`, its length set to `len`,
/// then `fsync`. Returns the time taken. The last round's file is removed first, untimed, as
/// vmkit's side removes its last snapshot right before its save: each side's timed write then
/// follows its own removal, and neither inherits the other's.
fn plain_write(
    fixture: &Fixture,
    path: &Path,
    pages: &[u64],
    len: u64,
    offset: impl Fn(usize, u64) -> u64,
) -> Duration {
    let _ = std::fs::remove_file(path);
    let start = Instant::now();
    plain_write_file(fixture, path, pages, len, offset, true);
    start.elapsed()
}

/// The work [`plain_write`] times: the pages written to a fresh file, its length set, and
/// (if `sync`) the file synced. Returns the file.
fn plain_write_file(
    fixture: &Fixture,
    path: &Path,
    pages: &[u64],
    len: u64,
    offset: impl Fn(usize, u64) -> u64,
    sync: bool,
) -> File {
    let memory = fixture.vm.memory();
    let mut page = [0u8; 4096];
    let file = File::create(path).unwrap();
    for (k, &p) in pages.iter().enumerate() {
        // One page at a time through a small buffer, as a plain writer would: the copy is
        // within the cache and cheap next to the write.
        memory
            .read_slice(&mut page, GuestAddress(p * 4096))
            .unwrap();
        file.write_all_at(&page, offset(k, p)).unwrap();
    }
    file.set_len(len).unwrap();
    if sync {
        file.sync_all().unwrap();
    }
    file
}

/// [`plain_write`] made as durable as a snapshot (see the module documentation), by hand with
/// no vmkit code: a new directory `dir` with two files, the pages and a 4 KiB one standing for
/// the state file, each written under a temporary name; both synced at once (one on a thread
/// of its own), renamed into place, the directory synced, then its parent (for the new
/// directory's entry). Returns the time taken; the last round's directory is removed first,
/// untimed (see [`plain_write`]).
fn plain_write_durable(
    fixture: &Fixture,
    dir: &Path,
    pages: &[u64],
    len: u64,
    offset: impl Fn(usize, u64) -> u64,
) -> Duration {
    let _ = std::fs::remove_dir_all(dir);
    let start = Instant::now();
    std::fs::create_dir(dir).unwrap();
    let (data_tmp, state_tmp) = (dir.join(".data.tmp"), dir.join(".state.tmp"));
    let data = plain_write_file(fixture, &data_tmp, pages, len, offset, false);
    let state = File::create(&state_tmp).unwrap();
    state.write_all_at(&[0x5a; 4096], 0).unwrap();
    std::thread::scope(|scope| {
        let other = scope.spawn(|| state.sync_data().unwrap());
        data.sync_data().unwrap();
        other.join().unwrap();
    });
    std::fs::rename(&data_tmp, dir.join("data")).unwrap();
    std::fs::rename(&state_tmp, dir.join("state")).unwrap();
    File::open(dir).unwrap().sync_all().unwrap();
    File::open(dir.parent().unwrap())
        .unwrap()
        .sync_all()
        .unwrap();
    start.elapsed()
}

/// Per-round (vmkit, plain) times, reported as medians and the median ratio.
#[derive(Default)]
struct Pairs(RefCell<Vec<(Duration, Duration)>>);

impl Pairs {
    /// The number of rounds recorded.
    fn len(&self) -> usize {
        self.0.borrow().len()
    }

    fn push(&self, ours: Duration, plain: Duration) {
        self.0.borrow_mut().push((ours, plain));
    }

    fn report(&self, name: &str) {
        self.report_against(name, "plain");
    }

    /// Like [`Pairs::report`], naming the baseline `against`.
    fn report_against(&self, name: &str, against: &str) {
        let pairs = self.0.borrow();
        if pairs.is_empty() {
            return;
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ours = median(pairs.iter().map(|p| p.0.as_secs_f64()).collect());
        let plain = median(pairs.iter().map(|p| p.1.as_secs_f64()).collect());
        let mut ratios: Vec<f64> = pairs
            .iter()
            .map(|p| p.0.as_secs_f64() / p.1.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let quartile = |q: usize| ratios[(ratios.len() - 1) * q / 4];
        let ratio = median(ratios.clone());
        println!(
            "{name}: vmkit {:.3} ms, {against} {:.3} ms (medians), vmkit/{against} = {ratio:.3} \
             (median of {} interleaved rounds; quartiles {:.3}..{:.3})",
            ours * 1e3,
            plain * 1e3,
            pairs.len(),
            quartile(1),
            quartile(3)
        );
    }
}

/// Full save of 256 MiB and 1 GiB (a quarter of the pages data), each round followed by the
/// plain write of the same data pages at the same offsets.
fn save_vs_plain(c: &mut Criterion) {
    let root =
        vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-bench-save-plain-").unwrap();
    let mut group = c.benchmark_group("save_vs_plain");
    group.sample_size(10);
    // One round per sample: ten rounds in all, not criterion's 1 + 2 + ... + 10.
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    for mib in [256usize, 1024] {
        let id = BenchmarkId::from_parameter(format!("{mib}MiB"));
        // Built only when a filter lets this size run.
        let fixture = OnceCell::new();
        let dir = root.as_path().join(format!("{mib}"));
        let plain = root.as_path().join(format!("plain-{mib}"));
        let size = (mib as u64) << 20;
        let data: Vec<u64> = (0..size / 4096).step_by(4).collect();
        let pairs = Pairs::default();
        group.bench_function(id, |b| {
            let fixture = fixture.get_or_init(|| self::fixture(mib, MemoryFlags::empty()));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Into a fresh directory, as the plain write goes to a fresh file: freeing
                    // the last round's blocks is timed on neither side.
                    let ours = || {
                        let _ = std::fs::remove_dir_all(&dir);
                        fixture.save(&dir)
                    };
                    // The data after a header page, as in vmkit's file.
                    let floor =
                        || plain_write(fixture, &plain, &data, size + 4096, |_, p| 4096 + p * 4096);
                    // Each side goes first in every other round, so that neither always runs
                    // right after the other's writeback.
                    let (ours, floor) = if pairs.len() % 2 == 0 {
                        let ours = ours();
                        (ours, floor())
                    } else {
                        let floor = floor();
                        (ours(), floor)
                    };
                    pairs.push(ours, floor);
                    total += ours;
                }
                total
            })
        });
        pairs.report(&format!("save_vs_plain/{mib}MiB"));
        drop(fixture);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&plain);
    }
    group.finish();
}

/// Diff save of 16 dirty pages of 64 MiB and of 1 GiB (the cost should not grow with the
/// guest), and of 4096 of 64 MiB, each round followed by the plain write of the dirty pages.
fn diff_vs_plain(c: &mut Criterion) {
    let root =
        vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-bench-diff-plain-").unwrap();
    let mut group = c.benchmark_group("diff_vs_plain");
    group.sample_size(10);
    // One round per sample: ten rounds in all, not criterion's 1 + 2 + ... + 10.
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    for (mib, pages) in [(64usize, 16u64), (1024, 16), (64, 4096)] {
        let name = format!("{mib}MiB_{pages}pages");
        let base = root.as_path().join("base");
        let diff = root.as_path().join("diff");
        let plain = root.as_path().join("plain");
        let durable_dir = root.as_path().join("plain-durable");
        let dirty: Vec<u64> = (0..pages).map(|i| i * 3).collect();
        let pairs = Pairs::default();
        let durable_pairs = Pairs::default();
        group.bench_function(BenchmarkId::from_parameter(&name), |b| {
            // Built only when a filter lets this case run.
            let fixture = fixture(mib, MemoryFlags::LOG_DIRTY);
            fixture.save(&base);
            let mut tracker = DiffTracker::start(fixture.vm.as_ref()).unwrap();
            let memory = fixture.vm.memory();
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Dirty the pages (through vm-memory, so its bitmap records them).
                    for &p in &dirty {
                        memory.write_obj(p, GuestAddress(p * 4096)).unwrap();
                    }
                    let _ = std::fs::remove_dir_all(&diff);
                    let start = Instant::now();
                    tracker
                        .save_diff(
                            &diff,
                            &base,
                            fixture.hv.as_ref(),
                            &fixture.config,
                            fixture.vm.as_ref(),
                            &[fixture.vcpu_state()],
                            |_| Ok(()),
                        )
                        .unwrap();
                    let ours = start.elapsed();
                    let floor = plain_write(&fixture, &plain, &dirty, pages * 4096, |k, _| {
                        k as u64 * 4096
                    });
                    pairs.push(ours, floor);
                    let durable = plain_write_durable(
                        &fixture,
                        &durable_dir,
                        &dirty,
                        pages * 4096,
                        |k, _| k as u64 * 4096,
                    );
                    durable_pairs.push(ours, durable);
                    total += ours;
                }
                total
            })
        });
        pairs.report(&format!("diff_vs_plain/{name}"));
        durable_pairs.report_against(&format!("diff_vs_plain/{name}"), "plain-durable");
        let _ = std::fs::remove_dir_all(&base);
        let _ = std::fs::remove_dir_all(&diff);
        let _ = std::fs::remove_file(&plain);
        let _ = std::fs::remove_dir_all(&durable_dir);
    }
    group.finish();
}

criterion_group!(
    benches,
    save_and_restore,
    diff_save,
    save_vs_plain,
    diff_vs_plain
);
criterion_main!(benches);
