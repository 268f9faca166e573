/*
 * vmkit minimal guest kernel (x86-64, GNU assembler, AT&T syntax).
 *
 * Two entry points, one common 64-bit path:
 *
 *   start64   ELF e_entry. Entered in 64-bit long mode, CPL0, flat 64-bit
 *             code segment, 4-level paging on with an identity map that
 *             covers at least the image, interrupts disabled, rsp undefined.
 *   pvh_start PVH entry (XEN_ELFNOTE_PHYS32_ENTRY note). Entered in 32-bit
 *             protected mode, paging off, flat CS/DS/ES/SS, ebx = physical
 *             address of hvm_start_info (ignored here).
 *
 * Both load CR3 with the static identity map of the low 4 GiB below (2 MiB
 * pages) so that the MMIO window at 0xd000_0000 is mapped whatever the VMM
 * mapped, set up a stack in .bss and then:
 *
 *   1. print "hello from the vmkit minimal kernel\n" on the 16550 at 0x3f8
 *      (poll LSR at 0x3fd for THR-empty, bit 5, before every byte);
 *   2. print "cpuid: " + the CPUID leaf 0 vendor string + "\n";
 *   3. read 32 bits from 0xd000_0000 (one mov), print "mmio: %08x\n", write
 *      value + 1 (one 32-bit mov) to 0xd000_0004;
 *   4. print "bye\n", write 0xfe to port 0x64, then `cli; hlt` forever.
 *
 * Every ring-0 instruction may go through a software instruction emulator
 * on nested hosts, so the code is short, uses only baseline x86-64
 * instructions, and the page tables are static data.
 */

#define COM1            0x3f8
#define COM1_LSR        (COM1 + 5)
#define LSR_THRE        0x20
#define MMIO_READ       0xd0000000
#define MMIO_WRITE_OFF  4
#define POWER_OFF_PORT  0x64
#define POWER_OFF_VALUE 0xfe

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
common64:
        mov     $stack_top, %esp

        /* 1. greeting */
        mov     $msg_hello, %esi
        mov     $(msg_hello_end - msg_hello), %ecx
        call    puts

        /* 2. CPUID vendor: EBX, EDX, ECX */
        xor     %eax, %eax
        cpuid
        mov     %ebx, vendor
        mov     %edx, vendor + 4
        mov     %ecx, vendor + 8
        mov     $msg_cpuid, %esi
        mov     $(vendor_end - msg_cpuid), %ecx
        call    puts

        /* 3. MMIO: one 32-bit read, print it, one 32-bit write of value + 1 */
        mov     $MMIO_READ, %edi                /* zero-extends into rdi */
        mov     (%rdi), %ebp
        mov     $msg_mmio, %esi
        mov     $(msg_mmio_end - msg_mmio), %ecx
        call    puts
        mov     $8, %ecx
1:      rol     $4, %ebp
        mov     %ebp, %ebx
        and     $0xf, %ebx
        movzbl  hex_digits(%rbx), %ebx
        call    putc
        dec     %ecx
        jnz     1b
        mov     $0x0a, %bl                     /* '\n' */
        call    putc
        lea     1(%rbp), %eax
        mov     %eax, MMIO_WRITE_OFF(%rdi)

        /* 4. goodbye, power off */
        mov     $msg_bye, %esi
        mov     $(msg_bye_end - msg_bye), %ecx
        call    puts
        mov     $POWER_OFF_VALUE, %al
        out     %al, $POWER_OFF_PORT
2:      cli
        hlt
        jmp     2b

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
        ljmp    $CODE64_SEL, $common64

/* ------------------------------------------------------------------------ */
        .section .rodata, "a", @progbits

msg_hello:
        .ascii  "hello from the vmkit minimal kernel\n"
msg_hello_end:
msg_mmio:
        .ascii  "mmio: "
msg_mmio_end:
msg_bye:
        .ascii  "bye\n"
msg_bye_end:
hex_digits:
        .ascii  "0123456789abcdef"

        .balign 8
gdt:
        .quad   0                               /* null */
        .quad   0x00af9a000000ffff              /* 0x08: 64-bit code, DPL0 */
        .quad   0x00cf92000000ffff              /* 0x10: flat 4 GiB data */
gdt_end:
        .balign 2
gdt_ptr:
        .word   gdt_end - gdt - 1
        .long   gdt

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

/* After the page tables so that they start the page-aligned .data. */
msg_cpuid:
        .ascii  "cpuid: "
vendor:
        .space  12                              /* filled from CPUID leaf 0 */
        .ascii  "\n"
vendor_end:

/* ------------------------------------------------------------------------ */
        .section .bss, "aw", @nobits
        .balign 16
stack:
        .space  4096
stack_top:

        .section .note.GNU-stack, "", @progbits
