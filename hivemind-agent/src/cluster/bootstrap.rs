//! Choosing the store at start, and `--cluster-init`.
//!
//! `--cluster-init` on a node that is not in a cluster yet:
//! 1. makes the cluster's CA, this node's certificate, a cluster id and a join token;
//! 2. starts a one-member etcd (`--initial-cluster-state new`) with TLS and client
//!    certificates;
//! 3. copies every key of `state.redb` into etcd (values as they are; revisions restart, and
//!    keys on leases are left out: they are liveness, re-made by the running agent);
//! 4. stores the cluster record, the CA and the join token in etcd;
//! 5. writes `cluster.json` (the commit point) and renames `state.redb` to
//!    `state.redb.pre-cluster`, kept as a backup.
//!
//! If anything fails before 5, the member is stopped and its files removed: the node is
//! still the single node it was, with its redb state untouched. An init interrupted by a
//! crash is cleaned up the same way at the next start.

use std::{fs, net::Ipv4Addr, time::Duration};

use super::{
    CaRecord, Cluster, ClusterConfig, ClusterRecord, ConfigFileError, Mode, NodeTls, Parts,
    TokenRecord,
    etcd::{self, EtcdError, EtcdMember, InitialState, MemberConfig},
    keys, load_tls, pki, save_tls,
};
use crate::{
    config::AgentConfig,
    model::now_ms,
    net::link,
    paths::DataDir,
    store::{EtcdTls, Op, Store, StoreError, Txn},
};

/// How long a starting etcd member may take to answer.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Puts per transaction when moving redb's keys (etcd allows 128 by default) and bytes.
const MIGRATE_BATCH: usize = 64;
const MIGRATE_BATCH_BYTES: usize = 512 << 10;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "this node is in cluster {cluster} as {joined_as} (see {path}); it cannot run as --node-name {requested}"
    )]
    NameChanged {
        cluster: String,
        joined_as: String,
        requested: String,
        path: std::path::PathBuf,
    },
    #[error(
        "this node is in cluster {cluster} (see {path}) and keeps its state in the cluster's etcd; drop --etcd-endpoints"
    )]
    EndpointsInCluster {
        cluster: String,
        path: std::path::PathBuf,
    },
    #[error(
        "--cluster-init needs this node's underlay address for etcd and the cluster endpoint: pass --node-ip or --underlay-iface"
    )]
    NoNodeIp,
    #[error("the local etcd member did not answer within {timeout:?}: {last}")]
    EtcdTimeout { timeout: Duration, last: String },
    #[error("moving the redb state into etcd failed at key {key}")]
    Migrate {
        key: String,
        #[source]
        source: StoreError,
    },
}

fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BootError {
    let path = path.to_owned();
    move |source| BootError::Io { what, path, source }
}

/// The node's underlay IPv4 address: `--node-ip`, else the first address of
/// `--underlay-iface` (or of the default route's interface).
pub async fn node_ip(config: &AgentConfig) -> Result<Option<Ipv4Addr>, BootError> {
    match config.node_ip {
        Some(std::net::IpAddr::V4(ip)) => Ok(Some(ip)),
        Some(std::net::IpAddr::V6(_)) => Ok(None),
        None => Ok(link::uplink(config.underlay_iface.as_deref(), None)
            .await?
            .and_then(|u| u.ipv4)),
    }
}

/// Opens the store this node keeps its state in and sets up its cluster side: the cluster's
/// etcd (a member of it is started or adopted) when `cluster.json` exists, a new cluster with
/// `--cluster-init`, an external etcd with `--etcd-endpoints`, else the redb file.
pub async fn boot(config: &AgentConfig) -> Result<(Store, Cluster), BootError> {
    let data_dir = &config.data_dir;
    let node_ip = node_ip(config).await?;
    let parts = |mode, store: Store, tls, etcd| Parts {
        mode,
        data_dir: data_dir.clone(),
        node_name: config.node_name.clone(),
        node_ip,
        cluster_cidr: config.cluster_cidr,
        vxlan_port: config.vxlan_port,
        cluster_port: config.cluster_port,
        store,
        tls,
        etcd,
    };
    if let Some(cluster) = ClusterConfig::load(data_dir)? {
        if cluster.node_name != config.node_name {
            return Err(BootError::NameChanged {
                cluster: cluster.cluster_id,
                joined_as: cluster.node_name,
                requested: config.node_name.clone(),
                path: data_dir.cluster_config(),
            });
        }
        if !config.etcd_endpoints.is_empty() {
            return Err(BootError::EndpointsInCluster {
                cluster: cluster.cluster_id,
                path: data_dir.cluster_config(),
            });
        }
        if config.cluster_init {
            tracing::info!(cluster = %cluster.cluster_id, "already in a cluster; --cluster-init has nothing to do");
        }
        let (store, tls, member) = start_member(data_dir, &cluster).await?;
        finish_commit(data_dir)?;
        let mut parts = parts(
            Mode::Cluster(cluster.clone()),
            store.clone(),
            Some(tls),
            member,
        );
        // The cluster's settings win over this start's flags.
        parts.cluster_cidr = cluster.cluster_cidr;
        parts.vxlan_port = cluster.vxlan_port;
        parts.cluster_port = cluster.cluster_port;
        parts.node_ip = Some(cluster.node_ip);
        return Ok((store, Cluster::new(parts)));
    }
    clean_leftovers(data_dir);
    if config.cluster_init {
        let node_ip = node_ip.ok_or(BootError::NoNodeIp)?;
        let (cluster, store, tls, member) = init(config, node_ip).await?;
        let mut parts = parts(
            Mode::Cluster(cluster),
            store.clone(),
            Some(tls),
            Some(member),
        );
        parts.node_ip = Some(node_ip);
        return Ok((store, Cluster::new(parts)));
    }
    if config.etcd_endpoints.is_empty() {
        let store = Store::open_redb(&data_dir.store_db())?;
        Ok((
            store.clone(),
            Cluster::new(parts(Mode::Single, store, None, None)),
        ))
    } else {
        let store = Store::connect_etcd(&config.etcd_endpoints).await?;
        Ok((
            store.clone(),
            Cluster::new(parts(Mode::ExternalEtcd, store, None, None)),
        ))
    }
}

/// What an init or join that never reached its commit point left behind: a member, its data,
/// the certificates. The node is not in a cluster, so none of it is in use.
pub fn clean_leftovers(data_dir: &DataDir) {
    etcd::kill_leftover(data_dir);
    for dir in [data_dir.etcd(), data_dir.pki()] {
        if dir.exists() {
            tracing::info!(path = %dir.display(), "removing what an interrupted cluster init or join left");
            let _ = fs::remove_dir_all(&dir);
        }
    }
    let _ = fs::remove_file(data_dir.etcd_log());
    let _ = fs::remove_file(data_dir.cluster_config().with_extension("tmp"));
}

/// After the commit point: the redb file is no longer the store; keep it as a backup.
pub fn finish_commit(data_dir: &DataDir) -> Result<(), BootError> {
    let db = data_dir.store_db();
    if !db.exists() {
        return Ok(());
    }
    let mut backup = data_dir.store_db_backup();
    if backup.exists() {
        backup = backup.with_extension(format!("pre-cluster-{}", now_ms()));
    }
    fs::rename(&db, &backup).map_err(io("rename", &db))?;
    tracing::info!(backup = %backup.display(), "the redb state now lives in etcd; the file is kept as a backup");
    Ok(())
}

/// The etcd client settings of a cluster node.
pub fn etcd_tls(tls: &NodeTls) -> EtcdTls {
    EtcdTls {
        ca_pem: tls.ca_pem.clone(),
        cert_pem: tls.cert_pem.clone(),
        key_pem: tls.key_pem.clone(),
        domain: None,
    }
}

/// Starts (or adopts) the node's member and connects its store; a node without a member
/// connects to the voting members.
async fn start_member(
    data_dir: &DataDir,
    cluster: &ClusterConfig,
) -> Result<(Store, NodeTls, Option<EtcdMember>), BootError> {
    let tls = load_tls(data_dir).map_err(io("read the certificates in", &data_dir.pki()))?;
    if !cluster.etcd_member {
        let store = Store::connect_etcd_tls(&cluster.etcd_endpoints, &etcd_tls(&tls)).await?;
        refresh_endpoints(data_dir, cluster, &store).await;
        store.follow_members();
        return Ok((store, tls, None));
    }
    let member = EtcdMember::start(MemberConfig {
        name: cluster.node_name.clone(),
        node_ip: cluster.node_ip,
        initial_cluster: cluster.initial_cluster.clone(),
        initial_state: cluster.initial_state,
        cluster_token: cluster.cluster_id.clone(),
        data_dir: data_dir.clone(),
    })?;
    let store = match wait_for_member(&member, &tls).await {
        Ok(store) => store,
        Err(err) => {
            member.stop();
            return Err(err);
        }
    };
    // The local member first; the others while it restarts or is cut off.
    store.follow_members();
    Ok((store, tls, Some(member)))
}

/// A node without a member remembers the voters' client URLs; keep them current.
async fn refresh_endpoints(data_dir: &DataDir, cluster: &ClusterConfig, store: &Store) {
    let Ok(members) = store.members().await else {
        return;
    };
    let endpoints: Vec<String> = members
        .iter()
        .filter(|m| !m.is_learner)
        .flat_map(|m| m.client_urls.iter().cloned())
        .collect();
    if !endpoints.is_empty() && endpoints != cluster.etcd_endpoints {
        let mut updated = cluster.clone();
        updated.etcd_endpoints = endpoints;
        if let Err(err) = updated.save(data_dir) {
            tracing::warn!("{err}");
        }
    }
}

/// Waits until the local member answers (over TLS, with this node's client certificate).
pub async fn wait_for_member(member: &EtcdMember, tls: &NodeTls) -> Result<Store, BootError> {
    let endpoints = [etcd::local_client_url()];
    let deadline = tokio::time::Instant::now() + ETCD_START_TIMEOUT;
    loop {
        member.check_running()?;
        match Store::connect_etcd_tls(&endpoints, &etcd_tls(tls)).await {
            Ok(store) => return Ok(store),
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("waiting for the local etcd member: {err}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(err) => {
                return Err(BootError::EtcdTimeout {
                    timeout: ETCD_START_TIMEOUT,
                    last: err.to_string(),
                });
            }
        }
    }
}

/// Retries a write until the cluster has a leader (a fresh member elects itself within a
/// second or two).
async fn write_when_ready(store: &Store, txn: &Txn) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + ETCD_START_TIMEOUT;
    loop {
        match store.txn(txn.clone()).await {
            Ok(_) => return Ok(()),
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("waiting for etcd to take writes: {err}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

async fn init(
    config: &AgentConfig,
    node_ip: Ipv4Addr,
) -> Result<(ClusterConfig, Store, NodeTls, EtcdMember), BootError> {
    let data_dir = &config.data_dir;
    let name = &config.node_name;
    let cluster_id = pki::random_hex(8)?;
    tracing::info!(cluster = %cluster_id, node = %name, %node_ip, "initialising a new cluster");
    let ca = pki::Ca::generate(&cluster_id)?;
    let key = pki::NodeKey::generate()?;
    let cert_pem = ca.issue_node(name, &[node_ip.into()], &key.public_key())?;
    let tls = NodeTls {
        ca_pem: ca.cert_pem().to_owned(),
        cert_pem,
        key_pem: key.pem(),
    };
    let token = pki::JoinToken::generate(&ca.hash())?;
    let cluster = ClusterConfig {
        cluster_id: cluster_id.clone(),
        node_name: name.clone(),
        node_ip,
        cluster_cidr: config.cluster_cidr,
        vxlan_port: config.vxlan_port,
        cluster_port: config.cluster_port,
        etcd_member: true,
        initial_cluster: format!("{name}={}", etcd::peer_url(node_ip)),
        initial_state: InitialState::New,
        etcd_endpoints: vec![etcd::client_url(node_ip)],
        joined_at_ms: now_ms(),
    };
    save_tls(data_dir, &tls).map_err(io("write the certificates in", &data_dir.pki()))?;
    let member = match EtcdMember::start(MemberConfig {
        name: name.clone(),
        node_ip,
        initial_cluster: cluster.initial_cluster.clone(),
        initial_state: InitialState::New,
        cluster_token: cluster_id.clone(),
        data_dir: data_dir.clone(),
    }) {
        Ok(member) => member,
        Err(err) => {
            clean_leftovers(data_dir);
            return Err(err.into());
        }
    };
    let result = async {
        let store = wait_for_member(&member, &tls).await?;
        let record = ClusterRecord {
            cluster_id: cluster_id.clone(),
            cluster_cidr: config.cluster_cidr,
            vxlan_port: config.vxlan_port,
            first_node: name.clone(),
            created_at_ms: now_ms(),
        };
        // The secrets first (waiting for the new member to elect itself), the state, then the
        // cluster record.
        let secrets = Txn {
            compare: Vec::new(),
            success: vec![
                Op::put_json(
                    keys::CA,
                    &CaRecord {
                        cert_pem: ca.cert_pem().to_owned(),
                        key_pem: ca.key_pem(),
                    },
                    0,
                )?,
                Op::put_json(
                    keys::JOIN_TOKEN,
                    &TokenRecord {
                        token: token.to_string(),
                    },
                    0,
                )?,
            ],
            failure: Vec::new(),
        };
        write_when_ready(&store, &secrets).await?;
        let moved = migrate(&data_dir.store_db(), &store).await?;
        store.put_json(keys::CLUSTER, &record).await?;
        cluster.save(data_dir)?;
        tracing::info!(
            keys = moved,
            "cluster initialised; the node's state moved into etcd"
        );
        Ok::<_, BootError>(store)
    }
    .await;
    match result {
        Ok(store) => {
            finish_commit(data_dir)?;
            Ok((cluster, store, tls, member))
        }
        Err(err) => {
            member.kill();
            clean_leftovers(data_dir);
            let _ = fs::remove_file(data_dir.cluster_config());
            Err(err)
        }
    }
}

/// Copies every key of the redb file at `path` (if any) into `store`; returns how many.
/// Keys attached to leases are skipped: they are liveness, which the running agent re-makes.
async fn migrate(path: &std::path::Path, store: &Store) -> Result<usize, BootError> {
    if !path.exists() {
        return Ok(0);
    }
    let redb = Store::open_redb(path)?;
    let (kvs, _) = redb.range("").await?;
    drop(redb);
    let mut moved = 0;
    let mut batch: Vec<Op> = Vec::new();
    let mut bytes = 0;
    let mut first_key = String::new();
    let kvs: Vec<_> = kvs.into_iter().filter(|kv| kv.lease == 0).collect();
    let total = kvs.len();
    for (i, kv) in kvs.into_iter().enumerate() {
        if batch.is_empty() {
            first_key.clone_from(&kv.key);
        }
        bytes += kv.key.len() + kv.value.len();
        batch.push(Op::Put {
            key: kv.key,
            value: kv.value,
            lease: 0,
        });
        if batch.len() >= MIGRATE_BATCH || bytes >= MIGRATE_BATCH_BYTES || i + 1 == total {
            let count = batch.len();
            store
                .txn(Txn {
                    compare: Vec::new(),
                    success: std::mem::take(&mut batch),
                    failure: Vec::new(),
                })
                .await
                .map_err(|source| BootError::Migrate {
                    key: first_key.clone(),
                    source,
                })?;
            moved += count;
            bytes = 0;
        }
    }
    Ok(moved)
}
