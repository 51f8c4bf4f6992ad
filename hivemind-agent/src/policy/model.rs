//! The policy format: the YAML documents as written ([`PolicyDocument`] and its parts, plain
//! serde structs that reject unknown fields) and the validated model the compiler works on
//! ([`Policy`]), which only [`super::validate`] produces.
//!
//! The document structs are deliberately lenient about leaf values (ports are `i64`, protocols and
//! CIDRs are strings) so that serde fails only on the shape of a document — unknown fields, wrong
//! types, missing keys — and every semantic problem (a port out of range, a CIDR with host bits)
//! is found by validation, which reports all of them instead of stopping at the first.

use std::{collections::BTreeMap, fmt, ops::RangeInclusive};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The only `apiVersion` this agent understands.
pub const API_VERSION: &str = "hivemind/v1";
/// The only `kind` this agent understands.
pub const KIND: &str = "NetworkPolicy";
/// Largest `port`..=`endPort` range one port entry may name. Every port of a range becomes one
/// map entry per (selected app, peer), so ranges are capped to keep the rule map bounded.
pub const MAX_PORT_RANGE: u32 = 1024;

/// One YAML document: `apiVersion`, `kind`, `metadata`, `spec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The policy's name: a DNS label, unique in the cluster.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Labels the selected apps carry (all of them); `{}` selects every app. Required.
    pub selector: BTreeMap<String, String>,
    /// Present (even as `[]`): ingress of the selected apps is default-deny plus these rules.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub ingress: Option<Vec<IngressRuleDoc>>,
    /// Present (even as `[]`): egress of the selected apps is default-deny plus these rules.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub egress: Option<Vec<EgressRuleDoc>>,
    /// Deny rules; each enforces the direction it names (`from`: ingress, `to`: egress).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub deny: Option<Vec<DenyRuleDoc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRuleDoc {
    /// Missing: every peer. `[]` is rejected as ambiguous.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub from: Option<Vec<PeerDoc>>,
    /// Missing or `[]`: every port and protocol.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub ports: Option<Vec<PortDoc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRuleDoc {
    /// Missing: every peer. `[]` is rejected as ambiguous.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub to: Option<Vec<PeerDoc>>,
    /// Missing or `[]`: every port and protocol.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub ports: Option<Vec<PortDoc>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRuleDoc {
    /// Ingress deny: traffic from these peers. Exactly one of `from` and `to`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub from: Option<Vec<PeerDoc>>,
    /// Egress deny: traffic to these peers.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub to: Option<Vec<PeerDoc>>,
    /// Missing or `[]`: every port and protocol.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub ports: Option<Vec<PortDoc>>,
}

/// A peer as written: exactly one of the fields is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
}

/// A port entry as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// The error for a list key written without a value.
pub(super) const NO_VALUE: &str =
    "the key has no value: give a list (`[]` for none) or leave the key out";

/// For optional lists: a missing key is `None` (serde's `default`), but a key without a value
/// (`from:` or `ingress: ~`) is an error rather than silently meaning the same as a missing key.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Present<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Present<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Err(E::custom(NO_VALUE))
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Err(E::custom(NO_VALUE))
        }

        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            T::deserialize(d).map(Some)
        }
    }

    deserializer.deserialize_option(Present(std::marker::PhantomData))
}

/// A validated policy. Built only by validation, so every field holds a legal value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// All must match; empty selects every app.
    pub selector: BTreeMap<String, String>,
    /// `None`: this policy leaves ingress alone. `Some(rules)`: ingress is enforced (default-deny)
    /// for the selected apps and `rules` are allowed — `Some(vec![])` allows nothing.
    pub ingress: Option<Vec<Rule>>,
    /// As `ingress`, for traffic the selected apps send.
    pub egress: Option<Vec<Rule>>,
    /// Deny rules in file order; each enforces its direction.
    pub deny: Vec<DenyRule>,
}

/// An allow rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `None`: every peer. Never `Some(vec![])` (validation rejects an empty list).
    pub peers: Option<Vec<Peer>>,
    /// Empty: every port of every protocol.
    pub ports: Vec<PortRule>,
}

/// A deny rule: drops what it matches even when another rule allows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyRule {
    pub direction: Direction,
    /// Never empty.
    pub peers: Vec<Peer>,
    /// Empty: every port of every protocol.
    pub ports: Vec<PortRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The `policy::DIRECTION_*` value of the map ABI.
    pub const fn abi(self) -> u8 {
        match self {
            Self::Ingress => hivemind_common::policy::DIRECTION_INGRESS,
            Self::Egress => hivemind_common::policy::DIRECTION_EGRESS,
        }
    }

    /// The YAML key of this direction's allow rules.
    pub const fn key_name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    /// The YAML key that lists a rule's peers in this direction.
    pub const fn peers_key(self) -> &'static str {
        match self {
            Self::Ingress => "from",
            Self::Egress => "to",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key_name())
    }
}

/// The other side of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Every container of the app with this name (the same as `labels: {app: NAME}`).
    App(String),
    /// Every container of every app carrying all these labels (never empty).
    Labels(BTreeMap<String, String>),
    /// Addresses in this network that are not containers (host bits are zero).
    Cidr(Ipv4Net),
    /// The node itself: its addresses, including the container gateway.
    Host,
    /// Everything that is neither a container nor the node.
    World,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::App(app) => write!(f, "app={app}"),
            Self::Labels(labels) => f.write_str(&display_labels(labels)),
            Self::Cidr(net) => write!(f, "cidr={net}"),
            Self::Host => f.write_str("entity=host"),
            Self::World => f.write_str("entity=world"),
        }
    }
}

/// `k1=v1,k2=v2`, or `{}` for an empty selector.
pub fn display_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "{}".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    /// IP protocol number, as in `PolicyKey::protocol`.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
        }
    }

    /// The spelling in YAML (`TCP`, `UDP`, `ICMP`); input is accepted in any case.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Icmp => "ICMP",
        }
    }

    /// Parses a protocol name in any case.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Tcp, Self::Udp, Self::Icmp]
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }
}

/// A validated port entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRule {
    pub protocol: Protocol,
    /// `None`: every port of `protocol` (always `None` for ICMP). Otherwise `1..=65535` and at
    /// most [`MAX_PORT_RANGE`] ports.
    pub ports: Option<RangeInclusive<u16>>,
}

impl Policy {
    /// The document this policy reads back as (canonical spelling: protocols in upper case,
    /// `endPort` only for ranges). Parsing the result gives back an equal policy.
    pub fn to_document(&self) -> PolicyDocument {
        let ingress = self.ingress.as_ref().map(|rules| {
            rules
                .iter()
                .map(|r| IngressRuleDoc {
                    from: r.peers.as_deref().map(peer_docs),
                    ports: port_docs(&r.ports),
                })
                .collect()
        });
        let egress = self.egress.as_ref().map(|rules| {
            rules
                .iter()
                .map(|r| EgressRuleDoc {
                    to: r.peers.as_deref().map(peer_docs),
                    ports: port_docs(&r.ports),
                })
                .collect()
        });
        let deny = (!self.deny.is_empty()).then(|| {
            self.deny
                .iter()
                .map(|r| {
                    let peers = Some(peer_docs(&r.peers));
                    let (from, to) = match r.direction {
                        Direction::Ingress => (peers, None),
                        Direction::Egress => (None, peers),
                    };
                    DenyRuleDoc {
                        from,
                        to,
                        ports: port_docs(&r.ports),
                    }
                })
                .collect()
        });
        PolicyDocument {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: Metadata {
                name: self.name.clone(),
            },
            spec: Spec {
                selector: self.selector.clone(),
                ingress,
                egress,
                deny,
            },
        }
    }
}

fn peer_docs(peers: &[Peer]) -> Vec<PeerDoc> {
    peers
        .iter()
        .map(|p| match p {
            Peer::App(app) => PeerDoc {
                app: Some(app.clone()),
                ..PeerDoc::default()
            },
            Peer::Labels(labels) => PeerDoc {
                labels: Some(labels.clone()),
                ..PeerDoc::default()
            },
            Peer::Cidr(net) => PeerDoc {
                cidr: Some(net.to_string()),
                ..PeerDoc::default()
            },
            Peer::Host => PeerDoc {
                entity: Some("host".to_owned()),
                ..PeerDoc::default()
            },
            Peer::World => PeerDoc {
                entity: Some("world".to_owned()),
                ..PeerDoc::default()
            },
        })
        .collect()
}

fn port_docs(ports: &[PortRule]) -> Option<Vec<PortDoc>> {
    (!ports.is_empty()).then(|| {
        ports
            .iter()
            .map(|p| PortDoc {
                port: p.ports.as_ref().map(|r| i64::from(*r.start())),
                end_port: p
                    .ports
                    .as_ref()
                    .filter(|r| r.start() != r.end())
                    .map(|r| i64::from(*r.end())),
                protocol: Some(p.protocol.name().to_owned()),
            })
            .collect()
    })
}
