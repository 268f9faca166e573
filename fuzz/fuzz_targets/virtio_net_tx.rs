//! virtio-net data path fuzzing: the real `Net` device transmits the chains
//! of a split queue built from the input (`TxPacket::parse` and the header
//! rules), then places frames from an in-memory backend into receive
//! chains built from the input (merged buffers or not).
//!
//! Input: `[size_log, flags, offloads, frame_lens…(4 bytes)]`, then a guest
//! memory image: receive queue descriptor table at 0x0, available ring at
//! 0x200, used ring at 0x300; transmit queue at 0x800 / 0xa00 / 0xb00;
//! headers, frames and indirect tables wherever the image says. Received
//! frames are cut from the image at 0x4000 with lengths `16 * frame_len`.
//!
//! flags: 1 EVENT_IDX, 2 INDIRECT_DESC, 4 MRG_RXBUF, 8 backend with a
//! virtio-net header, 16 backend refuses sends, 32 link down, 64 MTU 1280,
//! 128 vectored backend (frames taken in place from guest memory).
//! offloads: bit k selects the k-th of CSUM, HOST_TSO4, HOST_TSO6,
//! HOST_ECN, GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, GUEST_ECN.
#![no_main]

use std::collections::VecDeque;
use std::io;

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;
use vmkit_virtio::device::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use vmkit_virtio::net::*;
use vmkit_virtio::{Persist, Queue, SplitQueue, VirtioDevice};

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

const OFFLOADS: [u64; 8] = [
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN,
];

/// Frames in memory; records what was sent.
struct MemBackend {
    caps: BackendCapabilities,
    rx: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    fail: bool,
    vectored: bool,
}

impl NetBackend for MemBackend {
    fn capabilities(&self) -> BackendCapabilities {
        self.caps
    }
    fn set_rx_offloads(&mut self, offloads: u64) -> io::Result<()> {
        assert_eq!(
            offloads & !self.caps.rx_offloads,
            0,
            "offloads never offered"
        );
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.rx.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        if self.fail {
            return Err(io::Error::other("injected"));
        }
        self.sent.push(packet.to_vec());
        Ok(())
    }
    fn vectored(&self) -> bool {
        self.vectored
    }
}

fn queue(size: u16, base: u64, flags: u8) -> SplitQueue {
    let mut q = SplitQueue::new(256).expect("valid max");
    q.set_size(size).expect("valid size");
    q.set_desc_table(GuestAddress(base)).expect("aligned");
    q.set_avail_ring(GuestAddress(base + 0x200))
        .expect("aligned");
    q.set_used_ring(GuestAddress(base + 0x300))
        .expect("aligned");
    q.set_event_idx(flags & 1 != 0);
    q.set_indirect(flags & 2 != 0);
    q.set_ready(true);
    q
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 7 {
        return;
    }
    let size = 1u16 << (data[0] % 6); // 1..=32: rings fit below 0x800 + 0x400
    let flags = data[1];
    let offload_bits = data[2];
    let image = &data[7..];
    let mem = common::memory(image);

    let vnet = flags & 8 != 0;
    let host_offloads: u64 = (0..4)
        .filter(|k| offload_bits & (1 << k) != 0)
        .map(|k| OFFLOADS[k])
        .sum();
    let guest_offloads: u64 = (4..8)
        .filter(|k| offload_bits & (1 << k) != 0)
        .map(|k| OFFLOADS[k])
        .sum();
    let caps = BackendCapabilities {
        vnet_hdr: vnet,
        tx_offloads: HOST_OFFLOAD_FEATURES,
        rx_offloads: GUEST_OFFLOAD_FEATURES,
    };
    // Frames for the receive side, cut from the image.
    let mut rx = VecDeque::new();
    let mut at = 0x4000usize;
    for &l in &data[3..7] {
        let len = usize::from(l) * 16;
        let end = (at + len).min(image.len());
        rx.push_back(image.get(at.min(end)..end).unwrap_or(&[]).to_vec());
        at = end;
    }
    let frames = rx.len() as u64;
    let backend = MemBackend {
        caps,
        rx,
        sent: Vec::new(),
        fail: flags & 16 != 0,
        vectored: flags & 128 != 0,
    };
    let opts = NetOptions {
        mtu: (flags & 64 != 0).then_some(1280),
        ..NetOptions::default()
    };
    let mut net = Net::new(backend, opts).expect("valid options");
    let offered = VirtioDevice::<common::Mem>::features(&net);
    let mut features = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MTU;
    if flags & 1 != 0 {
        features |= VIRTIO_F_EVENT_IDX;
    }
    if flags & 2 != 0 {
        features |= VIRTIO_F_INDIRECT_DESC;
    }
    if flags & 4 != 0 {
        features |= VIRTIO_NET_F_MRG_RXBUF;
    }
    features |= host_offloads | guest_offloads;
    features &= offered;
    if VirtioDevice::<common::Mem>::activate(&mut net, features).is_err() {
        // Only a feature set that breaks a dependency is refused.
        let tso_without_csum = features & (VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6) != 0
            && features & VIRTIO_NET_F_CSUM == 0;
        let gtso_without_csum = features & (VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6) != 0
            && features & VIRTIO_NET_F_GUEST_CSUM == 0;
        let ecn = (features & VIRTIO_NET_F_HOST_ECN != 0
            && features & (VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6) == 0)
            || (features & VIRTIO_NET_F_GUEST_ECN != 0
                && features & (VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6) == 0);
        assert!(
            tso_without_csum || gtso_without_csum || ecn,
            "features {features:#x} refused"
        );
        return;
    }
    if flags & 32 != 0 {
        net.set_link_up(false);
    }

    let txq = queue(size, 0x800, flags);
    let mut txq = Queue::Split(txq);
    let tx = net.process_queue(TXQ, &mut txq, &mem);
    let Queue::Split(txq) = txq else {
        unreachable!("a split queue stays split")
    };
    if tx.is_ok() {
        assert_eq!(
            txq.next_used(),
            txq.next_avail(),
            "every transmit chain returned"
        );
    } else {
        assert!(txq.is_broken() || txq.next_used() == txq.next_avail());
    }
    let acked = net.acked_features();
    for p in &net.backend().sent {
        let frame_len = if vnet {
            assert!(p.len() >= NET_HDR_LEN + MIN_FRAME_LEN);
            let hdr = NetHeader::from_bytes(p[..NET_HDR_LEN].try_into().expect("12 bytes"));
            assert_eq!(hdr.num_buffers, 0);
            hdr.validate_tx(acked, p.len() - NET_HDR_LEN)
                .expect("only valid headers go out");
            p.len() - NET_HDR_LEN
        } else {
            p.len()
        };
        assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame_len));
    }

    let rxq = queue(size, 0, flags);
    let mut rxq = Queue::Split(rxq);
    let rx = net.process_queue(RXQ, &mut rxq, &mem);
    let Queue::Split(rxq) = rxq else {
        unreachable!("a split queue stays split")
    };
    if rx.is_ok() {
        assert_eq!(rxq.next_used(), rxq.next_avail(), "no chain kept in flight");
    }
    let s = net.stats();
    assert!(
        s.rx_frames + s.rx_dropped_invalid + s.rx_dropped_too_big + s.rx_dropped_link_down
            <= frames
    );
    let total =
        s.tx_frames + s.tx_malformed + s.tx_backend_errors + s.tx_dropped_link_down + s.bad_chains;
    assert!(total <= 2 * u64::from(vmkit_virtio::device::PROCESS_BUDGET));
    let _ = net.save_state();
});
