//! Reading and amending the flattened device tree (FDT, "DTB") that firmware hands the hypervisor
//! and that the hypervisor hands on to the host.
//!
//! The module owns three jobs:
//! - [`Fdt`]: a validating, zero-copy reader. [`Fdt::new`] checks the header and walks the whole
//!   structure block once, so every later query runs over a blob known to be well formed; the
//!   queries stay bounds-checked anyway and simply find nothing if something is off.
//! - [`amend`]: re-encodes a tree into a caller buffer while dropping nodes and properties, replacing
//!   `/chosen/bootargs` and adding `/reserved-memory` children (`no-map`) for the hypervisor's own
//!   memory (see `notes/arm-el2-facts.md` §12 and Devicetree Specification v0.4 ch. 3.5 and 5).
//! - [`strip_words`], [`bootarg_value`], [`parse_hex`]: the small command-line helpers the
//!   hypervisor uses to read its `verso.*` options and hide them from the host.
//!
//! The blob is hostile input as far as this code is concerned: nothing here allocates, recurses,
//! indexes without a check, or loops without consuming input. Nesting is limited to [`MAX_DEPTH`].
//!
//! Format reminder (all big-endian): a 40-byte header; a memory reservation block of
//! `(address, size)` u64 pairs ending with `(0, 0)`; a structure block of 4-byte aligned tokens
//! (`BEGIN_NODE` + NUL-terminated name, `PROP` + length + name offset + value, `END_NODE`, `NOP`,
//! `END`); a strings block holding property names.

mod amend;
mod bootargs;

pub use amend::{amend, Amendments};
pub use bootargs::{bootarg_value, parse_hex, strip_words};

use core::str;

/// Magic number in the first header word.
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Size of the version 17 header in bytes.
pub const HEADER_SIZE: usize = 40;
/// The version this module writes; also the lowest it reads (it needs `size_dt_struct`).
pub const FDT_VERSION: u32 = 17;
/// The `last_comp_version` this module writes: version 17 blobs are readable by version 16 readers.
pub const FDT_LAST_COMP_VERSION: u32 = 16;
/// Deepest node nesting accepted (the root is depth 1). Linux's unflattener uses 64 as well; QEMU's
/// deepest node (`/cpus/cpu-map/socket0/cluster0/core0`) is at depth 6.
pub const MAX_DEPTH: usize = 64;
/// Largest blob [`Fdt::from_ptr`] accepts: the host DTB must stay below 2 MiB (arm64 boot
/// protocol), and a bound keeps a corrupt `totalsize` from describing a huge slice.
pub const MAX_TOTAL_SIZE: usize = 2 << 20;

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// Why a blob was rejected or could not be written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FdtError {
    /// The blob is shorter than its header or than the `totalsize` it declares.
    Truncated,
    /// The first word is not [`FDT_MAGIC`].
    BadMagic,
    /// `version` is below 17 or `last_comp_version` above 17.
    BadVersion,
    /// A header offset or size points outside the blob, overflows, or is misaligned.
    BadLayout,
    /// The structure block holds an unknown token, or a token runs past its end.
    BadToken,
    /// The tokens do not form one tree: unbalanced nodes, a property outside a node or after a
    /// child node, a root with a name, a second root, or no `END` token.
    BadStructure,
    /// A name is not NUL-terminated inside its block, a name offset is out of the strings block,
    /// or a name is not UTF-8.
    BadString,
    /// Nodes nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The output buffer is too small for the amended blob (or the result exceeds 4 GiB).
    NoSpace,
    /// The amendments themselves are invalid: a region name that is empty or contains `@`, `/` or
    /// NUL, a value that does not fit the cells of `/reserved-memory`, a new region whose node name
    /// already exists, or removing the root node.
    BadEdit,
}

impl From<FdtError> for crate::error::Error {
    /// A too-small buffer is a memory shortage; everything else is a malformed argument.
    fn from(e: FdtError) -> Self {
        match e {
            FdtError::NoSpace => crate::error::Error::NoMem,
            _ => crate::error::Error::Invalid,
        }
    }
}

fn be32(bytes: &[u8], off: usize) -> Option<u32> {
    let b = bytes.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(bytes: &[u8], off: usize) -> Option<u64> {
    Some((u64::from(be32(bytes, off)?) << 32) | u64::from(be32(bytes, off.checked_add(4)?)?))
}

/// Rounds `n` up to a multiple of 4 (`None` on overflow).
fn align4(n: usize) -> Option<usize> {
    Some(n.checked_add(3)? & !3)
}

/// The NUL-terminated string starting at `off` in `bytes`, without its NUL.
fn cstr_at(bytes: &[u8], off: usize) -> Result<&[u8], FdtError> {
    let rest = bytes.get(off..).ok_or(FdtError::BadString)?;
    let len = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(FdtError::BadString)?;
    Ok(&rest[..len])
}

fn utf8(bytes: &[u8]) -> Result<&str, FdtError> {
    str::from_utf8(bytes).map_err(|_| FdtError::BadString)
}

/// One structure-block token, NOPs already skipped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FdtToken<'a> {
    /// A node starts; the root's name is empty. Names include the unit address (`memory@40000000`).
    BeginNode(&'a str),
    /// A property of the innermost open node.
    Property {
        /// Property name, from the strings block.
        name: &'a str,
        /// Raw big-endian value bytes (a string value includes its NUL).
        value: &'a [u8],
    },
    /// The innermost open node ends.
    EndNode,
}

/// Raw token with the location the amender needs (the name offset of a property).
#[derive(Clone, Copy)]
enum RawToken<'a> {
    Begin(&'a str),
    Prop {
        name: &'a str,
        name_off: u32,
        value: &'a [u8],
    },
    End,
    Finish,
}

/// A position in the structure block. Every step is bounds-checked and consumes at least 4 bytes,
/// so no walk can loop forever.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
    off: usize,
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> Result<RawToken<'a>, FdtError> {
        loop {
            let token = be32(self.structs, self.off).ok_or(FdtError::BadToken)?;
            let body = self.off + 4;
            match token {
                FDT_NOP => self.off = body,
                FDT_BEGIN_NODE => {
                    let name = cstr_at(self.structs, body)?;
                    let end = align4(body + name.len() + 1).ok_or(FdtError::BadToken)?;
                    if end > self.structs.len() {
                        return Err(FdtError::BadToken);
                    }
                    self.off = end;
                    return Ok(RawToken::Begin(utf8(name)?));
                }
                FDT_PROP => {
                    let len = be32(self.structs, body).ok_or(FdtError::BadToken)? as usize;
                    let name_off = be32(self.structs, body + 4).ok_or(FdtError::BadToken)?;
                    let start = body + 8;
                    let stop = start.checked_add(len).ok_or(FdtError::BadToken)?;
                    let value = self.structs.get(start..stop).ok_or(FdtError::BadToken)?;
                    let end = align4(stop).ok_or(FdtError::BadToken)?;
                    if end > self.structs.len() {
                        return Err(FdtError::BadToken);
                    }
                    let name = utf8(cstr_at(self.strings, name_off as usize)?)?;
                    self.off = end;
                    return Ok(RawToken::Prop {
                        name,
                        name_off,
                        value,
                    });
                }
                FDT_END_NODE => {
                    self.off = body;
                    return Ok(RawToken::End);
                }
                FDT_END => {
                    self.off = body;
                    return Ok(RawToken::Finish);
                }
                _ => return Err(FdtError::BadToken),
            }
        }
    }

    /// The value of property `name` of the node whose properties start here.
    fn find_prop(mut self, name: &str) -> Option<&'a [u8]> {
        loop {
            match self.next().ok()? {
                RawToken::Prop { name: n, value, .. } if n == name => return Some(value),
                RawToken::Prop { .. } => {}
                _ => return None,
            }
        }
    }
}

/// A validated flattened device tree borrowed from memory.
#[derive(Clone, Copy)]
pub struct Fdt<'a> {
    blob: &'a [u8],
    structs: &'a [u8],
    strings: &'a [u8],
    mem_rsvmap: usize,
    boot_cpuid_phys: u32,
}

impl core::fmt::Debug for Fdt<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Fdt")
            .field("total_size", &self.blob.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Fdt<'a> {
    /// Validates `blob` (header, block bounds, every token, every name) and returns a reader over
    /// its first `totalsize` bytes.
    ///
    /// # Errors
    /// Any [`FdtError`] but `NoSpace`/`BadEdit`, naming the first defect found.
    pub fn new(blob: &'a [u8]) -> Result<Self, FdtError> {
        let word = |i: usize| be32(blob, i * 4).ok_or(FdtError::Truncated);
        if blob.len() < HEADER_SIZE {
            return Err(FdtError::Truncated);
        }
        if word(0)? != FDT_MAGIC {
            return Err(FdtError::BadMagic);
        }
        let total = word(1)? as usize;
        let (off_struct, off_strings, off_rsv) =
            (word(2)? as usize, word(3)? as usize, word(4)? as usize);
        let (version, last_comp, boot_cpuid_phys) = (word(5)?, word(6)?, word(7)?);
        let (size_strings, size_struct) = (word(8)? as usize, word(9)? as usize);
        if version < FDT_VERSION || last_comp > FDT_VERSION {
            return Err(FdtError::BadVersion);
        }
        if total > blob.len() {
            return Err(FdtError::Truncated);
        }
        if total < HEADER_SIZE {
            return Err(FdtError::BadLayout);
        }
        let blob = &blob[..total];
        let block = |off: usize, size: usize| {
            let end = off.checked_add(size).ok_or(FdtError::BadLayout)?;
            if off < HEADER_SIZE {
                return Err(FdtError::BadLayout);
            }
            blob.get(off..end).ok_or(FdtError::BadLayout)
        };
        if off_struct % 4 != 0 || off_rsv % 8 != 0 || off_rsv < HEADER_SIZE || off_rsv > total {
            return Err(FdtError::BadLayout);
        }
        let fdt = Fdt {
            blob,
            structs: block(off_struct, size_struct)?,
            strings: block(off_strings, size_strings)?,
            mem_rsvmap: off_rsv,
            boot_cpuid_phys,
        };
        fdt.check_mem_rsvmap()?;
        fdt.check_structure()?;
        Ok(fdt)
    }

    /// Reads the header at `p` for `totalsize`, then validates like [`Fdt::new`].
    ///
    /// # Errors
    /// [`FdtError::BadMagic`] if `p` holds no FDT header, [`FdtError::BadLayout`] if `totalsize`
    /// exceeds [`MAX_TOTAL_SIZE`], then anything [`Fdt::new`] returns.
    ///
    /// # Safety
    /// `p` must be valid for reads of [`HEADER_SIZE`] bytes and, if those start with [`FDT_MAGIC`],
    /// of `totalsize` bytes (as the header declares, at most [`MAX_TOTAL_SIZE`]); that memory must
    /// not be written for as long as the returned reader (lifetime `'a`) is in use.
    pub unsafe fn from_ptr(p: *const u8) -> Result<Self, FdtError> {
        // SAFETY: the caller guarantees HEADER_SIZE readable, unchanging bytes at `p`.
        let header = unsafe { core::slice::from_raw_parts(p, HEADER_SIZE) };
        if be32(header, 0) != Some(FDT_MAGIC) {
            return Err(FdtError::BadMagic);
        }
        let total = be32(header, 4).ok_or(FdtError::Truncated)? as usize;
        if total > MAX_TOTAL_SIZE {
            return Err(FdtError::BadLayout);
        }
        // SAFETY: the magic matched, so the caller guarantees `totalsize` (checked to be at most
        // MAX_TOTAL_SIZE) readable bytes at `p`, unchanged for 'a.
        let blob = unsafe { core::slice::from_raw_parts(p, total) };
        Fdt::new(blob)
    }

    fn check_mem_rsvmap(&self) -> Result<(), FdtError> {
        let mut off = self.mem_rsvmap;
        loop {
            let base = be64(self.blob, off).ok_or(FdtError::BadLayout)?;
            let size = be64(self.blob, off + 8).ok_or(FdtError::BadLayout)?;
            if base == 0 && size == 0 {
                return Ok(());
            }
            off += 16;
        }
    }

    fn check_structure(&self) -> Result<(), FdtError> {
        let mut cursor = self.cursor();
        match cursor.next()? {
            RawToken::Begin("") => {}
            _ => return Err(FdtError::BadStructure),
        }
        let mut depth = 1usize;
        // Whether the innermost open node already had a child: properties must come first.
        let mut had_child = false;
        loop {
            match cursor.next()? {
                RawToken::Begin(_) if depth == 0 => return Err(FdtError::BadStructure),
                RawToken::Begin(_) => {
                    if depth >= MAX_DEPTH {
                        return Err(FdtError::TooDeep);
                    }
                    depth += 1;
                    had_child = false;
                }
                RawToken::Prop { .. } if depth == 0 || had_child => {
                    return Err(FdtError::BadStructure)
                }
                RawToken::Prop { .. } => {}
                RawToken::End if depth == 0 => return Err(FdtError::BadStructure),
                RawToken::End => {
                    depth -= 1;
                    had_child = true;
                }
                RawToken::Finish if depth == 0 => return Ok(()),
                RawToken::Finish => return Err(FdtError::BadStructure),
            }
        }
    }

    fn cursor(&self) -> Cursor<'a> {
        Cursor {
            structs: self.structs,
            strings: self.strings,
            off: 0,
        }
    }

    /// The blob's `totalsize`: how many bytes a copy must take.
    pub fn total_size(&self) -> usize {
        self.blob.len()
    }

    /// The whole blob (its first `totalsize` bytes).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.blob
    }

    /// The header's `boot_cpuid_phys`.
    pub fn boot_cpuid_phys(&self) -> u32 {
        self.boot_cpuid_phys
    }

    /// Every structure token in document order, NOPs skipped.
    pub fn tokens(&self) -> Tokens<'a> {
        Tokens {
            cursor: self.cursor(),
            done: false,
        }
    }

    /// Every node in document order, each with the cells its parent declares for its `reg`.
    pub fn nodes(&self) -> Nodes<'a> {
        Nodes {
            cursor: self.cursor(),
            depth: 0,
            cells: [(2, 1); MAX_DEPTH + 1],
            done: false,
        }
    }

    /// The node at `path` (`/`, `/chosen`, `/cpus/cpu@0`). A component without `@` also matches a
    /// node name with a unit address (`/memory` finds `memory@40000000`), as libfdt does.
    pub fn find_node(&self, path: &str) -> Option<Node<'a>> {
        let mut components = path.split('/').filter(|c| !c.is_empty());
        let mut want = components.next();
        let mut matched = 0usize; // depth of the deepest node matched so far (root = 1)
        for node in self.nodes() {
            if node.depth == 1 {
                matched = 1;
            } else if node.depth <= matched {
                return None; // left the subtree of the last match without finding the next component
            } else if node.depth == matched + 1
                && want.is_some_and(|w| node_name_matches(node.name, w))
            {
                matched += 1;
                want = components.next();
            } else {
                continue;
            }
            if want.is_none() {
                return Some(node);
            }
        }
        None
    }

    /// The value of property `name` of the node at `node_path` (see [`Fdt::find_node`]).
    pub fn property(&self, node_path: &str, name: &str) -> Option<&'a [u8]> {
        self.find_node(node_path)?.property(name)
    }

    /// `(base, size)` of every `reg` entry of every memory node (`/memory`, `/memory@*`, or a root
    /// child with `device_type = "memory"`).
    pub fn memory(&self) -> MemoryRegions<'a> {
        MemoryRegions {
            nodes: self.nodes(),
            reg: None,
        }
    }

    /// The `/memreserve/` entries of the memory reservation block as `(address, size)`.
    pub fn mem_reservations(&self) -> MemReservations<'a> {
        MemReservations {
            blob: self.blob,
            off: self.mem_rsvmap,
        }
    }

    /// Every reserved region: first the `/memreserve/` entries (named `"/memreserve/"`, `no_map`
    /// false), then each `reg` entry of each static child of `/reserved-memory`. Dynamic children
    /// (`size` without `reg`) have no address yet and are not listed.
    pub fn reserved_memory(&self) -> ReservedRegions<'a> {
        ReservedRegions {
            memreserve: self.mem_reservations(),
            nodes: self.nodes(),
            in_reserved_memory: false,
            current: None,
        }
    }

    /// `/chosen/bootargs` without its NUL, if present and UTF-8.
    pub fn bootargs(&self) -> Option<&'a str> {
        prop_str(self.property("/chosen", "bootargs")?)
    }

    /// `(start, end)` of the initrd from `/chosen/linux,initrd-start` and `linux,initrd-end` (each a
    /// 32- or 64-bit value); `end` is exclusive, as in the properties.
    pub fn initrd(&self) -> Option<(u64, u64)> {
        let chosen = self.find_node("/chosen")?;
        let start = prop_u64(chosen.property("linux,initrd-start")?)?;
        let end = prop_u64(chosen.property("linux,initrd-end")?)?;
        Some((start, end))
    }

    /// Base address of the PL011 named by `/chosen/stdout-path` (or `linux,stdout-path`): a path or
    /// an `/aliases` name, with any `:options` suffix ignored. `None` if the node is not an
    /// `arm,pl011`. The address is the node's first `reg` entry as its parent states it; QEMU's
    /// UART sits directly under the root, where that is the physical address.
    pub fn stdout_uart(&self) -> Option<u64> {
        let chosen = self.find_node("/chosen")?;
        let value = chosen
            .property("stdout-path")
            .or_else(|| chosen.property("linux,stdout-path"))?;
        let spec = prop_str(value)?;
        let path = spec.split(':').next()?;
        let path = if path.starts_with('/') {
            path
        } else {
            prop_str(self.property("/aliases", path)?)?
        };
        let node = self.find_node(path)?;
        if !node.is_compatible("arm,pl011") {
            return None;
        }
        node.reg().next().map(|(base, _)| base)
    }

    /// First `reg` entry `(base, size)` of the first node (document order) whose `compatible` list
    /// contains `compatible`.
    pub fn compatible_reg(&self, compatible: &str) -> Option<(u64, u64)> {
        self.nodes()
            .find(|n| n.is_compatible(compatible))?
            .reg()
            .next()
    }

    /// Whether any node's `compatible` list contains `compatible`.
    pub fn has_compatible(&self, compatible: &str) -> bool {
        self.nodes().any(|n| n.is_compatible(compatible))
    }

    /// The `reg` (MPIDR affinity bits) of each `/cpus/cpu@*` node, in document order.
    pub fn cpus(&self) -> Cpus<'a> {
        Cpus {
            nodes: self.nodes(),
            in_cpus: false,
        }
    }
}

/// `name` (a node name, maybe with `@unit`) matches path component `want`.
fn node_name_matches(name: &str, want: &str) -> bool {
    name == want || (!want.contains('@') && name.split('@').next() == Some(want))
}

/// A string property value: exactly one NUL, at the end, and UTF-8 before it.
fn prop_str(value: &[u8]) -> Option<&str> {
    let (last, text) = value.split_last()?;
    if *last != 0 || text.contains(&0) {
        return None;
    }
    str::from_utf8(text).ok()
}

/// A one- or two-cell property value.
fn prop_u64(value: &[u8]) -> Option<u64> {
    match value.len() {
        4 => be32(value, 0).map(u64::from),
        8 => be64(value, 0),
        _ => None,
    }
}

/// Iterator over [`FdtToken`]s; see [`Fdt::tokens`].
#[derive(Clone)]
pub struct Tokens<'a> {
    cursor: Cursor<'a>,
    done: bool,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = FdtToken<'a>;
    fn next(&mut self) -> Option<FdtToken<'a>> {
        if self.done {
            return None;
        }
        match self.cursor.next() {
            Ok(RawToken::Begin(name)) => Some(FdtToken::BeginNode(name)),
            Ok(RawToken::Prop { name, value, .. }) => Some(FdtToken::Property { name, value }),
            Ok(RawToken::End) => Some(FdtToken::EndNode),
            Ok(RawToken::Finish) | Err(_) => {
                self.done = true;
                None
            }
        }
    }
}

/// One node of a validated tree.
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    name: &'a str,
    depth: usize,
    /// Cursor at the node's first property.
    props: Cursor<'a>,
    /// `#address-cells`/`#size-cells` of the parent: the format of this node's `reg`.
    reg_cells: (u32, u32),
}

impl core::fmt::Debug for Cursor<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "struct+{:#x}", self.off)
    }
}

impl<'a> Node<'a> {
    /// The node name including any unit address; empty for the root.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Nesting depth: 1 for the root, 2 for its children.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The value of this node's property `name`.
    pub fn property(&self, name: &str) -> Option<&'a [u8]> {
        self.props.find_prop(name)
    }

    /// This node's properties as `(name, value)` in document order.
    pub fn properties(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let mut cursor = self.props;
        core::iter::from_fn(move || match cursor.next().ok()? {
            RawToken::Prop { name, value, .. } => Some((name, value)),
            _ => None,
        })
    }

    /// Whether this node's `compatible` string list contains `compatible`.
    pub fn is_compatible(&self, compatible: &str) -> bool {
        self.property("compatible").is_some_and(|list| {
            list.split(|&b| b == 0)
                .any(|entry| entry == compatible.as_bytes())
        })
    }

    /// `(address, size)` entries of `reg`, decoded with the parent's cells. Empty if `reg` is
    /// absent or either cell count exceeds 2 (not representable in `u64`).
    pub fn reg(&self) -> RegEntries<'a> {
        RegEntries::new(self.property("reg").unwrap_or(&[]), self.reg_cells)
    }

    /// `#address-cells`/`#size-cells` this node declares for its children (defaults 2 and 1).
    pub fn child_cells(&self) -> (u32, u32) {
        let cells = |name, default| {
            self.property(name)
                .and_then(|v| be32(v, 0))
                .unwrap_or(default)
        };
        (cells("#address-cells", 2), cells("#size-cells", 1))
    }
}

/// Iterator over the nodes of a tree; see [`Fdt::nodes`].
#[derive(Clone)]
pub struct Nodes<'a> {
    cursor: Cursor<'a>,
    depth: usize,
    /// `cells[d]`: what the open node at depth `d` declares for its children (`cells[0]` is the
    /// spec's default for the root, which has no parent).
    cells: [(u32, u32); MAX_DEPTH + 1],
    done: bool,
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Node<'a>;
    fn next(&mut self) -> Option<Node<'a>> {
        while !self.done {
            match self.cursor.next() {
                Ok(RawToken::Begin(name)) if self.depth < MAX_DEPTH => {
                    let reg_cells = self.cells[self.depth];
                    self.depth += 1;
                    let node = Node {
                        name,
                        depth: self.depth,
                        props: self.cursor,
                        reg_cells,
                    };
                    self.cells[self.depth] = node.child_cells();
                    return Some(node);
                }
                Ok(RawToken::Prop { .. }) => {}
                Ok(RawToken::End) => self.depth = self.depth.saturating_sub(1),
                Ok(RawToken::Begin(_) | RawToken::Finish) | Err(_) => self.done = true,
            }
        }
        None
    }
}

/// Iterator over `(address, size)` pairs of a `reg`-style value.
#[derive(Clone, Debug)]
pub struct RegEntries<'a> {
    data: &'a [u8],
    address_cells: usize,
    size_cells: usize,
}

impl<'a> RegEntries<'a> {
    /// Decodes `data` as `(address, size)` pairs of the given cell counts.
    pub fn new(data: &'a [u8], (address_cells, size_cells): (u32, u32)) -> Self {
        let representable = address_cells <= 2 && size_cells <= 2 && address_cells + size_cells > 0;
        RegEntries {
            data: if representable { data } else { &[] },
            address_cells: address_cells as usize,
            size_cells: size_cells as usize,
        }
    }

    fn cells(data: &[u8], n: usize) -> u64 {
        (0..n).fold(0, |acc, i| {
            (acc << 32) | u64::from(be32(data, i * 4).unwrap_or(0))
        })
    }
}

impl Iterator for RegEntries<'_> {
    type Item = (u64, u64);
    fn next(&mut self) -> Option<(u64, u64)> {
        let entry = (self.address_cells + self.size_cells) * 4;
        if entry == 0 || self.data.len() < entry {
            return None;
        }
        let (this, rest) = self.data.split_at(entry);
        self.data = rest;
        let address = Self::cells(this, self.address_cells);
        let size = Self::cells(&this[self.address_cells * 4..], self.size_cells);
        Some((address, size))
    }
}

/// Iterator over memory `(base, size)`; see [`Fdt::memory`].
#[derive(Clone)]
pub struct MemoryRegions<'a> {
    nodes: Nodes<'a>,
    reg: Option<RegEntries<'a>>,
}

impl Iterator for MemoryRegions<'_> {
    type Item = (u64, u64);
    fn next(&mut self) -> Option<(u64, u64)> {
        loop {
            if let Some(entry) = self.reg.as_mut().and_then(Iterator::next) {
                return Some(entry);
            }
            let node = self.nodes.next()?;
            let is_memory = node_name_matches(node.name, "memory")
                || node.property("device_type").and_then(prop_str) == Some("memory");
            self.reg = (node.depth == 2 && is_memory).then(|| node.reg());
        }
    }
}

/// Iterator over the memory reservation block; see [`Fdt::mem_reservations`].
#[derive(Clone, Debug)]
pub struct MemReservations<'a> {
    blob: &'a [u8],
    off: usize,
}

impl Iterator for MemReservations<'_> {
    type Item = (u64, u64);
    fn next(&mut self) -> Option<(u64, u64)> {
        let entry = (
            be64(self.blob, self.off)?,
            be64(self.blob, self.off.checked_add(8)?)?,
        );
        if entry == (0, 0) {
            return None;
        }
        self.off += 16;
        Some(entry)
    }
}

/// A reserved physical range: a `/reserved-memory` child's `reg` entry or a `/memreserve/` entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReservedRegion<'a> {
    /// Node name (`hyp@40200000`), or `"/memreserve/"` for a reservation-block entry.
    pub name: &'a str,
    /// Physical base address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// The node has `no-map`: the OS must neither map the range nor let the CPU speculate into it.
    pub no_map: bool,
}

/// Iterator over reserved regions; see [`Fdt::reserved_memory`].
#[derive(Clone)]
pub struct ReservedRegions<'a> {
    memreserve: MemReservations<'a>,
    nodes: Nodes<'a>,
    in_reserved_memory: bool,
    current: Option<(&'a str, RegEntries<'a>, bool)>,
}

impl<'a> Iterator for ReservedRegions<'a> {
    type Item = ReservedRegion<'a>;
    fn next(&mut self) -> Option<ReservedRegion<'a>> {
        if let Some((base, size)) = self.memreserve.next() {
            return Some(ReservedRegion {
                name: "/memreserve/",
                base,
                size,
                no_map: false,
            });
        }
        loop {
            if let Some((name, reg, no_map)) = self.current.as_mut() {
                if let Some((base, size)) = reg.next() {
                    return Some(ReservedRegion {
                        name,
                        base,
                        size,
                        no_map: *no_map,
                    });
                }
            }
            let node = self.nodes.next()?;
            if node.depth == 2 {
                self.in_reserved_memory = node.name == "reserved-memory";
                self.current = None;
            } else if node.depth == 3 && self.in_reserved_memory {
                self.current = Some((node.name, node.reg(), node.property("no-map").is_some()));
            } else {
                self.current = None;
            }
        }
    }
}

/// Iterator over CPU MPIDRs; see [`Fdt::cpus`].
#[derive(Clone)]
pub struct Cpus<'a> {
    nodes: Nodes<'a>,
    in_cpus: bool,
}

impl Iterator for Cpus<'_> {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        loop {
            let node = self.nodes.next()?;
            if node.depth == 2 {
                self.in_cpus = node.name == "cpus";
            } else if node.depth == 3 && self.in_cpus && node_name_matches(node.name, "cpu") {
                if let Some((mpidr, _)) = node.reg().next() {
                    return Some(mpidr);
                }
            }
        }
    }
}
