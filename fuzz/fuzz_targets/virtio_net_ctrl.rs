//! virtio-net control queue fuzzing: `decode_ctrl` on the raw input, then
//! the real `Net` device processes a control queue built from the input.
//!
//! Input: `[size_log, flags]`, then a guest memory image: control queue
//! descriptor table at 0x0, available ring at 0x200, used ring at 0x300;
//! commands, acknowledgement bytes and indirect tables wherever the image
//! says. flags: 1 EVENT_IDX, 2 INDIRECT_DESC, 4 CTRL_RX, 8 CTRL_MAC_ADDR,
//! 16 CTRL_GUEST_OFFLOADS (with GUEST_CSUM and GUEST_TSO4).
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmkit_virtio::device::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use vmkit_virtio::net::*;
use vmkit_virtio::{Persist, Queue, SplitQueue, VirtioDevice};

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

struct Sink {
    offloads: u64,
}

impl NetBackend for Sink {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            vnet_hdr: true,
            tx_offloads: HOST_OFFLOAD_FEATURES,
            rx_offloads: GUEST_OFFLOAD_FEATURES,
        }
    }
    fn set_rx_offloads(&mut self, offloads: u64) -> io::Result<()> {
        self.offloads = offloads;
        Ok(())
    }
    fn recv(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn send(&mut self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // The pure decoder on the raw bytes.
    if let Ok(CtrlCommand::MacTableSet { unicast, multicast }) = decode_ctrl(data) {
        for t in [&unicast, &multicast] {
            assert!(t.entries.len() <= MAC_TABLE_ENTRIES);
            assert!(!t.overflow || t.entries.is_empty());
        }
    }
    if data.len() < 2 {
        return;
    }
    let size = 1u16 << (data[0] % 6);
    let flags = data[1];
    let mem = common::memory(&data[2..]);

    let mut net = Net::new(Sink { offloads: 0 }, NetOptions::default()).expect("valid options");
    let mut features = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_CTRL_VQ;
    for (bit, f) in [
        (1, VIRTIO_F_EVENT_IDX),
        (2, VIRTIO_F_INDIRECT_DESC),
        (4, VIRTIO_NET_F_CTRL_RX),
        (8, VIRTIO_NET_F_CTRL_MAC_ADDR),
        (
            16,
            VIRTIO_NET_F_CTRL_GUEST_OFFLOADS | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4,
        ),
    ] {
        if flags & bit != 0 {
            features |= f;
        }
    }
    VirtioDevice::<common::Mem>::activate(&mut net, features).expect("consistent features");

    let mut q = SplitQueue::new(256).expect("valid max");
    q.set_size(size).expect("valid size");
    q.set_desc_table(GuestAddress(0)).expect("aligned");
    q.set_avail_ring(GuestAddress(0x200)).expect("aligned");
    q.set_used_ring(GuestAddress(0x300)).expect("aligned");
    q.set_event_idx(flags & 1 != 0);
    q.set_indirect(flags & 2 != 0);
    q.set_ready(true);
    let mut q = Queue::Split(q);
    let result = net.process_queue(CTRLQ, &mut q, &mem);
    let Queue::Split(q) = q else {
        unreachable!("a split queue stays split")
    };
    let done = u64::from(q.next_used());
    if result.is_ok() {
        assert_eq!(q.next_used(), q.next_avail(), "every command returned");
        // Each returned chain was answered (OK or ERR) or dropped as malformed.
        let s = net.stats();
        assert_eq!(s.ctrl_ok + s.ctrl_err + s.bad_chains, done);
    }
    let mac = net.mac();
    assert!(mac[0] & 1 == 0 && mac != [0; 6], "MAC stays unicast");
    assert_eq!(net.rx_offloads() & !(features & GUEST_OFFLOAD_FEATURES), 0);
    assert_eq!(net.backend().offloads, net.rx_offloads());
    let state = net.save_state();
    let mut fresh = Net::new(Sink { offloads: 0 }, NetOptions::default()).expect("valid options");
    fresh.restore_state(&state).expect("own state restores");
    assert_eq!(fresh.save_state(), state);
});
