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

/// Which parts of [`VcpuEvents`] a hypervisor can hold
/// ([`Capabilities::vcpu_event_fields`](crate::Capabilities::vcpu_event_fields)). An event
/// being injected (an exception with its error code, an external interrupt, an NMI) is
/// always held where [`Capabilities::vcpu_events`](crate::Capabilities::vcpu_events) is
/// true; these say what else is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct VcpuEventFields {
    /// A pending NMI and NMI blocking ([`PendingNmi::pending`], [`PendingNmi::masked`]).
    pub nmi_state: bool,
    /// The interrupt shadow ([`PendingInterrupt::shadow`]).
    pub interrupt_shadow: bool,
    /// System-management mode ([`SmmState`]).
    pub smm: bool,
    /// An exception that waits to be delivered and whose delivery has not started
    /// ([`PendingException::pending`]).
    pub pending_exception: bool,
    /// Software events being delivered: an injected software interrupt
    /// ([`PendingInterrupt::soft`]) or an injected `#BP` or `#OF` (vectors 3 and 4, raised by
    /// `int3` and `into`), which the hypervisor re-injects rather than re-executing the
    /// instruction.
    pub software_events: bool,
}

impl VcpuEventFields {
    /// Every field (KVM).
    pub const ALL: VcpuEventFields = VcpuEventFields {
        nmi_state: true,
        interrupt_shadow: true,
        smm: true,
        pending_exception: true,
        software_events: true,
    };
}

/// A part of [`VcpuEvents`] that a hypervisor may be unable to hold (see
/// [`VcpuEventFields`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum VcpuEventField {
    /// [`PendingNmi::pending`].
    NmiPending,
    /// [`PendingNmi::masked`].
    NmiMasked,
    /// A nonzero [`PendingInterrupt::shadow`].
    InterruptShadow,
    /// Any field of [`SmmState`].
    Smm,
    /// [`PendingException::pending`].
    PendingException,
    /// An injected software interrupt, or an injected `#BP` or `#OF`.
    SoftwareEvent,
}

impl std::fmt::Display for VcpuEventField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VcpuEventField::NmiPending => "a pending NMI (nmi.pending)",
            VcpuEventField::NmiMasked => "NMI blocking (nmi.masked)",
            VcpuEventField::InterruptShadow => "an interrupt shadow (interrupt.shadow)",
            VcpuEventField::Smm => "system-management mode state (smm)",
            VcpuEventField::PendingException => {
                "an exception pending but not injected (exception.pending)"
            }
            VcpuEventField::SoftwareEvent => {
                "an injected software interrupt, #BP or #OF (interrupt.soft, exception.nr 3 or 4)"
            }
        })
    }
}

impl VcpuEvents {
    /// The fields set in `self` that a hypervisor holding only `fields` cannot hold, in the
    /// order of [`VcpuEventField`]; empty when it can hold all of `self`.
    ///
    /// ```
    /// use vmkit::arch::x86_64::{VcpuEventField, VcpuEventFields, VcpuEvents};
    /// let mut events = VcpuEvents::default();
    /// events.nmi.masked = true;
    /// assert_eq!(events.unsupported_in(VcpuEventFields::default()), [VcpuEventField::NmiMasked]);
    /// assert!(events.unsupported_in(VcpuEventFields::ALL).is_empty());
    /// ```
    pub fn unsupported_in(&self, fields: VcpuEventFields) -> Vec<VcpuEventField> {
        let smm = self.smm;
        let software = (self.interrupt.injected && self.interrupt.soft)
            || (self.exception.injected && matches!(self.exception.nr, 3 | 4));
        [
            (
                VcpuEventField::NmiPending,
                self.nmi.pending,
                fields.nmi_state,
            ),
            (VcpuEventField::NmiMasked, self.nmi.masked, fields.nmi_state),
            (
                VcpuEventField::InterruptShadow,
                self.interrupt.shadow != 0,
                fields.interrupt_shadow,
            ),
            (
                VcpuEventField::Smm,
                smm.smm || smm.pending || smm.smm_inside_nmi || smm.latched_init,
                fields.smm,
            ),
            (
                VcpuEventField::PendingException,
                self.exception.pending,
                fields.pending_exception,
            ),
            (
                VcpuEventField::SoftwareEvent,
                software,
                fields.software_events,
            ),
        ]
        .into_iter()
        .filter(|&(_, set, held)| set && !held)
        .map(|(field, _, _)| field)
        .collect()
    }
}
