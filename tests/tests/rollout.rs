//! Rollouts on a real node: `app restart` and `app deploy --update` replace replicas while a
//! client container keeps sending HTTP requests to them (zero failures), `--parallel`, a failing update
//! rolled back with the old replicas untouched, a second rollout refused, and an agent restart
//! mid-rollout finishing it.

use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use hivemind_tests::{
    SingleNode,
    apps::{self, LoadClient},
    util::{hivemind_bin, stderr, stdout, wait_for},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);

/// A quick HTTP check, so a rollout step takes a couple of seconds.
const HEALTH: &[&str] = &[
    "--health-http",
    "80/",
    "--health-interval",
    "1s",
    "--health-timeout",
    "500ms",
    "--health-retries",
    "2",
];

fn deploy(node: &SingleNode, name: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--stop-timeout", "2"];
    args.extend_from_slice(extra);
    apps::deploy(&node.agent, &node.image, name, &args)
}

fn deploy_ok(node: &SingleNode, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["--stop-timeout", "2"];
    args.extend_from_slice(extra);
    apps::deploy_ok(&node.agent, &node.image, name, &args)
}

fn containers(node: &SingleNode, app: &str) -> Vec<Value> {
    apps::containers(&node.agent, app)
}

fn app(node: &SingleNode, name: &str) -> Value {
    apps::app_info(&node.agent, name)
}

/// Ids of `n` running, healthy replicas (waits for them), sorted.
fn wait_healthy(node: &SingleNode, name: &str, n: usize) -> BTreeSet<String> {
    apps::wait_healthy(&node.agent, name, n, TIMEOUT)
        .iter()
        .map(apps::id)
        .collect()
}

/// `hivemind ARGS` in the background (its output piped).
fn spawn_cli(node: &SingleNode, args: &[&str]) -> Child {
    Command::new(hivemind_bin())
        .arg("--addr")
        .arg(format!("unix:{}", node.agent.socket().display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hivemind")
}

fn finish(child: Child) -> std::process::Output {
    child.wait_with_output().expect("wait for hivemind")
}

/// A client container ([`LoadClient`]) sending `GET /` to the replicas it is pointed at.
fn start_client(node: &SingleNode) -> LoadClient {
    deploy_ok(node, "client", &[]);
    let client = apps::wait_running(&node.agent, "client", TIMEOUT);
    LoadClient::start(&node.containerd, &apps::id(&client))
}

/// Points the client at `app`'s running, healthy replicas (as the API lists them now).
fn follow(node: &SingleNode, client: &mut LoadClient, app: &str) {
    let mut ips: Vec<String> = containers(node, app)
        .iter()
        .filter(|c| c["state"] == "running" && c["health"] == "healthy")
        .map(apps::ip)
        .collect();
    ips.sort();
    client.target(&node.containerd, &ips);
}

/// Runs `args` (a rollout) in the background while `client` follows `app`'s healthy replicas;
/// then keeps the client going a moment. Returns the command's output.
fn under_load(
    node: &SingleNode,
    client: &mut LoadClient,
    app: &str,
    args: &[&str],
) -> std::process::Output {
    let mut rollout = spawn_cli(node, args);
    let deadline = Instant::now() + Duration::from_secs(180);
    while rollout.try_wait().expect("poll the rollout").is_none() {
        follow(node, client, app);
        assert!(Instant::now() < deadline, "the rollout did not finish");
        sleep(Duration::from_millis(100));
    }
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        follow(node, client, app);
        sleep(Duration::from_millis(100));
    }
    finish(rollout)
}

#[test]
fn restart_under_load_drops_no_request_and_replaces_every_replica() {
    let node = SingleNode::start();
    let mut args = vec!["--replicas", "3"];
    args.extend_from_slice(HEALTH);
    deploy_ok(&node, "web", &args);
    let before = wait_healthy(&node, "web", 3);
    let mut client = start_client(&node);
    follow(&node, &mut client, "web");

    let started = Instant::now();
    let out = under_load(
        &node,
        &mut client,
        "web",
        &["app", "restart", "--name", "web"],
    );
    let took = started.elapsed();
    let (ok, failed, log) = client.stop(&node.containerd);
    println!("restart of 3 replicas: {took:?} (plus 2 s after), {ok} requests, {failed} failed");
    let (said, progress) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "restart failed: {said}\n{progress}");
    assert!(
        said.contains("Restarted web: 3 replicas replaced"),
        "{said}"
    );
    assert_eq!(failed, 0, "failed requests during the restart:\n{log}");
    assert!(ok >= 30, "the client kept requesting: {ok} requests\n{log}");

    let after = wait_healthy(&node, "web", 3);
    assert!(
        after.is_disjoint(&before),
        "every replica replaced: {before:?} -> {after:?}"
    );
    // One at a time: each new replica is healthy before the next one starts.
    let lines: Vec<&str> = progress.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the progress:\n{progress}"))
    };
    let first_healthy = lines
        .iter()
        .position(|l| l.contains("is healthy; stopping"))
        .unwrap_or_else(|| panic!("no replacement in the progress:\n{progress}"));
    assert!(
        at("replica 1: started") > first_healthy,
        "replica 1 started only after replica 0 was healthy:\n{progress}"
    );
    assert!(
        progress.contains("rollout complete: 3 replicas replaced"),
        "{progress}"
    );
    assert_eq!(app(&node, "web")["rollout"], "restart done");
}

#[test]
fn parallel_two_replaces_two_at_a_time_under_load() {
    let node = SingleNode::start();
    let mut args = vec!["--replicas", "4"];
    // Slow to become healthy (~5 s), so two replacements visibly overlap.
    args.extend_from_slice(SLOW_HEALTH);
    deploy_ok(&node, "web", &args);
    let before = wait_healthy(&node, "web", 4);
    let mut client = start_client(&node);
    follow(&node, &mut client, "web");

    let out = under_load(
        &node,
        &mut client,
        "web",
        &["app", "restart", "--name", "web", "--parallel", "2"],
    );
    let (ok, failed, log) = client.stop(&node.containerd);
    let progress = stderr(&out);
    assert!(out.status.success(), "{}\n{progress}", stdout(&out));
    assert_eq!(failed, 0, "failed requests:\n{log}");
    assert!(ok > 0);
    let lines: Vec<&str> = progress.lines().collect();
    let first_healthy = lines
        .iter()
        .position(|l| l.contains("is healthy; stopping"))
        .unwrap_or_else(|| panic!("no healthy replica in the progress:\n{progress}"));
    let started_before = lines[..first_healthy]
        .iter()
        .filter(|l| l.contains(": started "))
        .count();
    assert_eq!(
        started_before, 2,
        "two replicas replaced at once:\n{progress}"
    );
    let after = wait_healthy(&node, "web", 4);
    assert!(after.is_disjoint(&before), "{before:?} -> {after:?}");
}

#[test]
fn deploy_update_rolls_out_a_new_tag_and_env() {
    let node = SingleNode::start();
    let mut args = vec!["--replicas", "2", "--env", "MESSAGE=v1"];
    args.extend_from_slice(HEALTH);
    deploy_ok(&node, "web", &args);
    let before = wait_healthy(&node, "web", 2);
    let v2 = node.registry.push_test_image("hivemind/test:2");
    let mut client = start_client(&node);
    follow(&node, &mut client, "web");

    let mut update = vec![
        "app",
        "deploy",
        "--image",
        &v2,
        "--name",
        "web",
        "--update",
        "--stop-timeout",
        "2",
        "--env",
        "MESSAGE=v2",
    ];
    update.extend_from_slice(HEALTH);
    let out = under_load(&node, &mut client, "web", &update);
    let (_, failed, log) = client.stop(&node.containerd);
    let said = stdout(&out);
    assert!(out.status.success(), "{said}\n{}", stderr(&out));
    assert!(said.contains("Updated application web"), "{said}");
    assert!(
        stderr(&out).contains("update of web: replacing 2 replicas"),
        "{}",
        stderr(&out)
    );
    assert_eq!(failed, 0, "failed requests during the update:\n{log}");

    let after = wait_healthy(&node, "web", 2);
    assert!(after.is_disjoint(&before), "{before:?} -> {after:?}");
    let web = app(&node, "web");
    assert!(
        web["image"].as_str().is_some_and(|i| i.ends_with(":2")),
        "{web}"
    );
    assert_eq!(web["generation"], 2);
    for id in &after {
        let info = node
            .agent
            .cli_json(&["app", "container-info", "--container-id", id]);
        assert!(
            info["image"].as_str().is_some_and(|i| i.ends_with(":2")),
            "{info}"
        );
        let logs = node.agent.cli_ok(&["app", "logs", "--container-id", id]);
        assert!(logs.contains("v2"), "{logs}");
    }
}

#[test]
fn an_update_whose_replicas_fail_their_check_is_rolled_back() {
    let node = SingleNode::start();
    let mut args = vec!["--replicas", "3", "--env", "MESSAGE=v1"];
    args.extend_from_slice(HEALTH);
    deploy_ok(&node, "web", &args);
    let before = wait_healthy(&node, "web", 3);
    let spec_before = app(&node, "web");

    // The new spec checks a page that does not exist: its replicas never become healthy.
    let started = Instant::now();
    let out = deploy(
        &node,
        "web",
        &[
            "--update",
            "--replicas",
            "3",
            "--env",
            "MESSAGE=v2",
            "--health-http",
            "80/missing",
            "--health-interval",
            "1s",
            "--health-timeout",
            "500ms",
            "--health-retries",
            "2",
        ],
    );
    let message = stderr(&out);
    assert!(
        !out.status.success(),
        "the update must fail: {}",
        stdout(&out)
    );
    assert!(
        message.contains("update of web failed and was rolled back"),
        "{message}"
    );
    assert!(
        message.contains("failed its health check (http 80/missing)") && message.contains("404"),
        "the failing check's output: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    // The old replicas never stopped, the new ones are gone, the old spec is back.
    let ids: BTreeSet<String> = containers(&node, "web")
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, before, "the old replicas untouched, nothing else");
    for c in containers(&node, "web") {
        assert_eq!(c["restart_count"], 0, "{c}");
        assert_eq!(c["health"], "healthy", "{c}");
    }
    let restored = app(&node, "web");
    for key in ["image", "generation", "env", "health_check", "replicas"] {
        assert_eq!(restored[key], spec_before[key], "{key} restored");
    }
    assert!(
        restored["rollout"]
            .as_str()
            .is_some_and(|r| r.starts_with("rolled back: replica")),
        "{restored}"
    );

    // The app still rolls fine afterwards (the failed generation's number is not reused
    // by anything left behind).
    let out = node.agent.cli_ok(&["app", "restart", "--name", "web"]);
    assert!(out.contains("3 replicas replaced"), "{out}");
    let after = wait_healthy(&node, "web", 3);
    assert!(after.is_disjoint(&before));
}

/// A check that fails once (taking 3 s) and then passes: each replacement takes ~5 s.
const SLOW_HEALTH: &[&str] = &[
    "--health-cmd",
    "test -f /tmp/ok || { sleep 3; touch /tmp/ok; false; }",
    "--health-interval",
    "5s",
    "--health-timeout",
    "4s",
    "--health-start-period",
    "20s",
];

fn wait_rollout(node: &SingleNode, name: &str, what: &str) -> Value {
    wait_for(&format!("{name}'s rollout: {what}"), TIMEOUT, || {
        let app = app(node, name);
        app["rollout"]
            .as_str()
            .is_some_and(|r| r.contains(what))
            .then_some(app)
    })
}

#[test]
fn a_second_rollout_or_a_scale_during_one_is_refused() {
    let node = SingleNode::start();
    let mut args = vec!["--replicas", "2"];
    args.extend_from_slice(SLOW_HEALTH);
    deploy_ok(&node, "web", &args);
    wait_healthy(&node, "web", 2);

    let first = spawn_cli(&node, &["app", "restart", "--name", "web"]);
    wait_rollout(&node, "web", "restart in progress");
    for args in [
        vec!["app", "restart", "--name", "web"],
        vec!["app", "scale", "--name", "web", "--replicas", "3"],
    ] {
        let out = node.agent.cli(&args);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(
            stderr(&out).contains("app web has a rollout in progress"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let mut update = vec!["--update"];
    update.extend_from_slice(SLOW_HEALTH);
    let out = deploy(&node, "web", &update);
    assert!(
        stderr(&out).contains("app web has a rollout in progress"),
        "{}",
        stderr(&out)
    );

    let out = finish(first);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(app(&node, "web")["generation"], 2, "only one rollout ran");
    // Once it is done, scaling works again.
    node.agent
        .cli_ok(&["app", "scale", "--name", "web", "--replicas", "1"]);
}

#[test]
fn an_agent_restart_mid_rollout_finishes_it() {
    let mut node = SingleNode::start();
    let mut args = vec!["--replicas", "3"];
    args.extend_from_slice(SLOW_HEALTH);
    deploy_ok(&node, "web", &args);
    let before = wait_healthy(&node, "web", 3);

    let restart = spawn_cli(&node, &["app", "restart", "--name", "web"]);
    wait_rollout(&node, "web", "1/3 replicas replaced");
    node.agent.restart();
    let _ = finish(restart); // its connection went with the agent

    let web = wait_rollout(&node, "web", "restart done");
    assert_eq!(web["generation"], 2, "{web}");
    let after = wait_healthy(&node, "web", 3);
    assert!(after.is_disjoint(&before), "{before:?} -> {after:?}");
}

#[test]
fn bad_rollout_settings_are_refused() {
    let node = SingleNode::start();
    deploy_ok(&node, "web", &[]);
    let gen_before = app(&node, "web")["generation"].clone();
    for (args, needle) in [
        (
            vec![
                "app",
                "restart",
                "--name",
                "web",
                "--rollout-timeout",
                "forever",
            ],
            "invalid rollout timeout",
        ),
        (
            vec!["app", "restart", "--name", "web", "--rollout-timeout", "2h"],
            "expected 1s to 1h",
        ),
        (
            vec!["app", "restart", "--name", "web", "--parallel", "0"],
            "--parallel",
        ),
        (
            vec!["app", "restart", "--name", "nope"],
            "no app named nope",
        ),
    ] {
        let out = node.agent.cli(&args);
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(
        app(&node, "web")["generation"],
        gen_before,
        "nothing changed"
    );
}

#[test]
fn rest_restart_with_parallel_and_a_rolled_back_update() {
    let node = SingleNode::start();
    let mut args = vec!["--replicas", "2"];
    args.extend_from_slice(HEALTH);
    deploy_ok(&node, "web", &args);
    let before = wait_healthy(&node, "web", 2);
    let api = hivemind_tests::http::Client::loopback(&node.netns);

    let bad = api.request("POST", "/api/apps/web/restart?rollout_timeout=soon", &[]);
    assert!(bad.expect_error(400).contains("invalid rollout timeout"));

    let restarted = api.request("POST", "/api/apps/web/restart?parallel=2", &[]);
    assert_eq!(restarted.status, 200, "{}", restarted.body);
    assert!(
        restarted.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 replicas replaced")),
        "{}",
        restarted.body
    );
    let after = wait_healthy(&node, "web", 2);
    assert!(after.is_disjoint(&before));
    assert_eq!(api.get_json("/api/apps/web")["rollout"], "restart done");

    let body = serde_json::json!({
        "image": node.image,
        "name": "web",
        "update": true,
        "health_http": "80/missing",
        "health_interval": "1s",
        "health_timeout": "500ms",
        "health_retries": 2,
        "parallel": 2,
        "rollout_timeout": "30s",
    });
    let failed = api.post_json("/api/deploy", &body.to_string());
    let error = failed.expect_error(409);
    assert!(
        error.contains("update of web failed and was rolled back"),
        "{error}"
    );
    assert!(error.contains("404"), "{error}");
    assert_eq!(
        wait_healthy(&node, "web", 2),
        after,
        "the replicas before the update serve"
    );
}
