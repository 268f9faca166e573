//! Split queue fuzzing. Input: `[size_log, flags, start_lo, start_hi]`
//! (flags: 1 EVENT_IDX, 2 INDIRECT_DESC, 4 batch access, 8 return each
//! chain at once; start: the initial ring index), then
//! a guest memory image: descriptor table at 0x0, available ring at 0x200,
//! used ring at 0x300, indirect tables and buffers wherever the image says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmkit_virtio::{SplitQueue, MAX_INDIRECT_DESCRIPTORS};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let size = 1u16 << (data[0] % 6); // 1..=32: rings fit below 0x400
    let flags = data[1];
    let start = u16::from_le_bytes([data[2], data[3]]);
    let mem = common::memory(&data[4..]);

    let mut q = SplitQueue::new(32).expect("valid max");
    q.set_size(size).expect("valid size");
    q.set_desc_table(GuestAddress(0)).expect("aligned");
    q.set_avail_ring(GuestAddress(0x200)).expect("aligned");
    q.set_used_ring(GuestAddress(0x300)).expect("aligned");
    q.set_event_idx(flags & 1 != 0);
    q.set_indirect(flags & 2 != 0);
    let use_access = flags & 4 != 0;
    let mut state = q.state();
    state.next_avail = start;
    state.next_used = start;
    state.ready = true;
    let mut q = SplitQueue::from_state(&state).expect("valid state");

    let mut heads = Vec::new();
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
        assert!(chain.head_index() < size);
        let head = chain.head_index();
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
        heads.push((head, written));
        if flags & 8 != 0 {
            // Return as we go (interleaved) rather than at the end.
            let (h, w) = heads.pop().expect("just pushed");
            q.add_used(&mem, h, w).expect("head in flight");
            let _ = q.needs_notification(&mem);
        }
    }
    for (h, w) in heads {
        q.add_used(&mem, h, w).expect("head in flight");
    }
    let _ = q.needs_notification(&mem);
    let _ = q.enable_notification(&mem);
    let _ = q.disable_notification(&mem);
    let saved = q.state();
    assert_eq!(
        SplitQueue::from_state(&saved).expect("own state").state(),
        saved
    );
});
