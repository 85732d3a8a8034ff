//! Shared helpers for the FDT tests: the fixtures, a tree walk to compare trees, and a tiny
//! encoder for hand-made (and deliberately broken) blobs.
#![allow(dead_code)]

use verso::fdt::{Fdt, FdtToken};

/// QEMU virt, 4 CPUs, 1 GiB, GICv3, SMMUv3; no kernel, so no bootargs.
pub const VIRT: &[u8] = include_bytes!("../fixtures/virt.dtb");
/// The same with `-append`/`-initrd`: bootargs and initrd properties in /chosen.
pub const VIRT_BOOTARGS: &[u8] = include_bytes!("../fixtures/virt-bootargs.dtb");

/// One entry of a tree walk: a node (by full path) or a property of one.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Entry {
    Node(String),
    Prop(String, String, Vec<u8>),
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Node(p) | Entry::Prop(p, _, _) => p,
        }
    }
}

/// Every node and property in document order, with full paths.
pub fn walk(fdt: &Fdt) -> Vec<Entry> {
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for token in fdt.tokens() {
        match token {
            FdtToken::BeginNode(name) => {
                let path = match stack.last() {
                    None => "/".to_string(),
                    Some(p) if p == "/" => format!("/{name}"),
                    Some(p) => format!("{p}/{name}"),
                };
                out.push(Entry::Node(path.clone()));
                stack.push(path);
            }
            FdtToken::Property { name, value } => out.push(Entry::Prop(
                stack.last().unwrap().clone(),
                name.to_string(),
                value.to_vec(),
            )),
            FdtToken::EndNode => {
                stack.pop();
            }
        }
    }
    assert!(stack.is_empty(), "walk ended inside a node");
    out
}

pub fn header_word(blob: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(blob[i * 4..i * 4 + 4].try_into().unwrap())
}

pub fn set_header_word(blob: &mut [u8], i: usize, v: u32) {
    blob[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
}

/// Header word indices.
pub const TOTALSIZE: usize = 1;
pub const OFF_STRUCT: usize = 2;
pub const OFF_STRINGS: usize = 3;
pub const OFF_RSVMAP: usize = 4;
pub const VERSION: usize = 5;
pub const LAST_COMP: usize = 6;
pub const BOOT_CPUID: usize = 7;
pub const SIZE_STRINGS: usize = 8;
pub const SIZE_STRUCT: usize = 9;

/// A minimal FDT encoder; it writes whatever it is told, valid or not.
#[derive(Default)]
pub struct Builder {
    pub structs: Vec<u8>,
    pub strings: Vec<u8>,
    pub memreserve: Vec<(u64, u64)>,
}

impl Builder {
    pub fn word(&mut self, v: u32) -> &mut Self {
        self.structs.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn pad(&mut self) {
        while !self.structs.len().is_multiple_of(4) {
            self.structs.push(0);
        }
    }
    pub fn begin(&mut self, name: &str) -> &mut Self {
        self.word(1);
        self.structs.extend_from_slice(name.as_bytes());
        self.structs.push(0);
        self.pad();
        self
    }
    pub fn end(&mut self) -> &mut Self {
        self.word(2)
    }
    pub fn name_off(&mut self, name: &str) -> u32 {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }
    pub fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let off = self.name_off(name);
        self.word(3).word(value.len() as u32).word(off);
        self.structs.extend_from_slice(value);
        self.pad();
        self
    }
    pub fn prop_u32(&mut self, name: &str, v: u32) -> &mut Self {
        self.prop(name, &v.to_be_bytes())
    }
    pub fn prop_str(&mut self, name: &str, v: &str) -> &mut Self {
        let mut bytes = v.as_bytes().to_vec();
        bytes.push(0);
        self.prop(name, &bytes)
    }
    pub fn finish_token(&mut self) -> &mut Self {
        self.word(9)
    }
    /// Header, memory reservations, structure block, strings block (sizes exact, 8-aligned total).
    pub fn blob(&self) -> Vec<u8> {
        let off_rsv = 40usize;
        let off_struct = off_rsv + 16 * (self.memreserve.len() + 1);
        let off_strings = off_struct + self.structs.len();
        let mut total = off_strings + self.strings.len();
        total = (total + 7) & !7;
        let mut blob = vec![0u8; total];
        let header = [
            0xd00d_feed,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            off_rsv as u32,
            17,
            16,
            0,
            self.strings.len() as u32,
            self.structs.len() as u32,
        ];
        for (i, w) in header.iter().enumerate() {
            set_header_word(&mut blob, i, *w);
        }
        for (i, (a, s)) in self.memreserve.iter().enumerate() {
            blob[off_rsv + 16 * i..][..8].copy_from_slice(&a.to_be_bytes());
            blob[off_rsv + 16 * i + 8..][..8].copy_from_slice(&s.to_be_bytes());
        }
        blob[off_struct..off_strings].copy_from_slice(&self.structs);
        blob[off_strings..off_strings + self.strings.len()].copy_from_slice(&self.strings);
        blob
    }
}

/// A small valid tree: root (2/2 cells) with /memory@80000000 and /uart@1000.
pub fn small_tree() -> Builder {
    let mut b = Builder::default();
    b.begin("")
        .prop_u32("#address-cells", 2)
        .prop_u32("#size-cells", 2);
    b.begin("memory@80000000").prop_str("device_type", "memory");
    b.prop(
        "reg",
        &[0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
    )
    .end();
    b.begin("uart@1000")
        .prop_str("compatible", "arm,pl011")
        .end();
    b.end().finish_token();
    b
}

/// Deterministic xorshift64 so failures reproduce.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
