//! Split virtqueue throughput: vmkit-virtio against the `virtio-queue` crate
//! (rust-vmm, 0.18) in the same process, on the same rings in the same guest
//! memory. Each iteration makes a batch available (one avail.idx store), then
//! pops every chain, iterates all of its descriptors and returns it with
//! `add_used`.
//!
//! `vmkit-virtio` uses [`SplitQueue::access`] (rings resolved once per
//! batch); `vmkit-virtio-per-call` uses `SplitQueue::pop`/`add_used`, which
//! look up the rings' memory region once per call (the queue remembers its
//! guest range, not a host pointer). `vmkit-virtio-queue-enum` is the
//! `vmkit-virtio` loop through [`vmkit_virtio::Queue`], the split-or-packed
//! enum that transports and devices use: its baseline is `vmkit-virtio`
//! (the same queue used directly), and the difference is the cost of the
//! layout dispatch.
//!
//! Shapes: one chain of 128 descriptors; 128 one-descriptor chains; 128
//! chains of one indirect descriptor each pointing to a table of 4.
//!
//! Run: `cargo bench -p vmkit-virtio --bench virtqueue` (a filter such as
//! `-- 128_single` runs one shape).

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_virtio::{
    Queue as VmkitQueue, SplitQueue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};

type Mem = GuestMemoryMmap<()>;

const SIZE: u16 = 256;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
const TABLES: u64 = 0x4_0000;
const BUFS: u64 = 0x10_0000;
const INDIRECT_LEN: u16 = 4;

fn write_desc(mem: &Mem, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = table + 16 * u64::from(i);
    mem.write_obj(addr, GuestAddress(at)).unwrap();
    mem.write_obj(len, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    mem.write_obj(next, GuestAddress(at + 14)).unwrap();
}

#[derive(Clone, Copy)]
enum Shape {
    LongChain,
    SingleDescriptors,
    Indirect,
}

/// Writes the descriptors of `shape` and fills every avail ring slot with
/// the head of the chain it will carry. Returns the chains per batch.
fn setup(mem: &Mem, shape: Shape) -> u16 {
    let buf = |i: u16| BUFS + 0x1000 * u64::from(i);
    let heads: u16 = match shape {
        Shape::LongChain => {
            for i in 0..128u16 {
                let (flags, next) = if i < 127 {
                    (
                        VIRTQ_DESC_F_NEXT | if i >= 64 { VIRTQ_DESC_F_WRITE } else { 0 },
                        i + 1,
                    )
                } else {
                    (VIRTQ_DESC_F_WRITE, 0)
                };
                write_desc(mem, DESC, i, buf(i), 512, flags, next);
            }
            1
        }
        Shape::SingleDescriptors => {
            for i in 0..128u16 {
                write_desc(mem, DESC, i, buf(i), 512, VIRTQ_DESC_F_WRITE, 0);
            }
            128
        }
        Shape::Indirect => {
            for i in 0..128u16 {
                let table = TABLES + 16 * u64::from(INDIRECT_LEN) * u64::from(i);
                for j in 0..INDIRECT_LEN {
                    let (flags, next) = match j {
                        0 => (VIRTQ_DESC_F_NEXT, 1),
                        j if j + 1 < INDIRECT_LEN => {
                            (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, j + 1)
                        }
                        _ => (VIRTQ_DESC_F_WRITE, 0),
                    };
                    write_desc(mem, table, j, buf(i) + 256 * u64::from(j), 256, flags, next);
                }
                write_desc(
                    mem,
                    DESC,
                    i,
                    table,
                    16 * u32::from(INDIRECT_LEN),
                    VIRTQ_DESC_F_INDIRECT,
                    0,
                );
            }
            128
        }
    };
    for slot in 0..SIZE {
        mem.write_obj(slot % heads, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
            .unwrap();
    }
    heads
}

fn publish(mem: &Mem, next_avail: u16, n: u16) {
    mem.write_obj(next_avail.wrapping_add(n), GuestAddress(AVAIL + 2))
        .unwrap();
}

fn ours(mem: &Mem) -> SplitQueue {
    let mut q = SplitQueue::new(SIZE).unwrap();
    q.set_desc_table(GuestAddress(DESC)).unwrap();
    q.set_avail_ring(GuestAddress(AVAIL)).unwrap();
    q.set_used_ring(GuestAddress(USED)).unwrap();
    q.set_indirect(true);
    q.set_ready(true);
    q.validate(mem).unwrap();
    q
}

fn theirs() -> Queue {
    let mut q = Queue::new(SIZE).unwrap();
    q.set_size(SIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    q
}

/// Iterates a chain of ours: adds its buffer addresses to `sum`, returns
/// the writable bytes. Inlined, as a device's own loop over its chain is:
/// called out of line, each chain was moved into it (a memmove per chain
/// that no device pays, a quarter of the time of 128 one-descriptor chains).
#[inline(always)]
fn walk<I: Iterator<Item = vmkit_virtio::Result<vmkit_virtio::Descriptor>>>(
    chain: I,
    sum: &mut u64,
) -> u32 {
    let mut written = 0;
    for d in chain {
        let d = d.unwrap();
        *sum = sum.wrapping_add(d.addr().0);
        if d.is_write_only() {
            written += d.len();
        }
    }
    written
}

fn run_ours(q: &mut SplitQueue, mem: &Mem, n: u16) -> u64 {
    publish(mem, q.next_avail(), n);
    let mut sum = 0u64;
    while let Some(chain) = q.pop(mem).unwrap() {
        let head = chain.head_index();
        let written = walk(chain, &mut sum);
        q.add_used(mem, head, written).unwrap();
    }
    sum
}

fn run_ours_batch(q: &mut SplitQueue, mem: &Mem, n: u16) -> u64 {
    publish(mem, q.next_avail(), n);
    let mut sum = 0u64;
    let mut access = q.access(mem).unwrap();
    while let Some(chain) = access.pop().unwrap() {
        let head = chain.head_index();
        let written = walk(chain, &mut sum);
        access.add_used(head, written).unwrap();
    }
    sum
}

fn run_ours_enum(q: &mut VmkitQueue, mem: &Mem, n: u16) -> u64 {
    let VmkitQueue::Split(split) = &*q else {
        unreachable!("the bench queue is split")
    };
    publish(mem, split.next_avail(), n);
    let mut sum = 0u64;
    let mut access = q.access(mem).unwrap();
    while let Some(chain) = access.pop().unwrap() {
        let head = chain.head();
        let written = walk(chain, &mut sum);
        access.add_used(head, written).unwrap();
    }
    sum
}

fn run_theirs(q: &mut Queue, mem: &Mem, n: u16) -> u64 {
    publish(mem, q.next_avail(), n);
    let mut sum = 0u64;
    while let Some(chain) = q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut written = 0;
        for d in chain {
            sum = sum.wrapping_add(d.addr().0);
            if d.is_write_only() {
                written += d.len();
            }
        }
        q.add_used(mem, head, written).unwrap();
    }
    sum
}

fn bench(c: &mut Criterion) {
    for (name, shape) in [
        ("one_chain_of_128", Shape::LongChain),
        ("128_single_descriptor_chains", Shape::SingleDescriptors),
        ("128_indirect_chains_of_4", Shape::Indirect),
    ] {
        let mem: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let n = setup(&mem, shape);
        let mut a = ours(&mem);
        let mut b = theirs();
        // Both see the same work: same sums, same used entries.
        let expect = run_theirs(&mut b, &mem, n);
        assert_eq!(run_ours(&mut a, &mem, n), expect);
        assert_eq!(run_ours_batch(&mut a, &mem, n), expect);
        let mut e = VmkitQueue::Split(ours(&mem));
        assert_eq!(run_ours_enum(&mut e, &mem, n), expect);
        let _ = b.iter(&mem);
        let mut g = c.benchmark_group(name);
        g.bench_function("vmkit-virtio", |bn| {
            bn.iter(|| black_box(run_ours_batch(&mut a, &mem, n)))
        });
        g.bench_function("vmkit-virtio-queue-enum", |bn| {
            bn.iter(|| black_box(run_ours_enum(&mut e, &mem, n)))
        });
        g.bench_function("vmkit-virtio-per-call", |bn| {
            bn.iter(|| black_box(run_ours(&mut a, &mem, n)))
        });
        g.bench_function("virtio-queue", |bn| {
            bn.iter(|| black_box(run_theirs(&mut b, &mem, n)))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
