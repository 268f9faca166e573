//! The runner's error type.

use std::error::Error;
use std::time::Duration;

use super::GuestStop;
use crate::vcpu::VcpuError;

/// Errors of a [`VmRunner`](super::VmRunner) and its [`VcpuHandle`](super::VcpuHandle)s, each
/// naming the vCPU and, for a command, the command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunnerError {
    /// The vCPU's thread could not be started.
    #[error("cannot start the thread of vCPU {vcpu}")]
    Spawn {
        /// The vCPU.
        vcpu: u32,
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
    /// The vCPU's thread could not install its seccomp filter
    /// ([`RunnerOptions::seccomp`](super::RunnerOptions::seccomp)); it never ran the vCPU, and
    /// the VM was stopped.
    #[cfg(feature = "seccomp")]
    #[error("vCPU {vcpu} cannot install its seccomp filter")]
    Seccomp {
        /// The vCPU.
        vcpu: u32,
        /// vmkit-seccomp's error.
        #[source]
        source: crate::seccomp::SeccompError,
    },
    /// `run()` failed; the VM was stopped.
    #[error("vCPU {vcpu} failed to run")]
    Run {
        /// The vCPU.
        vcpu: u32,
        /// The backend's error.
        #[source]
        source: VcpuError,
    },
    /// The exit handler returned [`ExitAction::Fail`](super::ExitAction::Fail); the VM was
    /// stopped. (On an exit after which the guest cannot go on, the error is
    /// [`GuestStopped`](RunnerError::GuestStopped) instead.)
    #[error("the exit handler failed on vCPU {vcpu}")]
    Handler {
        /// The vCPU.
        vcpu: u32,
        /// The handler's error.
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    /// The exit handler returned [`ExitAction::Fail`](super::ExitAction::Fail) on an exit
    /// after which the guest cannot go on (an internal error of the hypervisor, a failed
    /// entry, a triple fault); the VM was stopped. `stop` says what happened in words, with
    /// the guest's `rip` and the instruction bytes there when they could be read.
    #[error("vCPU {vcpu} stopped: {stop}")]
    GuestStopped {
        /// The vCPU.
        vcpu: u32,
        /// What happened, and where.
        stop: Box<GuestStop>,
        /// The handler's error (e.g. an [`UnhandledExit`](super::UnhandledExit)).
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
    /// The vCPU's thread panicked (in the exit handler or in a command); the VM was stopped.
    #[error("the thread of vCPU {vcpu} panicked: {message}")]
    Panicked {
        /// The vCPU.
        vcpu: u32,
        /// The panic's message, when it had one.
        message: String,
    },
    /// A command went to a vCPU whose thread has ended (the VM stopped, or the thread
    /// failed; [`VmRunner::join`](super::VmRunner::join) says why).
    #[error("cannot {command} vCPU {vcpu}: its thread has ended")]
    Ended {
        /// The vCPU.
        vcpu: u32,
        /// The command, e.g. "pause".
        command: &'static str,
    },
    /// A command got no answer within the runner's command timeout.
    #[error("vCPU {vcpu} did not answer {command} within {timeout:?}")]
    Timeout {
        /// The vCPU.
        vcpu: u32,
        /// The command.
        command: &'static str,
        /// The timeout ([`RunnerOptions::command_timeout`](super::RunnerOptions)).
        timeout: Duration,
    },
    /// A command reached the vCPU and failed there.
    #[error("{command} failed on vCPU {vcpu}")]
    Command {
        /// The vCPU.
        vcpu: u32,
        /// The command, e.g. "save state".
        command: &'static str,
        /// The backend's error.
        #[source]
        source: VcpuError,
    },
    /// [`VmRunner::join_timeout`](super::VmRunner::join_timeout) gave up; the VM was told to
    /// stop and the threads named here were left running.
    #[error("the threads of vCPUs {vcpus:?} did not end within {timeout:?}")]
    JoinTimeout {
        /// The vCPUs whose threads had not ended.
        vcpus: Vec<u32>,
        /// How long the join waited.
        timeout: Duration,
    },
}
