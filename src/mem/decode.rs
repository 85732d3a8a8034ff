//! Decoding of raw hypercall arguments (u64 register values) into validated ranges and
//! transition calls. The ABI layer maps function IDs to a [`HostCall`] / [`GuestCall`] and
//! calls [`Ownership::host_call`] / [`Ownership::guest_call`]; nothing here trusts a register.

use super::Ownership;
use crate::addr::{Ipa, PageRange, PhysAddr, PAGE_SIZE};
use crate::convlog;
use crate::error::{Error, Result};
use crate::pgtable::{Perms, TableAllocator};
use crate::platform::Platform;
use crate::vm::VmHandle;

/// A host request, before decoding: which transition, and its raw register arguments.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HostCall {
    /// `(pfn, nr_pages)`
    ShareHyp,
    /// `(pfn, nr_pages)`
    UnshareHyp,
    /// `(pfn, nr_pages, handle, gfn, prot)` with prot bits R=1, W=2, X=4.
    ShareGuest,
    /// `(handle, gfn, nr_pages)`
    UnshareGuest,
    /// `(pfn, nr_pages, handle, gfn)`
    DonateGuest,
    /// `(handle, gfn, nr_pages)`
    ReclaimGuest,
    /// `(pfn, nr_pages)`
    ForceReclaimGuest,
    /// `(pfn, nr_pages)`, returns the handle.
    CreateVm,
    /// `(handle, pfn, nr_pages)`
    TopupMemcache,
    /// `(handle)`
    StartTeardown,
    /// `(handle)`
    FinalizeTeardown,
}

/// A guest request (the caller knows which VM is running): `(ipa, nr_pages)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GuestCall {
    /// MEM_SHARE
    Share,
    /// MEM_UNSHARE
    Unshare,
    /// MEM_RELINQUISH
    Relinquish,
}

/// The largest range one call may cover: bounded work per hypercall (4 GiB of pages).
pub const MAX_PAGES_PER_CALL: u64 = 1 << 20;

/// A range of `pages` pages from the page frame number `pfn`.
///
/// # Errors
/// [`Error::Invalid`] if `pages` is zero; [`Error::Range`] if `pages` exceeds
/// [`MAX_PAGES_PER_CALL`] or the range wraps or leaves the 64-bit space.
pub fn pfn_range(pfn: u64, pages: u64) -> Result<PageRange<PhysAddr>> {
    let start = pfn.checked_mul(PAGE_SIZE).ok_or(Error::Range)?;
    page_range(PhysAddr(start), pages)
}

/// A range of `pages` pages from the byte address `addr`.
///
/// # Errors
/// [`Error::Align`] if `addr` is not page aligned; otherwise as [`pfn_range`].
pub fn page_range<A: crate::addr::Address>(addr: A, pages: u64) -> Result<PageRange<A>> {
    if !addr.to_raw().is_multiple_of(PAGE_SIZE) {
        return Err(Error::Align);
    }
    if pages == 0 {
        return Err(Error::Invalid);
    }
    if pages > MAX_PAGES_PER_CALL {
        return Err(Error::Range);
    }
    PageRange::new(addr, pages).ok_or(Error::Range)
}

/// A guest frame number as an IPA.
fn gfn(gfn: u64) -> Result<Ipa> {
    gfn.checked_mul(PAGE_SIZE).map(Ipa).ok_or(Error::Range)
}

/// A VM handle from a register: must fit 16 bits.
fn handle(raw: u64) -> Result<VmHandle> {
    u16::try_from(raw)
        .map(VmHandle)
        .map_err(|_| Error::NotFound)
}

/// Stage-2 permissions from protection bits R=1, W=2, X=4.
///
/// # Errors
/// [`Error::Invalid`] for unknown bits or no access at all.
pub fn perms(prot: u64) -> Result<Perms> {
    if prot & !7 != 0 || prot == 0 {
        return Err(Error::Invalid);
    }
    Ok(Perms {
        read: prot & 1 != 0,
        write: prot & 2 != 0,
        exec: prot & 4 != 0,
    })
}

impl<A: TableAllocator> Ownership<'_, A> {
    /// Decode and perform a host call. Returns the call's value (the new handle for
    /// [`HostCall::CreateVm`], else 0).
    ///
    /// # Errors
    /// The decoding errors of this module, then those of the transition.
    pub fn host_call(&self, plat: &mut impl Platform, call: HostCall, a: [u64; 5]) -> Result<u64> {
        match call {
            HostCall::ShareHyp => self.host_share_hyp(pfn_range(a[0], a[1])?),
            HostCall::UnshareHyp => self.host_unshare_hyp(pfn_range(a[0], a[1])?),
            HostCall::ShareGuest => {
                let pages = pfn_range(a[0], a[1])?;
                let p = perms(a[4])?;
                self.host_share_guest(plat, pages, handle(a[2])?, gfn(a[3])?, p)
            }
            HostCall::UnshareGuest => {
                let ipas = page_range(gfn(a[1])?, a[2])?;
                self.host_unshare_guest(plat, handle(a[0])?, ipas)
            }
            HostCall::DonateGuest => {
                let pages = pfn_range(a[0], a[1])?;
                self.host_donate_guest(plat, pages, handle(a[2])?, gfn(a[3])?)
            }
            HostCall::ReclaimGuest => {
                let ipas = page_range(gfn(a[1])?, a[2])?;
                self.host_reclaim_guest(plat, handle(a[0])?, ipas)
            }
            HostCall::ForceReclaimGuest => {
                self.host_force_reclaim_guest(plat, pfn_range(a[0], a[1])?)
            }
            HostCall::CreateVm => {
                return self
                    .create_vm(plat, pfn_range(a[0], a[1])?)
                    .map(|h| u64::from(h.0))
            }
            HostCall::TopupMemcache => {
                let pages = pfn_range(a[1], a[2])?;
                self.topup_memcache(plat, handle(a[0])?, pages)
            }
            HostCall::StartTeardown => self.start_teardown(handle(a[0])?),
            HostCall::FinalizeTeardown => self.finalize_teardown(plat, handle(a[0])?),
        }
        .map(|()| 0)
    }

    /// Decode and perform a call from the guest `vm`: `(ipa, nr_pages)` (pKVM's range form).
    /// A conversion that succeeded is appended to the VM's conversion log (if it registered
    /// one) under the VM-table lock the transition already holds, so the log never disagrees
    /// with the page states and the hot path takes that lock once.
    ///
    /// # Errors
    /// The decoding errors of this module, then those of the transition.
    pub fn guest_call(
        &self,
        plat: &mut impl Platform,
        vm: VmHandle,
        call: GuestCall,
        ipa: u64,
        pages: u64,
    ) -> Result<()> {
        let ipas = page_range(Ipa(ipa), pages)?;
        let mut vms = self.vms.lock();
        let state = match call {
            GuestCall::Share => {
                self.guest_share_host_in(plat, &vms, vm, ipas)?;
                convlog::STATE_SHARED
            }
            GuestCall::Unshare => {
                self.guest_unshare_host_in(plat, &vms, vm, ipas)?;
                convlog::STATE_PRIVATE
            }
            GuestCall::Relinquish => {
                self.guest_relinquish_to_host_in(plat, &vms, vm, ipas)?;
                convlog::STATE_RELINQUISHED
            }
        };
        if let Some(log) = vms.get_mut(vm).ok().and_then(|v| v.run.convlog.as_mut()) {
            log.append(plat, ipa, pages, state);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_rejects_hostile_ranges_with_exact_errors() {
        assert_eq!(pfn_range(0x40000, 0), Err(Error::Invalid));
        assert_eq!(pfn_range(u64::MAX, 1), Err(Error::Range));
        assert_eq!(pfn_range((u64::MAX >> 12) - 1, 4), Err(Error::Range));
        assert_eq!(
            pfn_range(0x40000, MAX_PAGES_PER_CALL + 1),
            Err(Error::Range)
        );
        assert_eq!(page_range(Ipa(0x1001), 1), Err(Error::Align));
        assert_eq!(perms(0), Err(Error::Invalid));
        assert_eq!(perms(8), Err(Error::Invalid));
        assert_eq!(perms(3), Ok(Perms::RW));
        assert_eq!(handle(1 << 16), Err(Error::NotFound));
        let r = pfn_range(0x40000, 2).unwrap();
        assert_eq!((r.start(), r.pages()), (PhysAddr(0x4000_0000), 2));
    }
}
