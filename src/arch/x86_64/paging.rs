//! Translating a vCPU's linear addresses through its guest's page tables, as the CPU
//! would: no paging, 32-bit paging (4 MiB pages with PSE), PAE, and 4- or 5-level long-mode
//! paging (1 GiB and 2 MiB pages). Only the translation: access rights, reserved bits and
//! accessed/dirty flags are not looked at.

use super::SpecialRegs;

/// The registers that decide how a vCPU's linear addresses translate to guest-physical
/// ones: CR0 (paging on), CR3 (the top table), CR4 (PAE, PSE, LA57) and EFER (long mode).
///
/// ```
/// use vmkit::arch::x86_64::Paging;
/// // Paging off: linear is physical (32 bits of it).
/// let flat = Paging::new(0x11, 0, 0, 0);
/// assert_eq!(flat.translate(0xf_fff0, |_, _| None), Some(0xf_fff0));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paging {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Bits 51:12 of a 64-bit paging entry: the frame it points at.
const FRAME_MASK: u64 = 0x000f_ffff_ffff_f000;

impl Paging {
    /// The paging state of these register values.
    pub fn new(cr0: u64, cr3: u64, cr4: u64, efer: u64) -> Self {
        Paging {
            cr0,
            cr3,
            cr4,
            efer,
        }
    }

    /// The paging state of `sregs`.
    pub fn of(sregs: &SpecialRegs) -> Self {
        Paging::new(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer)
    }

    /// The guest-physical address of `linear`, walking the guest's page tables with `read`
    /// (a `size`-byte, 4 or 8, little-endian read of guest-physical memory; `None` where
    /// there is none). `None` if an entry on the way is absent or unreadable. The tables
    /// are the guest's and so untrusted: every entry is masked to the address bits its
    /// format has and nothing else is taken from it.
    pub fn translate(&self, linear: u64, read: impl Fn(u64, usize) -> Option<u64>) -> Option<u64> {
        if self.cr0 & CR0_PG == 0 {
            return Some(linear & 0xffff_ffff);
        }
        if self.efer & EFER_LMA != 0 {
            // 4-level (or 5-level) paging: 9 index bits a level from bit 39 (48).
            let levels: u32 = if self.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
            let mut table = self.cr3 & FRAME_MASK;
            for level in (1..=levels).rev() {
                let shift = 12 + 9 * (level - 1);
                let entry = read(table + (linear >> shift & 0x1ff) * 8, 8)?;
                if entry & PRESENT == 0 {
                    return None;
                }
                // A 1 GiB (level 3) or 2 MiB (level 2) page.
                if (level == 2 || level == 3) && entry & PAGE_SIZE_BIT != 0 {
                    let mask = (1u64 << shift) - 1;
                    return Some(entry & FRAME_MASK & !mask | linear & mask);
                }
                table = entry & FRAME_MASK;
            }
            return Some(table | linear & 0xfff);
        }
        let linear = linear & 0xffff_ffff;
        if self.cr4 & CR4_PAE != 0 {
            // PAE: four PDPT entries at CR3 (32-byte aligned), then 2 MiB or 4 KiB pages.
            let pdpte = read((self.cr3 & 0xffff_ffe0) + (linear >> 30) * 8, 8)?;
            if pdpte & PRESENT == 0 {
                return None;
            }
            let pde = read((pdpte & FRAME_MASK) + (linear >> 21 & 0x1ff) * 8, 8)?;
            if pde & PRESENT == 0 {
                return None;
            }
            if pde & PAGE_SIZE_BIT != 0 {
                return Some(pde & FRAME_MASK & !0x1f_ffff | linear & 0x1f_ffff);
            }
            let pte = read((pde & FRAME_MASK) + (linear >> 12 & 0x1ff) * 8, 8)?;
            return (pte & PRESENT != 0).then_some(pte & FRAME_MASK | linear & 0xfff);
        }
        // 32-bit paging: 4-byte entries, 4 MiB pages with CR4.PSE.
        let pde = read((self.cr3 & 0xffff_f000) + (linear >> 22) * 4, 4)?;
        if pde & PRESENT == 0 {
            return None;
        }
        if self.cr4 & CR4_PSE != 0 && pde & PAGE_SIZE_BIT != 0 {
            return Some(pde & 0xffc0_0000 | linear & 0x3f_ffff);
        }
        let pte = read((pde & 0xffff_f000) + (linear >> 12 & 0x3ff) * 4, 4)?;
        (pte & PRESENT != 0).then_some(pte & 0xffff_f000 | linear & 0xfff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Guest memory as a map of 8-byte words.
    fn reader(words: &HashMap<u64, u64>) -> impl Fn(u64, usize) -> Option<u64> + '_ {
        move |gpa, size| {
            let word = *words.get(&(gpa & !7))?;
            let shifted = word >> ((gpa & 7) * 8);
            Some(if size == 4 {
                shifted & 0xffff_ffff
            } else {
                shifted
            })
        }
    }

    #[test]
    fn long_mode_tables_translate_4k_2m_and_1g_pages() {
        let long = Paging::new(CR0_PG | 1, 0x1000, CR4_PAE, EFER_LMA | 1 << 8);
        let mut words = HashMap::new();
        // PML4[0] -> PDPT at 0x2000; PDPT[0] -> PD at 0x3000; PD[0] -> PT at 0x4000;
        // PT[1] -> 0x9000. PD[1]: a 2 MiB page at 0x40_0000. PDPT[1]: a 1 GiB page at 0.
        words.insert(0x1000, 0x2003);
        words.insert(0x2000, 0x3003);
        words.insert(0x3000, 0x4003);
        words.insert(0x4008, 0x9003);
        words.insert(0x3008, 0x40_0083);
        words.insert(0x2008, 0x83);
        let read = reader(&words);
        assert_eq!(long.translate(0x1234, &read), Some(0x9234));
        assert_eq!(long.translate(0x20_0042, &read), Some(0x40_0042));
        assert_eq!(long.translate(0x4000_1000, &read), Some(0x1000));
        // PT[2] is absent; so is PML4[1].
        assert_eq!(long.translate(0x2000, &read), None);
        assert_eq!(long.translate(1 << 39, &read), None);
        // No paging: the linear address is the physical one.
        let flat = Paging::default();
        assert_eq!(flat.translate(0xf_fff0, &read), Some(0xf_fff0));
    }

    #[test]
    fn pae_and_32_bit_tables_translate() {
        let mut words = HashMap::new();
        // PAE: PDPT at 0x1000 (PDPTE 0 -> PD 0x2000), PD[0] -> PT 0x3000, PT[5] -> 0x7000.
        words.insert(0x1000, 0x2001);
        words.insert(0x2000, 0x3003);
        words.insert(0x3028, 0x7003);
        let pae = Paging::new(CR0_PG | 1, 0x1000, CR4_PAE, 0);
        assert_eq!(pae.translate(0x5010, reader(&words)), Some(0x7010));
        // 32-bit: PD at 0x1000 (4-byte entries): PDE 0 -> PT 0x3000 (its entry 5 is the
        // low half of the word above: 0x3014 holds 0 -> absent), PDE 1 a 4 MiB page.
        let mut words32 = HashMap::new();
        words32.insert(0x1000, 0x0080_0083_u64 << 32 | 0x3003);
        words32.insert(0x3010, 0x8003);
        let flat32 = Paging::new(CR0_PG | 1, 0x1000, CR4_PSE, 0);
        let read = reader(&words32);
        assert_eq!(flat32.translate(0x4abc, &read), Some(0x8abc));
        assert_eq!(flat32.translate(0x5000, &read), None);
        assert_eq!(flat32.translate(0x40_1234, &read), Some(0x80_1234));
    }
}
