//! Connection tracking and port mappings.
//!
//! `HM_CT` (LRU hash): every flow the datapath allowed, keyed by its forward 5-tuple, so replies
//! pass a default-deny direction as the stateful policies of Kubernetes and Cilium do.
//! `HM_PORTS` (hash): published ports, `PortKey` → `PortTarget` (DNAT on the node's ingress).
//! `HM_NAT` (LRU hash): reverse translations for `DNAT`ed flows, keyed by the reply's 5-tuple as
//! the container sends it, so replies leave with the node's address and published port.

pub const CT_MAX_ENTRIES: u32 = 131_072;
pub const NAT_MAX_ENTRIES: u32 = 65_536;
pub const PORTS_MAX_ENTRIES: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source and destination addresses, wire byte order.
    pub saddr: u32,
    pub daddr: u32,
    /// Ports in host order (0 for ICMP, where `sport` carries the echo id).
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
    pub packets: u64,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Published port, host order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PortKey>() == 4);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTarget {
    /// Container address, wire byte order.
    pub ip: u32,
    /// Container port, host order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<PortTarget>() == 8);

/// Value of `HM_NAT`: what to write back into a reply's source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    /// The address the client connected to (the node's), wire byte order.
    pub orig_ip: u32,
    /// The published port, host order.
    pub orig_port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<NatValue>() == 8);
