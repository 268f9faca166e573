//! Putting a virtio device on a VM behind a virtio-mmio transport:
//! [`VirtioMmioWiring::attach`].
//!
//! For each device it allocates a register window ([`MMIO_REGION_SIZE`],
//! one page) and a GSI, builds the [`MmioTransport`] with a fresh interrupt
//! eventfd, registers that eventfd with the VM as an irqfd on the GSI (so
//! the hypervisor raises the interrupt without a trip through the VMM),
//! registers, for the queues asked for, an ioeventfd on the window's
//! `QueueNotify` register with the queue index as datamatch (so the guest's
//! notification of that queue signals an eventfd instead of exiting to a
//! vCPU thread), and puts the transport on the bus. What it returns
//! ([`WiredDevice`]) is what the rest of the VMM needs: the transport (for
//! a device thread), the window and GSI (to describe the device to the
//! guest, e.g. in ACPI tables or on the kernel command line) and the
//! notification eventfds (for the device thread, e.g.
//! `vmkit_net::NetWorker`).
//!
//! If a step fails, the steps before it are undone (registrations removed)
//! and the allocators are left as they were.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vmkit::{MemoryFlags, MemoryRegion, VmConfig};
//! use vmkit_bus::Bus;
//! use vmkit_machine::resources::{GsiAllocator, MmioAllocator};
//! use vmkit_machine::virtio_mmio::VirtioMmioWiring;
//! use vmkit_virtio::console::Console;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vm = vmkit::open()?.create_vm(&VmConfig::default().irqchip(true))?;
//! vm.add_memory_region(MemoryRegion::anonymous(
//!     vm_memory::GuestAddress(0), 64 << 20, MemoryFlags::empty())?)?;
//! let mut bus = Bus::new();
//! let mut wiring = VirtioMmioWiring::new(
//!     Arc::new(vm.memory()),
//!     MmioAllocator::new(0xd000_0000, 0xd100_0000)?,
//!     GsiAllocator::new(5, 23)?,
//! );
//! // Queue 1 (the console's transmit queue) notifies through an ioeventfd.
//! let mut console = wiring.attach(vm.as_ref(), &mut bus, Console::new(std::io::stdout()), &[1])?;
//! let tx_notify = console.take_notifier(1);
//! println!("virtio-mmio at {:#x}, GSI {}", console.window.base, console.gsi);
//! # let _ = tx_notify;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use vm_device::bus::MmioAddress;
use vm_memory::GuestAddressSpace;
use vmkit::{DataMatch, IoEventAddress, Vm, VmError};
use vmkit_bus::{Bus, BusError};
use vmkit_virtio::mmio::{MmioError, MmioTransport, MMIO_REGION_SIZE, NOTIFY_OFFSET};
use vmkit_virtio::{Persist, VirtioDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::resources::{GsiAllocator, MmioAllocator, MmioWindow, ResourceError};

/// The errors of [`VirtioMmioWiring::attach`]; each names the window, GSI
/// or queue concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WiringError {
    /// No window or GSI was left.
    #[error("cannot allocate resources for a virtio-mmio device")]
    Resources(#[source] ResourceError),
    /// A queue to notify through an ioeventfd is not one of the device's.
    #[error("queue {queue} is not one of the device's {count} queues")]
    NoSuchQueue {
        /// The queue index asked for.
        queue: u16,
        /// How many queues the device has.
        count: usize,
    },
    /// A queue to notify through an ioeventfd was named twice.
    #[error("queue {queue} is named twice in the queues to notify through ioeventfds")]
    DuplicateQueue {
        /// The queue index.
        queue: u16,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for the virtio-mmio device at {base:#x}")]
    EventFd {
        /// The window's base.
        base: u64,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The transport refused the device.
    #[error("cannot build the virtio-mmio transport at {base:#x}")]
    Transport {
        /// The window's base.
        base: u64,
        /// The transport's error.
        #[source]
        source: MmioError,
    },
    /// The interrupt could not be registered as an irqfd.
    #[error("cannot register the interrupt of the virtio-mmio device at {base:#x} as an irqfd on GSI {gsi}")]
    Irqfd {
        /// The window's base.
        base: u64,
        /// The GSI.
        gsi: u32,
        /// The VM's error.
        #[source]
        source: VmError,
    },
    /// A queue notification could not be registered as an ioeventfd.
    #[error("cannot register an ioeventfd at {addr:#x} for queue {queue}")]
    Ioeventfd {
        /// The `QueueNotify` register's address.
        addr: u64,
        /// The queue index (the datamatch).
        queue: u16,
        /// The VM's error.
        #[source]
        source: VmError,
    },
    /// A saved state could not be restored into the fresh transport
    /// ([`VirtioMmioWiring::attach_restored`]); nothing was registered.
    #[error("cannot restore the saved state of the virtio-mmio device at {base:#x}")]
    Restore {
        /// The window's base.
        base: u64,
        /// The transport's or the device's refusal.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The restored transport could not resume (re-signal its interrupt,
    /// process its ready queues); everything stays registered, and the
    /// VMM discards the VM.
    #[error("cannot resume the restored virtio-mmio device at {base:#x}")]
    Resume {
        /// The window's base.
        base: u64,
        /// The transport's error.
        #[source]
        source: MmioError,
    },
    /// The window could not be put on the bus.
    #[error("cannot put the virtio-mmio device at {base:#x} on the bus")]
    Bus {
        /// The window's base.
        base: u64,
        /// The bus's error.
        #[source]
        source: BusError,
    },
}

/// The eventfd that a guest's notification of one queue signals.
#[derive(Debug)]
pub struct QueueNotifier {
    /// The queue index (the ioeventfd's datamatch).
    pub queue: u16,
    /// The eventfd (non-blocking).
    pub event: EventFd,
}

/// A device on the VM behind its virtio-mmio transport; see the [module
/// documentation](self).
#[derive(Debug)]
pub struct WiredDevice<S: GuestAddressSpace, D> {
    /// The transport, also registered on the bus.
    pub transport: Arc<MmioTransport<S, D>>,
    /// Its register window.
    pub window: MmioWindow,
    /// Its interrupt.
    pub gsi: u32,
    /// The notification eventfds of the queues asked for, in the order
    /// asked.
    pub notifiers: Vec<QueueNotifier>,
}

impl<S: GuestAddressSpace, D> WiredDevice<S, D> {
    /// Takes the notification eventfd of `queue`, if it was asked for (and
    /// not taken yet).
    pub fn take_notifier(&mut self, queue: u16) -> Option<EventFd> {
        take_notifier(&mut self.notifiers, queue)
    }
}

/// Takes the notification eventfd of `queue` out of `notifiers`, if it is there.
pub(crate) fn take_notifier(notifiers: &mut Vec<QueueNotifier>, queue: u16) -> Option<EventFd> {
    let i = notifiers.iter().position(|n| n.queue == queue)?;
    Some(notifiers.remove(i).event)
}

/// Places virtio-mmio devices on a VM: windows and GSIs from its
/// allocators, transports over its guest memory. See the [module
/// documentation](self).
#[derive(Debug)]
pub struct VirtioMmioWiring<S> {
    /// Where windows come from (public: other devices may take windows too).
    pub mmio: MmioAllocator,
    /// Where GSIs come from (public: reserve the numbers of other devices).
    pub gsis: GsiAllocator,
    memory: S,
    /// Whether the transports offer packed virtqueues.
    packed_rings: bool,
}

impl<S> VirtioMmioWiring<S>
where
    S: GuestAddressSpace + Clone + Send + Sync + 'static,
{
    /// Wiring over guest memory `memory` (each transport gets a clone),
    /// with windows from `mmio` and GSIs from `gsis`.
    pub fn new(memory: S, mmio: MmioAllocator, gsis: GsiAllocator) -> VirtioMmioWiring<S> {
        VirtioMmioWiring {
            mmio,
            gsis,
            memory,
            packed_rings: true,
        }
    }

    /// Whether the transports attached from now on offer packed virtqueues
    /// (`VIRTIO_F_RING_PACKED`, offered by default; see
    /// [`MmioTransport::with_packed_rings`]). Withholding them makes every
    /// driver use split rings.
    pub fn packed_rings(mut self, offer: bool) -> Self {
        self.packed_rings = offer;
        self
    }

    /// Puts `device` on `vm` and `bus` behind a virtio-mmio transport:
    /// allocates a window and a GSI, registers the transport's interrupt as
    /// an irqfd on the GSI, an ioeventfd for each queue in `notify` (the
    /// others' notifications reach the transport through the bus), and the
    /// window on the bus. Undoes what it did if a step fails.
    pub fn attach<D>(
        &mut self,
        vm: &dyn Vm,
        bus: &mut Bus,
        device: D,
        notify: &[u16],
    ) -> Result<WiredDevice<S, D>, WiringError>
    where
        D: VirtioDevice<S::M> + Send + 'static,
    {
        self.wire(vm, bus, device, notify, |_| Ok(()))
    }

    /// [`attach`](Self::attach) for a device restored from a snapshot:
    /// `device` is built as for a first boot (on the same host resources),
    /// and the transport around it takes `state` (from
    /// [`Persist::save_state`] of the saved transport) *before* it is
    /// shared or registered, as [`Persist`]'s convention asks. Once the
    /// interrupt and notifications are wired, the transport resumes
    /// ([`MmioTransport::resume`]): a pending interrupt is signalled again
    /// and ready queues are processed. Call it with guest memory restored
    /// and before the vCPUs run, attaching the devices in the order of the
    /// first boot so that each gets the same window and GSI.
    ///
    /// A refused state ([`WiringError::Restore`]) takes no window or GSI
    /// and registers nothing.
    pub fn attach_restored<D>(
        &mut self,
        vm: &dyn Vm,
        bus: &mut Bus,
        device: D,
        notify: &[u16],
        state: &<MmioTransport<S, D> as Persist>::State,
    ) -> Result<WiredDevice<S, D>, WiringError>
    where
        D: VirtioDevice<S::M> + Persist + Send + 'static,
    {
        let wired = self.wire(vm, bus, device, notify, |transport| {
            transport.restore_state(state).map_err(Box::from)
        })?;
        wired
            .transport
            .resume()
            .map_err(|source| WiringError::Resume {
                base: wired.window.base,
                source,
            })?;
        Ok(wired)
    }

    /// What [`attach`](Self::attach) does, with `prepare` applied to the
    /// transport before it is shared.
    fn wire<D, F>(
        &mut self,
        vm: &dyn Vm,
        bus: &mut Bus,
        device: D,
        notify: &[u16],
        prepare: F,
    ) -> Result<WiredDevice<S, D>, WiringError>
    where
        D: VirtioDevice<S::M> + Send + 'static,
        F: FnOnce(&mut MmioTransport<S, D>) -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
    {
        let count = device.queue_max_sizes().len();
        for (i, &queue) in notify.iter().enumerate() {
            if usize::from(queue) >= count {
                return Err(WiringError::NoSuchQueue { queue, count });
            }
            if notify[..i].contains(&queue) {
                return Err(WiringError::DuplicateQueue { queue });
            }
        }
        // Allocate on copies: the allocators change only once all went well.
        let (mut mmio, mut gsis) = (self.mmio.clone(), self.gsis.clone());
        let window = mmio
            .allocate(MMIO_REGION_SIZE)
            .map_err(WiringError::Resources)?;
        let gsi = gsis.allocate().map_err(WiringError::Resources)?;
        let base = window.base;
        let eventfd = |source| WiringError::EventFd { base, source };
        let irq = EventFd::new(EFD_NONBLOCK).map_err(eventfd)?;
        let mut transport = MmioTransport::new(device, self.memory.clone(), irq)
            .map_err(|source| WiringError::Transport { base, source })?
            .with_packed_rings(self.packed_rings);
        prepare(&mut transport).map_err(|source| WiringError::Restore { base, source })?;
        let transport = Arc::new(transport);
        let mut notifiers = Vec::with_capacity(notify.len());
        for &queue in notify {
            notifiers.push(QueueNotifier {
                queue,
                event: EventFd::new(EFD_NONBLOCK).map_err(eventfd)?,
            });
        }

        let irqfd = transport.interrupt_evt();
        vm.register_irqfd(irqfd, gsi, None)
            .map_err(|source| WiringError::Irqfd { base, gsi, source })?;
        let notify_addr = base + NOTIFY_OFFSET;
        let mut registered: Vec<&QueueNotifier> = Vec::with_capacity(notifiers.len());
        let mut failure = None;
        for notifier in &notifiers {
            let result = vm.register_ioeventfd(
                &notifier.event,
                IoEventAddress::Mmio(notify_addr),
                DataMatch::U32(u32::from(notifier.queue)),
            );
            match result {
                Ok(()) => registered.push(notifier),
                Err(source) => {
                    failure = Some(WiringError::Ioeventfd {
                        addr: notify_addr,
                        queue: notifier.queue,
                        source,
                    });
                    break;
                }
            }
        }
        if failure.is_none() {
            if let Err(source) =
                bus.register_mmio(MmioAddress(base), window.size, transport.clone())
            {
                failure = Some(WiringError::Bus { base, source });
            }
        }
        if let Some(err) = failure {
            // Best effort: the VM refusing to forget a registration of an
            // eventfd that is about to be closed changes nothing the caller
            // can act on.
            for notifier in registered {
                let _ = vm.unregister_ioeventfd(
                    &notifier.event,
                    IoEventAddress::Mmio(notify_addr),
                    DataMatch::U32(u32::from(notifier.queue)),
                );
            }
            let _ = vm.unregister_irqfd(irqfd, gsi);
            return Err(err);
        }
        self.mmio = mmio;
        self.gsis = gsis;
        Ok(WiredDevice {
            transport,
            window,
            gsi,
            notifiers,
        })
    }

    /// The guest memory the transports use.
    pub fn memory(&self) -> &S {
        &self.memory
    }
}
