//! The system calls of a KVM vCPU thread and of the VMM's main thread, for
//! [`crate::seccomp`].
//!
//! The ioctl numbers are those vmkit's KVM backend issues (audited in `vcpu.rs`, `kick.rs`,
//! `irq.rs`, `dirty.rs`, `vm.rs`); they are encoded here from kvm-bindings' structures, as
//! kvm-ioctls does, because kvm-ioctls keeps its numbers private.

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clock_data, kvm_cpuid2, kvm_dirty_log, kvm_fpu, kvm_guest_debug,
    kvm_irq_level, kvm_irq_routing, kvm_lapic_state, kvm_mp_state, kvm_msi, kvm_msrs, kvm_regs,
    kvm_sregs, kvm_translation, kvm_vcpu_events, kvm_xcrs, kvm_xsave, KVMIO,
};
use vmkit_seccomp::Rules;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_irq_level);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
ioctl_iow_nr!(KVM_SET_GUEST_DEBUG, KVMIO, 0x9b, kvm_guest_debug);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_iow_nr!(KVM_SET_XSAVE, KVMIO, 0xa5, kvm_xsave);
ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);
ioctl_ior_nr!(KVM_GET_XSAVE2, KVMIO, 0xcf, kvm_xsave);

/// What a vCPU thread adds to the runner's rules on KVM: `KVM_RUN`; every register and
/// state ioctl of the [`Vcpu`](crate::Vcpu) trait, which the runner's commands (pause and
/// save, restore, `with_vcpu`) and [`GuestStop`](crate::runner::GuestStop) (`KVM_TRANSLATE`
/// for the instruction bytes) issue on this thread; `KVM_CHECK_EXTENSION` (the xsave buffer's
/// size); `KVM_IRQ_LINE` and `KVM_SIGNAL_MSI`, for an exit handler that raises an interrupt
/// itself, and `KVM_SET_GSI_ROUTING`, for a split irqchip's userspace IOAPIC, which reroutes
/// its GSIs when the guest reprograms it; and the kick: `tgkill` with the kick signal (a vCPU that stops the VM kicks the
/// others) and `getppid` (the one call that lets a pending kick signal land).
pub(crate) fn vcpu_rules() -> Rules {
    let mut rules = Rules::new();
    rules
        .allow_ioctls(&[
            KVM_RUN(),
            KVM_GET_REGS(),
            KVM_SET_REGS(),
            KVM_GET_SREGS(),
            KVM_SET_SREGS(),
            KVM_TRANSLATE(),
            KVM_GET_MSRS(),
            KVM_SET_MSRS(),
            KVM_GET_FPU(),
            KVM_SET_FPU(),
            KVM_GET_LAPIC(),
            KVM_SET_LAPIC(),
            KVM_GET_CPUID2(),
            KVM_SET_CPUID2(),
            KVM_GET_MP_STATE(),
            KVM_SET_MP_STATE(),
            KVM_SET_GUEST_DEBUG(),
            KVM_GET_VCPU_EVENTS(),
            KVM_SET_VCPU_EVENTS(),
            KVM_GET_XSAVE(),
            KVM_GET_XSAVE2(),
            KVM_SET_XSAVE(),
            KVM_GET_XCRS(),
            KVM_SET_XCRS(),
            KVM_CHECK_EXTENSION(),
            KVM_IRQ_LINE(),
            KVM_SIGNAL_MSI(),
            KVM_SET_GSI_ROUTING(),
        ])
        .allow(libc::SYS_getppid);
    rules.extend(&kick_rules());
    rules
}

/// Kicking a vCPU: `tgkill` with the kick signal only.
fn kick_rules() -> Rules {
    let mut rules = Rules::new();
    rules.allow_args(libc::SYS_tgkill, 2, &[super::kick::kick_signal() as u64]);
    rules
}

/// What the VMM's main thread adds on KVM while the VM runs: kicking vCPUs (the runner's
/// commands), harvesting the dirty log (`KVM_GET_DIRTY_LOG`, `KVM_CLEAR_DIRTY_LOG`,
/// `KVM_RESET_DIRTY_RINGS`), reading the clock (`KVM_GET_CLOCK`), and interrupts raised by
/// the VMM (`KVM_IRQ_LINE`, `KVM_SIGNAL_MSI`). Tearing the VM down only closes and unmaps.
pub(crate) fn vmm_rules() -> Rules {
    let mut rules = kick_rules();
    rules.allow_ioctls(&[
        KVM_GET_DIRTY_LOG(),
        KVM_CLEAR_DIRTY_LOG(),
        KVM_RESET_DIRTY_RINGS(),
        KVM_GET_CLOCK(),
        KVM_IRQ_LINE(),
        KVM_SIGNAL_MSI(),
    ]);
    rules
}

/// Raising an interrupt through the VM (`set_irq_line`, `signal_msi`) from any thread.
pub(crate) fn interrupt_rules() -> Rules {
    let mut rules = Rules::new();
    rules.allow_ioctls(&[KVM_IRQ_LINE(), KVM_SIGNAL_MSI()]);
    rules
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_match_kvm_headers() {
        // The values of <linux/kvm.h> on x86-64.
        assert_eq!(super::KVM_RUN(), 0xae80);
        assert_eq!(super::KVM_TRANSLATE(), 0xc018_ae85);
        assert_eq!(super::KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(super::KVM_GET_XSAVE2(), 0x9000_aecf);
        let rules = super::vcpu_rules();
        assert!(rules.allows_ioctl(super::KVM_RUN()));
        assert!(!rules.allows(libc::SYS_openat));
    }
}
