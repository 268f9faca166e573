//! Behaviour specific to the KVM backend: its exit codes, its error texts, and that
//! `vmkit::open()` picks it on this host. Everything backend-neutral is in the conformance
//! suite (tests/conformance).

// A test, benchmark or build script: a failed step is a failure to report, so it may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{hypervisor, long_mode_vm};
use vmkit::{EventFd, HypervisorKind, VcpuExit, VmConfig, VmError};

#[test]
fn executing_from_mmio_is_an_internal_error() {
    let hv = hypervisor();
    let hv = hv.as_ref();
    // mov eax, 0xd0000000; jmp rax -- no hypervisor can fetch instructions from MMIO.
    let code = [0xb8, 0x00, 0x00, 0x00, 0xd0, 0xff, 0xe0];
    let mut t = long_mode_vm(hv, &code);
    match t.vcpu.run().unwrap() {
        VcpuExit::InternalError { suberror, .. } => {
            // KVM_INTERNAL_ERROR_EMULATION
            assert_eq!(suberror, 1);
        }
        other => panic!("expected an internal error, got {other:?}"),
    }
}

#[test]
fn interrupt_calls_without_an_irqchip_say_so() {
    let hv = hypervisor();
    let hv = hv.as_ref();
    let vm = hv.create_vm(&VmConfig::default()).unwrap();
    let err = vm.set_irq_line(4, true).unwrap_err();
    assert!(matches!(err, VmError::NoIrqchip { .. }));
    assert_eq!(
        err.to_string(),
        "KVM_IRQ_LINE needs an in-kernel irqchip; create the VM with VmConfig::irqchip(true)"
    );
    let fd = EventFd::new(0).unwrap();
    assert!(matches!(
        vm.register_irqfd(&fd, 4, None),
        Err(VmError::NoIrqchip { .. })
    ));
}

#[test]
fn open_finds_kvm_and_reports_capabilities() {
    let hv = hypervisor();
    let hv = hv.as_ref();
    assert_eq!(hv.kind(), HypervisorKind::Kvm);
    let caps = hv.capabilities();
    assert!(
        caps.max_vcpus >= 1 && caps.max_memory_slots >= 32,
        "{caps:?}"
    );
}
