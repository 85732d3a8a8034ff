//! Page-table properties of the stage-2 engine, checked against a reference model.
//!
//! Random sequences of map / annotate / annotate_linear / unmap / set_sw / set_perms over a few
//! GiB of IPA space (block-aligned and unaligned ranges, output addresses that allow blocks and
//! that do not) must agree with a `BTreeMap<page, expected>` at every page, never leak a table
//! page, and coalesce every 2 MiB / 1 GiB range that became uniform back into one block.
//!
//! Reproduce a failure with `VERSO_SEED=<seed printed on failure> cargo test --test pgtable_props`.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use verso::addr::{Ipa, PageRange, PhysAddr, Vmid, PAGE_SIZE};
use verso::error::Error;
use verso::pgtable::{
    Annotation, Leaf, Lookup, MemType, Perms, Stage2, Stage2Config, TableAllocator,
};
use verso::testing::{FakePlatform, FakeTableAllocator};

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
/// IPA space exercised: 4 GiB starting at 0.
const SPACE: u64 = 4 * GIB;
const ARENA: PhysAddr = PhysAddr(0x8_0000_0000);
const ARENA_BYTES: u64 = 64 << 20;

/// xorshift64*: small, seedable, good enough to drive operation sequences.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// What the model expects of one page (absent from the map: empty).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    Mapped { pa: u64, leaf: Leaf },
    Annotated(Annotation),
}

fn expect_of(l: &Lookup) -> Option<Expect> {
    match *l {
        Lookup::Mapped { pa, leaf, .. } => Some(Expect::Mapped { pa: pa.raw(), leaf }),
        Lookup::Annotated { ann, .. } => Some(Expect::Annotated(ann)),
        Lookup::Empty { .. } => None,
    }
}

fn level_of(l: &Lookup) -> u8 {
    match *l {
        Lookup::Mapped { level, .. }
        | Lookup::Annotated { level, .. }
        | Lookup::Empty { level } => level,
    }
}

/// The expectation of the page `k` pages after one expected as `e` in a linear run.
fn advance(e: Option<Expect>, k: u64, linear_meta: bool) -> Option<Expect> {
    match e {
        Some(Expect::Mapped { pa, leaf }) => Some(Expect::Mapped {
            pa: pa + k * PAGE_SIZE,
            leaf,
        }),
        Some(Expect::Annotated(a)) if linear_meta => Some(Expect::Annotated(Annotation {
            owner: a.owner,
            meta: a.meta + k,
        })),
        other => other,
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Map { pa: u64, leaf: Leaf },
    Annotate(Annotation),
    AnnotateLinear(Annotation),
    Unmap,
    SetSw(u8),
    SetPerms(Perms),
}

struct World {
    plat: FakePlatform,
    alloc: FakeTableAllocator,
    s2: Stage2,
    model: BTreeMap<u64, Expect>,
}

impl World {
    fn new() -> Self {
        let mut plat = FakePlatform::new(ARENA, ARENA_BYTES);
        // The upper half of the arena is left for the exhaustion test's own allocator.
        let mut alloc = FakeTableAllocator::new(ARENA, ARENA_BYTES / 2 / PAGE_SIZE);
        let cfg = Stage2Config::for_ipa_bits(40).unwrap();
        let s2 = Stage2::new(cfg, Vmid(3), &mut plat, &mut alloc).unwrap();
        World {
            plat,
            alloc,
            s2,
            model: BTreeMap::new(),
        }
    }

    fn apply(&mut self, range: PageRange<Ipa>, op: Op) {
        let (p, a) = (&mut self.plat, &mut self.alloc);
        let r = match op {
            Op::Map { pa, leaf } => self.s2.map(p, a, range, PhysAddr(pa), leaf),
            Op::Annotate(ann) => self.s2.annotate(p, a, range, ann),
            Op::AnnotateLinear(ann) => self.s2.annotate_linear(p, a, range, ann),
            Op::Unmap => self.s2.unmap(p, a, range),
            Op::SetSw(sw) => self.s2.set_sw(p, a, range, sw),
            Op::SetPerms(perms) => self.s2.set_perms(p, a, range, perms),
        };
        assert_eq!(r, Ok(()), "{op:?} on {range:?}");
        for (k, ipa) in range.iter().enumerate() {
            let k = k as u64;
            let page = ipa.raw();
            let new = match op {
                Op::Map { pa, leaf } => Some(Expect::Mapped {
                    pa: pa + k * PAGE_SIZE,
                    leaf,
                }),
                Op::Annotate(ann) => Some(Expect::Annotated(ann)),
                Op::AnnotateLinear(ann) => Some(Expect::Annotated(Annotation {
                    owner: ann.owner,
                    meta: ann.meta + k,
                })),
                Op::Unmap => None,
                Op::SetSw(sw) => match self.model.get(&page) {
                    Some(Expect::Mapped { pa, leaf }) => Some(Expect::Mapped {
                        pa: *pa,
                        leaf: Leaf { sw, ..*leaf },
                    }),
                    other => other.copied(),
                },
                Op::SetPerms(perms) => match self.model.get(&page) {
                    Some(Expect::Mapped { pa, leaf }) => Some(Expect::Mapped {
                        pa: *pa,
                        leaf: Leaf { perms, ..*leaf },
                    }),
                    other => other.copied(),
                },
            };
            match new {
                Some(e) => self.model.insert(page, e),
                None => self.model.remove(&page),
            };
        }
    }

    fn check_page(&self, ipa: u64) {
        let got = self.s2.lookup(&self.plat, Ipa(ipa));
        assert_eq!(
            expect_of(&got),
            self.model.get(&ipa).copied(),
            "page {ipa:#x}: {got:?}"
        );
    }

    /// True if the model says the `pages`-page region at `start` could be one entry.
    fn model_uniform(&self, start: u64, pages: u64) -> bool {
        let first = self.model.get(&start).copied();
        let second = self.model.get(&(start + PAGE_SIZE)).copied();
        let linear =
            matches!(first, Some(Expect::Annotated(_))) && second == advance(first, 1, true);
        if let Some(Expect::Mapped { pa, .. }) = first {
            if pa % (pages * PAGE_SIZE) != 0 {
                return false;
            }
        }
        (0..pages)
            .all(|k| self.model.get(&(start + k * PAGE_SIZE)).copied() == advance(first, k, linear))
    }

    /// Every touched page agrees with the model; so do the neighbours of the range; and every
    /// 2 MiB block the range touches that the model says is uniform is one entry.
    fn check_range(&self, range: PageRange<Ipa>) {
        let (s, e) = (range.start().raw(), range.end().raw());
        let step = (range.pages() / 1024).max(1);
        for k in (0..range.pages()).step_by(step as usize) {
            self.check_page(s + k * PAGE_SIZE);
        }
        self.check_page(e - PAGE_SIZE);
        if s > 0 {
            self.check_page(s - PAGE_SIZE);
        }
        if e < SPACE {
            self.check_page(e);
        }
        let mut b = s & !(MIB2 - 1);
        let mut checked = 0;
        while b < e && checked < 8 {
            if self.model_uniform(b, 512) {
                let l = self.s2.lookup(&self.plat, Ipa(b));
                assert!(
                    level_of(&l) <= 2,
                    "uniform 2 MiB at {b:#x} still page-mapped: {l:?}"
                );
            }
            b += MIB2;
            checked += 1;
        }
        assert_eq!(
            self.alloc.outstanding(),
            self.s2.table_pages() + self.s2.spare_tables(),
            "table page accounting (reachable tables and spares)"
        );
    }

    /// The whole space: `walk` chunks agree with `lookup` and with the model on every page.
    fn check_all(&self) {
        let space = PageRange::new(Ipa(0), SPACE / PAGE_SIZE).unwrap();
        let mut next = 0u64;
        self.s2.walk(&self.plat, space, |start, pages, first| {
            assert_eq!(start.raw(), next, "walk chunks must tile the range");
            next = start.raw() + pages * PAGE_SIZE;
            let e0 = expect_of(first);
            assert_eq!(
                e0,
                expect_of(&self.s2.lookup(&self.plat, start)),
                "walk vs lookup at {start:?}"
            );
            let linear = pages > 1
                && matches!(first, Lookup::Annotated { .. })
                && expect_of(&self.s2.lookup(&self.plat, Ipa(start.raw() + PAGE_SIZE))) != e0;
            if e0.is_none() && pages > 4096 {
                // Large empty chunks: the model must hold nothing inside.
                let inside = self
                    .model
                    .range(start.raw()..start.raw() + pages * PAGE_SIZE)
                    .next();
                assert!(
                    inside.is_none(),
                    "model has {inside:?} inside empty chunk at {start:?}"
                );
                return ControlFlow::Continue(());
            }
            for k in 0..pages {
                let ipa = start.raw() + k * PAGE_SIZE;
                assert_eq!(
                    self.model.get(&ipa).copied(),
                    advance(e0, k, linear),
                    "page {ipa:#x}"
                );
            }
            ControlFlow::Continue(())
        });
        assert_eq!(next, SPACE);
    }
}

fn random_leaf(rng: &mut Rng) -> Leaf {
    Leaf {
        perms: rng.pick(&[Perms::RWX, Perms::RW, Perms::RO, Perms::NONE]),
        mem: rng.pick(&[MemType::Normal, MemType::Normal, MemType::Device]),
        sw: rng.below(4) as u8,
    }
}

fn random_range(rng: &mut Rng) -> PageRange<Ipa> {
    let (start, pages) = match rng.below(40) {
        // Block-aligned 2 MiB multiples.
        0..=11 => (rng.below(SPACE / MIB2) * MIB2, 512 * (1 + rng.below(4))),
        // Unaligned, small.
        12..=23 => (rng.below(SPACE / PAGE_SIZE) * PAGE_SIZE, 1 + rng.below(64)),
        // Unaligned, a few blocks long.
        24..=31 => (
            rng.below(SPACE / PAGE_SIZE) * PAGE_SIZE,
            1 + rng.below(2048),
        ),
        // Inside one hot 2 MiB block, to fragment and re-uniform it.
        32..=38 => (GIB + rng.below(512) * PAGE_SIZE, 1 + rng.below(64)),
        // A whole GiB (rarely: the reference model updates page by page).
        _ => (rng.below(SPACE / GIB) * GIB, GIB / PAGE_SIZE),
    };
    let pages = pages.min((SPACE - start) / PAGE_SIZE);
    PageRange::new(Ipa(start), pages).unwrap()
}

fn random_op(rng: &mut Rng, range: PageRange<Ipa>) -> Op {
    let ipa = range.start().raw();
    match rng.below(12) {
        0..=3 => {
            // Mostly an output address congruent with the IPA modulo 1 GiB (blocks possible),
            // sometimes one that forbids blocks.
            let delta = match rng.below(4) {
                0 => 0,
                1 => GIB * (1 + rng.below(4)),
                2 => MIB2 * rng.below(1024),
                _ => PAGE_SIZE * rng.below(1 << 20),
            };
            Op::Map {
                pa: ipa + delta,
                leaf: random_leaf(rng),
            }
        }
        4 | 5 => Op::Annotate(Annotation {
            owner: rng.below(8) as u8,
            meta: rng.below(4),
        }),
        6 => Op::AnnotateLinear(Annotation {
            owner: rng.below(8) as u8,
            meta: rng.below(1 << 40),
        }),
        7 | 8 => Op::Unmap,
        9 | 10 => Op::SetSw(rng.below(4) as u8),
        _ => Op::SetPerms(rng.pick(&[Perms::RWX, Perms::RW, Perms::RO, Perms::NONE])),
    }
}

fn seeds() -> Vec<u64> {
    match std::env::var("VERSO_SEED") {
        Ok(s) => vec![s
            .trim_start_matches("0x")
            .parse()
            .or_else(|_| u64::from_str_radix(&s, 16))
            .unwrap()],
        Err(_) => (1..=8).map(|i| 0x5eed_0000 + i).collect(),
    }
}

#[test]
fn random_sequences_agree_with_reference_map_and_never_leak_tables() {
    for seed in seeds() {
        eprintln!("seed = {seed}");
        let mut rng = Rng(seed);
        let mut w = World::new();
        for step in 0..500 {
            let range = random_range(&mut rng);
            let op = random_op(&mut rng, range);
            let needed = w.s2.tables_needed(&w.plat, range);
            let pa = match op {
                Op::Map { pa, .. } => Some(PhysAddr(pa)),
                _ => None,
            };
            let exact = w.s2.tables_needed_for(&w.plat, range, pa);
            // The O(1) bound holds for every operation but a map that is not congruent modulo
            // 1 GiB.
            let in_place = match op {
                Op::Map { pa, .. } if !(pa - range.start().raw()).is_multiple_of(GIB) => usize::MAX,
                _ => w.s2.tables_needed_in_place(range),
            };
            let (before, spares) = (w.alloc.allocs(), w.s2.spare_tables());
            w.apply(range, op);
            // Pages taken from the allocator, and spare tables consumed (at least).
            let used =
                (w.alloc.allocs() - before) as usize + spares.saturating_sub(w.s2.spare_tables());
            assert!(
                used <= exact && exact <= needed && used <= in_place,
                "step {step}: {op:?} took {used}, tables_needed_for {exact}, tables_needed {needed}, tables_needed_in_place {in_place}"
            );
            w.check_range(range);
            if step % 100 == 99 {
                w.check_all();
            }
        }
        w.check_all();
        // Unmapping everything leaves only the root; destroy returns every page.
        let all = PageRange::new(Ipa(0), SPACE / PAGE_SIZE).unwrap();
        w.s2.unmap(&mut w.plat, &mut w.alloc, all).unwrap();
        assert_eq!(w.s2.table_pages(), 1);
        assert_eq!(w.alloc.outstanding(), 1 + w.s2.spare_tables());
        w.s2.destroy(&mut w.plat, &mut w.alloc);
        assert_eq!(
            w.alloc.outstanding(),
            0,
            "destroy must return every table page"
        );
        assert_eq!(w.alloc.allocs(), w.alloc.frees());
    }
}

#[test]
fn fragmented_2mib_block_coalesces_back_when_uniform_again() {
    let mut w = World::new();
    let leaf = Leaf {
        perms: Perms::RWX,
        mem: MemType::Normal,
        sw: 0,
    };
    let block = PageRange::new(Ipa(2 * GIB + 4 * MIB2), 512).unwrap();
    w.apply(
        block,
        Op::Map {
            pa: 0x4000_0000 + 4 * MIB2,
            leaf,
        },
    );
    assert!(matches!(
        w.s2.lookup(&w.plat, block.start()),
        Lookup::Mapped { level: 2, .. }
    ));
    let tables = w.s2.table_pages();
    // Share page by page (software bits), then unshare page by page.
    for ipa in block.iter() {
        w.apply(PageRange::new(ipa, 1).unwrap(), Op::SetSw(1));
    }
    // All pages shared: the block is uniform again, with the new state.
    let l =
        w.s2.lookup(&w.plat, Ipa(block.start().raw() + 77 * PAGE_SIZE));
    assert!(
        matches!(
            l,
            Lookup::Mapped {
                level: 2,
                leaf: Leaf { sw: 1, .. },
                ..
            }
        ),
        "{l:?}"
    );
    for ipa in block.iter().step_by(3) {
        w.apply(PageRange::new(ipa, 1).unwrap(), Op::SetSw(0));
    }
    assert!(
        w.s2.table_pages() > tables,
        "a fragmented block needs a page table"
    );
    w.apply(block, Op::SetSw(0));
    assert_eq!(w.s2.table_pages(), tables, "no page-level table may remain");
    assert!(matches!(
        w.s2.lookup(&w.plat, block.start()),
        Lookup::Mapped { level: 2, .. }
    ));
    w.check_range(block);
}

#[test]
fn share_then_unshare_of_a_block_range_leaves_no_page_table() {
    let mut w = World::new();
    let leaf = Leaf {
        perms: Perms::RWX,
        mem: MemType::Normal,
        sw: 0,
    };
    let gib = PageRange::new(Ipa(GIB), GIB / PAGE_SIZE).unwrap();
    w.apply(gib, Op::Map { pa: GIB, leaf });
    assert!(matches!(
        w.s2.lookup(&w.plat, Ipa(GIB)),
        Lookup::Mapped { level: 1, .. }
    ));
    let tables = w.s2.table_pages();
    // An unaligned share splits the 1 GiB block down to pages at both ends...
    let r = PageRange::new(Ipa(GIB + 3 * MIB2 + 5 * PAGE_SIZE), 700).unwrap();
    w.apply(r, Op::SetSw(2));
    assert!(w.s2.table_pages() >= tables + 2);
    w.check_range(r);
    // ...and the unshare puts the 1 GiB block back.
    w.apply(r, Op::SetSw(0));
    assert_eq!(w.s2.table_pages(), tables);
    assert!(matches!(
        w.s2.lookup(&w.plat, Ipa(GIB + 3 * MIB2)),
        Lookup::Mapped { level: 1, .. }
    ));
    // Same for a 2 MiB-aligned block range.
    let r = PageRange::new(Ipa(GIB + 8 * MIB2), 512).unwrap();
    w.apply(r, Op::SetSw(1));
    assert!(matches!(
        w.s2.lookup(&w.plat, r.start()),
        Lookup::Mapped { level: 2, .. }
    ));
    w.apply(r, Op::SetSw(0));
    assert_eq!(w.s2.table_pages(), tables);
    assert!(matches!(
        w.s2.lookup(&w.plat, r.start()),
        Lookup::Mapped { level: 1, .. }
    ));
}

#[test]
fn linear_annotation_of_a_block_stays_one_entry_and_reports_per_page_metadata() {
    let mut w = World::new();
    let r = PageRange::new(Ipa(6 * MIB2), 1024).unwrap();
    let ann = Annotation {
        owner: 2,
        meta: (7 << 40) | 0x1000,
    };
    w.apply(r, Op::AnnotateLinear(ann));
    // Two 2 MiB entries, no page table below the root's L1/L2 path.
    assert_eq!(w.s2.table_pages(), 3);
    let l = w.s2.lookup(&w.plat, Ipa(6 * MIB2 + 600 * PAGE_SIZE));
    assert_eq!(
        l,
        Lookup::Annotated {
            ann: Annotation {
                owner: 2,
                meta: ann.meta + 600
            },
            level: 2
        }
    );
    // Re-annotating one page differently splits; restoring it coalesces.
    let one = PageRange::new(Ipa(6 * MIB2 + 5 * PAGE_SIZE), 1).unwrap();
    w.apply(one, Op::Annotate(Annotation { owner: 1, meta: 0 }));
    assert_eq!(w.s2.table_pages(), 4);
    w.apply(
        one,
        Op::AnnotateLinear(Annotation {
            owner: 2,
            meta: ann.meta + 5,
        }),
    );
    assert_eq!(w.s2.table_pages(), 3);
    w.check_range(r);
    // One walk chunk for the whole run.
    let mut chunks = 0;
    w.s2.walk(&w.plat, r, |_, pages, _| {
        chunks += 1;
        assert_eq!(pages, 1024);
        ControlFlow::Continue(())
    });
    assert_eq!(chunks, 1);
}

#[test]
fn ipa_beyond_limit_is_refused_with_range_and_nothing_changes() {
    let mut w = World::new();
    let limit = w.s2.config().ipa_limit();
    let leaf = Leaf {
        perms: Perms::RW,
        mem: MemType::Normal,
        sw: 0,
    };
    let straddle = PageRange::new(Ipa(limit - PAGE_SIZE), 2).unwrap();
    let beyond = PageRange::new(Ipa(limit), 1).unwrap();
    let last = PageRange::new(Ipa(limit - PAGE_SIZE), 1).unwrap();
    w.apply(last, Op::Map { pa: 0x1000, leaf });
    let tables = w.s2.table_pages();
    let (p, a) = (&mut w.plat, &mut w.alloc);
    p.clear_log();
    for r in [straddle, beyond] {
        assert_eq!(w.s2.map(p, a, r, PhysAddr(0), leaf), Err(Error::Range));
        assert_eq!(w.s2.unmap(p, a, r), Err(Error::Range));
        assert_eq!(
            w.s2.annotate(p, a, r, Annotation { owner: 1, meta: 0 }),
            Err(Error::Range)
        );
        assert_eq!(w.s2.set_sw(p, a, r, 1), Err(Error::Range));
    }
    assert!(
        p.log().is_empty(),
        "a refused call must not touch the TLB: {:?}",
        p.log()
    );
    assert_eq!(w.s2.table_pages(), tables);
    w.check_page(limit - PAGE_SIZE);
    assert_eq!(w.s2.lookup(&w.plat, Ipa(limit)), Lookup::Empty { level: 0 });
}

#[test]
fn malformed_arguments_are_refused_exactly() {
    let mut w = World::new();
    let r = PageRange::new(Ipa(0x10_0000), 4).unwrap();
    let (p, a) = (&mut w.plat, &mut w.alloc);
    let leaf = Leaf {
        perms: Perms::RW,
        mem: MemType::Normal,
        sw: 0,
    };
    assert_eq!(w.s2.map(p, a, r, PhysAddr(0x1234), leaf), Err(Error::Align));
    assert_eq!(
        w.s2.map(p, a, r, PhysAddr(0), Leaf { sw: 4, ..leaf }),
        Err(Error::Invalid)
    );
    assert_eq!(
        w.s2.map(p, a, r, PhysAddr((1 << 48) - PAGE_SIZE), leaf),
        Err(Error::Range)
    );
    assert_eq!(
        w.s2.annotate(p, a, r, Annotation { owner: 8, meta: 0 }),
        Err(Error::Invalid)
    );
    assert_eq!(
        w.s2.annotate(
            p,
            a,
            r,
            Annotation {
                owner: 1,
                meta: 1 << 56
            }
        ),
        Err(Error::Invalid)
    );
    let top = Annotation {
        owner: 1,
        meta: (1 << 56) - 2,
    };
    assert_eq!(w.s2.annotate_linear(p, a, r, top), Err(Error::Invalid));
    assert_eq!(w.s2.set_sw(p, a, r, 4), Err(Error::Invalid));
    assert_eq!(w.s2.table_pages(), 1);
    assert!(w
        .plat
        .log()
        .iter()
        .all(|op| matches!(op, verso::testing::TlbOp::Publish)));
    // Zero-length ranges cannot be built at all.
    assert!(PageRange::new(Ipa(0), 0).is_none());
    assert!(Stage2Config::for_ipa_bits(31).is_err() && Stage2Config::for_ipa_bits(49).is_err());
}

#[test]
fn allocator_exhaustion_is_nomem_with_tables_unchanged() {
    let mut w = World::new();
    let leaf = Leaf {
        perms: Perms::RWX,
        mem: MemType::Normal,
        sw: 0,
    };
    let big = PageRange::new(Ipa(0), 2 * GIB / PAGE_SIZE).unwrap();
    w.apply(big, Op::Map { pa: 0, leaf });
    let tables = w.s2.table_pages();
    // A change in the middle of a 1 GiB block needs an L2 and an L3 table.
    let r = PageRange::new(Ipa(GIB / 2 + 3 * PAGE_SIZE), 2).unwrap();
    assert_eq!(w.s2.tables_needed_for(&w.plat, r, None), 2);
    for avail in 0..2 {
        let mut alloc = FakeTableAllocator::new(ARENA.add(32 << 20), 16);
        alloc.limit_free(avail);
        w.plat.clear_log();
        let ann = Annotation { owner: 1, meta: 9 };
        assert_eq!(
            w.s2.annotate(&mut w.plat, &mut alloc, r, ann),
            Err(Error::NoMem)
        );
        assert_eq!(
            w.s2.set_sw(&mut w.plat, &mut alloc, r, 3),
            Err(Error::NoMem)
        );
        assert_eq!(alloc.allocs(), 0, "a refused operation must not take pages");
        assert!(w.plat.log().is_empty());
        assert_eq!(w.s2.table_pages(), tables);
        w.check_range(PageRange::new(Ipa(GIB / 2), 512).unwrap());
    }
    // With exactly what tables_needed_for says, it succeeds.
    let mut alloc = FakeTableAllocator::new(ARENA.add(32 << 20), 16);
    alloc.limit_free(2);
    let ann = Annotation { owner: 1, meta: 9 };
    assert_eq!(w.s2.annotate(&mut w.plat, &mut alloc, r, ann), Ok(()));
    assert_eq!(alloc.available(), 0);
}

#[test]
fn queries_beyond_the_ipa_limit_answer_without_panicking() {
    let mut w = World::new();
    let limit = w.s2.config().ipa_limit();
    let leaf = Leaf {
        perms: Perms::RW,
        mem: MemType::Normal,
        sw: 0,
    };
    let last = PageRange::new(Ipa(limit - PAGE_SIZE), 1).unwrap();
    w.apply(last, Op::Map { pa: 0x1000, leaf });
    let far = PageRange::new(Ipa(!0xfff_u64 - 16 * PAGE_SIZE), 16).unwrap();
    let straddle = PageRange::new(Ipa(limit - PAGE_SIZE), 3).unwrap();
    assert_eq!(
        w.s2.tables_needed_for(&w.plat, far, Some(PhysAddr(!0xfff))),
        0
    );
    assert_eq!(w.s2.tables_needed_for(&w.plat, straddle, None), 0);
    assert!(w.s2.tables_needed(&w.plat, far) > 0);
    assert_eq!(
        w.s2.lookup(&w.plat, far.start()),
        Lookup::Empty { level: 0 }
    );
    let mut chunks = Vec::new();
    w.s2.walk(&w.plat, straddle, |ipa, pages, l| {
        chunks.push((ipa.raw(), pages, expect_of(l)));
        ControlFlow::Continue(())
    });
    let mapped = Some(Expect::Mapped { pa: 0x1000, leaf });
    assert_eq!(chunks, [(limit - PAGE_SIZE, 1, mapped), (limit, 2, None)]);
    // A walk that breaks early stops at once.
    let mut calls = 0;
    w.s2.walk(&w.plat, straddle, |_, _, _| {
        calls += 1;
        ControlFlow::Break(())
    });
    assert_eq!(calls, 1);
}

#[test]
fn stage2_can_move_between_cpus() {
    // A VM's tables live behind a lock that any CPU may take: the handle must be Send.
    fn assert_send<T: Send>() {}
    assert_send::<Stage2>();
}
