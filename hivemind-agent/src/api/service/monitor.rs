//! `hivemind monitor`: the datapath's verdict events, resolved to apps and policy names.

use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use hivemind_common::{
    event::VERDICT_DROPPED, event::VerdictEvent, identity, policy::DIRECTION_INGRESS, reason,
};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::AgentService;
use crate::{api::error::ApiError, proto};

/// How often the address → app table is refreshed while a monitor runs.
const RESOLVE_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VerdictFilter {
    All,
    Drop,
    Forward,
}

impl AgentService {
    /// Streams verdict events until the receiver goes away. Forwarded flows are reported only
    /// while someone asks for them (the datapath emits them only then).
    pub async fn monitor(
        &self,
        request: proto::MonitorRequest,
    ) -> Result<ReceiverStream<proto::FlowEvent>, ApiError> {
        let filter = match request.verdict.as_str() {
            "" | "all" => VerdictFilter::All,
            "drop" | "dropped" => VerdictFilter::Drop,
            "forward" | "forwarded" => VerdictFilter::Forward,
            other => {
                return Err(ApiError::invalid(format!(
                    "invalid verdict filter {other:?}: expected all, drop or forward"
                )));
            }
        };
        if !request.app.is_empty() {
            self.existing_app(&request.app).await?;
        }
        let parts = self.parts();
        let mut events = parts.dataplane.subscribe_events();
        let wants_forwarded = filter != VerdictFilter::Drop;
        if wants_forwarded {
            parts.network.monitor_forwarded(true).await?;
        }
        let (tx, rx) = mpsc::channel(256);
        let service = self.clone();
        tokio::spawn(async move {
            let mut names = Names::default();
            names.refresh(&service).await;
            let mut refreshed = tokio::time::Instant::now();
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = tx.closed() => break,
                };
                let event = match event {
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "monitor fell behind");
                        continue;
                    }
                    Err(RecvError::Closed) => break,
                };
                if refreshed.elapsed() > RESOLVE_REFRESH {
                    names.refresh(&service).await;
                    refreshed = tokio::time::Instant::now();
                }
                let flow = names.flow(&event);
                let dropped = event.verdict == VERDICT_DROPPED;
                let wanted = match filter {
                    VerdictFilter::All => true,
                    VerdictFilter::Drop => dropped,
                    VerdictFilter::Forward => !dropped,
                } && (request.app.is_empty()
                    || flow.src_app == request.app
                    || flow.dst_app == request.app);
                if wanted && tx.send(flow).await.is_err() {
                    break;
                }
            }
            if wants_forwarded
                && let Err(err) = service.parts().network.monitor_forwarded(false).await
            {
                tracing::warn!("switching forwarded events off: {err}");
            }
        });
        Ok(ReceiverStream::new(rx))
    }
}

/// Addresses, identities and policy ids as names.
#[derive(Default)]
struct Names {
    apps_by_ip: HashMap<Ipv4Addr, String>,
    apps_by_identity: HashMap<u32, String>,
    policies: HashMap<u32, String>,
    /// Offset from `CLOCK_MONOTONIC` (the datapath's clock) to wall-clock milliseconds.
    monotonic_to_wall_ms: i128,
}

impl Names {
    async fn refresh(&mut self, service: &AgentService) {
        let state = &service.parts().state;
        if let Ok(records) = state.containers().await {
            self.apps_by_ip = records
                .into_iter()
                .filter_map(|r| Some((r.ip?, r.app)))
                .collect();
        }
        if let Ok(identities) = state.identities().await {
            self.apps_by_identity = identities.into_iter().map(|(app, id)| (id, app)).collect();
        }
        if let Ok(policies) = state.policies().await {
            self.policies = policies.into_iter().map(|p| (p.id, p.name)).collect();
        }
        self.monotonic_to_wall_ms =
            i128::from(crate::model::now_ms()) - i128::from(monotonic_ns() / 1_000_000);
    }

    fn who(&self, ip: Ipv4Addr, identity: u32) -> String {
        if let Some(app) = self.apps_by_ip.get(&ip) {
            return app.clone();
        }
        match identity {
            identity::HOST => "host".into(),
            id if id >= identity::FIRST_CIDR => "cidr".into(),
            id => self
                .apps_by_identity
                .get(&id)
                .cloned()
                .unwrap_or_else(|| "world".into()),
        }
    }

    fn flow(&self, event: &VerdictEvent) -> proto::FlowEvent {
        let src = Ipv4Addr::from(event.saddr.to_ne_bytes());
        let dst = Ipv4Addr::from(event.daddr.to_ne_bytes());
        let wall = i128::from(event.timestamp_ns / 1_000_000) + self.monotonic_to_wall_ms;
        proto::FlowEvent {
            time_ms: u64::try_from(wall).unwrap_or(0),
            src_ip: src.to_string(),
            src_port: u32::from(event.sport),
            src_app: self.who(src, event.src_identity),
            dst_ip: dst.to_string(),
            dst_port: u32::from(event.dport),
            dst_app: self.who(dst, event.dst_identity),
            protocol: match event.protocol {
                1 => "icmp".into(),
                6 => "tcp".into(),
                17 => "udp".into(),
                other => other.to_string(),
            },
            verdict: if event.verdict == VERDICT_DROPPED {
                "dropped"
            } else {
                "forwarded"
            }
            .into(),
            reason: reason::label(event.reason).into(),
            policy: self
                .policies
                .get(&event.policy_id)
                .cloned()
                .unwrap_or_default(),
            direction: if event.reason == reason::DROPPED_POLICY || event.policy_id != 0 {
                if event.direction == DIRECTION_INGRESS {
                    "ingress"
                } else {
                    "egress"
                }
                .into()
            } else {
                String::new()
            },
            length: event.len,
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
