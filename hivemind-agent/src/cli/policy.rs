//! `hivemind policy ...`.

use std::{path::Path, process::ExitCode};

use anyhow::bail;
use clap::Subcommand;

use super::{GlobalArgs, Output, app::action, client, output};
use crate::proto::{self, policies_client::PoliciesClient};

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Apply network policies from a YAML file or a directory of them (all or nothing).
    Apply {
        /// A .yaml/.yml file, a directory of them, or - for standard input.
        #[arg(short = 'f', long = "file", value_name = "FILE|DIR")]
        file: String,
    },
    /// List policies with what they select and how many packets they dropped.
    #[command(alias = "list")]
    Ls,
    /// Show one policy as YAML.
    Get { name: String },
    /// Remove a policy.
    Rm { name: String },
}

pub async fn run(global: &GlobalArgs, command: &PolicyCommand) -> anyhow::Result<ExitCode> {
    let mut policies = PoliciesClient::new(client::channel(global).await?);
    match command {
        PolicyCommand::Apply { file } => {
            let sources = read_sources(file)?;
            check_size(file, &sources)?;
            let reply = policies
                .apply(proto::ApplyPoliciesRequest { sources })
                .await?
                .into_inner();
            match global.output {
                Output::Json | Output::Yaml => output::document(global.output, &reply)?,
                Output::Table => {
                    for name in &reply.created {
                        println!("policy {name} created");
                    }
                    for name in &reply.updated {
                        println!("policy {name} updated");
                    }
                    for warning in &reply.warnings {
                        eprintln!("warning: {warning}");
                    }
                }
            }
        }
        PolicyCommand::Ls => {
            let reply = policies
                .list(proto::ListPoliciesRequest {})
                .await?
                .into_inner();
            match global.output {
                _ if global.quiet => output::names(reply.policies.iter().map(|x| x.name.as_str())),
                Output::Json | Output::Yaml => output::document(global.output, &reply.policies)?,
                Output::Table => {
                    let mut table = output::Table::new(&[
                        "name", "id", "selector", "selects", "rules", "dropped", "applied",
                    ]);
                    for p in &reply.policies {
                        table.row(vec![
                            p.name.clone(),
                            p.id.to_string(),
                            if p.selector.is_empty() {
                                "(all apps)".into()
                            } else {
                                p.selector.clone()
                            },
                            if p.selects.is_empty() {
                                "-".into()
                            } else {
                                p.selects.join(",")
                            },
                            format!(
                                "{} in, {} out, {} deny",
                                p.ingress_rules, p.egress_rules, p.deny_rules
                            ),
                            p.dropped_packets.to_string(),
                            output::ago(p.applied_at_ms),
                        ]);
                    }
                    print!("{}", table.render());
                }
            }
        }
        PolicyCommand::Get { name } => {
            let info = policies
                .get(proto::PolicyRequest { name: name.clone() })
                .await?
                .into_inner();
            match global.output {
                Output::Json | Output::Yaml => output::document(global.output, &info)?,
                Output::Table => print!("{}", info.yaml),
            }
        }
        PolicyCommand::Rm { name } => {
            let reply = policies
                .remove(proto::PolicyRequest { name: name.clone() })
                .await?
                .into_inner();
            action(global, &reply)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses, before sending anything, more YAML than one apply takes.
fn check_size(file: &str, sources: &[proto::PolicySource]) -> anyhow::Result<()> {
    let total: usize = sources.iter().map(|s| s.yaml.len()).sum();
    if total > crate::policy::MAX_YAML_BYTES {
        bail!(
            "{file} holds {:.1} MiB of YAML; one policy apply takes at most {} MiB (split it into several applies)",
            mib(total),
            crate::policy::MAX_YAML_BYTES >> 20
        );
    }
    Ok(())
}

#[allow(clippy::cast_precision_loss)] // a size shown to one decimal
fn mib(bytes: usize) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// The YAML texts to send: the file, every .yaml/.yml file of a directory (sorted), or stdin.
pub fn read_sources(file: &str) -> anyhow::Result<Vec<proto::PolicySource>> {
    let sources =
        crate::manifest::read_path(Path::new(file)).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(sources
        .into_iter()
        .map(|(name, yaml)| proto::PolicySource { name, yaml })
        .collect())
}
