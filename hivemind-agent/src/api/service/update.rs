//! `app update` (and `app deploy --update`, `PATCH /api/apps/{name}`): the `docker service
//! update` model. Only what the request gives changes; everything else is kept. A change that
//! needs new containers rolls out (health-gated, rolled back on failure); one that does not
//! (replicas, labels, published ports, the service domain) is applied in place.
//!
//! [`apply`] and [`changes`] are pure, so every rule is unit-tested.

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use super::AgentService;
use crate::{
    api::{error::ApiError, progress::Progress},
    model::{AppSpec, HealthCheck, PortMapping, Probe, Protocol, SecretMount, VolumeMount, now_ms},
    proto,
    reconcile::rollout::{Rollout, RolloutKind},
    validate::{self, HealthInput},
};

impl AgentService {
    /// Applies `request` to the stored app; see the module comment.
    pub async fn update(
        &self,
        request: proto::UpdateRequest,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<proto::DeployResult, ApiError> {
        let deadline_ms = super::apps::rollout_timeout(&request.rollout_timeout)?;
        validate::parallel(request.parallel)?;
        let change = self.inner.locks.app(&request.name).await;
        let (current, revision) = self.existing_app(&request.name).await?;
        self.check_no_rollout(&current.name).await?;
        let next = apply(&current, &request)?;
        let rollout = RolloutSettings {
            parallel: request.parallel,
            deadline_ms,
            force_pull: request.force_pull,
        };
        self.roll_to(change, current, revision, next, rollout, progress)
            .await
    }

    /// `hivemind apply`: makes the stored app `next` (a whole spec, not a change to it) the
    /// way an update does.
    pub(super) async fn replace_app(
        &self,
        mut next: AppSpec,
        rollout: RolloutSettings,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<proto::DeployResult, ApiError> {
        let change = self.inner.locks.app(&next.name).await;
        let (current, revision) = self.existing_app(&next.name).await?;
        self.check_no_rollout(&current.name).await?;
        next.generation = current.generation;
        next.created_at_ms = current.created_at_ms;
        self.roll_to(change, current, revision, next, rollout, progress)
            .await
    }

    /// From `current` to `next`: in place when no new containers are needed, else a
    /// health-gated rollout. `change` is the app's lock, held until the rollout is recorded.
    async fn roll_to(
        &self,
        change: super::locks::AppChange,
        current: AppSpec,
        revision: u64,
        mut next: AppSpec,
        rollout: RolloutSettings,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<proto::DeployResult, ApiError> {
        // What the store can refuse, before the registry is asked for anything; asked again
        // under the node's lock below, where the change is stored.
        self.check_fits(&next).await?;
        let image = self
            .pull(&next.image, rollout.force_pull, progress.as_ref())
            .await?;
        next.image.clone_from(&image.name);
        self.check_image_settings(&mut next, &image).await?;

        let changed = changes(&current, &next);
        let records = self.current_records(&current).await?;
        if changed.is_empty() {
            return Ok(result(
                &current,
                &records,
                format!("app {} is unchanged", current.name),
            ));
        }
        next.updated_at_ms = now_ms();
        let node = self.inner.locks.node().await;
        self.check_fits(&next).await?;
        if !needs_new_containers(&current, &next) {
            if !self.parts().state.update_app(&next, revision).await? {
                return Err(ApiError::conflict(format!(
                    "app {} changed concurrently; try again",
                    next.name
                )));
            }
            drop((node, change));
            let records = self
                .converge_app(&next, super::apps::generation_done(&next))
                .await?;
            let records: Vec<_> = records.into_iter().collect();
            return Ok(result(
                &next,
                &records,
                format!("Updated application {}: {}", next.name, changed.join(", ")),
            ));
        }
        next.generation = current.generation + 1;
        let rollout = Rollout::new(
            RolloutKind::Update,
            current,
            &next,
            rollout.parallel,
            rollout.deadline_ms,
        );
        self.begin_rollout(&next, revision, &rollout).await?;
        drop((node, change)); // the rollout is recorded: a second one is refused, not queued
        self.follow_rollout(&next, progress.as_ref()).await?;
        let records = self.current_records(&next).await?;
        Ok(result(
            &next,
            &records,
            format!(
                "Updated application {} ({}): {} replicas replaced ({})",
                next.name,
                changed.join(", "),
                records.len(),
                records
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// How an update rolls out (given per update, not stored with the app).
#[derive(Clone, Copy, Debug, Default)]
pub struct RolloutSettings {
    /// Replicas replaced at a time (0 = 1).
    pub parallel: u32,
    /// `--rollout-timeout`, in milliseconds (`None` = from the health check's timing).
    pub deadline_ms: Option<u64>,
    pub force_pull: bool,
}

fn result(
    app: &AppSpec,
    records: &[crate::model::ContainerRecord],
    message: String,
) -> proto::DeployResult {
    let container_ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    proto::DeployResult {
        app: app.name.clone(),
        container_id: container_ids.first().cloned().unwrap_or_default(),
        container_ids,
        message,
    }
}

/// `app deploy --update`: the deploy's settings as an update (lists add, values replace).
pub fn from_deploy(request: &proto::DeployRequest) -> proto::UpdateRequest {
    let given = |value: &str| (!value.trim().is_empty()).then(|| value.to_owned());
    proto::UpdateRequest {
        name: request.name.clone(),
        image: Some(request.image.clone()),
        replicas: request.replicas,
        service: given(&request.service),
        env_add: request.env.clone(),
        port_add: request.ports.clone(),
        volume_add: request.volumes.clone(),
        secret_add: request.secrets.clone(),
        label_add: request.labels.clone(),
        memory: given(&request.memory),
        cpus: given(&request.cpus),
        stop_timeout_secs: request.stop_timeout_secs,
        health_cmd: request.health_cmd.clone(),
        health_http: request.health_http.clone(),
        health_tcp: request.health_tcp,
        health_interval: request.health_interval.clone(),
        health_timeout: request.health_timeout.clone(),
        health_retries: request.health_retries,
        health_start_period: request.health_start_period.clone(),
        no_healthcheck: request.no_healthcheck.then_some(true),
        user: given(&request.user),
        workdir: given(&request.workdir),
        stop_signal: given(&request.stop_signal),
        entrypoint: request.entrypoint.clone(),
        command: (!request.command.is_empty()).then(|| proto::StringList {
            items: request.command.clone(),
        }),
        force_pull: request.force_pull,
        parallel: request.parallel,
        rollout_timeout: request.rollout_timeout.clone(),
        ..proto::UpdateRequest::default()
    }
}

/// The app with `request` applied, validated; nothing stored.
pub fn apply(current: &AppSpec, request: &proto::UpdateRequest) -> Result<AppSpec, ApiError> {
    let mut next = current.clone();
    if let Some(image) = &request.image {
        if image.trim().is_empty() {
            return Err(ApiError::invalid("an image reference is required"));
        }
        crate::runtime::image::ImageRef::parse(image)
            .map_err(|err| ApiError::invalid(err.to_string()))?;
        image.trim().clone_into(&mut next.image);
    }
    if let Some(replicas) = request.replicas {
        next.replicas = validate::replicas(replicas)?;
    }
    if let Some(service) = &request.service {
        next.service = if service.trim().is_empty() {
            None
        } else {
            validate::domain(service)?;
            Some(service.trim().to_owned())
        };
    }
    edit_map(
        &mut next.env,
        &request.env_add,
        &request.env_rm,
        validate::env,
    )?;
    edit_map(
        &mut next.labels,
        &request.label_add,
        &request.label_rm,
        validate::labels,
    )?;
    if let Some(ports) = &request.ports {
        next.ports = validate::ports(&ports.items)?;
    }
    edit_ports(&mut next.ports, &request.port_add, &request.port_rm)?;
    if let Some(volumes) = &request.volumes {
        next.volumes = validate::volumes(&volumes.items)?;
    }
    edit_volumes(&mut next.volumes, &request.volume_add, &request.volume_rm)?;
    if let Some(secrets) = &request.secrets {
        next.secrets = validate::secrets(&secrets.items)?;
    }
    edit_secrets(&mut next.secrets, &request.secret_add, &request.secret_rm)?;
    if let Some(memory) = &request.memory {
        next.memory_bytes = (!memory.trim().is_empty())
            .then(|| validate::memory(memory))
            .transpose()?;
    }
    if let Some(cpus) = &request.cpus {
        next.cpu_millis = (!cpus.trim().is_empty())
            .then(|| validate::cpus(cpus))
            .transpose()?;
    }
    if let Some(secs) = request.stop_timeout_secs {
        next.stop_timeout_secs = super::apps::stop_timeout(secs)?;
    }
    let optional = |value: &Option<String>, check: fn(&str) -> Result<String, _>| match value {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(Some(None)),
        Some(v) => check(v.trim()).map(|v| Some(Some(v))),
    };
    if let Some(user) = optional(&request.user, validate::user)? {
        next.user = user;
    }
    if let Some(workdir) = optional(&request.workdir, validate::workdir)? {
        next.workdir = workdir;
    }
    if let Some(signal) = optional(&request.stop_signal, validate::signal)? {
        next.stop_signal = signal;
    }
    if let Some(entrypoint) = &request.entrypoint {
        next.entrypoint = Some(validate::entrypoint(entrypoint)?);
    }
    if let Some(command) = &request.command {
        next.command = (!command.items.is_empty()).then(|| command.items.clone());
    }
    edit_health(&mut next, request)?;
    Ok(next)
}

/// Parses `KEY=VALUE` flags into a map (env or labels).
type ParseMap = fn(&[String]) -> Result<BTreeMap<String, String>, validate::InvalidInput>;

/// Adds (`KEY=VALUE`, replacing) and removes (`KEY`) entries of an env or label map.
fn edit_map(
    map: &mut BTreeMap<String, String>,
    add: &[String],
    remove: &[String],
    parse: ParseMap,
) -> Result<(), ApiError> {
    for key in remove {
        if key.contains('=') || key.trim().is_empty() {
            return Err(ApiError::invalid(format!(
                "invalid key to remove {key:?}: give the key alone, e.g. LOG_LEVEL"
            )));
        }
        map.remove(key.trim());
    }
    map.extend(parse(add)?);
    Ok(())
}

/// Adds ports (replacing one on the same host port and protocol) and removes them by
/// `HOST[/proto]` or the whole mapping.
fn edit_ports(
    ports: &mut Vec<PortMapping>,
    add: &[String],
    remove: &[String],
) -> Result<(), ApiError> {
    for spec in remove {
        let (host, protocol) = match spec.split_once('/') {
            Some((host, proto)) => (host, Some(proto)),
            None => (spec.as_str(), None),
        };
        let host = host.split(':').next().unwrap_or(host);
        let bad = || {
            ApiError::invalid(format!(
                "invalid port to remove {spec:?}: expected HOST[/tcp|udp] or HOST:CONTAINER[/tcp|udp]"
            ))
        };
        let host: u16 = host.parse().map_err(|_| bad())?;
        let protocol = match protocol {
            None => None,
            Some("tcp") => Some(Protocol::Tcp),
            Some("udp") => Some(Protocol::Udp),
            Some(_) => return Err(bad()),
        };
        let before = ports.len();
        ports.retain(|p| !(p.host == host && protocol.is_none_or(|pr| pr == p.protocol)));
        if ports.len() == before {
            return Err(ApiError::invalid(format!(
                "the app does not publish port {spec}"
            )));
        }
    }
    for mapping in validate::ports(add)? {
        ports.retain(|p| !(p.host == mapping.host && p.protocol == mapping.protocol));
        ports.push(mapping);
    }
    Ok(())
}

/// Adds secrets (replacing one at the same target) and removes them by name or target.
fn edit_secrets(
    secrets: &mut Vec<SecretMount>,
    add: &[String],
    remove: &[String],
) -> Result<(), ApiError> {
    for name in remove {
        let before = secrets.len();
        secrets.retain(|s| s.secret != *name && s.target != *name);
        if secrets.len() == before {
            return Err(ApiError::invalid(format!(
                "the app mounts no secret {name:?}"
            )));
        }
    }
    for mount in validate::secrets(add)? {
        secrets.retain(|s| s.target != mount.target);
        secrets.push(mount);
    }
    Ok(())
}

/// Adds mounts (replacing one at the same path) and removes them by `/path` or
/// `VOLUME:/path`.
fn edit_volumes(
    volumes: &mut Vec<VolumeMount>,
    add: &[String],
    remove: &[String],
) -> Result<(), ApiError> {
    for spec in remove {
        let path = spec.rsplit_once(':').map_or(spec.as_str(), |(_, p)| p);
        let path = if path == "ro" {
            spec.split(':').nth(1).unwrap_or_default()
        } else {
            path
        };
        let before = volumes.len();
        volumes.retain(|v| v.path != path);
        if volumes.len() == before {
            return Err(ApiError::invalid(format!(
                "the app mounts no volume at {spec:?}"
            )));
        }
    }
    for mount in validate::volumes(add)? {
        volumes.retain(|v| v.path != mount.path);
        volumes.push(mount);
    }
    Ok(())
}

/// The health check part of an update: a probe replaces the probe (keeping the timing of the
/// current check for what is not given), timing alone changes the current check,
/// `no_healthcheck` switches checks off (true) or back to the image's (false).
fn edit_health(next: &mut AppSpec, request: &proto::UpdateRequest) -> Result<(), ApiError> {
    let probe_given = !request.health_cmd.is_empty()
        || !request.health_http.is_empty()
        || request.health_tcp != 0;
    let timing_given = !request.health_interval.is_empty()
        || !request.health_timeout.is_empty()
        || !request.health_start_period.is_empty()
        || request.health_retries.is_some();
    match request.no_healthcheck {
        Some(true) if probe_given || timing_given => {
            return Err(ApiError::invalid(
                "--no-healthcheck and --health-* settings exclude each other",
            ));
        }
        Some(true) => {
            next.health = None;
            next.health_from_image = false;
            next.no_healthcheck = true;
            return Ok(());
        }
        Some(false) => {
            // Back to the image's check (filled in from the image before storing).
            next.no_healthcheck = false;
            if !probe_given {
                next.health = None;
                next.health_from_image = true;
            }
        }
        None => {}
    }
    if !probe_given && !timing_given {
        return Ok(());
    }
    let current = next.health.clone();
    let ms = |value: &str, current: Option<u64>| match (value.is_empty(), current) {
        (true, Some(ms)) => format!("{ms}ms"),
        _ => value.to_owned(),
    };
    let interval = ms(
        &request.health_interval,
        current.as_ref().map(|c| c.interval_ms),
    );
    let timeout = ms(
        &request.health_timeout,
        current.as_ref().map(|c| c.timeout_ms),
    );
    let start_period = ms(
        &request.health_start_period,
        current.as_ref().map(|c| c.start_period_ms),
    );
    let input = HealthInput {
        cmd: &request.health_cmd,
        http: &request.health_http,
        tcp: request.health_tcp,
        interval: &interval,
        timeout: &timeout,
        retries: request
            .health_retries
            .or(current.as_ref().map(|c| c.retries)),
        start_period: &start_period,
    };
    let check: HealthCheck = if probe_given {
        validate::health(&input)?.ok_or_else(|| ApiError::invalid("no health check given"))?
    } else {
        let probe: Probe = current.map(|c| c.probe).ok_or_else(|| {
            ApiError::invalid(
                "the app has no health check to change; give --health-cmd, --health-http or --health-tcp",
            )
        })?;
        validate::timing_of(&input, probe)?
    };
    next.health = Some(check);
    next.health_from_image = false;
    next.no_healthcheck = false;
    Ok(())
}

/// Whether going from `current` to `next` needs new containers (anything but the replica
/// count, labels, published ports and the service domain, which apply in place).
pub fn needs_new_containers(current: &AppSpec, next: &AppSpec) -> bool {
    let in_place = |a: &AppSpec| AppSpec {
        replicas: 0,
        labels: BTreeMap::new(),
        ports: Vec::new(),
        service: None,
        updated_at_ms: 0,
        ..a.clone()
    };
    in_place(current) != in_place(next)
}

/// One scalar setting as people read it, for [`changes`].
type Shown = fn(&AppSpec) -> String;

fn joined(words: Option<&Vec<String>>) -> String {
    words.map(|w| w.join(" ")).unwrap_or_default()
}

/// The settings [`changes`] reports as `NAME old -> new`.
const SCALARS: &[(&str, Shown)] = &[
    ("image", |a| a.image.clone()),
    ("replicas", |a| a.replicas.to_string()),
    ("service", |a| a.service.clone().unwrap_or_default()),
    ("memory", |a| {
        a.memory_bytes.map(|b| b.to_string()).unwrap_or_default()
    }),
    ("cpus", |a| a.cpu_millis.map(millis).unwrap_or_default()),
    ("stop timeout", |a| format!("{}s", a.stop_timeout_secs)),
    ("stop signal", |a| a.stop_signal.clone().unwrap_or_default()),
    ("user", |a| a.user.clone().unwrap_or_default()),
    ("workdir", |a| a.workdir.clone().unwrap_or_default()),
    ("entrypoint", |a| joined(a.entrypoint.as_ref())),
    ("command", |a| joined(a.command.as_ref())),
    ("health check", |a| {
        a.health
            .as_ref()
            .map(super::convert::describe_health)
            .unwrap_or_default()
    }),
];

/// What changed, for people: `image a -> b`, `env +FOO -BAR ~BAZ`, `replicas 2 -> 3`, ...
pub fn changes(current: &AppSpec, next: &AppSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (what, shown) in SCALARS {
        let (a, b) = (shown(current), shown(next));
        if a != b {
            out.push(format!("{what} {} -> {}", dash(&a), dash(&b)));
        }
    }
    map_changes(&mut out, "env", &current.env, &next.env);
    map_changes(&mut out, "labels", &current.labels, &next.labels);
    list_changes(
        &mut out,
        "ports",
        &strings(&current.ports),
        &strings(&next.ports),
    );
    let volumes = (strings(&current.volumes), strings(&next.volumes));
    list_changes(&mut out, "volumes", &volumes.0, &volumes.1);
    let secrets = (strings(&current.secrets), strings(&next.secrets));
    list_changes(&mut out, "secrets", &secrets.0, &secrets.1);
    out
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

fn dash(value: &str) -> &str {
    if value.is_empty() { "-" } else { value }
}

#[allow(clippy::cast_precision_loss)] // display only
fn millis(m: u64) -> String {
    format!("{}", m as f64 / 1000.0)
}

/// `env +NEW ~CHANGED -GONE` (keys only: values may be secret).
fn map_changes(
    out: &mut Vec<String>,
    what: &str,
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) {
    let mut parts = Vec::new();
    for (key, value) in b {
        match a.get(key) {
            None => parts.push(format!("+{key}")),
            Some(old) if old != value => parts.push(format!("~{key}")),
            Some(_) => {}
        }
    }
    parts.extend(
        a.keys()
            .filter(|k| !b.contains_key(*k))
            .map(|k| format!("-{k}")),
    );
    if !parts.is_empty() {
        out.push(format!("{what} {}", parts.join(" ")));
    }
}

fn list_changes(out: &mut Vec<String>, what: &str, a: &[String], b: &[String]) {
    let mut parts: Vec<String> = b
        .iter()
        .filter(|x| !a.contains(x))
        .map(|x| format!("+{x}"))
        .collect();
    parts.extend(a.iter().filter(|x| !b.contains(x)).map(|x| format!("-{x}")));
    if !parts.is_empty() {
        out.push(format!("{what} {}", parts.join(" ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppSpec {
        AppSpec {
            name: "api".into(),
            image: "registry.lan/api:1".into(),
            replicas: 2,
            env: BTreeMap::from([
                ("FOO".to_owned(), "bar".to_owned()),
                ("DB_PASSWORD".to_owned(), "s3cret".to_owned()),
            ]),
            labels: BTreeMap::from([("tier".to_owned(), "backend".to_owned())]),
            ports: validate::ports(&["8080:80".to_owned()]).expect("ports"),
            volumes: validate::volumes(&["data:/data".to_owned()]).expect("volumes"),
            stop_timeout_secs: 10,
            generation: 3,
            ..AppSpec::default()
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_image_update_keeps_everything_else() {
        let next = apply(
            &app(),
            &proto::UpdateRequest {
                image: Some("registry.lan/api:2".into()),
                ..Default::default()
            },
        )
        .expect("update");
        assert_eq!(next.image, "registry.lan/api:2");
        assert_eq!(next.env, app().env);
        assert_eq!(next.labels, app().labels);
        assert_eq!(next.ports, app().ports);
        assert_eq!(next.volumes, app().volumes);
        assert_eq!(
            changes(&app(), &next),
            ["image registry.lan/api:1 -> registry.lan/api:2"]
        );
        assert!(needs_new_containers(&app(), &next));
    }

    #[test]
    fn lists_and_maps_are_edited_item_by_item() {
        let next = apply(
            &app(),
            &proto::UpdateRequest {
                env_add: strings(&["NEW=1", "FOO=baz"]),
                env_rm: strings(&["DB_PASSWORD"]),
                label_add: strings(&["team=core"]),
                label_rm: strings(&["tier"]),
                port_add: strings(&["9090:90/udp", "8080:81"]),
                volume_add: strings(&["logs:/logs:ro"]),
                volume_rm: strings(&["/data"]),
                ..Default::default()
            },
        )
        .expect("update");
        assert_eq!(
            next.env,
            BTreeMap::from([
                ("FOO".to_owned(), "baz".to_owned()),
                ("NEW".to_owned(), "1".to_owned())
            ])
        );
        assert_eq!(
            next.labels,
            BTreeMap::from([("team".to_owned(), "core".to_owned())])
        );
        let ports: Vec<String> = next.ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["9090:90/udp", "8080:81/tcp"]);
        let volumes: Vec<String> = next.volumes.iter().map(ToString::to_string).collect();
        assert_eq!(volumes, ["logs:/logs:ro"]);
        assert_eq!(
            changes(&app(), &next),
            [
                "env ~FOO +NEW -DB_PASSWORD",
                "labels +team -tier",
                "ports +9090:90/udp +8080:81/tcp -8080:80/tcp",
                "volumes +logs:/logs:ro -data:/data",
            ]
        );
        let removed = apply(
            &app(),
            &proto::UpdateRequest {
                port_rm: strings(&["8080"]),
                ..Default::default()
            },
        )
        .expect("update");
        assert_eq!(removed.ports, []);
    }

    #[test]
    fn in_place_changes_need_no_new_containers() {
        let next = apply(
            &app(),
            &proto::UpdateRequest {
                replicas: Some(5),
                label_add: strings(&["x=y"]),
                service: Some("api.example.com".into()),
                ..Default::default()
            },
        )
        .expect("update");
        assert!(!needs_new_containers(&app(), &next));
        assert_eq!(
            changes(&app(), &next),
            [
                "replicas 2 -> 5",
                "service - -> api.example.com",
                "labels +x"
            ]
        );
        assert_eq!(changes(&app(), &app()), Vec::<String>::new());
    }

    #[test]
    fn health_checks_change_in_parts() {
        let with = apply(
            &app(),
            &proto::UpdateRequest {
                health_http: "80/healthz".into(),
                health_interval: "20s".into(),
                ..Default::default()
            },
        )
        .expect("update");
        let check = with.health.clone().expect("a check");
        assert_eq!(
            (check.interval_ms, check.timeout_ms, check.retries),
            (20_000, 5000, 3)
        );
        // Timing alone keeps the probe; a probe alone keeps the timing.
        let retimed = apply(
            &with,
            &proto::UpdateRequest {
                health_retries: Some(5),
                ..Default::default()
            },
        )
        .expect("update");
        let check = retimed.health.clone().expect("a check");
        assert_eq!(check.retries, 5);
        assert_eq!(check.interval_ms, 20_000);
        assert!(matches!(check.probe, Probe::Http { port: 80, .. }));
        let reprobed = apply(
            &retimed,
            &proto::UpdateRequest {
                health_tcp: 81,
                ..Default::default()
            },
        )
        .expect("update");
        let check = reprobed.health.expect("a check");
        assert_eq!((check.probe, check.retries), (Probe::Tcp { port: 81 }, 5));
        // Off, and timing without a check to change.
        let off = apply(
            &with,
            &proto::UpdateRequest {
                no_healthcheck: Some(true),
                ..Default::default()
            },
        )
        .expect("update");
        assert!(off.health.is_none() && off.no_healthcheck);
        let err = apply(
            &app(),
            &proto::UpdateRequest {
                health_interval: "5s".into(),
                ..Default::default()
            },
        )
        .expect_err("no check");
        assert!(err.message.contains("no health check to change"), "{err}");
    }

    #[test]
    fn bad_updates_are_refused_whole() {
        for request in [
            proto::UpdateRequest {
                port_add: strings(&["99999:80"]),
                ..Default::default()
            },
            proto::UpdateRequest {
                port_rm: strings(&["7070"]),
                ..Default::default()
            },
            proto::UpdateRequest {
                env_rm: strings(&["FOO=bar"]),
                ..Default::default()
            },
            proto::UpdateRequest {
                image: Some("Bad/Image".into()),
                ..Default::default()
            },
            proto::UpdateRequest {
                replicas: Some(-1),
                ..Default::default()
            },
            proto::UpdateRequest {
                volume_rm: strings(&["/nowhere"]),
                ..Default::default()
            },
        ] {
            assert!(apply(&app(), &request).is_err(), "{request:?}");
        }
    }

    #[test]
    fn a_deploy_update_adds_to_what_is_there() {
        let request = from_deploy(&proto::DeployRequest {
            name: "api".into(),
            image: "registry.lan/api:2".into(),
            env: strings(&["NEW=1"]),
            ..Default::default()
        });
        let next = apply(&app(), &request).expect("update");
        assert_eq!(next.env.len(), 3);
        assert_eq!(next.labels, app().labels);
        assert_eq!(next.replicas, 2);
    }
}
