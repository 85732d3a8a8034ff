//! Raw Linux system calls for aarch64, without libc: number in x8, arguments in x0..x5,
//! `svc #0`, result (or a negated errno) in x0. This module is the only place /init uses
//! `unsafe`; every wrapper is safe because it hands the kernel nothing but the pointer and length
//! of a live Rust slice or a NUL-terminated `CStr`, and the kernel checks both before touching
//! them (a bad pointer is `EFAULT`, never a write elsewhere).

use core::arch::asm;
use core::ffi::CStr;

// System call numbers: the generic table (include/uapi/asm-generic/unistd.h) that arm64 uses.
const SYS_MKDIRAT: usize = 34;
const SYS_MOUNT: usize = 40;
const SYS_OPENAT: usize = 56;
const SYS_CLOSE: usize = 57;
const SYS_GETDENTS64: usize = 61;
const SYS_READ: usize = 63;
const SYS_WRITE: usize = 64;
const SYS_EXIT: usize = 93;
const SYS_SYSLOG: usize = 116;
const SYS_REBOOT: usize = 142;

/// `AT_FDCWD`: paths relative to the current directory (`/` for init).
const AT_FDCWD: isize = -100;
/// `O_RDONLY`.
const O_RDONLY: usize = 0;
/// `O_WRONLY`.
const O_WRONLY: usize = 1;
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
