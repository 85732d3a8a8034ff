//! `/init` of the `linux` suite's initramfs: an unmodified Debian arm64 kernel, booted under
//! Verso, runs this as its first process; it checks from user space what Verso handed the
//! kernel, prints one `PASS: name` / `FAIL: name (why)` line per check and `N passed, N failed`,
//! and powers the machine off (PSCI SYSTEM_OFF, relayed by Verso: QEMU exits with status 0).
//!
//! What the harness (`qemu-run.sh`, `linux_initramfs`) expects is packed next to this binary in
//! `/expect/`: the random `marker` it put on the command line, the exact `cmdline` Linux should
//! see (the `-append` string minus Verso's `verso.*` words), the number of `cpus` QEMU has, and
//! a random `blob` with its SHA-256, so that the initramfs is proven to arrive byte for byte;
//! and, for the DMA checks, the virtio `modules` to load (in order, the files in `/modules/`), the
//! PCI address, size and SHA-256 of the virtio-blk disk QEMU was given, and a block to write
//! into it (`write.bin` at `write.offset`) with the SHA-256 the whole disk must have afterwards.
//!
//! A static executable with no libc: `_start` below, raw system calls in [`sys`], no allocator
//! (fixed buffers), no `unsafe` outside [`sys`].

#![no_std]
#![no_main]

mod sha256;
mod sys;

use core::ffi::CStr;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

use sys::Errno;

// The kernel enters `_start` with sp 16-byte aligned and pointing at argc; init needs neither
// argv nor the environment, so the entry only clears the frame chain and calls Rust.
core::arch::global_asm!(
    ".globl _start",
    ".type _start, %function",
    "_start:",
    "mov x29, #0",
    "mov x30, #0",
    "bl {main}",
    "b .",
    main = sym init_main,
);

/// Where Verso puts itself (docs/boot.md, "Memory layout"): the region the DTB must reserve.
const HYP_BASE: u64 = 0x4020_0000;
/// Size of the hyp region.
const HYP_SIZE: u64 = 0x200_0000;
/// The reserved-memory node Verso adds for that region.
const HYP_NODE: &CStr = c"/sys/firmware/devicetree/base/reserved-memory/hyp@40200000";
/// What Linux prints when every CPU entered the kernel at EL1, i.e. below a hypervisor
/// (arch/arm64/kernel/smp.c, `hyp_mode_check`); on bare QEMU with virtualization=on it says EL2.
const ALL_AT_EL1: &[u8] = b"CPU: All CPU(s) started at EL1";

/// A line of text in a fixed buffer (no allocator); output beyond its capacity is dropped.
struct Line {
    buf: [u8; 480],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 480],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Prints one line on the console with a single write(2), so that it reaches the UART whole.
fn println(args: fmt::Arguments) {
    let mut line = Line::new();
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    let _ = sys::write_all(1, line.as_bytes());
}

macro_rules! println {
    ($($arg:tt)*) => { println(format_args!($($arg)*)) };
}

/// Why a check failed.
type Why = Line;

/// Leaves the current check with a failure reason.
macro_rules! fail {
    ($($arg:tt)*) => {{
        let mut why = Line::new();
        let _ = why.write_fmt(format_args!($($arg)*));
        return Err(why);
    }};
}

/// A check: `Ok` or the reason it failed.
type Check = fn() -> Result<(), Why>;

/// The checks, in the order they run; each name states the rule.
const CHECKS: &[(&str, Check)] = &[
    (
        "initramfs_reaches_linux_byte_for_byte",
        initramfs_reaches_linux_byte_for_byte,
    ),
    ("proc_cmdline_has_the_marker", proc_cmdline_has_the_marker),
    (
        "proc_cmdline_has_no_verso_word",
        proc_cmdline_has_no_verso_word,
    ),
    (
        "proc_cmdline_is_the_payload_bootargs_verbatim",
        proc_cmdline_is_the_payload_bootargs_verbatim,
    ),
    (
        "dt_reserves_hyp_memory_no_map",
        dt_reserves_hyp_memory_no_map,
    ),
    (
        "dt_has_no_smmu_and_no_iommu_map",
        dt_has_no_smmu_and_no_iommu_map,
    ),
    (
        "iomem_hyp_region_is_not_system_ram",
        iomem_hyp_region_is_not_system_ram,
    ),
    (
        "all_cpus_online_through_psci_relay",
        all_cpus_online_through_psci_relay,
    ),
    (
        "linux_runs_at_el1_on_every_cpu",
        linux_runs_at_el1_on_every_cpu,
    ),
    (
        "user_read_of_hyp_memory_gets_sigbus_and_the_kernel_survives",
        user_read_of_hyp_memory_gets_sigbus_and_the_kernel_survives,
    ),
    (
        "virtio_modules_from_the_kernel_package_load",
        virtio_modules_from_the_kernel_package_load,
    ),
    (
        "virtio_blk_dma_through_the_smmu_reads_the_disk_byte_for_byte",
        virtio_blk_dma_through_the_smmu_reads_the_disk_byte_for_byte,
    ),
    (
        "virtio_blk_dma_through_the_smmu_writes_a_block_and_reads_it_back",
        virtio_blk_dma_through_the_smmu_writes_a_block_and_reads_it_back,
    ),
    (
        "kernel_log_has_no_oops_bug_or_warning",
        kernel_log_has_no_oops_bug_or_warning,
    ),
];

extern "C" fn init_main() -> ! {
    println!("verso linux init: pid 1 running from the initramfs");
    setup();
    let (mut passed, mut failed) = (0usize, 0usize);
    for (name, check) in CHECKS {
        match check() {
            Ok(()) => {
                passed += 1;
                println!("PASS: {name}");
            }
            Err(why) => {
                failed += 1;
                println!("FAIL: {name} ({})", Text(why.as_bytes()));
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if STUCK.load(Ordering::Relaxed) {
        // sysrq `b`: emergency_restart(), no device shutdown, straight to PSCI SYSTEM_RESET (QEMU
        // exits on it with -no-reboot). The harness then finds no "reboot: Power down".
        println!("verso linux init: a process is stuck in the kernel; restarting with sysrq b");
        if let Err(e) = sys::open_write(c"/proc/sysrq-trigger").and_then(|f| f.write_all(b"b")) {
            println!("verso linux init: sysrq b: errno {}", e.0);
        }
    }
    let err = sys::power_off();
    println!(
        "verso linux init: reboot(POWER_OFF) returned errno {}",
        err.0
    );
    sys::exit(1)
}

/// Mounts /proc and /sys (the kernel mounts neither for an initramfs), and lowers the console
/// log level so that no kernel message can land in the middle of a PASS/FAIL line.
fn setup() {
    for (fstype, dir) in [(c"proc", c"/proc"), (c"sysfs", c"/sys")] {
        match sys::mkdir(dir) {
            Ok(()) | Err(Errno(sys::EEXIST)) => {}
            Err(e) => println!("verso linux init: mkdir {dir:?}: errno {}", e.0),
        }
        match sys::mount(fstype, dir) {
            Ok(()) | Err(Errno(sys::EBUSY)) => {}
            Err(e) => println!(
                "verso linux init: mount {fstype:?} on {dir:?}: errno {}",
                e.0
            ),
        }
    }
    // console_loglevel 1: only KERN_EMERG (a panic, "reboot: Power down") still reaches the UART.
    if let Err(e) = sys::open_write(c"/proc/sys/kernel/printk").and_then(|f| f.write_all(b"1\n")) {
        println!(
            "verso linux init: cannot lower the console log level: errno {}",
            e.0
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Bytes shown as text (invalid UTF-8 as `?`) in a failure reason.
struct Text<'a>(&'a [u8]);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            f.write_char(if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            })?;
        }
        Ok(())
    }
}

/// Reads the file at `path` into `buf`; fails if it does not fit (so nothing is judged on a
/// truncated view).
fn read_file<'b>(path: &CStr, buf: &'b mut [u8]) -> Result<&'b [u8], Why> {
    let fd = match sys::open(path) {
        Ok(fd) => fd,
        Err(e) => fail!("open {}: errno {}", Text(path.to_bytes()), e.0),
    };
    read_all(&fd, path.to_bytes(), buf)
}

fn read_all<'b>(fd: &sys::Fd, name: &[u8], buf: &'b mut [u8]) -> Result<&'b [u8], Why> {
    let len = match fd.read_to_fill(buf) {
        Ok(len) => len,
        Err(e) => fail!("read {}: errno {}", Text(name), e.0),
    };
    if len == buf.len() {
        fail!(
            "{} is larger than the {}-byte buffer",
            Text(name),
            buf.len()
        );
    }
    Ok(&buf[..len])
}

/// `bytes` without trailing newlines, spaces and NULs.
fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b' ' | 0))
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A file under /expect/ that the harness packed, trimmed.
fn expected<'b>(name: &CStr, buf: &'b mut [u8]) -> Result<&'b [u8], Why> {
    let mut path = Line::new();
    let _ = write!(path, "/expect/{}\0", Text(name.to_bytes()));
    let path = CStr::from_bytes_with_nul(path.as_bytes()).map_err(|_| Line::new())?;
    let bytes = read_file(path, buf)?;
    Ok(trim_end(bytes))
}

fn parse_u64(text: &[u8], radix: u32) -> Option<u64> {
    u64::from_str_radix(core::str::from_utf8(text).ok()?.trim(), radix).ok()
}

/// The kernel log (the same text `dmesg` shows) into `buf`.
fn kernel_log(buf: &mut [u8]) -> Result<&[u8], Why> {
    match sys::kernel_log(buf) {
        Ok(len) if len > 0 => Ok(&buf[..len]),
        Ok(_) => fail!("syslog(READ_ALL) returned an empty log"),
        Err(e) => fail!("syslog(READ_ALL): errno {}", e.0),
    }
}

/// A big-endian number of `cells` 32-bit cells at the start of `bytes`.
fn cells_value(bytes: &[u8], cells: usize) -> Option<u64> {
    let raw = bytes.get(..cells * 4)?;
    Some(raw.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

/// `#address-cells` / `#size-cells` of a node (the DT spec's defaults 2 / 1 when absent).
fn cell_count(node: &sys::Fd, name: &CStr, default: usize) -> Result<usize, Why> {
    let Ok(fd) = node.open_in(name) else {
        return Ok(default);
    };
    let mut buf = [0u8; 8];
    let bytes = read_all(&fd, name.to_bytes(), &mut buf)?;
    match cells_value(bytes, 1) {
        Some(n @ 1..=2) => Ok(n as usize),
        _ => fail!("{} is not 1 or 2", Text(name.to_bytes())),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

/// The random blob the harness packed last arrives with the SHA-256 the harness computed: the
/// initramfs (loaded by QEMU, located by Linux through the `initrd=` bootarg) is intact.
fn initramfs_reaches_linux_byte_for_byte() -> Result<(), Why> {
    let mut want = [0u8; 80];
    let want = expected(c"blob.sha256", &mut want)?;
    let fd = match sys::open(c"/expect/blob") {
        Ok(fd) => fd,
        Err(e) => fail!("open /expect/blob: errno {}", e.0),
    };
    let mut hash = sha256::Sha256::new();
    let mut chunk = [0u8; 4096];
    let mut total = 0usize;
    loop {
        match fd.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&chunk[..n]);
                total += n;
            }
            Err(e) => fail!("read /expect/blob: errno {}", e.0),
        }
    }
    let got = hash.finish_hex();
    if want != got.as_slice() {
        fail!(
            "/expect/blob ({total} bytes) has SHA-256 {}, the harness packed {}",
            Text(&got),
            Text(want)
        );
    }
    Ok(())
}

fn proc_cmdline_has_the_marker() -> Result<(), Why> {
    let mut marker = [0u8; 64];
    let marker = expected(c"marker", &mut marker)?;
    let mut buf = [0u8; 4096];
    let cmdline = trim_end(read_file(c"/proc/cmdline", &mut buf)?);
    let found = cmdline.split(|&b| b == b' ').any(|word| {
        word.strip_prefix(b"marker=".as_slice())
            .is_some_and(|value| value == marker)
    });
    if !found {
        fail!("no word marker={} in \"{}\"", Text(marker), Text(cmdline));
    }
    Ok(())
}

/// The harness always passes `verso.log=...` in the same `-append` string: Verso must have
/// removed it (and any other `verso.` word) before Linux saw its bootargs.
fn proc_cmdline_has_no_verso_word() -> Result<(), Why> {
    let mut buf = [0u8; 4096];
    let cmdline = trim_end(read_file(c"/proc/cmdline", &mut buf)?);
    if cmdline.is_empty() {
        fail!("/proc/cmdline is empty");
    }
    if let Some(word) = cmdline
        .split(|&b| b == b' ')
        .find(|w| w.starts_with(b"verso."))
    {
        fail!("\"{}\" reached Linux in \"{}\"", Text(word), Text(cmdline));
    }
    Ok(())
}

fn proc_cmdline_is_the_payload_bootargs_verbatim() -> Result<(), Why> {
    let mut want = [0u8; 4096];
    let want = expected(c"cmdline", &mut want)?;
    let mut buf = [0u8; 4096];
    let cmdline = trim_end(read_file(c"/proc/cmdline", &mut buf)?);
    if cmdline != want {
        fail!(
            "/proc/cmdline is \"{}\", expected \"{}\"",
            Text(cmdline),
            Text(want)
        );
    }
    Ok(())
}

/// `/reserved-memory/hyp@40200000` covers exactly the hyp region and says `no-map`, so Linux
/// neither allocates from it nor maps it (a speculative access would fault at stage 2).
fn dt_reserves_hyp_memory_no_map() -> Result<(), Why> {
    let parent = match sys::open_dir(c"/sys/firmware/devicetree/base/reserved-memory") {
        Ok(fd) => fd,
        Err(e) => fail!("no /reserved-memory node (errno {})", e.0),
    };
    let node = match sys::open_dir(HYP_NODE) {
        Ok(fd) => fd,
        Err(e) => fail!("no /reserved-memory/hyp@40200000 node (errno {})", e.0),
    };
    if let Err(e) = node.open_in(c"no-map") {
        fail!("hyp@40200000 has no no-map property (errno {})", e.0);
    }
    let address_cells = cell_count(&parent, c"#address-cells", 2)?;
    let size_cells = cell_count(&parent, c"#size-cells", 1)?;
    let reg = match node.open_in(c"reg") {
        Ok(fd) => fd,
        Err(e) => fail!("hyp@40200000 has no reg property (errno {})", e.0),
    };
    let mut buf = [0u8; 64];
    let reg = read_all(&reg, b"reg", &mut buf)?;
    let entry = (address_cells + size_cells) * 4;
    if reg.len() != entry {
        fail!(
            "reg is {} bytes, expected one ({address_cells}, {size_cells}) entry",
            reg.len()
        );
    }
    let base = cells_value(reg, address_cells).unwrap_or(0);
    let size = cells_value(&reg[address_cells * 4..], size_cells).unwrap_or(0);
    if (base, size) != (HYP_BASE, HYP_SIZE) {
        fail!("reg is {base:#x}+{size:#x}, expected {HYP_BASE:#x}+{HYP_SIZE:#x}");
    }
    Ok(())
}

/// What a walk of the whole device tree found.
#[derive(Default)]
struct DtWalk {
    nodes: usize,
    pl011: bool,
    smmu: bool,
    iommu_map: bool,
}

/// Visits every node below `dir` (a directory of /sys/firmware/devicetree/base), `depth` deep.
fn walk_dt(dir: &sys::Fd, depth: usize, found: &mut DtWalk) -> Result<(), Why> {
    const DT_DIR: u8 = 4;
    found.nodes += 1;
    if depth > 16 {
        fail!("device tree deeper than 16 levels");
    }
    let mut dents = [0u8; 2048];
    loop {
        let len = match dir.getdents(&mut dents) {
            Ok(0) => return Ok(()),
            Ok(len) => len,
            Err(e) => fail!("getdents: errno {}", e.0),
        };
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        let mut at = 0;
        while at + 19 < len {
            let reclen = usize::from(u16::from_ne_bytes([dents[at + 16], dents[at + 17]]));
            let kind = dents[at + 18];
            let record = dents.get(at + 19..(at + reclen).min(len)).unwrap_or(&[]);
            let Ok(name) = CStr::from_bytes_until_nul(record) else {
                fail!("malformed dirent");
            };
            let bytes = name.to_bytes();
            if kind == DT_DIR {
                if bytes != b"." && bytes != b".." {
                    match dir.open_dir_in(name) {
                        Ok(child) => walk_dt(&child, depth + 1, found)?,
                        Err(e) => fail!("open node {}: errno {}", Text(bytes), e.0),
                    }
                }
            } else if bytes == b"iommu-map" || bytes == b"iommu-map-mask" {
                found.iommu_map = true;
            } else if bytes == b"compatible" {
                let Ok(fd) = dir.open_in(name) else {
                    fail!("cannot open a compatible property");
                };
                let mut buf = [0u8; 512];
                let compatible = read_all(&fd, bytes, &mut buf)?;
                for string in compatible.split(|&b| b == 0) {
                    found.smmu |= string == b"arm,smmu-v3";
                    found.pl011 |= string == b"arm,pl011";
                }
            }
            if reclen == 0 {
                fail!("zero-length dirent");
            }
            at += reclen;
        }
    }
}

/// No node is an SMMUv3 and no node points at one: Linux must not find (or wait for) the IOMMU
/// Verso keeps for itself.
fn dt_has_no_smmu_and_no_iommu_map() -> Result<(), Why> {
    let root = match sys::open_dir(c"/sys/firmware/devicetree/base") {
        Ok(fd) => fd,
        Err(e) => fail!("open /sys/firmware/devicetree/base: errno {}", e.0),
    };
    let mut found = DtWalk::default();
    walk_dt(&root, 0, &mut found)?;
    // The walk must have seen the real tree (the UART's node) for "no SMMU" to mean anything.
    if !found.pl011 || found.nodes < 10 {
        fail!(
            "walk saw {} nodes and pl011={}: not the whole tree",
            found.nodes,
            found.pl011
        );
    }
    if found.smmu {
        fail!("a node is compatible with arm,smmu-v3");
    }
    if found.iommu_map {
        fail!("a node has an iommu-map property");
    }
    Ok(())
}

/// /proc/iomem (real addresses: init is root) lists no System RAM inside the hyp region, and
/// does list System RAM elsewhere (so an unreadable file cannot pass).
fn iomem_hyp_region_is_not_system_ram() -> Result<(), Why> {
    let mut buf = [0u8; 16384];
    let iomem = read_file(c"/proc/iomem", &mut buf)?;
    let mut ram_ranges = 0;
    for line in iomem.split(|&b| b == b'\n') {
        // Top-level lines only: "40000000-401fffff : System RAM" (children are indented).
        if line.first() == Some(&b' ') {
            continue;
        }
        let Some(sep) = line.windows(3).position(|w| w == b" : ") else {
            continue;
        };
        let (range, name) = (&line[..sep], &line[sep + 3..]);
        if name != b"System RAM" {
            continue;
        }
        let Some(dash) = range.iter().position(|&b| b == b'-') else {
            fail!("cannot parse \"{}\"", Text(line));
        };
        let (Some(start), Some(end)) = (
            parse_u64(&range[..dash], 16),
            parse_u64(&range[dash + 1..], 16),
        ) else {
            fail!("cannot parse \"{}\"", Text(line));
        };
        if start == 0 && end == 0 {
            fail!("/proc/iomem shows zeroed addresses (not read as root?)");
        }
        if start < HYP_BASE + HYP_SIZE && end >= HYP_BASE {
            fail!(
                "\"{}\" overlaps the hyp region {HYP_BASE:#x}+{HYP_SIZE:#x}",
                Text(line)
            );
        }
        ram_ranges += 1;
    }
    if ram_ranges == 0 {
        fail!("no System RAM line in /proc/iomem");
    }
    Ok(())
}

/// The number of CPUs in a list like "0-3" or "0,2-3".
fn count_cpu_list(list: &[u8]) -> Option<u64> {
    let mut count = 0;
    for part in trim_end(list).split(|&b| b == b',') {
        count += match part.iter().position(|&b| b == b'-') {
            Some(dash) => {
                parse_u64(&part[dash + 1..], 10)?.checked_sub(parse_u64(&part[..dash], 10)?)? + 1
            }
            None => {
                parse_u64(part, 10)?;
                1
            }
        };
    }
    Some(count)
}

/// Every CPU QEMU has is listed in the DT, online in Linux and in /proc/cpuinfo: the
/// secondaries were started by Linux's PSCI CPU_ON, which Verso relays through its own EL2 entry.
fn all_cpus_online_through_psci_relay() -> Result<(), Why> {
    let mut want = [0u8; 16];
    let Some(want) = parse_u64(expected(c"cpus", &mut want)?, 10) else {
        fail!("/expect/cpus is not a number");
    };
    let mut dt_cpus = 0u64;
    let cpus = match sys::open_dir(c"/sys/firmware/devicetree/base/cpus") {
        Ok(fd) => fd,
        Err(e) => fail!("no /cpus node (errno {})", e.0),
    };
    let mut dents = [0u8; 2048];
    loop {
        let len = match cpus.getdents(&mut dents) {
            Ok(0) => break,
            Ok(len) => len,
            Err(e) => fail!("getdents /cpus: errno {}", e.0),
        };
        let mut at = 0;
        while at + 19 < len {
            let reclen = usize::from(u16::from_ne_bytes([dents[at + 16], dents[at + 17]]));
            if reclen == 0 {
                fail!("zero-length dirent");
            }
            let record = dents.get(at + 19..(at + reclen).min(len)).unwrap_or(&[]);
            dt_cpus += u64::from(record.starts_with(b"cpu@"));
            at += reclen;
        }
    }
    let mut buf = [0u8; 64];
    let online = read_file(c"/sys/devices/system/cpu/online", &mut buf)?;
    let Some(online_count) = count_cpu_list(online) else {
        fail!(
            "cannot parse /sys/devices/system/cpu/online \"{}\"",
            Text(online)
        );
    };
    let mut buf = [0u8; 16384];
    let cpuinfo = read_file(c"/proc/cpuinfo", &mut buf)?;
    let processors = cpuinfo
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"processor"))
        .count() as u64;
    if want < 2 {
        fail!("the harness asked for {want} CPU: no secondary to start");
    }
    if (dt_cpus, online_count, processors) != (want, want, want) {
        fail!(
            "QEMU has {want} CPUs; DT lists {dt_cpus}, online \"{}\" ({online_count}), /proc/cpuinfo {processors}",
            Text(trim_end(online))
        );
    }
    Ok(())
}

/// Linux says it entered at EL1 on every CPU: it runs under Verso (on bare QEMU with
/// virtualization=on it would have started at EL2), the secondaries included.
fn linux_runs_at_el1_on_every_cpu() -> Result<(), Why> {
    let mut buf = [0u8; 256 * 1024];
    let log = kernel_log(&mut buf)?;
    if !contains(log, ALL_AT_EL1) {
        let el2 = contains(log, b"CPU: All CPU(s) started at EL2");
        fail!(
            "kernel log lacks \"{}\" (says EL2: {el2})",
            Text(ALL_AT_EL1)
        );
    }
    Ok(())
}

/// Nothing in the kernel log says the kernel hit a bug: no oops, BUG, WARNING, unhandled
/// abort (which an access to the hyp region or the SMMU would show as) or SError.
fn kernel_log_has_no_oops_bug_or_warning() -> Result<(), Why> {
    const BAD: &[&[u8]] = &[
        b"Unable to handle kernel",
        b"Internal error:",
        b"Oops",
        b"BUG:",
        b"WARNING:",
        b"SError",
        b"Unhandled fault",
        b"Initramfs unpacking failed",
        // A virtio-blk request that failed (e.g. its DMA aborted): "I/O error, dev vda, ...".
        b"I/O error",
    ];
    let mut buf = [0u8; 256 * 1024];
    let log = kernel_log(&mut buf)?;
    for line in log.split(|&b| b == b'\n') {
        if BAD.iter().any(|bad| contains(line, bad)) {
            fail!("kernel log: \"{}\"", Text(line));
        }
    }
    Ok(())
}

/// A process maps the hyp's region through /dev/mem (allowed: it is not System RAM) and reads
/// it. Verso refuses the access at stage 2 and injects a synchronous external abort, which an
/// unmodified Linux turns into SIGBUS for the process; the kernel itself goes on. (A translation
/// fault would not do: Linux finds its own page table entry valid, calls the fault spurious and
/// retries the access forever.)
fn user_read_of_hyp_memory_gets_sigbus_and_the_kernel_survives() -> Result<(), Why> {
    match sys::mknod_char(c"/dev/mem", 1, 1) {
        Ok(()) | Err(Errno(sys::EEXIST)) => {}
        Err(e) => fail!("mknod /dev/mem: errno {}", e.0),
    }
    let mem = match sys::open(c"/dev/mem") {
        Ok(fd) => fd,
        Err(e) => fail!("open /dev/mem: errno {}", e.0),
    };
    let addr = match sys::mmap_read(&mem, 4096, HYP_BASE as usize) {
        Ok(a) => a,
        Err(e) => fail!(
            "mmap of the hyp region through /dev/mem refused: errno {}",
            e.0
        ),
    };
    let pid = match sys::fork() {
        Ok(0) => {
            // The child: this read must never complete.
            let v = sys::read_u64_at(addr);
            println!("verso linux init: child read {v:#x} from the hyp's memory");
            sys::exit(0)
        }
        Ok(pid) => pid,
        Err(e) => fail!("fork: errno {}", e.0),
    };
    match sys::wait_child(pid, 5000) {
        Ok((sys::ChildEnd::Signaled(sig), false)) if sig == sys::SIGBUS => Ok(()),
        Ok((end, true)) => fail!("the read neither completed nor faulted within 5 s ({end:?} after SIGKILL): the abort is retried forever"),
        Ok((end, false)) => fail!("expected SIGBUS, the child ended {end:?}"),
        Err(e) => fail!("wait4: errno {}", e.0),
    }
}

// ---------------------------------------------------------------------------------------------
// Device DMA through the SMMU: a virtio-blk-pci disk on PCI bus 0

/// How long the disk may take to appear after `virtio_blk` loads.
const DISK_WAIT_MS: usize = 10_000;
/// Set when a check's child process could not be ended: the later DMA checks are not run (they
/// would wait on the same stuck disk), and /init restarts the machine instead of powering it off
/// (Linux's power-off path waits for the stuck request and never reaches PSCI SYSTEM_OFF).
static STUCK: AtomicBool = AtomicBool::new(false);

/// How long each DMA check may take (well under a second when DMA works). A DMA the SMMU aborts
/// leaves a request that never completes and its process in an uninterruptible wait, so each
/// check runs in a child process that /init abandons after this long, with a FAIL.
const DMA_CHECK_MS: usize = 20_000;

/// Runs `check` in a child process and returns its result, or fails if the child is not done
/// within `ms` (it is then killed if it can be, and left behind if it cannot).
fn in_child(check: Check, ms: usize) -> Result<(), Why> {
    if STUCK.load(Ordering::Relaxed) {
        fail!("not run: an earlier check's process is stuck in the kernel");
    }
    let (reader, writer) = match sys::pipe() {
        Ok(ends) => ends,
        Err(e) => fail!("pipe: errno {}", e.0),
    };
    let pid = match sys::fork() {
        Ok(0) => {
            drop(reader);
            // The reason fits in one pipe buffer (480 < PIPE_BUF): this write cannot block.
            let code = match check() {
                Ok(()) => 0,
                Err(why) => {
                    let _ = writer.write_all(why.as_bytes());
                    1
                }
            };
            sys::exit(code)
        }
        Ok(pid) => pid,
        Err(e) => fail!("fork: errno {}", e.0),
    };
    drop(writer);
    match sys::wait_child_until(pid, ms) {
        Ok(Some(sys::ChildEnd::Exited(0))) => Ok(()),
        Ok(Some(sys::ChildEnd::Exited(_))) => {
            let mut why = Line::new();
            let len = reader.read_to_fill(&mut why.buf).unwrap_or(0);
            why.len = len;
            Err(why)
        }
        Ok(Some(sys::ChildEnd::Signaled(sig))) => fail!("the check's process died of signal {sig}"),
        Ok(None) => {
            STUCK.store(true, Ordering::Relaxed);
            fail!(
            "not done after {ms} ms and unkillable: stuck in the kernel waiting for the disk (a DMA that never completes?)"
            )
        }
        Err(e) => fail!("wait4: errno {}", e.0),
    }
}

/// A buffer for `O_DIRECT` transfers: the device DMAs straight into or out of it, so it must be
/// aligned to (and a multiple of) the logical block size; a page covers every block size.
#[repr(C, align(4096))]
struct Sectors([u8; 64 * 1024]);

/// Loads each module `/expect/modules` names, in that order, from `/modules/<name>.ko`: the
/// virtio core, ring, PCI transport and block driver of the very package the kernel came from
/// (the cloud kernel builds them as modules). Loading `virtio_pci` binds the virtio-blk-pci
/// function QEMU has on bus 0, and `virtio_blk` then creates `vda`.
fn virtio_modules_from_the_kernel_package_load() -> Result<(), Why> {
    in_child(load_virtio_modules, DMA_CHECK_MS)
}

fn load_virtio_modules() -> Result<(), Why> {
    let mut buf = [0u8; 512];
    let list = expected(c"modules", &mut buf)?;
    let mut count = 0;
    for name in list.split(|&b| b == b'\n').filter(|n| !n.is_empty()) {
        let mut path = Line::new();
        let _ = write!(path, "/modules/{}.ko\0", Text(name));
        let Ok(path) = CStr::from_bytes_with_nul(path.as_bytes()) else {
            fail!("module name \"{}\" is not a file name", Text(name));
        };
        let fd = match sys::open(path) {
            Ok(fd) => fd,
            Err(e) => fail!("open {}: errno {}", Text(path.to_bytes()), e.0),
        };
        if let Err(e) = fd.finit_module() {
            fail!("finit_module {}: errno {}", Text(path.to_bytes()), e.0);
        }
        count += 1;
    }
    if count == 0 {
        fail!("/expect/modules names no module");
    }
    Ok(())
}

/// Waits for `/sys/block/vda`, checks that it is the virtio-blk function at the PCI address the
/// harness gave QEMU (bus 0: its StreamID is one Verso points at the host's stage-2) and has the
/// expected size, makes `/dev/vda` from its `dev` numbers and opens it with `O_DIRECT`.
fn open_disk() -> Result<(sys::Fd, u64), Why> {
    let mut waited = 0;
    while sys::open(c"/sys/block/vda/dev").is_err() {
        if waited >= DISK_WAIT_MS {
            fail!("no /sys/block/vda {DISK_WAIT_MS} ms after the modules loaded");
        }
        sys::sleep_ms(20);
        waited += 20;
    }
    let mut pci = [0u8; 32];
    let pci = expected(c"disk.pci", &mut pci)?;
    let mut path = Line::new();
    let _ = write!(
        path,
        "/sys/bus/pci/devices/{}/virtio0/block/vda\0",
        Text(pci)
    );
    let Ok(path) = CStr::from_bytes_with_nul(path.as_bytes()) else {
        fail!("/expect/disk.pci is not a PCI address");
    };
    if let Err(e) = sys::open_dir(path) {
        fail!(
            "vda is not the virtio-blk function at PCI {} ({} errno {})",
            Text(pci),
            Text(path.to_bytes()),
            e.0
        );
    }
    let mut buf = [0u8; 32];
    let sectors = read_file(c"/sys/block/vda/size", &mut buf)?;
    let mut want = [0u8; 32];
    let Some(want) = parse_u64(expected(c"disk.size", &mut want)?, 10) else {
        fail!("/expect/disk.size is not a number");
    };
    let Some(size) = parse_u64(trim_end(sectors), 10).and_then(|s| s.checked_mul(512)) else {
        fail!("cannot parse /sys/block/vda/size \"{}\"", Text(sectors));
    };
    if size != want {
        fail!("vda has {size} bytes, the harness made a {want}-byte disk");
    }
    let mut buf = [0u8; 32];
    let dev = trim_end(read_file(c"/sys/block/vda/dev", &mut buf)?);
    let numbers = dev.iter().position(|&b| b == b':').and_then(|colon| {
        Some((
            parse_u64(&dev[..colon], 10)?,
            parse_u64(&dev[colon + 1..], 10)?,
        ))
    });
    let Some((major, minor)) = numbers else {
        fail!("cannot parse /sys/block/vda/dev \"{}\"", Text(dev));
    };
    match sys::mknod_block(c"/dev/vda", major as usize, minor as usize) {
        Ok(()) | Err(Errno(sys::EEXIST)) => {}
        Err(e) => fail!("mknod /dev/vda {major}:{minor}: errno {}", e.0),
    }
    match sys::open_direct(c"/dev/vda") {
        Ok(fd) => Ok((fd, size)),
        Err(e) => fail!("open /dev/vda with O_DIRECT: errno {}", e.0),
    }
}

/// The SHA-256 (hex) of the whole disk, read with `O_DIRECT` in 64 KiB requests: every byte is
/// DMA'd by the device into `buf` now, none comes from the page cache.
fn disk_sha256(disk: &sys::Fd, size: u64, buf: &mut Sectors) -> Result<[u8; 64], Why> {
    let mut hash = sha256::Sha256::new();
    let mut at = 0u64;
    while at < size {
        let want = (size - at).min(buf.0.len() as u64) as usize;
        // Poison first: a DMA that never lands must not leave the previous chunk's bytes.
        buf.0[..want].fill(0xa5);
        match disk.pread_at(&mut buf.0[..want], at) {
            Ok(n) if n == want => hash.update(&buf.0[..n]),
            Ok(n) => fail!("pread of {want} bytes at {at:#x} returned {n}"),
            Err(e) => fail!("pread of {want} bytes at {at:#x}: errno {}", e.0),
        }
        at += want as u64;
    }
    Ok(hash.finish_hex())
}

/// The whole disk, read through the virtio-blk device's DMA into this process's pages (which
/// the host stage-2 maps, and which the SMMU translates through that same stage-2), has exactly
/// the SHA-256 of the image the harness generated.
fn virtio_blk_dma_through_the_smmu_reads_the_disk_byte_for_byte() -> Result<(), Why> {
    in_child(read_the_disk, DMA_CHECK_MS)
}

fn read_the_disk() -> Result<(), Why> {
    let (disk, size) = open_disk()?;
    let mut want = [0u8; 80];
    let want = expected(c"disk.sha256", &mut want)?;
    let mut buf = Sectors([0; 64 * 1024]);
    let got = disk_sha256(&disk, size, &mut buf)?;
    if got.as_slice() != want {
        fail!(
            "/dev/vda ({size} bytes) has SHA-256 {}, the harness's image {}",
            Text(&got),
            Text(want)
        );
    }
    Ok(())
}

/// The other direction: the device reads a block from this process's memory (DMA out of RAM)
/// and writes it to the disk; an `O_DIRECT` read brings it back (DMA into RAM) byte for byte;
/// and the whole disk afterwards has the SHA-256 the harness computed for "the image with that
/// block replaced": the block landed at its offset and nothing else changed. (The harness also
/// finds the block in the image file once QEMU has exited.)
fn virtio_blk_dma_through_the_smmu_writes_a_block_and_reads_it_back() -> Result<(), Why> {
    in_child(write_a_block_and_read_it_back, DMA_CHECK_MS)
}

fn write_a_block_and_read_it_back() -> Result<(), Why> {
    let (disk, size) = open_disk()?;
    let mut text = [0u8; 32];
    let Some(offset) = parse_u64(expected(c"write.offset", &mut text)?, 10) else {
        fail!("/expect/write.offset is not a number");
    };
    let mut block = [0u8; 4096];
    let fd = match sys::open(c"/expect/write.bin") {
        Ok(fd) => fd,
        Err(e) => fail!("open /expect/write.bin: errno {}", e.0),
    };
    match fd.read_to_fill(&mut block) {
        Ok(n) if n == block.len() => {}
        Ok(n) => fail!("/expect/write.bin has {n} bytes, not {}", block.len()),
        Err(e) => fail!("read /expect/write.bin: errno {}", e.0),
    }
    let mut buf = Sectors([0; 64 * 1024]);
    buf.0[..block.len()].copy_from_slice(&block);
    match disk.pwrite_at(&buf.0[..block.len()], offset) {
        Ok(n) if n == block.len() => {}
        Ok(n) => fail!("pwrite of 4096 bytes at {offset:#x} wrote {n}"),
        Err(e) => fail!("pwrite of 4096 bytes at {offset:#x}: errno {}", e.0),
    }
    if let Err(e) = disk.fdatasync() {
        fail!("fdatasync /dev/vda: errno {}", e.0);
    }
    buf.0[..block.len()].fill(0);
    match disk.pread_at(&mut buf.0[..block.len()], offset) {
        Ok(n) if n == block.len() => {}
        Ok(n) => fail!("pread of 4096 bytes at {offset:#x} returned {n}"),
        Err(e) => fail!("pread of 4096 bytes at {offset:#x}: errno {}", e.0),
    }
    if let Some(i) = (0..block.len()).find(|&i| buf.0[i] != block[i]) {
        fail!(
            "the block read back from {offset:#x} differs from the one written at byte {i} ({:#04x}, wrote {:#04x})",
            buf.0[i],
            block[i]
        );
    }
    let mut want = [0u8; 80];
    let want = expected(c"disk.after.sha256", &mut want)?;
    let got = disk_sha256(&disk, size, &mut buf)?;
    if got.as_slice() != want {
        fail!(
            "after the write /dev/vda has SHA-256 {}, expected {}",
            Text(&got),
            Text(want)
        );
    }
    Ok(())
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("FAIL: linux_init_does_not_panic ({})", info.message());
    let _ = sys::power_off();
    sys::exit(1)
}
