//! Entry: the arm64 Image header, the primary and secondary entry paths, and the EL1 MMU.
//!
//! A loader (Verso, or QEMU itself when a kernel is booted bare for development) enters at the
//! Image base with the MMU off, DAIF masked and x0 = the DTB's physical address. Before any Rust
//! code runs this file:
//! 1. enables FP/SIMD at EL1 (`CPACR_EL1.FPEN`): the hard-float target's `memcpy`/`memset` use
//!    NEON, so Rust code may touch V registers anywhere;
//! 2. turns on an identity-mapped EL1 stage-1 MMU ([`IDMAP`]): with the MMU off every data
//!    access is Device memory, where unaligned accesses fault and exclusives (our spin locks)
//!    are not guaranteed;
//! 3. clears `.bss` (primary only), sets a stack, `TPIDR_EL1` = CPU index and `VBAR_EL1`.
//!
//! Secondaries enter at `_secondary_entry` through PSCI CPU_ON with x0 = context_id = their CPU
//! index (see [`crate::cpus`]) and take the same path minus the `.bss` clear.

use core::arch::global_asm;

/// Size of each CPU's stack. Tests run on the boot CPU; secondaries run small jobs.
pub const STACK_SIZE: usize = 64 * 1024;

/// Most CPUs a test kernel supports (QEMU `-smp` up to this many).
pub const MAX_CPUS: usize = 8;

#[repr(C, align(16))]
struct Stacks([[u8; STACK_SIZE]; MAX_CPUS]);

/// One stack per CPU index; CPU `i` uses `STACKS[i]` (its top is the end of the slice).
#[no_mangle]
static mut __STACKS: Stacks = Stacks([[0; STACK_SIZE]; MAX_CPUS]);

/// MAIR_EL1: Attr0 = Device-nGnRnE (0x00), Attr1 = Normal write-back RW-allocate (0xff).
const MAIR: u64 = 0xff << 8;
const ATTR_DEVICE: u64 = 0 << 2;
const ATTR_NORMAL: u64 = 1 << 2;

/// TCR_EL1: T0SZ = 25 (39-bit VA, walks start at level 1), inner/outer WBWA, inner shareable,
/// 4 KiB granule, EPD1 (no TTBR1 walks), IPS = 40 bits.
const TCR: u64 = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32);

/// SCTLR_EL1: the RES1 bits plus M (MMU), C (data cache) and I (instruction cache). A (alignment
/// check) and WXN stay clear.
const SCTLR: u64 = 0x30d0_0800 | 1 | (1 << 2) | (1 << 12);

// Level-1 block descriptor fields.
const BLOCK: u64 = 0b01;
const AF: u64 = 1 << 10;
const SH_INNER: u64 = 3 << 8;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;

/// A level-1 translation table.
#[repr(C, align(4096))]
pub struct Table([u64; 512]);

const fn idmap() -> Table {
    let mut t = [0u64; 512];
    // 0..1 GiB: every MMIO device of QEMU virt (GIC, PL011, SMMU, virtio, PCIe window): Device
    // memory, never executable.
    t[0] = BLOCK | AF | ATTR_DEVICE | PXN | UXN;
    // 1..2 GiB: RAM (`-m 1G`), Normal write-back, executable at EL1. This deliberately includes
    // the hyp's reserved memory: whether the *host* can reach it is decided by Verso's stage 2,
    // which is exactly what the suites test.
    t[1] = 0x4000_0000 | BLOCK | AF | ATTR_NORMAL | SH_INNER | UXN;
    Table(t)
}

/// The identity map used by every CPU: read-only, built at compile time, so it is valid before
/// `.bss` is cleared and is never written.
#[no_mangle]
static __IDMAP: Table = idmap();

global_asm!(
    r#"
    .section .text.head, "ax"
    .global _head
_head:
    b       _start                  // code0: branch to the real entry
    .word   0                       // code1
    .quad   0                       // text_offset: run exactly where we are linked
    .quad   __image_size            // image_size, .bss included
    .quad   2                       // flags: little-endian, 4 KiB pages, not relocatable
    .quad   0, 0, 0                 // res2..res4
    .word   0x644d5241              // magic "ARM\x64"
    .word   0                       // res5: no PE header

    .text
    .global _start
_start:
    mov     x19, x0                 // keep the DTB pointer
    bl      __el1_setup
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16
    b       1b
2:  mov     x0, #0                  // CPU index 0
    bl      __set_stack
    mov     x0, x19
    bl      {primary}
3:  wfe
    b       3b

    .global _secondary_entry
_secondary_entry:
    mov     x19, x0                 // context_id = CPU index
    bl      __el1_setup
    mov     x0, x19
    bl      __set_stack
    mov     x0, x19
    bl      {secondary}
4:  wfe
    b       4b

// FP/SIMD on, identity MMU on, vectors installed. Uses x9 only; no stack.
__el1_setup:
    mov     x9, #(3 << 20)          // CPACR_EL1.FPEN = 0b11
    msr     cpacr_el1, x9
    ldr     x9, ={mair}
    msr     mair_el1, x9
    ldr     x9, ={tcr}
    msr     tcr_el1, x9
    adrp    x9, __IDMAP
    msr     ttbr0_el1, x9
    adrp    x9, __vectors
    add     x9, x9, :lo12:__vectors
    msr     vbar_el1, x9
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x9, ={sctlr}
    msr     sctlr_el1, x9
    isb
    ret

// sp = top of __STACKS[x0]; TPIDR_EL1 = x0. Clobbers x9, x10.
__set_stack:
    msr     tpidr_el1, x0
    adrp    x9, __STACKS
    add     x9, x9, :lo12:__STACKS
    add     x10, x0, #1
    mov     x11, #{stack_size}
    madd    x9, x10, x11, x9
    mov     sp, x9
    ret
    .ltorg
"#,
    primary = sym crate::primary_main,
    secondary = sym crate::cpus::secondary_main,
    mair = const MAIR,
    tcr = const TCR,
    sctlr = const SCTLR,
    stack_size = const STACK_SIZE,
);
