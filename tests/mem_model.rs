//! Model-based random testing: long random sequences of transitions (seeded, reproducible) over
//! page ranges of every shape, on several VMs, run against the real tables and against a small
//! pure model of who owns and who sees what. After every step the result must be exactly the
//! model's, and every page the step could have changed (each page of the ranges it named, and
//! each host page backing a named guest range, before and after) must translate exactly as the
//! model says in the host CPU view, the DMA view (the SMMU walks the host stage-2 itself, so it
//! is the same table) and every guest view; every 1,000 steps and at the end, every page and
//! every table is compared and the full consistency checker runs.
//!
//! `VERSO_SEED=<n>` replays a run; `VERSO_MODEL_STEPS=<n>` changes its length (default 100,000).

mod mem_support;

/// A range of pages: (first page index, number of pages).
type Span = (u64, u64);

use std::collections::BTreeMap;

use mem_support::World;
use verso::addr::{Ipa, PageRange, PhysAddr, PAGE_SIZE};
use verso::error::Error;
use verso::mem::check::chunks;
use verso::mem::guest_state;
use verso::mem::PageState;
use verso::pgtable::{Lookup, Perms};
use verso::vm::{VmHandle, MAX_VMS, MEMCACHE_PAGES};

const RAM_PAGES: u64 = 4096;
/// Guests use IPAs below this page index (plus some beyond the IPA limit, to be refused).
const GUEST_PAGES: u64 = 4096;
const GUEST_LIMIT_PAGES: u64 = 1 << (mem_support::GUEST_IPA_BITS - 12);

/// SplitMix64: small, good enough, reproducible.
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
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The model's view of one RAM page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Page {
    Host,
    SharedHyp { pins: u16 },
    Hyp,
    Memcache,
    SharedGuests(u32),
    Guest { vm: VmHandle, ipa: u64 },
    GuestShared { vm: VmHandle, ipa: u64 },
}

/// The model's view of one guest page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum GPage {
    Mapped { pa: u64, state: PageState },
    Poisoned,
}

#[derive(Default, Debug)]
struct MVm {
    dying: bool,
    held: u64,
    map: BTreeMap<u64, GPage>,
}

struct Model {
    pages: Vec<Page>,
    vms: BTreeMap<VmHandle, MVm>,
}

type R = Result<(), Error>;

impl Model {
    fn host_range(&self, p: u64, n: u64) -> Result<std::ops::Range<usize>, Error> {
        if p + n > RAM_PAGES {
            return Err(Error::Range);
        }
        Ok(p as usize..(p + n) as usize)
    }
    fn vm(&self, h: VmHandle) -> Result<&MVm, Error> {
        self.vms.get(&h).ok_or(Error::NotFound)
    }
    fn live_vm(&self, h: VmHandle) -> Result<&MVm, Error> {
        let vm = self.vm(h)?;
        if vm.dying {
            return Err(Error::Busy);
        }
        Ok(vm)
    }
    fn ipa_ok(i: u64, n: u64) -> R {
        if i + n > GUEST_LIMIT_PAGES {
            Err(Error::Range)
        } else {
            Ok(())
        }
    }
    fn each(&self, r: std::ops::Range<usize>, f: impl Fn(&Page) -> R) -> R {
        self.pages[r].iter().try_for_each(f)
    }
    /// Guest pages in `wanted` (a mapped state) or NotFound/Perm, in address order.
    fn guest_each(vm: &MVm, i: u64, n: u64, wanted: &[PageState]) -> R {
        (i..i + n).try_for_each(|g| match vm.map.get(&g) {
            Some(GPage::Mapped { state, .. }) if wanted.contains(state) => Ok(()),
            None => Err(Error::NotFound),
            _ => Err(Error::Perm),
        })
    }
    fn guest_empty(vm: &MVm, i: u64, n: u64) -> R {
        (i..i + n).try_for_each(|g| match vm.map.get(&g) {
            None => Ok(()),
            _ => Err(Error::Perm),
        })
    }
    fn pa_of(vm: &MVm, g: u64) -> usize {
        match vm.map[&g] {
            GPage::Mapped { pa, .. } => pa as usize,
            GPage::Poisoned => unreachable!(),
        }
    }

    fn apply(&mut self, op: &Op) -> R {
        match *op {
            Op::ShareHyp(p, n) => {
                let r = self.host_range(p, n)?;
                self.each(r.clone(), |pg| ok_if(*pg == Page::Host))?;
                r.for_each(|k| self.pages[k] = Page::SharedHyp { pins: 0 });
            }
            Op::UnshareHyp(p, n) => {
                let r = self.host_range(p, n)?;
                self.each(r.clone(), |pg| match pg {
                    Page::SharedHyp { pins: 0 } => Ok(()),
                    Page::SharedHyp { .. } => Err(Error::Busy),
                    _ => Err(Error::Perm),
                })?;
                r.for_each(|k| self.pages[k] = Page::Host);
            }
            Op::Pin(p, n, pin) => {
                let r = self.host_range(p, n)?;
                self.each(r.clone(), |pg| match pg {
                    Page::SharedHyp { pins: 0 } if !pin => Err(Error::Invalid),
                    Page::SharedHyp { .. } => Ok(()),
                    _ => Err(Error::Perm),
                })?;
                for k in r {
                    if let Page::SharedHyp { pins } = &mut self.pages[k] {
                        *pins = if pin { *pins + 1 } else { *pins - 1 };
                    }
                }
            }
            Op::DonateHyp(p, n) => {
                let r = self.host_range(p, n)?;
                self.each(r.clone(), |pg| ok_if(*pg == Page::Host))?;
                r.for_each(|k| self.pages[k] = Page::Hyp);
            }
            Op::HypDonateHost(p, n) => {
                let r = self.host_range(p, n)?;
                self.each(r.clone(), |pg| match pg {
                    Page::Hyp => Ok(()),
                    Page::Memcache => Err(Error::Busy),
                    _ => Err(Error::Perm),
                })?;
                r.for_each(|k| self.pages[k] = Page::Host);
            }
            Op::ShareGuest(p, n, vm, i) => {
                let v = self.live_vm(vm)?;
                Self::ipa_ok(i, n)?;
                let r = self.host_range(p, n)?;
                self.each(r.clone(), |pg| {
                    ok_if(matches!(pg, Page::Host | Page::SharedGuests(_)))
                })?;
                Self::guest_empty(v, i, n)?;
                for (k, g) in r.zip(i..) {
                    let c = match self.pages[k] {
                        Page::SharedGuests(c) => c,
                        _ => 0,
                    };
                    self.pages[k] = Page::SharedGuests(c + 1);
                    let state = PageState::SharedBorrowed;
                    self.vms.get_mut(&vm).unwrap().map.insert(
                        g,
                        GPage::Mapped {
                            pa: k as u64,
                            state,
                        },
                    );
                }
            }
            Op::UnshareGuest(vm, i, n) => {
                let v = self.vm(vm)?;
                Self::ipa_ok(i, n)?;
                Self::guest_each(v, i, n, &[PageState::SharedBorrowed])?;
                for g in i..i + n {
                    let k = Self::pa_of(&self.vms[&vm], g);
                    self.vms.get_mut(&vm).unwrap().map.remove(&g);
                    self.pages[k] = match self.pages[k] {
                        Page::SharedGuests(1) => Page::Host,
                        Page::SharedGuests(c) => Page::SharedGuests(c - 1),
                        other => panic!("model: unshare of {other:?}"),
                    };
                }
            }
            Op::DonateGuest(p, n, vm, i) => {
                let v = self.live_vm(vm)?;
                Self::ipa_ok(i, n)?;
                let r = self.host_range(p, n)?;
                self.each(r.clone(), |pg| ok_if(*pg == Page::Host))?;
                Self::guest_empty(v, i, n)?;
                for (k, g) in r.zip(i..) {
                    self.pages[k] = Page::Guest { vm, ipa: g };
                    let state = PageState::Owned;
                    self.vms.get_mut(&vm).unwrap().map.insert(
                        g,
                        GPage::Mapped {
                            pa: k as u64,
                            state,
                        },
                    );
                }
            }
            Op::GuestShare(vm, i, n) | Op::GuestUnshare(vm, i, n) | Op::Relinquish(vm, i, n) => {
                let v = self.live_vm(vm)?;
                Self::ipa_ok(i, n)?;
                let want = match op {
                    Op::GuestUnshare(..) => PageState::SharedOwned,
                    _ => PageState::Owned,
                };
                Self::guest_each(v, i, n, &[want])?;
                for g in i..i + n {
                    let k = Self::pa_of(&self.vms[&vm], g);
                    let map = &mut self.vms.get_mut(&vm).unwrap().map;
                    let (page, gpage) = match op {
                        Op::GuestShare(..) => (
                            Page::GuestShared { vm, ipa: g },
                            Some(PageState::SharedOwned),
                        ),
                        Op::GuestUnshare(..) => {
                            (Page::Guest { vm, ipa: g }, Some(PageState::Owned))
                        }
                        _ => (Page::Host, None),
                    };
                    self.pages[k] = page;
                    match gpage {
                        Some(state) => map.insert(
                            g,
                            GPage::Mapped {
                                pa: k as u64,
                                state,
                            },
                        ),
                        None => map.remove(&g),
                    };
                }
            }
            Op::Reclaim(vm, i, n) => {
                let v = self.vm(vm)?;
                if !v.dying {
                    return Err(Error::Busy);
                }
                Self::ipa_ok(i, n)?;
                Self::guest_each(v, i, n, &[PageState::Owned, PageState::SharedOwned])?;
                for g in i..i + n {
                    let k = Self::pa_of(&self.vms[&vm], g);
                    self.vms.get_mut(&vm).unwrap().map.remove(&g);
                    self.pages[k] = Page::Host;
                }
            }
            Op::ForceReclaim(p, n) => {
                let r = self.host_range(p, n)?;
                self.each(r.clone(), |pg| ok_if(matches!(pg, Page::Guest { .. })))?;
                let Page::Guest { vm, ipa } = self.pages[r.start] else {
                    unreachable!()
                };
                let delta = ipa as i64 - r.start as i64;
                self.each(r.clone(), |_| Ok(()))?;
                for k in r.clone() {
                    match self.pages[k] {
                        Page::Guest { vm: v, ipa: g }
                            if v == vm && g as i64 - k as i64 == delta => {}
                        _ => return Err(Error::Perm),
                    }
                }
                for k in r {
                    self.pages[k] = Page::Host;
                    let g = (k as i64 + delta) as u64;
                    self.vms
                        .get_mut(&vm)
                        .unwrap()
                        .map
                        .insert(g, GPage::Poisoned);
                }
            }
            Op::CreateVm(p, n) => {
                let r = self.host_range(p, n)?;
                self.each(r.clone(), |pg| ok_if(*pg == Page::Host))?;
                if self.vms.len() >= MAX_VMS || n > MEMCACHE_PAGES as u64 {
                    return Err(Error::NoMem);
                }
                return Err(Error::Invalid); // resolved by the caller, which knows the new handle
            }
            Op::Topup(vm, p, n) => {
                let v = self.live_vm(vm)?;
                let held = v.held;
                let r = self.host_range(p, n)?;
                self.each(r.clone(), |pg| ok_if(*pg == Page::Host))?;
                if held + n > MEMCACHE_PAGES as u64 {
                    return Err(Error::NoMem);
                }
                r.for_each(|k| self.pages[k] = Page::Memcache);
                self.vms.get_mut(&vm).unwrap().held += n;
            }
            Op::StartTeardown(vm) => {
                self.live_vm(vm)?;
                self.vms.get_mut(&vm).unwrap().dying = true;
            }
            Op::Finalize(vm) => {
                let v = self.vm(vm)?;
                if !v.dying || v.map.values().any(|g| matches!(g, GPage::Mapped { .. })) {
                    return Err(Error::Busy);
                }
                // Which pages come back is the concrete side's business (tables move around);
                // the caller reconciles the memcache pages.
                return Err(Error::Invalid);
            }
        }
        Ok(())
    }
}

fn ok_if(c: bool) -> R {
    if c {
        Ok(())
    } else {
        Err(Error::Perm)
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    ShareHyp(u64, u64),
    UnshareHyp(u64, u64),
    Pin(u64, u64, bool),
    DonateHyp(u64, u64),
    HypDonateHost(u64, u64),
    ShareGuest(u64, u64, VmHandle, u64),
    UnshareGuest(VmHandle, u64, u64),
    DonateGuest(u64, u64, VmHandle, u64),
    GuestShare(VmHandle, u64, u64),
    GuestUnshare(VmHandle, u64, u64),
    Relinquish(VmHandle, u64, u64),
    Reclaim(VmHandle, u64, u64),
    ForceReclaim(u64, u64),
    CreateVm(u64, u64),
    Topup(VmHandle, u64, u64),
    StartTeardown(VmHandle),
    Finalize(VmHandle),
}

struct Test {
    w: World,
    m: Model,
    rng: Rng,
    /// Every handle ever used, plus some never used, to name VMs at random.
    handles: Vec<VmHandle>,
}

impl Test {
    fn length(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=3 => 1 + self.rng.below(8),
            4..=6 => 1 + self.rng.below(64),
            7 => 512,
            _ => 1 + self.rng.below(1024),
        }
    }
    /// A start page index: often block aligned, sometimes at a page the model knows something about.
    fn start(&mut self, limit: u64) -> u64 {
        match self.rng.below(4) {
            0 => self.rng.below(limit / 512 + 1) * 512,
            _ => self.rng.below(limit),
        }
    }
    /// A host range, often extended over pages of one model state so that it can succeed.
    fn host_range(&mut self) -> (u64, u64) {
        let p = self.start(RAM_PAGES + 16);
        let n = self.length();
        if self.rng.chance(60) && p < RAM_PAGES {
            let first = self.m.pages[p as usize];
            let same = (p..RAM_PAGES.min(p + n))
                .take_while(|k| {
                    let pg = self.m.pages[*k as usize];
                    std::mem::discriminant(&pg) == std::mem::discriminant(&first)
                })
                .count() as u64;
            return (p, same.max(1));
        }
        (p, n)
    }
    /// Mostly an existing VM (and then mostly a live one), sometimes any handle ever seen.
    fn vm(&mut self) -> VmHandle {
        let existing: Vec<VmHandle> = self.m.vms.keys().copied().collect();
        if !existing.is_empty() && self.rng.chance(90) {
            let live: Vec<VmHandle> = existing
                .iter()
                .copied()
                .filter(|h| !self.m.vms[h].dying)
                .collect();
            let pool = if !live.is_empty() && self.rng.chance(85) {
                &live
            } else {
                &existing
            };
            return pool[self.rng.below(pool.len() as u64) as usize];
        }
        let i = self.rng.below(self.handles.len() as u64) as usize;
        self.handles[i]
    }

    /// A start page with `n` host-owned pages after it, if one is found quickly.
    fn host_owned_run(&mut self, n: u64) -> u64 {
        for _ in 0..8 {
            let p = self.rng.below(RAM_PAGES - n);
            if (p..p + n).all(|k| self.m.pages[k as usize] == Page::Host) {
                return p;
            }
        }
        self.rng.below(RAM_PAGES)
    }
    /// A guest range of `vm`, often over pages in one state.
    fn guest_range(&mut self, vm: VmHandle) -> (u64, u64) {
        let n = self.length();
        if self.rng.chance(70) {
            if let Some(v) = self.m.vms.get(&vm) {
                if !v.map.is_empty() {
                    let keys: Vec<u64> = v.map.keys().copied().collect();
                    let g = keys[self.rng.below(keys.len() as u64) as usize];
                    let first = v.map[&g];
                    let same = (g..g + n)
                        .take_while(|k| v.map.get(k).map(std::mem::discriminant) == Some(std::mem::discriminant(&first))
                            && matches!((v.map[k], first), (GPage::Mapped { state: a, .. }, GPage::Mapped { state: b, .. }) if a == b)
                            || matches!((v.map.get(k), first), (Some(GPage::Poisoned), GPage::Poisoned)))
                        .count() as u64;
                    return (g, same.max(1));
                }
            }
        }
        if self.rng.chance(2) {
            return (GUEST_LIMIT_PAGES - self.rng.below(4), n);
        }
        (self.start(GUEST_PAGES), n)
    }

    /// A dying VM, if any (most of the time), for the calls that clean up.
    fn dying_vm(&mut self, otherwise: VmHandle) -> VmHandle {
        let dying: Vec<VmHandle> = self
            .m
            .vms
            .iter()
            .filter(|(_, v)| v.dying)
            .map(|(h, _)| *h)
            .collect();
        if dying.is_empty() || self.rng.chance(20) {
            return otherwise;
        }
        dying[self.rng.below(dying.len() as u64) as usize]
    }

    fn random_op(&mut self) -> Op {
        let vm = self.vm();
        let live = self.m.vms.values().filter(|v| !v.dying).count();
        match self.rng.below(100) {
            0..=5 => {
                let (p, n) = self.host_range();
                Op::ShareHyp(p, n)
            }
            6..=10 => {
                let (p, n) = self.host_range();
                Op::UnshareHyp(p, n)
            }
            11..=13 => {
                let (p, n) = self.host_range();
                Op::Pin(p, n, self.rng.chance(50))
            }
            14..=17 => {
                let (p, n) = self.host_range();
                Op::DonateHyp(p, n)
            }
            18..=21 => {
                let (p, n) = self.host_range();
                Op::HypDonateHost(p, n)
            }
            22..=31 => {
                let (p, n) = self.host_range();
                let (i, _) = self.guest_range(vm);
                Op::ShareGuest(
                    p,
                    n,
                    vm,
                    if self.rng.chance(50) {
                        self.start(GUEST_PAGES)
                    } else {
                        i
                    },
                )
            }
            32..=39 => {
                let vm = if self.rng.chance(50) {
                    self.dying_vm(vm)
                } else {
                    vm
                };
                let (i, n) = self.guest_range(vm);
                Op::UnshareGuest(vm, i, n)
            }
            40..=51 => {
                let (p, n) = self.host_range();
                let i = self.start(GUEST_PAGES);
                Op::DonateGuest(p, n, vm, i)
            }
            52..=61 => {
                let (i, n) = self.guest_range(vm);
                Op::GuestShare(vm, i, n)
            }
            62..=71 => {
                let (i, n) = self.guest_range(vm);
                Op::GuestUnshare(vm, i, n)
            }
            72..=76 => {
                let (i, n) = self.guest_range(vm);
                Op::Relinquish(vm, i, n)
            }
            77..=84 => {
                let vm = self.dying_vm(vm);
                let (i, n) = self.guest_range(vm);
                Op::Reclaim(vm, i, n)
            }
            85..=87 => {
                let (p, n) = self.host_range();
                Op::ForceReclaim(p, n)
            }
            // At least 16 pages: enough tables for the guest IPAs used here, so NoMem never happens.
            88..=91 => {
                let n = 16 + self.rng.below(25);
                Op::CreateVm(self.host_owned_run(n), n)
            }
            92..=95 => {
                let n = 1 + self.rng.below(16);
                Op::Topup(vm, self.host_owned_run(n), n)
            }
            96 if live > 2 || self.rng.chance(10) => Op::StartTeardown(vm),
            _ => Op::Finalize(self.dying_vm(vm)),
        }
    }

    fn run_concrete(&mut self, op: &Op) -> Result<u64, Error> {
        let own = &self.w.own;
        let plat = &mut self.w.plat;
        let pr =
            |p: u64, n: u64| PageRange::new(PhysAddr(mem_support::RAM + p * PAGE_SIZE), n).unwrap();
        let ir = |i: u64, n: u64| PageRange::new(Ipa(i * PAGE_SIZE), n).unwrap();
        let r = match *op {
            Op::ShareHyp(p, n) => own.host_share_hyp(pr(p, n)),
            Op::UnshareHyp(p, n) => own.host_unshare_hyp(pr(p, n)),
            Op::Pin(p, n, true) => own.hyp_pin_shared(pr(p, n)),
            Op::Pin(p, n, false) => own.hyp_unpin_shared(pr(p, n)),
            Op::DonateHyp(p, n) => own.host_donate_hyp(plat, pr(p, n)),
            Op::HypDonateHost(p, n) => own.hyp_donate_host(plat, pr(p, n)),
            Op::ShareGuest(p, n, vm, i) => {
                own.host_share_guest(plat, pr(p, n), vm, Ipa(i * PAGE_SIZE), Perms::RW)
            }
            Op::UnshareGuest(vm, i, n) => own.host_unshare_guest(plat, vm, ir(i, n)),
            Op::DonateGuest(p, n, vm, i) => {
                own.host_donate_guest(plat, pr(p, n), vm, Ipa(i * PAGE_SIZE))
            }
            Op::GuestShare(vm, i, n) => own.guest_share_host(plat, vm, ir(i, n)),
            Op::GuestUnshare(vm, i, n) => own.guest_unshare_host(plat, vm, ir(i, n)),
            Op::Relinquish(vm, i, n) => own.guest_relinquish_to_host(plat, vm, ir(i, n)),
            Op::Reclaim(vm, i, n) => own.host_reclaim_guest(plat, vm, ir(i, n)),
            Op::ForceReclaim(p, n) => own.host_force_reclaim_guest(plat, pr(p, n)),
            Op::CreateVm(p, n) => return own.create_vm(plat, pr(p, n)).map(|h| u64::from(h.0)),
            Op::Topup(vm, p, n) => own.topup_memcache(plat, vm, pr(p, n)),
            Op::StartTeardown(vm) => own.start_teardown(vm),
            Op::Finalize(vm) => own.finalize_teardown(plat, vm),
        };
        r.map(|()| 0)
    }

    /// Run `op` on both sides; true if it succeeded.
    fn step(&mut self, step: u64, op: &Op) -> bool {
        let expected = self.m.apply(op);
        let got = self.run_concrete(op);
        let succeeded = got.is_ok();
        if std::env::var("VERSO_MODEL_DEBUG").is_ok() && !succeeded && step.is_multiple_of(97) {
            eprintln!("{op:?} -> {got:?}");
        }
        match (op, expected, got) {
            (Op::CreateVm(p, n), Err(Error::Invalid), Ok(h)) => {
                let h = VmHandle(h as u16);
                for k in *p..p + n {
                    self.m.pages[k as usize] = Page::Memcache;
                }
                self.m.vms.insert(
                    h,
                    MVm {
                        held: *n,
                        ..Default::default()
                    },
                );
                if !self.handles.contains(&h) {
                    self.handles.push(h);
                }
            }
            (Op::Finalize(vm), Err(Error::Invalid), Ok(_)) => {
                // Every memcache page of the VM is the host's again: the model learns which
                // from the concrete metadata (the pages are interchangeable as table pages).
                let v = self.m.vms.remove(vm).unwrap();
                let mut back = 0;
                for k in 0..RAM_PAGES as usize {
                    if self.m.pages[k] == Page::Memcache {
                        let pa = PhysAddr(mem_support::RAM + k as u64 * PAGE_SIZE);
                        let host = self
                            .w
                            .own
                            .inspect(|_, h, _| h.meta(pa).unwrap().host_state());
                        if host == PageState::Owned {
                            self.m.pages[k] = Page::Host;
                            back += 1;
                        }
                    }
                }
                assert_eq!(
                    back, v.held,
                    "step {step}: finalize returned {back} of {} pages",
                    v.held
                );
            }
            (_, e, g) => assert_eq!(g.map(|_| ()), e, "step {step}: {op:?}"),
        }
        self.w.plat.clear_log();
        succeeded
    }

    /// The host's (= the DMA's) view of host page `k` must be what the model says.
    fn check_host_page(&self, k: u64) {
        let pa = mem_support::RAM + k * PAGE_SIZE;
        let l = self
            .w
            .own
            .inspect(|_, h, _| h.stage2().lookup(&self.w.plat, Ipa(pa)));
        let accessible = matches!(l, Lookup::Mapped { pa: p, .. } if p.raw() == pa);
        let should = matches!(
            self.m.pages[k as usize],
            Page::Host | Page::SharedHyp { .. } | Page::SharedGuests(_) | Page::GuestShared { .. }
        );
        assert_eq!(
            accessible, should,
            "host/DMA view of page {k}: {l:?}, model {:?}",
            self.m.pages[k as usize]
        );
    }

    /// Every guest's view of `n` IPAs from `i` must be what the model says.
    fn check_guest_pages(&self, i: u64, n: u64) {
        for (h, v) in &self.m.vms {
            self.w.own.inspect(|vms, host, _| {
                let g = vms.get(*h).unwrap().guest.lock();
                for ipa in i..(i + n).min(GUEST_LIMIT_PAGES) {
                    let l = g.stage2.lookup(&self.w.plat, Ipa(ipa * PAGE_SIZE));
                    let seen = match l {
                        Lookup::Mapped { pa, .. } => Some(GPage::Mapped {
                            pa: (pa.raw() - mem_support::RAM) / PAGE_SIZE,
                            state: guest_state(&l, host),
                        }),
                        _ if guest_state(&l, host) == PageState::Poisoned => Some(GPage::Poisoned),
                        _ => None,
                    };
                    assert_eq!(
                        seen,
                        v.map.get(&ipa).copied(),
                        "guest {h:?} view of IPA page {ipa}"
                    );
                }
            });
        }
    }

    /// The host and guest page ranges `op` names, as (first page, pages).
    fn named(op: &Op) -> (Option<Span>, Option<Span>) {
        match *op {
            Op::ShareHyp(p, n)
            | Op::UnshareHyp(p, n)
            | Op::Pin(p, n, _)
            | Op::DonateHyp(p, n)
            | Op::HypDonateHost(p, n)
            | Op::ForceReclaim(p, n)
            | Op::CreateVm(p, n)
            | Op::Topup(_, p, n) => (Some((p, n)), None),
            Op::ShareGuest(p, n, _, i) | Op::DonateGuest(p, n, _, i) => {
                (Some((p, n)), Some((i, n)))
            }
            Op::UnshareGuest(_, i, n)
            | Op::GuestShare(_, i, n)
            | Op::GuestUnshare(_, i, n)
            | Op::Relinquish(_, i, n)
            | Op::Reclaim(_, i, n) => (None, Some((i, n))),
            Op::StartTeardown(_) | Op::Finalize(_) => (None, None),
        }
    }

    /// The host pages that back, in any VM of the model, the guest IPAs `op` names: a guest-side
    /// call changes the host's (and the DMA's) view of exactly these pages. Taken before the
    /// step, as the step may remove the mapping that links them.
    fn backing(&self, op: &Op) -> Vec<u64> {
        let Some((i, n)) = Self::named(op).1 else {
            return Vec::new();
        };
        let mut pages: Vec<u64> = self
            .m
            .vms
            .values()
            .flat_map(|v| v.map.range(i..i + n).map(|(_, g)| *g))
            .filter_map(|g| match g {
                GPage::Mapped { pa, .. } => Some(pa),
                GPage::Poisoned => None,
            })
            .collect();
        pages.sort_unstable();
        pages.dedup();
        pages
    }

    /// After a step, every page it could have changed must translate as the model says: every
    /// host page of the named host range, every guest page of the named guest range in every
    /// VM, and every host page backing that guest range before or after the step (the host CPU
    /// view, which is also the DMA view).
    fn check_touched(&self, op: &Op, backing_before: &[u64]) {
        let (host, guest) = Self::named(op);
        if let Some((p, n)) = host {
            for k in p..(p + n).min(RAM_PAGES) {
                self.check_host_page(k);
            }
        }
        if let Some((i, n)) = guest {
            self.check_guest_pages(i, n);
        }
        for k in backing_before.iter().chain(self.backing(op).iter()) {
            self.check_host_page(*k);
        }
    }

    fn check_everything(&self, step: u64) {
        if let Err(e) = verso::mem::check::check_consistency(&self.w.own, &self.w.plat) {
            panic!("step {step}: {e}");
        }
        for k in 0..RAM_PAGES {
            self.check_host_page(k);
        }
        // Guest views: every mapping the tables have is the model's and vice versa.
        self.w.own.inspect(|vms, host, _| {
            let live: Vec<VmHandle> = vms.handles().collect();
            assert_eq!(
                live,
                self.m.vms.keys().copied().collect::<Vec<_>>(),
                "step {step}: VM set"
            );
            for h in live {
                let g = vms.get(h).unwrap().guest.lock();
                let mut seen = BTreeMap::new();
                for (ipa, n, l) in chunks(&g.stage2, &self.w.plat) {
                    for k in 0..n {
                        let gp = match l {
                            Lookup::Mapped { pa, leaf, level } => {
                                let pa = pa.add(k * PAGE_SIZE);
                                GPage::Mapped {
                                    pa: (pa.raw() - mem_support::RAM) / PAGE_SIZE,
                                    state: guest_state(&Lookup::Mapped { pa, leaf, level }, host),
                                }
                            }
                            _ => GPage::Poisoned,
                        };
                        seen.insert(ipa.raw() / PAGE_SIZE + k, gp);
                    }
                }
                assert_eq!(
                    seen, self.m.vms[&h].map,
                    "step {step}: guest {h:?} tables differ from the model"
                );
                assert_eq!(vms.get(h).unwrap().dying, self.m.vms[&h].dying);
            }
        });
    }
}

#[test]
fn random_transition_sequences_agree_with_the_model_in_every_view() {
    let seed = std::env::var("VERSO_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f7e5);
    let steps: u64 = std::env::var("VERSO_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    eprintln!("model test: seed {seed} (replay with VERSO_SEED={seed}), {steps} steps");
    let w = World::new(RAM_PAGES);
    let mut t = Test {
        w,
        m: Model {
            pages: vec![Page::Host; RAM_PAGES as usize],
            vms: BTreeMap::new(),
        },
        rng: Rng(seed),
        handles: vec![VmHandle(0), VmHandle(0x1000 + MAX_VMS as u16)],
    };
    // Start with a few VMs; the random sequence creates and destroys more.
    for k in 0..3 {
        let op = Op::CreateVm(RAM_PAGES - 40 * (k + 1), 40);
        assert!(t.step(0, &op), "initial VM");
    }
    let mut succeeded = 0u64;
    let mut per_op: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for step in 0..steps {
        let op = t.random_op();
        let backing = t.backing(&op);
        let ok = t.step(step, &op);
        succeeded += u64::from(ok);
        let name = format!("{op:?}");
        let e = per_op
            .entry(name[..name.find('(').unwrap_or(name.len())].to_string())
            .or_default();
        *e = (e.0 + u64::from(ok), e.1 + 1);
        t.check_touched(&op, &backing);
        if step % 1000 == 999 {
            t.check_everything(step);
        }
    }
    t.check_everything(steps);
    eprintln!(
        "model test: {succeeded} of {steps} steps succeeded; per operation (ok, calls): {per_op:?}"
    );
    // A run where (almost) everything is refused would prove little: every kind of operation
    // must have succeeded many times (refusals are checked just as exactly).
    if steps >= 100_000 {
        for (name, (ok, _)) in &per_op {
            assert!(*ok >= 25, "{name} succeeded only {ok} times");
        }
    }
}
