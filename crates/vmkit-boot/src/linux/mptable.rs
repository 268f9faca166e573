//! The Intel MultiProcessor Specification (1.4) table, through which a guest without ACPI
//! learns its processors, its IOAPIC and how ISA interrupts reach it.
//!
//! The floating pointer goes at [`MP_FLOATING_POINTER`], inside the last KiB of base memory
//! where Linux scans for it; the configuration table it points to at [`MPTABLE`], in the
//! reserved page below. Entries: one processor per vCPU (APIC IDs `0..vcpus`, the first the
//! bootstrap processor), one ISA bus, one IOAPIC (ID `vcpus`) at [`IOAPIC_ADDR`], interrupt
//! sources mapping IRQ `n` to IOAPIC pin `n` for every pin (as KVM's default GSI routing
//! does), LINT0 as ExtINT and LINT1 as NMI.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{IOAPIC_ADDR, LAPIC_ADDR, MPTABLE, MP_FLOATING_POINTER};
use super::LinuxBootError;

/// IOAPIC pins described by the table (the in-kernel IOAPIC's 24).
pub const IOAPIC_PINS: u8 = 24;
/// The most vCPUs the table describes: APIC IDs must stay below the broadcast ID 0xff with
/// the IOAPIC's ID after them, and the table must fit its page.
pub const MAX_VCPUS: u32 = 128;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INTERRUPT_INT: u8 = 0;
const INTERRUPT_NMI: u8 = 1;
const INTERRUPT_EXTINT: u8 = 3;
const SPEC_REVISION: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6 in the processor entries' signature, the features word left to CPUID.
const CPU_SIGNATURE: u32 = 0x600;
/// The FPU and APIC feature flags (CPUID.1:EDX bits 0 and 9).
const CPU_FEATURES: u32 = 1 | (1 << 9);
const ISA_BUS_ID: u8 = 0;

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, &byte| sum.wrapping_add(byte))
        .wrapping_neg()
}

/// The configuration table for `vcpus` processors, checksummed, and its entry count.
fn config_table(vcpus: u8, stride: u8) -> Vec<u8> {
    let ioapic_id = (vcpus - 1) * stride + 1;
    let mut entries = Vec::new();
    for id in 0..vcpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(id * stride);
        entries.push(LAPIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    for pin in 0..IOAPIC_PINS {
        // Flags 0: polarity and trigger conform to the bus (ISA: active-high, edge).
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INTERRUPT_INT, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, pin, ioapic_id, pin]);
    }
    for (lint, kind) in [(0, INTERRUPT_EXTINT), (1, INTERRUPT_NMI)] {
        // Destination 0xff: every local APIC.
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, 0, 0xff, lint]);
    }
    let count = u16::from(vcpus) + 2 + u16::from(IOAPIC_PINS) + 2;

    const HEADER_LEN: usize = 44;
    let length = (HEADER_LEN + entries.len()) as u16;
    let mut table = Vec::with_capacity(usize::from(length));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(SPEC_REVISION);
    table.push(0); // checksum, below
    table.extend_from_slice(b"VMKIT   ");
    table.extend_from_slice(b"LINUX-GUEST ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes()); // no extended table
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The 16-byte floating pointer structure that points at the table.
fn floating_pointer() -> [u8; 16] {
    let mut pointer = [0u8; 16];
    pointer[0..4].copy_from_slice(b"_MP_");
    pointer[4..8].copy_from_slice(&(MPTABLE as u32).to_le_bytes());
    pointer[8] = 1; // length in 16-byte units
    pointer[9] = SPEC_REVISION;
    // Feature bytes 0: the configuration table is present (no default configuration).
    pointer[10] = checksum(&pointer);
    pointer
}

/// The vCPU count and APIC ID stride as bytes, checked: 1 to [`MAX_VCPUS`] vCPUs whose
/// highest APIC ID, and the IOAPIC's after it, fit the tables' byte (stride 0 counts as 1).
pub(crate) fn apic_ids(vcpus: u32, apic_id_stride: u32) -> Result<(u8, u8), LinuxBootError> {
    let count = u8::try_from(vcpus)
        .ok()
        .filter(|&n| n >= 1 && u32::from(n) <= MAX_VCPUS)
        .ok_or(LinuxBootError::VcpuCount {
            vcpus,
            max: MAX_VCPUS,
        })?;
    let stride = apic_id_stride.max(1);
    // The IOAPIC takes the ID after the last local APIC's.
    let max = (254 / stride + 1).min(MAX_VCPUS);
    match u8::try_from(stride) {
        Ok(stride) if (u32::from(count) - 1) * u32::from(stride) < 255 => Ok((count, stride)),
        _ => Err(LinuxBootError::VcpuCount { vcpus, max }),
    }
}

/// Writes the MP floating pointer and configuration table for `vcpus` processors.
pub fn write_mptable<M: GuestMemoryBackend>(memory: &M, vcpus: u32) -> Result<(), LinuxBootError> {
    write_mptable_with_stride(memory, vcpus, 1)
}

/// [`write_mptable`] for a hypervisor that gives vCPU `n` APIC ID `n * apic_id_stride`.
pub fn write_mptable_with_stride<M: GuestMemoryBackend>(
    memory: &M,
    vcpus: u32,
    apic_id_stride: u32,
) -> Result<(), LinuxBootError> {
    let (count, stride) = apic_ids(vcpus, apic_id_stride)?;
    let table = config_table(count, stride);
    debug_assert!(MPTABLE + table.len() as u64 <= MP_FLOATING_POINTER);
    for (what, addr, bytes) in [
        ("MP table", MPTABLE, table.as_slice()),
        (
            "MP floating pointer",
            MP_FLOATING_POINTER,
            &floating_pointer()[..],
        ),
    ] {
        memory
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|source| LinuxBootError::GuestMemory { what, addr, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }

    #[test]
    fn structures_checksum_to_zero_and_count_their_entries() {
        let pointer = floating_pointer();
        assert_eq!(sum(&pointer), 0);
        assert_eq!(&pointer[0..4], b"_MP_");
        assert_eq!(
            u32::from_le_bytes(pointer[4..8].try_into().unwrap()),
            MPTABLE as u32
        );

        let table = config_table(4, 1);
        assert_eq!(sum(&table), 0);
        assert_eq!(
            u16::from_le_bytes([table[4], table[5]]) as usize,
            table.len()
        );
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 4 + 2 + 24 + 2);
        // Processor entries first: APIC IDs 0..4, only the first is the BSP.
        for id in 0..4usize {
            let entry = &table[44 + 20 * id..][..20];
            assert_eq!((entry[0], entry[1]), (ENTRY_PROCESSOR, id as u8));
            assert_eq!(entry[3] & CPU_BOOTSTRAP != 0, id == 0);
        }
        // The IOAPIC takes the ID after the last processor.
        let ioapic = &table[44 + 80 + 8..][..8];
        assert_eq!((ioapic[0], ioapic[1]), (ENTRY_IOAPIC, 4));
    }

    #[test]
    fn a_stride_spaces_the_apic_ids_as_the_hypervisor_does() {
        // Xen's numbering: vCPU n has APIC ID 2n; the IOAPIC comes after the last.
        let table = config_table(3, 2);
        assert_eq!(sum(&table), 0);
        for id in 0..3usize {
            assert_eq!(table[44 + 20 * id + 1], 2 * id as u8);
        }
        let ioapic = &table[44 + 60 + 8..][..8];
        assert_eq!((ioapic[0], ioapic[1]), (ENTRY_IOAPIC, 5));
        // Stride 0 is KVM's numbering; the highest APIC ID must fit a byte.
        assert_eq!(apic_ids(4, 0).unwrap(), (4, 1));
        assert_eq!(apic_ids(128, 2).unwrap(), (128, 2));
        assert!(matches!(
            apic_ids(128, 3),
            Err(LinuxBootError::VcpuCount {
                vcpus: 128,
                max: 85
            })
        ));
        assert!(apic_ids(2, 1 << 20).is_err());
    }

    #[test]
    fn the_largest_table_fits_below_the_floating_pointer() {
        let table = config_table(MAX_VCPUS as u8, 1);
        assert!(MPTABLE + table.len() as u64 <= MP_FLOATING_POINTER);
    }

    #[test]
    fn vcpu_counts_out_of_range_are_refused() {
        let memory =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        for vcpus in [0, MAX_VCPUS + 1, 300] {
            assert!(matches!(
                write_mptable(&memory, vcpus),
                Err(LinuxBootError::VcpuCount { .. })
            ));
        }
        write_mptable(&memory, 2).unwrap();
        let mut signature = [0u8; 4];
        memory
            .read_slice(&mut signature, GuestAddress(MPTABLE))
            .unwrap();
        assert_eq!(&signature, b"PCMP");
    }
}
