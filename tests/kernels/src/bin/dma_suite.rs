//! The DMA suite: runs as Verso's host with QEMU's `edu` device behind the SMMUv3 and checks that
//! a host device sees exactly the host's stage-2 — no more, and not a moment longer.
//!
//! QEMU: `-device edu,dma_mask=0xffffffffffffffff` on bus 0 (StreamID = its requester ID), plus a
//! PCIe root port with a second edu behind it (bus 1, StreamID 0x100: outside Verso's stream
//! table, so no device is configured there). Every negative test proves both halves: the DMA did
//! not land (memory unchanged, or a read returned zeros) *and* Verso recorded a fault naming the
//! device, the address and the direction (`DMA_FAULTS_READ`, docs/abi.md). Faulting DMAs are kept
//! to 8 bytes (QEMU raises one event per 4 bytes) except in the deliberate overflow test.
//!
//! The guest half runs a protected VM (`guest-worker`, loaded by qemu-run.sh at 0x5000_0000,
//! driven through `verso_test_kernels::vmm`) and checks that a host device follows the guest's
//! own MEM_SHARE / MEM_UNSHARE at once: a private page is out of reach, a shared one is reachable
//! as soon as the guest's call returned (no host call to "map it for DMA"), an unshared one is
//! out of reach for the very next DMA even with the SMMU's TLB primed, and a reclaimed one is
//! the host's again. What the guest sees is checked *through the guest* (its own loads), so
//! "unchanged" means unchanged for the VM, not merely for the host.
//!
//! Booted bare on QEMU (no hyp, no SMMU translation) the negative tests fail: the DMA lands.
#![no_std]
#![no_main]

#[path = "../edu.rs"]
mod edu;
#[path = "../pci.rs"]
mod pci;

use core::ptr::{addr_of, read_volatile, write_volatile};

use spin::Once;

use edu::{Direction, Edu};
use pci::{Bdf, Ecam};
use verso_test_kernels::harness::{run_suite, Failure, Test, TestResult};
use verso_test_kernels::mailbox::{guest_call as gc, pattern};
use verso_test_kernels::smccc::{canary, canary_unchanged, hvc};
use verso_test_kernels::vmm::{self, Vm, PAGE};
use verso_test_kernels::{ensure, fail};

verso_test_kernels::entry!(main);

fn main() -> ! {
    run_suite("dma", TESTS)
}

/// `DMA_FAULTS_READ` (docs/abi.md).
const DMA_FAULTS_READ: u64 = 0xc600_8010;
/// `VM_CREATE(pfn, nr_pages)`: donates the pages to the hyp (they leave the host's stage-2).
const VM_CREATE: u64 = 0xc600_8004;
/// `VM_START_TEARDOWN(handle)`.
const VM_START_TEARDOWN: u64 = 0xc600_800b;
/// `VM_FINALIZE_TEARDOWN(handle)`: the donated pages come back to the host.
const VM_FINALIZE_TEARDOWN: u64 = 0xc600_800d;

/// SMMU event types.
const F_TRANSLATION: u8 = 0x10;
const C_BAD_STREAMID: u8 = 0x02;

/// Where BARs go: QEMU virt's 32-bit MMIO window.
const BAR_BUS0: u32 = 0x1000_0000;
/// The root port's window (1 MiB) and the BAR of the edu behind it.
const BAR_BUS1: u32 = 0x1010_0000;

static TESTS: &[Test] = &[
    Test {
        name: "edu_is_found_on_the_ecam_the_dtb_names",
        run: edu_is_found,
    },
    Test {
        name: "dma_to_and_from_a_host_page_works",
        run: dma_to_and_from_host_page,
    },
    Test {
        name: "dma_write_into_hyp_memory_is_blocked_and_recorded",
        run: dma_write_into_hyp_is_blocked,
    },
    Test {
        name: "dma_read_of_hyp_memory_returns_zeros_and_is_recorded",
        run: dma_read_of_hyp_returns_zeros,
    },
    Test {
        name: "dma_from_a_stream_with_no_device_configured_aborts",
        run: unconfigured_stream_aborts,
    },
    Test {
        name: "event_queue_overflow_is_counted_and_later_faults_still_recorded",
        run: event_queue_overflow,
    },
    Test {
        name: "page_leaving_the_host_is_blocked_for_dma_immediately_even_if_just_used",
        run: revoked_page_blocked_even_if_cached,
    },
    Test {
        name: "page_returned_to_the_host_is_reachable_by_dma_again",
        run: returned_page_reachable_again,
    },
    Test {
        name: "dma_into_and_out_of_a_guest_private_page_is_blocked_and_recorded",
        run: guest_private_page_blocked,
    },
    Test {
        name: "guest_mem_share_makes_its_page_dma_reachable_with_no_host_call_in_between",
        run: guest_shared_page_reachable_at_once,
    },
    Test {
        name: "guest_mem_unshare_blocks_dma_at_once_even_if_the_device_just_used_the_page",
        run: guest_unshared_page_blocked_even_if_cached,
    },
    Test {
        name: "guest_page_is_reachable_by_dma_again_after_teardown_and_reclaim",
        run: guest_page_reachable_after_teardown,
    },
    Test {
        name: "guest_512_page_share_dma_reaches_first_and_last_page_and_unshare_blocks_both",
        run: guest_range_share,
    },
];

// ---------------------------------------------------------------------------------------------
// Set-up and helpers

struct Devices {
    ecam: Ecam,
    edu: Edu,
    sid: u32,
    /// The edu behind the root port, if QEMU has one.
    behind_bridge: Option<(Edu, u32)>,
}

static DEVICES: Once<Result<Devices, &'static str>> = Once::new();

fn setup() -> Result<Devices, &'static str> {
    let ecam = Ecam::from_dtb().ok_or("no pci-host-ecam-generic node in the DTB")?;
    let bdf = ecam
        .find(0, edu::VENDOR, edu::DEVICE)
        .ok_or("no edu (1234:11e8) on bus 0")?;
    let size = ecam.enable(bdf, BAR_BUS0);
    if size != 1 << 20 {
        return Err("edu BAR0 is not 1 MiB");
    }
    // A root port on bus 0 with a second edu behind it on bus 1.
    let bridge = (0..32u8)
        .map(|dev| Bdf {
            bus: 0,
            dev,
            func: 0,
        })
        .find(|&b| ecam.read(b, pci::cfg::ID) != u32::MAX && ecam.header_type(b) == 1);
    let behind_bridge = bridge.and_then(|b| {
        ecam.enable_bridge(b, 1, BAR_BUS1, 1 << 20);
        let e = ecam.find(1, edu::VENDOR, edu::DEVICE)?;
        ecam.enable(e, BAR_BUS1);
        Some((Edu::at(u64::from(BAR_BUS1)), e.requester_id()))
    });
    Ok(Devices {
        ecam,
        edu: Edu::at(u64::from(BAR_BUS0)),
        sid: bdf.requester_id(),
        behind_bridge,
    })
}

fn devices() -> Result<&'static Devices, Failure> {
    match DEVICES.call_once(setup) {
        Ok(d) => Ok(d),
        Err(why) => fail!("set-up: {why}"),
    }
}

/// Host-owned pages for DMA (the kernel's own .bss: RAM the host's stage-2 maps).
#[repr(C, align(4096))]
struct Pages([[u8; 4096]; 8]);
static mut PAGES: Pages = Pages([[0; 4096]; 8]);
/// Pages the suite donates to the hyp and gets back.
static mut DONATED: Pages = Pages([[0; 4096]; 8]);

fn page(i: usize) -> u64 {
    // SAFETY: only the address is taken.
    unsafe { addr_of!(PAGES.0[i]) as u64 }
}

fn donated(i: usize) -> u64 {
    // SAFETY: only the address is taken.
    unsafe { addr_of!(DONATED.0[i]) as u64 }
}

fn fill(pa: u64, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: `pa` is one of this kernel's pages (identity mapped, host owned).
        unsafe { write_volatile((pa + i as u64) as *mut u8, seed.wrapping_add(i as u8 * 7)) };
    }
}

fn read_byte(pa: u64) -> u8 {
    // SAFETY: as in `fill`.
    unsafe { read_volatile(pa as *const u8) }
}

fn check_pattern(pa: u64, len: usize, seed: u8) -> TestResult {
    for i in 0..len {
        let want = seed.wrapping_add(i as u8 * 7);
        let got = read_byte(pa + i as u64);
        ensure!(
            got == want,
            "byte {i} at {pa:#x}: {got:#x}, expected {want:#x}"
        );
    }
    Ok(())
}

fn dma(edu: &Edu, dir: Direction, ram: u64, offset: u64, len: u64) -> TestResult {
    ensure!(
        edu.dma(dir, ram, offset, len),
        "edu DMA to/from {ram:#x} did not finish"
    );
    Ok(())
}

/// One decoded fault record.
#[derive(Clone, Copy, Debug)]
struct Record {
    kind: u8,
    sid: u32,
    address: u64,
    read: bool,
    stage2: bool,
}

fn read_fault() -> Result<Option<Record>, Failure> {
    let r = match hvc([DMA_FAULTS_READ, 0, 0, 0]) {
        Ok(r) => r,
        Err(f) => fail!("DMA_FAULTS_READ: hvc faulted ({f})"),
    };
    ensure!(r[0] == 0, "DMA_FAULTS_READ returned x0={:#x}", r[0]);
    if r[1] >> 63 == 0 {
        return Ok(None);
    }
    Ok(Some(Record {
        kind: (r[1] >> 32) as u8,
        sid: r[1] as u32,
        address: r[2],
        read: r[1] & 1 << 40 != 0,
        stage2: r[1] & 1 << 41 != 0,
    }))
}

/// Reads every waiting record; returns how many there were and the overflow count.
fn drain_faults() -> Result<(usize, u32), Failure> {
    let mut n = 0;
    loop {
        match read_fault()? {
            Some(_) if n < 10_000 => n += 1,
            Some(_) => fail!("DMA_FAULTS_READ never runs dry"),
            None => {
                let r = hvc([DMA_FAULTS_READ, 0, 0, 0]).map_err(|f| {
                    Failure::fail(format_args!("DMA_FAULTS_READ: hvc faulted ({f})"))
                })?;
                return Ok((n, (r[3] >> 32) as u32));
            }
        }
    }
}

/// Checks that the next records are the `chunks` 4-byte pieces of a faulting access at `addr`.
fn expect_faults(kind: u8, sid: u32, addr: u64, read: bool, chunks: u64) -> TestResult {
    for i in 0..chunks {
        let Some(r) = read_fault()? else {
            fail!("no fault record for {addr:#x}+{} (sid {sid:#x})", 4 * i);
        };
        ensure!(
            r.kind == kind && r.sid == sid,
            "record {i}: type {:#x} sid {:#x}, expected type {kind:#x} sid {sid:#x}",
            r.kind,
            r.sid
        );
        if kind == F_TRANSLATION {
            ensure!(
                r.address == addr + 4 * i && r.read == read && r.stage2,
                "record {i}: address {:#x} read {} stage2 {}, expected {:#x} read {read}",
                r.address,
                r.read,
                r.stage2,
                addr + 4 * i
            );
        }
    }
    Ok(())
}

/// Loads the edu buffer at `offset` with `len` bytes of pattern `seed` (through a host page).
fn load_buffer(edu: &Edu, offset: u64, len: usize, seed: u8) -> TestResult {
    fill(page(7), len, seed);
    dma(edu, Direction::FromRam, page(7), offset, len as u64)
}

// ---------------------------------------------------------------------------------------------
// Tests

fn edu_is_found() -> TestResult {
    let d = devices()?;
    ensure!(
        d.edu.id() >> 16 == 0x0100,
        "edu ID register {:#x}",
        d.edu.id()
    );
    ensure!(
        d.edu.liveness(0x1234_5678) == !0x1234_5678,
        "edu liveness register does not answer"
    );
    let id = d.ecam.read(
        Bdf {
            bus: (d.sid >> 8) as u8,
            dev: ((d.sid >> 3) & 31) as u8,
            func: (d.sid & 7) as u8,
        },
        pci::cfg::ID,
    );
    ensure!(id == 0x11e8_1234, "config space ID {id:#x}");
    Ok(())
}

fn dma_to_and_from_host_page() -> TestResult {
    let d = devices()?;
    drain_faults()?;
    fill(page(0), 4096, 0x31);
    dma(&d.edu, Direction::FromRam, page(0), 0, 4096)?;
    fill(page(1), 4096, 0);
    dma(&d.edu, Direction::ToRam, page(1), 0, 4096)?;
    check_pattern(page(1), 4096, 0x31)?;
    let (n, _) = drain_faults()?;
    ensure!(n == 0, "{n} fault records for DMA to host-owned pages");
    Ok(())
}

fn dma_write_into_hyp_is_blocked() -> TestResult {
    let d = devices()?;
    let c = canary()?;
    drain_faults()?;
    load_buffer(&d.edu, 0, 8, 0x5a)?;
    dma(&d.edu, Direction::ToRam, c.pa + 0x40, 0, 8)?;
    canary_unchanged("an 8-byte DMA write into the canary page")?;
    // The device wrote memory: RnW = 0.
    expect_faults(F_TRANSLATION, d.sid, c.pa + 0x40, false, 2)?;
    Ok(())
}

fn dma_read_of_hyp_returns_zeros() -> TestResult {
    let d = devices()?;
    let c = canary()?;
    drain_faults()?;
    load_buffer(&d.edu, 0x100, 8, 0xa5)?;
    dma(&d.edu, Direction::FromRam, c.pa + 0x80, 0x100, 8)?;
    fill(page(2), 8, 0x77);
    dma(&d.edu, Direction::ToRam, page(2), 0x100, 8)?;
    for i in 0..8 {
        let b = read_byte(page(2) + i);
        ensure!(b == 0, "byte {i} read from hyp memory is {b:#x}, not 0");
    }
    expect_faults(F_TRANSLATION, d.sid, c.pa + 0x80, true, 2)?;
    canary_unchanged("a DMA read of the canary page")
}

fn unconfigured_stream_aborts() -> TestResult {
    let d = devices()?;
    let Some((edu1, sid1)) = d.behind_bridge else {
        fail!("no edu behind a root port (qemu-run.sh adds one for this suite)");
    };
    ensure!(
        sid1 >= 0x100,
        "edu behind the bridge has StreamID {sid1:#x}"
    );
    drain_faults()?;
    // Even a host-owned page is out of reach: no STE means no translation.
    fill(page(3), 8, 0x11);
    ensure!(
        edu1.dma(Direction::ToRam, page(3), 0, 8),
        "edu on bus 1 did not finish"
    );
    check_pattern(page(3), 8, 0x11)?;
    let Some(r) = read_fault()? else {
        fail!("no fault record for StreamID {sid1:#x}");
    };
    ensure!(
        r.kind == C_BAD_STREAMID && r.sid == sid1,
        "record type {:#x} sid {:#x}, expected C_BAD_STREAMID for {sid1:#x}",
        r.kind,
        r.sid
    );
    drain_faults()?;
    Ok(())
}

fn event_queue_overflow() -> TestResult {
    let d = devices()?;
    let c = canary()?;
    let (_, overflows_before) = drain_faults()?;
    // 4096 bytes: 1024 events, eight times what the event queue holds.
    dma(&d.edu, Direction::ToRam, c.pa, 0, 4096)?;
    canary_unchanged("a 4 KiB DMA write into the canary page")?;
    let (n, overflows) = drain_faults()?;
    ensure!(n > 0, "no records for a 4 KiB faulting DMA");
    ensure!(
        overflows > overflows_before,
        "event-queue overflow not counted ({overflows_before} -> {overflows}, {n} records)"
    );
    // Recording goes on.
    load_buffer(&d.edu, 0x200, 8, 0x42)?;
    dma(&d.edu, Direction::ToRam, c.pa + 0x800, 0x200, 8)?;
    expect_faults(F_TRANSLATION, d.sid, c.pa + 0x800, false, 2)?;
    let (_, after) = drain_faults()?;
    ensure!(after == overflows, "a small DMA counted as overflow");
    canary_unchanged("the DMA after the overflow")
}

/// Donates `pages` of DONATED to the hyp (VM_CREATE); returns the handle.
fn donate(pages: u64) -> Result<u64, Failure> {
    let r = hvc([VM_CREATE, donated(0) >> 12, pages, 0])
        .map_err(|f| Failure::fail(format_args!("VM_CREATE: hvc faulted ({f})")))?;
    ensure!(r[0] == 0, "VM_CREATE returned x0={:#x}", r[0] as i64);
    Ok(r[1])
}

fn give_back(handle: u64) -> TestResult {
    for (name, id) in [
        ("VM_START_TEARDOWN", VM_START_TEARDOWN),
        ("VM_FINALIZE_TEARDOWN", VM_FINALIZE_TEARDOWN),
    ] {
        let r = hvc([id, handle, 0, 0])
            .map_err(|f| Failure::fail(format_args!("{name}: hvc faulted ({f})")))?;
        ensure!(r[0] == 0, "{name} returned x0={:#x}", r[0] as i64);
    }
    Ok(())
}

fn revoked_page_blocked_even_if_cached() -> TestResult {
    let d = devices()?;
    drain_faults()?;
    // Prime the SMMU's TLB: the device writes the page, successfully.
    let target = donated(1) + 0x100;
    load_buffer(&d.edu, 0x300, 8, 0x21)?;
    dma(&d.edu, Direction::ToRam, target, 0x300, 8)?;
    check_pattern(target, 8, 0x21)?;
    let handle = donate(4)?;
    // The very next DMA must fault: VM_CREATE returned only after the SMMU dropped the entry.
    load_buffer(&d.edu, 0x300, 8, 0x99)?;
    dma(&d.edu, Direction::ToRam, target, 0x300, 8)?;
    let recorded = expect_faults(F_TRANSLATION, d.sid, target, false, 2);
    give_back(handle)?;
    recorded?;
    Ok(())
}

fn returned_page_reachable_again() -> TestResult {
    let d = devices()?;
    drain_faults()?;
    let handle = donate(4)?;
    give_back(handle)?;
    let target = donated(2);
    load_buffer(&d.edu, 0x400, 64, 0x63)?;
    fill(target, 64, 0);
    dma(&d.edu, Direction::ToRam, target, 0x400, 64)?;
    check_pattern(target, 64, 0x63)?;
    let (n, _) = drain_faults()?;
    ensure!(n == 0, "{n} fault records for DMA to a returned page");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A guest's pages (the VM runs `guest-worker`; qemu-run.sh loads it for this suite)

/// Guest IPA of the VM's data pages: 16 MiB above its image, 2 MiB aligned.
const DATA_IPA: u64 = 0x4100_0000;
const TWO_MIB: u64 = 0x20_0000;

/// A VM with `pages` private pages at [`DATA_IPA`] (host pages aligned to `align`), which the
/// guest has filled with the pattern of `seed`; returns it and the host PA of the first page.
fn guest_with_data(arg: u64, pages: u64, align: u64, seed: u64) -> Result<(Vm, u64), Failure> {
    let mut vm = Vm::boot(arg)?;
    let pa = vm.donate(DATA_IPA, pages, align)?;
    vm.fill(DATA_IPA, pages, seed)?;
    Ok((vm, pa))
}

/// Loads `len` bytes of the edu buffer at `offset` with the words a guest FILL of `seed` would
/// write at `ipa..` (so that after a DMA the guest can check them with its own loads).
fn stage_guest_words(edu: &Edu, offset: u64, ipa: u64, len: u64, seed: u64) -> TestResult {
    for off in (0..len).step_by(8) {
        vmm::write(page(7) + off, pattern(seed, ipa + off));
    }
    dma(edu, Direction::FromRam, page(7), offset, len)
}

/// Checks through the guest's own loads that the `len` bytes at `ipa` hold the pattern of `seed`.
fn guest_sees_words(vm: &mut Vm, ipa: u64, len: u64, seed: u64) -> TestResult {
    for a in (ipa..ipa + len).step_by(8) {
        let got = vm.guest_read(a)?;
        let want = pattern(seed, a);
        ensure!(
            got == Ok(want),
            "guest reads {got:#x?} at IPA {a:#x}, expected {want:#x}"
        );
    }
    Ok(())
}

/// A guest conversion call that must succeed for all `pages`.
fn guest_convert(vm: &mut Vm, function: u64, ipa: u64, pages: u64) -> TestResult {
    let r = vm.guest_call(function, ipa, pages, 0)?;
    ensure!(
        r[0] == 0 && r[1] == pages,
        "guest call {function:#x}({ipa:#x}, {pages}): x0 = {}, x1 = {}",
        r[0] as i64,
        r[1]
    );
    Ok(())
}

/// Fails unless no DMA fault was recorded since the last drain.
fn no_faults(what: &str) -> TestResult {
    let (n, _) = drain_faults()?;
    ensure!(n == 0, "{n} fault records for {what}");
    Ok(())
}

/// An 8-byte DMA read of `pa` (which must fault) into the edu buffer at `offset`: proves the
/// device got zeros (the buffer held non-zero bytes before) and the two 4-byte faults are
/// recorded as reads by the edu's StreamID.
fn dma_read_gets_zeros(d: &Devices, pa: u64, offset: u64) -> TestResult {
    load_buffer(&d.edu, offset, 8, 0xa5)?;
    dma(&d.edu, Direction::FromRam, pa, offset, 8)?;
    fill(page(2), 8, 0x77);
    dma(&d.edu, Direction::ToRam, page(2), offset, 8)?;
    for i in 0..8 {
        let b = read_byte(page(2) + i);
        ensure!(b == 0, "byte {i} DMA-read from {pa:#x} is {b:#x}, not 0");
    }
    expect_faults(F_TRANSLATION, d.sid, pa, true, 2)
}

fn guest_private_page_blocked() -> TestResult {
    let d = devices()?;
    let (mut vm, pa) = guest_with_data(0xd1, 1, PAGE, 0x51)?;
    drain_faults()?;
    // Write: the device tries to overwrite 8 bytes of the guest's private page.
    stage_guest_words(&d.edu, 0, DATA_IPA + 0x40, 8, 0x61)?;
    dma(&d.edu, Direction::ToRam, pa + 0x40, 0, 8)?;
    expect_faults(F_TRANSLATION, d.sid, pa + 0x40, false, 2)?;
    // The whole page is still what the guest wrote, as the guest sees it.
    vm.check(DATA_IPA, 1, 0x51)?;
    // Read: the device gets zeros, not the guest's secret.
    dma_read_gets_zeros(d, pa + 0x80, 0x100)?;
    vm.check(DATA_IPA, 1, 0x51)?;
    no_faults("the guest's checks")?;
    vm.teardown()
}

fn guest_shared_page_reachable_at_once() -> TestResult {
    let d = devices()?;
    let (mut vm, pa) = guest_with_data(0xd2, 1, PAGE, 0x52)?;
    drain_faults()?;
    // Staged before the share, so that between the guest's MEM_SHARE (handled at EL2) and the
    // DMA there is nothing but the guest's mailbox exit and MMIO writes to the edu.
    stage_guest_words(&d.edu, 0, DATA_IPA, PAGE, 0x62)?;
    let r = vm.guest_call(gc::MEM_SHARE, DATA_IPA, 1, 0)?;
    dma(&d.edu, Direction::ToRam, pa, 0, PAGE)?;
    ensure!(
        r[0] == 0 && r[1] == 1,
        "guest MEM_SHARE: x0 = {}, x1 = {}",
        r[0] as i64,
        r[1]
    );
    no_faults("a DMA write to a page the guest shared")?;
    // In place: the guest sees the device's bytes in its own page.
    vm.check(DATA_IPA, 1, 0x62)?;
    // And the device reads what the guest writes there.
    vm.fill(DATA_IPA, 1, 0x72)?;
    dma(&d.edu, Direction::FromRam, pa, 0, PAGE)?;
    dma(&d.edu, Direction::ToRam, page(3), 0, PAGE)?;
    for off in (0..PAGE).step_by(8) {
        let got = vmm::read(page(3) + off);
        let want = pattern(0x72, DATA_IPA + off);
        ensure!(
            got == want,
            "device read {got:#x} at IPA {:#x} of the shared page, guest wrote {want:#x}",
            DATA_IPA + off
        );
    }
    no_faults("a DMA read of a page the guest shared")?;
    guest_convert(&mut vm, gc::MEM_UNSHARE, DATA_IPA, 1)?;
    vm.teardown()
}

fn guest_unshared_page_blocked_even_if_cached() -> TestResult {
    let d = devices()?;
    let (mut vm, pa) = guest_with_data(0xd3, 1, PAGE, 0x53)?;
    guest_convert(&mut vm, gc::MEM_SHARE, DATA_IPA, 1)?;
    drain_faults()?;
    // Prime the SMMU's TLB: the device writes the whole shared page, successfully.
    stage_guest_words(&d.edu, 0, DATA_IPA, PAGE, 0x63)?;
    dma(&d.edu, Direction::ToRam, pa, 0, PAGE)?;
    no_faults("the priming DMA to the shared page")?;
    vm.check(DATA_IPA, 1, 0x63)?;
    // The next 8 bytes are staged before the unshare: nothing but edu MMIO follows it.
    load_buffer(&d.edu, 0x800, 8, 0x99)?;
    guest_convert(&mut vm, gc::MEM_UNSHARE, DATA_IPA, 1)?;
    dma(&d.edu, Direction::ToRam, pa + 0x100, 0x800, 8)?;
    expect_faults(F_TRANSLATION, d.sid, pa + 0x100, false, 2)?;
    vm.check(DATA_IPA, 1, 0x63)?;
    dma_read_gets_zeros(d, pa + 0x200, 0x900)?;
    vm.check(DATA_IPA, 1, 0x63)?;
    no_faults("the guest's checks")?;
    vm.teardown()
}

fn guest_page_reachable_after_teardown() -> TestResult {
    let d = devices()?;
    let (mut vm, pa) = guest_with_data(0xd4, 1, PAGE, 0x54)?;
    drain_faults()?;
    // While the guest owns it the page is out of reach...
    load_buffer(&d.edu, 0xa00, 8, 0x44)?;
    dma(&d.edu, Direction::ToRam, pa, 0xa00, 8)?;
    expect_faults(F_TRANSLATION, d.sid, pa, false, 2)?;
    vm.check(DATA_IPA, 1, 0x54)?;
    // ...and after teardown (reclaim scrubs it: `teardown` checks it came back zeroed) the
    // host's device reaches it again, both ways, with no fault.
    vm.teardown()?;
    stage_guest_words(&d.edu, 0, DATA_IPA, PAGE, 0x64)?;
    dma(&d.edu, Direction::ToRam, pa, 0, PAGE)?;
    for off in (0..PAGE).step_by(8) {
        let got = vmm::read(pa + off);
        let want = pattern(0x64, DATA_IPA + off);
        ensure!(
            got == want,
            "reclaimed page {:#x} holds {got:#x} after the DMA, expected {want:#x}",
            pa + off
        );
    }
    vmm::write(pa + 0x10, 0x600d_f00d);
    dma(&d.edu, Direction::FromRam, pa + 0x10, 0xb00, 8)?;
    fill(page(2), 8, 0);
    dma(&d.edu, Direction::ToRam, page(2), 0xb00, 8)?;
    let got = vmm::read(page(2));
    ensure!(
        got == 0x600d_f00d,
        "DMA read of the reclaimed page got {got:#x}"
    );
    no_faults("DMA to and from a reclaimed page")
}

fn guest_range_share() -> TestResult {
    const PAGES: u64 = 512;
    let d = devices()?;
    // 1024 pages from a 2 MiB-aligned host address at the 2 MiB-aligned DATA_IPA (block mappings
    // possible); the shared range of 512 pages straddles the 2 MiB boundary in the middle.
    let (mut vm, pa) = guest_with_data(0xd5, 1024, TWO_MIB, 0x55)?;
    let ipa = DATA_IPA + 256 * PAGE;
    let last_ipa = ipa + (PAGES - 1) * PAGE;
    let pa_of = |i: u64| pa + (i - DATA_IPA);
    // Host PA of the end of the range (one past its last byte).
    let end = pa_of(last_ipa) + PAGE;
    drain_faults()?;
    // 64 bytes for the start of the first page, 64 for the end of the last, staged before the
    // share.
    stage_guest_words(&d.edu, 0, ipa, 64, 0x65)?;
    stage_guest_words(&d.edu, 0x100, last_ipa + PAGE - 64, 64, 0x65)?;
    load_buffer(&d.edu, 0x200, 8, 0x99)?;
    guest_convert(&mut vm, gc::MEM_SHARE, ipa, PAGES)?;
    dma(&d.edu, Direction::ToRam, pa_of(ipa), 0, 64)?;
    dma(&d.edu, Direction::ToRam, end - 64, 0x100, 64)?;
    no_faults("DMA to the first and last page of a shared range")?;
    guest_sees_words(&mut vm, ipa, 64, 0x65)?;
    guest_sees_words(&mut vm, last_ipa + PAGE - 64, 64, 0x65)?;
    // The DMA TLB now holds both ends; the guest takes the range back.
    guest_convert(&mut vm, gc::MEM_UNSHARE, ipa, PAGES)?;
    dma(&d.edu, Direction::ToRam, pa_of(ipa), 0x200, 8)?;
    expect_faults(F_TRANSLATION, d.sid, pa_of(ipa), false, 2)?;
    dma(&d.edu, Direction::ToRam, end - 8, 0x200, 8)?;
    expect_faults(F_TRANSLATION, d.sid, end - 8, false, 2)?;
    // Both ends keep the earlier DMA's bytes, everything between the guest's own.
    guest_sees_words(&mut vm, ipa, 64, 0x65)?;
    guest_sees_words(&mut vm, last_ipa + PAGE - 64, 64, 0x65)?;
    vm.check(ipa + PAGE, PAGES - 2, 0x55)?;
    no_faults("the guest's checks")?;
    vm.teardown()
}
