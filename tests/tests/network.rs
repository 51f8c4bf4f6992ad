//! The datapath on one node with real containers: addresses, container-to-container traffic,
//! policies from YAML (matrix, monitor, apply/remove), published ports, traffic leaving the
//! node, and an agent restart that loses no packet.

// Each test is one scenario that reads top to bottom.
#![allow(clippy::too_many_lines)]

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hivemind_tests::{
    AgentOptions, NODE_IP, SingleNode, WORLD_IP,
    util::{hivemind_bin, stderr, stdout, wait_for},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn deploy(node: &SingleNode, name: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "app",
        "deploy",
        "--image",
        &node.image,
        "--name",
        name,
        "--stop-timeout",
        "2",
    ];
    args.extend_from_slice(extra);
    node.agent.cli_ok(&args);
    let info = wait_for(&format!("{name} running with an address"), TIMEOUT, || {
        let list = node.agent.cli_json(&["app", "containers", "--app", name]);
        let first = list.as_array()?.first()?.clone();
        (first["state"] == "running" && first["ip"].as_str().is_some_and(|ip| !ip.is_empty()))
            .then_some(first)
    });
    // httpd is up once it answers on its own address.
    let (id, ip) = (id_of(&info), ip_of(&info));
    wait_for(&format!("{name}'s httpd"), TIMEOUT, || {
        http(node, &id, &ip, 1).then_some(())
    });
    info
}

fn id_of(info: &Value) -> String {
    info["id"].as_str().expect("id").to_owned()
}

fn ip_of(info: &Value) -> String {
    info["ip"].as_str().expect("ip").to_owned()
}

/// True if container `from` gets the test page from `ip` within `secs`.
fn http(node: &SingleNode, from: &str, ip: &str, secs: u32) -> bool {
    let out = node.in_container(
        from,
        "curl",
        &["-sf", "-m", &secs.to_string(), &format!("http://{ip}/")],
    );
    out.status.success() && stdout(&out).contains("hivemind test image")
}

fn apply(node: &SingleNode, yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, yaml).expect("write policy");
    node.agent
        .cli(&["policy", "apply", "-f", file.to_str().expect("utf-8")])
}

#[test]
fn containers_get_addresses_and_reach_each_other_the_node_and_the_world() {
    let node = SingleNode::start_with_world(&AgentOptions::default());
    let a = deploy(&node, "alpha", &[]);
    let b = deploy(&node, "beta", &[]);
    let (a_id, b_id, a_ip, b_ip) = (id_of(&a), id_of(&b), ip_of(&a), ip_of(&b));
    assert!(
        a_ip.starts_with("10.244.0.") && b_ip.starts_with("10.244.0."),
        "{a_ip} {b_ip}"
    );
    assert_ne!(a_ip, b_ip);

    // Container to container, both ways, ping and TCP.
    assert!(http(&node, &a_id, &b_ip, 3), "alpha -> beta");
    assert!(http(&node, &b_id, &a_ip, 3), "beta -> alpha");
    assert!(
        node.in_container(&a_id, "ping", &["-c", "2", "-W", "2", &b_ip])
            .status
            .success()
    );

    // The container sees its own address, a default route via the gateway, and a /etc/hosts
    // naming it.
    let addr = stdout(&node.in_container(&a_id, "ip", &["-4", "-o", "addr", "show", "eth0"]));
    assert!(addr.contains(&a_ip), "{addr}");
    let routes = stdout(&node.in_container(&a_id, "ip", &["route"]));
    assert!(routes.contains("default via 10.244.0.1"), "{routes}");
    let hosts = std::fs::read_to_string(
        node.agent
            .data_dir()
            .join("containers")
            .join(&a_id)
            .join("hosts"),
    )
    .expect("hosts");
    assert!(hosts.contains(&format!("{a_ip}\t{a_id}")), "{hosts}");

    // The node's gateway address answers.
    assert!(
        node.in_container(&a_id, "ping", &["-c", "1", "-W", "2", "10.244.0.1"])
            .status
            .success()
    );

    // Beyond the node, masqueraded: the world sees the node's address.
    let world = node.world.as_ref().expect("world");
    let capture = world
        .netns
        .command("timeout")
        .args([
            "10",
            "tcpdump",
            "-n",
            "-l",
            "-c",
            "1",
            "-i",
            &world.peer,
            "tcp",
            "port",
            "7000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_secs(2));
    let _ = node.in_container(
        &a_id,
        "curl",
        &["-s", "-m", "2", &format!("http://{WORLD_IP}:7000/")],
    );
    let seen =
        String::from_utf8_lossy(&capture.wait_with_output().expect("tcpdump").stdout).into_owned();
    assert!(
        seen.contains(&format!("{NODE_IP}.")),
        "masqueraded to the node address: {seen}"
    );
    assert!(
        !seen.contains(&a_ip),
        "the container address does not leave the node: {seen}"
    );

    // Health lists the programs, where they are attached, and the network.
    let health = node.agent.cli_json(&["health"]);
    assert_eq!(health["dataplane"]["subnet"], "10.244.0.0/24", "{health}");
    assert_eq!(health["dataplane"]["endpoints"], 2, "{health}");
    let attached: Vec<&Value> = health["dataplane"]["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .filter(|p| p["attached"].as_array().is_some_and(|a| !a.is_empty()))
        .collect();
    assert!(
        attached.len() >= 2,
        "from/to container programs attached: {health}"
    );

    // Removing a container removes its interface and releases its address.
    node.agent.cli_ok(&["app", "rm", "--name", "beta"]);
    let links = node.netns.ip(&["-o", "link"]);
    assert_eq!(
        links.matches("hm").count(),
        1 + 1,
        "alpha's veth and hivemind0 remain: {links}"
    );
    let again = deploy(&node, "gamma", &[]);
    assert_eq!(
        ip_of(&again),
        b_ip,
        "the released address is handed out again"
    );
}

const MATRIX_POLICY: &str = "\
apiVersion: hivemind/v1
kind: NetworkPolicy
metadata: { name: api-from-web }
spec:
  selector: { app: api }
  ingress:
    - from: [ { app: web } ]
      ports: [ { port: 80, protocol: TCP } ]
---
apiVersion: hivemind/v1
kind: NetworkPolicy
metadata: { name: db-locked }
spec:
  selector: { tier: data }
  ingress:
    - from: [ { app: api } ]
";

#[test]
fn policies_allow_deny_and_show_drops_in_the_monitor() {
    let node = SingleNode::start();
    let web = deploy(&node, "web", &[]);
    let api = deploy(&node, "api", &[]);
    let db = deploy(&node, "db", &["--label", "tier=data"]);
    let (web_id, api_id, db_id) = (id_of(&web), id_of(&api), id_of(&db));
    let (web_ip, api_ip, db_ip) = (ip_of(&web), ip_of(&api), ip_of(&db));

    let out = apply(&node, MATRIX_POLICY);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("policy api-from-web created"),
        "{}",
        stdout(&out)
    );

    // Watch drops while the matrix runs.
    let mut monitor = Command::new(hivemind_bin())
        .arg("--addr")
        .arg(format!("unix:{}", node.agent.socket().display()))
        .args(["-o", "json", "monitor", "--verdict", "drop"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("monitor");
    std::thread::sleep(Duration::from_millis(500));

    for (from, to_ip, allowed, what) in [
        (&web_id, &api_ip, true, "web -> api:80 (allowed)"),
        (&db_id, &api_ip, false, "db -> api (not web)"),
        (&api_id, &db_ip, true, "api -> db (allowed, any port)"),
        (&web_id, &db_ip, false, "web -> db (not api)"),
        (
            &api_id,
            &web_ip,
            true,
            "api -> web (web is not selected: open)",
        ),
        (&db_id, &web_ip, true, "db -> web (open)"),
    ] {
        assert_eq!(http(&node, from, to_ip, 2), allowed, "{what}");
    }
    // ICMP is a protocol like the others: web may reach api only on TCP 80.
    assert!(
        !node
            .in_container(&web_id, "ping", &["-c", "1", "-W", "1", &api_ip])
            .status
            .success()
    );

    let stdout_pipe = monitor.stdout.take().expect("monitor stdout");
    let mut lines = BufReader::new(stdout_pipe).lines();
    let drop_event = loop {
        let line = lines.next().expect("monitor ended").expect("read");
        let event: Value = serde_json::from_str(&line).expect("JSON event");
        if event["src_app"] == "db" && event["dst_app"] == "api" {
            break event;
        }
    };
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert_eq!(drop_event["verdict"], "dropped", "{drop_event}");
    assert_eq!(drop_event["reason"], "dropped_policy", "{drop_event}");
    assert_eq!(drop_event["direction"], "ingress", "{drop_event}");
    assert_eq!(drop_event["dst_port"], 80, "{drop_event}");
    assert_eq!(
        drop_event["policy"], "api-from-web",
        "default-deny names the selecting policy: {drop_event}"
    );

    // The drop counters per policy are visible in `policy ls`.
    let listed = node.agent.cli_json(&["policy", "ls"]);
    let total: u64 = listed
        .as_array()
        .expect("policies")
        .iter()
        .map(|p| p["dropped_packets"].as_u64().unwrap_or(0))
        .sum();
    assert!(total > 0, "{listed}");
    let api_policy = listed
        .as_array()
        .expect("policies")
        .iter()
        .find(|p| p["name"] == "api-from-web")
        .expect("listed");
    assert_eq!(api_policy["selects"], serde_json::json!(["api"]));

    // Removing a policy opens the path within a second.
    node.agent.cli_ok(&["policy", "rm", "db-locked"]);
    let start = Instant::now();
    wait_for("web -> db to open", Duration::from_secs(5), || {
        http(&node, &web_id, &db_ip, 1).then_some(())
    });
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );

    // A deny rule beats an allow, and applying it closes the path within a second.
    let deny = "\
apiVersion: hivemind/v1
kind: NetworkPolicy
metadata: { name: no-db-to-web }
spec:
  selector: { app: web }
  ingress:
    - {}
  deny:
    - from: [ { labels: { tier: data } } ]
";
    let out = apply(&node, deny);
    assert!(out.status.success(), "{}", stderr(&out));
    let start = Instant::now();
    wait_for("db -> web to close", Duration::from_secs(5), || {
        (!http(&node, &db_id, &web_ip, 1)).then_some(())
    });
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert!(http(&node, &api_id, &web_ip, 2), "others still reach web");

    // /metrics counts the drops by policy (from inside the agent's namespace).
    let metrics = node
        .netns
        .check("curl", &["-sf", "http://127.0.0.1:3000/metrics"]);
    assert!(
        metrics.contains("hivemind_policy_dropped_packets_total"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"dropped_policy\""), "{metrics}");
}

#[test]
fn bad_policy_files_change_nothing_and_name_the_problem() {
    let node = SingleNode::start();
    deploy(&node, "api", &[]);
    let good = "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: keep }\nspec:\n  selector: { app: api }\n  ingress: [ { from: [ { app: web } ] } ]\n";
    assert!(apply(&node, good).status.success());
    let before = node.agent.cli_json(&["policy", "ls"]);
    let big = format!("{good}{}", "# padding\n".repeat(1 << 20));
    for (yaml, needles) in [
        (
            "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: x }\nspec: { selector: { app: api }, ingress: [ { from: [ { cidr: 10.0.0.1/8 } ] } ] }\n",
            vec!["cidr", "10.0.0.0/8"],
        ),
        (
            "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: x }\nspec: { selector: { app: api }, ingress: [ { ports: [ { port: 70000 } ] } ] }\n",
            vec!["port", "70000"],
        ),
        (
            "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: x }\nspec: { selector: { app: api }, ingres: [] }\n",
            vec!["ingres"],
        ),
        (
            "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: x\n",
            vec!["policy.yaml"],
        ),
        (
            "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: keep }\nspec: { selector: { app: api } }\n---\napiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: keep }\nspec: { selector: { app: api } }\n",
            vec!["keep", "already defined"],
        ),
        (
            "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: x }\nspec:\n  selector: { app: api }\nspec: {}\n",
            vec!["policy.yaml:6:1:", "duplicate entry with key \"spec\""],
        ),
        (
            // 10 MiB: refused by the CLI in user terms before anything is sent.
            big.as_str(),
            vec!["10.0 MiB of YAML", "at most 4 MiB"],
        ),
    ] {
        let out = apply(&node, yaml);
        let err = stderr(&out);
        assert!(!out.status.success(), "accepted: {yaml}");
        assert!(err.contains("policy.yaml"), "names the file: {err}");
        for needle in needles {
            assert!(
                err.to_lowercase().contains(&needle.to_lowercase()),
                "expected {needle:?} in: {err}"
            );
        }
        assert_eq!(
            node.agent.cli_json(&["policy", "ls"]),
            before,
            "nothing changed"
        );
    }
    // A selector that matches nothing is a warning, not an error.
    let lonely = "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: lonely }\nspec:\n  selector: { app: nobody }\n  ingress: []\n";
    let out = apply(&node, lonely);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn published_ports_reach_the_container_from_another_namespace() {
    let node = SingleNode::start_with_world(&AgentOptions::default());
    deploy(&node, "pub", &["--port", "8080:80"]);
    let world = node.world.as_ref().expect("world");
    let page = wait_for("the published port", TIMEOUT, || {
        let out = world.netns.run(
            "curl",
            &["-sf", "-m", "2", &format!("http://{NODE_IP}:8080/")],
        );
        out.status.success().then(|| stdout(&out))
    });
    assert!(page.contains("hivemind test image"), "{page}");
    // Unpublished ports are not forwarded.
    let closed = world.netns.run(
        "curl",
        &["-sf", "-m", "2", &format!("http://{NODE_IP}:8081/")],
    );
    assert!(!closed.status.success());
    // Removing the app unpublishes the port.
    node.agent.cli_ok(&["app", "rm", "--name", "pub"]);
    let gone = world.netns.run(
        "curl",
        &["-sf", "-m", "2", &format!("http://{NODE_IP}:8080/")],
    );
    assert!(!gone.status.success(), "{}", stdout(&gone));
}

#[test]
fn traffic_and_policies_survive_an_agent_restart() {
    let mut node = SingleNode::start();
    let a = deploy(&node, "pinger", &[]);
    let b = deploy(&node, "target", &[]);
    let c = deploy(&node, "outsider", &["--label", "zone=out"]);
    let policy = "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: { name: only-pinger }\nspec:\n  selector: { app: target }\n  ingress: [ { from: [ { app: pinger } ] } ]\n";
    assert!(apply(&node, policy).status.success());
    assert!(
        !http(&node, &id_of(&c), &ip_of(&b), 1),
        "outsider is denied before the restart"
    );

    // 150 pings at 0.1 s intervals span the agent's 10 s absence.
    let ping = Command::new("nsenter")
        .arg(format!(
            "--net=/run/hivemind/netns/{}/{}",
            node.agent.node_name(),
            id_of(&a)
        ))
        .args([
            "--",
            "ping",
            "-c",
            "150",
            "-i",
            "0.1",
            "-W",
            "1",
            &ip_of(&b),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_secs(1));
    node.agent.stop();
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        !http(&node, &id_of(&c), &ip_of(&b), 1),
        "the policy holds while the agent is down"
    );
    node.agent.start_again();
    let out = ping.wait_with_output().expect("ping output");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("150 packets transmitted, 150 received, 0% packet loss"),
        "{summary}"
    );
    assert!(
        !http(&node, &id_of(&c), &ip_of(&b), 1),
        "and after the restart"
    );
    assert!(http(&node, &id_of(&a), &ip_of(&b), 2));
}
