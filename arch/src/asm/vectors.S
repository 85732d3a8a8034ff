// Verso's EL2 exception vectors. Braces are format operands of global_asm!: none elsewhere.
//
// Exceptions from the hyp itself (current EL) are always fatal: they switch to this CPU's fault
// stack (so a blown stack still reports) and call el2_fatal_exception, which never returns.
// Synchronous exceptions from the host (lower EL, AArch64) save x0..x30 in a HostContext on the
// hyp stack, call handle_host_sync, restore and return to the host.

.macro fatal_vector kind
    .balign 0x80
    mov     x0, #\kind
    b       el2_fatal_vector
.endm

.section .text.vectors, "ax"
.balign 0x800
.global el2_vectors
el2_vectors:
    fatal_vector 0
    fatal_vector 1
    fatal_vector 2
    fatal_vector 3
    fatal_vector 4
    fatal_vector 5
    fatal_vector 6
    fatal_vector 7
    .balign 0x80
    b       host_sync_vector
    fatal_vector 9
    fatal_vector 10
    fatal_vector 11
    fatal_vector 12
    fatal_vector 13
    fatal_vector 14
    fatal_vector 15

.global el2_fatal_vector
el2_fatal_vector:
    // The fault stack is the top STACK_FAULT bytes of this CPU's slot.
    mrs     x1, tpidr_el2
    cmp     x1, #{MAX_CPUS}
    csel    x1, xzr, x1, hs
    adrp    x2, __stacks_start
    add     x2, x2, :lo12:__stacks_start
    ldr     x3, ={STACK_SLOT}
    add     x1, x1, #1
    madd    x2, x1, x3, x2
    mov     sp, x2
    bl      el2_fatal_exception
1:  wfe
    b       1b

host_sync_vector:
    sub     sp, sp, #{CONTEXT_SIZE}
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    str     x30, [sp, #240]
    mov     x0, sp
    bl      handle_host_sync
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    add     sp, sp, #{CONTEXT_SIZE}
    eret

// Enters the host at EL1h: x0 = its x0 (DTB or PSCI context id), x1 = entry PC, x2 = the hyp stack
// top to which SP_EL2 is reset, so every later trap from the host starts on an empty stack.
// No hyp value survives in the host's registers.
.global enter_host
enter_host:
    msr     elr_el2, x1
    mov     x3, #0x3c5
    msr     spsr_el2, x3
    mov     sp, x2
    mov     x1, xzr
    mov     x2, xzr
    mov     x3, xzr
    mov     x4, xzr
    mov     x5, xzr
    mov     x6, xzr
    mov     x7, xzr
    mov     x8, xzr
    mov     x9, xzr
    mov     x10, xzr
    mov     x11, xzr
    mov     x12, xzr
    mov     x13, xzr
    mov     x14, xzr
    mov     x15, xzr
    mov     x16, xzr
    mov     x17, xzr
    mov     x18, xzr
    mov     x19, xzr
    mov     x20, xzr
    mov     x21, xzr
    mov     x22, xzr
    mov     x23, xzr
    mov     x24, xzr
    mov     x25, xzr
    mov     x26, xzr
    mov     x27, xzr
    mov     x28, xzr
    mov     x29, xzr
    mov     x30, xzr
    isb
    eret
