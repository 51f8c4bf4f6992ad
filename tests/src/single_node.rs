//! A whole single-node setup: a namespace "host" with a registry holding the test image, a
//! private containerd, and an agent that may pull from that registry over plain HTTP.

use std::process::{Command, Output};

use crate::{Agent, AgentOptions, Containerd, Netns, Registry, util::run, veth};

/// The node's address on the link to [`World`], and the world's.
pub const NODE_IP: &str = "192.0.2.1";
pub const WORLD_IP: &str = "192.0.2.2";

/// A second namespace standing for "the rest of the network": linked to the node by a veth,
/// the node's default route points at it. Published ports are reached from here.
#[derive(Debug)]
pub struct World {
    pub netns: Netns,
    /// The node's side of the link (its uplink).
    pub uplink: String,
    /// The world's side of the link.
    pub peer: String,
}

/// Where the registry listens inside the node's namespace.
pub const REGISTRY_ADDR: &str = "127.0.0.1:5000";

#[derive(Debug)]
pub struct SingleNode {
    // Drop order: agent first (it stops nothing on exit, but must not outlive containerd's
    // teardown mid-request), then containerd (kills leftover containers), registry, namespace.
    pub agent: Agent,
    pub containerd: Containerd,
    pub registry: Registry,
    pub netns: Netns,
    /// The test image's reference in the node's registry.
    pub image: String,
    /// Present when started with [`SingleNode::start_with_world`].
    pub world: Option<World>,
}

impl SingleNode {
    pub fn start() -> Self {
        Self::start_with(&AgentOptions::default())
    }

    /// A node whose uplink leads to a [`World`] namespace (for published ports and traffic
    /// leaving the cluster).
    pub fn start_with_world(options: &AgentOptions) -> Self {
        let netns = Netns::new("hmn");
        let world_ns = Netns::new("hmw");
        let (uplink, peer) = veth(
            &netns,
            &format!("{NODE_IP}/24"),
            &world_ns,
            &format!("{WORLD_IP}/24"),
        );
        netns.ip(&["route", "add", "default", "via", WORLD_IP]);
        Self::start_in(
            netns,
            options,
            Some(World {
                netns: world_ns,
                uplink,
                peer,
            }),
        )
    }

    pub fn start_with(options: &AgentOptions) -> Self {
        Self::start_in(Netns::new("hmn"), options, None)
    }

    fn start_in(netns: Netns, options: &AgentOptions, world: Option<World>) -> Self {
        let registry = Registry::start_in(&netns, REGISTRY_ADDR);
        let image = registry.push_test_image("hivemind/test:1");
        let containerd = Containerd::start();
        let mut options = options.clone();
        options.insecure_registries.push(REGISTRY_ADDR.to_owned());
        let agent = Agent::start(&netns, &containerd, &options);
        Self {
            agent,
            containerd,
            registry,
            netns,
            image,
            world,
        }
    }

    /// Runs `program args` inside container `id`'s network namespace (the host's tools, the
    /// container's network: addresses, routes, and the datapath's programs on its veth).
    pub fn in_container(&self, id: &str, program: &str, args: &[&str]) -> Output {
        run(Command::new("nsenter")
            .arg(format!(
                "--net=/run/hivemind/netns/{}/{id}",
                self.agent.node_name()
            ))
            .arg("--")
            .arg(program)
            .args(args))
    }

    /// The container network namespaces the agent has made (`/run/hivemind/netns/<node>/`),
    /// sorted.
    pub fn netns_entries(&self) -> Vec<String> {
        let mut entries: Vec<String> = std::fs::read_dir(
            std::path::Path::new("/run/hivemind/netns").join(self.agent.node_name()),
        )
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
        entries.sort();
        entries
    }

    /// containerd's namespace for the agent's containers.
    pub fn ns(&self) -> &'static str {
        "hivemind"
    }

    /// Container ids containerd has in the agent's namespace.
    pub fn containerd_containers(&self) -> Vec<String> {
        self.containerd.containers(self.ns())
    }

    /// Ids of running tasks, from containerd.
    pub fn running_tasks(&self) -> Vec<String> {
        String::from_utf8_lossy(
            &self
                .containerd
                .ctr(&["-n", self.ns(), "tasks", "ls"])
                .stdout,
        )
        .lines()
        .skip(1)
        .filter(|line| line.split_whitespace().nth(2) == Some("RUNNING"))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
    }
}
