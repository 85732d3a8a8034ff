//! CPUs: identity, secondary bring-up through PSCI CPU_ON, and jobs run on other CPUs.
//!
//! A secondary enters `_secondary_entry` with x0 = context_id = its CPU index (its position in the
//! DTB's `/cpus`), gets its own stack and the identity MMU, then loops on its [`Mailbox`]: the boot
//! CPU posts a [`Job`], the secondary runs it and posts the `u64` result back. A job may also
//! power the CPU off ([`cpu_off_job`]), after which CPU_ON can start it again.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::boot::MAX_CPUS;
use crate::exception::Fault;
use crate::smccc::{psci, psci_call};

/// A function run on another CPU: gets that CPU's index, returns a value for the poster.
pub type Job = fn(usize) -> u64;

const EMPTY: usize = 0;
const POSTED: usize = 1;
const DONE: usize = 2;

/// One CPU's job slot, shared between the boot CPU (poster) and the secondary (runner).
struct Mailbox {
    state: AtomicUsize,
    job: AtomicUsize,
    result: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // used only as an array initialiser
const MAILBOX_INIT: Mailbox = Mailbox {
    state: AtomicUsize::new(EMPTY),
    job: AtomicUsize::new(0),
    result: AtomicU64::new(0),
};

static MAILBOXES: [Mailbox; MAX_CPUS] = [MAILBOX_INIT; MAX_CPUS];

#[allow(clippy::declare_interior_mutable_const)] // used only as an array initialiser
const MPIDR_INIT: AtomicU64 = AtomicU64::new(0);
static MPIDRS: [AtomicU64; MAX_CPUS] = [MPIDR_INIT; MAX_CPUS];
static CPU_COUNT: AtomicUsize = AtomicUsize::new(1);

/// Affinity fields of MPIDR_EL1 (Aff3, Aff2, Aff1, Aff0): what `/cpus/cpu@*/reg` and PSCI use.
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// Records the CPUs the DTB lists (their MPIDRs, in order; index = CPU index).
pub fn set_cpus(mpidrs: impl Iterator<Item = u64>) {
    let mut n = 0;
    for m in mpidrs.take(MAX_CPUS) {
        MPIDRS[n].store(m & MPIDR_AFFINITY_MASK, Ordering::SeqCst);
        n += 1;
    }
    if n == 0 {
        // No /cpus in the DTB: at least the boot CPU exists.
        MPIDRS[0].store(mpidr(), Ordering::SeqCst);
        n = 1;
    }
    CPU_COUNT.store(n, Ordering::SeqCst);
}

/// Number of CPUs the DTB lists.
pub fn count() -> usize {
    CPU_COUNT.load(Ordering::SeqCst)
}

/// The MPIDR affinity of CPU `cpu` (as listed in the DTB).
pub fn mpidr_of(cpu: usize) -> u64 {
    MPIDRS[cpu.min(MAX_CPUS - 1)].load(Ordering::SeqCst)
}

/// This CPU's index (kept in TPIDR_EL1 by the entry code).
pub fn this_cpu() -> usize {
    let v: u64;
    // SAFETY: reading TPIDR_EL1 has no side effect.
    unsafe { asm!("mrs {}, tpidr_el1", out(reg) v, options(nomem, nostack)) };
    (v as usize).min(MAX_CPUS - 1)
}

/// This CPU's MPIDR_EL1 affinity fields.
pub fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading MPIDR_EL1 has no side effect.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    v & MPIDR_AFFINITY_MASK
}

/// The current exception level (CurrentEL.EL).
pub fn current_el() -> u64 {
    let v: u64;
    // SAFETY: reading CurrentEL has no side effect.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) v, options(nomem, nostack)) };
    (v >> 2) & 3
}

fn sev() {
    // SAFETY: sending an event only wakes CPUs waiting in `wfe`.
    unsafe { asm!("dsb ish", "sev", options(nostack)) };
}

fn wfe() {
    // SAFETY: waiting for an event has no effect on memory.
    unsafe { asm!("wfe", options(nomem, nostack)) };
}

/// The virtual counter (always readable at EL1).
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading CNTVCT_EL0 has no side effect; the `isb` orders it after earlier code.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Counter ticks per second.
pub fn counter_frequency() -> u64 {
    let v: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effect.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v.max(1)
}

/// Polls `done` until it returns true or `timeout_ms` milliseconds pass; returns its last answer.
pub fn wait_until(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = counter() + counter_frequency() / 1000 * timeout_ms;
    loop {
        if done() {
            return true;
        }
        if counter() > deadline {
            return done();
        }
        core::hint::spin_loop();
    }
}

/// PA of the secondary entry point (identity mapped, so also its VA).
pub fn secondary_entry() -> u64 {
    extern "C" {
        fn _secondary_entry();
    }
    _secondary_entry as *const () as u64
}

/// Raw PSCI CPU_ON of `mpidr` at `entry` with `context_id`; returns the PSCI status.
///
/// # Errors
/// The fault raised if the PSCI conduit is not implemented.
pub fn psci_cpu_on(mpidr: u64, entry: u64, context_id: u64) -> Result<i64, Fault> {
    psci_call(psci::CPU_ON64, mpidr, entry, context_id)
}

/// Raw PSCI AFFINITY_INFO (level 0) of `mpidr`.
///
/// # Errors
/// The fault raised if the PSCI conduit is not implemented.
pub fn affinity_info(mpidr: u64) -> Result<i64, Fault> {
    psci_call(psci::AFFINITY_INFO64, mpidr, 0, 0)
}

/// Starts CPU `cpu` through PSCI CPU_ON and has it run `job` first; returns the PSCI status.
///
/// `cpu` must be off: the job is posted before the call, so a running CPU idling in its mailbox
/// loop could pick it up. To probe CPU_ON of an online CPU use [`psci_cpu_on`].
///
/// # Errors
/// The fault raised if the PSCI conduit is not implemented.
pub fn start(cpu: usize, job: Job) -> Result<i64, Fault> {
    let m = &MAILBOXES[cpu];
    m.job.store(job as usize, Ordering::SeqCst);
    m.state.store(POSTED, Ordering::SeqCst);
    let status = psci_cpu_on(mpidr_of(cpu), secondary_entry(), cpu as u64);
    if !matches!(status, Ok(psci::SUCCESS)) {
        m.state.store(EMPTY, Ordering::SeqCst);
    }
    status
}

/// Posts `job` to CPU `cpu`, which must be running and idle in its mailbox loop.
pub fn post(cpu: usize, job: Job) {
    let m = &MAILBOXES[cpu];
    m.job.store(job as usize, Ordering::SeqCst);
    m.state.store(POSTED, Ordering::SeqCst);
    sev();
}

/// Waits up to `timeout_ms` for CPU `cpu` to finish its job; returns the job's result.
pub fn wait_result(cpu: usize, timeout_ms: u64) -> Option<u64> {
    let m = &MAILBOXES[cpu];
    if wait_until(timeout_ms, || m.state.load(Ordering::SeqCst) == DONE) {
        let r = m.result.load(Ordering::SeqCst);
        m.state.store(EMPTY, Ordering::SeqCst);
        Some(r)
    } else {
        None
    }
}

/// Runs `job` on the (running, idle) CPU `cpu` and returns its result, or `None` on timeout.
pub fn run_on(cpu: usize, job: Job, timeout_ms: u64) -> Option<u64> {
    post(cpu, job);
    wait_result(cpu, timeout_ms)
}

/// Job: report CurrentEL.
pub fn current_el_job(_cpu: usize) -> u64 {
    current_el()
}

/// Job: report MPIDR_EL1's affinity.
pub fn mpidr_job(_cpu: usize) -> u64 {
    mpidr()
}

/// Job: power this CPU off through PSCI CPU_OFF. Reports 0 just before the call; if CPU_OFF
/// returns (it must not), the returned status replaces that 0 once the mailbox is free again.
pub fn cpu_off_job(cpu: usize) -> u64 {
    let m = &MAILBOXES[cpu];
    m.result.store(0, Ordering::SeqCst);
    m.state.store(DONE, Ordering::SeqCst);
    sev();
    let status = psci_call(psci::CPU_OFF, 0, 0, 0);
    crate::println!("CPU {cpu}: CPU_OFF returned {status:?}");
    wait_until(1000, || m.state.load(Ordering::SeqCst) == EMPTY);
    status.map_or(u64::MAX, |s| s as u64)
}

/// Rust entry of a secondary CPU (called by `_secondary_entry` with its stack set).
pub extern "C" fn secondary_main(cpu: usize) -> ! {
    let m = &MAILBOXES[cpu.min(MAX_CPUS - 1)];
    loop {
        while m.state.load(Ordering::SeqCst) != POSTED {
            wfe();
        }
        let job = m.job.load(Ordering::SeqCst);
        // SAFETY: `job` was stored from a `Job` function pointer by `start`/`post` (the only
        // writers) before they set POSTED, which we just observed.
        let job: Job = unsafe { core::mem::transmute::<usize, Job>(job) };
        let result = job(cpu);
        m.result.store(result, Ordering::SeqCst);
        m.state.store(DONE, Ordering::SeqCst);
        sev();
    }
}
