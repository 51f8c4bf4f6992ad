//! `hivemind join`, `hivemind node ls`, `hivemind cluster token`.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::{GlobalArgs, Output, client, output};
use crate::proto::{self, cluster_client::ClusterClient};

/// How long `hivemind join` waits for the agent to come back as a cluster node.
const RESTART_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Any node of the cluster: HOST or HOST:PORT of its cluster endpoint (port 7443 unless
    /// it runs with another `--cluster-port`).
    #[arg(long, value_name = "ADDR")]
    pub host: String,
    /// Read the join token from this file instead of --token.
    #[arg(long, env = "HIVEMIND_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// List the cluster's nodes: readiness, subnet, address, containers, etcd role.
    #[command(alias = "list")]
    Ls,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Print the join token new nodes need (`hivemind join --host ... --token ...`).
    Token,
}

/// The join token: `--token-file`, else `--token` / `HIVEMIND_TOKEN`.
fn join_token(global: &GlobalArgs, args: &JoinArgs) -> anyhow::Result<String> {
    if let Some(path) = &args.token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the join token from {}", path.display()))?;
        return Ok(token.trim().to_owned());
    }
    match global.token.as_deref().map(str::trim) {
        Some(token) if !token.is_empty() => Ok(token.to_owned()),
        _ => bail!(
            "no join token: pass --token TOKEN (or set HIVEMIND_TOKEN, or --token-file FILE); print it with `hivemind cluster token` on a node of the cluster"
        ),
    }
}

pub async fn join(global: &GlobalArgs, args: &JoinArgs) -> anyhow::Result<ExitCode> {
    let token = join_token(global, args)?;
    let mut cluster = ClusterClient::new(client::channel(global).await?);
    let reply = cluster
        .join(proto::JoinRequest {
            host: args.host.clone(),
            token,
        })
        .await?
        .into_inner();
    if global.output == Output::Table {
        println!(
            "Joined cluster {} through {}: node {}, subnet {}{}",
            reply.cluster_id,
            reply.joined_through,
            reply.node_name,
            reply.subnet,
            if reply.etcd_role.is_empty() {
                String::new()
            } else {
                format!(", etcd {}", reply.etcd_role)
            }
        );
        println!("Waiting for the agent to restart into the cluster...");
    }
    let node = wait_for_restart(global, &reply.node_name).await?;
    match global.output {
        Output::Json | Output::Yaml => output::document(global.output, &reply)?,
        Output::Table => println!(
            "Node {} is ready ({} node{} in the cluster)",
            reply.node_name,
            node,
            if node == 1 { "" } else { "s" }
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Polls the agent until it answers again and lists itself as a ready member; returns the
/// number of nodes.
async fn wait_for_restart(global: &GlobalArgs, node: &str) -> anyhow::Result<usize> {
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    // The old agent answers a little longer before it re-executes itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while start.elapsed() < RESTART_TIMEOUT {
        match client::channel(global).await {
            Ok(channel) => {
                match ClusterClient::new(channel)
                    .list_nodes(proto::ListNodesRequest {})
                    .await
                {
                    Ok(reply) => {
                        let nodes = reply.into_inner().nodes;
                        if nodes
                            .iter()
                            .any(|n| n.name == node && n.local && n.ready && n.state == "member")
                        {
                            return Ok(nodes.len());
                        }
                        last = "the node is not ready yet".into();
                    }
                    Err(status) => status.message().clone_into(&mut last),
                }
            }
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!(
        "the node joined, but its agent did not come back ready within {RESTART_TIMEOUT:?} ({last}); see its log"
    )
}

pub async fn node(global: &GlobalArgs, command: &NodeCommand) -> anyhow::Result<ExitCode> {
    let mut cluster = ClusterClient::new(client::channel(global).await?);
    match command {
        NodeCommand::Ls => {
            let reply = cluster
                .list_nodes(proto::ListNodesRequest {})
                .await?
                .into_inner();
            match global.output {
                _ if global.quiet => output::names(reply.nodes.iter().map(|x| x.name.as_str())),
                Output::Json | Output::Yaml => output::document(global.output, &reply.nodes)?,
                Output::Table => print!("{}", render_nodes(&reply.nodes)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cluster(global: &GlobalArgs, command: &ClusterCommand) -> anyhow::Result<ExitCode> {
    let mut cluster = ClusterClient::new(client::channel(global).await?);
    match command {
        ClusterCommand::Token => {
            let reply = cluster.token(proto::TokenRequest {}).await?.into_inner();
            match global.output {
                Output::Json | Output::Yaml => output::document(global.output, &reply)?,
                Output::Table => println!("{}", reply.token),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The node table (`node ls`, and `health`).
pub fn render_nodes(nodes: &[proto::NodeInfo]) -> String {
    let mut table = output::Table::new(&[
        "name",
        "ready",
        "subnet",
        "underlay ip",
        "containers",
        "etcd",
        "version",
        "joined",
    ]);
    for n in nodes {
        let ready = match (n.ready, n.state.as_str()) {
            (_, "joining") => "joining",
            (true, _) => "yes",
            (false, _) => "NO",
        };
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_owned()
            } else {
                s.to_owned()
            }
        };
        table.row(vec![
            if n.local {
                format!("{} (this node)", n.name)
            } else {
                n.name.clone()
            },
            ready.to_owned(),
            dash(&n.subnet),
            dash(&n.underlay_ip),
            n.containers.to_string(),
            dash(&n.etcd_role),
            dash(&n.version),
            output::ago(n.joined_at_ms),
        ]);
    }
    let mut out = table.render();
    let tunnels: Vec<_> = nodes
        .iter()
        .filter_map(|n| Some((n, n.tunnel.as_ref()?)))
        .collect();
    if !tunnels.is_empty() {
        let mut table = output::Table::new(&[
            "tunnel to",
            "remote ip",
            "vxlan",
            "sent",
            "received",
            "last sent",
            "last received",
        ]);
        for (n, t) in tunnels {
            let when = |ms: u64| {
                if ms == 0 {
                    "never".to_owned()
                } else {
                    output::ago(ms)
                }
            };
            table.row(vec![
                n.name.clone(),
                t.remote_ip.clone(),
                format!("udp/{} (vni = app identity)", t.vxlan_port),
                format!("{} pkts, {}", t.tx_packets, output::bytes(t.tx_bytes)),
                format!("{} pkts, {}", t.rx_packets, output::bytes(t.rx_bytes)),
                when(t.last_sent_ms),
                when(t.last_received_ms),
            ]);
        }
        out.push('\n');
        out += &table.render();
    }
    out
}
