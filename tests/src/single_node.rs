//! A whole single-node setup: a namespace "host" with a registry holding the test image, a
//! private containerd, and an agent that may pull from that registry over plain HTTP.

use crate::{Agent, AgentOptions, Containerd, Netns, Registry};

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
}

impl SingleNode {
    pub fn start() -> Self {
        Self::start_with(&AgentOptions::default())
    }

    pub fn start_with(options: &AgentOptions) -> Self {
        let netns = Netns::new("hmn");
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
        }
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
