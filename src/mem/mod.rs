//! Page ownership: who owns every RAM page, who may access it, and the transitions that change
//! that, each *in place* (the same physical page changes owner by rewriting descriptors).
//!
//! # Lock order
//!
//! **vm table -> host -> hyp -> guest.** A CPU takes these locks only in this order (skipping any),
//! and never holds two guest locks. Every transition takes all the locks it needs up front,
//! checks every page and every resource, commits, and releases them. Debug builds assert the
//! order (see [`lock`]).
//!
//! - *vm table* ([`crate::vm::VmTable`]): VM slots and `dying` flags. Transitions on a guest hold
//!   it for their whole duration, which keeps the VM alive without reference counts.
//! - *host* ([`HostMemory`]): the host stage-2, its table allocator, and the page metadata. The
//!   metadata word also holds the hyp's state of the page (like pKVM's `hyp_page`), so the hyp
//!   fields are only written with the host lock held as well.
//! - *hyp* ([`HypComponent`]): the hypervisor's accounting of the pages it owns and borrows.
//! - *guest* ([`crate::vm::Guest`]): one guest's stage-2 (whose software bits say whether the
//!   guest owns or borrows a page) and memcache.
//!
//! # States
//!
//! Host and hyp states live in the metadata ([`PageMeta`]); guest states in the guest stage-2
//! and, for the pages a guest owns, in the metadata too (see [`guest_state`]): a valid leaf's
//! software bits say owned (`Owned`, or `SharedOwned` when the page's host state is
//! `SharedBorrowed`) or borrowed (`SharedBorrowed`), empty entries are `NoPage`, an invalid
//! entry annotated as poisoned is `Poisoned`. A page the host
//! gave away has an invalid, annotated host descriptor naming its new owner; for a guest, the VM
//! handle and the IPA. The full table of transitions, preconditions and errors is in
//! `docs/memory-model.md`; the tests enforce it.

pub mod decode;
mod host;
pub mod lock;
mod state;
mod transitions;

#[cfg(any(test, feature = "testing"))]
pub mod check;

pub use host::{HostMemory, MachineLayout, HOST_MMIO_LEAF, HOST_RAM_LEAF, MAX_REGIONS};
pub use state::{Owner, PageMeta, PageState, PIN_RESERVED};

use crate::addr::{Ipa, PageRange, PhysAddr, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::pgtable::{Annotation, Lookup, Stage2Config, TableAllocator};
use crate::platform::Platform;
use crate::vm::{VmHandle, VmTable};
use lock::{LockLevel, OrderedGuard, OrderedLock};

/// Annotation owner code: the page belongs to the hypervisor.
pub(crate) const ANN_OWNER_HYP: u8 = 1;
/// Annotation owner code: the page belongs to a guest (meta = handle + IPA).
pub(crate) const ANN_OWNER_GUEST: u8 = 2;
/// Guest stage-2 annotation: the page behind this IPA was taken back and scrubbed.
pub(crate) const ANN_GUEST_POISONED: u8 = 3;

/// Bits of the guest-annotation metadata holding the IPA, as a page-number offset from the PA.
///
/// Recording `ipa_pfn - pa_pfn` (mod 2^40) instead of the IPA itself makes the annotation of a
/// contiguous donation identical for every page, so one annotation covers the whole range and
/// can sit in a block descriptor; the IPA of any page is its PA plus the offset.
const GFN_DELTA_BITS: u32 = 40;
const GFN_DELTA_MASK: u64 = (1 << GFN_DELTA_BITS) - 1;

pub(crate) fn hyp_annotation() -> Annotation {
    Annotation {
        owner: ANN_OWNER_HYP,
        meta: 0,
    }
}

pub(crate) fn poison_annotation() -> Annotation {
    Annotation {
        owner: ANN_GUEST_POISONED,
        meta: 0,
    }
}

/// The host annotation of pages donated to `handle`, with `pa` appearing at `ipa` in the guest.
pub(crate) fn guest_annotation(handle: VmHandle, pa: PhysAddr, ipa: Ipa) -> Annotation {
    let delta = ipa.pfn().wrapping_sub(pa.pfn()) & GFN_DELTA_MASK;
    Annotation {
        owner: ANN_OWNER_GUEST,
        meta: u64::from(handle.0) | delta << 16,
    }
}

/// Decode a host annotation found at `pa`: the owner, and for a guest the IPA of `pa` there.
pub fn annotation_owner(ann: &Annotation, pa: PhysAddr) -> Option<(Owner, Option<Ipa>)> {
    match ann.owner {
        ANN_OWNER_HYP => Some((Owner::Hyp, None)),
        ANN_OWNER_GUEST => {
            let handle = VmHandle((ann.meta & 0xffff) as u16);
            let delta = (ann.meta >> 16) & GFN_DELTA_MASK;
            let ipa_pfn = (pa.pfn() + delta) & GFN_DELTA_MASK;
            Some((
                Owner::Guest(handle),
                Some(Ipa(ipa_pfn << crate::addr::PAGE_SHIFT)),
            ))
        }
        _ => None,
    }
}

/// Software bits of a guest leaf for a page the guest owns (`Owned` or `SharedOwned`).
pub(crate) const GUEST_SW_OWNED: u8 = 0;
/// Software bits of a guest leaf for a page the host lent to the guest (`SharedBorrowed`).
pub(crate) const GUEST_SW_BORROWED: u8 = 2;

/// The guest's state of a page: its guest stage-2 lookup says whether the guest owns the page,
/// borrows it, had it poisoned or has nothing there; for a page it owns, the host's state of
/// that page says whether the guest shares it (host `SharedBorrowed`: guest `SharedOwned`).
///
/// This split is what keeps MEM_SHARE / MEM_UNSHARE off the guest stage-2: the guest's own
/// access to a page it owns is the same whether it shares it or not, so the conversion changes
/// the host's descriptor and metadata only, and the guest's block mappings are never split for
/// it (docs/decisions/guest-shared-state.md).
pub fn guest_state<A: TableAllocator>(lookup: &Lookup, host: &HostMemory<'_, A>) -> PageState {
    match lookup {
        Lookup::Mapped { leaf, pa, .. } => match leaf.sw {
            GUEST_SW_OWNED => owned_state(host.meta(*pa)),
            _ => PageState::SharedBorrowed,
        },
        Lookup::Annotated { ann, .. } if ann.owner == ANN_GUEST_POISONED => PageState::Poisoned,
        _ => PageState::NoPage,
    }
}

/// The guest's state of a page it owns, from the page's metadata (`None`: not RAM, which a
/// consistent guest mapping never is).
pub(crate) fn owned_state(meta: Option<&PageMeta>) -> PageState {
    match meta {
        Some(m) if m.host_state() == PageState::SharedBorrowed => PageState::SharedOwned,
        _ => PageState::Owned,
    }
}

/// A step of a commit that the check phase proved cannot fail. Like pKVM's `WARN_ON()` around
/// its commit calls: a failure is a bug in the checks, caught loudly in debug builds.
pub(crate) fn committed(res: Result<()>) {
    if let Err(e) = res {
        log::error!("ownership commit failed after its checks passed: {e:?}");
        debug_assert!(
            false,
            "ownership commit failed after its checks passed: {e:?}"
        );
    }
}

/// Zero `r` and clean it to the point of coherency, so that its next owner (or a non-coherent
/// device) sees zeroes and not the previous owner's data. Called only on pages that no other
/// component can access any more.
pub(crate) fn scrub(plat: &mut impl Platform, r: PageRange<PhysAddr>) {
    for pa in r.iter() {
        let page = plat.phys_to_ptr(pa);
        // SAFETY: `pa` is a RAM page (the caller checked it against the layout) that only the
        // hypervisor can access at this point (its other mappings are gone and invalidated), and
        // `phys_to_ptr` returns a pointer valid for writes to the whole page containing `pa`.
        unsafe { core::ptr::write_bytes(page, 0, PAGE_SIZE as usize) };
    }
    plat.clean_invalidate_to_poc(r.start(), r.bytes());
}

/// The hypervisor component: its accounting of RAM pages it owns or borrows (the page-level
/// state is in the metadata).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypComponent {
    /// RAM pages whose hyp state is `Owned` (its own memory, VM memcaches, donations).
    pub owned_pages: u64,
    /// RAM pages the host shares with the hyp.
    pub borrowed_pages: u64,
}

/// All ownership state of the machine, behind the locks of the documented order.
pub struct Ownership<'m, A: TableAllocator> {
    vms: OrderedLock<VmTable>,
    host: OrderedLock<HostMemory<'m, A>>,
    hyp: OrderedLock<HypComponent>,
    guest_cfg: Stage2Config,
}

impl<'m, A: TableAllocator> Ownership<'m, A> {
    /// Take charge of the host component built at boot; guests get stage-2s of `guest_ipa_bits`.
    ///
    /// # Errors
    /// What [`Stage2Config::for_ipa_bits`] returns for an unsupported `guest_ipa_bits`.
    pub fn new(host: HostMemory<'m, A>, guest_ipa_bits: u32) -> Result<Self> {
        let guest_cfg = Stage2Config::for_ipa_bits(guest_ipa_bits)?;
        let owned_pages = host.hyp_regions().map(|r| r.pages()).sum();
        Ok(Self {
            vms: OrderedLock::new(LockLevel::VmTable, VmTable::new()),
            host: OrderedLock::new(LockLevel::Host, host),
            hyp: OrderedLock::new(
                LockLevel::Hyp,
                HypComponent {
                    owned_pages,
                    borrowed_pages: 0,
                },
            ),
            guest_cfg,
        })
    }

    /// The guests' stage-2 configuration.
    pub fn guest_config(&self) -> Stage2Config {
        self.guest_cfg
    }

    /// Run `f` with the VM table, host and hyp components locked (in order). `f` may lock guests.
    pub fn inspect<R>(
        &self,
        f: impl FnOnce(&VmTable, &HostMemory<'m, A>, &HypComponent) -> R,
    ) -> R {
        let vms = self.vms.lock();
        let host = self.host.lock();
        let hyp = self.hyp.lock();
        f(&vms, &host, &hyp)
    }

    /// Run `f` with the VM table locked: vCPU bookkeeping and conversion logs live in the VMs
    /// (`crate::vcpu`). `f` may lock one guest, nothing else.
    pub fn with_vms<R>(&self, f: impl FnOnce(&mut VmTable) -> R) -> R {
        f(&mut self.vms.lock())
    }

    /// Lock the host component (test support: e.g. forcing a share count).
    #[cfg(any(test, feature = "testing"))]
    pub fn lock_host(&self) -> OrderedGuard<'_, HostMemory<'m, A>> {
        self.host.lock()
    }

    fn lock_all(
        &self,
    ) -> (
        OrderedGuard<'_, VmTable>,
        OrderedGuard<'_, HostMemory<'m, A>>,
        OrderedGuard<'_, HypComponent>,
    ) {
        let vms = self.vms.lock();
        let host = self.host.lock();
        let hyp = self.hyp.lock();
        (vms, host, hyp)
    }
}

/// [`Error::NoMem`] unless `available >= needed`.
pub(crate) fn check_capacity(available: usize, needed: usize) -> Result<()> {
    if available >= needed {
        Ok(())
    } else {
        Err(Error::NoMem)
    }
}
