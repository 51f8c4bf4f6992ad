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
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 16);
