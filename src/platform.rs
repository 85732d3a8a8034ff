//! What the portable core asks of the architecture.
//!
//! The core never issues an instruction. It reads and writes physical memory through
//! [`PhysMemory`], and asks for TLB and cache maintenance through [`TlbMaintenance`] and
//! [`CacheMaintenance`]. At EL2 (`arch/`) these are `dsb`/`tlbi`/`dc` sequences (and, for the host
//! VMID, the matching SMMU invalidations); in `cargo test` a recording fake checks the discipline.

use crate::addr::{Ipa, PhysAddr, Vmid};

/// Access to physical memory from the hypervisor.
pub trait PhysMemory {
    /// A pointer through which the hypervisor may access the byte at `pa`.
    ///
    /// The returned pointer is valid for the whole page containing `pa` as long as that page is
    /// RAM that the hypervisor has mapped (at EL2 every RAM page is identity mapped).
    fn phys_to_ptr(&self, pa: PhysAddr) -> *mut u8;
}

/// TLB maintenance for stage-2 translations. Every call is *complete* when it returns: the
/// invalidation has been broadcast and finished (`DSB ISH`) on every CPU and every other walker
/// of the tables (the SMMU for the host VMID).
pub trait TlbMaintenance {
    /// Make descriptor writes visible to the table walkers (`DSB ISHST`). Needed after a write that
    /// makes an invalid entry valid; implied by every invalidation below.
    fn publish_table_writes(&mut self);

    /// Invalidate every cached translation (stage 2 and combined stage 1+2) of `vmid` for the
    /// `pages` pages from `start`. `level_hint` is the level of the leaf entries removed, if all
    /// of them were at one level (a TTL hint); `None` means unknown or mixed.
    fn invalidate_ipa_range(&mut self, vmid: Vmid, start: Ipa, pages: u64, level_hint: Option<u8>);

    /// Invalidate every cached translation of `vmid`.
    fn invalidate_vmid(&mut self, vmid: Vmid);
}

/// Data cache maintenance.
pub trait CacheMaintenance {
    /// Clean and invalidate `len` bytes from `pa` to the point of coherency, so that a page the
    /// hypervisor scrubbed reaches memory before another owner (or a non-coherent device) sees it.
    fn clean_invalidate_to_poc(&mut self, pa: PhysAddr, len: u64);
}

/// Access to device registers (MMIO) at physical addresses, for the drivers the core owns (the
/// SMMUv3). At EL2 these are single-copy-atomic `ldr`/`str` of the given width to Device memory,
/// with the barriers that order them against normal memory: a write is preceded by `DSB ST` (so a
/// queue entry written to memory is visible before the register that publishes it), a read is
/// followed by `DSB LD` (so memory read after it, e.g. an event record, is not read early).
///
/// The width matters: some devices answer a 64-bit read of a 32-bit register with 0 (QEMU's SMMU
/// does), so a driver uses exactly the width the register has.
pub trait Mmio {
    /// Reads the 32-bit register at `pa`.
    fn read32(&mut self, pa: PhysAddr) -> u32;
    /// Writes the 32-bit register at `pa`.
    fn write32(&mut self, pa: PhysAddr, value: u32);
    /// Reads the 64-bit register at `pa`.
    fn read64(&mut self, pa: PhysAddr) -> u64;
    /// Writes the 64-bit register at `pa`.
    fn write64(&mut self, pa: PhysAddr, value: u64);
}

/// Everything the core needs from the architecture.
pub trait Platform: PhysMemory + TlbMaintenance + CacheMaintenance {}

impl<T: PhysMemory + TlbMaintenance + CacheMaintenance> Platform for T {}
