//! Cost of harvesting dirty pages from a 1 GiB region with 1 % and 25 % of its pages written,
//! bitmap mode against dirty-ring mode in the same run. Only `harvest_dirty_log` is timed;
//! the guest (a real one: `vmkit_guests::snippets::DIRTY_WRITER`) writes the pages before
//! each harvest.
//!
//! ```text
//! cargo bench --bench dirty_harvest
//! cargo bench --bench dirty_harvest -- interleaved   # only the interleaved ring/bitmap ratio
//! ```
//!
//! `interleaved` runs a bitmap VM and a ring VM side by side, harvesting each after its guest
//! pass in the same loop, and prints both medians and the median of the per-round ratios
//! ring / bitmap at 1 % and 25 %: on a busy machine that ratio is steadier than the two
//! criterion figures taken minutes apart.

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
            group.bench_with_input(
                BenchmarkId::new(mode, format!("{percent}%")),
                &count,
                |b, &count| {
                    // Built here, so that a filter that skips this case skips the VM too.
                    let (vm, mut vcpu) = vm(ring);
                    plan(vm.as_ref(), count);
                    // The first pass faults the pages in; harvest it so that each timed
                    // harvest sees one pass.
                    guest_pass(vm.as_ref(), vcpu.as_mut());
                    vm.harvest_dirty_log().unwrap();
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

/// One timed harvest after a guest pass; checks that every page written was reported.
fn timed_harvest(vm: &dyn Vm, vcpu: &mut dyn Vcpu, count: u64) -> Duration {
    let early = guest_pass(vm, vcpu);
    let start = Instant::now();
    let log = vm.harvest_dirty_log().unwrap();
    let took = start.elapsed();
    let seen = early + log.count();
    assert!(
        seen as u64 == count || log.overflowed,
        "{seen} of {count} pages reported"
    );
    took
}

fn interleaved(c: &mut Criterion) {
    let mut group = c.benchmark_group("dirty_harvest_1GiB_interleaved");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    for percent in [1u64, 25] {
        let count = PAGES * percent / 100;
        let pairs = std::cell::RefCell::new(Vec::new());
        // Timed: the ring harvest; each one is paired with a bitmap harvest in the same round.
        group.bench_function(
            BenchmarkId::new("ring_vs_bitmap", format!("{percent}%")),
            |b| {
                let vms = [false, true].map(|ring| {
                    let (vm, mut vcpu) = vm(ring);
                    plan(vm.as_ref(), count);
                    guest_pass(vm.as_ref(), vcpu.as_mut());
                    vm.harvest_dirty_log().unwrap();
                    (vm, vcpu)
                });
                let [(bitmap_vm, mut bitmap_vcpu), (ring_vm, mut ring_vcpu)] = vms;
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let bitmap = timed_harvest(bitmap_vm.as_ref(), bitmap_vcpu.as_mut(), count);
                        let ring = timed_harvest(ring_vm.as_ref(), ring_vcpu.as_mut(), count);
                        pairs.borrow_mut().push((ring, bitmap));
                        total += ring;
                    }
                    total
                })
            },
        );
        let pairs = pairs.into_inner();
        if pairs.is_empty() {
            continue;
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ring = median(pairs.iter().map(|p| p.0.as_secs_f64()).collect());
        let bitmap = median(pairs.iter().map(|p| p.1.as_secs_f64()).collect());
        let ratio = median(
            pairs
                .iter()
                .map(|p| p.0.as_secs_f64() / p.1.as_secs_f64())
                .collect(),
        );
        println!(
            "interleaved {percent}%: ring {:.1} µs, bitmap {:.1} µs (medians), ring/bitmap = \
             {ratio:.3} (median of {} rounds)",
            ring * 1e6,
            bitmap * 1e6,
            pairs.len()
        );
    }
    group.finish();
}

criterion_group!(benches, harvest, interleaved);
criterion_main!(benches);
