//! Calls that must be answered by the node a container runs on (its usage comes from that
//! node's containerd, its log file lives in that node's data dir), forwarded over the
//! cluster's mutual-TLS node endpoint. The remote node answers from its own records, so a
//! forwarded call is never forwarded again.

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use super::{AgentService, LogQuery};
use crate::{
    api::error::{ApiError, ErrorKind},
    model::ContainerRecord,
    proto::{self, containers_client::ContainersClient},
};

impl AgentService {
    /// Whether `record`'s container runs on another node.
    pub(super) fn is_remote(&self, record: &ContainerRecord) -> bool {
        record.node != self.parts().node_name
    }

    async fn containers_client(
        &self,
        node: &str,
    ) -> Result<ContainersClient<tonic::transport::Channel>, ApiError> {
        let channel = self
            .parts()
            .cluster
            .client()
            .connect(node)
            .await
            .map_err(|err| {
                ApiError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "node {node}, where the container runs, cannot be reached: {}",
                        crate::error_chain(&err)
                    ),
                )
            })?;
        Ok(ContainersClient::new(channel))
    }

    /// `container-info` of a container on another node, asked of that node.
    pub(super) async fn remote_container(
        &self,
        record: &ContainerRecord,
    ) -> Result<proto::ContainerInfo, ApiError> {
        let mut client = self.containers_client(&record.node).await?;
        client
            .info(proto::ContainerRequest {
                container_id: record.id.clone(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| from_status(&record.node, &status))
    }

    /// The log of a container on another node, streamed from that node into `tx`.
    pub(super) async fn remote_logs(
        &self,
        record: &ContainerRecord,
        query: LogQuery,
        tx: &mpsc::Sender<Result<Vec<u8>, ApiError>>,
    ) -> Result<(), ApiError> {
        let mut client = self.containers_client(&record.node).await?;
        let mut stream = client
            .logs(proto::LogsRequest {
                container_id: record.id.clone(),
                follow: query.follow,
                tail: query.tail,
                since_ms: query.render.since_ms,
                timestamps: query.render.timestamps,
            })
            .await
            .map_err(|status| from_status(&record.node, &status))?
            .into_inner();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|status| from_status(&record.node, &status))?;
            if tx.send(Ok(chunk.data)).await.is_err() {
                break; // the caller went away
            }
        }
        Ok(())
    }
}

impl AgentService {
    /// An exec in a container on another node: `start` and the caller's input go there, what
    /// comes back goes to `tx`. The caller going away ends the call, which the remote node
    /// sees as its caller gone.
    pub(super) async fn remote_exec(
        &self,
        record: &ContainerRecord,
        start: proto::ExecStart,
        input: impl futures_util::Stream<Item = proto::ExecInput> + Send + Unpin + 'static,
        tx: &mpsc::Sender<Result<proto::ExecOutput, ApiError>>,
    ) -> Result<(), ApiError> {
        let mut client = self.containers_client(&record.node).await?;
        let first = proto::ExecInput {
            start: Some(start),
            ..Default::default()
        };
        let outbound = tokio_stream::once(first).chain(input);
        let mut stream = client
            .exec(outbound)
            .await
            .map_err(|status| from_status(&record.node, &status))?
            .into_inner();
        loop {
            let message = tokio::select! {
                message = stream.next() => message,
                () = tx.closed() => return Ok(()),
            };
            let Some(message) = message else {
                return Ok(());
            };
            let message = message.map_err(|status| from_status(&record.node, &status))?;
            if tx.send(Ok(message)).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// The remote node's answer as this node's error, saying which node said it.
fn from_status(node: &str, status: &tonic::Status) -> ApiError {
    let kind = match status.code() {
        tonic::Code::InvalidArgument => ErrorKind::Invalid,
        tonic::Code::NotFound => ErrorKind::NotFound,
        tonic::Code::AlreadyExists => ErrorKind::Conflict,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    };
    ApiError::new(kind, format!("node {node}: {}", status.message()))
}
