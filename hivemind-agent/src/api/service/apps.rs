//! Apps: deploy, list, get, scale, restart, remove.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{AgentService, convert};
use crate::{
    api::error::{ApiError, ErrorKind},
    model::{AppSpec, ContainerRecord, ContainerState, now_ms},
    proto,
    runtime::image::{ImageRef, PullProgress},
    validate,
};

/// How long a deploy, scale, restart or removal waits for the containers to get there.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_STOP_TIMEOUT_SECS: u32 = 10;
const MAX_STOP_TIMEOUT_SECS: u32 = 3600;

impl AgentService {
    /// Validates, pulls, stores and starts. A new app that fails to start is removed again; an
    /// update that fails is rolled back to the previous settings.
    pub async fn deploy(
        &self,
        request: proto::DeployRequest,
        progress: Option<mpsc::Sender<PullProgress>>,
    ) -> Result<proto::DeployResult, ApiError> {
        let parts = self.parts();
        let mut spec = validate_deploy(&request)?;
        let _change = self.inner.changes.lock().await;

        let existing = parts.state.app(&spec.name).await?;
        if let Some((current, _)) = &existing
            && !request.update
        {
            return Err(ApiError::conflict(format!(
                "app {} already exists (image {}, {} replicas); to change its image or settings, deploy again with --update",
                current.name, current.image, current.replicas
            )));
        }
        self.check_volumes_exist(&spec).await?;
        self.check_no_clash(&spec).await?;

        let image = parts
            .runtime
            .ensure_image(&spec.image, request.force_pull, progress)
            .await?;
        spec.image = image.name.clone();

        let previous = match existing {
            None => {
                spec.generation = 1;
                if !parts.state.create_app(&spec).await? {
                    return Err(ApiError::conflict(format!(
                        "app {} was created concurrently",
                        spec.name
                    )));
                }
                // Claimed now (not by the balancer a moment later) so the deploy's answer and
                // the first `app ls` show it; a full service CIDR fails the deploy cleanly.
                if let Err(err) = parts.vips.ensure(&spec.name).await {
                    let _ = parts.state.delete_app(&spec.name).await;
                    return Err(ApiError::new(ErrorKind::Unavailable, err.to_string()));
                }
                None
            }
            Some((current, revision)) => {
                spec.generation = current.generation + 1;
                spec.created_at_ms = current.created_at_ms;
                if request.replicas.is_none() {
                    spec.replicas = current.replicas;
                }
                if !parts.state.update_app(&spec, revision).await? {
                    return Err(ApiError::conflict(format!(
                        "app {} changed concurrently; try again",
                        spec.name
                    )));
                }
                Some(current)
            }
        };

        match self.converge_app(&spec, generation_done(&spec)).await {
            Ok(records) => {
                let mut ids: Vec<&ContainerRecord> = records.iter().collect();
                ids.sort_by_key(|r| r.slot);
                let container_ids: Vec<String> = ids.iter().map(|r| r.id.clone()).collect();
                let first = container_ids.first().cloned().unwrap_or_default();
                let message = match (&previous, container_ids.len()) {
                    (Some(_), _) => format!(
                        "Updated application {} to {} ({} containers)",
                        spec.name,
                        spec.image,
                        container_ids.len()
                    ),
                    (None, 0) => format!("Deployed application {} with 0 replicas", spec.name),
                    (None, 1) => {
                        format!("Deployed application {} with container {first}", spec.name)
                    }
                    (None, n) => format!(
                        "Deployed application {} with {n} containers: {}",
                        spec.name,
                        container_ids.join(", ")
                    ),
                };
                Ok(proto::DeployResult {
                    app: spec.name,
                    container_id: first,
                    container_ids,
                    message,
                })
            }
            Err(failure) => {
                self.undo_deploy(&spec, previous).await;
                Err(failure)
            }
        }
    }

    /// Removes a new app that failed, or restores the previous settings of an updated one.
    async fn undo_deploy(&self, spec: &AppSpec, previous: Option<AppSpec>) {
        let parts = self.parts();
        let result = match previous {
            None => parts.state.delete_app(&spec.name).await.map(|_| ()),
            Some(mut previous) => {
                // Back to the old generation: its containers (still running where the rollout
                // had not replaced them) match again; the new ones are removed.
                previous.updated_at_ms = now_ms();
                match parts.state.app(&spec.name).await {
                    Ok(Some((_, revision))) => parts
                        .state
                        .update_app(&previous, revision)
                        .await
                        .map(|_| ()),
                    Ok(None) => Ok(()),
                    Err(err) => Err(err),
                }
            }
        };
        if let Err(err) = result {
            tracing::error!(app = %spec.name, "undoing a failed deploy: {err}");
            return;
        }
        let undo =
            |records: &[ContainerRecord]| records.iter().all(|r| r.generation != spec.generation);
        if let Err(err) = self.converge_app(spec, undo).await {
            tracing::warn!(app = %spec.name, "cleaning up after a failed deploy: {err}");
        }
    }

    pub async fn apps(&self) -> Result<proto::ListAppsReply, ApiError> {
        let parts = self.parts();
        let apps = parts.state.apps().await?;
        let records = parts.state.containers().await?;
        let vips = parts.vips.all().await?;
        Ok(proto::ListAppsReply {
            apps: apps
                .iter()
                .map(|app| {
                    let mine: Vec<&ContainerRecord> =
                        records.iter().filter(|r| r.app == app.name).collect();
                    let mut info = convert::app(app, &mine);
                    convert::set_vip(&mut info, vips.get(&app.name).copied());
                    info
                })
                .collect(),
        })
    }

    pub async fn app(&self, name: &str) -> Result<proto::AppInfo, ApiError> {
        let parts = self.parts();
        let (app, _) = self.existing_app(name).await?;
        let records = parts.state.containers().await?;
        let mine: Vec<&ContainerRecord> = records.iter().filter(|r| r.app == app.name).collect();
        let mut info = convert::app(&app, &mine);
        convert::set_vip(&mut info, parts.vips.of(&app.name).await?);
        Ok(info)
    }

    pub async fn scale(&self, name: &str, replicas: i64) -> Result<proto::ActionReply, ApiError> {
        let replicas = validate::replicas(replicas)?;
        let _change = self.inner.changes.lock().await;
        let (mut app, revision) = self.existing_app(name).await?;
        let before = app.replicas;
        app.replicas = replicas;
        app.updated_at_ms = now_ms();
        if !self.parts().state.update_app(&app, revision).await? {
            return Err(ApiError::conflict(format!(
                "app {name} changed concurrently; try again"
            )));
        }
        self.converge_app(&app, generation_done(&app)).await?;
        Ok(proto::ActionReply {
            message: format!("Scaled {name} from {before} to {replicas} replicas"),
        })
    }

    /// Replaces every replica with a new container, one slot at a time (each replacement
    /// starts before the container it replaces stops).
    pub async fn restart(&self, name: &str) -> Result<proto::ActionReply, ApiError> {
        let _change = self.inner.changes.lock().await;
        let (mut app, revision) = self.existing_app(name).await?;
        app.generation += 1;
        app.updated_at_ms = now_ms();
        if !self.parts().state.update_app(&app, revision).await? {
            return Err(ApiError::conflict(format!(
                "app {name} changed concurrently; try again"
            )));
        }
        let records = self.converge_app(&app, generation_done(&app)).await?;
        Ok(proto::ActionReply {
            message: format!("Restarted {name}: {} containers replaced", records.len()),
        })
    }

    /// Stops and removes every container, then forgets the app. Its volumes are kept.
    pub async fn remove_app(&self, name: &str) -> Result<proto::ActionReply, ApiError> {
        let _change = self.inner.changes.lock().await;
        let (app, _) = self.existing_app(name).await?;
        let before = self.app_records(name).await?.len();
        self.parts().state.delete_app(name).await?;
        self.converge_app(&app, <[ContainerRecord]>::is_empty)
            .await?;
        Ok(proto::ActionReply {
            message: format!("Removed {name} ({before} containers stopped; volumes kept)"),
        })
    }

    pub(super) async fn existing_app(&self, name: &str) -> Result<(AppSpec, u64), ApiError> {
        validate::name("app name", name)?;
        self.parts()
            .state
            .app(name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no app named {name}")))
    }

    async fn app_records(&self, app: &str) -> Result<Vec<ContainerRecord>, ApiError> {
        Ok(self
            .parts()
            .state
            .containers()
            .await?
            .into_iter()
            .filter(|r| r.app == app)
            .collect())
    }

    /// Runs reconcile passes until `done` holds for the app's records. Fails with the
    /// reconciler's message if a container of this app cannot be created or started.
    async fn converge_app(
        &self,
        app: &AppSpec,
        done: impl Fn(&[ContainerRecord]) -> bool,
    ) -> Result<Vec<ContainerRecord>, ApiError> {
        let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let report = self.parts().reconciler.converge().await?;
            if let Some((_, err)) = report
                .failures
                .into_iter()
                .find(|(name, _)| *name == app.name)
            {
                return Err(err.into());
            }
            let records = self.app_records(&app.name).await?;
            if done(&records) {
                return Ok(records);
            }
            if tokio::time::Instant::now() >= deadline {
                let states: Vec<String> = records
                    .iter()
                    .map(|r| format!("{} {}", r.id, r.state.as_str()))
                    .collect();
                return Err(ApiError::new(
                    ErrorKind::Internal,
                    format!(
                        "app {} did not converge within {CONVERGE_TIMEOUT:?}: {}",
                        app.name,
                        states.join(", ")
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check_volumes_exist(&self, spec: &AppSpec) -> Result<(), ApiError> {
        for mount in &spec.volumes {
            if self.parts().state.volume(&mount.volume).await?.is_none() {
                return Err(ApiError::invalid(format!(
                    "volume {} does not exist; create it first with `hivemind volume create {}`",
                    mount.volume, mount.volume
                )));
            }
        }
        Ok(())
    }

    /// Host ports and service domains belong to one app each.
    async fn check_no_clash(&self, spec: &AppSpec) -> Result<(), ApiError> {
        for other in self.parts().state.apps().await? {
            if other.name == spec.name {
                continue;
            }
            if let Some(port) = spec.ports.iter().find(|p| {
                other
                    .ports
                    .iter()
                    .any(|o| o.host == p.host && o.protocol == p.protocol)
            }) {
                return Err(ApiError::conflict(format!(
                    "host port {}/{} is already published by app {}",
                    port.host,
                    port.protocol.as_str(),
                    other.name
                )));
            }
            if spec.service.is_some() && spec.service == other.service {
                return Err(ApiError::conflict(format!(
                    "service domain {} is already taken by app {}",
                    spec.service.as_deref().unwrap_or_default(),
                    other.name
                )));
            }
        }
        Ok(())
    }
}

/// True when every slot has a running container of the app's generation and nothing else
/// is left.
fn generation_done(app: &AppSpec) -> impl Fn(&[ContainerRecord]) -> bool + use<> {
    let generation = app.generation;
    let replicas = app.replicas;
    move |records: &[ContainerRecord]| {
        let running_current = records
            .iter()
            .filter(|r| {
                r.generation == generation
                    && r.state == ContainerState::Running
                    && r.slot < replicas
            })
            .count();
        running_current == replicas as usize && records.len() == replicas as usize
    }
}

/// Everything about a deploy request that can be checked without side effects.
fn validate_deploy(request: &proto::DeployRequest) -> Result<AppSpec, ApiError> {
    validate::name("app name", &request.name)?;
    if request.image.trim().is_empty() {
        return Err(ApiError::invalid(
            "an image is required, e.g. registry.example.com/team/app:1.2",
        ));
    }
    ImageRef::parse(&request.image).map_err(|err| ApiError::invalid(err.to_string()))?;
    let service = if request.service.is_empty() {
        None
    } else {
        validate::domain(&request.service)?;
        Some(request.service.clone())
    };
    let replicas = validate::replicas(request.replicas.unwrap_or(1))?;
    let memory_bytes = (!request.memory.is_empty())
        .then(|| validate::memory(&request.memory))
        .transpose()?;
    let cpu_millis = (!request.cpus.is_empty())
        .then(|| validate::cpus(&request.cpus))
        .transpose()?;
    let stop_timeout_secs = request
        .stop_timeout_secs
        .unwrap_or(DEFAULT_STOP_TIMEOUT_SECS);
    if stop_timeout_secs > MAX_STOP_TIMEOUT_SECS {
        return Err(ApiError::invalid(format!(
            "invalid stop timeout {stop_timeout_secs}s: at most {MAX_STOP_TIMEOUT_SECS}s"
        )));
    }
    let now = now_ms();
    Ok(AppSpec {
        name: request.name.clone(),
        image: request.image.trim().to_owned(),
        service,
        replicas,
        env: validate::env(&request.env)?,
        ports: validate::ports(&request.ports)?,
        volumes: validate::volumes(&request.volumes)?,
        labels: validate::labels(&request.labels)?,
        memory_bytes,
        cpu_millis,
        stop_timeout_secs,
        health: validate::health(&validate::HealthInput {
            cmd: &request.health_cmd,
            http: &request.health_http,
            tcp: request.health_tcp,
            interval: &request.health_interval,
            timeout: &request.health_timeout,
            retries: request.health_retries,
            start_period: &request.health_start_period,
        })?,
        generation: 0,
        created_at_ms: now,
        updated_at_ms: now,
    })
}
