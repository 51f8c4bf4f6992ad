//! `hivemind app logs --name APP`: every replica's output interleaved line by line, each line
//! prefixed by its container id; `--tail` per replica; `-f` keeps streaming what the replicas
//! write after it started — for replicas on this node and on the other nodes of a cluster.

use std::time::{Duration, Instant};

use hivemind_tests::{
    AgentOptions, SingleNode,
    apps::{self, deploy_ok},
    cluster::{Underlay, form_three},
    util::{stderr, wait_for},
};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn app_logs_interleave_every_replica_with_its_id() {
    let node = SingleNode::start();
    let agent = &node.agent;
    deploy_ok(agent, &node.image, "web", &["--replicas", "3"]);
    let replicas = wait_for("3 running replicas", TIMEOUT, || {
        let all = apps::containers(agent, "web");
        (all.len() == 3 && all.iter().all(|c| c["state"] == "running")).then_some(all)
    });
    let ids: Vec<String> = replicas.iter().map(apps::id).collect();

    // Every replica's start line, prefixed by its own id.
    let all = agent.cli_ok(&["app", "logs", "--name", "web"]);
    for id in &ids {
        let line = all
            .lines()
            .find(|l| l.contains(&format!("hivemind test image on {id}")))
            .unwrap_or_else(|| panic!("no start line of {id} in:\n{all}"));
        assert!(line.starts_with(&format!("{id} ")), "{line}");
        assert!(line.contains(" | "), "{line}");
    }
    // --tail 1: one line per replica.
    let tail = agent.cli_ok(&["app", "logs", "--name", "web", "--tail", "1"]);
    assert_eq!(tail.lines().count(), 3, "{tail}");

    // -f: a request served after the stream started shows up, from the replica that served it.
    let (mut follow, rx) = agent.cli_lines(&["app", "logs", "--name", "web", "-f", "--tail", "0"]);
    let target = &replicas[1];
    let ip = apps::ip(target);
    let id = apps::id(target);
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    let found = loop {
        let _ = node
            .netns
            .run("curl", &["-s", "-o", "/dev/null", &format!("http://{ip}/")]);
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            if line.starts_with(&format!("{id} ")) {
                break true;
            }
            seen.push(line);
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(found, "no line from {id} after a request; saw {seen:?}");

    // Neither or both: a clear usage error.
    let out = agent.cli(&["app", "logs"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--container-id"), "{}", stderr(&out));
    let out = agent.cli(&["app", "logs", "--name", "nope"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
}

#[test]
fn app_logs_gather_replicas_from_every_node_of_a_cluster() {
    const REGISTRY: &str = "192.0.2.11:5000";
    let underlay = Underlay::new();
    let options = AgentOptions {
        insecure_registries: vec![REGISTRY.to_owned()],
        ..AgentOptions::default()
    };
    let (n1, _registry, image, n2, n3) = form_three(&underlay, &options, REGISTRY);
    deploy_ok(&n1.agent, &image, "web", &["--replicas", "3"]);
    let replicas = wait_for("one running replica per node", TIMEOUT, || {
        let all = apps::containers(&n1.agent, "web");
        let nodes: std::collections::BTreeSet<String> = all
            .iter()
            .map(|c| c["node"].as_str().unwrap_or_default().to_owned())
            .collect();
        (all.len() == 3 && nodes.len() == 3 && all.iter().all(|c| c["state"] == "running"))
            .then_some(all)
    });

    // From node 2: every replica's start line, wherever it runs, prefixed by its id.
    let all = n2.agent.cli_ok(&["app", "logs", "--name", "web"]);
    for replica in &replicas {
        let id = apps::id(replica);
        assert!(
            all.lines()
                .any(|l| l.starts_with(&format!("{id} ")) && l.contains("hivemind test image on")),
            "no start line of {id} (on {}) in:\n{all}",
            replica["node"]
        );
    }

    // From node 3, -f: a request to the replica on node 1 shows up, with that replica's id.
    let on_n1 = replicas
        .iter()
        .find(|c| c["node"] == n1.name())
        .expect("a replica on node 1");
    let (id, ip) = (apps::id(on_n1), apps::ip(on_n1));
    let (mut child, lines) = n3
        .agent
        .cli_lines(&["app", "logs", "-f", "--name", "web", "--tail", "0"]);
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    let found = loop {
        let _ = n1
            .netns
            .run("curl", &["-s", "-o", "/dev/null", &format!("http://{ip}/")]);
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
            if line.starts_with(&format!("{id} ")) {
                break true;
            }
            seen.push(line);
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        found,
        "no line from {id} on node 1 seen from node 3; saw {seen:?}"
    );
}
