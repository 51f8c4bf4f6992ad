//! Containers and their tasks in containerd: create, start, stop, delete, list, watch exits.

use std::{collections::HashMap, path::Path, time::Duration};

use containerd_client::{
    services::v1::{
        Container, CreateContainerRequest, CreateRequest, CreateTaskRequest,
        DeleteContainerRequest, DeleteRequest, DeleteTaskRequest, GetRequest, KillRequest,
        ListContainersRequest, StartRequest, SubscribeRequest, WaitRequest,
        container::Runtime as ContainerRuntime,
        containers_client::ContainersClient,
        events_client::EventsClient,
        leases_client::LeasesClient,
        snapshots::{
            MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
            snapshots_client::SnapshotsClient,
        },
        tasks_client::TasksClient,
    },
    types::v1::Status,
};
use prost::Message as _;
use tokio_stream::StreamExt as _;
use tonic::Code;

use super::{Runtime, RuntimeError, spec::SPEC_TYPE_URL};

/// The runc shim; the only runtime Hivemind uses.
const RUNC_V2: &str = "io.containerd.runc.v2";
pub const SNAPSHOTTER: &str = "overlayfs";
const SIGKILL: u32 = 9;

/// Labels Hivemind puts on its containerd containers, so it can find and re-adopt them.
pub mod labels {
    pub const APP: &str = "hivemind.app";
    pub const SLOT: &str = "hivemind.slot";
    pub const GENERATION: &str = "hivemind.generation";
    pub const NODE: &str = "hivemind.node";
}

/// What containerd needs to make a container.
#[derive(Debug, Clone)]
pub struct NewContainer<'a> {
    pub id: &'a str,
    /// The image record's name.
    pub image: &'a str,
    /// Top snapshot of the image (chain id): the rootfs is a writable layer on it.
    pub parent_snapshot: &'a str,
    pub spec: &'a serde_json::Value,
    pub labels: HashMap<String, String>,
}

/// A Hivemind container as containerd reports it.
#[derive(Debug, Clone)]
pub struct ListedContainer {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub task: Option<TaskState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskState {
    pub pid: u32,
    pub running: bool,
    pub exit_status: u32,
}

/// A task exited (from containerd's event stream).
#[derive(Debug, Clone)]
pub struct TaskExit {
    pub container_id: String,
    /// The process that exited: tells an old task's exit from the current one's.
    pub pid: u32,
    pub exit_status: u32,
}

impl Runtime {
    /// Prepares the container's writable snapshot and creates the container record.
    /// On failure nothing is left behind.
    ///
    /// Both happen under a short lease: between the two calls nothing references the fresh
    /// snapshot, and containerd's garbage collector (run after any deletion, e.g. the end of
    /// an image pull) would otherwise remove it.
    pub async fn create_container(&self, new: &NewContainer<'_>) -> Result<(), RuntimeError> {
        let lease = format!("hivemind-create-{}", new.id);
        let mut leases = LeasesClient::new(self.channel.clone());
        leases
            .create(self.request(CreateRequest {
                id: lease.clone(),
                labels: HashMap::new(),
            }))
            .await
            .map_err(|status| self.call_error("lease snapshot for", new.id, &status))?;
        let result = self.create_container_leased(new, &lease).await;
        if let Err(status) = leases
            .delete(self.request(DeleteRequest {
                id: lease,
                sync: false,
            }))
            .await
        {
            tracing::warn!(
                container = new.id,
                "deleting the creation lease: {}",
                status.message()
            );
        }
        result
    }

    async fn create_container_leased(
        &self,
        new: &NewContainer<'_>,
        lease: &str,
    ) -> Result<(), RuntimeError> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        snapshots
            .prepare(self.leased(
                lease,
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: new.id.into(),
                    parent: new.parent_snapshot.into(),
                    labels: HashMap::new(),
                },
            ))
            .await
            .map_err(|status| self.call_error("prepare snapshot", new.id, &status))?;
        let container = Container {
            id: new.id.into(),
            labels: new.labels.clone(),
            image: new.image.into(),
            runtime: Some(ContainerRuntime {
                name: RUNC_V2.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value: serde_json::to_vec(new.spec).unwrap_or_default(),
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: new.id.into(),
            ..Container::default()
        };
        let created = ContainersClient::new(self.channel.clone())
            .create(self.leased(
                lease,
                CreateContainerRequest {
                    container: Some(container),
                },
            ))
            .await;
        if let Err(status) = created {
            let _ = self.remove_snapshot(new.id).await;
            return Err(self.call_error("create container", new.id, &status));
        }
        Ok(())
    }

    /// Creates and starts the container's task with stdout and stderr appended to `log`.
    /// A task left from an earlier run is deleted first. Returns the pid.
    pub async fn start_task(&self, id: &str, log: &Path) -> Result<u32, RuntimeError> {
        self.delete_task(id).await?;
        let mounts = SnapshotsClient::new(self.channel.clone())
            .mounts(self.request(MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
            }))
            .await
            .map_err(|status| self.call_error("get rootfs mounts", id, &status))?
            .into_inner()
            .mounts;
        let log_uri = match &self.log_writer {
            Some(writer) => super::log_file::writer_uri(writer, log),
            None => format!("file://{}", log.display()),
        };
        let mut tasks = TasksClient::new(self.channel.clone());
        tasks
            .create(self.request(CreateTaskRequest {
                container_id: id.into(),
                rootfs: mounts,
                stdout: log_uri.clone(),
                stderr: log_uri,
                ..CreateTaskRequest::default()
            }))
            .await
            .map_err(|status| self.call_error("create task", id, &status))?;
        match tasks
            .start(self.request(StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(reply) => Ok(reply.into_inner().pid),
            Err(status) => {
                let _ = self.delete_task(id).await;
                Err(self.call_error("start task", id, &status))
            }
        }
    }

    /// `signal` (the app's stop signal, SIGTERM by default), up to `grace` for the process to
    /// exit, then SIGKILL; then deletes the task. Returns the exit status if the task ran.
    pub async fn stop_task(
        &self,
        id: &str,
        signal: u32,
        grace: Duration,
    ) -> Result<Option<u32>, RuntimeError> {
        let Some(state) = self.task(id).await? else {
            return Ok(None);
        };
        if state.running {
            self.kill(id, signal).await?;
            if tokio::time::timeout(grace, self.wait(id)).await.is_err() {
                tracing::info!(
                    container = id,
                    ?grace,
                    signal,
                    "did not stop after its stop signal; sending SIGKILL"
                );
                self.kill(id, SIGKILL).await?;
                // SIGKILL cannot be ignored; the bound only guards against a wedged shim.
                let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id)).await;
            }
        }
        self.delete_task(id).await
    }

    /// Deletes the task (if any), the container record and its snapshot. Idempotent.
    pub async fn delete_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.delete_task(id).await?;
        match ContainersClient::new(self.channel.clone())
            .delete(self.request(DeleteContainerRequest { id: id.into() }))
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(self.call_error("delete container", id, &status)),
        }
        self.remove_snapshot(id).await
    }

    async fn remove_snapshot(&self, key: &str) -> Result<(), RuntimeError> {
        match SnapshotsClient::new(self.channel.clone())
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(self.call_error("remove snapshot", key, &status)),
        }
    }

    /// Deletes a stopped task; kills it first if it still runs. Returns its exit status.
    async fn delete_task(&self, id: &str) -> Result<Option<u32>, RuntimeError> {
        let Some(state) = self.task(id).await? else {
            return Ok(None);
        };
        if state.running {
            self.kill(id, SIGKILL).await?;
            let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(id)).await;
        }
        match TasksClient::new(self.channel.clone())
            .delete(self.request(DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await
        {
            Ok(reply) => Ok(Some(reply.into_inner().exit_status)),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(self.call_error("delete task", id, &status)),
        }
    }

    pub async fn task(&self, id: &str) -> Result<Option<TaskState>, RuntimeError> {
        match TasksClient::new(self.channel.clone())
            .get(self.request(GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(reply) => Ok(reply.into_inner().process.map(|p| TaskState {
                pid: p.pid,
                // A task that was created but never started (the agent died in between) does
                // not count: it runs nothing.
                running: matches!(
                    Status::try_from(p.status),
                    Ok(Status::Running | Status::Pausing | Status::Paused)
                ),
                exit_status: p.exit_status,
            })),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(self.call_error("get task", id, &status)),
        }
    }

    async fn kill(&self, id: &str, signal: u32) -> Result<(), RuntimeError> {
        match TasksClient::new(self.channel.clone())
            .kill(self.request(KillRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal,
                all: true,
            }))
            .await
        {
            Ok(_) => Ok(()),
            // Already gone.
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => {
                Ok(())
            }
            Err(status) => Err(self.call_error("signal task", id, &status)),
        }
    }

    /// Returns when the task has exited (immediately if it already has).
    async fn wait(&self, id: &str) -> Result<u32, RuntimeError> {
        TasksClient::new(self.channel.clone())
            .wait(self.request(WaitRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map(|reply| reply.into_inner().exit_status)
            .map_err(|status| self.call_error("wait for task", id, &status))
    }

    /// Every container in the namespace that carries Hivemind's app label, with its task.
    pub async fn list_containers(&self) -> Result<Vec<ListedContainer>, RuntimeError> {
        let containers = ContainersClient::new(self.channel.clone())
            .list(self.request(ListContainersRequest {
                filters: vec![format!("labels.\"{}\"", labels::APP)],
            }))
            .await
            .map_err(|status| self.call_error("list containers", "", &status))?
            .into_inner()
            .containers;
        let mut listed = Vec::with_capacity(containers.len());
        for container in containers {
            let task = self.task(&container.id).await?;
            listed.push(ListedContainer {
                id: container.id,
                labels: container.labels,
                task,
            });
        }
        Ok(listed)
    }

    /// Task exits in this namespace, as they happen. The stream ends if containerd goes away;
    /// callers resubscribe (and resync, since exits may have been missed meanwhile).
    pub async fn task_exits(
        &self,
    ) -> Result<impl tokio_stream::Stream<Item = TaskExit> + Send + 'static, RuntimeError> {
        let stream = EventsClient::new(self.channel.clone())
            .subscribe(SubscribeRequest {
                filters: vec![format!(
                    "topic==\"/tasks/exit\",namespace==\"{}\"",
                    self.namespace
                )],
            })
            .await
            .map_err(|status| self.call_error("subscribe to events", "", &status))?
            .into_inner();
        Ok(stream.map_while(Result::ok).filter_map(|envelope| {
            let event = envelope.event?;
            let exit = containerd_client::events::TaskExit::decode(event.value.as_slice()).ok()?;
            // Exec'd processes (health checks) exit too; only the init process matters here.
            (exit.id == exit.container_id || exit.id.is_empty()).then_some(TaskExit {
                container_id: exit.container_id,
                pid: exit.pid,
                exit_status: exit.exit_status,
            })
        }))
    }
}
