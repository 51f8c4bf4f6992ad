//! Interfaces, addresses, routes and neighbours, over rtnetlink.
//!
//! Everything acts in the network namespace of the calling thread (the node's, for the agent),
//! except the container side of [`plumb_container`], done inside the container's namespace.
//! Each operation runs on a dedicated OS thread with its own current-thread runtime and its
//! own netlink sockets: a netlink socket belongs to the namespace it was opened in, and
//! `setns` must not touch a shared tokio worker.
//!
//! Layout (no bridge; the eBPF programs deliver by redirect):
//! - node: dummy `hivemind0` (a port-less bridge where the kernel lacks the dummy driver) holding the gateway address (`/32`), `ip_forward` on, nftables
//!   table `hivemind` masquerading the container subnet towards anything outside the cluster
//!   CIDR; per container a route `<ip>/32 dev hmXXXXXXXX` and a permanent neighbour entry;
//!   in a cluster, the cluster CIDR routed to `hivemind0` (source: the gateway address);
//! - container: `eth0` with `<ip>/32`, `<gateway> dev eth0 scope link`, `default via
//!   <gateway>`, and a permanent neighbour entry gateway → host veth MAC (no ARP).

use std::{
    fs::File,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use futures_util::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, LinkBridge, LinkDummy, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        self,
        link::{LinkAttribute, LinkMessage},
        neighbour::NeighbourState,
        route::RouteScope,
    },
};

use super::netns::{NetnsGuard, WorkerDied, on_dedicated_thread};

/// The dummy device that holds the node's gateway address.
pub const GATEWAY_DEVICE: &str = "hivemind0";
/// The nftables table (family `ip`) the agent owns.
pub const NFT_TABLE: &str = "hivemind";
const CONTAINER_IFNAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("netlink: {op}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface {0} not found")]
    NotFound(String),
    #[error("network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {path}")]
    Sysctl {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("run nft")]
    NftSpawn(#[source] std::io::Error),
    #[error("nft refused the {table} table: {stderr}")]
    Nft { table: &'static str, stderr: String },
    #[error("netlink runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Worker(#[from] WorkerDied),
}

fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let op = op.into();
    move |source| LinkError::Netlink { op, source }
}

/// The errno of a netlink error reply, if it is one.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

/// What [`setup_node`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub cluster_cidr: Ipv4Net,
    /// Index of `hivemind0`.
    pub gateway_ifindex: u32,
}

/// The interface that connects the node to other hosts: it receives published ports (and, in
/// a cluster, the overlay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    /// Its first IPv4 address, if it has one.
    pub ipv4: Option<Ipv4Addr>,
}

/// What [`plumb_container`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLink {
    /// Host side of the veth pair, `hm` + 12 hex characters of a hash of the container id.
    pub host_ifname: String,
    pub host_ifindex: u32,
    pub host_mac: [u8; 6],
    /// MAC of the container's `eth0`.
    pub container_mac: [u8; 6],
}

/// The host-side veth name of a container: `hm` + 12 hex characters of a hash of its whole id
/// (14 characters, within IFNAMSIZ with room for the `hmp` temporary peer name). Hashing the
/// whole id matters: ids of one app share their prefix.
pub fn host_ifname(container_id: &str) -> String {
    // FNV-1a, 64 bits: stable across runs and builds, unlike std's hasher.
    let hash = container_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("hm{:012x}", hash >> 16)
}

/// Runs `work` with a netlink handle on a dedicated thread (in the caller's namespace).
async fn with_netlink<T, F, Fut>(name: &str, work: F) -> Result<T, LinkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, LinkError>>,
{
    on_dedicated_thread(name, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(LinkError::Runtime)?;
        runtime.block_on(async move {
            let handle = connect()?;
            work(handle).await
        })
    })
    .await?
}

/// A netlink connection in the calling thread's current namespace; its task runs on the
/// current runtime.
fn connect() -> Result<Handle, LinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Runtime)?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, LinkError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(None),
        Err(err) => Err(netlink(format!("get link {name}"))(err)),
    }
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<(u32, [u8; 6]), LinkError> {
    let link = find_link(handle, name)
        .await?
        .ok_or_else(|| LinkError::NotFound(name.to_owned()))?;
    let mac = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        })
        .unwrap_or_default();
    Ok((link.header.index, mac))
}

async fn delete_if_present(handle: &Handle, name: &str) -> Result<bool, LinkError> {
    let Some(link) = find_link(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(false),
        Err(err) => Err(netlink(format!("delete link {name}"))(err)),
    }
}

async fn add_address(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), LinkError> {
    handle
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .replace()
        .execute()
        .await
        .map_err(netlink(format!("add address {ip}/{prefix}")))
}

async fn add_route(
    handle: &Handle,
    route: RouteMessageBuilder<Ipv4Addr>,
    what: &str,
) -> Result<(), LinkError> {
    match handle.route().add(route.build()).replace().execute().await {
        Ok(()) => Ok(()),
        Err(err) => Err(netlink(format!("add route {what}"))(err)),
    }
}

async fn add_neighbour(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    mac: [u8; 6],
) -> Result<(), LinkError> {
    handle
        .neighbours()
        .add(index, IpAddr::V4(ip))
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(netlink(format!("add neighbour {ip}")))
}

async fn set_up(handle: &Handle, index: u32, what: &str) -> Result<(), LinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink(format!("set {what} up")))
}

/// The uplink: the interface named `name`, or else the one holding `address` (the node's
/// underlay address, where the overlay arrives), or else the one the default route leaves by.
/// `None` when there is none of these (an isolated node: nothing to publish ports on).
pub async fn uplink(
    name: Option<&str>,
    address: Option<Ipv4Addr>,
) -> Result<Option<Uplink>, LinkError> {
    let name = name.map(str::to_owned);
    with_netlink("hm-uplink", move |handle| async move {
        let holder = match (&name, address) {
            (None, Some(ip)) => link_holding(&handle, ip).await?,
            _ => None,
        };
        let link = if let Some(name) = name {
            Some(
                find_link(&handle, &name)
                    .await?
                    .ok_or_else(|| LinkError::NotFound(name.clone()))?,
            )
        } else if let Some(index) = holder {
            handle
                .link()
                .get()
                .match_index(index)
                .execute()
                .try_next()
                .await
                .map_err(netlink(format!("get the link holding {address:?}")))?
        } else {
            let mut routes = handle
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            let mut oif = None;
            while let Some(route) = routes.try_next().await.map_err(netlink("list routes"))? {
                if route.header.destination_prefix_length == 0 {
                    oif = route.attributes.iter().find_map(|a| match a {
                        packet_route::route::RouteAttribute::Oif(index) => Some(*index),
                        _ => None,
                    });
                    if oif.is_some() {
                        break;
                    }
                }
            }
            match oif {
                Some(index) => handle
                    .link()
                    .get()
                    .match_index(index)
                    .execute()
                    .try_next()
                    .await
                    .map_err(netlink("get the default route's link"))?,
                None => None,
            }
        };
        let Some(link) = link else { return Ok(None) };
        let index = link.header.index;
        let mut name = String::new();
        let mut mtu = 1500;
        for attribute in &link.attributes {
            match attribute {
                LinkAttribute::IfName(n) => name.clone_from(n),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        let mut addresses = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut ipv4 = None;
        while let Some(address) = addresses
            .try_next()
            .await
            .map_err(netlink("list addresses"))?
        {
            ipv4 = address.attributes.iter().find_map(|a| match a {
                packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if ipv4.is_some() {
                break;
            }
        }
        Ok(Some(Uplink {
            name,
            ifindex: index,
            mtu,
            ipv4,
        }))
    })
    .await
}

/// Index of the interface that has `ip` among its addresses.
async fn link_holding(handle: &Handle, ip: Ipv4Addr) -> Result<Option<u32>, LinkError> {
    let mut addresses = handle.address().get().execute();
    while let Some(address) = addresses
        .try_next()
        .await
        .map_err(netlink("list addresses"))?
    {
        let holds = address.attributes.iter().any(|a| {
            matches!(a, packet_route::address::AddressAttribute::Address(IpAddr::V4(a)) if *a == ip)
        });
        if holds {
            return Ok(Some(address.header.index));
        }
    }
    Ok(None)
}

/// Prepares the node's namespace: `hivemind0` with `gateway/32`, IPv4 forwarding, and the
/// masquerade rule for container traffic leaving the cluster CIDR. Idempotent.
pub async fn setup_node(
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    cluster_cidr: Ipv4Net,
) -> Result<NodeNet, LinkError> {
    let subnet = subnet.trunc();
    let cluster_cidr = cluster_cidr.trunc();
    with_netlink("hm-setup-node", move |handle| async move {
        if find_link(&handle, GATEWAY_DEVICE).await?.is_none() {
            add_gateway_device(&handle).await?;
        }
        let (index, _) = link_by_name(&handle, GATEWAY_DEVICE).await?;
        add_address(&handle, index, gateway, 32).await?;
        // A node that joined a cluster has another subnet than it had alone: drop the old
        // gateway address, which is now another node's.
        remove_other_addresses(&handle, index, gateway).await?;
        set_up(&handle, index, GATEWAY_DEVICE).await?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| {
            LinkError::Sysctl {
                path: "/proc/sys/net/ipv4/ip_forward",
                source,
            }
        })?;
        nft(&format!(
            "add table ip {NFT_TABLE}\n\
             delete table ip {NFT_TABLE}\n\
             table ip {NFT_TABLE} {{\n\
               chain postrouting {{\n\
                 type nat hook postrouting priority srcnat; policy accept;\n\
                 ip saddr {subnet} ip daddr != {cluster_cidr} masquerade\n\
               }}\n\
             }}\n"
        ))?;
        tracing::info!(%subnet, %gateway, %cluster_cidr, "node network ready");
        Ok(NodeNet {
            subnet,
            gateway,
            cluster_cidr,
            gateway_ifindex: index,
        })
    })
    .await
}

async fn remove_other_addresses(
    handle: &Handle,
    index: u32,
    keep: Ipv4Addr,
) -> Result<(), LinkError> {
    let mut addresses = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut stale = Vec::new();
    while let Some(message) = addresses
        .try_next()
        .await
        .map_err(netlink("list addresses"))?
    {
        let other = message.attributes.iter().any(|a| {
            matches!(a, packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) if *ip != keep)
        });
        if other {
            stale.push(message);
        }
    }
    for message in stale {
        tracing::info!(?message.attributes, "removing a stale gateway address");
        handle
            .address()
            .del(message)
            .execute()
            .await
            .map_err(netlink("remove a stale gateway address"))?;
    }
    Ok(())
}

/// A dummy device; on kernels built without the dummy driver (EOPNOTSUPP), a bridge without
/// ports, which holds a local address just as well (nothing is ever enslaved to it).
async fn add_gateway_device(handle: &Handle) -> Result<(), LinkError> {
    match handle
        .link()
        .add(LinkDummy::new(GATEWAY_DEVICE).build())
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(err) if errno(&err) == Some(libc::EOPNOTSUPP) => {
            tracing::info!(
                "no dummy driver in this kernel; {GATEWAY_DEVICE} is a bridge without ports"
            );
            handle
                .link()
                .add(LinkBridge::new(GATEWAY_DEVICE).build())
                .execute()
                .await
                .map_err(netlink(format!("add bridge {GATEWAY_DEVICE}")))
        }
        Err(err) => Err(netlink(format!("add dummy {GATEWAY_DEVICE}"))(err)),
    }
}

/// What [`route_cluster_to_host`] made: `hivemind0`, which `hm_from_host` runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostDevice {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// Routes the cluster CIDR to `hivemind0` with the gateway address as source, and gives the
/// device the overlay's `mtu`: the node's own packets to containers on other nodes (the
/// HTTP router's, an operator's `curl`) then leave through `hm_from_host`, which sends them
/// through the overlay, and the answers come back to the gateway address. The node's own
/// containers keep their `/32` routes, which are more specific. ARP is turned off on the
/// device (a dummy has it off already; the bridge fallback would otherwise ask for every
/// remote address and never hear back). Idempotent.
pub async fn route_cluster_to_host(
    cluster_cidr: Ipv4Net,
    gateway: Ipv4Addr,
    mtu: u32,
) -> Result<HostDevice, LinkError> {
    let cluster_cidr = cluster_cidr.trunc();
    with_netlink("hm-route-cluster", move |handle| async move {
        let (ifindex, mac) = link_by_name(&handle, GATEWAY_DEVICE).await?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(ifindex)
                    .arp(false)
                    .mtu(mtu)
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("set {GATEWAY_DEVICE} noarp mtu {mtu}")))?;
        add_route(
            &handle,
            cluster_route(cluster_cidr, ifindex).pref_source(gateway),
            &format!("{cluster_cidr} dev {GATEWAY_DEVICE} src {gateway}"),
        )
        .await?;
        Ok(HostDevice { ifindex, mac })
    })
    .await
}

/// Undoes [`route_cluster_to_host`]'s route (the node left its cluster). Nothing to do if it
/// is gone.
pub async fn unroute_cluster(cluster_cidr: Ipv4Net) -> Result<(), LinkError> {
    let cluster_cidr = cluster_cidr.trunc();
    with_netlink("hm-unroute-cluster", move |handle| async move {
        let Some(device) = find_link(&handle, GATEWAY_DEVICE).await? else {
            return Ok(());
        };
        match handle
            .route()
            .del(cluster_route(cluster_cidr, device.header.index).build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if errno(&err) == Some(libc::ESRCH) => Ok(()),
            Err(err) => Err(netlink(format!(
                "remove route {cluster_cidr} dev {GATEWAY_DEVICE}"
            ))(err)),
        }
    })
    .await
}

fn cluster_route(cluster_cidr: Ipv4Net, ifindex: u32) -> RouteMessageBuilder<Ipv4Addr> {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(cluster_cidr.network(), cluster_cidr.prefix_len())
        .output_interface(ifindex)
        .scope(RouteScope::Link)
}

/// Removes what [`setup_node`] made (forwarding stays on: other software may rely on it).
pub async fn teardown_node() -> Result<(), LinkError> {
    with_netlink("hm-teardown-node", |handle| async move {
        nft(&format!(
            "add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n"
        ))?;
        delete_if_present(&handle, GATEWAY_DEVICE).await?;
        Ok(())
    })
    .await
}

/// Applies an nft script atomically (one transaction).
fn nft(script: &str) -> Result<(), LinkError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LinkError::NftSpawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(LinkError::NftSpawn)?;
    }
    let out = child.wait_with_output().map_err(LinkError::NftSpawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LinkError::Nft {
            table: NFT_TABLE,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Gives the container whose namespace is `netns_path` its `eth0`: a veth pair whose host side
/// stays in the caller's namespace, addresses, routes, permanent neighbour entries on both
/// sides, the MTU, and both ends up. A leftover pair of the same name is replaced.
pub async fn plumb_container(
    netns_path: &Path,
    container_id: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    mtu: u32,
) -> Result<ContainerLink, LinkError> {
    let netns_path = netns_path.to_owned();
    let host = host_ifname(container_id);
    with_netlink("hm-plumb", move |handle| async move {
        // A temporary name for the container end while it is still in the node's namespace.
        let peer = format!("hmp{}", &host[2..]);
        delete_if_present(&handle, &host).await?;
        delete_if_present(&handle, &peer).await?;
        handle
            .link()
            .add(LinkVeth::new(&host, &peer).mtu(mtu).build())
            .execute()
            .await
            .map_err(netlink(format!("add veth {host}")))?;
        let (host_index, host_mac) = link_by_name(&handle, &host).await?;
        let (peer_index, _) = link_by_name(&handle, &peer).await?;
        let netns = File::open(&netns_path).map_err(|source| LinkError::Netns {
            path: netns_path.clone(),
            source,
        })?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(peer_index)
                    .setns_by_fd(netns.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!(
                "move {peer} into {}",
                netns_path.display()
            )))?;
        set_up(&handle, host_index, &host).await?;

        let container_mac = {
            let _inside = NetnsGuard::enter(&netns_path).map_err(|source| LinkError::Netns {
                path: netns_path.clone(),
                source,
            })?;
            plumb_inside(&peer, ip, gateway, mtu, host_mac).await?
        };

        add_route(
            &handle,
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(ip, 32)
                .output_interface(host_index)
                .scope(RouteScope::Link),
            &format!("{ip}/32 dev {host}"),
        )
        .await?;
        add_neighbour(&handle, host_index, ip, container_mac).await?;
        tracing::debug!(%ip, host_ifname = %host, "container plumbed");
        Ok(ContainerLink {
            host_ifname: host,
            host_ifindex: host_index,
            host_mac,
            container_mac,
        })
    })
    .await
}

/// The container side, run with the thread inside the container's namespace. Opens its own
/// netlink socket there.
async fn plumb_inside(
    peer: &str,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    mtu: u32,
    host_mac: [u8; 6],
) -> Result<[u8; 6], LinkError> {
    let handle = connect()?;
    let (lo, _) = link_by_name(&handle, "lo").await?;
    set_up(&handle, lo, "lo").await?;
    let (index, mac) = link_by_name(&handle, peer).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .name(CONTAINER_IFNAME.to_owned())
                .mtu(mtu)
                .build(),
        )
        .execute()
        .await
        .map_err(netlink(format!("rename {peer} to {CONTAINER_IFNAME}")))?;
    set_up(&handle, index, CONTAINER_IFNAME).await?;
    add_address(&handle, index, ip, 32).await?;
    add_route(
        &handle,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(gateway, 32)
            .output_interface(index)
            .scope(RouteScope::Link),
        &format!("{gateway} dev {CONTAINER_IFNAME} scope link"),
    )
    .await?;
    add_route(
        &handle,
        RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index),
        &format!("default via {gateway}"),
    )
    .await?;
    add_neighbour(&handle, index, gateway, host_mac).await?;
    Ok(mac)
}

/// What is left of a container's link after an agent crash: the veth pair [`plumb_container`]
/// made and the IPv4 addresses of `eth0` inside the namespace at `netns_path`. `None` if
/// either end is missing.
pub async fn inspect_container(
    netns_path: &Path,
    container_id: &str,
) -> Result<Option<(ContainerLink, Vec<Ipv4Addr>)>, LinkError> {
    let netns_path = netns_path.to_owned();
    let host = host_ifname(container_id);
    with_netlink("hm-inspect", move |handle| async move {
        if find_link(&handle, &host).await?.is_none() {
            return Ok(None);
        }
        let (host_ifindex, host_mac) = link_by_name(&handle, &host).await?;
        let _inside = NetnsGuard::enter(&netns_path).map_err(|source| LinkError::Netns {
            path: netns_path.clone(),
            source,
        })?;
        let inside = connect()?;
        if find_link(&inside, CONTAINER_IFNAME).await?.is_none() {
            return Ok(None);
        }
        let (index, container_mac) = link_by_name(&inside, CONTAINER_IFNAME).await?;
        let mut addresses = inside
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut ips = Vec::new();
        while let Some(message) = addresses
            .try_next()
            .await
            .map_err(netlink(format!("list the addresses of {CONTAINER_IFNAME}")))?
        {
            ips.extend(message.attributes.iter().filter_map(|a| match a {
                packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            }));
        }
        Ok(Some((
            ContainerLink {
                host_ifname: host,
                host_ifindex,
                host_mac,
                container_mac,
            },
            ips,
        )))
    })
    .await
}

/// Sets the MTU of a container's link: the host side `host_ifname` here and `eth0` inside the
/// namespace at `netns_path`. When a node joins a cluster its containers move to the underlay
/// MTU − 50 (the overlay's headers); their routes carry no MTU of their own and follow the
/// device, and connections opened from then on negotiate the smaller MSS.
pub async fn set_container_mtu(
    netns_path: &Path,
    host_ifname: &str,
    mtu: u32,
) -> Result<(), LinkError> {
    let netns_path = netns_path.to_owned();
    let host = host_ifname.to_owned();
    with_netlink("hm-mtu", move |handle| async move {
        let (index, _) = link_by_name(&handle, &host).await?;
        set_mtu(&handle, index, mtu, &host).await?;
        let _inside = NetnsGuard::enter(&netns_path).map_err(|source| LinkError::Netns {
            path: netns_path.clone(),
            source,
        })?;
        let inside = connect()?;
        let (index, _) = link_by_name(&inside, CONTAINER_IFNAME).await?;
        set_mtu(&inside, index, mtu, CONTAINER_IFNAME).await
    })
    .await
}

async fn set_mtu(handle: &Handle, index: u32, mtu: u32, what: &str) -> Result<(), LinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
        .execute()
        .await
        .map_err(netlink(format!("set the MTU of {what} to {mtu}")))
}

/// Deletes a container's veth pair (both ends; routes and neighbours go with it). Nothing to
/// do if it is already gone.
pub async fn unplumb_container(host_ifname: &str) -> Result<(), LinkError> {
    let host = host_ifname.to_owned();
    with_netlink("hm-unplumb", move |handle| async move {
        delete_if_present(&handle, &host).await?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::host_ifname;

    #[test]
    fn host_ifnames_hash_the_whole_id() {
        let name = host_ifname("web-abc12");
        assert_eq!(
            name.len(),
            14,
            "fits IFNAMSIZ, also as the hmp... peer name"
        );
        assert!(name.starts_with("hm") && name[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(name, host_ifname("web-abc12"), "stable");
        assert_ne!(
            host_ifname("deadbeefcafe-a"),
            host_ifname("deadbeefcafe-b"),
            "whole id counts"
        );
    }
}
