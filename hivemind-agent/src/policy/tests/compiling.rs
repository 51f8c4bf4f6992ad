//! How policies compile to map entries, checked entry by entry and by verdicts.

use super::*;

#[test]
fn an_ingress_policy_enforces_ingress_only() {
    let c = compile_yaml(&doc(
        "p",
        "  selector: { app: api }\n  ingress: [ { from: [ { app: web } ], ports: [ { port: 8080 } ] } ]\n",
    ));
    assert_eq!(
        c.entries,
        BTreeMap::from([
            (marker(API, IN), value(ACTION_DENY, 1)),
            (key(API, WEB, TCP, 8080, IN), value(ACTION_ALLOW, 1)),
        ])
    );
    assert_eq!(c.cidrs, []);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn empty_rule_lists_enforce_and_allow_nothing() {
    let c = compile_yaml(&doc(
        "p",
        "  selector: { app: db }\n  ingress: []\n  egress: []\n",
    ));
    assert_eq!(
        c.entries.keys().copied().collect::<Vec<_>>(),
        [marker(DB, IN), marker(DB, OUT)]
    );
    assert!(!passes(&c, DB, WEB, TCP, 5432, IN));
    assert!(!passes(&c, DB, WEB, TCP, 80, OUT));
}

#[test]
fn a_policy_without_rule_keys_enforces_nothing() {
    let c = compile_yaml(&doc("p", "  selector: { app: db }\n"));
    assert!(c.entries.is_empty());
    assert!(passes(&c, DB, WEB, TCP, 5432, IN));
}

#[test]
fn peers_and_ports_of_each_kind() {
    let c = compile_yaml(&doc(
        "p",
        "  selector: { app: api }
  ingress:
    - ports: [ { port: 443 } ]                           # every peer
    - from: [ { labels: { team: data } } ]               # db and batch, every port
    - from: [ { entity: host } ]
      ports: [ { protocol: UDP }, { protocol: ICMP } ]   # all UDP ports, all ICMP
    - from: [ { app: web } ]
      ports: [ { port: 9000, endPort: 9002, protocol: UDP } ]
  egress:
    - to: [ { entity: world } ]
      ports: [ { port: 53, protocol: UDP } ]
",
    ));
    assert_eq!(
        rules(&c),
        BTreeMap::from([
            (
                key(API, identity::ANY, TCP, 443, IN),
                value(ACTION_ALLOW, 1)
            ),
            (
                key(API, DB, PROTO_ANY, ANY_PORT, IN),
                value(ACTION_ALLOW, 1)
            ),
            (
                key(API, BATCH, PROTO_ANY, ANY_PORT, IN),
                value(ACTION_ALLOW, 1)
            ),
            (
                key(API, identity::HOST, UDP, ANY_PORT, IN),
                value(ACTION_ALLOW, 1)
            ),
            (
                key(API, identity::HOST, ICMP, 0, IN),
                value(ACTION_ALLOW, 1)
            ),
            (key(API, WEB, UDP, 9000, IN), value(ACTION_ALLOW, 1)),
            (key(API, WEB, UDP, 9001, IN), value(ACTION_ALLOW, 1)),
            (key(API, WEB, UDP, 9002, IN), value(ACTION_ALLOW, 1)),
            (
                key(API, identity::WORLD, UDP, 53, OUT),
                value(ACTION_ALLOW, 1)
            ),
        ])
    );
    assert!(c.entries.contains_key(&marker(API, IN)));
    assert!(c.entries.contains_key(&marker(API, OUT)));
}

#[test]
fn label_selectors_need_every_label() {
    let c = compile_yaml(&doc(
        "p",
        "  selector: { tier: back, team: data }\n  ingress: []\n",
    ));
    assert_eq!(
        c.entries.keys().copied().collect::<Vec<_>>(),
        [marker(DB, IN)]
    );
    let c = compile_yaml(&doc("p", "  selector: { tier: back }\n  ingress: []\n"));
    assert_eq!(
        c.entries.keys().copied().collect::<Vec<_>>(),
        [marker(API, IN), marker(DB, IN)]
    );
}

#[test]
fn the_empty_selector_selects_every_app() {
    let c = compile_yaml(&doc("p", "  selector: {}\n  egress: []\n"));
    let markers: Vec<PolicyKey> = [WEB, API, DB, BATCH]
        .iter()
        .map(|&a| marker(a, OUT))
        .collect();
    assert_eq!(c.entries.keys().copied().collect::<Vec<_>>(), markers);
}

#[test]
fn the_app_label_is_implied() {
    // An app whose label map lacks `app=` is still selected by its name.
    let apps = vec![AppIdentity {
        app: "web".to_owned(),
        identity: WEB,
        labels: BTreeMap::new(),
    }];
    let c = compile_all(
        &parse(&doc("p", "  selector: { app: web }\n  ingress: []\n")),
        &apps,
    );
    assert_eq!(
        c.entries.keys().copied().collect::<Vec<_>>(),
        [marker(WEB, IN)]
    );
}

#[test]
fn deny_beats_allow_on_the_same_key_and_enforces_its_direction() {
    let allow = doc(
        "allow",
        "  selector: { app: api }\n  egress: [ { to: [ { app: db } ], ports: [ { port: 5432 } ] } ]\n",
    );
    let deny = doc(
        "deny",
        "  selector: { team: core }\n  deny: [ { to: [ { app: db } ], ports: [ { port: 5432 } ] }, { from: [ { app: batch } ] } ]\n",
    );
    let policies = parse_sources([("a.yaml", allow.as_str()), ("b.yaml", deny.as_str())])
        .unwrap_or_else(|e| panic!("{e}"));
    // Whichever id the deny policy has, it wins.
    for (allow_id, deny_id) in [(1, 2), (2, 1)] {
        let refs = [
            PolicyRef {
                id: allow_id,
                policy: &policies[0],
            },
            PolicyRef {
                id: deny_id,
                policy: &policies[1],
            },
        ];
        let c = compile(&refs, &apps());
        assert_eq!(
            c.entries.get(&key(API, DB, TCP, 5432, OUT)),
            Some(&value(ACTION_DENY, deny_id))
        );
        assert_eq!(
            c.entries.get(&key(API, BATCH, PROTO_ANY, ANY_PORT, IN)),
            Some(&value(ACTION_DENY, deny_id))
        );
        // Both enforce egress (the lower id is recorded); only the deny policy enforces ingress.
        assert_eq!(
            c.entries.get(&marker(API, OUT)),
            Some(&value(ACTION_DENY, 1))
        );
        assert_eq!(
            c.entries.get(&marker(API, IN)),
            Some(&value(ACTION_DENY, deny_id))
        );
        assert_eq!(
            verdict(&c, API, DB, TCP, 5432, OUT),
            Verdict::Denied {
                policy_id: deny_id,
                key: key(API, DB, TCP, 5432, OUT)
            }
        );
        // The deny-only policy made ingress default-deny.
        assert_eq!(verdict(&c, API, WEB, TCP, 80, IN), Verdict::DefaultDenied);
    }
}

#[test]
fn a_broad_deny_overrides_a_narrow_allow_through_the_probe_order() {
    let c = compile_yaml(&doc(
        "p",
        "  selector: { app: api }
  ingress: [ { from: [ { app: web } ], ports: [ { port: 8080 } ] } ]
  deny: [ { from: [ { app: web } ] } ]
",
    ));
    assert_eq!(
        c.entries.get(&key(API, WEB, TCP, 8080, IN)),
        Some(&value(ACTION_ALLOW, 1))
    );
    assert!(!passes(&c, API, WEB, TCP, 8080, IN));
}

#[test]
fn policies_selecting_the_same_app_merge() {
    let a = doc(
        "a",
        "  selector: { app: api }\n  ingress: [ { from: [ { app: web } ], ports: [ { port: 80 } ] } ]\n",
    );
    let b = doc(
        "b",
        "  selector: { tier: back }\n  ingress: [ { from: [ { app: batch } ], ports: [ { port: 81 } ] }, { from: [ { app: web } ], ports: [ { port: 80 } ] } ]\n",
    );
    let policies =
        parse_sources([("a", a.as_str()), ("b", b.as_str())]).unwrap_or_else(|e| panic!("{e}"));
    let c = compile_all(&policies, &apps());
    assert_eq!(
        c.entries.get(&marker(API, IN)),
        Some(&value(ACTION_DENY, 1))
    );
    assert_eq!(c.entries.get(&marker(DB, IN)), Some(&value(ACTION_DENY, 2)));
    // The same allow from both policies: the lower id names it.
    assert_eq!(
        c.entries.get(&key(API, WEB, TCP, 80, IN)),
        Some(&value(ACTION_ALLOW, 1))
    );
    assert_eq!(
        c.entries.get(&key(API, BATCH, TCP, 81, IN)),
        Some(&value(ACTION_ALLOW, 2))
    );
    assert!(passes(&c, API, WEB, TCP, 80, IN));
    assert!(passes(&c, API, BATCH, TCP, 81, IN));
    assert!(!passes(&c, API, BATCH, TCP, 80, IN));
    assert!(passes(&c, DB, WEB, TCP, 80, IN));
    assert!(!passes(&c, DB, WEB, TCP, 81, IN));
}

#[test]
fn cidr_identities_are_ranked_from_first_cidr() {
    let c = compile_yaml(&doc(
        "p",
        "  selector: { app: api }
  ingress: [ { from: [ { cidr: 192.0.2.0/24 }, { cidr: 10.0.0.0/8 } ] } ]
  deny: [ { to: [ { cidr: 10.0.0.0/16 } ] } ]
",
    ));
    let f = identity::FIRST_CIDR;
    assert_eq!(
        c.cidrs,
        [
            (net("10.0.0.0/8"), f),
            (net("10.0.0.0/16"), f + 1),
            (net("192.0.2.0/24"), f + 2)
        ]
    );
}

#[test]
fn a_broad_cidr_rule_also_covers_the_narrower_policy_cidrs_inside_it() {
    let a = doc(
        "a",
        "  selector: { app: api }\n  ingress: [ { from: [ { cidr: 10.0.0.0/8 } ], ports: [ { port: 443 } ] } ]\n",
    );
    // Another policy, for another app, names narrower CIDRs.
    let b = doc(
        "b",
        "  selector: { app: db }\n  ingress: [ { from: [ { cidr: 10.1.0.0/16 }, { cidr: 10.1.2.0/24 }, { cidr: 11.0.0.0/16 } ] } ]\n",
    );
    let policies =
        parse_sources([("a", a.as_str()), ("b", b.as_str())]).unwrap_or_else(|e| panic!("{e}"));
    let c = compile_all(&policies, &apps());
    let id = |s: &str| {
        c.cidrs
            .iter()
            .find(|(n, _)| *n == net(s))
            .map_or_else(|| panic!("{s}"), |&(_, id)| id)
    };
    for narrower in ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24"] {
        assert_eq!(
            c.entries.get(&key(API, id(narrower), TCP, 443, IN)),
            Some(&value(ACTION_ALLOW, 1)),
            "{narrower}"
        );
    }
    assert!(
        !c.entries
            .contains_key(&key(API, id("11.0.0.0/16"), TCP, 443, IN))
    );
    // Resolve addresses the way the LPM trie does, then decide.
    for (addr, allowed) in [
        ("10.9.9.9", true),
        ("10.1.9.9", true),
        ("10.1.2.3", true),
        ("11.0.0.1", false),
        ("8.8.8.8", false),
    ] {
        let peer = peer_identity(&c, ip(addr));
        assert_eq!(passes(&c, API, peer, TCP, 443, IN), allowed, "{addr}");
    }
    assert_eq!(peer_identity(&c, ip("10.1.2.3")), id("10.1.2.0/24"));
    assert_eq!(peer_identity(&c, ip("8.8.8.8")), identity::WORLD);
}

#[test]
fn a_broad_cidr_deny_covers_narrower_allows_and_a_narrow_deny_stays_narrow() {
    let c = compile_yaml(&doc(
        "p",
        "  selector: { app: api }
  ingress:
    - from: [ { cidr: 10.1.0.0/16 }, { cidr: 172.16.0.0/12 } ]
  deny:
    - from: [ { cidr: 10.0.0.0/8 } ]
    - from: [ { cidr: 172.16.5.0/24 } ]
",
    ));
    for (addr, allowed) in [
        ("10.1.0.1", false),
        ("10.2.0.1", false),
        ("172.16.4.1", true),
        ("172.16.5.1", false),
        ("172.17.0.1", true),
    ] {
        let peer = peer_identity(&c, ip(addr));
        assert_eq!(passes(&c, API, peer, TCP, 22, IN), allowed, "{addr}");
    }
}

#[test]
fn the_default_route_and_world_cover_every_outside_address() {
    for peer in ["{ cidr: 0.0.0.0/0 }", "{ entity: world }"] {
        let c = compile_yaml(&doc(
            "p",
            &format!(
                "  selector: {{ app: api }}\n  egress: [ {{ to: [ {peer} ] }} ]\n  deny: [ {{ to: [ {{ cidr: 192.0.2.0/24 }} ], ports: [ {{ port: 25 }} ] }} ]\n"
            ),
        ));
        for (addr, port, allowed) in [
            ("8.8.8.8", 53, true),
            ("192.0.2.1", 80, true),
            ("192.0.2.1", 25, false),
        ] {
            let dst = peer_identity(&c, ip(addr));
            assert_eq!(
                passes(&c, API, dst, TCP, port, OUT),
                allowed,
                "{peer} {addr}:{port}"
            );
        }
        // Neither covers containers or the node.
        assert!(!passes(&c, API, DB, TCP, 5432, OUT), "{peer}");
        assert!(!passes(&c, API, identity::HOST, UDP, 53, OUT), "{peer}");
    }
}

#[test]
fn warnings_for_selectors_and_peers_that_match_no_app() {
    let c = compile_yaml(&doc(
        "p",
        "  selector: { app: ghost }
  ingress: [ { from: [ { app: web }, { app: nobody } ] } ]
  egress: [ { to: [ { labels: { tier: none } } ] } ]
  deny: [ { from: [ { app: gone } ] } ]
",
    ));
    assert_eq!(
        c.warnings,
        [
            "policy p: selector app=ghost matches no app; the policy will apply when one is deployed",
            "policy p: spec.deny[0].from[0] (app=gone) matches no app; the rule will apply when one is deployed",
            "policy p: spec.egress[0].to[0] (tier=none) matches no app; the rule will apply when one is deployed",
            "policy p: spec.ingress[0].from[1] (app=nobody) matches no app; the rule will apply when one is deployed",
        ]
    );
    assert!(c.entries.is_empty());
}

#[test]
fn ids_outside_the_counter_range_are_warned_about() {
    let policies = parse(&doc("p", "  selector: { app: api }\n  ingress: []\n"));
    let c = compile(
        &[PolicyRef {
            id: 0,
            policy: &policies[0],
        }],
        &apps(),
    );
    assert_eq!(
        c.warnings,
        ["policy p: id 0 is outside 1..4096; its drops cannot be counted or reported by name"]
    );
}

#[test]
fn capacity() {
    let mut c = Compiled::default();
    assert!(c.check_capacity().is_ok());
    for i in 0..=MAX_RULE_ENTRIES {
        c.entries.insert(key(i, 0, 0, 0, 0), value(ACTION_ALLOW, 1));
    }
    assert_eq!(
        c.check_capacity().map_err(|e| e.to_string()),
        Err("the compiled rule set needs 262145 policy map entries, more than the datapath's 262144".to_owned())
    );
}

#[test]
fn a_set_that_would_exhaust_memory_is_cut_short_and_refused() {
    // 1100 apps that all select each other on 1024 ports: over a billion entries.
    let apps: Vec<AppIdentity> = (0..1100)
        .map(|i| app(&format!("a{i}"), 1000 + i, &[("mesh", "yes")]))
        .collect();
    let policies = parse(&doc(
        "mesh",
        "  selector: {}\n  ingress: [ { from: [ { labels: { mesh: \"yes\" } } ], ports: [ { port: 1, endPort: 1024 } ] } ]\n",
    ));
    let c = compile_all(&policies, &apps);
    assert_eq!(c.overflow, Some(1100 * 1100 * 1024));
    assert!(c.entries.len() <= 1100, "only markers: {}", c.entries.len());
    assert_eq!(
        c.check_capacity().map_err(|e| e.to_string()),
        Err("the compiled rule set needs 1239040000 policy map entries (before merging duplicates), more than the datapath's 262144".to_owned())
    );
}

/// A small deterministic generator, so the test needs no dependency.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(self.0 >> 33).unwrap_or_default() % n
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[test]
fn the_output_does_not_depend_on_input_order() {
    let mut policies = parse(&format!(
        "{EXAMPLE}---\n{}---\n{}---\n{}",
        doc(
            "b",
            "  selector: { tier: back }\n  ingress: [ { from: [ { cidr: 10.0.0.0/8 } ] }, { from: [ { app: web } ], ports: [ { port: 80 } ] } ]\n"
        ),
        doc(
            "c",
            "  selector: {}\n  deny: [ { from: [ { cidr: 10.1.0.0/16 } ], ports: [ { port: 80 } ] } ]\n  egress: [ { to: [ { entity: world } ] } ]\n"
        ),
        doc(
            "d",
            "  selector: { app: ghost }\n  ingress: [ { from: [ { cidr: 10.1.2.0/24 } ] } ]\n"
        ),
    ));
    policies.extend(synthetic(200));
    let mut apps = apps();
    apps.extend(synthetic_apps(200));
    let ids: BTreeMap<String, u32> = policies.iter().map(|p| p.name.clone()).zip(1..).collect();
    let refs = |policies: &[Policy]| -> Vec<(u32, Policy)> {
        policies.iter().map(|p| (ids[&p.name], p.clone())).collect()
    };
    let run = |pairs: &[(u32, Policy)], apps: &[AppIdentity]| {
        let refs: Vec<PolicyRef<'_>> = pairs
            .iter()
            .map(|(id, policy)| PolicyRef { id: *id, policy })
            .collect();
        compile(&refs, apps)
    };
    let reference = run(&refs(&policies), &apps);
    assert!(reference.entries.len() > 200);
    let mut rng = Lcg(7);
    for _ in 0..20 {
        let mut pairs = refs(&policies);
        rng.shuffle(&mut pairs);
        let mut apps = apps.clone();
        rng.shuffle(&mut apps);
        assert_eq!(run(&pairs, &apps), reference);
    }
}
