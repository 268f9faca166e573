//! Model-specific registers.

/// One model-specific register and its value.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Msr {
    /// The MSR's index (the ECX operand of `rdmsr`/`wrmsr`).
    pub index: u32,
    /// Its 64-bit value.
    pub data: u64,
}

/// Indices of MSRs that VMMs commonly save, restore or set at boot.
pub mod msr_index {
    /// Extended feature enable register.
    pub const EFER: u32 = 0xc000_0080;
    /// `syscall` target segments.
    pub const STAR: u32 = 0xc000_0081;
    /// 64-bit `syscall` target.
    pub const LSTAR: u32 = 0xc000_0082;
    /// Compatibility-mode `syscall` target.
    pub const CSTAR: u32 = 0xc000_0083;
    /// `syscall` flags mask.
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// Kernel GS base, swapped in by `swapgs`.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// `sysenter` code segment.
    pub const SYSENTER_CS: u32 = 0x174;
    /// `sysenter` stack pointer.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// `sysenter` entry point.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// Time-stamp counter.
    pub const TSC: u32 = 0x10;
    /// Page attribute table.
    pub const PAT: u32 = 0x277;
    /// Miscellaneous feature enables.
    pub const MISC_ENABLE: u32 = 0x1a0;
}
