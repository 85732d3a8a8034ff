//! Invalidation discipline at the transition level: with the recording fake platform, every
//! translation a transition removed was covered by an invalidation issued before it returned
//! (and before the page was scrubbed or handed on), and a 512-page conversion asks for O(1)
//! invalidations, not 512.

mod mem_support;

use mem_support::World;
use verso::addr::{Ipa, PageRange, PhysAddr, Vmid, PAGE_SIZE};
use verso::pgtable::{Lookup, Stage2};
use verso::testing::TlbOp;
use verso::vm::VmHandle;

/// Block-aligned host pages and IPAs for a 512-page (2 MiB) conversion.
const P: u64 = 512;
const I: u64 = 1024;

fn setup() -> (World, VmHandle) {
    let mut w = World::new(2048);
    let vm = w.create_vm(0, 16);
    (w, vm)
}

fn maps(s2: &Stage2, w: &World, ipa: u64) -> bool {
    matches!(s2.lookup(&w.plat, Ipa(ipa)), Lookup::Mapped { .. })
}

/// Translations (vmid, ipa) of `ipas` that `before` had and the tables no longer have must be
/// covered by a logged invalidation; returns how many invalidation requests were logged.
fn assert_revocations_covered(
    w: &World,
    vmid: Vmid,
    ipas: &[u64],
    before: &[bool],
    now: &[bool],
) -> usize {
    let log = w.plat.log();
    for ((ipa, b), n) in ipas.iter().zip(before).zip(now) {
        if *b && !*n {
            assert!(
                log.iter().any(|op| op.covers(vmid, Ipa(*ipa))),
                "revoked {vmid:?} {ipa:#x} without an invalidation: {log:?}"
            );
        }
    }
    log.iter()
        .filter(|op| matches!(op, TlbOp::Ipa { .. } | TlbOp::Vmid(_)))
        .count()
}

fn host_views(w: &World, pages: PageRange<PhysAddr>) -> Vec<bool> {
    w.own.inspect(|_, h, _| {
        pages
            .iter()
            .map(|pa| maps(h.stage2(), w, pa.raw()))
            .collect()
    })
}

fn guest_views(w: &World, vm: VmHandle, ipas: PageRange<Ipa>) -> Vec<bool> {
    w.own.inspect(|vms, _, _| {
        let g = vms.get(vm).unwrap().guest.lock();
        ipas.iter().map(|i| maps(&g.stage2, w, i.raw())).collect()
    })
}

#[test]
fn donate_guest_revokes_host_cpu_and_dma_access_before_return_with_one_invalidation() {
    let (mut w, vm) = setup();
    let pages = w.pages(P, 512);
    let before = host_views(&w, pages);
    w.plat.clear_log();
    w.own
        .host_donate_guest(&mut w.plat, pages, vm, Ipa(I * PAGE_SIZE))
        .unwrap();
    let now = host_views(&w, pages);
    assert!(now.iter().all(|m| !m), "host still maps donated pages");
    let ipas: Vec<u64> = pages.iter().map(|p| p.raw()).collect();
    let n = assert_revocations_covered(&w, Vmid::HOST, &ipas, &before, &now);
    assert!(n <= 2, "512-page donation issued {n} invalidations");
    w.check();
}

#[test]
fn unshare_revokes_host_access_before_return() {
    let (mut w, vm) = setup();
    let pages = w.pages(P, 512);
    let ipas = World::ipas(I, 512);
    w.own
        .host_donate_guest(&mut w.plat, pages, vm, ipas.start())
        .unwrap();
    w.plat.clear_log();
    w.own.guest_share_host(&mut w.plat, vm, ipas).unwrap();
    // Making invalid entries valid (and flipping software bits) needs no invalidation.
    assert!(
        !w.plat
            .log()
            .iter()
            .any(|op| matches!(op, TlbOp::Ipa { .. } | TlbOp::Vmid(_))),
        "share invalidated needlessly: {:?}",
        w.plat.log()
    );
    let before = host_views(&w, pages);
    assert!(before.iter().all(|m| *m));
    w.plat.clear_log();
    w.own.guest_unshare_host(&mut w.plat, vm, ipas).unwrap();
    let now = host_views(&w, pages);
    assert!(now.iter().all(|m| !m));
    let list: Vec<u64> = pages.iter().map(|p| p.raw()).collect();
    let n = assert_revocations_covered(&w, Vmid::HOST, &list, &before, &now);
    assert!(n <= 2, "512-page unshare issued {n} invalidations");
    w.check();
}

#[test]
fn relinquish_invalidates_the_guest_before_scrubbing_and_zeroes_the_page() {
    let (mut w, vm) = setup();
    let pages = w.pages(P, 512);
    let ipas = World::ipas(I, 512);
    for pa in pages.iter() {
        w.fill(pa, 0xa5);
    }
    w.own
        .host_donate_guest(&mut w.plat, pages, vm, ipas.start())
        .unwrap();
    let before = guest_views(&w, vm, ipas);
    w.plat.clear_log();
    w.own
        .guest_relinquish_to_host(&mut w.plat, vm, ipas)
        .unwrap();
    let now = guest_views(&w, vm, ipas);
    let vmid = vm.vmid().unwrap();
    let list: Vec<u64> = ipas.iter().map(|i| i.raw()).collect();
    let n = assert_revocations_covered(&w, vmid, &list, &before, &now);
    assert!(n <= 2, "512-page relinquish issued {n} invalidations");
    let log = w.plat.log();
    let tlbi = log
        .iter()
        .position(|op| op.covers(vmid, ipas.start()))
        .unwrap();
    let clean = log
        .iter()
        .position(|op| matches!(op, TlbOp::CleanInval { .. }))
        .unwrap();
    assert!(
        tlbi < clean,
        "scrubbed before the guest lost access: {log:?}"
    );
    assert!(
        pages.iter().all(|pa| w.page_is(pa, 0)),
        "relinquished pages not zeroed"
    );
    w.check();
}

#[test]
fn host_unshare_guest_invalidates_the_guest_mapping_and_keeps_content() {
    let (mut w, vm) = setup();
    let pages = w.pages(P, 512);
    let ipas = World::ipas(I, 512);
    w.fill(pages.start(), 0x3c);
    w.own
        .host_share_guest(
            &mut w.plat,
            pages,
            vm,
            ipas.start(),
            verso::pgtable::Perms::RW,
        )
        .unwrap();
    let before = guest_views(&w, vm, ipas);
    w.plat.clear_log();
    w.own.host_unshare_guest(&mut w.plat, vm, ipas).unwrap();
    let now = guest_views(&w, vm, ipas);
    let list: Vec<u64> = ipas.iter().map(|i| i.raw()).collect();
    let n = assert_revocations_covered(&w, vm.vmid().unwrap(), &list, &before, &now);
    assert!(n <= 2, "512-page unshare issued {n} invalidations");
    assert!(
        w.page_is(pages.start(), 0x3c),
        "sharing is in place: content must survive"
    );
    w.check();
}

#[test]
fn reclaim_of_a_dying_guest_invalidates_scrubs_and_returns_every_page() {
    let (mut w, vm) = setup();
    let pages = w.pages(P, 512);
    let ipas = World::ipas(I, 512);
    for pa in pages.iter() {
        w.fill(pa, 0x77);
    }
    w.own
        .host_donate_guest(&mut w.plat, pages, vm, ipas.start())
        .unwrap();
    w.own.start_teardown(vm).unwrap();
    let before = guest_views(&w, vm, ipas);
    w.plat.clear_log();
    w.own.host_reclaim_guest(&mut w.plat, vm, ipas).unwrap();
    let now = guest_views(&w, vm, ipas);
    let list: Vec<u64> = ipas.iter().map(|i| i.raw()).collect();
    assert!(assert_revocations_covered(&w, vm.vmid().unwrap(), &list, &before, &now) <= 2);
    assert!(pages.iter().all(|pa| w.page_is(pa, 0)));
    assert!(host_views(&w, pages).iter().all(|m| *m));
    w.own.finalize_teardown(&mut w.plat, vm).unwrap();
    w.check();
    // Every page the VM ever held is the host's again.
    let held = w.pages(0, 16);
    assert!(host_views(&w, held).iter().all(|m| *m));
}

/// MEM_SHARE / MEM_UNSHARE of one page inside a guest's 2 MiB block change the host's side only
/// (docs/decisions/guest-shared-state.md): the guest's block stays one block, nothing is
/// invalidated for the guest's VMID, the guest state still reads as the conversion says, and
/// MEM_UNSHARE's host invalidation covers the page.
#[test]
fn one_page_conversion_keeps_the_guest_block_and_never_invalidates_the_guest() {
    let (mut w, vm) = setup();
    let pages = w.pages(P, 512);
    let ipas = World::ipas(I, 512);
    w.own
        .host_donate_guest(&mut w.plat, pages, vm, ipas.start())
        .unwrap();
    let guest = |w: &World, ipa: Ipa| {
        w.own.inspect(|vms, h, _| {
            let g = vms.get(vm).unwrap().guest.lock();
            let l = g.stage2.lookup(&w.plat, ipa);
            let level = match l {
                Lookup::Mapped { level, .. } => level,
                other => panic!("guest lost {ipa:?}: {other:?}"),
            };
            (g.stage2.vmid(), level, verso::mem::guest_state(&l, h))
        })
    };
    for k in [0, 7, 511] {
        let one = World::ipas(I + k, 1);
        let pa = w.pages(P + k, 1);
        let (vmid, level, state) = guest(&w, one.start());
        assert_eq!((level, state), (2, verso::mem::PageState::Owned));
        let touches_guest = |w: &World| {
            w.plat.log().iter().any(|op| match op {
                TlbOp::Ipa { vmid: v, .. } | TlbOp::Vmid(v) => *v == vmid,
                _ => false,
            })
        };

        w.plat.clear_log();
        w.own.guest_share_host(&mut w.plat, vm, one).unwrap();
        assert_eq!(
            guest(&w, one.start()),
            (vmid, 2, verso::mem::PageState::SharedOwned),
            "page {k}: after MEM_SHARE"
        );
        assert!(
            !touches_guest(&w),
            "MEM_SHARE invalidated the guest: {:?}",
            w.plat.log()
        );
        assert_eq!(host_views(&w, pa), [true], "page {k}: host cannot see it");

        w.plat.clear_log();
        w.own.guest_unshare_host(&mut w.plat, vm, one).unwrap();
        assert_eq!(
            guest(&w, one.start()),
            (vmid, 2, verso::mem::PageState::Owned),
            "page {k}: after MEM_UNSHARE"
        );
        assert!(
            !touches_guest(&w),
            "MEM_UNSHARE invalidated the guest: {:?}",
            w.plat.log()
        );
        let now = host_views(&w, pa);
        let n = assert_revocations_covered(&w, Vmid::HOST, &[pa.start().raw()], &[true], &now);
        assert_eq!((now, n), (vec![false], 1), "page {k}: host revocation");
        w.check();
    }
}
