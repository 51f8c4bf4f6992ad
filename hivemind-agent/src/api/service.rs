//! Transport-independent operations behind both the gRPC and the REST API.

use std::{sync::Arc, time::Instant};

use crate::{net::dataplane::DataplaneHandle, proto, runtime::Runtime, store::Store};

#[derive(Clone, Debug)]
pub struct AgentService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node_name: String,
    started: Instant,
    store: Store,
    runtime: Runtime,
    dataplane: DataplaneHandle,
}

impl AgentService {
    pub fn new(
        node_name: String,
        store: Store,
        runtime: Runtime,
        dataplane: DataplaneHandle,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                node_name,
                started: Instant::now(),
                store,
                runtime,
                dataplane,
            }),
        }
    }

    pub async fn health(&self) -> proto::HealthReply {
        let inner = &self.inner;
        let dataplane = inner.dataplane.status().await.unwrap_or_default();
        proto::HealthReply {
            version: crate::VERSION.into(),
            node_name: inner.node_name.clone(),
            uptime_seconds: inner.started.elapsed().as_secs(),
            store: Some(inner.store.status().await),
            runtime: Some(inner.runtime.status().await),
            dataplane: Some(dataplane),
        }
    }
}

impl proto::HealthReply {
    /// Healthy when every subsystem answers; the CLI's exit code and the REST status follow it.
    pub fn is_healthy(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.ok)
            && self.runtime.as_ref().is_some_and(|r| r.reachable)
    }
}
