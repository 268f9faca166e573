//! Loading an ELF vmlinux by mapping its file pages into guest RAM instead of copying them.
//!
//! A distribution vmlinux is ~50 MB. Copying it means faulting in and zeroing every
//! destination page, then copying; mapping its segments copy-on-write (`MAP_PRIVATE |
//! MAP_FIXED` over the guest's anonymous RAM) costs one `mmap` per segment, and the guest
//! faults in from the page cache only the pages it touches. Pages a segment shares with its
//! neighbour (its first and last, when unaligned) are copied, so no segment's bytes clobber
//! another's.
//!
//! Only RAM vmkit mapped anonymous and private is remapped this way; a region backed by a
//! file or shared with another process keeps its mapping and gets a copy.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::image::ElfImage;
use super::load::{check_fits, KernelEntry, KernelFormat, LoadedKernel};
use super::LinuxBootError;
use vmkit::GuestMemoryMmap;

const PAGE: u64 = 4096;

/// Whether the guest range `[addr, addr + len)` lies in one anonymous, private region of
/// `memory`, so its pages may be replaced by a private file mapping.
fn remappable(memory: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    let Some(region) = memory.find_region(GuestAddress(addr)) else {
        return false;
    };
    let private = region.flags() & libc::MAP_PRIVATE != 0;
    let end_inside = addr
        .checked_add(len)
        .is_some_and(|end| end <= region.start_addr().0 + region.len());
    region.file_offset().is_none() && private && end_inside
}

/// Puts `[offset, offset + len)` of `file` at guest address `paddr`: maps the whole pages
/// when the file and guest offsets agree modulo the page size, copies the rest.
fn place(
    memory: &GuestMemoryMmap,
    file: &File,
    offset: u64,
    paddr: u64,
    len: u64,
) -> Result<u64, LinuxBootError> {
    let mut mapped = 0;
    let first_page = paddr.next_multiple_of(PAGE);
    let end = paddr + len;
    let last_page = end & !(PAGE - 1);
    let congruent = offset % PAGE == paddr % PAGE;
    if congruent && last_page > first_page && remappable(memory, first_page, last_page - first_page)
    {
        let host = memory
            .get_host_address(GuestAddress(first_page))
            .map_err(|source| LinuxBootError::GuestMemory {
                what: "kernel",
                addr: first_page,
                source,
            })?;
        let map_len = (last_page - first_page) as usize;
        let file_offset = offset + (first_page - paddr);
        // SAFETY: `host..host + map_len` lies inside one anonymous private mapping that the
        // VM owns for its whole lifetime (checked by `remappable`); MAP_FIXED replaces those
        // pages with private copy-on-write pages of the file, so the range stays mapped,
        // readable and writable, and every access to guest memory is volatile anyway. The
        // file descriptor is valid for the call; the mapping keeps its own reference.
        let result = unsafe {
            libc::mmap(
                host.cast(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                file_offset as libc::off_t,
            )
        };
        if result == libc::MAP_FAILED || result != host.cast() {
            return Err(LinuxBootError::MapImage {
                addr: first_page,
                source: std::io::Error::last_os_error(),
            });
        }
        mapped = map_len as u64;
        copy(memory, file, offset, paddr, first_page - paddr)?;
        copy(
            memory,
            file,
            offset + (last_page - paddr),
            last_page,
            end - last_page,
        )?;
    } else {
        copy(memory, file, offset, paddr, len)?;
    }
    Ok(mapped)
}

fn read_at(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, LinuxBootError> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(LinuxBootError::ReadImage)?;
    Ok(buf)
}

fn copy(
    memory: &GuestMemoryMmap,
    file: &File,
    offset: u64,
    paddr: u64,
    len: u64,
) -> Result<(), LinuxBootError> {
    if len == 0 {
        return Ok(());
    }
    let bytes = read_at(file, offset, len as usize)?;
    memory
        .write_slice(&bytes, GuestAddress(paddr))
        .map_err(|source| LinuxBootError::GuestMemory {
            what: "kernel",
            addr: paddr,
            source,
        })
}

/// Loads the ELF vmlinux `elf` (as [`inspect`](super::inspect) found it in `file`), mapping
/// rather than copying where it can.
///
/// Like linux-loader's ELF loader, it expects fresh (zeroed) RAM: the part of a segment past
/// its file contents (its `.bss`) is not written.
pub(super) fn load_elf_mapped(
    memory: &GuestMemoryMmap,
    file: &File,
    elf: &ElfImage,
) -> Result<LoadedKernel, LinuxBootError> {
    check_fits(memory, elf)?;
    let mut kernel_end = 0;
    let mut mapped = 0;
    for segment in &elf.segments {
        mapped += place(memory, file, segment.offset, segment.paddr, segment.filesz)?;
        kernel_end = kernel_end.max(segment.paddr + segment.memsz);
    }
    let kernel = LoadedKernel {
        format: KernelFormat::Elf,
        entry: match elf.pvh_entry {
            Some(pvh) => KernelEntry::Pvh(GuestAddress(pvh)),
            None => KernelEntry::Linux64(GuestAddress(elf.entry)),
        },
        linux64_entry: Some(GuestAddress(elf.entry)),
        kernel_end,
        setup_header: None,
        mapped_bytes: mapped,
    };
    Ok(kernel)
}
