//! Service discovery and public access on a three-node cluster (namespace "hosts" on one
//! bridged underlay, each with its containerd, agent and etcd member), one replica of the
//! service per node: every node's DNS answers every replica, from the node and from a
//! container; the client container's VIP and every node's HTTP router reach the replicas on
//! the other nodes too (the router's connections leave the node's own stack through
//! `hm_from_host` and the overlay); a killed replica and an unhealthy one leave DNS, the VIP
//! and the router on every node; and a rolling restart under continuous requests, through
//! the VIP from a container and through a router from outside, fails none of them.

// One scenario that reads top to bottom.
#![allow(clippy::too_many_lines)]

use std::{collections::BTreeSet, time::Duration};

use hivemind_tests::{
    AgentOptions, Netns, Process,
    apps::{
        ID_CHECK, LoadClient, containers, deploy_ok, exec, http_gets, id, ip, tally, time_until,
        vip_of, wait_healthy, wait_running,
    },
    cluster::{ClusterNode, Underlay, form_three},
    util::{line_set, run, stderr, stdout, wait_for},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(90);
/// The registry listens on node 1's underlay address, so every node pulls from it.
const REGISTRY: &str = "192.0.2.11:5000";
/// A host on the underlay that is not a node: the "outside" the routers serve.
const USER_IP: &str = "192.0.2.50";
const DOMAIN: &str = "shop.example.com";

fn node<'a>(nodes: &[&'a ClusterNode], name: &str) -> &'a ClusterNode {
    nodes
        .iter()
        .copied()
        .find(|n| n.name() == name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

/// The node a container runs on.
fn node_of<'a>(nodes: &[&'a ClusterNode], container: &Value) -> &'a ClusterNode {
    node(nodes, container["node"].as_str().expect("node"))
}

fn gateway(node: &ClusterNode) -> String {
    node.agent.cli_json(&["health"])["dataplane"]["gateway"]
        .as_str()
        .expect("health shows the gateway")
        .to_owned()
}

/// A records for `name` from `node`'s DNS server, asked from the node's own namespace.
fn dig_node(node: &ClusterNode, name: &str) -> BTreeSet<String> {
    let gw = gateway(node);
    line_set(&node.netns.run(
        "dig",
        &[
            &format!("@{gw}"),
            name,
            "A",
            "+short",
            "+time=3",
            "+tries=1",
        ],
    ))
}

/// A records for `name` asked from inside `container` (on `node`) of its node's DNS server.
fn dig_container(node: &ClusterNode, container: &Value, name: &str) -> BTreeSet<String> {
    let gw = gateway(node);
    line_set(&run(std::process::Command::new("nsenter")
        .arg(format!(
            "--net=/run/hivemind/netns/{}/{}",
            node.name(),
            id(container)
        ))
        .args(["--", "dig", &format!("@{gw}"), name, "A", "+short"])
        .args(["+time=3", "+tries=1"])))
}

/// `curl` from the user host to `node`'s router with `Host: DOMAIN`: (status, body).
fn through_router(user: &Netns, node: &ClusterNode, path: &str) -> (u16, String) {
    let out = user.run(
        "curl",
        &[
            "-s",
            "-m",
            "5",
            "-H",
            &format!("Host: {DOMAIN}"),
            "-w",
            "\n%{http_code}",
            &format!("http://{}{path}", node.ip),
        ],
    );
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.trim().to_owned())
}

/// Which replicas answer `/id`: 30 requests through the VIP from the client container (on
/// its node) and 6 through `router`'s HTTP router from the user host. Panics if any fails.
fn answered_by(
    (client_node, client): (&ClusterNode, &str),
    vip: &str,
    user: &Netns,
    router: &ClusterNode,
) -> BTreeSet<String> {
    let answers = tally(&http_gets(&client_node.containerd, client, vip, "/id", 30));
    assert!(
        !answers.contains_key("FAIL"),
        "through the VIP: {answers:?}"
    );
    let mut ids: BTreeSet<String> = answers.into_keys().collect();
    for _ in 0..6 {
        let (code, body) = through_router(user, router, "/id");
        assert_eq!(code, 200, "through {}'s router: {body}", router.name());
        ids.insert(body);
    }
    ids
}

/// Serving replicas' addresses as the API lists them.
fn serving(node: &ClusterNode) -> BTreeSet<String> {
    containers(&node.agent, "web")
        .iter()
        .filter(|c| c["serving"] == true)
        .map(ip)
        .collect()
}

#[test]
fn cluster_services_resolve_balance_route_and_roll_across_nodes() {
    let underlay = Underlay::new();
    let options = AgentOptions {
        insecure_registries: vec![REGISTRY.to_owned()],
        extra_args: vec!["--dns-upstream".into(), "none".into()],
        ..AgentOptions::default()
    };
    let (n1, _registry, image, n2, n3) = form_three(&underlay, &options, REGISTRY);
    let nodes = [&n1, &n2, &n3];
    let user = underlay.host(USER_IP);

    // The service from node 1, its client from node 2: deploys work from any node.
    deploy_ok(
        &n1.agent,
        &image,
        "web",
        &[
            ["--replicas", "3", "--service", DOMAIN].as_slice(),
            &ID_CHECK,
        ]
        .concat(),
    );
    deploy_ok(&n2.agent, &image, "client", &[]);
    let web = wait_healthy(&n1.agent, "web", 3, TIMEOUT);
    let spread: BTreeSet<&str> = web.iter().filter_map(|c| c["node"].as_str()).collect();
    assert_eq!(spread.len(), 3, "one replica per node: {web:?}");
    let client = wait_running(&n1.agent, "client", TIMEOUT);
    let client_node = node_of(&nodes, &client);
    let client_id = id(&client);
    let ids: BTreeSet<String> = web.iter().map(id).collect();
    let ips: BTreeSet<String> = web.iter().map(ip).collect();

    // DNS: every node answers the whole service, the replicas on other nodes included, for
    // its domain and its app name; from the node and from a container.
    for node in nodes {
        wait_for(
            &format!("{} to resolve {DOMAIN}", node.name()),
            TIMEOUT,
            || (dig_node(node, DOMAIN) == ips).then_some(()),
        );
        assert_eq!(dig_node(node, "web.hivemind"), ips, "{}", node.name());
    }
    assert_eq!(dig_container(client_node, &client, DOMAIN), ips);

    // The VIP: the client's connects are spread over all three replicas, two of them on
    // other nodes.
    let vip = vip_of(&n1.agent, "web");
    let answers = tally(&http_gets(
        &client_node.containerd,
        &client_id,
        &vip,
        "/id",
        60,
    ));
    assert_eq!(
        answers.keys().cloned().collect::<BTreeSet<_>>(),
        ids,
        "every replica answers through the VIP, none fails: {answers:?}"
    );

    // The router: each node's router, reached from outside, balances over all three
    // replicas, two of them across the overlay from the node's own stack.
    for node in nodes {
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            let (code, body) = through_router(&user, node, "/id");
            assert_eq!(
                code,
                200,
                "{}'s router: {body}\nagent log:\n{}",
                node.name(),
                node.agent.log()
            );
            seen.insert(body);
        }
        assert_eq!(seen, ids, "{}'s router reaches every replica", node.name());
    }
    // And the node itself reaches a container on another node directly.
    let remote = web
        .iter()
        .find(|c| c["node"] != n1.name())
        .expect("a replica off node 1");
    let out = n1.netns.run(
        "curl",
        &["-sf", "-m", "5", &format!("http://{}/id", ip(remote))],
    );
    assert_eq!(stdout(&out).trim(), id(remote), "{}", stderr(&out));

    // A replica killed on a node other than the client's and node 1's leaves every node's
    // DNS, the client's VIP and node 1's router, then is replaced.
    let victim = web
        .iter()
        .find(|c| c["node"] != client_node.name() && c["node"] != n1.name())
        .or_else(|| web.iter().find(|c| c["node"] != n1.name()))
        .expect("a replica off node 1");
    let victim_ip = ip(victim);
    node_of(&nodes, victim).containerd.ctr_ok(&[
        "-n",
        "hivemind",
        "task",
        "kill",
        "-s",
        "SIGKILL",
        &id(victim),
    ]);
    for node in nodes {
        wait_for(
            &format!("the killed replica to leave {}'s DNS", node.name()),
            TIMEOUT,
            || (!dig_node(node, DOMAIN).contains(&victim_ip)).then_some(()),
        );
    }
    answered_by((client_node, &client_id), &vip, &user, &n1);
    let web = wait_healthy(&n1.agent, "web", 3, TIMEOUT);
    let ids: BTreeSet<String> = web.iter().map(id).collect();

    // An unhealthy replica on another node than node 1 leaves node 1's view — DNS, the
    // records the router follows — within about one check interval of failing, and neither
    // the VIP nor the router sends anything to it.
    let sick = web
        .iter()
        .find(|c| c["node"] != n1.name())
        .expect("a replica off node 1");
    let (sick_id, sick_ip) = (id(sick), ip(sick));
    let out = exec(
        &node_of(&nodes, sick).containerd,
        &sick_id,
        "touch /tmp/sick",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let left_dns = time_until("the sick replica to leave node 1's DNS", TIMEOUT, || {
        !dig_node(&n1, DOMAIN).contains(&sick_ip)
    });
    assert!(!serving(&n1).contains(&sick_ip));
    println!(
        "an unhealthy replica on another node left node 1's DNS {left_dns:?} after it turned sick (check interval 1 s)"
    );
    assert!(
        left_dns < Duration::from_secs(5),
        "left node 1's DNS {left_dns:?} after turning sick"
    );
    let answered = answered_by((client_node, &client_id), &vip, &user, &n1);
    assert!(!answered.contains(&sick_id), "{answered:?}");
    // Cured (its restarts keep the container's files, so it stays sick until told), it is
    // healthy again.
    let sick_node = node_of(&nodes, sick);
    wait_for("the sick replica cured", TIMEOUT, || {
        exec(&sick_node.containerd, &sick_id, "rm -f /tmp/sick")
            .status
            .success()
            .then_some(())
    });
    wait_healthy(&n1.agent, "web", 3, TIMEOUT);

    // A rolling restart, started on node 3, under continuous requests: the client container
    // through the VIP, and the user host through node 1's router. None may fail.
    let mut load = LoadClient::start(&client_node.containerd, &client_id);
    load.target(&client_node.containerd, std::slice::from_ref(&vip));
    let flags = tempfile::tempdir().expect("temp dir");
    let stop = flags.path().join("stop");
    let mut outside = Process::spawn(
        "router client",
        user.command("sh").args([
            "-c",
            &format!(
                "ok=0; fail=0; while [ ! -f {stop} ]; do \
                   code=$(curl -s -o /dev/null -m 5 -w '%{{http_code}}' -H 'Host: {DOMAIN}' http://{ip}/); \
                   if [ \"$code\" = 200 ]; then ok=$((ok+1)); else fail=$((fail+1)); echo \"FAIL $(date +%T) $code\"; fi; \
                   sleep 0.05; \
                 done; echo \"ok=$ok fail=$fail\"",
                stop = stop.display(),
                ip = n1.ip
            ),
        ]),
        &flags.path().join("router-client.log"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let restart = n3.agent.cli(&["app", "restart", "--name", "web"]);
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&stop, "").expect("stop flag");
    wait_for("the router client to finish", TIMEOUT, || outside.exited());
    let router_out = outside.log();
    let (ok, failed, log) = load.stop(&client_node.containerd);
    assert!(
        restart.status.success(),
        "restart: {}{}",
        stdout(&restart),
        stderr(&restart)
    );
    println!(
        "rolling restart across 3 nodes: {ok} VIP requests, {failed} failed; router: {}",
        router_out.lines().last().unwrap_or_default()
    );
    assert_eq!(failed, 0, "VIP requests failed during the restart:\n{log}");
    assert!(ok >= 20, "the client kept requesting: {log}");
    assert!(
        router_out.contains(" fail=0") && !router_out.contains("ok=0 "),
        "router requests during the restart:\n{router_out}"
    );
    let after: BTreeSet<String> = wait_healthy(&n1.agent, "web", 3, TIMEOUT)
        .iter()
        .map(id)
        .collect();
    assert!(
        after.is_disjoint(&ids),
        "every replica replaced: {ids:?} -> {after:?}"
    );
}
