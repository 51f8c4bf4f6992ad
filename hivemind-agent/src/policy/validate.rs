//! Validation: a [`PolicyDocument`] that serde accepted becomes a [`Policy`], or every problem in
//! it is reported with its field path.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::{
    Location, PolicyError,
    model::{
        API_VERSION, DenyRule, Direction, KIND, MAX_PORT_RANGE, Peer, PeerDoc, Policy,
        PolicyDocument, PortDoc, PortRule, Protocol, Rule,
    },
};

/// Builds field paths such as `spec.ingress[0].ports[1].port`.
#[derive(Clone)]
struct FieldPath(String);

impl FieldPath {
    fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }
}

struct Validator<'a> {
    base: &'a Location,
    errors: Vec<PolicyError>,
}

impl Validator<'_> {
    fn at(&self, path: &FieldPath) -> Location {
        Location {
            path: path.0.clone(),
            ..self.base.clone()
        }
    }
}

/// Validates one document. `base` names its file, document index and name; errors extend it
/// with their field path.
pub(super) fn validate(doc: &PolicyDocument, base: &Location) -> Result<Policy, Vec<PolicyError>> {
    let mut v = Validator {
        base,
        errors: Vec::new(),
    };
    let root = FieldPath(String::new());
    if doc.api_version != API_VERSION {
        v.errors.push(PolicyError::ApiVersion {
            at: v.at(&root.field("apiVersion")),
            found: doc.api_version.clone(),
        });
    }
    if doc.kind != KIND {
        v.errors.push(PolicyError::Kind {
            at: v.at(&root.field("kind")),
            found: doc.kind.clone(),
        });
    }
    if let Err(reason) = check_dns_label(&doc.metadata.name) {
        v.errors.push(PolicyError::InvalidName {
            at: v.at(&root.field("metadata").field("name")),
            value: doc.metadata.name.clone(),
            reason,
        });
    }
    let spec = root.field("spec");
    v.labels(&doc.spec.selector, &spec.field("selector"));

    let ingress = doc.spec.ingress.as_ref().map(|rules| {
        let path = spec.field("ingress");
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                v.rule(
                    r.from.as_deref(),
                    r.ports.as_deref(),
                    &path.index(i),
                    "from",
                )
            })
            .collect()
    });
    let egress = doc.spec.egress.as_ref().map(|rules| {
        let path = spec.field("egress");
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| v.rule(r.to.as_deref(), r.ports.as_deref(), &path.index(i), "to"))
            .collect()
    });
    let mut deny = Vec::new();
    for (i, r) in doc.spec.deny.iter().flatten().enumerate() {
        let path = spec.field("deny").index(i);
        let (direction, peers) = match (&r.from, &r.to) {
            (Some(from), None) => (Direction::Ingress, from),
            (None, Some(to)) => (Direction::Egress, to),
            (from, _) => {
                v.errors.push(PolicyError::DenyDirection {
                    at: v.at(&path),
                    both: from.is_some(),
                });
                continue;
            }
        };
        let peers_path = path.field(direction.peers_key());
        if peers.is_empty() {
            v.errors.push(PolicyError::EmptyList {
                at: v.at(&peers_path),
                field: direction.peers_key(),
                hint: "a deny rule names the peers it denies",
            });
        }
        let peers = v.peers(peers, &peers_path);
        let ports = v.ports(r.ports.as_deref(), &path.field("ports"));
        deny.push(DenyRule {
            direction,
            peers,
            ports,
        });
    }

    if v.errors.is_empty() {
        Ok(Policy {
            name: doc.metadata.name.clone(),
            selector: doc.spec.selector.clone(),
            ingress,
            egress,
            deny,
        })
    } else {
        Err(v.errors)
    }
}

impl Validator<'_> {
    fn rule(
        &mut self,
        peers: Option<&[PeerDoc]>,
        ports: Option<&[PortDoc]>,
        path: &FieldPath,
        peers_key: &'static str,
    ) -> Rule {
        let peers = peers.map(|peers| {
            let peers_path = path.field(peers_key);
            if peers.is_empty() {
                self.errors.push(PolicyError::EmptyList {
                    at: self.at(&peers_path),
                    field: peers_key,
                    hint: "leave the key out to allow every peer, or remove the rule to allow none",
                });
            }
            self.peers(peers, &peers_path)
        });
        Rule {
            peers,
            ports: self.ports(ports, &path.field("ports")),
        }
    }

    fn peers(&mut self, peers: &[PeerDoc], path: &FieldPath) -> Vec<Peer> {
        peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| self.peer(p, &path.index(i)))
            .collect()
    }

    fn peer(&mut self, p: &PeerDoc, path: &FieldPath) -> Option<Peer> {
        let found: Vec<&'static str> = [
            ("app", p.app.is_some()),
            ("labels", p.labels.is_some()),
            ("cidr", p.cidr.is_some()),
            ("entity", p.entity.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if found.len() != 1 {
            self.errors.push(PolicyError::PeerShape {
                at: self.at(path),
                found,
            });
            return None;
        }
        if let Some(app) = &p.app {
            return match check_dns_label(app) {
                Ok(()) => Some(Peer::App(app.clone())),
                Err(reason) => {
                    self.errors.push(PolicyError::InvalidName {
                        at: self.at(&path.field("app")),
                        value: app.clone(),
                        reason,
                    });
                    None
                }
            };
        }
        if let Some(labels) = &p.labels {
            let path = path.field("labels");
            if labels.is_empty() {
                self.errors.push(PolicyError::EmptyList {
                    at: self.at(&path),
                    field: "labels",
                    hint: "name at least one label (to allow every peer, leave out `from`/`to`)",
                });
                return None;
            }
            return self
                .labels(labels, &path)
                .then(|| Peer::Labels(labels.clone()));
        }
        if let Some(cidr) = &p.cidr {
            return self.cidr(cidr, &path.field("cidr")).map(Peer::Cidr);
        }
        let entity = p.entity.as_deref().unwrap_or_default();
        match entity {
            "host" => Some(Peer::Host),
            "world" => Some(Peer::World),
            _ => {
                self.errors.push(PolicyError::UnknownEntity {
                    at: self.at(&path.field("entity")),
                    value: entity.to_owned(),
                    suggestion: closest(entity, &["host", "world"]).map(str::to_owned),
                });
                None
            }
        }
    }

    fn cidr(&mut self, text: &str, path: &FieldPath) -> Option<Ipv4Net> {
        // A bare address means that one address.
        let parsed = if text.contains('/') {
            text.parse::<Ipv4Net>().map_err(|e| e.to_string())
        } else {
            text.parse::<Ipv4Addr>()
                .map(Ipv4Net::from)
                .map_err(|e| e.to_string())
        };
        let net = match parsed {
            Ok(net) => net,
            Err(reason) => {
                let reason = if text.contains(':') {
                    "IPv6 is not supported".to_owned()
                } else {
                    reason
                };
                self.errors.push(PolicyError::InvalidCidr {
                    at: self.at(path),
                    value: text.to_owned(),
                    reason,
                });
                return None;
            }
        };
        if net.trunc() != net {
            self.errors.push(PolicyError::CidrHostBits {
                at: self.at(path),
                value: net,
                network: net.trunc(),
                address: net.addr(),
            });
            return None;
        }
        Some(net)
    }

    fn ports(&mut self, ports: Option<&[PortDoc]>, path: &FieldPath) -> Vec<PortRule> {
        ports
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, p)| self.port(p, &path.index(i)))
            .collect()
    }

    fn port(&mut self, p: &PortDoc, path: &FieldPath) -> Option<PortRule> {
        let errors_before = self.errors.len();
        let protocol = match &p.protocol {
            None => Some(Protocol::Tcp),
            Some(name) => {
                let protocol = Protocol::parse(name);
                if protocol.is_none() {
                    self.errors.push(PolicyError::UnknownProtocol {
                        at: self.at(&path.field("protocol")),
                        value: name.clone(),
                    });
                }
                protocol
            }
        };
        if p.port.is_none() && p.end_port.is_none() && p.protocol.is_none() {
            self.errors
                .push(PolicyError::EmptyPort { at: self.at(path) });
            return None;
        }
        if protocol == Some(Protocol::Icmp) && (p.port.is_some() || p.end_port.is_some()) {
            self.errors
                .push(PolicyError::IcmpPort { at: self.at(path) });
            return None;
        }
        let start = p.port.and_then(|port| {
            let valid = u16::try_from(port).ok().filter(|&n| n != 0);
            if valid.is_none() {
                self.errors.push(PolicyError::PortOutOfRange {
                    at: self.at(&path.field("port")),
                    value: port,
                });
            }
            valid
        });
        let range = match (p.port, p.end_port) {
            (_, None) => start.map(|s| s..=s),
            (None, Some(end)) => {
                self.errors.push(PolicyError::InvalidEndPort {
                    at: self.at(&path.field("endPort")),
                    end,
                    reason: "needs `port`, the first port of the range".to_owned(),
                });
                None
            }
            (Some(_), Some(end)) => self.end_port(start, end, &path.field("endPort")),
        };
        let protocol = protocol?;
        if self.errors.len() > errors_before {
            return None;
        }
        Some(PortRule {
            protocol,
            ports: range,
        })
    }

    fn end_port(
        &mut self,
        start: Option<u16>,
        end: i64,
        path: &FieldPath,
    ) -> Option<std::ops::RangeInclusive<u16>> {
        let reason = match (start, u16::try_from(end).ok().filter(|&n| n != 0)) {
            (_, None) => "is out of range 1-65535".to_owned(),
            (None, Some(_)) => return None, // `port` itself is wrong and already reported
            (Some(s), Some(e)) if e < s => format!("is below port {s}"),
            (Some(s), Some(e)) if u32::from(e - s) + 1 > MAX_PORT_RANGE => format!(
                "makes a range of {} ports, more than the limit of {MAX_PORT_RANGE}",
                u32::from(e - s) + 1
            ),
            (Some(s), Some(e)) => return Some(s..=e),
        };
        self.errors.push(PolicyError::InvalidEndPort {
            at: self.at(path),
            end,
            reason,
        });
        None
    }

    /// Checks every key and value; returns whether all were valid.
    fn labels(&mut self, labels: &BTreeMap<String, String>, path: &FieldPath) -> bool {
        let before = self.errors.len();
        for (key, value) in labels {
            let at = path.field(key);
            if let Err(reason) = check_label_key(key) {
                self.errors.push(PolicyError::InvalidLabel {
                    at: self.at(&at),
                    part: "key",
                    value: key.clone(),
                    reason,
                });
            }
            let value_check = if key == "app" {
                check_dns_label(value)
            } else {
                check_label_value(value)
            };
            if let Err(reason) = value_check {
                self.errors.push(PolicyError::InvalidLabel {
                    at: self.at(&at),
                    part: "value",
                    value: value.clone(),
                    reason,
                });
            }
        }
        self.errors.len() == before
    }
}

/// Policy and app names: RFC 1123 labels (the rule apps are created with).
pub(super) fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if crate::config::is_dns_label(name) {
        Ok(())
    } else {
        Err(
            "use 1-63 lowercase letters, digits and `-`, starting and ending with a letter or digit",
        )
    }
}

/// A label key: what `app deploy --label` accepts, so every label an app can carry can be
/// selected: 1 to 253 of `A-Za-z0-9-_./`.
fn check_label_key(key: &str) -> Result<(), &'static str> {
    let valid = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if valid {
        Ok(())
    } else {
        Err("use 1-253 letters, digits, `-`, `_`, `.` and `/`")
    }
}

/// A label value: up to 63 of `A-Za-z0-9-_.` (may be empty).
fn check_label_value(value: &str) -> Result<(), &'static str> {
    let valid = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err("use at most 63 letters, digits, `-`, `_` and `.`")
    }
}

/// The candidate closest to `input`, if it is plausibly a typo of it.
pub(super) fn closest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if let Some(exact) = candidates.iter().find(|c| c.eq_ignore_ascii_case(input)) {
        return Some(exact);
    }
    candidates
        .iter()
        .map(|c| {
            (
                strsim::damerau_levenshtein(&input.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                *c,
            )
        })
        .filter(|&(d, c)| d <= 2 && d < c.len())
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "api", "web-1", "0db", &"a".repeat(63)] {
            assert_eq!(check_dns_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Api", "-a", "a-", "a_b", "a.b", &"a".repeat(64)] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values_follow_the_app_label_rules() {
        for ok in [
            "app",
            "tier",
            "hivemind.io/role",
            "a.b_c-D",
            &"k".repeat(253),
        ] {
            assert_eq!(check_label_key(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a b", "ü", "a=b", &"k".repeat(254)] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        for ok in ["", "v1", "Front.End_2", "-edge-"] {
            assert_eq!(check_label_value(ok), Ok(()), "{ok}");
        }
        for bad in ["a/b", "ü", "a b", &"v".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("prots", &["from", "ports"]), Some("ports"));
        assert_eq!(
            closest("endport", &["port", "endPort", "protocol"]),
            Some("endPort")
        );
        assert_eq!(closest("wrld", &["host", "world"]), Some("world"));
        assert_eq!(closest("zzzzzz", &["host", "world"]), None);
        assert_eq!(closest("x", &["to"]), None);
    }
}
