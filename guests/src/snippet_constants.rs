// The values that the test snippets in `snippets.S` use, listed once.
//
// This file is included twice: by `src/snippets.rs`, where `constants!` makes each entry a
// documented `pub const`, and by `build.rs`, where `constants!` makes the list of
// `-DNAME=value` definitions that the C preprocessor substitutes into `snippets.S`. So the
// assembly and the Rust side cannot disagree: there is only this list.

constants! {
    /// The port the snippets report a value to, usually as a dword (`out %eax, $0x80`).
    ///
    /// Byte writes that must exit on Xen use [`BYTE_REPORT_PORT`] instead: by default Xen
    /// lets HVM guests reach the real port 0x80, so byte accesses to it never exit there.
    REPORT_PORT: u16 = 0x80;
    /// The port the snippets write a byte to (`out %al, $0x81`); unlike port 0x80 it exits
    /// on Xen too.
    BYTE_REPORT_PORT: u16 = 0x81;
    /// COM1's data port, which [`PORT_WRITES`] and [`PORT_MMIO_ECHO`] write to.
    SERIAL_PORT: u16 = 0x3f8;
    /// The guest-physical address that the MMIO snippets access; the tests leave it unmapped,
    /// so each access is an MMIO exit.
    MMIO_BASE: u64 = 0xd000_0000;
    /// The dword that [`RAM_WRITE`], [`RAM_READ_THEN_WRITE`] and [`PV_SHUTDOWN`] store in RAM.
    MARKER: u32 = 0x600d_f00d;

    /// The byte [`PORT_WRITES`] writes to [`BYTE_REPORT_PORT`].
    PORT_WRITES_BYTE: u8 = 0x5a;
    /// The word [`PORT_WRITES`] writes to [`SERIAL_PORT`].
    PORT_WRITES_WORD: u16 = 0x1234;
    /// The dword [`PORT_WRITES`] writes to [`SERIAL_PORT`].
    PORT_WRITES_DWORD: u32 = 0xdead_beef;

    /// The port [`PORT_READS`] reads a byte from.
    PORT_READS_BYTE_PORT: u16 = 0x61;
    /// The port [`PORT_READS`] and [`PORT_MMIO_ECHO`] read a dword from.
    PORT_READS_DWORD_PORT: u16 = 0x71;

    /// Where [`STRING_PORT_READS`] stores the bytes it reads (2 MiB, in RAM).
    STRING_READS_BUFFER: u64 = 0x20_0000;
    /// How many bytes [`STRING_PORT_READS`] reads with `rep insb`.
    STRING_READS_COUNT: u32 = 6;
    /// The port [`STRING_PORT_READS`] reads from.
    STRING_READS_PORT: u16 = 0x90;

    /// The offset from [`MMIO_BASE`] of the dword [`MMIO_ACCESSES`] writes.
    MMIO_DWORD_OFFSET: u64 = 8;
    /// The dword [`MMIO_ACCESSES`] writes.
    MMIO_DWORD: u32 = 0x1122_3344;
    /// The offset from [`MMIO_BASE`] of the qword [`MMIO_ACCESSES`] writes.
    MMIO_QWORD_OFFSET: u64 = 16;
    /// The qword [`MMIO_ACCESSES`] writes.
    MMIO_QWORD: u64 = 0x0102_0304_0506_0708;
    /// The offset from [`MMIO_BASE`] of the byte [`MMIO_ACCESSES`] writes.
    MMIO_BYTE_OFFSET: u64 = 3;
    /// The byte [`MMIO_ACCESSES`] writes.
    MMIO_BYTE: u8 = 0x99;

    /// Where [`RAM_WRITE`] stores [`MARKER`] (2 MiB, in RAM).
    RAM_WRITE_ADDR: u64 = 0x20_0000;
    /// Where [`ROM_READ_WRITE`] reads and writes: a read-only region in the test.
    ROM_ADDR: u64 = 0x50_0000;
    /// The dword [`ROM_READ_WRITE`] tries to store at [`ROM_ADDR`].
    ROM_WRITE_VALUE: u32 = 0xabcd_ef01;

    /// The value [`ADD_AND_LOAD_RCX`] loads into `rcx`.
    LOADED_RCX: u64 = 0x1122_3344_5566_7788;

    /// The first dword [`MMIO_TWO_WRITES`] writes to [`MMIO_BASE`].
    MMIO_FIRST_WRITE: u32 = 7;
    /// The second dword [`MMIO_TWO_WRITES`] writes to [`MMIO_BASE`].
    MMIO_SECOND_WRITE: u32 = 9;

    /// The 8254 PIT's mode/command port, which [`PIT_PROGRAM`] writes to.
    PIT_COMMAND_PORT: u16 = 0x43;
    /// The command [`PIT_PROGRAM`] writes: channel 0, lobyte/hibyte, mode 2.
    PIT_COMMAND: u8 = 0x34;

    /// The debug-exit port that [`DEBUG_EXIT_DWORD`] and [`DEBUG_EXIT_BYTE`] write to
    /// (`vmkit_devices::DebugExit::PORT`).
    DEBUG_EXIT_PORT: u16 = 0x501;
    /// The status [`DEBUG_EXIT_DWORD`] writes.
    DEBUG_EXIT_DWORD_STATUS: u32 = 0x1234_5678;
    /// The status [`DEBUG_EXIT_BYTE`] writes.
    DEBUG_EXIT_BYTE_STATUS: u8 = 3;

    /// Where [`RAM_READ_THEN_WRITE`] reads a qword (3 MiB, in RAM).
    RAM_READ_ADDR: u64 = 0x30_0000;
    /// Where [`RAM_READ_THEN_WRITE`] stores [`MARKER`].
    RAM_STORE_ADDR: u64 = 0x30_0008;

    /// The offset from [`MMIO_BASE`] where [`PORT_MMIO_ECHO`] writes what it read from a port.
    MMIO_ECHO_OFFSET: u64 = 4;
    /// The byte [`PORT_MMIO_ECHO`] writes to [`SERIAL_PORT`] last.
    SERIAL_BYTE: u8 = 0x21;

    /// The MSR [`ADD_AND_RDMSR`] reads: `IA32_LSTAR`.
    RDMSR_INDEX: u32 = 0xc000_0082;

    /// The port [`HLT_OUT_HLT`] writes to after its first `hlt`.
    HALT_FIRST_PORT: u16 = 0x82;
    /// The port [`HLT_OUT_HLT`] writes to after its second `hlt`.
    HALT_SECOND_PORT: u16 = 0x83;

    /// The port [`COUNT_LOOP`] writes its counter to.
    COUNT_PORT: u16 = 0x84;

    /// Xen's CPUID leaf that gives the hypercall-page MSR in `ebx` (base leaf + 2).
    XEN_CPUID_HYPERCALL_LEAF: u32 = 0x4000_0002;
    /// Where [`XEN_SHUTDOWN`] asks Xen to write the hypercall page.
    XEN_HYPERCALL_PAGE: u64 = 0x30_0000;
    /// Xen's `__HYPERVISOR_sched_op` hypercall number; its stub is 32 bytes per number
    /// into the hypercall page.
    XEN_SCHED_OP: u32 = 29;
    /// Xen's `SCHEDOP_shutdown` command.
    XEN_SCHEDOP_SHUTDOWN: u32 = 2;
    /// Xen's `SHUTDOWN_poweroff` reason, which [`PV_SHUTDOWN`] passes.
    XEN_SHUTDOWN_POWEROFF: u32 = 0;
    /// Where [`XEN_SHUTDOWN`] places its `sched_shutdown` argument (the reason).
    XEN_SHUTDOWN_ARG: u64 = 0x30_1000;

    /// The (virtual) address [`PV_SHUTDOWN`] stores [`MARKER`] at.
    PV_MARKER_ADDR: u64 = 0x40_1000;
    /// The (virtual) address of [`PV_SHUTDOWN`]'s `sched_shutdown` argument.
    PV_SHUTDOWN_ARG: u64 = 0x40_1010;

    /// Where [`DIRTY_WRITER`] reads its list of pages (2 MiB, in RAM): a qword count, then
    /// that many qword addresses.
    DIRTY_TABLE: u64 = 0x20_0000;

    /// The MSR [`CPU_PROBE`] reads: IA32_MCG_CAP, whose bits 0-7 count the machine-check
    /// banks.
    MCG_CAP_MSR: u32 = 0x179;
    /// The ACPI PM timer port [`PM_TIMER_POWEROFF`] reads (vmkit-devices' `PmBlock` at its
    /// default base `0x600`, plus 8).
    PM_TIMER_PORT: u16 = 0x608;
    /// The PM1a control port [`PM_TIMER_POWEROFF`] writes (base `0x600` plus 4).
    PM1A_CNT_PORT: u16 = 0x604;
    /// What [`PM_TIMER_POWEROFF`] writes to PM1a_CNT: SLP_TYP 5 (bits 10-12, the type
    /// vmkit's DSDT gives `\_S5`) with SLP_EN (bit 13).
    PM_SLEEP_S5: u16 = (5 << 10) | (1 << 13);
    /// What [`PM_SUSPEND`] writes to PM1a_CNT: SLP_TYP 3 (the type vmkit's DSDT gives
    /// `\_S3`, suspend to RAM) with SLP_EN.
    PM_SLEEP_S3: u16 = (3 << 10) | (1 << 13);
    /// Where the S3 scenario places [`WAKE_REAL_MODE`] and points the FACS's waking vector:
    /// below 1 MiB, clear of the boot GDT and page tables.
    WAKE_VECTOR: u64 = 0x7000;
    /// The ECAM window (bus 0) [`PCI_ECAM_READ`] reads, below 4 GiB (identity-mapped).
    PCI_ECAM: u64 = 0xe000_0000;
    /// What [`PCI_PORT_READ`] writes to CONFIG_ADDRESS (port 0xcf8): enable, bus 0,
    /// device 0, function 0, register 0 (the vendor and device IDs).
    PCI_CONFIG_ADDRESS_00: u32 = 0x8000_0000;
    /// What [`PCI_MSIX`] writes to CONFIG_ADDRESS for register 0 of the virtio-pci function
    /// it drives: enable, bus 0, device 1 (the first slot after the host bridge), function 0.
    PCI_MSIX_CONFIG: u32 = 0x8000_0800;
    /// The vector [`PCI_MSIX`] programs into MSI-X table entry 0 (configuration changes)
    /// and reports from its handler.
    PCI_MSIX_VECTOR: u8 = 0x5c;
    /// The vector [`PCI_MSIX`] programs into MSI-X table entry 1 (receive queue 0) and
    /// reports from its handler.
    PCI_MSIX_QUEUE_VECTOR: u8 = 0x5d;
    /// Where [`PCI_MSIX`] puts receive queue 0's split rings (in RAM): the descriptor table,
    /// the driver ring 4 KiB later, the device ring 8 KiB later.
    PCI_MSIX_RING: u64 = 0x21_0000;
    /// The 16-byte buffer [`PCI_MSIX`] offers the receive queue (in RAM).
    PCI_MSIX_BUFFER: u64 = 0x22_0000;
    /// Where [`PCI_MSIX`] builds its IDT (4 KiB, in RAM; the IDTR operand follows it).
    PCI_MSIX_IDT: u64 = 0x20_0000;
    /// [`PCI_MSIX`]'s stack top (in RAM), for the interrupt frame.
    PCI_MSIX_STACK: u64 = 0x30_0000;
}
