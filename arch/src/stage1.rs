//! The hyp's own EL2 stage-1 translation: an identity map with W^X.
//!
//! - image text: read-only, executable; rodata: read-only, XN; data, bss, stacks: RW, XN;
//! - the stack guard pages: unmapped, so an overflow faults instead of corrupting a neighbour;
//! - all other RAM (the page pool, and host pages the hyp scrubs or reads): RW, XN;
//! - MMIO (UART, GIC, SMMU): Device-nGnRE, XN.
//!
//! SCTLR_EL2.WXN is also set, so the hardware refuses to execute anything writable.
//! 39-bit VA (T0SZ = 25, start at level 1) covers QEMU virt's devices, RAM and the high PCIe ECAM.
//! The tables come from a static pool in .bss: they must exist before the MMU (and the page
//! pool) does. They are built with 4 KiB pages for the image and 2 MiB / 1 GiB blocks elsewhere.

use core::cell::UnsafeCell;

use crate::percpu::{GUARD_SIZE, MAX_CPUS, STACK_SLOT};
use crate::sysreg::{dsb_ish, dsb_ishst, isb, read_sysreg, write_sysreg};
use crate::tables::{self, OutOfTables, Table, TableSource, GUARD};

/// AttrIndx 0 = Normal WBWA (MAIR 0xff), AttrIndx 1 = Device-nGnRE (MAIR 0x04).
const MAIR_EL2: u64 = 0x04_ff;
const ATTR_NORMAL: u64 = 0 << 2;
const ATTR_DEVICE: u64 = 1 << 2;
/// AP[1] is RES1 in the EL2 (single range) regime.
const AP1_RES1: u64 = 1 << 6;
const AP_RO: u64 = 1 << 7;
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;
const XN: u64 = 1 << 54;

/// Stage-1 leaf attributes of each kind of hyp mapping.
pub mod attrs {
    use super::*;
    /// Image text.
    pub const TEXT: u64 = ATTR_NORMAL | AP1_RES1 | AP_RO | SH_INNER | AF;
    /// Image rodata.
    pub const RODATA: u64 = ATTR_NORMAL | AP1_RES1 | AP_RO | SH_INNER | AF | XN;
    /// Data, bss, stacks and all other RAM.
    pub const DATA: u64 = ATTR_NORMAL | AP1_RES1 | SH_INNER | AF | XN;
    /// MMIO.
    pub const DEVICE: u64 = ATTR_DEVICE | AP1_RES1 | AF | XN;
}

const TABLE_POOL_PAGES: usize = 24;
const START_LEVEL: u32 = 1;
const VA_BITS: u64 = 39;

struct TablePool {
    tables: [Table; TABLE_POOL_PAGES],
    used: usize,
}

/// The stage-1 tables. Only the primary CPU writes them, during boot, before secondaries start.
struct Stage1(UnsafeCell<TablePool>);

// SAFETY: written only by the primary CPU during single-threaded boot (see `build_early` and
// `map`), read by walkers and, later, never written again.
unsafe impl Sync for Stage1 {}

static STAGE1: Stage1 = Stage1(UnsafeCell::new(TablePool {
    tables: [const { Table::EMPTY }; TABLE_POOL_PAGES],
    used: 1, // tables[0] is the root
}));

impl TableSource for TablePool {
    fn table(&mut self) -> Option<*mut Table> {
        let t = self.tables.get_mut(self.used)?;
        self.used += 1;
        Some(t as *mut Table)
    }
}

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __stacks_start: u8;
    static __stacks_end: u8;
    static __image_end: u8;
}

/// Addresses of the image sections, from the linker script.
pub struct ImageLayout {
    /// First byte of the image (text).
    pub start: u64,
    /// End of text / start of rodata.
    pub text_end: u64,
    /// End of rodata / start of data and bss.
    pub rodata_end: u64,
    /// Start of the per-CPU stack slots.
    pub stacks_start: u64,
    /// End of the stack slots.
    pub stacks_end: u64,
    /// First byte after the image (start of the page pool).
    pub end: u64,
}

/// The image layout.
pub fn image_layout() -> ImageLayout {
    // Only the addresses of the linker-script symbols are taken, never their contents.
    ImageLayout {
        start: core::ptr::addr_of!(__image_start) as u64,
        text_end: core::ptr::addr_of!(__text_end) as u64,
        rodata_end: core::ptr::addr_of!(__rodata_end) as u64,
        stacks_start: core::ptr::addr_of!(__stacks_start) as u64,
        stacks_end: core::ptr::addr_of!(__stacks_end) as u64,
        end: core::ptr::addr_of!(__image_end) as u64,
    }
}

/// Identity maps `[start, start + size)` with `attrs`, rounded out to pages, keeping whatever is
/// mapped already.
///
/// # Safety
/// Primary CPU only, while no other CPU runs hyp code (boot), and the range must not make the
/// running code or the tables writable+executable (W^X is the caller's promise).
pub unsafe fn map(start: u64, size: u64, attrs: u64) -> Result<(), OutOfTables> {
    let first = start & !0xfff;
    let end = start.saturating_add(size).saturating_add(0xfff) & !0xfff;
    if end > 1 << VA_BITS {
        return Err(OutOfTables);
    }
    // SAFETY: single writer during boot (caller's contract); the pool's tables are only used here.
    unsafe {
        let pool = &mut *STAGE1.0.get();
        let root = &mut pool.tables[0] as *mut Table;
        tables::identity_map(root, START_LEVEL, first, end - first, attrs, pool)?;
    }
    dsb_ishst();
    isb();
    Ok(())
}

/// Builds the boot-time map: the image with W^X, the stack guards, the rest of the hyp region,
/// the DTB area and the fallback UART. Runs with the MMU off.
///
/// # Safety
/// Primary CPU, MMU off, .bss zeroed, nothing else running.
pub unsafe fn build_early(
    hyp_end: u64,
    dtb_area: (u64, u64),
    uart: u64,
) -> Result<(), OutOfTables> {
    let l = image_layout();
    // With the MMU off our stores bypass the caches, but the walker will read the tables through
    // them: drop any line a loader may have left for the table pool, before and after writing.
    let pool = STAGE1.0.get() as u64;
    let pool_len = core::mem::size_of::<TablePool>() as u64;
    invalidate_dcache(pool, pool_len);
    // SAFETY: forwarded; every range below is hyp-owned or device memory.
    let built = unsafe {
        map(l.start, l.text_end - l.start, attrs::TEXT)?;
        map(l.text_end, l.rodata_end - l.text_end, attrs::RODATA)?;
        for cpu in 0..MAX_CPUS as u64 {
            map(l.stacks_start + cpu * STACK_SLOT, GUARD_SIZE, GUARD)?;
        }
        map(l.rodata_end, hyp_end - l.rodata_end, attrs::DATA)?;
        map(dtb_area.0, dtb_area.1, attrs::DATA)?;
        map(uart, 0x1000, attrs::DEVICE)
    };
    invalidate_dcache(pool, pool_len);
    built
}

/// `DC IVAC` over `[start, start + len)`: discards cached copies so that the next cacheable read
/// sees what MMU-off (non-cacheable) stores put in memory.
fn invalidate_dcache(start: u64, len: u64) {
    let line = 4u64 << ((read_sysreg!(ctr_el0) >> 16) & 0xf);
    let mut addr = start & !(line - 1);
    while addr < start + len {
        // SAFETY: the range is the hyp's own static table pool, whose only up-to-date copy is in
        // memory (written with the MMU off); discarding cache lines loses nothing.
        unsafe { core::arch::asm!("dc ivac, {}", in(reg) addr, options(nostack)) };
        addr += line;
    }
    dsb_ish();
}

/// The register values every CPU loads to turn its MMU on.
fn tcr_el2() -> u64 {
    // PS: the smallest of 40 bits and the implemented PA size (ID_AA64MMFR0_EL1.PARange).
    let parange = read_sysreg!(id_aa64mmfr0_el1) & 0xf;
    let ps = parange.min(0b010);
    const RES1: u64 = (1 << 31) | (1 << 23);
    const T0SZ: u64 = 64 - VA_BITS;
    const IRGN0_WBWA: u64 = 1 << 8;
    const ORGN0_WBWA: u64 = 1 << 10;
    const SH0_INNER: u64 = 3 << 12;
    RES1 | T0SZ | IRGN0_WBWA | ORGN0_WBWA | SH0_INNER | (ps << 16)
}

/// SCTLR_EL2 (E2H = 0) RES1 bits, plus M, C, SA, I and WXN.
const SCTLR_EL2_ON: u64 = 0x30c5_0830 | (1 << 0) | (1 << 2) | (1 << 3) | (1 << 12) | (1 << 19);

/// Turns on this CPU's EL2 stage-1 MMU with the shared tables.
///
/// # Safety
/// The tables must identity map the running code (text) and the current stack.
pub unsafe fn enable_mmu() {
    // SAFETY: the root table is static; its address is taken, not its contents.
    let root = unsafe { (*STAGE1.0.get()).tables.as_ptr() } as u64;
    // SAFETY: the caller guarantees the identity map covers the code and stack, so the
    // instruction after the SCTLR_EL2 write is fetched through the new map at the same address.
    unsafe {
        write_sysreg!(mair_el2, MAIR_EL2);
        write_sysreg!(tcr_el2, tcr_el2());
        write_sysreg!(ttbr0_el2, root);
        isb();
        core::arch::asm!("tlbi alle2", options(nostack));
        dsb_ish();
        isb();
        write_sysreg!(sctlr_el2, SCTLR_EL2_ON);
        isb();
    }
}
