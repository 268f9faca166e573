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
fn an_emulation_failure_stops_the_runner_with_rip_and_bytes() {
    use vmkit::runner::{self, ExitAction, RunnerError, StopReason, VmRunner};
    use vmkit_guests::snippets::{MMIO_X87_LOAD, MMIO_X87_LOAD_FLD};

    let hv = hypervisor();
    // An x87 load from MMIO: KVM's emulator has no such instruction.
    let t = long_mode_vm(hv.as_ref(), MMIO_X87_LOAD);
    let handler = runner::from_fn(|_, exit| ExitAction::unhandled(exit));
    let mut finished = VmRunner::start(vec![t.vcpu], handler)
        .unwrap()
        .join_timeout(common::guest::GIVE_UP)
        .unwrap();
    let err = finished.pop().unwrap().outcome.unwrap_err();
    let RunnerError::GuestStopped { vcpu: 0, stop, .. } = &err else {
        panic!("the emulation failure should stop the guest: {err:?}");
    };
    assert!(matches!(
        stop.reason,
        StopReason::InternalError { suberror: 1, .. }
    ));
    let rip = common::CODE_ADDR + MMIO_X87_LOAD_FLD;
    assert_eq!(stop.rip, Some(rip));
    let fld = &MMIO_X87_LOAD[usize::try_from(MMIO_X87_LOAD_FLD).unwrap()..];
    assert!(
        stop.bytes.starts_with(fld),
        "the bytes at rip: {:02x?}",
        stop.bytes
    );
    let message = err.to_string();
    let bytes: Vec<String> = fld.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        message.starts_with(&format!(
            "vCPU 0 stopped: the hypervisor could not emulate the instruction at rip {rip:#x} \
             (bytes {}",
            bytes.join(" ")
        )),
        "{message}"
    );
    assert!(
        message.ends_with(": internal error 1 (emulation failure)"),
        "{message}"
    );
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

#[test]
fn a_split_irqchip_refuses_the_pit_bad_route_counts_and_in_kernel_ioapic_state() {
    let kvm = vmkit::kvm::Kvm::new().unwrap();
    if !vmkit::Hypervisor::capabilities(&kvm).split_irqchip {
        eprintln!("skipped: this KVM has no KVM_CAP_SPLIT_IRQCHIP");
        return;
    }
    let refused = |config: VmConfig| match kvm.create_kvm_vm(&config) {
        Err(vmkit::HypervisorError::InvalidConfig { reason }) => reason,
        other => panic!("expected InvalidConfig, got {:?}", other.map(|_| ())),
    };
    assert!(refused(VmConfig::default().split_irqchip(24).pit(true)).contains("split irqchip"));
    for routes in [0, 23, 49] {
        assert!(refused(VmConfig::default().split_irqchip(routes)).contains("24 to 48"));
    }
    let vm = kvm
        .create_kvm_vm(&VmConfig::default().split_irqchip(24))
        .unwrap();
    let vm: &dyn vmkit::Vm = &vm;
    let err = vm.irqchip_state().unwrap_err();
    assert!(
        matches!(
            err,
            VmError::SplitIrqchip {
                op: "KVM_GET_IRQCHIP"
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "KVM_GET_IRQCHIP needs the in-kernel IOAPIC and PICs, but the VM has a split irqchip"
    );
    // The local APICs are KVM's: a vCPU has one.
    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.lapic().unwrap();
}
