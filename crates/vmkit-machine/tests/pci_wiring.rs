//! `VirtioPciWiring` on a real VM: each device gets a slot, a size-aligned
//! BAR and an INTx GSI; the registrations it makes are the hypervisor's
//! (the INTx irqfd on the GSI, an ioeventfd on each asked queue's
//! notification address); `finish` puts the root's ports, ECAM and BAR
//! windows on the bus, where the guest's configuration reads reach the
//! functions; and a refused attach takes nothing.

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use vm_memory::GuestAddress;
use vmkit::{DataMatch, IoEventAddress, MemoryFlags, MemoryRegion, Vm, VmConfig};
use vmkit_bus::Bus;
use vmkit_machine::resources::{GsiAllocator, MmioAllocator};
use vmkit_machine::virtio_pci::{PciWiringError, VirtioPciWiring, VmMsi};
use vmkit_virtio::console::Console;
use vmkit_virtio::pci::{PciTransport, BAR_SIZE};

const ECAM: u64 = 0xe000_0000;
const BARS: u64 = 0xc000_0000;

fn vm() -> Option<Arc<dyn Vm>> {
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
    let ram = MemoryRegion::anonymous(GuestAddress(0), 0x10000, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    Some(Arc::from(vm))
}

type Console0 = Console<std::io::Sink>;

#[test]
fn devices_get_slots_bars_gsis_and_registrations_and_the_root_lands_on_the_bus() {
    let Some(vm) = vm() else { return };
    let mut wiring = VirtioPciWiring::new(
        Arc::new(vm.memory()),
        ECAM,
        MmioAllocator::new(BARS, BARS + 4 * BAR_SIZE).unwrap(),
        GsiAllocator::new(16, 23).unwrap(),
        Arc::new(VmMsi(vm.clone())),
    );
    // A queue the device does not have: refused, nothing taken.
    let refused = wiring.attach(vm.as_ref(), Console::new(std::io::sink()), &[2]);
    assert!(matches!(
        refused,
        Err(PciWiringError::BadQueue { queue: 2, count: 2 })
    ));
    let a = wiring
        .attach(vm.as_ref(), Console::new(std::io::sink()), &[1])
        .unwrap();
    let b = wiring
        .attach(vm.as_ref(), Console::new(std::io::sink()), &[])
        .unwrap();
    assert_eq!(
        (a.slot, a.bar.base, a.bar.size, a.gsi),
        (1, BARS, BAR_SIZE, 16)
    );
    assert_eq!((b.slot, b.bar.base, b.gsi), (2, BARS + BAR_SIZE, 17));
    // What attach registered is there to unregister (and, for the notifier, nothing else).
    let notify =
        a.bar.base + PciTransport::<Arc<vmkit::GuestMemoryMmap>, Console0>::notify_offset(1);
    assert_eq!(a.notifiers.len(), 1);
    vm.unregister_ioeventfd(
        &a.notifiers[0].event,
        IoEventAddress::Mmio(notify),
        DataMatch::Any,
    )
    .unwrap();
    vm.unregister_irqfd(b.transport.intx_evt(), 17).unwrap();

    let mut bus = Bus::new();
    let platform = wiring.finish(&mut bus).unwrap();
    assert_eq!(platform.intx, [(1, 16), (2, 17)]);
    assert_eq!((platform.ecam.base, platform.bars.base), (ECAM, BARS));
    // The guest's view through ECAM: the host bridge, then the two consoles, with their
    // BARs where the wiring put them and INTA on their GSIs.
    let mut word = [0u8; 4];
    for (slot, id, bar, line) in [
        (1u64, 0x1043_1af4u32, BARS, 16u8),
        (2, 0x1043_1af4, BARS + BAR_SIZE, 17),
    ] {
        platform.root.ecam_read(slot << 15, &mut word);
        assert_eq!(u32::from_le_bytes(word), id);
        platform.root.ecam_read((slot << 15) | 0x10, &mut word);
        assert_eq!(u64::from(u32::from_le_bytes(word)), bar);
        platform.root.ecam_read((slot << 15) | 0x3c, &mut word);
        assert_eq!(word[..2], [line, 1]);
    }
    // Through the bus, as a vCPU's exits get there: the ports, the ECAM window and the BAR
    // window (once the guest turns memory decoding on).
    let _ = bus.pio_write(0xcf8, 4, &(0x8000_0000u32 | 2 << 11).to_le_bytes());
    let _ = bus.pio_read(0xcfc, 4, &mut word);
    assert_eq!(u32::from_le_bytes(word), 0x1043_1af4);
    let _ = bus.mmio_read(ECAM + (1 << 15), &mut word);
    assert_eq!(u32::from_le_bytes(word), 0x1043_1af4);
    let mut half = [0u8; 2];
    let _ = bus.mmio_read(BARS + 0x12, &mut half);
    assert_eq!(half, [0xff, 0xff], "memory decoding is off");
    let _ = bus.mmio_write(ECAM + (1 << 15) + 4, &2u16.to_le_bytes());
    let _ = bus.mmio_read(BARS + 0x12, &mut half);
    assert_eq!(
        u16::from_le_bytes(half),
        2,
        "num_queues of the console in slot 1"
    );
}
