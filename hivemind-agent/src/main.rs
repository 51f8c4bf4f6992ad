use std::process::ExitCode;

use clap::Parser as _;
use hivemind_agent::{api, cli, config, daemon, telemetry};

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
    if let cli::Command::Agent(agent_args) = args.command {
        run_agent(*agent_args)
    } else {
        cli::run(&args.global, &args.command)
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
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("hivemind agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
