//! Interrupts reach the guest: the host raises them (IRQ line, MSI, irqfd, routed GSI), the
//! minimal kernel's handler runs and reports the vector on port 0x511. Guest writes reach
//! ioeventfds without exiting.

use vmkit::Hypervisor;

use crate::common;

use std::time::{Duration, Instant};

use crate::common::guest::{Guest, GuestConfig, GIVE_UP};
use crate::common::long_mode_vm;
use vmkit::reserved::IoSpace;
use vmkit::{DataMatch, EventFd, IoEventAddress, IrqRoute, MsiMessage, VcpuExit, VmConfig};
use vmkit_guests::{minimal, snippets};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

/// How long to wait for a report that must *not* come.
const QUIET: Duration = Duration::from_millis(200);

fn irq_guest(hv: &dyn Hypervisor) -> Guest {
    let guest = Guest::boot(hv, GuestConfig::interrupts(1));
    guest.wait_for_serial(minimal::IRQ_READY);
    // The kernel enables the UART's THR-empty interrupt last; vm-superio raises it through the
    // irqfd on GSI 4, so that is the first vector the guest reports.
    assert_eq!(
        guest.next_report(GIVE_UP),
        minimal::gsi_vector(minimal::SERIAL_GSI)
    );
    guest
}

fn wait_signalled(fd: &EventFd) -> u64 {
    let start = Instant::now();
    loop {
        if let Ok(count) = fd.read() {
            return count;
        }
        assert!(start.elapsed() < GIVE_UP, "the eventfd was never signalled");
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn irq_lines_and_msis_reach_the_handler(hv: &dyn Hypervisor) {
    let guest = irq_guest(hv);
    for gsi in [3, 0, 2, 15] {
        match guest.vm.set_irq_line(gsi, true) {
            Ok(()) => {}
            // Xen wires ISA IRQ 0 to IOAPIC pin 2: its pin 0 has no input to drive.
            Err(vmkit::VmError::InvalidRoute { gsi: 0, reason })
                if hv.kind() == vmkit::HypervisorKind::Xen =>
            {
                assert!(reason.contains("pin 0"), "{reason}");
                continue;
            }
            Err(err) => panic!("GSI {gsi}: {err}"),
        }
        guest.vm.set_irq_line(gsi, false).unwrap();
        assert_eq!(
            guest.next_report(GIVE_UP),
            minimal::gsi_vector(gsi),
            "GSI {gsi}"
        );
    }
    // A level-triggered GSI is delivered while it is high (again after each EOI), and no
    // more once it is lowered.
    let level = 20;
    assert!(minimal::gsi_is_level_triggered(level));
    guest.vm.set_irq_line(level, true).unwrap();
    assert_eq!(guest.next_report(GIVE_UP), minimal::gsi_vector(level));
    guest.vm.set_irq_line(level, false).unwrap();
    while let Some(vector) = guest.next_report(QUIET) {
        assert_eq!(
            Some(vector),
            minimal::gsi_vector(level),
            "only GSI {level} was high"
        );
    }
    for vector in [0x38, 0x3f] {
        guest.vm.signal_msi(MsiMessage::x86(0, vector)).unwrap();
        assert_eq!(guest.next_report(GIVE_UP), Some(vector));
    }
    assert_eq!(
        guest.next_report(QUIET),
        None,
        "no interrupt was raised twice"
    );
    guest.finish(false);
}

pub fn irqfd_with_resample_acts_as_a_level_interrupt(hv: &dyn Hypervisor) {
    let guest = irq_guest(hv);
    let gsi = 17;
    assert!(minimal::gsi_is_level_triggered(gsi));
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    let resample = EventFd::new(EFD_NONBLOCK).unwrap();
    guest
        .vm
        .register_irqfd(&irqfd, gsi, Some(&resample))
        .unwrap();
    irqfd.write(1).unwrap();
    assert_eq!(guest.next_report(GIVE_UP), minimal::gsi_vector(gsi));
    // The guest's EOI makes KVM lower the line and tell the device through `resample`.
    assert_eq!(wait_signalled(&resample), 1);
    // The device's condition is gone (it does not write the irqfd again): nothing more comes.
    assert_eq!(guest.next_report(QUIET), None);

    guest.vm.unregister_irqfd(&irqfd, gsi).unwrap();
    irqfd.write(1).unwrap();
    assert_eq!(
        guest.next_report(QUIET),
        None,
        "an unregistered irqfd injects nothing"
    );
    guest.finish(false);
}

pub fn gsi_routing_sends_an_irqfd_as_an_msi(hv: &dyn Hypervisor) {
    let guest = irq_guest(hv);
    let mut routes = IrqRoute::pc_defaults();
    routes.push(IrqRoute::Msi {
        gsi: 30,
        msi: MsiMessage::x86(0, 0x3a),
    });
    guest.vm.set_gsi_routing(&routes).unwrap();
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    guest.vm.register_irqfd(&irqfd, 30, None).unwrap();
    irqfd.write(1).unwrap();
    assert_eq!(guest.next_report(GIVE_UP), Some(0x3a));
    // The legacy routes are still there.
    guest.vm.set_irq_line(6, true).unwrap();
    guest.vm.set_irq_line(6, false).unwrap();
    assert_eq!(guest.next_report(GIVE_UP), minimal::gsi_vector(6));
    guest.finish(false);
}

pub fn ioeventfd_on_a_port_with_and_without_datamatch(hv: &dyn Hypervisor) {
    let guest = irq_guest(hv);
    let report = IoEventAddress::Pio(minimal::IRQ_REPORT_PORT);
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    let vector5 = minimal::gsi_vector(5).unwrap();
    guest
        .vm
        .register_ioeventfd(&fd, report, DataMatch::U8(vector5))
        .unwrap();
    // The guest's report of vector 0x25 now signals the eventfd instead of exiting...
    guest.vm.set_irq_line(5, true).unwrap();
    guest.vm.set_irq_line(5, false).unwrap();
    assert_eq!(wait_signalled(&fd), 1);
    // ...while other values still exit.
    guest.vm.set_irq_line(7, true).unwrap();
    guest.vm.set_irq_line(7, false).unwrap();
    assert_eq!(guest.next_report(GIVE_UP), minimal::gsi_vector(7));
    assert!(fd.read().is_err(), "0x27 does not match");

    guest
        .vm
        .unregister_ioeventfd(&fd, report, DataMatch::U8(vector5))
        .unwrap();
    let any = EventFd::new(EFD_NONBLOCK).unwrap();
    guest
        .vm
        .register_ioeventfd(&any, report, DataMatch::Any)
        .unwrap();
    guest.vm.set_irq_line(9, true).unwrap();
    guest.vm.set_irq_line(9, false).unwrap();
    assert_eq!(wait_signalled(&any), 1);
    assert_eq!(
        guest.next_report(QUIET),
        None,
        "the report went to the eventfd"
    );
    guest.finish(false);
}

pub fn ioeventfd_on_mmio_matches_the_written_value(hv: &dyn Hypervisor) {
    // mov dword [0xd0000000], 7; mov dword [0xd0000000], 9; out 0x80, al; hlt
    let (first, second) = (snippets::MMIO_FIRST_WRITE, snippets::MMIO_SECOND_WRITE);
    assert_eq!(snippets::MMIO_BASE, common::MMIO_ADDR);
    let mut t = long_mode_vm(hv, snippets::MMIO_TWO_WRITES);
    let fd = EventFd::new(EFD_NONBLOCK).unwrap();
    let addr = IoEventAddress::Mmio(common::MMIO_ADDR);
    t.vm.register_ioeventfd(&fd, addr, DataMatch::U32(first))
        .unwrap();
    match t.vcpu.run().unwrap() {
        VcpuExit::MmioWrite { addr, data } => {
            assert_eq!((addr, data), (common::MMIO_ADDR, &second.to_le_bytes()[..]))
        }
        other => panic!("expected only the write of 9 to exit, got {other:?}"),
    }
    assert_eq!(
        fd.read().unwrap(),
        1,
        "the write of 7 signalled the eventfd"
    );
    // The report port, unless the hypervisor handles it itself (Xen lets byte accesses to
    // port 0x80 reach the real port): then the final hlt comes next.
    let report_reserved = hv
        .capabilities()
        .reserved_conflict(
            &VmConfig::default(),
            IoSpace::Pio,
            u64::from(snippets::REPORT_PORT),
            1,
        )
        .is_some();
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: snippets::REPORT_PORT,
            ..
        } if !report_reserved => {}
        VcpuExit::Hlt if report_reserved => {}
        other => panic!("expected the report (reserved: {report_reserved}), got {other:?}"),
    }
    // Unregistering with a different match is an error that names the address.
    let err =
        t.vm.unregister_ioeventfd(&fd, addr, DataMatch::U32(first + 1))
            .unwrap_err();
    assert!(err.to_string().contains("MMIO address 0xd0000000"), "{err}");
    t.vm.unregister_ioeventfd(&fd, addr, DataMatch::U32(first))
        .unwrap();
}

pub fn irqchip_state_shows_what_the_guest_programmed_and_round_trips(hv: &dyn Hypervisor) {
    let guest = irq_guest(hv);
    let mut state = guest.vm.irqchip_state().unwrap();
    // The kernel masked both PICs and routed GSI 17 to vector 0x31, level-triggered, unmasked.
    assert_eq!((state.pic_master.imr, state.pic_slave.imr), (0xff, 0xff));
    let entry = state.ioapic.redirection_table[17];
    assert_eq!(entry & 0xff, 0x31, "vector");
    assert_ne!(entry & (1 << 15), 0, "level-triggered");
    assert_eq!(entry & (1 << 16), 0, "unmasked");

    // Written state is what is read back.
    state.ioapic.redirection_table[3] = 0x0001_0000 | 0x33; // masked, vector 0x33
    state.pic_slave.irq_base = 0x70;
    guest.vm.set_irqchip_state(&state).unwrap();
    assert_eq!(guest.vm.irqchip_state().unwrap(), state);
    // And it is what the hypervisor acts on: GSI 3 is now masked.
    guest.vm.set_irq_line(3, true).unwrap();
    guest.vm.set_irq_line(3, false).unwrap();
    assert_eq!(
        guest.next_report(QUIET),
        None,
        "a masked pin delivers nothing"
    );
    guest.finish(false);
}

pub fn pit_state_round_trips(hv: &dyn Hypervisor) {
    let vm = hv
        .create_vm(&VmConfig::default().irqchip(true).pit(true))
        .unwrap();
    let mut pit = vm.pit_state().unwrap();
    pit.channels[2].mode = 3;
    pit.channels[2].count = 0x1234;
    pit.channels[2].rw_mode = 3;
    vm.set_pit_state(&pit).unwrap();
    let back = vm.pit_state().unwrap();
    assert_eq!(
        (
            back.channels[2].mode,
            back.channels[2].count,
            back.channels[2].rw_mode
        ),
        (3, 0x1234, 3)
    );
    let no_pit = hv.create_vm(&VmConfig::default().irqchip(true)).unwrap();
    assert!(matches!(
        no_pit.pit_state(),
        Err(vmkit::VmError::NoPit { .. })
    ));
}

/// What a snapshot restore does with the interrupt controllers and the PIT: the state of one
/// VM (a guest's programming of the PICs and IOAPIC, a PIT with its channels set) loads into
/// a fresh VM with no vCPU yet and reads back the same.
pub fn irqchip_and_pit_state_move_to_a_fresh_vm(hv: &dyn Hypervisor) {
    let guest = irq_guest(hv);
    let irqchip = guest.vm.irqchip_state().unwrap();
    guest.finish(false);
    let config = VmConfig::default().irqchip(true).pit(true);
    let source = hv.create_vm(&config).unwrap();
    let mut pit = source.pit_state().unwrap();
    // Channel 0 as a kernel programs its tick (mode 2, ~100 Hz), channel 2 for the speaker.
    pit.channels[0].mode = 2;
    pit.channels[0].count = 11932;
    pit.channels[0].rw_mode = 3;
    pit.channels[2].mode = 3;
    pit.channels[2].count = 0x1234;
    pit.channels[2].rw_mode = 3;
    source.set_pit_state(&pit).unwrap();
    let pit = source.pit_state().unwrap();
    drop(source);

    let fresh = hv.create_vm(&config).unwrap();
    fresh.set_irqchip_state(&irqchip).unwrap();
    fresh.set_pit_state(&pit).unwrap();
    assert_eq!(fresh.irqchip_state().unwrap(), irqchip);
    // Both hypervisors restart each count when the state loads: the load time is theirs.
    let without_load_time = |state: vmkit::arch::x86_64::PitState| {
        state.channels.map(|c| vmkit::arch::x86_64::PitChannel {
            count_load_time: 0,
            ..c
        })
    };
    let back = fresh.pit_state().unwrap();
    assert_eq!(without_load_time(back), without_load_time(pit));
    assert_eq!(back.flags, pit.flags);
    assert_eq!(back.channels[0].count, 11932);
}

fn pit_and_irqchip_state(caps: &vmkit::Capabilities) -> Option<&'static str> {
    crate::irqchip_state(caps).or_else(|| crate::pit(caps))
}

pub fn the_pit_is_emulated_in_the_hypervisor(hv: &dyn Hypervisor) {
    // mov al, 0x34; out 0x43, al; out 0x81, al; hlt -- program PIT channel 0, then report
    // (a byte on port 0x81: Xen passes byte writes to port 0x80 through to the hardware).
    let code = snippets::PIT_PROGRAM;
    let mut t =
        crate::common::long_mode_vm_with(hv, VmConfig::default().irqchip(true).pit(true), code);
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut { port, .. } => assert_eq!(
            port,
            snippets::BYTE_REPORT_PORT,
            "the PIT command port was handled in the hypervisor"
        ),
        other => panic!("unexpected exit {other:?}"),
    }
    let mut t = long_mode_vm(hv, code);
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut { port, data, .. } => assert_eq!(
            (port, data),
            (snippets::PIT_COMMAND_PORT, &[snippets::PIT_COMMAND][..]),
            "without a PIT the VMM sees it"
        ),
        other => panic!("unexpected exit {other:?}"),
    }
    let err = hv
        .create_vm(&VmConfig::default().pit(true))
        .map(|_| ())
        .unwrap_err();
    assert!(
        err.to_string().contains("needs the in-kernel irqchip"),
        "{err}"
    );
}

/// The irqchip's state loads while the only vCPU waits for the answer to an MMIO read (as a
/// running VM's vCPU thread may be at any time), and the guest still gets that answer. On Xen
/// every load carries each vCPU's CPU record, which makes a vCPU in the middle of an access
/// send it again; vmkit answers the repeat as before.
pub fn irqchip_state_loads_while_the_vcpu_waits_for_an_mmio_read(hv: &dyn Hypervisor) {
    // A dword read at MMIO_ADDR echoed to port 0x80, then MMIO writes; hlt
    let mut t = crate::common::long_mode_vm_with(
        hv,
        VmConfig::default().irqchip(true),
        snippets::MMIO_ACCESSES,
    );
    let answer = 0x5eed_f00d;
    common::answer_the_mmio_read(t.vcpu.as_mut(), answer);
    // The answer is given on the next run(); until then the read is in flight.
    let mut state = t.vm.irqchip_state().unwrap();
    state.ioapic.redirection_table[3] = 0x0001_0000 | 0x33; // masked, vector 0x33
    t.vm.set_irqchip_state(&state).unwrap();
    assert_eq!(t.vm.irqchip_state().unwrap(), state);
    common::expect_the_echo(t.vcpu.as_mut(), answer);
}

crate::scenarios![
    the_pit_is_emulated_in_the_hypervisor => crate::pit,
    pit_state_round_trips => crate::pit,
    irqchip_state_shows_what_the_guest_programmed_and_round_trips => crate::irqchip_state,
    irqchip_state_loads_while_the_vcpu_waits_for_an_mmio_read => crate::irqchip_state,
    irqchip_and_pit_state_move_to_a_fresh_vm => pit_and_irqchip_state,
    irq_lines_and_msis_reach_the_handler => crate::irqchip,
    irqfd_with_resample_acts_as_a_level_interrupt => crate::irqfd_resample,
    gsi_routing_sends_an_irqfd_as_an_msi => crate::irqchip,
    ioeventfd_on_a_port_with_and_without_datamatch => crate::irqchip,
    ioeventfd_on_mmio_matches_the_written_value => crate::ioeventfd,
    a_split_irqchip_delivers_irqfds_and_level_eois_through_the_userspace_ioapic =>
        crate::split_irqchip,
];

/// A split irqchip: the guest programs the userspace IOAPIC (vmkit-devices' `IoApic`, on the
/// harness's bus) through MMIO exits; irqfds on its GSIs reach the guest through the routes
/// it keeps; a level-triggered pin raised on it is sent again after the guest's EOI, which
/// comes back as `VcpuExit::IoapicEoi`, while the line stays asserted, and not after.
pub fn a_split_irqchip_delivers_irqfds_and_level_eois_through_the_userspace_ioapic(
    hv: &dyn Hypervisor,
) {
    assert!(matches!(
        hv.create_vm(&VmConfig::default().split_irqchip(24).pit(true)),
        Err(vmkit::HypervisorError::InvalidConfig { .. })
    ));
    let guest = Guest::boot(hv, GuestConfig::split_interrupts(1));
    guest.wait_for_serial(minimal::IRQ_READY);
    let ioapic = guest.ioapic.clone().unwrap();
    // The guest unmasked every pin: each is routed, GSI 4 (the serial's irqfd) first.
    let edge = ioapic.entry(minimal::SERIAL_GSI).unwrap();
    assert_eq!(edge & (1 << 16), 0, "pin 4 unmasked: {edge:#x}");
    assert_eq!(
        guest.next_report(GIVE_UP),
        minimal::gsi_vector(minimal::SERIAL_GSI)
    );
    // Another irqfd, on an edge-triggered pin.
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    guest.vm.register_irqfd(&irqfd, 7, None).unwrap();
    irqfd.write(1).unwrap();
    assert_eq!(guest.next_report(GIVE_UP), minimal::gsi_vector(7));

    // A level-triggered pin, raised on the IOAPIC: sent, in service until the guest's EOI.
    let gsi = 17;
    assert!(minimal::gsi_is_level_triggered(gsi));
    ioapic.set_irq(gsi, true).unwrap();
    assert_eq!(guest.next_report(GIVE_UP), minimal::gsi_vector(gsi));
    // Still asserted: the EOI exit makes the IOAPIC send it again.
    assert_eq!(guest.next_report(GIVE_UP), minimal::gsi_vector(gsi));
    ioapic.set_irq(gsi, false).unwrap();
    // Drain what was sent before the line went down; then nothing more comes, and the last
    // EOI took the pin out of service.
    while guest.next_report(QUIET).is_some() {}
    let entry = ioapic.entry(gsi).unwrap();
    assert_eq!(entry & (1 << 14), 0, "remote IRR clear: {entry:#x}");
    irqfd.write(1).unwrap();
    assert_eq!(guest.next_report(GIVE_UP), minimal::gsi_vector(7));
    guest.finish(false);
}
