//! Running a VM's vCPUs: one thread per vCPU, an exit handler, and commands.
//!
//! Every VMM needs the same loop around [`Vcpu::run`]: a thread per vCPU, exits dispatched to
//! devices, the whole VM stopped when the guest powers off or something fails, and the vCPUs
//! paused outside `run()` to read their state for a snapshot. [`VmRunner`] is that loop.
//!
//! - [`VmRunner::start`] moves each vCPU to a thread of its own. Each thread calls `run()`
//!   and passes every exit to one [`ExitHandler`] (a closure, or `vmkit_bus::Bus`), whose
//!   [`ExitAction`] says whether to go on, halt this vCPU, or stop the VM (power off, reset,
//!   failure).
//! - A [`VcpuHandle`] per vCPU takes commands: [`pause`](VcpuHandle::pause),
//!   [`resume`](VcpuHandle::resume), [`save_state`](VcpuHandle::save_state),
//!   [`restore_state`](VcpuHandle::restore_state), [`with_vcpu`](VcpuHandle::with_vcpu) (any
//!   access to the vCPU, on its thread) and [`stop`](VcpuHandle::stop). A vCPU in `run()` is
//!   kicked out of it to answer, so a command never waits for the guest to exit by itself;
//!   `Kicked` and `Interrupted` exits are the runner's own business.
//! - The [`VmRunner`] commands all vCPUs at once: [`pause_all`](VmRunner::pause_all) returns
//!   once every vCPU is outside `run()`, [`save_all`](VmRunner::save_all) gathers their
//!   [`VcpuState`]s for [`snapshot::save`], so no `Vcpu` is ever
//!   shared between threads; [`join`](VmRunner::join) returns each vCPU's [`VcpuOutcome`] or
//!   [`RunnerError`], and the vCPUs themselves.
//!
//! A vCPU thread whose `run()` fails, whose handler fails or panics stops the whole VM, and
//! its error names it; when the handler fails on an exit that means the guest cannot go on
//! (an internal error of the hypervisor, a failed entry, a triple fault), the error says so
//! in words, with the guest's `rip` and instruction bytes ([`RunnerError::GuestStopped`]); the other vCPUs end as [`VcpuOutcome::Stopped`], so nothing waits for
//! a vCPU that is gone. With [`RunnerOptions::command_timeout`] a command to a vCPU stuck in
//! a handler fails instead of waiting for ever; [`VmRunner::join_timeout`] bounds the join.
//!
//! ```no_run
//! use std::sync::Arc;
//! use vmkit::runner::{self, ExitAction, VcpuOutcome, VmRunner};
//! use vmkit::{VcpuExit, VmConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hypervisor = vmkit::open()?;
//! let config = VmConfig::default().max_vcpus(2);
//! let vm = hypervisor.create_vm(&config)?;
//! // ... map memory, load a guest, set up the vCPUs' registers ...
//! let vcpus = vec![vm.create_vcpu(0)?, vm.create_vcpu(1)?];
//! let msrs = vmkit::snapshot::readable_msrs(vcpus[0].as_ref(), &hypervisor.msr_index_list());
//!
//! // Port 0x3f8 is a console; a write to port 0x501 powers the guest off.
//! let handler = runner::from_fn(|_vcpu, exit| match exit {
//!     VcpuExit::IoOut { port: 0x3f8, data, .. } => {
//!         print!("{}", String::from_utf8_lossy(data));
//!         ExitAction::Continue
//!     }
//!     VcpuExit::IoOut { port: 0x501, .. } => ExitAction::PowerOff,
//!     VcpuExit::IoIn { data, .. } => {
//!         data.fill(0xff);
//!         ExitAction::Continue
//!     }
//!     other => ExitAction::unhandled(other),
//! });
//! let running = VmRunner::start(vcpus, handler)?;
//!
//! // Snapshot the running VM: every vCPU stops outside run(), its state is read on its
//! // own thread, and the VM goes on.
//! let features = vmkit::snapshot::Features::for_vm(&config, hypervisor.capabilities());
//! let states = running.save_all(&msrs, features)?;
//! vmkit::snapshot::save(
//!     std::path::Path::new("/tmp/snap"),
//!     hypervisor.as_ref(),
//!     &config,
//!     vm.as_ref(),
//!     &states,
//!     |_devices| Ok(()),
//! )?;
//! running.resume_all()?;
//!
//! // Wait for the guest to power off.
//! for finished in running.join() {
//!     match finished.outcome? {
//!         VcpuOutcome::PowerOff => println!("vCPU {} powered the guest off", finished.id),
//!         other => println!("vCPU {}: {other:?}", finished.id),
//!     }
//! }
//! # Ok(()) }
//! ```

mod error;
mod handler;
mod stop;
mod thread;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use error::RunnerError;
pub use handler::{from_fn, ExitAction, ExitHandler, UnhandledExit};
pub use stop::{GuestStop, StopReason};

#[cfg(target_arch = "x86_64")]
use crate::snapshot::{self, Features, VcpuState};
use crate::vcpu::{KickHandle, Vcpu};

/// How a vCPU's thread ended, when it ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VcpuOutcome {
    /// Stopped: by [`VcpuHandle::stop`] or [`VmRunner::stop_all`], or because another vCPU
    /// stopped the VM (its own outcome says why).
    Stopped,
    /// The handler halted this vCPU ([`ExitAction::Halt`]) and later the VM stopped.
    Halted,
    /// This vCPU's handler reported that the guest powered off ([`ExitAction::PowerOff`]).
    PowerOff,
    /// This vCPU's handler reported that the guest asked for a reset ([`ExitAction::Reset`]).
    Reset,
}

/// One vCPU after [`VmRunner::join`]: how its thread ended, and the vCPU itself.
pub struct Finished {
    /// The vCPU's id.
    pub id: u32,
    /// How its thread ended.
    pub outcome: Result<VcpuOutcome, RunnerError>,
    /// The vCPU, for reading its state afterwards; `None` if its thread panicked.
    pub vcpu: Option<Box<dyn Vcpu>>,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("id", &self.id)
            .field("outcome", &self.outcome)
            .field("vcpu", &self.vcpu.as_ref().map(|_| "Box<dyn Vcpu>"))
            .finish()
    }
}

/// Settings of a [`VmRunner`].
///
/// ```
/// use std::time::Duration;
/// let options = vmkit::runner::RunnerOptions::default()
///     .command_timeout(Duration::from_secs(10))
///     .start_paused(true);
/// # let _ = options;
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RunnerOptions {
    /// How long a command waits for the vCPU's answer; `None` (the default) waits until the
    /// vCPU answers or its thread ends. A liveness bound: a vCPU only fails to answer while
    /// its exit handler is stuck.
    pub command_timeout: Option<Duration>,
    /// Start every vCPU paused: nothing runs until [`VmRunner::resume_all`].
    pub start_paused: bool,
    /// A seccomp filter each vCPU thread installs on itself before it answers a command or
    /// runs its vCPU; `None` (the default) confines nothing. Build it from the backend's rules,
    /// [`Hypervisor::vcpu_seccomp_rules`](crate::Hypervisor::vcpu_seccomp_rules) (or
    /// [`seccomp::vcpu_rules`](crate::seccomp::vcpu_rules)), extended with whatever the exit
    /// handler does beyond what vmkit's crates do (see [`crate::seccomp`]). A thread that
    /// cannot install it ends with [`RunnerError::Seccomp`] and stops the VM; a forbidden call
    /// later ends the process with a line naming the thread and the call.
    #[cfg(feature = "seccomp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "seccomp")))]
    pub seccomp: Option<crate::seccomp::Filter>,
}

impl RunnerOptions {
    /// Sets [`command_timeout`](Self::command_timeout).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = Some(timeout);
        self
    }

    /// Sets [`start_paused`](Self::start_paused).
    pub fn start_paused(mut self, paused: bool) -> Self {
        self.start_paused = paused;
        self
    }

    /// Sets [`seccomp`](Self::seccomp).
    ///
    /// ```no_run
    /// # fn f(hypervisor: &dyn vmkit::Hypervisor) -> Result<(), vmkit::seccomp::SeccompError> {
    /// let mut rules = hypervisor.vcpu_seccomp_rules();
    /// // This VMM's exit handler also reads a file it opened before the run.
    /// rules.allow(libc::SYS_pread64);
    /// let options = vmkit::runner::RunnerOptions::default().seccomp(rules.compile()?);
    /// # let _ = options; Ok(()) }
    /// ```
    #[cfg(feature = "seccomp")]
    #[cfg_attr(docsrs, doc(cfg(feature = "seccomp")))]
    pub fn seccomp(mut self, filter: crate::seccomp::Filter) -> Self {
        self.seccomp = Some(filter);
        self
    }
}

/// Work a command does with the vCPU, on its thread (it sends its own answer).
type Access = Box<dyn FnOnce(&mut dyn Vcpu) + Send>;

/// A command to a vCPU thread.
enum Command {
    Pause(Sender<()>),
    Resume(Sender<()>),
    With(Access),
    Stop,
}

/// Where a vCPU thread stands, for [`VmRunner::join_timeout`] and the all-halted rule.
#[derive(Debug, Default)]
struct Counts {
    /// Threads that have ended.
    ended: usize,
    /// Threads that have halted or ended.
    idle: usize,
    /// The VM is stopping.
    stopping: bool,
}

/// What the runner and every vCPU thread share.
struct Shared {
    handler: Arc<dyn ExitHandler>,
    /// Every vCPU's command queue and kick handle, for stopping them all from any thread.
    controls: Vec<(Sender<Command>, KickHandle)>,
    counts: Mutex<Counts>,
    changed: Condvar,
}

impl Shared {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        // Every update leaves the counts consistent, so a poisoned lock is still usable.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells every vCPU thread to stop; a thread that is gone ignores it.
    fn stop_all(&self) {
        self.counts().stopping = true;
        for (commands, kick) in &self.controls {
            let _ = commands.send(Command::Stop);
            kick.kick();
        }
        self.changed.notify_all();
    }

    /// A vCPU halted (or ended: `ended`); once every vCPU is idle, the VM stops.
    fn went_idle(&self, ended: bool) {
        let all_idle = {
            let mut counts = self.counts();
            counts.idle += 1;
            if ended {
                counts.ended += 1;
            }
            counts.idle == self.controls.len() && !counts.stopping
        };
        self.changed.notify_all();
        if all_idle {
            self.stop_all();
        }
    }
}

/// Controls one vCPU's thread: commands go to the thread, which answers them outside `run()`
/// (kicking the vCPU out of `run()` first). Cheap to clone.
///
/// ```no_run
/// # fn f(running: &vmkit::runner::VmRunner) -> Result<(), vmkit::runner::RunnerError> {
/// let vcpu = &running.vcpus()[0];
/// vcpu.pause()?;
/// let rip = vcpu.with_vcpu(|vcpu| vcpu.regs().map(|regs| regs.rip))?;
/// vcpu.resume()?;
/// # let _ = rip; Ok(()) }
/// ```
#[derive(Clone)]
pub struct VcpuHandle {
    id: u32,
    commands: Sender<Command>,
    kick: KickHandle,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for VcpuHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuHandle")
            .field("id", &self.id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl VcpuHandle {
    /// The vCPU's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A kick handle of the vCPU (a kick alone makes the runner look at its commands).
    pub fn kick_handle(&self) -> &KickHandle {
        &self.kick
    }

    /// Queues `command` and kicks the vCPU out of `run()` so that it reads it.
    fn send(&self, command: Command, name: &'static str) -> Result<(), RunnerError> {
        self.commands
            .send(command)
            .map_err(|_| RunnerError::Ended {
                vcpu: self.id,
                command: name,
            })?;
        self.kick.kick();
        Ok(())
    }

    /// Waits for the answer to a command sent with `send`.
    fn answer<T>(&self, answer: &Receiver<T>, name: &'static str) -> Result<T, RunnerError> {
        let ended = RunnerError::Ended {
            vcpu: self.id,
            command: name,
        };
        match self.timeout {
            None => answer.recv().map_err(|_| ended),
            Some(timeout) => answer.recv_timeout(timeout).map_err(|err| match err {
                RecvTimeoutError::Timeout => RunnerError::Timeout {
                    vcpu: self.id,
                    command: name,
                    timeout,
                },
                RecvTimeoutError::Disconnected => ended,
            }),
        }
    }

    fn request_pause(&self) -> Result<Receiver<()>, RunnerError> {
        let (done, answer) = mpsc::channel();
        self.send(Command::Pause(done), "pause")?;
        Ok(answer)
    }

    fn request_resume(&self) -> Result<Receiver<()>, RunnerError> {
        let (done, answer) = mpsc::channel();
        // Kicked too: a vCPU that is not paused answers only between runs.
        self.send(Command::Resume(done), "resume")?;
        Ok(answer)
    }

    /// Pauses the vCPU: returns once it is outside `run()`, where it stays (answering
    /// commands) until [`resume`](Self::resume). Pausing a paused or halted vCPU is a no-op.
    pub fn pause(&self) -> Result<(), RunnerError> {
        let answer = self.request_pause()?;
        self.answer(&answer, "pause")
    }

    /// Lets a paused vCPU run again (a halted one stays halted).
    pub fn resume(&self) -> Result<(), RunnerError> {
        let answer = self.request_resume()?;
        self.answer(&answer, "resume")
    }

    /// Runs `f` with the vCPU on its thread, outside `run()`, and returns what it returns.
    /// The vCPU goes on running afterwards unless it is paused. A panic in `f` ends the
    /// vCPU's thread like a panicking exit handler (the VM stops).
    pub fn with_vcpu<R, F>(&self, f: F) -> Result<R, RunnerError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Vcpu) -> R + Send + 'static,
    {
        self.command("access", f)
    }

    fn command<R, F>(&self, name: &'static str, f: F) -> Result<R, RunnerError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Vcpu) -> R + Send + 'static,
    {
        let answer = self.request(name, f)?;
        self.answer(&answer, name)
    }

    /// Queues `f` for the vCPU's thread; its result comes on the returned receiver.
    fn request<R, F>(&self, name: &'static str, f: F) -> Result<Receiver<R>, RunnerError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Vcpu) -> R + Send + 'static,
    {
        let (done, answer) = mpsc::channel();
        let run = move |vcpu: &mut dyn Vcpu| {
            let _ = done.send(f(vcpu));
        };
        self.send(Command::With(Box::new(run)), name)?;
        Ok(answer)
    }

    /// Queues a state capture ([`save_state`](Self::save_state)) without waiting for it.
    #[cfg(target_arch = "x86_64")]
    fn request_save(
        &self,
        msrs: &[u32],
        features: Features,
    ) -> Result<Receiver<Result<VcpuState, crate::vcpu::VcpuError>>, RunnerError> {
        let msrs = msrs.to_vec();
        self.request("save state", move |vcpu| {
            snapshot::save_vcpu(vcpu, &msrs, features)
        })
    }

    /// Captures the vCPU's state with [`snapshot::save_vcpu`] (which first completes the
    /// access its last exit left pending). For a consistent snapshot of a VM, pause every
    /// vCPU first, or use [`VmRunner::save_all`].
    #[cfg(target_arch = "x86_64")]
    pub fn save_state(&self, msrs: &[u32], features: Features) -> Result<VcpuState, RunnerError> {
        let name = "save state";
        let answer = self.request_save(msrs, features)?;
        self.answer(&answer, name)?
            .map_err(|source| RunnerError::Command {
                vcpu: self.id,
                command: name,
                source,
            })
    }

    /// Loads a saved state into the vCPU with [`snapshot::restore_vcpu`]; pause it first.
    #[cfg(target_arch = "x86_64")]
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), RunnerError> {
        let state = state.clone();
        let name = "restore state";
        self.command(name, move |vcpu| snapshot::restore_vcpu(vcpu, &state))?
            .map_err(|source| RunnerError::Command {
                vcpu: self.id,
                command: name,
                source,
            })
    }

    /// Ends this vCPU's thread (outcome [`VcpuOutcome::Stopped`]); the other vCPUs go on.
    /// Returns once the stop is queued: [`VmRunner::join`] waits for the thread.
    pub fn stop(&self) -> Result<(), RunnerError> {
        self.send(Command::Stop, "stop")
    }
}

/// A VM's vCPUs, each running on its own thread; see the [module docs](self).
pub struct VmRunner {
    handles: Vec<VcpuHandle>,
    threads: Vec<(u32, JoinHandle<thread::Ended>)>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VmRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmRunner")
            .field("vcpus", &self.handles)
            .finish_non_exhaustive()
    }
}

impl VmRunner {
    /// Starts one thread per vCPU (named `vcpu<id>`), each running its vCPU and passing its
    /// exits to `handler`.
    pub fn start(
        vcpus: Vec<Box<dyn Vcpu>>,
        handler: Arc<dyn ExitHandler>,
    ) -> Result<VmRunner, RunnerError> {
        Self::start_with(vcpus, handler, RunnerOptions::default())
    }

    /// [`start`](Self::start) with options.
    pub fn start_with(
        vcpus: Vec<Box<dyn Vcpu>>,
        handler: Arc<dyn ExitHandler>,
        options: RunnerOptions,
    ) -> Result<VmRunner, RunnerError> {
        let (handles, queues): (Vec<_>, Vec<_>) = vcpus
            .iter()
            .map(|vcpu| {
                let (commands, queue) = mpsc::channel();
                let handle = VcpuHandle {
                    id: vcpu.id(),
                    commands,
                    kick: vcpu.kick_handle(),
                    timeout: options.command_timeout,
                };
                (handle, queue)
            })
            .unzip();
        let shared = Arc::new(Shared {
            handler,
            controls: handles
                .iter()
                .map(|h| (h.commands.clone(), h.kick.clone()))
                .collect(),
            counts: Mutex::default(),
            changed: Condvar::new(),
        });
        let mut runner = VmRunner {
            handles,
            threads: Vec::new(),
            shared,
        };
        for (vcpu, queue) in vcpus.into_iter().zip(queues) {
            let id = vcpu.id();
            let shared = Arc::clone(&runner.shared);
            let setup = thread::Setup {
                paused: options.start_paused,
                #[cfg(feature = "seccomp")]
                seccomp: options.seccomp.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || thread::run(vcpu, queue, shared, setup));
            match spawned {
                Ok(thread) => runner.threads.push((id, thread)),
                Err(source) => {
                    // Dropping the runner stops the threads already started.
                    return Err(RunnerError::Spawn { vcpu: id, source });
                }
            }
        }
        Ok(runner)
    }

    /// The vCPUs' handles, in the order the vCPUs were given.
    pub fn vcpus(&self) -> &[VcpuHandle] {
        &self.handles
    }

    /// The handle of the vCPU with id `id`.
    pub fn vcpu(&self, id: u32) -> Option<&VcpuHandle> {
        self.handles.iter().find(|h| h.id == id)
    }

    /// Pauses every vCPU: returns once all of them are outside `run()`. The pause requests go
    /// out to all vCPUs before the first answer is awaited.
    pub fn pause_all(&self) -> Result<(), RunnerError> {
        self.to_all("pause", VcpuHandle::request_pause)
    }

    /// Lets every paused vCPU run again.
    pub fn resume_all(&self) -> Result<(), RunnerError> {
        self.to_all("resume", VcpuHandle::request_resume)
    }

    /// Sends a command to every vCPU, then awaits every answer: the vCPUs act on it at once
    /// rather than one after the other.
    fn to_all(
        &self,
        name: &'static str,
        request: fn(&VcpuHandle) -> Result<Receiver<()>, RunnerError>,
    ) -> Result<(), RunnerError> {
        let answers = self
            .handles
            .iter()
            .map(request)
            .collect::<Result<Vec<_>, _>>()?;
        for (handle, answer) in self.handles.iter().zip(answers) {
            handle.answer(&answer, name)?;
        }
        Ok(())
    }

    /// Pauses every vCPU ([`pause_all`](Self::pause_all)) and captures each one's state on its
    /// own thread ([`VcpuHandle::save_state`]), in the order of [`vcpus`](Self::vcpus), for
    /// [`snapshot::save`]. The vCPUs stay paused: [`resume_all`](Self::resume_all) (or stop)
    /// when the rest of the snapshot (devices, memory) is written.
    #[cfg(target_arch = "x86_64")]
    pub fn save_all(
        &self,
        msrs: &[u32],
        features: Features,
    ) -> Result<Vec<VcpuState>, RunnerError> {
        self.pause_all()?;
        self.save_states(msrs, features)
    }

    /// Captures every vCPU's state on its own thread, as [`VcpuHandle::save_state`] does, in
    /// the order of [`vcpus`](Self::vcpus); pause them first. Every capture is queued before
    /// any answer is awaited, so the vCPUs save at once rather than one round trip after the
    /// other.
    #[cfg(target_arch = "x86_64")]
    pub fn save_states(
        &self,
        msrs: &[u32],
        features: Features,
    ) -> Result<Vec<VcpuState>, RunnerError> {
        let name = "save state";
        let answers = self
            .handles
            .iter()
            .map(|h| h.request_save(msrs, features))
            .collect::<Result<Vec<_>, _>>()?;
        self.handles
            .iter()
            .zip(answers)
            .map(|(handle, answer)| {
                handle
                    .answer(&answer, name)?
                    .map_err(|source| RunnerError::Command {
                        vcpu: handle.id,
                        command: name,
                        source,
                    })
            })
            .collect()
    }

    /// Tells every vCPU to stop (outcome [`VcpuOutcome::Stopped`] for those still running);
    /// returns at once: [`join`](Self::join) waits for them.
    pub fn stop_all(&self) {
        self.shared.stop_all();
    }

    /// Whether the VM is stopping: [`stop_all`](Self::stop_all) was called, a vCPU's handler
    /// asked for power off or reset, a vCPU failed, or every vCPU halted.
    pub fn is_stopping(&self) -> bool {
        self.shared.counts().stopping
    }

    /// Waits up to `timeout` for the VM to start stopping (see
    /// [`is_stopping`](Self::is_stopping)); true if it did.
    pub fn wait_stopping(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut counts = self.shared.counts();
        while !counts.stopping {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            counts = self
                .shared
                .changed
                .wait_timeout(counts, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Waits for every vCPU thread to end (the guest powers off or resets, a vCPU fails,
    /// every vCPU halts, or [`stop_all`](Self::stop_all)), and returns each vCPU's outcome,
    /// in the order of [`vcpus`](Self::vcpus).
    pub fn join(mut self) -> Vec<Finished> {
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|(id, thread)| thread::finish(id, thread.join()))
            .collect()
    }

    /// [`join`](Self::join), giving up after `timeout`: then the VM is told to stop, and the
    /// error names the vCPUs whose threads had not ended (they are left to end on their own).
    pub fn join_timeout(self, timeout: Duration) -> Result<Vec<Finished>, RunnerError> {
        let deadline = Instant::now() + timeout;
        let all_ended = {
            let mut counts = self.shared.counts();
            while counts.ended < self.threads.len() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                counts = self
                    .shared
                    .changed
                    .wait_timeout(counts, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            counts.ended == self.threads.len()
        };
        if all_ended {
            // Each thread counts itself ended as its last act: joining takes no longer.
            return Ok(self.join());
        }
        let running: Vec<u32> = self
            .threads
            .iter()
            .filter(|(_, thread)| !thread.is_finished())
            .map(|(id, _)| *id)
            .collect();
        if running.is_empty() {
            return Ok(self.join());
        }
        self.shared.stop_all();
        Err(RunnerError::JoinTimeout {
            vcpus: running,
            timeout,
        })
    }
}

impl Drop for VmRunner {
    /// A runner dropped without [`join`](VmRunner::join) stops its vCPUs and detaches their
    /// threads, which end on their own.
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shared.stop_all();
        }
    }
}
