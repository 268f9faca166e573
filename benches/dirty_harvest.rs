//! Cost of harvesting dirty pages from a 1 GiB region with 1 % and 25 % of its pages written,
//! bitmap mode against dirty-ring mode in the same run. Only `harvest_dirty_log` is timed;
//! the guest (a real one: `vmkit_guests::snippets::DIRTY_WRITER`) writes the pages before
//! each harvest.
//!
//! ```text
//! cargo bench --bench dirty_harvest
//! cargo bench --bench dirty_harvest -- '1%'     # one size, both modes
//! ```
//!
//! Only `harvest_dirty_log` is timed, so criterion's measurement time counts harvests, not the
//! guest passes between them: `--measurement-time 0.001` gives the fewest iterations (what
//! ci/svm's `dirty_harvest_bench` uses under its emulated hypervisor).

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vm_memory::{Bytes, GuestAddress};
use vmkit::{MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig};
use vmkit_boot::entry;
// The guest: DIRTY_WRITER writes a byte to each page listed at DIRTY_TABLE (a count, then
// addresses; up to 25 % of 1 GiB here), then reports to REPORT_PORT and starts again.
use vmkit_guests::snippets::{DIRTY_TABLE, DIRTY_WRITER, REPORT_PORT};

const CODE: u64 = 0x10_0000;
const TRACKED: u64 = 0x4000_0000;
const TRACKED_SIZE: usize = 1 << 30;
const PAGES: u64 = (TRACKED_SIZE / 4096) as u64;
const RAM: usize = 4 << 20;
/// Entries per vCPU ring: the most KVM offers here, enough for 25 % of 1 GiB.
const RING: u32 = 65536;

fn vm(ring: bool) -> (Box<dyn Vm>, Box<dyn Vcpu>) {
    let hv = vmkit::open().unwrap();
    let config = VmConfig::default().dirty_ring(ring.then_some(RING));
    let vm = hv.create_vm(&config).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let tracked =
        MemoryRegion::anonymous(GuestAddress(TRACKED), TRACKED_SIZE, MemoryFlags::LOG_DIRTY)
            .unwrap();
    vm.add_memory_region(tracked).unwrap();
    let memory = vm.memory();
    memory
        .write_slice(DIRTY_WRITER, GuestAddress(CODE))
        .unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, CODE).unwrap();
    (vm, vcpu)
}

/// Spreads `count` pages evenly over the region and lists them for the guest.
fn plan(vm: &dyn Vm, count: u64) {
    let memory = vm.memory();
    let step = PAGES / count;
    let mut table = Vec::with_capacity(8 * (count as usize + 1));
    table.extend_from_slice(&count.to_le_bytes());
    for i in 0..count {
        table.extend_from_slice(&(TRACKED + i * step * 4096).to_le_bytes());
    }
    memory
        .write_slice(&table, GuestAddress(DIRTY_TABLE))
        .unwrap();
}

/// Lets the guest write its pages once; a ring that fills up is harvested on the way (not
/// timed). Returns the pages harvested early.
fn guest_pass(vm: &dyn Vm, vcpu: &mut dyn Vcpu) -> usize {
    let mut early = 0;
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut {
                port: REPORT_PORT, ..
            } => return early,
            VcpuExit::DirtyRingFull => early += vm.harvest_dirty_log().unwrap().count(),
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn harvest(c: &mut Criterion) {
    let mut group = c.benchmark_group("dirty_harvest_1GiB");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    for percent in [1u64, 25] {
        let count = PAGES * percent / 100;
        for (mode, ring) in [("bitmap", false), ("ring", true)] {
            // Built on the first call, so a filtered-out case costs nothing (a 25 % pass is
            // slow under an emulated hypervisor such as ci/svm's L1).
            let mut state: Option<(Box<dyn Vm>, Box<dyn Vcpu>)> = None;
            group.bench_with_input(
                BenchmarkId::new(mode, format!("{percent}%")),
                &count,
                |b, &count| {
                    let (vm, vcpu) = state.get_or_insert_with(|| {
                        let (vm, mut vcpu) = vm(ring);
                        plan(vm.as_ref(), count);
                        // The first pass faults the pages in; harvest it so each timed
                        // harvest sees one pass.
                        guest_pass(vm.as_ref(), vcpu.as_mut());
                        vm.harvest_dirty_log().unwrap();
                        (vm, vcpu)
                    });
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let early = guest_pass(vm.as_ref(), vcpu.as_mut());
                            let start = Instant::now();
                            let log = vm.harvest_dirty_log().unwrap();
                            total += start.elapsed();
                            let seen = early + log.count();
                            assert!(
                                seen as u64 == count || log.overflowed,
                                "{mode}: {seen} of {count} pages reported"
                            );
                        }
                        total
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, harvest);
criterion_main!(benches);
