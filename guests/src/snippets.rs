//! Test snippets: a few instructions each, written in readable assembly
//! (`src/snippets.S`) and assembled at build time, for tests that need a guest
//! to do one precise thing (a port write of each width, an MMIO access, a
//! triple fault...).
//!
//! Each snippet is a `&[u8]` of 64-bit code: place it anywhere in guest
//! memory (unless its documentation says otherwise) and enter it in long
//! mode at CPL0, for example with
//! `vmkit::arch::x86_64::boot::configure_long_mode`. Its documentation says
//! what it does, which registers it uses and which ports and addresses it
//! touches, and shows its source.
//!
//! The ports, addresses and values the snippets use are the constants here
//! (such as [`REPORT_PORT`] or [`MMIO_BASE`]); the assembly gets them from the
//! same list (`src/snippet_constants.rs`, passed to the assembler as `-D`
//! definitions), so a test that asserts them cannot disagree with the code.
//! Offsets inside a snippet that a test needs (where an instruction starts,
//! where an immediate to patch is) are `u64` constants made from labels in
//! the assembly, such as [`NOP_INC_INC_HLT_SECOND_INC`].
//!
//! The snippets only use instructions that this project's software-emulated
//! KVM test host handles (see the crate documentation).
//!
//! ```
//! use vmkit_guests::snippets;
//!
//! // out %al, $0x81; hlt
//! assert_eq!(snippets::PIO_OUT_HLT, [0xe6, 0x81, 0xf4]);
//! assert_eq!(snippets::BYTE_REPORT_PORT, 0x81);
//! assert_eq!(snippets::HLT, [0xf4]);
//! ```

/// Makes each entry of `src/snippet_constants.rs` a documented `pub const`.
macro_rules! constants {
    ($($(#[$meta:meta])* $name:ident: $ty:ty = $value:expr;)*) => {
        $($(#[$meta])* pub const $name: $ty = $value;)*
    };
}

include!("snippet_constants.rs");

include!(concat!(env!("OUT_DIR"), "/snippets.rs"));

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(code: &[u8], needle: &[u8]) -> bool {
        code.windows(needle.len()).any(|w| w == needle)
    }

    fn at(code: &[u8], offset: u64) -> &[u8] {
        &code[usize::try_from(offset).unwrap()..]
    }

    #[test]
    fn snippets_end_in_hlt_or_a_loop_back() {
        for (name, code) in ALL {
            let last = code[code.len() - 1];
            let loops = code.len() >= 2 && code[code.len() - 2] == 0xeb && last >= 0x80;
            let descriptor = *name == "TRIPLE_FAULT";
            assert!(last == 0xf4 || loops || descriptor, "{name}: {code:02x?}");
        }
        assert_eq!(HLT, [0xf4]);
        assert_eq!(SPIN, [0xeb, 0xfe], "jmp to itself");
    }

    #[test]
    fn the_constants_are_the_immediates_in_the_code() {
        // out %al, imm8 is 0xe6 imm8; out %eax, imm8 is 0xe7 imm8.
        assert!(contains(PORT_WRITES, &[0xb0, PORT_WRITES_BYTE]));
        assert!(contains(PORT_WRITES, &[0xe6, BYTE_REPORT_PORT as u8]));
        assert!(contains(PORT_WRITES, &PORT_WRITES_WORD.to_le_bytes()));
        assert!(contains(PORT_WRITES, &SERIAL_PORT.to_le_bytes()));
        assert!(contains(PORT_WRITES, &PORT_WRITES_DWORD.to_le_bytes()));
        assert!(contains(PORT_READS, &[0xe4, PORT_READS_BYTE_PORT as u8]));
        assert!(contains(PCI_MSIX, &PCI_MSIX_CONFIG.to_le_bytes()));
        assert!(contains(PCI_MSIX, &[0xb8, PCI_MSIX_VECTOR, 0, 0, 0]));
        assert!(contains(PCI_MSIX, &[0xb8, PCI_MSIX_QUEUE_VECTOR, 0, 0, 0]));
        assert!(contains(PORT_READS, &[0xe7, REPORT_PORT as u8]));
        assert!(contains(STRING_PORT_READS, &[0xf3, 0x6c]), "rep insb");
        assert!(contains(
            STRING_PORT_READS,
            &(STRING_READS_BUFFER as u32).to_le_bytes()
        ));
        assert!(contains(
            STRING_PORT_READS,
            &STRING_READS_COUNT.to_le_bytes()
        ));
        assert!(contains(MMIO_ACCESSES, &(MMIO_BASE as u32).to_le_bytes()));
        assert!(contains(MMIO_ACCESSES, &MMIO_QWORD.to_le_bytes()));
        assert!(contains(
            MMIO_ACCESSES,
            &[0xc6, 0x43, MMIO_BYTE_OFFSET as u8, MMIO_BYTE]
        ));
        assert!(contains(RAM_WRITE, &MARKER.to_le_bytes()));
        assert!(contains(ROM_READ_WRITE, &ROM_WRITE_VALUE.to_le_bytes()));
        assert!(contains(ADD_AND_LOAD_RCX, &LOADED_RCX.to_le_bytes()));
        assert_eq!(PIO_LOOP, [0xe6, BYTE_REPORT_PORT as u8, 0xeb, 0xfc]);
        assert_eq!(REPORT_LOOP, [0xe6, REPORT_PORT as u8, 0xeb, 0xfc]);
        assert!(contains(PIT_PROGRAM, &[0xb0, PIT_COMMAND]));
        assert!(contains(PIT_PROGRAM, &[0xe6, PIT_COMMAND_PORT as u8]));
        assert!(contains(PIT_PROGRAM, &[0xe6, BYTE_REPORT_PORT as u8]));
        assert!(contains(DEBUG_EXIT_DWORD, &DEBUG_EXIT_PORT.to_le_bytes()));
        assert!(contains(
            DEBUG_EXIT_DWORD,
            &DEBUG_EXIT_DWORD_STATUS.to_le_bytes()
        ));
        assert!(contains(DEBUG_EXIT_BYTE, &[0xb0, DEBUG_EXIT_BYTE_STATUS]));
        assert_eq!(PIO_OUT_HLT, [0xe6, BYTE_REPORT_PORT as u8, 0xf4]);
        assert!(contains(ADD_AND_RDMSR, &RDMSR_INDEX.to_le_bytes()));
        assert!(contains(HLT_OUT_HLT, &[0xe6, HALT_FIRST_PORT as u8, 0xf4]));
        assert!(contains(HLT_OUT_HLT, &[0xe6, HALT_SECOND_PORT as u8, 0xf4]));
        assert!(contains(COUNT_LOOP, &[0xe7, COUNT_PORT as u8]));
        // The sched_op stub's address: the page plus 32 bytes per hypercall number.
        let stub = XEN_HYPERCALL_PAGE as u32 + 32 * XEN_SCHED_OP;
        assert!(contains(XEN_SHUTDOWN, &[0xb8]));
        assert!(contains(XEN_SHUTDOWN, &stub.to_le_bytes()));
        assert!(contains(
            PV_SHUTDOWN,
            &(PV_MARKER_ADDR as u32).to_le_bytes()
        ));
        assert!(contains(
            PV_SHUTDOWN,
            &(PV_SHUTDOWN_ARG as u32).to_le_bytes()
        ));
        assert!(contains(DIRTY_WRITER, &(DIRTY_TABLE as u32).to_le_bytes()));
        assert!(contains(DIRTY_WRITER, &[0xe6, BYTE_REPORT_PORT as u8]));
        assert!(contains(CPU_PROBE, &MCG_CAP_MSR.to_le_bytes()));
        assert!(contains(CPU_PROBE, &[0x0f, 0xa2]), "cpuid");
        assert!(contains(CPU_PROBE, &[0x0f, 0x32]), "rdmsr");
        assert!(contains(PM_TIMER_POWEROFF, &PM_TIMER_PORT.to_le_bytes()));
        assert!(contains(PM_TIMER_POWEROFF, &PM1A_CNT_PORT.to_le_bytes()));
        assert!(contains(PM_TIMER_POWEROFF, &PM_SLEEP_S5.to_le_bytes()));
    }

    #[test]
    fn labels_point_at_their_instructions() {
        let inc_rax = [0x48, 0xff, 0xc0];
        assert_eq!(
            at(NOP_INC_INC_HLT, 0),
            [0x90, 0x48, 0xff, 0xc0, 0x48, 0xff, 0xc0, 0xf4]
        );
        assert_eq!(at(NOP_INC_INC_HLT, NOP_INC_INC_HLT_FIRST_INC)[..3], inc_rax);
        assert_eq!(
            at(NOP_INC_INC_HLT, NOP_INC_INC_HLT_SECOND_INC)[..3],
            inc_rax
        );
        assert_eq!(at(NOP_INC_INC_HLT, NOP_INC_INC_HLT_HLT), [0xf4]);
        // movl $reason, (%rsi) is c7 06 imm32; the label is the immediate.
        let reason = usize::try_from(XEN_SHUTDOWN_REASON).unwrap();
        assert_eq!(XEN_SHUTDOWN[reason - 2..reason], [0xc7, 0x06]);
        assert_eq!(
            XEN_SHUTDOWN[reason..reason + 4],
            XEN_SHUTDOWN_POWEROFF.to_le_bytes()
        );
        // syscall (0f 05) ends right at the label; ud2, then the spin loop.
        let after = usize::try_from(PV_SHUTDOWN_AFTER_SYSCALL).unwrap();
        assert_eq!(PV_SHUTDOWN[after - 2..after], [0x0f, 0x05]);
        assert_eq!(
            at(PV_SHUTDOWN, PV_SHUTDOWN_AFTER_SYSCALL)[..2],
            [0x0f, 0x0b]
        );
        assert_eq!(at(PV_SHUTDOWN, PV_SHUTDOWN_SPIN), [0xeb, 0xfe]);
    }

    #[test]
    fn triple_fault_loads_an_empty_idt_right_after_its_code() {
        // lidt rel32(%rip) = 0f 01 1d rel32; ud2 = 0f 0b; then limit (2) and base (8).
        assert_eq!(TRIPLE_FAULT[..3], [0x0f, 0x01, 0x1d]);
        let rel = i32::from_le_bytes(TRIPLE_FAULT[3..7].try_into().unwrap());
        assert_eq!(7 + rel as usize, 9, "the descriptor follows ud2");
        assert_eq!(TRIPLE_FAULT[7..9], [0x0f, 0x0b]);
        assert_eq!(TRIPLE_FAULT[9..], [0; 10]);
    }

    #[test]
    fn report_ports_and_addresses_do_not_collide() {
        let ports = [
            REPORT_PORT,
            BYTE_REPORT_PORT,
            SERIAL_PORT,
            PORT_READS_BYTE_PORT,
            PORT_READS_DWORD_PORT,
            STRING_READS_PORT,
            PIT_COMMAND_PORT,
            DEBUG_EXIT_PORT,
            HALT_FIRST_PORT,
            HALT_SECOND_PORT,
            COUNT_PORT,
        ];
        for (i, a) in ports.iter().enumerate() {
            assert!(!ports[i + 1..].contains(a), "port {a:#x} is used twice");
        }
        // Ports used with `in`/`out imm8` must fit a byte.
        for port in [
            REPORT_PORT,
            BYTE_REPORT_PORT,
            PORT_READS_BYTE_PORT,
            PORT_READS_DWORD_PORT,
            PIT_COMMAND_PORT,
            HALT_FIRST_PORT,
            HALT_SECOND_PORT,
            COUNT_PORT,
        ] {
            assert!(port <= 0xff, "{port:#x}");
        }
        // Addresses used as 32-bit immediates (mov $imm32, %r32 zero-extends).
        for addr in [
            MMIO_BASE,
            STRING_READS_BUFFER,
            RAM_WRITE_ADDR,
            ROM_ADDR,
            RAM_READ_ADDR,
            RAM_STORE_ADDR,
            XEN_HYPERCALL_PAGE,
            XEN_SHUTDOWN_ARG,
            PV_MARKER_ADDR,
            PV_SHUTDOWN_ARG,
            DIRTY_TABLE,
        ] {
            assert!(addr < 1 << 32, "{addr:#x}");
        }
        // The absolute (sign-extended disp32) addresses stay below 2 GiB.
        for addr in [
            RAM_READ_ADDR,
            RAM_STORE_ADDR,
            PV_MARKER_ADDR,
            PV_SHUTDOWN_ARG,
        ] {
            assert!(addr < 1 << 31, "{addr:#x}");
        }
    }
}
