//! Running a guest vCPU: the world switch (host EL1 state out, the vCPU's in, `ERET`, and back on
//! the first trap the hyp cannot finish itself) and the handling of guest traps at EL2.
//!
//! Switched eagerly on every `VCPU_RUN`: x0..x30, SP_EL0/EL1, ELR/SPSR_EL1, the EL1 system
//! registers of `verso::vcpu::sys`, V0..V31 + FPSR/FPCR, the virtual timer (CNTV_CTL/CVAL,
//! CNTVOFF), and the EL2 controls that differ between the worlds (HCR, VTTBR, CPTR, MDCR,
//! CNTHCTL, VMPIDR). The host's state lives on the hyp stack for the length of the run.
//!
//! Guest traps handled without leaving to the host: the pKVM guest calls (`verso::guest_abi`),
//! ID register reads (sanitised values, `HCR_EL2.TID3`), debug/PMU/ACTLR accesses (RAZ/WI),
//! aborts the guest may not make (an abort is injected; the host hears of it as exit 7). Every
//! other trap the hyp does not understand becomes an UNDEF injected into the guest: nothing a
//! guest does can panic the hyp.

use verso::abi::exit;
use verso::addr::{Ipa, Vmid};
use verso::guest_abi::{handle_guest_call, GuestHvc};
use verso::mem::Ownership;
use verso::vcpu::{
    classify_abort, ec, fault_ipa, sys, AbortAction, LoadedVcpu, Pending, VcpuContext,
};

use crate::host::inject_sync;
use crate::host_stage2::PoolTables;
use crate::platform::El2Platform;
use crate::sysreg::{isb, read_sysreg, write_sysreg};

extern "C" {
    fn guest_enter(ctx: *mut VcpuContext) -> u64;
    fn fp_save(fp: *mut verso::vcpu::FpState);
    fn fp_restore(fp: *const verso::vcpu::FpState);
}

/// HCR_EL2 for a protected guest (Linux's `HCR_GUEST_FLAGS`): stage 2 on, every physical
/// interrupt to EL2, trap SMC, WFI/WFE, set/way ops, ACTLR, IMP-DEF and LOR registers, ID
/// registers (TID3), PTW faults, broadcast maintenance, AArch64 EL1. No PAuth (API/APK = 0: the
/// keys are EL1 registers the hyp does not switch), no MTE, no FWB.
const HCR_GUEST: u64 = 0x8_807C_663F;

/// CPTR_EL2 for a guest: RES1 bits, and traps of SVE (TZ), SME (TSM) and trace (TTA); FP/SIMD
/// is switched eagerly so it is not trapped.
const CPTR_GUEST: u64 = (1 << 13) | (1 << 9) | 0xff | (1 << 8) | (1 << 12) | (1 << 20);

/// MDCR_EL2 bits for a guest: trap PMU (TPM, TPMCR) and debug (TDA, TDOSA, TDRA) registers.
const MDCR_GUEST_TRAPS: u64 = (1 << 6) | (1 << 5) | (1 << 9) | (1 << 10) | (1 << 11);

/// CNTHCTL_EL2 for a guest: the physical counter readable (EL1PCTEN), the physical timer trapped.
const CNTHCTL_GUEST: u64 = 0b01;

/// Reads (`save_sys`) and writes (`load_sys`) the EL1 registers by their `sys` index.
macro_rules! el1_registers {
    ($m:ident, $ctx:expr) => {
        $m!($ctx, sys::SCTLR, sctlr_el1);
        $m!($ctx, sys::CPACR, cpacr_el1);
        $m!($ctx, sys::TTBR0, ttbr0_el1);
        $m!($ctx, sys::TTBR1, ttbr1_el1);
        $m!($ctx, sys::TCR, tcr_el1);
        $m!($ctx, sys::ESR, esr_el1);
        $m!($ctx, sys::AFSR0, afsr0_el1);
        $m!($ctx, sys::AFSR1, afsr1_el1);
        $m!($ctx, sys::FAR, far_el1);
        $m!($ctx, sys::MAIR, mair_el1);
        $m!($ctx, sys::VBAR, vbar_el1);
        $m!($ctx, sys::CONTEXTIDR, contextidr_el1);
        $m!($ctx, sys::AMAIR, amair_el1);
        $m!($ctx, sys::CNTKCTL, cntkctl_el1);
        $m!($ctx, sys::PAR, par_el1);
        $m!($ctx, sys::TPIDR_EL1, tpidr_el1);
        $m!($ctx, sys::TPIDR_EL0, tpidr_el0);
        $m!($ctx, sys::TPIDRRO_EL0, tpidrro_el0);
        $m!($ctx, sys::MDSCR, mdscr_el1);
        $m!($ctx, sys::SP_EL1, sp_el1);
        $m!($ctx, sys::ELR_EL1, elr_el1);
        $m!($ctx, sys::SPSR_EL1, spsr_el1);
        $m!($ctx, sys::CNTV_CVAL, cntv_cval_el0);
        $m!($ctx, sys::CNTVOFF, cntvoff_el2);
        $m!($ctx, sys::CNTV_CTL, cntv_ctl_el0);
    };
}

macro_rules! save_one {
    ($ctx:expr, $idx:expr, $reg:tt) => {
        $ctx.sys[$idx] = read_sysreg!($reg)
    };
}

macro_rules! load_one {
    ($ctx:expr, $idx:expr, $reg:tt) => {
        write_sysreg!($reg, $ctx.sys[$idx])
    };
}

/// The EL2 controls of the world that is not running.
#[derive(Default)]
struct Controls {
    hcr: u64,
    vttbr: u64,
    cptr: u64,
    mdcr: u64,
    cnthctl: u64,
    vmpidr: u64,
    elr: u64,
    spsr: u64,
}

fn save_el1(ctx: &mut VcpuContext) {
    el1_registers!(save_one, ctx);
    ctx.sp_el0 = read_sysreg!(sp_el0);
    // SAFETY: FP/SIMD is not trapped at EL2 (CPTR_EL2.TFP = 0 in both worlds); fp_save only
    // stores into the FpState it is given.
    unsafe { fp_save(&mut ctx.fp) };
}

/// # Safety
/// Only while the hyp is between worlds: the values become the EL1 state the next ERET enters.
unsafe fn load_el1(ctx: &VcpuContext) {
    // SAFETY: EL1 registers do not affect the hyp's own (EL2) translation or execution.
    unsafe {
        el1_registers!(load_one, ctx);
        write_sysreg!(sp_el0, ctx.sp_el0);
        fp_restore(&ctx.fp);
    }
}

fn save_controls() -> Controls {
    Controls {
        hcr: read_sysreg!(hcr_el2),
        vttbr: read_sysreg!(vttbr_el2),
        cptr: read_sysreg!(cptr_el2),
        mdcr: read_sysreg!(mdcr_el2),
        cnthctl: read_sysreg!(cnthctl_el2),
        vmpidr: read_sysreg!(vmpidr_el2),
        elr: read_sysreg!(elr_el2),
        spsr: read_sysreg!(spsr_el2),
    }
}

/// # Safety
/// As [`load_el1`]: these configure the EL1&0 regime and its traps, never EL2's own.
unsafe fn load_controls(c: &Controls) {
    // SAFETY: forwarded from the caller.
    unsafe {
        write_sysreg!(cptr_el2, c.cptr);
        write_sysreg!(mdcr_el2, c.mdcr);
        write_sysreg!(cnthctl_el2, c.cnthctl);
        write_sysreg!(vmpidr_el2, c.vmpidr);
        write_sysreg!(vttbr_el2, c.vttbr);
        write_sysreg!(hcr_el2, c.hcr);
        write_sysreg!(elr_el2, c.elr);
        write_sysreg!(spsr_el2, c.spsr);
    }
    isb();
}

/// Run `vcpu` until an exit for the host; returns x1..x5 of the `VCPU_RUN` reply.
pub fn run(
    own: &Ownership<'static, PoolTables>,
    plat: &mut El2Platform,
    vcpu: &LoadedVcpu,
) -> [u64; 5] {
    // SAFETY: the context page is hyp-owned, mapped (the hyp's stage-1 maps all RAM), and
    // reserved to this vCPU, which this CPU loaded: nothing else accesses it during the run.
    let ctx = unsafe { &mut *(vcpu.ctx.raw() as *mut VcpuContext) };
    let vmid = Vmid((vcpu.vttbr >> 48) as u16);
    crate::platform::register_vttbr(vmid, vcpu.vttbr);

    let mut host = VcpuContext::default();
    save_el1(&mut host);
    let host_controls = save_controls();
    let guest_controls = Controls {
        hcr: HCR_GUEST,
        vttbr: vcpu.vttbr,
        cptr: CPTR_GUEST,
        mdcr: (host_controls.mdcr & 0x1f) | MDCR_GUEST_TRAPS,
        cnthctl: CNTHCTL_GUEST,
        vmpidr: (1 << 31) | (vcpu.index & 0xff),
        elr: ctx.pc,
        spsr: ctx.pstate,
    };
    // SAFETY: between worlds: the host's state is saved above and restored below before the
    // hyp returns to it.
    unsafe {
        load_el1(ctx);
        load_controls(&guest_controls);
    }
    let reply = loop {
        // SAFETY: every EL1 register, ELR/SPSR_EL2 and the EL2 controls are the guest's;
        // guest_enter saves the hyp's callee-saved registers and returns on the next trap.
        let kind = unsafe { guest_enter(ctx) };
        if let Some(reply) = handle_exit(own, plat, vcpu, ctx, kind) {
            break reply;
        }
    };
    ctx.pc = read_sysreg!(elr_el2);
    ctx.pstate = read_sysreg!(spsr_el2);
    save_el1(ctx);
    // SAFETY: back to the host's saved state.
    unsafe {
        load_el1(&host);
        load_controls(&host_controls);
    }
    reply
}

fn skip_instruction() {
    // SAFETY: moves only where the guest resumes.
    unsafe { write_sysreg!(elr_el2, read_sysreg!(elr_el2).wrapping_add(4)) };
}

fn rewind_instruction() {
    // SAFETY: as above.
    unsafe { write_sysreg!(elr_el2, read_sysreg!(elr_el2).wrapping_sub(4)) };
}

const ESR_IL: u64 = 1 << 25;

/// Inject an UNDEF (unknown reason) at the trapping instruction.
fn inject_undef() {
    inject_sync(ESR_IL | (ec::UNKNOWN << 26), None);
}

/// Inject a synchronous external abort for the guest's access (data or instruction).
fn inject_external_abort(esr_el2: u64) {
    let data = esr_el2 >> 26 == ec::DABT_LOW;
    let from_el0 = read_sysreg!(spsr_el2) & 0xf == 0;
    let class = match (data, from_el0) {
        (true, true) => ec::DABT_LOW,
        (true, false) => ec::DABT_CUR,
        (false, true) => ec::IABT_LOW,
        (false, false) => ec::IABT_CUR,
    };
    let wnr = if data { esr_el2 & (1 << 6) } else { 0 };
    inject_sync(
        (class << 26) | ESR_IL | wnr | 0b01_0000,
        Some(read_sysreg!(far_el2)),
    );
}

/// One trap from the guest: `None` to enter it again, or the reply for the host.
fn handle_exit(
    own: &Ownership<'static, PoolTables>,
    plat: &mut El2Platform,
    vcpu: &LoadedVcpu,
    ctx: &mut VcpuContext,
    kind: u64,
) -> Option<[u64; 5]> {
    if kind != 0 {
        // IRQ, FIQ or SError (HCR_EL2.IMO/FMO/AMO): the host handles it and runs us again.
        return Some([exit::IRQ, 0, 0, 0, 0]);
    }
    let esr = read_sysreg!(esr_el2);
    match esr >> 26 {
        ec::HVC64 | ec::SMC64 => {
            if esr >> 26 == ec::SMC64 {
                // A trapped SMC leaves ELR_EL2 at the SMC: resume after it, like an HVC.
                skip_instruction();
            }
            let mut regs = [ctx.x[0], ctx.x[1], ctx.x[2], ctx.x[3]];
            match handle_guest_call(own, plat, vcpu.handle, &mut regs) {
                GuestHvc::Resume => {
                    ctx.x[..4].copy_from_slice(&regs);
                    None
                }
                GuestHvc::Psci => {
                    ctx.pending = Pending {
                        kind: Pending::CALL,
                        ..Pending::default()
                    };
                    Some([
                        exit::PSCI,
                        ctx.x[0] & 0xffff_ffff,
                        ctx.x[1],
                        ctx.x[2],
                        ctx.x[3],
                    ])
                }
                GuestHvc::Host => {
                    ctx.pending = Pending {
                        kind: Pending::CALL,
                        ..Pending::default()
                    };
                    Some([exit::HVC, ctx.x[0], ctx.x[1], ctx.x[2], ctx.x[3]])
                }
                GuestHvc::NoMemory(ipa) => {
                    // Execute the call again once the host has donated the page.
                    rewind_instruction();
                    ctx.pending = Pending::default();
                    Some([exit::NO_MEMORY, ipa.raw(), esr, 0, 0])
                }
            }
        }
        ec::WFX => {
            skip_instruction();
            ctx.pending = Pending::default();
            Some([exit::WFX, 0, 0, 0, 0])
        }
        ec::DABT_LOW | ec::IABT_LOW => guest_abort(own, plat, vcpu, ctx, esr),
        ec::SYS64 => {
            system_register(ctx, esr);
            None
        }
        _ => {
            inject_undef();
            None
        }
    }
}

/// A guest stage-2 abort.
fn guest_abort(
    own: &Ownership<'static, PoolTables>,
    plat: &mut El2Platform,
    vcpu: &LoadedVcpu,
    ctx: &mut VcpuContext,
    esr: u64,
) -> Option<[u64; 5]> {
    let ipa = fault_ipa(read_sysreg!(hpfar_el2), read_sysreg!(far_el2));
    let lookup = own.guest_lookup(&*plat, vcpu.handle, Ipa(ipa.raw() & !0xfff));
    match classify_abort(esr, ipa, lookup) {
        AbortAction::Retry => None,
        AbortAction::NoMemory(page) => {
            ctx.pending = Pending::default();
            Some([exit::NO_MEMORY, page.raw(), esr, 0, 0])
        }
        AbortAction::Mmio {
            ipa,
            size,
            write,
            srt,
            flags,
        } => {
            let value = if write && srt < 31 {
                let v = ctx.x[srt as usize];
                if size == 8 {
                    v
                } else {
                    v & ((1u64 << (size * 8)) - 1)
                }
            } else {
                0
            };
            ctx.pending = Pending {
                kind: if write {
                    Pending::MMIO_WRITE
                } else {
                    Pending::MMIO_READ
                },
                srt,
                size,
                flags,
            };
            Some([exit::MMIO, ipa.raw(), size, u64::from(write), value])
        }
        AbortAction::Inject(ipa) => {
            inject_external_abort(esr);
            ctx.pending = Pending::default();
            log::info!(
                "guest {:#x}: abort injected at ipa {:#x} (esr {esr:#x})",
                vcpu.handle.0,
                ipa.raw()
            );
            Some([exit::ABORT_INJECTED, ipa.raw(), esr, 0, 0])
        }
    }
}

/// A trapped MSR/MRS (EC 0x18): ID registers read sanitised values, debug/PMU/ACTLR registers
/// are RAZ/WI, anything else is UNDEF.
fn system_register(ctx: &mut VcpuContext, esr: u64) {
    let op0 = (esr >> 20) & 3;
    let op2 = (esr >> 17) & 7;
    let op1 = (esr >> 14) & 7;
    let crn = (esr >> 10) & 0xf;
    let rt = ((esr >> 5) & 0x1f) as usize;
    let crm = (esr >> 1) & 0xf;
    let read = esr & 1 != 0;
    let value = if op0 == 3 && op1 == 0 && crn == 0 && (1..=7).contains(&crm) {
        if !read {
            return inject_undef();
        }
        id_register(crm, op2)
    } else if op0 == 2
        || (op0 == 3 && (crn == 9 || crn == 14))
        || (op0 == 3 && op1 == 0 && crn == 1 && crm == 0 && op2 == 1)
    {
        // Debug (op0 = 2), PMU (CRn 9, PMEV* in CRn 14) and ACTLR_EL1: RAZ/WI.
        0
    } else {
        return inject_undef();
    };
    if read && rt < 31 {
        ctx.x[rt] = value;
    }
    skip_instruction();
}

/// The value a guest reads from the ID register (op0 3, op1 0, CRn 0, `crm`, `op2`): the real
/// one without the features the guest does not get (SVE, SME, MTE, PAuth, AMU, MPAM, PMU,
/// statistical profiling, trace); AArch32 and unallocated ID registers read as zero.
fn id_register(crm: u64, op2: u64) -> u64 {
    let field = |shift: u32| !(0xfu64 << shift);
    match (crm, op2) {
        (4, 0) => read_sysreg!(id_aa64pfr0_el1) & field(32) & field(40) & field(44),
        (4, 1) => read_sysreg!(id_aa64pfr1_el1) & field(8) & field(24) & field(16),
        (5, 0) => read_sysreg!(id_aa64dfr0_el1) & field(8) & field(32) & field(4),
        (5, 1) => read_sysreg!(s3_0_c0_c5_1),
        (6, 0) => read_sysreg!(id_aa64isar0_el1),
        (6, 1) => read_sysreg!(id_aa64isar1_el1) & field(4) & field(8) & field(24) & field(28),
        (6, 2) => read_sysreg!(s3_0_c0_c6_2) & field(8) & field(12),
        (7, 0) => read_sysreg!(id_aa64mmfr0_el1),
        (7, 1) => read_sysreg!(id_aa64mmfr1_el1),
        (7, 2) => read_sysreg!(id_aa64mmfr2_el1),
        _ => 0,
    }
}
