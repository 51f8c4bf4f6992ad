//! `hivemind events`: the history the records show, then (with follow) every change of the
//! store as the events it means (see [`crate::events`]).

use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};

use super::AgentService;
use crate::{
    api::error::ApiError,
    events::{self, Event, Tracker},
    proto,
    store::EventKind,
};

/// The store prefix every event comes from.
const ROOT: &str = "/hivemind/";

impl AgentService {
    pub async fn events(
        &self,
        request: proto::EventsRequest,
    ) -> Result<ReceiverStream<proto::EventInfo>, ApiError> {
        let state = &self.parts().state;
        let store = state.store().clone();
        // One read of everything at one revision: the history, and where the watch begins.
        let (records, revision) = store.range(ROOT).await?;
        let mut tracker = Tracker::default();
        for kv in &records {
            tracker.seed(&kv.key, &kv.value);
        }
        let past = if request.follow && request.since_ms == 0 {
            Vec::new()
        } else {
            let rollouts: Vec<_> = state
                .rollouts()
                .await?
                .into_iter()
                .map(|(r, _)| r)
                .collect();
            events::history(
                &state.apps().await?,
                &state.containers().await?,
                &rollouts,
                &state.policies().await?,
                request.since_ms,
            )
        };
        let mut watch = if request.follow {
            Some(store.watch(ROOT, revision + 1).await?)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            for event in past {
                if tx.send(info(event)).await.is_err() {
                    return;
                }
            }
            let Some(watch) = watch.as_mut() else { return };
            loop {
                let change = tokio::select! {
                    change = watch.next() => change,
                    () = tx.closed() => return,
                };
                let Some(Ok(change)) = change else { return };
                let happened = match change.kind {
                    EventKind::Put => tracker.put(&change.kv.key, &change.kv.value),
                    EventKind::Delete => tracker.delete(&change.kv.key),
                };
                for event in happened {
                    if tx.send(info(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

fn info(event: Event) -> proto::EventInfo {
    proto::EventInfo {
        at_ms: event.at_ms,
        kind: event.kind.to_owned(),
        action: event.action.to_owned(),
        name: event.name,
        node: event.node,
        message: event.message,
        exit_code: event.exit_code,
    }
}
