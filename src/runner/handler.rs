//! What the runner does with an exit: the [`ExitHandler`] trait and the [`ExitAction`] it
//! returns.

use std::error::Error;
use std::fmt;

use crate::vcpu::VcpuExit;

/// Answers the exits of a VM's vCPUs; one handler serves every vCPU thread of a
/// [`VmRunner`](super::VmRunner), concurrently.
///
/// [`VcpuExit::Kicked`] and [`VcpuExit::Interrupted`] never reach a handler: the runner
/// handles them itself. A read exit's data must be filled before returning. Closures
/// `Fn(u32, &mut VcpuExit<'_>) -> ExitAction` are handlers; so is `vmkit_bus::Bus` (with that
/// crate's `vmkit` feature), and a wrapper can add to either.
///
/// A handler runs on a vCPU thread between two `run()`s, so it must not wait for a command
/// to its own vCPU (that vCPU answers only after the handler returns; return
/// [`ExitAction::Pause`] instead), nor for commands to other vCPUs whose handlers might wait
/// for it in turn.
///
/// ```
/// use vmkit::runner::{ExitAction, ExitHandler};
/// use vmkit::VcpuExit;
///
/// /// Answers port reads with all-ones and powers off on a write to port 0x501.
/// struct Board;
///
/// impl ExitHandler for Board {
///     fn handle(&self, _vcpu: u32, exit: &mut VcpuExit<'_>) -> ExitAction {
///         match exit {
///             VcpuExit::IoIn { data, .. } => {
///                 data.fill(0xff);
///                 ExitAction::Continue
///             }
///             VcpuExit::IoOut { port: 0x501, .. } => ExitAction::PowerOff,
///             VcpuExit::IoOut { .. } => ExitAction::Continue,
///             other => ExitAction::unhandled(other),
///         }
///     }
/// }
///
/// let mut data = [0u8; 1];
/// let mut exit = VcpuExit::IoIn { port: 0x60, size: 1, data: &mut data };
/// assert!(matches!(Board.handle(0, &mut exit), ExitAction::Continue));
/// assert_eq!(data, [0xff]);
/// ```
pub trait ExitHandler: Send + Sync {
    /// Handles one exit of vCPU `vcpu` and says how the runner goes on.
    fn handle(&self, vcpu: u32, exit: &mut VcpuExit<'_>) -> ExitAction;
}

impl<F> ExitHandler for F
where
    F: Fn(u32, &mut VcpuExit<'_>) -> ExitAction + Send + Sync,
{
    fn handle(&self, vcpu: u32, exit: &mut VcpuExit<'_>) -> ExitAction {
        self(vcpu, exit)
    }
}

/// How the runner goes on after an exit.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExitAction {
    /// Run the vCPU again.
    Continue,
    /// This vCPU is done for now (e.g. an application processor that parked in `hlt` on a VM
    /// without an in-kernel irqchip): it stays outside `run()`, still answering commands,
    /// while the others go on. Once every vCPU has halted the VM stops.
    Halt,
    /// Pause this vCPU, as [`VcpuHandle::pause`](super::VcpuHandle::pause) would: it stays
    /// outside `run()`, answering commands, until resumed. A breakpoint for the VMM: e.g.
    /// stop the guest at a given serial line to snapshot it.
    Pause,
    /// The guest asked to power off: stop every vCPU.
    PowerOff,
    /// The guest asked to reset: stop every vCPU (the VMM rebuilds or restores the VM).
    Reset,
    /// The exit cannot be handled: stop every vCPU and report this error for this vCPU.
    Fail(Box<dyn Error + Send + Sync>),
}

impl ExitAction {
    /// [`ExitAction::Fail`] with an [`UnhandledExit`] describing `exit`.
    ///
    /// ```
    /// use vmkit::runner::ExitAction;
    /// use vmkit::VcpuExit;
    ///
    /// let action = ExitAction::unhandled(&VcpuExit::Shutdown);
    /// assert!(matches!(action, ExitAction::Fail(err) if err.to_string().contains("Shutdown")));
    /// ```
    pub fn unhandled(exit: &VcpuExit<'_>) -> ExitAction {
        ExitAction::Fail(Box::new(UnhandledExit {
            exit: format!("{exit:?}"),
        }))
    }
}

/// The error of [`ExitAction::unhandled`]: an exit no handler took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnhandledExit {
    /// The exit, as `Debug` prints it.
    pub exit: String,
}

impl fmt::Display for UnhandledExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no handler for the exit {}", self.exit)
    }
}

impl Error for UnhandledExit {}

/// Makes a handler of a closure, with the closure's argument types spelled out for type
/// inference; `Arc::new(closure)` works as well when the arguments are annotated.
///
/// ```
/// use vmkit::runner::{self, ExitAction};
/// use vmkit::VcpuExit;
///
/// let handler = runner::from_fn(|_vcpu, exit| match exit {
///     VcpuExit::Hlt => ExitAction::Halt,
///     _ => ExitAction::Continue,
/// });
/// assert!(matches!(handler.handle(0, &mut VcpuExit::Hlt), ExitAction::Halt));
/// ```
pub fn from_fn<F>(handler: F) -> std::sync::Arc<dyn ExitHandler>
where
    F: Fn(u32, &mut VcpuExit<'_>) -> ExitAction + Send + Sync + 'static,
{
    std::sync::Arc::new(handler)
}
