//! Container networking across a three-node cluster (namespace "hosts" on one bridged
//! underlay, each with its containerd, agent and etcd member): the agents keep the overlay
//! current from the store by themselves. Cross-node ping and TCP, the overlay MTU, VXLAN on
//! the wire, a policy applied on one node enforced on another (and its drop in the receiving
//! node's monitor), tunnels in `node ls`, and spoofed VXLAN from a non-member dropped and
//! counted.

// One scenario that reads top to bottom.
#![allow(clippy::too_many_lines)]

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use hivemind_tests::{
    AgentOptions, Netns, Process,
    cluster::{ClusterNode, Underlay, form_three},
    util::{hivemind_bin, stderr, stdout, wait_for},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);
/// The registry listens on node 1's underlay address, so every node pulls from it.
const REGISTRY: &str = "192.0.2.11:5000";

const POLICY: &str = "\
apiVersion: hivemind/v1
kind: NetworkPolicy
metadata: { name: api-from-web }
spec:
  selector: { app: api }
  ingress:
    - from: [ { app: web } ]
      ports: [ { port: 80, protocol: TCP } ]
";

/// One running container: id, address, node name.
#[derive(Clone, Debug)]
struct Replica {
    id: String,
    ip: String,
    node: String,
}

fn text(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// Runs `program` in the network namespace of container `c` (its node's netns directory).
fn in_container(c: &Replica, program: &str, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/hivemind/netns/{}/{}", c.node, c.id))
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .expect("nsenter")
}

/// True if `from` gets the test image's page from `to` (TCP port 80) within `secs`.
fn http(from: &Replica, to: &Replica, secs: u32) -> bool {
    let out = in_container(
        from,
        "curl",
        &[
            "-sf",
            "-m",
            &secs.to_string(),
            &format!("http://{}/", to.ip),
        ],
    );
    out.status.success() && stdout(&out).contains("hivemind test image")
}

fn ping(from: &Replica, to: &Replica) -> bool {
    in_container(from, "ping", &["-c", "1", "-W", "2", &to.ip])
        .status
        .success()
}

/// The app's running replicas, once it has `replicas` of them with addresses.
fn replicas(node: &ClusterNode, app: &str, replicas: usize) -> Vec<Replica> {
    wait_for(
        &format!("{replicas} running replicas of {app}"),
        TIMEOUT,
        || {
            let list = node.agent.cli_json(&["app", "containers", "--app", app]);
            let running: Vec<Replica> = list
                .as_array()?
                .iter()
                .filter(|c| c["state"] == "running")
                .filter_map(|c| {
                    Some(Replica {
                        id: c["id"].as_str()?.to_owned(),
                        ip: c["ip"].as_str().filter(|ip| !ip.is_empty())?.to_owned(),
                        node: c["node"].as_str()?.to_owned(),
                    })
                })
                .collect();
            (running.len() == replicas).then_some(running)
        },
    )
}

/// A replica of `replicas` on `node` (by name), or on any node but `not`.
fn on<'a>(replicas: &'a [Replica], node: Option<&str>, not: Option<&str>) -> &'a Replica {
    replicas
        .iter()
        .find(|r| node.is_none_or(|n| r.node == n) && not.is_none_or(|n| r.node != n))
        .unwrap_or_else(|| panic!("no replica on {node:?} / not on {not:?}: {replicas:?}"))
}

/// tcpdump on `netns`'s `eth0`: `count` packets matching `filter`.
fn capture(netns: &Netns, filter: &str, count: u32, log: &std::path::Path) -> Process {
    let mut command = netns.command("tcpdump");
    command
        .args(["-i", "eth0", "-nn", "-l", "-c", &count.to_string()])
        .args(filter.split_whitespace());
    let process = Process::spawn("tcpdump", &mut command, log);
    wait_for("tcpdump to listen", Duration::from_secs(10), || {
        process.log().contains("listening on").then_some(())
    });
    process
}

/// `hivemind -o json monitor` on `node`, its events on a channel (the reader thread ends with
/// the process).
fn monitor(node: &ClusterNode, args: &[&str]) -> (std::process::Child, mpsc::Receiver<Value>) {
    let mut child = Command::new(hivemind_bin())
        .arg("--addr")
        .arg(format!("unix:{}", node.agent.socket().display()))
        .args(["-o", "json", "monitor"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("monitor");
    let pipe = child.stdout.take().expect("monitor stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && tx.send(event).is_err()
            {
                break;
            }
        }
    });
    // The stream is open once the agent has the subscription.
    std::thread::sleep(Duration::from_millis(500));
    (child, rx)
}

/// The first event on `rx` within `timeout` that satisfies `wanted`.
fn event(rx: &mpsc::Receiver<Value>, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(event) if wanted(&event) => return event,
            Ok(_) => {}
            Err(err) => panic!("no matching monitor event within {timeout:?}: {err}"),
        }
    }
}

/// `hivemind_datapath_packets_total` for `reason` on `node`, from its /metrics.
fn dropped(node: &ClusterNode, reason: &str) -> u64 {
    let metrics = node
        .netns
        .check("curl", &["-sf", "http://127.0.0.1:3000/metrics"]);
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("hivemind_datapath_packets_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn apply(node: &ClusterNode, yaml: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, yaml).expect("write policy");
    node.agent
        .cli(&["policy", "apply", "-f", file.to_str().expect("utf-8")])
}

#[test]
fn cluster_network_overlay_policies_and_members_across_three_nodes() {
    let underlay = Underlay::new();
    let options = AgentOptions {
        insecure_registries: vec![REGISTRY.to_owned()],
        ..AgentOptions::default()
    };
    let (n1, registry, image, n2, n3) = form_three(&underlay, &options, REGISTRY);
    let nodes: BTreeMap<String, &ClusterNode> = [&n1, &n2, &n3]
        .iter()
        .map(|n| (n.name().to_owned(), *n))
        .collect();

    // Each node's agent put its underlay interface on the overlay by itself: the receiving
    // program on eth0 (TCX ingress; no XDP on veth, see datapath.md).
    for node in [&n1, &n2, &n3] {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let health = node.agent.cli_json(&["health"]);
            let attached = health["dataplane"]["programs"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "hm_node_ingress"))
                .map(|p| p["attached"].to_string())
                .unwrap_or_default();
            if attached.contains("eth0") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}'s underlay program: {health}\nagent log:\n{}",
                node.name(),
                node.agent.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // Three replicas of each app: one per node (fewest containers first).
    for (app, extra) in [("web", None), ("api", None), ("db", Some("tier=data"))] {
        let mut args = vec![
            "app",
            "deploy",
            "--image",
            &image,
            "--name",
            app,
            "--replicas",
            "3",
            "--stop-timeout",
            "2",
        ];
        if let Some(label) = extra {
            args.extend(["--label", label]);
        }
        let out = n1.agent.cli(&args);
        assert!(out.status.success(), "deploy {app}: {}", text(&out));
    }
    let web = replicas(&n1, "web", 3);
    let api = replicas(&n1, "api", 3);
    let db = replicas(&n1, "db", 3);
    let spread: std::collections::BTreeSet<&str> = web.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(spread.len(), 3, "web spread over the nodes: {web:?}");
    for r in web.iter().chain(&api).chain(&db) {
        wait_for(&format!("{}'s httpd", r.id), TIMEOUT, || {
            http(r, r, 1).then_some(())
        });
    }

    // Cross-node ping and TCP, every web replica to an api replica on another node.
    for w in &web {
        let a = on(&api, None, Some(&w.node));
        wait_for(
            &format!("ping {} ({}) -> {} ({})", w.ip, w.node, a.ip, a.node),
            Duration::from_secs(20),
            || ping(w, a).then_some(()),
        );
        assert!(http(w, a, 5), "TCP {} -> {} across nodes", w.node, a.node);
    }
    let (w1, a2) = (
        on(&web, Some(n1.name()), None),
        on(&api, Some(n2.name()), None),
    );
    let out = in_container(w1, "ip", &["-o", "link", "show", "eth0"]);
    assert!(
        stdout(&out).contains("mtu 1450"),
        "containers get the underlay MTU - 50: {}",
        text(&out)
    );

    // VXLAN on the wire: n2's underlay sees web's ping to api as UDP 4789 with VNI = web's
    // identity, decoded by tcpdump.
    let logs = tempfile::tempdir().expect("log dir");
    let dump = capture(
        &n2.netns,
        &format!("udp port 4789 and src host {}", n1.ip),
        2,
        &logs.path().join("tcpdump.log"),
    );
    let out = in_container(w1, "ping", &["-c", "3", "-W", "2", &a2.ip]);
    assert!(out.status.success(), "{}", text(&out));
    let mut dump = dump;
    wait_for("the capture", Duration::from_secs(15), || dump.exited());
    let wire = dump.log();
    assert!(wire.contains("VXLAN"), "{wire}");
    assert!(wire.contains("vni "), "{wire}");
    assert!(
        wire.contains(&format!("{} > {}: ICMP echo request", w1.ip, a2.ip)),
        "inner packet decoded: {wire}"
    );

    // Tunnels per peer in `node ls` and `health`: packets both ways to n2, recently.
    let listed = n1.nodes();
    let to_n2 = listed
        .iter()
        .find(|n| n["name"] == n2.name())
        .expect("n2 listed");
    let tunnel = &to_n2["tunnel"];
    assert_eq!(tunnel["remote_ip"], n2.ip.as_str(), "{to_n2}");
    assert_eq!(tunnel["vxlan_port"], 4789, "{to_n2}");
    assert!(tunnel["tx_packets"].as_u64().unwrap_or(0) > 0, "{to_n2}");
    assert!(tunnel["rx_packets"].as_u64().unwrap_or(0) > 0, "{to_n2}");
    assert!(
        tunnel["last_received_ms"].as_u64().unwrap_or(0) > 0,
        "{to_n2}"
    );
    let table = n1.agent.cli_ok(&["node", "ls"]);
    assert!(
        table.contains("TUNNEL TO") && table.contains("udp/4789"),
        "{table}"
    );
    let health = n1.agent.cli_ok(&["health"]);
    assert!(health.contains("TUNNEL TO"), "{health}");

    // A policy applied on n1 is enforced where api runs: web -> api:80 allowed, db -> api
    // dropped on the receiving node, and that node's monitor names the policy.
    let out = apply(&n1, POLICY);
    assert!(out.status.success(), "{}", text(&out));
    let receiver = nodes[&a2.node];
    let (mut watch, events) = monitor(receiver, &["--verdict", "drop"]);
    let d = on(&db, None, Some(&a2.node));
    wait_for(
        "db -> api to be denied on the receiving node",
        Duration::from_secs(15),
        || (!http(d, a2, 2)).then_some(()),
    );
    assert!(
        http(on(&web, Some(&d.node), None), a2, 5),
        "web -> api allowed"
    );
    assert!(http(w1, a2, 5), "web -> api allowed");
    assert!(!ping(w1, a2), "web -> api: only TCP 80");
    let denied = event(&events, Duration::from_secs(10), |e| {
        e["src_app"] == "db" && e["dst_app"] == "api"
    });
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(denied["reason"], "dropped_policy", "{denied}");
    assert_eq!(denied["direction"], "ingress", "{denied}");
    assert_eq!(denied["policy"], "api-from-web", "{denied}");
    assert_eq!(denied["dst_port"], 80, "{denied}");

    // Spoofed VXLAN from a host on the underlay that is not a member: a Linux vxlan device
    // claiming web's identity, aimed at api on n2. Dropped and counted there.
    let stranger = underlay.host("192.0.2.66");
    let vni = wire
        .split("vni ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("vni in the capture")
        .to_owned();
    stranger.ip(&[
        "link", "add", "vx0", "type", "vxlan", "id", &vni, "remote", &n2.ip, "dstport", "4789",
        "dev", "eth0",
    ]);
    let stranger_ip = format!("{}.200/24", a2.ip.rsplit_once('.').expect("ipv4").0);
    stranger.ip(&["addr", "add", &stranger_ip, "dev", "vx0"]);
    stranger.ip(&["link", "set", "vx0", "up"]);
    let before = dropped(&n2, "dropped_not_member");
    let (mut watch, events) = monitor(&n2, &["--verdict", "drop"]);
    let out = stranger.run("curl", &["-sf", "-m", "3", &format!("http://{}/", a2.ip)]);
    assert!(
        !out.status.success(),
        "a non-member reached api: {}",
        text(&out)
    );
    let _ = stranger.run("ping", &["-c", "2", "-W", "1", &a2.ip]);
    let after = dropped(&n2, "dropped_not_member");
    assert!(
        after > before,
        "non-member VXLAN counted: {before} -> {after}"
    );
    let spoofed = event(&events, Duration::from_secs(10), |e| {
        e["reason"] == "dropped_not_member"
    });
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(spoofed["verdict"], "dropped", "{spoofed}");

    // Containers come and go: a new replica on another node is reachable (its endpoint
    // synced), a removed app's endpoints leave the other nodes' maps.
    let out = n1
        .agent
        .cli(&["app", "scale", "--name", "api", "--replicas", "4"]);
    assert!(out.status.success(), "{}", text(&out));
    let api4 = replicas(&n1, "api", 4);
    let new = api4
        .iter()
        .find(|r| !api.iter().any(|old| old.id == r.id))
        .expect("a new replica");
    let w = on(&web, None, Some(&new.node));
    wait_for("web -> the new api replica", TIMEOUT, || {
        http(w, new, 2).then_some(())
    });
    drop(registry);
}
