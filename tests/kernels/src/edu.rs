//! QEMU's `edu` device (hw/misc/edu.c, docs/specs/edu.rst) as a DMA engine: it copies between
//! its 4 KiB internal buffer (device address 0x40000) and memory, through the SMMU. Included by
//! `bin/dma_suite.rs` and `bin/demo.rs` with `#[path]`.
//!
//! Run it with `-device edu,dma_mask=0xffffffffffffffff`: the default mask silently truncates
//! DMA addresses to 28 bits.

use core::ptr::{read_volatile, write_volatile};

/// PCI vendor ID.
pub const VENDOR: u16 = 0x1234;
/// PCI device ID.
pub const DEVICE: u16 = 0x11e8;
/// Device address of the internal buffer.
pub const BUFFER: u64 = 0x4_0000;
/// Size of the internal buffer (offset + length must stay inside: QEMU does not enforce it).
pub const BUFFER_SIZE: u64 = 4096;

const REG_ID: u64 = 0x00;
const REG_LIVENESS: u64 = 0x04;
const REG_DMA_SRC: u64 = 0x80;
const REG_DMA_DST: u64 = 0x88;
const REG_DMA_COUNT: u64 = 0x90;
const REG_DMA_CMD: u64 = 0x98;
const CMD_START: u64 = 1;
const CMD_TO_RAM: u64 = 2;

/// An edu whose BAR0 is mapped at `bar`.
#[derive(Clone, Copy, Debug)]
pub struct Edu {
    bar: u64,
}

/// Which way a DMA goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// The device reads memory into its buffer.
    FromRam,
    /// The device writes its buffer to memory.
    ToRam,
}

impl Edu {
    /// The device at `bar` (BAR0, already enabled).
    pub fn at(bar: u64) -> Edu {
        Edu { bar }
    }

    fn read32(&self, off: u64) -> u32 {
        // SAFETY: BAR0 is enabled at `bar`, inside the identity-mapped Device window.
        unsafe { read_volatile((self.bar + off) as *const u32) }
    }
    fn write32(&self, off: u64, v: u32) {
        // SAFETY: as in `read32`.
        unsafe { write_volatile((self.bar + off) as *mut u32, v) }
    }
    fn read64(&self, off: u64) -> u64 {
        // SAFETY: as in `read32`; registers from 0x80 accept 8-byte accesses.
        unsafe { read_volatile((self.bar + off) as *const u64) }
    }
    fn write64(&self, off: u64, v: u64) {
        // SAFETY: as in `read64`.
        unsafe { write_volatile((self.bar + off) as *mut u64, v) }
    }

    /// The identification register (0x010000ED for edu 1.0).
    pub fn id(&self) -> u32 {
        self.read32(REG_ID)
    }

    /// Writes `v` to the liveness register and returns what it answers (`!v`).
    pub fn liveness(&self, v: u32) -> u32 {
        self.write32(REG_LIVENESS, v);
        self.read32(REG_LIVENESS)
    }

    /// Runs one DMA of `len` bytes between memory at `ram` (an IPA: the host's physical address)
    /// and the buffer at `offset`, and waits for it (edu takes 100 ms of virtual time).
    /// Returns false on timeout.
    pub fn dma(&self, dir: Direction, ram: u64, offset: u64, len: u64) -> bool {
        assert!(offset + len <= BUFFER_SIZE, "edu buffer overflow");
        let (src, dst, cmd) = match dir {
            Direction::FromRam => (ram, BUFFER + offset, CMD_START),
            Direction::ToRam => (BUFFER + offset, ram, CMD_START | CMD_TO_RAM),
        };
        // Memory the device reads must be written out first (a no-op for QEMU, which has no
        // caches, but the order is what hardware needs).
        // SAFETY: a barrier has no effect on memory contents.
        unsafe { core::arch::asm!("dsb sy", options(nostack)) };
        self.write64(REG_DMA_SRC, src);
        self.write64(REG_DMA_DST, dst);
        self.write64(REG_DMA_COUNT, len);
        self.write64(REG_DMA_CMD, cmd);
        let done = verso_test_kernels::cpus::wait_until(3000, || {
            self.read64(REG_DMA_CMD) & CMD_START == 0
        });
        // SAFETY: as above; later reads of memory see what the device wrote.
        unsafe { core::arch::asm!("dsb sy", options(nostack)) };
        done
    }
}
