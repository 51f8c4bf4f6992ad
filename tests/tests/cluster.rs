//! Cluster formation on three namespace "hosts" on one bridged underlay, each with its own
//! containerd, agent and (agent-run) etcd member: `--cluster-init` carrying a node's state
//! into etcd, two nodes joining at once, the node registry and its liveness, the mutual-TLS
//! node endpoint, a killed agent and a killed etcd leader; and joins that must fail cleanly.

// Each test is one scenario that reads top to bottom.
#![allow(clippy::too_many_lines)]

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use hivemind_agent::{
    cluster::{ClusterClient as ClusterNodes, client},
    proto::{self, cluster_client::ClusterClient, containers_client::ContainersClient},
    store::{EtcdTls, Store},
};
use hivemind_tests::{
    AgentOptions, Containerd, REGISTRY_ADDR, Registry,
    cluster::{ClusterNode, EtcdView, Underlay},
    node::NodeRuntime,
    util::{stderr, stdout, unique, wait_for},
};
use serde_json::Value;

/// The liveness lease's TTL is 10 s; allow for the keep-alive period and etcd's lease checks.
const NOT_READY_WITHIN: Duration = Duration::from_secs(16);

/// Members (id, name, learner), node record keys, subnet claim keys.
type Snapshot = (Vec<(u64, String, bool)>, Vec<String>, Vec<String>);

/// What a join may not change: members, node records, subnet claims.
fn snapshot(etcd: &EtcdView) -> Snapshot {
    let members = etcd
        .members()
        .into_iter()
        .map(|m| (m.id, m.name, m.is_learner))
        .collect();
    (
        members,
        etcd.keys("/hivemind/nodes/"),
        etcd.keys("/hivemind/ipam/subnets/"),
    )
}

fn assert_single(node: &hivemind_tests::Agent) {
    let data = node.data_dir();
    for left in ["cluster.json", "pki", "etcd", "etcd.pid", "etcd.log"] {
        assert!(
            !data.join(left).exists(),
            "{left} left behind in {}",
            data.display()
        );
    }
    assert!(data.join("state.redb").exists(), "state.redb is gone");
    let health = node.cli_json(&["health"]);
    assert_eq!(health["store"]["backend"], "redb", "{health}");
    assert_eq!(health["cluster"]["mode"], "single", "{health}");
}

fn join(node: &ClusterNode, host: &str, token: &str) -> std::process::Output {
    node.agent.cli(&["join", "--host", host, "--token", token])
}

fn running(node: &ClusterNode, app: &str) -> usize {
    node.agent
        .cli_json(&["app", "containers", "--app", app])
        .as_array()
        .map_or(0, |all| {
            all.iter().filter(|c| c["state"] == "running").count()
        })
}

#[test]
fn cluster_forms_shares_state_and_survives_faults() {
    let underlay = Underlay::new();
    let with_registry = AgentOptions {
        insecure_registries: vec![REGISTRY_ADDR.to_owned()],
        ..AgentOptions::default()
    };

    // Node 1 runs alone first, with an app and a volume that --cluster-init must carry over.
    let mut n1 = ClusterNode::start(&underlay, 1, &unique("n"), &[], &with_registry);
    let registry = Registry::start_in(&n1.netns, REGISTRY_ADDR);
    let image = registry.push_test_image("hivemind/test:1");
    n1.agent.cli_ok(&[
        "app",
        "deploy",
        "--image",
        &image,
        "--name",
        "web",
        "--replicas",
        "2",
        "--stop-timeout",
        "2",
    ]);
    n1.agent.cli_ok(&["volume", "create", "data"]);
    assert_eq!(running(&n1, "web"), 2);
    let before: BTreeSet<String> = n1
        .agent
        .cli_json(&["app", "containers", "--app", "web"])
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect();

    n1.agent.add_args(&["--cluster-init"]);
    n1.agent.restart();
    let health = n1.agent.cli_json(&["health"]);
    assert_eq!(health["store"]["backend"], "etcd", "{health}");
    assert_eq!(health["cluster"]["mode"], "cluster", "{health}");
    assert_eq!(health["cluster"]["etcd_role"], "voter", "{health}");
    let data = n1.agent.data_dir();
    assert!(
        !data.join("state.redb").exists(),
        "redb is no longer the store"
    );
    assert!(
        data.join("state.redb.pre-cluster").exists(),
        "kept as a backup"
    );
    assert!(data.join("cluster.json").exists());
    // The state moved: same app, same containers (adopted, not recreated), same volume.
    let apps = n1.agent.cli_json(&["app", "ls"]);
    assert_eq!(apps[0]["name"], "web", "{apps}");
    let after: BTreeSet<String> = n1
        .agent
        .cli_json(&["app", "containers", "--app", "web"])
        .as_array()
        .expect("containers")
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(after, before, "the running containers were kept");
    assert!(n1.agent.cli_ok(&["volume", "ls"]).contains("data"));
    let token = n1.token();
    assert!(token.starts_with("HM10"), "{token}");

    // Nodes 2 and 3 join through node 1 at the same time.
    let n2 = ClusterNode::start(&underlay, 2, &unique("n"), &[], &AgentOptions::default());
    let n3 = ClusterNode::start(&underlay, 3, &unique("n"), &[], &AgentOptions::default());
    let started = Instant::now();
    let outputs = std::thread::scope(|scope| {
        let joins: Vec<_> = [&n2, &n3]
            .iter()
            .map(|node| scope.spawn(|| join(node, &n1.ip, &token)))
            .collect();
        joins
            .into_iter()
            .map(|j| j.join().expect("join thread"))
            .collect::<Vec<_>>()
    });
    for (node, out) in [&n2, &n3].iter().zip(&outputs) {
        assert!(
            out.status.success(),
            "join of {} failed:\n{}{}\nagent log:\n{}\nnode 1 log:\n{}",
            node.name(),
            stdout(out),
            stderr(out),
            node.agent.log(),
            n1.agent.log()
        );
        assert!(stdout(out).contains("Joined cluster"), "{}", stdout(out));
    }
    eprintln!("two concurrent joins took {:?}", started.elapsed());

    // Every node sees three ready nodes, three voters, three distinct subnets.
    let names: BTreeSet<String> = [&n1, &n2, &n3]
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    for node in [&n1, &n2, &n3] {
        let nodes = node.nodes();
        let seen: BTreeSet<String> = nodes
            .iter()
            .filter_map(|n| n["name"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(seen, names, "{}: {nodes:?}", node.name());
        let subnets: BTreeSet<&str> = nodes.iter().filter_map(|n| n["subnet"].as_str()).collect();
        assert_eq!(subnets.len(), 3, "distinct subnets: {nodes:?}");
        for n in &nodes {
            assert_eq!(n["ready"], true, "{n}");
            assert_eq!(n["etcd_role"], "voter", "{n}");
            assert_eq!(n["state"], "member", "{n}");
            assert_eq!(n["local"], n["name"] == node.name(), "{n}");
        }
        let n1_entry = nodes
            .iter()
            .find(|n| n["name"] == n1.name())
            .expect("n1 listed");
        assert_eq!(n1_entry["containers"], 2, "{n1_entry}");
        assert_eq!(n1_entry["underlay_ip"], n1.ip.as_str(), "{n1_entry}");
        // The node's network uses the subnet the cluster gave it.
        let health = node.agent.cli_json(&["health"]);
        let mine = nodes
            .iter()
            .find(|n| n["name"] == node.name())
            .expect("itself");
        assert_eq!(health["dataplane"]["subnet"], mine["subnet"], "{health}");
        assert_eq!(health["nodes"].as_array().map(Vec::len), Some(3));
        // The table, for people.
        let table = node.agent.cli_ok(&["node", "ls"]);
        assert!(table.contains("(this node)"), "{table}");
    }
    // Shared state: node 3 sees what was deployed on node 1; everyone prints the same token.
    let apps = n3.agent.cli_json(&["app", "ls"]);
    assert_eq!(apps[0]["name"], "web", "{apps}");
    assert!(n3.agent.cli_ok(&["volume", "ls"]).contains("data"));
    assert_eq!(n3.token(), token);
    // Joined nodes run nothing until the scheduler assigns them slots; node 1 still runs both.
    assert_eq!(running(&n1, "web"), 2);
    assert_eq!(n2.containerd.containers("hivemind"), Vec::<String>::new());
    let etcd = EtcdView::of(&n1);
    assert_eq!(etcd.members().len(), 3);
    assert!(etcd.members().iter().all(|m| !m.is_learner));

    // A fourth node, joined through node 2 (any node admits): no etcd member, it uses the
    // three voters.
    let n4 = ClusterNode::start(&underlay, 4, &unique("n"), &[], &AgentOptions::default());
    let out = join(&n4, &n2.ip, &token);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        stdout(&out),
        stderr(&out),
        n4.agent.log()
    );
    let fourth = n1.node(n4.name()).expect("n4 listed");
    assert_eq!(fourth["ready"], true, "{fourth}");
    assert_eq!(fourth["etcd_role"], "", "{fourth}");
    assert!(
        n4.agent.etcd_pid().is_none(),
        "no member on the fourth node"
    );
    let health = n4.agent.cli_json(&["health"]);
    assert_eq!(health["store"]["backend"], "etcd", "{health}");
    assert_eq!(etcd.members().len(), 3, "still three members");
    assert!(n4.agent.cli_ok(&["volume", "ls"]).contains("data"));
    drop(n4);

    // The node endpoint: node 3 reads a container of node 1 through ClusterClient (mutual
    // TLS; the node is looked up in the registry); a caller without a certificate gets
    // nothing.
    let container = n1.agent.cli_json(&["app", "containers", "--app", "web"])[0]["id"]
        .as_str()
        .expect("a container id")
        .to_owned();
    let inside_n3 = NodeRuntime::new(&n3.netns);
    let (n3_tls, n1_name) = (n3.tls(), n1.name().to_owned());
    let info = inside_n3.run(async move {
        let store = Store::connect_etcd_tls(
            &["https://127.0.0.1:2379".to_owned()],
            &EtcdTls {
                ca_pem: n3_tls.ca_pem.clone(),
                cert_pem: n3_tls.cert_pem.clone(),
                key_pem: n3_tls.key_pem.clone(),
                domain: None,
            },
        )
        .await
        .expect("node 3's store");
        let nodes = ClusterNodes::new(store, Some(n3_tls));
        let channel = nodes.connect(&n1_name).await.expect("mutual TLS to node 1");
        ContainersClient::new(channel)
            .info(proto::ContainerRequest {
                container_id: container,
            })
            .await
            .expect("Containers.Info on node 1")
            .into_inner()
    });
    assert_eq!(info.node, n1.name());
    assert_eq!(info.state, "running");
    let ca_hash = token
        .strip_prefix("HM10")
        .and_then(|t| t.split_once("::"))
        .map(|(hash, _)| hash.to_owned())
        .expect("hash in token");
    let n1_address = n1.cluster_address();
    let refused = inside_n3.run(async move {
        let channel = client::connect_pinned(&n1_address, &ca_hash)
            .await
            .expect("TLS without a client certificate");
        ClusterClient::new(channel)
            .list_nodes(proto::ListNodesRequest {})
            .await
            .expect_err("no certificate, no service")
    });
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    drop(inside_n3);

    // Node 3's agent dies: it turns not ready within the lease TTL, and back when restarted.
    let mut n3 = n3;
    n3.agent.kill();
    let killed = Instant::now();
    n1.wait_ready(n3.name(), false, NOT_READY_WITHIN);
    eprintln!(
        "node 3 not ready {:?} after its agent died",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() >= Duration::from_secs(5),
        "not ready too early ({:?}): the lease TTL is 10 s",
        killed.elapsed()
    );
    n3.agent.start_again();
    n1.wait_ready(n3.name(), true, Duration::from_secs(15));

    // The etcd leader's node dies (agent and member): the others keep taking writes.
    let leader = etcd.leader().expect("a leader");
    drop(etcd);
    let mut nodes = vec![n1, n2, n3];
    let at = nodes
        .iter()
        .position(|n| n.name() == leader)
        .expect("the leader is one of the nodes");
    let mut down = nodes.remove(at);
    let survivor = &nodes[0];
    down.agent.kill();
    down.agent.kill_etcd();
    let killed = Instant::now();
    wait_for(
        "a write through a surviving node",
        Duration::from_secs(30),
        || {
            survivor
                .agent
                .cli(&["volume", "create", "after-leader"])
                .status
                .success()
                .then_some(())
        },
    );
    eprintln!(
        "a write succeeded {:?} after the leader died",
        killed.elapsed()
    );
    for node in &nodes {
        assert!(
            node.agent
                .cli_ok(&["volume", "ls"])
                .contains("after-leader")
        );
    }
    survivor.wait_ready(down.name(), false, NOT_READY_WITHIN);
    // It comes back: its member rejoins and catches up.
    down.agent.start_again();
    survivor.wait_ready(down.name(), true, Duration::from_secs(30));
    assert!(
        down.agent
            .cli_ok(&["volume", "ls"])
            .contains("after-leader")
    );
    drop(registry);
}

#[test]
fn cluster_bad_joins_change_nothing() {
    let underlay = Underlay::new();
    let n1 = ClusterNode::start(
        &underlay,
        1,
        &unique("n"),
        &["--cluster-init"],
        &AgentOptions::default(),
    );
    let token = n1.token();
    let etcd = EtcdView::of(&n1);
    // A node record whose name a joiner will try to take.
    let ghost = unique("ghost");
    etcd.put(
        &format!("/hivemind/nodes/{ghost}"),
        &format!(
            r#"{{"name":"{ghost}","underlay_ip":"192.0.2.99","subnet":null,"cluster_address":"","version":"0","joined_at_ms":1,"state":"member"}}"#
        ),
    );
    let before = snapshot(&etcd);
    assert_eq!(before.0.len(), 1, "one member");

    // The joiner: a namespace with its containerd; one agent at a time, each a different case.
    let ip = "192.0.2.12";
    let netns = underlay.host(ip);
    let containerd = Containerd::start();
    let agent = |name: &str, extra: &[&str]| {
        let mut options = AgentOptions {
            node_name: Some(name.to_owned()),
            ..AgentOptions::default()
        };
        options.extra_args = ["--node-ip", ip, "--underlay-iface", "eth0"]
            .iter()
            .chain(extra)
            .map(|a| (*a).to_owned())
            .collect();
        hivemind_tests::Agent::start(&netns, &containerd, &options)
    };
    let refuse =
        |agent: &hivemind_tests::Agent, args: &[&str], env: &[(&str, &str)], want: &str| {
            let out = agent.cli_env(args, env);
            let err = stderr(&out);
            assert!(
                !out.status.success(),
                "{args:?} must fail:\n{}",
                stdout(&out)
            );
            assert!(err.contains(want), "{args:?}: expected {want:?} in:\n{err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            assert_single(agent);
            assert_eq!(snapshot(&etcd), before, "{args:?} changed the cluster");
        };
    let (hash, secret) = token
        .strip_prefix("HM10")
        .and_then(|t| t.split_once("::"))
        .expect("token format");
    let wrong_secret = format!("HM10{hash}::{}", "0".repeat(secret.len()));
    let other_ca = format!("HM10{}::{secret}", "0".repeat(64));
    let host = n1.ip.as_str();

    let j = agent(&unique("j"), &[]);
    refuse(
        &j,
        &["join", "--host", host, "--token", &wrong_secret],
        &[],
        "secret is not this cluster's",
    );
    refuse(
        &j,
        &["join", "--host", host],
        &[("HIVEMIND_TOKEN", &wrong_secret)],
        "secret is not this cluster's",
    );
    refuse(
        &j,
        &["join", "--host", host, "--token", &other_ca],
        &[],
        "is not a node of the cluster this token is for",
    );
    refuse(
        &j,
        &["join", "--host", "127.0.0.1:3000", "--token", &token],
        &[],
        "is not a Hivemind node",
    );
    refuse(
        &j,
        &["join", "--host", &format!("{host}:1"), "--token", &token],
        &[],
        "cannot reach",
    );
    refuse(
        &j,
        &["join", "--host", host, "--token", "garbage"],
        &[],
        "not a Hivemind join token",
    );
    refuse(&j, &["join", "--host", host], &[], "hivemind cluster token");
    let token_file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(token_file.path(), &wrong_secret).expect("write token");
    refuse(
        &j,
        &[
            "join",
            "--host",
            host,
            "--token-file",
            &token_file.path().display().to_string(),
        ],
        &[],
        "secret is not this cluster's",
    );
    // A node with state of its own does not join (its state would be lost).
    j.cli_ok(&["volume", "create", "mine"]);
    let out = j.cli(&["join", "--host", host, "--token", &token]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("this node has 1 volume"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&etcd), before);
    drop(j);

    let j = agent(&ghost, &[]);
    refuse(
        &j,
        &["join", "--host", host, "--token", &token],
        &[],
        "is already in the cluster",
    );
    drop(j);

    let j = agent(&unique("j"), &["--cluster-cidr", "10.99.0.0/16"]);
    refuse(
        &j,
        &["join", "--host", host, "--token", &token],
        &[],
        "differs from the cluster's 10.244.0.0/16",
    );
    drop(j);

    // A failure after admission (the joiner's etcd member cannot start) is undone on both
    // sides: the member node 1 added is removed again, and so are the subnet and the name.
    let j = hivemind_tests::Agent::start(
        &netns,
        &containerd,
        &AgentOptions {
            node_name: Some(unique("j")),
            extra_args: ["--node-ip", ip, "--underlay-iface", "eth0"]
                .map(str::to_owned)
                .to_vec(),
            env: vec![("HIVEMIND_ETCD_BIN".into(), "/bin/false".into())],
            ..AgentOptions::default()
        },
    );
    refuse(
        &j,
        &["join", "--host", host, "--token", &token],
        &[],
        "starting the etcd member failed, so the join was undone on both sides",
    );
    drop(j);

    // After all that, a good join goes through: nothing was left half done.
    let name = unique("j");
    let j = agent(&name, &[]);
    let out = j.cli(&["join", "--host", host, "--token", &token]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        stdout(&out),
        stderr(&out),
        j.log()
    );
    let members = etcd.members();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().any(|m| m.name == name && !m.is_learner));
    assert!(Path::new(&j.data_dir()).join("cluster.json").exists());
    let nodes: Value = n1.agent.cli_json(&["node", "ls"]);
    assert!(
        nodes
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["name"] == name.as_str() && n["ready"] == true),
        "{nodes}"
    );
    // A member cannot join again.
    let out = j.cli(&["join", "--host", host, "--token", &token]);
    assert!(
        stderr(&out).contains("already in cluster"),
        "{}",
        stderr(&out)
    );
}
