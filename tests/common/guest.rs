//! A small VMM for the tests: boots the minimal kernel on N vCPUs, each on its own thread,
//! with a vm-superio 16550 (its interrupt wired through an irqfd when the VM has an irqchip),
//! and collects what the guest printed and the interrupt vectors it reported.

use std::io::{self, Cursor, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::GuestAddress;
use vm_superio::{Serial, Trigger};
use vmkit::arch::x86_64::MpState;
use vmkit::{
    EventFd, Hypervisor, KickHandle, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig,
};
use vmkit_boot::entry;
use vmkit_guests::minimal;

/// What the harness answers for the kernel's MMIO read.
pub const MMIO_ANSWER: u32 = 0x1234_abcd;
/// A liveness bound for waits: reaching it means the guest is stuck, not slow.
pub const GIVE_UP: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
pub struct GuestConfig {
    pub vcpus: u32,
    pub irqchip: bool,
    /// Boot the BSP in interrupt mode (needs `irqchip`).
    pub interrupts: bool,
}

impl GuestConfig {
    pub fn smp(vcpus: u32) -> Self {
        GuestConfig {
            vcpus,
            irqchip: false,
            interrupts: false,
        }
    }

    pub fn interrupts(vcpus: u32) -> Self {
        GuestConfig {
            vcpus,
            irqchip: true,
            interrupts: true,
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

/// What one vCPU thread did.
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
    kicks: Vec<KickHandle>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<VcpuOutcome>>,
    /// The serial interrupt eventfd, registered as an irqfd on GSI 4 with an irqchip.
    pub serial_irq: EventFd,
}

fn vcpu_loop(
    mut vcpu: Box<dyn Vcpu>,
    uart: Arc<Mutex<Uart>>,
    reports: Sender<u8>,
    stop: Arc<AtomicBool>,
    all_kicks: Arc<Mutex<Vec<KickHandle>>>,
) -> VcpuOutcome {
    let mut outcome = VcpuOutcome::default();
    let id = vcpu.id();
    while !stop.load(Ordering::SeqCst) {
        match vcpu.run().unwrap() {
            VcpuExit::IoIn { port, data, .. } => {
                if (minimal::SERIAL_PORT..minimal::SERIAL_PORT + 8).contains(&port) {
                    let mut uart = uart.lock().unwrap();
                    for byte in data.iter_mut() {
                        *byte = uart.read((port - minimal::SERIAL_PORT) as u8);
                    }
                } else {
                    data.fill(0xff);
                }
            }
            VcpuExit::IoOut { port, data, .. } => match port {
                p if (minimal::SERIAL_PORT..minimal::SERIAL_PORT + 8).contains(&p) => {
                    let mut uart = uart.lock().unwrap();
                    for &byte in data {
                        uart.write((p - minimal::SERIAL_PORT) as u8, byte).unwrap();
                    }
                }
                minimal::IRQ_REPORT_PORT => {
                    let _ = reports.send(data[0]);
                }
                minimal::POWER_OFF_PORT if data == [minimal::POWER_OFF_VALUE] => {
                    outcome.powered_off = true;
                    stop.store(true, Ordering::SeqCst);
                    for kick in all_kicks.lock().unwrap().iter() {
                        kick.kick();
                    }
                }
                // PIC masks without an irqchip, and similar: nothing is there.
                _ => {}
            },
            VcpuExit::MmioRead { addr, data } => {
                assert_eq!(addr, minimal::MMIO_READ_ADDR);
                data.copy_from_slice(&MMIO_ANSWER.to_le_bytes());
            }
            VcpuExit::MmioWrite { addr, data } => {
                assert_eq!(addr, minimal::MMIO_WRITE_ADDR);
                outcome.mmio_written = data.to_vec();
            }
            VcpuExit::Hlt => {
                outcome.halted = true;
                break;
            }
            VcpuExit::Kicked | VcpuExit::Interrupted => {}
            other => panic!("vCPU {id}: unexpected exit {other:?}"),
        }
    }
    outcome
}

impl Guest {
    pub fn boot(hv: &dyn Hypervisor, config: GuestConfig) -> Guest {
        let vm: Arc<dyn Vm> = Arc::from(
            hv.create_vm(
                &VmConfig::default()
                    .max_vcpus(config.vcpus)
                    .irqchip(config.irqchip),
            )
            .unwrap(),
        );
        let ram = MemoryRegion::anonymous(GuestAddress(0), 4 << 20, MemoryFlags::empty()).unwrap();
        vm.add_memory_region(ram).unwrap();
        let memory = vm.memory();
        let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();

        let output = SharedOutput::default();
        let serial_irq = EventFd::new(0).unwrap();
        let uart = Arc::new(Mutex::new(Serial::new(
            EventFdTrigger(serial_irq.try_clone().unwrap()),
            output.clone(),
        )));
        if config.irqchip {
            vm.register_irqfd(&serial_irq, minimal::SERIAL_GSI, None)
                .unwrap();
        }

        let stop = Arc::new(AtomicBool::new(false));
        let (report_tx, reports) = mpsc::channel();
        let all_kicks = Arc::new(Mutex::new(Vec::new()));
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
            all_kicks.lock().unwrap().push(vcpu.kick_handle());
            vcpus.push(vcpu);
        }
        let kicks = all_kicks.lock().unwrap().clone();
        let threads = vcpus
            .into_iter()
            .map(|vcpu| {
                let (uart, reports, stop, all_kicks) = (
                    Arc::clone(&uart),
                    report_tx.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&all_kicks),
                );
                thread::spawn(move || vcpu_loop(vcpu, uart, reports, stop, all_kicks))
            })
            .collect();
        Guest {
            vm,
            output,
            reports,
            kicks,
            stop,
            threads,
            serial_irq,
        }
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
            let start = Instant::now();
            while !self.stop.load(Ordering::SeqCst) {
                assert!(
                    start.elapsed() < GIVE_UP,
                    "the guest never powered off; it printed {:?}",
                    self.serial()
                );
                thread::sleep(Duration::from_millis(1));
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        for kick in &self.kicks {
            kick.kick();
        }
        let outcomes = self
            .threads
            .into_iter()
            .map(|t| t.join().expect("a vCPU thread panicked"))
            .collect();
        let serial = String::from_utf8_lossy(&self.output.0.lock().unwrap()).into_owned();
        (serial, outcomes)
    }
}
