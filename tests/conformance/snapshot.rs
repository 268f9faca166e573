//! vCPU and VM state moves to a fresh VM: the minimal kernel counts, the host stops it
//! mid-count, captures every vCPU register set, the interrupt controllers, the PIT, the clock
//! and guest memory, builds a new VM from them, and the count goes on where it was.

use std::io::Cursor;
use std::sync::Arc;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_device::bus::PioAddress;
use vm_memory::{Bytes, GuestAddress};
use vmkit::arch::x86_64::{boot, msr_index};
use vmkit::snapshot::{self, Features};
use vmkit::{Hypervisor, MemoryFlags, MemoryRegion, Vcpu, Vm, VmConfig};
use vmkit_bus::{Bus, ExitOutcome};
use vmkit_devices::{Serial, COM1, I8042, SERIAL_PORTS};
use vmkit_guests::minimal;

const RAM_SIZE: usize = 4 << 20;

struct Machine {
    vm: Box<dyn Vm>,
    vcpu: Box<dyn Vcpu>,
    serial: Arc<Serial<Vec<u8>>>,
    i8042: Arc<I8042>,
    bus: Bus,
}

fn machine(hv: &dyn Hypervisor, config: &VmConfig) -> Machine {
    let vm = hv.create_vm(config).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let serial = Arc::new(Serial::new(Vec::new()).unwrap());
    let i8042 = Arc::new(I8042::new().unwrap());
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial.clone())
        .unwrap();
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())
        .unwrap();
    Machine {
        vm,
        vcpu,
        serial,
        i8042,
        bus,
    }
}

impl Machine {
    fn output(&self) -> String {
        String::from_utf8(self.serial.with_output(|out| out.clone())).unwrap()
    }

    /// Runs until `until` returns true after an exit, or the guest powers off.
    fn run(&mut self, until: impl Fn(&str) -> bool) {
        while !self.i8042.take_reset_request() {
            let mut exit = self.vcpu.run().unwrap();
            if let ExitOutcome::NotBusExit = self.bus.handle_exit(&mut exit) {
                panic!("unexpected exit {exit:?}");
            }
            if until(&self.output()) {
                return;
            }
        }
    }
}

fn state_moves(hv: &dyn Hypervisor, config: VmConfig) {
    let features = Features {
        irqchip: config.irqchip,
        pit: config.pit,
        xsave: hv.capabilities().xsave && hv.capabilities().xcrs,
    };
    let mut first = machine(hv, &config);
    let memory = first.vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
    first.vcpu.set_cpuid(&hv.supported_cpuid()).unwrap();
    boot::configure_long_mode(first.vcpu.as_ref(), &memory, kernel.kernel_load.0).unwrap();
    let mut regs = first.vcpu.regs().unwrap();
    regs.rdx = minimal::ENTRY_FLAG_COUNT;
    first.vcpu.set_regs(&regs).unwrap();

    // Stop right after the guest printed "count 10" and a few bytes more, mid-line.
    first.run(|out| out.contains(&format!("{}\nco", minimal::count_line(10))));
    let msrs = snapshot::readable_msrs(first.vcpu.as_ref(), &hv.msr_index_list());
    let vcpu_state = snapshot::save_vcpu(first.vcpu.as_ref(), &msrs, features).unwrap();
    let vm_state = snapshot::save_vm(first.vm.as_ref(), features).unwrap();
    let mut ram = vec![0u8; RAM_SIZE];
    memory.read_slice(&mut ram, GuestAddress(0)).unwrap();
    let serial_before = first.output();
    drop(first);

    // A new VM, new devices, the saved state; the serial port's own state is the device
    // crates' business and is not under test here, so the new port starts fresh.
    let mut second = machine(hv, &config);
    second
        .vm
        .memory()
        .write_slice(&ram, GuestAddress(0))
        .unwrap();
    snapshot::restore_vm(second.vm.as_ref(), &vm_state).unwrap();
    snapshot::restore_vcpu(second.vcpu.as_ref(), &vcpu_state).unwrap();
    // The restored vCPU reads back as saved, but for the TSC, which kept counting.
    let without_tsc = |mut state: snapshot::VcpuState| {
        state.msrs.retain(|m| m.index != msr_index::TSC);
        state
    };
    let reread = snapshot::save_vcpu(second.vcpu.as_ref(), &msrs, features).unwrap();
    assert!(
        without_tsc(reread) == without_tsc(vcpu_state.clone()),
        "the restored vCPU does not read back as saved"
    );
    second.run(|_| false);

    let (first_n, last_n) = minimal::check_count_serial(&serial_before).unwrap();
    let (resumed, end) = minimal::check_count_serial(&second.output()).unwrap();
    assert_eq!((first_n, last_n), (1, 10));
    assert_eq!(
        resumed,
        11,
        "the count continues, it does not restart:\n{}",
        second.output()
    );
    assert_eq!(end, minimal::COUNT_LIMIT);
    minimal::check_count_serial(&(serial_before + &second.output())).unwrap();
}

pub fn vcpu_and_memory_move_to_a_fresh_vm(hv: &dyn Hypervisor) {
    state_moves(hv, VmConfig::default());
}

pub fn with_irqchip_and_pit_state_too(hv: &dyn Hypervisor) {
    state_moves(hv, VmConfig::default().irqchip(true).pit(true));
}

crate::scenarios![
    vcpu_and_memory_move_to_a_fresh_vm,
    with_irqchip_and_pit_state_too => crate::pit,
];
