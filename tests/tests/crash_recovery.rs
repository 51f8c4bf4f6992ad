//! The agent killed (SIGKILL) at every step of a container's lifecycle — during a deploy, a
//! scale up and a scale down — and started again: each time the node must converge to records
//! that match what really exists. `HIVEMIND_CRASH_AFTER_STEPS=N` makes the agent kill itself
//! after the N-th lifecycle step (a store write or a side effect: namespace, link, containerd
//! container, task), so a sweep over N crashes it between every pair of steps.
//!
//! After every restart: the exact replica count; no orphan containerd container, task, network
//! namespace, address claim or endpoint; every container's record IP is the address on its
//! `eth0`, and it is in DNS, the VIP's backends and the HTTP router.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use hivemind_agent::{crashpoint, model::keys, store::Store};
use hivemind_tests::{
    AgentOptions, NODE_IP, SingleNode,
    apps::{self, ID_CHECK},
    maps,
    util::{line_set, stderr, stdout, wait_for},
};

const APP: &str = "burst";
const TIMEOUT: Duration = Duration::from_secs(60);
/// Enough to see a crash point reached, or the operation finish without one.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// Restarts the agent with the crash point armed at step `step`, runs `hivemind ARGS`, and
/// returns whether the agent died at that step (it is started again, disarmed, either way).
fn crash_during(node: &mut SingleNode, step: u64, args: &[&str]) -> bool {
    node.agent.stop();
    node.agent.set_env(crashpoint::ENV, Some(&step.to_string()));
    node.agent.start_again();
    let out = node.agent.cli(args);
    let crashed = node.agent.wait_exit(if out.status.success() {
        Duration::ZERO
    } else {
        OPERATION_TIMEOUT
    });
    if crashed {
        if !out.status.success() {
            let err = stderr(&out);
            assert!(
                err.contains("lost the connection to the agent"),
                "hivemind {args:?} at step {step}: {err}"
            );
        }
    } else {
        assert!(
            out.status.success(),
            "hivemind {args:?} failed without a crash: {}{}\n{}",
            stdout(&out),
            stderr(&out),
            node.agent.log()
        );
        node.agent.stop();
    }
    node.agent.set_env(crashpoint::ENV, None);
    node.agent.start_again();
    crashed
}

fn gateway(node: &SingleNode) -> String {
    node.agent.cli_json(&["health"])["dataplane"]["gateway"]
        .as_str()
        .expect("health shows the gateway")
        .to_owned()
}

/// Addresses `dig` gets for `name` from the node's DNS server.
fn dns(node: &SingleNode, gateway: &str, name: &str) -> BTreeSet<String> {
    line_set(&node.netns.run(
        "dig",
        &[
            &format!("@{gateway}"),
            name,
            "A",
            "+short",
            "+time=3",
            "+tries=1",
        ],
    ))
}

/// The replica ids the HTTP router answers `/id` with over `count` requests from the world.
fn through_router(node: &SingleNode, count: usize) -> BTreeSet<String> {
    let world = node.world.as_ref().expect("world");
    (0..count)
        .map(|_| {
            stdout(&world.netns.run(
                "curl",
                &[
                    "-s",
                    "-m",
                    "5",
                    "-H",
                    &format!("Host: {APP}.hivemind"),
                    &format!("http://{NODE_IP}/id"),
                ],
            ))
            .trim()
            .to_owned()
        })
        .collect()
}

/// The VIP's current backends (addresses) in the balancer's maps.
fn vip_backends(node: &SingleNode, vip: &str) -> BTreeSet<String> {
    maps::vip_backends(&node.agent.pin_dir(), vip)
        .map(|(_, backends)| backends.into_iter().map(maps::dotted).collect())
        .unwrap_or_default()
}

/// Addresses with an endpoint in the dataplane (local containers).
fn endpoints(node: &SingleNode) -> BTreeSet<String> {
    maps::dump(&node.agent.pin_dir().join("HM_ENDPOINTS"))
        .into_iter()
        .filter_map(|e| e["key"].as_u64().map(maps::dotted))
        .collect()
}

/// The IPv4 address on `eth0` in container `id`'s namespace.
fn eth0(node: &SingleNode, id: &str) -> BTreeSet<String> {
    let out = node.in_container(id, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
    stdout(&out)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(|a| a.split('/').next().unwrap_or_default().to_owned())
        .into_iter()
        .collect()
}

/// Everything that must hold once the node has converged to `replicas` containers of the app
/// (and nothing else).
fn assert_converged(node: &mut SingleNode, replicas: usize, context: &str) {
    let started = Instant::now();
    let records = wait_for(
        &format!("{replicas} serving replicas ({context})"),
        TIMEOUT,
        || {
            let all = apps::containers(&node.agent, APP);
            (all.len() == replicas && all.iter().all(|c| c["serving"] == true)).then_some(all)
        },
    );
    let ids: BTreeSet<String> = records.iter().map(apps::id).collect();
    let ips: BTreeSet<String> = records.iter().map(apps::ip).collect();
    assert_eq!(
        ips.len(),
        replicas,
        "{context}: an address twice: {records:?}"
    );
    for record in &records {
        let id = apps::id(record);
        assert_eq!(
            eth0(node, &id),
            BTreeSet::from([apps::ip(record)]),
            "{context}: {id}'s record IP is not its eth0 address"
        );
    }
    let everything = |what: &str, got: BTreeSet<String>, want: &BTreeSet<String>| {
        assert_eq!(&got, want, "{context}: {what}");
    };
    everything(
        "containerd containers",
        node.containerd_containers().into_iter().collect(),
        &ids,
    );
    everything(
        "running tasks",
        node.running_tasks().into_iter().collect(),
        &ids,
    );
    everything(
        "network namespaces",
        node.netns_entries().into_iter().collect(),
        &ids,
    );
    everything("dataplane endpoints", endpoints(node), &ips);
    let gw = gateway(node);
    let vip = apps::vip_of(&node.agent, APP);
    // Service records follow the store within a moment of the records.
    wait_for(&format!("DNS and the VIP ({context})"), TIMEOUT, || {
        (dns(node, &gw, &format!("{APP}.hivemind")) == ips && vip_backends(node, &vip) == ips)
            .then_some(())
    });
    everything("router answers", through_router(node, 2 * replicas), &ids);

    // The store, read while the agent is stopped: the records and one address claim each.
    node.agent.stop();
    let store = Store::open_redb(&node.agent.data_dir().join("state.redb")).expect("open redb");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (claims, stored) = runtime.block_on(async {
        let (claims, _) = store
            .range("/hivemind/ipam/addresses/")
            .await
            .expect("claims");
        let (stored, _) = store.range(keys::CONTAINERS).await.expect("records");
        (claims, stored)
    });
    drop(store);
    let claimed: BTreeSet<(String, String)> = claims
        .iter()
        .map(|kv| {
            let ip = kv.key.rsplit('/').next().unwrap_or_default().to_owned();
            (ip, String::from_utf8_lossy(&kv.value).into_owned())
        })
        .collect();
    let expected: BTreeSet<(String, String)> =
        records.iter().map(|r| (apps::ip(r), apps::id(r))).collect();
    assert_eq!(claimed, expected, "{context}: address claims");
    assert_eq!(stored.len(), replicas, "{context}: stored records");
    node.agent.start_again();
    eprintln!(
        "{context}: converged and checked in {:?}",
        started.elapsed()
    );
}

fn world_node() -> SingleNode {
    SingleNode::start_with_world(&AgentOptions {
        extra_args: vec!["--dns-upstream".into(), "none".into()],
        ..AgentOptions::default()
    })
}

fn deploy_args(image: &str, replicas: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "app",
        "deploy",
        "--image",
        image,
        "--name",
        APP,
        "--replicas",
        replicas,
        "--stop-timeout",
        "1",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    args.extend(ID_CHECK.iter().map(|a| (*a).to_owned()));
    args
}

/// Runs the sweep: `operation` with a crash at step 1, 2, ... until it completes without
/// reaching the crash point; `check` after each restart, `reset` before the next step.
fn sweep(
    node: &mut SingleNode,
    what: &str,
    args: &[String],
    mut after: impl FnMut(&mut SingleNode, &str),
) -> u64 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for step in 1.. {
        let crashed = crash_during(node, step, &args);
        let context = format!("{what}, crash after step {step}");
        after(node, &context);
        if !crashed {
            eprintln!("{what}: {} steps, every one survived", step - 1);
            return step - 1;
        }
        assert!(step < 100, "{what}: the crash point keeps being reached");
    }
    unreachable!()
}

#[test]
fn a_crash_at_any_step_of_a_deploy_converges_to_true_records() {
    let mut node = world_node();
    let args = deploy_args(&node.image, "2");
    let steps = sweep(&mut node, "deploy of 2", &args, |node, context| {
        assert_converged(node, 2, context);
        // Back to nothing for the next step: and nothing is left behind.
        node.agent.cli_ok(&["app", "rm", "--name", APP]);
        assert!(node.containerd_containers().is_empty(), "{context}");
        assert!(node.netns_entries().is_empty(), "{context}");
        assert!(endpoints(node).is_empty(), "{context}");
    });
    // Seven steps a container: recorded, namespace, attached, address recorded, containerd
    // container, task, recorded running.
    assert_eq!(steps, 14);
}

#[test]
fn a_crash_at_any_step_of_a_scale_converges_to_true_records() {
    let mut node = world_node();
    let deploy = deploy_args(&node.image, "2");
    node.agent
        .cli_ok(&deploy.iter().map(String::as_str).collect::<Vec<_>>());
    assert_converged(&mut node, 2, "deployed");
    let scale = |replicas: &str| -> Vec<String> {
        ["app", "scale", "--name", APP, "--replicas", replicas]
            .iter()
            .map(|a| (*a).to_owned())
            .collect()
    };
    // One step number for both directions at a time: a crash scaling up to 4, then one
    // scaling back down to 2; a direction whose sweep is done just scales.
    let mut done: [Option<u64>; 2] = [None, None];
    for step in 1..100 {
        for (direction, (replicas, count)) in [("4", 4), ("2", 2)].into_iter().enumerate() {
            let args = scale(replicas);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if done[direction].is_some() {
                node.agent.cli_ok(&args);
                continue;
            }
            if !crash_during(&mut node, step, &args) {
                done[direction] = Some(step - 1);
            }
            let context = format!("scale to {replicas}, crash after step {step}");
            assert_converged(&mut node, count, &context);
        }
        if done.iter().all(Option::is_some) {
            break;
        }
    }
    // Seven steps a new container; six a removal: recorded stopping, task stopped,
    // containerd container deleted, detached, namespace removed, record deleted.
    assert_eq!(done, [Some(14), Some(12)]);
}
