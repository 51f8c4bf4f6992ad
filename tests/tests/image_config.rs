//! The image's own config, honoured as Docker does, and the deploy flags that override it:
//! named users (`USER www`, `www:staff`, `1001:2000`) resolved from the image's `/etc/passwd`
//! and `/etc/group` with supplementary groups and `HOME`, an unknown user refused with nothing
//! created, `HEALTHCHECK` (healthy, unhealthy, `--no-healthcheck`), `STOPSIGNAL` (the process
//! sees the signal arrive), `EXPOSE` in `container-info`, and `--user`, `--workdir`,
//! `--entrypoint` and a command after `--`.
//!
//! What runs is checked from outside: the kernel's view of the process (`/proc/PID/status`,
//! `/proc/PID/environ`), containerd's OCI spec of the container (`ctr containers info`), and
//! the process's own output.

use std::{collections::BTreeMap, time::Duration};

use hivemind_tests::{
    SingleNode,
    apps::{self, CONTAINERD_NS},
    image,
    util::{stderr, stdout, wait_for},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
/// The accounts variant serves on 8080: a user other than root may not bind port 80.
const PLAIN: &str =
    r#""Env":["PATH=/bin","PORT=8080"],"Cmd":["/bin/entrypoint"],"ExposedPorts":{"8080/tcp":{}}"#;

/// Pushes the test image built as `variant` with config `{PLAIN, extra}` as `repo:1`.
fn push(node: &SingleNode, repo: &str, variant: &str, extra: &str) -> String {
    let config = if extra.is_empty() {
        format!("{{{PLAIN}}}")
    } else {
        format!("{{{PLAIN},{extra}}}")
    };
    let layout = image::oci_layout_configured(repo, variant, &config);
    node.registry
        .push_image(&layout, &format!("hivemind/{repo}:1"))
}

/// The first field of `/proc/PID/status` line `key` (e.g. `Uid:` → real uid), and for
/// `Groups:` every field.
fn status(pid: u64, key: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|rest| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn environ(pid: u64) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .expect("environ")
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Deploys and waits for the app's one running container; returns it.
fn running(node: &SingleNode, image: &str, name: &str, extra: &[&str]) -> Value {
    apps::deploy_ok(&node.agent, image, name, extra);
    apps::wait_running(&node.agent, name, TIMEOUT)
}

/// (uid, gid, supplementary groups) of the container's main process, as the kernel has them.
fn ids(container: &Value) -> (String, String, Vec<String>) {
    let pid = container["pid"].as_u64().expect("pid");
    let first = |key| status(pid, key).first().cloned().unwrap_or_default();
    (first("Uid:"), first("Gid:"), status(pid, "Groups:"))
}

fn info(node: &SingleNode, id: &str) -> String {
    node.agent
        .cli_ok(&["app", "container-info", "--container-id", id])
}

fn log_of(node: &SingleNode, id: &str) -> String {
    stdout(&node.agent.cli(&["app", "logs", "--container-id", id]))
}

#[test]
fn named_users_are_resolved_from_the_image() {
    let node = SingleNode::start();
    let www = push(&node, "user-www", "accounts", r#""User":"www""#);
    let grouped = push(&node, "user-www-staff", "accounts", r#""User":"www:staff""#);
    let numeric = push(&node, "user-numeric", "accounts", r#""User":"1001:2000""#);
    let unknown = push(&node, "user-unknown", "accounts", r#""User":"nobody""#);

    // USER www: its uid and gid, the groups that list it, its home.
    let c = running(&node, &www, "www", &[]);
    assert_eq!(
        ids(&c),
        (
            "1000".into(),
            "1000".into(),
            vec!["50".into(), "2000".into()]
        )
    );
    let pid = c["pid"].as_u64().expect("pid");
    assert_eq!(
        environ(pid).get("HOME").map(String::as_str),
        Some("/var/www")
    );
    let id = apps::id(&c);
    let spec = node.containerd.oci_spec(CONTAINERD_NS, &id);
    assert_eq!(spec["process"]["user"]["uid"], 1000, "{spec}");
    assert_eq!(
        spec["process"]["user"]["additionalGids"],
        serde_json::json!([50, 2000])
    );
    let shown = info(&node, &id);
    assert!(
        shown.contains("User       www (uid 1000, gid 1000, groups 50,2000)"),
        "{shown}"
    );
    assert!(shown.contains("Exposed    8080/tcp"), "{shown}");
    let said = wait_for("the process's own words", TIMEOUT, || {
        let log = log_of(&node, &id);
        log.contains("running as").then_some(log)
    });
    assert!(
        said.contains("uid=1000(www) gid=1000(www) groups=50(staff),2000(web)"),
        "{said}"
    );

    // USER www:staff: that group, no supplementary ones. USER 1001:2000: numbers as they are.
    let c = running(&node, &grouped, "staff", &[]);
    assert_eq!(ids(&c), ("1000".into(), "50".into(), Vec::new()));
    let c = running(&node, &numeric, "numeric", &[]);
    assert_eq!(ids(&c), ("1001".into(), "2000".into(), Vec::new()));

    // --user overrides the image's USER; --workdir its WORKDIR.
    let c = running(
        &node,
        &www,
        "as-app",
        &["--user", "app", "--workdir", "/home/app"],
    );
    assert_eq!(ids(&c), ("1001".into(), "1001".into(), vec!["50".into()]));
    let id = apps::id(&c);
    let said = wait_for("the process's own words", TIMEOUT, || {
        let log = log_of(&node, &id);
        log.contains("running as").then_some(log)
    });
    assert!(said.contains(" in /home/app"), "{said}");

    // A user the image does not define: refused with one line, nothing created.
    let before = node.containerd_containers();
    for (image, extra, needle) in [
        (
            unknown.as_str(),
            &[][..],
            "user \"nobody\" is not defined in the image's /etc/passwd",
        ),
        (
            www.as_str(),
            &["--user", "www:wheel"][..],
            "group \"wheel\" is not defined in the image's /etc/group",
        ),
    ] {
        let out = apps::deploy(&node.agent, image, "refused", extra);
        assert!(!out.status.success(), "deployed {image} {extra:?}");
        let err = stderr(&out);
        assert!(err.contains(needle), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        let apps: Vec<Value> = node
            .agent
            .cli_json(&["app", "ls"])
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!apps.iter().any(|a| a["name"] == "refused"), "{apps:?}");
        assert_eq!(node.containerd_containers(), before, "nothing made");
    }
}

#[test]
fn the_image_healthcheck_and_stop_signal_apply() {
    let node = SingleNode::start();
    let check = |test: &str| {
        format!(
            r#""Healthcheck":{{"Test":{test},"Interval":1000000000,"Timeout":1000000000,"Retries":1}}"#
        )
    };
    let healthy = push(
        &node,
        "check-ok",
        "",
        &check(r#"["CMD-SHELL","test -e /www/index.html"]"#),
    );
    let sick = push(&node, "check-bad", "", &check(r#"["CMD","/bin/false"]"#));
    let usr1 = push(&node, "stop-usr1", "", r#""StopSignal":"SIGUSR1""#);

    // The image's check is used when the deploy gives none.
    apps::deploy_ok(&node.agent, &healthy, "healthy", &[]);
    apps::wait_healthy(&node.agent, "healthy", 1, TIMEOUT);
    let app = apps::app_info(&node.agent, "healthy");
    assert!(
        app["health_check"]
            .as_str()
            .is_some_and(|h| h.contains("test -e /www/index.html")),
        "{app}"
    );
    apps::deploy_ok(&node.agent, &sick, "sick", &[]);
    wait_for("the image's failing check to mark it", TIMEOUT, || {
        apps::containers(&node.agent, "sick")
            .into_iter()
            .find(|c| c["health"] == "unhealthy" || c["restart_count"].as_u64() > Some(0))
    });
    // --no-healthcheck switches it off.
    let c = running(&node, &sick, "unchecked", &["--no-healthcheck"]);
    assert_eq!(c["health"], "", "{c}");
    assert_eq!(
        apps::app_info(&node.agent, "unchecked")["health_check"],
        "",
        "no check"
    );

    // STOPSIGNAL SIGUSR1: the process gets SIGUSR1 when the app is removed; --stop-signal
    // overrides it.
    for (name, extra, signal) in [
        ("usr1", &[][..], "SIGUSR1"),
        ("term", &["--stop-signal", "TERM"][..], "SIGTERM"),
    ] {
        node.agent.cli_ok(&["volume", "create", name]);
        let volume = format!("{name}:/data");
        let mut args = vec![
            "--volume",
            volume.as_str(),
            "--env",
            "SIGNAL_LOG=/data/signals",
            "--stop-timeout",
            "10",
        ];
        args.extend_from_slice(extra);
        running(&node, &usr1, name, &args);
        node.agent.cli_ok(&["app", "rm", "--name", name]);
        let file = node
            .agent
            .data_dir()
            .join("volumes")
            .join(name)
            .join("_data/signals");
        let got = std::fs::read_to_string(&file).unwrap_or_default();
        assert_eq!(got.trim(), signal, "{name}: {}", file.display());
    }
}

#[test]
fn entrypoint_and_command_override_the_image() {
    let node = SingleNode::start();
    let c = running(
        &node,
        &node.image,
        "custom",
        &[
            "--entrypoint",
            "/bin/sh -c",
            "--",
            "echo started by the entrypoint; exec httpd -f -p 80 -h /www",
        ],
    );
    let id = apps::id(&c);
    let spec = node.containerd.oci_spec(CONTAINERD_NS, &id);
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!([
            "/bin/sh",
            "-c",
            "echo started by the entrypoint; exec httpd -f -p 80 -h /www"
        ])
    );
    wait_for("the command's output", TIMEOUT, || {
        log_of(&node, &id)
            .contains("started by the entrypoint")
            .then_some(())
    });
    // A command alone replaces CMD and keeps the entrypoint (the test image has none).
    let c = running(
        &node,
        &node.image,
        "cmd",
        &["--", "/bin/entrypoint", "extra"],
    );
    let spec = node.containerd.oci_spec(CONTAINERD_NS, &apps::id(&c));
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["/bin/entrypoint", "extra"])
    );
    // Unbalanced quotes are refused before anything is made.
    let out = apps::deploy(
        &node.agent,
        &node.image,
        "bad",
        &["--entrypoint", "/bin/sh 'x"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid entrypoint"),
        "{}",
        stderr(&out)
    );
}
