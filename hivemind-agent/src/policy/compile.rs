//! The compiler: validated policies and the current app identities in, the complete inner policy
//! map and the CIDR → identity table out. Pure and deterministic: the same policies (with the
//! same ids) and apps give the same output whatever their order.
//!
//! What it emits, in the key layout of `hivemind_common::policy` (`S` a selected app's identity,
//! `d` a direction):
//! - For every `(S, d)` that some policy enforces (it has the `ingress`/`egress` key, or a deny
//!   rule in `d`): the marker `(S, ANY, PROTO_ANY, ENFORCED_PORT, d)` with value
//!   `{ ACTION_DENY, lowest id of the policies enforcing it }`. The datapath only tests that the
//!   marker exists (no probe can hit its key); the value reads "default deny" in map dumps.
//! - For every rule, every selected `S`, every peer identity `P` and every `(proto, port)` of the
//!   rule: `(S, P, proto, port, d)` → `{ ACTION_ALLOW or ACTION_DENY, policy id }`. `P` is
//!   `identity::ANY` when the rule names no peers; `proto`/`port` are `PROTO_ANY`/`ANY_PORT` when
//!   it names no ports, `port` is `ANY_PORT` for a protocol without a port (and for ICMP), and a
//!   range becomes one entry per port.
//! - When several rules produce one key, a deny beats an allow, and between equal actions the
//!   lowest policy id wins (so the value is independent of input order).
//!
//! Peer identities: an app or label peer resolves to the identities of the apps it matches now;
//! `entity: host` to `identity::HOST`; a CIDR to its own identity *and* the identities of every
//! narrower policy CIDR inside it, because the datapath's LPM lookup returns only the most specific
//! prefix (a 10.0.0.0/8 rule must still apply to an address that resolves to 10.1.0.0/16);
//! `0.0.0.0/0` and `entity: world` also cover `identity::WORLD` (addresses in no policy CIDR), and
//! `entity: world` covers every policy CIDR.
//!
//! CIDR identities are `identity::FIRST_CIDR + i`, `i` the CIDR's rank among all distinct CIDRs
//! of the policy set (ordered by address, then prefix length).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
};

use hivemind_common::{
    identity,
    policy::{
        ACTION_ALLOW, ACTION_DENY, ANY_PORT, CIDR_MAX_ENTRIES, ENFORCED_PORT, MAX_POLICIES,
        MAX_RULE_ENTRIES, PROTO_ANY, PolicyKey, PolicyValue,
    },
};
use ipnet::Ipv4Net;

use super::{
    PolicyError,
    model::{Direction, Peer, Policy, PortRule, display_labels},
};

/// An app as the compiler needs it: its security identity and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppIdentity {
    pub app: String,
    pub identity: u32,
    /// Should include `app=<name>`; the compiler adds it if missing (the name wins).
    pub labels: BTreeMap<String, String>,
}

/// A policy with the id its caller assigned (a small integer, `1..MAX_POLICIES`: the index of its
/// counters; 0 means "no policy" in verdict events).
#[derive(Clone, Copy, Debug)]
pub struct PolicyRef<'a> {
    pub id: u32,
    pub policy: &'a Policy,
}

/// The compiler's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// The complete inner policy map.
    pub entries: BTreeMap<PolicyKey, PolicyValue>,
    /// The LPM trie `HM_CIDR_IDENTITY`: every CIDR named by any policy and its identity,
    /// ordered by identity.
    pub cidrs: Vec<(Ipv4Net, u32)>,
    /// Things the operator should know that do not stop the policy set, sorted.
    pub warnings: Vec<String>,
    /// `Some(n)`: the set asked for `n` entries (duplicates included), so many that the
    /// compiler stopped early to bound its memory; `entries` is incomplete and must not be
    /// loaded. [`Compiled::check_capacity`] fails.
    pub overflow: Option<usize>,
}

/// Entries (duplicates included) the compiler produces before it gives up on a set: a few
/// times the map's capacity, so a set that fits is never cut, and one policy with a huge
/// product of apps, peers and ports cannot exhaust the agent's memory.
const MAX_RAW_ENTRIES: usize = 4 * MAX_RULE_ENTRIES as usize;

impl Compiled {
    /// The identity the LPM trie gives `addr`: the most specific policy CIDR containing it.
    /// Linear in the number of CIDRs; for tests and diagnostics.
    pub fn cidr_identity(&self, addr: Ipv4Addr) -> Option<u32> {
        self.cidrs
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|&(_, id)| id)
    }

    /// Fails when the output does not fit the datapath's maps (or was cut short, see
    /// [`Compiled::overflow`]).
    #[expect(
        clippy::result_large_err,
        reason = "the module's one error type; a cold path, once per policy change"
    )]
    pub fn check_capacity(&self) -> Result<(), PolicyError> {
        if let Some(count) = self.overflow {
            return Err(PolicyError::Capacity {
                what: "policy map entries (before merging duplicates)",
                count,
                max: usize::try_from(MAX_RULE_ENTRIES).unwrap_or(usize::MAX),
            });
        }
        let checks = [
            ("policy map entries", self.entries.len(), MAX_RULE_ENTRIES),
            ("CIDR entries", self.cidrs.len(), CIDR_MAX_ENTRIES),
        ];
        for (what, count, max) in checks {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            if count > max {
                return Err(PolicyError::Capacity { what, count, max });
            }
        }
        Ok(())
    }
}

/// Compiles `policies` against the current `apps`. See the module documentation for the output.
pub fn compile(policies: &[PolicyRef<'_>], apps: &[AppIdentity]) -> Compiled {
    let mut ordered: Vec<&PolicyRef<'_>> = policies.iter().collect();
    ordered.sort_by(|a, b| (a.id, &a.policy.name).cmp(&(b.id, &b.policy.name)));

    let apps = AppIndex::new(apps);
    let cidrs = CidrTable::new(ordered.iter().map(|p| p.policy));
    let mut out = Builder::default();

    for &&PolicyRef { id, policy } in &ordered {
        if id == 0 || id >= MAX_POLICIES {
            out.warn(format!(
                "policy {}: id {id} is outside 1..{MAX_POLICIES}; its drops cannot be counted or reported by name",
                policy.name
            ));
        }
        let subjects = apps.matching(&policy.selector);
        if subjects.is_empty() {
            out.warn(format!(
                "policy {}: selector {} matches no app; the policy will apply when one is deployed",
                policy.name,
                display_labels(&policy.selector)
            ));
        }

        let mut enforced = BTreeSet::new();
        let allow = [
            (Direction::Ingress, &policy.ingress),
            (Direction::Egress, &policy.egress),
        ];
        for (direction, rules) in allow {
            let Some(rules) = rules else { continue };
            enforced.insert(direction);
            for (i, rule) in rules.iter().enumerate() {
                let peers = match &rule.peers {
                    None => vec![identity::ANY],
                    Some(peers) => {
                        let path = RulePath(direction.key_name(), i, direction.peers_key());
                        out.resolve(policy, path, peers, &apps, &cidrs)
                    }
                };
                out.rules(&subjects, &peers, &rule.ports, direction, ACTION_ALLOW, id);
            }
        }
        for (i, rule) in policy.deny.iter().enumerate() {
            enforced.insert(rule.direction);
            let path = RulePath("deny", i, rule.direction.peers_key());
            let peers = out.resolve(policy, path, &rule.peers, &apps, &cidrs);
            out.rules(
                &subjects,
                &peers,
                &rule.ports,
                rule.direction,
                ACTION_DENY,
                id,
            );
        }
        for direction in enforced {
            for &subject in &subjects {
                out.put(
                    PolicyKey {
                        identity: subject,
                        peer: identity::ANY,
                        dport: ENFORCED_PORT,
                        protocol: PROTO_ANY,
                        direction: direction.abi(),
                    },
                    ACTION_DENY,
                    id,
                );
            }
        }
    }

    let overflow = out.overflow();
    let (entries, warnings) = out.finish();
    Compiled {
        entries,
        cidrs: cidrs.ids.into_iter().collect(),
        warnings,
        overflow,
    }
}

#[derive(Default)]
struct Builder {
    /// Every entry produced, collisions included; [`Builder::finish`] resolves them.
    entries: Vec<(PolicyKey, PolicyValue)>,
    warnings: Vec<String>,
    /// Entries asked for, including those not produced after passing [`MAX_RAW_ENTRIES`].
    asked: usize,
}

impl Builder {
    fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    fn put(&mut self, key: PolicyKey, action: u32, policy_id: u32) {
        self.entries.push((key, PolicyValue { action, policy_id }));
    }

    fn overflow(&self) -> Option<usize> {
        (self.asked > MAX_RAW_ENTRIES).then_some(self.asked)
    }

    /// The map: on a collision a deny beats an allow, then the lowest id wins. (Sorting packed
    /// keys is several times faster than inserting into a `BTreeMap` one by one.)
    fn finish(mut self) -> (BTreeMap<PolicyKey, PolicyValue>, Vec<String>) {
        // Packed in field order, so integer order is `PolicyKey`'s derived order.
        let packed = |k: &PolicyKey| {
            u128::from(k.identity) << 64
                | u128::from(k.peer) << 32
                | u128::from(k.dport) << 16
                | u128::from(k.protocol) << 8
                | u128::from(k.direction)
        };
        self.entries
            .sort_unstable_by_key(|(k, v)| (packed(k), v.action != ACTION_DENY, v.policy_id));
        self.entries.dedup_by_key(|(k, _)| *k); // keeps the first, the winner
        let mut warnings = self.warnings;
        warnings.sort();
        warnings.dedup();
        (self.entries.into_iter().collect(), warnings)
    }

    fn rules(
        &mut self,
        subjects: &[u32],
        peers: &[u32],
        ports: &[PortRule],
        direction: Direction,
        action: u32,
        policy_id: u32,
    ) {
        let ports = port_keys(ports);
        let count = subjects
            .len()
            .saturating_mul(peers.len())
            .saturating_mul(ports.len());
        self.asked = self.asked.saturating_add(count);
        if self.asked > MAX_RAW_ENTRIES {
            return;
        }
        for &identity in subjects {
            for &peer in peers {
                for &(protocol, dport) in &ports {
                    let key = PolicyKey {
                        identity,
                        peer,
                        dport,
                        protocol,
                        direction: direction.abi(),
                    };
                    self.put(key, action, policy_id);
                }
            }
        }
    }

    /// The identities a rule's peers stand for, warning about app and label peers that match
    /// no app. `path` is the rule's peer list, for the warning.
    fn resolve(
        &mut self,
        policy: &Policy,
        path: RulePath,
        peers: &[Peer],
        apps: &AppIndex<'_>,
        cidrs: &CidrTable,
    ) -> Vec<u32> {
        let mut out = Vec::new();
        for (j, peer) in peers.iter().enumerate() {
            let matched = match peer {
                Peer::App(name) => apps.named(name),
                Peer::Labels(labels) => apps.matching(labels),
                Peer::Cidr(net) => {
                    out.extend(cidrs.covered(*net));
                    continue;
                }
                Peer::Host => {
                    out.push(identity::HOST);
                    continue;
                }
                Peer::World => {
                    out.push(identity::WORLD);
                    out.extend(cidrs.ids.values());
                    continue;
                }
            };
            if matched.is_empty() {
                self.warn(format!(
                    "policy {}: {path}[{j}] ({peer}) matches no app; the rule will apply when one is deployed",
                    policy.name
                ));
            }
            out.extend(matched);
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// `spec.<list>[<index>].<key>`: a rule's peer list, formatted only for a warning.
#[derive(Clone, Copy)]
struct RulePath(&'static str, usize, &'static str);

impl std::fmt::Display for RulePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spec.{}[{}].{}", self.0, self.1, self.2)
    }
}

/// `(protocol, port)` pairs of a rule's port list.
fn port_keys(ports: &[PortRule]) -> Vec<(u8, u16)> {
    if ports.is_empty() {
        return vec![(PROTO_ANY, ANY_PORT)];
    }
    let mut keys: Vec<(u8, u16)> = ports
        .iter()
        .flat_map(|p| {
            let protocol = p.protocol.number();
            let range = p.ports.clone().unwrap_or(ANY_PORT..=ANY_PORT);
            range.map(move |port| (protocol, port))
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Apps by identity with their effective labels, indexed by label for fast selector matching.
struct AppIndex<'a> {
    /// Sorted by identity.
    apps: Vec<(u32, BTreeMap<&'a str, &'a str>)>,
    by_label: HashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> AppIndex<'a> {
    fn new(apps: &'a [AppIdentity]) -> Self {
        let mut list: Vec<(u32, BTreeMap<&'a str, &'a str>)> = apps
            .iter()
            .map(|a| {
                let mut labels: BTreeMap<&str, &str> = a
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                labels.insert("app", a.app.as_str());
                (a.identity, labels)
            })
            .collect();
        list.sort();
        list.dedup();
        let mut by_label: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, (_, labels)) in list.iter().enumerate() {
            for (&k, &v) in labels {
                by_label.entry((k, v)).or_default().push(i);
            }
        }
        Self {
            apps: list,
            by_label,
        }
    }

    fn named(&self, name: &str) -> Vec<u32> {
        self.collect(
            self.by_label
                .get(&("app", name))
                .into_iter()
                .flatten()
                .copied(),
        )
    }

    /// Identities of the apps carrying every label of `selector` (every app for `{}`).
    fn matching(&self, selector: &BTreeMap<String, String>) -> Vec<u32> {
        // Scan the shortest posting list and check the other labels on each candidate.
        let postings: Option<Vec<&Vec<usize>>> = selector
            .iter()
            .map(|(k, v)| self.by_label.get(&(k.as_str(), v.as_str())))
            .collect();
        let Some(postings) = postings else {
            return Vec::new(); // some label is carried by no app
        };
        match postings.iter().min_by_key(|p| p.len()) {
            None => self.collect(0..self.apps.len()),
            Some(shortest) => self.collect(shortest.iter().copied().filter(|&i| {
                let labels = &self.apps[i].1;
                selector
                    .iter()
                    .all(|(k, v)| labels.get(k.as_str()) == Some(&v.as_str()))
            })),
        }
    }

    fn collect(&self, indexes: impl Iterator<Item = usize>) -> Vec<u32> {
        let mut ids: Vec<u32> = indexes.map(|i| self.apps[i].0).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Every CIDR of the policy set with its identity, and which identities each one covers.
struct CidrTable {
    ids: BTreeMap<Ipv4Net, u32>,
    /// For each CIDR (as network address and prefix length): its identity, the identities of
    /// every narrower CIDR inside it, and for `0.0.0.0/0` also `identity::WORLD`. Sorted.
    covered: HashMap<(u32, u8), Vec<u32>>,
}

fn cidr_key(net: Ipv4Net) -> (u32, u8) {
    (u32::from(net.network()), net.prefix_len())
}

impl CidrTable {
    fn new<'p>(policies: impl Iterator<Item = &'p Policy>) -> Self {
        let mut nets = Vec::new();
        for policy in policies {
            let rules = policy.ingress.iter().chain(&policy.egress).flatten();
            let peers = rules
                .filter_map(|r| r.peers.as_ref())
                .flatten()
                .chain(policy.deny.iter().flat_map(|r| &r.peers));
            nets.extend(peers.filter_map(|p| match p {
                Peer::Cidr(net) => Some(*net),
                _ => None,
            }));
        }
        nets.sort_unstable();
        nets.dedup();
        let ids: BTreeMap<Ipv4Net, u32> = nets.into_iter().zip(identity::FIRST_CIDR..).collect();

        // Network addresses by prefix length, to find the wider CIDRs of each one with one hash
        // lookup per prefix length in use.
        let mut by_len: BTreeMap<u8, HashSet<u32>> = BTreeMap::new();
        for &net in ids.keys() {
            let (addr, len) = cidr_key(net);
            by_len.entry(len).or_default().insert(addr);
        }
        let mut covered: HashMap<(u32, u8), Vec<u32>> = HashMap::with_capacity(ids.len());
        for (&net, &id) in &ids {
            let (addr, len) = cidr_key(net);
            covered.entry((addr, len)).or_default().push(id);
            for (&wider, addrs) in by_len.range(..len) {
                let mask = u32::MAX.checked_shl(32 - u32::from(wider)).unwrap_or(0);
                if addrs.contains(&(addr & mask)) {
                    covered.entry((addr & mask, wider)).or_default().push(id);
                }
            }
        }
        if let Some(all) = covered.get_mut(&(0, 0)) {
            all.push(identity::WORLD);
        }
        for list in covered.values_mut() {
            list.sort_unstable();
        }
        Self { ids, covered }
    }

    fn covered(&self, net: Ipv4Net) -> impl Iterator<Item = u32> + '_ {
        self.covered
            .get(&cidr_key(net))
            .into_iter()
            .flatten()
            .copied()
    }
}
