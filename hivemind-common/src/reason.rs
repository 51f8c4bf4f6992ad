//! Why a program did what it did. Index into the counters map and the `reason` field of
//! verdict events. Values are part of the ABI: append, never renumber.

/// Handed to the host network stack unchanged.
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

/// Number of reason codes; the counters map has this many slots.
pub const COUNT: u32 = 6;

/// Human and Prometheus label for a reason code.
pub const fn label(reason: u32) -> &'static str {
    match reason {
        PASS_TO_HOST => "pass_to_host",
        FORWARDED_LOCAL => "forwarded_local",
        DROPPED_POLICY => "dropped_policy",
        DROPPED_MALFORMED => "dropped_malformed",
        DROPPED_NO_ROUTE => "dropped_no_route",
        DROPPED_NOT_MEMBER => "dropped_not_member",
        _ => "unknown",
    }
}
