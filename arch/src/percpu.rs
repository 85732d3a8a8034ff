//! Per-CPU layout (stack slots, matching boot.S and linker.ld) and per-CPU state.

use core::sync::atomic::{AtomicU64, Ordering};

/// CPUs the hyp supports (stack slots in the linker script: keep in step).
pub const MAX_CPUS: usize = 8;
/// Guard page at the bottom of each slot, left unmapped.
pub const GUARD_SIZE: u64 = 0x1000;
/// The hyp stack of each CPU.
pub const STACK_SIZE: u64 = 0x10000;
/// The fault stack above it, used only by the fatal path (a blown stack still reports).
pub const FAULT_STACK_SIZE: u64 = 0x1000;
/// Bytes per CPU slot.
pub const STACK_SLOT: u64 = GUARD_SIZE + STACK_SIZE + FAULT_STACK_SIZE;
/// Offset of the initial SP within a slot.
pub const STACK_TOP: u64 = GUARD_SIZE + STACK_SIZE;

/// MPIDR affinity of each CPU index, as found in the DTB (`u64::MAX` = no such CPU).
static CPU_MPIDR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(u64::MAX) }; MAX_CPUS];

/// Records that CPU `index` has affinity `mpidr`.
pub fn set_mpidr(index: usize, mpidr: u64) {
    if let Some(slot) = CPU_MPIDR.get(index) {
        slot.store(mpidr, Ordering::Relaxed);
    }
}

/// The CPU index with affinity `mpidr`, if the DTB lists it.
pub fn index_of(mpidr: u64) -> Option<usize> {
    CPU_MPIDR
        .iter()
        .position(|m| m.load(Ordering::Relaxed) == mpidr & 0xff_00ff_ffff)
}

/// The initial stack pointer of CPU `index`.
pub fn stack_top(index: usize) -> u64 {
    crate::stage1::image_layout().stacks_start + index as u64 * STACK_SLOT + STACK_TOP
}
