//! Starting a vCPU at a kernel's entry point: in 64-bit long mode, or in 32-bit protected mode
//! as the PVH boot protocol specifies.
//!
//! [`configure_long_mode`] writes a GDT and identity-mapping page tables into low guest memory
//! (see [`GDT_ADDR`] and [`PML4_ADDR`]) and loads the registers that point at them.
//!
//! ```no_run
//! use vmkit_boot::entry;
//! # fn f(vm: &dyn vmkit::Vm, vcpu: &dyn vmkit::Vcpu) -> Result<(), entry::BootError> {
//! entry::configure_long_mode(vcpu, &vm.memory(), 0x10_0000)?;
//! # Ok(()) }
//! ```

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use vmkit::arch::x86_64::{DescriptorTable, Regs, Segment, SpecialRegs};
use vmkit::{Vcpu, VcpuError};

/// Guest-physical address of the GDT the boot helpers write.
pub const GDT_ADDR: u64 = 0x500;
/// Guest-physical address of the PML4 the long-mode helper writes; the PDPT and four page
/// directories follow it, page by page, up to [`PAGE_TABLES_END`].
pub const PML4_ADDR: u64 = 0x9000;
/// One past the last byte of the boot page tables.
pub const PAGE_TABLES_END: u64 = PML4_ADDR + 6 * 0x1000;
/// How much memory the boot page tables identity-map: the low 4 GiB, so that MMIO in the
/// 32-bit hole is reachable too.
pub const IDENTITY_MAPPED: u64 = 4 << 30;

/// GDT selectors the boot helpers use.
pub mod selector {
    /// Flat 64-bit code segment (long mode).
    pub const CODE64: u16 = 0x08;
    /// Flat data segment.
    pub const DATA: u16 = 0x10;
    /// Flat 32-bit code segment (PVH entry).
    pub const CODE32: u16 = 0x18;
    /// The 64-bit TSS (16-byte descriptor).
    pub const TSS: u16 = 0x20;
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// Errors from preparing a vCPU to boot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// Guest memory does not cover where a boot structure must go.
    #[error("cannot write the {what} at guest address {addr:#x}")]
    GuestMemory {
        /// The structure, e.g. "page tables".
        what: &'static str,
        /// Where it goes.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: GuestMemoryError,
    },
    /// Setting the vCPU's registers failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// Builds a GDT descriptor (8 bytes) from base, limit (20 bits) and the access/flags bytes.
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The segment register contents matching a GDT entry built by [`gdt_entry`].
fn segment(selector: u16, flags: u16, base: u32, limit: u32) -> Segment {
    let g = (flags >> 15) & 1 == 1;
    Segment {
        base: u64::from(base),
        limit: if g { (limit << 12) | 0xfff } else { limit },
        selector,
        type_: (flags & 0xf) as u8,
        present: (flags >> 7) & 1 == 1,
        dpl: ((flags >> 5) & 3) as u8,
        db: (flags >> 14) & 1 == 1,
        s: (flags >> 4) & 1 == 1,
        l: (flags >> 13) & 1 == 1,
        g,
        avl: (flags >> 12) & 1 == 1,
        unusable: false,
    }
}

// Access byte and flags nibble of each descriptor (bits 8..15 and 20..23 of the high dword).
const CODE64_FLAGS: u16 = 0xa09b; // G, L, present, code: execute/read, accessed
const DATA_FLAGS: u16 = 0xc093; // G, D/B, present, data: read/write, accessed
const CODE32_FLAGS: u16 = 0xc09b; // G, D/B, present, code: execute/read, accessed
const TSS_FLAGS: u16 = 0x008b; // present, system: busy 64-bit TSS
const TSS_LIMIT: u32 = 0x67;

/// Writes the boot GDT at [`GDT_ADDR`] and returns the GDTR for it.
fn write_gdt<M: GuestMemory>(memory: &M) -> Result<DescriptorTable, BootError> {
    let entries: [u64; 6] = [
        0,
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(CODE32_FLAGS, 0, 0xfffff),
        // A 64-bit TSS descriptor takes two slots; base 0, so the high half is zero.
        gdt_entry(TSS_FLAGS, 0, TSS_LIMIT),
        0,
    ];
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    memory
        .write_slice(&bytes, GuestAddress(GDT_ADDR))
        .map_err(|source| BootError::GuestMemory {
            what: "GDT",
            addr: GDT_ADDR,
            source,
        })?;
    Ok(DescriptorTable {
        base: GDT_ADDR,
        limit: (bytes.len() - 1) as u16,
    })
}

/// Writes page tables identity-mapping [`IDENTITY_MAPPED`] bytes with 2 MiB pages at
/// [`PML4_ADDR`] and returns the CR3 value.
pub fn write_identity_page_tables<M: GuestMemory>(memory: &M) -> Result<u64, BootError> {
    const PRESENT_WRITABLE: u64 = 0b11;
    const HUGE: u64 = 1 << 7;
    let pdpt = PML4_ADDR + 0x1000;
    let first_pd = pdpt + 0x1000;
    let mut tables = vec![0u64; 6 * 512];
    tables[0] = pdpt | PRESENT_WRITABLE;
    for gib in 0..4u64 {
        tables[512 + gib as usize] = (first_pd + gib * 0x1000) | PRESENT_WRITABLE;
    }
    for (i, entry) in tables[1024..].iter_mut().enumerate() {
        *entry = ((i as u64) << 21) | PRESENT_WRITABLE | HUGE;
    }
    let bytes: Vec<u8> = tables.iter().flat_map(|e| e.to_le_bytes()).collect();
    memory
        .write_slice(&bytes, GuestAddress(PML4_ADDR))
        .map_err(|source| BootError::GuestMemory {
            what: "page tables",
            addr: PML4_ADDR,
            source,
        })?;
    Ok(PML4_ADDR)
}

/// Prepares `vcpu` to start at `entry` in 64-bit long mode, CPL 0, interrupts off, with the
/// low 4 GiB identity-mapped, a flat GDT at [`GDT_ADDR`] and page tables at [`PML4_ADDR`].
///
/// Guest memory must cover `0..PAGE_TABLES_END`. The stack pointer is left at 0: the kernel
/// sets its own.
pub fn configure_long_mode<M: GuestMemory>(
    vcpu: &dyn Vcpu,
    memory: &M,
    entry: u64,
) -> Result<(), BootError> {
    let gdt = write_gdt(memory)?;
    let cr3 = write_identity_page_tables(memory)?;
    let data = segment(selector::DATA, DATA_FLAGS, 0, 0xfffff);
    let sregs = SpecialRegs {
        cs: segment(selector::CODE64, CODE64_FLAGS, 0, 0xfffff),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: segment(selector::TSS, TSS_FLAGS, 0, TSS_LIMIT),
        gdt,
        cr0: CR0_PE | CR0_ET | CR0_PG,
        cr3,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA,
        ..vcpu.sregs()?
    };
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&Regs {
        rip: entry,
        rflags: RFLAGS_RESERVED,
        ..Regs::default()
    })?;
    Ok(())
}

/// Prepares `vcpu` to start at a PVH entry point: 32-bit protected mode, paging off, flat
/// segments, `ebx` = guest-physical address of the `hvm_start_info` structure.
///
/// Guest memory must cover the GDT at [`GDT_ADDR`].
pub fn configure_pvh<M: GuestMemory>(
    vcpu: &dyn Vcpu,
    memory: &M,
    entry: u32,
    start_info: u32,
) -> Result<(), BootError> {
    let gdt = write_gdt(memory)?;
    let data = segment(selector::DATA, DATA_FLAGS, 0, 0xfffff);
    let sregs = SpecialRegs {
        cs: segment(selector::CODE32, CODE32_FLAGS, 0, 0xfffff),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: segment(selector::TSS, TSS_FLAGS, 0, TSS_LIMIT),
        gdt,
        cr0: CR0_PE | CR0_ET,
        cr4: 0,
        efer: 0,
        ..vcpu.sregs()?
    };
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&Regs {
        rip: u64::from(entry),
        rbx: u64::from(start_info),
        rflags: RFLAGS_RESERVED,
        ..Regs::default()
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_the_architectural_encoding() {
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        let cs = segment(selector::CODE64, CODE64_FLAGS, 0, 0xfffff);
        assert!(cs.l && cs.present && cs.s && cs.g && !cs.db);
        assert_eq!((cs.type_, cs.limit), (0xb, 0xffff_ffff));
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        use vm_memory::GuestMemoryMmap;
        let memory: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert_eq!(write_identity_page_tables(&memory).unwrap(), PML4_ADDR);
        let read = |addr: u64| memory.read_obj::<u64>(GuestAddress(addr)).unwrap();
        assert_eq!(read(PML4_ADDR), 0xa003);
        assert_eq!(read(0xa000 + 3 * 8), 0xe003);
        // The last 2 MiB page of the fourth GiB maps 0xffe0_0000.
        assert_eq!(read(0xe000 + 511 * 8), 0xffe0_0083);
        let small: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write_identity_page_tables(&small),
            Err(BootError::GuestMemory {
                addr: PML4_ADDR,
                ..
            })
        ));
    }
}
