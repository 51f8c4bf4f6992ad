//! The VXLAN overlay between nodes (RFC 7348), pushed and stripped by the programs themselves.
//!
//! Wire format of a container's packet between nodes (50 bytes of headers in front of the
//! container's IPv4 packet):
//!
//! ```text
//! outer Ethernet (14) | outer IPv4 (20, DF, TTL 64) | UDP (8) | VXLAN (8) | inner Ethernet (14) | inner IPv4 ...
//!   underlay MACs        node → peer node              sport = hash of the inner flow,
//!   (from the FIB)                                     dport = the VXLAN port, checksum 0
//!                                                                 flags 0x08, VNI = the SOURCE
//!                                                                 container's security identity
//! ```
//!
//! Maps:
//! - `HM_PEERS` (hash): peer node underlay address (wire order) → [`Peer`]. The cluster's
//!   members: the XDP program drops VXLAN from any other source, and the sender needs the
//!   peer's entry (its VTEP MAC) to send to it.
//! - `HM_PEER_STATS` (per-CPU hash): peer node underlay address → [`PeerStats`]. The agent
//!   creates the entry with the peer; the programs only update existing entries.
//! - `HM_TUNNELS` (LPM trie, key as `HM_CIDR_IDENTITY`'s): a node's container subnet → its
//!   underlay address (`u32`, wire order), for destinations not (yet) in `HM_ENDPOINTS`.

/// The IANA port, used while `Config::vxlan_port` is 0.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// Bytes the overlay adds in front of a container's IPv4 packet: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14). Container MTU = underlay MTU − this.
pub const OVERHEAD: u32 = 50;

/// The VNI is 24 bits wide.
pub const VNI_MASK: u32 = 0x00ff_ffff;

/// VXLAN flags byte: the I flag (a valid VNI follows). The only flag defined by RFC 7348;
/// the other bits are reserved, sent as zero and ignored on receipt.
pub const VXLAN_FLAG_VNI: u8 = 0x08;

/// Outer UDP source ports are `SPORT_BASE | (flow hash & SPORT_MASK)`: 49152–65535, the
/// dynamic range RFC 7348 recommends, spread over flows for ECMP.
pub const SPORT_BASE: u16 = 0xc000;
pub const SPORT_MASK: u16 = 0x3fff;

/// Capacity of `HM_PEERS` / `HM_PEER_STATS`.
pub const PEERS_MAX_ENTRIES: u32 = 1024;
/// Capacity of `HM_TUNNELS`.
pub const TUNNELS_MAX_ENTRIES: u32 = 1024;

/// Value of `HM_PEERS`: one member of the cluster (another node, or a foreign VTEP the
/// operator admits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// Destination MAC of the inner Ethernet header sent to this peer. Hivemind nodes rewrite
    /// the inner MACs on receipt and ignore it; a Linux vxlan device wants its own MAC here.
    pub vtep_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Reserved for flags; 0.
    pub flags: u32,
    pub _reserved: u32,
}
const _: () = assert!(core::mem::size_of::<Peer>() == 16);

/// Value of `HM_PEER_STATS`, per CPU: what went to and came from one peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub tx_packets: u64,
    /// Bytes on the wire, outer headers included (a GSO packet counts once, with all its bytes).
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// `bpf_ktime_get_ns` (`CLOCK_MONOTONIC`) of the last packet sent / received; 0 = never.
    pub last_tx_ns: u64,
    pub last_rx_ns: u64,
}
const _: () = assert!(core::mem::size_of::<PeerStats>() == 48);
