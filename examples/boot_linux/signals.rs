//! SIGINT and SIGTERM stop the VM instead of killing boot_linux, so that the run ends as
//! any other does: the vCPUs stop, the device threads end, the TAP leaves its network and
//! the last VM out tears the network down.
//!
//! signal-hook's handler only writes to a pipe, which a thread of its own reads; that
//! thread stops every vCPU through its runner handle. Nothing blocks the signals, so a
//! vCPU thread may take one: its `run()` then returns `Interrupted`, which the runner
//! ignores. The runner's own kick signal (a real-time one) is left alone. A second signal
//! while the VM stops only says so: the teardown is not cut short (SIGKILL is the way out
//! of a stuck one, and the next start reports the network it left behind).

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use vmkit::runner::VcpuHandle;

/// What the signal thread and the main thread share.
#[derive(Default)]
struct Caught {
    /// The first signal caught.
    signal: Option<i32>,
    /// The vCPUs to stop, once they run.
    vcpus: Vec<VcpuHandle>,
}

/// The catcher of SIGINT and SIGTERM, from [`Interrupts::catch`] to its drop.
pub struct Interrupts {
    caught: Arc<Mutex<Caught>>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

/// The signal's name, for the messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The exit status of a run a signal ended: 128 plus its number, as a shell reports a
/// process the signal killed (130 for SIGINT, 143 for SIGTERM).
pub fn exit_status(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

impl Interrupts {
    /// Catches SIGINT and SIGTERM from now on.
    pub fn catch() -> std::io::Result<Interrupts> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let caught = Arc::new(Mutex::new(Caught::default()));
        let shared = Arc::clone(&caught);
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let mut caught = shared.lock().unwrap_or_else(PoisonError::into_inner);
                    if caught.signal.is_some() {
                        eprintln!("boot_linux: {}: already stopping", name(signal));
                        continue;
                    }
                    eprintln!("boot_linux: {}: stopping the VM", name(signal));
                    caught.signal = Some(signal);
                    stop(&caught.vcpus);
                }
            })?;
        Ok(Interrupts {
            caught,
            handle,
            thread: Some(thread),
        })
    }

    /// From now on a signal stops these vCPUs; if one came already, they stop now.
    pub fn watch(&self, vcpus: &[VcpuHandle]) {
        let mut caught = self.caught.lock().unwrap_or_else(PoisonError::into_inner);
        caught.vcpus = vcpus.to_vec();
        if caught.signal.is_some() {
            stop(&caught.vcpus);
        }
    }

    /// The first signal caught, if any.
    pub fn caught(&self) -> Option<i32> {
        self.caught
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .signal
    }
}

/// Tells every vCPU to stop; one that has ended already needs nothing.
fn stop(vcpus: &[VcpuHandle]) {
    for vcpu in vcpus {
        let _ = vcpu.stop();
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_the_shells() {
        assert_eq!(exit_status(SIGINT), 130);
        assert_eq!(exit_status(SIGTERM), 143);
        assert_eq!(name(SIGTERM), "SIGTERM");
    }
}
