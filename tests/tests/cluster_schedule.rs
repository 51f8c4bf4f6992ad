//! Replica scheduling on a three-node cluster (namespace "hosts" on one bridged underlay, each
//! with its containerd, agent and etcd member): replicas spread over the nodes, scale works
//! from any node, a dead node's replicas start elsewhere within 30 s and it stops them when it
//! returns, and a partitioned node keeps serving locally, then gives its moved replicas up
//! when the partition heals — with no subnet or address handed out twice.

// One scenario that reads top to bottom.
#![allow(clippy::too_many_lines)]

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use hivemind_tests::{
    AgentOptions,
    cluster::{ClusterNode, Underlay, form_three},
    util::{stderr, stdout, wait_for},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);
/// What the issue promises for moving a lost node's replicas.
const FAILOVER: Duration = Duration::from_secs(30);
/// The registry listens on node 1's underlay address, so every node pulls from it.
const REGISTRY: &str = "192.0.2.11:5000";

/// `app containers --app APP` as seen from `node`.
fn containers(node: &ClusterNode, app: &str) -> Vec<Value> {
    node.agent
        .cli_json(&["app", "containers", "--app", app])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Running replicas per node name, from `node`'s view.
fn running_per_node(node: &ClusterNode, app: &str) -> BTreeMap<String, usize> {
    let mut per_node = BTreeMap::new();
    for c in containers(node, app) {
        if c["state"] == "running"
            && let Some(name) = c["node"].as_str()
        {
            *per_node.entry(name.to_owned()).or_insert(0) += 1;
        }
    }
    per_node
}

/// Waits until `node` sees `app` running exactly as `wanted` (node name → replicas).
fn wait_spread(
    node: &ClusterNode,
    app: &str,
    what: &str,
    wanted: impl Fn(&BTreeMap<String, usize>) -> bool,
) {
    wait_for(what, TIMEOUT, || {
        let seen = running_per_node(node, app);
        wanted(&seen).then_some(())
    });
}

/// Tasks running in `node`'s containerd (the agent's namespace).
fn tasks(node: &ClusterNode) -> BTreeSet<String> {
    node.containerd.containers("hivemind").into_iter().collect()
}

/// The node of every container record, and each record's address, as `node` sees them.
fn addresses(node: &ClusterNode) -> Vec<String> {
    node.agent
        .cli_json(&["app", "containers"])
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|c| c["state"] == "running")
        .filter_map(|c| {
            c["ip"]
                .as_str()
                .filter(|ip| !ip.is_empty())
                .map(str::to_owned)
        })
        .collect()
}

fn sigkill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

#[test]
fn cluster_schedule_spreads_fails_over_and_heals() {
    let underlay = Underlay::new();
    let options = AgentOptions {
        insecure_registries: vec![REGISTRY.to_owned()],
        ..AgentOptions::default()
    };
    let (n1, _registry, image, n2, mut n3) = form_three(&underlay, &options, REGISTRY);

    // Six replicas deployed on node 2 spread two per node.
    n2.agent.cli_ok(&[
        "app",
        "deploy",
        "--image",
        &image,
        "--name",
        "spread",
        "--replicas",
        "6",
        "--stop-timeout",
        "1",
    ]);
    wait_spread(&n1, "spread", "6 replicas, 2 per node", |seen| {
        seen.len() == 3 && seen.values().all(|c| *c == 2)
    });
    // Every node tells the same story, and each node's containerd runs exactly its share.
    for node in [&n1, &n2, &n3] {
        assert_eq!(running_per_node(node, "spread").values().sum::<usize>(), 6);
        assert_eq!(tasks(node).len(), 2, "{} runs its 2", node.name());
    }
    // container-info of a replica on another node is answered by that node (live usage).
    let remote = containers(&n1, "spread")
        .into_iter()
        .find(|c| c["node"] == n3.name())
        .expect("a replica on node 3");
    let id = remote["id"].as_str().expect("id");
    let info = n1
        .agent
        .cli_json(&["app", "container-info", "--container-id", id]);
    assert_eq!(info["node"], n3.name(), "{info}");
    assert!(
        info["usage"]["memory_bytes"].as_u64().unwrap_or(0) > 0,
        "usage from node 3's containerd: {info}"
    );

    // Scale from node 3: down to 3 (one per node), back to 6.
    n3.agent
        .cli_ok(&["app", "scale", "--name", "spread", "--replicas", "3"]);
    wait_spread(&n2, "spread", "3 replicas, 1 per node", |seen| {
        seen.len() == 3 && seen.values().all(|c| *c == 1)
    });
    n3.agent
        .cli_ok(&["app", "scale", "--name", "spread", "--replicas", "6"]);
    wait_spread(&n2, "spread", "6 replicas again", |seen| {
        seen.values().sum::<usize>() == 6 && seen.values().all(|c| *c == 2)
    });

    // Node 3 dies (agent and its etcd member killed; its containers keep running, as on a
    // machine whose agent crashed): its two replicas start on nodes 1 and 2 within 30 s of
    // its liveness lease running out.
    let on_n3_before = tasks(&n3);
    let etcd = n3.agent.etcd_pid();
    let killed = Instant::now();
    n3.agent.kill();
    if let Some(pid) = etcd {
        sigkill(pid);
    }
    n1.wait_ready(n3.name(), false, TIMEOUT);
    let lost_after = killed.elapsed();
    let n3_name = n3.name().to_owned();
    wait_for("replicas moved off node 3", lost_after + FAILOVER, || {
        let seen = running_per_node(&n1, "spread");
        (!seen.contains_key(&n3_name) && seen.values().sum::<usize>() == 6).then_some(())
    });
    eprintln!(
        "node 3 seen not ready after {lost_after:?}; replicas running elsewhere after {:?}",
        killed.elapsed()
    );
    // Its stale records show as unknown, not running.
    let stale: Vec<Value> = containers(&n1, "spread")
        .into_iter()
        .filter(|c| c["node"] == n3_name.as_str())
        .collect();
    assert!(stale.iter().all(|c| c["state"] == "unknown"), "{stale:?}");
    // Scaling still completes while a node is lost: its stale records don't count.
    let scaling = Instant::now();
    n1.agent
        .cli_ok(&["app", "scale", "--name", "spread", "--replicas", "4"]);
    n1.agent
        .cli_ok(&["app", "scale", "--name", "spread", "--replicas", "6"]);
    assert!(
        scaling.elapsed() < TIMEOUT,
        "scaled in {:?}",
        scaling.elapsed()
    );

    // It returns: it stops the replicas it no longer owns; nothing moves back, nothing drifts.
    n3.agent.start_again();
    n1.wait_ready(&n3_name, true, TIMEOUT);
    wait_for("node 3 to stop its old replicas", TIMEOUT, || {
        tasks(&n3).is_disjoint(&on_n3_before).then_some(())
    });
    wait_spread(
        &n1,
        "spread",
        "6 replicas on nodes 1 and 2 after node 3 returned",
        |seen| seen.values().sum::<usize>() == 6 && !seen.contains_key(&n3_name),
    );
    wait_for("node 3's old records to be removed", TIMEOUT, || {
        containers(&n1, "spread")
            .iter()
            .all(|c| c["node"] != n3_name.as_str())
            .then_some(())
    });

    // Node 2 is cut off from the others (its underlay link goes down). It keeps its
    // containers running and serving locally; the others move its replicas.
    let on_n2: Vec<Value> = containers(&n2, "spread")
        .into_iter()
        .filter(|c| c["node"] == n2.name())
        .collect();
    assert!(!on_n2.is_empty(), "node 2 runs replicas");
    let local_ip = on_n2[0]["ip"].as_str().expect("ip").to_owned();
    n2.netns.ip(&["link", "set", "eth0", "down"]);
    let n2_name = n2.name().to_owned();
    n1.wait_ready(&n2_name, false, TIMEOUT);
    wait_for(
        "replicas moved off node 2",
        FAILOVER + Duration::from_secs(20),
        || {
            let seen = running_per_node(&n1, "spread");
            (!seen.contains_key(&n2_name) && seen.values().sum::<usize>() == 6).then_some(())
        },
    );
    assert_eq!(
        tasks(&n2).len(),
        on_n2.len(),
        "the cut-off node keeps its containers"
    );
    let served = n2
        .netns
        .run("curl", &["-sf", "-m", "5", &format!("http://{local_ip}/")]);
    assert!(
        served.status.success() && stdout(&served).contains("hivemind test image"),
        "local traffic keeps flowing on the cut-off node: {}",
        stderr(&served)
    );

    // Healed: node 2 gives up what moved; six replicas in total, every address distinct.
    n2.netns.ip(&["link", "set", "eth0", "up"]);
    n1.wait_ready(&n2_name, true, TIMEOUT);
    wait_for("node 2 to stop its moved replicas", TIMEOUT, || {
        tasks(&n2).is_empty().then_some(())
    });
    wait_spread(
        &n2,
        "spread",
        "6 replicas after the partition healed",
        |seen| seen.values().sum::<usize>() == 6,
    );
    for node in [&n1, &n2, &n3] {
        let subnets: BTreeSet<String> = node
            .nodes()
            .iter()
            .filter_map(|n| n["subnet"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(subnets.len(), 3, "one subnet per node, never two");
    }
    let ips = addresses(&n1);
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(
        distinct.len(),
        ips.len(),
        "no address handed out twice: {ips:?}"
    );
    assert_eq!(ips.len(), 6);
}
