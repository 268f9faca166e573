//! Kicking a KVM vCPU out of `KVM_RUN` from any thread or a signal handler, without lost kicks.
//!
//! A kick sets a pending flag, sets `kvm_run.immediate_exit`, and sends the vCPU's thread the
//! kick signal ([`kick_signal`]), whose handler does nothing: the signal only makes a running
//! `KVM_RUN` return `EINTR`. `immediate_exit` covers a kick that lands after the vCPU thread
//! checked the pending flag but before it entered the guest: KVM then returns at once. The
//! pending flag covers a kick that lands while the vCPU is out of `KVM_RUN` for another exit:
//! the next `run()` returns [`VcpuExit::Kicked`](crate::VcpuExit::Kicked) without entering.
//! Every operation on the kicking side is an atomic memory access or a `tgkill` system call,
//! so [`Kick::kick`] is async-signal-safe.
//!
//! A kick is three steps (flag, `immediate_exit`, signal) that the vCPU thread can observe one
//! at a time. If the vCPU consumed the flag between the kicker's first and last step, the
//! later steps would outlive the kick they belong to: a stale `immediate_exit` or a late
//! signal would end the *next* `KVM_RUN` with `EINTR` and no kick pending, which `run()`
//! would report as [`VcpuExit::Interrupted`](crate::VcpuExit::Interrupted) for a kick the
//! caller already saw as `Kicked` (in about one pause in forty on a busy host). So every
//! kick counts itself in `in_flight` for all three steps, and consuming a kick waits until
//! no kick is in flight, makes one system call (on whose return the kernel delivers a kick
//! signal already sent to this thread), and only then re-arms `immediate_exit`. After a
//! consumed kick, nothing of it or of any earlier kick remains to end a later `KVM_RUN`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use std::sync::Once;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::vcpu::Kick;

/// The real-time signal vmkit sends to kick a vCPU thread: `SIGRTMIN() + 2`.
///
/// vmkit installs a handler that does nothing the first time a KVM vCPU is created; a VMM must
/// not block this signal on vCPU threads, nor use it for anything else.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN() + 2
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick signal's handler once per process.
pub(crate) fn install_signal_handler() -> std::io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), ignore_kick)
            .map_err(|err| std::io::Error::from_raw_os_error(err.errno()));
    });
    result
}

thread_local! {
    /// This thread's kernel thread id, cached: `gettid` on every `run()` would cost a syscall.
    static THREAD_ID: Cell<libc::pid_t> = const { Cell::new(0) };
}

fn current_thread_id() -> libc::pid_t {
    THREAD_ID.with(|id| {
        if id.get() == 0 {
            // SAFETY: gettid has no preconditions.
            id.set(unsafe { libc::gettid() });
        }
        id.get()
    })
}

/// What a vCPU and its kick handles share.
#[derive(Debug)]
pub(crate) struct KickState {
    pending: AtomicBool,
    /// `kvm_run.immediate_exit`, or null once the vCPU (and its kvm_run mapping) is gone.
    immediate_exit: AtomicPtr<u8>,
    /// Kicks between their first and last step (flag, `immediate_exit`, signal). The vCPU
    /// waits for zero before unmapping kvm_run, and before re-arming after a consumed kick.
    in_flight: AtomicUsize,
    /// Kernel thread id of the thread that last ran the vCPU (0: never ran).
    thread: AtomicI32,
}

impl KickState {
    pub(crate) fn new(immediate_exit: *mut u8) -> Self {
        KickState {
            pending: AtomicBool::new(false),
            immediate_exit: AtomicPtr::new(immediate_exit),
            in_flight: AtomicUsize::new(0),
            thread: AtomicI32::new(0),
        }
    }

    fn immediate_exit(&self) -> Option<&AtomicU8> {
        let ptr = self.immediate_exit.load(Ordering::SeqCst);
        // SAFETY: non-null means the vCPU's kvm_run mapping is live, and it stays live while
        // `in_flight` is non-zero (see `detach`); the byte is only accessed atomically.
        (!ptr.is_null()).then(|| unsafe { AtomicU8::from_ptr(ptr) })
    }

    /// Called by `run()` before entering the guest: records the thread to signal, and consumes
    /// a pending kick. Returns true if the vCPU was kicked and must not enter the guest.
    pub(crate) fn before_run(&self) -> bool {
        let tid = current_thread_id();
        if self.thread.load(Ordering::Relaxed) != tid {
            self.thread.store(tid, Ordering::SeqCst);
        }
        self.consume()
    }

    /// Consumes a pending kick, if any, and re-arms `immediate_exit`. Called on the vCPU's
    /// thread only.
    pub(crate) fn consume(&self) -> bool {
        if !self.pending.load(Ordering::SeqCst) || !self.pending.swap(false, Ordering::SeqCst) {
            return false;
        }
        // The kick just consumed may still be between its steps: wait until it (and any other
        // kick) has stored `immediate_exit` and sent its signal, so neither can end a later
        // KVM_RUN. A kicker is never blocked mid-kick by this thread (a kick never takes a
        // lock), so this wait ends; `yield_now` lets a preempted kicker run.
        while self.in_flight.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        // The signal of a finished kick is queued for this thread, but its delivery may still
        // be on the way (an IPI to this CPU). The kernel delivers pending signals whenever a
        // system call returns, so one cheap system call here takes it before KVM_RUN can see
        // it. Its result is of no interest.
        // SAFETY: getppid has no preconditions and touches no memory of ours.
        unsafe { libc::getppid() };
        // A kick arriving from here on sets `pending` before `immediate_exit` and its signal,
        // so clearing `immediate_exit` now cannot lose it: the next `run()` sees `pending`.
        if let Some(flag) = self.immediate_exit() {
            flag.store(0, Ordering::SeqCst);
        }
        true
    }

    /// Runs `enter` (a `KVM_RUN`) with `immediate_exit` set, so that KVM finishes what the
    /// previous exit left pending and returns without entering the guest; then re-arms
    /// `immediate_exit` for kicks. A kick landing meanwhile keeps `pending`, so the next
    /// `run()` still reports it.
    pub(crate) fn with_immediate_exit<T>(&self, enter: impl FnOnce() -> T) -> T {
        if let Some(flag) = self.immediate_exit() {
            flag.store(1, Ordering::SeqCst);
        }
        let result = enter();
        if !self.pending.load(Ordering::SeqCst) {
            if let Some(flag) = self.immediate_exit() {
                flag.store(0, Ordering::SeqCst);
            }
        }
        result
    }

    /// Makes later kicks leave the vCPU's memory alone; returns once no kick touches it.
    pub(crate) fn detach(&self) {
        self.immediate_exit
            .store(std::ptr::null_mut(), Ordering::SeqCst);
        while self.in_flight.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
    }
}

impl Kick for KickState {
    fn kick(&self) {
        // In flight from before the flag is set until the signal is sent: see the module docs.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.pending.store(true, Ordering::SeqCst);
        if let Some(flag) = self.immediate_exit() {
            flag.store(1, Ordering::SeqCst);
        }
        let tid = self.thread.load(Ordering::SeqCst);
        if tid != 0 {
            // tgkill (not pthread_kill) because the thread may have exited: a dead thread id
            // gives ESRCH, a reused one (in this process only) a harmless no-op signal.
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::getpid() };
            // SAFETY: tgkill has no memory-safety preconditions.
            unsafe {
                libc::syscall(libc::SYS_tgkill, pid, tid, kick_signal());
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
