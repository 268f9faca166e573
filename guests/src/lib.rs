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
//! physical == virtual [`minimal::LOAD_ADDR`] (1 MiB): under 64 KiB of file
//! contents (code, strings, static page tables and IDT) and under 128 KiB in
//! memory, most of that the per-vCPU stacks in `.bss`. It has two entry
//! points:
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
//! the VMM mapped.
//!
//! ## Entry registers and SMP
//!
//! The VMM starts **every** vCPU at the 64-bit entry (there is no INIT/SIPI
//! bring-up), in the state above, with:
//!
//! | register | meaning |
//! |----------|---------|
//! | `rdi` | how many vCPUs the VMM starts; 0 and 1 both mean one (uniprocessor); more than [`minimal::MAX_VCPUS`] counts as [`minimal::MAX_VCPUS`] |
//! | `rsi` | this vCPU's index, `0..count`; 0 is the bootstrap processor (BSP), every other index an application processor (AP) |
//! | `rdx` | flags, read on the BSP only; bit 0 is [`minimal::ENTRY_FLAG_INTERRUPTS`] |
//!
//! All three zero (what a VMM that knows nothing of this protocol leaves) is
//! a uniprocessor boot without interrupt mode. The PVH entry always behaves
//! like that. A vCPU whose index is [`minimal::MAX_VCPUS`] or more halts at
//! once (`cli; hlt`) and prints nothing. Each other vCPU takes a stack of its
//! own from the kernel's `.bss`.
//!
//! The serial port is shared: each vCPU prints every line whole while holding
//! a spinlock (`lock xchg`, `pause` while waiting), so lines never
//! interleave. With `n` = the effective vCPU count:
//!
//! - **BSP** (index 0): prints [`minimal::HELLO`], then `cpu 0 online`,
//!   counts itself online (`lock inc`), sets a "hello done" flag that
//!   releases the APs, and waits until `n` vCPUs, itself included, are
//!   online. Then it runs the sequence below (or, with
//!   [`minimal::ENTRY_FLAG_INTERRUPTS`], interrupt mode).
//! - **AP** (index `k` ≥ 1): waits for the flag, prints `cpu k online` (`k`
//!   in decimal), counts itself online, then loops on `cli; hlt`. Without an
//!   in-kernel interrupt controller that `hlt` reaches the VMM (as
//!   `VcpuExit::Hlt`); with one, the vCPU just sleeps in the hypervisor and
//!   the VMM sees no further exit from it.
//!
//! So the output starts with the hello line, `cpu 0 online` and the `n − 1`
//! AP lines in the order the APs got the lock; [`minimal::check_smp_serial`]
//! and [`minimal::check_irq_serial`] check a whole output against that.
//! Indices must be below `n`: an AP with a larger index would still print and
//! count itself, and the BSP might then go on before a real AP has.
//!
//! ## The BSP's sequence
//!
//! After all vCPUs are online, without interrupt mode, the BSP:
//!
//! 1. executes `CPUID` leaf 0 and prints `"cpuid: "`, the 12-byte vendor
//!    string (`EBX`, `EDX`, `ECX`) and `"\n"`;
//! 2. reads a `u32` with one 32-bit `mov` from [`minimal::MMIO_READ_ADDR`],
//!    prints `"mmio: "`, the value as 8 lowercase hex digits and `"\n"`,
//!    then writes the value plus one (wrapping) with one 32-bit `mov` to
//!    [`minimal::MMIO_WRITE_ADDR`];
//! 3. prints `"bye\n"`, writes [`minimal::POWER_OFF_VALUE`] to
//!    [`minimal::POWER_OFF_PORT`] (the i8042 reset command), and then loops
//!    on `cli; hlt` forever.
//!
//! Every byte goes to the 16550 UART at [`minimal::SERIAL_PORT`]: before each
//! byte the kernel polls the line status register (`SERIAL_PORT + 5`) until
//! bit 5 (THR empty) is set, then writes the byte to `SERIAL_PORT` with
//! `out`. A host that answers every line-status read with
//! [`minimal::LSR_THR_EMPTY`] set, and the MMIO read with `v`, sees on one
//! vCPU the serial output [`minimal::expected_serial`]`(vendor, v)` and an
//! MMIO write of `v.wrapping_add(1)`.
//!
//! ## Interrupt mode
//!
//! With [`minimal::ENTRY_FLAG_INTERRUPTS`] set in `rdx` on the BSP, the BSP,
//! once all vCPUs are online, instead:
//!
//! 1. loads its own GDT (64-bit code selector `0x08`, data `0x10`; it reloads
//!    `CS` and `SS`) and a static IDT with interrupt gates for vectors
//!    [`minimal::IRQ_VECTOR_BASE`]`..=`[`minimal::IRQ_VECTOR_LAST`]
//!    (`0x20..=0x3f`) and [`minimal::SPURIOUS_VECTOR`] (`0xff`); no other
//!    vector has a gate (an exception triple-faults);
//! 2. masks both 8259 PICs (`0xff` to ports `0x21` and `0xa1`);
//! 3. enables its local APIC: writes `0x1ff` (enable bit 8, spurious vector
//!    `0xff`) to the spurious-interrupt vector register at
//!    [`minimal::LAPIC_BASE`]` + 0xf0` (xAPIC MMIO);
//! 4. programs the IOAPIC at [`minimal::IOAPIC_BASE`] (index register at
//!    `+0x00`, data window at `+0x10`): for each GSI `g` in
//!    `0..`[`minimal::IOAPIC_GSI_COUNT`] it writes the high dword of
//!    redirection entry `g` (index `0x11 + 2g`) as 0 (physical destination
//!    APIC ID 0), then the low dword (index `0x10 + 2g`) as vector
//!    `0x20 + g`, fixed delivery, physical destination mode, active high,
//!    unmasked, and edge-triggered for `g <`
//!    [`minimal::IOAPIC_LEVEL_GSI_START`] (16), **level-triggered** from 16
//!    on ([`minimal::gsi_vector`] gives the vector of a GSI);
//! 5. enables the UART's THR-empty interrupt: writes
//!    [`minimal::SERIAL_IER_THR_EMPTY`] to the interrupt enable register
//!    [`minimal::SERIAL_IER_PORT`], so a VMM whose 16550 raises GSI
//!    [`minimal::SERIAL_GSI`] gets vector `0x24` delivered;
//! 6. prints [`minimal::IRQ_READY`] and `"\n"`, executes `sti` and loops on
//!    `hlt` forever.
//!
//! Each interrupt on a vector `0x20..=0x3f` runs a handler that writes the
//! vector as one byte (`out` of 1 byte) to [`minimal::IRQ_REPORT_PORT`]
//! (`0x511`), **then** writes 0 to the local APIC's EOI register
//! ([`minimal::LAPIC_BASE`]` + 0xb0`) and returns with `iretq`; it preserves
//! every register. Vector `0xff` returns at once, without report or EOI.
//! Vectors [`minimal::MSI_VECTOR_FIRST`]`..=`[`minimal::MSI_VECTOR_LAST`]
//! (`0x38..=0x3f`) have gates but no IOAPIC pin: they are free for MSIs
//! (address `0xfee0_0000`, data = vector, reaches APIC ID 0).
//!
//! The report comes before the EOI so that a VMM can deassert a
//! level-triggered line while it handles the report's port exit: the EOI then
//! finds the line low and nothing is delivered again. A line still high at
//! the EOI is delivered again, and reported again, as on real hardware. On a
//! host whose local APIC retires an interrupt when it delivers it (see the
//! next section) the line is sampled at delivery instead, so a line
//! deasserted at the report is delivered, and reported, exactly once more. A
//! level-triggered *pulse* (raise, then lower, before the vCPU takes the
//! interrupt) is reported exactly once on every host.
//!
//! Interrupt mode needs a local APIC and an IOAPIC at the usual addresses
//! that the VMM does not see as MMIO exits, i.e. an in-kernel irqchip
//! (KVM's `KVM_CREATE_IRQCHIP`). The BSP's `hlt` then waits inside the
//! hypervisor, so its thread returns from `run()` only at the next report (or
//! other exit). With an in-kernel irqchip KVM also starts every vCPU but the
//! first in the "uninitialized" (wait-for-SIPI) state: set the APs'
//! multiprocessing state to runnable before running them.
//!
//! ## Size
//!
//! The code uses only baseline x86-64 instructions and no software
//! interrupts, and keeps ring-0 instruction counts low (the page tables and
//! the IDT are static data), because nested hosts may emulate every guest
//! instruction.
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
//! That host's in-kernel local APIC also retires each interrupt as it
//! injects it: while the handler runs, the in-service register is already
//! clear (`KVM_GET_LAPIC` shows ISR and PPR 0), the guest's EOI write changes
//! nothing, and for a level-triggered IOAPIC pin the EOI reaches the IOAPIC
//! before the handler's first instruction. Guest code still writes EOI, as
//! other hosts need it; tests must not rely on the EOI's timing.
//!
//! # Example
//!
//! ```
//! use vmkit_guests::minimal;
//!
//! assert_eq!(&minimal::ELF[..4], b"\x7fELF");
//! assert_eq!(
//!     minimal::expected_serial(b"GenuineIntel", 0x1234_abcd),
//!     "hello from the vmkit minimal kernel\ncpu 0 online\n\
//!      cpuid: GenuineIntel\nmmio: 1234abcd\nbye\n"
//! );
//!
//! // Three vCPUs: the APs' lines come in whatever order they took the lock.
//! let smp = "hello from the vmkit minimal kernel\ncpu 0 online\ncpu 2 online\n\
//!            cpu 1 online\ncpuid: GenuineIntel\nmmio: 1234abcd\nbye\n";
//! assert_eq!(minimal::check_smp_serial(smp, b"GenuineIntel", 0x1234_abcd, 3), Ok(()));
//! assert!(minimal::check_smp_serial(smp, b"GenuineIntel", 0x1234_abcd, 4).is_err());
//!
//! // Interrupt mode: GSI 17 is level-triggered and arrives as vector 0x31.
//! assert_eq!(minimal::gsi_vector(17), Some(0x31));
//! assert_eq!(minimal::ENTRY_FLAG_INTERRUPTS, 1);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The minimal kernel: serial output, SMP bring-up of VMM-started vCPUs,
/// CPUID, one MMIO read and write, power off, and an optional interrupt
/// mode. See the [crate documentation](crate) for its boot protocol.
pub mod minimal {
    /// The kernel's ELF64 image, built from `src/minimal.S` and
    /// `src/minimal.ld`.
    pub const ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/minimal.elf"));

    /// Guest physical (and virtual) address of the start of the image's only
    /// `PT_LOAD` segment: 1 MiB. The 64-bit entry (`e_entry`) is here too.
    pub const LOAD_ADDR: u64 = 0x10_0000;

    /// Boot flag (bit 0 of `rdx` at the 64-bit entry of the bootstrap
    /// processor; see the [crate documentation](crate)): after bring-up, the
    /// bootstrap processor enters interrupt mode instead of running the
    /// CPUID/MMIO/power-off sequence.
    pub const ENTRY_FLAG_INTERRUPTS: u64 = 1 << 0;

    /// The most vCPUs the kernel brings up; a vCPU started with an index of
    /// this or more halts at once without printing.
    pub const MAX_VCPUS: u32 = 64;

    /// Size of each vCPU's stack in the kernel's `.bss`.
    pub const VCPU_STACK_SIZE: u64 = 1024;

    /// I/O port of the 16550 UART the kernel writes to (COM1's THR).
    pub const SERIAL_PORT: u16 = 0x3f8;

    /// I/O port of the UART's interrupt enable register, written once (with
    /// [`SERIAL_IER_THR_EMPTY`]) in interrupt mode.
    pub const SERIAL_IER_PORT: u16 = SERIAL_PORT + 1;

    /// The value interrupt mode writes to [`SERIAL_IER_PORT`]: only the
    /// "transmitter holding register empty" interrupt enabled.
    pub const SERIAL_IER_THR_EMPTY: u8 = 0x02;

    /// The GSI a PC's COM1 raises, delivered in interrupt mode as vector
    /// `gsi_vector(SERIAL_GSI)` = `0x24`.
    pub const SERIAL_GSI: u32 = 4;

    /// I/O port of the UART's line status register, polled before each byte.
    pub const SERIAL_LSR_PORT: u16 = SERIAL_PORT + 5;

    /// The line status register bit (THR empty) the kernel waits for; a host
    /// should answer reads of [`SERIAL_LSR_PORT`] with this bit set (`0x60`,
    /// THR and transmitter empty, is the usual idle value).
    pub const LSR_THR_EMPTY: u8 = 0x20;

    /// The first line the kernel prints (followed by `"\n"`).
    pub const HELLO: &str = "hello from the vmkit minimal kernel";

    /// The last line the kernel prints in interrupt mode (followed by
    /// `"\n"`), just before it enables interrupts.
    pub const IRQ_READY: &str = "irq ready";

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

    /// I/O port the interrupt handler writes each vector it runs for to, as
    /// one byte, before it signals end of interrupt.
    pub const IRQ_REPORT_PORT: u16 = 0x511;

    /// The first vector with a reporting handler; IOAPIC pin `g` is
    /// programmed to vector `IRQ_VECTOR_BASE + g`.
    pub const IRQ_VECTOR_BASE: u8 = 0x20;

    /// The last vector with a reporting handler.
    pub const IRQ_VECTOR_LAST: u8 = 0x3f;

    /// The first vector with a reporting handler but no IOAPIC pin, free for
    /// MSIs (message address `0xfee0_0000`, data = vector).
    pub const MSI_VECTOR_FIRST: u8 = 0x38;

    /// The last vector free for MSIs.
    pub const MSI_VECTOR_LAST: u8 = IRQ_VECTOR_LAST;

    /// The local APIC's spurious-interrupt vector; its handler returns
    /// without reporting and without EOI.
    pub const SPURIOUS_VECTOR: u8 = 0xff;

    /// Guest physical address of the local APIC (xAPIC MMIO) the kernel
    /// enables and signals end of interrupt to.
    pub const LAPIC_BASE: u64 = 0xfee0_0000;

    /// Guest physical address of the IOAPIC the kernel programs.
    pub const IOAPIC_BASE: u64 = 0xfec0_0000;

    /// How many IOAPIC pins (GSIs `0..IOAPIC_GSI_COUNT`) the kernel programs
    /// and unmasks.
    pub const IOAPIC_GSI_COUNT: u32 = 24;

    /// The first GSI programmed level-triggered; the ones below it are
    /// edge-triggered. All are active high.
    pub const IOAPIC_LEVEL_GSI_START: u32 = 16;

    /// The vector an IOAPIC GSI is delivered as in interrupt mode, or `None`
    /// for a GSI the kernel does not program.
    pub const fn gsi_vector(gsi: u32) -> Option<u8> {
        if gsi < IOAPIC_GSI_COUNT {
            Some(IRQ_VECTOR_BASE + gsi as u8)
        } else {
            None
        }
    }

    /// Whether the kernel programs `gsi` level-triggered (else, for a GSI
    /// below [`IOAPIC_GSI_COUNT`], edge-triggered).
    pub const fn gsi_is_level_triggered(gsi: u32) -> bool {
        gsi >= IOAPIC_LEVEL_GSI_START && gsi < IOAPIC_GSI_COUNT
    }

    /// The line (without `"\n"`) vCPU `index` prints once it is online.
    pub fn cpu_online_line(index: u32) -> String {
        format!("cpu {index} online")
    }

    /// The kernel's complete serial output on one vCPU (entry registers all
    /// zero, or the PVH entry) when CPUID leaf 0 reports `vendor` and the
    /// MMIO read at [`MMIO_READ_ADDR`] returns `mmio`.
    ///
    /// Bytes of `vendor` that are not valid UTF-8 are replaced by U+FFFD.
    pub fn expected_serial(vendor: &[u8; 12], mmio: u32) -> String {
        let mut out = format!("{HELLO}\n{}", cpu_online_line(0));
        for line in tail_lines(vendor, mmio) {
            out.push('\n');
            out.push_str(&line);
        }
        out.push('\n');
        out
    }

    /// The kernel's complete serial output on one vCPU in interrupt mode, up
    /// to the point where it enables interrupts.
    pub fn expected_irq_serial() -> String {
        format!("{HELLO}\n{}\n{IRQ_READY}\n", cpu_online_line(0))
    }

    /// Checks the complete serial output of a boot with `vcpus` vCPUs
    /// (started with `rdi = vcpus`, indices `0..vcpus`, no interrupt mode)
    /// when CPUID leaf 0 reports `vendor` and the MMIO read returns `mmio`.
    ///
    /// `vcpus` counts as the kernel counts it: 0 as 1, above [`MAX_VCPUS`]
    /// as [`MAX_VCPUS`]. The output must be, line by line: [`HELLO`],
    /// `cpu 0 online`, then `cpu k online` exactly once for each `k` in
    /// `1..vcpus` in any order, then the `cpuid:`, `mmio:` and `bye` lines of
    /// [`expected_serial`], each line ending in `"\n"` and nothing after.
    /// Interleaved lines show up as lines that are none of these. The error
    /// names the first line that is wrong.
    pub fn check_smp_serial(
        output: &str,
        vendor: &[u8; 12],
        mmio: u32,
        vcpus: u32,
    ) -> Result<(), String> {
        check_lines(output, vcpus, &tail_lines(vendor, mmio))
    }

    /// Checks the serial output of a boot with `vcpus` vCPUs in interrupt
    /// mode: as [`check_smp_serial`], but ending with the [`IRQ_READY`] line
    /// instead of the CPUID, MMIO and bye lines.
    pub fn check_irq_serial(output: &str, vcpus: u32) -> Result<(), String> {
        check_lines(output, vcpus, &[IRQ_READY.to_owned()])
    }

    /// The lines (without `"\n"`) the BSP prints after bring-up without
    /// interrupt mode.
    fn tail_lines(vendor: &[u8; 12], mmio: u32) -> [String; 3] {
        let vendor = String::from_utf8_lossy(vendor);
        [
            format!("cpuid: {vendor}"),
            format!("mmio: {mmio:08x}"),
            "bye".to_owned(),
        ]
    }

    /// The vCPU count the kernel waits for when started with `rdi = vcpus`.
    fn effective_vcpus(vcpus: u32) -> u32 {
        vcpus.clamp(1, MAX_VCPUS)
    }

    fn check_lines(output: &str, vcpus: u32, tail: &[String]) -> Result<(), String> {
        let Some(body) = output.strip_suffix('\n') else {
            return Err(format!(
                "the output does not end with a complete line: {output:?}"
            ));
        };
        let lines: Vec<&str> = body.split('\n').collect();
        let vcpus = effective_vcpus(vcpus);
        let head = [HELLO.to_owned(), cpu_online_line(0)];
        let expected_len = head.len() + (vcpus as usize - 1) + tail.len();
        if lines.len() != expected_len {
            return Err(format!(
                "expected {expected_len} lines for {vcpus} vCPU(s), got {}: {output:?}",
                lines.len()
            ));
        }
        let mut waiting: Vec<Option<String>> =
            (1..vcpus).map(|k| Some(cpu_online_line(k))).collect();
        for (i, line) in lines.iter().enumerate() {
            let ap = i.checked_sub(head.len()).filter(|&j| j < waiting.len());
            let ok = if i < head.len() {
                *line == head[i]
            } else if ap.is_some() {
                match waiting.iter_mut().find(|w| w.as_deref() == Some(*line)) {
                    Some(slot) => slot.take().is_some(),
                    None => false,
                }
            } else {
                *line == tail[i - head.len() - waiting.len()]
            };
            if !ok {
                let want = if i < head.len() {
                    format!("{:?}", head[i])
                } else if ap.is_some() {
                    "an AP's \"cpu k online\" line not seen yet".to_owned()
                } else {
                    format!("{:?}", tail[i - head.len() - waiting.len()])
                };
                return Err(format!(
                    "line {} is {line:?}, expected {want}; whole output: {output:?}",
                    i + 1
                ));
            }
        }
        Ok(())
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
        assert!(
            filesz <= 64 << 10,
            "image is small: {filesz:#x} bytes in the file"
        );
        assert!(
            memsz <= 128 << 10,
            "image is small: {memsz:#x} bytes in memory"
        );
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
        assert!(result.kernel_end <= minimal::LOAD_ADDR + (128 << 10));

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
        assert!(contains(b"cpu "));
        assert!(contains(b" online\n"));
        assert!(contains(format!("{}\n", minimal::IRQ_READY).as_bytes()));
    }

    #[test]
    fn expected_serial_formats_hex() {
        assert_eq!(
            minimal::expected_serial(b"AuthenticAMD", 0xab),
            "hello from the vmkit minimal kernel\ncpu 0 online\ncpuid: AuthenticAMD\n\
             mmio: 000000ab\nbye\n"
        );
    }

    /// The value of symbol `name` in the image's symbol table.
    fn symbol(name: &str) -> u64 {
        let elf = minimal::ELF;
        let shoff = u64_at(elf, 0x28) as usize;
        let shentsize = u16_at(elf, 0x3a) as usize;
        let shnum = u16_at(elf, 0x3c) as usize;
        let section = |i: usize| &elf[shoff + i * shentsize..shoff + (i + 1) * shentsize];
        let symtab = (0..shnum)
            .map(section)
            .find(|sh| u32_at(sh, 4) == 2)
            .expect("the image keeps its SHT_SYMTAB");
        let strtab = section(u32_at(symtab, 40) as usize);
        let strings = &elf[u64_at(strtab, 24) as usize..][..u64_at(strtab, 32) as usize];
        let (offset, size, entsize) = (
            u64_at(symtab, 24) as usize,
            u64_at(symtab, 32) as usize,
            u64_at(symtab, 56) as usize,
        );
        elf[offset..offset + size]
            .chunks(entsize)
            .find(|sym| {
                let name_at = &strings[u32_at(sym, 0) as usize..];
                let len = name_at.iter().position(|&b| b == 0).unwrap();
                &name_at[..len] == name.as_bytes()
            })
            .map(|sym| u64_at(sym, 8))
            .unwrap_or_else(|| panic!("no symbol {name}"))
    }

    /// The image's bytes at guest address `addr` (in the file-backed part).
    fn image_at(addr: u64, len: usize) -> &'static [u8] {
        let phdrs = program_headers(minimal::ELF);
        let &(_, offset, paddr, _, filesz, _) = phdrs.iter().find(|p| p.0 == 1).unwrap();
        assert!(
            addr >= paddr && addr + len as u64 <= paddr + filesz,
            "{addr:#x}"
        );
        let start = (offset + addr - paddr) as usize;
        &minimal::ELF[start..start + len]
    }

    #[test]
    fn idt_has_gates_for_the_documented_vectors_only() {
        let idt = symbol("idt");
        let idt_ptr = image_at(symbol("idt_ptr"), 10);
        assert_eq!(u16_at(idt_ptr, 0), 256 * 16 - 1, "IDT limit");
        assert_eq!(u64_at(idt_ptr, 2), idt, "IDT base");
        let stubs = symbol("irq_stubs");
        for vector in 0..=255u8 {
            let gate = image_at(idt + 16 * u64::from(vector), 16);
            let offset = u64::from(u16_at(gate, 0))
                | u64::from(u16_at(gate, 6)) << 16
                | u64::from(u32_at(gate, 8)) << 32;
            let handler = match vector {
                minimal::IRQ_VECTOR_BASE..=minimal::IRQ_VECTOR_LAST => {
                    stubs + 8 * u64::from(vector - minimal::IRQ_VECTOR_BASE)
                }
                minimal::SPURIOUS_VECTOR => symbol("spurious"),
                _ => {
                    assert_eq!(gate, [0; 16], "vector {vector:#x} has no gate");
                    continue;
                }
            };
            assert_eq!(offset, handler, "vector {vector:#x}");
            assert_eq!(u16_at(gate, 2), 0x08, "vector {vector:#x}: selector");
            assert_eq!(gate[4], 0, "vector {vector:#x}: IST");
            assert_eq!(gate[5], 0x8e, "vector {vector:#x}: present interrupt gate");
        }
        // Each stub: push %rax; mov $vector, %al; jmp irq_common.
        for vector in minimal::IRQ_VECTOR_BASE..=minimal::IRQ_VECTOR_LAST {
            let stub = image_at(stubs + 8 * u64::from(vector - minimal::IRQ_VECTOR_BASE), 3);
            assert_eq!(stub, [0x50, 0xb0, vector]);
        }
        assert_eq!(image_at(symbol("spurious"), 2), [0x48, 0xcf], "iretq");
    }

    #[test]
    fn shared_state_is_loaded_and_stacks_fit_in_the_image() {
        let phdrs = program_headers(minimal::ELF);
        let &(_, _, paddr, _, filesz, memsz) = phdrs.iter().find(|p| p.0 == 1).unwrap();
        // Loading the image resets the lock, the flag and the counter.
        for name in ["serial_lock", "hello_done", "online"] {
            assert_eq!(image_at(symbol(name), 4), [0; 4], "{name}");
        }
        let stacks = symbol("stacks");
        assert_eq!(stacks % 16, 0);
        let stacks_end = stacks + u64::from(minimal::MAX_VCPUS) * minimal::VCPU_STACK_SIZE;
        assert_eq!(stacks_end, paddr + memsz, "the stacks end the image");
        assert!(stacks >= paddr + filesz, "stacks are in .bss");
    }

    #[test]
    fn gsi_vectors_and_trigger_modes() {
        assert_eq!(minimal::gsi_vector(0), Some(0x20));
        assert_eq!(minimal::gsi_vector(minimal::SERIAL_GSI), Some(0x24));
        assert_eq!(minimal::gsi_vector(17), Some(0x31));
        assert_eq!(minimal::gsi_vector(23), Some(0x37));
        assert_eq!(minimal::gsi_vector(24), None);
        assert_eq!(
            minimal::gsi_vector(minimal::IOAPIC_GSI_COUNT - 1).map(|v| v + 1),
            Some(minimal::MSI_VECTOR_FIRST),
            "MSI vectors follow the IOAPIC's"
        );
        assert!(!minimal::gsi_is_level_triggered(15));
        assert!(minimal::gsi_is_level_triggered(16));
        assert!(minimal::gsi_is_level_triggered(23));
        assert!(!minimal::gsi_is_level_triggered(24));
    }

    const VENDOR: &[u8; 12] = b"GenuineIntel";

    fn smp_output(ap_order: &[u32]) -> String {
        let mut out = format!("{}\ncpu 0 online\n", minimal::HELLO);
        for k in ap_order {
            out.push_str(&format!("cpu {k} online\n"));
        }
        out + "cpuid: GenuineIntel\nmmio: 0000002a\nbye\n"
    }

    #[test]
    fn check_smp_serial_accepts_any_ap_order() {
        let check = |out: &str, n| minimal::check_smp_serial(out, VENDOR, 42, n);
        assert_eq!(check(&minimal::expected_serial(VENDOR, 42), 1), Ok(()));
        assert_eq!(check(&minimal::expected_serial(VENDOR, 42), 0), Ok(()));
        assert_eq!(check(&smp_output(&[1]), 2), Ok(()));
        assert_eq!(check(&smp_output(&[3, 1, 2]), 4), Ok(()));
        assert_eq!(check(&smp_output(&[2, 3, 1]), 4), Ok(()));
        let all: Vec<u32> = (1..64).rev().collect();
        assert_eq!(check(&smp_output(&all), 64), Ok(()));
        assert_eq!(
            check(&smp_output(&all), 1000),
            Ok(()),
            "counts above 64 are 64"
        );
    }

    #[test]
    fn check_smp_serial_rejects_wrong_outputs() {
        let check = |out: &str, n| minimal::check_smp_serial(out, VENDOR, 42, n);
        // Missing, duplicated, out-of-range and extra APs.
        assert!(check(&smp_output(&[1, 2]), 4).is_err());
        assert!(check(&smp_output(&[1, 1, 2]), 4).is_err());
        assert!(check(&smp_output(&[1, 2, 4]), 4).is_err());
        assert!(check(&smp_output(&[1, 2, 3]), 3).is_err());
        assert!(check(&smp_output(&[]), 2).is_err());
        // Wrong MMIO value or vendor.
        assert!(minimal::check_smp_serial(&smp_output(&[1]), VENDOR, 43, 2).is_err());
        assert!(minimal::check_smp_serial(&smp_output(&[1]), b"AuthenticAMD", 42, 2).is_err());
        // Interleaved lines.
        let interleaved = smp_output(&[1, 2]).replace(
            "cpu 1 online\ncpu 2 online\n",
            "cpu cpu 1 online\n2 online\n",
        );
        let err = check(&interleaved, 3).unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        // An AP line before "cpu 0 online", or after the BSP went on.
        let early = smp_output(&[1]).replace(
            "cpu 0 online\ncpu 1 online\n",
            "cpu 1 online\ncpu 0 online\n",
        );
        assert!(check(&early, 2).is_err());
        let late = format!(
            "{}\ncpu 0 online\ncpuid: GenuineIntel\ncpu 1 online\nmmio: 0000002a\nbye\n",
            minimal::HELLO
        );
        assert!(check(&late, 2).is_err());
        // Truncated output, and output after "bye".
        let full = smp_output(&[1]);
        assert!(check(&full[..full.len() - 1], 2).is_err());
        assert!(check(&(full.clone() + "x\n"), 2).is_err());
        assert!(check("", 1).is_err());
    }

    #[test]
    fn check_irq_serial_expects_irq_ready_last() {
        assert_eq!(
            minimal::expected_irq_serial(),
            "hello from the vmkit minimal kernel\ncpu 0 online\nirq ready\n"
        );
        assert_eq!(
            minimal::check_irq_serial(&minimal::expected_irq_serial(), 1),
            Ok(())
        );
        let smp = format!(
            "{}\ncpu 0 online\ncpu 2 online\ncpu 1 online\nirq ready\n",
            minimal::HELLO
        );
        assert_eq!(minimal::check_irq_serial(&smp, 3), Ok(()));
        assert!(minimal::check_irq_serial(&smp, 2).is_err());
        assert!(minimal::check_irq_serial(&smp_output(&[1]), 2).is_err());
        assert_eq!(minimal::cpu_online_line(12), "cpu 12 online");
    }
}
