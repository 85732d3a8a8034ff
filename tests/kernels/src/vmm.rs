//! A minimal VMM for host-role kernels: Verso's VM host calls, a page allocator over free host
//! RAM, and [`Vm`], which creates a protected VM from the guest image QEMU loaded, runs its vCPU,
//! prints its console, talks to it through the [`mailbox`](crate::mailbox), and tears it down.
//!
//! Everything follows the issue-4 contract in docs/abi.md: host calls are `hvc #0` with x0 = ID,
//! x1..x6 arguments, x0 = status and x1..x7 results; the guest image is a raw arm64 Image that
//! `-device loader` put at [`GUEST_IMAGE_PA`] and that the host donates *in place* at IPA
//! [`GUEST_RAM_IPA`]. Identity-mapped host: a PA is also the host's VA.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::exception::expect_fault;
use crate::harness::Failure;
use crate::mailbox::{self, cmd, MAILBOX};
use crate::{ensure, fail, println};

/// Verso's host calls (docs/abi.md).
pub mod id {
    /// VERSO_ABI_VERSION.
    pub const ABI_VERSION: u64 = 0xc600_8000;
    /// HOST_SHARE_HYP(pfn, nr_pages).
    pub const HOST_SHARE_HYP: u64 = 0xc600_8002;
    /// HOST_UNSHARE_HYP(pfn, nr_pages).
    pub const HOST_UNSHARE_HYP: u64 = 0xc600_8003;
    /// VM_CREATE(pfn, nr_pages) -> x1 handle.
    pub const VM_CREATE: u64 = 0xc600_8004;
    /// VCPU_CREATE(handle, entry IPA, x0) -> x1 vCPU index.
    pub const VCPU_CREATE: u64 = 0xc600_8005;
    /// MEMCACHE_TOPUP(handle, pfn, nr_pages).
    pub const MEMCACHE_TOPUP: u64 = 0xc600_8006;
    /// HOST_DONATE_GUEST(pfn, nr_pages, handle, gfn).
    pub const HOST_DONATE_GUEST: u64 = 0xc600_8007;
    /// HOST_SHARE_GUEST(pfn, nr_pages, handle, gfn, prot).
    pub const HOST_SHARE_GUEST: u64 = 0xc600_8008;
    /// HOST_UNSHARE_GUEST(handle, gfn, nr_pages).
    pub const HOST_UNSHARE_GUEST: u64 = 0xc600_8009;
    /// VCPU_RUN(handle, vcpu, flags, x4..x7) -> x1 exit reason, x2.. details.
    pub const VCPU_RUN: u64 = 0xc600_800a;
    /// VM_START_TEARDOWN(handle).
    pub const VM_START_TEARDOWN: u64 = 0xc600_800b;
    /// VM_RECLAIM(handle, gfn, nr_pages).
    pub const VM_RECLAIM: u64 = 0xc600_800c;
    /// VM_FINALIZE_TEARDOWN(handle).
    pub const VM_FINALIZE_TEARDOWN: u64 = 0xc600_800d;
    /// CONVLOG_REGISTER(handle, pfn, nr_pages).
    pub const CONVLOG_REGISTER: u64 = 0xc600_800e;
    /// HOST_RECLAIM_FORCE(pfn, nr_pages).
    pub const HOST_RECLAIM_FORCE: u64 = 0xc600_800f;
}

/// Return codes (x0 as i64).
pub mod status {
    /// Done.
    pub const SUCCESS: i64 = 0;
    /// Unknown function.
    pub const NOT_SUPPORTED: i64 = -1;
    /// Malformed argument.
    pub const INVALID: i64 = -3;
    /// Wrong owner or state.
    pub const PERM: i64 = -4;
    /// In use / dying / running.
    pub const BUSY: i64 = -5;
    /// Not enough pages.
    pub const NO_MEM: i64 = -6;
    /// Out of range.
    pub const RANGE: i64 = -7;
    /// Misaligned.
    pub const ALIGN: i64 = -8;
    /// No such object.
    pub const NOT_FOUND: i64 = -9;

    /// The name of a status, for failure messages.
    pub fn name(s: i64) -> &'static str {
        match s {
            SUCCESS => "SUCCESS",
            NOT_SUPPORTED => "NOT_SUPPORTED",
            INVALID => "INVALID",
            PERM => "PERM",
            BUSY => "BUSY",
            NO_MEM => "NO_MEM",
            RANGE => "RANGE",
            ALIGN => "ALIGN",
            NOT_FOUND => "NOT_FOUND",
            _ => "?",
        }
    }
}

/// VCPU_RUN exit reasons (x1).
pub mod exit {
    /// HVC not handled at EL2.
    pub const HVC: u64 = 1;
    /// MMIO-style data abort.
    pub const MMIO: u64 = 2;
    /// Stage-2 fault on an IPA with no memory.
    pub const NO_MEMORY: u64 = 3;
    /// WFI/WFE.
    pub const WFI: u64 = 4;
    /// Guest PSCI call.
    pub const PSCI: u64 = 5;
    /// Physical IRQ.
    pub const IRQ: u64 = 6;
    /// Abort injected into the guest.
    pub const GUEST_ABORT: u64 = 7;
}

/// VCPU_RUN flag: complete the last exit (HVC results / MMIO read value) before entering.
pub const RUN_COMPLETE: u64 = 1;

/// Page size.
pub const PAGE: u64 = 4096;
/// Where `-device loader` puts the guest image in host RAM (qemu-run.sh).
pub const GUEST_IMAGE_PA: u64 = 0x5000_0000;
/// Where the host keeps a pristine copy of the guest image (the loaded one is donated in place
/// and scrubbed at teardown), 16 MiB above it.
pub const GUEST_PRISTINE_PA: u64 = 0x5100_0000;
/// The largest guest image (Image header `image_size`) this layout holds.
pub const GUEST_IMAGE_MAX: u64 = 0x100_0000;
/// First IPA of guest RAM: where the image is donated and the vCPU starts.
pub const GUEST_RAM_IPA: u64 = 0x4000_0000;
/// Free host RAM handed out by [`alloc_pages`]: from here to the end of `-m 1G`.
pub const ALLOC_START: u64 = 0x5200_0000;
/// End of host RAM.
pub const RAM_END: u64 = 0x8000_0000;
/// The guest console: QEMU virt's PL011, whose page is not guest memory (every access exits).
pub const GUEST_UART_IPA: u64 = 0x0900_0000;
/// Pages donated by VM_CREATE (the VM's hyp-side state and its stage-2 root; docs/abi.md names
/// the minimum).
pub const VM_CREATE_PAGES: u64 = 8;
/// Pages given to a VM's memcache at creation, for its stage-2 tables.
pub const MEMCACHE_PAGES: u64 = 16;

static NEXT_FREE: AtomicU64 = AtomicU64::new(ALLOC_START);

/// Allocates `pages` contiguous host pages aligned to `align` bytes (a power of two >= 4096),
/// zeroed. Memory is never freed: 736 MiB is far more than any suite uses.
///
/// # Errors
/// A failure when host RAM is exhausted.
pub fn alloc_pages(pages: u64, align: u64) -> Result<u64, Failure> {
    let align = align.max(PAGE);
    let mut start = 0;
    let r = NEXT_FREE.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |next| {
        start = next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(pages.checked_mul(PAGE)?)?;
        (end <= RAM_END).then_some(end)
    });
    ensure!(r.is_ok(), "host RAM exhausted allocating {pages} pages");
    fill(start, pages * PAGE, 0);
    Ok(start)
}

/// Writes `value` into every word of `[pa, pa + bytes)` (host memory the caller owns).
pub fn fill(pa: u64, bytes: u64, value: u64) {
    for a in (pa..pa + bytes).step_by(8) {
        // SAFETY: the callers pass host RAM they allocated (or a page the hyp just gave back),
        // identity-mapped; no Rust object lives there.
        unsafe { core::ptr::write_volatile(a as *mut u64, value) };
    }
}

/// Reads a word of host memory that the host owns (a fault here fails the whole suite).
pub fn read(pa: u64) -> u64 {
    // SAFETY: the callers pass host RAM that the host owns at this point; identity-mapped.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

/// Writes a word of host memory that the host owns.
pub fn write(pa: u64, value: u64) {
    // SAFETY: as for `read`.
    unsafe { core::ptr::write_volatile(pa as *mut u64, value) }
}

/// The first non-zero word of `[pa, pa + pages)`, if any.
pub fn first_nonzero(pa: u64, pages: u64) -> Option<(u64, u64)> {
    (pa..pa + pages * PAGE)
        .step_by(8)
        .map(|a| (a, read(a)))
        .find(|&(_, v)| v != 0)
}

/// Cleans `[pa, pa + bytes)` to the point of coherency: what the host wrote with its caches on
/// must be in memory before a guest starting with its MMU off (non-cacheable) reads it.
pub fn clean_to_poc(pa: u64, bytes: u64) {
    for line in (pa & !63..pa + bytes).step_by(64) {
        // SAFETY: a cache clean by VA of host-owned, mapped memory changes no data.
        unsafe { asm!("dc cvac, {}", in(reg) line, options(nostack)) };
    }
    // SAFETY: a barrier.
    unsafe { asm!("dsb sy", options(nostack)) };
}

/// Issues a host call: x0 = `function`, x1.. = `args` (at most 7); returns x0..x7.
///
/// # Errors
/// A failure if `hvc` itself faults (no hypervisor).
pub fn host_call(function: u64, args: &[u64]) -> Result<[u64; 8], Failure> {
    let mut r = [0u64; 8];
    r[0] = function;
    for (slot, a) in r[1..].iter_mut().zip(args) {
        *slot = *a;
    }
    let mut out = r;
    let fault = expect_fault(|| out = mailbox::hvc_raw(r));
    match fault {
        None => Ok(out),
        Some(f) => fail!("hvc {function:#x} faulted: {f}"),
    }
}

/// A host call's status (x0 as i64).
///
/// # Errors
/// As [`host_call`].
pub fn call_status(function: u64, args: &[u64]) -> Result<i64, Failure> {
    Ok(host_call(function, args)?[0] as i64)
}

/// Fails unless the call returns `want`.
///
/// # Errors
/// The failure, naming the call and both statuses.
pub fn expect_status(what: &str, function: u64, args: &[u64], want: i64) -> Result<(), Failure> {
    let got = call_status(function, args)?;
    ensure!(
        got == want,
        "{what}: expected {} ({want}), got {} ({got})",
        status::name(want),
        status::name(got)
    );
    Ok(())
}

/// Fails unless the call succeeds; returns x1..x7 minus x0 as the whole register set.
///
/// # Errors
/// The failure, naming the call and its status.
pub fn call_ok(what: &str, function: u64, args: &[u64]) -> Result<[u64; 8], Failure> {
    let r = host_call(function, args)?;
    let s = r[0] as i64;
    ensure!(
        s == 0,
        "{what}: host call {function:#x} returned {} ({s})",
        status::name(s)
    );
    Ok(r)
}

/// The guest image QEMU loaded (an arm64 Image at [`GUEST_IMAGE_PA`]).
#[derive(Clone, Copy, Debug)]
pub struct GuestImage {
    /// Its size in pages, `.bss` included (header `image_size`, rounded up).
    pub pages: u64,
}

/// Validates the loaded guest image and keeps a pristine copy at [`GUEST_PRISTINE_PA`] (once).
///
/// # Errors
/// A failure if there is no arm64 Image at [`GUEST_IMAGE_PA`] (the loader line is missing).
pub fn guest_image() -> Result<GuestImage, Failure> {
    static PAGES: AtomicU64 = AtomicU64::new(0);
    let known = PAGES.load(Ordering::SeqCst);
    if known != 0 {
        return Ok(GuestImage { pages: known });
    }
    let magic = read(GUEST_IMAGE_PA + 56) & 0xffff_ffff;
    ensure!(
        magic == 0x644d_5241,
        "no arm64 Image at {GUEST_IMAGE_PA:#x} (magic {magic:#x}): is the guest loader line there?"
    );
    let size = read(GUEST_IMAGE_PA + 16);
    ensure!(
        size > 0 && size <= GUEST_IMAGE_MAX,
        "guest image_size {size:#x} does not fit {GUEST_IMAGE_MAX:#x}"
    );
    let pages = size.div_ceil(PAGE);
    copy(GUEST_IMAGE_PA, GUEST_PRISTINE_PA, pages * PAGE);
    PAGES.store(pages, Ordering::SeqCst);
    Ok(GuestImage { pages })
}

fn copy(src: u64, dst: u64, bytes: u64) {
    for off in (0..bytes).step_by(8) {
        write(dst + off, read(src + off));
    }
}

/// What one VCPU_RUN returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// x1: the exit reason ([`exit`]).
    pub reason: u64,
    /// x2..x7: its details.
    pub detail: [u64; 6],
}

impl core::fmt::Display for Exit {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let d = &self.detail;
        match self.reason {
            exit::HVC => write!(
                f,
                "hvc exit (x0={:#x} x1={:#x} x2={:#x} x3={:#x})",
                d[0], d[1], d[2], d[3]
            ),
            exit::MMIO => write!(
                f,
                "mmio exit (ipa={:#x} size={} {} value={:#x})",
                d[0],
                d[1],
                if d[2] == 1 { "write" } else { "read" },
                d[3]
            ),
            exit::NO_MEMORY => write!(f, "no-memory exit (ipa={:#x} esr={:#x})", d[0], d[1]),
            exit::WFI => write!(f, "wfi exit"),
            exit::PSCI => write!(f, "psci exit (function={:#x})", d[0]),
            exit::IRQ => write!(f, "irq exit"),
            exit::GUEST_ABORT => write!(f, "guest-abort exit (ipa={:#x} esr={:#x})", d[0], d[1]),
            r => write!(f, "unknown exit reason {r} ({d:#x?})"),
        }
    }
}

/// One memory range the host donated to a VM.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    /// Host physical address of the first page.
    pub pa: u64,
    /// Guest IPA of the first page.
    pub ipa: u64,
    /// Number of pages.
    pub pages: u64,
}

const MAX_REGIONS: usize = 24;

/// A protected VM with one vCPU running `guest-worker`, driven through the mailbox.
pub struct Vm {
    /// The VM handle VM_CREATE returned.
    pub handle: u64,
    /// The pages donated by VM_CREATE.
    pub state: Region,
    /// The pages given by MEMCACHE_TOPUP.
    pub memcache: Region,
    regions: [Option<Region>; MAX_REGIONS],
    line: [u8; 160],
    line_len: usize,
    /// The guest's CNTFRQ_EL0 (from its READY report).
    pub cntfrq: u64,
    torn_down: bool,
}

impl Vm {
    /// Creates a VM (VM_CREATE + MEMCACHE_TOPUP), donates a copy of the guest image at
    /// [`GUEST_RAM_IPA`], creates its
    /// vCPU with x0 = `arg`, and runs it up to its READY report.
    ///
    /// # Errors
    /// A failure naming the step that went wrong.
    pub fn boot(arg: u64) -> Result<Self, Failure> {
        let state_pa = alloc_pages(VM_CREATE_PAGES, PAGE)?;
        let memcache_pa = alloc_pages(MEMCACHE_PAGES, PAGE)?;
        Self::boot_with(arg, state_pa, memcache_pa, None)
    }

    /// [`Vm::boot`] with chosen pages: `state_pa` ([`VM_CREATE_PAGES`]), `memcache_pa`
    /// ([`MEMCACHE_PAGES`]) and, if given, `image_pa` for the image (else freshly allocated; given
    /// [`GUEST_IMAGE_PA`], the pages QEMU loaded are donated in place, no copy).
    ///
    /// # Errors
    /// As [`Vm::boot`].
    pub fn boot_with(
        arg: u64,
        state_pa: u64,
        memcache_pa: u64,
        image_pa: Option<u64>,
    ) -> Result<Self, Failure> {
        let image = guest_image()?;
        let r = call_ok(
            "VM_CREATE",
            id::VM_CREATE,
            &[state_pa / PAGE, VM_CREATE_PAGES],
        )?;
        let mut vm = Self {
            handle: r[1],
            state: Region {
                pa: state_pa,
                ipa: 0,
                pages: VM_CREATE_PAGES,
            },
            memcache: Region {
                pa: memcache_pa,
                ipa: 0,
                pages: MEMCACHE_PAGES,
            },
            regions: [None; MAX_REGIONS],
            line: [0; 160],
            line_len: 0,
            cntfrq: 0,
            torn_down: false,
        };
        call_ok(
            "MEMCACHE_TOPUP",
            id::MEMCACHE_TOPUP,
            &[vm.handle, memcache_pa / PAGE, MEMCACHE_PAGES],
        )?;
        let image_pa = match image_pa {
            Some(pa) => pa,
            None => alloc_pages(image.pages, 0x20_0000)?,
        };
        if image_pa != GUEST_IMAGE_PA {
            copy(GUEST_PRISTINE_PA, image_pa, image.pages * PAGE);
        }
        clean_to_poc(image_pa, image.pages * PAGE);
        vm.donate_at(image_pa, GUEST_RAM_IPA, image.pages)?;
        let r = call_ok(
            "VCPU_CREATE",
            id::VCPU_CREATE,
            &[vm.handle, GUEST_RAM_IPA, arg],
        )?;
        ensure!(r[1] == 0, "first VCPU_CREATE returned index {}", r[1]);
        let e = vm.run(0, [0; 4])?;
        ensure!(
            e.reason == exit::HVC && e.detail[0] == MAILBOX && e.detail[1] == cmd::READY,
            "guest did not report READY: {e}"
        );
        ensure!(
            e.detail[2] == arg,
            "guest saw x0 = {:#x} at entry, VCPU_CREATE passed {arg:#x}",
            e.detail[2]
        );
        vm.cntfrq = e.detail[3];
        Ok(vm)
    }

    /// Donates `pages` fresh host pages (aligned to `align`) at `ipa`; returns their PA.
    ///
    /// # Errors
    /// A failure if allocation or HOST_DONATE_GUEST fails.
    pub fn donate(&mut self, ipa: u64, pages: u64, align: u64) -> Result<u64, Failure> {
        let pa = alloc_pages(pages, align)?;
        self.donate_at(pa, ipa, pages)?;
        Ok(pa)
    }

    /// Donates the host pages at `pa` at `ipa`, and records them for teardown.
    ///
    /// # Errors
    /// A failure if HOST_DONATE_GUEST fails.
    pub fn donate_at(&mut self, pa: u64, ipa: u64, pages: u64) -> Result<(), Failure> {
        call_ok(
            "HOST_DONATE_GUEST",
            id::HOST_DONATE_GUEST,
            &[pa / PAGE, pages, self.handle, ipa / PAGE],
        )?;
        self.record(Region { pa, ipa, pages })
    }

    /// Records a region the guest owns (for teardown and its zero check).
    ///
    /// # Errors
    /// A failure if too many regions are recorded.
    pub fn record(&mut self, r: Region) -> Result<(), Failure> {
        match self.regions.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(r),
            None => fail!("more than {MAX_REGIONS} donated regions"),
        }
        Ok(())
    }

    /// Forgets the region donated at `ipa` (its pages left the VM another way, e.g. relinquished,
    /// and the host may have reused them): teardown neither reclaims nor zero-checks them.
    pub fn forget(&mut self, ipa: u64) {
        for slot in self.regions.iter_mut() {
            if slot.is_some_and(|r| r.ipa == ipa) {
                *slot = None;
            }
        }
    }

    /// The host PA of guest IPA `ipa`, if it lies in a donated region.
    pub fn pa_of(&self, ipa: u64) -> Option<u64> {
        self.regions
            .iter()
            .flatten()
            .find(|r| ipa >= r.ipa && ipa < r.ipa + r.pages * PAGE)
            .map(|r| r.pa + (ipa - r.ipa))
    }

    /// Every region donated so far.
    pub fn regions(&self) -> impl Iterator<Item = Region> + '_ {
        self.regions.iter().flatten().copied()
    }

    /// One VCPU_RUN with `flags` and x4..x7 = `values`, without interpreting the exit.
    ///
    /// # Errors
    /// A failure if VCPU_RUN itself fails.
    pub fn run_once(&self, flags: u64, values: [u64; 4]) -> Result<Exit, Failure> {
        let r = call_ok(
            "VCPU_RUN",
            id::VCPU_RUN,
            &[
                self.handle,
                0,
                flags,
                values[0],
                values[1],
                values[2],
                values[3],
            ],
        )?;
        let mut detail = [0; 6];
        detail.copy_from_slice(&r[2..8]);
        Ok(Exit {
            reason: r[1],
            detail,
        })
    }

    /// Runs the vCPU until an exit the caller must see: console accesses (MMIO at the guest
    /// UART) are served here (writes printed as `[guest] ` lines, reads answer 0: transmit FIFO
    /// never full), and physical-IRQ exits are re-run.
    ///
    /// # Errors
    /// A failure if VCPU_RUN fails.
    pub fn run(&mut self, flags: u64, values: [u64; 4]) -> Result<Exit, Failure> {
        let (mut flags, mut values) = (flags, values);
        for _ in 0..100_000 {
            let e = self.run_once(flags, values)?;
            match e.reason {
                exit::MMIO if e.detail[0] & !(PAGE - 1) == GUEST_UART_IPA => {
                    if e.detail[2] == 1 && e.detail[0] == GUEST_UART_IPA {
                        self.console_byte(e.detail[3] as u8);
                    }
                    (flags, values) = (RUN_COMPLETE, [0; 4]);
                }
                exit::IRQ => (flags, values) = (0, [0; 4]),
                _ => return Ok(e),
            }
        }
        fail!("guest printed more than 100000 bytes without another exit")
    }

    fn console_byte(&mut self, b: u8) {
        match b {
            b'\r' => {}
            b'\n' => {
                let text = core::str::from_utf8(&self.line[..self.line_len]).unwrap_or("<bad>");
                println!("[guest] {text}");
                self.line_len = 0;
            }
            _ => {
                if self.line_len == self.line.len() {
                    self.console_byte(b'\n');
                }
                self.line[self.line_len] = b;
                self.line_len += 1;
            }
        }
    }

    /// Sends a mailbox command (the guest sits in its mailbox `hvc`) and returns the exit that
    /// follows, whatever it is.
    ///
    /// # Errors
    /// A failure if VCPU_RUN fails.
    pub fn send(&mut self, command: u64, args: [u64; 3]) -> Result<Exit, Failure> {
        self.run(RUN_COMPLETE, [command, args[0], args[1], args[2]])
    }

    /// Sends a mailbox command and returns the guest's reply.
    ///
    /// # Errors
    /// A failure if the next exit is not the guest's mailbox report.
    pub fn command(&mut self, command: u64, args: [u64; 3]) -> Result<[u64; 3], Failure> {
        let e = self.send(command, args)?;
        Self::reply_of(command, e)
    }

    /// The mailbox reply carried by `e`.
    ///
    /// # Errors
    /// A failure if `e` is not a mailbox report.
    pub fn reply_of(command: u64, e: Exit) -> Result<[u64; 3], Failure> {
        ensure!(
            e.reason == exit::HVC && e.detail[0] == MAILBOX,
            "command {command}: expected the guest's mailbox report, got {e}"
        );
        Ok([e.detail[1], e.detail[2], e.detail[3]])
    }

    /// Makes the guest issue the SMCCC call `function(x1, x2, x3)`; returns its x0..x2.
    ///
    /// # Errors
    /// As [`Vm::command`].
    pub fn guest_call(
        &mut self,
        function: u64,
        x1: u64,
        x2: u64,
        x3: u64,
    ) -> Result<[u64; 3], Failure> {
        self.command(cmd::CALL, [function | x3 << 32, x1, x2])
    }

    /// Makes the guest fill `pages` pages at `ipa` with the pattern of `seed`.
    ///
    /// # Errors
    /// As [`Vm::command`].
    pub fn fill(&mut self, ipa: u64, pages: u64, seed: u64) -> Result<(), Failure> {
        let r = self.command(cmd::FILL, [ipa, pages, seed])?;
        ensure!(r[0] == 0, "guest FILL failed: {r:#x?}");
        Ok(())
    }

    /// Makes the guest check `pages` pages at `ipa` against the pattern of `seed`.
    ///
    /// # Errors
    /// A failure naming the first word that differs.
    pub fn check(&mut self, ipa: u64, pages: u64, seed: u64) -> Result<(), Failure> {
        let r = self.command(cmd::CHECK, [ipa, pages, seed])?;
        ensure!(
            r[0] == 0,
            "guest sees {:#x} at IPA {:#x}, expected {:#x}",
            r[2],
            r[1],
            mailbox::pattern(seed, r[1])
        );
        Ok(())
    }

    /// Makes the guest read a word: `Ok(value)` or `Err((esr, far))` of the injected abort.
    ///
    /// # Errors
    /// As [`Vm::command`] (the outer error).
    pub fn guest_read(&mut self, ipa: u64) -> Result<Result<u64, (u64, u64)>, Failure> {
        let r = self.command(cmd::READ, [ipa, 0, 0])?;
        Ok(if r[0] == 0 {
            Ok(r[1])
        } else {
            Err((r[1], r[2]))
        })
    }

    /// Starts teardown, reclaims every donated page, finalizes, and checks that every page the
    /// VM ever had (image, data, hyp-side state, memcache) is back with the host, zeroed.
    ///
    /// # Errors
    /// A failure naming the step, or the first page that is not zero.
    pub fn teardown(&mut self) -> Result<(), Failure> {
        call_ok("VM_START_TEARDOWN", id::VM_START_TEARDOWN, &[self.handle])?;
        self.finish_teardown()
    }

    /// The rest of [`Vm::teardown`] for a VM whose VM_START_TEARDOWN already succeeded (e.g. on
    /// another CPU, racing a VCPU_RUN): reclaims, finalizes and checks every page came back
    /// zeroed.
    ///
    /// # Errors
    /// As [`Vm::teardown`].
    pub fn finish_teardown(&mut self) -> Result<(), Failure> {
        self.torn_down = true;
        for r in self.regions.iter().flatten() {
            let s = call_status(id::VM_RECLAIM, &[self.handle, r.ipa / PAGE, r.pages])?;
            if s == status::SUCCESS {
                continue;
            }
            // Some pages of the region were relinquished or are otherwise gone: page by page,
            // where NOT_FOUND means "no page there any more".
            for p in 0..r.pages {
                let s = call_status(id::VM_RECLAIM, &[self.handle, r.ipa / PAGE + p, 1])?;
                ensure!(
                    s == status::SUCCESS || s == status::NOT_FOUND,
                    "VM_RECLAIM of IPA {:#x}: {} ({s})",
                    r.ipa + p * PAGE,
                    status::name(s)
                );
            }
        }
        call_ok(
            "VM_FINALIZE_TEARDOWN",
            id::VM_FINALIZE_TEARDOWN,
            &[self.handle],
        )?;
        for r in self.regions.iter().flatten() {
            if let Some((a, v)) = first_nonzero_probed(r.pa, r.pages)? {
                fail!(
                    "page {a:#x} (IPA {:#x}) came back from the VM holding {v:#x}, not zero",
                    r.ipa + (a & !(PAGE - 1)) - r.pa
                );
            }
        }
        for (what, r) in [("VM_CREATE", &self.state), ("memcache", &self.memcache)] {
            if let Some((a, v)) = first_nonzero_probed(r.pa, r.pages)? {
                fail!("{what} page {a:#x} came back from the hyp holding {v:#x}, not zero");
            }
        }
        Ok(())
    }
}

/// [`first_nonzero`], but every read is a probe, so a page the host did not get back fails the
/// test instead of the suite.
///
/// # Errors
/// A failure naming the page the host still cannot read.
pub fn first_nonzero_probed(pa: u64, pages: u64) -> Result<Option<(u64, u64)>, Failure> {
    for page in (pa..pa + pages * PAGE).step_by(PAGE as usize) {
        if let Err(f) = crate::exception::probe_read_u64(page) {
            fail!("host cannot read page {page:#x} after teardown: {f}");
        }
        if let Some(hit) = first_nonzero(page, 1) {
            return Ok(Some(hit));
        }
    }
    Ok(None)
}

impl Drop for Vm {
    /// A test that fails half-way still frees its VM slot (best effort, errors ignored), so the
    /// next test does not run out of VMs.
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let _ = host_call(id::VM_START_TEARDOWN, &[self.handle]);
        for r in self.regions.iter().flatten() {
            if host_call(id::VM_RECLAIM, &[self.handle, r.ipa / PAGE, r.pages])
                .is_ok_and(|x| x[0] == 0)
            {
                continue;
            }
            for p in 0..r.pages {
                let _ = host_call(id::VM_RECLAIM, &[self.handle, r.ipa / PAGE + p, 1]);
            }
        }
        let _ = host_call(id::VM_FINALIZE_TEARDOWN, &[self.handle]);
    }
}
