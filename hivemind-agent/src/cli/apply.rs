//! `hivemind apply -f`, `hivemind get`, and `hivemind stack` (Compose files, applied as a set).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::{GlobalArgs, Output, app::follow, client, output};
use crate::{
    manifest::{self, Manifest},
    proto::{self, manifests_client::ManifestsClient},
};

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// A .yaml/.yml file, a directory of them, or - for standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE|DIR")]
    pub file: String,
    /// Print the plan (`+` create, `~` change, `-` remove) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove what earlier applies of this set made and the files no longer have.
    #[arg(long)]
    pub prune: bool,
    /// The set these files are (what --prune compares against).
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub set: String,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// app(s), volume(s), secret(s), policy/policies, or all.
    pub kind: String,
    /// One resource (default: every one of the kind).
    pub name: Option<String>,
    /// Only what this apply set recorded (`stack/NAME` for a stack).
    #[arg(long, value_name = "NAME")]
    pub set: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum StackCommand {
    /// Deploy (or update) a stack from a Compose file, as `docker stack deploy -c`.
    Deploy {
        /// The Compose file.
        #[arg(short = 'c', long = "compose-file", value_name = "FILE")]
        compose_file: PathBuf,
        /// Services become apps named NAME-SERVICE.
        name: String,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List stacks and what each is made of.
    #[command(alias = "list")]
    Ls,
    /// Remove a stack: every app, policy, secret and volume it made, and nothing else.
    Rm { name: String },
}

pub async fn apply(global: &GlobalArgs, args: &ApplyArgs) -> anyhow::Result<ExitCode> {
    // Checked here first, so a typo is reported without a round trip (the agent checks again).
    let (manifest, sources) = manifest::parse_path(Path::new(&args.file))
        .map_err(|errors| anyhow::anyhow!("nothing applied:\n{errors}"))?;
    let secret_values = secret_values(&manifest)?;
    let request = proto::ApplyRequest {
        sources: sources
            .into_iter()
            .map(|(name, yaml)| proto::PolicySource { name, yaml })
            .collect(),
        secret_values,
        dry_run: args.dry_run,
        prune: args.prune,
        set: args.set.clone(),
    };
    send(global, request).await
}

pub async fn get(global: &GlobalArgs, args: &GetArgs) -> anyhow::Result<ExitCode> {
    let mut client = ManifestsClient::new(client::channel(global).await?);
    let reply = client
        .get(proto::GetManifestRequest {
            kind: args.kind.clone(),
            name: args.name.clone().unwrap_or_default(),
            set: args.set.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    match global.output {
        Output::Json => {
            let documents: Vec<serde_json::Value> = reply
                .yaml
                .split("\n---\n")
                .map(|d| d.trim_start_matches("---\n"))
                .filter(|d| !d.trim().is_empty())
                .map(serde_norway::from_str)
                .collect::<Result<_, _>>()
                .context("the agent's YAML")?;
            output::json(&documents)?;
        }
        Output::Table | Output::Yaml => print!("{}", reply.yaml),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn stack(global: &GlobalArgs, command: &StackCommand) -> anyhow::Result<ExitCode> {
    match command {
        StackCommand::Deploy {
            compose_file,
            name,
            dry_run,
        } => {
            let stack = manifest::compose::read(compose_file, name)
                .map_err(|err| anyhow::anyhow!("nothing deployed: {err}"))?;
            for warning in &stack.warnings {
                eprintln!("warning: {warning}");
            }
            let request = proto::ApplyRequest {
                sources: vec![proto::PolicySource {
                    name: compose_file.display().to_string(),
                    yaml: stack.yaml,
                }],
                secret_values: stack.secret_values,
                dry_run: *dry_run,
                prune: true,
                set: format!("stack/{name}"),
            };
            send(global, request).await
        }
        StackCommand::Ls => {
            let mut client = ManifestsClient::new(client::channel(global).await?);
            let reply = client
                .list_sets(proto::ListSetsRequest {})
                .await?
                .into_inner();
            let stacks: Vec<(&str, &proto::SetInfo)> = reply
                .sets
                .iter()
                .filter_map(|s| s.name.strip_prefix("stack/").map(|n| (n, s)))
                .collect();
            match global.output {
                _ if global.quiet => output::names(stacks.iter().map(|(n, _)| *n)),
                Output::Json | Output::Yaml => {
                    let sets: Vec<&proto::SetInfo> = stacks.iter().map(|(_, s)| *s).collect();
                    output::document(global.output, &sets)?;
                }
                Output::Table => {
                    let mut table =
                        output::Table::new(&["name", "apps", "volumes", "secrets", "updated"]);
                    for (name, set) in &stacks {
                        table.row(vec![
                            (*name).to_owned(),
                            output::list_or_dash(&set.apps),
                            output::list_or_dash(&set.volumes),
                            output::list_or_dash(&set.secrets),
                            output::ago(set.updated_at_ms),
                        ]);
                    }
                    print!("{}", table.render());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StackCommand::Rm { name } => {
            let request = proto::ApplyRequest {
                prune: true,
                set: format!("stack/{name}"),
                ..proto::ApplyRequest::default()
            };
            send(global, request).await
        }
    }
}

async fn send(global: &GlobalArgs, request: proto::ApplyRequest) -> anyhow::Result<ExitCode> {
    let mut client = ManifestsClient::new(client::channel(global).await?);
    let events = client.apply(request).await?.into_inner();
    follow(global, events).await?;
    Ok(ExitCode::SUCCESS)
}

/// The values of `Secret` documents with `spec.valueFrom.file`, read here (the agent never
/// reads the client's files); relative paths are relative to the manifest's directory.
fn secret_values(manifest: &Manifest) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let mut values = HashMap::new();
    for secret in &manifest.secrets {
        let Some(spec) = &secret.document.spec else {
            continue;
        };
        let base = Path::new(&secret.at.file)
            .parent()
            .filter(|_| secret.at.file != "<stdin>")
            .unwrap_or(Path::new(""));
        let path = base.join(&spec.value_from.file);
        let value = std::fs::read(&path).with_context(|| {
            format!(
                "nothing applied: {}: cannot read spec.valueFrom.file {}",
                secret.at,
                path.display()
            )
        })?;
        if value.is_empty() {
            bail!(
                "nothing applied: {}: {} is empty",
                secret.at,
                path.display()
            );
        }
        values.insert(secret.document.metadata.name.clone(), value);
    }
    Ok(values)
}
