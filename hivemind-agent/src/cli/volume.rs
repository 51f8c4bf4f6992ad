//! `hivemind volume ...`.

use std::process::ExitCode;

use clap::Subcommand;

use super::{GlobalArgs, Output, app::action, client, output};
use crate::proto::{self, volumes_client::VolumesClient};

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a named volume.
    Create { name: String },
    /// List volumes with their size and the apps that mount them.
    #[command(alias = "list")]
    Ls,
    /// Remove a volume and its data (refused while an app mounts it).
    Rm { name: String },
}

pub async fn run(global: &GlobalArgs, command: &VolumeCommand) -> anyhow::Result<ExitCode> {
    let mut volumes = VolumesClient::new(client::channel(global).await?);
    match command {
        VolumeCommand::Create { name } => {
            let info = volumes
                .create(proto::VolumeRequest { name: name.clone() })
                .await?
                .into_inner();
            match global.output {
                Output::Json | Output::Yaml => output::document(global.output, &info)?,
                Output::Table => println!("Created volume {} at {}", info.name, info.path),
            }
        }
        VolumeCommand::Ls => {
            let reply = volumes
                .list(proto::ListVolumesRequest {})
                .await?
                .into_inner();
            match global.output {
                _ if global.quiet => output::names(reply.volumes.iter().map(|x| x.name.as_str())),
                Output::Json | Output::Yaml => output::document(global.output, &reply.volumes)?,
                Output::Table => {
                    let mut table =
                        output::Table::new(&["name", "node", "size", "used by", "created"]);
                    for v in &reply.volumes {
                        table.row(vec![
                            v.name.clone(),
                            v.node.clone(),
                            output::bytes(v.size_bytes),
                            output::list_or_dash(&v.used_by),
                            output::ago(v.created_at_ms),
                        ]);
                    }
                    print!("{}", table.render());
                }
            }
        }
        VolumeCommand::Rm { name } => {
            let reply = volumes
                .remove(proto::VolumeRequest { name: name.clone() })
                .await?
                .into_inner();
            action(global, &reply)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
