//! VMs as the ownership layer needs them: a fixed-capacity table of VMs (no heap), each with its
//! handle, VMID, guest stage-2, the memcache of host-donated pages its tables are built from, and
//! a `dying` flag. Issue 4 grows this into vCPUs and their run loop.
//!
//! Handles start at [`HANDLE_OFFSET`] so that 0 (and small integers a buggy host might pass) are
//! never valid; the VMID is the slot index + 1 because VMID 0 is the host's.

use crate::addr::{PhysAddr, Vmid};
use crate::mem::lock::{LockLevel, OrderedLock};
use crate::pgtable::{Stage2, TableAllocator};

/// How many VMs can exist at once.
pub const MAX_VMS: usize = 8;
/// How many host-donated pages one VM's memcache can hold (free or in use as table pages).
pub const MEMCACHE_PAGES: usize = 64;
/// The handle of the VM in slot 0.
pub const HANDLE_OFFSET: u16 = 0x1000;

/// The host's name for a VM. Never 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct VmHandle(pub u16);

impl VmHandle {
    /// The table slot this handle names, if it could name one at all.
    fn index(self) -> Option<usize> {
        let idx = usize::from(self.0.checked_sub(HANDLE_OFFSET)?);
        (idx < MAX_VMS).then_some(idx)
    }

    /// The VMID of the VM in the slot this handle names.
    pub fn vmid(self) -> Option<Vmid> {
        // idx < MAX_VMS, so idx + 1 fits in u16.
        self.index().map(|idx| Vmid(idx as u16 + 1))
    }
}

/// Pages the host donated for one VM's stage-2 tables: a [`TableAllocator`] over a fixed array.
///
/// The cache accounts for every page it was ever given, whether free or in use as a table, so
/// that a freed table page always has a slot to come back to and teardown can return every page
/// to the host.
pub struct Memcache {
    free: [PhysAddr; MEMCACHE_PAGES],
    nr_free: usize,
    in_tables: usize,
    /// Pages taken for the VM's hyp-side state (vCPU contexts): held until teardown.
    in_state: usize,
    /// Every page ever given, in order: what teardown returns to the host.
    donated: [PhysAddr; MEMCACHE_PAGES],
}

impl Default for Memcache {
    fn default() -> Self {
        Self::new()
    }
}

impl Memcache {
    /// An empty memcache.
    pub const fn new() -> Self {
        Self {
            free: [PhysAddr(0); MEMCACHE_PAGES],
            nr_free: 0,
            in_tables: 0,
            in_state: 0,
            donated: [PhysAddr(0); MEMCACHE_PAGES],
        }
    }
    /// Pages held (free or used as tables).
    pub fn held(&self) -> usize {
        self.nr_free + self.in_tables + self.in_state
    }
    /// How many more pages the memcache can accept.
    pub fn room(&self) -> usize {
        MEMCACHE_PAGES - self.held()
    }
    /// The free pages.
    pub fn free_pages(&self) -> &[PhysAddr] {
        &self.free[..self.nr_free]
    }
    /// Every page the memcache holds, free or used as a table.
    pub fn donated_pages(&self) -> &[PhysAddr] {
        &self.donated[..self.held()]
    }
    /// Pages currently used as table pages.
    pub fn pages_in_tables(&self) -> usize {
        self.in_tables
    }
    /// Pages taken by [`Self::take_for_state`] (vCPU contexts).
    pub fn pages_in_state(&self) -> usize {
        self.in_state
    }
    /// Take a free page for the VM's hyp-side state (a vCPU context). It stays accounted to the
    /// memcache, so teardown returns it to the host (scrubbed) with the others.
    pub fn take_for_state(&mut self) -> Option<PhysAddr> {
        self.nr_free = self.nr_free.checked_sub(1)?;
        self.in_state += 1;
        Some(self.free[self.nr_free])
    }
    /// Add a page the hypervisor now owns. The caller checked [`Self::room`].
    pub(crate) fn push(&mut self, pa: PhysAddr) {
        debug_assert!(self.room() > 0);
        let held = self.held();
        if held < MEMCACHE_PAGES {
            self.donated[held] = pa;
            self.free[self.nr_free] = pa;
            self.nr_free += 1;
        }
    }
}

impl TableAllocator for Memcache {
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        self.nr_free = self.nr_free.checked_sub(1)?;
        self.in_tables += 1;
        Some(self.free[self.nr_free])
    }

    fn free_table(&mut self, pa: PhysAddr) {
        // Only pages handed out by alloc_table come back, so there is always a slot.
        debug_assert!(self.in_tables > 0 && self.nr_free < MEMCACHE_PAGES);
        if self.nr_free < MEMCACHE_PAGES {
            self.in_tables = self.in_tables.saturating_sub(1);
            self.free[self.nr_free] = pa;
            self.nr_free += 1;
        }
    }

    fn available(&self) -> usize {
        self.nr_free
    }
}

/// The part of a VM protected by its own (guest-level) lock.
pub struct Guest {
    /// The VM's handle.
    pub handle: VmHandle,
    /// The guest's stage-2: its page states live in the descriptors' software bits.
    pub stage2: Stage2,
    /// Where the guest's table pages come from.
    pub memcache: Memcache,
}

impl Guest {
    /// Table pages the guest's stage-2 can get without the host: the memcache's free pages
    /// and the stage-2's spare tables (which every operation uses first).
    pub fn table_capacity(&self) -> usize {
        self.memcache.available() + self.stage2.spare_tables()
    }

    /// Whether the guest's stage-2 can get `needed` table pages without the host: the memcache
    /// alone usually answers, so the spare tables (a scan of the spare slots) are counted only
    /// when it cannot.
    #[inline]
    pub fn covers_tables(&self, needed: usize) -> bool {
        self.memcache.available() >= needed || self.table_capacity() >= needed
    }
}

/// One VM.
pub struct Vm {
    /// Set by `start_teardown`: the VM runs no more and only gives memory back.
    pub dying: bool,
    /// Guest stage-2 and memcache, under the guest lock.
    pub guest: OrderedLock<Guest>,
    /// vCPUs and the conversion log (issue 4), under the vm-table lock.
    pub run: crate::vcpu::VmRun,
}

/// The VM table: a fixed array of slots, protected by the vm-table lock.
pub struct VmTable {
    slots: [Option<Vm>; MAX_VMS],
}

impl Default for VmTable {
    fn default() -> Self {
        Self::new()
    }
}

impl VmTable {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            slots: [const { None }; MAX_VMS],
        }
    }
    /// The VM named by `handle`.
    ///
    /// # Errors
    /// [`crate::error::Error::NotFound`] if no such VM exists.
    pub fn get(&self, handle: VmHandle) -> crate::error::Result<&Vm> {
        handle
            .index()
            .and_then(|i| self.slots[i].as_ref())
            .ok_or(crate::error::Error::NotFound)
    }
    /// The VM named by `handle`, mutably.
    ///
    /// # Errors
    /// [`crate::error::Error::NotFound`] if no such VM exists.
    pub fn get_mut(&mut self, handle: VmHandle) -> crate::error::Result<&mut Vm> {
        handle
            .index()
            .and_then(|i| self.slots[i].as_mut())
            .ok_or(crate::error::Error::NotFound)
    }
    /// The handle a new VM would get, if a slot is free.
    pub(crate) fn free_handle(&self) -> Option<VmHandle> {
        let idx = self.slots.iter().position(Option::is_none)?;
        Some(VmHandle(HANDLE_OFFSET + idx as u16))
    }
    /// Put `vm` in the slot of `handle` (from [`Self::free_handle`]).
    pub(crate) fn insert(&mut self, handle: VmHandle, vm: Vm) {
        if let Some(i) = handle.index() {
            self.slots[i] = Some(vm);
        }
    }
    /// Remove the VM named by `handle`.
    pub(crate) fn remove(&mut self, handle: VmHandle) -> Option<Vm> {
        self.slots[handle.index()?].take()
    }
    /// The handles of every VM, in slot order.
    pub fn handles(&self) -> impl Iterator<Item = VmHandle> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| VmHandle(HANDLE_OFFSET + i as u16))
    }
    /// A new VM entry with lock at the guest level.
    pub(crate) fn new_vm(guest: Guest) -> Vm {
        Vm {
            dying: false,
            guest: OrderedLock::new(LockLevel::Guest, guest),
            run: crate::vcpu::VmRun::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_never_zero_and_vmids_skip_the_host() {
        assert_eq!(VmHandle(0).vmid(), None);
        assert_eq!(VmHandle(HANDLE_OFFSET - 1).vmid(), None);
        assert_eq!(VmHandle(HANDLE_OFFSET).vmid(), Some(Vmid(1)));
        assert_eq!(VmHandle(HANDLE_OFFSET + MAX_VMS as u16).vmid(), None);
    }

    #[test]
    fn memcache_returns_freed_tables_and_counts_every_page() {
        let mut mc = Memcache::new();
        mc.push(PhysAddr(0x1000));
        mc.push(PhysAddr(0x2000));
        assert_eq!((mc.available(), mc.held()), (2, 2));
        let t = mc.alloc_table().unwrap();
        assert_eq!(t, PhysAddr(0x2000));
        assert_eq!((mc.available(), mc.held(), mc.pages_in_tables()), (1, 2, 1));
        mc.free_table(t);
        assert_eq!((mc.available(), mc.held(), mc.pages_in_tables()), (2, 2, 0));
        mc.alloc_table().unwrap();
        mc.alloc_table().unwrap();
        assert_eq!(mc.alloc_table(), None);
    }
}
