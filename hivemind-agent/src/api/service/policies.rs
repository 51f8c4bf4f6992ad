//! Network policies and metrics, as the API serves them.
//!
//! STAND-IN: the REST API and web UI were written against these signatures while the policy
//! service (store-backed, compiled into the datapath) was being written on another branch.
//! This version validates with the real parser and keeps the applied set in memory; it does
//! not program the datapath. At merge the other branch's implementation replaces this file.

use std::{collections::BTreeMap, fmt::Write as _};

use super::AgentService;
use crate::{
    api::error::{ApiError, ErrorKind},
    model::{ContainerState, now_ms},
    policy, proto, validate,
};

/// A stored policy: its parsed form and the YAML of its document.
#[derive(Debug, Clone)]
pub struct StoredPolicy {
    policy: policy::Policy,
    yaml: String,
    source: String,
    created_at_ms: u64,
    updated_at_ms: u64,
}

/// The applied policies, by name.
pub type PolicyBook = tokio::sync::RwLock<BTreeMap<String, StoredPolicy>>;

impl AgentService {
    /// Validates every document of `yaml` (named `source_name` in messages); applies all of them
    /// or, if any is invalid, none.
    pub async fn apply_policies(
        &self,
        source_name: &str,
        yaml: &str,
    ) -> Result<proto::ApplyPoliciesReply, ApiError> {
        let parsed = policy::parse_str(source_name, yaml)
            .map_err(|errors| ApiError::invalid(errors.to_string()))?;
        if parsed.is_empty() {
            return Err(ApiError::invalid(format!(
                "{source_name}: no NetworkPolicy documents"
            )));
        }
        let documents = split_documents(yaml);
        let now = now_ms();
        let mut book = self.inner.policies.write().await;
        let mut applied = Vec::new();
        for policy in parsed {
            let text = documents
                .iter()
                .find(|(name, _)| *name == policy.name)
                .map(|(_, text)| text.clone())
                .unwrap_or_default();
            let created_at_ms = book.get(&policy.name).map_or(now, |p| p.created_at_ms);
            applied.push(policy.name.clone());
            book.insert(
                policy.name.clone(),
                StoredPolicy {
                    policy,
                    yaml: text,
                    source: source_name.to_owned(),
                    created_at_ms,
                    updated_at_ms: now,
                },
            );
        }
        Ok(proto::ApplyPoliciesReply {
            message: format!(
                "Applied {} ({} policies)",
                applied.join(", "),
                applied.len()
            ),
            applied,
            warnings: Vec::new(),
        })
    }

    pub async fn policies(&self) -> Result<proto::ListPoliciesReply, ApiError> {
        let apps = self.parts().state.apps().await?;
        let book = self.inner.policies.read().await;
        Ok(proto::ListPoliciesReply {
            policies: book.values().map(|p| info(p, &apps)).collect(),
        })
    }

    pub async fn policy(&self, name: &str) -> Result<proto::PolicyInfo, ApiError> {
        validate::name("policy name", name)?;
        let apps = self.parts().state.apps().await?;
        let book = self.inner.policies.read().await;
        book.get(name)
            .map(|p| info(p, &apps))
            .ok_or_else(|| ApiError::not_found(format!("no policy named {name}")))
    }

    pub async fn remove_policy(&self, name: &str) -> Result<proto::ActionReply, ApiError> {
        validate::name("policy name", name)?;
        let mut book = self.inner.policies.write().await;
        if book.remove(name).is_none() {
            return Err(ApiError::not_found(format!("no policy named {name}")));
        }
        Ok(proto::ActionReply {
            message: format!("Removed policy {name}"),
        })
    }

    /// Prometheus text exposition of the agent's state and the datapath's counters.
    pub async fn metrics_text(&self) -> Result<String, ApiError> {
        let parts = self.parts();
        let apps = parts.state.apps().await?;
        let containers = parts.state.containers().await?;
        let volumes = parts.state.volumes().await?;
        let policies = self.inner.policies.read().await.len();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        gauge(
            "hivemind_up",
            "1 while the agent serves.",
            &[(String::new(), 1)],
        );
        gauge(
            "hivemind_uptime_seconds",
            "Seconds since the agent started.",
            &[(String::new(), self.inner.started.elapsed().as_secs())],
        );
        gauge(
            "hivemind_apps",
            "Apps in the desired state.",
            &[(String::new(), apps.len() as u64)],
        );
        let by_state: Vec<(String, u64)> = [
            ContainerState::Creating,
            ContainerState::Running,
            ContainerState::Stopping,
            ContainerState::Exited,
            ContainerState::Failed,
        ]
        .iter()
        .map(|state| {
            (
                format!("{{state=\"{}\"}}", state.as_str()),
                containers.iter().filter(|c| c.state == *state).count() as u64,
            )
        })
        .collect();
        gauge("hivemind_containers", "Containers by state.", &by_state);
        gauge(
            "hivemind_volumes",
            "Named volumes.",
            &[(String::new(), volumes.len() as u64)],
        );
        gauge(
            "hivemind_policies",
            "Network policies applied.",
            &[(String::new(), policies as u64)],
        );
        let runtime = parts.runtime.status().await;
        gauge(
            "hivemind_runtime_reachable",
            "1 when containerd answers.",
            &[(String::new(), u64::from(runtime.reachable))],
        );
        if let Ok(counters) = parts.dataplane.counters().await {
            let _ = writeln!(
                out,
                "# HELP hivemind_datapath_packets_total Packets by datapath verdict reason.\n# TYPE hivemind_datapath_packets_total counter"
            );
            for c in &counters {
                let _ = writeln!(
                    out,
                    "hivemind_datapath_packets_total{{reason=\"{}\"}} {}",
                    c.label, c.packets
                );
            }
            let _ = writeln!(
                out,
                "# HELP hivemind_datapath_bytes_total Bytes by datapath verdict reason.\n# TYPE hivemind_datapath_bytes_total counter"
            );
            for c in &counters {
                let _ = writeln!(
                    out,
                    "hivemind_datapath_bytes_total{{reason=\"{}\"}} {}",
                    c.label, c.bytes
                );
            }
        }
        if out.is_empty() {
            return Err(ApiError::new(ErrorKind::Internal, "no metrics"));
        }
        Ok(out)
    }
}

fn info(stored: &StoredPolicy, apps: &[crate::model::AppSpec]) -> proto::PolicyInfo {
    let policy = &stored.policy;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    proto::PolicyInfo {
        name: policy.name.clone(),
        selector: policy.selector.clone().into_iter().collect(),
        ingress_rules: count(policy.ingress.as_ref().map_or(0, Vec::len)),
        egress_rules: count(policy.egress.as_ref().map_or(0, Vec::len)),
        deny_rules: count(policy.deny.len()),
        yaml: stored.yaml.clone(),
        source: stored.source.clone(),
        selected_apps: apps
            .iter()
            .filter(|app| {
                let labels = app.selector_labels();
                policy
                    .selector
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
            })
            .map(|app| app.name.clone())
            .collect(),
        drops: 0,
        drop_bytes: 0,
        created_at_ms: stored.created_at_ms,
        updated_at_ms: stored.updated_at_ms,
    }
}

/// Each YAML document of `text` re-serialized, with its `metadata.name`.
fn split_documents(text: &str) -> Vec<(String, String)> {
    use serde::Deserialize as _;
    serde_norway::Deserializer::from_str(text)
        .filter_map(|doc| serde_norway::Value::deserialize(doc).ok())
        .filter_map(|value| {
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())?
                .to_owned();
            Some((name, serde_norway::to_string(&value).ok()?))
        })
        .collect()
}
