//! A small VMM for the tests: boots the minimal kernel on N vCPUs, each on its own thread,
//! with a vm-superio 16550 (its interrupt wired through an irqfd when the VM has an irqchip),
//! and collects what the guest printed and the interrupt vectors it reported.

use std::io::{self, Cursor, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::GuestAddress;
use vm_superio::{Serial, Trigger};
use vmkit::arch::x86_64::MpState;
use vmkit::runner::{self, ExitAction, ExitHandler, VmRunner};
use vmkit::{EventFd, Hypervisor, MemoryFlags, MemoryRegion, VcpuExit, Vm, VmConfig};
use vmkit_boot::entry;
use vmkit_bus::{Bus, ExitOutcome};
use vmkit_devices::{IoApic, IOAPIC_PINS};
use vmkit_guests::minimal;

/// What the harness answers for the kernel's MMIO read.
pub const MMIO_ANSWER: u32 = 0x1234_abcd;
/// A liveness bound for waits: reaching it means the guest is stuck, not slow. Generous,
/// because a whole minimal-kernel run on Xen in QEMU's TCG takes ~30 s on a loaded host.
pub const GIVE_UP: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug)]
pub struct GuestConfig {
    pub vcpus: u32,
    pub irqchip: bool,
    /// Boot the BSP in interrupt mode (needs `irqchip`).
    pub interrupts: bool,
    /// With `irqchip`: a split irqchip, with vmkit-devices' IOAPIC in the harness (wired by
    /// vmkit-machine's `attach_ioapic`) instead of the hypervisor's.
    pub split_irqchip: bool,
}

impl GuestConfig {
    pub fn smp(vcpus: u32) -> Self {
        GuestConfig {
            vcpus,
            irqchip: false,
            interrupts: false,
            split_irqchip: false,
        }
    }

    pub fn interrupts(vcpus: u32) -> Self {
        GuestConfig {
            vcpus,
            irqchip: true,
            interrupts: true,
            split_irqchip: false,
        }
    }

    /// Interrupt mode with a split irqchip: the guest programs the harness's IOAPIC.
    pub fn split_interrupts(vcpus: u32) -> Self {
        GuestConfig {
            split_irqchip: true,
            ..Self::interrupts(vcpus)
        }
    }
}

struct EventFdTrigger(EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Serial output shared by every vCPU thread.
#[derive(Clone, Default)]
struct SharedOutput(Arc<Mutex<Vec<u8>>>);

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Uart = Serial<EventFdTrigger, vm_superio::serial::NoEvents, SharedOutput>;

/// What one vCPU did.
#[derive(Debug, Default)]
pub struct VcpuOutcome {
    pub powered_off: bool,
    pub halted: bool,
    pub mmio_written: Vec<u8>,
}

pub struct Guest {
    pub vm: Arc<dyn Vm>,
    output: SharedOutput,
    reports: Receiver<u8>,
    runner: VmRunner,
    /// What each vCPU wrote to the kernel's MMIO address, by vCPU id.
    mmio_written: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The serial interrupt eventfd, registered as an irqfd on GSI 4 with an irqchip.
    pub serial_irq: EventFd,
    /// The userspace IOAPIC, with a split irqchip.
    pub ioapic: Option<Arc<IoApic>>,
}

/// The harness's board: the 16550, the interrupt report port, power-off, and the kernel's
/// MMIO probe.
fn handler(
    uart: Mutex<Uart>,
    reports: Sender<u8>,
    mmio_written: Arc<Mutex<Vec<Vec<u8>>>>,
    ioapic_bus: Option<Bus>,
) -> Arc<dyn ExitHandler> {
    let serial = minimal::SERIAL_PORT..minimal::SERIAL_PORT + 8;
    runner::from_fn(move |id, exit| {
        // With a split irqchip, the IOAPIC's registers and the EOIs for it go to its bus.
        if let Some(bus) = &ioapic_bus {
            let ioapic = IoApic::BASE..IoApic::BASE + IoApic::SIZE;
            let for_ioapic = match exit {
                VcpuExit::MmioRead { addr, .. } | VcpuExit::MmioWrite { addr, .. } => {
                    ioapic.contains(addr)
                }
                VcpuExit::IoapicEoi { .. } => true,
                _ => false,
            };
            if for_ioapic {
                let outcome = bus.handle_exit(exit);
                assert!(
                    matches!(
                        outcome,
                        ExitOutcome::Handled { .. } | ExitOutcome::Eoi { .. }
                    ),
                    "{outcome:?}"
                );
                return ExitAction::Continue;
            }
        }
        match exit {
            VcpuExit::IoIn { port, data, .. } => {
                if serial.contains(port) {
                    let mut uart = uart.lock().unwrap();
                    for byte in data.iter_mut() {
                        *byte = uart.read((*port - minimal::SERIAL_PORT) as u8);
                    }
                } else {
                    data.fill(0xff);
                }
            }
            VcpuExit::IoOut { port, data, .. } => match *port {
                p if serial.contains(&p) => {
                    let mut uart = uart.lock().unwrap();
                    for &byte in data.iter() {
                        uart.write((p - minimal::SERIAL_PORT) as u8, byte).unwrap();
                    }
                }
                minimal::IRQ_REPORT_PORT => {
                    let _ = reports.send(data[0]);
                }
                minimal::POWER_OFF_PORT if *data == [minimal::POWER_OFF_VALUE] => {
                    return ExitAction::PowerOff;
                }
                // PIC masks without an irqchip, and similar: nothing is there.
                _ => {}
            },
            VcpuExit::MmioRead { addr, data } => {
                assert_eq!(*addr, minimal::MMIO_READ_ADDR);
                data.copy_from_slice(&MMIO_ANSWER.to_le_bytes());
            }
            VcpuExit::MmioWrite { addr, data } => {
                assert_eq!(*addr, minimal::MMIO_WRITE_ADDR);
                mmio_written.lock().unwrap()[id as usize] = data.to_vec();
            }
            VcpuExit::Hlt => return ExitAction::Halt,
            other => return ExitAction::unhandled(other),
        }
        ExitAction::Continue
    })
}

impl Guest {
    pub fn boot(hv: &dyn Hypervisor, config: GuestConfig) -> Guest {
        let mut vm_config = VmConfig::default()
            .max_vcpus(config.vcpus)
            .irqchip(config.irqchip);
        if config.split_irqchip {
            vm_config = vm_config.split_irqchip(IOAPIC_PINS as u32);
        }
        let vm: Arc<dyn Vm> = Arc::from(hv.create_vm(&vm_config).unwrap());
        let (ioapic, ioapic_bus) = if config.split_irqchip {
            let mut bus = Bus::new();
            let ioapic = vmkit_machine::attach_ioapic(
                Arc::clone(&vm),
                &mut bus,
                Box::new(|err| panic!("IOAPIC: {err}")),
            )
            .unwrap();
            (Some(ioapic), Some(bus))
        } else {
            (None, None)
        };
        let ram = MemoryRegion::anonymous(GuestAddress(0), 4 << 20, MemoryFlags::empty()).unwrap();
        vm.add_memory_region(ram).unwrap();
        let memory = vm.memory();
        let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();

        let output = SharedOutput::default();
        let serial_irq = EventFd::new(0).unwrap();
        let uart = Mutex::new(Serial::new(
            EventFdTrigger(serial_irq.try_clone().unwrap()),
            output.clone(),
        ));
        if config.irqchip {
            vm.register_irqfd(&serial_irq, minimal::SERIAL_GSI, None)
                .unwrap();
        }

        let (report_tx, reports) = mpsc::channel();
        let mut vcpus = Vec::new();
        for index in 0..config.vcpus {
            let vcpu = vm.create_vcpu(index).unwrap();
            vcpu.set_cpuid(&hv.supported_cpuid()).unwrap();
            entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0).unwrap();
            let mut regs = vcpu.regs().unwrap();
            regs.rdi = u64::from(config.vcpus);
            regs.rsi = u64::from(index);
            if config.interrupts {
                regs.rdx = minimal::ENTRY_FLAG_INTERRUPTS;
            }
            vcpu.set_regs(&regs).unwrap();
            if config.irqchip && index > 0 {
                // With an irqchip, KVM holds application processors until INIT/SIPI.
                vcpu.set_mp_state(MpState::Runnable).unwrap();
            }
            vcpus.push(vcpu);
        }
        let mmio_written = Arc::new(Mutex::new(vec![Vec::new(); config.vcpus as usize]));
        let handler = handler(uart, report_tx, Arc::clone(&mmio_written), ioapic_bus);
        let options = super::runner_options().command_timeout(GIVE_UP);
        let runner = VmRunner::start_with(vcpus, handler, options).unwrap();
        Guest {
            vm,
            output,
            reports,
            runner,
            mmio_written,
            serial_irq,
            ioapic,
        }
    }

    /// The running vCPUs.
    pub fn runner(&self) -> &VmRunner {
        &self.runner
    }

    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&self.output.0.lock().unwrap()).into_owned()
    }

    /// Waits until the serial output contains `text`.
    pub fn wait_for_serial(&self, text: &str) {
        let start = Instant::now();
        while !self.serial().contains(text) {
            assert!(
                start.elapsed() < GIVE_UP,
                "the guest never printed {text:?}; it printed {:?}",
                self.serial()
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next interrupt vector the guest reported, if one arrives within `wait`.
    pub fn next_report(&self, wait: Duration) -> Option<u8> {
        match self.reports.recv_timeout(wait) {
            Ok(vector) => Some(vector),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("every vCPU thread ended"),
        }
    }

    /// Waits for the guest to power off (or for `GIVE_UP`), stops every vCPU and returns
    /// the serial output and each vCPU's outcome.
    pub fn finish(self, wait_for_power_off: bool) -> (String, Vec<VcpuOutcome>) {
        if wait_for_power_off {
            assert!(
                self.runner.wait_stopping(GIVE_UP),
                "the guest never powered off; it printed {:?}",
                self.serial()
            );
        }
        self.runner.stop_all();
        let finished = self.runner.join_timeout(GIVE_UP).unwrap();
        let mut written = std::mem::take(&mut *self.mmio_written.lock().unwrap());
        let outcomes = finished
            .into_iter()
            .map(|finished| {
                let outcome = finished
                    .outcome
                    .unwrap_or_else(|err| panic!("vCPU {}: {err}", finished.id));
                VcpuOutcome {
                    powered_off: outcome == runner::VcpuOutcome::PowerOff,
                    halted: outcome == runner::VcpuOutcome::Halted,
                    mmio_written: std::mem::take(&mut written[finished.id as usize]),
                }
            })
            .collect();
        let serial = String::from_utf8_lossy(&self.output.0.lock().unwrap()).into_owned();
        (serial, outcomes)
    }
}
