//! Verso: the portable core of an EL2 hypervisor component that owns every stage-2 table and the
//! SMMUv3, and converts guest memory between private and shared **in place**.
//!
//! This crate is `no_std`, contains no inline assembly and never touches a system register: every
//! TLB or cache maintenance operation and every access to physical memory goes through the traits
//! in [`platform`], so the same code runs at EL2 (see `arch/`) and against a recording fake in
//! `cargo test`.
//!
//! Module map (the folder tree is the architecture):
//! - [`addr`]: physical / intermediate-physical address newtypes and page ranges.
//! - [`platform`]: what the core asks of the architecture.
//! - [`pgtable`]: the VMSAv8-64 stage-2 engine (descriptors, range walks, blocks, break-before-make).
//! - [`mem`]: page ownership: states, owners, metadata and the transitions.
//! - [`error`]: the one error enum.
//! - [`abi`]: hypercall function IDs, argument decoding, return codes.
//! - [`fdt`]: reading and amending the flattened device tree handed to the host.
//! - [`vm`], [`vcpu`]: VMs, their vCPUs (saved contexts, run bookkeeping, trap decoding).
//! - [`guest_abi`]: the pKVM guest calls handled at EL2.
//! - [`convlog`]: the per-VM conversion log in host-shared pages.
//! - [`iommu`]: the SMMUv3 driver (host DMA translates through the host stage-2).
#![cfg_attr(not(any(test, feature = "testing")), no_std)]

pub mod abi;
pub mod addr;
pub mod convlog;
pub mod error;
pub mod fdt;
pub mod guest_abi;
pub mod iommu;
pub mod mem;
pub mod pgtable;
pub mod platform;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vcpu;
pub mod vm;
