//! Containers: list, inspect, logs.

use std::{
    io::SeekFrom,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncSeekExt as _},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;

use super::{AgentService, convert};
use crate::{
    api::error::{ApiError, ErrorKind},
    model::ContainerRecord,
    proto,
    runtime::log_file::{self, Render},
};

/// Which part of a container's log to stream, and how.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogQuery {
    pub follow: bool,
    /// The last N lines only (0: all).
    pub tail: u32,
    pub render: Render,
}

impl From<&proto::LogsRequest> for LogQuery {
    fn from(request: &proto::LogsRequest) -> Self {
        Self {
            follow: request.follow,
            tail: request.tail,
            render: Render {
                since_ms: request.since_ms,
                timestamps: request.timestamps,
            },
        }
    }
}

/// How often a followed log is checked for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// `tail` reads at most this much from the end of the log.
const TAIL_WINDOW: u64 = 4 << 20;
const CHUNK: usize = 64 << 10;

impl AgentService {
    pub async fn containers(&self, app: &str) -> Result<proto::ListContainersReply, ApiError> {
        let parts = self.parts();
        if !app.is_empty() {
            self.existing_app(app).await?;
        }
        let apps = parts.state.apps().await?;
        let mut records: Vec<ContainerRecord> = parts
            .state
            .containers()
            .await?
            .into_iter()
            .filter(|r| app.is_empty() || r.app == app)
            .collect();
        records.sort_by(|a, b| {
            (&a.app, a.slot, a.created_at_ms).cmp(&(&b.app, b.slot, b.created_at_ms))
        });
        let lost = self.lost_nodes().await?;
        let table = parts.services.table();
        let vips = parts.vips.all().await?;
        Ok(proto::ListContainersReply {
            containers: records
                .iter()
                .map(|r| {
                    let mut info = convert::container(r, apps.iter().find(|a| a.name == r.app));
                    if lost.contains(&r.node) {
                        mark_lost(&mut info);
                    }
                    convert::add_container_service(&mut info, table.service(&r.app));
                    info.vip = vips
                        .get(&r.app)
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    info
                })
                .collect(),
        })
    }

    pub async fn container(&self, id: &str) -> Result<proto::ContainerInfo, ApiError> {
        let parts = self.parts();
        let record = self.existing_container(id).await?;
        let remote = self.is_remote(&record);
        if remote {
            match self.remote_container(&record).await {
                // Its node is down or cut off: what the store knows, without live usage.
                Err(err) if err.kind == ErrorKind::Unavailable => {
                    tracing::debug!(container = id, "{err}");
                }
                answer => return answer,
            }
        }
        let app = parts.state.app(&record.app).await?.map(|(app, _)| app);
        let mut info = convert::container(&record, app.as_ref());
        convert::add_container_service(&mut info, parts.services.table().service(&record.app));
        info.vip = parts
            .vips
            .of(&record.app)
            .await?
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        if remote {
            if self.lost_nodes().await?.contains(&record.node) {
                mark_lost(&mut info);
            }
            return Ok(info);
        }
        info.log_path = self.log_path(id).display().to_string();
        // Usage is best effort: a stopped container or an unreachable containerd has none.
        if let Ok(Some(usage)) = parts.runtime.usage(id).await {
            info.usage = Some(proto::ResourceUsage {
                cpu_ns: usage.cpu_ns,
                memory_bytes: usage.memory_bytes,
                memory_limit_bytes: usage.memory_limit_bytes,
            });
        }
        Ok(info)
    }

    /// The container's output: the last `tail` lines (all if 0), then, with `follow`, new
    /// output as it is written, until the container is removed or the receiver goes away.
    pub async fn logs(
        &self,
        id: &str,
        query: LogQuery,
    ) -> Result<ReceiverStream<Result<Vec<u8>, ApiError>>, ApiError> {
        let record = self.existing_container(id).await?;
        let path = self.log_path(id);
        let (tx, rx) = mpsc::channel(16);
        let service = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let streamed = if service.is_remote(&record) {
                service.remote_logs(&record, query, &tx).await
            } else {
                stream_log(&service, &id, &path, query, &tx).await
            };
            if let Err(err) = streamed {
                let _ = tx.send(Err(err)).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    pub(super) async fn existing_container(&self, id: &str) -> Result<ContainerRecord, ApiError> {
        if id.is_empty()
            || id.len() > 128
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ApiError::invalid(format!("invalid container id {id:?}")));
        }
        self.parts()
            .state
            .container(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no container {id}")))
    }

    /// Nodes registered but not ready (their liveness lease expired): what their records say
    /// may no longer be true.
    pub(super) async fn lost_nodes(&self) -> Result<Vec<String>, ApiError> {
        let parts = self.parts();
        Ok(parts
            .state
            .cluster_nodes(&parts.node_name)
            .await?
            .into_iter()
            .filter(|(_, ready)| !ready)
            .map(|(name, _)| name)
            .collect())
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.parts().containers_dir.join(id).join("container.log")
    }
}

/// A container on a node that stopped reporting: its state is unknown (as Kubernetes shows
/// pods of a lost node) until the node returns and reconciles, or its slot moves elsewhere.
fn mark_lost(info: &mut proto::ContainerInfo) {
    info.state = "unknown".into();
    info.health = String::new();
    info.health_detail = format!("node {} is not ready", info.node);
}

async fn stream_log(
    service: &AgentService,
    id: &str,
    path: &Path,
    query: LogQuery,
    tx: &mpsc::Sender<Result<Vec<u8>, ApiError>>,
) -> Result<(), ApiError> {
    let io_error = |err: std::io::Error| {
        ApiError::new(
            ErrorKind::Internal,
            format!("reading {}: {err}", path.display()),
        )
    };
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        // Not written yet (the container is starting): nothing to show so far.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !query.follow => return Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            tokio::time::sleep(FOLLOW_POLL).await;
            tokio::fs::File::open(path).await.map_err(io_error)?
        }
        Err(err) => return Err(io_error(err)),
    };
    // Bytes read but not yet shown: the start of a line whose end is not written yet.
    let mut pending = Vec::new();
    if query.tail > 0 {
        let len = file.metadata().await.map_err(io_error)?.len();
        let start = len.saturating_sub(TAIL_WINDOW);
        file.seek(SeekFrom::Start(start)).await.map_err(io_error)?;
        file.read_to_end(&mut pending).await.map_err(io_error)?;
        pending.drain(..tail_start(&pending, query.tail as usize));
    }
    let mut buffer = vec![0; CHUNK];
    let mut idle_polls = 0u32;
    loop {
        let shown = render_lines(&mut pending, query.render);
        if !shown.is_empty() && tx.send(Ok(shown)).await.is_err() {
            return Ok(());
        }
        let read = file.read(&mut buffer).await.map_err(io_error)?;
        if read > 0 {
            pending.extend_from_slice(&buffer[..read]);
            idle_polls = 0;
            continue;
        }
        if !query.follow || tx.is_closed() {
            // A last line without its newline (output of a plain log file) is shown as well.
            if !pending.is_empty() {
                let mut shown = Vec::new();
                log_file::render(&pending, query.render, &mut shown);
                let _ = tx.send(Ok(shown)).await;
            }
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
        idle_polls += 1;
        // Once a second while idle: stop when the container is gone.
        if idle_polls.is_multiple_of(5)
            && matches!(service.parts().state.container(id).await, Ok(None))
        {
            return Ok(());
        }
    }
}

/// The output of every whole line in `pending`, which keeps what follows the last newline.
fn render_lines(pending: &mut Vec<u8>, render: Render) -> Vec<u8> {
    let mut shown = Vec::new();
    let mut start = 0;
    while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
        log_file::render(&pending[start..start + end], render, &mut shown);
        start += end + 1;
    }
    pending.drain(..start);
    shown
}

/// Byte offset where the last `lines` lines of `text` start.
fn tail_start(text: &[u8], lines: usize) -> usize {
    let end = if text.ends_with(b"\n") {
        text.len() - 1
    } else {
        text.len()
    };
    let mut seen = 0;
    for (i, byte) in text[..end].iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::tail_start;

    #[test]
    fn tails_lines() {
        let text = b"a\nb\nc\n";
        assert_eq!(&text[tail_start(text, 1)..], b"c\n");
        assert_eq!(&text[tail_start(text, 2)..], b"b\nc\n");
        assert_eq!(&text[tail_start(text, 9)..], b"a\nb\nc\n");
        assert_eq!(&b"x\ny"[tail_start(b"x\ny", 1)..], b"y");
    }
}
