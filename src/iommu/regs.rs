//! SMMUv3 register offsets and fields (Arm IHI 0070, chapter 6), as plain offsets used through
//! [`crate::platform::Mmio`]. Every register here is 32 bits wide unless its name says `64`: the
//! width matters, because a 64-bit read of a 32-bit register may return 0 (QEMU's does).

/// ID register 0: S2P, TTF, COHACC, VMID16, ST_LEVEL.
pub const IDR0: u64 = 0x00;
/// ID register 1: SIDSIZE, EVENTQS, CMDQS.
pub const IDR1: u64 = 0x04;
/// ID register 3: RIL.
pub const IDR3: u64 = 0x0c;
/// ID register 5: OAS and granules.
pub const IDR5: u64 = 0x14;
/// Control register 0 (SMMUEN, EVENTQEN, CMDQEN).
pub const CR0: u64 = 0x20;
/// Acknowledges CR0: a change is complete when CR0ACK equals it.
pub const CR0ACK: u64 = 0x24;
/// Table and queue memory attributes.
pub const CR1: u64 = 0x28;
/// PTM, RECINVSID, E2H.
pub const CR2: u64 = 0x2c;
/// Global bypass attribute: what happens to DMA while SMMUEN = 0.
pub const GBPA: u64 = 0x44;
/// Interrupt enables (Verso polls; all kept off).
pub const IRQ_CTRL: u64 = 0x50;
/// Acknowledges IRQ_CTRL.
pub const IRQ_CTRLACK: u64 = 0x54;
/// Global errors: a bit is active while it differs from the same bit of GERRORN.
pub const GERROR: u64 = 0x60;
/// Global error acknowledgement: toggled by software to match GERROR.
pub const GERRORN: u64 = 0x64;
/// Stream table base (64-bit).
pub const STRTAB_BASE_64: u64 = 0x80;
/// Stream table format and size.
pub const STRTAB_BASE_CFG: u64 = 0x88;
/// Command queue base (64-bit).
pub const CMDQ_BASE_64: u64 = 0x90;
/// Command queue producer index (written by software).
pub const CMDQ_PROD: u64 = 0x98;
/// Command queue consumer index and error code (written by the SMMU).
pub const CMDQ_CONS: u64 = 0x9c;
/// Event queue base (64-bit).
pub const EVENTQ_BASE_64: u64 = 0xa0;
/// Event queue producer index (page 1; written by the SMMU).
pub const EVENTQ_PROD: u64 = 0x1_00a8;
/// Event queue consumer index (page 1; written by software).
pub const EVENTQ_CONS: u64 = 0x1_00ac;

/// IDR0.S2P: stage-2 translation implemented.
pub const IDR0_S2P: u32 = 1 << 0;
/// IDR0.TTF bit 3: the AArch64 table format is implemented (TTF = 0b10 or 0b11).
pub const IDR0_TTF_AARCH64: u32 = 1 << 3;
/// IDR0.COHACC: table walks and queue accesses are IO-coherent.
pub const IDR0_COHACC: u32 = 1 << 4;
/// IDR0.VMID16: 16-bit VMIDs.
pub const IDR0_VMID16: u32 = 1 << 18;

/// IDR1.SIDSIZE: StreamID bits.
pub const fn idr1_sidsize(idr1: u32) -> u32 {
    idr1 & 0x3f
}
/// IDR1.EVENTQS: log2 of the largest event queue.
pub const fn idr1_eventqs(idr1: u32) -> u32 {
    (idr1 >> 16) & 0x1f
}
/// IDR1.CMDQS: log2 of the largest command queue.
pub const fn idr1_cmdqs(idr1: u32) -> u32 {
    (idr1 >> 21) & 0x1f
}
/// IDR3.RIL: range invalidation (TLBI_S2_IPA with NUM/SCALE/TG) implemented.
pub const IDR3_RIL: u32 = 1 << 10;
/// IDR5.GRAN4K: 4 KiB translation granule implemented.
pub const IDR5_GRAN4K: u32 = 1 << 4;

/// CR0.SMMUEN: translation on (otherwise GBPA decides).
pub const CR0_SMMUEN: u32 = 1 << 0;
/// CR0.EVENTQEN.
pub const CR0_EVENTQEN: u32 = 1 << 2;
/// CR0.CMDQEN.
pub const CR0_CMDQEN: u32 = 1 << 3;

/// CR1: tables and queues inner shareable, inner/outer write-back (the attributes of the hyp's
/// own mapping of that memory, so the SMMU and the CPUs agree on it).
pub const CR1_WB_ISH: u32 = 0b11 << 10 | 0b01 << 8 | 0b01 << 6 | 0b11 << 4 | 0b01 << 2 | 0b01;
/// CR2: PTM (no broadcast TLB maintenance: only commands invalidate) and RECINVSID (record
/// C_BAD_STREAMID events).
pub const CR2_PTM_RECINVSID: u32 = 1 << 2 | 1 << 1;

/// GBPA.UPDATE: set with a new value; the SMMU clears it once the value applies.
pub const GBPA_UPDATE: u32 = 1 << 31;
/// GBPA.ABORT: while SMMUEN = 0, every transaction is aborted (the reset value bypasses).
pub const GBPA_ABORT: u32 = 1 << 20;

/// GERROR.CMDQ_ERR: the command queue stopped at an erroneous command.
pub const GERROR_CMDQ_ERR: u32 = 1 << 0;
/// GERROR.EVENTQ_ABT_ERR: an event could not be written (queue full or abort): events were lost.
pub const GERROR_EVENTQ_ABT_ERR: u32 = 1 << 2;

/// STRTAB_BASE.RA and queue-base RA/WA: read/write-allocate hint (bit 62).
pub const BASE_ALLOCATE_HINT: u64 = 1 << 62;
/// Queue index field of CMDQ_CONS / EVENTQ_PROD etc.: bits [19:0] (index and wrap bit).
pub const QUEUE_INDEX_MASK: u32 = 0xf_ffff;
/// CMDQ_CONS.ERR: why the queue stopped.
pub const fn cmdq_cons_err(cons: u32) -> u8 {
    ((cons >> 24) & 0x7f) as u8
}
/// EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG.
pub const EVENTQ_OVERFLOW_FLAG: u32 = 1 << 31;

/// CMDQ_CONS.ERR: CERROR_ILL (illegal command).
pub const CERROR_ILL: u8 = 1;
/// CMDQ_CONS.ERR: CERROR_ABT (abort fetching the command).
pub const CERROR_ABT: u8 = 2;
