//! The `hivemind` command line. `agent` runs the daemon; every other command is a gRPC client
//! of a running agent.

mod app;
mod client;
mod health;
mod monitor;
mod output;
mod policy;
mod volume;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{config::AgentArgs, paths};

/// Usage and configuration errors (sysexits `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// The agent answered but reports a subsystem down.
pub const EXIT_DEGRADED: u8 = 3;

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
    /// Bearer token for remote agents.
    #[arg(long, global = true, env = "HIVEMIND_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables for people.
    Table,
    /// JSON for scripts.
    Json,
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
    /// Create, list and remove named volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Apply, list and remove network policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Stream the datapath's verdicts live: who talks to whom, what was dropped and why.
    Monitor(monitor::MonitorArgs),
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
            Command::Volume(command) => volume::run(global, command).await,
            Command::Policy(command) => policy::run(global, command).await,
            Command::Monitor(args) => monitor::run(global, args).await,
            Command::Agent(_) => unreachable!("main runs the agent itself"),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            // The agent's errors are already sentences; print the message, not the gRPC code.
            match err.downcast_ref::<tonic::Status>() {
                // tonic's words for a connection that broke mid-call.
                Some(status) if status.message() == "transport error" => {
                    eprintln!(
                        "hivemind: lost the connection to the agent at {} (did it stop?)",
                        global.addr
                    );
                }
                Some(status) => eprintln!("hivemind: {}", status.message()),
                None => eprintln!("hivemind: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
