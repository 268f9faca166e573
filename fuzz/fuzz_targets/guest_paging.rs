//! Guest page-table walks (`vmkit::arch::x86_64::Paging::translate`): the tables are the
//! guest's, so any bytes. Xen's backend walks them to find the `hlt` of a vCPU loaded
//! halted.
//!
//! Input: `[mode, cr3: u64 le, linear: u64 le]` then guest memory (up to 64 KiB, from
//! guest-physical 0; reads past it find nothing). `mode` bits 0-1: no paging, 32-bit,
//! PAE, long mode; bit 2: PSE; bit 3: LA57. The walk must end (it reads at most five
//! entries) and never point past the 52-bit physical address space.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmkit::arch::x86_64::Paging;

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let mode = data[0];
    let word = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
    let (cr3, linear) = (word(1), word(9));
    let memory = &data[17..data.len().min(17 + 65536)];
    let mut cr4 = 0;
    if mode & 4 != 0 {
        cr4 |= CR4_PSE;
    }
    if mode & 8 != 0 {
        cr4 |= CR4_LA57;
    }
    let (cr0, efer) = match mode & 3 {
        0 => (1, 0),
        1 => (CR0_PG | 1, 0),
        2 => {
            cr4 |= CR4_PAE;
            (CR0_PG | 1, 0)
        }
        _ => {
            cr4 |= CR4_PAE;
            (CR0_PG | 1, EFER_LMA)
        }
    };
    let reads = std::cell::Cell::new(0u32);
    let read = |gpa: u64, size: usize| -> Option<u64> {
        reads.set(reads.get() + 1);
        let start = usize::try_from(gpa).ok()?;
        let bytes = memory.get(start..start.checked_add(size)?)?;
        let mut entry = [0u8; 8];
        entry[..size].copy_from_slice(bytes);
        Some(u64::from_le_bytes(entry))
    };
    let paging = Paging::new(cr0, cr3, cr4, efer);
    if let Some(physical) = paging.translate(linear, read) {
        assert!(physical < 1 << 52, "{physical:#x} from {linear:#x}");
        if mode & 3 == 0 {
            assert_eq!(physical, linear & 0xffff_ffff);
        }
    }
    assert!(reads.get() <= 5, "{} reads", reads.get());
});
