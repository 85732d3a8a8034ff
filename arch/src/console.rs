//! The hyp's console: a PL011 transmitter, the `log` logger on top of it, the semihosting exit,
//! and the fatal path (panic or unexpected exception at EL2).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use log::{LevelFilter, Log, Metadata, Record};
use spin::Mutex;

use crate::sysreg::{cpu_index, read_sysreg};

/// PL011 base of QEMU virt, used until (and unless) the DTB names the stdout UART.
pub const UART_FALLBACK: u64 = 0x0900_0000;

/// PL011 base in use.
static UART_BASE: AtomicU64 = AtomicU64::new(UART_FALLBACK);
/// Serialises lines from several CPUs. The fatal path does not take it (it may be held).
static CONSOLE_LOCK: Mutex<()> = Mutex::new(());

/// Switches output to the PL011 at `base` (from the DTB's stdout-path).
pub fn set_uart_base(base: u64) {
    UART_BASE.store(base, Ordering::Relaxed);
}

/// The PL011 in use.
pub fn uart_base() -> u64 {
    UART_BASE.load(Ordering::Relaxed)
}

/// A PL011 transmitter; QEMU's needs no initialisation.
struct Pl011;

impl Pl011 {
    const DR: u64 = 0x00;
    const FR: u64 = 0x18;
    const FR_TXFF: u32 = 1 << 5;

    fn put(&self, byte: u8) {
        let base = uart_base();
        // SAFETY: `base` is the PL011 from the DTB (or the QEMU virt fallback), mapped as Device
        // memory in the hyp's stage-1 (or accessed with the MMU off, where all accesses are
        // Device); FR and DR are 32-bit registers of that UART.
        unsafe {
            while core::ptr::read_volatile((base + Self::FR) as *const u32) & Self::FR_TXFF != 0 {}
            core::ptr::write_volatile((base + Self::DR) as *mut u32, u32::from(byte));
        }
    }
}

impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

/// Prints one formatted line, whole, even when several CPUs print at once.
pub fn print(args: fmt::Arguments) {
    let _guard = CONSOLE_LOCK.lock();
    let _ = Pl011.write_fmt(args);
}

/// `println!` on the hyp console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

struct Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }
    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            print(format_args!(
                "[verso cpu{} {:5}] {}\n",
                cpu_index(),
                record.level(),
                record.args()
            ));
        }
    }
    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the logger with the level named by the last `verso.log=<level>` in `bootargs`
/// (default info).
pub fn init_logger(bootargs: Option<&str>) {
    // The last `verso.log=` wins, as for every other option (`verso::fdt::bootarg_value`), so a
    // suite can lower the level the harness put first.
    let level = bootargs
        .and_then(|args| verso::fdt::bootarg_value(args, "verso.log"))
        .and_then(parse_level)
        .unwrap_or(LevelFilter::Info);
    // Only fails if a logger is already set, which then stays in place.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

/// Ends QEMU through semihosting SYS_EXIT with `status` (we always run with `-semihosting`).
pub fn semihosting_exit(status: u32) -> ! {
    let block: [u64; 2] = [0x20026, u64::from(status)];
    // SAFETY: SYS_EXIT (x0 = 0x18) reads the two-word block at x1, which lives on this stack
    // frame; under -semihosting QEMU exits and never returns here.
    unsafe {
        core::arch::asm!("hlt #0xf000", in("x0") 0x18u64, in("x1") block.as_ptr(),
                         options(nostack));
    }
    // Without -semihosting `hlt` is UNDEFINED and lands in the fatal vector, which guards against
    // re-entry; this loop is the last resort.
    loop {
        core::hint::spin_loop();
    }
}

/// Set by the first CPU that enters the fatal path.
static FATAL: AtomicBool = AtomicBool::new(false);
/// Which CPU owns the fatal path (so a fault inside it is recognised as re-entry).
static FATAL_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The exit status of every fatal stop of the hyp.
pub const FATAL_EXIT_STATUS: u32 = 101;

/// Prints `VERSO PANIC: <what>` with ESR, FAR, ELR and the CPU, then ends QEMU with status 101.
/// A fault while doing so (re-entry) exits at once without printing again.
pub fn fatal(what: fmt::Arguments) -> ! {
    let cpu = cpu_index();
    if FATAL.swap(true, Ordering::AcqRel) {
        if FATAL_CPU.load(Ordering::Acquire) == cpu {
            semihosting_exit(FATAL_EXIT_STATUS);
        }
        // Another CPU is printing; let it finish and exit.
        loop {
            core::hint::spin_loop();
        }
    }
    FATAL_CPU.store(cpu, Ordering::Release);
    let esr = read_sysreg!(esr_el2);
    let far = read_sysreg!(far_el2);
    let elr = read_sysreg!(elr_el2);
    // Bypass the console lock: its holder may be the code that failed.
    let _ = write!(
        Pl011,
        "\r\nVERSO PANIC: {what}\r\n  esr_el2={esr:#x} far_el2={far:#x} elr_el2={elr:#x} cpu={cpu}\r\n"
    );
    semihosting_exit(FATAL_EXIT_STATUS)
}
