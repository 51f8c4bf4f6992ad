//! The `hivemind` command line. `agent` runs the daemon; every other command is a gRPC client
//! of a running agent.

mod app;
mod app_update;
mod apply;
mod client;
mod cluster;
mod events;
mod exec;
mod health;
mod logs;
mod monitor;
mod output;
mod policy;
mod registry;
mod secret;
mod shell;
mod volume;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{config::AgentArgs, paths};

/// Usage and configuration errors (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// The agent answered but reports a subsystem down.
pub const EXIT_DEGRADED: u8 = 3;
/// A remote agent refused the credentials (sysexits `EX_NOPERM`).
pub const EXIT_NOPERM: u8 = 77;
/// The change may or may not have been applied: the store did not confirm it in time
/// (sysexits `EX_TEMPFAIL`).
pub const EXIT_UNCONFIRMED: u8 = 75;

#[derive(Parser, Debug)]
#[command(
    name = "hivemind",
    version,
    about = "Deploy containers on your own servers, with an eBPF network"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// The agent to talk to: unix:PATH or https://HOST:PORT.
    #[arg(long, global = true, env = "HIVEMIND_ADDR", default_value_t = format!("unix:{}", paths::DEFAULT_SOCKET))]
    pub addr: String,
    /// Bearer token for remote agents (a node's API token); for `hivemind join`, the join
    /// token.
    #[arg(long, global = true, env = "HIVEMIND_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA that a remote agent's certificate must chain to (`https://` only).
    #[arg(long, global = true, env = "HIVEMIND_CA", value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// A context of the client config (~/.config/hivemind/config.toml): addr, token, ca.
    #[arg(long, global = true, env = "HIVEMIND_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// List commands print only names (ids for containers), one per line.
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// Output format (`monitor` prints JSON lines for yaml too).
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables for people.
    Table,
    /// JSON for scripts.
    Json,
    /// YAML, the same documents as JSON.
    Yaml,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node agent (the daemon).
    Agent(Box<AgentArgs>),
    /// Show the agent's health: store, container runtime, eBPF programs.
    Health,
    /// Deploy and manage apps and their containers.
    #[command(subcommand)]
    App(app::AppCommand),
    /// Make the apps, volumes, secrets and policies of YAML files so (all or nothing).
    Apply(apply::ApplyArgs),
    /// Print resources as the YAML documents `apply -f` takes.
    Get(apply::GetArgs),
    /// Deploy Compose files as stacks, as `docker stack deploy`.
    #[command(subcommand)]
    Stack(apply::StackCommand),
    /// Create, list and remove named volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Secrets mounted into containers under /run/secrets (values never shown again).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Credentials for private registries, used by every node's pulls.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Apply, list and remove network policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// What happened: deploys, container starts and exits, health, rollouts, nodes, policies.
    Events(events::EventsArgs),
    /// Stream the datapath's verdicts live: who talks to whom, what was dropped and why.
    Monitor(monitor::MonitorArgs),
    /// Join this node to a cluster through any of its nodes (run on the new node).
    Join(cluster::JoinArgs),
    /// The cluster's nodes.
    #[command(subcommand)]
    Node(cluster::NodeCommand),
    /// Cluster-wide settings: the join token.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Print the shell completion script (bash, zsh, fish, ...).
    Completion(shell::CompletionArgs),
    /// Write the man pages of every command into a directory.
    Man(shell::ManArgs),
    /// Internal: run by containerd's shim to write a container's log (not for users).
    #[command(name = "log-writer", hide = true)]
    LogWriter { path: std::path::PathBuf },
}

/// `--since DURATION|TIME` of `events` and `app logs`: milliseconds since the epoch.
fn since_arg(value: &str) -> Result<u64, crate::validate::InvalidInput> {
    crate::validate::since("--since", value)
}

/// Runs a client command; prints a one-line error and exits non-zero on failure.
pub fn run(global: &GlobalArgs, command: &Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hivemind: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Health => health::run(global).await,
            Command::App(command) => app::run(global, command).await,
            Command::Apply(args) => apply::apply(global, args).await,
            Command::Get(args) => apply::get(global, args).await,
            Command::Stack(command) => apply::stack(global, command).await,
            Command::Volume(command) => volume::run(global, command).await,
            Command::Secret(command) => secret::run(global, command).await,
            Command::Registry(command) => registry::run(global, command).await,
            Command::Policy(command) => policy::run(global, command).await,
            Command::Monitor(args) => monitor::run(global, args).await,
            Command::Events(args) => events::run(global, args).await,
            Command::Join(args) => cluster::join(global, args).await,
            Command::Node(command) => cluster::node(global, command).await,
            Command::Cluster(command) => cluster::cluster(global, command).await,
            Command::Completion(args) => Ok(shell::completion(args)),
            Command::Man(args) => shell::man(args),
            Command::Agent(_) | Command::LogWriter { .. } => {
                unreachable!("main runs the agent and the log writer itself")
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            // The agent's errors are already sentences; print the message, not the gRPC code.
            match err.downcast_ref::<tonic::Status>() {
                Some(status) if connection_lost(status) => {
                    eprintln!(
                        "hivemind: lost the connection to the agent at {} (did it stop?)",
                        global.addr
                    );
                }
                Some(status) if status.code() == tonic::Code::DeadlineExceeded => {
                    eprintln!(
                        "hivemind: {}; check with `{}` before trying again",
                        status.message(),
                        check_command(command)
                    );
                    return ExitCode::from(EXIT_UNCONFIRMED);
                }
                Some(status) if status.code() == tonic::Code::Unauthenticated => {
                    eprintln!("hivemind: {}", status.message());
                    return ExitCode::from(EXIT_NOPERM);
                }
                Some(status) => eprintln!("hivemind: {}", status.message()),
                None => eprintln!("hivemind: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether the call failed because the connection to the agent broke (the agent stopped or
/// was killed mid-call), as opposed to an answer from the agent. tonic makes such statuses
/// itself, from the transport's error, which it keeps as their source.
fn connection_lost(status: &tonic::Status) -> bool {
    const TRANSPORT_WORDS: [&str; 4] = [
        "transport error",
        "h2 protocol error",
        "error reading a body from connection",
        "connection reset",
    ];
    let from_transport = std::error::Error::source(status).is_some()
        || TRANSPORT_WORDS.iter().any(|w| status.message().contains(w));
    from_transport
        && matches!(
            status.code(),
            tonic::Code::Unknown
                | tonic::Code::Unavailable
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        )
}

/// The read command that shows whether a change whose outcome is unknown was applied.
fn check_command(command: &Command) -> &'static str {
    match command {
        Command::App(_) => "hivemind app ls",
        Command::Apply(_) | Command::Get(_) => "hivemind get all",
        Command::Stack(_) => "hivemind stack ls",
        Command::Volume(_) => "hivemind volume ls",
        Command::Secret(_) => "hivemind secret ls",
        Command::Registry(_) => "hivemind registry ls",
        Command::Policy(_) => "hivemind policy ls",
        Command::Join(_) | Command::Node(_) | Command::Cluster(_) => "hivemind node ls",
        Command::Agent(_)
        | Command::LogWriter { .. }
        | Command::Health
        | Command::Monitor(_)
        | Command::Events(_)
        | Command::Completion(_)
        | Command::Man(_) => "hivemind health",
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    #[test]
    fn every_command_definition_is_consistent() {
        // clap's own checks of the whole tree: no clashing flags or shorts, valid defaults.
        Cli::command().debug_assert();
    }
}
