//! `hivemind app logs`: one container's output as it is, or every replica of an app
//! interleaved line by line, each prefixed by its container id (as `docker service logs`).
//! Replicas on other nodes stream through this node's agent like local ones.

use std::io::Write as _;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use crate::proto::{self, containers_client::ContainersClient};

/// What to stream, and how much of what is there already.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub follow: bool,
    pub tail: u32,
    /// Milliseconds since the epoch; 0: from the start.
    pub since_ms: u64,
    pub timestamps: bool,
}

/// One container's output, byte for byte.
pub async fn container(
    containers: &mut ContainersClient<super::client::Transport>,
    id: &str,
    options: LogOptions,
) -> anyhow::Result<()> {
    let mut stream = containers.logs(request(id, options)).await?.into_inner();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        stdout
            .write_all(&chunk?.data)
            .context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
    }
    Ok(())
}

/// Every current replica of `app`, line by line, `ID | line`.
pub async fn app(
    containers: &mut ContainersClient<super::client::Transport>,
    app: &str,
    options: LogOptions,
) -> anyhow::Result<()> {
    let ids: Vec<String> = containers
        .list(proto::ListContainersRequest {
            app: app.to_owned(),
        })
        .await?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    if ids.is_empty() {
        anyhow::bail!("app {app} has no containers");
    }
    let width = ids.iter().map(String::len).max().unwrap_or(0);
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<(String, Vec<u8>)>>(256);
    for id in ids {
        let mut client = containers.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let sent = stream_lines(&mut client, &id, options, &tx).await;
            if let Err(err) = sent {
                let _ = tx.send(Err(err.context(format!("container {id}")))).await;
            }
        });
    }
    drop(tx);
    let mut stdout = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        let (id, line) = line?;
        write!(stdout, "{id:<width$} | ").context("writing to stdout")?;
        stdout.write_all(&line).context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
    }
    Ok(())
}

/// Sends `id`'s output as whole lines (a last line without a newline gets one).
async fn stream_lines(
    containers: &mut ContainersClient<super::client::Transport>,
    id: &str,
    options: LogOptions,
    tx: &mpsc::Sender<anyhow::Result<(String, Vec<u8>)>>,
) -> anyhow::Result<()> {
    let mut stream = containers.logs(request(id, options)).await?.into_inner();
    let mut pending = Vec::new();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk?.data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if tx.send(Ok((id.to_owned(), line))).await.is_err() {
                return Ok(());
            }
        }
    }
    if !pending.is_empty() {
        pending.push(b'\n');
        let _ = tx.send(Ok((id.to_owned(), pending))).await;
    }
    Ok(())
}

fn request(id: &str, options: LogOptions) -> proto::LogsRequest {
    proto::LogsRequest {
        container_id: id.to_owned(),
        follow: options.follow,
        tail: options.tail,
        since_ms: options.since_ms,
        timestamps: options.timestamps,
    }
}
