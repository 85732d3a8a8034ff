//! EL1 exception vectors and *expected* faults.
//!
//! A test that wants to prove an access is refused arms an expectation on its CPU, performs the
//! access (the `probe_*` functions do all three steps), and gets back the [`Fault`] the vector
//! recorded: ESR_EL1, FAR_EL1 and ELR_EL1. The handler then resumes after the faulting
//! instruction; for [`probe_exec`] it resumes at the link register instead, because the faulting
//! "instruction" is the branch target itself. Any exception nobody expected prints every
//! register and fails the whole suite: a kernel that carries on after an unexplained fault would
//! report results nobody can trust.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::boot::MAX_CPUS;

/// The registers saved by the vector stub, in the order it stores them.
#[repr(C)]
pub struct Frame {
    /// x0..x30 at the time of the exception.
    pub x: [u64; 31],
    /// ELR_EL1: where execution resumes.
    pub elr: u64,
    /// SPSR_EL1: the interrupted PSTATE.
    pub spsr: u64,
    _pad: u64,
}

/// What an expected synchronous exception reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// ESR_EL1 (syndrome).
    pub esr: u64,
    /// FAR_EL1 (faulting virtual address; meaningful for aborts).
    pub far: u64,
    /// ELR_EL1 (the faulting instruction).
    pub elr: u64,
}

/// Exception class: data abort taken without a change in exception level.
pub const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
/// Exception class: instruction abort taken without a change in exception level.
pub const EC_INSN_ABORT_SAME_EL: u64 = 0x21;
/// Exception class: unknown reason (e.g. an `hvc`/`smc` that no EL handles).
pub const EC_UNKNOWN: u64 = 0x00;

impl Fault {
    /// ESR.EC, the exception class.
    pub fn ec(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }
    /// ESR.IL: 32-bit instruction.
    pub fn il(&self) -> bool {
        self.esr & (1 << 25) != 0
    }
    /// ESR.ISS.WnR for data aborts: the access was a write.
    pub fn wnr(&self) -> bool {
        self.esr & (1 << 6) != 0
    }
    /// ESR.ISS.DFSC / IFSC: the fault status code.
    pub fn fsc(&self) -> u64 {
        self.esr & 0x3f
    }
    /// Whether the status code is a translation fault (0b0001LL, any level).
    pub fn is_translation_fault(&self) -> bool {
        self.fsc() & 0b11_1100 == 0b00_0100
    }
    /// Whether the status code is a synchronous external abort not on a table walk (0b010000):
    /// what Verso injects when the host touches memory it does not own (docs/abi.md).
    pub fn is_external_abort(&self) -> bool {
        self.fsc() == 0b01_0000
    }
}

impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "esr={:#x} (ec={:#x} wnr={} fsc={:#x}) far={:#x} elr={:#x}",
            self.esr,
            self.ec(),
            self.wnr() as u8,
            self.fsc(),
            self.far,
            self.elr
        )
    }
}

/// One CPU's expectation. Written by the CPU itself, from thread and exception context.
struct Expectation {
    armed: AtomicBool,
    resume_at_lr: AtomicBool,
    hit: AtomicBool,
    esr: AtomicU64,
    far: AtomicU64,
    elr: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // used only as an array initialiser
const EXPECTATION_INIT: Expectation = Expectation {
    armed: AtomicBool::new(false),
    resume_at_lr: AtomicBool::new(false),
    hit: AtomicBool::new(false),
    esr: AtomicU64::new(0),
    far: AtomicU64::new(0),
    elr: AtomicU64::new(0),
};

static EXPECTATIONS: [Expectation; MAX_CPUS] = [EXPECTATION_INIT; MAX_CPUS];

fn this_cpu_expectation() -> &'static Expectation {
    &EXPECTATIONS[crate::cpus::this_cpu()]
}

/// Runs `f` with a fault expectation armed on this CPU; returns the fault it took, if any.
///
/// `f` should perform exactly one potentially faulting access, written as inline assembly (see
/// the `probe_*` functions) so the compiler cannot move or duplicate it; the handler skips the
/// faulting instruction, so any register that instruction would have written holds garbage.
pub fn expect_fault(f: impl FnOnce()) -> Option<Fault> {
    expect_fault_resuming(false, f)
}

/// [`expect_fault`], but a fault resumes at the link register (x30) instead of the next
/// instruction: for a `blr` into memory that may not be executable, or that holds no code.
fn expect_fault_resuming(at_lr: bool, f: impl FnOnce()) -> Option<Fault> {
    let e = this_cpu_expectation();
    e.resume_at_lr.store(at_lr, Ordering::SeqCst);
    e.hit.store(false, Ordering::SeqCst);
    e.armed.store(true, Ordering::SeqCst);
    f();
    e.armed.store(false, Ordering::SeqCst);
    if e.hit.load(Ordering::SeqCst) {
        Some(Fault {
            esr: e.esr.load(Ordering::SeqCst),
            far: e.far.load(Ordering::SeqCst),
            elr: e.elr.load(Ordering::SeqCst),
        })
    } else {
        None
    }
}

/// Loads 64 bits from `addr`, catching the fault if the access is refused.
///
/// # Errors
/// The fault the load raised.
pub fn probe_read_u64(addr: u64) -> Result<u64, Fault> {
    let mut value = 0;
    let fault = expect_fault(|| {
        // SAFETY: a single load from a caller-chosen address. If it faults, the armed expectation
        // makes the handler record the fault and resume at the next instruction; if it succeeds it
        // only reads memory, which is harmless for the RAM and device registers tests probe.
        unsafe { asm!("ldr {v}, [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack)) };
    });
    fault.map_or(Ok(value), Err)
}

/// Loads 32 bits from `addr` (device registers), catching the fault if the access is refused.
///
/// # Errors
/// The fault the load raised.
pub fn probe_read_u32(addr: u64) -> Result<u32, Fault> {
    let mut value: u32 = 0;
    let fault = expect_fault(|| {
        // SAFETY: as in `probe_read_u64`, a single 32-bit load whose fault is caught.
        unsafe { asm!("ldr {v:w}, [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack)) };
    });
    fault.map_or(Ok(value), Err)
}

/// Stores 64 bits to `addr`, catching the fault if the access is refused.
///
/// # Errors
/// The fault the store raised.
///
/// # Safety
/// If the store succeeds it writes memory: `addr` must be memory the caller may overwrite, or
/// memory the test expects to be unreachable (then a successful store is the bug being detected).
pub unsafe fn probe_write_u64(addr: u64, value: u64) -> Result<(), Fault> {
    let fault = expect_fault(|| {
        // SAFETY: the caller vouches for the address (see this function's contract); a fault is
        // caught by the armed expectation.
        unsafe { asm!("str {v}, [{a}]", a = in(reg) addr, v = in(reg) value, options(nostack)) };
    });
    fault.map_or(Ok(()), Err)
}

/// Branches to `addr` with a link, catching the instruction abort if fetching there is refused.
///
/// # Errors
/// The fault the fetch raised.
///
/// # Safety
/// If the fetch succeeds, whatever is at `addr` runs: it must be a function that returns, or an
/// address the test expects to be non-executable (then the success is the bug being detected).
pub unsafe fn probe_exec(addr: u64) -> Result<(), Fault> {
    let fault = expect_fault_resuming(true, || {
        // SAFETY: the caller vouches for the target; any fault there (an instruction abort, or
        // an undefined instruction if the target holds no code) resumes at x30, i.e. right after
        // the `blr`, and all C-ABI caller-saved registers are declared clobbered.
        unsafe { asm!("blr {a}", a = in(reg) addr, clobber_abi("C")) };
    });
    fault.map_or(Ok(()), Err)
}

/// The vector table: 16 entries of 0x80 bytes; each saves x0/x1, loads its index and jumps to
/// the common path, which saves the rest and calls [`handle_exception`].
macro_rules! vectors_asm {
    () => {
        r#"
    .section .text.vectors, "ax"
    .macro VENTRY kind
    .balign 0x80
    sub     sp, sp, #272
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       __exception_common
    .endm

    .balign 2048
    .global __vectors
__vectors:
    VENTRY 0
    VENTRY 1
    VENTRY 2
    VENTRY 3
    VENTRY 4
    VENTRY 5
    VENTRY 6
    VENTRY 7
    VENTRY 8
    VENTRY 9
    VENTRY 10
    VENTRY 11
    VENTRY 12
    VENTRY 13
    VENTRY 14
    VENTRY 15

__exception_common:
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
    mrs     x2, elr_el1
    mrs     x3, spsr_el1
    stp     x30, x2, [sp, #240]
    str     x3, [sp, #256]
    mov     x1, sp
    bl      {handler}
    ldr     x3, [sp, #256]
    ldp     x30, x2, [sp, #240]
    msr     elr_el1, x2
    msr     spsr_el1, x3
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
    add     sp, sp, #272
    eret
    .text
"#
    };
}

global_asm!(vectors_asm!(), handler = sym handle_exception);

const _: () = assert!(core::mem::size_of::<Frame>() == 272);

/// Vector index 4: synchronous exception from the current EL while using SP_EL1.
const SYNC_CURRENT_SPX: u64 = 4;

const KIND_NAMES: [&str; 4] = ["sync", "irq", "fiq", "serror"];
const ORIGIN_NAMES: [&str; 4] = [
    "current EL SP0",
    "current EL SPx",
    "lower EL AArch64",
    "lower EL AArch32",
];

extern "C" fn handle_exception(kind: u64, frame: &mut Frame) {
    let esr: u64;
    let far: u64;
    // SAFETY: reading EL1 syndrome registers has no side effect.
    unsafe {
        asm!("mrs {}, esr_el1", out(reg) esr, options(nomem, nostack));
        asm!("mrs {}, far_el1", out(reg) far, options(nomem, nostack));
    }
    let e = this_cpu_expectation();
    if kind == SYNC_CURRENT_SPX && e.armed.swap(false, Ordering::SeqCst) {
        e.esr.store(esr, Ordering::SeqCst);
        e.far.store(far, Ordering::SeqCst);
        e.elr.store(frame.elr, Ordering::SeqCst);
        e.hit.store(true, Ordering::SeqCst);
        if e.resume_at_lr.load(Ordering::SeqCst) {
            // The fault is at (or after) the branch target: go back to the instruction after
            // the `blr`.
            frame.elr = frame.x[30];
        } else {
            frame.elr += 4;
        }
        return;
    }
    crate::println_raw!(
        "UNEXPECTED EXCEPTION: {} from {} on CPU {}: esr={:#x} (ec={:#x}) far={:#x} elr={:#x} spsr={:#x}",
        KIND_NAMES[(kind & 3) as usize],
        ORIGIN_NAMES[((kind >> 2) & 3) as usize],
        crate::cpus::this_cpu(),
        esr,
        (esr >> 26) & 0x3f,
        far,
        frame.elr,
        frame.spsr
    );
    for (i, pair) in frame.x.chunks(2).enumerate() {
        match pair {
            [a, b] => crate::println_raw!(
                "  x{:<2} = {:#018x}  x{:<2} = {:#018x}",
                2 * i,
                a,
                2 * i + 1,
                b
            ),
            [a] => crate::println_raw!("  x{:<2} = {:#018x}", 2 * i, a),
            _ => {}
        }
    }
    crate::harness::abort_suite(format_args!(
        "unexpected exception, esr={esr:#x} elr={:#x}",
        frame.elr
    ));
}
