//! The transitions. Each is one function of the same shape: take the locks it needs in the
//! documented order, check every page of the range on every side and every resource the commit
//! needs (table pages), then commit with steps that cannot fail. A failed check returns its exact
//! error before anything was written. Checks run in this order, and the first failure decides:
//!
//! 1. argument shape: [`Error::Align`], [`Error::Invalid`], [`Error::Range`] (overflow);
//! 2. the VM: [`Error::NotFound`], then [`Error::Busy`] if its `dying` flag forbids the call;
//! 3. the range lies in RAM (host side) / below the guest IPA limit: [`Error::Range`];
//! 4. page states, page by page in address order, host side then hyp side then guest side:
//!    [`Error::Perm`] (guest IPAs with no page where one is needed: [`Error::NotFound`]), then
//!    for the same page the use counters: [`Error::Busy`];
//! 5. resources (table pages, memcache room, VM slots): [`Error::NoMem`].

use super::host::identity;
use super::{
    check_capacity, committed, guest_annotation, guest_state, owned_state, poison_annotation,
    scrub, HostMemory, Ownership, PageMeta, PageState, GUEST_SW_BORROWED, GUEST_SW_OWNED,
    PIN_RESERVED,
};
use crate::addr::{Address, Ipa, PageRange, PhysAddr, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::pgtable::{Leaf, Lookup, MemType, Perms, Stage2, TableAllocator};
use crate::platform::{PhysMemory, Platform};
use crate::vm::{Guest, Memcache, VmHandle, VmTable, MEMCACHE_PAGES};
use core::ops::ControlFlow;
use PageState::{NoPage, Owned, SharedBorrowed, SharedOwned};

/// [`Error::Perm`] unless the host and hyp states of a page are `host` and `hyp`.
#[inline]
fn expect(m: &PageMeta, host: PageState, hyp: PageState) -> Result<()> {
    if m.states_are(host, hyp) {
        Ok(())
    } else {
        Err(Error::Perm)
    }
}

/// A guest leaf for a page the guest owns (`borrowed == false`) or borrows from the host.
fn guest_leaf(perms: Perms, borrowed: bool) -> Leaf {
    Leaf {
        perms,
        mem: MemType::Normal,
        sw: if borrowed {
            GUEST_SW_BORROWED
        } else {
            GUEST_SW_OWNED
        },
    }
}

/// The rest of `r` after its first `pages` pages, if any.
fn after<A: Address>(r: PageRange<A>, pages: u64) -> Option<PageRange<A>> {
    let start = A::from_raw(r.start().to_raw() + pages * PAGE_SIZE);
    PageRange::new(start, r.pages().checked_sub(pages)?)
}

/// A maximal run of guest pages in one state, mapped (if at all) to contiguous PAs with one leaf.
#[derive(Clone, Copy, Debug)]
struct Run {
    range: PageRange<Ipa>,
    state: PageState,
    pa: Option<PhysAddr>,
}

impl Run {
    /// The PAs behind a mapped run.
    fn pa_range(&self) -> Option<PageRange<PhysAddr>> {
        PageRange::new(self.pa?, self.range.pages())
    }
}

/// How runs split the pages a guest owns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Split {
    /// By guest state: `Owned` and `SharedOwned` pages are separate runs (a metadata read per
    /// page).
    ByState,
    /// By guest leaf only: the pages the guest owns form one run reported as `Owned`, whatever
    /// their host state; the caller's metadata check tells `Owned` from `SharedOwned` (MEM_SHARE
    /// and MEM_UNSHARE, whose metadata check refuses the other state with the same
    /// [`Error::Perm`] a state check would give, page by page in the same order).
    ByLeaf,
}

/// The guest state of the first page of a walk chunk of `pages` pages, and how many pages from
/// the first share it: a chunk of pages the guest owns is one leaf, but which of its pages the
/// guest shares is in their metadata ([`guest_state`]).
fn chunk_state<A: TableAllocator>(
    host: &HostMemory<'_, A>,
    lookup: &Lookup,
    pages: u64,
    split: Split,
) -> (PageState, u64) {
    match lookup {
        Lookup::Mapped { leaf, .. } if leaf.sw == GUEST_SW_OWNED && split == Split::ByLeaf => {
            (Owned, pages)
        }
        Lookup::Mapped { pa, leaf, .. } if leaf.sw == GUEST_SW_OWNED => {
            let metas = PageRange::new(*pa, pages)
                .and_then(|r| host.ram_index(r).ok())
                .map(|first| host.meta_slice(first, pages));
            match metas {
                Some(metas) => {
                    let state = owned_state(metas.first());
                    let same = metas
                        .iter()
                        .take_while(|m| owned_state(Some(m)) == state)
                        .count();
                    (state, same as u64)
                }
                // Not one RAM range (never so in a consistent state): one page at a time.
                None => (owned_state(host.meta(*pa)), 1),
            }
        }
        _ => (guest_state(lookup, host), pages),
    }
}

/// The first run of `range` in the guest stage-2.
fn first_run<A: TableAllocator>(
    host: &HostMemory<'_, A>,
    s2: &Stage2,
    plat: &impl PhysMemory,
    range: PageRange<Ipa>,
    split: Split,
) -> Run {
    if range.pages() == 1 {
        // One page (the usual conversion) is its own run: one lookup, no walk to merge chunks.
        let lookup = s2.lookup(plat, range.start());
        let pa = match lookup {
            Lookup::Mapped { pa, .. } => Some(pa),
            _ => None,
        };
        return Run {
            range,
            state: chunk_state(host, &lookup, 1, split).0,
            pa,
        };
    }
    let mut acc: Option<(u64, PageState, Option<PhysAddr>, Option<Leaf>)> = None;
    s2.walk(plat, range, |_ipa, pages, lookup| {
        let (state, same) = chunk_state(host, lookup, pages, split);
        let (pa, leaf) = match lookup {
            Lookup::Mapped { pa, leaf, .. } => (Some(*pa), Some(*leaf)),
            _ => (None, None),
        };
        // The walk goes on only while the whole chunk continues the run.
        let go_on = if same == pages {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        };
        match &mut acc {
            None => {
                acc = Some((same, state, pa, leaf));
                go_on
            }
            Some((n, s0, pa0, leaf0)) => {
                let contiguous = match (*pa0, pa) {
                    (Some(p0), Some(p)) => p0.raw() + *n * PAGE_SIZE == p.raw(),
                    (None, None) => true,
                    _ => false,
                };
                if *s0 == state && contiguous && *leaf0 == leaf {
                    *n += same;
                    go_on
                } else {
                    ControlFlow::Break(())
                }
            }
        }
    });
    let (n, state, pa, _) = acc.unwrap_or((range.pages(), NoPage, None, None));
    let pages = n.clamp(1, range.pages());
    Run {
        range: PageRange::new(range.start(), pages).unwrap_or(range),
        state,
        pa,
    }
}

/// The runs of `range`, in address order.
struct Runs<'a, 'm, A: TableAllocator, M> {
    host: &'a HostMemory<'m, A>,
    s2: &'a Stage2,
    plat: &'a M,
    rest: Option<PageRange<Ipa>>,
    split: Split,
}

impl<A: TableAllocator, M: PhysMemory> Iterator for Runs<'_, '_, A, M> {
    type Item = Run;
    fn next(&mut self) -> Option<Run> {
        let r = self.rest?;
        let run = first_run(self.host, self.s2, self.plat, r, self.split);
        self.rest = after(r, run.range.pages());
        Some(run)
    }
}

/// The runs of `range` split by guest state (see [`Split`]).
fn runs<'a, 'm, A: TableAllocator, M: PhysMemory>(
    host: &'a HostMemory<'m, A>,
    s2: &'a Stage2,
    plat: &'a M,
    range: PageRange<Ipa>,
) -> Runs<'a, 'm, A, M> {
    runs_split(host, s2, plat, range, Split::ByState)
}

/// The runs of `range` split as `split` says.
fn runs_split<'a, 'm, A: TableAllocator, M: PhysMemory>(
    host: &'a HostMemory<'m, A>,
    s2: &'a Stage2,
    plat: &'a M,
    range: PageRange<Ipa>,
    split: Split,
) -> Runs<'a, 'm, A, M> {
    Runs {
        host,
        s2,
        plat,
        rest: Some(range),
        split,
    }
}

/// The first runs of a range as the check phase found them, with their host pages, so that the
/// commit phase neither walks the guest stage-2 for them again (the commit of one run does not
/// change the next one's lookup) nor recomputes their host metadata index. Runs beyond the
/// first [`RunList::CAP`] are looked up again.
struct RunList {
    runs: [Option<(Run, PageRange<PhysAddr>, usize)>; RunList::CAP],
    n: usize,
    split: Split,
}

impl RunList {
    const CAP: usize = 8;

    /// An empty list of runs split as `split` (the check phase's runs).
    fn new(split: Split) -> Self {
        Self {
            runs: [None; Self::CAP],
            n: 0,
            split,
        }
    }

    /// Record a checked run and its host pages (`run_pages`).
    fn push(&mut self, run: Run, pa: PageRange<PhysAddr>, first: usize) {
        if let Some(slot) = self.runs.get_mut(self.n) {
            *slot = Some((run, pa, first));
            self.n += 1;
        }
    }

    /// Run number `k` of `cur` (the part of the range from run `k` on) and its host pages.
    fn get<A: TableAllocator>(
        &self,
        k: usize,
        s2: &Stage2,
        plat: &impl PhysMemory,
        host: &super::HostMemory<'_, A>,
        cur: PageRange<Ipa>,
    ) -> (Run, Option<(PageRange<PhysAddr>, usize)>) {
        match self.runs.get(k) {
            Some(Some((run, pa, first))) => (*run, Some((*pa, *first))),
            _ => {
                let run = first_run(host, s2, plat, cur, self.split);
                (run, run_pages(host, &run).ok())
            }
        }
    }
}

/// The error for a guest run that is not in one of the `wanted` states.
fn guest_state_error(run: &Run, wanted: &[PageState]) -> Result<()> {
    if wanted.contains(&run.state) {
        Ok(())
    } else if run.state == NoPage {
        Err(Error::NotFound)
    } else {
        Err(Error::Perm)
    }
}

/// The host-side metadata index of a mapped guest run's pages, which must be RAM.
fn run_pages<A: TableAllocator>(
    host: &super::HostMemory<'_, A>,
    run: &Run,
) -> Result<(PageRange<PhysAddr>, usize)> {
    let pa = run.pa_range().ok_or(Error::Perm)?;
    let first = host.ram_index(pa).map_err(|_| Error::Perm)?;
    Ok((pa, first))
}

/// The capacity check of a guest conversion over `ipas` (every run already checked): table
/// pages for the host stage-2 and for the guest's. `host_bound` and `guest_bound` are the O(1)
/// upper bounds summed over the runs; only if one exceeds what is available are the exact
/// worst cases counted by walking the tables (so a call is refused only if it could really
/// run out).
fn check_conversion_capacity<A: TableAllocator>(
    host: &super::HostMemory<'_, A>,
    guest: &Guest,
    plat: &impl PhysMemory,
    ipas: PageRange<Ipa>,
    host_bound: usize,
    guest_bound: usize,
) -> Result<()> {
    if host.covers_tables(host_bound) && guest.covers_tables(guest_bound) {
        return Ok(());
    }
    let (mut host_tables, mut guest_tables) = (0, 0);
    for run in runs(host, &guest.stage2, plat, ipas) {
        if let Ok((pa, _)) = run_pages(host, &run) {
            host_tables += host.tables_needed(plat, pa);
        }
        guest_tables += guest.stage2.tables_needed_for(plat, run.range, None);
    }
    host.check_tables(host_tables)?;
    check_capacity(guest.table_capacity(), guest_tables)
}

/// The pages behind `ipas` if its first page is one the guest owns and one guest leaf maps the
/// whole range (the usual conversion: one page, or a range inside one 2 MiB block): their host
/// pages and metadata index. `Ok(None)`: the range goes beyond that leaf (the caller takes the
/// run-by-run path). For MEM_SHARE / MEM_UNSHARE this gives the same errors as that path, whose
/// first run starts with the same page: an IPA with no page is [`Error::NotFound`]; a borrowed
/// or poisoned page is [`Error::Perm`] (and so is a page the guest owns in the other state, which
/// the caller's metadata check refuses).
fn owned_in_one_leaf<A: TableAllocator>(
    host: &HostMemory<'_, A>,
    guest: &Guest,
    plat: &impl PhysMemory,
    ipas: PageRange<Ipa>,
) -> Result<Option<(PageRange<PhysAddr>, usize)>> {
    match guest.stage2.lookup(plat, ipas.start()) {
        Lookup::Mapped { pa, leaf, level } if leaf.sw == GUEST_SW_OWNED => {
            let span = crate::pgtable::leaf_span(level);
            let leaf_end = (ipas.start().raw() & !(span - 1)).saturating_add(span);
            if ipas.end().raw() > leaf_end {
                return Ok(None);
            }
            let pa = PageRange::new(pa, ipas.pages()).ok_or(Error::Perm)?;
            let first = host.ram_index(pa).map_err(|_| Error::Perm)?;
            Ok(Some((pa, first)))
        }
        Lookup::Empty { .. } => Err(Error::NotFound),
        Lookup::Annotated { ann, .. } if ann.owner != super::ANN_GUEST_POISONED => {
            Err(Error::NotFound)
        }
        _ => Err(Error::Perm),
    }
}

/// The capacity check of a MEM_SHARE / MEM_UNSHARE of `ipas`, which changes the host stage-2
/// only: the O(1) bound `bound` summed over the runs, and the exact worst case (a walk of the
/// tables as they are) only if the bound exceeds what the host has.
fn check_host_conversion_capacity<A: TableAllocator>(
    host: &HostMemory<'_, A>,
    guest: &Guest,
    plat: &impl PhysMemory,
    ipas: PageRange<Ipa>,
    bound: usize,
) -> Result<()> {
    if host.covers_tables(bound) {
        return Ok(());
    }
    let mut needed = 0;
    for run in runs_split(host, &guest.stage2, plat, ipas, Split::ByLeaf) {
        if let Ok((pa, _)) = run_pages(host, &run) {
            needed += host.tables_needed(plat, pa);
        }
    }
    host.check_tables(needed)
}

/// MEM_SHARE of the guest pages `ipas` that one guest leaf maps to the host pages `pa` (metadata
/// from index `first`), the guest's ownership already checked: the metadata and capacity
/// checks, then the host's identity mapping and state.
#[inline]
fn share_in_leaf<A: TableAllocator>(
    host: &mut HostMemory<'_, A>,
    guest: &Guest,
    plat: &mut impl Platform,
    ipas: PageRange<Ipa>,
    pa: PageRange<PhysAddr>,
    first: usize,
) -> Result<()> {
    host.check_states(first, pa.pages(), NoPage, NoPage)?;
    let bound = host.stage2.tables_needed_in_place(identity(pa));
    check_host_conversion_capacity(host, guest, &*plat, ipas, bound)?;
    host.map(plat, pa);
    host.update(first, pa.pages(), |m| m.set_host_state(SharedBorrowed));
    Ok(())
}

/// MEM_UNSHARE's counterpart of [`share_in_leaf`]: the host's mapping replaced by the guest
/// annotation of `handle` (CPU and DMA access revoked and invalidated), host state `NoPage`.
#[inline]
fn unshare_in_leaf<A: TableAllocator>(
    host: &mut HostMemory<'_, A>,
    guest: &Guest,
    plat: &mut impl Platform,
    handle: VmHandle,
    ipas: PageRange<Ipa>,
    pa: PageRange<PhysAddr>,
    first: usize,
) -> Result<()> {
    host.check_states(first, pa.pages(), SharedBorrowed, NoPage)?;
    let bound = host.stage2.tables_needed_in_place(identity(pa));
    check_host_conversion_capacity(host, guest, &*plat, ipas, bound)?;
    host.annotate(plat, pa, guest_annotation(handle, pa.start(), ipas.start()));
    host.update(first, pa.pages(), |m| m.set_host_state(NoPage));
    Ok(())
}

impl<'m, A: TableAllocator> Ownership<'m, A> {
    /// [`Error::Range`] unless `r` lies below the guest IPA limit.
    fn check_guest_ipa(&self, r: PageRange<Ipa>) -> Result<()> {
        if r.end().raw() > self.guest_cfg.ipa_limit() {
            Err(Error::Range)
        } else {
            Ok(())
        }
    }

    /// The guest range of `pages` pages from `ipa`, checked for alignment and wrap.
    fn ipa_range(ipa: Ipa, pages: u64) -> Result<PageRange<Ipa>> {
        if !ipa.is_page_aligned() {
            return Err(Error::Align);
        }
        PageRange::new(ipa, pages).ok_or(Error::Range)
    }

    /// Share host pages with the hypervisor (the host keeps access): host `Owned` -> `SharedOwned`,
    /// hyp `NoPage` -> `SharedBorrowed`. No descriptor changes: the hyp reaches RAM through its
    /// own linear map and the host keeps its mapping.
    ///
    /// # Errors
    /// [`Error::Range`] outside RAM; [`Error::Perm`] unless every page is host `Owned`, hyp `NoPage`.
    pub fn host_share_hyp(&self, pages: PageRange<PhysAddr>) -> Result<()> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        let first = host.ram_index(pages)?;
        host.check(first, pages.pages(), |m| expect(m, Owned, NoPage))?;

        host.update(first, pages.pages(), |m| {
            m.set_host_state(SharedOwned);
            m.set_hyp_state(SharedBorrowed);
        });
        hyp.borrowed_pages += pages.pages();
        Ok(())
    }

    /// Stop sharing host pages with the hypervisor: the reverse of [`Self::host_share_hyp`].
    ///
    /// # Errors
    /// [`Error::Range`] outside RAM; [`Error::Perm`] unless host `SharedOwned` / hyp
    /// `SharedBorrowed`; [`Error::Busy`] while the hyp has the page pinned.
    pub fn host_unshare_hyp(&self, pages: PageRange<PhysAddr>) -> Result<()> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        let first = host.ram_index(pages)?;
        host.check(first, pages.pages(), |m| {
            expect(m, SharedOwned, SharedBorrowed)?;
            if m.hyp_pins() != 0 {
                return Err(Error::Busy);
            }
            Ok(())
        })?;

        host.update(first, pages.pages(), |m| {
            m.set_host_state(Owned);
            m.set_hyp_state(NoPage);
        });
        hyp.borrowed_pages -= pages.pages();
        Ok(())
    }

    /// Pin pages the host shares with the hyp, because the hyp is using them (e.g. a vCPU's
    /// shared state): they cannot be unshared until unpinned.
    ///
    /// # Errors
    /// [`Error::Range`] outside RAM; [`Error::Perm`] unless shared with the hyp; [`Error::Busy`]
    /// if the pin count is saturated.
    pub fn hyp_pin_shared(&self, pages: PageRange<PhysAddr>) -> Result<()> {
        let mut host = self.host.lock();
        let _hyp = self.hyp.lock();
        let first = host.ram_index(pages)?;
        host.check(first, pages.pages(), |m| {
            expect(m, SharedOwned, SharedBorrowed)?;
            if m.hyp_pins() >= PIN_RESERVED - 1 {
                return Err(Error::Busy);
            }
            Ok(())
        })?;

        host.update(first, pages.pages(), |m| m.set_hyp_pins(m.hyp_pins() + 1));
        Ok(())
    }

    /// Drop a pin taken by [`Self::hyp_pin_shared`].
    ///
    /// # Errors
    /// [`Error::Range`] outside RAM; [`Error::Perm`] unless shared with the hyp;
    /// [`Error::Invalid`] if a page is not pinned.
    pub fn hyp_unpin_shared(&self, pages: PageRange<PhysAddr>) -> Result<()> {
        let mut host = self.host.lock();
        let _hyp = self.hyp.lock();
        let first = host.ram_index(pages)?;
        host.check(first, pages.pages(), |m| {
            expect(m, SharedOwned, SharedBorrowed)?;
            if m.hyp_pins() == 0 {
                return Err(Error::Invalid);
            }
            Ok(())
        })?;

        host.update(first, pages.pages(), |m| m.set_hyp_pins(m.hyp_pins() - 1));
        Ok(())
    }

    /// Give host pages to the hypervisor (VM structures, memcache pages): host `Owned` ->
    /// `NoPage` (descriptor annotated "hyp"), hyp `NoPage` -> `Owned`. Content is kept.
    ///
    /// # Errors
    /// [`Error::Range`] outside RAM; [`Error::Perm`] unless host `Owned` / hyp `NoPage`;
    /// [`Error::NoMem`] if the host allocator cannot cover the table pages of the change.
    pub fn host_donate_hyp(
        &self,
        plat: &mut impl Platform,
        pages: PageRange<PhysAddr>,
    ) -> Result<()> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        let first = host.ram_index(pages)?;
        host.check(first, pages.pages(), |m| expect(m, Owned, NoPage))?;
        host.check_tables(host.tables_needed(plat, pages))?;

        donate_to_hyp(&mut host, &mut hyp, plat, pages, first);
        Ok(())
    }

    /// Give hypervisor pages back to the host, scrubbed: hyp `Owned` -> `NoPage`, host `NoPage`
    /// -> `Owned` (identity mapping restored). Pages in use by the hyp are pinned and refused:
    /// its own memory for ever, memcache pages until their VM is finalized.
    ///
    /// # Errors
    /// [`Error::Range`] outside RAM; [`Error::Perm`] unless hyp `Owned` / host `NoPage`;
    /// [`Error::Busy`] if pinned (the hyp's own memory is pinned for ever); [`Error::NoMem`].
    pub fn hyp_donate_host(
        &self,
        plat: &mut impl Platform,
        pages: PageRange<PhysAddr>,
    ) -> Result<()> {
        let mut host = self.host.lock();
        let mut hyp = self.hyp.lock();
        let first = host.ram_index(pages)?;
        host.check(first, pages.pages(), |m| {
            expect(m, NoPage, Owned)?;
            if m.hyp_pins() != 0 {
                return Err(Error::Busy);
            }
            Ok(())
        })?;
        host.check_tables(host.tables_needed(plat, pages))?;

        return_to_host(&mut host, &mut hyp, plat, pages, first);
        Ok(())
    }

    /// Share host pages with a guest at `ipa` with `perms` (a non-protected mapping, e.g. virtio
    /// rings): host `Owned`/`SharedOwned` -> `SharedOwned` (share count + 1), guest `NoPage` ->
    /// `SharedBorrowed`. A page may be shared with several guests (or IPAs), never also with the hyp.
    ///
    /// # Errors
    /// [`Error::Align`] unaligned `ipa`; [`Error::Range`] if the IPA range wraps or exceeds the
    /// guest IPA size, or the pages are not RAM; [`Error::Invalid`] for empty `perms`;
    /// [`Error::NotFound`] unknown VM; [`Error::Busy`] dying VM or share count saturated;
    /// [`Error::Perm`] wrong host/hyp/guest state; [`Error::NoMem`] memcache too small.
    pub fn host_share_guest(
        &self,
        plat: &mut impl Platform,
        pages: PageRange<PhysAddr>,
        handle: VmHandle,
        ipa: Ipa,
        perms: Perms,
    ) -> Result<()> {
        let ipas = Self::ipa_range(ipa, pages.pages())?;
        if !(perms.read || perms.write || perms.exec) {
            return Err(Error::Invalid);
        }
        let vms = self.vms.lock();
        let vm = vms.get(handle)?;
        if vm.dying {
            return Err(Error::Busy);
        }
        self.check_guest_ipa(ipas)?;
        let mut host = self.host.lock();
        let _hyp = self.hyp.lock();
        let first = host.ram_index(pages)?;
        let mut guest = vm.guest.lock();
        host.check(first, pages.pages(), |m| {
            match (m.host_state(), m.hyp_state()) {
                (Owned, NoPage) => Ok(()),
                (SharedOwned, NoPage) if m.guest_shares() == u32::MAX => Err(Error::Busy),
                (SharedOwned, NoPage) if m.guest_shares() > 0 => Ok(()),
                _ => Err(Error::Perm),
            }
        })?;
        runs(&host, &guest.stage2, &*plat, ipas)
            .try_for_each(|r| guest_state_error(&r, &[NoPage]))?;
        check_capacity(
            guest.table_capacity(),
            guest.stage2.tables_needed(&*plat, ipas),
        )?;

        let g = &mut *guest;
        let leaf = guest_leaf(perms, true);
        committed(
            g.stage2
                .map(plat, &mut g.memcache, ipas, pages.start(), leaf),
        );
        host.update(first, pages.pages(), |m| {
            m.set_host_state(SharedOwned);
            m.set_guest_shares(m.guest_shares() + 1);
        });
        Ok(())
    }

    /// Undo [`Self::host_share_guest`] for the guest IPAs `ipas`: the guest mapping is removed
    /// (and invalidated) first; the host page returns to `Owned` when its last share goes.
    /// Allowed on a dying VM (that is how its shared pages are returned).
    ///
    /// # Errors
    /// [`Error::NotFound`] unknown VM or an IPA with no page; [`Error::Range`] beyond the guest
    /// IPA size; [`Error::Perm`] unless every page is guest `SharedBorrowed`; [`Error::NoMem`].
    pub fn host_unshare_guest(
        &self,
        plat: &mut impl Platform,
        handle: VmHandle,
        ipas: PageRange<Ipa>,
    ) -> Result<()> {
        let vms = self.vms.lock();
        let vm = vms.get(handle)?;
        self.check_guest_ipa(ipas)?;
        let mut host = self.host.lock();
        let _hyp = self.hyp.lock();
        let mut guest = vm.guest.lock();
        for run in runs(&host, &guest.stage2, &*plat, ipas) {
            guest_state_error(&run, &[SharedBorrowed])?;
            let (pa, first) = run_pages(&host, &run)?;
            host.check(first, pa.pages(), |m| {
                expect(m, SharedOwned, NoPage)?;
                if m.guest_shares() == 0 {
                    return Err(Error::Perm);
                }
                Ok(())
            })?;
        }
        // The exact need of the tables as they are: unmapping whole entries allocates nothing,
        // so a dying VM whose memcache is spent can still give every lent page back.
        check_capacity(
            guest.table_capacity(),
            guest.stage2.tables_needed_for(&*plat, ipas, None),
        )?;

        let mut rest = Some(ipas);
        while let Some(cur) = rest {
            let run = first_run(&host, &guest.stage2, &*plat, cur, Split::ByState);
            if let Ok((pa, first)) = run_pages(&host, &run) {
                host.update(first, pa.pages(), |m| {
                    let left = m.guest_shares() - 1;
                    m.set_guest_shares(left);
                    if left == 0 {
                        m.set_host_state(Owned);
                    }
                });
            }
            rest = after(cur, run.range.pages());
        }
        let g = &mut *guest;
        committed(g.stage2.unmap(plat, &mut g.memcache, ipas));
        Ok(())
    }

    /// Give host pages to a guest at `ipa` (protected memory): host `Owned` -> `NoPage`, its
    /// descriptors annotated with the VM handle and IPA (revoking CPU and DMA access at once);
    /// guest `NoPage` -> `Owned`, mapped RWX. Content is kept (the host may load an image).
    ///
    /// # Errors
    /// As [`Self::host_share_guest`]; [`Error::NoMem`] if either the host allocator or the VM's
    /// memcache cannot cover the table pages.
    pub fn host_donate_guest(
        &self,
        plat: &mut impl Platform,
        pages: PageRange<PhysAddr>,
        handle: VmHandle,
        ipa: Ipa,
    ) -> Result<()> {
        let ipas = Self::ipa_range(ipa, pages.pages())?;
        let vms = self.vms.lock();
        let vm = vms.get(handle)?;
        if vm.dying {
            return Err(Error::Busy);
        }
        self.check_guest_ipa(ipas)?;
        let mut host = self.host.lock();
        let _hyp = self.hyp.lock();
        let first = host.ram_index(pages)?;
        let mut guest = vm.guest.lock();
        host.check(first, pages.pages(), |m| expect(m, Owned, NoPage))?;
        runs(&host, &guest.stage2, &*plat, ipas)
            .try_for_each(|r| guest_state_error(&r, &[NoPage]))?;
        host.check_tables(host.tables_needed(&*plat, pages))?;
        check_capacity(
            guest.table_capacity(),
            guest.stage2.tables_needed(&*plat, ipas),
        )?;

        host.annotate(plat, pages, guest_annotation(handle, pages.start(), ipa));
        host.update(first, pages.pages(), |m| m.set_host_state(NoPage));
        let g = &mut *guest;
        let leaf = guest_leaf(Perms::RWX, false);
        committed(
            g.stage2
                .map(plat, &mut g.memcache, ipas, pages.start(), leaf),
        );
        Ok(())
    }

    /// The guest shares its pages with the host (MEM_SHARE): guest `Owned` -> `SharedOwned`,
    /// host `NoPage` -> `SharedBorrowed` (identity mapping restored). Content is kept.
    ///
    /// # Errors
    /// [`Error::NotFound`] unknown VM or an IPA with no page (the host must donate one first);
    /// [`Error::Busy`] dying VM; [`Error::Range`] beyond the guest IPA size; [`Error::Perm`]
    /// unless every page is guest `Owned`; [`Error::NoMem`].
    pub fn guest_share_host(
        &self,
        plat: &mut impl Platform,
        handle: VmHandle,
        ipas: PageRange<Ipa>,
    ) -> Result<()> {
        self.guest_share_host_in(plat, &self.vms.lock(), handle, ipas)
    }

    /// [`Self::guest_share_host`] with the VM table already locked (the caller appends to the VM's
    /// conversion log under the same lock).
    pub(super) fn guest_share_host_in(
        &self,
        plat: &mut impl Platform,
        vms: &VmTable,
        handle: VmHandle,
        ipas: PageRange<Ipa>,
    ) -> Result<()> {
        let vm = vms.get(handle)?;
        if vm.dying {
            return Err(Error::Busy);
        }
        self.check_guest_ipa(ipas)?;
        let mut host = self.host.lock();
        // No hyp lock: the hyp's accounting is not touched, and the hyp state of a page (read
        // in its metadata word) is written only with the host lock held (pKVM's
        // `__pkvm_guest_share_host` likewise locks the host and guest components only).
        let guest = vm.guest.lock();
        if let Some((pa, first)) = owned_in_one_leaf(&host, &guest, &*plat, ipas)? {
            // One run (one page, or a range inside one guest block: the usual conversions):
            // checked and committed directly, without the run walk and the run list.
            return share_in_leaf(&mut host, &guest, plat, ipas, pa, first);
        }
        let mut host_tables = 0;
        let mut seen = RunList::new(Split::ByLeaf);
        for run in runs_split(&host, &guest.stage2, &*plat, ipas, Split::ByLeaf) {
            // `Owned` here is any page the guest owns; the metadata check refuses `SharedOwned`.
            guest_state_error(&run, &[Owned])?;
            let (pa, first) = run_pages(&host, &run)?;
            seen.push(run, pa, first);
            host.check(first, pa.pages(), |m| expect(m, NoPage, NoPage))?;
            host_tables += host.stage2.tables_needed_in_place(identity(pa));
        }
        check_host_conversion_capacity(&host, &guest, &*plat, ipas, host_tables)?;

        // The guest's own mapping is left as it is: its state is the page's host state.
        let mut rest = Some(ipas);
        let mut k = 0;
        while let Some(cur) = rest {
            let (run, pages) = seen.get(k, &guest.stage2, &*plat, &host, cur);
            k += 1;
            if let Some((pa, first)) = pages {
                host.map(plat, pa);
                host.update(first, pa.pages(), |m| m.set_host_state(SharedBorrowed));
            }
            rest = after(cur, run.range.pages());
        }
        Ok(())
    }

    /// The guest stops sharing its pages with the host (MEM_UNSHARE): the host's mapping is
    /// replaced by the guest annotation (CPU and DMA access revoked and invalidated before the
    /// call returns); guest `SharedOwned` -> `Owned`. Content is kept.
    ///
    /// # Errors
    /// As [`Self::guest_share_host`], with `SharedOwned` required.
    pub fn guest_unshare_host(
        &self,
        plat: &mut impl Platform,
        handle: VmHandle,
        ipas: PageRange<Ipa>,
    ) -> Result<()> {
        self.guest_unshare_host_in(plat, &self.vms.lock(), handle, ipas)
    }

    /// [`Self::guest_unshare_host`] with the VM table already locked (the caller appends to the VM's
    /// conversion log under the same lock).
    pub(super) fn guest_unshare_host_in(
        &self,
        plat: &mut impl Platform,
        vms: &VmTable,
        handle: VmHandle,
        ipas: PageRange<Ipa>,
    ) -> Result<()> {
        let vm = vms.get(handle)?;
        if vm.dying {
            return Err(Error::Busy);
        }
        self.check_guest_ipa(ipas)?;
        let mut host = self.host.lock();
        // No hyp lock: the hyp's accounting is not touched, and the hyp state of a page (read
        // in its metadata word) is written only with the host lock held (pKVM's
        // `__pkvm_guest_share_host` likewise locks the host and guest components only).
        let guest = vm.guest.lock();
        if let Some((pa, first)) = owned_in_one_leaf(&host, &guest, &*plat, ipas)? {
            // One run: as in `guest_share_host_in`, checked and committed directly.
            return unshare_in_leaf(&mut host, &guest, plat, handle, ipas, pa, first);
        }
        let mut host_tables = 0;
        let mut seen = RunList::new(Split::ByLeaf);
        for run in runs_split(&host, &guest.stage2, &*plat, ipas, Split::ByLeaf) {
            // `Owned` here is any page the guest owns; the metadata check refuses `Owned`.
            guest_state_error(&run, &[Owned])?;
            let (pa, first) = run_pages(&host, &run)?;
            seen.push(run, pa, first);
            host.check(first, pa.pages(), |m| expect(m, SharedBorrowed, NoPage))?;
            host_tables += host.stage2.tables_needed_in_place(identity(pa));
        }
        check_host_conversion_capacity(&host, &guest, &*plat, ipas, host_tables)?;

        // The guest's own mapping is left as it is: its state is the page's host state.
        let mut rest = Some(ipas);
        let mut k = 0;
        while let Some(cur) = rest {
            let (run, pages) = seen.get(k, &guest.stage2, &*plat, &host, cur);
            k += 1;
            if let Some((pa, first)) = pages {
                host.annotate(
                    plat,
                    pa,
                    guest_annotation(handle, pa.start(), run.range.start()),
                );
                host.update(first, pa.pages(), |m| m.set_host_state(NoPage));
            }
            rest = after(cur, run.range.pages());
        }
        Ok(())
    }

    /// The guest gives pages back to the host for good (MEM_RELINQUISH, e.g. a balloon): the
    /// guest mapping is removed and invalidated, the page scrubbed, then mapped back to the host.
    ///
    /// # Errors
    /// As [`Self::guest_share_host`], with `Owned` required.
    pub fn guest_relinquish_to_host(
        &self,
        plat: &mut impl Platform,
        handle: VmHandle,
        ipas: PageRange<Ipa>,
    ) -> Result<()> {
        self.guest_relinquish_to_host_in(plat, &self.vms.lock(), handle, ipas)
    }

    /// [`Self::guest_relinquish_to_host`] with the VM table already locked (the caller appends to the VM's
    /// conversion log under the same lock).
    pub(super) fn guest_relinquish_to_host_in(
        &self,
        plat: &mut impl Platform,
        vms: &VmTable,
        handle: VmHandle,
        ipas: PageRange<Ipa>,
    ) -> Result<()> {
        let vm = vms.get(handle)?;
        if vm.dying {
            return Err(Error::Busy);
        }
        self.check_guest_ipa(ipas)?;
        let mut host = self.host.lock();
        let _hyp = self.hyp.lock();
        let mut guest = vm.guest.lock();
        let (mut host_tables, mut guest_tables) = (0, 0);
        let mut seen = RunList::new(Split::ByState);
        for run in runs(&host, &guest.stage2, &*plat, ipas) {
            guest_state_error(&run, &[Owned])?;
            let (pa, first) = run_pages(&host, &run)?;
            seen.push(run, pa, first);
            host.check(first, pa.pages(), |m| expect(m, NoPage, NoPage))?;
            host_tables += host.stage2.tables_needed_in_place(identity(pa));
            guest_tables += guest.stage2.tables_needed_in_place(run.range);
        }
        check_conversion_capacity(&host, &guest, &*plat, ipas, host_tables, guest_tables)?;

        let mut rest = Some(ipas);
        let mut k = 0;
        while let Some(cur) = rest {
            let (run, pages) = seen.get(k, &guest.stage2, &*plat, &host, cur);
            k += 1;
            if let Some((pa, first)) = pages {
                let g = &mut *guest;
                committed(g.stage2.unmap(plat, &mut g.memcache, run.range));
                scrub(plat, pa);
                host.map(plat, pa);
                host.update(first, pa.pages(), |m| m.set_host_state(Owned));
            }
            rest = after(cur, run.range.pages());
        }
        Ok(())
    }

    /// Take back the pages of a dying VM: each guest `Owned` page is unmapped, scrubbed and
    /// returned to the host; each `SharedOwned` page (which the host already maps) is unmapped
    /// from the guest, scrubbed, and becomes host `Owned` again.
    ///
    /// # Errors
    /// [`Error::NotFound`] unknown VM or an IPA with no page; [`Error::Busy`] if the VM is not
    /// dying; [`Error::Range`]; [`Error::Perm`] for guest pages in another state (pages the host
    /// shared with the guest go back with [`Self::host_unshare_guest`]); [`Error::NoMem`].
    pub fn host_reclaim_guest(
        &self,
        plat: &mut impl Platform,
        handle: VmHandle,
        ipas: PageRange<Ipa>,
    ) -> Result<()> {
        let vms = self.vms.lock();
        let vm = vms.get(handle)?;
        if !vm.dying {
            return Err(Error::Busy);
        }
        self.check_guest_ipa(ipas)?;
        let mut host = self.host.lock();
        let _hyp = self.hyp.lock();
        let mut guest = vm.guest.lock();
        let (mut host_tables, mut guest_tables) = (0, 0);
        let mut seen = RunList::new(Split::ByState);
        for run in runs(&host, &guest.stage2, &*plat, ipas) {
            guest_state_error(&run, &[Owned, SharedOwned])?;
            let (pa, first) = run_pages(&host, &run)?;
            seen.push(run, pa, first);
            let host_state = if run.state == Owned {
                NoPage
            } else {
                SharedBorrowed
            };
            host.check(first, pa.pages(), |m| expect(m, host_state, NoPage))?;
            if run.state == Owned {
                host_tables += host.tables_needed(&*plat, pa);
            }
            guest_tables += guest.stage2.tables_needed_for(&*plat, run.range, None);
        }
        host.check_tables(host_tables)?;
        check_capacity(guest.table_capacity(), guest_tables)?;

        let mut rest = Some(ipas);
        let mut k = 0;
        while let Some(cur) = rest {
            let (run, pages) = seen.get(k, &guest.stage2, &*plat, &host, cur);
            k += 1;
            if let Some((pa, first)) = pages {
                let g = &mut *guest;
                committed(g.stage2.unmap(plat, &mut g.memcache, run.range));
                // Scrubbed whether private or shared: the guest's data never outlives the VM
                // (docs/abi.md, VM_RECLAIM). A shared page is already mapped to the host.
                scrub(plat, pa);
                if run.state == Owned {
                    host.map(plat, pa);
                }
                host.update(first, pa.pages(), |m| m.set_host_state(Owned));
            }
            rest = after(cur, run.range.pages());
        }
        Ok(())
    }

    /// The host takes back pages it donated to a running guest (after faulting on them): the
    /// guest IPAs become `Poisoned` (the guest's next access faults), the pages are scrubbed and
    /// mapped back to the host. The pages must be one contiguous donation to one VM.
    ///
    /// # Errors
    /// [`Error::Range`] outside RAM; [`Error::Perm`] unless every page is owned by the same
    /// guest at consecutive IPAs, guest `Owned`; [`Error::NoMem`].
    pub fn host_force_reclaim_guest(
        &self,
        plat: &mut impl Platform,
        pages: PageRange<PhysAddr>,
    ) -> Result<()> {
        let vms = self.vms.lock();
        let mut host = self.host.lock();
        let _hyp = self.hyp.lock();
        let first = host.ram_index(pages)?;
        host.check(first, pages.pages(), |m| expect(m, NoPage, NoPage))?;
        let Some((super::Owner::Guest(handle), Some(ipa))) =
            host.explain_fault(&*plat, pages.start())
        else {
            return Err(Error::Perm);
        };
        let ann = guest_annotation(handle, pages.start(), ipa);
        let mut uniform = true;
        host.stage2
            .walk(&*plat, super::host::identity(pages), |_, _, lookup| {
                uniform &= matches!(lookup, Lookup::Annotated { ann: a, .. } if *a == ann);
                if uniform {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            });
        let ipas = PageRange::new(ipa, pages.pages()).ok_or(Error::Perm)?;
        let vm = vms.get(handle).map_err(|_| Error::Perm)?;
        let mut guest = vm.guest.lock();
        if !uniform {
            return Err(Error::Perm);
        }
        for run in runs(&host, &guest.stage2, &*plat, ipas) {
            if run.state != Owned
                || run.pa.map(|p| p.raw() - pages.start().raw())
                    != Some(run.range.start().raw() - ipa.raw())
            {
                return Err(Error::Perm);
            }
        }
        host.check_tables(host.tables_needed(&*plat, pages))?;
        check_capacity(
            guest.table_capacity(),
            guest.stage2.tables_needed(&*plat, ipas),
        )?;

        let g = &mut *guest;
        committed(
            g.stage2
                .annotate(plat, &mut g.memcache, ipas, poison_annotation()),
        );
        scrub(plat, pages);
        host.map(plat, pages);
        host.update(first, pages.pages(), |m| m.set_host_state(Owned));
        Ok(())
    }

    /// Create a VM from host pages `pages`: they are donated to the hyp, scrubbed, and become the
    /// VM's memcache, from which its stage-2 root is taken.
    ///
    /// # Errors
    /// [`Error::Range`] outside RAM; [`Error::Perm`] unless host `Owned`; [`Error::NoMem`] if the
    /// VM table is full, `pages` exceeds [`MEMCACHE_PAGES`] or the host allocator is short.
    pub fn create_vm(
        &self,
        plat: &mut impl Platform,
        pages: PageRange<PhysAddr>,
    ) -> Result<VmHandle> {
        let (mut vms, mut host, mut hyp) = self.lock_all();
        let first = host.ram_index(pages)?;
        host.check(first, pages.pages(), |m| expect(m, Owned, NoPage))?;
        let handle = vms.free_handle().ok_or(Error::NoMem)?;
        let vmid = handle.vmid().ok_or(Error::NoMem)?;
        if pages.pages() > MEMCACHE_PAGES as u64 {
            return Err(Error::NoMem);
        }
        host.check_tables(host.tables_needed(&*plat, pages))?;

        donate_to_hyp(&mut host, &mut hyp, plat, pages, first);
        // Pinned while in the memcache, so that no other path can hand them back.
        host.update(first, pages.pages(), |m| m.set_hyp_pins(1));
        // A page the host wrote must never be read as a descriptor.
        scrub(plat, pages);
        let mut memcache = Memcache::new();
        pages.iter().for_each(|pa| memcache.push(pa));
        match Stage2::new(self.guest_cfg, vmid, plat, &mut memcache) {
            Ok(stage2) => {
                let guest = Guest {
                    handle,
                    stage2,
                    memcache,
                };
                vms.insert(handle, VmTable::new_vm(guest));
                Ok(handle)
            }
            Err(e) => {
                // Cannot happen: the configuration was validated and the memcache holds a page.
                committed(Err(e));
                Err(e)
            }
        }
    }

    /// Donate more host pages to a VM's memcache, for its stage-2 tables.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Busy`] dying VM; [`Error::Range`]; [`Error::Perm`] unless
    /// host `Owned`; [`Error::NoMem`] if the memcache has no room or the host allocator is short.
    pub fn topup_memcache(
        &self,
        plat: &mut impl Platform,
        handle: VmHandle,
        pages: PageRange<PhysAddr>,
    ) -> Result<()> {
        let (vms, mut host, mut hyp) = self.lock_all();
        let vm = vms.get(handle)?;
        if vm.dying {
            return Err(Error::Busy);
        }
        let first = host.ram_index(pages)?;
        let mut guest = vm.guest.lock();
        host.check(first, pages.pages(), |m| expect(m, Owned, NoPage))?;
        check_capacity(guest.memcache.room(), pages.pages() as usize)?;
        host.check_tables(host.tables_needed(&*plat, pages))?;

        donate_to_hyp(&mut host, &mut hyp, plat, pages, first);
        host.update(first, pages.pages(), |m| m.set_hyp_pins(1));
        scrub(plat, pages);
        pages.iter().for_each(|pa| guest.memcache.push(pa));
        Ok(())
    }

    /// Mark a VM dying: it runs no more, accepts no memory, and its pages can be reclaimed.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Busy`] if already dying or while one of its vCPUs runs.
    pub fn start_teardown(&self, handle: VmHandle) -> Result<()> {
        let mut vms = self.vms.lock();
        let vm = vms.get_mut(handle)?;
        if vm.dying || vm.run.any_running() {
            return Err(Error::Busy);
        }
        vm.dying = true;
        Ok(())
    }

    /// Destroy a dying VM whose pages were all reclaimed or unshared: its table pages and the
    /// rest of its memcache go back to the host, scrubbed, and the handle becomes free.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Busy`] if the VM is not dying or still maps a page;
    /// [`Error::NoMem`] if the host allocator cannot cover the table pages.
    pub fn finalize_teardown(&self, plat: &mut impl Platform, handle: VmHandle) -> Result<()> {
        let (mut vms, mut host, mut hyp) = self.lock_all();
        let vm = vms.get(handle)?;
        if !vm.dying {
            return Err(Error::Busy);
        }
        {
            let guest = vm.guest.lock();
            let pages = self.guest_cfg.ipa_limit() / PAGE_SIZE;
            let whole = PageRange::new(Ipa(0), pages).ok_or(Error::Range)?;
            let mut mapped = false;
            guest.stage2.walk(&*plat, whole, |_, _, l| {
                mapped = matches!(l, Lookup::Mapped { .. });
                if mapped {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            if mapped {
                return Err(Error::Busy);
            }
            let needed = guest
                .memcache
                .donated_pages()
                .iter()
                .filter_map(|pa| PageRange::new(*pa, 1));
            host.check_tables(needed.map(|p| host.tables_needed(&*plat, p)).sum())?;
        }

        let Some(vm) = vms.remove(handle) else {
            return Err(Error::NotFound);
        };
        let mut guest = vm.guest.into_inner();
        guest.stage2.destroy(plat, &mut guest.memcache);
        for pa in guest.memcache.donated_pages() {
            if let Some(page) = PageRange::new(*pa, 1) {
                if let Ok(first) = host.ram_index(page) {
                    return_to_host(&mut host, &mut hyp, plat, page, first);
                }
            }
        }
        Ok(())
    }
}

/// Commit of a host -> hyp donation (checked by the caller).
fn donate_to_hyp<A: TableAllocator>(
    host: &mut super::HostMemory<'_, A>,
    hyp: &mut super::HypComponent,
    plat: &mut impl Platform,
    pages: PageRange<PhysAddr>,
    first: usize,
) {
    host.annotate(plat, pages, super::hyp_annotation());
    host.update(first, pages.pages(), |m| {
        m.set_host_state(NoPage);
        m.set_hyp_state(Owned);
    });
    hyp.owned_pages += pages.pages();
}

/// Commit of a hyp -> host return (checked by the caller): scrub, then map back.
fn return_to_host<A: TableAllocator>(
    host: &mut super::HostMemory<'_, A>,
    hyp: &mut super::HypComponent,
    plat: &mut impl Platform,
    pages: PageRange<PhysAddr>,
    first: usize,
) {
    scrub(plat, pages);
    host.map(plat, pages);
    host.update(first, pages.pages(), |m| {
        m.set_host_state(Owned);
        m.set_hyp_state(NoPage);
        m.set_hyp_pins(0);
    });
    hyp.owned_pages -= pages.pages();
}
