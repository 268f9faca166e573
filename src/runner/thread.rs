//! The loop of one vCPU thread.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use super::{
    Command, ExitAction, Finished, GuestStop, RunnerError, Shared, StopReason, VcpuOutcome,
};
use crate::vcpu::{Vcpu, VcpuExit};

/// What a vCPU thread hands back: the vCPU (unless the thread panicked) and how it ended.
pub(super) struct Ended {
    vcpu: Option<Box<dyn Vcpu>>,
    outcome: Result<VcpuOutcome, RunnerError>,
}

/// Turns a joined thread into a [`Finished`].
pub(super) fn finish(id: u32, joined: std::thread::Result<Ended>) -> Finished {
    match joined {
        Ok(ended) => Finished {
            id,
            outcome: ended.outcome,
            vcpu: ended.vcpu,
        },
        // `run` catches panics, so this is only a panic while reporting one.
        Err(panic) => Finished {
            id,
            outcome: Err(RunnerError::Panicked {
                vcpu: id,
                message: panic_message(panic.as_ref()),
            }),
            vcpu: None,
        },
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Counts the thread as ended, and stops the VM if it failed, however the thread ends.
struct EndGuard<'a> {
    shared: &'a Shared,
    halted: bool,
    failed: bool,
}

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        if self.failed {
            self.shared.stop_all();
        }
        if self.halted {
            // Already counted idle when it halted.
            let mut counts = self.shared.counts();
            counts.ended += 1;
            drop(counts);
            self.shared.changed.notify_all();
        } else {
            self.shared.went_idle(true);
        }
    }
}

/// How a vCPU thread starts.
pub(super) struct Setup {
    /// Paused: it waits for a resume before the first `run()`.
    pub(super) paused: bool,
    /// The filter it installs first.
    #[cfg(feature = "seccomp")]
    pub(super) seccomp: Option<crate::seccomp::Filter>,
}

/// The body of a vCPU thread.
pub(super) fn run(
    mut vcpu: Box<dyn Vcpu>,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
    setup: Setup,
) -> Ended {
    let id = vcpu.id();
    let paused = setup.paused;
    let mut guard = EndGuard {
        shared: &shared,
        halted: false,
        failed: true,
    };
    let mut state = State {
        paused,
        halted: false,
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        #[cfg(feature = "seccomp")]
        if let Some(filter) = &setup.seccomp {
            filter
                .install()
                .map_err(|source| RunnerError::Seccomp { vcpu: id, source })?;
        }
        vcpu_loop(vcpu.as_mut(), &commands, &shared, &mut state)
    }));
    guard.halted = state.halted;
    let ended = match result {
        Ok(outcome) => {
            guard.failed = outcome.is_err();
            Ended {
                vcpu: Some(vcpu),
                outcome,
            }
        }
        Err(panic) => Ended {
            // The vCPU may be mid-way through anything: it is not handed back.
            vcpu: None,
            outcome: Err(RunnerError::Panicked {
                vcpu: id,
                message: panic_message(panic.as_ref()),
            }),
        },
    };
    // The queue goes before the guard counts the thread ended: a command sent from now on
    // fails at once instead of waiting for an answer.
    drop(commands);
    drop(guard);
    ended
}

struct State {
    paused: bool,
    halted: bool,
}

/// Runs the vCPU and answers commands until it stops.
fn vcpu_loop(
    vcpu: &mut dyn Vcpu,
    commands: &Receiver<Command>,
    shared: &Shared,
    state: &mut State,
) -> Result<VcpuOutcome, RunnerError> {
    let id = vcpu.id();
    let stopped = |state: &State| {
        if state.halted {
            VcpuOutcome::Halted
        } else {
            VcpuOutcome::Stopped
        }
    };
    loop {
        // Answer every queued command; while paused or halted, wait for the next one.
        loop {
            let command = if state.paused || state.halted {
                match commands.recv() {
                    Ok(command) => command,
                    // `Shared` holds a sender for as long as this thread runs.
                    Err(_) => return Ok(stopped(state)),
                }
            } else {
                match commands.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(stopped(state)),
                }
            };
            match command {
                Command::Pause(done) => {
                    state.paused = true;
                    let _ = done.send(());
                }
                Command::Resume(done) => {
                    state.paused = false;
                    let _ = done.send(());
                }
                Command::With(f) => f(vcpu),
                Command::Stop => return Ok(stopped(state)),
            }
        }
        let mut exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(source) => return Err(RunnerError::Run { vcpu: id, source }),
        };
        match exit {
            // A kick (usually for a command) or a signal: look at the commands, run again.
            VcpuExit::Kicked | VcpuExit::Interrupted => continue,
            _ => {}
        }
        match shared.handler.handle(id, &mut exit) {
            ExitAction::Continue => {}
            ExitAction::Pause => state.paused = true,
            ExitAction::Halt => {
                state.halted = true;
                shared.went_idle(false);
            }
            ExitAction::PowerOff => {
                shared.stop_all();
                return Ok(VcpuOutcome::PowerOff);
            }
            ExitAction::Reset => {
                shared.stop_all();
                return Ok(VcpuOutcome::Reset);
            }
            ExitAction::Fail(source) => {
                return Err(match StopReason::of(&exit) {
                    // The exit is done with: the vCPU's state can be read.
                    Some(reason) => RunnerError::GuestStopped {
                        vcpu: id,
                        stop: Box::new(GuestStop::read(vcpu, reason)),
                        source,
                    },
                    None => RunnerError::Handler { vcpu: id, source },
                });
            }
        }
    }
}
