//! The SMMUv3 driver against a register-level model of an SMMU (behaving as QEMU 10.0's does:
//! commands consumed synchronously on the CMDQ_PROD write, CMDQ_CONS.ERR + GERROR.CMDQ_ERR on a
//! refused command, GERROR.EVENTQ_ABT_ERR when the event queue is full, 64-bit reads of 32-bit
//! registers returning 0) over fake physical memory.
//!
//! The tests read as the driver's specification: initialisation order, STE contents, command
//! encodings, completion by CMD_SYNC, error recovery, event decoding and overflow.

use verso::addr::{Ipa, PhysAddr, Vmid, PAGE_SIZE};
use verso::iommu::command::{self, ipa_range_commands, Command};
use verso::iommu::event::{self, FaultRecord, FAULT_LOG_CAPACITY};
use verso::iommu::regs::*;
use verso::iommu::ste::Ste;
use verso::iommu::{
    Smmu, SmmuConfig, SmmuError, SmmuMemory, CMDQ_BYTES, EVENTQ_BYTES, EVENTQ_LOG2,
    STREAM_TABLE_BYTES,
};
use verso::platform::{Mmio, PhysMemory};
use verso::testing::FakePlatform;

const SMMU_BASE: u64 = 0x0905_0000;
const ARENA: u64 = 0x4000_0000;
/// The host stage-2's VTCR as arch/ computes it: T0SZ 24, SL0 0b10 (level 0), IRGN/ORGN WBWA,
/// SH inner, TG 4K, PS 48 bits, VS, RES1.
const HOST_VTCR: u64 =
    24 | 0b10 << 6 | 0b01 << 8 | 0b01 << 10 | 0b11 << 12 | 0b101 << 16 | 1 << 19 | 1 << 31;
const HOST_ROOT: u64 = 0x4030_0000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    Read32(u64),
    Write32(u64, u32),
    Read64(u64),
    Write64(u64, u64),
}

/// The register model.
struct Model {
    idr: [u32; 6],
    cr0: u32,
    cr0ack: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    strtab_base: u64,
    strtab_cfg: u32,
    cmdq_base: u64,
    cmdq_prod: u32,
    cmdq_cons: u32,
    eventq_base: u64,
    eventq_prod: u32,
    eventq_cons: u32,
    /// Opcodes answered with CERROR_ILL.
    reject: Vec<u8>,
    /// Never consume commands (a wedged SMMU).
    wedged: bool,
    /// Every command consumed, in order.
    executed: Vec<[u64; 2]>,
    log: Vec<Access>,
    /// 64-bit accesses to 32-bit registers (and the reverse).
    width_violations: Vec<Access>,
}

const REGS64: [u64; 3] = [STRTAB_BASE_64, CMDQ_BASE_64, EVENTQ_BASE_64];

struct Fake {
    mem: FakePlatform,
    m: Model,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            mem: FakePlatform::new(PhysAddr(ARENA), 0x10_0000),
            m: Model {
                // QEMU 10.0 virt: IDR0 0x0D44101B, IDR1 0x02730010, IDR3 0x1414, IDR5 0x74.
                idr: [0x0d44_101b, 0x0273_0010, 0, 0x1414, 0, 0x74],
                cr0: 0,
                cr0ack: 0,
                cr1: 0,
                cr2: 0,
                gbpa: 0x1000,
                irq_ctrl: 0,
                gerror: 0,
                gerrorn: 0,
                strtab_base: 0,
                strtab_cfg: 0,
                cmdq_base: 0,
                cmdq_prod: 0,
                cmdq_cons: 0,
                eventq_base: 0,
                eventq_prod: 0,
                eventq_cons: 0,
                reject: Vec::new(),
                wedged: false,
                executed: Vec::new(),
                log: Vec::new(),
                width_violations: Vec::new(),
            },
        }
    }

    fn cmdq_log2(&self) -> u32 {
        (self.m.cmdq_base & 0x1f) as u32
    }

    fn consume(&mut self) {
        if self.m.cr0 & CR0_CMDQEN == 0 || self.m.wedged {
            return;
        }
        let log2 = self.cmdq_log2();
        let wrap = (1u32 << (log2 + 1)) - 1;
        loop {
            if (self.m.gerror ^ self.m.gerrorn) & GERROR_CMDQ_ERR != 0 {
                return;
            }
            let cons = self.m.cmdq_cons & wrap;
            if cons == self.m.cmdq_prod & wrap {
                return;
            }
            let base = self.m.cmdq_base & 0x000f_ffff_ffff_ffe0;
            let slot = PhysAddr(base + u64::from(cons & ((1 << log2) - 1)) * 16);
            let cmd = [self.mem.read_u64(slot), self.mem.read_u64(slot.add(8))];
            let op = (cmd[0] & 0xff) as u8;
            if self.m.reject.contains(&op) {
                self.m.cmdq_cons = cons | u32::from(CERROR_ILL) << 24;
                self.m.gerror ^= GERROR_CMDQ_ERR;
                return;
            }
            self.m.executed.push(cmd);
            // Like QEMU, ERR keeps its last value; only the index moves.
            self.m.cmdq_cons = (self.m.cmdq_cons & !QUEUE_INDEX_MASK) | ((cons + 1) & wrap);
        }
    }

    /// The SMMU records an event (as `smmuv3_record_event`): dropped with EVENTQ_ABT_ERR when full.
    fn raise_event(&mut self, words: [u64; 4]) {
        if self.m.cr0 & CR0_EVENTQEN == 0 {
            return;
        }
        let log2 = (self.m.eventq_base & 0x1f) as u32;
        let (p, c) = (self.m.eventq_prod, self.m.eventq_cons & QUEUE_INDEX_MASK);
        let full = (p ^ c) & ((1 << (log2 + 1)) - 1) == 1 << log2;
        if full {
            if (self.m.gerror ^ self.m.gerrorn) & GERROR_EVENTQ_ABT_ERR == 0 {
                self.m.gerror ^= GERROR_EVENTQ_ABT_ERR;
            }
            return;
        }
        let base = self.m.eventq_base & 0x000f_ffff_ffff_ffe0;
        let slot = PhysAddr(base + u64::from(p & ((1 << log2) - 1)) * 32);
        for (i, w) in words.iter().enumerate() {
            self.mem.write_u64(slot.add(i as u64 * 8), *w);
        }
        self.m.eventq_prod = (p + 1) & ((1 << (log2 + 1)) - 1);
    }

    fn ste(&self, sid: u32) -> [u64; 8] {
        let base = self.m.strtab_base & 0x000f_ffff_ffff_ffc0;
        core::array::from_fn(|i| {
            self.mem
                .read_u64(PhysAddr(base + u64::from(sid) * 64 + i as u64 * 8))
        })
    }

    fn executed_opcodes(&self) -> Vec<u8> {
        self.m
            .executed
            .iter()
            .map(|c| (c[0] & 0xff) as u8)
            .collect()
    }
}

impl PhysMemory for Fake {
    fn phys_to_ptr(&self, pa: PhysAddr) -> *mut u8 {
        self.mem.phys_to_ptr(pa)
    }
}

impl Mmio for Fake {
    fn read32(&mut self, pa: PhysAddr) -> u32 {
        let off = pa.raw() - SMMU_BASE;
        self.m.log.push(Access::Read32(off));
        if REGS64.contains(&off) {
            self.m.width_violations.push(Access::Read32(off));
        }
        match off {
            0x00..=0x14 => self.m.idr[(off / 4) as usize],
            CR0 => self.m.cr0,
            CR0ACK => self.m.cr0ack,
            CR1 => self.m.cr1,
            CR2 => self.m.cr2,
            GBPA => self.m.gbpa,
            IRQ_CTRL => self.m.irq_ctrl,
            IRQ_CTRLACK => self.m.irq_ctrl,
            GERROR => self.m.gerror,
            GERRORN => self.m.gerrorn,
            STRTAB_BASE_CFG => self.m.strtab_cfg,
            CMDQ_PROD => self.m.cmdq_prod,
            CMDQ_CONS => self.m.cmdq_cons,
            EVENTQ_PROD => self.m.eventq_prod,
            EVENTQ_CONS => self.m.eventq_cons,
            _ => 0,
        }
    }

    fn write32(&mut self, pa: PhysAddr, v: u32) {
        let off = pa.raw() - SMMU_BASE;
        self.m.log.push(Access::Write32(off, v));
        if REGS64.contains(&off) {
            self.m.width_violations.push(Access::Write32(off, v));
        }
        match off {
            CR0 => {
                self.m.cr0 = v;
                self.m.cr0ack = v;
                self.consume();
            }
            CR1 => self.m.cr1 = v,
            CR2 => self.m.cr2 = v,
            // A GBPA write without UPDATE is ignored.
            GBPA if v & GBPA_UPDATE != 0 => self.m.gbpa = v & !GBPA_UPDATE,
            IRQ_CTRL => self.m.irq_ctrl = v,
            GERRORN => {
                self.m.gerrorn = v;
                self.consume();
            }
            STRTAB_BASE_CFG => self.m.strtab_cfg = v,
            CMDQ_PROD => {
                self.m.cmdq_prod = v;
                self.consume();
            }
            CMDQ_CONS => self.m.cmdq_cons = v,
            EVENTQ_PROD => self.m.eventq_prod = v,
            EVENTQ_CONS => self.m.eventq_cons = v,
            _ => {}
        }
    }

    fn read64(&mut self, pa: PhysAddr) -> u64 {
        let off = pa.raw() - SMMU_BASE;
        self.m.log.push(Access::Read64(off));
        match off {
            STRTAB_BASE_64 => self.m.strtab_base,
            CMDQ_BASE_64 => self.m.cmdq_base,
            EVENTQ_BASE_64 => self.m.eventq_base,
            _ => {
                // QEMU answers a 64-bit read of a 32-bit register with 0.
                self.m.width_violations.push(Access::Read64(off));
                0
            }
        }
    }

    fn write64(&mut self, pa: PhysAddr, v: u64) {
        let off = pa.raw() - SMMU_BASE;
        self.m.log.push(Access::Write64(off, v));
        match off {
            STRTAB_BASE_64 => self.m.strtab_base = v,
            CMDQ_BASE_64 => self.m.cmdq_base = v,
            EVENTQ_BASE_64 => self.m.eventq_base = v,
            _ => self.m.width_violations.push(Access::Write64(off, v)),
        }
    }
}

fn memory() -> SmmuMemory {
    SmmuMemory {
        stream_table: PhysAddr(ARENA),
        cmdq: PhysAddr(ARENA + STREAM_TABLE_BYTES),
        eventq: PhysAddr(ARENA + STREAM_TABLE_BYTES + CMDQ_BYTES),
    }
}

fn config(streams: core::ops::Range<u32>) -> SmmuConfig {
    SmmuConfig {
        base: PhysAddr(SMMU_BASE),
        memory: memory(),
        host_vtcr: HOST_VTCR,
        host_root: PhysAddr(HOST_ROOT),
        host_vmid: Vmid::HOST,
        host_streams: streams,
    }
}

fn up() -> (Fake, Smmu) {
    let mut f = Fake::new();
    let s = Smmu::init(&mut f, &config(0..0x1_0000)).expect("init");
    f.m.executed.clear();
    f.m.log.clear();
    (f, s)
}

fn fault_words(kind: u8, sid: u32, addr: u64, read: bool) -> [u64; 4] {
    let w3: u64 = 0x280 | if read { 1 << 3 } else { 0 };
    [u64::from(kind) | u64::from(sid) << 32, w3 << 32, addr, addr]
}

// ---------------------------------------------------------------------------------------------
// Initialisation

#[test]
fn init_sets_gbpa_abort_before_any_other_access() {
    let mut f = Fake::new();
    Smmu::init(&mut f, &config(0..0x1_0000)).unwrap();
    assert_eq!(f.m.log[0], Access::Write32(GBPA, GBPA_UPDATE | GBPA_ABORT));
    assert_eq!(f.m.gbpa, GBPA_ABORT, "GBPA must stay abort");
}

#[test]
fn init_enables_translation_last_after_invalidating_everything() {
    let mut f = Fake::new();
    Smmu::init(&mut f, &config(0..0x1_0000)).unwrap();
    let cr0_writes: Vec<u32> =
        f.m.log
            .iter()
            .filter_map(|a| match a {
                Access::Write32(CR0, v) => Some(*v),
                _ => None,
            })
            .collect();
    assert_eq!(
        cr0_writes,
        [
            0,
            CR0_CMDQEN | CR0_EVENTQEN,
            CR0_CMDQEN | CR0_EVENTQEN | CR0_SMMUEN
        ]
    );
    assert_eq!(
        f.executed_opcodes(),
        [
            command::OP_CFGI_STE_RANGE,
            command::OP_TLBI_NSNH_ALL,
            command::OP_CMD_SYNC
        ]
    );
    // The stream table and queues were programmed before the queues were enabled.
    let enable_q =
        f.m.log
            .iter()
            .position(|a| *a == Access::Write32(CR0, CR0_CMDQEN | CR0_EVENTQEN))
            .unwrap();
    for reg in [STRTAB_BASE_64, CMDQ_BASE_64, EVENTQ_BASE_64] {
        let at =
            f.m.log
                .iter()
                .position(|a| matches!(a, Access::Write64(r, _) if *r == reg))
                .unwrap();
        assert!(at < enable_q, "register {reg:#x} written after CR0");
    }
    assert!(
        f.m.width_violations.is_empty(),
        "{:?}",
        f.m.width_violations
    );
}

#[test]
fn init_programs_a_linear_stream_table_for_bus_0_and_the_queues() {
    let mut f = Fake::new();
    Smmu::init(&mut f, &config(0..0x1_0000)).unwrap();
    let m = memory();
    assert_eq!(f.m.strtab_base, m.stream_table.raw() | 1 << 62);
    assert_eq!(f.m.strtab_cfg, 8, "FMT linear, LOG2SIZE 8 (256 StreamIDs)");
    assert_eq!(f.m.cmdq_base, m.cmdq.raw() | 1 << 62 | 8);
    assert_eq!(
        f.m.eventq_base,
        m.eventq.raw() | 1 << 62 | u64::from(EVENTQ_LOG2)
    );
    assert_eq!(f.m.cr1, 0xd75);
    assert_eq!(f.m.cr2, 0x6);
    assert_eq!(f.m.irq_ctrl, 0);
}

#[test]
fn host_streams_translate_through_the_host_stage2_and_others_abort() {
    let mut f = Fake::new();
    let smmu = Smmu::init(&mut f, &config(0x08..0x10)).unwrap();
    let host = f.ste(0x08);
    // V = 1, Config = 0b110 (stage 2 only).
    assert_eq!(host[0], 0xd);
    assert_eq!(host[1], 0);
    let vmid = host[2] & 0xffff;
    let w5 = host[2] >> 32;
    assert_eq!(vmid, 0, "S2VMID = the host VMID");
    assert_eq!(w5 & 0x3f, 24, "S2T0SZ = VTCR.T0SZ");
    assert_eq!((w5 >> 6) & 3, 0b10, "S2SL0 = VTCR.SL0 (start at level 0)");
    assert_eq!((w5 >> 8) & 3, 0b01, "S2IR0");
    assert_eq!((w5 >> 10) & 3, 0b01, "S2OR0");
    assert_eq!((w5 >> 12) & 3, 0b11, "S2SH0");
    assert_eq!((w5 >> 14) & 3, 0, "S2TG = 4 KiB");
    assert_eq!((w5 >> 16) & 7, 0b101, "S2PS = VTCR.PS");
    assert_eq!((w5 >> 19) & 1, 1, "S2AA64 (0 crashes QEMU)");
    assert_eq!((w5 >> 20) & 1, 0, "S2ENDI little endian");
    assert_eq!((w5 >> 21) & 1, 0, "S2AFFD = 0: leaves carry AF");
    assert_eq!((w5 >> 25) & 1, 0, "S2S = 0: no stall");
    assert_eq!((w5 >> 26) & 1, 1, "S2R: stage-2 faults are recorded");
    assert_eq!(host[3], HOST_ROOT, "S2TTB = host root");
    assert_eq!(f.ste(0x0f), host);
    for sid in [0u32, 7, 0x10, 0xff] {
        assert_eq!(
            f.ste(sid),
            [1, 0, 0, 0, 0, 0, 0, 0],
            "sid {sid:#x} must abort"
        );
    }
    assert!(smmu.ste(&mut f, 0x08).unwrap().translates());
    assert!(!smmu.ste(&mut f, 0x10).unwrap().translates());
    assert_eq!(smmu.ste(&mut f, 0x100), None);
}

#[test]
fn ste_geometry_is_the_host_vtcr_bit_for_bit() {
    for vtcr in [HOST_VTCR, 25 | 0b01 << 6 | 0b010 << 16 | 1 << 31] {
        let ste = Ste::stage2(Vmid(3), vtcr, PhysAddr(0x8000_0000));
        assert_eq!((ste.0[2] >> 32) & 0x7_ffff, vtcr & 0x7_ffff);
        assert_eq!(ste.0[2] & 0xffff, 3);
    }
}

#[test]
fn init_refuses_an_smmu_without_what_verso_needs_and_dma_stays_aborted() {
    let cases: [(usize, u32, &str); 4] = [
        (0, IDR0_S2P, "stage 2 (IDR0.S2P)"),
        (0, IDR0_TTF_AARCH64, "AArch64 tables (IDR0.TTF)"),
        (0, IDR0_COHACC, "coherent walks (IDR0.COHACC)"),
        (5, IDR5_GRAN4K, "4 KiB granule (IDR5.GRAN4K)"),
    ];
    for (idr, bit, what) in cases {
        let mut f = Fake::new();
        f.m.idr[idr] &= !bit;
        let r = Smmu::init(&mut f, &config(0..0x1_0000));
        assert_eq!(r.err(), Some(SmmuError::Unsupported(what)));
        assert_eq!(f.m.gbpa, GBPA_ABORT);
        assert_eq!(f.m.cr0 & CR0_SMMUEN, 0);
    }
}

#[test]
fn init_refuses_misaligned_memory() {
    let mut f = Fake::new();
    let mut cfg = config(0..0x1_0000);
    cfg.memory.stream_table = PhysAddr(ARENA + PAGE_SIZE);
    assert_eq!(Smmu::init(&mut f, &cfg).err(), Some(SmmuError::Align));
    assert_eq!(f.m.gbpa, GBPA_ABORT);
}

#[test]
fn init_times_out_instead_of_hanging_on_a_wedged_smmu() {
    let mut f = Fake::new();
    f.m.wedged = true;
    assert_eq!(
        Smmu::init(&mut f, &config(0..0x1_0000)).err(),
        Some(SmmuError::Timeout("CMDQ_CONS to reach CMDQ_PROD"))
    );
    assert_eq!(f.m.cr0 & CR0_SMMUEN, 0, "translation never enabled");
}

// ---------------------------------------------------------------------------------------------
// Commands

#[test]
fn command_encodings_match_ihi0070() {
    let v = Vmid(0x1234);
    assert_eq!(
        Command::CfgiSte { sid: 0x10 }.encode(),
        [0x03 | 0x10 << 32, 1]
    );
    assert_eq!(Command::CfgiAllStes.encode(), [0x04, 31]);
    assert_eq!(
        Command::TlbiS12Vmall { vmid: v }.encode(),
        [0x28 | 0x1234 << 32, 0]
    );
    assert_eq!(
        Command::TlbiS2Ipa {
            vmid: v,
            ipa: Ipa(0x4567_8000),
            range: None
        }
        .encode(),
        [0x2a | 0x1234 << 32, 0x4567_8000]
    );
    assert_eq!(
        Command::TlbiS2Ipa {
            vmid: v,
            ipa: Ipa(0x4567_8000),
            range: Some((3, 5))
        }
        .encode(),
        [
            0x2a | 3 << 12 | 5 << 20 | 0x1234 << 32,
            0x4567_8000 | 1 << 10
        ]
    );
    assert_eq!(Command::TlbiNsnhAll.encode(), [0x30, 0]);
    assert_eq!(Command::Sync.encode(), [0x46, 0]);
}

/// Pages covered by range-form commands, as the SMMU computes them.
fn covered(cmds: &[Command]) -> Vec<(u64, u64)> {
    cmds.iter()
        .map(|c| match *c {
            Command::TlbiS2Ipa {
                ipa,
                range: Some((num, scale)),
                ..
            } => (ipa.raw() / PAGE_SIZE, (u64::from(num) + 1) << scale),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn range_commands_cover_exactly_the_range_contiguously() {
    for pages in 1..=2048u64 {
        let start = Ipa(0x4000_0000 + 7 * PAGE_SIZE);
        let (cmds, n) = ipa_range_commands(Vmid::HOST, start, pages).expect("fits");
        let mut next = start.raw() / PAGE_SIZE;
        for (first, count) in covered(&cmds[..n]) {
            assert_eq!(first, next, "pages {pages}: gap or overlap");
            next += count;
        }
        assert_eq!(next, start.raw() / PAGE_SIZE + pages, "pages {pages}");
        if pages < 1024 {
            assert!(n <= 2, "{pages} pages took {n} commands");
        }
    }
    assert!(ipa_range_commands(Vmid::HOST, Ipa(0), 0).is_none());
}

#[test]
fn invalidation_is_one_batch_ending_in_a_completed_cmd_sync() {
    let (mut f, mut s) = up();
    s.invalidate_ipa_range(&mut f, Vmid::HOST, Ipa(0x4400_0000), 1)
        .unwrap();
    assert_eq!(f.executed_opcodes(), [0x2a, 0x46]);
    assert_eq!(
        f.m.executed[0],
        [0x2a, 0x4400_0000 | 1 << 10],
        "one page, range form"
    );
    // The call returned only once CONS had reached PROD (the SYNC was consumed).
    assert_eq!(f.m.cmdq_cons & 0x1ff, f.m.cmdq_prod);
    let prod_writes =
        f.m.log
            .iter()
            .filter(|a| matches!(a, Access::Write32(CMDQ_PROD, _)))
            .count();
    assert_eq!(prod_writes, 1, "one batch per call");
    assert_eq!(s.stats().invalidations, 1);
}

#[test]
fn a_range_costs_the_same_commands_as_a_page() {
    let (mut f, mut s) = up();
    s.invalidate_ipa_range(&mut f, Vmid::HOST, Ipa(0x4400_0000), 512)
        .unwrap();
    assert_eq!(f.executed_opcodes(), [0x2a, 0x46]);
    assert_eq!(
        f.m.executed[0][0],
        0x2a | 9 << 20,
        "NUM 0, SCALE 9: 512 pages"
    );
}

#[test]
fn huge_or_unexpressible_ranges_invalidate_the_whole_vmid() {
    let (mut f, mut s) = up();
    s.invalidate_ipa_range(
        &mut f,
        Vmid::HOST,
        Ipa(0x4000_0000),
        0b1010_1010_1010_1010_1010_1011,
    )
    .unwrap();
    assert_eq!(f.executed_opcodes(), [0x28, 0x46]);
}

#[test]
fn without_range_invalidation_small_ranges_go_page_by_page() {
    let mut f = Fake::new();
    f.m.idr[3] &= !IDR3_RIL;
    let mut s = Smmu::init(&mut f, &config(0..0x1_0000)).unwrap();
    assert!(!s.uses_range_invalidation());
    f.m.executed.clear();
    s.invalidate_ipa_range(&mut f, Vmid::HOST, Ipa(0x4400_0000), 3)
        .unwrap();
    assert_eq!(
        f.m.executed,
        [
            [0x2a, 0x4400_0000],
            [0x2a, 0x4400_1000],
            [0x2a, 0x4400_2000],
            [0x46, 0]
        ]
    );
    f.m.executed.clear();
    s.invalidate_ipa_range(&mut f, Vmid::HOST, Ipa(0x4400_0000), 100)
        .unwrap();
    assert_eq!(f.executed_opcodes(), [0x28, 0x46]);
}

#[test]
fn vmids_without_streams_need_no_smmu_invalidation() {
    let (mut f, mut s) = up();
    s.invalidate_ipa_range(&mut f, Vmid(5), Ipa(0x4400_0000), 1)
        .unwrap();
    s.invalidate_vmid(&mut f, Vmid(5)).unwrap();
    assert!(f.m.executed.is_empty());
    s.invalidate_vmid(&mut f, Vmid::HOST).unwrap();
    assert_eq!(f.m.executed, [[0x28, 0], [0x46, 0]]);
}

#[test]
fn queue_indices_wrap_correctly_over_many_batches() {
    let (mut f, mut s) = up();
    for i in 0..1000u64 {
        f.m.executed.clear();
        s.invalidate_ipa_range(&mut f, Vmid::HOST, Ipa(0x4000_0000 + i * PAGE_SIZE), 1)
            .unwrap();
        assert_eq!(f.executed_opcodes(), [0x2a, 0x46], "batch {i}");
    }
}

// ---------------------------------------------------------------------------------------------
// Error recovery

#[test]
fn a_refused_invalidation_is_skipped_acknowledged_and_replaced_by_a_vmid_wide_one() {
    let (mut f, mut s) = up();
    f.m.reject = vec![command::OP_TLBI_S2_IPA];
    s.invalidate_ipa_range(&mut f, Vmid::HOST, Ipa(0x4400_0000), 1)
        .unwrap();
    // The bad command was replaced by a SYNC in place; then the fallback batch ran.
    assert_eq!(f.executed_opcodes(), [0x46, 0x46, 0x28, 0x46]);
    assert_eq!(
        (f.m.gerror ^ f.m.gerrorn) & GERROR_CMDQ_ERR,
        0,
        "error acknowledged"
    );
    assert_eq!(s.stats().command_errors, 1);
    assert!(!s.failed_safe());
    // The queue keeps working afterwards.
    f.m.reject.clear();
    f.m.executed.clear();
    s.invalidate_ipa_range(&mut f, Vmid::HOST, Ipa(0x4400_0000), 1)
        .unwrap();
    assert_eq!(f.executed_opcodes(), [0x2a, 0x46]);
}

#[test]
fn when_vmid_invalidation_is_refused_too_everything_is_invalidated() {
    let (mut f, mut s) = up();
    f.m.reject = vec![command::OP_TLBI_S2_IPA, command::OP_TLBI_S12_VMALL];
    s.invalidate_ipa_range(&mut f, Vmid::HOST, Ipa(0x4400_0000), 1)
        .unwrap();
    assert_eq!(f.executed_opcodes(), [0x46, 0x46, 0x46, 0x46, 0x30, 0x46]);
    assert_eq!(s.stats().command_errors, 2);
}

#[test]
fn when_nothing_can_be_invalidated_dma_is_turned_off() {
    let (mut f, mut s) = up();
    f.m.reject = vec![0x2a, 0x28, 0x30];
    assert_eq!(
        s.invalidate_ipa_range(&mut f, Vmid::HOST, Ipa(0x4400_0000), 1),
        Err(SmmuError::FailedSafe)
    );
    assert!(s.failed_safe());
    assert_eq!(f.m.cr0 & CR0_SMMUEN, 0);
    assert_eq!(f.m.gbpa, GBPA_ABORT);
}

#[test]
fn a_wedged_queue_times_out_and_fails_safe_instead_of_hanging() {
    let (mut f, mut s) = up();
    f.m.wedged = true;
    assert_eq!(
        s.invalidate_vmid(&mut f, Vmid::HOST),
        Err(SmmuError::FailedSafe)
    );
    assert_eq!(f.m.cr0, 0);
    assert_eq!(f.m.gbpa, GBPA_ABORT);
}

// ---------------------------------------------------------------------------------------------
// Events

#[test]
fn events_decode_type_streamid_address_and_direction() {
    let (mut f, mut s) = up();
    f.raise_event(fault_words(event::F_TRANSLATION, 0x08, 0x4020_0000, false));
    f.raise_event(fault_words(event::F_TRANSLATION, 0x10, 0x4020_1004, true));
    f.raise_event([u64::from(event::C_BAD_STREAMID) | 0x100 << 32, 0, 0, 0]);
    assert_eq!(s.poll_events(&mut f), 3);
    assert_eq!(
        s.pop_fault(),
        Some(FaultRecord {
            kind: 0x10,
            stream_id: 8,
            address: 0x4020_0000,
            read: false,
            stage2: true
        })
    );
    assert_eq!(
        s.pop_fault(),
        Some(FaultRecord {
            kind: 0x10,
            stream_id: 0x10,
            address: 0x4020_1004,
            read: true,
            stage2: true
        })
    );
    assert_eq!(
        s.pop_fault(),
        Some(FaultRecord {
            kind: 2,
            stream_id: 0x100,
            address: 0,
            read: false,
            stage2: false
        })
    );
    assert_eq!(s.pop_fault(), None);
    assert_eq!(
        f.m.eventq_cons & QUEUE_INDEX_MASK,
        3,
        "consumed entries handed back"
    );
    assert_eq!(s.stats().events, 3);
    assert_eq!(s.stats().overflows, 0);
}

#[test]
fn event_queue_overflow_is_counted_acknowledged_and_later_events_are_recorded() {
    let (mut f, mut s) = up();
    let capacity = 1u64 << EVENTQ_LOG2;
    // A large faulting DMA: one event per 4 bytes, far more than the queue holds.
    for i in 0..1024u64 {
        f.raise_event(fault_words(
            event::F_TRANSLATION,
            8,
            0x4020_0000 + 4 * i,
            false,
        ));
    }
    assert_ne!((f.m.gerror ^ f.m.gerrorn) & GERROR_EVENTQ_ABT_ERR, 0);
    assert_eq!(s.poll_events(&mut f) as u64, capacity);
    assert_eq!(s.stats().overflows, 1);
    assert_eq!(
        (f.m.gerror ^ f.m.gerrorn) & GERROR_EVENTQ_ABT_ERR,
        0,
        "acknowledged"
    );
    // The log kept the most recent records and counted what it dropped.
    assert_eq!(s.pending_faults(), FAULT_LOG_CAPACITY);
    assert_eq!(s.dropped_faults(), capacity - FAULT_LOG_CAPACITY as u64);
    while s.pop_fault().is_some() {}
    // Later faults are recorded again.
    f.raise_event(fault_words(event::F_TRANSLATION, 8, 0x4020_3000, true));
    assert_eq!(s.poll_events(&mut f), 1);
    assert_eq!(
        s.pop_fault().map(|r| (r.address, r.read)),
        Some((0x4020_3000, true))
    );
    assert_eq!(s.stats().overflows, 1, "no second overflow");
}

#[test]
fn event_queue_wraps_over_many_drains() {
    let (mut f, mut s) = up();
    for round in 0..10u64 {
        for i in 0..100u64 {
            f.raise_event(fault_words(
                event::F_PERMISSION,
                8,
                round << 20 | i << 2,
                false,
            ));
        }
        assert_eq!(s.poll_events(&mut f), 100, "round {round}");
        for _ in 0..36 {
            s.pop_fault();
        }
        let mut last = None;
        while let Some(r) = s.pop_fault() {
            last = Some(r.address);
        }
        assert_eq!(last, Some(round << 20 | 99 << 2));
    }
    assert_eq!(s.stats().overflows, 0);
}

#[test]
fn no_64bit_access_touches_a_32bit_register() {
    let (mut f, mut s) = up();
    f.raise_event(fault_words(event::F_TRANSLATION, 8, 0x4020_0000, false));
    s.poll_events(&mut f);
    s.invalidate_ipa_range(&mut f, Vmid::HOST, Ipa(0x4400_0000), 7)
        .unwrap();
    assert!(
        f.m.width_violations.is_empty(),
        "{:?}",
        f.m.width_violations
    );
}

#[test]
fn queue_sizes_fit_one_page_each_and_stream_table_is_16k() {
    assert_eq!(STREAM_TABLE_BYTES, 16 * 1024);
    assert_eq!(CMDQ_BYTES, PAGE_SIZE);
    assert_eq!(EVENTQ_BYTES, PAGE_SIZE);
}

#[test]
fn dma_faults_read_reply_names_device_type_address_and_direction() {
    let (mut f, mut s) = up();
    assert_eq!(s.read_fault(&mut f), [0, 0, 0], "nothing recorded yet");
    f.raise_event(fault_words(event::F_TRANSLATION, 0x08, 0x4020_0000, true));
    f.raise_event(fault_words(event::F_TRANSLATION, 0x08, 0x4020_0004, false));
    assert_eq!(
        s.read_fault(&mut f),
        [
            1 << 63 | 1 << 41 | 1 << 40 | 0x10 << 32 | 0x08,
            0x4020_0000,
            1
        ]
    );
    assert_eq!(
        s.read_fault(&mut f),
        [1 << 63 | 1 << 41 | 0x10 << 32 | 0x08, 0x4020_0004, 0]
    );
    assert_eq!(s.read_fault(&mut f), [0, 0, 0]);
}

#[test]
fn polling_an_idle_smmu_costs_two_register_reads() {
    let (mut f, mut s) = up();
    assert_eq!(s.poll_events(&mut f), 0);
    assert_eq!(
        f.m.log,
        [Access::Read32(GERROR), Access::Read32(EVENTQ_PROD)]
    );
}
