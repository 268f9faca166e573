//! Every kind of exit, each caused by a few guest instructions (`vmkit_guests::snippets`) on
//! the real hypervisor, checking what the host saw and what the guest read back.

use vmkit::Hypervisor;

use crate::common::{long_mode_vm, next_exit, CODE_ADDR, MMIO_ADDR};
use vm_memory::{Bytes, GuestAddress};
use vmkit::{GuestDebug, VcpuExit};
use vmkit_guests::snippets::{self, BYTE_REPORT_PORT, REPORT_PORT};

// The snippets' MMIO address is the one the test VMs leave unmapped.
const _: () = assert!(snippets::MMIO_BASE == MMIO_ADDR);

pub fn port_writes_of_each_width(hv: &dyn Hypervisor) {
    // A byte to port 0x81, a word and a dword to port 0x3f8, hlt. (Byte accesses use port
    // 0x81, not 0x80: by default Xen lets HVM guests reach the real port 0x80, so they never
    // exit there.)
    let code = snippets::PORT_WRITES;
    let mut t = long_mode_vm(hv, code);
    let expected: [(u16, u8, &[u8]); 3] = [
        (BYTE_REPORT_PORT, 1, &[snippets::PORT_WRITES_BYTE]),
        (
            snippets::SERIAL_PORT,
            2,
            &snippets::PORT_WRITES_WORD.to_le_bytes(),
        ),
        (
            snippets::SERIAL_PORT,
            4,
            &snippets::PORT_WRITES_DWORD.to_le_bytes(),
        ),
    ];
    for (want_port, want_size, want_data) in expected {
        match t.vcpu.run().unwrap() {
            VcpuExit::IoOut { port, size, data } => {
                assert_eq!((port, size, data), (want_port, want_size, want_data));
            }
            other => panic!("expected a port write to {want_port:#x}, got {other:?}"),
        }
    }
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
}

pub fn port_reads_reach_the_guest(hv: &dyn Hypervisor) {
    // A byte from port 0x61, a dword from port 0x71, echoed to ports 0x80 and 0x81 (0x81:
    // see port_writes_of_each_width), hlt.
    let mut t = long_mode_vm(hv, snippets::PORT_READS);
    answer_the_byte_read(t.vcpu.as_mut(), 0x42);
    finish_port_reads(t.vcpu.as_mut(), 0x42);
}

/// Runs `vcpu` (at the start of `snippets::PORT_READS`) to its byte read and answers `byte`.
fn answer_the_byte_read(vcpu: &mut dyn vmkit::Vcpu, byte: u8) {
    match vcpu.run().unwrap() {
        VcpuExit::IoIn { port, size, data } => {
            assert_eq!(
                (port, size, data.len()),
                (snippets::PORT_READS_BYTE_PORT, 1, 1)
            );
            data[0] = byte;
        }
        other => panic!("expected a byte read from port 0x61, got {other:?}"),
    }
}

/// Runs `vcpu` (past `snippets::PORT_READS`'s byte read) to its end: answers the dword read
/// and checks that the guest echoes both answers, the byte read having got `byte`.
fn finish_port_reads(vcpu: &mut dyn vmkit::Vcpu, byte: u8) {
    match vcpu.run().unwrap() {
        VcpuExit::IoIn { port, size, data } => {
            assert_eq!(
                (port, size, data.len()),
                (snippets::PORT_READS_DWORD_PORT, 4, 4)
            );
            data.copy_from_slice(&0xfeed_beefu32.to_le_bytes());
        }
        other => panic!("expected a dword read from port 0x71, got {other:?}"),
    }
    // The guest echoes what it read, so these prove the answers arrived.
    match vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: REPORT_PORT,
            size: 4,
            data,
        } => {
            assert_eq!(data, 0xfeed_beefu32.to_le_bytes())
        }
        other => panic!("expected the guest to echo the dword, got {other:?}"),
    }
    match vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: BYTE_REPORT_PORT,
            size: 1,
            data,
        } => assert_eq!(data, [byte]),
        other => panic!("expected the guest to echo the byte, got {other:?}"),
    }
    assert_eq!(next_exit(vcpu), "Hlt");
}

/// A vCPU saved between a port read's exit and its next `run()` (as a runner's pause takes
/// it) carries the answer: restored into a fresh VM it goes on past the `in` with the data in
/// its register, neither repeating the read nor losing it; the original goes on the same way.
pub fn a_vcpu_saved_after_a_port_read_resumes_with_the_answer(hv: &dyn Hypervisor) {
    let caps = hv.capabilities().clone();
    let features = vmkit::snapshot::Features::for_vm(&vmkit::VmConfig::default(), &caps);
    let mut t = long_mode_vm(hv, snippets::PORT_READS);
    answer_the_byte_read(t.vcpu.as_mut(), 0x5a);
    let msrs = vmkit::snapshot::readable_msrs(t.vcpu.as_ref(), &hv.msr_index_list());
    let state = vmkit::snapshot::save_vcpu(t.vcpu.as_ref(), &msrs, features).unwrap();
    assert_eq!(state.regs.rax & 0xff, 0x5a, "rax {:#x}", state.regs.rax);
    let mut fresh = long_mode_vm(hv, snippets::PORT_READS);
    vmkit::snapshot::restore_vcpu(fresh.vcpu.as_ref(), &state).unwrap();
    finish_port_reads(fresh.vcpu.as_mut(), 0x5a);
    finish_port_reads(t.vcpu.as_mut(), 0x5a);
}

pub fn string_port_reads_keep_the_access_width(hv: &dyn Hypervisor) {
    // rep insb of six bytes from port 0x90 to 0x200000, hlt
    let code = snippets::STRING_PORT_READS;
    let mut t = long_mode_vm(hv, code);
    let mut next = b'a';
    loop {
        match t.vcpu.run().unwrap() {
            VcpuExit::IoIn { port, size, data } => {
                assert_eq!((port, size), (snippets::STRING_READS_PORT, 1));
                // A hypervisor may batch `rep ins`: one exit may carry several accesses.
                for byte in data.iter_mut() {
                    *byte = next;
                    next += 1;
                }
            }
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    assert_eq!(snippets::STRING_READS_COUNT, 6);
    assert_eq!(next, b'g', "six one-byte reads");
    let mut stored = [0u8; 6];
    t.vm.memory()
        .read_slice(&mut stored, GuestAddress(snippets::STRING_READS_BUFFER))
        .unwrap();
    assert_eq!(&stored, b"abcdef");
}

pub fn mmio_reads_and_writes(hv: &dyn Hypervisor) {
    // A dword read at MMIO_ADDR echoed to port 0x80; a dword, a qword and a byte written at
    // MMIO_ADDR + 8, + 16 and + 3; hlt
    let code = snippets::MMIO_ACCESSES;
    let mut t = long_mode_vm(hv, code);
    crate::common::answer_the_mmio_read(t.vcpu.as_mut(), 0xcafe_f00d);
    crate::common::expect_the_echo(t.vcpu.as_mut(), 0xcafe_f00d);
    let writes: [(u64, &[u8]); 3] = [
        (
            MMIO_ADDR + snippets::MMIO_DWORD_OFFSET,
            &snippets::MMIO_DWORD.to_le_bytes(),
        ),
        (
            MMIO_ADDR + snippets::MMIO_QWORD_OFFSET,
            &snippets::MMIO_QWORD.to_le_bytes(),
        ),
        (
            MMIO_ADDR + snippets::MMIO_BYTE_OFFSET,
            &[snippets::MMIO_BYTE],
        ),
    ];
    for (want_addr, want_data) in writes {
        match t.vcpu.run().unwrap() {
            VcpuExit::MmioWrite { addr, data } => assert_eq!((addr, data), (want_addr, want_data)),
            other => panic!("expected an MMIO write at {want_addr:#x}, got {other:?}"),
        }
    }
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
}

pub fn triple_fault_is_a_shutdown_exit(hv: &dyn Hypervisor) {
    // lidt of an empty IDT; ud2  -- #UD with an empty IDT escalates to a triple fault.
    let code = snippets::TRIPLE_FAULT;
    let mut t = long_mode_vm(hv, code);
    assert_eq!(next_exit(t.vcpu.as_mut()), "Shutdown");
}

pub fn single_step_reports_each_instruction(hv: &dyn Hypervisor) {
    // nop; inc rax; inc rax; hlt
    let code = snippets::NOP_INC_INC_HLT;
    let mut t = long_mode_vm(hv, code);
    t.vcpu
        .set_guest_debug(&GuestDebug {
            single_step: true,
            ..GuestDebug::default()
        })
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match t.vcpu.run().unwrap() {
            VcpuExit::Debug(debug) => {
                assert_eq!(debug.exception, 1, "single-step is a #DB");
                seen.push(debug.pc);
            }
            other => panic!("expected a debug exit, got {other:?}"),
        }
        // The trap flag that steps the guest is the hypervisor's, not part of its state.
        let rflags = t.vcpu.regs().unwrap().rflags;
        assert_eq!(rflags & (1 << 8), 0, "TF shows in RFLAGS {rflags:#x}");
    }
    // Each exit reports the next instruction to execute.
    assert_eq!(
        seen,
        [
            CODE_ADDR + snippets::NOP_INC_INC_HLT_FIRST_INC,
            CODE_ADDR + snippets::NOP_INC_INC_HLT_SECOND_INC,
            CODE_ADDR + snippets::NOP_INC_INC_HLT_HLT,
        ]
    );
    t.vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
    assert_eq!(t.vcpu.regs().unwrap().rax, 2);
}

pub fn hardware_breakpoint_stops_before_the_instruction(hv: &dyn Hypervisor) {
    // nop; inc rax; inc rax; hlt, stopped at the second inc
    let code = snippets::NOP_INC_INC_HLT;
    let second_inc = CODE_ADDR + snippets::NOP_INC_INC_HLT_SECOND_INC;
    let mut t = long_mode_vm(hv, code);
    t.vcpu
        .set_guest_debug(&GuestDebug {
            hw_breakpoints: vec![second_inc],
            ..GuestDebug::default()
        })
        .unwrap();
    match t.vcpu.run().unwrap() {
        VcpuExit::Debug(debug) => assert_eq!(debug.pc, second_inc),
        other => panic!("expected a breakpoint exit, got {other:?}"),
    }
    assert_eq!(t.vcpu.regs().unwrap().rax, 1, "only the first inc ran");
    let too_many = GuestDebug {
        hw_breakpoints: vec![0; 5],
        ..GuestDebug::default()
    };
    let err = t.vcpu.set_guest_debug(&too_many).unwrap_err();
    assert!(err.to_string().contains("5 hardware breakpoints"), "{err}");
}

crate::scenarios![
    port_writes_of_each_width,
    port_reads_reach_the_guest,
    a_vcpu_saved_after_a_port_read_resumes_with_the_answer => crate::register_snapshots,
    string_port_reads_keep_the_access_width,
    mmio_reads_and_writes,
    triple_fault_is_a_shutdown_exit,
    single_step_reports_each_instruction => crate::guest_debug,
    hardware_breakpoint_stops_before_the_instruction => crate::guest_debug,
];
