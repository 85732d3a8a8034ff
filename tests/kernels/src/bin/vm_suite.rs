//! The host-role VM suite: runs as Verso's host on `-smp 4`, creates protected VMs running
//! `guest-worker` (loaded by QEMU at 0x5000_0000 and donated in place), and checks in-place
//! conversion end to end: what the host can and cannot touch, what the guest sees, the
//! conversion log, teardown, isolation between VMs, FP/SIMD state, and every illegal call.
//!
//! Each negative test proves both halves: the exact error (or the injected abort with its
//! syndrome) *and* that nothing changed: page contents through the guest and the host, host
//! access still as before, and the conversion log's head unmoved.
#![no_std]
#![no_main]

use verso_test_kernels::exception::{
    probe_read_u64, probe_write_u64, Fault, EC_DATA_ABORT_SAME_EL,
};
use verso_test_kernels::harness::{run_suite, Failure, Test, TestResult};
use verso_test_kernels::mailbox::{
    self, cmd, guest_call as gc, hvc_holding_vregs, pattern, VRegs, MAILBOX,
};
use verso_test_kernels::vmm::{
    self, alloc_pages, call_ok, call_status, exit, expect_status, first_nonzero, id, read, status,
    write, Vm, GUEST_IMAGE_PA, PAGE, RUN_COMPLETE, VM_CREATE_PAGES,
};
use verso_test_kernels::{ensure, fail, println, tests};

verso_test_kernels::entry!(main);

fn main() -> ! {
    run_suite("vm", TESTS)
}

/// Guest IPAs the tests use for data: 16 MiB above the image, 2 MiB aligned.
const DATA_IPA: u64 = 0x4100_0000;
/// A second, far data area (another level-1 entry: needs its own table pages).
const FAR_IPA: u64 = 0x6000_0000;
/// An IPA no guest has memory at.
const HOLE_IPA: u64 = 0x4800_0000;
/// The hyp's memory (docs/boot.md).
const HYP_BASE: u64 = 0x4020_0000;
/// QEMU virt's PL011: MMIO, not RAM.
const UART_PA: u64 = 0x0900_0000;
/// A handle no VM has.
const BOGUS_HANDLE: u64 = 0x7777;
/// Log entry states.
const LOG_SHARED: u64 = 1;
const LOG_PRIVATE: u64 = 2;
const LOG_RELINQUISHED: u64 = 3;
const TWO_MIB: u64 = 0x20_0000;

static TESTS: &[Test] = tests![
    vm_boots_from_the_loaded_image_in_place_and_gets_x0,
    guest_smccc_version_uid_and_features_match_kvm,
    guest_hyp_meminfo_reports_4k_granule_and_range_abi,
    host_cannot_read_or_write_a_guest_private_page,
    mem_share_exposes_the_same_physical_page_in_place,
    mem_unshare_revokes_host_access_at_once_and_guest_keeps_data,
    range_share_of_512_pages_straddling_2mib,
    range_share_of_a_2mib_aligned_range,
    mem_relinquish_returns_a_zeroed_page_to_the_host,
    access_to_ipa_without_memory_exits_and_host_can_donate,
    mem_share_of_ipa_without_memory_exits_to_host,
    illegal_guest_calls_are_invalid_and_change_nothing,
    relinquish_of_a_shared_page_is_invalid_and_changes_nothing,
    conversion_log_holds_every_conversion_in_order,
    conversion_log_overflow_is_flagged_not_lost,
    two_vms_cannot_touch_each_others_pages,
    same_page_cannot_be_donated_twice,
    illegal_host_donations_are_refused_and_change_nothing,
    host_share_guest_lends_a_page_and_read_only_is_enforced,
    vm_reclaim_of_a_live_vm_is_refused,
    vcpu_of_a_dying_vm_does_not_run,
    memcache_too_small_is_no_mem_and_changes_nothing,
    teardown_returns_every_page_zeroed_and_reusable,
    fp_simd_registers_survive_guest_and_host,
    guest_psci_system_off_exits_to_host,
];

// ---------------------------------------------------------------------------------------------
// Helpers

/// Checks an abort injected into the host for an access to `pa`.
fn check_host_abort(f: Fault, write: bool, pa: u64) -> TestResult {
    ensure!(
        f.ec() == EC_DATA_ABORT_SAME_EL,
        "expected a data abort, got {f}"
    );
    ensure!(
        f.is_external_abort(),
        "expected a synchronous external abort, got {f}"
    );
    ensure!(f.wnr() == write, "WnR should be {}: {f}", write as u8);
    ensure!(f.far == pa, "FAR should be {pa:#x}: {f}");
    Ok(())
}

/// The host can neither read nor write `pa` (each access gets an injected abort).
fn host_denied(pa: u64) -> TestResult {
    match probe_read_u64(pa) {
        Ok(v) => fail!("host read of {pa:#x} succeeded ({v:#x})"),
        Err(f) => check_host_abort(f, false, pa)?,
    }
    // SAFETY: `pa` is a page the host must not reach; a store that lands is the bug reported
    // here (and the caller's content check sees it).
    match unsafe { probe_write_u64(pa, 0xdead_beef) } {
        Ok(()) => fail!("host write to {pa:#x} succeeded"),
        Err(f) => check_host_abort(f, true, pa),
    }
}

/// The host can read `pa` (returns the word).
fn host_reads(pa: u64) -> Result<u64, Failure> {
    match probe_read_u64(pa) {
        Ok(v) => Ok(v),
        Err(f) => fail!("host read of {pa:#x} aborted: {f}"),
    }
}

/// Checks every word of `pages` pages at host `pa` against the pattern the guest wrote at `ipa`.
fn host_sees_pattern(pa: u64, ipa: u64, pages: u64, seed: u64) -> TestResult {
    host_reads(pa)?;
    for off in (0..pages * PAGE).step_by(8) {
        let (got, want) = (read(pa + off), pattern(seed, ipa + off));
        ensure!(
            got == want,
            "host reads {got:#x} at PA {:#x}, the guest wrote {want:#x} at IPA {:#x}",
            pa + off,
            ipa + off
        );
    }
    Ok(())
}

/// A guest conversion call; returns x0, x1.
fn convert(vm: &mut Vm, function: u64, ipa: u64, pages: u64) -> Result<(u64, u64), Failure> {
    let r = vm.guest_call(function, ipa, pages, 0)?;
    Ok((r[0], r[1]))
}

/// A guest conversion call that must succeed on all `pages` pages.
fn convert_ok(vm: &mut Vm, function: u64, ipa: u64, pages: u64) -> TestResult {
    let (x0, x1) = convert(vm, function, ipa, pages)?;
    ensure!(
        x0 == 0,
        "guest call {function:#x}({ipa:#x}, {pages}) returned {}",
        x0 as i64
    );
    let want = pages.max(1);
    ensure!(
        x1 == want,
        "guest call {function:#x}: x1 = {x1}, expected {want}"
    );
    Ok(())
}

/// A guest call that must be refused with INVALID_PARAMETER.
fn convert_invalid(
    vm: &mut Vm,
    what: &str,
    function: u64,
    ipa: u64,
    pages: u64,
    x3: u64,
) -> TestResult {
    let r = vm.guest_call(function, ipa, pages, x3)?;
    ensure!(
        r[0] == gc::INVALID_PARAMETER,
        "{what}: x0 = {}, expected -3 (INVALID_PARAMETER)",
        r[0] as i64
    );
    Ok(())
}

/// A VM with `pages` private pages at `ipa` (donated from `align`-aligned host pages).
fn vm_with_data(arg: u64, ipa: u64, pages: u64, align: u64) -> Result<(Vm, u64), Failure> {
    let mut vm = Vm::boot(arg)?;
    let pa = vm.donate(ipa, pages, align)?;
    Ok((vm, pa))
}

/// The conversion log of a VM, in one host page registered with CONVLOG_REGISTER.
struct ConvLog {
    pa: u64,
    capacity: u64,
}

const LOG_MAGIC: u64 = 0x474c_4356;

impl ConvLog {
    fn register(vm: &Vm, pages: u64) -> Result<Self, Failure> {
        let pa = alloc_pages(pages, PAGE)?;
        call_ok(
            "CONVLOG_REGISTER",
            id::CONVLOG_REGISTER,
            &[vm.handle, pa / PAGE, pages],
        )?;
        let magic = read(pa) & 0xffff_ffff;
        let version = read(pa) >> 32;
        let capacity = read(pa + 8) & 0xffff_ffff;
        ensure!(
            magic == LOG_MAGIC,
            "log magic {magic:#x}, expected {LOG_MAGIC:#x}"
        );
        ensure!(version == 1, "log version {version}");
        let fits = (pages * PAGE - 64) / 32;
        ensure!(
            capacity > 0 && capacity <= fits,
            "log capacity {capacity} for {pages} pages (at most {fits})"
        );
        Ok(Self { pa, capacity })
    }
    fn head(&self) -> u64 {
        read(self.pa + 16)
    }
    fn tail(&self) -> u64 {
        read(self.pa + 24)
    }
    fn set_tail(&self, t: u64) {
        write(self.pa + 24, t);
    }
    fn dropped(&self) -> u64 {
        read(self.pa + 32)
    }
    /// Entry `seq`: (seq, ipa, pages, state).
    fn entry(&self, seq: u64) -> (u64, u64, u64, u64) {
        let e = self.pa + 64 + (seq % self.capacity) * 32;
        (
            read(e),
            read(e + 8),
            read(e + 16),
            read(e + 24) & 0xffff_ffff,
        )
    }
    fn expect_entry(&self, seq: u64, ipa: u64, pages: u64, state: u64) -> TestResult {
        let got = self.entry(seq);
        ensure!(
            got == (seq, ipa, pages, state),
            "log entry {seq}: (seq, ipa, pages, state) = {got:#x?}, expected {:#x?}",
            (seq, ipa, pages, state)
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Boot and the guest ABI

fn vm_boots_from_the_loaded_image_in_place_and_gets_x0() -> TestResult {
    let image = vmm::guest_image()?;
    let state = alloc_pages(VM_CREATE_PAGES, PAGE)?;
    let memcache = alloc_pages(vmm::MEMCACHE_PAGES, PAGE)?;
    let mut vm = Vm::boot_with(0x1234_5678_9abc, state, memcache, Some(GUEST_IMAGE_PA))?;
    // The very pages QEMU loaded are now the guest's: the host lost them, first and last.
    host_denied(GUEST_IMAGE_PA)?;
    host_denied(GUEST_IMAGE_PA + (image.pages - 1) * PAGE)?;
    // And the guest runs from them: its first instruction word is the Image header's branch.
    let head = vm.guest_read(vmm::GUEST_RAM_IPA)?;
    let want = read(vmm::GUEST_PRISTINE_PA);
    ensure!(
        head == Ok(want),
        "guest reads {head:#x?} at its first IPA, the loaded image starts with {want:#x}"
    );
    vm.teardown()
}

fn guest_smccc_version_uid_and_features_match_kvm() -> TestResult {
    let mut vm = Vm::boot(1)?;
    let r = vm.guest_call(0x8000_0000, 0, 0, 0)?;
    ensure!(r[0] == 0x1_0001, "SMCCC_VERSION = {:#x}", r[0]);
    let r = vm.guest_call(gc::KVM_UID, 0, 0, 0)?;
    let x3 = vm.command(cmd::LAST_X3, [0; 3])?[0];
    let uid = [r[0], r[1], r[2], x3];
    ensure!(uid == gc::KVM_UID_WORDS, "KVM UID = {uid:#x?}");
    let r = vm.guest_call(gc::KVM_FEATURES, 0, 0, 0)?;
    ensure!(
        r[0] == gc::KVM_FEATURES_BITMAP,
        "KVM features = {:#x}, expected {:#x}",
        r[0],
        gc::KVM_FEATURES_BITMAP
    );
    let r = vm.guest_call(0x8000_0001, gc::MEM_SHARE, 0, 0)?;
    ensure!(
        r[0] == 0,
        "SMCCC_ARCH_FEATURES(MEM_SHARE) = {}",
        r[0] as i64
    );
    Ok(())
}

fn guest_hyp_meminfo_reports_4k_granule_and_range_abi() -> TestResult {
    let mut vm = Vm::boot(2)?;
    let r = vm.guest_call(gc::HYP_MEMINFO, 0, 0, 0)?;
    ensure!(
        r[0] == 4096 && r[1] == 1,
        "HYP_MEMINFO = ({:#x}, {:#x})",
        r[0],
        r[1]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Private, shared, private again

fn host_cannot_read_or_write_a_guest_private_page() -> TestResult {
    let (mut vm, pa) = vm_with_data(3, DATA_IPA, 2, PAGE)?;
    vm.fill(DATA_IPA, 2, 0x11)?;
    host_denied(pa)?;
    host_denied(pa + PAGE + 8)?;
    vm.check(DATA_IPA, 2, 0x11)?;
    vm.teardown()
}

fn mem_share_exposes_the_same_physical_page_in_place() -> TestResult {
    let (mut vm, pa) = vm_with_data(4, DATA_IPA, 1, PAGE)?;
    vm.fill(DATA_IPA, 1, 0x22)?;
    convert_ok(&mut vm, gc::MEM_SHARE, DATA_IPA, 1)?;
    // The guest's bytes, at the physical page the host donated: nothing was copied.
    host_sees_pattern(pa, DATA_IPA, 1, 0x22)?;
    // The host's writes land in the guest's page.
    for off in (0..PAGE / 2).step_by(8) {
        write(pa + off, pattern(0x33, DATA_IPA + off));
    }
    // The first half is now the host's pattern, the second half still the guest's.
    let r = vm.command(cmd::CHECK, [DATA_IPA, 1, 0x33])?;
    ensure!(
        r[0] == 1 && r[1] == DATA_IPA + PAGE / 2,
        "guest's first mismatch with the host's writes: {r:#x?}, expected at {:#x}",
        DATA_IPA + PAGE / 2
    );
    let r = vm.guest_read(DATA_IPA + PAGE / 2)?;
    ensure!(
        r == Ok(pattern(0x22, DATA_IPA + PAGE / 2)),
        "second half changed: {r:#x?}"
    );
    convert_ok(&mut vm, gc::MEM_UNSHARE, DATA_IPA, 1)?;
    vm.teardown()
}

fn mem_unshare_revokes_host_access_at_once_and_guest_keeps_data() -> TestResult {
    let (mut vm, pa) = vm_with_data(5, DATA_IPA, 1, PAGE)?;
    vm.fill(DATA_IPA, 1, 0x44)?;
    convert_ok(&mut vm, gc::MEM_SHARE, DATA_IPA, 1)?;
    // The host touches it (a TLB entry now exists), then the guest takes it back.
    host_sees_pattern(pa, DATA_IPA, 1, 0x44)?;
    write(pa + 64, pattern(0x55, DATA_IPA + 64));
    convert_ok(&mut vm, gc::MEM_UNSHARE, DATA_IPA, 1)?;
    // The very next host access aborts (no stale translation).
    host_denied(pa + 64)?;
    host_denied(pa)?;
    let r = vm.guest_read(DATA_IPA + 64)?;
    ensure!(
        r == Ok(pattern(0x55, DATA_IPA + 64)),
        "guest lost the host's write: {r:#x?}"
    );
    let r = vm.guest_read(DATA_IPA + 128)?;
    ensure!(
        r == Ok(pattern(0x44, DATA_IPA + 128)),
        "guest lost its data: {r:#x?}"
    );
    vm.teardown()
}

fn range_share(ipa: u64, seed: u64) -> TestResult {
    const PAGES: u64 = 512;
    // 4 MiB of 2 MiB-aligned host pages at the 2 MiB-aligned DATA_IPA, so block mappings are
    // possible; the test shares 512 pages from `ipa` inside it.
    let (mut vm, pa) = vm_with_data(6, DATA_IPA, 1024, TWO_MIB)?;
    let pa_of = |i: u64| pa + (i - DATA_IPA);
    vm.fill(ipa, PAGES, seed)?;
    convert_ok(&mut vm, gc::MEM_SHARE, ipa, PAGES)?;
    host_sees_pattern(pa_of(ipa), ipa, PAGES, seed)?;
    // Just outside the range stays private.
    if ipa > DATA_IPA {
        host_denied(pa_of(ipa) - PAGE)?;
    }
    host_denied(pa_of(ipa) + PAGES * PAGE)?;
    convert_ok(&mut vm, gc::MEM_UNSHARE, ipa, PAGES)?;
    host_denied(pa_of(ipa))?;
    host_denied(pa_of(ipa) + 255 * PAGE)?;
    host_denied(pa_of(ipa) + (PAGES - 1) * PAGE)?;
    vm.check(ipa, PAGES, seed)?;
    vm.teardown()
}

fn range_share_of_512_pages_straddling_2mib() -> TestResult {
    range_share(DATA_IPA + 256 * PAGE, 0x66)
}

fn range_share_of_a_2mib_aligned_range() -> TestResult {
    range_share(DATA_IPA, 0x77)
}

fn mem_relinquish_returns_a_zeroed_page_to_the_host() -> TestResult {
    let mut vm = Vm::boot(7)?;
    let pa = vm.donate(DATA_IPA, 1, PAGE)?;
    let neighbour = vm.donate(DATA_IPA + PAGE, 1, PAGE)?;
    vm.fill(DATA_IPA, 2, 0x88)?;
    host_denied(pa)?;
    // pKVM's single form: x2 = 0 means one granule.
    convert_ok(&mut vm, gc::MEM_RELINQUISH, DATA_IPA, 0)?;
    host_reads(pa)?;
    if let Some((a, v)) = first_nonzero(pa, 1) {
        fail!("relinquished page holds {v:#x} at {a:#x}, not zero");
    }
    // The host's again: it writes it, and teardown must not count it as the VM's.
    write(pa, 0x1234);
    ensure!(read(pa) == 0x1234, "host cannot write its page back");
    vm.forget(DATA_IPA);
    // The neighbour stayed private and intact.
    host_denied(neighbour)?;
    vm.check(DATA_IPA + PAGE, 1, 0x88)?;
    // The guest has no page at the relinquished IPA any more: its read is a no-memory exit.
    let e = vm.send(cmd::READ, [DATA_IPA, 0, 0])?;
    ensure!(
        e.reason == exit::NO_MEMORY && e.detail[0] == DATA_IPA,
        "guest read of its relinquished IPA: {e}"
    );
    vm.teardown()
}

fn access_to_ipa_without_memory_exits_and_host_can_donate() -> TestResult {
    let mut vm = Vm::boot(8)?;
    let e = vm.send(cmd::READ, [HOLE_IPA + 8, 0, 0])?;
    ensure!(
        e.reason == exit::NO_MEMORY && e.detail[0] == HOLE_IPA,
        "guest read of an IPA without memory: expected a no-memory exit at {HOLE_IPA:#x}, got {e}"
    );
    // The host donates a page there and re-runs: the load is retried and sees the host's data.
    let pa = alloc_pages(1, PAGE)?;
    write(pa + 8, 0x5eed);
    vmm::clean_to_poc(pa, PAGE);
    vm.donate_at(pa, HOLE_IPA, 1)?;
    let e = vm.run(0, [0; 4])?;
    let r = Vm::reply_of(cmd::READ, e)?;
    ensure!(r == [0, 0x5eed, 0], "guest's retried read replied {r:#x?}");
    host_denied(pa)?;
    vm.teardown()
}

fn mem_share_of_ipa_without_memory_exits_to_host() -> TestResult {
    let mut vm = Vm::boot(9)?;
    let e = vm.send(cmd::CALL, [gc::MEM_SHARE, HOLE_IPA, 1])?;
    ensure!(
        e.reason == exit::NO_MEMORY && e.detail[0] == HOLE_IPA,
        "MEM_SHARE of an IPA without memory: expected a no-memory exit at {HOLE_IPA:#x}, got {e}"
    );
    // Donate and re-run: the hvc is re-executed and now shares the page.
    let pa = alloc_pages(1, PAGE)?;
    write(pa, 0x600d);
    vm.donate_at(pa, HOLE_IPA, 1)?;
    let e = vm.run(0, [0; 4])?;
    let r = Vm::reply_of(cmd::CALL, e)?;
    ensure!(
        r[0] == 0 && r[1] == 1,
        "re-executed MEM_SHARE replied {r:#x?}"
    );
    ensure!(host_reads(pa)? == 0x600d, "shared page lost its content");
    convert_ok(&mut vm, gc::MEM_UNSHARE, HOLE_IPA, 1)?;
    vm.teardown()
}

fn illegal_guest_calls_are_invalid_and_change_nothing() -> TestResult {
    let (mut vm, pa) = vm_with_data(10, DATA_IPA, 4, PAGE)?;
    let log = ConvLog::register(&vm, 1)?;
    vm.fill(DATA_IPA, 4, 0x99)?;
    convert_ok(&mut vm, gc::MEM_SHARE, DATA_IPA, 1)?;
    let head = log.head();
    // Share twice: the page stays shared (the host still reads it).
    convert_invalid(
        &mut vm,
        "share of a shared page",
        gc::MEM_SHARE,
        DATA_IPA,
        1,
        0,
    )?;
    host_sees_pattern(pa, DATA_IPA, 1, 0x99)?;
    // A range that is partly shared: nothing of it converts.
    convert_invalid(
        &mut vm,
        "share of a partly shared range",
        gc::MEM_SHARE,
        DATA_IPA,
        2,
        0,
    )?;
    host_denied(pa + PAGE)?;
    // Unshare of a private page, and of a range that is only partly shared.
    convert_invalid(
        &mut vm,
        "unshare of a private page",
        gc::MEM_UNSHARE,
        DATA_IPA + PAGE,
        1,
        0,
    )?;
    convert_invalid(
        &mut vm,
        "unshare of a partly shared range",
        gc::MEM_UNSHARE,
        DATA_IPA,
        2,
        0,
    )?;
    host_sees_pattern(pa, DATA_IPA, 1, 0x99)?;
    host_denied(pa + PAGE)?;
    // Malformed arguments.
    convert_invalid(
        &mut vm,
        "unaligned IPA",
        gc::MEM_SHARE,
        DATA_IPA + PAGE + 8,
        1,
        0,
    )?;
    convert_invalid(
        &mut vm,
        "IPA beyond the IPA space",
        gc::MEM_SHARE,
        1 << 56,
        1,
        0,
    )?;
    convert_invalid(
        &mut vm,
        "overflowing range",
        gc::MEM_SHARE,
        !(PAGE - 1),
        2,
        0,
    )?;
    convert_invalid(
        &mut vm,
        "huge count",
        gc::MEM_SHARE,
        DATA_IPA + PAGE,
        u64::MAX,
        0,
    )?;
    convert_invalid(&mut vm, "x3 != 0", gc::MEM_SHARE, DATA_IPA + PAGE, 1, 1)?;
    convert_invalid(
        &mut vm,
        "relinquish of a range running past the memory",
        gc::MEM_RELINQUISH,
        DATA_IPA + PAGE,
        8,
        0,
    )?;
    convert_invalid(
        &mut vm,
        "unshare of a range running past the memory",
        gc::MEM_UNSHARE,
        DATA_IPA,
        8,
        0,
    )?;
    convert_invalid(
        &mut vm,
        "relinquish beyond the IPA space",
        gc::MEM_RELINQUISH,
        1 << 56,
        1,
        0,
    )?;
    // Nothing changed: still private, same content, no conversion logged.
    for p in 1..4 {
        host_denied(pa + p * PAGE)?;
    }
    vm.check(DATA_IPA, 4, 0x99)?;
    ensure!(
        log.head() == head,
        "log head moved from {head} to {}",
        log.head()
    );
    ensure!(log.dropped() == 0, "log dropped {}", log.dropped());
    convert_ok(&mut vm, gc::MEM_UNSHARE, DATA_IPA, 1)?;
    vm.teardown()
}

fn relinquish_of_a_shared_page_is_invalid_and_changes_nothing() -> TestResult {
    let (mut vm, pa) = vm_with_data(11, DATA_IPA, 1, PAGE)?;
    vm.fill(DATA_IPA, 1, 0xaa)?;
    convert_ok(&mut vm, gc::MEM_SHARE, DATA_IPA, 1)?;
    convert_invalid(
        &mut vm,
        "relinquish of a shared page",
        gc::MEM_RELINQUISH,
        DATA_IPA,
        1,
        0,
    )?;
    // Still shared, still the guest's data, on both sides.
    host_sees_pattern(pa, DATA_IPA, 1, 0xaa)?;
    vm.check(DATA_IPA, 1, 0xaa)?;
    convert_ok(&mut vm, gc::MEM_UNSHARE, DATA_IPA, 1)?;
    host_denied(pa)?;
    vm.teardown()
}

// ---------------------------------------------------------------------------------------------
// The conversion log

fn conversion_log_holds_every_conversion_in_order() -> TestResult {
    let (mut vm, _pa) = vm_with_data(12, DATA_IPA, 16, PAGE)?;
    let log = ConvLog::register(&vm, 1)?;
    ensure!(
        log.head() == 0 && log.tail() == 0 && log.dropped() == 0,
        "fresh log not empty"
    );
    let steps: [(u64, u64, u64, u64); 6] = [
        (gc::MEM_SHARE, DATA_IPA, 1, LOG_SHARED),
        (gc::MEM_SHARE, DATA_IPA + 4 * PAGE, 8, LOG_SHARED),
        (gc::MEM_UNSHARE, DATA_IPA, 1, LOG_PRIVATE),
        (gc::MEM_UNSHARE, DATA_IPA + 4 * PAGE, 8, LOG_PRIVATE),
        (
            gc::MEM_RELINQUISH,
            DATA_IPA + 15 * PAGE,
            1,
            LOG_RELINQUISHED,
        ),
        (gc::MEM_SHARE, DATA_IPA + 2 * PAGE, 0, LOG_SHARED),
    ];
    for (i, &(f, ipa, pages, _)) in steps.iter().enumerate() {
        convert_ok(&mut vm, f, ipa, pages)?;
        let head = log.head();
        ensure!(
            head == i as u64 + 1,
            "after conversion {i}, log head = {head}"
        );
    }
    for (i, &(_, ipa, pages, state)) in steps.iter().enumerate() {
        log.expect_entry(i as u64, ipa, pages.max(1), state)?;
    }
    ensure!(log.dropped() == 0, "dropped = {}", log.dropped());
    convert_ok(&mut vm, gc::MEM_UNSHARE, DATA_IPA + 2 * PAGE, 1)?;
    vm.teardown()
}

fn conversion_log_overflow_is_flagged_not_lost() -> TestResult {
    let (mut vm, _pa) = vm_with_data(13, DATA_IPA, 1, PAGE)?;
    let log = ConvLog::register(&vm, 1)?;
    let cap = log.capacity;
    let conversions = cap + 14 + (cap + 14) % 2;
    let r = vm.command(cmd::CONVERT_LOOP, [DATA_IPA, conversions / 2, 0])?;
    ensure!(r[0] == 0, "conversion loop stopped: {r:#x?}");
    // The guest was never blocked; the log is full and says how much it dropped.
    ensure!(
        log.head() == cap,
        "head {} with capacity {cap} and no consumer",
        log.head()
    );
    ensure!(
        log.dropped() == conversions - cap,
        "dropped = {}, expected {}",
        log.dropped(),
        conversions - cap
    );
    for seq in 0..cap {
        let state = if seq % 2 == 0 {
            LOG_SHARED
        } else {
            LOG_PRIVATE
        };
        log.expect_entry(seq, DATA_IPA, 1, state)?;
    }
    // Once the host consumes, logging resumes where it stopped.
    log.set_tail(cap);
    convert_ok(&mut vm, gc::MEM_SHARE, DATA_IPA, 1)?;
    ensure!(
        log.head() == cap + 1,
        "head after consuming: {}",
        log.head()
    );
    log.expect_entry(cap, DATA_IPA, 1, LOG_SHARED)?;
    convert_ok(&mut vm, gc::MEM_UNSHARE, DATA_IPA, 1)?;
    vm.teardown()
}

// ---------------------------------------------------------------------------------------------
// Isolation and illegal host calls

fn two_vms_cannot_touch_each_others_pages() -> TestResult {
    let (mut a, pa_a) = vm_with_data(14, DATA_IPA, 2, PAGE)?;
    let (mut b, pa_b) = vm_with_data(15, DATA_IPA, 2, PAGE)?;
    a.fill(DATA_IPA, 2, 0xa1)?;
    b.fill(DATA_IPA, 2, 0xb2)?;
    // Same IPA, different pages.
    a.check(DATA_IPA, 2, 0xa1)?;
    b.check(DATA_IPA, 2, 0xb2)?;
    // A's private page cannot go to B, neither donated nor shared.
    expect_status(
        "donate A's page to B",
        id::HOST_DONATE_GUEST,
        &[pa_a / PAGE, 1, b.handle, HOLE_IPA / PAGE],
        status::PERM,
    )?;
    expect_status(
        "share A's page with B",
        id::HOST_SHARE_GUEST,
        &[pa_a / PAGE, 1, b.handle, HOLE_IPA / PAGE, 3],
        status::PERM,
    )?;
    // Nor once A shares it with the host.
    convert_ok(&mut a, gc::MEM_SHARE, DATA_IPA, 1)?;
    expect_status(
        "donate A's shared page to B",
        id::HOST_DONATE_GUEST,
        &[pa_a / PAGE, 1, b.handle, HOLE_IPA / PAGE],
        status::PERM,
    )?;
    expect_status(
        "share A's shared page with B",
        id::HOST_SHARE_GUEST,
        &[pa_a / PAGE, 1, b.handle, HOLE_IPA / PAGE, 3],
        status::PERM,
    )?;
    // B cannot unshare or reclaim what is A's.
    expect_status(
        "B unshares A's page",
        id::HOST_UNSHARE_GUEST,
        &[b.handle, DATA_IPA / PAGE, 1],
        status::PERM,
    )?;
    host_sees_pattern(pa_a, DATA_IPA, 1, 0xa1)?;
    host_denied(pa_b)?;
    convert_ok(&mut a, gc::MEM_UNSHARE, DATA_IPA, 1)?;
    a.check(DATA_IPA, 2, 0xa1)?;
    b.check(DATA_IPA, 2, 0xb2)?;
    a.teardown()?;
    // A's teardown did not touch B.
    b.check(DATA_IPA, 2, 0xb2)?;
    host_denied(pa_b)?;
    b.teardown()
}

fn same_page_cannot_be_donated_twice() -> TestResult {
    let (mut a, pa) = vm_with_data(16, DATA_IPA, 1, PAGE)?;
    let mut b = Vm::boot(17)?;
    a.fill(DATA_IPA, 1, 0xc3)?;
    expect_status(
        "donate the page again, same VM",
        id::HOST_DONATE_GUEST,
        &[pa / PAGE, 1, a.handle, HOLE_IPA / PAGE],
        status::PERM,
    )?;
    expect_status(
        "donate the page again, other VM",
        id::HOST_DONATE_GUEST,
        &[pa / PAGE, 1, b.handle, DATA_IPA / PAGE],
        status::PERM,
    )?;
    // Another page at an IPA that already has one.
    let other = alloc_pages(1, PAGE)?;
    write(other, 0x0123);
    expect_status(
        "donate at an occupied IPA",
        id::HOST_DONATE_GUEST,
        &[other / PAGE, 1, a.handle, DATA_IPA / PAGE],
        status::PERM,
    )?;
    ensure!(host_reads(other)? == 0x0123, "refused page changed");
    a.check(DATA_IPA, 1, 0xc3)?;
    host_denied(pa)?;
    // B has no page at DATA_IPA: its read exits instead of seeing A's data.
    let e = b.send(cmd::READ, [DATA_IPA, 0, 0])?;
    ensure!(e.reason == exit::NO_MEMORY, "B's read of DATA_IPA: {e}");
    drop(b);
    a.teardown()
}

fn illegal_host_donations_are_refused_and_change_nothing() -> TestResult {
    let (mut vm, pa) = vm_with_data(18, DATA_IPA, 1, PAGE)?;
    vm.fill(DATA_IPA, 1, 0xd4)?;
    let h = vm.handle;
    let mine = alloc_pages(2, PAGE)?;
    write(mine, 0xfeed);
    let gfn = HOLE_IPA / PAGE;
    let cases: [(&str, u64, [u64; 5], i64); 12] = [
        (
            "donate hyp memory",
            id::HOST_DONATE_GUEST,
            [HYP_BASE / PAGE, 1, h, gfn, 0],
            status::PERM,
        ),
        (
            "donate MMIO",
            id::HOST_DONATE_GUEST,
            [UART_PA / PAGE, 1, h, gfn, 0],
            status::RANGE,
        ),
        (
            "donate zero pages",
            id::HOST_DONATE_GUEST,
            [mine / PAGE, 0, h, gfn, 0],
            status::INVALID,
        ),
        (
            "donate an overflowing range",
            id::HOST_DONATE_GUEST,
            [u64::MAX >> 12, 2, h, gfn, 0],
            status::RANGE,
        ),
        (
            "donate beyond the IPA space",
            id::HOST_DONATE_GUEST,
            [mine / PAGE, 1, h, 1 << 44, 0],
            status::RANGE,
        ),
        (
            "donate to no VM",
            id::HOST_DONATE_GUEST,
            [mine / PAGE, 1, BOGUS_HANDLE, gfn, 0],
            status::NOT_FOUND,
        ),
        (
            "donate a range ending in hyp memory",
            id::HOST_DONATE_GUEST,
            [HYP_BASE / PAGE - 1, 2, h, gfn, 0],
            status::PERM,
        ),
        (
            "share hyp memory",
            id::HOST_SHARE_GUEST,
            [HYP_BASE / PAGE, 1, h, gfn, 3],
            status::PERM,
        ),
        (
            "share with bad prot",
            id::HOST_SHARE_GUEST,
            [mine / PAGE, 1, h, gfn, 8],
            status::INVALID,
        ),
        (
            "share the guest's own page back",
            id::HOST_SHARE_GUEST,
            [pa / PAGE, 1, h, gfn, 3],
            status::PERM,
        ),
        (
            "unshare what the host never shared",
            id::HOST_UNSHARE_GUEST,
            [h, DATA_IPA / PAGE, 1, 0, 0],
            status::PERM,
        ),
        (
            "top up with hyp memory",
            id::MEMCACHE_TOPUP,
            [h, HYP_BASE / PAGE, 1, 0, 0],
            status::PERM,
        ),
    ];
    for (what, f, args, want) in cases {
        expect_status(what, f, &args, want)?;
    }
    // Nothing moved: the host still has its pages, the guest its page and nothing at HOLE_IPA.
    ensure!(host_reads(mine)? == 0xfeed, "host page changed");
    write(mine + PAGE, 1);
    host_denied(pa)?;
    vm.check(DATA_IPA, 1, 0xd4)?;
    let e = vm.send(cmd::READ, [HOLE_IPA, 0, 0])?;
    ensure!(
        e.reason == exit::NO_MEMORY,
        "a refused donation left memory at HOLE_IPA: {e}"
    );
    drop(vm);
    Ok(())
}

fn host_share_guest_lends_a_page_and_read_only_is_enforced() -> TestResult {
    let mut vm = Vm::boot(19)?;
    let ring = alloc_pages(1, PAGE)?;
    write(ring, 0xabcd);
    call_ok(
        "HOST_SHARE_GUEST",
        id::HOST_SHARE_GUEST,
        &[ring / PAGE, 1, vm.handle, HOLE_IPA / PAGE, 1],
    )?;
    // Borrowed, not donated: the host keeps access.
    ensure!(host_reads(ring)? == 0xabcd, "host lost its lent page");
    let r = vm.guest_read(HOLE_IPA)?;
    ensure!(r == Ok(0xabcd), "guest reads {r:#x?} from the lent page");
    // Read-only for the guest: a store gets an abort injected (perhaps reported as an exit).
    let mut e = vm.send(cmd::WRITE, [HOLE_IPA + 8, 0x666, 0])?;
    if e.reason == exit::GUEST_ABORT {
        ensure!(
            e.detail[0] & !(PAGE - 1) == HOLE_IPA,
            "guest-abort exit at {:#x}",
            e.detail[0]
        );
        e = vm.run(0, [0; 4])?;
    }
    let r = Vm::reply_of(cmd::WRITE, e)?;
    ensure!(r[0] == 1, "guest store to a read-only lent page succeeded");
    let f = Fault {
        esr: r[1],
        far: r[2],
        elr: 0,
    };
    ensure!(
        f.ec() == EC_DATA_ABORT_SAME_EL && f.wnr() && f.far == HOLE_IPA + 8,
        "guest got {f}"
    );
    ensure!(read(ring + 8) == 0, "the refused store landed");
    call_ok(
        "HOST_UNSHARE_GUEST",
        id::HOST_UNSHARE_GUEST,
        &[vm.handle, HOLE_IPA / PAGE, 1],
    )?;
    ensure!(
        host_reads(ring)? == 0xabcd,
        "host page changed by unsharing"
    );
    expect_status(
        "unshare twice",
        id::HOST_UNSHARE_GUEST,
        &[vm.handle, HOLE_IPA / PAGE, 1],
        status::NOT_FOUND,
    )?;
    vm.teardown()
}

fn vm_reclaim_of_a_live_vm_is_refused() -> TestResult {
    let (mut vm, pa) = vm_with_data(20, DATA_IPA, 1, PAGE)?;
    vm.fill(DATA_IPA, 1, 0xe5)?;
    expect_status(
        "VM_RECLAIM of a live VM",
        id::VM_RECLAIM,
        &[vm.handle, DATA_IPA / PAGE, 1],
        status::PERM,
    )?;
    expect_status(
        "VM_FINALIZE_TEARDOWN of a live VM",
        id::VM_FINALIZE_TEARDOWN,
        &[vm.handle],
        status::BUSY,
    )?;
    expect_status(
        "HOST_RECLAIM_FORCE of hyp memory",
        id::HOST_RECLAIM_FORCE,
        &[HYP_BASE / PAGE, 1],
        status::PERM,
    )?;
    host_denied(pa)?;
    vm.check(DATA_IPA, 1, 0xe5)?;
    vm.teardown()
}

fn vcpu_of_a_dying_vm_does_not_run() -> TestResult {
    let (mut vm, pa) = vm_with_data(21, DATA_IPA, 1, PAGE)?;
    vm.fill(DATA_IPA, 1, 0xf6)?;
    call_ok("VM_START_TEARDOWN", id::VM_START_TEARDOWN, &[vm.handle])?;
    expect_status(
        "VCPU_RUN of a dying VM",
        id::VCPU_RUN,
        &[vm.handle, 0, RUN_COMPLETE, cmd::NOP, 0, 0, 0],
        status::PERM,
    )?;
    expect_status(
        "VM_START_TEARDOWN twice",
        id::VM_START_TEARDOWN,
        &[vm.handle],
        status::BUSY,
    )?;
    expect_status(
        "donate to a dying VM",
        id::HOST_DONATE_GUEST,
        &[alloc_pages(1, PAGE)? / PAGE, 1, vm.handle, HOLE_IPA / PAGE],
        status::BUSY,
    )?;
    expect_status(
        "VCPU_CREATE on a dying VM",
        id::VCPU_CREATE,
        &[vm.handle, vmm::GUEST_RAM_IPA, 0],
        status::PERM,
    )?;
    // Still the guest's until reclaimed, and the content is still there to be scrubbed.
    host_denied(pa)?;
    call_ok(
        "VM_RECLAIM",
        id::VM_RECLAIM,
        &[vm.handle, DATA_IPA / PAGE, 1],
    )?;
    host_reads(pa)?;
    if let Some((a, v)) = first_nonzero(pa, 1) {
        fail!("reclaimed page holds {v:#x} at {a:#x}");
    }
    drop(vm);
    Ok(())
}

fn memcache_too_small_is_no_mem_and_changes_nothing() -> TestResult {
    // A VM with only the VM_CREATE pages and no top-up.
    let state = alloc_pages(VM_CREATE_PAGES, PAGE)?;
    let h = call_ok("VM_CREATE", id::VM_CREATE, &[state / PAGE, VM_CREATE_PAGES])?[1];
    let mut donated = [(0u64, 0u64); 32];
    let mut n = 0;
    let mut refused = false;
    // Each donation at a new GiB of IPA space needs fresh table pages: the memcache runs out.
    while n < donated.len() {
        let ipa = FAR_IPA + n as u64 * 0x4000_0000;
        let page = alloc_pages(1, PAGE)?;
        write(page, 0x7777);
        let s = call_status(id::HOST_DONATE_GUEST, &[page / PAGE, 1, h, ipa / PAGE])?;
        if s == status::NO_MEM {
            // Nothing changed: the host keeps its page, readable and writable.
            ensure!(host_reads(page)? == 0x7777, "refused page changed");
            write(page, 0x8888);
            // A top-up makes the very same donation succeed.
            let more = alloc_pages(8, PAGE)?;
            call_ok("MEMCACHE_TOPUP", id::MEMCACHE_TOPUP, &[h, more / PAGE, 8])?;
            call_ok(
                "HOST_DONATE_GUEST after the top-up",
                id::HOST_DONATE_GUEST,
                &[page / PAGE, 1, h, ipa / PAGE],
            )?;
            host_denied(page)?;
            donated[n] = (ipa, page);
            n += 1;
            refused = true;
            break;
        }
        ensure!(s == 0, "donation at {ipa:#x}: {} ({s})", status::name(s));
        donated[n] = (ipa, page);
        n += 1;
    }
    call_ok("VM_START_TEARDOWN", id::VM_START_TEARDOWN, &[h])?;
    for &(ipa, _) in &donated[..n] {
        call_ok("VM_RECLAIM", id::VM_RECLAIM, &[h, ipa / PAGE, 1])?;
    }
    call_ok("VM_FINALIZE_TEARDOWN", id::VM_FINALIZE_TEARDOWN, &[h])?;
    for &(_, pa) in &donated[..n] {
        ensure!(first_nonzero(pa, 1).is_none(), "page {pa:#x} not scrubbed");
    }
    ensure!(
        first_nonzero(state, VM_CREATE_PAGES).is_none(),
        "VM_CREATE pages not scrubbed"
    );
    ensure!(
        refused,
        "{n} donations at new GiBs and none refused with NO_MEM"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Teardown, FP/SIMD, PSCI

fn teardown_returns_every_page_zeroed_and_reusable() -> TestResult {
    let state = alloc_pages(VM_CREATE_PAGES, PAGE)?;
    let memcache = alloc_pages(vmm::MEMCACHE_PAGES, PAGE)?;
    let image = alloc_pages(vmm::guest_image()?.pages, TWO_MIB)?;
    let data = alloc_pages(8, PAGE)?;
    let mut vm = Vm::boot_with(22, state, memcache, Some(image))?;
    vm.donate_at(data, DATA_IPA, 8)?;
    vm.fill(DATA_IPA, 8, 0x1f)?;
    convert_ok(&mut vm, gc::MEM_SHARE, DATA_IPA + PAGE, 2)?;
    // teardown() reclaims everything (shared pages included) and checks every page is zero.
    vm.teardown()?;
    drop(vm);
    // The same pages make a new VM that boots and works.
    let mut again = Vm::boot_with(23, state, memcache, Some(image))?;
    again.donate_at(data, DATA_IPA, 8)?;
    let r = again.guest_read(DATA_IPA + PAGE)?;
    ensure!(r == Ok(0), "reused page reads {r:#x?} in the new VM");
    again.fill(DATA_IPA, 8, 0x2e)?;
    again.check(DATA_IPA, 8, 0x2e)?;
    again.teardown()
}

fn fp_simd_registers_survive_guest_and_host() -> TestResult {
    let mut vm = Vm::boot(24)?;
    let guest_seed = 0x6e57;
    let host_seed = 0x4057;
    let e = vm.send(cmd::FP, [guest_seed, 0, 0])?;
    ensure!(
        e.reason == exit::HVC && e.detail[0] == MAILBOX && e.detail[1] == cmd::FP_HOLD,
        "guest did not hold its FP pattern: {e}"
    );
    let mine = VRegs::with_pattern(host_seed);
    let mut after = VRegs([0; 32]);
    // The host's V registers hold its pattern across a whole guest run, in which the guest
    // checks its own registers and reports.
    let r = hvc_holding_vregs(
        &mine,
        &mut after,
        [id::VCPU_RUN, vm.handle, 0, RUN_COMPLETE, cmd::NOP, 0, 0, 0],
    );
    ensure!(r[0] == 0, "VCPU_RUN returned {}", r[0] as i64);
    if let Some((reg, v)) = after.mismatch(host_seed) {
        fail!(
            "host v{reg} = {v:#x} after running the guest, expected {:#x}",
            mailbox::fp_pattern(host_seed, reg)
        );
    }
    ensure!(
        r[1] == exit::HVC && r[2] == MAILBOX,
        "guest's FP report: exit {} x2={:#x}",
        r[1],
        r[2]
    );
    ensure!(
        r[3] == 0,
        "guest v{} = {:#x} after the host ran, expected low half {:#x}",
        r[4],
        r[5],
        mailbox::fp_pattern(guest_seed, r[4] as usize) as u64
    );
    vm.teardown()
}

fn guest_psci_system_off_exits_to_host() -> TestResult {
    let mut vm = Vm::boot(25)?;
    let e = vm.send(cmd::OFF, [0; 3])?;
    ensure!(
        e.reason == exit::PSCI && e.detail[0] & 0xffff_ffff == 0x8400_0008,
        "guest SYSTEM_OFF: expected a PSCI exit, got {e}"
    );
    println!("  guest SYSTEM_OFF reached the host as {e}");
    vm.teardown()
}
