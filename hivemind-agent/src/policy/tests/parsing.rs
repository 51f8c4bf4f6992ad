//! Files, directories and documents into the model.

use super::*;

#[test]
fn the_architecture_example_parses_to_the_model() {
    let policies = parse(EXAMPLE);
    let tcp = |port: u16| PortRule {
        protocol: Protocol::Tcp,
        ports: Some(port..=port),
    };
    assert_eq!(
        policies,
        vec![Policy {
            name: "api-from-web".to_owned(),
            selector: BTreeMap::from([("app".to_owned(), "api".to_owned())]),
            ingress: Some(vec![Rule {
                peers: Some(vec![
                    Peer::App("web".to_owned()),
                    Peer::Cidr(net("192.0.2.0/24"))
                ]),
                ports: vec![tcp(8080)],
            }]),
            egress: Some(vec![Rule {
                peers: Some(vec![Peer::App("db".to_owned())]),
                ports: vec![tcp(5432)],
            }]),
            deny: vec![DenyRule {
                direction: Direction::Ingress,
                peers: vec![Peer::Cidr(net("198.51.100.0/24"))],
                ports: vec![],
            }],
        }]
    );
}

#[test]
fn every_peer_and_port_form() {
    let policies = parse(&doc(
        "forms",
        "  selector: { tier: back, team: core }
  ingress:
    - from: [ { labels: { tier: front } }, { entity: host }, { entity: world }, { cidr: 203.0.113.7 } ]
      ports: [ { port: 53, protocol: udp }, { protocol: UDP }, { protocol: ICMP }, { port: 8000, endPort: 8010 } ]
    - {}
  egress: []
",
    ));
    let p = &policies[0];
    let ingress = p.ingress.as_deref().unwrap_or_default();
    assert_eq!(
        ingress[0].peers,
        Some(vec![
            Peer::Labels(BTreeMap::from([("tier".to_owned(), "front".to_owned())])),
            Peer::Host,
            Peer::World,
            Peer::Cidr(net("203.0.113.7/32")),
        ])
    );
    assert_eq!(
        ingress[0].ports,
        vec![
            PortRule {
                protocol: Protocol::Udp,
                ports: Some(53..=53)
            },
            PortRule {
                protocol: Protocol::Udp,
                ports: None
            },
            PortRule {
                protocol: Protocol::Icmp,
                ports: None
            },
            PortRule {
                protocol: Protocol::Tcp,
                ports: Some(8000..=8010)
            },
        ]
    );
    // `- {}` allows everything; `egress: []` enforces egress and allows nothing.
    assert_eq!(
        ingress[1],
        Rule {
            peers: None,
            ports: vec![]
        }
    );
    assert_eq!(p.egress, Some(vec![]));
    assert_eq!(p.deny, []);
}

#[test]
fn multiple_documents_empty_documents_and_sorting() {
    let text = format!(
        "# leading comment\n---\n{}---\n---\n{}",
        doc("zeta", "  selector: {}\n  ingress: []\n"),
        doc("alpha", "  selector: { app: web }\n  egress: []\n"),
    );
    let names: Vec<String> = parse(&text).into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["alpha", "zeta"]);
}

#[test]
fn an_input_without_documents_is_an_error() {
    assert_eq!(errors(""), ["test.yaml: contains no policy document"]);
    assert_eq!(
        errors("# nothing\n---\n"),
        ["test.yaml: contains no policy document"]
    );
}

#[test]
fn documents_round_trip_through_yaml() {
    let text = format!(
        "{EXAMPLE}---\n{}",
        doc(
            "more",
            "  selector: {}
  ingress:
    - ports: [ { port: 8000, endPort: 8010, protocol: udp }, { protocol: ICMP } ]
    - from: [ { entity: host }, { labels: { a: b } } ]
  deny:
    - to: [ { entity: world } ]
      ports: [ { port: 25 } ]
",
        )
    );
    let policies = parse(&text);
    for p in &policies {
        let yaml =
            serde_norway::to_string(&p.to_document()).unwrap_or_else(|e| panic!("serialize: {e}"));
        assert_eq!(parse(&yaml), vec![p.clone()], "{yaml}");
    }
}

#[test]
fn a_directory_is_read_in_file_name_order_and_errors_name_each_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    write(
        "b.yml",
        &doc("bee", "  selector: { app: api }\n  ingress: []\n"),
    );
    write(
        "a.yaml",
        &doc("ay", "  selector: { app: web }\n  ingress: []\n"),
    );
    write("notes.txt", "not yaml: [");
    write(".hidden.yaml", "not yaml: [");
    let names: Vec<String> = parse_path(dir.path())
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["ay", "bee"]);

    // A single file works too.
    assert_eq!(
        parse_path(&dir.path().join("b.yml")).map(|p| p.len()).ok(),
        Some(1)
    );

    write(
        "c.yaml",
        &doc("bee", "  selector: { app: db }\n  ingress: []\n"),
    );
    write("d.yaml", "apiVersion: hivemind/v1\nkind: [\n");
    let err = parse_path(dir.path())
        .err()
        .unwrap_or_else(|| panic!("accepted"));
    let d = dir.path().display();
    let lines: Vec<String> = err.errors.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with(&format!("{d}/d.yaml:3:1: document 1: malformed YAML: ")),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1],
        format!(
            "{d}/c.yaml: document 1 (bee): a policy named `bee` is already defined at {d}/b.yml: document 1 (bee)"
        )
    );
}

#[test]
fn an_empty_directory_and_a_missing_path_are_errors() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let err = parse_path(dir.path()).err().map(|e| e.to_string());
    assert_eq!(
        err,
        Some(format!(
            "{}: no .yaml or .yml files in this directory",
            dir.path().display()
        ))
    );
    let missing = dir.path().join("nope.yaml");
    let err = parse_path(&missing)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{err}"
    );
}
