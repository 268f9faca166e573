//! `VirtioMmioWiring` on a real VM: the registrations it makes are the
//! hypervisor's (a guest's write to `QueueNotify` with a wired queue index
//! signals that queue's eventfd and never exits; another index exits to the
//! VMM; the irqfd is registered on the allocated GSI), the transport sits on
//! the bus at its window, and a failed attach undoes its registrations and
//! takes no resources.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use vm_device::bus::MmioAddress;
use vm_device::DeviceMmio;
use vm_memory::{Bytes, GuestAddress};
use vmkit::{DataMatch, IoEventAddress, MemoryFlags, MemoryRegion, VcpuExit, Vm, VmConfig};
use vmkit_bus::Bus;
use vmkit_machine::resources::{GsiAllocator, MmioAllocator, MmioWindow, ResourceError};
use vmkit_machine::virtio_mmio::{VirtioMmioWiring, WiringError};
use vmkit_virtio::console::Console;
use vmkit_virtio::mmio::{MMIO_REGION_SIZE, NOTIFY_OFFSET};
use vmkit_virtio::Persist;

/// Guest RAM: the first page holds the code.
const RAM_SIZE: usize = 0x2000;
const CODE: u64 = 0x1000;
/// The `QueueSel` and `Status` registers of a virtio-mmio window (virtio 1.x, 4.2.2).
const QUEUE_SEL: u64 = 0x030;
const STATUS: u64 = 0x070;
/// The windows: above RAM, below 64 KiB (reachable from real mode).
const WINDOWS: u64 = 0x8000;

/// The hypervisor, or `None` (and a note) on a host without one.
fn vm() -> Option<Box<dyn Vm>> {
    let hypervisor = match vmkit::open() {
        Ok(h) => h,
        Err(err) => {
            eprintln!("SKIP: no hypervisor here: {err}");
            return None;
        }
    };
    let vm = hypervisor
        .create_vm(&VmConfig::default().irqchip(true))
        .unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), RAM_SIZE, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    Some(vm)
}

fn wiring(vm: &dyn Vm) -> VirtioMmioWiring<Arc<vmkit::GuestMemoryMmap>> {
    VirtioMmioWiring::new(
        Arc::new(vm.memory()),
        MmioAllocator::new(WINDOWS, WINDOWS + 2 * MMIO_REGION_SIZE).unwrap(),
        GsiAllocator::new(5, 23).unwrap(),
    )
}

/// Real-mode code: writes 1, then 0, to the first window's `QueueNotify`.
fn notify_code() -> Vec<u8> {
    let notify = u16::try_from(WINDOWS + NOTIFY_OFFSET)
        .unwrap()
        .to_le_bytes();
    let mut code = Vec::new();
    code.extend_from_slice(&[0x66, 0xb8, 1, 0, 0, 0]); // mov eax, 1
    code.extend_from_slice(&[0x66, 0xa3, notify[0], notify[1]]); // mov [notify], eax
    code.extend_from_slice(&[0x66, 0x31, 0xc0]); // xor eax, eax
    code.extend_from_slice(&[0x66, 0xa3, notify[0], notify[1]]); // mov [notify], eax
    code.push(0xf4); // hlt (not reached: the test stops at the second write)
    code
}

#[test]
fn queue_notifications_and_the_interrupt_are_wired_to_the_vm() {
    let Some(vm) = vm() else { return };
    let vm = vm.as_ref();
    let mut bus = Bus::new();
    let mut wiring = wiring(vm);
    wiring.gsis.reserve(6).unwrap();

    // The console's queues: 0 (receive) exits, 1 (transmit) is an ioeventfd.
    let mut console = wiring
        .attach(vm, &mut bus, Console::new(std::io::sink()), &[1])
        .unwrap();
    assert_eq!(
        console.window,
        MmioWindow {
            base: WINDOWS,
            size: MMIO_REGION_SIZE
        }
    );
    assert_eq!(console.gsi, 5);
    let tx = console.take_notifier(1).expect("queue 1's eventfd");
    assert!(console.take_notifier(1).is_none());
    assert!(console.take_notifier(0).is_none());

    // On the bus: the magic value reads back through the window.
    let (range, device) = bus.mmio_device(WINDOWS + 4).expect("on the bus");
    assert_eq!(range.base(), MmioAddress(WINDOWS));
    let mut magic = [0u8; 4];
    device.mmio_read(MmioAddress(WINDOWS), 0, &mut magic);
    assert_eq!(&magic, b"virt");

    // The guest writes queue index 1 (the eventfd fires, no exit), then 0
    // (an exit to the VMM).
    vm.memory()
        .write_slice(&notify_code(), GuestAddress(CODE))
        .unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    let exit = loop {
        match vcpu.run().unwrap() {
            VcpuExit::Interrupted => continue,
            VcpuExit::MmioWrite { addr, data } => break Some((addr, data.to_vec())),
            other => panic!("unexpected exit {other:?}"),
        }
    };
    assert_eq!(exit, Some((WINDOWS + NOTIFY_OFFSET, vec![0, 0, 0, 0])));
    assert_eq!(tx.read().unwrap(), 1, "the guest's notify of queue 1");

    // The VM holds the registrations that the wiring made. KVM refuses to
    // register an eventfd that is an irqfd already (on any GSI), and
    // removing an irqfd needs its GSI: so the interrupt is an irqfd, on 5.
    let irq = console.transport.interrupt_evt();
    assert!(vm.register_irqfd(irq, 7, None).is_err(), "registered");
    vm.unregister_irqfd(irq, 6).unwrap(); // a no-op: not there
    assert!(vm.register_irqfd(irq, 7, None).is_err(), "not on GSI 6");
    vm.unregister_irqfd(irq, 5).unwrap();
    vm.register_irqfd(irq, 7, None).unwrap();
    vm.unregister_irqfd(irq, 7).unwrap();
    let notify = IoEventAddress::Mmio(WINDOWS + NOTIFY_OFFSET);
    assert!(vm
        .unregister_ioeventfd(&tx, notify, DataMatch::U32(0))
        .is_err());
    vm.unregister_ioeventfd(&tx, notify, DataMatch::U32(1))
        .unwrap();
    assert!(vm
        .unregister_ioeventfd(&tx, notify, DataMatch::U32(1))
        .is_err());

    // The next device gets the next window and the next free GSI; then the
    // windows have run out.
    let next = wiring
        .attach(vm, &mut bus, Console::new(std::io::sink()), &[])
        .unwrap();
    assert_eq!(
        (next.window.base, next.gsi),
        (WINDOWS + MMIO_REGION_SIZE, 7)
    );
    let err = wiring
        .attach(vm, &mut bus, Console::new(std::io::sink()), &[])
        .unwrap_err();
    assert!(
        matches!(
            err,
            WiringError::Resources(ResourceError::MmioExhausted { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn a_failed_attach_undoes_its_registrations_and_takes_nothing() {
    let Some(vm) = vm() else { return };
    let vm = vm.as_ref();
    let mut bus = Bus::new();
    let mut wiring = wiring(vm);

    // Queues the device does not have, or named twice.
    let err = wiring
        .attach(vm, &mut bus, Console::new(std::io::sink()), &[2])
        .unwrap_err();
    assert!(
        matches!(err, WiringError::NoSuchQueue { queue: 2, count: 2 }),
        "{err:?}"
    );
    let err = wiring
        .attach(vm, &mut bus, Console::new(std::io::sink()), &[1, 0, 1])
        .unwrap_err();
    assert!(
        matches!(err, WiringError::DuplicateQueue { queue: 1 }),
        "{err:?}"
    );

    // Something else already holds the first window on the bus: the bus
    // refuses, after the irqfd and the ioeventfd were registered.
    let (squatter, _) = {
        let mut other = Bus::new();
        let mut w = self::wiring(vm);
        w.gsis.reserve(5).unwrap();
        let dev = w
            .attach(vm, &mut other, Console::new(std::io::sink()), &[])
            .unwrap();
        assert_eq!((dev.window.base, dev.gsi), (WINDOWS, 6));
        (dev.transport, other)
    };
    bus.register_mmio(MmioAddress(WINDOWS), MMIO_REGION_SIZE, squatter)
        .unwrap();
    let err = wiring
        .attach(vm, &mut bus, Console::new(std::io::sink()), &[0, 1])
        .unwrap_err();
    assert!(
        matches!(err, WiringError::Bus { base: WINDOWS, .. }),
        "{err:?}"
    );
    // Nothing was taken: the allocators hand out the same window and GSI.
    let mut probe = wiring.mmio.clone();
    assert_eq!(probe.allocate(1).unwrap().base, WINDOWS);
    assert!(!wiring.gsis.is_used(5));
    // And the VM forgot the registrations: the same ioeventfds (address
    // and datamatch) can be registered again (KVM refuses duplicates).
    let probe = vmkit::EventFd::new(0).unwrap();
    for queue in [0, 1] {
        vm.register_ioeventfd(
            &probe,
            IoEventAddress::Mmio(WINDOWS + NOTIFY_OFFSET),
            DataMatch::U32(queue),
        )
        .unwrap();
    }
}

#[test]
fn a_restored_device_takes_its_saved_state_before_it_is_shared() {
    let Some(vm) = vm() else { return };
    let vm = vm.as_ref();
    // The first boot: the driver selects queue 1 and acknowledges the device.
    let mut bus = Bus::new();
    let first = wiring(vm)
        .attach(vm, &mut bus, Console::new(std::io::sink()), &[])
        .unwrap();
    first
        .transport
        .mmio_write(MmioAddress(WINDOWS), QUEUE_SEL, &1u32.to_le_bytes());
    first
        .transport
        .mmio_write(MmioAddress(WINDOWS), STATUS, &1u32.to_le_bytes());
    let saved = first.transport.save_state();
    assert_eq!((saved.queue_sel, saved.status), (1, 1));

    // The restore, on another VM: the same window and GSI, the saved registers.
    let Some(other) = self::vm() else { return };
    let other = other.as_ref();
    let mut bus = Bus::new();
    let mut wiring = wiring(other);
    let restored = wiring
        .attach_restored(other, &mut bus, Console::new(std::io::sink()), &[1], &saved)
        .unwrap();
    assert_eq!(
        (restored.window.base, restored.gsi),
        (first.window.base, first.gsi)
    );
    assert_eq!(restored.transport.save_state(), saved);

    // A state of another device type is refused before anything is taken.
    let mut wrong = saved.clone();
    wrong.device_type = 2;
    let err = wiring
        .attach_restored(other, &mut bus, Console::new(std::io::sink()), &[1], &wrong)
        .unwrap_err();
    let WiringError::Restore { base, .. } = err else {
        panic!("{err:?}");
    };
    assert_eq!(base, WINDOWS + MMIO_REGION_SIZE);
    let mut probe = wiring.mmio.clone();
    assert_eq!(probe.allocate(1).unwrap().base, WINDOWS + MMIO_REGION_SIZE);
    assert!(!wiring.gsis.is_used(6));
}
