//! virtio-net over a TAP device against the raw TAP, in the same run.
//!
//! - `tap_tx`: the guest driver puts 64 frames of 1514 bytes (each behind
//!   a 12-byte header, in separate descriptors) on the transmit queue
//!   (not timed) and the device writes them to the TAP
//!   (`process_queue(TXQ)`, timed), against 64 `write`s of the same
//!   packets on a second TAP of the same kind.
//! - `tap_rx`: the host stack sends 64 UDP datagrams (1514-byte frames) out
//!   of the TAP (not timed); then the device reads them and places them in
//!   the guest's receive buffers (`process_queue(RXQ)`, merged buffers;
//!   the driver takes them and gives the buffers back afterwards, not
//!   timed), against 64 `read`s of the same frames from the TAP.
//!
//! Only the device's work is timed: the test's driver (a simple split
//! queue driver going through `vm-memory` for every field) is not what is
//! compared with the raw TAP; a real guest's driver runs on its own vCPU.
//!
//! Each group also times `virtio_net_copying`: the same device on a TAP
//! that does not offer its vectored methods, so that frames are copied
//! through the device's own buffer (the path before frames moved in place).
//!
//! Runs in a network namespace of its own (`unshare`), as root; prints a
//! note and does nothing otherwise.
//! `cargo bench -p vmkit-net --bench tap`

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bring_up, memory, Mem, Vq};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vm_memory::{Bytes, GuestAddress};
use vmkit_net::{NetBackend, Tap};
use vmkit_virtio::mmio::MmioTransport;
use vmkit_virtio::net::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const BATCH: usize = 64;
const FRAME: usize = 1514;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0x10, 2];
const RX_BUF: u32 = 4096;

type Transport<B> = MmioTransport<Arc<Mem>, Net<B>>;

/// The TAP without its vectored methods: the device copies each frame
/// through a buffer of its own, as before frames moved in place.
struct Copying(Tap);

impl NetBackend for Copying {
    fn capabilities(&self) -> BackendCapabilities {
        self.0.capabilities()
    }
    fn set_rx_offloads(&mut self, offloads: u64) -> std::io::Result<()> {
        self.0.set_rx_offloads(offloads)
    }
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn send(&mut self, packet: &[u8]) -> std::io::Result<()> {
        self.0.send(packet)
    }
}

fn sh(cmd: &str) {
    let ok = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{cmd}");
}

/// A TAP with the virtio-net header, up, IPv4 only, with `addr`.
fn tap(name: &str, addr: &str) -> Tap {
    let t = Tap::open(name).unwrap();
    let n = t.name().to_string();
    sh(&format!(
        "echo 1 > /proc/sys/net/ipv6/conf/{n}/disable_ipv6"
    ));
    sh(&format!("ip addr add {addr} dev {n} && ip link set {n} up"));
    t
}

struct Guest<B: NetBackend> {
    t: Transport<B>,
    mem: Arc<Mem>,
    rx: Vq,
    tx: Vq,
    rx_addr: Vec<u64>,
    packet: Vec<u8>,
}

impl<B: NetBackend> Guest<B> {
    fn new(tap: B) -> Guest<B> {
        let opts = NetOptions {
            mac: GUEST_MAC,
            ..NetOptions::default()
        };
        let mem = memory();
        let net = Net::new(tap, opts).unwrap();
        let t = MmioTransport::new(net, mem.clone(), EventFd::new(EFD_NONBLOCK).unwrap()).unwrap();
        let (rx, tx) = (Vq::new(0, 256), Vq::new(1, 256));
        bring_up(&t, VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_CSUM, &[&rx, &tx]);
        let mut g = Guest {
            t,
            mem,
            rx,
            tx,
            rx_addr: vec![0; 256],
            packet: Vec::new(),
        };
        for i in 0..128u64 {
            g.post_rx(0x10_0000 + u64::from(RX_BUF) * i);
        }
        // The transmit packets: header and frame, at fixed addresses.
        let frame = tx_frame();
        for i in 0..BATCH as u64 {
            let a = 0x50_0000 + 0x1000 * i;
            g.mem
                .write_slice(&NetHeader::default().to_bytes(), GuestAddress(a))
                .unwrap();
            g.mem.write_slice(&frame, GuestAddress(a + 0x100)).unwrap();
        }
        g.packet = [NetHeader::default().to_bytes().to_vec(), frame].concat();
        g
    }

    fn post_rx(&mut self, addr: u64) {
        let head = self.rx.push(&self.mem, &[(addr, RX_BUF, true)]);
        self.rx_addr[usize::from(head)] = addr;
    }

    /// The driver's half of a transmit batch: 64 chains made available.
    fn post_tx(&mut self) {
        for i in 0..BATCH as u64 {
            let a = 0x50_0000 + 0x1000 * i;
            self.tx.push(
                &self.mem,
                &[(a, 12, false), (a + 0x100, FRAME as u32, false)],
            );
        }
    }

    /// The driver takes the sent chains back.
    fn reap_tx(&mut self) {
        for _ in 0..BATCH {
            self.tx.pop_used(&self.mem).unwrap();
        }
    }

    /// How many used entries the device has published that the driver
    /// has not taken.
    fn rx_used_pending(&self) -> u16 {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.rx.used + 2)).unwrap();
        idx.wrapping_sub(self.rx.last_used)
    }

    /// `iters` transmit batches; the time spent in the device.
    fn time_tx(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.post_tx();
            let start = Instant::now();
            self.t.process_queue(TXQ).unwrap();
            total += start.elapsed();
            self.reap_tx();
        }
        total
    }

    /// `iters` receive batches, each after `inject` (not timed); the time
    /// spent in the device.
    fn time_rx(&mut self, iters: u64, inject: impl Fn()) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            inject();
            let (n, spent) = self.receive(BATCH);
            total += spent;
            assert_eq!(n, BATCH, "every frame reached the guest");
        }
        total
    }

    /// Receives `n` frames; returns how many arrived and the time spent
    /// in the device (the driver gives the buffers back afterwards, untimed).
    fn receive(&mut self, n: usize) -> (usize, Duration) {
        let start = Instant::now();
        let end = start + Duration::from_secs(2);
        while usize::from(self.rx_used_pending()) < n && Instant::now() < end {
            self.t.process_queue(RXQ).unwrap();
        }
        let spent = start.elapsed();
        let mut got = 0;
        while let Some((head, _len)) = self.rx.pop_used(&self.mem) {
            let addr = self.rx_addr[usize::from(head)];
            self.post_rx(addr);
            got += 1;
        }
        (got, spent)
    }
}

/// A frame to a MAC nobody has: the host drops it on arrival.
fn tx_frame() -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0x10, 0x99];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(FRAME, 0xab);
    f
}

fn bench(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("tap bench: needs root (TAP devices, a network namespace); skipped");
        return;
    }
    // SAFETY: unshare(CLONE_NEWNET) moves only the calling thread (which
    // runs every benchmark) into a new, empty network namespace; it takes
    // no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "tap bench: unshare(CLONE_NEWNET) failed: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    sh("ip link set lo up");
    let mut g = Guest::new(tap("vmkbdev", "10.10.0.1/24"));
    let mut gc = Guest::new(Copying(tap("vmkbcpy", "10.12.0.1/24")));
    let mut raw = tap("vmkbraw", "10.11.0.1/24");
    for (dev, ip) in [
        ("vmkbdev", "10.10.0.2"),
        ("vmkbcpy", "10.12.0.2"),
        ("vmkbraw", "10.11.0.2"),
    ] {
        let mac = common::fmt_mac(&GUEST_MAC);
        sh(&format!("ip neigh replace {ip} lladdr {mac} dev {dev}"));
    }
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    let payload = vec![0x5au8; FRAME - 14 - 20 - 8];
    let inject = |to: Ipv4Addr| {
        for _ in 0..BATCH {
            sock.send_to(&payload, (to, 9)).unwrap();
        }
    };

    let mut group = c.benchmark_group("tap_tx");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function(BenchmarkId::new("virtio_net_device", "64x1514"), |b| {
        b.iter_custom(|iters| g.time_tx(iters))
    });
    group.bench_function(BenchmarkId::new("virtio_net_copying", "64x1514"), |b| {
        b.iter_custom(|iters| gc.time_tx(iters))
    });
    let packet = g.packet.clone();
    group.bench_function(BenchmarkId::new("raw_tap_write", "64x1514"), |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                raw.send(&packet).unwrap();
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("tap_rx");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function(BenchmarkId::new("virtio_net_device", "64x1514"), |b| {
        b.iter_custom(|iters| g.time_rx(iters, || inject(Ipv4Addr::new(10, 10, 0, 2))))
    });
    group.bench_function(BenchmarkId::new("virtio_net_copying", "64x1514"), |b| {
        b.iter_custom(|iters| gc.time_rx(iters, || inject(Ipv4Addr::new(10, 12, 0, 2))))
    });
    let raw_fd = raw.as_raw_fd();
    let mut buf = vec![0u8; MAX_PACKET_LEN];
    group.bench_function(BenchmarkId::new("raw_tap_read", "64x1514"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                inject(Ipv4Addr::new(10, 11, 0, 2));
                let start = Instant::now();
                let mut n = 0;
                let end = start + Duration::from_secs(2);
                while n < BATCH && Instant::now() < end {
                    match raw.recv(&mut buf) {
                        Ok(len) => {
                            assert_eq!(len, 12 + FRAME);
                            n += 1;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("read {raw_fd}: {e}"),
                    }
                }
                total += start.elapsed();
                assert_eq!(n, BATCH);
            }
            total
        })
    });
    group.finish();
    for s in [
        g.t.with_device(|d| d.stats()),
        gc.t.with_device(|d| d.stats()),
    ] {
        assert_eq!(
            s.tx_malformed + s.rx_dropped_invalid + s.rx_dropped_too_big + s.bad_chains,
            0
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
