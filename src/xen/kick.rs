//! Kicking a Xen vCPU out of `run()`.
//!
//! On Xen the guest runs on its own (Xen-scheduled) CPU while `run()` waits in `ppoll` on the
//! vCPU's event channel; a kick sets a pending flag and writes an eventfd that the same
//! `ppoll` watches, so `run()` wakes at once, takes the vCPU out of the guest (see
//! `XenVm::park`) and returns [`VcpuExit::Kicked`](crate::VcpuExit::Kicked). If the vCPU
//! is just sending an I/O request, that request is served first: when it needs the VMM it
//! is this `run()`'s exit and the kick ends the next `run()`, as on KVM. A kick that
//! lands while the vCPU is outside `run()` stays pending for the next call. Kicking is an
//! atomic store and a `write(2)`: async-signal-safe.
//!
//! Only the flag decides what `run()` reports, so a kick is always reported as `Kicked`: the
//! flag is set before the eventfd is written, and the wait drains the eventfd whenever it
//! wakes on it, so a write that lands after its kick was reported only costs one wake-up.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::vcpu::Kick;

/// What a vCPU and its kick handles share.
#[derive(Debug)]
pub(crate) struct XenKick {
    pending: AtomicBool,
    wake: EventFd,
}

impl XenKick {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(XenKick {
            pending: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Consumes a pending kick; true if there was one.
    pub(crate) fn take(&self) -> bool {
        self.pending.load(Ordering::SeqCst) && self.pending.swap(false, Ordering::SeqCst)
    }

    /// Puts a consumed kick back, for the next `run()`.
    pub(crate) fn restore(&self) {
        self.pending.store(true, Ordering::SeqCst);
    }

    /// Empties the eventfd after it woke a wait (the flag, not the counter, is the truth).
    pub(crate) fn drain(&self) {
        let _ = self.wake.read();
    }

    /// Wakes a waiting `run()` without a kick: it looks at what else it has to do (a
    /// split irqchip's EOI to watch for, `eoi.rs`) and waits on.
    pub(crate) fn wake(&self) {
        let _ = self.wake.write(1);
    }

    /// The eventfd a wait watches.
    pub(crate) fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

impl Kick for XenKick {
    fn kick(&self) {
        self.pending.store(true, Ordering::SeqCst);
        // Only wakes a waiting run(); if the counter is saturated a wake is pending anyway.
        let _ = self.wake.write(1);
    }
}
