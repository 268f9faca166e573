//! Minimal x86-64 guest kernels for vmkit's tests and examples, and the
//! [`snippets`] of guest code that tests run.
//!
//! The kernels are built from source (`src/*.S` and `src/*.ld`) by this
//! crate's build script with the host C compiler (`$CC`, else `cc`); no
//! prebuilt binaries are checked in. Each is embedded here as the bytes of an
//! ELF64 image that any ELF loader can place in guest memory, for example
//! `linux_loader::loader::elf::Elf::load`. The [`snippets`] are assembled
//! the same way (`src/snippets.S`), as flat 64-bit code.
//!
//! # The minimal kernel
//!
//! [`minimal::ELF`] is a static ELF64 image with one `PT_LOAD` segment at
//! physical == virtual [`minimal::LOAD_ADDR`] (1 MiB): under 64 KiB of file
//! contents (code, strings, static page tables and IDT) and under 128 KiB in
//! memory, most of that the per-vCPU stacks (64 KiB) and the virtio-blk
//! driver's queue and buffers (20 KiB) in `.bss`. It has two entry
//! points:
//!
//! - **64-bit entry** (`e_entry`): the VMM enters it in 64-bit long mode,
//!   CPL0, with a flat 64-bit code segment, 4-level paging enabled with an
//!   identity map that covers at least the kernel image (`CR4.LA57` clear),
//!   interrupts disabled; `rsp` may hold anything.
//! - **PVH entry** (32-bit), announced by an ELF note of name `"Xen"` and
//!   type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`) whose descriptor is the entry's
//!   32-bit physical address; `linux-loader` reports it as
//!   `PvhBootCapability::PvhEntryPresent`. Start state as in Xen's
//!   `docs/misc/pvh.pandoc`: 32-bit protected mode, paging off, flat 4 GiB
//!   `CS`/`DS`/`ES`/`SS`, `ebx` = physical address of `hvm_start_info`
//!   (ignored by this kernel). The kernel loads its own GDT, enables PAE,
//!   sets `EFER.LME`, enables paging and far-jumps to the common 64-bit path.
//!
//! Either way the kernel loads `CR3` with its own static identity map of the
//! low 4 GiB (2 MiB pages), so the MMIO addresses below are mapped whatever
//! the VMM mapped.
//!
//! ## Entry registers and SMP
//!
//! The VMM starts **every** vCPU at the 64-bit entry (there is no INIT/SIPI
//! bring-up), in the state above, with:
//!
//! | register | meaning |
//! |----------|---------|
//! | `rdi` | how many vCPUs the VMM starts; 0 and 1 both mean one (uniprocessor); more than [`minimal::MAX_VCPUS`] counts as [`minimal::MAX_VCPUS`] |
//! | `rsi` | this vCPU's index, `0..count`; 0 is the bootstrap processor (BSP), every other index an application processor (AP) |
//! | `rdx` | flags, read on the BSP only; bit 0 is [`minimal::ENTRY_FLAG_INTERRUPTS`], bit 1 [`minimal::ENTRY_FLAG_VIRTIO_BLK`], bit 2 [`minimal::ENTRY_FLAG_COUNT`]; bits 0 and 1 are independent, bit 2 overrides bit 0; other bits are ignored |
//!
//! All three zero (what a VMM that knows nothing of this protocol leaves) is
//! a uniprocessor boot without interrupt mode. The PVH entry always behaves
//! like that. A vCPU whose index is [`minimal::MAX_VCPUS`] or more halts at
//! once (`cli; hlt`) and prints nothing. Each other vCPU takes a stack of its
//! own from the kernel's `.bss`.
//!
//! The serial port is shared: each vCPU prints every line whole while holding
//! a spinlock (`lock xchg`, `pause` while waiting), so lines never
//! interleave. With `n` = the effective vCPU count:
//!
//! - **BSP** (index 0): prints [`minimal::HELLO`], then `cpu 0 online`,
//!   counts itself online (`lock inc`), sets a "hello done" flag that
//!   releases the APs, and waits until `n` vCPUs, itself included, are
//!   online. Then, with [`minimal::ENTRY_FLAG_VIRTIO_BLK`], it runs the
//!   [virtio-blk driver](#the-virtio-blk-driver), and then the sequence
//!   below (or, with [`minimal::ENTRY_FLAG_COUNT`],
//!   [counting mode](#counting-mode); else, with
//!   [`minimal::ENTRY_FLAG_INTERRUPTS`], interrupt mode).
//! - **AP** (index `k` ≥ 1): waits for the flag, prints `cpu k online` (`k`
//!   in decimal), counts itself online, then loops on `cli; hlt`. Without an
//!   in-kernel interrupt controller that `hlt` reaches the VMM (as
//!   `VcpuExit::Hlt`); with one, the vCPU just sleeps in the hypervisor and
//!   the VMM sees no further exit from it.
//!
//! So the output starts with the hello line, `cpu 0 online` and the `n − 1`
//! AP lines in the order the APs got the lock; [`minimal::check_smp_serial`]
//! and [`minimal::check_irq_serial`] check a whole output against that.
//! Indices must be below `n`: an AP with a larger index would still print and
//! count itself, and the BSP might then go on before a real AP has.
//!
//! ## The BSP's sequence
//!
//! After all vCPUs are online, without interrupt mode, the BSP:
//!
//! 1. executes `CPUID` leaf 0 and prints `"cpuid: "`, the 12-byte vendor
//!    string (`EBX`, `EDX`, `ECX`) and `"\n"`;
//! 2. reads a `u32` with one 32-bit `mov` from [`minimal::MMIO_READ_ADDR`],
//!    prints `"mmio: "`, the value as 8 lowercase hex digits and `"\n"`,
//!    then writes the value plus one (wrapping) with one 32-bit `mov` to
//!    [`minimal::MMIO_WRITE_ADDR`];
//! 3. prints `"bye\n"`, writes [`minimal::POWER_OFF_VALUE`] to
//!    [`minimal::POWER_OFF_PORT`] (the i8042 reset command), and then loops
//!    on `cli; hlt` forever.
//!
//! Every byte goes to the 16550 UART at [`minimal::SERIAL_PORT`]: before each
//! byte the kernel polls the line status register (`SERIAL_PORT + 5`) until
//! bit 5 (THR empty) is set, then writes the byte to `SERIAL_PORT` with
//! `out`. A host that answers every line-status read with
//! [`minimal::LSR_THR_EMPTY`] set, and the MMIO read with `v`, sees on one
//! vCPU the serial output [`minimal::expected_serial`]`(vendor, v)` and an
//! MMIO write of `v.wrapping_add(1)`.
//!
//! ## The virtio-blk driver
//!
//! With [`minimal::ENTRY_FLAG_VIRTIO_BLK`] set in `rdx` on the BSP, the BSP,
//! once all vCPUs are online and before the CPUID/MMIO/power-off sequence
//! (in interrupt mode: before it loads its GDT and prints
//! [`minimal::IRQ_READY`]), drives one virtio-blk device over virtio-mmio.
//! It polls; it uses no interrupts and runs with them disabled. Every
//! register access is one aligned 32-bit `mov` (virtio 1.2 §4.2.2, register
//! layout **version 2**) at [`minimal::VIRTIO_MMIO_BASE`] + offset; every
//! wait on the device is bounded by [`minimal::BLK_POLL_LIMIT`] polls.
//!
//! 1. **Probe.** Reads `MagicValue` (`0x000`), `Version` (`0x004`) and
//!    `DeviceID` (`0x008`); unless they are [`minimal::VIRTIO_MMIO_MAGIC`],
//!    [`minimal::VIRTIO_MMIO_VERSION`] and [`minimal::VIRTIO_ID_BLOCK`] it
//!    prints [`minimal::BLK_NO_DEVICE`] and goes on without touching the
//!    device again (a window that reads all-ones has no device).
//! 2. **Initialization** (§3.1.1): writes 0 to `Status` (`0x070`) and polls
//!    it until it reads 0; writes `Status` = 1 (ACKNOWLEDGE), then 3
//!    (+ DRIVER); writes `DeviceFeaturesSel` (`0x014`) = 0 and reads
//!    `DeviceFeatures` (`0x010`), then `DeviceFeaturesSel` = 1 and reads it
//!    again: the device must offer [`minimal::VIRTIO_F_VERSION_1`] (bit 32);
//!    writes `DriverFeaturesSel` (`0x024`) = 0, `DriverFeatures` (`0x020`) =
//!    the offered bits ∩ [`minimal::VIRTIO_BLK_F_FLUSH`], `DriverFeaturesSel`
//!    = 1, `DriverFeatures` = 1: it accepts `VIRTIO_F_VERSION_1`, and
//!    `VIRTIO_BLK_F_FLUSH` when offered, and nothing else;
//!    writes `Status` = `0xb` (+ FEATURES_OK) and reads it back: FEATURES_OK
//!    must have stayed set.
//! 3. **Queue 0** (§4.2.3.2): writes `QueueSel` (`0x030`) = 0; `QueueReady`
//!    (`0x044`) must read 0; reads `QueueNumMax` (`0x034`) and writes
//!    `QueueNum` (`0x038`) = the largest power of two ≤ min(`QueueNumMax`,
//!    [`minimal::BLK_QUEUE_SIZE`]), which must be at least
//!    [`minimal::BLK_QUEUE_MIN_SIZE`] (a request takes up to 3
//!    descriptors). The descriptor table, available ring and used ring are
//!    each one page-aligned 4 KiB page of the kernel's `.bss` (physical =
//!    virtual, below 4 GiB); the driver writes the available ring's `flags`
//!    = 1 (`VIRTQ_AVAIL_F_NO_INTERRUPT`) and `idx` = 0 and the used ring's
//!    `flags` and `idx` = 0, then `QueueDescLow/High` (`0x080`/`0x084`),
//!    `QueueDriverLow/High` (`0x090`/`0x094`), `QueueDeviceLow/High`
//!    (`0x0a0`/`0x0a4`; every high half 0) and `QueueReady` = 1. Then
//!    `Status` = `0xf` (+ DRIVER_OK), read back: DEVICE_NEEDS_RESET (`0x40`)
//!    must be clear.
//! 4. **Capacity**: reads `ConfigGeneration` (`0xfc`), the low and high
//!    halves of the `le64 capacity` at config offset 0 (`0x100`, `0x104`)
//!    and `ConfigGeneration` again, retrying while the generations differ
//!    (at most [`minimal::BLK_CONFIG_TRIES`] times); the capacity (in
//!    512-byte sectors) must be at least
//!    [`minimal::BLK_TEST_SECTOR`]` + `[`minimal::BLK_TEST_SECTORS`].
//! 5. **Requests**, one at a time, each a chain with head descriptor 0:
//!    descriptor 0 is the 16-byte header `{type: le32, reserved: le32 = 0,
//!    sector: le64}` (device-readable), descriptor 1 the data
//!    (device-writable for a read), descriptor 2 the 1-byte status
//!    (device-writable; the driver sets it to `0xff` first). A flush has no
//!    data: descriptor 0 chains straight to descriptor 2. The driver puts
//!    head 0 in the available ring's next slot, then increments the
//!    available `idx` (in that order), writes 0 to `QueueNotify` (`0x050`),
//!    and then reads the used ring's `idx`, which must equal the new
//!    available `idx` (polled up to [`minimal::BLK_POLL_LIMIT`] times, so a
//!    device that completes asynchronously works too); the used element's
//!    `id` must be 0 and the status byte 0 (`VIRTIO_BLK_S_OK`). The used
//!    element's `len` is not checked. The requests:
//!    1. read (type 0) sector 0, 512 bytes, and print
//!       [`minimal::blk_signature_line`] of its first 8 bytes;
//!    2. write (type 1) [`minimal::BLK_TEST_SECTORS`] sectors at
//!       [`minimal::BLK_TEST_SECTOR`] from a buffer whose byte `i` is
//!       [`minimal::blk_pattern`]`(i)`;
//!    3. flush (type 4, sector 0), only if `VIRTIO_BLK_F_FLUSH` was
//!       negotiated (the spec forbids it otherwise);
//!    4. read the same sectors back into another buffer (zeroed first) and
//!       compare it with the first;
//!
//!    then print [`minimal::BLK_OK`].
//! 6. **Failure**: at the first check that fails the driver prints
//!    [`minimal::blk_error_line`]`(step)`, `step` one of
//!    [`minimal::BLK_ERROR_STEPS`], and sets FAILED (`0x80`) in `Status`
//!    (a read, then a write of the value with the bit set).
//! 7. After success or failure (not after "no device") it reads
//!    `InterruptStatus` (`0x060`) and, if it is not 0, writes the value to
//!    `InterruptACK` (`0x064`), so a device that raised its interrupt
//!    despite the ring's no-interrupt hint leaves no level-triggered line
//!    asserted. The device is left as it is (`DRIVER_OK`, queue ready).
//!
//! Then the BSP goes on as without the flag. So a host whose device works,
//! whose disk starts with [`minimal::BLK_SIGNATURE`] and that answers the
//! other exits as above sees on one vCPU [`minimal::expected_blk_serial`]
//! (or, more generally, [`minimal::expected_blk_serial_with`]), and
//! afterwards the disk holds `blk_pattern(i)` at byte
//! `BLK_TEST_SECTOR * 512 + i` for `i` in `0..`[`minimal::BLK_TEST_BYTES`].
//!
//! On the nested CI host the whole driver, from the probe to the interrupt
//! acknowledgement, takes about 3–4 ms and 39 MMIO exits (15 reads, 24
//! writes; one more write if `InterruptStatus` is not 0) besides the
//! serial output (two port exits per byte); filling the pattern, zeroing the
//! read-back buffer and comparing use `rep movsq`, `rep stosq` and
//! `repe cmpsq`, which that host's instruction emulator runs correctly. A
//! device that never completes a request costs the full
//! [`minimal::BLK_POLL_LIMIT`] polls, about 28 s there.
//!
//! ## Counting mode
//!
//! With [`minimal::ENTRY_FLAG_COUNT`] set in `rdx` on the BSP, the BSP, once
//! all vCPUs are online and after the virtio-blk driver (with
//! [`minimal::ENTRY_FLAG_VIRTIO_BLK`]), counts instead of running the
//! CPUID/MMIO sequence or interrupt mode (it ignores
//! [`minimal::ENTRY_FLAG_INTERRUPTS`]). It is meant for snapshot and restore
//! tests: the host stops the VM mid-count, restores it elsewhere, and checks
//! that the count goes on. For `N` = 1 to [`minimal::COUNT_LIMIT`] (40) it:
//!
//! 1. increments `N` (a `u64` in the kernel's `.data`, symbol `count_n` in
//!    the image's symbol table, 0 when loaded) and
//!    prints [`minimal::count_line`]`(N)` = `"count N"` (decimal) and `"\n"`;
//! 2. if the driver succeeded (printed [`minimal::BLK_OK`]; the device is
//!    still `DRIVER_OK` with queue 0 ready, and the rings go on from where
//!    the driver left them): writes one sector, [`minimal::count_sector_bytes`]`(N)`
//!    (`N` as `le64`, then zeros), to [`minimal::COUNT_SECTOR`] (16), zeroes
//!    the first 8 bytes of its read buffer, reads the sector back and
//!    compares its first 8 bytes with `N`; both requests are made as the
//!    driver makes them (no flush). On any failure it prints
//!    [`minimal::COUNT_DISK_ERROR`] and stops counting (step 4, without
//!    [`minimal::COUNT_DONE`]). Then it acknowledges `InterruptStatus` as
//!    the driver does (one read, and a write if not 0). Without a
//!    working driver (flag clear, no device, or a driver error) it
//!    skips this step and just counts;
//! 3. executes `pause` [`minimal::COUNT_DELAY`] times (the loop counter is
//!    in `ecx`), so that each number takes about 2–3 ms on the nested CI
//!    host and a host can stop the VM between two numbers, or in the middle
//!    of a line or of the delay;
//! 4. after `N` = [`minimal::COUNT_LIMIT`], prints [`minimal::COUNT_DONE`],
//!    then, as at the end of the normal sequence, `"bye\n"`, writes
//!    [`minimal::POWER_OFF_VALUE`] to [`minimal::POWER_OFF_PORT`] and loops
//!    on `cli; hlt`.
//!
//! `N` lives only in guest memory (and, while used, in guest registers); it
//! is never derived from anything the host provides, and
//! [`minimal::COUNT_SECTOR`] is only ever read right after it was written. So after a restore the count goes
//! on from the saved `N` (`count 17` is followed by `count 18`, never by
//! `count 1`), and after a complete run, before or after any number of
//! restores, the disk holds `count_sector_bytes(COUNT_LIMIT)` at sector
//! [`minimal::COUNT_SECTOR`] (the only other sectors the kernel writes are
//! the driver's test sectors). One vCPU without a disk sees
//! [`minimal::expected_count_serial`]`(&[])`; with a working disk,
//! `expected_count_serial(&[&blk_signature_line(BLK_SIGNATURE), BLK_OK])`.
//! [`minimal::check_count_serial`] checks the count lines of any part of
//! such an output (what one process saw before a snapshot, or after a
//! restore, with a line possibly cut between them) and returns the first
//! and last `N`.
//!
//! On the nested CI host (vmkit-virtio's device on a vmkit-bus, handled in
//! the vCPU thread): without a disk, each number takes about 2.2 ms
//! (about 17 port exits for the line, the rest in the delay loop, which
//! makes no exit) and the whole run from the first instruction to power off
//! about 90 ms; with the disk, about 2.6 ms per number (3 more MMIO exits:
//! two `QueueNotify` writes and one `InterruptStatus` read) and about
//! 110 ms in all.
//!
//! ## Interrupt mode
//!
//! With [`minimal::ENTRY_FLAG_INTERRUPTS`] set in `rdx` on the BSP, the BSP,
//! once all vCPUs are online, instead:
//!
//! 1. loads its own GDT (64-bit code selector `0x08`, data `0x10`; it reloads
//!    `CS` and `SS`) and a static IDT with interrupt gates for vectors
//!    [`minimal::IRQ_VECTOR_BASE`]`..=`[`minimal::IRQ_VECTOR_LAST`]
//!    (`0x20..=0x3f`) and [`minimal::SPURIOUS_VECTOR`] (`0xff`); no other
//!    vector has a gate (an exception triple-faults);
//! 2. masks both 8259 PICs (`0xff` to ports `0x21` and `0xa1`);
//! 3. enables its local APIC: writes `0x1ff` (enable bit 8, spurious vector
//!    `0xff`) to the spurious-interrupt vector register at
//!    [`minimal::LAPIC_BASE`]` + 0xf0` (xAPIC MMIO);
//! 4. programs the IOAPIC at [`minimal::IOAPIC_BASE`] (index register at
//!    `+0x00`, data window at `+0x10`): for each GSI `g` in
//!    `0..`[`minimal::IOAPIC_GSI_COUNT`] it writes the high dword of
//!    redirection entry `g` (index `0x11 + 2g`) as 0 (physical destination
//!    APIC ID 0), then the low dword (index `0x10 + 2g`) as vector
//!    `0x20 + g`, fixed delivery, physical destination mode, active high,
//!    unmasked, and edge-triggered for `g <`
//!    [`minimal::IOAPIC_LEVEL_GSI_START`] (16), **level-triggered** from 16
//!    on ([`minimal::gsi_vector`] gives the vector of a GSI);
//! 5. enables the UART's THR-empty interrupt: writes
//!    [`minimal::SERIAL_IER_THR_EMPTY`] to the interrupt enable register
//!    [`minimal::SERIAL_IER_PORT`], so a VMM whose 16550 raises GSI
//!    [`minimal::SERIAL_GSI`] gets vector `0x24` delivered;
//! 6. prints [`minimal::IRQ_READY`] and `"\n"`, executes `sti` and loops on
//!    `hlt` forever.
//!
//! Each interrupt on a vector `0x20..=0x3f` runs a handler that writes the
//! vector as one byte (`out` of 1 byte) to [`minimal::IRQ_REPORT_PORT`]
//! (`0x511`), **then** writes 0 to the local APIC's EOI register
//! ([`minimal::LAPIC_BASE`]` + 0xb0`) and returns with `iretq`; it preserves
//! every register. Vector `0xff` returns at once, without report or EOI.
//! Vectors [`minimal::MSI_VECTOR_FIRST`]`..=`[`minimal::MSI_VECTOR_LAST`]
//! (`0x38..=0x3f`) have gates but no IOAPIC pin: they are free for MSIs
//! (address `0xfee0_0000`, data = vector, reaches APIC ID 0).
//!
//! The report comes before the EOI so that a VMM can deassert a
//! level-triggered line while it handles the report's port exit: the EOI then
//! finds the line low and nothing is delivered again. A line still high at
//! the EOI is delivered again, and reported again, as on real hardware. On a
//! host whose local APIC retires an interrupt when it delivers it (see the
//! next section) the line is sampled at delivery instead, so a line
//! deasserted at the report is delivered, and reported, exactly once more. A
//! level-triggered *pulse* (raise, then lower, before the vCPU takes the
//! interrupt) is reported exactly once on every host.
//!
//! Interrupt mode needs a local APIC and an IOAPIC at the usual addresses
//! that the VMM does not see as MMIO exits, i.e. an in-kernel irqchip
//! (KVM's `KVM_CREATE_IRQCHIP`). The BSP's `hlt` then waits inside the
//! hypervisor, so its thread returns from `run()` only at the next report (or
//! other exit). With an in-kernel irqchip KVM also starts every vCPU but the
//! first in the "uninitialized" (wait-for-SIPI) state: set the APs'
//! multiprocessing state to runnable before running them.
//!
//! ## Size
//!
//! The code uses only baseline x86-64 instructions and no software
//! interrupts, and keeps ring-0 instruction counts low (the page tables and
//! the IDT are static data), because nested hosts may emulate every guest
//! instruction.
//!
//! # Writing guest code for a software-emulated KVM
//!
//! On a nested KVM that emulates ring-0 guest code (such as this project's CI
//! host), each ring-0 instruction costs about 2 µs, and these fail with an
//! emulation error at CPL0: `int N`, `int3`, `cmpxchg16b`, `xsave`/`xrstor`,
//! `xgetbv`, `clac`/`stac`, `popcnt`, `rdtscp`, `andn`, `adcx`, `lar`,
//! `verr`. Faults such as `#UD` or `#PF`, and events injected by the host, are
//! delivered normally. Guest code here is therefore baseline x86-64, never
//! built for the host CPU.
//!
//! That host's in-kernel local APIC also retires each interrupt as it
//! injects it: while the handler runs, the in-service register is already
//! clear (`KVM_GET_LAPIC` shows ISR and PPR 0), the guest's EOI write changes
//! nothing, and for a level-triggered IOAPIC pin the EOI reaches the IOAPIC
//! before the handler's first instruction. Guest code still writes EOI, as
//! other hosts need it; tests must not rely on the EOI's timing.
//!
//! # Example
//!
//! ```
//! use vmkit_guests::minimal;
//!
//! assert_eq!(&minimal::ELF[..4], b"\x7fELF");
//! assert_eq!(
//!     minimal::expected_serial(b"GenuineIntel", 0x1234_abcd),
//!     "hello from the vmkit minimal kernel\ncpu 0 online\n\
//!      cpuid: GenuineIntel\nmmio: 1234abcd\nbye\n"
//! );
//!
//! // Three vCPUs: the APs' lines come in whatever order they took the lock.
//! let smp = "hello from the vmkit minimal kernel\ncpu 0 online\ncpu 2 online\n\
//!            cpu 1 online\ncpuid: GenuineIntel\nmmio: 1234abcd\nbye\n";
//! assert_eq!(minimal::check_smp_serial(smp, b"GenuineIntel", 0x1234_abcd, 3), Ok(()));
//! assert!(minimal::check_smp_serial(smp, b"GenuineIntel", 0x1234_abcd, 4).is_err());
//!
//! // Interrupt mode: GSI 17 is level-triggered and arrives as vector 0x31.
//! assert_eq!(minimal::gsi_vector(17), Some(0x31));
//! assert_eq!(minimal::ENTRY_FLAG_INTERRUPTS, 1);
//!
//! // The virtio-blk driver (rdx bit 1): two lines before the CPUID line, and
//! // the pattern it writes to sectors 8..16.
//! assert_eq!(minimal::ENTRY_FLAG_VIRTIO_BLK, 2);
//! assert_eq!(
//!     minimal::expected_blk_serial(b"GenuineIntel", 0x1234_abcd),
//!     "hello from the vmkit minimal kernel\ncpu 0 online\n\
//!      virtio-blk: signature VMKITDSK\nvirtio-blk: ok\n\
//!      cpuid: GenuineIntel\nmmio: 1234abcd\nbye\n"
//! );
//! assert_eq!(
//!     minimal::expected_blk_serial_with(b"GenuineIntel", 1, &[minimal::BLK_NO_DEVICE]),
//!     "hello from the vmkit minimal kernel\ncpu 0 online\nvirtio-blk: no device\n\
//!      cpuid: GenuineIntel\nmmio: 00000001\nbye\n"
//! );
//! assert_eq!(&[0, 1, 2, 256].map(minimal::blk_pattern), &[7, 38, 69, 7]);
//!
//! // Counting mode (rdx bit 2), snapshotted in the middle of "count 17":
//! // each part checks on its own, and the count goes on across the cut.
//! assert_eq!(minimal::ENTRY_FLAG_COUNT, 4);
//! let full = minimal::expected_count_serial(&[]);
//! let cut = full.find("count 17").unwrap() + 7;
//! let (before, after) = full.split_at(cut);
//! assert!(before.ends_with("count 1") && after.starts_with("7\ncount 18\n"));
//! assert_eq!(minimal::check_count_serial(before), Ok((1, 16)));
//! assert_eq!(minimal::check_count_serial(after), Ok((17, minimal::COUNT_LIMIT)));
//! assert_eq!(minimal::check_count_serial(&full), Ok((1, 40)));
//! assert!(minimal::check_count_serial("count 16\ncount 1\n").is_err());
//! assert_eq!(&minimal::count_sector_bytes(40)[..9], &[40, 0, 0, 0, 0, 0, 0, 0, 0]);
//! ```

#![forbid(unsafe_code)]

pub mod snippets;

/// The minimal kernel: serial output, SMP bring-up of VMM-started vCPUs,
/// CPUID, one MMIO read and write, power off, an optional interrupt mode,
/// an optional virtio-mmio + virtio-blk driver and an optional counting mode
/// for snapshot tests. See the [crate documentation](crate) for its boot protocol.
pub mod minimal {
    /// The kernel's ELF64 image, built from `src/minimal.S` and
    /// `src/minimal.ld`.
    pub const ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/minimal.elf"));

    /// Guest physical (and virtual) address of the start of the image's only
    /// `PT_LOAD` segment: 1 MiB. The 64-bit entry (`e_entry`) is here too.
    pub const LOAD_ADDR: u64 = 0x10_0000;

    /// Boot flag (bit 0 of `rdx` at the 64-bit entry of the bootstrap
    /// processor; see the [crate documentation](crate)): after bring-up, the
    /// bootstrap processor enters interrupt mode instead of running the
    /// CPUID/MMIO/power-off sequence.
    pub const ENTRY_FLAG_INTERRUPTS: u64 = 1 << 0;

    /// Boot flag (bit 1 of `rdx` at the 64-bit entry of the bootstrap
    /// processor; independent of [`ENTRY_FLAG_INTERRUPTS`]): after bring-up,
    /// the bootstrap processor runs the virtio-blk driver against the
    /// virtio-mmio device at [`VIRTIO_MMIO_BASE`] before going on. See
    /// [the driver's description](crate#the-virtio-blk-driver).
    pub const ENTRY_FLAG_VIRTIO_BLK: u64 = 1 << 1;

    /// Boot flag (bit 2 of `rdx` at the 64-bit entry of the bootstrap
    /// processor): after bring-up (and after the virtio-blk driver, with
    /// [`ENTRY_FLAG_VIRTIO_BLK`]), the bootstrap processor counts from 1 to
    /// [`COUNT_LIMIT`] instead of running the CPUID/MMIO sequence or
    /// interrupt mode ([`ENTRY_FLAG_INTERRUPTS`] is then ignored). See
    /// [counting mode](crate#counting-mode).
    pub const ENTRY_FLAG_COUNT: u64 = 1 << 2;

    /// The last number counting mode prints; it then prints [`COUNT_DONE`].
    pub const COUNT_LIMIT: u64 = 40;

    /// The sector counting mode writes each number to (as `le64`, padded
    /// with zeros to one sector; see [`count_sector_bytes`]) and reads back,
    /// when the virtio-blk driver succeeded. The disk needs at least
    /// `COUNT_SECTOR + 1` sectors; the driver itself only checks for
    /// `BLK_TEST_SECTOR + BLK_TEST_SECTORS` (= `COUNT_SECTOR`), so a smaller
    /// disk gives [`COUNT_DISK_ERROR`].
    pub const COUNT_SECTOR: u64 = 16;

    /// How many times counting mode executes `pause` after each number, so
    /// that one number takes a few milliseconds on the nested CI host and a
    /// host can stop the VM between two of them.
    pub const COUNT_DELAY: u32 = 1000;

    /// The line (without `"\n"`) counting mode prints after
    /// `count_line(COUNT_LIMIT)`, before `bye`.
    pub const COUNT_DONE: &str = "count done";

    /// The line (without `"\n"`) counting mode prints when writing the
    /// number to [`COUNT_SECTOR`], or reading it back, fails; it then stops
    /// counting and prints `bye` and powers off.
    pub const COUNT_DISK_ERROR: &str = "count: disk error";

    /// Guest physical address of the virtio-mmio device the virtio-blk
    /// driver uses; its registers (layout version 2) span
    /// [`VIRTIO_MMIO_SIZE`] bytes. The kernel's page tables map it.
    pub const VIRTIO_MMIO_BASE: u64 = 0xd100_0000;

    /// Size of the virtio-mmio register window at [`VIRTIO_MMIO_BASE`]; the
    /// driver accesses nothing beyond offset `0x107`.
    pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;

    /// The `MagicValue` register (offset `0x000`) the driver requires:
    /// `"virt"` in little-endian.
    pub const VIRTIO_MMIO_MAGIC: u32 = 0x7472_6976;

    /// The `Version` register (offset `0x004`) the driver requires: 2, the
    /// non-legacy register layout.
    pub const VIRTIO_MMIO_VERSION: u32 = 2;

    /// The `DeviceID` register (offset `0x008`) the driver requires: 2, a
    /// block device.
    pub const VIRTIO_ID_BLOCK: u32 = 2;

    /// The one feature the driver requires: `VIRTIO_F_VERSION_1` (bit 32).
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

    /// The optional feature the driver accepts when offered:
    /// `VIRTIO_BLK_F_FLUSH` (bit 9). It flushes only when this was negotiated,
    /// and declines every other offered feature.
    pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

    /// The most entries the driver gives queue 0: `QueueNum` is the largest
    /// power of two no larger than both this and `QueueNumMax`.
    pub const BLK_QUEUE_SIZE: u16 = 8;

    /// The fewest queue entries the driver works with (a request uses up to
    /// three descriptors); a smaller `QueueNum` fails the `queue` step.
    pub const BLK_QUEUE_MIN_SIZE: u16 = 4;

    /// The most times the driver polls the device in any one wait (for
    /// `Status` to read 0 after reset, for the used ring to advance after a
    /// notification) before it reports an error: about 28 s on the nested
    /// CI host, where each poll is a few emulated instructions. A liveness
    /// bound, not a latency one: a flush is an `fdatasync` of the disk file,
    /// which can take seconds on a host busy writing (a loaded CI run saw the
    /// driver stop after three of its four requests at the former 3.5 s).
    pub const BLK_POLL_LIMIT: u32 = 0x80_0000;

    /// How many times the driver reads the capacity while
    /// `ConfigGeneration` changes under it before it reports an error.
    pub const BLK_CONFIG_TRIES: u32 = 4;

    /// Size of a virtio-blk sector in bytes.
    pub const BLK_SECTOR_SIZE: u64 = 512;

    /// The first sector the driver writes the test pattern to and reads it
    /// back from.
    pub const BLK_TEST_SECTOR: u64 = 8;

    /// How many sectors the driver writes and reads back; the device's
    /// capacity must be at least `BLK_TEST_SECTOR + BLK_TEST_SECTORS`.
    pub const BLK_TEST_SECTORS: u64 = 8;

    /// The bytes the driver writes (and reads back) in one request:
    /// `BLK_TEST_SECTORS * BLK_SECTOR_SIZE` = 4096.
    pub const BLK_TEST_BYTES: usize = (BLK_TEST_SECTORS * BLK_SECTOR_SIZE) as usize;

    /// What a host's test disk carries in its first 8 bytes; the driver
    /// prints the first 8 bytes of sector 0, whatever they are, in
    /// [`blk_signature_line`].
    pub const BLK_SIGNATURE: &[u8; 8] = b"VMKITDSK";

    /// The line (without `"\n"`) the driver prints when there is no
    /// virtio-blk device (version 2) at [`VIRTIO_MMIO_BASE`].
    pub const BLK_NO_DEVICE: &str = "virtio-blk: no device";

    /// The line (without `"\n"`) the driver prints once the pattern read
    /// back matches what it wrote.
    pub const BLK_OK: &str = "virtio-blk: ok";

    /// The steps that can fail, in the order the driver runs them, as
    /// printed by [`blk_error_line`]:
    ///
    /// - `reset`: `Status` did not read 0 after the reset;
    /// - `features`: the device does not offer [`VIRTIO_F_VERSION_1`];
    /// - `features-ok`: FEATURES_OK did not stay set in `Status`;
    /// - `queue`: queue 0 already reads ready, or gets fewer than
    ///   [`BLK_QUEUE_MIN_SIZE`] entries;
    /// - `driver-ok`: `Status` shows DEVICE_NEEDS_RESET after DRIVER_OK;
    /// - `capacity`: `ConfigGeneration` never held still, or the capacity is
    ///   below `BLK_TEST_SECTOR + BLK_TEST_SECTORS`;
    /// - `read`, `write`, `flush`, `read-back`: that request failed: the used
    ///   ring did not advance within [`BLK_POLL_LIMIT`] polls, or its element's
    ///   `id` was not 0, or the status byte was not 0;
    /// - `verify`: the sectors read back differ from the pattern written.
    pub const BLK_ERROR_STEPS: [&str; 11] = [
        "reset",
        "features",
        "features-ok",
        "queue",
        "driver-ok",
        "capacity",
        "read",
        "write",
        "flush",
        "read-back",
        "verify",
    ];

    /// The most vCPUs the kernel brings up; a vCPU started with an index of
    /// this or more halts at once without printing.
    pub const MAX_VCPUS: u32 = 64;

    /// Size of each vCPU's stack in the kernel's `.bss`.
    pub const VCPU_STACK_SIZE: u64 = 1024;

    /// I/O port of the 16550 UART the kernel writes to (COM1's THR).
    pub const SERIAL_PORT: u16 = 0x3f8;

    /// I/O port of the UART's interrupt enable register, written once (with
    /// [`SERIAL_IER_THR_EMPTY`]) in interrupt mode.
    pub const SERIAL_IER_PORT: u16 = SERIAL_PORT + 1;

    /// The value interrupt mode writes to [`SERIAL_IER_PORT`]: only the
    /// "transmitter holding register empty" interrupt enabled.
    pub const SERIAL_IER_THR_EMPTY: u8 = 0x02;

    /// The GSI a PC's COM1 raises, delivered in interrupt mode as vector
    /// `gsi_vector(SERIAL_GSI)` = `0x24`.
    pub const SERIAL_GSI: u32 = 4;

    /// I/O port of the UART's line status register, polled before each byte.
    pub const SERIAL_LSR_PORT: u16 = SERIAL_PORT + 5;

    /// The line status register bit (THR empty) the kernel waits for; a host
    /// should answer reads of [`SERIAL_LSR_PORT`] with this bit set (`0x60`,
    /// THR and transmitter empty, is the usual idle value).
    pub const LSR_THR_EMPTY: u8 = 0x20;

    /// The first line the kernel prints (followed by `"\n"`).
    pub const HELLO: &str = "hello from the vmkit minimal kernel";

    /// The last line the kernel prints in interrupt mode (followed by
    /// `"\n"`), just before it enables interrupts.
    pub const IRQ_READY: &str = "irq ready";

    /// Guest physical address of the kernel's 32-bit MMIO read.
    pub const MMIO_READ_ADDR: u64 = 0xd000_0000;

    /// Guest physical address of the kernel's 32-bit MMIO write, which
    /// carries the value read from [`MMIO_READ_ADDR`] plus one (wrapping).
    pub const MMIO_WRITE_ADDR: u64 = 0xd000_0004;

    /// I/O port the kernel writes [`POWER_OFF_VALUE`] to when done: the
    /// i8042 command port.
    pub const POWER_OFF_PORT: u16 = 0x64;

    /// Byte written to [`POWER_OFF_PORT`] when done: the i8042 "pulse reset
    /// line" command, which a VMM treats as power off or reset.
    pub const POWER_OFF_VALUE: u8 = 0xfe;

    /// I/O port the interrupt handler writes each vector it runs for to, as
    /// one byte, before it signals end of interrupt.
    pub const IRQ_REPORT_PORT: u16 = 0x511;

    /// The first vector with a reporting handler; IOAPIC pin `g` is
    /// programmed to vector `IRQ_VECTOR_BASE + g`.
    pub const IRQ_VECTOR_BASE: u8 = 0x20;

    /// The last vector with a reporting handler.
    pub const IRQ_VECTOR_LAST: u8 = 0x3f;

    /// The first vector with a reporting handler but no IOAPIC pin, free for
    /// MSIs (message address `0xfee0_0000`, data = vector).
    pub const MSI_VECTOR_FIRST: u8 = 0x38;

    /// The last vector free for MSIs.
    pub const MSI_VECTOR_LAST: u8 = IRQ_VECTOR_LAST;

    /// The local APIC's spurious-interrupt vector; its handler returns
    /// without reporting and without EOI.
    pub const SPURIOUS_VECTOR: u8 = 0xff;

    /// Guest physical address of the local APIC (xAPIC MMIO) the kernel
    /// enables and signals end of interrupt to.
    pub const LAPIC_BASE: u64 = 0xfee0_0000;

    /// Guest physical address of the IOAPIC the kernel programs.
    pub const IOAPIC_BASE: u64 = 0xfec0_0000;

    /// How many IOAPIC pins (GSIs `0..IOAPIC_GSI_COUNT`) the kernel programs
    /// and unmasks.
    pub const IOAPIC_GSI_COUNT: u32 = 24;

    /// The first GSI programmed level-triggered; the ones below it are
    /// edge-triggered. All are active high.
    pub const IOAPIC_LEVEL_GSI_START: u32 = 16;

    /// The vector an IOAPIC GSI is delivered as in interrupt mode, or `None`
    /// for a GSI the kernel does not program.
    pub const fn gsi_vector(gsi: u32) -> Option<u8> {
        if gsi < IOAPIC_GSI_COUNT {
            Some(IRQ_VECTOR_BASE + gsi as u8)
        } else {
            None
        }
    }

    /// Whether the kernel programs `gsi` level-triggered (else, for a GSI
    /// below [`IOAPIC_GSI_COUNT`], edge-triggered).
    pub const fn gsi_is_level_triggered(gsi: u32) -> bool {
        gsi >= IOAPIC_LEVEL_GSI_START && gsi < IOAPIC_GSI_COUNT
    }

    /// The line (without `"\n"`) vCPU `index` prints once it is online.
    pub fn cpu_online_line(index: u32) -> String {
        format!("cpu {index} online")
    }

    /// The line (without `"\n"`) counting mode prints for `n`:
    /// `"count <n>"`, `n` in decimal.
    pub fn count_line(n: u64) -> String {
        format!("count {n}")
    }

    /// The sector counting mode writes to [`COUNT_SECTOR`] for `n`: `n` as
    /// `le64`, then 504 zero bytes. After a complete run the disk holds
    /// `count_sector_bytes(COUNT_LIMIT)` there.
    pub fn count_sector_bytes(n: u64) -> [u8; BLK_SECTOR_SIZE as usize] {
        let mut sector = [0; BLK_SECTOR_SIZE as usize];
        sector[..8].copy_from_slice(&n.to_le_bytes());
        sector
    }

    /// The kernel's complete serial output on one vCPU started with
    /// [`ENTRY_FLAG_COUNT`] when the virtio-blk driver prints `blk_lines`
    /// (each without `"\n"`; `&[]` without [`ENTRY_FLAG_VIRTIO_BLK`]) and
    /// every count succeeds: [`HELLO`], `cpu 0 online`, `blk_lines`,
    /// `count 1` to `count 40`, [`COUNT_DONE`], `bye`.
    pub fn expected_count_serial(blk_lines: &[&str]) -> String {
        let mut out = format!("{HELLO}\n{}\n", cpu_online_line(0));
        for line in blk_lines {
            out.push_str(line);
            out.push('\n');
        }
        for n in 1..=COUNT_LIMIT {
            out.push_str(&count_line(n));
            out.push('\n');
        }
        out.push_str(COUNT_DONE);
        out.push_str("\nbye\n");
        out
    }

    /// The number in a complete `count N` line, as the kernel prints it
    /// (decimal, no sign, no leading zero).
    fn parse_count_line(line: &str) -> Option<u64> {
        let digits = line.strip_prefix("count ")?;
        let well_formed = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !(digits.len() > 1 && digits.starts_with('0'));
        well_formed.then(|| digits.parse().ok()).flatten()
    }

    /// Checks the `count N` lines in the serial output of counting mode (all
    /// of a run, or only what one process saw of it before a snapshot or
    /// after a restore) and returns `(first, last)`: the first and the last
    /// `N` seen.
    ///
    /// - Lines before the first complete `count N` line may be anything but
    ///   [`COUNT_DONE`] or [`COUNT_DISK_ERROR`] (the hello, `cpu k online`
    ///   and virtio-blk lines, or the tail of a line cut by a snapshot).
    /// - From that line on, the lines must be `count N`, `count N+1`, … (no
    ///   gap, no repeat, no restart), each `N` in `1..=COUNT_LIMIT`,
    ///   optionally followed, once `N` reached [`COUNT_LIMIT`], by
    ///   [`COUNT_DONE`] and then `bye`; nothing after `bye`.
    ///   [`COUNT_DISK_ERROR`] or any other line is an error that names it.
    /// - **Cut lines.** A snapshot can fall in the middle of a line: the
    ///   process that ran before it has the line's start without its
    ///   `"\n"`, the restored one has the rest. A line counts in the output
    ///   that has its `"\n"`: a last line without `"\n"` is not counted but
    ///   must be the start of the line expected next, and a first line of
    ///   the output that is the end (possibly empty) of `count_line(M - 1)`,
    ///   where `count M` is the first complete count line, counts as
    ///   `M - 1`.
    ///
    /// So for a run snapshotted once, the output `a` before the snapshot
    /// and `b` after the restore give `(1, k)` and `(k + 1, COUNT_LIMIT)`,
    /// whatever the point of the snapshot, and so does `a + b` as a whole
    /// (`(1, COUNT_LIMIT)`). An output with no complete `count N` line is an
    /// error.
    pub fn check_count_serial(output: &str) -> Result<(u64, u64), String> {
        let (complete, partial) = match output.rfind('\n') {
            Some(end) => (&output[..end], &output[end + 1..]),
            None => ("", output),
        };
        let lines: Vec<&str> = if output.contains('\n') {
            complete.split('\n').collect()
        } else {
            Vec::new()
        };
        let context = |i: usize| format!("line {} ({:?}) of {output:?}", i + 1, lines[i]);
        let Some(start) = lines
            .iter()
            .position(|line| parse_count_line(line).is_some())
        else {
            return Err(format!("no complete `count N` line in {output:?}"));
        };
        if let Some(i) = lines[..start]
            .iter()
            .position(|&line| line == COUNT_DONE || line == COUNT_DISK_ERROR)
        {
            return Err(format!("{} before any count", context(i)));
        }
        let mut last = parse_count_line(lines[start]).unwrap_or_default();
        if !(1..=COUNT_LIMIT).contains(&last) {
            return Err(format!(
                "{}: N is outside 1..={COUNT_LIMIT}",
                context(start)
            ));
        }
        let mut first = last;
        if start == 1 && last >= 2 && count_line(last - 1).ends_with(lines[0]) {
            first = last - 1; // the end of a line cut by a snapshot
        }
        // 0: counting, 1: "count done" seen, 2: "bye" seen.
        let mut stage = 0;
        for (i, &line) in lines.iter().enumerate().skip(start + 1) {
            let expected = match stage {
                0 if last < COUNT_LIMIT => count_line(last + 1),
                0 => COUNT_DONE.to_owned(),
                1 => "bye".to_owned(),
                _ => return Err(format!("{} after bye", context(i))),
            };
            if line != expected {
                let why = if line == COUNT_DISK_ERROR {
                    format!("the guest reported a disk error after count {last}")
                } else {
                    format!("expected {expected:?}")
                };
                return Err(format!("{}: {why}", context(i)));
            }
            if stage == 0 && last < COUNT_LIMIT {
                last += 1;
            } else {
                stage += 1;
            }
        }
        if !partial.is_empty() {
            let expected = match stage {
                0 if last < COUNT_LIMIT => count_line(last + 1),
                0 => COUNT_DONE.to_owned(),
                1 => "bye".to_owned(),
                _ => String::new(),
            };
            if !expected.starts_with(partial) {
                return Err(format!(
                    "the last, unfinished line {partial:?} is not the start of {expected:?} in {output:?}"
                ));
            }
        }
        Ok((first, last))
    }

    /// The kernel's complete serial output on one vCPU (entry registers all
    /// zero, or the PVH entry) when CPUID leaf 0 reports `vendor` and the
    /// MMIO read at [`MMIO_READ_ADDR`] returns `mmio`.
    ///
    /// Bytes of `vendor` that are not valid UTF-8 are replaced by U+FFFD.
    pub fn expected_serial(vendor: &[u8; 12], mmio: u32) -> String {
        let mut out = format!("{HELLO}\n{}", cpu_online_line(0));
        for line in tail_lines(vendor, mmio) {
            out.push('\n');
            out.push_str(&line);
        }
        out.push('\n');
        out
    }

    /// Byte `i` of the pattern the virtio-blk driver writes to the disk at
    /// byte offset `BLK_TEST_SECTOR * BLK_SECTOR_SIZE + i` (for `i` in
    /// `0..BLK_TEST_BYTES`): `(i * 31 + 7) & 0xff`. It repeats every 256
    /// bytes.
    pub const fn blk_pattern(i: usize) -> u8 {
        (i.wrapping_mul(31).wrapping_add(7) & 0xff) as u8
    }

    /// The line (without `"\n"`) the driver prints after reading sector 0
    /// whose first 8 bytes are `first_bytes`: `"virtio-blk: signature "` and
    /// those bytes, each outside `0x20..=0x7e` (printable ASCII) replaced
    /// by `'.'`.
    pub fn blk_signature_line(first_bytes: &[u8; 8]) -> String {
        let shown: String = first_bytes
            .iter()
            .map(|&b| {
                if (0x20..=0x7e).contains(&b) {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        format!("virtio-blk: signature {shown}")
    }

    /// The line (without `"\n"`) the driver prints when `step` (one of
    /// [`BLK_ERROR_STEPS`]) fails: `"virtio-blk: error <step>"`.
    pub fn blk_error_line(step: &str) -> String {
        format!("virtio-blk: error {step}")
    }

    /// The kernel's complete serial output on one vCPU started with
    /// [`ENTRY_FLAG_VIRTIO_BLK`] (and not [`ENTRY_FLAG_INTERRUPTS`]) when
    /// the driver succeeds on a disk that starts with [`BLK_SIGNATURE`]:
    /// [`expected_serial`] with [`blk_signature_line`]`(BLK_SIGNATURE)` and
    /// [`BLK_OK`] after `cpu 0 online`.
    pub fn expected_blk_serial(vendor: &[u8; 12], mmio: u32) -> String {
        expected_blk_serial_with(vendor, mmio, &[&blk_signature_line(BLK_SIGNATURE), BLK_OK])
    }

    /// The kernel's complete serial output on one vCPU started with
    /// [`ENTRY_FLAG_VIRTIO_BLK`] (and not [`ENTRY_FLAG_INTERRUPTS`]) when
    /// the driver prints `blk_lines` (each without `"\n"`), for example
    /// `&[BLK_NO_DEVICE]`, or a signature line and an error line.
    pub fn expected_blk_serial_with(vendor: &[u8; 12], mmio: u32, blk_lines: &[&str]) -> String {
        let mut out = format!("{HELLO}\n{}\n", cpu_online_line(0));
        for line in blk_lines
            .iter()
            .copied()
            .map(str::to_owned)
            .chain(tail_lines(vendor, mmio))
        {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// Checks the complete serial output of a boot with `vcpus` vCPUs and
    /// [`ENTRY_FLAG_VIRTIO_BLK`] (no interrupt mode) whose driver succeeds
    /// on a disk that starts with [`BLK_SIGNATURE`]: as
    /// [`check_smp_serial`], with the driver's two lines between the AP
    /// lines and the `cpuid:` line.
    pub fn check_blk_serial(
        output: &str,
        vendor: &[u8; 12],
        mmio: u32,
        vcpus: u32,
    ) -> Result<(), String> {
        let mut tail = vec![blk_signature_line(BLK_SIGNATURE), BLK_OK.to_owned()];
        tail.extend(tail_lines(vendor, mmio));
        check_lines(output, vcpus, &tail)
    }

    /// The kernel's complete serial output on one vCPU in interrupt mode, up
    /// to the point where it enables interrupts.
    pub fn expected_irq_serial() -> String {
        format!("{HELLO}\n{}\n{IRQ_READY}\n", cpu_online_line(0))
    }

    /// Checks the complete serial output of a boot with `vcpus` vCPUs
    /// (started with `rdi = vcpus`, indices `0..vcpus`, no interrupt mode)
    /// when CPUID leaf 0 reports `vendor` and the MMIO read returns `mmio`.
    ///
    /// `vcpus` counts as the kernel counts it: 0 as 1, above [`MAX_VCPUS`]
    /// as [`MAX_VCPUS`]. The output must be, line by line: [`HELLO`],
    /// `cpu 0 online`, then `cpu k online` exactly once for each `k` in
    /// `1..vcpus` in any order, then the `cpuid:`, `mmio:` and `bye` lines of
    /// [`expected_serial`], each line ending in `"\n"` and nothing after.
    /// Interleaved lines show up as lines that are none of these. The error
    /// names the first line that is wrong.
    pub fn check_smp_serial(
        output: &str,
        vendor: &[u8; 12],
        mmio: u32,
        vcpus: u32,
    ) -> Result<(), String> {
        check_lines(output, vcpus, &tail_lines(vendor, mmio))
    }

    /// Checks the serial output of a boot with `vcpus` vCPUs in interrupt
    /// mode: as [`check_smp_serial`], but ending with the [`IRQ_READY`] line
    /// instead of the CPUID, MMIO and bye lines.
    pub fn check_irq_serial(output: &str, vcpus: u32) -> Result<(), String> {
        check_lines(output, vcpus, &[IRQ_READY.to_owned()])
    }

    /// The lines (without `"\n"`) the BSP prints after bring-up without
    /// interrupt mode.
    fn tail_lines(vendor: &[u8; 12], mmio: u32) -> [String; 3] {
        let vendor = String::from_utf8_lossy(vendor);
        [
            format!("cpuid: {vendor}"),
            format!("mmio: {mmio:08x}"),
            "bye".to_owned(),
        ]
    }

    /// The vCPU count the kernel waits for when started with `rdi = vcpus`.
    fn effective_vcpus(vcpus: u32) -> u32 {
        vcpus.clamp(1, MAX_VCPUS)
    }

    fn check_lines(output: &str, vcpus: u32, tail: &[String]) -> Result<(), String> {
        let Some(body) = output.strip_suffix('\n') else {
            return Err(format!(
                "the output does not end with a complete line: {output:?}"
            ));
        };
        let lines: Vec<&str> = body.split('\n').collect();
        let vcpus = effective_vcpus(vcpus);
        let head = [HELLO.to_owned(), cpu_online_line(0)];
        let expected_len = head.len() + (vcpus as usize - 1) + tail.len();
        if lines.len() != expected_len {
            return Err(format!(
                "expected {expected_len} lines for {vcpus} vCPU(s), got {}: {output:?}",
                lines.len()
            ));
        }
        let mut waiting: Vec<Option<String>> =
            (1..vcpus).map(|k| Some(cpu_online_line(k))).collect();
        for (i, line) in lines.iter().enumerate() {
            let ap = i.checked_sub(head.len()).filter(|&j| j < waiting.len());
            let ok = if i < head.len() {
                *line == head[i]
            } else if ap.is_some() {
                match waiting.iter_mut().find(|w| w.as_deref() == Some(*line)) {
                    Some(slot) => slot.take().is_some(),
                    None => false,
                }
            } else {
                *line == tail[i - head.len() - waiting.len()]
            };
            if !ok {
                let want = if i < head.len() {
                    format!("{:?}", head[i])
                } else if ap.is_some() {
                    "an AP's \"cpu k online\" line not seen yet".to_owned()
                } else {
                    format!("{:?}", tail[i - head.len() - waiting.len()])
                };
                return Err(format!(
                    "line {} is {line:?}, expected {want}; whole output: {output:?}",
                    i + 1
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::minimal;
    use linux_loader::loader::elf::{Elf, PvhBootCapability};
    use linux_loader::loader::KernelLoader;
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const MEM_SIZE: usize = 4 << 20;

    fn u16_at(bytes: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(bytes[off..off + 2].try_into().unwrap())
    }

    fn u32_at(bytes: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
    }

    /// (p_type, p_offset, p_paddr, p_vaddr, p_filesz, p_memsz) of each
    /// program header.
    fn program_headers(elf: &[u8]) -> Vec<(u32, u64, u64, u64, u64, u64)> {
        let phoff = u64_at(elf, 0x20) as usize;
        let phentsize = u16_at(elf, 0x36) as usize;
        let phnum = u16_at(elf, 0x38) as usize;
        (0..phnum)
            .map(|i| {
                let ph = &elf[phoff + i * phentsize..];
                (
                    u32_at(ph, 0),
                    u64_at(ph, 8),
                    u64_at(ph, 24),
                    u64_at(ph, 16),
                    u64_at(ph, 32),
                    u64_at(ph, 40),
                )
            })
            .collect()
    }

    #[test]
    fn elf_header_is_x86_64_executable() {
        let elf = minimal::ELF;
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELFCLASS64");
        assert_eq!(elf[5], 1, "little endian");
        assert_eq!(u16_at(elf, 0x10), 2, "ET_EXEC");
        assert_eq!(u16_at(elf, 0x12), 62, "EM_X86_64");
    }

    #[test]
    fn one_load_segment_identity_mapped_at_1mib() {
        let phdrs = program_headers(minimal::ELF);
        let loads: Vec<_> = phdrs.iter().filter(|p| p.0 == 1).collect();
        assert_eq!(loads.len(), 1, "exactly one PT_LOAD: {phdrs:x?}");
        let (_, _, paddr, vaddr, filesz, memsz) = *loads[0];
        assert_eq!(paddr, minimal::LOAD_ADDR);
        assert_eq!(vaddr, minimal::LOAD_ADDR);
        assert!(filesz <= memsz);
        assert!(
            filesz <= 64 << 10,
            "image is small: {filesz:#x} bytes in the file"
        );
        assert!(
            memsz <= 128 << 10,
            "image is small: {memsz:#x} bytes in memory"
        );
        assert!(minimal::ELF.len() <= 64 << 10);
    }

    #[test]
    fn linux_loader_reports_entries() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let result = Elf::load(&mem, None, &mut Cursor::new(minimal::ELF), None).unwrap();

        let e_entry = u64_at(minimal::ELF, 0x18);
        assert_eq!(result.kernel_load, GuestAddress(e_entry));
        assert_eq!(
            e_entry,
            minimal::LOAD_ADDR,
            "64-bit entry is first in .text"
        );
        assert!(result.kernel_end > minimal::LOAD_ADDR);
        assert!(result.kernel_end <= minimal::LOAD_ADDR + (128 << 10));

        let PvhBootCapability::PvhEntryPresent(pvh) = result.pvh_boot_cap else {
            panic!("no PVH entry reported: {:?}", result.pvh_boot_cap);
        };
        assert!(pvh.0 > minimal::LOAD_ADDR && pvh.0 < result.kernel_end);
        assert_ne!(pvh.0, e_entry);

        // The segment's bytes landed at LOAD_ADDR.
        let phdrs = program_headers(minimal::ELF);
        let &(_, offset, _, _, filesz, _) = phdrs.iter().find(|p| p.0 == 1).unwrap();
        let mut loaded = vec![0u8; filesz as usize];
        mem.read_slice(&mut loaded, GuestAddress(minimal::LOAD_ADDR))
            .unwrap();
        assert_eq!(
            loaded,
            &minimal::ELF[offset as usize..(offset + filesz) as usize]
        );
    }

    #[test]
    fn pvh_note_is_the_only_note_segment() {
        // linux-loader only looks at the last PT_NOTE segment it sees.
        let notes = program_headers(minimal::ELF)
            .iter()
            .filter(|p| p.0 == 4)
            .count();
        assert_eq!(notes, 1);
    }

    #[test]
    fn image_contains_the_strings_it_prints() {
        let contains = |needle: &[u8]| minimal::ELF.windows(needle.len()).any(|w| w == needle);
        assert!(contains(minimal::HELLO.as_bytes()));
        assert!(contains(b"cpuid: "));
        assert!(contains(b"mmio: "));
        assert!(contains(b"bye\n"));
        assert!(contains(b"cpu "));
        assert!(contains(b" online\n"));
        assert!(contains(format!("{}\n", minimal::IRQ_READY).as_bytes()));
    }

    #[test]
    fn expected_serial_formats_hex() {
        assert_eq!(
            minimal::expected_serial(b"AuthenticAMD", 0xab),
            "hello from the vmkit minimal kernel\ncpu 0 online\ncpuid: AuthenticAMD\n\
             mmio: 000000ab\nbye\n"
        );
    }

    /// The value of symbol `name` in the image's symbol table.
    fn symbol(name: &str) -> u64 {
        let elf = minimal::ELF;
        let shoff = u64_at(elf, 0x28) as usize;
        let shentsize = u16_at(elf, 0x3a) as usize;
        let shnum = u16_at(elf, 0x3c) as usize;
        let section = |i: usize| &elf[shoff + i * shentsize..shoff + (i + 1) * shentsize];
        let symtab = (0..shnum)
            .map(section)
            .find(|sh| u32_at(sh, 4) == 2)
            .expect("the image keeps its SHT_SYMTAB");
        let strtab = section(u32_at(symtab, 40) as usize);
        let strings = &elf[u64_at(strtab, 24) as usize..][..u64_at(strtab, 32) as usize];
        let (offset, size, entsize) = (
            u64_at(symtab, 24) as usize,
            u64_at(symtab, 32) as usize,
            u64_at(symtab, 56) as usize,
        );
        elf[offset..offset + size]
            .chunks(entsize)
            .find(|sym| {
                let name_at = &strings[u32_at(sym, 0) as usize..];
                let len = name_at.iter().position(|&b| b == 0).unwrap();
                &name_at[..len] == name.as_bytes()
            })
            .map(|sym| u64_at(sym, 8))
            .unwrap_or_else(|| panic!("no symbol {name}"))
    }

    /// The image's bytes at guest address `addr` (in the file-backed part).
    fn image_at(addr: u64, len: usize) -> &'static [u8] {
        let phdrs = program_headers(minimal::ELF);
        let &(_, offset, paddr, _, filesz, _) = phdrs.iter().find(|p| p.0 == 1).unwrap();
        assert!(
            addr >= paddr && addr + len as u64 <= paddr + filesz,
            "{addr:#x}"
        );
        let start = (offset + addr - paddr) as usize;
        &minimal::ELF[start..start + len]
    }

    #[test]
    fn idt_has_gates_for_the_documented_vectors_only() {
        let idt = symbol("idt");
        let idt_ptr = image_at(symbol("idt_ptr"), 10);
        assert_eq!(u16_at(idt_ptr, 0), 256 * 16 - 1, "IDT limit");
        assert_eq!(u64_at(idt_ptr, 2), idt, "IDT base");
        let stubs = symbol("irq_stubs");
        for vector in 0..=255u8 {
            let gate = image_at(idt + 16 * u64::from(vector), 16);
            let offset = u64::from(u16_at(gate, 0))
                | u64::from(u16_at(gate, 6)) << 16
                | u64::from(u32_at(gate, 8)) << 32;
            let handler = match vector {
                minimal::IRQ_VECTOR_BASE..=minimal::IRQ_VECTOR_LAST => {
                    stubs + 8 * u64::from(vector - minimal::IRQ_VECTOR_BASE)
                }
                minimal::SPURIOUS_VECTOR => symbol("spurious"),
                _ => {
                    assert_eq!(gate, [0; 16], "vector {vector:#x} has no gate");
                    continue;
                }
            };
            assert_eq!(offset, handler, "vector {vector:#x}");
            assert_eq!(u16_at(gate, 2), 0x08, "vector {vector:#x}: selector");
            assert_eq!(gate[4], 0, "vector {vector:#x}: IST");
            assert_eq!(gate[5], 0x8e, "vector {vector:#x}: present interrupt gate");
        }
        // Each stub: push %rax; mov $vector, %al; jmp irq_common.
        for vector in minimal::IRQ_VECTOR_BASE..=minimal::IRQ_VECTOR_LAST {
            let stub = image_at(stubs + 8 * u64::from(vector - minimal::IRQ_VECTOR_BASE), 3);
            assert_eq!(stub, [0x50, 0xb0, vector]);
        }
        assert_eq!(image_at(symbol("spurious"), 2), [0x48, 0xcf], "iretq");
    }

    #[test]
    fn shared_state_is_loaded_and_stacks_fit_in_the_image() {
        let phdrs = program_headers(minimal::ELF);
        let &(_, _, paddr, _, filesz, memsz) = phdrs.iter().find(|p| p.0 == 1).unwrap();
        // Loading the image resets the lock, the flag and the counter.
        for name in ["serial_lock", "hello_done", "online", "blk_ready"] {
            assert_eq!(image_at(symbol(name), 4), [0; 4], "{name}");
        }
        let stacks = symbol("stacks");
        assert_eq!(stacks % 16, 0);
        let stacks_end = stacks + u64::from(minimal::MAX_VCPUS) * minimal::VCPU_STACK_SIZE;
        assert_eq!(stacks_end, paddr + memsz, "the stacks end the image");
        assert!(stacks >= paddr + filesz, "stacks are in .bss");
    }

    #[test]
    fn gsi_vectors_and_trigger_modes() {
        assert_eq!(minimal::gsi_vector(0), Some(0x20));
        assert_eq!(minimal::gsi_vector(minimal::SERIAL_GSI), Some(0x24));
        assert_eq!(minimal::gsi_vector(17), Some(0x31));
        assert_eq!(minimal::gsi_vector(23), Some(0x37));
        assert_eq!(minimal::gsi_vector(24), None);
        assert_eq!(
            minimal::gsi_vector(minimal::IOAPIC_GSI_COUNT - 1).map(|v| v + 1),
            Some(minimal::MSI_VECTOR_FIRST),
            "MSI vectors follow the IOAPIC's"
        );
        assert!(!minimal::gsi_is_level_triggered(15));
        assert!(minimal::gsi_is_level_triggered(16));
        assert!(minimal::gsi_is_level_triggered(23));
        assert!(!minimal::gsi_is_level_triggered(24));
    }

    const VENDOR: &[u8; 12] = b"GenuineIntel";

    fn smp_output(ap_order: &[u32]) -> String {
        let mut out = format!("{}\ncpu 0 online\n", minimal::HELLO);
        for k in ap_order {
            out.push_str(&format!("cpu {k} online\n"));
        }
        out + "cpuid: GenuineIntel\nmmio: 0000002a\nbye\n"
    }

    #[test]
    fn check_smp_serial_accepts_any_ap_order() {
        let check = |out: &str, n| minimal::check_smp_serial(out, VENDOR, 42, n);
        assert_eq!(check(&minimal::expected_serial(VENDOR, 42), 1), Ok(()));
        assert_eq!(check(&minimal::expected_serial(VENDOR, 42), 0), Ok(()));
        assert_eq!(check(&smp_output(&[1]), 2), Ok(()));
        assert_eq!(check(&smp_output(&[3, 1, 2]), 4), Ok(()));
        assert_eq!(check(&smp_output(&[2, 3, 1]), 4), Ok(()));
        let all: Vec<u32> = (1..64).rev().collect();
        assert_eq!(check(&smp_output(&all), 64), Ok(()));
        assert_eq!(
            check(&smp_output(&all), 1000),
            Ok(()),
            "counts above 64 are 64"
        );
    }

    #[test]
    fn check_smp_serial_rejects_wrong_outputs() {
        let check = |out: &str, n| minimal::check_smp_serial(out, VENDOR, 42, n);
        // Missing, duplicated, out-of-range and extra APs.
        assert!(check(&smp_output(&[1, 2]), 4).is_err());
        assert!(check(&smp_output(&[1, 1, 2]), 4).is_err());
        assert!(check(&smp_output(&[1, 2, 4]), 4).is_err());
        assert!(check(&smp_output(&[1, 2, 3]), 3).is_err());
        assert!(check(&smp_output(&[]), 2).is_err());
        // Wrong MMIO value or vendor.
        assert!(minimal::check_smp_serial(&smp_output(&[1]), VENDOR, 43, 2).is_err());
        assert!(minimal::check_smp_serial(&smp_output(&[1]), b"AuthenticAMD", 42, 2).is_err());
        // Interleaved lines.
        let interleaved = smp_output(&[1, 2]).replace(
            "cpu 1 online\ncpu 2 online\n",
            "cpu cpu 1 online\n2 online\n",
        );
        let err = check(&interleaved, 3).unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        // An AP line before "cpu 0 online", or after the BSP went on.
        let early = smp_output(&[1]).replace(
            "cpu 0 online\ncpu 1 online\n",
            "cpu 1 online\ncpu 0 online\n",
        );
        assert!(check(&early, 2).is_err());
        let late = format!(
            "{}\ncpu 0 online\ncpuid: GenuineIntel\ncpu 1 online\nmmio: 0000002a\nbye\n",
            minimal::HELLO
        );
        assert!(check(&late, 2).is_err());
        // Truncated output, and output after "bye".
        let full = smp_output(&[1]);
        assert!(check(&full[..full.len() - 1], 2).is_err());
        assert!(check(&(full.clone() + "x\n"), 2).is_err());
        assert!(check("", 1).is_err());
    }

    #[test]
    fn check_irq_serial_expects_irq_ready_last() {
        assert_eq!(
            minimal::expected_irq_serial(),
            "hello from the vmkit minimal kernel\ncpu 0 online\nirq ready\n"
        );
        assert_eq!(
            minimal::check_irq_serial(&minimal::expected_irq_serial(), 1),
            Ok(())
        );
        let smp = format!(
            "{}\ncpu 0 online\ncpu 2 online\ncpu 1 online\nirq ready\n",
            minimal::HELLO
        );
        assert_eq!(minimal::check_irq_serial(&smp, 3), Ok(()));
        assert!(minimal::check_irq_serial(&smp, 2).is_err());
        assert!(minimal::check_irq_serial(&smp_output(&[1]), 2).is_err());
        assert_eq!(minimal::cpu_online_line(12), "cpu 12 online");
    }

    #[test]
    fn blk_pattern_is_the_documented_formula() {
        assert_eq!(minimal::blk_pattern(0), 7);
        assert_eq!(minimal::blk_pattern(1), 38);
        assert_eq!(minimal::blk_pattern(8), 255);
        assert_eq!(minimal::blk_pattern(9), 30);
        for i in 0..minimal::BLK_TEST_BYTES {
            assert_eq!(minimal::blk_pattern(i), ((i * 31 + 7) % 256) as u8);
            // The kernel computes 256 bytes and copies them forward.
            assert_eq!(minimal::blk_pattern(i), minimal::blk_pattern(i % 256));
        }
        assert_eq!(minimal::blk_pattern(usize::MAX), minimal::blk_pattern(255));
        assert_eq!(
            minimal::BLK_TEST_BYTES,
            4096,
            "one 4 KiB buffer in the kernel"
        );
    }

    #[test]
    fn blk_lines_and_expected_output() {
        assert_eq!(
            minimal::blk_signature_line(minimal::BLK_SIGNATURE),
            "virtio-blk: signature VMKITDSK"
        );
        assert_eq!(
            minimal::blk_signature_line(b"a\0\n~\x7f \x80z"),
            "virtio-blk: signature a..~. .z"
        );
        assert_eq!(
            minimal::blk_error_line("verify"),
            "virtio-blk: error verify"
        );
        assert_eq!(
            minimal::expected_blk_serial(VENDOR, 42),
            "hello from the vmkit minimal kernel\ncpu 0 online\n\
             virtio-blk: signature VMKITDSK\nvirtio-blk: ok\n\
             cpuid: GenuineIntel\nmmio: 0000002a\nbye\n"
        );
        assert_eq!(
            minimal::expected_blk_serial_with(VENDOR, 42, &[]),
            minimal::expected_serial(VENDOR, 42)
        );
        assert_eq!(
            minimal::expected_blk_serial_with(VENDOR, 42, &[minimal::BLK_NO_DEVICE]),
            "hello from the vmkit minimal kernel\ncpu 0 online\nvirtio-blk: no device\n\
             cpuid: GenuineIntel\nmmio: 0000002a\nbye\n"
        );
    }

    #[test]
    fn check_blk_serial_places_the_driver_after_the_aps() {
        let ok = minimal::expected_blk_serial(VENDOR, 42);
        assert_eq!(minimal::check_blk_serial(&ok, VENDOR, 42, 1), Ok(()));
        let smp = ok.replace(
            "cpu 0 online\n",
            "cpu 0 online\ncpu 2 online\ncpu 1 online\n",
        );
        assert_eq!(minimal::check_blk_serial(&smp, VENDOR, 42, 3), Ok(()));
        assert!(minimal::check_blk_serial(&smp, VENDOR, 42, 2).is_err());
        assert!(minimal::check_smp_serial(&smp, VENDOR, 42, 3).is_err());
        let late_ap = ok.replace("virtio-blk: ok\n", "virtio-blk: ok\ncpu 1 online\n");
        assert!(minimal::check_blk_serial(&late_ap, VENDOR, 42, 2).is_err());
        let failed =
            minimal::expected_blk_serial_with(VENDOR, 42, &[&minimal::blk_error_line("read")]);
        assert!(minimal::check_blk_serial(&failed, VENDOR, 42, 1).is_err());
    }

    #[test]
    fn image_contains_the_driver_strings_and_step_names() {
        let contains = |needle: &[u8]| minimal::ELF.windows(needle.len()).any(|w| w == needle);
        assert!(contains(format!("{}\n", minimal::BLK_NO_DEVICE).as_bytes()));
        assert!(contains(format!("{}\n", minimal::BLK_OK).as_bytes()));
        assert!(contains(b"virtio-blk: signature "));
        assert!(contains(b"virtio-blk: error "));
        // Each step's record: a length byte, the name, "\n".
        let symbols = [
            "step_reset",
            "step_features",
            "step_features_ok",
            "step_queue",
            "step_driver_ok",
            "step_capacity",
            "step_read",
            "step_write",
            "step_flush",
            "step_read_back",
            "step_verify",
        ];
        assert_eq!(symbols.len(), minimal::BLK_ERROR_STEPS.len());
        for (symbol_name, step) in symbols.iter().zip(minimal::BLK_ERROR_STEPS) {
            let at = symbol(symbol_name);
            let len = image_at(at, 1)[0] as usize;
            assert_eq!(len, step.len() + 1, "{symbol_name}");
            assert_eq!(image_at(at + 1, len), format!("{step}\n").as_bytes());
        }
    }

    #[test]
    fn virtio_queue_and_buffers_are_aligned_in_bss_below_the_stacks() {
        let phdrs = program_headers(minimal::ELF);
        let &(_, _, paddr, _, filesz, memsz) = phdrs.iter().find(|p| p.0 == 1).unwrap();
        let bss = paddr + filesz;
        let queue_size = u64::from(minimal::BLK_QUEUE_SIZE);
        let bytes = minimal::BLK_TEST_BYTES as u64;
        // (symbol, bytes the driver or the device uses, next symbol)
        let layout = [
            ("vq_desc", 16 * queue_size, "vq_avail"),
            ("vq_avail", 6 + 2 * queue_size, "vq_used"),
            ("vq_used", 6 + 8 * queue_size, "blk_wbuf"),
            ("blk_wbuf", bytes, "blk_rbuf"),
            ("blk_rbuf", bytes, "stacks"),
        ];
        for (name, used, next) in layout {
            let at = symbol(name);
            assert_eq!(at % 4096, 0, "{name} is page-aligned");
            assert!(at >= bss, "{name} is in .bss");
            assert!(at + used <= symbol(next), "{name} fits before {next}");
        }
        assert!(symbol("stacks") < paddr + memsz);
        // Below 4 GiB, so the driver writes 0 to every address's high half.
        assert!(paddr + memsz <= 1 << 32);
        // The request header and status are in .data: loaded, not .bss.
        let hdr = symbol("blk_hdr");
        assert_eq!(hdr % 16, 0);
        assert_eq!(symbol("blk_status"), hdr + 16);
        assert!(hdr >= paddr && symbol("blk_status") < bss);
        assert_eq!(image_at(hdr, 17), [0; 17]);
        assert_eq!(minimal::BLK_QUEUE_MIN_SIZE, 4);
        assert!(minimal::BLK_QUEUE_SIZE.is_power_of_two());
    }

    #[test]
    fn virtio_constants_match_the_spec() {
        assert_eq!(&minimal::VIRTIO_MMIO_MAGIC.to_le_bytes(), b"virt");
        assert_eq!(minimal::VIRTIO_MMIO_VERSION, 2);
        assert_eq!(minimal::VIRTIO_ID_BLOCK, 2);
        assert_eq!(minimal::VIRTIO_F_VERSION_1, 1 << 32);
        assert_eq!(minimal::VIRTIO_MMIO_BASE, 0xd100_0000);
        let window =
            minimal::VIRTIO_MMIO_BASE..minimal::VIRTIO_MMIO_BASE + minimal::VIRTIO_MMIO_SIZE;
        assert!(!window.contains(&minimal::MMIO_READ_ADDR));
        assert!(!window.contains(&minimal::MMIO_WRITE_ADDR));
        assert_eq!(
            minimal::ENTRY_FLAG_VIRTIO_BLK & minimal::ENTRY_FLAG_INTERRUPTS,
            0
        );
        // Sector 0 holds the signature; the test sectors come after it.
        assert_eq!(minimal::BLK_TEST_SECTOR, 8);
        assert_eq!(minimal::BLK_TEST_SECTORS, 8);
    }

    #[test]
    fn count_constants_match_the_kernel() {
        // Each labelled instruction is `mov $imm32, %reg` (0xb8 + reg).
        let imm = |name: &str, opcode: u8| {
            let insn = image_at(symbol(name), 5);
            assert_eq!(insn[0], opcode, "{name}");
            u64::from(u32_at(insn, 1))
        };
        let delay = u64::from(minimal::COUNT_DELAY);
        assert_eq!(imm("count_limit_imm", 0xb8), minimal::COUNT_LIMIT); // eax
        assert_eq!(imm("count_sector_imm", 0xbb), minimal::COUNT_SECTOR); // ebx
        assert_eq!(imm("count_delay_imm", 0xb9), delay); // ecx
                                                         // The counter is a u64 in .data, 0 when loaded.
        let count_n = symbol("count_n");
        assert_eq!(count_n % 8, 0);
        assert_eq!(image_at(count_n, 8), [0; 8]);
        // Disjoint flags; the count sector lies past the driver's test sectors.
        let flags = [
            minimal::ENTRY_FLAG_INTERRUPTS,
            minimal::ENTRY_FLAG_VIRTIO_BLK,
            minimal::ENTRY_FLAG_COUNT,
        ];
        assert_eq!(flags.iter().fold(0, |a, f| a | f), 0b111);
        assert_eq!(
            minimal::COUNT_SECTOR,
            minimal::BLK_TEST_SECTOR + minimal::BLK_TEST_SECTORS
        );
        let contains = |needle: &[u8]| minimal::ELF.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"count "));
        assert!(contains(format!("{}\n", minimal::COUNT_DONE).as_bytes()));
        assert!(contains(
            format!("{}\n", minimal::COUNT_DISK_ERROR).as_bytes()
        ));
    }

    #[test]
    fn count_lines_sector_and_expected_output() {
        assert_eq!(minimal::count_line(7), "count 7");
        assert_eq!(minimal::count_line(40), "count 40");
        let sector = minimal::count_sector_bytes(0x0102);
        assert_eq!(sector.len(), 512);
        assert_eq!(sector[..3], [2, 1, 0]);
        assert!(sector[8..].iter().all(|&b| b == 0));
        let out = minimal::expected_count_serial(&[minimal::BLK_OK]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2 + 1 + 40 + 2);
        assert_eq!(
            lines[..4],
            [minimal::HELLO, "cpu 0 online", "virtio-blk: ok", "count 1"]
        );
        assert_eq!(lines[42..], ["count 40", "count done", "bye"]);
        assert!(out.ends_with("bye\n"));
        assert_eq!(minimal::check_count_serial(&out), Ok((1, 40)));
    }

    #[test]
    fn check_count_serial_accepts_every_snapshot_cut() {
        let full = minimal::expected_count_serial(&[
            &minimal::blk_signature_line(minimal::BLK_SIGNATURE),
            minimal::BLK_OK,
        ]);
        assert_eq!(minimal::check_count_serial(&full), Ok((1, 40)));
        let mut cuts = 0;
        for at in 0..=full.len() {
            let (before, after) = full.split_at(at);
            let (Ok((1, k)), Ok((first, last))) = (
                minimal::check_count_serial(before),
                minimal::check_count_serial(after),
            ) else {
                // Only before "count 1\n" is complete or after "count 40\n"
                // began may either side have no complete count line.
                let count_1_end = full.find("count 1\n").unwrap() + 8;
                let count_40_start = full.find("count 40\n").unwrap();
                assert!(
                    at < count_1_end || at > count_40_start,
                    "cut at {at}: {:?} / {:?}",
                    minimal::check_count_serial(before),
                    minimal::check_count_serial(after)
                );
                continue;
            };
            assert_eq!(first, k + 1, "cut at {at}: {before:?} / {after:?}");
            assert_eq!(last, minimal::COUNT_LIMIT);
            cuts += 1;
        }
        assert!(cuts > 300, "{cuts}");
    }

    #[test]
    fn check_count_serial_rejects_gaps_repeats_restarts_and_errors() {
        let check = minimal::check_count_serial;
        let head = format!("{}\ncpu 0 online\n", minimal::HELLO);
        let counts = |ns: &[u64]| {
            ns.iter()
                .map(|&n| minimal::count_line(n) + "\n")
                .collect::<String>()
        };
        assert_eq!(check(&(head.clone() + &counts(&[1, 2, 3]))), Ok((1, 3)));
        assert_eq!(check(&counts(&[17, 18])), Ok((17, 18)));
        for bad in [
            &[1, 2, 4][..],
            &[1, 2, 2],
            &[5, 6, 1, 2],
            &[3, 2],
            &[0, 1],
            &[41],
        ] {
            let out = head.clone() + &counts(bad);
            assert!(check(&out).is_err(), "{bad:?}");
        }
        // The kernel's own error line, and lines that are not count lines.
        let err = check(&(counts(&[1, 2]) + minimal::COUNT_DISK_ERROR + "\nbye\n")).unwrap_err();
        assert!(err.contains("disk error after count 2"), "{err}");
        assert!(check(&(counts(&[1]) + "count 02\n")).is_err());
        assert!(check(&(counts(&[1]) + "count  2\n")).is_err());
        assert!(check(&(counts(&[1]) + "cpu 1 online\ncount 2\n")).is_err());
        assert!(check(&(minimal::COUNT_DISK_ERROR.to_owned() + "\n" + &counts(&[1]))).is_err());
        // "count done" only after the last number, then "bye", then nothing.
        assert!(check(&(counts(&[1]) + "count done\n")).is_err());
        let all: Vec<u64> = (1..=minimal::COUNT_LIMIT).collect();
        assert_eq!(check(&(counts(&all) + "count done\n")), Ok((1, 40)));
        assert!(check(&(counts(&all) + "bye\n")).is_err());
        assert!(check(&(counts(&all) + "count done\nbye\nx\n")).is_err());
        assert!(check(&(counts(&all) + "count done\nbye\nx")).is_err());
        // An unfinished last line must start the line expected next.
        assert_eq!(check(&(counts(&[1, 2]) + "coun")), Ok((1, 2)));
        assert_eq!(check(&(counts(&[9]) + "count 1")), Ok((9, 9)));
        assert!(check(&(counts(&[1, 2]) + "count 4")).is_err());
        assert!(check(&(counts(&[1, 2]) + "count 2")).is_err());
        // A cut first line counts only as the end of the line before.
        assert_eq!(check(&("\n".to_owned() + &counts(&[18]))), Ok((17, 18)));
        assert_eq!(check(&("t 17\n".to_owned() + &counts(&[18]))), Ok((17, 18)));
        assert_eq!(check(&("x 17\n".to_owned() + &counts(&[18]))), Ok((18, 18)));
        assert_eq!(check(&("1\n".to_owned() + &counts(&[1]))), Ok((1, 1)));
        // No complete count line at all.
        assert!(check("").is_err());
        assert!(check(&head).is_err());
        assert!(check("count 1").is_err());
    }
}
