//! Names of programs and maps, as the object file and the pin directory spell them.
//! The agent looks programs and maps up only through these.

/// TC program on the host side of a container's veth, ingress hook: packets leaving the container.
pub const PROG_FROM_CONTAINER: &str = "hm_from_container";
/// TC program on the host side of a container's veth, egress hook: packets entering the container
/// from the host stack.
pub const PROG_TO_CONTAINER: &str = "hm_to_container";
/// TC program on the node's uplink, ingress hook: published ports (DNAT) and, in a cluster,
/// overlay decapsulation.
pub const PROG_NODE_INGRESS: &str = "hm_node_ingress";
/// TC program on `hivemind0`, egress hook: the node's own packets to containers on other nodes
/// (the cluster CIDR is routed to `hivemind0`), sent through the overlay.
pub const PROG_FROM_HOST: &str = "hm_from_host";
/// XDP program on the underlay interface: drops VXLAN from non-members before the stack sees it.
pub const PROG_UNDERLAY_XDP: &str = "hm_underlay";

/// Every program the object must contain; the agent loads each at start so a verifier
/// rejection fails the start instead of the first packet.
pub const ALL_PROGRAMS: [&str; 5] = [
    PROG_FROM_CONTAINER,
    PROG_TO_CONTAINER,
    PROG_NODE_INGRESS,
    PROG_FROM_HOST,
    PROG_UNDERLAY_XDP,
];

/// Per-CPU packet/byte counters indexed by [`crate::reason`].
pub const MAP_COUNTERS: &str = "HM_COUNTERS";
/// Per-CPU drop counters indexed by policy id.
pub const MAP_POLICY_COUNTERS: &str = "HM_POLICY_COUNTERS";
/// IPv4 → [`crate::endpoint::Endpoint`].
pub const MAP_ENDPOINTS: &str = "HM_ENDPOINTS";
/// Array-of-maps, slot 0 = the active policy hash map.
pub const MAP_POLICY: &str = "HM_POLICY";
/// LPM trie: CIDR → identity.
pub const MAP_CIDR_IDENTITY: &str = "HM_CIDR_IDENTITY";
/// LRU hash: allowed flows.
pub const MAP_CT: &str = "HM_CT";
/// Published ports.
pub const MAP_PORTS: &str = "HM_PORTS";
/// Reverse NAT for published-port flows.
pub const MAP_NAT: &str = "HM_NAT";
/// Ring buffer of [`crate::event::VerdictEvent`].
pub const MAP_EVENTS: &str = "HM_EVENTS";
/// One-slot array of [`crate::config::Config`].
pub const MAP_CONFIG: &str = "HM_CONFIG";

/// Overlay peers: node underlay address → [`crate::overlay::Peer`].
pub const MAP_PEERS: &str = "HM_PEERS";
/// Per-CPU traffic counters per peer: node underlay address → [`crate::overlay::PeerStats`].
pub const MAP_PEER_STATS: &str = "HM_PEER_STATS";
/// LPM trie: node container subnet → node underlay address.
pub const MAP_TUNNELS: &str = "HM_TUNNELS";

/// Every map the object defines (all pinned by name).
pub const ALL_MAPS: [&str; 13] = [
    MAP_COUNTERS,
    MAP_POLICY_COUNTERS,
    MAP_ENDPOINTS,
    MAP_POLICY,
    MAP_CIDR_IDENTITY,
    MAP_CT,
    MAP_PORTS,
    MAP_NAT,
    MAP_EVENTS,
    MAP_CONFIG,
    MAP_PEERS,
    MAP_PEER_STATS,
    MAP_TUNNELS,
];
