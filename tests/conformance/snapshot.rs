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
    machine_with(hv, config, MemoryFlags::empty())
}

fn machine_with(hv: &dyn Hypervisor, config: &VmConfig, ram_flags: MemoryFlags) -> Machine {
    let vm = hv.create_vm(config).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, ram_flags).unwrap();
    vm.add_memory_region(ram).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    Machine::around(vm, vcpu)
}

impl Machine {
    /// Serial and i8042 on a bus, around a VM and its vCPU.
    fn around(vm: Box<dyn Vm>, vcpu: Box<dyn Vcpu>) -> Machine {
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

/// The environment variable that makes the conformance binary act as the restoring process.
pub const RESTORE_DIR_ENV: &str = "VMKIT_CONFORMANCE_RESTORE_DIR";
/// `lazy` or `eager`, for the restoring process.
pub const RESTORE_MODE_ENV: &str = "VMKIT_CONFORMANCE_RESTORE_MODE";

/// The restoring process: rebuilds the VM from the snapshot directory, runs the guest to its
/// power-off and prints what it wrote on the serial port.
pub fn restore_child(dir: &str) {
    let hv = vmkit::open().unwrap();
    let mode = match std::env::var(RESTORE_MODE_ENV).as_deref() {
        Ok("eager") => snapshot::MemoryRestore::Eager,
        _ => snapshot::MemoryRestore::Lazy,
    };
    let restored = snapshot::restore(std::path::Path::new(dir), hv.as_ref(), mode).unwrap();
    let mut vcpus = restored.vcpus;
    let mut machine = Machine::around(restored.vm, vcpus.remove(0));
    machine.run(|_| false);
    print!("{}", machine.output());
}

pub fn continues_in_a_new_process(hv: &dyn Hypervisor) {
    let config = VmConfig::default().irqchip(true).pit(true);
    let mut first = machine(hv, &config);
    let memory = first.vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
    first.vcpu.set_cpuid(&hv.supported_cpuid()).unwrap();
    boot::configure_long_mode(first.vcpu.as_ref(), &memory, kernel.kernel_load.0).unwrap();
    let mut regs = first.vcpu.regs().unwrap();
    regs.rdx = minimal::ENTRY_FLAG_COUNT;
    first.vcpu.set_regs(&regs).unwrap();
    first.run(|out| out.contains(&format!("{}\n", minimal::count_line(10))));

    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-snapshot-").unwrap();
    let msrs = snapshot::readable_msrs(first.vcpu.as_ref(), &hv.msr_index_list());
    snapshot::save(
        dir.as_path(),
        hv,
        &config,
        first.vm.as_ref(),
        &[first.vcpu.as_ref()],
        &msrs,
        |_devices| Ok(()),
    )
    .unwrap();
    let before = first.output();
    assert_eq!(minimal::check_count_serial(&before).unwrap(), (1, 10));
    drop(first);

    for mode in ["lazy", "eager"] {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(RESTORE_DIR_ENV, dir.as_path())
            .env(RESTORE_MODE_ENV, mode)
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "{mode} restore failed: {}",
            String::from_utf8_lossy(&child.stderr)
        );
        let after = String::from_utf8(child.stdout).unwrap();
        assert_eq!(
            minimal::check_count_serial(&after).unwrap(),
            (11, minimal::COUNT_LIMIT),
            "{mode}: the count goes on in the new process:\n{after}"
        );
    }

    // A corrupted state file is refused, naming the file, before anything is mapped.
    let state = dir.as_path().join(snapshot::STATE_FILE);
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&state, bytes).unwrap();
    let err = snapshot::restore(dir.as_path(), hv, snapshot::MemoryRestore::Lazy)
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, snapshot::SnapshotError::State { .. }),
        "{err}"
    );
    let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(chain.contains("checksum"), "{chain}");
}

pub fn a_chain_of_diffs_restores_like_a_full_snapshot(hv: &dyn Hypervisor) {
    let config = VmConfig::default();
    let mut vm = machine_with(hv, &config, MemoryFlags::LOG_DIRTY);
    let memory = vm.vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
    vm.vcpu.set_cpuid(&hv.supported_cpuid()).unwrap();
    boot::configure_long_mode(vm.vcpu.as_ref(), &memory, kernel.kernel_load.0).unwrap();
    let mut regs = vm.vcpu.regs().unwrap();
    regs.rdx = minimal::ENTRY_FLAG_COUNT;
    vm.vcpu.set_regs(&regs).unwrap();
    let msrs = snapshot::readable_msrs(vm.vcpu.as_ref(), &hv.msr_index_list());
    let root = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/vmkit-diff-").unwrap();
    let dirs: Vec<_> = (0..3)
        .map(|i| root.as_path().join(format!("snap{i}")))
        .collect();
    let at = |n: u64| format!("{}\n", minimal::count_line(n));

    vm.run(|out| out.contains(&at(5)));
    snapshot::save(
        &dirs[0],
        hv,
        &config,
        vm.vm.as_ref(),
        &[vm.vcpu.as_ref()],
        &msrs,
        |_| Ok(()),
    )
    .unwrap();
    let mut tracker = snapshot::DiffTracker::start(vm.vm.as_ref()).unwrap();
    for (i, n) in [(1, 10), (2, 15)] {
        vm.run(|out| out.contains(&at(n)));
        tracker
            .save_diff(
                &dirs[i],
                &dirs[i - 1],
                hv,
                &config,
                vm.vm.as_ref(),
                &[vm.vcpu.as_ref()],
                &msrs,
                |_| Ok(()),
            )
            .unwrap();
        assert_eq!(tracker.pending_pages(), 0, "written diffs owe nothing");
    }
    // The guest touches a handful of pages (stack, counter, page-table accessed bits) while
    // counting: each diff is a small part of the 4 MiB.
    for dir in &dirs[1..] {
        let full = std::fs::metadata(dirs[0].join(snapshot::MEMORY_FILE))
            .unwrap()
            .len();
        let diff = std::fs::metadata(dir.join(snapshot::MEMORY_FILE))
            .unwrap()
            .len();
        assert!(diff * 4 < full, "diff {diff} bytes vs full {full} bytes");
    }
    drop(vm);

    // Each link of the chain restores to the point it was taken at.
    for (dir, first) in dirs.iter().zip([6, 11, 16]) {
        let restored = snapshot::restore(dir, hv, snapshot::MemoryRestore::Lazy).unwrap();
        let mut vcpus = restored.vcpus;
        let mut again = Machine::around(restored.vm, vcpus.remove(0));
        again.run(|_| false);
        assert_eq!(
            minimal::check_count_serial(&again.output()).unwrap(),
            (first, minimal::COUNT_LIMIT),
            "{}",
            dir.display()
        );
    }
}

crate::scenarios![
    a_chain_of_diffs_restores_like_a_full_snapshot => crate::dirty_log,
    continues_in_a_new_process => crate::pit,
    vcpu_and_memory_move_to_a_fresh_vm,
    with_irqchip_and_pit_state_too => crate::pit,
];
