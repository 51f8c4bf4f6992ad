//! Keeps this node's overlay current from the store while it is in a cluster. The dataplane
//! owns the maps; this module only decides what they should hold:
//!
//! - `HM_PEERS` (and their `HM_PEER_STATS` entries): every other registered node's underlay
//!   address — the members whose VXLAN is accepted and who may be sent to;
//! - `HM_TUNNELS`: every other node's container /24 → its underlay address;
//! - remote endpoints in `HM_ENDPOINTS` (`FLAG_REMOTE`): every container the store places on
//!   another node → its app's identity and that node's underlay address.
//!
//! It follows watches on the node registry, the containers and the app identities; each
//! change (a burst of them coalesced) re-reads those three prefixes and applies what differs
//! from what was applied last. A failed watch or read is retried from a fresh read.
//!
//! It also watches the policies: a policy applied or removed through another node is loaded
//! into this node's dataplane too (`NodeNetwork::load_policies`, the one place that does).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::FutureExt as _;
use hivemind_common::overlay::{DEFAULT_VXLAN_PORT, Peer};
use ipnet::Ipv4Net;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;

use super::{
    dataplane::{DataplaneError, PeerStat},
    network::NodeNetwork,
};
use crate::{
    cluster::nodes::NodeRecord,
    model::{ContainerRecord, keys},
    proto,
    state::State,
    store::{StoreError, WatchStream},
};

/// Changes arriving within this window after the first are applied together.
const COALESCE: Duration = Duration::from_millis(50);
/// Pause before starting over after a failed watch, read or update.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("the store's watch on {0} ended")]
    WatchEnded(&'static str),
}

/// What the overlay maps should hold, computed from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub peers: Vec<Ipv4Addr>,
    pub tunnels: Vec<(Ipv4Net, Ipv4Addr)>,
    /// (container address, identity, node underlay address).
    pub remotes: Vec<(Ipv4Addr, u32, Ipv4Addr)>,
}

/// The maps' contents for node `this` (pure: the rules in one place, unit-tested). A node
/// without an underlay address cannot be reached and is left out; so is a container whose
/// app has no identity yet (it gets one before its container starts, and the identity watch
/// brings it in).
pub fn desired(
    this: &str,
    nodes: &BTreeMap<String, NodeRecord>,
    containers: &[ContainerRecord],
    identities: &BTreeMap<String, u32>,
) -> Desired {
    let own_ip = nodes.get(this).and_then(|n| n.underlay_ip);
    let others: BTreeMap<&str, (Ipv4Addr, Option<Ipv4Net>)> = nodes
        .values()
        .filter(|n| n.name != this)
        .filter_map(|n| Some((n.name.as_str(), (n.underlay_ip?, n.subnet))))
        .filter(|(_, (ip, _))| Some(*ip) != own_ip)
        .collect();
    let mut peers: Vec<Ipv4Addr> = others.values().map(|(ip, _)| *ip).collect();
    peers.sort_unstable();
    peers.dedup();
    let mut tunnels: Vec<(Ipv4Net, Ipv4Addr)> = others
        .values()
        .filter_map(|(ip, subnet)| Some(((*subnet)?, *ip)))
        .collect();
    tunnels.sort_unstable();
    let mut remotes: Vec<(Ipv4Addr, u32, Ipv4Addr)> = containers
        .iter()
        .filter_map(|c| {
            let (node_ip, _) = others.get(c.node.as_str())?;
            Some((c.ip?, *identities.get(&c.app)?, *node_ip))
        })
        .collect();
    remotes.sort_unstable();
    // Two records with one address (a replaced container whose old record lingers): the
    // lower identity is kept, deterministically; both are on one node anyway (one /24).
    remotes.dedup_by_key(|r| r.0);
    Desired {
        peers,
        tunnels,
        remotes,
    }
}

/// Puts the node on the overlay (`vxlan_port`: programs on the underlay interface, the
/// overlay MTU) and keeps its maps current until the task is aborted.
pub fn spawn(state: State, network: NodeNetwork, node: String, vxlan_port: u16) -> JoinHandle<()> {
    tokio::spawn(async move {
        let port = if vxlan_port == 0 {
            DEFAULT_VXLAN_PORT
        } else {
            vxlan_port
        };
        while let Err(err) = network.enable_overlay(port).await {
            tracing::error!(error = %err, "cannot put the node on the overlay; retrying");
            tokio::time::sleep(RETRY * 5).await;
        }
        let mut applied: Option<Desired> = None;
        loop {
            if let Err(err) = follow(&state, &network, &node, &mut applied).await {
                tracing::warn!(error = %err, "overlay sync: starting over");
                // The next read applies everything again.
                applied = None;
            }
            tokio::time::sleep(RETRY).await;
        }
    })
}

/// One read-apply-watch cycle: returns only on an error.
async fn follow(
    state: &State,
    network: &NodeNetwork,
    node: &str,
    applied: &mut Option<Desired>,
) -> Result<(), SyncError> {
    let store = state.store();
    // Watches start right after the revision the first read saw; a change between the reads
    // only causes one extra pass.
    let (_, revision) = store.range(keys::NODES).await?;
    let mut watches = [
        (
            keys::POLICIES,
            store.watch(keys::POLICIES, revision + 1).await?,
        ),
        (keys::NODES, store.watch(keys::NODES, revision + 1).await?),
        (
            keys::CONTAINERS,
            store.watch(keys::CONTAINERS, revision + 1).await?,
        ),
        (
            keys::IDENTITIES,
            store.watch(keys::IDENTITIES, revision + 1).await?,
        ),
    ];
    // Loaded again on every (re)start of the watches: changes made meanwhile are covered.
    let mut policies_changed = true;
    loop {
        if policies_changed && let Err(err) = network.load_policies().await {
            tracing::error!(
                "loading policies changed elsewhere: {}",
                crate::error_chain(&err)
            );
        }
        let want = read(state, node).await?;
        if applied.as_ref() != Some(&want) {
            apply(network, applied.as_ref(), &want).await?;
            tracing::debug!(
                peers = want.peers.len(),
                tunnels = want.tunnels.len(),
                remotes = want.remotes.len(),
                "overlay maps updated"
            );
            *applied = Some(want);
        }
        let mut changed = vec![next_change(&mut watches).await?];
        tokio::time::sleep(COALESCE).await;
        drain(&mut watches, &mut changed)?;
        policies_changed = changed.contains(&keys::POLICIES);
    }
}

async fn read(state: &State, node: &str) -> Result<Desired, SyncError> {
    let store = state.store();
    let nodes = crate::cluster::nodes::nodes(store).await?;
    let containers = state.containers().await?;
    let identities = state.identities().await?;
    Ok(desired(node, &nodes, &containers, &identities))
}

/// Writes the parts that changed (all of them the first time).
async fn apply(
    network: &NodeNetwork,
    before: Option<&Desired>,
    want: &Desired,
) -> Result<(), SyncError> {
    let dataplane = network.dataplane();
    if before.map(|b| &b.peers) != Some(&want.peers) {
        let peers = want.peers.iter().map(|ip| (*ip, Peer::default())).collect();
        dataplane.set_peers(peers).await?;
    }
    if before.map(|b| &b.tunnels) != Some(&want.tunnels) {
        dataplane.set_tunnels(want.tunnels.clone()).await?;
    }
    if before.map(|b| &b.remotes) != Some(&want.remotes) {
        dataplane.set_remote_endpoints(want.remotes.clone()).await?;
    }
    Ok(())
}

type Watches = [(&'static str, WatchStream); 4];

/// Waits for the next event on any watch; returns its prefix.
async fn next_change(watches: &mut Watches) -> Result<&'static str, SyncError> {
    let [
        (policies_name, policies),
        (nodes_name, nodes),
        (containers_name, containers),
        (identities_name, identities),
    ] = watches;
    let (name, event) = tokio::select! {
        event = policies.next() => (*policies_name, event),
        event = nodes.next() => (*nodes_name, event),
        event = containers.next() => (*containers_name, event),
        event = identities.next() => (*identities_name, event),
    };
    match event {
        Some(Ok(_)) => Ok(name),
        Some(Err(err)) => Err(err.into()),
        None => Err(SyncError::WatchEnded(name)),
    }
}

/// Consumes the events already buffered (the next read covers them), noting their prefixes.
fn drain(watches: &mut Watches, changed: &mut Vec<&'static str>) -> Result<(), SyncError> {
    for (name, watch) in watches.iter_mut() {
        while let Some(event) = watch.next().now_or_never() {
            match event {
                Some(Ok(_)) => changed.push(name),
                Some(Err(err)) => return Err(err.into()),
                None => return Err(SyncError::WatchEnded(name)),
            }
        }
    }
    Ok(())
}

/// Fills in each node's tunnel (this node's view of the overlay to it) from the dataplane's
/// per-peer statistics, for `node ls` and `health`.
pub fn annotate_tunnels(nodes: &mut [proto::NodeInfo], stats: &[PeerStat], vxlan_port: u16) {
    let ms = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    for node in nodes.iter_mut().filter(|n| !n.local) {
        let Ok(ip) = node.underlay_ip.parse::<Ipv4Addr>() else {
            continue;
        };
        let Some(stat) = stats.iter().find(|s| s.node_ip == ip) else {
            continue;
        };
        node.tunnel = Some(proto::Tunnel {
            remote_ip: ip.to_string(),
            vxlan_port: u32::from(vxlan_port),
            tx_packets: stat.tx_packets,
            tx_bytes: stat.tx_bytes,
            rx_packets: stat.rx_packets,
            rx_bytes: stat.rx_bytes,
            last_sent_ms: ms(stat.last_sent),
            last_received_ms: ms(stat.last_received),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cluster::nodes::NodeState, model::ContainerState};

    fn node(name: &str, ip: Option<[u8; 4]>, subnet: Option<&str>) -> (String, NodeRecord) {
        (
            name.to_owned(),
            NodeRecord {
                name: name.to_owned(),
                underlay_ip: ip.map(Ipv4Addr::from),
                subnet: subnet.map(|s| s.parse().expect("subnet")),
                cluster_address: String::new(),
                version: String::new(),
                joined_at_ms: 0,
                state: NodeState::Member,
            },
        )
    }

    fn container(id: &str, app: &str, node: &str, ip: Option<[u8; 4]>) -> ContainerRecord {
        let mut record: ContainerRecord =
            serde_json::from_value(serde_json::json!({"id": id, "app": app, "slot": 0, "node": node, "generation": 1, "image": "i", "image_digest": "", "state": "running", "exit_code": null, "restart_count": 0, "pid": 0, "ip": null, "created_at_ms": 0, "started_at_ms": null, "history": []}))
                .expect("record");
        record.ip = ip.map(Ipv4Addr::from);
        assert_eq!(record.state, ContainerState::Running);
        record
    }

    #[test]
    fn peers_tunnels_and_remote_endpoints_come_from_the_other_nodes() {
        let nodes: BTreeMap<_, _> = [
            node("n1", Some([192, 0, 2, 11]), Some("10.244.0.0/24")),
            node("n2", Some([192, 0, 2, 12]), Some("10.244.1.0/24")),
            node("n3", Some([192, 0, 2, 13]), None),
            node("n4", None, Some("10.244.3.0/24")),
        ]
        .into();
        let containers = vec![
            container("a", "web", "n1", Some([10, 244, 0, 2])),
            container("b", "api", "n2", Some([10, 244, 1, 2])),
            container("c", "api", "n2", None),
            container("d", "new", "n2", Some([10, 244, 1, 3])),
            container("e", "web", "n4", Some([10, 244, 3, 2])),
            container("f", "web", "gone", Some([10, 244, 9, 2])),
        ];
        let identities: BTreeMap<_, _> = [("web".to_owned(), 256), ("api".to_owned(), 257)].into();
        let d = desired("n1", &nodes, &containers, &identities);
        assert_eq!(
            d.peers,
            vec![Ipv4Addr::new(192, 0, 2, 12), Ipv4Addr::new(192, 0, 2, 13)]
        );
        assert_eq!(
            d.tunnels,
            vec![(
                "10.244.1.0/24".parse().expect("net"),
                Ipv4Addr::new(192, 0, 2, 12)
            )]
        );
        assert_eq!(
            d.remotes,
            vec![(
                Ipv4Addr::new(10, 244, 1, 2),
                257,
                Ipv4Addr::new(192, 0, 2, 12)
            )],
            "own, address-less, identity-less and unreachable nodes' containers are left out"
        );
        let alone: BTreeMap<_, _> = [node("n1", Some([192, 0, 2, 11]), None)].into();
        assert_eq!(
            desired("n1", &alone, &containers, &identities),
            Desired::default()
        );
    }
}
