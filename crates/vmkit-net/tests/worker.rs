//! `NetWorker` over a real TAP: with the worker thread running, frames the
//! host sends reach the guest's receive queue (also frames that waited in
//! the TAP while the driver was not ready or had no buffers), and frames
//! the guest queues and notifies reach a host socket. The test plays the
//! guest driver (descriptor chains in guest memory) and signals the
//! notification eventfds as the hypervisor would on a `QueueNotify` write.
//! Each test runs in a network namespace it creates.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use vm_memory::{Bytes, GuestAddress};
use vmkit_net::worker::{NetWorker, QueueKicks, WorkerError};
use vmkit_net::Tap;
use vmkit_virtio::mmio::MmioTransport;
use vmkit_virtio::net::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 1, 2);
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x19, 0x02];
const RX_BASE: u64 = 0x10_0000;
const TX_BASE: u64 = 0x40_0000;
const BUF_LEN: u32 = 2048;
/// How long the test waits for something that must happen before calling it
/// a failure (not a performance bound).
const TIMEOUT: Duration = Duration::from_secs(10);

type Transport = MmioTransport<Arc<Mem>, Net<Tap>>;

/// The device on a TAP in the current namespace (host address
/// 10.9.1.1/24, up, a static neighbour entry for the guest), and the
/// guest's side of its queues, before the driver has touched it.
struct Setup {
    transport: Arc<Transport>,
    mem: Arc<Mem>,
    rx: Vq,
    tx: Vq,
    rx_addr: HashMap<u16, u64>,
    next_rx: u64,
    next_tx: u64,
    host_mac: [u8; 6],
    stack: common::Guest,
}

impl Setup {
    fn new(ns: &Netns) -> Setup {
        let tap = Tap::open("vmktap%d").unwrap();
        let name = tap.name().to_string();
        ns.exec(&[
            "sh",
            "-c",
            &format!("echo 1 > /proc/sys/net/ipv6/conf/{name}/disable_ipv6"),
        ]);
        ns.ip(&["addr", "add", "10.9.1.1/24", "dev", &name]);
        ns.ip(&["link", "set", &name, "up"]);
        ns.ip(&[
            "neigh",
            "replace",
            &GUEST_IP.to_string(),
            "lladdr",
            &common::fmt_mac(&GUEST_MAC),
            "dev",
            &name,
        ]);
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
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let transport = Arc::new(MmioTransport::new(net, mem.clone(), irq).unwrap());
        Setup {
            transport,
            mem,
            rx: Vq::new(0, 256),
            tx: Vq::new(1, 256),
            rx_addr: HashMap::new(),
            next_rx: 0,
            next_tx: 0,
            host_mac,
            stack: common::Guest {
                mac: GUEST_MAC,
                ip: GUEST_IP,
            },
        }
    }

    /// What the driver does at probe: features (mergeable receive buffers
    /// only), both queues, DRIVER_OK.
    fn bring_up(&self) {
        bring_up(
            &*self.transport,
            VIRTIO_NET_F_MRG_RXBUF,
            &[&self.rx, &self.tx],
        );
    }

    /// Adds `n` receive buffers (not notified).
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let addr = RX_BASE + 0x1000 * (self.next_rx % 0x300);
            self.next_rx += 1;
            let head = self.rx.push(&self.mem, &[(addr, BUF_LEN, true)]);
            self.rx_addr.insert(head, addr);
        }
    }

    /// The UDP payloads of the frames the device has put in the receive
    /// queue so far (each in one buffer: they are small).
    fn received(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some((head, len)) = self.rx.pop_used(&self.mem) {
            let addr = self.rx_addr.remove(&head).unwrap();
            let mut buf = vec![0u8; len as usize];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            let hdr = NetHeader::from_bytes(&buf[..12].try_into().unwrap());
            assert_eq!(hdr.num_buffers, 1, "a small frame fills one buffer");
            if let Some(ip) = parse_ipv4(&buf[12..]).filter(|ip| ip.proto == 17) {
                out.push(ip.payload[8..].to_vec());
            }
        }
        out
    }

    /// Waits until the receive queue has given back `count` datagrams.
    fn receive(&mut self, count: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        wait_for(TIMEOUT, || {
            got.extend(self.received());
            (got.len() >= count).then_some(())
        })
        .unwrap_or_else(|| panic!("{count} datagrams expected, {} arrived", got.len()));
        got
    }

    /// Puts a datagram to the host on the transmit queue (not notified).
    fn queue_tx(&mut self, data: &[u8]) {
        let addr = TX_BASE + 0x1000 * (self.next_tx % 0x100);
        self.next_tx += 1;
        let frame = self
            .stack
            .udp_frame(self.host_mac, 5100, HOST_IP, 4100, data);
        let hdr = NetHeader::default().to_bytes();
        self.mem.write_slice(&hdr, GuestAddress(addr)).unwrap();
        self.mem
            .write_slice(&frame, GuestAddress(addr + 0x100))
            .unwrap();
        self.tx.push(
            &self.mem,
            &[(addr, 12, false), (addr + 0x100, frame.len() as u32, false)],
        );
    }
}

/// Notification eventfds, and the test's handles on them.
fn kicks() -> (QueueKicks, EventFd, EventFd) {
    let rx = EventFd::new(EFD_NONBLOCK).unwrap();
    let tx = EventFd::new(EFD_NONBLOCK).unwrap();
    let (rx2, tx2) = (rx.try_clone().unwrap(), tx.try_clone().unwrap());
    (QueueKicks { rx, tx }, rx2, tx2)
}

fn host_udp(port: u16) -> UdpSocket {
    let s = UdpSocket::bind((HOST_IP, port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

#[test]
fn the_worker_moves_frames_between_the_tap_and_the_guest_queues() {
    if !host_can(
        "the_worker_moves_frames_between_the_tap_and_the_guest_queues",
        false,
    ) {
        return;
    }
    let ns = Netns::new("worker");
    ns.run(|| {
        let mut s = Setup::new(&ns);
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        let (kicks, rx_kick, tx_kick) = kicks();
        let worker = NetWorker::start(s.transport.clone(), kicks, move |e: &WorkerError| {
            seen.lock().unwrap().push(e.to_string())
        })
        .unwrap();
        assert!(!worker.is_finished());
        let sock = host_udp(4100);

        // Sent before the driver is ready: the frames wait in the TAP.
        for i in 0..3 {
            sock.send_to(format!("early {i}").as_bytes(), (GUEST_IP, 5100))
                .unwrap();
        }
        s.bring_up();
        // The driver adds buffers after DRIVER_OK and notifies; whether the
        // worker saw the device go live before or after, the frames arrive.
        s.post_rx(8);
        rx_kick.write(1).unwrap();
        let got = s.receive(3);
        assert_eq!(got, [b"early 0", b"early 1", b"early 2"]);
        assert!(
            s.transport.interrupt_evt().read().unwrap() >= 1,
            "the guest was interrupted"
        );

        // More frames than buffers: 5 take the buffers left, the rest wait
        // in the TAP until the guest adds buffers and notifies.
        for i in 0..9 {
            sock.send_to(format!("burst {i}").as_bytes(), (GUEST_IP, 5100))
                .unwrap();
        }
        let got = s.receive(5);
        let waiting = wait_for(TIMEOUT, || {
            s.transport
                .with_device(|d| d.rx_waiting_for_buffers())
                .then_some(())
        });
        assert!(waiting.is_some(), "the device waits for buffers");
        s.post_rx(16);
        rx_kick.write(1).unwrap();
        let rest = s.receive(4);
        let all: Vec<Vec<u8>> = got.into_iter().chain(rest).collect();
        let want: Vec<Vec<u8>> = (0..9).map(|i| format!("burst {i}").into_bytes()).collect();
        assert_eq!(all, want);

        // Guest to host: queued chains go out on the TX notification.
        for i in 0..10 {
            s.queue_tx(format!("from the guest {i}").as_bytes());
        }
        tx_kick.write(1).unwrap();
        let mut buf = [0u8; 256];
        for i in 0..10 {
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], format!("from the guest {i}").as_bytes());
            assert_eq!(from, (GUEST_IP, 5100).into());
        }
        let used = wait_for(TIMEOUT, || {
            let mut n = 0;
            while s.tx.pop_used(&s.mem).is_some() {
                n += 1;
            }
            (n > 0).then_some(n)
        });
        assert!(used.is_some(), "the transmit chains came back");

        let stats = s.transport.with_device(|d| d.stats());
        assert!(stats.rx_frames >= 12 && stats.tx_frames >= 10, "{stats:?}");
        assert_eq!(stats.tx_malformed + stats.bad_chains, 0, "{stats:?}");
        assert!(!worker.is_finished());
        worker.stop().unwrap();
        assert!(errors.lock().unwrap().is_empty(), "{:?}", errors.lock());
        // The thread let go of the transport.
        assert_eq!(Arc::strong_count(&s.transport), 1);
    });
}

#[test]
fn dropping_the_worker_joins_its_thread() {
    if !host_can("dropping_the_worker_joins_its_thread", false) {
        return;
    }
    let ns = Netns::new("workerdrop");
    ns.run(|| {
        let s = Setup::new(&ns);
        let (kicks, rx_kick, _tx_kick) = kicks();
        let worker = NetWorker::start(s.transport.clone(), kicks, |_: &WorkerError| {}).unwrap();
        assert_eq!(Arc::strong_count(&s.transport), 2);
        drop(worker);
        assert_eq!(Arc::strong_count(&s.transport), 1);
        // The worker closed its copies of the notification eventfds; the
        // test's own still works.
        rx_kick.write(1).unwrap();
        assert_eq!(rx_kick.read().unwrap(), 1);
    });
}

#[test]
fn a_requested_stop_is_joined_by_stop() {
    if !host_can("a_requested_stop_is_joined_by_stop", false) {
        return;
    }
    let ns = Netns::new("workerreq");
    ns.run(|| {
        let s = Setup::new(&ns);
        let (kicks, _rx_kick, _tx_kick) = kicks();
        let worker = NetWorker::start(s.transport.clone(), kicks, |_: &WorkerError| {}).unwrap();
        // Told twice, as a caller stopping several devices may: it ends once.
        worker.request_stop().unwrap();
        worker.request_stop().unwrap();
        worker.stop().unwrap();
        assert_eq!(Arc::strong_count(&s.transport), 1);
    });
}
