//! The datapath's policy decision in plain Rust: the reference model the eBPF programs are
//! tested against, and the way unit tests check semantics from YAML to verdicts.
//!
//! It follows the lookup order documented in `hivemind_common::policy` exactly. For a packet of
//! protocol `proto` to destination port `dport` between the subject `S` (the container whose
//! ingress or egress is checked) and the peer `P`, probe
//!
//! 1. `(S, P, proto, dport)`  2. `(S, P, proto, 0)`  3. `(S, P, 0, 0)`
//! 4. `(S, ANY, proto, dport)`  5. `(S, ANY, proto, 0)`  6. `(S, ANY, 0, 0)`
//!
//! (all in the packet's direction). Any `ACTION_DENY` hit drops; otherwise any `ACTION_ALLOW`
//! hit passes; otherwise the packet is dropped if `(S, ANY, PROTO_ANY, ENFORCED_PORT, dir)`
//! exists and passes if it does not. When several probes hit, the first in probe order names
//! the deciding policy. Values with any other action are ignored.
//!
//! `dport` is the destination port for TCP and UDP in both directions (for ingress the
//! subject's own port, for egress the peer's) and 0 for every other protocol, ICMP included.
//!
//! The peer identity is resolved before the lookup: a container address gives its app's
//! identity; the node's own addresses give `identity::HOST`; any other address gives the
//! identity of the most specific policy CIDR containing it ([`peer_identity`]), or
//! `identity::WORLD` when none does. Replies of allowed connections never reach this decision:
//! the datapath's conntrack passes them.

use std::{collections::BTreeMap, net::Ipv4Addr};

use hivemind_common::{
    identity,
    policy::{
        ACTION_ALLOW, ACTION_DENY, ANY_PORT, ENFORCED_PORT, PROTO_ANY, PolicyKey, PolicyValue,
    },
};

use super::Compiled;

/// What the datapath does with a packet, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A deny entry matched: dropped. `key` is the first deny probe that hit.
    Denied { policy_id: u32, key: PolicyKey },
    /// No deny matched, an allow entry did: passed. `key` is the first allow probe that hit.
    Allowed { policy_id: u32, key: PolicyKey },
    /// Nothing matched and the subject is enforced in this direction: dropped.
    DefaultDenied,
    /// Nothing matched and no policy selects the subject in this direction: passed.
    Unenforced,
}

impl Verdict {
    /// Whether the packet passes.
    pub const fn passes(&self) -> bool {
        matches!(self, Self::Allowed { .. } | Self::Unenforced)
    }
}

/// The six keys the datapath probes, in order.
pub fn probes(subject: u32, peer: u32, protocol: u8, dport: u16, direction: u8) -> [PolicyKey; 6] {
    let key = |peer: u32, protocol: u8, dport: u16| PolicyKey {
        identity: subject,
        peer,
        dport,
        protocol,
        direction,
    };
    [
        key(peer, protocol, dport),
        key(peer, protocol, ANY_PORT),
        key(peer, PROTO_ANY, ANY_PORT),
        key(identity::ANY, protocol, dport),
        key(identity::ANY, protocol, ANY_PORT),
        key(identity::ANY, PROTO_ANY, ANY_PORT),
    ]
}

/// The enforcement marker of `subject` in `direction`.
pub const fn enforced_key(subject: u32, direction: u8) -> PolicyKey {
    PolicyKey {
        identity: subject,
        peer: identity::ANY,
        dport: ENFORCED_PORT,
        protocol: PROTO_ANY,
        direction,
    }
}

/// The verdict for one packet under `compiled` (see the module documentation).
pub fn verdict(
    compiled: &Compiled,
    subject: u32,
    peer: u32,
    protocol: u8,
    dport: u16,
    direction: u8,
) -> Verdict {
    verdict_in(&compiled.entries, subject, peer, protocol, dport, direction)
}

/// [`verdict`] over any policy map contents, such as a dump of the kernel's map.
pub fn verdict_in(
    entries: &BTreeMap<PolicyKey, PolicyValue>,
    subject: u32,
    peer: u32,
    protocol: u8,
    dport: u16,
    direction: u8,
) -> Verdict {
    let hits: Vec<(PolicyKey, PolicyValue)> = probes(subject, peer, protocol, dport, direction)
        .into_iter()
        .filter_map(|key| entries.get(&key).map(|value| (key, *value)))
        .collect();
    let first = |action: u32| hits.iter().find(|(_, v)| v.action == action);
    if let Some(&(key, value)) = first(ACTION_DENY) {
        return Verdict::Denied {
            policy_id: value.policy_id,
            key,
        };
    }
    if let Some(&(key, value)) = first(ACTION_ALLOW) {
        return Verdict::Allowed {
            policy_id: value.policy_id,
            key,
        };
    }
    if entries.contains_key(&enforced_key(subject, direction)) {
        Verdict::DefaultDenied
    } else {
        Verdict::Unenforced
    }
}

/// The identity of an address that is neither a container nor the node: the most specific
/// policy CIDR containing it, else `identity::WORLD`.
pub fn peer_identity(compiled: &Compiled, addr: Ipv4Addr) -> u32 {
    compiled.cidr_identity(addr).unwrap_or(identity::WORLD)
}

#[cfg(test)]
mod tests {
    use hivemind_common::policy::{DIRECTION_EGRESS, DIRECTION_INGRESS};

    use super::*;

    const S: u32 = 300;
    const P: u32 = 301;

    fn key(peer: u32, protocol: u8, dport: u16, direction: u8) -> PolicyKey {
        PolicyKey {
            identity: S,
            peer,
            dport,
            protocol,
            direction,
        }
    }

    fn map(entries: &[(PolicyKey, u32, u32)]) -> BTreeMap<PolicyKey, PolicyValue> {
        entries
            .iter()
            .map(|&(k, action, policy_id)| (k, PolicyValue { action, policy_id }))
            .collect()
    }

    #[test]
    fn probe_order_is_the_documented_one() {
        let p = probes(S, P, 6, 80, DIRECTION_INGRESS);
        let expect = [
            (P, 6, 80),
            (P, 6, 0),
            (P, 0, 0),
            (identity::ANY, 6, 80),
            (identity::ANY, 6, 0),
            (identity::ANY, 0, 0),
        ];
        for (probe, (peer, protocol, dport)) in p.iter().zip(expect) {
            assert_eq!(*probe, key(peer, protocol, dport, DIRECTION_INGRESS));
        }
    }

    #[test]
    fn empty_map_is_open() {
        let entries = BTreeMap::new();
        assert_eq!(
            verdict_in(&entries, S, P, 6, 80, DIRECTION_INGRESS),
            Verdict::Unenforced
        );
    }

    #[test]
    fn marker_alone_is_default_deny_and_only_in_its_direction() {
        let entries = map(&[(enforced_key(S, DIRECTION_INGRESS), ACTION_DENY, 1)]);
        assert_eq!(
            verdict_in(&entries, S, P, 6, 80, DIRECTION_INGRESS),
            Verdict::DefaultDenied
        );
        assert_eq!(
            verdict_in(&entries, S, P, 6, 80, DIRECTION_EGRESS),
            Verdict::Unenforced
        );
        // A TCP packet to port 65535 does not hit the marker as a rule.
        assert_eq!(
            verdict_in(&entries, S, P, 6, 65535, DIRECTION_INGRESS),
            Verdict::DefaultDenied
        );
    }

    #[test]
    fn a_deny_on_any_probe_beats_an_allow_on_an_earlier_one() {
        let entries = map(&[
            (key(P, 6, 80, DIRECTION_INGRESS), ACTION_ALLOW, 1),
            (key(identity::ANY, 0, 0, DIRECTION_INGRESS), ACTION_DENY, 2),
        ]);
        assert_eq!(
            verdict_in(&entries, S, P, 6, 80, DIRECTION_INGRESS),
            Verdict::Denied {
                policy_id: 2,
                key: key(identity::ANY, 0, 0, DIRECTION_INGRESS)
            }
        );
    }

    #[test]
    fn the_first_allow_in_probe_order_names_the_policy() {
        let entries = map(&[
            (key(identity::ANY, 6, 80, DIRECTION_EGRESS), ACTION_ALLOW, 4),
            (key(P, 0, 0, DIRECTION_EGRESS), ACTION_ALLOW, 3),
        ]);
        assert_eq!(
            verdict_in(&entries, S, P, 6, 80, DIRECTION_EGRESS),
            Verdict::Allowed {
                policy_id: 3,
                key: key(P, 0, 0, DIRECTION_EGRESS)
            }
        );
        // Another peer only matches the ANY entry, on that port only.
        assert!(verdict_in(&entries, S, 999, 6, 80, DIRECTION_EGRESS).passes());
        assert_eq!(
            verdict_in(&entries, S, 999, 6, 81, DIRECTION_EGRESS),
            Verdict::Unenforced
        );
    }

    #[test]
    fn unknown_actions_are_ignored() {
        let entries = map(&[
            (key(P, 6, 80, DIRECTION_INGRESS), 7, 1),
            (enforced_key(S, DIRECTION_INGRESS), ACTION_DENY, 1),
        ]);
        assert_eq!(
            verdict_in(&entries, S, P, 6, 80, DIRECTION_INGRESS),
            Verdict::DefaultDenied
        );
    }
}
