//! Booting an unmodified Linux kernel: load the image, describe the machine to it, and set up
//! the vCPUs as firmware would.
//!
//! Three images are understood, all through linux-loader:
//!
//! - an ELF `vmlinux` with the PVH note, entered in 32-bit protected mode with an
//!   `hvm_start_info` (the fastest: nothing to decompress);
//! - an ELF `vmlinux` without it, entered at its 64-bit entry with a zero page;
//! - a `bzImage`, loaded at 1 MiB and entered at its 64-bit entry with a zero page that
//!   carries its setup header (the kernel decompresses itself first).
//!
//! A kernel file is untrusted: before anything is loaded, [`image::inspect`] checks its headers
//! against its length (a truncated bzImage, or a program header past the end of a vmlinux, is
//! refused with the sizes), and the loader checks that the RAM the kernel needs (for a
//! bzImage, also the `init_size` bytes it decompresses itself into) is in guest memory. An
//! initrd must be a non-empty regular file that fits above that.
//!
//! The machine described to the guest: the RAM of [`layout::ram_ranges`] with an E820 map
//! that leaves out the legacy area and the 32-bit MMIO hole ([`layout::e820_map`]), the
//! command line, the initrd at the top of low RAM, ACPI tables ([`acpi`]: the vCPUs, the
//! IOAPIC, the serial ports and virtio-mmio devices the VMM lists, and, if the VMM has one,
//! an ACPI PM block: [`AcpiDevices::pm`]) and an MP table ([`mptable`]) with the same
//! processors for kernels built without ACPI. Each vCPU gets CPUID with the hypervisor bit,
//! KVM's leaves and the TSC-deadline timer when the hypervisor has it, machine-check banks,
//! boot MSRs and its LINT pins ([`cpu`]).
//!
//! Devices are the VMM's: a Linux guest wants at least a serial port on IRQ 4, the i8042 (for
//! `reboot=k`) and a CMOS clock at `0x70` (vmkit-devices has all three), an ACPI PM block for
//! the PM timer and `poweroff` (vmkit-devices' `PmBlock`; [`PmBlock`] describes it), plus virtio-mmio
//! devices, announced in the ACPI DSDT (list them in [`MachineConfig::devices`]). A kernel
//! built with `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` also takes them on the command line
//! ([`Cmdline::add_virtio_mmio_device`](linux_loader::cmdline::Cmdline::add_virtio_mmio_device));
//! Debian's kernels are not.
//!
//! ```no_run
//! use std::fs::File;
//! use linux_loader::cmdline::Cmdline;
//! use vmkit_boot::linux::{self, layout};
//! use vmkit::{MemoryFlags, MemoryRegion, VmConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hypervisor = vmkit::open()?;
//! let vm = hypervisor.create_vm(&VmConfig::default().irqchip(true).pit(true))?;
//! let ram_size = 256 << 20;
//! for (start, size) in layout::ram_ranges(ram_size) {
//!     vm.add_memory_region(MemoryRegion::anonymous(start, size as usize, MemoryFlags::empty())?)?;
//! }
//! let memory = vm.memory();
//! let kernel = linux::load_kernel(&memory, &mut File::open("vmlinux")?)?;
//! let mut cmdline = Cmdline::new(4096)?;
//! cmdline.insert_str("console=ttyS0 reboot=k panic=-1")?;
//! let machine = linux::MachineConfig { ram_size, vcpus: 1, ..Default::default() };
//! linux::write_boot_info(&memory, &kernel, &cmdline, None, &machine)?;
//! let vcpu = vm.create_vcpu(0)?;
//! linux::configure_vcpu(vcpu.as_ref(), &memory, &kernel, (0, 1), hypervisor.capabilities(), true)?;
//! // ... register devices, then run the vCPU.
//! # Ok(()) }
//! ```

pub mod acpi;
pub mod cpu;
pub mod image;
pub mod layout;
mod load;
mod mapped;
pub mod mptable;
mod params;

use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestMemoryBackend, GuestMemoryError};

pub use acpi::{AcpiDevices, PciHostBridge, PciIntx, PmBlock, SerialPort, VirtioMmioDevice};
pub use cpu::{configure_vcpu, guest_cpuid, mce_banks, DEFAULT_MCE_BANKS};
pub use image::{inspect, ImageError, KernelImage};
pub use load::{
    file_kind, load_initrd, load_kernel, Initrd, KernelEntry, KernelFormat, LoadedKernel,
};
pub use params::{write_cmdline, write_pvh_start_info, write_zero_page};

use crate::entry::BootError;
use vmkit::VcpuError;

/// Errors of booting Linux.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinuxBootError {
    /// The image is neither an ELF vmlinux nor a bzImage linux-loader accepts.
    #[error("cannot load the kernel image: {error}")]
    KernelImage {
        /// What linux-loader reported. It is shown in the message and not returned by
        /// `source()`: linux-loader's error prints its cause and also returns it, so a chain
        /// through it would print that cause twice.
        error: linux_loader::loader::Error,
    },
    /// The image's headers disagree with its file (see [`image::inspect`]).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The kernel needs guest RAM that `memory` does not have.
    #[error(
        "the kernel does not fit in guest RAM: it needs {start:#x}..{end:#x} ({detail}), but \
         the RAM there ends at {ram_end:#x}"
    )]
    KernelDoesNotFit {
        /// The first byte it needs.
        start: u64,
        /// One past the last byte it needs.
        end: u64,
        /// What it puts there.
        detail: String,
        /// One past the last byte of the RAM that holds `start` (or of the last RAM below it).
        ram_end: u64,
    },
    /// The initrd is a directory, a device or another file that is not a regular file.
    #[error("the initrd is {kind}, not a regular file")]
    InitrdNotAFile {
        /// What it is ("a directory", ...).
        kind: &'static str,
    },
    /// The initrd file is empty.
    #[error("the initrd is empty (0 bytes)")]
    InitrdEmpty,
    /// The command line is longer than the kernel's setup header says it takes.
    #[error(
        "the kernel command line is {len} bytes; this kernel takes at most {max} \
         (cmdline_size in its setup header)"
    )]
    CmdlineTooLongForKernel {
        /// Its length without the NUL.
        len: usize,
        /// The kernel's limit without the NUL.
        max: usize,
    },
    /// The ELF image is malformed.
    #[error("invalid ELF kernel image: {reason}")]
    InvalidElf {
        /// What is wrong with it.
        reason: String,
    },
    /// Mapping the kernel image into guest RAM failed.
    #[error("cannot map the kernel image at guest address {addr:#x}")]
    MapImage {
        /// Where it was to go.
        addr: u64,
        /// The error from `mmap(2)`.
        #[source]
        source: std::io::Error,
    },
    /// Reading the kernel image failed.
    #[error("cannot read the kernel image")]
    ReadImage(#[source] std::io::Error),
    /// Reading the initrd failed.
    #[error("cannot read the initrd")]
    ReadInitrd(#[source] std::io::Error),
    /// The initrd does not fit between the kernel and the top of low RAM.
    #[error("the initrd ({size} bytes) does not fit in the {room} bytes above the kernel")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
        /// The room there is.
        room: u64,
    },
    /// The command line is not valid for linux-loader.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line is longer than its slot in guest memory.
    #[error("the kernel command line is {len} bytes, more than the {max} its slot holds")]
    CmdlineTooLong {
        /// Its length with the NUL.
        len: usize,
        /// The slot's size.
        max: usize,
    },
    /// More memory-map entries than the boot structure holds.
    #[error("{entries} memory-map entries; the boot structure holds {max}")]
    MemoryMapTooLong {
        /// How many there are.
        entries: usize,
        /// How many fit.
        max: usize,
    },
    /// RAM is smaller than the layout needs.
    #[error("{ram_size} bytes of RAM; booting Linux needs at least {min}")]
    RamTooSmall {
        /// The RAM size asked for.
        ram_size: u64,
        /// The least this layout boots.
        min: u64,
    },
    /// The MP table cannot describe this many vCPUs.
    #[error("{vcpus} vCPUs; the MP table describes 1 to {max}")]
    VcpuCount {
        /// How many were asked for.
        vcpus: u32,
        /// The most it describes.
        max: u32,
    },
    /// The ACPI tables outgrew their area.
    #[error("the ACPI tables take {size} bytes; their area holds {max}")]
    AcpiTooLarge {
        /// Their size.
        size: u64,
        /// The area's size.
        max: u64,
    },
    /// A PVH entry point must be a 32-bit address.
    #[error("the PVH entry point {entry:#x} lies above 4 GiB")]
    EntryAbove4G {
        /// The entry point.
        entry: u64,
    },
    /// A boot structure does not fit in guest memory.
    #[error("cannot write the {what} at guest address {addr:#x}")]
    GuestMemory {
        /// The structure.
        what: &'static str,
        /// Where it goes.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: GuestMemoryError,
    },
    /// linux-loader could not write the zero page or the start info.
    #[error("cannot write the boot parameters")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// Setting up the entry registers failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A vCPU refused its state.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// Loads the kernel image in `file` into `memory`: an ELF vmlinux by mapping its pages
/// copy-on-write into the guest's RAM where it can (see below), a bzImage with linux-loader.
///
/// Mapping makes loading a ~50 MB vmlinux nearly free: nothing is copied or zeroed up front,
/// and the guest faults in the pages it uses from the page cache. Pages shared between
/// segments, and RAM that is file-backed or shared, are copied instead. RAM must be fresh
/// (zeroed), as for [`load_kernel`].
///
/// The file must not change while the VM runs: a private mapping shows later changes to the
/// file in every page the guest has not yet written. Measured in the hardware-virtualization
/// harness (Debian's 53 MB vmlinux, instruction-counted clock), mapping reached userspace
/// about 15 ms sooner than copying, out of 1.72 s; its main gain is memory shared between VMs
/// booting the same file.
pub fn load_kernel_file(
    memory: &vmkit::GuestMemoryMmap,
    file: &std::fs::File,
) -> Result<LoadedKernel, LinuxBootError> {
    let mut reader = file;
    match inspect(&mut reader)? {
        KernelImage::Elf(elf) => mapped::load_elf_mapped(memory, file, &elf),
        KernelImage::BzImage(_) => load_kernel(memory, &mut reader),
    }
}

/// The machine a Linux guest is told about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineConfig {
    /// Bytes of RAM, laid out by [`layout::ram_ranges`].
    pub ram_size: u64,
    /// vCPUs (APIC IDs `0..vcpus`, times `apic_id_stride`).
    pub vcpus: u32,
    /// vCPU `n` has APIC ID `n * apic_id_stride` (0 counts as 1): the hypervisor's
    /// [`Capabilities::apic_id_stride`](vmkit::Capabilities::apic_id_stride).
    pub apic_id_stride: u32,
    /// The devices announced in ACPI.
    pub devices: AcpiDevices,
}

/// Writes everything the kernel reads at boot: the command line, the zero page or the PVH
/// start info (whichever `kernel`'s entry wants), the ACPI tables and the MP table (for
/// kernels built without ACPI).
pub fn write_boot_info<M: GuestMemoryBackend>(
    memory: &M,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<Initrd>,
    machine: &MachineConfig,
) -> Result<(), LinuxBootError> {
    if machine.ram_size < layout::MIN_RAM {
        return Err(LinuxBootError::RamTooSmall {
            ram_size: machine.ram_size,
            min: layout::MIN_RAM,
        });
    }
    let e820 = layout::e820_map(machine.ram_size);
    let cmdline_len = write_cmdline(memory, cmdline)?;
    if let Some(max) = kernel.cmdline_max() {
        if cmdline_len > max {
            return Err(LinuxBootError::CmdlineTooLongForKernel {
                len: cmdline_len,
                max,
            });
        }
    }
    let rsdp = acpi::write_acpi_tables_with_stride(
        memory,
        machine.vcpus,
        machine.apic_id_stride,
        &machine.devices,
    )?;
    mptable::write_mptable_with_stride(memory, machine.vcpus, machine.apic_id_stride)?;
    match kernel.entry {
        KernelEntry::Pvh(_) => write_pvh_start_info(memory, initrd, &e820, rsdp),
        KernelEntry::Linux64(_) => {
            write_zero_page(memory, kernel, cmdline_len, initrd, &e820, rsdp)
        }
    }
}
