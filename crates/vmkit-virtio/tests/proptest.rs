//! Property tests: arbitrary rings never panic and every yielded buffer lies
//! in guest memory; valid chains round-trip through pop and add_used.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use proptest::prelude::*;
use vm_memory::{GuestAddress, GuestMemory};
use vmkit_virtio::{
    PackedQueue, SplitQueue, MAX_INDIRECT_DESCRIPTORS, VIRTQ_DESC_F_INDIRECT as IND,
    VIRTQ_DESC_F_NEXT as NEXT, VIRTQ_DESC_F_WRITE as WRITE,
};

/// A raw descriptor: mostly plausible values, sometimes anything.
fn raw_desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    let addr = prop_oneof![
        4 => (0u64..0x2_0000).prop_map(|o| BUF + o),
        2 => (0u64..8).prop_map(|k| TABLE + 16 * k),
        1 => any::<u64>(),
        1 => 0x10_0000u64 - 0x100..0x10_0000 + 0x100,
    ];
    let len = prop_oneof![
        4 => 0u32..0x2000,
        2 => (0u32..9).prop_map(|k| 16 * k),
        1 => any::<u32>(),
    ];
    let flags = prop_oneof![
        4 => 0u16..8,
        1 => any::<u16>(),
    ];
    let next = prop_oneof![4 => 0u16..20, 1 => any::<u16>()];
    (addr, len, flags, next)
}

fn assert_in_memory(m: &Mem, addr: GuestAddress, len: u32) {
    assert!(
        len == 0 || m.check_range(addr, len as usize, vm_memory::Permissions::Read),
        "buffer {:#x}+{len} outside guest memory",
        addr.0
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn split_arbitrary_rings_are_safe(
        size_log in 0u32..5,
        table in proptest::collection::vec(raw_desc(), 16),
        indirect in proptest::collection::vec(raw_desc(), 8),
        ring in proptest::collection::vec(prop_oneof![4 => 0u16..16, 1 => any::<u16>()], 16),
        avail_idx in prop_oneof![3 => 0u16..40, 1 => any::<u16>()],
        event_idx in any::<bool>(),
        use_access in any::<bool>(),
    ) {
        let m = mem();
        let size = 1u16 << size_log;
        for (i, &(a, l, f, n)) in table.iter().enumerate() {
            write_desc(&m, DESC, i as u16, a, l, f, n);
        }
        for (i, &(a, l, f, n)) in indirect.iter().enumerate() {
            write_desc(&m, TABLE, i as u16, a, l, f, n);
        }
        for (i, &h) in ring.iter().enumerate() {
            write_u16(&m, AVAIL + 4 + 2 * i as u64, h);
        }
        write_u16(&m, AVAIL + 2, avail_idx);
        let mut q = split_queue(size);
        q.set_event_idx(event_idx);
        let mut heads = Vec::new();
        for _ in 0..40 {
            let popped = if use_access {
                q.access(&m).and_then(|mut a| a.pop())
            } else {
                q.pop(&m)
            };
            let chain = match popped {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            prop_assert!(chain.head_index() < size);
            heads.push(chain.head_index());
            let mut n = 0u32;
            let mut total = 0u64;
            for d in chain {
                n += 1;
                prop_assert!(n <= u32::from(size) + MAX_INDIRECT_DESCRIPTORS);
                match d {
                    Ok(d) => {
                        assert_in_memory(&m, d.addr(), d.len());
                        total += u64::from(d.len());
                    }
                    Err(e) => {
                        // Every error renders a message naming its values.
                        prop_assert!(!e.to_string().is_empty());
                        break;
                    }
                }
            }
            prop_assert!(total <= u64::from(u32::MAX));
        }
        for h in heads {
            q.add_used(&m, h, 0).unwrap();
        }
        let _ = q.needs_notification(&m);
        let _ = q.enable_notification(&m);
    }

    #[test]
    fn packed_arbitrary_rings_are_safe(
        size in 1u16..17,
        ring in proptest::collection::vec(raw_desc(), 16),
        indirect in proptest::collection::vec(raw_desc(), 8),
        event in any::<(u16, u16)>(),
        event_idx in any::<bool>(),
        use_access in any::<bool>(),
    ) {
        let m = mem();
        for (i, &(a, l, f, n)) in ring.iter().enumerate() {
            // Packed layout: the 4th field is the buffer id, and flags carry AVAIL/USED.
            let flags = f | if n % 3 == 0 { F_AVAIL } else { 0 };
            write_pdesc(&m, DESC, i as u16, a, l, n, flags);
        }
        for (i, &(a, l, f, n)) in indirect.iter().enumerate() {
            write_pdesc(&m, TABLE, i as u16, a, l, n, f);
        }
        write_u16(&m, PDRIVER, event.0);
        write_u16(&m, PDRIVER + 2, event.1);
        let mut q = packed_queue(size);
        q.set_event_idx(event_idx);
        let mut used = Vec::new();
        for _ in 0..40 {
            let popped = if use_access {
                q.access(&m).and_then(|mut a| a.pop())
            } else {
                q.pop(&m)
            };
            let chain = match popped {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            prop_assert!(chain.desc_count() >= 1 && chain.desc_count() <= size);
            prop_assert!(chain.head_slot() < size);
            used.push((chain.id(), chain.desc_count()));
            let mut n = 0u32;
            for d in chain {
                n += 1;
                prop_assert!(n <= u32::from(size) + MAX_INDIRECT_DESCRIPTORS);
                match d {
                    Ok(d) => assert_in_memory(&m, d.addr(), d.len()),
                    Err(_) => break,
                }
            }
        }
        for (id, count) in used {
            q.add_used(&m, id, 0, count).unwrap();
        }
        let _ = q.needs_notification(&m);
        let _ = q.enable_notification(&m);
    }

    #[test]
    fn split_round_trip(
        shapes in proptest::collection::vec((1u16..4, any::<bool>(), 0u32..0x1000), 1..16),
        order_seed in any::<u64>(),
        start in any::<u16>(),
    ) {
        let m = mem();
        let size = 64u16;
        let mut q = SplitQueue::from_state(&vmkit_virtio::SplitQueueState {
            max_size: 256, size, ready: true,
            desc_table: DESC, avail_ring: AVAIL, used_ring: USED,
            next_avail: start, next_used: start, indirect: true,
            ..Default::default()
        }).unwrap();
        let mut d = SplitDriver::new(size);
        d.avail_idx = start;
        // Chain k uses descriptors [4k, 4k + n) directly, or an indirect table.
        let mut expected = Vec::new();
        for (k, &(n, ind, used_len)) in shapes.iter().enumerate() {
            let head = 4 * k as u16;
            let (table, base) = if ind { (TABLE + 0x100 * k as u64, 0) } else { (DESC, head) };
            for j in 0..n {
                let last = j + 1 == n;
                let flags = if last { WRITE } else { NEXT };
                write_desc(&m, table, base + j, BUF + 0x1000 * u64::from(j), 64, flags, base + j + 1);
            }
            if ind {
                write_desc(&m, DESC, head, table, 16 * u32::from(n), IND, 0);
            }
            d.push(&m, head);
            expected.push((head, n, used_len));
        }
        let mut popped = Vec::new();
        let mut a = q.access(&m).unwrap();
        while let Some(c) = a.pop().unwrap() {
            let head = c.head_index();
            let descs: Vec<_> = c.collect::<Result<_, _>>().unwrap();
            popped.push((head, descs.len() as u16));
        }
        prop_assert_eq!(popped.len(), expected.len());
        for (p, e) in popped.iter().zip(&expected) {
            prop_assert_eq!(*p, (e.0, e.1));
        }
        // Return them in a scrambled order.
        let mut order: Vec<usize> = (0..expected.len()).collect();
        let mut s = order_seed;
        for i in (1..order.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        for &i in &order {
            a.add_used(expected[i].0, expected[i].2).unwrap();
        }
        prop_assert_eq!(d.used_idx(&m), start.wrapping_add(expected.len() as u16));
        for (k, &i) in order.iter().enumerate() {
            let got = d.used(&m, start.wrapping_add(k as u16));
            prop_assert_eq!(got, (u32::from(expected[i].0), expected[i].2));
        }
    }

    #[test]
    fn packed_round_trip(
        rounds in proptest::collection::vec((1u16..4, any::<u16>(), 0u32..0x1000), 1..40),
        size in 4u16..20,
    ) {
        let m = mem();
        let mut q: PackedQueue = packed_queue(size);
        let mut d = PackedDriver::new(size);
        for &(n, id, len) in &rounds {
            let bufs: Vec<(u64, u32, u16)> = (0..n)
                .map(|j| (BUF + 0x100 * u64::from(j), 32, if j + 1 == n { WRITE } else { 0 }))
                .collect();
            d.push(&m, id, &bufs);
            let c = q.pop(&m).unwrap().unwrap();
            prop_assert_eq!((c.id(), c.desc_count()), (id, n));
            let slot = c.head_slot();
            let count = c.desc_count();
            prop_assert_eq!(c.filter(Result::is_ok).count(), usize::from(n));
            let (_, wrap) = q.next_used();
            if id % 2 == 0 {
                q.add_used(&m, id, len, count).unwrap();
            } else {
                q.access(&m).unwrap().add_used(id, len, count).unwrap();
            }
            let (uid, ulen, uflags) = d.used(&m, slot);
            prop_assert_eq!((uid, ulen), (id, len));
            let bits = if wrap { F_AVAIL | F_USED } else { 0 };
            prop_assert_eq!(uflags & (F_AVAIL | F_USED), bits);
            prop_assert!(q.pop(&m).unwrap().is_none());
        }
    }
}
