//! Ending QEMU with a status: semihosting SYS_EXIT (we always run with `-semihosting`).

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

const SYS_EXIT: u64 = 0x18;
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

static EXITING: AtomicBool = AtomicBool::new(false);

/// Ends QEMU with exit status `code`.
///
/// Without `-semihosting` the `hlt` is UNDEFINED and comes back through the unexpected-exception
/// path, which calls this again: the second call falls back to PSCI SYSTEM_OFF and then parks, so
/// a misconfigured run ends (or times out) instead of recursing.
pub fn exit(code: u32) -> ! {
    if !EXITING.swap(true, Ordering::SeqCst) {
        let block = [ADP_STOPPED_APPLICATION_EXIT, u64::from(code)];
        // SAFETY: the semihosting SYS_EXIT call: x0 = operation, x1 = pointer to its two-word
        // parameter block, which lives on this stack for the duration of the call.
        unsafe {
            asm!("hlt #0xf000", in("x0") SYS_EXIT, in("x1") block.as_ptr(), options(nostack));
        }
    }
    let _ = crate::smccc::psci_call(crate::smccc::psci::SYSTEM_OFF, 0, 0, 0);
    loop {
        // SAFETY: waiting for an event has no effect on memory.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}
