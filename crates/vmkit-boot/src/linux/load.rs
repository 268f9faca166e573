//! Loading a kernel image and an initrd into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile};

use super::image::{inspect, ElfImage, KernelImage};
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

    /// The longest command line (without the NUL) the kernel takes, when its setup header
    /// says (`cmdline_size`, boot protocol 2.06 and later); `None` for a vmlinux.
    pub fn cmdline_max(&self) -> Option<usize> {
        match self.setup_header {
            Some(header) if header.version >= 0x206 => Some(header.cmdline_size as usize),
            _ => None,
        }
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
/// The image's headers are checked against its length first ([`inspect`]), and the memory
/// the kernel needs against `memory` (every segment of a vmlinux; a bzImage's image and the
/// `init_size` bytes it decompresses into). The image is read from its start whatever the
/// file position.
pub fn load_kernel<M, F>(memory: &M, image: &mut F) -> Result<LoadedKernel, LinuxBootError>
where
    M: GuestMemoryBackend,
    F: Read + ReadVolatile + Seek,
{
    let high = Some(GuestAddress(HIGH_RAM_START));
    match inspect(image)? {
        KernelImage::Elf(elf) => {
            check_fits(memory, &elf)?;
            let result = Elf::load(memory, None, image, high)
                .map_err(|error| LinuxBootError::KernelImage { error })?;
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
        KernelImage::BzImage(bz) => {
            let footprint = bz.footprint();
            fits(memory, footprint.clone(), footprint.clone(), || {
                let runtime = footprint.end - u64::from(bz.header.init_size);
                format!(
                    "{} bytes of image at {:#x}, then {} bytes (init_size) to decompress \
                         into from {runtime:#x}",
                    bz.kernel_size,
                    bz.load_addr(),
                    { bz.header.init_size },
                )
            })?;
            let result = BzImage::load(memory, None, image, high)
                .map_err(|error| LinuxBootError::KernelImage { error })?;
            let entry = GuestAddress(result.kernel_load.0 + BZIMAGE_STARTUP_64);
            Ok(LoadedKernel {
                format: KernelFormat::BzImage,
                entry: KernelEntry::Linux64(entry),
                linux64_entry: Some(entry),
                // The initrd must stay clear of where the kernel decompresses itself.
                kernel_end: footprint.end.max(result.kernel_end),
                setup_header: result.setup_header,
                mapped_bytes: 0,
            })
        }
    }
}

/// Checks that every segment of `elf` lies in RAM of `memory` above 1 MiB, `.bss` included;
/// a refusal states the range all the segments span.
pub(super) fn check_fits<M: GuestMemoryBackend>(
    memory: &M,
    elf: &ElfImage,
) -> Result<(), LinuxBootError> {
    for segment in &elf.segments {
        if segment.paddr < HIGH_RAM_START {
            return Err(LinuxBootError::InvalidElf {
                reason: format!(
                    "segment at {:#x} ({:#x} bytes) lies below 1 MiB",
                    segment.paddr, segment.memsz
                ),
            });
        }
    }
    for segment in &elf.segments {
        let range = segment.paddr..segment.paddr + segment.memsz;
        fits(memory, range, elf.footprint(), || {
            let bytes = elf.segments.iter().map(|s| s.memsz);
            format!(
                "{} loadable segment(s), {} bytes in memory",
                elf.segments.len(),
                bytes.fold(0u64, u64::saturating_add)
            )
        })?;
    }
    Ok(())
}

/// Checks that `range` is contiguous RAM of `memory`; a refusal states `needs`, the whole
/// range the kernel needs.
fn fits<M: GuestMemoryBackend>(
    memory: &M,
    range: Range<u64>,
    needs: Range<u64>,
    detail: impl FnOnce() -> String,
) -> Result<(), LinuxBootError> {
    let in_ram = usize::try_from(range.end - range.start)
        .is_ok_and(|len| memory.check_range(GuestAddress(range.start), len));
    if in_ram {
        return Ok(());
    }
    // Where the RAM that holds the start ends (the end of the last region below it when
    // none holds it).
    let ram_end = memory
        .iter()
        .filter(|region| region.start_addr().0 <= needs.start)
        .map(|region| region.start_addr().0.saturating_add(region.len()))
        .max()
        .unwrap_or(0);
    Err(LinuxBootError::KernelDoesNotFit {
        start: needs.start,
        end: needs.end,
        detail: detail(),
        ram_end,
    })
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
    let metadata = file.metadata().map_err(LinuxBootError::ReadInitrd)?;
    if !metadata.is_file() {
        return Err(LinuxBootError::InitrdNotAFile {
            kind: file_kind(&metadata.file_type()),
        });
    }
    let size = metadata.len();
    if size == 0 {
        return Err(LinuxBootError::InitrdEmpty);
    }
    file.seek(SeekFrom::Start(0))
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

/// What a file that is not a regular file is, for messages.
pub fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::linux::image::tests::{bzimage, elf};
    use vm_memory::GuestMemoryMmap;

    fn ram(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn a_bzimage_that_does_not_fit_in_ram_is_refused_with_its_needs() {
        // 4 KiB of kernel; it decompresses into 4 MiB from 16 MiB.
        let image = bzimage(4, 256, 5 * 512 + 4096);
        let err = load_kernel(&ram(1 << 20), &mut Cursor::new(&image)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kernel does not fit in guest RAM: it needs 0x100000..0x1400000 (4096 bytes of \
             image at 0x100000, then 4194304 bytes (init_size) to decompress into from \
             0x1000000), but the RAM there ends at 0x100000"
        );
        let err = load_kernel(&ram(16 << 20), &mut Cursor::new(&image)).unwrap_err();
        assert!(matches!(
            err,
            LinuxBootError::KernelDoesNotFit {
                end: 0x140_0000,
                ram_end: 0x100_0000,
                ..
            }
        ));
        let kernel = load_kernel(&ram(20 << 20), &mut Cursor::new(&image)).unwrap();
        assert_eq!(kernel.format, KernelFormat::BzImage);
        assert_eq!(kernel.kernel_end, 0x140_0000);
        assert_eq!(kernel.cmdline_max(), Some(2047));
    }

    #[test]
    fn a_truncated_bzimage_is_refused_before_linux_loader_sees_it() {
        let image = bzimage(4, 0x1000, 5 * 512 + 100);
        let err = load_kernel(&ram(32 << 20), &mut Cursor::new(&image)).unwrap_err();
        assert!(matches!(
            err,
            LinuxBootError::Image(crate::linux::ImageError::BzImageTruncated { .. })
        ));
    }

    fn initrd_file(dir: &tempfile::TempDir, len: usize) -> File {
        let path = dir.path().join(format!("initrd-{len}"));
        std::fs::write(&path, vec![0x5a; len]).unwrap();
        File::open(path).unwrap()
    }

    fn small_kernel() -> LoadedKernel {
        let image = bzimage(4, 256, 5 * 512 + 4096);
        load_kernel(&ram(20 << 20), &mut Cursor::new(&image)).unwrap()
    }

    #[test]
    fn an_initrd_must_be_a_regular_file_with_bytes_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let memory = ram(32 << 20);
        let kernel = small_kernel();
        let mut directory = File::open(dir.path()).unwrap();
        let err = load_initrd(&memory, &mut directory, &kernel, 32 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the initrd is a directory, not a regular file"
        );
        let mut null = File::open("/dev/null").unwrap();
        let err = load_initrd(&memory, &mut null, &kernel, 32 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the initrd is a character device, not a regular file"
        );
        let err = load_initrd(&memory, &mut initrd_file(&dir, 0), &kernel, 32 << 20).unwrap_err();
        assert_eq!(err.to_string(), "the initrd is empty (0 bytes)");
    }

    #[test]
    fn an_initrd_goes_at_the_top_of_ram_clear_of_the_decompressing_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let memory = ram(32 << 20);
        let kernel = small_kernel();
        let initrd = load_initrd(&memory, &mut initrd_file(&dir, 5000), &kernel, 32 << 20).unwrap();
        assert_eq!(initrd.addr, GuestAddress((32 << 20) - 0x2000));
        assert_eq!(initrd.size, 5000);
        // 12 MiB of RAM above the kernel's 20 MiB footprint; 13 MiB do not fit.
        let err =
            load_initrd(&memory, &mut initrd_file(&dir, 13 << 20), &kernel, 32 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the initrd (13631488 bytes) does not fit in the 12582912 bytes above the kernel"
        );
    }

    #[test]
    fn an_elf_whose_bss_runs_past_ram_is_refused() {
        // 2 KiB from the file, 8 MiB in memory, at 16 MiB.
        let image = elf([0x1000, 0x100_0000, 0x800, 0x80_0000], 1, 0x1800);
        let err = load_kernel(&ram(20 << 20), &mut Cursor::new(&image)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kernel does not fit in guest RAM: it needs 0x1000000..0x1800000 (1 loadable \
             segment(s), 8388608 bytes in memory), but the RAM there ends at 0x1400000"
        );
        let kernel = load_kernel(&ram(24 << 20), &mut Cursor::new(&image)).unwrap();
        assert_eq!(kernel.kernel_end, 0x180_0000);
        assert_eq!(kernel.cmdline_max(), None);
    }

    #[test]
    fn a_command_line_longer_than_the_kernel_takes_is_refused() {
        let memory = ram(32 << 20);
        let kernel = small_kernel();
        let mut cmdline = linux_loader::cmdline::Cmdline::new(4096).unwrap();
        cmdline.insert_str("x".repeat(2048)).unwrap();
        let machine = crate::linux::MachineConfig {
            ram_size: 32 << 20,
            vcpus: 1,
            ..Default::default()
        };
        let err =
            crate::linux::write_boot_info(&memory, &kernel, &cmdline, None, &machine).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kernel command line is 2048 bytes; this kernel takes at most 2047 \
             (cmdline_size in its setup header)"
        );
        let mut cmdline = linux_loader::cmdline::Cmdline::new(4096).unwrap();
        cmdline.insert_str("x".repeat(2047)).unwrap();
        crate::linux::write_boot_info(&memory, &kernel, &cmdline, None, &machine).unwrap();
    }
}
