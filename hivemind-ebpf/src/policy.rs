//! Policy lookups (see `hivemind_common::policy` for the semantics) and connection tracking.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use hivemind_common::{
    config::Config,
    ct::{CtKey, CtValue},
    endpoint::Endpoint,
    identity,
    policy::{ACTION_ALLOW, ACTION_DENY, ANY_PORT, ENFORCED_PORT, PROTO_ANY, PolicyKey},
};

use crate::{
    maps::{CIDR_IDENTITY, CT, POLICY},
    packet::{Flow, PROTO_ICMP},
};

/// The outcome of one direction's policy.
#[derive(Clone, Copy)]
pub enum Decision {
    /// No policy selects the subject in this direction.
    Open,
    /// A rule of `policy_id` allows it.
    Allow(u32),
    /// A deny rule of `policy_id` matches.
    Deny(u32),
    /// The direction is enforced and nothing allows it; the policy that enforces it (the
    /// lowest id among those selecting the subject) is named in counters and events.
    DefaultDeny(u32),
}

/// Identity of an address: an endpoint's app, the node itself, a policy CIDR, or the world.
#[inline(always)]
pub fn identity_of(addr: u32, endpoint: Option<&Endpoint>, config: &Config) -> u32 {
    if let Some(endpoint) = endpoint {
        return endpoint.identity;
    }
    if addr != 0 && (addr == config.node_ip || addr == config.gateway_ip) {
        return identity::HOST;
    }
    let key = Key::new(32, addr.to_ne_bytes());
    CIDR_IDENTITY.get(&key).copied().unwrap_or(identity::WORLD)
}

/// Six probes from the most to the least specific; a deny anywhere wins, else the first allow,
/// else the ENFORCED marker decides between default deny and open.
#[inline(always)]
pub fn evaluate(subject: u32, peer: u32, protocol: u8, dport: u16, direction: u8) -> Decision {
    let Some(rules) = POLICY.get(0) else {
        return Decision::Open;
    };
    let probes: [(u32, u8, u16); 6] = [
        (peer, protocol, dport),
        (peer, protocol, ANY_PORT),
        (peer, PROTO_ANY, ANY_PORT),
        (identity::ANY, protocol, dport),
        (identity::ANY, protocol, ANY_PORT),
        (identity::ANY, PROTO_ANY, ANY_PORT),
    ];
    let mut allowed: Option<u32> = None;
    for (peer, protocol, dport) in probes {
        let key = PolicyKey {
            identity: subject,
            peer,
            dport,
            protocol,
            direction,
        };
        if let Some(value) = rules.get_ptr(&key) {
            // SAFETY: a value pointer the lookup just returned; read once, by copy.
            let value = unsafe { *value };
            if value.action == ACTION_DENY {
                return Decision::Deny(value.policy_id);
            }
            if value.action == ACTION_ALLOW && allowed.is_none() {
                allowed = Some(value.policy_id);
            }
        }
    }
    if let Some(policy_id) = allowed {
        return Decision::Allow(policy_id);
    }
    let marker = PolicyKey {
        identity: subject,
        peer: identity::ANY,
        dport: ENFORCED_PORT,
        protocol: PROTO_ANY,
        direction,
    };
    match rules.get_ptr(&marker) {
        // SAFETY: a value pointer the lookup just returned; read once, by copy.
        Some(value) => Decision::DefaultDeny(unsafe { (*value).policy_id }),
        None => Decision::Open,
    }
}

/// Where a packet stands in connection tracking.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// Neither direction is tracked: the first packet of a flow (or the first seen).
    New,
    /// The forward tuple is tracked.
    Established,
    /// The reverse tuple is tracked: a reply of an allowed flow.
    Reply,
}

#[inline(always)]
pub fn forward_key(flow: &Flow) -> CtKey {
    CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        protocol: flow.protocol,
        _pad: [0; 3],
    }
}

/// The tuple the other direction of this flow was recorded under. ICMP echo replies carry
/// the request's id in the same place, so only the addresses swap.
#[inline(always)]
fn reverse_key(flow: &Flow) -> CtKey {
    let (sport, dport) = if flow.protocol == PROTO_ICMP {
        (flow.sport, flow.dport)
    } else {
        (flow.dport, flow.sport)
    };
    CtKey {
        saddr: flow.daddr,
        daddr: flow.saddr,
        sport,
        dport,
        protocol: flow.protocol,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn touch(entry: *mut CtValue, now: u64) {
    // SAFETY: a value pointer the lookup just returned. Concurrent updates from other CPUs can
    // lose an increment; the fields are statistics, not decisions.
    unsafe {
        (*entry).last_seen_ns = now;
        (*entry).packets += 1;
    }
}

#[inline(always)]
pub fn ct_lookup(flow: &Flow) -> CtState {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = CT.get_ptr_mut(&forward_key(flow)) {
        touch(entry, now);
        return CtState::Established;
    }
    if let Some(entry) = CT.get_ptr_mut(&reverse_key(flow)) {
        touch(entry, now);
        return CtState::Reply;
    }
    CtState::New
}

/// Records an allowed new flow. A full LRU map evicts its oldest entry, never fails the packet.
#[inline(always)]
pub fn ct_create(flow: &Flow) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let value = CtValue {
        last_seen_ns: now,
        packets: 1,
    };
    let _ = CT.insert(&forward_key(flow), &value, u64::from(BPF_ANY));
}
