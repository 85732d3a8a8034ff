//! Builds the host's identity stage-2 (VMID 0) with the core's ownership code
//! (`verso::mem::HostMemory`), from the machine the DTB describes:
//!
//! - RAM: Normal, RWX, block mappings wherever alignment allows;
//! - the hyp region (image, stacks, pool): left out, annotated as owned by the hyp;
//! - the SMMU's registers: left out, annotated as the hyp's (hidden MMIO);
//! - everything else below 2^40 (GIC, UART, virtio, PCIe windows and ECAM): Device, RW, XN,
//!   exactly what an EL1 kernel sees on bare QEMU `virt`.
//!
//! The geometry (4 KiB granule, 40-bit IPA starting at level 0, one root page, no concatenation)
//! is one the SMMU can walk too, because host devices will translate through these very tables.

use spin::Once;

use verso::addr::{PageRange, PhysAddr, PAGE_SIZE};
use verso::mem::{HostMemory, MachineLayout, Ownership, PageMeta};
use verso::pgtable::TableAllocator;

use crate::layout::{for_each_piece, Machine, HOST_IPA_BITS, HYP_BASE, HYP_SIZE, MAX_RAM};
use crate::platform::El2Platform;

/// Host stage-2 table pages, straight from the hyp's page pool.
pub struct PoolTables;

impl TableAllocator for PoolTables {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        // Not zeroed: the engine writes all 512 entries of every table it allocates.
        crate::pool::alloc(PAGE_SIZE)
    }
    fn free_table(&mut self, pa: PhysAddr) {
        // SAFETY: the engine returns only pages it got from `alloc_table` and no longer uses.
        unsafe { crate::pool::free(pa, PAGE_SIZE) };
    }
    fn available(&self) -> usize {
        (crate::pool::free_bytes() / PAGE_SIZE) as usize
    }
}

/// All ownership state of the machine, created once at boot.
pub static OWNERSHIP: Once<Ownership<'static, PoolTables>> = Once::new();

/// The host stage-2's VTCR_EL2 and VTTBR_EL2.
pub struct HostStage2 {
    /// VTCR_EL2.
    pub vtcr: u64,
    /// VTTBR_EL2 (root, VMID 0).
    pub vttbr: u64,
}

/// Why the host stage-2 could not be built.
pub enum BuildError {
    /// The pool cannot hold the page metadata.
    NoMetadata,
    /// The core refused the layout or ran out of table pages.
    Core(verso::error::Error),
}

impl core::fmt::Debug for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::NoMetadata => write!(f, "page pool too small for the page metadata"),
            BuildError::Core(e) => write!(f, "core refused the machine layout: {e:?}"),
        }
    }
}

fn page_range(base: u64, end: u64) -> Option<PageRange<PhysAddr>> {
    let start = base.next_multiple_of(PAGE_SIZE);
    let end = end & !(PAGE_SIZE - 1);
    PageRange::new(PhysAddr(start), end.checked_sub(start)? / PAGE_SIZE)
}

/// Builds the host stage-2 for `machine`.
pub fn build(machine: &Machine) -> Result<HostStage2, BuildError> {
    let limit = 1u64 << HOST_IPA_BITS;
    let mut ram = [None; MAX_RAM];
    for (slot, &(base, size)) in ram.iter_mut().zip(machine.ram()) {
        *slot = page_range(base, base.saturating_add(size).min(limit));
    }
    let ram: heapless_vec::Vec<MAX_RAM> = ram.iter().flatten().copied().collect();

    // MMIO: everything below the IPA limit that is neither RAM nor hidden.
    let hidden_region = machine.smmu.and_then(|(b, s)| page_range(b, b + s));
    let mut holes = [(0u64, 0u64); MAX_RAM + 1];
    for (h, r) in holes.iter_mut().zip(ram.as_slice()) {
        *h = (r.start().raw(), r.bytes());
    }
    holes[ram.len()] = hidden_region.map_or((0, 0), |r| (r.start().raw(), r.bytes()));
    let mut mmio = heapless_vec::Vec::<{ MAX_RAM + 2 }>::default();
    for_each_piece(0, limit, &holes[..ram.len() + 1], &mut |s, e| {
        if let Some(r) = page_range(s, e) {
            mmio.push(r);
        }
    });
    let hyp = [PageRange::new(PhysAddr(HYP_BASE), HYP_SIZE / PAGE_SIZE).expect("constant range")];
    let hidden: &[PageRange<PhysAddr>] = match &hidden_region {
        Some(r) => core::slice::from_ref(r),
        None => &[],
    };
    let layout = MachineLayout {
        ram: ram.as_slice(),
        hyp: &hyp,
        mmio: mmio.as_slice(),
        hidden,
        ipa_bits: HOST_IPA_BITS,
    };

    let entries = layout.metadata_entries();
    let bytes = (entries * core::mem::size_of::<PageMeta>()) as u64;
    let meta_pa = crate::pool::alloc_zeroed(bytes).ok_or(BuildError::NoMetadata)?;
    // SAFETY: a fresh pool allocation of `entries` PageMeta (8-byte, page-aligned), never freed:
    // it lives as long as the hyp.
    let metadata: &'static mut [PageMeta] =
        unsafe { core::slice::from_raw_parts_mut(meta_pa.raw() as *mut PageMeta, entries) };
    let host = HostMemory::new(&layout, &mut El2Platform, PoolTables, metadata)
        .map_err(BuildError::Core)?;
    let s2 = host.stage2();
    // PS: the implemented PA size, capped at 48 bits (PS must never exceed PARange, and a level-0
    // start needs at least 44 bits).
    let parange = crate::sysreg::read_sysreg!(id_aa64mmfr0_el1) & 0xf;
    let mut vtcr = s2.config().vtcr(parange.min(0b101));
    // VS (16-bit VMIDs) only where implemented (ID_AA64MMFR1_EL1.VMIDBits = 0b0010).
    if (crate::sysreg::read_sysreg!(id_aa64mmfr1_el1) >> 4) & 0xf != 0b0010 {
        vtcr &= !(1 << 19);
    }
    let stage2 = HostStage2 {
        vtcr,
        vttbr: s2.vttbr(),
    };
    let ownership = Ownership::new(host, HOST_IPA_BITS).map_err(BuildError::Core)?;
    OWNERSHIP.call_once(|| ownership);
    Ok(stage2)
}

/// A tiny fixed-capacity vector (the hyp has no heap for `alloc`).
mod heapless_vec {
    use verso::addr::{PageRange, PhysAddr};

    /// Up to `N` page ranges.
    pub struct Vec<const N: usize> {
        ranges: [PageRange<PhysAddr>; N],
        len: usize,
    }

    impl<const N: usize> Default for Vec<N> {
        fn default() -> Self {
            let dummy = PageRange::new(PhysAddr(0), 1).expect("constant range");
            Self {
                ranges: [dummy; N],
                len: 0,
            }
        }
    }

    impl<const N: usize> Vec<N> {
        /// Appends `r`; silently ignored when full (callers size N for the worst case).
        pub fn push(&mut self, r: PageRange<PhysAddr>) {
            if self.len < N {
                self.ranges[self.len] = r;
                self.len += 1;
            }
        }
        /// Number of ranges.
        pub fn len(&self) -> usize {
            self.len
        }
        /// The ranges.
        pub fn as_slice(&self) -> &[PageRange<PhysAddr>] {
            &self.ranges[..self.len]
        }
    }

    impl<const N: usize> FromIterator<PageRange<PhysAddr>> for Vec<N> {
        fn from_iter<I: IntoIterator<Item = PageRange<PhysAddr>>>(iter: I) -> Self {
            let mut v = Self::default();
            iter.into_iter().for_each(|r| v.push(r));
            v
        }
    }
}
