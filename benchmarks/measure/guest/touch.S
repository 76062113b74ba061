/*
 * touch: a bare-metal multiboot guest that touches a share of its RAM and reports it on COM1.
 *
 * Built with binutils only (see benchmarks/measure/guest.py):
 *     as --64 -o touch.o touch.S
 *     ld -m elf_x86_64 -T link.ld -o touch64.elf touch.o
 *     objcopy -O elf32-i386 touch64.elf touch.elf     (QEMU's multiboot loader wants a 32-bit ELF)
 * Booted with: qemu-system-x86_64 ... -kernel touch.elf -append "pct=N" (or "mib=N")
 *
 * What it does, in order:
 *   1. 32-bit protected mode (multiboot entry): identity-map the first 4 GiB with 2 MiB pages,
 *      enable PAE + EFER.LME + paging, far-jump into 64-bit code.
 *   2. Print "BOOT". Parse the command line (multiboot info): "pct=N" (share of usable RAM, default
 *      100) or "mib=N" (MiB). Extend the identity map to the top of usable RAM (at most 64 GiB).
 *   3. Read the number of vCPUs from fw_cfg (FW_CFG_NB_CPUS), copy a real-mode trampoline to
 *      0x7000 and send INIT-SIPI-SIPI to all other CPUs through the local APIC (xAPIC MMIO or
 *      x2APIC MSRs). Each AP increments a counter at 0x7F00 and does "cli; hlt". Print
 *      "CPUS n" (expected) and "ONLINE n" (BSP + APs that checked in).
 *   4. Count the usable RAM (multiboot/e820 memory map, type 1) from 4 MiB up, print "AVAIL n"
 *      (MiB), write one qword into every 4 KiB page up to the requested share (whole MiB), print
 *      "TOUCHED n" (MiB), then halt forever (cli; hlt loop).
 * Any fault triple-faults; with -no-reboot QEMU then exits, which the runner reports.
 */

    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0x00000003           /* page-align modules, give memory information */
    .set COM1, 0x3F8
    .set TRAMP, 0x7000                  /* AP start address: SIPI vector 0x07 */
    .set SIPI_VECTOR, 0x07
    .set AP_COUNT, 0x7F00               /* APs that started (16-bit counter) */
    .set LOW_LIMIT, 0x400000            /* RAM below 4 MiB is left alone */
    .set MAX_GIB, 64                    /* identity map (and touch) at most this much */
    .set PAGE, 4096

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text

/* ---- 32-bit entry: EAX = 0x2BADB002, EBX = multiboot info, flat segments, paging off ---------- */
    .code32
    .globl _start
_start:
    cli
    cld
    movl $stack_top, %esp
    movl %ebx, mbi_ptr

    /* zero the PML4, the PDPT and the first four page directories */
    movl $pml4, %edi
    movl $(6 * PAGE / 4), %ecx
    xorl %eax, %eax
    rep stosl

    movl $pdpt, %eax
    orl $0x3, %eax                      /* present, writable */
    movl %eax, pml4

    movl $pds, %eax
    orl $0x3, %eax
    movl $pdpt, %edi
    movl $4, %ecx
1:  movl %eax, (%edi)
    addl $PAGE, %eax
    addl $8, %edi
    loop 1b

    /* 2048 entries of 2 MiB: identity map of 0 .. 4 GiB (RAM below 4 GiB, the local APIC) */
    movl $pds, %edi
    xorl %ebx, %ebx
    movl $2048, %ecx
2:  movl %ebx, %eax
    orl $0x83, %eax                     /* present, writable, 2 MiB page */
    movl %eax, (%edi)
    addl $0x200000, %ebx
    addl $8, %edi
    loop 2b

    movl %cr4, %eax
    orl $0x20, %eax                     /* PAE */
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx              /* EFER */
    rdmsr
    orl $0x100, %eax                    /* LME */
    wrmsr
    lgdt gdt_desc
    movl %cr0, %eax
    orl $0x80000001, %eax               /* PG | PE */
    movl %eax, %cr0
    ljmp $0x08, $long_mode

/* ---- 64-bit ----------------------------------------------------------------------------------- */
    .code64
long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movq $stack_top, %rsp

    call serial_init
    leaq msg_boot(%rip), %rsi
    call puts

    call parse_cmdline
    call map_memory

    call start_aps
    leaq msg_cpus(%rip), %rsi
    movq ncpus(%rip), %rax
    call put_line
    leaq msg_online(%rip), %rsi
    movq online(%rip), %rax
    call put_line

    call count_avail                    /* rax = usable bytes from 4 MiB up */
    shrq $20, %rax
    movq %rax, avail_mib(%rip)
    leaq msg_avail(%rip), %rsi
    call put_line

    /* target MiB: pct (capped at 100) of the available MiB, or mib (capped at the available MiB) */
    movq avail_mib(%rip), %rax
    movq req_value(%rip), %rcx
    cmpq $0, req_mode(%rip)
    jne 3f
    cmpq $100, %rcx
    jbe 4f
    movq $100, %rcx
4:  mulq %rcx
    movq $100, %rcx
    xorl %edx, %edx
    divq %rcx
    jmp 5f
3:  cmpq %rcx, %rax
    jbe 5f
    movq %rcx, %rax
5:  shlq $8, %rax                       /* MiB -> 4 KiB pages */
    call touch                          /* rax = pages touched */
    shrq $8, %rax
    leaq msg_touched(%rip), %rsi
    call put_line

halt:
    cli
    hlt
    jmp halt

/* ---- command line: "pct=N" or "mib=N" at the start of a word; the last one wins --------------- */
parse_cmdline:
    movq $0, req_mode(%rip)
    movq $100, req_value(%rip)
    movl mbi_ptr(%rip), %ebx
    testl $0x4, (%rbx)                  /* flags bit 2: cmdline present */
    jz 9f
    movl 16(%rbx), %esi
    movb $' ', %dl                      /* previous character */
1:  movb (%rsi), %al
    testb %al, %al
    jz 9f
    cmpb $' ', %dl
    jne 2f
    cmpl $0x3D746370, (%rsi)            /* "pct=" */
    je 3f
    cmpl $0x3D62696D, (%rsi)            /* "mib=" */
    je 4f
2:  movb %al, %dl
    incq %rsi
    jmp 1b
3:  movq $0, req_mode(%rip)
    jmp 5f
4:  movq $1, req_mode(%rip)
5:  addq $4, %rsi
    xorl %eax, %eax
6:  movzbl (%rsi), %ecx
    subl $'0', %ecx
    cmpl $9, %ecx
    ja 7f
    imulq $10, %rax
    addq %rcx, %rax
    incq %rsi
    jmp 6b
7:  movq %rax, req_value(%rip)
    movb $'x', %dl
    jmp 1b
9:  ret

/* ---- memory map ------------------------------------------------------------------------------- */

/* clip_region: entry at %rbx -> usable page range [%r8, %r9) from 4 MiB up to mapped_limit
 * (empty, %r9 == %r8, when the entry is not usable RAM). Clobbers %rax. */
clip_region:
    xorl %r8d, %r8d
    xorl %r9d, %r9d
    cmpl $1, 20(%rbx)                   /* type 1: usable RAM */
    jne 9f
    movq 4(%rbx), %r8                   /* base */
    movq 12(%rbx), %r9                  /* length */
    addq %r8, %r9                       /* end */
    movq $LOW_LIMIT, %rax
    cmpq %rax, %r8
    jae 1f
    movq %rax, %r8
1:  addq $(PAGE - 1), %r8
    andq $-PAGE, %r8
    movq mapped_limit(%rip), %rax
    cmpq %rax, %r9
    jbe 2f
    movq %rax, %r9
2:  andq $-PAGE, %r9
    cmpq %r8, %r9
    ja 9f
    movq %r8, %r9
9:  ret

/* mmap_first / mmap_next: %rbx = entry, %r10 = end of the map; ZF set when there is none left. */
mmap_first:
    movl mbi_ptr(%rip), %eax
    xorl %ebx, %ebx
    xorl %r10d, %r10d
    testl $0x40, (%rax)                 /* flags bit 6: memory map present */
    jz 1f
    movl 48(%rax), %ebx                 /* mmap_addr */
    movl 44(%rax), %r10d                /* mmap_length */
    addq %rbx, %r10
1:  cmpq %r10, %rbx
    ret
mmap_next:
    movl (%rbx), %eax                   /* size of this entry, not counting the size field */
    leaq 4(%rbx,%rax), %rbx
    cmpq %r10, %rbx
    ret

/* map_memory: identity-map up to the top of usable RAM, in whole GiB, at least 4, at most MAX_GIB */
map_memory:
    movabsq $(MAX_GIB << 30), %rax
    movq %rax, mapped_limit(%rip)
    xorl %r11d, %r11d                   /* highest end seen */
    call mmap_first
    jae 3f
1:  call clip_region
    cmpq %r11, %r9
    jbe 2f
    movq %r9, %r11
2:  call mmap_next
    jb 1b
3:  addq $((1 << 30) - 1), %r11
    shrq $30, %r11                      /* GiB needed */
    cmpq $4, %r11
    jae 4f
    movq $4, %r11
4:  movq %r11, %rax
    shlq $30, %rax
    movq %rax, mapped_limit(%rip)
    movq $4, %rcx                       /* page directory index (GiB) */
5:  cmpq %r11, %rcx
    jae 8f
    movq %rcx, %rdi
    shlq $12, %rdi
    leaq pds(%rip), %rax
    addq %rax, %rdi                     /* this GiB's page directory */
    movq %rdi, %rax
    orq $0x3, %rax
    leaq pdpt(%rip), %rdx
    movq %rax, (%rdx,%rcx,8)
    movq %rcx, %rax
    shlq $30, %rax
    orq $0x83, %rax
    movl $512, %edx
6:  movq %rax, (%rdi)
    addq $0x200000, %rax
    addq $8, %rdi
    decl %edx
    jnz 6b
    incq %rcx
    jmp 5b
8:  movq %cr3, %rax
    movq %rax, %cr3
    ret

/* count_avail: rax = usable bytes (page-aligned, from 4 MiB up, below mapped_limit) */
count_avail:
    xorl %r11d, %r11d
    call mmap_first
    jae 3f
1:  call clip_region
    subq %r8, %r9
    addq %r9, %r11
    call mmap_next
    jb 1b
3:  movq %r11, %rax
    ret

/* touch: write one qword into each of the first %rax usable pages; rax = pages written */
touch:
    movq %rax, %r12                     /* pages still to touch */
    xorl %r13d, %r13d                   /* pages touched */
    testq %r12, %r12
    jz 9f
    call mmap_first
    jae 9f
1:  call clip_region
2:  cmpq %r9, %r8
    jae 3f
    movq %r8, (%r8)
    addq $PAGE, %r8
    incq %r13
    decq %r12
    jz 9f
    jmp 2b
3:  call mmap_next
    jb 1b
9:  movq %r13, %rax
    ret

/* ---- secondary vCPUs -------------------------------------------------------------------------- */
start_aps:
    movq $1, online(%rip)
    /* fw_cfg: select FW_CFG_NB_CPUS (0x05), read 16 bits little-endian */
    movw $0x05, %ax
    movw $0x510, %dx
    outw %ax, %dx
    movw $0x511, %dx
    inb %dx, %al
    movzbl %al, %ecx
    inb %dx, %al
    movzbl %al, %eax
    shll $8, %eax
    orl %ecx, %eax
    movq %rax, ncpus(%rip)
    cmpq $1, %rax
    jbe 9f
    cmpq $4096, %rax
    ja 9f

    leaq ap_tramp(%rip), %rsi
    movl $TRAMP, %edi
    movl $(ap_tramp_end - ap_tramp), %ecx
    rep movsb
    movw $0, AP_COUNT

    movl $0x1B, %ecx                    /* IA32_APIC_BASE */
    rdmsr
    testl $0x400, %eax                  /* x2APIC mode */
    jnz 5f

    andl $0xFFFFF000, %eax
    movl %eax, %edi                     /* xAPIC MMIO base (identity-mapped, below 4 GiB) */
    movl 0xF0(%rdi), %eax               /* spurious-interrupt vector register: software-enable */
    orl $0x1FF, %eax
    movl %eax, 0xF0(%rdi)
    movl $0, 0x310(%rdi)                /* ICR high: destination (unused with a shorthand) */
    movl $0x000C4500, 0x300(%rdi)       /* INIT, all excluding self */
    call xapic_wait
    movq $20000000, %rcx
    call delay
    movl $(0x000C4600 | SIPI_VECTOR), 0x300(%rdi)   /* STARTUP */
    call xapic_wait
    movq $1000000, %rcx
    call delay
    movl $(0x000C4600 | SIPI_VECTOR), 0x300(%rdi)
    call xapic_wait
    jmp 6f

5:  movl $0x80F, %ecx                   /* x2APIC SVR */
    rdmsr
    orl $0x1FF, %eax
    wrmsr
    movl $0x830, %ecx                   /* x2APIC ICR */
    xorl %edx, %edx
    movl $0x000C4500, %eax
    wrmsr
    movq $20000000, %rcx
    call delay
    movl $0x830, %ecx
    xorl %edx, %edx
    movl $(0x000C4600 | SIPI_VECTOR), %eax
    wrmsr
    movq $1000000, %rcx
    call delay
    movl $0x830, %ecx
    xorl %edx, %edx
    movl $(0x000C4600 | SIPI_VECTOR), %eax
    wrmsr

    /* wait for the APs to check in, at most ~6e9 TSC cycles (2-3 s) */
6:  rdtsc
    shlq $32, %rdx
    orq %rax, %rdx
    movabsq $6000000000, %rsi
    addq %rdx, %rsi                     /* deadline */
    movq ncpus(%rip), %r8
    decq %r8                            /* APs expected */
7:  movzwl AP_COUNT, %eax
    cmpq %r8, %rax
    jae 8f
    pause
    rdtsc
    shlq $32, %rdx
    orq %rax, %rdx
    cmpq %rsi, %rdx
    jb 7b
8:  movzwl AP_COUNT, %eax
    incq %rax
    movq %rax, online(%rip)
9:  ret

/* xapic_wait: wait (bounded) until the ICR at %rdi reports the IPI delivered */
xapic_wait:
    movl $10000000, %ecx
1:  testl $0x1000, 0x300(%rdi)
    jz 2f
    pause
    decl %ecx
    jnz 1b
2:  ret

/* delay: busy-wait %rcx TSC cycles */
delay:
    pushq %rcx
    rdtsc
    shlq $32, %rdx
    orq %rax, %rdx
    popq %rcx
    addq %rdx, %rcx
1:  pause
    rdtsc
    shlq $32, %rdx
    orq %rax, %rdx
    cmpq %rcx, %rdx
    jb 1b
    ret

/* The AP trampoline, copied to TRAMP: real mode, CS = TRAMP >> 4, IP = 0. Position-independent. */
    .code16
ap_tramp:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lock incw AP_COUNT
1:  hlt
    jmp 1b
ap_tramp_end:
    .code64

/* ---- COM1 ------------------------------------------------------------------------------------- */
serial_init:
    movw $(COM1 + 1), %dx               /* no interrupts */
    xorb %al, %al
    outb %al, %dx
    movw $(COM1 + 3), %dx               /* DLAB */
    movb $0x80, %al
    outb %al, %dx
    movw $COM1, %dx                     /* divisor 1: 115200 baud */
    movb $1, %al
    outb %al, %dx
    movw $(COM1 + 1), %dx
    xorb %al, %al
    outb %al, %dx
    movw $(COM1 + 3), %dx               /* 8N1 */
    movb $0x03, %al
    outb %al, %dx
    ret

/* putc: %al */
putc:
    pushq %rcx
    pushq %rdx
    movb %al, %ah
    movl $100000, %ecx
    movw $(COM1 + 5), %dx               /* line status: transmitter holding register empty */
1:  inb %dx, %al
    testb $0x20, %al
    jnz 2f
    decl %ecx
    jnz 1b
2:  movb %ah, %al
    movw $COM1, %dx
    outb %al, %dx
    popq %rdx
    popq %rcx
    ret

/* puts: NUL-terminated string at %rsi */
puts:
1:  movb (%rsi), %al
    testb %al, %al
    jz 2f
    call putc
    incq %rsi
    jmp 1b
2:  ret

/* put_line: the string at %rsi, a space, %rax in decimal, a newline */
put_line:
    pushq %rax
    call puts
    movb $' ', %al
    call putc
    popq %rax
    leaq numbuf_end(%rip), %rdi
    movq $10, %rcx
1:  xorl %edx, %edx
    divq %rcx
    addb $'0', %dl
    decq %rdi
    movb %dl, (%rdi)
    testq %rax, %rax
    jnz 1b
    movq %rdi, %rsi
    call puts
    movb $'\n', %al
    call putc
    ret

    .section .rodata
msg_boot:    .asciz "BOOT\n"
msg_cpus:    .asciz "CPUS"
msg_online:  .asciz "ONLINE"
msg_avail:   .asciz "AVAIL"
msg_touched: .asciz "TOUCHED"

    .data
    .align 8
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF            /* 0x08: 64-bit code */
    .quad 0x00CF92000000FFFF            /* 0x10: data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt
    .align 8
mbi_ptr:     .quad 0
req_mode:    .quad 0                    /* 0: pct, 1: mib */
req_value:   .quad 100
mapped_limit: .quad 0
avail_mib:   .quad 0
ncpus:       .quad 1
online:      .quad 1
numbuf:      .space 24
numbuf_end:  .byte 0

    .bss
    .align 4096
pml4:   .space PAGE
pdpt:   .space PAGE
pds:    .space MAX_GIB * PAGE
stack:  .space 16384
stack_top:
