/*
 * vmkit test snippets: a few instructions each, for tests that need a guest
 * to do one precise thing (GNU assembler, AT&T syntax, C preprocessor).
 *
 * Every snippet is 64-bit code (the tests enter it in long mode, CPL0, with
 * vmkit::arch::x86_64::boot::configure_long_mode; PV_SHUTDOWN runs as a Xen
 * PV kernel in ring 3) and sits in a section of its own, .snippet.<name>;
 * build.rs assembles this file and turns each such section into
 * vmkit_guests::snippets::<NAME>, the bytes of the section. A snippet must
 * be position-independent unless its documentation says where it must be
 * placed, and may not need relocations (build.rs refuses them).
 *
 * Rules that build.rs relies on:
 *   - a snippet starts with `snippet <name>` and ends where the next one
 *     starts;
 *   - the `///` lines right before `snippet <name>` document it (required);
 *   - a label (`name:`) or `.set name, expr` with `///` lines right before it
 *     is exported as snippets::<NAME>: u64, its offset from the start of its
 *     snippet. Other labels should be .L labels or numeric labels.
 *   - every upper-case name ($REPORT_PORT, ...) is a -D definition made from
 *     src/snippet_constants.rs, which also makes it a Rust constant.
 *
 * Only instructions that today's arrays used are here; see DESIGN.md ("Hosts
 * we test on") for what the software KVM the tests run on cannot emulate.
 */

        .macro snippet name
        .section .snippet.\name, "ax", @progbits
        .code64
        .endm

/// Writes a byte, a word and a dword to ports, then halts: `out %al` of
/// [`PORT_WRITES_BYTE`] to [`BYTE_REPORT_PORT`], `out %ax` of
/// [`PORT_WRITES_WORD`] and `out %eax` of [`PORT_WRITES_DWORD`] to
/// [`SERIAL_PORT`] (through `dx`). Clobbers `rax` and `rdx`.
snippet port_writes
        mov     $PORT_WRITES_BYTE, %al
        out     %al, $BYTE_REPORT_PORT
        mov     $PORT_WRITES_WORD, %ax
        mov     $SERIAL_PORT, %dx
        out     %ax, %dx
        mov     $PORT_WRITES_DWORD, %eax
        out     %eax, %dx
        hlt

/// Reads a byte from [`PORT_READS_BYTE_PORT`] (kept in `ebx`) and a dword
/// from [`PORT_READS_DWORD_PORT`] (through `dx`), then echoes them: the dword
/// to [`REPORT_PORT`], then the byte to [`BYTE_REPORT_PORT`]; then halts.
/// Clobbers `rax`, `rbx` and `rdx`.
snippet port_reads
        in      $PORT_READS_BYTE_PORT, %al
        mov     %eax, %ebx
        mov     $PORT_READS_DWORD_PORT, %dx
        in      %dx, %eax
        out     %eax, $REPORT_PORT
        mov     %ebx, %eax
        out     %al, $BYTE_REPORT_PORT
        hlt

/// Reads [`STRING_READS_COUNT`] bytes from [`STRING_READS_PORT`] with
/// `rep insb` into RAM at [`STRING_READS_BUFFER`], then halts. Uses `rdi`,
/// `rcx` and `rdx`.
snippet string_port_reads
        mov     $STRING_READS_BUFFER, %edi
        mov     $STRING_READS_COUNT, %ecx
        mov     $STRING_READS_PORT, %dx
        rep insb
        hlt

/// MMIO of several widths at [`MMIO_BASE`] (held in `rbx`): reads a dword at
/// offset 0 and echoes it to [`REPORT_PORT`], then writes [`MMIO_DWORD`] at
/// [`MMIO_DWORD_OFFSET`], [`MMIO_QWORD`] (through `rax`) at
/// [`MMIO_QWORD_OFFSET`] and [`MMIO_BYTE`] at [`MMIO_BYTE_OFFSET`]; then
/// halts.
snippet mmio_accesses
        mov     $MMIO_BASE, %ebx
        mov     (%rbx), %eax
        out     %eax, $REPORT_PORT
        movl    $MMIO_DWORD, MMIO_DWORD_OFFSET(%rbx)
        movabs  $MMIO_QWORD, %rax
        mov     %rax, MMIO_QWORD_OFFSET(%rbx)
        movb    $MMIO_BYTE, MMIO_BYTE_OFFSET(%rbx)
        hlt

/// Loads an empty IDT (limit 0, base 0; the descriptor follows the code) and
/// executes `ud2`: the #UD cannot be delivered, so the vCPU triple-faults.
snippet triple_fault
        lidt    .Ltriple_fault_idtr(%rip)
        ud2
.Ltriple_fault_idtr:
        .word   0
        .quad   0

/// Loads an x87 double from [`MMIO_BASE`] (through `rbx`) with `fldl`, then
/// halts. The one snippet meant to fail: KVM's instruction emulator has no
/// x87 loads, so the MMIO access ends in an emulation failure (internal error
/// 1) at the `fldl`.
snippet mmio_x87_load
        mov     $MMIO_BASE, %ebx
/// The offset of [`MMIO_X87_LOAD`]'s `fldl`.
mmio_x87_load_fld:
        fldl    (%rbx)
        hlt

/// `nop`, then `inc %rax` twice, then `hlt`: four instructions at known
/// offsets for single-stepping and breakpoints. Adds 2 to `rax`.
snippet nop_inc_inc_hlt
        nop
/// The offset of [`NOP_INC_INC_HLT`]'s first `inc %rax`.
nop_inc_inc_hlt_first_inc:
        inc     %rax
/// The offset of [`NOP_INC_INC_HLT`]'s second `inc %rax`.
nop_inc_inc_hlt_second_inc:
        inc     %rax
/// The offset of [`NOP_INC_INC_HLT`]'s `hlt`.
nop_inc_inc_hlt_hlt:
        hlt

/// Stores [`MARKER`] in RAM at [`RAM_WRITE_ADDR`] (through `rbx`), then halts.
snippet ram_write
        mov     $RAM_WRITE_ADDR, %ebx
        movl    $MARKER, (%rbx)
        hlt

/// Reads the dword at [`ROM_ADDR`] (through `rbx`) and echoes it to
/// [`REPORT_PORT`], then stores [`ROM_WRITE_VALUE`] there, then halts.
snippet rom_read_write
        mov     $ROM_ADDR, %ebx
        mov     (%rbx), %eax
        out     %eax, $REPORT_PORT
        movl    $ROM_WRITE_VALUE, (%rbx)
        hlt

/// Just `hlt`: one byte.
snippet hlt
        hlt

/// `add %rbx, %rax`, then loads [`LOADED_RCX`] into `rcx`, then halts; other
/// registers are left as they were.
snippet add_and_load_rcx
        add     %rbx, %rax
        movabs  $LOADED_RCX, %rcx
        hlt

/// Executes `cpuid` leaf 0 and reports `eax` (the highest basic leaf), then
/// `ebx` (the first four bytes of the vendor string), as dwords to
/// [`REPORT_PORT`]; then halts. Clobbers `rax`, `rbx`, `rcx` and `rdx`.
snippet cpuid_leaf0
        xor     %eax, %eax
        cpuid
        out     %eax, $REPORT_PORT
        mov     %ebx, %eax
        out     %eax, $REPORT_PORT
        hlt

/// Probes what a boot layer sets up: executes `cpuid` leaf 1 and reports
/// `ecx` (feature bits, TSC-deadline timer at bit 24), then reads the MSR
/// [`MCG_CAP_MSR`] and reports its low half (the machine-check bank count in
/// bits 0-7), both as dwords to [`REPORT_PORT`]; then halts. Clobbers `rax`,
/// `rbx`, `rcx` and `rdx`.
snippet cpu_probe
        mov     $1, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %ecx, %eax
        out     %eax, $REPORT_PORT
        mov     $MCG_CAP_MSR, %ecx
        rdmsr
        out     %eax, $REPORT_PORT
        hlt

/// Reads the ACPI PM timer at [`PM_TIMER_PORT`] twice (dwords, each echoed
/// to [`REPORT_PORT`]), then asks for soft-off: writes the word
/// [`PM_SLEEP_S5`] (SLP_TYP 5, SLP_EN) to PM1a_CNT at [`PM1A_CNT_PORT`];
/// then halts. Clobbers `rax` and `rdx`.
snippet pm_timer_poweroff
        mov     $PM_TIMER_PORT, %dx
        in      %dx, %eax
        out     %eax, $REPORT_PORT
        in      %dx, %eax
        out     %eax, $REPORT_PORT
        mov     $PM1A_CNT_PORT, %dx
        mov     $PM_SLEEP_S5, %ax
        out     %ax, %dx
        hlt

/// Asks for suspend to RAM: writes the word [`PM_SLEEP_S3`] (SLP_TYP 3, SLP_EN)
/// to PM1a_CNT at [`PM1A_CNT_PORT`], then spins, as an OS does until the
/// machine sleeps: only a wake at its waking vector gets it out. Clobbers
/// `rax` and `rdx`.
snippet pm_suspend
        mov     $PM1A_CNT_PORT, %dx
        mov     $PM_SLEEP_S3, %ax
        out     %ax, %dx
1:      jmp     1b

/// 16-bit real-mode code, for an ACPI S3 wake at [`WAKE_VECTOR`]: reports CR0
/// and CS (dwords to [`REPORT_PORT`]), so that a test sees the mode and
/// segment it woke in, then halts. Clobbers `eax`.
snippet wake_real_mode
        .code16
        mov     %cr0, %eax
        out     %eax, $REPORT_PORT
        xor     %eax, %eax
        mov     %cs, %ax
        out     %eax, $REPORT_PORT
        hlt

/// Reads the vendor and device IDs of PCI device 00:00.0 through the
/// configuration ports (writes [`PCI_CONFIG_ADDRESS_00`] to 0xcf8, reads
/// 0xcfc), reports them (a dword to [`REPORT_PORT`]), then halts. Clobbers
/// `rax` and `rdx`.
snippet pci_port_read
        mov     $0xcf8, %dx
        mov     $PCI_CONFIG_ADDRESS_00, %eax
        out     %eax, %dx
        mov     $0xcfc, %dx
        in      %dx, %eax
        out     %eax, $REPORT_PORT
        hlt

/// Reads the vendor and device IDs of PCI device 00:00.0 through ECAM at
/// [`PCI_ECAM`], reports them (a dword to [`REPORT_PORT`]), then halts.
/// Clobbers `rax` and `rbx`.
snippet pci_ecam_read
        mov     $PCI_ECAM, %rbx
        mov     (%rbx), %eax
        out     %eax, $REPORT_PORT
        hlt

/* Points the interrupt gate of `vector` in PCI_MSIX's IDT at `handler`. */
        .macro pci_msix_gate vector, handler
        mov     $(PCI_MSIX_IDT + \vector * 16), %rbx
        lea     \handler(%rip), %rax
        mov     %ax, (%rbx)
        mov     %cs, %dx
        mov     %dx, 2(%rbx)
        movw    $0x8e00, 4(%rbx)
        shr     $16, %rax
        mov     %ax, 6(%rbx)
        shr     $16, %rax
        mov     %eax, 8(%rbx)
        movl    $0, 12(%rbx)
        .endm

/// Drives the MSI-X of the virtio-pci console at [`PCI_MSIX_CONFIG`] as a
/// driver would. Sets up an IDT at [`PCI_MSIX_IDT`] with handlers for
/// [`PCI_MSIX_VECTOR`] and [`PCI_MSIX_QUEUE_VECTOR`] (a stack at
/// [`PCI_MSIX_STACK`]) and software-enables the local APIC; through the
/// configuration ports enables memory decoding and bus mastering, reads BAR
/// 0, walks the capability list to MSI-X and enables it; through BAR 0
/// points MSI-X table entries 0 and 1 at vCPU 0's local APIC with the two
/// vectors, unmasked, chooses entry 0 for configuration changes, negotiates
/// VIRTIO_F_VERSION_1, sets up receive queue 0 (split rings at
/// [`PCI_MSIX_RING`], one buffer at [`PCI_MSIX_BUFFER`]) on entry 1 and sets
/// DRIVER_OK. Then it reports, as a dword to [`REPORT_PORT`], the queue's
/// vector (bits 31-24), the device status (23-16) and the configuration
/// vector (15-0) read back, and waits with interrupts on; each handler
/// reports its vector, writes the local APIC's EOI and returns. A function
/// without MSI-X reports 0xffffffff and halts.
snippet pci_msix
        mov     $PCI_MSIX_STACK, %rsp
        pci_msix_gate PCI_MSIX_VECTOR, .Lpci_msix_config_irq
        pci_msix_gate PCI_MSIX_QUEUE_VECTOR, .Lpci_msix_queue_irq
        mov     $(PCI_MSIX_IDT + 0x1000), %rbx
        movw    $0xfff, (%rbx)
        movq    $PCI_MSIX_IDT, 2(%rbx)
        lidt    (%rbx)
        /* Spurious-interrupt vector register: APIC software enable. */
        mov     $0xfee000f0, %ebx
        movl    $0x1ff, (%rbx)
        /* Command register: memory space and bus master. */
        mov     $0xcf8, %dx
        mov     $(PCI_MSIX_CONFIG + 0x04), %eax
        out     %eax, %dx
        mov     $0xcfc, %dx
        mov     $0x6, %ax
        out     %ax, %dx
        /* BAR 0 (32-bit memory) into rbx. */
        mov     $0xcf8, %dx
        mov     $(PCI_MSIX_CONFIG + 0x10), %eax
        out     %eax, %dx
        mov     $0xcfc, %dx
        in      %dx, %eax
        and     $0xfffffff0, %eax
        mov     %eax, %ebx
        /* The capability list, from the pointer at 0x34, to ID 0x11 (MSI-X): ecx. */
        mov     $0xcf8, %dx
        mov     $(PCI_MSIX_CONFIG + 0x34), %eax
        out     %eax, %dx
        mov     $0xcfc, %dx
        in      %dx, %eax
        movzbl  %al, %ecx
1:      and     $0xfc, %ecx
        jz      4f
        mov     $0xcf8, %dx
        mov     $PCI_MSIX_CONFIG, %eax
        or      %ecx, %eax
        out     %eax, %dx
        mov     $0xcfc, %dx
        in      %dx, %eax
        cmp     $0x11, %al
        je      2f
        movzbl  %ah, %ecx
        jmp     1b
        /* MSI-X enable: message control bit 15, bit 31 of the capability's dword. */
2:      or      $0x80000000, %eax
        out     %eax, %dx
        /* The table's offset in BAR 0 (BIR 0), from the capability's second dword. */
        mov     $0xcf8, %dx
        mov     $PCI_MSIX_CONFIG, %eax
        or      %ecx, %eax
        add     $4, %eax
        out     %eax, %dx
        mov     $0xcfc, %dx
        in      %dx, %eax
        and     $0xfffffff8, %eax
        lea     (%rbx,%rax), %rsi
        /* Table entries 0 and 1: vCPU 0's local APIC, fixed delivery, unmasked. */
        movl    $0xfee00000, (%rsi)
        movl    $0, 4(%rsi)
        movl    $PCI_MSIX_VECTOR, 8(%rsi)
        movl    $0, 12(%rsi)
        movl    $0xfee00000, 16(%rsi)
        movl    $0, 20(%rsi)
        movl    $PCI_MSIX_QUEUE_VECTOR, 24(%rsi)
        movl    $0, 28(%rsi)
        /* Common configuration at BAR 0 offset 0. */
        movw    $0, 0x10(%rbx)
        movb    $1, 0x14(%rbx)
        movb    $3, 0x14(%rbx)
        movl    $1, 0x08(%rbx)
        movl    $1, 0x0c(%rbx)
        movb    $0xb, 0x14(%rbx)
        /* Receive queue 0: one device-writable 16-byte buffer, made available. */
        mov     $PCI_MSIX_RING, %rdi
        movq    $PCI_MSIX_BUFFER, (%rdi)
        movl    $16, 8(%rdi)
        movw    $2, 12(%rdi)
        movw    $0, 14(%rdi)
        movw    $0, 0x1000(%rdi)
        movw    $0, 0x1004(%rdi)
        movw    $1, 0x1002(%rdi)
        movw    $0, 0x16(%rbx)
        movw    $1, 0x1a(%rbx)
        movq    %rdi, 0x20(%rbx)
        lea     0x1000(%rdi), %rax
        movq    %rax, 0x28(%rbx)
        lea     0x2000(%rdi), %rax
        movq    %rax, 0x30(%rbx)
        movw    $1, 0x1c(%rbx)
        movb    $0xf, 0x14(%rbx)
        movzwl  0x1a(%rbx), %ecx
        shl     $24, %ecx
        movzbl  0x14(%rbx), %eax
        shl     $16, %eax
        or      %eax, %ecx
        movzwl  0x10(%rbx), %eax
        or      %ecx, %eax
        out     %eax, $REPORT_PORT
        sti
3:      hlt
        jmp     3b
        /* The handlers. */
.Lpci_msix_config_irq:
        push    %rax
        mov     $PCI_MSIX_VECTOR, %eax
        jmp     .Lpci_msix_irq
.Lpci_msix_queue_irq:
        push    %rax
        mov     $PCI_MSIX_QUEUE_VECTOR, %eax
.Lpci_msix_irq:
        out     %eax, $REPORT_PORT
        mov     $0xfee000b0, %eax
        movl    $0, (%rax)
        pop     %rax
        iretq
4:      mov     $0xffffffff, %eax
        out     %eax, $REPORT_PORT
        hlt

/// Jumps to itself forever: a guest that never exits on its own.
snippet spin
1:      jmp     1b

/// Writes `al` to [`BYTE_REPORT_PORT`] and jumps back, forever: one port
/// exit per iteration.
snippet pio_loop
1:      out     %al, $BYTE_REPORT_PORT
        jmp     1b

/// [`PIO_LOOP`] on [`REPORT_PORT`]: writes `al` to it and jumps back,
/// forever. A byte to port 0x80 exits on KVM but by default not on Xen (see
/// [`BYTE_REPORT_PORT`]), so this is for KVM-only code, such as the
/// `kvm_overhead` benchmark that compares vmkit with bare `kvm-ioctls`.
snippet report_loop
1:      out     %al, $REPORT_PORT
        jmp     1b

/// Writes [`MMIO_FIRST_WRITE`], then [`MMIO_SECOND_WRITE`], as dwords to
/// [`MMIO_BASE`] (through `rbx`), then writes `al` to [`REPORT_PORT`] and
/// halts.
snippet mmio_two_writes
        mov     $MMIO_BASE, %ebx
        movl    $MMIO_FIRST_WRITE, (%rbx)
        movl    $MMIO_SECOND_WRITE, (%rbx)
        out     %al, $REPORT_PORT
        hlt

/// Writes [`PIT_COMMAND`] to the PIT's [`PIT_COMMAND_PORT`], then the same
/// byte to [`BYTE_REPORT_PORT`] (a byte to port 0x80 never exits on Xen), then halts. Sets `al`.
snippet pit_program
        mov     $PIT_COMMAND, %al
        out     %al, $PIT_COMMAND_PORT
        out     %al, $BYTE_REPORT_PORT
        hlt

/// Writes the dword [`DEBUG_EXIT_DWORD_STATUS`] to [`DEBUG_EXIT_PORT`]
/// (through `dx`), then halts.
snippet debug_exit_dword
        mov     $DEBUG_EXIT_PORT, %dx
        mov     $DEBUG_EXIT_DWORD_STATUS, %eax
        out     %eax, %dx
        hlt

/// Writes the byte [`DEBUG_EXIT_BYTE_STATUS`] to [`DEBUG_EXIT_PORT`]
/// (through `dx`), then halts.
snippet debug_exit_byte
        mov     $DEBUG_EXIT_PORT, %dx
        mov     $DEBUG_EXIT_BYTE_STATUS, %al
        out     %al, %dx
        hlt

/// Writes `al` to [`BYTE_REPORT_PORT`], then halts.
snippet pio_out_hlt
        out     %al, $BYTE_REPORT_PORT
        hlt

/// Reads the qword at [`RAM_READ_ADDR`] and reports its low dword to
/// [`REPORT_PORT`], stores [`MARKER`] at [`RAM_STORE_ADDR`], writes `al` to
/// [`BYTE_REPORT_PORT`] and halts. Uses absolute addresses (no base
/// register); clobbers `rax`.
snippet ram_read_then_write
        mov     RAM_READ_ADDR, %rax
        out     %eax, $REPORT_PORT
        movl    $MARKER, RAM_STORE_ADDR
        out     %al, $BYTE_REPORT_PORT
        hlt

/// Reads a dword from [`PORT_READS_DWORD_PORT`] and writes it to
/// [`MMIO_BASE`] + [`MMIO_ECHO_OFFSET`], reads a dword from [`MMIO_BASE`]
/// (into `ecx`) and echoes it to [`REPORT_PORT`], writes [`SERIAL_BYTE`] to
/// [`SERIAL_PORT`] (through `dx`), then halts. Clobbers `rax`, `rbx`, `rcx`
/// and `rdx`.
snippet port_mmio_echo
        in      $PORT_READS_DWORD_PORT, %eax
        mov     $MMIO_BASE, %ebx
        mov     %eax, MMIO_ECHO_OFFSET(%rbx)
        mov     (%rbx), %ecx
        mov     %ecx, %eax
        out     %eax, $REPORT_PORT
        mov     $SERIAL_PORT, %dx
        mov     $SERIAL_BYTE, %al
        out     %al, %dx
        hlt

/// `add %rbx, %rax`, then reads the MSR [`RDMSR_INDEX`] (`IA32_LSTAR`) and
/// reports its low half (`eax`) to [`REPORT_PORT`], then halts. Leaves
/// `rbx` alone; clobbers `rax`, `rcx` and `rdx`.
snippet add_and_rdmsr
        add     %rbx, %rax
        mov     $RDMSR_INDEX, %ecx
        rdmsr
        out     %eax, $REPORT_PORT
        hlt

/// Halts, writes `al` to [`HALT_FIRST_PORT`], halts, writes `al` to
/// [`HALT_SECOND_PORT`], halts: shows that a vCPU goes on after a `hlt`.
snippet hlt_out_hlt
        hlt
        out     %al, $HALT_FIRST_PORT
        hlt
        out     %al, $HALT_SECOND_PORT
        hlt

/// Counts in `eax` forever: increments it and writes it (a dword) to
/// [`COUNT_PORT`], so the first write is `eax` + 1.
snippet count_loop
1:      inc     %eax
        out     %eax, $COUNT_PORT
        jmp     1b

/// Shuts a Xen HVM guest down through a hypercall: asks Xen (CPUID leaf
/// [`XEN_CPUID_HYPERCALL_LEAF`] gives the MSR, `wrmsr`) to write its
/// hypercall page at [`XEN_HYPERCALL_PAGE`], stores the shutdown reason at
/// [`XEN_SHUTDOWN_ARG`] and calls `sched_op` ([`XEN_SCHED_OP`],
/// [`XEN_SCHEDOP_SHUTDOWN`]) through the page's stub; should that return,
/// writes `al` to [`BYTE_REPORT_PORT`] and halts. The reason is the dword
/// immediate at [`XEN_SHUTDOWN_REASON`] (0 as assembled: poweroff); patch
/// it in a copy. Needs a stack (`call`); clobbers `rax`, `rbx`, `rcx`,
/// `rdx`, `rsi` and `rdi`.
snippet xen_shutdown
        mov     $XEN_CPUID_HYPERCALL_LEAF, %eax
        cpuid
        mov     %ebx, %ecx
        mov     $XEN_HYPERCALL_PAGE, %eax
        xor     %edx, %edx
        wrmsr
        mov     $XEN_SHUTDOWN_ARG, %esi
        movl    $XEN_SHUTDOWN_POWEROFF, (%rsi)
/// The offset in [`XEN_SHUTDOWN`] of the shutdown reason: the last four
/// bytes of the `movl` that stores it (its 32-bit immediate).
        .set    xen_shutdown_reason, . - 4
        mov     $XEN_SCHEDOP_SHUTDOWN, %edi
        mov     $XEN_HYPERCALL_PAGE + XEN_SCHED_OP * 32, %eax
        call    *%rax
        out     %al, $BYTE_REPORT_PORT
        hlt

/// A Xen PV kernel's life, in ring 3 at virtual 0x400000 (it uses absolute
/// virtual addresses, so its data page must be mapped at 0x401000): stores
/// [`MARKER`] at [`PV_MARKER_ADDR`], stores [`XEN_SHUTDOWN_POWEROFF`] at
/// [`PV_SHUTDOWN_ARG`] and makes the `sched_op` hypercall
/// ([`XEN_SCHED_OP`] in `eax`, [`XEN_SCHEDOP_SHUTDOWN`] in `edi`, the
/// argument's address in `esi`) with `syscall`; should that return, `ud2`.
/// A second entry, [`PV_SHUTDOWN_SPIN`], spins forever.
snippet pv_shutdown
        movl    $MARKER, PV_MARKER_ADDR
        movl    $XEN_SHUTDOWN_POWEROFF, PV_SHUTDOWN_ARG
        mov     $XEN_SCHED_OP, %eax
        mov     $XEN_SCHEDOP_SHUTDOWN, %edi
        mov     $PV_SHUTDOWN_ARG, %esi
        syscall
/// The offset in [`PV_SHUTDOWN`] right after its `syscall`.
pv_shutdown_after_syscall:
        ud2
/// The offset in [`PV_SHUTDOWN`] of a `jmp` to itself: an entry point for a
/// PV guest that never exits.
pv_shutdown_spin:
        jmp     pv_shutdown_spin

/// Dirties a list of pages, over and over: reads a qword count at
/// [`DIRTY_TABLE`] and that many qword addresses after it, writes the byte 1
/// to each address, writes `al` to [`BYTE_REPORT_PORT`] (one byte: it exits on
/// KVM and on Xen, whose guests reach the real port 0x80) and starts again from the (possibly changed) table. Uses `rsi`
/// (table cursor), `rcx` (count) and `rdi`.
snippet dirty_writer
1:      mov     $DIRTY_TABLE, %esi
        mov     (%rsi), %rcx
        add     $8, %rsi
2:      test    %rcx, %rcx
        jz      3f
        mov     (%rsi), %rdi
        movb    $1, (%rdi)
        add     $8, %rsi
        dec     %rcx
        jmp     2b
3:      out     %al, $BYTE_REPORT_PORT
        jmp     1b
