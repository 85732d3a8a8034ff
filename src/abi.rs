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
//! page) comes in through [`HostCallEnv`]. The contract is documented in `docs/abi.md`; a call
//! that is not in that table answers `NOT_SUPPORTED` and changes nothing.

use crate::addr::PhysAddr;
use crate::error::Error;

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

/// Verso's host calls, in function-number order: bit `n` of the `VERSO_ABI_VERSION` bitmap is set
/// when `VERSO_HOST_BASE + n` is implemented.
const HOST_CALLS: [u32; 2] = [fid::VERSO_ABI_VERSION, fid::VERSO_HYP_CANARY];

/// Every function ID that [`handle_host_call`] implements (what `SMCCC_ARCH_FEATURES` reports).
const IMPLEMENTED: [u32; 5] = [
    fid::SMCCC_VERSION,
    fid::SMCCC_ARCH_FEATURES,
    fid::VENDOR_HYP_CALL_UID,
    fid::VERSO_ABI_VERSION,
    fid::VERSO_HYP_CANARY,
];

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
pub const fn result_code(result: Result<(), Error>) -> i64 {
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
    /// Physical address of the hypervisor's canary page.
    fn canary_page(&self) -> PhysAddr;
    /// FNV-1a 64 checksum of the canary page now.
    fn canary_checksum_now(&self) -> u64;
    /// FNV-1a 64 checksum of the canary page recorded at boot.
    fn canary_checksum_at_boot(&self) -> u64;
}

/// Handles one host HVC. `regs` holds the host's x0..x17 on entry and the reply on return.
///
/// The function ID is W0 (SMCCC: the upper half of x0 is ignored). An ID that is not implemented
/// gets x0 = `NOT_SUPPORTED` and every other register unchanged. Only registers that carry a
/// result are written; x4..x17 are always preserved.
pub fn handle_host_call(regs: &mut SmcccRegs, env: &impl HostCallEnv) {
    let function = regs[0] as u32;
    match function {
        fid::SMCCC_VERSION => regs[0] = SMCCC_VERSION_1_1,
        fid::SMCCC_ARCH_FEATURES => {
            // ARCH_FEATURES takes a 32-bit function ID in W1.
            let queried = regs[1] as u32;
            regs[0] = if IMPLEMENTED.contains(&queried) {
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
        _ => regs[0] = ret::NOT_SUPPORTED as u64,
    }
}

/// Bit `n` set for each implemented host call `VERSO_HOST_BASE + n`.
fn host_call_bitmap() -> u64 {
    HOST_CALLS
        .iter()
        .map(|&id| 1u64 << (id - fid::VERSO_HOST_BASE))
        .fold(0, |acc, bit| acc | bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeEnv;
    impl HostCallEnv for FakeEnv {
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
        handle_host_call(&mut regs, &FakeEnv);
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
            0xC600_8002,
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
        for id in IMPLEMENTED {
            let mut regs = regs_with(fid::SMCCC_ARCH_FEATURES as u64);
            regs[1] = id as u64;
            handle_host_call(&mut regs, &FakeEnv);
            assert_eq!(regs[0] as i64, ret::SUCCESS, "id {id:#x}");
        }
        for id in [0xC600_8002u32, 0x8600_0000, 0xC600_0003, 0xC400_0003] {
            let mut regs = regs_with(fid::SMCCC_ARCH_FEATURES as u64);
            regs[1] = id as u64;
            handle_host_call(&mut regs, &FakeEnv);
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
    fn abi_version_reports_version_and_bitmap_of_host_calls() {
        let before = regs_with(fid::VERSO_ABI_VERSION as u64);
        let after = call(fid::VERSO_ABI_VERSION as u64);
        assert_eq!(after[0], 0);
        assert_eq!(after[1], 0x0000_0001);
        assert_eq!(after[2], 0b11);
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
