//! Guest calls handled at EL2: the pKVM guest ABI as Linux's pKVM guest driver uses it (SMCCC
//! version and features, the KVM vendor UID and features bitmap, HYP_MEMINFO, MEM_SHARE,
//! MEM_UNSHARE, MEM_RELINQUISH with the range form), plus the decision of which calls leave to
//! the host (PSCI, anything else).
//!
//! MEM_SHARE / MEM_UNSHARE / MEM_RELINQUISH complete here and return straight to the guest; each
//! success is appended to the VM's conversion log. A MEM_SHARE of an IPA with no memory yet is
//! turned into a "no memory" exit so that the host donates, and the `hvc` is executed again.

use crate::addr::{Ipa, PageRange, PAGE_SIZE};
use crate::error::Error;
use crate::mem::decode::{page_range, GuestCall};
use crate::mem::Ownership;
use crate::pgtable::TableAllocator;
use crate::platform::Platform;
use crate::vm::VmHandle;

/// Function IDs of the guest ABI.
pub mod fid {
    /// SMCCC_VERSION.
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// SMCCC_ARCH_FEATURES(w1 = function ID).
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
    /// Vendor hypervisor CALL_UID (KVM's UID).
    pub const VENDOR_HYP_CALL_UID: u32 = 0x8600_FF01;
    /// KVM vendor-hypervisor FEATURES bitmap.
    pub const KVM_FEATURES: u32 = 0x8600_0000;
    /// HYP_MEMINFO: the share granule and the range ABI.
    pub const HYP_MEMINFO: u32 = 0xC600_0002;
    /// MEM_SHARE(ipa, granules, 0).
    pub const MEM_SHARE: u32 = 0xC600_0003;
    /// MEM_UNSHARE(ipa, granules, 0).
    pub const MEM_UNSHARE: u32 = 0xC600_0004;
    /// MEM_RELINQUISH(ipa, granules, 0).
    pub const MEM_RELINQUISH: u32 = 0xC600_0009;
}

/// pKVM return codes for guest calls.
pub mod ret {
    /// Success.
    pub const SUCCESS: i64 = 0;
    /// Not supported.
    pub const NOT_SUPPORTED: i64 = -1;
    /// Any refused argument or transition.
    pub const INVALID_PARAMETER: i64 = -3;
}

/// KVM's vendor-hypervisor UID `28b46fb6-2ec5-11e9-a9ca-4b564d003a74` as w0..w3.
pub const KVM_UID: [u32; 4] = [0xB66F_B428, 0xE911_C52E, 0x564B_CAA9, 0x743A_004D];

/// KVM FEATURES bitmap: bit n = KVM vendor function n (0 FEATURES, 2 HYP_MEMINFO, 3 MEM_SHARE,
/// 4 MEM_UNSHARE, 9 MEM_RELINQUISH).
pub const KVM_FEATURES_BITMAP: u64 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 9);

/// The IDs ARCH_FEATURES reports as implemented.
const IMPLEMENTED: [u32; 8] = [
    fid::SMCCC_VERSION,
    fid::SMCCC_ARCH_FEATURES,
    fid::VENDOR_HYP_CALL_UID,
    fid::KVM_FEATURES,
    fid::HYP_MEMINFO,
    fid::MEM_SHARE,
    fid::MEM_UNSHARE,
    fid::MEM_RELINQUISH,
];

/// What becomes of a guest `hvc` (or trapped `smc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestHvc {
    /// Handled; the guest's x0..x3 were updated: return to it.
    Resume,
    /// PSCI: exit to the host with reason 5.
    Psci,
    /// Not for EL2: exit to the host with reason 1.
    Host,
    /// MEM_SHARE found no memory at this page: exit 3 and execute the `hvc` again on re-entry.
    NoMemory(Ipa),
}

/// True for a PSCI function ID (SMC32 `0x8400_00nn` or SMC64 `0xC400_00nn`, nn < 0x20).
pub fn is_psci(function: u32) -> bool {
    (function & !0x4000_0000) & 0xffff_ffe0 == 0x8400_0000
}

/// Handle a guest call of VM `handle` with the guest's `regs` (x0..x3), updating them for
/// [`GuestHvc::Resume`].
pub fn handle_guest_call<A: TableAllocator>(
    own: &Ownership<'_, A>,
    plat: &mut impl Platform,
    handle: VmHandle,
    regs: &mut [u64; 4],
) -> GuestHvc {
    let function = regs[0] as u32;
    let set = |regs: &mut [u64; 4], vals: [u64; 4]| *regs = vals;
    match function {
        fid::SMCCC_VERSION => set(regs, [crate::abi::SMCCC_VERSION_1_1, 0, 0, 0]),
        fid::SMCCC_ARCH_FEATURES => {
            let ok = IMPLEMENTED.contains(&(regs[1] as u32));
            let code = if ok { ret::SUCCESS } else { ret::NOT_SUPPORTED };
            set(regs, [code as u64, 0, 0, 0]);
        }
        fid::VENDOR_HYP_CALL_UID => set(regs, KVM_UID.map(u64::from)),
        fid::KVM_FEATURES => set(regs, [KVM_FEATURES_BITMAP, 0, 0, 0]),
        fid::HYP_MEMINFO => set(regs, [PAGE_SIZE, 1, 0, 0]),
        fid::MEM_SHARE | fid::MEM_UNSHARE | fid::MEM_RELINQUISH => {
            return convert(own, plat, handle, regs);
        }
        f if is_psci(f) => return GuestHvc::Psci,
        _ => return GuestHvc::Host,
    }
    GuestHvc::Resume
}

/// MEM_SHARE / MEM_UNSHARE / MEM_RELINQUISH: all granules or none.
fn convert<A: TableAllocator>(
    own: &Ownership<'_, A>,
    plat: &mut impl Platform,
    handle: VmHandle,
    regs: &mut [u64; 4],
) -> GuestHvc {
    let call = match regs[0] as u32 {
        fid::MEM_SHARE => GuestCall::Share,
        fid::MEM_UNSHARE => GuestCall::Unshare,
        _ => GuestCall::Relinquish,
    };
    let (ipa, granules) = (regs[1], regs[2].max(1));
    let fail = |regs: &mut [u64; 4]| {
        *regs = [ret::INVALID_PARAMETER as u64, 0, 0, 0];
        GuestHvc::Resume
    };
    if regs[3] != 0 {
        return fail(regs);
    }
    match own.guest_call(plat, handle, call, ipa, granules) {
        Ok(()) => {
            // `guest_call` appended the conversion to the VM's log under its VM-table lock.
            *regs = [ret::SUCCESS as u64, granules, 0, 0];
            GuestHvc::Resume
        }
        Err(Error::NotFound) if call == GuestCall::Share => {
            let missing = page_range(Ipa(ipa), granules)
                .ok()
                .and_then(|r: PageRange<Ipa>| own.first_missing_page(&*plat, handle, r));
            match missing {
                Some(page) => GuestHvc::NoMemory(page),
                None => fail(regs),
            }
        }
        Err(_) => fail(regs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psci_ids_are_recognised_in_both_conventions() {
        assert!(is_psci(0x8400_0008));
        assert!(is_psci(0xC400_0003));
        assert!(is_psci(0x8400_0002));
        assert!(!is_psci(0x8400_0020));
        assert!(!is_psci(0xC600_0003));
        assert!(!is_psci(0x8600_FF01));
    }

    #[test]
    fn features_bitmap_is_the_documented_bits() {
        assert_eq!(KVM_FEATURES_BITMAP, 0b10_0001_1101);
    }
}
