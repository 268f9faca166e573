//! Putting virtio devices on a VM behind virtio-pci transports on one PCI
//! root bus: [`VirtioPciWiring`].
//!
//! [`VirtioPciWiring::attach`] takes a slot on the root bus, a BAR window
//! (aligned to its size, from the host bridge's memory window) and a GSI
//! for INTx; builds the [`PciTransport`] with MSI-X messages sent through
//! the VM ([`VmMsi`]: `Vm::signal_msi`) and INTx through an eventfd
//! registered as an irqfd on the GSI; registers an ioeventfd on each asked
//! queue's notification address (any write, so a device thread serves it);
//! and puts the function on the root bus. [`VirtioPciWiring::finish`] then
//! puts the root on the VMM's bus: the configuration ports `0xCF8`–`0xCFF`,
//! the ECAM window and the BAR window. What it returns
//! ([`WiredPciDevice`], [`PciPlatform`]) is what the boot layer needs to
//! describe the bus (MCFG, `_CRS`, `_PRT`).
//!
//! The ioeventfds sit at the addresses the BARs have when they are
//! attached. Linux keeps firmware's BAR assignments; a guest that moves a
//! BAR still reaches the transport through the BAR window (its
//! notifications then exit to a vCPU thread, which processes the queue).

use std::sync::Arc;

use vm_device::bus::{MmioAddress, PioAddress};
use vm_memory::GuestAddressSpace;
use vmkit::{DataMatch, IoEventAddress, MsiMessage as VmMsiMessage, Vm, VmError};
use vmkit_bus::{Bus, BusError};
use vmkit_pci::config::ConfigError;
use vmkit_pci::root::{CONFIG_ADDRESS_PORT, CONFIG_PORTS, ECAM_BUS_SIZE};
use vmkit_pci::{BarWindow, Ecam, MsiMessage, MsiSink, PciRoot, RootError};
use vmkit_virtio::pci::{PciTransport, PciTransportError, BAR_SIZE};
use vmkit_virtio::VirtioDevice;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::resources::{GsiAllocator, MmioAllocator, MmioWindow, ResourceError};
use crate::virtio_mmio::QueueNotifier;

/// Sends MSI-X messages through a VM's `signal_msi`.
#[derive(Clone)]
pub struct VmMsi(pub Arc<dyn Vm>);

impl std::fmt::Debug for VmMsi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VmMsi")
    }
}

impl MsiSink for VmMsi {
    fn send(&self, msg: MsiMessage) -> std::io::Result<()> {
        self.0
            .signal_msi(VmMsiMessage {
                address: msg.address,
                data: msg.data,
            })
            .map_err(std::io::Error::other)
    }
}

/// The errors of [`VirtioPciWiring`]; each names the slot, window, GSI or queue concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PciWiringError {
    /// No BAR window or GSI was left.
    #[error("cannot allocate resources for a virtio-pci device")]
    Resources(#[source] ResourceError),
    /// No slot was left on the root bus.
    #[error("cannot put a virtio-pci device on the root bus")]
    Slot(#[source] RootError),
    /// A queue to notify through an ioeventfd is not one of the device's, or named twice.
    #[error("queue {queue} is not one of the device's {count} queues, or is named twice")]
    BadQueue {
        /// The queue index.
        queue: u16,
        /// How many queues the device has.
        count: usize,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for the virtio-pci device in slot {slot}")]
    EventFd {
        /// The slot.
        slot: u8,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The transport refused the device.
    #[error("cannot build the virtio-pci transport in slot {slot}")]
    Transport {
        /// The slot.
        slot: u8,
        /// The transport's error.
        #[source]
        source: PciTransportError,
    },
    /// The BAR could not be placed.
    #[error("cannot place BAR 0 of slot {slot} at {base:#x}")]
    Bar {
        /// The slot.
        slot: u8,
        /// The window's base.
        base: u64,
        /// The configuration space's error.
        #[source]
        source: ConfigError,
    },
    /// The INTx eventfd could not be registered as an irqfd.
    #[error("cannot register INTx of slot {slot} as an irqfd on GSI {gsi}")]
    Irqfd {
        /// The slot.
        slot: u8,
        /// The GSI.
        gsi: u32,
        /// The VM's error.
        #[source]
        source: VmError,
    },
    /// A queue notification could not be registered as an ioeventfd.
    #[error("cannot register an ioeventfd at {addr:#x} for queue {queue}")]
    Ioeventfd {
        /// The notification address.
        addr: u64,
        /// The queue index.
        queue: u16,
        /// The VM's error.
        #[source]
        source: VmError,
    },
    /// The GSI does not fit the interrupt line register (0 to 254).
    #[error("GSI {gsi} does not fit the interrupt line register")]
    Line {
        /// The GSI.
        gsi: u32,
    },
    /// The root could not be put on the bus.
    #[error("cannot put the PCI {what} at {base:#x} on the bus")]
    Bus {
        /// "configuration ports", "ECAM window" or "BAR window".
        what: &'static str,
        /// Its base.
        base: u64,
        /// The bus's error.
        #[source]
        source: BusError,
    },
}

/// A device on the root bus behind its virtio-pci transport.
#[derive(Debug)]
pub struct WiredPciDevice<S: GuestAddressSpace, D> {
    /// The transport, also on the root bus.
    pub transport: Arc<PciTransport<S, D>>,
    /// Its slot on bus 0.
    pub slot: u8,
    /// Its BAR 0.
    pub bar: MmioWindow,
    /// The GSI its INTA is wired to.
    pub gsi: u32,
    /// The notification eventfds of the queues asked for, in the order asked.
    pub notifiers: Vec<QueueNotifier>,
}

impl<S: GuestAddressSpace, D> WiredPciDevice<S, D> {
    /// Takes the notification eventfd of `queue`, if it was asked for (and not taken yet).
    pub fn take_notifier(&mut self, queue: u16) -> Option<EventFd> {
        crate::virtio_mmio::take_notifier(&mut self.notifiers, queue)
    }
}

/// The root bus as [`VirtioPciWiring::finish`] put it on the VMM's bus.
#[derive(Debug)]
pub struct PciPlatform {
    /// The root bus.
    pub root: Arc<PciRoot>,
    /// The ECAM window (bus 0).
    pub ecam: MmioWindow,
    /// The memory window the BARs come from.
    pub bars: MmioWindow,
    /// Each slot's INTx GSI.
    pub intx: Vec<(u8, u32)>,
}

/// Places virtio-pci devices on one root bus; see the [module documentation](self).
#[derive(Debug)]
pub struct VirtioPciWiring<S> {
    root: PciRoot,
    bars: MmioAllocator,
    bar_range: MmioWindow,
    ecam_base: u64,
    /// Where INTx GSIs come from (public: reserve the numbers of other devices).
    pub gsis: GsiAllocator,
    memory: S,
    sink: Arc<dyn MsiSink>,
    packed_rings: bool,
    intx: Vec<(u8, u32)>,
}

impl<S> VirtioPciWiring<S>
where
    S: GuestAddressSpace + Clone + Send + Sync + 'static,
{
    /// Wiring over guest memory `memory`, with the ECAM window at `ecam_base` (1 MiB, bus 0),
    /// BARs from `bars`, INTx GSIs from `gsis`, and MSI-X messages sent to `sink` (e.g.
    /// [`VmMsi`]).
    pub fn new(
        memory: S,
        ecam_base: u64,
        bars: MmioAllocator,
        gsis: GsiAllocator,
        sink: Arc<dyn MsiSink>,
    ) -> VirtioPciWiring<S> {
        let bar_range = MmioWindow {
            base: bars.next_base(),
            size: bars.limit().saturating_sub(bars.next_base()),
        };
        VirtioPciWiring {
            root: PciRoot::new(),
            bars,
            bar_range,
            ecam_base,
            gsis,
            memory,
            sink,
            packed_rings: true,
            intx: Vec::new(),
        }
    }

    /// Whether the transports attached from now on offer packed virtqueues.
    pub fn packed_rings(mut self, offer: bool) -> Self {
        self.packed_rings = offer;
        self
    }

    /// The guest memory the transports use.
    pub fn memory(&self) -> &S {
        &self.memory
    }

    /// Puts `device` on the root bus behind a virtio-pci transport, with an ioeventfd for
    /// each queue in `notify`; see the [module documentation](self). Undoes what it did if a
    /// step fails.
    pub fn attach<D>(
        &mut self,
        vm: &dyn Vm,
        device: D,
        notify: &[u16],
    ) -> Result<WiredPciDevice<S, D>, PciWiringError>
    where
        D: VirtioDevice<S::M> + Send + 'static,
    {
        let count = device.queue_max_sizes().len();
        for (i, &queue) in notify.iter().enumerate() {
            if usize::from(queue) >= count || notify[..i].contains(&queue) {
                return Err(PciWiringError::BadQueue { queue, count });
            }
        }
        let slot = self
            .root
            .free_slot()
            .ok_or(PciWiringError::Slot(RootError::BusFull))?;
        let (mut bars, mut gsis) = (self.bars.clone(), self.gsis.clone());
        let bar = bars
            .allocate_aligned(BAR_SIZE)
            .map_err(PciWiringError::Resources)?;
        let gsi = gsis.allocate().map_err(PciWiringError::Resources)?;
        let line = u8::try_from(gsi)
            .ok()
            .filter(|&l| l != 0xff)
            .ok_or(PciWiringError::Line { gsi })?;
        let eventfd = |source| PciWiringError::EventFd { slot, source };
        let intx = EventFd::new(EFD_NONBLOCK).map_err(eventfd)?;
        let transport = PciTransport::new(device, self.memory.clone(), self.sink.clone(), intx)
            .map_err(|source| PciWiringError::Transport { slot, source })?
            .with_packed_rings(self.packed_rings);
        transport
            .set_bar_address(bar.base)
            .map_err(|source| PciWiringError::Bar {
                slot,
                base: bar.base,
                source,
            })?;
        transport.set_intx_line(line);
        let transport = Arc::new(transport);
        let mut notifiers = Vec::with_capacity(notify.len());
        for &queue in notify {
            notifiers.push(QueueNotifier {
                queue,
                event: EventFd::new(EFD_NONBLOCK).map_err(eventfd)?,
            });
        }

        vm.register_irqfd(transport.intx_evt(), gsi, None)
            .map_err(|source| PciWiringError::Irqfd { slot, gsi, source })?;
        let mut registered: Vec<(&QueueNotifier, u64)> = Vec::new();
        let mut failure = None;
        for notifier in &notifiers {
            let addr = bar.base + PciTransport::<S, D>::notify_offset(notifier.queue);
            match vm.register_ioeventfd(&notifier.event, IoEventAddress::Mmio(addr), DataMatch::Any)
            {
                Ok(()) => registered.push((notifier, addr)),
                Err(source) => {
                    failure = Some(PciWiringError::Ioeventfd {
                        addr,
                        queue: notifier.queue,
                        source,
                    });
                    break;
                }
            }
        }
        if failure.is_none() {
            if let Err(e) = self.root.add_device(transport.clone()) {
                failure = Some(PciWiringError::Slot(e));
            }
        }
        if let Some(err) = failure {
            // Best effort: see VirtioMmioWiring::attach.
            for (notifier, addr) in registered {
                let _ = vm.unregister_ioeventfd(
                    &notifier.event,
                    IoEventAddress::Mmio(addr),
                    DataMatch::Any,
                );
            }
            let _ = vm.unregister_irqfd(transport.intx_evt(), gsi);
            return Err(err);
        }
        self.bars = bars;
        self.gsis = gsis;
        self.intx.push((slot, gsi));
        Ok(WiredPciDevice {
            transport,
            slot,
            bar,
            gsi,
            notifiers,
        })
    }

    /// Puts the root bus on `bus`: ports `0xCF8`–`0xCFF`, the ECAM window, and the BAR window
    /// (the whole range the BARs came from).
    pub fn finish(self, bus: &mut Bus) -> Result<PciPlatform, PciWiringError> {
        let root = Arc::new(self.root);
        bus.register_pio(PioAddress(CONFIG_ADDRESS_PORT), CONFIG_PORTS, root.clone())
            .map_err(|source| PciWiringError::Bus {
                what: "configuration ports",
                base: u64::from(CONFIG_ADDRESS_PORT),
                source,
            })?;
        bus.register_mmio(
            MmioAddress(self.ecam_base),
            ECAM_BUS_SIZE,
            Arc::new(Ecam(root.clone())),
        )
        .map_err(|source| PciWiringError::Bus {
            what: "ECAM window",
            base: self.ecam_base,
            source,
        })?;
        bus.register_mmio(
            MmioAddress(self.bar_range.base),
            self.bar_range.size,
            Arc::new(BarWindow(root.clone())),
        )
        .map_err(|source| PciWiringError::Bus {
            what: "BAR window",
            base: self.bar_range.base,
            source,
        })?;
        Ok(PciPlatform {
            root,
            ecam: MmioWindow {
                base: self.ecam_base,
                size: ECAM_BUS_SIZE,
            },
            bars: self.bar_range,
            intx: self.intx,
        })
    }
}
