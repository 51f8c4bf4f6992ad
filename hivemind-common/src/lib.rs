//! The ABI shared by Hivemind's eBPF programs (kernel side) and the agent (user side).
//!
//! Everything here is `#[repr(C)]`, `Copy`, made of integers and byte arrays only, with explicit
//! padding and a size assertion: padding inside a hash or LPM key silently breaks lookups, and
//! the two sides are compiled by different compilers for different targets.
//!
//! Byte order: IPv4 addresses are stored as the four bytes on the wire, read into a `u32` with
//! `u32::from_ne_bytes` (so the kernel side compares them without swapping); ports and other
//! integers are host order unless a field's name ends in `_be`.
#![no_std]
// Explicit padding is spelled `_pad` (STYLE.md) and must be public so both sides can build
// values with struct literals.
#![allow(clippy::pub_underscore_fields)]

pub mod config;
pub mod ct;
pub mod endpoint;
pub mod event;
pub mod lb;
pub mod names;
pub mod overlay;
pub mod policy;
pub mod reason;

/// A per-CPU counter slot: packets and bytes seen for one reason (or one policy).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// Well-known security identities. App identities are allocated by the agent from
/// [`identity::FIRST_APP`] upwards; CIDR identities from [`identity::FIRST_CIDR`].
pub mod identity {
    /// Nothing known about the peer (not a container, not in any policy CIDR).
    pub const WORLD: u32 = 1;
    /// The node itself (its addresses, including the gateway address of the container subnet).
    pub const HOST: u32 = 2;
    /// First identity handed to an app.
    pub const FIRST_APP: u32 = 256;
    /// First identity handed to a CIDR named in a policy. Bit 24 marks CIDR identities.
    pub const FIRST_CIDR: u32 = 1 << 24;
    /// Matches any peer in a policy key.
    pub const ANY: u32 = 0;
}

#[cfg(feature = "user")]
mod user {
    use crate::{config, ct, endpoint, event, lb, overlay, policy};

    // Every impl below: the type is `#[repr(C)]`, made only of integers and byte
    // arrays with explicit padding fields, so every bit pattern is a valid value and there are
    // no implicit padding bytes.
    // SAFETY: see above.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: see above.
    unsafe impl aya::Pod for endpoint::Endpoint {}
    // SAFETY: see above.
    unsafe impl aya::Pod for policy::PolicyKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for policy::PolicyValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for ct::CtKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for ct::CtValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for ct::PortKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for ct::PortTarget {}
    // SAFETY: see above.
    unsafe impl aya::Pod for ct::NatValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for event::VerdictEvent {}
    // SAFETY: see above.
    unsafe impl aya::Pod for config::Config {}
    // SAFETY: see above.
    unsafe impl aya::Pod for overlay::Peer {}
    // SAFETY: see above.
    unsafe impl aya::Pod for overlay::PeerStats {}
    // SAFETY: see above.
    unsafe impl aya::Pod for lb::LbKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for lb::LbService {}
    // SAFETY: see above.
    unsafe impl aya::Pod for lb::LbBackendKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for lb::LbBackend {}
    // SAFETY: see above.
    unsafe impl aya::Pod for lb::LbRevKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for lb::LbRevValue {}
}
