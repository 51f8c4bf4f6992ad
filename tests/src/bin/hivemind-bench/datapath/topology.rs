//! The namespace topologies the datapath bench sends traffic through. Each has a client and a
//! server "container" (a network namespace) and is torn down on drop.
//!
//! ```text
//! hivemind:   [a] eth0 ══ hmXXXXXXXX ─┐  node ns: TCX programs, bpf_redirect_peer  ┌─ hmYYYYYYYY ══ eth0 [b]
//!                                     └──────────── (no bridge, no stack) ─────────┘
//! bridge:     [a] eth0 ══ veth ─┐  node ns: br0 (bridge-nf-call-iptables as the namespace has it) ┌─ veth ══ eth0 [b]
//!                               └──────────────────────────────────────────────────────────────┘
//! veth:       [a] ══════════════════ one veth pair ══════════════════ [b]     (the floor: no node at all)
//! ```

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use hivemind_agent::net::{
    dataplane::{self, DataplaneHandle},
    link::{self, ContainerLink},
};
use hivemind_common::{
    config::Config,
    endpoint::{Endpoint, FLAG_LOCAL},
    policy::{PolicyKey, PolicyValue},
};
use hivemind_tests::{
    Netns,
    node::NodeRuntime,
    util::{check, unique},
    veth,
};

/// Two hosts and the address the client reaches the server on.
pub trait Hosts {
    fn client(&self) -> &Netns;
    fn server(&self) -> &Netns;
    fn server_ip(&self) -> Ipv4Addr;
}

const SUBNET: &str = "10.244.0.0/24";
const CLUSTER: &str = "10.244.0.0/16";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
const MTU: u32 = 1500;

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// A container of a [`HivemindNode`].
pub struct Container {
    pub netns: Netns,
    pub ip: Ipv4Addr,
    pub link: ContainerLink,
}

/// A node namespace running Hivemind's dataplane in-process exactly as the agent does (the
/// same `net::link` plumbing and `net::dataplane` programs, maps and TCX links), with two
/// containers. Field order is drop order: the dataplane and its runtime go first.
pub struct HivemindNode {
    dataplane: Option<DataplaneHandle>,
    runtime: NodeRuntime,
    pin_dir: PathBuf,
    pub containers: Vec<Container>,
    /// How long each container's network took, as the agent would do it: `plumb_container`
    /// (veth pair, addresses, routes, neighbours), the endpoint, and attaching both programs.
    pub plumb_times: Vec<Duration>,
    pub node: Netns,
}

impl HivemindNode {
    /// A node whose client and server containers have the given policy identities.
    pub fn new(client_identity: u32, server_identity: u32) -> Self {
        let node = Netns::new("hbn");
        let runtime = NodeRuntime::new(&node);
        runtime
            .run(link::setup_node(
                SUBNET.parse().expect("subnet"),
                GATEWAY,
                CLUSTER.parse().expect("cluster CIDR"),
            ))
            .expect("set up the node's network");
        let pin_dir = PathBuf::from("/sys/fs/bpf/hivemind").join(unique("bench"));
        let dir = pin_dir.clone();
        let handle = runtime
            .run(async move { dataplane::start(&dir) })
            .expect("start the dataplane");
        let dp = handle.clone();
        runtime
            .run(async move {
                dp.set_config(Config {
                    gateway_ip: wire(GATEWAY),
                    ..Config::default()
                })
                .await
            })
            .expect("dataplane config");
        let mut me = Self {
            dataplane: Some(handle),
            runtime,
            pin_dir,
            containers: Vec::new(),
            plumb_times: Vec::new(),
            node,
        };
        me.add_container(CLIENT_IP, client_identity);
        me.add_container(SERVER_IP, server_identity);
        me
    }

    fn dp(&self) -> DataplaneHandle {
        self.dataplane.clone().expect("dataplane running")
    }

    fn add_container(&mut self, ip: Ipv4Addr, identity: u32) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let netns = Netns::new("hbc");
        let path = PathBuf::from(netns.path());
        let id = format!(
            "{:08x}",
            std::process::id().rotate_left(12) ^ NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let start = Instant::now();
        let link = self
            .runtime
            .run(async move { link::plumb_container(&path, &id, ip, GATEWAY, MTU).await })
            .expect("plumb a container");
        let endpoint = Endpoint {
            ifindex: link.host_ifindex,
            identity,
            flags: FLAG_LOCAL,
            mac: link.container_mac,
            gw_mac: link.host_mac,
            ..Endpoint::default()
        };
        let (dp, ifindex) = (self.dp(), link.host_ifindex);
        self.runtime
            .run(async move {
                dp.upsert_endpoint(ip, endpoint).await?;
                dp.attach_container(ifindex).await
            })
            .expect("register and attach the container");
        self.plumb_times.push(start.elapsed());
        self.containers.push(Container { netns, ip, link });
    }

    /// Swaps in a rule set as the agent does; returns how long the swap took.
    pub fn replace_policy(
        &self,
        entries: Vec<(PolicyKey, PolicyValue)>,
        cidrs: Vec<(ipnet::Ipv4Net, u32)>,
    ) -> Duration {
        let dp = self.dp();
        let start = Instant::now();
        self.runtime
            .run(async move { dp.replace_policy(entries, cidrs).await })
            .expect("replace the policy");
        start.elapsed()
    }

    /// Packets counted under `reason`, summed over CPUs.
    pub fn counter(&self, reason: u32) -> u64 {
        let dp = self.dp();
        self.runtime
            .run(async move { dp.counters().await })
            .expect("read the counters")
            .into_iter()
            .find(|c| c.reason == reason)
            .map_or(0, |c| c.packets)
    }

    /// Packets the node received on the client container's host veth (what it sent).
    pub fn client_rx_packets(&self) -> u64 {
        rx_packets(&self.node, &self.containers[0].link.host_ifname)
    }
}

impl Hosts for HivemindNode {
    fn client(&self) -> &Netns {
        &self.containers[0].netns
    }
    fn server(&self) -> &Netns {
        &self.containers[1].netns
    }
    fn server_ip(&self) -> Ipv4Addr {
        self.containers[1].ip
    }
}

impl Drop for HivemindNode {
    fn drop(&mut self) {
        if let Some(dp) = self.dataplane.take() {
            self.runtime.run(async move { dp.shutdown().await });
        }
        // Unpinning releases the links; the namespaces take the interfaces, routes and the nft
        // table with them.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Two namespaces plugged into a Linux bridge in a third, as Docker's default network does.
pub struct BridgeNet {
    client: Netns,
    server: Netns,
    pub node: Netns,
}

impl BridgeNet {
    /// `netfilter`: leave `net.bridge.bridge-nf-call-iptables` (and ip6tables, arptables) as a
    /// new namespace has it (on, as on Docker and Kubernetes hosts), or switch it off.
    pub fn new(netfilter: bool) -> Self {
        let node = Netns::new("hbb");
        node.ip(&["link", "add", "br0", "type", "bridge"]);
        node.ip(&["link", "set", "br0", "up"]);
        if !netfilter {
            node.check(
                "sysctl",
                &[
                    "-qw",
                    "net.bridge.bridge-nf-call-iptables=0",
                    "net.bridge.bridge-nf-call-ip6tables=0",
                    "net.bridge.bridge-nf-call-arptables=0",
                ],
            );
        }
        let client = Netns::new("hbc");
        let server = Netns::new("hbs");
        for (ns, addr) in [(&client, "10.99.0.2/24"), (&server, "10.99.0.3/24")] {
            let (port, inside) = (unique("hbp"), unique("hbe"));
            check(Command::new("ip").args([
                "link",
                "add",
                &port,
                "netns",
                node.name(),
                "mtu",
                "1500",
                "type",
                "veth",
                "peer",
                "name",
                &inside,
                "netns",
                ns.name(),
            ]));
            node.ip(&["link", "set", &port, "master", "br0", "up"]);
            ns.ip(&["addr", "add", addr, "dev", &inside]);
            ns.ip(&["link", "set", &inside, "up"]);
        }
        Self {
            client,
            server,
            node,
        }
    }

    /// What `net.bridge.bridge-nf-call-iptables` says in the bridge's namespace.
    pub fn netfilter_setting(&self) -> String {
        self.node
            .check("sysctl", &["-n", "net.bridge.bridge-nf-call-iptables"])
            .trim()
            .to_owned()
    }
}

impl Hosts for BridgeNet {
    fn client(&self) -> &Netns {
        &self.client
    }
    fn server(&self) -> &Netns {
        &self.server
    }
    fn server_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, 3)
    }
}

/// Two namespaces joined by one veth pair: no node in between, the floor for any datapath.
pub struct DirectNet {
    client: Netns,
    server: Netns,
}

impl DirectNet {
    pub fn new() -> Self {
        let client = Netns::new("hbc");
        let server = Netns::new("hbs");
        veth(&client, "10.98.0.2/24", &server, "10.98.0.3/24");
        Self { client, server }
    }
}

impl Hosts for DirectNet {
    fn client(&self) -> &Netns {
        &self.client
    }
    fn server(&self) -> &Netns {
        &self.server
    }
    fn server_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 98, 0, 3)
    }
}

/// `rx_packets` of `ifname` in `netns` (`ip -s -j link`).
pub fn rx_packets(netns: &Netns, ifname: &str) -> u64 {
    let out = netns.ip(&["-s", "-j", "link", "show", "dev", ifname]);
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|err| panic!("ip -s -j link show {ifname}: {err}\n{out}"));
    json[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packet count for {ifname}: {out}"))
}
