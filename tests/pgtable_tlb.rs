//! Invalidation discipline of the stage-2 engine, proven with a recording platform.
//!
//! The tables are read here by an independent walker that decodes the Arm stage-2 format itself
//! (and checks that every leaf is well formed for the CPU and the SMMU: AF set, inner shareable,
//! a MemAttr Verso uses). For every operation the test compares each page's translation before
//! and after and checks, against the TLB requests recorded during the call:
//! - every translation removed, downgraded or otherwise changed is covered by an invalidation;
//! - a translation replaced by a different one (output, type or size) was *broken* (invalid in
//!   the tables) when the invalidation was issued: break-before-make;
//! - every final valid entry was in the tables at the last barrier of the call (published);
//! - a call issues at most one invalidation request, whatever its size;
//! - every table page the call unlinks (reachable from the root at some place before the call,
//!   not at that place after it) is covered for the walk caches: an invalidation issued once the
//!   table was unreachable there, intersecting the span of the entry that pointed at it (or of
//!   the whole VMID), with no level hint or a hint no deeper than that entry. The page is then
//!   freed or kept as a spare and reused, so a cached table descriptor would make a CPU or the
//!   SMMU walk whatever the page holds next. A TLBI by IPA without a hint (IPAS2E1IS, the SMMU's
//!   TLBI_S2_IPA with Leaf = 0) drops the walk-cache entries used for that IPA at every level; a
//!   hint deeper than the table descriptor (a leaf-level TTL) promises nothing about it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use verso::addr::{Ipa, PageRange, PhysAddr, Vmid, PAGE_SIZE};
use verso::pgtable::{Annotation, Leaf, MemType, Perms, Stage2, Stage2Config};
use verso::platform::{CacheMaintenance, PhysMemory, TlbMaintenance};
use verso::testing::{FakePlatform, FakeTableAllocator, TlbOp};

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const SPACE: u64 = GIB;
const ARENA: PhysAddr = PhysAddr(0x8_0000_0000);
const ARENA_BYTES: u64 = 32 << 20;
const VMID: Vmid = Vmid(5);
const ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;
const SW_BITS: u64 = 0b11 << 55;
const PERM_BITS: u64 = (0b11 << 6) | (1 << 54);

/// A translation as the hardware would see it: output address of the page, attributes (with
/// the software bits), level of the leaf.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Translation {
    pa: u64,
    attrs: u64,
    level: u8,
}

/// Walk the tables at `root` like a stage-2 walker would, for the page at `ipa`.
fn hw_walk(mem: &FakePlatform, root: PhysAddr, start: u8, ipa: u64) -> Option<Translation> {
    let mut table = root.raw();
    let mut level = start;
    loop {
        let shift = 12 + 9 * (3 - u32::from(level));
        let d = mem.read_u64(PhysAddr(table + ((ipa >> shift) & 511) * 8));
        if d & 1 == 0 {
            return None;
        }
        if level < 3 && d & 3 == 3 {
            table = d & ADDR_MASK;
            level += 1;
            continue;
        }
        assert!(
            level == 3 || level > 0,
            "block descriptor at level 0: {d:#x}"
        );
        assert!(level != 3 || d & 3 == 3, "reserved level-3 encoding {d:#x}");
        assert!(
            d & (1 << 10) != 0,
            "AF clear in {d:#x}: the SMMU would fault"
        );
        assert_eq!(d >> 8 & 3, 3, "leaf not inner shareable: {d:#x}");
        assert!(
            matches!(d >> 2 & 0xf, 0b1111 | 0b0001),
            "unexpected MemAttr in {d:#x}"
        );
        let size = 1u64 << shift;
        let pa = (d & ADDR_MASK & !(size - 1)) + (ipa & (size - 1) & !0xfff);
        return Some(Translation {
            pa,
            attrs: d & !ADDR_MASK & !3,
            level,
        });
    }
}

/// A table page reachable from the root, and where: the IPA span of the entry pointing at it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct TableAt {
    /// First IPA the table translates.
    base: u64,
    /// Level of the table (the entry pointing at it is at `level - 1`).
    level: u8,
    /// Physical address of the table page.
    pa: u64,
}

impl TableAt {
    /// Bytes translated by the table (the span of the entry pointing at it).
    fn span(&self) -> u64 {
        1 << (12 + 9 * (4 - u32::from(self.level)))
    }
}

/// Every table page a stage-2 walker can reach from `root` (the root excluded: it is never
/// unlinked), decoded like `hw_walk` does.
fn hw_tables(mem: &FakePlatform, root: PhysAddr, start: u8) -> BTreeSet<TableAt> {
    fn walk(mem: &FakePlatform, table: u64, level: u8, base: u64, out: &mut BTreeSet<TableAt>) {
        if level == 3 {
            return;
        }
        let shift = 12 + 9 * (3 - u32::from(level));
        for i in 0..512u64 {
            let d = mem.read_u64(PhysAddr(table + i * 8));
            if d & 3 == 3 {
                let t = TableAt {
                    base: base + (i << shift),
                    level: level + 1,
                    pa: d & ADDR_MASK,
                };
                out.insert(t);
                walk(mem, t.pa, t.level, t.base, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(mem, root.raw(), start, 0, &mut out);
    out
}

/// True if `op` (an invalidation request) drops the walk-cache copies of the descriptor that
/// pointed at `t`: it is for `VMID` and intersects `t`'s span, with no level hint or one no
/// deeper than that descriptor's level; or it is the whole VMID.
fn covers_table(op: &TlbOp, t: &TableAt) -> bool {
    match *op {
        TlbOp::Ipa {
            vmid,
            start,
            pages,
            level,
        } => {
            vmid == VMID
                && start.raw() < t.base + t.span()
                && t.base < start.raw() + pages * PAGE_SIZE
                && level.is_none_or(|h| h < t.level)
        }
        TlbOp::Vmid(v) => v == VMID,
        _ => false,
    }
}

/// How many table pages the checked calls unlinked, by what replaced their descriptor (for the
/// random test to prove the rule was exercised).
#[derive(Clone, Copy, Default, Debug)]
struct Unlinked {
    /// The entry became a block (a table replaced by or coalesced into a block).
    by_block: usize,
    /// The entry became invalid and the call revoked translations in the table's span.
    by_invalid_revoking: usize,
    /// The entry became invalid and the call revoked no translation of the span (the table held
    /// only invalid entries: annotations or empty).
    by_invalid_quiet: usize,
}

/// A platform that records like `FakePlatform` and also snapshots the watched pages at every
/// barrier.
struct Checker {
    inner: FakePlatform,
    root: PhysAddr,
    start: u8,
    watched: Vec<u64>,
    /// Per invalidation request: the snapshot of the watched pages when it was issued.
    at_invalidation: RefCell<Vec<Vec<Option<Translation>>>>,
    /// Per invalidation request: the reachable tables when it was issued.
    tables_at_invalidation: RefCell<Vec<BTreeSet<TableAt>>>,
    at_last_barrier: RefCell<Vec<Option<Translation>>>,
    unlinked: Cell<Unlinked>,
}

impl Checker {
    fn snapshot(&self) -> Vec<Option<Translation>> {
        self.watched
            .iter()
            .map(|&ipa| hw_walk(&self.inner, self.root, self.start, ipa))
            .collect()
    }

    fn tables(&self) -> BTreeSet<TableAt> {
        hw_tables(&self.inner, self.root, self.start)
    }

    /// Record the state seen by an invalidation request that was just issued.
    fn invalidation_issued(&self) {
        let snap = self.snapshot();
        self.at_invalidation.borrow_mut().push(snap.clone());
        *self.at_last_barrier.borrow_mut() = snap;
        self.tables_at_invalidation.borrow_mut().push(self.tables());
    }
}

impl PhysMemory for Checker {
    fn phys_to_ptr(&self, pa: PhysAddr) -> *mut u8 {
        self.inner.phys_to_ptr(pa)
    }
}

impl TlbMaintenance for Checker {
    fn publish_table_writes(&mut self) {
        self.inner.publish_table_writes();
        *self.at_last_barrier.borrow_mut() = self.snapshot();
    }
    fn invalidate_ipa_range(&mut self, vmid: Vmid, start: Ipa, pages: u64, level_hint: Option<u8>) {
        self.inner
            .invalidate_ipa_range(vmid, start, pages, level_hint);
        self.invalidation_issued();
    }
    fn invalidate_vmid(&mut self, vmid: Vmid) {
        self.inner.invalidate_vmid(vmid);
        self.invalidation_issued();
    }
}

impl CacheMaintenance for Checker {
    fn clean_invalidate_to_poc(&mut self, pa: PhysAddr, len: u64) {
        self.inner.clean_invalidate_to_poc(pa, len);
    }
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn setup() -> (Checker, FakeTableAllocator, Stage2) {
    let mut plat = FakePlatform::new(ARENA, ARENA_BYTES);
    let mut alloc = FakeTableAllocator::new(ARENA, ARENA_BYTES / PAGE_SIZE);
    let s2 = Stage2::new(
        Stage2Config::for_ipa_bits(40).unwrap(),
        VMID,
        &mut plat,
        &mut alloc,
    )
    .unwrap();
    let checker = Checker {
        inner: plat,
        root: s2.root(),
        start: s2.config().start_level,
        watched: Vec::new(),
        at_invalidation: RefCell::new(Vec::new()),
        tables_at_invalidation: RefCell::new(Vec::new()),
        at_last_barrier: RefCell::new(Vec::new()),
        unlinked: Cell::new(Unlinked::default()),
    };
    (checker, alloc, s2)
}

const RWX: Leaf = Leaf {
    perms: Perms::RWX,
    mem: MemType::Normal,
    sw: 0,
};

/// Run `op` with every page of `range`, widened to whole 2 MiB blocks, watched, and every
/// table of the stage 2 walked before and after; check the discipline; return the invalidation
/// requests it made.
fn checked(
    c: &mut Checker,
    alloc: &mut FakeTableAllocator,
    s2: &mut Stage2,
    range: PageRange<Ipa>,
    op: impl FnOnce(&mut Stage2, &mut Checker, &mut FakeTableAllocator),
) -> Vec<TlbOp> {
    let lo = range.start().raw() & !(MIB2 - 1);
    let hi = (range.end().raw() + MIB2 - 1) & !(MIB2 - 1);
    c.watched = (lo..hi.min(SPACE)).step_by(PAGE_SIZE as usize).collect();
    let before = c.snapshot();
    let tables_before = c.tables();
    c.inner.clear_log();
    c.at_invalidation.borrow_mut().clear();
    c.tables_at_invalidation.borrow_mut().clear();
    *c.at_last_barrier.borrow_mut() = before.clone();
    op(s2, c, alloc);
    let after = c.snapshot();
    let log: Vec<TlbOp> = c.inner.log().to_vec();
    let invs: Vec<TlbOp> = log
        .iter()
        .copied()
        .filter(|o| !matches!(o, TlbOp::Publish))
        .collect();
    assert!(
        invs.len() <= 1,
        "more than one invalidation request in one call: {invs:?}"
    );
    let at_inv = c.at_invalidation.borrow();
    let last = c.at_last_barrier.borrow();
    for (i, &ipa) in c.watched.iter().enumerate() {
        let (b, a) = (before[i], after[i]);
        if let Some(b) = b {
            let same_hw = a.is_some_and(|a| {
                a.pa == b.pa && a.level == b.level && (a.attrs ^ b.attrs) & !SW_BITS == 0
            });
            if !same_hw {
                assert!(
                    invs.iter().any(|o| o.covers(VMID, Ipa(ipa))),
                    "translation of {ipa:#x} changed {b:?} -> {a:?} without invalidation: {log:?}"
                );
            }
            let in_place = a.is_some_and(|a| {
                a.pa == b.pa
                    && a.level == b.level
                    && (a.attrs ^ b.attrs) & !(SW_BITS | PERM_BITS) == 0
            });
            if a.is_some() && !in_place {
                assert!(
                    at_inv.iter().all(|snap| snap[i].is_none()),
                    "{ipa:#x}: {b:?} -> {a:?} not broken before the invalidation"
                );
            }
        }
        // Software bits are read by the hypervisor only: they need no barrier.
        let hw = |t: Option<Translation>| {
            t.map(|t| Translation {
                attrs: t.attrs & !SW_BITS,
                ..t
            })
        };
        if a.is_some() && hw(b) != hw(a) {
            assert_eq!(
                hw(last[i]),
                hw(a),
                "{ipa:#x}: final entry not published by the last barrier"
            );
        }
    }
    drop((at_inv, last));
    // Walk caches: every table unlinked from its place is covered by a request issued after the
    // unlink (the requests pair up with the table sets recorded when they were issued).
    let tables_after = c.tables();
    let requests: Vec<TlbOp> = log
        .iter()
        .copied()
        .filter(|o| matches!(o, TlbOp::Ipa { .. } | TlbOp::Vmid(_)))
        .collect();
    let tables_at_inv = c.tables_at_invalidation.borrow();
    assert_eq!(requests.len(), tables_at_inv.len());
    let mut unlinked = c.unlinked.get();
    for t in tables_before.difference(&tables_after) {
        assert!(
            requests
                .iter()
                .zip(tables_at_inv.iter())
                .any(|(o, reachable)| covers_table(o, t) && !reachable.contains(t)),
            "table {:#x} (level {}, IPA {:#x}..{:#x}) unlinked without an invalidation of its \
             walk-cache entries issued after the unlink: {log:?}",
            t.pa,
            t.level,
            t.base,
            t.base + t.span()
        );
        let d = hw_entry(&c.inner, c.root, c.start, t.base, t.level - 1);
        if d & 1 != 0 && d & 3 != 3 {
            unlinked.by_block += 1;
        } else if d & 3 != 3 {
            let revoked = c
                .watched
                .iter()
                .zip(&before)
                .any(|(&ipa, b)| b.is_some() && (t.base..t.base + t.span()).contains(&ipa));
            if revoked {
                unlinked.by_invalid_revoking += 1;
            } else {
                unlinked.by_invalid_quiet += 1;
            }
        }
    }
    c.unlinked.set(unlinked);
    drop(tables_at_inv);
    log
}

/// The descriptor at `level` on the walk of `ipa` (0 if the walk ends above `level`).
fn hw_entry(mem: &FakePlatform, root: PhysAddr, start: u8, ipa: u64, level: u8) -> u64 {
    let mut table = root.raw();
    for l in start..=level {
        let shift = 12 + 9 * (3 - u32::from(l));
        let d = mem.read_u64(PhysAddr(table + ((ipa >> shift) & 511) * 8));
        if l == level {
            return d;
        }
        if d & 3 != 3 {
            return 0;
        }
        table = d & ADDR_MASK;
    }
    unreachable!()
}

#[test]
fn every_revoked_translation_is_invalidated_before_return_and_replacements_break_first() {
    let mut unlinked = Unlinked::default();
    for seed in [11u64, 12, 13, 14] {
        eprintln!("seed = {seed}");
        let mut rng = Rng(seed);
        let (mut c, mut alloc, mut s2) = setup();
        for _ in 0..250 {
            let start = match rng.below(3) {
                0 => rng.below(SPACE / MIB2) * MIB2,
                _ => rng.below(SPACE / PAGE_SIZE) * PAGE_SIZE,
            };
            let pages = match rng.below(3) {
                0 => 512,
                1 => 1 + rng.below(16),
                _ => 1 + rng.below(1500),
            }
            .min((SPACE - start) / PAGE_SIZE);
            let range = PageRange::new(Ipa(start), pages).unwrap();
            let kind = rng.below(6);
            let delta = [0, MIB2, PAGE_SIZE * 3, GIB][rng.below(4) as usize];
            let perms = [Perms::RWX, Perms::RW, Perms::RO, Perms::NONE][rng.below(4) as usize];
            let mem = [MemType::Normal, MemType::Device][rng.below(2) as usize];
            let sw = rng.below(4) as u8;
            checked(&mut c, &mut alloc, &mut s2, range, |s2, p, a| {
                let r = match kind {
                    0 | 1 => s2.map(
                        p,
                        a,
                        range,
                        PhysAddr(start + delta),
                        Leaf { perms, mem, sw },
                    ),
                    2 => s2.annotate(
                        p,
                        a,
                        range,
                        Annotation {
                            owner: 1,
                            meta: sw.into(),
                        },
                    ),
                    3 => s2.unmap(p, a, range),
                    4 => s2.set_sw(p, a, range, sw),
                    _ => s2.set_perms(p, a, range, perms),
                };
                assert_eq!(r, Ok(()));
            });
        }
        let u = c.unlinked.get();
        unlinked.by_block += u.by_block;
        unlinked.by_invalid_revoking += u.by_invalid_revoking;
        unlinked.by_invalid_quiet += u.by_invalid_quiet;
    }
    eprintln!("{unlinked:?}");
    // The walk-cache rule was exercised on every kind of unlink (34 tables with these seeds).
    assert!(
        unlinked.by_block > 0 && unlinked.by_invalid_revoking > 0 && unlinked.by_invalid_quiet > 0,
        "the random operations no longer unlink every kind of table: {unlinked:?}"
    );
}

#[test]
fn every_unlinked_table_is_invalidated_for_the_walk_caches() {
    let (mut c, mut alloc, mut s2) = setup();
    let page = |ipa: u64, n: u64| PageRange::new(Ipa(ipa), n).unwrap();
    let unlinked = |c: &Checker| c.unlinked.get();

    // A page table of annotations only, made empty: it coalesces into an empty entry and the
    // call revokes no translation, yet the table descriptor may be in a walk cache.
    let base = 32 * MIB2;
    for (k, owner) in [(0, 1), (1, 2)] {
        let r = page(base + k * PAGE_SIZE, 1);
        s2.annotate(&mut c, &mut alloc, r, Annotation { owner, meta: 0 })
            .unwrap();
    }
    let before = unlinked(&c);
    let r = page(base, 2);
    let log = checked(&mut c, &mut alloc, &mut s2, r, |s2, p, a| {
        s2.unmap(p, a, r).unwrap();
    });
    assert_eq!(
        unlinked(&c).by_invalid_quiet,
        before.by_invalid_quiet + 1,
        "{log:?}"
    );

    // Mapped pages unmapped until the table is empty: coalesced with translations revoked.
    let base = 40 * MIB2;
    let r = page(base + 7 * PAGE_SIZE, 3);
    s2.map(&mut c, &mut alloc, r, PhysAddr(0x7000), RWX)
        .unwrap();
    let before = unlinked(&c);
    let log = checked(&mut c, &mut alloc, &mut s2, r, |s2, p, a| {
        s2.unmap(p, a, r).unwrap();
    });
    assert_eq!(
        unlinked(&c).by_invalid_revoking,
        before.by_invalid_revoking + 1,
        "{log:?}"
    );

    // A split block restored: the table coalesces back into the block.
    let block = page(48 * MIB2, 512);
    s2.map(&mut c, &mut alloc, block, PhysAddr(48 * MIB2), RWX)
        .unwrap();
    let one = page(48 * MIB2 + 9 * PAGE_SIZE, 1);
    s2.set_perms(&mut c, &mut alloc, one, Perms::RO).unwrap();
    let before = unlinked(&c);
    let log = checked(&mut c, &mut alloc, &mut s2, one, |s2, p, a| {
        s2.set_perms(p, a, one, Perms::RWX).unwrap();
    });
    assert_eq!(unlinked(&c).by_block, before.by_block + 1, "{log:?}");

    // A table of pages replaced by a block in one map call.
    let r = page(56 * MIB2, 4);
    s2.map(&mut c, &mut alloc, r, PhysAddr(0x3000), RWX)
        .unwrap();
    let before = unlinked(&c);
    let block = page(56 * MIB2, 512);
    let log = checked(&mut c, &mut alloc, &mut s2, block, |s2, p, a| {
        s2.map(p, a, block, PhysAddr(56 * MIB2), RWX).unwrap();
    });
    assert_eq!(unlinked(&c).by_block, before.by_block + 1, "{log:?}");
}

#[test]
fn permission_change_of_512_pages_issues_one_invalidation() {
    let (mut c, mut alloc, mut s2) = setup();
    let block = PageRange::new(Ipa(4 * MIB2), 512).unwrap();
    s2.map(&mut c, &mut alloc, block, PhysAddr(4 * MIB2), RWX)
        .unwrap();
    let log = checked(&mut c, &mut alloc, &mut s2, block, |s2, p, a| {
        s2.set_perms(p, a, block, Perms::RO).unwrap();
    });
    assert_eq!(
        log,
        [TlbOp::Ipa {
            vmid: VMID,
            start: block.start(),
            pages: 512,
            level: Some(2)
        }]
    );
    // 512 pages straddling two blocks: both split, still one request.
    let r = PageRange::new(Ipa(4 * MIB2 + 100 * PAGE_SIZE), 512).unwrap();
    let log = checked(&mut c, &mut alloc, &mut s2, r, |s2, p, a| {
        s2.set_perms(p, a, r, Perms::RWX).unwrap();
    });
    assert_eq!(
        log.iter().filter(|o| !matches!(o, TlbOp::Publish)).count(),
        1,
        "{log:?}"
    );
    // 512 page-mapped pages (output address forbids blocks): one request.
    let pages = PageRange::new(Ipa(16 * MIB2), 512).unwrap();
    s2.map(
        &mut c,
        &mut alloc,
        pages,
        PhysAddr(16 * MIB2 + PAGE_SIZE),
        RWX,
    )
    .unwrap();
    let log = checked(&mut c, &mut alloc, &mut s2, pages, |s2, p, a| {
        s2.unmap(p, a, pages).unwrap();
    });
    assert_eq!(
        log.iter().filter(|o| !matches!(o, TlbOp::Publish)).count(),
        1,
        "{log:?}"
    );
}

#[test]
fn mapping_invalid_entries_issues_no_invalidation() {
    let (mut c, mut alloc, mut s2) = setup();
    let ann = Annotation { owner: 2, meta: 0 };
    let donated = PageRange::new(Ipa(64 * MIB2), 2048).unwrap();
    s2.annotate(&mut c, &mut alloc, donated, ann).unwrap();
    let cases = [
        (PageRange::new(Ipa(0), 1).unwrap(), 0x7000),
        (PageRange::new(Ipa(2 * MIB2), 512).unwrap(), 2 * MIB2),
        (
            PageRange::new(Ipa(8 * MIB2 + 3 * PAGE_SIZE), 1000).unwrap(),
            0x9000_0000,
        ),
        (
            PageRange::new(Ipa(64 * MIB2 + 5 * PAGE_SIZE), 700).unwrap(),
            64 * MIB2 + 5 * PAGE_SIZE,
        ),
        (
            PageRange::new(Ipa(GIB - 4096 * PAGE_SIZE), 4096).unwrap(),
            0x1234_5000,
        ),
    ];
    for (r, pa) in cases {
        let log = checked(&mut c, &mut alloc, &mut s2, r, |s2, p, a| {
            s2.map(p, a, r, PhysAddr(pa), RWX).unwrap();
        });
        assert!(log.iter().all(|o| *o == TlbOp::Publish), "{r:?}: {log:?}");
        assert!(!log.is_empty(), "new mappings must be published");
    }
}

#[test]
fn software_bit_change_of_whole_entries_needs_no_invalidation() {
    let (mut c, mut alloc, mut s2) = setup();
    let r = PageRange::new(Ipa(2 * MIB2), 1024).unwrap();
    s2.map(&mut c, &mut alloc, r, PhysAddr(2 * MIB2), RWX)
        .unwrap();
    let log = checked(&mut c, &mut alloc, &mut s2, r, |s2, p, a| {
        s2.set_sw(p, a, r, 1).unwrap()
    });
    assert!(log.is_empty(), "{log:?}");
    let pages = PageRange::new(Ipa(32 * MIB2), 64).unwrap();
    s2.map(&mut c, &mut alloc, pages, PhysAddr(0x5000), RWX)
        .unwrap();
    let log = checked(&mut c, &mut alloc, &mut s2, pages, |s2, p, a| {
        s2.set_sw(p, a, pages, 2).unwrap()
    });
    assert!(log.is_empty(), "{log:?}");
}

#[test]
fn revoking_more_than_the_tlbi_budget_invalidates_the_whole_vmid_once() {
    let (mut c, mut alloc, mut s2) = setup();
    // Something else in the same GiB keeps the level-2 table alive (removing a table is itself
    // a whole-GiB revocation).
    let other = PageRange::new(Ipa(0), 1).unwrap();
    s2.map(&mut c, &mut alloc, other, PhysAddr(0), RWX).unwrap();
    // 1024 page-level leaves: 1024 TLBI operations > TLBI_MAX_OPS.
    let r = PageRange::new(Ipa(8 * MIB2), 1024).unwrap();
    s2.map(&mut c, &mut alloc, r, PhysAddr(0x3000), RWX)
        .unwrap();
    let log = checked(&mut c, &mut alloc, &mut s2, r, |s2, p, a| {
        s2.unmap(p, a, r).unwrap()
    });
    assert_eq!(log, [TlbOp::Vmid(VMID)]);
    // 1024 pages of 2 MiB blocks: two block-level operations, a range request.
    s2.map(&mut c, &mut alloc, r, PhysAddr(8 * MIB2), RWX)
        .unwrap();
    let log = checked(&mut c, &mut alloc, &mut s2, r, |s2, p, a| {
        s2.unmap(p, a, r).unwrap()
    });
    assert_eq!(
        log,
        [TlbOp::Ipa {
            vmid: VMID,
            start: r.start(),
            pages: 1024,
            level: Some(2)
        }]
    );
}
