//! The host component: the host's stage-2 (an identity map built eagerly at boot) and the
//! per-page metadata of every RAM page.
//!
//! The host stage-2 is also what the SMMU walks for the host's devices, so it is complete from the
//! start (no lazy faulting-in), uses block mappings wherever alignment allows, and a page leaves
//! the host's DMA view in the very descriptor write that removes it from the CPU view.

use super::state::{Owner, PageMeta, PageState, PIN_RESERVED};
use super::{annotation_owner, hyp_annotation};
use crate::addr::{Ipa, PageRange, PhysAddr, Vmid, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::pgtable::{Leaf, Lookup, MemType, Perms, Stage2, Stage2Config, TableAllocator};
use crate::platform::{PhysMemory, Platform};

/// How many regions of each kind a [`MachineLayout`] may describe.
pub const MAX_REGIONS: usize = 16;

/// What the host stage-2 must contain: a description of the machine, from the DTB.
///
/// Every range is page aligned (a [`PageRange`]); RAM, MMIO and hidden regions must not overlap,
/// and every hypervisor region must lie inside one RAM region.
#[derive(Clone, Copy, Debug)]
pub struct MachineLayout<'a> {
    /// RAM, identity mapped Normal RWX for the host and covered by page metadata.
    pub ram: &'a [PageRange<PhysAddr>],
    /// The hypervisor's own memory inside RAM (image, page pool, the host stage-2's table pages):
    /// owned by the hyp, never reachable by the host, never given back.
    pub hyp: &'a [PageRange<PhysAddr>],
    /// Device memory the host may use: mapped Device, read/write, never executable.
    pub mmio: &'a [PageRange<PhysAddr>],
    /// Device memory the host must not reach (e.g. the SMMU's registers): annotated as the hyp's.
    pub hidden: &'a [PageRange<PhysAddr>],
    /// Size of the host's IPA (= PA) space, in bits; every region must lie below it.
    pub ipa_bits: u32,
}

impl MachineLayout<'_> {
    /// How many [`PageMeta`] entries [`HostMemory::new`] needs: one per RAM page.
    pub fn metadata_entries(&self) -> usize {
        self.ram.iter().map(|r| r.pages() as usize).sum()
    }
}

#[derive(Clone, Copy, Debug)]
struct RamRegion {
    range: PageRange<PhysAddr>,
    /// Index of the region's first page in the metadata table.
    first: usize,
}

/// The leaf of a host RAM page the host may access (owned, or shared either way). State lives in
/// the metadata, not in the descriptor, so that all such pages look alike and coalesce into blocks.
pub const HOST_RAM_LEAF: Leaf = Leaf {
    perms: Perms::RWX,
    mem: MemType::Normal,
    sw: 0,
};

/// The leaf of host MMIO: device memory, never executable.
pub const HOST_MMIO_LEAF: Leaf = Leaf {
    perms: Perms::RW,
    mem: MemType::Device,
    sw: 0,
};

/// The host component: host stage-2, its table allocator and the page metadata.
pub struct HostMemory<'m, A: TableAllocator> {
    pub(crate) stage2: Stage2,
    pub(crate) alloc: A,
    meta: &'m mut [PageMeta],
    ram: [Option<RamRegion>; MAX_REGIONS],
    mmio: [Option<PageRange<PhysAddr>>; MAX_REGIONS],
    hidden: [Option<PageRange<PhysAddr>>; MAX_REGIONS],
    hyp: [Option<PageRange<PhysAddr>>; MAX_REGIONS],
}

fn overlaps(a: &PageRange<PhysAddr>, b: &PageRange<PhysAddr>) -> bool {
    a.start() < b.end() && b.start() < a.end()
}

fn copy_regions(src: &[PageRange<PhysAddr>]) -> [Option<PageRange<PhysAddr>>; MAX_REGIONS] {
    let mut out = [None; MAX_REGIONS];
    for (o, r) in out.iter_mut().zip(src) {
        *o = Some(*r);
    }
    out
}

/// The host IPA range that identity-maps `r`.
pub(crate) fn identity(r: PageRange<PhysAddr>) -> PageRange<Ipa> {
    // Same start and length as a range that was already validated not to wrap.
    PageRange::new(Ipa(r.start().raw()), r.pages()).expect("identity of a valid range")
}

impl<'m, A: TableAllocator> HostMemory<'m, A> {
    /// Build the host stage-2 for `layout`: RAM identity mapped as Normal RWX with blocks where
    /// possible, the hyp's regions annotated as owned by the hyp, MMIO mapped Device RW (no
    /// execute), hidden MMIO annotated as the hyp's. Table pages come from `alloc`, which then
    /// serves every later change of the host stage-2: size it for the worst case (all RAM at page
    /// granularity, like pKVM's `host_s2_pool`), since a transition that lacks table pages is
    /// refused with [`Error::NoMem`]. `metadata` (at least [`MachineLayout::metadata_entries`]
    /// entries, any content) becomes the page metadata table; at EL2 it is pool memory.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed layout (overlaps, too many regions, a hyp region outside
    /// RAM, no RAM), [`Error::Range`] if a region lies above `ipa_bits`, [`Error::NoMem`] if
    /// `metadata` is too small or `alloc` runs out (the partly built table is then abandoned:
    /// boot cannot continue anyway).
    pub fn new(
        layout: &MachineLayout<'_>,
        plat: &mut impl Platform,
        mut alloc: A,
        metadata: &'m mut [PageMeta],
    ) -> Result<Self> {
        let cfg = Stage2Config::for_ipa_bits(layout.ipa_bits)?;
        let limit = cfg.ipa_limit();
        let all = || {
            layout
                .ram
                .iter()
                .chain(layout.mmio)
                .chain(layout.hidden)
                .chain(layout.hyp)
        };
        if layout.ram.is_empty()
            || [layout.ram, layout.hyp, layout.mmio, layout.hidden]
                .iter()
                .any(|k| k.len() > MAX_REGIONS)
        {
            return Err(Error::Invalid);
        }
        if all().any(|r| r.end().raw() > limit) {
            return Err(Error::Range);
        }
        let disjoint: &[&[PageRange<PhysAddr>]] = &[layout.ram, layout.mmio, layout.hidden];
        let flat = || disjoint.iter().flat_map(|k| k.iter()).enumerate();
        if flat().any(|(i, a)| flat().any(|(j, b)| i != j && overlaps(a, b))) {
            return Err(Error::Invalid);
        }
        let inside_ram = |h: &PageRange<PhysAddr>| {
            layout
                .ram
                .iter()
                .any(|r| h.start() >= r.start() && h.end() <= r.end())
        };
        if !layout.hyp.iter().all(inside_ram) {
            return Err(Error::Invalid);
        }
        if metadata.len() < layout.metadata_entries() {
            return Err(Error::NoMem);
        }

        let stage2 = Stage2::new(cfg, Vmid::HOST, plat, &mut alloc)?;
        let mut ram = [None; MAX_REGIONS];
        let mut first = 0;
        for (slot, r) in ram.iter_mut().zip(layout.ram) {
            *slot = Some(RamRegion { range: *r, first });
            first += r.pages() as usize;
        }
        let mut host = Self {
            stage2,
            alloc,
            meta: metadata,
            ram,
            mmio: copy_regions(layout.mmio),
            hidden: copy_regions(layout.hidden),
            hyp: copy_regions(layout.hyp),
        };
        host.meta.iter_mut().for_each(|m| *m = PageMeta::default());
        for r in layout.ram {
            host.stage2.map(
                plat,
                &mut host.alloc,
                identity(*r),
                r.start(),
                HOST_RAM_LEAF,
            )?;
        }
        for r in layout.mmio {
            host.stage2.map(
                plat,
                &mut host.alloc,
                identity(*r),
                r.start(),
                HOST_MMIO_LEAF,
            )?;
        }
        for r in layout.hyp.iter().chain(layout.hidden) {
            host.stage2
                .annotate(plat, &mut host.alloc, identity(*r), hyp_annotation())?;
        }
        for r in layout.hyp {
            let first = host.ram_index(*r)?;
            host.update(first, r.pages(), |m| {
                m.set_host_state(PageState::NoPage);
                m.set_hyp_state(PageState::Owned);
                m.set_hyp_pins(PIN_RESERVED);
            });
        }
        Ok(host)
    }

    /// The host stage-2 (for VTTBR_EL2 and the SMMU's stream table entries).
    pub fn stage2(&self) -> &Stage2 {
        &self.stage2
    }

    /// The allocator the host stage-2's table pages come from.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// The metadata of the RAM page at `pa`, if `pa` is RAM.
    pub fn meta(&self, pa: PhysAddr) -> Option<&PageMeta> {
        let r = PageRange::new(pa.align_down(PAGE_SIZE), 1)?;
        self.ram_index(r).ok().map(|i| &self.meta[i])
    }

    /// Every RAM region.
    pub fn ram_regions(&self) -> impl Iterator<Item = PageRange<PhysAddr>> + '_ {
        self.ram.iter().flatten().map(|r| r.range)
    }
    /// Every host MMIO region.
    pub fn mmio_regions(&self) -> impl Iterator<Item = PageRange<PhysAddr>> + '_ {
        self.mmio.iter().flatten().copied()
    }
    /// Every hidden MMIO region.
    pub fn hidden_regions(&self) -> impl Iterator<Item = PageRange<PhysAddr>> + '_ {
        self.hidden.iter().flatten().copied()
    }
    /// Every region of the hypervisor's own memory.
    pub fn hyp_regions(&self) -> impl Iterator<Item = PageRange<PhysAddr>> + '_ {
        self.hyp.iter().flatten().copied()
    }

    /// Who owns the page at `pa` according to its host descriptor, and for a guest the IPA it has
    /// there: what the host fault path reports when the host touches a page it does not own.
    pub fn explain_fault(
        &self,
        plat: &impl PhysMemory,
        pa: PhysAddr,
    ) -> Option<(Owner, Option<Ipa>)> {
        match self
            .stage2
            .lookup(plat, Ipa(pa.align_down(PAGE_SIZE).raw()))
        {
            Lookup::Annotated { ann, .. } => annotation_owner(&ann, pa.align_down(PAGE_SIZE)),
            _ => None,
        }
    }

    /// Index of the first page of `r` in the metadata table.
    ///
    /// # Errors
    /// [`Error::Range`] unless `r` lies entirely inside one RAM region.
    pub(crate) fn ram_index(&self, r: PageRange<PhysAddr>) -> Result<usize> {
        self.ram
            .iter()
            .flatten()
            .find(|reg| r.start() >= reg.range.start() && r.end() <= reg.range.end())
            .map(|reg| {
                reg.first + ((r.start().raw() - reg.range.start().raw()) / PAGE_SIZE) as usize
            })
            .ok_or(Error::Range)
    }

    /// Check every page's metadata with `check`; the first failure (in address order) decides.
    pub(crate) fn check(
        &self,
        first: usize,
        pages: u64,
        check: impl Fn(&PageMeta) -> Result<()>,
    ) -> Result<()> {
        self.meta[first..first + pages as usize]
            .iter()
            .try_for_each(check)
    }

    /// The metadata of `pages` pages from index `first` (a [`Self::ram_index`]).
    pub(crate) fn meta_slice(&self, first: usize, pages: u64) -> &[PageMeta] {
        &self.meta[first..first + pages as usize]
    }

    /// [`Error::Perm`] unless every page's host and hyp states are `host` and `hyp`.
    #[inline]
    pub(crate) fn check_states(
        &self,
        first: usize,
        pages: u64,
        host: PageState,
        hyp: PageState,
    ) -> Result<()> {
        if self
            .meta_slice(first, pages)
            .iter()
            .all(|m| m.states_are(host, hyp))
        {
            Ok(())
        } else {
            Err(Error::Perm)
        }
    }

    /// Apply `f` to every page's metadata.
    #[inline]
    pub(crate) fn update(&mut self, first: usize, pages: u64, f: impl FnMut(&mut PageMeta)) {
        self.meta[first..first + pages as usize]
            .iter_mut()
            .for_each(f)
    }

    /// Table pages the host stage-2 can get: the allocator's and the stage-2's spare tables.
    pub(crate) fn table_capacity(&self) -> usize {
        self.alloc.available() + self.stage2.spare_tables()
    }

    /// Whether the host can get `needed` table pages: the allocator alone usually answers, so
    /// the stage-2's spare tables (a scan of its spare slots) are counted only when it cannot.
    #[inline]
    pub(crate) fn covers_tables(&self, needed: usize) -> bool {
        self.alloc.available() >= needed || self.table_capacity() >= needed
    }

    /// [`Error::NoMem`] unless the host allocator (with the spare tables) holds `needed` table
    /// pages.
    pub(crate) fn check_tables(&self, needed: usize) -> Result<()> {
        if self.table_capacity() >= needed {
            Ok(())
        } else {
            Err(Error::NoMem)
        }
    }

    /// Worst-case table pages a change of the host descriptors of `r` may need (a walk of the
    /// tables as they are, so that a caller summing it over many small runs is not refused for
    /// a bound that counts every level of every run).
    pub(crate) fn tables_needed(&self, plat: &impl PhysMemory, r: PageRange<PhysAddr>) -> usize {
        let mapped = self
            .stage2
            .tables_needed_for(plat, identity(r), Some(r.start()));
        let annotated = self.stage2.tables_needed_for(plat, identity(r), None);
        mapped.max(annotated)
    }

    /// Give the host back its identity mapping of `r`.
    pub(crate) fn map(&mut self, plat: &mut impl Platform, r: PageRange<PhysAddr>) {
        let res = self
            .stage2
            .map(plat, &mut self.alloc, identity(r), r.start(), HOST_RAM_LEAF);
        super::committed(res);
    }

    /// Take `r` away from the host, recording who has it now.
    pub(crate) fn annotate(
        &mut self,
        plat: &mut impl Platform,
        r: PageRange<PhysAddr>,
        ann: crate::pgtable::Annotation,
    ) {
        let res = self
            .stage2
            .annotate(plat, &mut self.alloc, identity(r), ann);
        super::committed(res);
    }

    /// The host allocator, mutably (tests provoke exhaustion with it).
    #[cfg(any(test, feature = "testing"))]
    pub fn allocator_mut(&mut self) -> &mut A {
        &mut self.alloc
    }

    /// Metadata table, for the consistency checker.
    #[cfg(any(test, feature = "testing"))]
    pub fn metadata(&self) -> &[PageMeta] {
        self.meta
    }

    /// Force a page's guest share count (to reach the overflow limit in tests without 2^32 VMs).
    #[cfg(any(test, feature = "testing"))]
    pub fn debug_set_guest_shares(&mut self, pa: PhysAddr, n: u32) {
        if let Some(r) = PageRange::new(pa, 1) {
            if let Ok(i) = self.ram_index(r) {
                self.meta[i].set_guest_shares(n);
            }
        }
    }
}
