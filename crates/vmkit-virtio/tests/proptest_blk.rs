//! Property tests: `Request::parse` never panics, and what it accepts obeys
//! the rules (data direction, 512-byte multiples, inside the disk, status in
//! the last writable byte).

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_virtio::blk::{Request, RequestType, SECTOR_SIZE};
use vmkit_virtio::{SplitQueue, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

type Mem = GuestMemoryMmap<()>;

const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

#[derive(Clone, Debug)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn raw_desc() -> impl Strategy<Value = RawDesc> {
    (
        prop_oneof![0x4000u64..0x9000, any::<u64>()],
        prop_oneof![0u32..2048, Just(16), Just(512), Just(1), any::<u32>()],
        prop_oneof![
            Just(VIRTQ_DESC_F_NEXT),
            Just(VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE),
            Just(VIRTQ_DESC_F_WRITE),
            Just(0),
            0u16..8,
        ],
        0u16..10,
    )
        .prop_map(|(addr, len, flags, next)| RawDesc {
            addr,
            len,
            flags: flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_INDIRECT),
            next,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics(
        descs in prop::collection::vec(raw_desc(), 1..8),
        head in 0u16..8,
        req_type in prop_oneof![0u32..16, any::<u32>()],
        sector in prop_oneof![0u64..80, any::<u64>(), Just(u64::MAX / 512)],
        capacity in prop_oneof![0u64..100, any::<u64>()],
    ) {
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        for (i, d) in descs.iter().enumerate() {
            let at = DESC + 16 * i as u64;
            mem.write_obj(d.addr, GuestAddress(at)).unwrap();
            mem.write_obj(d.len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(d.flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(d.next, GuestAddress(at + 14)).unwrap();
        }
        // Headers at every plausible buffer address.
        for a in (0x4000u64..0x9000).step_by(0x200) {
            mem.write_obj(req_type, GuestAddress(a)).unwrap();
            mem.write_obj(sector, GuestAddress(a + 8)).unwrap();
        }
        mem.write_obj(head, GuestAddress(AVAIL + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        let mut q = SplitQueue::new(8).unwrap();
        q.set_size(8).unwrap();
        q.set_desc_table(GuestAddress(DESC)).unwrap();
        q.set_avail_ring(GuestAddress(AVAIL)).unwrap();
        q.set_used_ring(GuestAddress(USED)).unwrap();
        q.set_indirect(true);
        q.set_ready(true);
        let chain = q.pop(&mem).unwrap().unwrap();
        match Request::parse(chain, &mem, capacity) {
            Ok(req) => {
                prop_assert!(req.status_addr().0 < 0x1_0000);
                if matches!(req.kind(), RequestType::In | RequestType::Out) {
                    prop_assert_eq!(req.data_len() % SECTOR_SIZE, 0);
                    let end = req.sector() as u128 * 512 + u128::from(req.data_len());
                    prop_assert!(end <= capacity as u128 * 512);
                }
                let sum: u64 = req.data().iter().map(|&(_, l)| u64::from(l)).sum();
                prop_assert_eq!(sum, req.data_len());
                for &(a, l) in req.data() {
                    prop_assert!(a.0 + u64::from(l) <= 0x1_0000);
                }
            }
            Err(e) => {
                // Errors display without panicking.
                let _ = e.to_string();
            }
        }
    }
}
