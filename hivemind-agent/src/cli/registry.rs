//! `hivemind registry ...`.

use std::{
    io::{BufRead as _, IsTerminal as _, Read as _, Write as _},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::{GlobalArgs, Output, app::action, client, output};
use crate::proto::{self, registries_client::RegistriesClient};

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Log in to a registry: the agent checks the credentials with it, then every node of
    /// the cluster pulls from it with them (the password stored encrypted).
    Login {
        /// HOST[:PORT] as image references spell it (docker.io for Docker Hub).
        host: String,
        /// The username (asked for when not given).
        #[arg(long, short = 'u')]
        username: Option<String>,
        /// Read the password (or token) from standard input, e.g. `echo "$TOKEN" |
        /// hivemind registry login ghcr.io -u me --password-stdin`.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Forget the credentials of a registry.
    Logout { host: String },
    /// Registries logged in to, and as whom (never passwords).
    #[command(alias = "list")]
    Ls,
}

pub async fn run(global: &GlobalArgs, command: &RegistryCommand) -> anyhow::Result<ExitCode> {
    match command {
        RegistryCommand::Login {
            host,
            username,
            password_stdin,
        } => {
            let (username, password) = credentials(username.as_deref(), *password_stdin)?;
            let mut registries = RegistriesClient::new(client::channel(global).await?);
            let reply = registries
                .login(proto::RegistryLoginRequest {
                    host: host.clone(),
                    username,
                    password,
                })
                .await?
                .into_inner();
            action(global, &reply)?;
        }
        RegistryCommand::Logout { host } => {
            let mut registries = RegistriesClient::new(client::channel(global).await?);
            let reply = registries
                .logout(proto::RegistryRequest { host: host.clone() })
                .await?
                .into_inner();
            action(global, &reply)?;
        }
        RegistryCommand::Ls => {
            let mut registries = RegistriesClient::new(client::channel(global).await?);
            let reply = registries
                .list(proto::ListRegistriesRequest {})
                .await?
                .into_inner();
            match global.output {
                _ if global.quiet => {
                    output::names(reply.registries.iter().map(|x| x.host.as_str()));
                }
                Output::Json | Output::Yaml => {
                    output::document(global.output, &reply.registries)?;
                }
                Output::Table => {
                    let mut table = output::Table::new(&["registry", "username", "logged in"]);
                    for r in &reply.registries {
                        table.row(vec![
                            r.host.clone(),
                            r.username.clone(),
                            output::ago(r.logged_in_at_ms),
                        ]);
                    }
                    print!("{}", table.render());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The username and password, from the flags, standard input or the terminal (as `docker
/// login` asks for them).
fn credentials(username: Option<&str>, password_stdin: bool) -> anyhow::Result<(String, String)> {
    let tty = std::io::stdin().is_terminal();
    let username = match username {
        Some(name) => name.to_owned(),
        None if password_stdin || !tty => {
            bail!("give the username with -u USER (standard input carries the password)")
        }
        None => {
            eprint!("Username: ");
            std::io::stderr().flush().ok();
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the username")?;
            line.trim().to_owned()
        }
    };
    let password = if password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the password from standard input")?;
        // `echo` adds a newline; a password does not end in one.
        text.trim_end_matches(['\n', '\r']).to_owned()
    } else if tty {
        rpassword::prompt_password("Password: ").context("cannot read the password")?
    } else {
        bail!("standard input is not a terminal: pass the password with --password-stdin")
    };
    Ok((username, password))
}
