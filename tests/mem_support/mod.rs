//! Shared fixture of the ownership tests: a fake machine with RAM, the hyp's own region (which
//! also holds the host stage-2's table pages), one MMIO and one hidden MMIO region.
#![allow(dead_code)]

use verso::addr::{Ipa, PageRange, PhysAddr, PAGE_SIZE};
use verso::mem::check::{check_consistency, snapshot, Snapshot};
use verso::mem::{HostMemory, MachineLayout, Ownership, PageMeta};
use verso::testing::{FakePlatform, FakeTableAllocator};
use verso::vm::VmHandle;

/// First byte of guest/host RAM.
pub const RAM: u64 = 0x4000_0000;
/// UART-like MMIO the host may use.
pub const MMIO: u64 = 0x0900_0000;
/// SMMU-like MMIO the host must not reach.
pub const HIDDEN: u64 = 0x0905_0000;
/// Pages of the hyp's region (the host table pool is its first half).
pub const HYP_PAGES: u64 = 256;
/// Host IPA bits and guest IPA bits.
pub const HOST_IPA_BITS: u32 = 40;
pub const GUEST_IPA_BITS: u32 = 32;

pub struct World {
    pub plat: FakePlatform,
    pub own: Ownership<'static, FakeTableAllocator>,
    pub ram_pages: u64,
}

impl World {
    /// A machine with `ram_pages` pages of RAM at [`RAM`], then a 64 KiB gap, then the hyp region.
    pub fn new(ram_pages: u64) -> Self {
        let hyp_base = Self::hyp_base_for(ram_pages);
        let arena = hyp_base + HYP_PAGES * PAGE_SIZE - RAM;
        let mut plat = FakePlatform::new(PhysAddr(RAM), arena);
        let ram = [
            PageRange::new(PhysAddr(RAM), ram_pages).unwrap(),
            PageRange::new(PhysAddr(hyp_base), HYP_PAGES).unwrap(),
        ];
        let hyp = [ram[1]];
        let mmio = [PageRange::new(PhysAddr(MMIO), 1).unwrap()];
        let hidden = [PageRange::new(PhysAddr(HIDDEN), 32).unwrap()];
        let layout = MachineLayout {
            ram: &ram,
            hyp: &hyp,
            mmio: &mmio,
            hidden: &hidden,
            ipa_bits: HOST_IPA_BITS,
        };
        let meta: &'static mut [PageMeta] =
            Box::leak(vec![PageMeta::default(); layout.metadata_entries()].into_boxed_slice());
        let alloc = FakeTableAllocator::new(PhysAddr(hyp_base), HYP_PAGES / 2);
        let host = HostMemory::new(&layout, &mut plat, alloc, meta).expect("host stage-2");
        let own = Ownership::new(host, GUEST_IPA_BITS).expect("ownership");
        let w = Self {
            plat,
            own,
            ram_pages,
        };
        w.check();
        w
    }

    fn hyp_base_for(ram_pages: u64) -> u64 {
        RAM + ram_pages * PAGE_SIZE + (64 << 10)
    }

    /// First page of the hyp region.
    pub fn hyp_base(&self) -> u64 {
        Self::hyp_base_for(self.ram_pages)
    }

    /// `n` RAM pages from page index `i`.
    pub fn pages(&self, i: u64, n: u64) -> PageRange<PhysAddr> {
        PageRange::new(PhysAddr(RAM + i * PAGE_SIZE), n).unwrap()
    }

    /// `n` guest pages from guest page index `i`.
    pub fn ipas(i: u64, n: u64) -> PageRange<Ipa> {
        PageRange::new(Ipa(i * PAGE_SIZE), n).unwrap()
    }

    /// A VM whose memcache is the `n` pages from page index `i`.
    pub fn create_vm(&mut self, i: u64, n: u64) -> VmHandle {
        let pages = self.pages(i, n);
        self.own
            .create_vm(&mut self.plat, pages)
            .expect("create_vm")
    }

    /// Panic with the checker's explanation if any table disagrees with the metadata.
    #[track_caller]
    pub fn check(&self) {
        if let Err(e) = check_consistency(&self.own, &self.plat) {
            panic!("inconsistent ownership state: {e}");
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        snapshot(&self.own, &self.plat)
    }

    /// Fill a page with a recognisable byte.
    pub fn fill(&mut self, pa: PhysAddr, byte: u8) {
        self.plat.write_bytes(pa, &[byte; PAGE_SIZE as usize]);
    }

    /// True if every byte of the page is `byte`.
    pub fn page_is(&self, pa: PhysAddr, byte: u8) -> bool {
        self.plat
            .read_bytes(pa, PAGE_SIZE as usize)
            .iter()
            .all(|b| *b == byte)
    }
}
