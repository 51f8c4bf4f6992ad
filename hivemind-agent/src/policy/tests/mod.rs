//! Tests across the policy module: YAML in, errors or map entries and verdicts out.

mod errors;
mod parsing;

use std::collections::BTreeMap;

use super::*;

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
