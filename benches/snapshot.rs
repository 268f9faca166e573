//! Snapshot save and restore cost by guest memory size (64 MiB to 4 GiB), lazy restore
//! (copy-on-write mapping) against eager copy in the same run, and diff-snapshot save cost
//! against the number of dirty pages.
//!
//! ```text
//! cargo bench --bench snapshot
//! ```
//!
//! A quarter of each VM's pages hold data (the rest are zero and become holes in the memory
//! file). Snapshots go to a directory under /tmp; the 4 GiB case needs about 1 GiB of it.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
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
        let fixture = fixture(mib, MemoryFlags::empty());
        let dir = root.as_path().join(format!("{mib}"));
        // Saved once up front, so that the restore benchmarks also run on their own (with a
        // filter such as `restore_lazy`).
        fixture.save(&dir);
        group.bench_function(BenchmarkId::new("save", format!("{mib}MiB")), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| fixture.save(&dir)).sum())
        });
        let hv = vmkit::open().unwrap();
        for (name, mode) in [
            ("restore_lazy", MemoryRestore::Lazy),
            ("restore_eager", MemoryRestore::Eager),
        ] {
            group.bench_function(BenchmarkId::new(name, format!("{mib}MiB")), |b| {
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

criterion_group!(benches, save_and_restore, diff_save);
criterion_main!(benches);
