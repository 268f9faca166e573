//! vmkit's Linux boot path (`vmkit_boot::linux`) with a real distribution kernel on this host's
//! KVM.
//!
//! This project's CI host has a KVM that emulates ring-0 guest code, so a distribution kernel
//! cannot get far there (README, section "Hosts"); these tests only check what it can: the kernel is loaded, entered, and
//! prints its `Linux version` banner on our serial port, and on the way it sees the machine
//! vmkit described (ACPI tables, every vCPU). Full boots to userspace run in the
//! hardware-virtualization harness (`ci/svm/run.sh`).
//!
//! The kernel comes from `VMKIT_LINUX_KERNEL` (an ELF vmlinux; `ci/test.sh linux` gets
//! Debian's cloud kernel with `ci/linux-guest.sh` and sets it). Without it the tests are
//! ignored:
//!
//! ```text
//! ci/linux-guest.sh    # writes target/linux/vmlinux
//! VMKIT_LINUX_KERNEL=target/linux/vmlinux cargo test --release --test linux_boot -- --ignored
//! ```

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use linux_loader::cmdline::Cmdline;
use vm_device::bus::PioAddress;
use vmkit::runner::{RunnerOptions, VmRunner};
use vmkit::{MemoryFlags, MemoryRegion, VmConfig};
use vmkit_boot::linux::{self, layout, KernelEntry};
use vmkit_bus::Bus;
use vmkit_devices::{Cmos, Serial, COM1, COM1_GSI, I8042, SERIAL_PORTS};

/// How long the banner may take: ~12 s was measured on this host; leave room for a loaded
/// machine. This bounds a hang, it is not a performance check.
const BANNER_TIMEOUT: Duration = Duration::from_secs(240);

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

impl SharedOutput {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn kernel_path() -> String {
    std::env::var("VMKIT_LINUX_KERNEL")
        .expect("VMKIT_LINUX_KERNEL must name an ELF vmlinux (ci/test.sh sets it)")
}

/// Boots the kernel with `vcpus` vCPUs until the console shows every line of `wanted` (or the
/// timeout), and returns the console text.
fn boot_until(vcpus: u32, wanted: &[&str]) -> String {
    let hypervisor = vmkit::open().unwrap();
    let config = VmConfig::default().max_vcpus(vcpus).irqchip(true).pit(true);
    let vm = hypervisor.create_vm(&config).unwrap();
    let ram_size = 256 << 20;
    for (start, size) in layout::ram_ranges(ram_size) {
        let region = MemoryRegion::anonymous(start, size as usize, MemoryFlags::empty()).unwrap();
        vm.add_memory_region(region).unwrap();
    }
    let memory = vm.memory();
    let kernel = linux::load_kernel_file(&memory, &File::open(kernel_path()).unwrap()).unwrap();
    assert!(
        matches!(kernel.entry, KernelEntry::Pvh(_)),
        "Debian's vmlinux carries the PVH note: {:?}",
        kernel.entry
    );

    let output = SharedOutput::default();
    let serial = Arc::new(Serial::new(output.clone()).unwrap());
    vm.register_irqfd(serial.interrupt_evt(), COM1_GSI, None)
        .unwrap();
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(COM1), SERIAL_PORTS, serial)
        .unwrap();
    bus.register_pio(
        PioAddress(I8042::BASE),
        I8042::PORTS,
        Arc::new(I8042::new().unwrap()),
    )
    .unwrap();
    bus.register_pio(PioAddress(Cmos::BASE), Cmos::PORTS, Arc::new(Cmos::new()))
        .unwrap();

    let mut cmdline = Cmdline::new(4096).unwrap();
    // earlyprintk: the banner is printed long before the real console driver registers.
    cmdline
        .insert_str("console=ttyS0 earlyprintk=serial,ttyS0 reboot=k panic=-1")
        .unwrap();
    let machine = linux::MachineConfig {
        ram_size,
        vcpus,
        apic_id_stride: hypervisor.capabilities().apic_id_stride,
        devices: linux::AcpiDevices {
            serial: vec![linux::SerialPort {
                port: COM1,
                irq: COM1_GSI,
            }],
            virtio_mmio: Vec::new(),
            pm: None,
            pci: None,
        },
    };
    linux::write_boot_info(&memory, &kernel, &cmdline, None, &machine).unwrap();
    let mut vcpus_created = Vec::new();
    for index in 0..vcpus {
        let vcpu = vm.create_vcpu(index).unwrap();
        linux::configure_vcpu(
            vcpu.as_ref(),
            &memory,
            &kernel,
            (index, vcpus),
            hypervisor.capabilities(),
            true,
        )
        .unwrap();
        vcpus_created.push(vcpu);
    }

    // Only the bootstrap processor runs here: the application processors wait for startup
    // IPIs the kernel sends far later than this test looks.
    let bsp = vcpus_created.swap_remove(0);
    let bus = Arc::new(bus);
    let running = VmRunner::start_with(
        vec![bsp],
        bus,
        RunnerOptions::default().command_timeout(BANNER_TIMEOUT),
    )
    .unwrap();
    let start = Instant::now();
    while start.elapsed() < BANNER_TIMEOUT
        && !running.is_stopping()
        && !wanted.iter().all(|line| output.text().contains(line))
    {
        thread::sleep(Duration::from_millis(100));
    }
    running.stop_all();
    let outcome = running
        .join_timeout(BANNER_TIMEOUT)
        .unwrap()
        .pop()
        .map(|vcpu| vcpu.outcome);
    let text = output.text();
    eprintln!("{text}");
    // The kernel may die later on an instruction this host's emulator lacks; that is not
    // this test's business once the lines are there.
    for line in wanted {
        assert!(
            text.contains(line),
            "no {line:?} after {:?} (vCPU: {outcome:?})",
            start.elapsed()
        );
    }
    text
}

#[test]
#[ignore = "needs VMKIT_LINUX_KERNEL (an ELF vmlinux); ci/test.sh provides it"]
fn a_distribution_kernel_prints_its_banner_on_our_serial_port() {
    // Both lines waited for: the command line comes a few lines after the banner, and
    // stopping at the banner alone raced it.
    boot_until(1, &["Linux version", "Command line: console=ttyS0"]);
}

#[test]
#[ignore = "needs VMKIT_LINUX_KERNEL (an ELF vmlinux); ci/test.sh provides it"]
fn the_kernel_reads_our_acpi_tables_and_counts_every_vcpu() {
    boot_until(
        2,
        &[
            "ACPI: RSDP 0x00000000000E0000",
            "ACPI: Using ACPI (MADT) for SMP configuration information",
            "smpboot: Allowing 2 CPUs",
        ],
    );
}

#[test]
#[ignore = "needs VMKIT_LINUX_KERNEL (an ELF vmlinux); ci/test.sh provides it"]
fn mapping_the_vmlinux_gives_the_guest_the_same_bytes_as_copying_it() {
    let ram = |_| {
        let hypervisor = vmkit::open().unwrap();
        let vm = hypervisor.create_vm(&VmConfig::default()).unwrap();
        let region =
            MemoryRegion::anonymous(vm_memory::GuestAddress(0), 256 << 20, MemoryFlags::empty())
                .unwrap();
        vm.add_memory_region(region).unwrap();
        vm
    };
    let (copied_vm, mapped_vm) = (ram(0), ram(1));
    let (copied_mem, mapped_mem) = (copied_vm.memory(), mapped_vm.memory());
    let path = kernel_path();
    let copied = linux::load_kernel(&copied_mem, &mut File::open(&path).unwrap()).unwrap();
    let mapped = linux::load_kernel_file(&mapped_mem, &File::open(&path).unwrap()).unwrap();
    assert_eq!(copied.mapped_bytes, 0);
    assert!(
        mapped.mapped_bytes > 40 << 20,
        "only {} bytes were mapped",
        mapped.mapped_bytes
    );
    assert_eq!(copied.entry, mapped.entry);
    assert_eq!(copied.linux64_entry, mapped.linux64_entry);
    assert_eq!(copied.kernel_end, mapped.kernel_end);
    // Every byte from 1 MiB to the kernel's end, in 1 MiB chunks.
    use vm_memory::Bytes;
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut addr = layout::HIGH_RAM_START;
    while addr < copied.kernel_end {
        let len = (copied.kernel_end - addr).min(1 << 20) as usize;
        copied_mem
            .read_slice(&mut a[..len], vm_memory::GuestAddress(addr))
            .unwrap();
        mapped_mem
            .read_slice(&mut b[..len], vm_memory::GuestAddress(addr))
            .unwrap();
        assert!(
            a[..len] == b[..len],
            "the images differ in the MiB at {addr:#x}"
        );
        addr += len as u64;
    }
    // Writes through the mapping stay private to the guest: the file is unchanged.
    mapped_mem
        .write_slice(
            &[0xcc; 16],
            vm_memory::GuestAddress(copied.kernel_end - 0x10_0000),
        )
        .unwrap();
    let again = linux::load_kernel(&copied_mem, &mut File::open(&path).unwrap()).unwrap();
    assert_eq!(again.kernel_end, copied.kernel_end);
    copied_mem
        .read_slice(
            &mut a[..16],
            vm_memory::GuestAddress(copied.kernel_end - 0x10_0000),
        )
        .unwrap();
    assert_ne!(a[..16], [0xcc; 16]);
}
