//! # vmkit-devices
//!
//! The legacy PC devices a minimal VM needs, ready for a port bus such as crate `vmkit-bus`'s
//! `Bus` (`crates/vmkit-bus` in vmkit's repository): each implements vm-device's
//! [`DevicePio`](vm_device::DevicePio).
//!
//! - [`Serial`]: a 16550A UART on vm-superio's model; output to any `Write`, input from the
//!   host with [`Serial::enqueue_input`], interrupt through an
//!   [`EventFd`](vmm_sys_util::eventfd::EventFd) to register as an irqfd (GSI 4 for COM1 at
//!   `0x3f8`).
//! - [`I8042`]: the keyboard controller on vm-superio's model, for its CPU-reset command
//!   (`0xfe` to port `0x64`), which raises a flag and signals an eventfd.
//! - [`Cmos`]: the CMOS memory and its real-time clock at `0x70`/`0x71`, reading the host's
//!   UTC time (a Linux guest's `rtc_cmos` probe stalls for seconds without it).
//! - [`PmBlock`]: the ACPI power-management block (PM1a event and control registers, the
//!   3.579545 MHz ACPI PM timer, a reset register) at `0x600`, for a guest told about it in
//!   a (non-hardware-reduced) FADT: its sleep requests ([`SleepState::S5`], soft off, and
//!   [`SleepState::S3`]) and resets reach the VMM as flags and eventfds, its SCI as an
//!   eventfd or a level.
//! - [`IoApic`]: a userspace IOAPIC for a VM with a split irqchip (local APICs in the
//!   hypervisor): the 24-pin redirection table behind its MMIO registers at `0xfec00000`,
//!   level-triggered pins' remote IRR and EOIs, and its interrupts sent as MSIs through an
//!   [`IoApicSink`], which also keeps the hypervisor's GSI routes in step with the table
//!   so that irqfds on the legacy GSIs keep working (see the [`ioapic`] module).
//! - [`DebugExit`]: a port (`0x501`) through which a test guest ends itself with an exit
//!   code.
//!
//! Each device implements [`Persist`], vmkit's one convention for snapshots: `save_state`
//! gives a serde-serializable state ([`SerialState`], [`I8042State`], [`CmosState`],
//! [`DebugExitState`], [`PmState`], [`IoApicState`]), and `restore_state` restores one into a fresh device, built as for a
//! first boot (with its output, its eventfds, its clock), treating the state as untrusted
//! input ([`RestoreError`]). The crate depends on no hypervisor backend.
//!
//! Every value a guest gives these devices is checked: accesses of any width and offset get a
//! documented answer (each device's documentation says which), never a panic. The devices
//! use interior mutability, so one `Arc` of each serves every vCPU thread.
//!
//! ## Example
//!
//! A serial port, the reset controller and the debug-exit port on a bus, driven by exits as
//! a guest would cause them:
//!
//! ```
//! use std::sync::Arc;
//!
//! use vm_device::bus::PioAddress;
//! use vmkit::VcpuExit;
//! use vmkit_bus::Bus;
//! use vmkit_devices::{DebugExit, Serial, COM1, I8042, SERIAL_PORTS};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let serial = Arc::new(Serial::new(Vec::new())?);
//! let i8042 = Arc::new(I8042::new()?);
//! let debug_exit = Arc::new(DebugExit::new()?);
//!
//! let mut bus = Bus::new();
//! bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial.clone())?;
//! bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())?;
//! bus.register_pio(PioAddress(DebugExit::PORT), DebugExit::PORTS, debug_exit.clone())?;
//!
//! // The guest prints "hi" ...
//! for byte in *b"hi" {
//!     bus.handle_exit(&mut VcpuExit::IoOut { port: 0x3f8, size: 1, data: &[byte] });
//! }
//! assert_eq!(serial.with_output(|out| out.clone()), b"hi");
//!
//! // ... reports status 3 ...
//! bus.handle_exit(&mut VcpuExit::IoOut { port: 0x501, size: 4, data: &3u32.to_le_bytes() });
//! assert_eq!(debug_exit.exit_code(), Some(3));
//! assert_eq!(debug_exit.exit_evt().read()?, 1);
//!
//! // ... and resets the machine.
//! bus.handle_exit(&mut VcpuExit::IoOut { port: 0x64, size: 1, data: &[0xfe] });
//! assert!(i8042.reset_requested());
//! assert_eq!(i8042.reset_evt().read()?, 1);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod acpi_pm;
mod cmos;
mod debug_exit;
mod error;
mod i8042;
pub mod ioapic;
mod registers;
mod serial;

pub use acpi_pm::{PmBlock, PmState, SleepState};
pub use cmos::{Cmos, CmosState};
pub use debug_exit::{DebugExit, DebugExitState};
pub use error::{DeviceError, RestoreError};
pub use i8042::{I8042State, I8042};
pub use ioapic::{IoApic, IoApicError, IoApicMsi, IoApicSink, IoApicState, IOAPIC_PINS};
pub use serial::{Serial, SerialState, COM1, COM1_GSI, SERIAL_FIFO_SIZE, SERIAL_PORTS};
pub use vmkit_snapshot::Persist;
