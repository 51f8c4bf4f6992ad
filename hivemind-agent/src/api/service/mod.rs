//! Transport-independent operations behind both the gRPC and the REST API. Each returns the
//! API's messages (`crate::proto`) or an [`ApiError`](super::error::ApiError).

mod apply;
mod apps;
mod cluster;
mod containers;
mod convert;
mod events;
mod exec;
mod locks;
mod metrics;
mod monitor;
mod policies;
mod registries;
mod remote;
mod secrets;
mod update;
mod volumes;

pub use containers::LogQuery;
pub use exec::ExecStream;
pub use update::changes;

use std::{path::PathBuf, sync::Arc, time::Instant};

use crate::{
    cluster::Cluster,
    net::{dataplane::DataplaneHandle, network::NodeNetwork},
    proto,
    reconcile::ReconcilerHandle,
    runtime::Runtime,
    service::Services,
    state::State,
    vault::Vault,
    volumes::VolumeDirs,
};

#[derive(Clone, Debug)]
pub struct AgentService {
    inner: Arc<Inner>,
}

/// Everything the operations need; built once by the daemon.
#[derive(Debug)]
pub struct Parts {
    pub node_name: String,
    pub state: State,
    pub runtime: Runtime,
    pub dataplane: DataplaneHandle,
    pub network: NodeNetwork,
    pub reconciler: ReconcilerHandle,
    pub volumes: VolumeDirs,
    /// Secrets and registry logins, sealed in the store.
    pub vault: Vault,
    /// `<data dir>/containers`: per-container logs and files.
    pub containers_dir: PathBuf,
    /// Membership, the node registry and calls to other nodes.
    pub cluster: Cluster,
    /// Service records (names and serving replicas), as DNS and the router see them.
    pub services: Services,
    /// The apps' virtual IPs.
    pub vips: crate::lb::Vips,
}

#[derive(Debug)]
struct Inner {
    parts: Parts,
    started: Instant,
    /// Which changes wait for which (see [`locks`]).
    locks: locks::ChangeLocks,
}

impl AgentService {
    pub fn new(parts: Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                parts,
                started: Instant::now(),
                locks: locks::ChangeLocks::default(),
            }),
        }
    }

    fn parts(&self) -> &Parts {
        &self.inner.parts
    }

    /// The cluster side: [`Cluster::client`] reaches other nodes' services.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.parts.cluster
    }

    pub async fn health(&self) -> proto::HealthReply {
        let parts = self.parts();
        let mut dataplane = parts.dataplane.status().await.unwrap_or_default();
        let network = parts.network.status().await;
        dataplane.subnet = network.subnet;
        dataplane.gateway = network.gateway;
        dataplane.uplink = network.uplink;
        dataplane.node_ip = network.node_ip;
        dataplane.policies = network.policies;
        dataplane.endpoints = network.endpoints;
        let mut nodes = parts.cluster.list_nodes().await.unwrap_or_default();
        self.annotate_tunnels(&mut nodes).await;
        proto::HealthReply {
            version: crate::VERSION.into(),
            node_name: parts.node_name.clone(),
            uptime_seconds: self.inner.started.elapsed().as_secs(),
            store: Some(parts.state.store().status().await),
            runtime: Some(parts.runtime.status().await),
            dataplane: Some(dataplane),
            nodes,
            cluster: Some(parts.cluster.status().await),
        }
    }
}

impl proto::HealthReply {
    /// Healthy when every subsystem answers; the CLI's exit code and the REST status follow it.
    pub fn is_healthy(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.ok)
            && self.runtime.as_ref().is_some_and(|r| r.reachable)
    }
}
