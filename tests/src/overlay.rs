//! Several node namespaces joined by an underlay, each running the dataplane in-process (as the
//! agent would) with containers plumbed by `net::link`, and the overlay between them: what the
//! overlay tests and the overlay benchmark share.
//!
//! ```text
//!                         [underlay namespace: bridge br0]
//!                  ┌──────────────┼───────────────┬───────────── … (more hosts: spoofers, plain vxlan)
//!          ul0 192.168.100.11   ul0 192.168.100.12   ul0 192.168.100.13
//!          [node 0 10.244.1.0/24] [node 1 10.244.2.0/24] [node 2 10.244.3.0/24]
//!            hm… ── [container]    hm… ── [container]     …
//! ```
//!
//! With two nodes and [`UnderlayKind::Direct`], the nodes' `ul0` are the two ends of one veth
//! pair (no bridge): the benchmark's underlay.

use std::{net::Ipv4Addr, path::PathBuf, process::Output};

use hivemind_agent::net::{
    dataplane::{self, DataplaneHandle, PeerStat, UnderlayXdp},
    link::{self, ContainerLink},
};
use hivemind_common::{
    config::Config,
    endpoint::{Endpoint, FLAG_LOCAL},
    overlay::{OVERHEAD, Peer},
    policy::{PolicyKey, PolicyValue},
};
use ipnet::Ipv4Net;

use crate::{
    Netns,
    node::NodeRuntime,
    util::{check, unique},
};

/// The underlay interface's name inside every node namespace.
pub const UNDERLAY_IF: &str = "ul0";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Node `i`'s underlay address: 192.168.100.(11 + i).
pub fn underlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, 11 + u8::try_from(i).expect("few nodes"))
}

/// Node `i`'s container subnet: 10.244.(i + 1).0/24.
pub fn node_subnet(i: usize) -> Ipv4Net {
    Ipv4Net::new(
        Ipv4Addr::new(10, 244, 1 + u8::try_from(i).expect("few nodes"), 0),
        24,
    )
    .expect("a /24")
}

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnderlayKind {
    /// A bridge in an underlay namespace (any number of hosts).
    Bridge,
    /// Two nodes on one veth pair.
    Direct,
}

#[derive(Clone, Copy, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub underlay: UnderlayKind,
    /// MTU of the underlay links.
    pub mtu: u32,
    /// The agent's default is `Auto` (no XDP on veth).
    pub xdp: UnderlayXdp,
    /// 0: the default (4789).
    pub vxlan_port: u16,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            underlay: UnderlayKind::Bridge,
            mtu: 1500,
            xdp: UnderlayXdp::Auto,
            vxlan_port: 0,
        }
    }
}

/// A container: its namespace, address and app identity.
#[derive(Debug)]
pub struct Container {
    pub name: String,
    pub ip: Ipv4Addr,
    pub identity: u32,
    pub link: ContainerLink,
    pub netns: Netns,
}

impl Container {
    pub fn ping(&self, target: Ipv4Addr) -> bool {
        self.netns
            .run("ping", &["-c", "1", "-W", "2", &target.to_string()])
            .status
            .success()
    }

    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.netns.run(program, args)
    }
}

/// One node: a namespace with its underlay interface, the dataplane and its containers.
/// Dropping it stops the dataplane and removes its pins; the namespaces take the rest.
#[derive(Debug)]
pub struct Node {
    pub index: usize,
    pub underlay_ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub containers: Vec<Container>,
    dataplane: std::sync::Mutex<Option<DataplaneHandle>>,
    pub runtime: NodeRuntime,
    pub pin_dir: PathBuf,
    pub netns: Netns,
}

impl Node {
    pub fn dp(&self) -> DataplaneHandle {
        self.dataplane
            .lock()
            .expect("dataplane lock")
            .clone()
            .expect("dataplane running")
    }

    /// Runs `f(dataplane)` on the node's runtime.
    pub fn with_dp<T, F, Fut>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(DataplaneHandle) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let dp = self.dp();
        self.runtime.run(async move { f(dp).await })
    }

    pub fn container(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name} on node {}", self.index))
    }

    /// Plumbs a container `name` with the next free address of the node's subnet, `mtu` on its
    /// `eth0`, registers it as a local endpoint of `identity` and attaches its programs.
    pub fn add_container(&mut self, name: &str, identity: u32, mtu: u32) -> &Container {
        let netns = Netns::new(&format!("hmc{name}"));
        let path = PathBuf::from(netns.path());
        let last = u8::try_from(self.containers.len() + 2).expect("few containers");
        let octets = self.subnet.network().octets();
        let ip = Ipv4Addr::new(octets[0], octets[1], octets[2], last);
        let id = format!("{}-{name}-{}", std::process::id(), self.index);
        let gateway = self.gateway;
        let link = self
            .runtime
            .run(async move { link::plumb_container(&path, &id, ip, gateway, mtu).await })
            .expect("plumb container");
        let endpoint = Endpoint {
            ifindex: link.host_ifindex,
            identity,
            flags: FLAG_LOCAL,
            mac: link.container_mac,
            gw_mac: link.host_mac,
            ..Endpoint::default()
        };
        let ifindex = link.host_ifindex;
        self.with_dp(move |dp| async move {
            dp.upsert_endpoint(ip, endpoint).await?;
            dp.attach_container(ifindex).await
        })
        .expect("register the endpoint");
        self.containers.push(Container {
            name: name.to_owned(),
            ip,
            identity,
            link,
            netns,
        });
        self.containers.last().expect("just pushed")
    }

    pub fn policy(&self, entries: Vec<(PolicyKey, PolicyValue)>) {
        self.with_dp(move |dp| async move { dp.replace_policy(entries, Vec::new()).await })
            .expect("replace policy");
    }

    pub fn count(&self, reason: u32) -> u64 {
        self.with_dp(|dp| async move { dp.counters().await })
            .expect("counters")
            .into_iter()
            .find(|c| c.reason == reason)
            .map_or(0, |c| c.packets)
    }

    pub fn peer_stats(&self) -> Vec<PeerStat> {
        self.with_dp(|dp| async move { dp.peer_stats().await })
            .expect("peer stats")
    }

    /// Stops the dataplane owner and starts a new one on the same pins, as an agent restart or
    /// upgrade would: pinned links (TCX and XDP) are switched to the fresh programs.
    pub fn restart_dataplane(&self) {
        self.stop();
        let pin_dir = self.pin_dir.clone();
        let handle = self
            .runtime
            .run(async move { dataplane::start(&pin_dir) })
            .expect("restart the dataplane");
        *self.dataplane.lock().expect("dataplane lock") = Some(handle);
    }

    fn stop(&self) {
        let dp = self.dataplane.lock().expect("dataplane lock").take();
        if let Some(dp) = dp {
            self.runtime.run(async move { dp.shutdown().await });
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        // Unpinning releases the links; the namespace takes interfaces and routes with it.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Nodes on an underlay with the overlay between them. Field order is drop order: nodes
/// (dataplanes, pins, containers) before the underlay namespace.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub options: ClusterOptions,
    /// Hosts the bridge (for [`UnderlayKind::Bridge`]).
    pub underlay: Option<Netns>,
    attached: std::sync::atomic::AtomicUsize,
}

impl Cluster {
    pub fn new(options: ClusterOptions) -> Self {
        assert!(
            options.underlay == UnderlayKind::Bridge || options.nodes == 2,
            "a direct underlay links two nodes"
        );
        let underlay = (options.underlay == UnderlayKind::Bridge).then(|| {
            let ns = Netns::new("hmul");
            ns.ip(&["link", "add", "br0", "type", "bridge"]);
            // Plain switching: the underlay is a LAN, not a firewall.
            ns.ip(&[
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "nf_call_iptables",
                "0",
                "nf_call_arptables",
                "0",
            ]);
            ns.ip(&["link", "set", "br0", "up"]);
            ns
        });
        let mut cluster = Self {
            nodes: Vec::new(),
            options,
            underlay,
            attached: std::sync::atomic::AtomicUsize::new(0),
        };
        let netns: Vec<Netns> = (0..options.nodes).map(|_| Netns::new("hmnode")).collect();
        if options.underlay == UnderlayKind::Direct {
            check(std::process::Command::new("ip").args([
                "link",
                "add",
                UNDERLAY_IF,
                "netns",
                netns[0].name(),
                "mtu",
                &options.mtu.to_string(),
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_IF,
                "netns",
                netns[1].name(),
                "mtu",
                &options.mtu.to_string(),
            ]));
            for (i, ns) in netns.iter().enumerate() {
                ns.ip(&[
                    "addr",
                    "add",
                    &format!("{}/24", underlay_ip(i)),
                    "dev",
                    UNDERLAY_IF,
                ]);
                ns.ip(&["link", "set", UNDERLAY_IF, "up"]);
            }
        }
        for (i, ns) in netns.into_iter().enumerate() {
            if options.underlay == UnderlayKind::Bridge {
                cluster.attach_host(&ns, underlay_ip(i));
            }
            cluster.nodes.push(Self::start_node(i, ns, &options));
        }
        cluster.set_membership(&[]);
        cluster
    }

    /// Links `host` to the underlay bridge: its `ul0` gets `ip/24`.
    pub fn attach_host(&self, host: &Netns, ip: Ipv4Addr) {
        let underlay = self.underlay.as_ref().expect("a bridge underlay");
        let n = self
            .attached
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = format!("p{n}");
        let mtu = self.options.mtu.to_string();
        check(std::process::Command::new("ip").args([
            "link",
            "add",
            UNDERLAY_IF,
            "netns",
            host.name(),
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            underlay.name(),
            "mtu",
            &mtu,
        ]));
        underlay.ip(&["link", "set", &port, "master", "br0", "up"]);
        host.ip(&["addr", "add", &format!("{ip}/24"), "dev", UNDERLAY_IF]);
        host.ip(&["link", "set", UNDERLAY_IF, "up"]);
    }

    fn start_node(index: usize, netns: Netns, options: &ClusterOptions) -> Node {
        let runtime = NodeRuntime::new(&netns);
        let subnet = node_subnet(index);
        let gateway = subnet.hosts().next().expect("a gateway address");
        runtime
            .run(link::setup_node(
                subnet,
                gateway,
                CLUSTER_CIDR.parse().expect("cluster CIDR"),
            ))
            .expect("setup node");
        let pin_dir = PathBuf::from("/sys/fs/bpf/hivemind").join(unique("ovl"));
        let node = Node {
            index,
            underlay_ip: underlay_ip(index),
            subnet,
            gateway,
            containers: Vec::new(),
            dataplane: std::sync::Mutex::new(None),
            runtime,
            pin_dir,
            netns,
        };
        let pin_dir = node.pin_dir.clone();
        let handle = node
            .runtime
            .run(async move { dataplane::start(&pin_dir) })
            .expect("start the dataplane");
        *node.dataplane.lock().expect("dataplane lock") = Some(handle);
        let config = Config {
            node_ip: wire(node.underlay_ip),
            gateway_ip: wire(gateway),
            vxlan_port: options.vxlan_port,
            ..Config::default()
        };
        let xdp = options.xdp;
        node.with_dp(move |dp| async move {
            dp.set_config(config).await?;
            dp.attach_underlay(UNDERLAY_IF, xdp).await
        })
        .expect("config and underlay");
        node
    }

    /// Every node gets every other node as peer and tunnel, plus `extra` (foreign VTEPs:
    /// underlay address, its MAC, and the subnet behind it).
    pub fn set_membership(&self, extra: &[(Ipv4Addr, [u8; 6], Ipv4Net)]) {
        for node in &self.nodes {
            let mut peers = Vec::new();
            let mut tunnels = Vec::new();
            for other in self.nodes.iter().filter(|o| o.index != node.index) {
                peers.push((other.underlay_ip, Peer::default()));
                tunnels.push((other.subnet, other.underlay_ip));
            }
            for (ip, mac, subnet) in extra {
                peers.push((
                    *ip,
                    Peer {
                        vtep_mac: *mac,
                        ..Peer::default()
                    },
                ));
                tunnels.push((*subnet, *ip));
            }
            node.with_dp(move |dp| async move {
                dp.set_peers(peers).await?;
                dp.set_tunnels(tunnels).await
            })
            .expect("peers and tunnels");
        }
    }

    /// Every node learns every other node's containers as remote endpoints (the ipcache).
    pub fn sync_endpoints(&self) {
        for node in &self.nodes {
            let remote: Vec<(Ipv4Addr, u32, Ipv4Addr)> = self
                .nodes
                .iter()
                .filter(|o| o.index != node.index)
                .flat_map(|o| {
                    o.containers
                        .iter()
                        .map(|c| (c.ip, c.identity, o.underlay_ip))
                })
                .collect();
            node.with_dp(move |dp| async move {
                for (ip, identity, node_ip) in remote {
                    dp.upsert_remote_endpoint(ip, identity, node_ip).await?;
                }
                Ok::<_, dataplane::DataplaneError>(())
            })
            .expect("remote endpoints");
        }
    }

    /// The container MTU the overlay leaves room for.
    pub fn container_mtu(&self) -> u32 {
        self.options.mtu - OVERHEAD
    }

    /// Finds container `name` on any node.
    pub fn container(&self, name: &str) -> &Container {
        self.nodes
            .iter()
            .find_map(|n| n.containers.iter().find(|c| c.name == name))
            .unwrap_or_else(|| panic!("no container {name}"))
    }
}
