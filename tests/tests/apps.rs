//! Apps on the real containerd with images from the harness registry: every CLI command, the
//! reconcile loop, crashes of containers and of the agent, volumes, and bad input.

// Each test is one scenario that reads top to bottom.
#![allow(clippy::too_many_lines)]

use std::{process::Command, time::Duration};

use hivemind_tests::{
    SingleNode, apps,
    util::{hivemind_bin, stderr, stdout, wait_for},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn deploy(node: &SingleNode, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["--stop-timeout", "2"];
    args.extend_from_slice(extra);
    apps::deploy_ok(&node.agent, &node.image, name, &args)
}

fn containers(node: &SingleNode, app: &str) -> Vec<Value> {
    apps::containers(&node.agent, app)
}

fn running_ids(node: &SingleNode, app: &str) -> Vec<String> {
    let mut ids: Vec<String> = containers(node, app)
        .iter()
        .filter(|c| c["state"] == "running")
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Waits until `app` has exactly `n` containers, all running, and containerd agrees.
fn wait_running(node: &SingleNode, app: &str, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let ids = running_ids(node, app);
        let all = containers(node, app);
        let tasks = node.running_tasks();
        if ids.len() == n && all.len() == n && ids.iter().all(|id| tasks.contains(id)) {
            return ids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {n} running containers of {app}\nrecords: {all:#?}\ncontainerd tasks: {tasks:?}\nagent log:\n{}",
            node.agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Nothing of any app is left: no containers (containerd or records), namespaces or files.
fn assert_nothing_left(node: &SingleNode) {
    assert!(
        node.containerd_containers().is_empty(),
        "containers left: {:?}",
        node.containerd_containers()
    );
    let records = node.agent.cli_json(&["app", "containers"]);
    assert_eq!(records, Value::Array(Vec::new()), "records left");
    assert!(
        node.netns_entries().is_empty(),
        "namespaces left: {:?}",
        node.netns_entries()
    );
    let files: Vec<_> = std::fs::read_dir(node.agent.data_dir().join("containers"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(files.is_empty(), "container files left: {files:?}");
}

#[test]
fn every_command_through_its_lifecycle() {
    let node = SingleNode::start();
    let out = deploy(
        &node,
        "web",
        &[
            "--env",
            "MESSAGE=from-test",
            "--env",
            "DB_PASSWORD=hunter2",
            "--label",
            "tier=front",
        ],
    );
    assert!(
        out.starts_with("Deployed application web with container web-"),
        "{out}"
    );
    let first = wait_running(&node, "web", 1);
    assert!(out.contains(&first[0]), "{out} names {first:?}");

    // The guide's commands, as people read them.
    let table = node.agent.cli_ok(&["app", "containers"]);
    assert!(
        table.contains(&first[0]) && table.contains("running"),
        "{table}"
    );
    let apps = node.agent.cli_json(&["app", "ls"]);
    assert_eq!(apps[0]["name"], "web");
    assert_eq!(apps[0]["running"], 1);
    assert_eq!(apps[0]["status"], "running");

    let info = node
        .agent
        .cli_json(&["app", "container-info", "--container-id", &first[0]]);
    assert_eq!(info["state"], "running");
    assert!(
        info["image_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{info}"
    );
    assert!(
        info["env"]
            .as_array()
            .is_some_and(|env| env.iter().any(|e| e == "DB_PASSWORD=******")),
        "{info}"
    );
    assert!(
        !info.to_string().contains("hunter2"),
        "secret leaked: {info}"
    );
    assert!(
        info["usage"]["memory_bytes"]
            .as_u64()
            .is_some_and(|m| m > 0),
        "{info}"
    );
    assert!(
        info["history"].as_array().is_some_and(|h| h.len() >= 2),
        "{info}"
    );
    let human = node
        .agent
        .cli_ok(&["app", "container-info", "--container-id", &first[0]]);
    assert!(
        human.contains("History") && human.contains("Memory"),
        "{human}"
    );

    // The container is really containerd's, with the isolation we promise.
    let spec = node
        .containerd
        .ctr_ok(&["-n", "hivemind", "containers", "info", &first[0]]);
    assert!(spec.contains("\"noNewPrivileges\": true"), "{spec}");
    assert!(
        spec.contains("SCMP_ACT_ERRNO") && !spec.contains("CAP_SYS_ADMIN"),
        "{spec}"
    );

    let logs = wait_for("the container's greeting in its log", TIMEOUT, || {
        let logs = node
            .agent
            .cli_ok(&["app", "logs", "--container-id", &first[0]]);
        logs.contains("from-test").then_some(logs)
    });
    assert!(
        logs.contains(&format!("hivemind test image on {}", first[0])),
        "{logs}"
    );

    let out = node
        .agent
        .cli_ok(&["app", "scale", "--name", "web", "--replicas", "3"]);
    assert!(out.contains("from 1 to 3"), "{out}");
    let three = wait_running(&node, "web", 3);
    assert!(
        three.contains(&first[0]),
        "scaling up keeps the existing container"
    );

    let out = node.agent.cli_ok(&["app", "restart", "--name", "web"]);
    assert!(out.contains("3 replicas replaced"), "{out}");
    let restarted = wait_running(&node, "web", 3);
    assert!(
        restarted.iter().all(|id| !three.contains(id)),
        "every replica replaced: {three:?} -> {restarted:?}"
    );

    let out = node.agent.cli_ok(&["app", "rm", "--name", "web"]);
    assert!(out.contains("Removed web"), "{out}");
    assert_nothing_left(&node);
    assert_eq!(
        node.agent.cli_json(&["app", "ls"]),
        Value::Array(Vec::new())
    );
}

#[test]
fn scale_one_three_zero_two() {
    let node = SingleNode::start();
    deploy(&node, "api", &[]);
    wait_running(&node, "api", 1);
    for n in [3usize, 0, 2] {
        node.agent.cli_ok(&[
            "app",
            "scale",
            "--name",
            "api",
            "--replicas",
            &n.to_string(),
        ]);
        wait_running(&node, "api", n);
        assert_eq!(
            node.containerd_containers().len(),
            n,
            "containerd has exactly {n}"
        );
        assert_eq!(node.netns_entries().len(), n, "one namespace per container");
    }
    let apps = node.agent.cli_json(&["app", "ls"]);
    assert_eq!(apps[0]["replicas"], 2);
}

#[test]
fn a_container_killed_from_outside_is_restarted_and_recorded() {
    let node = SingleNode::start();
    deploy(&node, "svc", &[]);
    let ids = wait_running(&node, "svc", 1);
    node.containerd
        .ctr_ok(&["-n", "hivemind", "tasks", "kill", "-s", "SIGKILL", &ids[0]]);
    let info = wait_for("the restart to be recorded", TIMEOUT, || {
        let info = node
            .agent
            .cli_json(&["app", "container-info", "--container-id", &ids[0]]);
        (info["restart_count"] == 1 && info["state"] == "running").then_some(info)
    });
    let history = info["history"].as_array().expect("history");
    assert!(
        history
            .iter()
            .any(|h| h["state"] == "exited" && h["exit_code"] == 137),
        "the SIGKILL exit is in the history: {info}"
    );
    assert!(
        node.running_tasks().contains(&ids[0]),
        "restarted in place, same container"
    );
}

#[test]
fn a_crashing_container_backs_off_and_keeps_its_exit_codes() {
    let node = SingleNode::start();
    deploy(
        &node,
        "crash",
        &["--env", "EXIT_AFTER=0", "--env", "EXIT_CODE=3"],
    );
    let info = wait_for("two restarts", TIMEOUT, || {
        let list = containers(&node, "crash");
        let info = list.first()?.clone();
        (info["restart_count"].as_u64()? >= 2).then_some(info)
    });
    let exits = info["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["exit_code"] == 3)
        .count();
    assert!(exits >= 2, "{info}");
    assert_eq!(
        node.containerd_containers().len(),
        1,
        "restarts reuse the container"
    );
}

#[test]
fn agent_restart_readopts_without_duplicates() {
    let mut node = SingleNode::start();
    deploy(&node, "keep", &["--replicas", "2"]);
    let before = wait_running(&node, "keep", 2);
    node.agent.restart();
    let after = wait_running(&node, "keep", 2);
    assert_eq!(
        before, after,
        "the same containers keep running across an agent restart"
    );
    assert_eq!(node.containerd_containers().len(), 2);
}

#[test]
fn kill_9_during_scale_and_deploy_converges() {
    let mut node = SingleNode::start();
    deploy(&node, "big", &[]);
    wait_running(&node, "big", 1);

    // Scale in the background and kill the agent while it works.
    let mut scale = Command::new(hivemind_bin())
        .arg("--addr")
        .arg(format!("unix:{}", node.agent.socket().display()))
        .args(["app", "scale", "--name", "big", "--replicas", "8"])
        .spawn()
        .expect("start scale");
    std::thread::sleep(Duration::from_millis(400));
    node.agent.kill();
    let _ = scale.wait();
    node.agent.start_again();
    wait_running(&node, "big", 8);
    assert_eq!(
        node.containerd_containers().len(),
        8,
        "no duplicates, no orphans"
    );

    // A deploy of a new app interrupted by kill -9: afterwards it either runs or left nothing.
    let mut deploy_cmd = Command::new(hivemind_bin())
        .arg("--addr")
        .arg(format!("unix:{}", node.agent.socket().display()))
        .args([
            "app",
            "deploy",
            "--image",
            &node.image,
            "--name",
            "late",
            "--replicas",
            "3",
        ])
        .spawn()
        .expect("start deploy");
    std::thread::sleep(Duration::from_millis(300));
    node.agent.kill();
    let _ = deploy_cmd.wait();
    node.agent.start_again();
    let apps = node.agent.cli_json(&["app", "ls"]);
    let late_exists = apps
        .as_array()
        .expect("apps")
        .iter()
        .any(|a| a["name"] == "late");
    let expected = if late_exists { 3 } else { 0 };
    wait_for("the interrupted deploy to settle", TIMEOUT, || {
        (running_ids(&node, "late").len() == expected
            && containers(&node, "late").len() == expected)
            .then_some(())
    });
    wait_for(
        "containerd to hold exactly the wanted containers",
        TIMEOUT,
        || (node.containerd_containers().len() == 8 + expected).then_some(()),
    );
    assert_eq!(
        node.netns_entries().len(),
        8 + expected,
        "no orphan namespaces"
    );
}

#[test]
fn volume_data_survives_restart_and_redeploy() {
    let node = SingleNode::start();
    let out = node.agent.cli_ok(&["volume", "create", "data"]);
    assert!(out.contains("Created volume data"), "{out}");
    let host_file = node.agent.data_dir().join("volumes/data/_data/lines");
    deploy(
        &node,
        "writer",
        &["--volume", "data:/data", "--env", "APPEND=line"],
    );
    wait_running(&node, "writer", 1);
    let lines = |n: usize| {
        wait_for(&format!("{n} lines in the volume"), TIMEOUT, || {
            let text = std::fs::read_to_string(&host_file).unwrap_or_default();
            (text.lines().count() == n).then_some(())
        });
    };
    lines(1);
    node.agent.cli_ok(&["app", "restart", "--name", "writer"]);
    lines(2);

    let err = node.agent.cli(&["volume", "rm", "data"]);
    assert!(!err.status.success());
    assert!(
        stderr(&err).contains("in use by app writer"),
        "{}",
        stderr(&err)
    );

    node.agent.cli_ok(&["app", "rm", "--name", "writer"]);
    deploy(
        &node,
        "writer",
        &["--volume", "data:/data", "--env", "APPEND=line"],
    );
    lines(3);
    let listed = node.agent.cli_json(&["volume", "ls"]);
    assert_eq!(listed[0]["used_by"][0], "writer");
    assert!(listed[0]["size_bytes"].as_u64().is_some_and(|s| s > 0));

    node.agent.cli_ok(&["app", "rm", "--name", "writer"]);
    node.agent.cli_ok(&["volume", "rm", "data"]);
    assert!(!host_file.exists());
    assert_eq!(
        node.agent.cli_json(&["volume", "ls"]),
        Value::Array(Vec::new())
    );
}

#[test]
fn a_read_only_volume_is_read_only() {
    let node = SingleNode::start();
    node.agent.cli_ok(&["volume", "create", "conf"]);
    deploy(
        &node,
        "reader",
        &["--volume", "conf:/data:ro", "--env", "APPEND=x"],
    );
    let ids = wait_running(&node, "reader", 1);
    let logs = wait_for("the write error in the log", TIMEOUT, || {
        let logs = node
            .agent
            .cli_ok(&["app", "logs", "--container-id", &ids[0]]);
        logs.contains("Read-only file system").then_some(logs)
    });
    assert!(
        !node
            .agent
            .data_dir()
            .join("volumes/conf/_data/lines")
            .exists(),
        "{logs}"
    );
}

/// Runs a CLI command that must fail with `needle` in its one-line error.
fn refused(node: &SingleNode, args: &[&str], needle: &str) {
    let out = node.agent.cli(args);
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        stdout(&out)
    );
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_behind() {
    let node = SingleNode::start();
    let image = node.image.clone();
    let snapshots_before = node.containerd.snapshots("hivemind");
    let dead_registry_image = "127.0.0.1:5999/hivemind/test:1";
    let unknown_tag = image.replace(":1", ":nope");
    for (args, needle) in [
        (
            vec!["app", "deploy", "--image", &image, "--name", "Bad_Name"],
            "invalid app name",
        ),
        (
            vec!["app", "deploy", "--image", "UPPER/Case:1", "--name", "x"],
            "UPPER/Case",
        ),
        (vec!["app", "deploy", "--image", "", "--name", "x"], "image"),
        (
            vec!["app", "deploy", "--image", &unknown_tag, "--name", "x"],
            "nope",
        ),
        (
            vec![
                "app",
                "deploy",
                "--image",
                dead_registry_image,
                "--name",
                "x",
            ],
            "127.0.0.1:5999",
        ),
        (
            vec![
                "app",
                "deploy",
                "--image",
                &image,
                "--name",
                "x",
                "--volume",
                "missing:/data",
            ],
            "volume missing does not exist",
        ),
        (
            vec![
                "app",
                "deploy",
                "--image",
                &image,
                "--name",
                "x",
                "--replicas",
                "-1",
            ],
            "invalid replicas",
        ),
        (
            vec![
                "app",
                "deploy",
                "--image",
                &image,
                "--name",
                "x",
                "--replicas",
                "5000",
            ],
            "invalid replicas",
        ),
        (
            vec![
                "app", "deploy", "--image", &image, "--name", "x", "--port", "80",
            ],
            "invalid port",
        ),
        (
            vec![
                "app", "deploy", "--image", &image, "--name", "x", "--memory", "lots",
            ],
            "invalid memory",
        ),
        (
            vec![
                "app", "deploy", "--image", &image, "--name", "x", "--env", "NOVALUE",
            ],
            "invalid env",
        ),
        (
            vec!["app", "scale", "--name", "ghost", "--replicas", "2"],
            "no app named ghost",
        ),
        (
            vec!["app", "restart", "--name", "ghost"],
            "no app named ghost",
        ),
        (vec!["app", "rm", "--name", "ghost"], "no app named ghost"),
        (
            vec!["app", "container-info", "--container-id", "ghost-12345"],
            "no container ghost-12345",
        ),
        (vec!["volume", "rm", "ghost"], "no volume named ghost"),
        (vec!["volume", "create", "Bad"], "invalid volume name"),
    ] {
        refused(&node, &args, needle);
        assert_nothing_left(&node);
        assert_eq!(
            node.agent.cli_json(&["app", "ls"]),
            Value::Array(Vec::new()),
            "{args:?} left an app"
        );
        assert_eq!(
            node.containerd.snapshots("hivemind"),
            snapshots_before,
            "{args:?} left snapshots"
        );
    }

    // A duplicate name is refused, and the first app is untouched.
    deploy(&node, "dup", &[]);
    let ids = wait_running(&node, "dup", 1);
    refused(
        &node,
        &["app", "deploy", "--image", &image, "--name", "dup"],
        "already exists",
    );
    assert_eq!(wait_running(&node, "dup", 1), ids);
    refused(
        &node,
        &["app", "scale", "--name", "dup", "--replicas", "-3"],
        "invalid replicas",
    );
    assert_eq!(wait_running(&node, "dup", 1), ids);
}

#[test]
fn deploy_update_replaces_containers_with_the_new_settings() {
    let node = SingleNode::start();
    deploy(&node, "upd", &["--replicas", "2", "--env", "MESSAGE=v1"]);
    let v1 = wait_running(&node, "upd", 2);
    let out = deploy(&node, "upd", &["--update", "--env", "MESSAGE=v2"]);
    assert!(
        out.contains("Updated application upd (env ~MESSAGE)"),
        "{out}"
    );
    let v2 = wait_running(&node, "upd", 2);
    assert!(v2.iter().all(|id| !v1.contains(id)));
    let logs = node
        .agent
        .cli_ok(&["app", "logs", "--container-id", &v2[0]]);
    assert!(logs.contains("v2"), "{logs}");
    assert_eq!(
        node.agent.cli_json(&["app", "ls"])[0]["replicas"],
        2,
        "replicas kept on update"
    );
}

#[test]
fn containerd_down_fails_deploys_clearly_and_recovers() {
    let mut node = SingleNode::start();
    node.containerd.kill();
    refused(
        &node,
        &[
            "app",
            "deploy",
            "--image",
            &node.image.clone(),
            "--name",
            "later",
        ],
        "containerd",
    );
    assert_eq!(
        node.agent.cli_json(&["app", "ls"]),
        Value::Array(Vec::new())
    );
    node.containerd.restart();
    wait_for("containerd to be back", TIMEOUT, || {
        (node.agent.cli(&["health"]).status.code() == Some(0)).then_some(())
    });
    deploy(&node, "later", &[]);
    wait_running(&node, "later", 1);
}
