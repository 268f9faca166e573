//! virtio-console through the virtio-mmio transport.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod driver;

use std::io;

use driver::*;
use vm_memory::{Bytes, GuestAddress};
use vmkit_virtio::console::*;
use vmkit_virtio::mmio::*;
use vmkit_virtio::QueueLayout;

type Parts<W> = (std::sync::Arc<Mem>, Transport<Console<W>>, Vq, Vq);

fn setup<W: io::Write>(c: Console<W>) -> Parts<W> {
    setup_on(c, false)
}

/// A live console with split queues of 8, or packed queues of 6.
fn setup_on<W: io::Write>(c: Console<W>, packed: bool) -> Parts<W> {
    let mem = mem();
    let t = transport(c, &mem);
    assert_eq!(t.r32(0x8), 3);
    let (rx, tx) = if packed {
        (Vq::packed(0, 6), Vq::packed(1, 6))
    } else {
        (Vq::new(0, 8), Vq::new(1, 8))
    };
    bring_up(&t, &[&rx, &tx]);
    for q in 0..2 {
        let layout = t.queue_state(q).unwrap().layout();
        assert_eq!(layout == QueueLayout::Packed, packed, "{layout}");
    }
    (mem, t, rx, tx)
}

#[test]
fn transmit_goes_to_the_writer() {
    transmit_goes_to_the_writer_on(false);
}

#[test]
fn transmit_goes_to_the_writer_on_packed_rings() {
    transmit_goes_to_the_writer_on(true);
}

fn transmit_goes_to_the_writer_on(packed: bool) {
    let (mem, t, _rx, mut tx) = setup_on(Console::new(Vec::new()), packed);
    mem.write_slice(b"hello, ", GuestAddress(BUF)).unwrap();
    mem.write_slice(b"world\n", GuestAddress(BUF + 0x100))
        .unwrap();
    let head = tx.push(&mem, &[r(BUF, 7), r(BUF + 0x100, 6)]);
    notify(&t, 1);
    assert_eq!(tx.pop_used(&mem), Some((u32::from(head), 0)));
    assert_eq!(t.with_device(|c| c.output().clone()), b"hello, world\n");
    assert_eq!(t.r32(0x60), INT_USED_BUFFER);
    // A large buffer (more than one copy chunk).
    let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    mem.write_slice(&big, GuestAddress(BUF + 0x1000)).unwrap();
    tx.push(&mem, &[r(BUF + 0x1000, big.len() as u32)]);
    notify(&t, 1);
    assert!(tx.pop_used(&mem).is_some());
    assert_eq!(t.with_device(|c| c.output()[13..].to_vec()), big);
    // A writable buffer in a transmit chain is skipped.
    tx.push(&mem, &[r(BUF, 5), w(BUF + 0x100, 6)]);
    notify(&t, 1);
    assert!(tx.pop_used(&mem).is_some());
    assert_eq!(t.with_device(|c| c.stats().tx_bytes), 13 + 10_000 + 5);
}

#[test]
fn input_waits_for_receive_buffers() {
    input_waits_for_receive_buffers_on(false);
}

#[test]
fn input_waits_for_receive_buffers_on_packed_rings() {
    input_waits_for_receive_buffers_on(true);
}

fn input_waits_for_receive_buffers_on(packed: bool) {
    let (mem, t, mut rx, _tx) = setup_on(Console::new(Vec::new()), packed);
    assert_eq!(t.with_device(|c| c.enqueue_input(b"typed")), 5);
    assert!(!t.process_queue(RECEIVEQ).unwrap(), "no buffers yet");
    assert_eq!(t.with_device(|c| c.pending_input()), 5);
    // The driver adds two 3-byte buffers: input is split across them.
    let h0 = rx.push(&mem, &[w(BUF, 3)]);
    let h1 = rx.push(&mem, &[w(BUF + 0x100, 3)]);
    let h2 = rx.push(&mem, &[w(BUF + 0x200, 64)]);
    notify(&t, 0);
    assert_eq!(rx.pop_used(&mem), Some((u32::from(h0), 3)));
    assert_eq!(rx.pop_used(&mem), Some((u32::from(h1), 2)));
    assert_eq!(rx.pop_used(&mem), None, "third buffer kept for later input");
    let mut b = [0u8; 3];
    mem.read_slice(&mut b, GuestAddress(BUF)).unwrap();
    assert_eq!(&b, b"typ");
    mem.read_slice(&mut b[..2], GuestAddress(BUF + 0x100))
        .unwrap();
    assert_eq!(&b[..2], b"ed");
    // Input after the buffers: delivered when the host processes queue 0.
    t.w32(0x64, 3);
    t.with_device(|c| c.enqueue_input(b"more"));
    assert!(t.process_queue(RECEIVEQ).unwrap());
    assert_eq!(rx.pop_used(&mem), Some((u32::from(h2), 4)));
    assert_eq!(t.with_device(|c| c.stats().rx_bytes), 9);
}

#[test]
fn input_is_bounded_and_survives_reset() {
    let (mem, t, _rx, _tx) = setup(Console::with_input_limit(Vec::new(), 8));
    assert_eq!(t.with_device(|c| c.enqueue_input(b"0123456789")), 8);
    assert_eq!(t.with_device(|c| c.enqueue_input(b"x")), 0);
    t.w32(0x70, 0);
    assert_eq!(t.with_device(|c| c.pending_input()), 8);
    // After a new bring-up, buffers made available before DRIVER_OK get it.
    let mut rx = Vq::new(0, 8);
    let tx = Vq::new(1, 8);
    assert!(negotiate(&t, 1 << 32));
    assert!(setup_queue(&t, &rx));
    assert!(setup_queue(&t, &tx));
    rx.push(&mem, &[w(BUF, 16)]);
    driver_ok(&t);
    assert_eq!(rx.pop_used(&mem), Some((0, 8)));
    let mut b = [0u8; 8];
    mem.read_slice(&mut b, GuestAddress(BUF)).unwrap();
    assert_eq!(&b, b"01234567");
}

#[test]
fn malformed_receive_chains_consume_no_input() {
    malformed_receive_chains_consume_no_input_on(false);
}

#[test]
fn malformed_receive_chains_consume_no_input_on_packed_rings() {
    malformed_receive_chains_consume_no_input_on(true);
}

fn malformed_receive_chains_consume_no_input_on(packed: bool) {
    let (mem, t, mut rx, _tx) = setup_on(Console::new(Vec::new()), packed);
    t.with_device(|c| c.enqueue_input(b"abc"));
    // A readable buffer in a receive chain, then one outside guest memory.
    rx.push(&mem, &[r(BUF, 3)]);
    rx.push(&mem, &[w(MEM_SIZE as u64 - 1, 2)]);
    rx.push(&mem, &[w(BUF + 0x100, 3)]);
    notify(&t, 0);
    assert_eq!(rx.pop_used(&mem).map(|u| u.1), Some(0));
    assert_eq!(rx.pop_used(&mem).map(|u| u.1), Some(0));
    assert_eq!(rx.pop_used(&mem).map(|u| u.1), Some(3));
    assert_eq!(t.with_device(|c| c.stats().bad_chains), 2);
    assert_eq!(t.status() & STATUS_NEEDS_RESET, 0);
}

struct FailingWriter;

impl io::Write for FailingWriter {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("host output gone"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("host output gone"))
    }
}

#[test]
fn a_failing_writer_does_not_stall_the_guest() {
    let (mem, t, _rx, mut tx) = setup(Console::new(FailingWriter));
    tx.push(&mem, &[r(BUF, 10)]);
    notify(&t, 1);
    assert_eq!(tx.pop_used(&mem), Some((0, 0)));
    assert_eq!(t.with_device(|c| c.stats().tx_lost), 10);
}

#[test]
fn config_space_reads_zero() {
    let mem = mem();
    let t = transport(Console::new(Vec::new()), &mem);
    for off in [0x100, 0x104, 0x108, 0x10c, 0x7fc] {
        assert_eq!(t.r32(off), 0);
    }
    t.w32(0x30, 1);
    assert_eq!(t.r32(0x34), u32::from(QUEUE_MAX_SIZE));
    t.w32(0x30, 2);
    assert_eq!(t.r32(0x34), 0);
}
