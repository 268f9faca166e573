//! Putting devices on a vmkit VM: the plumbing every VMM otherwise writes
//! itself.
//!
//! - [`resources`]: [`MmioAllocator`] (page-aligned MMIO windows from a
//!   range, within its limit) and [`GsiAllocator`] (interrupt numbers from
//!   a range, around reserved ones). Plain data, no hypervisor.
//! - [`virtio_mmio`]: [`VirtioMmioWiring::attach`] puts a virtio device on a
//!   VM ([`vmkit::Vm`]) and a bus ([`vmkit_bus::Bus`]) behind a
//!   [`MmioTransport`](vmkit_virtio::mmio::MmioTransport): window, GSI,
//!   irqfd, queue-notification ioeventfds, bus registration, undone on
//!   failure.
//! - [`virtio_pci`]: [`VirtioPciWiring`] does the same behind virtio-pci
//!   transports on a PCI root bus (vmkit-pci): a slot, a size-aligned BAR,
//!   an INTx GSI (irqfd), MSI-X through `Vm::signal_msi` ([`VmMsi`]),
//!   notification ioeventfds; then the root's ports, ECAM and BAR windows
//!   on the bus.
//! - [`split_irqchip`]: [`attach_ioapic`] puts vmkit-devices' userspace IOAPIC on a VM with
//!   a split irqchip: its registers on the bus, its EOIs from the bus, its interrupts and
//!   GSI routes through the `Vm`, so devices' irqfds on legacy GSIs keep working.
//! - [`worker`]: [`QueueWorker`], a thread that serves queues of a
//!   transport on their notification eventfds (from `attach`), so the
//!   guest's notifications never exit to a vCPU thread.
//!
//! # Where this sits, and why a crate of its own
//!
//! The wiring needs the `Vm` trait (vmkit), the bus (vmkit-bus) and the
//! transport (vmkit-virtio), so it lives above all three: putting it in
//! vmkit-virtio would make the device crate know the VM and the bus, which
//! the layering puts above it, and vmkit itself knows no devices. It
//! depends on vmkit without its backends (`default-features = false`), so
//! like the device crates it compiles no hypervisor (CI's
//! `ci/check-layers.sh` checks it); a VMM hands it whatever `&dyn Vm` it
//! opened. The allocators are hypervisor-neutral data and could move into
//! vmkit later; they sit here beside their one user for now.
//!
//! What the guest is told about the devices (ACPI tables, a kernel command
//! line) is the boot layer's business: [`virtio_mmio::WiredDevice`] gives
//! the window and GSI, and the caller fills in, e.g.,
//! `vmkit_boot::linux::VirtioMmioDevice` (this crate does not depend on the
//! guest-OS layer).
//!
//! # Example
//!
//! ```toml
//! [dependencies]
//! vmkit = "0.1"
//! vmkit-bus = "0.1"
//! vmkit-machine = "0.1"
//! vmkit-virtio = "0.1"
//! ```
//!
//! See [`virtio_mmio`] for a device on a KVM VM, and [`resources`] for the
//! allocators alone:
//!
//! ```
//! use vmkit_machine::{GsiAllocator, MmioAllocator};
//!
//! let mut mmio = MmioAllocator::new(0xd000_0000, 0xfec0_0000)?;
//! let mut gsis = GsiAllocator::new(5, 23)?;
//! let (window, gsi) = (mmio.allocate(0x1000)?, gsis.allocate()?);
//! assert_eq!((window.base, gsi), (0xd000_0000, 5));
//! # Ok::<(), vmkit_machine::ResourceError>(())
//! ```

pub mod resources;
pub mod split_irqchip;
pub mod virtio_mmio;
pub mod virtio_pci;
pub mod worker;

pub use resources::{GsiAllocator, MmioAllocator, MmioWindow, ResourceError};
pub use split_irqchip::{attach_ioapic, VmIoApicSink};
pub use virtio_mmio::{QueueNotifier, VirtioMmioWiring, WiredDevice, WiringError};
pub use virtio_pci::{PciPlatform, PciWiringError, VirtioPciWiring, VmMsi, WiredPciDevice};
pub use worker::{QueueStats, QueueWorker, WorkerError, WorkerOptions, WorkerStats};
