//! Hostile-argument fuzzing of the decode + transition layer: random raw register values (as a
//! hypercall would pass them, often out of range, unaligned, wrapping, naming MMIO, the hyp's
//! memory or dead VMs) go through `Ownership::host_call` / `guest_call`. Half of the calls are
//! *structured*: derived from ranges that earlier calls donated or shared (sub-ranges, ranges
//! that straddle their ends by a page, the right VM or a wrong one), so that the transitions are
//! reached in every state and not only refused at decode time; dying VMs are reclaimed and
//! finalized so VMs keep coming and going. The run checks that
//! nothing panics (the image aborts on panic), that every refused call left the state unchanged
//! (full snapshots, on a sample), and that the tables and metadata stay consistent (the checker,
//! every 1,000 calls and at the end). Prints a summary of results per call.
//!
//! `cargo run --release --features testing --example fuzz_transitions -- [calls] [seed]`

use std::collections::BTreeMap;

use verso::addr::{PageRange, PhysAddr, PAGE_SIZE};
use verso::mem::check::{check_consistency, chunks, snapshot};
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

/// A range that a successful call gave to a VM: where structured calls aim.
#[derive(Clone, Copy)]
struct Grant {
    handle: u64,
    pfn: u64,
    gfn: u64,
    pages: u64,
}

/// A structured call: `(name, host call or guest call, raw arguments)` aimed at `grant`,
/// usually well-formed, sometimes straddling one end of the grant or naming another VM.
fn structured(
    r: &mut Rng,
    g: Grant,
    live: &[VmHandle],
) -> (Option<HostCall>, Option<GuestCall>, [u64; 5]) {
    let off = r.below(g.pages);
    let mut n = 1 + r.below(g.pages - off);
    if r.below(8) == 0 {
        n += 1; // one page past the grant
    }
    let mut handle = g.handle;
    if r.below(16) == 0 && !live.is_empty() {
        handle = u64::from(live[r.below(live.len() as u64) as usize].0);
    }
    let (pfn, gfn) = (g.pfn + off, g.gfn + off);
    match r.below(10) {
        0..=1 => (
            None,
            Some(GuestCall::Share),
            [handle, gfn * PAGE_SIZE, n, 0, 0],
        ),
        2..=3 => (
            None,
            Some(GuestCall::Unshare),
            [handle, gfn * PAGE_SIZE, n, 0, 0],
        ),
        4 => (
            None,
            Some(GuestCall::Relinquish),
            [handle, gfn * PAGE_SIZE, n, 0, 0],
        ),
        5 => (Some(HostCall::UnshareGuest), None, [handle, gfn, n, 0, 0]),
        6 => (Some(HostCall::ReclaimGuest), None, [handle, gfn, n, 0, 0]),
        7 => (Some(HostCall::ForceReclaimGuest), None, [pfn, n, 0, 0, 0]),
        8 => (Some(HostCall::DonateGuest), None, [pfn, n, handle, gfn, 0]),
        _ => (
            Some(HostCall::ShareGuest),
            None,
            [pfn, n, handle, gfn, 1 + r.below(7)],
        ),
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
    let mut grants: Vec<Grant> = Vec::new();
    let mut results: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut snapshots_compared, mut checks) = (0u64, 0u64);
    let start = std::time::Instant::now();
    for i in 0..calls {
        let live: Vec<VmHandle> = own.inspect(|vms, _, _| vms.handles().collect());
        let compare = i % 97 == 0;
        let before = compare.then(|| snapshot(&own, &plat));
        grants.retain(|g| live.iter().any(|h| u64::from(h.0) == g.handle));
        let dying: Vec<VmHandle> = own.inspect(|vms, _, _| {
            vms.handles()
                .filter(|&h| vms.get(h).is_ok_and(|v| v.dying))
                .collect()
        });
        let (name, res, call_info) = if !dying.is_empty() && r.below(4) == 0 {
            // Reap a dying VM: give back every page it was granted (reclaim what it owns,
            // unshare what it borrowed, page by page where a range is mixed), then finalize.
            let h = u64::from(dying[r.below(dying.len() as u64) as usize].0);
            let mut res = Ok(0);
            let mut name = "host FinalizeTeardown (reap)".to_string();
            if let Some(i) = grants.iter().position(|g| g.handle == h) {
                let g = grants.swap_remove(i);
                name = "host Reclaim/UnshareGuest (reap)".to_string();
                for (gfn, n) in
                    std::iter::once((g.gfn, g.pages)).chain((0..g.pages).map(|k| (g.gfn + k, 1)))
                {
                    res = own.host_call(&mut plat, HostCall::ReclaimGuest, [h, gfn, n, 0, 0]);
                    if res.is_err() {
                        res = own.host_call(&mut plat, HostCall::UnshareGuest, [h, gfn, n, 0, 0]);
                    }
                    if res.is_ok() && n == g.pages {
                        break;
                    }
                }
            } else {
                res = own.host_call(&mut plat, HostCall::FinalizeTeardown, [h, 0, 0, 0, 0]);
                if res == Err(verso::error::Error::Busy) {
                    // Pages no grant remembers (e.g. from a hostile call that happened to be
                    // valid): find them in the guest's stage-2 and give each chunk back.
                    let left: Vec<(u64, u64)> = own.inspect(|vms, _, _| {
                        let vm = vms.get(VmHandle(h as u16)).expect("dying VM is listed");
                        let g = vm.guest.lock();
                        chunks(&g.stage2, &plat)
                            .into_iter()
                            .map(|(ipa, n, _)| (ipa.raw() / PAGE_SIZE, n))
                            .collect()
                    });
                    for (gfn, n) in left {
                        if own
                            .host_call(&mut plat, HostCall::ReclaimGuest, [h, gfn, n, 0, 0])
                            .is_err()
                        {
                            let _ =
                                own.host_call(&mut plat, HostCall::UnshareGuest, [h, gfn, n, 0, 0]);
                        }
                    }
                    name = "host sweep+FinalizeTeardown (reap)".to_string();
                    res = own.host_call(&mut plat, HostCall::FinalizeTeardown, [h, 0, 0, 0, 0]);
                }
            }
            (name, res, None)
        } else if !grants.is_empty() && r.below(2) == 0 {
            let g = grants[r.below(grants.len() as u64) as usize];
            match structured(&mut r, g, &live) {
                (Some(call), _, a) => (
                    format!("host {call:?} (structured)"),
                    own.host_call(&mut plat, call, a),
                    Some((call, a)),
                ),
                (None, Some(call), a) => (
                    format!("guest {call:?} (structured)"),
                    own.guest_call(&mut plat, VmHandle(a[0] as u16), call, a[1], a[2])
                        .map(|()| 0),
                    None,
                ),
                _ => unreachable!(),
            }
        } else if r.below(4) == 0 {
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
                None,
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
                ShareHyp | UnshareHyp | ForceReclaimGuest => [pfn(&mut r), count(&mut r), 0, 0, 0],
                // A VM needs a few pages: mostly a plausible count.
                CreateVm => [
                    pfn(&mut r),
                    if r.below(2) == 0 {
                        1 + r.below(4)
                    } else {
                        count(&mut r)
                    },
                    0,
                    0,
                    0,
                ],
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
                TopupMemcache => [
                    handle(&mut r, &live),
                    pfn(&mut r),
                    if r.below(2) == 0 {
                        1 + r.below(16)
                    } else {
                        count(&mut r)
                    },
                    0,
                    0,
                ],
                StartTeardown | FinalizeTeardown => [handle(&mut r, &live), 0, 0, 0, 0],
            };
            // Keep VMs alive long enough to be used: teardown is rare.
            if matches!(call, StartTeardown) && r.below(64) != 0 {
                continue;
            }
            (
                format!("host {call:?}"),
                own.host_call(&mut plat, call, a),
                Some((call, a)),
            )
        };
        if let (Some((call, a)), Ok(_)) = (call_info, res) {
            if matches!(call, HostCall::DonateGuest | HostCall::ShareGuest) {
                grants.push(Grant {
                    handle: a[2],
                    pfn: a[0],
                    gfn: a[3],
                    pages: a[1],
                });
            }
        }
        plat.clear_log();
        let outcome = match res {
            Ok(_) => "Ok".to_string(),
            Err(e) => format!("{e:?}"),
        };
        // A reap is several calls, some of which succeed: only single calls are compared.
        let single = !name.ends_with("(reap)");
        if let (Some(before), Err(e), true) = (before, res, single) {
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
