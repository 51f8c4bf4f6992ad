//! Desired state: apps, containers, volumes, policies, IPAM and cluster membership, behind one
//! etcd-shaped interface with two backends.
//!
//! - **redb** ([`Store::open_redb`]): a file in the data dir, the single-node default. It keeps
//!   etcd's semantics itself: a global revision, create/mod revisions per key, leases with TTLs,
//!   and an event log so a watch can resume from a past revision.
//! - **etcd** ([`Store::connect_etcd`]): an etcd cluster, for multi-node clusters.
//!
//! The model is etcd's: keys are UTF-8 strings, values bytes. Every write (a [`Txn`], a put, a
//! delete that deleted something, a lease revocation that deleted keys) gets the next global
//! revision; all changes of one write share it. A [`watch`](Store::watch) delivers the changes
//! under a prefix in revision order, replaying history first when asked to start in the past.
//! See `docs/store.md`.

mod etcd;
mod json;
mod redb;
#[cfg(test)]
mod suite;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};

pub use self::{json::Entry, redb::RedbOptions};
use crate::proto;

/// A store-wide revision. Every write gets the next one; 0 never names a write.
pub type Revision = u64;
/// A lease: keys attached to it are deleted when it expires or is revoked. 0 = no lease.
pub type LeaseId = i64;

/// A key with its value and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// The revision of the key's last change.
    pub mod_revision: Revision,
    /// The lease the key is attached to, 0 if none.
    pub lease: LeaseId,
}

/// A condition of a [`Txn`], checked atomically with its writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key's last change was at this revision (0 matches a missing key, as in etcd).
    ModRevision(String, Revision),
    /// The key exists and holds exactly this value.
    Value(String, Vec<u8>),
}

/// A write inside a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: LeaseId,
    },
    Delete {
        key: String,
    },
    /// Deletes every key that starts with `prefix` ("" = every key).
    DeletePrefix {
        prefix: String,
    },
}

/// Compare-and-swap: if every comparison holds, `success` is applied, else `failure`; all of it
/// atomically, as one revision (or none if nothing changed).
///
/// As in etcd, one branch may not write the same key twice (two puts, or a put and a delete that
/// covers it); two deletes may overlap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether the comparisons held (and `success` was applied).
    pub succeeded: bool,
    /// The store's revision after the transaction: the new revision if it changed anything.
    pub revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For `Put`, `kv` is the key as written. For `Delete`, `kv` holds
/// the key and the deleting revision in `mod_revision`; the other fields are empty, as in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl Event {
    /// The revision of the write that made this change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store {path} is in use by another process (is another agent running with this data dir?)"
    )]
    Locked { path: PathBuf },
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: ::redb::DatabaseError,
    },
    /// A storage error of the embedded store. Shared (`Arc`) because one failed commit fails
    /// every write batched into it.
    #[error("store {op} failed")]
    Storage {
        op: &'static str,
        #[source]
        source: Arc<::redb::Error>,
    },
    #[error("etcd {op} failed (endpoints {endpoints})")]
    Etcd {
        op: &'static str,
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "etcd endpoint {endpoint}: TLS needs the cluster's certificates, which only an etcd member run by Hivemind (--cluster-init, hivemind join) has; use http:// for an external etcd"
    )]
    EtcdTls { endpoint: String },
    #[error("etcd's answer to {op} lacks {missing}")]
    EtcdAnswer {
        op: &'static str,
        missing: &'static str,
    },
    #[error("{op} needs the etcd store; this agent keeps its state in redb")]
    NotEtcd { op: &'static str },
    #[error("etcd {op} timed out after {timeout:?} (endpoints {endpoints})")]
    EtcdTimeout {
        op: &'static str,
        endpoints: String,
        timeout: Duration,
    },
    /// A write that etcd neither confirmed nor refused before the calls stopped: it may have
    /// been applied.
    #[error(
        "etcd did not confirm the {op} within {waited:.0?} (endpoints {endpoints}); it may have been applied"
    )]
    Unconfirmed {
        op: &'static str,
        endpoints: String,
        waited: Duration,
        #[source]
        source: Box<StoreError>,
    },
    #[error("lease {lease:x} does not exist")]
    LeaseNotFound { lease: LeaseId },
    #[error("lease {lease:x} has expired or was revoked")]
    LeaseExpired { lease: LeaseId },
    #[error("revision {requested} is compacted; the oldest revision left is {compact_revision}")]
    Compacted {
        requested: Revision,
        compact_revision: Revision,
    },
    #[error("revision {revision} is in the future (the store is at {current})")]
    FutureRevision {
        revision: Revision,
        current: Revision,
    },
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("invalid transaction: key {key:?} {reason}")]
    InvalidTxn { key: String, reason: &'static str },
    #[error("lease TTL {ttl:?} is out of range (1 ms to 1 year)")]
    InvalidTtl { ttl: Duration },
    #[error("cannot encode the value of {key} as JSON")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot decode the value of {key} as JSON")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("watch on {prefix:?} was canceled by the server: {reason}")]
    WatchCanceled { prefix: String, reason: String },
    #[error("the store is closed")]
    Closed,
}

/// What a TLS connection to etcd needs: the cluster CA and this node's client certificate.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The name to expect in the server's certificate, if not the endpoint's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("EtcdTls")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// A member of the etcd cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started for the first time.
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Empty until the member has started for the first time.
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// What the member behind the store's endpoint says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub member_id: u64,
    /// The leader's member id; 0 while there is none.
    pub leader: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub is_learner: bool,
}

impl StoreError {
    /// A write whose outcome is unknown: it may or may not have been applied.
    pub fn is_unconfirmed(&self) -> bool {
        matches!(self, Self::Unconfirmed { .. })
    }

    /// etcd could not be reached or had no leader for longer than a call waits (about 15 s);
    /// trying again later may work.
    pub fn is_unavailable(&self) -> bool {
        etcd::is_transient(self) || self.is_unconfirmed()
    }

    /// etcd's own words, when the error is an answer from etcd (for callers that retry on
    /// specific conditions, such as promoting a learner that is still catching up).
    pub fn etcd_message(&self) -> &str {
        match self {
            Self::Etcd {
                source: etcd_client::Error::GRpcStatus(status),
                ..
            } => status.message(),
            _ => "",
        }
    }
}

/// The longest lease accepted; far beyond any use, small enough for every clock's arithmetic.
const MAX_TTL: Duration = Duration::from_hours(365 * 24);

/// The desired-state store. Cheap to clone; every clone is the same store, usable from any task.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Redb(Arc<redb::RedbStore>),
    Etcd(Arc<etcd::EtcdStore>),
}

impl Store {
    /// Opens (or creates) the redb file. Fails with [`StoreError::Locked`] if another process
    /// (or another `Store` in this one) has it open. Leases that expired while the file was
    /// closed are expired now; the others get their full TTL again.
    pub fn open_redb(path: &Path) -> Result<Self, StoreError> {
        Self::open_redb_with(path, RedbOptions::default())
    }

    pub fn open_redb_with(path: &Path, options: RedbOptions) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Redb(Arc::new(redb::RedbStore::open(path, options)?)),
        })
    }

    /// Connects to an etcd cluster (`http://HOST:PORT` endpoints) and checks that it answers.
    pub async fn connect_etcd(endpoints: &[String]) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Etcd(Arc::new(etcd::EtcdStore::connect(endpoints, None).await?)),
        })
    }

    /// Connects to an etcd cluster over TLS with a client certificate (`https://` endpoints)
    /// and checks that it answers.
    pub async fn connect_etcd_tls(endpoints: &[String], tls: &EtcdTls) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Etcd(Arc::new(
                etcd::EtcdStore::connect(endpoints, Some(tls)).await?,
            )),
        })
    }

    /// Lets calls go on through any voting member of the etcd cluster, not only the endpoints
    /// the store was connected with (kept current in the background). Nothing on redb.
    pub fn follow_members(&self) {
        if let Backend::Etcd(store) = &self.backend {
            store.follow_members();
        }
    }

    /// True when the state lives in etcd.
    pub fn is_etcd(&self) -> bool {
        matches!(self.backend, Backend::Etcd(_))
    }

    fn etcd(&self, op: &'static str) -> Result<&etcd::EtcdStore, StoreError> {
        match &self.backend {
            Backend::Etcd(s) => Ok(s),
            Backend::Redb(_) => Err(StoreError::NotEtcd { op }),
        }
    }

    /// The etcd cluster's members. [`StoreError::NotEtcd`] on redb.
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        self.etcd("listing members")?.members().await
    }

    /// Adds a non-voting member that will run at `peer_url`; returns it and the new member list.
    pub async fn add_learner(&self, peer_url: &str) -> Result<(Member, Vec<Member>), StoreError> {
        self.etcd("adding a member")?.add_learner(peer_url).await
    }

    /// Makes a learner a voter. etcd refuses while the learner is still catching up
    /// ([`StoreError::etcd_message`] says so); callers retry.
    pub async fn promote_member(&self, id: u64) -> Result<(), StoreError> {
        self.etcd("promoting a member")?.promote_member(id).await
    }

    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        self.etcd("removing a member")?.remove_member(id).await
    }

    /// The status of the member the store talks to (the first endpoint that answers).
    pub async fn member_status(&self) -> Result<MemberStatus, StoreError> {
        self.etcd("member status")?.member_status().await
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        check_key(key)?;
        match &self.backend {
            Backend::Redb(s) => s.get(key).await,
            Backend::Etcd(s) => s.get(key).await,
        }
    }

    /// Every key starting with `prefix` ("" = all), sorted by key, and the revision they were
    /// read at. A watch from that revision + 1 continues exactly where this left off.
    pub async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.range(prefix).await,
            Backend::Etcd(s) => s.range(prefix).await,
        }
    }

    /// Writes `key`; returns the new revision.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        self.put_with_lease(key, value, 0).await
    }

    /// Writes `key` attached to `lease` (0 = none; a put without lease detaches the key).
    pub async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Revision, StoreError> {
        check_key(key)?;
        match &self.backend {
            Backend::Redb(s) => s.put(key, value, lease).await,
            Backend::Etcd(s) => s.put(key, value, lease).await,
        }
    }

    /// Deletes `key`; true if it existed. Deleting a missing key is not a write (no revision).
    pub async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        match &self.backend {
            Backend::Redb(s) => s.delete(key).await,
            Backend::Etcd(s) => s.delete(key).await,
        }
    }

    /// Applies a compare-and-swap transaction atomically.
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        txn.validate()?;
        match &self.backend {
            Backend::Redb(s) => s.txn(txn).await,
            Backend::Etcd(s) => s.txn(txn).await,
        }
    }

    /// A new lease that expires `ttl` after its grant or last keep-alive. etcd counts in whole
    /// seconds (rounded up here) and raises very short TTLs to its minimum (about 2 s).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(StoreError::InvalidTtl { ttl });
        }
        match &self.backend {
            Backend::Redb(s) => s.grant_lease(ttl).await,
            Backend::Etcd(s) => s.grant_lease(ttl).await,
        }
    }

    /// Restarts the lease's TTL. [`StoreError::LeaseExpired`] if it is gone.
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.keep_alive(lease).await,
            Backend::Etcd(s) => s.keep_alive(lease).await,
        }
    }

    /// Ends the lease now and deletes its keys (one revision, a Delete event per key).
    /// [`StoreError::LeaseNotFound`] if it does not exist (any more).
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.revoke_lease(lease).await,
            Backend::Etcd(s) => s.revoke_lease(lease).await,
        }
    }

    /// Forgets the change history before `revision`: watches from an older revision then fail
    /// with [`StoreError::Compacted`]. Current keys are never affected. Compacting at or below
    /// an earlier compaction does nothing. The redb backend also compacts by itself, keeping
    /// the last [`RedbOptions::history`] revisions.
    pub async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.compact(revision).await,
            Backend::Etcd(s) => s.compact(revision).await,
        }
    }

    /// Watches every key starting with `prefix` ("" = all).
    ///
    /// `from = 0`: only changes made after this call returns. `from = r`: first every change
    /// with revision ≥ r that is still in the history, then live changes — in revision order,
    /// without gaps or duplicates. If `r` is older than the history, the stream yields
    /// [`StoreError::Compacted`] and ends. The stream also ends (after an error) if the store
    /// closes. It resumes by itself after a lost etcd connection.
    ///
    /// Returns once the watch is established. Must be called inside a Tokio runtime.
    pub async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        match &self.backend {
            Backend::Redb(s) => s.watch(prefix, from).await,
            Backend::Etcd(s) => s.watch(prefix, from).await,
        }
    }

    /// Backend, location, and whether the store answers (for `hivemind health`).
    pub async fn status(&self) -> proto::StoreStatus {
        match &self.backend {
            Backend::Redb(s) => s.status(),
            Backend::Etcd(s) => s.status().await,
        }
    }
}

/// The events of a [`Store::watch`]. Dropping it ends the watch.
#[derive(Debug)]
pub struct WatchStream {
    events: mpsc::Receiver<Result<Event, StoreError>>,
    task: JoinHandle<()>,
}

/// How many events a watch buffers for a slow consumer before its producer waits.
const WATCH_BUFFER: usize = 256;

impl WatchStream {
    /// A stream fed by `task` through the returned sender. The task is aborted when the stream
    /// is dropped.
    fn spawn<F>(producer: impl FnOnce(mpsc::Sender<Result<Event, StoreError>>) -> F) -> WatchStream
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, events) = mpsc::channel(WATCH_BUFFER);
        let task = tokio::spawn(producer(tx));
        WatchStream { events, task }
    }
}

impl tokio_stream::Stream for WatchStream {
    type Item = Result<Event, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().events.poll_recv(cx)
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason: "keys may not be empty",
        });
    }
    Ok(())
}

impl Txn {
    /// The rules etcd enforces, checked up front so both backends fail the same way.
    fn validate(&self) -> Result<(), StoreError> {
        for compare in &self.compare {
            let (Compare::Absent(key) | Compare::ModRevision(key, _) | Compare::Value(key, _)) =
                compare;
            check_key(key)?;
        }
        for ops in [&self.success, &self.failure] {
            let mut puts = HashSet::new();
            for op in ops {
                if let Op::Put { key, .. } = op {
                    check_key(key)?;
                    if !puts.insert(key.as_str()) {
                        return Err(StoreError::InvalidTxn {
                            key: key.clone(),
                            reason: "is put twice in one branch",
                        });
                    }
                }
            }
            for op in ops {
                let (deleted, covers): (&str, fn(&str, &str) -> bool) = match op {
                    Op::Put { .. } => continue,
                    Op::Delete { key } => {
                        check_key(key)?;
                        (key, |put, key| put == key)
                    }
                    Op::DeletePrefix { prefix } => (prefix, |put, prefix| put.starts_with(prefix)),
                };
                if let Some(put) = puts.iter().find(|put| covers(put, deleted)) {
                    return Err(StoreError::InvalidTxn {
                        key: (*put).to_owned(),
                        reason: "is both put and deleted in one branch",
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: vec![],
            lease: 0,
        }
    }

    #[test]
    fn txn_rejects_what_etcd_rejects() {
        let ok = Txn {
            compare: vec![Compare::Absent("a".into())],
            success: vec![
                put("a"),
                put("b"),
                Op::Delete { key: "c".into() },
                Op::Delete { key: "c".into() },
                Op::DeletePrefix {
                    prefix: "d/".into(),
                },
            ],
            // The other branch may write the same keys.
            failure: vec![put("a")],
        };
        ok.validate().expect("valid txn");

        for (success, key) in [
            (vec![put("a"), put("a")], "a"),
            (vec![put("a"), Op::Delete { key: "a".into() }], "a"),
            (
                vec![
                    Op::DeletePrefix {
                        prefix: "x/".into(),
                    },
                    put("x/1"),
                ],
                "x/1",
            ),
            (
                vec![
                    put("k"),
                    Op::DeletePrefix {
                        prefix: String::new(),
                    },
                ],
                "k",
            ),
        ] {
            let txn = Txn {
                success,
                ..Txn::default()
            };
            match txn.validate() {
                Err(StoreError::InvalidTxn { key: bad, .. }) => assert_eq!(bad, key),
                other => panic!("{txn:?} must be invalid, got {other:?}"),
            }
        }
        let empty_key = Txn {
            compare: vec![Compare::Absent(String::new())],
            ..Txn::default()
        };
        assert!(matches!(
            empty_key.validate(),
            Err(StoreError::InvalidKey { .. })
        ));
    }
}
