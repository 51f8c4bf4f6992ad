//! `hivemind health`.

use std::{fmt::Write as _, process::ExitCode};

use super::{EXIT_DEGRADED, GlobalArgs, Output, client, output};
use crate::proto;

pub async fn run(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(global).await?;
    let reply = client.health(proto::HealthRequest {}).await?.into_inner();
    match global.output {
        Output::Json | Output::Yaml => output::document(global.output, &reply)?,
        Output::Table => print!("{}", render(&reply)),
    }
    Ok(if reply.is_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DEGRADED)
    })
}

fn render(reply: &proto::HealthReply) -> String {
    let mut out = format!(
        "Agent      hivemind {} on node {}, up {}\n",
        reply.version,
        reply.node_name,
        output::duration(reply.uptime_seconds)
    );
    if let Some(store) = &reply.store {
        let state = if store.ok {
            "ok".to_owned()
        } else {
            format!("DOWN: {}", store.error)
        };
        let _ = writeln!(
            out,
            "Store      {} {} ({state})",
            store.backend, store.location
        );
    }
    if let Some(rt) = &reply.runtime {
        let state = if rt.reachable {
            format!("containerd {} (reachable)", rt.version)
        } else {
            format!("containerd DOWN: {}", rt.error)
        };
        let _ = writeln!(
            out,
            "Runtime    {state}, socket {}, namespace {}",
            rt.socket, rt.namespace
        );
    }
    if let Some(cluster) = &reply.cluster
        && cluster.mode == "cluster"
    {
        let ready = reply.nodes.iter().filter(|n| n.ready).count();
        let _ = writeln!(
            out,
            "Cluster    {} ({} of {} nodes ready), endpoint {}, etcd {}",
            cluster.cluster_id,
            ready,
            reply.nodes.len(),
            or_dash(&cluster.cluster_address),
            or_dash(&cluster.etcd_role)
        );
    }
    if let Some(dp) = &reply.dataplane {
        let _ = writeln!(
            out,
            "Network    subnet {} gateway {}, uplink {} ({}), {} endpoints, {} policies",
            or_dash(&dp.subnet),
            or_dash(&dp.gateway),
            or_dash(&dp.uplink),
            or_dash(&dp.node_ip),
            dp.endpoints,
            dp.policies
        );
        let _ = write!(
            out,
            "Dataplane  {} programs, pinned at {}\n\n",
            dp.programs.len(),
            dp.pin_path
        );
        let mut table = output::Table::new(&["program", "kind", "id", "attached"]);
        for p in &dp.programs {
            let attached = if p.attached.is_empty() {
                "-".to_owned()
            } else {
                p.attached.join(", ")
            };
            table.row(vec![
                p.name.clone(),
                p.kind.clone(),
                p.id.to_string(),
                attached,
            ]);
        }
        out += &table.render();
    }
    if !reply.nodes.is_empty() {
        out.push('\n');
        out += &super::cluster::render_nodes(&reply.nodes);
    }
    out
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() { "-" } else { value }
}
