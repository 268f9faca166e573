//! Legacy FPU/SSE state, the XSAVE area and the extended control registers.

/// The x87 FPU and SSE state (the FXSAVE layout's contents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fpu {
    /// The eight x87 registers (ST0–ST7 / MM0–MM7), 80 bits each in 16-byte slots.
    pub fpr: [[u8; 16]; 8],
    /// FPU control word.
    pub fcw: u16,
    /// FPU status word.
    pub fsw: u16,
    /// Abridged FPU tag word.
    pub ftwx: u8,
    /// Last FPU opcode.
    pub last_opcode: u16,
    /// Last FPU instruction pointer.
    pub last_ip: u64,
    /// Last FPU data pointer.
    pub last_dp: u64,
    /// XMM0–XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control and status register.
    pub mxcsr: u32,
}

/// The XSAVE area, as the processor's `XSAVE` instruction lays it out (legacy region, header,
/// then the extended components).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Xsave {
    /// The area as 32-bit words, as KVM and Xen both exchange it.
    pub region: Vec<u32>,
}

impl Xsave {
    /// Size in bytes of the legacy area that KVM's `KVM_GET_XSAVE` always exchanges.
    pub const LEGACY_SIZE: usize = 4096;
}

/// One extended control register (XCR0 is the only one defined today).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Xcr {
    /// Register index (0 for XCR0).
    pub index: u32,
    /// Register value.
    pub value: u64,
}
