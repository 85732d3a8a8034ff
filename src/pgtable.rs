//! The VMSAv8-64 stage-2 translation engine: one table format for the CPU and the SMMU.
//!
//! This module owns the layout of stage-2 descriptors (4 KiB granule, Arm DDI 0487 "Translation
//! table descriptor formats"), the range walks that change them, block mappings, splitting and
//! coalescing, break-before-make on live tables and the choice of TLB invalidations. It does not
//! know who owns a page: `mem` decides, this module executes.
//!
//! # Format
//! - Start level 1 for IPA sizes of 32..=39 bits, level 0 for 40..=48 bits, and always a single
//!   root page: concatenated root tables are never used, because QEMU's SMMUv3 mis-walks them and
//!   the host's tables are shared with the SMMU (see `docs/decisions/aarch64-paging.md`).
//! - Leaves: MemAttr Normal write-back `0b1111` or Device-nGnRE `0b0001` (FWB = 0), inner
//!   shareable, AF = 1 (the SMMU has no hardware access flag), S2AP from [`Perms`], XN in bit 54,
//!   the two software bits 55/56 carry [`Leaf::sw`] (the guest page state).
//! - Annotated entries are invalid (bit 0 = 0; bits 63:1 are ignored by every walker): bits 63:60
//!   hold a type (`0x2` constant annotation, `0x3` linear annotation), bits 3:1 the owner and
//!   bits 59:4 a 56-bit metadata word. An all-zero entry is empty.
//!
//! # Annotations are constant or linear
//! [`Stage2::annotate`] gives every page of the range the same [`Annotation`].
//! [`Stage2::annotate_linear`] gives page `k` of the range the metadata `meta + k`: a block-level
//! entry stores the metadata of its first page and [`Stage2::lookup`] adds the page offset. This
//! lets a donation of contiguous guest pages (metadata = VM handle and guest frame) stay one 2 MiB
//! or 1 GiB entry instead of fragmenting the host's tables into pages.
//!
//! # Break-before-make and invalidation
//! Every operation is two passes over its range. The first writes every final value that
//! architecturally may be written directly, and for every valid -> valid change that needs
//! break-before-make (output address, memory type or block size changes, table <-> block) it
//! writes a *pending* invalid entry that remembers the new value. Then the operation issues one
//! invalidation for everything it revoked, and a second pass turns the pending entries into
//! their final values. Detached table pages are returned to the allocator only after the
//! invalidation, because walk caches may still point at them. See [`TLBI_MAX_OPS`] for when a
//! whole-VMID invalidation replaces the range.
//!
//! Permission and software-bit changes of a live leaf are written in place (no break needed,
//! DDI 0487 "Translation table updates"); a permission change (up or down) is invalidated,
//! because a stale stricter entry would make the host take a permission fault the hypervisor
//! would treat as an illegal access; a software-bit-only change needs no invalidation at all.
//!
//! The one request per operation covers the hull of every entry whose translation was removed,
//! replaced or had its permissions changed, and of every table entry removed (walk caches), with
//! the level of those entries as the hint when they were all at one level. Invalid -> valid
//! writes need no invalidation, only [`TlbMaintenance::publish_table_writes`].
//!
//! # Blocks, splitting and coalescing
//! `map` uses a 1 GiB or 2 MiB block wherever the IPA, the output address and the range allow.
//! A change that covers part of a block (or of a block-level annotated entry) first splits it
//! into a table of the next level that translates exactly what the block did. After the change,
//! every table the operation touched whose 512 entries are what one entry of the level above
//! would give (contiguous output with identical attributes and an aligned block; identical or
//! linearly continuing annotations; all empty) is replaced by that entry, with break-before-make,
//! and its page freed. So a share followed by an unshare of any range leaves the tables exactly
//! as they were.
//!
//! # Capacity: prepare, then commit
//! Table pages are allocated only for splits. Before writing anything an operation checks that
//! its allocator can supply the worst case ([`Stage2::tables_needed`], a constant-time bound; if
//! the pool is smaller, the exact count for the tables as they are, [`Stage2::tables_needed_for`])
//! and refuses with `NoMem` otherwise, so a refused operation changed nothing and a caller that
//! checked the bound first never sees `NoMem`. Freed pages go back to the allocator passed in.
//!
//! # Concurrency
//! `&mut Stage2` stands for the lock of the component that owns the tables: the engine is the
//! only writer. Hardware walkers (CPUs, the SMMU) read concurrently and never write (VTCR_EL2.HA
//! and HD stay clear, no hardware access-flag or dirty-state updates), which is what makes the
//! plain (non-volatile) scans of `uniform` sound.
//!
//! # API changes (from the brief)
//! - Added [`Stage2::annotate_linear`], [`Stage2::set_sw`], [`Stage2::set_perms`] and
//!   [`Stage2::tables_needed_for`].
//! - [`Stage2::tables_needed`] takes `&impl PhysMemory` (it only reads; any `Platform` is one).
//! - [`TableAllocator::alloc_table`] need not return a zeroed page: the engine writes every entry
//!   of a new table itself (a host-donated memcache page may hold anything).
//! - Permission-only and software-bit-only changes of a live leaf are written in place (the
//!   architecture needs no break for them); break-before-make is used where it is required.
//! - [`Stage2::lookup`] of an IPA at or beyond [`Stage2Config::ipa_limit`] returns
//!   `Lookup::Empty` at the start level; [`Stage2::walk`] reports the part of a range beyond the
//!   limit as one `Empty` chunk.

use core::ops::ControlFlow;

use crate::addr::{Ipa, PageRange, PhysAddr, Vmid, PAGE_SIZE};
use crate::error::{Error, Result};
#[cfg(doc)]
use crate::platform::TlbMaintenance;
use crate::platform::{PhysMemory, Platform};

/// Where the engine gets table pages from and returns them to (the hyp pool, or a VM's
/// host-donated memcache).
pub trait TableAllocator {
    /// One page for a translation table, or `None` if the pool is empty. The contents need not be
    /// zero: the engine initialises all 512 entries before the table becomes reachable.
    fn alloc_table(&mut self) -> Option<PhysAddr>;
    /// Give back a page obtained from [`alloc_table`](Self::alloc_table) that no walker can reach
    /// any more (it has been invalidated).
    fn free_table(&mut self, pa: PhysAddr);
    /// How many pages [`alloc_table`](Self::alloc_table) can still hand out.
    fn available(&self) -> usize;
}

/// Geometry of a stage-2 address space: 4 KiB granule, one root page, never concatenated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Stage2Config {
    /// Size of the IPA space in bits (VTCR_EL2.T0SZ = 64 - ipa_bits).
    pub ipa_bits: u32,
    /// Level of the root table (0 or 1).
    pub start_level: u8,
}

impl Stage2Config {
    /// The configuration for an IPA space of `bits` bits: start level 1 for 32..=39 bits, level 0
    /// for 40..=48 bits, so that the root is always one page.
    ///
    /// # Errors
    /// `Range` if `bits` is outside 32..=48.
    pub fn for_ipa_bits(bits: u32) -> Result<Self> {
        match bits {
            32..=39 => Ok(Self {
                ipa_bits: bits,
                start_level: 1,
            }),
            40..=48 => Ok(Self {
                ipa_bits: bits,
                start_level: 0,
            }),
            _ => Err(Error::Range),
        }
    }

    /// VTCR_EL2 for this geometry: T0SZ, SL0, inner/outer write-back write-allocate walks, inner
    /// shareable, 4 KiB granule, `ps` (the PS field encoding, i.e. ID_AA64MMFR0_EL1.PARange,
    /// 0b010 = 40 bits .. 0b101 = 48 bits), 16-bit VMIDs, RES1 bit 31.
    ///
    /// With start level 0, `ps` must encode at least 44 bits (R_SRKBC forbids a level-0 start
    /// with a 40- or 42-bit PS); every CPU Verso targets (QEMU `max`: 48 bits) satisfies this.
    /// The same fields go into an SMMUv3 STE (S2T0SZ, S2SL0, S2IR0, S2OR0, S2SH0, S2TG, S2PS).
    pub fn vtcr(&self, ps: u64) -> u64 {
        let t0sz = u64::from(64 - self.ipa_bits);
        let sl0: u64 = match self.start_level {
            0 => 0b10,
            _ => 0b01,
        };
        t0sz | sl0 << 6
            | 0b01 << 8
            | 0b01 << 10
            | 0b11 << 12
            | (ps & 0b111) << 16
            | 1 << 19
            | 1 << 31
    }

    /// One past the highest IPA this space translates.
    pub fn ipa_limit(&self) -> u64 {
        1u64 << self.ipa_bits
    }
}

/// Memory type of a mapping (stage-2 MemAttr with FWB = 0).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemType {
    /// Normal, inner and outer write-back (MemAttr 0b1111); the stage-1 attribute still applies.
    Normal,
    /// Device-nGnRE (MemAttr 0b0001).
    Device,
}

/// Stage-2 access permissions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Perms {
    /// Readable (S2AP bit 6).
    pub read: bool,
    /// Writable (S2AP bit 7).
    pub write: bool,
    /// Executable (XN bit 54 clear).
    pub exec: bool,
}

impl Perms {
    /// Read, write, execute.
    pub const RWX: Perms = Perms {
        read: true,
        write: true,
        exec: true,
    };
    /// Read, write, no execute.
    pub const RW: Perms = Perms {
        read: true,
        write: true,
        exec: false,
    };
    /// Read only, no execute.
    pub const RO: Perms = Perms {
        read: true,
        write: false,
        exec: false,
    };
    /// No access (a valid entry that faults on every access but keeps its output address).
    pub const NONE: Perms = Perms {
        read: false,
        write: false,
        exec: false,
    };
}

/// The attributes of a valid leaf entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Leaf {
    /// Access permissions.
    pub perms: Perms,
    /// Memory type.
    pub mem: MemType,
    /// The two software bits (55/56): the page state in a guest's stage 2. Must be <= 3.
    pub sw: u8,
}

/// The content of an invalid, annotated entry: who owns the page and a metadata word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Annotation {
    /// Owner identifier (3 bits, 0..=7).
    pub owner: u8,
    /// Metadata (at most 56 bits), e.g. a VM handle and guest frame number.
    pub meta: u64,
}

/// What a stage-2 table says about one page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lookup {
    /// Translated to `pa` by a leaf at `level` (3: page, 2: 2 MiB block, 1: 1 GiB block).
    Mapped {
        /// Output address of the page.
        pa: PhysAddr,
        /// Attributes of the leaf.
        leaf: Leaf,
        /// Level of the leaf entry.
        level: u8,
    },
    /// Not translated; the invalid entry at `level` carries an annotation.
    Annotated {
        /// The annotation of this page (for linear annotations, already offset to this page).
        ann: Annotation,
        /// Level of the invalid entry.
        level: u8,
    },
    /// Not translated and not annotated.
    Empty {
        /// Level of the invalid entry.
        level: u8,
    },
}

/// When one operation's revocations would need more than this many per-entry TLBI operations
/// (span / stride of the level hint, stride one page without a hint), the engine asks for one
/// whole-VMID invalidation instead. 512 is Linux's `MAX_DVM_OPS` (PTRS_PER_PTE): beyond it a
/// broadcast `TLBI VMALLS12E1IS` costs less than the stream of per-IPA DVM messages on a CPU
/// without FEAT_TLBIRANGE, and the platform may still turn a smaller range into one range TLBI.
pub const TLBI_MAX_OPS: u64 = 512;

// ---- Descriptor encoding -------------------------------------------------------------------

const ENTRIES: usize = 512;
const VALID: u64 = 1;
/// bits[1:0] of a table descriptor (levels 0..=2) or a page descriptor (level 3).
const TABLE_OR_PAGE: u64 = 0b11;
const BLOCK: u64 = 0b01;
const ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;
const MEMATTR_NORMAL_WB: u64 = 0b1111 << 2;
const MEMATTR_DEVICE_NGNRE: u64 = 0b0001 << 2;
const MEMATTR_MASK: u64 = 0b1111 << 2;
const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const XN: u64 = 1 << 54;
const SW_SHIFT: u32 = 55;
const SW_MASK: u64 = 0b11 << SW_SHIFT;
const PERM_MASK: u64 = S2AP_R | S2AP_W | XN;

/// Type nibble (bits 63:60) of invalid entries written by this engine.
const TYPE_SHIFT: u32 = 60;
const TYPE_ANN: u64 = 0x2;
const TYPE_ANN_LINEAR: u64 = 0x3;
/// Free-chain link in a detached table page awaiting invalidation (never in a reachable table).
const TYPE_FREE_LINK: u64 = 0xe;
/// A broken entry whose final value (bit 0 cleared) is written after the invalidation.
const TYPE_PENDING: u64 = 0xf;
const TYPE_MASK: u64 = 0xf << TYPE_SHIFT;
const OWNER_SHIFT: u32 = 1;
const OWNER_MASK: u64 = 0b111 << OWNER_SHIFT;
const META_SHIFT: u32 = 4;
const META_BITS: u32 = 56;
const META_MAX: u64 = (1 << META_BITS) - 1;
const FREE_HAS_NEXT: u64 = 1 << 2;

/// Bit position of the low end of what an entry at `level` maps.
const fn shift(level: u8) -> u32 {
    12 + 9 * (3 - level as u32)
}

/// Index of the entry covering `ipa` in a table at `level`.
const fn index(ipa: u64, level: u8) -> usize {
    ((ipa >> shift(level)) & (ENTRIES as u64 - 1)) as usize
}

/// Bytes mapped by one entry at `level`.
const fn entry_size(level: u8) -> u64 {
    1 << shift(level)
}

/// Bytes mapped by one leaf at `level` (the level a [`Lookup`] reports; 3 is a page).
pub const fn leaf_span(level: u8) -> u64 {
    entry_size(level)
}

/// Pages mapped by one entry at `level`.
const fn entry_pages(level: u8) -> u64 {
    entry_size(level) / PAGE_SIZE
}

const fn is_valid(d: u64) -> bool {
    d & VALID != 0
}

/// A table descriptor: valid with bits[1:0] = 0b11 at levels 0..=2.
const fn is_table(d: u64, level: u8) -> bool {
    level < 3 && d & 0b11 == TABLE_OR_PAGE
}

const fn is_pending(d: u64) -> bool {
    !is_valid(d) && d >> TYPE_SHIFT == TYPE_PENDING
}

/// The invalid placeholder for the valid value `d` during break-before-make.
const fn pending(d: u64) -> u64 {
    (d & !VALID & !TYPE_MASK) | TYPE_PENDING << TYPE_SHIFT
}

/// The value an entry will have once the operation completes.
const fn logical(d: u64) -> u64 {
    if is_pending(d) {
        (d & !TYPE_MASK) | VALID
    } else {
        d
    }
}

fn leaf_bits(leaf: &Leaf) -> u64 {
    let mut d = SH_INNER | AF | (u64::from(leaf.sw & 0b11) << SW_SHIFT);
    d |= match leaf.mem {
        MemType::Normal => MEMATTR_NORMAL_WB,
        MemType::Device => MEMATTR_DEVICE_NGNRE,
    };
    d | perm_bits(leaf.perms)
}

fn perm_bits(p: Perms) -> u64 {
    let mut d = 0;
    if p.read {
        d |= S2AP_R;
    }
    if p.write {
        d |= S2AP_W;
    }
    if !p.exec {
        d |= XN;
    }
    d
}

fn decode_leaf(d: u64) -> Leaf {
    Leaf {
        perms: Perms {
            read: d & S2AP_R != 0,
            write: d & S2AP_W != 0,
            exec: d & XN == 0,
        },
        mem: if d & MEMATTR_MASK == MEMATTR_NORMAL_WB {
            MemType::Normal
        } else {
            MemType::Device
        },
        sw: ((d & SW_MASK) >> SW_SHIFT) as u8,
    }
}

fn encode_ann(ann: Annotation, linear: bool) -> u64 {
    let ty = if linear { TYPE_ANN_LINEAR } else { TYPE_ANN };
    ty << TYPE_SHIFT
        | (ann.meta & META_MAX) << META_SHIFT
        | u64::from(ann.owner & 0b111) << OWNER_SHIFT
}

fn ann_type(d: u64) -> u64 {
    d >> TYPE_SHIFT
}

fn ann_meta(d: u64) -> u64 {
    (d >> META_SHIFT) & META_MAX
}

fn with_meta(d: u64, meta: u64) -> u64 {
    (d & !(META_MAX << META_SHIFT)) | (meta & META_MAX) << META_SHIFT
}

/// The entry for the `k`-th sub-part of `pages_per` pages each of entry `d`, as an entry at
/// `level` (used for splitting a block into its children and for the page view of an entry).
fn sub_entry(d: u64, level: u8, k: u64) -> u64 {
    if is_valid(d) {
        let oa = (d & ADDR_MASK) + k * entry_size(level);
        let ty = if level == 3 { TABLE_OR_PAGE } else { BLOCK };
        (d & !ADDR_MASK & !0b11) | oa | ty
    } else if ann_type(d) == TYPE_ANN_LINEAR {
        with_meta(d, ann_meta(d) + k * entry_pages(level))
    } else {
        d
    }
}

/// The page-level view of page `k` of leaf or invalid entry `d`.
fn page_of(d: u64, k: u64) -> u64 {
    sub_entry(d, 3, k)
}

// ---- What an operation writes ---------------------------------------------------------------

/// The per-page value an operation installs.
#[derive(Clone, Copy)]
enum Target {
    /// Map the range linearly: page at `ipa0 + x` to `pa0 + x`.
    Map { ipa0: u64, pa0: u64, attrs: u64 },
    /// A fixed invalid value (empty or constant annotation).
    Invalid { desc: u64 },
    /// A linear annotation: page at `ipa0 + k` pages gets `meta0 + k`.
    Linear { ipa0: u64, desc0: u64 },
    /// Replace the bits in `mask` of every valid leaf with `bits`; invalid entries unchanged.
    Modify { mask: u64, bits: u64 },
}

impl Target {
    /// The value of an entry at `level` covering `[ea, ea + size)` entirely inside the range,
    /// whose current (non-table) value is `old`; `None` if the target cannot be expressed by
    /// one entry at this level (the entry must become a table).
    fn entry(&self, old: u64, ea: u64, level: u8) -> Option<u64> {
        match *self {
            Target::Map { ipa0, pa0, attrs } => {
                // Wrapping: `tables_needed_for` may be asked about any output address; `map`
                // has checked that its output range fits in 48 bits.
                let pa = pa0.wrapping_add(ea - ipa0);
                if level == 3 {
                    Some(pa | attrs | TABLE_OR_PAGE)
                } else if level > 0 && pa & (entry_size(level) - 1) == 0 {
                    Some(pa | attrs | BLOCK)
                } else {
                    None
                }
            }
            Target::Invalid { desc } => Some(desc),
            Target::Linear { ipa0, desc0 } => {
                Some(with_meta(desc0, ann_meta(desc0) + (ea - ipa0) / PAGE_SIZE))
            }
            Target::Modify { mask, bits } => Some(if is_valid(old) {
                (old & !mask) | bits
            } else {
                old
            }),
        }
    }

    /// True if the target changes nothing on the page at `ipa` whose page view is `old_page`.
    fn keeps_page(&self, old_page: u64, ipa: u64) -> bool {
        self.entry(old_page, ipa, 3) == Some(old_page)
    }

    /// True if the target can rewrite a whole table entry without looking at its children.
    fn replaces_tables(&self) -> bool {
        !matches!(self, Target::Modify { .. })
    }
}

/// A table page seen through the hypervisor's mapping of physical memory.
#[derive(Clone, Copy)]
struct TablePtr(*mut u64);

impl TablePtr {
    fn new(mem: &impl PhysMemory, pa: PhysAddr) -> Self {
        TablePtr(mem.phys_to_ptr(pa).cast::<u64>())
    }

    fn read(self, i: usize) -> u64 {
        debug_assert!(i < ENTRIES);
        // SAFETY: `self.0` points at a table page owned by this Stage2 (allocated by the engine
        // and reachable only through it), `phys_to_ptr` makes the whole page accessible, and
        // i < 512 keeps the access inside the page; table pages are 4 KiB aligned so the u64 is
        // aligned. Volatile because other walkers (CPUs, the SMMU) read the same memory.
        unsafe { self.0.add(i).read_volatile() }
    }

    fn write(self, i: usize, v: u64) {
        debug_assert!(i < ENTRIES);
        // SAFETY: as in `read`; the engine is the only writer of its tables (the caller holds the
        // component's lock, which `&mut Stage2` stands for).
        unsafe { self.0.add(i).write_volatile(v) }
    }

    /// The whole table as a slice, for scans that must be fast (coalescing checks).
    fn entries(&self) -> &[u64; ENTRIES] {
        // SAFETY: the page is 4 KiB, aligned and accessible (see `read`). Nothing writes it while
        // the borrow lives: the engine is its only writer and does not write during a scan, and
        // hardware walkers never write descriptors (VTCR_EL2.HA/HD stay clear: no hardware
        // access-flag or dirty-state updates), so plain reads are sound.
        unsafe { &*self.0.cast::<[u64; ENTRIES]>() }
    }

    /// Fill a table no walker can reach yet with `first`, `first + step`, ... (plain stores,
    /// vectorisable; made visible by the barrier that precedes linking the table).
    fn fill(self, first: u64, step: u64) {
        // SAFETY: as in `entries`; the table is not reachable by any walker and the engine holds
        // the only pointer to it.
        let t = unsafe { &mut *self.0.cast::<[u64; ENTRIES]>() };
        // An induction variable and plain stores: vectorises.
        let mut v = first;
        for e in t.iter_mut() {
            *e = v;
            v = v.wrapping_add(step);
        }
    }
}

/// Bookkeeping of one operation: what must be invalidated, what waits for the second pass, which
/// table pages wait to be freed.
struct Pass<'a, P, A> {
    plat: &'a mut P,
    alloc: &'a mut A,
    splits: &'a mut SplitCache,
    inv: Option<(u64, u64, Option<u8>)>,
    pending: Option<(u64, u64)>,
    free_head: Option<PhysAddr>,
    publish: bool,
    /// Change of the table page count.
    tables_added: usize,
    tables_freed: usize,
    alloc_failed: bool,
    /// The one pending entry of a fast-path split, written after the invalidation without
    /// walking down to it again.
    pending_entry: Option<(TablePtr, usize)>,
}

impl<'a, P: Platform, A: TableAllocator> Pass<'a, P, A> {
    fn new(plat: &'a mut P, alloc: &'a mut A, splits: &'a mut SplitCache) -> Self {
        Pass {
            plat,
            alloc,
            splits,
            inv: None,
            pending: None,
            free_head: None,
            publish: false,
            tables_added: 0,
            tables_freed: 0,
            alloc_failed: false,
            pending_entry: None,
        }
    }

    /// The end of every operation: one invalidation for everything revoked (or a barrier if
    /// only new translations were written), then the final values of the pending entries, then
    /// the detached table pages go back to the allocator. `tables` is the stage-2's count of
    /// reachable table pages.
    fn finish(
        mut self,
        vmid: Vmid,
        root: PhysAddr,
        start_level: u8,
        tables: &mut usize,
    ) -> Result<()> {
        if let Some((is, ie, level)) = self.inv {
            let pages = (ie - is) / PAGE_SIZE;
            let stride = level.map_or(1, entry_pages);
            if pages / stride > TLBI_MAX_OPS {
                self.plat.invalidate_vmid(vmid);
            } else {
                self.plat.invalidate_ipa_range(vmid, Ipa(is), pages, level);
            }
        } else if self.publish {
            self.plat.publish_table_writes();
        }
        // Tables parked by this operation are unreachable now and invalidated: reusable.
        self.splits.spares.iter_mut().for_each(|sp| sp.ready = true);
        if let Some((t, i)) = self.pending_entry {
            t.write(i, logical(t.read(i)));
            if self.pending.is_none() {
                self.plat.publish_table_writes();
            }
        }
        if let Some((ps, pe)) = self.pending {
            self.make(root, start_level, 0, ps, pe);
            self.plat.publish_table_writes();
        }
        let mut next = self.free_head;
        while let Some(pa) = next {
            let link = TablePtr::new(&*self.plat, pa).read(0);
            next = (link & FREE_HAS_NEXT != 0).then_some(PhysAddr(link & ADDR_MASK));
            self.alloc.free_table(pa);
            self.tables_freed += 1;
        }
        *tables = *tables + self.tables_added - self.tables_freed;
        if self.alloc_failed {
            // Only reachable if the allocator's `available()` over-reported.
            return Err(Error::NoMem);
        }
        Ok(())
    }
    fn invalidate(&mut self, start: u64, size: u64, level: Option<u8>) {
        let end = start + size;
        self.inv = Some(match self.inv {
            None => (start, end, level),
            Some((s, e, l)) => (s.min(start), e.max(end), if l == level { l } else { None }),
        });
    }

    fn mark_pending(&mut self, start: u64, size: u64) {
        let end = start + size;
        self.pending = Some(match self.pending {
            None => (start, end),
            Some((s, e)) => (s.min(start), e.max(end)),
        });
    }

    /// Detach the table at `pa` (and its subtree) into the free chain, to be freed after the
    /// invalidation. The link word reuses entry 0 as an invalid entry, so a walker that still
    /// uses a cached pointer to this table faults (and retries) instead of translating.
    fn detach(&mut self, pa: PhysAddr, level: u8) {
        self.splits.untrack(pa);
        let t = TablePtr::new(&*self.plat, pa);
        if level < 3 {
            for i in 0..ENTRIES {
                let d = t.read(i);
                if is_table(d, level) || (is_pending(d) && is_table(logical(d), level)) {
                    self.detach(PhysAddr(logical(d) & ADDR_MASK), level + 1);
                }
            }
        }
        let link = match self.free_head {
            Some(next) => TYPE_FREE_LINK << TYPE_SHIFT | next.raw() | FREE_HAS_NEXT,
            None => TYPE_FREE_LINK << TYPE_SHIFT,
        };
        t.write(0, link);
        self.free_head = Some(pa);
    }

    /// Free a table page that was never reachable by a walker, with its subtree.
    fn free_unreachable(&mut self, pa: PhysAddr, level: u8) {
        self.splits.untrack(pa);
        let t = TablePtr::new(&*self.plat, pa);
        if level < 3 {
            for i in 0..ENTRIES {
                let d = logical(t.read(i));
                if is_table(d, level) {
                    self.free_unreachable(PhysAddr(d & ADDR_MASK), level + 1);
                }
            }
        }
        self.alloc.free_table(pa);
        self.tables_freed += 1;
    }

    /// Replace entry `i` (level `level`, covering from `ea`) of table `t` by `new`, following
    /// break-before-make if the table is reachable (`live`).
    #[inline]
    fn replace(&mut self, t: TablePtr, i: usize, level: u8, ea: u64, new: u64, live: bool) {
        let old = logical(t.read(i));
        if old == new {
            return;
        }
        let size = entry_size(level);
        if !live {
            if is_table(old, level) {
                self.free_unreachable(PhysAddr(old & ADDR_MASK), level + 1);
            }
            t.write(i, new);
            return;
        }
        if is_table(old, level) {
            let child = PhysAddr(old & ADDR_MASK);
            // A table with entries still pending (break-before-make of this call) is not
            // kept as a spare: the second pass (`make`) writes only reachable tables, so the
            // spare would keep invalid raw entries and a relink would fault on them.
            let has_pending = self
                .pending
                .is_some_and(|(ps, pe)| ps < ea + size && ea < pe);
            if has_pending || !self.park(child, level + 1, new) {
                self.detach(child, level + 1);
            }
            self.invalidate(ea, size, None);
            if is_valid(new) {
                t.write(i, pending(new));
                self.mark_pending(ea, size);
            } else {
                t.write(i, new);
            }
            return;
        }
        if !is_valid(old) {
            t.write(i, new);
            self.publish |= is_valid(new);
            return;
        }
        if !is_valid(new) {
            t.write(i, new);
            self.invalidate(ea, size, Some(level));
            return;
        }
        if (old ^ new) & !(PERM_MASK | SW_MASK) == 0 {
            // Same output, type and size: permissions and software bits change in place.
            t.write(i, new);
            if (old ^ new) & PERM_MASK != 0 {
                self.invalidate(ea, size, Some(level));
            }
            return;
        }
        t.write(i, pending(new));
        self.invalidate(ea, size, Some(level));
        self.mark_pending(ea, size);
    }

    /// Apply `target` to `[s, e)` within the table at `table_pa` (level `level`, covering from
    /// `base`). `live` says whether walkers can reach this table. Keeps the deviation count of a
    /// tracked table exact: a page table counts the change of each entry it rewrites as it goes;
    /// a table of a higher level compares the entries of the range with the table's origin
    /// before and after (work proportional to what the operation touches anyway).
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        table_pa: PhysAddr,
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        target: &Target,
        live: bool,
    ) {
        let first = ((s - base) >> shift(level)) as usize;
        let last = ((e - 1 - base) >> shift(level)) as usize;
        let t = TablePtr::new(&*self.plat, table_pa);
        if level == 3 {
            let slot = self.splits.find(table_pa);
            let expansion = slot.map(|k| self.splits.tracked[k].exp0);
            let delta = self.update_pages(t, base, first, last, target, live, expansion);
            if let Some(k) = slot {
                let tr = &mut self.splits.tracked[k];
                tr.deviations = tr.deviations.wrapping_add_signed(delta);
                // Debug builds check the running count against a full count.
                debug_assert_eq!(
                    tr.deviations,
                    deviations(t, 0, ENTRIES - 1, tr.exp0, step(tr.exp0, 3)),
                    "deviation count of the table at {table_pa:?} is wrong"
                );
            }
            return;
        }
        let whole = first == 0 && last == ENTRIES - 1;
        let before = self.splits.get(table_pa).map(|tr| {
            let (exp0, step) = (tr.exp0, step(tr.exp0, level));
            // Over the whole table the new count is simply the count afterwards.
            let before = if whole {
                tr.deviations
            } else {
                deviations(t, first, last, exp0, step)
            };
            (exp0, step, before)
        });
        self.update_entries(table_pa, level, base, s, e, target, live);
        if let Some((exp0, step, before)) = before {
            let after = deviations(t, first, last, exp0, step);
            self.splits.adjust(table_pa, before, after);
        }
    }

    /// The body of [`Self::update`].
    #[allow(clippy::too_many_arguments)]
    fn update_entries(
        &mut self,
        table_pa: PhysAddr,
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        target: &Target,
        live: bool,
    ) {
        let t = TablePtr::new(&*self.plat, table_pa);
        let size = entry_size(level);
        let first = ((s - base) >> shift(level)) as usize;
        let last = ((e - 1 - base) >> shift(level)) as usize;
        debug_assert!(level < 3, "page tables are updated by `update_pages`");
        for i in first..=last {
            let ea = base + i as u64 * size;
            let (cs, ce) = (s.max(ea), e.min(ea + size));
            let full = cs == ea && ce == ea + size;
            let old = logical(t.read(i));
            let table = is_table(old, level);
            if let (Target::Modify { mask, bits }, true, false) = (*target, full, table) {
                // A whole block or invalid entry under a state/permission change: in place.
                let new = if is_valid(old) {
                    (old & !mask) | bits
                } else {
                    old
                };
                if new != old {
                    t.write(i, new);
                    if live && (old ^ new) & PERM_MASK != 0 {
                        self.invalidate(ea, size, Some(level));
                    }
                }
                continue;
            }
            if full && (!table || target.replaces_tables()) {
                let new = if table {
                    target.entry(0, ea, level)
                } else {
                    target.entry(old, ea, level)
                };
                if let Some(new) = new {
                    self.replace(t, i, level, ea, new, live);
                    continue;
                }
            }
            if table {
                let child = PhysAddr(old & ADDR_MASK);
                self.update(child, level + 1, ea, cs, ce, target, live);
                if let Some(merged) = self.merged(child, level + 1) {
                    self.replace(t, i, level, ea, merged, live);
                }
                continue;
            }
            // A leaf or invalid entry that the target changes only in part: split it, unless
            // the target already holds on the covered pages.
            if target.keeps_page(page_of(old, (cs - ea) / PAGE_SIZE), cs) {
                continue;
            }
            let Some(child) = self.split_table(old, level + 1) else {
                self.alloc_failed = true;
                continue;
            };
            self.update(child, level + 1, ea, cs, ce, target, false);
            if let Some(merged) = self.merged(child, level + 1) {
                self.free_unreachable(child, level + 1);
                self.replace(t, i, level, ea, merged, live);
                continue;
            }
            let desc = child.raw() | TABLE_OR_PAGE;
            if !live {
                t.write(i, desc);
            } else if is_valid(old) {
                t.write(i, pending(desc));
                self.invalidate(ea, size, Some(level));
                self.mark_pending(ea, size);
            } else {
                t.write(i, desc);
                self.publish = true;
            }
        }
    }

    /// A table of `level` entries that translates exactly what `origin` (an entry of the level
    /// above) does, tracked from now on: a ready spare already holding that expansion (no
    /// writes at all), else a page from the allocator (or, when it is empty, any ready spare)
    /// filled with the expansion. `None` when no page is left.
    fn split_table(&mut self, origin: u64, level: u8) -> Option<PhysAddr> {
        let pa = match self.splits.take_spare(Some((origin, level))) {
            Some(pa) => pa,
            None => {
                let pa = match self.alloc.alloc_table() {
                    Some(pa) => pa,
                    None => self.splits.take_spare(None)?,
                };
                fill_split(TablePtr::new(&*self.plat, pa), origin, level);
                pa
            }
        };
        self.tables_added += 1;
        self.splits.track(pa, level, origin);
        Some(pa)
    }

    /// What the table at `pa` (entries at `level`) coalesces into, if it is uniform (see
    /// [`merged_in`]).
    fn merged(&self, pa: PhysAddr, level: u8) -> Option<u64> {
        merged_in(self.splits, &*self.plat, pa, level)
    }

    /// Keep the table at `pa` (entries at `level`), which a live entry stops pointing at now
    /// that it becomes `new`, as a spare instead of freeing it, if its content is exactly the
    /// expansion of `new`: re-splitting that entry later is then one descriptor write. The
    /// spare is usable only after this operation's invalidation (walkers may still hold it).
    fn park(&mut self, pa: PhysAddr, level: u8, new: u64) -> bool {
        match self.splits.get(pa) {
            Some(tr) if tr.deviations == 0 && tr.origin == new && tr.level == level => {}
            _ => return false,
        }
        let Some((slot, evicted)) = self.splits.spare_slot() else {
            return false;
        };
        if let Some(old) = evicted {
            // Ready spares are unreachable and were invalidated by an earlier operation.
            self.alloc.free_table(old);
        }
        self.splits.untrack(pa);
        self.splits.spares[slot] = Spare {
            table: pa.raw(),
            origin: new,
            level,
            ready: false,
        };
        self.tables_freed += 1;
        true
    }

    /// The hot loop of every operation: apply `target` to entries `first..=last` of the page
    /// table `t` (covering from `base`, reachable by walkers if `live`). Entries at level 3 are
    /// never tables, so each is one descriptor write, with break-before-make only when a valid
    /// page changes its output address or attributes other than permissions and software bits
    /// (DDI 0487 "Translation table updates"); everything revoked or downgraded is invalidated
    /// once, as the hull of the changed entries. For a tracked table (`expansion` = the value
    /// of its entry 0 in the origin's expansion) returns the change of its deviation count,
    /// counted for the entries actually rewritten, so no separate scan is needed.
    #[allow(clippy::too_many_arguments)]
    fn update_pages(
        &mut self,
        t: TablePtr,
        base: u64,
        first: usize,
        last: usize,
        target: &Target,
        live: bool,
        expansion: Option<u64>,
    ) -> i16 {
        // One loop per kind of target, so that the per-entry value is computed without a
        // dispatch (a state change is the common case and needs neither `ea` nor `entry`).
        match *target {
            Target::Modify { mask, bits } if mask & PERM_MASK == 0 => {
                // Software bits only (a page-state change): written in place, never invalidated
                // (walkers ignore the bits), so the loop is a read, a compare and a write.
                let (exp0, step) = expansion.map_or((0, 0), |x| (x, step(x, 3)));
                let mut expect = exp0.wrapping_add(first as u64 * step);
                let mut delta = 0i16;
                for i in first..=last {
                    let old = t.read(i);
                    let new = (old & !mask) | bits;
                    if is_valid(old) && new != old {
                        delta += i16::from(new != expect) - i16::from(old != expect);
                        t.write(i, new);
                    }
                    expect = expect.wrapping_add(step);
                }
                delta
            }
            Target::Modify { mask, bits } => {
                let new_of = |old: u64, _ea: u64| {
                    if is_valid(old) {
                        (old & !mask) | bits
                    } else {
                        old
                    }
                };
                self.update_pages_with(t, base, first, last, live, expansion, new_of)
            }
            _ => {
                let new_of = |old: u64, ea: u64| target.entry(old, ea, 3).unwrap_or(old);
                self.update_pages_with(t, base, first, last, live, expansion, new_of)
            }
        }
    }

    /// The loop of [`Self::update_pages`], with `new_of(old, ea)` the new value of an entry.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn update_pages_with(
        &mut self,
        t: TablePtr,
        base: u64,
        first: usize,
        last: usize,
        live: bool,
        expansion: Option<u64>,
        new_of: impl Fn(u64, u64) -> u64,
    ) -> i16 {
        let (exp0, step) = expansion.map_or((0, 0), |x| (x, step(x, 3)));
        let mut delta = 0i16;
        let mut revoked: Option<(usize, usize)> = None;
        let mut pending_span: Option<(usize, usize)> = None;
        let mut expect = exp0.wrapping_add(first as u64 * step);
        for i in first..=last {
            // Each entry is visited once per operation, so none is pending yet.
            let old = t.read(i);
            let new = new_of(old, base + i as u64 * PAGE_SIZE);
            if new != old {
                // Meaningless (and unused) for an untracked table.
                delta += i16::from(new != expect) - i16::from(old != expect);
                let span = |sp: Option<(usize, usize)>| Some(sp.map_or((i, i), |(a, _)| (a, i)));
                if !live || !is_valid(old) {
                    t.write(i, new);
                    self.publish |= live && is_valid(new);
                } else if !is_valid(new) {
                    t.write(i, new);
                    revoked = span(revoked);
                } else if (old ^ new) & !(PERM_MASK | SW_MASK) == 0 {
                    // Same output, type and size: permissions and software bits in place.
                    t.write(i, new);
                    if (old ^ new) & PERM_MASK != 0 {
                        revoked = span(revoked);
                    }
                } else {
                    t.write(i, pending(new));
                    revoked = span(revoked);
                    pending_span = span(pending_span);
                }
            }
            expect = expect.wrapping_add(step);
        }
        let hull =
            |(a, b): (usize, usize)| (base + a as u64 * PAGE_SIZE, (b - a + 1) as u64 * PAGE_SIZE);
        if let Some((start, size)) = revoked.map(hull) {
            self.invalidate(start, size, Some(3));
        }
        if let Some((start, size)) = pending_span.map(hull) {
            self.mark_pending(start, size);
        }
        delta
    }

    /// Second pass: write the final value of every pending entry in `[s, e)`.
    fn make(&mut self, table_pa: PhysAddr, level: u8, base: u64, s: u64, e: u64) {
        let t = TablePtr::new(&*self.plat, table_pa);
        let first = ((s - base) >> shift(level)) as usize;
        let last = ((e - 1 - base) >> shift(level)) as usize;
        for i in first..=last {
            let d = t.read(i);
            let ea = base + i as u64 * entry_size(level);
            if is_pending(d) {
                t.write(i, logical(d));
            } else if is_table(d, level) {
                let (cs, ce) = (s.max(ea), e.min(ea + entry_size(level)));
                self.make(PhysAddr(d & ADDR_MASK), level + 1, ea, cs, ce);
            }
        }
    }
}

/// What the table at `pa` (entries at `level`) coalesces into, if it is uniform: O(1) for a
/// table `splits` tracks (its deviation count), a scan otherwise.
fn merged_in(splits: &SplitCache, mem: &impl PhysMemory, pa: PhysAddr, level: u8) -> Option<u64> {
    if let Some(tr) = splits.get(pa) {
        match usize::from(tr.deviations) {
            0 => {
                debug_assert_eq!(
                    uniform(mem, pa, level),
                    Some(tr.origin),
                    "deviation count of the table at {pa:?} is wrong"
                );
                return Some(tr.origin);
            }
            // One entry still equal to its origin's expansion pins any uniform value to the
            // origin itself, which some other entry differs from.
            n if n < ENTRIES => {
                debug_assert_eq!(uniform(mem, pa, level), None);
                return None;
            }
            _ => {}
        }
    }
    uniform(mem, pa, level)
}

/// Apply `target` to entries `first..=last` of the page table `t` (covering from `base`), which
/// no walker can reach yet: plain writes, no break-before-make, nothing to invalidate. Returns
/// the change of the table's deviation count against the expansion whose entry 0 is `exp0`.
fn update_unreachable_pages(
    t: TablePtr,
    base: u64,
    first: usize,
    last: usize,
    target: &Target,
    exp0: u64,
) -> i16 {
    let stride = step(exp0, 3);
    let mut expect = exp0.wrapping_add(first as u64 * stride);
    let mut delta = 0i16;
    // A map or a constant value gives entry `i` as the first entry's value plus `i` steps (a map
    // was checked to fit its output range in 48 bits, so the address never carries into the
    // attributes): no per-entry descriptor construction.
    let linear = match *target {
        Target::Map { .. } => Some(PAGE_SIZE),
        Target::Invalid { .. } => Some(0),
        _ => None,
    };
    if let (Some(nstride), Some(mut new)) =
        (linear, target.entry(0, base + first as u64 * PAGE_SIZE, 3))
    {
        for i in first..=last {
            let old = t.read(i);
            if new != old {
                delta += i16::from(new != expect) - i16::from(old != expect);
                t.write(i, new);
            }
            new = new.wrapping_add(nstride);
            expect = expect.wrapping_add(stride);
        }
        return delta;
    }
    for i in first..=last {
        let old = t.read(i);
        let new = match *target {
            Target::Modify { mask, bits } if is_valid(old) => (old & !mask) | bits,
            Target::Modify { .. } => old,
            _ => target
                .entry(old, base + i as u64 * PAGE_SIZE, 3)
                .unwrap_or(old),
        };
        if new != old {
            delta += i16::from(new != expect) - i16::from(old != expect);
            t.write(i, new);
        }
        expect = expect.wrapping_add(stride);
    }
    delta
}

/// How entry `i` of a table filled from `d0` (entry 0) differs from entry 0: valid entries
/// advance their output address by one entry size, linear annotations their metadata by the
/// pages of one entry, everything else is constant. Entry `i` is `d0 + i * step(d0, level)`
/// (no carries out of the field: a table spans at most 512 entries inside an aligned parent).
fn step(d0: u64, level: u8) -> u64 {
    if is_valid(d0) {
        entry_size(level)
    } else if ann_type(d0) == TYPE_ANN_LINEAR {
        entry_pages(level) << META_SHIFT
    } else {
        0
    }
}

/// If the 512 entries of the table at `pa` (entries at `level`) are what one entry of the level
/// above would give, that entry.
fn uniform(mem: &impl PhysMemory, pa: PhysAddr, level: u8) -> Option<u64> {
    let t = TablePtr::new(mem, pa);
    let d0 = logical(t.read(0));
    let parent = level - 1;
    let cand = if is_valid(d0) {
        if is_table(d0, level) || parent == 0 || (d0 & ADDR_MASK) & (entry_size(parent) - 1) != 0 {
            return None;
        }
        (d0 & !0b11) | BLOCK
    } else {
        if ann_type(d0) == TYPE_ANN_LINEAR && ann_meta(d0) + entry_pages(parent) - 1 > META_MAX {
            return None;
        }
        d0
    };
    let step = step(d0, level);
    let entries = t.entries();
    // The last entry first: a table that is not uniform usually differs there.
    if logical(entries[ENTRIES - 1]) != d0.wrapping_add((ENTRIES as u64 - 1) * step) {
        return None;
    }
    // XOR against the expected value (an induction variable) and OR the differences, with no
    // early exit inside a stretch: vectorises, so checking a uniform table costs about as much
    // as reading it. A short first stretch keeps the common non-uniform case cheap.
    let differs = |from: usize, to: usize| {
        let mut expect = d0.wrapping_add(from as u64 * step);
        let mut acc = 0;
        for &e in &entries[from..to] {
            acc |= e ^ expect;
            expect = expect.wrapping_add(step);
        }
        acc != 0
    };
    if differs(0, 64) || differs(64, ENTRIES) {
        // Pending entries (break-before-make in progress) count as their final value.
        let mut expect = d0;
        for &e in entries.iter() {
            if logical(e) != expect {
                return None;
            }
            expect = expect.wrapping_add(step);
        }
    }
    Some(cand)
}

/// Fill the new table `t` (entries at `level`) with the children of entry `d` of the level
/// above, so that the table translates exactly what `d` did.
fn fill_split(t: TablePtr, d: u64, level: u8) {
    let first = sub_entry(d, level, 0);
    t.fill(first, step(first, level));
}

/// How many of entries `first..=last` of `t` differ from the expansion `exp0 + i * step`
/// (pending entries count as their final value).
fn deviations(t: TablePtr, first: usize, last: usize, exp0: u64, step: u64) -> u16 {
    let mut expect = exp0.wrapping_add(first as u64 * step);
    let mut n = 0;
    for i in first..=last {
        n += u16::from(logical(t.read(i)) != expect);
        expect = expect.wrapping_add(step);
    }
    n
}

// ---- Split tracking --------------------------------------------------------------------------

/// How many split tables a [`Stage2`] tracks: a 2-way set-associative cache indexed by the
/// table's page number, so that finding a table's record is two compares. A table whose record
/// was displaced coalesces through a scan, as without tracking.
const TRACKED: usize = 16;
/// How many coalesced tables a [`Stage2`] keeps as spares.
const SPARES: usize = 4;
/// An empty slot (no table page is at this unaligned address).
const NO_TABLE: u64 = u64::MAX;

/// A table created by splitting the entry `origin`: how many of its entries differ from what
/// `origin` translated (entry `i` of the expansion is `exp0 + i * step(exp0, level)`). Kept
/// small: every VM's stage-2 holds [`TRACKED`] of them, and the VM table is built by value.
#[derive(Clone, Copy, Debug)]
struct Tracked {
    table: u64,
    origin: u64,
    exp0: u64,
    deviations: u16,
    level: u8,
}

/// A table page that was coalesced into `origin` and still holds its exact expansion.
#[derive(Clone, Copy, Debug)]
struct Spare {
    table: u64,
    origin: u64,
    level: u8,
    /// Invalidated since it was unlinked: safe to link again.
    ready: bool,
}

/// What the engine remembers about tables it split, so that coalescing is O(1) (a deviation
/// count instead of a 512-entry scan) and a re-split of the same block is one descriptor write
/// (a spare table instead of allocating and filling 512 entries). See
/// `docs/decisions/split-tracking.md`.
#[derive(Clone, Copy, Debug)]
struct SplitCache {
    tracked: [Tracked; TRACKED],
    spares: [Spare; SPARES],
}

impl SplitCache {
    const fn new() -> Self {
        Self {
            tracked: [Tracked {
                table: NO_TABLE,
                origin: 0,
                exp0: 0,
                deviations: 0,
                level: 0,
            }; TRACKED],
            spares: [Spare {
                table: NO_TABLE,
                origin: 0,
                level: 0,
                ready: false,
            }; SPARES],
        }
    }

    /// The two slots a table page may occupy.
    fn ways(pa: PhysAddr) -> [usize; 2] {
        let set = (pa.raw() >> 12) as usize & (TRACKED - 1) & !1;
        [set, set | 1]
    }

    /// The slot of the tracked table at `pa`.
    #[inline]
    fn find(&self, pa: PhysAddr) -> Option<usize> {
        Self::ways(pa)
            .into_iter()
            .find(|&i| self.tracked[i].table == pa.raw())
    }

    #[inline]
    fn get(&self, pa: PhysAddr) -> Option<&Tracked> {
        self.find(pa).map(|i| &self.tracked[i])
    }

    /// Replace `before` deviations of the table at `pa` by `after` (if it is still tracked).
    #[inline]
    fn adjust(&mut self, pa: PhysAddr, before: u16, after: u16) {
        if let Some(i) = self.find(pa) {
            let t = &mut self.tracked[i];
            debug_assert!(t.deviations >= before, "deviation count underflow");
            t.deviations = t.deviations - before + after;
        }
    }

    /// Entry `i` of the table at `pa` (entries at `level`) changes from `old` to `new` (logical
    /// values): keep its deviation count exact if it is tracked.
    #[inline]
    fn entry_changed(&mut self, pa: PhysAddr, i: usize, level: u8, old: u64, new: u64) {
        if let Some(k) = self.find(pa) {
            let t = &mut self.tracked[k];
            let expect = t.exp0.wrapping_add(i as u64 * step(t.exp0, level));
            t.deviations = t.deviations + u16::from(new != expect) - u16::from(old != expect);
        }
    }

    /// Start tracking the table at `pa` (entries at `level`), just filled from `origin`,
    /// displacing the record in the second way if both are taken.
    #[inline]
    fn track(&mut self, pa: PhysAddr, level: u8, origin: u64) -> usize {
        let [a, b] = Self::ways(pa);
        let slot = if self.tracked[a].table == NO_TABLE {
            a
        } else {
            b
        };
        let exp0 = sub_entry(origin, level, 0);
        self.tracked[slot] = Tracked {
            table: pa.raw(),
            origin,
            exp0,
            deviations: 0,
            level,
        };
        slot
    }

    #[inline]
    fn untrack(&mut self, pa: PhysAddr) {
        if let Some(i) = self.find(pa) {
            self.tracked[i].table = NO_TABLE;
        }
    }

    #[inline]
    fn ready_spares(&self) -> usize {
        self.spares
            .iter()
            .filter(|s| s.table != NO_TABLE && s.ready)
            .count()
    }

    /// Take a ready spare: the one holding the expansion of `(origin, level)`, or any if `None`.
    #[inline]
    fn take_spare(&mut self, want: Option<(u64, u8)>) -> Option<PhysAddr> {
        let s = self.spares.iter_mut().find(|s| {
            s.table != NO_TABLE
                && s.ready
                && want.is_none_or(|(origin, level)| s.origin == origin && s.level == level)
        })?;
        let pa = PhysAddr(s.table);
        s.table = NO_TABLE;
        Some(pa)
    }

    /// A slot for a new spare: a free one, or the slot of a ready spare that the caller must
    /// free (returned); `None` if every slot holds a spare of the current operation.
    #[inline]
    fn spare_slot(&mut self) -> Option<(usize, Option<PhysAddr>)> {
        if let Some(i) = self.spares.iter().position(|s| s.table == NO_TABLE) {
            return Some((i, None));
        }
        let i = self.spares.iter().position(|s| s.ready)?;
        let evicted = PhysAddr(self.spares[i].table);
        self.spares[i].table = NO_TABLE;
        Some((i, Some(evicted)))
    }
}

fn decode(d: u64, level: u8, k: u64) -> Lookup {
    if is_valid(d) {
        let pa = PhysAddr((d & ADDR_MASK) + k * PAGE_SIZE);
        return Lookup::Mapped {
            pa,
            leaf: decode_leaf(d),
            level,
        };
    }
    match ann_type(d) {
        TYPE_ANN | TYPE_ANN_LINEAR => {
            let linear = ann_type(d) == TYPE_ANN_LINEAR;
            let meta = if linear {
                (ann_meta(d) + k) & META_MAX
            } else {
                ann_meta(d)
            };
            let owner = ((d & OWNER_MASK) >> OWNER_SHIFT) as u8;
            Lookup::Annotated {
                ann: Annotation { owner, meta },
                level,
            }
        }
        _ => Lookup::Empty { level },
    }
}

/// A stage-2 address space: a root table, its geometry and its VMID.
#[derive(Debug)]
pub struct Stage2 {
    root: PhysAddr,
    cfg: Stage2Config,
    vmid: Vmid,
    tables: usize,
    splits: SplitCache,
}

impl Stage2 {
    /// A new, empty address space whose root page comes from `alloc`.
    ///
    /// # Errors
    /// `NoMem` if `alloc` is empty.
    pub fn new(
        cfg: Stage2Config,
        vmid: Vmid,
        plat: &mut impl Platform,
        alloc: &mut impl TableAllocator,
    ) -> Result<Self> {
        let cfg = Stage2Config::for_ipa_bits(cfg.ipa_bits)?;
        let root = alloc.alloc_table().ok_or(Error::NoMem)?;
        let t = TablePtr::new(&*plat, root);
        for i in 0..ENTRIES {
            t.write(i, 0);
        }
        plat.publish_table_writes();
        Ok(Self {
            root,
            cfg,
            vmid,
            tables: 1,
            splits: SplitCache::new(),
        })
    }

    /// Physical address of the root table.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The VMID the translations are tagged with.
    pub fn vmid(&self) -> Vmid {
        self.vmid
    }

    /// VTTBR_EL2: root address and VMID (CnP clear).
    pub fn vttbr(&self) -> u64 {
        self.root.raw() | u64::from(self.vmid.0) << 48
    }

    /// The geometry.
    pub fn config(&self) -> Stage2Config {
        self.cfg
    }

    /// Table pages currently in use (reachable from the root), the root included.
    pub fn table_pages(&self) -> usize {
        self.tables
    }

    /// Spare table pages: tables that were coalesced away but kept, unreachable and already
    /// invalidated, for a re-split of the same entry (see the module documentation). They
    /// came from the allocator passed to the operations and count as capacity: every operation
    /// uses them before asking its allocator, so callers checking capacity add them to what
    /// their allocator has available.
    pub fn spare_tables(&self) -> usize {
        self.splits.ready_spares()
    }

    /// Give every spare table page back to `alloc` (the allocator they came from).
    pub fn release_spares(&mut self, alloc: &mut impl TableAllocator) {
        while let Some(pa) = self.splits.take_spare(None) {
            alloc.free_table(pa);
        }
    }

    /// An upper bound of the table pages any operation over `range` ([`map`](Self::map) with
    /// any output address, [`annotate`](Self::annotate), [`unmap`](Self::unmap), `set_*`) may
    /// allocate: every entry of levels start..=2 that the range touches gets at most one new
    /// table. Constant time. A caller that has this many pages available never sees `NoMem`.
    pub fn tables_needed(&self, _plat: &impl PhysMemory, range: PageRange<Ipa>) -> usize {
        let (s, e) = (range.start().raw(), range.end().raw());
        (self.cfg.start_level..3)
            .map(|l| (((e - 1) >> shift(l)) - (s >> shift(l)) + 1) as usize)
            .sum()
    }

    /// An upper bound of the table pages an *in-place* operation over `range` may allocate:
    /// [`annotate`](Self::annotate), [`annotate_linear`](Self::annotate_linear),
    /// [`unmap`](Self::unmap), `set_*`, or [`map`](Self::map) with an output address congruent
    /// to the IPA modulo 1 GiB (e.g. an identity map). Such an operation splits only entries
    /// the range covers in part, which at each level are at most its first and its last entry
    /// (level 0 has no blocks: every entry touched there counts). Constant time, and usually
    /// far below [`tables_needed`](Self::tables_needed), which counts every entry touched.
    #[inline]
    pub fn tables_needed_in_place(&self, range: PageRange<Ipa>) -> usize {
        let (s, e) = (range.start().raw(), range.end().raw());
        let span = entry_size(2);
        if (e - 1) & !(span - 1) == s & !(span - 1) && e - s < span {
            // Part of one level-2 entry (a conversion's usual shape): partial at every level.
            return usize::from(3 - self.cfg.start_level);
        }
        (self.cfg.start_level..3)
            .map(|l| {
                let (first, last) = (s >> shift(l), (e - 1) >> shift(l));
                if l == 0 {
                    return (last - first + 1) as usize;
                }
                let size = entry_size(l);
                let first_partial = s & (size - 1) != 0 || e - (first << shift(l)) < size;
                let last_partial = e & (size - 1) != 0 || s > last << shift(l);
                usize::from(first_partial) + usize::from(last != first && last_partial)
            })
            .sum()
    }

    /// The exact number of table pages `map(range, pa, ..)` (`pa = Some`) or any other
    /// operation over `range` would allocate in the worst case given the tables as they are now
    /// (a walk; [`tables_needed`](Self::tables_needed) is the constant-time bound). A range
    /// beyond the IPA limit needs nothing: the operation would be refused with `Range`.
    pub fn tables_needed_for(
        &self,
        plat: &impl PhysMemory,
        range: PageRange<Ipa>,
        pa: Option<PhysAddr>,
    ) -> usize {
        if range.end().raw() > self.cfg.ipa_limit() {
            return 0;
        }
        let target = match pa {
            Some(pa) => Target::Map {
                ipa0: range.start().raw(),
                pa0: pa.raw(),
                attrs: 0,
            },
            None => Target::Invalid { desc: pending(0) },
        };
        self.count(
            plat,
            self.root,
            self.cfg.start_level,
            0,
            range.start().raw(),
            range.end().raw(),
            &target,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn count(
        &self,
        mem: &impl PhysMemory,
        table: PhysAddr,
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        t: &Target,
    ) -> usize {
        let tp = TablePtr::new(mem, table);
        let size = entry_size(level);
        let first = ((s - base) >> shift(level)) as usize;
        let last = ((e - 1 - base) >> shift(level)) as usize;
        let mut n = 0;
        for i in first..=last {
            let ea = base + i as u64 * size;
            let (cs, ce) = (s.max(ea), e.min(ea + size));
            let d = logical(tp.read(i));
            if is_table(d, level) {
                n += self.count(mem, PhysAddr(d & ADDR_MASK), level + 1, ea, cs, ce, t);
            } else {
                n += count_split(d, level, ea, cs, ce, t);
            }
        }
        n
    }

    /// Map `range` linearly to the pages from `pa` with attributes `leaf`, using 1 GiB and 2 MiB
    /// blocks wherever the IPA, the output address and the range allow.
    ///
    /// # Errors
    /// `Range` if the range reaches beyond [`Stage2Config::ipa_limit`] or the output range
    /// beyond 48 bits; `Align` if `pa` is not page aligned; `Invalid` if `leaf.sw > 3`; `NoMem`
    /// if the allocator cannot supply the table pages (nothing changed).
    pub fn map(
        &mut self,
        plat: &mut impl Platform,
        alloc: &mut impl TableAllocator,
        range: PageRange<Ipa>,
        pa: PhysAddr,
        leaf: Leaf,
    ) -> Result<()> {
        if !pa.is_page_aligned() {
            return Err(Error::Align);
        }
        if leaf.sw > 3 {
            return Err(Error::Invalid);
        }
        match pa.checked_add(range.bytes()) {
            Some(end) if end.raw() <= 1 << 48 => {}
            _ => return Err(Error::Range),
        }
        let target = Target::Map {
            ipa0: range.start().raw(),
            pa0: pa.raw(),
            attrs: leaf_bits(&leaf),
        };
        self.apply(plat, alloc, range, &target)
    }

    /// Make every page of `range` invalid and annotated with `ann` (the same value on every page).
    ///
    /// # Errors
    /// `Range` beyond the IPA limit; `Invalid` if `ann.owner > 7` or `ann.meta` needs more than
    /// 56 bits; `NoMem` as for [`map`](Self::map).
    pub fn annotate(
        &mut self,
        plat: &mut impl Platform,
        alloc: &mut impl TableAllocator,
        range: PageRange<Ipa>,
        ann: Annotation,
    ) -> Result<()> {
        if ann.owner > 7 || ann.meta > META_MAX {
            return Err(Error::Invalid);
        }
        self.apply(
            plat,
            alloc,
            range,
            &Target::Invalid {
                desc: encode_ann(ann, false),
            },
        )
    }

    /// Make every page of `range` invalid and annotated; page `k` of the range gets metadata
    /// `ann.meta + k` (see the module documentation).
    ///
    /// # Errors
    /// As [`annotate`](Self::annotate); also `Invalid` if `ann.meta + pages - 1` needs more than
    /// 56 bits.
    pub fn annotate_linear(
        &mut self,
        plat: &mut impl Platform,
        alloc: &mut impl TableAllocator,
        range: PageRange<Ipa>,
        ann: Annotation,
    ) -> Result<()> {
        match ann.meta.checked_add(range.pages() - 1) {
            Some(last) if last <= META_MAX && ann.owner <= 7 => {}
            _ => return Err(Error::Invalid),
        }
        let target = Target::Linear {
            ipa0: range.start().raw(),
            desc0: encode_ann(ann, true),
        };
        self.apply(plat, alloc, range, &target)
    }

    /// Make every page of `range` empty (invalid, not annotated).
    ///
    /// # Errors
    /// `Range` beyond the IPA limit; `NoMem` as for [`map`](Self::map) (unmapping part of a
    /// block or annotated block needs a table).
    pub fn unmap(
        &mut self,
        plat: &mut impl Platform,
        alloc: &mut impl TableAllocator,
        range: PageRange<Ipa>,
    ) -> Result<()> {
        self.apply(plat, alloc, range, &Target::Invalid { desc: 0 })
    }

    /// Set the software bits (page state) of every mapped page of `range` to `sw`, keeping the
    /// output address, type and permissions; pages that are not mapped are left alone. Needs no
    /// TLB invalidation (walkers ignore the bits).
    ///
    /// # Errors
    /// `Invalid` if `sw > 3`; `Range`, `NoMem` as for [`map`](Self::map).
    pub fn set_sw(
        &mut self,
        plat: &mut impl Platform,
        alloc: &mut impl TableAllocator,
        range: PageRange<Ipa>,
        sw: u8,
    ) -> Result<()> {
        if sw > 3 {
            return Err(Error::Invalid);
        }
        self.apply(
            plat,
            alloc,
            range,
            &Target::Modify {
                mask: SW_MASK,
                bits: u64::from(sw) << SW_SHIFT,
            },
        )
    }

    /// Set the permissions of every mapped page of `range`, keeping everything else; pages that
    /// are not mapped are left alone. Invalidated (one range) if anything changed.
    ///
    /// # Errors
    /// `Range`, `NoMem` as for [`map`](Self::map).
    pub fn set_perms(
        &mut self,
        plat: &mut impl Platform,
        alloc: &mut impl TableAllocator,
        range: PageRange<Ipa>,
        perms: Perms,
    ) -> Result<()> {
        self.apply(
            plat,
            alloc,
            range,
            &Target::Modify {
                mask: PERM_MASK,
                bits: perm_bits(perms),
            },
        )
    }

    fn apply<P: Platform, A: TableAllocator>(
        &mut self,
        plat: &mut P,
        alloc: &mut A,
        range: PageRange<Ipa>,
        target: &Target,
    ) -> Result<()> {
        let (s, e) = (range.start().raw(), range.end().raw());
        if e > self.cfg.ipa_limit() {
            return Err(Error::Range);
        }
        if let Some(res) = self.apply_whole_blocks(plat, alloc, s, e, target) {
            return res;
        }
        if let Some(res) = self.apply_in_leaf_span(plat, alloc, s, e, target) {
            return res;
        }
        // Capacity first, so that a refused operation changed nothing.
        let avail = alloc.available() + self.splits.ready_spares();
        let in_place = match *target {
            Target::Map { ipa0, pa0, .. } => pa0.wrapping_sub(ipa0) & (entry_size(1) - 1) == 0,
            _ => true,
        };
        if (!in_place || avail < self.tables_needed_in_place(range))
            && avail < self.tables_needed(&*plat, range)
            && avail < self.count(&*plat, self.root, self.cfg.start_level, 0, s, e, target)
        {
            return Err(Error::NoMem);
        }
        let (root, start_level, vmid) = (self.root, self.cfg.start_level, self.vmid);
        let mut pass = Pass::new(plat, alloc, &mut self.splits);
        pass.update(root, start_level, 0, s, e, target, true);
        pass.finish(vmid, root, start_level, &mut self.tables)
    }

    /// The fast path of [`Self::apply`] for a state or permission change (`set_sw`,
    /// `set_perms`) of whole level-2 entries that are all blocks or invalid, inside one level-1
    /// entry's span (a 2 MiB-aligned conversion of a block-mapped range). Such a change is one
    /// in-place descriptor write per 2 MiB (walkers ignore the software bits; a permission
    /// change is invalidated once, as the hull, at level 2) and can never need a table page, so
    /// it walks down once to the level-2 table and runs one loop over the entries, counting the
    /// deviation change of a tracked table per rewritten entry, with none of the generic
    /// walk's per-level bookkeeping or capacity check. Eager coalescing is kept: if the table
    /// becomes uniform it is coalesced into its level-1 entry exactly as the generic walk
    /// does. `None` (nothing written) for any other shape, or if an entry of the range is a
    /// table.
    fn apply_whole_blocks<P: Platform, A: TableAllocator>(
        &mut self,
        plat: &mut P,
        alloc: &mut A,
        s: u64,
        e: u64,
        target: &Target,
    ) -> Option<Result<()>> {
        const SPAN: u64 = entry_size(2);
        let Target::Modify { mask, bits } = *target else {
            return None;
        };
        if (s | e) & (SPAN - 1) != 0 || (e - 1) >> shift(1) != s >> shift(1) {
            return None;
        }
        let mut table = self.root;
        let mut parent = None;
        for level in self.cfg.start_level..2 {
            let i = index(s, level);
            let d = TablePtr::new(&*plat, table).read(i);
            if !is_table(d, level) {
                return None;
            }
            parent = Some((table, i));
            table = PhysAddr(d & ADDR_MASK);
        }
        // Start level 2 does not exist (`Stage2Config`), so there is always a level-1 parent.
        let (parent_pa, j) = parent?;
        let t = TablePtr::new(&*plat, table);
        let (first, last) = (index(s, 2), index(e - 1, 2));
        // A table below the range needs the generic walk (checked before anything is written).
        if (first..=last).any(|i| is_table(t.read(i), 2)) {
            return None;
        }
        let slot = self.splits.find(table);
        let (exp0, stride) = slot.map_or((0, 0), |k| {
            let x = self.splits.tracked[k].exp0;
            (x, step(x, 2))
        });
        let mut expect = exp0.wrapping_add(first as u64 * stride);
        let mut delta = 0i16;
        let mut revoked: Option<(usize, usize)> = None;
        for i in first..=last {
            let old = t.read(i);
            let new = (old & !mask) | bits;
            if is_valid(old) && new != old {
                // Meaningless (and unused) for an untracked table.
                delta += i16::from(new != expect) - i16::from(old != expect);
                // Same output, type and size: no break-before-make (DDI 0487 "Translation
                // table updates"); a permission change is invalidated below.
                t.write(i, new);
                if (old ^ new) & PERM_MASK != 0 {
                    revoked = Some(revoked.map_or((i, i), |(a, _)| (a, i)));
                }
            }
            expect = expect.wrapping_add(stride);
        }
        if let Some(k) = slot {
            let tr = &mut self.splits.tracked[k];
            tr.deviations = tr.deviations.wrapping_add_signed(delta);
            debug_assert_eq!(
                tr.deviations,
                deviations(t, 0, ENTRIES - 1, tr.exp0, stride),
                "deviation count of the table at {table:?} is wrong"
            );
        }
        // As `merged_in`, reusing the slot found above.
        let merged = match slot.map(|k| &self.splits.tracked[k]) {
            Some(tr) if tr.deviations == 0 => Some(tr.origin),
            Some(tr) if usize::from(tr.deviations) < ENTRIES => None,
            _ => uniform(&*plat, table, 2),
        };
        debug_assert_eq!(merged, merged_in(&self.splits, &*plat, table, 2));
        if revoked.is_none() && merged.is_none() {
            // Software bits only, nothing coalesces: nothing to invalidate, publish or free.
            return Some(Ok(()));
        }
        let (root, start_level, vmid) = (self.root, self.cfg.start_level, self.vmid);
        let mut pass = Pass::new(plat, alloc, &mut self.splits);
        if let Some((a, b)) = revoked {
            let base = s & !(entry_size(1) - 1);
            pass.invalidate(base + a as u64 * SPAN, (b - a + 1) as u64 * SPAN, Some(2));
        }
        if let Some(merged) = merged {
            // As `update` over the level-1 table: its deviation count before and after.
            let pt = TablePtr::new(&*pass.plat, parent_pa);
            let before = pass
                .splits
                .get(parent_pa)
                .map(|tr| (tr.exp0, step(tr.exp0, 1)))
                .map(|(x, st)| (x, st, deviations(pt, j, j, x, st)));
            pass.replace(pt, j, 1, s & !(entry_size(1) - 1), merged, true);
            if let Some((x, st, before)) = before {
                let after = deviations(pt, j, j, x, st);
                pass.splits.adjust(parent_pa, before, after);
            }
        }
        Some(pass.finish(vmid, root, start_level, &mut self.tables))
    }

    /// The fast path of [`Self::apply`]: a change of part of what one level-2 entry covers
    /// (one page, or a run inside one 2 MiB span), the shape of almost every guest conversion.
    /// It walks down once to that entry through tables, and then either updates the entries of
    /// the level-3 table below it (coalescing it into the entry when it becomes uniform) or
    /// splits the entry into a level-3 table (a spare when one holds its expansion), changes
    /// the pages in the new table while no walker can reach it, and links it. No range walk
    /// over the upper levels, no capacity walk: a level-3 table has no tables below it, so the
    /// only page the operation can need is the one for the split, checked before anything is
    /// written. `None` when the range has another shape (the generic walk handles it); the
    /// tables afterwards are exactly those of the generic walk, which the property tests check.
    fn apply_in_leaf_span<P: Platform, A: TableAllocator>(
        &mut self,
        plat: &mut P,
        alloc: &mut A,
        s: u64,
        e: u64,
        target: &Target,
    ) -> Option<Result<()>> {
        const SPAN: u64 = entry_size(2);
        let ea = s & !(SPAN - 1);
        // The whole entry is one descriptor write on the generic path; so is a range beyond it.
        if (e - 1) & !(SPAN - 1) != ea || (s == ea && e == ea + SPAN) {
            return None;
        }
        let mut table = self.root;
        for level in self.cfg.start_level..2 {
            let d = TablePtr::new(&*plat, table).read(index(s, level));
            if !is_table(d, level) {
                return None;
            }
            table = PhysAddr(d & ADDR_MASK);
        }
        let parent = TablePtr::new(&*plat, table);
        let i = index(s, 2);
        let d = parent.read(i);
        if !is_table(d, 2) {
            // The entry is uniform: if the target keeps one page it keeps them all.
            if target.keeps_page(page_of(d, (s - ea) / PAGE_SIZE), s) {
                return Some(Ok(()));
            }
            // The split needs one page: a free one, else a ready spare (counted only then).
            if alloc.available() == 0 && self.splits.ready_spares() == 0 {
                return Some(Err(Error::NoMem));
            }
            return Some(self.split_leaf_span(plat, alloc, table, i, d, ea, s, e, target));
        }
        if !matches!(target, Target::Map { .. }) {
            self.update_in_table(plat, alloc, table, i, d, ea, s, e, target);
            return Some(Ok(()));
        }
        let (root, start_level, vmid) = (self.root, self.cfg.start_level, self.vmid);
        let mut pass = Pass::new(plat, alloc, &mut self.splits);
        let child = PhysAddr(d & ADDR_MASK);
        pass.update(child, 3, ea, s, e, target, true);
        if let Some(merged) = pass.merged(child, 3) {
            let pending_before = pass.pending;
            pass.replace(parent, i, 2, ea, merged, true);
            // The level-2 table's own deviation count (it may be tracked too).
            pass.splits.entry_changed(table, i, 2, d, merged);
            if pending_before.is_none() && pass.pending.is_some() {
                // The only pending entry is the coalesced one: written directly later.
                pass.pending = None;
                pass.pending_entry = Some((parent, i));
            }
        }
        Some(pass.finish(vmid, root, start_level, &mut self.tables))
    }

    /// [`Self::apply_in_leaf_span`] on a level-3 table (the level-2 entry `d`, entry `i` of the
    /// table `table_pa`, covering from `ea`) for every target but `Map`: none of them needs
    /// break-before-make on a page (a valid page becomes invalid, or changes only permissions
    /// or software bits in place; an invalid page stays invalid), so the pages of `[s, e)` are
    /// rewritten by one loop that counts the deviations of a tracked table per entry and
    /// notes the hull of revoked translations. If the table becomes uniform it is coalesced
    /// into its level-2 entry with break-before-make and one invalidation of the 2 MiB (which
    /// covers the hull), and kept as a spare (or freed after the invalidation); otherwise the
    /// hull, if any, is invalidated. None of the generic `Pass` bookkeeping: the one pending
    /// entry and the one invalidation are known in advance. Cannot fail.
    #[allow(clippy::too_many_arguments)]
    fn update_in_table(
        &mut self,
        plat: &mut impl Platform,
        alloc: &mut impl TableAllocator,
        table_pa: PhysAddr,
        i: usize,
        d: u64,
        ea: u64,
        s: u64,
        e: u64,
        target: &Target,
    ) {
        let child = PhysAddr(d & ADDR_MASK);
        let t = TablePtr::new(&*plat, child);
        let first = ((s - ea) / PAGE_SIZE) as usize;
        let last = ((e - 1 - ea) / PAGE_SIZE) as usize;
        let slot = self.splits.find(child);
        let (exp0, stride) = slot.map_or((0, 0), |k| {
            let x = self.splits.tracked[k].exp0;
            (x, step(x, 3))
        });
        let mut expect = exp0.wrapping_add(first as u64 * stride);
        let mut delta = 0i16;
        let mut revoked: Option<(usize, usize)> = None;
        for k in first..=last {
            let old = t.read(k);
            let new = match *target {
                Target::Modify { mask, bits } if is_valid(old) => (old & !mask) | bits,
                Target::Modify { .. } => old,
                _ => target
                    .entry(old, ea + k as u64 * PAGE_SIZE, 3)
                    .unwrap_or(old),
            };
            if new != old {
                // Meaningless (and unused) for an untracked table.
                delta += i16::from(new != expect) - i16::from(old != expect);
                t.write(k, new);
                debug_assert!(
                    !is_valid(new) || (is_valid(old) && (old ^ new) & !(PERM_MASK | SW_MASK) == 0),
                    "a page change that would need break-before-make"
                );
                if is_valid(old) && (!is_valid(new) || (old ^ new) & PERM_MASK != 0) {
                    revoked = Some(revoked.map_or((k, k), |(a, _)| (a, k)));
                }
            }
            expect = expect.wrapping_add(stride);
        }
        let merged = match slot {
            Some(k) => {
                let tr = &mut self.splits.tracked[k];
                tr.deviations = tr.deviations.wrapping_add_signed(delta);
                debug_assert_eq!(
                    tr.deviations,
                    deviations(t, 0, ENTRIES - 1, tr.exp0, stride),
                    "deviation count of the table at {child:?} is wrong"
                );
                match usize::from(tr.deviations) {
                    0 => Some(tr.origin),
                    n if n < ENTRIES => None,
                    _ => uniform(&*plat, child, 3),
                }
            }
            None => uniform(&*plat, child, 3),
        };
        debug_assert_eq!(merged, merged_in(&self.splits, &*plat, child, 3));
        let Some(merged) = merged else {
            if let Some((a, b)) = revoked {
                let pages = (b - a + 1) as u64;
                plat.invalidate_ipa_range(
                    self.vmid,
                    Ipa(ea + a as u64 * PAGE_SIZE),
                    pages,
                    Some(3),
                );
            }
            return;
        };
        // Coalesce. The table still holds exactly the expansion of `merged` if it is tracked
        // with no deviation: keep it as a spare (usable after the invalidation below).
        let parked = match (slot, self.splits.spare_slot()) {
            (Some(k), Some((free, evicted))) if self.splits.tracked[k].deviations == 0 => {
                if let Some(old) = evicted {
                    // Ready spares are unreachable and were invalidated by an earlier operation.
                    alloc.free_table(old);
                }
                self.splits.spares[free] = Spare {
                    table: child.raw(),
                    origin: merged,
                    level: 3,
                    ready: false,
                };
                Some(free)
            }
            _ => None,
        };
        self.splits.untrack(child);
        self.tables -= 1;
        self.splits.entry_changed(table_pa, i, 2, d, merged);
        let parent = TablePtr::new(&*plat, table_pa);
        // Break-before-make (table -> block): the walk caches that hold the table are
        // invalidated before the block becomes visible.
        parent.write(
            i,
            if is_valid(merged) {
                pending(merged)
            } else {
                merged
            },
        );
        if is_valid(merged) {
            // A block replaces pages that may all be cached: the whole span goes.
            plat.invalidate_ipa_range(self.vmid, Ipa(ea), entry_pages(2), None);
            parent.write(i, merged);
            plat.publish_table_writes();
        } else {
            // Every entry of the table is invalid now, so the only pages a TLB can hold are the
            // ones this call revoked; an invalidation by IPA without a level hint also drops the
            // walk-cache copies of the table entry for any IPA it covers (IPAS2E1IS and the
            // SMMU's TLBI_S2_IPA with Leaf = 0 act on every level), so the revoked hull, or one
            // page of the span if nothing was revoked, covers the table too.
            let (a, pages) = revoked.map_or((0, 1), |(a, b)| (a, (b - a + 1) as u64));
            plat.invalidate_ipa_range(self.vmid, Ipa(ea + a as u64 * PAGE_SIZE), pages, None);
        }
        match parked {
            Some(k) => self.splits.spares[k].ready = true,
            None => alloc.free_table(child),
        }
    }

    /// The split case of [`Self::apply_in_leaf_span`]: the level-2 entry `d` (entry `i` of the
    /// table `table_pa`, covering from `ea`) is a block or invalid and the target changes part
    /// of it. The level-3 table is a ready spare holding `d`'s expansion (no writes) or a new
    /// page filled with it; the pages of `[s, e)` change while no walker can reach the table,
    /// and it is linked with break-before-make if `d` was valid. None of the generic `Pass`
    /// bookkeeping is needed: nothing is pending but the one entry, nothing is freed or parked,
    /// and the invalidation (of `d`'s translation) is known in advance.
    #[allow(clippy::too_many_arguments)]
    fn split_leaf_span(
        &mut self,
        plat: &mut impl Platform,
        alloc: &mut impl TableAllocator,
        table_pa: PhysAddr,
        i: usize,
        d: u64,
        ea: u64,
        s: u64,
        e: u64,
        target: &Target,
    ) -> Result<()> {
        let child = match self.splits.take_spare(Some((d, 3))) {
            Some(pa) => pa,
            None => {
                // The caller checked that a page or a ready spare is available; `None` here
                // means the allocator over-reported, and nothing has been changed.
                let pa = match alloc.alloc_table() {
                    Some(pa) => pa,
                    None => self.splits.take_spare(None).ok_or(Error::NoMem)?,
                };
                fill_split(TablePtr::new(&*plat, pa), d, 3);
                pa
            }
        };
        self.tables += 1;
        let slot = self.splits.track(child, 3, d);
        let t = TablePtr::new(&*plat, child);
        let first = ((s - ea) / PAGE_SIZE) as usize;
        let last = ((e - 1 - ea) / PAGE_SIZE) as usize;
        let tr = &mut self.splits.tracked[slot];
        let delta = update_unreachable_pages(t, ea, first, last, target, tr.exp0);
        tr.deviations = tr.deviations.wrapping_add_signed(delta);
        debug_assert_eq!(
            tr.deviations,
            deviations(t, 0, ENTRIES - 1, tr.exp0, step(tr.exp0, 3)),
            "deviation count of the table at {child:?} is wrong"
        );
        // Part of the entry keeps the origin's expansion: the new table is not uniform.
        debug_assert!(tr.deviations > 0 && usize::from(tr.deviations) < ENTRIES);
        let desc = child.raw() | TABLE_OR_PAGE;
        self.splits.entry_changed(table_pa, i, 2, d, desc);
        let parent = TablePtr::new(&*plat, table_pa);
        if is_valid(d) {
            // Break-before-make: the block's translation is invalidated before the table that
            // replaces it becomes visible (DDI 0487 "Translation table updates").
            parent.write(i, pending(desc));
            plat.invalidate_ipa_range(self.vmid, Ipa(ea), entry_pages(2), Some(2));
        }
        parent.write(i, desc);
        plat.publish_table_writes();
        Ok(())
    }

    /// What the tables say about the page at `ipa` (an IPA beyond the limit is `Empty` at the
    /// start level).
    pub fn lookup(&self, plat: &impl PhysMemory, ipa: Ipa) -> Lookup {
        let ipa = ipa.raw();
        if ipa >= self.cfg.ipa_limit() {
            return Lookup::Empty {
                level: self.cfg.start_level,
            };
        }
        let (d, level) = self.entry_at(plat, ipa);
        let k = (ipa & (entry_size(level) - 1)) / PAGE_SIZE;
        decode(d, level, k)
    }

    /// The leaf or invalid entry covering `ipa` (below the IPA limit) and its level.
    fn entry_at(&self, plat: &impl PhysMemory, ipa: u64) -> (u64, u8) {
        let mut level = self.cfg.start_level;
        let mut table = self.root;
        loop {
            let d = logical(TablePtr::new(plat, table).read(index(ipa, level)));
            if !is_table(d, level) {
                return (d, level);
            }
            table = PhysAddr(d & ADDR_MASK);
            level += 1;
        }
    }

    /// Visit `range` in maximal chunks of pages that continue one another: `f(start, pages,
    /// lookup_of_first_page)`. Within a chunk, page `k` looks up as the first page advanced by
    /// `k` pages (the output address, or the metadata of a linear annotation, grows with `k`;
    /// everything else is identical); the level may differ inside a chunk. One walk, visiting
    /// each entry once; stops early when `f` breaks.
    pub fn walk(
        &self,
        plat: &impl PhysMemory,
        range: PageRange<Ipa>,
        mut f: impl FnMut(Ipa, u64, &Lookup) -> ControlFlow<()>,
    ) {
        let (s, e) = (range.start().raw(), range.end().raw());
        let limit = self.cfg.ipa_limit();
        let mut chunk = Chunk {
            start: s,
            pages: 0,
            first: 0,
            level: 0,
        };
        if e <= limit {
            // Fast path: a range inside one leaf or invalid entry is one chunk, found by a
            // single descent (a conversion of pages inside a block or of one page).
            let (d, level) = self.entry_at(plat, s);
            let ea = s & !(entry_size(level) - 1);
            if e - ea <= entry_size(level) {
                let _ = f(
                    Ipa(s),
                    range.pages(),
                    &decode(d, level, (s - ea) / PAGE_SIZE),
                );
                return;
            }
        }
        let mut flow = ControlFlow::Continue(());
        if s < limit {
            flow = self.walk_table(
                plat,
                self.root,
                self.cfg.start_level,
                0,
                s,
                e.min(limit),
                &mut chunk,
                &mut f,
            );
        }
        if flow.is_break() {
            return;
        }
        if chunk.pages > 0
            && f(
                Ipa(chunk.start),
                chunk.pages,
                &decode(chunk.first, chunk.level, 0),
            )
            .is_break()
        {
            return;
        }
        if e > limit {
            let from = s.max(limit);
            let _ = f(
                Ipa(from),
                (e - from) / PAGE_SIZE,
                &Lookup::Empty {
                    level: self.cfg.start_level,
                },
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn walk_table(
        &self,
        mem: &impl PhysMemory,
        table: PhysAddr,
        level: u8,
        base: u64,
        s: u64,
        e: u64,
        chunk: &mut Chunk,
        f: &mut impl FnMut(Ipa, u64, &Lookup) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let t = TablePtr::new(mem, table);
        let size = entry_size(level);
        let first = ((s - base) >> shift(level)) as usize;
        let last = ((e - 1 - base) >> shift(level)) as usize;
        if level == 3 {
            // Pages: an entry is its own page view, and the view that continues the chunk is
            // carried from entry to entry instead of recomputed from the chunk's first page.
            let mut next = page_of(chunk.first, chunk.pages);
            for i in first..=last {
                let d = logical(t.read(i));
                if chunk.pages > 0 && d == next {
                    chunk.pages += 1;
                    next = page_of(next, 1);
                    continue;
                }
                if chunk.pages > 0 {
                    f(
                        Ipa(chunk.start),
                        chunk.pages,
                        &decode(chunk.first, chunk.level, 0),
                    )?;
                }
                *chunk = Chunk {
                    start: base + i as u64 * PAGE_SIZE,
                    pages: 1,
                    first: d,
                    level: 3,
                };
                next = page_of(d, 1);
            }
            return ControlFlow::Continue(());
        }
        for i in first..=last {
            let ea = base + i as u64 * size;
            let (cs, ce) = (s.max(ea), e.min(ea + size));
            let d = logical(t.read(i));
            if is_table(d, level) {
                self.walk_table(
                    mem,
                    PhysAddr(d & ADDR_MASK),
                    level + 1,
                    ea,
                    cs,
                    ce,
                    chunk,
                    f,
                )?;
                continue;
            }
            let page = page_of(d, (cs - ea) / PAGE_SIZE);
            let pages = (ce - cs) / PAGE_SIZE;
            if chunk.pages > 0 && page_of(chunk.first, chunk.pages) == page {
                chunk.pages += pages;
                continue;
            }
            if chunk.pages > 0 {
                f(
                    Ipa(chunk.start),
                    chunk.pages,
                    &decode(chunk.first, chunk.level, 0),
                )?;
            }
            *chunk = Chunk {
                start: cs,
                pages,
                first: page,
                level,
            };
        }
        ControlFlow::Continue(())
    }

    /// Free every table page back to `alloc` (VM teardown), after invalidating the whole VMID
    /// so that no walker keeps a pointer to them.
    pub fn destroy(mut self, plat: &mut impl Platform, alloc: &mut impl TableAllocator) {
        plat.invalidate_vmid(self.vmid);
        self.release_spares(alloc);
        free_tree(plat, alloc, self.root, self.cfg.start_level);
    }
}

fn free_tree(
    plat: &mut impl Platform,
    alloc: &mut impl TableAllocator,
    table: PhysAddr,
    level: u8,
) {
    if level < 3 {
        let t = TablePtr::new(&*plat, table);
        for i in 0..ENTRIES {
            let d = logical(t.read(i));
            if is_table(d, level) {
                free_tree(plat, alloc, PhysAddr(d & ADDR_MASK), level + 1);
            }
        }
    }
    alloc.free_table(table);
}

/// The chunk being accumulated by [`Stage2::walk`]: `first` is the page view of its first page
/// (found at `level`).
struct Chunk {
    start: u64,
    pages: u64,
    first: u64,
    level: u8,
}

/// Tables needed to apply `t` to `[cs, ce)` inside a non-table entry `d` at `level` covering
/// from `ea` (worst case: ignores that a new table might coalesce at once).
fn count_split(d: u64, level: u8, ea: u64, cs: u64, ce: u64, t: &Target) -> usize {
    let size = entry_size(level);
    if cs == ea && ce == ea + size && t.entry(d, ea, level).is_some() {
        return 0;
    }
    if t.keeps_page(page_of(d, (cs - ea) / PAGE_SIZE), cs) {
        return 0;
    }
    if level == 3 {
        return 0;
    }
    let child = level + 1;
    let csize = entry_size(child);
    let first = (cs - ea) / csize;
    let last = (ce - 1 - ea) / csize;
    1 + (first..=last)
        .map(|j| {
            let ca = ea + j * csize;
            count_split(
                sub_entry(d, child, j),
                child,
                ca,
                cs.max(ca),
                ce.min(ca + csize),
                t,
            )
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakePlatform, FakeTableAllocator};

    #[test]
    fn vtcr_for_48_bit_ipa_matches_the_architecture_reference_value() {
        // arm-el2-facts §2 config (a): T0SZ 16, SL0 L0, WBWA, inner shareable, 4K, PS 48 bits,
        // 16-bit VMID, RES1.
        let cfg = Stage2Config::for_ipa_bits(48).unwrap();
        assert_eq!(
            cfg,
            Stage2Config {
                ipa_bits: 48,
                start_level: 0
            }
        );
        assert_eq!(cfg.vtcr(0b101), 0x800D_3590);
        let l1 = Stage2Config::for_ipa_bits(39).unwrap();
        assert_eq!(l1.start_level, 1);
        assert_eq!(l1.vtcr(0b101) & 0xff, 25 | 0b01 << 6);
        assert_eq!(l1.ipa_limit(), 1 << 39);
    }

    #[test]
    fn leaf_descriptors_use_the_stage2_format_walkers_expect() {
        let rw_normal = Leaf {
            perms: Perms::RW,
            mem: MemType::Normal,
            sw: 2,
        };
        let d = leaf_bits(&rw_normal);
        assert_eq!(d >> 2 & 0xf, 0b1111, "MemAttr Normal WB");
        assert_eq!(d >> 6 & 0b11, 0b11, "S2AP RW");
        assert_eq!(d >> 8 & 0b11, 0b11, "inner shareable");
        assert_ne!(d & AF, 0, "AF set: the SMMU has no hardware access flag");
        assert_ne!(d & XN, 0, "no exec");
        assert_eq!(d >> 55 & 0b11, 2, "software state bits");
        assert_eq!(decode_leaf(d), rw_normal);
        let dev = leaf_bits(&Leaf {
            perms: Perms::RO,
            mem: MemType::Device,
            sw: 0,
        });
        assert_eq!(dev >> 2 & 0xf, 0b0001, "Device-nGnRE");
        assert_eq!(dev >> 6 & 0b11, 0b01, "S2AP RO");
    }

    #[test]
    fn annotations_are_invalid_entries_that_round_trip() {
        let ann = Annotation {
            owner: 5,
            meta: META_MAX,
        };
        for linear in [false, true] {
            let d = encode_ann(ann, linear);
            assert!(!is_valid(d) && d != 0 && !is_pending(d));
            assert_eq!(decode(d, 2, 0), Lookup::Annotated { ann, level: 2 });
        }
        // A linear block annotation reports the metadata of each page.
        let d = encode_ann(
            Annotation {
                owner: 2,
                meta: 100,
            },
            true,
        );
        let got = decode(d, 2, 7);
        assert_eq!(
            got,
            Lookup::Annotated {
                ann: Annotation {
                    owner: 2,
                    meta: 107
                },
                level: 2
            }
        );
    }

    #[test]
    fn pending_entries_are_invalid_and_remember_their_final_value() {
        for d in [
            0x4000_0000
                | BLOCK
                | leaf_bits(&Leaf {
                    perms: Perms::RWX,
                    mem: MemType::Normal,
                    sw: 3,
                }),
            0x8_0000_1000 | TABLE_OR_PAGE,
        ] {
            let p = pending(d);
            assert!(!is_valid(p) && is_pending(p));
            assert_eq!(logical(p), d);
        }
    }

    #[test]
    fn a_page_split_out_of_a_block_and_back_reuses_the_table_and_coalesces_in_o1() {
        let mut plat = FakePlatform::new(PhysAddr(0x4000_0000), 4 << 20);
        let mut alloc = FakeTableAllocator::new(PhysAddr(0x4000_0000), 256);
        let cfg = Stage2Config::for_ipa_bits(40).unwrap();
        let mut s2 = Stage2::new(cfg, Vmid(1), &mut plat, &mut alloc).unwrap();
        let leaf = Leaf {
            perms: Perms::RWX,
            mem: MemType::Normal,
            sw: 0,
        };
        let block = PageRange::new(Ipa(0x8000_0000), 512).unwrap();
        s2.map(&mut plat, &mut alloc, block, PhysAddr(0x1_0000_0000), leaf)
            .unwrap();
        let blocks_only = s2.table_pages();
        let page = PageRange::new(Ipa(0x8000_0000 + 7 * PAGE_SIZE), 1).unwrap();
        for round in 0..3 {
            let allocs = alloc.allocs();
            s2.set_sw(&mut plat, &mut alloc, page, 1).unwrap();
            assert_eq!(s2.table_pages(), blocks_only + 1, "round {round}: split");
            if round > 0 {
                assert_eq!(alloc.allocs(), allocs, "round {round}: the spare is reused");
                assert_eq!(s2.spare_tables(), 0);
            }
            match s2.lookup(&plat, page.start()) {
                Lookup::Mapped { leaf, level: 3, .. } => assert_eq!(leaf.sw, 1),
                other => panic!("round {round}: {other:?}"),
            }
            match s2.lookup(&plat, Ipa(0x8000_0000 + 8 * PAGE_SIZE)) {
                Lookup::Mapped { leaf, pa, .. } => {
                    assert_eq!((leaf.sw, pa), (0, PhysAddr(0x1_0000_8000)))
                }
                other => panic!("round {round}: {other:?}"),
            }
            s2.set_sw(&mut plat, &mut alloc, page, 0).unwrap();
            assert_eq!(s2.table_pages(), blocks_only, "round {round}: coalesced");
            assert_eq!(s2.spare_tables(), 1, "round {round}: kept as a spare");
            assert!(matches!(
                s2.lookup(&plat, page.start()),
                Lookup::Mapped { level: 2, .. }
            ));
        }
        // A different block cannot use the spare's content: it gets a fresh, filled table.
        let other = PageRange::new(Ipa(0x8020_0000), 1).unwrap();
        s2.map(&mut plat, &mut alloc, other, PhysAddr(0x2_0000_0000), leaf)
            .unwrap();
        assert_eq!(s2.spare_tables(), 1);
        s2.release_spares(&mut alloc);
        assert_eq!(alloc.outstanding(), s2.table_pages());
        s2.destroy(&mut plat, &mut alloc);
        assert_eq!(alloc.outstanding(), 0);
    }

    #[test]
    fn a_whole_block_state_change_coalesces_the_level_2_table_back_into_its_1gib_block() {
        let mut plat = FakePlatform::new(PhysAddr(0x4000_0000), 4 << 20);
        let mut alloc = FakeTableAllocator::new(PhysAddr(0x4000_0000), 256);
        let cfg = Stage2Config::for_ipa_bits(40).unwrap();
        let mut s2 = Stage2::new(cfg, Vmid(1), &mut plat, &mut alloc).unwrap();
        let leaf = Leaf {
            perms: Perms::RWX,
            mem: MemType::Normal,
            sw: 0,
        };
        let gib = PageRange::new(Ipa(0x4000_0000), 1 << 18).unwrap();
        s2.map(&mut plat, &mut alloc, gib, PhysAddr(0x1_0000_0000), leaf)
            .unwrap();
        let one_block = s2.table_pages();
        assert!(matches!(
            s2.lookup(&plat, Ipa(0x4000_0000)),
            Lookup::Mapped { level: 1, .. }
        ));
        // Two whole 2 MiB entries change state: the 1 GiB block is split (generic path).
        let two = PageRange::new(Ipa(0x4000_0000 + (4 << 20)), 1024).unwrap();
        s2.set_sw(&mut plat, &mut alloc, two, 2).unwrap();
        assert_eq!(s2.table_pages(), one_block + 1);
        // One of them back (the whole-block fast path): still not uniform.
        let first = PageRange::new(two.start(), 512).unwrap();
        s2.set_sw(&mut plat, &mut alloc, first, 0).unwrap();
        assert_eq!(s2.table_pages(), one_block + 1);
        match s2.lookup(&plat, Ipa(0x4000_0000 + (6 << 20))) {
            Lookup::Mapped { leaf, level: 2, pa } => {
                assert_eq!((leaf.sw, pa), (2, PhysAddr(0x1_0060_0000)))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s2.lookup(&plat, first.start()),
            Lookup::Mapped {
                leaf: Leaf { sw: 0, .. },
                level: 2,
                ..
            }
        ));
        // The other one back: the table is uniform again and coalesces into the 1 GiB block.
        let second = PageRange::new(Ipa(0x4000_0000 + (6 << 20)), 512).unwrap();
        s2.set_sw(&mut plat, &mut alloc, second, 0).unwrap();
        assert_eq!(s2.table_pages(), one_block);
        match s2.lookup(&plat, Ipa(0x4000_0000 + (6 << 20))) {
            Lookup::Mapped { leaf, level: 1, pa } => {
                assert_eq!((leaf.sw, pa), (0, PhysAddr(0x1_0060_0000)))
            }
            other => panic!("{other:?}"),
        }
        s2.release_spares(&mut alloc);
        s2.destroy(&mut plat, &mut alloc);
        assert_eq!(alloc.outstanding(), 0);
    }

    #[test]
    fn a_table_coalesced_by_a_remap_is_not_kept_with_a_pending_entry() {
        let mut plat = FakePlatform::new(PhysAddr(0x4000_0000), 4 << 20);
        let mut alloc = FakeTableAllocator::new(PhysAddr(0x4000_0000), 256);
        let cfg = Stage2Config::for_ipa_bits(40).unwrap();
        let mut s2 = Stage2::new(cfg, Vmid(1), &mut plat, &mut alloc).unwrap();
        let leaf = Leaf {
            perms: Perms::RWX,
            mem: MemType::Normal,
            sw: 0,
        };
        let block = PageRange::new(Ipa(0x8000_0000), 512).unwrap();
        s2.map(&mut plat, &mut alloc, block, PhysAddr(0x1_0000_0000), leaf)
            .unwrap();
        let page = PageRange::new(Ipa(0x8000_0000 + 7 * PAGE_SIZE), 1).unwrap();
        // Remap one page elsewhere (split), then back (valid -> valid: break-before-make, and
        // the table is uniform again: coalesced).
        s2.map(&mut plat, &mut alloc, page, PhysAddr(0x2_0000_0000), leaf)
            .unwrap();
        s2.map(&mut plat, &mut alloc, page, PhysAddr(0x1_0000_7000), leaf)
            .unwrap();
        assert!(matches!(
            s2.lookup(&plat, page.start()),
            Lookup::Mapped { level: 2, .. }
        ));
        // Split the block again (a spare may be relinked): every page must be valid for the
        // hardware, not only for the engine's logical view.
        let other = PageRange::new(Ipa(0x8000_0000 + 9 * PAGE_SIZE), 1).unwrap();
        s2.set_sw(&mut plat, &mut alloc, other, 1).unwrap();
        let l2 = entry_raw(&plat, &s2, 0x8000_0000, 2);
        assert_eq!(l2 & 3, 3, "level-2 entry is a table");
        let pte = plat.read_u64(PhysAddr((l2 & ADDR_MASK) + 7 * 8));
        assert_eq!(pte & 3, 3, "page 7 invalid for walkers: {pte:#x}");
        assert_eq!(pte & ADDR_MASK, 0x1_0000_7000);
    }

    /// The raw descriptor at `level` on the walk to `ipa` (through tables).
    fn entry_raw(plat: &FakePlatform, s2: &Stage2, ipa: u64, level: u8) -> u64 {
        let mut table = s2.root().raw();
        let mut l = s2.config().start_level;
        loop {
            let d = plat.read_u64(PhysAddr(table + index(ipa, l) as u64 * 8));
            if l == level {
                return d;
            }
            table = d & ADDR_MASK;
            l += 1;
        }
    }

    #[test]
    fn in_place_bound_counts_only_partly_covered_entries() {
        let mut plat = FakePlatform::new(PhysAddr(0x4000_0000), 1 << 20);
        let mut alloc = FakeTableAllocator::new(PhysAddr(0x4000_0000), 16);
        let cfg = Stage2Config::for_ipa_bits(40).unwrap();
        let s2 = Stage2::new(cfg, Vmid(1), &mut plat, &mut alloc).unwrap();
        let r = |ipa: u64, pages: u64| PageRange::new(Ipa(ipa), pages).unwrap();
        // One page: the L0 entry, the L1 and the L2 entry around it.
        assert_eq!(s2.tables_needed_in_place(r(0x4000_0000, 1)), 3);
        // A whole 2 MiB block: only the L0 and the L1 entry.
        assert_eq!(s2.tables_needed_in_place(r(0x4020_0000, 512)), 2);
        // A whole 1 GiB: only the L0 entry.
        assert_eq!(s2.tables_needed_in_place(r(0x4000_0000, 1 << 18)), 1);
        // Straddling two 2 MiB blocks inside one 1 GiB entry: L0, L1, two L2.
        assert_eq!(s2.tables_needed_in_place(r(0x401f_f000, 2)), 4);
        // 4 GiB unaligned: L0, two L1 edges, two L2 edges; the constant bound counts thousands.
        assert_eq!(s2.tables_needed_in_place(r(0x4000_1000, 1 << 20)), 5);
        assert!(s2.tables_needed(&plat, r(0x4000_1000, 1 << 20)) > 2000);
        s2.destroy(&mut plat, &mut alloc);
    }

    #[test]
    fn vttbr_carries_root_and_vmid() {
        let mut plat = FakePlatform::new(PhysAddr(0x4000_0000), 1 << 20);
        let mut alloc = FakeTableAllocator::new(PhysAddr(0x4000_0000), 256);
        let cfg = Stage2Config::for_ipa_bits(40).unwrap();
        let s2 = Stage2::new(cfg, Vmid(0x1234), &mut plat, &mut alloc).unwrap();
        assert_eq!(s2.vttbr(), s2.root().raw() | 0x1234 << 48);
        assert_eq!(s2.table_pages(), 1);
        s2.destroy(&mut plat, &mut alloc);
        assert_eq!(alloc.outstanding(), 0);
    }
}
