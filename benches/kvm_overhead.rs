//! vmkit's KVM layer against bare kvm-ioctls, side by side in one run:
//!
//! - `pio_exit_round_trip`: one guest `out` to a port and back, as `run()` sees it;
//! - `vm_ready`: create a VM, map 4 MiB, create a vCPU, set its registers, run to the first exit.
//!
//! and, to see where [`vmkit::memory::HUGE_PAGES_MIN_SIZE`] should lie on this host,
//! `first_touch`: the host's first write to one page, and to every page, of 2 MiB of fresh
//! anonymous memory, with a transparent huge page behind it and with 4 KiB pages.
//!
//! ```text
//! cargo bench --bench kvm_overhead
//! cargo bench --bench kvm_overhead -- first_touch
//! ```
//!
//! Both sides run the same guest code in the same kind of VM (long mode, identical page
//! tables written by the same helper); only the layer that drives KVM differs.
//!
//! Timings on a shared, nested host drift by several percent between criterion's consecutive
//! measurements, more than the difference being measured. So before the criterion groups the
//! binary also runs both sides *interleaved* (alternating batches in the same loop) and prints
//! the median of the per-batch vmkit/kvm-ioctls ratios, which is the number to quote.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmkit::kvm::Kvm;
use vmkit::{HugePages, Hypervisor, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig};
use vmkit_boot::entry;
// The guest, on both sides: REPORT_LOOP writes `al` to REPORT_PORT and jumps back, forever.
use vmkit_guests::snippets::{REPORT_LOOP, REPORT_PORT};

const CODE_ADDR: u64 = 0x10_0000;
const RAM_SIZE: usize = 4 << 20;
/// The same address the vmkit layer uses for the TSS (Intel VMX needs one).
const TSS_ADDRESS: usize = 0xfffb_d000;

fn vmkit_vm(kvm: &Kvm) -> (Box<dyn Vm>, Box<dyn Vcpu>) {
    let vm = kvm.create_vm(&VmConfig::default()).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    memory
        .write_slice(REPORT_LOOP, GuestAddress(CODE_ADDR))
        .unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, CODE_ADDR).unwrap();
    (vm, vcpu)
}

fn bare_vm(kvm: &kvm_ioctls::Kvm) -> (VmFd, VcpuFd, GuestMemoryMmap) {
    let vm = kvm.create_vm().unwrap();
    vm.set_tss_address(TSS_ADDRESS).unwrap();
    let memory: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).unwrap();
    let host_addr = memory.find_region(GuestAddress(0)).unwrap().as_ptr() as u64;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: RAM_SIZE as u64,
        userspace_addr: host_addr,
    };
    // SAFETY: the mapping lives in `memory`, returned with (and dropped after) the VM fd.
    unsafe { vm.set_user_memory_region(region) }.unwrap();
    memory
        .write_slice(REPORT_LOOP, GuestAddress(CODE_ADDR))
        .unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let cr3 = entry::write_identity_page_tables(&memory).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.l = 1;
    sregs.cs.db = 0;
    sregs.cs.s = 1;
    sregs.cs.type_ = 0xb;
    sregs.cs.present = 1;
    sregs.cs.base = 0;
    sregs.cs.selector = entry::selector::CODE64;
    sregs.cr0 |= 0x8000_0001;
    sregs.cr3 = cr3;
    sregs.cr4 |= 0x20;
    sregs.efer |= 0x500;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    (vm, vcpu, memory)
}

fn pio_exit_round_trip(c: &mut Criterion) {
    let kvm = Kvm::new().unwrap();
    let mut group = c.benchmark_group("pio_exit_round_trip");

    let (_vm, mut vcpu) = vmkit_vm(&kvm);
    group.bench_function("vmkit", |b| {
        b.iter(|| match vcpu.run().unwrap() {
            VcpuExit::IoOut { port, data, .. } => black_box((port, data[0])),
            other => panic!("unexpected exit {other:?}"),
        })
    });

    let (_bare_vm, mut bare_vcpu, _memory) = bare_vm(kvm.as_kvm_ioctls());
    group.bench_function("kvm-ioctls", |b| {
        b.iter(|| match bare_vcpu.run().unwrap() {
            KvmExit::IoOut(port, data) => black_box((port, data[0])),
            other => panic!("unexpected exit {other:?}"),
        })
    });
    group.finish();
}

fn vm_ready(c: &mut Criterion) {
    let kvm = Kvm::new().unwrap();
    let mut group = c.benchmark_group("vm_ready");
    group.sample_size(30);
    // Tearing a VM down is not part of getting it ready, but it happens (untimed) before the
    // next one is built, as in a VMM: many live VMs at once would slow creation down.
    group.bench_function("vmkit", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let start = Instant::now();
                    let (vm, mut vcpu) = vmkit_vm(&kvm);
                    assert!(matches!(
                        vcpu.run().unwrap(),
                        VcpuExit::IoOut {
                            port: REPORT_PORT,
                            ..
                        }
                    ));
                    let ready = start.elapsed();
                    drop((vcpu, vm));
                    ready
                })
                .sum()
        })
    });
    group.bench_function("kvm-ioctls", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let start = Instant::now();
                    let (vm, mut vcpu, memory) = bare_vm(kvm.as_kvm_ioctls());
                    assert!(matches!(
                        vcpu.run().unwrap(),
                        KvmExit::IoOut(REPORT_PORT, _)
                    ));
                    let ready = start.elapsed();
                    drop((vcpu, vm, memory));
                    ready
                })
                .sum()
        })
    });
    group.finish();
}

/// The first write to `stride`-spaced bytes of 2 MiB of fresh anonymous memory, mapped with
/// or without transparent huge pages (mapping and unmapping it untimed).
fn first_touch(c: &mut Criterion) {
    const SIZE: usize = 2 << 20;
    let mut group = c.benchmark_group("first_touch");
    group.sample_size(30);
    for (pages, huge) in [("huge", HugePages::Always), ("4k", HugePages::Never)] {
        for (what, stride) in [("one_page", SIZE), ("every_page", 4096)] {
            group.bench_function(format!("{pages}/{what}"), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let region = MemoryRegion::anonymous_with(
                                GuestAddress(0),
                                SIZE,
                                MemoryFlags::empty(),
                                huge,
                            )
                            .unwrap();
                            let host = region.mapping().as_ptr();
                            let start = Instant::now();
                            for offset in (0..SIZE).step_by(stride) {
                                // SAFETY: inside the region's live mapping, which nothing
                                // else uses.
                                unsafe { host.wrapping_add(offset).write_volatile(1) };
                            }
                            start.elapsed()
                        })
                        .sum()
                })
            });
        }
    }
    group.finish();
}

/// Median of per-round ratios of `a` to `b`, each round timing a batch of `a` then of `b`.
fn interleaved(
    rounds: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> (f64, Duration, Duration) {
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (da, db) = (a(), b());
        // The first rounds warm caches and page in memory.
        if round >= rounds / 10 {
            ratios.push(da.as_secs_f64() / db.as_secs_f64());
            ta.push(da);
            tb.push(db);
        }
    }
    ratios.sort_by(f64::total_cmp);
    ta.sort();
    tb.sort();
    (ratios[ratios.len() / 2], ta[ta.len() / 2], tb[tb.len() / 2])
}

fn interleaved_report() {
    const EXITS: u32 = 5000;
    let kvm = Kvm::new().unwrap();
    let (_vm, mut vcpu) = vmkit_vm(&kvm);
    let (_bare_vm, mut bare_vcpu, _memory) = bare_vm(kvm.as_kvm_ioctls());
    let (ratio, ours, bare) = interleaved(
        60,
        || {
            let start = Instant::now();
            for _ in 0..EXITS {
                assert!(matches!(
                    vcpu.run().unwrap(),
                    VcpuExit::IoOut {
                        port: REPORT_PORT,
                        ..
                    }
                ));
            }
            start.elapsed() / EXITS
        },
        || {
            let start = Instant::now();
            for _ in 0..EXITS {
                assert!(matches!(
                    bare_vcpu.run().unwrap(),
                    KvmExit::IoOut(REPORT_PORT, _)
                ));
            }
            start.elapsed() / EXITS
        },
    );
    println!(
        "interleaved pio_exit_round_trip: vmkit {ours:?}, kvm-ioctls {bare:?} (medians), \
         vmkit/kvm-ioctls = {ratio:.4} (median of 54 per-batch ratios)"
    );
    let (ratio, ours, bare) = interleaved(
        200,
        || {
            let start = Instant::now();
            let (_vm, mut vcpu) = vmkit_vm(&kvm);
            assert!(matches!(
                vcpu.run().unwrap(),
                VcpuExit::IoOut {
                    port: REPORT_PORT,
                    ..
                }
            ));
            start.elapsed()
        },
        || {
            let start = Instant::now();
            let (_vm, mut vcpu, _memory) = bare_vm(kvm.as_kvm_ioctls());
            assert!(matches!(
                vcpu.run().unwrap(),
                KvmExit::IoOut(REPORT_PORT, _)
            ));
            start.elapsed()
        },
    );
    println!(
        "interleaved vm_ready: vmkit {ours:?}, kvm-ioctls {bare:?} (medians), \
         vmkit/kvm-ioctls = {ratio:.4} (median of 180 per-VM ratios)"
    );
}

criterion_group!(benches, pio_exit_round_trip, vm_ready, first_touch);

fn main() {
    // `cargo test` runs benchmarks once as a smoke test; the interleaved report is for
    // `cargo bench` only.
    if std::env::args().any(|arg| arg == "--bench") {
        interleaved_report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
