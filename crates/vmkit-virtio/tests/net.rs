//! virtio-net through the virtio-mmio transport, driven through registers
//! and descriptor chains in guest memory like a real driver, over an
//! in-memory backend. (The TAP backend has its own tests in `vmkit-net`.)

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod driver;

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use driver::*;
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};
use vmkit_virtio::device::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use vmkit_virtio::mmio::*;
use vmkit_virtio::net::*;
use vmkit_virtio::{Persist, QueueLayout, StateError, VirtioDevice};

const MAC: MacAddr = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01];
const PEER: MacAddr = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0x02];
const V1: u64 = VIRTIO_F_VERSION_1;

/// Frames in queues; optional header; optional failures.
#[derive(Debug, Default)]
struct MemBackend {
    caps: BackendCapabilities,
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    offloads: Vec<u64>,
    send_error: Option<io::ErrorKind>,
    /// Take this many more packets, then would block.
    send_room: Option<usize>,
    refuse_offloads: bool,
    /// Take packets in place (`send_vectored`, `recv_vectored`: the
    /// trait's default copies, standing in for `writev`/`readv`).
    vectored: bool,
}

impl MemBackend {
    fn plain() -> Self {
        MemBackend::default()
    }

    /// With a virtio-net header and every offload.
    fn offloading() -> Self {
        MemBackend {
            caps: BackendCapabilities {
                vnet_hdr: true,
                tx_offloads: HOST_OFFLOAD_FEATURES,
                rx_offloads: GUEST_OFFLOAD_FEATURES,
            },
            ..MemBackend::default()
        }
    }
}

impl NetBackend for MemBackend {
    fn capabilities(&self) -> BackendCapabilities {
        self.caps
    }

    fn set_rx_offloads(&mut self, offloads: u64) -> io::Result<()> {
        if self.refuse_offloads {
            return Err(io::Error::other("refused"));
        }
        self.offloads.push(offloads);
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let f = self.rx.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }

    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        if let Some(kind) = self.send_error {
            return Err(kind.into());
        }
        match &mut self.send_room {
            Some(0) => return Err(io::ErrorKind::WouldBlock.into()),
            Some(n) => *n -= 1,
            None => {}
        }
        self.tx.push(packet.to_vec());
        Ok(())
    }

    fn vectored(&self) -> bool {
        self.vectored
    }
}

type Dev = Net<MemBackend>;

struct Setup {
    mem: Arc<Mem>,
    t: Transport<Dev>,
    rx: Vq,
    tx: Vq,
    ctrl: Vq,
}

fn device(backend: MemBackend, opts: NetOptions) -> Dev {
    Net::new(backend, opts).unwrap()
}

fn opts() -> NetOptions {
    NetOptions {
        mac: MAC,
        ..NetOptions::default()
    }
}

/// Brings the device up with `features` (plus VERSION_1) and all queues.
fn setup_with(dev: Dev, features: u64) -> Setup {
    let mem = mem();
    let t = transport(dev, &mem);
    // Packed queues when the features say so; 60 is not a power of two.
    let size = if features & RING_PACKED != 0 { 60 } else { 64 };
    let (rx, tx, ctrl) = (
        Vq::for_features(0, size, features),
        Vq::for_features(1, size, features),
        Vq::for_features(2, size, features),
    );
    assert!(negotiate(&t, features | V1), "{:?}", t.take_error());
    let queues = t.r32(0x34); // QueueNumMax of the selected queue; all the same
    assert!(queues > 0);
    for q in [&rx, &tx] {
        assert!(setup_queue(&t, q));
    }
    if features & VIRTIO_NET_F_CTRL_VQ != 0 {
        assert!(setup_queue(&t, &ctrl));
    }
    driver_ok(&t);
    let layout = t.queue_state(0).unwrap().layout();
    assert_eq!(layout == QueueLayout::Packed, features & RING_PACKED != 0);
    Setup {
        mem,
        t,
        rx,
        tx,
        ctrl,
    }
}

thread_local! {
    /// Whether [`setup`] gives the device a vectored backend.
    static VECTORED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn setup(features: u64) -> Setup {
    let mut b = MemBackend::plain();
    b.vectored = VECTORED.get();
    setup_with(device(b, opts()), features)
}

/// Runs a test whose [`setup`] gives the device a vectored backend.
fn in_place(test: impl FnOnce()) {
    VECTORED.set(true);
    test();
    VECTORED.set(false);
}

/// An Ethernet frame to `dst` with `len` bytes in all.
fn frame(dst: MacAddr, len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&[0x08, 0x00]);
    while f.len() < len {
        f.push(seed.wrapping_add(f.len() as u8));
    }
    f.truncate(len);
    f
}

/// The MAC address in the configuration space, read bytewise (the
/// transport takes 1, 2, 4 and 8-byte accesses).
fn config_mac(t: &Transport<Dev>) -> MacAddr {
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        let mut one = [0u8; 1];
        t.read(0x100 + i as u64, &mut one);
        *b = one[0];
    }
    mac
}

fn hdr_bytes(h: NetHeader) -> Vec<u8> {
    h.to_bytes().to_vec()
}

impl Setup {
    fn stats(&self) -> NetStats {
        self.t.with_device(|d| d.stats())
    }

    /// Writes `bytes` at `addr` and returns it.
    fn put(&self, addr: u64, bytes: &[u8]) -> u64 {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        addr
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Transmits one chain; returns the used entry.
    fn transmit(&mut self, bufs: &[Buf]) -> (u32, u32) {
        let head = self.tx.push(&self.mem, bufs);
        notify(&self.t, 1);
        let used = self.tx.pop_used(&self.mem).expect("chain returned");
        assert_eq!(used.0, u32::from(head));
        used
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        self.t.with_device(|d| d.backend().tx.clone())
    }

    /// Queues frames in the backend and lets the device read them (as a
    /// VMM does when the TAP is readable).
    fn arrive(&self, frames: &[Vec<u8>]) {
        self.t
            .with_device(|d| d.backend_mut().rx.extend(frames.iter().cloned()));
        self.t.process_queue(RXQ).unwrap();
    }

    /// Sends a control command; returns (used len, ack byte).
    fn command(&mut self, bytes: &[u8]) -> (u32, u8) {
        let cmd = self.put(BUF + 0x8_0000, bytes);
        let ack = self.put(BUF + 0x9_0000, &[0xee]);
        let head = self
            .ctrl
            .push(&self.mem, &[r(cmd, bytes.len() as u32), w(ack, 1)]);
        notify(&self.t, 2);
        let (id, len) = self.ctrl.pop_used(&self.mem).expect("command completed");
        assert_eq!(id, u32::from(head));
        (len, self.read(ack, 1)[0])
    }
}

#[test]
fn identifies_as_a_network_device_and_offers_what_the_backend_honours() {
    let mem = mem();
    let t = transport(device(MemBackend::plain(), opts()), &mem);
    assert_eq!(t.r32(0x8), 1, "device id 1: network card");
    let f = device_features(&t);
    for want in [
        V1,
        vmkit_virtio::device::VIRTIO_F_RING_PACKED,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_CTRL_RX,
        VIRTIO_NET_F_CTRL_MAC_ADDR,
        VIRTIO_NET_F_GUEST_ANNOUNCE,
    ] {
        assert_ne!(f & want, 0, "{want:#x} offered");
    }
    // No header in the backend: no offload at all.
    assert_eq!(f & (HOST_OFFLOAD_FEATURES | GUEST_OFFLOAD_FEATURES), 0);
    assert_eq!(f & (VIRTIO_NET_F_CTRL_GUEST_OFFLOADS | VIRTIO_NET_F_MTU), 0);
    for q in 0..3 {
        t.w32(0x30, q);
        assert_eq!(t.r32(0x34), 256);
    }
    t.w32(0x30, 3);
    assert_eq!(t.r32(0x34), 0, "no fourth queue");
    // Config: mac, status (link up), max_virtqueue_pairs.
    assert_eq!(config_mac(&t), MAC);
    let mut st = [0u8; 2];
    t.read(0x106, &mut st);
    assert_eq!(u16::from_le_bytes(st), VIRTIO_NET_S_LINK_UP);

    // A backend with a header and every offload: all of them offered.
    let t = transport(device(MemBackend::offloading(), opts()), &mem);
    let f = device_features(&t);
    assert_eq!(f & HOST_OFFLOAD_FEATURES, HOST_OFFLOAD_FEATURES);
    assert_eq!(f & GUEST_OFFLOAD_FEATURES, GUEST_OFFLOAD_FEATURES);
    assert_ne!(f & VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, 0);

    // A backend that claims TSO but no checksum offload: TSO needs CSUM,
    // so neither is offered; ECN without TSO neither.
    let mut b = MemBackend::offloading();
    b.caps.tx_offloads = VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_ECN;
    b.caps.rx_offloads = VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_ECN;
    let t = transport(device(b, opts()), &mem);
    let f = device_features(&t);
    assert_eq!(f & HOST_OFFLOAD_FEATURES, 0);
    assert_eq!(f & GUEST_OFFLOAD_FEATURES, VIRTIO_NET_F_GUEST_CSUM);

    // Options: no control queue (two queues), no merged buffers, an MTU.
    let o = NetOptions {
        ctrl_queue: false,
        mrg_rxbuf: false,
        mtu: Some(9000),
        ..opts()
    };
    let t = transport(device(MemBackend::offloading(), o), &mem);
    let f = device_features(&t);
    assert_eq!(f & (VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_MRG_RXBUF), 0);
    assert_eq!(f & VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, 0);
    assert_ne!(f & VIRTIO_NET_F_MTU, 0);
    t.w32(0x30, 2);
    assert_eq!(t.r32(0x34), 0);
    let mut mtu = [0u8; 2];
    t.read(0x10a, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 9000);
}

#[test]
fn invalid_options_are_refused() {
    let bad_mac = NetOptions {
        mac: [0x01, 0, 0x5e, 0, 0, 1],
        ..opts()
    };
    assert!(matches!(
        Net::new(MemBackend::plain(), bad_mac),
        Err(NetError::InvalidMac { .. })
    ));
    let zero = NetOptions {
        mac: [0; 6],
        ..opts()
    };
    assert!(Net::new(MemBackend::plain(), zero).is_err());
    let mtu = NetOptions {
        mtu: Some(67),
        ..opts()
    };
    let e = Net::new(MemBackend::plain(), mtu).unwrap_err();
    assert!(e.to_string().contains("67"), "{e}");
    let q = NetOptions {
        queue_size: 0,
        ..opts()
    };
    assert!(Net::new(MemBackend::plain(), q).is_err());
}

#[test]
fn transmits_frames_with_the_header_split_anywhere() {
    transmits_frames_with_the_header_split_anywhere_with(0);
}

#[test]
fn transmits_frames_with_the_header_split_anywhere_on_packed_rings() {
    transmits_frames_with_the_header_split_anywhere_with(RING_PACKED);
}

fn transmits_frames_with_the_header_split_anywhere_with(layout: u64) {
    let mut s = setup(layout);
    let f1 = frame(PEER, 60, 1);
    let f2 = frame(PEER, 1514, 2);
    let f3 = frame(PEER, 100, 3);
    let hdr = hdr_bytes(NetHeader::default());
    // Header and frame in one buffer.
    let a = s.put(BUF, &[hdr.clone(), f1.clone()].concat());
    assert_eq!(s.transmit(&[r(a, 72)]).1, 0);
    // Header split 5 + 7, the rest with the frame.
    let all = [hdr.clone(), f2.clone()].concat();
    let a = s.put(BUF + 0x1000, &all[..5]);
    let b = s.put(BUF + 0x2000, &all[5..]);
    s.transmit(&[r(a, 5), r(b, (all.len() - 5) as u32)]);
    // Header alone, frame in three pieces, one of them empty.
    let h = s.put(BUF + 0x3000, &hdr);
    let p = s.put(BUF + 0x4000, &f3[..10]);
    let q = s.put(BUF + 0x5000, &f3[10..]);
    s.transmit(&[r(h, 12), r(p, 10), r(q, 0), r(q, 90)]);
    assert_eq!(s.sent(), vec![f1, f2, f3], "frames without header");
    let st = s.stats();
    assert_eq!(st.tx_frames, 3);
    assert_eq!(st.tx_bytes, 60 + 1514 + 100);
    assert_eq!(st.tx_malformed, 0);
    assert_eq!(s.t.r32(0x60) & INT_USED_BUFFER, INT_USED_BUFFER);
}

#[test]
fn malformed_transmit_chains_are_dropped_counted_and_returned() {
    let mut s = setup_with(
        device(MemBackend::offloading(), opts()),
        VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4,
    );
    let f = frame(PEER, 200, 7);
    let send = |s: &mut Setup, h: NetHeader, frame: &[u8]| {
        let a = s.put(BUF, &[hdr_bytes(h), frame.to_vec()].concat());
        s.transmit(&[r(a, (12 + frame.len()) as u32)])
    };
    let cases: Vec<(&str, NetHeader, usize)> = vec![
        (
            "DATA_VALID from the driver",
            NetHeader {
                flags: VIRTIO_NET_HDR_F_DATA_VALID,
                ..NetHeader::default()
            },
            200,
        ),
        (
            "checksum beyond the frame",
            NetHeader {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                csum_start: 190,
                csum_offset: 16,
                ..NetHeader::default()
            },
            200,
        ),
        (
            "TSOv6 not negotiated",
            NetHeader {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
                gso_size: 1000,
                csum_start: 54,
                csum_offset: 16,
                ..NetHeader::default()
            },
            200,
        ),
        (
            "TSO with ECN, HOST_ECN not negotiated",
            NetHeader {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN,
                gso_size: 1000,
                csum_start: 34,
                csum_offset: 16,
                ..NetHeader::default()
            },
            200,
        ),
        (
            "TSO without NEEDS_CSUM",
            NetHeader {
                gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
                gso_size: 1000,
                ..NetHeader::default()
            },
            200,
        ),
        (
            "TSO with gso_size 0",
            NetHeader {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
                csum_start: 34,
                csum_offset: 16,
                ..NetHeader::default()
            },
            200,
        ),
        (
            "unknown GSO type",
            NetHeader {
                gso_type: 2,
                ..NetHeader::default()
            },
            200,
        ),
        (
            "hdr_len beyond the frame",
            NetHeader {
                hdr_len: 201,
                ..NetHeader::default()
            },
            200,
        ),
        ("13-byte frame", NetHeader::default(), 13),
    ];
    for (what, h, len) in &cases {
        let (_, used) = send(&mut s, *h, &f[..*len]);
        assert_eq!(used, 0, "{what}");
    }
    assert_eq!(s.stats().tx_malformed, cases.len() as u64);
    assert!(s.sent().is_empty());
    // A writable buffer in a transmit chain.
    let a = s.put(BUF, &[hdr_bytes(NetHeader::default()), f.clone()].concat());
    s.transmit(&[r(a, 212), w(BUF + 0x1000, 10)]);
    // More than the largest packet (spread over two buffers).
    s.transmit(&[r(BUF, 40_000), r(BUF, 40_000)]);
    // A buffer outside guest memory: rejected by the queue.
    s.transmit(&[r(a, 12), r(MEM_SIZE as u64 - 4, 100)]);
    let st = s.stats();
    assert_eq!(st.tx_malformed, cases.len() as u64 + 2);
    assert_eq!(st.bad_chains, 1);
    // The device still works, and a valid offloaded frame goes out with
    // its header (num_buffers zeroed).
    let tso = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 7,
    };
    send(&mut s, tso, &f);
    let sent = s.sent();
    assert_eq!(sent.len(), 1);
    let expect = NetHeader {
        num_buffers: 0,
        ..tso
    };
    assert_eq!(sent[0], [hdr_bytes(expect), f.clone()].concat());
    assert_eq!(s.t.status() & STATUS_NEEDS_RESET, 0);
}

#[test]
fn transmit_above_the_mtu_is_dropped_when_mtu_was_negotiated() {
    let o = NetOptions {
        mtu: Some(576),
        ..opts()
    };
    let mut s = setup_with(device(MemBackend::plain(), o), VIRTIO_NET_F_MTU);
    let hdr = hdr_bytes(NetHeader::default());
    for (len, sent) in [(576 + 18, 1), (576 + 19, 1)] {
        let a = s.put(BUF, &[hdr.clone(), frame(PEER, len, 0)].concat());
        s.transmit(&[r(a, (12 + len) as u32)]);
        assert_eq!(s.sent().len(), sent, "{len}-byte frame");
    }
    assert_eq!(s.stats().tx_malformed, 1);
}

#[test]
fn receives_a_frame_into_one_chain_without_merged_buffers() {
    receives_a_frame_into_one_chain_without_merged_buffers_with(0);
}

#[test]
fn receives_a_frame_into_one_chain_without_merged_buffers_on_packed_rings() {
    receives_a_frame_into_one_chain_without_merged_buffers_with(RING_PACKED);
}

fn receives_a_frame_into_one_chain_without_merged_buffers_with(layout: u64) {
    let mut s = setup(layout);
    let h = s.rx.push(&s.mem, &[w(BUF, 12), w(BUF + 0x100, 1514)]);
    let f = frame(MAC, 100, 9);
    s.arrive(std::slice::from_ref(&f));
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(h), 112)));
    let hdr = NetHeader::from_bytes(&s.read(BUF, 12).try_into().unwrap());
    assert_eq!(
        hdr,
        NetHeader {
            num_buffers: 1,
            ..NetHeader::default()
        }
    );
    assert_eq!(s.read(BUF + 0x100, 100), f);
    assert_eq!(s.stats().rx_frames, 1);
    assert_eq!(s.stats().rx_bytes, 100);
    assert_eq!(s.t.r32(0x60) & INT_USED_BUFFER, INT_USED_BUFFER);
    // A frame too large for the next chain is dropped; the chain is kept
    // for the next frame.
    let h = s.rx.push(&s.mem, &[w(BUF, 12 + 64)]);
    s.arrive(&[frame(MAC, 65, 1), frame(MAC, 64, 2)]);
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(h), 76)));
    assert_eq!(s.read(BUF + 12, 64), frame(MAC, 64, 2));
    assert_eq!(s.stats().rx_dropped_too_big, 1);
    assert!(!s.t.with_device(|d| d.rx_waiting_for_buffers()));
}

#[test]
fn merged_buffers_spread_a_frame_over_chains() {
    merged_buffers_spread_a_frame_over_chains_with(0);
}

#[test]
fn merged_buffers_spread_a_frame_over_chains_on_packed_rings() {
    merged_buffers_spread_a_frame_over_chains_with(RING_PACKED);
}

fn merged_buffers_spread_a_frame_over_chains_with(layout: u64) {
    let mut s = setup(VIRTIO_NET_F_MRG_RXBUF | layout);
    let heads: Vec<u16> = (0..4)
        .map(|i| s.rx.push(&s.mem, &[w(BUF + 0x1000 * i, 64)]))
        .collect();
    let f = frame(MAC, 150, 4);
    s.arrive(std::slice::from_ref(&f));
    // 162 bytes: 64 + 64 + 34.
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(heads[0]), 64)));
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(heads[1]), 64)));
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(heads[2]), 34)));
    assert_eq!(s.rx.pop_used(&s.mem), None);
    let hdr = NetHeader::from_bytes(&s.read(BUF, 12).try_into().unwrap());
    assert_eq!(hdr.num_buffers, 3);
    let got = [
        s.read(BUF + 12, 52),
        s.read(BUF + 0x1000, 64),
        s.read(BUF + 0x2000, 34),
    ]
    .concat();
    assert_eq!(got, f);
    // The fourth chain takes the next frame.
    s.arrive(&[frame(MAC, 40, 5)]);
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(heads[3]), 52)));
    let hdr = NetHeader::from_bytes(&s.read(BUF + 0x3000, 12).try_into().unwrap());
    assert_eq!(hdr.num_buffers, 1);
}

#[test]
fn receive_waits_for_buffers_and_keeps_frame_order() {
    receive_waits_for_buffers_and_keeps_frame_order_with(0);
}

#[test]
fn receive_waits_for_buffers_and_keeps_frame_order_on_packed_rings() {
    receive_waits_for_buffers_and_keeps_frame_order_with(RING_PACKED);
}

fn receive_waits_for_buffers_and_keeps_frame_order_with(layout: u64) {
    let mut s = setup(VIRTIO_NET_F_MRG_RXBUF | layout);
    let frames: Vec<Vec<u8>> = (0..3).map(|i| frame(MAC, 150, i)).collect();
    s.arrive(&frames);
    assert!(s.t.with_device(|d| d.rx_waiting_for_buffers()));
    assert_eq!(s.t.with_device(|d| d.backend().rx.len()), 2, "one held");
    // Two 64-byte chains are not enough for 162 bytes: still waiting.
    s.rx.push(&s.mem, &[w(BUF, 64)]);
    s.rx.push(&s.mem, &[w(BUF + 0x1000, 64)]);
    notify(&s.t, 0);
    assert_eq!(s.rx.pop_used(&s.mem), None);
    assert!(s.t.with_device(|d| d.rx_waiting_for_buffers()));
    // A third chain: the first frame goes, over all three.
    s.rx.push(&s.mem, &[w(BUF + 0x2000, 64)]);
    notify(&s.t, 0);
    assert_eq!(s.rx.pop_used(&s.mem).map(|u| u.1), Some(64));
    assert_eq!(s.rx.pop_used(&s.mem).map(|u| u.1), Some(64));
    assert_eq!(s.rx.pop_used(&s.mem).map(|u| u.1), Some(34));
    assert_eq!(s.read(BUF + 12, 52), frames[0][..52]);
    // Big chains: the other two frames, in order.
    s.rx.push(&s.mem, &[w(BUF + 0x3000, 2048)]);
    s.rx.push(&s.mem, &[w(BUF + 0x4000, 2048)]);
    notify(&s.t, 0);
    assert_eq!(s.rx.pop_used(&s.mem).map(|u| u.1), Some(162));
    assert_eq!(s.rx.pop_used(&s.mem).map(|u| u.1), Some(162));
    assert_eq!(s.read(BUF + 0x300c, 150), frames[1]);
    assert_eq!(s.read(BUF + 0x400c, 150), frames[2]);
    assert!(!s.t.with_device(|d| d.rx_waiting_for_buffers()));
    assert_eq!(s.stats().rx_frames, 3);
}

#[test]
fn malformed_receive_chains_are_returned_empty() {
    malformed_receive_chains_are_returned_empty_with(0);
}

#[test]
fn malformed_receive_chains_are_returned_empty_on_packed_rings() {
    malformed_receive_chains_are_returned_empty_with(RING_PACKED);
}

fn malformed_receive_chains_are_returned_empty_with(layout: u64) {
    let mut s = setup(VIRTIO_NET_F_MRG_RXBUF | layout);
    // Readable buffer; a chain smaller than a header; a buffer outside
    // memory; then a good one.
    let bad1 = s.rx.push(&s.mem, &[r(BUF, 64)]);
    let bad2 = s.rx.push(&s.mem, &[w(BUF + 0x1000, 8)]);
    let bad3 = s.rx.push(&s.mem, &[w(MEM_SIZE as u64 - 8, 64)]);
    let good = s.rx.push(&s.mem, &[w(BUF + 0x2000, 2048)]);
    let f = frame(MAC, 80, 3);
    s.arrive(std::slice::from_ref(&f));
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(bad1), 0)));
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(bad2), 0)));
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(bad3), 0)));
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(good), 92)));
    assert_eq!(s.read(BUF + 0x200c, 80), f);
    assert_eq!(s.stats().bad_chains, 3);
    // A bad chain after a good one inside one merged frame: the frame is
    // dropped, both chains come back empty.
    let g = s.rx.push(&s.mem, &[w(BUF, 64)]);
    let b = s.rx.push(&s.mem, &[r(BUF + 0x1000, 64)]);
    s.arrive(&[frame(MAC, 100, 0)]);
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(g), 0)));
    assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(b), 0)));
    assert_eq!(s.stats().bad_chains, 4);
    assert_eq!(s.stats().rx_dropped_invalid, 1);
    // Short frames from the backend are dropped.
    s.rx.push(&s.mem, &[w(BUF, 2048)]);
    s.arrive(&[vec![0u8; 13]]);
    assert_eq!(s.rx.pop_used(&s.mem), None);
    assert_eq!(s.stats().rx_dropped_invalid, 2);
    assert_eq!(s.t.status() & STATUS_NEEDS_RESET, 0);
}

#[test]
fn a_frame_larger_than_every_buffer_is_dropped() {
    a_frame_larger_than_every_buffer_is_dropped_with(0);
}

#[test]
fn a_frame_larger_than_every_buffer_is_dropped_on_packed_rings() {
    a_frame_larger_than_every_buffer_is_dropped_with(RING_PACKED);
}

fn a_frame_larger_than_every_buffer_is_dropped_with(layout: u64) {
    let mut s = setup(VIRTIO_NET_F_MRG_RXBUF | layout);
    // A full ring of 12-byte chains holds no frame at all.
    for i in 0..u64::from(s.rx.size) {
        s.rx.push(&s.mem, &[w(BUF + 0x100 * i, 12)]);
    }
    s.arrive(&[frame(MAC, 1000, 0)]);
    assert_eq!(s.rx.pop_used(&s.mem), None, "chains stay with the device");
    assert_eq!(s.stats().rx_dropped_too_big, 1);
    assert!(!s.t.with_device(|d| d.rx_waiting_for_buffers()));
}

#[test]
fn backend_headers_are_checked_against_the_accepted_offloads() {
    let mut s = setup_with(device(MemBackend::offloading(), opts()), 0);
    // The reset in `negotiate`, then activation: nothing accepted.
    assert_eq!(
        s.t.with_device(|d| d.backend().offloads.clone()),
        vec![0, 0]
    );
    let csum = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..NetHeader::default()
    };
    let valid = NetHeader {
        flags: VIRTIO_NET_HDR_F_DATA_VALID,
        ..NetHeader::default()
    };
    let f = frame(MAC, 60, 0);
    s.rx.push(&s.mem, &[w(BUF, 2048)]);
    s.arrive(&[
        [hdr_bytes(csum), f.clone()].concat(),
        [hdr_bytes(valid), f.clone()].concat(),
    ]);
    // The partial checksum was dropped; DATA_VALID is cleared.
    assert_eq!(s.rx.pop_used(&s.mem).map(|u| u.1), Some(72));
    assert_eq!(s.read(BUF, 2), [0, 0]);
    assert_eq!(s.stats().rx_dropped_invalid, 1);

    // With GUEST_CSUM the header reaches the guest unchanged (but for
    // num_buffers), and the backend was told.
    let mut s = setup_with(
        device(MemBackend::offloading(), opts()),
        VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_MRG_RXBUF,
    );
    assert_eq!(
        s.t.with_device(|d| d.backend().offloads.clone()),
        vec![0, VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4]
    );
    let tso = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let tso6 = NetHeader {
        gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
        ..tso
    };
    let big = frame(MAC, 4000, 1);
    s.rx.push(&s.mem, &[w(BUF, 8192)]);
    s.arrive(&[
        [hdr_bytes(tso6), big.clone()].concat(),
        [hdr_bytes(tso), big.clone()].concat(),
    ]);
    assert_eq!(s.rx.pop_used(&s.mem).map(|u| u.1), Some(4012));
    let got = NetHeader::from_bytes(&s.read(BUF, 12).try_into().unwrap());
    assert_eq!(
        got,
        NetHeader {
            num_buffers: 1,
            ..tso
        }
    );
    assert_eq!(s.stats().rx_dropped_invalid, 1, "TSOv6 was not accepted");
}

#[test]
fn control_queue_sets_the_receive_filter() {
    control_queue_sets_the_receive_filter_with(0);
}

#[test]
fn control_queue_sets_the_receive_filter_on_packed_rings() {
    control_queue_sets_the_receive_filter_with(RING_PACKED);
}

fn control_queue_sets_the_receive_filter_with(layout: u64) {
    let features = VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_CTRL_RX | VIRTIO_NET_F_CTRL_MAC_ADDR;
    let mut s = setup(features | layout);
    let mcast: MacAddr = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
    let other_mcast: MacAddr = [0x33, 0x33, 0, 0, 0, 1];
    let other: MacAddr = [0x52, 0x54, 0, 9, 9, 9];
    let deliver = |s: &mut Setup, dst: MacAddr| -> bool {
        s.rx.push(&s.mem, &[w(BUF, 2048)]);
        s.arrive(&[frame(dst, 60, 0)]);
        let got = s.rx.pop_used(&s.mem).is_some();
        if !got {
            // Take the unused chain back out of the way: pop it with a frame
            // everyone accepts.
            s.arrive(&[frame([0xff; 6], 60, 0)]);
            assert!(s.rx.pop_used(&s.mem).is_some());
        }
        got
    };
    // Promiscuous after reset: everything passes.
    assert!(deliver(&mut s, other));
    assert_eq!(s.command(&[0, 0, 0]), (1, VIRTIO_NET_OK), "PROMISC off");
    assert!(deliver(&mut s, MAC));
    assert!(deliver(&mut s, [0xff; 6]));
    assert!(!deliver(&mut s, other));
    assert!(!deliver(&mut s, mcast));
    // MAC table: one unicast, one multicast address.
    let mut table = Vec::new();
    table.extend_from_slice(&1u32.to_le_bytes());
    table.extend_from_slice(&other);
    table.extend_from_slice(&1u32.to_le_bytes());
    table.extend_from_slice(&mcast);
    assert_eq!(s.command(&[&[1, 0][..], &table].concat()).1, VIRTIO_NET_OK);
    assert!(deliver(&mut s, other));
    assert!(deliver(&mut s, mcast));
    assert!(!deliver(&mut s, other_mcast));
    // ALLMULTI.
    assert_eq!(s.command(&[0, 1, 1]).1, VIRTIO_NET_OK);
    assert!(deliver(&mut s, other_mcast));
    // An oversized multicast table: every multicast address passes even
    // with ALLMULTI off.
    assert_eq!(s.command(&[0, 1, 0]).1, VIRTIO_NET_OK);
    let n = MAC_TABLE_ENTRIES as u32 + 1;
    let mut big = vec![1u8, 0];
    big.extend_from_slice(&0u32.to_le_bytes());
    big.extend_from_slice(&n.to_le_bytes());
    for i in 0..n {
        big.extend_from_slice(&[0x01, 0, 0x5e, 0, 1, i as u8]);
    }
    assert_eq!(s.command(&big).1, VIRTIO_NET_OK);
    assert!(deliver(&mut s, other_mcast));
    assert!(!deliver(&mut s, other), "unicast table now empty");
    // A new MAC address: config space and filter follow.
    let new: MacAddr = [0x02, 0, 0, 0, 0, 0x42];
    assert_eq!(s.command(&[&[1, 1][..], &new].concat()).1, VIRTIO_NET_OK);
    assert_eq!(config_mac(&s.t), new);
    assert!(deliver(&mut s, new));
    assert!(!deliver(&mut s, MAC));
    assert!(s.stats().rx_dropped_filtered >= 5);
    assert_eq!(s.stats().ctrl_ok, 6);
    // A reset restores the configured address.
    s.t.w32(0x70, 0);
    assert_eq!(config_mac(&s.t), MAC);
}

#[test]
fn malformed_or_unsupported_control_commands_are_answered_err() {
    let features = VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_CTRL_RX;
    let mut s = setup(features);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("class only", vec![0]),
        ("PROMISC without data", vec![0, 0]),
        ("PROMISC with 2", vec![0, 0, 2]),
        ("PROMISC with 2 bytes", vec![0, 0, 1, 0]),
        ("MAC table too short", vec![1, 0, 1, 0, 0, 0]),
        (
            "MAC table entry count beyond the data",
            [
                vec![1, 0],
                0u32.to_le_bytes().to_vec(),
                5u32.to_le_bytes().to_vec(),
            ]
            .concat(),
        ),
        (
            "MAC table with trailing bytes",
            [vec![1, 0], vec![0; 8], vec![9]].concat(),
        ),
        (
            "MAC table with 2^32-1 entries",
            [vec![1, 0], vec![0xff; 4], vec![0; 4]].concat(),
        ),
        ("MAC_ADDR_SET not negotiated", vec![1, 1, 2, 0, 0, 0, 0, 1]),
        ("VLAN class", vec![2, 0, 1, 0]),
        ("ANNOUNCE class", vec![3, 0]),
        ("MQ class", vec![4, 0, 1, 0]),
        (
            "GUEST_OFFLOADS not negotiated",
            [vec![5, 0], vec![0; 8]].concat(),
        ),
        ("unknown class", vec![200, 7, 1, 2, 3]),
    ];
    for (what, bytes) in &cases {
        assert_eq!(s.command(bytes), (1, VIRTIO_NET_ERR), "{what}");
    }
    assert_eq!(s.stats().ctrl_err, cases.len() as u64);
    // No acknowledgement byte: returned with length 0.
    let c = s.put(BUF, &[0, 0, 0]);
    s.ctrl.push(&s.mem, &[r(c, 3)]);
    notify(&s.t, 2);
    assert_eq!(s.ctrl.pop_used(&s.mem).map(|u| u.1), Some(0));
    // The ack in a second writable buffer after an empty one; data split.
    let a = s.put(BUF + 0x100, &[0xee]);
    let c2 = s.put(BUF + 0x200, &[0]);
    s.ctrl
        .push(&s.mem, &[r(c, 1), r(c2, 2), w(BUF + 0x300, 0), w(a, 1)]);
    notify(&s.t, 2);
    assert_eq!(s.ctrl.pop_used(&s.mem).map(|u| u.1), Some(1));
    assert_eq!(s.read(a, 1), [VIRTIO_NET_OK]);
    assert_eq!(s.t.status() & STATUS_NEEDS_RESET, 0);
}

#[test]
fn guest_offloads_set_reaches_the_backend() {
    let features = VIRTIO_NET_F_CTRL_VQ
        | VIRTIO_NET_F_CTRL_GUEST_OFFLOADS
        | VIRTIO_NET_F_GUEST_CSUM
        | VIRTIO_NET_F_GUEST_TSO4;
    let mut s = setup_with(device(MemBackend::offloading(), opts()), features);
    let set = |s: &mut Setup, v: u64| s.command(&[&[5u8, 0][..], &v.to_le_bytes()].concat()).1;
    assert_eq!(set(&mut s, 0), VIRTIO_NET_OK);
    assert_eq!(set(&mut s, VIRTIO_NET_F_GUEST_CSUM), VIRTIO_NET_OK);
    assert_eq!(
        set(&mut s, VIRTIO_NET_F_GUEST_TSO4),
        VIRTIO_NET_ERR,
        "TSO needs CSUM"
    );
    assert_eq!(
        set(&mut s, VIRTIO_NET_F_GUEST_UFO | 3),
        VIRTIO_NET_ERR,
        "UFO not negotiated"
    );
    assert_eq!(set(&mut s, 1 << 40), VIRTIO_NET_ERR);
    assert_eq!(
        s.t.with_device(|d| d.backend().offloads.clone()),
        vec![
            0,
            VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4,
            0,
            VIRTIO_NET_F_GUEST_CSUM
        ]
    );
    assert_eq!(
        s.t.with_device(|d| d.rx_offloads()),
        VIRTIO_NET_F_GUEST_CSUM
    );
    // A TSO frame is now refused on receive.
    let tso = NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        gso_size: 1000,
        csum_start: 34,
        csum_offset: 16,
        ..NetHeader::default()
    };
    s.rx.push(&s.mem, &[w(BUF, 4096)]);
    s.arrive(&[[hdr_bytes(tso), frame(MAC, 3000, 0)].concat()]);
    assert_eq!(s.rx.pop_used(&s.mem), None);
    assert_eq!(s.stats().rx_dropped_invalid, 1);
    // A backend that refuses: ERR, offloads unchanged.
    s.t.with_device(|d| d.backend_mut().refuse_offloads = true);
    assert_eq!(set(&mut s, 0), VIRTIO_NET_ERR);
    assert_eq!(
        s.t.with_device(|d| d.rx_offloads()),
        VIRTIO_NET_F_GUEST_CSUM
    );
}

#[test]
fn broken_feature_dependencies_or_a_refusing_backend_fail_activation() {
    let mem = mem();
    for (features, refuse) in [
        (VIRTIO_NET_F_GUEST_TSO4, false),
        (VIRTIO_NET_F_CTRL_RX, false),
        (VIRTIO_NET_F_GUEST_ANNOUNCE, false),
        (VIRTIO_NET_F_HOST_ECN | VIRTIO_NET_F_CSUM, false),
        (VIRTIO_NET_F_GUEST_CSUM, true),
    ] {
        let mut b = MemBackend::offloading();
        b.refuse_offloads = refuse;
        let t = transport(device(b, opts()), &mem);
        assert!(negotiate(&t, features | V1));
        driver_ok(&t);
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0, "{features:#x}");
        assert!(t.take_error().is_some());
    }
}

#[test]
fn guest_announce_sets_the_status_bit_until_the_driver_acks() {
    let status = |t: &Transport<Dev>| {
        let mut st = [0u8; 2];
        t.read(0x106, &mut st);
        u16::from_le_bytes(st)
    };
    // Not negotiated: nothing to ask, and the ack is refused.
    let mut s = setup(VIRTIO_NET_F_STATUS | VIRTIO_NET_F_CTRL_VQ);
    assert!(!s.t.with_device(|d| d.announce()));
    assert_eq!(status(&s.t), VIRTIO_NET_S_LINK_UP);
    assert_eq!(
        s.command(&[VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK]),
        (1, VIRTIO_NET_ERR)
    );

    let mut s = setup(VIRTIO_NET_F_STATUS | VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_GUEST_ANNOUNCE);
    assert!(s.t.with_device(|d| d.announce()));
    s.t.notify_config_change();
    assert_ne!(s.t.r32(0x60) & INT_CONFIG_CHANGE, 0);
    assert_eq!(status(&s.t), VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE);
    // An ack with data is malformed and leaves the request standing.
    assert_eq!(
        s.command(&[VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK, 0]),
        (1, VIRTIO_NET_ERR)
    );
    assert!(s.t.with_device(|d| d.announcing()));
    assert_eq!(
        s.command(&[VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK]),
        (1, VIRTIO_NET_OK)
    );
    assert_eq!(status(&s.t), VIRTIO_NET_S_LINK_UP);
    assert!(!s.t.with_device(|d| d.announcing()));
    // Asked again, then the device is reset: the request goes with it.
    assert!(s.t.with_device(|d| d.announce()));
    s.t.w32(0x70, 0);
    assert!(!s.t.with_device(|d| d.announcing()));
}

#[test]
fn link_state_is_in_the_config_space_and_gates_traffic() {
    let mut s = setup(VIRTIO_NET_F_STATUS);
    assert!(s.t.with_device(|d| d.set_link_up(false)));
    s.t.notify_config_change();
    assert_ne!(s.t.r32(0x60) & INT_CONFIG_CHANGE, 0);
    let mut st = [0u8; 2];
    s.t.read(0x106, &mut st);
    assert_eq!(st, [0, 0]);
    let a = s.put(
        BUF,
        &[hdr_bytes(NetHeader::default()), frame(PEER, 60, 0)].concat(),
    );
    s.transmit(&[r(a, 72)]);
    s.rx.push(&s.mem, &[w(BUF + 0x1000, 2048)]);
    s.arrive(&[frame(MAC, 60, 0)]);
    assert_eq!(s.rx.pop_used(&s.mem), None);
    let stats = s.stats();
    assert_eq!(stats.tx_dropped_link_down, 1);
    assert_eq!(stats.rx_dropped_link_down, 1);
    assert!(s.sent().is_empty());
    assert!(s.t.with_device(|d| d.set_link_up(true)));
    assert!(!s.t.with_device(|d| d.set_link_up(true)));
    s.arrive(&[frame(MAC, 60, 0)]);
    assert!(s.rx.pop_used(&s.mem).is_some());
}

#[test]
fn a_blocking_backend_keeps_the_chain_until_it_can_send() {
    a_blocking_backend_keeps_the_chain_until_it_can_send_with(0);
}

#[test]
fn a_blocking_backend_keeps_the_chain_until_it_can_send_on_packed_rings() {
    a_blocking_backend_keeps_the_chain_until_it_can_send_with(RING_PACKED);
}

fn a_blocking_backend_keeps_the_chain_until_it_can_send_with(layout: u64) {
    let mut s = setup(layout);
    s.t.with_device(|d| d.backend_mut().send_error = Some(io::ErrorKind::WouldBlock));
    let f = frame(PEER, 60, 0);
    let a = s.put(BUF, &[hdr_bytes(NetHeader::default()), f.clone()].concat());
    let head = s.tx.push(&s.mem, &[r(a, 72)]);
    notify(&s.t, 1);
    assert_eq!(s.tx.pop_used(&s.mem), None);
    assert!(s.t.with_device(|d| d.tx_blocked()));
    s.t.with_device(|d| d.backend_mut().send_error = None);
    s.t.process_queue(TXQ).unwrap();
    assert_eq!(s.tx.pop_used(&s.mem), Some((u32::from(head), 0)));
    assert_eq!(s.sent(), vec![f.clone()]);
    // Other errors count and drop the frame.
    s.t.with_device(|d| d.backend_mut().send_error = Some(io::ErrorKind::Other));
    s.transmit(&[r(a, 72)]);
    assert_eq!(s.stats().tx_backend_errors, 1);
    assert!(!s.t.with_device(|d| d.tx_blocked()));
}

#[test]
fn a_backend_that_blocks_mid_batch_keeps_the_rest_of_the_batch() {
    for layout in [0, RING_PACKED] {
        a_backend_that_blocks_mid_batch_keeps_the_rest_of_the_batch_with(layout);
        in_place(|| a_backend_that_blocks_mid_batch_keeps_the_rest_of_the_batch_with(layout));
    }
}

/// Chains checked in one batch and sent one by one: when the backend
/// blocks, the frame it refused and every chain after it (a malformed one
/// among them) stay with the device, uncounted, and go once it can send.
fn a_backend_that_blocks_mid_batch_keeps_the_rest_of_the_batch_with(layout: u64) {
    let mut s = setup(layout);
    s.t.with_device(|d| d.backend_mut().send_room = Some(2));
    let hdr = hdr_bytes(NetHeader::default());
    let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(PEER, 60 + i, i as u8)).collect();
    let mut heads = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let a = s.put(BUF + 0x1000 * i as u64, &[hdr.clone(), f.clone()].concat());
        heads.push(s.tx.push(&s.mem, &[r(a, (12 + f.len()) as u32)]));
        if i == 2 {
            // Too short: a header and 4 bytes.
            let bad = s.put(BUF + 0x8000, &[hdr.clone(), vec![1; 4]].concat());
            heads.push(s.tx.push(&s.mem, &[r(bad, 16)]));
        }
    }
    notify(&s.t, 1);
    let mut used = Vec::new();
    while let Some((head, _)) = s.tx.pop_used(&s.mem) {
        used.push(head);
    }
    assert_eq!(used, vec![u32::from(heads[0]), u32::from(heads[1])]);
    assert_eq!(s.sent(), frames[..2].to_vec());
    assert!(s.t.with_device(|d| d.tx_blocked()));
    assert_eq!(s.stats().tx_frames, 2);
    assert_eq!(
        s.stats().tx_malformed,
        0,
        "the chains kept are not counted yet"
    );

    s.t.with_device(|d| d.backend_mut().send_room = None);
    s.t.process_queue(TXQ).unwrap();
    while let Some((head, _)) = s.tx.pop_used(&s.mem) {
        used.push(head);
    }
    let all: Vec<u32> = heads.iter().map(|&h| u32::from(h)).collect();
    assert_eq!(used, all, "each chain returned once, in order");
    assert_eq!(s.sent(), frames);
    assert!(!s.t.with_device(|d| d.tx_blocked()));
    let stats = s.stats();
    assert_eq!((stats.tx_frames, stats.tx_malformed), (4, 1));
    assert_eq!(stats.bad_chains, 0);
}

/// A driver that breaks the queue after good chains (a head out of range):
/// the frames before it still go out and their chains come back, as when
/// chains were sent one by one; then the device needs a reset.
#[test]
fn frames_before_a_queue_breaking_head_are_still_sent() {
    let mut s = setup(0);
    let hdr = hdr_bytes(NetHeader::default());
    let frames: Vec<Vec<u8>> = (0..2).map(|i| frame(PEER, 60, i as u8)).collect();
    let mut heads = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let a = s.put(BUF + 0x1000 * i as u64, &[hdr.clone(), f.clone()].concat());
        heads.push(u32::from(s.tx.push(&s.mem, &[r(a, 72)])));
    }
    // A third entry naming descriptor 0xffff, past the table.
    let slot = u64::from(s.tx.avail_idx % s.tx.size);
    s.mem
        .write_obj(0xffffu16, GuestAddress(s.tx.avail + 4 + 2 * slot))
        .unwrap();
    s.mem
        .write_obj(s.tx.avail_idx.wrapping_add(1), GuestAddress(s.tx.avail + 2))
        .unwrap();
    notify(&s.t, 1);
    assert_eq!(s.sent(), frames);
    let mut used = Vec::new();
    while let Some((head, _)) = s.tx.pop_used(&s.mem) {
        used.push(head);
    }
    assert_eq!(used, heads);
    assert_ne!(s.t.status() & STATUS_NEEDS_RESET, 0);
}

#[test]
fn state_round_trips_and_corrupt_state_is_refused() {
    let features = VIRTIO_NET_F_CTRL_VQ
        | VIRTIO_NET_F_CTRL_RX
        | VIRTIO_NET_F_CTRL_MAC_ADDR
        | VIRTIO_NET_F_CTRL_GUEST_OFFLOADS
        | VIRTIO_NET_F_GUEST_CSUM;
    let mut s = setup_with(device(MemBackend::offloading(), opts()), features);
    s.command(&[0, 0, 0]);
    s.command(&[&[1, 1][..], &[0x02, 1, 2, 3, 4, 5]].concat());
    s.command(&[&[5u8, 0][..], &0u64.to_le_bytes()].concat());
    let saved = s.t.with_device(|d| d.save_state());
    assert_eq!(<Net<MemBackend>>::KIND, "virtio-net");
    assert_eq!(saved.mac, [0x02, 1, 2, 3, 4, 5]);
    assert!(!saved.promisc);
    assert_eq!(saved.rx_offloads, 0);
    let bytes = postcard::to_stdvec(&saved).unwrap();
    assert_eq!(postcard::from_bytes::<NetState>(&bytes).unwrap(), saved);

    let mut fresh = device(MemBackend::offloading(), opts());
    fresh.restore_state(&saved).unwrap();
    assert_eq!(fresh.mac(), [0x02, 1, 2, 3, 4, 5]);
    assert_eq!(fresh.save_state(), saved);
    // Activation applies the restored offloads, not the negotiated ones.
    VirtioDevice::<Mem>::activate(&mut fresh, features | V1).unwrap();
    assert_eq!(fresh.rx_offloads(), 0);
    assert_eq!(fresh.backend().offloads, vec![0]);
    assert_eq!(fresh.stats(), s.stats());

    // Bytes that are not a state do not decode.
    for bad in [&bytes[..bytes.len() - 1], &[][..]] {
        assert!(postcard::from_bytes::<NetState>(bad).is_err());
    }
    let mut link_up_2 = bytes.clone();
    link_up_2[6] = 2; // after the six MAC bytes
    assert!(postcard::from_bytes::<NetState>(&link_up_2).is_err());

    // Values the device would never have accepted from a driver.
    type Corruption = fn(&mut NetState);
    let cases: [(&str, Corruption, &str); 6] = [
        ("multicast mac", |st| st.mac[0] |= 1, "mac 03:01"),
        ("zero mac", |st| st.mac = [0; 6], "mac 00:00"),
        (
            "table of 65",
            |st| st.unicast.entries = vec![[0x02, 0, 0, 0, 0, 1]; 65],
            "unicast table holds 65",
        ),
        (
            "entries on overflow",
            |st| {
                st.multicast.overflow = true;
                st.multicast.entries = vec![[0x01, 0, 0x5e, 0, 0, 1]];
            },
            "multicast table holds 1 entries (overflow true)",
        ),
        (
            "offload beyond the receive offloads",
            |st| st.rx_offloads = VIRTIO_NET_F_CTRL_VQ,
            "rx_offloads",
        ),
        (
            "offload not offered by the fresh device",
            |st| st.rx_offloads = VIRTIO_NET_F_GUEST_CSUM,
            "were not offered",
        ),
    ];
    for (what, corrupt, named) in cases {
        let mut st = saved.clone();
        corrupt(&mut st);
        let mut plain = device(MemBackend::plain(), opts());
        let e = plain.restore_state(&st);
        assert!(
            matches!(&e, Err(StateError::Invalid { kind: "virtio-net", reason }) if reason.contains(named)),
            "{what}: {e:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Property tests: the parsers of guest bytes never panic, and what they
// accept obeys the rules; arbitrary chains never break the device.

fn features_strategy() -> impl Strategy<Value = u64> {
    prop::bits::u64::masked(HOST_OFFLOAD_FEATURES | GUEST_OFFLOAD_FEATURES | VIRTIO_NET_F_MRG_RXBUF)
}

/// Features a driver may accept together: drops those whose prerequisite
/// is missing (virtio 1.2, 5.1.3.1).
fn consistent(mut f: u64) -> u64 {
    for (feature, any_of) in [
        (
            VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_GUEST_CSUM,
        ),
        (
            VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6 | VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_CSUM,
        ),
        (
            VIRTIO_NET_F_GUEST_ECN,
            VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6,
        ),
        (
            VIRTIO_NET_F_HOST_ECN,
            VIRTIO_NET_F_HOST_TSO4 | VIRTIO_NET_F_HOST_TSO6,
        ),
    ] {
        if f & any_of == 0 {
            f &= !feature;
        }
    }
    f
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn tx_header_validation_follows_the_rules(
        bytes in prop::array::uniform12(any::<u8>()),
        features in features_strategy(),
        frame_len in 0usize..70_000,
    ) {
        let h = NetHeader::from_bytes(&bytes);
        prop_assert_eq!(h.to_bytes(), bytes);
        if h.validate_tx(features, frame_len).is_ok() {
            prop_assert_eq!(h.flags & !VIRTIO_NET_HDR_F_NEEDS_CSUM, 0);
            if h.needs_csum() {
                prop_assert!(features & VIRTIO_NET_F_CSUM != 0);
                prop_assert!(usize::from(h.csum_start) + usize::from(h.csum_offset) + 2 <= frame_len);
            }
            let gso = h.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
            let need = match gso {
                VIRTIO_NET_HDR_GSO_NONE => 0,
                VIRTIO_NET_HDR_GSO_TCPV4 => VIRTIO_NET_F_HOST_TSO4,
                VIRTIO_NET_HDR_GSO_TCPV6 => VIRTIO_NET_F_HOST_TSO6,
                VIRTIO_NET_HDR_GSO_UDP => VIRTIO_NET_F_HOST_UFO,
                other => return Err(TestCaseError::fail(format!("accepted GSO type {other}"))),
            };
            if need != 0 {
                prop_assert!(features & need != 0);
                prop_assert!(h.needs_csum() && h.gso_size != 0);
            }
            if h.gso_type & VIRTIO_NET_HDR_GSO_ECN != 0 {
                prop_assert!(need != 0 && features & VIRTIO_NET_F_HOST_ECN != 0);
            }
            prop_assert!(usize::from(h.hdr_len) <= frame_len);
        }
        if let Ok(out) = h.validate_rx(features, frame_len) {
            prop_assert_eq!(out.num_buffers, 0);
            if features & VIRTIO_NET_F_GUEST_CSUM == 0 {
                prop_assert_eq!(out.flags, 0);
            }
        }
    }

    #[test]
    fn ctrl_decoding_never_panics_and_tables_match_their_counts(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (0u32..4, 0u32..4, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(a, b, rest)| {
                let mut v = vec![1u8, 0];
                v.extend_from_slice(&a.to_le_bytes());
                v.extend(std::iter::repeat_n(0x11, 6 * a as usize));
                v.extend_from_slice(&b.to_le_bytes());
                v.extend(rest.into_iter().take(6 * b as usize + 1));
                v
            }),
        ],
    ) {
        match decode_ctrl(&bytes) {
            Ok(CtrlCommand::MacTableSet { unicast, multicast }) => {
                let n = unicast.entries.len() + multicast.entries.len();
                prop_assert!(unicast.overflow || multicast.overflow || bytes.len() == 2 + 8 + 6 * n);
            }
            Ok(CtrlCommand::Promisc(_)) | Ok(CtrlCommand::AllMulti(_)) => {
                prop_assert_eq!(bytes.len(), 3);
            }
            Ok(_) => {}
            Err(e) => { let _ = e.to_string(); }
        }
    }
}

#[derive(Clone, Debug)]
struct ChainSpec {
    bufs: Vec<(u64, u32, bool)>,
}

fn chain_spec() -> impl Strategy<Value = ChainSpec> {
    let buf = (
        prop_oneof![
            (0u64..16).prop_map(|i| BUF + 0x1000 * i),
            Just(MEM_SIZE as u64 - 16),
            any::<u64>()
        ],
        prop_oneof![
            0u32..100,
            100u32..5000,
            Just(12),
            Just(65_000),
            any::<u32>()
        ],
        any::<bool>(),
    );
    prop::collection::vec(buf, 1..5).prop_map(|bufs| ChainSpec { bufs })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_chains_and_frames_never_break_the_device(
        features in features_strategy(),
        tx_chains in prop::collection::vec(chain_spec(), 0..8),
        rx_chains in prop::collection::vec(chain_spec(), 0..8),
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 0..6),
        garbage in prop::collection::vec(any::<u8>(), 12..64),
    ) {
        let mut s = setup_with(device(MemBackend::offloading(), opts()), consistent(features));
        for i in 0..16u64 {
            s.put(BUF + 0x1000 * i, &garbage);
        }
        let to_bufs = |c: &ChainSpec| -> Vec<Buf> {
            c.bufs.iter().map(|&(addr, len, write)| Buf { addr, len, write }).collect()
        };
        for c in &tx_chains {
            s.tx.push(&s.mem, &to_bufs(c));
        }
        notify(&s.t, 1);
        // Every transmit chain came back, and was counted exactly once.
        let mut tx_used = 0;
        while let Some((_, len)) = s.tx.pop_used(&s.mem) {
            prop_assert_eq!(len, 0);
            tx_used += 1;
        }
        prop_assert_eq!(tx_used, tx_chains.len());
        let st = s.stats();
        prop_assert_eq!(st.tx_frames + st.tx_malformed + st.bad_chains, tx_chains.len() as u64);
        let mut capacity = std::collections::HashMap::new();
        for c in &rx_chains {
            let head = s.rx.push(&s.mem, &to_bufs(c));
            let cap: u64 = c.bufs.iter().map(|b| u64::from(b.1)).sum();
            capacity.insert(u32::from(head), cap);
        }
        s.arrive(&frames);
        prop_assert_eq!(s.t.status() & STATUS_NEEDS_RESET, 0, "{:?}", s.t.take_error());
        // Received chains came back with at most their capacity.
        while let Some((id, len)) = s.rx.pop_used(&s.mem) {
            prop_assert!(u64::from(len) <= capacity[&id], "chain {} used {} of {:?}", id, len, capacity.get(&id));
            prop_assert!(u64::from(len) <= 65_535 + 12 + 18);
        }
        // Every frame was delivered, dropped and counted, or is the one held.
        let st = s.stats();
        let held = u64::from(s.t.with_device(|d| d.rx_waiting_for_buffers()));
        let accounted = st.rx_frames + st.rx_dropped_invalid + st.rx_dropped_too_big
            + st.rx_dropped_filtered + held + s.t.with_device(|d| d.backend().rx.len()) as u64;
        prop_assert_eq!(accounted, frames.len() as u64);
    }
}

// ---------------------------------------------------------------------------
// The in-place path (a vectored backend, as the TAP is) against the copying
// one: the same chains give the same packets, used entries, guest bytes and
// counters.

/// Everything the driver and the host see after a transmission.
type TxSeen = ((u32, u32), Vec<Vec<u8>>, NetStats);

fn transmit_seen(
    vectored: bool,
    layout: u64,
    features: u64,
    pieces: &[Vec<u8>],
    writable_last: bool,
) -> TxSeen {
    let mut b = MemBackend::offloading();
    b.vectored = vectored;
    let mut s = setup_with(device(b, opts()), layout | features);
    let bufs: Vec<Buf> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let addr = s.put(BUF + 0x1_0000 * i as u64, p);
            let last = i + 1 == pieces.len();
            if last && writable_last {
                w(addr, p.len() as u32)
            } else {
                r(addr, p.len() as u32)
            }
        })
        .collect();
    let used = s.transmit(&bufs);
    (used, s.sent(), s.stats())
}

/// Used entries (with the bytes the device wrote), counters, and whether
/// the device waits for buffers after frames arrive on `bufs` receive
/// chains and after four more chains come.
type RxSeen = (Vec<(u32, Vec<u8>)>, NetStats, Vec<bool>);

fn receive_seen(
    vectored: bool,
    layout: u64,
    mrg: bool,
    frames: &[Vec<u8>],
    bufs: &[u32],
) -> RxSeen {
    let mut b = MemBackend::offloading();
    b.vectored = vectored;
    let features = layout | if mrg { VIRTIO_NET_F_MRG_RXBUF } else { 0 };
    let mut s = setup_with(device(b, opts()), features);
    let mut addr_of = std::collections::HashMap::new();
    let mut at = BUF;
    for &len in bufs {
        let head = s.rx.push(&s.mem, &[w(at, len)]);
        addr_of.insert(u32::from(head), at);
        at += u64::from(len).next_multiple_of(0x1000);
    }
    s.arrive(frames);
    let mut seen = Vec::new();
    let mut waiting = vec![s.t.with_device(|d| d.rx_waiting_for_buffers())];
    for round in 0..2 {
        if round == 1 {
            for _ in 0..4 {
                let head = s.rx.push(&s.mem, &[w(at, 0x1_1000)]);
                addr_of.insert(u32::from(head), at);
                at += 0x1_1000;
            }
            notify(&s.t, 0);
        }
        while let Some((id, len)) = s.rx.pop_used(&s.mem) {
            seen.push((len, s.read(addr_of[&id], len as usize)));
        }
    }
    waiting.push(s.t.with_device(|d| d.rx_waiting_for_buffers()));
    (seen, s.stats(), waiting)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn vectored_transmit_matches_the_copying_path(
        // Past 4096 bytes: frames that small are copied even by a vectored backend.
        len in 0usize..9000,
        cuts in proptest::collection::vec(0usize..9100, 0..4),
        hdr in prop_oneof![Just([0u8; 12]), proptest::array::uniform12(any::<u8>())],
        csum in any::<bool>(),
        packed in any::<bool>(),
        writable_last in proptest::bool::weighted(0.1),
    ) {
        let mut packet = hdr.to_vec();
        packet.extend(frame(PEER, len, 7));
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(packet.len())).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for c in cuts.into_iter().chain([packet.len()]) {
            pieces.push(packet[from..c].to_vec());
            from = c;
        }
        let layout = if packed { RING_PACKED } else { 0 };
        let features = if csum { VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4 } else { 0 };
        let copied = transmit_seen(false, layout, features, &pieces, writable_last);
        let in_place = transmit_seen(true, layout, features, &pieces, writable_last);
        prop_assert_eq!(in_place, copied);
    }

    #[test]
    fn vectored_receive_matches_the_copying_path(
        lens in proptest::collection::vec(0usize..5000, 1..5),
        // At least a header each: the paths differ in when they return a
        // malformed chain (see the in-place malformed chain tests).
        bufs in proptest::collection::vec(prop_oneof![3 => 12u32..5000, 1 => 0x2800u32..0x3000, 1 => Just(0x1_1000u32)], 0..24),
        mrg in any::<bool>(),
        packed in any::<bool>(),
        bad_hdr in proptest::bool::weighted(0.1),
    ) {
        let frames: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let mut h = NetHeader::default();
                if bad_hdr && i == 0 {
                    h.gso_type = 0x42;
                }
                let dst = if i == 1 { PEER } else { MAC };
                [hdr_bytes(h), frame(dst, len, i as u8)].concat()
            })
            .collect();
        let layout = if packed { RING_PACKED } else { 0 };
        let copied = receive_seen(false, layout, mrg, &frames, &bufs);
        let in_place = receive_seen(true, layout, mrg, &frames, &bufs);
        prop_assert_eq!(in_place, copied);
    }
}

// The receive tests above again with a vectored backend, and big buffers
// so that the in-place path (not only its fallback) runs.

#[test]
fn in_place_merged_buffers_spread_a_frame_over_chains() {
    in_place(|| merged_buffers_spread_a_frame_over_chains_with(0));
    in_place(|| merged_buffers_spread_a_frame_over_chains_with(RING_PACKED));
}

#[test]
fn in_place_receive_waits_for_buffers_and_keeps_frame_order() {
    in_place(|| receive_waits_for_buffers_and_keeps_frame_order_with(0));
    in_place(|| receive_waits_for_buffers_and_keeps_frame_order_with(RING_PACKED));
}

#[test]
fn in_place_malformed_receive_chains_are_returned_empty() {
    for layout in [0, RING_PACKED] {
        in_place(|| {
            let mut s = setup(VIRTIO_NET_F_MRG_RXBUF | layout);
            let bad1 = s.rx.push(&s.mem, &[r(BUF, 64)]);
            let bad2 = s.rx.push(&s.mem, &[w(BUF + 0x1000, 8)]);
            let bad3 = s.rx.push(&s.mem, &[w(MEM_SIZE as u64 - 8, 64)]);
            let good = s.rx.push(&s.mem, &[w(BUF + 0x2_0000, 0x1_1000)]);
            let f = frame(MAC, 80, 3);
            s.arrive(std::slice::from_ref(&f));
            assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(bad1), 0)));
            assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(bad2), 0)));
            assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(bad3), 0)));
            assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(good), 92)));
            assert_eq!(s.read(BUF + 0x2_000c, 80), f);
            assert_eq!(s.stats().bad_chains, 3);
            // A chain as big as the largest packet is all a frame needs;
            // the bad chain behind it is met when the pool is topped up.
            let g = s.rx.push(&s.mem, &[w(BUF, 0x1_1000)]);
            let b = s.rx.push(&s.mem, &[r(BUF + 0x2_0000, 64)]);
            let f = frame(MAC, 100, 0);
            s.arrive(std::slice::from_ref(&f));
            assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(g), 112)));
            assert_eq!(s.read(BUF + 12, 100), f);
            assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(b), 0)));
            assert_eq!(s.rx.pop_used(&s.mem), None);
            assert_eq!(s.stats().bad_chains, 4);
            assert_eq!(s.stats().rx_frames, 2);
            assert_eq!(s.t.status() & STATUS_NEEDS_RESET, 0);
        });
    }
}

#[test]
fn in_place_receive_spreads_frames_over_a_pool_and_returns_the_rest() {
    for layout in [0, RING_PACKED] {
        in_place(|| {
            let mut s = setup(VIRTIO_NET_F_MRG_RXBUF | layout);
            // 20 chains of 10 KiB: 7 hold the largest packet.
            let at = |i: u64| BUF + 0x2800 * i;
            let heads: Vec<u16> = (0..20u64)
                .map(|i| s.rx.push(&s.mem, &[w(at(i), 0x2800)]))
                .collect();
            let frames = [frame(MAC, 12000, 1), frame(MAC, 60, 2)];
            s.arrive(&frames);
            // 12012 bytes over two chains, then 72 in the third.
            assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(heads[0]), 0x2800)));
            assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(heads[1]), 1772)));
            assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(heads[2]), 72)));
            assert_eq!(s.rx.pop_used(&s.mem), None);
            let hdr = NetHeader::from_bytes(&s.read(at(0), 12).try_into().unwrap());
            assert_eq!(hdr.num_buffers, 2);
            let got = [s.read(at(0) + 12, 0x2800 - 12), s.read(at(1), 1772)].concat();
            assert_eq!(got, frames[0]);
            assert_eq!(s.read(at(2) + 12, 60), frames[1]);
            // The unused chains were given back to the ring: the next
            // frame lands in the fourth.
            s.arrive(&[frame(MAC, 100, 3)]);
            assert_eq!(s.rx.pop_used(&s.mem), Some((u32::from(heads[3]), 112)));
            assert_eq!(s.stats().rx_frames, 3);
            assert!(!s.t.with_device(|d| d.rx_waiting_for_buffers()));
        });
    }
}

#[test]
fn event_idx_gives_one_interrupt_decision_per_batch() {
    for vectored in [false, true] {
        let mut b = MemBackend::plain();
        b.vectored = vectored;
        let mut s = setup_with(device(b, opts()), VIRTIO_F_EVENT_IDX);
        let size = u64::from(s.tx.size);
        // used_event = 2: the driver wants an interrupt once the used
        // index passes 2, i.e. with the third chain returned.
        s.mem
            .write_obj(2u16, GuestAddress(s.tx.avail + 4 + 2 * size))
            .unwrap();
        let f = [hdr_bytes(NetHeader::default()), frame(PEER, 60, 1)].concat();
        let post = |s: &mut Setup, i: u64| {
            let a = s.put(BUF + 0x1000 * i, &f);
            s.tx.push(&s.mem, &[r(a, f.len() as u32)]);
        };
        // Two frames, one notification: both go, and the used index moves
        // 0 -> 2 without passing 2: no interrupt.
        post(&mut s, 0);
        post(&mut s, 1);
        notify(&s.t, 1);
        assert_eq!(s.sent().len(), 2);
        assert_eq!(s.t.r32(0x60) & INT_USED_BUFFER, 0);
        // The device asks for the driver's next notification at avail
        // index 2 (`avail_event`), past the batch it took.
        let avail_event: u16 = s
            .mem
            .read_obj(GuestAddress(s.tx.used + 4 + 8 * size))
            .unwrap();
        assert_eq!(avail_event, 2);
        // The third frame passes used_event: one interrupt.
        post(&mut s, 2);
        notify(&s.t, 1);
        assert_eq!(s.sent().len(), 3);
        assert_eq!(s.t.r32(0x60) & INT_USED_BUFFER, INT_USED_BUFFER);
        assert_eq!(s.tx.pop_used(&s.mem).map(|u| u.1), Some(0));
    }
}

#[test]
fn a_frame_in_more_pieces_than_one_system_call_takes_is_copied() {
    for vectored in [false, true] {
        let mut b = MemBackend::plain();
        b.vectored = vectored;
        let mut s = setup_with(device(b, opts()), VIRTIO_F_INDIRECT_DESC);
        let f = frame(PEER, 1500, 9);
        let data = s.put(BUF, &[vec![0u8; 12], f.clone()].concat());
        // An indirect table of 1100 one-byte buffers (the last holds the rest).
        let table = BUF + 0x1_0000;
        let n = 1100u64;
        for i in 0..n {
            let at = table + 16 * i;
            let len = if i + 1 == n { 1512 - (n - 1) } else { 1 };
            let next = if i + 1 == n { 0u16 } else { i as u16 + 1 };
            let flags = if i + 1 == n { 0u16 } else { DESC_F_NEXT };
            s.mem.write_obj(data + i, GuestAddress(at)).unwrap();
            s.mem.write_obj(len as u32, GuestAddress(at + 8)).unwrap();
            s.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            s.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let head = s.tx.push(&s.mem, &[r(table, (16 * n) as u32)]);
        s.tx.set_indirect(&s.mem, head);
        notify(&s.t, 1);
        assert_eq!(s.tx.pop_used(&s.mem), Some((u32::from(head), 0)));
        assert_eq!(s.sent(), vec![f], "vectored: {vectored}");
        assert_eq!(s.stats().tx_frames, 1);
    }
}
