//! What a guest probes about its platform: the CPUID and machine-check banks that vmkit-boot
//! sets up reach the guest as the capabilities say, the PIT's lost-tick policy can be
//! chosen, and a guest reads the ACPI PM timer and powers off through S5.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_device::bus::PioAddress;
use vmkit::reserved::{IoSpace, ReservedWhen};
use vmkit::runner::{self, ExitAction, ExitHandler, VcpuOutcome, VmRunner};
use vmkit::{Capabilities, Hypervisor, VcpuError, VcpuExit, VmConfig, VmError};
use vmkit_boot::linux::{guest_cpuid, mce_banks};
use vmkit_bus::Bus;
use vmkit_devices::{PmBlock, SleepState};
use vmkit_guests::snippets;

use crate::common::guest::GIVE_UP;
use crate::common::long_mode_vm_with;

/// CPUID.1:ECX bit 24.
const TSC_DEADLINE: u32 = 1 << 24;

fn tsc_deadline_or_mce(caps: &Capabilities) -> Option<&'static str> {
    let tsc = caps.irqchip && caps.tsc_deadline_timer;
    (!tsc && caps.mce_banks == 0)
        .then_some("needs the TSC-deadline timer (with an irqchip) or machine-check banks")
}

fn pit_reinject(caps: &Capabilities) -> Option<&'static str> {
    (!(caps.irqchip && caps.pit && caps.pit_reinject_control))
        .then_some("needs an in-kernel irqchip and PIT with reinjection control")
}

/// The next dword the guest reports.
fn report(vcpu: &mut dyn vmkit::Vcpu) -> u32 {
    match vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: snippets::REPORT_PORT,
            data,
            ..
        } => u32::from_le_bytes(data.try_into().unwrap()),
        other => panic!("unexpected exit {other:?}"),
    }
}

pub fn the_boot_layers_cpuid_and_mce_banks_reach_the_guest(hv: &dyn Hypervisor) {
    let caps = hv.capabilities().clone();
    let config = VmConfig::default().irqchip(caps.irqchip);
    let mut t = long_mode_vm_with(hv, config, snippets::CPU_PROBE);
    let tsc_deadline = caps.irqchip && caps.tsc_deadline_timer;
    t.vcpu
        .set_cpuid(&guest_cpuid(&caps.cpuid, 0, 1, tsc_deadline))
        .unwrap();
    let banks = mce_banks(&caps);
    match banks {
        Some(banks) => {
            // Counts outside 1..=the host's limit are refused before KVM sees them.
            for wrong in [0, caps.mce_banks.saturating_add(1)] {
                let Ok(wrong) = u8::try_from(wrong) else {
                    continue;
                };
                match t.vcpu.setup_mce(wrong) {
                    Err(VcpuError::InvalidState { what, .. }) => {
                        assert_eq!(what, "machine-check bank count")
                    }
                    other => panic!("{wrong} banks: expected InvalidState, got {other:?}"),
                }
            }
            t.vcpu.setup_mce(banks).unwrap();
        }
        None => assert!(matches!(
            t.vcpu.setup_mce(10),
            Err(VcpuError::Unsupported { .. })
        )),
    }
    let ecx = report(t.vcpu.as_mut());
    let mcg_cap = report(t.vcpu.as_mut());
    assert_eq!(
        ecx & TSC_DEADLINE != 0,
        tsc_deadline,
        "CPUID.1:ECX = {ecx:#010x}, capability {}",
        caps.tsc_deadline_timer
    );
    if let Some(banks) = banks {
        assert_eq!(mcg_cap & 0xff, u32::from(banks), "MCG_CAP = {mcg_cap:#x}");
    }
}

pub fn the_pits_lost_tick_policy_can_be_chosen(hv: &dyn Hypervisor) {
    let t = long_mode_vm_with(hv, VmConfig::default().irqchip(true), snippets::HLT);
    match t.vm.set_pit_reinject(false) {
        Err(VmError::NoPit { op }) => assert_eq!(op, "KVM_REINJECT_CONTROL"),
        other => panic!("expected NoPit without a PIT, got {other:?}"),
    }
    let t = long_mode_vm_with(
        hv,
        VmConfig::default().irqchip(true).pit(true),
        snippets::HLT,
    );
    t.vm.set_pit_reinject(false).unwrap();
    t.vm.set_pit_reinject(true).unwrap();
    // The PIT is still there, its state readable.
    t.vm.pit_state().unwrap();
}

pub fn a_guest_reads_the_pm_timer_and_powers_off_through_s5(hv: &dyn Hypervisor) {
    // The snippet's ports and value are the device's.
    let base = PmBlock::DEFAULT_BASE;
    assert_eq!(snippets::PM_TIMER_PORT, base + PmBlock::PM_TMR_OFFSET);
    assert_eq!(snippets::PM1A_CNT_PORT, base + PmBlock::PM1_CNT_OFFSET);
    let s5 = (u16::from(SleepState::S5.slp_typ()) << 10) | (1 << 13);
    assert_eq!(snippets::PM_SLEEP_S5, s5);

    let t = long_mode_vm_with(hv, VmConfig::default(), snippets::PM_TIMER_POWEROFF);
    let pm = Arc::new(PmBlock::new().unwrap());
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(base), PmBlock::PORTS, pm.clone())
        .unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (pm, reports) = (Arc::clone(&pm), Arc::clone(&reports));
        runner::from_fn(move |id, exit| {
            if let VcpuExit::IoOut {
                port: snippets::REPORT_PORT,
                data,
                ..
            } = &*exit
            {
                let value = u32::from_le_bytes((*data).try_into().unwrap());
                reports.lock().unwrap().push((value, Instant::now()));
                return ExitAction::Continue;
            }
            match bus.handle(id, exit) {
                ExitAction::Continue => match pm.take_sleep_request() {
                    Some(SleepState::S5) => ExitAction::PowerOff,
                    Some(other) => panic!("unexpected sleep request {other:?}"),
                    None => ExitAction::Continue,
                },
                action => action,
            }
        })
    };
    let started = Instant::now();
    let timer_at_start = pm.timer();
    let running =
        VmRunner::start_with(vec![t.vcpu], handler, crate::common::runner_options()).unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    let timer_at_end = pm.timer();
    assert_eq!(
        finished[0].outcome.as_ref().unwrap(),
        &VcpuOutcome::PowerOff
    );

    let reports = reports.lock().unwrap();
    let [(first, _), (second, second_seen)] = reports[..] else {
        panic!("expected two timer reads, got {reports:?}");
    };
    // Both reads fall between the reads around the run, in order, and no more ticks passed
    // between them than the host clock allows from the start to the second report.
    assert!(timer_at_start <= first && first <= second && second <= timer_at_end);
    let elapsed = second_seen.duration_since(started).as_nanos();
    let most = elapsed * u128::from(PmBlock::TIMER_HZ) / 1_000_000_000 + 1;
    assert!(
        u128::from(second - first) <= most,
        "{first} then {second}: more than {most} ticks"
    );
}

fn irqchip_with_reserved_ports(caps: &Capabilities) -> Option<&'static str> {
    let ports = caps
        .reserved
        .iter()
        .any(|r| r.space == IoSpace::Pio && r.when != ReservedWhen::Always);
    (!(caps.irqchip && ports)).then_some("needs an in-kernel irqchip that claims ports")
}

/// The guest writes 0 to every port `Capabilities::reserved` lists for a VM with an
/// irqchip (and a PIT where there is one), then writes the byte report port: the report is
/// the first exit, so the hypervisor took every write itself, as the capabilities say.
/// (Writes, because Xen's debug port 0xE9 takes writes only.)
pub fn the_reserved_ports_never_reach_the_vmm(hv: &dyn Hypervisor) {
    let caps = hv.capabilities().clone();
    let config = VmConfig::default().irqchip(true).pit(caps.pit);
    // mov al, 0
    let mut code = vec![0xb0, 0x00];
    let mut ports = Vec::new();
    for range in caps.reserved.iter().filter(|r| r.space == IoSpace::Pio) {
        if !range.when.applies_to(&config) {
            continue;
        }
        for port in range.start..range.start + range.len {
            let port = u16::try_from(port).unwrap();
            ports.push(port);
            // mov dx, port; out dx, al
            code.extend_from_slice(&[0x66, 0xba]);
            code.extend_from_slice(&port.to_le_bytes());
            code.push(0xee);
        }
    }
    assert!(!ports.is_empty());
    // mov al, 0x5a; out BYTE_REPORT_PORT, al; hlt
    code.extend_from_slice(&[0xb0, 0x5a, 0xe6, snippets::BYTE_REPORT_PORT as u8, 0xf4]);
    let mut t = long_mode_vm_with(hv, config, &code);
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut { port, data, .. } => assert_eq!(
            (port, data),
            (snippets::BYTE_REPORT_PORT, &[0x5a][..]),
            "writes to {ports:#x?} were all handled by the hypervisor"
        ),
        other => panic!("a reserved port reached the VMM: {other:?} (reserved: {ports:#x?})"),
    }
}

crate::scenarios![
    a_guest_reads_the_pm_timer_and_powers_off_through_s5,
    the_boot_layers_cpuid_and_mce_banks_reach_the_guest => tsc_deadline_or_mce,
    the_pits_lost_tick_policy_can_be_chosen => pit_reinject,
    the_reserved_ports_never_reach_the_vmm => irqchip_with_reserved_ports,
];
