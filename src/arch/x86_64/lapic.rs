//! The local APIC's register page.

/// The local APIC's 1 KiB register page, as the xAPIC MMIO layout orders it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LapicState {
    /// The register bytes; register `N` lives at offset `N * 0x10`.
    #[serde(with = "super::serde_array")]
    pub regs: [u8; LapicState::SIZE],
}

impl Default for LapicState {
    fn default() -> Self {
        LapicState {
            regs: [0; Self::SIZE],
        }
    }
}

impl LapicState {
    /// Size of the register page that hypervisors exchange.
    pub const SIZE: usize = 1024;
    /// Offset of the APIC ID register.
    pub const ID: usize = 0x20;
    /// Offset of the spurious-interrupt vector register.
    pub const SPURIOUS_VECTOR: usize = 0xf0;
    /// Offset of the LVT LINT0 register.
    pub const LVT_LINT0: usize = 0x350;
    /// Offset of the LVT LINT1 register.
    pub const LVT_LINT1: usize = 0x360;

    /// Reads the 32-bit register at `offset`, or `None` if it lies outside the page.
    pub fn register(&self, offset: usize) -> Option<u32> {
        let bytes = self.regs.get(offset..offset.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    }

    /// Writes the 32-bit register at `offset`; returns `false` if it lies outside the page.
    pub fn set_register(&mut self, offset: usize, value: u32) -> bool {
        match offset
            .checked_add(4)
            .and_then(|end| self.regs.get_mut(offset..end))
        {
            Some(bytes) => {
                bytes.copy_from_slice(&value.to_le_bytes());
                true
            }
            None => false,
        }
    }
}
