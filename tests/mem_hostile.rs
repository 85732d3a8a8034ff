//! Hostile arguments: whatever raw register values a host or guest passes, the decode +
//! transition layer answers with the exact error and changes nothing (a full snapshot of every
//! table, the metadata, the allocators and the VM table is compared), and never panics.

mod mem_support;

use mem_support::{World, HIDDEN, MMIO, RAM};
use verso::addr::PAGE_SIZE;
use verso::error::Error::{self, *};
use verso::mem::decode::{GuestCall, HostCall, MAX_PAGES_PER_CALL};
use verso::pgtable::Perms;
use verso::vm::VmHandle;

fn setup() -> (World, VmHandle) {
    let mut w = World::new(1024);
    let vm = w.create_vm(0, 16);
    (w, vm)
}

/// Run a host call and require `expected` with no state change.
#[track_caller]
fn refused(w: &mut World, call: HostCall, args: [u64; 5], expected: Error) {
    let before = w.snapshot();
    assert_eq!(
        w.own.host_call(&mut w.plat, call, args),
        Err(expected),
        "{call:?} {args:x?}"
    );
    assert_eq!(
        w.snapshot(),
        before,
        "refused {call:?} {args:x?} changed state"
    );
}

const RAM_PFN: u64 = RAM / PAGE_SIZE;

#[test]
fn ranges_that_overflow_wrap_or_are_empty_are_refused_exactly() {
    let (mut w, vm) = setup();
    let h = u64::from(vm.0);
    refused(
        &mut w,
        HostCall::ShareHyp,
        [RAM_PFN + 100, 0, 0, 0, 0],
        Invalid,
    );
    refused(&mut w, HostCall::ShareHyp, [u64::MAX, 1, 0, 0, 0], Range);
    refused(
        &mut w,
        HostCall::ShareHyp,
        [(u64::MAX >> 12) - 1, 8, 0, 0, 0],
        Range,
    );
    refused(
        &mut w,
        HostCall::ShareHyp,
        [RAM_PFN, u64::MAX, 0, 0, 0],
        Range,
    );
    refused(
        &mut w,
        HostCall::ShareHyp,
        [RAM_PFN, MAX_PAGES_PER_CALL + 1, 0, 0, 0],
        Range,
    );
    refused(
        &mut w,
        HostCall::DonateGuest,
        [RAM_PFN + 100, 1, h, u64::MAX, 0],
        Range,
    );
    refused(
        &mut w,
        HostCall::DonateGuest,
        [RAM_PFN + 100, 0, h, 0, 0],
        Invalid,
    );
    refused(
        &mut w,
        HostCall::UnshareGuest,
        [h, u64::MAX >> 12, 2, 0, 0],
        Range,
    );
    refused(&mut w, HostCall::ReclaimGuest, [h, 0, 0, 0, 0], Invalid);
}

#[test]
fn ranges_beyond_ram_or_the_ipa_size_are_out_of_range() {
    let (mut w, vm) = setup();
    let h = u64::from(vm.0);
    // Past the end of RAM, straddling its end, below its start.
    refused(
        &mut w,
        HostCall::ShareHyp,
        [RAM_PFN + 1024, 1, 0, 0, 0],
        Range,
    );
    refused(
        &mut w,
        HostCall::ShareHyp,
        [RAM_PFN + 1020, 8, 0, 0, 0],
        Range,
    );
    refused(
        &mut w,
        HostCall::DonateGuest,
        [RAM_PFN - 1, 2, h, 0, 0],
        Range,
    );
    // Guest IPAs at and across the 32-bit IPA limit.
    let limit = 1u64 << (mem_support::GUEST_IPA_BITS - 12);
    refused(
        &mut w,
        HostCall::DonateGuest,
        [RAM_PFN + 100, 1, h, limit, 0],
        Range,
    );
    refused(
        &mut w,
        HostCall::DonateGuest,
        [RAM_PFN + 100, 4, h, limit - 2, 0],
        Range,
    );
    refused(
        &mut w,
        HostCall::ShareGuest,
        [RAM_PFN + 100, 1, h, limit, 3],
        Range,
    );
    refused(
        &mut w,
        HostCall::UnshareGuest,
        [h, limit - 1, 2, 0, 0],
        Range,
    );
}

#[test]
fn mmio_and_hyp_memory_cannot_be_shared_donated_or_reclaimed() {
    let (mut w, vm) = setup();
    let h = u64::from(vm.0);
    let hyp_pfn = w.hyp_base() / PAGE_SIZE;
    for pfn in [MMIO / PAGE_SIZE, HIDDEN / PAGE_SIZE] {
        refused(&mut w, HostCall::ShareHyp, [pfn, 1, 0, 0, 0], Range);
        refused(&mut w, HostCall::DonateGuest, [pfn, 1, h, 0, 0], Range);
        refused(&mut w, HostCall::ShareGuest, [pfn, 1, h, 0, 3], Range);
        refused(&mut w, HostCall::CreateVm, [pfn, 1, 0, 0, 0], Range);
    }
    refused(&mut w, HostCall::ShareHyp, [hyp_pfn, 1, 0, 0, 0], Perm);
    refused(
        &mut w,
        HostCall::DonateGuest,
        [hyp_pfn + 3, 1, h, 0, 0],
        Perm,
    );
    refused(&mut w, HostCall::ShareGuest, [hyp_pfn, 1, h, 0, 3], Perm);
    refused(
        &mut w,
        HostCall::ForceReclaimGuest,
        [hyp_pfn, 1, 0, 0, 0],
        Perm,
    );
    refused(&mut w, HostCall::TopupMemcache, [h, hyp_pfn, 1, 0, 0], Perm);
    // The VM's own memcache pages belong to the hyp now.
    refused(&mut w, HostCall::ShareHyp, [RAM_PFN, 1, 0, 0, 0], Perm);
    let before = w.snapshot();
    let memcache = w.pages(0, 1);
    assert_eq!(w.own.hyp_donate_host(&mut w.plat, memcache), Err(Busy));
    assert_eq!(w.snapshot(), before);
}

#[test]
fn unknown_vm_handles_are_not_found() {
    let (mut w, _) = setup();
    for h in [0, 1, 0x0fff, 0x1001, 0x1000 + 64, 0xffff, 1 << 16, u64::MAX] {
        let expect = NotFound;
        refused(
            &mut w,
            HostCall::DonateGuest,
            [RAM_PFN + 100, 1, h, 0, 0],
            expect,
        );
        refused(
            &mut w,
            HostCall::ShareGuest,
            [RAM_PFN + 100, 1, h, 0, 3],
            expect,
        );
        refused(&mut w, HostCall::UnshareGuest, [h, 0, 1, 0, 0], expect);
        refused(&mut w, HostCall::ReclaimGuest, [h, 0, 1, 0, 0], expect);
        refused(
            &mut w,
            HostCall::TopupMemcache,
            [h, RAM_PFN + 100, 1, 0, 0],
            expect,
        );
        refused(&mut w, HostCall::StartTeardown, [h, 0, 0, 0, 0], expect);
        refused(&mut w, HostCall::FinalizeTeardown, [h, 0, 0, 0, 0], expect);
        if let Ok(h) = u16::try_from(h) {
            let before = w.snapshot();
            let r = w
                .own
                .guest_call(&mut w.plat, VmHandle(h), GuestCall::Share, 0, 1);
            assert_eq!(r, Err(NotFound));
            assert_eq!(w.snapshot(), before);
        }
    }
}

#[test]
fn unaligned_addresses_and_bad_permissions_are_refused() {
    let (mut w, vm) = setup();
    let h = u64::from(vm.0);
    refused(
        &mut w,
        HostCall::ShareGuest,
        [RAM_PFN + 100, 1, h, 0, 0],
        Invalid,
    );
    refused(
        &mut w,
        HostCall::ShareGuest,
        [RAM_PFN + 100, 1, h, 0, 8],
        Invalid,
    );
    for ipa in [1, 0x800, 0xfff] {
        let before = w.snapshot();
        assert_eq!(
            w.own.guest_call(&mut w.plat, vm, GuestCall::Share, ipa, 1),
            Err(Align)
        );
        assert_eq!(w.snapshot(), before);
    }
    let before = w.snapshot();
    let pages = w.pages(100, 1);
    let r = w
        .own
        .host_share_guest(&mut w.plat, pages, vm, verso::addr::Ipa(0x1800), Perms::RW);
    assert_eq!(r, Err(Align));
    assert_eq!(w.snapshot(), before);
}

#[test]
fn a_short_memcache_refuses_with_nomem_and_changes_nothing() {
    let mut w = World::new(1024);
    // One page: the root table, nothing left for the levels below it.
    let vm = w.create_vm(0, 1);
    let h = u64::from(vm.0);
    refused(
        &mut w,
        HostCall::DonateGuest,
        [RAM_PFN + 100, 1, h, 0, 0],
        NoMem,
    );
    refused(
        &mut w,
        HostCall::ShareGuest,
        [RAM_PFN + 100, 1, h, 0, 3],
        NoMem,
    );
    // Topped up, the same call succeeds.
    w.own
        .host_call(
            &mut w.plat,
            HostCall::TopupMemcache,
            [h, RAM_PFN + 10, 4, 0, 0],
        )
        .unwrap();
    w.own
        .host_call(
            &mut w.plat,
            HostCall::DonateGuest,
            [RAM_PFN + 100, 1, h, 0, 0],
        )
        .unwrap();
    // A memcache cannot hold more than its capacity.
    refused(
        &mut w,
        HostCall::TopupMemcache,
        [h, RAM_PFN + 200, 64, 0, 0],
        NoMem,
    );
    w.check();
}

#[test]
fn an_exhausted_host_table_pool_refuses_with_nomem_and_changes_nothing() {
    let (mut w, vm) = setup();
    w.own.lock_host().allocator_mut().limit_free(0);
    // Page 700 sits inside an untouched 2 MiB block of the host stage-2: taking it needs a table.
    refused(
        &mut w,
        HostCall::DonateGuest,
        [RAM_PFN + 700, 1, u64::from(vm.0), 0, 0],
        NoMem,
    );
    let before = w.snapshot();
    let page = w.pages(700, 1);
    assert_eq!(w.own.host_donate_hyp(&mut w.plat, page), Err(NoMem));
    assert_eq!(w.snapshot(), before);
}

#[test]
fn share_count_overflow_is_refused_not_wrapped() {
    let (mut w, vm) = setup();
    let vm2 = w.create_vm(16, 16);
    let page = w.pages(100, 1);
    w.own
        .host_share_guest(&mut w.plat, page, vm, verso::addr::Ipa(0), Perms::RW)
        .unwrap();
    w.own
        .lock_host()
        .debug_set_guest_shares(page.start(), u32::MAX);
    let before = w.snapshot();
    let r = w
        .own
        .host_share_guest(&mut w.plat, page, vm2, verso::addr::Ipa(0), Perms::RW);
    assert_eq!(r, Err(Busy));
    assert_eq!(w.snapshot(), before);
}

#[test]
fn content_survives_share_and_unshare_in_place() {
    let (mut w, vm) = setup();
    let pages = w.pages(100, 4);
    for (k, pa) in pages.iter().enumerate() {
        w.fill(pa, k as u8 + 1);
    }
    let ipas = World::ipas(8, 4);
    w.own
        .host_donate_guest(&mut w.plat, pages, vm, ipas.start())
        .unwrap();
    w.own.guest_share_host(&mut w.plat, vm, ipas).unwrap();
    w.own.guest_unshare_host(&mut w.plat, vm, ipas).unwrap();
    for (k, pa) in pages.iter().enumerate() {
        assert!(w.page_is(pa, k as u8 + 1), "page {k} lost its content");
    }
    w.check();
}
