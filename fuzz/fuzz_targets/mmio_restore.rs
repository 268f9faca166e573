//! virtio-mmio transport restore fuzzing: an untrusted `MmioTransportState`
//! (split or packed queues) restored around a fresh console, then driven.
//!
//! Input: `[flags, mask_lo, mask_hi]`, then field values, then a guest
//! memory image. The state starts as a consistent live console (driver
//! features from `flags`: bit 0 RING_PACKED, bit 1 EVENT_IDX, bit 2
//! INDIRECT_DESC; bit 3 saves queue 0 in the other layout); each set bit
//! of the 16-bit mask replaces a group of fields with raw values read from
//! the input, so that mutations reach each check behind the others. The
//! memory image follows the values (see `common::memory`): queue 0 at
//! 0x0/0x1000/0x1100, queue 1 at 0x2000/0x3000/0x3100.
//!
//! Invariants: restore never panics; a state that restores saves back
//! unchanged; the restored transport survives resume, notifications,
//! console input and a reset.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemoryMmap;
use vmkit_virtio::console::{Console, ConsoleState, ConsoleStats};
use vmkit_virtio::device::{
    VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1,
};
use vmkit_virtio::mmio::{
    MmioQueueState, MmioTransport, MmioTransportState, STATUS_ACKNOWLEDGE, STATUS_DRIVER,
    STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};
use vmkit_virtio::{PackedQueueState, Persist, QueueState, SplitQueueState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[path = "common.rs"]
#[allow(dead_code)] // `touch` is for the queue targets
mod common;

/// Reads little-endian values; zero once the input is used up.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let n = N.min(self.0.len());
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        b
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

const MAX: u16 = 256; // the console's queue size
const AREAS: [[u64; 3]; 2] = [[0x0, 0x1000, 0x1100], [0x2000, 0x3000, 0x3100]];

fn queue(packed: bool, index: usize, ready: bool, ev: bool, ind: bool) -> QueueState {
    let [desc, driver, device] = AREAS[index];
    if packed {
        QueueState::Packed(PackedQueueState {
            max_size: MAX,
            size: 16,
            ready,
            desc_ring: desc,
            driver_area: driver,
            device_area: device,
            next_avail: 0,
            avail_wrap: true,
            next_used: 0,
            used_wrap: true,
            in_flight: 0,
            event_idx: ev,
            indirect: ind,
            broken: false,
        })
    } else {
        QueueState::Split(SplitQueueState {
            max_size: MAX,
            size: 16,
            ready,
            desc_table: desc,
            avail_ring: driver,
            used_ring: device,
            next_avail: 0,
            next_used: 0,
            event_idx: ev,
            indirect: ind,
            broken: false,
        })
    }
}

/// Overwrites the queue's fields with raw values, group by group.
fn perturb(q: &mut QueueState, mask: u16, r: &mut Reader<'_>) {
    match q {
        QueueState::Split(s) => {
            if mask & 0x10 != 0 {
                (s.max_size, s.size, s.ready) = (r.u16(), r.u16(), r.bool());
            }
            if mask & 0x20 != 0 {
                (s.desc_table, s.avail_ring, s.used_ring) = (r.u64(), r.u64(), r.u64());
            }
            if mask & 0x40 != 0 {
                (s.next_avail, s.next_used) = (r.u16(), r.u16());
            }
            if mask & 0x80 != 0 {
                (s.event_idx, s.indirect, s.broken) = (r.bool(), r.bool(), r.bool());
            }
        }
        QueueState::Packed(s) => {
            if mask & 0x10 != 0 {
                (s.max_size, s.size, s.ready) = (r.u16(), r.u16(), r.bool());
            }
            if mask & 0x20 != 0 {
                (s.desc_ring, s.driver_area, s.device_area) = (r.u64(), r.u64(), r.u64());
            }
            if mask & 0x40 != 0 {
                (s.next_avail, s.avail_wrap) = (r.u16(), r.bool());
                (s.next_used, s.used_wrap) = (r.u16(), r.bool());
                s.in_flight = r.u16();
            }
            if mask & 0x80 != 0 {
                (s.event_idx, s.indirect, s.broken) = (r.bool(), r.bool(), r.bool());
            }
        }
    }
}

fn console() -> Console<std::io::Sink> {
    Console::with_input_limit(std::io::sink(), 256)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let mask = u16::from_le_bytes([data[1], data[2]]);
    let mut r = Reader(&data[3..]);

    let packed = flags & 1 != 0;
    let ev = flags & 2 != 0;
    let ind = flags & 4 != 0;
    let mut driver_features = VIRTIO_F_VERSION_1;
    if packed {
        driver_features |= VIRTIO_F_RING_PACKED;
    }
    if ev {
        driver_features |= VIRTIO_F_EVENT_IDX;
    }
    if ind {
        driver_features |= VIRTIO_F_INDIRECT_DESC;
    }
    let irq = || EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let mem0 = std::sync::Arc::new(common::memory(&[]));
    let offered = MmioTransport::new(console(), mem0, irq())
        .expect("a console")
        .device_features();

    let mut queues: Vec<MmioQueueState> = (0..2)
        .map(|i| {
            let layout_packed = packed != (i == 0 && flags & 8 != 0);
            let [desc, driver, device] = AREAS[i];
            MmioQueueState {
                num: 16,
                desc,
                driver,
                device,
                queue: queue(layout_packed, i, true, ev, ind),
            }
        })
        .collect();
    let mut state = MmioTransportState {
        device_type: 3,
        device_features: offered,
        device_features_sel: 0,
        driver_features,
        driver_features_sel: 0,
        driver_features_beyond_64: None,
        queue_sel: 0,
        status: STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        interrupt_status: 0,
        config_generation: 0,
        shm_sel: 0,
        queues: Vec::new(),
        device_kind: <Console<std::io::Sink> as Persist>::KIND.to_string(),
        device_version: <Console<std::io::Sink> as Persist>::VERSION,
        device: ConsoleState {
            input: Vec::new(),
            stats: ConsoleStats::default(),
        },
    };
    if mask & 1 != 0 {
        state.device_features = r.u64();
        state.driver_features = r.u64();
    }
    if mask & 2 != 0 {
        state.status = r.u32();
        state.interrupt_status = r.u32();
    }
    if mask & 4 != 0 {
        let (sel, value) = (r.u32(), r.u32());
        state.driver_features_beyond_64 = r.bool().then_some((sel, value));
        state.queue_sel = r.u32();
    }
    if mask & 8 != 0 {
        let n = usize::from(r.u8() % 4);
        state.device = ConsoleState {
            input: r.0.get(..n).map(<[u8]>::to_vec).unwrap_or_default(),
            stats: ConsoleStats::default(),
        };
    }
    let which = usize::from(r.u8() & 1);
    if let Some(q) = queues.get_mut(which) {
        perturb(&mut q.queue, mask, &mut r);
        if mask & 0x100 != 0 {
            (q.num, q.desc, q.driver, q.device) = (r.u32(), r.u64(), r.u64(), r.u64());
        } else {
            q.num = u32::from(q.queue.size());
            [q.desc, q.driver, q.device] = q.queue.areas();
        }
    }
    if mask & 0x200 != 0 {
        queues.truncate(usize::from(r.u8() % 3));
    }
    state.queues = queues;

    let mem: std::sync::Arc<GuestMemoryMmap<()>> = std::sync::Arc::new(common::memory(r.0));
    let Ok(mut t) = MmioTransport::new(console(), mem.clone(), irq()) else {
        return;
    };
    if t.restore_state(&state).is_err() {
        return;
    }
    assert_eq!(t.save_state(), state, "a restore changes nothing by itself");
    let _ = t.resume();
    for i in 0..2 {
        let _ = t.process_queue(i);
    }
    t.with_device(|c| c.enqueue_input(b"fuzz"));
    let _ = t.process_queue(0);
    t.write(0x50, &1u32.to_le_bytes());
    let saved = t.save_state();
    if let Ok(mut again) = MmioTransport::new(console(), mem.clone(), irq()) {
        if again.restore_state(&saved).is_ok() {
            assert_eq!(again.save_state(), saved);
        }
    }
    // Reset: queues back to split, fresh.
    t.write(0x70, &0u32.to_le_bytes());
    let _ = t.take_error();
    assert!(t
        .save_state()
        .queues
        .iter()
        .all(|q| matches!(q.queue, QueueState::Split(_))));
});
