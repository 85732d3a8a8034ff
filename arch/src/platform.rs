//! The `verso::platform` traits at EL2: identity-mapped physical memory, broadcast stage-2 TLB
//! maintenance with the right VMID in context (and, for VMIDs whose stage-2 devices walk too, the
//! SMMU's: `smmu.rs`), and data cache maintenance by VA (= PA).

use core::sync::atomic::{AtomicU64, Ordering};

use verso::addr::{Ipa, PhysAddr, Vmid};
use verso::platform::{CacheMaintenance, PhysMemory, TlbMaintenance};

use crate::sysreg::{dsb_ish, dsb_ishst, isb, read_sysreg, write_sysreg};

/// Above this many pages one `TLBI VMALLS12E1IS` is cheaper than a TLBI per page.
const MAX_TLBI_PAGES: u64 = 64;

/// VTTBR_EL2 value of each VMID whose stage-2 is live (index = VMID; 0 = unknown). EL1&0 TLBIs
/// issued at EL2 act on the VMID in VTTBR_EL2, so we must switch to the target's full VTTBR (not
/// just its VMID field: a speculative walk must never pair one VM's VMID with another's tables).
static VTTBR_OF: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];

/// Records the VTTBR_EL2 value (root | VMID << 48) of a live stage-2.
pub fn register_vttbr(vmid: Vmid, vttbr: u64) {
    if let Some(slot) = VTTBR_OF.get(usize::from(vmid.0)) {
        slot.store(vttbr, Ordering::Release);
    }
}

/// The EL2 implementation of the platform traits. Stateless: any number may exist.
#[derive(Default)]
pub struct El2Platform;

/// Runs `f` with VTTBR_EL2 holding `vmid`'s context, then restores the previous one. Returns
/// false (without running `f`) when the VMID's stage-2 is unknown.
fn with_vmid(vmid: Vmid, f: impl FnOnce()) -> bool {
    let target = VTTBR_OF
        .get(usize::from(vmid.0))
        .map(|v| v.load(Ordering::Acquire))
        .unwrap_or(0);
    if target == 0 {
        return false;
    }
    let saved = read_sysreg!(vttbr_el2);
    if saved != target {
        // SAFETY: VTTBR_EL2 only affects EL1&0 translation, not the hyp's own (EL2) regime; the
        // previous value is restored below before returning to any guest or host.
        unsafe { write_sysreg!(vttbr_el2, target) };
        isb();
    }
    f();
    if saved != target {
        // SAFETY: restores the value read above.
        unsafe { write_sysreg!(vttbr_el2, saved) };
        isb();
    }
    true
}

/// Every stage-1 and stage-2 entry of every VMID, on every CPU: the fallback for a VMID whose
/// context is unknown (over-invalidation is always correct).
fn invalidate_all_vmids() {
    dsb_ishst();
    // SAFETY: TLB invalidation never changes memory or the hyp's own translations.
    unsafe { core::arch::asm!("tlbi alle1is", options(nostack)) };
    dsb_ish();
    isb();
}

/// The most pages one `TLBI RIPAS2E1IS` sequence covers before a whole-VMID invalidation is
/// cheaper: 2^20 (4 GiB), at most four range operations plus one single-page operation.
const MAX_RANGE_PAGES: u64 = 1 << 20;

/// FEAT_TLBIRANGE (ID_AA64ISAR0_EL1.TLB = 0b0010): one TLBI covers a range of IPAs.
fn has_tlbi_range() -> bool {
    (read_sysreg!(id_aa64isar0_el1) >> 56) & 0xf >= 0b0010
}

/// `TLBI IPAS2E1IS` for each of `pages` pages from page number `first` (`ttl`: the TTL hint,
/// already in position), no barriers.
fn tlbi_ipa_pages(first: u64, pages: u64, ttl: u64) {
    for i in 0..pages {
        let operand = ((first + i) & ((1 << 40) - 1)) | ttl;
        // SAFETY: TLB invalidation never changes memory or the hyp's own translations.
        unsafe { core::arch::asm!("tlbi ipas2e1is, {}", in(reg) operand, options(nostack)) };
    }
}

/// `TLBI RIPAS2E1IS` covering `pages` pages from page number `first`, in Linux's
/// `__flush_tlb_range_op` decomposition: an odd page alone, then for SCALE = 0.. the largest
/// (NUM + 1) * 2^(5 * SCALE + 1) block that fits. Operand: TG [47:46] = 0b01 (4 KiB),
/// SCALE [45:44], NUM [43:39], TTL [38:37] (level hint), BaseADDR [36:0] = IPA >> 12.
fn tlbi_ipa_ranges(first: u64, pages: u64, ttl: u64) {
    // The hint of `ttl` is (TG << 2 | level) << 44 for the single-page form; range form: level.
    let level = (ttl >> 44) & 0b11;
    let (mut base, mut left, mut scale) = (first, pages, 0u64);
    while left > 0 {
        if left % 2 == 1 {
            tlbi_ipa_pages(base, 1, ttl);
            base += 1;
            left -= 1;
            continue;
        }
        let num = (left >> (5 * scale + 1)) & 0x1f;
        if num > 0 {
            let covered = num << (5 * scale + 1);
            let operand = (0b01 << 46)
                | (scale << 44)
                | ((num - 1) << 39)
                | (level << 37)
                | (base & ((1 << 37) - 1));
            // SAFETY: TLB invalidation never changes memory or the hyp's own translations.
            // `sys #4, c8, c0, #2` is TLBI RIPAS2E1IS (named so that no target feature is needed).
            unsafe {
                core::arch::asm!("sys #4, c8, c0, #2, {}", in(reg) operand, options(nostack))
            };
            base += covered;
            left -= covered;
        }
        scale += 1;
    }
}

fn has_ttl() -> bool {
    (read_sysreg!(id_aa64mmfr2_el1) >> 48) & 0xf != 0
}

impl PhysMemory for El2Platform {
    fn phys_to_ptr(&self, pa: PhysAddr) -> *mut u8 {
        // The hyp's stage-1 identity maps all RAM.
        pa.raw() as *mut u8
    }
}

impl TlbMaintenance for El2Platform {
    fn publish_table_writes(&mut self) {
        dsb_ishst();
    }

    fn invalidate_ipa_range(&mut self, vmid: Vmid, start: Ipa, pages: u64, level_hint: Option<u8>) {
        let range = has_tlbi_range();
        if pages > MAX_TLBI_PAGES && !(range && pages <= MAX_RANGE_PAGES) {
            return self.invalidate_vmid(vmid);
        }
        // TTL hint (FEAT_TTL): TG = 0b01 (4 KiB) in bits [47:46], level in [45:44]; leaves exist
        // only at levels 1..3.
        let ttl = match level_hint {
            Some(level @ 1..=3) if has_ttl() => (0b0100 | u64::from(level)) << 44,
            _ => 0,
        };
        let done = with_vmid(vmid, || {
            dsb_ishst();
            if range {
                tlbi_ipa_ranges(start.raw() >> 12, pages, ttl);
            } else {
                tlbi_ipa_pages(start.raw() >> 12, pages, ttl);
            }
            // Stage 2 first, then the combined stage 1+2 entries (IPAS2 need not remove them).
            dsb_ish();
            // SAFETY: as above.
            unsafe { core::arch::asm!("tlbi vmalle1is", options(nostack)) };
            dsb_ish();
            isb();
        });
        if !done {
            invalidate_all_vmids();
        }
        // The host's devices walk the host stage-2 too: their cached translations go in the
        // same call (one SMMU batch, completed by CMD_SYNC).
        crate::smmu::invalidate_ipa_range(vmid, start, pages);
    }
    fn invalidate_vmid(&mut self, vmid: Vmid) {
        let done = with_vmid(vmid, || {
            dsb_ishst();
            // SAFETY: TLB invalidation never changes memory or the hyp's own translations.
            unsafe { core::arch::asm!("tlbi vmalls12e1is", options(nostack)) };
            dsb_ish();
            isb();
        });
        if !done {
            invalidate_all_vmids();
        }
        crate::smmu::invalidate_vmid(vmid);
    }
}

impl CacheMaintenance for El2Platform {
    fn clean_invalidate_to_poc(&mut self, pa: PhysAddr, len: u64) {
        clean_invalidate_to_poc(pa.raw(), len);
    }
}

/// `DC CIVAC` over `[start, start + len)` (identity mapped), then `DSB ISH`.
pub fn clean_invalidate_to_poc(start: u64, len: u64) {
    // CTR_EL0.DminLine: log2 of the smallest D-cache line, in 4-byte words.
    let line = 4u64 << ((read_sysreg!(ctr_el0) >> 16) & 0xf);
    let mut addr = start & !(line - 1);
    let end = start.saturating_add(len);
    while addr < end {
        // SAFETY: cleaning and invalidating a mapped line to PoC preserves its contents.
        unsafe { core::arch::asm!("dc civac, {}", in(reg) addr, options(nostack)) };
        addr += line;
    }
    dsb_ish();
}
