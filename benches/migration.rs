//! Live migration's stream against the raw socket: a VM with 64 MiB of guest memory (a
//! quarter of its pages zero, the rest pseudo-random) migrates in-process over a Unix socket
//! pair (`vmkit::migration::migrate` on one thread, `receive` on another, the guest's one vCPU
//! halted), against writing the same number of bytes raw to a socket pair whose other end
//! reads them. Only the transfer is timed (the VMs are built before the clock starts).
//!
//! ```text
//! cargo bench --bench migration                           # interleaved report, then criterion
//! VMKIT_MIGRATION_MIB=128 VMKIT_MIGRATION_ROUNDS=9 VMKIT_MIGRATION_CRITERION=0 \
//!     cargo bench --bench migration                       # the report alone
//! cargo bench --bench migration -- raw                    # one criterion benchmark
//! ```
//!
//! The report alternates the two in one loop, so that the busy host's drift hits both alike,
//! and prints their medians, MB/s and the median of the per-round vmkit/raw ratios.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use vm_memory::{Bytes, GuestAddress};
use vmkit::migration::checksum::Implementation;
use vmkit::migration::{self, IncomingOptions, MigrationOptions, Source};
use vmkit::runner::{self, ExitAction, VmRunner};
use vmkit::{Hypervisor, MemoryFlags, MemoryRegion, Vm, VmConfig};
use vmkit_boot::entry;

const CODE: u64 = 0x1000;
/// hlt; jmp back to the hlt (the in-kernel irqchip keeps a halted vCPU in the kernel).
const HALT_LOOP: [u8; 3] = [0xf4, 0xeb, 0xfd];

fn mib() -> usize {
    std::env::var("VMKIT_MIGRATION_MIB")
        .map(|m| m.parse().expect("VMKIT_MIGRATION_MIB: a number"))
        .unwrap_or(64)
}

/// A running source: its VM (memory filled) and its halted vCPU on a runner.
struct Running {
    hv: Box<dyn Hypervisor>,
    config: VmConfig,
    vm: Box<dyn Vm>,
    runner: VmRunner,
}

fn source(mib: usize) -> Running {
    let hv = vmkit::open().expect("this benchmark needs /dev/kvm");
    let config = VmConfig::default().irqchip(true);
    let vm = hv.create_vm(&config).unwrap();
    let region =
        MemoryRegion::anonymous(GuestAddress(0), mib << 20, MemoryFlags::LOG_DIRTY).unwrap();
    vm.add_memory_region(region).unwrap();
    let memory = vm.memory();
    // Every fourth page stays zero; the others get an xorshift stream.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut page = vec![0u8; 4096];
    for n in 0..(mib << 20) / 4096 {
        if n % 4 == 3 {
            continue;
        }
        for word in page.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        memory
            .write_slice(&page, GuestAddress(n as u64 * 4096))
            .unwrap();
    }
    memory.write_slice(&HALT_LOOP, GuestAddress(CODE)).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, CODE).unwrap();
    let runner = VmRunner::start(
        vec![vcpu],
        runner::from_fn(|_, exit| ExitAction::unhandled(exit)),
    )
    .unwrap();
    Running {
        hv,
        config,
        vm,
        runner,
    }
}

/// One migration of a fresh source; returns its time, the bytes it sent, and when round 0
/// ended with how many bytes; prints the downtime's parts with `VMKIT_MIGRATION_PARTS=1`.
fn migrate_once(mib: usize) -> (Duration, u64, (Duration, u64)) {
    let running = source(mib);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let destination = std::thread::spawn(move || {
        let hv = vmkit::open().unwrap();
        let (incoming, ()) =
            migration::receive(theirs, hv.as_ref(), &IncomingOptions::default(), |_| Ok(()))
                .unwrap();
        drop(incoming);
    });
    let source = Source {
        hypervisor: running.hv.as_ref(),
        config: &running.config,
        vm: running.vm.as_ref(),
        runner: &running.runner,
        msrs: &[],
        marked: None,
    };
    let started = Instant::now();
    let mut round0 = None;
    let summary = migration::migrate(
        ours,
        &source,
        &MigrationOptions::default(),
        |_| Ok(()),
        |p| {
            round0.get_or_insert((started.elapsed(), p.bytes_sent));
        },
    )
    .unwrap();
    let took = started.elapsed();
    if std::env::var_os("VMKIT_MIGRATION_PARTS").is_some() {
        println!(
            "migration: {took:?}, downtime {:?} (pausing {:?} before it; capture {:?}, final \
             copy {:?}, confirmation {:?})",
            summary.downtime,
            summary.pausing,
            summary.capture,
            summary.final_copy,
            summary.confirmation
        );
    }
    destination.join().unwrap();
    running.runner.stop_all();
    running.runner.join();
    (took, summary.bytes_sent, round0.unwrap_or_default())
}

/// Writes `bytes` raw to a socket pair in 1 MiB writes while another thread reads them.
fn raw_once(bytes: u64) -> Duration {
    let (mut ours, mut theirs) = UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < bytes {
            let n = theirs.read(&mut buf).unwrap();
            assert!(n > 0, "the raw stream ended early");
            got += n as u64;
        }
    });
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        ours.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    reader.join().unwrap();
    started.elapsed()
}

/// Each checksum implementation's speed on 1 MiB, and which one the stream uses.
fn checksum_report() {
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let rate = |imp: Implementation| {
        let best = (0..20)
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(imp.checksum(std::hint::black_box(&data)));
                started.elapsed()
            })
            .min()
            .unwrap();
        data.len() as f64 / best.as_secs_f64() / 1e6
    };
    println!(
        "checksum: clmul {:.0} MB/s, table {:.0} MB/s (best of 20 on 1 MiB); the stream uses {:?}",
        rate(Implementation::Clmul),
        rate(Implementation::Table),
        Implementation::fastest()
    );
}

/// vmkit and raw alternating in one loop; prints medians, MB/s and the median ratio.
fn interleaved_report() {
    checksum_report();
    let mib = mib();
    let rounds: usize = std::env::var("VMKIT_MIGRATION_ROUNDS")
        .map(|r| r.parse().expect("VMKIT_MIGRATION_ROUNDS: a number"))
        .unwrap_or(7)
        .max(1);
    let (mut ours, mut raw, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut bytes, mut first) = (0, Vec::new());
    for _ in 0..rounds {
        let (t, b, round0) = migrate_once(mib);
        bytes = b;
        first.push(round0);
        let r = raw_once(b);
        ratios.push(t.as_secs_f64() / r.as_secs_f64());
        ours.push(t);
        raw.push(r);
    }
    ours.sort();
    raw.sort();
    ratios.sort_by(f64::total_cmp);
    first.sort();
    let (t, r) = (ours[rounds / 2], raw[rounds / 2]);
    let (t0, b0) = first[rounds / 2];
    let rate = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    println!(
        "interleaved migration_{mib}MiB ({bytes} bytes on the stream): vmkit {t:?} ({:.0} MB/s), \
         raw socket {r:?} ({:.0} MB/s) (medians), vmkit/raw = {:.3} (median of {rounds} \
         per-round ratios); round 0 (handshake and first pass) {t0:?} for {b0} bytes ({:.0} MB/s)",
        rate(t),
        rate(r),
        ratios[rounds / 2],
        b0 as f64 / t0.as_secs_f64() / 1e6
    );
}

fn bench(c: &mut Criterion) {
    let mib = mib();
    let mut group = c.benchmark_group(format!("migration_{mib}MiB"));
    group.sample_size(10);
    let bytes = migrate_once(mib).1;
    group.bench_function("vmkit", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| migrate_once(mib).0).sum())
    });
    group.bench_function("raw", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| raw_once(bytes)).sum())
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    // `cargo test` runs benchmarks once as a smoke test; the interleaved report is for
    // `cargo bench` only. VMKIT_MIGRATION_CRITERION=0 runs the report alone.
    if std::env::args().any(|arg| arg == "--bench") {
        interleaved_report();
    }
    if std::env::var("VMKIT_MIGRATION_CRITERION").as_deref() != Ok("0") {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
}
