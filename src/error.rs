//! The crate-level [`Error`], for callers that want one error type for the whole API.
//!
//! Every error in vmkit either shows its cause in its message or returns it from
//! [`source()`](std::error::Error::source), never both, so a VMM prints the whole story by
//! following `source()`: [`ErrorChain`] does that.

use std::fmt;

use crate::hypervisor::{HypervisorError, HypervisorKind};
use crate::memory::MemoryError;
use crate::runner::RunnerError;
#[cfg(target_arch = "x86_64")]
use crate::snapshot::SnapshotError;
use crate::vcpu::VcpuError;
use crate::vm::VmError;

/// Any error from vmkit. Each module's own error converts into it with `?`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// [`crate::open`] found no usable hypervisor.
    #[error("no usable hypervisor on this host: {}", DisplayAttempts(.tried))]
    NoHypervisor {
        /// Each backend that was tried, and why it could not be used.
        tried: Vec<OpenAttempt>,
    },
    /// From a [`Hypervisor`](crate::Hypervisor).
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// From a [`Vm`](crate::Vm).
    #[error(transparent)]
    Vm(#[from] VmError),
    /// From a [`Vcpu`](crate::Vcpu).
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// From building a [`MemoryRegion`](crate::MemoryRegion).
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// From saving or restoring a snapshot ([`crate::snapshot`]).
    #[cfg(target_arch = "x86_64")]
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// From the vCPU [`runner`](crate::runner).
    #[error(transparent)]
    Runner(#[from] RunnerError),
}

/// One backend [`crate::open`] tried, and why it was not usable.
#[derive(Debug)]
pub struct OpenAttempt {
    /// The backend.
    pub kind: HypervisorKind,
    /// Why it could not be used.
    pub reason: OpenFailure,
}

/// Why a backend could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenFailure {
    /// This build of vmkit does not include the backend (its cargo feature is off).
    NotCompiled {
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// The backend is compiled in but could not be opened on this host.
    Failed(HypervisorError),
}

struct DisplayAttempts<'a>(&'a [OpenAttempt]);

impl fmt::Display for DisplayAttempts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, attempt) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match &attempt.reason {
                OpenFailure::NotCompiled { feature } => write!(
                    f,
                    "{}: not compiled in (enable the `{feature}` feature)",
                    attempt.kind
                )?,
                OpenFailure::Failed(err) => write!(f, "{}: {}", attempt.kind, ErrorChain(err))?,
            }
        }
        Ok(())
    }
}

/// Displays an error followed by each of its causes (`message: cause: cause…`), as a VMM
/// reports an error.
///
/// ```
/// use vmkit::error::ErrorChain;
/// use vmkit::vm_memory::GuestAddress;
/// use vmkit::{MemoryFlags, MemoryRegion};
///
/// let err = MemoryRegion::anonymous(GuestAddress(0x1000), 0x800, MemoryFlags::empty())
///     .unwrap_err();
/// eprintln!("cannot add RAM: {}", ErrorChain(&err));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A `Result` with vmkit's crate-level [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
