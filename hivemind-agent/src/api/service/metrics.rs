//! `/metrics`: Prometheus text exposition of the datapath's counters and the apps' state.

use std::fmt::Write as _;

use super::AgentService;
use crate::{api::error::ApiError, model::ContainerState};

impl AgentService {
    pub async fn metrics_text(&self) -> Result<String, ApiError> {
        let mut out = String::new();
        self.agent_metrics(&mut out).await;
        self.datapath_metrics(&mut out).await?;
        self.app_metrics(&mut out).await?;
        Ok(out)
    }

    async fn agent_metrics(&self, out: &mut String) {
        let parts = self.parts();

        let runtime = parts.runtime.status().await;
        let _ = writeln!(
            out,
            "# HELP hivemind_up The agent answers.\n# TYPE hivemind_up gauge\nhivemind_up 1\n\
             # HELP hivemind_uptime_seconds Seconds since the agent started.\n# TYPE hivemind_uptime_seconds gauge\nhivemind_uptime_seconds {}\n\
             # HELP hivemind_runtime_reachable Whether containerd answers.\n# TYPE hivemind_runtime_reachable gauge\nhivemind_runtime_reachable {}",
            self.inner.started.elapsed().as_secs(),
            u8::from(runtime.reachable)
        );
    }

    /// The eBPF programs' counters by outcome, and drops by policy.
    async fn datapath_metrics(&self, out: &mut String) -> Result<(), ApiError> {
        let parts = self.parts();
        let node = &parts.node_name;

        let counters = parts.dataplane.counters().await.unwrap_or_default();
        out.push_str("# HELP hivemind_datapath_packets_total Packets the eBPF programs handled, by outcome.\n");
        out.push_str("# TYPE hivemind_datapath_packets_total counter\n");
        for c in &counters {
            let _ = writeln!(
                out,
                "hivemind_datapath_packets_total{{node=\"{node}\",reason=\"{}\"}} {}",
                c.label, c.packets
            );
        }
        out.push_str(
            "# HELP hivemind_datapath_bytes_total Bytes the eBPF programs handled, by outcome.\n",
        );
        out.push_str("# TYPE hivemind_datapath_bytes_total counter\n");
        for c in &counters {
            let _ = writeln!(
                out,
                "hivemind_datapath_bytes_total{{node=\"{node}\",reason=\"{}\"}} {}",
                c.label, c.bytes
            );
        }

        let policies = parts.state.policies().await?;
        let by_policy = parts.dataplane.policy_counters().await.unwrap_or_default();
        out.push_str("# HELP hivemind_policy_dropped_packets_total Packets dropped by each network policy.\n");
        out.push_str("# TYPE hivemind_policy_dropped_packets_total counter\n");
        for (id, counter) in &by_policy {
            let name = policies
                .iter()
                .find(|p| p.id == *id)
                .map_or_else(|| format!("id-{id}"), |p| p.name.clone());
            let _ = writeln!(
                out,
                "hivemind_policy_dropped_packets_total{{node=\"{node}\",policy=\"{name}\"}} {}",
                counter.packets
            );
        }
        let _ = writeln!(
            out,
            "# HELP hivemind_policies Network policies applied.\n# TYPE hivemind_policies gauge\nhivemind_policies {}",
            policies.len()
        );
        Ok(())
    }

    async fn app_metrics(&self, out: &mut String) -> Result<(), ApiError> {
        let parts = self.parts();

        let apps = parts.state.apps().await?;
        let records = parts.state.containers().await?;
        let volumes = parts.state.volumes().await?;
        let _ = writeln!(
            out,
            "# HELP hivemind_apps Apps deployed.\n# TYPE hivemind_apps gauge\nhivemind_apps {}\n\
             # HELP hivemind_volumes Volumes created.\n# TYPE hivemind_volumes gauge\nhivemind_volumes {}",
            apps.len(),
            volumes.len()
        );
        out.push_str("# HELP hivemind_containers Containers in the cluster, by state.\n# TYPE hivemind_containers gauge\n");
        for state in [
            ContainerState::Creating,
            ContainerState::Running,
            ContainerState::Exited,
            ContainerState::Stopping,
            ContainerState::Failed,
        ] {
            let count = records.iter().filter(|r| r.state == state).count();
            let _ = writeln!(
                out,
                "hivemind_containers{{state=\"{}\"}} {count}",
                state.as_str()
            );
        }
        out.push_str("# HELP hivemind_app_replicas_desired Replicas each app asks for.\n# TYPE hivemind_app_replicas_desired gauge\n");
        for app in &apps {
            let _ = writeln!(
                out,
                "hivemind_app_replicas_desired{{app=\"{}\"}} {}",
                app.name, app.replicas
            );
        }
        out.push_str("# HELP hivemind_app_replicas_running Replicas of each app that run.\n# TYPE hivemind_app_replicas_running gauge\n");
        for app in &apps {
            let running = records
                .iter()
                .filter(|r| r.app == app.name && r.state == ContainerState::Running)
                .count();
            let _ = writeln!(
                out,
                "hivemind_app_replicas_running{{app=\"{}\"}} {running}",
                app.name
            );
        }
        out.push_str("# HELP hivemind_app_replicas_healthy Replicas of each app that pass their health check (running ones, for apps without a check).\n# TYPE hivemind_app_replicas_healthy gauge\n");
        for app in &apps {
            let healthy = records
                .iter()
                .filter(|r| r.app == app.name && crate::service::records::serves(r))
                .count();
            let _ = writeln!(
                out,
                "hivemind_app_replicas_healthy{{app=\"{}\"}} {healthy}",
                app.name
            );
        }
        out.push_str("# HELP hivemind_container_restarts_total Restarts of each container.\n# TYPE hivemind_container_restarts_total counter\n");
        for r in &records {
            let _ = writeln!(
                out,
                "hivemind_container_restarts_total{{app=\"{}\",container=\"{}\",node=\"{}\"}} {}",
                r.app, r.id, r.node, r.restart_count
            );
        }
        service_counters(out, &parts.node_name, parts.services.counters());
        Ok(())
    }
}

/// DNS queries by outcome and router responses by status class, since the agent started.
fn service_counters(out: &mut String, node: &str, counters: &crate::service::records::Counters) {
    use std::sync::atomic::Ordering::Relaxed;
    out.push_str("# HELP hivemind_dns_queries_total DNS queries the node answered, by outcome (answered: a service name; nxdomain: unknown name in a service zone; forwarded: relayed upstream; servfail: no upstream answered; error: malformed or unsupported).\n# TYPE hivemind_dns_queries_total counter\n");
    for (result, counter) in [
        ("answered", &counters.dns_answered),
        ("nxdomain", &counters.dns_nxdomain),
        ("forwarded", &counters.dns_forwarded),
        ("servfail", &counters.dns_servfail),
        ("error", &counters.dns_refused),
    ] {
        let _ = writeln!(
            out,
            "hivemind_dns_queries_total{{node=\"{node}\",result=\"{result}\"}} {}",
            counter.load(Relaxed)
        );
    }
    out.push_str("# HELP hivemind_router_requests_total Requests the HTTP router answered, by status class.\n# TYPE hivemind_router_requests_total counter\n");
    for (class, counter) in counters.http_responses.iter().enumerate().skip(1) {
        let _ = writeln!(
            out,
            "hivemind_router_requests_total{{node=\"{node}\",code=\"{class}xx\"}} {}",
            counter.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP hivemind_router_retries_total Idempotent requests retried on another replica.\n# TYPE hivemind_router_retries_total counter\nhivemind_router_retries_total{{node=\"{node}\"}} {}",
        counters.http_retries.load(Relaxed)
    );
}
