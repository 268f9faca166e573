//! Minimal x86-64 guest kernels for vmkit's tests and examples.
//!
//! The kernels are built from source (`src/*.S` and `src/*.ld`) by this
//! crate's build script with the host C compiler (`$CC`, else `cc`); no
//! prebuilt binaries are checked in. Each is embedded here as the bytes of an
//! ELF64 image that any ELF loader can place in guest memory, for example
//! `linux_loader::loader::elf::Elf::load`.
//!
//! # The minimal kernel
//!
//! [`minimal::ELF`] is a static ELF64 image with one `PT_LOAD` segment at
//! physical == virtual [`minimal::LOAD_ADDR`] (1 MiB) and a few pages in
//! size. It has two entry points:
//!
//! - **64-bit entry** (`e_entry`): the VMM enters it in 64-bit long mode,
//!   CPL0, with a flat 64-bit code segment, 4-level paging enabled with an
//!   identity map that covers at least the kernel image (`CR4.LA57` clear),
//!   interrupts disabled; `rsp` may hold anything.
//! - **PVH entry** (32-bit), announced by an ELF note of name `"Xen"` and
//!   type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`) whose descriptor is the entry's
//!   32-bit physical address; `linux-loader` reports it as
//!   `PvhBootCapability::PvhEntryPresent`. Start state as in Xen's
//!   `docs/misc/pvh.pandoc`: 32-bit protected mode, paging off, flat 4 GiB
//!   `CS`/`DS`/`ES`/`SS`, `ebx` = physical address of `hvm_start_info`
//!   (ignored by this kernel). The kernel loads its own GDT, enables PAE,
//!   sets `EFER.LME`, enables paging and far-jumps to the common 64-bit path.
//!
//! Either way the kernel loads `CR3` with its own static identity map of the
//! low 4 GiB (2 MiB pages), so the MMIO addresses below are mapped whatever
//! the VMM mapped, puts its stack in its own `.bss`, and then, in order:
//!
//! 1. prints [`minimal::HELLO`] and `"\n"` on the 16550 UART at
//!    [`minimal::SERIAL_PORT`]: before each byte it polls the line status
//!    register (`SERIAL_PORT + 5`) until bit 5 (THR empty) is set, then
//!    writes the byte to `SERIAL_PORT` with `out`;
//! 2. executes `CPUID` leaf 0 and prints `"cpuid: "`, the 12-byte vendor
//!    string (`EBX`, `EDX`, `ECX`) and `"\n"`;
//! 3. reads a `u32` with one 32-bit `mov` from [`minimal::MMIO_READ_ADDR`],
//!    prints `"mmio: "`, the value as 8 lowercase hex digits and `"\n"`,
//!    then writes the value plus one (wrapping) with one 32-bit `mov` to
//!    [`minimal::MMIO_WRITE_ADDR`];
//! 4. prints `"bye\n"`, writes [`minimal::POWER_OFF_VALUE`] to
//!    [`minimal::POWER_OFF_PORT`] (the i8042 reset command), and then loops
//!    on `cli; hlt` forever.
//!
//! A host that answers every line-status read with [`minimal::LSR_THR_EMPTY`]
//! set, and the MMIO read with `v`, sees the serial output
//! [`minimal::expected_serial`]`(vendor, v)` and an MMIO write of
//! `v.wrapping_add(1)`.
//!
//! The code uses only baseline x86-64 instructions and no software
//! interrupts, and keeps ring-0 instruction counts low (the page tables are
//! static data), because nested hosts may emulate every guest instruction.
//!
//! # Writing guest code for a software-emulated KVM
//!
//! On a nested KVM that emulates ring-0 guest code (such as this project's CI
//! host), each ring-0 instruction costs about 2 µs, and these fail with an
//! emulation error at CPL0: `int N`, `int3`, `cmpxchg16b`, `xsave`/`xrstor`,
//! `xgetbv`, `clac`/`stac`, `popcnt`, `rdtscp`, `andn`, `adcx`, `lar`,
//! `verr`. Faults such as `#UD` or `#PF`, and events injected by the host, are
//! delivered normally. Guest code here is therefore baseline x86-64, never
//! built for the host CPU.
//!
//! # Example
//!
//! ```
//! use vmkit_guests::minimal;
//!
//! assert_eq!(&minimal::ELF[..4], b"\x7fELF");
//! assert_eq!(
//!     minimal::expected_serial(b"GenuineIntel", 0x1234_abcd),
//!     "hello from the vmkit minimal kernel\ncpuid: GenuineIntel\nmmio: 1234abcd\nbye\n"
//! );
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The minimal kernel: serial output, CPUID, one MMIO read and write, power
/// off. See the [crate documentation](crate) for its boot protocol.
pub mod minimal {
    /// The kernel's ELF64 image, built from `src/minimal.S` and
    /// `src/minimal.ld`.
    pub const ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/minimal.elf"));

    /// Guest physical (and virtual) address of the start of the image's only
    /// `PT_LOAD` segment: 1 MiB.
    pub const LOAD_ADDR: u64 = 0x10_0000;

    /// I/O port of the 16550 UART the kernel writes to (COM1's THR).
    pub const SERIAL_PORT: u16 = 0x3f8;

    /// I/O port of the UART's line status register, polled before each byte.
    pub const SERIAL_LSR_PORT: u16 = SERIAL_PORT + 5;

    /// The line status register bit (THR empty) the kernel waits for; a host
    /// should answer reads of [`SERIAL_LSR_PORT`] with this bit set (`0x60`,
    /// THR and transmitter empty, is the usual idle value).
    pub const LSR_THR_EMPTY: u8 = 0x20;

    /// The first line the kernel prints (followed by `"\n"`).
    pub const HELLO: &str = "hello from the vmkit minimal kernel";

    /// Guest physical address of the kernel's 32-bit MMIO read.
    pub const MMIO_READ_ADDR: u64 = 0xd000_0000;

    /// Guest physical address of the kernel's 32-bit MMIO write, which
    /// carries the value read from [`MMIO_READ_ADDR`] plus one (wrapping).
    pub const MMIO_WRITE_ADDR: u64 = 0xd000_0004;

    /// I/O port the kernel writes [`POWER_OFF_VALUE`] to when done: the
    /// i8042 command port.
    pub const POWER_OFF_PORT: u16 = 0x64;

    /// Byte written to [`POWER_OFF_PORT`] when done: the i8042 "pulse reset
    /// line" command, which a VMM treats as power off or reset.
    pub const POWER_OFF_VALUE: u8 = 0xfe;

    /// The kernel's complete serial output when CPUID leaf 0 reports
    /// `vendor` and the MMIO read at [`MMIO_READ_ADDR`] returns `mmio`.
    ///
    /// Bytes of `vendor` that are not valid UTF-8 are replaced by U+FFFD.
    pub fn expected_serial(vendor: &[u8; 12], mmio: u32) -> String {
        let vendor = String::from_utf8_lossy(vendor);
        format!("{HELLO}\ncpuid: {vendor}\nmmio: {mmio:08x}\nbye\n")
    }
}

#[cfg(test)]
mod tests {
    use super::minimal;
    use linux_loader::loader::elf::{Elf, PvhBootCapability};
    use linux_loader::loader::KernelLoader;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const MEM_SIZE: usize = 4 << 20;

    fn u16_at(bytes: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(bytes[off..off + 2].try_into().unwrap())
    }

    fn u32_at(bytes: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
    }

    /// (p_type, p_offset, p_paddr, p_vaddr, p_filesz, p_memsz) of each
    /// program header.
    fn program_headers(elf: &[u8]) -> Vec<(u32, u64, u64, u64, u64, u64)> {
        let phoff = u64_at(elf, 0x20) as usize;
        let phentsize = u16_at(elf, 0x36) as usize;
        let phnum = u16_at(elf, 0x38) as usize;
        (0..phnum)
            .map(|i| {
                let ph = &elf[phoff + i * phentsize..];
                (
                    u32_at(ph, 0),
                    u64_at(ph, 8),
                    u64_at(ph, 24),
                    u64_at(ph, 16),
                    u64_at(ph, 32),
                    u64_at(ph, 40),
                )
            })
            .collect()
    }

    #[test]
    fn elf_header_is_x86_64_executable() {
        let elf = minimal::ELF;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELFCLASS64");
        assert_eq!(elf[5], 1, "little endian");
        assert_eq!(u16_at(elf, 0x10), 2, "ET_EXEC");
        assert_eq!(u16_at(elf, 0x12), 62, "EM_X86_64");
    }

    #[test]
    fn one_load_segment_identity_mapped_at_1mib() {
        let phdrs = program_headers(minimal::ELF);
        let loads: Vec<_> = phdrs.iter().filter(|p| p.0 == 1).collect();
        assert_eq!(loads.len(), 1, "exactly one PT_LOAD: {phdrs:x?}");
        let (_, _, paddr, vaddr, filesz, memsz) = *loads[0];
        assert_eq!(paddr, minimal::LOAD_ADDR);
        assert_eq!(vaddr, minimal::LOAD_ADDR);
        assert!(filesz <= memsz);
        assert!(memsz <= 64 << 10, "image is small: {memsz:#x} bytes");
        assert!(minimal::ELF.len() <= 64 << 10);
    }

    #[test]
    fn linux_loader_reports_entries() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let result = Elf::load(&mem, None, &mut Cursor::new(minimal::ELF), None).unwrap();

        let e_entry = u64_at(minimal::ELF, 0x18);
        assert_eq!(result.kernel_load, GuestAddress(e_entry));
        assert_eq!(
            e_entry,
            minimal::LOAD_ADDR,
            "64-bit entry is first in .text"
        );
        assert!(result.kernel_end > minimal::LOAD_ADDR);
        assert!(result.kernel_end <= minimal::LOAD_ADDR + (64 << 10));

        let PvhBootCapability::PvhEntryPresent(pvh) = result.pvh_boot_cap else {
            panic!("no PVH entry reported: {:?}", result.pvh_boot_cap);
        };
        assert!(pvh.0 > minimal::LOAD_ADDR && pvh.0 < result.kernel_end);
        assert_ne!(pvh.0, e_entry);

        // The segment's bytes landed at LOAD_ADDR.
        let phdrs = program_headers(minimal::ELF);
        let &(_, offset, _, _, filesz, _) = phdrs.iter().find(|p| p.0 == 1).unwrap();
        let mut loaded = vec![0u8; filesz as usize];
        mem.read_slice(&mut loaded, GuestAddress(minimal::LOAD_ADDR))
            .unwrap();
        assert_eq!(
            loaded,
            &minimal::ELF[offset as usize..(offset + filesz) as usize]
        );
    }

    #[test]
    fn pvh_note_is_the_only_note_segment() {
        // linux-loader only looks at the last PT_NOTE segment it sees.
        let notes = program_headers(minimal::ELF)
            .iter()
            .filter(|p| p.0 == 4)
            .count();
        assert_eq!(notes, 1);
    }

    #[test]
    fn image_contains_the_strings_it_prints() {
        let contains = |needle: &[u8]| minimal::ELF.windows(needle.len()).any(|w| w == needle);
        assert!(contains(minimal::HELLO.as_bytes()));
        assert!(contains(b"cpuid: "));
        assert!(contains(b"mmio: "));
        assert!(contains(b"bye\n"));
    }

    #[test]
    fn expected_serial_formats_hex() {
        assert_eq!(
            minimal::expected_serial(b"AuthenticAMD", 0xab),
            "hello from the vmkit minimal kernel\ncpuid: AuthenticAMD\nmmio: 000000ab\nbye\n"
        );
    }
}
