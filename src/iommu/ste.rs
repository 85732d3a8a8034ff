//! Stream table entries (Arm IHI 0070, section 5.2): the two kinds Verso writes.
//!
//! - **Abort**: V = 1, Config = 0b000. Every transaction of that StreamID is terminated with an
//!   abort; no event is recorded (the device simply sees an error).
//! - **Host stage-2**: V = 1, Config = 0b110 (stage 1 bypass, stage 2 translate) with the *host's
//!   own* stage-2 root and VMID, and the walk geometry copied bit for bit from the host's
//!   VTCR_EL2, so the SMMU walks exactly the tables the CPUs walk for the host.

use crate::addr::{PhysAddr, Vmid};

/// Bytes per STE.
pub const STE_BYTES: u64 = 64;

/// DW0.V.
const V: u64 = 1;
/// DW0.Config = 0b110: stage 1 bypass, stage 2 translate.
const CONFIG_S2_TRANSLATE: u64 = 0b110 << 1;

/// STE word 5 (DW2 bits [63:32]) bits [18:0] have the layout of VTCR_EL2 bits [18:0]: S2T0SZ,
/// S2SL0, S2IR0, S2OR0, S2SH0, S2TG, S2PS.
const VTCR_FIELDS: u64 = 0x7_ffff;
/// S2AA64: the AArch64 table format (0 would mean the AArch32 LPAE format).
const S2AA64: u64 = 1 << 19;
/// S2R: record stage-2 faults as events (so the hyp can say which device faulted where).
const S2R: u64 = 1 << 26;

/// An STE as its eight 64-bit words. Word 0 holds V and must be written last (see
/// [`crate::iommu::Smmu`]), so that the SMMU never sees a valid entry with stale fields.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Ste(pub [u64; 8]);

impl Ste {
    /// Valid, Config = abort: every transaction of the stream is terminated.
    pub const fn abort() -> Ste {
        Ste([V, 0, 0, 0, 0, 0, 0, 0])
    }

    /// Stage-2-only translation through the stage-2 whose root is `root`, tagged with `vmid`,
    /// walked with the geometry of `vtcr` (a VTCR_EL2 value: T0SZ, SL0, IRGN0, ORGN0, SH0, TG0,
    /// PS). S2AFFD = 0: every leaf Verso writes has AF = 1, and a leaf without it must fault for
    /// the device exactly as it does for the CPU. S2S = 0 (no stall: faults terminate).
    pub const fn stage2(vmid: Vmid, vtcr: u64, root: PhysAddr) -> Ste {
        let word5 = (vtcr & VTCR_FIELDS) | S2AA64 | S2R;
        Ste([
            V | CONFIG_S2_TRANSLATE,
            0,
            vmid.0 as u64 | word5 << 32,
            root.raw() & 0x000f_ffff_ffff_fff0,
            0,
            0,
            0,
            0,
        ])
    }

    /// Whether this entry translates (rather than aborts).
    pub const fn translates(&self) -> bool {
        self.0[0] & 0b1111 == V | CONFIG_S2_TRANSLATE
    }
}
