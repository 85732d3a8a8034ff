//! The demo host kernel that `./qemu-run.sh` boots under Verso: it shows, one line each, what
//! an untrusted host may touch (its own RAM, the UART) and what it may not (the hyp's memory, the
//! SMMU), with the abort Verso injects for each refused access; then a protected VM that shares
//! a page in place, and a PCI device (QEMU's `edu`, behind the SMMU) whose DMA into that page is
//! refused while it is private and lands once the guest shares it; then powers off via PSCI.
#![no_std]
#![no_main]

// Shared with dma-suite, which uses all of them; the demo needs only a part.
#[allow(dead_code)]
#[path = "../edu.rs"]
mod edu;
#[allow(dead_code)]
#[path = "../pci.rs"]
mod pci;

use verso_test_kernels::exception::{probe_read_u32, probe_read_u64, probe_write_u64, Fault};
use verso_test_kernels::smccc::{self, hvc};
use verso_test_kernels::{console, cpus, dtb, dtb_address, println};

verso_test_kernels::entry!(main);

/// QEMU virt's SMMUv3 registers (hidden from the host's DTB, so fixed here).
const SMMU_BASE: u64 = 0x0905_0000;
/// The hyp's memory as docs/boot.md fixes it; the DTB's reservation is preferred when present.
const HYP_BASE_FALLBACK: u64 = 0x4020_0000;

fn main() -> ! {
    println!("");
    println!(
        "verso demo: host kernel at EL{} on CPU {} (mpidr {:#x}), DTB at {:#x}",
        cpus::current_el(),
        cpus::this_cpu(),
        cpus::mpidr(),
        dtb_address()
    );

    match hvc([smccc::VERSO_ABI_VERSION, 0, 0, 0]) {
        Ok([0, version, calls, _]) => println!(
            "  hypercall VERSO_ABI_VERSION: version {}.{}, host calls bitmap {calls:#x}",
            version >> 16,
            version & 0xffff
        ),
        Ok(r) => println!(
            "  hypercall VERSO_ABI_VERSION: not answered (x0 = {:#x}): no Verso here?",
            r[0]
        ),
        Err(f) => println!("  hvc is undefined here ({f}): no hypervisor below us"),
    }

    let mut hyp_base = HYP_BASE_FALLBACK;
    if let Some(fdt) = dtb() {
        for r in fdt.reserved_memory() {
            println!(
                "  DTB reserves {} at {:#x}+{:#x}{}",
                r.name,
                r.base,
                r.size,
                if r.no_map { " (no-map)" } else { "" }
            );
            if r.name.starts_with("hyp@") {
                hyp_base = r.base;
            }
        }
        println!(
            "  DTB lists an SMMU: {}",
            if fdt.has_compatible("arm,smmu-v3") {
                "yes"
            } else {
                "no"
            }
        );
        println!("  bootargs: {:?}", fdt.bootargs().unwrap_or(""));
    }

    println!("may touch:");
    let own = main as *const () as u64;
    show("read my own code", own, probe_read_u64(own).map(|_| ()));
    let uart_fr = console::base() + 0x18;
    show(
        "read the UART's flag register",
        uart_fr,
        probe_read_u32(uart_fr).map(|_| ()),
    );

    println!("may not touch:");
    show(
        "read hyp memory",
        hyp_base,
        probe_read_u64(hyp_base).map(|_| ()),
    );
    let canary = hvc([smccc::VERSO_HYP_CANARY, 0, 0, 0])
        .ok()
        .filter(|r| r[0] == 0);
    if let Some([_, pa, _, _]) = canary {
        // SAFETY: the canary page is hyp memory, unreachable for the host: the store is expected
        // to fault, and the checksum below shows the page kept its content.
        show("write the hyp's canary page", pa, unsafe {
            probe_write_u64(pa, 0xbad)
        });
        if let Ok([0, _, now, at_boot]) = hvc([smccc::VERSO_HYP_CANARY, 0, 0, 0]) {
            let verdict = if now == at_boot {
                "unchanged"
            } else {
                "CHANGED"
            };
            println!("  canary checksum now {now:#018x}, at boot {at_boot:#018x}: {verdict}");
        }
    }
    show(
        "read the SMMU's IDR0",
        SMMU_BASE,
        probe_read_u32(SMMU_BASE).map(|_| ()),
    );

    vm_demo();

    println!("verso demo: done, PSCI SYSTEM_OFF");
    smccc::system_off()
}

/// Where the demo guest's data page lives in its IPA space.
const DEMO_DATA_IPA: u64 = 0x4100_0000;

/// A protected VM (`guest-worker`, loaded by qemu-run.sh at 0x5000_0000) shares one page with
/// the host and takes it back, in place, while the host watches the same physical page.
fn vm_demo() {
    use verso_test_kernels::mailbox::{guest_call, pattern};
    use verso_test_kernels::vmm::{self, Vm, PAGE};

    println!("a protected VM shares a page in place while the host watches:");
    let mut vm = match Vm::boot(0xd3e0) {
        Ok(vm) => vm,
        Err(f) => {
            println!("  no VM here: {}", f.reason());
            return;
        }
    };
    let outcome = (|| -> Result<(), verso_test_kernels::harness::Failure> {
        let pa = vm.donate(DEMO_DATA_IPA, 1, PAGE)?;
        println!(
            "  VM {:#x} runs; its page at IPA {DEMO_DATA_IPA:#x} is host page {pa:#x}",
            vm.handle
        );
        vm.fill(DEMO_DATA_IPA, 1, 0xd3)?;
        let secret = pattern(0xd3, DEMO_DATA_IPA);
        println!("  guest wrote {secret:#018x} at IPA {DEMO_DATA_IPA:#x} (private)");
        show(
            "host reads the private page",
            pa,
            probe_read_u64(pa).map(|_| ()),
        );
        let r = vm.guest_call(guest_call::MEM_SHARE, DEMO_DATA_IPA, 1, 0)?;
        println!(
            "  guest MEM_SHARE({DEMO_DATA_IPA:#x}, 1) -> x0 = {}, x1 = {}",
            r[0] as i64, r[1]
        );
        match probe_read_u64(pa) {
            Ok(v) => println!(
                "  host reads {v:#018x} at PA {pa:#x}: {}",
                if v == secret {
                    "the guest's bytes, same page, no copy"
                } else {
                    "NOT the guest's bytes"
                }
            ),
            Err(f) => println!("  host read at {pa:#x}: abort injected ({f})"),
        }
        vmm::write(pa + 8, 0x4d45_5353_4147_4521);
        let seen = Guest(vm.guest_read(DEMO_DATA_IPA + 8)?);
        println!(
            "  host wrote 0x4d45535341474521 at PA {:#x}; guest reads {seen}",
            pa + 8
        );
        let r = vm.guest_call(guest_call::MEM_UNSHARE, DEMO_DATA_IPA, 1, 0)?;
        println!(
            "  guest MEM_UNSHARE({DEMO_DATA_IPA:#x}, 1) -> x0 = {}, x1 = {}",
            r[0] as i64, r[1]
        );
        show(
            "host reads the page again",
            pa,
            probe_read_u64(pa).map(|_| ()),
        );
        let kept = Guest(vm.guest_read(DEMO_DATA_IPA)?);
        println!("  guest still reads {kept} at IPA {DEMO_DATA_IPA:#x}");
        dma_demo(&mut vm, pa)?;
        vm.teardown()?;
        println!("  VM torn down: every page back to the host, zeroed");
        Ok(())
    })();
    if let Err(f) = outcome {
        println!("  VM demo stopped: {}", f.reason());
    }
}

/// What the device writes: "DMA-EDU!" as a little-endian word.
const DEVICE_WORD: u64 = 0x2155_4445_2d41_4d44;
/// Where the edu's BAR0 goes (QEMU virt's 32-bit PCI MMIO window).
const EDU_BAR: u32 = 0x1000_0000;
/// `DMA_FAULTS_READ` (docs/abi.md).
const DMA_FAULTS_READ: u64 = 0xc600_8010;

/// The guest's page (private again after the unshare) meets a host device: the edu's DMA into
/// it is refused and recorded; the guest shares the page, and the same DMA lands, in place.
fn dma_demo(
    vm: &mut verso_test_kernels::vmm::Vm,
    pa: u64,
) -> Result<(), verso_test_kernels::harness::Failure> {
    use edu::{Direction, Edu};
    use verso_test_kernels::mailbox::guest_call;
    use verso_test_kernels::vmm::{self, PAGE};

    let Some(ecam) = pci::Ecam::from_dtb() else {
        println!("  no PCI host bridge in the DTB: no DMA demo");
        return Ok(());
    };
    let Some(bdf) = ecam.find(0, edu::VENDOR, edu::DEVICE) else {
        println!("  no edu device on PCI bus 0 (-device edu,dma_mask=...): no DMA demo");
        return Ok(());
    };
    ecam.enable(bdf, EDU_BAR);
    let edu = Edu::at(u64::from(EDU_BAR));
    let sid = bdf.requester_id();
    println!("a PCI device (edu, StreamID {sid:#x}) DMAs into the guest's page:");
    // The device's 8 bytes, staged through a host page into its buffer.
    let staging = vmm::alloc_pages(1, PAGE)?;
    vmm::write(staging, DEVICE_WORD);
    let mut ok = edu.dma(Direction::FromRam, staging, 0, 8);
    drain_dma_faults();

    ok &= edu.dma(Direction::ToRam, pa, 0, 8);
    match drain_dma_faults() {
        (0, _) => println!("  edu DMA write to PA {pa:#x} (private): NOT refused"),
        (n, Some((fault_sid, addr, read))) => println!(
            "  edu DMA write to PA {pa:#x} (private): refused, {n} SMMU fault records, first: \
             StreamID {fault_sid:#x}, {} at {addr:#x}",
            if read { "read" } else { "write" }
        ),
        (n, None) => println!("  edu DMA write to PA {pa:#x} (private): {n} records?"),
    }
    let seen = Guest(vm.guest_read(DEMO_DATA_IPA)?);
    println!("  guest still reads {seen} at IPA {DEMO_DATA_IPA:#x}");

    let r = vm.guest_call(guest_call::MEM_SHARE, DEMO_DATA_IPA, 1, 0)?;
    println!(
        "  guest MEM_SHARE({DEMO_DATA_IPA:#x}, 1) -> x0 = {}, x1 = {}",
        r[0] as i64, r[1]
    );
    // Nothing but MMIO to the edu between the guest's share and this DMA.
    ok &= edu.dma(Direction::ToRam, pa, 0, 8);
    let (n, _) = drain_dma_faults();
    let seen = Guest(vm.guest_read(DEMO_DATA_IPA)?);
    println!(
        "  edu DMA write to PA {pa:#x} (shared): {}; guest reads {seen}{}",
        if n == 0 { "accepted" } else { "REFUSED" },
        if seen.0 == Ok(DEVICE_WORD) {
            " (\"DMA-EDU!\": the device's bytes)"
        } else {
            ""
        }
    );
    let r = vm.guest_call(guest_call::MEM_UNSHARE, DEMO_DATA_IPA, 1, 0)?;
    println!(
        "  guest MEM_UNSHARE({DEMO_DATA_IPA:#x}, 1) -> x0 = {}, x1 = {}",
        r[0] as i64, r[1]
    );
    if !ok {
        println!("  (an edu DMA did not finish)");
    }
    Ok(())
}

/// Reads every waiting DMA fault record; returns how many and the first as (StreamID, address,
/// whether the device was reading).
fn drain_dma_faults() -> (usize, Option<(u32, u64, bool)>) {
    let mut first = None;
    for n in 0..1000 {
        match hvc([DMA_FAULTS_READ, 0, 0, 0]) {
            Ok([0, x1, x2, _]) if x1 >> 63 == 1 => {
                first.get_or_insert((x1 as u32, x2, x1 & 1 << 40 != 0));
            }
            _ => return (n, first),
        }
    }
    (1000, first)
}

/// What a guest's load returned: the value, or the abort injected into it.
struct Guest(Result<u64, (u64, u64)>);

impl core::fmt::Display for Guest {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Ok(v) => write!(out, "{v:#018x}"),
            Err((esr, far)) => write!(out, "an abort (esr={esr:#x} far={far:#x})"),
        }
    }
}

/// Prints the outcome of one probe.
fn show(what: &str, addr: u64, outcome: Result<(), Fault>) {
    match outcome {
        Ok(()) => println!("  {what} at {addr:#x}: ok"),
        Err(f) => println!("  {what} at {addr:#x}: abort injected, {}", describe(f)),
    }
}

fn describe(f: Fault) -> DescribedFault {
    DescribedFault(f)
}

/// A fault in words: exception class, access, fault status, then the raw registers.
struct DescribedFault(Fault);

impl core::fmt::Display for DescribedFault {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let f = self.0;
        let class = match f.ec() {
            0x25 => "data abort",
            0x21 => "instruction abort",
            _ => "exception",
        };
        let access = if f.wnr() { "write" } else { "read" };
        if f.is_external_abort() {
            write!(out, "{class} ({access}, synchronous external abort): {f}")
        } else {
            write!(out, "{class} ({access}, fsc {:#x}): {f}", f.fsc())
        }
    }
}
