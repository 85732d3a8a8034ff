//! Hostile-argument fuzzing of the decode + transition layer: random raw register values (as a
//! hypercall would pass them, often out of range, unaligned, wrapping, naming MMIO, the hyp's
//! memory or dead VMs) go through `Ownership::host_call` / `guest_call`. The run checks that
//! nothing panics (the image aborts on panic), that every refused call left the state unchanged
//! (full snapshots, on a sample), and that the tables and metadata stay consistent (the checker,
//! every 1,000 calls and at the end). Prints a summary of results per call.
//!
//! `cargo run --release --features testing --example fuzz_transitions -- [calls] [seed]`

use std::collections::BTreeMap;

use verso::addr::{PageRange, PhysAddr, PAGE_SIZE};
use verso::mem::check::{check_consistency, snapshot};
use verso::mem::decode::{GuestCall, HostCall};
use verso::mem::{HostMemory, MachineLayout, Ownership, PageMeta};
use verso::testing::{FakePlatform, FakeTableAllocator};
use verso::vm::VmHandle;

const RAM: u64 = 0x4000_0000;
const RAM_PAGES: u64 = 4096;
const HYP: u64 = RAM + RAM_PAGES * PAGE_SIZE + (2 << 20);
const HYP_PAGES: u64 = 512;
const MMIO: u64 = 0x0900_0000;
const HIDDEN: u64 = 0x0905_0000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A page frame number: mostly RAM, often edges, MMIO, the hyp's region, or garbage.
fn pfn(r: &mut Rng) -> u64 {
    match r.below(12) {
        0..=5 => RAM / PAGE_SIZE + r.below(RAM_PAGES),
        6 => RAM / PAGE_SIZE + RAM_PAGES - r.below(4),
        7 => RAM / PAGE_SIZE - 1 - r.below(2),
        8 => HYP / PAGE_SIZE + r.below(HYP_PAGES),
        9 => [MMIO, HIDDEN][r.below(2) as usize] / PAGE_SIZE,
        10 => u64::MAX - r.below(8),
        _ => r.next(),
    }
}

/// A page count: mostly small, sometimes a block, sometimes absurd.
fn count(r: &mut Rng) -> u64 {
    match r.below(10) {
        0 => 0,
        1..=5 => 1 + r.below(16),
        6 => 512,
        7 => 1 + r.below(1024),
        8 => u64::MAX - r.below(4),
        _ => r.next() >> r.below(64),
    }
}

/// A guest frame number / IPA page.
fn gfn(r: &mut Rng) -> u64 {
    match r.below(8) {
        0..=4 => r.below(8192),
        5 => (1 << 20) - r.below(4),
        6 => u64::MAX >> r.below(16),
        _ => r.next(),
    }
}

fn handle(r: &mut Rng, live: &[VmHandle]) -> u64 {
    match r.below(8) {
        0..=5 if !live.is_empty() => u64::from(live[r.below(live.len() as u64) as usize].0),
        6 => 0x1000 + r.below(16),
        _ => r.next() >> r.below(64),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0xf022);
    let mut plat = FakePlatform::new(PhysAddr(RAM), HYP + HYP_PAGES * PAGE_SIZE - RAM);
    let ram = [
        PageRange::new(PhysAddr(RAM), RAM_PAGES).unwrap(),
        PageRange::new(PhysAddr(HYP), HYP_PAGES).unwrap(),
    ];
    let layout = MachineLayout {
        ram: &ram,
        hyp: &ram[1..],
        mmio: &[PageRange::new(PhysAddr(MMIO), 1).unwrap()],
        hidden: &[PageRange::new(PhysAddr(HIDDEN), 32).unwrap()],
        ipa_bits: 40,
    };
    let meta: &'static mut [PageMeta] =
        Box::leak(vec![PageMeta::default(); layout.metadata_entries()].into_boxed_slice());
    let alloc = FakeTableAllocator::new(PhysAddr(HYP), HYP_PAGES / 2);
    let host = HostMemory::new(&layout, &mut plat, alloc, meta).expect("host stage-2");
    let own = Ownership::new(host, 32).expect("ownership");

    let mut r = Rng(seed);
    let mut results: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut snapshots_compared, mut checks) = (0u64, 0u64);
    let start = std::time::Instant::now();
    for i in 0..calls {
        let live: Vec<VmHandle> = own.inspect(|vms, _, _| vms.handles().collect());
        let compare = i % 97 == 0;
        let before = compare.then(|| snapshot(&own, &plat));
        let (name, res) = if r.below(4) == 0 {
            let call =
                [GuestCall::Share, GuestCall::Unshare, GuestCall::Relinquish][r.below(3) as usize];
            let vm = VmHandle(handle(&mut r, &live) as u16);
            let ipa = if r.below(4) == 0 {
                r.next()
            } else {
                gfn(&mut r) * PAGE_SIZE
            };
            let n = count(&mut r);
            (
                format!("guest {call:?}"),
                own.guest_call(&mut plat, vm, call, ipa, n).map(|()| 0),
            )
        } else {
            use HostCall::*;
            let calls = [
                ShareHyp,
                UnshareHyp,
                ShareGuest,
                UnshareGuest,
                DonateGuest,
                ReclaimGuest,
                ForceReclaimGuest,
                CreateVm,
                TopupMemcache,
                StartTeardown,
                FinalizeTeardown,
            ];
            let call = calls[r.below(calls.len() as u64) as usize];
            let a = match call {
                ShareHyp | UnshareHyp | ForceReclaimGuest | CreateVm => {
                    [pfn(&mut r), count(&mut r), 0, 0, 0]
                }
                ShareGuest => [
                    pfn(&mut r),
                    count(&mut r),
                    handle(&mut r, &live),
                    gfn(&mut r),
                    r.below(16),
                ],
                DonateGuest => [
                    pfn(&mut r),
                    count(&mut r),
                    handle(&mut r, &live),
                    gfn(&mut r),
                    0,
                ],
                UnshareGuest | ReclaimGuest => {
                    [handle(&mut r, &live), gfn(&mut r), count(&mut r), 0, 0]
                }
                TopupMemcache => [handle(&mut r, &live), pfn(&mut r), count(&mut r), 0, 0],
                StartTeardown | FinalizeTeardown => [handle(&mut r, &live), 0, 0, 0, 0],
            };
            // Keep VMs coming and going: teardown is rare.
            if matches!(call, StartTeardown) && r.below(8) != 0 {
                continue;
            }
            (format!("host {call:?}"), own.host_call(&mut plat, call, a))
        };
        plat.clear_log();
        let outcome = match res {
            Ok(_) => "Ok".to_string(),
            Err(e) => format!("{e:?}"),
        };
        if let (Some(before), Err(e)) = (before, res) {
            let after = snapshot(&own, &plat);
            assert!(
                before == after,
                "call {i} ({name}) refused with {e:?} but changed state"
            );
            snapshots_compared += 1;
        }
        *results.entry(name).or_default().entry(outcome).or_default() += 1;
        if i % 1000 == 999 {
            if let Err(e) = check_consistency(&own, &plat) {
                panic!("call {i}: {e}");
            }
            checks += 1;
        }
    }
    check_consistency(&own, &plat).expect("final consistency");
    checks += 1;
    let elapsed = start.elapsed();
    println!(
        "fuzz_transitions: {calls} calls, seed {seed}, {:.1} s",
        elapsed.as_secs_f64()
    );
    println!("no panic; {checks} full consistency checks passed; {snapshots_compared} refused calls compared by full snapshot, all unchanged");
    println!("{:<28} results", "call");
    for (name, outcomes) in &results {
        let total: u64 = outcomes.values().sum();
        let list: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        println!("{name:<28} {total:>7}: {}", list.join(", "));
    }
}
