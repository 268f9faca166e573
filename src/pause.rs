//! Pausing and resuming every vCPU of a VM, built on [`KickHandle`]s.
//!
//! Each vCPU thread registers with a [`VcpuPauser`] and calls
//! [`VcpuPauser::park_if_paused`] whenever `run()` returns [`VcpuExit::Kicked`]. Another thread
//! calls [`VcpuPauser::pause`], which kicks every registered vCPU and returns once all of them
//! are parked outside `run()` (so their state can be read consistently, e.g. for a
//! snapshot), and [`VcpuPauser::resume`] to let them go on.
//!
//! ```no_run
//! use vmkit::pause::VcpuPauser;
//! use vmkit::VcpuExit;
//! # fn f(mut vcpu: Box<dyn vmkit::Vcpu>) -> Result<(), vmkit::VcpuError> {
//! let pauser = VcpuPauser::new();
//! let registration = pauser.register(vcpu.kick_handle());
//! let control = pauser.clone();
//! std::thread::spawn(move || {
//!     let _registration = registration; // deregisters when the thread ends
//!     loop {
//!         match vcpu.run().unwrap() {
//!             VcpuExit::Kicked => control.park_if_paused(),
//!             _ => { /* handle the exit */ }
//!         }
//!     }
//! });
//! pauser.pause(); // every vCPU is now outside run()
//! pauser.resume();
//! # Ok(()) }
//! ```
//!
//! [`VcpuExit::Kicked`]: crate::VcpuExit::Kicked

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::vcpu::KickHandle;

#[derive(Debug, Default)]
struct State {
    paused: bool,
    /// Registered vCPUs, by registration id.
    vcpus: BTreeMap<u64, KickHandle>,
    next_id: u64,
    /// How many registered vCPU threads are parked in `park_if_paused`.
    parked: usize,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// Pauses and resumes a set of vCPU threads; cheap to clone (all clones control the same set).
#[derive(Clone, Debug, Default)]
pub struct VcpuPauser {
    shared: Arc<Shared>,
}

/// A vCPU's membership in a [`VcpuPauser`]; dropping it (when the vCPU thread ends) removes
/// the vCPU, so a pause never waits for a thread that is gone.
#[derive(Debug)]
pub struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.vcpus.remove(&self.id);
        self.shared.changed.notify_all();
    }
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every update leaves the state consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VcpuPauser {
    /// A pauser with no vCPUs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a vCPU, by its kick handle. If a pause is in effect, the vCPU is kicked at once.
    pub fn register(&self, kick: KickHandle) -> Registration {
        let mut state = lock(&self.shared.state);
        let id = state.next_id;
        state.next_id += 1;
        if state.paused {
            kick.kick();
        }
        state.vcpus.insert(id, kick);
        Registration {
            shared: Arc::clone(&self.shared),
            id,
        }
    }

    /// Kicks every registered vCPU and returns once each is parked in
    /// [`park_if_paused`](Self::park_if_paused) (or has deregistered).
    pub fn pause(&self) {
        let mut state = lock(&self.shared.state);
        state.paused = true;
        for kick in state.vcpus.values() {
            kick.kick();
        }
        while state.parked < state.vcpus.len() {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Lets parked vCPUs continue.
    pub fn resume(&self) {
        let mut state = lock(&self.shared.state);
        state.paused = false;
        self.shared.changed.notify_all();
    }

    /// Whether a pause is in effect.
    pub fn is_paused(&self) -> bool {
        lock(&self.shared.state).paused
    }

    /// Called by a vCPU thread after `run()` returned `Kicked`: if a pause is in effect, waits
    /// until [`resume`](Self::resume); otherwise returns at once (the kick was for something
    /// else).
    pub fn park_if_paused(&self) {
        let mut state = lock(&self.shared.state);
        if !state.paused {
            return;
        }
        state.parked += 1;
        self.shared.changed.notify_all();
        while state.paused {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.parked -= 1;
    }
}
