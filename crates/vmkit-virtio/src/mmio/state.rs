//! Saving and restoring a [`MmioTransport`] with its device and queues.

use vm_memory::{GuestAddressSpace, GuestMemory};

use super::{
    Inner, MmioError, MmioTransport, QueueSlot, INT_CONFIG_CHANGE, INT_USED_BUFFER,
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use crate::device::{
    DeviceError, StateError, VirtioDevice, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1,
};
use crate::{Persist, Queue, QueueLayout, QueueState};

/// The saved state of one queue of a [`MmioTransport`]: the queue itself,
/// and the queue registers the driver wrote (which take effect when it
/// writes `QueueReady`; while the queue is ready they equal the queue's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioQueueState {
    /// The `QueueNum` register.
    pub num: u32,
    /// The `QueueDescLow`/`High` registers.
    pub desc: u64,
    /// The `QueueDriverLow`/`High` registers.
    pub driver: u64,
    /// The `QueueDeviceLow`/`High` registers.
    pub device: u64,
    /// The queue, with its layout: packed exactly when `FEATURES_OK` is
    /// set and the driver accepted `VIRTIO_F_RING_PACKED`.
    pub queue: QueueState,
}

/// The saved state of a [`MmioTransport`] and of its device `D`: the
/// transport's [`Persist::State`], generic over the device's own state
/// (`MmioTransportState<BlockState>` for a [`crate::blk::Block`]).
///
/// # What is in it
///
/// The registers (feature words and selectors, status, interrupt status,
/// configuration generation, queue and shared-memory selectors), each
/// queue's registers and [`QueueState`] (which records its layout), and the device's own typed
/// state with its kind and the version of its encoding.
///
/// The snapshot section of a transport ([`vmkit_snapshot::Writer::write_device`])
/// names the transport's kind, `"virtio-mmio"`; the device's kind and
/// version are checked on restore. A state saved around another kind of
/// device is refused either while decoding (its shape differs) or by
/// `restore_state` ([`RestoreError::DeviceKind`], or
/// [`RestoreError::DeviceType`]).
///
/// # What is not
///
/// - Guest memory, which holds the rings, the buffers, and the driver's and
///   device's ring indices (`avail.idx`, `used.idx`): the VMM saves it, and
///   restores it before the transport.
/// - The device's host resources: the disk file (and its contents) of a
///   block device, the output of a console. The VMM reopens them and builds
///   a fresh device on them; the device's state checks that they match
///   where it can (a disk of another capacity is refused).
/// - Diagnostics: [`MmioTransport::invalid_accesses`] and
///   [`MmioTransport::take_error`] start afresh.
/// - The interrupt and ioeventfd counters: [`MmioTransport::resume`]
///   re-signals a pending interrupt and processes every queue, so that
///   neither an interrupt nor a notification that was pending at save
///   time is lost.
///
/// # Requests in flight: the VMM's part of the contract
///
/// The transport's `save_state` takes its lock, so it never
/// sees a queue half-processed. The devices of this crate complete every
/// chain they pop before `process_queue` returns, so between two calls no
/// request is in flight. But the guest memory and the device state must be
/// saved at the same instant: before saving either, the VMM stops every
/// vCPU **and** every thread that calls [`MmioTransport::process_queue`]
/// (an ioeventfd worker), letting a call under way finish, and it restarts
/// them only after both are saved. A device that completes requests
/// asynchronously (outside `process_queue`) must finish them before its
/// [`Persist::save_state`]; chains it popped and had not returned stay
/// in flight in the saved queue, and a restored device that does not know
/// about them never returns them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioTransportState<D> {
    /// The virtio device type (checked against the fresh device).
    pub device_type: u32,
    /// The features offered to the driver (checked against the fresh device).
    pub device_features: u64,
    /// The `DeviceFeaturesSel` register.
    pub device_features_sel: u32,
    /// The features the driver wrote (accepted once `FEATURES_OK` is set).
    pub driver_features: u64,
    /// The `DriverFeaturesSel` register.
    pub driver_features_sel: u32,
    /// A non-zero feature word the driver wrote above bit 63, as
    /// (selector, value): it makes `FEATURES_OK` fail.
    pub driver_features_beyond_64: Option<(u32, u32)>,
    /// The `QueueSel` register.
    pub queue_sel: u32,
    /// The device status.
    pub status: u32,
    /// The `InterruptStatus` register.
    pub interrupt_status: u32,
    /// The `ConfigGeneration` register.
    pub config_generation: u32,
    /// The `SHMSel` register.
    pub shm_sel: u32,
    /// Each queue, in order.
    pub queues: Vec<MmioQueueState>,
    /// The device's [`Persist::KIND`] (checked against the fresh device).
    pub device_kind: String,
    /// The device's [`Persist::VERSION`] (checked against the fresh device).
    pub device_version: u16,
    /// The device's own state.
    pub device: D,
}

/// Why a [`MmioTransportState`] cannot be restored: the transport's
/// [`Persist::Error`], where `E` is the device's (this crate's devices use
/// [`StateError`]). The state is checked as strictly as the same values
/// written by a driver through the registers would be; each error names the
/// field and its value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError<E = StateError> {
    /// The transport is not fresh: the driver set it up and has not reset
    /// it. Restore into a transport built for the purpose.
    #[error("cannot restore into a transport in use (status {status:#x}): build a fresh one")]
    NotReset {
        /// The transport's status.
        status: u32,
    },
    /// The device's state belongs to another kind of device.
    #[error("saved device_kind {saved:?} is not the device's kind {device:?}")]
    DeviceKind {
        /// The saved kind.
        saved: String,
        /// The fresh device's [`Persist::KIND`].
        device: &'static str,
    },
    /// The device's state is in another version of its encoding.
    #[error("saved device_version {saved} is not the device's state version {device}")]
    DeviceVersion {
        /// The saved version.
        saved: u16,
        /// The fresh device's [`Persist::VERSION`].
        device: u16,
    },
    /// The state belongs to a device of another type.
    #[error("saved device type {saved} does not match the device's type {device}")]
    DeviceType {
        /// The saved type.
        saved: u32,
        /// The fresh device's type.
        device: u32,
    },
    /// The fresh device offers other features than the saved one did
    /// (beyond `VIRTIO_F_RING_PACKED`, which the saved transport may have
    /// withheld).
    #[error(
        "saved device_features {saved:#x} differ from the features the device offers, {offered:#x}"
    )]
    DeviceFeatures {
        /// The saved offer.
        saved: u64,
        /// The fresh device's offer.
        offered: u64,
    },
    /// The state has another number of queues than the device.
    #[error("saved state has {saved} queues; the device has {device}")]
    QueueCount {
        /// Queues in the state.
        saved: usize,
        /// Queues of the device.
        device: usize,
    },
    /// A queue's maximum size differs from the device's.
    #[error("queue {index}: saved max_size {saved} differs from the device's {device}")]
    QueueMaxSize {
        /// The queue index.
        index: usize,
        /// The saved maximum.
        saved: u16,
        /// The device's maximum.
        device: u16,
    },
    /// A queue's state is invalid (size, alignment, indices) or, for a
    /// ready queue, its rings are not in guest memory.
    #[error("queue {index}")]
    Queue {
        /// The queue index.
        index: usize,
        /// What is wrong.
        #[source]
        source: crate::Error,
    },
    /// A ready queue whose registers differ from the queue they configured
    /// (the transport refuses register writes while a queue is ready).
    #[error("queue {index} is ready but its {register} register {value:#x} differs from the queue's {queue:#x}")]
    QueueRegister {
        /// The queue index.
        index: usize,
        /// The register.
        register: &'static str,
        /// The register's saved value.
        value: u64,
        /// The queue's saved value.
        queue: u64,
    },
    /// A queue's layout disagrees with the negotiated features (packed
    /// exactly when `FEATURES_OK` is set with `VIRTIO_F_RING_PACKED`).
    #[error(
        "queue {index}: saved layout is {saved}, but the negotiated features say {negotiated}"
    )]
    QueueLayout {
        /// The queue index.
        index: usize,
        /// The saved layout.
        saved: QueueLayout,
        /// What the features imply.
        negotiated: QueueLayout,
    },
    /// A queue's event_idx or indirect flag disagrees with the negotiated
    /// features (set from them at `FEATURES_OK`, clear before).
    #[error("queue {index}: saved {flag} = {saved}, but the negotiated features say {negotiated}")]
    QueueFeatureFlag {
        /// The queue index.
        index: usize,
        /// `"event_idx"` or `"indirect"`.
        flag: &'static str,
        /// The saved flag.
        saved: bool,
        /// What the features imply.
        negotiated: bool,
    },
    /// A status the state machine cannot reach.
    #[error("status {status:#x} is unreachable: {reason}")]
    Status {
        /// The saved status.
        status: u32,
        /// Why.
        reason: &'static str,
    },
    /// `FEATURES_OK` with driver features the device did not offer.
    #[error("FEATURES_OK with driver_features {driver:#x}, which include {:#x} not offered ({offered:#x})", .driver & !.offered)]
    FeaturesNotOffered {
        /// The saved driver features.
        driver: u64,
        /// The offered features.
        offered: u64,
    },
    /// `FEATURES_OK` with driver features lacking `VIRTIO_F_VERSION_1`.
    #[error("FEATURES_OK with driver_features {driver:#x}, which lack VIRTIO_F_VERSION_1")]
    VersionNotAccepted {
        /// The saved driver features.
        driver: u64,
    },
    /// An invalid `driver_features_beyond_64`.
    #[error("driver_features_beyond_64 (selector {sel}, value {value:#x}) is invalid: {reason}")]
    FeaturesBeyond64 {
        /// The selector.
        sel: u32,
        /// The value.
        value: u32,
        /// Why.
        reason: &'static str,
    },
    /// Interrupt status bits that do not exist, or that only a live
    /// device raises.
    #[error("interrupt_status {value:#x} is invalid in status {status:#x}: {reason}")]
    InterruptStatus {
        /// The saved interrupt status.
        value: u32,
        /// The saved device status.
        status: u32,
        /// Why.
        reason: &'static str,
    },
    /// The device refused its state.
    #[error("device state")]
    Device(#[source] E),
    /// The state says `DRIVER_OK`, but the device cannot be activated with
    /// the saved features.
    #[error("cannot activate the device with the saved features")]
    Activation(#[source] DeviceError),
}

/// The registers, the queues and the device's own state
/// ([`MmioTransportState`]).
impl<S, D> Persist for MmioTransport<S, D>
where
    S: GuestAddressSpace,
    D: VirtioDevice<S::M> + Persist,
{
    const KIND: &'static str = "virtio-mmio";
    /// Version 1 held the device's state as a tagged enum; version 2 holds
    /// it typed, with its version.
    const VERSION: u16 = 2;
    type State = MmioTransportState<D::State>;
    type Error = RestoreError<D::Error>;

    /// Saves the transport's, the queues' and the device's state. See
    /// [`MmioTransportState`] for what is not in it, and for the VMM's part
    /// of the contract: stop the vCPUs and any notification worker first.
    fn save_state(&self) -> MmioTransportState<D::State> {
        let inner = self.lock();
        MmioTransportState {
            device_type: inner.device.device_type(),
            device_features: inner.device_features,
            device_features_sel: inner.device_features_sel,
            driver_features: inner.driver_features,
            driver_features_sel: inner.driver_features_sel,
            driver_features_beyond_64: inner.features_beyond_64,
            queue_sel: inner.queue_sel,
            status: inner.status,
            interrupt_status: inner.interrupt_status,
            config_generation: inner.config_generation,
            shm_sel: inner.shm_sel,
            queues: inner
                .queues
                .iter()
                .map(|q| MmioQueueState {
                    num: q.num,
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                    queue: q.queue.state(),
                })
                .collect(),
            device_kind: D::KIND.to_string(),
            device_version: D::VERSION,
            device: inner.device.save_state(),
        }
    }

    /// Restores `state` into this fresh transport (its status 0), built by
    /// [`MmioTransport::new`] around a fresh device (on the same resources
    /// as the saved one: the same disk, the same options), over guest
    /// memory already restored, with its interrupt eventfd.
    ///
    /// Every value is validated as if the driver had written it through
    /// the registers: the device type, offered features and queue maximum
    /// sizes must be the fresh device's (the saved offer may lack
    /// `VIRTIO_F_RING_PACKED`, if the saved transport withheld it: see
    /// [`MmioTransport::with_packed_rings`]; the restored one then withholds
    /// it too); the status must be reachable
    /// (`DRIVER` needs `ACKNOWLEDGE`, `FEATURES_OK` needs `DRIVER`,
    /// `DRIVER_OK` needs `FEATURES_OK`); with `FEATURES_OK`, the driver
    /// features are a subset of the offer and include `VIRTIO_F_VERSION_1`;
    /// each queue's layout is packed exactly when `FEATURES_OK` is set with
    /// `VIRTIO_F_RING_PACKED`, its size is valid for that layout (a power
    /// of two for split) and not above its maximum, its areas are aligned,
    /// its ring positions are consistent (at most `size` in flight), and
    /// its event_idx/indirect flags follow the negotiated features; a ready
    /// queue's registers are the queue's and its rings lie in `mem`;
    /// interrupt status bits are `USED_BUFFER`/`CONFIG_CHANGE` only, and
    /// only with `DRIVER_OK`; the device state's kind and version are the
    /// device's.
    /// Then the device restores its own state ([`Persist::restore_state`])
    /// and, with `DRIVER_OK` and without `DEVICE_NEEDS_RESET`, is activated
    /// with the saved driver features.
    ///
    /// Restoring touches neither guest memory nor the interrupt. Call
    /// [`MmioTransport::resume`] once the interrupt is wired to the guest.
    fn restore_state(
        &mut self,
        state: &MmioTransportState<D::State>,
    ) -> Result<(), RestoreError<D::Error>> {
        let guest = self.mem.memory();
        let mut inner = self.lock();
        if inner.status != 0 {
            return Err(RestoreError::NotReset {
                status: inner.status,
            });
        }
        let queues = check(&inner, state, &*guest)?;
        if state.device_kind != D::KIND {
            return Err(RestoreError::DeviceKind {
                saved: state.device_kind.clone(),
                device: D::KIND,
            });
        }
        if state.device_version != D::VERSION {
            return Err(RestoreError::DeviceVersion {
                saved: state.device_version,
                device: D::VERSION,
            });
        }
        inner
            .device
            .restore_state(&state.device)
            .map_err(RestoreError::Device)?;
        if state.status & STATUS_DRIVER_OK != 0 && state.status & STATUS_NEEDS_RESET == 0 {
            inner
                .device
                .activate(state.driver_features)
                .map_err(RestoreError::Activation)?;
        }
        let inner = &mut *inner;
        // The saved offer, which may withhold VIRTIO_F_RING_PACKED (checked above).
        inner.device_features = state.device_features;
        inner.device_features_sel = state.device_features_sel;
        inner.driver_features = state.driver_features;
        inner.driver_features_sel = state.driver_features_sel;
        inner.features_beyond_64 = state.driver_features_beyond_64;
        inner.queue_sel = state.queue_sel;
        inner.queues = queues;
        inner.status = state.status;
        inner.interrupt_status = state.interrupt_status;
        inner.config_generation = state.config_generation;
        inner.shm_sel = state.shm_sel;
        Ok(())
    }
}

impl<S, D> MmioTransport<S, D>
where
    S: GuestAddressSpace,
    D: VirtioDevice<S::M>,
{
    /// Resumes a restored transport: re-signals the interrupt if
    /// `InterruptStatus` is non-zero (a spurious interrupt is harmless, a
    /// lost one can stall the driver), then processes every ready queue, as
    /// a notification would (picking up buffers whose notification was
    /// still pending in an ioeventfd when the state was saved). Returns
    /// whether the driver was interrupted. Does nothing unless the device
    /// is live (`DRIVER_OK`, and neither `FAILED` nor
    /// `DEVICE_NEEDS_RESET`).
    ///
    /// Call it once after the transport's [`Persist::restore_state`], when
    /// the interrupt eventfd is wired to the guest and before the vCPUs run.
    pub fn resume(&self) -> Result<bool, MmioError> {
        let mem = self.mem.memory();
        let mut inner = self.lock();
        if !inner.live() {
            return Ok(false);
        }
        let mut interrupted = false;
        if inner.interrupt_status != 0 {
            self.irq.write(1).map_err(MmioError::Interrupt)?;
            interrupted = true;
        }
        for index in 0..inner.queues.len() {
            let Ok(index) = u32::try_from(index) else {
                break;
            };
            interrupted |= inner.process(index, &*mem, &self.irq)?;
        }
        Ok(interrupted)
    }
}

/// Validates `state` against the fresh transport `inner` and guest memory
/// `mem`; returns the restored queues.
fn check<D, M, T, E>(
    inner: &Inner<D>,
    state: &MmioTransportState<T>,
    mem: &M,
) -> Result<Vec<QueueSlot>, RestoreError<E>>
where
    M: GuestMemory + ?Sized,
    D: VirtioDevice<M>,
{
    let device_type = inner.device.device_type();
    if state.device_type != device_type {
        return Err(RestoreError::DeviceType {
            saved: state.device_type,
            device: device_type,
        });
    }
    let offered = inner.device_features;
    if state.device_features != offered && state.device_features != offered & !VIRTIO_F_RING_PACKED
    {
        return Err(RestoreError::DeviceFeatures {
            saved: state.device_features,
            offered,
        });
    }
    let status = state.status;
    let unreachable = |reason| RestoreError::Status { status, reason };
    if status & STATUS_DRIVER != 0 && status & STATUS_ACKNOWLEDGE == 0 {
        return Err(unreachable("DRIVER without ACKNOWLEDGE"));
    }
    if status & STATUS_FEATURES_OK != 0 && status & STATUS_DRIVER == 0 {
        return Err(unreachable("FEATURES_OK without DRIVER"));
    }
    if status & STATUS_DRIVER_OK != 0 && status & STATUS_FEATURES_OK == 0 {
        return Err(unreachable("DRIVER_OK without FEATURES_OK"));
    }
    let features_ok = status & STATUS_FEATURES_OK != 0;
    if let Some((sel, value)) = state.driver_features_beyond_64 {
        let bad = |reason| RestoreError::FeaturesBeyond64 { sel, value, reason };
        if sel < 2 {
            return Err(bad("feature words 0 and 1 are within the 64 offered bits"));
        }
        if value == 0 {
            return Err(bad("only non-zero words are recorded"));
        }
        if features_ok {
            return Err(bad("it makes FEATURES_OK fail, yet FEATURES_OK is set"));
        }
    }
    let offered = state.device_features;
    let driver = state.driver_features;
    if features_ok {
        if driver & !offered != 0 {
            return Err(RestoreError::FeaturesNotOffered { driver, offered });
        }
        if driver & VIRTIO_F_VERSION_1 == 0 {
            return Err(RestoreError::VersionNotAccepted { driver });
        }
    }
    let irq = state.interrupt_status;
    if irq & !(INT_USED_BUFFER | INT_CONFIG_CHANGE) != 0 {
        return Err(RestoreError::InterruptStatus {
            value: irq,
            status,
            reason: "bits other than USED_BUFFER and CONFIG_CHANGE",
        });
    }
    if irq != 0 && status & STATUS_DRIVER_OK == 0 {
        return Err(RestoreError::InterruptStatus {
            value: irq,
            status,
            reason: "interrupts are raised only after DRIVER_OK",
        });
    }
    if state.queues.len() != inner.queues.len() {
        return Err(RestoreError::QueueCount {
            saved: state.queues.len(),
            device: inner.queues.len(),
        });
    }
    let event_idx = features_ok && driver & VIRTIO_F_EVENT_IDX != 0;
    let indirect = features_ok && driver & VIRTIO_F_INDIRECT_DESC != 0;
    let layout = if features_ok && driver & VIRTIO_F_RING_PACKED != 0 {
        QueueLayout::Packed
    } else {
        QueueLayout::Split
    };
    let mut queues = Vec::with_capacity(state.queues.len());
    for (index, (saved, fresh)) in state.queues.iter().zip(&inner.queues).enumerate() {
        let q = &saved.queue;
        let max = fresh.queue.max_size();
        if q.max_size() != max {
            return Err(RestoreError::QueueMaxSize {
                index,
                saved: q.max_size(),
                device: max,
            });
        }
        if q.layout() != layout {
            return Err(RestoreError::QueueLayout {
                index,
                saved: q.layout(),
                negotiated: layout,
            });
        }
        let queue = Queue::from_state(q).map_err(|source| RestoreError::Queue { index, source })?;
        let (saved_event_idx, saved_indirect) = q.feature_flags();
        for (flag, saved, negotiated) in [
            ("event_idx", saved_event_idx, event_idx),
            ("indirect", saved_indirect, indirect),
        ] {
            if saved != negotiated {
                return Err(RestoreError::QueueFeatureFlag {
                    index,
                    flag,
                    saved,
                    negotiated,
                });
            }
        }
        if q.ready() {
            let [desc, driver, device] = q.areas();
            for (register, value, of_queue) in [
                ("QueueNum", u64::from(saved.num), u64::from(q.size())),
                ("QueueDesc", saved.desc, desc),
                ("QueueDriver", saved.driver, driver),
                ("QueueDevice", saved.device, device),
            ] {
                if value != of_queue {
                    return Err(RestoreError::QueueRegister {
                        index,
                        register,
                        value,
                        queue: of_queue,
                    });
                }
            }
            queue
                .validate(mem)
                .map_err(|source| RestoreError::Queue { index, source })?;
        }
        queues.push(QueueSlot {
            queue,
            num: saved.num,
            desc: saved.desc,
            driver: saved.driver,
            device: saved.device,
        });
    }
    Ok(queues)
}
