//! Apps: deploy, list, get, scale, restart, remove.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{AgentService, convert};
use crate::{
    api::{
        error::{ApiError, ErrorKind},
        progress::Progress,
    },
    model::{AppSpec, ContainerRecord, ContainerState, now_ms},
    proto,
    reconcile::{
        process,
        rollout::{Phase, Rollout, RolloutKind},
    },
    runtime::image::ImageRef,
    validate,
};

/// How long a deploy, scale or removal waits for the containers to get there.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a rollout's progress is looked at (and a reconcile pass run).
const ROLLOUT_POLL: Duration = Duration::from_millis(250);
const MAX_ROLLOUT_TIMEOUT_MS: u64 = 3_600_000;
const DEFAULT_STOP_TIMEOUT_SECS: u32 = 10;
const MAX_STOP_TIMEOUT_SECS: u32 = 3600;

impl AgentService {
    /// Validates, pulls, stores and starts. A new app that fails to start is removed again; an
    /// update rolls out (see [`crate::reconcile::rollout`]) and is rolled back to the previous
    /// settings if its new replicas do not become healthy.
    pub async fn deploy(
        &self,
        request: proto::DeployRequest,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<proto::DeployResult, ApiError> {
        let parts = self.parts();
        let mut spec = validate_deploy(&request)?;
        rollout_timeout(&request.rollout_timeout)?;
        let change = self.inner.locks.app(&spec.name).await;

        let existing = parts.state.app(&spec.name).await?;
        if let Some((current, _)) = &existing
            && !request.update
        {
            return Err(ApiError::conflict(format!(
                "app {} already exists (image {}, {} replicas); to change its image or settings, deploy again with --update",
                current.name, current.image, current.replicas
            )));
        }
        if existing.is_some() {
            // An update changes what the deploy gives and keeps the rest (`app update`).
            drop(change);
            return self
                .update(super::update::from_deploy(&request), progress)
                .await;
        }
        // What the store can refuse, before the registry is asked for anything; asked again
        // under the node's lock once the image is here (another app may have taken a port).
        self.check_fits(&spec).await?;
        let image = self
            .pull(&spec.image, request.force_pull, progress.as_ref())
            .await?;
        spec.image.clone_from(&image.name);
        self.check_image_settings(&mut spec, &image).await?;

        spec.generation = 1;
        {
            let _node = self.inner.locks.node().await;
            self.check_fits(&spec).await?;
            if !parts.state.create_app(&spec).await? {
                return Err(ApiError::conflict(format!(
                    "app {} was created concurrently",
                    spec.name
                )));
            }
            // Claimed now (not by the balancer a moment later) so the deploy's answer and the
            // first `app ls` show it; a full service CIDR fails the deploy cleanly.
            if let Err(err) = parts.vips.ensure(&spec.name).await {
                let _ = parts.state.delete_app(&spec.name).await;
                return Err(ApiError::new(ErrorKind::Unavailable, err.to_string()));
            }
        }
        match self.converge_app(&spec, generation_done(&spec)).await {
            Ok(records) => {
                let mut ids: Vec<&ContainerRecord> = records.iter().collect();
                ids.sort_by_key(|r| r.slot);
                let container_ids: Vec<String> = ids.iter().map(|r| r.id.clone()).collect();
                let first = container_ids.first().cloned().unwrap_or_default();
                let message = match container_ids.len() {
                    0 => format!("Deployed application {} with 0 replicas", spec.name),
                    1 => format!("Deployed application {} with container {first}", spec.name),
                    n => format!(
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
                self.undo_create(&spec).await;
                Err(failure)
            }
        }
    }

    /// Pulls `image` (if needed), reporting progress.
    pub(super) async fn pull(
        &self,
        image: &str,
        force: bool,
        progress: Option<&mpsc::Sender<Progress>>,
    ) -> Result<crate::runtime::image::PulledImage, ApiError> {
        let (pull, forwarder) = match progress.cloned() {
            Some(events) => {
                let (pull, mut updates) = mpsc::channel(64);
                let forwarder = tokio::spawn(async move {
                    while let Some(update) = updates.recv().await {
                        if events.send(Progress::Pull(update)).await.is_err() {
                            break;
                        }
                    }
                });
                (Some(pull), Some(forwarder))
            }
            None => (None, None),
        };
        let image = self.parts().runtime.ensure_image(image, force, pull).await;
        if let Some(forwarder) = forwarder {
            let _ = forwarder.await; // the pull's messages before the rollout's
        }
        Ok(image?)
    }

    /// Takes the image's `HEALTHCHECK` into the spec (unless one is given or checks are off)
    /// and makes sure the image and the settings make a process — its user exists in the
    /// image, it has a command — before anything is stored or made.
    pub(super) async fn check_image_settings(
        &self,
        spec: &mut AppSpec,
        image: &crate::runtime::image::PulledImage,
    ) -> Result<(), ApiError> {
        let invalid = |err: process::ProcessError| ApiError::invalid(err.to_string());
        process::adopt_image_settings(spec, &image.name, &image.config).map_err(invalid)?;
        let accounts = self.parts().runtime.image_accounts(&image.chain_id).await?;
        process::process(spec, &image.name, &image.config, &accounts, &spec.name)
            .map(drop)
            .map_err(invalid)
    }

    /// Removes a new app that failed to start, with whatever containers it got.
    async fn undo_create(&self, spec: &AppSpec) {
        if let Err(err) = self.parts().state.delete_app(&spec.name).await {
            tracing::error!(app = %spec.name, "undoing a failed deploy: {err}");
            return;
        }
        if let Err(err) = self.converge_app(spec, <[ContainerRecord]>::is_empty).await {
            tracing::warn!(app = %spec.name, "cleaning up after a failed deploy: {err}");
        }
        if let Err(err) = self.parts().vips.release(&spec.name).await {
            tracing::warn!(app = %spec.name, "releasing the VIP of a failed deploy: {err}");
        }
    }

    pub async fn apps(&self) -> Result<proto::ListAppsReply, ApiError> {
        let parts = self.parts();
        let apps = parts.state.apps().await?;
        let records = parts.state.containers().await?;
        let table = parts.services.table();
        let rollouts = parts.state.rollouts().await?;
        let vips = parts.vips.all().await?;
        Ok(proto::ListAppsReply {
            apps: apps
                .iter()
                .map(|app| {
                    let mine: Vec<&ContainerRecord> =
                        records.iter().filter(|r| r.app == app.name).collect();
                    let mut info = convert::app(app, &mine);
                    convert::add_service(&mut info, table.service(&app.name));
                    if let Some((rollout, _)) = rollouts.iter().find(|(r, _)| r.app == app.name) {
                        info.rollout = rollout.summary(app.replicas);
                    }
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
        convert::add_service(&mut info, parts.services.table().service(&app.name));
        if let Some((rollout, _)) = parts.state.rollout(name).await? {
            info.rollout = rollout.summary(app.replicas);
        }
        convert::set_vip(&mut info, parts.vips.of(&app.name).await?);
        Ok(info)
    }

    /// The app's whole spec (`app inspect`).
    pub async fn inspect(&self, name: &str) -> Result<proto::AppSpecInfo, ApiError> {
        let (app, _) = self.existing_app(name).await?;
        Ok(convert::spec_info(&app))
    }

    pub async fn scale(&self, name: &str, replicas: i64) -> Result<proto::ActionReply, ApiError> {
        let replicas = validate::replicas(replicas)?;
        let _change = self.inner.locks.app(name).await;
        let (mut app, revision) = self.existing_app(name).await?;
        self.check_no_rollout(name).await?;
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

    /// Replaces every replica with a new container, `parallel` slots at a time, each new one
    /// ready before the one it replaces stops (a rollout; rolled back if they do not become
    /// healthy).
    pub async fn restart(
        &self,
        request: &proto::RestartRequest,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<proto::DeployResult, ApiError> {
        let name = &request.name;
        let deadline_ms = rollout_timeout(&request.rollout_timeout)?;
        validate::parallel(request.parallel)?;
        let change = self.inner.locks.app(name).await;
        let (mut app, revision) = self.existing_app(name).await?;
        self.check_no_rollout(name).await?;
        let previous = app.clone();
        app.generation += 1;
        app.updated_at_ms = now_ms();
        let rollout = Rollout::new(
            RolloutKind::Restart,
            previous,
            &app,
            request.parallel,
            deadline_ms,
        );
        self.begin_rollout(&app, revision, &rollout).await?;
        drop(change);
        self.follow_rollout(&app, progress.as_ref()).await?;
        let records = self.current_records(&app).await?;
        let container_ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        Ok(proto::DeployResult {
            app: name.clone(),
            container_id: container_ids.first().cloned().unwrap_or_default(),
            message: format!(
                "Restarted {name}: {} replicas replaced ({})",
                container_ids.len(),
                container_ids.join(", ")
            ),
            container_ids,
        })
    }

    /// Refuses a change while a rollout of the app is under way.
    pub(super) async fn check_no_rollout(&self, name: &str) -> Result<(), ApiError> {
        if let Some((rollout, _)) = self.parts().state.rollout(name).await?
            && rollout.phase.is_active()
        {
            let replicas = rollout.previous.replicas;
            return Err(ApiError::conflict(format!(
                "app {name} has a rollout in progress ({}, started {}s ago); wait for it to finish (see `hivemind app ls`)",
                rollout.summary(replicas),
                now_ms().saturating_sub(rollout.started_at_ms) / 1000
            )));
        }
        Ok(())
    }

    /// Stores the new spec and its rollout together.
    pub(super) async fn begin_rollout(
        &self,
        spec: &AppSpec,
        revision: u64,
        rollout: &Rollout,
    ) -> Result<(), ApiError> {
        let state = &self.parts().state;
        let rollout_revision = state.rollout(&spec.name).await?.map_or(0, |(_, rev)| rev);
        if state
            .begin_rollout(spec, revision, rollout, rollout_revision)
            .await?
        {
            Ok(())
        } else {
            Err(ApiError::conflict(format!(
                "app {} changed concurrently; try again",
                spec.name
            )))
        }
    }

    /// Drives reconcile passes until the rollout of `spec` finishes, streaming its steps. A
    /// rolled-back rollout is an error saying why.
    pub(super) async fn follow_rollout(
        &self,
        spec: &AppSpec,
        progress: Option<&mpsc::Sender<Progress>>,
    ) -> Result<Rollout, ApiError> {
        let parts = self.parts();
        let mut sent = 0;
        let mut client_gone = progress.is_none();
        let mut last_error = String::new();
        loop {
            match parts.reconciler.converge().await {
                Err(crate::reconcile::ReconcileError::Stopped) => {
                    return Err(crate::reconcile::ReconcileError::Stopped.into());
                }
                Err(err) => last_error = crate::error_chain(&err),
                Ok(_) => {}
            }
            let Some((rollout, _)) = parts.state.rollout(&spec.name).await? else {
                return Err(ApiError::conflict(format!(
                    "app {} was removed during its rollout",
                    spec.name
                )));
            };
            if rollout.generation != spec.generation {
                return Err(ApiError::conflict(format!(
                    "another rollout of {} replaced this one",
                    spec.name
                )));
            }
            let fresh: Vec<_> = rollout.events.iter().filter(|e| e.seq > sent).collect();
            for event in fresh {
                sent = event.seq;
                if let Some(progress) = progress
                    && !client_gone
                {
                    client_gone = progress
                        .send(Progress::Rollout(event.message.clone()))
                        .await
                        .is_err();
                }
            }
            match rollout.phase {
                Phase::Done => return Ok(rollout),
                Phase::RolledBack => {
                    return Err(ApiError::new(
                        ErrorKind::Aborted,
                        format!(
                            "{} of {} failed and was rolled back: {}. The previous spec (image {}, generation {}) is restored and its replicas keep serving.",
                            rollout.kind.as_str(),
                            spec.name,
                            rollout.reason,
                            rollout.previous.image,
                            rollout.previous.generation
                        ),
                    ));
                }
                Phase::Rolling | Phase::RollingBack => {}
            }
            if !last_error.is_empty() {
                tracing::debug!(app = %spec.name, "rollout pass: {last_error}");
            }
            tokio::time::sleep(ROLLOUT_POLL).await;
        }
    }

    /// The app's current-generation containers, by slot.
    pub(super) async fn current_records(
        &self,
        spec: &AppSpec,
    ) -> Result<Vec<ContainerRecord>, ApiError> {
        let mut records: Vec<ContainerRecord> = self
            .app_records(&spec.name)
            .await?
            .into_iter()
            .filter(|r| r.generation == spec.generation && r.state != ContainerState::Stopping)
            .collect();
        records.sort_by_key(|r| r.slot);
        Ok(records)
    }

    /// Stops and removes every container, then forgets the app. Its volumes are kept.
    pub async fn remove_app(&self, name: &str) -> Result<proto::ActionReply, ApiError> {
        let _change = self.inner.locks.app(name).await;
        let (app, _) = self.existing_app(name).await?;
        let before = self.app_records(name).await?.len();
        self.parts().state.delete_app(name).await?;
        self.parts().state.delete_rollout(name).await?;
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
    pub(super) async fn converge_app(
        &self,
        app: &AppSpec,
        done: impl Fn(&[ContainerRecord]) -> bool,
    ) -> Result<Vec<ContainerRecord>, ApiError> {
        let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
        loop {
            match self.parts().reconciler.converge().await {
                Ok(report) => {
                    if let Some((_, err)) = report
                        .failures
                        .into_iter()
                        .find(|(name, _)| *name == app.name)
                    {
                        return Err(err.into());
                    }
                }
                // The store or containerd is away for a moment (an etcd election, a containerd
                // restart): the change is already stored, so keep waiting for it.
                Err(err) if err.is_unavailable() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(app = %app.name, "waiting to converge: {}", crate::error_chain(&err));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Err(err) => return Err(err.into()),
            }
            let mut records = self.app_records(&app.name).await?;
            // A node that stopped reporting cannot finish anything; its slots move elsewhere.
            let lost = self.lost_nodes().await?;
            records.retain(|r| !lost.contains(&r.node));
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

    /// Everything the spec refers to or takes that other apps and the store decide: its
    /// volumes and secrets exist, its host ports and service name are free.
    pub(super) async fn check_fits(&self, spec: &AppSpec) -> Result<(), ApiError> {
        self.check_volumes_exist(spec).await?;
        self.check_secrets_exist(spec).await?;
        self.check_no_clash(spec).await
    }

    pub(super) async fn check_volumes_exist(&self, spec: &AppSpec) -> Result<(), ApiError> {
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

    pub(super) async fn check_secrets_exist(&self, spec: &AppSpec) -> Result<(), ApiError> {
        for mount in &spec.secrets {
            if self.parts().state.secret(&mount.secret).await?.is_none() {
                return Err(ApiError::invalid(format!(
                    "secret {} does not exist; create it first with `hivemind secret create {}`",
                    mount.secret, mount.secret
                )));
            }
        }
        Ok(())
    }

    /// Host ports and service names belong to one app each.
    pub(super) async fn check_no_clash(&self, spec: &AppSpec) -> Result<(), ApiError> {
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
        }
        // Service names (`<app>.<suffix>` and domains) are one app's each, cluster-wide.
        let others = self.parts().state.apps().await?;
        let suffix = self.parts().services.table().suffix().to_owned();
        if let Some(clash) = crate::service::records::name_clash(spec, &others, &suffix) {
            return Err(ApiError::conflict(clash));
        }
        Ok(())
    }
}

/// True when every slot has a running container of the app's generation and nothing else
/// is left.
pub(super) fn generation_done(app: &AppSpec) -> impl Fn(&[ContainerRecord]) -> bool + use<> {
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

/// `--rollout-timeout`: absent (the default deadline) or 1s to 1h.
pub(super) fn rollout_timeout(value: &str) -> Result<Option<u64>, ApiError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    let ms = validate::duration("rollout timeout", value)?;
    if !(1000..=MAX_ROLLOUT_TIMEOUT_MS).contains(&ms) {
        return Err(ApiError::invalid(format!(
            "invalid rollout timeout {value:?}: expected 1s to 1h"
        )));
    }
    Ok(Some(ms))
}

/// `--stop-timeout`: at most an hour.
pub(super) fn stop_timeout(secs: u32) -> Result<u32, ApiError> {
    if secs > MAX_STOP_TIMEOUT_SECS {
        return Err(ApiError::invalid(format!(
            "invalid stop timeout {secs}s: at most {MAX_STOP_TIMEOUT_SECS}s"
        )));
    }
    Ok(secs)
}

/// Everything about a deploy request that can be checked without side effects.
pub(super) fn validate_deploy(request: &proto::DeployRequest) -> Result<AppSpec, ApiError> {
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
    validate::parallel(request.parallel)?;
    let memory_bytes = (!request.memory.is_empty())
        .then(|| validate::memory(&request.memory))
        .transpose()?;
    let cpu_millis = (!request.cpus.is_empty())
        .then(|| validate::cpus(&request.cpus))
        .transpose()?;
    let stop_timeout_secs = stop_timeout(
        request
            .stop_timeout_secs
            .unwrap_or(DEFAULT_STOP_TIMEOUT_SECS),
    )?;
    let health = validate::health(&validate::HealthInput {
        cmd: &request.health_cmd,
        http: &request.health_http,
        tcp: request.health_tcp,
        interval: &request.health_interval,
        timeout: &request.health_timeout,
        retries: request.health_retries,
        start_period: &request.health_start_period,
    })?;
    if request.no_healthcheck && health.is_some() {
        return Err(ApiError::invalid(
            "--no-healthcheck and a --health-* check exclude each other",
        ));
    }
    let optional = |value: &str| (!value.trim().is_empty()).then(|| value.trim().to_owned());
    let now = now_ms();
    Ok(AppSpec {
        name: request.name.clone(),
        image: request.image.trim().to_owned(),
        service,
        replicas,
        env: validate::env(&request.env)?,
        ports: validate::ports(&request.ports)?,
        volumes: validate::volumes(&request.volumes)?,
        secrets: validate::secrets(&request.secrets)?,
        labels: validate::labels(&request.labels)?,
        memory_bytes,
        cpu_millis,
        stop_timeout_secs,
        health,
        health_from_image: false,
        no_healthcheck: request.no_healthcheck,
        user: optional(&request.user)
            .map(|u| validate::user(&u))
            .transpose()?,
        workdir: optional(&request.workdir)
            .map(|w| validate::workdir(&w))
            .transpose()?,
        entrypoint: request
            .entrypoint
            .as_deref()
            .map(validate::entrypoint)
            .transpose()?,
        command: (!request.command.is_empty()).then(|| request.command.clone()),
        stop_signal: optional(&request.stop_signal)
            .map(|s| validate::signal(&s))
            .transpose()?,
        generation: 0,
        created_at_ms: now,
        updated_at_ms: now,
    })
}
