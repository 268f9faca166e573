//! virtio-net over a TAP device against the raw TAP, in the same run.
//!
//! - `tap_tx`: the guest driver puts a batch of frames (each behind a
//!   12-byte header, in separate descriptors) on the transmit queue (not
//!   timed) and the device writes them to the TAP (`process_queue(TXQ)`,
//!   timed), against `write`s of the same packets on a second TAP of the
//!   same kind. Two shapes: 64 frames of 1514 bytes, and 16 TCP segments of
//!   64 KiB handed over for segmentation offload (`GSO_TCPV4`, what a Linux
//!   guest sends with TSO on; the in-place path is for these).
//! - `tap_rx`: the host stack sends 64 UDP datagrams (1514-byte frames) out
//!   of the TAP (not timed); then the device reads them and places them in
//!   the guest's receive buffers (`process_queue(RXQ)`, merged buffers;
//!   the driver takes them and gives the buffers back afterwards, not
//!   timed), against 64 `read`s of the same frames from the TAP, each into
//!   a buffer of its own as the guest's are (and, as `raw_one_buffer`,
//!   into one buffer again and again).
//!
//! Only the device's work is timed: the test's driver (a simple split
//! queue driver going through `vm-memory` for every field) is not what is
//! compared with the raw TAP; a real guest's driver runs on its own vCPU.
//!
//! Each group also times `virtio_net_copying`: the same device on a TAP
//! that does not offer its vectored methods, so that frames are copied
//! through the device's own buffer (the path before frames moved in place).
//!
//! The raw TAP is the device's own TAP, through a second descriptor (a
//! `dup` of the device's): both write and read the same interface, so
//! that neither finds the kernel's state for it (the interface, its queue,
//! its socket) warmer than the other does because the leg before it used it.
//!
//! The legs run interleaved: every round times the device, the copying
//! device and the raw TAP one after the other (criterion reports the
//! device's rounds), with the device and the raw TAP swapping places every
//! other round, so that each follows the other leg as often as the one
//! before it. At the end each shape prints the medians, the
//! median of the per-round ratios device / raw and copying / raw, and the
//! ratios' quartiles (the spread on a busy machine). A filter picks a shape:
//! `cargo bench -p vmkit-net --bench tap -- tap_tx/16x65226`.
//!
//! Runs in a network namespace of its own (`unshare`), as root; prints a
//! note and does nothing otherwise.
//! `cargo bench -p vmkit-net --bench tap`

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
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
/// The GSO shape: 16 frames of 14 + 20 + 20 + 65172 bytes (an IPv4 TCP
/// segment of 64 KiB less the IP header limit), `gso_size` 1448.
const GSO_BATCH: usize = 16;
const GSO_FRAME: usize = 14 + 65_535 - 323;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0x10, 2];
const RX_BUF: u32 = 4096;

type Transport<B> = MmioTransport<Arc<Mem>, Net<B>>;

/// No backend at all: every frame is taken and dropped unread, so that a
/// device on it costs only its own bookkeeping (the queue, the header,
/// the frame's pieces), not the system call.
struct Discard;

impl NetBackend for Discard {
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            vnet_hdr: true,
            tx_offloads: VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4,
            rx_offloads: 0,
        }
    }
    fn set_rx_offloads(&mut self, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn recv(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
    fn send(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn vectored(&self) -> bool {
        true
    }
    fn send_vectored<S: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        _: &[u8],
        _: &[vm_memory::VolatileSlice<'_, S>],
    ) -> std::io::Result<()> {
        Ok(())
    }
}

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
    /// The transmit shapes: (frames per batch, address of the first, stride, frame length).
    shapes: Vec<Shape>,
}

/// A transmit batch laid out in guest memory: `count` packets (header, then
/// frame 0x100 bytes further), `stride` bytes apart from `base`.
#[derive(Clone)]
struct Shape {
    count: usize,
    base: u64,
    stride: u64,
    frame_len: usize,
    /// Header and frame back to back, as the raw TAP writes them.
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
        bring_up(
            &t,
            VIRTIO_NET_F_MRG_RXBUF | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4,
            &[&rx, &tx],
        );
        let mut g = Guest {
            t,
            mem,
            rx,
            tx,
            rx_addr: vec![0; 256],
            shapes: Vec::new(),
        };
        for i in 0..128u64 {
            g.post_rx(0x10_0000 + u64::from(RX_BUF) * i);
        }
        // The transmit packets: header and frame, at fixed addresses.
        for (count, base, stride, header, frame) in [
            (
                BATCH,
                0x20_0000,
                0x1000,
                NetHeader::default(),
                tx_frame(FRAME),
            ),
            (
                BATCH,
                0x58_0000,
                0x2000,
                NetHeader::default(),
                tx_frame(4096),
            ),
            (32, 0x48_0000, 0x3000, NetHeader::default(), tx_frame(9014)),
            (GSO_BATCH, 0x30_0000, 0x1_1000, gso_header(), gso_frame()),
        ] {
            for i in 0..count as u64 {
                let a = base + stride * i;
                g.mem
                    .write_slice(&header.to_bytes(), GuestAddress(a))
                    .unwrap();
                g.mem.write_slice(&frame, GuestAddress(a + 0x100)).unwrap();
            }
            g.shapes.push(Shape {
                count,
                base,
                stride,
                frame_len: frame.len(),
                packet: [header.to_bytes().to_vec(), frame].concat(),
            });
        }
        g
    }

    fn post_rx(&mut self, addr: u64) {
        let head = self.rx.push(&self.mem, &[(addr, RX_BUF, true)]);
        self.rx_addr[usize::from(head)] = addr;
    }

    /// The driver's half of a transmit batch of shape `s`: its chains made available.
    fn post_tx(&mut self, s: usize) {
        let Shape {
            count,
            base,
            stride,
            frame_len,
            ..
        } = self.shapes[s].clone();
        for i in 0..count as u64 {
            let a = base + stride * i;
            self.tx.push(
                &self.mem,
                &[(a, 12, false), (a + 0x100, frame_len as u32, false)],
            );
        }
    }

    /// The driver takes the sent chains back.
    fn reap_tx(&mut self, n: usize) {
        for _ in 0..n {
            self.tx.pop_used(&self.mem).unwrap();
        }
    }

    /// How many used entries the device has published that the driver
    /// has not taken.
    fn rx_used_pending(&self) -> u16 {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.rx.used + 2)).unwrap();
        idx.wrapping_sub(self.rx.last_used)
    }

    /// One transmit batch of shape `s`; the time spent in the device.
    fn time_tx(&mut self, s: usize) -> Duration {
        self.post_tx(s);
        let start = Instant::now();
        self.t.process_queue(TXQ).unwrap();
        let took = start.elapsed();
        self.reap_tx(self.shapes[s].count);
        took
    }

    /// One receive batch after `inject` (not timed); the time spent in the device.
    fn time_rx(&mut self, inject: impl Fn()) -> Duration {
        inject();
        let (n, spent) = self.receive(BATCH);
        assert_eq!(n, BATCH, "every frame reached the guest");
        spent
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

/// A frame of `len` bytes to a MAC nobody has: the host drops it on arrival.
fn tx_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0x10, 0x99];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(len, 0xab);
    f
}

/// The GSO frame's header: TCPv4 segmentation at 1448 bytes, the checksum
/// left to the host (as a Linux guest with TSO sends them).
fn gso_header() -> NetHeader {
    NetHeader {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 14 + 20 + 20,
        gso_size: 1448,
        csum_start: 14 + 20,
        csum_offset: 16,
        ..NetHeader::default()
    }
}

/// A 64 KiB IPv4 TCP segment to a MAC nobody has (the host drops it on
/// arrival, unsegmented).
fn gso_frame() -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0x10, 0x99];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (GSO_FRAME - 14) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 10, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 10, 0, 1]);
    let mut sum = 0u32;
    for w in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&9u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.resize(GSO_FRAME, 0xab);
    f
}

/// Per-round times of the legs of one shape (`LEGS` names them; the last is
/// the baseline), reported as medians, the median per-round ratios to the
/// baseline, and those ratios' quartiles.
#[derive(Default)]
struct Rounds(std::cell::RefCell<Vec<Vec<Duration>>>);

impl Rounds {
    fn push(&self, round: Vec<Duration>) {
        self.0.borrow_mut().push(round);
    }

    /// How many rounds were recorded.
    fn len(&self) -> usize {
        self.0.borrow().len()
    }

    fn report(&self, name: &str, legs: &[&str]) {
        let rounds = self.0.borrow();
        let Some(base) = legs.len().checked_sub(1) else {
            return;
        };
        if rounds.is_empty() {
            return;
        }
        let quartiles = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let at = |q: usize| v[(v.len() - 1) * q / 4];
            [at(1), at(2), at(3)]
        };
        let mut line = format!("{name} ({} interleaved rounds):", rounds.len());
        for (i, leg) in legs.iter().enumerate() {
            let t = quartiles(rounds.iter().map(|r| r[i].as_secs_f64() * 1e6).collect());
            line += &format!(" {leg} {:.1} µs", t[1]);
            if i != base {
                let r = quartiles(
                    rounds
                        .iter()
                        .map(|r| r[i].as_secs_f64() / r[base].as_secs_f64())
                        .collect(),
                );
                line += &format!(" (/{} {:.3} [{:.3}..{:.3}])", legs[base], r[1], r[0], r[2]);
            }
            line += ";";
        }
        println!("{line}");
    }
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
    let dev_tap = tap("vmkbdev", "10.10.0.1/24");
    // The raw TAP: the device's, through a descriptor of its own.
    let raw = File::from(dev_tap.as_fd().try_clone_to_owned().unwrap());
    let raw_fd = raw.as_raw_fd();
    let send = |packet: &[u8]| {
        let n = (&raw).write(packet).unwrap();
        assert_eq!(n, packet.len(), "write {raw_fd}");
    };
    let mut g = Guest::new(dev_tap);
    let mut gc = Guest::new(Copying(tap("vmkbcpy", "10.12.0.1/24")));
    let mut gn = Guest::new(Discard);
    for (dev, ip) in [("vmkbdev", "10.10.0.2"), ("vmkbcpy", "10.12.0.2")] {
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
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for s in 0..g.shapes.len() {
        let Shape {
            count,
            frame_len,
            ref packet,
            ..
        } = g.shapes[s].clone();
        let name = format!("{count}x{frame_len}");
        // The raw TAP's packets: one per frame, as many as the guest's, so
        // that both read the same amount of memory; and one packet written
        // again and again (always in cache), the floor.
        let packets = vec![packet.clone(); count];
        let rounds = Rounds::default();
        group.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut t = vec![Duration::ZERO; 5];
                    // The device and the raw TAP swap places every other round.
                    let order = if rounds.len() % 2 == 0 {
                        [0, 4, 1, 2, 3]
                    } else {
                        [4, 0, 1, 2, 3]
                    };
                    for leg in order {
                        t[leg] = match leg {
                            0 => g.time_tx(s),
                            1 => gc.time_tx(s),
                            2 => gn.time_tx(s),
                            3 => {
                                let start = Instant::now();
                                for _ in 0..count {
                                    send(packet);
                                }
                                start.elapsed()
                            }
                            _ => {
                                let start = Instant::now();
                                for p in &packets {
                                    send(p);
                                }
                                start.elapsed()
                            }
                        };
                    }
                    total += t[0];
                    rounds.push(t);
                }
                total
            })
        });
        rounds.report(
            &format!("tap_tx/{name}"),
            &["device", "copying", "device_no_io", "raw_one_buffer", "raw"],
        );
    }
    group.finish();

    let mut group = c.benchmark_group("tap_rx");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // The raw TAP's buffers: as many and as large as the guest's, taken
    // in turn as the device takes the guest's (each frame lands in memory
    // of its own, as it must in the guest); and one buffer read into again
    // and again (always in cache), the floor.
    let mut bufs = vec![0u8; 128 * RX_BUF as usize];
    let mut next_buf = 0usize;
    let mut one = vec![0u8; MAX_PACKET_LEN];
    let mut raw_read = |distinct: bool| {
        inject(Ipv4Addr::new(10, 10, 0, 2));
        let start = Instant::now();
        let mut n = 0;
        let end = start + Duration::from_secs(2);
        while n < BATCH && Instant::now() < end {
            let buf = if distinct {
                let at = next_buf * RX_BUF as usize;
                &mut bufs[at..at + RX_BUF as usize]
            } else {
                &mut one[..]
            };
            match (&raw).read(buf) {
                Ok(len) => {
                    assert_eq!(len, 12 + FRAME);
                    n += 1;
                    next_buf = (next_buf + 1) % 128;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read {raw_fd}: {e}"),
            }
        }
        let took = start.elapsed();
        assert_eq!(n, BATCH);
        took
    };
    let rounds = Rounds::default();
    group.bench_function(BenchmarkId::from_parameter("64x1514"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut t = vec![Duration::ZERO; 4];
                // The device and the raw TAP swap places every other round.
                let order = if rounds.len() % 2 == 0 {
                    [0, 3, 1, 2]
                } else {
                    [3, 0, 1, 2]
                };
                for leg in order {
                    t[leg] = match leg {
                        0 => g.time_rx(|| inject(Ipv4Addr::new(10, 10, 0, 2))),
                        1 => gc.time_rx(|| inject(Ipv4Addr::new(10, 12, 0, 2))),
                        2 => raw_read(false),
                        _ => raw_read(true),
                    };
                }
                total += t[0];
                rounds.push(t);
            }
            total
        })
    });
    rounds.report(
        "tap_rx/64x1514",
        &["device", "copying", "raw_one_buffer", "raw"],
    );
    group.finish();
    for s in [
        g.t.with_device(|d| d.stats()),
        gc.t.with_device(|d| d.stats()),
        gn.t.with_device(|d| d.stats()),
    ] {
        assert_eq!(
            s.tx_malformed + s.rx_dropped_invalid + s.rx_dropped_too_big + s.bad_chains,
            0
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
