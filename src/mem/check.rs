//! The consistency checker and state snapshots (test support, `testing` feature).
//!
//! [`check_consistency`] is pKVM's ownership selftest taken further: it walks the host stage-2,
//! every guest stage-2 and the metadata of every RAM page and proves that they tell one story —
//! each page's (host, hyp) state pair is one of the legal combinations, the host descriptor says
//! exactly what that pair requires (identity mapping, or an annotation naming the right owner
//! and IPA), every guest mapping is backed by the matching host state, share counts equal the
//! number of guest mappings, and nothing else is mapped or annotated anywhere.
//! [`snapshot`] captures all of it so a test can prove a refused call changed nothing.

extern crate std;

use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::vec::Vec;

use super::{annotation_owner, HostMemory, Owner, Ownership, PageMeta, PageState};
use super::{ANN_GUEST_POISONED, GUEST_SW_BORROWED, GUEST_SW_OWNED};
use super::{HOST_MMIO_LEAF, HOST_RAM_LEAF, PIN_RESERVED};
use crate::addr::{Ipa, PageRange, PhysAddr, PAGE_SIZE};
use crate::pgtable::{Lookup, Stage2, TableAllocator};
use crate::platform::PhysMemory;
use crate::vm::VmHandle;
use core::ops::ControlFlow;

/// Every chunk of a stage-2 (as [`Stage2::walk`] reports them) over its whole IPA space,
/// leaving out empty chunks.
pub fn chunks(s2: &Stage2, plat: &impl PhysMemory) -> Vec<(Ipa, u64, Lookup)> {
    let mut out = Vec::new();
    let whole = PageRange::new(Ipa(0), s2.config().ipa_limit() / PAGE_SIZE).expect("ipa space");
    s2.walk(plat, whole, |ipa, pages, l| {
        if !matches!(l, Lookup::Empty { .. }) {
            // Levels are an implementation detail (split/coalesce); states are not.
            out.push((ipa, pages, strip_level(l)));
        }
        ControlFlow::Continue(())
    });
    out
}

fn strip_level(l: &Lookup) -> Lookup {
    match *l {
        Lookup::Mapped { pa, leaf, .. } => Lookup::Mapped { pa, leaf, level: 0 },
        Lookup::Annotated { ann, .. } => Lookup::Annotated { ann, level: 0 },
        Lookup::Empty { .. } => Lookup::Empty { level: 0 },
    }
}

/// One VM's state in a [`Snapshot`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VmSnapshot {
    /// Its handle.
    pub handle: VmHandle,
    /// Its dying flag.
    pub dying: bool,
    /// Its stage-2 chunks.
    pub chunks: Vec<(Ipa, u64, Lookup)>,
    /// Memcache free pages and pages used as tables.
    pub memcache: (Vec<PhysAddr>, usize),
}

/// Everything ownership-related, for before/after comparisons.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Snapshot {
    /// Page metadata.
    pub meta: Vec<PageMeta>,
    /// Host stage-2 chunks.
    pub host: Vec<(Ipa, u64, Lookup)>,
    /// Host table pages in use and allocator pages available.
    pub host_tables: (usize, usize),
    /// The hyp component.
    pub hyp: super::HypComponent,
    /// Every VM.
    pub vms: Vec<VmSnapshot>,
}

/// A [`Snapshot`] of `own`.
pub fn snapshot<A: TableAllocator>(own: &Ownership<'_, A>, plat: &impl PhysMemory) -> Snapshot {
    own.inspect(|vms, host, hyp| Snapshot {
        meta: host.metadata().to_vec(),
        host: chunks(host.stage2(), plat),
        host_tables: (host.stage2().table_pages(), host.allocator().available()),
        hyp: *hyp,
        vms: vms
            .handles()
            .map(|h| {
                let vm = vms.get(h).expect("listed handle");
                let g = vm.guest.lock();
                VmSnapshot {
                    handle: h,
                    dying: vm.dying,
                    chunks: chunks(&g.stage2, plat),
                    memcache: (
                        g.memcache.free_pages().to_vec(),
                        g.memcache.pages_in_tables(),
                    ),
                }
            })
            .collect(),
    })
}

/// A guest mapping of one physical page. `state` is what the guest stage-2 alone says: `Owned`
/// for a page the guest owns (shared with the host or not: that is the page's host state, see
/// [`super::guest_state`]), `SharedBorrowed` for a page the host lent it.
#[derive(Clone, Copy, Debug)]
struct GuestMapping {
    handle: VmHandle,
    ipa: Ipa,
    state: PageState,
}

fn in_any(pa: PhysAddr, mut regions: impl Iterator<Item = PageRange<PhysAddr>>) -> bool {
    regions.any(|r| r.contains(pa))
}

/// Prove that the host stage-2, every guest stage-2 and the metadata are consistent.
///
/// # Errors
/// A description of the first inconsistency found.
pub fn check_consistency<A: TableAllocator>(
    own: &Ownership<'_, A>,
    plat: &impl PhysMemory,
) -> Result<(), String> {
    own.inspect(|vms, host, hyp| {
        // Every guest mapping, by physical page.
        let mut by_pa: BTreeMap<u64, Vec<GuestMapping>> = BTreeMap::new();
        for h in vms.handles() {
            let g = vms.get(h).expect("listed handle").guest.lock();
            if g.handle != h {
                return Err(format!("VM {h:?} records handle {:?}", g.handle));
            }
            for (ipa, pages, l) in chunks(&g.stage2, plat) {
                match l {
                    Lookup::Mapped { pa, leaf, .. } => {
                        let state = match leaf.sw {
                            GUEST_SW_OWNED => PageState::Owned,
                            GUEST_SW_BORROWED => PageState::SharedBorrowed,
                            _ => return Err(format!("{h:?} {ipa:?}: bad guest leaf {leaf:?}")),
                        };
                        if leaf.mem != crate::pgtable::MemType::Normal {
                            return Err(format!("{h:?} {ipa:?}: bad guest leaf {leaf:?}"));
                        }
                        for k in 0..pages {
                            by_pa.entry(pa.raw() + k * PAGE_SIZE).or_default().push(GuestMapping {
                                handle: h,
                                ipa: Ipa(ipa.raw() + k * PAGE_SIZE),
                                state,
                            });
                        }
                    }
                    Lookup::Annotated { ann, .. } if ann.owner == ANN_GUEST_POISONED => {}
                    other => return Err(format!("{h:?} {ipa:?}: unexpected guest entry {other:?}")),
                }
            }
            for pa in g.memcache.donated_pages() {
                let m = host.meta(*pa).ok_or_else(|| format!("memcache page {pa:?} not RAM"))?;
                if m.hyp_state() != PageState::Owned || m.hyp_pins() != 1 {
                    return Err(format!("memcache page {pa:?} not a hyp page: {m:?}"));
                }
            }
        }

        let mut owned = 0;
        let mut borrowed = 0;
        let mut in_use = 0;
        let mut expect_mapped = 0;
        let mut expect_annotated = 0;
        for region in host.ram_regions() {
            let mut pages = region.iter();
            let mut err = None;
            host.stage2().walk(plat, super::host::identity(region), |ipa, n, l| {
                for k in 0..n {
                    let pa = pages.next().expect("walk stays in range");
                    debug_assert_eq!(pa.raw(), ipa.raw() + k * PAGE_SIZE);
                    let view = advance(l, k);
                    let m = *host.meta(pa).expect("RAM page");
                    let mappings = by_pa.remove(&pa.raw()).unwrap_or_default();
                    if let Err(e) = check_page(host, pa, &m, &view, &mappings) {
                        err = Some(e);
                        return ControlFlow::Break(());
                    }
                    owned += u64::from(m.hyp_state() == PageState::Owned);
                    in_use += u64::from(m.hyp_state() == PageState::Owned && m.hyp_pins() == 1);
                    borrowed += u64::from(m.hyp_state() == PageState::SharedBorrowed);
                    if matches!(view, Lookup::Mapped { .. }) {
                        expect_mapped += 1;
                    } else {
                        expect_annotated += 1;
                    }
                }
                ControlFlow::Continue(())
            });
            if let Some(e) = err {
                return Err(e);
            }
        }
        let held: usize = vms
            .handles()
            .map(|h| vms.get(h).expect("listed").guest.lock().memcache.held())
            .sum();
        if in_use != held as u64 {
            return Err(format!(
                "{in_use} hyp-owned pages pinned as in use, VM memcaches hold {held}"
            ));
        }
        if let Some((pa, m)) = by_pa.iter().next() {
            return Err(format!("guest mappings of non-RAM page {pa:#x}: {m:?}"));
        }
        if (owned, borrowed) != (hyp.owned_pages, hyp.borrowed_pages) {
            return Err(format!(
                "hyp accounting {hyp:?} but metadata says owned {owned}, borrowed {borrowed}"
            ));
        }

        // MMIO and hidden regions, and nothing else anywhere in the host space.
        for r in host.mmio_regions() {
            for pa in r.iter() {
                let l = host.stage2().lookup(plat, Ipa(pa.raw()));
                if !matches!(l, Lookup::Mapped { pa: p, leaf, .. } if p == pa && leaf == HOST_MMIO_LEAF) {
                    return Err(format!("MMIO {pa:?}: {l:?}"));
                }
                expect_mapped += 1;
            }
        }
        for r in host.hidden_regions() {
            for pa in r.iter() {
                let l = host.stage2().lookup(plat, Ipa(pa.raw()));
                if !matches!(l, Lookup::Annotated { ann, .. } if ann == super::hyp_annotation()) {
                    return Err(format!("hidden MMIO {pa:?}: {l:?}"));
                }
                expect_annotated += 1;
            }
        }
        let (mut mapped, mut annotated) = (0, 0);
        for (_, n, l) in chunks(host.stage2(), plat) {
            match l {
                Lookup::Mapped { .. } => mapped += n,
                _ => annotated += n,
            }
        }
        if (mapped, annotated) != (expect_mapped, expect_annotated) {
            return Err(format!(
                "host stage-2 maps {mapped} / annotates {annotated} pages, layout and metadata \
                 account for {expect_mapped} / {expect_annotated}"
            ));
        }
        Ok(())
    })
}

/// The lookup of the `k`-th page of a walk chunk.
fn advance(l: &Lookup, k: u64) -> Lookup {
    match *l {
        Lookup::Mapped { pa, leaf, level } => Lookup::Mapped {
            pa: pa.add(k * PAGE_SIZE),
            leaf,
            level,
        },
        other => other,
    }
}

/// One RAM page: its metadata, its host descriptor and the guest mappings of it agree.
fn check_page<A: TableAllocator>(
    host: &HostMemory<'_, A>,
    pa: PhysAddr,
    m: &PageMeta,
    view: &Lookup,
    mappings: &[GuestMapping],
) -> Result<(), String> {
    use PageState::*;
    let identity =
        matches!(view, Lookup::Mapped { pa: p, leaf, .. } if *p == pa && *leaf == HOST_RAM_LEAF);
    let owner = match view {
        Lookup::Annotated { ann, .. } => annotation_owner(ann, pa),
        _ => None,
    };
    let states: Vec<PageState> = mappings.iter().map(|g| g.state).collect();
    let reserved = in_any(pa, host.hyp_regions());
    let fail = |why: &str| {
        Err(format!(
            "page {pa:?}: {why}; meta {m:?}, host view {view:?}, guest mappings {mappings:?}"
        ))
    };
    let in_use = m.hyp_state() == Owned && m.hyp_pins() == 1;
    if m.hyp_pins() != 0 && !(m.hyp_state() == SharedBorrowed || reserved || in_use) {
        return fail("pinned but neither shared with the hyp nor in use by it");
    }
    if reserved != (m.hyp_pins() == PIN_RESERVED) {
        return fail("the hyp's own pages and only they are pinned for ever");
    }
    if m.guest_shares() as usize != states.iter().filter(|s| **s == SharedBorrowed).count() {
        return fail("share count differs from the guest SharedBorrowed mappings");
    }
    match (m.host_state(), m.hyp_state()) {
        (Owned, NoPage) | (SharedOwned, SharedBorrowed) if identity && states.is_empty() => Ok(()),
        (SharedOwned, NoPage)
            if identity && !states.is_empty() && states.iter().all(|s| *s == SharedBorrowed) =>
        {
            Ok(())
        }
        (NoPage, Owned) if owner == Some((Owner::Hyp, None)) && states.is_empty() => Ok(()),
        (NoPage, NoPage) => match (owner, mappings) {
            (Some((Owner::Guest(h), Some(ipa))), [g])
                if g.handle == h && g.ipa == ipa && g.state == Owned =>
            {
                Ok(())
            }
            _ => fail("guest-owned page must be annotated with its one guest mapping"),
        },
        // A page the guest owns (its one mapping says so) and shares with the host.
        (SharedBorrowed, NoPage) if identity && states == [Owned] => Ok(()),
        _ => fail("illegal combination"),
    }
}
