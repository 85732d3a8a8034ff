//! The guest-role test kernel: a protected VM's only program. It runs at EL1 in a VM (IPA
//! 0x4000_0000, MMU on with the runtime's identity map, no DTB) and does what its host says,
//! one command per mailbox round trip (see `verso_test_kernels::mailbox`): pKVM guest calls
//! (MEM_SHARE / MEM_UNSHARE / MEM_RELINQUISH in both forms, HYP_MEMINFO, UID, features),
//! patterns written into and checked in its pages, loads and stores that may get an injected
//! abort, FP/SIMD register checks across exits, timed conversions for the benchmark, and PSCI
//! SYSTEM_OFF. It decides nothing itself: every expectation lives in the host-role suite.
#![no_std]
#![no_main]

use verso_test_kernels::exception::{probe_read_u64, probe_write_u64};
use verso_test_kernels::mailbox::{
    self, cmd, counter, counter_frequency, guest_call, hvc_raw, pattern, VRegs, MAILBOX,
};
use verso_test_kernels::smccc::{self, psci};
use verso_test_kernels::{boot_arg, println};

verso_test_kernels::entry!(main);

fn main() -> ! {
    println!("guest-worker up, x0 = {:#x}", boot_arg());
    let mut worker = Worker { last_x3: 0 };
    let mut reply = [cmd::READY, boot_arg(), counter_frequency()];
    loop {
        let r = hvc_raw([MAILBOX, reply[0], reply[1], reply[2], 0, 0, 0, 0]);
        if r[0] == smccc::NOT_SUPPORTED {
            // Nobody forwards the mailbox (booted bare, or a hyp that answers it itself).
            println!("guest-worker: the mailbox call is not supported here; powering off");
            smccc::system_off();
        }
        reply = worker.execute(r[0], [r[1], r[2], r[3]]);
    }
}

struct Worker {
    last_x3: u64,
}

impl Worker {
    fn execute(&mut self, command: u64, a: [u64; 3]) -> [u64; 3] {
        match command {
            cmd::NOP => [0, 0, 0],
            cmd::CALL => {
                let r = hvc_raw([a[0] & 0xffff_ffff, a[1], a[2], a[0] >> 32, 0, 0, 0, 0]);
                self.last_x3 = r[3];
                [r[0], r[1], r[2]]
            }
            cmd::LAST_X3 => [self.last_x3, 0, 0],
            cmd::FILL => {
                for addr in words(a[0], a[1]) {
                    // SAFETY: the host names pages it donated to this guest (private or shared),
                    // mapped by the identity map; no Rust object lives there.
                    unsafe { core::ptr::write_volatile(addr as *mut u64, pattern(a[2], addr)) };
                }
                [0, 0, 0]
            }
            cmd::CHECK => {
                for addr in words(a[0], a[1]) {
                    // SAFETY: as for FILL, reading instead of writing.
                    let v = unsafe { core::ptr::read_volatile(addr as *const u64) };
                    if v != pattern(a[2], addr) {
                        return [1, addr, v];
                    }
                }
                [0, 0, 0]
            }
            cmd::READ => match probe_read_u64(a[0]) {
                Ok(v) => [0, v, 0],
                Err(f) => [1, f.esr, f.far],
            },
            // SAFETY: the host asks for a store into this guest's own IPA space; whatever it hits
            // is guest memory (or an expected abort), never this kernel's image or stack, which
            // the host never names.
            cmd::WRITE => match unsafe { probe_write_u64(a[0], a[1]) } {
                Ok(()) => [0, 0, 0],
                Err(f) => [1, f.esr, f.far],
            },
            cmd::FP => fp_round_trip(a[0]),
            cmd::CONVERT_LOOP => convert_loop(a[0], a[1]),
            cmd::BENCH_CONVERT => bench_convert(a[0], a[1], a[2]),
            cmd::BENCH_COPY => bench_copy(a[0], a[1], a[2]),
            cmd::OFF => {
                let r = hvc_raw([psci::SYSTEM_OFF, 0, 0, 0, 0, 0, 0, 0]);
                println!("PSCI SYSTEM_OFF returned {:#x}", r[0]);
                [r[0], 0, 0]
            }
            other => {
                println!("unknown command {other:#x}");
                [u64::MAX, other, 0]
            }
        }
    }
}

/// The addresses of every 64-bit word of `pages` pages from `ipa` (empty if that would wrap).
fn words(ipa: u64, pages: u64) -> impl Iterator<Item = u64> {
    let end = pages
        .checked_mul(4096)
        .and_then(|b| ipa.checked_add(b))
        .unwrap_or(ipa);
    (ipa..end).step_by(8)
}

fn fp_round_trip(seed: u64) -> [u64; 3] {
    let mine = VRegs::with_pattern(seed);
    let mut after = VRegs([0; 32]);
    // The host sees FP_HOLD while our registers hold the pattern, runs its own FP code and
    // switches back; its next command only ends the round trip.
    mailbox::hvc_holding_vregs(
        &mine,
        &mut after,
        [MAILBOX, cmd::FP_HOLD, seed, 0, 0, 0, 0, 0],
    );
    match after.mismatch(seed) {
        None => [0, 0, 0],
        Some((reg, v)) => [1, reg as u64, v as u64],
    }
}

fn share_call(id: u64, ipa: u64, pages: u64) -> [u64; 8] {
    hvc_raw([id, ipa, pages, 0, 0, 0, 0, 0])
}

fn convert_loop(ipa: u64, count: u64) -> [u64; 3] {
    for i in 0..count {
        let r = share_call(guest_call::MEM_SHARE, ipa, 1);
        if r[0] != 0 {
            return [r[0], i, 0];
        }
        let r = share_call(guest_call::MEM_UNSHARE, ipa, 1);
        if r[0] != 0 {
            return [r[0], i, 1];
        }
    }
    [0, count, 0]
}

/// The cheapest observed cost of reading the counter twice back to back: subtracted from every
/// timed interval so that it counts only the operation.
fn counter_overhead() -> u64 {
    (0..16)
        .map(|_| {
            let t0 = counter();
            let t1 = counter();
            t1 - t0
        })
        .min()
        .unwrap_or(0)
}

fn bench_convert(ipa: u64, pages: u64, iterations: u64) -> [u64; 3] {
    let overhead = counter_overhead();
    let (mut share, mut unshare) = (0, 0);
    for _ in 0..iterations {
        let t0 = counter();
        let r = share_call(guest_call::MEM_SHARE, ipa, pages);
        let t1 = counter();
        if r[0] != 0 || r[1] != pages {
            return [r[0] | 1 << 32, r[1], 0];
        }
        let t2 = counter();
        let r = share_call(guest_call::MEM_UNSHARE, ipa, pages);
        let t3 = counter();
        if r[0] != 0 || r[1] != pages {
            return [r[0] | 2 << 32, r[1], 0];
        }
        share += (t1 - t0).saturating_sub(overhead);
        unshare += (t3 - t2).saturating_sub(overhead);
    }
    [0, share, unshare]
}

fn bench_copy(src: u64, dst: u64, pages: u64) -> [u64; 3] {
    let overhead = counter_overhead();
    let bytes = (pages * 4096) as usize;
    let t0 = counter();
    // SAFETY: the host names two disjoint ranges of this guest's memory (private source, shared
    // bounce buffer), both mapped; no Rust object lives in either.
    unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
    let t1 = counter();
    [0, (t1 - t0).saturating_sub(overhead), 0]
}
