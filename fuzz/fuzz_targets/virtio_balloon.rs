//! virtio-balloon fuzzing: the real `Balloon` processes one of its queues
//! (inflate, deflate, statistics or free page reporting) built from the
//! input, with a discard back end that checks every range it is given.
//!
//! Input: `[flags, queue, size_log]`, then a guest memory image: descriptor
//! table at 0x0, available ring at 0x200, used ring at 0x300; frame
//! arrays, statistics and reported ranges wherever the image says. flags:
//! 1 EVENT_IDX, 2 INDIRECT_DESC, 4 STATS_VQ, 8 REPORTING, 16 the VMM asks
//! for statistics between two passes. `queue` picks the queue index
//! (modulo the queues the features give).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion};
use vmkit_virtio::balloon::*;
use vmkit_virtio::device::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use vmkit_virtio::{Persist, Queue, SplitQueue, VirtioDevice};

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

/// The back end: every range must be page aligned, non-empty and inside
/// one region; the second region plays a read-only one and is refused.
fn backend(mem: common::Mem) -> impl FnMut(GuestAddress, u64) -> Result<(), DiscardError> {
    move |addr, len| {
        assert!(len > 0 && addr.0 % BALLOON_PAGE_SIZE == 0 && len % BALLOON_PAGE_SIZE == 0);
        let region = mem
            .physical_memory()
            .and_then(|pm| pm.find_region(addr))
            .expect("discarded range starts in RAM");
        let end = addr.0.checked_add(len).expect("no wrap");
        assert!(end <= region.start_addr().0 + region.len(), "range ends in RAM");
        if region.start_addr().0 != 0 {
            return Err(DiscardError {
                addr: addr.0,
                len,
                source: "read-only".into(),
            });
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (flags, queue, size) = (data[0], data[1], 1u16 << (data[2] % 6));
    let mem = common::memory(&data[3..]);
    let mut features = VIRTIO_F_VERSION_1;
    for (bit, f) in [
        (1, VIRTIO_F_EVENT_IDX),
        (2, VIRTIO_F_INDIRECT_DESC),
        (4, VIRTIO_BALLOON_F_STATS_VQ),
        (8, VIRTIO_BALLOON_F_REPORTING),
    ] {
        if flags & bit != 0 {
            features |= f;
        }
    }
    let mut balloon = Balloon::new(backend(mem.clone()), BalloonOptions::default());
    VirtioDevice::<common::Mem>::activate(&mut balloon, features).expect("valid features");
    let queues = 2 + u8::from(flags & 4 != 0) + u8::from(flags & 8 != 0);
    let index = u16::from(queue % queues);

    let mut q = SplitQueue::new(256).expect("valid max");
    q.set_size(size).expect("valid size");
    q.set_desc_table(GuestAddress(0)).expect("aligned");
    q.set_avail_ring(GuestAddress(0x200)).expect("aligned");
    q.set_used_ring(GuestAddress(0x300)).expect("aligned");
    q.set_event_idx(flags & 1 != 0);
    q.set_indirect(flags & 2 != 0);
    q.set_ready(true);
    let mut q = Queue::Split(q);
    let mut result = balloon.process_queue(index, &mut q, &mem);
    if result.is_ok() && flags & 16 != 0 {
        balloon.request_stats();
        result = balloon.process_queue(index, &mut q, &mem);
    }
    let Queue::Split(q) = q else {
        unreachable!("a split queue stays split")
    };
    if result.is_ok() && Some(index) != balloon.stats_queue() {
        assert_eq!(q.next_used(), q.next_avail(), "every chain returned");
    }
    let c = balloon.counters();
    assert!(c.inflated_pages + c.deflated_pages <= u64::from(q.next_used()) * MAX_PFNS_PER_CHAIN as u64);
    let state = balloon.save_state();
    let mut fresh = Balloon::new(backend(mem.clone()), BalloonOptions::default());
    fresh.restore_state(&state).expect("own state restores");
    assert_eq!(fresh.save_state(), state);
});
