//! PL011 output. The base comes from the DTB's `/chosen/stdout-path` (QEMU virt: 0x0900_0000,
//! which is also the fallback), and every line is printed under one lock so the CPUs' lines do
//! not interleave.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// QEMU virt's PL011, used until (or if) the DTB says otherwise.
pub const FALLBACK_UART: u64 = 0x0900_0000;

static UART_BASE: AtomicU64 = AtomicU64::new(FALLBACK_UART);
static POLL_FLAGS: AtomicBool = AtomicBool::new(true);
static LOCK: spin::Mutex<()> = spin::Mutex::new(());

const UARTDR: u64 = 0x000;
const UARTFR: u64 = 0x018;
const UARTFR_TXFF: u32 = 1 << 5;

/// Points the console at the PL011 at `base`.
pub fn set_base(base: u64) {
    UART_BASE.store(base, Ordering::SeqCst);
}

/// Whether to wait for room in the transmit FIFO before each byte. A guest turns this off: its
/// "PL011" is the host's MMIO exit handler, which takes every byte at once.
pub fn set_flag_polling(on: bool) {
    POLL_FLAGS.store(on, Ordering::SeqCst);
}

/// The PL011 base in use.
pub fn base() -> u64 {
    UART_BASE.load(Ordering::SeqCst)
}

struct Pl011(u64);

impl Pl011 {
    fn put(&self, byte: u8) {
        // SAFETY: `self.0` is the PL011 base from the DTB (or QEMU virt's fixed one), mapped as
        // Device memory by the identity map; FR and DR are its flag and data registers.
        unsafe {
            while POLL_FLAGS.load(Ordering::Relaxed)
                && core::ptr::read_volatile((self.0 + UARTFR) as *const u32) & UARTFR_TXFF != 0
            {
                core::hint::spin_loop();
            }
            core::ptr::write_volatile((self.0 + UARTDR) as *mut u32, u32::from(byte));
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

/// Prints `args` and a newline as one unbroken line.
pub fn print_line(args: fmt::Arguments<'_>) {
    let _guard = LOCK.lock();
    let mut uart = Pl011(base());
    let _ = uart.write_fmt(args);
    let _ = uart.write_str("\n");
}

/// Prints without taking the lock: for the fatal paths, which may run while the interrupted code
/// holds it (a deadlock there would turn a clear failure into a silent timeout).
pub fn print_line_raw(args: fmt::Arguments<'_>) {
    let mut uart = Pl011(base());
    let _ = uart.write_fmt(args);
    let _ = uart.write_str("\n");
}

/// Prints a formatted line to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => { $crate::console::print_line(format_args!($($arg)*)) };
}

/// Prints a formatted line without taking the console lock (fatal paths only).
#[macro_export]
macro_rules! println_raw {
    ($($arg:tt)*) => { $crate::console::print_line_raw(format_args!($($arg)*)) };
}
