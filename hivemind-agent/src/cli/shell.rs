//! `hivemind completion SHELL` and `hivemind man DIR`: generated from the CLI's own
//! definitions (`clap_complete`, `clap_mangen`), so they never drift from `--help`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _};

use super::Cli;

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish, elvish or powershell. E.g. `source <(hivemind completion
    /// bash)`, or write it to `/etc/bash_completion.d/hivemind`.
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Where to write the pages (hivemind.1, hivemind-app.1, hivemind-app-deploy.1, ...),
    /// e.g. /usr/local/share/man/man1.
    pub dir: PathBuf,
}

pub fn completion(args: &CompletionArgs) -> ExitCode {
    use std::io::Write as _;
    // Into memory first: the generator panics on a write error, and a reader that stops
    // early (`| head`) is not one.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "hivemind", &mut script);
    let _ = std::io::stdout().write_all(&script);
    ExitCode::SUCCESS
}

pub fn man(args: &ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.dir)
        .with_context(|| format!("cannot write the man pages to {}", args.dir.display()))?;
    println!("Wrote the man pages to {}", args.dir.display());
    Ok(ExitCode::SUCCESS)
}
