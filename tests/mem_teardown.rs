//! Teardown always completes: whatever state a VM died in, the host gets every page back.

mod mem_support;

use mem_support::{World, RAM};
use verso::addr::PAGE_SIZE;
use verso::error::Error;
use verso::mem::decode::HostCall;

const RAM_PFN: u64 = RAM / PAGE_SIZE;

/// A dying VM whose memcache is spent can still be given back every page the host lent it:
/// unmapping whole leaf entries needs no new table page, so it must not be refused with NoMem.
/// (Found by `examples/fuzz_transitions`: such a VM could never be finalized.)
#[test]
fn dying_vm_with_spent_memcache_still_returns_every_lent_page() {
    let mut w = World::new(2048);
    let vm = w.create_vm(0, 8);
    let h = u64::from(vm.0);
    // Lend pages at IPAs 2 MiB apart (each needs a new last-level table) until the memcache
    // cannot pay for another table.
    let mut lent = Vec::new();
    for k in 0..64u64 {
        let (pfn, gfn) = (RAM_PFN + 64 + k, k * 512);
        match w
            .own
            .host_call(&mut w.plat, HostCall::ShareGuest, [pfn, 1, h, gfn, 3])
        {
            Ok(_) => lent.push((pfn, gfn)),
            Err(Error::NoMem) => break,
            Err(e) => panic!("share {k}: {e:?}"),
        }
    }
    assert!(
        lent.len() >= 2,
        "the memcache paid for {} shares",
        lent.len()
    );
    let (pfn, gfn) = (RAM_PFN + 200, 100 * 512);
    assert_eq!(
        w.own
            .host_call(&mut w.plat, HostCall::ShareGuest, [pfn, 1, h, gfn, 3]),
        Err(Error::NoMem),
        "the memcache is spent"
    );

    w.own.start_teardown(vm).expect("start teardown");
    for &(_, gfn) in &lent {
        w.own
            .host_call(&mut w.plat, HostCall::UnshareGuest, [h, gfn, 1, 0, 0])
            .unwrap_or_else(|e| panic!("unshare gfn {gfn:#x} of a dying VM: {e:?}"));
    }
    w.own
        .finalize_teardown(&mut w.plat, vm)
        .expect("finalize once every page is back");
    w.check();
    for &(pfn, _) in &lent {
        let pa = w.pages(pfn - RAM_PFN, 1).start();
        w.own.inspect(|_, host, _| {
            let m = host.meta(pa).expect("RAM page");
            assert_eq!(m.guest_shares(), 0, "{pa:?} still counted as lent");
        });
    }
}
