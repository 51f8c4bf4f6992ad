//! Cluster membership: the node list, joining, the join token.

use super::AgentService;
use crate::{api::error::ApiError, net::overlay_sync, proto};

impl AgentService {
    pub async fn list_nodes(&self) -> Result<proto::ListNodesReply, ApiError> {
        let mut nodes = self.parts().cluster.list_nodes().await?;
        self.annotate_tunnels(&mut nodes).await;
        Ok(proto::ListNodesReply { nodes })
    }

    /// This node's tunnel to each other node, from the dataplane's per-peer statistics.
    pub(super) async fn annotate_tunnels(&self, nodes: &mut [proto::NodeInfo]) {
        let parts = self.parts();
        let Some(settings) = parts.cluster.config() else {
            return;
        };
        match parts.dataplane.peer_stats().await {
            Ok(stats) => overlay_sync::annotate_tunnels(nodes, &stats, settings.vxlan_port),
            Err(err) => tracing::warn!(error = %err, "cannot read the overlay's peer statistics"),
        }
    }

    /// Joins this node to the cluster `host` belongs to; the agent restarts into it after
    /// answering.
    pub async fn join(&self, request: &proto::JoinRequest) -> Result<proto::JoinReply, ApiError> {
        if request.host.trim().is_empty() {
            return Err(ApiError::invalid(
                "the node to join through is missing: pass --host <any node's address>",
            ));
        }
        if request.token.trim().is_empty() {
            return Err(ApiError::invalid(
                "the join token is missing: pass --token, set HIVEMIND_TOKEN or use --token-file; get it with `hivemind cluster token` on a node of the cluster",
            ));
        }
        // No deploy, scale or removal while the node's store is about to change under it.
        let _change = self.inner.locks.everything().await;
        Ok(self
            .parts()
            .cluster
            .join(&request.host, &request.token)
            .await?)
    }

    pub async fn join_token(&self) -> Result<proto::TokenReply, ApiError> {
        Ok(self.parts().cluster.token().await?)
    }
}
