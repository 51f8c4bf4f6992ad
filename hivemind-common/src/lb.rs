//! Socket-level load balancing of service VIPs (the `hivemind-lb` object).
//!
//! `HM_LB_SERVICES` (hash): `(VIP, port, protocol)` → [`LbService`]; port 0 stands for every
//! port (the agent writes those: a VIP forwards each port to the same port of a replica).
//! `HM_LB_BACKENDS` (hash): `(service id, slot)` → [`LbBackend`]. A service's live backends
//! are the slots `base .. base + count`; the agent writes a new set into the other half
//! (`base` alternates between 0 and [`MAX_BACKENDS`]) and then points the service at it, so a
//! connection never reads a slot that is being rewritten.
//! `HM_LB_REVNAT` (LRU hash): for UDP, `(socket cookie, backend, port)` → the VIP and port the
//! socket sent to, so replies read with `recvmsg` appear to come from the VIP.

/// Replicas one service balances over (per half of its slot space).
pub const MAX_BACKENDS: u32 = 1024;
pub const SERVICES_MAX_ENTRIES: u32 = 16_384;
pub const BACKENDS_MAX_ENTRIES: u32 = 65_536;
pub const REVNAT_MAX_ENTRIES: u32 = 65_536;

/// Protocol numbers as in the IPv4 header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbKey {
    /// The VIP, wire byte order.
    pub ip: u32,
    /// Host order; 0 = every port.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<LbKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbService {
    /// Names the backend set (the agent uses the VIP's address).
    pub id: u32,
    /// Live backends; 0 makes connections fail at once with `ECONNREFUSED`.
    pub count: u32,
    /// First live slot: 0 or [`MAX_BACKENDS`].
    pub base: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LbService>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbBackendKey {
    pub id: u32,
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<LbBackendKey>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbBackend {
    /// Replica address, wire byte order.
    pub ip: u32,
    /// Host order; 0 = the port the client asked for.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<LbBackend>() == 8);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbRevKey {
    pub cookie: u64,
    /// Backend address (wire order) and port (host order) the datagram went to.
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<LbRevKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbRevValue {
    /// The VIP (wire order) and port (host order) the socket addressed.
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<LbRevValue>() == 8);

/// Map and program names in the `hivemind-lb` object (pinned by name next to the others).
pub mod names {
    pub const MAP_SERVICES: &str = "HM_LB_SERVICES";
    pub const MAP_BACKENDS: &str = "HM_LB_BACKENDS";
    pub const MAP_REVNAT: &str = "HM_LB_REVNAT";
    pub const ALL_MAPS: [&str; 3] = [MAP_SERVICES, MAP_BACKENDS, MAP_REVNAT];

    /// `cgroup/connect4`: TCP connects and UDP `connect`s to a VIP.
    pub const PROG_CONNECT4: &str = "hm_lb_connect4";
    /// `cgroup/sendmsg4`: unconnected UDP sends to a VIP.
    pub const PROG_SENDMSG4: &str = "hm_lb_sendmsg4";
    /// `cgroup/recvmsg4`: UDP replies shown as coming from the VIP.
    pub const PROG_RECVMSG4: &str = "hm_lb_recvmsg4";
}
