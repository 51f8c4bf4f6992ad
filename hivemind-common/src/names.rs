//! Names of programs and maps, as the object file and the pin directory spell them.
//! The agent looks programs and maps up only through these.

/// TC program on the host side of a container's veth, ingress hook: packets leaving the container.
pub const PROG_FROM_CONTAINER: &str = "hm_from_container";
/// TC program on the host side of a container's veth, egress hook: packets entering the container.
pub const PROG_TO_CONTAINER: &str = "hm_to_container";
/// XDP program on the underlay interface: drops VXLAN from non-members before the stack sees it.
pub const PROG_UNDERLAY_XDP: &str = "hm_underlay";

/// Every program the object must contain; the agent loads each at start so a verifier
/// rejection fails the start instead of the first packet.
pub const ALL_PROGRAMS: [&str; 3] = [PROG_FROM_CONTAINER, PROG_TO_CONTAINER, PROG_UNDERLAY_XDP];

/// Per-CPU packet/byte counters indexed by [`crate::reason`].
pub const MAP_COUNTERS: &str = "HM_COUNTERS";
