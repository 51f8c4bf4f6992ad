//! `hivemind app logs --name APP`: every replica's output interleaved line by line, each line
//! prefixed by its container id; `--tail` per replica; `-f` keeps streaming what the replicas
//! write after it started; `--timestamps` and `--since` from the records the log writer keeps —
//! for replicas on this node and on the other nodes of a cluster.

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

    // What is on disk is a record per line, in the CRI log format log shippers read.
    let info = agent.cli_json(&["app", "container-info", "--container-id", &id]);
    let log_path = info["log_path"].as_str().expect("log_path");
    let on_disk = std::fs::read_to_string(log_path).expect("the container's log file");
    let first = on_disk.lines().next().unwrap_or_default();
    let fields: Vec<&str> = first.splitn(4, ' ').collect();
    assert!(
        fields.len() == 4
            && chrono::DateTime::parse_from_rfc3339(fields[0]).is_ok()
            && ["stdout", "stderr"].contains(&fields[1])
            && fields[2] == "F",
        "not a CRI log record: {first:?}"
    );

    // --timestamps: each line, after its id, starts with the time it was written.
    let stamped = agent.cli_ok(&["app", "logs", "--name", "web", "--timestamps"]);
    let mut newest = None;
    for line in stamped.lines() {
        let (_, rest) = line.split_once(" | ").unwrap_or_else(|| panic!("{line}"));
        let (time, _) = rest.split_once(' ').unwrap_or((rest, ""));
        let time = chrono::DateTime::parse_from_rfc3339(time)
            .unwrap_or_else(|err| panic!("no timestamp ({err}) in {line:?}"));
        newest = newest.max(Some(time));
    }
    // --since: a time after every line so far shows only what came later.
    let since = newest.expect("stamped lines") + chrono::TimeDelta::seconds(1);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = node
        .netns
        .run("curl", &["-s", "-o", "/dev/null", &format!("http://{ip}/")]);
    let since_arg = since.to_rfc3339();
    let later = wait_for("the request's line after --since", TIMEOUT, || {
        let out = agent.cli_ok(&["app", "logs", "--name", "web", "--since", &since_arg]);
        out.lines()
            .any(|l| l.starts_with(&format!("{id} ")) && l.contains("response:"))
            .then_some(out)
    });
    assert!(
        !later.contains("hivemind test image on"),
        "--since {since_arg} showed older lines:\n{later}"
    );
    let out = agent.cli(&["app", "logs", "--name", "web", "--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("\"yesterday\""), "{}", stderr(&out));

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

    // The flags reach the nodes that hold the logs: --timestamps, and --since from the future
    // shows nothing.
    let stamped = n2.agent.cli_ok(&[
        "app",
        "logs",
        "--name",
        "web",
        "--timestamps",
        "--tail",
        "1",
    ]);
    assert_eq!(stamped.lines().count(), 3, "{stamped}");
    for line in stamped.lines() {
        let (_, rest) = line.split_once(" | ").unwrap_or_else(|| panic!("{line}"));
        let time = rest.split(' ').next().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "no timestamp in {line:?}"
        );
    }
    let future = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let none = n2
        .agent
        .cli_ok(&["app", "logs", "--name", "web", "--since", &future]);
    assert!(none.trim().is_empty(), "{none}");

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
