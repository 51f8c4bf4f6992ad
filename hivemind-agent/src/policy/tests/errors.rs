//! The messages users see, one test per kind of mistake.

use super::*;

fn one(spec: &str) -> String {
    let e = errors(&doc("p", spec));
    assert_eq!(e.len(), 1, "{e:#?}");
    e[0].clone()
}

#[test]
fn malformed_yaml_has_line_and_column() {
    assert_eq!(
        errors("apiVersion: hivemind/v1\nkind: NetworkPolicy\n  metadata: x\n"),
        [
            "test.yaml:3:11: document 1: malformed YAML: mapping values are not allowed in this context"
        ]
    );
    assert_eq!(
        errors("a: [1, 2\n"),
        [
            "test.yaml:2:1: document 1: malformed YAML: did not find expected ',' or ']', while parsing a flow sequence at line 1 column 4"
        ]
    );
}

#[test]
fn a_syntax_error_in_a_later_document_keeps_the_earlier_ones_checked() {
    let text = format!(
        "{}---\nkind: : x\n",
        doc("p", "  selector: { app: 1.5.x }\n")
    );
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with(
            "test.yaml: document 1 (p): spec.selector.app: \"1.5.x\" is not a valid label value"
        ),
        "{}",
        e[0]
    );
    assert!(
        e[1].starts_with("test.yaml:7:7: document 2: malformed YAML: "),
        "{}",
        e[1]
    );
}

#[test]
fn unknown_fields_suggest_the_closest_name() {
    assert_eq!(
        one("  selector: { app: api }\n  ingress:\n    - prots: [ { port: 80 } ]\n"),
        "test.yaml:7:7: document 1 (p): spec.ingress[0]: unknown field `prots` (did you mean `ports`?); expected `from` or `ports`"
    );
    assert_eq!(
        one("  selector: { app: api }\n  ingress:\n    - to: [ { app: web } ]\n"),
        "test.yaml:7:7: document 1 (p): spec.ingress[0]: unknown field `to` (did you mean `from`?); expected `from` or `ports`"
    );
    assert_eq!(
        one("  selector: { app: api }\n  ingress:\n    - ports: [ { port: 80, endport: 90 } ]\n"),
        "test.yaml:7:28: document 1 (p): spec.ingress[0].ports[0]: unknown field `endport` (did you mean `endPort`?); expected `port`, `endPort` or `protocol`"
    );
    assert_eq!(
        one("  podSelector: { app: api }\n"),
        "test.yaml:5:3: document 1 (p): spec: unknown field `podSelector` (did you mean `selector`?); expected `selector`, `ingress`, `egress` or `deny`"
    );
    assert_eq!(
        errors(
            "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: p, labels: {} }\nspec: { selector: {} }\n"
        ),
        ["test.yaml:3:22: document 1 (p): metadata: unknown field `labels`; expected `name`"]
    );
}

#[test]
fn wrong_types_and_missing_fields() {
    assert_eq!(
        one("  selector: { app: api }\n  ingress:\n    - ports: [ { port: http } ]\n"),
        "test.yaml:7:24: document 1 (p): spec.ingress[0].ports[0].port: invalid type: string \"http\", expected i64"
    );
    assert_eq!(
        one("  ingress: []\n"),
        "test.yaml:5:3: document 1 (p): spec: missing field `selector`"
    );
    assert_eq!(
        errors("- just\n- a list\n"),
        ["test.yaml:1:1: document 1: invalid type: sequence, expected struct PolicyDocument"]
    );
}

#[test]
fn a_key_without_a_value_is_not_a_missing_key() {
    assert_eq!(
        one("  selector: { app: db }\n  ingress:\n"),
        "test.yaml: document 1 (p): spec.ingress: the key has no value: give a list (`[]` for none) or leave the key out"
    );
    assert_eq!(
        one("  selector: { app: db }\n  ingress:\n    - from: ~\n      ports: [ { port: 1 } ]\n"),
        "test.yaml: document 1 (p): spec.ingress[0].from: the key has no value: give a list (`[]` for none) or leave the key out"
    );
}

#[test]
fn wrong_api_version_and_kind() {
    assert_eq!(
        errors(
            "apiVersion: networking.k8s.io/v1\nkind: networkpolicy\nmetadata: { name: p }\nspec: { selector: {} }\n"
        ),
        [
            "test.yaml: document 1 (p): apiVersion: apiVersion must be `hivemind/v1`, found `networking.k8s.io/v1`",
            "test.yaml: document 1 (p): kind: kind must be `NetworkPolicy`, found `networkpolicy`",
        ]
    );
}

#[test]
fn names_are_dns_labels() {
    assert_eq!(
        errors(&doc("Api_Policy", "  selector: {}\n")),
        [
            "test.yaml: document 1 (Api_Policy): metadata.name: \"Api_Policy\" is not a valid name: use 1-63 lowercase letters, digits and `-`, starting and ending with a letter or digit"
        ]
    );
    assert!(
        one("  selector: {}\n  ingress: [ { from: [ { app: Web } ] } ]\n").starts_with(
            "test.yaml: document 1 (p): spec.ingress[0].from[0].app: \"Web\" is not a valid name"
        )
    );
}

#[test]
fn invalid_cidrs_say_what_was_meant() {
    assert_eq!(
        one("  selector: {}\n  ingress: [ { from: [ { cidr: 10.1.2.3/16 } ] } ]\n"),
        "test.yaml: document 1 (p): spec.ingress[0].from[0].cidr: 10.1.2.3/16 has host bits set; did you mean 10.1.0.0/16 (the network) or 10.1.2.3/32 (the one address)?"
    );
    assert_eq!(
        one("  selector: {}\n  ingress: [ { from: [ { cidr: 10.0.0.0/33 } ] } ]\n"),
        "test.yaml: document 1 (p): spec.ingress[0].from[0].cidr: \"10.0.0.0/33\" is not an IPv4 CIDR (A.B.C.D/N): invalid IP address syntax"
    );
    assert_eq!(
        one("  selector: {}\n  egress: [ { to: [ { cidr: \"2001:db8::/32\" } ] } ]\n"),
        "test.yaml: document 1 (p): spec.egress[0].to[0].cidr: \"2001:db8::/32\" is not an IPv4 CIDR (A.B.C.D/N): IPv6 is not supported"
    );
}

#[test]
fn ports_and_protocols() {
    let e = errors(&doc(
        "p",
        "  selector: {}
  ingress:
    - ports:
        - { port: 0 }
        - { port: 70000 }
        - { port: 53, protocol: SCTP }
        - { port: 1, protocol: ICMP }
        - { port: 100, endPort: 99 }
        - { port: 1000, endPort: 3000 }
        - { endPort: 10 }
        - {}
",
    ));
    assert_eq!(
        e,
        [
            "test.yaml: document 1 (p): spec.ingress[0].ports[0].port: port 0 is out of range 1-65535",
            "test.yaml: document 1 (p): spec.ingress[0].ports[1].port: port 70000 is out of range 1-65535",
            "test.yaml: document 1 (p): spec.ingress[0].ports[2].protocol: unknown protocol \"SCTP\"; expected TCP, UDP or ICMP",
            "test.yaml: document 1 (p): spec.ingress[0].ports[3]: ICMP has no ports; remove `port`/`endPort` to allow all ICMP",
            "test.yaml: document 1 (p): spec.ingress[0].ports[4].endPort: endPort 99 is below port 100",
            "test.yaml: document 1 (p): spec.ingress[0].ports[5].endPort: endPort 3000 makes a range of 2001 ports, more than the limit of 1024",
            "test.yaml: document 1 (p): spec.ingress[0].ports[6].endPort: endPort 10 needs `port`, the first port of the range",
            "test.yaml: document 1 (p): spec.ingress[0].ports[7]: empty port entry; give `port` (TCP by default) and/or `protocol`",
        ]
    );
}

#[test]
fn peers() {
    assert_eq!(
        one("  selector: {}\n  ingress: [ { from: [] } ]\n"),
        "test.yaml: document 1 (p): spec.ingress[0].from: from is an empty list; leave the key out to allow every peer, or remove the rule to allow none"
    );
    assert_eq!(
        one("  selector: {}\n  ingress: [ { from: [ { app: web, cidr: 10.0.0.0/8 } ] } ]\n"),
        "test.yaml: document 1 (p): spec.ingress[0].from[0]: a peer needs exactly one of `app`, `labels`, `cidr`, `entity`; found `app` and `cidr` (list them as separate peers)"
    );
    assert_eq!(
        one("  selector: {}\n  ingress: [ { from: [ {} ] } ]\n"),
        "test.yaml: document 1 (p): spec.ingress[0].from[0]: a peer needs exactly one of `app`, `labels`, `cidr`, `entity`; found none"
    );
    assert_eq!(
        one("  selector: {}\n  ingress: [ { from: [ { labels: {} } ] } ]\n"),
        "test.yaml: document 1 (p): spec.ingress[0].from[0].labels: labels is an empty list; name at least one label (to allow every peer, leave out `from`/`to`)"
    );
    assert_eq!(
        one("  selector: {}\n  egress: [ { to: [ { entity: wrld } ] } ]\n"),
        "test.yaml: document 1 (p): spec.egress[0].to[0].entity: unknown entity \"wrld\"; expected `host` or `world` (did you mean `world`?)"
    );
    assert_eq!(
        one("  selector: { \"a b\": x }\n"),
        "test.yaml: document 1 (p): spec.selector.a b: \"a b\" is not a valid label key: use 1-253 letters, digits, `-`, `_`, `.` and `/`"
    );
}

#[test]
fn deny_rules_name_one_direction() {
    assert_eq!(
        one("  selector: {}\n  deny: [ { ports: [ { port: 22 } ] } ]\n"),
        "test.yaml: document 1 (p): spec.deny[0]: a deny rule needs exactly one of `from` (ingress) and `to` (egress)"
    );
    assert_eq!(
        one(
            "  selector: {}\n  deny: [ { from: [ { entity: world } ], to: [ { entity: world } ] } ]\n"
        ),
        "test.yaml: document 1 (p): spec.deny[0]: a deny rule needs exactly one of `from` (ingress) and `to` (egress); split it into two rules"
    );
    assert_eq!(
        one("  selector: {}\n  deny: [ { to: [] } ]\n"),
        "test.yaml: document 1 (p): spec.deny[0].to: to is an empty list; a deny rule names the peers it denies"
    );
}

#[test]
fn every_error_of_the_set_is_reported() {
    let a = doc(
        "dup",
        "  selector: { app: api }\n  ingress: [ { ports: [ { port: 0 } ] } ]\n",
    );
    let b = doc(
        "dup",
        "  selector: {}\n  ingress: [ { from: [ { cidr: 10.0.0.1/8 } ] } ]\n",
    );
    let c = doc("dup", "  selector: {}\n");
    let err = parse_sources([
        ("a.yaml", a.as_str()),
        ("b.yaml", format!("{b}---\n{c}").as_str()),
        ("c.yaml", c.as_str()),
    ])
    .err()
    .unwrap_or_else(|| panic!("accepted"));
    let lines: Vec<String> = err.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "a.yaml: document 1 (dup): spec.ingress[0].ports[0].port: port 0 is out of range 1-65535",
            "b.yaml: document 1 (dup): spec.ingress[0].from[0].cidr: 10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8 (the network) or 10.0.0.1/32 (the one address)?",
            "c.yaml: document 1 (dup): a policy named `dup` is already defined at b.yaml: document 2 (dup)",
        ]
    );
    // The whole set displays one problem per line.
    assert_eq!(err.to_string(), lines.join("\n"));
    assert_eq!(
        err.errors[0]
            .location()
            .map(|l| (l.document, l.path.as_str())),
        Some((Some(1), "spec.ingress[0].ports[0].port"))
    );
}

#[test]
fn a_duplicate_key_points_at_the_second_one() {
    let e = errors(&format!(
        "{}---\napiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata:\n  name: q\nspec:\n  selector: {{ app: a }}\n  ingress:\n    - from: [ {{ app: b }} ]\n      ports: [ {{ port: 80 }} ]\n      from: [ {{ app: c }} ]\n",
        doc("p", "  selector: { app: api }\n")
    ));
    assert_eq!(
        e,
        [
            "test.yaml:16:7: document 2: malformed YAML: spec.ingress[0]: duplicate entry with key \"from\""
        ]
    );
    // At the top of the file, where libyaml's own position is 1:1.
    assert_eq!(
        errors(
            "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: p }\nkind: NetworkPolicy\nspec: {}\n"
        ),
        ["test.yaml:4:1: document 1: malformed YAML: duplicate entry with key \"kind\""]
    );
}
