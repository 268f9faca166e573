//! The minimal guest kernel boots end to end on the real hypervisor, through its 64-bit entry
//! and through its PVH entry, with the host answering its port and MMIO accesses.

use vmkit::Hypervisor;

use std::io::Cursor;

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::GuestAddress;
use vmkit::{MemoryFlags, MemoryRegion, VcpuExit, VmConfig};
use vmkit_boot::entry;
use vmkit_guests::minimal;

const MMIO_ANSWER: u32 = 0x1234_abcd;

enum Entry {
    LongMode,
    Pvh,
}

/// Boots the kernel and returns (serial output, value the guest wrote to MMIO).
fn boot(hv: &dyn Hypervisor, entry: Entry) -> (String, Vec<u8>, [u8; 12]) {
    let vm = hv.create_vm(&VmConfig::default()).unwrap();
    let ram = MemoryRegion::anonymous(GuestAddress(0), 4 << 20, MemoryFlags::empty()).unwrap();
    vm.add_memory_region(ram).unwrap();
    let memory = vm.memory();
    let kernel = Elf::load(&memory, None, &mut Cursor::new(minimal::ELF), None).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let cpuid = hv.supported_cpuid();
    vcpu.set_cpuid(&cpuid).unwrap();
    match entry {
        Entry::LongMode => {
            entry::configure_long_mode(vcpu.as_ref(), &memory, kernel.kernel_load.0).unwrap()
        }
        Entry::Pvh => {
            let PvhBootCapability::PvhEntryPresent(addr) = kernel.pvh_boot_cap else {
                panic!("the minimal kernel has no PVH note");
            };
            let entry = u32::try_from(addr.0).unwrap();
            entry::configure_pvh(vcpu.as_ref(), &memory, entry, 0).unwrap();
        }
    }

    let mut serial = Vec::new();
    let mut mmio_written = Vec::new();
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::IoIn { port, data, .. } => {
                assert_eq!(
                    port,
                    minimal::SERIAL_LSR_PORT,
                    "the kernel only polls the LSR"
                );
                data.fill(minimal::LSR_THR_EMPTY);
            }
            VcpuExit::IoOut { port, data, .. } if port == minimal::SERIAL_PORT => {
                serial.extend_from_slice(data)
            }
            VcpuExit::IoOut { port, data, .. } => {
                assert_eq!(
                    (port, data),
                    (minimal::POWER_OFF_PORT, &[minimal::POWER_OFF_VALUE][..])
                );
                break;
            }
            VcpuExit::MmioRead { addr, data } => {
                assert_eq!((addr, data.len()), (minimal::MMIO_READ_ADDR, 4));
                data.copy_from_slice(&MMIO_ANSWER.to_le_bytes());
            }
            VcpuExit::MmioWrite { addr, data } => {
                assert_eq!(addr, minimal::MMIO_WRITE_ADDR);
                mmio_written = data.to_vec();
            }
            other => panic!(
                "unexpected exit {other:?}; serial so far: {:?}",
                String::from_utf8_lossy(&serial)
            ),
        }
    }
    let vendor = crate::common::cpu_vendor(hv);
    (String::from_utf8(serial).unwrap(), mmio_written, vendor)
}

fn check(hv: &dyn Hypervisor, entry: Entry) {
    let (serial, mmio_written, vendor) = boot(hv, entry);
    assert!(serial.starts_with(minimal::HELLO), "{serial:?}");
    assert_eq!(serial, minimal::expected_serial(&vendor, MMIO_ANSWER));
    assert_eq!(mmio_written, (MMIO_ANSWER + 1).to_le_bytes());
}

pub fn boots_through_the_64_bit_entry(hv: &dyn Hypervisor) {
    check(hv, Entry::LongMode);
}

pub fn boots_through_the_pvh_entry(hv: &dyn Hypervisor) {
    check(hv, Entry::Pvh);
}

crate::scenarios![boots_through_the_64_bit_entry, boots_through_the_pvh_entry];
