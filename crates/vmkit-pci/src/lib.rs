//! A PCI platform for vmkit VMMs, with no hypervisor backend: the pieces a
//! guest that looks for PCI devices expects, written for a hostile guest.
//!
//! - [`config`]: [`ConfigSpace`], a type-0 configuration space whose write
//!   masks keep read-only bits read-only and implement the BAR sizing
//!   protocol; BARs ([`BarKind`]) and capability lists.
//! - [`msix`]: [`Msix`], the MSI-X table and pending bits, sending messages
//!   through a VMM-supplied [`MsiSink`].
//! - [`root`]: [`PciRoot`], the root bus behind a host bridge, reached
//!   through ports `0xCF8`/`0xCFC` ([`vm_device::DevicePio`]) and an ECAM
//!   window ([`Ecam`]), with BAR accesses dispatched through [`BarWindow`].
//!
//! Devices implement [`PciDevice`]; vmkit-virtio's `pci` module puts the
//! virtio devices behind the virtio-pci transport, and vmkit-machine's
//! `virtio_pci` wiring allocates BARs and interrupts. What the guest is
//! told about the bus (MCFG, the host bridge in the DSDT) is the boot
//! layer's business.
//!
//! ```
//! use std::sync::Arc;
//! use vmkit_pci::{BarKind, ConfigOnly, ConfigSpace, PciIds, PciRoot};
//!
//! let mut space = ConfigSpace::new(PciIds {
//!     vendor: 0x1af4, device: 0x1042, revision: 1, class: 0x01_80_00,
//!     subsystem_vendor: 0x1af4, subsystem: 0x40,
//! });
//! space.add_bar(0, 0x4000, BarKind::Memory32)?;
//! space.set_bar_address(0, 0xe000_0000)?;
//! let mut root = PciRoot::new();
//! let slot = root.add_device(Arc::new(ConfigOnly::new(space)))?;
//! // The guest reads the vendor and device IDs of 00:01.0 through ECAM.
//! let mut id = [0u8; 4];
//! root.ecam_read(u64::from(slot) << 15, &mut id);
//! assert_eq!(u32::from_le_bytes(id), 0x1042_1af4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod config;
pub mod msix;
pub mod root;

pub use config::{BarKind, BarRegion, ConfigError, ConfigSpace, PciIds};
pub use msix::{MsiMessage, MsiSink, Msix, MsixError};
pub use root::{BarWindow, ConfigOnly, Ecam, PciDevice, PciRoot, RootError};
