//! The minimal kernel's virtio-blk driver against vmkit-virtio's virtio-mmio transport and
//! virtio-blk device, on a vmkit-bus with vmkit-devices' serial and i8042: the guest reads the
//! disk's signature, writes a pattern, flushes and reads it back; the host checks the file.

use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_memory::GuestAddress;
use vmkit::runner::{self, ExitAction, ExitHandler, VcpuOutcome, VmRunner};
use vmkit::{Capabilities, EventFd, Hypervisor, MemoryFlags, MemoryRegion, VmConfig};
use vmkit_boot::entry;

use crate::common::guest::GIVE_UP;
use vmkit_bus::Bus;
use vmkit_devices::{Serial, COM1, I8042, SERIAL_PORTS};
use vmkit_guests::minimal;
use vmkit_machine::{GsiAllocator, MmioAllocator, QueueWorker, VirtioMmioWiring};
use vmkit_virtio::blk::{Block, BlockOptions};
use vmkit_virtio::mmio::{MmioTransport, MMIO_REGION_SIZE};
use vmm_sys_util::eventfd::EFD_NONBLOCK;
use vmm_sys_util::tempfile::TempFile;

const DISK_SECTORS: u64 = 64;

pub fn blk_guest_driver_round_trip(hv: &dyn Hypervisor) {
    blk_round_trip(hv, false);
}

/// The same, with the device wired by vmkit-machine (its queue notification going to an
/// ioeventfd, its interrupt to an irqfd) and the requests processed by its `QueueWorker`
/// while the guest polls the used ring: the device as a VMM would run it.
pub fn blk_notified_through_an_ioeventfd(hv: &dyn Hypervisor) {
    blk_round_trip(hv, true);
}

fn blk_round_trip(hv: &dyn Hypervisor, ioeventfd: bool) {
    // With an ioeventfd the device is wired as a VMM would (`VirtioMmioWiring::attach`), which
    // also makes its interrupt an irqfd: an in-kernel irqchip. The driver polls with
    // interrupts disabled, so the interrupt is never taken.
    let vm = hv
        .create_vm(&VmConfig::default().irqchip(ioeventfd))
        .unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), 4 << 20, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();

    // A disk whose first sector starts with the signature and whose other bytes are 0xee, so
    // a stray write anywhere shows.
    let mut disk = TempFile::new().unwrap().into_file();
    let mut image = vec![0xeeu8; (DISK_SECTORS * 512) as usize];
    image[..8].copy_from_slice(minimal::BLK_SIGNATURE);
    disk.write_all(&image).unwrap();
    let block = Block::new(disk.try_clone().unwrap(), BlockOptions::default()).unwrap();

    let serial = Arc::new(Serial::new(Vec::new()).unwrap());
    let i8042 = Arc::new(I8042::new().unwrap());
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial.clone())
        .unwrap();
    bus.register_pio(PioAddress(I8042::BASE), I8042::PORTS, i8042.clone())
        .unwrap();

    let (transport, worker) = if ioeventfd {
        // The driver looks for its device at a fixed address: the only window.
        let base = minimal::VIRTIO_MMIO_BASE;
        let mut wiring = VirtioMmioWiring::new(
            Arc::new(memory.clone()),
            MmioAllocator::new(base, base + MMIO_REGION_SIZE).unwrap(),
            GsiAllocator::new(5, 23).unwrap(),
        );
        let mut blk = wiring.attach(vm.as_ref(), &mut bus, block, &[0]).unwrap();
        assert_eq!(blk.window.base, base);
        let notifiers = std::mem::take(&mut blk.notifiers);
        let worker = QueueWorker::start(blk.transport.clone(), notifiers, |err| {
            eprintln!("virtio-blk worker: {err}")
        })
        .unwrap();
        (blk.transport, Some(worker))
    } else {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let transport = Arc::new(MmioTransport::new(block, Arc::new(memory.clone()), irq).unwrap());
        bus.register_mmio(
            MmioAddress(minimal::VIRTIO_MMIO_BASE),
            MMIO_REGION_SIZE,
            transport.clone(),
        )
        .unwrap();
        (transport, None)
    };

    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&hv.supported_cpuid()).unwrap();
    entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0).unwrap();
    let mut regs = vcpu.regs().unwrap();
    regs.rdx = minimal::ENTRY_FLAG_VIRTIO_BLK;
    vcpu.set_regs(&regs).unwrap();

    // The vCPU on its thread, its exits on the bus; the i8042's reset command powers off.
    let handler = runner::from_fn(move |id, exit| match bus.handle(id, exit) {
        ExitAction::Continue if i8042.take_reset_request() => ExitAction::PowerOff,
        action => action,
    });
    let options = crate::common::runner_options().command_timeout(GIVE_UP);
    let running = VmRunner::start_with(vec![vcpu], handler, options).unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    assert_eq!(
        finished[0].outcome.as_ref().unwrap(),
        &VcpuOutcome::PowerOff
    );

    if let Some(worker) = worker {
        // Read, write, flush, read back: each notification went to the worker, none exited.
        let stats = worker.stop().unwrap();
        assert_eq!(
            (stats.notifications(0), stats.errors()),
            (4, 0),
            "{stats:?}"
        );
    }

    // Nothing sits at the kernel's MMIO test address here, so it reads all-ones.
    let output = String::from_utf8(serial.with_output(|out| out.clone())).unwrap();
    assert_eq!(
        output,
        minimal::expected_blk_serial(&crate::common::cpu_vendor(hv), 0xffff_ffff)
    );
    assert_eq!(
        transport.invalid_accesses(),
        0,
        "the driver followed the register rules"
    );
    assert!(transport.take_error().is_none());

    let mut after = Vec::new();
    disk.seek(SeekFrom::Start(0)).unwrap();
    disk.read_to_end(&mut after).unwrap();
    let test_area = (minimal::BLK_TEST_SECTOR * 512) as usize..;
    let test_area = test_area.start..test_area.start + minimal::BLK_TEST_BYTES;
    for (i, byte) in after.iter().enumerate() {
        let expected = if test_area.contains(&i) {
            minimal::blk_pattern(i - test_area.start)
        } else {
            image[i]
        };
        assert_eq!(*byte, expected, "disk byte {i}");
    }
}

crate::scenarios![
    blk_guest_driver_round_trip,
    blk_notified_through_an_ioeventfd => wired,
];

/// What `VirtioMmioWiring::attach` registers: an ioeventfd and an irqfd (on an irqchip).
fn wired(caps: &Capabilities) -> Option<&'static str> {
    crate::ioeventfd(caps).or_else(|| crate::irqchip(caps))
}
