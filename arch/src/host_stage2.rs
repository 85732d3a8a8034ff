//! Builds the host's identity stage-2 (VMID 0).
//!
//! TEMPORARY: until `verso::pgtable` lands this uses the arch table builder with stage-2
//! attributes; the layout computed here (RAM minus the hyp region Normal RWX, everything else
//! below 2^40 Device RW XN, the SMMU left out) is exactly the `verso::mem::MachineLayout` that
//! `HostMemory::new` will take over.

use verso::addr::PAGE_SIZE;

use crate::layout::{for_each_piece, Machine, HOST_IPA_BITS, HYP_BASE, HYP_SIZE};
use crate::tables::{self, Table, TableSource};

const S2_NORMAL_WB: u64 = 0b1111 << 2;
const S2_DEVICE_NGNRE: u64 = 0b0001 << 2;
const S2AP_RW: u64 = 3 << 6;
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;
const XN: u64 = 1 << 54;
const RAM_LEAF: u64 = S2_NORMAL_WB | S2AP_RW | SH_INNER | AF;
const MMIO_LEAF: u64 = S2_DEVICE_NGNRE | S2AP_RW | AF | XN;

struct PoolTables;

impl TableSource for PoolTables {
    fn table(&mut self) -> Option<*mut Table> {
        crate::pool::alloc_zeroed(PAGE_SIZE).map(|pa| pa.raw() as *mut Table)
    }
}

/// The host stage-2's VTCR_EL2 and VTTBR_EL2.
pub struct HostStage2 {
    /// VTCR_EL2.
    pub vtcr: u64,
    /// VTTBR_EL2 (root, VMID 0).
    pub vttbr: u64,
}

/// Builds the host stage-2 for `machine`, or `None` if the pool ran out.
pub fn build(machine: &Machine) -> Option<HostStage2> {
    let root = crate::pool::alloc_zeroed(PAGE_SIZE)?.raw() as *mut Table;
    let limit = 1u64 << HOST_IPA_BITS;
    let mut ok = true;
    let mut map = |start: u64, end: u64, attrs: u64| {
        // SAFETY: `root` and every table come from the pool and belong to this stage-2 only;
        // the host is not running yet.
        ok &= unsafe { tables::identity_map(root, 0, start, end - start, attrs, &mut PoolTables) }.is_ok();
    };
    let hyp = [(HYP_BASE, HYP_SIZE)];
    for &(base, size) in machine.ram() {
        for_each_piece(base, (base + size).min(limit), &hyp, &mut |s, e| map(s, e, RAM_LEAF));
    }
    let mut hidden = [(0u64, 0u64); crate::layout::MAX_RAM + 1];
    hidden[..machine.ram().len()].copy_from_slice(machine.ram());
    hidden[machine.ram().len()] = machine.smmu.unwrap_or((0, 0));
    for_each_piece(0, limit, &hidden[..machine.ram().len() + 1], &mut |s, e| map(s, e, MMIO_LEAF));
    crate::sysreg::dsb_ishst();
    if !ok {
        return None;
    }
    // VTCR_EL2: T0SZ = 24 (40-bit IPA), SL0 = 0b10 (start at level 0, one root page, no
    // concatenation: the SMMU walks the same tables), inner-shareable WBWA walks, 4 KiB granule,
    // PS = the implemented PA size capped at 48 bits (never above PARange), RES1 bit 31.
    let parange = crate::sysreg::read_sysreg!(id_aa64mmfr0_el1) & 0xf;
    let ps = parange.min(0b101);
    let vtcr = (64 - u64::from(HOST_IPA_BITS))
        | (0b10 << 6)
        | (1 << 8)
        | (1 << 10)
        | (3 << 12)
        | (ps << 16)
        | (1 << 31);
    Some(HostStage2 { vtcr, vttbr: root as u64 })
}
