//! Converges this node's containers to the desired state in the store.
//!
//! One task owns every containerd action of the node (no two passes ever race on the same
//! container). It runs a pass when asked (after a deploy, scale, restart or removal), when a
//! container exits (containerd's event stream), and every few seconds regardless, which also
//! heals whatever the event stream missed while containerd or the agent was down.

mod lifecycle;
pub mod plan;
pub mod process;
pub mod rollout;
pub mod schedule;
mod secret_files;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use futures_util::{StreamExt as _, stream};
use tokio::sync::{mpsc, oneshot};

pub use lifecycle::{FailedCreate, Lifecycle, LifecycleError};
use plan::{Action, Backoff};
use schedule::{Assignments, NodeLoad};
pub use secret_files::MAX_SECRET_BYTES;

use crate::{
    model::{AppSpec, ContainerRecord, ContainerState, now_ms},
    runtime::containers::{ListedContainer, TaskExit, labels},
    state::State,
    store::StoreError,
};

/// A pass runs at least this often.
const RESYNC_INTERVAL: Duration = Duration::from_secs(3);
/// Containers created or removed at once within a pass.
const PARALLELISM: usize = 8;
/// A container that ran at least this long before exiting starts its backoff afresh.
const HEALTHY_RUN_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("the reconciler has stopped")]
    Stopped,
}

impl ReconcileError {
    /// The pass could not run because the store or containerd was out of reach for a while;
    /// a later one may.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Store(err) | Self::Lifecycle(LifecycleError::Store(err)) => err.is_unavailable(),
            Self::Runtime(err) => err.is_unreachable(),
            Self::Lifecycle(_) | Self::Stopped => false,
        }
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Report {
    pub created: Vec<ContainerRecord>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    /// Actions that failed, by app.
    pub failures: Vec<(String, LifecycleError)>,
}

enum Request {
    Converge(oneshot::Sender<Result<Report, ReconcileError>>),
}

#[derive(Clone, Debug)]
pub struct ReconcilerHandle {
    requests: mpsc::Sender<Request>,
}

impl ReconcilerHandle {
    /// Runs a pass now and returns what it did.
    pub async fn converge(&self) -> Result<Report, ReconcileError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Converge(reply))
            .await
            .map_err(|_| ReconcileError::Stopped)?;
        answer.await.map_err(|_| ReconcileError::Stopped)?
    }
}

#[derive(Debug)]
pub struct Reconciler {
    lifecycle: Lifecycle,
    state: State,
    node: String,
    backoff: Backoff,
    /// Consecutive quick exits per container.
    failures: HashMap<String, u32>,
    /// The apps (name, identity, labels) the loaded policies were compiled for; a change
    /// means the policies must be compiled and loaded again before new containers start.
    policy_basis: Vec<(String, u32, std::collections::BTreeMap<String, String>)>,
}

impl Reconciler {
    pub fn new(lifecycle: Lifecycle, state: State, node: String) -> Self {
        Self {
            lifecycle,
            state,
            node,
            backoff: Backoff::new(),
            failures: HashMap::new(),
            policy_basis: Vec::new(),
        }
    }

    pub fn spawn(self) -> ReconcilerHandle {
        let (requests, inbox) = mpsc::channel(32);
        tokio::spawn(self.run(inbox));
        ReconcilerHandle { requests }
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Request>) {
        let mut tick = tokio::time::interval(RESYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (exit_tx, mut exits) = mpsc::channel::<TaskExit>(256);
        tokio::spawn(watch_exits(self.lifecycle.runtime().clone(), exit_tx));
        loop {
            tokio::select! {
                request = inbox.recv() => {
                    let Some(Request::Converge(reply)) = request else { break };
                    let _ = reply.send(self.pass().await);
                }
                Some(exit) = exits.recv() => {
                    if let Err(err) = self.on_exit(&exit).await {
                        tracing::warn!(container = %exit.container_id, "recording exit: {err}");
                    }
                    self.pass_logged().await;
                }
                _ = tick.tick() => self.pass_logged().await,
            }
        }
    }

    async fn pass_logged(&mut self) {
        match self.pass().await {
            Ok(report) => {
                for (app, err) in &report.failures {
                    tracing::warn!(app, "{}", crate::error_chain(err));
                }
            }
            Err(ReconcileError::Runtime(err)) if err.is_unreachable() => {
                tracing::debug!("reconcile pass skipped: {err}");
            }
            Err(err) => tracing::warn!("reconcile pass failed: {}", crate::error_chain(&err)),
        }
    }

    /// Records an exit the event stream reported, and schedules the restart.
    async fn on_exit(&mut self, exit: &TaskExit) -> Result<(), ReconcileError> {
        let Some(mut record) = self.state.container(&exit.container_id).await? else {
            return Ok(());
        };
        if record.node != self.node
            || record.state != ContainerState::Running
            || record.pid != exit.pid
        {
            return Ok(()); // stopping on purpose, not ours, or an earlier task's exit
        }
        let code = i32::try_from(exit.exit_status).unwrap_or(i32::MAX);
        record.transition(
            ContainerState::Exited,
            Some(code),
            format!("exited with code {code}"),
        );
        self.state.put_container(&record).await?;
        self.schedule_restart(&record);
        Ok(())
    }

    fn schedule_restart(&mut self, record: &ContainerRecord) {
        self.schedule_backoff(&record.id, record.started_at_ms);
    }

    /// The container may next be restarted or replaced after a delay that grows with its
    /// consecutive quick failures.
    fn schedule_backoff(&mut self, id: &str, started_at_ms: Option<u64>) {
        let ran_ms = now_ms().saturating_sub(started_at_ms.unwrap_or(0));
        let failures = self.failures.entry(id.to_owned()).or_insert(0);
        if ran_ms >= HEALTHY_RUN_MS {
            *failures = 0;
        }
        let delay = plan::backoff_delay_ms(*failures);
        *failures += 1;
        self.backoff.insert(id.to_owned(), now_ms() + delay);
    }

    /// One pass: observe containerd, reconcile records with it, make sure the policies cover
    /// every app, plan, act, publish ports.
    async fn pass(&mut self) -> Result<Report, ReconcileError> {
        let parallel = rollout::advance(&self.state).await?;
        let apps = self.state.apps().await?;
        let placement = self.place(&apps).await?;
        let node = self.node.clone();
        let owned = move |app: &AppSpec| owned_slots(&placement, app, &node);
        let listed = self.lifecycle.runtime().list_containers().await?;
        let records = self.observe(&apps, &owned, listed).await?;
        self.cover_policies(&apps, &records).await?;
        let now = now_ms();
        let actions = plan::plan(&apps, &records, owned, &self.backoff, &parallel, now);
        let report = self.act(&apps, records, actions).await;
        let records: Vec<ContainerRecord> = self
            .state
            .containers()
            .await?
            .into_iter()
            .filter(|r| r.node == self.node)
            .collect();
        if let Err(err) = self.lifecycle.network().sync_ports(&apps, &records).await {
            tracing::warn!("publishing ports: {err}");
        }
        Ok(report)
    }

    /// Places every app's replicas on ready nodes (see [`schedule`]) and returns the placement.
    /// Every node computes the same placement from the same store contents; writes are
    /// compare-and-swap, so concurrent passes on several nodes never lose an update.
    async fn place(
        &self,
        apps: &[AppSpec],
    ) -> Result<BTreeMap<String, Assignments>, ReconcileError> {
        let mut current = self.state.assignments().await?;
        let nodes = self.state.cluster_nodes(&self.node).await?;
        let volumes = self.state.volumes().await?;
        let mut placement = BTreeMap::new();
        for app in apps {
            let (mine, revision) = current.remove(&app.name).unwrap_or_default();
            // Load per node from every other app's placement.
            let loads: Vec<NodeLoad> = nodes
                .iter()
                .map(|(name, ready)| NodeLoad {
                    name: name.clone(),
                    ready: *ready,
                    containers: placement
                        .values()
                        .chain(current.values().map(|(a, _)| a))
                        .flat_map(|a: &Assignments| a.values())
                        .filter(|n| *n == name)
                        .count(),
                })
                .collect();
            let volume_nodes: BTreeSet<String> = app
                .volumes
                .iter()
                .filter_map(|m| {
                    volumes
                        .iter()
                        .find(|v| v.name == m.volume)
                        .map(|v| v.node.clone())
                })
                .collect();
            let next = schedule::schedule(app.replicas, &mine, &loads, &volume_nodes);
            if next == mine {
                placement.insert(app.name.clone(), mine);
            } else if self
                .state
                .set_assignments(&app.name, &next, revision)
                .await?
            {
                tracing::debug!(app = %app.name, ?next, "placed replicas");
                placement.insert(app.name.clone(), next);
            } else {
                // Another node placed it first; use theirs (re-read next pass).
                placement.insert(app.name.clone(), mine);
            }
        }
        // Placements of apps that are gone.
        for app in current.keys() {
            self.state.delete_assignments(app).await?;
        }
        Ok(placement)
    }

    /// Gives every app its identity and, when the set of apps (or their labels) changed since
    /// the policies were last compiled, compiles and loads them again — before any container
    /// of a new app gets its endpoint, so no container ever runs unpoliced. Identities of apps
    /// that are gone (with their containers) are released.
    async fn cover_policies(
        &mut self,
        apps: &[AppSpec],
        records: &[ContainerRecord],
    ) -> Result<(), ReconcileError> {
        let mut basis = Vec::with_capacity(apps.len());
        for app in apps {
            let identity = self.state.app_identity(&app.name).await?;
            basis.push((app.name.clone(), identity, app.selector_labels()));
        }
        for app in self.state.identities().await?.into_keys() {
            if !apps.iter().any(|a| a.name == app) && !records.iter().any(|r| r.app == app) {
                self.state.release_identity(&app).await?;
            }
        }
        if basis != self.policy_basis {
            match self.lifecycle.network().load_policies().await {
                Ok(_) => self.policy_basis = basis,
                Err(err) => tracing::error!("loading policies: {}", crate::error_chain(&err)),
            }
        }
        Ok(())
    }

    /// Brings the records of this node in line with what containerd reports: adopts
    /// Hivemind containers it has no record of (after a crash), drops records whose container
    /// is gone, and notices exits the event stream missed.
    async fn observe(
        &mut self,
        apps: &[AppSpec],
        owned: &impl Fn(&AppSpec) -> Vec<u32>,
        listed: Vec<ListedContainer>,
    ) -> Result<Vec<ContainerRecord>, ReconcileError> {
        let mut records: Vec<ContainerRecord> = self
            .state
            .containers()
            .await?
            .into_iter()
            .filter(|r| r.node == self.node)
            .collect();
        let listed: HashMap<String, ListedContainer> = listed
            .into_iter()
            .filter(|c| c.labels.get(labels::NODE).is_none_or(|n| *n == self.node))
            .map(|c| (c.id.clone(), c))
            .collect();

        let mut kept = Vec::with_capacity(records.len());
        for mut record in records.drain(..) {
            match listed.get(&record.id) {
                None if record.state == ContainerState::Failed => kept.push(record),
                None => {
                    // Gone from containerd (or never made it there before a crash).
                    tracing::info!(container = %record.id, "container is gone from containerd; dropping its record");
                    // One stuck leftover must not stall the whole pass; it is retried next time.
                    if let Err(err) = self.lifecycle.forget(&record.id).await {
                        tracing::warn!(container = %record.id, "cleaning up: {}", crate::error_chain(&err));
                    }
                }
                Some(container) => {
                    let running = container.task.is_some_and(|t| t.running);
                    if record.state == ContainerState::Running && !running {
                        let code = container
                            .task
                            .map(|t| i32::try_from(t.exit_status).unwrap_or(i32::MAX));
                        record.transition(ContainerState::Exited, code, "found exited");
                        self.state.put_container(&record).await?;
                        self.schedule_restart(&record);
                    } else if matches!(
                        record.state,
                        ContainerState::Exited | ContainerState::Creating
                    ) && running
                    {
                        record.pid = container.task.map_or(0, |t| t.pid);
                        if record.ip.is_none() {
                            record.ip = self.recovered_ip(&record.id, &record.app).await;
                        }
                        if record.ip.is_some() {
                            record.transition(ContainerState::Running, None, "found running");
                        } else {
                            record.transition(
                                ContainerState::Failed,
                                None,
                                "found running without a network attachment; replacing it",
                            );
                        }
                        self.state.put_container(&record).await?;
                    } else if record.state == ContainerState::Creating {
                        // Creates finish within a pass, so this one was cut short (the agent
                        // died mid-create): replace it.
                        record.transition(ContainerState::Failed, None, "creation was interrupted");
                        self.state.put_container(&record).await?;
                    }
                    kept.push(record);
                }
            }
        }

        // containerd containers without a record: adopt them if their app still wants them.
        for container in listed.values() {
            if kept.iter().any(|r| r.id == container.id) {
                continue;
            }
            let mut adopted = adoptable(apps, owned, container, &self.node);
            if let Some(record) = &mut adopted {
                record.ip = self.recovered_ip(&record.id, &record.app).await;
            }
            if let Some(record) = adopted.filter(|r| r.ip.is_some()) {
                tracing::info!(container = %record.id, app = %record.app, ip = ?record.ip, "adopting a running container");
                self.state.put_container(&record).await?;
                kept.push(record);
            } else {
                tracing::info!(container = %container.id, "removing a container no app wants");
                if let Err(err) = self.lifecycle.remove_unrecorded(&container.id).await {
                    tracing::warn!(container = %container.id, "removing: {}", crate::error_chain(&err));
                }
            }
        }
        self.lifecycle.sweep_leftovers(&kept).await;
        Ok(kept)
    }

    /// The re-derived address of a container found without one (see
    /// [`Lifecycle::recover_network`]); `None` (and a warning) if it cannot be had.
    async fn recovered_ip(&self, id: &str, app: &str) -> Option<std::net::Ipv4Addr> {
        match self.lifecycle.recover_network(id, app).await {
            Ok(Some(ip)) => {
                tracing::info!(container = id, %ip, "recovered the container's address");
                Some(ip)
            }
            Ok(None) => {
                tracing::warn!(
                    container = id,
                    "the container has no usable network attachment"
                );
                None
            }
            Err(err) => {
                tracing::warn!(
                    container = id,
                    "recovering the network attachment: {}",
                    crate::error_chain(&err)
                );
                None
            }
        }
    }

    /// Takes a replaced container out of service (`stopping`: out of DNS, the VIP, the
    /// router and published ports); the plan removes it once the drain time has passed.
    async fn drain(&self, id: &str) {
        let drain = |r: &mut ContainerRecord| {
            if r.state != ContainerState::Stopping {
                let code = r.exit_code;
                r.transition(
                    ContainerState::Stopping,
                    code,
                    "replaced by a newer generation; draining",
                );
            }
        };
        if let Err(err) = self.state.update_container(id, drain).await {
            tracing::warn!(container = %id, "draining: {err}");
        }
    }

    async fn act(
        &mut self,
        apps: &[AppSpec],
        records: Vec<ContainerRecord>,
        actions: Vec<Action>,
    ) -> Report {
        let mut report = Report::default();
        let by_id: HashMap<String, ContainerRecord> =
            records.into_iter().map(|r| (r.id.clone(), r)).collect();
        let app_of = |name: &str| apps.iter().find(|a| a.name == name);

        let mut removals = Vec::new();
        let mut creations = Vec::new();
        for action in actions {
            match action {
                Action::Remove { id, reason } => {
                    if let Some(record) = by_id.get(&id) {
                        let grace = app_of(&record.app).map_or(10, |a| a.stop_timeout_secs);
                        removals.push((
                            record.clone(),
                            Duration::from_secs(u64::from(grace)),
                            reason,
                        ));
                    }
                }
                Action::Create { app, slot } => {
                    if let Some(app) = app_of(&app) {
                        creations.push((app.clone(), slot));
                    }
                }
                Action::Drain { id } => self.drain(&id).await,
                Action::Restart { id } => {
                    if let Some(record) = by_id.get(&id) {
                        let mut record = record.clone();
                        let grace = app_of(&record.app).map_or(10, |a| a.stop_timeout_secs);
                        match self
                            .lifecycle
                            .restart(&mut record, Duration::from_secs(u64::from(grace)))
                            .await
                        {
                            Ok(()) => report.restarted.push(id),
                            Err(err) => {
                                report.failures.push((record.app.clone(), err));
                                self.schedule_restart(&record);
                            }
                        }
                    }
                }
            }
        }

        let lifecycle = &self.lifecycle;
        let removing: Vec<_> = removals
            .into_iter()
            .map(|(mut record, grace, reason)| async move {
                let result = lifecycle.remove(&mut record, grace, reason).await;
                (record, result)
            })
            .collect();
        let removed: Vec<(ContainerRecord, Result<(), LifecycleError>)> = stream::iter(removing)
            .buffer_unordered(PARALLELISM)
            .collect()
            .await;
        for (record, result) in removed {
            match result {
                Ok(()) => {
                    self.backoff.remove(&record.id);
                    self.failures.remove(&record.id);
                    report.removed.push(record.id);
                }
                Err(err) => report.failures.push((record.app, err)),
            }
        }

        let creating: Vec<_> = creations
            .into_iter()
            .map(
                |(app, slot)| async move { (app.name.clone(), lifecycle.create(&app, slot).await) },
            )
            .collect();
        let created: Vec<_> = stream::iter(creating)
            .buffer_unordered(PARALLELISM)
            .collect()
            .await;
        for (app, result) in created {
            match result {
                Ok(record) => report.created.push(record),
                Err(failed) => {
                    report.failures.push((app, *failed.error));
                    self.schedule_backoff(&failed.id, None);
                }
            }
        }
        report
    }
}

/// Replica slots of `app` placed on `node`.
fn owned_slots(placement: &BTreeMap<String, Assignments>, app: &AppSpec, node: &str) -> Vec<u32> {
    placement
        .get(&app.name)
        .map(|slots| {
            slots
                .iter()
                .filter(|(_, n)| *n == node)
                .map(|(slot, _)| *slot)
                .collect()
        })
        .unwrap_or_default()
}

/// A record for a labelled containerd container, if its app still wants that slot here.
fn adoptable(
    apps: &[AppSpec],
    owned: &impl Fn(&AppSpec) -> Vec<u32>,
    container: &ListedContainer,
    node: &str,
) -> Option<ContainerRecord> {
    let app = apps
        .iter()
        .find(|a| Some(&a.name) == container.labels.get(labels::APP))?;
    let slot: u32 = container.labels.get(labels::SLOT)?.parse().ok()?;
    let generation: u64 = container.labels.get(labels::GENERATION)?.parse().ok()?;
    if !owned(app).contains(&slot) {
        return None;
    }
    let running = container.task.is_some_and(|t| t.running);
    let mut record = ContainerRecord {
        id: container.id.clone(),
        app: app.name.clone(),
        slot,
        node: node.to_owned(),
        generation,
        image: app.image.clone(),
        image_digest: String::new(),
        state: ContainerState::Creating,
        exit_code: None,
        restart_count: 0,
        pid: container.task.map_or(0, |t| t.pid),
        ip: None,
        created_at_ms: now_ms(),
        started_at_ms: None,
        history: Vec::new(),
        health: app.health.as_ref().map(|_| crate::model::Health::Starting),
        health_detail: String::new(),
        // What the image made of it is known to the node that made it; an adopted record
        // shows the app's stop signal and leaves the rest empty.
        exposed_ports: Vec::new(),
        user: String::new(),
        stop_signal: app.stop_signal.clone(),
    };
    let state = if running {
        ContainerState::Running
    } else {
        ContainerState::Exited
    };
    record.transition(state, None, "adopted after an agent restart");
    Some(record)
}

/// Forwards containerd's task-exit events, resubscribing whenever the stream ends.
async fn watch_exits(runtime: crate::runtime::Runtime, exits: mpsc::Sender<TaskExit>) {
    loop {
        match runtime.task_exits().await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                while let Some(exit) = stream.next().await {
                    if exits.send(exit).await.is_err() {
                        return;
                    }
                }
            }
            Err(err) => tracing::debug!("event subscription: {err}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
