//! Tests across the policy module: YAML in, errors or map entries and verdicts out.

mod compiling;
mod end_to_end;
mod errors;
mod parsing;
mod scale;

use std::{collections::BTreeMap, net::Ipv4Addr};

use hivemind_common::{
    identity,
    policy::{
        ACTION_ALLOW, ACTION_DENY, ANY_PORT, DIRECTION_EGRESS, DIRECTION_INGRESS, ENFORCED_PORT,
        MAX_RULE_ENTRIES, PROTO_ANY, PolicyKey, PolicyValue,
    },
};

use super::{
    eval::{Verdict, peer_identity, verdict},
    *,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const IN: u8 = DIRECTION_INGRESS;
const OUT: u8 = DIRECTION_EGRESS;

const WEB: u32 = 256;
const API: u32 = 257;
const DB: u32 = 258;
const BATCH: u32 = 259;

fn parse(yaml: &str) -> Vec<Policy> {
    parse_str("test.yaml", yaml).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

/// The error lines for a rejected input.
fn errors(yaml: &str) -> Vec<String> {
    match parse_str("test.yaml", yaml) {
        Ok(p) => panic!("accepted, expected errors: {p:?}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

fn app(name: &str, identity: u32, labels: &[(&str, &str)]) -> AppIdentity {
    let mut labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.insert("app".to_owned(), name.to_owned());
    AppIdentity {
        app: name.to_owned(),
        identity,
        labels,
    }
}

fn apps() -> Vec<AppIdentity> {
    vec![
        app("web", WEB, &[("tier", "front")]),
        app("api", API, &[("tier", "back"), ("team", "core")]),
        app("db", DB, &[("tier", "back"), ("team", "data")]),
        app("batch", BATCH, &[("team", "data")]),
    ]
}

/// Compiles with ids 1, 2, ... in the given order.
fn compile_all(policies: &[Policy], apps: &[AppIdentity]) -> Compiled {
    let refs: Vec<PolicyRef<'_>> = policies
        .iter()
        .zip(1..)
        .map(|(policy, id)| PolicyRef { id, policy })
        .collect();
    compile(&refs, apps)
}

fn compile_yaml(yaml: &str) -> Compiled {
    compile_all(&parse(yaml), &apps())
}

fn key(identity: u32, peer: u32, protocol: u8, dport: u16, direction: u8) -> PolicyKey {
    PolicyKey {
        identity,
        peer,
        dport,
        protocol,
        direction,
    }
}

fn value(action: u32, policy_id: u32) -> PolicyValue {
    PolicyValue { action, policy_id }
}

fn marker(identity: u32, direction: u8) -> PolicyKey {
    key(identity, identity::ANY, PROTO_ANY, ENFORCED_PORT, direction)
}

/// Entries that are not enforcement markers.
fn rules(c: &Compiled) -> BTreeMap<PolicyKey, PolicyValue> {
    c.entries
        .iter()
        .filter(|(k, _)| k.dport != ENFORCED_PORT || k.protocol != PROTO_ANY)
        .map(|(k, v)| (*k, *v))
        .collect()
}

fn passes(c: &Compiled, subject: u32, peer: u32, protocol: u8, dport: u16, direction: u8) -> bool {
    verdict(c, subject, peer, protocol, dport, direction).passes()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn doc(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: {{ name: {name} }}\nspec:\n{spec}"
    )
}

const EXAMPLE: &str = "\
apiVersion: hivemind/v1
kind: NetworkPolicy
metadata: { name: api-from-web }
spec:
  selector: { app: api }            # labels of the containers it applies to
  ingress:
    - from: [ { app: web }, { cidr: 192.0.2.0/24 } ]
      ports: [ { port: 8080, protocol: TCP } ]
  egress:
    - to: [ { app: db } ]
      ports: [ { port: 5432 } ]
  deny:                              # optional; deny beats allow
    - from: [ { cidr: 198.51.100.0/24 } ]
";

fn net(s: &str) -> ipnet::Ipv4Net {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}
