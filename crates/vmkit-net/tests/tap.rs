//! virtio-net over a real TAP device: frames the host's network stack
//! sends reach the guest's receive queue, and frames the guest puts on its
//! transmit queue reach host sockets, all through descriptor chains in
//! guest memory (the test plays the guest driver and a tiny guest network
//! stack). Each test runs in a network namespace it creates.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use vm_memory::{Bytes, GuestAddress};
use vmkit_net::{Tap, TapError, TapOptions};
use vmkit_virtio::mmio::MmioTransport;
use vmkit_virtio::net::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x09, 0x02];
const RX_BASE: u64 = 0x10_0000;
const TX_BASE: u64 = 0x40_0000;
const TIMEOUT: Duration = Duration::from_secs(5);

type Transport = MmioTransport<Arc<Mem>, Net<Tap>>;

/// The guest side: driver and network stack.
struct Guest {
    t: Transport,
    mem: Arc<Mem>,
    rx: Vq,
    tx: Vq,
    buf_len: u32,
    rx_addr: std::collections::HashMap<u16, u64>,
    next_slot: u64,
    tx_slot: u64,
    tap_name: String,
    tap_fd: i32,
    host_mac: [u8; 6],
    stack: common::Guest,
}

impl Guest {
    /// A TAP `vmktap%d` in the current namespace (host address
    /// 10.9.0.1/24, up), a virtio-net device on it, brought up with
    /// `features` and `rx_buffers` receive buffers.
    fn new(ns: &Netns, features: u64, rx_buffers: u16) -> Guest {
        let tap = Tap::open("vmktap%d").unwrap();
        let name = tap.name().to_string();
        let fd = tap.as_raw_fd();
        // IPv4 only on the TAP: no IPv6 neighbour discovery frames in the way.
        ns.exec(&[
            "sh",
            "-c",
            &format!("echo 1 > /proc/sys/net/ipv6/conf/{name}/disable_ipv6"),
        ]);
        ns.ip(&["addr", "add", "10.9.0.1/24", "dev", &name]);
        ns.ip(&["link", "set", &name, "up"]);
        let host_mac = ns.mac(&name);
        let net = Net::new(
            tap,
            NetOptions {
                mac: GUEST_MAC,
                ..NetOptions::default()
            },
        )
        .unwrap();
        let mem = memory();
        let t = MmioTransport::new(net, mem.clone(), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        let (rx, tx) = (Vq::new(0, 256), Vq::new(1, 256));
        bring_up(&t, features, &[&rx, &tx]);
        let mrg = features & VIRTIO_NET_F_MRG_RXBUF != 0;
        let mut g = Guest {
            t,
            mem,
            rx,
            tx,
            buf_len: if mrg { 2048 } else { 0x1_1000 },
            rx_addr: Default::default(),
            next_slot: 0,
            tx_slot: 0,
            tap_name: name,
            tap_fd: fd,
            host_mac,
            stack: common::Guest {
                mac: GUEST_MAC,
                ip: GUEST_IP,
            },
        };
        g.post_rx(rx_buffers);
        g
    }

    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let stride = u64::from(self.buf_len).next_multiple_of(0x1000);
            let addr = RX_BASE + stride * (self.next_slot % (0x30_0000 / stride));
            self.next_slot += 1;
            let head = self.rx.push(&self.mem, &[(addr, self.buf_len, true)]);
            self.rx_addr.insert(head, addr);
        }
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// What the VMM does when the TAP is readable, then what the guest
    /// driver does on the interrupt: collects received packets (merging
    /// buffers) and gives the buffers back.
    fn receive(&mut self) -> Vec<(NetHeader, Vec<u8>)> {
        self.t.process_queue(RXQ).unwrap();
        let mut out = Vec::new();
        while let Some((head, len)) = self.rx.pop_used(&self.mem) {
            let addr = self.rx_addr.remove(&head).unwrap();
            let first = self.read(addr, len as usize);
            let hdr = NetHeader::from_bytes(&first[..12].try_into().unwrap());
            let mut data = first[12..].to_vec();
            for _ in 1..hdr.num_buffers {
                let (h, l) = self.rx.pop_used(&self.mem).expect("merged buffer");
                let a = self.rx_addr.remove(&h).unwrap();
                data.extend(self.read(a, l as usize));
            }
            self.post_rx(hdr.num_buffers.max(1));
            out.push((hdr, data));
        }
        out
    }

    /// Receives until `want` accepts a frame, answering ARP on the way.
    fn receive_until<T>(
        &mut self,
        mut want: impl FnMut(&NetHeader, &[u8]) -> Option<T>,
    ) -> Option<T> {
        let mut got = None;
        wait_for(TIMEOUT, || {
            for (h, f) in self.receive() {
                if let Some(reply) = self.stack.arp_reply(&f) {
                    self.send(NetHeader::default(), &reply);
                    continue;
                }
                if got.is_none() {
                    got = want(&h, &f);
                }
            }
            got.take()
        })
    }

    /// Puts one packet on the transmit queue and notifies through the
    /// QueueNotify register, as a driver does.
    fn send(&mut self, hdr: NetHeader, frame: &[u8]) {
        let addr = TX_BASE + 0x1_1000 * (self.tx_slot % 16);
        self.tx_slot += 1;
        let hb = hdr.to_bytes();
        self.mem.write_slice(&hb, GuestAddress(addr)).unwrap();
        self.mem
            .write_slice(frame, GuestAddress(addr + 0x100))
            .unwrap();
        // Header and frame in separate buffers, as Linux does without ANY_LAYOUT.
        let head = self.tx.push(
            &self.mem,
            &[(addr, 12, false), (addr + 0x100, frame.len() as u32, false)],
        );
        self.t.w32(0x50, 1);
        assert_eq!(self.tx.pop_used(&self.mem), Some((head, 0)));
    }

    fn stats(&self) -> NetStats {
        self.t.with_device(|d| d.stats())
    }

    /// A static neighbour entry for the guest on the host, so host traffic
    /// needs no ARP round trip.
    fn pin_neighbour(&self, ns: &Netns) {
        ns.ip(&[
            "neigh",
            "replace",
            "10.9.0.2",
            "lladdr",
            &common::fmt_mac(&GUEST_MAC),
            "dev",
            &self.tap_name,
        ]);
    }
}

fn host_udp(port: u16) -> UdpSocket {
    let s = UdpSocket::bind((HOST_IP, port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn readable(fd: i32, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes one pollfd, a live local, for the
    // given count of 1.
    let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    r == 1 && p.revents & libc::POLLIN != 0
}

#[test]
fn tap_is_created_with_the_vnet_header_and_removed_on_close() {
    if !host_can(
        "tap_is_created_with_the_vnet_header_and_removed_on_close",
        false,
    ) {
        return;
    }
    let ns = Netns::new("tap");
    ns.run(|| {
        let tap = Tap::open("vmktap%d").unwrap();
        assert!(tap.name().starts_with("vmktap"), "{}", tap.name());
        let link = ns.link(tap.name()).expect("TAP exists");
        assert_eq!(link["linkinfo"]["info_kind"], "tun");
        let data = &link["linkinfo"]["info_data"];
        assert_eq!(data["type"], "tap");
        assert_eq!(data["pi"], false);
        assert_eq!(data["vnet_hdr"], true);
        let caps = tap.capabilities();
        assert!(caps.vnet_hdr);
        assert_eq!(
            caps.tx_offloads,
            VIRTIO_NET_F_CSUM
                | VIRTIO_NET_F_HOST_TSO4
                | VIRTIO_NET_F_HOST_TSO6
                | VIRTIO_NET_F_HOST_ECN
        );
        let want = VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6;
        assert_eq!(caps.rx_offloads & want, want, "{:#x}", caps.rx_offloads);
        // A second one gets the next number; a named one its name.
        let tap2 = Tap::open("vmktap%d").unwrap();
        assert_ne!(tap2.name(), tap.name());
        let named = Tap::open_with(&TapOptions {
            name: "vmkplain".into(),
            vnet_hdr: false,
        })
        .unwrap();
        assert_eq!(named.name(), "vmkplain");
        assert_eq!(named.capabilities(), BackendCapabilities::default());
        assert_eq!(
            ns.link("vmkplain").unwrap()["linkinfo"]["info_data"]["vnet_hdr"],
            false
        );
        // Closing removes the interface.
        let name = tap.name().to_string();
        drop(tap);
        assert!(ns.link(&name).is_none());
        for bad in ["", "a/b", "sixteen-chars-xx", "has space", "a:b"] {
            assert!(
                matches!(Tap::open(bad), Err(TapError::InvalidName { .. })),
                "{bad:?}"
            );
        }
        let e = Tap::open("..").unwrap_err();
        assert!(e.to_string().contains(".."), "{e}");
    });
}

#[test]
fn udp_and_arp_flow_between_the_host_stack_and_the_guest_queues() {
    if !host_can(
        "udp_and_arp_flow_between_the_host_stack_and_the_guest_queues",
        false,
    ) {
        return;
    }
    let ns = Netns::new("udp");
    ns.run(|| {
        let mut g = Guest::new(&ns, VIRTIO_NET_F_MRG_RXBUF, 64);
        let sock = host_udp(4000);
        // Guest to host.
        for i in 0..50u32 {
            let data = format!("guest datagram {i}");
            let f = g
                .stack
                .udp_frame(g.host_mac, 5000, HOST_IP, 4000, data.as_bytes());
            g.send(NetHeader::default(), &f);
            let mut buf = [0u8; 2048];
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], data.as_bytes());
            assert_eq!(from, (GUEST_IP, 5000).into());
        }
        // Host to guest: the host resolves the guest's address by ARP
        // first (the guest answers through its transmit queue).
        for i in 0..50u32 {
            let data = format!("host datagram {i}");
            sock.send_to(data.as_bytes(), (GUEST_IP, 5000)).unwrap();
            let got = g
                .receive_until(|h, f| {
                    let ip = parse_ipv4(f)?;
                    (ip.proto == 17).then(|| {
                        (
                            *h,
                            ip.src,
                            ip.payload[8..].to_vec(),
                            udp_checksum_ok(ip.packet),
                        )
                    })
                })
                .expect("datagram reaches the guest");
            assert_eq!(got.1, HOST_IP);
            assert_eq!(got.2, data.as_bytes());
            // No receive offloads negotiated: a complete checksum, no flags.
            assert_eq!(got.0.flags, 0);
            assert_eq!(got.0.gso_type, VIRTIO_NET_HDR_GSO_NONE);
            assert!(got.3, "UDP checksum is complete");
        }
        let st = g.stats();
        assert!(st.tx_frames >= 51, "{st:?}"); // 50 datagrams and an ARP reply
        assert!(st.rx_frames >= 51, "{st:?}"); // 50 datagrams and an ARP request
        assert_eq!(st.tx_malformed + st.bad_chains + st.rx_dropped_invalid, 0);
    });
}

#[test]
fn checksum_offload_follows_what_the_guest_negotiated() {
    if !host_can("checksum_offload_follows_what_the_guest_negotiated", false) {
        return;
    }
    let ns = Netns::new("csum");
    ns.run(|| {
        let features = VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM;
        let mut g = Guest::new(&ns, features, 64);
        g.pin_neighbour(&ns);
        let sock = host_udp(4010);
        // Guest to host with a partial checksum: the host completes
        // (trusts) it and delivers.
        let data = b"partial checksum from the guest";
        let mut f = g.stack.udp_frame(g.host_mac, 5010, HOST_IP, 4010, data);
        let partial = partial_csum(GUEST_IP, HOST_IP, 17, 8 + data.len());
        f[40..42].copy_from_slice(&partial.to_be_bytes());
        let hdr = NetHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..NetHeader::default()
        };
        g.send(hdr, &f);
        let mut buf = [0u8; 256];
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], data);
        // The same frame without NEEDS_CSUM has a wrong checksum: dropped
        // by the host's UDP stack. (Proves the header is what mattered.)
        g.send(NetHeader::default(), &f);
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(sock.recv_from(&mut buf).is_err(), "bad checksum delivered");
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();

        // Host to guest: GUEST_CSUM was negotiated, so the TAP hands over
        // the partial checksum and the header says so.
        sock.send_to(b"to the guest", (GUEST_IP, 5010)).unwrap();
        let (h, ok) = g
            .receive_until(|h, f| {
                let ip = parse_ipv4(f)?;
                (ip.proto == 17).then(|| (*h, udp_checksum_ok(ip.packet)))
            })
            .unwrap();
        assert_eq!(
            h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_F_NEEDS_CSUM
        );
        assert_eq!((h.csum_start, h.csum_offset), (34, 6));
        assert!(!ok, "the checksum is left for the guest to complete");
        assert_eq!(
            g.t.with_device(|d| d.rx_offloads()),
            VIRTIO_NET_F_GUEST_CSUM
        );
    });
}

#[test]
fn tcp_segmentation_offload_from_the_guest_reaches_a_host_socket() {
    if !host_can(
        "tcp_segmentation_offload_from_the_guest_reaches_a_host_socket",
        false,
    ) {
        return;
    }
    let ns = Netns::new("tso");
    ns.run(|| {
        let features = VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4;
        let mut g = Guest::new(&ns, features, 64);
        g.pin_neighbour(&ns);
        let listener = TcpListener::bind((HOST_IP, 4020)).unwrap();
        let (gport, hport) = (5020u16, 4020u16);
        let isn = 1000u32;
        let syn = tcp(GUEST_IP, gport, HOST_IP, hport, isn, 0, TCP_SYN, &[]);
        g.send(
            NetHeader::default(),
            &eth(g.host_mac, GUEST_MAC, ETH_IPV4, &syn),
        );
        let host_isn = g
            .receive_until(|_, f| {
                let ip = parse_ipv4(f)?;
                let t = ip.payload;
                (ip.proto == 6 && t[13] & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK)
                    .then(|| u32::from_be_bytes([t[4], t[5], t[6], t[7]]))
            })
            .expect("SYN-ACK");
        let ack = host_isn.wrapping_add(1);
        let a = tcp(GUEST_IP, gport, HOST_IP, hport, isn + 1, ack, TCP_ACK, &[]);
        g.send(
            NetHeader::default(),
            &eth(g.host_mac, GUEST_MAC, ETH_IPV4, &a),
        );
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();

        // One 6000-byte TSO packet, cut into 1400-byte segments by the host.
        let payload: Vec<u8> = (0..6000u32).map(|i| (i * 7) as u8).collect();
        let mut seg = tcp(
            GUEST_IP,
            gport,
            HOST_IP,
            hport,
            isn + 1,
            ack,
            TCP_ACK | TCP_PSH,
            &payload,
        );
        let partial = partial_csum(GUEST_IP, HOST_IP, 6, 20 + payload.len());
        seg[36..38].copy_from_slice(&partial.to_be_bytes());
        let hdr = NetHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1400,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        };
        g.send(hdr, &eth(g.host_mac, GUEST_MAC, ETH_IPV4, &seg));
        let mut got = vec![0u8; payload.len()];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(got, payload);
        // The host acknowledges all of it.
        let want_ack = isn + 1 + payload.len() as u32;
        let acked = g.receive_until(|_, f| {
            let ip = parse_ipv4(f)?;
            let t = ip.payload;
            let ackno = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
            (ip.proto == 6 && ackno == want_ack).then_some(())
        });
        assert!(acked.is_some(), "host acknowledged the whole TSO packet");
        assert_eq!(g.stats().tx_malformed, 0);
    });
}

#[test]
fn receive_waits_for_guest_buffers_with_frames_queued_in_the_tap() {
    if !host_can(
        "receive_waits_for_guest_buffers_with_frames_queued_in_the_tap",
        false,
    ) {
        return;
    }
    let ns = Netns::new("rxwait");
    ns.run(|| {
        // No merged buffers: one 68 KiB buffer per frame; only 4 of them.
        let mut g = Guest::new(&ns, 0, 4);
        g.pin_neighbour(&ns);
        let sock = host_udp(4030);
        assert!(!readable(g.tap_fd, 0), "nothing queued yet");
        for i in 0..20u8 {
            sock.send_to(&[i; 100], (GUEST_IP, 5030)).unwrap();
        }
        assert!(readable(g.tap_fd, 1000), "the TAP fd polls readable");
        // The device fills the 4 buffers and holds the fifth frame.
        g.t.process_queue(RXQ).unwrap();
        assert!(g.t.with_device(|d| d.rx_waiting_for_buffers()));
        let mut seen = Vec::new();
        while let Some((head, len)) = g.rx.pop_used(&g.mem) {
            let addr = g.rx_addr.remove(&head).unwrap();
            let f = g.read(addr, len as usize);
            let hdr = NetHeader::from_bytes(&f[..12].try_into().unwrap());
            assert_eq!(hdr.num_buffers, 1);
            seen.push(parse_ipv4(&f[12..]).unwrap().payload[8]);
        }
        assert_eq!(seen, [0, 1, 2, 3]);
        // The guest adds buffers and notifies: the rest arrive, in order.
        g.post_rx(64);
        g.t.w32(0x50, 0);
        let rest: Vec<u8> = g
            .receive()
            .iter()
            .filter_map(|(_, f)| parse_ipv4(f).map(|ip| ip.payload[8]))
            .collect();
        let mut all = seen.clone();
        all.extend(rest);
        assert_eq!(all, (0..20).collect::<Vec<u8>>());
        assert!(!g.t.with_device(|d| d.rx_waiting_for_buffers()));
        assert!(!readable(g.tap_fd, 0), "TAP drained");
    });
}
