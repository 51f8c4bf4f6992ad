//! Running a command inside a running container (health checks), like `ctr task exec`;
//! [`super::exec_attached`] runs one with its stdio attached to a caller.

use std::{path::Path, time::Duration};

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest,
    WaitRequest, containers_client::ContainersClient, tasks_client::TasksClient,
};

use super::{Runtime, RuntimeError};

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const SIGKILL: u32 = 9;

/// How an exec'd process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    Exited(u32),
    TimedOut,
}

impl Runtime {
    /// Runs `args` in container `id` with the container's own user, environment, working
    /// directory and capabilities; output goes to `output`. Killed after `timeout`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        args: &[String],
        timeout: Duration,
        output: &Path,
    ) -> Result<ExecOutcome, RuntimeError> {
        let mut process = self.container_process(id).await?;
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(false);

        let mut tasks = TasksClient::new(self.channel.clone());
        let out = format!("file://{}", output.display());
        tasks
            .exec(self.request(ExecProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                stdout: out.clone(),
                stderr: out,
                terminal: false,
                spec: Some(process_any(&process)),
                ..ExecProcessRequest::default()
            }))
            .await
            .map_err(|status| self.call_error("exec in", id, &status))?;
        let outcome = async {
            self.start_exec(id, exec_id).await?;
            let mut waiter = tasks.clone();
            let wait = waiter.wait(self.request(WaitRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }));
            match tokio::time::timeout(timeout, wait).await {
                Ok(Ok(reply)) => Ok(ExecOutcome::Exited(reply.into_inner().exit_status)),
                Ok(Err(status)) => Err(self.call_error("wait for an exec in", id, &status)),
                Err(_) => {
                    self.kill_exec(id, exec_id).await;
                    Ok(ExecOutcome::TimedOut)
                }
            }
        }
        .await;
        // The process record goes either way.
        self.forget_exec(id, exec_id).await;
        outcome
    }

    /// The container's `process` (user, environment, working directory, capabilities), the
    /// base of every process exec'd in it.
    pub(super) async fn container_process(
        &self,
        id: &str,
    ) -> Result<serde_json::Value, RuntimeError> {
        let container = ContainersClient::new(self.channel.clone())
            .get(self.request(GetContainerRequest { id: id.into() }))
            .await
            .map_err(|status| self.call_error("read the spec of", id, &status))?
            .into_inner()
            .container
            .unwrap_or_default();
        let spec: serde_json::Value = container
            .spec
            .and_then(|any| serde_json::from_slice(&any.value).ok())
            .unwrap_or_default();
        Ok(spec
            .get("process")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({ "cwd": "/" })))
    }

    /// Starts an exec'd process containerd has created.
    pub(super) async fn start_exec(&self, id: &str, exec_id: &str) -> Result<(), RuntimeError> {
        TasksClient::new(self.channel.clone())
            .start(self.request(StartRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }))
            .await
            .map(drop)
            .map_err(|status| self.call_error("start an exec in", id, &status))
    }

    /// Kills an exec'd process (best effort: it may have exited already).
    pub(super) async fn kill_exec(&self, id: &str, exec_id: &str) {
        let _ = TasksClient::new(self.channel.clone())
            .kill(self.request(KillRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                signal: SIGKILL,
                all: false,
            }))
            .await;
    }

    /// Deletes an exec's process record (a killed process needs a moment to be reaped).
    pub(super) async fn forget_exec(&self, id: &str, exec_id: &str) {
        let mut tasks = TasksClient::new(self.channel.clone());
        for _ in 0..20 {
            let deleted = tasks
                .delete_process(self.request(DeleteProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                }))
                .await;
            match deleted {
                Ok(_) => return,
                Err(status) if status.code() == tonic::Code::NotFound => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

pub(super) fn process_any(process: &serde_json::Value) -> prost_types::Any {
    prost_types::Any {
        type_url: PROCESS_TYPE_URL.into(),
        value: serde_json::to_vec(process).unwrap_or_default(),
    }
}
