//! The harness's fixtures work and leave nothing behind; the agent starts in a namespace,
//! answers health over gRPC and REST, and refuses bad configuration.

use std::{path::Path, process::Command, time::Duration};

use hivemind_tests::{
    Agent, AgentOptions, Containerd, Netns, Registry, netns_list,
    util::{hivemind_bin, mounts_under, pid_alive, run, stderr, stdout, wait_for},
    veth,
};

#[test]
fn namespaces_link_and_clean_up() {
    let (a_name, b_name);
    {
        let a = Netns::new("hmta");
        let b = Netns::new("hmtb");
        veth(&a, "192.0.2.1/24", &b, "192.0.2.2/24");
        a.check("ping", &["-c1", "-W2", "192.0.2.2"]);
        (a_name, b_name) = (a.name().to_owned(), b.name().to_owned());
        assert!(netns_list().contains(&a_name));
    }
    let left = netns_list();
    assert!(
        !left.contains(&a_name) && !left.contains(&b_name),
        "namespaces left: {left:?}"
    );
}

#[test]
fn private_containerd_runs_the_test_image_and_cleans_up() {
    let (root, pid, registry_pid);
    {
        let containerd = Containerd::start();
        let registry = Registry::start();
        let image = registry.push_test_image("hivemind/test:1");
        containerd.ctr_ok(&["-n", "fixture", "images", "pull", "--plain-http", &image]);
        let out = containerd.ctr_ok(&[
            "-n",
            "fixture",
            "run",
            "--rm",
            &image,
            "hello",
            "sh",
            "-c",
            "echo hello from $(cat /www/index.html)",
        ]);
        assert_eq!(out.trim(), "hello from hivemind test image");
        // Leave a running task behind to prove teardown handles it.
        containerd.ctr_ok(&[
            "-n", "fixture", "run", "-d", &image, "sleeper", "sleep", "1000",
        ]);
        (root, pid, registry_pid) = (
            containerd.root().to_owned(),
            containerd.pid(),
            registry.pid(),
        );
        assert!(
            !mounts_under(&root).is_empty(),
            "a running container has a rootfs mount"
        );
    }
    assert!(!pid_alive(pid), "containerd still running");
    assert!(!pid_alive(registry_pid), "registry still running");
    assert!(
        mounts_under(&root).is_empty(),
        "mounts left under {}",
        root.display()
    );
    assert!(!root.exists(), "{} left behind", root.display());
}

#[test]
fn agent_in_a_namespace_answers_health_and_cleans_up() {
    let (pid, pin_dir, data_dir);
    {
        let ns = Netns::new("hmtag");
        let containerd = Containerd::start();
        let agent = Agent::start(&ns, &containerd, &AgentOptions::default());

        let health = agent.cli_json(&["health"]);
        assert_eq!(health["node_name"], agent.node_name());
        assert_eq!(health["runtime"]["reachable"], true, "{health}");
        assert_eq!(health["store"]["ok"], true, "{health}");
        let programs = health["dataplane"]["programs"]
            .as_array()
            .expect("programs");
        assert_eq!(programs.len(), 5, "{health}");
        assert!(
            programs
                .iter()
                .all(|p| p["id"].as_u64().is_some_and(|id| id > 0)),
            "{health}"
        );

        // The table form names the runtime and the programs.
        let table = agent.cli_ok(&["health"]);
        assert!(
            table.contains("containerd 1.") || table.contains("containerd 2."),
            "{table}"
        );
        assert!(table.contains("hm_from_container"), "{table}");

        // REST, from inside the agent's namespace (the API listens on its loopback).
        let out = ns.check("curl", &["-sf", "http://127.0.0.1:3000/api/health"]);
        let rest: serde_json::Value = serde_json::from_str(&out).expect("JSON from /api/health");
        assert_eq!(rest["node_name"], agent.node_name());

        // The programs are really in the kernel, and maps are pinned.
        let id = programs[0]["id"].as_u64().expect("id").to_string();
        let shown =
            hivemind_tests::util::check(Command::new("bpftool").args(["prog", "show", "id", &id]));
        assert!(shown.contains("hm_"), "{shown}");
        assert!(agent.pin_dir().join("HM_COUNTERS").exists());

        (pid, pin_dir, data_dir) = (
            agent.pid().expect("running"),
            agent.pin_dir(),
            agent.data_dir(),
        );
    }
    assert!(!pid_alive(pid), "agent still running");
    assert!(!pin_dir.exists(), "pins left at {}", pin_dir.display());
    assert!(
        !data_dir.exists(),
        "data dir left at {}",
        data_dir.display()
    );
}

#[test]
fn agent_stops_gracefully_on_sigterm() {
    let ns = Netns::new("hmtsig");
    let containerd = Containerd::start();
    let mut agent = Agent::start(&ns, &containerd, &AgentOptions::default());
    let status = agent.stop().expect("was running");
    assert!(status.success(), "exit status {status}\n{}", agent.log());
    assert!(!agent.socket().exists(), "socket removed on shutdown");
    assert!(agent.log().contains("stopped"));
}

#[test]
fn runtime_down_is_reported_and_picked_up_when_it_returns() {
    let ns = Netns::new("hmtrt");
    let mut containerd = Containerd::start();
    let agent = Agent::start(&ns, &containerd, &AgentOptions::default());
    containerd.kill();

    let out = agent.cli(&["-o", "json", "health"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "degraded health exits 3: {}",
        stderr(&out)
    );
    let health: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(health["runtime"]["reachable"], false);
    assert!(
        health["runtime"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{health}"
    );

    containerd.restart();
    wait_for(
        "the agent to reconnect to containerd",
        Duration::from_secs(20),
        || (agent.cli(&["health"]).status.code() == Some(0)).then_some(()),
    );
}

#[test]
fn health_names_an_unreachable_agent() {
    let out = run(Command::new(hivemind_bin()).args([
        "--addr",
        "unix:/nonexistent/hivemind.sock",
        "health",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("cannot reach the Hivemind agent at unix:/nonexistent/hivemind.sock"),
        "{err}"
    );
}

/// Runs `hivemind agent ARGS` expecting exit 64 with `needle` in the message.
fn assert_bad_config(args: &[&str], needle: &str) {
    let data = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(hivemind_bin());
    command.arg("agent");
    if !args.contains(&"--data-dir") {
        command.arg("--data-dir").arg(data.path());
    }
    command
        .args([
            "--socket",
            "/nonexistent-dir-for-test/x.sock",
            "--node-name",
            "badcfg",
        ])
        .args(args);
    let out = run(&mut command);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
    assert!(
        !Path::new("/nonexistent-dir-for-test").exists(),
        "nothing created"
    );
}

#[test]
fn bad_configuration_exits_64_naming_the_problem() {
    assert_bad_config(&["--api-addr", "not-an-address"], "--api-addr");
    assert_bad_config(&["--cluster-cidr", "10.0.0.0/33"], "--cluster-cidr");
    assert_bad_config(&["--data-dir", "/proc/version"], "data dir /proc/version");
    assert_bad_config(&["--no-such-flag"], "--no-such-flag");

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "api_addr = \"127.0.0.1:3000\"\nnot_a_setting = 1\n").expect("write");
    assert_bad_config(
        &["--config", file.to_str().expect("utf-8")],
        "not_a_setting",
    );

    assert_bad_config(&["--config", "/nonexistent.toml"], "/nonexistent.toml");
}
