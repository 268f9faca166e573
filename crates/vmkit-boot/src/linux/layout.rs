//! Where things go in the guest-physical address space of a Linux guest.
//!
//! ```text
//! 0x0000_0500  GDT (arch::x86_64::boot)
//! 0x0000_6000  PVH hvm_start_info, then its memory map and module list
//! 0x0000_7000  zero page (struct boot_params) for the Linux boot protocol
//! 0x0000_9000  boot page tables (arch::x86_64::boot), up to 0xf000
//! 0x0002_0000  kernel command line
//! 0x0009_f000  MP configuration table; its floating pointer at 0x9fc00, where Linux scans
//! 0x000a_0000  legacy VGA and BIOS area (not RAM in the E820 map)
//! 0x000e_0000  ACPI tables, RSDP first, where a kernel scans for it
//! 0x0010_0000  kernel (a bzImage's protected-mode part, or the vmlinux segments)
//!     ...      initrd, at the top of RAM below the MMIO hole
//! 0xc000_0000  MMIO hole: virtio-mmio devices, IOAPIC, LAPIC
//! 4 GiB        RAM above the hole, when there is more than 3 GiB
//! ```

use vm_memory::GuestAddress;

/// Guest address of the PVH `hvm_start_info`.
pub const PVH_START_INFO: u64 = 0x6000;
/// Guest address of the Linux zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Guest address of the kernel command line.
pub const CMDLINE: u64 = 0x2_0000;
/// Room for the command line, terminating NUL included.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Guest address of the MP configuration table.
pub const MPTABLE: u64 = 0x9_f000;
/// Guest address of the MP floating pointer: inside the last KiB of base memory, one of the
/// places Linux scans for it.
pub const MP_FLOATING_POINTER: u64 = 0x9_fc00;
/// Guest address of the ACPI tables (the RSDP first).
pub const ACPI_TABLES: u64 = 0xe_0000;
/// One past the last byte the ACPI tables may use.
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// End of the low RAM range (640 KiB).
pub const LOW_RAM_END: u64 = 0xa_0000;
/// Start of RAM above the legacy BIOS area, where the kernel is loaded.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole, where RAM below 4 GiB stops.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// The IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs' MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The smallest RAM size this layout boots: the low tables plus room for a kernel.
pub const MIN_RAM: u64 = 16 << 20;

/// The kind of an [`E820Entry`], with the values of the BIOS interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved: the MP table and the areas firmware would own.
    Reserved = 2,
}

/// One range of the guest's memory map as the firmware interface (E820) describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range holds.
    pub kind: E820Kind,
}

/// Where `ram_size` bytes of RAM go: below the MMIO hole first, the rest from 4 GiB up.
///
/// Each range is `(start, length)`, ready to become a [`MemoryRegion`](vmkit::MemoryRegion).
///
/// ```
/// use vm_memory::GuestAddress;
/// use vmkit_boot::linux::layout::ram_ranges;
///
/// assert_eq!(ram_ranges(256 << 20), [(GuestAddress(0), 256 << 20)]);
/// assert_eq!(
///     ram_ranges(4 << 30),
///     [(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]
/// );
/// ```
pub fn ram_ranges(ram_size: u64) -> Vec<(GuestAddress, u64)> {
    let low = ram_size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if ram_size > low {
        ranges.push((GuestAddress(MMIO_HOLE_END), ram_size - low));
    }
    ranges
}

/// The E820 map for `ram_size` bytes of RAM laid out by [`ram_ranges`]: the MP table's page
/// and the legacy area below 1 MiB are left out of RAM, as is the MMIO hole.
pub fn e820_map(ram_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: MPTABLE,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: MPTABLE,
            size: LOW_RAM_END - MPTABLE,
            kind: E820Kind::Reserved,
        },
    ];
    for (start, size) in ram_ranges(ram_size) {
        let end = start.0 + size;
        let start = start.0.max(HIGH_RAM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820Kind::Ram,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_leaves_out_the_legacy_area_the_mp_table_and_the_hole() {
        let map = e820_map(256 << 20);
        assert_eq!(
            map,
            [
                E820Entry {
                    addr: 0,
                    size: MPTABLE,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: MPTABLE,
                    size: 0x1000,
                    kind: E820Kind::Reserved
                },
                E820Entry {
                    addr: HIGH_RAM_START,
                    size: (256 << 20) - HIGH_RAM_START,
                    kind: E820Kind::Ram
                },
            ]
        );
        let big = e820_map(5 << 30);
        assert_eq!(big.len(), 4);
        assert_eq!(big[2].addr + big[2].size, MMIO_HOLE_START);
        assert_eq!((big[3].addr, big[3].size), (MMIO_HOLE_END, 2 << 30));
    }
}
