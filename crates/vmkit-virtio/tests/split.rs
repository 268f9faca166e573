//! Split queue: every configuration and chain error, plus the happy paths.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmkit_virtio::{
    vring_need_event, DescIndex, Descriptor, Error, RingArea, SplitQueue, SplitQueueState,
    MAX_INDIRECT_DESCRIPTORS, VIRTQ_DESC_F_INDIRECT as IND, VIRTQ_DESC_F_NEXT as NEXT,
    VIRTQ_DESC_F_WRITE as WRITE,
};

fn collect(q: &mut SplitQueue, mem: &Mem) -> (u16, Vec<Result<Descriptor, Error>>) {
    let chain = q.pop(mem).unwrap().expect("a chain");
    let head = chain.head_index();
    (head, chain.collect())
}

fn chain_err(q: &mut SplitQueue, mem: &Mem) -> Error {
    let (_, items) = collect(q, mem);
    match items.into_iter().find_map(Result::err) {
        Some(e) => e,
        None => panic!("chain had no error"),
    }
}

#[test]
fn config_errors() {
    assert!(matches!(
        SplitQueue::new(0),
        Err(Error::InvalidMaxSize { max: 0 })
    ));
    assert!(matches!(
        SplitQueue::new(40000),
        Err(Error::InvalidMaxSize { max: 40000 })
    ));
    assert_eq!(SplitQueue::new(32768).unwrap().size(), 32768);
    // A maximum need not be a power of two; the size must.
    let mut q = SplitQueue::new(100).unwrap();
    assert_eq!(q.size(), 64);
    assert!(matches!(
        q.set_size(100),
        Err(Error::InvalidQueueSize {
            size: 100,
            max: 100,
            power_of_two: true
        })
    ));
    assert_eq!(SplitQueue::new(1).unwrap().size(), 1);

    let mut q = SplitQueue::new(256).unwrap();
    for size in [0u16, 3, 100, 512] {
        assert!(matches!(
            q.set_size(size),
            Err(Error::InvalidQueueSize { size: s, max: 256, power_of_two: true }) if s == size
        ));
    }
    q.set_size(1).unwrap();
    q.set_size(256).unwrap();
    assert!(matches!(
        q.set_desc_table(GuestAddress(0x1008)),
        Err(Error::MisalignedAddress {
            area: RingArea::DescriptorTable,
            addr: 0x1008,
            align: 16
        })
    ));
    assert!(matches!(
        q.set_avail_ring(GuestAddress(0x2001)),
        Err(Error::MisalignedAddress {
            area: RingArea::AvailRing,
            addr: 0x2001,
            align: 2
        })
    ));
    assert!(matches!(
        q.set_used_ring(GuestAddress(0x3002)),
        Err(Error::MisalignedAddress {
            area: RingArea::UsedRing,
            addr: 0x3002,
            align: 4
        })
    ));
    q.set_ready(true);
    assert!(matches!(q.set_size(16), Err(Error::ConfigWhileReady)));
    assert!(matches!(
        q.set_desc_table(GuestAddress(0)),
        Err(Error::ConfigWhileReady)
    ));
}

#[test]
fn not_ready() {
    let m = mem();
    let mut q = split_queue(16);
    q.set_ready(false);
    assert!(matches!(q.pop(&m), Err(Error::NotReady)));
    assert!(matches!(q.add_used(&m, 0, 0), Err(Error::NotReady)));
}

#[test]
fn rings_outside_memory() {
    let m = mem();
    let mut q = SplitQueue::new(256).unwrap();
    q.set_desc_table(GuestAddress(0x10_0000 - 0x800)).unwrap();
    q.set_ready(true);
    let err = q.validate(&m).unwrap_err();
    assert!(matches!(
        err,
        Error::AreaOutOfMemory {
            area: RingArea::DescriptorTable,
            addr: 0xf_f800,
            len: 4096
        }
    ));
    // Nothing available: pop does not need the table yet.
    assert!(q.pop(&m).unwrap().is_none());
    write_u16(&m, 2, 1); // avail ring at 0: idx = 1, ring[0] = 0

    assert!(matches!(
        q.pop(&m),
        Err(Error::AreaOutOfMemory {
            area: RingArea::DescriptorTable,
            ..
        })
    ));

    let mut q = SplitQueue::new(256).unwrap();
    q.set_used_ring(GuestAddress(u64::MAX - 3)).unwrap();
    assert!(matches!(
        q.validate(&m),
        Err(Error::AreaOverflow { area: RingArea::UsedRing, addr, len: 2054 }) if addr == u64::MAX - 3
    ));
}

#[test]
fn direct_chain_round_trip() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    write_desc(&m, DESC, 3, BUF, 16, NEXT, 7);
    write_desc(&m, DESC, 7, BUF + 0x100, 32, NEXT, 1);
    write_desc(&m, DESC, 1, BUF + 0x200, 512, WRITE, 0);
    d.push(&m, 3);

    let (head, items) = collect(&mut q, &m);
    assert_eq!(head, 3);
    let descs: Vec<Descriptor> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(descs.len(), 3);
    assert_eq!(descs[0].addr(), GuestAddress(BUF));
    assert_eq!(descs[0].len(), 16);
    assert!(!descs[0].is_write_only());
    assert!(!descs[1].is_write_only());
    assert!(descs[2].is_write_only());
    assert_eq!(descs[2].len(), 512);
    assert!(q.pop(&m).unwrap().is_none());

    q.add_used(&m, 3, 100).unwrap();
    assert_eq!(d.used_idx(&m), 1);
    assert_eq!(d.used(&m, 0), (3, 100));
    assert_eq!(q.next_used(), 1);
}

#[test]
fn avail_index_jump_breaks_queue() {
    let m = mem();
    let mut q = split_queue(16);
    write_u16(&m, AVAIL + 2, 17);
    assert!(matches!(
        q.pop(&m),
        Err(Error::AvailIndexJump {
            avail_idx: 17,
            next_avail: 0,
            size: 16
        })
    ));
    assert!(q.is_broken());
    write_u16(&m, AVAIL + 2, 1);
    assert!(matches!(q.pop(&m), Err(Error::Broken)));
    q.reset();
    assert!(!q.is_broken());
}

#[test]
fn head_index_out_of_range() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    d.push(&m, 16);
    assert!(matches!(
        q.pop(&m),
        Err(Error::HeadIndexOutOfRange {
            index: 16,
            slot: 0,
            size: 16
        })
    ));
    assert!(q.is_broken());
}

#[test]
fn next_index_out_of_range() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    write_desc(&m, DESC, 0, BUF, 8, NEXT, 16);
    d.push(&m, 0);
    // The link is checked before the descriptor carrying it is yielded.
    let (_, items) = collect(&mut q, &m);
    assert!(matches!(
        items[0],
        Err(Error::NextIndexOutOfRange {
            at: DescIndex {
                indirect: false,
                index: 0
            },
            next: 16,
            table_len: 16
        })
    ));
    assert_eq!(items.len(), 1, "iteration stops after an error");
}

#[test]
fn loops_are_cut_at_queue_size() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    // 0 -> 1 -> 0 -> ...
    write_desc(&m, DESC, 0, BUF, 8, NEXT, 1);
    write_desc(&m, DESC, 1, BUF, 8, NEXT, 0);
    d.push(&m, 0);
    let (_, items) = collect(&mut q, &m);
    assert_eq!(items.len(), 17);
    assert!(items[..16].iter().all(Result::is_ok));
    assert!(matches!(
        items[16],
        Err(Error::ChainTooLong { head: 0, limit: 16 })
    ));
    // A self loop.
    write_desc(&m, DESC, 5, BUF, 8, NEXT, 5);
    d.push(&m, 5);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::ChainTooLong { head: 5, limit: 16 }
    ));
    // The chain is failed, the queue is not: both heads can be returned.
    q.add_used(&m, 0, 0).unwrap();
    q.add_used(&m, 5, 0).unwrap();
}

#[test]
fn indirect_chain() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    write_desc(&m, TABLE, 0, BUF, 16, NEXT, 2);
    write_desc(&m, TABLE, 2, BUF + 0x100, 8, NEXT, 1);
    write_desc(&m, TABLE, 1, BUF + 0x200, 64, WRITE, 0);
    // A direct descriptor before the indirect one is accepted.
    write_desc(&m, DESC, 4, BUF + 0x300, 4, NEXT, 9);
    write_desc(&m, DESC, 9, TABLE, 3 * 16, IND | WRITE, 0);
    d.push(&m, 4);
    let (head, items) = collect(&mut q, &m);
    assert_eq!(head, 4);
    let descs: Vec<Descriptor> = items.into_iter().map(Result::unwrap).collect();
    let lens: Vec<u32> = descs.iter().map(|d| d.len()).collect();
    assert_eq!(lens, [4, 16, 8, 64]);
    assert!(descs[3].is_write_only());
    assert!(!descs[1].is_write_only());
}

#[test]
fn indirect_errors() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    let at0 = DescIndex::ring(0);

    write_desc(&m, DESC, 0, TABLE, 16, IND | NEXT, 1);
    d.push(&m, 0);
    assert!(matches!(chain_err(&mut q, &m), Error::IndirectWithNext { at } if at == at0));

    for len in [0u32, 17, 8] {
        write_desc(&m, DESC, 0, TABLE, len, IND, 0);
        d.push(&m, 0);
        assert!(matches!(
            chain_err(&mut q, &m),
            Error::InvalidIndirectLength { at, len: l } if at == at0 && l == len
        ));
    }

    let big = (MAX_INDIRECT_DESCRIPTORS + 1) * 16;
    write_desc(&m, DESC, 0, TABLE, big, IND, 0);
    d.push(&m, 0);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::IndirectTableTooLarge { at, len, max: 32768 } if at == at0 && len == big
    ));

    // Table outside memory, and wrapping.
    write_desc(&m, DESC, 0, 0x10_0000 - 16, 32, IND, 0);
    d.push(&m, 0);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::BufferOutOfMemory { at, addr: 0xf_fff0, len: 32 } if at == at0
    ));
    write_desc(&m, DESC, 0, u64::MAX - 15, 32, IND, 0);
    d.push(&m, 0);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::BufferOverflow { at, len: 32, .. } if at == at0
    ));

    // Nested indirect.
    write_desc(&m, TABLE, 0, BUF, 8, NEXT, 1);
    write_desc(&m, TABLE, 1, TABLE, 16, IND, 0);
    write_desc(&m, DESC, 0, TABLE, 32, IND, 0);
    d.push(&m, 0);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::NestedIndirect {
            at: DescIndex {
                indirect: true,
                index: 1
            }
        }
    ));

    // NEXT pointing outside the indirect table.
    write_desc(&m, TABLE, 0, BUF, 8, NEXT, 4);
    write_desc(&m, DESC, 0, TABLE, 4 * 16, IND, 0);
    d.push(&m, 0);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::NextIndexOutOfRange {
            at: DescIndex {
                indirect: true,
                index: 0
            },
            next: 4,
            table_len: 4
        }
    ));

    // A loop inside the indirect table.
    write_desc(&m, TABLE, 0, BUF, 8, NEXT, 1);
    write_desc(&m, TABLE, 1, BUF, 8, NEXT, 0);
    d.push(&m, 0);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::ChainTooLong { head: 0, limit: 4 }
    ));

    // Not negotiated.
    q.set_indirect(false);
    d.push(&m, 0);
    assert!(matches!(chain_err(&mut q, &m), Error::IndirectNotNegotiated { at } if at == at0));
}

#[test]
fn buffer_errors() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    let at1 = DescIndex::ring(1);

    write_desc(&m, DESC, 0, BUF, 8, NEXT, 1);
    write_desc(&m, DESC, 1, u64::MAX - 7, 16, 0, 0);
    d.push(&m, 0);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::BufferOverflow { at, addr, len: 16 } if at == at1 && addr == u64::MAX - 7
    ));

    // Straddling the end of guest memory.
    write_desc(&m, DESC, 1, 0x10_0000 - 8, 16, 0, 0);
    d.push(&m, 0);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::BufferOutOfMemory { at, addr: 0xf_fff8, len: 16 } if at == at1
    ));

    // Entirely outside.
    write_desc(&m, DESC, 1, 0x4000_0000, 1, WRITE, 0);
    d.push(&m, 0);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::BufferOutOfMemory { at, addr: 0x4000_0000, len: 1 } if at == at1
    ));

    // Zero-length buffers touch no memory and are accepted anywhere.
    write_desc(&m, DESC, 1, 0x4000_0000, 0, WRITE, 0);
    d.push(&m, 0);
    let (_, items) = collect(&mut q, &m);
    assert!(items.iter().all(Result::is_ok));
}

#[test]
fn readable_after_writable() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    write_desc(&m, DESC, 0, BUF, 8, NEXT | WRITE, 1);
    write_desc(&m, DESC, 1, BUF, 8, 0, 0);
    d.push(&m, 0);
    assert!(matches!(
        chain_err(&mut q, &m),
        Error::ReadableAfterWritable {
            at: DescIndex {
                indirect: false,
                index: 1
            }
        }
    ));
}

#[test]
fn total_length_overflow() {
    // Two 2 GiB buffers: each in memory, their sum is 2^32.
    let m: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x8000_0000)]).unwrap();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    write_desc(&m, DESC, 0, 0, 0x8000_0000, NEXT, 1);
    write_desc(&m, DESC, 1, 0, 0x8000_0000, WRITE, 0);
    d.push(&m, 0);
    let (_, items) = collect(&mut q, &m);
    assert!(items[0].is_ok());
    assert!(matches!(
        items[1],
        Err(Error::ChainLengthOverflow {
            at: DescIndex {
                indirect: false,
                index: 1
            }
        })
    ));
}

#[test]
fn add_used_errors() {
    let m = mem();
    let mut q = split_queue(16);
    assert!(matches!(
        q.add_used(&m, 16, 0),
        Err(Error::InvalidUsedHead { head: 16, size: 16 })
    ));
    assert!(matches!(
        q.add_used(&m, 0, 0),
        Err(Error::NothingInFlight {
            count: 1,
            in_flight: 0
        })
    ));
}

#[test]
fn too_many_in_flight() {
    let m = mem();
    let mut q = split_queue(4);
    let mut d = SplitDriver::new(4);
    for i in 0..4 {
        write_desc(&m, DESC, i, BUF, 8, 0, 0);
        d.push(&m, i);
    }
    for _ in 0..4 {
        assert!(q.pop(&m).unwrap().is_some());
    }
    d.push(&m, 0);
    assert!(matches!(
        q.pop(&m),
        Err(Error::TooManyInFlight {
            in_flight: 4,
            size: 4
        })
    ));
}

#[test]
fn undo_pop() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    assert!(!q.undo_pop());
    write_desc(&m, DESC, 2, BUF, 8, 0, 0);
    d.push(&m, 2);
    assert_eq!(q.pop(&m).unwrap().unwrap().head_index(), 2);
    assert!(q.undo_pop());
    assert_eq!(q.pop(&m).unwrap().unwrap().head_index(), 2);
}

#[test]
fn indices_wrap_around_u16() {
    let m = mem();
    let state = SplitQueueState {
        max_size: 256,
        size: 8,
        ready: true,
        desc_table: DESC,
        avail_ring: AVAIL,
        used_ring: USED,
        next_avail: 65533,
        next_used: 65533,
        indirect: true,
        ..Default::default()
    };
    let mut q = SplitQueue::from_state(&state).unwrap();
    let mut d = SplitDriver::new(8);
    d.avail_idx = 65533;
    for round in 0..6u16 {
        write_desc(&m, DESC, round, BUF, 8, WRITE, 0);
        d.push(&m, round);
        let c = q.pop(&m).unwrap().unwrap();
        assert_eq!(c.head_index(), round);
        q.add_used(&m, round, u32::from(round)).unwrap();
    }
    assert_eq!(q.next_avail(), 65533u16.wrapping_add(6));
    assert_eq!(d.used_idx(&m), 65533u16.wrapping_add(6));
    assert_eq!(d.used(&m, 65533u16.wrapping_add(5)), (5, 5));
}

#[test]
fn event_idx_notification() {
    let m = mem();
    let mut q = split_queue(16);
    q.set_event_idx(true);
    let mut d = SplitDriver::new(16);
    for i in 0..4 {
        write_desc(&m, DESC, i, BUF, 8, WRITE, 0);
        d.push(&m, i);
    }
    // Nothing added yet: no notification.
    assert!(!q.needs_notification(&m).unwrap());
    // Driver wants an interrupt once used entry 1 is written (used_event = 1).
    write_u16(&m, AVAIL + 4 + 2 * 16, 1);
    let c = q.pop(&m).unwrap().unwrap();
    q.add_used(&m, c.head_index(), 0).unwrap();
    assert!(
        !q.needs_notification(&m).unwrap(),
        "0 -> 1 does not cross used_event 1"
    );
    let c = q.pop(&m).unwrap().unwrap();
    q.add_used(&m, c.head_index(), 0).unwrap();
    assert!(
        q.needs_notification(&m).unwrap(),
        "1 -> 2 crosses used_event 1"
    );
    let c = q.pop(&m).unwrap().unwrap();
    q.add_used(&m, c.head_index(), 0).unwrap();
    assert!(!q.needs_notification(&m).unwrap());

    // enable_notification publishes avail_event = next_avail and reports pending work.
    assert!(q.enable_notification(&m).unwrap());
    assert_eq!(read_u16(&m, USED + 4 + 8 * 16), 3);
    q.pop(&m).unwrap().unwrap();
    assert!(!q.enable_notification(&m).unwrap());
    assert_eq!(read_u16(&m, USED + 4 + 8 * 16), 4);

    assert!(vring_need_event(0, 1, 0));
    assert!(!vring_need_event(1, 1, 0));
    assert!(vring_need_event(65535, 0, 65535));
    assert!(vring_need_event(2, 10, 0));
}

#[test]
fn flags_notification() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    write_desc(&m, DESC, 0, BUF, 8, WRITE, 0);
    d.push(&m, 0);
    d.push(&m, 0);
    q.pop(&m).unwrap().unwrap();
    q.add_used(&m, 0, 0).unwrap();
    assert!(q.needs_notification(&m).unwrap());
    write_u16(&m, AVAIL, 1); // VIRTQ_AVAIL_F_NO_INTERRUPT
    q.pop(&m).unwrap().unwrap();
    q.add_used(&m, 0, 0).unwrap();
    assert!(!q.needs_notification(&m).unwrap());

    q.disable_notification(&m).unwrap();
    assert_eq!(read_u16(&m, USED), 1);
    assert!(!q.enable_notification(&m).unwrap());
    assert_eq!(read_u16(&m, USED), 0);
}

#[test]
fn state_round_trip_and_validation() {
    let m = mem();
    let mut q = split_queue(16);
    q.set_event_idx(true);
    let mut d = SplitDriver::new(16);
    write_desc(&m, DESC, 0, BUF, 8, WRITE, 0);
    d.push(&m, 0);
    d.push(&m, 0);
    q.pop(&m).unwrap().unwrap();
    let s = q.state();
    assert_eq!(s.next_avail, 1);
    assert_eq!(s.size, 16);
    let mut r = SplitQueue::from_state(&s).unwrap();
    assert_eq!(r.state(), s);
    // The restored queue carries on: one chain in flight, one still available.
    r.add_used(&m, 0, 0).unwrap();
    assert!(
        r.needs_notification(&m).unwrap(),
        "first check after restore notifies"
    );
    assert_eq!(r.pop(&m).unwrap().unwrap().head_index(), 0);

    let bad = SplitQueueState { size: 12, ..s };
    assert!(matches!(
        SplitQueue::from_state(&bad),
        Err(Error::InvalidQueueSize { size: 12, .. })
    ));
    let bad = SplitQueueState {
        avail_ring: 0x9001,
        ..s
    };
    assert!(matches!(
        SplitQueue::from_state(&bad),
        Err(Error::MisalignedAddress {
            area: RingArea::AvailRing,
            ..
        })
    ));
    let bad = SplitQueueState {
        next_avail: 100,
        next_used: 0,
        ..s
    };
    assert!(matches!(
        SplitQueue::from_state(&bad),
        Err(Error::InvalidState { .. })
    ));
}

#[test]
fn rings_and_buffers_across_regions() {
    // Two adjacent regions: the descriptor table and a buffer straddle the
    // boundary (slow path), and a buffer in the hole beyond is rejected.
    let m: Mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x1_0000),
        (GuestAddress(0x1_0000), 0x1_0000),
        (GuestAddress(0x4_0000), 0x1_0000),
    ])
    .unwrap();
    let mut q = SplitQueue::new(16).unwrap();
    let desc = 0x1_0000 - 0x80;
    q.set_desc_table(GuestAddress(desc)).unwrap();
    q.set_avail_ring(GuestAddress(AVAIL)).unwrap();
    q.set_used_ring(GuestAddress(USED)).unwrap();
    q.set_ready(true);
    q.validate(&m).unwrap();
    let mut d = SplitDriver::new(16);
    write_desc(&m, desc, 7, 0x1_0000 - 4, 8, NEXT, 8);
    write_desc(&m, desc, 8, 0x4_0000, 0x100, NEXT | WRITE, 9);
    write_desc(&m, desc, 9, 0x2_0000 - 4, 8, WRITE, 0);
    d.push(&m, 7);
    let (_, items) = collect(&mut q, &m);
    assert!(items[0].is_ok() && items[1].is_ok());
    assert!(matches!(
        items[2],
        Err(Error::BufferOutOfMemory {
            at: DescIndex {
                indirect: false,
                index: 9
            },
            addr: 0x1_fffc,
            len: 8
        })
    ));
}

#[test]
fn batch_access() {
    let m = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    for i in 0..5 {
        write_desc(&m, DESC, i, BUF + 0x100 * u64::from(i), 64, WRITE, 0);
        d.push(&m, i);
    }
    let mut a = q.access(&m).unwrap();
    let mut heads = Vec::new();
    while let Some(c) = a.pop().unwrap() {
        heads.push(c.head_index());
    }
    assert_eq!(heads, [0, 1, 2, 3, 4]);
    for &h in heads.iter().rev() {
        a.add_used(h, 64).unwrap();
    }
    assert!(matches!(
        a.add_used(0, 0),
        Err(Error::NothingInFlight {
            count: 1,
            in_flight: 0
        })
    ));
    assert!(matches!(
        a.add_used(16, 0),
        Err(Error::InvalidUsedHead { head: 16, size: 16 })
    ));
    assert_eq!(a.queue().next_used(), 5);
    assert_eq!(d.used(&m, 0), (4, 64));
    assert_eq!(d.used(&m, 4), (0, 64));

    // The rings are checked once, when the handle is made.
    let mut q = SplitQueue::new(16).unwrap();
    q.set_avail_ring(GuestAddress(0x10_0000 - 2)).unwrap();
    q.set_ready(true);
    assert!(matches!(
        q.access(&m),
        Err(Error::AreaOutOfMemory {
            area: RingArea::AvailRing,
            addr: 0xf_fffe,
            len: 38
        })
    ));
    q.set_ready(false);
    assert!(matches!(q.access(&m), Err(Error::NotReady)));
}

#[test]
fn per_call_cache_follows_memory_layout_changes() {
    // The per-call API remembers the region of the rings between calls; a
    // different memory each call (regions removed, replaced, split, or
    // moved) must give that memory's data or its error, never the old one's.
    let a = mem();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    write_desc(&a, DESC, 0, BUF, 64, WRITE, 0);
    d.push(&a, 0);
    let c = q.pop(&a).unwrap().expect("a chain");
    assert_eq!(c.head_index(), 0);
    assert_eq!(c.map(Result::unwrap).count(), 1);

    // The rings' region is gone: typed errors, `a` untouched.
    let hole: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1_0000)]).unwrap();
    assert!(matches!(
        q.add_used(&hole, 0, 64),
        Err(Error::AreaOutOfMemory {
            area: RingArea::UsedRing,
            addr: USED,
            ..
        })
    ));
    assert!(matches!(
        q.pop(&hole),
        Err(Error::AreaOutOfMemory {
            area: RingArea::AvailRing,
            addr: AVAIL,
            ..
        })
    ));
    assert_eq!(d.used_idx(&a), 0);

    // Another memory at the same addresses: its rings and buffers are used.
    let b = mem();
    q.add_used(&b, 0, 64).unwrap();
    assert_eq!(d.used_idx(&b), 1);
    assert_eq!(d.used(&b, 0), (0, 64));
    assert_eq!(
        d.used_idx(&a),
        0,
        "the old memory's used ring is not written"
    );
    write_desc(&b, DESC, 5, BUF + 0x500, 32, WRITE, 0);
    d.push(&b, 5);
    let c = q.pop(&b).unwrap().expect("a chain from the new memory");
    assert_eq!(c.head_index(), 5);
    let descs: Vec<Descriptor> = c.map(Result::unwrap).collect();
    assert_eq!(descs[0].addr(), GuestAddress(BUF + 0x500));
    assert_eq!(descs[0].len(), 32);
    q.add_used(&b, 5, 32).unwrap();
    assert_eq!(d.used(&b, 1), (5, 32));

    // The region shrank below the buffers: the chain checks its buffer
    // against the new layout, not the remembered region.
    let small: Mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
    write_desc(&small, DESC, 2, BUF, 16, WRITE, 0);
    let slot = u64::from(d.avail_idx % 16);
    write_u16(&small, AVAIL + 4 + 2 * slot, 2);
    write_u16(&small, AVAIL + 2, d.avail_idx.wrapping_add(1));
    let c = q.pop(&small).unwrap().expect("a chain");
    assert_eq!(c.head_index(), 2);
    let items: Vec<_> = c.collect();
    assert!(matches!(
        items[0],
        Err(Error::BufferOutOfMemory {
            addr: BUF,
            len: 16,
            ..
        })
    ));
    q.add_used(&small, 2, 0).unwrap();
    assert_eq!(read_u16(&small, USED + 2), 3);

    // The same range split in two regions, rings on both sides of the cut:
    // still correct, through the per-area lookups.
    let split: Mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), AVAIL as usize),
        (GuestAddress(AVAIL), 0x10_0000 - AVAIL as usize),
    ])
    .unwrap();
    write_desc(&split, DESC, 9, BUF + 0x900, 8, 0, 0);
    let next = q.next_avail();
    write_u16(&split, AVAIL + 4 + 2 * u64::from(next % 16), 9);
    write_u16(&split, AVAIL + 2, next.wrapping_add(1));
    let c = q.pop(&split).unwrap().expect("a chain");
    assert_eq!(c.head_index(), 9);
    let descs: Vec<Descriptor> = c.map(Result::unwrap).collect();
    assert_eq!(descs[0].addr(), GuestAddress(BUF + 0x900));
    q.add_used(&split, 9, 0).unwrap();
    assert_eq!(read_u16(&split, USED + 2), 4);
}

#[test]
fn per_call_cache_follows_a_moved_ring() {
    // The descriptor table moves to another region between calls (after a
    // reset): the next pop reads the new table.
    let m: Mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10_0000),
        (GuestAddress(0x20_0000), 0x1_0000),
    ])
    .unwrap();
    let mut q = split_queue(16);
    let mut d = SplitDriver::new(16);
    write_desc(&m, DESC, 1, BUF, 16, 0, 0);
    d.push(&m, 1);
    let c = q.pop(&m).unwrap().expect("a chain");
    assert_eq!(
        c.map(Result::unwrap).next().unwrap().addr(),
        GuestAddress(BUF)
    );
    q.add_used(&m, 1, 0).unwrap();

    q.reset();
    q.set_size(16).unwrap();
    q.set_desc_table(GuestAddress(0x20_0000)).unwrap();
    q.set_avail_ring(GuestAddress(AVAIL)).unwrap();
    q.set_used_ring(GuestAddress(USED)).unwrap();
    q.set_ready(true);
    let mut d = SplitDriver::new(16);
    write_u16(&m, USED + 2, 0);
    write_desc(&m, 0x20_0000, 1, BUF + 0x100, 24, WRITE, 0);
    d.push(&m, 1);
    let c = q.pop(&m).unwrap().expect("a chain");
    let descs: Vec<Descriptor> = c.map(Result::unwrap).collect();
    assert_eq!(descs[0].addr(), GuestAddress(BUF + 0x100));
    assert_eq!(descs[0].len(), 24);
}
