//! x86-64 vCPU and interrupt-controller state: registers, FPU and XSAVE, MSRs, CPUID, local
//! APIC, pending events, PIC/IOAPIC/PIT. Data only: nothing here calls a hypervisor (the
//! helpers that start a vCPU at a kernel's entry point are in the `vmkit-boot` crate).

mod cpuid;
mod events;
mod fpu;
mod irqchip;
mod lapic;
mod msr;
mod paging;
mod regs;

pub use cpuid::CpuidEntry;
pub use events::{
    MpState, PendingException, PendingInterrupt, PendingNmi, SmmState, VcpuEventField,
    VcpuEventFields, VcpuEvents,
};
pub use fpu::{Fpu, Xcr, Xsave};
pub use irqchip::{IoapicState, IrqchipState, PicState, PitChannel, PitState};
pub use lapic::LapicState;
pub use msr::{msr_index, Msr};
pub use paging::Paging;
pub use regs::{DescriptorTable, Regs, Segment, SpecialRegs};

/// Serializes fixed-size byte arrays longer than serde's built-in 32 as byte strings, and
/// refuses a byte string of the wrong length when deserializing.
mod serde_array {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        let bytes: Vec<u8> = Deserialize::deserialize(deserializer)?;
        let len = bytes.len();
        bytes
            .try_into()
            .map_err(|_| D::Error::invalid_length(len, &"the array's exact length"))
    }
}
