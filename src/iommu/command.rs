//! SMMUv3 commands (Arm IHI 0070, chapter 4): the few Verso issues, encoded as the two 64-bit
//! words of a command-queue entry.

use crate::addr::{Ipa, Vmid};

/// Opcode of CFGI_STE.
pub const OP_CFGI_STE: u8 = 0x03;
/// Opcode of CFGI_STE_RANGE.
pub const OP_CFGI_STE_RANGE: u8 = 0x04;
/// Opcode of TLBI_S12_VMALL.
pub const OP_TLBI_S12_VMALL: u8 = 0x28;
/// Opcode of TLBI_S2_IPA.
pub const OP_TLBI_S2_IPA: u8 = 0x2a;
/// Opcode of TLBI_NSNH_ALL.
pub const OP_TLBI_NSNH_ALL: u8 = 0x30;
/// Opcode of CMD_SYNC.
pub const OP_CMD_SYNC: u8 = 0x46;

/// One command, before encoding.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Command {
    /// Forget the cached STE of one StreamID.
    CfgiSte {
        /// The StreamID.
        sid: u32,
    },
    /// Forget every cached STE (Range = 31 covers all StreamIDs).
    CfgiAllStes,
    /// Forget every cached translation (stage 2 and combined) of a VMID.
    TlbiS12Vmall {
        /// The VMID.
        vmid: Vmid,
    },
    /// Forget the stage-2 translations of `(num + 1) << scale` pages from `ipa` (range form,
    /// needs IDR3.RIL), or of the single page at `ipa` when `range` is false.
    TlbiS2Ipa {
        /// The VMID.
        vmid: Vmid,
        /// First IPA (page aligned).
        ipa: Ipa,
        /// `Some((num, scale))`: the range form; `None`: one page (TG = 0).
        range: Option<(u8, u8)>,
    },
    /// Forget every non-secure, non-hyp translation (every VMID).
    TlbiNsnhAll,
    /// Completes once every earlier command has; no interrupt, no MSI (Verso polls CONS).
    Sync,
}

impl Command {
    /// The opcode (bits [7:0] of the first word).
    pub const fn opcode(self) -> u8 {
        match self {
            Command::CfgiSte { .. } => OP_CFGI_STE,
            Command::CfgiAllStes => OP_CFGI_STE_RANGE,
            Command::TlbiS12Vmall { .. } => OP_TLBI_S12_VMALL,
            Command::TlbiS2Ipa { .. } => OP_TLBI_S2_IPA,
            Command::TlbiNsnhAll => OP_TLBI_NSNH_ALL,
            Command::Sync => OP_CMD_SYNC,
        }
    }

    /// The two little-endian words of the queue entry.
    pub fn encode(self) -> [u64; 2] {
        let op = u64::from(self.opcode());
        match self {
            // d1 bit 0 (Leaf) = 1: only the STE itself, no descriptors hang off a stage-2 STE.
            Command::CfgiSte { sid } => [op | u64::from(sid) << 32, 1],
            Command::CfgiAllStes => [op, 31],
            Command::TlbiS12Vmall { vmid } => [op | u64::from(vmid.0) << 32, 0],
            Command::TlbiS2Ipa { vmid, ipa, range } => {
                let page = ipa.raw() & 0x000f_ffff_ffff_f000;
                // Leaf = 0: table entries may have been removed too, so walk caches go as well.
                // TTL = 0 (no level hint).
                let (num, scale, tg) = match range {
                    Some((num, scale)) => (u64::from(num & 0x1f), u64::from(scale & 0x1f), 1),
                    None => (0, 0, 0),
                };
                [
                    op | num << 12 | scale << 20 | u64::from(vmid.0) << 32,
                    page | tg << 10,
                ]
            }
            Command::TlbiNsnhAll => [op, 0],
            // CS = 0 (SIG_NONE): completion is observed by CMDQ_CONS passing the SYNC.
            Command::Sync => [op, 0],
        }
    }

    /// Whether this command removes cached translations (what must be redone, more broadly, if
    /// the SMMU refuses it).
    pub const fn is_invalidation(self) -> bool {
        matches!(
            self,
            Command::TlbiS12Vmall { .. } | Command::TlbiS2Ipa { .. } | Command::TlbiNsnhAll
        )
    }
}

/// The largest number of range commands one [`ipa_range_commands`] call yields.
pub const MAX_RANGE_COMMANDS: usize = 4;

/// Splits `pages` pages from `start` into range-form TLBI_S2_IPA commands, each covering
/// `(num + 1) << scale` pages with `num < 32`: the lowest set bit of what is left picks the
/// scale, the next five bits the count. Returns `None` if more than [`MAX_RANGE_COMMANDS`] would
/// be needed (the caller then invalidates the whole VMID), or if `pages` is 0.
pub fn ipa_range_commands(
    vmid: Vmid,
    start: Ipa,
    pages: u64,
) -> Option<([Command; MAX_RANGE_COMMANDS], usize)> {
    if pages == 0 {
        return None;
    }
    let mut cmds = [Command::Sync; MAX_RANGE_COMMANDS];
    let mut n = 0;
    let (mut left, mut ipa) = (pages, start.raw());
    while left != 0 {
        let scale = left.trailing_zeros();
        if scale > 31 || n == MAX_RANGE_COMMANDS {
            return None;
        }
        // Bit `scale` is set, so `count` is odd: 1..=31 chunks of 2^scale pages, NUM = count - 1.
        let count = (left >> scale) & 0x1f;
        let covered = count << scale;
        cmds[n] = Command::TlbiS2Ipa {
            vmid,
            ipa: Ipa(ipa),
            range: Some(((count - 1) as u8, scale as u8)),
        };
        n += 1;
        left -= covered;
        ipa = ipa.checked_add(covered.checked_mul(crate::addr::PAGE_SIZE)?)?;
    }
    Some((cmds, n))
}
