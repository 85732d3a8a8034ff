//! Raw Linux system calls for aarch64, without libc: number in x8, arguments in x0..x5,
//! `svc #0`, result (or a negated errno) in x0. This module is the only place /init uses
//! `unsafe`; every wrapper is safe because it hands the kernel nothing but the pointer and length
//! of a live Rust slice or a NUL-terminated `CStr`, and the kernel checks both before touching
//! them (a bad pointer is `EFAULT`, never a write elsewhere).

use core::arch::asm;
use core::ffi::CStr;

// System call numbers: the generic table (include/uapi/asm-generic/unistd.h) that arm64 uses.
const SYS_MKNODAT: usize = 33;
const SYS_MKDIRAT: usize = 34;
const SYS_MOUNT: usize = 40;
const SYS_OPENAT: usize = 56;
const SYS_CLOSE: usize = 57;
const SYS_PIPE2: usize = 59;
const SYS_GETDENTS64: usize = 61;
const SYS_READ: usize = 63;
const SYS_WRITE: usize = 64;
const SYS_PREAD64: usize = 67;
const SYS_PWRITE64: usize = 68;
const SYS_FDATASYNC: usize = 83;
const SYS_FINIT_MODULE: usize = 273;
const SYS_EXIT: usize = 93;
const SYS_SYSLOG: usize = 116;
const SYS_REBOOT: usize = 142;
const SYS_KILL: usize = 129;
const SYS_NANOSLEEP: usize = 101;
const SYS_CLONE: usize = 220;
const SYS_MMAP: usize = 222;
const SYS_WAIT4: usize = 260;

/// `AT_FDCWD`: paths relative to the current directory (`/` for init).
const AT_FDCWD: isize = -100;
/// `O_RDONLY`.
const O_RDONLY: usize = 0;
/// `O_WRONLY`.
const O_WRONLY: usize = 1;
/// `O_RDWR`.
const O_RDWR: usize = 2;
/// `O_DIRECT` as arm64 defines it (arch/arm64/include/uapi/asm/fcntl.h; x86's is 0o40000): the
/// transfer goes between the device and the caller's buffer, never through the page cache.
const O_DIRECT: usize = 0o200000;
/// `O_DIRECTORY` as arm64 defines it (arch/arm64/include/uapi/asm/fcntl.h; not x86's value).
const O_DIRECTORY: usize = 0o40000;
/// `O_CLOEXEC`.
const O_CLOEXEC: usize = 0o2000000;

/// `EEXIST`: the directory is already there.
pub const EEXIST: isize = 17;
/// `EBUSY`: the file system is already mounted there.
pub const EBUSY: isize = 16;

/// `SYSLOG_ACTION_READ_ALL`: copy the whole kernel log without consuming it.
const SYSLOG_ACTION_READ_ALL: usize = 3;

// reboot(2) magic numbers and LINUX_REBOOT_CMD_POWER_OFF (include/uapi/linux/reboot.h).
const LINUX_REBOOT_MAGIC1: usize = 0xfee1_dead;
const LINUX_REBOOT_MAGIC2: usize = 672_274_793;
const LINUX_REBOOT_CMD_POWER_OFF: usize = 0x4321_fedc;

/// A failed system call: the positive errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub isize);

/// An open file descriptor, closed when dropped.
#[derive(Debug)]
pub struct Fd(isize);

impl Drop for Fd {
    fn drop(&mut self) {
        // Nothing useful to do if close fails: the descriptor is gone either way.
        let _ = syscall(SYS_CLOSE, [self.0 as usize, 0, 0, 0, 0]);
    }
}

/// Issues system call `nr`. Safe for the calls this module makes: each passes only integers and
/// pointers into live buffers whose lengths travel with them (see the module doc).
fn syscall(nr: usize, args: [usize; 5]) -> Result<usize, Errno> {
    let ret: isize;
    // SAFETY: `svc #0` enters the kernel, which reads x8 and x0..x4 and writes only x0 (the
    // result); every other register is preserved across the call (arm64 syscall ABI). Memory the
    // kernel reads or writes is named by the callers' pointer arguments, which point into slices
    // or C strings borrowed for the duration of this call.
    unsafe {
        asm!(
            "svc #0",
            in("x8") nr,
            inlateout("x0") args[0] => ret,
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            in("x4") args[4],
            options(nostack),
        );
    }
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret))
    } else {
        Ok(ret as usize)
    }
}

/// Writes all of `bytes` to file descriptor `fd` (1 is the console init inherited).
pub fn write_all(fd: usize, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        let n = syscall(SYS_WRITE, [fd, bytes.as_ptr() as usize, bytes.len(), 0, 0])?;
        if n == 0 {
            return Err(Errno(0));
        }
        bytes = &bytes[n.min(bytes.len())..];
    }
    Ok(())
}

fn open_at(dir: isize, path: &CStr, flags: usize) -> Result<Fd, Errno> {
    let fd = syscall(
        SYS_OPENAT,
        [
            dir as usize,
            path.as_ptr() as usize,
            flags | O_CLOEXEC,
            0,
            0,
        ],
    )?;
    Ok(Fd(fd as isize))
}

/// Opens `path` read-only.
pub fn open(path: &CStr) -> Result<Fd, Errno> {
    open_at(AT_FDCWD, path, O_RDONLY)
}

/// Opens `path` write-only (an existing file: /proc and /sys entries).
pub fn open_write(path: &CStr) -> Result<Fd, Errno> {
    open_at(AT_FDCWD, path, O_WRONLY)
}

/// Opens the block device `path` for reading and writing with `O_DIRECT`: every `pread_at` and
/// `pwrite_at` is one request to the device (buffers, offsets and lengths must be multiples of
/// the logical block size).
pub fn open_direct(path: &CStr) -> Result<Fd, Errno> {
    open_at(AT_FDCWD, path, O_RDWR | O_DIRECT)
}

/// Opens the directory `path` for `getdents`.
pub fn open_dir(path: &CStr) -> Result<Fd, Errno> {
    open_at(AT_FDCWD, path, O_RDONLY | O_DIRECTORY)
}

impl Fd {
    /// Opens `name` (a file) inside this directory.
    pub fn open_in(&self, name: &CStr) -> Result<Fd, Errno> {
        open_at(self.0, name, O_RDONLY)
    }

    /// Opens `name` (a subdirectory) inside this directory.
    pub fn open_dir_in(&self, name: &CStr) -> Result<Fd, Errno> {
        open_at(self.0, name, O_RDONLY | O_DIRECTORY)
    }

    /// Reads into `buf` once; returns how many bytes came (0 at the end of the file).
    pub fn read(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        syscall(
            SYS_READ,
            [self.0 as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0],
        )
    }

    /// Reads until `buf` is full or the file ends; returns the length read.
    pub fn read_to_fill(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        let mut len = 0;
        while len < buf.len() {
            match self.read(&mut buf[len..])? {
                0 => break,
                n => len += n,
            }
        }
        Ok(len)
    }

    /// pread(2): reads into `buf` from byte `offset`; returns how many bytes came.
    pub fn pread_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        syscall(
            SYS_PREAD64,
            [
                self.0 as usize,
                buf.as_mut_ptr() as usize,
                buf.len(),
                offset as usize,
                0,
            ],
        )
    }

    /// pwrite(2): writes `bytes` at byte `offset`; returns how many bytes went.
    pub fn pwrite_at(&self, bytes: &[u8], offset: u64) -> Result<usize, Errno> {
        syscall(
            SYS_PWRITE64,
            [
                self.0 as usize,
                bytes.as_ptr() as usize,
                bytes.len(),
                offset as usize,
                0,
            ],
        )
    }

    /// fdatasync(2): returns once the device says the data is stable (a virtio-blk FLUSH).
    pub fn fdatasync(&self) -> Result<(), Errno> {
        syscall(SYS_FDATASYNC, [self.0 as usize, 0, 0, 0, 0]).map(|_| ())
    }

    /// finit_module(2) of this file (a kernel module, uncompressed) with no parameters.
    pub fn finit_module(&self) -> Result<(), Errno> {
        syscall(
            SYS_FINIT_MODULE,
            [self.0 as usize, c"".as_ptr() as usize, 0, 0, 0],
        )
        .map(|_| ())
    }

    /// Writes all of `bytes`.
    pub fn write_all(&self, bytes: &[u8]) -> Result<(), Errno> {
        write_all(self.0 as usize, bytes)
    }

    /// Fills `buf` with `linux_dirent64` records; returns the bytes used (0 at the end).
    pub fn getdents(&self, buf: &mut [u8]) -> Result<usize, Errno> {
        syscall(
            SYS_GETDENTS64,
            [self.0 as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0],
        )
    }
}

/// Creates directory `path` (mode 0755).
pub fn mkdir(path: &CStr) -> Result<(), Errno> {
    syscall(
        SYS_MKDIRAT,
        [AT_FDCWD as usize, path.as_ptr() as usize, 0o755, 0, 0],
    )
    .map(|_| ())
}

/// Mounts a pseudo file system (`proc`, `sysfs`) of type `fstype` at `target`.
pub fn mount(fstype: &CStr, target: &CStr) -> Result<(), Errno> {
    syscall(
        SYS_MOUNT,
        [
            fstype.as_ptr() as usize,
            target.as_ptr() as usize,
            fstype.as_ptr() as usize,
            0,
            0,
        ],
    )
    .map(|_| ())
}

/// Copies the kernel log into `buf` (needs CAP_SYSLOG, which init has); returns its length.
pub fn kernel_log(buf: &mut [u8]) -> Result<usize, Errno> {
    syscall(
        SYS_SYSLOG,
        [
            SYSLOG_ACTION_READ_ALL,
            buf.as_mut_ptr() as usize,
            buf.len(),
            0,
            0,
        ],
    )
}

/// Powers the machine off: Linux calls PSCI SYSTEM_OFF, which Verso relays and QEMU answers by
/// exiting with status 0. Returns only if the kernel refused.
pub fn power_off() -> Errno {
    match syscall(
        SYS_REBOOT,
        [
            LINUX_REBOOT_MAGIC1,
            LINUX_REBOOT_MAGIC2,
            LINUX_REBOOT_CMD_POWER_OFF,
            0,
            0,
        ],
    ) {
        Ok(_) => Errno(0),
        Err(e) => e,
    }
}

/// Ends this process. For init that is a kernel panic ("Attempted to kill init!"), which the
/// harness reports as a failure.
pub fn exit(code: usize) -> ! {
    loop {
        let _ = syscall(SYS_EXIT, [code, 0, 0, 0, 0]);
    }
}

/// Signal numbers used by the checks (asm-generic/signal.h).
pub const SIGBUS: usize = 7;
/// SIGKILL, to end a child that outlived its deadline.
pub const SIGKILL: usize = 9;
/// SIGCHLD, the signal a forked child sends its parent on exit.
const SIGCHLD: usize = 17;
/// wait4 option: do not block.
const WNOHANG: usize = 1;

/// Creates the character device node `path` (major, minor), mode 0600.
pub fn mknod_char(path: &CStr, major: usize, minor: usize) -> Result<(), Errno> {
    const S_IFCHR: usize = 0o020000;
    syscall(
        SYS_MKNODAT,
        [
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            S_IFCHR | 0o600,
            dev_t(major, minor),
            0,
        ],
    )
    .map(|_| ())
}

/// Creates the block device node `path` (major, minor), mode 0600.
pub fn mknod_block(path: &CStr, major: usize, minor: usize) -> Result<(), Errno> {
    const S_IFBLK: usize = 0o060000;
    syscall(
        SYS_MKNODAT,
        [
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            S_IFBLK | 0o600,
            dev_t(major, minor),
            0,
        ],
    )
    .map(|_| ())
}

/// The kernel's `dev_t` encoding (new_encode_dev): the old 8:8 layout for small numbers, with the
/// minor's high bits above the major (block majors such as virtio-blk's are dynamic, >= 240).
fn dev_t(major: usize, minor: usize) -> usize {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Sleeps about `ms` milliseconds.
pub fn sleep_ms(ms: usize) {
    let ts: [i64; 2] = [(ms / 1000) as i64, ((ms % 1000) * 1_000_000) as i64];
    let _ = syscall(SYS_NANOSLEEP, [ts.as_ptr() as usize, 0, 0, 0, 0]);
}

/// fork(2): `Ok(0)` in the child, `Ok(pid)` in the parent.
pub fn fork() -> Result<usize, Errno> {
    // clone(SIGCHLD, no new stack, no tid pointers, no tls): fork semantics.
    syscall(SYS_CLONE, [SIGCHLD, 0, 0, 0, 0])
}

/// Maps `len` bytes of `fd` at `offset` read-only and shared; returns the address.
pub fn mmap_read(fd: &Fd, len: usize, offset: usize) -> Result<usize, Errno> {
    const PROT_READ: usize = 1;
    const MAP_SHARED: usize = 1;
    // mmap takes six arguments; the sixth (offset) goes in x5.
    let ret: isize;
    // SAFETY: `svc #0` with x8 = mmap; the kernel reads x0..x5 and writes x0 only. A new
    // mapping at an address the kernel chooses (x0 = 0) cannot overlap memory Rust owns.
    unsafe {
        asm!(
            "svc #0",
            in("x8") SYS_MMAP,
            inlateout("x0") 0usize => ret,
            in("x1") len,
            in("x2") PROT_READ,
            in("x3") MAP_SHARED,
            in("x4") fd.0 as usize,
            in("x5") offset,
            options(nostack),
        );
    }
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret))
    } else {
        Ok(ret as usize)
    }
}

/// How a child ended, from wait4's status word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildEnd {
    /// exit(code)
    Exited(usize),
    /// killed by a signal
    Signaled(usize),
}

/// Waits up to about `ms` milliseconds for child `pid`; kills it (SIGKILL) if it is still
/// running then. Returns how it ended and whether it had to be killed.
pub fn wait_child(pid: usize, ms: usize) -> Result<(ChildEnd, bool), Errno> {
    let mut killed = false;
    let mut waited = 0;
    loop {
        let mut status: i32 = 0;
        let r = syscall(
            SYS_WAIT4,
            [pid, &mut status as *mut i32 as usize, WNOHANG, 0, 0],
        )?;
        if r == pid {
            let s = status as usize;
            let end = if s & 0x7f == 0 {
                ChildEnd::Exited((s >> 8) & 0xff)
            } else {
                ChildEnd::Signaled(s & 0x7f)
            };
            return Ok((end, killed));
        }
        if waited >= ms && !killed {
            let _ = syscall(SYS_KILL, [pid, SIGKILL, 0, 0, 0]);
            killed = true;
        }
        let ts: [i64; 2] = [0, 10_000_000]; // 10 ms
        let _ = syscall(SYS_NANOSLEEP, [ts.as_ptr() as usize, 0, 0, 0, 0]);
        waited += 10;
    }
}

/// Like [`wait_child`], but gives up: after `ms` the child gets SIGKILL, and if it has not ended
/// a second later (a process inside an uninterruptible kernel wait, e.g. for a disk request that
/// never completes, dies only when the wait ends) `Ok(None)` says it is still there.
pub fn wait_child_until(pid: usize, ms: usize) -> Result<Option<ChildEnd>, Errno> {
    let mut waited = 0;
    loop {
        let mut status: i32 = 0;
        let r = syscall(
            SYS_WAIT4,
            [pid, &mut status as *mut i32 as usize, WNOHANG, 0, 0],
        )?;
        if r == pid {
            let s = status as usize;
            return Ok(Some(if s & 0x7f == 0 {
                ChildEnd::Exited((s >> 8) & 0xff)
            } else {
                ChildEnd::Signaled(s & 0x7f)
            }));
        }
        if waited == ms {
            let _ = syscall(SYS_KILL, [pid, SIGKILL, 0, 0, 0]);
        }
        if waited >= ms + 1000 {
            return Ok(None);
        }
        sleep_ms(10);
        waited += 10;
    }
}

/// pipe2(2) with `O_CLOEXEC`: (read end, write end).
pub fn pipe() -> Result<(Fd, Fd), Errno> {
    let mut fds = [0i32; 2];
    syscall(SYS_PIPE2, [fds.as_mut_ptr() as usize, O_CLOEXEC, 0, 0, 0])?;
    Ok((Fd(fds[0] as isize), Fd(fds[1] as isize)))
}

/// Reads the 8 bytes at `addr` (a mapping this process made). Only for the fault checks.
pub fn read_u64_at(addr: usize) -> u64 {
    // SAFETY: `addr` comes from a successful `mmap_read` of at least 8 bytes and stays mapped;
    // the read may fault (that is what the caller tests), which the kernel turns into a signal.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}
