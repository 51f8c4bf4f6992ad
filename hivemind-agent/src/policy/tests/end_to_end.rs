//! From YAML to verdicts: the examples of `docs/policy.md`.

use super::*;

#[test]
fn web_to_api_on_8080() {
    let c = compile_yaml(&doc(
        "api-from-web",
        "  selector: { app: api }\n  ingress:\n    - from: [ { app: web } ]\n      ports: [ { port: 8080 } ]\n",
    ));
    assert_eq!(
        verdict(&c, API, WEB, TCP, 8080, IN),
        Verdict::Allowed {
            policy_id: 1,
            key: key(API, WEB, TCP, 8080, IN)
        }
    );
    assert_eq!(verdict(&c, API, WEB, TCP, 8081, IN), Verdict::DefaultDenied);
    assert_eq!(verdict(&c, API, WEB, UDP, 8080, IN), Verdict::DefaultDenied);
    assert_eq!(verdict(&c, API, DB, TCP, 8080, IN), Verdict::DefaultDenied);
    assert_eq!(verdict(&c, API, WEB, ICMP, 0, IN), Verdict::DefaultDenied);
    // Egress of api and every direction of the others stay open.
    assert_eq!(verdict(&c, API, DB, TCP, 5432, OUT), Verdict::Unenforced);
    assert_eq!(verdict(&c, WEB, DB, TCP, 5432, IN), Verdict::Unenforced);
}

#[test]
fn deny_a_cidr_and_keep_the_rest_open() {
    let c = compile_yaml(&doc(
        "block-scanners",
        "  selector: {}\n  ingress: [ {} ]\n  deny:\n    - from: [ { cidr: 198.51.100.0/24 } ]\n",
    ));
    let scanner = peer_identity(&c, ip("198.51.100.7"));
    let other = peer_identity(&c, ip("203.0.113.1"));
    for app in [WEB, API, DB, BATCH] {
        assert!(!passes(&c, app, scanner, TCP, 443, IN));
        assert!(passes(&c, app, other, TCP, 443, IN));
        assert!(passes(&c, app, WEB, UDP, 53, IN));
    }
}

#[test]
fn egress_locked_down_to_the_db_and_dns() {
    let c = compile_yaml(&doc(
        "api-egress",
        "  selector: { app: api }
  egress:
    - to: [ { app: db } ]
      ports: [ { port: 5432 } ]
    - to: [ { entity: host } ]
      ports: [ { port: 53, protocol: UDP }, { port: 53, protocol: TCP } ]
",
    ));
    assert!(passes(&c, API, DB, TCP, 5432, OUT));
    assert!(passes(&c, API, identity::HOST, UDP, 53, OUT));
    assert!(passes(&c, API, identity::HOST, TCP, 53, OUT));
    assert!(!passes(&c, API, identity::HOST, TCP, 22, OUT));
    assert!(!passes(&c, API, DB, TCP, 22, OUT));
    assert!(!passes(&c, API, WEB, TCP, 5432, OUT));
    assert!(!passes(&c, API, identity::WORLD, TCP, 443, OUT));
    assert!(!passes(&c, API, DB, ICMP, 0, OUT));
    // Ingress of api stays open.
    assert!(passes(&c, API, WEB, TCP, 80, IN));
}

#[test]
fn icmp_is_a_protocol_like_the_others() {
    let c = compile_yaml(&doc(
        "ping-db",
        "  selector: { app: db }\n  ingress:\n    - from: [ { labels: { tier: back } } ]\n      ports: [ { protocol: ICMP } ]\n",
    ));
    assert!(passes(&c, DB, API, ICMP, 0, IN));
    assert!(!passes(&c, DB, API, TCP, 5432, IN));
    assert!(!passes(&c, DB, WEB, ICMP, 0, IN));
}

#[test]
fn the_architecture_example() {
    let c = compile_yaml(EXAMPLE);
    let doc_net = peer_identity(&c, ip("192.0.2.10"));
    let denied_net = peer_identity(&c, ip("198.51.100.10"));
    assert!(passes(&c, API, WEB, TCP, 8080, IN));
    assert!(passes(&c, API, doc_net, TCP, 8080, IN));
    assert!(!passes(&c, API, doc_net, TCP, 22, IN));
    assert!(!passes(&c, API, denied_net, TCP, 8080, IN));
    assert!(passes(&c, API, DB, TCP, 5432, OUT));
    assert!(!passes(&c, API, DB, TCP, 5433, OUT));
    assert!(!passes(&c, API, identity::WORLD, TCP, 443, OUT));
}
