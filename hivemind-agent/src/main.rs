use std::process::ExitCode;

use clap::Parser as _;
use hivemind_agent::{api, cli, config, daemon, runtime, telemetry};

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err) => {
            // --help and --version are not errors.
            let code = if err.use_stderr() { cli::EXIT_USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    match args.command {
        cli::Command::Agent(agent_args) => run_agent(*agent_args),
        cli::Command::LogWriter { path } => runtime::log_file::run_writer(&path),
        command => cli::run(&args.global, &command),
    }
}

fn run_agent(args: config::AgentArgs) -> ExitCode {
    let print_token = args.print_token;
    let config = match config::AgentConfig::load(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("hivemind agent: {err}");
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    if print_token {
        return match api::rest::security::load_or_create_token(&config.data_dir.api_token()) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("hivemind agent: {err}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(err) = telemetry::init(config.log_format) {
        eprintln!("hivemind agent: {err}");
        return ExitCode::from(cli::EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hivemind agent: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config)) {
        Ok(daemon::Outcome::Stopped) => ExitCode::SUCCESS,
        Ok(daemon::Outcome::Restart) => {
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            let err = reexec();
            eprintln!("hivemind agent: cannot restart into the cluster: {err}");
            ExitCode::FAILURE
        }
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("hivemind agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Replaces this process with a fresh agent with the same arguments and environment (after a
/// join; `cluster.json` now makes it a cluster node). Returns only if exec fails.
fn reexec() -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "hivemind".into());
    std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .exec()
}
