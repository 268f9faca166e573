//! Cost of harvesting dirty pages from a 1 GiB region with 1 %, 25 % and 0.01 % (26 pages) of
//! its pages written, bitmap mode against dirty-ring mode in the same run. Only
//! `harvest_dirty_log` is timed; the guest (a real one: `vmkit_guests::snippets::DIRTY_WRITER`) writes the pages before
//! each harvest.
//!
//! ```text
//! cargo bench --bench dirty_harvest
//! cargo bench --bench dirty_harvest -- '/1%'     # one size, both modes
//! ```
//!
//! Only `harvest_dirty_log` is timed, so criterion's measurement time counts harvests, not the
//! guest passes between them.
//!
//! Harvest times on a shared, nested host have long tails (the reset ioctl waits on KVM's MMU
//! lock), which swamp criterion's estimates. So before the criterion groups the binary runs
//! both modes *interleaved* (see `interleaved_report`) and prints medians and the median
//! ring/bitmap ratio, which are the numbers to quote:
//!
//! ```text
//! VMKIT_DIRTY_SIZES=1% VMKIT_DIRTY_ROUNDS=200 VMKIT_DIRTY_CRITERION=0 \
//!     cargo bench --bench dirty_harvest
//! ```

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use vm_memory::{Bytes, GuestAddress};
use vmkit::{MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig};
use vmkit_boot::entry;
// The guest: DIRTY_WRITER writes a byte to each page listed at DIRTY_TABLE (a count, then
// addresses; up to 25 % of 1 GiB here), then reports to BYTE_REPORT_PORT and starts again.
use vmkit_guests::snippets::{BYTE_REPORT_PORT, DIRTY_TABLE, DIRTY_WRITER};

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
                port: BYTE_REPORT_PORT,
                ..
            } => return early,
            VcpuExit::DirtyRingFull => early += vm.harvest_dirty_log().unwrap().count(),
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

/// A VM whose guest has faulted in its `count` pages once and been harvested, so that each
/// later harvest sees exactly one pass.
fn ready(ring: bool, count: u64) -> (Box<dyn Vm>, Box<dyn Vcpu>) {
    let (vm, mut vcpu) = vm(ring);
    plan(vm.as_ref(), count);
    guest_pass(vm.as_ref(), vcpu.as_mut());
    vm.harvest_dirty_log().unwrap();
    (vm, vcpu)
}

/// One guest pass (not timed), then the harvest (timed), checking that all `count` pages were
/// reported.
fn timed_harvest(vm: &dyn Vm, vcpu: &mut dyn Vcpu, count: u64) -> Duration {
    let early = guest_pass(vm, vcpu);
    let start = Instant::now();
    let log = vm.harvest_dirty_log().unwrap();
    let elapsed = start.elapsed();
    let seen = early + log.count();
    assert!(
        seen as u64 == count || log.overflowed,
        "{:?}: {seen} of {count} pages reported",
        vm.dirty_log_mode()
    );
    elapsed
}

/// The sizes: label, and dirty pages in basis points (1/100 of a percent) of the region.
const SIZES: [(&str, u64); 3] = [("1%", 100), ("25%", 2500), ("0.01%", 1)];

fn harvest(c: &mut Criterion) {
    let mut group = c.benchmark_group("dirty_harvest_1GiB");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    for (label, bp) in SIZES {
        let count = PAGES * bp / 10_000;
        if bp == 1 {
            // A harvest of 26 pages takes a few µs: the default 5 s of harvests would be a
            // million guest passes.
            group.measurement_time(Duration::from_millis(50));
        }
        for (mode, ring) in [("bitmap", false), ("ring", true)] {
            // Built on the first call, so a filtered-out case costs nothing (a 25 % pass is
            // slow under an emulated hypervisor such as ci/svm's L1).
            let mut state: Option<(Box<dyn Vm>, Box<dyn Vcpu>)> = None;
            group.bench_with_input(BenchmarkId::new(mode, label), &count, |b, &count| {
                let (vm, vcpu) = state.get_or_insert_with(|| ready(ring, count));
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| timed_harvest(vm.as_ref(), vcpu.as_mut(), count))
                        .sum()
                })
            });
        }
    }
    group.finish();
}

/// Ring and bitmap harvests alternating in one loop, one VM each, so that the host's drift
/// hits both alike; prints the medians and the median of the per-round ring/bitmap ratios.
/// `VMKIT_DIRTY_SIZES` (labels, comma-separated; default all) and `VMKIT_DIRTY_ROUNDS`
/// (default 60; 25 % runs a fifth of them) choose what runs.
fn interleaved_report() {
    let sizes = std::env::var("VMKIT_DIRTY_SIZES").unwrap_or_else(|_| "1%,25%,0.01%".into());
    let rounds: usize = std::env::var("VMKIT_DIRTY_ROUNDS")
        .map(|r| r.parse().expect("VMKIT_DIRTY_ROUNDS: a number"))
        .unwrap_or(60);
    for (label, bp) in SIZES {
        if !sizes.split(',').any(|s| s == label) {
            continue;
        }
        let count = PAGES * bp / 10_000;
        let rounds = if bp >= 2500 { rounds / 5 } else { rounds }.max(3);
        let (ring_vm, mut ring_vcpu) = ready(true, count);
        let (bitmap_vm, mut bitmap_vcpu) = ready(false, count);
        let (mut ring, mut bitmap, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let r = timed_harvest(ring_vm.as_ref(), ring_vcpu.as_mut(), count);
            let b = timed_harvest(bitmap_vm.as_ref(), bitmap_vcpu.as_mut(), count);
            ratios.push(r.as_secs_f64() / b.as_secs_f64());
            ring.push(r);
            bitmap.push(b);
        }
        ring.sort();
        bitmap.sort();
        ratios.sort_by(f64::total_cmp);
        println!(
            "interleaved dirty_harvest_1GiB/{label} ({count} pages): ring {:?}, bitmap {:?} \
             (medians), ring/bitmap = {:.3} (median of {rounds} per-round ratios)",
            ring[rounds / 2],
            bitmap[rounds / 2],
            ratios[rounds / 2]
        );
    }
}

criterion_group!(benches, harvest);

fn main() {
    // `cargo test` runs benchmarks once as a smoke test; the interleaved report is for
    // `cargo bench` only. VMKIT_DIRTY_CRITERION=0 runs the report alone (ci/svm does).
    if std::env::args().any(|arg| arg == "--bench") {
        interleaved_report();
    }
    if std::env::var("VMKIT_DIRTY_CRITERION").as_deref() != Ok("0") {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
