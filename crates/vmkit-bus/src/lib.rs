//! # vmkit-bus
//!
//! Port I/O and MMIO dispatch for VMMs built on `vmkit`: devices registered by address
//! range on a [`Bus`], and [`Bus::handle_exit`], which routes a [`vmkit::VcpuExit`] to the
//! device that owns the accessed address and answers reads. With the `vmkit` feature (on by
//! default) a `Bus` is also a [`vmkit::runner::ExitHandler`], so a
//! [`VmRunner`](vmkit::runner::VmRunner) can dispatch every vCPU's exits to it.
//!
//! Devices implement vm-device's shared-reference traits [`vm_device::DevicePio`] and
//! [`vm_device::DeviceMmio`] (`&self`, so a device keeps its state behind interior mutability
//! and one bus serves every vCPU thread), and ranges are given with vm-device's
//! [`PioAddress`](vm_device::bus::PioAddress) / [`MmioAddress`](vm_device::bus::MmioAddress)
//! and handed back as [`PioRange`](vm_device::bus::PioRange) /
//! [`MmioRange`](vm_device::bus::MmioRange); any device written for vm-device plugs in.
//!
//! The range lookup itself is this crate's, not vm-device's `IoManager`: `IoManager` reports
//! an overlap without saying which registered range is in the way, folds "no device" and
//! "an access running past the end of a device" into one error, and cannot tell a malformed
//! exit from an unmapped one. The bus here keeps the same ordered-map lookup (O(log n) per
//! access) and reports all of those distinctly.
//!
//! ## Dispatch rules
//!
//! Everything in an exit is guest-controlled; the bus checks it all and never panics.
//!
//! - **Port exits** (`IoIn`/`IoOut`) carry `data.len() / size` accesses of `size` bytes to
//!   the same port (more than one for `rep ins`/`rep outs`). The bus passes each access to
//!   the device separately, as a `size`-byte slice, at offset `port - base`.
//! - **MMIO exits** (`MmioRead`/`MmioWrite`) are one access of `data.len()` bytes (1 to
//!   [`MAX_MMIO_WIDTH`]), passed whole to the device at offset `addr - base`.
//! - **Reads** are pre-filled with all-ones before the device sees them, so bytes a device
//!   leaves alone read as `0xff`.
//! - **Unmapped accesses**: an access is delivered only if *every* byte it covers lies in one
//!   device's range. One that touches no device, or that is only partly inside a range (it
//!   starts inside and runs past the end, starts in a hole and runs into a range, or would run
//!   past port `0xffff` or address `u64::MAX`), is *unmapped*: a read is answered with
//!   all-ones, a write is dropped, no device sees any of it, and [`Bus::unmapped`] counts it
//!   (per space and direction, one per access). The outcome names the range a partial access
//!   ran into. This is what an ISA bus does with a decode that no single card claims, and it
//!   keeps a device from ever seeing an offset or length outside its own range.
//! - **Malformed exits**: a port width other than 1, 2 or 4, empty data, port data that is
//!   not a whole number of accesses, or an MMIO access wider than [`MAX_MMIO_WIDTH`]. No
//!   device sees it, a read is answered with all-ones, and [`Bus::malformed_exits`] counts it.
//! - **IOAPIC EOIs** (`IoapicEoi`, with a split irqchip) go to the listener set with
//!   [`Bus::set_eoi_listener`] ([`ExitOutcome::Eoi`]); without one they are other exits.
//! - **Other exits** (`Hlt`, `Shutdown`…) are left untouched and reported as
//!   [`ExitOutcome::NotBusExit`], for the VMM to handle.
//!
//! Registration rejects empty ranges, ranges that run past the end of their space, and
//! overlaps (the error names the new range and the registered one); ranges that merely touch
//! are fine. Deregistration takes the exact base address and hands the device back.
//!
//! ## Example
//!
//! ```
//! use std::sync::atomic::{AtomicU8, Ordering};
//! use std::sync::Arc;
//!
//! use vm_device::bus::{PioAddress, PioAddressOffset};
//! use vm_device::DevicePio;
//! use vmkit::VcpuExit;
//! use vmkit_bus::{Bus, ExitOutcome, Space, Span, Access};
//!
//! /// A one-byte scratch register.
//! #[derive(Default)]
//! struct Scratch(AtomicU8);
//!
//! impl DevicePio for Scratch {
//!     fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
//!         data[0] = self.0.load(Ordering::Relaxed);
//!     }
//!     fn pio_write(&self, _base: PioAddress, _offset: PioAddressOffset, data: &[u8]) {
//!         self.0.store(data[0], Ordering::Relaxed);
//!     }
//! }
//!
//! let mut bus = Bus::new();
//! bus.register_pio(PioAddress(0x80), 1, Arc::new(Scratch::default()))?;
//!
//! // What `vcpu.run()` returns for `out 0x80, al` with al = 0x42:
//! let mut exit = VcpuExit::IoOut { port: 0x80, size: 1, data: &[0x42] };
//! assert!(matches!(bus.handle_exit(&mut exit), ExitOutcome::Handled { offset: 0, .. }));
//!
//! let mut answer = [0u8; 1];
//! let mut exit = VcpuExit::IoIn { port: 0x80, size: 1, data: &mut answer };
//! bus.handle_exit(&mut exit);
//! assert_eq!(answer, [0x42]);
//!
//! // Nothing at port 0x81: the read gets all-ones and is counted.
//! let mut answer = [0u8; 1];
//! let outcome = bus.handle_exit(&mut VcpuExit::IoIn { port: 0x81, size: 1, data: &mut answer });
//! assert_eq!(answer, [0xff]);
//! assert!(matches!(outcome, ExitOutcome::Unmapped { space: Space::Pio, access: Access::Read, .. }));
//! assert_eq!(bus.unmapped().pio_reads, 1);
//!
//! // Overlapping registrations are refused, naming both ranges.
//! let err = bus.register_pio(PioAddress(0x7f), 2, Arc::new(Scratch::default())).unwrap_err();
//! assert_eq!(err.to_string(), "port range 0x7f..=0x80 overlaps the registered port range 0x80..=0x80");
//! # Ok::<(), vmkit_bus::BusError>(())
//! ```

#![forbid(unsafe_code)]

mod bus;
mod error;
mod map;
mod types;

pub use bus::{
    Bus, EoiListener, SharedEoiListener, SharedMmioDevice, SharedPioDevice, MAX_MMIO_WIDTH,
};
pub use error::BusError;
pub use types::{Access, ExitOutcome, Malformed, Space, Span, UnmappedCounts};

#[cfg(test)]
#[cfg(feature = "vmkit")]
mod tests;
