//! The machine as the DTB describes it, with the few documented fallbacks, and the fixed parts
//! of the memory layout (docs/boot.md).

use verso::fdt::{bootarg_value, parse_hex, Fdt};

/// Where QEMU puts its DTB (the ELF is linked above 0x4010_0000), and where the host's amended
/// DTB goes back: the first 2 MiB of RAM, below the hyp.
pub const DTB_BASE: u64 = 0x4000_0000;
/// The largest DTB the protocol allows (and the room below the hyp region).
pub const DTB_MAX: u64 = 0x20_0000;
/// The hyp region: image, stacks and page pool; reserved (no-map) for the host.
pub const HYP_BASE: u64 = 0x4020_0000;
/// Size of the hyp region.
pub const HYP_SIZE: u64 = 0x200_0000;
/// Where the host payload is looked for when bootargs have no `verso.payload=<hex>`.
pub const PAYLOAD_FALLBACK: u64 = 0x4400_0000;
/// Host IPA size: covers QEMU virt's RAM, high PCIe ECAM and the MMIO64 window (0x80_0000_0000..).
pub const HOST_IPA_BITS: u32 = 40;

/// At most this many RAM regions / CPUs are taken from the DTB.
pub const MAX_RAM: usize = 8;

/// What the hyp learnt from the DTB.
pub struct Machine {
    /// RAM regions (base, size).
    pub ram: [(u64, u64); MAX_RAM],
    /// Number of valid entries in `ram`.
    pub ram_count: usize,
    /// PL011 base (stdout-path; fallback 0x0900_0000).
    pub uart: u64,
    /// GICv3 distributor (base, size), if any.
    pub gic: Option<(u64, u64)>,
    /// SMMUv3 registers (base, size), if any: hidden from the host.
    pub smmu: Option<(u64, u64)>,
    /// PCIe ECAM (base, size), if any.
    pub pcie_ecam: Option<(u64, u64)>,
    /// Payload address (`verso.payload=`, fallback 0x4400_0000).
    pub payload: u64,
}

impl Machine {
    /// Reads the machine description from `fdt`.
    pub fn discover(fdt: &Fdt) -> Machine {
        let mut ram = [(0, 0); MAX_RAM];
        let mut ram_count = 0;
        for (slot, region) in ram.iter_mut().zip(fdt.memory().filter(|r| r.1 != 0)) {
            *slot = region;
            ram_count += 1;
        }
        let payload = fdt
            .bootargs()
            .and_then(|a| bootarg_value(a, "verso.payload"))
            .and_then(parse_hex)
            .unwrap_or(PAYLOAD_FALLBACK);
        Machine {
            ram,
            ram_count,
            uart: fdt.stdout_uart().unwrap_or(crate::console::UART_FALLBACK),
            gic: fdt.compatible_reg("arm,gic-v3"),
            smmu: fdt.compatible_reg("arm,smmu-v3"),
            pcie_ecam: fdt.compatible_reg("pci-host-ecam-generic"),
            payload,
        }
    }

    /// The RAM regions.
    pub fn ram(&self) -> &[(u64, u64)] {
        &self.ram[..self.ram_count]
    }

    /// True if `[base, base + size)` lies inside one RAM region.
    pub fn in_ram(&self, base: u64, size: u64) -> bool {
        let Some(end) = base.checked_add(size) else {
            return false;
        };
        self.ram().iter().any(|&(b, s)| base >= b && end <= b + s)
    }
}

/// Calls `f` for each maximal piece of `[start, end)` that avoids every range in `holes`.
pub fn for_each_piece(start: u64, end: u64, holes: &[(u64, u64)], f: &mut dyn FnMut(u64, u64)) {
    let mut cursor = start;
    while cursor < end {
        // The hole that covers `cursor`, if any: skip it.
        if let Some(&(b, s)) = holes.iter().find(|&&(b, s)| cursor >= b && cursor < b + s) {
            cursor = b + s;
            continue;
        }
        // Otherwise run to the next hole start (or `end`).
        let next = holes
            .iter()
            .map(|&(b, _)| b)
            .filter(|&b| b > cursor)
            .min()
            .unwrap_or(end)
            .min(end);
        f(cursor, next);
        cursor = next;
    }
}
