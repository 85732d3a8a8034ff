// The world switch's assembly half: entering a guest vCPU and coming back on its first trap, and
// FP/SIMD save/restore (the hyp is soft-float, so only this file names V registers). Braces are
// format operands of global_asm!: none elsewhere, comments included.
//
// While a guest runs, VBAR_EL2 points at guest_vectors: every exception from the lower EL is a
// guest exit. guest_enter leaves its frame (the hyp's callee-saved registers and the context
// pointer) on the hyp stack, and SP_EL2 is exactly the same when the trap comes back, so the exit
// path finds the context at a fixed offset from SP.

.arch_extension fp
.arch_extension simd

.equ GUEST_FRAME, 112
.equ FRAME_CTX, 96

.macro fatal_vector_g kind
    .balign 0x80
    mov     x0, #\kind
    b       el2_fatal_vector
.endm

.macro exit_vector kind
    .balign 0x80
    stp     x0, x1, [sp, #-16]!
    mov     x0, #\kind
    b       guest_exit_common
.endm

.section .text.vectors, "ax"
.balign 0x800
.global guest_vectors
guest_vectors:
    fatal_vector_g 0
    fatal_vector_g 1
    fatal_vector_g 2
    fatal_vector_g 3
    fatal_vector_g 4
    fatal_vector_g 5
    fatal_vector_g 6
    fatal_vector_g 7
    exit_vector 0
    exit_vector 1
    exit_vector 2
    exit_vector 3
    exit_vector 0
    exit_vector 1
    exit_vector 2
    exit_vector 3

.section .text, "ax"

// x0 = the vCPU's x0..x30 and SP_EL0 (VcpuContext). ELR_EL2, SPSR_EL2 and every EL1 register are
// already the guest's. Returns x0 = what ended the run: 0 sync, 1 IRQ, 2 FIQ, 3 SError.
.global guest_enter
guest_enter:
    sub     sp, sp, #GUEST_FRAME
    stp     x19, x20, [sp, #0]
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    str     x0, [sp, #FRAME_CTX]
    adrp    x1, guest_vectors
    add     x1, x1, :lo12:guest_vectors
    msr     vbar_el2, x1
    ldr     x1, [x0, #248]
    msr     sp_el0, x1
    ldp     x2, x3, [x0, #16]
    ldp     x4, x5, [x0, #32]
    ldp     x6, x7, [x0, #48]
    ldp     x8, x9, [x0, #64]
    ldp     x10, x11, [x0, #80]
    ldp     x12, x13, [x0, #96]
    ldp     x14, x15, [x0, #112]
    ldp     x16, x17, [x0, #128]
    ldp     x18, x19, [x0, #144]
    ldp     x20, x21, [x0, #160]
    ldp     x22, x23, [x0, #176]
    ldp     x24, x25, [x0, #192]
    ldp     x26, x27, [x0, #208]
    ldp     x28, x29, [x0, #224]
    ldr     x30, [x0, #240]
    ldp     x0, x1, [x0, #0]
    eret
    // Never reached architecturally; stops straight-line speculation past the ERET.
    dsb     nsh
    isb

// x0 = exit kind; the guest's x0/x1 are at [sp], the frame of guest_enter above them.
guest_exit_common:
    ldr     x1, [sp, #16 + FRAME_CTX]
    stp     x2, x3, [x1, #16]
    stp     x4, x5, [x1, #32]
    stp     x6, x7, [x1, #48]
    stp     x8, x9, [x1, #64]
    stp     x10, x11, [x1, #80]
    stp     x12, x13, [x1, #96]
    stp     x14, x15, [x1, #112]
    stp     x16, x17, [x1, #128]
    stp     x18, x19, [x1, #144]
    stp     x20, x21, [x1, #160]
    stp     x22, x23, [x1, #176]
    stp     x24, x25, [x1, #192]
    stp     x26, x27, [x1, #208]
    stp     x28, x29, [x1, #224]
    str     x30, [x1, #240]
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x1, #0]
    mrs     x2, sp_el0
    str     x2, [x1, #248]
    adrp    x2, el2_vectors
    add     x2, x2, :lo12:el2_vectors
    msr     vbar_el2, x2
    isb
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    add     sp, sp, #GUEST_FRAME
    ret

// x0 = FpState: V0..V31 at 0, FPSR at 512, FPCR at 520.
.global fp_save
fp_save:
    stp     q0, q1, [x0, #0]
    stp     q2, q3, [x0, #32]
    stp     q4, q5, [x0, #64]
    stp     q6, q7, [x0, #96]
    stp     q8, q9, [x0, #128]
    stp     q10, q11, [x0, #160]
    stp     q12, q13, [x0, #192]
    stp     q14, q15, [x0, #224]
    stp     q16, q17, [x0, #256]
    stp     q18, q19, [x0, #288]
    stp     q20, q21, [x0, #320]
    stp     q22, q23, [x0, #352]
    stp     q24, q25, [x0, #384]
    stp     q26, q27, [x0, #416]
    stp     q28, q29, [x0, #448]
    stp     q30, q31, [x0, #480]
    mrs     x1, fpsr
    mrs     x2, fpcr
    add     x0, x0, #512
    stp     x1, x2, [x0]
    ret

.global fp_restore
fp_restore:
    ldp     q0, q1, [x0, #0]
    ldp     q2, q3, [x0, #32]
    ldp     q4, q5, [x0, #64]
    ldp     q6, q7, [x0, #96]
    ldp     q8, q9, [x0, #128]
    ldp     q10, q11, [x0, #160]
    ldp     q12, q13, [x0, #192]
    ldp     q14, q15, [x0, #224]
    ldp     q16, q17, [x0, #256]
    ldp     q18, q19, [x0, #288]
    ldp     q20, q21, [x0, #320]
    ldp     q22, q23, [x0, #352]
    ldp     q24, q25, [x0, #384]
    ldp     q26, q27, [x0, #416]
    ldp     q28, q29, [x0, #448]
    ldp     q30, q31, [x0, #480]
    add     x0, x0, #512
    ldp     x1, x2, [x0]
    msr     fpsr, x1
    msr     fpcr, x2
    ret
