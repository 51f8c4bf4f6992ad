//! Desired and observed state as stored: apps (what the user asked for), containers (what runs
//! where, with its history) and volumes. Values are JSON under the keys of [`keys`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Key layout in the store. One prefix per kind, so a range over it lists them.
pub mod keys {
    pub const APPS: &str = "/hivemind/apps/";
    pub const CONTAINERS: &str = "/hivemind/containers/";
    pub const VOLUMES: &str = "/hivemind/volumes/";
    pub const IDENTITIES: &str = "/hivemind/identities/";
    pub const POLICIES: &str = "/hivemind/policies/";
    pub const ASSIGNMENTS: &str = "/hivemind/assignments/";
    /// Registered nodes (`cluster::nodes::NodeRecord`), and their liveness keys, attached to
    /// each node's lease (see `cluster::nodes`).
    pub const NODES: &str = "/hivemind/nodes/";
    pub const LIVENESS: &str = "/hivemind/liveness/";
    /// Each app's current (or last) rollout.
    pub const ROLLOUTS: &str = "/hivemind/rollouts/";
    /// Service VIPs, both ways: `vips/app/<app>` → address, `vips/ip/<address>` → app.
    pub const VIPS_BY_APP: &str = "/hivemind/vips/app/";
    pub const VIPS_BY_IP: &str = "/hivemind/vips/ip/";
    /// `hivemind secret create`: values sealed with the cluster's key (see `sealed`).
    pub const SECRETS: &str = "/hivemind/secrets/";
    /// `hivemind registry login`: one per registry host, the password sealed.
    pub const REGISTRIES: &str = "/hivemind/registries/";
    /// What each `hivemind apply --set` (and each stack) applied, for `--prune` and `stack rm`.
    pub const SETS: &str = "/hivemind/sets/";

    pub fn app(name: &str) -> String {
        format!("{APPS}{name}")
    }
    pub fn container(id: &str) -> String {
        format!("{CONTAINERS}{id}")
    }
    pub fn volume(name: &str) -> String {
        format!("{VOLUMES}{name}")
    }
    pub fn identity(app: &str) -> String {
        format!("{IDENTITIES}{app}")
    }
    pub fn policy(name: &str) -> String {
        format!("{POLICIES}{name}")
    }
    pub fn assignments(app: &str) -> String {
        format!("{ASSIGNMENTS}{app}")
    }
    pub fn rollout(app: &str) -> String {
        format!("{ROLLOUTS}{app}")
    }
    pub fn secret(name: &str) -> String {
        format!("{SECRETS}{name}")
    }
    pub fn registry(host: &str) -> String {
        format!("{REGISTRIES}{host}")
    }
    pub fn set(name: &str) -> String {
        format!("{SETS}{name}")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// `--port HOST:CONTAINER[/proto]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host: u16,
    pub container: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host,
            self.container,
            self.protocol.as_str()
        )
    }
}

/// `--volume NAME:/path[:ro]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
}

impl std::fmt::Display for VolumeMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}{}",
            self.volume,
            self.path,
            if self.read_only { ":ro" } else { "" }
        )
    }
}

/// `--secret NAME[:TARGET]`: the secret as a read-only file `/run/secrets/TARGET`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMount {
    pub secret: String,
    /// The file name under `/run/secrets` (the secret's name unless given).
    pub target: String,
}

impl std::fmt::Display for SecretMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.target == self.secret {
            f.write_str(&self.secret)
        } else {
            write!(f, "{}:{}", self.secret, self.target)
        }
    }
}

/// What the user asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    pub name: String,
    /// The image reference as normalised by the pull (`registry/repo:tag`).
    pub image: String,
    /// Service domain (`--service`), registered by service discovery.
    pub service: Option<String>,
    pub replicas: u32,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    pub volumes: Vec<VolumeMount>,
    /// `--secret`: files under `/run/secrets` (values live in the secret records only).
    #[serde(default)]
    pub secrets: Vec<SecretMount>,
    /// User labels; `app=<name>` is implied and not stored here.
    pub labels: BTreeMap<String, String>,
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when a container stops.
    pub stop_timeout_secs: u32,
    /// How to tell a replica is healthy (`--health-cmd`, `--health-http`, `--health-tcp`, or
    /// the image's `HEALTHCHECK`).
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// `health` is the image's `HEALTHCHECK` (re-read when the image changes), not one given.
    #[serde(default)]
    pub health_from_image: bool,
    /// `--no-healthcheck`: no check, not even the image's.
    #[serde(default)]
    pub no_healthcheck: bool,
    /// `--user`: instead of the image's `USER` (`name`, `uid`, `name:group`, `uid:gid`, ...).
    #[serde(default)]
    pub user: Option<String>,
    /// `--workdir`: instead of the image's `WORKDIR`.
    #[serde(default)]
    pub workdir: Option<String>,
    /// `--entrypoint`: instead of the image's `ENTRYPOINT` (and then without its `CMD`, as
    /// Docker does); empty runs the command alone.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The arguments after `--`: instead of the image's `CMD`.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// `--stop-signal`, else the image's `STOPSIGNAL`, else `SIGTERM`: what a stop sends first.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Bumped by every change that needs new containers (image, env, restart...).
    pub generation: u64,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl AppSpec {
    /// The labels policies select on: the user's plus `app=<name>`.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert("app".into(), self.name.clone());
        labels
    }
}

/// What a health check runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Probe {
    /// A command run inside the container with `sh -c`; exit code 0 is healthy.
    Cmd { command: String },
    /// A program and its arguments run inside the container as they are (an image's
    /// `HEALTHCHECK CMD ["prog", "arg"]`); exit code 0 is healthy.
    Exec { args: Vec<String> },
    /// An HTTP GET of `path` on the container's `port`; a 2xx or 3xx status is healthy.
    Http { port: u16, path: String },
    /// A TCP connection to the container's `port`.
    Tcp { port: u16 },
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cmd { command } => write!(f, "cmd {command:?}"),
            Self::Exec { args } => write!(f, "exec {args:?}"),
            Self::Http { port, path } => write!(f, "http {port}{path}"),
            Self::Tcp { port } => write!(f, "tcp {port}"),
        }
    }
}

/// `--health-*`: what to check, how often, and how much failure makes a replica unhealthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that make a healthy replica unhealthy.
    pub retries: u32,
    /// Failures during this time after a start do not count.
    pub start_period_ms: u64,
}

/// A replica's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Started; no check has passed yet.
    Starting,
    Healthy,
    /// Failed its check `retries` times in a row: out of DNS, the VIP and the router, and
    /// restarted.
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// A container's lifecycle state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Record written, containerd objects being made.
    #[default]
    Creating,
    Running,
    /// The process exited; the reconciler restarts it after a backoff.
    Exited,
    /// Being stopped and removed.
    Stopping,
    /// Could not be created or started; replaced by the reconciler.
    Failed,
}

impl ContainerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Stopping => "stopping",
            Self::Failed => "failed",
        }
    }
}

/// One entry of a container's status history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub at_ms: u64,
    pub state: ContainerState,
    pub exit_code: Option<i32>,
    pub message: String,
}

/// Histories keep the most recent changes only.
pub const HISTORY_LIMIT: usize = 50;

/// What runs, where, and what happened to it. Written by the node that runs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub app: String,
    /// Replica slot, 0-based; a slot has one current container.
    pub slot: u32,
    pub node: String,
    /// The app generation this container was made for.
    pub generation: u64,
    pub image: String,
    pub image_digest: String,
    pub state: ContainerState,
    pub exit_code: Option<i32>,
    pub restart_count: u32,
    pub pid: u32,
    pub ip: Option<std::net::Ipv4Addr>,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub history: Vec<StatusChange>,
    /// The health check's verdict; `None` when the app has no health check.
    #[serde(default)]
    pub health: Option<Health>,
    /// Why the last check failed (its output, status or error), empty once it passes.
    #[serde(default)]
    pub health_detail: String,
    /// The image's `EXPOSE`d ports (`PORT/PROTO`), for `container-info`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Whom the process runs as, e.g. `www (uid 1000, gid 1000, groups 50,2000)`.
    #[serde(default)]
    pub user: String,
    /// The signal a stop sends first (`--stop-signal`, else the image's `STOPSIGNAL`); `None`
    /// means `SIGTERM`.
    #[serde(default)]
    pub stop_signal: Option<String>,
}

impl ContainerRecord {
    /// Running and, when its app has a health check, passing it: what DNS, the VIP and the
    /// router send traffic to.
    pub fn is_healthy(&self) -> bool {
        self.state == ContainerState::Running && self.health.is_none_or(|h| h == Health::Healthy)
    }

    /// Moves to `state` and records the change.
    pub fn transition(
        &mut self,
        state: ContainerState,
        exit_code: Option<i32>,
        message: impl Into<String>,
    ) {
        let now = now_ms();
        self.state = state;
        self.exit_code = exit_code;
        if state == ContainerState::Running {
            self.started_at_ms = Some(now);
        }
        self.history.push(StatusChange {
            at_ms: now,
            state,
            exit_code,
            message: message.into(),
        });
        if self.history.len() > HISTORY_LIMIT {
            let excess = self.history.len() - HISTORY_LIMIT;
            self.history.drain(..excess);
        }
    }
}

/// A named volume: a directory under the data dir on `node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub node: String,
    pub created_at_ms: u64,
}

/// A network policy as applied: its YAML document (one per record) and the small id the
/// datapath's entries and counters carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub name: String,
    pub id: u32,
    /// The policy as one YAML document (normalised: re-serialised from the parsed form).
    pub yaml: String,
    /// The file (or API request) it came from.
    pub source: String,
    pub applied_at_ms: u64,
}

/// A secret (`hivemind secret create`): its value sealed, bound to its key (see `sealed`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    pub sealed_value: String,
    pub size_bytes: u64,
    pub created_at_ms: u64,
}

/// `hivemind registry login`: who to pull from `host` as, the password sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLogin {
    pub host: String,
    pub username: String,
    pub sealed_password: String,
    pub logged_in_at_ms: u64,
}

/// What one set of `hivemind apply` (or one stack) made or took over, by kind: what
/// `--prune` may remove when the files no longer have it, and all that `stack rm` removes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSet {
    /// `default`, an `apply --set` name, or `stack/<NAME>`.
    pub name: String,
    pub apps: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
    pub policies: BTreeSet<String>,
    pub updated_at_ms: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_bounded_and_ordered() {
        let mut record = ContainerRecord {
            id: "web-1".into(),
            app: "web".into(),
            slot: 0,
            node: "n".into(),
            generation: 1,
            image: "i".into(),
            image_digest: "d".into(),
            state: ContainerState::Creating,
            exit_code: None,
            restart_count: 0,
            pid: 0,
            ip: None,
            created_at_ms: 0,
            started_at_ms: None,
            history: Vec::new(),
            health: None,
            health_detail: String::new(),
            ..ContainerRecord::default()
        };
        for i in 0..(HISTORY_LIMIT + 5) {
            record.transition(
                ContainerState::Exited,
                Some(i32::try_from(i).expect("small")),
                "exit",
            );
        }
        assert_eq!(record.history.len(), HISTORY_LIMIT);
        assert_eq!(record.history.last().and_then(|c| c.exit_code), Some(54));
        record.transition(ContainerState::Running, None, "started");
        assert!(record.started_at_ms.is_some());
    }
}
