//! PSCI relay: the host's SMCs are trapped (HCR_EL2.TSC) and either passed to QEMU's PSCI
//! unchanged or, for CPU_ON, rerouted so that the target CPU first runs the hyp's own EL2
//! initialisation (stack, MMU, vectors, HCR/VTCR/VTTBR with the host stage-2) and only then
//! enters the host's entry point at EL1 with x0 = the host's context id (as pKVM's psci-relay).

use spin::Mutex;

use crate::percpu::{self, MAX_CPUS};

/// PSCI function IDs (SMC32 `0x8400_00nn`, SMC64 `0xC400_00nn`).
pub mod fid {
    /// PSCI_VERSION.
    pub const VERSION: u32 = 0x8400_0000;
    /// CPU_OFF.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// CPU_ON, SMC32.
    pub const CPU_ON_32: u32 = 0x8400_0003;
    /// CPU_ON, SMC64.
    pub const CPU_ON_64: u32 = 0xC400_0003;
    /// AFFINITY_INFO, SMC32.
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    /// AFFINITY_INFO, SMC64.
    pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
    /// MIGRATE_INFO_TYPE.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// SYSTEM_RESET.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// PSCI_FEATURES.
    pub const FEATURES: u32 = 0x8400_000A;
}

/// PSCI return codes used by the relay itself.
const NOT_SUPPORTED: i64 = -1;
const INVALID_PARAMETERS: i64 = -2;
const ALREADY_ON: i64 = -4;

/// Calls passed to QEMU unchanged (their arguments carry no address the hyp must translate).
const PASSED_THROUGH: [u32; 8] = [
    fid::VERSION,
    fid::CPU_OFF,
    fid::AFFINITY_INFO_32,
    fid::AFFINITY_INFO_64,
    fid::MIGRATE_INFO_TYPE,
    fid::SYSTEM_OFF,
    fid::SYSTEM_RESET,
    fid::FEATURES,
];

/// Where a CPU started by the host's CPU_ON goes once the hyp has initialised it.
#[derive(Clone, Copy)]
pub struct HostBoot {
    /// The host's entry point (EL1, MMU off).
    pub entry: u64,
    /// The host's context id, passed in x0.
    pub context: u64,
}

/// Per target CPU: the host's entry while a CPU_ON is in flight (`Some` until the target takes it).
static PENDING: [Mutex<Option<HostBoot>>; MAX_CPUS] = [const { Mutex::new(None) }; MAX_CPUS];

extern "C" {
    fn secondary_entry();
}

/// Issues an SMC to the firmware (QEMU's PSCI) from EL2.
fn smc(function: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let r0;
    // SAFETY: a PSCI call to QEMU's firmware emulation; it changes no hyp memory. Registers the
    // callee may corrupt (SMCCC 1.0 allowed x4..x17) are declared clobbered.
    unsafe {
        core::arch::asm!("smc #0",
            inout("x0") function => r0, inout("x1") a1 => _, inout("x2") a2 => _,
            inout("x3") a3 => _, out("x4") _, out("x5") _, out("x6") _, out("x7") _,
            out("x8") _, out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
            out("x14") _, out("x15") _, out("x16") _, out("x17") _, options(nostack));
    }
    r0
}

/// Handles one trapped host SMC; `regs` are the host's x0..x3, x0 receives the result.
pub fn handle_host_smc(regs: &mut [u64]) {
    let function = regs[0] as u32;
    let result = match function {
        fid::CPU_ON_32 | fid::CPU_ON_64 => {
            let width = if function == fid::CPU_ON_32 {
                u64::from(u32::MAX)
            } else {
                u64::MAX
            };
            cpu_on(regs[1] & width, regs[2] & width, regs[3] & width)
        }
        fid::FEATURES => {
            let queried = regs[1] as u32;
            if PASSED_THROUGH.contains(&queried)
                || queried == fid::CPU_ON_32
                || queried == fid::CPU_ON_64
            {
                smc(regs[0], regs[1], 0, 0) as i64
            } else {
                NOT_SUPPORTED
            }
        }
        f if PASSED_THROUGH.contains(&f) => smc(regs[0], regs[1], regs[2], regs[3]) as i64,
        _ => NOT_SUPPORTED,
    };
    regs[0] = result as u64;
}

fn cpu_on(target_mpidr: u64, entry: u64, context: u64) -> i64 {
    let Some(index) = percpu::index_of(target_mpidr) else {
        return INVALID_PARAMETERS;
    };
    let mut pending = PENDING[index].lock();
    if pending.is_some() {
        // Started by an earlier CPU_ON and not yet through the hyp's init: on, for QEMU too.
        return ALREADY_ON;
    }
    *pending = Some(HostBoot { entry, context });
    let r = smc(
        u64::from(fid::CPU_ON_64),
        target_mpidr,
        secondary_entry as *const () as u64,
        index as u64,
    ) as i64;
    if r != 0 {
        *pending = None;
    } else {
        log::debug!("psci: CPU_ON mpidr={target_mpidr:#x} (cpu{index}) entry={entry:#x}");
    }
    r
}

/// Takes the host entry stashed for CPU `index` by [`cpu_on`].
pub fn take_host_boot(index: usize) -> Option<HostBoot> {
    PENDING.get(index)?.lock().take()
}
