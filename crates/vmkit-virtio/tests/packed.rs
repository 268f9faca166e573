//! Packed queue: configuration, chains, wrap counters, used write-back,
//! event suppression, state, and every error.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use vm_memory::GuestAddress;
use vmkit_virtio::packed::{RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE};
use vmkit_virtio::{
    DescIndex, Descriptor, Error, PackedQueue, PackedQueueState, RingArea,
    VIRTQ_DESC_F_INDIRECT as IND, VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE,
};

fn collect(q: &mut PackedQueue, mem: &Mem) -> (u16, u16, Vec<Result<Descriptor, Error>>) {
    let c = q.pop(mem).unwrap().expect("a chain");
    (c.id(), c.desc_count(), c.collect())
}

fn chain_err(q: &mut PackedQueue, mem: &Mem) -> Error {
    let (_, _, items) = collect(q, mem);
    match items.into_iter().find_map(Result::err) {
        Some(e) => e,
        None => panic!("chain had no error"),
    }
}

#[test]
fn config_errors() {
    assert!(matches!(
        PackedQueue::new(0),
        Err(Error::InvalidMaxSize { max: 0 })
    ));
    assert!(matches!(
        PackedQueue::new(32769),
        Err(Error::InvalidMaxSize { max: 32769 })
    ));
    let mut q = PackedQueue::new(100).unwrap();
    q.set_size(5).unwrap(); // packed sizes need not be powers of two
    assert!(matches!(
        q.set_size(0),
        Err(Error::InvalidQueueSize {
            size: 0,
            max: 100,
            power_of_two: false
        })
    ));
    assert!(matches!(
        q.set_size(101),
        Err(Error::InvalidQueueSize {
            size: 101,
            max: 100,
            power_of_two: false
        })
    ));
    assert!(matches!(
        q.set_desc_ring(GuestAddress(8)),
        Err(Error::MisalignedAddress {
            area: RingArea::DescriptorRing,
            addr: 8,
            align: 16
        })
    ));
    assert!(matches!(
        q.set_driver_area(GuestAddress(2)),
        Err(Error::MisalignedAddress {
            area: RingArea::DriverArea,
            addr: 2,
            align: 4
        })
    ));
    assert!(matches!(
        q.set_device_area(GuestAddress(6)),
        Err(Error::MisalignedAddress {
            area: RingArea::DeviceArea,
            addr: 6,
            align: 4
        })
    ));
    assert!(matches!(q.pop(&mem()), Err(Error::NotReady)));
    q.set_ready(true);
    assert!(matches!(q.set_size(4), Err(Error::ConfigWhileReady)));
    let m = mem();
    let mut q = PackedQueue::new(16).unwrap();
    q.set_desc_ring(GuestAddress(0x10_0000 - 0x80)).unwrap();
    assert!(matches!(
        q.validate(&m),
        Err(Error::AreaOutOfMemory {
            area: RingArea::DescriptorRing,
            addr: 0xf_ff80,
            len: 256
        })
    ));
}

#[test]
fn list_round_trip_and_wrap() {
    let m = mem();
    let mut q = packed_queue(5);
    let mut d = PackedDriver::new(5);
    assert!(q.pop(&m).unwrap().is_none());

    d.push(
        &m,
        42,
        &[
            (BUF, 16, 0),
            (BUF + 0x100, 32, 0),
            (BUF + 0x200, 512, WRITE),
        ],
    );
    let (id, count, items) = collect(&mut q, &m);
    assert_eq!((id, count), (42, 3));
    let descs: Vec<Descriptor> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        descs.iter().map(|d| d.len()).collect::<Vec<_>>(),
        [16, 32, 512]
    );
    assert!(descs[2].is_write_only() && !descs[1].is_write_only());
    assert!(q.pop(&m).unwrap().is_none());
    q.add_used(&m, 42, 100, 3).unwrap();
    // Used descriptor at slot 0: AVAIL and USED both equal the wrap counter (1).
    assert_eq!(d.used(&m, 0), (42, 100, F_AVAIL | F_USED | WRITE));
    assert_eq!(q.next_used(), (3, true));

    // Next list crosses the end of the ring: slots 3, 4, 0.
    d.push(&m, 7, &[(BUF, 8, 0), (BUF, 8, 0), (BUF, 8, WRITE)]);
    let (id, count, items) = collect(&mut q, &m);
    assert_eq!((id, count), (7, 3));
    assert!(items.iter().all(Result::is_ok));
    assert_eq!(q.next_avail(), (1, false));
    q.add_used(&m, 7, 0, 3).unwrap();
    assert_eq!(d.used(&m, 3), (7, 0, F_AVAIL | F_USED));
    assert_eq!(q.next_used(), (1, false));

    // Second lap: used flags are written with both bits clear.
    d.push(&m, 9, &[(BUF, 8, WRITE)]);
    let (id, count, _) = collect(&mut q, &m);
    assert_eq!((id, count), (9, 1));
    q.add_used(&m, 9, 8, 1).unwrap();
    assert_eq!(d.used(&m, 1), (9, 8, WRITE));
    // A first-lap descriptor left in slot 2 is not available in the second lap.
    assert!(q.pop(&m).unwrap().is_none());
}

#[test]
fn list_longer_than_ring_breaks_queue() {
    let m = mem();
    let mut q = packed_queue(4);
    for i in 0..4 {
        write_pdesc(&m, DESC, i, BUF, 8, 0, NEXT | F_AVAIL);
    }
    assert!(matches!(
        q.pop(&m),
        Err(Error::ChainTooLong { head: 0, limit: 4 })
    ));
    assert!(matches!(q.pop(&m), Err(Error::Broken)));
}

#[test]
fn too_many_in_flight() {
    let m = mem();
    let mut q = packed_queue(4);
    let mut d = PackedDriver::new(4);
    d.push(&m, 0, &[(BUF, 8, 0), (BUF, 8, 0), (BUF, 8, 0), (BUF, 8, 0)]);
    assert!(q.pop(&m).unwrap().is_some());
    // A hostile driver marks slot 0 available for the next lap already.
    write_pdesc(&m, DESC, 0, BUF, 8, 1, F_USED);
    assert!(matches!(
        q.pop(&m),
        Err(Error::TooManyInFlight {
            in_flight: 4,
            size: 4
        })
    ));
}

#[test]
fn indirect() {
    let m = mem();
    let mut q = packed_queue(8);
    let mut d = PackedDriver::new(8);
    // Packed indirect table: NEXT and id are ignored inside it.
    write_pdesc(&m, TABLE, 0, BUF, 16, 0, NEXT);
    write_pdesc(&m, TABLE, 1, BUF + 0x100, 64, 0, WRITE);
    d.push(&m, 3, &[(TABLE, 32, IND)]);
    let (id, count, items) = collect(&mut q, &m);
    assert_eq!((id, count), (3, 1));
    let lens: Vec<u32> = items.into_iter().map(|r| r.unwrap().len()).collect();
    assert_eq!(lens, [16, 64]);

    let at = |i| DescIndex::ring(i);
    d.push(&m, 3, &[(TABLE, 24, IND)]);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::InvalidIndirectLength { at: a, len: 24 } if a == at(1)
    ));
    d.push(&m, 3, &[(BUF, 8, 0), (TABLE, 32, IND)]);
    assert!(matches!(chain_err(&mut q, &m), Error::IndirectInList { at: a } if a == at(3)));
    write_pdesc(&m, TABLE, 1, TABLE, 16, 0, IND);
    d.push(&m, 3, &[(TABLE, 32, IND)]);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::NestedIndirect {
            at: DescIndex {
                indirect: true,
                index: 1
            }
        }
    ));
    d.push(&m, 3, &[(0x10_0000 - 16, 32, IND)]);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::BufferOutOfMemory {
            addr: 0xf_fff0,
            len: 32,
            ..
        }
    ));
    d.push(&m, 3, &[(TABLE, 16 * 40000, IND)]);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::IndirectTableTooLarge { max: 32768, .. }
    ));
    q.set_indirect(false);
    d.push(&m, 3, &[(TABLE, 32, IND)]);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::IndirectNotNegotiated { .. }
    ));
}

#[test]
fn buffer_errors() {
    let m = mem();
    let mut q = packed_queue(8);
    let mut d = PackedDriver::new(8);
    d.push(&m, 1, &[(u64::MAX - 3, 8, 0)]);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::BufferOverflow {
            at: DescIndex {
                indirect: false,
                index: 0
            },
            len: 8,
            ..
        }
    ));
    d.push(&m, 1, &[(0x10_0000, 8, WRITE)]);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::BufferOutOfMemory {
            at: DescIndex {
                indirect: false,
                index: 1
            },
            addr: 0x10_0000,
            len: 8
        }
    ));
    d.push(&m, 1, &[(BUF, 8, WRITE), (BUF, 8, 0)]);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::ReadableAfterWritable {
            at: DescIndex {
                indirect: false,
                index: 3
            }
        }
    ));
}

#[test]
fn add_used_errors() {
    let m = mem();
    let mut q = packed_queue(8);
    assert!(matches!(
        q.add_used(&m, 0, 0, 1),
        Err(Error::NothingInFlight {
            count: 1,
            in_flight: 0
        })
    ));
    let mut d = PackedDriver::new(8);
    d.push(&m, 1, &[(BUF, 8, 0), (BUF, 8, 0)]);
    q.pop(&m).unwrap().unwrap();
    assert!(matches!(
        q.add_used(&m, 1, 0, 3),
        Err(Error::NothingInFlight {
            count: 3,
            in_flight: 2
        })
    ));
    assert!(matches!(
        q.add_used(&m, 1, 0, 0),
        Err(Error::NothingInFlight {
            count: 0,
            in_flight: 2
        })
    ));
    q.add_used(&m, 1, 0, 2).unwrap();
}

#[test]
fn event_suppression() {
    let m = mem();
    let mut q = packed_queue(8);
    let mut d = PackedDriver::new(8);
    let mut one = |q: &mut PackedQueue| {
        d.push(&m, 0, &[(BUF, 8, WRITE)]);
        let c = q.pop(&m).unwrap().unwrap();
        q.add_used(&m, c.id(), 8, c.desc_count()).unwrap();
    };
    assert!(!q.needs_notification(&m).unwrap(), "nothing used yet");
    one(&mut q);
    assert!(q.needs_notification(&m).unwrap(), "ENABLE (0)");
    write_u16(&m, PDRIVER + 2, RING_EVENT_FLAGS_DISABLE);
    one(&mut q);
    assert!(!q.needs_notification(&m).unwrap());
    write_u16(&m, PDRIVER + 2, RING_EVENT_FLAGS_DESC);
    one(&mut q);
    assert!(matches!(
        q.needs_notification(&m),
        Err(Error::InvalidEventFlags { flags: 2 })
    ));
    write_u16(&m, PDRIVER + 2, 3);
    one(&mut q);
    assert!(matches!(
        q.needs_notification(&m),
        Err(Error::InvalidEventFlags { flags: 3 })
    ));

    // EVENT_IDX: notify when used slot 5 (wrap 1) is written. next_used is 4.
    q.set_event_idx(true);
    write_u16(&m, PDRIVER + 2, RING_EVENT_FLAGS_DESC);
    write_u16(&m, PDRIVER, 5 | 0x8000);
    one(&mut q); // 4 -> 5
    assert!(!q.needs_notification(&m).unwrap());
    one(&mut q); // 5 -> 6
    assert!(q.needs_notification(&m).unwrap());
    write_u16(&m, PDRIVER, 9 | 0x8000);
    one(&mut q);
    assert!(matches!(
        q.needs_notification(&m),
        Err(Error::InvalidEventOffset {
            off_wrap: 0x8009,
            size: 8
        })
    ));
    // Slot 7 of the lap with wrap 1 is written as the ring wraps to 0 (wrap 0).
    write_u16(&m, PDRIVER, 7 | 0x8000);
    one(&mut q); // 7 -> 0, wrap flips
    assert!(q.needs_notification(&m).unwrap());
    // Slot 1 of the lap with wrap 0: not reached by 0 -> 1, reached by 1 -> 2.
    write_u16(&m, PDRIVER, 1);
    one(&mut q);
    assert!(!q.needs_notification(&m).unwrap());
    one(&mut q);
    assert!(q.needs_notification(&m).unwrap());

    // enable/disable write the device area.
    assert!(!q.enable_notification(&m).unwrap());
    let (next, wrap) = q.next_avail();
    assert_eq!(read_u16(&m, PDEVICE), next | (u16::from(wrap) << 15));
    assert_eq!(read_u16(&m, PDEVICE + 2), RING_EVENT_FLAGS_DESC);
    q.disable_notification(&m).unwrap();
    assert_eq!(read_u16(&m, PDEVICE + 2), RING_EVENT_FLAGS_DISABLE);
    q.set_event_idx(false);
    q.enable_notification(&m).unwrap();
    assert_eq!(read_u16(&m, PDEVICE + 2), 0);
}

#[test]
fn state_round_trip_and_validation() {
    let m = mem();
    let mut q = packed_queue(8);
    let mut d = PackedDriver::new(8);
    for _ in 0..3 {
        d.push(&m, 5, &[(BUF, 8, 0), (BUF, 8, WRITE), (BUF, 8, WRITE)]);
        let c = q.pop(&m).unwrap().unwrap();
        q.add_used(&m, c.id(), 0, c.desc_count()).unwrap();
    }
    d.push(&m, 6, &[(BUF, 8, 0)]);
    q.pop(&m).unwrap().unwrap();
    let s = q.state();
    assert_eq!((s.next_avail, s.avail_wrap, s.in_flight), (2, false, 1));
    let mut r = PackedQueue::from_state(&s).unwrap();
    assert_eq!(r.state(), s);
    r.add_used(&m, 6, 0, 1).unwrap();
    assert_eq!(d.used(&m, 1), (6, 0, 0));

    let bad = PackedQueueState { in_flight: 2, ..s };
    assert!(matches!(
        PackedQueue::from_state(&bad),
        Err(Error::InvalidState { .. })
    ));
    let bad = PackedQueueState { next_used: 8, ..s };
    assert!(matches!(
        PackedQueue::from_state(&bad),
        Err(Error::InvalidState { .. })
    ));
    let bad = PackedQueueState { size: 0, ..s };
    assert!(matches!(
        PackedQueue::from_state(&bad),
        Err(Error::InvalidQueueSize { .. })
    ));
}

#[test]
fn batch_access() {
    let m = mem();
    let mut q = packed_queue(8);
    let mut d = PackedDriver::new(8);
    for id in 0..3 {
        d.push(&m, 10 + id, &[(BUF, 8, 0), (BUF + 0x100, 16, WRITE)]);
    }
    let mut a = q.access(&m).unwrap();
    let mut seen = Vec::new();
    while let Some(c) = a.pop().unwrap() {
        let (id, n) = (c.id(), c.desc_count());
        assert_eq!(c.filter(Result::is_ok).count(), 2);
        a.add_used(id, 16, n).unwrap();
        seen.push(id);
    }
    assert_eq!(seen, [10, 11, 12]);
    assert!(a.needs_notification().unwrap());
    assert_eq!(d.used(&m, 4), (12, 16, F_AVAIL | F_USED | WRITE));
    assert!(matches!(
        a.add_used(0, 0, 1),
        Err(Error::NothingInFlight {
            count: 1,
            in_flight: 0
        })
    ));
    q.set_ready(false);
    assert!(matches!(q.access(&m), Err(Error::NotReady)));
}

#[test]
fn undo_pop_rewinds_across_the_ring_end_and_flips_the_wrap_counter() {
    let mem = mem();
    let mut q = packed_queue(4);
    let mut d = PackedDriver::new(4);
    // Three slots, then a list of two that wraps (slots 3 and 0).
    d.push(&mem, 7, &[(BUF, 8, 0), (BUF + 8, 8, 0), (BUF + 16, 8, 0)]);
    let (id, n, _) = collect(&mut q, &mem);
    assert_eq!((id, n), (7, 3));
    q.add_used(&mem, id, 0, n).unwrap();
    d.push(&mem, 9, &[(BUF, 8, 0), (BUF + 8, 8, 0)]);
    let (id, n, _) = collect(&mut q, &mem);
    assert_eq!((id, n), (9, 2));
    assert_eq!(q.next_avail(), (1, false));
    assert!(!q.undo_pop(3), "only 2 slots in flight");
    assert!(!q.undo_pop(0));
    assert!(q.undo_pop(n));
    assert_eq!(q.next_avail(), (3, true), "back into the first lap");
    assert_eq!(q.state().in_flight, 0);
    // Popped again, the same list.
    let (id, n, items) = collect(&mut q, &mem);
    assert_eq!((id, n, items.len()), (9, 2, 2));
    q.add_used(&mem, id, 0, n).unwrap();
    assert!(!q.undo_pop(1), "nothing in flight");
}

#[test]
fn per_call_cache_follows_memory_layout_changes() {
    // As for split queues: the remembered ring region never outlives the
    // memory it came from.
    let a = mem();
    let mut q = packed_queue(8);
    let mut d = PackedDriver::new(8);
    d.push(&a, 3, &[(BUF, 16, WRITE)]);
    let (id, _, items) = collect(&mut q, &a);
    assert_eq!(id, 3);
    assert!(items.iter().all(Result::is_ok));

    let hole: Mem =
        vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1_0000)]).unwrap();
    assert!(matches!(
        q.add_used(&hole, 3, 16, 1),
        Err(Error::AreaOutOfMemory {
            area: RingArea::DescriptorRing,
            addr: DESC,
            ..
        })
    ));
    assert!(matches!(
        q.pop(&hole),
        Err(Error::AreaOutOfMemory {
            area: RingArea::DescriptorRing,
            ..
        })
    ));
    assert_eq!(d.used(&a, 0), (3, 16, WRITE | F_AVAIL), "untouched");

    // Another memory at the same addresses: its ring is written and read.
    let b = mem();
    q.add_used(&b, 3, 16, 1).unwrap();
    assert_eq!(d.used(&b, 0), (3, 16, F_AVAIL | F_USED | WRITE));
    assert_eq!(d.used(&a, 0), (3, 16, WRITE | F_AVAIL), "untouched");
    d.push(&b, 6, &[(BUF + 0x600, 48, 0)]);
    let (id, _, items) = collect(&mut q, &b);
    assert_eq!(id, 6);
    let descs: Vec<Descriptor> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(descs[0].addr(), GuestAddress(BUF + 0x600));
    assert_eq!(descs[0].len(), 48);

    // A smaller region: the buffer beyond it is rejected.
    let small: Mem =
        vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    q.add_used(&small, 6, 0, 1).unwrap();
    d.push(&small, 7, &[(BUF, 16, WRITE)]);
    assert!(matches!(
        chain_err(&mut q, &small),
        Error::BufferOutOfMemory {
            addr: BUF,
            len: 16,
            ..
        }
    ));
}
