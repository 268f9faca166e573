//! Pending exceptions, interrupts and NMIs, SMM state, and the multiprocessing state.

/// An exception that is being delivered or waits to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingException {
    /// Delivery has started (it must be re-injected on resume).
    pub injected: bool,
    /// It waits to be delivered.
    pub pending: bool,
    /// Exception vector.
    pub nr: u8,
    /// Whether `error_code` is pushed.
    pub has_error_code: bool,
    /// The error code.
    pub error_code: u32,
}

/// An external interrupt being injected, and the interrupt shadow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingInterrupt {
    /// An interrupt is being injected.
    pub injected: bool,
    /// Its vector.
    pub nr: u8,
    /// It is a software interrupt (`int N`).
    pub soft: bool,
    /// Interrupt shadow after `sti` or `mov ss` (architectural bits).
    pub shadow: u8,
}

/// Non-maskable interrupt state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingNmi {
    /// An NMI is being injected.
    pub injected: bool,
    /// An NMI waits to be delivered.
    pub pending: bool,
    /// NMIs are blocked (an NMI handler is running).
    pub masked: bool,
}

/// System-management-mode state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SmmState {
    /// The vCPU is in SMM.
    pub smm: bool,
    /// An SMI waits to be delivered.
    pub pending: bool,
    /// SMM was entered from inside an NMI handler.
    pub smm_inside_nmi: bool,
    /// An INIT was latched while in SMM.
    pub latched_init: bool,
}

/// Events in flight on a vCPU: what must be carried over a save and restore so that an
/// interrupted delivery resumes correctly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VcpuEvents {
    /// Exception state.
    pub exception: PendingException,
    /// External-interrupt state.
    pub interrupt: PendingInterrupt,
    /// NMI state.
    pub nmi: PendingNmi,
    /// The vector of a pending startup IPI.
    pub sipi_vector: u32,
    /// SMM state.
    pub smm: SmmState,
}

/// The multiprocessing state of a vCPU.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum MpState {
    /// Running, or ready to run.
    #[default]
    Runnable,
    /// An application processor waiting for INIT.
    Uninitialized,
    /// INIT received, waiting for a startup IPI.
    InitReceived,
    /// Halted (`hlt`), waiting for an interrupt.
    Halted,
    /// Startup IPI received.
    SipiReceived,
    /// An AP parked by the guest firmware (SEV-ES AP reset hold).
    ApResetHold,
    /// Suspended (e.g. after `mwait` with a deep C-state the hypervisor models).
    Suspended,
    /// A state this version of vmkit does not name, with the backend's raw value.
    Other(u32),
}
