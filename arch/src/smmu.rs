//! The SMMUv3 at EL2: brought up at boot, before the host runs, with the host's devices
//! translating through the host stage-2 (`verso::iommu`, docs/smmu.md); then kept in step with
//! every host stage-2 invalidation (`platform.rs`) and drained at every host hypercall.
//!
//! Which StreamIDs belong to the host: those the DTB's PCIe `iommu-map` sends to this SMMU, for
//! requester IDs on PCI bus 0 (the stream table has 256 entries: bus 0 is what QEMU `virt`
//! populates without bridges). Devices behind a bridge (bus >= 1) fall outside the table: their
//! DMA is aborted with a C_BAD_STREAMID event.
//!
//! `verso.smmu=off` (a benchmark switch) leaves translation off with GBPA = abort: every DMA is
//! refused and no SMMU invalidation is ever issued, which measures the CPU-only cost.

use spin::Mutex;

use verso::addr::{Ipa, PhysAddr, Vmid};
use verso::fdt::{bootarg_value, Fdt};
use verso::iommu::{
    regs, Smmu, SmmuConfig, SmmuMemory, CMDQ_BYTES, EVENTQ_BYTES, STREAM_TABLE_BYTES,
    STREAM_TABLE_LOG2,
};
use verso::platform::{Mmio, PhysMemory};

/// The SMMU, once initialised. A leaf lock: taken with the ownership locks held (invalidation)
/// or alone (event polling), never the other way round.
static SMMU: Mutex<Option<Smmu>> = Mutex::new(None);

/// MMIO and memory access at EL2: identity mapped, Device-nGnRE registers.
struct El2Mmio;

impl Mmio for El2Mmio {
    fn read32(&mut self, pa: PhysAddr) -> u32 {
        // SAFETY: only the SMMU driver calls this, with addresses inside the SMMU's register
        // block, which the hyp's stage-1 maps as Device memory (main.rs: map_platform).
        let v = unsafe { core::ptr::read_volatile(pa.raw() as *const u32) };
        // SAFETY: a barrier has no effect on memory contents.
        unsafe { core::arch::asm!("dsb ld", options(nostack, preserves_flags)) };
        v
    }
    fn write32(&mut self, pa: PhysAddr, value: u32) {
        // SAFETY: the barrier orders queue/table writes before the register write; the store
        // goes to the SMMU's registers as in `read32`.
        unsafe {
            core::arch::asm!("dsb st", options(nostack, preserves_flags));
            core::ptr::write_volatile(pa.raw() as *mut u32, value);
        }
    }
    fn read64(&mut self, pa: PhysAddr) -> u64 {
        // SAFETY: as in `read32`, for the 64-bit registers.
        let v = unsafe { core::ptr::read_volatile(pa.raw() as *const u64) };
        // SAFETY: a barrier has no effect on memory contents.
        unsafe { core::arch::asm!("dsb ld", options(nostack, preserves_flags)) };
        v
    }
    fn write64(&mut self, pa: PhysAddr, value: u64) {
        // SAFETY: as in `write32`, for the 64-bit registers.
        unsafe {
            core::arch::asm!("dsb st", options(nostack, preserves_flags));
            core::ptr::write_volatile(pa.raw() as *mut u64, value);
        }
    }
}

impl PhysMemory for El2Mmio {
    fn phys_to_ptr(&self, pa: PhysAddr) -> *mut u8 {
        pa.raw() as *mut u8
    }
}

/// The host's StreamIDs from the PCIe node's `iommu-map` (`<rid-base smmu-phandle sid-base
/// length>` entries) for the requester IDs of bus 0, when they map to the SMMU identically
/// (QEMU `virt`: `<0 &smmu 0 0x10000>`). Anything else gets no host stream: DMA stays aborted.
fn host_streams(fdt: &Fdt) -> core::ops::Range<u32> {
    let smmu_phandle = fdt
        .nodes()
        .find(|n| n.is_compatible("arm,smmu-v3"))
        .and_then(|n| n.property("phandle"))
        .and_then(|p| p.get(..4))
        .map(|p| u32::from_be_bytes([p[0], p[1], p[2], p[3]]));
    let map = fdt
        .nodes()
        .find(|n| n.is_compatible("pci-host-ecam-generic"))
        .and_then(|n| n.property("iommu-map"));
    let bus0 = 1u32 << STREAM_TABLE_LOG2;
    let mut streams = 0..0;
    if let (Some(map), Some(phandle)) = (map, smmu_phandle) {
        for entry in map.chunks_exact(16) {
            let cell =
                |i: usize| u32::from_be_bytes([entry[i], entry[i + 1], entry[i + 2], entry[i + 3]]);
            let (rid, ph, sid, len) = (cell(0), cell(4), cell(8), cell(12));
            if ph == phandle && rid == 0 && sid == 0 {
                streams = 0..len.min(bus0);
            }
        }
    }
    streams
}

/// What the DTB says about the SMMU, read before the host's DTB replaces QEMU's.
pub struct Plan {
    base: PhysAddr,
    host_streams: core::ops::Range<u32>,
    off: bool,
}

/// Reads the SMMU's place and the host's StreamIDs from QEMU's DTB and, first of all, makes the
/// SMMU abort DMA while it is off (GBPA resets to *bypass*). `None` without an SMMU.
pub fn discover(fdt: &Fdt, smmu: Option<(u64, u64)>) -> Option<Plan> {
    let Some((base, _)) = smmu else {
        log::warn!("no arm,smmu-v3 in the DTB: DMA is not translated");
        return None;
    };
    let base = PhysAddr(base);
    El2Mmio.write32(base.add(regs::GBPA), regs::GBPA_UPDATE | regs::GBPA_ABORT);
    let off = fdt
        .bootargs()
        .and_then(|a| bootarg_value(a, "verso.smmu"))
        .is_some_and(|v| v == "off");
    Some(Plan {
        base,
        host_streams: host_streams(fdt),
        off,
    })
}

/// Brings the SMMU up for the host stage-2 (`vtcr`, `vttbr`), before the host runs.
pub fn init(plan: Option<Plan>, vtcr: u64, vttbr: u64) {
    let Some(plan) = plan else { return };
    let base = plan.base;
    if plan.off {
        El2Mmio.write32(base.add(regs::GBPA), regs::GBPA_UPDATE | regs::GBPA_ABORT);
        El2Mmio.write32(base.add(regs::CR0), 0);
        log::warn!("verso.smmu=off: SMMU translation off, all DMA aborted");
        return;
    }
    let alloc = |bytes| match crate::pool::alloc_zeroed(bytes) {
        Some(pa) => pa,
        None => crate::console::fatal(format_args!("page pool exhausted (SMMU)")),
    };
    let memory = SmmuMemory {
        // The buddy pool hands out blocks aligned to their (power-of-two) size; the driver
        // checks it.
        stream_table: alloc(STREAM_TABLE_BYTES),
        cmdq: alloc(CMDQ_BYTES),
        eventq: alloc(EVENTQ_BYTES),
    };
    let host_streams = plan.host_streams;
    let cfg = SmmuConfig {
        base,
        memory,
        host_vtcr: vtcr,
        host_root: PhysAddr(vttbr & 0x0000_ffff_ffff_fffe),
        host_vmid: Vmid::HOST,
        host_streams: host_streams.clone(),
    };
    match Smmu::init(&mut El2Mmio, &cfg) {
        Ok(s) => {
            log::info!(
                "smmu {:#x}: host StreamIDs {:#x}..{:#x} through the host stage-2, others abort; range invalidation {}",
                base.raw(),
                host_streams.start,
                host_streams.end,
                s.uses_range_invalidation()
            );
            *SMMU.lock() = Some(s);
        }
        Err(e) => crate::console::fatal(format_args!("cannot bring up the SMMU: {e:?}")),
    }
}

/// The SMMU half of `invalidate_ipa_range` (the CPU half is done by the caller).
pub fn invalidate_ipa_range(vmid: Vmid, start: Ipa, pages: u64) {
    if let Some(s) = SMMU.lock().as_mut() {
        // A failure turned translation off (all DMA aborted): nothing stale can be used.
        let _ = s.invalidate_ipa_range(&mut El2Mmio, vmid, start, pages);
    }
}

/// The SMMU half of `invalidate_vmid`.
pub fn invalidate_vmid(vmid: Vmid) {
    if let Some(s) = SMMU.lock().as_mut() {
        let _ = s.invalidate_vmid(&mut El2Mmio, vmid);
    }
}

/// Drains the event queue into the fault log (called at every host hypercall).
pub fn poll() {
    if let Some(s) = SMMU.lock().as_mut() {
        s.poll_events(&mut El2Mmio);
    }
}

/// x1..x3 of `DMA_FAULTS_READ` (all zero without an SMMU).
pub fn read_fault() -> [u64; 3] {
    SMMU.lock()
        .as_mut()
        .map_or([0; 3], |s| s.read_fault(&mut El2Mmio))
}
