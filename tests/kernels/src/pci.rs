//! Just enough PCI for the DMA suite and the demo (both include it with `#[path]`): find the
//! ECAM the DTB names, make it reachable from EL1, read and write configuration space, find a
//! device, give it a BAR and bus mastering, and set up a PCIe root port so a device can sit on
//! bus 1.
//!
//! Nothing assigns BARs under `-kernel` (no firmware), so this module does: 32-bit memory BARs
//! are placed in QEMU virt's 32-bit MMIO window, which the host's stage-2 and the runtime's
//! identity map (0..1 GiB, Device) already cover.

use core::ptr::{read_volatile, write_volatile};

/// Configuration-space offsets used here.
pub mod cfg {
    /// Vendor ID (low 16 bits) and device ID (high 16 bits).
    pub const ID: u16 = 0x00;
    /// Command register (16 bits) and status.
    pub const COMMAND: u16 = 0x04;
    /// Header type (byte 2 of the dword at 0x0C).
    pub const HEADER: u16 = 0x0c;
    /// First BAR.
    pub const BAR0: u16 = 0x10;
    /// Bridges: primary, secondary and subordinate bus numbers (bytes 0..2).
    pub const BUS_NUMBERS: u16 = 0x18;
    /// Bridges: memory base (low 16 bits) and limit (high 16 bits), in 1 MiB units << 4.
    pub const MEMORY_WINDOW: u16 = 0x20;
    /// COMMAND: memory space enable.
    pub const MEMORY: u32 = 1 << 1;
    /// COMMAND: bus master enable (the device may DMA).
    pub const BUS_MASTER: u32 = 1 << 2;
}

/// A bus/device/function; its requester ID is the SMMU StreamID (QEMU: `PCI_BUILD_BDF`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub dev: u8,
    /// Function number (0..8).
    pub func: u8,
}

impl Bdf {
    /// The requester ID (bus << 8 | dev << 3 | func): the device's StreamID.
    pub fn requester_id(self) -> u32 {
        u32::from(self.bus) << 8 | u32::from(self.dev) << 3 | u32::from(self.func)
    }
}

/// An ECAM window.
#[derive(Clone, Copy, Debug)]
pub struct Ecam {
    base: u64,
    size: u64,
}

extern "C" {
    /// The runtime's identity map (boot.rs): the level-1 table every CPU starts with.
    static __IDMAP: [u64; 512];
}

#[repr(C, align(4096))]
struct Level1([u64; 512]);

/// The identity map plus the ECAM's gigabyte (installed by [`Ecam::from_dtb`] on the boot CPU).
static mut DMA_IDMAP: Level1 = Level1([0; 512]);

impl Ecam {
    /// The ECAM of the DTB's `pci-host-ecam-generic` node, made reachable: if it lies above the
    /// runtime's 1 GiB device map (QEMU's high ECAM at 0x40_1000_0000), this CPU switches to a
    /// copy of the identity map that adds the ECAM's gigabyte as Device memory.
    pub fn from_dtb() -> Option<Ecam> {
        let (base, size) = verso_test_kernels::dtb()?.compatible_reg("pci-host-ecam-generic")?;
        let first = base >> 30;
        let last = (base + size - 1) >> 30;
        if last >= 512 {
            return None;
        }
        // SAFETY: only the boot CPU runs this, once per suite, before any other CPU could use
        // DMA_IDMAP; the copy keeps every existing entry, so switching TTBR0 to it changes no
        // translation in use (only adds blocks), and the TLB is invalidated after the switch.
        unsafe {
            let table = &mut *core::ptr::addr_of_mut!(DMA_IDMAP);
            table.0 = *core::ptr::addr_of!(__IDMAP);
            for gib in first..=last {
                if table.0[gib as usize] == 0 {
                    // Level-1 block, Device-nGnRnE (AttrIndx 0), AF, never executable.
                    table.0[gib as usize] = gib << 30 | 0b01 | 1 << 10 | 1 << 53 | 1 << 54;
                }
            }
            core::arch::asm!(
                "dsb ishst",
                "msr ttbr0_el1, {t}",
                "isb",
                "tlbi vmalle1",
                "dsb ish",
                "isb",
                t = in(reg) table.0.as_ptr() as u64,
                options(nostack)
            );
        }
        Some(Ecam { base, size })
    }

    fn address(&self, bdf: Bdf, reg: u16) -> Option<u64> {
        let offset = u64::from(bdf.bus) << 20
            | u64::from(bdf.dev & 31) << 15
            | u64::from(bdf.func & 7) << 12
            | u64::from(reg & 0xffc);
        (offset < self.size).then_some(self.base + offset)
    }

    /// Reads the configuration dword at `reg` (all ones for absent devices or buses).
    pub fn read(&self, bdf: Bdf, reg: u16) -> u32 {
        match self.address(bdf, reg) {
            // SAFETY: the address lies in the ECAM window, mapped as Device memory.
            Some(a) => unsafe { read_volatile(a as *const u32) },
            None => u32::MAX,
        }
    }

    /// Writes the configuration dword at `reg`.
    pub fn write(&self, bdf: Bdf, reg: u16, value: u32) {
        if let Some(a) = self.address(bdf, reg) {
            // SAFETY: as in `read`.
            unsafe { write_volatile(a as *mut u32, value) }
        }
    }

    /// The first function on `bus` with `vendor`/`device`.
    pub fn find(&self, bus: u8, vendor: u16, device: u16) -> Option<Bdf> {
        let want = u32::from(device) << 16 | u32::from(vendor);
        (0..32u8)
            .map(|dev| Bdf { bus, dev, func: 0 })
            .find(|&bdf| self.read(bdf, cfg::ID) == want)
    }

    /// Sizes BAR0 (a 32-bit memory BAR), places it at `at`, and enables memory decoding and bus
    /// mastering. Returns the BAR size.
    pub fn enable(&self, bdf: Bdf, at: u32) -> u32 {
        self.write(bdf, cfg::COMMAND, 0);
        self.write(bdf, cfg::BAR0, u32::MAX);
        let size = (!(self.read(bdf, cfg::BAR0) & !0xf)).wrapping_add(1);
        self.write(bdf, cfg::BAR0, at);
        self.write(bdf, cfg::COMMAND, cfg::MEMORY | cfg::BUS_MASTER);
        size
    }

    /// Configures the PCI-to-PCI bridge (root port) at `bridge` to forward bus `secondary` and
    /// the 1 MiB-aligned memory window `[window, window + len)`, with bus mastering on so its
    /// devices can DMA.
    pub fn enable_bridge(&self, bridge: Bdf, secondary: u8, window: u32, len: u32) {
        let buses = self.read(bridge, cfg::BUS_NUMBERS) & 0xff00_0000;
        self.write(
            bridge,
            cfg::BUS_NUMBERS,
            buses | u32::from(secondary) << 16 | u32::from(secondary) << 8 | u32::from(bridge.bus),
        );
        let base = (window >> 16) & 0xfff0;
        let limit = ((window + len - 1) >> 16) & 0xfff0;
        self.write(bridge, cfg::MEMORY_WINDOW, limit << 16 | base);
        self.write(bridge, cfg::COMMAND, cfg::MEMORY | cfg::BUS_MASTER);
    }

    /// The header type (0 = device, 1 = bridge), without the multi-function bit.
    pub fn header_type(&self, bdf: Bdf) -> u8 {
        ((self.read(bdf, cfg::HEADER) >> 16) & 0x7f) as u8
    }
}
