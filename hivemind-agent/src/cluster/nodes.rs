//! The node registry: one record per node under `/hivemind/nodes/<name>` and a liveness key
//! under `/hivemind/liveness/<name>` attached to a lease that the node's agent keeps alive.
//!
//! A node is *ready* while its liveness key exists. The lease has a 10 s TTL and is renewed
//! every 3 s, so a node whose agent dies (or is cut off from etcd's quorum) turns not ready
//! within 10 s; a clean stop revokes the lease at once. The scheduler (and anyone else) can
//! watch [`LIVENESS`] to follow readiness.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{
    model::now_ms,
    store::{Compare, LeaseId, Op, Store, StoreError, Txn},
};

/// `/hivemind/nodes/<name>` → [`NodeRecord`]; `/hivemind/liveness/<name>` → [`Liveness`],
/// attached to the node's lease. One set of names for the registry and the scheduler's
/// readiness (`State::cluster_nodes`).
pub use crate::model::keys::{LIVENESS, NODES};
/// The liveness lease's time to live.
pub const LIVENESS_TTL: Duration = Duration::from_secs(10);
/// How often the agent renews it.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);

pub fn node_key(name: &str) -> String {
    format!("{NODES}{name}")
}

pub fn liveness_key(name: &str) -> String {
    format!("{LIVENESS}{name}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Admitted by a cluster node; the joiner is still setting itself up.
    Joining,
    /// Part of the cluster.
    Member,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Member => "member",
        }
    }
}

/// What the cluster knows about a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// Its address on the network between nodes.
    pub underlay_ip: Option<Ipv4Addr>,
    /// Its container subnet.
    pub subnet: Option<Ipv4Net>,
    /// `IP:PORT` of its cluster endpoint; empty on a node without one (single node).
    pub cluster_address: String,
    pub version: String,
    pub joined_at_ms: u64,
    pub state: NodeState,
}

/// The value of a node's liveness key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// When the current agent process started renewing it.
    pub since_ms: u64,
    pub pid: u32,
}

/// Every node record, by name.
pub async fn nodes(store: &Store) -> Result<BTreeMap<String, NodeRecord>, StoreError> {
    Ok(store
        .range_json::<NodeRecord>(NODES)
        .await?
        .0
        .into_iter()
        .map(|entry| (entry.value.name.clone(), entry.value))
        .collect())
}

pub async fn node(store: &Store, name: &str) -> Result<Option<NodeRecord>, StoreError> {
    Ok(store
        .get_json::<NodeRecord>(&node_key(name))
        .await?
        .map(|entry| entry.value))
}

/// Names of the nodes whose liveness key exists: the ready ones.
pub async fn ready_nodes(store: &Store) -> Result<BTreeSet<String>, StoreError> {
    Ok(store
        .range(LIVENESS)
        .await?
        .0
        .into_iter()
        .filter_map(|kv| kv.key.strip_prefix(LIVENESS).map(str::to_owned))
        .collect())
}

pub async fn is_ready(store: &Store, name: &str) -> Result<bool, StoreError> {
    Ok(store.get(&liveness_key(name)).await?.is_some())
}

/// Writes `record` only if no record of that name exists, or the existing one is still the
/// same `expected` (a stale join attempt being replaced). False if someone else holds it.
pub async fn create_node(
    store: &Store,
    record: &NodeRecord,
    expected_revision: u64,
) -> Result<bool, StoreError> {
    let key = node_key(&record.name);
    let compare = if expected_revision == 0 {
        Compare::Absent(key.clone())
    } else {
        Compare::ModRevision(key.clone(), expected_revision)
    };
    let outcome = store
        .txn(Txn {
            compare: vec![compare],
            success: vec![Op::put_json(key, record, 0)?],
            failure: Vec::new(),
        })
        .await?;
    Ok(outcome.succeeded)
}

/// A node record and its store revision (for [`create_node`]'s compare).
pub async fn node_with_revision(
    store: &Store,
    name: &str,
) -> Result<Option<(NodeRecord, u64)>, StoreError> {
    Ok(store
        .get_json::<NodeRecord>(&node_key(name))
        .await?
        .map(|entry| (entry.value, entry.mod_revision)))
}

pub async fn put_node(store: &Store, record: &NodeRecord) -> Result<(), StoreError> {
    store
        .put_json(&node_key(&record.name), record)
        .await
        .map(drop)
}

/// Deletes the record of `name` if it is still in state `state` (never a member by accident).
pub async fn delete_node_in_state(
    store: &Store,
    name: &str,
    state: NodeState,
) -> Result<bool, StoreError> {
    let Some((record, revision)) = node_with_revision(store, name).await? else {
        return Ok(false);
    };
    if record.state != state {
        return Ok(false);
    }
    let key = node_key(name);
    let outcome = store
        .txn(Txn {
            compare: vec![Compare::ModRevision(key.clone(), revision)],
            success: vec![Op::Delete { key }],
            failure: Vec::new(),
        })
        .await?;
    Ok(outcome.succeeded)
}

/// Keeps this node's liveness key alive until stopped.
#[derive(Debug)]
pub struct LivenessHandle {
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

impl LivenessHandle {
    /// Starts renewing `name`'s liveness key in the background: a lease of [`LIVENESS_TTL`],
    /// renewed every [`KEEPALIVE_INTERVAL`]; a lease that expired anyway (the store was
    /// unreachable for longer than the TTL) is replaced by a new one.
    /// The first lease is taken before this returns, so the node is ready before anything
    /// that reads readiness (the scheduler) starts; a store that fails here is retried in the
    /// background like a lost lease.
    pub async fn start(store: Store, name: String) -> Self {
        let value = Liveness {
            since_ms: now_ms(),
            pid: std::process::id(),
        };
        let lease = match register(&store, &liveness_key(&name), &value).await {
            Ok(id) => Some(id),
            Err(err) => {
                tracing::warn!("registering the liveness lease: {err}");
                None
            }
        };
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(keep_alive(store, name, value, lease, stopped));
        Self { stop: Some(stop) }
    }

    /// Revokes the lease (the node turns not ready at once) and stops renewing it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let (done, wait) = oneshot::channel();
            if stop.send(done).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
            }
        }
    }
}

async fn keep_alive(
    store: Store,
    name: String,
    value: Liveness,
    mut lease: Option<LeaseId>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let key = liveness_key(&name);
    let mut tick = tokio::time::interval(KEEPALIVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            done = &mut stop => {
                if let Some(id) = lease {
                    match store.revoke_lease(id).await {
                        Ok(()) => tracing::info!("liveness lease revoked"),
                        Err(err) => tracing::warn!("revoking the liveness lease: {err}"),
                    }
                }
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
            _ = tick.tick() => {}
        }
        let result = match lease {
            Some(id) => match store.keep_alive(id).await {
                Err(StoreError::LeaseExpired { .. } | StoreError::LeaseNotFound { .. }) => {
                    tracing::warn!(
                        "the liveness lease expired (the store was unreachable); registering again"
                    );
                    lease = None;
                    register(&store, &key, &value)
                        .await
                        .map(|id| lease = Some(id))
                }
                other => other,
            },
            None => register(&store, &key, &value)
                .await
                .map(|id| lease = Some(id)),
        };
        match result {
            Ok(()) if warned => {
                tracing::info!("liveness lease renewed again");
                warned = false;
            }
            Ok(()) => {}
            Err(err) => {
                if !warned {
                    tracing::warn!("renewing the liveness lease: {err}");
                }
                warned = true;
            }
        }
    }
}

/// A fresh lease and the liveness key on it.
async fn register(store: &Store, key: &str, value: &Liveness) -> Result<LeaseId, StoreError> {
    let lease = store.grant_lease(LIVENESS_TTL).await?;
    let put = Op::put_json(key, value, lease)?;
    store
        .txn(Txn {
            compare: Vec::new(),
            success: vec![put],
            failure: Vec::new(),
        })
        .await?;
    tracing::debug!(lease = format!("{lease:x}"), "liveness key registered");
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, state: NodeState) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            underlay_ip: Some(Ipv4Addr::new(192, 0, 2, 1)),
            subnet: Some("10.244.0.0/24".parse().expect("net")),
            cluster_address: "192.0.2.1:7443".into(),
            version: "0.1.0".into(),
            joined_at_ms: 1,
            state,
        }
    }

    #[tokio::test]
    async fn records_are_created_once_and_joining_ones_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open_redb(&dir.path().join("s.redb")).expect("open");
        assert!(
            create_node(&store, &record("n1", NodeState::Joining), 0)
                .await
                .expect("create")
        );
        assert!(
            !create_node(&store, &record("n1", NodeState::Joining), 0)
                .await
                .expect("create"),
            "a name is taken once"
        );
        let (_, revision) = node_with_revision(&store, "n1")
            .await
            .expect("get")
            .expect("exists");
        assert!(
            create_node(&store, &record("n1", NodeState::Joining), revision)
                .await
                .expect("replace the same attempt")
        );
        put_node(&store, &record("n2", NodeState::Member))
            .await
            .expect("put");
        assert!(
            !delete_node_in_state(&store, "n2", NodeState::Joining)
                .await
                .expect("delete"),
            "a member is never removed as a joining node"
        );
        assert!(
            delete_node_in_state(&store, "n1", NodeState::Joining)
                .await
                .expect("delete")
        );
        let all = nodes(&store).await.expect("list");
        assert_eq!(all.keys().collect::<Vec<_>>(), vec!["n2"]);
    }

    #[tokio::test]
    async fn liveness_comes_and_goes_with_the_handle() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open_redb(&dir.path().join("s.redb")).expect("open");
        let handle = LivenessHandle::start(store.clone(), "n1".into()).await;
        assert!(
            is_ready(&store, "n1").await.expect("get"),
            "ready as soon as the handle exists"
        );
        assert_eq!(
            ready_nodes(&store).await.expect("ready"),
            BTreeSet::from(["n1".to_owned()])
        );
        handle.stop().await;
        assert!(
            !is_ready(&store, "n1").await.expect("get"),
            "a clean stop revokes the lease"
        );
    }
}
