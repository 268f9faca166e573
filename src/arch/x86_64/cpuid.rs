//! CPUID leaves as the guest sees them.

/// One CPUID leaf (and sub-leaf) with the values the guest reads.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct CpuidEntry {
    /// The leaf (EAX input).
    pub function: u32,
    /// The sub-leaf (ECX input); meaningful only with [`CpuidEntry::SIGNIFICANT_INDEX`].
    pub index: u32,
    /// Flags, such as [`CpuidEntry::SIGNIFICANT_INDEX`].
    pub flags: u32,
    /// Value returned in EAX.
    pub eax: u32,
    /// Value returned in EBX.
    pub ebx: u32,
    /// Value returned in ECX.
    pub ecx: u32,
    /// Value returned in EDX.
    pub edx: u32,
}

impl CpuidEntry {
    /// The leaf's result depends on the sub-leaf in ECX.
    pub const SIGNIFICANT_INDEX: u32 = 1 << 0;
}
