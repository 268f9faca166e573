//! Boots vmkit's minimal guest kernel and streams its serial console to stdout.
//!
//! ```text
//! cargo run --release --example boot [-- --vcpus N]
//! ```
//!
//! The VMM side is what any VMM built on vmkit does: open the host's hypervisor, create a VM,
//! map RAM, load the kernel ELF with linux-loader, start each vCPU in long mode on its own
//! thread (the kernel learns the vCPU count and its index from `rdi` and `rsi`; each vCPU
//! prints `cpu N online`), and answer port and MMIO exits from devices on a vm-device bus: a 16550 serial port (vm-superio) at
//! 0x3f8 and the i8042 controller (vm-superio) at 0x60, whose reset command (0xfe on port
//! 0x64) is how the guest powers off. Accesses no device claims read as all-ones and writes to
//! them are dropped, as on a PC with nothing at that address.
//!
//! Exit status: 0 once the guest powers off; 1, with the reason on stderr, on any failure.

use std::error::Error;
use std::io::{self, Cursor, Stdout};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_device::bus::{MmioAddress, PioAddress, PioAddressOffset, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::DevicePio;
use vm_memory::GuestAddress;
use vm_superio::{I8042Device, Serial, Trigger};
use vmkit::arch::x86_64::boot;
use vmkit::{KickHandle, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, VmConfig};
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

/// Parses `--vcpus N` (default 1).
fn vcpu_count() -> Result<u32, Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut vcpus = 1;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--vcpus" => {
                let value = args.next().ok_or("--vcpus needs a number")?;
                vcpus = value.parse().map_err(|_| {
                    format!(
                        "--vcpus takes a number from 1 to {}, not {value:?}",
                        minimal::MAX_VCPUS
                    )
                })?;
                if vcpus == 0 || vcpus > minimal::MAX_VCPUS {
                    return Err(
                        format!("--vcpus takes a number from 1 to {}", minimal::MAX_VCPUS).into(),
                    );
                }
            }
            other => {
                return Err(
                    format!("unexpected argument {other:?}; usage: boot [--vcpus N]").into(),
                )
            }
        }
    }
    Ok(vcpus)
}

fn run() -> Result<(), Box<dyn Error>> {
    let vcpus = vcpu_count()?;
    let hypervisor = vmkit::open()?;
    eprintln!(
        "boot: running the minimal kernel on {} with {vcpus} vCPU(s)",
        hypervisor.kind()
    );

    let vm = hypervisor.create_vm(&VmConfig::default().max_vcpus(vcpus))?;
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty())?;
    vm.add_memory_region(ram)?;
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None)
        .map_err(|err| format!("cannot load the minimal kernel: {err}"))?;

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

    let mut vcpu_handles = Vec::new();
    for index in 0..vcpus {
        let vcpu = vm.create_vcpu(index)?;
        vcpu.set_cpuid(&hypervisor.supported_cpuid())?;
        boot::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0)?;
        let mut regs = vcpu.regs()?;
        regs.rdi = u64::from(vcpus);
        regs.rsi = u64::from(index);
        vcpu.set_regs(&regs)?;
        vcpu_handles.push(vcpu);
    }
    let machine = Arc::new(Machine {
        bus,
        power_off: power_off_seen,
        stopping: AtomicBool::new(false),
        kicks: vcpu_handles.iter().map(|v| v.kick_handle()).collect(),
    });
    let threads: Vec<_> = vcpu_handles
        .into_iter()
        .map(|vcpu| {
            let machine = Arc::clone(&machine);
            thread::spawn(move || machine.run_vcpu(vcpu))
        })
        .collect();
    let mut result = Ok(());
    for thread in threads {
        let outcome = thread
            .join()
            .map_err(|_| "a vCPU thread panicked".to_string())?;
        // Report the first failure (it already stopped the other vCPUs).
        if let (Err(err), Ok(())) = (outcome, &result) {
            result = Err(err);
        }
    }
    result?;
    if !machine.stopping.load(Ordering::SeqCst) {
        return Err("every vCPU halted but the guest never powered off".into());
    }
    eprintln!("boot: the guest powered off");
    Ok(())
}

/// What the vCPU threads share: the device bus and the way to stop everything.
struct Machine {
    bus: IoManager,
    power_off: EventFd,
    stopping: AtomicBool,
    kicks: Vec<KickHandle>,
}

impl Machine {
    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for kick in &self.kicks {
            kick.kick();
        }
    }

    /// Runs one vCPU until the guest powers off, the vCPU halts for good, or an error, which
    /// stops the other vCPUs too.
    fn run_vcpu(&self, vcpu: Box<dyn Vcpu>) -> Result<(), String> {
        let result = self.vcpu_loop(vcpu);
        if result.is_err() {
            self.stop();
        }
        result
    }

    fn vcpu_loop(&self, mut vcpu: Box<dyn Vcpu>) -> Result<(), String> {
        let id = vcpu.id();
        while !self.stopping.load(Ordering::SeqCst) {
            let exit = vcpu.run().map_err(|err| format!("vCPU {id}: {err}"))?;
            match exit {
                VcpuExit::IoIn { port, data, .. } => {
                    if self.bus.pio_read(PioAddress(port), data).is_err() {
                        data.fill(0xff);
                    }
                }
                VcpuExit::IoOut { port, data, .. } => {
                    // Nothing claims the port: the write goes nowhere, as on real hardware.
                    let _ = self.bus.pio_write(PioAddress(port), data);
                    let to_i8042 = (I8042_BASE..I8042_BASE + I8042_PORTS).contains(&port);
                    if to_i8042 && self.power_off.read().is_ok() {
                        self.stop();
                    }
                }
                VcpuExit::MmioRead { addr, data } => {
                    if self.bus.mmio_read(MmioAddress(addr), data).is_err() {
                        data.fill(0xff);
                    }
                }
                VcpuExit::MmioWrite { addr, data } => {
                    let _ = self.bus.mmio_write(MmioAddress(addr), data);
                }
                // An application processor parks in `hlt` once it is online.
                VcpuExit::Hlt if id != 0 => return Ok(()),
                VcpuExit::Kicked | VcpuExit::Interrupted => {}
                other => return Err(format!("vCPU {id} stopped unexpectedly: {other:?}")),
            }
        }
        Ok(())
    }
}
