//! Service VIPs on one node with real containers: a client container's `wget` to the VIP is
//! spread over the replicas, keeps working after one is killed, avoids an unhealthy one, and
//! the VIP and its map entries go away with the app. The requests run inside the client
//! container (`ctr task exec`), so they come from its cgroup, where the socket programs hook.

// Each test is one scenario that reads top to bottom.
#![allow(clippy::too_many_lines)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use hivemind_tests::{
    SingleNode,
    apps::{self, id, tally},
    maps::{self, dump, wire},
    util::{hivemind_bin, run, stderr, stdout, wait_for},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn deploy_web(node: &SingleNode, name: &str, replicas: &str) {
    let mut args = vec!["--replicas", replicas];
    args.extend(apps::ID_CHECK);
    apps::deploy_ok(&node.agent, &node.image, name, &args);
}

fn containers(node: &SingleNode, app: &str) -> Vec<Value> {
    apps::containers(&node.agent, app)
}

fn vip_of(node: &SingleNode, app: &str) -> String {
    apps::vip_of(&node.agent, app)
}

fn wait_healthy(node: &SingleNode, app: &str, count: usize) -> Vec<Value> {
    apps::wait_healthy(&node.agent, app, count, TIMEOUT)
}

fn exec(node: &SingleNode, id: &str, script: &str) -> std::process::Output {
    apps::exec(&node.containerd, id, script)
}

/// `count` GETs of `path` on `host`:80 from the client container (see [`apps::http_gets`]).
fn requests(node: &SingleNode, client: &str, host: &str, path: &str, count: u32) -> Vec<String> {
    apps::http_gets(&node.containerd, client, host, path, count)
}

/// (count, backends) the maps hold for `vip`'s TCP entry, if any.
fn installed(node: &SingleNode, vip: &str) -> Option<(u64, Vec<u64>)> {
    maps::vip_backends(&node.agent.pin_dir(), vip)
}

#[test]
fn the_vip_spreads_over_healthy_replicas_and_follows_failures() {
    let node = SingleNode::start();
    deploy_web(&node, "web", "3");
    apps::deploy_ok(&node.agent, &node.image, "client", &[]);
    let web = wait_healthy(&node, "web", 3);
    let client = wait_for("the client running", TIMEOUT, || {
        containers(&node, "client")
            .into_iter()
            .find(|c| c["state"] == "running")
    });
    let client = id(&client);

    // Every app has its VIP, shown by app ls, container-info and on each container.
    let vip = vip_of(&node, "web");
    assert!(vip.starts_with("10.96."), "{vip}");
    assert_ne!(vip, vip_of(&node, "client"));
    let info = node
        .agent
        .cli_ok(&["app", "container-info", "--container-id", &id(&web[0])]);
    assert!(info.contains(&format!("VIP        {vip}")), "{info}");
    assert!(web.iter().all(|c| c["vip"] == vip.as_str()), "{web:?}");
    let table = node.agent.cli_ok(&["app", "ls"]);
    assert!(table.contains(&vip), "{table}");

    // Spread: 60 requests reach all three replicas, none fails.
    let answers = tally(&requests(&node, &client, &vip, "/id", 60));
    let ids: Vec<String> = web.iter().map(id).collect();
    if answers.contains_key("FAIL") {
        let one = exec(
            &node,
            &client,
            &format!("echo | nc -w 3 {vip} 80; cat /proc/self/cgroup"),
        );
        let maps = (
            dump(&node.agent.pin_dir().join("HM_LB_SERVICES")),
            dump(&node.agent.pin_dir().join("HM_LB_BACKENDS")),
        );
        let links = stdout(&run(Command::new("bpftool").args(["cgroup", "tree"])));
        panic!(
            "{answers:?}\n{}\n{}\n{maps:?}\n{links}\n{}",
            stdout(&one),
            stderr(&one),
            node.agent.log()
        );
    }
    assert!(!answers.contains_key("FAIL"), "{answers:?}");
    assert_eq!(
        answers.keys().cloned().collect::<Vec<_>>(),
        {
            let mut sorted = ids.clone();
            sorted.sort();
            sorted
        },
        "every replica answers through the VIP: {answers:?}"
    );
    let (count, _) = installed(&node, &vip).expect("VIP in the maps");
    assert_eq!(count, 3);

    // Kill one replica: once its record says so, every request still succeeds.
    let victim = ids[0].clone();
    node.containerd
        .ctr_ok(&["-n", node.ns(), "task", "kill", "-s", "SIGKILL", &victim]);
    wait_for("the killed replica to leave the VIP", TIMEOUT, || {
        installed(&node, &vip).filter(|(count, _)| *count < 3)
    });
    let answers = tally(&requests(&node, &client, &vip, "/id", 30));
    assert!(!answers.contains_key("FAIL"), "{answers:?}");
    wait_healthy(&node, "web", 3);

    // An unhealthy replica leaves the VIP within one check interval of its verdict.
    let sick = ids[1].clone();
    let sick_ip = web[1]["ip"].as_str().expect("ip").to_owned();
    let out = exec(&node, &sick, "touch /tmp/sick");
    assert!(out.status.success(), "{}", stderr(&out));
    // Unhealthy, then restarted by the monitor (starting, failing again): out either way.
    wait_for("the sick replica to fail its check", TIMEOUT, || {
        containers(&node, "web")
            .into_iter()
            .find(|c| id(c) == sick && c["health"] != "healthy")
    });
    let verdict = Instant::now();
    wait_for("the sick replica to leave the maps", TIMEOUT, || {
        installed(&node, &vip).filter(|(_, backends)| !backends.contains(&wire(&sick_ip)))
    });
    // A bound, not a benchmark: the maps follow the record within a sync (milliseconds on a
    // quiet machine); a shared CI machine gets slack.
    let left_after = verdict.elapsed();
    println!("the sick replica left the VIP {left_after:?} after its verdict");
    assert!(
        left_after < Duration::from_secs(5),
        "left the VIP {left_after:?} after the verdict"
    );
    let answers = tally(&requests(&node, &client, &vip, "/id", 30));
    assert!(!answers.contains_key("FAIL"), "{answers:?}");
    assert!(!answers.contains_key(&sick), "{answers:?}");
    assert!(
        answers.len() >= 2,
        "the two healthy replicas share: {answers:?}"
    );
}

#[test]
fn removing_the_app_frees_its_vip_and_map_entries() {
    let mut node = SingleNode::start();
    deploy_web(&node, "first", "1");
    deploy_web(&node, "second", "2");
    wait_healthy(&node, "second", 2);
    let (first, second) = (vip_of(&node, "first"), vip_of(&node, "second"));
    assert_ne!(first, second);

    // The VIP is stable across an agent restart, and balancing goes on meanwhile.
    node.agent.restart();
    assert_eq!(vip_of(&node, "second"), second);
    wait_for("second's VIP back in the maps", TIMEOUT, || {
        installed(&node, &second).filter(|(count, _)| *count == 2)
    });
    let links: Vec<String> = std::fs::read_dir(node.agent.pin_dir())
        .expect("pins")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("lb_link_"))
        .collect();
    assert_eq!(links.len(), 3, "{links:?}");

    node.agent.cli_ok(&["app", "rm", "--name", "second"]);
    wait_for("second's VIP gone from the maps", TIMEOUT, || {
        installed(&node, &second).is_none().then_some(())
    });
    let id = wire(&second);
    let leftovers: Vec<Value> = dump(&node.agent.pin_dir().join("HM_LB_BACKENDS"))
        .into_iter()
        .filter(|e| e["key"]["id"] == id)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The address is free again: the next app gets it.
    deploy_web(&node, "third", "1");
    assert_eq!(vip_of(&node, "third"), second);
    assert_eq!(vip_of(&node, "first"), first);
}

#[test]
fn a_bad_service_cidr_exits_64_and_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (cidr, why) in [
        ("10.244.0.0/20", "overlaps the cluster CIDR"),
        ("10.96.0.1/16", "host bits are set"),
        ("10.96.0.0/30", "/28 or larger"),
        ("banana", "expected an IPv4 CIDR"),
    ] {
        let out = run(Command::new(hivemind_bin())
            .args(["agent", "--node-name", "vipcheck", "--data-dir"])
            .arg(dir.path())
            .args(["--service-cidr", cidr]));
        assert_eq!(out.status.code(), Some(64), "{cidr}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("--service-cidr") && err.contains(why),
            "{cidr}: {err}"
        );
    }
}
