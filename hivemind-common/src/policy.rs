//! Network policy as map entries, compiled by the agent from YAML.
//!
//! The active rule set lives in one inner hash map (`PolicyKey` → `PolicyValue`) held in slot 0
//! of the array-of-maps `HM_POLICY`. The agent builds a complete new inner map and swaps the slot
//! in one update, so a packet sees either the old rule set or the new one, never a mix.
//!
//! A lookup for a packet of `proto`/`dport` between a subject endpoint (identity `S`, the
//! container the policy selects) and a peer (identity `P`) probes, in order:
//! `(S, P, proto, dport)`, `(S, P, proto, 0)`, `(S, P, 0, 0)`, `(S, ANY, proto, dport)`,
//! `(S, ANY, proto, 0)`, `(S, ANY, 0, 0)` — six hash lookups whatever the number of rules.
//! Any `DENY` hit drops; otherwise any `ALLOW` hit passes; otherwise the packet is dropped when
//! the subject is enforced in that direction (see [`ENFORCED_PORT`]) and passes when it is not.

pub const DIRECTION_INGRESS: u8 = 0;
pub const DIRECTION_EGRESS: u8 = 1;

pub const ACTION_ALLOW: u32 = 1;
pub const ACTION_DENY: u32 = 2;

/// Protocol value meaning "any protocol" in a key.
pub const PROTO_ANY: u8 = 0;

/// Marker entry `(S, ANY, PROTO_ANY, ENFORCED_PORT, dir)`: some policy selects identity `S` in
/// direction `dir`, so that direction is default-deny. Kept in the same inner map as the rules
/// so enforcement flips atomically with them. Its value names the policy (the lowest id among
/// those enforcing the direction) that default-deny drops are counted and reported under. No
/// rule produces this key: a rule without a protocol never names a port, so its keys use
/// [`ANY_PORT`].
pub const ENFORCED_PORT: u16 = 0xffff;
/// Port value meaning "any port" in a key.
pub const ANY_PORT: u16 = 0;

/// Maximum entries in one inner policy map.
pub const MAX_RULE_ENTRIES: u32 = 262_144;
/// Policy ids are small integers (indexes into `HM_POLICY_COUNTERS`).
pub const MAX_POLICIES: u32 = 4096;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// Identity of the selected container (the one whose ingress or egress is checked).
    pub identity: u32,
    /// Identity of the other side, or [`crate::identity::ANY`].
    pub peer: u32,
    /// Destination port (host order) or [`ANY_PORT`]; for ICMP, 0.
    pub dport: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP) or [`PROTO_ANY`].
    pub protocol: u8,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u8,
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// [`ACTION_ALLOW`] or [`ACTION_DENY`].
    pub action: u32,
    /// The policy that produced this entry (events and per-policy counters name it).
    pub policy_id: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);

/// Key of the CIDR map `HM_CIDR_IDENTITY` (an LPM trie): prefix length + address bytes.
/// aya's `lpm_trie::Key<[u8; 4]>` has this layout; value = identity (`u32`).
pub const CIDR_MAX_ENTRIES: u32 = 65_536;
