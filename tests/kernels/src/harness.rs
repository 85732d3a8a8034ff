//! The test table and its runner.
//!
//! A suite is a `&[Test]`; [`run_suite`] runs every test on the boot CPU, prints one line per
//! test (`PASS: name`, `FAIL: name (why)`, `SKIP: name (why)`), then `N passed, N failed`, and
//! ends QEMU with status 0 iff nothing failed. A panic or an unexpected exception inside a test
//! fails that test, prints the summary (counting it) and ends QEMU with status 1: later tests
//! would run on a machine in an unknown state.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// One test: a name that states the rule, and the function that checks it.
pub struct Test {
    /// Printed on the result line; by convention the rule being checked.
    pub name: &'static str,
    /// Runs the test: `Ok(())` passes, `Err` fails or skips with a reason.
    pub run: fn() -> TestResult,
}

/// What a test returns.
pub type TestResult = Result<(), Failure>;

/// Why a test did not pass. Build it with [`fail!`](crate::fail), [`ensure!`](crate::ensure) or
/// [`skip!`](crate::skip).
pub struct Failure {
    skip: bool,
    message: Message,
}

impl Failure {
    /// A failure with a formatted reason.
    pub fn fail(args: fmt::Arguments<'_>) -> Self {
        Self {
            skip: false,
            message: Message::from_args(args),
        }
    }
    /// A skip with a formatted reason (the test could not run here; counts as neither).
    pub fn skip(args: fmt::Arguments<'_>) -> Self {
        Self {
            skip: true,
            message: Message::from_args(args),
        }
    }
    /// Whether this is a skip rather than a failure.
    pub fn is_skip(&self) -> bool {
        self.skip
    }
    /// The reason.
    pub fn reason(&self) -> &str {
        self.message.as_str()
    }
}

/// A bounded, allocation-free string: reasons longer than its capacity are cut short.
pub struct Message {
    buf: [u8; 240],
    len: usize,
}

impl Message {
    fn from_args(args: fmt::Arguments<'_>) -> Self {
        let mut m = Self {
            buf: [0; 240],
            len: 0,
        };
        let _ = m.write_fmt(args);
        m
    }
    fn as_str(&self) -> &str {
        // Only whole UTF-8 sequences are ever copied in (see write_str).
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<bad utf-8>")
    }
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let mut tmp = [0; 4];
            let bytes = c.encode_utf8(&mut tmp).as_bytes();
            if self.len + bytes.len() > self.buf.len() {
                break;
            }
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
        Ok(())
    }
}

/// Returns a failure from the enclosing test: `fail!("x = {x:#x}")`.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err($crate::harness::Failure::fail(format_args!($($arg)*)))
    };
}

/// Returns a skip from the enclosing test: `skip!("needs 4 CPUs")`.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)*) => {
        return Err($crate::harness::Failure::skip(format_args!($($arg)*)))
    };
}

/// Fails the enclosing test unless `cond` holds: `ensure!(a == b, "a = {a}, b = {b}")`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::fail!($($arg)*);
        }
    };
}

/// A test table from test function names: `tests![a_rule, another_rule]` is
/// `&[Test { name: "a_rule", run: a_rule }, ...]`, so a test's name is always its function's.
#[macro_export]
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        &[$($crate::harness::Test { name: stringify!($name), run: $name }),*]
    };
}

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static CURRENT: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);

fn current_name() -> Option<&'static str> {
    let p = CURRENT.load(Ordering::SeqCst);
    if p.is_null() {
        return None;
    }
    let len = CURRENT_LEN.load(Ordering::SeqCst);
    // SAFETY: `p`/`len` were stored together from a `&'static str` (a test name) by `run_suite`.
    let bytes = unsafe { core::slice::from_raw_parts(p, len) };
    core::str::from_utf8(bytes).ok()
}

fn set_current(name: Option<&'static str>) {
    let (p, len) = name.map_or((core::ptr::null_mut(), 0), |n| {
        (n.as_ptr().cast_mut(), n.len())
    });
    CURRENT_LEN.store(len, Ordering::SeqCst);
    CURRENT.store(p, Ordering::SeqCst);
}

/// Runs every test of `suite`, prints the results and the summary, and ends QEMU.
pub fn run_suite(suite: &str, tests: &'static [Test]) -> ! {
    crate::println!("== suite {suite}: {} tests ==", tests.len());
    for t in tests {
        set_current(Some(t.name));
        match (t.run)() {
            Ok(()) => {
                PASSED.fetch_add(1, Ordering::SeqCst);
                crate::println!("PASS: {}", t.name);
            }
            Err(f) if f.is_skip() => crate::println!("SKIP: {} ({})", t.name, f.reason()),
            Err(f) => {
                FAILED.fetch_add(1, Ordering::SeqCst);
                crate::println!("FAIL: {} ({})", t.name, f.reason());
            }
        }
    }
    set_current(None);
    finish()
}

fn finish() -> ! {
    let passed = PASSED.load(Ordering::SeqCst);
    let failed = FAILED.load(Ordering::SeqCst);
    crate::println_raw!("{passed} passed, {failed} failed");
    crate::semihosting::exit(u32::from(failed != 0))
}

/// Fails the running test (if any) with `why`, prints the summary and ends QEMU with status 1.
/// Used by the panic handler and the unexpected-exception path, on any CPU.
pub fn abort_suite(why: fmt::Arguments<'_>) -> ! {
    FAILED.fetch_add(1, Ordering::SeqCst);
    match current_name() {
        Some(name) => crate::println_raw!("FAIL: {name} ({why})"),
        None => crate::println_raw!("FAIL: kernel ({why})"),
    }
    finish()
}
