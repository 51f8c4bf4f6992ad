//! Runtime switches the agent sets in the one-slot array `HM_CONFIG`.

/// Emit events for forwarded packets too (new TCP connections, UDP, ICMP), not only drops.
/// The agent sets it while a `hivemind monitor` asks for forwarded traffic.
pub const FLAG_EVENTS_FORWARDED: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub flags: u32,
    /// The node's address that published ports answer on (wire byte order); 0 = any.
    pub node_ip: u32,
    /// Gateway address of the node's container subnet (wire byte order).
    pub gateway_ip: u32,
    /// UDP port of the VXLAN overlay, host order; 0 = [`crate::overlay::DEFAULT_VXLAN_PORT`].
    /// `node_ip` is the overlay's outer source address and the address VXLAN must be sent to.
    pub vxlan_port: u16,
    pub _pad: u16,
    /// Index of `hivemind0`, the device holding the gateway address; overlay traffic addressed
    /// to the gateway is handed to the node's stack through its ingress. 0 = none (not in a
    /// cluster).
    pub host_ifindex: u32,
    /// MAC of `hivemind0`, the destination MAC such traffic must carry to be taken as the
    /// node's own.
    pub host_mac: [u8; 6],
    pub _pad2: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<Config>() == 32);
