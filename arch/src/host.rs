//! The host's world: its EL1 configuration, its stage-2, and what happens when it traps to EL2
//! (hypercalls, PSCI, aborts on memory it does not own, anything else).

use core::sync::atomic::{AtomicU64, Ordering};

use verso::abi::{self, HostCallEnv, SmcccRegs, SMCCC_REGS};
use verso::addr::{PhysAddr, Vmid, PAGE_SIZE};

use verso::mem::Ownership;
use verso::vcpu::LoadedVcpu;
use verso::vm::VmHandle;

use crate::host_stage2::{PoolTables, OWNERSHIP};
use crate::platform::El2Platform;
use crate::sysreg::{dsb_ish, isb, read_sysreg, write_sysreg};

/// Tell the platform the VTTBR of a new VM's stage-2, so that its TLB maintenance switches to
/// exactly that context (a VMID may be reused by a later VM with other tables).
fn register_guest_stage2(handle: u64) {
    let Some(own) = OWNERSHIP.get() else { return };
    let handle = VmHandle(handle as u16);
    let vttbr = own.with_vms(|vms| {
        vms.get(handle)
            .ok()
            .map(|vm| vm.guest.lock().stage2.vttbr())
    });
    if let (Some(vttbr), Some(vmid)) = (vttbr, handle.vmid()) {
        crate::platform::register_vttbr(vmid, vttbr);
    }
}

/// The host's x0..x30 as saved by `host_sync_vector` (vectors.S), padded to 256 bytes.
#[repr(C)]
pub struct HostContext {
    /// x0..x30.
    pub x: [u64; 31],
    _pad: u64,
}

/// Size of [`HostContext`], used by vectors.S.
pub const CONTEXT_SIZE: usize = core::mem::size_of::<HostContext>();

/// VTCR_EL2 and VTTBR_EL2 of the host stage-2, set once by the primary CPU.
static HOST_VTCR: AtomicU64 = AtomicU64::new(0);
static HOST_VTTBR: AtomicU64 = AtomicU64::new(0);

/// Records the host stage-2 that every CPU installs (VMID 0).
pub fn set_host_stage2(vtcr: u64, vttbr: u64) {
    HOST_VTCR.store(vtcr, Ordering::Release);
    HOST_VTTBR.store(vttbr, Ordering::Release);
    crate::platform::register_vttbr(Vmid::HOST, vttbr);
}

mod hcr {
    pub const VM: u64 = 1 << 0;
    pub const TSC: u64 = 1 << 19;
    pub const RW: u64 = 1 << 31;
    pub const APK: u64 = 1 << 40;
    pub const API: u64 = 1 << 41;
    pub const ATA: u64 = 1 << 56;
}

/// SCTLR_EL1 with the MMU and caches off and every RES1 bit set.
const SCTLR_EL1_MMU_OFF: u64 = 0x30d0_0800;
/// CPACR_EL1.FPEN = 0b11: FP/SIMD usable at EL1 and EL0 (Linux expects no trap at entry).
const CPACR_EL1_FPEN: u64 = 3 << 20;

/// Configures this CPU's EL1&0 regime for the host: HCR_EL2 (RW, PAuth, TSC, stage-2 on), the
/// host stage-2 (VTCR/VTTBR, VMID 0), no FP/SVE/SME traps, the counters, the identity registers,
/// and EL1 in its architectural reset state with the MMU off.
pub fn init_el1_world() {
    let pfr0 = read_sysreg!(id_aa64pfr0_el1);
    let pfr1 = read_sysreg!(id_aa64pfr1_el1);
    let mmfr1 = read_sysreg!(id_aa64mmfr1_el1);
    let has_sve = (pfr0 >> 32) & 0xf != 0;
    let has_sme = (pfr1 >> 24) & 0xf != 0;
    let has_mte2 = (pfr1 >> 8) & 0xf >= 2;
    let has_gicv3_sysregs = (pfr0 >> 24) & 0xf != 0;
    let has_hcx = (mmfr1 >> 40) & 0xf != 0;

    let mut hcr = hcr::RW | hcr::API | hcr::APK | hcr::TSC | hcr::VM;
    if has_mte2 {
        hcr |= hcr::ATA;
    }
    // CPTR_EL2 (E2H = 0): RES1 bits 13, 9, 7:0; TZ (8) and TSM (12) are RES1 when SVE / SME are
    // absent, and cleared (no trap) when present so that the host can use them.
    let mut cptr: u64 = (1 << 13) | (1 << 9) | 0xff;
    if !has_sve {
        cptr |= 1 << 8;
    }
    if !has_sme {
        cptr |= 1 << 12;
    }
    // MDCR_EL2.HPMN = PMCR_EL0.N: all event counters belong to EL1/EL0.
    let hpmn = (read_sysreg!(pmcr_el0) >> 11) & 0x1f;

    // SAFETY: every register below configures the EL1&0 regime or traps from it; none changes
    // the hyp's own EL2 translation, stack or vectors. The host stage-2 was built (and published
    // with DSB) before any CPU reaches this point.
    unsafe {
        write_sysreg!(cptr_el2, cptr);
        isb();
        if has_sve {
            // ZCR_EL2.LEN: let EL1 use the largest vector length.
            write_sysreg!(s3_4_c1_c2_0, 0x1ffu64);
        }
        if has_hcx {
            // HCRX_EL2.MSCEn (bit 11): FEAT_MOPS instructions usable at EL1/EL0 as on bare metal.
            write_sysreg!(s3_4_c1_c2_2, 1u64 << 11);
        }
        if has_gicv3_sysregs {
            // ICC_SRE_EL2: SRE and Enable, so EL1 may use the GICv3 system registers.
            let sre = read_sysreg!(s3_4_c12_c9_5);
            write_sysreg!(s3_4_c12_c9_5, sre | 0b1001);
        }
        write_sysreg!(mdcr_el2, hpmn);
        write_sysreg!(cnthctl_el2, 0b11u64);
        write_sysreg!(cntvoff_el2, 0u64);
        write_sysreg!(vpidr_el2, read_sysreg!(midr_el1));
        write_sysreg!(vmpidr_el2, read_sysreg!(mpidr_el1));
        write_sysreg!(sctlr_el1, SCTLR_EL1_MMU_OFF);
        write_sysreg!(cpacr_el1, CPACR_EL1_FPEN);
        write_sysreg!(vtcr_el2, HOST_VTCR.load(Ordering::Acquire));
        write_sysreg!(vttbr_el2, HOST_VTTBR.load(Ordering::Acquire));
        write_sysreg!(hcr_el2, hcr);
        isb();
        // TLBs may cache HCR_EL2 bits and stale stage-1-only entries: start clean.
        core::arch::asm!("tlbi vmalls12e1", options(nostack));
        dsb_ish();
        isb();
    }
}

extern "C" {
    fn enter_host(x0: u64, entry: u64, stack_top: u64) -> !;
}

/// Leaves EL2 for the host at EL1h (DAIF masked, MMU off) at `entry` with x0 = `x0`, resetting
/// this CPU's hyp stack to `stack_top`.
pub fn enter(x0: u64, entry: u64, stack_top: u64) -> ! {
    // SAFETY: `enter_host` (vectors.S) only writes ELR/SPSR/SP and the GPRs, then ERETs; nothing
    // on the current stack is needed afterwards, so discarding it is sound.
    unsafe { enter_host(x0, entry, stack_top) }
}

/// The canary page: a hyp page with a fixed pattern whose checksum a test can compare.
static CANARY_PAGE: AtomicU64 = AtomicU64::new(0);
static CANARY_SUM: AtomicU64 = AtomicU64::new(0);

/// Fills `page` (a pool page) with the canary pattern and records its checksum.
pub fn init_canary(page: PhysAddr) {
    let bytes = page_bytes(page);
    // SAFETY: `page` is a fresh pool page, mapped RW, used for nothing else.
    let bytes = unsafe { &mut *(bytes as *mut [u8]) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = b"VERSO-CANARY-PAGE"[i % 17] ^ (i >> 8) as u8;
    }
    CANARY_PAGE.store(page.raw(), Ordering::Release);
    CANARY_SUM.store(abi::fnv1a64(bytes), Ordering::Release);
}

fn page_bytes(page: PhysAddr) -> *const [u8] {
    core::ptr::slice_from_raw_parts(page.raw() as *const u8, PAGE_SIZE as usize)
}

/// What host-call dispatch gets from the EL2 runtime.
struct El2CallEnv {
    plat: El2Platform,
}

impl HostCallEnv for El2CallEnv {
    type Tables = PoolTables;
    type Plat = El2Platform;
    fn memory(&mut self) -> Option<(&Ownership<'static, PoolTables>, &mut El2Platform)> {
        OWNERSHIP.get().map(|o| (o, &mut self.plat))
    }
    fn run_vcpu(&mut self, vcpu: &LoadedVcpu) -> [u64; 5] {
        match OWNERSHIP.get() {
            Some(own) => crate::guest::run(own, &mut self.plat, vcpu),
            None => [0; 5],
        }
    }
    fn canary_page(&self) -> PhysAddr {
        PhysAddr(CANARY_PAGE.load(Ordering::Acquire))
    }
    fn canary_checksum_now(&self) -> u64 {
        let page = self.canary_page();
        if page.raw() == 0 {
            return 0;
        }
        // SAFETY: the canary page is a hyp pool page, mapped, never freed; reading it races only
        // with nothing (the hyp never writes it after boot; the host cannot reach it).
        abi::fnv1a64(unsafe { &*page_bytes(page) })
    }
    fn canary_checksum_at_boot(&self) -> u64 {
        CANARY_SUM.load(Ordering::Acquire)
    }
    fn dma_fault_read(&mut self) -> [u64; 3] {
        crate::smmu::read_fault()
    }
}

/// ESR_ELx exception classes the hyp handles.
mod ec {
    pub const UNKNOWN: u64 = 0x00;
    pub const HVC64: u64 = 0x16;
    pub const SMC64: u64 = 0x17;
    pub const IABT_LOW: u64 = 0x20;
    pub const IABT_CUR: u64 = 0x21;
    pub const DABT_LOW: u64 = 0x24;
    pub const DABT_CUR: u64 = 0x25;
}

const ESR_IL: u64 = 1 << 25;

// The SMCCC registers are a prefix of the saved ones (`handle_host_sync` borrows them in place).
const _: () = assert!(SMCCC_REGS <= 31);

/// Entry from vectors.S for every synchronous exception from the host.
#[no_mangle]
extern "C" fn handle_host_sync(ctx: &mut HostContext) {
    let esr = read_sysreg!(esr_el2);
    match esr >> 26 {
        ec::HVC64 => {
            // The call works on the saved registers in place: a copy in and out cost two
            // 144-byte memcpys (~130-190 instructions) on every host call.
            let function = ctx.x[0] as u32;
            let Some(regs): Option<&mut SmcccRegs> = ctx.x.first_chunk_mut() else {
                // Unreachable: 31 saved registers hold the 18 SMCCC ones (checked at compile
                // time below).
                return;
            };
            // Device faults are decoded at every hypercall, so none waits for an interrupt.
            crate::smmu::poll();
            if esr & 0xffff == 0 {
                let mut env = El2CallEnv { plat: El2Platform };
                abi::handle_host_call(regs, &mut env);
                if regs[0] == 0 && function == abi::fid::VM_CREATE {
                    register_guest_stage2(regs[1]);
                }
            } else {
                // SMCCC calls use HVC #0 only.
                regs[0] = abi::ret::NOT_SUPPORTED as u64;
            }
        }
        ec::SMC64 => {
            crate::psci::handle_host_smc(&mut ctx.x[..4]);
            // A trapped SMC leaves ELR_EL2 at the SMC itself.
            let elr = read_sysreg!(elr_el2);
            // SAFETY: skips the host's SMC instruction; affects only where the host resumes.
            unsafe { write_sysreg!(elr_el2, elr + 4) };
        }
        ec::DABT_LOW | ec::IABT_LOW => inject_abort(esr),
        other => {
            log::warn!(
                "host trap ec={other:#x} esr={esr:#x} elr={:#x}: injecting UNDEF",
                read_sysreg!(elr_el2)
            );
            inject_sync(ESR_IL | (ec::UNKNOWN << 26), None);
        }
    }
}

/// ESR ISS fault status code of a synchronous external abort, not on a table walk.
const FSC_SYNC_EXTERNAL_ABORT: u64 = 0b01_0000;

/// Host aborts injected so far (all CPUs), for rate-limiting their log lines.
static HOST_ABORTS: AtomicU64 = AtomicU64::new(0);

/// Reflects a stage-2 abort back into the host as a synchronous external abort taken at EL1.
fn inject_abort(esr_el2: u64) {
    let far = read_sysreg!(far_el2);
    let hpfar = read_sysreg!(hpfar_el2);
    let ipa = ((hpfar & 0x0fff_ffff_ffff_fff0) << 8) | (far & 0xfff);
    let is_data = esr_el2 >> 26 == ec::DABT_LOW;
    let from_el0 = read_sysreg!(spsr_el2) & 0xf == 0;
    let class = match (is_data, from_el0) {
        (true, true) => ec::DABT_LOW,
        (true, false) => ec::DABT_CUR,
        (false, true) => ec::IABT_LOW,
        (false, false) => ec::IABT_CUR,
    };
    // A synchronous external abort (FSC 0b010000), with the direction for data aborts and no ISV
    // syndrome (the host needs no emulation info). Not the stage-2 translation fault itself: the
    // host's own stage-1 entry for the address is valid, so an unmodified Linux would call a
    // translation fault spurious and retry the access forever; an external abort makes it send
    // SIGBUS to a process, or report the access, in the kernel (KVM injects the same for guests).
    let wnr = if is_data { esr_el2 & (1 << 6) } else { 0 };
    let esr_el1 = (class << 26) | ESR_IL | wnr | FSC_SYNC_EXTERNAL_ABORT;
    let n = HOST_ABORTS.fetch_add(1, Ordering::Relaxed);
    // Rate-limited: a host that keeps faulting must not drown the console (or the hyp's time).
    if n < 64 || n.is_power_of_two() {
        log::warn!(
            "host abort #{n}: ipa={ipa:#x} va={far:#x} esr={esr_el1:#x} elr={:#x} owner={}",
            read_sysreg!(elr_el2),
            owner_of(ipa)
        );
    }
    inject_sync(esr_el1, Some(far));
}

/// Who owns the page at `ipa` the host touched, decoded from its annotated host descriptor
/// (owner and, for a guest, the IPA there), for the abort's log line; `None` if not annotated
/// (e.g. a hole in the host's IPA space).
fn owner_of(ipa: u64) -> OwnerName {
    OwnerName(
        OWNERSHIP.get().and_then(|own| {
            own.inspect(|_, host, _| host.explain_fault(&El2Platform, PhysAddr(ipa)))
        }),
    )
}

/// An owner as the abort log line shows it: `hyp`, `guest 0x1000 at IPA 0x41000000`, `host`,
/// or `none` (no annotation: a hole in the host's IPA space).
struct OwnerName(Option<(verso::mem::Owner, Option<verso::addr::Ipa>)>);

impl core::fmt::Display for OwnerName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use verso::mem::Owner;
        match self.0 {
            None => f.write_str("none"),
            Some((Owner::Host, _)) => f.write_str("host"),
            Some((Owner::Hyp, _)) => f.write_str("hyp"),
            Some((Owner::Guest(h), Some(ipa))) => write!(f, "guest {:#x} at IPA {ipa}", h.0),
            Some((Owner::Guest(h), None)) => write!(f, "guest {:#x}", h.0),
        }
    }
}

/// Makes the host take a synchronous exception at EL1 with syndrome `esr_el1` (and `far`), as if
/// the faulting instruction had raised it there: ELR_EL1/SPSR_EL1 get the interrupted state, and
/// the host resumes at its own vector for the mode it was in.
pub(crate) fn inject_sync(esr_el1: u64, far: Option<u64>) {
    let elr = read_sysreg!(elr_el2);
    let spsr = read_sysreg!(spsr_el2);
    let vbar = read_sysreg!(vbar_el1);
    let offset = match spsr & 0xf {
        0b0100 => 0x000, // EL1t
        0b0101 => 0x200, // EL1h
        _ => 0x400,      // EL0 (AArch64)
    };
    // EL1h with DAIF masked; keep NZCV, DIT (24) and PAN (22) and set PAN if SCTLR_EL1.SPAN = 0.
    let mut new_spsr = (spsr & (0xf << 28 | 1 << 24 | 1 << 22)) | 0x3c5;
    if read_sysreg!(sctlr_el1) & (1 << 23) == 0 && (read_sysreg!(id_aa64mmfr1_el1) >> 20) & 0xf != 0
    {
        new_spsr |= 1 << 22;
    }
    // SAFETY: these registers describe only the host's EL1 state and where it resumes.
    unsafe {
        write_sysreg!(esr_el1, esr_el1);
        if let Some(far) = far {
            write_sysreg!(far_el1, far);
        }
        write_sysreg!(elr_el1, elr);
        write_sysreg!(spsr_el1, spsr);
        write_sysreg!(elr_el2, vbar + offset);
        write_sysreg!(spsr_el2, new_spsr);
    }
}
