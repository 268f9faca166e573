//! A port through which a test guest ends itself with a status.

use std::sync::atomic::{AtomicU64, Ordering};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;
use vmkit_snapshot::Persist;
use vmm_sys_util::eventfd::EventFd;

use crate::error::eventfd;
use crate::{DeviceError, RestoreError};

/// Marks a stored exit code as present (bit 32, above any `u32` code).
const PRESENT: u64 = 1 << 32;

/// The saved state of a [`DebugExit`] port ([`Persist::State`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DebugExitState {
    /// The exit code the guest wrote and the VMM has not taken, if any.
    pub exit_code: Option<u32>,
    /// How many writes were ignored for their offset or width.
    pub ignored_writes: u64,
}

/// A debug-exit port, in the spirit of QEMU's `isa-debug-exit`: a test guest writes a status
/// to it, and the VMM ends the run with that status.
///
/// Register it on a port bus at [`DebugExit::PORT`] (`0x501`) with [`DebugExit::PORTS`] (4)
/// ports, so that 1-, 2- and 4-byte `out`s to `0x501` all fall inside its range; it
/// implements [`DevicePio`].
///
/// A write of 1, 2 or 4 bytes at offset 0 records its little-endian value, zero-extended, as
/// the exit code (the code is the value written, with no transformation; a later write
/// replaces it) and signals [`DebugExit::exit_evt`]. Any other write (another offset or
/// width) is ignored and counted ([`DebugExit::ignored_writes`]). Reads return all-ones.
#[derive(Debug)]
pub struct DebugExit {
    /// `PRESENT | code`, or 0 when no code was written.
    code: AtomicU64,
    evt: EventFd,
    ignored: AtomicU64,
}

impl DebugExit {
    /// The conventional port (QEMU's `isa-debug-exit` default).
    pub const PORT: u16 = 0x501;
    /// How many ports the device's range spans: room for a 4-byte write at its base.
    pub const PORTS: u16 = 4;

    /// A port with no exit code yet and a new non-blocking exit eventfd.
    pub fn new() -> Result<Self, DeviceError> {
        let evt = eventfd("debug-exit port", "exit")?;
        Ok(DebugExit {
            code: AtomicU64::new(0),
            evt,
            ignored: AtomicU64::new(0),
        })
    }

    /// The eventfd signalled by each exit-code write.
    pub fn exit_evt(&self) -> &EventFd {
        &self.evt
    }

    /// The last exit code the guest wrote, if any.
    pub fn exit_code(&self) -> Option<u32> {
        decode(self.code.load(Ordering::SeqCst))
    }

    /// Returns the last exit code the guest wrote, if any, and forgets it.
    pub fn take_exit_code(&self) -> Option<u32> {
        decode(self.code.swap(0, Ordering::SeqCst))
    }

    /// How many writes were ignored for their offset or width.
    pub fn ignored_writes(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }

    /// Handles a guest write of `data` at `offset` (see the type's documentation).
    pub fn write(&self, offset: u16, data: &[u8]) {
        let code = match (offset, data) {
            (0, &[a]) => u32::from(a),
            (0, &[a, b]) => u32::from(u16::from_le_bytes([a, b])),
            (0, &[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
            _ => {
                self.ignored.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        self.code.store(PRESENT | u64::from(code), Ordering::SeqCst);
        // Fails only when the counter is at its maximum: an exit is signalled already.
        let _ = self.evt.write(1);
    }

    /// Handles a guest read: all-ones.
    pub fn read(&self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
}

/// The exit code not yet taken, and the counter of ignored writes.
impl Persist for DebugExit {
    const KIND: &'static str = "debug-exit";
    /// Version 1 was the same state in a section that did not name its kind.
    const VERSION: u16 = 2;
    type State = DebugExitState;
    type Error = RestoreError;

    fn save_state(&self) -> DebugExitState {
        DebugExitState {
            exit_code: self.exit_code(),
            ignored_writes: self.ignored_writes(),
        }
    }

    /// A saved exit code stays pending: it is recorded and the exit eventfd signalled, as
    /// when the guest wrote it. Every state value is valid: this never fails.
    fn restore_state(&mut self, state: &DebugExitState) -> Result<(), RestoreError> {
        self.ignored.store(state.ignored_writes, Ordering::Relaxed);
        let stored = state.exit_code.map_or(0, |code| PRESENT | u64::from(code));
        self.code.store(stored, Ordering::SeqCst);
        if stored != 0 {
            // Fails only when the counter is at its maximum: an exit is signalled already.
            let _ = self.evt.write(1);
        }
        Ok(())
    }
}

fn decode(stored: u64) -> Option<u32> {
    (stored & PRESENT != 0).then_some((stored & u64::from(u32::MAX)) as u32)
}

impl DevicePio for DebugExit {
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

    fn signals(evt: &EventFd) -> u64 {
        match evt.read() {
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(err) => panic!("eventfd read failed: {err}"),
        }
    }

    #[test]
    fn writes_of_one_two_and_four_bytes_record_the_code() {
        let port = DebugExit::new().unwrap();
        assert_eq!(port.exit_code(), None);
        assert_eq!(signals(port.exit_evt()), 0);

        port.write(0, &[0x2a]);
        assert_eq!(port.exit_code(), Some(0x2a));
        assert_eq!(signals(port.exit_evt()), 1);

        port.write(0, &0xbeefu16.to_le_bytes());
        assert_eq!(port.exit_code(), Some(0xbeef));

        port.write(0, &0xdead_beefu32.to_le_bytes());
        assert_eq!(port.exit_code(), Some(0xdead_beef));
        assert_eq!(signals(port.exit_evt()), 2);

        // Zero and all-ones are codes like any other.
        port.write(0, &[0]);
        assert_eq!(port.take_exit_code(), Some(0));
        assert_eq!(port.exit_code(), None);
        port.write(0, &u32::MAX.to_le_bytes());
        assert_eq!(port.take_exit_code(), Some(u32::MAX));
        assert_eq!(port.ignored_writes(), 0);
    }

    #[test]
    fn other_offsets_and_widths_are_ignored_and_counted() {
        let port = DebugExit::new().unwrap();
        port.write(1, &[1]);
        port.write(3, &[1, 2, 3, 4]);
        port.write(0, &[1, 2, 3]);
        port.write(0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        port.write(0, &[]);
        port.write(u16::MAX, &[1]);
        assert_eq!(port.exit_code(), None);
        assert_eq!(signals(port.exit_evt()), 0);
        assert_eq!(port.ignored_writes(), 6);
    }

    fn fresh_with(state: &DebugExitState) -> DebugExit {
        let mut port = DebugExit::new().unwrap();
        port.restore_state(state).unwrap();
        port
    }

    #[test]
    fn a_pending_exit_code_survives_a_snapshot() {
        let port = DebugExit::new().unwrap();
        let restored = fresh_with(&port.save_state());
        assert_eq!(restored.exit_code(), None);
        assert_eq!(signals(restored.exit_evt()), 0);

        port.write(0, &[7]);
        port.write(1, &[7]);
        let snapshot = port.save_state();
        assert_eq!(
            snapshot,
            DebugExitState {
                exit_code: Some(7),
                ignored_writes: 1
            }
        );
        let bytes = postcard::to_stdvec(&snapshot).unwrap();
        let restored = fresh_with(&postcard::from_bytes(&bytes).unwrap());
        assert_eq!(restored.exit_code(), Some(7));
        assert_eq!(restored.ignored_writes(), 1);
        assert_eq!(signals(restored.exit_evt()), 1);
        // Zero and u32::MAX are codes like any other.
        for code in [0, u32::MAX] {
            let snapshot = DebugExitState {
                exit_code: Some(code),
                ignored_writes: u64::MAX,
            };
            assert_eq!(fresh_with(&snapshot).save_state(), snapshot);
        }
    }

    #[test]
    fn reads_return_all_ones() {
        let port = DebugExit::new().unwrap();
        let mut data = [0u8; 4];
        port.read(0, &mut data);
        assert_eq!(data, [0xff; 4]);
    }
}
