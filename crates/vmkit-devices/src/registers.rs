//! Byte-wise register access for the 8-bit ISA devices.

/// The register that byte `index` of an access at `offset` reaches on a device with
/// `registers` one-byte registers, or `None` when it lands at or past the last one.
///
/// Byte `i` goes to register `offset + i`, as an ISA bus splits a wide access to an 8-bit
/// device into byte accesses at consecutive ports.
pub(crate) fn register(offset: u16, index: usize, registers: u8) -> Option<u8> {
    u16::try_from(index)
        .ok()
        .and_then(|index| offset.checked_add(index))
        .and_then(|register| u8::try_from(register).ok())
        .filter(|&register| register < registers)
}
