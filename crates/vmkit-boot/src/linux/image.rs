//! Checking a kernel image's headers against the file before anything is loaded.
//!
//! A user's kernel file is untrusted: a truncated bzImage would otherwise load and the guest
//! would fault on the missing bytes, a tiny one would make linux-loader report an arithmetic
//! underflow, and an ELF program header may point past the end of the file. [`inspect`]
//! reads only the headers (the setup header of a bzImage, the ELF and program headers of a
//! vmlinux), checks every size and offset they declare against the file's length, and says
//! which value is wrong and by how much.
//!
//! It also computes how much guest RAM the kernel needs ([`BzImageHeader::footprint`],
//! [`ElfImage::footprint`]), so that a loader can refuse a machine that is too small before
//! copying anything.

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

/// Offset of the setup header in a bzImage.
const SETUP_HEADER: usize = 0x1f1;
/// One past the setup header's last byte (boot protocol 2.15).
const SETUP_HEADER_END: usize = SETUP_HEADER + std::mem::size_of::<setup_header>();
/// "HdrS": the setup header's magic.
const HEADER_MAGIC: u32 = 0x5372_6448;
/// The oldest boot protocol loaded: 2.12 is the first whose `xloadflags` tell that the
/// 64-bit entry exists (and it has `init_size`, `pref_address` and `cmdline_size`).
pub const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// `loadflags` bit: the protected-mode code is loaded at 1 MiB.
const LOADED_HIGH: u8 = 1;
/// `xloadflags` bit: the kernel has the 64-bit entry at 0x200.
const XLF_KERNEL_64: u16 = 1;
/// Sectors of setup code when `setup_sects` is 0 (boot protocol: "if this field is 0, the
/// real value is 4").
const DEFAULT_SETUP_SECTS: u64 = 4;
/// ELF64 header size.
const EHDR_SIZE: usize = 64;
/// ELF64 program header size.
const PHDR_SIZE: usize = 56;
/// The most program headers accepted (a vmlinux has about six).
const MAX_PHDRS: u16 = 64;
/// The largest note segment read.
const MAX_NOTES: u64 = 1 << 16;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// `EM_X86_64`.
const MACHINE_X86_64: u16 = 62;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// What is wrong with a kernel image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// Reading the image failed.
    #[error("cannot read the kernel image")]
    Read(#[source] io::Error),
    /// Neither magic number is there.
    #[error(
        "the file ({len} bytes) is neither an ELF vmlinux (no \\x7fELF magic at offset 0) nor \
         a bzImage (no \"HdrS\" magic at offset 0x202)"
    )]
    UnknownFormat {
        /// The file's length.
        len: u64,
    },
    /// The bzImage's boot protocol is older than this loader needs.
    #[error(
        "the bzImage uses boot protocol {}.{:02}; loading it needs {}.{:02} or later",
        version >> 8, version & 0xff, MIN_BOOT_PROTOCOL >> 8, MIN_BOOT_PROTOCOL & 0xff
    )]
    OldBootProtocol {
        /// The protocol version in its setup header.
        version: u16,
    },
    /// The bzImage lacks a flag this loader relies on.
    #[error("the bzImage {0}")]
    MissingFlag(&'static str),
    /// The bzImage is shorter than its setup header declares.
    #[error(
        "the bzImage is truncated: its setup header declares {setup} bytes of setup code \
         (setup_sects) and {kernel} bytes of kernel (syssize), {} in all, but the file is \
         {len} bytes",
        setup + kernel
    )]
    BzImageTruncated {
        /// Bytes of real-mode setup code, the boot sector included.
        setup: u64,
        /// Bytes of protected-mode code.
        kernel: u64,
        /// The file's length.
        len: u64,
    },
    /// A setup header field holds a value no kernel has.
    #[error("the bzImage's setup header has {field} = {value:#x}: {why}")]
    BadField {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The ELF header or a program header points past the end of the file.
    #[error(
        "the ELF image is truncated: its {what} at file offset {offset:#x} ({size} bytes) \
         runs past the end of the file ({len} bytes)"
    )]
    ElfTruncated {
        /// The part that runs past the end.
        what: &'static str,
        /// Where it starts in the file.
        offset: u64,
        /// Its size.
        size: u64,
        /// The file's length.
        len: u64,
    },
    /// The ELF image is malformed.
    #[error("invalid ELF kernel image: {0}")]
    Elf(String),
}

/// A kernel image whose headers agree with its file.
#[derive(Clone, Debug, PartialEq)]
pub enum KernelImage {
    /// An ELF vmlinux.
    Elf(ElfImage),
    /// A bzImage.
    BzImage(BzImageHeader),
}

/// The parts of an ELF vmlinux a loader uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage {
    /// The ELF entry point (the 64-bit entry).
    pub entry: u64,
    /// The loadable segments that occupy memory, each inside the file.
    pub segments: Vec<ElfSegment>,
    /// The PVH entry point, from a `XEN_ELFNOTE_PHYS32_ENTRY` note.
    pub pvh_entry: Option<u64>,
}

/// A loadable segment of an ELF image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElfSegment {
    /// Its first byte in the file.
    pub offset: u64,
    /// Its guest-physical address.
    pub paddr: u64,
    /// Bytes in the file (at most `memsz`).
    pub filesz: u64,
    /// Bytes in memory (`paddr + memsz` does not overflow).
    pub memsz: u64,
}

impl ElfImage {
    /// The guest-physical range the segments span, `.bss` included.
    pub fn footprint(&self) -> Range<u64> {
        let start = self.segments.iter().map(|s| s.paddr).min().unwrap_or(0);
        let end = self
            .segments
            .iter()
            .map(|s| s.paddr + s.memsz)
            .max()
            .unwrap_or(0);
        start..end
    }
}

/// A bzImage's setup header, checked against its file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BzImageHeader {
    /// The header as the file holds it.
    pub header: setup_header,
    /// Bytes of setup code before the protected-mode code (the boot sector included).
    pub setup_size: u64,
    /// Bytes after the setup code: what a loader copies to `code32_start`.
    pub kernel_size: u64,
}

impl BzImageHeader {
    /// Where the protected-mode code is loaded (`code32_start`, 1 MiB for every bzImage).
    pub fn load_addr(&self) -> u64 {
        u64::from(self.header.code32_start)
    }

    /// The guest-physical range the kernel needs before it reads the memory map: its image
    /// where it is loaded and the `init_size` bytes it decompresses itself into.
    ///
    /// The decompressor runs at the load address rounded up to `kernel_alignment`, but not
    /// below `pref_address` (the kernel's `LOAD_PHYSICAL_ADDR`), or at `pref_address` for a
    /// kernel that is not relocatable; it needs `init_size` bytes from there.
    pub fn footprint(&self) -> Range<u64> {
        let load = self.load_addr();
        let image_end = load.saturating_add(self.kernel_size);
        let pref = self.header.pref_address;
        let runtime = if self.header.relocatable_kernel != 0 {
            let align = u64::from(self.header.kernel_alignment);
            load.next_multiple_of(align).max(pref)
        } else {
            pref
        };
        // Both are checked by `inspect` not to overflow.
        let decompressed_end = runtime + u64::from(self.header.init_size);
        load..image_end.max(decompressed_end)
    }

    /// The longest command line the kernel takes, without the NUL (`cmdline_size`).
    pub fn cmdline_max(&self) -> usize {
        self.header.cmdline_size as usize
    }
}

/// Reads the headers of the kernel image in `image` (from its start, whatever its position)
/// and checks them against its length.
pub fn inspect<R: Read + Seek>(image: &mut R) -> Result<KernelImage, ImageError> {
    let len = image.seek(SeekFrom::End(0)).map_err(ImageError::Read)?;
    image.seek(SeekFrom::Start(0)).map_err(ImageError::Read)?;
    let mut head = Vec::with_capacity(SETUP_HEADER_END);
    image
        .by_ref()
        .take(SETUP_HEADER_END as u64)
        .read_to_end(&mut head)
        .map_err(ImageError::Read)?;
    if head.starts_with(b"\x7fELF") {
        return inspect_elf(image, &head, len).map(KernelImage::Elf);
    }
    if head.len() == SETUP_HEADER_END {
        let mut header = setup_header::default();
        header.as_mut_slice().copy_from_slice(&head[SETUP_HEADER..]);
        if header.header == HEADER_MAGIC {
            return check_bzimage(header, len).map(KernelImage::BzImage);
        }
    }
    Err(ImageError::UnknownFormat { len })
}

fn bad(field: &'static str, value: u64, why: &'static str) -> ImageError {
    ImageError::BadField { field, value, why }
}

fn check_bzimage(header: setup_header, len: u64) -> Result<BzImageHeader, ImageError> {
    let version = header.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(ImageError::OldBootProtocol { version });
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(ImageError::MissingFlag(
            "is not loaded at 1 MiB (LOADED_HIGH is clear in loadflags)",
        ));
    }
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(ImageError::MissingFlag(
            "has no 64-bit entry point (XLF_KERNEL_64 is clear in xloadflags): a 32-bit kernel?",
        ));
    }
    let sects = match u64::from(header.setup_sects) {
        0 => DEFAULT_SETUP_SECTS,
        sects => sects,
    };
    let setup = (sects + 1) * 512;
    let kernel = u64::from(header.syssize) * 16;
    if kernel == 0 {
        return Err(bad("syssize", 0, "the kernel has no protected-mode code"));
    }
    if setup + kernel > len {
        return Err(ImageError::BzImageTruncated { setup, kernel, len });
    }
    let code32_start = u64::from(header.code32_start);
    if code32_start < 1 << 20 {
        return Err(bad("code32_start", code32_start, "it lies below 1 MiB"));
    }
    let align = u64::from(header.kernel_alignment);
    if header.relocatable_kernel != 0 && !align.is_power_of_two() {
        return Err(bad("kernel_alignment", align, "not a power of two"));
    }
    let pref = header.pref_address;
    if pref >= 1 << 32 {
        return Err(bad("pref_address", pref, "it lies above 4 GiB"));
    }
    Ok(BzImageHeader {
        header,
        setup_size: setup,
        kernel_size: len - setup,
    })
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    let mut word = [0; 2];
    word.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(word)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Reads `size` bytes at `offset`, which `check_in_file` has placed inside the file.
fn read_at<R: Read + Seek>(image: &mut R, offset: u64, size: usize) -> Result<Vec<u8>, ImageError> {
    let mut bytes = vec![0; size];
    image
        .seek(SeekFrom::Start(offset))
        .and_then(|_| image.read_exact(&mut bytes))
        .map_err(ImageError::Read)?;
    Ok(bytes)
}

fn check_in_file(what: &'static str, offset: u64, size: u64, len: u64) -> Result<(), ImageError> {
    match offset.checked_add(size) {
        Some(end) if end <= len => Ok(()),
        _ => Err(ImageError::ElfTruncated {
            what,
            offset,
            size,
            len,
        }),
    }
}

fn inspect_elf<R: Read + Seek>(
    image: &mut R,
    head: &[u8],
    len: u64,
) -> Result<ElfImage, ImageError> {
    check_in_file("ELF header", 0, EHDR_SIZE as u64, len)?;
    let ehdr = head
        .get(..EHDR_SIZE)
        .ok_or_else(|| ImageError::Elf("short ELF header".into()))?;
    if ehdr[4] != 2 || ehdr[5] != 1 {
        return Err(ImageError::Elf("not a little-endian ELF64 image".into()));
    }
    let machine = u16_at(ehdr, 18);
    if machine != MACHINE_X86_64 {
        return Err(ImageError::Elf(format!("machine {machine} is not x86-64")));
    }
    let entry = u64_at(ehdr, 24);
    let phoff = u64_at(ehdr, 32);
    let phentsize = u16_at(ehdr, 54);
    let phnum = u16_at(ehdr, 56);
    if usize::from(phentsize) != PHDR_SIZE || phnum == 0 || phnum > MAX_PHDRS {
        return Err(ImageError::Elf(format!(
            "{phnum} program headers of {phentsize} bytes (expected 1 to {MAX_PHDRS} of \
             {PHDR_SIZE})"
        )));
    }
    let table = usize::from(phnum) * PHDR_SIZE;
    check_in_file("program header table", phoff, table as u64, len)?;
    let phdrs = read_at(image, phoff, table)?;
    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for phdr in phdrs.chunks_exact(PHDR_SIZE) {
        let (kind, offset, paddr) = (u32_at(phdr, 0), u64_at(phdr, 8), u64_at(phdr, 24));
        let (filesz, memsz) = (u64_at(phdr, 32), u64_at(phdr, 40));
        match kind {
            PT_LOAD => {
                // linux-loader copies `filesz` bytes of every PT_LOAD, even one with no
                // memory size.
                check_in_file("loadable segment", offset, filesz, len)?;
                if filesz > memsz || paddr.checked_add(memsz).is_none() {
                    return Err(ImageError::Elf(format!(
                        "segment at {paddr:#x}: file size {filesz:#x}, memory size {memsz:#x}"
                    )));
                }
                if memsz > 0 {
                    segments.push(ElfSegment {
                        offset,
                        paddr,
                        filesz,
                        memsz,
                    });
                }
            }
            PT_NOTE => {
                check_in_file("note segment", offset, filesz, len)?;
                if pvh_entry.is_none() && filesz <= MAX_NOTES {
                    pvh_entry = pvh_note(&read_at(image, offset, filesz as usize)?);
                }
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(ImageError::Elf("no loadable segment".into()));
    }
    Ok(ElfImage {
        entry,
        segments,
        pvh_entry,
    })
}

/// The PVH entry from a note segment's bytes, if it holds `XEN_ELFNOTE_PHYS32_ENTRY`.
fn pvh_note(notes: &[u8]) -> Option<u64> {
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

#[cfg(test)]
pub(crate) mod tests {
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
        assert_eq!(pvh_note(&notes), Some(0x0100_0abc));
        assert_eq!(pvh_note(&notes[..notes.len() - 1]), None);
        let mut huge = note(b"Xen\0", 18, &[0; 4]);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_note(&huge), None);
        assert_eq!(pvh_note(&[]), None);
    }

    /// A bzImage with `setup_sects` sectors of setup and `syssize` paragraphs of kernel,
    /// `len` bytes long, with a boot protocol 2.15 header.
    pub(crate) fn bzimage(setup_sects: u8, syssize: u32, len: usize) -> Vec<u8> {
        let mut image = vec![0; len.max(SETUP_HEADER_END)];
        image[0x1f1] = setup_sects;
        image[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x211] = LOADED_HIGH;
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        image[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        image[0x234] = 1;
        image[0x236..0x238].copy_from_slice(&0x7fu16.to_le_bytes());
        image[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        image[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        image[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes());
        image.truncate(len);
        image
    }

    fn inspect_bytes(bytes: &[u8]) -> Result<KernelImage, ImageError> {
        inspect(&mut std::io::Cursor::new(bytes))
    }

    #[test]
    fn a_whole_bzimage_is_accepted_with_its_sizes_and_footprint() {
        // 4 setup sectors and the boot sector, 4 KiB of kernel, 100 bytes of trailer.
        let image = bzimage(4, 256, 5 * 512 + 4096 + 100);
        let KernelImage::BzImage(bz) = inspect_bytes(&image).unwrap() else {
            panic!("not recognized as a bzImage");
        };
        assert_eq!((bz.setup_size, bz.kernel_size), (2560, 4196));
        assert_eq!(bz.cmdline_max(), 2047);
        // It decompresses at pref_address (16 MiB), above the aligned load address.
        assert_eq!(bz.footprint(), 0x10_0000..0x100_0000 + 0x40_0000);
    }

    #[test]
    fn a_truncated_bzimage_is_refused_with_the_declared_sizes() {
        let image = bzimage(4, 0x10_0000, 1 << 20);
        let err = inspect_bytes(&image).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the bzImage is truncated: its setup header declares 2560 bytes of setup code \
             (setup_sects) and 16777216 bytes of kernel (syssize), 16779776 in all, but the \
             file is 1048576 bytes"
        );
    }

    #[test]
    fn a_bzimage_shorter_than_its_setup_code_is_refused_not_underflowed() {
        // 40 sectors of setup (20 KiB), in a file of 20 000 bytes.
        let image = bzimage(39, 1, 20_000);
        let err = inspect_bytes(&image).unwrap_err();
        assert!(matches!(
            err,
            ImageError::BzImageTruncated {
                setup: 20480,
                kernel: 16,
                len: 20_000
            }
        ));
    }

    #[test]
    fn bzimage_header_fields_a_loader_relies_on_are_checked() {
        let mut old = bzimage(4, 1, 4096);
        old[0x206..0x208].copy_from_slice(&0x020bu16.to_le_bytes());
        assert_eq!(
            inspect_bytes(&old).unwrap_err().to_string(),
            "the bzImage uses boot protocol 2.11; loading it needs 2.12 or later"
        );
        let mut no64 = bzimage(4, 1, 4096);
        no64[0x236] = 0;
        assert!(inspect_bytes(&no64)
            .unwrap_err()
            .to_string()
            .contains("XLF_KERNEL_64"));
        let mut low = bzimage(4, 1, 4096);
        low[0x211] = 0;
        assert!(inspect_bytes(&low)
            .unwrap_err()
            .to_string()
            .contains("LOADED_HIGH"));
        let mut empty = bzimage(4, 0, 4096);
        empty[0x1f4] = 0;
        assert!(matches!(
            inspect_bytes(&empty),
            Err(ImageError::BadField {
                field: "syssize",
                ..
            })
        ));
        let mut align = bzimage(4, 1, 4096);
        align[0x230..0x234].copy_from_slice(&0x30_0000u32.to_le_bytes());
        assert!(matches!(
            inspect_bytes(&align),
            Err(ImageError::BadField {
                field: "kernel_alignment",
                value: 0x30_0000,
                ..
            })
        ));
    }

    #[test]
    fn files_that_are_no_kernel_are_refused_with_their_length() {
        for bytes in [&[][..], b"\x7fEL", &[0u8; 4096]] {
            let err = inspect_bytes(bytes).unwrap_err();
            assert!(
                matches!(err, ImageError::UnknownFormat { len } if len == bytes.len() as u64),
                "{err}"
            );
        }
        // The magic, but the file ends inside the setup header.
        let short = bzimage(4, 1, 0x210);
        assert!(matches!(
            inspect_bytes(&short),
            Err(ImageError::UnknownFormat { len: 0x210 })
        ));
    }

    /// An x86-64 ELF header with one program header at 64.
    pub(crate) fn elf(phdr: [u64; 4], kind: u32, len: usize) -> Vec<u8> {
        let mut image = vec![0; len.max(EHDR_SIZE + PHDR_SIZE)];
        image[..6].copy_from_slice(b"\x7fELF\x02\x01");
        image[18..20].copy_from_slice(&MACHINE_X86_64.to_le_bytes());
        image[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
        image[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        image[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        image[56..58].copy_from_slice(&1u16.to_le_bytes());
        let [offset, paddr, filesz, memsz] = phdr;
        let at = EHDR_SIZE;
        image[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        image[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
        image[at + 24..at + 32].copy_from_slice(&paddr.to_le_bytes());
        image[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
        image[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
        image.truncate(len);
        image
    }

    #[test]
    fn elf_segments_are_checked_against_the_file_length() {
        let good = elf([0x1000, 0x100_0000, 0x800, 0x2000], PT_LOAD, 0x1800);
        let KernelImage::Elf(image) = inspect_bytes(&good).unwrap() else {
            panic!("not recognized as ELF");
        };
        assert_eq!(image.footprint(), 0x100_0000..0x100_2000);
        assert_eq!(image.pvh_entry, None);

        let truncated = elf([0x1000, 0x100_0000, 0x800, 0x2000], PT_LOAD, 0x1400);
        assert_eq!(
            inspect_bytes(&truncated).unwrap_err().to_string(),
            "the ELF image is truncated: its loadable segment at file offset 0x1000 (2048 \
             bytes) runs past the end of the file (5120 bytes)"
        );
        let note = elf([0x1000, 0, 0x800, 0], PT_NOTE, 0x1400);
        assert!(matches!(
            inspect_bytes(&note),
            Err(ImageError::ElfTruncated {
                what: "note segment",
                ..
            })
        ));
        let table = elf([0x1000, 0x100_0000, 0x800, 0x2000], PT_LOAD, 100);
        assert!(matches!(
            inspect_bytes(&table),
            Err(ImageError::ElfTruncated {
                what: "program header table",
                offset: 64,
                size: 56,
                len: 100
            })
        ));
        let bss_in_file = elf([0x1000, 0x100_0000, 0x800, 0x400], PT_LOAD, 0x1800);
        assert!(matches!(
            inspect_bytes(&bss_in_file),
            Err(ImageError::Elf(_))
        ));
        let wraps = elf([0x1000, u64::MAX - 4, 0x800, 0x800], PT_LOAD, 0x1800);
        assert!(matches!(inspect_bytes(&wraps), Err(ImageError::Elf(_))));
    }
}
