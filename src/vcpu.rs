//! vCPUs: the saved EL1 context of each guest vCPU (in a hyp-owned page taken from its VM's
//! memcache), the per-VM vCPU table with its `running` flags, what a guest trap means (stage-2
//! abort classification, MMIO decoding) and how the host completes an exit.
//!
//! The world switch itself (saving the host, loading a context, `ERET`, the trap back) is the EL2
//! runtime's job (`arch/src/guest.rs`); everything here is portable and runs under `cargo test`.
//!
//! Lifetime of a vCPU: `VCPU_CREATE` takes one free page of the VM's memcache for the context and
//! initialises it (entry PC, x0, EL1h with DAIF masked, MMU off). `VCPU_RUN` *loads* it (the
//! `running` flag, under the vm-table lock: a vCPU runs on one CPU at a time, and a VM with a
//! running vCPU cannot start teardown), runs it, and *puts* it back. The page goes back to the
//! host, scrubbed, with the rest of the memcache at `VM_FINALIZE_TEARDOWN`.

use crate::addr::{Ipa, PageRange, PhysAddr, PAGE_SIZE};
use crate::convlog::ConvLog;
use crate::error::{Error, Result};
use crate::mem::Ownership;
use crate::pgtable::{Lookup, TableAllocator};
use crate::platform::PhysMemory;
use crate::vm::VmHandle;

/// vCPUs per VM.
pub const MAX_VCPUS: usize = 8;

/// First IPA of guest RAM (the contract of docs/abi.md): a stage-2 fault at or above it on an
/// IPA with no page means "memory not donated yet" (exit 3); below it, the IPA space is the
/// guest's MMIO space (exit 2).
pub const GUEST_RAM_BASE: u64 = 0x4000_0000;

/// PSTATE at vCPU entry: EL1h, D/A/I/F masked.
pub const PSTATE_EL1H_MASKED: u64 = 0x3c5;
/// SCTLR_EL1 at vCPU entry: MMU and caches off, every RES1 bit set.
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

/// The EL1/EL0 system registers saved in a [`VcpuContext`], in the order of its `sys` array
/// (the EL2 runtime saves and restores them by this index).
pub mod sys {
    /// SCTLR_EL1
    pub const SCTLR: usize = 0;
    /// CPACR_EL1
    pub const CPACR: usize = 1;
    /// TTBR0_EL1
    pub const TTBR0: usize = 2;
    /// TTBR1_EL1
    pub const TTBR1: usize = 3;
    /// TCR_EL1
    pub const TCR: usize = 4;
    /// ESR_EL1
    pub const ESR: usize = 5;
    /// AFSR0_EL1
    pub const AFSR0: usize = 6;
    /// AFSR1_EL1
    pub const AFSR1: usize = 7;
    /// FAR_EL1
    pub const FAR: usize = 8;
    /// MAIR_EL1
    pub const MAIR: usize = 9;
    /// VBAR_EL1
    pub const VBAR: usize = 10;
    /// CONTEXTIDR_EL1
    pub const CONTEXTIDR: usize = 11;
    /// AMAIR_EL1
    pub const AMAIR: usize = 12;
    /// CNTKCTL_EL1
    pub const CNTKCTL: usize = 13;
    /// PAR_EL1
    pub const PAR: usize = 14;
    /// TPIDR_EL1
    pub const TPIDR_EL1: usize = 15;
    /// TPIDR_EL0
    pub const TPIDR_EL0: usize = 16;
    /// TPIDRRO_EL0
    pub const TPIDRRO_EL0: usize = 17;
    /// MDSCR_EL1
    pub const MDSCR: usize = 18;
    /// SP_EL1
    pub const SP_EL1: usize = 19;
    /// ELR_EL1
    pub const ELR_EL1: usize = 20;
    /// SPSR_EL1
    pub const SPSR_EL1: usize = 21;
    /// CNTV_CTL_EL0 (virtual timer)
    pub const CNTV_CTL: usize = 22;
    /// CNTV_CVAL_EL0
    pub const CNTV_CVAL: usize = 23;
    /// CNTVOFF_EL2 (the guest's virtual counter offset)
    pub const CNTVOFF: usize = 24;
    /// Number of saved system registers.
    pub const COUNT: usize = 25;
}

/// FP/SIMD state: V0..V31, FPSR, FPCR. Saved and restored by the EL2 runtime in assembly (the
/// hyp itself is soft-float and never touches these registers).
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpState {
    /// V0..V31.
    pub v: [u128; 32],
    /// FPSR.
    pub fpsr: u64,
    /// FPCR.
    pub fpcr: u64,
}

/// What the host must do to complete the last exit (`VCPU_RUN` flags bit 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// 0 = nothing; 1 = HVC/PSCI (set x0..x3); 2 = MMIO read; 3 = MMIO write.
    pub kind: u64,
    /// MMIO: the target register (31 = XZR).
    pub srt: u64,
    /// MMIO: access size in bytes.
    pub size: u64,
    /// MMIO read: sign-extend (SSE) in bit 0, 64-bit register (SF) in bit 1.
    pub flags: u64,
}

impl Pending {
    /// Nothing to complete.
    pub const NONE: u64 = 0;
    /// The last exit was a guest call: completing sets guest x0..x3.
    pub const CALL: u64 = 1;
    /// The last exit was an MMIO read: completing writes the target register and skips.
    pub const MMIO_READ: u64 = 2;
    /// The last exit was an MMIO write: completing skips the store.
    pub const MMIO_WRITE: u64 = 3;
}

/// The saved state of one vCPU. `x` and `sp_el0` are at fixed offsets the world-switch assembly
/// uses (x0 at 0, SP_EL0 at 248).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuContext {
    /// x0..x30.
    pub x: [u64; 31],
    /// SP_EL0.
    pub sp_el0: u64,
    /// Where the vCPU resumes (ELR_EL2 while it runs).
    pub pc: u64,
    /// Its PSTATE (SPSR_EL2 while it runs).
    pub pstate: u64,
    /// The EL1/EL0 system registers and timer, indexed by [`sys`].
    pub sys: [u64; sys::COUNT],
    /// The last exit, for completion.
    pub pending: Pending,
    /// FP/SIMD registers.
    pub fp: FpState,
}

const _: () = assert!(core::mem::size_of::<VcpuContext>() <= PAGE_SIZE as usize);
const _: () = assert!(core::mem::offset_of!(VcpuContext, sp_el0) == 248);

impl VcpuContext {
    /// The state of a vCPU at its first entry: `pc` = `entry`, x0 = `x0`, EL1h with every
    /// exception masked, MMU off; everything else zero.
    pub fn at_reset(entry: u64, x0: u64) -> Self {
        let mut ctx = Self::default();
        ctx.x[0] = x0;
        ctx.pc = entry;
        ctx.pstate = PSTATE_EL1H_MASKED;
        ctx.sys[sys::SCTLR] = SCTLR_EL1_RESET;
        ctx
    }

    /// Apply the host's completion of the last exit (`VCPU_RUN` flags bit 0) with the host's
    /// x4..x7 as `values`. Completing twice is impossible: the pending record is consumed.
    pub fn complete(&mut self, values: [u64; 4]) {
        let p = core::mem::take(&mut self.pending);
        match p.kind {
            Pending::CALL => self.x[..4].copy_from_slice(&values),
            Pending::MMIO_READ => {
                if p.srt < 31 {
                    self.x[p.srt as usize] = mmio_read_value(values[0], p.size, p.flags);
                }
                self.pc = self.pc.wrapping_add(4);
            }
            Pending::MMIO_WRITE => self.pc = self.pc.wrapping_add(4),
            _ => {}
        }
    }
}

/// The register value an MMIO load of `size` bytes produces from `data`: truncated to the size,
/// sign-extended if `flags` bit 0 (SSE), then limited to 32 bits unless `flags` bit 1 (SF).
pub fn mmio_read_value(data: u64, size: u64, flags: u64) -> u64 {
    let bits = (size.clamp(1, 8) * 8) as u32;
    let mut v = if bits == 64 {
        data
    } else {
        data & ((1u64 << bits) - 1)
    };
    if flags & 1 != 0 && bits < 64 {
        let shift = 64 - bits;
        v = (((v << shift) as i64) >> shift) as u64;
    }
    if flags & 2 == 0 {
        v &= 0xffff_ffff;
    }
    v
}

/// A vCPU slot of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuSlot {
    /// The hyp-owned page holding its [`VcpuContext`].
    pub ctx: PhysAddr,
    /// Loaded on some CPU (between load and put of a `VCPU_RUN`).
    pub running: bool,
}

/// Per-VM run state: vCPU slots and the conversion log. Lives in [`crate::vm::Vm`], under the
/// vm-table lock.
#[derive(Debug, Default)]
pub struct VmRun {
    vcpus: [Option<VcpuSlot>; MAX_VCPUS],
    /// The registered conversion log, if any.
    pub convlog: Option<ConvLog>,
}

impl VmRun {
    /// No vCPUs, no log.
    pub const fn new() -> Self {
        Self {
            vcpus: [None; MAX_VCPUS],
            convlog: None,
        }
    }
    /// True while any vCPU of the VM is loaded on a CPU.
    pub fn any_running(&self) -> bool {
        self.vcpus.iter().flatten().any(|v| v.running)
    }
    /// Number of vCPUs created.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.iter().flatten().count()
    }
    /// The slot of vCPU `index`.
    pub fn vcpu(&self, index: u64) -> Option<&VcpuSlot> {
        self.vcpus.get(usize::try_from(index).ok()?)?.as_ref()
    }
    fn vcpu_mut(&mut self, index: u64) -> Option<&mut VcpuSlot> {
        self.vcpus.get_mut(usize::try_from(index).ok()?)?.as_mut()
    }
}

/// A vCPU loaded for running: what the world switch needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedVcpu {
    /// The VM.
    pub handle: VmHandle,
    /// The vCPU index.
    pub index: u64,
    /// Its context page.
    pub ctx: PhysAddr,
    /// VTTBR_EL2 of the VM's stage-2 (root and VMID).
    pub vttbr: u64,
}

impl<A: TableAllocator> Ownership<'_, A> {
    /// Create vCPU number `vcpu_count` of VM `handle`, entering at `entry` with x0 = `x0`: one
    /// free memcache page becomes its context.
    ///
    /// # Errors
    /// [`Error::NotFound`] unknown VM; [`Error::Perm`] dying VM; [`Error::Busy`] while one of its
    /// vCPUs runs (the table is fixed once running); [`Error::NoMem`] if the VM has
    /// [`MAX_VCPUS`] vCPUs or no free memcache page.
    pub fn create_vcpu(
        &self,
        plat: &mut impl PhysMemory,
        handle: VmHandle,
        entry: u64,
        x0: u64,
    ) -> Result<u64> {
        self.with_vms(|vms| {
            let vm = vms.get_mut(handle)?;
            if vm.dying {
                return Err(Error::Perm);
            }
            let index = vm.run.vcpu_count();
            if index >= MAX_VCPUS {
                return Err(Error::NoMem);
            }
            let page = vm
                .guest
                .lock()
                .memcache
                .take_for_state()
                .ok_or(Error::NoMem)?;
            let ptr = plat.phys_to_ptr(page) as *mut VcpuContext;
            // SAFETY: `page` is a whole hyp-owned memcache page taken just now for this context
            // and nothing else; `phys_to_ptr` maps the page; the context fits (const assert) and
            // a page is aligned enough for it.
            unsafe { ptr.write(VcpuContext::at_reset(entry, x0)) };
            vm.run.vcpus[index] = Some(VcpuSlot {
                ctx: page,
                running: false,
            });
            Ok(index as u64)
        })
    }

    /// Mark vCPU `index` of `handle` running on this CPU and return what the world switch needs.
    ///
    /// # Errors
    /// [`Error::NotFound`] unknown VM or vCPU; [`Error::Perm`] if the VM is dying (it never runs
    /// again); [`Error::Busy`] if the vCPU already runs on another CPU.
    pub fn load_vcpu(&self, handle: VmHandle, index: u64) -> Result<LoadedVcpu> {
        self.with_vms(|vms| {
            let vm = vms.get_mut(handle)?;
            let vttbr = vm.guest.lock().stage2.vttbr();
            let dying = vm.dying;
            let slot = vm.run.vcpu_mut(index).ok_or(Error::NotFound)?;
            if dying {
                return Err(Error::Perm);
            }
            if slot.running {
                return Err(Error::Busy);
            }
            slot.running = true;
            Ok(LoadedVcpu {
                handle,
                index,
                ctx: slot.ctx,
                vttbr,
            })
        })
    }

    /// The end of a run: the vCPU may be loaded again, and its VM torn down.
    pub fn put_vcpu(&self, vcpu: &LoadedVcpu) {
        self.with_vms(|vms| {
            if let Some(slot) = vms
                .get_mut(vcpu.handle)
                .ok()
                .and_then(|vm| vm.run.vcpu_mut(vcpu.index))
            {
                slot.running = false;
            }
        })
    }

    /// What the guest stage-2 of `handle` holds at `ipa`.
    pub fn guest_lookup(&self, plat: &impl PhysMemory, handle: VmHandle, ipa: Ipa) -> Lookup {
        self.with_vms(|vms| match vms.get(handle) {
            Ok(vm) if ipa.raw() < self.guest_config().ipa_limit() => {
                vm.guest.lock().stage2.lookup(plat, ipa)
            }
            _ => Lookup::Empty { level: 0 },
        })
    }

    /// The first page of `ipas` with no memory behind it (guest `NoPage`, never donated), if any,
    /// inside guest RAM: what a MEM_SHARE that failed with `NotFound` waits for.
    pub fn first_missing_page(
        &self,
        plat: &impl PhysMemory,
        handle: VmHandle,
        ipas: PageRange<Ipa>,
    ) -> Option<Ipa> {
        if ipas.start().raw() < GUEST_RAM_BASE || ipas.end().raw() > self.guest_config().ipa_limit()
        {
            return None;
        }
        self.with_vms(|vms| {
            let vm = vms.get(handle).ok()?;
            let guest = vm.guest.lock();
            ipas.iter()
                .find(|&ipa| matches!(guest.stage2.lookup(plat, ipa), Lookup::Empty { .. }))
        })
    }
}

/// ESR_EL2 exception classes of guest traps.
pub mod ec {
    /// Unknown reason (also what an injected UNDEF reports).
    pub const UNKNOWN: u64 = 0x00;
    /// WFI/WFE.
    pub const WFX: u64 = 0x01;
    /// HVC from AArch64.
    pub const HVC64: u64 = 0x16;
    /// SMC from AArch64.
    pub const SMC64: u64 = 0x17;
    /// MSR/MRS/system instruction.
    pub const SYS64: u64 = 0x18;
    /// Instruction abort from a lower EL.
    pub const IABT_LOW: u64 = 0x20;
    /// Instruction abort, same EL.
    pub const IABT_CUR: u64 = 0x21;
    /// Data abort from a lower EL.
    pub const DABT_LOW: u64 = 0x24;
    /// Data abort, same EL.
    pub const DABT_CUR: u64 = 0x25;
}

/// The faulting IPA of a stage-2 abort: HPFAR_EL2.FIPA (IPA[51:12]) and the page offset from
/// FAR_EL2.
pub fn fault_ipa(hpfar: u64, far: u64) -> Ipa {
    Ipa(((hpfar & 0x0fff_ffff_ffff_fff0) << 8) | (far & 0xfff))
}

/// What a guest stage-2 abort means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortAction {
    /// MMIO access to decode and hand to the host (exit 2).
    Mmio {
        /// The IPA accessed.
        ipa: Ipa,
        /// Bytes accessed.
        size: u64,
        /// A store.
        write: bool,
        /// The register (31 = XZR).
        srt: u64,
        /// SSE (bit 0) and SF (bit 1).
        flags: u64,
    },
    /// The IPA is guest RAM with no page yet: the host may donate and re-run (exit 3).
    NoMemory(Ipa),
    /// The translation exists by now (another CPU mapped it): retry the access.
    Retry,
    /// The guest may not access this: inject an abort (reported as exit 7).
    Inject(Ipa),
}

/// Classify a guest stage-2 abort with syndrome `esr` at `ipa`, given what the guest stage-2
/// holds there (`lookup`).
pub fn classify_abort(esr: u64, ipa: Ipa, lookup: Lookup) -> AbortAction {
    let class = esr >> 26;
    let fsc = esr & 0x3f;
    let translation = (0b000100..=0b000111).contains(&fsc);
    let access_flag = (0b001000..=0b001011).contains(&fsc);
    let isv = esr & (1 << 24) != 0;
    let s1ptw = esr & (1 << 7) != 0;
    if !(translation || access_flag) {
        return AbortAction::Inject(ipa);
    }
    if ipa.raw() >= GUEST_RAM_BASE {
        return match lookup {
            Lookup::Empty { .. } => AbortAction::NoMemory(Ipa(ipa.raw() & !(PAGE_SIZE - 1))),
            Lookup::Mapped { .. } => AbortAction::Retry,
            Lookup::Annotated { .. } => AbortAction::Inject(ipa),
        };
    }
    if class == ec::DABT_LOW && isv && !s1ptw {
        return AbortAction::Mmio {
            ipa,
            size: 1 << ((esr >> 22) & 3),
            write: esr & (1 << 6) != 0,
            srt: (esr >> 16) & 0x1f,
            flags: ((esr >> 21) & 1) | (((esr >> 15) & 1) << 1),
        };
    }
    AbortAction::Inject(ipa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgtable::{Annotation, Leaf, MemType, Perms};

    const DABT: u64 = (ec::DABT_LOW << 26) | (1 << 25);
    const ISV: u64 = 1 << 24;
    const L3_TRANSLATION: u64 = 0b000111;
    const L3_PERMISSION: u64 = 0b001111;

    fn mapped() -> Lookup {
        Lookup::Mapped {
            pa: PhysAddr(0x5000_0000),
            leaf: Leaf {
                perms: Perms::RW,
                mem: MemType::Normal,
                sw: 0,
            },
            level: 3,
        }
    }

    #[test]
    fn fault_ipa_combines_hpfar_page_and_far_offset() {
        assert_eq!(fault_ipa(0x0900_0000 >> 8, 0xffff_0123), Ipa(0x0900_0123));
        assert_eq!(fault_ipa((0x4000_1000 >> 8) | 0xf, 0x88), Ipa(0x4000_1088));
    }

    #[test]
    fn store_below_guest_ram_with_isv_is_decoded_mmio() {
        // STR w3, [..] (SAS = 2: 4 bytes, SRT = 3, WnR).
        let esr = DABT | ISV | (2 << 22) | (3 << 16) | (1 << 6) | L3_TRANSLATION;
        let a = classify_abort(esr, Ipa(0x0900_0000), Lookup::Empty { level: 1 });
        assert_eq!(
            a,
            AbortAction::Mmio {
                ipa: Ipa(0x0900_0000),
                size: 4,
                write: true,
                srt: 3,
                flags: 0
            }
        );
        // LDRSB x5 (SAS 0, SSE, SF).
        let esr = DABT | ISV | (1 << 21) | (5 << 16) | (1 << 15) | L3_TRANSLATION;
        let a = classify_abort(esr, Ipa(0x0900_0018), Lookup::Empty { level: 1 });
        assert_eq!(
            a,
            AbortAction::Mmio {
                ipa: Ipa(0x0900_0018),
                size: 1,
                write: false,
                srt: 5,
                flags: 3
            }
        );
    }

    #[test]
    fn mmio_without_isv_or_on_a_walk_is_injected_not_exited() {
        let esr = DABT | (1 << 6) | L3_TRANSLATION;
        let ipa = Ipa(0x0900_0000);
        let empty = Lookup::Empty { level: 1 };
        assert_eq!(classify_abort(esr, ipa, empty), AbortAction::Inject(ipa));
        let walk = DABT | ISV | (1 << 7) | L3_TRANSLATION;
        assert_eq!(classify_abort(walk, ipa, empty), AbortAction::Inject(ipa));
    }

    #[test]
    fn ram_ipa_without_page_asks_for_memory_page_aligned() {
        let ipa = Ipa(0x4000_5abc);
        let esr = DABT | L3_TRANSLATION;
        assert_eq!(
            classify_abort(esr, ipa, Lookup::Empty { level: 3 }),
            AbortAction::NoMemory(Ipa(0x4000_5000))
        );
        let iabt = (ec::IABT_LOW << 26) | L3_TRANSLATION;
        assert_eq!(
            classify_abort(iabt, ipa, Lookup::Empty { level: 2 }),
            AbortAction::NoMemory(Ipa(0x4000_5000))
        );
    }

    #[test]
    fn mapped_by_now_retries_and_poisoned_or_permission_injects() {
        let ipa = Ipa(0x4000_0000);
        assert_eq!(
            classify_abort(DABT | L3_TRANSLATION, ipa, mapped()),
            AbortAction::Retry
        );
        let poisoned = Lookup::Annotated {
            ann: Annotation { owner: 3, meta: 0 },
            level: 3,
        };
        assert_eq!(
            classify_abort(DABT | L3_TRANSLATION, ipa, poisoned),
            AbortAction::Inject(ipa)
        );
        assert_eq!(
            classify_abort(DABT | ISV | L3_PERMISSION, Ipa(0x0900_0000), mapped()),
            AbortAction::Inject(Ipa(0x0900_0000))
        );
    }

    #[test]
    fn completing_an_mmio_read_writes_the_register_extended_and_skips() {
        let mut ctx = VcpuContext::at_reset(0x4000_0000, 7);
        ctx.pending = Pending {
            kind: Pending::MMIO_READ,
            srt: 5,
            size: 1,
            flags: 3,
        };
        ctx.complete([0x1234_5680, 0, 0, 0]);
        assert_eq!(ctx.x[5], 0xffff_ffff_ffff_ff80);
        assert_eq!(ctx.pc, 0x4000_0004);
        // Consumed: completing again changes nothing.
        ctx.complete([1, 2, 3, 4]);
        assert_eq!((ctx.x[5], ctx.pc), (0xffff_ffff_ffff_ff80, 0x4000_0004));
    }

    #[test]
    fn completing_a_call_sets_x0_to_x3_and_leaves_pc() {
        let mut ctx = VcpuContext::at_reset(0x4000_0000, 7);
        ctx.pending.kind = Pending::CALL;
        ctx.complete([10, 11, 12, 13]);
        assert_eq!(ctx.x[..5], [10, 11, 12, 13, 0]);
        assert_eq!(ctx.pc, 0x4000_0000);
    }

    #[test]
    fn completing_a_write_skips_and_xzr_reads_are_discarded() {
        let mut ctx = VcpuContext::at_reset(0x100, 0);
        ctx.pending.kind = Pending::MMIO_WRITE;
        ctx.complete([9; 4]);
        assert_eq!((ctx.pc, ctx.x[0]), (0x104, 0));
        ctx.pending = Pending {
            kind: Pending::MMIO_READ,
            srt: 31,
            size: 8,
            flags: 2,
        };
        ctx.complete([9; 4]);
        assert_eq!(ctx.pc, 0x108);
        assert!(ctx.x.iter().all(|&r| r == 0));
    }

    #[test]
    fn mmio_read_values_follow_size_sse_and_sf() {
        assert_eq!(mmio_read_value(0xffff_ffff_ffff_ffff, 4, 0), 0xffff_ffff);
        assert_eq!(mmio_read_value(0x8000, 2, 1), 0xffff_8000);
        assert_eq!(mmio_read_value(0x8000, 2, 3), 0xffff_ffff_ffff_8000);
        assert_eq!(mmio_read_value(0x1_2345_6789, 8, 2), 0x1_2345_6789);
        assert_eq!(mmio_read_value(0x1_2345_6789, 8, 0), 0x2345_6789);
    }

    #[test]
    fn reset_state_is_el1h_masked_mmu_off() {
        let ctx = VcpuContext::at_reset(0x4000_0000, 0xabc);
        assert_eq!((ctx.pc, ctx.pstate, ctx.x[0]), (0x4000_0000, 0x3c5, 0xabc));
        assert_eq!(ctx.sys[sys::SCTLR], 0x30d0_0800);
        assert_eq!(ctx.pending.kind, Pending::NONE);
    }
}
