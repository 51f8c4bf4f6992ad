//! Generated policy sets of any size, for benchmarks (policy cost against the number of rules)
//! and for compiler scale tests.
//!
//! `synthetic(n)` has exactly `n` rules, one peer and one port each, so the compiled map has about
//! `n` entries plus two enforcement markers per policy (some CIDR rules add one entry for a
//! narrower CIDR they contain). Each policy selects its own app `app-<i>` and has
//! [`RULES_PER_POLICY`] rules: ingress from other apps on TCP ports, from /24 networks on 443,
//! from a label selector, ICMP, egress to apps on UDP and to single addresses on 5432, and one
//! deny of a /25 inside the policy's /24. [`synthetic_apps`] returns the apps they name.

use std::collections::BTreeMap;

use hivemind_common::identity;
use ipnet::Ipv4Net;

use super::{
    AppIdentity,
    model::{DenyRule, Direction, Peer, Policy, PortRule, Protocol, Rule},
};

/// Rules in each generated policy (the last one may have fewer).
pub const RULES_PER_POLICY: usize = 32;

fn policy_count(n_rules: usize) -> usize {
    n_rules.div_ceil(RULES_PER_POLICY)
}

fn app_count(n_rules: usize) -> usize {
    policy_count(n_rules) + 8
}

/// Generated policies with `n_rules` rules in all, sorted by name.
pub fn synthetic(n_rules: usize) -> Vec<Policy> {
    let apps = app_count(n_rules);
    (0..policy_count(n_rules))
        .map(|i| {
            let first = i * RULES_PER_POLICY;
            let count = RULES_PER_POLICY.min(n_rules - first);
            let mut ingress = Vec::new();
            let mut egress = Vec::new();
            let mut deny = Vec::new();
            for k in 0..count {
                let r = first + k;
                let other = format!("app-{}", (i + k + 1) % apps);
                let (a, b) = (octet(r >> 8), octet(r));
                let port = |protocol, port: usize| PortRule {
                    protocol,
                    ports: Some(port_number(port)..=port_number(port)),
                };
                if k == RULES_PER_POLICY - 1 {
                    deny.push(DenyRule {
                        direction: Direction::Ingress,
                        peers: vec![Peer::Cidr(net([10, octet(i >> 8), octet(i), 128], 25))],
                        ports: Vec::new(),
                    });
                    continue;
                }
                let (direction, peer, ports) = match r % 16 {
                    0..=9 => (
                        Direction::Ingress,
                        Peer::App(other),
                        vec![port(Protocol::Tcp, 1024 + r % 60_000)],
                    ),
                    10 => (
                        Direction::Ingress,
                        Peer::Cidr(net([10, a, b, 0], 24)),
                        vec![port(Protocol::Tcp, 443)],
                    ),
                    11 => (
                        Direction::Ingress,
                        Peer::Cidr(net([10, octet(i >> 8), octet(i), 0], 24)),
                        vec![port(Protocol::Tcp, 8443)],
                    ),
                    12 => (
                        Direction::Ingress,
                        Peer::Labels(BTreeMap::from([
                            ("app".to_owned(), other),
                            (
                                "tier".to_owned(),
                                format!("tier-{}", ((i + k + 1) % apps) % 8),
                            ),
                        ])),
                        vec![port(Protocol::Tcp, 9000 + r % 100)],
                    ),
                    13 => (
                        Direction::Egress,
                        Peer::App(other),
                        vec![port(Protocol::Udp, 5000 + r % 1000)],
                    ),
                    14 => (
                        Direction::Egress,
                        Peer::Cidr(net([172, 16, a, b], 32)),
                        vec![port(Protocol::Tcp, 5432)],
                    ),
                    _ => (
                        Direction::Ingress,
                        Peer::App(other),
                        vec![PortRule {
                            protocol: Protocol::Icmp,
                            ports: None,
                        }],
                    ),
                };
                let rule = Rule {
                    peers: Some(vec![peer]),
                    ports,
                };
                match direction {
                    Direction::Ingress => ingress.push(rule),
                    Direction::Egress => egress.push(rule),
                }
            }
            Policy {
                name: format!("syn-{i:05}"),
                selector: BTreeMap::from([("app".to_owned(), format!("app-{i}"))]),
                ingress: Some(ingress),
                egress: Some(egress),
                deny,
            }
        })
        .collect()
}

/// The apps `synthetic(n_rules)` names, with identities from `identity::FIRST_APP` and a `tier`
/// label.
pub fn synthetic_apps(n_rules: usize) -> Vec<AppIdentity> {
    (0..app_count(n_rules))
        .zip(identity::FIRST_APP..)
        .map(|(j, identity)| {
            let app = format!("app-{j}");
            AppIdentity {
                labels: BTreeMap::from([
                    ("app".to_owned(), app.clone()),
                    ("tier".to_owned(), format!("tier-{}", j % 8)),
                ]),
                app,
                identity,
            }
        })
        .collect()
}

fn octet(n: usize) -> u8 {
    u8::try_from(n & 0xff).unwrap_or_default()
}

fn port_number(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn net(octets: [u8; 4], prefix: u8) -> Ipv4Net {
    Ipv4Net::new(octets.into(), prefix).map_or_else(|_| Ipv4Net::default(), |n| n.trunc())
}
