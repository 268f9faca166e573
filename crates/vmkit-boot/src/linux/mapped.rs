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

use super::load::{KernelEntry, KernelFormat, LoadedKernel};
use super::LinuxBootError;
use vmkit::GuestMemoryMmap;

const PAGE: u64 = 4096;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// The most program headers accepted (a vmlinux has about six).
const MAX_PHDRS: u16 = 64;
/// The largest note segment read.
const MAX_NOTES: u64 = 1 << 16;

/// What the mapped loader found in the image.
#[derive(Debug, PartialEq, Eq)]
struct Segment {
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn invalid(reason: impl Into<String>) -> LinuxBootError {
    LinuxBootError::InvalidElf {
        reason: reason.into(),
    }
}

fn read_at(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, LinuxBootError> {
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(LinuxBootError::ReadImage)?;
    Ok(buf)
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Whether `file` starts with the ELF magic.
pub(super) fn is_elf(file: &File) -> Result<bool, LinuxBootError> {
    let mut magic = [0; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) => Ok(&magic == b"\x7fELF"),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(err) => Err(LinuxBootError::ReadImage(err)),
    }
}

/// The entry point, the loadable segments and the PVH entry of an x86-64 ELF image.
fn parse(file: &File, file_len: u64) -> Result<(u64, Vec<Segment>, Option<u64>), LinuxBootError> {
    let ehdr = read_at(file, 0, 64)?;
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(invalid("not a little-endian ELF64 image"));
    }
    if u16_at(&ehdr, 18) != 62 {
        return Err(invalid(format!(
            "machine {} is not x86-64",
            u16_at(&ehdr, 18)
        )));
    }
    let entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54);
    let phnum = u16_at(&ehdr, 56);
    if phentsize != 56 || phnum == 0 || phnum > MAX_PHDRS {
        return Err(invalid(format!(
            "{phnum} program headers of {phentsize} bytes"
        )));
    }
    let phdrs = read_at(file, phoff, usize::from(phnum) * 56)?;
    let mut segments = Vec::new();
    let mut pvh = None;
    for phdr in phdrs.chunks_exact(56) {
        let (kind, offset, paddr) = (u32_at(phdr, 0), u64_at(phdr, 8), u64_at(phdr, 24));
        let (filesz, memsz) = (u64_at(phdr, 32), u64_at(phdr, 40));
        let in_file = offset
            .checked_add(filesz)
            .is_some_and(|end| end <= file_len);
        if !in_file {
            return Err(invalid(format!(
                "segment at file offset {offset:#x} ({filesz:#x} bytes) runs past the file"
            )));
        }
        match kind {
            PT_LOAD if memsz > 0 => {
                if filesz > memsz || paddr.checked_add(memsz).is_none() {
                    return Err(invalid(format!(
                        "segment at {paddr:#x}: file size {filesz:#x}, memory size {memsz:#x}"
                    )));
                }
                segments.push(Segment {
                    offset,
                    paddr,
                    filesz,
                    memsz,
                });
            }
            PT_NOTE if pvh.is_none() && filesz <= MAX_NOTES => {
                pvh = pvh_entry(&read_at(file, offset, filesz as usize)?);
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(invalid("no loadable segment"));
    }
    Ok((entry, segments, pvh))
}

/// The PVH entry from a note segment's bytes, if it holds `XEN_ELFNOTE_PHYS32_ENTRY`.
fn pvh_entry(notes: &[u8]) -> Option<u64> {
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut at = 0usize;
    while at.checked_add(12)? <= notes.len() {
        let namesz = u32_at(notes, at) as usize;
        let descsz = u32_at(notes, at + 4) as usize;
        let kind = u32_at(notes, at + 8);
        let name_start = at + 12;
        let desc_start = name_start.checked_add(align4(namesz)?)?;
        let next = desc_start.checked_add(align4(descsz)?)?;
        let name = notes.get(name_start..name_start.checked_add(namesz)?)?;
        let desc = notes.get(desc_start..desc_start.checked_add(descsz)?)?;
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY && desc.len() >= 4 {
            return Some(u64::from(u32_at(desc, 0)));
        }
        at = next;
    }
    None
}

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

/// Loads an ELF vmlinux from `file`, mapping rather than copying where it can.
///
/// Like linux-loader's ELF loader, it expects fresh (zeroed) RAM: the part of a segment past
/// its file contents (its `.bss`) is not written.
pub(super) fn load_elf_mapped(
    memory: &GuestMemoryMmap,
    file: &File,
) -> Result<LoadedKernel, LinuxBootError> {
    let file_len = file.metadata().map_err(LinuxBootError::ReadImage)?.len();
    let (entry, segments, pvh) = parse(file, file_len)?;
    let mut kernel_end = 0;
    let mut mapped = 0;
    for segment in &segments {
        let in_memory = usize::try_from(segment.memsz).is_ok_and(|len| {
            GuestMemoryBackend::check_range(memory, GuestAddress(segment.paddr), len)
        });
        if !in_memory || segment.paddr < super::layout::HIGH_RAM_START {
            return Err(invalid(format!(
                "segment at {:#x} ({:#x} bytes) is not in RAM above 1 MiB",
                segment.paddr, segment.memsz
            )));
        }
        mapped += place(memory, file, segment.offset, segment.paddr, segment.filesz)?;
        kernel_end = kernel_end.max(segment.paddr + segment.memsz);
    }
    let kernel = LoadedKernel {
        format: KernelFormat::Elf,
        entry: match pvh {
            Some(pvh) => KernelEntry::Pvh(GuestAddress(pvh)),
            None => KernelEntry::Linux64(GuestAddress(entry)),
        },
        linux64_entry: Some(GuestAddress(entry)),
        kernel_end,
        setup_header: None,
        mapped_bytes: mapped,
    };
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(name);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes.extend_from_slice(desc);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    }

    #[test]
    fn the_pvh_note_is_found_among_others_and_bad_notes_are_ignored() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(b"Xen\0", 6, b"linux\0"));
        notes.extend(note(b"Xen\0", 18, &0x0100_0abcu32.to_le_bytes()));
        assert_eq!(pvh_entry(&notes), Some(0x0100_0abc));
        assert_eq!(pvh_entry(&notes[..notes.len() - 1]), None);
        let mut huge = note(b"Xen\0", 18, &[0; 4]);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&huge), None);
        assert_eq!(pvh_entry(&[]), None);
    }
}
