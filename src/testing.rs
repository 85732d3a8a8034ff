//! Test support: a recording fake platform over an arena of fake physical memory, and a counting
//! table allocator. Compiled only for `cargo test` and the `testing` feature (tests, benches,
//! fuzz commands); never part of the EL2 image.
//!
//! The fake records every TLB and cache maintenance request in order ([`TlbOp`]), so a test can
//! prove the invalidation discipline of an operation: which translations were revoked and whether
//! an invalidation covering them was issued before the operation returned.

extern crate std;

use core::cell::UnsafeCell;
use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use crate::addr::{Ipa, PhysAddr, Vmid, PAGE_SIZE};
use crate::pgtable::TableAllocator;
use crate::platform::{CacheMaintenance, PhysMemory, TlbMaintenance};

/// One maintenance request, as recorded by [`FakePlatform`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TlbOp {
    /// `publish_table_writes` (a `DSB ISHST` on hardware).
    Publish,
    /// `invalidate_ipa_range`.
    Ipa {
        /// The VMID whose translations were invalidated.
        vmid: Vmid,
        /// First IPA.
        start: Ipa,
        /// Number of pages.
        pages: u64,
        /// Level hint (TTL), if the removed leaves were all at one level.
        level: Option<u8>,
    },
    /// `invalidate_vmid`.
    Vmid(Vmid),
    /// `clean_invalidate_to_poc`.
    CleanInval {
        /// First byte.
        pa: PhysAddr,
        /// Length in bytes.
        len: u64,
    },
}

impl TlbOp {
    /// True if this request removes every cached translation of `ipa` in `vmid`.
    pub fn covers(&self, vmid: Vmid, ipa: Ipa) -> bool {
        match *self {
            TlbOp::Ipa {
                vmid: v,
                start,
                pages,
                ..
            } => v == vmid && ipa >= start && ipa.raw() - start.raw() < pages * PAGE_SIZE,
            TlbOp::Vmid(v) => v == vmid,
            _ => false,
        }
    }
}

/// A recording fake of the platform: `bytes` of zeroed fake physical memory starting at `base`,
/// and a log of every maintenance request.
pub struct FakePlatform {
    base: PhysAddr,
    /// `u64` words so that every descriptor access is naturally aligned; `UnsafeCell` because
    /// the core writes through pointers handed out by `phys_to_ptr(&self)`, as on hardware.
    mem: Box<[UnsafeCell<u64>]>,
    log: Vec<TlbOp>,
}

impl FakePlatform {
    /// An arena of `bytes` (rounded up to a page) of zeroed memory at physical address `base`
    /// (page aligned).
    pub fn new(base: PhysAddr, bytes: u64) -> Self {
        assert!(
            base.is_page_aligned(),
            "fake arena base must be page aligned"
        );
        let pages = bytes.div_ceil(PAGE_SIZE);
        let words = usize::try_from(pages * PAGE_SIZE / 8).expect("arena too large");
        let mem = (0..words).map(|_| UnsafeCell::new(0)).collect();
        Self {
            base,
            mem,
            log: Vec::new(),
        }
    }

    /// First physical address of the arena.
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// Size of the arena in bytes.
    pub fn size(&self) -> u64 {
        self.mem.len() as u64 * 8
    }

    /// Every maintenance request since creation or the last [`clear_log`](Self::clear_log).
    pub fn log(&self) -> &[TlbOp] {
        &self.log
    }

    /// Forget the recorded requests.
    pub fn clear_log(&mut self) {
        self.log.clear();
    }

    /// Index of the word holding `pa`; panics (a test bug) outside the arena.
    fn word(&self, pa: PhysAddr) -> usize {
        let off = pa
            .raw()
            .checked_sub(self.base.raw())
            .expect("PA below the fake arena");
        let idx = usize::try_from(off / 8).expect("PA offset");
        assert!(idx < self.mem.len(), "PA {pa:?} beyond the fake arena");
        idx
    }

    /// The 64-bit word at `pa` (8-byte aligned).
    pub fn read_u64(&self, pa: PhysAddr) -> u64 {
        assert!(pa.is_aligned(8));
        // SAFETY: the word is inside the arena; `&self` excludes concurrent writers through
        // `&mut self`, and the core's raw-pointer writes are not concurrent with this read.
        unsafe { *self.mem[self.word(pa)].get() }
    }

    /// Store `value` at `pa` (8-byte aligned).
    pub fn write_u64(&mut self, pa: PhysAddr, value: u64) {
        assert!(pa.is_aligned(8));
        let i = self.word(pa);
        *self.mem[i].get_mut() = value;
    }

    /// A copy of `len` bytes from `pa`.
    pub fn read_bytes(&self, pa: PhysAddr, len: usize) -> Vec<u8> {
        (0..len as u64).map(|i| self.byte(pa.add(i))).collect()
    }

    /// Store `data` at `pa`.
    pub fn write_bytes(&mut self, pa: PhysAddr, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = pa.add(i as u64);
            let w = self.word(at);
            let shift = (at.raw() % 8) * 8;
            let word = self.mem[w].get_mut();
            *word = (*word & !(0xff << shift)) | (u64::from(*b) << shift);
        }
    }

    fn byte(&self, pa: PhysAddr) -> u8 {
        let word = self.read_u64(pa.align_down(8));
        (word >> ((pa.raw() % 8) * 8)) as u8
    }
}

impl PhysMemory for FakePlatform {
    // Inlined like the hyp's own translation (a bounds check and an add), so that host
    // benchmarks of the engine do not pay a call per table page that the EL2 build does not.
    #[inline]
    fn phys_to_ptr(&self, pa: PhysAddr) -> *mut u8 {
        let off = pa.raw().wrapping_sub(self.base.raw());
        assert!(
            off < self.size(),
            "phys_to_ptr({pa:?}) outside the fake arena"
        );
        // The arena is one allocation and `off` is inside it, so the offset pointer stays in
        // bounds. The core writes through it; handing out `*mut` from `&self` mirrors hardware,
        // where physical memory is not owned by the reader.
        self.mem
            .as_ptr()
            .cast::<u8>()
            .cast_mut()
            .wrapping_add(off as usize)
    }
}

impl TlbMaintenance for FakePlatform {
    fn publish_table_writes(&mut self) {
        self.log.push(TlbOp::Publish);
    }
    fn invalidate_ipa_range(&mut self, vmid: Vmid, start: Ipa, pages: u64, level_hint: Option<u8>) {
        self.log.push(TlbOp::Ipa {
            vmid,
            start,
            pages,
            level: level_hint,
        });
    }
    fn invalidate_vmid(&mut self, vmid: Vmid) {
        self.log.push(TlbOp::Vmid(vmid));
    }
}

impl CacheMaintenance for FakePlatform {
    fn clean_invalidate_to_poc(&mut self, pa: PhysAddr, len: u64) {
        self.log.push(TlbOp::CleanInval { pa, len });
    }
}

/// A table allocator handing out the pages of one physical range (inside a [`FakePlatform`]
/// arena), counting allocations and frees, and panicking on a double free or on freeing a page it
/// never handed out (both are engine bugs a test must see).
pub struct FakeTableAllocator {
    free: Vec<PhysAddr>,
    /// One flag per page of the range: handed out and not yet freed.
    in_use: Vec<bool>,
    outstanding: usize,
    /// First page and page count of the managed range.
    start: PhysAddr,
    pages: u64,
    allocs: u64,
    frees: u64,
    /// Allocation attempts refused because the pool was empty.
    refused: u64,
}

impl FakeTableAllocator {
    /// An allocator for the `pages` pages from `start`.
    pub fn new(start: PhysAddr, pages: u64) -> Self {
        assert!(start.is_page_aligned());
        // Hand out low addresses first (pop from the back).
        let free = (0..pages).rev().map(|i| start.add(i * PAGE_SIZE)).collect();
        Self {
            free,
            in_use: vec![false; pages as usize],
            outstanding: 0,
            start,
            pages,
            allocs: 0,
            frees: 0,
            refused: 0,
        }
    }

    /// Pages currently handed out.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Index of `pa` in the managed range, if it is a page of it.
    fn index(&self, pa: PhysAddr) -> Option<usize> {
        let off = pa.raw().checked_sub(self.start.raw())?;
        (pa.is_page_aligned() && off / PAGE_SIZE < self.pages).then_some((off / PAGE_SIZE) as usize)
    }

    /// Successful allocations so far.
    pub fn allocs(&self) -> u64 {
        self.allocs
    }

    /// Frees so far.
    pub fn frees(&self) -> u64 {
        self.frees
    }

    /// Allocation attempts that found the pool empty.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// True if `pa` is a page currently handed out by this allocator.
    pub fn owns(&self, pa: PhysAddr) -> bool {
        self.index(pa).is_some_and(|i| self.in_use[i])
    }

    /// Keep only `n` free pages (the rest are withheld), to provoke exhaustion.
    pub fn limit_free(&mut self, n: usize) {
        let keep = self.free.len().saturating_sub(n);
        self.free.drain(..keep);
    }
}

impl TableAllocator for FakeTableAllocator {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        match self.free.pop() {
            Some(pa) => {
                self.allocs += 1;
                let i = self.index(pa).expect("free list holds only own pages");
                self.in_use[i] = true;
                self.outstanding += 1;
                Some(pa)
            }
            None => {
                self.refused += 1;
                None
            }
        }
    }

    fn free_table(&mut self, pa: PhysAddr) {
        let i = self
            .index(pa)
            .unwrap_or_else(|| panic!("free of foreign page {pa:?}"));
        assert!(self.in_use[i], "double free of table page {pa:?}");
        self.in_use[i] = false;
        self.outstanding -= 1;
        self.frees += 1;
        self.free.push(pa);
    }

    fn available(&self) -> usize {
        self.free.len()
    }
}
