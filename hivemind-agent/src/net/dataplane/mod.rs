//! The eBPF dataplane: loads the embedded object, pins its maps, programs and TCX links under
//! `/sys/fs/bpf/hivemind/<node>`, and owns every program and map handle.
//!
//! One task owns the loaded [`Dataplane`]; the rest of the agent talks to it through
//! [`DataplaneHandle`] with typed commands, so no map ever needs a lock. A second task, the only
//! reader of the events ring buffer, feeds [`DataplaneHandle::subscribe_events`].
//!
//! Restarts: maps are pinned by name and links are pinned per interface, so the programs keep
//! running while the agent is away. A new [`Dataplane`] loads fresh programs, reuses the pinned
//! maps, and points each pinned link at its fresh program with an atomic link update — the
//! same path serves an upgrade to different programs.

pub(crate) mod bpffs;
mod events;
mod kernel;
mod sys;

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use hivemind_common::{
    Counter,
    config::Config,
    ct::{PortKey, PortTarget},
    endpoint::Endpoint,
    event::VerdictEvent,
    overlay::Peer,
    policy::{PolicyKey, PolicyValue},
};
use ipnet::Ipv4Net;
use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::JoinHandle,
};

pub use kernel::{
    AttachedProgram, Dataplane, PeerStat, ProgramKind, ReasonCounter, RunResult, UnderlayXdp,
};

use crate::proto;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot prepare the pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the eBPF object")]
    LoadObject(#[source] aya::EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("the kernel rejected program {name}")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("batched update of map {map}")]
    Batch {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{count} policy entries exceed the maximum of {max}")]
    TooManyRules { count: usize, max: usize },
    #[error("attach {program} to interface {ifindex}")]
    Attach {
        program: &'static str,
        ifindex: u32,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link pinned at {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("unpin {path}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {name}")]
    Interface {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("query the TCX programs of {ifname}")]
    Query {
        ifname: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("test run of {program}")]
    TestRun {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the dataplane task has stopped")]
    Stopped,
}

type Reply<T> = oneshot::Sender<Result<T, DataplaneError>>;

enum Command {
    AttachContainer(u32, Reply<()>),
    DetachContainer(u32, Reply<()>),
    AttachNodeIngress(String, Reply<()>),
    DetachNodeIngress(String, Reply<()>),
    AttachUnderlay(String, UnderlayXdp, Reply<()>),
    DetachUnderlay(String, Reply<()>),
    AttachHost(u32, Reply<()>),
    DetachHost(u32, Reply<()>),
    UpsertEndpoint(Ipv4Addr, Endpoint, Reply<()>),
    UpsertRemoteEndpoint {
        ip: Ipv4Addr,
        identity: u32,
        node_ip: Ipv4Addr,
        reply: Reply<()>,
    },
    RemoveEndpoint(Ipv4Addr, Reply<()>),
    SetRemoteEndpoints(Vec<(Ipv4Addr, u32, Ipv4Addr)>, Reply<()>),
    SetPeers(Vec<(Ipv4Addr, Peer)>, Reply<()>),
    SetTunnels(Vec<(Ipv4Net, Ipv4Addr)>, Reply<()>),
    PeerStats(Reply<Vec<PeerStat>>),
    ReplacePolicy {
        entries: Vec<(PolicyKey, PolicyValue)>,
        cidrs: Vec<(ipnet::Ipv4Net, u32)>,
        reply: Reply<()>,
    },
    SetPorts(Vec<(PortKey, PortTarget)>, Reply<()>),
    SetConfig(Config, Reply<()>),
    Counters(Reply<Vec<ReasonCounter>>),
    PolicyCounters(Reply<BTreeMap<u32, Counter>>),
    TcxPrograms(String, Reply<Vec<AttachedProgram>>),
    Status(oneshot::Sender<proto::DataplaneStatus>),
    Shutdown(oneshot::Sender<()>),
}

/// Cheap to clone; every clone talks to the same owner.
#[derive(Clone, Debug)]
pub struct DataplaneHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<VerdictEvent>,
}

impl DataplaneHandle {
    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, DataplaneError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| DataplaneError::Stopped)?;
        answer.await.map_err(|_| DataplaneError::Stopped)?
    }

    /// Attaches `hm_from_container` (ingress) and `hm_to_container` (egress) to a container's
    /// host-side veth. Idempotent.
    pub async fn attach_container(&self, host_ifindex: u32) -> Result<(), DataplaneError> {
        self.ask(|r| Command::AttachContainer(host_ifindex, r))
            .await
    }

    pub async fn detach_container(&self, host_ifindex: u32) -> Result<(), DataplaneError> {
        self.ask(|r| Command::DetachContainer(host_ifindex, r))
            .await
    }

    /// Attaches `hm_node_ingress` to the uplink (needed once some app publishes a port).
    pub async fn attach_node_ingress(&self, ifname: &str) -> Result<(), DataplaneError> {
        let ifname = ifname.to_owned();
        self.ask(|r| Command::AttachNodeIngress(ifname, r)).await
    }

    pub async fn detach_node_ingress(&self, ifname: &str) -> Result<(), DataplaneError> {
        let ifname = ifname.to_owned();
        self.ask(|r| Command::DetachNodeIngress(ifname, r)).await
    }

    /// The overlay's receiving side on the underlay interface `ifname`: `hm_underlay` (XDP
    /// member filter, mode `xdp`) and `hm_node_ingress` (TCX ingress: member check, VXLAN
    /// decapsulation and delivery, published ports). Idempotent.
    pub async fn attach_underlay(
        &self,
        ifname: &str,
        xdp: UnderlayXdp,
    ) -> Result<(), DataplaneError> {
        let ifname = ifname.to_owned();
        self.ask(|r| Command::AttachUnderlay(ifname, xdp, r)).await
    }

    /// Undoes [`Self::attach_underlay`]; `hm_node_ingress` stays while ports are published.
    pub async fn detach_underlay(&self, ifname: &str) -> Result<(), DataplaneError> {
        let ifname = ifname.to_owned();
        self.ask(|r| Command::DetachUnderlay(ifname, r)).await
    }

    /// Attaches `hm_from_host` to the egress of `hivemind0` (index `ifindex`): the node's own
    /// traffic to containers on other nodes goes through the overlay. Idempotent.
    pub async fn attach_host(&self, ifindex: u32) -> Result<(), DataplaneError> {
        self.ask(|r| Command::AttachHost(ifindex, r)).await
    }

    pub async fn detach_host(&self, ifindex: u32) -> Result<(), DataplaneError> {
        self.ask(|r| Command::DetachHost(ifindex, r)).await
    }

    pub async fn upsert_endpoint(
        &self,
        ip: Ipv4Addr,
        endpoint: Endpoint,
    ) -> Result<(), DataplaneError> {
        self.ask(|r| Command::UpsertEndpoint(ip, endpoint, r)).await
    }

    /// A container on another node (see [`Dataplane::upsert_remote_endpoint`]). Removed with
    /// [`Self::remove_endpoint`].
    pub async fn upsert_remote_endpoint(
        &self,
        ip: Ipv4Addr,
        identity: u32,
        node_ip: Ipv4Addr,
    ) -> Result<(), DataplaneError> {
        self.ask(|reply| Command::UpsertRemoteEndpoint {
            ip,
            identity,
            node_ip,
            reply,
        })
        .await
    }

    /// Makes the remote endpoints exactly `remotes`: (container address, its app's identity,
    /// the underlay address of its node). Local endpoints are left alone.
    pub async fn set_remote_endpoints(
        &self,
        remotes: Vec<(Ipv4Addr, u32, Ipv4Addr)>,
    ) -> Result<(), DataplaneError> {
        self.ask(|r| Command::SetRemoteEndpoints(remotes, r)).await
    }

    /// Makes the cluster's members exactly `peers`: node underlay address → [`Peer`]. Only
    /// members' VXLAN is accepted, and only members are sent to.
    pub async fn set_peers(&self, peers: Vec<(Ipv4Addr, Peer)>) -> Result<(), DataplaneError> {
        self.ask(|r| Command::SetPeers(peers, r)).await
    }

    /// Makes the tunnels exactly `tunnels`: node container subnet → node underlay address.
    pub async fn set_tunnels(
        &self,
        tunnels: Vec<(Ipv4Net, Ipv4Addr)>,
    ) -> Result<(), DataplaneError> {
        self.ask(|r| Command::SetTunnels(tunnels, r)).await
    }

    /// Packets, bytes and last activity per peer, summed over CPUs.
    pub async fn peer_stats(&self) -> Result<Vec<PeerStat>, DataplaneError> {
        self.ask(Command::PeerStats).await
    }

    pub async fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<(), DataplaneError> {
        self.ask(|r| Command::RemoveEndpoint(ip, r)).await
    }

    /// Swaps in a complete rule set atomically (see [`Dataplane::replace_policy`]).
    pub async fn replace_policy(
        &self,
        entries: Vec<(PolicyKey, PolicyValue)>,
        cidrs: Vec<(ipnet::Ipv4Net, u32)>,
    ) -> Result<(), DataplaneError> {
        self.ask(|reply| Command::ReplacePolicy {
            entries,
            cidrs,
            reply,
        })
        .await
    }

    /// Makes the published ports exactly `ports`.
    pub async fn set_ports(&self, ports: Vec<(PortKey, PortTarget)>) -> Result<(), DataplaneError> {
        self.ask(|r| Command::SetPorts(ports, r)).await
    }

    pub async fn set_config(&self, config: Config) -> Result<(), DataplaneError> {
        self.ask(|r| Command::SetConfig(config, r)).await
    }

    /// Packets and bytes by reason, summed over CPUs.
    pub async fn counters(&self) -> Result<Vec<ReasonCounter>, DataplaneError> {
        self.ask(Command::Counters).await
    }

    /// Policy drops by policy id (0: default deny).
    pub async fn policy_counters(&self) -> Result<BTreeMap<u32, Counter>, DataplaneError> {
        self.ask(Command::PolicyCounters).await
    }

    /// Verdict events from now on: every drop, and new forwarded flows while
    /// `FLAG_EVENTS_FORWARDED` is set. A subscriber that falls behind loses the oldest.
    pub fn subscribe_events(&self) -> broadcast::Receiver<VerdictEvent> {
        self.events.subscribe()
    }

    /// What the kernel runs on `ifname`'s TCX hooks (see [`Dataplane::tcx_programs`]).
    pub async fn tcx_programs(&self, ifname: &str) -> Result<Vec<AttachedProgram>, DataplaneError> {
        let ifname = ifname.to_owned();
        self.ask(|r| Command::TcxPrograms(ifname, r)).await
    }

    pub async fn status(&self) -> Result<proto::DataplaneStatus, DataplaneError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Status(reply))
            .await
            .map_err(|_| DataplaneError::Stopped)?;
        answer.await.map_err(|_| DataplaneError::Stopped)
    }

    /// Stops the owner and the events reader and releases every handle. Pinned maps and links
    /// stay: the programs keep forwarding until the next start takes them over.
    pub async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_ok() {
            let _ = answer.await;
        }
    }
}

/// Loads every program (a verifier rejection fails here, at start, loudly), takes over pinned
/// links, and spawns the owning task and the events reader.
pub fn start(pin_dir: &Path) -> Result<DataplaneHandle, DataplaneError> {
    let mut dataplane = Dataplane::load(pin_dir)?;
    let (events, _) = broadcast::channel(events::SUBSCRIBER_BUFFER);
    let reader = dataplane
        .take_events()
        .map(|ring| events::spawn(ring, events.clone()));
    let (commands, inbox) = mpsc::channel(64);
    tokio::spawn(run(dataplane, reader, inbox));
    Ok(DataplaneHandle { commands, events })
}

async fn run(
    mut dataplane: Dataplane,
    reader: Option<JoinHandle<()>>,
    mut inbox: mpsc::Receiver<Command>,
) {
    let mut done = None;
    while let Some(command) = inbox.recv().await {
        match command {
            Command::AttachContainer(ifindex, reply) => {
                let _ = reply.send(dataplane.attach_container(ifindex));
            }
            Command::DetachContainer(ifindex, reply) => {
                let _ = reply.send(dataplane.detach_container(ifindex));
            }
            Command::AttachNodeIngress(ifname, reply) => {
                let _ = reply.send(dataplane.attach_node_ingress(&ifname));
            }
            Command::DetachNodeIngress(ifname, reply) => {
                let _ = reply.send(dataplane.detach_node_ingress(&ifname));
            }
            Command::AttachUnderlay(ifname, xdp, reply) => {
                let _ = reply.send(dataplane.attach_underlay(&ifname, xdp));
            }
            Command::DetachUnderlay(ifname, reply) => {
                let _ = reply.send(dataplane.detach_underlay(&ifname));
            }
            Command::AttachHost(ifindex, reply) => {
                let _ = reply.send(dataplane.attach_host(ifindex));
            }
            Command::DetachHost(ifindex, reply) => {
                let _ = reply.send(dataplane.detach_host(ifindex));
            }
            Command::UpsertEndpoint(ip, endpoint, reply) => {
                let _ = reply.send(dataplane.upsert_endpoint(ip, endpoint));
            }
            Command::UpsertRemoteEndpoint {
                ip,
                identity,
                node_ip,
                reply,
            } => {
                let _ = reply.send(dataplane.upsert_remote_endpoint(ip, identity, node_ip));
            }
            Command::SetRemoteEndpoints(remotes, reply) => {
                let _ = reply.send(dataplane.set_remote_endpoints(&remotes));
            }
            Command::SetPeers(peers, reply) => {
                let _ = reply.send(dataplane.set_peers(&peers));
            }
            Command::SetTunnels(tunnels, reply) => {
                let _ = reply.send(dataplane.set_tunnels(&tunnels));
            }
            Command::PeerStats(reply) => {
                let _ = reply.send(dataplane.peer_stats());
            }
            Command::RemoveEndpoint(ip, reply) => {
                let _ = reply.send(dataplane.remove_endpoint(ip));
            }
            Command::ReplacePolicy {
                entries,
                cidrs,
                reply,
            } => {
                let _ = reply.send(dataplane.replace_policy(&entries, &cidrs));
            }
            Command::SetPorts(ports, reply) => {
                let _ = reply.send(dataplane.set_ports(&ports));
            }
            Command::SetConfig(config, reply) => {
                let _ = reply.send(dataplane.set_config(config));
            }
            Command::Counters(reply) => {
                let _ = reply.send(dataplane.counters());
            }
            Command::PolicyCounters(reply) => {
                let _ = reply.send(dataplane.policy_counters());
            }
            Command::TcxPrograms(ifname, reply) => {
                let _ = reply.send(dataplane.tcx_programs(&ifname));
            }
            Command::Status(reply) => {
                let _ = reply.send(dataplane.status());
            }
            Command::Shutdown(reply) => {
                done = Some(reply);
                break;
            }
        }
    }
    if let Some(reader) = reader {
        reader.abort();
        let _ = reader.await;
    }
    drop(dataplane);
    tracing::info!("eBPF dataplane owner stopped; pinned programs keep running");
    if let Some(done) = done {
        let _ = done.send(());
    }
}
