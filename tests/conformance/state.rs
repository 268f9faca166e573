//! vCPU state through vmkit's own types: what is written is read back, and what the guest
//! does shows up in it.

use vmkit::Hypervisor;

use crate::common::{long_mode_vm, long_mode_vm_with, next_exit, CODE_ADDR};
use vmkit::arch::x86_64::{msr_index, LapicState, MpState, Msr, VcpuEventField, Xcr};
use vmkit::{VcpuError, VcpuExit, VmConfig};
use vmkit_guests::snippets::{self, HLT, SPIN};

pub fn general_registers_reach_the_guest_and_come_back(hv: &dyn Hypervisor) {
    // add rax, rbx; mov rcx, 0x1122334455667788; hlt
    let code = snippets::ADD_AND_LOAD_RCX;
    let mut t = long_mode_vm(hv, code);
    let mut regs = t.vcpu.regs().unwrap();
    assert_eq!(regs.rip, CODE_ADDR);
    regs.rax = 40;
    regs.rbx = 2;
    regs.r15 = 0xdead_0000_beef;
    t.vcpu.set_regs(&regs).unwrap();
    assert_eq!(t.vcpu.regs().unwrap(), regs);
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
    let after = t.vcpu.regs().unwrap();
    assert_eq!(after.rax, 42);
    assert_eq!(after.rcx, snippets::LOADED_RCX);
    assert_eq!(after.r15, 0xdead_0000_beef);
    assert_eq!(after.rip, CODE_ADDR + code.len() as u64);
}

pub fn special_registers_round_trip(hv: &dyn Hypervisor) {
    let t = long_mode_vm(hv, HLT);
    let mut sregs = t.vcpu.sregs().unwrap();
    assert!(sregs.cs.l, "configure_long_mode set a 64-bit code segment");
    assert_eq!(sregs.efer & 0x500, 0x500, "LME and LMA");
    sregs.fs.base = 0x7fff_0000_1000;
    sregs.gs.base = 0x1234_5000;
    sregs.cr2 = 0xdead_b000;
    sregs.idt.base = 0x8000;
    sregs.idt.limit = 0xfff;
    t.vcpu.set_sregs(&sregs).unwrap();
    assert_eq!(t.vcpu.sregs().unwrap(), sregs);
}

pub fn fpu_round_trip(hv: &dyn Hypervisor) {
    let t = long_mode_vm(hv, HLT);
    let mut fpu = t.vcpu.fpu().unwrap();
    fpu.fcw = 0x37f;
    fpu.xmm[3] = *b"vmkit xmm3 test!";
    fpu.fpr[1][..8].copy_from_slice(&1.5f64.to_bits().to_le_bytes());
    t.vcpu.set_fpu(&fpu).unwrap();
    let back = t.vcpu.fpu().unwrap();
    assert_eq!(back.xmm[3], fpu.xmm[3]);
    assert_eq!(back.fcw, fpu.fcw);
    // MXCSR is not compared: this host's KVM (6.18, nested) reports 0 through KVM_GET_FPU and
    // ignores it in KVM_SET_FPU; the XSAVE test covers MXCSR instead.
    assert_eq!(back.fpr[1], fpu.fpr[1]);
}

pub fn msrs_round_trip_and_unknown_ones_are_named(hv: &dyn Hypervisor) {
    let t = long_mode_vm(hv, HLT);
    let msrs = [
        Msr {
            index: msr_index::LSTAR,
            data: 0xffff_ffff_8100_0000,
        },
        Msr {
            index: msr_index::STAR,
            data: 0x0023_0010_0000_0000,
        },
        Msr {
            index: msr_index::KERNEL_GS_BASE,
            data: 0x5000,
        },
        Msr {
            index: msr_index::SYSENTER_EIP,
            data: 0x1234,
        },
    ];
    t.vcpu.set_msrs(&msrs).unwrap();
    let indices: Vec<u32> = msrs.iter().map(|m| m.index).collect();
    assert_eq!(t.vcpu.msrs(&indices).unwrap(), msrs);

    // Every MSR the hypervisor lists can be read.
    let all = hv.msr_index_list();
    assert!(all.contains(&msr_index::LSTAR));

    let bogus = 0x4242_4242;
    let err = t.vcpu.msrs(&[msr_index::LSTAR, bogus]).unwrap_err();
    assert!(
        err.to_string().contains("MSR list") && format!("{err:?}").contains("0x42424242"),
        "{err:?}"
    );
    let err = t
        .vcpu
        .set_msrs(&[Msr {
            index: bogus,
            data: 1,
        }])
        .unwrap_err();
    assert!(format!("{err:?}").contains("0x42424242"), "{err:?}");

    // The TSC runs on: a read gives its value now, and writing other state does not set it
    // back (on Xen both go through the CPU record, whose TSC Xen stamps at a whole save).
    let tsc = || t.vcpu.msrs(&[msr_index::TSC]).unwrap()[0].data;
    let first = tsc();
    t.vcpu.set_msrs(&msrs).unwrap();
    let second = tsc();
    t.vcpu.set_msrs(&msrs).unwrap();
    let third = tsc();
    assert!(
        first < second && second < third,
        "TSC {first}, {second}, {third}"
    );
}

pub fn cpuid_set_is_what_the_guest_executes(hv: &dyn Hypervisor) {
    // xor eax, eax; cpuid; out 0x80, eax (max leaf); mov eax, ebx; out 0x80, eax; hlt
    let mut t = long_mode_vm(hv, snippets::CPUID_LEAF0);
    let mut cpuid = hv.supported_cpuid();
    let leaf0 = cpuid.iter_mut().find(|e| e.function == 0).unwrap();
    leaf0.ebx = u32::from_le_bytes(*b"vmki");
    let max_leaf = leaf0.eax;
    t.vcpu.set_cpuid(&cpuid).unwrap();
    // KVM adjusts some dynamic bits (OSXSAVE, XSAVE sizes), but keeps what we set in leaf 0.
    let back = t.vcpu.cpuid().unwrap();
    assert_eq!(back.iter().find(|e| e.function == 0), Some(&cpuid[0]));
    assert!(back.len() > 10);
    let mut words = Vec::new();
    while words.len() < 2 {
        match t.vcpu.run().unwrap() {
            VcpuExit::IoOut {
                port: snippets::REPORT_PORT,
                data,
                ..
            } => words.push(u32::from_le_bytes(data.try_into().unwrap())),
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(words, [max_leaf, u32::from_le_bytes(*b"vmki")]);
}

pub fn lapic_needs_an_irqchip_and_round_trips_with_one(hv: &dyn Hypervisor) {
    let t = long_mode_vm(hv, HLT);
    match t.vcpu.lapic() {
        Err(VcpuError::Unsupported { op, .. }) => assert_eq!(op, "local APIC state"),
        // A Xen VM always has Xen's local APIC (a PVH domain's one emulated device).
        Ok(_) if hv.kind() == vmkit::HypervisorKind::Xen => {}
        other => panic!("expected Unsupported without an irqchip, got {other:?}"),
    }
    let t = long_mode_vm_with(hv, VmConfig::default().irqchip(true), HLT);
    let mut lapic = t.vcpu.lapic().unwrap();
    assert_eq!(
        lapic.register(LapicState::ID).unwrap() >> 24,
        0,
        "vCPU 0 has APIC id 0"
    );
    lapic.set_register(LapicState::SPURIOUS_VECTOR, 0x1ff);
    lapic.set_register(LapicState::LVT_LINT0, 0x700);
    t.vcpu.set_lapic(&lapic).unwrap();
    let back = t.vcpu.lapic().unwrap();
    assert_eq!(back.register(LapicState::SPURIOUS_VECTOR), Some(0x1ff));
    assert_eq!(back.register(LapicState::LVT_LINT0), Some(0x700));
}

pub fn xsave_and_xcrs_round_trip(hv: &dyn Hypervisor) {
    let t = long_mode_vm(hv, HLT);
    let caps = hv.capabilities().clone();
    if !caps.xsave || !caps.xcrs {
        panic!("this hypervisor lacks XSAVE or XCRS: {caps:?}");
    }
    let xcrs = t.vcpu.xcrs().unwrap();
    let xcr0 = xcrs
        .iter()
        .find(|x| x.index == 0)
        .expect("XCR0 is reported")
        .value;
    assert_eq!(xcr0 & 1, 1, "x87 state is always enabled");
    t.vcpu
        .set_xcrs(&[Xcr {
            index: 0,
            value: 0b11,
        }])
        .unwrap();
    assert_eq!(t.vcpu.xcrs().unwrap()[0].value, 0b11);
    // XCR0 without x87 (bit 0) is architecturally invalid.
    let err = t
        .vcpu
        .set_xcrs(&[Xcr {
            index: 0,
            value: 0b10,
        }])
        .unwrap_err();
    // KVM's error names its ioctl (KVM_SET_XCRS), Xen's the register: both say "XCR".
    assert!(err.to_string().to_uppercase().contains("XCR"), "{err}");
    assert_eq!(
        t.vcpu.xcrs().unwrap()[0].value,
        0b11,
        "a refused XCR0 changes nothing"
    );

    let mut xsave = t.vcpu.xsave().unwrap();
    assert!(xsave.region.len() * 4 >= 4096);
    // XMM5 lives at byte 160 + 5 * 16 of the legacy area.
    let word = (160 + 5 * 16) / 4;
    xsave.region[word..word + 4].copy_from_slice(&[1, 2, 3, 4]);
    // MXCSR is dword 6; XSTATE_BV (byte 512) must mark SSE state (bit 1) as present, or the
    // XMM registers are restored to their initial (zero) state.
    xsave.region[6] = 0x1f80 | 0x40;
    xsave.region[512 / 4] |= 0b10;
    t.vcpu.set_xsave(&xsave).unwrap();
    let back = t.vcpu.xsave().unwrap();
    assert_eq!(back.region[word..word + 4], [1, 2, 3, 4]);
    assert_eq!(back.region[6], 0x1fc0, "MXCSR with DAZ");
    // The same register seen through the FPU view.
    let xmm5 = t.vcpu.fpu().unwrap().xmm[5];
    assert_eq!(xmm5[..4], 1u32.to_le_bytes());

    let mut short = xsave.clone();
    short.region.truncate(100);
    let err = t.vcpu.set_xsave(&short).unwrap_err();
    assert!(err.to_string().contains("400 bytes given"), "{err}");
}

/// XSAVE and XCR access, and AVX among the components the host's XSAVE offers (CPUID leaf
/// 0xd EAX bit 2, with its sub-leaf 2).
fn avx_xsave(caps: &vmkit::Capabilities) -> Option<&'static str> {
    let leaf = |function: u32, index: u32| {
        caps.cpuid
            .iter()
            .find(|e| e.function == function && e.index == index)
    };
    let avx = leaf(0xd, 0).is_some_and(|l| l.eax & 0b100 != 0) && leaf(0xd, 2).is_some();
    crate::xsave(caps).or_else(|| (!avx).then_some("needs AVX in the host's XSAVE components"))
}

/// AVX state (a YMM register's upper half) set through `set_xsave` survives what else
/// writes the vCPU: setting its registers or FPU state, and kick-and-run cycles (on Xen
/// each of these is a vCPU context set, which resets XSTATE_BV to x87 and SSE).
pub fn avx_state_survives_set_regs_set_fpu_and_kicks(hv: &dyn Hypervisor) {
    let cpuid = hv.supported_cpuid();
    let leaf = |function: u32, index: u32| {
        cpuid
            .iter()
            .find(|e| e.function == function && e.index == index)
    };
    // XCR0 may enable AVX (leaf 0xd EAX bit 2; `avx_xsave` made sure); its area offset is
    // leaf 0xd sub-leaf 2 EBX.
    let avx_offset = leaf(0xd, 2).expect("leaf 0xd sub-leaf 2").ebx as usize;
    let mut t = long_mode_vm(hv, SPIN);
    t.vcpu
        .set_xcrs(&[Xcr {
            index: 0,
            value: 0b111,
        }])
        .unwrap();
    let mut xsave = t.vcpu.xsave().unwrap();
    assert!(xsave.region.len() * 4 >= avx_offset + 256);
    // XMM0 (legacy area byte 160) and YMM0's upper half (the AVX area's first 16 bytes).
    let xmm0 = 160 / 4;
    let ymm0_high = avx_offset / 4;
    xsave.region[xmm0..xmm0 + 4].copy_from_slice(&[1, 2, 3, 4]);
    xsave.region[ymm0_high..ymm0_high + 4].copy_from_slice(&[5, 6, 7, 8]);
    // XSTATE_BV marks SSE and AVX state as present.
    xsave.region[512 / 4] |= 0b110;
    t.vcpu.set_xsave(&xsave).unwrap();
    let check = |vcpu: &dyn vmkit::Vcpu, after: &str| {
        let back = vcpu.xsave().unwrap();
        assert_eq!(
            back.region[xmm0..xmm0 + 4],
            [1, 2, 3, 4],
            "XMM0 after {after}"
        );
        assert_eq!(
            back.region[ymm0_high..ymm0_high + 4],
            [5, 6, 7, 8],
            "YMM0's upper half after {after}"
        );
        assert_ne!(
            back.region[512 / 4] & 0b100,
            0,
            "XSTATE_BV's AVX bit after {after}"
        );
    };
    check(t.vcpu.as_ref(), "set_xsave");

    let regs = t.vcpu.regs().unwrap();
    t.vcpu.set_regs(&regs).unwrap();
    check(t.vcpu.as_ref(), "set_regs");
    let fpu = t.vcpu.fpu().unwrap();
    t.vcpu.set_fpu(&fpu).unwrap();
    check(t.vcpu.as_ref(), "set_fpu");

    // The guest spins (touching no vector state); each cycle runs it and kicks it.
    for cycle in 1..=2 {
        let kick = t.vcpu.kick_handle();
        let kicker = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            kick.kick();
        });
        loop {
            match t.vcpu.run().unwrap() {
                VcpuExit::Kicked => break,
                VcpuExit::Interrupted => continue,
                exit => panic!("the guest spins, yet exited: {exit:?}"),
            }
        }
        kicker.join().unwrap();
        check(t.vcpu.as_ref(), &format!("kick-and-run cycle {cycle}"));
    }
    // And once more with registers set while the vCPU is parked by a kick.
    let regs = t.vcpu.regs().unwrap();
    t.vcpu.set_regs(&regs).unwrap();
    check(t.vcpu.as_ref(), "set_regs after a kick");
}

pub fn events_and_mp_state_round_trip(hv: &dyn Hypervisor) {
    let fields = hv.capabilities().vcpu_event_fields;
    let t = long_mode_vm(hv, HLT);
    // An exception being injected, with its error code: every backend with events holds it.
    let mut events = t.vcpu.vcpu_events().unwrap();
    events.exception.injected = true;
    events.exception.nr = 13;
    events.exception.has_error_code = true;
    events.exception.error_code = 0x18;
    t.vcpu.set_vcpu_events(&events).unwrap();
    let back = t.vcpu.vcpu_events().unwrap();
    assert_eq!(back.exception, events.exception);

    let mut events = back;
    events.exception = Default::default();
    events.nmi.pending = true;
    events.nmi.masked = true;
    events.interrupt.shadow = 1;
    if fields.nmi_state && fields.interrupt_shadow {
        t.vcpu.set_vcpu_events(&events).unwrap();
        let back = t.vcpu.vcpu_events().unwrap();
        assert!(back.nmi.pending && back.nmi.masked);
        // AMD SVM has a single interrupt-shadow bit, which KVM reports as both the STI and
        // the MOV SS shadow (3); Intel keeps them apart (1).
        assert_ne!(
            back.interrupt.shadow & 1,
            0,
            "shadow {}",
            back.interrupt.shadow
        );
    } else {
        // Refused by name, and nothing changed: the injected exception is still there.
        let err = t.vcpu.set_vcpu_events(&events).unwrap_err();
        assert!(
            matches!(
                err,
                VcpuError::EventFieldUnsupported {
                    field: VcpuEventField::NmiPending,
                    ..
                }
            ),
            "{err}"
        );
        events.nmi = Default::default();
        let err = t.vcpu.set_vcpu_events(&events).unwrap_err();
        assert!(
            matches!(
                err,
                VcpuError::EventFieldUnsupported {
                    field: VcpuEventField::InterruptShadow,
                    ..
                }
            ),
            "{err}"
        );
        let back = t.vcpu.vcpu_events().unwrap();
        assert!(back.exception.injected && back.exception.nr == 13);
        assert!(!back.nmi.pending && !back.nmi.masked && back.interrupt.shadow == 0);
        // An NMI being injected is held instead.
        let mut nmi = vmkit::arch::x86_64::VcpuEvents::default();
        nmi.nmi.injected = true;
        t.vcpu.set_vcpu_events(&nmi).unwrap();
        assert_eq!(t.vcpu.vcpu_events().unwrap(), nmi);
    }

    let t = long_mode_vm_with(hv, VmConfig::default().irqchip(true), HLT);
    assert_eq!(t.vcpu.mp_state().unwrap(), MpState::Runnable);
    // Every backend loads a halted vCPU (Xen by emulation: Capabilities::halted_vcpus).
    assert!(hv.capabilities().halted_vcpus);
    t.vcpu.set_mp_state(MpState::Halted).unwrap();
    assert_eq!(t.vcpu.mp_state().unwrap(), MpState::Halted);
    t.vcpu.set_mp_state(MpState::Runnable).unwrap();
    assert_eq!(t.vcpu.mp_state().unwrap(), MpState::Runnable);
}

pub fn supported_cpuid_has_the_basic_leaves(hv: &dyn Hypervisor) {
    let cpuid = hv.supported_cpuid();
    assert!(cpuid.iter().any(|e| e.function == 0));
    assert!(cpuid.iter().any(|e| e.function == 1));
    assert!(cpuid.iter().any(|e| e.function == 0x8000_0000));
}

crate::scenarios![
    general_registers_reach_the_guest_and_come_back,
    special_registers_round_trip,
    fpu_round_trip,
    msrs_round_trip_and_unknown_ones_are_named,
    cpuid_set_is_what_the_guest_executes,
    lapic_needs_an_irqchip_and_round_trips_with_one => crate::irqchip,
    xsave_and_xcrs_round_trip => crate::xsave,
    avx_state_survives_set_regs_set_fpu_and_kicks => avx_xsave,
    events_and_mp_state_round_trip => crate::vcpu_events,
    supported_cpuid_has_the_basic_leaves,
];
