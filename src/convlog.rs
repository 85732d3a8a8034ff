//! The per-VM conversion log: a ring in host pages (shared with the hyp by `CONVLOG_REGISTER`)
//! to which the hyp appends one entry per successful guest conversion (MEM_SHARE, MEM_UNSHARE,
//! MEM_RELINQUISH), so that a VMM learns of every conversion after the fact without sitting in
//! its path.
//!
//! The hyp never blocks on the log and never trusts it: it keeps its own `head` (entries ever
//! produced) and `dropped` counters and only *reads* the host's `tail`; a full ring (head - tail
//! at least capacity, with a tail the host may have set to anything) counts the entry in
//! `dropped` instead of writing. Format (little endian, docs/abi.md):
//!
//! | offset | field |
//! |---|---|
//! | 0 | u32 magic `0x474C4356` ("VCLG") |
//! | 4 | u32 version 1 |
//! | 8 | u32 capacity (entries) |
//! | 12 | u32 reserved |
//! | 16 | u64 head (hyp: entries produced) |
//! | 24 | u64 tail (host: entries consumed) |
//! | 32 | u64 dropped (hyp: entries lost to overflow) |
//! | 64 + 32·(seq % capacity) | entry: u64 seq, u64 ipa, u64 pages, u32 state, u32 reserved |

use crate::addr::{PageRange, PhysAddr, PAGE_SIZE};
use crate::platform::PhysMemory;

/// "VCLG" read as a little-endian u32.
pub const MAGIC: u32 = 0x474C_4356;
/// Format version.
pub const VERSION: u32 = 1;
/// Header bytes before the first entry.
pub const HEADER_BYTES: u64 = 64;
/// Bytes per entry.
pub const ENTRY_BYTES: u64 = 32;

/// New state of a converted range: shared with the host (MEM_SHARE).
pub const STATE_SHARED: u32 = 1;
/// Private to the guest again (MEM_UNSHARE).
pub const STATE_PRIVATE: u32 = 2;
/// Relinquished to the host (MEM_RELINQUISH).
pub const STATE_RELINQUISHED: u32 = 3;

const OFF_MAGIC: u64 = 0;
const OFF_VERSION: u64 = 4;
const OFF_CAPACITY: u64 = 8;
const OFF_HEAD: u64 = 16;
const OFF_TAIL: u64 = 24;
const OFF_DROPPED: u64 = 32;

/// A registered log: where it is and the hyp's own copy of the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvLog {
    pages: PageRange<PhysAddr>,
    capacity: u64,
    head: u64,
    dropped: u64,
}

impl ConvLog {
    /// Start a log in `pages` (which the hyp may access for as long as the log lives): writes a
    /// fresh header (head = tail = dropped = 0). Returns `None` if the pages cannot hold one
    /// entry after the header.
    pub fn init(plat: &mut impl PhysMemory, pages: PageRange<PhysAddr>) -> Option<Self> {
        let capacity = pages.bytes().checked_sub(HEADER_BYTES)? / ENTRY_BYTES;
        if capacity == 0 || capacity > u64::from(u32::MAX) {
            return None;
        }
        let log = Self {
            pages,
            capacity,
            head: 0,
            dropped: 0,
        };
        for off in (0..HEADER_BYTES).step_by(8) {
            log.write_u64(plat, off, 0);
        }
        log.write_u32(plat, OFF_MAGIC, MAGIC);
        log.write_u32(plat, OFF_VERSION, VERSION);
        log.write_u32(plat, OFF_CAPACITY, capacity as u32);
        Some(log)
    }

    /// The pages of the log.
    pub fn pages(&self) -> PageRange<PhysAddr> {
        self.pages
    }

    /// Entries the ring holds.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Record a conversion of `pages` pages at `ipa` to `state`. Never blocks: if the host has not
    /// consumed enough entries, the entry is counted in `dropped` instead.
    pub fn append(&mut self, plat: &mut impl PhysMemory, ipa: u64, pages: u64, state: u32) {
        let tail = self.read_u64(plat, OFF_TAIL);
        // A tail ahead of head, or more than a ring behind, is the host's bug: the ring counts
        // as full (the hyp never writes outside its slots whatever the tail says).
        let used = self.head.checked_sub(tail).unwrap_or(u64::MAX);
        if used >= self.capacity {
            self.dropped += 1;
            self.write_u64(plat, OFF_DROPPED, self.dropped);
            return;
        }
        let slot = HEADER_BYTES + (self.head % self.capacity) * ENTRY_BYTES;
        self.write_u64(plat, slot, self.head);
        self.write_u64(plat, slot + 8, ipa);
        self.write_u64(plat, slot + 16, pages);
        self.write_u64(plat, slot + 24, u64::from(state));
        self.head += 1;
        // The entry is complete before head says so (the host polls head).
        core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
        self.write_u64(plat, OFF_HEAD, self.head);
    }

    fn ptr(&self, plat: &impl PhysMemory, off: u64) -> *mut u8 {
        // Inside the log (callers pass offsets below pages.bytes()); each page is translated on
        // its own because only a page is guaranteed contiguous by `phys_to_ptr`.
        let pa = PhysAddr(self.pages.start().raw() + off);
        let page = PhysAddr(pa.raw() & !(PAGE_SIZE - 1));
        plat.phys_to_ptr(page)
            .wrapping_add((pa.raw() % PAGE_SIZE) as usize)
    }

    fn read_u64(&self, plat: &impl PhysMemory, off: u64) -> u64 {
        debug_assert!(off + 8 <= self.pages.bytes() && off.is_multiple_of(8));
        // SAFETY: an aligned word inside the log's pages, which the hyp may access while the log
        // is registered; volatile because the host writes it concurrently.
        unsafe { core::ptr::read_volatile(self.ptr(plat, off) as *const u64) }
    }

    fn write_u64(&self, plat: &mut impl PhysMemory, off: u64, value: u64) {
        debug_assert!(off + 8 <= self.pages.bytes() && off.is_multiple_of(8));
        // SAFETY: as in `read_u64`; the host may read concurrently, hence volatile.
        unsafe { core::ptr::write_volatile(self.ptr(plat, off) as *mut u64, value.to_le()) }
    }

    fn write_u32(&self, plat: &mut impl PhysMemory, off: u64, value: u32) {
        debug_assert!(off + 4 <= self.pages.bytes() && off.is_multiple_of(4));
        // SAFETY: as in `write_u64`, for an aligned 32-bit field of the header.
        unsafe { core::ptr::write_volatile(self.ptr(plat, off) as *mut u32, value.to_le()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;

    const BASE: u64 = 0x4000_0000;

    fn setup(pages: u64) -> (FakePlatform, ConvLog) {
        let mut plat = FakePlatform::new(PhysAddr(BASE), 4 * PAGE_SIZE);
        // Garbage the host left there must not survive registration.
        for off in (0..PAGE_SIZE).step_by(8) {
            plat.write_u64(PhysAddr(BASE + off), 0x5555_5555_5555_5555);
        }
        let r = PageRange::new(PhysAddr(BASE), pages).unwrap();
        let log = ConvLog::init(&mut plat, r).unwrap();
        (plat, log)
    }

    fn u64_at(plat: &FakePlatform, off: u64) -> u64 {
        plat.read_u64(PhysAddr(BASE + off))
    }

    fn entry(plat: &FakePlatform, slot: u64) -> [u64; 4] {
        let at = HEADER_BYTES + slot * ENTRY_BYTES;
        [0, 8, 16, 24].map(|o| u64_at(plat, at + o))
    }

    #[test]
    fn header_is_the_documented_format() {
        let (plat, log) = setup(1);
        assert_eq!(log.capacity(), (4096 - 64) / 32);
        assert_eq!(
            u64_at(&plat, 0),
            u64::from(MAGIC) | u64::from(VERSION) << 32
        );
        assert_eq!(u64_at(&plat, 8), 126);
        assert_eq!([16, 24, 32, 40, 48, 56].map(|o| u64_at(&plat, o)), [0; 6]);
        assert_eq!(&plat.read_bytes(PhysAddr(BASE), 4), b"VCLG");
    }

    #[test]
    fn entries_are_written_in_order_with_sequence_numbers() {
        let (mut plat, mut log) = setup(1);
        log.append(&mut plat, 0x4000_1000, 1, STATE_SHARED);
        log.append(&mut plat, 0x4020_0000, 512, STATE_PRIVATE);
        log.append(&mut plat, 0x4000_2000, 3, STATE_RELINQUISHED);
        assert_eq!(u64_at(&plat, 16), 3);
        assert_eq!(entry(&plat, 0), [0, 0x4000_1000, 1, 1]);
        assert_eq!(entry(&plat, 1), [1, 0x4020_0000, 512, 2]);
        assert_eq!(entry(&plat, 2), [2, 0x4000_2000, 3, 3]);
        assert_eq!(u64_at(&plat, 32), 0);
    }

    #[test]
    fn a_full_ring_counts_drops_and_never_overwrites_unconsumed_entries() {
        let (mut plat, mut log) = setup(1);
        let cap = log.capacity();
        for i in 0..cap {
            log.append(&mut plat, i * PAGE_SIZE, 1, STATE_SHARED);
        }
        let before = plat.read_bytes(PhysAddr(BASE + HEADER_BYTES), (cap * ENTRY_BYTES) as usize);
        log.append(&mut plat, 0xdead_0000, 1, STATE_PRIVATE);
        log.append(&mut plat, 0xdead_1000, 1, STATE_PRIVATE);
        assert_eq!(u64_at(&plat, 32), 2, "dropped");
        assert_eq!(u64_at(&plat, 16), cap, "head unchanged");
        let after = plat.read_bytes(PhysAddr(BASE + HEADER_BYTES), (cap * ENTRY_BYTES) as usize);
        assert_eq!(before, after);
    }

    #[test]
    fn consumed_entries_make_room_and_the_ring_wraps() {
        let (mut plat, mut log) = setup(1);
        let cap = log.capacity();
        for i in 0..cap {
            log.append(&mut plat, i, 1, STATE_SHARED);
        }
        // The host consumes two entries.
        plat.write_u64(PhysAddr(BASE + 24), 2);
        log.append(&mut plat, 0x7000, 2, STATE_PRIVATE);
        log.append(&mut plat, 0x8000, 3, STATE_SHARED);
        log.append(&mut plat, 0x9000, 4, STATE_SHARED);
        assert_eq!(entry(&plat, 0), [cap, 0x7000, 2, 2]);
        assert_eq!(entry(&plat, 1), [cap + 1, 0x8000, 3, 1]);
        assert_eq!(entry(&plat, 2), [2, 2, 1, 1], "unconsumed entry kept");
        assert_eq!((u64_at(&plat, 16), u64_at(&plat, 32)), (cap + 2, 1));
    }

    #[test]
    fn a_hostile_tail_cannot_make_the_hyp_write_outside_its_slots() {
        let (mut plat, mut log) = setup(1);
        // Past the end of the log page: must stay untouched.
        plat.write_u64(PhysAddr(BASE + PAGE_SIZE), 0x1234);
        for tail in [u64::MAX, 5, 1 << 63] {
            plat.write_u64(PhysAddr(BASE + 24), tail);
            log.append(&mut plat, 0x1000, 1, STATE_SHARED);
        }
        assert_eq!(u64_at(&plat, 16), 0);
        assert_eq!(u64_at(&plat, 32), 3);
        assert_eq!(plat.read_u64(PhysAddr(BASE + PAGE_SIZE)), 0x1234);
    }

    #[test]
    fn multi_page_logs_span_pages_and_too_small_ones_are_refused() {
        let (mut plat, mut log) = setup(2);
        assert_eq!(log.capacity(), (2 * 4096 - 64) / 32);
        for i in 0..200 {
            log.append(&mut plat, i, 1, STATE_SHARED);
        }
        assert_eq!(entry(&plat, 199), [199, 199, 1, 1]);
        let tiny = PageRange::new(PhysAddr(BASE), 1).unwrap();
        // A page always fits; only the header-only case would be refused, which pages exclude.
        assert!(ConvLog::init(&mut plat, tiny).is_some());
    }
}
