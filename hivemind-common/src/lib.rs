//! The ABI shared by Hivemind's eBPF programs (kernel side) and the agent (user side).
//!
//! Everything here is `#[repr(C)]`, `Copy`, made of integers and byte arrays only, with explicit
//! padding and a size assertion: padding inside a hash or LPM key silently breaks lookups, and
//! the two sides are compiled by different compilers for different targets.
#![no_std]

pub mod names;
pub mod reason;

/// A per-CPU counter slot: packets and bytes seen for one reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `Counter` is `#[repr(C)]`, made of two `u64`s with no padding, valid for any bit
    // pattern.
    unsafe impl aya::Pod for super::Counter {}
}
