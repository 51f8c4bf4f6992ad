//! `hivemind secret ...`.

use std::{io::Read as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Subcommand;

use super::{GlobalArgs, Output, app::action, client, output};
use crate::proto::{self, secrets_client::SecretsClient};

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Create a secret from standard input (e.g. `printf %s "$PW" | hivemind secret create
    /// db-password`) or from a file. The value is stored encrypted and never shown again.
    Create {
        name: String,
        /// Read the value from FILE instead of standard input.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// List secrets (names, sizes and the apps that mount them; never values).
    #[command(alias = "list")]
    Ls,
    /// Remove a secret (refused while an app mounts it).
    Rm { name: String },
}

pub async fn run(global: &GlobalArgs, command: &SecretCommand) -> anyhow::Result<ExitCode> {
    match command {
        SecretCommand::Create { name, from_file } => {
            // Read before connecting: a bad file fails without touching the agent.
            let value = if let Some(path) = from_file {
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
            } else {
                let mut value = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut value)
                    .context("cannot read the secret from standard input")?;
                value
            };
            let mut secrets = SecretsClient::new(client::channel(global).await?);
            let info = secrets
                .create(proto::CreateSecretRequest {
                    name: name.clone(),
                    value,
                })
                .await?
                .into_inner();
            match global.output {
                Output::Json | Output::Yaml => output::document(global.output, &info)?,
                Output::Table => println!(
                    "Created secret {} ({})",
                    info.name,
                    output::bytes(info.size_bytes)
                ),
            }
        }
        SecretCommand::Ls => {
            let mut secrets = SecretsClient::new(client::channel(global).await?);
            let reply = secrets
                .list(proto::ListSecretsRequest {})
                .await?
                .into_inner();
            match global.output {
                _ if global.quiet => output::names(reply.secrets.iter().map(|x| x.name.as_str())),
                Output::Json | Output::Yaml => output::document(global.output, &reply.secrets)?,
                Output::Table => {
                    let mut table = output::Table::new(&["name", "size", "used by", "created"]);
                    for s in &reply.secrets {
                        table.row(vec![
                            s.name.clone(),
                            output::bytes(s.size_bytes),
                            output::list_or_dash(&s.used_by),
                            output::ago(s.created_at_ms),
                        ]);
                    }
                    print!("{}", table.render());
                }
            }
        }
        SecretCommand::Rm { name } => {
            let mut secrets = SecretsClient::new(client::channel(global).await?);
            let reply = secrets
                .remove(proto::SecretRequest { name: name.clone() })
                .await?
                .into_inner();
            action(global, &reply)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
