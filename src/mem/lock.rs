//! Spin locks that know their place in the lock order, and check it in debug builds.
//!
//! The order itself is written once, at the top of [`crate::mem`]. Each lock carries its
//! [`LockLevel`]; taking a lock while holding one of the same or a later level is a bug in the
//! hypervisor (never something a host or guest can cause), so debug builds assert against it.
//! The check keeps one bit per level of "held by this CPU" (per thread in host tests).

use core::ops::{Deref, DerefMut};

/// A place in the global lock order; a lock may only be taken while holding locks of *earlier*
/// levels.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u8)]
pub enum LockLevel {
    /// The VM table (handles, `dying` flags).
    VmTable = 0,
    /// The host component: host stage-2 and the page metadata.
    Host = 1,
    /// The hypervisor component: its page accounting.
    Hyp = 2,
    /// One guest: its stage-2 and memcache.
    Guest = 3,
}

/// A spin lock at a fixed [`LockLevel`].
pub struct OrderedLock<T> {
    level: LockLevel,
    inner: spin::Mutex<T>,
}

/// Proof that an [`OrderedLock`] is held; releases it (and its place in the order) on drop.
pub struct OrderedGuard<'a, T> {
    level: LockLevel,
    guard: spin::MutexGuard<'a, T>,
}

impl<T> OrderedLock<T> {
    /// A lock at `level` protecting `value`.
    pub const fn new(level: LockLevel, value: T) -> Self {
        Self {
            level,
            inner: spin::Mutex::new(value),
        }
    }

    /// Take the lock, spinning until it is free.
    ///
    /// # Panics
    /// In debug builds, if the calling CPU already holds a lock of this or a later level
    /// (a lock-order violation, which could deadlock against another CPU).
    pub fn lock(&self) -> OrderedGuard<'_, T> {
        held::acquire(self.level);
        OrderedGuard {
            level: self.level,
            guard: self.inner.lock(),
        }
    }

    /// The protected value, consuming the lock.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }

    /// The protected value, without locking: only possible with exclusive access to the lock.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }
}

impl<T> Drop for OrderedGuard<'_, T> {
    fn drop(&mut self) {
        held::release(self.level);
    }
}

impl<T> Deref for OrderedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for OrderedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// Register how the current CPU is identified (an index below [`MAX_CPUS`]) so that no_std
/// debug builds can check the lock order per CPU. Without it the check is skipped at EL2.
pub fn set_cpu_index_fn(f: fn() -> usize) {
    held::set_cpu_index_fn(f)
}

/// The number of CPUs the debug lock-order check can track at EL2.
pub const MAX_CPUS: usize = 8;

#[cfg_attr(not(debug_assertions), allow(dead_code))]
fn violated(level: LockLevel, held: u8) -> bool {
    // Every held level must be strictly earlier than the one being taken.
    (held >> (level as u8)) != 0
}

#[cfg(all(debug_assertions, any(test, feature = "testing")))]
mod held {
    use super::{violated, LockLevel};
    use std::cell::Cell;

    std::thread_local! {
        static HELD: Cell<u8> = const { Cell::new(0) };
    }

    pub fn acquire(level: LockLevel) {
        HELD.with(|h| {
            let held = h.get();
            assert!(
                !violated(level, held),
                "lock order violated: taking {level:?} while holding levels {held:#06b}"
            );
            h.set(held | 1 << level as u8);
        });
    }

    pub fn release(level: LockLevel) {
        HELD.with(|h| h.set(h.get() & !(1 << level as u8)));
    }

    pub fn set_cpu_index_fn(_f: fn() -> usize) {}
}

#[cfg(all(debug_assertions, not(any(test, feature = "testing"))))]
mod held {
    use super::{violated, LockLevel, MAX_CPUS};
    use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    /// The registered `fn() -> usize`, as an address; 0 = not registered.
    static CPU_INDEX_FN: AtomicUsize = AtomicUsize::new(0);
    static HELD: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

    fn slot() -> Option<&'static AtomicU8> {
        let f = CPU_INDEX_FN.load(Ordering::Acquire);
        if f == 0 {
            return None;
        }
        // SAFETY: the only non-zero value ever stored is a `fn() -> usize` cast to usize
        // (see `set_cpu_index_fn`), so transmuting it back yields that same function pointer.
        let f: fn() -> usize = unsafe { core::mem::transmute::<usize, fn() -> usize>(f) };
        HELD.get(f())
    }

    pub fn acquire(level: LockLevel) {
        if let Some(held) = slot() {
            let h = held.load(Ordering::Relaxed);
            assert!(
                !violated(level, h),
                "lock order violated: {level:?} after {h:#06b}"
            );
            held.store(h | 1 << level as u8, Ordering::Relaxed);
        }
    }

    pub fn release(level: LockLevel) {
        if let Some(held) = slot() {
            held.fetch_and(!(1 << level as u8), Ordering::Relaxed);
        }
    }

    pub fn set_cpu_index_fn(f: fn() -> usize) {
        CPU_INDEX_FN.store(f as usize, Ordering::Release);
    }
}

#[cfg(not(debug_assertions))]
mod held {
    use super::LockLevel;
    pub fn acquire(_level: LockLevel) {}
    pub fn release(_level: LockLevel) {}
    pub fn set_cpu_index_fn(_f: fn() -> usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_taken_in_order_are_accepted() {
        let a = OrderedLock::new(LockLevel::VmTable, 1);
        let b = OrderedLock::new(LockLevel::Host, 2);
        let c = OrderedLock::new(LockLevel::Guest, 3);
        let (ga, gb, gc) = (a.lock(), b.lock(), c.lock());
        assert_eq!(*ga + *gb + *gc, 6);
        drop((gc, gb, ga));
        // Released: the same locks may be taken again, in any legal combination.
        let _gb = b.lock();
        let _gc = c.lock();
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order violated")]
    fn taking_host_after_guest_is_caught_in_debug_builds() {
        let host = OrderedLock::new(LockLevel::Host, ());
        let guest = OrderedLock::new(LockLevel::Guest, ());
        let _g = guest.lock();
        let _h = host.lock();
    }

    #[test]
    fn order_check_rejects_same_and_later_levels() {
        assert!(!violated(LockLevel::Hyp, 0b0011));
        assert!(violated(LockLevel::Hyp, 0b0100));
        assert!(violated(LockLevel::Host, 0b1000));
        assert!(violated(LockLevel::Guest, 0b1000));
    }
}
