//! The 16550A UART, on vm-superio's model.

use std::convert::Infallible;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Trigger;
use vmkit::EventFd;

use crate::error::eventfd_pair;
use crate::registers::register;
use crate::DeviceError;

/// Signals the UART's interrupt line by writing its eventfd.
///
/// A non-blocking eventfd write fails only when the counter is already at its maximum, i.e.
/// the interrupt is already pending, so a failure loses nothing; it is counted, not reported
/// to vm-superio (which would otherwise abort the register write that raised it).
struct IrqTrigger {
    evt: EventFd,
    failures: Arc<AtomicU64>,
}

impl Trigger for IrqTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        if self.evt.write(1).is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

type Uart<W> = vm_superio::Serial<IrqTrigger, NoEvents, W>;

/// The first port of the first PC serial port, COM1.
pub const COM1: u16 = 0x3f8;
/// The interrupt line (ISA IRQ, and GSI on a PC) of COM1.
pub const COM1_GSI: u32 = 4;
/// How many ports (registers) a [`Serial`] occupies.
pub const SERIAL_PORTS: u16 = REGISTERS as u16;
/// How many bytes of host input a [`Serial`]'s receive FIFO holds.
pub const SERIAL_FIFO_SIZE: usize = 64;

/// A 16550A UART (vm-superio's model) whose output goes to any [`Write`] and whose interrupt
/// is an [`EventFd`].
///
/// Register it on a port bus at [`COM1`] (or another base) with [`SERIAL_PORTS`]
/// ports; it implements [`DevicePio`]. Register [`Serial::interrupt_evt`] as an irqfd for
/// [`COM1_GSI`] so that the UART's interrupts reach the guest, and feed host input
/// with [`Serial::enqueue_input`].
///
/// Every byte the guest writes to the transmit register is written to the output and
/// flushed at once. The output must not block for long: the vCPU that wrote the byte waits
/// for it. A failed write is counted ([`Serial::output_errors`]); the guest still sees the
/// transmitter empty, as a UART whose line is cut.
///
/// ## Access widths and offsets
///
/// The UART has eight one-byte registers. An access of several bytes at offset `o` reaches
/// registers `o, o + 1, …`, one byte each, in order, as an ISA bus splits a wide access to an
/// 8-bit device (so a 2-byte `out` to the base writes the transmit register, then the
/// interrupt-enable register). Bytes that land at offset 8 or beyond read as `0xff` and
/// their writes are dropped.
pub struct Serial<W: Write + Send> {
    uart: Mutex<Uart<W>>,
    interrupt: EventFd,
    output_errors: AtomicU64,
    interrupt_failures: Arc<AtomicU64>,
}

impl<W: Write + Send> fmt::Debug for Serial<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serial")
            .field("interrupt", &self.interrupt)
            .field("output_errors", &self.output_errors())
            .field("interrupt_failures", &self.interrupt_failures())
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send> Serial<W> {
    /// A UART in its power-on state whose output goes to `out`, with a new non-blocking
    /// interrupt eventfd.
    pub fn new(out: W) -> Result<Self, DeviceError> {
        let (evt, interrupt) = eventfd_pair("serial port", "interrupt")?;
        let interrupt_failures = Arc::new(AtomicU64::new(0));
        let trigger = IrqTrigger {
            evt,
            failures: Arc::clone(&interrupt_failures),
        };
        Ok(Serial {
            uart: Mutex::new(Uart::new(trigger, out)),
            interrupt,
            output_errors: AtomicU64::new(0),
            interrupt_failures,
        })
    }

    /// The eventfd the UART signals when it raises its interrupt: register it as an irqfd
    /// (edge-triggered, GSI [`COM1_GSI`] for COM1), or read it to poll.
    pub fn interrupt_evt(&self) -> &EventFd {
        &self.interrupt
    }

    fn uart(&self) -> MutexGuard<'_, Uart<W>> {
        // A panic in another thread while it held the lock (in the output writer) leaves the
        // UART registers consistent: each register update is a single assignment.
        self.uart.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues host input for the guest to read from the receive buffer, and raises the
    /// received-data interrupt if the guest enabled it.
    ///
    /// Returns how many bytes of `input`, from its start, fit in the FIFO: 0 when it is
    /// full (or in loopback mode, where the UART takes no outside input). Offer the rest
    /// again once the guest has read some.
    pub fn enqueue_input(&self, input: &[u8]) -> usize {
        let mut uart = self.uart();
        if input.is_empty() || uart.fifo_capacity() == 0 {
            return 0;
        }
        // The only other error, a failed interrupt, cannot happen with `IrqTrigger`.
        uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// How many more bytes of input the receive FIFO can take.
    pub fn input_capacity(&self) -> usize {
        self.uart().fifo_capacity()
    }

    /// Reads `data.len()` registers from `offset` on (see the type's documentation).
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        let mut uart = self.uart();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match register(offset, i, REGISTERS) {
                Some(register) => uart.read(register),
                None => 0xff,
            };
        }
    }

    /// Writes `data.len()` registers from `offset` on (see the type's documentation).
    pub fn write(&self, offset: u16, data: &[u8]) {
        let mut uart = self.uart();
        for (i, &byte) in data.iter().enumerate() {
            if let Some(register) = register(offset, i, REGISTERS) {
                if uart.write(register, byte).is_err() {
                    self.output_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// How many bytes the guest transmitted that the output failed to take.
    pub fn output_errors(&self) -> u64 {
        self.output_errors.load(Ordering::Relaxed)
    }

    /// How many interrupt signals failed because the eventfd counter was already at its
    /// maximum (the interrupt was pending anyway).
    pub fn interrupt_failures(&self) -> u64 {
        self.interrupt_failures.load(Ordering::Relaxed)
    }

    /// Runs `f` on the output, for example to inspect what a buffer holds so far.
    pub fn with_output<R>(&self, f: impl FnOnce(&mut W) -> R) -> R {
        f(self.uart().writer_mut())
    }

    /// The UART's registers and pending input, for a snapshot.
    pub fn state(&self) -> SerialState {
        self.uart().state()
    }

    /// Consumes the device and returns its output.
    pub fn into_output(self) -> W {
        self.uart
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .into_writer()
    }
}

impl<W: Write + Send> DevicePio for Serial<W> {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.read(offset, data);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.write(offset, data);
    }
}

/// How many one-byte registers the UART has.
const REGISTERS: u8 = 8;

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    const THR: u16 = 0;
    const RBR: u16 = 0;
    const IER: u16 = 1;
    const IIR: u16 = 2;
    const LCR: u16 = 3;
    const LSR: u16 = 5;
    const SCR: u16 = 7;
    const LSR_DATA_READY: u8 = 0x01;
    const LSR_THR_EMPTY: u8 = 0x20;
    const IER_RDA: u8 = 0x01;
    const IER_THR_EMPTY: u8 = 0x02;

    fn reg(serial: &Serial<impl Write + Send>, offset: u16) -> u8 {
        let mut byte = [0];
        serial.read(offset, &mut byte);
        byte[0]
    }

    /// How many times the eventfd was signalled since the last call (0 if never).
    fn signals(evt: &EventFd) -> u64 {
        match evt.read() {
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(err) => panic!("eventfd read failed: {err}"),
        }
    }

    #[test]
    fn guest_writes_to_thr_reach_the_output_and_thr_stays_empty() {
        let serial = Serial::new(Vec::new()).unwrap();
        assert_ne!(reg(&serial, LSR) & LSR_THR_EMPTY, 0);
        for &byte in b"hello\n" {
            serial.write(THR, &[byte]);
            assert_ne!(reg(&serial, LSR) & LSR_THR_EMPTY, 0);
        }
        assert_eq!(serial.with_output(|out| out.clone()), b"hello\n");
        assert_eq!(serial.output_errors(), 0);
        // No interrupt was enabled, so none was raised.
        assert_eq!(signals(serial.interrupt_evt()), 0);
        assert_eq!(serial.into_output(), b"hello\n");
    }

    #[test]
    fn host_input_is_read_from_rbr_with_data_ready_in_lsr() {
        let serial = Serial::new(io::sink()).unwrap();
        assert_eq!(reg(&serial, LSR) & LSR_DATA_READY, 0);
        assert_eq!(serial.enqueue_input(b"ok"), 2);
        assert_ne!(reg(&serial, LSR) & LSR_DATA_READY, 0);
        assert_eq!(reg(&serial, RBR), b'o');
        assert_ne!(reg(&serial, LSR) & LSR_DATA_READY, 0);
        assert_eq!(reg(&serial, RBR), b'k');
        assert_eq!(reg(&serial, LSR) & LSR_DATA_READY, 0);
        // An empty receive buffer reads as 0.
        assert_eq!(reg(&serial, RBR), 0);
    }

    #[test]
    fn enqueue_input_reports_how_much_fit() {
        let serial = Serial::new(io::sink()).unwrap();
        assert_eq!(serial.enqueue_input(&[]), 0);
        assert_eq!(serial.input_capacity(), SERIAL_FIFO_SIZE);
        let input: Vec<u8> = (0..100).collect();
        assert_eq!(serial.enqueue_input(&input), SERIAL_FIFO_SIZE);
        assert_eq!(serial.input_capacity(), 0);
        assert_eq!(serial.enqueue_input(&input[64..]), 0);
        // The guest reads three bytes: three more fit, and the order is kept.
        for expected in 0..3 {
            assert_eq!(reg(&serial, RBR), expected);
        }
        assert_eq!(serial.enqueue_input(&input[64..]), 3);
        let mut rest = vec![0u8; 64];
        for byte in rest.iter_mut() {
            *byte = reg(&serial, RBR);
        }
        assert_eq!(rest, (3..67).collect::<Vec<u8>>());
        assert_eq!(reg(&serial, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn enabling_the_thr_empty_interrupt_signals_the_eventfd() {
        let serial = Serial::new(io::sink()).unwrap();
        assert_eq!(reg(&serial, IIR) & 0x0f, 0x01, "no interrupt pending");
        serial.write(IER, &[IER_THR_EMPTY]);
        assert_eq!(signals(serial.interrupt_evt()), 1);
        assert_eq!(reg(&serial, IER), IER_THR_EMPTY);
        // IIR names the THR-empty interrupt (with the 16550A FIFO bits); reading it acks.
        assert_eq!(reg(&serial, IIR), 0xc2);
        assert_eq!(reg(&serial, IIR) & 0x0f, 0x01);
        // Each transmitted byte empties THR again and raises the interrupt again.
        serial.write(THR, b"x");
        assert_eq!(signals(serial.interrupt_evt()), 1);
        assert_eq!(serial.interrupt_failures(), 0);
    }

    #[test]
    fn input_raises_the_received_data_interrupt_when_enabled() {
        let serial = Serial::new(io::sink()).unwrap();
        assert_eq!(serial.enqueue_input(b"a"), 1);
        assert_eq!(signals(serial.interrupt_evt()), 0, "not enabled yet");
        // Enabling it with data already waiting raises it at once, as a real UART does.
        serial.write(IER, &[IER_RDA]);
        assert_eq!(signals(serial.interrupt_evt()), 1);
        assert_eq!(reg(&serial, IIR) & 0x0f, 0x04);
        assert_eq!(reg(&serial, RBR), b'a');
        assert_eq!(serial.enqueue_input(b"b"), 1);
        assert_eq!(signals(serial.interrupt_evt()), 1);
    }

    #[test]
    fn wide_accesses_reach_consecutive_registers_and_stop_at_the_last() {
        let serial = Serial::new(Vec::new()).unwrap();
        // Two bytes at the base: THR, then IER.
        serial.write(THR, &[b'z', IER_THR_EMPTY]);
        assert_eq!(serial.with_output(|out| out.clone()), b"z");
        assert_eq!(reg(&serial, IER), IER_THR_EMPTY);
        // Two bytes at the scratch register: the second lands past the UART.
        serial.write(SCR, &[0x5a, 0x77]);
        let mut data = [0u8; 2];
        serial.read(SCR, &mut data);
        assert_eq!(data, [0x5a, 0xff]);
        // Four bytes from LCR: LCR, MCR, LSR, MSR.
        let mut data = [0u8; 4];
        serial.read(LCR, &mut data);
        assert_eq!(data[0], 0x03, "8N1 at power-on");
        assert_ne!(data[2] & LSR_THR_EMPTY, 0);
        // Offsets past the UART, up to the end of the port space, never panic.
        for offset in [8, 0x100, u16::MAX - 1, u16::MAX] {
            let mut data = [0u8; 4];
            serial.read(offset, &mut data);
            assert_eq!(data, [0xff; 4]);
            serial.write(offset, &[b'!'; 4]);
        }
        assert_eq!(serial.with_output(|out| out.clone()), b"z");
        assert_eq!(reg(&serial, SCR), 0x5a);
    }

    /// An output that refuses every byte.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("line cut"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_failures_are_counted_and_the_guest_is_not_stuck() {
        let serial = Serial::new(Broken).unwrap();
        for &byte in b"abc" {
            serial.write(THR, &[byte]);
        }
        assert_eq!(serial.output_errors(), 3);
        assert_ne!(reg(&serial, LSR) & LSR_THR_EMPTY, 0);
    }

    #[test]
    fn state_reflects_guest_programming() {
        let serial = Serial::new(io::sink()).unwrap();
        serial.write(SCR, &[0x42]);
        serial.write(IER, &[IER_RDA]);
        serial.enqueue_input(b"q");
        let state = serial.state();
        assert_eq!(state.scratch, 0x42);
        assert_eq!(state.interrupt_enable, IER_RDA);
        assert_eq!(state.in_buffer, b"q");
    }
}
