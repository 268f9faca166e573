//! A pool's handout against creating the same VM from scratch, side by side in one run:
//!
//! - `pool/take`: [`VmPool::take`] from a stocked pool (the VM is given back, untimed, after
//!   each take, as a sandbox service would);
//! - `pool/scratch`: the template's VM built directly: create the VM, map 4 MiB, load the
//!   guest, create the vCPU, set its CPUID and long-mode registers;
//! - `pool/give_back`: resetting a used VM for the next take (memory, vCPU and VM state).
//!
//! ```text
//! cargo bench --bench pool
//! ```
//!
//! Before the criterion groups the binary times `take` and a scratch build *interleaved*
//! (alternating in one loop) and prints their medians and the median of per-round ratios,
//! which is the number to quote on a busy host.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use vm_memory::{Bytes, GuestAddress};
use vmkit::kvm::Kvm;
use vmkit::pool::{Returned, VmPool, VmTemplate};
use vmkit::{Hypervisor, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig};
use vmkit_boot::entry;
use vmkit_guests::snippets::{REPORT_LOOP, REPORT_PORT};

const CODE_ADDR: u64 = 0x10_0000;
const RAM_SIZE: usize = 4 << 20;
/// VMs the pool keeps ready.
const TARGET: usize = 4;

fn template(kvm: &Kvm) -> VmTemplate {
    VmTemplate::new(VmConfig::default())
        .memory(GuestAddress(0), RAM_SIZE, MemoryFlags::empty())
        .load(GuestAddress(CODE_ADDR), REPORT_LOOP.to_vec())
        .cpuid(kvm.supported_cpuid())
        .setup(|vm, vcpus| {
            entry::configure_long_mode(vcpus[0].as_ref(), &vm.memory(), CODE_ADDR)?;
            Ok(())
        })
}

/// The template's VM, built without a pool.
fn scratch(kvm: &Kvm) -> (Box<dyn Vm>, Box<dyn Vcpu>) {
    let vm = kvm.create_vm(&VmConfig::default()).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    memory
        .write_slice(REPORT_LOOP, GuestAddress(CODE_ADDR))
        .unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&kvm.supported_cpuid()).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, CODE_ADDR).unwrap();
    (vm, vcpu)
}

fn pool() -> (Arc<Kvm>, VmPool) {
    let kvm = Arc::new(Kvm::new().unwrap());
    let pool = VmPool::new(kvm.clone(), template(&kvm), TARGET).unwrap();
    // Let the refill thread stock it before anything is timed.
    while pool.ready() < TARGET {
        std::thread::sleep(Duration::from_millis(10));
    }
    (kvm, pool)
}

/// Runs a taken VM to its first exit, as a sandbox would, so that give_back has a used VM to
/// reset.
fn use_it(vcpu: &mut dyn Vcpu) {
    assert!(matches!(
        vcpu.run().unwrap(),
        VcpuExit::IoOut {
            port: REPORT_PORT,
            ..
        }
    ));
}

fn give_back(pool: &VmPool, vm: vmkit::pool::PooledVm) {
    assert!(matches!(pool.give_back(vm), Returned::Reset));
}

fn benches_pool(c: &mut Criterion) {
    let (kvm, pool) = pool();
    let mut group = c.benchmark_group("pool");
    group.sample_size(30);
    group.bench_function("take", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let start = Instant::now();
                    let vm = pool.take().unwrap();
                    let took = start.elapsed();
                    give_back(&pool, vm);
                    took
                })
                .sum()
        })
    });
    group.bench_function("scratch", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let start = Instant::now();
                    let built = scratch(&kvm);
                    let took = start.elapsed();
                    drop(built);
                    took
                })
                .sum()
        })
    });
    group.bench_function("give_back", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let mut vm = pool.take().unwrap();
                    use_it(vm.vcpus[0].as_mut());
                    let start = Instant::now();
                    give_back(&pool, vm);
                    start.elapsed()
                })
                .sum()
        })
    });
    group.finish();
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn interleaved_report() {
    const ROUNDS: usize = 300;
    let (kvm, pool) = pool();
    let (mut takes, mut builds, mut resets, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let start = Instant::now();
        let mut vm = pool.take().unwrap();
        let take = start.elapsed();
        use_it(vm.vcpus[0].as_mut());
        let start = Instant::now();
        give_back(&pool, vm);
        let reset = start.elapsed();

        let start = Instant::now();
        let built = scratch(&kvm);
        let build = start.elapsed();
        drop(built);
        // The first rounds warm caches and page in memory.
        if round >= ROUNDS / 10 {
            ratios.push(take.as_secs_f64() / build.as_secs_f64());
            takes.push(take);
            builds.push(build);
            resets.push(reset);
        }
    }
    ratios.sort_by(f64::total_cmp);
    let counted = ratios.len();
    println!(
        "interleaved pool: take {:?}, scratch {:?} (medians), take/scratch = {:.4} (median of \
         {counted} per-round ratios); give_back (reset) {:?}",
        median(takes),
        median(builds),
        ratios[counted / 2],
        median(resets),
    );
}

criterion_group!(benches, benches_pool);

fn main() {
    // `cargo test` runs benchmarks once as a smoke test; the interleaved report is for
    // `cargo bench` only.
    if std::env::args().any(|arg| arg == "--bench") {
        interleaved_report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
