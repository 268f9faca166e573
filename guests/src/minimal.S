/*
 * vmkit minimal guest kernel (x86-64, GNU assembler, AT&T syntax).
 *
 * Two entry points, one common 64-bit path:
 *
 *   start64   ELF e_entry. Entered in 64-bit long mode, CPL0, flat 64-bit
 *             code segment, 4-level paging on with an identity map that
 *             covers at least the image, interrupts disabled, rsp undefined,
 *             and:  rdi = number of vCPUs the VMM starts (0 or 1: one),
 *                   rsi = this vCPU's index (0: the bootstrap processor),
 *                   rdx = flags, read on the BSP only (bit 0: interrupt
 *                         mode; bit 1: run the virtio-blk driver; bit 2:
 *                         counting mode, which overrides bit 0).
 *             The VMM starts every vCPU here; there is no INIT/SIPI.
 *   pvh_start PVH entry (XEN_ELFNOTE_PHYS32_ENTRY note). Entered in 32-bit
 *             protected mode, paging off, flat CS/DS/ES/SS, ebx = physical
 *             address of hvm_start_info (ignored here). Uniprocessor, no
 *             flags: behaves as start64 with rdi = 1, rsi = 0, rdx = 0.
 *
 * Both load CR3 with the static identity map of the low 4 GiB below (2 MiB
 * pages) so that the MMIO windows (0xd000_0000, virtio-mmio at 0xd100_0000,
 * IOAPIC, LAPIC) are mapped whatever the VMM mapped. A vCPU whose index is 64 or more halts at once;
 * the others take a 1 KiB stack of their own in .bss. Serial output is
 * shared: every line is printed whole under a spinlock.
 *
 * Bootstrap processor (index 0):
 *   1. print "hello from the vmkit minimal kernel\n" on the 16550 at 0x3f8
 *      (poll LSR at 0x3fd for THR-empty, bit 5, before every byte);
 *   2. print "cpu 0 online\n", count itself online, set hello_done, then
 *      wait until min(rdi, 64) vCPUs (itself included) are online;
 *   2'. with rdx bit 1: run the virtio-blk driver below, then go on;
 *   2''. with rdx bit 2: counting mode (below) instead of step 3 or 3';
 *   3. without interrupt mode:
 *      a. print "cpuid: " + the CPUID leaf 0 vendor string + "\n";
 *      b. read 32 bits from 0xd000_0000 (one mov), print "mmio: %08x\n",
 *         write value + 1 (one 32-bit mov) to 0xd000_0004;
 *      c. print "bye\n", write 0xfe to port 0x64, then `cli; hlt` forever;
 *   3'. in interrupt mode (rdx bit 0):
 *      a. load its own GDT (reloading CS and SS) and an IDT with gates for
 *         vectors 0x20-0x3f (report the vector on port 0x511, EOI the
 *         LAPIC, iretq) and 0xff (spurious: iretq only);
 *      b. mask both 8259 PICs, enable the LAPIC (SVR = 0x1ff), program
 *         IOAPIC pins 0-23 to vectors 0x20-0x37 (0-15 edge, 16-23 level;
 *         fixed, physical destination APIC ID 0, active high, unmasked);
 *      c. enable the UART's THR-empty interrupt (IER = 0x02);
 *      d. print "irq ready\n", then `sti` and `hlt` forever.
 *
 * Application processors (index 1..63): wait for hello_done, print
 * "cpu <index> online\n" (index in decimal), count themselves online,
 * then `cli; hlt` forever.
 *
 * virtio-blk driver (BSP, rdx bit 1; polling, no interrupts): a virtio-mmio
 * version 2 device at 0xd100_0000 (virtio 1.2 sections 3.1.1, 4.2.2, 4.2.3,
 * 5.2). No device (magic, version or device ID wrong): print
 * "virtio-blk: no device\n". Otherwise: reset (wait for Status 0),
 * ACKNOWLEDGE, DRIVER, accept VIRTIO_F_VERSION_1 only, FEATURES_OK (re-read),
 * queue 0 with the largest power of two <= min(QueueNumMax, 8) entries (at
 * least 4) in the page-aligned vq_desc/vq_avail/vq_used, DRIVER_OK, read the
 * capacity (config generation checked), then four synchronous requests,
 * each a descriptor chain with head 0 (header, data, status; a flush has no
 * data), published in the available ring and kicked with a write of 0 to
 * QueueNotify, after which used.idx must have advanced:
 *   read sector 0 -> print "virtio-blk: signature XXXXXXXX\n" (its first
 *   8 bytes, '.' for any byte outside 0x20-0x7e); write the pattern
 *   (byte i = (31 i + 7) & 0xff) to sectors 8-15; flush; read 8-15 back
 *   into another buffer and compare -> "virtio-blk: ok\n".
 * Any failure prints "virtio-blk: error <step>\n" and sets FAILED in
 * Status. Either way the driver then acknowledges any InterruptStatus bits.
 *
 * Counting mode (BSP, rdx bit 2): for N = 1..=COUNT_LIMIT: print
 * "count N\n" (N in decimal); if the virtio-blk driver printed
 * "virtio-blk: ok", write N as le64 followed by zeros (one sector) to
 * COUNT_SECTOR, read the sector back and compare its first 8 bytes with N
 * (on any failure print "count: disk error\n" and stop counting), then
 * acknowledge InterruptStatus as the driver does; then spin COUNT_DELAY
 * times on `pause`. After COUNT_LIMIT print "count done\n", then "bye\n"
 * and power off as in 3c (after a disk error: "bye\n" and power off).
 * N lives only in count_n (guest memory) and is never derived from
 * anything the host provides, so a snapshot restored anywhere in the loop
 * goes on from the saved N.
 *
 * Every ring-0 instruction may go through a software instruction emulator
 * on nested hosts, so the code is short, uses only baseline x86-64
 * instructions (no int N / int3), and the page tables and the IDT are
 * static data.
 */

#define LOAD_ADDR       0x100000        /* start64 is here; see minimal.ld */

#define COM1            0x3f8
#define COM1_IER        (COM1 + 1)
#define COM1_LSR        (COM1 + 5)
#define IER_THRE        0x02
#define LSR_THRE        0x20
#define MMIO_READ       0xd0000000
#define MMIO_WRITE_OFF  4
#define POWER_OFF_PORT  0x64
#define POWER_OFF_VALUE 0xfe

#define MAX_CPUS        64
#define STACK_SHIFT     10              /* 1 KiB stack per vCPU */
#define FLAG_INTERRUPTS 0x1
#define FLAG_VIRTIO_BLK 0x2
#define FLAG_COUNT      0x4

#define COUNT_LIMIT     40              /* counting mode: 1..=40 */
#define COUNT_SECTOR    16              /* where N goes on the disk */
#define COUNT_DELAY     1000            /* pause iterations after each N */

#define IRQ_REPORT_PORT 0x511
#define VECTOR_BASE     0x20
#define VECTOR_COUNT    0x20            /* 0x20-0x3f have gates */
#define SPURIOUS_VECTOR 0xff
#define PIC1_DATA       0x21
#define PIC2_DATA       0xa1
#define LAPIC_BASE      0xfee00000
#define LAPIC_EOI       0xb0
#define LAPIC_SVR       0xf0
#define SVR_ENABLE      0x100
#define IOAPIC_BASE     0xfec00000
#define IOAPIC_IOWIN    0x10
#define IOAPIC_REDTBL   0x10
#define IOAPIC_PINS     24
#define IOAPIC_LEVEL_START 16
#define REDIR_LEVEL     0x8000

/* virtio-mmio, register layout version 2 (virtio 1.2 section 4.2.2) */
#define VIRTIO_MMIO_BASE 0xd1000000
#define VIRTIO_MAGIC    0x74726976      /* "virt" */
#define VIRTIO_VERSION  2
#define VIRTIO_ID_BLOCK 2
#define VM_MAGIC        0x000
#define VM_VERSION      0x004
#define VM_DEVICE_ID    0x008
#define VM_DEV_FEATURES 0x010
#define VM_DEV_FEATURES_SEL 0x014
#define VM_DRV_FEATURES 0x020
#define VM_DRV_FEATURES_SEL 0x024
#define VM_QUEUE_SEL    0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM    0x038
#define VM_QUEUE_READY  0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INT_STATUS   0x060
#define VM_INT_ACK      0x064
#define VM_STATUS       0x070
#define VM_QUEUE_DESC_LO 0x080
#define VM_QUEUE_DESC_HI 0x084
#define VM_QUEUE_DRIVER_LO 0x090
#define VM_QUEUE_DRIVER_HI 0x094
#define VM_QUEUE_DEVICE_LO 0x0a0
#define VM_QUEUE_DEVICE_HI 0x0a4
#define VM_CONFIG_GEN   0x0fc
#define VM_CONFIG       0x100           /* virtio-blk: le64 capacity first */

#define S_ACKNOWLEDGE   0x01
#define S_DRIVER        0x02
#define S_DRIVER_OK     0x04
#define S_FEATURES_OK   0x08
#define S_NEEDS_RESET   0x40
#define S_FAILED        0x80
#define F_VERSION_1_HI  0x1             /* feature bit 32 = bit 0 of word 1 */
#define F_BLK_FLUSH_LO  0x200           /* VIRTIO_BLK_F_FLUSH, feature bit 9 */

#define VQ_SIZE         8               /* most entries the driver uses */
#define VQ_MIN_SIZE     4               /* a request takes up to 3 */
#define VQ_DESC_F_NEXT  1
#define VQ_DESC_F_WRITE 2
#define VQ_AVAIL_F_NO_INTERRUPT 1
#define BLK_POLLS       0x800000        /* bound of every wait on the device */
#define BLK_CONFIG_TRIES 4              /* config generation retries */

#define BLK_T_IN        0
#define BLK_T_OUT       1
#define BLK_T_FLUSH     4
#define SECTOR_SIZE     512
#define BLK_TEST_SECTOR 8
#define BLK_TEST_SECTORS 8
#define BLK_TEST_BYTES  (BLK_TEST_SECTORS * SECTOR_SIZE)
#define BLK_PATTERN_MUL 31
#define BLK_PATTERN_ADD 7
#define BLK_PATTERN_PERIOD 256          /* (31 i + 7) mod 256 repeats */

#define CODE64_SEL      0x08
#define DATA_SEL        0x10

#define CR0_PE          0x00000001
#define CR0_PG          0x80000000
#define CR4_PAE         0x00000020
#define MSR_EFER        0xc0000080
#define EFER_LME        0x00000100

#define PTE_P           0x001
#define PTE_RW          0x002
#define PTE_PS          0x080

/* ------------------------------------------------------------------------ */
        .section .text.entry, "ax", @progbits

        .code64
        .globl start64
start64:
        mov     $pml4, %eax
        mov     %rax, %cr3
        /* fall through */

        .globl common64
common64:                               /* rdi = n, rsi = index, rdx = flags */
        cmp     $MAX_CPUS, %rsi
        jae     halt
        lea     1(%rsi), %eax
        shl     $STACK_SHIFT, %eax
        lea     stacks(%rax), %rsp      /* top of this vCPU's stack */
        mov     %esi, %ebp              /* ebp = index */
        test    %esi, %esi
        jnz     ap_main

        /* BSP. r12 = vCPUs to wait for = min(n, 64); r13 = flags. */
        mov     %rdi, %r12
        cmp     $MAX_CPUS, %rdi
        jbe     1f
        mov     $MAX_CPUS, %r12d
1:      mov     %edx, %r13d

        /* 1. greeting */
        mov     $msg_hello, %esi
        mov     $(msg_hello_end - msg_hello), %ecx
        call    puts_line

        /* 2. "cpu 0 online", release the APs, wait for all of them */
        call    announce
        movl    $1, hello_done
2:      cmp     %r12d, online
        jae     3f
        pause
        jmp     2b
3:      test    $FLAG_VIRTIO_BLK, %r13d
        jz      5f
        call    virtio_blk              /* keeps r12, r13 */
5:      test    $FLAG_COUNT, %r13d
        jnz     count_mode
        test    $FLAG_INTERRUPTS, %r13d
        jnz     irq_mode

        /* 3a. CPUID vendor: EBX, EDX, ECX */
        xor     %eax, %eax
        cpuid
        mov     %ebx, vendor
        mov     %edx, vendor + 4
        mov     %ecx, vendor + 8
        mov     $msg_cpuid, %esi
        mov     $(vendor_end - msg_cpuid), %ecx
        call    puts_line

        /* 3b. MMIO: one 32-bit read, print it, one 32-bit write of value + 1 */
        mov     $MMIO_READ, %edi                /* zero-extends into rdi */
        mov     (%rdi), %ebp
        call    lock_serial
        mov     $msg_mmio, %esi
        mov     $(msg_mmio_end - msg_mmio), %ecx
        call    puts
        mov     $8, %ecx
4:      rol     $4, %ebp
        mov     %ebp, %ebx
        and     $0xf, %ebx
        movzbl  hex_digits(%rbx), %ebx
        call    putc
        dec     %ecx
        jnz     4b
        mov     $0x0a, %bl                     /* '\n' */
        call    putc
        movl    $0, serial_lock
        lea     1(%rbp), %eax
        mov     %eax, MMIO_WRITE_OFF(%rdi)

        /* 3c. goodbye, power off */
bye:
        mov     $msg_bye, %esi
        mov     $(msg_bye_end - msg_bye), %ecx
        call    puts_line
        mov     $POWER_OFF_VALUE, %al
        out     %al, $POWER_OFF_PORT
halt:
        cli
        hlt
        jmp     halt

/* Application processor: ebp = index (1..63). */
ap_main:
        cmpl    $0, hello_done
        jne     1f
        pause
        jmp     ap_main
1:      call    announce
        jmp     halt

/* 2''. Counting mode (BSP only, all vCPUs online, after the driver). */
count_mode:
        mov     $blk_wbuf, %edi         /* the sector written: N, then zeros */
        mov     $(SECTOR_SIZE / 8), %ecx
        xor     %eax, %eax
        cld
        rep stosq
count_next:
        incq    count_n
        call    lock_serial
        mov     $msg_count, %esi
        mov     $(msg_count_end - msg_count), %ecx
        call    puts
        mov     count_n, %rax
        call    put_dec
        mov     $0x0a, %bl
        call    putc
        movl    $0, serial_lock
        cmpl    $0, blk_ready
        je      2f
        mov     $VIRTIO_MMIO_BASE, %r14d
        mov     count_n, %rax
        mov     %rax, blk_wbuf
        mov     $BLK_T_OUT, %eax
        .globl  count_sector_imm        /* lib.rs tests read the immediates */
count_sector_imm:
        mov     $COUNT_SECTOR, %ebx
        mov     $blk_wbuf, %esi
        mov     $SECTOR_SIZE, %ecx
        xor     %edx, %edx
        call    blk_request
        jnz     1f
        movq    $0, blk_rbuf            /* N >= 1: a read that stores nothing fails */
        mov     $BLK_T_IN, %eax
        /* ebx = COUNT_SECTOR still: blk_request keeps it */
        mov     $blk_rbuf, %esi
        mov     $SECTOR_SIZE, %ecx
        mov     $VQ_DESC_F_WRITE, %edx
        call    blk_request
        jnz     1f
        mov     blk_rbuf, %rax
        cmp     count_n, %rax
        jne     1f
        call    blk_ack
        .globl  count_delay_imm
count_delay_imm:
2:      mov     $COUNT_DELAY, %ecx
3:      pause
        dec     %ecx
        jnz     3b
        .globl  count_limit_imm
count_limit_imm:
        mov     $COUNT_LIMIT, %eax
        cmp     %rax, count_n
        jb      count_next
        mov     $msg_count_done, %esi
        mov     $(msg_count_done_end - msg_count_done), %ecx
        call    puts_line
        jmp     bye
1:      mov     $msg_count_error, %esi
        mov     $(msg_count_error_end - msg_count_error), %ecx
        call    puts_line
        jmp     bye

/* put_dec: print rax in decimal, most significant digit first. Clobbers
 * eax, ebx, ecx, edx, r8. */
put_dec:
        mov     $10, %r8d
        xor     %ecx, %ecx
1:      xor     %edx, %edx
        div     %r8
        push    %rdx
        inc     %ecx
        test    %rax, %rax
        jnz     1b
2:      pop     %rbx
        add     $'0', %bl
        call    putc
        dec     %ecx
        jnz     2b
        ret

/* 3'. Interrupt mode (BSP only, all vCPUs online). */
irq_mode:
        lgdt    gdt_ptr                 /* our selectors, whatever the VMM's GDT */
        mov     $DATA_SEL, %eax
        mov     %eax, %ss
        push    $CODE64_SEL
        push    $1f
        lretq
1:      lidt    idt_ptr
        mov     $0xff, %al              /* mask every 8259 input */
        out     %al, $PIC1_DATA
        out     %al, $PIC2_DATA
        mov     $LAPIC_BASE, %edi
        movl    $(SVR_ENABLE | SPURIOUS_VECTOR), LAPIC_SVR(%rdi)

        /* IOAPIC pin g -> vector 0x20 + g, APIC ID 0; high dword first. */
        mov     $IOAPIC_BASE, %edi
        xor     %ecx, %ecx
2:      lea     IOAPIC_REDTBL + 1(%rcx,%rcx), %eax
        mov     %eax, (%rdi)
        movl    $0, IOAPIC_IOWIN(%rdi)  /* destination APIC ID 0 */
        dec     %eax
        mov     %eax, (%rdi)
        lea     VECTOR_BASE(%rcx), %eax /* fixed, physical, high, unmasked */
        cmp     $IOAPIC_LEVEL_START, %ecx
        jb      3f
        or      $REDIR_LEVEL, %eax
3:      mov     %eax, IOAPIC_IOWIN(%rdi)
        inc     %ecx
        cmp     $IOAPIC_PINS, %ecx
        jb      2b

        mov     $IER_THRE, %al
        mov     $COM1_IER, %edx
        out     %al, %dx
        mov     $msg_irq_ready, %esi
        mov     $(msg_irq_ready_end - msg_irq_ready), %ecx
        call    puts_line
        sti
4:      hlt
        jmp     4b

/* ------------------------------------------------------------------------ */
/*
 * virtio_blk: the virtio-mmio + virtio-blk driver (BSP only). r14 = device
 * base, r15 = the current step's name (a length byte, then the name and
 * "\n"); every failure jumps to blk_error, which prints that step.
 * Clobbers every register but rsp, rbp, r12 and r13.
 */
virtio_blk:
        mov     $VIRTIO_MMIO_BASE, %r14d
        mov     VM_MAGIC(%r14), %eax
        cmp     $VIRTIO_MAGIC, %eax
        jne     blk_no_device
        mov     VM_VERSION(%r14), %eax
        cmp     $VIRTIO_VERSION, %eax
        jne     blk_no_device
        mov     VM_DEVICE_ID(%r14), %eax
        cmp     $VIRTIO_ID_BLOCK, %eax
        jne     blk_no_device

        /* Reset; the reset is complete once Status reads 0. */
        mov     $step_reset, %r15d
        movl    $0, VM_STATUS(%r14)
        mov     $BLK_POLLS, %ecx
1:      mov     VM_STATUS(%r14), %eax
        test    %eax, %eax
        jz      2f
        pause
        dec     %ecx
        jnz     1b
        jmp     blk_error
2:      movl    $S_ACKNOWLEDGE, VM_STATUS(%r14)
        movl    $(S_ACKNOWLEDGE | S_DRIVER), VM_STATUS(%r14)

        /* Features: the device must offer VIRTIO_F_VERSION_1; the driver takes it,
           and VIRTIO_BLK_F_FLUSH when offered (it may flush only if negotiated). */
        mov     $step_features, %r15d
        movl    $0, VM_DEV_FEATURES_SEL(%r14)
        mov     VM_DEV_FEATURES(%r14), %eax
        and     $F_BLK_FLUSH_LO, %eax
        mov     %eax, blk_features_lo(%rip)
        movl    $1, VM_DEV_FEATURES_SEL(%r14)
        mov     VM_DEV_FEATURES(%r14), %eax
        test    $F_VERSION_1_HI, %eax
        jz      blk_error
        movl    $0, VM_DRV_FEATURES_SEL(%r14)
        mov     blk_features_lo(%rip), %eax
        mov     %eax, VM_DRV_FEATURES(%r14)
        movl    $1, VM_DRV_FEATURES_SEL(%r14)
        movl    $F_VERSION_1_HI, VM_DRV_FEATURES(%r14)
        mov     $step_features_ok, %r15d
        movl    $(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK), VM_STATUS(%r14)
        mov     VM_STATUS(%r14), %eax
        test    $S_FEATURES_OK, %eax
        jz      blk_error

        /* Queue 0: not in use yet; size = largest power of 2 <= min(max, 8). */
        mov     $step_queue, %r15d
        movl    $0, VM_QUEUE_SEL(%r14)
        mov     VM_QUEUE_READY(%r14), %eax
        test    %eax, %eax
        jnz     blk_error
        mov     VM_QUEUE_NUM_MAX(%r14), %ecx
        mov     $VQ_SIZE, %eax
3:      cmp     %ecx, %eax
        jbe     4f
        shr     %eax
        jmp     3b
4:      cmp     $VQ_MIN_SIZE, %eax
        jb      blk_error
        mov     %eax, VM_QUEUE_NUM(%r14)
        dec     %eax
        mov     %eax, vq_mask
        movw    $VQ_AVAIL_F_NO_INTERRUPT, vq_avail      /* flags */
        movw    $0, vq_avail + 2                        /* idx */
        movl    $0, vq_used                             /* flags, idx */
        movl    $vq_desc, VM_QUEUE_DESC_LO(%r14)
        movl    $0, VM_QUEUE_DESC_HI(%r14)
        movl    $vq_avail, VM_QUEUE_DRIVER_LO(%r14)
        movl    $0, VM_QUEUE_DRIVER_HI(%r14)
        movl    $vq_used, VM_QUEUE_DEVICE_LO(%r14)
        movl    $0, VM_QUEUE_DEVICE_HI(%r14)
        movl    $1, VM_QUEUE_READY(%r14)

        mov     $step_driver_ok, %r15d
        movl    $(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK), VM_STATUS(%r14)
        mov     VM_STATUS(%r14), %eax
        test    $S_NEEDS_RESET, %eax
        jnz     blk_error

        /* Capacity (le64, sectors), read as two u32 under one generation. */
        mov     $step_capacity, %r15d
        mov     $BLK_CONFIG_TRIES, %ecx
5:      mov     VM_CONFIG_GEN(%r14), %edx
        mov     VM_CONFIG(%r14), %eax
        mov     VM_CONFIG + 4(%r14), %ebx
        mov     VM_CONFIG_GEN(%r14), %esi
        cmp     %edx, %esi
        je      6f
        dec     %ecx
        jnz     5b
        jmp     blk_error
6:      shl     $32, %rbx
        or      %rbx, %rax
        cmp     $(BLK_TEST_SECTOR + BLK_TEST_SECTORS), %rax
        jb      blk_error

        /* 1. Read sector 0, print its first 8 bytes. */
        mov     $step_read, %r15d
        mov     $BLK_T_IN, %eax
        xor     %ebx, %ebx
        mov     $blk_rbuf, %esi
        mov     $SECTOR_SIZE, %ecx
        mov     $VQ_DESC_F_WRITE, %edx
        call    blk_request
        jnz     blk_error
        call    lock_serial
        mov     $msg_blk_signature, %esi
        mov     $(msg_blk_signature_end - msg_blk_signature), %ecx
        call    puts
        xor     %r8d, %r8d
7:      movzbl  blk_rbuf(%r8), %ebx
        cmp     $0x20, %bl
        jb      8f
        cmp     $0x7e, %bl
        jbe     9f
8:      mov     $'.', %bl
9:      call    putc
        inc     %r8d
        cmp     $8, %r8d
        jb      7b
        mov     $0x0a, %bl
        call    putc
        movl    $0, serial_lock

        /* 2. Write the pattern to the test sectors. Byte i is
         * (31 i + 7) & 0xff, which repeats every 256 bytes: compute 256,
         * then copy forward (source 256 bytes behind the destination). */
        mov     $step_write, %r15d
        mov     $blk_wbuf, %edi
        xor     %ecx, %ecx
        mov     $BLK_PATTERN_ADD, %al
1:      mov     %al, (%rdi,%rcx)
        add     $BLK_PATTERN_MUL, %al
        inc     %ecx
        cmp     $BLK_PATTERN_PERIOD, %ecx
        jb      1b
        cld
        mov     %edi, %esi
        add     $BLK_PATTERN_PERIOD, %edi
        mov     $((BLK_TEST_BYTES - BLK_PATTERN_PERIOD) / 8), %ecx
        rep movsq
        mov     $BLK_T_OUT, %eax
        mov     $BLK_TEST_SECTOR, %ebx
        mov     $blk_wbuf, %esi
        mov     $BLK_TEST_BYTES, %ecx
        xor     %edx, %edx
        call    blk_request
        jnz     blk_error

        /* 3. Flush, only if VIRTIO_BLK_F_FLUSH was negotiated (virtio 1.2 5.2.6.2). */
        mov     $step_flush, %r15d
        testl   $F_BLK_FLUSH_LO, blk_features_lo(%rip)
        jz      5f
        mov     $BLK_T_FLUSH, %eax
        xor     %ebx, %ebx
        xor     %ecx, %ecx
        call    blk_request
        jnz     blk_error
5:

        /* 4. Read the test sectors back into a zeroed buffer and compare. */
        mov     $step_read_back, %r15d
        mov     $blk_rbuf, %edi
        mov     $(BLK_TEST_BYTES / 8), %ecx
        xor     %eax, %eax
        rep stosq
        mov     $BLK_T_IN, %eax
        mov     $BLK_TEST_SECTOR, %ebx
        mov     $blk_rbuf, %esi
        mov     $BLK_TEST_BYTES, %ecx
        mov     $VQ_DESC_F_WRITE, %edx
        call    blk_request
        jnz     blk_error
        mov     $step_verify, %r15d
        mov     $blk_wbuf, %esi
        mov     $blk_rbuf, %edi
        mov     $(BLK_TEST_BYTES / 8), %ecx
        repe cmpsq
        jne     blk_error

        mov     $msg_blk_ok, %esi
        mov     $(msg_blk_ok_end - msg_blk_ok), %ecx
        call    puts_line
        movl    $1, blk_ready
        jmp     blk_ack

blk_no_device:
        mov     $msg_blk_no_device, %esi
        mov     $(msg_blk_no_device_end - msg_blk_no_device), %ecx
        jmp     puts_line               /* and return */

/* r15 = the failed step: print it, give up on the device (FAILED). */
blk_error:
        call    lock_serial
        mov     $msg_blk_error, %esi
        mov     $(msg_blk_error_end - msg_blk_error), %ecx
        call    puts
        lea     1(%r15), %rsi
        movzbl  (%r15), %ecx
        call    puts
        movl    $0, serial_lock
        mov     VM_STATUS(%r14), %eax
        or      $S_FAILED, %eax
        mov     %eax, VM_STATUS(%r14)
        /* fall through */

/* Acknowledge whatever interrupt the device raised despite the hint. */
blk_ack:
        mov     VM_INT_STATUS(%r14), %eax
        test    %eax, %eax
        jz      1f
        mov     %eax, VM_INT_ACK(%r14)
1:      ret

/*
 * blk_request: one request through queue 0 as the chain 0 -> 1 -> 2
 * (header, data, status) or, with ecx = 0, 0 -> 2 (header, status); waits
 * for it. eax = type, ebx = sector, rsi = data, ecx = data length,
 * edx = data descriptor flags (VQ_DESC_F_WRITE for a read).
 * Returns ZF set on success: used.idx advanced to the new avail.idx, the
 * used element's id is 0 and the status byte 0. Clobbers eax, ecx, edx.
 */
blk_request:
        mov     %eax, blk_hdr                   /* type */
        movl    $0, blk_hdr + 4                 /* reserved */
        mov     %rbx, blk_hdr + 8               /* sector */
        movb    $0xff, blk_status               /* the device overwrites it */
        movq    $blk_hdr, vq_desc               /* 0: header, readable */
        movl    $16, vq_desc + 8
        movw    $VQ_DESC_F_NEXT, vq_desc + 12
        movw    $1, vq_desc + 14
        test    %ecx, %ecx
        jnz     1f
        movw    $2, vq_desc + 14                /* no data: header -> status */
        jmp     2f
1:      mov     %rsi, vq_desc + 16              /* 1: data */
        mov     %ecx, vq_desc + 24
        or      $VQ_DESC_F_NEXT, %edx
        mov     %dx, vq_desc + 28
        movw    $2, vq_desc + 30
2:      movq    $blk_status, vq_desc + 32       /* 2: status, writable */
        movl    $1, vq_desc + 40
        movw    $VQ_DESC_F_WRITE, vq_desc + 44
        movw    $0, vq_desc + 46
        /* Ring slot first, then the index (x86 keeps stores in order). */
        movzwl  vq_avail + 2, %eax
        mov     %eax, %ecx
        and     vq_mask, %ecx
        movw    $0, vq_avail + 4(,%rcx,2)       /* head descriptor 0 */
        inc     %eax
        mov     %ax, vq_avail + 2
        movl    $0, VM_QUEUE_NOTIFY(%r14)       /* queue 0 */
        mov     $BLK_POLLS, %ecx
3:      cmp     %ax, vq_used + 2
        je      4f
        pause
        dec     %ecx
        jnz     3b
        jmp     5f
4:      dec     %eax                            /* the element just used */
        and     vq_mask, %eax
        cmpl    $0, vq_used + 4(,%rax,8)        /* id */
        jne     5f
        cmpb    $0, blk_status
        jne     5f
        xor     %eax, %eax                      /* ZF set */
        ret
5:      or      $1, %eax                        /* ZF clear */
        ret

/* announce: print "cpu <ebp> online\n" (ebp < 100) as one line, then count
 * this vCPU online. Clobbers eax, ebx, ecx, edx, esi, r8. */
announce:
        call    lock_serial
        mov     $msg_cpu, %esi
        mov     $(msg_cpu_end - msg_cpu), %ecx
        call    puts
        mov     %ebp, %eax
        xor     %edx, %edx
        mov     $10, %ecx
        div     %ecx                    /* eax = tens, edx = units */
        mov     %edx, %r8d
        test    %eax, %eax
        jz      1f
        lea     '0'(%rax), %ebx
        call    putc
1:      lea     '0'(%r8), %ebx
        call    putc
        mov     $msg_online, %esi
        mov     $(msg_online_end - msg_online), %ecx
        call    puts
        movl    $0, serial_lock
        lock incl online
        ret

/* puts_line: print ecx (> 0) bytes at rsi under the serial lock. */
puts_line:
        call    lock_serial
        call    puts
        movl    $0, serial_lock
        ret

/* lock_serial: take the serial lock (test and test-and-set). Clobbers eax. */
lock_serial:
        mov     $1, %eax
        lock xchg %eax, serial_lock
        test    %eax, %eax
        jz      2f
1:      pause
        cmpl    $0, serial_lock
        jne     1b
        jmp     lock_serial
2:      ret

/* puts: print ecx (> 0) bytes starting at rsi. Clobbers eax, ebx, ecx, edx, rsi. */
puts:
        movzbl  (%rsi), %ebx
        call    putc
        inc     %rsi
        dec     %ecx
        jnz     puts
        ret

/* putc: print the byte in bl once the THR is empty. Clobbers eax, edx. */
putc:
        mov     $COM1_LSR, %edx
1:      in      %dx, %al
        test    $LSR_THRE, %al
        jz      1b
        mov     $COM1, %edx
        mov     %bl, %al
        out     %al, %dx
        ret

/* Interrupt entry: one 8-byte stub per vector 0x20-0x3f, all alike. */
        .balign 8
        .globl irq_stubs
irq_stubs:
        .set    vec, VECTOR_BASE
        .rept   VECTOR_COUNT
        .balign 8
        push    %rax
        mov     $vec, %al
        jmp     irq_common
        .set    vec, vec + 1
        .endr
        .balign 8
        .globl irq_stubs_end
irq_stubs_end:

/* al = vector, the interrupted rax is on the stack. */
irq_common:
        push    %rdx
        mov     $IRQ_REPORT_PORT, %edx
        out     %al, %dx
        mov     $(LAPIC_BASE + LAPIC_EOI), %edx
        movl    $0, (%rdx)
        pop     %rdx
        pop     %rax
        iretq

/* Spurious LAPIC interrupts need no EOI. */
spurious:
        iretq

/* PVH, now in 64-bit mode: one vCPU, index 0, no flags. */
pvh64:
        xor     %edi, %edi
        xor     %esi, %esi
        xor     %edx, %edx
        jmp     common64

/* ------------------------------------------------------------------------ */
        .code32
        .globl pvh_start
pvh_start:
        lgdt    gdt_ptr
        mov     $DATA_SEL, %eax
        mov     %eax, %ds
        mov     %eax, %es
        mov     %eax, %ss
        mov     %cr4, %eax
        or      $CR4_PAE, %eax
        mov     %eax, %cr4
        mov     $pml4, %eax
        mov     %eax, %cr3
        mov     $MSR_EFER, %ecx
        rdmsr
        or      $EFER_LME, %eax
        wrmsr
        mov     %cr0, %eax
        or      $(CR0_PG | CR0_PE), %eax
        mov     %eax, %cr0
        ljmp    $CODE64_SEL, $pvh64

/* ------------------------------------------------------------------------ */
        .section .rodata, "a", @progbits

msg_hello:
        .ascii  "hello from the vmkit minimal kernel\n"
msg_hello_end:
msg_cpu:
        .ascii  "cpu "
msg_cpu_end:
msg_online:
        .ascii  " online\n"
msg_online_end:
msg_mmio:
        .ascii  "mmio: "
msg_mmio_end:
msg_bye:
        .ascii  "bye\n"
msg_bye_end:
msg_irq_ready:
        .ascii  "irq ready\n"
msg_irq_ready_end:
msg_blk_no_device:
        .ascii  "virtio-blk: no device\n"
msg_blk_no_device_end:
msg_blk_signature:
        .ascii  "virtio-blk: signature "
msg_blk_signature_end:
msg_blk_ok:
        .ascii  "virtio-blk: ok\n"
msg_blk_ok_end:
msg_blk_error:
        .ascii  "virtio-blk: error "
msg_blk_error_end:
msg_count:
        .ascii  "count "
msg_count_end:
msg_count_done:
        .ascii  "count done\n"
msg_count_done_end:
msg_count_error:
        .ascii  "count: disk error\n"
msg_count_error_end:

/* Step names for "virtio-blk: error <step>": length byte, name, "\n". */
        .macro  step label, name
\label:
        .byte   2f - 1f
1:      .ascii  "\name"
        .byte   0x0a
2:
        .endm
        step    step_reset, "reset"
        step    step_features, "features"
        step    step_features_ok, "features-ok"
        step    step_queue, "queue"
        step    step_driver_ok, "driver-ok"
        step    step_capacity, "capacity"
        step    step_read, "read"
        step    step_write, "write"
        step    step_flush, "flush"
        step    step_read_back, "read-back"
        step    step_verify, "verify"
hex_digits:
        .ascii  "0123456789abcdef"

        .balign 8
gdt:
        .quad   0                               /* null */
        .quad   0x00af9b000000ffff              /* 0x08: 64-bit code, DPL0 */
        .quad   0x00cf93000000ffff              /* 0x10: flat 4 GiB data */
gdt_end:
        .balign 2
gdt_ptr:                                /* 32-bit lgdt reads the low base half */
        .word   gdt_end - gdt - 1
        .quad   gdt

/* ------------------------------------------------------------------------ */
/* PVH entry point: name "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY). */
        .section .note.Xen, "a", @note
        .balign 4
        .long   4                               /* namesz */
        .long   4                               /* descsz */
        .long   18                              /* type */
        .asciz  "Xen"
        .balign 4
        .long   pvh_start

/* ------------------------------------------------------------------------ */
        .section .data, "aw", @progbits

/* Identity map of the low 4 GiB: 1 PML4, 1 PDPT, 4 PDs of 2 MiB pages. */
        .balign 4096
pml4:
        .quad   pdpt + (PTE_P | PTE_RW)
        .fill   511, 8, 0
pdpt:
        .quad   pd + 0x0000 + (PTE_P | PTE_RW)
        .quad   pd + 0x1000 + (PTE_P | PTE_RW)
        .quad   pd + 0x2000 + (PTE_P | PTE_RW)
        .quad   pd + 0x3000 + (PTE_P | PTE_RW)
        .fill   508, 8, 0
pd:
        .set    page, 0
        .rept   2048
        .quad   (page << 21) | (PTE_P | PTE_RW | PTE_PS)
        .set    page, page + 1
        .endr

/*
 * IDT: 256 16-byte gates, present only for 0x20-0x3f and 0xff. Every handler
 * lies in the first 64 KiB of the image, which starts at LOAD_ADDR (both
 * checked in minimal.ld), so offset[15:0] = handler - start64 and
 * offset[63:16] = LOAD_ADDR >> 16.
 */
        .balign 16
idt:
        .fill   VECTOR_BASE * 2, 8, 0
        .set    vec, 0
        .rept   VECTOR_COUNT
        .word   irq_stubs - start64 + 8 * vec
        .word   CODE64_SEL
        .byte   0, 0x8e                         /* IST 0; P, DPL0, interrupt gate */
        .word   LOAD_ADDR >> 16
        .long   0, 0
        .set    vec, vec + 1
        .endr
        .fill   (SPURIOUS_VECTOR - VECTOR_BASE - VECTOR_COUNT) * 2, 8, 0
        .word   spurious - start64
        .word   CODE64_SEL
        .byte   0, 0x8e
        .word   LOAD_ADDR >> 16
        .long   0, 0
idt_end:
        .balign 2
idt_ptr:
        .word   idt_end - idt - 1
        .quad   idt

msg_cpuid:
        .ascii  "cpuid: "
vendor:
        .space  12                              /* filled from CPUID leaf 0 */
        .ascii  "\n"
vendor_end:

/* Shared between vCPUs; in .data so that loading the image resets them. */
        .balign 4
serial_lock:
        .long   0                               /* 1 while a vCPU prints a line */
hello_done:
        .long   0                               /* BSP printed "cpu 0 online" */
online:
        .long   0                               /* vCPUs that printed their line */

/* virtio-blk request header and status byte, and the driver's queue mask. */
        .balign 16
        .globl  blk_hdr
blk_hdr:
        .long   0                               /* type */
        .long   0                               /* reserved */
        .quad   0                               /* sector */
        .globl  blk_status
blk_status:
        .byte   0
        .balign 4
vq_mask:
        .long   0                               /* queue size - 1 */
blk_features_lo:
        .long   0                               /* negotiated feature bits 0-31 */
        .globl  blk_ready
blk_ready:
        .long   0                               /* 1 once the driver printed "ok" */

/* Counting mode: the last N printed (0 before the first). */
        .balign 8
        .globl  count_n
count_n:
        .quad   0

/* ------------------------------------------------------------------------ */
        .section .bss, "aw", @nobits
/* virtio-blk queue 0 and buffers; not zeroed by loaders: the driver writes
 * every byte it or the device reads before it is read. */
        .balign 4096
        .globl  vq_desc, vq_avail, vq_used, blk_wbuf, blk_rbuf
vq_desc:                                /* descriptor table (16-byte aligned) */
        .space  4096
vq_avail:                               /* available ring (2-byte aligned) */
        .space  4096
vq_used:                                /* used ring (4-byte aligned) */
        .space  4096
blk_wbuf:                               /* the pattern written */
        .space  BLK_TEST_BYTES
blk_rbuf:                               /* sector 0, then the pattern read back */
        .space  BLK_TEST_BYTES

        .balign 16
stacks:                                 /* vCPU i: [stacks + i KiB, + (i+1) KiB) */
        .space  MAX_CPUS << STACK_SHIFT

        .section .note.GNU-stack, "", @progbits
