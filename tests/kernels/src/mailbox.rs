//! The test mailbox between a host-role kernel and the guest-role kernel it runs
//! (`guest-worker`): how the host tells a guest what to do, one command per vCPU run.
//!
//! The guest reports with `hvc #0`, x0 = [`MAILBOX`], x1..x3 = its reply to the previous command.
//! Verso does not handle that ID at EL2, so it is a VCPU_RUN exit to the host (reason 1, x2..x5 =
//! guest x0..x3). The host answers by running the vCPU again with flag "complete the last exit"
//! and x4..x7 = the next command and its three arguments, which Verso puts in the guest's x0..x3
//! as the results of its `hvc`. So every command costs exactly one guest-to-host round trip,
//! which is also the round trip the benchmark measures.
//!
//! The guest's first report is [`cmd::READY`] with x2 = its boot argument (x0 at entry, the
//! VCPU_CREATE value) and x3 = CNTFRQ_EL0.

use core::arch::asm;

/// Function ID of the mailbox call: in the vendor-specific hypervisor range, between pKVM's guest
/// calls (0xC600_0000 + n) and Verso's host calls (0xC600_8000 + n), and implemented by neither,
/// so the hyp forwards it to the host.
pub const MAILBOX: u64 = 0xc600_7e00;

/// Commands (x0 of the host's completion) and the guest's first report.
pub mod cmd {
    /// Guest -> host, first report: `[READY, boot_arg, cntfrq]`.
    pub const READY: u64 = 0x5245_4459;
    /// Reply `[0, 0, 0]` at once (the vCPU round trip of the benchmark).
    pub const NOP: u64 = 1;
    /// `(fid | x3 << 32, x1, x2)`: make the SMCCC call `hvc #0` with x0 = fid (32 bits), x1, x2,
    /// x3; reply `[x0, x1, x2]` of its result (x3 is kept for [`LAST_X3`]).
    pub const CALL: u64 = 2;
    /// Reply `[x3, 0, 0]` of the last [`CALL`].
    pub const LAST_X3: u64 = 3;
    /// `(ipa, pages, seed)`: write [`pattern`] into every word of the pages; reply `[0, 0, 0]`.
    pub const FILL: u64 = 4;
    /// `(ipa, pages, seed)`: check every word against [`pattern`]; reply `[0, 0, 0]`, or
    /// `[1, address, value found]` for the first mismatch.
    pub const CHECK: u64 = 5;
    /// `(ipa)`: load 64 bits; reply `[0, value, 0]`, or `[1, esr, far]` if an abort was injected.
    pub const READ: u64 = 6;
    /// `(ipa, value)`: store 64 bits; reply `[0, 0, 0]`, or `[1, esr, far]` for an abort.
    pub const WRITE: u64 = 7;
    /// `(seed)`: load v0..v31 with [`fp_pattern`]`(seed)`, report `[FP_HOLD, 0, 0]` with them
    /// live, and on the next command (which is ignored) store them and check them; reply
    /// `[0, 0, 0]`, or `[1, register, low 64 bits found]`.
    pub const FP: u64 = 8;
    /// Guest -> host: the guest holds its FP pattern in its registers (see [`FP`]).
    pub const FP_HOLD: u64 = 0x4650_484c;
    /// `(ipa, count)`: `count` times MEM_SHARE then MEM_UNSHARE of the one page at `ipa`; reply
    /// `[0, count, 0]`, or `[x0 of the failing call, iteration, 0 share / 1 unshare]`.
    pub const CONVERT_LOOP: u64 = 9;
    /// `(ipa, pages, iterations)`: time MEM_SHARE and MEM_UNSHARE of the range, each call from
    /// just before its `hvc` to just after it returns; reply `[status, share ticks, unshare
    /// ticks]`, summed over the iterations with the counter's own reading cost removed.
    pub const BENCH_CONVERT: u64 = 10;
    /// `(src ipa, dst ipa, pages)`: time copying `pages` pages from `src` to `dst` (private
    /// memory into a shared bounce buffer); reply `[0, ticks, 0]`.
    pub const BENCH_COPY: u64 = 11;
    /// PSCI SYSTEM_OFF through `hvc` (an exit to the host, reason 5); never replies.
    pub const OFF: u64 = 12;
}

/// pKVM guest calls (Linux's `arm-smccc.h` / `kvm_host.h` names).
pub mod guest_call {
    /// HYP_MEMINFO: x0 = granule size, x1 = 1 if the range ABI is supported.
    pub const HYP_MEMINFO: u64 = 0xc600_0002;
    /// MEM_SHARE(ipa, nr_granules, 0).
    pub const MEM_SHARE: u64 = 0xc600_0003;
    /// MEM_UNSHARE(ipa, nr_granules, 0).
    pub const MEM_UNSHARE: u64 = 0xc600_0004;
    /// MEM_RELINQUISH(ipa, nr_granules, 0).
    pub const MEM_RELINQUISH: u64 = 0xc600_0009;
    /// KVM vendor hypervisor UID.
    pub const KVM_UID: u64 = 0x8600_ff01;
    /// KVM features bitmap.
    pub const KVM_FEATURES: u64 = 0x8600_0000;
    /// The UID words KVM answers.
    pub const KVM_UID_WORDS: [u64; 4] = [0xb66f_b428, 0xe911_c52e, 0x564b_caa9, 0x743a_004d];
    /// The features bitmap Verso answers (bits 0, 2, 3, 4, 9).
    pub const KVM_FEATURES_BITMAP: u64 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 9);
    /// SMCCC INVALID_PARAMETER.
    pub const INVALID_PARAMETER: u64 = -3i64 as u64;
}

/// The 64-bit word a FILL writes at `addr`: distinct per address and per seed, never zero (so a
/// zeroed page never passes a CHECK by accident).
pub fn pattern(seed: u64, addr: u64) -> u64 {
    let x = (addr ^ seed.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x ^ (x >> 29)) | 1
}

/// The value of register `v<reg>` in an FP round trip for `seed`.
pub fn fp_pattern(seed: u64, reg: usize) -> u128 {
    let lo = pattern(seed, reg as u64);
    let hi = pattern(!seed, reg as u64);
    (u128::from(hi) << 64) | u128::from(lo)
}

/// The 32 V registers as memory.
#[repr(C, align(16))]
pub struct VRegs(pub [u128; 32]);

impl VRegs {
    /// All 32 registers with [`fp_pattern`]`(seed)`.
    pub fn with_pattern(seed: u64) -> Self {
        let mut v = Self([0; 32]);
        for (i, r) in v.0.iter_mut().enumerate() {
            *r = fp_pattern(seed, i);
        }
        v
    }
    /// The first register that differs from [`fp_pattern`]`(seed)`, and its value.
    pub fn mismatch(&self, seed: u64) -> Option<(usize, u128)> {
        (0..32)
            .find(|&i| self.0[i] != fp_pattern(seed, i))
            .map(|i| (i, self.0[i]))
    }
}

/// Loads v0..v31 from `load`, issues `hvc #0` with x0..x7 = `regs`, and stores v0..v31 into
/// `store` right after it returns, all in one block so no compiled code can touch a V register
/// in between. Returns x0..x7 after the call. This is how a kernel proves its FP/SIMD state
/// survives whatever runs during the `hvc` (the other side's FP code, a world switch).
pub fn hvc_holding_vregs(load: &VRegs, store: &mut VRegs, regs: [u64; 8]) -> [u64; 8] {
    let mut r = regs;
    // SAFETY: `load` and `store` are valid, 16-byte aligned 512-byte buffers (`VRegs`), passed
    // in x21/x20, which the `hvc` preserves (SMCCC: x18..x30 are callee-saved; Verso's ABI and a
    // guest's world switch keep every register the call does not return in). Every V register
    // and x0..x17 are declared clobbered or as outputs.
    unsafe {
        asm!(
            "ldp q0, q1, [x21, #0]",
            "ldp q2, q3, [x21, #32]",
            "ldp q4, q5, [x21, #64]",
            "ldp q6, q7, [x21, #96]",
            "ldp q8, q9, [x21, #128]",
            "ldp q10, q11, [x21, #160]",
            "ldp q12, q13, [x21, #192]",
            "ldp q14, q15, [x21, #224]",
            "ldp q16, q17, [x21, #256]",
            "ldp q18, q19, [x21, #288]",
            "ldp q20, q21, [x21, #320]",
            "ldp q22, q23, [x21, #352]",
            "ldp q24, q25, [x21, #384]",
            "ldp q26, q27, [x21, #416]",
            "ldp q28, q29, [x21, #448]",
            "ldp q30, q31, [x21, #480]",
            "hvc #0",
            "stp q0, q1, [x20, #0]",
            "stp q2, q3, [x20, #32]",
            "stp q4, q5, [x20, #64]",
            "stp q6, q7, [x20, #96]",
            "stp q8, q9, [x20, #128]",
            "stp q10, q11, [x20, #160]",
            "stp q12, q13, [x20, #192]",
            "stp q14, q15, [x20, #224]",
            "stp q16, q17, [x20, #256]",
            "stp q18, q19, [x20, #288]",
            "stp q20, q21, [x20, #320]",
            "stp q22, q23, [x20, #352]",
            "stp q24, q25, [x20, #384]",
            "stp q26, q27, [x20, #416]",
            "stp q28, q29, [x20, #448]",
            "stp q30, q31, [x20, #480]",
            in("x21") load.0.as_ptr(),
            in("x20") store.0.as_mut_ptr(),
            inout("x0") r[0], inout("x1") r[1], inout("x2") r[2], inout("x3") r[3],
            inout("x4") r[4], inout("x5") r[5], inout("x6") r[6], inout("x7") r[7],
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
            out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
            out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
            out("v30") _, out("v31") _,
            options(nostack)
        );
    }
    r
}

/// The virtual counter, after an `isb` so that earlier instructions are done.
#[inline(always)]
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading CNTVCT_EL0 (always allowed at EL1) has no side effect.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// CNTFRQ_EL0: counter ticks per second.
pub fn counter_frequency() -> u64 {
    let v: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effect.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Issues `hvc #0` with x0..x7 = `regs` and returns x0..x7, without catching a fault (for the
/// benchmark, where the call's own cost is what is measured, and where `hvc` is known to work).
#[inline(always)]
pub fn hvc_raw(regs: [u64; 8]) -> [u64; 8] {
    let mut r = regs;
    // SAFETY: an SMCCC call; the callee may write x0..x17, all declared as outputs or clobbers.
    unsafe {
        asm!("hvc #0",
            inout("x0") r[0], inout("x1") r[1], inout("x2") r[2], inout("x3") r[3],
            inout("x4") r[4], inout("x5") r[5], inout("x6") r[6], inout("x7") r[7],
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
            out("x14") _, out("x15") _, out("x16") _, out("x17") _, options(nostack))
    };
    r
}
