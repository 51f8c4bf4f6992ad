//! Cluster formation: the etcd member every node runs, the cluster's certificates, joining,
//! the node registry and node-to-node gRPC. See `docs/cluster.md`.
//!
//! How a node knows it is in a cluster: `<data-dir>/cluster.json` ([`ClusterConfig`]) exists.
//! It is written last when `--cluster-init` or a join completes; at start the agent reads it,
//! starts (or adopts) its etcd member and keeps its state in etcd, over TLS. Without it the
//! node is single (redb) or uses an external etcd (`--etcd-endpoints`).
//!
//! - [`bootstrap`]: choosing the store at start; `--cluster-init` (CA, etcd, moving the redb
//!   state into etcd).
//! - [`join`]: both sides of `hivemind join` (the joiner, and the node that admits it).
//! - [`nodes`]: the node registry and liveness leases.
//! - [`client`]: [`ClusterClient`] for calling other nodes, and the CA-pinning connection a
//!   joiner uses.
//! - [`etcd`]: the supervised etcd process. [`pki`]: CA, certificates, join token.

pub mod bootstrap;
pub mod client;
pub mod etcd;
pub mod join;
pub mod nodes;
pub mod pki;

use std::{
    fs,
    net::Ipv4Addr,
    path::Path,
    sync::{Arc, Mutex},
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use self::client::{ClientError, ClusterClient, NodeTls};
use self::{etcd::EtcdMember, nodes::NodeState};
use crate::{model, paths::DataDir, proto, store::Store};

/// Default port of a node's cluster endpoint (node-to-node gRPC with mutual TLS).
pub const DEFAULT_CLUSTER_PORT: u16 = 7443;

/// The cluster's own records in the store.
pub mod keys {
    /// [`super::ClusterRecord`].
    pub const CLUSTER: &str = "/hivemind/cluster/config";
    /// The CA's certificate and key (any node may admit a joiner, so every node can sign).
    pub const CA: &str = "/hivemind/cluster/ca";
    /// The join token.
    pub const JOIN_TOKEN: &str = "/hivemind/cluster/join-token";
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(
        "this node is not in a cluster: there is no join token (start the first node with --cluster-init)"
    )]
    NotClustered,
    #[error("the cluster's {what} is missing from the store")]
    Missing { what: &'static str },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

/// The cluster as a whole, in the store (`/hivemind/cluster/config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub cluster_id: String,
    pub cluster_cidr: Ipv4Net,
    pub vxlan_port: u16,
    /// The node that ran `--cluster-init`.
    pub first_node: String,
    pub created_at_ms: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct CaRecord {
    cert_pem: String,
    key_pem: String,
}

#[derive(Clone, Serialize, Deserialize)]
struct TokenRecord {
    token: String,
}

/// `<data-dir>/cluster.json`: this node's membership. Its presence makes the node a cluster
/// node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub cluster_id: String,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub cluster_cidr: Ipv4Net,
    pub vxlan_port: u16,
    pub cluster_port: u16,
    /// Whether this node runs an etcd member (the first three nodes do).
    pub etcd_member: bool,
    /// `--initial-cluster` of the member's first start.
    pub initial_cluster: String,
    pub initial_state: etcd::InitialState,
    /// Voting members' client URLs: what a node without a member connects to.
    pub etcd_endpoints: Vec<String>,
    pub joined_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged")]
    Parse {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ClusterConfig {
    pub fn load(data_dir: &DataDir) -> Result<Option<Self>, ConfigFileError> {
        let path = data_dir.cluster_config();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| ConfigFileError::Parse { path, source }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ConfigFileError::Read { path, source }),
        }
    }

    /// Writes the file atomically (temporary file, fsync, rename): the commit point of an
    /// init or a join.
    pub fn save(&self, data_dir: &DataDir) -> Result<(), ConfigFileError> {
        let path = data_dir.cluster_config();
        let json = serde_json::to_vec_pretty(self).map_err(|source| ConfigFileError::Parse {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json, 0o644).map_err(|source| ConfigFileError::Write { path, source })
    }

    pub fn cluster_address(&self) -> String {
        format!("{}:{}", self.node_ip, self.cluster_port)
    }
}

/// Writes `path` through a temporary file in the same directory, fsynced, then renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// How this agent keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// redb, no cluster.
    Single,
    /// `--etcd-endpoints`: an etcd cluster Hivemind does not run.
    ExternalEtcd,
    /// A node of a Hivemind cluster.
    Cluster(ClusterConfig),
}

/// The cluster side of the agent: membership, the node's certificates, its etcd member and
/// clients to other nodes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cluster {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    data_dir: DataDir,
    node_name: String,
    node_ip: Option<Ipv4Addr>,
    cluster_cidr: Ipv4Net,
    vxlan_port: u16,
    cluster_port: u16,
    store: Store,
    tls: Option<NodeTls>,
    client: ClusterClient,
    etcd: Mutex<Option<EtcdMember>>,
    /// Set when a join completed: the daemon then re-executes itself into the cluster.
    restart: watch::Sender<bool>,
    /// One join at a time on this node; one admission at a time through it.
    join_lock: tokio::sync::Mutex<()>,
    admit_lock: tokio::sync::Mutex<()>,
}

/// What [`Cluster::new`] needs.
#[derive(Debug)]
pub struct Parts {
    pub mode: Mode,
    pub data_dir: DataDir,
    pub node_name: String,
    pub node_ip: Option<Ipv4Addr>,
    pub cluster_cidr: Ipv4Net,
    pub vxlan_port: u16,
    pub cluster_port: u16,
    pub store: Store,
    pub tls: Option<NodeTls>,
    pub etcd: Option<EtcdMember>,
}

impl Cluster {
    pub fn new(parts: Parts) -> Self {
        let client = ClusterClient::new(parts.store.clone(), parts.tls.clone());
        Self {
            inner: Arc::new(Inner {
                mode: parts.mode,
                data_dir: parts.data_dir,
                node_name: parts.node_name,
                node_ip: parts.node_ip,
                cluster_cidr: parts.cluster_cidr,
                vxlan_port: parts.vxlan_port,
                cluster_port: parts.cluster_port,
                store: parts.store,
                tls: parts.tls,
                client,
                etcd: Mutex::new(parts.etcd),
                restart: watch::channel(false).0,
                join_lock: tokio::sync::Mutex::new(()),
                admit_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn mode(&self) -> &Mode {
        &self.inner.mode
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// Calls into other nodes (mutual TLS).
    pub fn client(&self) -> &ClusterClient {
        &self.inner.client
    }

    /// This node's certificates, when it is in a cluster.
    pub fn tls(&self) -> Option<&NodeTls> {
        self.inner.tls.as_ref()
    }

    pub fn config(&self) -> Option<&ClusterConfig> {
        match &self.inner.mode {
            Mode::Cluster(config) => Some(config),
            _ => None,
        }
    }

    /// `IP:PORT` this node's cluster endpoint listens on, when it is in a cluster.
    pub fn cluster_address(&self) -> Option<String> {
        self.config().map(ClusterConfig::cluster_address)
    }

    /// Resolves once a join completed and the agent should re-execute itself.
    pub fn restart_requested(&self) -> watch::Receiver<bool> {
        self.inner.restart.subscribe()
    }

    /// Writes (or refreshes) this node's record and starts renewing its liveness lease.
    pub async fn register(
        &self,
        subnet: Ipv4Net,
        node_ip: Option<Ipv4Addr>,
    ) -> Result<nodes::LivenessHandle, crate::store::StoreError> {
        let inner = &self.inner;
        let existing = nodes::node(&inner.store, &inner.node_name).await?;
        let record = nodes::NodeRecord {
            name: inner.node_name.clone(),
            underlay_ip: node_ip.or(inner.node_ip),
            subnet: Some(subnet),
            cluster_address: self.cluster_address().unwrap_or_default(),
            version: crate::VERSION.to_owned(),
            joined_at_ms: existing
                .as_ref()
                .map(|r| r.joined_at_ms)
                .filter(|t| *t != 0)
                .or_else(|| self.config().map(|c| c.joined_at_ms))
                .unwrap_or_else(model::now_ms),
            state: NodeState::Member,
        };
        if existing.as_ref() != Some(&record) {
            nodes::put_node(&inner.store, &record).await?;
        }
        Ok(nodes::LivenessHandle::start(inner.store.clone(), inner.node_name.clone()).await)
    }

    /// Stops the local etcd member (agent shutdown), or leaves it running for the next agent
    /// to adopt (`keep_running`, before a re-exec).
    pub fn shutdown(&self, keep_running: bool) {
        let member = self.inner.etcd.lock().ok().and_then(|mut m| m.take());
        if let Some(member) = member {
            if keep_running {
                member.detach();
            } else {
                member.stop();
            }
        }
    }

    pub async fn status(&self) -> proto::ClusterStatus {
        let inner = &self.inner;
        let mode = match &inner.mode {
            Mode::Single => "single",
            Mode::ExternalEtcd => "external-etcd",
            Mode::Cluster(_) => "cluster",
        };
        let role = match &inner.mode {
            Mode::Cluster(_) => self
                .etcd_roles()
                .await
                .remove(&inner.node_name)
                .unwrap_or_default(),
            _ => String::new(),
        };
        proto::ClusterStatus {
            mode: mode.into(),
            cluster_id: self
                .config()
                .map(|c| c.cluster_id.clone())
                .unwrap_or_default(),
            cluster_address: self.cluster_address().unwrap_or_default(),
            etcd_role: role,
        }
    }

    /// etcd role ("voter"/"learner") by member name; empty when not a Hivemind cluster.
    async fn etcd_roles(&self) -> std::collections::BTreeMap<String, String> {
        if !matches!(self.inner.mode, Mode::Cluster(_)) {
            return std::collections::BTreeMap::new();
        }
        match self.inner.store.members().await {
            Ok(members) => members
                .into_iter()
                .filter(|m| !m.name.is_empty())
                .map(|m| {
                    let role = if m.is_learner { "learner" } else { "voter" };
                    (m.name, role.to_owned())
                })
                .collect(),
            Err(err) => {
                tracing::debug!("listing etcd members: {err}");
                std::collections::BTreeMap::new()
            }
        }
    }

    /// Every node with its readiness, containers and etcd role.
    pub async fn list_nodes(&self) -> Result<Vec<proto::NodeInfo>, ClusterError> {
        let store = &self.inner.store;
        let records = nodes::nodes(store).await?;
        let ready = nodes::ready_nodes(store).await?;
        let (containers, _) = store
            .range_json::<model::ContainerRecord>(model::keys::CONTAINERS)
            .await?;
        let roles = self.etcd_roles().await;
        Ok(records
            .into_values()
            .map(|record| {
                let count = containers
                    .iter()
                    .filter(|c| c.value.node == record.name)
                    .count();
                proto::NodeInfo {
                    ready: ready.contains(&record.name),
                    subnet: record.subnet.map(|s| s.to_string()).unwrap_or_default(),
                    underlay_ip: record
                        .underlay_ip
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                    cluster_address: record.cluster_address.clone(),
                    containers: u32::try_from(count).unwrap_or(u32::MAX),
                    etcd_role: roles.get(&record.name).cloned().unwrap_or_default(),
                    version: record.version.clone(),
                    joined_at_ms: record.joined_at_ms,
                    state: record.state.as_str().into(),
                    local: record.name == self.inner.node_name,
                    name: record.name,
                    tunnel: None,
                }
            })
            .collect())
    }

    /// The join token (from the store: every node of the cluster can print it).
    pub async fn token(&self) -> Result<proto::TokenReply, ClusterError> {
        let Mode::Cluster(config) = &self.inner.mode else {
            return Err(ClusterError::NotClustered);
        };
        let record = self
            .inner
            .store
            .get_json::<TokenRecord>(keys::JOIN_TOKEN)
            .await?
            .ok_or(ClusterError::Missing { what: "join token" })?;
        let token = pki::JoinToken::parse(&record.value.token)?;
        Ok(proto::TokenReply {
            ca_hash: token.ca_hash.clone(),
            token: token.to_string(),
            cluster_id: config.cluster_id.clone(),
        })
    }
}

/// The node certificate and key and the CA, from `<data-dir>/pki`.
pub fn load_tls(data_dir: &DataDir) -> std::io::Result<NodeTls> {
    let pki = data_dir.pki();
    Ok(NodeTls {
        ca_pem: fs::read_to_string(pki.join("ca.crt"))?,
        cert_pem: fs::read_to_string(pki.join("node.crt"))?,
        key_pem: fs::read_to_string(pki.join("node.key"))?,
    })
}

/// Writes `<data-dir>/pki` (directory 0700, key 0600).
pub fn save_tls(data_dir: &DataDir, tls: &NodeTls) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    let pki = data_dir.pki();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&pki)?;
    write_atomic(&pki.join("ca.crt"), tls.ca_pem.as_bytes(), 0o644)?;
    write_atomic(&pki.join("node.crt"), tls.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&pki.join("node.key"), tls.key_pem.as_bytes(), 0o600)
}

/// The TLS setup of this node's cluster endpoint: its certificate with the CA behind it (a
/// joiner pins the CA from that chain), and client certificates from the CA accepted but not
/// required at the TLS layer (a joiner has none yet); every service but `ClusterPeer`
/// requires one, see [`require_node_certificate`].
pub fn server_tls(tls: &NodeTls) -> tonic::transport::ServerTlsConfig {
    let chain = format!("{}\n{}", tls.cert_pem.trim_end(), tls.ca_pem);
    tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(chain, &tls.key_pem))
        .client_ca_root(tonic::transport::Certificate::from_pem(&tls.ca_pem))
        .client_auth_optional(true)
}

/// The cluster endpoint's gate for every service but joining: another node (a client
/// certificate of the cluster CA, verified in the TLS handshake) or a remote `hivemind` CLI
/// (`authorization: Bearer <this agent's API token>`).
#[derive(Clone)]
pub struct NodeOrToken {
    token: std::sync::Arc<str>,
}

impl std::fmt::Debug for NodeOrToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOrToken").finish_non_exhaustive()
    }
}

impl NodeOrToken {
    pub fn new(token: &str) -> Self {
        Self {
            token: token.into(),
        }
    }
}

impl tonic::service::Interceptor for NodeOrToken {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if request.peer_certs().is_some_and(|certs| !certs.is_empty()) {
            return Ok(request);
        }
        let headers = request.metadata().clone().into_headers();
        if crate::api::rest::security::bearer_matches(&headers, &self.token) {
            return Ok(request);
        }
        let message = if headers.contains_key(axum::http::header::AUTHORIZATION) {
            "the agent refused the token: give this node's API token (`hivemind agent --print-token` on it, or <data dir>/api-token)"
        } else {
            "this endpoint needs a bearer token (--token, or token in the client config) or a node certificate of the cluster"
        };
        Err(tonic::Status::unauthenticated(message))
    }
}

/// A tonic interceptor for the cluster endpoint: only callers that presented a certificate of
/// the cluster CA (verified during the TLS handshake) get through.
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn require_node_certificate(
    request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    if request.peer_certs().is_some_and(|certs| !certs.is_empty()) {
        Ok(request)
    } else {
        Err(tonic::Status::unauthenticated(
            "this endpoint serves the nodes of the cluster only: present a node certificate of the cluster CA",
        ))
    }
}
