//! The host-role suite: runs as Verso's host (EL1, VMID 0) on `-smp 4` and checks what an
//! untrusted host can and cannot do.
//!
//! Each negative test proves both halves of the rule: the access faults with the exact syndrome
//! the ABI promises (docs/abi.md: EC, WnR, translation DFSC, FAR = the address), *and* the hyp's
//! memory stayed unchanged (the canary checksum Verso reports now equals the one it recorded at
//! boot). Positive controls (host RAM, the UART) show the probes themselves work, so a "fault"
//! result means something. Booted bare on QEMU at EL1 (no hyp) the hyp-specific tests fail, which
//! is how they were shown to be able to fail.
#![no_std]
#![no_main]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use verso_test_kernels::exception::{
    probe_exec, probe_read_u32, probe_read_u64, probe_write_u64, Fault, EC_DATA_ABORT_SAME_EL,
    EC_INSN_ABORT_SAME_EL,
};
use verso_test_kernels::harness::{run_suite, Failure, Test, TestResult};
use verso_test_kernels::smccc::{self, canary, canary_unchanged, hvc, psci, psci_call, smc};
use verso_test_kernels::{console, cpus, dtb, ensure, fail};

verso_test_kernels::entry!(main);

fn main() -> ! {
    run_suite("host", TESTS)
}

/// The hyp's reservation as the contract fixes it (docs/boot.md).
const HYP_BASE: u64 = 0x4020_0000;
const HYP_SIZE: u64 = 0x200_0000;
/// SMMUv3 registers on QEMU virt; removed from the host DTB, so the address is fixed here.
const SMMU_BASE: u64 = 0x0905_0000;
/// The word of bootargs qemu-run.sh passes to this suite, next to `verso.*` options.
const SUITE_BOOTARG: &str = "suite=host";
const CPUS_EXPECTED: usize = 4;
/// How long a secondary CPU gets to answer a job.
const JOB_TIMEOUT_MS: u64 = 2000;

static TESTS: &[Test] = &[
    Test {
        name: "boot_cpu_runs_at_el1",
        run: boot_cpu_runs_at_el1,
    },
    Test {
        name: "fp_simd_usable_at_el1",
        run: fp_simd_usable_at_el1,
    },
    Test {
        name: "all_cpus_start_at_el1_through_psci_cpu_on",
        run: all_cpus_start_at_el1,
    },
    Test {
        name: "psci_version_is_1_1",
        run: psci_version_is_1_1,
    },
    Test {
        name: "psci_features_answer_as_bare_qemu",
        run: psci_features_answer_as_bare_qemu,
    },
    Test {
        name: "psci_cpu_on_of_online_cpu_is_already_on",
        run: psci_cpu_on_online_is_already_on,
    },
    Test {
        name: "psci_cpu_on_of_unknown_mpidr_is_invalid",
        run: psci_cpu_on_unknown_mpidr_is_invalid,
    },
    Test {
        name: "psci_affinity_info_reports_online_cpus",
        run: psci_affinity_info_reports_online,
    },
    Test {
        name: "psci_cpu_off_then_cpu_on_restarts_cpu",
        run: psci_cpu_off_then_cpu_on,
    },
    Test {
        name: "smccc_version_is_1_1",
        run: smccc_version_is_1_1,
    },
    Test {
        name: "verso_abi_version_answers",
        run: verso_abi_version_answers,
    },
    Test {
        name: "vendor_hyp_uid_answers",
        run: vendor_hyp_uid_answers,
    },
    Test {
        name: "smccc_arch_features_lists_verso_calls",
        run: arch_features_lists_verso_calls,
    },
    Test {
        name: "unknown_hypercall_is_not_supported_and_preserves_args",
        run: unknown_hypercall,
    },
    Test {
        name: "unknown_smc_is_not_supported",
        run: unknown_smc_is_not_supported,
    },
    Test {
        name: "host_dtb_reserves_hyp_memory_no_map",
        run: host_dtb_reserves_hyp_memory,
    },
    Test {
        name: "host_dtb_hides_the_smmu",
        run: host_dtb_hides_the_smmu,
    },
    Test {
        name: "bootargs_reach_host_without_verso_words",
        run: bootargs_without_verso_words,
    },
    Test {
        name: "host_ram_is_readable_and_writable",
        run: host_ram_is_readable_and_writable,
    },
    Test {
        name: "uart_is_reachable",
        run: uart_is_reachable,
    },
    Test {
        name: "reading_hyp_memory_aborts_and_leaves_it_unchanged",
        run: reading_hyp_memory_aborts,
    },
    Test {
        name: "writing_hyp_memory_aborts_and_leaves_it_unchanged",
        run: writing_hyp_memory_aborts,
    },
    Test {
        name: "executing_hyp_memory_aborts",
        run: executing_hyp_memory_aborts,
    },
    Test {
        name: "smmu_registers_are_unreachable",
        run: smmu_registers_are_unreachable,
    },
    Test {
        name: "secondary_cpu_gets_the_injected_abort_too",
        run: secondary_gets_injected_abort,
    },
];

// ---------------------------------------------------------------------------------------------
// Helpers

/// The hyp region the host DTB reserves (`/reserved-memory/hyp@...`).
fn hyp_region() -> Result<(u64, u64), Failure> {
    let Some(fdt) = dtb() else { fail!("no DTB") };
    match fdt.reserved_memory().find(|r| r.name.starts_with("hyp@")) {
        Some(r) => Ok((r.base, r.size)),
        None => fail!("host DTB has no /reserved-memory/hyp@* node"),
    }
}

/// Checks a fault against the injected-abort contract: `ec`, IL = 1, a synchronous external
/// abort, WnR = `write` (data aborts), FAR = `addr`.
fn check_abort(fault: Fault, ec: u64, write: bool, addr: u64) -> TestResult {
    ensure!(fault.ec() == ec, "expected EC {ec:#x}, got {fault}");
    ensure!(fault.il(), "IL clear: {fault}");
    ensure!(
        fault.is_external_abort(),
        "expected a synchronous external abort (0b010000), got {fault}"
    );
    if ec == EC_DATA_ABORT_SAME_EL {
        ensure!(
            fault.wnr() == write,
            "WnR should be {}: {fault}",
            write as u8
        );
    }
    ensure!(fault.far == addr, "FAR should be {addr:#x}: {fault}");
    Ok(())
}

fn expect_read_abort(addr: u64) -> TestResult {
    match probe_read_u64(addr) {
        Ok(v) => fail!("read of {addr:#x} succeeded (value {v:#x})"),
        Err(f) => check_abort(f, EC_DATA_ABORT_SAME_EL, false, addr),
    }
}

fn expect_write_abort(addr: u64, value: u64) -> TestResult {
    // SAFETY: `addr` is in the hyp's memory, which the host must not reach; if the store lands,
    // that is the protection failure this test reports (and the canary check will see it).
    match unsafe { probe_write_u64(addr, value) } {
        Ok(()) => fail!("write to {addr:#x} succeeded"),
        Err(f) => check_abort(f, EC_DATA_ABORT_SAME_EL, true, addr),
    }
}

fn psci(function: u64, a1: u64, a2: u64, a3: u64) -> Result<i64, Failure> {
    match psci_call(function, a1, a2, a3) {
        Ok(v) => Ok(v),
        Err(f) => fail!(
            "PSCI call {function:#x} via {} faulted: {f}",
            smccc::psci_conduit()
        ),
    }
}

fn need_cpus() -> TestResult {
    let n = cpus::count();
    ensure!(
        n == CPUS_EXPECTED,
        "DTB lists {n} CPUs, this suite needs {CPUS_EXPECTED} (-smp 4)"
    );
    Ok(())
}

fn is_online(cpu: usize) -> Result<bool, Failure> {
    Ok(psci(psci::AFFINITY_INFO64, cpus::mpidr_of(cpu), 0, 0)? == psci::AFFINITY_ON)
}

// ---------------------------------------------------------------------------------------------
// Boot state

fn boot_cpu_runs_at_el1() -> TestResult {
    let el = cpus::current_el();
    ensure!(el == 1, "CurrentEL = {el}");
    Ok(())
}

fn fp_simd_usable_at_el1() -> TestResult {
    let sum: f64;
    // SAFETY: pure register arithmetic on V registers; traps if CPACR_EL1.FPEN was left clear,
    // which the unexpected-exception path would report.
    unsafe {
        asm!(
            "fmov d1, #1.5",
            "fmov d2, #2.25",
            "fadd {s:d}, d1, d2",
            s = out(vreg) sum, out("v1") _, out("v2") _, options(nomem, nostack)
        )
    };
    ensure!(sum == 3.75, "1.5 + 2.25 = {sum}");
    Ok(())
}

fn all_cpus_start_at_el1() -> TestResult {
    need_cpus()?;
    for cpu in 1..cpus::count() {
        let mpidr = cpus::mpidr_of(cpu);
        match cpus::start(cpu, cpus::current_el_job) {
            Ok(0) => {}
            Ok(status) => fail!("CPU_ON of CPU {cpu} (mpidr {mpidr:#x}) returned {status}"),
            Err(f) => fail!("CPU_ON of CPU {cpu} faulted: {f}"),
        }
        match cpus::wait_result(cpu, JOB_TIMEOUT_MS) {
            Some(1) => {}
            Some(el) => fail!("CPU {cpu} reports CurrentEL = {el}"),
            None => fail!("CPU {cpu} never reported after CPU_ON"),
        }
        match cpus::run_on(cpu, cpus::mpidr_job, JOB_TIMEOUT_MS) {
            Some(m) if m == mpidr => {}
            Some(m) => fail!("CPU {cpu} reports MPIDR {m:#x}, DTB says {mpidr:#x}"),
            None => fail!("CPU {cpu} did not run its second job"),
        }
        console::print_line(format_args!("  CPU {cpu} (mpidr {mpidr:#x}) online at EL1"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// PSCI (relayed by the hyp; the answers must be bare QEMU's)

fn psci_version_is_1_1() -> TestResult {
    let v = psci(psci::VERSION, 0, 0, 0)?;
    ensure!(v == 0x1_0001, "PSCI_VERSION = {v:#x}, QEMU answers 0x10001");
    Ok(())
}

fn psci_features_answer_as_bare_qemu() -> TestResult {
    for (function, want) in [
        (psci::CPU_ON64, 0),
        (psci::VERSION, 0),
        (psci::CPU_OFF, 0),
        (psci::AFFINITY_INFO64, 0),
        (psci::SYSTEM_OFF, 0),
        (0x8400_00ff, psci::NOT_SUPPORTED),
        (0xc600_8000, psci::NOT_SUPPORTED),
    ] {
        let got = psci(psci::FEATURES, function, 0, 0)?;
        ensure!(
            got == want,
            "PSCI_FEATURES({function:#x}) = {got}, QEMU answers {want}"
        );
    }
    Ok(())
}

fn psci_cpu_on_online_is_already_on() -> TestResult {
    need_cpus()?;
    ensure!(is_online(1)?, "precondition: CPU 1 is not online");
    let status = psci(
        psci::CPU_ON64,
        cpus::mpidr_of(1),
        cpus::secondary_entry(),
        1,
    )?;
    ensure!(
        status == psci::ALREADY_ON,
        "CPU_ON of online CPU 1 = {status}, expected -4 (ALREADY_ON)"
    );
    // CPU 1 must not have been disturbed: it still runs jobs.
    ensure!(
        cpus::run_on(1, cpus::current_el_job, JOB_TIMEOUT_MS) == Some(1),
        "CPU 1 stopped answering"
    );
    Ok(())
}

fn psci_cpu_on_unknown_mpidr_is_invalid() -> TestResult {
    let bogus = 0xff_00ff_00ff; // Aff3 = 0xff, Aff0 = 0xff: no such CPU on virt
    let status = psci(psci::CPU_ON64, bogus, cpus::secondary_entry(), 0)?;
    ensure!(
        status == psci::INVALID_PARAMETERS,
        "CPU_ON of MPIDR {bogus:#x} = {status}, expected -2"
    );
    Ok(())
}

fn psci_affinity_info_reports_online() -> TestResult {
    need_cpus()?;
    for cpu in 0..cpus::count() {
        let info = psci(psci::AFFINITY_INFO64, cpus::mpidr_of(cpu), 0, 0)?;
        ensure!(
            info == psci::AFFINITY_ON,
            "AFFINITY_INFO(CPU {cpu}) = {info}, expected 0 (ON)"
        );
    }
    let bogus = psci(psci::AFFINITY_INFO64, 0xff_00ff_00ff, 0, 0)?;
    ensure!(
        bogus == psci::INVALID_PARAMETERS,
        "AFFINITY_INFO(bogus MPIDR) = {bogus}, expected -2"
    );
    Ok(())
}

fn psci_cpu_off_then_cpu_on() -> TestResult {
    need_cpus()?;
    let cpu = CPUS_EXPECTED - 1;
    let mpidr = cpus::mpidr_of(cpu);
    ensure!(is_online(cpu)?, "precondition: CPU {cpu} is not online");
    ensure!(
        cpus::run_on(cpu, cpus::cpu_off_job, JOB_TIMEOUT_MS) == Some(0),
        "CPU {cpu} did not take the CPU_OFF job"
    );
    let mut last = 0;
    let off = cpus::wait_until(JOB_TIMEOUT_MS, || {
        last = psci_call(psci::AFFINITY_INFO64, mpidr, 0, 0).unwrap_or(i64::MIN);
        last == psci::AFFINITY_OFF
    });
    ensure!(
        off,
        "after CPU_OFF, AFFINITY_INFO(CPU {cpu}) = {last}, expected 1 (OFF)"
    );
    match cpus::start(cpu, cpus::current_el_job) {
        Ok(0) => {}
        Ok(status) => fail!("second CPU_ON of CPU {cpu} returned {status}"),
        Err(f) => fail!("second CPU_ON faulted: {f}"),
    }
    match cpus::wait_result(cpu, JOB_TIMEOUT_MS) {
        Some(1) => {}
        Some(el) => fail!("restarted CPU {cpu} reports CurrentEL = {el}"),
        None => fail!("restarted CPU {cpu} never reported"),
    }
    ensure!(is_online(cpu)?, "restarted CPU {cpu} not reported ON");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hypercalls

fn call(args: [u64; 4]) -> Result<[u64; 4], Failure> {
    match hvc(args) {
        Ok(r) => Ok(r),
        Err(f) => fail!("hvc {:#x} faulted: {f}", args[0]),
    }
}

fn smccc_version_is_1_1() -> TestResult {
    let r = call([smccc::SMCCC_VERSION, 0, 0, 0])?;
    ensure!(r[0] == 0x1_0001, "SMCCC_VERSION = {:#x}", r[0]);
    Ok(())
}

fn verso_abi_version_answers() -> TestResult {
    let r = call([smccc::VERSO_ABI_VERSION, 0, 0, 0])?;
    ensure!(r[0] == 0, "VERSO_ABI_VERSION x0 = {:#x}", r[0]);
    ensure!(
        r[1] == 0x0000_0001,
        "ABI version {:#x}, expected 0x1 (0.1)",
        r[1]
    );
    ensure!(
        r[2] & 0b11 == 0b11,
        "call bitmap {:#x} lacks ABI_VERSION/HYP_CANARY",
        r[2]
    );
    Ok(())
}

fn vendor_hyp_uid_answers() -> TestResult {
    let r = call([smccc::VENDOR_HYP_CALL_UID, 0, 0, 0])?;
    ensure!(r[0] as u32 != u32::MAX, "CALL_UID returned NOT_SUPPORTED");
    ensure!(
        r.iter().all(|w| *w <= u64::from(u32::MAX)),
        "UID words exceed 32 bits: {r:#x?}"
    );
    ensure!(r.iter().any(|w| *w != 0), "UID is all zero");
    Ok(())
}

fn arch_features_lists_verso_calls() -> TestResult {
    for (id, want) in [
        (smccc::VERSO_ABI_VERSION, 0),
        (smccc::VERSO_HYP_CANARY, 0),
        (0xc600_80ff, smccc::NOT_SUPPORTED),
    ] {
        let r = call([smccc::SMCCC_ARCH_FEATURES, id, 0, 0])?;
        ensure!(
            r[0] == want,
            "ARCH_FEATURES({id:#x}) = {:#x}, expected {want:#x}",
            r[0]
        );
    }
    Ok(())
}

fn unknown_hypercall() -> TestResult {
    let args = [
        0x1111_2222_3333_4444,
        0x5555_6666_7777_8888,
        0x9999_aaaa_bbbb_cccc,
    ];
    for id in [0xc600_80ff, 0x8600_1234, 0xc5ff_ff00, 0xc300_0000] {
        let r = call([id, args[0], args[1], args[2]])?;
        ensure!(
            r[0] == smccc::NOT_SUPPORTED,
            "hvc {id:#x}: x0 = {:#x}, expected -1",
            r[0]
        );
        ensure!(
            r[1..] == args,
            "hvc {id:#x} changed x1..x3: {:#x?}",
            &r[1..]
        );
    }
    Ok(())
}

fn unknown_smc_is_not_supported() -> TestResult {
    for id in [0xc200_0000, 0x8400_00ff, 0xc600_8000] {
        match smc([id, 1, 2, 3]) {
            Ok(r) => ensure!(
                r[0] == smccc::NOT_SUPPORTED,
                "smc {id:#x}: x0 = {:#x}, expected -1",
                r[0]
            ),
            Err(f) => fail!("smc {id:#x} faulted: {f}"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The DTB the host got

fn host_dtb_reserves_hyp_memory() -> TestResult {
    let Some(fdt) = dtb() else { fail!("no DTB") };
    let Some(r) = fdt.reserved_memory().find(|r| r.name.starts_with("hyp@")) else {
        fail!("no /reserved-memory/hyp@* node")
    };
    ensure!(
        (r.base, r.size) == (HYP_BASE, HYP_SIZE),
        "{} reserves {:#x}+{:#x}, expected {HYP_BASE:#x}+{HYP_SIZE:#x}",
        r.name,
        r.base,
        r.size
    );
    ensure!(r.no_map, "{} lacks no-map", r.name);
    ensure!(
        fdt.memory()
            .any(|(b, s)| b <= r.base && r.base + r.size <= b + s),
        "the reserved range is not inside any /memory range"
    );
    Ok(())
}

fn host_dtb_hides_the_smmu() -> TestResult {
    let Some(fdt) = dtb() else { fail!("no DTB") };
    ensure!(
        !fdt.has_compatible("arm,smmu-v3"),
        "host DTB still has an arm,smmu-v3 node"
    );
    for node in fdt.nodes() {
        for prop in ["iommu-map", "iommu-map-mask", "iommus"] {
            ensure!(
                node.property(prop).is_none(),
                "node {} still has {prop}",
                node.name()
            );
        }
    }
    Ok(())
}

fn bootargs_without_verso_words() -> TestResult {
    let Some(fdt) = dtb() else { fail!("no DTB") };
    let Some(args) = fdt.bootargs() else {
        fail!("no /chosen/bootargs")
    };
    ensure!(
        args.split_ascii_whitespace().any(|w| w == SUITE_BOOTARG),
        "bootargs {args:?} lack the payload's own word {SUITE_BOOTARG:?}"
    );
    ensure!(
        !args
            .split_ascii_whitespace()
            .any(|w| w.starts_with("verso.")),
        "bootargs {args:?} still hold verso.* words"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What the host may touch (positive controls for the probes)

fn host_ram_is_readable_and_writable() -> TestResult {
    static WORD: AtomicU64 = AtomicU64::new(0x0123_4567_89ab_cdef);
    let Some(fdt) = dtb() else { fail!("no DTB") };
    let Some((base, size)) = fdt.memory().next() else {
        fail!("no /memory")
    };
    let last_word = base + size - 8;
    for addr in [WORD.as_ptr() as u64, last_word, base + size / 2] {
        let old = match probe_read_u64(addr) {
            Ok(v) => v,
            Err(f) => fail!("host RAM read at {addr:#x} faulted: {f}"),
        };
        let pattern = !old;
        // SAFETY: `addr` is host RAM this kernel owns: a static of ours, or the top/middle of RAM,
        // which nothing uses while the suite runs (the image, stacks and DTB sit far below); the
        // old value is written back.
        unsafe {
            if let Err(f) = probe_write_u64(addr, pattern) {
                fail!("host RAM write at {addr:#x} faulted: {f}");
            }
            let back = probe_read_u64(addr);
            let _ = probe_write_u64(addr, old);
            ensure!(
                back == Ok(pattern),
                "RAM at {addr:#x} read back {back:x?}, wrote {pattern:#x}"
            );
        }
    }
    Ok(())
}

fn uart_is_reachable() -> TestResult {
    let fr = console::base() + 0x18;
    match probe_read_u32(fr) {
        Ok(_) => Ok(()),
        Err(f) => fail!("UARTFR at {fr:#x} faulted: {f}"),
    }
}

// ---------------------------------------------------------------------------------------------
// What the host may not touch

fn reading_hyp_memory_aborts() -> TestResult {
    let (base, size) = hyp_region()?;
    let c = canary()?;
    ensure!(
        base <= c.pa && c.pa < base + size,
        "canary {:#x} outside the hyp region",
        c.pa
    );
    ensure!(c.now == c.at_boot, "canary already changed before the test");
    for addr in [c.pa, c.pa + 0x7f8, base, base + size - 8] {
        expect_read_abort(addr)?;
    }
    canary_unchanged("the reads")
}

fn writing_hyp_memory_aborts() -> TestResult {
    let (base, size) = hyp_region()?;
    let c = canary()?;
    ensure!(c.now == c.at_boot, "canary already changed before the test");
    for addr in [c.pa, c.pa + 0x400, c.pa + 0xff8] {
        expect_write_abort(addr, 0xbad0_bad0_bad0_bad0)?;
    }
    canary_unchanged("the writes")?;
    // The hyp's first page (its code) and last word: also refused.
    expect_write_abort(base, 0xd503_201f_d503_201f)?;
    expect_write_abort(base + size - 8, 0)?;
    canary_unchanged("the writes")
}

fn executing_hyp_memory_aborts() -> TestResult {
    let (base, _) = hyp_region()?;
    // If the hyp's code is readable the protection is gone anyway; do not also run it at EL1 (it
    // would take the machine down and cost the suite its summary).
    if let Ok(v) = probe_read_u64(base) {
        fail!("hyp memory at {base:#x} is readable ({v:#x}); not branching there");
    }
    // SAFETY: the target is the hyp's code, which the host must not reach; if the fetch works,
    // that is the protection failure this test reports (any fault there returns to us).
    match unsafe { probe_exec(base) } {
        Ok(()) => fail!("branch to hyp memory at {base:#x} returned normally"),
        Err(f) => check_abort(f, EC_INSN_ABORT_SAME_EL, false, base)?,
    }
    canary_unchanged("the fetch")
}

fn smmu_registers_are_unreachable() -> TestResult {
    // IDR0, IDR1 and CR0 (reads only: a write reaching a live SMMU could switch DMA protection off).
    for off in [0x0, 0x4, 0x20] {
        let addr = SMMU_BASE + off;
        match probe_read_u32(addr) {
            Ok(v) => fail!("SMMU register at {addr:#x} is readable ({v:#x})"),
            Err(f) => check_abort(f, EC_DATA_ABORT_SAME_EL, false, addr)?,
        }
    }
    Ok(())
}

static SECONDARY_PROBE_ADDR: AtomicU64 = AtomicU64::new(0);

fn probe_job(_cpu: usize) -> u64 {
    match probe_read_u64(SECONDARY_PROBE_ADDR.load(Ordering::SeqCst)) {
        Ok(_) => 0,
        Err(f) => f.esr,
    }
}

fn secondary_gets_injected_abort() -> TestResult {
    need_cpus()?;
    let c = canary()?;
    ensure!(is_online(1)?, "precondition: CPU 1 is not online");
    SECONDARY_PROBE_ADDR.store(c.pa + 8, Ordering::SeqCst);
    let Some(esr) = cpus::run_on(1, probe_job, JOB_TIMEOUT_MS) else {
        fail!("CPU 1 did not answer")
    };
    ensure!(
        esr != 0,
        "CPU 1 read hyp memory at {:#x} without a fault",
        c.pa + 8
    );
    let f = Fault {
        esr,
        far: c.pa + 8,
        elr: 0,
    };
    ensure!(
        f.ec() == EC_DATA_ABORT_SAME_EL && f.is_external_abort(),
        "CPU 1 got {f}"
    );
    canary_unchanged("CPU 1's read")
}
