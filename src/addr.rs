//! Address newtypes. A physical address, an intermediate physical address (what a stage-2 table
//! translates) and a hypervisor virtual address are different things; mixing them is a type error.

use core::fmt;

/// Size of a translation granule (4 KiB): the unit of ownership.
pub const PAGE_SHIFT: u32 = 12;
/// Size in bytes of one page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

macro_rules! address_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value, for the few places (descriptors, registers) that need it.
            pub const fn raw(self) -> u64 {
                self.0
            }
            /// True if the address is aligned to `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            /// True if page aligned.
            pub const fn is_page_aligned(self) -> bool {
                self.is_aligned(PAGE_SIZE)
            }
            /// Page frame number.
            pub const fn pfn(self) -> u64 {
                self.0 >> PAGE_SHIFT
            }
            /// The address `bytes` further on, or `None` on overflow.
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
            /// The address `bytes` further on. Callers have validated that it cannot overflow.
            pub const fn add(self, bytes: u64) -> Self {
                Self(self.0 + bytes)
            }
            /// Rounded down to `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_type!(
    /// A physical address (output of stage 2).
    PhysAddr
);
address_type!(
    /// An intermediate physical address (input of stage 2; what a guest or the host calls physical).
    Ipa
);
address_type!(
    /// A virtual address in the hypervisor's own EL2 stage-1 translation regime.
    HypVa
);

/// A stage-2 translation context identifier (VMID). The host is VMID 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Vmid(pub u16);

impl Vmid {
    /// The host's VMID.
    pub const HOST: Vmid = Vmid(0);
}

/// The operations [`PageRange`] needs from an address type.
pub trait Address: Copy + Eq + Ord + fmt::Debug {
    /// The raw value.
    fn to_raw(self) -> u64;
    /// An address from a raw value.
    fn from_raw(raw: u64) -> Self;
}

macro_rules! address_trait_impl {
    ($($a:ident),*) => {$(
        impl Address for $a {
            fn to_raw(self) -> u64 {
                self.0
            }
            fn from_raw(raw: u64) -> Self {
                Self(raw)
            }
        }
    )*};
}
address_trait_impl!(PhysAddr, Ipa, HypVa);

/// A non-empty, page-aligned range of `pages` pages starting at `start`, validated not to wrap.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageRange<A> {
    start: A,
    pages: u64,
}

impl<A: Address> PageRange<A> {
    /// A range of `pages` pages from `start`, or `None` if `start` is unaligned, `pages` is
    /// zero, or the end does not fit in 64 bits.
    pub fn new(start: A, pages: u64) -> Option<Self> {
        if start.to_raw() & (PAGE_SIZE - 1) != 0 || pages == 0 {
            return None;
        }
        let bytes = pages.checked_mul(PAGE_SIZE)?;
        start.to_raw().checked_add(bytes)?;
        Some(Self { start, pages })
    }
    /// First address.
    pub fn start(&self) -> A {
        self.start
    }
    /// Number of pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE_SIZE
    }
    /// One past the last address.
    pub fn end(&self) -> A {
        A::from_raw(self.start.to_raw() + self.bytes())
    }
    /// True if `addr` lies in the range.
    pub fn contains(&self, addr: A) -> bool {
        addr >= self.start && addr < self.end()
    }
    /// Every page start address, in order.
    pub fn iter(&self) -> impl Iterator<Item = A> + '_ {
        let base = self.start.to_raw();
        (0..self.pages).map(move |i| A::from_raw(base + i * PAGE_SIZE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_range_rejects_unaligned_empty_and_wrapping() {
        assert!(PageRange::new(PhysAddr(0x1001), 1).is_none());
        assert!(PageRange::new(PhysAddr(0x1000), 0).is_none());
        assert!(PageRange::new(PhysAddr(!0xfff), 2).is_none());
        assert!(PageRange::new(Ipa(0), u64::MAX).is_none());
        let r = PageRange::new(Ipa(0x4000_0000), 3).unwrap();
        assert_eq!(r.end(), Ipa(0x4000_3000));
        assert!(r.contains(Ipa(0x4000_2fff)));
        assert!(!r.contains(Ipa(0x4000_3000)));
    }
}
