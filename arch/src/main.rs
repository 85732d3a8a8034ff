//! Verso's EL2 runtime for aarch64 and the bootable image for QEMU `virt`.
//!
//! Boot, in order (docs/boot.md): refuse unless at EL2 (boot.S); stack, vectors; the hyp's own
//! stage-1 with W^X and the MMU on; platform discovery from QEMU's DTB; the page pool; the canary
//! page; the host's amended DTB; the host stage-2; the host's EL1 world; then ERET into the host
//! payload. Secondary CPUs come in through the host's (relayed) PSCI CPU_ON and run the same EL2
//! initialisation before entering the host's entry point.
#![no_std]
#![no_main]

mod console;
mod guest;
mod host;
mod host_stage2;
mod layout;
mod percpu;
mod platform;
mod pool;
mod psci;
mod smmu;
mod stage1;
mod sysreg;
mod tables;

use core::fmt::Write as _;
use core::panic::PanicInfo;

use verso::addr::PAGE_SIZE;
use verso::fdt::{amend, strip_words, Amendments, Fdt};

use layout::{Machine, DTB_BASE, DTB_MAX, HYP_BASE, HYP_SIZE};
use sysreg::{cpu_index, mpidr_affinity};

core::arch::global_asm!(
    include_str!("asm/boot.S"),
    MAX_CPUS = const percpu::MAX_CPUS,
    STACK_SLOT = const percpu::STACK_SLOT,
    STACK_TOP = const percpu::STACK_TOP,
    UART_FALLBACK = const console::UART_FALLBACK,
);
core::arch::global_asm!(
    include_str!("asm/vectors.S"),
    MAX_CPUS = const percpu::MAX_CPUS,
    STACK_SLOT = const percpu::STACK_SLOT,
    CONTEXT_SIZE = const host::CONTEXT_SIZE,
);
core::arch::global_asm!(include_str!("asm/guest.S"));

/// First Rust code on the boot CPU (index 0), MMU off, from boot.S.
#[no_mangle]
extern "C" fn primary_main(_cpu: usize) -> ! {
    // SAFETY: boot CPU, MMU off, .bss zeroed, no other CPU running: the contract of build_early.
    // The DTB area and UART are mapped so that the next steps can read and print.
    if unsafe {
        stage1::build_early(
            HYP_BASE + HYP_SIZE,
            (DTB_BASE, DTB_MAX),
            console::UART_FALLBACK,
        )
    }
    .is_err()
    {
        console::fatal(format_args!("stage-1 table pool too small"));
    }
    // SAFETY: build_early identity maps the text and this CPU's stack.
    unsafe { stage1::enable_mmu() };

    // SAFETY: the DTB area is mapped RW; `from_ptr` reads and bounds-checks the header.
    let fdt = match unsafe { Fdt::from_ptr(DTB_BASE as *const u8) } {
        Ok(f) if f.total_size() as u64 <= DTB_MAX => f,
        Ok(_) => console::fatal(format_args!("DTB at {DTB_BASE:#x} larger than 2 MiB")),
        Err(e) => console::fatal(format_args!("no valid DTB at {DTB_BASE:#x}: {e:?}")),
    };
    let machine = Machine::discover(&fdt);
    console::set_uart_base(machine.uart);
    console::init_logger(fdt.bootargs());
    verso::mem::lock::set_cpu_index_fn(cpu_index);
    log::info!(
        "Verso EL2 hypervisor, {} CPUs max, hyp at {HYP_BASE:#x}+{HYP_SIZE:#x}",
        percpu::MAX_CPUS
    );

    discover_cpus(&fdt);
    map_platform(&machine);
    let l = stage1::image_layout();
    if l.stacks_end - l.stacks_start != percpu::MAX_CPUS as u64 * percpu::STACK_SLOT {
        console::fatal(format_args!(
            "linker.ld stack slots disagree with percpu.rs"
        ));
    }
    // SAFETY: from the end of the image to the end of the hyp region nothing is in use; it is
    // mapped RW+XN by build_early.
    unsafe { pool::init(l.end, HYP_BASE + HYP_SIZE) };
    log::info!(
        "image {:#x}..{:#x} (text ..{:#x}, rodata ..{:#x}), pool {} KiB",
        l.start,
        l.end,
        l.text_end,
        l.rodata_end,
        pool::free_bytes() / 1024
    );

    let Some(canary) = pool::alloc_zeroed(PAGE_SIZE) else {
        console::fatal(format_args!("page pool exhausted (canary)"));
    };
    host::init_canary(canary);

    let entry = check_payload(&machine);
    // Before QEMU's DTB is replaced by the host's (which hides the SMMU); DMA aborts from here.
    let smmu_plan = smmu::discover(&fdt, machine.smmu);
    let dtb_size = write_host_dtb(&fdt);
    log::info!("host DTB: {dtb_size} bytes at {DTB_BASE:#x}");

    let s2 = match host_stage2::build(&machine) {
        Ok(s2) => s2,
        Err(e) => console::fatal(format_args!("cannot build the host stage-2: {e:?}")),
    };
    host::set_host_stage2(s2.vtcr, s2.vttbr);
    smmu::init(smmu_plan, s2.vtcr, s2.vttbr);
    log::info!(
        "host stage-2: vtcr={:#x} vttbr={:#x}, pool {} KiB free",
        s2.vtcr,
        s2.vttbr,
        pool::free_bytes() / 1024
    );

    host::init_el1_world();
    log::info!("entering host at {entry:#x} (EL1h, x0={DTB_BASE:#x})");
    host::enter(DTB_BASE, entry, percpu::stack_top(0))
}

/// First Rust code on a secondary CPU, started by the relayed CPU_ON; MMU off.
#[no_mangle]
extern "C" fn secondary_main(cpu: usize) -> ! {
    // SAFETY: the primary built the complete stage-1 (text, stacks) before any CPU_ON.
    unsafe { stage1::enable_mmu() };
    host::init_el1_world();
    let Some(boot) = psci::take_host_boot(cpu) else {
        console::fatal(format_args!("cpu{cpu} started without a pending CPU_ON"));
    };
    log::info!(
        "cpu{cpu} (mpidr {:#x}) up, entering host at {:#x}",
        mpidr_affinity(),
        boot.entry
    );
    host::enter(boot.context, boot.entry, percpu::stack_top(cpu))
}

/// Assigns CPU indices: the boot CPU is 0, the others follow in DTB order.
fn discover_cpus(fdt: &Fdt) {
    let boot = mpidr_affinity();
    percpu::set_mpidr(0, boot);
    let mut next = 1;
    for mpidr in fdt.cpus() {
        if mpidr == boot {
            continue;
        }
        if next >= percpu::MAX_CPUS {
            log::warn!(
                "cpu mpidr {mpidr:#x} ignored: more than {} CPUs",
                percpu::MAX_CPUS
            );
            continue;
        }
        percpu::set_mpidr(next, mpidr);
        next += 1;
    }
    log::info!("{next} CPUs");
}

/// Maps discovered RAM (RW+XN) and devices (Device-nGnRE, XN) into the hyp's stage-1.
fn map_platform(m: &Machine) {
    if m.ram().is_empty() {
        console::fatal(format_args!("DTB has no /memory"));
    }
    let mut ok = true;
    for &(base, size) in m.ram() {
        log::info!("RAM {base:#x}+{size:#x}");
        // SAFETY: boot CPU, no other running; RAM is mapped RW+XN, never executable.
        ok &= unsafe { stage1::map(base, size, stage1::attrs::DATA) }.is_ok();
    }
    let devices = [
        ("uart", Some((m.uart, 0x1000))),
        ("gic", m.gic),
        ("smmu", m.smmu),
    ];
    for (name, dev) in devices {
        if let Some((base, size)) = dev {
            log::info!("{name} {base:#x}+{size:#x}");
            // SAFETY: as above; MMIO is Device memory, never executable.
            ok &= unsafe { stage1::map(base, size, stage1::attrs::DEVICE) }.is_ok();
        }
    }
    if let Some((base, size)) = m.pcie_ecam {
        log::info!("pcie ecam {base:#x}+{size:#x}");
    }
    if !ok {
        console::fatal(format_args!(
            "stage-1 table pool too small for the platform"
        ));
    }
}

/// Validates the arm64 Image header at the payload address and returns the entry point.
fn check_payload(m: &Machine) -> u64 {
    const HEADER: u64 = 64;
    const MAGIC: u32 = 0x644d_5241;
    let base = m.payload;
    let outside_hyp = |b: u64, s: u64| b.saturating_add(s) <= HYP_BASE || b >= HYP_BASE + HYP_SIZE;
    if !base.is_multiple_of(8) || !m.in_ram(base, HEADER) || !outside_hyp(base, HEADER) {
        console::fatal(format_args!("payload address {base:#x} is not in host RAM"));
    }
    // SAFETY: the header lies in RAM outside the hyp region, mapped RW in the hyp's stage-1.
    let word = |off: u64| unsafe { core::ptr::read_volatile((base + off) as *const u64) };
    let magic = word(0x38) as u32;
    if magic != MAGIC {
        console::fatal(format_args!(
            "no arm64 Image at {base:#x} (magic {magic:#x})"
        ));
    }
    let (mut text_offset, image_size) = (word(0x08), word(0x10));
    if image_size == 0 {
        // Before Linux 3.17 image_size was 0 and text_offset meant 0x80000.
        text_offset = 0x8_0000;
    }
    if !base.wrapping_sub(text_offset).is_multiple_of(0x20_0000) {
        log::warn!("payload at {base:#x} is not 2 MiB aligned base + text_offset {text_offset:#x}");
    }
    if image_size != 0 && (!m.in_ram(base, image_size) || !outside_hyp(base, image_size)) {
        console::fatal(format_args!(
            "payload {base:#x}+{image_size:#x} does not fit in host RAM"
        ));
    }
    log::info!("payload: arm64 Image at {base:#x}, text_offset {text_offset:#x}, image_size {image_size:#x}");
    base
}

/// Writes the host's DTB at DTB_BASE: a copy of QEMU's with the hyp region reserved (no-map), the
/// SMMU removed (and the PCIe `iommu-map` pointing at it), and the `verso.*` bootargs stripped.
fn write_host_dtb(fdt: &Fdt) -> usize {
    let size = fdt.total_size() as u64;
    let Some(copy) = pool::alloc_zeroed(size) else {
        console::fatal(format_args!("page pool exhausted (DTB copy)"));
    };
    // SAFETY: `copy` is a fresh pool buffer of `size` bytes; the source is QEMU's DTB (mapped).
    let src = unsafe {
        core::ptr::copy_nonoverlapping(
            fdt.as_bytes().as_ptr(),
            copy.raw() as *mut u8,
            size as usize,
        );
        core::slice::from_raw_parts(copy.raw() as *const u8, size as usize)
    };
    let Ok(src) = Fdt::new(src) else {
        console::fatal(format_args!("DTB copy does not parse"));
    };
    let mut args_buf = [0u8; 1024];
    let bootargs = src
        .bootargs()
        .map(|a| strip_words(a, "verso.", &mut args_buf));
    let bootargs = match bootargs {
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => console::fatal(format_args!("bootargs too long: {e:?}")),
        None => None,
    };
    let reserve = [("hyp", HYP_BASE, HYP_SIZE)];
    let edits = Amendments {
        reserve_no_map: &reserve,
        remove_compatible: &["arm,smmu-v3"],
        remove_properties: &["iommu-map", "iommu-map-mask"],
        bootargs,
    };
    // SAFETY: the DTB area (below the hyp region) is mapped RW and nothing else uses it now: the
    // source is the pool copy.
    let out = unsafe { core::slice::from_raw_parts_mut(DTB_BASE as *mut u8, DTB_MAX as usize) };
    let written = match amend(&src, out, &edits) {
        Ok(n) => n,
        Err(e) => console::fatal(format_args!("cannot amend the DTB: {e:?}")),
    };
    // The host reads it with its MMU (and caches) off.
    platform::clean_invalidate_to_poc(DTB_BASE, written as u64);
    // SAFETY: the copy came from alloc_zeroed with this size and is no longer referenced.
    unsafe { pool::free(copy, size) };
    written
}

/// Entry from vectors.S for any exception taken from EL2 itself: always fatal.
#[no_mangle]
extern "C" fn el2_fatal_exception(kind: u64) -> ! {
    const KINDS: [&str; 4] = ["sync", "irq", "fiq", "serror"];
    let origin = if kind < 4 {
        "EL2 (SP_EL0)"
    } else if kind < 8 {
        "EL2"
    } else {
        "lower EL"
    };
    console::fatal(format_args!(
        "unexpected {} exception from {origin}",
        KINDS[(kind % 4) as usize]
    ))
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let mut msg = Line::default();
    let _ = write!(msg, "{}", info.message());
    match info.location() {
        Some(loc) => console::fatal(format_args!(
            "{} at {}:{} on cpu{}",
            msg.as_str(),
            loc.file(),
            loc.line(),
            cpu_index()
        )),
        None => console::fatal(format_args!("{}", msg.as_str())),
    }
}

/// A fixed-size line buffer (the fatal path must not depend on anything that might be broken).
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; 160],
            len: 0,
        }
    }
}

impl Line {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<invalid utf-8>")
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len < self.buf.len() && b.is_ascii() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}
