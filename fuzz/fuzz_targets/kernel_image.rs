//! Kernel image fuzzing: the input is a kernel file (a bzImage or an ELF vmlinux, as a
//! user would give it) whose headers `vmkit_boot::linux::inspect` checks against its length,
//! then `load_kernel` loads into a small guest RAM. Neither may panic; an accepted image's
//! sizes must lie inside the file, and its RAM needs must be computable.
//! Seeds: `python3 gen_seeds.py` (corpus/kernel_image: a minimal bzImage and vmlinux, and
//! truncated ones).
#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmkit_boot::linux::{self, KernelImage};

/// 24 MiB of guest RAM, shared by the runs: the loader overwrites what it needs.
fn memory() -> &'static GuestMemoryMmap<()> {
    static MEMORY: OnceLock<GuestMemoryMmap<()>> = OnceLock::new();
    MEMORY.get_or_init(|| {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 24 << 20)]).expect("guest memory")
    })
}

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    match linux::inspect(&mut Cursor::new(data)) {
        Ok(KernelImage::BzImage(bz)) => {
            assert_eq!(bz.setup_size + bz.kernel_size, len);
            assert!(bz.kernel_size >= u64::from(bz.header.syssize) * 16);
            let footprint = bz.footprint();
            assert!(footprint.start <= footprint.end);
            let _ = bz.cmdline_max();
        }
        Ok(KernelImage::Elf(elf)) => {
            for segment in &elf.segments {
                assert!(segment.offset + segment.filesz <= len);
                assert!(segment.filesz <= segment.memsz);
            }
            let footprint = elf.footprint();
            assert!(footprint.start <= footprint.end);
        }
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    }
    if let Err(err) = linux::load_kernel(memory(), &mut Cursor::new(data)) {
        let _ = err.to_string();
    }
});
