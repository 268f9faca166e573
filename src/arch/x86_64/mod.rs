//! x86-64 vCPU state: registers, FPU and XSAVE, MSRs, CPUID, local APIC, pending events, and
//! helpers to start a vCPU in 64-bit long mode.

pub mod boot;
mod cpuid;
mod events;
mod fpu;
mod lapic;
mod msr;
mod regs;

pub use cpuid::CpuidEntry;
pub use events::{MpState, PendingException, PendingInterrupt, PendingNmi, SmmState, VcpuEvents};
pub use fpu::{Fpu, Xcr, Xsave};
pub use lapic::LapicState;
pub use msr::{msr_index, Msr};
pub use regs::{DescriptorTable, Regs, Segment, SpecialRegs};
