//! Every kind of exit, each caused by a few hand-assembled guest instructions on the real
//! hypervisor, checking what the host saw and what the guest read back.

use vmkit::Hypervisor;

use crate::common::{long_mode_vm, next_exit, CODE_ADDR, MMIO_ADDR};
use vm_memory::{Bytes, GuestAddress};
use vmkit::{GuestDebug, VcpuExit};

pub fn port_writes_of_each_width(hv: &dyn Hypervisor) {
    // mov al, 0x5a; out 0x81, al; mov ax, 0x1234; mov dx, 0x3f8; out dx, ax;
    // mov eax, 0xdeadbeef; out dx, eax; hlt
    // (Byte accesses use port 0x81, not 0x80: by default Xen lets HVM guests reach the real
    // port 0x80, so they never exit there.)
    let code = [
        0xb0, 0x5a, 0xe6, 0x81, 0x66, 0xb8, 0x34, 0x12, 0x66, 0xba, 0xf8, 0x03, 0x66, 0xef, 0xb8,
        0xef, 0xbe, 0xad, 0xde, 0xef, 0xf4,
    ];
    let mut t = long_mode_vm(hv, &code);
    let expected: [(u16, u8, &[u8]); 3] = [
        (0x81, 1, &[0x5a]),
        (0x3f8, 2, &[0x34, 0x12]),
        (0x3f8, 4, &[0xef, 0xbe, 0xad, 0xde]),
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
    // in al, 0x61; mov ebx, eax; mov dx, 0x71; in eax, dx; out 0x80, eax;
    // mov eax, ebx; out 0x81, al; hlt  (0x81: see port_writes_of_each_width)
    let code = [
        0xe4, 0x61, 0x89, 0xc3, 0x66, 0xba, 0x71, 0x00, 0xed, 0xe7, 0x80, 0x89, 0xd8, 0xe6, 0x81,
        0xf4,
    ];
    let mut t = long_mode_vm(hv, &code);
    match t.vcpu.run().unwrap() {
        VcpuExit::IoIn { port, size, data } => {
            assert_eq!((port, size, data.len()), (0x61, 1, 1));
            data[0] = 0x42;
        }
        other => panic!("expected a byte read from port 0x61, got {other:?}"),
    }
    match t.vcpu.run().unwrap() {
        VcpuExit::IoIn { port, size, data } => {
            assert_eq!((port, size, data.len()), (0x71, 4, 4));
            data.copy_from_slice(&0xfeed_beefu32.to_le_bytes());
        }
        other => panic!("expected a dword read from port 0x71, got {other:?}"),
    }
    // The guest echoes what it read, so these prove the answers arrived.
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: 0x80,
            size: 4,
            data,
        } => {
            assert_eq!(data, 0xfeed_beefu32.to_le_bytes())
        }
        other => panic!("expected the guest to echo the dword, got {other:?}"),
    }
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: 0x81,
            size: 1,
            data,
        } => assert_eq!(data, [0x42]),
        other => panic!("expected the guest to echo the byte, got {other:?}"),
    }
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
}

pub fn string_port_reads_keep_the_access_width(hv: &dyn Hypervisor) {
    // mov edi, 0x200000; mov ecx, 6; mov dx, 0x90; rep insb; hlt
    let code = [
        0xbf, 0x00, 0x00, 0x20, 0x00, 0xb9, 0x06, 0x00, 0x00, 0x00, 0x66, 0xba, 0x90, 0x00, 0xf3,
        0x6c, 0xf4,
    ];
    let mut t = long_mode_vm(hv, &code);
    let mut next = b'a';
    loop {
        match t.vcpu.run().unwrap() {
            VcpuExit::IoIn { port, size, data } => {
                assert_eq!((port, size), (0x90, 1));
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
    assert_eq!(next, b'g', "six one-byte reads");
    let mut stored = [0u8; 6];
    t.vm.memory()
        .read_slice(&mut stored, GuestAddress(0x20_0000))
        .unwrap();
    assert_eq!(&stored, b"abcdef");
}

pub fn mmio_reads_and_writes(hv: &dyn Hypervisor) {
    // mov ebx, 0xd0000000; mov eax, [rbx]; out 0x80, eax; mov dword [rbx+8], 0x11223344;
    // mov rax, 0x0102030405060708; mov [rbx+16], rax; mov byte [rbx+3], 0x99; hlt
    let code = [
        0xbb, 0x00, 0x00, 0x00, 0xd0, 0x8b, 0x03, 0xe7, 0x80, 0xc7, 0x43, 0x08, 0x44, 0x33, 0x22,
        0x11, 0x48, 0xb8, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x48, 0x89, 0x43, 0x10,
        0xc6, 0x43, 0x03, 0x99, 0xf4,
    ];
    let mut t = long_mode_vm(hv, &code);
    match t.vcpu.run().unwrap() {
        VcpuExit::MmioRead { addr, data } => {
            assert_eq!((addr, data.len()), (MMIO_ADDR, 4));
            data.copy_from_slice(&0xcafe_f00du32.to_le_bytes());
        }
        other => panic!("expected an MMIO read, got {other:?}"),
    }
    match t.vcpu.run().unwrap() {
        VcpuExit::IoOut {
            port: 0x80, data, ..
        } => {
            assert_eq!(
                data,
                0xcafe_f00du32.to_le_bytes(),
                "the guest read what the host answered"
            )
        }
        other => panic!("expected the guest to echo the MMIO value, got {other:?}"),
    }
    let writes: [(u64, &[u8]); 3] = [
        (MMIO_ADDR + 8, &0x1122_3344u32.to_le_bytes()),
        (MMIO_ADDR + 16, &0x0102_0304_0506_0708u64.to_le_bytes()),
        (MMIO_ADDR + 3, &[0x99]),
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
    // lidt [rip+2]; ud2; idtr: dw 0; dq 0  -- #UD with an empty IDT escalates to a triple fault.
    let code = [
        0x0f, 0x01, 0x1d, 0x02, 0x00, 0x00, 0x00, 0x0f, 0x0b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
    ];
    let mut t = long_mode_vm(hv, &code);
    assert_eq!(next_exit(t.vcpu.as_mut()), "Shutdown");
}

pub fn single_step_reports_each_instruction(hv: &dyn Hypervisor) {
    // nop; inc rax; inc rax; hlt
    let code = [0x90, 0x48, 0xff, 0xc0, 0x48, 0xff, 0xc0, 0xf4];
    let mut t = long_mode_vm(hv, &code);
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
    }
    // Each exit reports the next instruction to execute.
    assert_eq!(seen, [CODE_ADDR + 1, CODE_ADDR + 4, CODE_ADDR + 7]);
    t.vcpu.set_guest_debug(&GuestDebug::default()).unwrap();
    assert_eq!(next_exit(t.vcpu.as_mut()), "Hlt");
    assert_eq!(t.vcpu.regs().unwrap().rax, 2);
}

pub fn hardware_breakpoint_stops_before_the_instruction(hv: &dyn Hypervisor) {
    let code = [0x90, 0x48, 0xff, 0xc0, 0x48, 0xff, 0xc0, 0xf4];
    let mut t = long_mode_vm(hv, &code);
    t.vcpu
        .set_guest_debug(&GuestDebug {
            hw_breakpoints: vec![CODE_ADDR + 4],
            ..GuestDebug::default()
        })
        .unwrap();
    match t.vcpu.run().unwrap() {
        VcpuExit::Debug(debug) => assert_eq!(debug.pc, CODE_ADDR + 4),
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
    string_port_reads_keep_the_access_width,
    mmio_reads_and_writes,
    triple_fault_is_a_shutdown_exit,
    single_step_reports_each_instruction => crate::guest_debug,
    hardware_breakpoint_stops_before_the_instruction => crate::guest_debug,
];
