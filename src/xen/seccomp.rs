//! The system calls of a Xen vCPU thread and of the VMM's main thread, for
//! [`crate::seccomp`].
//!
//! vmkit's Xen backend reaches Xen through its C libraries, so the lists hold what those
//! issue on the paths vmkit takes from these threads (audited in `vcpu.rs`, `kick.rs`,
//! `ioreq.rs`, `control.rs` and Xen 4.17's `tools/libs`): libxenctrl's domctls and vCPU
//! context calls are `IOCTL_PRIVCMD_HYPERCALL` on `/dev/xen/privcmd`, with hypercall buffers
//! that libxencall maps from `/dev/xen/hypercall` (or allocates and marks `MADV_DONTFORK`);
//! libxendevicemodel's MSI injection is `IOCTL_PRIVCMD_DM_OP`; the ioreq event channel is
//! `IOCTL_EVTCHN_NOTIFY`, and reads and writes of `/dev/xen/evtchn`. These lists have not yet
//! run under a filter on a Xen host; a missing call is reported by name (see
//! [`vmkit_seccomp`]).

use vmkit_seccomp::Rules;
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE};

/// `IOCTL_PRIVCMD_HYPERCALL`: `_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))`.
fn privcmd_hypercall() -> u64 {
    ioctl_expr(_IOC_NONE, u32::from(b'P'), 0, 48)
}

/// `IOCTL_PRIVCMD_DM_OP`: `_IOC(_IOC_NONE, 'P', 5, sizeof(struct privcmd_dm_op))`.
fn privcmd_dm_op() -> u64 {
    ioctl_expr(_IOC_NONE, u32::from(b'P'), 5, 16)
}

/// `IOCTL_EVTCHN_NOTIFY`: `_IOC(_IOC_NONE, 'E', 4, sizeof(struct ioctl_evtchn_notify))`.
fn evtchn_notify() -> u64 {
    ioctl_expr(_IOC_NONE, u32::from(b'E'), 4, 4)
}

/// `IOCTL_EVTCHN_UNBIND`: `_IOC(_IOC_NONE, 'E', 3, sizeof(struct ioctl_evtchn_unbind))`.
fn evtchn_unbind() -> u64 {
    ioctl_expr(_IOC_NONE, u32::from(b'E'), 3, 4)
}

/// libxencall's hypercall buffers without `/dev/xen/hypercall`.
fn hypercall_buffers() -> Rules {
    let mut rules = Rules::new();
    rules.allow_args(
        libc::SYS_madvise,
        2,
        &[libc::MADV_DONTFORK as u64, libc::MADV_DOFORK as u64],
    );
    rules
}

/// What a vCPU thread adds to the runner's rules on Xen: waiting on the ioreq event channel
/// and the kick eventfd (`ppoll`, `read`), notifying the channel, the domctls of `run()` and
/// of the state accessors (pause, unpause, vCPU info and context, HVM context), and MSI
/// injection by an exit handler.
pub(crate) fn vcpu_rules() -> Rules {
    let mut rules = hypercall_buffers();
    rules
        .allow_all(&[libc::SYS_ppoll, libc::SYS_read])
        .allow_ioctls(&[privcmd_hypercall(), privcmd_dm_op(), evtchn_notify()]);
    rules
}

/// What the VMM's main thread adds on Xen while the VM runs: kicking vCPUs (the kick
/// eventfd is a `write`; a pause is a domctl), MSI injection, and the hypercalls of the dirty
/// log and of tearing the domain down (the ioreq server's destruction, unmapping, destroying
/// the domain, unbinding the event channels).
pub(crate) fn vmm_rules() -> Rules {
    let mut rules = hypercall_buffers();
    rules.allow_ioctls(&[privcmd_hypercall(), privcmd_dm_op(), evtchn_unbind()]);
    // Unregistering an irqfd takes it out of the irqfd thread's epoll set (`irq.rs`).
    rules.allow_all(&[libc::SYS_epoll_ctl]);
    rules
}

/// Raising an interrupt through the VM (`set_irq_line`, `signal_msi`) from any thread: a
/// device-model operation (libxendevicemodel) with libxencall's hypercall buffers; with a
/// split irqchip a level-triggered MSI also pauses the domain and reads the local APICs
/// (domctls, `eoi.rs`).
pub(crate) fn interrupt_rules() -> Rules {
    let mut rules = hypercall_buffers();
    rules.allow_ioctls(&[privcmd_dm_op(), privcmd_hypercall()]);
    rules
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_match_xen_headers() {
        assert_eq!(super::privcmd_hypercall(), 0x0030_5000);
        assert_eq!(super::privcmd_dm_op(), 0x0010_5005);
        assert_eq!(super::evtchn_notify(), 0x0004_4504);
        assert_eq!(super::evtchn_unbind(), 0x0004_4503);
    }
}
