//! `hivemind apply -f` and `hivemind stack deploy/rm`: a set of documents made true.
//!
//! 1. **Plan** (no change anywhere): parse every source, check every document against the
//!    store — references, host ports, service names, secret values, who owns what — and
//!    compile the policy set that would result. Any problem: nothing happens, every problem
//!    is named. A dry run stops here and answers the plan.
//! 2. **Prepare**: pull every image a new or changed app needs and check it makes a process,
//!    still before the first change.
//! 3. **Apply**, in dependency order: volumes, secrets, policies, new apps, changed apps
//!    (the health-gated rollout of `app update`), then — with prune — what the set had and
//!    the files no longer have, in reverse order.
//!
//! What a set applied is recorded (`model::AppliedSet`), so prune and `stack rm` remove only
//! that, and a resource belongs to one set at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::sync::mpsc;

use super::{AgentService, apps::validate_deploy, update::RolloutSettings};
use crate::{
    api::{
        error::{ApiError, ErrorKind},
        progress::Progress,
    },
    manifest::{self, Kind, Manifest},
    model::{AppSpec, AppliedSet, now_ms},
    policy::Location,
    proto,
    reconcile::MAX_SECRET_BYTES,
    runtime::image::ImageRef,
};

/// The set plain `hivemind apply` records into.
pub const DEFAULT_SET: &str = "default";
/// Stacks' sets are `stack/<NAME>`.
pub const STACK_PREFIX: &str = "stack/";

/// Everything one apply will do, decided before anything is done.
#[derive(Default)]
struct Plan {
    /// For people: `+ app web (...)`, `~ app api: image a -> b`, `- policy old`.
    lines: Vec<String>,
    unchanged: Vec<String>,
    volumes: Vec<String>,
    secrets: Vec<(String, Vec<u8>)>,
    /// Whether the policy set changes at all (then it is stored whole, with the removals).
    policies_change: bool,
    deploys: Vec<proto::DeployRequest>,
    updates: Vec<(AppSpec, RolloutSettings)>,
    remove_apps: Vec<String>,
    remove_policies: BTreeSet<String>,
    remove_secrets: Vec<String>,
    remove_volumes: Vec<String>,
    /// The set after a successful apply.
    set: AppliedSet,
    /// Whether `set` has other members than the set recorded before.
    set_changed: bool,
    /// The set while applying: before and after together, so a failure half-way leaves
    /// nothing that prune cannot find later.
    set_during: AppliedSet,
}

impl Plan {
    /// Volumes are created if missing; an existing one is left as it is.
    fn add_volumes(&mut self, manifest: &Manifest, stored: &BTreeSet<String>) {
        for volume in &manifest.volumes {
            let name = &volume.document.metadata.name;
            if stored.contains(name) {
                self.unchanged.push(format!("volume {name}"));
            } else {
                self.lines.push(format!("+ volume {name}"));
                self.volumes.push(name.clone());
            }
        }
    }

    fn add_removal_lines(&mut self) {
        let lines = (self.remove_apps.iter().map(|n| format!("- app {n}")))
            .chain(self.remove_policies.iter().map(|n| format!("- policy {n}")))
            .chain(self.remove_secrets.iter().map(|n| format!("- secret {n}")))
            .chain(
                self.remove_volumes
                    .iter()
                    .map(|n| format!("- volume {n} (its data is deleted)")),
            );
        self.lines.extend(lines.collect::<Vec<_>>());
    }

    /// The set while applying (before and after together) and after it (without prune,
    /// what it had stays in it).
    fn record_sets(&mut self, previous: &AppliedSet, prune: bool) {
        self.set_during = self.set.clone();
        for kind in Kind::ALL {
            let before = members_of(previous, kind).clone();
            members(&mut self.set_during, kind).extend(before.iter().cloned());
            if !prune {
                members(&mut self.set, kind).extend(before);
            }
            self.set_changed |= members_of(&self.set, kind) != members_of(previous, kind);
        }
    }

    fn changes(&self) -> usize {
        self.lines.len()
    }

    fn summary(&self, done: bool) -> String {
        let count = |sign: char| self.lines.iter().filter(|l| l.starts_with(sign)).count();
        let (add, change, remove) = (count('+'), count('~'), count('-'));
        if self.changes() == 0 {
            return format!(
                "unchanged: all {} resources are as the files say",
                self.unchanged.len()
            );
        }
        let (verb, words) = if done {
            ("applied", ["created", "changed", "removed"])
        } else {
            ("plan", ["to create", "to change", "to remove"])
        };
        format!(
            "{verb}: {add} {}, {change} {}, {remove} {}, {} unchanged",
            words[0],
            words[1],
            words[2],
            self.unchanged.len()
        )
    }
}

impl AgentService {
    pub async fn apply_manifest(
        &self,
        request: proto::ApplyRequest,
        progress: Option<mpsc::Sender<Progress>>,
    ) -> Result<proto::DeployResult, ApiError> {
        let set = set_name(&request.set)?;
        let given = request.sources.iter().any(|s| !s.yaml.trim().is_empty());
        let manifest = if given {
            manifest::parse_sources(
                request
                    .sources
                    .iter()
                    .map(|s| (s.name.as_str(), s.yaml.as_str())),
            )
            .map_err(|errors| ApiError::invalid(format!("nothing applied:\n{errors}")))?
        } else if request.prune {
            // `stack rm`: the empty set, pruned.
            if self.parts().state.applied_set(&set).await?.is_none() {
                return Err(ApiError::not_found(format!(
                    "no {} recorded",
                    describe(&set)
                )));
            }
            Manifest::default()
        } else {
            return Err(ApiError::invalid("no documents given"));
        };
        let plan = self.plan(&set, &manifest, &request).await?;
        let mut message = plan.lines.clone();
        if request.dry_run || plan.changes() == 0 {
            if !request.dry_run && plan.set_changed {
                // Nothing to do but taking over what is there: remember it for --prune.
                self.parts().state.put_applied_set(&plan.set).await?;
            }
            message.push(plan.summary(false));
            return Ok(result(&set, &message));
        }
        self.prepare(&plan, progress.as_ref()).await?;
        Box::pin(self.execute(&plan, &request.sources, progress.as_ref())).await?;
        message.push(plan.summary(true));
        Ok(result(&set, &message))
    }

    /// Step 1: see the module comment. Every problem of the set is reported together.
    async fn plan(
        &self,
        set_name: &str,
        manifest: &Manifest,
        request: &proto::ApplyRequest,
    ) -> Result<Plan, ApiError> {
        let state = &self.parts().state;
        let sets = state.applied_sets().await?;
        let previous = sets
            .iter()
            .find(|s| s.name == set_name)
            .cloned()
            .unwrap_or_default();
        let names = manifest.names();
        let mut problems = Vec::new();
        owners(set_name, &sets, &names, &mut problems);

        let mut plan = Plan {
            set: AppliedSet {
                name: set_name.to_owned(),
                updated_at_ms: now_ms(),
                ..AppliedSet::default()
            },
            ..Plan::default()
        };
        for (kind, list) in &names {
            members(&mut plan.set, *kind).extend(list.iter().cloned());
        }
        let stored_apps = state.apps().await?;
        let stored_volumes: BTreeSet<String> =
            state.volumes().await?.into_iter().map(|v| v.name).collect();
        let stored_secrets: BTreeSet<String> =
            state.secrets().await?.into_iter().map(|s| s.name).collect();

        // Removals first: whether a volume or secret may go depends on the apps that stay.
        let gone = |kind: Kind, stored: &dyn Fn(&str) -> bool| -> Vec<String> {
            let before = members_of(&previous, kind);
            let now = &names[&kind];
            before
                .iter()
                .filter(|name| request.prune && !now.contains(name) && stored(name))
                .cloned()
                .collect()
        };
        plan.remove_apps = gone(Kind::App, &|n| stored_apps.iter().any(|a| a.name == n));
        let stored_policies: BTreeSet<String> = state
            .policies()
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect();
        plan.remove_policies = gone(Kind::NetworkPolicy, &|n| stored_policies.contains(n))
            .into_iter()
            .collect();
        plan.remove_secrets = gone(Kind::Secret, &|n| stored_secrets.contains(n));
        plan.remove_volumes = gone(Kind::Volume, &|n| stored_volumes.contains(n));

        plan.add_volumes(manifest, &stored_volumes);
        self.plan_secrets(
            manifest,
            &stored_secrets,
            &request.secret_values,
            &mut plan,
            &mut problems,
        )
        .await;
        // Policies: the resulting set is compiled whole.
        if let Err(err) = self
            .plan_policy_set(manifest, &request.sources, &mut plan)
            .await
        {
            problems.push(err.message);
        }
        // Apps.
        let volumes_after: BTreeSet<&String> = stored_volumes
            .iter()
            .filter(|v| !plan.remove_volumes.contains(v))
            .chain(&names[&Kind::Volume])
            .collect();
        let secrets_after: BTreeSet<&String> = stored_secrets
            .iter()
            .filter(|s| !plan.remove_secrets.contains(s))
            .chain(&names[&Kind::Secret])
            .collect();
        let targets = self
            .plan_apps(
                manifest,
                &stored_apps,
                &volumes_after,
                &secrets_after,
                &mut plan,
                &mut problems,
            )
            .await;
        let suffix = self.parts().services.table().suffix().to_owned();
        check_what_stays(&stored_apps, &targets, &plan, &suffix, &mut problems);
        plan.add_removal_lines();
        if !problems.is_empty() {
            return Err(ApiError::invalid(format!(
                "nothing applied:\n  {}",
                problems.join("\n  ")
            )));
        }
        plan.record_sets(&previous, request.prune);
        Ok(plan)
    }

    /// Secrets of the set: created if missing (the value sent by the CLI), unchanged if the
    /// stored value is the same; values are compared, never shown.
    async fn plan_secrets(
        &self,
        manifest: &Manifest,
        stored_secrets: &BTreeSet<String>,
        values: &HashMap<String, Vec<u8>>,
        plan: &mut Plan,
        problems: &mut Vec<String>,
    ) {
        for secret in &manifest.secrets {
            let name = &secret.document.metadata.name;
            let value = values.get(name);
            let from_file = secret.document.spec.is_some();
            match (stored_secrets.contains(name), value) {
                (_, None) if from_file => problems.push(format!(
                    "{}: the value of spec.valueFrom.file was not sent (the hivemind CLI reads it)",
                    secret.at
                )),
                (true, Some(value)) => match self.parts().vault.open_secret(name).await {
                    Ok(stored) if stored == *value => {
                        plan.unchanged.push(format!("secret {name}"));
                    }
                    Ok(_) => problems.push(format!(
                        "{}: secret {name} exists with another value; secrets do not change in place: give the new value a new name (see docs/secrets.md, rotating)",
                        secret.at
                    )),
                    Err(err) => problems.push(format!("{}: {err}", secret.at)),
                },
                (true, None) => plan.unchanged.push(format!("secret {name}")),
                (false, Some(value)) => {
                    if value.is_empty() || value.len() > MAX_SECRET_BYTES {
                        problems.push(format!(
                            "{}: secret {name}: the value is {} bytes; 1 to {MAX_SECRET_BYTES} are allowed",
                            secret.at,
                            value.len()
                        ));
                    }
                    plan.lines.push(format!("+ secret {name}"));
                    plan.secrets.push((name.clone(), value.clone()));
                }
                (false, None) => problems.push(format!(
                    "{}: secret {name} does not exist: create it with `hivemind secret create {name}` or give spec.valueFrom.file",
                    secret.at
                )),
            }
        }
    }

    /// Apps of the set: new, changed or unchanged, each checked for what it references;
    /// returns each app's resulting spec with where it was read.
    async fn plan_apps(
        &self,
        manifest: &Manifest,
        stored_apps: &[AppSpec],
        volumes_after: &BTreeSet<&String>,
        secrets_after: &BTreeSet<&String>,
        plan: &mut Plan,
        problems: &mut Vec<String>,
    ) -> Vec<(Location, AppSpec)> {
        let mut targets = Vec::new();
        for app in &manifest.apps {
            let at = &app.at;
            let request = match app.document.to_request() {
                Ok(request) => request,
                Err(message) => {
                    problems.push(format!("{at}: {message}"));
                    continue;
                }
            };
            let rollout = match rollout_settings(&request) {
                Ok(rollout) => rollout,
                Err(err) => {
                    problems.push(format!("{at}: {err}"));
                    continue;
                }
            };
            let mut target = match validate_deploy(&request) {
                Ok(spec) => spec,
                Err(err) => {
                    problems.push(format!("{at}: {err}"));
                    continue;
                }
            };
            if let Ok(image) = ImageRef::parse(&target.image) {
                target.image = image.name();
            }
            for mount in &target.volumes {
                if !volumes_after.contains(&mount.volume) {
                    problems.push(format!(
                        "{at}: volume {} does not exist and is not in the files",
                        mount.volume
                    ));
                }
            }
            for mount in &target.secrets {
                if !secrets_after.contains(&mount.secret) {
                    problems.push(format!(
                        "{at}: secret {} does not exist and is not in the files",
                        mount.secret
                    ));
                }
            }
            match stored_apps.iter().find(|a| a.name == target.name) {
                None => {
                    plan.lines.push(format!(
                        "+ app {} ({}, {} replica{})",
                        target.name,
                        target.image,
                        target.replicas,
                        if target.replicas == 1 { "" } else { "s" }
                    ));
                    plan.deploys.push(request);
                }
                Some(current) => {
                    carry_over(current, &mut target);
                    let changed = super::update::changes(current, &target);
                    if changed.is_empty() {
                        plan.unchanged.push(format!("app {}", target.name));
                    } else {
                        if let Err(err) = self.check_no_rollout(&target.name).await {
                            problems.push(format!("{at}: {err}"));
                        }
                        plan.lines
                            .push(format!("~ app {}: {}", target.name, changed.join(", ")));
                        plan.updates.push((target.clone(), rollout));
                    }
                }
            }
            targets.push((at.clone(), target));
        }
        targets
    }

    /// The policy documents' part of the plan (the set that results compiled whole).
    async fn plan_policy_set(
        &self,
        manifest: &Manifest,
        sources: &[proto::PolicySource],
        plan: &mut Plan,
    ) -> Result<(), ApiError> {
        let policies = self
            .plan_policies(&manifest.policies, sources, &plan.remove_policies)
            .await?;
        plan.lines
            .extend(policies.created.iter().map(|n| format!("+ policy {n}")));
        plan.lines
            .extend(policies.changed.iter().map(|n| format!("~ policy {n}")));
        plan.unchanged
            .extend(policies.unchanged.iter().map(|n| format!("policy {n}")));
        plan.policies_change = !policies.created.is_empty()
            || !policies.changed.is_empty()
            || !policies.removed.is_empty();
        Ok(())
    }

    /// Step 2: every image pulled and checked before the first change.
    async fn prepare(
        &self,
        plan: &Plan,
        progress: Option<&mpsc::Sender<Progress>>,
    ) -> Result<(), ApiError> {
        let images = plan
            .deploys
            .iter()
            .map(|d| {
                validate_deploy(d).map(|mut spec| {
                    spec.image =
                        ImageRef::parse(&spec.image).map_or(spec.image.clone(), |i| i.name());
                    spec
                })
            })
            .chain(plan.updates.iter().map(|(spec, _)| Ok(spec.clone())));
        for spec in images {
            let mut spec = spec?;
            let image = self.pull(&spec.image, false, progress).await?;
            self.check_image_settings(&mut spec, &image)
                .await
                .map_err(|err| ApiError::invalid(format!("app {}: {err}", spec.name)))?;
        }
        Ok(())
    }

    /// Step 3, in dependency order; stops at the first failure (a failed new app leaves
    /// nothing, a failed rollout is rolled back) and says what was done before it.
    async fn execute(
        &self,
        plan: &Plan,
        sources: &[proto::PolicySource],
        progress: Option<&mpsc::Sender<Progress>>,
    ) -> Result<(), ApiError> {
        let state = &self.parts().state;
        state.put_applied_set(&plan.set_during).await?;
        let mut done: Vec<String> = Vec::new();
        let step = async |done: &mut Vec<String>, what: String| {
            if let Some(progress) = progress {
                let _ = progress.send(Progress::Apply(what.clone())).await;
            }
            done.push(what);
        };
        let failed = |done: &[String], err: ApiError| {
            let before = if done.is_empty() {
                "nothing was changed".to_owned()
            } else {
                format!("done before it: {}", done.join(", "))
            };
            ApiError::new(err.kind, format!("{} ({before})", err.message))
        };
        for name in &plan.volumes {
            self.create_volume(name)
                .await
                .map_err(|e| failed(&done, e))?;
            step(&mut done, format!("created volume {name}")).await;
        }
        for (name, value) in &plan.secrets {
            self.create_secret(name, value)
                .await
                .map_err(|e| failed(&done, e))?;
            step(&mut done, format!("created secret {name}")).await;
        }
        if plan.policies_change {
            let _change = self.inner.locks.node().await;
            let parsed = crate::policy::parse_policy_documents(
                sources.iter().map(|s| (s.name.as_str(), s.yaml.as_str())),
            )
            .map_err(|errors| ApiError::invalid(format!("nothing applied:\n{errors}")))?;
            let policies = self
                .plan_policies(&parsed, sources, &plan.remove_policies)
                .await
                .map_err(|e| failed(&done, e))?;
            self.commit_policies(&policies)
                .await
                .map_err(|e| failed(&done, e))?;
            step(&mut done, "applied policies".to_owned()).await;
        }
        for request in &plan.deploys {
            Box::pin(self.deploy(request.clone(), progress.cloned()))
                .await
                .map_err(|e| failed(&done, e))?;
            step(&mut done, format!("deployed app {}", request.name)).await;
        }
        for (target, rollout) in &plan.updates {
            self.replace_app(target.clone(), *rollout, progress.cloned())
                .await
                .map_err(|e| failed(&done, e))?;
            step(&mut done, format!("updated app {}", target.name)).await;
        }
        for name in &plan.remove_apps {
            self.remove_app(name).await.map_err(|e| failed(&done, e))?;
            step(&mut done, format!("removed app {name}")).await;
        }
        for name in &plan.remove_secrets {
            self.remove_secret(name)
                .await
                .map_err(|e| failed(&done, e))?;
            step(&mut done, format!("removed secret {name}")).await;
        }
        for name in &plan.remove_volumes {
            self.remove_volume(name)
                .await
                .map_err(|e| failed(&done, e))?;
            step(&mut done, format!("removed volume {name}")).await;
        }
        state.put_applied_set(&plan.set).await?;
        Ok(())
    }

    /// `hivemind get`: the stored resources as the documents `apply` takes.
    pub async fn get_manifest(
        &self,
        request: &proto::GetManifestRequest,
    ) -> Result<proto::GetManifestReply, ApiError> {
        let state = &self.parts().state;
        let kinds: Vec<Kind> = if request.kind == "all" || request.kind.is_empty() {
            Kind::ALL.to_vec()
        } else {
            vec![Kind::from_noun(&request.kind).ok_or_else(|| {
                ApiError::invalid(format!(
                    "unknown kind {:?}: expected app, volume, secret, policy or all",
                    request.kind
                ))
            })?]
        };
        let filter =
            if request.set.is_empty() {
                None
            } else {
                let name = set_name(&request.set)?;
                Some(state.applied_set(&name).await?.ok_or_else(|| {
                    ApiError::not_found(format!("no {} recorded", describe(&name)))
                })?)
            };
        let wanted = |kind: Kind, name: &str| {
            (request.name.is_empty() || request.name == name)
                && filter
                    .as_ref()
                    .is_none_or(|set| members_of(set, kind).contains(name))
        };
        let mut documents: Vec<String> = Vec::new();
        let mut push = |value: Result<String, serde_norway::Error>| -> Result<(), ApiError> {
            documents.push(value.map_err(|err| {
                ApiError::new(ErrorKind::Internal, format!("writing YAML: {err}"))
            })?);
            Ok(())
        };
        for kind in kinds {
            match kind {
                Kind::Volume => {
                    for volume in state.volumes().await? {
                        if wanted(kind, &volume.name) {
                            push(serde_norway::to_string(&manifest::VolumeDocument {
                                api_version: manifest::API_VERSION.to_owned(),
                                kind: kind.as_str().to_owned(),
                                metadata: manifest::Metadata { name: volume.name },
                            }))?;
                        }
                    }
                }
                Kind::Secret => {
                    for secret in state.secrets().await? {
                        if wanted(kind, &secret.name) {
                            push(serde_norway::to_string(&manifest::SecretDocument {
                                api_version: manifest::API_VERSION.to_owned(),
                                kind: kind.as_str().to_owned(),
                                metadata: manifest::Metadata { name: secret.name },
                                spec: None,
                            }))?;
                        }
                    }
                }
                Kind::NetworkPolicy => {
                    for policy in state.policies().await? {
                        if wanted(kind, &policy.name) {
                            push(Ok(policy.yaml))?;
                        }
                    }
                }
                Kind::App => {
                    for app in state.apps().await? {
                        if wanted(kind, &app.name) {
                            push(serde_norway::to_string(&manifest::app::document(&app)))?;
                        }
                    }
                }
            }
        }
        if documents.is_empty() && !request.name.is_empty() {
            return Err(ApiError::not_found(format!(
                "no {} named {}",
                request.kind, request.name
            )));
        }
        let yaml = documents.iter().fold(String::new(), |mut all, d| {
            all.push_str("---\n");
            all.push_str(d);
            all
        });
        Ok(proto::GetManifestReply { yaml })
    }

    pub async fn applied_sets(&self) -> Result<proto::ListSetsReply, ApiError> {
        let list = |items: &BTreeSet<String>| items.iter().cloned().collect();
        Ok(proto::ListSetsReply {
            sets: self
                .parts()
                .state
                .applied_sets()
                .await?
                .into_iter()
                .map(|s| proto::SetInfo {
                    apps: list(&s.apps),
                    volumes: list(&s.volumes),
                    secrets: list(&s.secrets),
                    policies: list(&s.policies),
                    name: s.name,
                    updated_at_ms: s.updated_at_ms,
                })
                .collect(),
        })
    }
}

fn result(set: &str, lines: &[String]) -> proto::DeployResult {
    proto::DeployResult {
        app: set.to_owned(),
        container_id: String::new(),
        container_ids: Vec::new(),
        message: lines.join("\n"),
    }
}

/// `""` → `default`; names are DNS labels, stacks `stack/<label>`.
fn set_name(given: &str) -> Result<String, ApiError> {
    let name = if given.is_empty() { DEFAULT_SET } else { given };
    let label = name.strip_prefix(STACK_PREFIX).unwrap_or(name);
    crate::validate::name("set name", label)?;
    Ok(name.to_owned())
}

fn describe(set: &str) -> String {
    match set.strip_prefix(STACK_PREFIX) {
        Some(stack) => format!("stack named {stack}"),
        None => format!("apply set named {set}"),
    }
}

fn members(set: &mut AppliedSet, kind: Kind) -> &mut BTreeSet<String> {
    match kind {
        Kind::App => &mut set.apps,
        Kind::Volume => &mut set.volumes,
        Kind::Secret => &mut set.secrets,
        Kind::NetworkPolicy => &mut set.policies,
    }
}

fn members_of(set: &AppliedSet, kind: Kind) -> &BTreeSet<String> {
    match kind {
        Kind::App => &set.apps,
        Kind::Volume => &set.volumes,
        Kind::Secret => &set.secrets,
        Kind::NetworkPolicy => &set.policies,
    }
}

/// A resource belongs to one set: another set's is refused, by name and owner.
fn owners(
    set_name: &str,
    sets: &[AppliedSet],
    names: &BTreeMap<Kind, Vec<String>>,
    problems: &mut Vec<String>,
) {
    for other in sets.iter().filter(|s| s.name != set_name) {
        for (kind, list) in names {
            for name in list
                .iter()
                .filter(|n| members_of(other, *kind).contains(*n))
            {
                problems.push(format!(
                    "{kind} {name} belongs to the {}; remove it there first",
                    describe(&other.name)
                ));
            }
        }
    }
}

/// What `apply` does not say and the stored app keeps: its generation and birth, and the
/// image's health check when the document names none.
fn carry_over(current: &AppSpec, target: &mut AppSpec) {
    target.generation = current.generation;
    target.created_at_ms = current.created_at_ms;
    target.updated_at_ms = current.updated_at_ms;
    if target.health.is_none() && !target.no_healthcheck && current.health_from_image {
        target.health.clone_from(&current.health);
        target.health_from_image = true;
    }
}

fn rollout_settings(request: &proto::DeployRequest) -> Result<RolloutSettings, ApiError> {
    crate::validate::parallel(request.parallel)?;
    Ok(RolloutSettings {
        parallel: request.parallel,
        deadline_ms: super::apps::rollout_timeout(&request.rollout_timeout)?,
        force_pull: false,
    })
}

/// A host port `target` publishes that another app of the resulting set publishes too.
fn port_clash(target: &AppSpec, others: &[AppSpec]) -> Option<String> {
    others.iter().find_map(|other| {
        target
            .ports
            .iter()
            .find(|p| {
                other
                    .ports
                    .iter()
                    .any(|o| o.host == p.host && o.protocol == p.protocol)
            })
            .map(|port| {
                format!(
                    "host port {}/{} is published by app {} too",
                    port.host,
                    port.protocol.as_str(),
                    other.name
                )
            })
    })
}

/// What stays after the apply must still have what it uses, and own its host ports and names.
fn check_what_stays(
    stored_apps: &[AppSpec],
    targets: &[(Location, AppSpec)],
    plan: &Plan,
    suffix: &str,
    problems: &mut Vec<String>,
) {
    let apps_after: Vec<AppSpec> = stored_apps
        .iter()
        .filter(|a| !plan.remove_apps.contains(&a.name))
        .filter(|a| !targets.iter().any(|(_, t)| t.name == a.name))
        .cloned()
        .chain(targets.iter().map(|(_, t)| t.clone()))
        .collect();
    for app in &apps_after {
        for mount in &app.volumes {
            if plan.remove_volumes.contains(&mount.volume) {
                problems.push(format!(
                    "volume {} cannot be pruned: app {} uses it",
                    mount.volume, app.name
                ));
            }
        }
        for mount in &app.secrets {
            if plan.remove_secrets.contains(&mount.secret) {
                problems.push(format!(
                    "secret {} cannot be pruned: app {} uses it",
                    mount.secret, app.name
                ));
            }
        }
    }
    for (at, target) in targets {
        let others: Vec<AppSpec> = apps_after
            .iter()
            .filter(|a| a.name != target.name)
            .cloned()
            .collect();
        if let Some(clash) = port_clash(target, &others) {
            problems.push(format!("{at}: {clash}"));
        }
        if let Some(clash) = crate::service::records::name_clash(target, &others, suffix) {
            problems.push(format!("{at}: {clash}"));
        }
    }
}
