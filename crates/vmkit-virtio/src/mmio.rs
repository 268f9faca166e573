//! The virtio-mmio transport, version 2 register layout (virtio 1.2,
//! section 4.2.2), over split queues, or packed ones when the driver
//! accepts `VIRTIO_F_RING_PACKED`.
//!
//! The queues are [`Queue`]s: split from reset until `FEATURES_OK`, then
//! packed if the driver accepted `VIRTIO_F_RING_PACKED`. The queue
//! registers mean the same for both layouts: `QueueDesc` is the descriptor
//! table or ring, `QueueDriver` the available ring or driver event
//! suppression structure, `QueueDevice` the used ring or device event
//! suppression structure; `QueueNum` must be a power of two only for split
//! queues. A VMM that wants split queues only builds the transport
//! [`MmioTransport::with_packed_rings`]`(false)`.
//!
//! [`MmioTransport`] wraps a [`VirtioDevice`] and answers the guest's MMIO
//! accesses to its register window (see [`MmioTransport::read`] and
//! [`MmioTransport::write`], or the [`vm_device::DeviceMmio`]
//! implementation to register it on a vm-device bus). It negotiates
//! features, sets up queues, runs the status state machine and raises
//! interrupts through an [`EventFd`] (which a VMM registers as an irqfd, or
//! polls and injects itself).
//!
//! # Notifications
//!
//! A write to `QueueNotify` (offset [`NOTIFY_OFFSET`]) processes that queue
//! synchronously in the calling (vCPU) thread, so a driver that polls the
//! used ring right after its notify write sees the result. A VMM that
//! prefers an ioeventfd registers one at `base + NOTIFY_OFFSET` (4 bytes,
//! datamatch = queue index) and calls [`MmioTransport::process_queue`] from
//! a worker thread when it fires; the MMIO write then never reaches the
//! transport.
//!
//! # Register access rules
//!
//! The driver must access the registers below `0x100` with aligned 32-bit
//! accesses (virtio 1.2, 4.2.2.2). Any other access there is answered as
//! follows, and counted ([`MmioTransport::invalid_accesses`]): a read
//! returns zeros, a write is ignored. Reads of write-only registers return
//! zero; writes to read-only registers are ignored and counted. The
//! configuration space at `0x100` and above accepts 8, 16, 32 and 64-bit
//! accesses at any offset (64-bit fields may also be accessed as two 32-bit
//! halves); bytes beyond the device's configuration space read as zero and
//! writes there are ignored. Accesses of other widths to the configuration
//! space read zeros / are ignored and counted.
//!
//! # Errors
//!
//! Nothing the driver writes makes the transport panic. A rejected write
//! (a feature that was not offered, a queue that does not fit in guest
//! memory, a status bit cleared without a reset) is ignored with the
//! effect the specification prescribes (e.g. `FEATURES_OK` stays clear)
//! and recorded: [`MmioTransport::take_error`] returns the last one. When
//! the device can no longer operate (a queue the driver broke, a queue
//! that cannot be made ready, a failed activation) the transport sets
//! `DEVICE_NEEDS_RESET` and sends a configuration change interrupt; the
//! device then ignores notifications until the driver resets it.
//!
//! # Snapshots
//!
//! The transport implements [`Persist`](crate::Persist) when its device
//! does: `save_state` captures the registers, every queue and the device's
//! own typed state in a serializable [`MmioTransportState`];
//! `restore_state`, on a fresh transport built with [`MmioTransport::new`]
//! around a fresh device, validates every value as if the driver had
//! written it (the state may come from a corrupt or hostile file), and
//! [`MmioTransport::resume`] picks up where the saved device left off.
//! [`MmioTransportState`] documents what is not saved, and what the VMM
//! must do before saving (stop the vCPUs and any notification worker).

mod offload;
mod state;

use std::sync::{Mutex, MutexGuard};

use vm_device::bus::{MmioAddress, MmioAddressOffset};
use vm_device::DeviceMmio;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use crate::device::{
    DeviceError, VirtioDevice, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
};
use crate::interrupt::Interrupt;
use crate::{Queue, QueueLayout, QueueState};

pub use offload::{OffloadError, OffloadQueue, QueueOffload};
pub use state::{MmioQueueState, MmioTransportState, RestoreError};

/// The value of the `MagicValue` register: "virt" in little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The register layout version this transport implements.
pub const MMIO_VERSION: u32 = 2;
/// The `VendorID` this transport reports: "vmkt" in little-endian.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"vmkt");
/// The size of the MMIO window a VMM should reserve for one device.
pub const MMIO_REGION_SIZE: u64 = 0x1000;
/// Offset of the `QueueNotify` register, where a VMM may place an ioeventfd
/// (4 bytes, datamatch = queue index).
pub const NOTIFY_OFFSET: u64 = 0x50;
/// Offset where the device configuration space starts.
pub const CONFIG_OFFSET: u64 = 0x100;
/// The most queues a device may have on this transport.
pub const MAX_QUEUES: usize = 64;

/// Device status bit: the guest found the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status bit: the guest has a driver for it.
pub const STATUS_DRIVER: u32 = 2;
/// Device status bit: the driver is set up and the device is live.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status bit (set by the device): it needs a reset.
pub const STATUS_NEEDS_RESET: u32 = 64;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 128;

/// `InterruptStatus` bit: a used buffer notification.
pub const INT_USED_BUFFER: u32 = 1;
/// `InterruptStatus` bit: a configuration change notification.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// The transport feature bits this transport implements; other bits in the
/// transport range (24 to 41) a device offers are withheld from the driver.
const TRANSPORT_FEATURES: u64 =
    VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_F_VERSION_1 | VIRTIO_F_RING_PACKED;
/// Feature bits 24..=41: reserved for the transport.
const TRANSPORT_RANGE: u64 = ((1u64 << 42) - 1) & !((1u64 << 24) - 1);

pub(crate) mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// Errors of the virtio-mmio transport: a device that cannot be wrapped,
/// or a driver action that was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MmioError {
    /// The device has no queues or more than [`MAX_QUEUES`].
    #[error("device has {count} queues; the transport supports 1 to {max}")]
    QueueCount {
        /// The device's queue count.
        count: usize,
        /// The transport's limit.
        max: usize,
    },
    /// A queue maximum size the device declared is invalid.
    #[error("device queue {index} has an invalid maximum size")]
    QueueMaxSize {
        /// The queue index.
        index: usize,
        /// The queue's complaint.
        #[source]
        source: crate::Error,
    },
    /// A queue index (from `QueueNotify` or [`MmioTransport::process_queue`]) does not exist.
    #[error("queue {index} does not exist; the device has {count} queues")]
    NoSuchQueue {
        /// The requested index.
        index: u32,
        /// The number of queues.
        count: usize,
    },
    /// The driver accepted features the device did not offer.
    #[error("driver features {requested:#x} include {:#x}, which the device did not offer ({offered:#x})", .requested & !.offered)]
    FeaturesNotOffered {
        /// The features the driver wrote.
        requested: u64,
        /// The features the device offered.
        offered: u64,
    },
    /// The driver did not accept `VIRTIO_F_VERSION_1`, which this (non-legacy) transport requires.
    #[error("driver features {requested:#x} lack VIRTIO_F_VERSION_1")]
    VersionNotAccepted {
        /// The features the driver wrote.
        requested: u64,
    },
    /// The driver wrote its features after `FEATURES_OK`.
    #[error("driver features written after FEATURES_OK (selector {sel}, value {value:#x})")]
    FeaturesAfterNegotiation {
        /// The `DriverFeaturesSel` value.
        sel: u32,
        /// The value written.
        value: u32,
    },
    /// The driver accepted a feature above bit 63 (none is offered).
    #[error(
        "driver accepted features {value:#x} in feature word {sel}, beyond the 64 offered bits"
    )]
    FeaturesBeyond64 {
        /// The `DriverFeaturesSel` value.
        sel: u32,
        /// The value written.
        value: u32,
    },
    /// A status write that clears bits without a reset, or sets them out of order.
    #[error("status write {new:#x} is invalid in status {old:#x}: {reason}")]
    InvalidStatus {
        /// The status before the write.
        old: u32,
        /// The value written.
        new: u32,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A queue register was written while the queue is ready.
    #[error("queue {index} register {offset:#x} written while the queue is ready")]
    QueueConfigWhileReady {
        /// The selected queue.
        index: u32,
        /// The register offset.
        offset: u64,
    },
    /// A queue register was written while `QueueSel` names no queue.
    #[error("queue register {offset:#x} written with QueueSel {index}, but the device has {count} queues")]
    QueueSelOutOfRange {
        /// The selected queue.
        index: u32,
        /// The register offset.
        offset: u64,
        /// The number of queues.
        count: usize,
    },
    /// `QueueNum` does not fit a queue size.
    #[error("queue {index}: size {num} is above the maximum {max}")]
    QueueNumTooLarge {
        /// The queue index.
        index: u32,
        /// The value written.
        num: u32,
        /// The queue's maximum size.
        max: u16,
    },
    /// The queue could not be made ready: its size or rings are invalid.
    #[error("queue {index} cannot be made ready")]
    QueueSetup {
        /// The queue index.
        index: u32,
        /// What is wrong.
        #[source]
        source: crate::Error,
    },
    /// A register access that is not an aligned 32-bit access, or to a read-only/unknown register.
    #[error("invalid {} of {len} bytes at offset {offset:#x}", if *.write { "write" } else { "read" })]
    InvalidAccess {
        /// The register offset.
        offset: u64,
        /// The access width in bytes.
        len: usize,
        /// Whether it was a write.
        write: bool,
    },
    /// The device failed; the transport set `DEVICE_NEEDS_RESET`.
    #[error("device failed")]
    Device(#[from] DeviceError),
    /// The interrupt `EventFd` could not be signalled.
    #[error("cannot signal the interrupt eventfd")]
    Interrupt(#[source] std::io::Error),
    /// The [`QueueOffload`] could not start; the transport set
    /// `DEVICE_NEEDS_RESET`.
    #[error("the queue offload could not start")]
    Offload(#[source] OffloadError),
}

/// The driver-written configuration of one queue, applied when the driver
/// makes it ready.
#[derive(Debug)]
pub(crate) struct QueueSlot {
    /// Split until the driver negotiates `VIRTIO_F_RING_PACKED`.
    pub(crate) queue: Queue,
    pub(crate) num: u32,
    pub(crate) desc: u64,
    pub(crate) driver: u64,
    pub(crate) device: u64,
}

impl QueueSlot {
    pub(crate) fn new(queue: Queue) -> Self {
        let num = u32::from(queue.size());
        QueueSlot {
            queue,
            num,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    fn reset(&mut self) {
        self.queue.set_layout(QueueLayout::Split);
        self.num = u32::from(self.queue.size());
        self.desc = 0;
        self.driver = 0;
        self.device = 0;
    }
}

pub(crate) fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}

pub(crate) fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

#[derive(Debug)]
pub(crate) struct Inner<D> {
    pub(crate) device: D,
    pub(crate) device_features: u64,
    pub(crate) device_features_sel: u32,
    pub(crate) driver_features: u64,
    pub(crate) driver_features_sel: u32,
    pub(crate) features_beyond_64: Option<(u32, u32)>,
    pub(crate) queue_sel: u32,
    pub(crate) queues: Vec<QueueSlot>,
    pub(crate) status: u32,
    pub(crate) interrupt_status: u32,
    pub(crate) config_generation: u32,
    pub(crate) shm_sel: u32,
    pub(crate) invalid_accesses: u64,
    pub(crate) last_error: Option<MmioError>,
    /// The datapath serving some queues, and whether it runs.
    pub(crate) offload: Option<Box<dyn QueueOffload>>,
    pub(crate) offload_running: bool,
}

impl<D> Inner<D> {
    /// The transport-independent state around `device`, freshly reset.
    pub(crate) fn new<M: GuestMemory + ?Sized>(device: D) -> Result<Self, MmioError>
    where
        D: VirtioDevice<M>,
    {
        let sizes = device.queue_max_sizes();
        if sizes.is_empty() || sizes.len() > MAX_QUEUES {
            return Err(MmioError::QueueCount {
                count: sizes.len(),
                max: MAX_QUEUES,
            });
        }
        let mut queues = Vec::with_capacity(sizes.len());
        for (index, &max) in sizes.iter().enumerate() {
            let q = Queue::new(QueueLayout::Split, max)
                .map_err(|source| MmioError::QueueMaxSize { index, source })?;
            queues.push(QueueSlot::new(q));
        }
        let offered = device.features() | VIRTIO_F_VERSION_1;
        let device_features = offered & (!TRANSPORT_RANGE | TRANSPORT_FEATURES);
        Ok(Inner {
            device,
            device_features,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            features_beyond_64: None,
            queue_sel: 0,
            queues,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            shm_sel: 0,
            invalid_accesses: 0,
            last_error: None,
            offload: None,
            offload_running: false,
        })
    }

    /// Offers `VIRTIO_F_RING_PACKED` if the device does, or withholds it.
    pub(crate) fn offer_packed<M: GuestMemory + ?Sized>(&mut self, offer: bool)
    where
        D: VirtioDevice<M>,
    {
        if offer {
            self.device_features |= self.device.features() & VIRTIO_F_RING_PACKED;
        } else {
            self.device_features &= !VIRTIO_F_RING_PACKED;
        }
    }
}

impl<D> Inner<D> {
    pub(crate) fn record(&mut self, e: MmioError) {
        self.last_error = Some(e);
    }

    pub(crate) fn invalid(&mut self, offset: u64, len: usize, write: bool) {
        self.invalid_accesses = self.invalid_accesses.saturating_add(1);
        self.record(MmioError::InvalidAccess { offset, len, write });
    }

    /// Sets `bit` in the interrupt status and signals the interrupt of
    /// `queue` (`None`: the configuration change interrupt).
    pub(crate) fn raise(&mut self, bit: u32, queue: Option<u16>, irq: &dyn Interrupt) {
        self.interrupt_status |= bit;
        if let Err(e) = irq.signal(queue) {
            self.record(MmioError::Interrupt(e));
        }
    }

    /// The device can no longer operate: DEVICE_NEEDS_RESET and a
    /// configuration change interrupt.
    pub(crate) fn needs_reset(&mut self, e: MmioError, irq: &dyn Interrupt) {
        self.record(e);
        // The device stops using every queue, offloaded ones included.
        self.stop_offload();
        if self.status & STATUS_NEEDS_RESET == 0 {
            self.status |= STATUS_NEEDS_RESET;
            self.config_generation = self.config_generation.wrapping_add(1);
            if self.status & STATUS_DRIVER_OK != 0 {
                self.raise(INT_CONFIG_CHANGE, None, irq);
            }
        }
    }

    pub(crate) fn live(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
            && self.status & (STATUS_FAILED | STATUS_NEEDS_RESET) == 0
    }

    /// Whether the offload serves queue `index`.
    fn offloaded(&self, index: u16) -> bool {
        self.offload
            .as_ref()
            .is_some_and(|o| o.queues().contains(&index))
    }

    /// Hands the offload its ready queues (at `DRIVER_OK`).
    fn start_offload(&mut self, irq: &dyn Interrupt) -> Result<(), OffloadError> {
        let Some(offload) = self.offload.as_mut() else {
            return Ok(());
        };
        let Some(irq) = irq.eventfd() else {
            return Err("this transport's interrupts cannot be handed to a queue offload".into());
        };
        let queues: Vec<OffloadQueue> = offload
            .queues()
            .iter()
            .filter_map(|&index| {
                let slot = self.queues.get(usize::from(index))?;
                slot.queue.ready().then(|| OffloadQueue {
                    index,
                    size: slot.queue.size(),
                    desc: slot.desc,
                    driver: slot.driver,
                    device: slot.device,
                })
            })
            .collect();
        offload.start(self.driver_features, &queues, irq)?;
        self.offload_running = true;
        Ok(())
    }

    fn stop_offload(&mut self) {
        if let Some(offload) = self.offload.as_mut() {
            offload.stop();
        }
        self.offload_running = false;
    }

    pub(crate) fn selected(&self, offset: u64) -> Result<usize, MmioError> {
        let index = self.queue_sel;
        match usize::try_from(index) {
            Ok(i) if i < self.queues.len() => Ok(i),
            _ => Err(MmioError::QueueSelOutOfRange {
                index,
                offset,
                count: self.queues.len(),
            }),
        }
    }
}

impl<D> Inner<D> {
    pub(crate) fn process<M: GuestMemory + ?Sized>(
        &mut self,
        index: u32,
        mem: &M,
        irq: &dyn Interrupt,
    ) -> Result<bool, MmioError>
    where
        D: VirtioDevice<M>,
    {
        let count = self.queues.len();
        let i = match (usize::try_from(index), u16::try_from(index)) {
            (Ok(i), Ok(i16)) if i < count => (i, i16),
            _ => return Err(MmioError::NoSuchQueue { index, count }),
        };
        if !self.live() || self.offloaded(i.1) {
            return Ok(false);
        }
        let Some(slot) = self.queues.get_mut(i.0) else {
            return Err(MmioError::NoSuchQueue { index, count });
        };
        if !slot.queue.ready() {
            return Ok(false);
        }
        match self.device.process_queue(i.1, &mut slot.queue, mem) {
            Ok(true) => {
                self.raise(INT_USED_BUFFER, Some(i.1), irq);
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                self.needs_reset(MmioError::Device(e), irq);
                Ok(self.status & STATUS_DRIVER_OK != 0)
            }
        }
    }

    pub(crate) fn reset_device<M: GuestMemory + ?Sized>(&mut self)
    where
        D: VirtioDevice<M>,
    {
        self.stop_offload();
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.features_beyond_64 = None;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.shm_sel = 0;
    }

    pub(crate) fn read_reg<M: GuestMemory + ?Sized>(&mut self, offset: u64) -> u32
    where
        D: VirtioDevice<M>,
    {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => usize::try_from(self.queue_sel)
                .ok()
                .and_then(|i| self.queues.get(i))
                .map_or(0, |q| u32::from(q.queue.max_size())),
            reg::QUEUE_READY => usize::try_from(self.queue_sel)
                .ok()
                .and_then(|i| self.queues.get(i))
                .map_or(0, |q| u32::from(q.queue.ready())),
            reg::INTERRUPT_STATUS if self.offload_running => {
                self.interrupt_status | INT_USED_BUFFER
            }
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            // No shared memory regions: length and base read as all ones.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            reg::CONFIG_GENERATION => self.config_generation,
            // Write-only registers read as zero.
            reg::DEVICE_FEATURES_SEL
            | reg::DRIVER_FEATURES
            | reg::DRIVER_FEATURES_SEL
            | reg::QUEUE_SEL
            | reg::QUEUE_NUM
            | reg::QUEUE_NOTIFY
            | reg::INTERRUPT_ACK
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH
            | reg::SHM_SEL => 0,
            _ => {
                self.invalid(offset, 4, false);
                0
            }
        }
    }

    pub(crate) fn write_reg<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        v: u32,
        mem: &M,
        irq: &dyn Interrupt,
    ) where
        D: VirtioDevice<M>,
    {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES => {
                if self.status & STATUS_FEATURES_OK != 0 {
                    let sel = self.driver_features_sel;
                    self.record(MmioError::FeaturesAfterNegotiation { sel, value: v });
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, v),
                    1 => set_high(&mut self.driver_features, v),
                    // No feature is offered above bit 63: zeros are fine,
                    // ones make FEATURES_OK fail.
                    sel => {
                        if v != 0 {
                            self.features_beyond_64 = Some((sel, v));
                        }
                    }
                }
            }
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            reg::QUEUE_READY => self.write_queue_ready(v, mem, irq),
            reg::QUEUE_NOTIFY => {
                if let Err(e) = self.process(v, mem, irq) {
                    self.record(e);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt_status &= !v,
            reg::STATUS => self.write_status(v, mem, irq),
            reg::SHM_SEL => self.shm_sel = v,
            _ => self.invalid(offset, 4, true),
        }
    }

    pub(crate) fn write_queue_reg(&mut self, offset: u64, v: u32) {
        let i = match self.selected(offset) {
            Ok(i) => i,
            Err(e) => return self.record(e),
        };
        let index = self.queue_sel;
        let Some(slot) = self.queues.get_mut(i) else {
            return;
        };
        if slot.queue.ready() {
            return self.record(MmioError::QueueConfigWhileReady { index, offset });
        }
        match offset {
            reg::QUEUE_NUM => slot.num = v,
            reg::QUEUE_DESC_LOW => set_low(&mut slot.desc, v),
            reg::QUEUE_DESC_HIGH => set_high(&mut slot.desc, v),
            reg::QUEUE_DRIVER_LOW => set_low(&mut slot.driver, v),
            reg::QUEUE_DRIVER_HIGH => set_high(&mut slot.driver, v),
            reg::QUEUE_DEVICE_LOW => set_low(&mut slot.device, v),
            _ => set_high(&mut slot.device, v),
        }
    }

    pub(crate) fn write_queue_ready<M: GuestMemory + ?Sized>(
        &mut self,
        v: u32,
        mem: &M,
        irq: &dyn Interrupt,
    ) {
        let i = match self.selected(reg::QUEUE_READY) {
            Ok(i) => i,
            Err(e) => return self.record(e),
        };
        let index = self.queue_sel;
        let Some(slot) = self.queues.get_mut(i) else {
            return;
        };
        if v & 1 == 0 {
            slot.queue.set_ready(false);
            return;
        }
        if slot.queue.ready() {
            return;
        }
        let max = slot.queue.max_size();
        let result = match u16::try_from(slot.num) {
            Err(_) => Err(MmioError::QueueNumTooLarge {
                index,
                num: slot.num,
                max,
            }),
            Ok(num) => slot
                .queue
                .set_size(num)
                .and_then(|()| slot.queue.set_desc_area(GuestAddress(slot.desc)))
                .and_then(|()| slot.queue.set_driver_area(GuestAddress(slot.driver)))
                .and_then(|()| slot.queue.set_device_area(GuestAddress(slot.device)))
                .and_then(|()| slot.queue.validate(mem))
                .map_err(|source| MmioError::QueueSetup { index, source }),
        };
        match result {
            Ok(()) => slot.queue.set_ready(true),
            Err(e) => self.needs_reset(e, irq),
        }
    }

    pub(crate) fn write_status<M: GuestMemory + ?Sized>(
        &mut self,
        v: u32,
        mem: &M,
        irq: &dyn Interrupt,
    ) where
        D: VirtioDevice<M>,
    {
        if v == 0 {
            self.reset_device();
            return;
        }
        let old = self.status;
        // NEEDS_RESET belongs to the device: the driver can neither set nor clear it.
        let mut new = (v & !STATUS_NEEDS_RESET) | (old & STATUS_NEEDS_RESET);
        let refuse = |reason| MmioError::InvalidStatus {
            old,
            new: v,
            reason,
        };
        if new & old != old {
            return self.record(refuse("clears bits without a reset"));
        }
        if new & STATUS_FAILED != 0 {
            // The driver gave up: keep the bit, do nothing else.
            self.status = old | STATUS_FAILED;
            return;
        }
        if new & STATUS_DRIVER != 0 && new & STATUS_ACKNOWLEDGE == 0 {
            return self.record(refuse("DRIVER without ACKNOWLEDGE"));
        }
        if new & STATUS_FEATURES_OK != 0 && new & STATUS_DRIVER == 0 {
            return self.record(refuse("FEATURES_OK without DRIVER"));
        }
        if new & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
            return self.record(refuse("DRIVER_OK without FEATURES_OK"));
        }
        let added = new & !old;
        if added & STATUS_FEATURES_OK != 0 {
            let requested = self.driver_features;
            let offered = self.device_features;
            let refused = if let Some((sel, value)) = self.features_beyond_64 {
                Some(MmioError::FeaturesBeyond64 { sel, value })
            } else if requested & !offered != 0 {
                Some(MmioError::FeaturesNotOffered { requested, offered })
            } else if requested & VIRTIO_F_VERSION_1 == 0 {
                Some(MmioError::VersionNotAccepted { requested })
            } else {
                None
            };
            if let Some(e) = refused {
                self.record(e);
                // FEATURES_OK stays clear, and so DRIVER_OK cannot be set.
                new &= !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
            } else {
                let layout = if requested & VIRTIO_F_RING_PACKED != 0 {
                    QueueLayout::Packed
                } else {
                    QueueLayout::Split
                };
                for q in &mut self.queues {
                    if q.queue.layout() != layout {
                        // The driver sets its queues up after FEATURES_OK.
                        q.queue.set_layout(layout);
                        q.num = u32::from(q.queue.size());
                    }
                    q.queue.set_event_idx(requested & VIRTIO_F_EVENT_IDX != 0);
                    q.queue
                        .set_indirect(requested & VIRTIO_F_INDIRECT_DESC != 0);
                }
            }
        }
        self.status = new;
        if added & new & STATUS_DRIVER_OK != 0 && new & STATUS_NEEDS_RESET == 0 {
            if let Err(e) = self.device.activate(self.driver_features) {
                return self.needs_reset(MmioError::Device(e), irq);
            }
            if let Err(e) = self.start_offload(irq) {
                return self.needs_reset(MmioError::Offload(e), irq);
            }
            // Buffers made available before DRIVER_OK (e.g. receive buffers).
            for index in 0..self.queues.len() {
                let Ok(index) = u32::try_from(index) else {
                    break;
                };
                if let Err(e) = self.process(index, mem, irq) {
                    self.record(e);
                }
            }
        }
    }
}

/// A virtio device behind the virtio-mmio (version 2) transport.
///
/// `S` gives access to guest memory: `Arc<GuestMemoryMmap>`, a
/// `GuestMemoryAtomic` (for memory hotplug), or `&GuestMemoryMmap`. All
/// methods take `&self`; the transport state lives behind a mutex, so the
/// transport can be shared (in an `Arc`) by vCPU threads and an ioeventfd
/// worker.
///
/// ```
/// use std::sync::Arc;
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
/// use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
/// use vmkit_virtio::blk::{Block, BlockOptions};
/// use vmkit_virtio::mmio::MmioTransport;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?);
/// let file = vmm_sys_util::tempfile::TempFile::new()?.into_file();
/// file.set_len(1 << 20)?;
/// let blk = Block::new(file, BlockOptions::default())?;
/// let irq = EventFd::new(EFD_NONBLOCK)?;
/// let dev = Arc::new(MmioTransport::new(blk, mem, irq)?);
/// let mut magic = [0u8; 4];
/// dev.read(0, &mut magic);
/// assert_eq!(&magic, b"virt");
/// // On a vm-device bus: `bus.register_mmio(range, dev.clone())`, since
/// // `MmioTransport` implements `vm_device::DeviceMmio`.
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MmioTransport<S: GuestAddressSpace, D> {
    inner: Mutex<Inner<D>>,
    mem: S,
    irq: EventFd,
}

impl<S, D> MmioTransport<S, D>
where
    S: GuestAddressSpace,
    D: VirtioDevice<S::M>,
{
    /// Wraps `device`, with guest memory `mem` and the interrupt `irq`
    /// (signalled on every used-buffer or configuration change interrupt).
    ///
    /// The offered features are the device's, plus `VIRTIO_F_VERSION_1`,
    /// minus transport features this transport does not implement (it
    /// implements `INDIRECT_DESC`, `EVENT_IDX`, `VERSION_1` and
    /// `RING_PACKED`: queues are split, and packed once the driver accepts
    /// `RING_PACKED`; see [`MmioTransport::with_packed_rings`]).
    pub fn new(device: D, mem: S, irq: EventFd) -> Result<Self, MmioError> {
        Ok(MmioTransport {
            inner: Mutex::new(Inner::new(device)?),
            mem,
            irq,
        })
    }

    /// Offers `VIRTIO_F_RING_PACKED` (the default, if the device offers
    /// it) or withholds it (`false`), so that the driver must use split
    /// queues. Call it before the guest runs. A state saved with the offer
    /// withheld restores into a transport that would offer it, and keeps it
    /// withheld.
    pub fn with_packed_rings(self, offer: bool) -> Self {
        {
            self.lock().offer_packed::<S::M>(offer);
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner<D>> {
        // A panic elsewhere while holding the lock leaves consistent
        // register state (every update is a single assignment), so keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Handles a guest read of `data.len()` bytes at `offset` into the
    /// register window (see the module documentation for access rules).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let mut inner = self.lock();
        if offset >= CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                inner.device.read_config(offset - CONFIG_OFFSET, data);
            } else {
                data.fill(0);
                inner.invalid(offset, data.len(), false);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            inner.invalid(offset, data.len(), false);
            return;
        }
        let v = inner.read_reg::<S::M>(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// Handles a guest write of `data` at `offset` into the register
    /// window. A write to `QueueNotify` processes the queue before it returns.
    pub fn write(&self, offset: u64, data: &[u8]) {
        let mem = self.mem.memory();
        let mut inner = self.lock();
        if offset >= CONFIG_OFFSET {
            if matches!(data.len(), 1 | 2 | 4 | 8) {
                inner.device.write_config(offset - CONFIG_OFFSET, data);
            } else {
                inner.invalid(offset, data.len(), true);
            }
            return;
        }
        let v = match <[u8; 4]>::try_from(data) {
            Ok(b) if offset.is_multiple_of(4) => u32::from_le_bytes(b),
            _ => return inner.invalid(offset, data.len(), true),
        };
        inner.write_reg(offset, v, &*mem, &self.irq);
    }

    /// Processes queue `index` as a `QueueNotify` write would: the entry
    /// point for a VMM's ioeventfd worker thread. Returns whether the
    /// driver was interrupted. Does nothing (`Ok(false)`) before
    /// `DRIVER_OK`, after `FAILED` or `DEVICE_NEEDS_RESET`, or while the
    /// queue is not ready.
    pub fn process_queue(&self, index: u16) -> Result<bool, MmioError> {
        let mem = self.mem.memory();
        let mut inner = self.lock();
        inner.process(u32::from(index), &*mem, &self.irq)
    }

    /// Runs `f` on the device, under the transport's lock (e.g. to queue
    /// console input); follow with [`MmioTransport::process_queue`] to let
    /// the device deliver what `f` made pending.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(&mut self.lock().device)
    }

    /// Tells the driver that the device configuration changed: bumps
    /// `ConfigGeneration` and sends a configuration change interrupt (once
    /// the driver is live).
    pub fn notify_config_change(&self) {
        let mut inner = self.lock();
        inner.config_generation = inner.config_generation.wrapping_add(1);
        if inner.status & STATUS_DRIVER_OK != 0 {
            inner.raise(INT_CONFIG_CHANGE, None, &self.irq);
        }
    }

    /// The interrupt `EventFd` given to [`MmioTransport::new`].
    pub fn interrupt_evt(&self) -> &EventFd {
        &self.irq
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.lock().status
    }

    /// The `InterruptStatus` register.
    pub fn interrupt_status(&self) -> u32 {
        self.lock().interrupt_status
    }

    /// The features offered to the driver.
    pub fn device_features(&self) -> u64 {
        self.lock().device_features
    }

    /// The features the driver accepted (meaningful once `FEATURES_OK` is set).
    pub fn driver_features(&self) -> u64 {
        self.lock().driver_features
    }

    /// Saves the state of queue `index` (its layout and that layout's
    /// state), if it exists.
    pub fn queue_state(&self, index: u16) -> Option<QueueState> {
        self.lock()
            .queues
            .get(usize::from(index))
            .map(|q| q.queue.state())
    }

    /// How many accesses were refused by width, alignment or register
    /// (see the module documentation).
    pub fn invalid_accesses(&self) -> u64 {
        self.lock().invalid_accesses
    }

    /// Hands the queues `offload` names to it (see [`QueueOffload`]), or
    /// takes them back (`None`); a previous offload is stopped and
    /// dropped. Set it before the guest runs: the offload starts at the
    /// driver's next `DRIVER_OK`.
    pub fn set_offload(&self, offload: Option<Box<dyn QueueOffload>>) {
        let mut inner = self.lock();
        inner.stop_offload();
        inner.offload = offload;
    }

    /// Takes the last refused driver action or device failure, if any.
    pub fn take_error(&self) -> Option<MmioError> {
        self.lock().last_error.take()
    }
}

impl<S, D> DeviceMmio for MmioTransport<S, D>
where
    S: GuestAddressSpace,
    D: VirtioDevice<S::M>,
{
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.read(offset, data);
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.write(offset, data);
    }
}
