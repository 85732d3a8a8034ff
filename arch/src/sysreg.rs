//! System register access and the barriers the rest of the runtime names.
//!
//! Reads are safe: reading a system register at EL2 has no side effect on memory. Writes are
//! `unsafe` at the call site (the macro expands to a bare `asm!`), because a wrong value in e.g.
//! SCTLR_EL2, TTBR0_EL2 or HCR_EL2 breaks the translation regime the hyp is running in.

/// Reads a system register by name (or by `s3_..` encoding for registers the assembler may not
/// know without a target feature).
macro_rules! read_sysreg {
    ($reg:tt) => {{
        let value: u64;
        // SAFETY: an MRS has no memory effect and cannot fault at EL2 for the registers used here.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", stringify!($reg)), out(reg) value,
                             options(nomem, nostack, preserves_flags));
        }
        value
    }};
}

/// Writes a system register. Must be used inside an `unsafe` block whose SAFETY comment explains
/// why the new value keeps the hyp's own execution valid.
macro_rules! write_sysreg {
    ($reg:tt, $value:expr) => {
        core::arch::asm!(concat!("msr ", stringify!($reg), ", {}"), in(reg) $value as u64,
                         options(nostack, preserves_flags))
    };
}

pub(crate) use {read_sysreg, write_sysreg};

/// `ISB`: later instructions see the effect of earlier system register writes.
#[inline(always)]
pub fn isb() {
    // SAFETY: a barrier has no effect on memory contents or on the hyp's state.
    unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) };
}

/// `DSB ISH`: earlier memory accesses and maintenance complete in the inner shareable domain.
#[inline(always)]
pub fn dsb_ish() {
    // SAFETY: as for `isb`.
    unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
}

/// `DSB ISHST`: earlier stores (e.g. descriptor writes) are visible to every walker.
#[inline(always)]
pub fn dsb_ishst() {
    // SAFETY: as for `isb`.
    unsafe { core::arch::asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// The index of the running CPU, as set by the boot code in TPIDR_EL2.
pub fn cpu_index() -> usize {
    read_sysreg!(tpidr_el2) as usize
}

/// The affinity fields of MPIDR_EL1 (Aff3..Aff0), i.e. what the DTB's cpu `reg` holds.
pub fn mpidr_affinity() -> u64 {
    read_sysreg!(mpidr_el1) & 0xff_00ff_ffff
}
