//! General-purpose and special (segment, control, descriptor-table) registers.

/// The general-purpose registers, instruction pointer and flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)] // The fields are the architectural registers of the same name.
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register, with its hidden descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    /// Segment base address.
    pub base: u64,
    /// Segment limit, in bytes (already scaled by the granularity bit).
    pub limit: u32,
    /// The visible selector.
    pub selector: u16,
    /// Descriptor type field (4 bits).
    pub type_: u8,
    /// Present bit.
    pub present: bool,
    /// Descriptor privilege level (0–3).
    pub dpl: u8,
    /// Default operation size (D/B bit).
    pub db: bool,
    /// Descriptor type: code/data (true) or system (false).
    pub s: bool,
    /// 64-bit code segment (L bit).
    pub l: bool,
    /// Granularity bit.
    pub g: bool,
    /// Available-for-software bit.
    pub avl: bool,
    /// The segment is unusable (a null selector was loaded).
    pub unusable: bool,
}

/// The GDTR or IDTR: base and limit of a descriptor table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DescriptorTable {
    /// Linear base address of the table.
    pub base: u64,
    /// Table limit: its size in bytes minus one.
    pub limit: u16,
}

/// Segment, descriptor-table and control registers, EFER and the APIC base.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)] // The fields are the architectural registers of the same name.
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
    /// Bitmap of external interrupts pending injection (256 vectors).
    pub interrupt_bitmap: [u64; 4],
}
