//! The i8042 keyboard controller, present for its CPU-reset command.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;
use vm_superio::{I8042Device, Trigger};
use vmkit_snapshot::Persist;
use vmm_sys_util::eventfd::EventFd;

use crate::error::eventfd_pair;
use crate::registers::register;
use crate::{DeviceError, RestoreError};

/// What the reset command does: raise the flag, then signal the eventfd.
struct ResetTrigger {
    evt: EventFd,
    requested: Arc<AtomicBool>,
    signal_failures: Arc<AtomicU64>,
}

impl Trigger for ResetTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.requested.store(true, Ordering::SeqCst);
        // A non-blocking eventfd write fails only when its counter is at the maximum, i.e.
        // a reset is already signalled; the flag is set either way.
        if self.evt.write(1).is_err() {
            self.signal_failures.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The saved state of an [`I8042`] ([`Persist::State`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    /// Whether the guest's reset command was not yet taken by the VMM
    /// ([`I8042::take_reset_request`]).
    pub reset_requested: bool,
}

/// The PC's i8042 keyboard controller as vm-superio models it: enough for a guest to reset
/// (or, for a VMM without ACPI, power off) the machine with the CPU-reset command, `0xfe`
/// written to the command port `0x64`.
///
/// Register it on a port bus at [`I8042::BASE`] (`0x60`) with [`I8042::PORTS`] (5) ports,
/// i.e. `0x60..=0x64`, so that both the data port `0x60` and the command/status port `0x64`
/// reach it; it implements [`DevicePio`]. Ports `0x61..=0x63` are then claimed too (on a PC
/// they belong to other devices; vm-superio's model, like this one, does nothing there).
///
/// The reset command sets a flag ([`I8042::reset_requested`]) and signals an eventfd
/// ([`I8042::reset_evt`]); the VMM polls either one, typically right after the port exit,
/// and stops or resets the VM. Every read returns what vm-superio's model answers (`0x00`:
/// no key, output buffer empty, input buffer ready for a command). Any other write is
/// ignored.
///
/// A multi-byte access reaches consecutive ports, one byte each; bytes past `0x64` read as
/// `0xff` and their writes are dropped.
pub struct I8042 {
    device: Mutex<I8042Device<ResetTrigger>>,
    reset_evt: EventFd,
    requested: Arc<AtomicBool>,
    signal_failures: Arc<AtomicU64>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("reset_evt", &self.reset_evt)
            .field("reset_requested", &self.reset_requested())
            .finish_non_exhaustive()
    }
}

impl I8042 {
    /// The data port, and the base of the device's range.
    pub const BASE: u16 = 0x60;
    /// How many ports the device's range spans: `0x60..=0x64`.
    pub const PORTS: u16 = 5;
    /// The command/status port.
    pub const COMMAND_PORT: u16 = 0x64;
    /// The command that resets the CPU.
    pub const RESET_COMMAND: u8 = 0xfe;

    /// A controller with no reset requested and a new non-blocking reset eventfd.
    pub fn new() -> Result<Self, DeviceError> {
        let (evt, reset_evt) = eventfd_pair("i8042 controller", "reset")?;
        let requested = Arc::new(AtomicBool::new(false));
        let signal_failures = Arc::new(AtomicU64::new(0));
        let trigger = ResetTrigger {
            evt,
            requested: Arc::clone(&requested),
            signal_failures: Arc::clone(&signal_failures),
        };
        Ok(I8042 {
            device: Mutex::new(I8042Device::new(trigger)),
            reset_evt,
            requested,
            signal_failures,
        })
    }

    /// The eventfd signalled by each reset command.
    pub fn reset_evt(&self) -> &EventFd {
        &self.reset_evt
    }

    /// Whether the guest has issued the reset command (since the last
    /// [`I8042::take_reset_request`]).
    pub fn reset_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Returns whether a reset was requested, and clears the request.
    pub fn take_reset_request(&self) -> bool {
        self.requested.swap(false, Ordering::SeqCst)
    }

    /// How many reset signals found the eventfd counter already at its maximum (a reset was
    /// pending anyway).
    pub fn signal_failures(&self) -> u64 {
        self.signal_failures.load(Ordering::Relaxed)
    }

    /// Reads `data.len()` ports from `offset` (from `0x60`) on.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        let mut device = self.device.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match register(offset, i, REGISTERS) {
                Some(register) => device.read(register),
                None => 0xff,
            };
        }
    }

    /// Writes `data.len()` ports from `offset` (from `0x60`) on.
    pub fn write(&self, offset: u16, data: &[u8]) {
        let mut device = self.device.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, &byte) in data.iter().enumerate() {
            if let Some(register) = register(offset, i, REGISTERS) {
                // `ResetTrigger` never fails.
                let Ok(()) = device.write(register, byte);
            }
        }
    }
}

/// Whether a reset request is pending: vm-superio's model has no other state.
impl Persist for I8042 {
    const KIND: &'static str = "i8042";
    /// Version 1 was the same state in a section that did not name its kind.
    const VERSION: u16 = 2;
    type State = I8042State;
    type Error = RestoreError;

    fn save_state(&self) -> I8042State {
        I8042State {
            reset_requested: self.reset_requested(),
        }
    }

    /// A pending reset request stays pending: the flag is set and the reset eventfd
    /// signalled, as when the guest issued the command. Every state value is valid: this
    /// never fails.
    fn restore_state(&mut self, state: &I8042State) -> Result<(), RestoreError> {
        self.requested
            .store(state.reset_requested, Ordering::SeqCst);
        if state.reset_requested && self.reset_evt.write(1).is_err() {
            self.signal_failures.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// How many ports the device answers, as a register count.
const REGISTERS: u8 = I8042::PORTS as u8;

impl DevicePio for I8042 {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.read(offset, data);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.write(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    const COMMAND: u16 = I8042::COMMAND_PORT - I8042::BASE;

    fn signals(evt: &EventFd) -> u64 {
        match evt.read() {
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(err) => panic!("eventfd read failed: {err}"),
        }
    }

    #[test]
    fn the_reset_command_sets_the_flag_and_signals_the_eventfd() {
        let i8042 = I8042::new().unwrap();
        assert!(!i8042.reset_requested());
        i8042.write(COMMAND, &[I8042::RESET_COMMAND]);
        assert!(i8042.reset_requested());
        assert_eq!(signals(i8042.reset_evt()), 1);
        assert!(i8042.take_reset_request());
        assert!(!i8042.reset_requested());
        assert!(!i8042.take_reset_request());
        assert_eq!(i8042.signal_failures(), 0);
    }

    fn fresh_with(state: &I8042State) -> I8042 {
        let mut i8042 = I8042::new().unwrap();
        i8042.restore_state(state).unwrap();
        i8042
    }

    #[test]
    fn a_pending_reset_survives_a_snapshot() {
        let i8042 = I8042::new().unwrap();
        assert_eq!(i8042.save_state(), I8042State::default());
        let restored = fresh_with(&i8042.save_state());
        assert!(!restored.reset_requested());
        assert_eq!(signals(restored.reset_evt()), 0);

        i8042.write(COMMAND, &[I8042::RESET_COMMAND]);
        let state = i8042.save_state();
        assert!(state.reset_requested);
        let bytes = postcard::to_stdvec(&state).unwrap();
        let decoded: I8042State = postcard::from_bytes(&bytes).unwrap();
        let restored = fresh_with(&decoded);
        assert!(restored.reset_requested());
        assert_eq!(signals(restored.reset_evt()), 1);
        assert!(restored.take_reset_request());
        // The restored controller works like the original.
        restored.write(COMMAND, &[I8042::RESET_COMMAND]);
        assert!(restored.reset_requested());
    }

    #[test]
    fn other_writes_do_not_reset() {
        let i8042 = I8042::new().unwrap();
        i8042.write(0, &[I8042::RESET_COMMAND]); // to the data port
        i8042.write(COMMAND, &[0xaa]); // a self-test command
        i8042.write(COMMAND + 1, &[I8042::RESET_COMMAND]); // past the device
        i8042.write(u16::MAX, &[I8042::RESET_COMMAND; 4]);
        assert!(!i8042.reset_requested());
        assert_eq!(signals(i8042.reset_evt()), 0);
    }

    #[test]
    fn a_wide_write_reaches_the_command_port_byte_by_byte() {
        let i8042 = I8042::new().unwrap();
        // `out 0x63, ax` with ax = 0xfe00: 0x00 to port 0x63, 0xfe to port 0x64.
        i8042.write(3, &[0x00, I8042::RESET_COMMAND]);
        assert!(i8042.reset_requested());
    }

    #[test]
    fn reads_return_what_vm_superio_answers_and_all_ones_past_the_device() {
        let i8042 = I8042::new().unwrap();
        let mut data = [0x55u8; 5];
        i8042.read(0, &mut data);
        assert_eq!(data, [0; 5]);
        let mut data = [0x55u8; 4];
        i8042.read(3, &mut data);
        assert_eq!(data, [0, 0, 0xff, 0xff]);
        i8042.read(u16::MAX, &mut data);
        assert_eq!(data, [0xff; 4]);
    }
}
