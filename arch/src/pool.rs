//! The hyp's page pool: every page of the hyp region after the image, handed out by a buddy
//! allocator (buddy_system_allocator). Table pages of the host stage-2, the page metadata, the DTB
//! copy and the canary page come from here.

use core::alloc::Layout;
use core::ptr::NonNull;

use buddy_system_allocator::Heap;
use spin::Mutex;

use verso::addr::{PhysAddr, PAGE_SIZE};

static POOL: Mutex<Heap<32>> = Mutex::new(Heap::<32>::new());

/// Hands `[start, end)` (page aligned, hyp-owned, mapped RW) to the pool.
///
/// # Safety
/// The range must be unused memory that the hyp owns and that nothing else will touch.
pub unsafe fn init(start: u64, end: u64) {
    // SAFETY: forwarded from the caller.
    unsafe { POOL.lock().init(start as usize, (end - start) as usize) };
}

/// `bytes` (rounded up to pages) of zeroed, page-aligned pool memory, or `None` when exhausted.
pub fn alloc_zeroed(bytes: u64) -> Option<PhysAddr> {
    let size = bytes.max(PAGE_SIZE).next_multiple_of(PAGE_SIZE) as usize;
    let pa = alloc(bytes)?;
    // SAFETY: the allocator just handed out `size` bytes at `pa`, mapped RW in the hyp stage-1.
    unsafe { core::ptr::write_bytes(pa.raw() as *mut u8, 0, size) };
    Some(pa)
}

/// `bytes` (rounded up to pages) of page-aligned pool memory with whatever it last held, or
/// `None` when exhausted. For callers that write every byte themselves (stage-2 table pages:
/// the engine fills each new table; zeroing it first cost ~1,500 instructions per split).
pub fn alloc(bytes: u64) -> Option<PhysAddr> {
    let size = bytes.max(PAGE_SIZE).next_multiple_of(PAGE_SIZE) as usize;
    let layout = Layout::from_size_align(size, PAGE_SIZE as usize).ok()?;
    let ptr = POOL.lock().alloc(layout).ok()?;
    Some(PhysAddr(ptr.as_ptr() as u64))
}

/// Returns `bytes` at `pa` (from [`alloc_zeroed`] with the same size) to the pool.
///
/// # Safety
/// `pa`/`bytes` must come from one earlier `alloc_zeroed` or `alloc` and no longer be used.
pub unsafe fn free(pa: PhysAddr, bytes: u64) {
    let size = bytes.max(PAGE_SIZE).next_multiple_of(PAGE_SIZE) as usize;
    if let (Ok(layout), Some(ptr)) = (
        Layout::from_size_align(size, PAGE_SIZE as usize),
        NonNull::new(pa.raw() as *mut u8),
    ) {
        POOL.lock().dealloc(ptr, layout);
    }
}

/// Bytes still free in the pool.
pub fn free_bytes() -> u64 {
    let heap = POOL.lock();
    (heap.stats_total_bytes() - heap.stats_alloc_actual()) as u64
}
