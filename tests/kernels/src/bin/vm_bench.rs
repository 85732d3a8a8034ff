//! `./qemu-run.sh bench`: instructions per operation, measured under Verso on QEMU with
//! `-icount shift=0 -smp 1`.
//!
//! Under `-icount shift=0` QEMU's virtual clock advances exactly 1 ns per executed instruction,
//! at every exception level, and the generic timer counts that clock at CNTFRQ_EL0. So a
//! CNTVCT_EL0 difference of `t` ticks is `t * 1e9 / CNTFRQ` instructions, EL2 included. (QEMU's
//! PMU instruction counter would need MDCR_EL2/PMU set-up by the hyp and counts per EL; the
//! counter needs nothing and counts everything.) A calibration row checks the conversion on a
//! loop of known length. Each operation is timed on its own, from just before its `hvc` (or
//! access) to just after it returns, with the cost of reading the counter subtracted.
//!
//! Prints a table and one `CSV: operation,pages,instructions_per_op,instructions_per_page` line
//! per row, which qemu-run.sh collects into a file.
#![no_std]
#![no_main]

use core::arch::asm;

use verso_test_kernels::exception::probe_read_u64;
use verso_test_kernels::harness::Failure;
use verso_test_kernels::mailbox::{cmd, counter, counter_frequency, guest_call as gc, hvc_raw};
use verso_test_kernels::vmm::{id, Vm, PAGE, RUN_COMPLETE};
use verso_test_kernels::{println, semihosting};

verso_test_kernels::entry!(main);

/// Guest data: 1024 pages at a 2 MiB-aligned IPA (512 to convert, 512 as the bounce buffer).
const DATA_IPA: u64 = 0x4100_0000;
const BOUNCE_IPA: u64 = DATA_IPA + 512 * PAGE;
/// An unmapped VA of the host's own stage 1 (the idmap covers 0..2 GiB only): an EL1-only
/// fault, to subtract the test kernel's own exception handling from the stage-2 abort's cost.
const STAGE1_HOLE: u64 = 0x1_0000_0000;

fn main() -> ! {
    match bench() {
        Ok(()) => {
            println!("bench: done");
            semihosting::exit(0)
        }
        Err(f) => {
            println!("bench: FAILED: {}", f.reason());
            semihosting::exit(1)
        }
    }
}

struct Table {
    freq: u64,
}

impl Table {
    fn insns(&self, ticks: u64) -> u64 {
        (u128::from(ticks) * 1_000_000_000 / u128::from(self.freq.max(1))) as u64
    }
    /// One row: `ticks` over `count` operations of `pages` pages each.
    fn row(&self, op: &str, pages: u64, ticks: u64, count: u64) -> u64 {
        let per_op = self.insns(ticks) / count.max(1);
        match per_op.checked_div(pages) {
            None => {
                println!("  {op:<34} {pages:>5} {per_op:>14} {:>14}", "-");
                println!("CSV: {op},{pages},{per_op},");
            }
            Some(per_page) => {
                println!("  {op:<34} {pages:>5} {per_op:>14} {per_page:>14}");
                println!("CSV: {op},{pages},{per_op},{per_page}");
            }
        }
        per_op
    }
}

fn overhead() -> u64 {
    (0..16)
        .map(|_| {
            let t0 = counter();
            let t1 = counter();
            t1 - t0
        })
        .min()
        .unwrap_or(0)
}

/// Times `f` `n` times, each alone, minus the counter's own cost; returns the total ticks.
fn timed(n: u64, mut f: impl FnMut()) -> u64 {
    let o = overhead();
    (0..n)
        .map(|_| {
            let t0 = counter();
            f();
            let t1 = counter();
            (t1 - t0).saturating_sub(o)
        })
        .sum()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn bench() -> Result<(), Failure> {
    let freq = counter_frequency();
    let t = Table { freq };
    println!("bench: CNTFRQ_EL0 = {freq} Hz; under -icount shift=0 one instruction is 1 ns,");
    println!(
        "       so one counter tick is {} instructions",
        1_000_000_000 / freq.max(1)
    );

    // Calibration: 100000 iterations of a 2-instruction loop.
    let ticks = timed(1, || {
        // SAFETY: a register-only countdown loop.
        unsafe {
            asm!("1: subs {n}, {n}, #1", "b.ne 1b", n = inout(reg) 100_000u64 => _, options(nomem, nostack))
        }
    });
    let measured = t.insns(ticks);
    println!("bench: calibration: a loop of 200000 instructions measures {measured}");

    println!(
        "  {:<34} {:>5} {:>14} {:>14}",
        "operation", "pages", "instr/op", "instr/page"
    );
    let null = t.row(
        "null_host_hypercall",
        0,
        timed(1000, || {
            hvc_raw([0x8000_0000, 0, 0, 0, 0, 0, 0, 0]);
        }),
        1000,
    );
    let _ = null;

    let mut vm = Vm::boot(0xbe4c)?;
    let pa = vm.donate(DATA_IPA, 1024, 0x20_0000)?;
    vm.fill(DATA_IPA, 512, 0x5a)?;
    let h = vm.handle;
    let mut bad_exit = None;
    let ticks = timed(1000, || {
        let r = hvc_raw([id::VCPU_RUN, h, 0, RUN_COMPLETE, cmd::NOP, 0, 0, 0]);
        if r[0] != 0 || r[1] != 1 {
            bad_exit = Some((r[0], r[1]));
        }
    });
    if let Some((s, reason)) = bad_exit {
        verso_test_kernels::fail!("VCPU_RUN in the round-trip loop: status {s}, exit {reason}");
    }
    t.row("vcpu_run_round_trip", 0, ticks, 1000);

    let mut one = (0, 0);
    let mut per_page_512 = (0, 0);
    // (pages, marginal share, marginal unshare): cost of each page beyond the first.
    let mut marginal = [(0u64, 0u64, 0u64); 3];
    for (pages, iters) in [(1u64, 200u64), (8, 50), (64, 20), (512, 10)] {
        let r = vm.command(cmd::BENCH_CONVERT, [DATA_IPA, pages, iters])?;
        verso_test_kernels::ensure!(r[0] == 0, "guest conversion loop failed: {r:#x?}");
        let share = t.row("guest_mem_share", pages, r[1], iters);
        let unshare = t.row("guest_mem_unshare", pages, r[2], iters);
        t.row("guest_mem_share_plus_unshare", pages, r[1] + r[2], iters);
        if pages == 1 {
            one = (share, unshare);
        }
        if pages > 1 {
            let i = marginal.iter().position(|m| m.0 == 0).unwrap_or(0);
            marginal[i] = (
                pages,
                share.saturating_sub(one.0) / (pages - 1),
                unshare.saturating_sub(one.1) / (pages - 1),
            );
        }
        if pages == 512 {
            per_page_512 = (
                share.saturating_sub(one.0) / 511,
                unshare.saturating_sub(one.1) / 511,
            );
        }
    }
    vm.check(DATA_IPA, 512, 0x5a)?;

    // Host stage-2 abort injection: the host reads a guest-private page.
    let ticks_s2 = timed(100, || {
        let _ = probe_read_u64(pa);
    });
    let ticks_s1 = timed(100, || {
        let _ = probe_read_u64(STAGE1_HOLE);
    });
    verso_test_kernels::ensure!(probe_read_u64(pa).is_err(), "host read a private page");
    t.row("host_stage2_abort_injection", 1, ticks_s2, 100);
    t.row("host_stage1_fault_el1_only", 1, ticks_s1, 100);
    t.row(
        "host_stage2_abort_hyp_part",
        1,
        ticks_s2.saturating_sub(ticks_s1),
        100,
    );

    // The alternative: copy the same bytes from private memory into a shared bounce buffer.
    let r = vm.guest_call(gc::MEM_SHARE, BOUNCE_IPA, 512, 0)?;
    verso_test_kernels::ensure!(r[0] == 0, "sharing the bounce buffer: {r:#x?}");
    let mut copy_512 = 0;
    for (pages, iters) in [(1u64, 20u64), (8, 10), (64, 4), (512, 2)] {
        let mut total = 0;
        for _ in 0..iters {
            let r = vm.command(cmd::BENCH_COPY, [DATA_IPA, BOUNCE_IPA, pages])?;
            total += r[1];
        }
        let per_op = t.row("bounce_copy_private_to_shared", pages, total, iters);
        if pages == 512 {
            copy_512 = per_op;
        }
    }
    let r = vm.guest_call(gc::MEM_UNSHARE, BOUNCE_IPA, 512, 0)?;
    verso_test_kernels::ensure!(r[0] == 0, "unsharing the bounce buffer: {r:#x?}");

    // The 512-page conversion, for the comparison.
    let r = vm.command(cmd::BENCH_CONVERT, [DATA_IPA, 512, 2])?;
    let convert_512 = t.insns(r[1] + r[2]) / 2;
    println!("targets (from hvc to return, instructions):");
    println!(
        "  one-page MEM_SHARE {} <= 1000: {}; one-page MEM_UNSHARE {} <= 1000: {}",
        one.0,
        verdict(one.0 <= 1000),
        one.1,
        verdict(one.1 <= 1000)
    );
    println!(
        "  each additional page (512 pages, 2 MiB aligned): MEM_SHARE {} <= 50: {}; MEM_UNSHARE {} <= 50: {}",
        per_page_512.0,
        verdict(per_page_512.0 <= 50),
        per_page_512.1,
        verdict(per_page_512.1 <= 50)
    );
    for (pages, share, unshare) in marginal {
        println!(
            "    (at {pages} pages: each page beyond the first costs MEM_SHARE {share}, MEM_UNSHARE {unshare}: {})",
            verdict(share <= 50 && unshare <= 50)
        );
    }
    println!(
        "  512 pages: MEM_SHARE+MEM_UNSHARE {convert_512} < bounce copy {copy_512}: {}",
        verdict(convert_512 < copy_512)
    );
    vm.teardown()?;
    let _ = pa;
    Ok(())
}
