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
 *                   rdx = flags (bit 0: interrupt mode; read on the BSP only).
 *             The VMM starts every vCPU here; there is no INIT/SIPI.
 *   pvh_start PVH entry (XEN_ELFNOTE_PHYS32_ENTRY note). Entered in 32-bit
 *             protected mode, paging off, flat CS/DS/ES/SS, ebx = physical
 *             address of hvm_start_info (ignored here). Uniprocessor, no
 *             flags: behaves as start64 with rdi = 1, rsi = 0, rdx = 0.
 *
 * Both load CR3 with the static identity map of the low 4 GiB below (2 MiB
 * pages) so that the MMIO windows (0xd000_0000, IOAPIC, LAPIC) are mapped
 * whatever the VMM mapped. A vCPU whose index is 64 or more halts at once;
 * the others take a 1 KiB stack of their own in .bss. Serial output is
 * shared: every line is printed whole under a spinlock.
 *
 * Bootstrap processor (index 0):
 *   1. print "hello from the vmkit minimal kernel\n" on the 16550 at 0x3f8
 *      (poll LSR at 0x3fd for THR-empty, bit 5, before every byte);
 *   2. print "cpu 0 online\n", count itself online, set hello_done, then
 *      wait until min(rdi, 64) vCPUs (itself included) are online;
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
3:      test    $FLAG_INTERRUPTS, %r13d
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

/* ------------------------------------------------------------------------ */
        .section .bss, "aw", @nobits
        .balign 16
stacks:                                 /* vCPU i: [stacks + i KiB, + (i+1) KiB) */
        .space  MAX_CPUS << STACK_SHIFT

        .section .note.GNU-stack, "", @progbits
