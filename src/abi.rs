//! The hypercall ABI: function IDs, SMCCC return codes, the one mapping from [`Error`] to a return
//! code, and the dispatch of host calls.
//!
//! Conventions are SMCCC 1.1 (Arm DEN 0028): `hvc #0`, the function ID in W0, arguments in x1..,
//! results in x0..x3, and x4..x17 preserved unless they carry a result. Verso's own host calls are
//! SMC64 fast calls in the vendor-hypervisor range (owner 6, `0xC600_8000 + n`), numbered well
//! above pKVM's guest calls (`0xC600_0000 + n`) so the two sets can never collide.
//!
//! Dispatch is portable: it takes the host's saved registers and writes the results into them, so
//! the whole decode layer runs under `cargo test`. What only the EL2 runtime knows (the canary
//! page, the machine's ownership state, how to enter a guest) comes in through [`HostCallEnv`].
//! Memory calls decode to [`crate::mem::decode::HostCall`] and run the transitions of
//! [`crate::mem`]; vCPU calls use [`crate::vcpu`]; guest calls are in [`crate::guest_abi`]. The contract is documented in `docs/abi.md`; a call
//! that is not in that table answers `NOT_SUPPORTED` and changes nothing.

use crate::addr::PhysAddr;
use crate::convlog::ConvLog;
use crate::error::{Error, Result};
use crate::mem::decode::{pfn_range, HostCall};
use crate::mem::Ownership;
use crate::pgtable::TableAllocator;
use crate::platform::{PhysMemory, Platform};
use crate::vcpu::{LoadedVcpu, VcpuContext};
use crate::vm::VmHandle;

/// Number of registers (x0..x17) that an SMCCC 1.1 SMC64/HVC64 call may read or write.
pub const SMCCC_REGS: usize = 18;

/// The registers x0..x17 of a caller, as saved on entry to the hypervisor.
pub type SmcccRegs = [u64; SMCCC_REGS];

/// Function IDs understood by the hypervisor.
pub mod fid {
    /// `SMCCC_VERSION`: answers the SMCCC version implemented (1.1).
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// `SMCCC_ARCH_FEATURES(x1 = function ID)`: 0 if that ID is implemented, else -1.
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
    /// Vendor-specific hypervisor service `CALL_UID`: x0..x3 = Verso's UID.
    pub const VENDOR_HYP_CALL_UID: u32 = 0x8600_FF01;
    /// First ID of Verso's own host calls (SMC64 fast call, owner Vendor Hyp, function 0x8000).
    pub const VERSO_HOST_BASE: u32 = 0xC600_8000;
    /// `VERSO_ABI_VERSION`: x1 = major << 16 | minor, x2 = bitmap of implemented host calls.
    pub const VERSO_ABI_VERSION: u32 = VERSO_HOST_BASE;
    /// `VERSO_HYP_CANARY`: x1 = PA of the canary page, x2 = checksum now, x3 = checksum at boot.
    pub const VERSO_HYP_CANARY: u32 = VERSO_HOST_BASE + 1;
    /// `HOST_SHARE_HYP(pfn, nr_pages)`.
    pub const HOST_SHARE_HYP: u32 = VERSO_HOST_BASE + 2;
    /// `HOST_UNSHARE_HYP(pfn, nr_pages)`.
    pub const HOST_UNSHARE_HYP: u32 = VERSO_HOST_BASE + 3;
    /// `VM_CREATE(pfn, nr_pages)` -> x1 = handle.
    pub const VM_CREATE: u32 = VERSO_HOST_BASE + 4;
    /// `VCPU_CREATE(handle, entry IPA, x0)` -> x1 = vCPU index.
    pub const VCPU_CREATE: u32 = VERSO_HOST_BASE + 5;
    /// `MEMCACHE_TOPUP(handle, pfn, nr_pages)`.
    pub const MEMCACHE_TOPUP: u32 = VERSO_HOST_BASE + 6;
    /// `HOST_DONATE_GUEST(pfn, nr_pages, handle, gfn)`.
    pub const HOST_DONATE_GUEST: u32 = VERSO_HOST_BASE + 7;
    /// `HOST_SHARE_GUEST(pfn, nr_pages, handle, gfn, prot)`.
    pub const HOST_SHARE_GUEST: u32 = VERSO_HOST_BASE + 8;
    /// `HOST_UNSHARE_GUEST(handle, gfn, nr_pages)`.
    pub const HOST_UNSHARE_GUEST: u32 = VERSO_HOST_BASE + 9;
    /// `VCPU_RUN(handle, index, flags)` -> x1 = exit reason, x2.. details.
    pub const VCPU_RUN: u32 = VERSO_HOST_BASE + 0xA;
    /// `VM_START_TEARDOWN(handle)`.
    pub const VM_START_TEARDOWN: u32 = VERSO_HOST_BASE + 0xB;
    /// `VM_RECLAIM(handle, gfn, nr_pages)`.
    pub const VM_RECLAIM: u32 = VERSO_HOST_BASE + 0xC;
    /// `VM_FINALIZE_TEARDOWN(handle)`.
    pub const VM_FINALIZE_TEARDOWN: u32 = VERSO_HOST_BASE + 0xD;
    /// `CONVLOG_REGISTER(handle, pfn, nr_pages)`.
    pub const CONVLOG_REGISTER: u32 = VERSO_HOST_BASE + 0xE;
    /// `HOST_RECLAIM_FORCE(pfn, nr_pages)`.
    pub const HOST_RECLAIM_FORCE: u32 = VERSO_HOST_BASE + 0xF;
    /// `DMA_FAULTS_READ` -> x1..x3 = the oldest decoded SMMU fault record and counters
    /// (`verso::iommu::event::fault_reply`).
    pub const DMA_FAULTS_READ: u32 = VERSO_HOST_BASE + 0x10;
}

/// `VCPU_RUN` exit reasons (x1).
pub mod exit {
    /// Guest HVC not handled at EL2: x2..x5 = guest x0..x3.
    pub const HVC: u64 = 1;
    /// MMIO-style data abort: x2 IPA, x3 size, x4 1 = write, x5 value written.
    pub const MMIO: u64 = 2;
    /// Stage-2 fault on guest RAM with no page: x2 IPA (page), x3 ESR_EL2.
    pub const NO_MEMORY: u64 = 3;
    /// WFI/WFE.
    pub const WFX: u64 = 4;
    /// PSCI call: x2 function ID, x3..x5 its arguments.
    pub const PSCI: u64 = 5;
    /// A physical IRQ arrived while the guest ran.
    pub const IRQ: u64 = 6;
    /// The guest accessed memory it may not; an abort was injected: x2 IPA, x3 ESR_EL2.
    pub const ABORT_INJECTED: u64 = 7;
}

/// SMCCC return codes (x0, read as a signed 64-bit value).
pub mod ret {
    /// The call succeeded.
    pub const SUCCESS: i64 = 0;
    /// The function ID is not implemented (also: the call is not allowed from this caller).
    pub const NOT_SUPPORTED: i64 = -1;
    /// SMCCC `NOT_REQUIRED`.
    pub const NOT_REQUIRED: i64 = -2;
    /// An argument is malformed ([`crate::error::Error::Invalid`]).
    pub const INVALID: i64 = -3;
    /// The caller does not own the page or it is in the wrong state ([`crate::error::Error::Perm`]).
    pub const PERM: i64 = -4;
    /// The page or object is in use ([`crate::error::Error::Busy`]).
    pub const BUSY: i64 = -5;
    /// Not enough memory for the change ([`crate::error::Error::NoMem`]).
    pub const NO_MEM: i64 = -6;
    /// The range lies outside the space it must be in ([`crate::error::Error::Range`]).
    pub const RANGE: i64 = -7;
    /// An address or size is misaligned ([`crate::error::Error::Align`]).
    pub const ALIGN: i64 = -8;
    /// The named object does not exist ([`crate::error::Error::NotFound`]).
    pub const NOT_FOUND: i64 = -9;
}

/// The SMCCC version the hypervisor implements: 1.1 (major << 16 | minor).
pub const SMCCC_VERSION_1_1: u64 = 0x1_0001;

/// Verso's host ABI version, major 0, minor 1 (major << 16 | minor).
pub const VERSO_ABI_VERSION: u64 = 1;

/// Verso's vendor-hypervisor UID, `33a602b8-9fa0-4fb7-a4ac-8b18a7ede95e`, as the four 32-bit words
/// SMCCC `CALL_UID` returns in w0..w3 (UUID bytes 0..15, each word little-endian).
pub const VERSO_UID: [u32; 4] = [0xb802_a633, 0xb74f_a09f, 0x188b_aca4, 0x5ee9_eda7];

/// Number of Verso host calls: `VERSO_HOST_BASE + 0 ..= + 0x10`, all implemented. Bit `n` of the
/// `VERSO_ABI_VERSION` bitmap is set when `VERSO_HOST_BASE + n` is implemented.
const HOST_CALLS: u32 = 17;

/// The SMCCC function IDs [`handle_host_call`] implements besides Verso's own range.
const IMPLEMENTED_SMCCC: [u32; 3] = [
    fid::SMCCC_VERSION,
    fid::SMCCC_ARCH_FEATURES,
    fid::VENDOR_HYP_CALL_UID,
];

/// True for every function ID that [`handle_host_call`] implements (what `SMCCC_ARCH_FEATURES`
/// reports).
fn implemented(id: u32) -> bool {
    IMPLEMENTED_SMCCC.contains(&id)
        || id
            .checked_sub(fid::VERSO_HOST_BASE)
            .is_some_and(|n| n < HOST_CALLS)
}

/// The return code for a refused request. This is the only place where [`Error`] meets the ABI.
pub const fn error_code(error: Error) -> i64 {
    match error {
        Error::Invalid => ret::INVALID,
        Error::Perm => ret::PERM,
        Error::Busy => ret::BUSY,
        Error::NoMem => ret::NO_MEM,
        Error::Range => ret::RANGE,
        Error::Align => ret::ALIGN,
        Error::NotFound => ret::NOT_FOUND,
    }
}

/// A result as the x0 value of a reply: `SUCCESS` or the error's code.
pub const fn result_code(result: Result<()>) -> i64 {
    match result {
        Ok(()) => ret::SUCCESS,
        Err(e) => error_code(e),
    }
}

/// FNV-1a, 64-bit: the checksum `VERSO_HYP_CANARY` reports. Chosen because it is tiny, has no
/// tables, and any single changed byte changes it.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// What host-call dispatch needs to know from the EL2 runtime.
pub trait HostCallEnv {
    /// The allocator of the host stage-2's table pages.
    type Tables: TableAllocator + 'static;
    /// The platform (memory access, TLB and cache maintenance).
    type Plat: Platform;
    /// The machine's ownership state and the platform, once the host stage-2 exists.
    fn memory(&mut self) -> Option<(&Ownership<'static, Self::Tables>, &mut Self::Plat)>;
    /// Run `vcpu` (loaded, completion applied) until an exit for the host; returns x1..x5: the
    /// exit reason ([`exit`]) and its details.
    fn run_vcpu(&mut self, vcpu: &LoadedVcpu) -> [u64; 5];
    /// Physical address of the hypervisor's canary page.
    fn canary_page(&self) -> PhysAddr;
    /// FNV-1a 64 checksum of the canary page now.
    fn canary_checksum_now(&self) -> u64;
    /// FNV-1a 64 checksum of the canary page recorded at boot.
    fn canary_checksum_at_boot(&self) -> u64;
    /// x1..x3 of `DMA_FAULTS_READ`: the oldest DMA fault record the SMMU reported, and counters
    /// (`verso::iommu::event::fault_reply`). Without an SMMU: nothing recorded.
    fn dma_fault_read(&mut self) -> [u64; 3] {
        [0; 3]
    }
}

/// Handles one host HVC. `regs` holds the host's x0..x17 on entry and the reply on return.
///
/// The function ID is W0 (SMCCC: the upper half of x0 is ignored). An ID that is not implemented
/// gets x0 = `NOT_SUPPORTED` and every other register unchanged. Only registers that carry a
/// result are written; x4..x17 are always preserved.
pub fn handle_host_call(regs: &mut SmcccRegs, env: &mut impl HostCallEnv) {
    let function = regs[0] as u32;
    match function {
        fid::SMCCC_VERSION => regs[0] = SMCCC_VERSION_1_1,
        fid::SMCCC_ARCH_FEATURES => {
            // ARCH_FEATURES takes a 32-bit function ID in W1.
            let queried = regs[1] as u32;
            regs[0] = if implemented(queried) {
                ret::SUCCESS
            } else {
                ret::NOT_SUPPORTED
            } as u64;
        }
        fid::VENDOR_HYP_CALL_UID => {
            for (reg, word) in regs.iter_mut().zip(VERSO_UID) {
                *reg = u64::from(word);
            }
        }
        fid::VERSO_ABI_VERSION => {
            regs[0] = ret::SUCCESS as u64;
            regs[1] = VERSO_ABI_VERSION;
            regs[2] = host_call_bitmap();
        }
        fid::VERSO_HYP_CANARY => {
            regs[0] = ret::SUCCESS as u64;
            regs[1] = env.canary_page().raw();
            regs[2] = env.canary_checksum_now();
            regs[3] = env.canary_checksum_at_boot();
        }
        fid::DMA_FAULTS_READ => {
            regs[0] = ret::SUCCESS as u64;
            regs[1..4].copy_from_slice(&env.dma_fault_read());
        }
        f if implemented(f) => {
            let Some((own, plat)) = env.memory() else {
                regs[0] = ret::NOT_SUPPORTED as u64;
                return;
            };
            if f == fid::VCPU_RUN {
                return vcpu_run(regs, env);
            }
            match memory_call(own, plat, f, regs) {
                Ok(value) => {
                    regs[0] = ret::SUCCESS as u64;
                    if let Some(v) = value {
                        regs[1] = v;
                    }
                }
                Err(e) => regs[0] = error_code(e) as u64,
            }
        }
        _ => regs[0] = ret::NOT_SUPPORTED as u64,
    }
}

/// Bit `n` set for each implemented host call `VERSO_HOST_BASE + n`.
fn host_call_bitmap() -> u64 {
    (1u64 << HOST_CALLS) - 1
}

/// A VM handle from a register (16 bits; anything wider names no VM).
fn vm_handle(raw: u64) -> Result<VmHandle> {
    u16::try_from(raw)
        .map(VmHandle)
        .map_err(|_| Error::NotFound)
}

/// The calls that change ownership state; returns the value for x1, if the call has one.
fn memory_call<A: TableAllocator>(
    own: &Ownership<'_, A>,
    plat: &mut impl Platform,
    function: u32,
    regs: &SmcccRegs,
) -> Result<Option<u64>> {
    let a = [regs[1], regs[2], regs[3], regs[4], regs[5]];
    let call = match function {
        fid::HOST_SHARE_HYP => HostCall::ShareHyp,
        fid::HOST_UNSHARE_HYP => HostCall::UnshareHyp,
        fid::VM_CREATE => HostCall::CreateVm,
        fid::MEMCACHE_TOPUP => HostCall::TopupMemcache,
        fid::HOST_DONATE_GUEST => HostCall::DonateGuest,
        fid::HOST_SHARE_GUEST => HostCall::ShareGuest,
        fid::HOST_UNSHARE_GUEST => HostCall::UnshareGuest,
        fid::VM_RECLAIM => HostCall::ReclaimGuest,
        fid::VM_FINALIZE_TEARDOWN => HostCall::FinalizeTeardown,
        fid::HOST_RECLAIM_FORCE => HostCall::ForceReclaimGuest,
        fid::VCPU_CREATE => {
            let h = vm_handle(a[0])?;
            return own.create_vcpu(plat, h, a[1], a[2]).map(Some);
        }
        fid::VM_START_TEARDOWN => {
            let h = vm_handle(a[0])?;
            own.start_teardown(h)?;
            // The VM converts nothing any more: its log goes back to the host.
            let log = own.with_vms(|vms| vms.get_mut(h).ok().and_then(|vm| vm.run.convlog.take()));
            if let Some(log) = log {
                let released = own
                    .hyp_unpin_shared(log.pages())
                    .and_then(|()| own.host_unshare_hyp(log.pages()));
                crate::mem::committed(released);
            }
            return Ok(None);
        }
        fid::CONVLOG_REGISTER => return convlog_register(own, plat, a).map(|()| None),
        _ => return Err(Error::Invalid),
    };
    match own.host_call(plat, call, a) {
        // The contract: reclaiming from a VM that is not dying is a permission error.
        Err(Error::Busy) if call == HostCall::ReclaimGuest => Err(Error::Perm),
        Ok(v) if call == HostCall::CreateVm => Ok(Some(v)),
        r => r.map(|_| None),
    }
}

/// `CONVLOG_REGISTER(handle, pfn, nr_pages)`: share the pages with the hyp, pin them, write a
/// fresh header and attach the log to the VM.
fn convlog_register<A: TableAllocator>(
    own: &Ownership<'_, A>,
    plat: &mut impl Platform,
    a: [u64; 5],
) -> Result<()> {
    let h = vm_handle(a[0])?;
    let pages = pfn_range(a[1], a[2])?;
    own.with_vms(|vms| {
        let vm = vms.get_mut(h)?;
        if vm.dying {
            return Err(Error::Perm);
        }
        if vm.run.convlog.is_some() {
            return Err(Error::Busy);
        }
        own.host_share_hyp(pages)?;
        if let Err(e) = own.hyp_pin_shared(pages) {
            crate::mem::committed(own.host_unshare_hyp(pages));
            return Err(e);
        }
        // Any whole page holds the 64-byte header and at least one entry.
        vm.run.convlog = ConvLog::init(plat, pages);
        Ok(())
    })
}

/// `VCPU_RUN(handle, index, flags)`.
fn vcpu_run(regs: &mut SmcccRegs, env: &mut impl HostCallEnv) {
    let loaded = {
        let Some((own, plat)) = env.memory() else {
            return;
        };
        let flags = regs[3];
        let loaded = if flags & !1 != 0 {
            Err(Error::Invalid)
        } else {
            vm_handle(regs[1]).and_then(|h| own.load_vcpu(h, regs[2]))
        };
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                regs[0] = error_code(e) as u64;
                return;
            }
        };
        if flags & 1 != 0 {
            let ctx = plat.phys_to_ptr(loaded.ctx) as *mut VcpuContext;
            // SAFETY: the context page belongs to this vCPU, which this CPU just loaded (no
            // other CPU touches it until put); `phys_to_ptr` maps the whole page.
            unsafe { (*ctx).complete([regs[4], regs[5], regs[6], regs[7]]) };
        }
        loaded
    };
    let exit = env.run_vcpu(&loaded);
    if let Some((own, _)) = env.memory() {
        own.put_vcpu(&loaded);
    }
    regs[0] = ret::SUCCESS as u64;
    regs[1..6].copy_from_slice(&exit);
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{FakePlatform, FakeTableAllocator};

    struct FakeEnv;
    impl HostCallEnv for FakeEnv {
        type Tables = FakeTableAllocator;
        type Plat = FakePlatform;
        fn memory(
            &mut self,
        ) -> Option<(&Ownership<'static, FakeTableAllocator>, &mut FakePlatform)> {
            None
        }
        fn run_vcpu(&mut self, _vcpu: &LoadedVcpu) -> [u64; 5] {
            unreachable!("no memory, no vCPU")
        }
        fn canary_page(&self) -> PhysAddr {
            PhysAddr(0x4021_0000)
        }
        fn canary_checksum_now(&self) -> u64 {
            0x1111
        }
        fn canary_checksum_at_boot(&self) -> u64 {
            0x2222
        }
    }

    /// Registers with a distinct, recognisable value in each slot.
    fn regs_with(x0: u64) -> SmcccRegs {
        let mut regs = [0u64; SMCCC_REGS];
        for (i, r) in regs.iter_mut().enumerate() {
            *r = 0xdead_0000 + i as u64;
        }
        regs[0] = x0;
        regs
    }

    fn call(x0: u64) -> SmcccRegs {
        let mut regs = regs_with(x0);
        handle_host_call(&mut regs, &mut FakeEnv);
        regs
    }

    #[test]
    fn unknown_ids_return_not_supported_and_leave_other_registers_untouched() {
        for id in [
            0u64,
            0x8000_0002,
            0x8600_0000,
            0x8600_FF00,
            0xC600_0003,
            0xC600_8011,
            0xC600_80FF,
            0x8400_0000,
            0xC400_0003,
            u32::MAX as u64,
        ] {
            let before = regs_with(id);
            let after = call(id);
            assert_eq!(after[0] as i64, ret::NOT_SUPPORTED, "id {id:#x}");
            assert_eq!(after[1..], before[1..], "id {id:#x} changed x1..x17");
        }
    }

    #[test]
    fn smccc_version_is_1_1_and_nothing_else_changes() {
        let before = regs_with(fid::SMCCC_VERSION as u64);
        let after = call(fid::SMCCC_VERSION as u64);
        assert_eq!(after[0], 0x10001);
        assert_eq!(after[1..], before[1..]);
    }

    #[test]
    fn function_id_is_w0_upper_half_ignored() {
        let after = call(0xffff_ffff_0000_0000 | fid::SMCCC_VERSION as u64);
        assert_eq!(after[0], 0x10001);
    }

    #[test]
    fn arch_features_reports_exactly_the_implemented_ids() {
        let ids = IMPLEMENTED_SMCCC
            .into_iter()
            .chain((0..16).map(|n| fid::VERSO_HOST_BASE + n));
        for id in ids {
            let mut regs = regs_with(fid::SMCCC_ARCH_FEATURES as u64);
            regs[1] = id as u64;
            handle_host_call(&mut regs, &mut FakeEnv);
            assert_eq!(regs[0] as i64, ret::SUCCESS, "id {id:#x}");
        }
        for id in [0xC600_8011u32, 0x8600_0000, 0xC600_0003, 0xC400_0003] {
            let mut regs = regs_with(fid::SMCCC_ARCH_FEATURES as u64);
            regs[1] = id as u64;
            handle_host_call(&mut regs, &mut FakeEnv);
            assert_eq!(regs[0] as i64, ret::NOT_SUPPORTED, "id {id:#x}");
            assert_eq!(regs[1], id as u64);
        }
    }

    #[test]
    fn call_uid_returns_the_documented_words() {
        let before = regs_with(fid::VENDOR_HYP_CALL_UID as u64);
        let after = call(fid::VENDOR_HYP_CALL_UID as u64);
        assert_eq!(
            after[..4],
            [0xb802_a633, 0xb74f_a09f, 0x188b_aca4, 0x5ee9_eda7]
        );
        assert_eq!(after[4..], before[4..]);
    }

    #[test]
    fn uid_words_are_the_uuid_bytes_little_endian() {
        let uuid: [u8; 16] = [
            0x33, 0xa6, 0x02, 0xb8, 0x9f, 0xa0, 0x4f, 0xb7, 0xa4, 0xac, 0x8b, 0x18, 0xa7, 0xed,
            0xe9, 0x5e,
        ];
        for (i, word) in VERSO_UID.iter().enumerate() {
            let bytes: [u8; 4] = uuid[i * 4..i * 4 + 4].try_into().unwrap();
            assert_eq!(*word, u32::from_le_bytes(bytes));
        }
    }

    #[test]
    fn dma_faults_read_without_smmu_reports_nothing_and_preserves_x4_up() {
        let before = regs_with(fid::DMA_FAULTS_READ as u64);
        let after = call(fid::DMA_FAULTS_READ as u64);
        assert_eq!(after[..4], [0, 0, 0, 0]);
        assert_eq!(after[4..], before[4..]);
    }

    #[test]
    fn abi_version_reports_version_and_bitmap_of_host_calls() {
        let before = regs_with(fid::VERSO_ABI_VERSION as u64);
        let after = call(fid::VERSO_ABI_VERSION as u64);
        assert_eq!(after[0], 0);
        assert_eq!(after[1], 0x0000_0001);
        assert_eq!(after[2], 0x1_ffff);
        assert_eq!(after[3..], before[3..]);
    }

    #[test]
    fn canary_reports_page_and_both_checksums() {
        let before = regs_with(fid::VERSO_HYP_CANARY as u64);
        let after = call(fid::VERSO_HYP_CANARY as u64);
        assert_eq!(after[..4], [0, 0x4021_0000, 0x1111, 0x2222]);
        assert_eq!(after[4..], before[4..]);
    }

    #[test]
    fn every_error_has_its_documented_code_and_codes_are_distinct() {
        let table = [
            (Error::Invalid, -3),
            (Error::Perm, -4),
            (Error::Busy, -5),
            (Error::NoMem, -6),
            (Error::Range, -7),
            (Error::Align, -8),
            (Error::NotFound, -9),
        ];
        for (e, code) in table {
            assert_eq!(error_code(e), code, "{e:?}");
            assert_ne!(error_code(e), ret::NOT_SUPPORTED);
        }
        assert_eq!(result_code(Ok(())), 0);
        assert_eq!(result_code(Err(Error::Busy)), -5);
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // Reference values of the FNV-1a 64-bit hash (Fowler/Noll/Vo test suite).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
