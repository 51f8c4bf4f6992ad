//! Changes made while etcd elects a new leader, on a three-node cluster (namespace "hosts",
//! each with its containerd, agent and etcd member): a deploy, a scale, a policy apply and an
//! app removal are sent through a node whose member is not the leader, and the leader's member
//! is killed (SIGKILL) a moment later — at a sweep of delays. Whatever the CLI answers must be
//! what the store holds afterwards: success means the change is there, a failure that it is
//! not, and only "may have been applied" (exit 75) leaves either open.

// One scenario that reads top to bottom.
#![allow(clippy::too_many_lines)]

use std::{
    process::Output,
    thread,
    time::{Duration, Instant},
};

use hivemind_agent::model::{AppSpec, keys};
use hivemind_tests::{
    AgentOptions,
    cluster::{ClusterNode, EtcdView, Underlay, form_three},
    util::{stderr, stdout, wait_for},
};

/// The registry listens on node 1's underlay address, so every node pulls from it.
const REGISTRY: &str = "192.0.2.11:5000";
/// When the leader's member dies after the command was started: from at once (the request
/// arrives during the election) to well into the change (a policy apply takes about 0.1 s, a
/// deploy, scale or removal 0.5 to 2 s).
const DELAYS: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(400),
];
const RECOVERY: Duration = Duration::from_secs(90);
/// `hivemind`'s exit code for "the store did not confirm the change; it may have been applied".
const UNCONFIRMED: i32 = 75;

/// One change and how to see it in the store.
enum Change {
    Deploy(String),
    Scale(u32),
    Policy(String),
    Remove(String),
}

impl Change {
    fn args(&self, image: &str, policy_file: &str) -> Vec<String> {
        let words: Vec<&str> = match self {
            Self::Deploy(name) => vec![
                "app",
                "deploy",
                "--image",
                image,
                "--name",
                name,
                "--stop-timeout",
                "1",
            ],
            Self::Scale(replicas) => {
                return ["app", "scale", "--name", "web", "--replicas"]
                    .iter()
                    .map(|w| (*w).to_owned())
                    .chain([replicas.to_string()])
                    .collect();
            }
            Self::Policy(_) => vec!["policy", "apply", "-f", policy_file],
            Self::Remove(name) => vec!["app", "rm", "--name", name],
        };
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    /// Whether the store holds the change.
    fn applied(&self, etcd: &EtcdView) -> bool {
        match self {
            Self::Deploy(name) => etcd.get(&keys::app(name)).is_some(),
            Self::Scale(replicas) => etcd
                .get(&keys::app("web"))
                .and_then(|v| serde_json::from_slice::<AppSpec>(&v).ok())
                .is_some_and(|app| app.replicas == *replicas),
            Self::Policy(name) => etcd.get(&keys::policy(name)).is_some(),
            Self::Remove(name) => etcd.get(&keys::app(name)).is_none(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Deploy(name) => format!("deploy {name}"),
            Self::Scale(replicas) => format!("scale web to {replicas}"),
            Self::Policy(name) => format!("apply policy {name}"),
            Self::Remove(name) => format!("rm {name}"),
        }
    }
}

/// The member name of the leader, once every member knows the same one.
fn settled_leader(views: &[EtcdView]) -> String {
    wait_for("every member to agree on a leader", RECOVERY, || {
        let leaders: Vec<Option<String>> = views.iter().map(EtcdView::leader).collect();
        match leaders.first() {
            Some(Some(first)) if leaders.iter().all(|l| l.as_ref() == Some(first)) => {
                Some(first.clone())
            }
            _ => None,
        }
    })
}

#[test]
fn changes_during_an_etcd_election_are_reported_as_they_are_stored() {
    let underlay = Underlay::new();
    let options = AgentOptions {
        insecure_registries: vec![REGISTRY.to_owned()],
        ..AgentOptions::default()
    };
    let (n1, _registry, image, n2, n3) = form_three(&underlay, &options, REGISTRY);
    let nodes = [&n1, &n2, &n3];
    n1.agent.cli_ok(&[
        "app",
        "deploy",
        "--image",
        &image,
        "--name",
        "web",
        "--replicas",
        "2",
        "--stop-timeout",
        "1",
    ]);
    let views: Vec<EtcdView> = nodes.iter().map(|n| EtcdView::of(n)).collect();
    let dir = tempfile::tempdir().expect("temp dir");

    let mut outcomes = Vec::new();
    let mut replicas = 2;
    for (round, delay) in DELAYS.iter().enumerate() {
        let changes = [
            Change::Deploy(format!("e{round}")),
            Change::Scale({
                replicas = if replicas == 2 { 3 } else { 2 };
                replicas
            }),
            Change::Policy(format!("p{round}")),
            Change::Remove(format!("e{round}")),
        ];
        for change in changes {
            let leader = settled_leader(&views);
            let at = nodes
                .iter()
                .position(|n| n.name() == leader)
                .expect("the leader is a node");
            let victim: &ClusterNode = nodes[at];
            let via: &ClusterNode = nodes[(at + 1) % nodes.len()];
            let policy_file = dir.path().join(format!("p{round}.yaml"));
            std::fs::write(
                &policy_file,
                format!(
                    "apiVersion: hivemind/v1\nkind: NetworkPolicy\nmetadata: {{ name: p{round} }}\nspec:\n  selector: {{ app: web }}\n  ingress:\n    - from: [ {{ cidr: 10.0.0.0/8 }} ]\n"
                ),
            )
            .expect("write the policy");
            let args = change.args(&image, &policy_file.display().to_string());

            let started = Instant::now();
            let out: Output = thread::scope(|scope| {
                let cli = scope.spawn(|| {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    via.agent.cli(&args)
                });
                thread::sleep(*delay);
                victim.agent.kill_etcd();
                cli.join().expect("the CLI thread")
            });
            let took = started.elapsed();
            // The killed member is restarted by its agent and catches up.
            let back = settled_leader(&views);
            let applied = change.applied(&views[(at + 1) % nodes.len()]);
            let code = out.status.code().unwrap_or(-1);
            eprintln!(
                "{} via {} with leader {leader} killed after {delay:?}: exit {code} in {took:.1?} (stored: {applied}; new leader {back}){}",
                change.describe(),
                via.name(),
                if out.status.success() {
                    String::new()
                } else {
                    format!(": {}", stderr(&out).trim())
                }
            );
            match code {
                0 => assert!(
                    applied,
                    "{} succeeded but the store does not hold it:\n{}",
                    change.describe(),
                    stdout(&out)
                ),
                UNCONFIRMED => assert!(
                    stderr(&out).contains("may have been applied"),
                    "{}",
                    stderr(&out)
                ),
                _ => assert!(
                    !applied,
                    "{} was reported as failed but the store holds it: {}",
                    change.describe(),
                    stderr(&out)
                ),
            }
            outcomes.push(code);
        }
    }
    let succeeded = outcomes.iter().filter(|c| **c == 0).count();
    eprintln!(
        "{succeeded} of {} changes succeeded through an election; exit codes {outcomes:?}",
        outcomes.len()
    );
    assert!(
        succeeded * 4 >= outcomes.len() * 3,
        "most changes must ride through an election: {outcomes:?}"
    );
}
