//! The virtio device model: what a device back end (block, console, …)
//! implements so that a transport such as [`crate::mmio::MmioTransport`]
//! can drive it.
//!
//! The transport owns the queues, feature negotiation and the status state
//! machine; the device only describes itself (type, features, queue sizes,
//! configuration space) and processes the buffers of a queue when asked.

use vm_memory::GuestMemory;

use crate::Queue;

/// Feature bit 28: the driver may use indirect descriptors.
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit 29: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
/// Feature bit 32: compliance with virtio 1.x (every device offers it).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit 34: the packed virtqueue layout. A device that processes
/// its queues through [`Queue`] supports both layouts and can offer it;
/// the transport then hands it packed queues when the driver accepts it.
pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;

/// Device type of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// Device type of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Device type of a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Device type of a memory balloon.
pub const VIRTIO_ID_BALLOON: u32 = 5;

/// The most chains a device in this crate processes in one
/// [`VirtioDevice::process_queue`] call.
///
/// A driver can keep a queue busy indefinitely, by publishing new buffers
/// from another vCPU or, more cheaply, by pointing read requests at its own
/// available ring so that every completed request publishes the next one.
/// The budget bounds the time one notification can cost the host thread
/// that handles it. Chains beyond it wait for the driver's next
/// notification. No well-behaved driver comes near it: it must publish
/// 65536 chains while the device is still working through one notification.
pub const PROCESS_BUDGET: u32 = 65536;

/// Errors a device back end reports to its transport.
///
/// Either one makes the transport set `DEVICE_NEEDS_RESET` and send a
/// configuration change interrupt: the device stops using its queues until
/// the driver resets it. Problems with a single request are not errors of
/// this kind; the device fails that request (with a device-specific status,
/// or by returning its buffers with length 0) and carries on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// A queue the device was asked to process does not exist.
    #[error("queue {index} does not exist; the device has {count} queues")]
    NoSuchQueue {
        /// The requested queue index.
        index: u16,
        /// The number of queues of the device.
        count: usize,
    },
    /// The driver broke a queue's rules (see [`crate::Error`]): the queue is
    /// unusable until reset.
    #[error("queue {index} failed")]
    Queue {
        /// The queue index.
        index: u16,
        /// What went wrong.
        #[source]
        source: crate::Error,
    },
    /// The device cannot work with the negotiated features.
    #[error("device cannot be activated with features {features:#x}: {reason}")]
    Activation {
        /// The negotiated features.
        features: u64,
        /// Why not.
        reason: &'static str,
    },
}

/// Why a virtio device's saved state cannot be restored into it: the
/// [`Persist::Error`](vmkit_snapshot::Persist::Error) of this crate's
/// devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// The state does not match how the fresh device was built (a disk of
    /// another size, other options).
    #[error("saved {field} {saved} does not match the device's {device}")]
    Mismatch {
        /// The field.
        field: &'static str,
        /// The saved value.
        saved: String,
        /// The fresh device's value.
        device: String,
    },
    /// A saved buffer is larger than the device allows.
    #[error("saved {field} holds {len} bytes, more than the device's limit of {limit}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The device's limit.
        limit: usize,
    },
    /// A value the device could never hold.
    #[error("invalid {kind} device state: {reason}")]
    Invalid {
        /// The device kind ([`Persist::KIND`](vmkit_snapshot::Persist::KIND)).
        kind: &'static str,
        /// What is wrong, naming the field and its value.
        reason: String,
    },
}

/// A virtio device back end, driven by a transport over guest memory `M`.
///
/// The trait is object safe: a transport can hold a
/// `Box<dyn VirtioDevice<M> + Send>` when the device type is chosen at run
/// time.
///
/// Snapshots are not part of this trait: a device that can be saved
/// implements [`Persist`](vmkit_snapshot::Persist) as well, and the
/// transport saves it with its own state (see
/// [`crate::mmio::MmioTransportState`]). Its state covers what the device
/// holds beyond what the transport saves (features, status, queues); the
/// negotiated features reach a restored device again through
/// [`VirtioDevice::activate`]. The transport saves it under its lock,
/// between two `process_queue` calls: a device that completes requests
/// asynchronously must have finished them by then.
pub trait VirtioDevice<M: GuestMemory + ?Sized> {
    /// The virtio device type (e.g. [`VIRTIO_ID_BLOCK`]).
    fn device_type(&self) -> u32;

    /// The feature bits the device offers. Must include
    /// [`VIRTIO_F_VERSION_1`]; transports add it if missing.
    fn features(&self) -> u64;

    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Reads `data.len()` bytes of the device configuration space at
    /// `offset`. Bytes beyond the end of the configuration space read as
    /// zero (see [`read_config_bytes`]).
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space at `offset`. Writes to
    /// read-only fields or beyond the end of the space are ignored; the
    /// default ignores every write.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// Starts the device with the features the driver accepted (a subset of
    /// [`VirtioDevice::features`]), when the driver sets `DRIVER_OK`.
    fn activate(&mut self, features: u64) -> Result<(), DeviceError>;

    /// Processes the buffers the driver made available on queue `index`,
    /// of either layout (packed when `VIRTIO_F_RING_PACKED` was negotiated).
    /// Returns whether the driver must be interrupted (used buffers were
    /// added and notification is not suppressed).
    ///
    /// Errors in single requests are reported to the driver in the request;
    /// an `Err` means the queue is unusable (the transport then marks the
    /// device as needing a reset).
    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<bool, DeviceError>;

    /// Returns the device to its state before activation (the driver wrote
    /// 0 to the status register). Pending host-side state (such as
    /// buffered console input) may be kept; negotiated state must not be.
    fn reset(&mut self);
}

impl<M: GuestMemory + ?Sized, D: VirtioDevice<M> + ?Sized> VirtioDevice<M> for Box<D> {
    fn device_type(&self) -> u32 {
        (**self).device_type()
    }
    fn features(&self) -> u64 {
        (**self).features()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        (**self).queue_max_sizes()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        (**self).read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        (**self).write_config(offset, data)
    }
    fn activate(&mut self, features: u64) -> Result<(), DeviceError> {
        (**self).activate(features)
    }
    fn process_queue(
        &mut self,
        index: u16,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<bool, DeviceError> {
        (**self).process_queue(index, queue, mem)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}

/// Reads `data.len()` bytes of the configuration space `space` at `offset`,
/// bounds-checked: every byte whose offset is beyond the end of `space`
/// (including offsets that would overflow) reads as zero.
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| space.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let space = [1u8, 2, 3, 4];
        let mut buf = [0xffu8; 4];
        read_config_bytes(&space, 2, &mut buf);
        assert_eq!(buf, [3, 4, 0, 0]);
        read_config_bytes(&space, u64::MAX, &mut buf);
        assert_eq!(buf, [0; 4]);
        let mut empty = [0u8; 0];
        read_config_bytes(&space, 0, &mut empty);
    }
}
