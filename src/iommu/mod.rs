//! The SMMUv3 driver: the hypervisor owns the SMMU, and the host's devices translate DMA through
//! **the host's own stage-2 tables** (docs/smmu.md).
//!
//! What this module owns: the SMMU's registers (hidden from the host's stage-2), the stream table,
//! the command queue and the event queue, all in hyp memory. What it guarantees:
//! - From the first register write on, DMA is aborted unless a stream table entry says otherwise
//!   (GBPA = abort is written before anything else: the reset value of GBPA is *bypass*).
//! - Every StreamID of a host device (those the caller lists, from the DTB's `iommu-map`) has a
//!   stage-2-only STE pointing at the host stage-2 root with the host VMID and the host's exact
//!   VTCR geometry: one descriptor write changes what the host's CPUs and its devices can reach.
//!   Every other StreamID of the table aborts; StreamIDs beyond it raise C_BAD_STREAMID (abort).
//! - [`Smmu::invalidate_ipa_range`] / [`Smmu::invalidate_vmid`] return only once the SMMU has
//!   completed the invalidation (a CMD_SYNC after it has been consumed). One batch per call.
//! - Nothing the SMMU does makes the hyp hang: every wait is bounded. A refused command is
//!   skipped, acknowledged and replaced by a broader invalidation; if the SMMU stops answering,
//!   the hyp turns translation off with GBPA = abort ("fail safe": all DMA refused).
//!
//! The driver polls: no interrupt is used. Events are drained by [`Smmu::poll_events`], which the
//! EL2 runtime calls at every host hypercall and whenever the host asks for fault records.
//!
//! Memory: the SMMU must be IO-coherent (IDR0.COHACC), because the host stage-2 is written by the
//! CPUs through their caches without cleaning to the point of coherency. QEMU's is.

pub mod command;
pub mod event;
pub mod regs;
pub mod ste;

use core::ops::Range;

use crate::addr::{Ipa, PhysAddr, Vmid};
use crate::platform::{Mmio, PhysMemory};
use command::{ipa_range_commands, Command};
use event::{FaultLog, FaultRecord, EVENT_BYTES};
use regs::*;
use ste::{Ste, STE_BYTES};

/// log2 of the number of stream table entries: 256, PCI bus 0 (StreamID = bus << 8 | devfn).
/// Devices behind bridges (bus >= 1) are outside the table and abort with C_BAD_STREAMID.
pub const STREAM_TABLE_LOG2: u32 = 8;
/// Bytes of the (linear) stream table; it must be aligned to its size.
pub const STREAM_TABLE_BYTES: u64 = STE_BYTES << STREAM_TABLE_LOG2;
/// log2 of the command queue entries (16 bytes each: 4 KiB).
pub const CMDQ_LOG2: u32 = 8;
/// Bytes of the command queue (aligned to its size).
pub const CMDQ_BYTES: u64 = 16 << CMDQ_LOG2;
/// log2 of the event queue entries (32 bytes each: 4 KiB). Small on purpose: a faulting DMA
/// raises one event per 4 bytes, so the overflow path is a normal path that must work.
pub const EVENTQ_LOG2: u32 = 7;
/// Bytes of the event queue (aligned to its size).
pub const EVENTQ_BYTES: u64 = EVENT_BYTES << EVENTQ_LOG2;

/// Above this many pages one TLBI_S12_VMALL replaces the per-page (no RIL) commands.
const MAX_PAGE_COMMANDS: u64 = 7;
/// Bound on every wait for the SMMU (register polls); QEMU answers on the first one.
pub const MAX_POLLS: u32 = 1 << 20;
/// The most commands one batch may hold, CMD_SYNC included (the queue is always empty when a
/// batch starts).
const MAX_BATCH: usize = MAX_PAGE_COMMANDS as usize + 1;

/// Why the SMMU could not be brought up, or a request could not be completed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SmmuError {
    /// The SMMU lacks something Verso needs (named).
    Unsupported(&'static str),
    /// Memory handed to the driver is not aligned to its size.
    Align,
    /// The SMMU did not acknowledge in [`MAX_POLLS`] polls (what was awaited).
    Timeout(&'static str),
    /// The SMMU refused a command: its opcode and CMDQ_CONS.ERR. It was skipped; the caller
    /// decides how to make up for it.
    Command {
        /// Opcode of the refused command.
        opcode: u8,
        /// CMDQ_CONS.ERR (1 = CERROR_ILL, 2 = CERROR_ABT).
        error: u8,
    },
    /// The driver has turned translation off (fail safe): all DMA is aborted.
    FailedSafe,
}

/// Where the driver's memory lives (hyp-owned, zeroed or not, each aligned to its size).
#[derive(Clone, Copy, Debug)]
pub struct SmmuMemory {
    /// [`STREAM_TABLE_BYTES`].
    pub stream_table: PhysAddr,
    /// [`CMDQ_BYTES`].
    pub cmdq: PhysAddr,
    /// [`EVENTQ_BYTES`].
    pub eventq: PhysAddr,
}

/// What the SMMU must translate, and how.
#[derive(Clone, Debug)]
pub struct SmmuConfig {
    /// Base of the register block (page 0; page 1 follows at +64 KiB).
    pub base: PhysAddr,
    /// The driver's memory.
    pub memory: SmmuMemory,
    /// VTCR_EL2 of the host stage-2 (geometry copied into the STEs).
    pub host_vtcr: u64,
    /// Root table of the host stage-2.
    pub host_root: PhysAddr,
    /// The host's VMID.
    pub host_vmid: Vmid,
    /// StreamIDs of the host's devices; the part inside the stream table translates through the
    /// host stage-2, every other entry aborts.
    pub host_streams: Range<u32>,
}

/// Counters, for diagnostics and the DMA_FAULTS_READ host call.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SmmuStats {
    /// Event records consumed from the event queue.
    pub events: u64,
    /// Times the event queue overflowed (GERROR.EVENTQ_ABT_ERR or EVENTQ_PROD.OVFLG): events
    /// were lost in between.
    pub overflows: u64,
    /// Commands the SMMU refused (skipped and made up for).
    pub command_errors: u64,
    /// Invalidation batches completed.
    pub invalidations: u64,
}

/// A ring index pair's state: `log2` entries, index with wrap bit at `log2`.
#[derive(Clone, Copy, Debug)]
struct Queue {
    base: PhysAddr,
    log2: u32,
    /// Software's index (PROD for the command queue, CONS for the event queue), with wrap bit.
    index: u32,
}

impl Queue {
    fn slot(&self, index: u32, entry_bytes: u64) -> PhysAddr {
        let mask = (1u32 << self.log2) - 1;
        self.base.add(u64::from(index & mask) * entry_bytes)
    }
    fn wrap_mask(&self) -> u32 {
        (1u32 << (self.log2 + 1)) - 1
    }
    fn next(&self, index: u32) -> u32 {
        index.wrapping_add(1) & self.wrap_mask()
    }
}

/// The SMMUv3, initialised and translating.
pub struct Smmu {
    base: PhysAddr,
    stream_table: PhysAddr,
    cmdq: Queue,
    eventq: Queue,
    range_invalidation: bool,
    host_vmid: Vmid,
    failed_safe: bool,
    /// GERRORN as last written: only software writes it, so reading it back is never needed.
    gerrorn: u32,
    /// EVENTQ_CONS.OVACKFLG as last written.
    eventq_ovack: u32,
    log: FaultLog,
    stats: SmmuStats,
}

fn write_words(p: &mut impl PhysMemory, pa: PhysAddr, words: &[u64]) {
    let ptr = p.phys_to_ptr(pa) as *mut u64;
    for (i, &w) in words.iter().enumerate() {
        // SAFETY: `pa` lies in driver memory the caller of `Smmu::init` handed over (hyp-owned,
        // mapped, 8-byte aligned, large enough: every offset comes from a queue/table slot).
        unsafe { ptr.add(i).write_volatile(w) };
    }
}

fn read_words<const N: usize>(p: &mut impl PhysMemory, pa: PhysAddr) -> [u64; N] {
    let ptr = p.phys_to_ptr(pa) as *const u64;
    // SAFETY: as in `write_words`.
    core::array::from_fn(|i| unsafe { ptr.add(i).read_volatile() })
}

impl Smmu {
    /// Brings the SMMU up: GBPA = abort first, then the checks of the ID registers, the stream
    /// table (host streams through the host stage-2, everything else abort), the queues, a full
    /// configuration and TLB invalidation, and finally SMMUEN.
    ///
    /// # Errors
    /// [`SmmuError::Align`] if driver memory is misaligned, [`SmmuError::Unsupported`] if the
    /// SMMU cannot do what Verso needs, [`SmmuError::Timeout`] if it does not acknowledge. On any
    /// error DMA stays aborted (GBPA) and translation off.
    pub fn init<P: Mmio + PhysMemory>(p: &mut P, cfg: &SmmuConfig) -> Result<Smmu, SmmuError> {
        let base = cfg.base;
        // Before anything else: while SMMUEN = 0, refuse DMA instead of letting it through.
        p.write32(base.add(GBPA), GBPA_UPDATE | GBPA_ABORT);
        poll(p, base.add(GBPA), GBPA_UPDATE, 0, "GBPA.UPDATE")?;
        // Translation off (a loader may have left it on); now GBPA = abort applies.
        p.write32(base.add(CR0), 0);
        poll(p, base.add(CR0ACK), u32::MAX, 0, "CR0ACK = 0")?;

        let idr0 = p.read32(base.add(IDR0));
        let idr1 = p.read32(base.add(IDR1));
        let idr3 = p.read32(base.add(IDR3));
        let idr5 = p.read32(base.add(IDR5));
        if idr0 & IDR0_S2P == 0 {
            return Err(SmmuError::Unsupported("stage 2 (IDR0.S2P)"));
        }
        if idr0 & IDR0_TTF_AARCH64 == 0 {
            return Err(SmmuError::Unsupported("AArch64 tables (IDR0.TTF)"));
        }
        if idr0 & IDR0_COHACC == 0 {
            return Err(SmmuError::Unsupported("coherent walks (IDR0.COHACC)"));
        }
        if idr5 & IDR5_GRAN4K == 0 {
            return Err(SmmuError::Unsupported("4 KiB granule (IDR5.GRAN4K)"));
        }
        if cfg.host_vmid.0 > 0xff && idr0 & IDR0_VMID16 == 0 {
            return Err(SmmuError::Unsupported("16-bit VMIDs (IDR0.VMID16)"));
        }
        if idr1_cmdqs(idr1) < CMDQ_LOG2 || idr1_eventqs(idr1) < EVENTQ_LOG2 {
            return Err(SmmuError::Unsupported("queue sizes (IDR1.CMDQS/EVENTQS)"));
        }
        let sid_bits = idr1_sidsize(idr1).min(STREAM_TABLE_LOG2);
        let m = &cfg.memory;
        if !m.stream_table.raw().is_multiple_of(STREAM_TABLE_BYTES)
            || !m.cmdq.raw().is_multiple_of(CMDQ_BYTES)
            || !m.eventq.raw().is_multiple_of(EVENTQ_BYTES)
        {
            return Err(SmmuError::Align);
        }

        // The stream table: V = 1 everywhere; word 0 of a translating entry is written last.
        let host = Ste::stage2(cfg.host_vmid, cfg.host_vtcr, cfg.host_root);
        for sid in 0..1u32 << sid_bits {
            let ste = if cfg.host_streams.contains(&sid) {
                host
            } else {
                Ste::abort()
            };
            let slot = m.stream_table.add(u64::from(sid) * STE_BYTES);
            write_words(p, slot.add(8), &ste.0[1..]);
            write_words(p, slot, &ste.0[..1]);
        }
        p.write32(base.add(CR1), CR1_WB_ISH);
        p.write32(base.add(CR2), CR2_PTM_RECINVSID);
        p.write64(
            base.add(STRTAB_BASE_64),
            m.stream_table.raw() | BASE_ALLOCATE_HINT,
        );
        // FMT = 0 (linear), LOG2SIZE.
        p.write32(base.add(STRTAB_BASE_CFG), sid_bits);
        p.write64(
            base.add(CMDQ_BASE_64),
            m.cmdq.raw() | BASE_ALLOCATE_HINT | u64::from(CMDQ_LOG2),
        );
        p.write32(base.add(CMDQ_PROD), 0);
        p.write32(base.add(CMDQ_CONS), 0);
        p.write64(
            base.add(EVENTQ_BASE_64),
            m.eventq.raw() | BASE_ALLOCATE_HINT | u64::from(EVENTQ_LOG2),
        );
        p.write32(base.add(EVENTQ_PROD), 0);
        p.write32(base.add(EVENTQ_CONS), 0);
        // Polled, not interrupt driven.
        p.write32(base.add(IRQ_CTRL), 0);
        poll(p, base.add(IRQ_CTRLACK), u32::MAX, 0, "IRQ_CTRLACK = 0")?;
        // Acknowledge whatever a previous owner left active.
        let gerror = p.read32(base.add(GERROR));
        p.write32(base.add(GERRORN), gerror);

        let queues = CR0_CMDQEN | CR0_EVENTQEN;
        p.write32(base.add(CR0), queues);
        poll(p, base.add(CR0ACK), u32::MAX, queues, "CR0ACK = queues on")?;

        let mut smmu = Smmu {
            base,
            stream_table: m.stream_table,
            cmdq: Queue {
                base: m.cmdq,
                log2: CMDQ_LOG2,
                index: 0,
            },
            eventq: Queue {
                base: m.eventq,
                log2: EVENTQ_LOG2,
                index: 0,
            },
            range_invalidation: idr3 & IDR3_RIL != 0,
            host_vmid: cfg.host_vmid,
            failed_safe: false,
            gerrorn: gerror,
            eventq_ovack: 0,
            log: FaultLog::new(),
            stats: SmmuStats::default(),
        };
        // Nothing cached may predate this configuration.
        smmu.submit(p, &[Command::CfgiAllStes, Command::TlbiNsnhAll])?;
        let on = queues | CR0_SMMUEN;
        p.write32(base.add(CR0), on);
        poll(p, base.add(CR0ACK), u32::MAX, on, "CR0ACK = SMMUEN")?;
        Ok(smmu)
    }

    /// The STE the SMMU reads for `sid`, or `None` outside the stream table.
    pub fn ste(&self, p: &mut impl PhysMemory, sid: u32) -> Option<Ste> {
        if sid >= 1 << STREAM_TABLE_LOG2 {
            return None;
        }
        let slot = self.stream_table.add(u64::from(sid) * STE_BYTES);
        Some(Ste(read_words::<8>(p, slot)))
    }

    /// Whether range invalidation (IDR3.RIL) is used.
    pub fn uses_range_invalidation(&self) -> bool {
        self.range_invalidation
    }

    /// Whether the driver gave up and turned translation off (all DMA aborted).
    pub fn failed_safe(&self) -> bool {
        self.failed_safe
    }

    /// The counters.
    pub fn stats(&self) -> SmmuStats {
        self.stats
    }

    /// Removes every cached stage-2 translation of `vmid` for `pages` pages from `start`, and
    /// returns once the SMMU has completed it: one batch (at most a few range commands, or one
    /// TLBI_S12_VMALL for large ranges, then CMD_SYNC). VMIDs no stream uses have nothing cached.
    ///
    /// # Errors
    /// Only [`SmmuError::FailedSafe`]: the SMMU refused or did not complete even the broadest
    /// invalidation, so the driver turned translation off (GBPA = abort). Either way no stale
    /// translation survives the call.
    pub fn invalidate_ipa_range<P: Mmio + PhysMemory>(
        &mut self,
        p: &mut P,
        vmid: Vmid,
        start: Ipa,
        pages: u64,
    ) -> Result<(), SmmuError> {
        if vmid != self.host_vmid || pages == 0 {
            return Ok(());
        }
        if self.range_invalidation {
            // The range commands go to the queue straight from where they were built.
            return match ipa_range_commands(vmid, start, pages) {
                Some((cmds, n)) => self.invalidate(p, &cmds[..n]),
                None => self.invalidate_vmid(p, vmid),
            };
        }
        let mut batch = [Command::Sync; MAX_BATCH];
        let n = if pages <= MAX_PAGE_COMMANDS {
            for (i, slot) in batch.iter_mut().take(pages as usize).enumerate() {
                *slot = Command::TlbiS2Ipa {
                    vmid,
                    ipa: start.add(i as u64 * crate::addr::PAGE_SIZE),
                    range: None,
                };
            }
            pages as usize
        } else {
            return self.invalidate_vmid(p, vmid);
        };
        self.invalidate(p, &batch[..n])
    }

    /// Removes every cached translation of `vmid` and waits for completion.
    ///
    /// # Errors
    /// As [`invalidate_ipa_range`](Self::invalidate_ipa_range).
    pub fn invalidate_vmid<P: Mmio + PhysMemory>(
        &mut self,
        p: &mut P,
        vmid: Vmid,
    ) -> Result<(), SmmuError> {
        if vmid != self.host_vmid {
            return Ok(());
        }
        self.invalidate(p, &[Command::TlbiS12Vmall { vmid }])
    }

    /// Runs an invalidation batch; if the SMMU refuses or times out, falls back to ever broader
    /// invalidations, and finally to turning translation off.
    fn invalidate<P: Mmio + PhysMemory>(
        &mut self,
        p: &mut P,
        cmds: &[Command],
    ) -> Result<(), SmmuError> {
        if self.failed_safe {
            // Translation is off: nothing is cached that could be used.
            return Err(SmmuError::FailedSafe);
        }
        let fallbacks = [
            Command::TlbiS12Vmall {
                vmid: self.host_vmid,
            },
            Command::TlbiNsnhAll,
        ];
        let mut result = self.submit(p, cmds);
        for fallback in fallbacks {
            match result {
                Ok(()) => break,
                Err(SmmuError::Command { .. }) => result = self.submit(p, &[fallback]),
                Err(_) => break,
            }
        }
        match result {
            Ok(()) => {
                self.stats.invalidations += 1;
                Ok(())
            }
            Err(_) => {
                self.fail_safe(p);
                Err(SmmuError::FailedSafe)
            }
        }
    }

    /// Turns translation off with GBPA = abort: every DMA is refused from now on.
    fn fail_safe(&mut self, p: &mut impl Mmio) {
        self.failed_safe = true;
        p.write32(self.base.add(GBPA), GBPA_UPDATE | GBPA_ABORT);
        p.write32(self.base.add(CR0), 0);
        log::error!("SMMU: invalidation could not be completed; all DMA is now aborted");
    }

    /// The SMMU refused the command at `cons`: counts and logs it, puts a CMD_SYNC in its place
    /// and restarts the queue by acknowledging the error. Out of line and cold, so that the
    /// hot polling loop of [`Self::submit`] carries none of its setup (the log's arguments).
    #[cold]
    #[inline(never)]
    fn skip_refused(&mut self, p: &mut (impl Mmio + PhysMemory), cons: u32) -> SmmuError {
        let slot = self.cmdq.slot(cons & QUEUE_INDEX_MASK, 16);
        let [word0, _] = read_words::<2>(p, slot);
        let error = cmdq_cons_err(cons);
        self.stats.command_errors += 1;
        log::warn!(
            "SMMU refused command {:#x} (CMDQ_CONS.ERR {error}); skipped",
            word0 & 0xff
        );
        write_words(p, slot, &Command::Sync.encode());
        self.gerrorn ^= GERROR_CMDQ_ERR;
        p.write32(self.base.add(GERRORN), self.gerrorn);
        SmmuError::Command {
            opcode: (word0 & 0xff) as u8,
            error,
        }
    }

    /// Writes `cmds` and a CMD_SYNC to the (empty) command queue and waits until the SMMU has
    /// consumed all of them. A command the SMMU refuses is replaced in place by a CMD_SYNC, the
    /// error acknowledged and the queue restarted; the first refusal is returned once the batch
    /// has drained, so that the caller can make up for it.
    fn submit<P: Mmio + PhysMemory>(
        &mut self,
        p: &mut P,
        cmds: &[Command],
    ) -> Result<(), SmmuError> {
        debug_assert!(cmds.len() < MAX_BATCH && cmds.len() < 1 << CMDQ_LOG2);
        let mut prod = self.cmdq.index;
        for cmd in cmds {
            write_words(p, self.cmdq.slot(prod, 16), &cmd.encode());
            prod = self.cmdq.next(prod);
        }
        write_words(p, self.cmdq.slot(prod, 16), &Command::Sync.encode());
        prod = self.cmdq.next(prod);
        self.cmdq.index = prod;
        // Mmio writes order earlier memory writes before them (DSB ST).
        p.write32(self.base.add(CMDQ_PROD), prod);

        let mut refused = None;
        for _ in 0..MAX_POLLS {
            let cons = p.read32(self.base.add(CMDQ_CONS));
            let active = p.read32(self.base.add(GERROR)) ^ self.gerrorn;
            if active & GERROR_CMDQ_ERR != 0 {
                let error = self.skip_refused(p, cons);
                refused.get_or_insert(error);
                continue;
            }
            if cons & self.cmdq.wrap_mask() == prod {
                return refused.map_or(Ok(()), Err);
            }
        }
        Err(SmmuError::Timeout("CMDQ_CONS to reach CMDQ_PROD"))
    }

    /// Drains the event queue into the fault log and handles event-queue overflow (counted,
    /// acknowledged, recording continues). Returns the number of records consumed.
    ///
    /// Cheap when nothing happened (two register reads), because the EL2 runtime calls it at
    /// every host hypercall.
    pub fn poll_events<P: Mmio + PhysMemory>(&mut self, p: &mut P) -> usize {
        let base = self.base;
        let active = p.read32(base.add(GERROR)) ^ self.gerrorn;
        let prod = p.read32(base.add(EVENTQ_PROD));
        let overflow_flag = prod & EVENTQ_OVERFLOW_FLAG;
        let mut cons = self.eventq.index;
        if prod & self.eventq.wrap_mask() == cons
            && active & GERROR_EVENTQ_ABT_ERR == 0
            && overflow_flag == self.eventq_ovack
        {
            return 0;
        }
        let mut consumed = 0;
        // At most one queue's worth per call: bounded work even if the SMMU keeps producing.
        while cons != prod & self.eventq.wrap_mask() && consumed < 1 << EVENTQ_LOG2 {
            let words = read_words::<4>(p, self.eventq.slot(cons, EVENT_BYTES));
            self.log.push(FaultRecord::decode(words));
            cons = self.eventq.next(cons);
            consumed += 1;
        }
        self.eventq.index = cons;
        if overflow_flag != self.eventq_ovack {
            // An SMMU that reports overflow through EVENTQ_PROD.OVFLG (QEMU does not).
            self.stats.overflows += 1;
            self.eventq_ovack = overflow_flag;
        }
        // Consumed entries are free again; OVACKFLG = OVFLG acknowledges an overflow.
        p.write32(base.add(EVENTQ_CONS), cons | overflow_flag);
        if active & GERROR_EVENTQ_ABT_ERR != 0 {
            // The queue was full and events were lost; it has room again now.
            self.stats.overflows += 1;
            self.gerrorn ^= GERROR_EVENTQ_ABT_ERR;
            p.write32(base.add(GERRORN), self.gerrorn);
        }
        self.stats.events += consumed as u64;
        consumed
    }

    /// The reply of the `DMA_FAULTS_READ` host call (x1..x3, see [`event::fault_reply`]): drains
    /// the event queue first, then hands out the oldest record.
    pub fn read_fault<P: Mmio + PhysMemory>(&mut self, p: &mut P) -> [u64; 3] {
        self.poll_events(p);
        let record = self.log.pop();
        event::fault_reply(record, self.log.len(), self.stats.overflows)
    }

    /// Removes and returns the oldest decoded fault record.
    pub fn pop_fault(&mut self) -> Option<FaultRecord> {
        self.log.pop()
    }

    /// Decoded records waiting to be read.
    pub fn pending_faults(&self) -> usize {
        self.log.len()
    }

    /// Records dropped because the fault log was full (the oldest go first).
    pub fn dropped_faults(&self) -> u64 {
        self.log.dropped()
    }
}

/// Polls the register at `pa` until `value & mask == want`, at most [`MAX_POLLS`] times.
fn poll(
    p: &mut impl Mmio,
    pa: PhysAddr,
    mask: u32,
    want: u32,
    what: &'static str,
) -> Result<(), SmmuError> {
    for _ in 0..MAX_POLLS {
        if p.read32(pa) & mask == want {
            return Ok(());
        }
    }
    Err(SmmuError::Timeout(what))
}
