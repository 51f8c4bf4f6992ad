//! Health checks on real containers: HTTP, TCP and command checks pass on a healthy replica;
//! a failing one turns unhealthy and is restarted; impossible settings are refused.

use std::time::Duration;

use hivemind_tests::{
    SingleNode, apps,
    util::{stderr, wait_for},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn deploy(node: &SingleNode, name: &str, extra: &[&str]) {
    let mut args = vec!["--stop-timeout", "2"];
    args.extend_from_slice(extra);
    apps::deploy_ok(&node.agent, &node.image, name, &args);
}

fn container(node: &SingleNode, app: &str) -> Option<Value> {
    apps::containers(&node.agent, app).into_iter().next()
}

fn wait_health(node: &SingleNode, app: &str, health: &str) -> Value {
    wait_for(&format!("{app} to be {health}"), TIMEOUT, || {
        container(node, app).filter(|c| c["health"] == health)
    })
}

#[test]
fn passing_checks_make_replicas_healthy() {
    let node = SingleNode::start();
    deploy(
        &node,
        "web",
        &[
            "--health-http",
            "80/",
            "--health-interval",
            "1s",
            "--health-timeout",
            "500ms",
        ],
    );
    deploy(
        &node,
        "tcp",
        &[
            "--health-tcp",
            "80",
            "--health-interval",
            "1s",
            "--health-timeout",
            "500ms",
        ],
    );
    deploy(
        &node,
        "cmd",
        &[
            "--health-cmd",
            "grep -q hivemind /www/index.html",
            "--health-interval",
            "1s",
            "--health-timeout",
            "900ms",
        ],
    );
    for app in ["web", "tcp", "cmd"] {
        let c = wait_health(&node, app, "healthy");
        assert_eq!(c["restart_count"], 0, "{c}");
    }
    let apps = node.agent.cli_json(&["app", "ls"]);
    let web = apps
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == "web")
        .expect("web");
    assert_eq!(web["healthy"], 1, "{web}");
    assert!(
        web["health_check"]
            .as_str()
            .is_some_and(|h| h.starts_with("http 80/ every 1s")),
        "{web}"
    );
    let human = node.agent.cli_ok(&[
        "app",
        "container-info",
        "--container-id",
        container(&node, "web").expect("web")["id"]
            .as_str()
            .expect("id"),
    ]);
    assert!(human.contains("healthy"), "{human}");
}

#[test]
fn failing_checks_make_replicas_unhealthy_and_restart_them() {
    let node = SingleNode::start();
    deploy(
        &node,
        "sick",
        &[
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
    deploy(
        &node,
        "cmdsick",
        &[
            "--health-cmd",
            "echo broken; exit 3",
            "--health-interval",
            "1s",
            "--health-timeout",
            "900ms",
            "--health-retries",
            "1",
        ],
    );
    let restarted = wait_for("the unhealthy replica to be restarted", TIMEOUT, || {
        container(&node, "sick").filter(|c| c["restart_count"].as_u64().is_some_and(|n| n >= 1))
    });
    let history = restarted["history"].as_array().expect("history");
    assert!(
        history.iter().any(|h| h["message"]
            .as_str()
            .is_some_and(|m| m.contains("unhealthy") && m.contains("404"))),
        "{restarted}"
    );
    let cmd = wait_for("the command check's failure detail", TIMEOUT, || {
        container(&node, "cmdsick").filter(|c| {
            c["health_detail"]
                .as_str()
                .is_some_and(|d| d.contains("exit code 3") && d.contains("broken"))
        })
    });
    assert!(
        cmd["health"] == "unhealthy" || cmd["health"] == "starting",
        "{cmd}"
    );
}

#[test]
fn a_start_period_protects_slow_starters() {
    let node = SingleNode::start();
    deploy(
        &node,
        "slow",
        &[
            "--health-tcp",
            "81",
            "--health-interval",
            "1s",
            "--health-timeout",
            "500ms",
            "--health-retries",
            "1",
            "--health-start-period",
            "1m",
        ],
    );
    std::thread::sleep(Duration::from_secs(5));
    let c = container(&node, "slow").expect("container");
    assert_eq!(c["health"], "starting", "{c}");
    assert_eq!(c["restart_count"], 0, "{c}");
}

#[test]
fn impossible_health_settings_are_refused() {
    let node = SingleNode::start();
    for (args, needle) in [
        (
            vec![
                "--health-tcp",
                "80",
                "--health-interval",
                "1s",
                "--health-timeout",
                "2s",
            ],
            "health-timeout",
        ),
        (vec!["--health-http", "x/y"], "health-http"),
        (
            vec!["--health-tcp", "80", "--health-retries", "0"],
            "health-retries",
        ),
        (vec!["--health-interval", "5s"], "without a check"),
        (
            vec!["--health-cmd", "true", "--health-tcp", "80"],
            "cannot be used with",
        ),
    ] {
        let mut all = vec![
            "app",
            "deploy",
            "--image",
            node.image.as_str(),
            "--name",
            "bad",
        ];
        all.extend_from_slice(&args);
        let out = node.agent.cli(&all);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert_eq!(
            node.agent.cli_json(&["app", "ls"]),
            Value::Array(Vec::new()),
            "nothing deployed"
        );
    }
}
