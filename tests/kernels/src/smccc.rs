//! SMCCC calls: Verso's hypercalls (`hvc #0`) and PSCI (through the conduit the DTB names).
//!
//! Every call is made with a fault expectation armed: when nothing implements `hvc` or `smc`
//! (a kernel booted bare at EL1 on QEMU without EL2/EL3), the instruction is UNDEFINED and the
//! call reports that as an error instead of killing the suite.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::exception::{expect_fault, Fault};

/// SMCCC NOT_SUPPORTED.
pub const NOT_SUPPORTED: u64 = -1i64 as u64;

/// SMCCC_VERSION.
pub const SMCCC_VERSION: u64 = 0x8000_0000;
/// SMCCC_ARCH_FEATURES (x1 = function ID).
pub const SMCCC_ARCH_FEATURES: u64 = 0x8000_0001;
/// Vendor-specific hypervisor service call UID.
pub const VENDOR_HYP_CALL_UID: u64 = 0x8600_ff01;
/// Verso: ABI version and implemented-call bitmap.
pub const VERSO_ABI_VERSION: u64 = 0xc600_8000;
/// Verso: PA and checksums of the hyp's canary page.
pub const VERSO_HYP_CANARY: u64 = 0xc600_8001;

/// PSCI function IDs (SMC32 unless the name says 64).
pub mod psci {
    /// PSCI_VERSION.
    pub const VERSION: u64 = 0x8400_0000;
    /// CPU_OFF.
    pub const CPU_OFF: u64 = 0x8400_0002;
    /// CPU_ON, SMC64.
    pub const CPU_ON64: u64 = 0xc400_0003;
    /// AFFINITY_INFO, SMC64.
    pub const AFFINITY_INFO64: u64 = 0xc400_0004;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u64 = 0x8400_0008;
    /// PSCI_FEATURES.
    pub const FEATURES: u64 = 0x8400_000a;

    /// SUCCESS.
    pub const SUCCESS: i64 = 0;
    /// NOT_SUPPORTED.
    pub const NOT_SUPPORTED: i64 = -1;
    /// INVALID_PARAMETERS.
    pub const INVALID_PARAMETERS: i64 = -2;
    /// ALREADY_ON.
    pub const ALREADY_ON: i64 = -4;
    /// AFFINITY_INFO: the CPU is on.
    pub const AFFINITY_ON: i64 = 0;
    /// AFFINITY_INFO: the CPU is off.
    pub const AFFINITY_OFF: i64 = 1;
}

/// x0..x3 after a call.
pub type Regs = [u64; 4];

/// Issues `hvc #0` with x0..x3 = `args`; x4..x17 are declared clobbered (SMCCC 1.0 allows it).
///
/// # Errors
/// The fault raised if `hvc` is not implemented (nothing at EL2).
pub fn hvc(args: Regs) -> Result<Regs, Fault> {
    let mut r = args;
    let fault = expect_fault(|| {
        // SAFETY: an SMCCC call; the callee may only write x0..x17, all declared as outputs or
        // clobbers. An UNDEFINED `hvc` is caught by the armed expectation.
        unsafe {
            asm!("hvc #0",
                inout("x0") r[0], inout("x1") r[1], inout("x2") r[2], inout("x3") r[3],
                out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
                out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
                out("x15") _, out("x16") _, out("x17") _, options(nostack))
        };
    });
    fault.map_or(Ok(r), Err)
}

/// Issues `smc #0` with x0..x3 = `args`.
///
/// # Errors
/// The fault raised if `smc` is not implemented (nothing at EL2 or EL3).
pub fn smc(args: Regs) -> Result<Regs, Fault> {
    let mut r = args;
    let fault = expect_fault(|| {
        // SAFETY: as in `hvc`.
        unsafe {
            asm!("smc #0",
                inout("x0") r[0], inout("x1") r[1], inout("x2") r[2], inout("x3") r[3],
                out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _, out("x9") _,
                out("x10") _, out("x11") _, out("x12") _, out("x13") _, out("x14") _,
                out("x15") _, out("x16") _, out("x17") _, options(nostack))
        };
    });
    fault.map_or(Ok(r), Err)
}

static PSCI_USES_HVC: AtomicBool = AtomicBool::new(false);

/// Selects the PSCI conduit from the DTB's `/psci` `method` ("smc" under Verso, "hvc" on bare
/// QEMU without EL2/EL3), as Linux does.
pub fn set_psci_conduit_hvc(hvc: bool) {
    PSCI_USES_HVC.store(hvc, Ordering::SeqCst);
}

/// The PSCI conduit's name.
pub fn psci_conduit() -> &'static str {
    if PSCI_USES_HVC.load(Ordering::SeqCst) {
        "hvc"
    } else {
        "smc"
    }
}

/// Makes a PSCI call through the conduit; returns x0 as a signed PSCI status or value.
///
/// # Errors
/// The fault raised if the conduit instruction is not implemented.
pub fn psci_call(function: u64, a1: u64, a2: u64, a3: u64) -> Result<i64, Fault> {
    let args = [function, a1, a2, a3];
    let r = if PSCI_USES_HVC.load(Ordering::SeqCst) {
        hvc(args)?
    } else {
        smc(args)?
    };
    Ok(r[0] as i64)
}

/// Ends the machine through PSCI SYSTEM_OFF (QEMU exits with status 0).
pub fn system_off() -> ! {
    let _ = psci_call(psci::SYSTEM_OFF, 0, 0, 0);
    crate::println_raw!("PSCI SYSTEM_OFF returned; exiting through semihosting");
    crate::semihosting::exit(1)
}

/// What VERSO_HYP_CANARY reports: the PA of the hyp's canary page and its checksum now and at boot.
pub struct Canary {
    /// Physical address of the canary page (inside hyp memory).
    pub pa: u64,
    /// FNV-1a 64 checksum of the page now.
    pub now: u64,
    /// The checksum recorded at boot.
    pub at_boot: u64,
}

/// Asks the hyp for its canary page (VERSO_HYP_CANARY).
pub fn canary() -> Result<Canary, crate::harness::Failure> {
    let r = match hvc([VERSO_HYP_CANARY, 0, 0, 0]) {
        Ok(r) => r,
        Err(f) => crate::fail!("VERSO_HYP_CANARY: hvc faulted ({f})"),
    };
    crate::ensure!(r[0] == 0, "VERSO_HYP_CANARY returned x0={:#x}", r[0]);
    crate::ensure!(r[1] % 4096 == 0, "canary PA {:#x} not page aligned", r[1]);
    Ok(Canary {
        pa: r[1],
        now: r[2],
        at_boot: r[3],
    })
}

/// Fails unless the hyp's canary checksum still equals the boot-time one: hyp memory stayed
/// unchanged by `what`.
pub fn canary_unchanged(what: &str) -> crate::harness::TestResult {
    let c = canary()?;
    crate::ensure!(
        c.now == c.at_boot,
        "hyp memory changed by {what}: canary checksum now {:#x}, at boot {:#x}",
        c.now,
        c.at_boot
    );
    Ok(())
}
