//! Endpoints: every container address the node knows, local or on another node.
//! Map `HM_ENDPOINTS`: key = IPv4 address (`u32`, wire byte order), value = [`Endpoint`].

/// Capacity of `HM_ENDPOINTS`.
pub const MAX_ENTRIES: u32 = 65_536;

/// The endpoint is a container on this node, behind host-side veth `ifindex`.
pub const FLAG_LOCAL: u32 = 1 << 0;
/// The endpoint is a container on another node, reached through the overlay at `node_ip`.
pub const FLAG_REMOTE: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Host-side veth of a local container (0 for remote endpoints).
    pub ifindex: u32,
    /// The app's security identity (see [`crate::identity`]).
    pub identity: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// Underlay address of the node that hosts it (wire byte order); 0 for local endpoints.
    pub node_ip: u32,
    /// MAC of the container's `eth0`.
    pub mac: [u8; 6],
    /// MAC of the host-side veth: the container's gateway, the source of delivered frames.
    pub gw_mac: [u8; 6],
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 32);
