//! The node's container network, as the rest of the agent sees it: the node's /24 and gateway,
//! each container's address, veth and endpoint, the published ports and the compiled
//! policies loaded into the dataplane. It glues [`ipam`](super::ipam), [`link`](super::link)
//! and [`dataplane`](super::dataplane) together; the reconciler and the API call it.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use hivemind_common::{
    config::{Config, FLAG_EVENTS_FORWARDED},
    ct::{PortKey, PortTarget},
    endpoint::{Endpoint, FLAG_LOCAL},
    overlay::OVERHEAD,
};
use ipnet::Ipv4Net;
use tokio::sync::Mutex;

use super::{
    dataplane::{DataplaneError, DataplaneHandle, UnderlayXdp},
    ipam::{self, IpamError},
    link::{self, LinkError},
};
use crate::{
    model::{AppSpec, ContainerRecord, ContainerState, PolicyRecord, Protocol},
    paths,
    policy::{self, AppIdentity, PolicyErrors, PolicyRef},
    state::State,
    store::StoreError,
};

/// MTU of container interfaces when the uplink's is unknown.
const DEFAULT_MTU: u32 = 1500;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored policy {name} no longer parses: {errors}")]
    StoredPolicy { name: String, errors: PolicyErrors },
    /// Boxed: the policy error is large and this one is rare.
    #[error("the policies need more map entries than the datapath holds: {0}")]
    Capacity(Box<policy::PolicyError>),
    #[error(
        "the overlay needs an underlay interface with an IPv4 address; pass --underlay-iface and --node-ip"
    )]
    NoUnderlay,
}

/// What `hivemind health` shows about the node's network.
#[derive(Debug, Clone, Default)]
pub struct NetworkStatus {
    pub subnet: String,
    pub gateway: String,
    pub uplink: String,
    pub node_ip: String,
    pub policies: u32,
    pub endpoints: u32,
}

/// A container's place on the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub ip: Ipv4Addr,
    pub host_ifname: String,
}

#[derive(Clone, Debug)]
pub struct NodeNetwork {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    dataplane: DataplaneHandle,
    node: String,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    cluster_cidr: Ipv4Net,
    /// MTU of container links made from now on (the uplink's, minus the overlay's 50 bytes
    /// once the node is in a cluster).
    mtu: AtomicU32,
    uplink: Option<link::Uplink>,
    node_ip: Option<Ipv4Addr>,
    /// Serialises whole-set updates (policies, ports) so two never interleave.
    updates: Mutex<Published>,
}

/// What the dataplane was last given, to skip no-op updates and report status.
#[derive(Debug, Default)]
struct Published {
    ports: Vec<(PortKey, PortTarget)>,
    ingress_attached: bool,
    policies: u32,
    monitors_forwarded: u32,
    /// The overlay's UDP port while the node is in a cluster.
    vxlan_port: Option<u16>,
    /// `hivemind0` while the node is in a cluster (the cluster CIDR is routed to it).
    host: Option<link::HostDevice>,
}

fn wire(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

impl NodeNetwork {
    /// Claims the node's /24, prepares the node namespace (gateway device, forwarding,
    /// masquerade) and tells the dataplane the node's addresses.
    pub async fn start(
        state: State,
        dataplane: DataplaneHandle,
        node: &str,
        cluster_cidr: Ipv4Net,
        uplink_name: Option<&str>,
        node_ip: Option<Ipv4Addr>,
    ) -> Result<Self, NetworkError> {
        let subnet = ipam::claim_subnet(state.store(), cluster_cidr, node).await?;
        let gateway = ipam::gateway(subnet);
        link::setup_node(subnet, gateway, cluster_cidr).await?;
        let uplink = link::uplink(uplink_name, node_ip).await?;
        let node_ip = node_ip.or_else(|| uplink.as_ref().and_then(|u| u.ipv4));
        let mtu = uplink.as_ref().map_or(DEFAULT_MTU, |u| u.mtu);
        let network = Self {
            inner: Arc::new(Inner {
                state,
                dataplane,
                node: node.to_owned(),
                subnet,
                gateway,
                cluster_cidr,
                mtu: AtomicU32::new(mtu),
                uplink,
                node_ip,
                updates: Mutex::new(Published::default()),
            }),
        };
        network.push_config(&Published::default()).await?;
        tracing::info!(%subnet, %gateway, uplink = ?network.inner.uplink.as_ref().map(|u| &u.name), node_ip = ?network.inner.node_ip, mtu, "node network ready");
        Ok(network)
    }

    /// Tells the datapath the node's addresses and what `published` says; the caller holds
    /// the lock on `published`, so two updates never interleave.
    async fn push_config(&self, published: &Published) -> Result<(), NetworkError> {
        let inner = &self.inner;
        let host = published.host.unwrap_or_default();
        inner
            .dataplane
            .set_config(Config {
                flags: if published.monitors_forwarded > 0 {
                    FLAG_EVENTS_FORWARDED
                } else {
                    0
                },
                node_ip: inner.node_ip.map_or(0, wire),
                gateway_ip: wire(inner.gateway),
                vxlan_port: published.vxlan_port.unwrap_or(0),
                host_ifindex: host.ifindex,
                host_mac: host.mac,
                ..Config::default()
            })
            .await?;
        Ok(())
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.inner.subnet
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.gateway
    }

    /// The node's underlay address (`--node-ip`, else the uplink's), if known.
    pub fn node_ip(&self) -> Option<Ipv4Addr> {
        self.inner.node_ip
    }

    /// Gives container `id` of `app` an address and an `eth0` in its namespace, and tells
    /// the dataplane about it. Undone by [`NodeNetwork::detach`].
    pub async fn attach(
        &self,
        id: &str,
        app: &str,
        netns: &Path,
    ) -> Result<Attachment, NetworkError> {
        let inner = &self.inner;
        let ip = ipam::claim_address(inner.state.store(), inner.subnet, &inner.node, id).await?;
        let identity = inner.state.app_identity(app).await?;
        let result = async {
            let mtu = inner.mtu.load(Ordering::Relaxed);
            let link = link::plumb_container(netns, id, ip, inner.gateway, mtu).await?;
            self.install_endpoint(ip, identity, &link).await?;
            Ok::<_, NetworkError>(Attachment {
                ip,
                host_ifname: link.host_ifname,
            })
        }
        .await;
        if result.is_err() {
            let _ = self.detach(id, Some(ip)).await;
        }
        result
    }

    /// The address claimed for container `id`, if any.
    async fn claimed_address(&self, id: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
        let inner = &self.inner;
        Ok(ipam::addresses(inner.state.store(), inner.subnet)
            .await?
            .into_iter()
            .find(|(_, owner)| owner == id)
            .map(|(ip, _)| ip))
    }

    /// Re-derives the attachment of a container found running without a record of its address
    /// (after a crash): its address claim must match the address its `eth0` holds, and then
    /// its endpoint and programs are put back in place (both idempotent). `None` when the
    /// claim or the link is missing or they disagree: such a container cannot serve and is
    /// replaced.
    pub async fn recover(
        &self,
        id: &str,
        app: &str,
        netns: &Path,
    ) -> Result<Option<Ipv4Addr>, NetworkError> {
        let Some(ip) = self.claimed_address(id).await? else {
            return Ok(None);
        };
        let Some((link, addresses)) = link::inspect_container(netns, id).await? else {
            return Ok(None);
        };
        if !addresses.contains(&ip) {
            tracing::warn!(container = id, %ip, ?addresses, "the address claim and eth0 disagree");
            return Ok(None);
        }
        let identity = self.inner.state.app_identity(app).await?;
        self.install_endpoint(ip, identity, &link).await?;
        Ok(Some(ip))
    }

    /// The container's endpoint in the dataplane and its programs on the host-side veth.
    async fn install_endpoint(
        &self,
        ip: Ipv4Addr,
        identity: u32,
        link: &link::ContainerLink,
    ) -> Result<(), NetworkError> {
        let endpoint = Endpoint {
            ifindex: link.host_ifindex,
            identity,
            flags: FLAG_LOCAL,
            mac: link.container_mac,
            gw_mac: link.host_mac,
            ..Endpoint::default()
        };
        let dataplane = &self.inner.dataplane;
        dataplane.upsert_endpoint(ip, endpoint).await?;
        dataplane.attach_container(link.host_ifindex).await?;
        Ok(())
    }

    /// Removes container `id` from the network. Idempotent; `ip` is looked up if unknown.
    pub async fn detach(&self, id: &str, ip: Option<Ipv4Addr>) -> Result<(), NetworkError> {
        let inner = &self.inner;
        let ip = match ip {
            Some(ip) => Some(ip),
            None => self.claimed_address(id).await?,
        };
        if let Some(ip) = ip {
            inner.dataplane.remove_endpoint(ip).await?;
        }
        // Deleting the veth detaches its programs with it.
        link::unplumb_container(&link::host_ifname(id)).await?;
        if let Some(ip) = ip {
            ipam::release_address(inner.state.store(), inner.subnet, ip, id).await?;
        }
        Ok(())
    }

    /// Takes the network of every container whose address is claimed on this node's subnet
    /// but that `is_known` does not name (left by a crash): endpoint, link and claim.
    pub async fn sweep_addresses(
        &self,
        is_known: impl Fn(&str) -> bool,
    ) -> Result<(), NetworkError> {
        let inner = &self.inner;
        for (ip, owner) in ipam::addresses(inner.state.store(), inner.subnet).await? {
            if !is_known(&owner) {
                tracing::info!(container = %owner, %ip, "releasing the address of a container that is gone");
                self.detach(&owner, Some(ip)).await?;
            }
        }
        Ok(())
    }

    /// Publishes the apps' ports: each host port goes to the lowest running replica slot of
    /// its app on this node. The node ingress program is attached while any port is published.
    pub async fn sync_ports(
        &self,
        apps: &[AppSpec],
        records: &[ContainerRecord],
    ) -> Result<(), NetworkError> {
        let inner = &self.inner;
        let mut ports = Vec::new();
        for app in apps {
            let target = records
                .iter()
                .filter(|r| {
                    r.app == app.name && r.state == ContainerState::Running && r.node == inner.node
                })
                // A replica whose check has not passed (a rollout's new one) only as a last resort.
                .filter_map(|r| {
                    let unready = r.health.is_some_and(|h| h != crate::model::Health::Healthy);
                    Some((unready, r.slot, r.ip?))
                })
                .min();
            let Some((_, _, ip)) = target else { continue };
            for port in &app.ports {
                ports.push((
                    PortKey {
                        port: port.host,
                        protocol: match port.protocol {
                            Protocol::Tcp => 6,
                            Protocol::Udp => 17,
                        },
                        _pad: 0,
                    },
                    PortTarget {
                        ip: wire(ip),
                        port: port.container,
                        _pad: 0,
                    },
                ));
            }
        }
        ports.sort_by_key(|(key, _)| (key.port, key.protocol));
        let mut published = inner.updates.lock().await;
        if published.ports == ports {
            return Ok(());
        }
        inner.dataplane.set_ports(ports.clone()).await?;
        match (&inner.uplink, ports.is_empty(), published.ingress_attached) {
            (Some(uplink), false, false) => {
                inner.dataplane.attach_node_ingress(&uplink.name).await?;
                published.ingress_attached = true;
            }
            (Some(uplink), true, true) => {
                inner.dataplane.detach_node_ingress(&uplink.name).await?;
                published.ingress_attached = false;
            }
            (None, false, _) => tracing::warn!(
                "ports are published but the node has no uplink interface to receive them on; pass --underlay-iface"
            ),
            _ => {}
        }
        published.ports = ports;
        Ok(())
    }

    /// Compiles every stored policy against the current apps and loads the result into the
    /// dataplane in one swap. Returns the compiler's warnings.
    pub async fn load_policies(&self) -> Result<Vec<String>, NetworkError> {
        let inner = &self.inner;
        let records = inner.state.policies().await?;
        let apps = inner.state.apps().await?;
        let identities = inner.state.identities().await?;
        let (compiled, count) = compile_records(&records, &apps, &identities)?;
        compiled
            .check_capacity()
            .map_err(|err| NetworkError::Capacity(Box::new(err)))?;
        let mut published = inner.updates.lock().await;
        inner
            .dataplane
            .replace_policy(compiled.entries.into_iter().collect(), compiled.cidrs)
            .await?;
        published.policies = count;
        Ok(compiled.warnings)
    }

    /// A monitor asking for forwarded traffic comes (`true`) or goes (`false`); forwarded
    /// events are switched on in the datapath only while at least one wants them.
    pub async fn monitor_forwarded(&self, wanted: bool) -> Result<(), NetworkError> {
        let mut published = self.inner.updates.lock().await;
        let before = published.monitors_forwarded > 0;
        if wanted {
            published.monitors_forwarded += 1;
        } else {
            published.monitors_forwarded = published.monitors_forwarded.saturating_sub(1);
        }
        if before != (published.monitors_forwarded > 0) {
            self.push_config(&published).await?;
        }
        Ok(())
    }

    /// The dataplane, for the cluster sync: peers, tunnels, remote endpoints, peer statistics.
    pub fn dataplane(&self) -> &DataplaneHandle {
        &self.inner.dataplane
    }

    /// Puts the node on the overlay (when it becomes a cluster member, and at every start
    /// while it is one): the VXLAN port into the datapath's config, the receiving programs on
    /// the uplink, the cluster CIDR routed to `hm_from_host` (so the node itself reaches
    /// containers on other nodes), and containers — new ones and those already running — at
    /// the uplink's MTU minus the overlay's 50 bytes. Idempotent. Peers, tunnels and remote
    /// endpoints come through [`Self::dataplane`].
    pub async fn enable_overlay(&self, vxlan_port: u16) -> Result<(), NetworkError> {
        let inner = &self.inner;
        let (Some(uplink), Some(_)) = (&inner.uplink, inner.node_ip) else {
            return Err(NetworkError::NoUnderlay);
        };
        let mtu = uplink.mtu.saturating_sub(OVERHEAD);
        let mut published = inner.updates.lock().await;
        let host = link::route_cluster_to_host(inner.cluster_cidr, inner.gateway, mtu).await?;
        published.vxlan_port = Some(vxlan_port);
        published.host = Some(host);
        self.push_config(&published).await?;
        drop(published);
        inner.dataplane.attach_host(host.ifindex).await?;
        inner
            .dataplane
            .attach_underlay(&uplink.name, UnderlayXdp::Auto)
            .await?;
        self.set_container_mtu(mtu).await?;
        tracing::info!(uplink = %uplink.name, vxlan_port, mtu, "on the overlay");
        Ok(())
    }

    /// Takes the node off the overlay (it left the cluster): programs off the uplink (the
    /// published ports keep theirs) and off `hivemind0`, the cluster route gone, containers
    /// back at the uplink's MTU.
    pub async fn disable_overlay(&self) -> Result<(), NetworkError> {
        let inner = &self.inner;
        let Some(uplink) = &inner.uplink else {
            return Ok(());
        };
        let mut published = inner.updates.lock().await;
        let host = published.host.take();
        published.vxlan_port = None;
        self.push_config(&published).await?;
        drop(published);
        if let Some(host) = host {
            inner.dataplane.detach_host(host.ifindex).await?;
        }
        link::unroute_cluster(inner.cluster_cidr).await?;
        inner.dataplane.detach_underlay(&uplink.name).await?;
        self.set_container_mtu(uplink.mtu).await
    }

    /// New containers get `mtu`; running ones are changed to it (one that cannot be — its
    /// namespace is gone — is logged and skipped: it is on its way out).
    async fn set_container_mtu(&self, mtu: u32) -> Result<(), NetworkError> {
        let inner = &self.inner;
        if inner.mtu.swap(mtu, Ordering::Relaxed) == mtu {
            return Ok(());
        }
        let netns_dir = paths::netns_dir(&inner.node);
        for (ip, id) in ipam::addresses(inner.state.store(), inner.subnet).await? {
            let host = link::host_ifname(&id);
            if let Err(err) = link::set_container_mtu(&netns_dir.join(&id), &host, mtu).await {
                tracing::warn!(container = %id, %ip, error = %err, "cannot change the container's MTU");
            }
        }
        Ok(())
    }

    pub async fn status(&self) -> NetworkStatus {
        let inner = &self.inner;
        let published = inner.updates.lock().await;
        let endpoints = ipam::addresses(inner.state.store(), inner.subnet)
            .await
            .map_or(0, |a| u32::try_from(a.len()).unwrap_or(u32::MAX));
        NetworkStatus {
            subnet: inner.subnet.to_string(),
            gateway: inner.gateway.to_string(),
            uplink: inner
                .uplink
                .as_ref()
                .map(|u| u.name.clone())
                .unwrap_or_default(),
            node_ip: inner.node_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            policies: published.policies,
            endpoints,
        }
    }
}

/// Parses stored policies and compiles them with the apps' identities and labels.
pub fn compile_records(
    records: &[PolicyRecord],
    apps: &[AppSpec],
    identities: &BTreeMap<String, u32>,
) -> Result<(policy::Compiled, u32), NetworkError> {
    let mut parsed = Vec::with_capacity(records.len());
    for record in records {
        let policies = policy::parse_str(&record.name, &record.yaml).map_err(|errors| {
            NetworkError::StoredPolicy {
                name: record.name.clone(),
                errors,
            }
        })?;
        parsed.extend(policies.into_iter().map(|p| (record.id, p)));
    }
    let refs: Vec<PolicyRef<'_>> = parsed
        .iter()
        .map(|(id, policy)| PolicyRef { id: *id, policy })
        .collect();
    let app_identities: Vec<AppIdentity> = apps
        .iter()
        .filter_map(|app| {
            Some(AppIdentity {
                app: app.name.clone(),
                identity: *identities.get(&app.name)?,
                labels: app.selector_labels(),
            })
        })
        .collect();
    let count = u32::try_from(refs.len()).unwrap_or(u32::MAX);
    Ok((policy::compile(&refs, &app_identities), count))
}
