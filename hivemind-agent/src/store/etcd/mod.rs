//! The cluster backend: an etcd cluster through `etcd-client`, over plain HTTP/2 (`http://`
//! endpoints, `--etcd-endpoints`) or TLS with a client certificate (the member a Hivemind
//! cluster runs on every node).
//!
//! The API is etcd's own, so this is mostly translation. What it adds: a deadline on every
//! attempt (a balanced channel with no reachable endpoint would otherwise wait forever), calls
//! that ride through a leader election or a lost member (see [`retry`]: transient failures are
//! retried against any healthy member for up to 15 s, and a write whose answer was lost is
//! confirmed by reading its effects back before it is tried again), typed errors for the
//! cases callers handle (missing lease, compaction, a write etcd never confirmed), and watches
//! that resume from the next revision by themselves when the connection drops.

mod retry;

pub(super) use retry::is_transient;

use std::{
    collections::BTreeSet,
    fmt,
    future::Future,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use etcd_client::{
    Certificate, Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions,
    DeleteOptions, EventType, GetOptions, Identity, KvClient, MemberAddOptions, PutOptions,
    TlsOptions, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use super::{
    Compare, EtcdTls, Event, EventKind, KeyValue, LeaseId, Member, MemberStatus, Op, Revision,
    StoreError, Txn, TxnOutcome, WatchStream,
};
use crate::proto;

/// Deadline of one attempt of a request, including waiting for a connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of the reachability check at connect and of `status`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest range answer accepted (tonic's default is 4 MiB).
const MAX_MESSAGE: usize = 64 << 20;
/// Longest pause between attempts to re-establish a broken watch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the client's endpoints are brought in line with the cluster's voting members.
const MEMBERS_REFRESH: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(super) struct EtcdStore {
    client: Client,
    /// For messages: the endpoints as given, comma-separated.
    endpoints: Arc<str>,
    tls: bool,
    /// Every endpoint the balanced channel has: those given, and the voting members' client
    /// URLs once [`EtcdStore::follow_members`] has run.
    known_endpoints: Arc<Mutex<BTreeSet<String>>>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

fn revision(r: i64) -> Revision {
    Revision::try_from(r).unwrap_or(0)
}

fn etcd_revision(r: Revision) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// The server's message, if the error is a gRPC status from etcd.
fn server_message(err: &etcd_client::Error) -> &str {
    match err {
        etcd_client::Error::GRpcStatus(status) => status.message(),
        _ => "",
    }
}

const LEASE_NOT_FOUND: &str = "requested lease not found";

fn key_value(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: revision(kv.create_revision()),
        mod_revision: revision(kv.mod_revision()),
        lease: kv.lease(),
    }
}

fn member(m: &etcd_client::Member) -> Member {
    Member {
        id: m.id(),
        name: m.name().to_owned(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
        is_learner: m.is_learner(),
    }
}

fn compare(compare: &Compare) -> EtcdCompare {
    match compare {
        // etcd's create revision of a missing key is 0.
        Compare::Absent(key) => EtcdCompare::create_revision(key.as_str(), CompareOp::Equal, 0),
        Compare::ModRevision(key, r) => {
            EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, etcd_revision(*r))
        }
        Compare::Value(key, value) => {
            EtcdCompare::value(key.as_str(), CompareOp::Equal, value.clone())
        }
    }
}

fn txn_op(op: Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => TxnOp::put(
            key,
            value,
            (lease != 0).then(|| PutOptions::new().with_lease(lease)),
        ),
        Op::Delete { key } => TxnOp::delete(key, None),
        Op::DeletePrefix { prefix } => {
            TxnOp::delete(prefix, Some(DeleteOptions::new().with_prefix()))
        }
    }
}

type WatchTx = mpsc::Sender<Result<Event, StoreError>>;

impl EtcdStore {
    pub(super) async fn connect(
        endpoints: &[String],
        tls: Option<&EtcdTls>,
    ) -> Result<Self, StoreError> {
        // TLS needs the cluster's certificates; without them an https endpoint cannot work.
        if tls.is_none()
            && let Some(endpoint) = endpoints.iter().find(|e| e.starts_with("https://"))
        {
            return Err(StoreError::EtcdTls {
                endpoint: endpoint.clone(),
            });
        }
        let joined: Arc<str> = endpoints.join(",").into();
        let mut options = ConnectOptions::new()
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            // A member without a leader refuses at once ("no leader", nothing proposed)
            // instead of holding the request until it times out: the call moves on sooner.
            .with_require_leader(true)
            // Notice a dead connection under an idle watch.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = tls {
            let mut config = TlsOptions::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            if let Some(domain) = &tls.domain {
                config = config.domain_name(domain.clone());
            }
            options = options.with_tls(config);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|source| StoreError::Etcd {
                op: "connect",
                endpoints: joined.to_string(),
                source,
            })?;
        let store = Self {
            client,
            endpoints: joined,
            tls: tls.is_some(),
            known_endpoints: Arc::new(Mutex::new(endpoints.iter().cloned().collect())),
        };
        // The channel connects lazily: prove now that etcd answers, so a wrong endpoint fails
        // the agent's start instead of its first request. A member that has no leader at the
        // moment does answer (and the agent must start while the cluster elects one).
        let mut maintenance = store.client.maintenance_client();
        match store
            .call_within("connect", PROBE_TIMEOUT, maintenance.status())
            .await
        {
            Err(err) if !err.etcd_message().contains("no leader") => Err(err),
            _ => Ok(store),
        }
    }

    /// Adds the voting members' client URLs to the client's endpoints now and every
    /// [`MEMBERS_REFRESH`], so calls go on through another member while this node's own is
    /// down or restarting. Stops when the store is dropped.
    pub(super) fn follow_members(self: &Arc<Self>) {
        let store: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(current) = store.upgrade() else {
                    return;
                };
                if let Err(err) = current.add_member_endpoints().await {
                    tracing::debug!("etcd members: {err}");
                }
                drop(current);
                tokio::time::sleep(MEMBERS_REFRESH).await;
            }
        });
    }

    async fn add_member_endpoints(&self) -> Result<(), StoreError> {
        let members = self.members().await?;
        let urls = members
            .iter()
            .filter(|m| !m.is_learner)
            .flat_map(|m| m.client_urls.iter());
        for url in urls {
            let new = self
                .known_endpoints
                .lock()
                .is_ok_and(|mut known| known.insert(url.clone()));
            if new {
                tracing::info!(endpoint = %url, "etcd: using member endpoint");
                self.client
                    .add_endpoint(url)
                    .await
                    .map_err(|source| self.error("add endpoint", source))?;
            }
        }
        Ok(())
    }

    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn error(&self, op: &'static str, source: etcd_client::Error) -> StoreError {
        StoreError::Etcd {
            op,
            endpoints: self.endpoints.to_string(),
            source,
        }
    }

    async fn call<T>(
        &self,
        op: &'static str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        self.call_within(op, REQUEST_TIMEOUT, request).await
    }

    async fn call_within<T>(
        &self,
        op: &'static str,
        timeout: Duration,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(timeout, request).await {
            Ok(result) => result.map_err(|source| self.error(op, source)),
            Err(_) => Err(StoreError::EtcdTimeout {
                op,
                endpoints: self.endpoints.to_string(),
                timeout,
            }),
        }
    }

    /// Like [`call`](Self::call), with etcd's "requested lease not found" as a typed error.
    async fn call_with_lease<T>(
        &self,
        op: &'static str,
        lease: LeaseId,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match self.call(op, request).await {
            Err(StoreError::Etcd { source, .. })
                if server_message(&source).contains(LEASE_NOT_FOUND) =>
            {
                Err(StoreError::LeaseNotFound { lease })
            }
            other => other,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or [`retry::RIDE_THROUGH`] has
    /// passed. For reads and for writes that may be repeated as they are.
    async fn retrying<T, Fut>(
        &self,
        op: &'static str,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempts = retry::Attempts::start();
        loop {
            match attempt().await {
                Err(err) if retry::is_transient(&err) => {
                    tracing::debug!(op, "etcd: {err}; trying again");
                    if !attempts.pause().await {
                        return Err(err);
                    }
                }
                other => return other,
            }
        }
    }

    /// [`retrying`](Self::retrying) for writes: `attempt` is told whether an earlier attempt
    /// may have been applied (its answer lost to a timeout or a broken connection), and if
    /// the calls stop while that is so, the error is [`StoreError::Unconfirmed`].
    async fn writing<T, Fut>(
        &self,
        op: &'static str,
        mut attempt: impl FnMut(bool) -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempts = retry::Attempts::start();
        let mut unsure = false;
        loop {
            match attempt(unsure).await {
                Err(err) if retry::is_transient(&err) => {
                    unsure |= retry::may_have_applied(&err);
                    tracing::debug!(op, "etcd: {err}; trying again");
                    if !attempts.pause().await {
                        return Err(if unsure {
                            self.unconfirmed(op, &attempts, err)
                        } else {
                            err
                        });
                    }
                }
                other => return other,
            }
        }
    }

    /// The error for a write whose outcome is still unknown when the calls stop.
    fn unconfirmed(
        &self,
        op: &'static str,
        attempts: &retry::Attempts,
        last: StoreError,
    ) -> StoreError {
        StoreError::Unconfirmed {
            op,
            endpoints: self.endpoints.to_string(),
            waited: attempts.elapsed(),
            source: Box::new(last),
        }
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.retrying("get", || async { Ok(self.get_once(key).await?.0) })
            .await
    }

    /// One attempt at reading `key`, and the revision it was read at.
    async fn get_once(&self, key: &str) -> Result<(Option<KeyValue>, Revision), StoreError> {
        let mut kv = self.kv();
        let response = self.call("get", kv.get(key, None)).await?;
        let current = response.header().map_or(0, |h| revision(h.revision()));
        Ok((response.kvs().first().map(key_value), current))
    }

    pub(super) async fn range(
        &self,
        prefix: &str,
    ) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.retrying("range", || async {
            let mut kv = self.kv();
            let response = self
                .call(
                    "range",
                    kv.get(prefix, Some(GetOptions::new().with_prefix())),
                )
                .await?;
            let current = response.header().map_or(0, |h| revision(h.revision()));
            // etcd answers in key order.
            Ok((response.kvs().iter().map(key_value).collect(), current))
        })
        .await
    }

    /// Whether no key starts with `prefix`, and the revision that was read at (one attempt).
    async fn prefix_empty_once(&self, prefix: &str) -> Result<(bool, Revision), StoreError> {
        let mut kv = self.kv();
        let response = self
            .call(
                "range",
                kv.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                ),
            )
            .await?;
        let current = response.header().map_or(0, |h| revision(h.revision()));
        Ok((response.count() == 0, current))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.retrying("get revision", || async {
            let mut kv = self.kv();
            let response = self
                .call(
                    "get revision",
                    kv.get("/", Some(GetOptions::new().with_count_only())),
                )
                .await?;
            Ok(response.header().map_or(0, |h| revision(h.revision())))
        })
        .await
    }

    /// A plain put: writing the same value again is harmless, so it is simply repeated.
    pub(super) async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Revision, StoreError> {
        self.writing("put", |_| async {
            let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
            let mut kv = self.kv();
            let response = self
                .call_with_lease("put", lease, kv.put(key, value.clone(), options))
                .await?;
            Ok(response.header().map_or(0, |h| revision(h.revision())))
        })
        .await
    }

    /// Deletes `key`; true if it existed — or if an earlier attempt, whose answer was lost,
    /// may have been the one that deleted it.
    pub(super) async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.writing("delete", |unsure| async move {
            let mut kv = self.kv();
            let response = self.call("delete", kv.delete(key, None)).await?;
            Ok(response.deleted() > 0 || unsure)
        })
        .await
    }

    /// A compare-and-swap transaction, ridden through elections. After an attempt that may
    /// have been applied, the next one first reads back whether every write of the success
    /// branch is in place; if so, that attempt is taken to have succeeded (applying it again
    /// could only fail its comparisons, or repeat what is already there). A later attempt whose
    /// comparisons fail is checked the same way.
    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let txn = &txn;
        self.writing("transaction", |unsure| async move {
            if unsure && let Some(outcome) = self.confirmed(txn).await {
                return Ok(outcome);
            }
            let outcome = self.txn_once(txn).await?;
            if unsure && !outcome.succeeded {
                // The comparisons failed, maybe because of our own lost attempt.
                return Ok(self.confirmed(txn).await.unwrap_or(outcome));
            }
            Ok(outcome)
        })
        .await
    }

    /// A succeeded outcome if every write of `txn`'s success branch is visible now; `None` if
    /// one is not, or if that cannot be read at the moment.
    async fn confirmed(&self, txn: &Txn) -> Option<TxnOutcome> {
        if txn.success.is_empty() {
            return None;
        }
        let mut at = 0;
        for op in &txn.success {
            let (present, read_at) = match op {
                Op::Put { key, value, .. } => {
                    let (kv, read_at) = self.get_once(key).await.ok()?;
                    (kv.is_some_and(|kv| kv.value == *value), read_at)
                }
                Op::Delete { key } => {
                    let (kv, read_at) = self.get_once(key).await.ok()?;
                    (kv.is_none(), read_at)
                }
                Op::DeletePrefix { prefix } => self.prefix_empty_once(prefix).await.ok()?,
            };
            if !present {
                return None;
            }
            at = at.max(read_at);
        }
        tracing::info!("etcd: a transaction whose answer was lost is in place");
        Some(TxnOutcome {
            succeeded: true,
            revision: at,
        })
    }

    async fn txn_once(&self, txn: &Txn) -> Result<TxnOutcome, StoreError> {
        let txn = txn.clone();
        // etcd doesn't say which lease was missing; name the first one the transaction uses.
        let lease = txn
            .success
            .iter()
            .chain(&txn.failure)
            .find_map(|op| match op {
                Op::Put { lease, .. } if *lease != 0 => Some(*lease),
                _ => None,
            })
            .unwrap_or(0);
        let request = etcd_client::Txn::new()
            .when(txn.compare.iter().map(compare).collect::<Vec<_>>())
            .and_then(txn.success.into_iter().map(txn_op).collect::<Vec<_>>())
            .or_else(txn.failure.into_iter().map(txn_op).collect::<Vec<_>>());
        let mut kv = self.kv();
        let response = self.call_with_lease("txn", lease, kv.txn(request)).await?;
        Ok(TxnOutcome {
            succeeded: response.succeeded(),
            revision: response.header().map_or(0, |h| revision(h.revision())),
        })
    }

    /// A lease; a grant repeated after a lost answer leaves an unused lease that expires.
    pub(super) async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        // etcd counts whole seconds; round up so a lease never lives shorter than asked.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
        self.retrying("grant lease", || async {
            let mut lease = self.client.lease_client();
            let response = self.call("grant lease", lease.grant(seconds, None)).await?;
            Ok(response.id())
        })
        .await
    }

    pub(super) async fn keep_alive(&self, id: LeaseId) -> Result<(), StoreError> {
        self.retrying("keep lease alive", || self.keep_alive_once(id))
            .await
    }

    async fn keep_alive_once(&self, id: LeaseId) -> Result<(), StoreError> {
        let mut lease = self.client.lease_client();
        // One request and its answer: etcd-client's keep_alive sends the first one itself and
        // fails when the answer's TTL says the lease is gone.
        match self.call("keep lease alive", lease.keep_alive(id)).await {
            Ok(_) => Ok(()),
            Err(StoreError::Etcd {
                source: etcd_client::Error::LeaseKeepAliveError(_),
                ..
            }) => Err(StoreError::LeaseExpired { lease: id }),
            Err(StoreError::Etcd { source, .. })
                if server_message(&source).contains(LEASE_NOT_FOUND) =>
            {
                Err(StoreError::LeaseExpired { lease: id })
            }
            Err(err) => Err(err),
        }
    }

    /// Revokes the lease; a missing lease after an attempt whose answer was lost counts as
    /// revoked.
    pub(super) async fn revoke_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        self.writing("revoke lease", |unsure| async move {
            let mut lease = self.client.lease_client();
            match self
                .call_with_lease("revoke lease", id, lease.revoke(id))
                .await
            {
                Err(StoreError::LeaseNotFound { .. }) if unsure => Ok(()),
                other => other.map(drop),
            }
        })
        .await
    }

    pub(super) async fn compact(&self, target: Revision) -> Result<(), StoreError> {
        let result = self
            .retrying("compact", || async {
                let mut kv = self.kv();
                let request = kv.compact(etcd_revision(target), None::<CompactionOptions>);
                self.call("compact", request).await.map(drop)
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(StoreError::Etcd { source, .. })
                if server_message(&source).contains("required revision has been compacted") =>
            {
                Ok(())
            }
            Err(StoreError::Etcd { source, .. })
                if server_message(&source).contains("required revision is a future revision") =>
            {
                Err(StoreError::FutureRevision {
                    revision: target,
                    current: self.current_revision().await?,
                })
            }
            Err(err) => Err(err),
        }
    }

    pub(super) async fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<WatchStream, StoreError> {
        let (stream, next) = self
            .retrying("watch", || self.open_watch(prefix, from))
            .await?;
        let store = self.clone();
        let prefix = prefix.to_owned();
        Ok(WatchStream::spawn(move |tx| async move {
            if let Err(err) = store.follow(&prefix, stream, next, &tx).await {
                let _ = tx.send(Err(err)).await;
            }
        }))
    }

    /// Creates a watch from `from` (0 = now) and waits for etcd's "created" answer (a message
    /// without events). Returns the stream and the lowest revision it will deliver.
    async fn open_watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<(etcd_client::WatchStream, Revision), StoreError> {
        let mut options = WatchOptions::new().with_prefix();
        if from > 0 {
            options = options.with_start_revision(etcd_revision(from));
        }
        let mut client = self.client.watch_client();
        let mut stream = self
            .call("watch", client.watch(prefix, Some(options)))
            .await?;
        let created = self.call("watch", stream.message()).await?;
        match created {
            Some(response) if response.created() && !response.canceled() => {
                let current = response.header().map_or(0, |h| revision(h.revision()));
                Ok((stream, if from == 0 { current + 1 } else { from }))
            }
            Some(response) => Err(StoreError::WatchCanceled {
                prefix: prefix.to_owned(),
                reason: response.cancel_reason().to_owned(),
            }),
            None => Err(StoreError::WatchCanceled {
                prefix: prefix.to_owned(),
                reason: "the stream closed before the watch was created".to_owned(),
            }),
        }
    }

    /// Forwards events until the consumer goes away (`Ok`) or the watch fails for good.
    async fn follow(
        &self,
        prefix: &str,
        mut stream: etcd_client::WatchStream,
        mut next: Revision,
        tx: &WatchTx,
    ) -> Result<(), StoreError> {
        loop {
            let Ok(Some(response)) = stream.message().await else {
                // The stream broke (connection lost, member gone): carry on from `next`.
                let Some(reopened) = self.reopen(prefix, next, tx).await else {
                    return Ok(());
                };
                stream = reopened;
                continue;
            };
            if response.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    requested: next,
                    compact_revision: revision(response.compact_revision()),
                });
            }
            if response.canceled() {
                return Err(StoreError::WatchCanceled {
                    prefix: prefix.to_owned(),
                    reason: response.cancel_reason().to_owned(),
                });
            }
            // etcd never splits one revision's events across messages (no fragmenting asked),
            // so resuming from the revision after the last message's is exact.
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let kind = match event.event_type() {
                    EventType::Put => EventKind::Put,
                    EventType::Delete => EventKind::Delete,
                };
                let event = Event {
                    kind,
                    kv: key_value(kv),
                };
                next = next.max(event.revision() + 1);
                if tx.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// Re-creates a broken watch from `next`, retrying with backoff until it works or the
    /// consumer goes away (`None`).
    async fn reopen(
        &self,
        prefix: &str,
        next: Revision,
        tx: &WatchTx,
    ) -> Option<etcd_client::WatchStream> {
        let mut backoff = Duration::from_millis(100);
        loop {
            if tx.is_closed() {
                return None;
            }
            match self.open_watch(prefix, next).await {
                Ok((stream, _)) => {
                    tracing::info!(prefix, next, "etcd watch resumed");
                    return Some(stream);
                }
                Err(err) => {
                    tracing::warn!(prefix, next, error = %err, "etcd watch broken; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    pub(super) async fn members(&self) -> Result<Vec<Member>, StoreError> {
        self.retrying("list members", || async {
            let mut cluster = self.client.cluster_client();
            let response = self.call("list members", cluster.member_list()).await?;
            Ok(response.members().iter().map(member).collect())
        })
        .await
    }

    pub(super) async fn add_learner(
        &self,
        peer_url: &str,
    ) -> Result<(Member, Vec<Member>), StoreError> {
        let mut cluster = self.client.cluster_client();
        let response = self
            .call(
                "add member",
                cluster.member_add(
                    vec![peer_url.to_owned()],
                    Some(MemberAddOptions::new().with_is_learner()),
                ),
            )
            .await?;
        let added = response
            .member()
            .map(member)
            .ok_or(StoreError::EtcdAnswer {
                op: "add member",
                missing: "the new member",
            })?;
        Ok((added, response.member_list().iter().map(member).collect()))
    }

    pub(super) async fn promote_member(&self, id: u64) -> Result<(), StoreError> {
        let mut cluster = self.client.cluster_client();
        self.call("promote member", cluster.member_promote(id))
            .await
            .map(drop)
    }

    pub(super) async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        let mut cluster = self.client.cluster_client();
        self.call("remove member", cluster.member_remove(id))
            .await
            .map(drop)
    }

    pub(super) async fn member_status(&self) -> Result<MemberStatus, StoreError> {
        let mut maintenance = self.client.maintenance_client();
        let status = self
            .call_within("member status", PROBE_TIMEOUT, maintenance.status())
            .await?;
        Ok(MemberStatus {
            member_id: status
                .header()
                .map_or(0, etcd_client::ResponseHeader::member_id),
            leader: status.leader(),
            raft_index: status.raft_index(),
            raft_applied_index: status.raft_applied_index(),
            is_learner: status.is_learner(),
        })
    }

    pub(super) async fn status(&self) -> proto::StoreStatus {
        let mut maintenance = self.client.maintenance_client();
        let error = self
            .call_within("status", PROBE_TIMEOUT, maintenance.status())
            .await
            .err()
            .map(|err| error_chain(&err));
        proto::StoreStatus {
            backend: "etcd".into(),
            location: if self.tls {
                format!("{} (TLS)", self.endpoints)
            } else {
                self.endpoints.to_string()
            },
            ok: error.is_none(),
            error: error.unwrap_or_default(),
        }
    }
}

/// The error and its sources on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::{Store, StoreError};

    #[tokio::test]
    async fn https_endpoints_are_refused_clearly() {
        let endpoints = [
            "http://127.0.0.1:2379".to_owned(),
            "https://etcd:2379".to_owned(),
        ];
        match Store::connect_etcd(&endpoints).await {
            Err(StoreError::EtcdTls { endpoint }) => assert_eq!(endpoint, "https://etcd:2379"),
            other => panic!("expected EtcdTls, got {other:?}"),
        }
    }
}
