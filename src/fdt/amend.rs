//! Re-encoding a device tree with the hypervisor's edits (what the host gets to see).
//!
//! The output is written front to back in one pass over the source tree: header, memory
//! reservation block (copied), structure block (copied token by token, minus what is removed, plus
//! what is added), strings block (copied verbatim so every property keeps its name offset, then
//! the few names the additions need if the source lacks them). NOP tokens are dropped. Properties
//! are always emitted before subnodes, as the Devicetree Specification requires.

use super::{
    be32, Cursor, Fdt, FdtError, RawToken, FDT_BEGIN_NODE, FDT_END, FDT_END_NODE,
    FDT_LAST_COMP_VERSION, FDT_MAGIC, FDT_PROP, FDT_VERSION, HEADER_SIZE, MAX_DEPTH,
};

/// The edits [`amend`] applies.
#[derive(Clone, Copy, Debug, Default)]
pub struct Amendments<'x> {
    /// `(name, base, size)`: each becomes `/reserved-memory/name@base { reg = <base size>; no-map; }`.
    pub reserve_no_map: &'x [(&'x str, u64, u64)],
    /// Nodes (with their subtrees) whose `compatible` list contains any of these are dropped.
    pub remove_compatible: &'x [&'x str],
    /// Properties with these names are dropped from every node.
    pub remove_properties: &'x [&'x str],
    /// New `/chosen/bootargs`; `/chosen` is created if absent. `None` leaves bootargs alone.
    pub bootargs: Option<&'x str>,
}

/// Re-encodes `src` into `out` with `edits` applied; returns the size of the new blob (its
/// `totalsize`, a multiple of 8).
///
/// The new blob has version 17, `last_comp_version` 16, the source's `boot_cpuid_phys` and
/// memory reservations, and no free space. New `/reserved-memory` children are appended after any
/// existing ones; a new `/reserved-memory` node is the root's last child, with the root's
/// `#address-cells`/`#size-cells` and an empty `ranges`.
///
/// # Errors
/// - [`FdtError::BadEdit`] if a region name is empty or contains `@`, `/` or NUL, a region is
///   empty or wraps, a base or size does not fit the `/reserved-memory` cells, a region's node name
///   already exists there, `bootargs` contains NUL, or the root node matches `remove_compatible`.
/// - [`FdtError::NoSpace`] if `out` is too small.
///
/// On error the content of `out` is unspecified; `src` is never modified.
pub fn amend(src: &Fdt, out: &mut [u8], edits: &Amendments) -> Result<usize, FdtError> {
    check_edits(edits)?;
    let mut w = Writer { buf: out, pos: 0 };
    w.put(&[0; HEADER_SIZE])?;
    let off_mem_rsvmap = w.pos;
    for (address, size) in src.mem_reservations() {
        w.u64(address)?;
        w.u64(size)?;
    }
    w.u64(0)?;
    w.u64(0)?;
    let off_struct = w.pos;
    let mut strings = Strings {
        src: src.strings,
        added: [""; NEW_NAMES],
        count: 0,
    };
    Emitter {
        w: &mut w,
        strings: &mut strings,
        edits,
    }
    .structure(src.cursor())?;
    let size_struct = w.pos - off_struct;
    let off_strings = w.pos;
    w.put(src.strings)?;
    for name in &strings.added[..strings.count] {
        w.put(name.as_bytes())?;
        w.put(&[0])?;
    }
    let size_strings = w.pos - off_strings;
    w.pad_to(8)?;
    let total = w.pos;
    let header = [
        FDT_MAGIC as usize,
        total,
        off_struct,
        off_strings,
        off_mem_rsvmap,
        FDT_VERSION as usize,
        FDT_LAST_COMP_VERSION as usize,
        src.boot_cpuid_phys as usize,
        size_strings,
        size_struct,
    ]
    .map(|v| u32::try_from(v).map_err(|_| FdtError::NoSpace));
    w.pos = 0;
    for word in header {
        w.u32(word?)?;
    }
    Ok(total)
}

fn check_edits(edits: &Amendments) -> Result<(), FdtError> {
    for &(name, base, size) in edits.reserve_no_map {
        let bad_name = name.is_empty() || name.bytes().any(|b| matches!(b, b'@' | b'/' | 0));
        if bad_name || size == 0 || base.checked_add(size - 1).is_none() {
            return Err(FdtError::BadEdit);
        }
    }
    if edits.bootargs.is_some_and(|b| b.contains('\0')) {
        return Err(FdtError::BadEdit);
    }
    Ok(())
}

/// Lowercase hex digits of `v` without leading zeros, as a unit address is written.
fn hex_digits(v: u64, buf: &mut [u8; 16]) -> &[u8] {
    let digits = (16 - v.leading_zeros() as usize / 4).max(1);
    for (i, slot) in buf[..digits].iter_mut().enumerate() {
        let nibble = (v >> ((digits - 1 - i) * 4)) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    &buf[..digits]
}

/// Bounds-checked sequential writer over the output buffer.
struct Writer<'o> {
    buf: &'o mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), FdtError> {
        let end = self.pos.checked_add(bytes.len()).ok_or(FdtError::NoSpace)?;
        self.buf
            .get_mut(self.pos..end)
            .ok_or(FdtError::NoSpace)?
            .copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    fn u32(&mut self, v: u32) -> Result<(), FdtError> {
        self.put(&v.to_be_bytes())
    }

    fn u64(&mut self, v: u64) -> Result<(), FdtError> {
        self.put(&v.to_be_bytes())
    }

    /// Zero-fills up to the next multiple of `align` (a power of two up to 8).
    fn pad_to(&mut self, align: usize) -> Result<(), FdtError> {
        let pad = self.pos.wrapping_neg() & (align - 1);
        self.put(&[0; 8][..pad])
    }

    /// `BEGIN_NODE` with a name made of `parts`.
    fn begin_node(&mut self, parts: &[&[u8]]) -> Result<(), FdtError> {
        self.u32(FDT_BEGIN_NODE)?;
        for part in parts {
            self.put(part)?;
        }
        self.put(&[0])?;
        self.pad_to(4)
    }

    fn end_node(&mut self) -> Result<(), FdtError> {
        self.u32(FDT_END_NODE)
    }

    /// `PROP` whose value is the concatenation of `parts`.
    fn prop(&mut self, name_off: u32, parts: &[&[u8]]) -> Result<(), FdtError> {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        self.u32(FDT_PROP)?;
        self.u32(u32::try_from(len).map_err(|_| FdtError::NoSpace)?)?;
        self.u32(name_off)?;
        for part in parts {
            self.put(part)?;
        }
        self.pad_to(4)
    }

    /// A `reg`-style cell group of `cells` cells holding `v`.
    fn cells(&mut self, v: u64, cells: u32) -> Result<(), FdtError> {
        match cells {
            1 => self.u32(u32::try_from(v).map_err(|_| FdtError::BadEdit)?),
            2 => self.u64(v),
            _ => Err(FdtError::BadEdit),
        }
    }
}

/// How many names an amendment may have to add: bootargs, reg, no-map, #address-cells,
/// #size-cells, ranges.
const NEW_NAMES: usize = 6;

/// The strings block of the output: the source's, then names it lacked.
struct Strings<'s> {
    src: &'s [u8],
    added: [&'static str; NEW_NAMES],
    count: usize,
}

impl Strings<'_> {
    /// Offset of `name` in the output strings block, appending it if the source lacks it. Any
    /// NUL-terminated occurrence counts, including the tail of a longer name (suffix sharing is
    /// valid FDT).
    fn offset(&mut self, name: &'static str) -> Result<u32, FdtError> {
        let found = (0..self.src.len()).find(|&i| {
            self.src[i..].starts_with(name.as_bytes()) && self.src.get(i + name.len()) == Some(&0)
        });
        let off = match found {
            Some(i) => i,
            None => {
                let mut off = self.src.len();
                for added in &self.added[..self.count] {
                    if *added == name {
                        return u32::try_from(off).map_err(|_| FdtError::NoSpace);
                    }
                    off += added.len() + 1;
                }
                let slot = self.added.get_mut(self.count).ok_or(FdtError::NoSpace)?;
                *slot = name;
                self.count += 1;
                off
            }
        };
        u32::try_from(off).map_err(|_| FdtError::NoSpace)
    }
}

/// One pass over the source structure block, writing the amended one.
struct Emitter<'e, 'o, 's, 'x> {
    w: &'e mut Writer<'o>,
    strings: &'e mut Strings<'s>,
    edits: &'e Amendments<'x>,
}

impl Emitter<'_, '_, '_, '_> {
    fn structure(&mut self, mut cursor: Cursor) -> Result<(), FdtError> {
        let mut depth = 0usize; // of the innermost open source node; the root is 1
        let mut skipping_from: Option<usize> = None; // depth of the removed node being skipped
        let mut in_chosen = false;
        let mut reserved_memory: Option<(u32, u32)> = None; // its cells, while it is open
        let mut bootargs_pending = self.edits.bootargs.is_some();
        let mut regions_pending = !self.edits.reserve_no_map.is_empty();
        let mut root_cells = (2u32, 1u32);
        loop {
            match cursor.next()? {
                RawToken::Begin(name) => {
                    depth += 1;
                    if skipping_from.is_some() {
                        continue;
                    }
                    if depth > MAX_DEPTH {
                        return Err(FdtError::TooDeep);
                    }
                    if self.removed(cursor) {
                        if depth == 1 {
                            return Err(FdtError::BadEdit);
                        }
                        skipping_from = Some(depth);
                        continue;
                    }
                    if in_chosen && depth == 3 && bootargs_pending {
                        self.bootargs()?;
                        bootargs_pending = false;
                    }
                    if reserved_memory.is_some() && depth == 3 && self.collides(name) {
                        return Err(FdtError::BadEdit);
                    }
                    self.w.begin_node(&[name.as_bytes()])?;
                    if depth == 2 && name == "chosen" {
                        in_chosen = true;
                    }
                    if depth == 2 && name == "reserved-memory" {
                        let cell = |n, default| {
                            cursor
                                .find_prop(n)
                                .and_then(|v| be32(v, 0))
                                .unwrap_or(default)
                        };
                        reserved_memory = Some((cell("#address-cells", 2), cell("#size-cells", 1)));
                    }
                }
                RawToken::Prop {
                    name,
                    name_off,
                    value,
                } => {
                    if skipping_from.is_some() {
                        continue;
                    }
                    if depth == 2
                        && in_chosen
                        && name == "bootargs"
                        && self.edits.bootargs.is_some()
                    {
                        self.bootargs()?;
                        bootargs_pending = false;
                        continue;
                    }
                    if self.edits.remove_properties.contains(&name) {
                        continue;
                    }
                    if depth == 1 {
                        let cells = be32(value, 0);
                        match (name, cells) {
                            ("#address-cells", Some(c)) => root_cells.0 = c,
                            ("#size-cells", Some(c)) => root_cells.1 = c,
                            _ => {}
                        }
                    }
                    self.w.prop(name_off, &[value])?;
                }
                RawToken::End => {
                    if let Some(from) = skipping_from {
                        if depth == from {
                            skipping_from = None;
                        }
                        depth = depth.checked_sub(1).ok_or(FdtError::BadStructure)?;
                        continue;
                    }
                    if depth == 2 && in_chosen {
                        if bootargs_pending {
                            self.bootargs()?;
                            bootargs_pending = false;
                        }
                        in_chosen = false;
                    }
                    if depth == 2 {
                        if let Some(cells) = reserved_memory.take() {
                            self.regions(cells)?;
                            regions_pending = false;
                        }
                    }
                    if depth == 1 {
                        if bootargs_pending {
                            self.w.begin_node(&[b"chosen"])?;
                            self.bootargs()?;
                            self.w.end_node()?;
                            bootargs_pending = false;
                        }
                        if regions_pending {
                            self.reserved_memory_node(root_cells)?;
                            regions_pending = false;
                        }
                    }
                    self.w.end_node()?;
                    depth = depth.checked_sub(1).ok_or(FdtError::BadStructure)?;
                }
                RawToken::Finish => return self.w.u32(FDT_END),
            }
        }
    }

    /// Whether the node whose properties start at `props` matches `remove_compatible`.
    fn removed(&self, props: Cursor) -> bool {
        let Some(list) = props.find_prop("compatible") else {
            return false;
        };
        list.split(|&b| b == 0).any(|entry| {
            !entry.is_empty()
                && self
                    .edits
                    .remove_compatible
                    .iter()
                    .any(|c| c.as_bytes() == entry)
        })
    }

    /// Whether an existing `/reserved-memory` child is named like one of the new regions.
    fn collides(&self, child: &str) -> bool {
        let Some((name, unit)) = child.split_once('@') else {
            return false;
        };
        self.edits.reserve_no_map.iter().any(|&(region, base, _)| {
            let mut buf = [0; 16];
            region == name && hex_digits(base, &mut buf) == unit.as_bytes()
        })
    }

    fn bootargs(&mut self) -> Result<(), FdtError> {
        let text = self.edits.bootargs.unwrap_or("");
        let off = self.strings.offset("bootargs")?;
        self.w.prop(off, &[text.as_bytes(), &[0]])
    }

    /// One `name@base { reg = <base size>; no-map; }` child per region.
    fn regions(&mut self, (address_cells, size_cells): (u32, u32)) -> Result<(), FdtError> {
        let reg = self.strings.offset("reg")?;
        let no_map = self.strings.offset("no-map")?;
        for &(name, base, size) in self.edits.reserve_no_map {
            let mut buf = [0; 16];
            self.w
                .begin_node(&[name.as_bytes(), b"@", hex_digits(base, &mut buf)])?;
            if address_cells > 2 || size_cells > 2 {
                return Err(FdtError::BadEdit);
            }
            let len = (address_cells + size_cells) * 4;
            self.w.u32(super::FDT_PROP)?;
            self.w.u32(len)?;
            self.w.u32(reg)?;
            self.w.cells(base, address_cells)?;
            self.w.cells(size, size_cells)?;
            self.w.prop(no_map, &[])?;
            self.w.end_node()?;
        }
        Ok(())
    }

    /// A new `/reserved-memory` with the root's cells, empty `ranges`, and the regions.
    fn reserved_memory_node(
        &mut self,
        (address_cells, size_cells): (u32, u32),
    ) -> Result<(), FdtError> {
        self.w.begin_node(&[b"reserved-memory"])?;
        let off = self.strings.offset("#address-cells")?;
        self.w.prop(off, &[&address_cells.to_be_bytes()])?;
        let off = self.strings.offset("#size-cells")?;
        self.w.prop(off, &[&size_cells.to_be_bytes()])?;
        let off = self.strings.offset("ranges")?;
        self.w.prop(off, &[])?;
        self.regions((address_cells, size_cells))?;
        self.w.end_node()
    }
}

#[cfg(test)]
mod tests {
    use super::hex_digits;

    #[test]
    fn unit_addresses_are_lowercase_hex_without_leading_zeros() {
        let mut buf = [0; 16];
        assert_eq!(hex_digits(0, &mut buf), b"0");
        assert_eq!(hex_digits(0x4020_0000, &mut buf), b"40200000");
        assert_eq!(hex_digits(0xabc, &mut buf), b"abc");
        assert_eq!(hex_digits(u64::MAX, &mut buf), b"ffffffffffffffff");
    }
}
