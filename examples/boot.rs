//! Boots vmkit's minimal guest kernel and streams its serial console to stdout.
//!
//! ```text
//! cargo run --release --example boot
//! ```
//!
//! The VMM side is what any VMM built on vmkit does: open the host's hypervisor, create a VM,
//! map RAM, load the kernel ELF with linux-loader, start vCPU 0 in long mode, and answer its
//! port and MMIO exits from devices on a vm-device bus: a 16550 serial port (vm-superio) at
//! 0x3f8 and the i8042 controller (vm-superio) at 0x60, whose reset command (0xfe on port
//! 0x64) is how the guest powers off. Accesses no device claims read as all-ones and writes to
//! them are dropped, as on a PC with nothing at that address.
//!
//! Exit status: 0 once the guest powers off; 1, with the reason on stderr, on any failure.

use std::error::Error;
use std::io::{self, Cursor, Stdout};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_device::bus::{MmioAddress, PioAddress, PioAddressOffset, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::DevicePio;
use vm_memory::GuestAddress;
use vm_superio::{I8042Device, Serial, Trigger};
use vmkit::arch::x86_64::boot;
use vmkit::{MemoryFlags, MemoryRegion, VcpuExit, VmConfig};
use vmkit_guests::minimal;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM: enough for the boot tables below 1 MiB and the kernel above it.
const RAM_SIZE: usize = 4 << 20;
const SERIAL_PORTS: u16 = 8;
const I8042_BASE: u16 = 0x60;
const I8042_PORTS: u16 = 5;

/// vm-superio devices signal through a `Trigger`; an eventfd is the usual one.
struct EventFdTrigger(EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl EventFdTrigger {
    fn new() -> io::Result<Self> {
        EventFd::new(EFD_NONBLOCK).map(EventFdTrigger)
    }
}

/// The 16550 UART on the port bus; its output goes to stdout.
struct SerialPort(Mutex<Serial<EventFdTrigger, vm_superio::serial::NoEvents, Stdout>>);

impl DevicePio for SerialPort {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let mut serial = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for byte in data.iter_mut() {
            *byte = serial.read(offset as u8);
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let mut serial = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for &byte in data {
            if let Err(err) = serial.write(offset as u8, byte) {
                eprintln!("boot: serial output failed: {err:?}");
            }
        }
    }
}

/// The i8042 keyboard controller, present for its CPU-reset command.
struct ResetPort(Mutex<I8042Device<EventFdTrigger>>);

impl DevicePio for ResetPort {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let mut i8042 = self.0.lock().unwrap_or_else(|e| e.into_inner());
        data.fill(i8042.read(offset as u8));
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let mut i8042 = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for &byte in data {
            if let Err(err) = i8042.write(offset as u8, byte) {
                eprintln!("boot: i8042 reset signal failed: {err}");
            }
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = format!("boot: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    if let Some(arg) = std::env::args().nth(1) {
        return Err(format!("unexpected argument {arg:?}: this example takes none").into());
    }
    let hypervisor = vmkit::open()?;
    eprintln!("boot: running the minimal kernel on {}", hypervisor.kind());

    let vm = hypervisor.create_vm(&VmConfig::default())?;
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty())?;
    vm.add_memory_region(ram)?;
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None)
        .map_err(|err| format!("cannot load the minimal kernel: {err}"))?;

    let mut vcpu = vm.create_vcpu(0)?;
    vcpu.set_cpuid(&hypervisor.supported_cpuid())?;
    boot::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0)?;

    let power_off = EventFdTrigger::new()?;
    let power_off_seen = power_off.0.try_clone()?;
    let serial = Serial::new(EventFdTrigger::new()?, io::stdout());
    let mut bus = IoManager::new();
    bus.register_pio(
        PioRange::new(PioAddress(minimal::SERIAL_PORT), SERIAL_PORTS)?,
        Arc::new(SerialPort(Mutex::new(serial))),
    )?;
    bus.register_pio(
        PioRange::new(PioAddress(I8042_BASE), I8042_PORTS)?,
        Arc::new(ResetPort(Mutex::new(I8042Device::new(power_off)))),
    )?;

    loop {
        match vcpu.run()? {
            VcpuExit::IoIn { port, data, .. } => {
                if bus.pio_read(PioAddress(port), data).is_err() {
                    data.fill(0xff);
                }
            }
            VcpuExit::IoOut { port, data, .. } => {
                // Nothing claims the port: the write goes nowhere, as on real hardware.
                let _ = bus.pio_write(PioAddress(port), data);
                let to_i8042 = (I8042_BASE..I8042_BASE + I8042_PORTS).contains(&port);
                if to_i8042 && power_off_seen.read().is_ok() {
                    eprintln!("boot: the guest powered off");
                    return Ok(());
                }
            }
            VcpuExit::MmioRead { addr, data } => {
                if bus.mmio_read(MmioAddress(addr), data).is_err() {
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioWrite { addr, data } => {
                let _ = bus.mmio_write(MmioAddress(addr), data);
            }
            VcpuExit::Interrupted => {}
            other => return Err(format!("the guest stopped unexpectedly: {other:?}").into()),
        }
    }
}
