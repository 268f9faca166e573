//! Loading a kernel image and an initrd into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, Error as ElfError, PvhBootCapability};
use linux_loader::loader::{Error as LoaderError, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

use super::layout::HIGH_RAM_START;
use super::LinuxBootError;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelEntry {
    /// The PVH entry (an ELF vmlinux with the `XEN_ELFNOTE_PHYS32_ENTRY` note): 32-bit
    /// protected mode, paging off, `ebx` = the `hvm_start_info` address.
    Pvh(GuestAddress),
    /// The 64-bit Linux boot protocol entry: long mode, `rsi` = the zero page address.
    Linux64(GuestAddress),
}

/// What the image was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF `vmlinux`.
    Elf,
    /// A `bzImage`, whose setup header the zero page carries.
    BzImage,
}

/// A kernel loaded into guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The image's format.
    pub format: KernelFormat,
    /// Where to enter it. A vmlinux with a PVH note is entered there; use
    /// [`LoadedKernel::prefer_linux64`] to take its 64-bit entry instead.
    pub entry: KernelEntry,
    /// The 64-bit entry, when the image has one: a vmlinux's ELF entry, a bzImage's
    /// `startup_64` (0x200 past the protected-mode code).
    pub linux64_entry: Option<GuestAddress>,
    /// One past the last byte the kernel occupies.
    pub kernel_end: u64,
    /// The bzImage's setup header, which goes into the zero page.
    pub setup_header: Option<setup_header>,
    /// How many bytes of the image were mapped into guest RAM rather than copied (see
    /// [`load_kernel_file`](super::load_kernel_file)).
    pub mapped_bytes: u64,
}

impl LoadedKernel {
    /// Switches to the 64-bit entry if the image has one (it is used as is otherwise).
    pub fn prefer_linux64(mut self) -> Self {
        if let Some(entry) = self.linux64_entry {
            self.entry = KernelEntry::Linux64(entry);
        }
        self
    }

    /// The highest address (inclusive) the kernel accepts for the initrd.
    pub fn initrd_addr_max(&self) -> u64 {
        // Boot protocol 2.03+ states it; older kernels, and vmlinux images with no header,
        // take the historical limit.
        match self.setup_header {
            Some(header) if header.version >= 0x203 && header.initrd_addr_max != 0 => {
                u64::from(header.initrd_addr_max)
            }
            Some(_) => 0x37ff_ffff,
            None => u64::from(u32::MAX),
        }
    }
}

/// Offset of `startup_64` in a bzImage's protected-mode code (boot protocol 2.12: "the
/// 64-bit entry point is at offset 0x200").
const BZIMAGE_STARTUP_64: u64 = 0x200;

/// Loads `image`, an ELF vmlinux or a bzImage, into `memory` at the addresses the image asks
/// for (a vmlinux's physical segment addresses; a bzImage at 1 MiB).
///
/// The image is read from its start whatever the file position.
pub fn load_kernel<M, F>(memory: &M, image: &mut F) -> Result<LoadedKernel, LinuxBootError>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let high = Some(GuestAddress(HIGH_RAM_START));
    match Elf::load(memory, None, image, high) {
        Ok(result) => {
            let entry = result.kernel_load;
            Ok(LoadedKernel {
                format: KernelFormat::Elf,
                entry: match result.pvh_boot_cap {
                    PvhBootCapability::PvhEntryPresent(pvh) => KernelEntry::Pvh(pvh),
                    _ => KernelEntry::Linux64(entry),
                },
                linux64_entry: Some(entry),
                kernel_end: result.kernel_end,
                setup_header: None,
                mapped_bytes: 0,
            })
        }
        Err(LoaderError::Elf(ElfError::InvalidElfMagicNumber)) => {
            image
                .seek(SeekFrom::Start(0))
                .map_err(LinuxBootError::ReadImage)?;
            let result = BzImage::load(memory, None, image, high)
                .map_err(|error| LinuxBootError::KernelImage { error })?;
            let header = result.setup_header;
            Ok(LoadedKernel {
                format: KernelFormat::BzImage,
                entry: KernelEntry::Linux64(GuestAddress(
                    result.kernel_load.0 + BZIMAGE_STARTUP_64,
                )),
                linux64_entry: Some(GuestAddress(result.kernel_load.0 + BZIMAGE_STARTUP_64)),
                kernel_end: result.kernel_end,
                setup_header: header,
                mapped_bytes: 0,
            })
        }
        Err(error) => Err(LinuxBootError::KernelImage { error }),
    }
}

/// An initrd in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initrd {
    /// Its first byte.
    pub addr: GuestAddress,
    /// Its length.
    pub size: u64,
}

/// Loads the initrd in `file` at the top of the RAM below `ram_end` (and below the kernel's
/// `initrd_addr_max`), page-aligned, above the kernel.
pub fn load_initrd<M: GuestMemoryBackend>(
    memory: &M,
    file: &mut File,
    kernel: &LoadedKernel,
    ram_end: u64,
) -> Result<Initrd, LinuxBootError> {
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|size| file.seek(SeekFrom::Start(0)).map(|_| size))
        .map_err(LinuxBootError::ReadInitrd)?;
    let top = ram_end.min(kernel.initrd_addr_max().saturating_add(1));
    let addr = top.checked_sub(size).map(|addr| addr & !0xfff);
    let addr = match addr {
        Some(addr) if addr >= kernel.kernel_end => addr,
        _ => {
            return Err(LinuxBootError::InitrdTooLarge {
                size,
                room: top.saturating_sub(kernel.kernel_end),
            })
        }
    };
    let len = usize::try_from(size).map_err(|_| LinuxBootError::InitrdTooLarge {
        size,
        room: top.saturating_sub(kernel.kernel_end),
    })?;
    memory
        .read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|source| LinuxBootError::GuestMemory {
            what: "initrd",
            addr,
            source,
        })?;
    Ok(Initrd {
        addr: GuestAddress(addr),
        size,
    })
}
