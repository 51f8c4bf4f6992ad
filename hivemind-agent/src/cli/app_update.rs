//! `hivemind app update` and `hivemind app inspect`.

use std::fmt::Write as _;

use clap::Args;

use super::{GlobalArgs, Output, output};
use crate::proto;

/// What `app update` may change; everything not given stays as it is.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The app.
    name: String,
    /// A new image.
    #[arg(long)]
    image: Option<String>,
    /// A new number of containers.
    #[arg(long, allow_negative_numbers = true)]
    replicas: Option<i64>,
    /// A new service domain ("" removes it).
    #[arg(long)]
    service: Option<String>,
    /// Add or change an environment variable (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    env_add: Vec<String>,
    /// Remove an environment variable (repeatable).
    #[arg(long, value_name = "KEY")]
    env_rm: Vec<String>,
    /// Publish a port, replacing one on the same host port (repeatable).
    #[arg(long, value_name = "HOST:CONTAINER[/PROTO]")]
    port_add: Vec<String>,
    /// Unpublish a port (repeatable).
    #[arg(long, value_name = "HOST[/PROTO]")]
    port_rm: Vec<String>,
    /// Mount a volume, replacing one at the same path (repeatable).
    #[arg(long, value_name = "VOLUME:/PATH[:ro]")]
    volume_add: Vec<String>,
    /// Unmount the volume at a path (repeatable).
    #[arg(long, value_name = "/PATH")]
    volume_rm: Vec<String>,
    /// Mount a secret, replacing one at the same target (repeatable).
    #[arg(long, value_name = "SECRET[:TARGET]")]
    secret_add: Vec<String>,
    /// Unmount a secret, by name or target (repeatable).
    #[arg(long, value_name = "SECRET")]
    secret_rm: Vec<String>,
    /// Add or change a label (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    label_add: Vec<String>,
    /// Remove a label (repeatable).
    #[arg(long, value_name = "KEY")]
    label_rm: Vec<String>,
    /// A new memory limit ("" removes it).
    #[arg(long)]
    memory: Option<String>,
    /// A new CPU limit ("" removes it).
    #[arg(long)]
    cpus: Option<String>,
    /// Seconds between the stop signal and SIGKILL.
    #[arg(long, value_name = "SECONDS")]
    stop_timeout: Option<u32>,
    /// The signal a stop sends first ("" = the image's STOPSIGNAL).
    #[arg(long, value_name = "SIGNAL")]
    stop_signal: Option<String>,
    #[command(flatten)]
    health: super::app::HealthArgs,
    /// No health check at all.
    #[arg(long, conflicts_with = "image_healthcheck")]
    no_healthcheck: bool,
    /// Back to the image's HEALTHCHECK.
    #[arg(long)]
    image_healthcheck: bool,
    /// Run as this user ("" = the image's USER).
    #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Working directory ("" = the image's WORKDIR).
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// A command line instead of the image's ENTRYPOINT ("" for none).
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Pull the image even if it is present.
    #[arg(long)]
    pull: bool,
    /// How the replicas are replaced.
    #[command(flatten)]
    rollout: super::app::RolloutArgs,
    /// A new command instead of the image's CMD (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

impl UpdateArgs {
    pub fn request(&self) -> proto::UpdateRequest {
        proto::UpdateRequest {
            name: self.name.clone(),
            image: self.image.clone(),
            replicas: self.replicas,
            service: self.service.clone(),
            env_add: self.env_add.clone(),
            env_rm: self.env_rm.clone(),
            port_add: self.port_add.clone(),
            port_rm: self.port_rm.clone(),
            volume_add: self.volume_add.clone(),
            volume_rm: self.volume_rm.clone(),
            secret_add: self.secret_add.clone(),
            secret_rm: self.secret_rm.clone(),
            label_add: self.label_add.clone(),
            label_rm: self.label_rm.clone(),
            memory: self.memory.clone(),
            cpus: self.cpus.clone(),
            stop_timeout_secs: self.stop_timeout,
            stop_signal: self.stop_signal.clone(),
            health_cmd: self.health.health_cmd.clone().unwrap_or_default(),
            health_http: self.health.health_http.clone().unwrap_or_default(),
            health_tcp: self.health.health_tcp.unwrap_or(0),
            health_interval: self.health.health_interval.clone().unwrap_or_default(),
            health_timeout: self.health.health_timeout.clone().unwrap_or_default(),
            health_retries: self.health.health_retries,
            health_start_period: self.health.health_start_period.clone().unwrap_or_default(),
            no_healthcheck: match (self.no_healthcheck, self.image_healthcheck) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            user: self.user.clone(),
            workdir: self.workdir.clone(),
            entrypoint: self.entrypoint.clone(),
            command: (!self.command.is_empty()).then(|| proto::StringList {
                items: self.command.clone(),
            }),
            force_pull: self.pull,
            parallel: self.rollout.parallel.unwrap_or(0),
            rollout_timeout: self.rollout.rollout_timeout.clone().unwrap_or_default(),
            ..proto::UpdateRequest::default()
        }
    }
}

/// `app inspect`: the spec as a document, or as `Key  value` lines.
pub fn print_spec(global: &GlobalArgs, spec: &proto::AppSpecInfo) -> anyhow::Result<()> {
    if global.output != Output::Table {
        return output::document(global.output, spec);
    }
    let or_image = |value: &str| {
        if value.is_empty() {
            "(the image's)".to_owned()
        } else {
            value.to_owned()
        }
    };
    let list = |value: &Option<proto::StringList>| {
        value
            .as_ref()
            .map_or_else(|| "(the image's)".to_owned(), |l| format!("{:?}", l.items))
    };
    let dash = |value: String| {
        if value.is_empty() {
            "-".to_owned()
        } else {
            value
        }
    };
    let labels: Vec<String> = spec
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let rows = [
        ("Name", spec.name.clone()),
        ("Image", spec.image.clone()),
        ("Replicas", spec.replicas.to_string()),
        ("Service", dash(spec.service.clone())),
        ("Env", dash(spec.env.join(" "))),
        ("Ports", dash(spec.ports.join(", "))),
        ("Volumes", dash(spec.volumes.join(", "))),
        ("Secrets", dash(spec.secrets.join(", "))),
        ("Labels", dash(labels.join(", "))),
        ("Memory", dash(spec.memory.clone())),
        ("CPUs", dash(spec.cpus.clone())),
        ("User", or_image(&spec.user)),
        ("Workdir", or_image(&spec.workdir)),
        ("Entrypoint", list(&spec.entrypoint)),
        ("Command", list(&spec.command)),
        (
            "Health",
            match spec.health_source.as_str() {
                "image" => format!("{} (the image's HEALTHCHECK)", spec.health_check),
                "off" => "off (--no-healthcheck)".to_owned(),
                _ => dash(spec.health_check.clone()),
            },
        ),
        (
            "Stop",
            format!(
                "{}, then SIGKILL after {}s",
                if spec.stop_signal.is_empty() {
                    "the image's STOPSIGNAL (else SIGTERM)"
                } else {
                    &spec.stop_signal
                },
                spec.stop_timeout_secs
            ),
        ),
        ("Generation", spec.generation.to_string()),
        ("Updated", output::timestamp(spec.updated_at_ms)),
    ];
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "{key:<11} {value}");
    }
    print!("{out}");
    Ok(())
}
