//! The one error type of the core. Every failing check of every transition returns exactly one of
//! these; `abi` maps them to hypercall return codes in exactly one place.

/// Why a request was refused. A refused request changed nothing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Error {
    /// A page is not in the state the transition requires, or the caller does not own it.
    Perm,
    /// The page is in use in a way that forbids the change now (e.g. still pinned or mapped by the
    /// hypervisor, share count saturated, VM still running).
    Busy,
    /// Not enough memory for the table pages or metadata the change needs (memcache / pool too small).
    NoMem,
    /// The range is outside the address space it must lie in (IPA size, RAM, overflow or wrap).
    Range,
    /// An address or size is not aligned as required.
    Align,
    /// The named object (VM handle, vCPU, mapping) does not exist.
    NotFound,
    /// Any other malformed argument (zero length, reserved bits set, bad flags).
    Invalid,
}

/// Result alias used across the core.
pub type Result<T> = core::result::Result<T, Error>;
