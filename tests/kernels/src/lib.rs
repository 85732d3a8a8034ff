//! A small runtime for bare-metal test kernels that boot as Verso's host (or, later, its guests)
//! on QEMU `virt`.
//!
//! A kernel is an arm64 Linux Image (header at the start, linked for 0x4400_0000, flattened with
//! `rust-objcopy -O binary`) so Verso, or QEMU itself, boots it exactly as it would boot Linux:
//! EL1, MMU off, x0 = DTB. The runtime provides:
//! - [`boot`]: entry, FP/SIMD enable, identity-mapped EL1 MMU, stacks, `.bss`;
//! - [`console`]: PL011 output ([`println!`]) at the DTB's `stdout-path`;
//! - [`exception`]: vectors, and probes that *expect* a fault and report ESR/FAR/ELR;
//! - [`smccc`]: hypercalls and PSCI through the DTB's conduit;
//! - [`cpus`]: secondary CPUs through PSCI CPU_ON, with jobs run on them;
//! - [`harness`]: the test table, `PASS:`/`FAIL:`/`SKIP:` lines, the summary and the exit status;
//! - [`semihosting`]: ending QEMU with a status;
//! - [`vmm`]: a minimal VMM (VM host calls, guest console, teardown) for host-role kernels, and
//!   [`mailbox`]: how it drives a guest-role kernel (`guest-worker`), one command per exit.
//!
//! Developing without the hyp: QEMU boots the ELF itself at EL1 (it then puts the DTB at
//! 0x4000_0000 and enters with x0 = 0, hence [`FALLBACK_DTB`]; the PSCI conduit becomes `hvc`):
//! ```text
//! timeout 20 qemu-system-aarch64 -M virt,gic-version=3 -cpu max -smp 4 -m 1G -nographic \
//!   -semihosting -nic none -kernel target/aarch64-unknown-none/release/host-suite -append suite=host
//! ```
//! The hyp-specific tests fail there, which shows that they can.
//!
//! A kernel binary declares its entry with [`entry!`]:
//! ```ignore
//! verso_test_kernels::entry!(main);
//! fn main() -> ! { verso_test_kernels::harness::run_suite("mine", TESTS) }
//! ```
#![no_std]

pub mod boot;
pub mod console;
pub mod cpus;
pub mod exception;
pub mod harness;
pub mod mailbox;
pub mod semihosting;
pub mod smccc;
pub mod vmm;

use core::sync::atomic::{AtomicUsize, Ordering};

use verso::fdt::Fdt;

/// Where QEMU puts its DTB when the kernel is an ELF linked above 0x4010_0000 (entered with
/// x0 = 0), and where Verso writes the amended one: the fallback when x0 is 0.
pub const FALLBACK_DTB: usize = 0x4000_0000;

/// Where guest RAM starts in every VM (docs/abi.md, "Guest images"). A kernel linked here (the
/// `guest_*` binaries, see build.rs) runs in *guest role*: no DTB, x0 is a value chosen by the
/// host ([`boot_arg`]), PSCI through `hvc`, and a console whose every write is an MMIO exit.
pub const GUEST_RAM_BASE: usize = 0x4000_0000;

static DTB: AtomicUsize = AtomicUsize::new(0);
static BOOT_ARG: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    /// First byte of the image (link.ld).
    static __image_start: u8;
}

/// Whether this kernel was linked as a guest (at [`GUEST_RAM_BASE`]).
pub fn is_guest() -> bool {
    // Only the address of the linker-defined symbol is taken, never its content.
    let base = core::ptr::addr_of!(__image_start) as usize;
    base == GUEST_RAM_BASE
}

/// x0 at entry: the DTB address for a host-role kernel, the host's VCPU_CREATE value for a guest.
pub fn boot_arg() -> u64 {
    BOOT_ARG.load(Ordering::SeqCst) as u64
}

/// The DTB this kernel was booted with (as the loader passed it), if it parses.
pub fn dtb() -> Option<Fdt<'static>> {
    let p = DTB.load(Ordering::SeqCst);
    if p == 0 {
        return None;
    }
    // SAFETY: `p` is the DTB address from the boot protocol (or the fallback), in RAM that the
    // identity map covers; `from_ptr` validates the header before trusting totalsize, and nothing
    // in this kernel writes to the DTB, so the 'static borrow is never invalidated.
    unsafe { Fdt::from_ptr(p as *const u8) }.ok()
}

/// The physical address of the DTB (0 if none was found).
pub fn dtb_address() -> usize {
    DTB.load(Ordering::SeqCst)
}

extern "Rust" {
    /// The kernel's main function, defined by [`entry!`].
    fn __kernel_main() -> !;
}

/// Declares `$main: fn() -> !` as the kernel's entry point (called on the boot CPU once the
/// runtime is up).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        fn __kernel_main() -> ! {
            let main: fn() -> ! = $main;
            main()
        }
    };
}

/// Rust entry of the boot CPU (called by `_start` with the stack set and `.bss` clear).
extern "C" fn primary_main(dtb: usize) -> ! {
    BOOT_ARG.store(dtb, Ordering::SeqCst);
    if is_guest() {
        // Each console byte is an exit the host handles: do not poll the flag register too
        // (that would double the exits), and there is no DTB to read the rest from.
        console::set_flag_polling(false);
        cpus::set_cpus(core::iter::empty());
        smccc::set_psci_conduit_hvc(true);
        // SAFETY: `__kernel_main` is defined by the binary through `entry!` with this signature.
        unsafe { __kernel_main() }
    }
    let dtb = if dtb != 0 { dtb } else { FALLBACK_DTB };
    DTB.store(dtb, Ordering::SeqCst);
    match self::dtb() {
        Some(fdt) => {
            if let Some(uart) = fdt.stdout_uart() {
                console::set_base(uart);
            }
            cpus::set_cpus(fdt.cpus());
            let method = fdt.property("/psci", "method");
            smccc::set_psci_conduit_hvc(method == Some(b"hvc\0".as_slice()));
        }
        None => {
            DTB.store(0, Ordering::SeqCst);
            cpus::set_cpus(core::iter::empty());
            println!("warning: no valid DTB at {dtb:#x}; using QEMU virt defaults");
        }
    }
    // SAFETY: `__kernel_main` is defined by the binary through `entry!` with this signature.
    unsafe { __kernel_main() }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    harness::abort_suite(format_args!("panic on CPU {}: {}", cpus::this_cpu(), info))
}
