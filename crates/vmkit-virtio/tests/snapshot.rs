//! Saving and restoring a virtio-mmio transport with its device and queues:
//! continuity (no replay, no loss), corrupt states refused, serde round
//! trips, and arbitrary states never panicking.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod driver;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use driver::*;
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};
use vmkit_virtio::blk::*;
use vmkit_virtio::console::{Console, ConsoleState, RECEIVEQ, TRANSMITQ};
use vmkit_virtio::device::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use vmkit_virtio::mmio::*;
use vmkit_virtio::{Error, Persist, QueueState, RingArea, SplitQueueState, StateError};

/// The split state of a queue the tests know is split.
trait SplitOf {
    fn sq(&self) -> &SplitQueueState;
    fn sq_mut(&mut self) -> &mut SplitQueueState;
}

impl SplitOf for QueueState {
    fn sq(&self) -> &SplitQueueState {
        self.as_split().expect("a split queue")
    }
    fn sq_mut(&mut self) -> &mut SplitQueueState {
        self.as_split_mut().expect("a split queue")
    }
}
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

const SECTORS: u64 = 64;
const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC;
const LIVE: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

/// The saved state of a block device's transport.
type BlkState = MmioTransportState<BlockState>;

fn irq() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

fn disk(sectors: u64) -> File {
    let f = TempFile::new().unwrap().into_file();
    f.set_len(sectors * 512).unwrap();
    f
}

fn block(file: &File) -> Block {
    Block::new(file.try_clone().unwrap(), BlockOptions::default()).unwrap()
}

/// Brings a device up with `FEATURES` and the given queues.
fn bring_up_with_features<D: vmkit_virtio::VirtioDevice<Mem>>(t: &Transport<D>, queues: &[&Vq]) {
    assert!(negotiate(t, FEATURES));
    for q in queues {
        assert!(setup_queue(t, q));
    }
    driver_ok(t);
    assert_eq!(t.r32(0x70), LIVE);
}

fn used_idx(mem: &Mem, vq: &Vq) -> u16 {
    mem.read_obj(GuestAddress(vq.used + 2)).unwrap()
}

fn sector_of(file: &File, s: u64) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    file.read_exact_at(&mut b, s * 512).unwrap();
    b
}

/// A block transport mid-session: three requests done, two available but
/// not yet processed (their notification had not been handled).
fn mid_session() -> (Arc<Mem>, File, Transport<Block>, Vq, BlkState) {
    let file = disk(SECTORS);
    let mem = mem();
    let t = transport(block(&file), &mem);
    let mut vq = Vq::new(0, 16);
    bring_up_with_features(&t, &[&vq]);
    for k in 0..3 {
        push_write(&mem, &mut vq, k, k, 0x10 + k as u8);
    }
    notify(&t, 0);
    for k in 0..3u64 {
        assert_eq!(vq.pop_used(&mem).map(|(_, len)| len), Some(1));
        assert_eq!(status_of(&mem, k), VIRTIO_BLK_S_OK);
    }
    for k in 3..5 {
        push_write(&mem, &mut vq, k, k, 0x10 + k as u8);
    }
    let state = t.save_state();
    (mem, file, t, vq, state)
}

#[test]
fn a_restored_block_device_continues_without_replay_or_loss() {
    let (mem, file, old, mut vq, state) = mid_session();
    assert_eq!(state.status, LIVE);
    assert_eq!(state.driver_features, FEATURES);
    let q = *state.queues[0].queue.sq();
    assert!(q.ready && q.event_idx && q.indirect && !q.broken);
    assert_eq!((q.next_avail, q.next_used), (3, 3));
    assert_eq!(state.device.capacity, SECTORS);
    assert_eq!(state.device.stats.ok, 3);
    assert_eq!(
        (state.device_kind.as_str(), state.device_version),
        ("virtio-blk", 1)
    );
    drop(old);

    // Through the wire format, into a fresh device on the same disk.
    let bytes = postcard::to_stdvec(&state).unwrap();
    let decoded: BlkState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(decoded, state);
    let t = restore(block(&file), mem.clone(), irq(), &decoded).unwrap();
    assert_eq!(t.status(), LIVE);
    assert_eq!(t.driver_features(), FEATURES);
    assert_eq!(t.save_state(), state, "a restore changes nothing by itself");
    assert_eq!(used_idx(&mem, &vq), 3, "restore touches no guest memory");

    // The two pending requests are processed once, after the three done.
    assert!(t.resume().unwrap());
    assert!(t.interrupt_evt().read().unwrap() >= 1);
    assert_eq!(used_idx(&mem, &vq), 5);
    for k in 3..5u64 {
        assert_eq!(vq.pop_used(&mem).map(|(_, len)| len), Some(1));
        assert_eq!(status_of(&mem, k), VIRTIO_BLK_S_OK);
    }
    assert_eq!(vq.pop_used(&mem), None);
    for k in 0..5u64 {
        assert_eq!(sector_of(&file, k), vec![0x10 + k as u8; 512]);
    }
    // The driver carries on: notifications work, indices continue.
    push_write(&mem, &mut vq, 5, 9, 0x99);
    notify(&t, 0);
    assert_eq!(vq.pop_used(&mem).map(|(_, len)| len), Some(1));
    assert_eq!(used_idx(&mem, &vq), 6);
    assert_eq!(sector_of(&file, 9), vec![0x99; 512]);
    assert_eq!(t.with_device(|b| b.stats().ok), 6);
    // A second resume finds nothing to do.
    t.w32(0x64, INT_USED_BUFFER);
    assert!(!t.resume().unwrap());
    assert_eq!(used_idx(&mem, &vq), 6);
}

#[test]
fn a_restored_console_keeps_its_pending_input() {
    let mem = mem();
    let t = transport(Console::new(Vec::new()), &mem);
    let mut rx = Vq::new(0, 8);
    let mut tx = Vq::new(1, 8);
    bring_up_with_features(&t, &[&rx, &tx]);
    mem.write_slice(b"out", GuestAddress(BUF)).unwrap();
    tx.push(&mem, &[r(BUF, 3)]);
    notify(&t, u32::from(TRANSMITQ));
    assert!(tx.pop_used(&mem).is_some());
    assert_eq!(t.with_device(|c| c.enqueue_input(b"typed")), 5);
    let state = t.save_state();
    assert_eq!(
        state.device,
        ConsoleState {
            input: b"typed".to_vec(),
            stats: t.with_device(|c| c.stats()),
        }
    );

    let restored = restore(Console::new(Vec::new()), mem.clone(), irq(), &state).unwrap();
    // No receive buffers yet: nothing is delivered. The first check of each
    // restored queue interrupts the driver (spurious, never lost).
    assert!(restored.resume().unwrap());
    assert_eq!(restored.with_device(|c| c.pending_input()), 5);
    let head = rx.push(&mem, &[w(BUF + 0x100, 64)]);
    notify(&restored, u32::from(RECEIVEQ));
    assert_eq!(rx.pop_used(&mem), Some((u32::from(head), 5)));
    let mut b = [0u8; 5];
    mem.read_slice(&mut b, GuestAddress(BUF + 0x100)).unwrap();
    assert_eq!(&b, b"typed");
    assert_eq!(restored.with_device(|c| c.stats().tx_bytes), 3);
    assert_eq!(restored.with_device(|c| c.stats().rx_bytes), 5);

    // Input beyond the fresh console's limit is refused.
    let small = Console::with_input_limit(Vec::new(), 4);
    assert!(matches!(
        restore(small, mem.clone(), irq(), &state),
        Err(RestoreError::Device(StateError::TooLarge {
            field: "input",
            len: 5,
            limit: 4
        }))
    ));
}

#[test]
fn a_state_saved_before_driver_ok_restores_the_pending_registers() {
    let file = disk(SECTORS);
    let mem = mem();
    let t = transport(block(&file), &mem);
    let vq = Vq::new(0, 8);
    assert!(negotiate(&t, FEATURES));
    // The driver wrote the queue registers, not yet QueueReady.
    t.w32(0x30, 0);
    t.w32(0x38, 8);
    t.w32(0x80, vq.desc as u32);
    t.w32(0x90, vq.avail as u32);
    t.w32(0xa0, vq.used as u32);
    let state = t.save_state();
    assert!(!state.queues[0].queue.sq().ready);
    let r = restore(block(&file), mem.clone(), irq(), &state).unwrap();
    // The driver finishes its bring-up on the restored device.
    r.w32(0x44, 1);
    assert_eq!(r.r32(0x44), 1);
    driver_ok(&r);
    assert_eq!(r.r32(0x70), LIVE);
    assert_eq!(r.take_error().map(|e| e.to_string()), None);
}

/// Restores `state` into a fresh default block device of `SECTORS`.
fn restore_blk(mem: &Arc<Mem>, state: &BlkState) -> Result<(), RestoreError> {
    let file = disk(SECTORS);
    restore(block(&file), mem.clone(), irq(), state).map(drop)
}

fn with_queue(state: &BlkState, f: impl FnOnce(&mut MmioQueueState)) -> BlkState {
    let mut s = state.clone();
    f(&mut s.queues[0]);
    s
}

fn with(state: &BlkState, f: impl FnOnce(&mut BlkState)) -> BlkState {
    let mut s = state.clone();
    f(&mut s);
    s
}

#[test]
fn corrupt_states_are_refused_with_the_field_named() {
    let (mem, _file, _t, _vq, good) = mid_session();
    restore_blk(&mem, &good).unwrap();

    let err = restore_blk(&mem, &with(&good, |s| s.driver_features |= 1)).unwrap_err();
    assert!(matches!(err, RestoreError::FeaturesNotOffered { driver, .. } if driver & 1 == 1));
    assert!(err.to_string().contains("0x1 not offered"), "{err}");

    let err = restore_blk(
        &mem,
        &with(&good, |s| s.driver_features &= !VIRTIO_F_VERSION_1),
    );
    assert!(matches!(err, Err(RestoreError::VersionNotAccepted { .. })));

    let err = restore_blk(
        &mem,
        &with(&good, |s| {
            s.status = STATUS_DRIVER_OK | STATUS_DRIVER | STATUS_ACKNOWLEDGE
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::Status {
            reason: "DRIVER_OK without FEATURES_OK",
            ..
        })
    ));
    let err = restore_blk(&mem, &with(&good, |s| s.status = STATUS_DRIVER));
    assert!(matches!(err, Err(RestoreError::Status { status: 2, .. })));
    let err = restore_blk(
        &mem,
        &with(&good, |s| {
            s.status = STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK
        }),
    );
    assert!(matches!(err, Err(RestoreError::Status { .. })));

    let err = restore_blk(&mem, &with(&good, |s| s.interrupt_status = 4));
    assert!(matches!(
        err,
        Err(RestoreError::InterruptStatus { value: 4, .. })
    ));
    let err = restore_blk(
        &mem,
        &with(&good, |s| {
            s.status = STATUS_ACKNOWLEDGE;
            s.interrupt_status = INT_USED_BUFFER;
            s.queues[0].queue.sq_mut().event_idx = false;
            s.queues[0].queue.sq_mut().indirect = false;
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::InterruptStatus { value: 1, .. })
    ));

    let err = restore_blk(
        &mem,
        &with(&good, |s| s.driver_features_beyond_64 = Some((2, 1))),
    );
    assert!(matches!(
        err,
        Err(RestoreError::FeaturesBeyond64 {
            sel: 2,
            value: 1,
            ..
        })
    ));
    let err = restore_blk(
        &mem,
        &with(&good, |s| {
            s.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
            s.driver_features_beyond_64 = Some((1, 1));
            s.queues[0].queue.sq_mut().event_idx = false;
            s.queues[0].queue.sq_mut().indirect = false;
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::FeaturesBeyond64 { sel: 1, .. })
    ));

    // Queue size not a power of two (registers kept consistent).
    let err = restore_blk(
        &mem,
        &with_queue(&good, |q| {
            q.num = 6;
            q.queue.sq_mut().size = 6;
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::Queue {
            index: 0,
            source: Error::InvalidQueueSize { size: 6, .. }
        })
    ));
    // Ring outside guest memory.
    let err = restore_blk(
        &mem,
        &with_queue(&good, |q| {
            q.desc = MEM_SIZE as u64;
            q.queue.sq_mut().desc_table = MEM_SIZE as u64;
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::Queue {
            index: 0,
            source: Error::AreaOutOfMemory {
                area: RingArea::DescriptorTable,
                ..
            }
        })
    ));
    // Ring straddling the end of guest memory.
    let err = restore_blk(
        &mem,
        &with_queue(&good, |q| {
            q.device = MEM_SIZE as u64 - 8;
            q.queue.sq_mut().used_ring = MEM_SIZE as u64 - 8;
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::Queue {
            source: Error::AreaOutOfMemory {
                area: RingArea::UsedRing,
                ..
            },
            ..
        })
    ));
    // Misaligned ring.
    let err = restore_blk(
        &mem,
        &with_queue(&good, |q| {
            q.driver += 1;
            q.queue.sq_mut().avail_ring += 1;
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::Queue {
            source: Error::MisalignedAddress {
                area: RingArea::AvailRing,
                ..
            },
            ..
        })
    ));
    // next_used ahead of next_avail.
    let err = restore_blk(
        &mem,
        &with_queue(&good, |q| {
            q.queue.sq_mut().next_used = q.queue.sq_mut().next_avail + 1
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::Queue {
            source: Error::InvalidState { value: 0xffff, .. },
            ..
        })
    ));
    // More in flight than the queue holds.
    let err = restore_blk(
        &mem,
        &with_queue(&good, |q| {
            q.queue.sq_mut().next_avail = q.queue.sq_mut().next_used + 17
        }),
    );
    assert!(matches!(
        err,
        Err(RestoreError::Queue {
            source: Error::InvalidState { value: 17, .. },
            ..
        })
    ));
    // A ready queue whose registers differ from the queue.
    let err = restore_blk(&mem, &with_queue(&good, |q| q.num = 4));
    assert!(matches!(
        err,
        Err(RestoreError::QueueRegister {
            register: "QueueNum",
            value: 4,
            queue: 16,
            ..
        })
    ));
    let err = restore_blk(&mem, &with_queue(&good, |q| q.desc = 0x8000));
    assert!(matches!(
        err,
        Err(RestoreError::QueueRegister {
            register: "QueueDesc",
            ..
        })
    ));
    // Flags that disagree with the negotiated features.
    let err = restore_blk(
        &mem,
        &with_queue(&good, |q| q.queue.sq_mut().event_idx = false),
    );
    assert!(matches!(
        err,
        Err(RestoreError::QueueFeatureFlag {
            flag: "event_idx",
            saved: false,
            negotiated: true,
            ..
        })
    ));
    let err = restore_blk(
        &mem,
        &with(&good, |s| s.driver_features &= !VIRTIO_F_INDIRECT_DESC),
    );
    assert!(matches!(
        err,
        Err(RestoreError::QueueFeatureFlag {
            flag: "indirect",
            ..
        })
    ));
    // Queue shape that is not the device's.
    let err = restore_blk(
        &mem,
        &with_queue(&good, |q| q.queue.sq_mut().max_size = 1024),
    );
    assert!(matches!(
        err,
        Err(RestoreError::QueueMaxSize {
            saved: 1024,
            device: 256,
            ..
        })
    ));
    let err = restore_blk(&mem, &with(&good, |s| s.queues.push(s.queues[0])));
    assert!(matches!(
        err,
        Err(RestoreError::QueueCount {
            saved: 2,
            device: 1
        })
    ));
    let err = restore_blk(&mem, &with(&good, |s| s.queues.clear()));
    assert!(matches!(
        err,
        Err(RestoreError::QueueCount { saved: 0, .. })
    ));
    // Another device.
    let err = restore_blk(&mem, &with(&good, |s| s.device_type = 3));
    assert!(matches!(
        err,
        Err(RestoreError::DeviceType {
            saved: 3,
            device: 2
        })
    ));
    let err = restore_blk(&mem, &with(&good, |s| s.device_features |= 1));
    assert!(matches!(err, Err(RestoreError::DeviceFeatures { .. })));
    let ro = Block::new(
        disk(SECTORS),
        BlockOptions {
            read_only: true,
            ..BlockOptions::default()
        },
    )
    .unwrap();
    assert!(matches!(
        restore(ro, mem.clone(), irq(), &good),
        Err(RestoreError::DeviceFeatures { .. })
    ));
    // The device's state of another kind, or in another version.
    let err = restore_blk(&mem, &with(&good, |s| s.device_kind = "virtio-scsi".into()));
    assert!(
        matches!(&err, Err(RestoreError::DeviceKind { saved, device: "virtio-blk" }) if saved == "virtio-scsi"),
        "{err:?}"
    );
    let err = restore_blk(&mem, &with(&good, |s| s.device_version = 2));
    assert!(matches!(
        err,
        Err(RestoreError::DeviceVersion {
            saved: 2,
            device: 1
        })
    ));
    // A disk of another size.
    let bigger = Block::new(disk(SECTORS * 2), BlockOptions::default()).unwrap();
    let err = restore(bigger, mem.clone(), irq(), &good).map(drop);
    assert!(matches!(
        err,
        Err(RestoreError::Device(StateError::Mismatch {
            field: "capacity (sectors)",
            ..
        }))
    ));
    let other_id = Block::new(
        disk(SECTORS),
        BlockOptions {
            id: "other".into(),
            ..BlockOptions::default()
        },
    )
    .unwrap();
    let err = restore(other_id, mem.clone(), irq(), &good).map(drop);
    assert!(matches!(
        err,
        Err(RestoreError::Device(StateError::Mismatch {
            field: "id",
            ..
        }))
    ));
    // Corrupt states leave nothing behind: the good one still restores.
    restore_blk(&mem, &good).unwrap();
}

#[test]
fn reachable_odd_states_are_accepted() {
    let (mem, _file, _t, _vq, good) = mid_session();
    // FAILED and DEVICE_NEEDS_RESET can be added to any status.
    for extra in [
        STATUS_FAILED,
        STATUS_NEEDS_RESET,
        STATUS_FAILED | STATUS_NEEDS_RESET,
    ] {
        restore_blk(&mem, &with(&good, |s| s.status |= extra)).unwrap();
    }
    // Before FEATURES_OK, the driver may have written any feature bits.
    let early = with(&good, |s| {
        s.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        s.driver_features = u64::MAX;
        s.driver_features_beyond_64 = Some((7, 1));
        s.interrupt_status = 0;
        s.queues[0].queue.sq_mut().event_idx = false;
        s.queues[0].queue.sq_mut().indirect = false;
    });
    restore_blk(&mem, &early).unwrap();
    // A queue that is not ready keeps whatever the driver wrote to its registers.
    restore_blk(
        &mem,
        &with_queue(&good, |q| {
            q.queue.sq_mut().ready = false;
            q.num = u32::MAX;
            q.desc = u64::MAX;
        }),
    )
    .unwrap();
    // A broken queue restores broken.
    let broken = with(&good, |s| {
        s.status |= STATUS_NEEDS_RESET;
        s.queues[0].queue.sq_mut().broken = true;
    });
    let file = disk(SECTORS);
    let t = restore(block(&file), mem.clone(), irq(), &broken).unwrap();
    assert!(
        !t.resume().unwrap(),
        "a device needing a reset does nothing"
    );
    assert_eq!(t.save_state(), broken);
}

#[test]
fn a_boxed_device_persists_as_the_device_it_holds() {
    let (mem, file, t, _vq, _state) = mid_session();
    let boxed = transport(Box::new(block(&file)), &mem);
    assert_eq!(boxed.save_state().device, block(&file).save_state());
    assert_eq!(<Transport<Box<Block>>>::KIND, "virtio-mmio");
    let state = t.save_state();
    let restored = restore(Box::new(block(&file)), mem.clone(), irq(), &state).unwrap();
    assert_eq!(restored.save_state(), state);
}

#[test]
fn a_transport_in_use_is_not_restored_into() {
    let (_mem, file, t, _vq, state) = mid_session();
    let mut used = t;
    assert!(matches!(
        used.restore_state(&state),
        Err(RestoreError::NotReset { status: LIVE })
    ));
    // Once the driver reset it, it is as good as fresh.
    used.w32(0x70, 0);
    used.restore_state(&state).unwrap();
    assert_eq!(used.save_state(), state);
    drop(file);
}

#[test]
fn a_console_transport_state_is_refused_by_a_block_transport() {
    let mem = mem();
    let t = transport(Console::new(Vec::new()), &mem);
    let (rx, tx) = (Vq::new(0, 8), Vq::new(1, 8));
    bring_up_with_features(&t, &[&rx, &tx]);
    let bytes = postcard::to_stdvec(&t.save_state()).unwrap();
    // Its bytes either do not decode as a block transport's state, or are
    // refused by name (a block transport's own state with the console's
    // device_kind is refused with DeviceKind: see
    // corrupt_states_are_refused_with_the_field_named).
    if let Ok(state) = postcard::from_bytes::<BlkState>(&bytes) {
        let err = restore_blk(&mem, &state).unwrap_err();
        assert!(
            matches!(
                err,
                RestoreError::DeviceType { .. }
                    | RestoreError::DeviceKind { .. }
                    | RestoreError::QueueCount { .. }
            ),
            "{err}"
        );
    }
}

#[test]
fn queue_states_round_trip_through_postcard() {
    let s = SplitQueueState {
        max_size: 256,
        size: 64,
        ready: true,
        desc_table: 0x1000,
        avail_ring: 0x2000,
        used_ring: 0x3000,
        next_avail: 65535,
        next_used: 65530,
        event_idx: true,
        indirect: false,
        broken: false,
    };
    let bytes = postcard::to_stdvec(&s).unwrap();
    assert_eq!(postcard::from_bytes::<SplitQueueState>(&bytes).unwrap(), s);
    let p = vmkit_virtio::PackedQueueState {
        max_size: 100,
        size: 100,
        in_flight: 3,
        ..Default::default()
    };
    let bytes = postcard::to_stdvec(&p).unwrap();
    assert_eq!(
        postcard::from_bytes::<vmkit_virtio::PackedQueueState>(&bytes).unwrap(),
        p
    );
}

/// A disk in memory, so that property cases need no files.
struct MemDisk(Vec<u8>);

impl BlockBackend for MemDisk {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = offset as usize;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let at = offset as usize;
        self.0[at..at + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn mem_block() -> Block<MemDisk> {
    Block::with_backend(MemDisk(vec![0; 8 * 512]), 8 * 512, BlockOptions::default()).unwrap()
}

/// A valid state of a [`mem_block`] transport: freshly reset, mid-negotiation,
/// or live with a ready queue of 16 and `in_flight` chains in flight.
fn base_state(kind: u8, next_used: u16, in_flight: u16) -> BlkState {
    let offered = {
        let mem = mem();
        transport(mem_block(), &mem).device_features()
    };
    let fresh = SplitQueueState {
        max_size: QUEUE_MAX_SIZE,
        size: QUEUE_MAX_SIZE,
        ..SplitQueueState::default()
    };
    let vq = Vq::new(0, 16);
    let live = SplitQueueState {
        max_size: QUEUE_MAX_SIZE,
        size: 16,
        ready: true,
        desc_table: vq.desc,
        avail_ring: vq.avail,
        used_ring: vq.used,
        next_avail: next_used.wrapping_add(in_flight % 17),
        next_used,
        event_idx: true,
        indirect: true,
        broken: false,
    };
    let (status, driver_features, queue) = match kind % 3 {
        0 => (0, 0, fresh),
        1 => (STATUS_ACKNOWLEDGE | STATUS_DRIVER, FEATURES, fresh),
        _ => (LIVE, FEATURES, live),
    };
    BlkState {
        device_type: 2,
        device_features: offered,
        device_features_sel: 0,
        driver_features,
        driver_features_sel: 1,
        driver_features_beyond_64: None,
        queue_sel: 0,
        status,
        interrupt_status: 0,
        config_generation: 0,
        shm_sel: 0,
        queues: vec![MmioQueueState {
            num: u32::from(queue.size),
            desc: queue.desc_table,
            driver: queue.avail_ring,
            device: queue.used_ring,
            queue: QueueState::Split(queue),
        }],
        device_kind: "virtio-blk".into(),
        device_version: 1,
        device: mem_block().save_state(),
    }
}

/// `Some(value)` now and then: a field to overwrite.
fn sometimes<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.08, s)
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (0u64..0x50).prop_map(|k| k * 0x1000),
        2 => 0u64..MEM_SIZE as u64 + 0x100,
        1 => any::<u64>(),
    ]
}

/// Valid states with a few fields overwritten by anything.
fn transport_state() -> impl Strategy<Value = BlkState> {
    let base = (any::<u8>(), any::<u16>(), any::<u16>())
        .prop_map(|(kind, next_used, in_flight)| base_state(kind, next_used, in_flight));
    let header = (
        sometimes(prop_oneof![Just(3u32), any::<u32>()]),
        sometimes(any::<u64>()),
        sometimes(any::<u64>()),
        sometimes(prop_oneof![0u32..0x100, any::<u32>()]),
        sometimes(any::<u32>()),
        sometimes(any::<Option<(u32, u32)>>()),
        sometimes(any::<[u32; 5]>()),
    );
    let queue = (
        sometimes(any::<u16>()),
        sometimes(prop_oneof![
            (0u32..16).prop_map(|k| 1u16 << k),
            any::<u16>()
        ]),
        sometimes(any::<bool>()),
        sometimes((addr(), addr(), addr())),
        sometimes((any::<u16>(), any::<u16>())),
        sometimes(any::<[bool; 3]>()),
        sometimes((any::<u32>(), addr(), addr(), addr())),
    );
    let device = sometimes((any::<u64>(), any::<bool>(), "[a-z-]{0,24}").prop_map(
        |(capacity, read_only, id)| BlockState {
            capacity,
            read_only,
            id,
            stats: BlockStats::default(),
        },
    ));
    let device_tag = sometimes(("[a-z-]{0,12}", any::<u16>()));
    let queues = sometimes(0usize..4);
    (base, header, queue, (device, device_tag), queues).prop_map(
        |(mut s, h, q, (device, tag), queues)| {
            let (device_type, device_features, driver_features, status, irq, beyond, sels) = h;
            s.device_type = device_type.unwrap_or(s.device_type);
            s.device_features = device_features.unwrap_or(s.device_features);
            s.driver_features = driver_features.unwrap_or(s.driver_features);
            s.status = status.unwrap_or(s.status);
            s.interrupt_status = irq.unwrap_or(s.interrupt_status);
            s.driver_features_beyond_64 = beyond.unwrap_or(s.driver_features_beyond_64);
            if let Some(sels) = sels {
                s.device_features_sel = sels[0];
                s.driver_features_sel = sels[1];
                s.queue_sel = sels[2];
                s.config_generation = sels[3];
                s.shm_sel = sels[4];
            }
            let (max, size, ready, rings, indices, flags, regs) = q;
            let slot = &mut s.queues[0];
            slot.queue.sq_mut().max_size = max.unwrap_or(slot.queue.sq_mut().max_size);
            if let Some(size) = size {
                slot.queue.sq_mut().size = size;
                slot.num = u32::from(size);
            }
            slot.queue.sq_mut().ready = ready.unwrap_or(slot.queue.sq_mut().ready);
            if let Some((d, a, u)) = rings {
                (
                    slot.queue.sq_mut().desc_table,
                    slot.queue.sq_mut().avail_ring,
                    slot.queue.sq_mut().used_ring,
                ) = (d, a, u);
                (slot.desc, slot.driver, slot.device) = (d, a, u);
            }
            if let Some((a, u)) = indices {
                (
                    slot.queue.sq_mut().next_avail,
                    slot.queue.sq_mut().next_used,
                ) = (a, u);
            }
            if let Some([e, i, b]) = flags {
                (
                    slot.queue.sq_mut().event_idx,
                    slot.queue.sq_mut().indirect,
                    slot.queue.sq_mut().broken,
                ) = (e, i, b);
            }
            if let Some((num, d, a, u)) = regs {
                (slot.num, slot.desc, slot.driver, slot.device) = (num, d, a, u);
            }
            s.device = device.unwrap_or(s.device);
            if let Some((kind, version)) = tag {
                (s.device_kind, s.device_version) = (kind, version);
            }
            if let Some(n) = queues {
                s.queues
                    .resize(n, s.queues.first().copied().unwrap_or_default());
            }
            s
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary states never panic on restore; a state that restores saves
    /// back unchanged, and the restored device survives being driven.
    #[test]
    fn arbitrary_states_never_panic(state in transport_state()) {
        let mem = mem();
        // Driver memory as a live driver leaves it: used.idx = next_used.
        let q = state
            .queues
            .first()
            .and_then(|q| q.queue.as_split().copied())
            .unwrap_or_default();
        let _ = mem.write_obj(q.next_used, GuestAddress(q.used_ring.wrapping_add(2)));
        let _ = mem.write_obj(q.next_avail, GuestAddress(q.avail_ring.wrapping_add(2)));
        let bytes = postcard::to_stdvec(&state).unwrap();
        prop_assert_eq!(&postcard::from_bytes::<BlkState>(&bytes).unwrap(), &state);
        if let Ok(t) = restore(mem_block(), mem.clone(), irq(), &state) {
            prop_assert_eq!(t.save_state(), state);
            let _ = t.resume();
            notify(&t, 0);
            t.w32(0x44, 1);
            t.w32(0x70, 0);
        }
    }

    /// Arbitrary bytes never panic the decoder, nor a restore of what it decodes.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(state) = postcard::from_bytes::<BlkState>(&bytes) {
            let mem = mem();
            let _ = restore(mem_block(), mem, irq(), &state);
        }
    }
}

#[test]
fn a_transport_goes_through_a_state_file_and_is_read_as_nothing_else() {
    use vmkit_snapshot::{Arch, Backend, Expected, Snapshot, StateError as FileError, Writer};
    let (mem, file, t, _vq, state) = mid_session();
    let mut bytes = Vec::new();
    let mut w = Writer::new(&mut bytes, Arch::X86_64, Backend::Kvm, [0; 32]);
    w.write_device(4, &t).unwrap();
    w.finish().unwrap();
    let expected = Expected {
        arch: Arch::X86_64,
        backend: Backend::Kvm,
    };
    let snap = Snapshot::from_bytes(&bytes, expected).unwrap();
    let read = snap.read_device::<Transport<Block>>(4).unwrap();
    assert_eq!(read, state);
    let restored = restore(block(&file), mem.clone(), irq(), &read).unwrap();
    assert_eq!(restored.save_state(), state);
    // The section is a transport's, not a bare device's.
    let err = snap.read_device::<Block>(4).unwrap_err();
    assert!(
        matches!(&err, FileError::WrongDeviceKind { expected: "virtio-blk", found, .. } if found == "virtio-mmio"),
        "{err}"
    );
    // Nor a console transport's: its state does not decode, or is refused by name.
    match snap.read_device::<Transport<Console<Vec<u8>>>>(4) {
        Err(FileError::Decode { .. }) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(console_state) => {
            let err = restore(Console::new(Vec::new()), mem, irq(), &console_state).unwrap_err();
            assert!(
                matches!(
                    err,
                    RestoreError::DeviceType { .. } | RestoreError::DeviceKind { .. }
                ),
                "{err}"
            );
        }
    }
}
