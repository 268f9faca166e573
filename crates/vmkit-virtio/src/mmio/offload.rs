//! Queues served outside the transport: [`QueueOffload`].
//!
//! A datapath such as the kernel's vhost-net reads and writes a device's
//! rings itself: the guest's notifications go to it (an ioeventfd it
//! polls), and it interrupts the guest through the transport's interrupt
//! eventfd (an irqfd). The transport keeps everything else (registers,
//! feature negotiation, the device's configuration space, the queues it
//! does not hand over, such as a network card's control queue), and tells
//! the offload where the driver put the queues when the driver sets
//! `DRIVER_OK`, and to stop when the driver resets the device.
//!
//! While an offload runs, `InterruptStatus` always reads with the
//! used-buffer bit set: the offload signals the interrupt eventfd without
//! the transport seeing it, and a driver (Linux's virtio-mmio) only looks
//! at its queues when that bit is set. A spurious look at the queues is
//! harmless; a missed one would stall them.
//!
//! A snapshot of the transport does not capture what the offload holds
//! (its ring positions): save a transport only while no offload runs.

use std::error::Error;
use std::fmt;

use vmm_sys_util::eventfd::EventFd;

/// Where the driver put one queue handed to a [`QueueOffload`] (guest
/// physical addresses, as the driver wrote them; not validated beyond
/// what making the queue ready checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffloadQueue {
    /// The queue index.
    pub index: u16,
    /// The queue size the driver chose.
    pub size: u16,
    /// The descriptor table.
    pub desc: u64,
    /// The driver area (available ring).
    pub driver: u64,
    /// The device area (used ring).
    pub device: u64,
}

/// The error an offload's [`QueueOffload::start`] returns.
pub type OffloadError = Box<dyn Error + Send + Sync>;

/// A datapath that serves some of a device's queues outside the transport,
/// set with [`MmioTransport::set_offload`](super::MmioTransport::set_offload).
///
/// The transport hands it the queues at `DRIVER_OK` and stops it on reset.
/// While it runs, `InterruptStatus` always reads with the used-buffer bit
/// set (the offload interrupts through the transport's eventfd unseen), and
/// a snapshot of the transport does not capture the offload's ring
/// positions: save a transport only while no offload runs.
pub trait QueueOffload: Send + fmt::Debug {
    /// The queues it serves. The transport never processes them itself
    /// while the offload is set.
    fn queues(&self) -> &[u16];

    /// Starts serving, when the driver sets `DRIVER_OK` (after the
    /// device's own `activate`): `features` are the negotiated ones,
    /// `queues` those of [`QueueOffload::queues`] the driver made ready,
    /// `irq` the transport's interrupt eventfd. An error makes the
    /// transport set `DEVICE_NEEDS_RESET`.
    fn start(
        &mut self,
        features: u64,
        queues: &[OffloadQueue],
        irq: &EventFd,
    ) -> Result<(), OffloadError>;

    /// Stops serving: the driver reset the device, the device needs a
    /// reset (`DEVICE_NEEDS_RESET`: it stops using every queue), or the
    /// offload is being replaced. Must be idempotent.
    fn stop(&mut self);
}
