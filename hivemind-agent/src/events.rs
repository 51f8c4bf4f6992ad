//! `hivemind events`: what happened, derived from the store's records and their changes — no
//! second log to keep in step. Container histories (each start, exit with its code, restart),
//! health verdicts, app records (deployed, updated, removed), rollouts (their steps and
//! outcome), node liveness (ready, lost) and policies (applied, removed).
//!
//! [`Tracker`] is pure: it holds the last value of every record and turns each store change
//! into the events it means; [`history`] turns the records as they are into the past events
//! they still show.

use std::collections::HashMap;

use serde::de::DeserializeOwned;

use crate::{
    model::{AppSpec, ContainerRecord, ContainerState, PolicyRecord, keys, now_ms},
    reconcile::rollout::Rollout,
};

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub at_ms: u64,
    /// `app`, `container`, `rollout`, `node`, `policy`.
    pub kind: &'static str,
    /// `deployed`, `updated`, `removed`, `started`, `exited`, `failed`, `healthy`,
    /// `unhealthy`, `step`, `done`, `rolled-back`, `ready`, `lost`, `applied`.
    pub action: &'static str,
    pub name: String,
    /// The node it happened on, when it is one node's.
    pub node: String,
    pub message: String,
    pub exit_code: Option<i32>,
}

/// The last value of every record the events come from.
#[derive(Debug, Default)]
pub struct Tracker {
    apps: HashMap<String, AppSpec>,
    containers: HashMap<String, ContainerRecord>,
    rollouts: HashMap<String, Rollout>,
    policies: HashMap<String, PolicyRecord>,
}

impl Tracker {
    /// Takes `key` as it is now without reporting it (the state a live stream starts from).
    pub fn seed(&mut self, key: &str, value: &[u8]) {
        let _ = self.put(key, value);
    }

    /// What writing `value` at `key` means.
    pub fn put(&mut self, key: &str, value: &[u8]) -> Vec<Event> {
        if let Some(name) = key.strip_prefix(keys::APPS) {
            let Some(app) = parse::<AppSpec>(value) else {
                return Vec::new();
            };
            let old = self.apps.insert(name.to_owned(), app.clone());
            return match old {
                None => vec![app_event(&app, "deployed", app.created_at_ms)],
                Some(old) => {
                    let changes = crate::api::service::changes(&old, &app);
                    if changes.is_empty() {
                        return Vec::new();
                    }
                    let mut event = app_event(&app, "updated", app.updated_at_ms.max(1));
                    event.message = changes.join(", ");
                    vec![event]
                }
            };
        }
        if let Some(id) = key.strip_prefix(keys::CONTAINERS) {
            let Some(record) = parse::<ContainerRecord>(value) else {
                return Vec::new();
            };
            let old = self.containers.insert(id.to_owned(), record.clone());
            return container_events(old.as_ref(), &record);
        }
        if let Some(app) = key.strip_prefix(keys::ROLLOUTS) {
            let Some(rollout) = parse::<Rollout>(value) else {
                return Vec::new();
            };
            let old = self.rollouts.insert(app.to_owned(), rollout.clone());
            return rollout_events(old.as_ref(), &rollout);
        }
        if let Some(node) = key.strip_prefix(keys::LIVENESS) {
            return vec![node_event(node, "ready", "the node reports in")];
        }
        if let Some(name) = key.strip_prefix(keys::POLICIES) {
            let Some(policy) = parse::<PolicyRecord>(value) else {
                return Vec::new();
            };
            let changed = self
                .policies
                .insert(name.to_owned(), policy.clone())
                .is_none_or(|old| old.yaml != policy.yaml);
            return if changed {
                vec![Event {
                    at_ms: policy.applied_at_ms,
                    kind: "policy",
                    action: "applied",
                    name: policy.name.clone(),
                    node: String::new(),
                    message: format!("from {}", policy.source),
                    exit_code: None,
                }]
            } else {
                Vec::new()
            };
        }
        Vec::new()
    }

    /// What deleting `key` means.
    pub fn delete(&mut self, key: &str) -> Vec<Event> {
        let removed = |kind, name: &str, node: String, message: &str| Event {
            at_ms: now_ms(),
            kind,
            action: "removed",
            name: name.to_owned(),
            node,
            message: message.to_owned(),
            exit_code: None,
        };
        if let Some(name) = key.strip_prefix(keys::APPS) {
            return self
                .apps
                .remove(name)
                .map(|_| removed("app", name, String::new(), ""))
                .into_iter()
                .collect();
        }
        if let Some(id) = key.strip_prefix(keys::CONTAINERS) {
            return self
                .containers
                .remove(id)
                .map(|r| removed("container", id, r.node, &format!("app {}", r.app)))
                .into_iter()
                .collect();
        }
        if let Some(name) = key.strip_prefix(keys::POLICIES) {
            return self
                .policies
                .remove(name)
                .map(|_| removed("policy", name, String::new(), ""))
                .into_iter()
                .collect();
        }
        if let Some(app) = key.strip_prefix(keys::ROLLOUTS) {
            self.rollouts.remove(app);
        }
        if let Some(node) = key.strip_prefix(keys::LIVENESS) {
            return vec![node_event(
                node,
                "lost",
                "stopped reporting; its replicas move to other nodes",
            )];
        }
        Vec::new()
    }
}

/// The past events the records still show (container histories, app and policy times,
/// rollout steps), oldest first, from `since_ms` on.
pub fn history(
    apps: &[AppSpec],
    containers: &[ContainerRecord],
    rollouts: &[Rollout],
    policies: &[PolicyRecord],
    since_ms: u64,
) -> Vec<Event> {
    let mut tracker = Tracker::default();
    let mut events = Vec::new();
    for app in apps {
        events.push(app_event(app, "deployed", app.created_at_ms));
        if app.updated_at_ms > app.created_at_ms {
            events.push(app_event(app, "updated", app.updated_at_ms));
        }
    }
    for record in containers {
        events.extend(container_events(None, record));
    }
    for rollout in rollouts {
        events.extend(rollout_events(None, rollout));
    }
    for policy in policies {
        let value = serde_json::to_vec(policy).unwrap_or_default();
        events.extend(tracker.put(&keys::policy(&policy.name), &value));
    }
    events.retain(|e| e.at_ms >= since_ms);
    events.sort_by_key(|e| e.at_ms);
    events
}

fn parse<T: DeserializeOwned>(value: &[u8]) -> Option<T> {
    serde_json::from_slice(value).ok()
}

fn app_event(app: &AppSpec, action: &'static str, at_ms: u64) -> Event {
    Event {
        at_ms,
        kind: "app",
        action,
        name: app.name.clone(),
        node: String::new(),
        message: format!(
            "{}, {} replica{}",
            app.image,
            app.replicas,
            if app.replicas == 1 { "" } else { "s" }
        ),
        exit_code: None,
    }
}

fn node_event(node: &str, action: &'static str, message: &str) -> Event {
    Event {
        at_ms: now_ms(),
        kind: "node",
        action,
        name: node.to_owned(),
        node: node.to_owned(),
        message: message.to_owned(),
        exit_code: None,
    }
}

/// The history entries `record` has and `old` had not, and a changed health verdict.
fn container_events(old: Option<&ContainerRecord>, record: &ContainerRecord) -> Vec<Event> {
    let seen = old.map_or(0, |o| o.history.last().map_or(0, |c| c.at_ms));
    let seen_count = old.map_or(0, |o| o.history.iter().filter(|c| c.at_ms == seen).count());
    let mut at_seen = 0;
    let mut events = Vec::new();
    for change in &record.history {
        if change.at_ms < seen {
            continue;
        }
        if change.at_ms == seen && old.is_some() {
            at_seen += 1;
            if at_seen <= seen_count {
                continue;
            }
        }
        let action = match change.state {
            ContainerState::Creating => "created",
            ContainerState::Running => "started",
            ContainerState::Exited => "exited",
            ContainerState::Stopping => "stopping",
            ContainerState::Failed => "failed",
        };
        events.push(Event {
            at_ms: change.at_ms,
            kind: "container",
            action,
            name: record.id.clone(),
            node: record.node.clone(),
            message: format!("app {}: {}", record.app, change.message),
            exit_code: change.exit_code,
        });
    }
    if let Some(old) = old
        && old.health != record.health
        && let Some(health) = record.health
        && health != crate::model::Health::Starting
    {
        events.push(Event {
            at_ms: now_ms(),
            kind: "container",
            action: health.as_str(),
            name: record.id.clone(),
            node: record.node.clone(),
            message: if record.health_detail.is_empty() {
                format!("app {}", record.app)
            } else {
                format!("app {}: {}", record.app, record.health_detail)
            },
            exit_code: None,
        });
    }
    events
}

/// The steps `rollout` recorded since `old`, and its end.
fn rollout_events(old: Option<&Rollout>, rollout: &Rollout) -> Vec<Event> {
    let same = old.is_some_and(|o| o.started_at_ms == rollout.started_at_ms);
    let seen = if same {
        old.and_then(|o| o.events.last()).map_or(0, |e| e.seq)
    } else {
        0
    };
    let event = |at_ms, action, message: String| Event {
        at_ms,
        kind: "rollout",
        action,
        name: rollout.app.clone(),
        node: String::new(),
        message,
        exit_code: None,
    };
    let mut events: Vec<Event> = rollout
        .events
        .iter()
        .filter(|e| e.seq > seen)
        .map(|e| event(e.at_ms, "step", e.message.clone()))
        .collect();
    let ended = |r: &Rollout| r.finished_at_ms.is_some();
    if ended(rollout) && !(same && old.is_some_and(ended)) {
        let at = rollout.finished_at_ms.unwrap_or_default();
        match rollout.phase {
            crate::reconcile::rollout::Phase::RolledBack => events.push(event(
                at,
                "rolled-back",
                format!("generation {}: {}", rollout.generation, rollout.reason),
            )),
            _ => events.push(event(
                at,
                "done",
                format!("generation {} everywhere", rollout.generation),
            )),
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StatusChange;

    fn record(history: &[(u64, ContainerState, Option<i32>)]) -> ContainerRecord {
        ContainerRecord {
            id: "web-1".into(),
            app: "web".into(),
            node: "n1".into(),
            history: history
                .iter()
                .map(|(at_ms, state, exit_code)| StatusChange {
                    at_ms: *at_ms,
                    state: *state,
                    exit_code: *exit_code,
                    message: String::new(),
                })
                .collect(),
            ..ContainerRecord::default()
        }
    }

    #[test]
    fn a_container_exit_and_restart_are_two_events_once_each() {
        let mut tracker = Tracker::default();
        let key = keys::container("web-1");
        let json = |r: &ContainerRecord| serde_json::to_vec(r).expect("json");
        let started = record(&[(1, ContainerState::Running, None)]);
        tracker.seed(&key, &json(&started));
        let exited = record(&[
            (1, ContainerState::Running, None),
            (5, ContainerState::Exited, Some(137)),
        ]);
        let events = tracker.put(&key, &json(&exited));
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].action, events[0].exit_code),
            ("exited", Some(137))
        );
        let restarted = record(&[
            (1, ContainerState::Running, None),
            (5, ContainerState::Exited, Some(137)),
            (5, ContainerState::Running, None),
        ]);
        let events = tracker.put(&key, &json(&restarted));
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].action, "started");
        assert_eq!(tracker.put(&key, &json(&restarted)), Vec::<Event>::new());
        assert_eq!(tracker.delete(&key)[0].action, "removed");
    }
}
