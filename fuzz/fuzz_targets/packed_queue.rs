//! Packed queue fuzzing. Input: `[size, flags]` (flags: 1 EVENT_IDX,
//! 2 INDIRECT_DESC, 4 batch access, 8 return each list at once), then a guest memory image:
//! descriptor ring at 0x0, driver event area at 0x400, device event area at
//! 0x404, indirect tables and buffers wherever the image says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmkit_virtio::{PackedQueue, MAX_INDIRECT_DESCRIPTORS};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let size = u16::from(data[0] % 64) + 1; // 1..=64: the ring fits below 0x400
    let flags = data[1];
    let mem = common::memory(&data[2..]);

    let mut q = PackedQueue::new(64).expect("valid max");
    q.set_size(size).expect("valid size");
    q.set_desc_ring(GuestAddress(0)).expect("aligned");
    q.set_driver_area(GuestAddress(0x400)).expect("aligned");
    q.set_device_area(GuestAddress(0x404)).expect("aligned");
    q.set_event_idx(flags & 1 != 0);
    q.set_indirect(flags & 2 != 0);
    q.set_ready(true);

    let use_access = flags & 4 != 0;
    let mut used = Vec::new();
    for _ in 0..64 {
        let popped = if use_access {
            q.access(&mem).and_then(|mut a| a.pop())
        } else {
            q.pop(&mem)
        };
        let chain = match popped {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => break,
        };
        assert!(chain.desc_count() >= 1 && chain.desc_count() <= size);
        let (id, count) = (chain.id(), chain.desc_count());
        let mut n = 0u32;
        let mut written = 0u32;
        for d in chain {
            n += 1;
            assert!(n <= u32::from(size) + MAX_INDIRECT_DESCRIPTORS);
            let Ok(d) = d else { break };
            common::touch(&mem, d.addr(), d.len(), d.is_write_only());
            if d.is_write_only() {
                written = written.saturating_add(d.len());
            }
        }
        used.push((id, written, count));
        if flags & 8 != 0 {
            let (i, w, c) = used.pop().expect("just pushed");
            if use_access {
                let mut a = q.access(&mem).expect("ring resolved before");
                a.add_used(i, w, c).expect("descriptors in flight");
            } else {
                q.add_used(&mem, i, w, c).expect("descriptors in flight");
            }
            let _ = q.needs_notification(&mem);
        }
    }
    for (i, w, c) in used {
        q.add_used(&mem, i, w, c).expect("descriptors in flight");
    }
    let _ = q.needs_notification(&mem);
    let _ = q.enable_notification(&mem);
    let _ = q.disable_notification(&mem);
    let saved = q.state();
    assert_eq!(
        PackedQueue::from_state(&saved).expect("own state").state(),
        saved
    );
});
