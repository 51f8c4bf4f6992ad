//! `hivemind app ...`.

use std::{fmt::Write as _, io::IsTerminal as _, io::Write as _, process::ExitCode};

use clap::{Args, Subcommand};
use tokio_stream::StreamExt as _;

use super::{GlobalArgs, Output, client, output};
use crate::proto;

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Deploy an image as an app (pulls it, starts its replicas).
    Deploy(Box<DeployArgs>),
    /// Change only what is given (image, env, ports, volumes, labels, limits, health check,
    /// replicas, ...): new containers roll out one by one, health-gated.
    Update(Box<super::app_update::UpdateArgs>),
    /// Show an app's whole spec (`-o yaml` or `-o json` for a document).
    Inspect {
        /// The app.
        name: String,
    },
    /// List apps.
    #[command(alias = "list")]
    Ls,
    /// List containers (all apps, or one).
    Containers {
        /// Only this app's containers.
        #[arg(long)]
        app: Option<String>,
    },
    /// Show one container: image, state and history, restarts, IP, CPU and memory, volumes, env.
    ContainerInfo {
        #[arg(long)]
        container_id: String,
    },
    /// Replace every replica with a fresh container, each new one healthy before the old one
    /// stops; rolled back if a new one does not become healthy.
    Restart {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        rollout: RolloutArgs,
    },
    /// Set the number of replicas.
    Scale {
        #[arg(long)]
        name: String,
        #[arg(long, allow_negative_numbers = true)]
        replicas: i64,
    },
    /// Stop and remove an app's containers and forget the app (volumes are kept).
    Rm {
        #[arg(long)]
        name: String,
    },
    /// Print a container's output (stdout and stderr), or every replica's of an app.
    Logs {
        /// One container's output, as it is.
        #[arg(long, required_unless_present = "name", conflicts_with = "name")]
        container_id: Option<String>,
        /// Every replica of the app, interleaved line by line, each line prefixed by its
        /// container id (replicas on other nodes too).
        #[arg(long)]
        name: Option<String>,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, default_value_t = 0)]
        tail: u32,
        /// Only output written since: a duration back from now (`10m`, `2h`) or an RFC 3339
        /// time (2026-12-07T10:00:00Z).
        #[arg(long, value_name = "DURATION|TIME", value_parser = super::since_arg)]
        since: Option<u64>,
        /// Start each line with the time it was written (RFC 3339, nanoseconds, UTC).
        #[arg(short, long)]
        timestamps: bool,
    },
    /// Run a command in a running container (on any node), as the container's user with its
    /// environment: `app exec --container-id ID -- ls /`, `-it ... -- sh` for a shell.
    Exec(super::exec::ExecArgs),
}

/// How a rollout (restart, update) proceeds.
#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// Replicas replaced at once [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: Option<u32>,
    /// How long each new replica may take to become healthy before the rollout is rolled back
    /// [default: start period + (retries + 1) x (interval + timeout) + 30s].
    #[arg(long, value_name = "DURATION")]
    pub rollout_timeout: Option<String>,
}

/// A health check (replacing the app's, or the image's `HEALTHCHECK`) and its timing.
#[derive(Args, Debug)]
#[allow(clippy::struct_field_names)] // clap names the flags after the fields: --health-cmd, ...
pub struct HealthArgs {
    /// Health check: a command run inside the container with `sh -c`; exit 0 is healthy.
    #[arg(long, value_name = "CMD", conflicts_with_all = ["health_http", "health_tcp"])]
    pub health_cmd: Option<String>,
    /// Health check: HTTP GET on the container's PORT/PATH; 2xx or 3xx is healthy.
    #[arg(long, value_name = "PORT/PATH", conflicts_with = "health_tcp")]
    pub health_http: Option<String>,
    /// Health check: a TCP connection to the container's PORT.
    #[arg(long, value_name = "PORT")]
    pub health_tcp: Option<u32>,
    /// Time between checks [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// A check that takes longer fails [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Consecutive failures that make a replica unhealthy [default: 3].
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Failures this soon after a start do not count [default: 0s].
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Image reference: [registry/]repository[:tag][@digest].
    #[arg(long)]
    image: String,
    /// App name: lowercase letters, digits and '-'.
    #[arg(long)]
    name: String,
    /// Service domain for routing and discovery.
    #[arg(long)]
    service: Option<String>,
    /// Number of containers [default: 1; unchanged on --update].
    #[arg(long, allow_negative_numbers = true)]
    replicas: Option<i64>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Publish a port HOST:CONTAINER[/tcp|udp] (repeatable).
    #[arg(long = "port", short = 'p', value_name = "HOST:CONTAINER[/PROTO]")]
    ports: Vec<String>,
    /// Mount a named volume, `VOLUME:/path[:ro]` (repeatable).
    #[arg(long = "volume", short = 'v', value_name = "VOLUME:/PATH[:ro]")]
    volumes: Vec<String>,
    /// Mount a secret as the read-only file /run/secrets/TARGET, `SECRET[:TARGET]`
    /// (repeatable; create it first with `hivemind secret create`).
    #[arg(long = "secret", value_name = "SECRET[:TARGET]")]
    secrets: Vec<String>,
    /// Label KEY=VALUE, used by network policies (repeatable).
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Memory limit, e.g. 256m or 1g.
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit in CPUs, e.g. 0.5.
    #[arg(long)]
    cpus: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when stopping a container [default: 10].
    #[arg(long, value_name = "SECONDS")]
    stop_timeout: Option<u32>,
    /// Update an existing app to this image and these settings (its replicas are replaced).
    #[arg(long)]
    update: bool,
    /// Pull the image even if it is already present.
    #[arg(long)]
    pull: bool,
    #[command(flatten)]
    health: HealthArgs,
    /// No health check, not even the image's HEALTHCHECK.
    #[arg(long, conflicts_with_all = ["health_cmd", "health_http", "health_tcp"])]
    no_healthcheck: bool,
    /// Run as this user instead of the image's USER: NAME, UID, NAME:GROUP, UID:GID, ...
    #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Working directory instead of the image's WORKDIR.
    #[arg(long, short = 'w', value_name = "DIR")]
    workdir: Option<String>,
    /// Command line instead of the image's ENTRYPOINT (its CMD is then dropped); "" for none.
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Signal a stop sends first instead of the image's STOPSIGNAL (default SIGTERM).
    #[arg(long, value_name = "SIGNAL")]
    stop_signal: Option<String>,
    /// With --update: how the replicas are replaced.
    #[command(flatten)]
    rollout: RolloutArgs,
    /// The command and its arguments, instead of the image's CMD (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub async fn run(global: &GlobalArgs, command: &AppCommand) -> anyhow::Result<ExitCode> {
    let channel = client::channel(global).await?;
    let mut apps = proto::apps_client::AppsClient::new(channel.clone());
    let mut containers = proto::containers_client::ContainersClient::new(channel);
    match command {
        AppCommand::Deploy(args) => deploy(global, &mut apps, args).await?,
        AppCommand::Update(args) => {
            let events = apps.update(args.request()).await?.into_inner();
            follow(global, events).await?;
        }
        AppCommand::Inspect { name } => {
            let spec = apps
                .inspect(proto::AppRequest { name: name.clone() })
                .await?
                .into_inner();
            super::app_update::print_spec(global, &spec)?;
        }
        AppCommand::Ls => {
            let reply = apps.list(proto::ListAppsRequest {}).await?.into_inner();
            match global.output {
                _ if global.quiet => output::names(reply.apps.iter().map(|x| x.name.as_str())),
                Output::Json | Output::Yaml => output::document(global.output, &reply.apps)?,
                Output::Table => print!("{}", apps_table(&reply.apps)),
            }
        }
        AppCommand::Containers { app } => {
            let request = proto::ListContainersRequest {
                app: app.clone().unwrap_or_default(),
            };
            let reply = containers.list(request).await?.into_inner();
            match global.output {
                _ if global.quiet => output::names(reply.containers.iter().map(|x| x.id.as_str())),
                Output::Json | Output::Yaml => output::document(global.output, &reply.containers)?,
                Output::Table => print!("{}", containers_table(&reply.containers)),
            }
        }
        AppCommand::ContainerInfo { container_id } => {
            let request = proto::ContainerRequest {
                container_id: container_id.clone(),
            };
            let info = containers.info(request).await?.into_inner();
            match global.output {
                Output::Json | Output::Yaml => output::document(global.output, &info)?,
                Output::Table => print!("{}", container_details(&info)),
            }
        }
        AppCommand::Restart { name, rollout } => {
            let request = proto::RestartRequest {
                name: name.clone(),
                parallel: rollout.parallel.unwrap_or(0),
                rollout_timeout: rollout.rollout_timeout.clone().unwrap_or_default(),
            };
            let events = apps.restart(request).await?.into_inner();
            follow(global, events).await?;
        }
        AppCommand::Scale { name, replicas } => {
            let request = proto::ScaleRequest {
                name: name.clone(),
                replicas: *replicas,
            };
            let reply = apps.scale(request).await?.into_inner();
            action(global, &reply)?;
        }
        AppCommand::Rm { name } => {
            let reply = apps
                .remove(proto::AppRequest { name: name.clone() })
                .await?
                .into_inner();
            action(global, &reply)?;
        }
        AppCommand::Logs {
            container_id,
            name,
            follow,
            tail,
            since,
            timestamps,
        } => {
            let options = super::logs::LogOptions {
                follow: *follow,
                tail: *tail,
                since_ms: since.unwrap_or(0),
                timestamps: *timestamps,
            };
            match (container_id, name) {
                (Some(id), _) => super::logs::container(&mut containers, id, options).await?,
                (None, Some(app)) => super::logs::app(&mut containers, app, options).await?,
                (None, None) => anyhow::bail!("give --container-id ID or --name APP"),
            }
        }
        AppCommand::Exec(args) => return super::exec::run(&mut containers, args).await,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn action(global: &GlobalArgs, reply: &proto::ActionReply) -> anyhow::Result<()> {
    match global.output {
        Output::Json | Output::Yaml => output::document(global.output, reply),
        Output::Table => {
            println!("{}", reply.message);
            Ok(())
        }
    }
}

async fn deploy(
    global: &GlobalArgs,
    apps: &mut proto::apps_client::AppsClient<super::client::Transport>,
    args: &DeployArgs,
) -> anyhow::Result<()> {
    let request = proto::DeployRequest {
        name: args.name.clone(),
        image: args.image.clone(),
        service: args.service.clone().unwrap_or_default(),
        replicas: args.replicas,
        env: args.env.clone(),
        ports: args.ports.clone(),
        volumes: args.volumes.clone(),
        secrets: args.secrets.clone(),
        labels: args.labels.clone(),
        memory: args.memory.clone().unwrap_or_default(),
        cpus: args.cpus.clone().unwrap_or_default(),
        update: args.update,
        force_pull: args.pull,
        stop_timeout_secs: args.stop_timeout,
        health_cmd: args.health.health_cmd.clone().unwrap_or_default(),
        health_http: args.health.health_http.clone().unwrap_or_default(),
        health_tcp: args.health.health_tcp.unwrap_or(0),
        health_interval: args.health.health_interval.clone().unwrap_or_default(),
        health_timeout: args.health.health_timeout.clone().unwrap_or_default(),
        health_retries: args.health.health_retries,
        health_start_period: args.health.health_start_period.clone().unwrap_or_default(),
        parallel: args.rollout.parallel.unwrap_or(0),
        rollout_timeout: args.rollout.rollout_timeout.clone().unwrap_or_default(),
        user: args.user.clone().unwrap_or_default(),
        workdir: args.workdir.clone().unwrap_or_default(),
        entrypoint: args.entrypoint.clone(),
        command: args.command.clone(),
        stop_signal: args.stop_signal.clone().unwrap_or_default(),
        no_healthcheck: args.no_healthcheck,
    };
    let events = apps.deploy(request).await?.into_inner();
    follow(global, events).await
}

/// Shows a deploy's or restart's progress on stderr (a pull's as one self-overwriting line on
/// a terminal, a rollout's steps as lines), then prints the result.
pub(super) async fn follow(
    global: &GlobalArgs,
    mut events: tonic::Streaming<proto::DeployEvent>,
) -> anyhow::Result<()> {
    let mut bar =
        ProgressLine::new(global.output == Output::Table && std::io::stderr().is_terminal());
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(status) => {
                bar.clear();
                return Err(status.into());
            }
        };
        if let Some(progress) = event.progress {
            if progress.phase == "rollout" || progress.phase == "apply" {
                bar.clear();
                if global.output == Output::Table {
                    eprintln!("{}", progress.detail);
                }
            } else {
                bar.show(&progress);
            }
        }
        if let Some(result) = event.result {
            bar.clear();
            match global.output {
                Output::Json | Output::Yaml => output::document(global.output, &result)?,
                Output::Table => println!("{}", result.message),
            }
        }
    }
    Ok(())
}

/// A single self-overwriting line on stderr while an image is pulled (only on a terminal).
struct ProgressLine {
    enabled: bool,
    shown: bool,
}

impl ProgressLine {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            shown: false,
        }
    }

    fn show(&mut self, progress: &proto::PullProgress) {
        const WIDTH: usize = 30;
        if !self.enabled {
            return;
        }
        let filled = (progress.done.min(progress.total) * WIDTH as u64)
            .checked_div(progress.total)
            .map(|f| usize::try_from(f).unwrap_or(WIDTH));
        let line = if let Some(filled) = filled {
            format!(
                "{:<8} [{}{}] {} / {}  {}",
                progress.phase,
                "#".repeat(filled),
                "-".repeat(WIDTH - filled),
                output::bytes(progress.done),
                output::bytes(progress.total),
                progress.detail
            )
        } else {
            format!("{:<8} {}", progress.phase, progress.detail)
        };
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{line}");
        let _ = stderr.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let mut stderr = std::io::stderr().lock();
            let _ = write!(stderr, "\r\x1b[2K");
            let _ = stderr.flush();
            self.shown = false;
        }
    }
}

fn apps_table(apps: &[proto::AppInfo]) -> String {
    let mut table = output::Table::new(&[
        "name", "image", "replicas", "status", "service", "vip", "ports", "updated",
    ]);
    for app in apps {
        table.row(vec![
            app.name.clone(),
            app.image.clone(),
            format!("{}/{}", app.running, app.replicas),
            app.status.clone(),
            dash(&app.service),
            dash(&app.vip),
            dash(&app.ports.join(",")),
            output::ago(app.updated_at_ms),
        ]);
    }
    table.render()
}

fn containers_table(containers: &[proto::ContainerInfo]) -> String {
    let mut table = output::Table::new(&[
        "container",
        "app",
        "node",
        "status",
        "ip",
        "restarts",
        "image",
        "created",
    ]);
    for c in containers {
        let uptime = output::ago(c.started_at_ms);
        let uptime = uptime.trim_end_matches(" ago");
        let status = match (c.state.as_str(), c.exit_code) {
            ("running", _) if !c.health.is_empty() => format!("running ({uptime}, {})", c.health),
            ("running", _) => format!("running ({uptime})"),
            (state, Some(code)) => format!("{state} ({code})"),
            (state, None) => state.to_owned(),
        };
        table.row(vec![
            c.id.clone(),
            c.app.clone(),
            c.node.clone(),
            status,
            dash(&c.ip),
            c.restart_count.to_string(),
            c.image.clone(),
            output::ago(c.created_at_ms),
        ]);
    }
    table.render() + &service_summary(containers)
}

/// Below the containers: each app's service names and the replicas they lead to.
fn service_summary(containers: &[proto::ContainerInfo]) -> String {
    let mut out = String::new();
    let mut apps: Vec<&str> = containers.iter().map(|c| c.app.as_str()).collect();
    apps.dedup();
    for app in apps {
        let mine: Vec<&proto::ContainerInfo> = containers.iter().filter(|c| c.app == app).collect();
        let Some(names) = mine
            .first()
            .map(|c| &c.service_names)
            .filter(|n| !n.is_empty())
        else {
            continue;
        };
        let serving: Vec<&str> = mine
            .iter()
            .filter(|c| c.serving)
            .map(|c| c.ip.as_str())
            .collect();
        let _ = write!(
            out,
            "\n{} -> {}",
            names.join(", "),
            if serving.is_empty() {
                "no healthy replica".to_owned()
            } else {
                serving.join(", ")
            }
        );
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

fn container_details(c: &proto::ContainerInfo) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("Container", c.id.clone()),
        ("App", format!("{} (replica slot {})", c.app, c.slot)),
        ("Node", c.node.clone()),
        ("Image", c.image.clone()),
        ("Digest", dash(&c.image_digest)),
        ("State", state_line(c)),
        ("Health", health_line(c)),
        ("Restarts", c.restart_count.to_string()),
        ("IP", dash(&c.ip)),
        ("User", dash(&c.user)),
        ("Exposed", dash(&c.exposed_ports.join(", "))),
        ("Service", service_line(c)),
        ("VIP", dash(&c.vip)),
    ];
    if let Some(usage) = &c.usage {
        #[allow(clippy::cast_precision_loss)] // display only
        let cpu = format!("{:.2} s", usage.cpu_ns as f64 / 1e9);
        rows.push(("CPU", cpu));
        let limit = if usage.memory_limit_bytes == 0 {
            "no limit".to_owned()
        } else {
            output::bytes(usage.memory_limit_bytes)
        };
        rows.push((
            "Memory",
            format!("{} / {limit}", output::bytes(usage.memory_bytes)),
        ));
    }
    rows.push(("Ports", dash(&c.ports.join(", "))));
    rows.push(("Volumes", dash(&c.volumes.join(", "))));
    rows.push(("Env", dash(&c.env.join(" "))));
    rows.push(("Log", dash(&c.log_path)));
    let mut out = String::new();
    for (key, value) in &rows {
        let _ = writeln!(out, "{key:<10} {value}");
    }
    out.push_str("\nHistory\n");
    let mut history = output::Table::new(&["time", "state", "exit", "message"]);
    for change in &c.history {
        history.row(vec![
            output::timestamp(change.at_ms),
            change.state.clone(),
            change
                .exit_code
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            change.message.clone(),
        ]);
    }
    out + &history.render()
}

fn health_line(c: &proto::ContainerInfo) -> String {
    match (c.health.as_str(), c.health_detail.as_str()) {
        ("", _) => "- (no health check)".to_owned(),
        (health, "") => health.to_owned(),
        (health, detail) => format!("{health} (last failure: {detail})"),
    }
}

fn service_line(c: &proto::ContainerInfo) -> String {
    if c.service_names.is_empty() {
        return "-".to_owned();
    }
    let rotation = if c.serving {
        "serving: in DNS and the router"
    } else {
        "not serving: out of DNS and the router"
    };
    format!("{} ({rotation})", c.service_names.join(", "))
}

fn state_line(c: &proto::ContainerInfo) -> String {
    match c.state.as_str() {
        "running" => format!(
            "running since {} (pid {})",
            output::timestamp(c.started_at_ms),
            c.pid
        ),
        state => match c.exit_code {
            Some(code) => format!("{state}, exit code {code}"),
            None => state.to_owned(),
        },
    }
}

fn dash(value: &str) -> String {
    if value.is_empty() {
        "-".to_owned()
    } else {
        value.to_owned()
    }
}
