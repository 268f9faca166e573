//! The devices on a vmkit-bus, driven by real guests on the host's hypervisor (/dev/kvm):
//! vmkit's minimal kernel prints through the serial port and resets through the i8042, and a
//! few hand-assembled instructions report a status through the debug-exit port.
//!
//! On a host without /dev/kvm each test says so and returns.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use linux_loader::loader::elf::Elf;
use linux_loader::loader::KernelLoader;
use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress};
use vm_device::DeviceMmio;
use vm_memory::{Bytes, GuestAddress};
use vmkit::runner::{self, ExitAction, ExitHandler, RunnerOptions, VcpuOutcome, VmRunner};
use vmkit::{Hypervisor, MemoryFlags, MemoryRegion, Vcpu, VcpuExit, Vm, VmConfig};
use vmkit_boot::entry;
use vmkit_bus::{Bus, UnmappedCounts};
use vmkit_devices::{DebugExit, Serial, COM1, I8042, SERIAL_PORTS};
use vmkit_guests::{minimal, snippets};

const RAM_SIZE: usize = 4 << 20;
/// A liveness bound for a run: reaching it means the guest is stuck, not slow.
const GIVE_UP: Duration = Duration::from_secs(60);
const MMIO_ANSWER: u32 = 0x0bad_cafe;

/// The host's hypervisor, or `None` (after saying so) on a host without /dev/kvm.
fn hypervisor(test: &str) -> Option<Box<dyn Hypervisor>> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("{test}: skipped: this host has no /dev/kvm");
        return None;
    }
    Some(vmkit::open().expect("/dev/kvm exists but cannot be opened"))
}

/// The MMIO window the minimal kernel reads (offset 0) and writes (offset 4).
#[derive(Default)]
struct MmioProbe {
    written: AtomicU32,
}

impl DeviceMmio for MmioProbe {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        assert_eq!((offset, data.len()), (0, 4));
        data.copy_from_slice(&MMIO_ANSWER.to_le_bytes());
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        assert_eq!(offset, 4);
        let value = u32::from_le_bytes(data.try_into().expect("a 4-byte write"));
        self.written.store(value, Ordering::SeqCst);
    }
}

struct Booted {
    serial: String,
    vendor: [u8; 12],
    unmapped: UnmappedCounts,
    reset_signals: u64,
}

/// Boots the minimal kernel with the devices on a bus, until the i8042 reset.
fn boot_minimal(hv: &dyn Hypervisor, mmio: Option<Arc<MmioProbe>>) -> Booted {
    let vm = hv.create_vm(&VmConfig::default()).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let cpuid = hv.supported_cpuid();
    vcpu.set_cpuid(&cpuid).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0).unwrap();

    let serial = Arc::new(Serial::new(Vec::new()).unwrap());
    let i8042 = Arc::new(I8042::new().unwrap());
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial.clone())
        .unwrap();
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())
        .unwrap();
    if let Some(probe) = mmio {
        bus.register_mmio(MmioAddress(minimal::MMIO_READ_ADDR), 8, probe)
            .unwrap();
    }

    // The vCPU on its thread (vmkit's runner), its exits on the bus; the i8042's reset
    // command powers off. Malformed and unmapped accesses are counted by the bus (and checked
    // below); any other exit fails the run.
    let bus = Arc::new(bus);
    let handler = {
        let (bus, i8042) = (Arc::clone(&bus), Arc::clone(&i8042));
        runner::from_fn(move |id, exit| match bus.handle(id, exit) {
            ExitAction::Continue if i8042.take_reset_request() => ExitAction::PowerOff,
            action => action,
        })
    };
    let options = RunnerOptions::default().command_timeout(GIVE_UP);
    let running = VmRunner::start_with(vec![vcpu], handler, options).unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    let printed = || serial.with_output(|out| String::from_utf8_lossy(out).into_owned());
    assert!(
        matches!(finished[0].outcome, Ok(VcpuOutcome::PowerOff)),
        "{:?}; serial: {:?}",
        finished[0].outcome,
        printed()
    );
    assert_eq!(bus.malformed_exits(), 0);

    let leaf0 = cpuid.iter().find(|e| e.function == 0).unwrap();
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    Booted {
        serial: printed(),
        vendor,
        unmapped: bus.unmapped(),
        reset_signals: i8042.reset_evt().read().unwrap_or(0),
    }
}

#[test]
fn minimal_kernel_prints_through_the_serial_port_and_resets_through_the_i8042() {
    let Some(hv) = hypervisor("minimal_kernel_prints_through_the_serial_port") else {
        return;
    };
    let probe = Arc::new(MmioProbe::default());
    let booted = boot_minimal(hv.as_ref(), Some(probe.clone()));

    assert!(
        booted.serial.contains(minimal::HELLO),
        "{:?}",
        booted.serial
    );
    assert_eq!(
        booted.serial,
        minimal::expected_serial(&booted.vendor, MMIO_ANSWER)
    );
    assert_eq!(probe.written.load(Ordering::SeqCst), MMIO_ANSWER + 1);
    assert_eq!(booted.reset_signals, 1, "the reset eventfd fired once");
    assert_eq!(booted.unmapped, UnmappedCounts::default());
}

#[test]
fn minimal_kernel_reads_all_ones_from_unmapped_mmio() {
    let Some(hv) = hypervisor("minimal_kernel_reads_all_ones_from_unmapped_mmio") else {
        return;
    };
    let booted = boot_minimal(hv.as_ref(), None);

    assert!(
        booted.serial.contains(minimal::HELLO),
        "{:?}",
        booted.serial
    );
    assert_eq!(
        booted.serial,
        minimal::expected_serial(&booted.vendor, u32::MAX)
    );
    assert_eq!(booted.reset_signals, 1);
    assert_eq!(
        booted.unmapped,
        UnmappedCounts {
            pio_reads: 0,
            pio_writes: 0,
            mmio_reads: 1,
            mmio_writes: 1,
        }
    );
}

/// Runs `code` in long mode with a debug-exit port on the bus, until `hlt`.
fn run_code(hv: &dyn Hypervisor, code: &[u8]) -> (Box<dyn Vm>, Arc<DebugExit>) {
    const CODE_ADDR: u64 = 0x10_0000;
    let vm = hv.create_vm(&VmConfig::default()).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    memory.write_slice(code, GuestAddress(CODE_ADDR)).unwrap();
    let vcpu: Box<dyn Vcpu> = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&hv.supported_cpuid()).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, CODE_ADDR).unwrap();

    let debug_exit = Arc::new(DebugExit::new().unwrap());
    let mut bus = Bus::new();
    bus.register_pio(
        PioAddress(DebugExit::PORT),
        DebugExit::PORTS,
        debug_exit.clone(),
    )
    .unwrap();
    // `hlt` ends the run; any exit but port and MMIO accesses fails it.
    let bus = Arc::new(bus);
    let handler = {
        let bus = Arc::clone(&bus);
        runner::from_fn(move |id, exit| match exit {
            VcpuExit::Hlt => ExitAction::Halt,
            _ => bus.handle(id, exit),
        })
    };
    let options = RunnerOptions::default().command_timeout(GIVE_UP);
    let running = VmRunner::start_with(vec![vcpu], handler, options).unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    assert!(
        matches!(finished[0].outcome, Ok(VcpuOutcome::Halted)),
        "the guest never halted: {:?}",
        finished[0].outcome
    );
    // Every access went to a device.
    assert_eq!(bus.malformed_exits(), 0);
    assert_eq!(bus.unmapped(), UnmappedCounts::default());
    (vm, debug_exit)
}

#[test]
fn a_guest_reports_its_status_through_the_debug_exit_port() {
    let Some(hv) = hypervisor("a_guest_reports_its_status_through_the_debug_exit_port") else {
        return;
    };
    // mov dx, 0x501; mov eax, 0x1234_5678; out dx, eax; hlt
    assert_eq!(snippets::DEBUG_EXIT_PORT, DebugExit::PORT);
    let (_vm, debug_exit) = run_code(hv.as_ref(), snippets::DEBUG_EXIT_DWORD);
    assert_eq!(
        debug_exit.exit_code(),
        Some(snippets::DEBUG_EXIT_DWORD_STATUS)
    );
    assert_eq!(debug_exit.exit_evt().read().unwrap(), 1);

    // mov dx, 0x501; mov al, 3; out dx, al; hlt
    let (_vm, debug_exit) = run_code(hv.as_ref(), snippets::DEBUG_EXIT_BYTE);
    assert_eq!(
        debug_exit.exit_code(),
        Some(u32::from(snippets::DEBUG_EXIT_BYTE_STATUS))
    );
}
