//! `cargo bench --bench convert`: cost per page of a share + unshare range change in the stage-2
//! engine, next to the same change made with aarch64-paging 0.12's stage-2 `modify_range` on an
//! identical table.
//!
//! The change is what a conversion does to a mapped range: set the software state bits of every
//! page and put them back (Verso: `Stage2::set_sw`; peer: an updater closure rewriting the flags
//! of every leaf). Both start from the same identity-mapped 64 MiB region of 2 MiB blocks, RWX,
//! Normal write-back. The peer is measured twice: as an inactive table (no break-before-make
//! checks) and marked active (its live mode: a BBM check walk before the update); TLB
//! instructions are compiled out on the host for both engines (Verso issues them through the
//! recording fake platform). Writes a CSV `engine,pages,alignment,ns_per_page` and prints its path.

use std::alloc::dealloc;
use std::fmt::Write as _;
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::Instant;

use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
use aarch64_paging::paging::{Constraints, MemoryRegion, PageTable, Stage2, Translation};
use aarch64_paging::Mapping;
use verso::addr::{Ipa, PageRange, PhysAddr, Vmid, PAGE_SIZE};
use verso::pgtable::{Leaf, MemType, Perms, Stage2 as VersoStage2, Stage2Config};
use verso::testing::{FakePlatform, FakeTableAllocator};

const BASE: u64 = 0x4000_0000;
const REGION: u64 = 64 << 20;
const MIB2: u64 = 2 << 20;
const SIZES: [u64; 4] = [1, 64, 512, 4096];
/// Pages changed per measurement (share + unshare each), so every size runs long enough.
const PAGES_PER_RUN: u64 = 1 << 19;
/// Rounds per cell (best round kept).
const ROUNDS: usize = 7;

/// Table pages for the peer from the global allocator; identity "physical" addresses.
struct HeapTranslation;

impl Translation<Stage2Attributes> for HeapTranslation {
    fn allocate_table(&mut self) -> (NonNull<PageTable<Stage2Attributes>>, PhysicalAddress) {
        let t = PageTable::new();
        (t, PhysicalAddress(t.as_ptr() as usize))
    }
    unsafe fn deallocate_table(&mut self, t: NonNull<PageTable<Stage2Attributes>>) {
        // SAFETY: `t` came from `PageTable::new`, which allocates with this layout.
        unsafe {
            dealloc(
                t.as_ptr().cast(),
                std::alloc::Layout::new::<PageTable<Stage2Attributes>>(),
            )
        }
    }
    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<Stage2Attributes>> {
        NonNull::new(pa.0 as *mut _).expect("null table")
    }
}

/// How the 64 MiB region is mapped before the measurement.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Page-mapped (output addresses one page off the IPA, so no block is possible): both
    /// engines change exactly the same descriptors and end in the same state.
    Pages,
    /// 2 MiB blocks (identity): a change that does not cover whole blocks splits them; Verso
    /// coalesces them back when the range is restored, the peer leaves the page tables behind.
    Blocks,
}

impl Layout {
    fn pa(self) -> u64 {
        match self {
            Layout::Pages => BASE + PAGE_SIZE,
            Layout::Blocks => BASE,
        }
    }
    /// Table pages Verso holds for the region: root + L2 (+ one L3 table per 2 MiB of IPA when
    /// page-mapped).
    fn verso_tables(self) -> usize {
        match self {
            Layout::Pages => 2 + 32,
            Layout::Blocks => 2,
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Layout::Pages => "",
            Layout::Blocks => "-blocks",
        }
    }
}

fn start_of(alignment: &str) -> u64 {
    match alignment {
        // Inside a block, not at its start: the change splits blocks at both ends.
        "4k" => BASE + 3 * MIB2 + 5 * PAGE_SIZE,
        _ => BASE + 4 * MIB2,
    }
}

fn iterations(pages: u64) -> u64 {
    (PAGES_PER_RUN / pages).max(8192)
}

fn bench_verso(pages: u64, alignment: &str, layout: Layout) -> f64 {
    let mut plat = FakePlatform::new(PhysAddr(0x8_0000_0000), 8 << 20);
    let mut alloc = FakeTableAllocator::new(PhysAddr(0x8_0000_0000), 2048);
    // 39 bits: start level 1, the same root level as the peer below.
    let cfg = Stage2Config::for_ipa_bits(39).unwrap();
    let mut s2 = VersoStage2::new(cfg, Vmid(1), &mut plat, &mut alloc).unwrap();
    let leaf = Leaf {
        perms: Perms::RWX,
        mem: MemType::Normal,
        sw: 0,
    };
    let region = PageRange::new(Ipa(BASE), REGION / PAGE_SIZE).unwrap();
    s2.map(&mut plat, &mut alloc, region, PhysAddr(layout.pa()), leaf)
        .unwrap();
    let range = PageRange::new(Ipa(start_of(alignment)), pages).unwrap();
    let iters = iterations(pages);
    let t = Instant::now();
    for _ in 0..iters {
        s2.set_sw(&mut plat, &mut alloc, black_box(range), 1)
            .unwrap();
        s2.set_sw(&mut plat, &mut alloc, black_box(range), 0)
            .unwrap();
        plat.clear_log();
    }
    let ns = t.elapsed().as_nanos() as f64 / (iters * pages) as f64;
    // The conversion left the region as it found it (for blocks: one entry per 2 MiB).
    assert_eq!(s2.table_pages(), layout.verso_tables());
    ns
}

fn bench_peer(pages: u64, alignment: &str, layout: Layout, live: bool) -> Result<f64, String> {
    let mut map = Mapping::new(HeapTranslation, 1, Stage2);
    let flags = Stage2Attributes::VALID
        | Stage2Attributes::MEMATTR_NORMAL_INNER_WB
        | Stage2Attributes::MEMATTR_NORMAL_OUTER_WB
        | Stage2Attributes::S2AP_ACCESS_RW
        | Stage2Attributes::SH_INNER
        | Stage2Attributes::ACCESS_FLAG;
    let region = MemoryRegion::new(BASE as usize, (BASE + REGION) as usize);
    map.map_range(
        &region,
        PhysicalAddress(layout.pa() as usize),
        flags,
        Constraints::empty(),
    )
    .unwrap();
    if live {
        map.mark_active();
    }
    let start = start_of(alignment) as usize;
    let range = MemoryRegion::new(start, start + (pages * PAGE_SIZE) as usize);
    let set = |on: bool| {
        move |_: &MemoryRegion,
              d: &mut aarch64_paging::descriptor::UpdatableDescriptor<Stage2Attributes>| {
            if d.is_table() || !d.flags().contains(Stage2Attributes::VALID) {
                return Ok(());
            }
            let f = if on {
                d.flags() | Stage2Attributes::SWFLAG_0
            } else {
                d.flags() - Stage2Attributes::SWFLAG_0
            };
            d.set(d.output_address(), f)
        }
    };
    let (share, unshare) = (set(true), set(false));
    // A live table refuses to split a block (it cannot break-before-make): record the refusal.
    if let Err(e) = map.modify_range(&range, &share) {
        if live {
            map.mark_inactive();
        }
        return Err(format!("{e:?}"));
    }
    map.modify_range(&range, &unshare).unwrap();
    let iters = iterations(pages);
    let t = Instant::now();
    for _ in 0..iters {
        map.modify_range(black_box(&range), &share).unwrap();
        map.modify_range(black_box(&range), &unshare).unwrap();
    }
    let ns = t.elapsed().as_nanos() as f64 / (iters * pages) as f64;
    if live {
        map.mark_inactive();
    }
    Ok(ns)
}

fn main() {
    // The machine is shared: the three engines run in turn, ROUNDS times, and each keeps its
    // best round, so that a burst of load elsewhere hits all of them alike.
    let measure = |pages, alignment, layout| {
        let (mut v, mut p, mut pl) = (f64::INFINITY, Some(f64::INFINITY), Some(f64::INFINITY));
        for _ in 0..ROUNDS {
            v = v.min(bench_verso(pages, alignment, layout));
            if std::env::var_os("VERSO_BENCH_ONLY_VERSO").is_some() {
                continue;
            }
            p = p.and_then(|b| {
                bench_peer(pages, alignment, layout, false)
                    .ok()
                    .map(|x| b.min(x))
            });
            pl = pl.and_then(|b| {
                bench_peer(pages, alignment, layout, true)
                    .ok()
                    .map(|x| b.min(x))
            });
        }
        (v, p, pl)
    };
    let cell =
        |x: Option<f64>| x.map_or_else(|| "refused (BBM)".to_string(), |v| format!("{v:.3}"));
    let mut csv = String::from("engine,pages,alignment,ns_per_page\n");
    // `VERSO_BENCH_LAYOUT=pages|blocks` runs one table only (for profiling).
    let only = std::env::var("VERSO_BENCH_LAYOUT").unwrap_or_default();
    for layout in [Layout::Pages, Layout::Blocks] {
        if (only == "pages" && layout != Layout::Pages)
            || (only == "blocks" && layout != Layout::Blocks)
        {
            continue;
        }
        match layout {
            Layout::Pages => {
                println!("\nshare+unshare on a page-mapped region, ns per page (best of 7 interleaved rounds)")
            }
            Layout::Blocks => {
                println!("\nshare+unshare on a 2 MiB-block region, ns per page (best of 7 interleaved rounds)")
            }
        }
        println!(
            "| {:>5} | {:>5} | {:>8} | {:>14} | {:>19} | {:>8} |",
            "pages", "align", "verso", "aarch64-paging", "aarch64-paging live", "speed-up"
        );
        println!("|------:|------:|---------:|---------------:|--------------------:|---------:|");
        for alignment in ["4k", "2m"] {
            // `VERSO_BENCH_ALIGN=4k|2m` runs one alignment only (for profiling).
            if std::env::var("VERSO_BENCH_ALIGN").is_ok_and(|a| a != alignment) {
                continue;
            }
            for pages in SIZES {
                // `VERSO_BENCH_PAGES=<n>` runs one size only (for profiling).
                if std::env::var("VERSO_BENCH_PAGES").is_ok_and(|n| n != pages.to_string()) {
                    continue;
                }
                let (v, p, pl) = measure(pages, alignment, layout);
                let peer_best = [p, pl].into_iter().flatten().fold(f64::INFINITY, f64::min);
                println!(
                    "| {pages:>5} | {alignment:>5} | {v:>8.3} | {:>14} | {:>19} | {:>7.1}x |",
                    cell(p),
                    cell(pl),
                    peer_best / v
                );
                let sfx = layout.suffix();
                writeln!(csv, "verso{sfx},{pages},{alignment},{v:.3}").unwrap();
                for (engine, ns) in [("aarch64-paging", p), ("aarch64-paging-live", pl)] {
                    if let Some(ns) = ns {
                        writeln!(csv, "{engine}{sfx},{pages},{alignment},{ns:.3}").unwrap();
                    }
                }
            }
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("convert.csv");
    std::fs::write(&path, csv).unwrap();
    println!("\nspeed-up = fastest aarch64-paging mode / verso; \"refused\" = MapError::BreakBeforeMakeViolation");
    println!("csv: {}", path.display());
}
