//! A minimal VMSAv8-64 table builder (4 KiB granule) for the hyp's own stage-1 tables: identity
//! maps ranges with the largest blocks alignment allows, the first mapping of an address wins.
//!
//! It only ever fills invalid entries, so it never needs break-before-make or TLB invalidation
//! (faulting translations are not cached): that is why the hyp can extend its live tables after
//! the MMU is on (discovered RAM and devices). Stage-2 tables are the core's job (`verso::mem`).

/// Entries in a 4 KiB table.
pub const ENTRIES: usize = 512;

/// A 4 KiB translation table.
#[repr(C, align(4096))]
pub struct Table(pub [u64; ENTRIES]);

impl Table {
    /// An empty (all invalid) table.
    pub const EMPTY: Table = Table([0; ENTRIES]);
}

const VALID: u64 = 1 << 0;
/// An attribute value meaning "keep this range unmapped for good": the builder writes an invalid
/// entry with this software bit (bits 63:1 of an invalid descriptor are ignored by the walker), so
/// later, wider mappings skip it. Used for the stack guard pages.
pub const GUARD: u64 = 1 << 58;
const TABLE_OR_PAGE: u64 = 1 << 1;
const ADDRESS_MASK: u64 = 0x0000_ffff_ffff_f000;

/// Where new table pages come from.
pub trait TableSource {
    /// A zeroed table page, or `None` when the source is exhausted.
    fn table(&mut self) -> Option<*mut Table>;
}

/// The builder ran out of table pages.
#[derive(Debug)]
pub struct OutOfTables;

/// Identity maps `[start, start + size)` (page aligned) with leaf attribute bits `attrs` into the
/// tables under `root` (which starts at `start_level`), skipping addresses already mapped.
///
/// # Safety
/// `root` and every table reachable from it must be valid tables owned by the caller, and the
/// tables handed out by `source` must not be used for anything else.
pub unsafe fn identity_map(
    root: *mut Table,
    start_level: u32,
    start: u64,
    size: u64,
    attrs: u64,
    source: &mut dyn TableSource,
) -> Result<(), OutOfTables> {
    // SAFETY: forwarded from the caller.
    unsafe {
        map_level(
            root,
            start_level,
            start,
            start.saturating_add(size),
            attrs,
            source,
        )
    }
}

/// # Safety
/// As for [`identity_map`].
unsafe fn map_level(
    table: *mut Table,
    level: u32,
    mut va: u64,
    end: u64,
    attrs: u64,
    source: &mut dyn TableSource,
) -> Result<(), OutOfTables> {
    let shift = 12 + 9 * (3 - level);
    let entry_size = 1u64 << shift;
    while va < end {
        let index = ((va >> shift) as usize) % ENTRIES;
        let entry_end = (va & !(entry_size - 1)) + entry_size;
        let chunk_end = end.min(entry_end);
        // SAFETY: `index` < 512 and `table` is a valid table (caller's contract).
        let slot = unsafe { core::ptr::addr_of_mut!((*table).0[index]) };
        // SAFETY: `slot` points into a valid table; volatile because walkers read it.
        let entry = unsafe { slot.read_volatile() };
        let whole = va & (entry_size - 1) == 0 && chunk_end == entry_end;
        if level == 3 {
            if entry == 0 {
                let leaf = if attrs & GUARD != 0 {
                    GUARD
                } else {
                    va | attrs | VALID | TABLE_OR_PAGE
                };
                // SAFETY: as above.
                unsafe { slot.write_volatile(leaf) };
            }
        } else if entry & VALID != 0 && entry & TABLE_OR_PAGE != 0 {
            let next = (entry & ADDRESS_MASK) as *mut Table;
            // SAFETY: a table entry written by this builder points at a table from `source`.
            unsafe { map_level(next, level + 1, va, chunk_end, attrs, source)? };
        } else if entry != 0 {
            // Already covered by a block (or reserved): first mapping wins.
        } else if whole && level >= 1 && attrs & GUARD == 0 {
            // SAFETY: as above.
            unsafe { slot.write_volatile(va | attrs | VALID) };
        } else {
            let next = source.table().ok_or(OutOfTables)?;
            // SAFETY: `next` is a fresh zeroed table; publish it only once it is empty.
            unsafe {
                map_level(next, level + 1, va, chunk_end, attrs, source)?;
                slot.write_volatile(next as u64 | VALID | TABLE_OR_PAGE);
            }
        }
        va = chunk_end;
    }
    Ok(())
}
