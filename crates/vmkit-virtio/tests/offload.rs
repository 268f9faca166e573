//! Queues handed to a `QueueOffload` (e.g. vhost-net) through the virtio-mmio transport.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod driver;

use std::sync::{Arc, Mutex};

use driver::*;
use vm_memory::{Bytes, GuestAddress};
use vmkit_virtio::console::Console;
use vmkit_virtio::mmio::*;
use vmm_sys_util::eventfd::EventFd;

/// What the offload was told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Start(u64, Vec<OffloadQueue>),
    Stop,
}

#[derive(Debug)]
struct Recorder {
    log: Arc<Mutex<Vec<Event>>>,
    fail: bool,
}

impl QueueOffload for Recorder {
    fn queues(&self) -> &[u16] {
        &[1]
    }
    fn start(
        &mut self,
        features: u64,
        queues: &[OffloadQueue],
        _irq: &EventFd,
    ) -> Result<(), OffloadError> {
        self.log
            .lock()
            .unwrap()
            .push(Event::Start(features, queues.to_vec()));
        if self.fail {
            return Err("refused".into());
        }
        Ok(())
    }
    fn stop(&mut self) {
        self.log.lock().unwrap().push(Event::Stop);
    }
}

/// Guest memory, a console's transport with `Recorder` on queue 1, and its log.
type Parts = (
    Arc<Mem>,
    Transport<Console<Vec<u8>>>,
    Arc<Mutex<Vec<Event>>>,
);

fn offloaded(fail: bool) -> Parts {
    let mem = mem();
    let t = transport(Console::new(Vec::new()), &mem);
    let log = Arc::new(Mutex::new(Vec::new()));
    t.set_offload(Some(Box::new(Recorder {
        log: log.clone(),
        fail,
    })));
    (mem, t, log)
}

#[test]
fn the_offload_gets_its_queues_at_driver_ok_and_stops_on_reset() {
    let (mem, t, log) = offloaded(false);
    let (rx, mut tx) = (Vq::new(0, 8), Vq::new(1, 8));
    // A buffer made available before DRIVER_OK stays the offload's.
    assert!(negotiate(&t, 1 << 32));
    assert!(setup_queue(&t, &rx));
    assert!(setup_queue(&t, &tx));
    mem.write_slice(b"not ours", GuestAddress(BUF)).unwrap();
    tx.push(&mem, &[r(BUF, 8)]);
    driver_ok(&t);
    let events = log.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![
            Event::Stop,
            Event::Start(
                1 << 32,
                vec![OffloadQueue {
                    index: 1,
                    size: 8,
                    desc: tx.desc,
                    driver: tx.avail,
                    device: tx.used,
                }]
            )
        ]
    );
    // The transport leaves the offloaded queue alone, on notification too.
    notify(&t, 1);
    assert_eq!(tx.pop_used(&mem), None);
    assert!(t.with_device(|c| c.output().is_empty()));
    // The offload interrupts behind the transport's back: the used-buffer bit reads set.
    assert_eq!(t.r32(0x60) & INT_USED_BUFFER, INT_USED_BUFFER);
    t.w32(0x70, 0);
    assert_eq!(log.lock().unwrap().last(), Some(&Event::Stop));
    assert_eq!(t.r32(0x60), 0);
}

#[test]
fn a_failed_start_needs_a_reset() {
    let (_mem, t, log) = offloaded(true);
    let (rx, tx) = (Vq::new(0, 8), Vq::new(1, 8));
    assert!(negotiate(&t, 1 << 32));
    assert!(setup_queue(&t, &rx));
    assert!(setup_queue(&t, &tx));
    driver_ok(&t);
    assert_ne!(t.r32(0x70) & STATUS_NEEDS_RESET, 0);
    assert_eq!(t.r32(0x60) & INT_USED_BUFFER, 0);
    assert!(matches!(t.take_error(), Some(MmioError::Offload(_))));
    // Started, refused, and stopped with the device.
    let events = log.lock().unwrap().clone();
    assert!(
        matches!(events.as_slice(), [.., Event::Start(..), Event::Stop]),
        "{events:?}"
    );
}

#[test]
fn without_the_offload_the_transport_serves_the_queue_again() {
    let (mem, t, _log) = offloaded(false);
    t.set_offload(None);
    let (rx, mut tx) = (Vq::new(0, 8), Vq::new(1, 8));
    bring_up(&t, &[&rx, &tx]);
    mem.write_slice(b"ours", GuestAddress(BUF)).unwrap();
    let head = tx.push(&mem, &[r(BUF, 4)]);
    notify(&t, 1);
    assert_eq!(tx.pop_used(&mem), Some((u32::from(head), 0)));
    assert_eq!(t.with_device(|c| c.output().clone()), b"ours");
}
