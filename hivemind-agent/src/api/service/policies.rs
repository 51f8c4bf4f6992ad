//! Network policies: apply (all or nothing), list, get, remove.

use std::collections::BTreeSet;

use super::AgentService;
use crate::{
    api::error::{ApiError, ErrorKind},
    model::{PolicyRecord, now_ms},
    net::network::{NetworkError, compile_records},
    policy::{self, Policy},
    proto,
};

impl From<NetworkError> for ApiError {
    fn from(err: NetworkError) -> Self {
        match err {
            NetworkError::Capacity(_) => Self::invalid(err.to_string()),
            NetworkError::Store(e) => e.into(),
            _ => Self::new(ErrorKind::Internal, err.to_string()),
        }
    }
}

/// What storing a set of policies changes (see [`AgentService::plan_policies`]).
#[derive(Debug, Default)]
pub(super) struct PolicyPlan {
    pub records: Vec<PolicyRecord>,
    pub created: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
    pub warnings: Vec<String>,
}

impl AgentService {
    /// Validates every document of every source; if any is wrong nothing changes and the error
    /// names each problem (file, document, field, reason). Otherwise stores the policies
    /// (replacing same-named ones) and loads the recompiled rule set in one swap.
    pub async fn apply_policies(
        &self,
        sources: &[proto::PolicySource],
    ) -> Result<proto::ApplyPoliciesReply, ApiError> {
        if sources.is_empty() || sources.iter().all(|s| s.yaml.trim().is_empty()) {
            return Err(ApiError::invalid("no policy documents given"));
        }
        let parsed =
            policy::parse_sources(sources.iter().map(|s| (s.name.as_str(), s.yaml.as_str())))
                .map_err(|errors| ApiError::invalid(format!("nothing applied:\n{errors}")))?;
        let _change = self.inner.locks.node().await;
        let plan = self
            .plan_policies(&parsed, sources, &BTreeSet::new())
            .await?;
        self.commit_policies(&plan).await?;
        let mut updated = plan.changed;
        updated.extend(plan.unchanged);
        Ok(proto::ApplyPoliciesReply {
            created: plan.created,
            updated,
            warnings: plan.warnings,
        })
    }

    /// The records `policies` become and what that does to the stored set (less `remove`),
    /// compiled whole: a set the datapath cannot hold is refused here. Nothing is stored.
    pub(super) async fn plan_policies(
        &self,
        policies: &[Policy],
        sources: &[proto::PolicySource],
        remove: &BTreeSet<String>,
    ) -> Result<PolicyPlan, ApiError> {
        let parts = self.parts();
        let existing = parts.state.policies().await?;
        let mut used: BTreeSet<u32> = existing.iter().map(|p| p.id).collect();
        let now = now_ms();
        let mut plan = PolicyPlan::default();
        for policy in policies {
            let yaml = to_yaml(policy)?;
            let id = if let Some(old) = existing.iter().find(|p| p.name == policy.name) {
                if old.yaml == yaml {
                    plan.unchanged.push(policy.name.clone());
                } else {
                    plan.changed.push(policy.name.clone());
                }
                old.id
            } else {
                let id = (1..hivemind_common::policy::MAX_POLICIES)
                    .find(|id| !used.contains(id))
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "at most {} policies",
                            hivemind_common::policy::MAX_POLICIES - 1
                        ))
                    })?;
                used.insert(id);
                plan.created.push(policy.name.clone());
                id
            };
            plan.records.push(PolicyRecord {
                name: policy.name.clone(),
                id,
                yaml,
                source: source_of(sources, policy),
                applied_at_ms: now,
            });
        }
        plan.removed = existing
            .iter()
            .filter(|p| remove.contains(&p.name))
            .map(|p| p.name.clone())
            .collect();

        // Compile the whole resulting set first: a set the datapath cannot hold changes nothing.
        let mut whole: Vec<PolicyRecord> = existing
            .into_iter()
            .filter(|old| !remove.contains(&old.name))
            .filter(|old| !plan.records.iter().any(|new| new.name == old.name))
            .collect();
        whole.extend(plan.records.iter().cloned());
        let apps = parts.state.apps().await?;
        let identities = parts.state.identities().await?;
        let (compiled, _) = compile_records(&whole, &apps, &identities)?;
        compiled
            .check_capacity()
            .map_err(|err| ApiError::invalid(format!("nothing applied: {err}")))?;
        plan.warnings = compiled.warnings;
        Ok(plan)
    }

    /// Stores a [`PolicyPlan`] and loads the recompiled rule set in one swap.
    pub(super) async fn commit_policies(&self, plan: &PolicyPlan) -> Result<(), ApiError> {
        let parts = self.parts();
        parts.state.put_policies(&plan.records).await?;
        for name in &plan.removed {
            parts.state.delete_policy(name).await?;
        }
        parts.network.load_policies().await?;
        Ok(())
    }

    pub async fn policies(&self) -> Result<proto::ListPoliciesReply, ApiError> {
        let parts = self.parts();
        let records = parts.state.policies().await?;
        let counters = parts.dataplane.policy_counters().await.unwrap_or_default();
        let apps = parts.state.apps().await?;
        let mut policies = Vec::with_capacity(records.len());
        for record in records {
            policies.push(info(&record, counters.get(&record.id).copied(), &apps)?);
        }
        Ok(proto::ListPoliciesReply { policies })
    }

    pub async fn policy(&self, name: &str) -> Result<proto::PolicyInfo, ApiError> {
        let parts = self.parts();
        let record = self.existing_policy(name).await?;
        let counters = parts.dataplane.policy_counters().await.unwrap_or_default();
        let apps = parts.state.apps().await?;
        info(&record, counters.get(&record.id).copied(), &apps)
    }

    pub async fn remove_policy(&self, name: &str) -> Result<proto::ActionReply, ApiError> {
        let _change = self.inner.locks.node().await;
        self.existing_policy(name).await?;
        let parts = self.parts();
        parts.state.delete_policy(name).await?;
        parts.network.load_policies().await?;
        Ok(proto::ActionReply {
            message: format!("Removed policy {name}"),
        })
    }

    async fn existing_policy(&self, name: &str) -> Result<PolicyRecord, ApiError> {
        crate::validate::name("policy name", name)?;
        self.parts()
            .state
            .policy(name)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no policy named {name}")))
    }
}

fn to_yaml(policy: &Policy) -> Result<String, ApiError> {
    serde_norway::to_string(&policy.to_document()).map_err(|err| {
        ApiError::new(
            ErrorKind::Internal,
            format!("encoding policy {}: {err}", policy.name),
        )
    })
}

/// The source a policy came from: names are unique across a valid set, so parsing each
/// source alone (which cannot fail once the whole set parsed) tells.
fn source_of(sources: &[proto::PolicySource], policy: &Policy) -> String {
    sources
        .iter()
        .find(|s| {
            policy::parse_str(&s.name, &s.yaml)
                .is_ok_and(|ps| ps.iter().any(|p| p.name == policy.name))
        })
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

fn info(
    record: &PolicyRecord,
    counter: Option<hivemind_common::Counter>,
    apps: &[crate::model::AppSpec],
) -> Result<proto::PolicyInfo, ApiError> {
    let parsed = policy::parse_str(&record.name, &record.yaml).map_err(|errors| {
        ApiError::new(
            ErrorKind::Internal,
            format!("stored policy {}: {errors}", record.name),
        )
    })?;
    let policy = parsed.into_iter().next().ok_or_else(|| {
        ApiError::new(
            ErrorKind::Internal,
            format!("stored policy {} is empty", record.name),
        )
    })?;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let selects = apps
        .iter()
        .filter(|app| {
            let labels = app.selector_labels();
            policy
                .selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .map(|app| app.name.clone())
        .collect();
    Ok(proto::PolicyInfo {
        name: record.name.clone(),
        id: record.id,
        selector: policy
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        ingress_rules: count(policy.ingress.as_ref().map_or(0, Vec::len)),
        egress_rules: count(policy.egress.as_ref().map_or(0, Vec::len)),
        deny_rules: count(policy.deny.len()),
        yaml: record.yaml.clone(),
        source: record.source.clone(),
        applied_at_ms: record.applied_at_ms,
        dropped_packets: counter.map_or(0, |c| c.packets),
        dropped_bytes: counter.map_or(0, |c| c.bytes),
        selects,
    })
}
