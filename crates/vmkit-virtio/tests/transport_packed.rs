//! The virtio-mmio transport with packed queues: negotiation of
//! VIRTIO_F_RING_PACKED, packed queue setup through the registers, event
//! suppression and indirect descriptors, and saving and restoring a packed
//! queue (and refusing states whose layout contradicts the features).

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod driver;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use driver::*;
use vm_memory::{Bytes, GuestAddress};
use vmkit_virtio::blk::*;
use vmkit_virtio::device::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use vmkit_virtio::mmio::*;
use vmkit_virtio::{Error, Persist, QueueLayout, QueueState, RingArea, SplitQueueState};

/// A saved transport around a [`Block`].
type BlkState = MmioTransportState<BlockState>;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

const SECTORS: u64 = 64;
const PACKED: u64 = VIRTIO_F_VERSION_1 | RING_PACKED | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC;
const LIVE: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

fn irq() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

fn disk() -> File {
    let f = TempFile::new().unwrap().into_file();
    f.set_len(SECTORS * 512).unwrap();
    f
}

fn block(file: &File) -> Block {
    Block::new(file.try_clone().unwrap(), BlockOptions::default()).unwrap()
}

fn sector_of(file: &File, s: u64) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    file.read_exact_at(&mut b, s * 512).unwrap();
    b
}

fn layout_of<D: vmkit_virtio::VirtioDevice<Mem>>(t: &Transport<D>) -> QueueLayout {
    t.queue_state(0).unwrap().layout()
}

#[test]
fn queues_turn_packed_when_the_driver_accepts_ring_packed_and_split_on_reset() {
    let mem = mem();
    let file = disk();
    let t = transport(block(&file), &mem);
    assert_ne!(device_features(&t) & RING_PACKED, 0);
    assert_eq!(layout_of(&t), QueueLayout::Split, "split until negotiated");
    assert!(negotiate(&t, VIRTIO_F_VERSION_1 | RING_PACKED));
    assert_eq!(layout_of(&t), QueueLayout::Packed);
    // Packed: any size up to the maximum, event areas 4-byte aligned.
    t.w32(0x30, 0);
    assert_eq!(t.r32(0x34), 256);
    let vq = Vq::packed(0, 7);
    assert!(setup_queue(&t, &vq), "{:?}", t.take_error());
    assert_eq!(t.queue_state(0).unwrap().size(), 7);
    assert_eq!(
        t.queue_state(0).unwrap().areas(),
        [vq.desc, vq.avail, vq.used]
    );

    // A driver area that is 2-byte aligned (fine for a split available
    // ring) is refused for a packed queue.
    assert!(negotiate(&t, VIRTIO_F_VERSION_1 | RING_PACKED));
    let mut bad = Vq::packed(0, 8);
    bad.avail += 2;
    assert!(!setup_queue(&t, &bad));
    assert!(matches!(
        t.take_error(),
        Some(MmioError::QueueSetup {
            index: 0,
            source: Error::MisalignedAddress {
                area: RingArea::DriverArea,
                align: 4,
                ..
            }
        })
    ));

    // After a reset, a driver without RING_PACKED gets split queues, whose
    // size must be a power of two.
    t.w32(0x70, 0);
    assert_eq!(layout_of(&t), QueueLayout::Split);
    assert!(negotiate(&t, VIRTIO_F_VERSION_1));
    assert_eq!(layout_of(&t), QueueLayout::Split);
    assert!(!setup_queue(&t, &Vq::new(0, 7)));
    assert!(matches!(
        t.take_error(),
        Some(MmioError::QueueSetup {
            source: Error::InvalidQueueSize {
                size: 7,
                power_of_two: true,
                ..
            },
            ..
        })
    ));
}

#[test]
fn a_transport_can_withhold_packed_rings() {
    let mem = mem();
    let file = disk();
    let t = transport(block(&file), &mem).with_packed_rings(false);
    let offered = device_features(&t);
    assert_eq!(offered & RING_PACKED, 0);
    assert!(!negotiate(&t, VIRTIO_F_VERSION_1 | RING_PACKED));
    assert!(matches!(
        t.take_error(),
        Some(MmioError::FeaturesNotOffered { .. })
    ));
    // Offering it again restores the device's offer, nothing more.
    let t = t.with_packed_rings(true);
    assert_eq!(device_features(&t), offered | RING_PACKED);
}

#[test]
fn packed_event_suppression_and_indirect_descriptors() {
    let mem = mem();
    let file = disk();
    let t = transport(block(&file), &mem);
    assert!(negotiate(&t, PACKED));
    let mut vq = Vq::packed(0, 4);
    assert!(setup_queue(&t, &vq));
    driver_ok(&t);
    assert_eq!(t.r32(0x70), LIVE);

    // Each request takes 3 slots of the ring of 4. The driver asks, with
    // DESC, for an interrupt when the device uses the descriptor at slot 3
    // of the second lap (wrap bit 0): 4 + 3 = 7 slots in.
    let off_wrap = 3u16; // wrap bit 0: the second lap
    mem.write_obj(off_wrap, GuestAddress(vq.avail)).unwrap();
    mem.write_obj(2u16, GuestAddress(vq.avail + 2)).unwrap(); // DESC
    let id = push_write(&mem, &mut vq, 0, 1, 0x11);
    notify(&t, 0);
    assert_eq!(vq.pop_used(&mem), Some((u32::from(id), 1)));
    assert_eq!(status_of(&mem, 0), VIRTIO_BLK_S_OK);
    assert_eq!(t.r32(0x60), 0, "slots 0..3 do not reach 7");
    // The device asked for a notification at its next descriptor:
    // slot 3, first lap (wrap bit 1), with DESC.
    let dev_off_wrap: u16 = mem.read_obj(GuestAddress(vq.used)).unwrap();
    let dev_flags: u16 = mem.read_obj(GuestAddress(vq.used + 2)).unwrap();
    assert_eq!((dev_off_wrap, dev_flags), (3 | 1 << 15, 2));
    // The second request uses slots 3..6: still short of 7.
    let id = push_write(&mem, &mut vq, 1, 2, 0x22);
    notify(&t, 0);
    assert_eq!(vq.pop_used(&mem), Some((u32::from(id), 1)));
    assert_eq!(t.r32(0x60), 0);
    // The third uses slots 6..9, past 7: interrupt.
    let id = push_write(&mem, &mut vq, 2, 3, 0x33);
    notify(&t, 0);
    assert_eq!(vq.pop_used(&mem), Some((u32::from(id), 1)));
    assert_eq!(t.r32(0x60), INT_USED_BUFFER);
    t.w32(0x64, INT_USED_BUFFER);
    for (s, b) in [(1, 0x11), (2, 0x22), (3, 0x33)] {
        assert_eq!(sector_of(&file, s), vec![b; 512]);
    }

    // ENABLE: every used buffer interrupts. An indirect table of three
    // descriptors behind one ring descriptor.
    mem.write_obj(0u16, GuestAddress(vq.avail + 2)).unwrap();
    let table = BUF + 0x10_0000;
    let base = BUF + 0x1_0000 * 5;
    mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(base)).unwrap();
    mem.write_obj(0u32, GuestAddress(base + 4)).unwrap();
    mem.write_obj(2u64, GuestAddress(base + 8)).unwrap();
    for (i, (addr, len, flags)) in [
        (base, 16u32, 0u16),
        (base + 0x1000, 512, DESC_F_WRITE),
        (base + 0x3000, 1, DESC_F_WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        let at = table + 16 * i as u64;
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(0u16, GuestAddress(at + 12)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 14)).unwrap();
    }
    let slot = vq.push(&mem, &[r(table, 48)]);
    vq.set_indirect(&mem, slot);
    notify(&t, 0);
    assert_eq!(vq.pop_used(&mem), Some((u32::from(slot), 513)));
    assert_eq!(t.r32(0x60), INT_USED_BUFFER);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(base + 0x1000))
        .unwrap();
    assert_eq!(got, vec![0x22; 512]);
    assert_eq!(t.status() & STATUS_NEEDS_RESET, 0);
}

/// A packed block transport mid-session: four requests done (the ring of
/// 5 wrapped), two available but not processed.
fn mid_session() -> (Arc<Mem>, File, Transport<Block>, Vq, BlkState) {
    let mem = mem();
    let file = disk();
    let t = transport(block(&file), &mem);
    assert!(negotiate(&t, PACKED));
    let mut vq = Vq::packed(0, 5);
    assert!(setup_queue(&t, &vq));
    driver_ok(&t);
    for k in 0..4 {
        push_write(&mem, &mut vq, k, k, 0x40 + k as u8);
        notify(&t, 0);
        assert!(vq.pop_used(&mem).is_some());
    }
    // Published without a notification: the restored device must find them.
    push_write(&mem, &mut vq, 4, 4, 0x44);
    let state = t.save_state();
    (mem, file, t, vq, state)
}

#[test]
fn a_packed_queue_is_saved_with_its_layout_and_continues_after_restore() {
    let (mem, file, old, mut vq, state) = mid_session();
    let QueueState::Packed(q) = state.queues[0].queue else {
        panic!("saved as {:?}", state.queues[0].queue);
    };
    assert!(q.ready && q.event_idx && q.indirect && !q.broken);
    assert_eq!(q.size, 5);
    // 4 requests of 3 slots: 12 slots = two laps and 2; nothing in flight.
    assert_eq!((q.next_avail, q.avail_wrap), (2, true));
    assert_eq!((q.next_used, q.used_wrap, q.in_flight), (2, true, 0));
    drop(old);

    let bytes = postcard::to_stdvec(&state).unwrap();
    let decoded: BlkState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, state);
    let t = driver::restore(block(&file), mem.clone(), irq(), &decoded).unwrap();
    assert_eq!(t.save_state(), state, "a restore changes nothing by itself");
    assert_eq!(layout_of(&t), QueueLayout::Packed);
    assert!(t.resume().unwrap());
    assert_eq!(vq.pop_used(&mem).map(|u| u.1), Some(1));
    assert_eq!(status_of(&mem, 4), VIRTIO_BLK_S_OK);
    assert_eq!(sector_of(&file, 4), vec![0x44; 512]);
    // And on: new requests through the restored transport.
    push_write(&mem, &mut vq, 5, 5, 0x55);
    notify(&t, 0);
    assert_eq!(vq.pop_used(&mem).map(|u| u.1), Some(1));
    assert_eq!(sector_of(&file, 5), vec![0x55; 512]);
    for k in 0..4 {
        assert_eq!(sector_of(&file, k), vec![0x40 + k as u8; 512]);
    }
}

fn restore(mem: &Arc<Mem>, state: &BlkState) -> Result<(), RestoreError> {
    driver::restore(block(&disk()), mem.clone(), irq(), state).map(|_| ())
}

fn with(state: &BlkState, f: impl FnOnce(&mut BlkState)) -> BlkState {
    let mut s = state.clone();
    f(&mut s);
    s
}

#[test]
fn queue_layouts_that_contradict_the_features_are_refused() {
    let (mem, _file, _t, _vq, good) = mid_session();
    assert!(restore(&mem, &good).is_ok());
    let QueueState::Packed(packed) = good.queues[0].queue else {
        panic!("packed expected");
    };
    let split = SplitQueueState {
        max_size: packed.max_size,
        size: 4,
        ready: packed.ready,
        desc_table: packed.desc_ring,
        avail_ring: packed.driver_area,
        used_ring: packed.device_area,
        next_avail: 0,
        next_used: 0,
        event_idx: true,
        indirect: true,
        broken: false,
    };
    // A split queue although RING_PACKED was negotiated.
    let err = restore(
        &mem,
        &with(&good, |s| {
            s.queues[0].queue = QueueState::Split(split);
            s.queues[0].num = 4;
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::QueueLayout {
            index: 0,
            saved: QueueLayout::Split,
            negotiated: QueueLayout::Packed
        })
    ));
    // A packed queue although RING_PACKED was not negotiated.
    let err = restore(&mem, &with(&good, |s| s.driver_features &= !RING_PACKED));
    assert!(matches!(
        err,
        Err(RestoreError::QueueLayout {
            saved: QueueLayout::Packed,
            negotiated: QueueLayout::Split,
            ..
        })
    ));
    // A packed queue before FEATURES_OK (queues are split until then).
    let err = restore(
        &mem,
        &with(&good, |s| {
            s.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
            s.interrupt_status = 0;
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::QueueLayout {
            saved: QueueLayout::Packed,
            negotiated: QueueLayout::Split,
            ..
        })
    ));
    // Packed queue states are validated as the queue itself would.
    let packed_with = |f: &dyn Fn(&mut vmkit_virtio::PackedQueueState)| {
        with(&good, |s| {
            if let QueueState::Packed(q) = &mut s.queues[0].queue {
                f(q);
            }
        })
    };
    let err = restore(&mem, &packed_with(&|q| q.in_flight = 3));
    assert!(matches!(
        err,
        Err(RestoreError::Queue {
            source: Error::InvalidState {
                field: "in_flight",
                ..
            },
            ..
        })
    ));
    let err = restore(&mem, &packed_with(&|q| q.next_avail = 5));
    assert!(matches!(
        err,
        Err(RestoreError::Queue {
            source: Error::InvalidState { .. },
            ..
        })
    ));
    let err = restore(&mem, &packed_with(&|q| q.driver_area += 2));
    assert!(matches!(
        err,
        Err(RestoreError::Queue {
            source: Error::MisalignedAddress {
                area: RingArea::DriverArea,
                ..
            },
            ..
        })
    ));
    let err = restore(&mem, &packed_with(&|q| q.size = 300));
    assert!(matches!(
        err,
        Err(RestoreError::Queue {
            source: Error::InvalidQueueSize { size: 300, .. },
            ..
        })
    ));
    let err = restore(&mem, &packed_with(&|q| q.device_area = MEM_SIZE as u64));
    assert!(matches!(
        err,
        Err(RestoreError::QueueRegister { .. }) | Err(RestoreError::Queue { .. })
    ));
}

#[test]
fn a_withheld_offer_survives_a_restore_and_nothing_else_may_differ() {
    let mem = mem();
    let file = disk();
    let t = transport(block(&file), &mem).with_packed_rings(false);
    let mut vq = Vq::new(0, 8);
    bring_up(&t, &[&vq]);
    push_write(&mem, &mut vq, 0, 0, 0x77);
    notify(&t, 0);
    assert!(vq.pop_used(&mem).is_some());
    let state = t.save_state();
    assert_eq!(state.device_features & RING_PACKED, 0);
    let restored = driver::restore(block(&file), mem.clone(), irq(), &state).unwrap();
    assert_eq!(
        restored.device_features() & RING_PACKED,
        0,
        "still withheld"
    );
    assert_eq!(restored.save_state(), state);
    // Any other difference in the offer is refused.
    let err = restore(
        &mem,
        &with(&state, |s| s.device_features &= !VIRTIO_F_EVENT_IDX),
    );
    assert!(matches!(err, Err(RestoreError::DeviceFeatures { .. })));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Arbitrary packed queue states, with or without RING_PACKED
    /// negotiated, never make a restore panic; one that restores saves back
    /// unchanged and survives being driven.
    #[test]
    fn arbitrary_packed_queue_states_never_panic(
        size in 0u16..300,
        next_avail in 0u16..300,
        next_used in 0u16..300,
        in_flight in 0u16..300,
        wraps in proptest::prelude::any::<(bool, bool)>(),
        flags in proptest::prelude::any::<(bool, bool, bool, bool)>(),
        area in proptest::sample::select(vec![0u64, 2, 4, 0x1_0000, 0x1_1000, MEM_SIZE as u64 - 4]),
        negotiated in proptest::prelude::any::<bool>(),
        consistent in proptest::prelude::any::<bool>(),
    ) {
        // Half the time, an in-flight count that matches the positions (the
        // wrap counters span two laps), so that some states restore.
        let in_flight = if consistent && size > 0 {
            let lap = |i: u16, w: bool| u32::from(i % size) + if w { 0 } else { u32::from(size) };
            let span = 2 * u32::from(size);
            ((lap(next_avail, wraps.0) + span - lap(next_used, wraps.1)) % span) as u16
        } else {
            in_flight
        };
        let (next_avail, next_used) = if consistent && size > 0 {
            (next_avail % size, next_used % size)
        } else {
            (next_avail, next_used)
        };
        let (mem, file, _old, _vq, good) = mid_session();
        let state = with(&good, |s| {
            if !negotiated {
                s.driver_features &= !RING_PACKED;
            }
            s.queues[0].num = u32::from(size);
            s.queues[0].driver = area;
            if let QueueState::Packed(q) = &mut s.queues[0].queue {
                q.size = size;
                (q.next_avail, q.avail_wrap) = (next_avail, wraps.0);
                (q.next_used, q.used_wrap) = (next_used, wraps.1);
                q.in_flight = in_flight;
                q.driver_area = area;
                (q.ready, q.event_idx, q.indirect, q.broken) = flags;
            }
        });
        let restored = driver::restore(block(&file), mem.clone(), irq(), &state);
        if negotiated && consistent && size > 0 && area % 4 == 0 && area < MEM_SIZE as u64 - 4
            && in_flight <= size && size <= 256 && flags.1 && flags.2
        {
            proptest::prop_assert!(restored.is_ok(), "{:?}", restored.err());
        }
        if let Ok(t) = restored {
            proptest::prop_assert!(negotiated, "a packed queue without RING_PACKED restored");
            proptest::prop_assert_eq!(t.save_state(), state);
            let _ = t.resume();
            notify(&t, 0);
            let _ = t.take_error();
        }
    }
}
