//! `hivemind app update` (and `app deploy --update`, `PATCH /api/apps/{name}`): only what is
//! given changes. Checked through containerd's own view — the OCI spec of each new container
//! (`ctr containers info`) — that untouched settings survived and changed ones changed; that
//! in-place changes (labels, replicas, ports) keep the containers; and that a bad update
//! changes nothing while the old replicas keep serving.

use std::{collections::BTreeSet, time::Duration};

use hivemind_tests::{
    SingleNode,
    apps::{self, CONTAINERD_NS, ID_CHECK},
    http::Client,
    util::{stderr, stdout},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);

/// The app's containers once `count` replicas of the current generation are healthy.
fn settled(node: &SingleNode, count: usize) -> Vec<Value> {
    apps::wait_healthy(&node.agent, "api", count, TIMEOUT)
}

fn ids(containers: &[Value]) -> BTreeSet<String> {
    containers.iter().map(apps::id).collect()
}

/// `KEY=VALUE` of a container's process, from containerd.
fn env_of(node: &SingleNode, id: &str) -> BTreeSet<String> {
    node.containerd.oci_spec(CONTAINERD_NS, id)["process"]["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn has_mount(node: &SingleNode, id: &str, destination: &str) -> bool {
    node.containerd.oci_spec(CONTAINERD_NS, id)["mounts"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["destination"] == destination))
}

fn memory_limit(node: &SingleNode, id: &str) -> Value {
    node.containerd.oci_spec(CONTAINERD_NS, id)["linux"]["resources"]["memory"]["limit"].clone()
}

fn inspect(node: &SingleNode) -> Value {
    node.agent.cli_json(&["app", "inspect", "api"])
}

fn update(node: &SingleNode, args: &[&str]) -> String {
    let mut all = vec!["app", "update", "api"];
    all.extend_from_slice(args);
    node.agent.cli_ok(&all)
}

#[test]
fn updates_change_only_what_is_given() {
    let node = SingleNode::start();
    let v2 = node.registry.push_test_image("hivemind/test:2");
    node.agent.cli_ok(&["volume", "create", "data"]);
    let mut deploy = vec![
        "--replicas",
        "2",
        "--env",
        "FOO=bar",
        "--env",
        "DB_PASSWORD=hunter2",
        "--label",
        "tier=backend",
        "--port",
        "8080:80",
        "--volume",
        "data:/data",
        "--memory",
        "64m",
        "--parallel",
        "2",
    ];
    deploy.extend_from_slice(&ID_CHECK);
    apps::deploy_ok(&node.agent, &node.image, "api", &deploy);
    let first = settled(&node, 2);

    // A new image: every other setting survives in the new containers.
    let said = update(&node, &["--image", &v2, "--parallel", "2"]);
    assert!(said.contains("image "), "{said}");
    let second = settled(&node, 2);
    assert!(ids(&first).is_disjoint(&ids(&second)), "replaced");
    for c in &second {
        let id = apps::id(c);
        assert_eq!(c["image"], v2.as_str());
        let env = env_of(&node, &id);
        assert!(
            env.contains("FOO=bar") && env.contains("DB_PASSWORD=hunter2"),
            "{env:?}"
        );
        assert!(has_mount(&node, &id, "/data"));
        assert_eq!(memory_limit(&node, &id), 64 << 20);
    }
    let spec = inspect(&node);
    assert_eq!(spec["labels"]["tier"], "backend", "{spec}");
    assert_eq!(spec["ports"], serde_json::json!(["8080:80/tcp"]));
    assert!(
        spec["env"]
            .as_array()
            .is_some_and(|e| e.iter().any(|v| v == "DB_PASSWORD=******")),
        "masked: {spec}"
    );
    assert!(!stdout(&node.agent.cli(&["app", "inspect", "api"])).contains("hunter2"));

    // Env add and remove: the rest of the env stays.
    update(
        &node,
        &["--env-add", "NEW=1", "--env-rm", "FOO", "--parallel", "2"],
    );
    let third = settled(&node, 2);
    for c in &third {
        let env = env_of(&node, &apps::id(c));
        assert!(
            env.contains("NEW=1") && env.contains("DB_PASSWORD=hunter2"),
            "{env:?}"
        );
        assert!(!env.iter().any(|e| e.starts_with("FOO=")), "{env:?}");
    }

    // In place: labels and replicas keep the running containers.
    let said = update(&node, &["--label-add", "team=core", "--replicas", "3"]);
    assert!(
        said.contains("Updated application api: replicas 2 -> 3, labels +team"),
        "{said}"
    );
    let fourth = settled(&node, 3);
    assert!(
        ids(&third).is_subset(&ids(&fourth)),
        "kept: {third:?} {fourth:?}"
    );
    let spec = inspect(&node);
    assert_eq!(spec["labels"]["tier"], "backend");
    assert_eq!(spec["labels"]["team"], "core");

    // The same again changes nothing.
    let said = update(&node, &["--env-add", "NEW=1"]);
    assert!(said.contains("unchanged"), "{said}");

    bad_updates_change_nothing(&node, &ids(&fourth));

    // `app deploy --update` is the same: what it gives is added, the rest kept.
    apps::deploy_ok(
        &node.agent,
        &v2,
        "api",
        &["--update", "--env", "LATE=yes", "--parallel", "3"],
    );
    let fifth = settled(&node, 3);
    let env = env_of(&node, &apps::id(&fifth[0]));
    assert!(
        env.contains("LATE=yes") && env.contains("NEW=1") && env.contains("DB_PASSWORD=hunter2"),
        "{env:?}"
    );
    assert!(has_mount(&node, &apps::id(&fifth[0]), "/data"));

    rest_patch_merges(&node);
}

/// Bad updates: one line, nothing changed, the replicas (`running`) keep serving.
fn bad_updates_change_nothing(node: &SingleNode, running: &BTreeSet<String>) {
    let before = inspect(node);
    for (args, needle) in [
        (
            vec!["--image", "127.0.0.1:5000/hivemind/nope:1"],
            "not found",
        ),
        (vec!["--port-add", "99999:80"], "port"),
        (vec!["--port-rm", "7070"], "does not publish port 7070"),
        (vec!["--health-interval", "nope"], "health-interval"),
    ] {
        let mut all = vec!["app", "update", "api"];
        all.extend_from_slice(&args);
        let out = node.agent.cli(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert_eq!(inspect(node), before, "{args:?} changed the app");
        assert_eq!(&ids(&settled(node, 3)), running, "{args:?}");
    }
}

/// REST: a merge patch (null removes a key), the spec document and its YAML form.
fn rest_patch_merges(node: &SingleNode) {
    let api = Client::loopback(&node.netns);
    let reply = api.request(
        "PATCH",
        "/api/apps/api",
        &[
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"env": {"LATE": null}, "labels": {"team": null}, "replicas": 2}"#,
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let spec = api.get_json("/api/apps/api/spec");
    assert_eq!(spec["replicas"], 2, "{spec}");
    assert!(spec["labels"].get("team").is_none(), "{spec}");
    assert!(
        !spec["env"].as_array().is_some_and(|e| e
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.starts_with("LATE=")))),
        "{spec}"
    );
    let bad = api.request(
        "PATCH",
        "/api/apps/api",
        &[
            "-H",
            "Content-Type: application/json",
            "--data",
            r#"{"replicaz": 2}"#,
        ],
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    settled(node, 2);

    // The spec as YAML too.
    let yaml = node.agent.cli_ok(&["-o", "yaml", "app", "inspect", "api"]);
    assert!(
        yaml.contains("name: api") && yaml.contains("replicas: 2"),
        "{yaml}"
    );
}
