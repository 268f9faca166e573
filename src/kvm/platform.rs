//! KVM ioctls that kvm-ioctls does not wrap: machine-check setup and the PIT's lost-tick
//! policy.

use std::os::fd::AsRawFd;

use kvm_bindings::{kvm_reinject_control, KVMIO};
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::{ioctl_io_nr, ioctl_iow_nr};

ioctl_iow_nr!(KVM_X86_SETUP_MCE, KVMIO, 0x9c, u64);
// KVM declares it without a size although it takes a `struct kvm_reinject_control`.
ioctl_io_nr!(KVM_REINJECT_CONTROL, KVMIO, 0x71);

/// MCG_CAP bit 8: MCG_CTL is present. In KVM's supported MCG_CAP flags
/// (`KVM_X86_GET_MCE_CAP_SUPPORTED`) ever since `KVM_CAP_MCE` exists.
pub(crate) const MCG_CTL_P: u64 = 1 << 8;

fn result(ret: i32) -> Result<(), errno::Error> {
    if ret < 0 {
        Err(errno::Error::last())
    } else {
        Ok(())
    }
}

/// Gives a vCPU machine-check banks: `mcg_cap` becomes its MCG_CAP MSR.
pub(crate) fn setup_mce(vcpu: &impl AsRawFd, mcg_cap: u64) -> Result<(), errno::Error> {
    // SAFETY: KVM_X86_SETUP_MCE reads one u64 through the pointer, which points at a live u64.
    result(unsafe { ioctl_with_ref(vcpu, KVM_X86_SETUP_MCE(), &mcg_cap) })
}

/// Chooses whether the in-kernel PIT reinjects ticks the guest did not take in time.
pub(crate) fn reinject_control(vm: &impl AsRawFd, reinject: bool) -> Result<(), errno::Error> {
    let control = kvm_reinject_control {
        pit_reinject: u8::from(reinject),
        ..Default::default()
    };
    // SAFETY: KVM_REINJECT_CONTROL reads a `struct kvm_reinject_control` through the pointer,
    // which points at a live one of that layout (kvm-bindings' definition).
    result(unsafe { ioctl_with_ref(vm, KVM_REINJECT_CONTROL(), &control) })
}
