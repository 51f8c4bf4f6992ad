//! Connecting the CLI to an agent.

use anyhow::{Context as _, bail};
use tonic::transport::Channel;

use super::GlobalArgs;
use crate::{proto::agent_client::AgentClient, unix_channel};

pub async fn connect(global: &GlobalArgs) -> anyhow::Result<AgentClient<Channel>> {
    Ok(AgentClient::new(channel(global).await?))
}

/// A connected channel to the agent named by `--addr`.
pub async fn channel(global: &GlobalArgs) -> anyhow::Result<Channel> {
    let addr = global.addr.as_str();
    let channel = if let Some(path) = addr
        .strip_prefix("unix://")
        .or_else(|| addr.strip_prefix("unix:"))
    {
        unix_channel::connect(path)
            .await
            .map_err(|err| unreachable_error(addr, &err))?
    } else if addr.starts_with('/') {
        unix_channel::connect(addr)
            .await
            .map_err(|err| unreachable_error(addr, &err))?
    } else if addr.starts_with("http://") || addr.starts_with("https://") {
        tonic::transport::Endpoint::from_shared(addr.to_owned())
            .with_context(|| format!("invalid --addr {addr:?}"))?
            .connect()
            .await
            .map_err(|err| unreachable_error(addr, &err))?
    } else {
        bail!("invalid --addr {addr:?}: expected unix:PATH or https://HOST:PORT");
    };
    Ok(channel)
}

fn unreachable_error(addr: &str, err: &dyn std::error::Error) -> anyhow::Error {
    let mut cause = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        cause = err.to_string();
        source = err.source();
    }
    anyhow::anyhow!(
        "cannot reach the Hivemind agent at {addr}: {cause} (is `hivemind agent` running?)"
    )
}
