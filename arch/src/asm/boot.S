// Verso EL2 entry points. The braces of this file are format operands of global_asm!, so no
// other braces may appear here, comments included.

.section .text.boot, "ax"

// Primary CPU, entered by QEMU at EL2 (virtualization=on) with the MMU off and x0 = 0.
.global _start
_start:
    msr     daifset, #0xf
    mrs     x9, CurrentEL
    ubfx    x9, x9, #2, #2
    cmp     x9, #2
    b.ne    not_at_el2

    // .bss is zeroed here, before any Rust code runs, with aligned stores only (MMU off means
    // Device memory, where unaligned accesses fault).
    adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
1:  cmp     x9, x10
    b.hs    2f
    str     xzr, [x9], #8
    b       1b
2:  mov     x19, #0
    b       common_init

// Secondary CPUs, started by the hyp's own PSCI CPU_ON (psci.rs) at EL2 with x0 = CPU index.
.global secondary_entry
secondary_entry:
    msr     daifset, #0xf
    mov     x19, x0
    cmp     x19, #{MAX_CPUS}
    b.hs    bad_cpu_index

common_init:
    msr     tpidr_el2, x19
    // sp = __stacks_start + index * STACK_SLOT + STACK_TOP
    adrp    x9, __stacks_start
    add     x9, x9, :lo12:__stacks_start
    ldr     x10, ={STACK_SLOT}
    madd    x9, x19, x10, x9
    ldr     x10, ={STACK_TOP}
    add     x9, x9, x10
    mov     sp, x9
    adrp    x9, el2_vectors
    add     x9, x9, :lo12:el2_vectors
    msr     vbar_el2, x9
    isb
    mov     x0, x19
    cbnz    x19, 3f
    bl      primary_main
3:  bl      secondary_main
    // Both are -> !; should they ever return, stop loudly.
    b       bad_cpu_index

// Not at EL2: say so on the fallback PL011 and exit QEMU through semihosting with status 1.
not_at_el2:
    adr     x1, not_el2_message
    ldr     x2, ={UART_FALLBACK}
4:  ldrb    w3, [x1], #1
    cbz     w3, 6f
5:  ldr     w4, [x2, #0x18]
    tbnz    w4, #5, 5b
    str     w3, [x2]
    b       4b
6:  mov     x0, #1
    b       semihosting_exit_asm

bad_cpu_index:
    mov     x0, #101
    b       semihosting_exit_asm

// x0 = exit status. SYS_EXIT (0x18) with a parameter block [ADP_Stopped_ApplicationExit, status]
// built on whatever stack exists; without a stack, in a static block.
semihosting_exit_asm:
    adrp    x1, semihosting_block
    add     x1, x1, :lo12:semihosting_block
    ldr     x2, =0x20026
    stp     x2, x0, [x1]
    mov     x0, #0x18
    hlt     #0xf000
7:  wfe
    b       7b

.section .rodata.boot, "a"
not_el2_message:
    .asciz "VERSO: not entered at EL2; run QEMU with -M virt,virtualization=on\r\n"

.section .bss.boot, "aw", %nobits
.balign 16
semihosting_block:
    .quad 0
    .quad 0
