//! What a guest probes about its platform: the CPUID and machine-check banks that vmkit-boot
//! sets up reach the guest as the capabilities say, the PIT's lost-tick policy can be
//! chosen, a guest reads the ACPI PM timer and powers off through S5, and a guest suspended
//! to RAM (S3) wakes at its waking vector.

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
    let exit = vcpu.run().unwrap();
    reported(&exit).unwrap_or_else(|| panic!("unexpected exit {exit:?}"))
}

/// The dword a snippet reported, if `exit` is its write to [`snippets::REPORT_PORT`].
fn reported(exit: &VcpuExit<'_>) -> Option<u32> {
    match exit {
        VcpuExit::IoOut {
            port: snippets::REPORT_PORT,
            data,
            ..
        } => Some(u32::from_le_bytes((*data).try_into().unwrap())),
        _ => None,
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
        // The operation that needs it: KVM's ioctl, Xen's domain-wide timer mode.
        Err(VmError::NoPit { op }) => assert!(
            matches!(op, "KVM_REINJECT_CONTROL" | "HVM_PARAM_TIMER_MODE"),
            "{op}"
        ),
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
            if let Some(value) = reported(exit) {
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

/// A guest suspends to RAM (S3); the VMM wakes it as firmware would (vmkit-boot's `wake`):
/// from the FACS that vmkit-boot's ACPI tables hold, it reads the waking vector the guest
/// left there, and starts the vCPU at it in real mode, with WAK_STS set in the PM block.
pub fn a_guest_suspended_to_ram_wakes_at_its_waking_vector(hv: &dyn Hypervisor) {
    use vmkit::vm_memory::{Bytes, GuestAddress};
    use vmkit_boot::linux::acpi::facs_address;
    use vmkit_boot::linux::acpi::write_acpi_tables;
    use vmkit_boot::linux::AcpiDevices;
    use vmkit_boot::wake::{self, WakingVector};

    let base = PmBlock::DEFAULT_BASE;
    let s3 = (u16::from(SleepState::S3.slp_typ()) << 10) | (1 << 13);
    assert_eq!(snippets::PM_SLEEP_S3, s3);
    let t = long_mode_vm_with(hv, VmConfig::default(), snippets::PM_SUSPEND);
    let memory = t.vm.memory();
    // The firmware's part: ACPI tables with a PM block, and so a FACS.
    let devices = AcpiDevices {
        pm: Some(vmkit_boot::linux::PmBlock {
            pm1a_evt: base + PmBlock::PM1_EVT_OFFSET,
            pm1a_cnt: base + PmBlock::PM1_CNT_OFFSET,
            pm_tmr: base + PmBlock::PM_TMR_OFFSET,
            reset: base + PmBlock::RESET_OFFSET,
            reset_value: PmBlock::RESET_VALUE,
            sci: 9,
            s5_type: SleepState::S5.slp_typ(),
            s3_type: Some(SleepState::S3.slp_typ()),
        }),
        ..AcpiDevices::default()
    };
    write_acpi_tables(&memory, 1, &devices).unwrap();
    let facs = facs_address(1, &devices).unwrap();
    // The OS's part before it suspends: its wake code, and the waking vector in the FACS.
    memory
        .write_slice(
            snippets::WAKE_REAL_MODE,
            GuestAddress(snippets::WAKE_VECTOR),
        )
        .unwrap();
    memory
        .write_obj(snippets::WAKE_VECTOR as u32, GuestAddress(facs + 12))
        .unwrap();

    let pm = Arc::new(PmBlock::new().unwrap());
    let mut bus = Bus::new();
    bus.register_pio(PioAddress(base), PmBlock::PORTS, pm.clone())
        .unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let (suspended, suspend) = std::sync::mpsc::channel();
    let handler = {
        let (pm, reports) = (Arc::clone(&pm), Arc::clone(&reports));
        let suspended = Mutex::new(suspended);
        runner::from_fn(move |id, exit| {
            if let Some(value) = reported(exit) {
                reports.lock().unwrap().push(value);
                return ExitAction::Continue;
            }
            if let VcpuExit::Hlt = exit {
                return ExitAction::PowerOff;
            }
            match bus.handle(id, exit) {
                ExitAction::Continue => match pm.take_sleep_request() {
                    Some(SleepState::S3) => {
                        // The write completes (the guest spins on); the VMM then stops the
                        // vCPU with a pause, so no I/O is in flight when the wake loads it.
                        suspended.lock().unwrap().send(id).unwrap();
                        ExitAction::Continue
                    }
                    Some(other) => panic!("unexpected sleep request {other:?}"),
                    None => ExitAction::Continue,
                },
                action => action,
            }
        })
    };
    let running =
        VmRunner::start_with(vec![t.vcpu], handler, crate::common::runner_options()).unwrap();
    let id = suspend.recv_timeout(GIVE_UP).unwrap();
    let vcpu = running.vcpu(id).unwrap();
    vcpu.pause().unwrap();
    assert!(reports.lock().unwrap().is_empty());
    // The wake: what firmware does, on the vCPU that suspended.
    let vector = vcpu
        .with_vcpu(move |vcpu| {
            let vector = wake::read_waking_vector(&memory, GuestAddress(facs))?;
            wake::enter_waking_vector(vcpu, vector)?;
            Ok::<_, wake::WakeError>(vector)
        })
        .unwrap()
        .unwrap();
    assert_eq!(vector, WakingVector::RealMode(snippets::WAKE_VECTOR as u32));
    pm.wake();
    vcpu.resume().unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    assert_eq!(
        finished[0].outcome.as_ref().unwrap(),
        &VcpuOutcome::PowerOff
    );
    // The wake code ran in real mode (CR0.PE clear), in the segment of the waking vector.
    let reports = reports.lock().unwrap();
    let [cr0, cs] = reports[..] else {
        panic!("expected CR0 and CS from the wake code, got {reports:x?}");
    };
    assert_eq!(cr0 & 1, 0, "CR0 {cr0:#x}: woke in protected mode");
    assert_eq!(u64::from(cs), snippets::WAKE_VECTOR >> 4);
    // WAK_STS (bit 15 of PM1a_STS) tells the guest's resume path that it woke.
    let mut status = [0u8; 2];
    pm.read(PmBlock::PM1_EVT_OFFSET, &mut status);
    assert_ne!(u16::from_le_bytes(status) & (1 << 15), 0);
}

fn mce(caps: &Capabilities) -> Option<&'static str> {
    (caps.mce_banks == 0).then_some("needs machine-check banks")
}

/// MCG_CAP and MCG_CTL.
const MSR_MCG_CAP: u32 = 0x179;
const MSR_MCG_CTL: u32 = 0x17b;

/// A vCPU given machine-check banks whose MCG_CTL was set (as Linux sets it, to all ones)
/// restores into a fresh vCPU: the state records the bank count, and restoring sets the banks
/// up before the MSRs, without which KVM refuses the saved MCG_CTL.
pub fn machine_check_banks_survive_a_snapshot(hv: &dyn Hypervisor) {
    let caps = hv.capabilities().clone();
    let banks = mce_banks(&caps).unwrap();
    let config = VmConfig::default().irqchip(caps.irqchip);
    let features = vmkit::snapshot::Features::for_vm(&config, &caps);
    let t = long_mode_vm_with(hv, config.clone(), snippets::HLT);
    t.vcpu
        .set_cpuid(&guest_cpuid(&caps.cpuid, 0, 1, false))
        .unwrap();
    // Before setup_mce, the vCPU has no banks to record.
    let msrs = vmkit::snapshot::readable_msrs(t.vcpu.as_ref(), &hv.msr_index_list());
    let plain = vmkit::snapshot::save_vcpu(t.vcpu.as_ref(), &msrs, features).unwrap();
    assert_eq!(plain.mce_banks, None);
    t.vcpu.setup_mce(banks).unwrap();
    t.vcpu
        .set_msrs(&[vmkit::arch::x86_64::Msr {
            index: MSR_MCG_CTL,
            data: u64::MAX,
        }])
        .unwrap();
    let msrs = vmkit::snapshot::readable_msrs(t.vcpu.as_ref(), &hv.msr_index_list());
    let state = vmkit::snapshot::save_vcpu(t.vcpu.as_ref(), &msrs, features).unwrap();
    assert_eq!(state.mce_banks, Some(banks));

    let fresh = long_mode_vm_with(hv, config, snippets::HLT);
    vmkit::snapshot::restore_vcpu(fresh.vcpu.as_ref(), &state).unwrap();
    let read = fresh.vcpu.msrs(&[MSR_MCG_CAP, MSR_MCG_CTL]).unwrap();
    assert_eq!(
        read[0].data & 0xff,
        u64::from(banks),
        "MCG_CAP {:#x}",
        read[0].data
    );
    assert_eq!(read[1].data, u64::MAX, "MCG_CTL");
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

/// Whether PCI configuration cycles through the ports reach the VMM.
fn pci_config_ports(caps: &Capabilities) -> Option<&'static str> {
    (!caps.pci_config_ports).then_some(
        "the hypervisor does not pass configuration cycles on ports 0xcf8/0xcfc to the VMM",
    )
}

/// Runs `code` with a PCI root bus (vmkit-pci, put on the bus by vmkit-machine's
/// `VirtioPciWiring`) and returns the dwords the guest reported. Where the ports reach the
/// VMM, bus 0 is claimed for them, then `released` given up again.
fn run_with_pci_root(
    hv: &dyn Hypervisor,
    code: &[u8],
    released: Option<vmkit::pci::PciFunctions>,
) -> Vec<u32> {
    use vmkit_machine::{GsiAllocator, MmioAllocator, VirtioPciWiring, VmMsi};

    let t = long_mode_vm_with(hv, VmConfig::default(), code);
    let vm: Arc<dyn vmkit::Vm> = Arc::from(t.vm);
    if hv.capabilities().pci_config_ports {
        // The root bus answers for bus 0; on Xen its cycles on the ports reach us only so.
        let bus0 = vmkit::pci::PciFunctions::Bus(0);
        vm.claim_pci_config(bus0).unwrap();
        // Claims are idempotent.
        vm.claim_pci_config(bus0).unwrap();
        if let Some(functions) = released {
            vm.release_pci_config(functions).unwrap();
        }
    }
    let wiring = VirtioPciWiring::new(
        Arc::new(vm.memory()),
        snippets::PCI_ECAM,
        MmioAllocator::new(0xc000_0000, 0xd000_0000).unwrap(),
        GsiAllocator::new(16, 23).unwrap(),
        Arc::new(VmMsi(vm.clone())),
    );
    let mut bus = Bus::new();
    let platform = wiring.finish(&mut bus).unwrap();
    assert_eq!(platform.ecam.base, snippets::PCI_ECAM);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let reports = Arc::clone(&reports);
        runner::from_fn(move |id, exit| {
            if let Some(value) = reported(exit) {
                reports.lock().unwrap().push(value);
                return ExitAction::Continue;
            }
            if let VcpuExit::Hlt = exit {
                return ExitAction::PowerOff;
            }
            bus.handle(id, exit)
        })
    };
    let running =
        VmRunner::start_with(vec![t.vcpu], handler, crate::common::runner_options()).unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    assert_eq!(
        finished[0].outcome.as_ref().unwrap(),
        &VcpuOutcome::PowerOff
    );
    let reports = reports.lock().unwrap().clone();
    reports
}

/// The host bridge's vendor 0x1b36 and device 0x0008 (a generic PCIe host bridge), as one
/// configuration dword.
const HOST_BRIDGE_ID: u32 = 0x0008_1b36;

/// A guest reads the PCI host bridge's identity through ECAM (MMIO), on every backend.
pub fn the_pci_host_bridge_answers_through_ecam(hv: &dyn Hypervisor) {
    let reports = run_with_pci_root(hv, snippets::PCI_ECAM_READ, None);
    assert_eq!(reports[..], [HOST_BRIDGE_ID], "{reports:x?}");
}

/// A guest reads the PCI host bridge's identity through the configuration ports 0xcf8/0xcfc,
/// where they reach the VMM (on Xen, for the functions claimed: a released one reads all
/// ones).
pub fn the_pci_host_bridge_answers_through_the_configuration_ports(hv: &dyn Hypervisor) {
    let reports = run_with_pci_root(hv, snippets::PCI_PORT_READ, None);
    assert_eq!(reports[..], [HOST_BRIDGE_ID], "{reports:x?}");
    // With the host bridge's function released, Xen answers the cycle itself, as for an
    // absent function (all ones); on KVM every cycle still reaches the VMM.
    let host_bridge = vmkit::pci::PciBdf::new(0, 0, 0).unwrap();
    let reports = run_with_pci_root(
        hv,
        snippets::PCI_PORT_READ,
        Some(vmkit::pci::PciFunctions::Function(host_bridge)),
    );
    let expected = match hv.kind() {
        vmkit::HypervisorKind::Xen => u32::MAX,
        _ => HOST_BRIDGE_ID,
    };
    assert_eq!(reports[..], [expected], "{reports:x?}");
}

/// An irqchip that takes MSIs, and configuration cycles on the ports (the guest uses both).
fn pci_msix(caps: &Capabilities) -> Option<&'static str> {
    crate::irqchip(caps).or_else(|| pci_config_ports(caps))
}

/// A guest drives a virtio-pci console's MSI-X as a driver would (snippets::PCI_MSIX):
/// through the configuration ports it enables the function and its MSI-X capability,
/// through BAR 0 it programs two MSI-X table entries, chooses one for configuration changes
/// and one for its receive queue (which it sets up with one buffer), and sets DRIVER_OK.
/// When the device signals a configuration change and then fills the buffer with host
/// input, each message (vmkit-machine's `VmMsi`, `Vm::signal_msi`) reaches the guest's
/// handler for its vector.
pub fn a_virtio_pci_devices_msix_vector_reaches_the_guest(hv: &dyn Hypervisor) {
    use vmkit::pci::PciFunctions;
    use vmkit::vm_memory::{Bytes, GuestAddress};
    use vmkit_machine::{GsiAllocator, MmioAllocator, VirtioPciWiring, VmMsi};
    use vmkit_virtio::console::Console;

    let t = long_mode_vm_with(hv, VmConfig::default().irqchip(true), snippets::PCI_MSIX);
    let vm: Arc<dyn vmkit::Vm> = Arc::from(t.vm);
    vm.claim_pci_config(PciFunctions::Bus(0)).unwrap();
    let mut wiring = VirtioPciWiring::new(
        Arc::new(vm.memory()),
        snippets::PCI_ECAM,
        MmioAllocator::new(0xc000_0000, 0xd000_0000).unwrap(),
        GsiAllocator::new(16, 23).unwrap(),
        Arc::new(VmMsi(vm.clone())),
    );
    let console = wiring
        .attach(vm.as_ref(), Console::new(std::io::sink()), &[])
        .unwrap();
    assert_eq!(
        0x8000_0000 | u32::from(console.slot) << 11,
        snippets::PCI_MSIX_CONFIG
    );
    let mut bus = Bus::new();
    let platform = wiring.finish(&mut bus).unwrap();
    let transport = console.transport.clone();
    // What the guest reads back: the receive queue on MSI-X entry 1, the status
    // (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK), configuration changes on entry 0.
    let ready = 1 << 24 | 0xf << 16;
    let config_vector = u32::from(snippets::PCI_MSIX_VECTOR);
    let queue_vector = u32::from(snippets::PCI_MSIX_QUEUE_VECTOR);
    let reports = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let reports = Arc::clone(&reports);
        runner::from_fn(move |id, exit| {
            if let Some(value) = reported(exit) {
                reports.lock().unwrap().push(value);
                return match value {
                    v if v == ready => {
                        transport.notify_config_change();
                        ExitAction::Continue
                    }
                    v if v == config_vector => {
                        // Host input fills the guest's buffer: a used buffer on queue 0.
                        transport.with_device(|console| console.enqueue_input(b"msix"));
                        transport.process_queue(0).unwrap();
                        ExitAction::Continue
                    }
                    _ => ExitAction::PowerOff,
                };
            }
            if let VcpuExit::Hlt = exit {
                return ExitAction::PowerOff;
            }
            bus.handle(id, exit)
        })
    };
    let running =
        VmRunner::start_with(vec![t.vcpu], handler, crate::common::runner_options()).unwrap();
    let finished = running.join_timeout(GIVE_UP).unwrap();
    assert_eq!(
        finished[0].outcome.as_ref().unwrap(),
        &VcpuOutcome::PowerOff
    );
    let reports = reports.lock().unwrap().clone();
    assert_eq!(
        reports,
        [ready, config_vector, queue_vector],
        "{reports:#x?}"
    );
    let mut input = [0u8; 4];
    vm.memory()
        .read_slice(&mut input, GuestAddress(snippets::PCI_MSIX_BUFFER))
        .unwrap();
    assert_eq!(&input, b"msix");
    assert_eq!(console.transport.take_error().map(|e| e.to_string()), None);
    assert_eq!(console.transport.invalid_accesses(), 0);
    assert_eq!(platform.root.invalid_accesses(), 0);
}

crate::scenarios![
    a_guest_reads_the_pm_timer_and_powers_off_through_s5,
    the_pci_host_bridge_answers_through_ecam,
    the_pci_host_bridge_answers_through_the_configuration_ports => pci_config_ports,
    a_virtio_pci_devices_msix_vector_reaches_the_guest => pci_msix,
    a_guest_suspended_to_ram_wakes_at_its_waking_vector,
    machine_check_banks_survive_a_snapshot => mce,
    the_boot_layers_cpuid_and_mce_banks_reach_the_guest => tsc_deadline_or_mce,
    the_pits_lost_tick_policy_can_be_chosen => pit_reinject,
    the_reserved_ports_never_reach_the_vmm => irqchip_with_reserved_ports,
];
