//! `hivemind monitor`: verdict events live.

use std::{fmt::Write as _, process::ExitCode};

use clap::Args;

use super::{GlobalArgs, client, output};
use crate::proto::{self, monitor_client::MonitorClient};

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// Only flows from or to this app.
    #[arg(long)]
    app: Option<String>,
    /// all, drop or forward.
    #[arg(long, default_value = "all")]
    verdict: String,
}

pub async fn run(global: &GlobalArgs, args: &MonitorArgs) -> anyhow::Result<ExitCode> {
    let mut monitor = MonitorClient::new(client::channel(global).await?);
    let request = proto::MonitorRequest {
        app: args.app.clone().unwrap_or_default(),
        verdict: args.verdict.clone(),
    };
    let events = monitor.watch(request).await?.into_inner();
    output::lines(global.output, events, render).await?;
    Ok(ExitCode::SUCCESS)
}

fn render(e: &proto::FlowEvent) -> String {
    let endpoint = |app: &str, ip: &str, port: u32| {
        let addr = if port == 0 {
            ip.to_owned()
        } else {
            format!("{ip}:{port}")
        };
        format!("{app}/{addr}")
    };
    let mut line = format!(
        "{} {} {} -> {} {} {}",
        output::timestamp(e.time_ms),
        e.protocol,
        endpoint(&e.src_app, &e.src_ip, e.src_port),
        endpoint(&e.dst_app, &e.dst_ip, e.dst_port),
        e.verdict.to_uppercase(),
        e.reason
    );
    if !e.policy.is_empty() {
        let _ = write!(line, " policy={}", e.policy);
    }
    if !e.direction.is_empty() {
        let _ = write!(line, " ({})", e.direction);
    }
    line
}
