//! `hivemind events`: lifecycle events, past and (with `-f`) live.

use std::process::ExitCode;

use clap::Args;

use super::{GlobalArgs, client, output};
use crate::proto::{self, events_client::EventsClient};

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep streaming events as they happen.
    #[arg(short = 'f', long)]
    follow: bool,
    /// From this long ago (`10m`, `2h`) or this time (RFC 3339, e.g. 2026-12-07T10:00:00Z).
    /// Without -f the default is everything the records show; with -f, only what comes.
    #[arg(long, value_name = "DURATION|TIME", value_parser = super::since_arg)]
    since: Option<u64>,
}

pub async fn run(global: &GlobalArgs, args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let since_ms = args.since.unwrap_or(0);
    let mut client = EventsClient::new(client::channel(global).await?);
    let events = client
        .watch(proto::EventsRequest {
            follow: args.follow,
            since_ms,
        })
        .await?
        .into_inner();
    output::lines(global.output, events, render).await?;
    Ok(ExitCode::SUCCESS)
}

fn render(event: &proto::EventInfo) -> String {
    let exit = event
        .exit_code
        .map_or_else(String::new, |code| format!(" (exit code {code})"));
    let node = if event.node.is_empty() {
        "-"
    } else {
        &event.node
    };
    format!(
        "{}  {:<9} {:<11} {:<24} {:<12} {}{exit}",
        output::timestamp(event.at_ms),
        event.kind,
        event.action,
        event.name,
        node,
        event.message
    )
}
