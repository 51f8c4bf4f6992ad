//! Multi-node setups: node namespaces on one "underlay" (a bridge in a hub namespace), each
//! with its own containerd and agent, and the agents' etcd members inside the namespaces.

use std::{path::PathBuf, process::Command, time::Duration};

use hivemind_agent::{
    cluster::NodeTls,
    store::{EtcdTls, Member, Store},
};

use crate::{
    Agent, AgentOptions, Containerd, Netns, Registry,
    node::NodeRuntime,
    util::{check, unique, wait_for},
};

/// The underlay's network; node `i` (from 1) is `192.0.2.(10+i)`.
pub const UNDERLAY_PREFIX: &str = "192.0.2.";

/// A bridge in a hub namespace that node namespaces plug into, like hosts on one switch.
#[derive(Debug)]
pub struct Underlay {
    hub: Netns,
    bridge: String,
}

impl Underlay {
    pub fn new() -> Self {
        let hub = Netns::new("hmhub");
        let bridge = "br0".to_owned();
        hub.ip(&["link", "add", &bridge, "type", "bridge"]);
        hub.ip(&["link", "set", &bridge, "up"]);
        Self { hub, bridge }
    }

    /// A new node namespace plugged into the bridge with `ip`/24 on its `eth0`.
    pub fn host(&self, ip: &str) -> Netns {
        let node = Netns::new("hmcn");
        let hub_side = unique("hb");
        check(Command::new("ip").args([
            "link",
            "add",
            "eth0",
            "netns",
            node.name(),
            "type",
            "veth",
            "peer",
            "name",
            &hub_side,
            "netns",
            self.hub.name(),
        ]));
        self.hub
            .ip(&["link", "set", &hub_side, "master", &self.bridge]);
        self.hub.ip(&["link", "set", &hub_side, "up"]);
        node.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        node.ip(&["link", "set", "eth0", "up"]);
        node
    }
}

impl Default for Underlay {
    fn default() -> Self {
        Self::new()
    }
}

/// One node: a namespace on the underlay, a containerd and an agent.
#[derive(Debug)]
pub struct ClusterNode {
    // Drop order: agent (stops its etcd member), containerd, namespace.
    pub agent: Agent,
    pub containerd: Containerd,
    pub netns: Netns,
    pub ip: String,
}

impl ClusterNode {
    /// Node `index` (1-based) named `name`, its agent on `--node-ip` / `--underlay-iface eth0`
    /// plus `extra` arguments. Not in a cluster yet unless `extra` has `--cluster-init`.
    pub fn start(
        underlay: &Underlay,
        index: u8,
        name: &str,
        extra: &[&str],
        options: &AgentOptions,
    ) -> Self {
        let ip = format!("{UNDERLAY_PREFIX}{}", 10 + index);
        let netns = underlay.host(&ip);
        Self::start_in(netns, &ip, name, extra, options)
    }

    /// A node in an existing namespace.
    pub fn start_in(
        netns: Netns,
        ip: &str,
        name: &str,
        extra: &[&str],
        options: &AgentOptions,
    ) -> Self {
        let containerd = Containerd::start();
        let mut options = options.clone();
        options.node_name = Some(name.to_owned());
        options.extra_args.extend(
            ["--node-ip", ip, "--underlay-iface", "eth0"]
                .iter()
                .chain(extra)
                .map(|a| (*a).to_owned()),
        );
        let agent = Agent::start(&netns, &containerd, &options);
        Self {
            agent,
            containerd,
            netns,
            ip: ip.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        self.agent.node_name()
    }

    /// `HOST:PORT` of its cluster endpoint.
    pub fn cluster_address(&self) -> String {
        format!("{}:7443", self.ip)
    }

    /// `hivemind cluster token` on this node.
    pub fn token(&self) -> String {
        self.agent.cli_ok(&["cluster", "token"]).trim().to_owned()
    }

    /// `hivemind -o json node ls`.
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        self.agent
            .cli_json(&["node", "ls"])
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("node ls is not an array"))
    }

    /// The node entry named `name` in this node's `node ls`.
    pub fn node(&self, name: &str) -> Option<serde_json::Value> {
        self.nodes().into_iter().find(|n| n["name"] == name)
    }

    /// Waits until this node sees `name` as ready (`true`) or not (`false`).
    pub fn wait_ready(&self, name: &str, ready: bool, timeout: Duration) {
        let what = format!("{} to see {name} ready={ready}", self.name());
        wait_for(&what, timeout, || {
            let out = self.agent.cli(&["-o", "json", "node", "ls"]);
            let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            nodes
                .as_array()?
                .iter()
                .find(|n| n["name"] == name)
                .filter(|n| n["ready"].as_bool().unwrap_or(false) == ready)
                .map(drop)
        });
    }

    /// Its data dir's `pki`.
    pub fn pki(&self) -> PathBuf {
        self.agent.data_dir().join("pki")
    }
}

/// A three-node cluster on `underlay`: node 1 started with `--cluster-init` and a registry on
/// its underlay address `registry_addr` holding the test image (so every node pulls from it),
/// nodes 2 and 3 joined through node 1, and every node seeing all three ready. Returns node 1,
/// the registry, the image reference, nodes 2 and 3 (in that order, so they drop in the
/// reverse: nodes before the registry's namespace).
pub fn form_three(
    underlay: &Underlay,
    options: &AgentOptions,
    registry_addr: &str,
) -> (ClusterNode, Registry, String, ClusterNode, ClusterNode) {
    let timeout = Duration::from_secs(90);
    let n1 = ClusterNode::start(underlay, 1, &unique("n"), &["--cluster-init"], options);
    let registry = Registry::start_in(&n1.netns, registry_addr);
    let image = registry.push_test_image("hivemind/test:1");
    let token = n1.token();
    let n2 = ClusterNode::start(underlay, 2, &unique("n"), &[], options);
    let n3 = ClusterNode::start(underlay, 3, &unique("n"), &[], options);
    for node in [&n2, &n3] {
        let out = node
            .agent
            .cli(&["join", "--host", &n1.ip, "--token", &token]);
        assert!(
            out.status.success(),
            "join of {}: {}{}\n{}",
            node.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            node.agent.log()
        );
    }
    let names: Vec<String> = [&n1, &n2, &n3]
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    for node in [&n1, &n2, &n3] {
        for name in &names {
            node.wait_ready(name, true, timeout);
        }
    }
    (n1, registry, image, n2, n3)
}

impl ClusterNode {
    /// The node's certificates (CA, node certificate and key) from its data dir.
    pub fn tls(&self) -> NodeTls {
        let read = |name: &str| {
            std::fs::read_to_string(self.pki().join(name))
                .unwrap_or_else(|err| panic!("{} {name}: {err}", self.name()))
        };
        NodeTls {
            ca_pem: read("ca.crt"),
            cert_pem: read("node.crt"),
            key_pem: read("node.key"),
        }
    }
}

/// The store of one node's etcd member, used from inside its namespace with its certificate
/// (only that member: no other endpoints are added).
#[derive(Debug)]
pub struct EtcdView {
    runtime: NodeRuntime,
    store: Store,
}

impl EtcdView {
    pub fn of(node: &ClusterNode) -> Self {
        let runtime = NodeRuntime::new(&node.netns);
        let tls = node.tls();
        let store = runtime.run(async move {
            Store::connect_etcd_tls(
                &["https://127.0.0.1:2379".to_owned()],
                &EtcdTls {
                    ca_pem: tls.ca_pem,
                    cert_pem: tls.cert_pem,
                    key_pem: tls.key_pem,
                    domain: None,
                },
            )
            .await
            .expect("connect to the node's etcd member")
        });
        Self { runtime, store }
    }

    pub fn members(&self) -> Vec<Member> {
        let store = self.store.clone();
        self.runtime
            .run(async move { store.members().await.expect("members") })
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let store = self.store.clone();
        let prefix = prefix.to_owned();
        self.runtime.run(async move {
            store
                .range(&prefix)
                .await
                .expect("range")
                .0
                .into_iter()
                .map(|kv| kv.key)
                .collect()
        })
    }

    /// The value of `key`, if it exists.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let store = self.store.clone();
        let key = key.to_owned();
        self.runtime
            .run(async move { store.get(&key).await.expect("get").map(|kv| kv.value) })
    }

    pub fn put(&self, key: &str, value: &str) {
        let store = self.store.clone();
        let (key, value) = (key.to_owned(), value.as_bytes().to_vec());
        self.runtime
            .run(async move { store.put(&key, value).await.expect("put") });
    }

    /// The leader's member name, as this member sees it; `None` while it knows none (or does
    /// not answer).
    pub fn leader(&self) -> Option<String> {
        let store = self.store.clone();
        let status = self
            .runtime
            .run(async move { store.member_status().await })
            .ok()?;
        self.members()
            .into_iter()
            .find(|m| m.id == status.leader)
            .map(|m| m.name)
    }
}
