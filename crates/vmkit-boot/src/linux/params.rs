//! The boot information a Linux kernel reads at entry: the command line, and either the zero
//! page (`struct boot_params`, for the Linux boot protocol) or the PVH `hvm_start_info`.

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{E820Entry, CMDLINE, CMDLINE_MAX, PVH_START_INFO, ZERO_PAGE};
use super::load::{Initrd, LoadedKernel};
use super::LinuxBootError;

/// "HdrS": the setup header's magic.
const HEADER_MAGIC: u32 = 0x5372_6448;
/// The boot sector's signature.
const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader` for a loader with no assigned ID.
const LOADER_UNDEFINED: u8 = 0xff;
/// The alignment a vmlinux without a setup header is built for (CONFIG_PHYSICAL_ALIGN).
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336e_c578;

/// Writes `cmdline` at [`CMDLINE`] and returns its length without the NUL.
pub fn write_cmdline<M: GuestMemoryBackend>(
    memory: &M,
    cmdline: &Cmdline,
) -> Result<usize, LinuxBootError> {
    let cstring = cmdline.as_cstring().map_err(LinuxBootError::Cmdline)?;
    let bytes = cstring.as_bytes_with_nul();
    if bytes.len() > CMDLINE_MAX {
        return Err(LinuxBootError::CmdlineTooLong {
            len: bytes.len(),
            max: CMDLINE_MAX,
        });
    }
    memory
        .write_slice(bytes, GuestAddress(CMDLINE))
        .map_err(|source| LinuxBootError::GuestMemory {
            what: "command line",
            addr: CMDLINE,
            source,
        })?;
    Ok(bytes.len() - 1)
}

/// Writes the zero page for the 64-bit Linux boot protocol at [`ZERO_PAGE`], pointing at the
/// RSDP at `rsdp`.
pub fn write_zero_page<M: GuestMemoryBackend>(
    memory: &M,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    e820: &[E820Entry],
    rsdp: u64,
) -> Result<(), LinuxBootError> {
    let mut params = boot_params {
        acpi_rsdp_addr: rsdp,
        ..Default::default()
    };
    match kernel.setup_header {
        Some(header) => params.hdr = header,
        None => {
            params.hdr.boot_flag = BOOT_FLAG;
            params.hdr.header = HEADER_MAGIC;
            params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        // load_initrd placed it below initrd_addr_max, itself below 4 GiB.
        params.hdr.ramdisk_image = initrd.addr.0 as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    if e820.len() > params.e820_table.len() {
        return Err(LinuxBootError::MemoryMapTooLong {
            entries: e820.len(),
            max: params.e820_table.len(),
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        memory,
    )
    .map_err(LinuxBootError::BootParams)
}

/// Writes the PVH `hvm_start_info` at [`PVH_START_INFO`], followed by its memory map and (with
/// an initrd) its module list, pointing at the RSDP at `rsdp`.
pub fn write_pvh_start_info<M: GuestMemoryBackend>(
    memory: &M,
    initrd: Option<Initrd>,
    e820: &[E820Entry],
    rsdp: u64,
) -> Result<(), LinuxBootError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|entry| hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind as u32,
            reserved: 0,
        })
        .collect();
    let memmap_addr = PVH_START_INFO + std::mem::size_of::<hvm_start_info>() as u64;
    let modlist_addr =
        memmap_addr + (memmap.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
    let mut start_info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE,
        rsdp_paddr: rsdp,
        memmap_paddr: memmap_addr,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_START_INFO));
    if let Some(initrd) = initrd {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = modlist_addr;
        params = BootParams::new(&start_info, GuestAddress(PVH_START_INFO));
        let module = hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(modlist_addr));
    }
    params.set_sections(&memmap, GuestAddress(memmap_addr));
    // The structures must end before the zero page.
    let room = ZERO_PAGE
        - PVH_START_INFO
        - (std::mem::size_of::<hvm_start_info>() + std::mem::size_of::<hvm_modlist_entry>()) as u64;
    let max = (room / std::mem::size_of::<hvm_memmap_table_entry>() as u64) as usize;
    if memmap.len() > max {
        return Err(LinuxBootError::MemoryMapTooLong {
            entries: memmap.len(),
            max,
        });
    }
    PvhBootConfigurator::write_bootparams(&params, memory).map_err(LinuxBootError::BootParams)?;
    Ok(())
}
