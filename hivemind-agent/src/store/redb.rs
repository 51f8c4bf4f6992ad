//! The embedded backend: one redb file with etcd's semantics.
//!
//! Tables:
//! - `kv`: key → (create revision, mod revision, lease, value);
//! - `events`: (revision, index) → (kind, key, create revision, lease, value): the change log
//!   watches replay from, trimmed to the last [`RedbOptions::history`] revisions;
//! - `leases`: id → (TTL ms, deadline as Unix ms), and `lease_keys`: id → its keys;
//! - `meta`: the current revision, the compaction revision, the next lease id.
//!
//! **Writes go through one dedicated writer thread.** redb allows one write transaction at a time
//! and every commit is an fsync, so writers would queue anyway; with a single owner the queue is a
//! channel instead of blocked threads (a `spawn_blocking` per write would park one blocking-pool
//! thread per waiting writer). The writer also makes live events come out in revision order
//! (commit and publish happen on one thread), owns the lease timers (it sleeps until the next
//! deadline when idle), and batches: everything queued while one commit runs goes into the next
//! redb transaction, each request still its own revision, one fsync for all. Reads don't need the
//! writer (redb's readers see the last commit without blocking it); they run on
//! `spawn_blocking` because a read can touch the disk.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, mpsc as std_mpsc},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase as _, ReadableTable as _, TableDefinition,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    Compare, Event, EventKind, KeyValue, LeaseId, Op, Revision, StoreError, Txn, TxnOutcome,
    WatchStream,
};
use crate::proto;

/// (create revision, mod revision, lease, value)
type KvRow = (u64, u64, i64, &'static [u8]);
const KV: TableDefinition<&str, KvRow> = TableDefinition::new("kv");
/// (kind, key, create revision, lease, value); the key is (revision, index in the revision).
type EventRow = (u8, &'static str, u64, i64, &'static [u8]);
const EVENTS: TableDefinition<(u64, u32), EventRow> = TableDefinition::new("events");
/// id → (TTL in ms, deadline in Unix ms)
const LEASES: TableDefinition<i64, (u64, u64)> = TableDefinition::new("leases");
const LEASE_KEYS: MultimapTableDefinition<i64, &str> = MultimapTableDefinition::new("lease_keys");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_REVISION: &str = "revision";
const META_COMPACT: &str = "compact_revision";
const META_NEXT_LEASE: &str = "next_lease";

const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;

/// Most requests committed together in one redb transaction.
const MAX_BATCH: usize = 256;
/// Revisions a live watcher may fall behind before it re-reads the log instead.
const LIVE_BUFFER: usize = 1024;
/// Revisions read per replay step, bounding a watcher's memory while it catches up.
const REPLAY_CHUNK: u64 = 256;

/// Settings of the embedded store.
#[derive(Clone, Copy, Debug)]
pub struct RedbOptions {
    /// How many revisions of change history to keep for watches that start in the past.
    pub history: u64,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self { history: 10_000 }
    }
}

/// What the writer thread and readers share.
#[derive(Debug)]
struct Shared {
    db: Database,
    path: PathBuf,
}

/// The changes of one revision, as published to live watchers.
#[derive(Debug)]
struct Changes {
    revision: Revision,
    events: Vec<Event>,
}

#[derive(Debug)]
pub(super) struct RedbStore {
    shared: Arc<Shared>,
    commands: Option<std_mpsc::Sender<Command>>,
    /// Only to subscribe watchers; the writer publishes through its own clone.
    live: broadcast::Sender<Arc<Changes>>,
    writer: Option<thread::JoinHandle<()>>,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What a write did (the public outcome plus what `delete` needs).
#[derive(Clone, Copy, Debug)]
struct Applied {
    succeeded: bool,
    revision: Revision,
    deleted: usize,
}

#[derive(Debug)]
enum Command {
    Txn(Txn, Reply<Applied>),
    Grant(Duration, Reply<LeaseId>),
    KeepAlive(LeaseId, Reply<()>),
    Revoke(LeaseId, Reply<()>),
    Compact(Revision, Reply<()>),
}

fn storage(op: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |source| StoreError::Storage {
        op,
        source: Arc::new(source),
    }
}

impl RedbStore {
    pub(super) fn open(path: &Path, options: RedbOptions) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                path: path.to_owned(),
            },
            source => StoreError::Open {
                path: path.to_owned(),
                source,
            },
        })?;
        let shared = Arc::new(Shared {
            db,
            path: path.to_owned(),
        });
        // Create the tables and restart the lease clocks before anyone can read or write.
        let leases = restart_leases(&shared.db).map_err(storage("open"))?;
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let (commands, queue) = std_mpsc::channel();
        let mut writer = Writer {
            shared: Arc::clone(&shared),
            live: live.clone(),
            leases,
            history: options.history.max(1),
        };
        let writer = thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(&queue))
            .map_err(|source| storage("start the writer thread")(redb::Error::Io(source)))?;
        Ok(Self {
            shared,
            commands: Some(commands),
            live,
            writer: Some(writer),
        })
    }

    async fn write<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(command(reply))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T: Send + 'static>(
        &self,
        op: &'static str,
        read: impl FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        read_blocking(Arc::clone(&self.shared), op, read).await
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.read("get", move |db| {
            let tx = db.begin_read()?;
            let kv = tx.open_table(KV)?;
            Ok(kv
                .get(key.as_str())?
                .map(|row| key_value(&key, row.value())))
        })
        .await
    }

    pub(super) async fn range(
        &self,
        prefix: &str,
    ) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let prefix = prefix.to_owned();
        self.read("range", move |db| {
            let tx = db.begin_read()?;
            let kv = tx.open_table(KV)?;
            let mut found = Vec::new();
            for row in kv.range(prefix.as_str()..)? {
                let (key, row) = row?;
                if !key.value().starts_with(&prefix) {
                    break;
                }
                found.push(key_value(key.value(), row.value()));
            }
            let revision = meta(&tx.open_table(META)?, META_REVISION)?;
            Ok((found, revision))
        })
        .await
    }

    pub(super) async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<Revision, StoreError> {
        let txn = Txn {
            success: vec![Op::Put {
                key: key.to_owned(),
                value,
                lease,
            }],
            ..Txn::default()
        };
        Ok(self.write(|reply| Command::Txn(txn, reply)).await?.revision)
    }

    pub(super) async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let txn = Txn {
            success: vec![Op::Delete {
                key: key.to_owned(),
            }],
            ..Txn::default()
        };
        Ok(self.write(|reply| Command::Txn(txn, reply)).await?.deleted > 0)
    }

    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let applied = self.write(|reply| Command::Txn(txn, reply)).await?;
        Ok(TxnOutcome {
            succeeded: applied.succeeded,
            revision: applied.revision,
        })
    }

    pub(super) async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.write(|reply| Command::Grant(ttl, reply)).await
    }

    pub(super) async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.write(|reply| Command::KeepAlive(lease, reply)).await
    }

    pub(super) async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.write(|reply| Command::Revoke(lease, reply)).await
    }

    pub(super) async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.write(|reply| Command::Compact(revision, reply)).await
    }

    pub(super) async fn watch(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the log: every commit is then either in what we read or
        // still to come on `live`, and duplicates are told apart by revision.
        let live = self.live.subscribe();
        let next = if from == 0 {
            let current = self
                .read("watch", |db| {
                    meta(&db.begin_read()?.open_table(META)?, META_REVISION)
                })
                .await?;
            current + 1
        } else {
            from
        };
        let watcher = Watcher {
            shared: Arc::clone(&self.shared),
            prefix: prefix.to_owned(),
            next,
        };
        Ok(WatchStream::spawn(move |tx| async move {
            if let Err(err) = watcher.run(live, from != 0, &tx).await {
                let _ = tx.send(Err(err)).await;
            }
        }))
    }

    pub(super) fn status(&self) -> proto::StoreStatus {
        // A read transaction proves the file is readable; the writer must be alive to write.
        let error = match self.shared.db.begin_read() {
            Err(err) => Some(err.to_string()),
            Ok(_)
                if self
                    .writer
                    .as_ref()
                    .is_none_or(thread::JoinHandle::is_finished) =>
            {
                Some("the store's writer thread has stopped".to_owned())
            }
            Ok(_) => None,
        };
        proto::StoreStatus {
            backend: "redb".into(),
            location: self.shared.path.display().to_string(),
            ok: error.is_none(),
            error: error.unwrap_or_default(),
        }
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue stops the writer after what is queued; wait for it so the file is
        // released (once running watches end) when the last handle is gone.
        self.commands = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

async fn read_blocking<T: Send + 'static>(
    shared: Arc<Shared>,
    op: &'static str,
    read: impl FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(move || read(&shared.db)).await {
        Ok(result) => result.map_err(storage(op)),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(StoreError::Closed),
    }
}

fn key_value(
    key: &str,
    (create_revision, mod_revision, lease, value): (u64, u64, i64, &[u8]),
) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
        lease,
    }
}

fn meta(
    table: &impl redb::ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, redb::Error> {
    Ok(table.get(name)?.map_or(0, |v| v.value()))
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
}

/// Creates the tables if needed and loads the leases: one whose persisted deadline passed while
/// the store was closed expires at once (the writer's first round deletes its keys); the others
/// restart with their full TTL, as etcd's leases do when a new leader takes over.
fn restart_leases(db: &Database) -> Result<HashMap<LeaseId, Lease>, redb::Error> {
    let now = Instant::now();
    let wall = SystemTime::now();
    let mut leases = HashMap::new();
    let tx = db.begin_write()?;
    {
        Tables::open(&tx)?;
        let mut table = tx.open_table(LEASES)?;
        let mut restarted = Vec::new();
        for row in table.iter()? {
            let (id, row) = row?;
            let (ttl_ms, deadline_ms) = row.value();
            let ttl = Duration::from_millis(ttl_ms);
            let expired = deadline_ms <= unix_ms(wall);
            let deadline = if expired { now } else { now + ttl };
            if !expired {
                restarted.push((id.value(), (ttl_ms, unix_ms(wall + ttl))));
            }
            leases.insert(id.value(), Lease { ttl, deadline });
        }
        for (id, row) in restarted {
            table.insert(id, row)?;
        }
    }
    tx.commit()?;
    Ok(leases)
}

/// The tables of one write transaction.
struct Tables<'tx> {
    kv: redb::Table<'tx, &'static str, KvRow>,
    events: redb::Table<'tx, (u64, u32), EventRow>,
    leases: redb::Table<'tx, i64, (u64, u64)>,
    lease_keys: redb::MultimapTable<'tx, i64, &'static str>,
    meta: redb::Table<'tx, &'static str, u64>,
}

impl<'tx> Tables<'tx> {
    fn open(tx: &'tx redb::WriteTransaction) -> Result<Self, redb::Error> {
        Ok(Self {
            kv: tx.open_table(KV)?,
            events: tx.open_table(EVENTS)?,
            leases: tx.open_table(LEASES)?,
            lease_keys: tx.open_multimap_table(LEASE_KEYS)?,
            meta: tx.open_table(META)?,
        })
    }

    /// Writes `key` at `revision`; returns its Put event.
    fn put(
        &mut self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
        revision: Revision,
    ) -> Result<Event, redb::Error> {
        let old = self.kv.get(key)?.map(|row| {
            let (create, _, lease, _) = row.value();
            (create, lease)
        });
        let create_revision = match old {
            Some((create, old_lease)) => {
                if old_lease != 0 && old_lease != lease {
                    self.lease_keys.remove(old_lease, key)?;
                }
                create
            }
            None => revision,
        };
        if lease != 0 {
            self.lease_keys.insert(lease, key)?;
        }
        self.kv
            .insert(key, (create_revision, revision, lease, value))?;
        Ok(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_owned(),
                value: value.to_vec(),
                create_revision,
                mod_revision: revision,
                lease,
            },
        })
    }

    /// Deletes `key` at `revision` if it exists; returns its Delete event.
    fn delete(&mut self, key: &str, revision: Revision) -> Result<Option<Event>, redb::Error> {
        let Some(lease) = self.kv.remove(key)?.map(|row| row.value().2) else {
            return Ok(None);
        };
        if lease != 0 {
            self.lease_keys.remove(lease, key)?;
        }
        Ok(Some(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_owned(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: revision,
                lease: 0,
            },
        }))
    }

    fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, redb::Error> {
        let mut keys = Vec::new();
        for row in self.kv.range(prefix..)? {
            let (key, _) = row?;
            if !key.value().starts_with(prefix) {
                break;
            }
            keys.push(key.value().to_owned());
        }
        Ok(keys)
    }

    fn compare(&self, compare: &Compare) -> Result<bool, redb::Error> {
        Ok(match compare {
            Compare::Absent(key) => self.kv.get(key.as_str())?.is_none(),
            Compare::ModRevision(key, revision) => {
                self.kv.get(key.as_str())?.map_or(0, |row| row.value().1) == *revision
            }
            Compare::Value(key, value) => self
                .kv
                .get(key.as_str())?
                .is_some_and(|row| row.value().3 == value.as_slice()),
        })
    }

    /// Appends one revision's events to the log.
    fn record(&mut self, revision: Revision, events: &[Event]) -> Result<(), redb::Error> {
        for (index, event) in (0u32..).zip(events) {
            let kind = match event.kind {
                EventKind::Put => KIND_PUT,
                EventKind::Delete => KIND_DELETE,
            };
            let kv = &event.kv;
            self.events.insert(
                (revision, index),
                (
                    kind,
                    kv.key.as_str(),
                    kv.create_revision,
                    kv.lease,
                    kv.value.as_slice(),
                ),
            )?;
        }
        Ok(())
    }

    /// Drops the log before `revision` and remembers that it is gone.
    fn compact(&mut self, revision: Revision) -> Result<(), redb::Error> {
        if revision > meta(&self.meta, META_COMPACT)? {
            self.events.retain_in(..(revision, 0), |_, _| false)?;
            self.meta.insert(META_COMPACT, revision)?;
        }
        Ok(())
    }
}

/// The writer thread's state: the only code that writes the file.
struct Writer {
    shared: Arc<Shared>,
    live: broadcast::Sender<Arc<Changes>>,
    leases: HashMap<LeaseId, Lease>,
    history: u64,
}

/// A reply held back until the batch it belongs to is durable.
enum Pending {
    Applied(Reply<Applied>, Result<Applied, StoreError>),
    Lease(Reply<LeaseId>, Result<LeaseId, StoreError>),
    Done(Reply<()>, Result<(), StoreError>),
}

impl Pending {
    /// Answers with the request's result, or the commit's error if the batch failed.
    fn send(self, failed: Option<&Arc<redb::Error>>) {
        fn answer<T>(
            reply: Reply<T>,
            result: Result<T, StoreError>,
            failed: Option<&Arc<redb::Error>>,
        ) {
            let result = match failed {
                Some(err) => Err(StoreError::Storage {
                    op: "commit",
                    source: Arc::clone(err),
                }),
                None => result,
            };
            // A requester that went away (dropped future) no longer needs the answer.
            let _ = reply.send(result);
        }
        match self {
            Pending::Applied(reply, result) => answer(reply, result, failed),
            Pending::Lease(reply, result) => answer(reply, result, failed),
            Pending::Done(reply, result) => answer(reply, result, failed),
        }
    }
}

/// The revision counter of a batch and the changes it will publish.
struct Log<'a> {
    revision: Revision,
    published: &'a mut Vec<Arc<Changes>>,
}

impl Log<'_> {
    /// Gives `events` (all from one write) the next revision, unless there are none: a write
    /// that changed nothing is not a revision.
    fn append(&mut self, t: &mut Tables, events: Vec<Event>) -> Result<(), redb::Error> {
        if events.is_empty() {
            return Ok(());
        }
        self.revision += 1;
        t.record(self.revision, &events)?;
        self.published.push(Arc::new(Changes {
            revision: self.revision,
            events,
        }));
        Ok(())
    }
}

impl Writer {
    fn run(&mut self, queue: &std_mpsc::Receiver<Command>) {
        loop {
            let wait = self
                .leases
                .values()
                .map(|lease| lease.deadline.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(Duration::from_secs(3600));
            let mut batch = Vec::new();
            match queue.recv_timeout(wait) {
                Ok(command) => batch.push(command),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            if batch.is_empty() && !self.leases.values().any(|l| l.deadline <= now) {
                continue;
            }
            self.process(batch, now);
        }
    }

    /// Applies `batch` and the due lease expiries in one redb transaction, then answers and
    /// publishes. A storage error fails the whole batch and reloads the lease table.
    fn process(&mut self, batch: Vec<Command>, now: Instant) {
        let mut pending = Vec::with_capacity(batch.len());
        let mut published = Vec::new();
        let result = self.apply_all(batch, now, &mut pending, &mut published);
        let commit = result.map_err(Arc::new);
        if let Err(err) = &commit {
            tracing::error!(error = %err, "store write failed");
            published.clear();
            match restart_leases(&self.shared.db) {
                Ok(leases) => self.leases = leases,
                Err(err) => tracing::error!(error = %err, "cannot reload the store's leases"),
            }
        }
        for reply in pending {
            reply.send(commit.as_ref().err());
        }
        for changes in published {
            // No receivers is fine: nobody watches.
            let _ = self.live.send(changes);
        }
    }

    fn apply_all(
        &mut self,
        batch: Vec<Command>,
        now: Instant,
        pending: &mut Vec<Pending>,
        published: &mut Vec<Arc<Changes>>,
    ) -> Result<(), redb::Error> {
        let tx = self.shared.db.begin_write()?;
        {
            let mut t = Tables::open(&tx)?;
            let mut log = Log {
                revision: meta(&t.meta, META_REVISION)?,
                published,
            };
            for command in batch {
                pending.push(self.apply(&mut t, &mut log, command, now)?);
            }
            let mut due: Vec<LeaseId> = self
                .leases
                .iter()
                .filter(|(_, lease)| lease.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            due.sort_unstable();
            for id in due {
                tracing::debug!(lease = id, "lease expired");
                let events = self.revoke(&mut t, id, log.revision + 1)?;
                log.append(&mut t, events)?;
            }
            let revision = log.revision;
            t.meta.insert(META_REVISION, revision)?;
            if revision >= self.history {
                t.compact(revision + 1 - self.history)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Applies one request. A storage error aborts the batch; a rejected request only gets its
    /// error as the reply.
    fn apply(
        &mut self,
        t: &mut Tables,
        log: &mut Log,
        command: Command,
        now: Instant,
    ) -> Result<Pending, redb::Error> {
        Ok(match command {
            Command::Txn(txn, reply) => {
                let result = match self.apply_txn(t, &txn, log.revision + 1)? {
                    Ok((succeeded, events)) => {
                        let deleted = events
                            .iter()
                            .filter(|e| e.kind == EventKind::Delete)
                            .count();
                        log.append(t, events)?;
                        Ok(Applied {
                            succeeded,
                            revision: log.revision,
                            deleted,
                        })
                    }
                    Err(err) => Err(err),
                };
                Pending::Applied(reply, result)
            }
            Command::Grant(ttl, reply) => {
                let id = meta(&t.meta, META_NEXT_LEASE)?.max(1);
                t.meta.insert(META_NEXT_LEASE, id + 1)?;
                let id = LeaseId::try_from(id).unwrap_or(LeaseId::MAX);
                t.leases
                    .insert(id, (ms(ttl), unix_ms(SystemTime::now() + ttl)))?;
                self.leases.insert(
                    id,
                    Lease {
                        ttl,
                        deadline: now + ttl,
                    },
                );
                Pending::Lease(reply, Ok(id))
            }
            Command::KeepAlive(id, reply) => {
                let result = match self.leases.get_mut(&id) {
                    Some(lease) if lease.deadline > now => {
                        lease.deadline = now + lease.ttl;
                        t.leases
                            .insert(id, (ms(lease.ttl), unix_ms(SystemTime::now() + lease.ttl)))?;
                        Ok(())
                    }
                    // Due but not yet expired by this round: it is gone all the same.
                    _ => Err(StoreError::LeaseExpired { lease: id }),
                };
                Pending::Done(reply, result)
            }
            Command::Revoke(id, reply) => {
                let result = if self.leases.contains_key(&id) {
                    let events = self.revoke(t, id, log.revision + 1)?;
                    log.append(t, events)?;
                    Ok(())
                } else {
                    Err(StoreError::LeaseNotFound { lease: id })
                };
                Pending::Done(reply, result)
            }
            Command::Compact(target, reply) => {
                let result = if target > log.revision {
                    Err(StoreError::FutureRevision {
                        revision: target,
                        current: log.revision,
                    })
                } else {
                    t.compact(target)?;
                    Ok(())
                };
                Pending::Done(reply, result)
            }
        })
    }

    /// Evaluates and applies one transaction at `revision` (used only if it changes something).
    /// The inner error rejects the transaction without changing anything.
    #[allow(clippy::type_complexity)]
    fn apply_txn(
        &self,
        t: &mut Tables,
        txn: &Txn,
        revision: Revision,
    ) -> Result<Result<(bool, Vec<Event>), StoreError>, redb::Error> {
        let mut succeeded = true;
        for compare in &txn.compare {
            if !t.compare(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            if let Op::Put { lease, .. } = op
                && *lease != 0
                && !self.leases.contains_key(lease)
            {
                return Ok(Err(StoreError::LeaseNotFound { lease: *lease }));
            }
        }
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    events.push(t.put(key, value, *lease, revision)?);
                }
                Op::Delete { key } => events.extend(t.delete(key, revision)?),
                Op::DeletePrefix { prefix } => {
                    for key in t.keys_with_prefix(prefix)? {
                        events.extend(t.delete(&key, revision)?);
                    }
                }
            }
        }
        Ok(Ok((succeeded, events)))
    }

    /// Forgets lease `id` and deletes its keys at `revision`; returns their Delete events.
    fn revoke(
        &mut self,
        t: &mut Tables,
        id: LeaseId,
        revision: Revision,
    ) -> Result<Vec<Event>, redb::Error> {
        self.leases.remove(&id);
        t.leases.remove(id)?;
        let mut keys = Vec::new();
        for key in t.lease_keys.remove_all(id)? {
            keys.push(key?.value().to_owned());
        }
        keys.sort_unstable();
        let mut events = Vec::new();
        for key in keys {
            events.extend(t.delete(&key, revision)?);
        }
        Ok(events)
    }
}

/// A watch's producer: replays the log from `next`, then follows live changes.
struct Watcher {
    shared: Arc<Shared>,
    prefix: String,
    /// The lowest revision not yet delivered.
    next: Revision,
}

type WatchTx = mpsc::Sender<Result<Event, StoreError>>;

impl Watcher {
    /// Returns `Ok` when the consumer has gone away; an error ends the stream with it.
    async fn run(
        mut self,
        mut live: broadcast::Receiver<Arc<Changes>>,
        replay: bool,
        tx: &WatchTx,
    ) -> Result<(), StoreError> {
        if replay && !self.replay(tx).await? {
            return Ok(());
        }
        loop {
            match live.recv().await {
                Ok(changes) => {
                    if changes.revision < self.next {
                        continue; // already replayed
                    }
                    if !self.deliver(&changes.events, tx).await {
                        return Ok(());
                    }
                    self.next = changes.revision + 1;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the live buffer: catch up from the log instead.
                    live = live.resubscribe();
                    if !self.replay(tx).await? {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }

    /// Delivers the log from `self.next` to its end. False if the consumer has gone away.
    async fn replay(&mut self, tx: &WatchTx) -> Result<bool, StoreError> {
        loop {
            let from = self.next;
            let chunk = read_blocking(Arc::clone(&self.shared), "watch replay", move |db| {
                let tx = db.begin_read()?;
                let compact = meta(&tx.open_table(META)?, META_COMPACT)?;
                if from < compact {
                    return Ok(Err(compact));
                }
                let events = tx.open_table(EVENTS)?;
                let mut chunk: Vec<(Revision, Event)> = Vec::new();
                for row in events.range((from, 0)..(from.saturating_add(REPLAY_CHUNK), 0))? {
                    let (at, row) = row?;
                    let (revision, _) = at.value();
                    let (kind, key, create_revision, lease, value) = row.value();
                    let kind = if kind == KIND_DELETE {
                        EventKind::Delete
                    } else {
                        EventKind::Put
                    };
                    let kv = KeyValue {
                        key: key.to_owned(),
                        value: value.to_vec(),
                        create_revision,
                        mod_revision: revision,
                        lease,
                    };
                    chunk.push((revision, Event { kind, kv }));
                }
                Ok(Ok(chunk))
            })
            .await?;
            let chunk = chunk.map_err(|compact_revision| StoreError::Compacted {
                requested: from,
                compact_revision,
            })?;
            let Some(last) = chunk.last().map(|(revision, _)| *revision) else {
                return Ok(true);
            };
            let events: Vec<Event> = chunk.into_iter().map(|(_, event)| event).collect();
            if !self.deliver(&events, tx).await {
                return Ok(false);
            }
            self.next = last + 1;
        }
    }

    async fn deliver(&self, events: &[Event], tx: &WatchTx) -> bool {
        for event in events.iter().filter(|e| e.kv.key.starts_with(&self.prefix)) {
            if tx.send(Ok(event.clone())).await.is_err() {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_stream::StreamExt as _;

    use super::super::{Store, StoreError};
    use super::RedbOptions;

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open_redb(&dir.path().join("state.redb")).expect("open redb store")
    }

    fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open(&dir);
        (dir, store)
    }

    crate::store_suite!(crate::store::suite, fresh());

    #[tokio::test]
    async fn a_second_open_fails_while_the_first_holds_the_file() {
        let (dir, _store) = fresh();
        match Store::open_redb(&dir.path().join("state.redb")) {
            Err(err @ StoreError::Locked { .. }) => {
                assert!(err.to_string().contains("in use"), "{err}");
            }
            other => panic!("second open must fail with Locked, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revisions_and_leases_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (rev_a, rev_b, lease);
        {
            let store = open(&dir);
            rev_a = store.put("r/a", b"1".to_vec()).await.expect("put");
            lease = store
                .grant_lease(Duration::from_secs(60))
                .await
                .expect("grant");
            rev_b = store
                .put_with_lease("r/b", b"2".to_vec(), lease)
                .await
                .expect("put with lease");
            store.put("r/a", b"3".to_vec()).await.expect("put again");
        }
        let store = open(&dir);
        let (kvs, revision) = store.range("r/").await.expect("range");
        assert_eq!(revision, rev_b + 1, "the revision counter persists");
        assert_eq!(kvs[0].create_revision, rev_a);
        assert_eq!(kvs[0].mod_revision, rev_b + 1);
        assert_eq!(kvs[1].lease, lease, "the key keeps its lease");
        store.keep_alive(lease).await.expect("the lease survived");
        assert_eq!(
            store.put("r/c", vec![]).await.expect("put"),
            revision + 1,
            "revisions continue"
        );
        // The history survived too.
        let mut watch = store.watch("r/", rev_a).await.expect("watch");
        let first = watch.next().await.expect("event").expect("not an error");
        assert_eq!(first.kv.mod_revision, rev_a);
        drop(watch);

        store.revoke_lease(lease).await.expect("revoke");
        drop(store);
        let store = open(&dir);
        assert!(
            matches!(
                store.keep_alive(lease).await,
                Err(StoreError::LeaseExpired { .. })
            ),
            "a revoked lease stays revoked"
        );
        assert!(store.get("r/b").await.expect("get").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_that_expired_while_closed_expires_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let put_revision;
        {
            let store = open(&dir);
            let lease = store
                .grant_lease(Duration::from_millis(300))
                .await
                .expect("grant");
            put_revision = store
                .put_with_lease("e/k", vec![], lease)
                .await
                .expect("put");
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        let store = open(&dir);
        let mut watch = store.watch("e/", put_revision).await.expect("watch");
        let put = watch.next().await.expect("put event").expect("ok");
        assert_eq!(put.kv.mod_revision, put_revision);
        let deleted = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the expired lease's key is deleted at once")
            .expect("event")
            .expect("ok");
        assert_eq!(deleted.kind, super::EventKind::Delete);
        assert_eq!(deleted.kv.key, "e/k");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_is_bounded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            Store::open_redb_with(&dir.path().join("state.redb"), RedbOptions { history: 8 })
                .expect("open");
        let mut last = 0;
        for i in 0..20 {
            last = store.put(&format!("h/{i}"), vec![]).await.expect("put");
        }
        let oldest = last + 1 - 8;
        let mut watch = store.watch("h/", oldest - 1).await.expect("watch");
        match watch.next().await {
            Some(Err(StoreError::Compacted {
                compact_revision, ..
            })) => assert_eq!(compact_revision, oldest),
            other => panic!("expected Compacted, got {other:?}"),
        }
        assert!(
            watch.next().await.is_none(),
            "the stream ends after Compacted"
        );
        let mut watch = store.watch("h/", oldest).await.expect("watch");
        for revision in oldest..=last {
            let event = watch.next().await.expect("event").expect("ok");
            assert_eq!(event.revision(), revision);
        }
    }

    /// A watcher that doesn't read falls out of the live buffer; it must catch up from the log
    /// without losing or repeating anything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lagging_watcher_catches_up_from_the_log() {
        let (_dir, store) = fresh();
        let mut watch = store.watch("lag/", 0).await.expect("watch");
        let writes = (0..3000).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.put(&format!("lag/{i}"), vec![]).await })
        });
        let mut revisions = Vec::new();
        for write in writes.collect::<Vec<_>>() {
            revisions.push(write.await.expect("join").expect("put"));
        }
        revisions.sort_unstable();
        for expected in revisions {
            let event = watch.next().await.expect("event").expect("ok");
            assert_eq!(event.revision(), expected);
        }
    }
}
