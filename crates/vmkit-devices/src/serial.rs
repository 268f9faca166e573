//! The 16550A UART, on vm-superio's model.

use std::convert::Infallible;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;
use vm_superio::serial::{NoEvents, SerialState as UartState};
use vm_superio::Trigger;
use vmkit_snapshot::Persist;
use vmm_sys_util::eventfd::EventFd;

use crate::error::{duplicate, eventfd_pair};
use crate::registers::register;
use crate::{DeviceError, RestoreError};

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

/// vm-superio's UART model. It owns the writer it transmits to; this device gives it a
/// buffer that holds the byte being transmitted and moves the byte on to the real output
/// itself, so that the output stays the device's when a restore replaces the model.
type Uart = vm_superio::Serial<IrqTrigger, NoEvents, Vec<u8>>;

/// The UART model and the output its transmitted bytes go to.
struct Port<W> {
    uart: Uart,
    out: W,
}

const DEVICE: &str = "serial port";
const PURPOSE: &str = "interrupt";

/// A new interrupt eventfd: the UART's trigger on one copy, the VMM's copy, and the shared
/// failure counter.
fn interrupt_parts() -> Result<(IrqTrigger, EventFd, Arc<AtomicU64>), DeviceError> {
    let (evt, interrupt) = eventfd_pair(DEVICE, PURPOSE)?;
    let failures = Arc::new(AtomicU64::new(0));
    let trigger = IrqTrigger {
        evt,
        failures: Arc::clone(&failures),
    };
    Ok((trigger, interrupt, failures))
}

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
    port: Mutex<Port<W>>,
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
        let (trigger, interrupt, interrupt_failures) = interrupt_parts()?;
        Ok(Serial {
            port: Mutex::new(Port {
                uart: Uart::new(trigger, Vec::new()),
                out,
            }),
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

    fn port(&self) -> MutexGuard<'_, Port<W>> {
        // A panic in another thread while it held the lock (in the output writer) leaves the
        // UART registers consistent: each register update is a single assignment.
        self.port.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues host input for the guest to read from the receive buffer, and raises the
    /// received-data interrupt if the guest enabled it.
    ///
    /// Returns how many bytes of `input`, from its start, fit in the FIFO: 0 when it is
    /// full (or in loopback mode, where the UART takes no outside input). Offer the rest
    /// again once the guest has read some.
    pub fn enqueue_input(&self, input: &[u8]) -> usize {
        let uart = &mut self.port().uart;
        if input.is_empty() || uart.fifo_capacity() == 0 {
            return 0;
        }
        // The only other error, a failed interrupt, cannot happen with `IrqTrigger`.
        uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// How many more bytes of input the receive FIFO can take.
    pub fn input_capacity(&self) -> usize {
        self.port().uart.fifo_capacity()
    }

    /// Reads `data.len()` registers from `offset` on (see the type's documentation).
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        let uart = &mut self.port().uart;
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match register(offset, i, REGISTERS) {
                Some(register) => uart.read(register),
                None => 0xff,
            };
        }
    }

    /// Writes `data.len()` registers from `offset` on (see the type's documentation).
    pub fn write(&self, offset: u16, data: &[u8]) {
        let mut port = self.port();
        let Port { uart, out } = &mut *port;
        for (i, &byte) in data.iter().enumerate() {
            if let Some(register) = register(offset, i, REGISTERS) {
                // Neither the trigger nor the transmit buffer ever fails.
                let _ = uart.write(register, byte);
                // A transmitted byte goes out at once, flushed.
                let sent = uart.writer_mut();
                if !sent.is_empty() {
                    if out.write_all(sent).and_then(|()| out.flush()).is_err() {
                        self.output_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    sent.clear();
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
        f(&mut self.port().out)
    }

    /// Consumes the device and returns its output.
    pub fn into_output(self) -> W {
        self.port
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .out
    }
}

/// The UART's registers and pending input ([`SerialState`]). The output, the interrupt
/// eventfd and the error counters are not in it: a fresh [`Serial`] brings them.
impl<W: Write + Send> Persist for Serial<W> {
    const KIND: &'static str = "serial";
    /// Version 1 was the same state in a section that did not name its kind.
    const VERSION: u16 = 2;
    type State = SerialState;
    type Error = RestoreError;

    fn save_state(&self) -> SerialState {
        SerialState::from(self.port().uart.state())
    }

    /// Restores the UART's registers and pending input; the output and the interrupt eventfd
    /// stay this device's.
    ///
    /// The state is untrusted: it is refused unless every register holds a value that
    /// vm-superio's UART can reach through its register interface and host input:
    ///
    /// - `in_buffer` holds at most [`SERIAL_FIFO_SIZE`] bytes (vm-superio checks this too);
    /// - `IER` has only its four 16550A bits (0-3); the guest cannot set the others;
    /// - `IIR` is "none pending" (`0x01`) or a set of the THR-empty (`0x02`) and
    ///   received-data (`0x04`) interrupts; received-data is pending only with input
    ///   buffered (reading the last byte clears it);
    /// - `LSR` is "THR empty, line idle" (`0x60`), plus data-ready (`0x01`) exactly when input
    ///   is buffered;
    /// - `MSR` is `0xb0` (CTS, DSR, DCD), which nothing changes.
    ///
    /// The divisor latch, `LCR`, `MCR` and the scratch register take any value, as a guest's
    /// writes do. A pending interrupt that is enabled is signalled on the interrupt eventfd,
    /// as vm-superio does on restore: register the eventfd as an irqfd before the vCPUs run.
    fn restore_state(&mut self, state: &SerialState) -> Result<(), RestoreError> {
        state.validate()?;
        let trigger = IrqTrigger {
            evt: duplicate(&self.interrupt, DEVICE, PURPOSE)?,
            failures: Arc::clone(&self.interrupt_failures),
        };
        let uart_state = state.to_uart();
        // Only an overlong in_buffer makes vm-superio refuse (checked above), and
        // `IrqTrigger` never fails.
        let uart = Uart::from_state(&uart_state, trigger, NoEvents, Vec::new()).map_err(|_| {
            RestoreError::InBufferTooLong {
                len: uart_state.in_buffer.len(),
                max: SERIAL_FIFO_SIZE,
            }
        })?;
        self.port
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .uart = uart;
        Ok(())
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

/// IER bits a 16550A has (vm-superio masks the others off guest writes).
const IER_VALID: u8 = 0x0f;
/// IIR: no interrupt pending.
const IIR_NONE: u8 = 0x01;
/// IIR: transmitter holding register empty.
const IIR_THR_EMPTY: u8 = 0x02;
/// IIR: received data available.
const IIR_RDA: u8 = 0x04;
/// LSR: data ready.
const LSR_DATA_READY: u8 = 0x01;
/// LSR: THR empty and line idle, which vm-superio's UART always reports.
const LSR_ALWAYS: u8 = 0x60;
/// MSR: CTS, DSR and DCD, which vm-superio's UART always reports.
const MSR_ALWAYS: u8 = 0xb0;

/// The saved state of a [`Serial`] ([`Persist::State`]): vm-superio's UART state in a
/// serde-serializable form. See [`Serial`]'s [`Persist::restore_state`] for the values it may
/// hold.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register (without the FIFO bits, added when it is read).
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes the guest has not read yet, oldest first.
    pub in_buffer: Vec<u8>,
}

impl From<UartState> for SerialState {
    fn from(s: UartState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl SerialState {
    /// Checks the rules listed at [`Serial`]'s [`Persist::restore_state`].
    pub fn validate(&self) -> Result<(), RestoreError> {
        let len = self.in_buffer.len();
        if len > SERIAL_FIFO_SIZE {
            return Err(RestoreError::InBufferTooLong {
                len,
                max: SERIAL_FIFO_SIZE,
            });
        }
        let bad = |register, value, reason| {
            Err(RestoreError::Register {
                register,
                value,
                reason,
            })
        };
        let ier = self.interrupt_enable;
        if ier & !IER_VALID != 0 {
            return bad("IER", ier, "only bits 0-3 exist on a 16550A");
        }
        let iir = self.interrupt_identification;
        if iir != IIR_NONE && (iir == 0 || iir & !(IIR_THR_EMPTY | IIR_RDA) != 0) {
            return bad(
                "IIR",
                iir,
                "it is 0x01 (none pending) or a set of 0x02 (THR empty) and 0x04 (data)",
            );
        }
        if iir & IIR_RDA != 0 && len == 0 {
            return bad("IIR", iir, "received data pending with an empty in_buffer");
        }
        let lsr = self.line_status;
        let expected = LSR_ALWAYS | if len == 0 { 0 } else { LSR_DATA_READY };
        if lsr != expected {
            return bad(
                "LSR",
                lsr,
                if lsr & !(LSR_ALWAYS | LSR_DATA_READY) != 0 || lsr & LSR_ALWAYS != LSR_ALWAYS {
                    "it is 0x60 (THR empty, idle), plus 0x01 (data ready)"
                } else if len == 0 {
                    "data ready with an empty in_buffer"
                } else {
                    "no data ready with bytes in in_buffer"
                },
            );
        }
        if self.modem_status != MSR_ALWAYS {
            return bad(
                "MSR",
                self.modem_status,
                "it is always 0xb0 (CTS, DSR, DCD)",
            );
        }
        Ok(())
    }

    fn to_uart(&self) -> UartState {
        UartState {
            baud_divisor_low: self.baud_divisor_low,
            baud_divisor_high: self.baud_divisor_high,
            interrupt_enable: self.interrupt_enable,
            interrupt_identification: self.interrupt_identification,
            line_control: self.line_control,
            line_status: self.line_status,
            modem_control: self.modem_control,
            modem_status: self.modem_status,
            scratch: self.scratch,
            in_buffer: self.in_buffer.clone(),
        }
    }
}

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

    /// A fresh UART on `out` with `state` restored into it.
    fn fresh_with<W: Write + Send>(out: W, state: &SerialState) -> Result<Serial<W>, RestoreError> {
        let mut serial = Serial::new(out)?;
        serial.restore_state(state)?;
        Ok(serial)
    }

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

    const MCR: u16 = 4;
    const LCR_DLAB: u8 = 0x80;

    /// Reads the registers a driver polls, in order (IIR reads have side effects, so both
    /// UARTs compared see the same sequence), then drains the receive buffer.
    fn observe(serial: &Serial<impl Write + Send>) -> Vec<u8> {
        let mut seen = Vec::new();
        for offset in [LSR, IER, LCR, MCR, SCR, IIR, IIR, LSR] {
            seen.push(reg(serial, offset));
        }
        // Bounded: with DLAB set, offset 0 is the divisor latch and nothing drains.
        for _ in 0..=SERIAL_FIFO_SIZE {
            if reg(serial, LSR) & LSR_DATA_READY == 0 {
                break;
            }
            seen.push(reg(serial, RBR));
            seen.push(reg(serial, IIR));
        }
        seen.push(reg(serial, LSR));
        seen
    }

    /// A UART the guest configured (divisor, 7E1 line, interrupts, scratch) with input queued.
    fn configured() -> Serial<Vec<u8>> {
        let serial = Serial::new(Vec::new()).unwrap();
        serial.write(LCR, &[LCR_DLAB]);
        serial.write(0, &[0x01, 0x00]); // 115200 baud
        serial.write(LCR, &[0x1a]);
        serial.write(MCR, &[0x0b]);
        serial.write(SCR, &[0x5a]);
        serial.write(IER, &[IER_RDA | IER_THR_EMPTY]);
        serial.write(THR, b"x");
        assert_eq!(serial.enqueue_input(b"queued"), 6);
        serial
    }

    #[test]
    fn a_restored_uart_behaves_like_the_original() {
        let original = configured();
        let snapshot = original.save_state();
        assert_eq!(snapshot.line_control, 0x1a);
        assert_eq!(snapshot.in_buffer, b"queued");
        let bytes = postcard::to_stdvec(&snapshot).unwrap();
        let decoded: SerialState = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(decoded, snapshot);
        // The VMM builds a fresh UART, wires its eventfd (here: keeps a copy), restores.
        let mut restored = Serial::new(b"before:".to_vec()).unwrap();
        let wired = restored.interrupt_evt().try_clone().unwrap();
        restored.restore_state(&decoded).unwrap();
        assert_eq!(restored.save_state(), snapshot);
        // The pending, enabled interrupts (THR empty, data) are signalled on the eventfd the
        // VMM wired before the restore.
        assert_eq!(signals(&wired), 2);
        let theirs = observe(&original);
        assert_eq!(observe(&restored), theirs);
        // The queued bytes, read from RBR between the register reads and the final LSR.
        let received: Vec<u8> = theirs[8..theirs.len() - 1]
            .iter()
            .step_by(2)
            .copied()
            .collect();
        assert_eq!(received, b"queued");
        assert_eq!(theirs.last(), Some(&LSR_ALWAYS));
        // The divisor latch too.
        for serial in [&original, &restored] {
            serial.write(LCR, &[0x1a | LCR_DLAB]);
            assert_eq!((reg(serial, 0), reg(serial, IER)), (0x01, 0x00));
            serial.write(LCR, &[0x1a]);
        }
        // Both carry on: output and input.
        // The output is the fresh device's.
        restored.write(THR, b"y");
        assert_eq!(restored.with_output(|out| out.clone()), b"before:y");
        assert_eq!(restored.enqueue_input(b"z"), 1);
        assert_eq!(reg(&restored, RBR), b'z');
    }

    #[test]
    fn a_default_uart_round_trips() {
        let serial = Serial::new(io::sink()).unwrap();
        let snapshot = serial.save_state();
        let restored = fresh_with(io::sink(), &snapshot).unwrap();
        assert_eq!(restored.save_state(), snapshot);
        assert_eq!(signals(restored.interrupt_evt()), 0);
        assert_eq!(observe(&restored), observe(&serial));
    }

    fn refused(snapshot: &SerialState) -> RestoreError {
        match fresh_with(io::sink(), snapshot) {
            Ok(_) => panic!("accepted {snapshot:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn corrupt_snapshots_are_refused() {
        let good = configured().save_state();
        let mut s = good.clone();
        s.in_buffer = vec![0; SERIAL_FIFO_SIZE + 1];
        assert!(matches!(
            refused(&s),
            RestoreError::InBufferTooLong { len: 65, max: 64 }
        ));
        type Corruption = fn(&mut SerialState);
        let cases: [(Corruption, &str, u8); 8] = [
            (|s| s.interrupt_enable = 0x10, "IER", 0x10),
            (|s| s.interrupt_identification = 0x00, "IIR", 0x00),
            (|s| s.interrupt_identification = 0x08, "IIR", 0x08),
            (|s| s.interrupt_identification = 0xc1, "IIR", 0xc1),
            (|s| s.interrupt_identification = 0x03, "IIR", 0x03),
            (|s| s.line_status = 0x60, "LSR", 0x60),
            (|s| s.line_status = 0x61 | 0x02, "LSR", 0x63),
            (|s| s.modem_status = 0x00, "MSR", 0x00),
        ];
        for (corrupt, name, val) in cases {
            let mut s = good.clone();
            corrupt(&mut s);
            let err = refused(&s);
            assert!(
                matches!(err, RestoreError::Register { register, value, .. } if register == name && value == val),
                "{err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
        // Data pending with nothing buffered.
        let mut s = good.clone();
        s.in_buffer.clear();
        assert!(matches!(
            refused(&s),
            RestoreError::Register {
                register: "IIR",
                ..
            }
        ));
        s.interrupt_identification = IIR_THR_EMPTY;
        assert!(matches!(
            refused(&s),
            RestoreError::Register {
                register: "LSR",
                value: 0x61,
                ..
            }
        ));
        s.line_status = LSR_ALWAYS;
        fresh_with(io::sink(), &s).unwrap();
    }

    #[test]
    fn every_single_register_value_is_accepted_or_refused_without_panic() {
        let good = configured().save_state();
        for value in 0..=u8::MAX {
            for field in 0..9 {
                let mut s = good.clone();
                *[
                    &mut s.baud_divisor_low,
                    &mut s.baud_divisor_high,
                    &mut s.interrupt_enable,
                    &mut s.interrupt_identification,
                    &mut s.line_control,
                    &mut s.line_status,
                    &mut s.modem_control,
                    &mut s.modem_status,
                    &mut s.scratch,
                ][field] = value;
                if let Ok(serial) = fresh_with(io::sink(), &s) {
                    assert_eq!(serial.save_state(), s);
                    observe(&serial);
                }
            }
        }
        // Whatever a guest does to a UART, its snapshot restores.
        let serial = Serial::new(io::sink()).unwrap();
        for value in 0..=u8::MAX {
            for offset in 0..8 {
                serial.write(offset, &[value]);
                fresh_with(io::sink(), &serial.save_state()).unwrap();
                reg(&serial, offset);
                fresh_with(io::sink(), &serial.save_state()).unwrap();
            }
            serial.enqueue_input(&[value]);
            fresh_with(io::sink(), &serial.save_state()).unwrap();
        }
    }

    #[test]
    fn state_reflects_guest_programming() {
        let serial = Serial::new(io::sink()).unwrap();
        serial.write(SCR, &[0x42]);
        serial.write(IER, &[IER_RDA]);
        serial.enqueue_input(b"q");
        let state = serial.save_state();
        assert_eq!(state.scratch, 0x42);
        assert_eq!(state.interrupt_enable, IER_RDA);
        assert_eq!(state.in_buffer, b"q");
    }
}
