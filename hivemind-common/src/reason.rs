//! Why a program did what it did. Index into the counters map `HM_COUNTERS` and the `reason`
//! field of verdict events. Values are part of the ABI: append, never renumber.

/// Handed to the host network stack (to the node, or routed onwards and masqueraded).
pub const PASS_TO_HOST: u32 = 0;
/// Delivered to a local container by redirect.
pub const FORWARDED_LOCAL: u32 = 1;
/// Dropped: a policy denies it, or a selected direction allows nothing that matches.
pub const DROPPED_POLICY: u32 = 2;
/// Dropped: headers truncated or inconsistent.
pub const DROPPED_MALFORMED: u32 = 3;
/// Dropped: no endpoint or route for the destination.
pub const DROPPED_NO_ROUTE: u32 = 4;
/// XDP on the underlay: VXLAN from a source that is not a cluster member.
pub const DROPPED_NOT_MEMBER: u32 = 5;
/// Dropped: a container sent from an address that is not its own.
pub const DROPPED_SPOOFED: u32 = 6;
/// Dropped: IP fragments (the datapath cannot see ports past the first fragment).
pub const DROPPED_FRAGMENT: u32 = 7;
/// Passed unchanged: not IPv4 (ARP and the like go to the host stack).
pub const PASS_NOT_IPV4: u32 = 8;
/// A published port was translated to its container (DNAT).
pub const FORWARDED_PORT_MAP: u32 = 9;
/// Sent to another node through the overlay.
pub const FORWARDED_OVERLAY: u32 = 10;
/// Received from the overlay and delivered.
pub const RECEIVED_OVERLAY: u32 = 11;
/// Dropped: a helper call failed (redirect, header rewrite).
pub const DROPPED_INTERNAL: u32 = 12;
/// Handed on to a local container by the host stack (traffic from the node, from outside,
/// published ports after DNAT) once the container's ingress policy allowed it.
pub const PASS_TO_CONTAINER: u32 = 13;
/// Dropped: the encapsulated packet would exceed the underlay's MTU (a container whose MTU
/// is not the underlay's minus the overlay's 50 bytes).
pub const DROPPED_TOO_BIG: u32 = 14;

/// Number of reason codes; the counters map has this many slots.
pub const COUNT: u32 = 15;

/// Human and Prometheus label for a reason code.
pub const fn label(reason: u32) -> &'static str {
    match reason {
        PASS_TO_HOST => "pass_to_host",
        FORWARDED_LOCAL => "forwarded_local",
        DROPPED_POLICY => "dropped_policy",
        DROPPED_MALFORMED => "dropped_malformed",
        DROPPED_NO_ROUTE => "dropped_no_route",
        DROPPED_NOT_MEMBER => "dropped_not_member",
        DROPPED_SPOOFED => "dropped_spoofed",
        DROPPED_FRAGMENT => "dropped_fragment",
        PASS_NOT_IPV4 => "pass_not_ipv4",
        FORWARDED_PORT_MAP => "forwarded_port_map",
        FORWARDED_OVERLAY => "forwarded_overlay",
        RECEIVED_OVERLAY => "received_overlay",
        DROPPED_INTERNAL => "dropped_internal",
        PASS_TO_CONTAINER => "pass_to_container",
        DROPPED_TOO_BIG => "dropped_too_big",
        _ => "unknown",
    }
}

/// True for reasons that mean the packet was dropped.
pub const fn is_drop(reason: u32) -> bool {
    matches!(
        reason,
        DROPPED_POLICY
            | DROPPED_MALFORMED
            | DROPPED_NO_ROUTE
            | DROPPED_NOT_MEMBER
            | DROPPED_SPOOFED
            | DROPPED_FRAGMENT
            | DROPPED_INTERNAL
            | DROPPED_TOO_BIG
    )
}
