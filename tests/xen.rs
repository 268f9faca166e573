//! vmkit's Xen backend on a real Xen: domain lifecycle and leaks, guest memory, vCPU state,
//! ioreq exits in both directions, halts, kicks, shutdown reasons, and the minimal kernel
//! booted through its PVH entry, printing through vmkit's 16550.
//!
//! These run in a Xen dom0 (`ci/xen/run.sh` boots one under QEMU and runs this binary with
//! `--test-threads=1`). On a host that is not a Xen dom0 (no `/dev/xen/privcmd`) each test
//! says so and returns; the tests of the backend that need no Xen (ABI layout, the ioreq
//! protocol, state conversions) are unit tests in `src/xen/`.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;

use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_device::bus::PioAddress;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, MemoryRegionAddress};
use vmkit::arch::x86_64::{msr_index, Msr};
use vmkit::xen::Xen;
use vmkit::{
    GuestDebug, Hypervisor, HypervisorKind, MemoryFlags, MemoryRegion, MemorySlot, SystemEventKind,
    Vcpu, VcpuExit, VmConfig,
};
use vmkit_boot::entry;
use vmkit_bus::{Bus, ExitOutcome};
use vmkit_devices::{Serial, COM1, I8042, SERIAL_PORTS};
use vmkit_guests::minimal;
use vmkit_guests::snippets::{self, BYTE_REPORT_PORT, REPORT_PORT};

use common::{long_mode_vm, CODE_ADDR, MMIO_ADDR};

/// Xen, or `None` (after saying why) on a host that is not a Xen dom0.
fn xen(test: &str) -> Option<Xen> {
    if !Path::new(vmkit::xen::PRIVCMD_PATH).exists() {
        eprintln!(
            "{test}: skipped: not a Xen dom0 ({} is missing)",
            vmkit::xen::PRIVCMD_PATH
        );
        return None;
    }
    Some(Xen::new().expect("this is a Xen dom0, so Xen must open"))
}

/// Runs until the next exit that is not a kick, as a printable string.
fn next_exit(vcpu: &mut dyn Vcpu) -> String {
    format!("{:?}", vcpu.run().unwrap())
}

#[test]
fn a_split_irqchip_refuses_the_pit_bad_route_counts_and_what_xen_lacks_for_it() {
    let Some(xen) =
        xen("a_split_irqchip_refuses_the_pit_bad_route_counts_and_what_xen_lacks_for_it")
    else {
        return;
    };
    let refused = |config: VmConfig| match xen.create_vm(&config) {
        Err(vmkit::HypervisorError::InvalidConfig { reason }) => reason,
        other => panic!("expected InvalidConfig, got {:?}", other.map(|_| ())),
    };
    assert!(refused(VmConfig::default().split_irqchip(24).pit(true)).contains("split irqchip"));
    for routes in [0, 23, 49] {
        assert!(refused(VmConfig::default().split_irqchip(routes)).contains("24 to 48"));
    }
    let vm = xen
        .create_vm(&VmConfig::default().split_irqchip(24))
        .unwrap();
    let err = vm.irqchip_state().unwrap_err();
    assert!(matches!(err, vmkit::VmError::SplitIrqchip { .. }), "{err}");
    // Xen has no IOAPIC or PIC in this domain: irqchip routes and unrouted lines are refused
    // with the reason, MSI routes (the VMM's IOAPIC's) are taken.
    let err = vm
        .set_gsi_routing(&vmkit::IrqRoute::pc_defaults())
        .unwrap_err();
    assert!(err.to_string().contains("split irqchip"), "{err}");
    let err = vm.set_irq_line(5, true).unwrap_err();
    assert!(
        matches!(err, vmkit::VmError::InvalidRoute { gsi: 5, .. }),
        "{err}"
    );
    let route = vmkit::IrqRoute::Msi {
        gsi: 5,
        msi: vmkit::MsiMessage::x86(0, 0x35),
    };
    vm.set_gsi_routing(&[route]).unwrap();
    vm.set_irq_line(5, true).unwrap();
    // A level-triggered irqfd has no Xen IOAPIC pin to follow: the VMM's IOAPIC hears EOIs.
    let (irqfd, resample) = (
        vmkit::EventFd::new(0).unwrap(),
        vmkit::EventFd::new(0).unwrap(),
    );
    let err = vm.register_irqfd(&irqfd, 5, Some(&resample)).unwrap_err();
    assert!(matches!(err, vmkit::VmError::Unsupported { .. }), "{err}");
    // An irqfd on a GSI the IOAPIC has not routed yet is taken, as on KVM.
    vm.register_irqfd(&irqfd, 9, None).unwrap();
}

#[test]
fn open_picks_xen_and_reports_its_capabilities() {
    let Some(xen) = xen("open_picks_xen_and_reports_its_capabilities") else {
        return;
    };
    let opened = vmkit::open().unwrap();
    assert_eq!(opened.kind(), HypervisorKind::Xen, "a dom0 has no /dev/kvm");
    let caps = xen.capabilities();
    assert_eq!(caps.max_vcpus, 128);
    assert!(caps.max_memory_slots >= 64);
    // Xen's platform with VmConfig::irqchip; resample through the IOAPIC's record.
    assert!(caps.irqchip && caps.irqfd && caps.msi && caps.irqfd_resample);
    // Xen's local APICs with the VMM's IOAPIC; level EOIs from the local APICs' record.
    assert!(caps.split_irqchip);
    assert!(caps
        .reserved
        .iter()
        .any(|r| r.device.starts_with("Xen debug console")));
    assert!(
        caps.dirty_log && caps.dirty_ring_max_entries == 65536 && caps.dirty_ring_emulated,
        "log-dirty, rings emulated over it with KVM's size limit"
    );
    let leaf0 = caps.cpuid.iter().find(|e| e.function == 0).unwrap();
    assert!(leaf0.eax >= 0xd, "max basic leaf {:#x}", leaf0.eax);
    assert!(caps.msrs.contains(&msr_index::LSTAR));
    let memory = xen.host_memory().unwrap();
    assert!(
        memory.free > 64 << 20 && memory.free < memory.total,
        "{memory:?}"
    );
    assert!(xen.domain_ids().unwrap().contains(&0), "dom0 is listed");
}

/// Xen's free memory once it stops changing (Xen frees some of a dead domain's memory
/// from RCU callbacks and keeps allocator pools, so single samples jitter by a few pages).
fn settled_free_memory(xen: &Xen) -> u64 {
    let mut last = xen.host_memory().unwrap().free;
    let mut same = 0;
    let start = Instant::now();
    while same < 3 && start.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(50));
        let now = xen.host_memory().unwrap().free;
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// How far Xen's settled free memory may fall short of where it was without a leak. Xen's
/// own allocators grow in steps as domains come and go (measured over 40 VMs here: 20 KiB
/// after 4, 40 KiB after 28, flat in between); a VM's RAM is 16 MiB. The pages vmkit could
/// leak are the domain's own (guest RAM, the ioreq page), and while a single one of those
/// is still mapped Xen keeps the domain listed as dying, which the domain list catches.
const FREE_MEMORY_SLACK: u64 = 128 << 10;

/// Waits until Xen's domain list is back to `before.0` and its free memory to `before.1`.
fn wait_for_cleanup(xen: &Xen, before: (Vec<u32>, u64)) {
    let start = Instant::now();
    loop {
        let domains = xen.domain_ids().unwrap();
        if domains == before.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "leaked domains: {domains:?}, before {:?}",
            before.0
        );
        thread::sleep(Duration::from_millis(20));
    }
    let free = settled_free_memory(xen);
    assert!(
        free + FREE_MEMORY_SLACK >= before.1,
        "leaked memory: {free} bytes free, {} before ({} KiB missing)",
        before.1,
        (before.1 - free) >> 10
    );
}

/// One VM's life: RAM (plus a region added and removed again), two vCPUs that each run
/// to a port write and a halt. Returns a view of its guest memory.
fn vm_lifecycle(xen: &Xen) -> vmkit::GuestMemoryMmap {
    let vm = xen
        .create_xen_vm(&VmConfig::default().max_vcpus(2))
        .unwrap();
    let domid = vm.domid();
    assert!(xen.domain_ids().unwrap().contains(&domid));
    let free_before_ram = xen.host_memory().unwrap().free;
    let ram = MemoryRegion::anonymous(GuestAddress(0), 16 << 20, MemoryFlags::empty()).unwrap();
    vmkit::Vm::add_memory_region(&vm, ram).unwrap();
    let taken = free_before_ram - xen.host_memory().unwrap().free;
    assert!(
        taken >= 16 << 20,
        "Xen allocated only {taken} bytes for 16 MiB"
    );
    let extra =
        MemoryRegion::anonymous(GuestAddress(1 << 30), 1 << 20, MemoryFlags::empty()).unwrap();
    let slot = vmkit::Vm::add_memory_region(&vm, extra).unwrap();
    vmkit::Vm::remove_memory_region(&vm, slot).unwrap();
    let memory = vmkit::Vm::memory(&vm);
    memory
        .write_slice(snippets::PIO_OUT_HLT, GuestAddress(CODE_ADDR)) // out 0x81, al; hlt
        .unwrap();
    for id in 0..2 {
        let mut vcpu = vm.create_xen_vcpu(id).unwrap();
        entry::configure_long_mode(&vcpu, &memory, CODE_ADDR).unwrap();
        assert!(matches!(
            vcpu.run().unwrap(),
            VcpuExit::IoOut {
                port: BYTE_REPORT_PORT,
                ..
            }
        ));
        assert_eq!(next_exit(&mut vcpu), "Hlt");
    }
    memory
}

#[test]
fn no_domain_or_page_outlives_its_vm() {
    let Some(xen) = xen("no_domain_or_page_outlives_its_vm") else {
        return;
    };
    // Xen's own allocators keep some memory for reuse after the first domains of a kind
    // (measured: up to 20 KiB for two-vCPU domains, then steady).
    for _ in 0..2 {
        drop(vm_lifecycle(&xen));
    }
    let before = (xen.domain_ids().unwrap(), settled_free_memory(&xen));
    // Enough rounds that a page lost per VM would show beyond the slack.
    const ROUNDS: usize = 12;
    let mut kept_view = None;
    for round in 0..ROUNDS {
        let memory = vm_lifecycle(&xen);
        if round == 1 {
            // A view of guest memory may outlive the VM; the domain goes when it does.
            kept_view = Some(memory);
        }
    }
    let view = kept_view.unwrap();
    assert_eq!(view.num_regions(), 1);
    let mut code = vec![0u8; snippets::PIO_OUT_HLT.len()];
    view.read_slice(&mut code, GuestAddress(CODE_ADDR)).unwrap();
    assert_eq!(code, snippets::PIO_OUT_HLT);
    drop(view);
    wait_for_cleanup(&xen, before);
}

#[test]
fn guest_memory_is_shared_both_ways_and_comes_back_on_removal() {
    let Some(xen) = xen("guest_memory_is_shared_both_ways_and_comes_back_on_removal") else {
        return;
    };
    // mov rax, [0x300000]; out 0x80, eax; mov dword [0x300008], 0x600df00d; out 0x81, al; hlt
    let code = snippets::RAM_READ_THEN_WRITE;
    let (read_addr, store_addr) = (snippets::RAM_READ_ADDR, snippets::RAM_STORE_ADDR);
    // Contents written into the region before it is added arrive in the guest.
    let ram =
        MemoryRegion::anonymous(GuestAddress(0x40_0000), 0x20_0000, MemoryFlags::empty()).unwrap();
    ram.mapping()
        .write_obj(0xabcd_1234u32, MemoryRegionAddress(0x1000))
        .unwrap();
    let mut t = long_mode_vm(&xen, code);
    let slot = t.vm.add_memory_region(ram).unwrap();
    t.vm.memory()
        .write_obj(0x1122_3344u32, GuestAddress(read_addr))
        .unwrap();
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: REPORT_PORT,
            data,
            ..
        } => {
            assert_eq!(
                data,
                0x1122_3344u32.to_le_bytes(),
                "the guest read the VMM's write"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        t.vcpu.run().unwrap(),
        VcpuExit::IoOut {
            port: BYTE_REPORT_PORT,
            ..
        }
    ));
    let written: u32 = t.vm.memory().read_obj(GuestAddress(store_addr)).unwrap();
    assert_eq!(written, snippets::MARKER, "the VMM reads the guest's write");
    let removed = t.vm.remove_memory_region(slot).unwrap();
    assert_eq!(removed.guest_addr(), GuestAddress(0x40_0000));
    let value: u32 = removed
        .mapping()
        .read_obj(MemoryRegionAddress(0x1000))
        .unwrap();
    assert_eq!(value, 0xabcd_1234);
    let ram = t.vm.remove_memory_region(MemorySlot(0)).unwrap();
    let value: u32 = ram
        .mapping()
        .read_obj(MemoryRegionAddress(store_addr))
        .unwrap();
    assert_eq!(
        value,
        snippets::MARKER,
        "the removed region holds what the guest wrote"
    );
}

#[test]
fn port_and_mmio_exits_carry_data_both_ways() {
    let Some(xen) = xen("port_and_mmio_exits_carry_data_both_ways") else {
        return;
    };
    // in eax, 0x71 (dword); mov ebx, 0xd0000000; mov [rbx+4], eax (MMIO write);
    // mov ecx, [rbx] (MMIO read); mov eax, ecx; out 0x80, eax; mov dx, 0x3f8; mov al, 0x21;
    // out dx, al; hlt
    assert_eq!(snippets::MMIO_BASE, MMIO_ADDR);
    let mut t = long_mode_vm(&xen, snippets::PORT_MMIO_ECHO);
    match t.vcpu.run().unwrap() {
        VcpuExit::IoIn {
            port: snippets::PORT_READS_DWORD_PORT,
            size: 4,
            data,
        } => data.copy_from_slice(&[1, 2, 3, 4]),
        other => panic!("expected a dword port read, got {other:?}"),
    }
    match t.vcpu.run().unwrap() {
        VcpuExit::MmioWrite { addr, data } => {
            let echo = MMIO_ADDR + snippets::MMIO_ECHO_OFFSET;
            assert_eq!((addr, data), (echo, &[1, 2, 3, 4][..]))
        }
        other => panic!("expected an MMIO write of what the port read gave, got {other:?}"),
    }
    match t.vcpu.run().unwrap() {
        VcpuExit::MmioRead { addr, data } => {
            assert_eq!((addr, data.len()), (MMIO_ADDR, 4));
            data.copy_from_slice(&0x5566_7788u32.to_le_bytes());
        }
        other => panic!("expected an MMIO read, got {other:?}"),
    }
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: REPORT_PORT,
            size: 4,
            data,
        } => {
            assert_eq!(data, 0x5566_7788u32.to_le_bytes())
        }
        other => panic!("expected the guest to echo the MMIO value, got {other:?}"),
    }
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: snippets::SERIAL_PORT,
            size: 1,
            data,
        } => assert_eq!(data, [snippets::SERIAL_BYTE]),
        other => panic!("expected a byte to the serial port, got {other:?}"),
    }
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
}

#[test]
fn vcpu_state_reaches_the_guest_and_comes_back() {
    let Some(xen) = xen("vcpu_state_reaches_the_guest_and_comes_back") else {
        return;
    };
    // add rax, rbx; mov ecx, 0xc0000082 (LSTAR); rdmsr; out 0x80, eax; hlt
    let code = snippets::ADD_AND_RDMSR;
    assert_eq!(snippets::RDMSR_INDEX, msr_index::LSTAR);
    let mut t = long_mode_vm(&xen, code);
    let mut regs = t.vcpu.regs().unwrap();
    assert_eq!(regs.rip, CODE_ADDR);
    regs.rax = 40;
    regs.rbx = 2;
    regs.r15 = 0xdead_0000_beef;
    t.vcpu.set_regs(&regs).unwrap();
    assert_eq!(t.vcpu.regs().unwrap(), regs);
    let mut sregs = t.vcpu.sregs().unwrap();
    assert!(
        sregs.cs.l && sregs.efer & 0x500 == 0x500,
        "long mode: {sregs:?}"
    );
    sregs.fs.base = 0x7fff_0000_1000;
    sregs.idt.limit = 0xfff;
    t.vcpu.set_sregs(&sregs).unwrap();
    assert_eq!(t.vcpu.sregs().unwrap(), sregs);
    let lstar = Msr {
        index: msr_index::LSTAR,
        data: 0xffff_ffff_8123_4567,
    };
    t.vcpu.set_msrs(&[lstar]).unwrap();
    assert_eq!(t.vcpu.msrs(&[msr_index::LSTAR]).unwrap(), [lstar]);
    let mut fpu = t.vcpu.fpu().unwrap();
    fpu.xmm[3] = *b"vmkit on xen! :)";
    t.vcpu.set_fpu(&fpu).unwrap();
    assert_eq!(t.vcpu.fpu().unwrap().xmm[3], fpu.xmm[3]);
    match t.vcpu.run().unwrap() {
        // rdmsr of LSTAR: the low half in eax.
        VcpuExit::IoOut {
            port: REPORT_PORT,
            data,
            ..
        } => assert_eq!(data, 0x8123_4567u32.to_le_bytes()),
        other => panic!("{other:?}"),
    }
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
    let after = t.vcpu.regs().unwrap();
    assert_eq!(
        after.rip,
        CODE_ADDR + code.len() as u64,
        "past the hlt, as on KVM"
    );
    assert_eq!(after.rbx, 2);
    assert_eq!(after.r15, 0xdead_0000_beef);
    assert_eq!(t.vcpu.sregs().unwrap().fs.base, 0x7fff_0000_1000);
}

#[test]
fn a_halted_vcpu_goes_on_after_its_hlt() {
    let Some(xen) = xen("a_halted_vcpu_goes_on_after_its_hlt") else {
        return;
    };
    // hlt; out 0x82, al; hlt; out 0x83, al; hlt (not port 0x80: Xen passes byte accesses
    // to it through to the hardware)
    let mut t = long_mode_vm(&xen, snippets::HLT_OUT_HLT);
    for port in [snippets::HALT_FIRST_PORT, snippets::HALT_SECOND_PORT] {
        assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
        match t.vcpu.run().unwrap() {
            VcpuExit::IoOut { port: p, .. } => assert_eq!(p, port),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
}

#[test]
fn kicks_stop_a_spinning_guest_and_a_waiting_one() {
    let Some(xen) = xen("kicks_stop_a_spinning_guest_and_a_waiting_one") else {
        return;
    };
    // spin: jmp spin
    let mut t = long_mode_vm(&xen, snippets::SPIN);
    let kick = t.vcpu.kick_handle();
    let kicker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        kick.kick();
    });
    assert!(matches!(t.vcpu.run().unwrap(), VcpuExit::Kicked));
    kicker.join().unwrap();
    assert_eq!(t.vcpu.regs().unwrap().rip, CODE_ADDR, "stopped in its loop");
    // The vCPU stays stopped outside run(): its rip does not move.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(t.vcpu.regs().unwrap().rip, CODE_ADDR);
    // Kicked again while running on another thread.
    let kick = t.vcpu.kick_handle();
    let mut vcpu = t.vcpu;
    let runner = thread::spawn(move || matches!(vcpu.run().unwrap(), VcpuExit::Kicked));
    thread::sleep(Duration::from_millis(100));
    kick.kick();
    assert!(runner.join().unwrap());
}

/// Patches `reason` into the hypercall test code and runs it to its shutdown.
fn shutdown_exit(xen: &Xen, reason: u32) -> String {
    // mov eax, 0x40000002; cpuid; mov ecx, ebx; mov eax, 0x300000; xor edx, edx; wrmsr
    //   (Xen writes its hypercall page at 0x300000)
    // mov esi, 0x301000; mov dword [rsi], REASON; mov edi, 2 (SCHEDOP_shutdown);
    // mov eax, 0x300000 + 29 * 32 (sched_op); call rax; out 0x81, al; hlt
    let mut code = snippets::XEN_SHUTDOWN.to_vec();
    let at = usize::try_from(snippets::XEN_SHUTDOWN_REASON).unwrap();
    code[at..at + 4].copy_from_slice(&reason.to_le_bytes());
    let mut t = long_mode_vm(xen, &code);
    let mut regs = t.vcpu.regs().unwrap();
    regs.rsp = 0x20_0000;
    t.vcpu.set_regs(&regs).unwrap();
    let first = next_exit(t.vcpu.as_mut());
    // The exit stays until the VM goes.
    assert_eq!(next_exit(t.vcpu.as_mut()), first);
    first
}

#[test]
fn shutdown_reasons_become_exits() {
    let Some(xen) = xen("shutdown_reasons_become_exits") else {
        return;
    };
    let expect = |kind: SystemEventKind, reason: u32| {
        format!(
            "{:?}",
            VcpuExit::SystemEvent {
                kind,
                data: &[u64::from(reason)]
            }
        )
    };
    assert_eq!(shutdown_exit(&xen, 0), expect(SystemEventKind::Shutdown, 0));
    assert_eq!(shutdown_exit(&xen, 1), expect(SystemEventKind::Reset, 1));
    assert_eq!(shutdown_exit(&xen, 3), expect(SystemEventKind::Crash, 3));
    // A triple fault: lidt of an empty IDT, then ud2.
    let mut t = long_mode_vm(&xen, snippets::TRIPLE_FAULT);
    assert_eq!(next_exit(t.vcpu.as_mut()), "Shutdown");
}

/// Output shared between the serial device and the test.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_minimal_kernel_says_hello_through_its_pvh_entry() {
    let Some(xen) = xen("the_minimal_kernel_says_hello_through_its_pvh_entry") else {
        return;
    };
    let vm = xen.create_vm(&VmConfig::default()).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), 4 << 20, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
    let PvhBootCapability::PvhEntryPresent(entry) = kernel.pvh_boot_cap else {
        panic!("the minimal kernel has a PVH note");
    };
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&xen.supported_cpuid()).unwrap();
    entry::configure_pvh(vcpu.as_ref(), &memory, u32::try_from(entry.0).unwrap(), 0).unwrap();

    let output = Output::default();
    let i8042 = Arc::new(I8042::new().unwrap());
    let mut bus = Bus::new();
    bus.register_pio(
        PioAddress(COM1),
        SERIAL_PORTS,
        Arc::new(Serial::new(output.clone()).unwrap()),
    )
    .unwrap();
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())
        .unwrap();
    let mut mmio_written = Vec::new();
    let start = Instant::now();
    while !i8042.take_reset_request() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the kernel never powered off"
        );
        let mut exit = vcpu.run().unwrap();
        match &mut exit {
            VcpuExit::MmioRead { addr, data } if *addr == minimal::MMIO_READ_ADDR => {
                data.copy_from_slice(&common::guest::MMIO_ANSWER.to_le_bytes());
                continue;
            }
            VcpuExit::MmioWrite { addr, data } if *addr == minimal::MMIO_WRITE_ADDR => {
                mmio_written = data.to_vec();
                continue;
            }
            _ => {}
        }
        if let ExitOutcome::NotBusExit = bus.handle_exit(&mut exit) {
            panic!("unexpected exit {exit:?}");
        }
    }
    let serial = String::from_utf8(output.0.lock().unwrap().clone()).unwrap();
    assert!(serial.starts_with(minimal::HELLO), "{serial:?}");
    assert_eq!(
        serial,
        minimal::expected_serial(&common::cpu_vendor(&xen), common::guest::MMIO_ANSWER)
    );
    assert_eq!(mmio_written, (common::guest::MMIO_ANSWER + 1).to_le_bytes());
}

#[test]
fn changing_one_vcpus_state_repeats_no_io_of_another() {
    let Some(xen) = xen("changing_one_vcpus_state_repeats_no_io_of_another") else {
        return;
    };
    let vm = xen.create_vm(&VmConfig::default().max_vcpus(2)).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), 4 << 20, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    // again: inc eax; out 0x84, eax; jmp again
    memory
        .write_slice(snippets::COUNT_LOOP, GuestAddress(CODE_ADDR))
        .unwrap();
    let mut counter = vm.create_vcpu(0).unwrap();
    entry::configure_long_mode(counter.as_ref(), &memory, CODE_ADDR).unwrap();
    let kick = counter.kick_handle();
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&writes);
    let runner = thread::spawn(move || {
        let mut seen = Vec::new();
        loop {
            match counter.run().unwrap() {
                VcpuExit::IoOut {
                    port: snippets::COUNT_PORT,
                    data,
                    ..
                } => {
                    seen.push(u32::from_le_bytes(data.try_into().unwrap()));
                    counted.store(seen.len(), std::sync::atomic::Ordering::SeqCst);
                }
                VcpuExit::Kicked => return seen,
                other => panic!("{other:?}"),
            }
        }
    });
    // Meanwhile another vCPU is created and its state set, over and over: each load of
    // HVM state reloads the counting vCPU too, often in the middle of its port write.
    let other = vm.create_vcpu(1).unwrap();
    let start = Instant::now();
    let mut loads = 0u64;
    while loads < 20 || writes.load(std::sync::atomic::Ordering::SeqCst) < 50 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the counter is stuck"
        );
        entry::configure_long_mode(other.as_ref(), &memory, CODE_ADDR).unwrap();
        other
            .set_msrs(&[Msr {
                index: msr_index::LSTAR,
                data: loads,
            }])
            .unwrap();
        loads += 1;
    }
    kick.kick();
    let seen = runner.join().unwrap();
    assert!(seen.len() >= 50, "the counter ran: {} writes", seen.len());
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "each write seen once, in order: {seen:?}"
        );
    }
    assert_eq!(seen[0], 1);
}

#[test]
fn state_writes_wait_only_for_io_xen_has_not_retired() {
    let Some(xen) = xen("state_writes_wait_only_for_io_xen_has_not_retired") else {
        return;
    };
    // again: inc eax; out 0x84, eax; jmp again
    let code = snippets::COUNT_LOOP;
    let mut t = long_mode_vm(&xen, code);
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: snippets::COUNT_PORT,
            data,
            ..
        } => assert_eq!(data, 1u32.to_le_bytes()),
        other => panic!("{other:?}"),
    }
    // Xen retired the port write before sending it: rip is past the 4 bytes of
    // `inc eax; out 0x84, eax`, and a register write is taken with the write in flight.
    let mut regs = t.vcpu.regs().unwrap();
    assert_eq!(regs.rip, CODE_ADDR + 4);
    regs.rax = 100;
    t.vcpu.set_regs(&regs).unwrap();
    let mut sregs = t.vcpu.sregs().unwrap();
    sregs.fs.base = 0x7fff_0000_2000;
    t.vcpu.set_sregs(&sregs).unwrap();
    // Answering the write leaves the new registers alone, and the write is not sent again.
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: snippets::COUNT_PORT,
            data,
            ..
        } => assert_eq!(data, 101u32.to_le_bytes()),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.vcpu.sregs().unwrap().fs.base, 0x7fff_0000_2000);

    // A port read in flight still refuses: Xen writes its answer into rax on the next run().
    let mut t = long_mode_vm(&xen, snippets::PORT_MMIO_ECHO);
    match t.vcpu.run().unwrap() {
        VcpuExit::IoIn { data, .. } => data.copy_from_slice(&[1, 2, 3, 4]),
        other => panic!("expected a dword port read, got {other:?}"),
    }
    let regs = t.vcpu.regs().unwrap();
    assert!(matches!(
        t.vcpu.set_regs(&regs),
        Err(vmkit::VcpuError::InvalidState { .. })
    ));
}

/// A 64-bit PV guest at virtual 0x400000: code in the page at guest-physical 0x1000, data
/// at 0x2000 (virtual 0x401000), stack at 0x3000 (0x402000); page tables in a region of
/// their own at 0x100000, sealed. Returns the VM and its vCPU, set to start at `entry`.
fn pv_guest(xen: &Xen, entry: u64) -> (vmkit::xen::XenVm, vmkit::xen::XenVcpu) {
    // movl $0x600df00d, 0x401000; movl $0 (SHUTDOWN_poweroff), 0x401010;
    // mov eax, 29 (sched_op); mov edi, 2 (SCHEDOP_shutdown); mov esi, 0x401010; syscall;
    // ud2; spin: jmp spin (at PV_SHUTDOWN_SPIN)
    let code = snippets::PV_SHUTDOWN;
    assert_eq!(snippets::PV_MARKER_ADDR, 0x40_1000, "the data page");
    let vm = xen.create_pv_vm(&VmConfig::default()).unwrap();
    assert_eq!(vm.kind(), vmkit::xen::DomainKind::Pv);
    let ram = MemoryRegion::anonymous(GuestAddress(0), 1 << 20, MemoryFlags::empty()).unwrap();
    ram.mapping()
        .write_slice(code, MemoryRegionAddress(0x1000))
        .unwrap();
    vmkit::Vm::add_memory_region(&vm, ram).unwrap();
    let tables =
        MemoryRegion::anonymous(GuestAddress(0x10_0000), 0x4000, MemoryFlags::empty()).unwrap();
    let tables_slot = vmkit::Vm::add_memory_region(&vm, tables).unwrap();
    // Page-table entries hold machine frames: present, writable, user (a PV kernel runs
    // in ring 3).
    let entry_to = |gpa: u64| (vm.pv_machine_frame(gpa).unwrap() << 12) | 0x7;
    let memory = vmkit::Vm::memory(&vm);
    let write = |gpa: u64, value: u64| memory.write_obj(value, GuestAddress(gpa)).unwrap();
    write(0x10_0000, entry_to(0x10_1000)); // L4[0] -> L3
    write(0x10_1000, entry_to(0x10_2000)); // L3[0] -> L2
    write(0x10_2000 + 2 * 8, entry_to(0x10_3000)); // L2[2] (0x400000) -> L1
    write(0x10_3000, entry_to(0x1000)); // 0x400000: code
    write(0x10_3000 + 8, entry_to(0x2000)); // 0x401000: data
    write(0x10_3000 + 16, entry_to(0x3000)); // 0x402000: stack
    drop(memory);
    vm.seal_pv_region(tables_slot).unwrap();
    let vcpu = vm.create_xen_vcpu(0).unwrap();
    vcpu.set_pv_start(&vmkit::xen::PvStart {
        regs: vmkit::arch::x86_64::Regs {
            rip: entry,
            rsp: 0x40_3000,
            rflags: 0x2,
            ..Default::default()
        },
        page_table: vm.pv_machine_frame(0x10_0000).unwrap(),
    })
    .unwrap();
    (vm, vcpu)
}

#[test]
fn a_pv_guest_runs_to_its_shutdown_hypercall() {
    let Some(xen) = xen("a_pv_guest_runs_to_its_shutdown_hypercall") else {
        return;
    };
    let before = xen.domain_ids().unwrap();
    let (vm, mut vcpu) = pv_guest(&xen, 0x40_0000);
    assert_eq!(
        format!("{:?}", vcpu.run().unwrap()),
        format!(
            "{:?}",
            VcpuExit::SystemEvent {
                kind: SystemEventKind::Shutdown,
                data: &[0]
            }
        )
    );
    let marker: u32 = vmkit::Vm::memory(&vm)
        .read_obj(GuestAddress(0x2000))
        .unwrap();
    assert_eq!(
        marker,
        snippets::MARKER,
        "the guest's write, seen by the VMM"
    );
    let regs = vcpu.regs().unwrap();
    assert_eq!(
        regs.rip,
        0x40_0000 + snippets::PV_SHUTDOWN_AFTER_SYSCALL,
        "stopped after its syscall"
    );
    assert_eq!(
        (regs.rax, regs.rsi),
        (0, snippets::PV_SHUTDOWN_ARG),
        "the hypercall returned 0"
    );
    // PV vCPUs have no HVM state.
    assert!(matches!(
        vcpu.sregs(),
        Err(vmkit::VcpuError::Unsupported { .. })
    ));
    drop(vcpu);
    drop(vm);

    // A spinning PV guest stops for a kick and stays stopped.
    let spin = 0x40_0000 + snippets::PV_SHUTDOWN_SPIN;
    let (vm, mut vcpu) = pv_guest(&xen, spin);
    let kick = vcpu.kick_handle();
    let kicker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        kick.kick();
    });
    assert!(matches!(vcpu.run().unwrap(), VcpuExit::Kicked));
    kicker.join().unwrap();
    assert_eq!(vcpu.regs().unwrap().rip, spin);
    drop(vcpu);
    drop(vm);
    let start = Instant::now();
    while xen.domain_ids().unwrap() != before {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a PV domain outlived its VM"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The hardware-breakpoint path (DR0 and DR7 in the CPU record, the #DB through Xen's
/// monitor ring, a debug exit before the instruction) with a guest that writes DR7 itself
/// first. That write is only needed under QEMU's TCG, the Xen harness's CPU: TCG arms an
/// instruction breakpoint when DR7 is written with `mov` (`cpu_x86_update_dr7`), but its
/// VMRUN copies the VMCB's DR7 without arming anything, so a breakpoint that Xen (or KVM)
/// loads for a guest never fires there. Rewriting DR7 from inside the guest arms it; and
/// since TCG keeps what it armed, for every guest after this one, until DR7 is written
/// again, the guest disarms it before its `hlt` (the test moves it past the breakpoint).
///
/// Ignored by default: TCG arms the breakpoint on the emulated CPU the guest's `mov` ran on,
/// and when Xen moves the vCPU to the other one before the disarming `mov`, the breakpoint
/// stays armed there. In one CI run the next minimal kernel, whose code sits at the same
/// address (0x100018), took the #DB and triple-faulted. Run it by hand, alone:
/// `VMKIT_XEN_BINS="xen=…:--ignored,a_hardware_breakpoint" ci/xen/run.sh`.
#[test]
#[ignore = "arms a breakpoint in QEMU's TCG that can outlive the test and fault later guests"]
fn a_hardware_breakpoint_stops_the_guest_before_the_instruction() {
    let Some(xen) = xen("a_hardware_breakpoint_stops_the_guest_before_the_instruction") else {
        return;
    };
    let code: &[u8] = &[
        0x48, 0xc7, 0xc1, 0x00, 0x04, 0x00, 0x00, // mov rcx, 0x400 (every breakpoint off)
        0x0f, 0x23, 0xf9, // mov dr7, rcx
        0x48, 0xc7, 0xc1, 0x02, 0x04, 0x00, 0x00, // mov rcx, 0x402 (G0: DR0 on execution)
        0x0f, 0x23, 0xf9, // mov dr7, rcx
        0x90, // nop
        0x48, 0xff, 0xc0, // inc rax
        0x48, 0xff, 0xc0, // inc rax, the breakpoint (offset 24)
        0x48, 0xc7, 0xc1, 0x00, 0x04, 0x00, 0x00, // mov rcx, 0x400 (disarm)
        0x0f, 0x23, 0xf9, // mov dr7, rcx
        0xf4, // hlt
    ];
    let breakpoint = CODE_ADDR + 24;
    let mut t = long_mode_vm(&xen, code);
    t.vcpu
        .set_guest_debug(&GuestDebug {
            hw_breakpoints: vec![breakpoint],
            ..GuestDebug::default()
        })
        .unwrap();
    match t.vcpu.run().unwrap() {
        VcpuExit::Debug(debug) => {
            assert_eq!((debug.pc, debug.exception), (breakpoint, 1));
            assert_eq!(
                debug.dr6 & 0xf,
                1,
                "DR6 names breakpoint 0: {:#x}",
                debug.dr6
            );
            assert_eq!(
                debug.dr7 & 0xff,
                0b10,
                "DR7 enables DR0 only: {:#x}",
                debug.dr7
            );
        }
        other => panic!("expected a breakpoint exit, got {other:?}"),
    }
    let mut regs = t.vcpu.regs().unwrap();
    assert_eq!(regs.rax, 1, "only the first inc ran");
    // Past the breakpoint's instruction, to the guest's disarming and its hlt.
    regs.rip = breakpoint + 3;
    t.vcpu.set_regs(&regs).unwrap();
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
    assert_eq!(t.vcpu.regs().unwrap().rax, 1);
    t.vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
}
