//! Rollouts: replacing an app's replicas (`app restart`, `app deploy --update`) without ever
//! leaving a service with no healthy replica, and undoing a change whose new replicas do not
//! become healthy.
//!
//! A rollout is a record in the store next to the app (`/hivemind/rollouts/<app>`), written in
//! the same transaction as the app's new generation. The work is split:
//! - the plan ([`super::plan`]) starts new-generation containers in at most `parallel` slots at
//!   a time and drains a slot's old container only once its replacement is *ready*
//!   ([`is_ready`]: its health check passed, or, without a check, it has run for
//!   [`SETTLE_MS`]);
//! - [`advance`], run at the start of every reconcile pass on every node, follows the
//!   replacements, appends progress events to the record (the API streams them), finishes the
//!   rollout, or fails it: a new replica that turns unhealthy, exits, cannot start, or is not
//!   ready within the rollout's deadline makes it write the previous spec back (with the
//!   previous generation, so the old replicas match again and stay untouched) and wait until
//!   every new replica is gone.
//!
//! Because all of it is in the store and [`advance`] is a function of the store's contents, an
//! agent restart mid-rollout resumes it where it was: it finishes if the new replicas become
//! ready in time, and rolls back otherwise. Every write is compare-and-swap, so several nodes
//! advancing the same rollout never lose or repeat a step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    model::{AppSpec, ContainerRecord, ContainerState, Health, now_ms},
    state::State,
    store::StoreError,
};

/// Without a health check, a new replica counts as ready once it has run this long.
pub const SETTLE_MS: u64 = 5_000;
/// A replaced replica leaves service (its record is `stopping`, so DNS, the VIP, the router
/// and published ports drop it) this long before it is sent SIGTERM.
pub const DRAIN_MS: u64 = 3_000;
/// Added to the time a health check needs to pass, for creating the container.
const DEADLINE_MARGIN_MS: u64 = 30_000;
/// Events kept per rollout.
const EVENT_LIMIT: usize = 200;

/// What started the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutKind {
    /// `app restart`: same spec, fresh containers.
    Restart,
    /// `app deploy --update`: a new image or settings.
    Update,
}

impl RolloutKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restart => "restart",
            Self::Update => "update",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Replacing replicas.
    Rolling,
    /// Failed: the previous spec is back and the new replicas are being removed.
    RollingBack,
    /// Every replica replaced (terminal).
    Done,
    /// Every new replica removed; the previous spec and replicas serve (terminal).
    RolledBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rolling => "rolling",
            Self::RollingBack => "rolling-back",
            Self::Done => "done",
            Self::RolledBack => "rolled-back",
        }
    }

    /// Still running: another rollout (or a scale) of the app must wait.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Rolling | Self::RollingBack)
    }
}

/// One slot's replacement as the rollout has seen it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotProgress {
    /// The new container.
    pub container: String,
    /// The containers it replaces.
    pub replaces: Vec<String>,
    /// Its replacement is ready (the old containers may go).
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// 1, 2, ...: followers send the events after the last one they sent.
    pub seq: u64,
    pub at_ms: u64,
    pub message: String,
}

/// The record: `/hivemind/rollouts/<app>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub app: String,
    pub kind: RolloutKind,
    /// The generation being rolled out.
    pub generation: u64,
    /// The spec before the rollout, written back if it fails.
    pub previous: AppSpec,
    /// Slots replaced at once.
    pub parallel: u32,
    /// How long a new replica may take to become ready.
    pub deadline_ms: u64,
    pub phase: Phase,
    /// Why it rolled back.
    #[serde(default)]
    pub reason: String,
    pub started_at_ms: u64,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    #[serde(default)]
    pub slots: BTreeMap<u32, SlotProgress>,
    #[serde(default)]
    pub events: Vec<RolloutEvent>,
}

impl Rollout {
    pub fn new(
        kind: RolloutKind,
        previous: AppSpec,
        next: &AppSpec,
        parallel: u32,
        deadline_ms: Option<u64>,
    ) -> Self {
        let parallel = parallel.clamp(1, next.replicas.max(1));
        let deadline_ms = deadline_ms.unwrap_or_else(|| default_deadline_ms(next));
        let mut rollout = Self {
            app: next.name.clone(),
            kind,
            generation: next.generation,
            previous,
            parallel,
            deadline_ms,
            phase: Phase::Rolling,
            reason: String::new(),
            started_at_ms: now_ms(),
            finished_at_ms: None,
            slots: BTreeMap::new(),
            events: Vec::new(),
        };
        let gate = match &next.health {
            Some(check) => format!("healthy ({})", check.probe),
            None => format!("running for {}s (no health check)", SETTLE_MS / 1000),
        };
        rollout.event(format!(
            "{} of {}: replacing {} replicas, {parallel} at a time; a new replica must be {gate} within {}s",
            kind.as_str(),
            next.name,
            next.replicas,
            deadline_ms.div_ceil(1000)
        ));
        rollout
    }

    /// Slots whose replacement is ready.
    pub fn replaced(&self) -> usize {
        self.slots.values().filter(|s| s.ready).count()
    }

    /// One line for `app ls -o json`, the REST API and error messages.
    pub fn summary(&self, replicas: u32) -> String {
        match self.phase {
            Phase::Rolling => format!(
                "{} in progress: {}/{replicas} replicas replaced",
                self.kind.as_str(),
                self.replaced()
            ),
            Phase::RollingBack => format!("rolling back: {}", self.reason),
            Phase::Done => format!("{} done", self.kind.as_str()),
            Phase::RolledBack => format!("rolled back: {}", self.reason),
        }
    }

    fn event(&mut self, message: String) {
        tracing::info!(app = %self.app, generation = self.generation, "rollout: {message}");
        let seq = self.events.last().map_or(0, |e| e.seq) + 1;
        self.events.push(RolloutEvent {
            seq,
            at_ms: now_ms(),
            message,
        });
        if self.events.len() > EVENT_LIMIT {
            let excess = self.events.len() - EVENT_LIMIT;
            self.events.drain(..excess);
        }
    }

    fn fail(&mut self, reason: String) {
        self.event(format!(
            "rolling back to generation {}: {reason}",
            self.previous.generation
        ));
        self.phase = Phase::RollingBack;
        self.reason = reason;
    }

    fn finish(&mut self, phase: Phase, message: String) {
        self.event(message);
        self.phase = phase;
        self.finished_at_ms = Some(now_ms());
    }
}

/// The time a new replica of `app` gets to become ready: long enough for its health check to
/// pass after the start period and to fail `retries` times, plus a margin for creating it.
pub fn default_deadline_ms(app: &AppSpec) -> u64 {
    app.health.as_ref().map_or(SETTLE_MS, |check| {
        check.start_period_ms
            + (u64::from(check.retries) + 1) * (check.interval_ms + check.timeout_ms)
    }) + DEADLINE_MARGIN_MS
}

/// A new replica may take its old one's place: it runs and passes its health check (or, with
/// no check, has run for [`SETTLE_MS`]).
pub fn is_ready(app: &AppSpec, record: &ContainerRecord, now_ms: u64) -> bool {
    record.state == ContainerState::Running
        && match app.health {
            Some(_) => record.health == Some(Health::Healthy),
            None => record
                .started_at_ms
                .is_some_and(|at| now_ms >= at + SETTLE_MS),
        }
}

/// Slots replaced at once, for the apps whose rollout is under way.
pub type Parallelism = BTreeMap<String, usize>;

/// The next state of a rollout given the app as stored and all its containers (every node),
/// or `None` when nothing changed.
pub fn step(
    rollout: &Rollout,
    app: &AppSpec,
    records: &[&ContainerRecord],
    now_ms: u64,
) -> Option<Rollout> {
    let mut next = rollout.clone();
    match rollout.phase {
        Phase::Done | Phase::RolledBack => return None,
        Phase::RollingBack => {
            if !records.iter().any(|r| r.generation == rollout.generation) {
                next.finish(
                    Phase::RolledBack,
                    format!(
                        "rolled back: the new replicas are removed; generation {} ({}) serves",
                        rollout.previous.generation, rollout.previous.image
                    ),
                );
            }
        }
        Phase::Rolling if app.generation != rollout.generation => {
            next.finish(
                Phase::Done,
                format!(
                    "superseded: the app is now at generation {}",
                    app.generation
                ),
            );
        }
        Phase::Rolling => roll(&mut next, app, records, now_ms),
    }
    (next != *rollout).then_some(next)
}

fn roll(rollout: &mut Rollout, app: &AppSpec, records: &[&ContainerRecord], now_ms: u64) {
    let live: Vec<&ContainerRecord> = records
        .iter()
        .copied()
        .filter(|r| r.state != ContainerState::Stopping)
        .collect();
    for slot in 0..app.replicas {
        let mut current: Vec<&ContainerRecord> = live
            .iter()
            .copied()
            .filter(|r| r.slot == slot && r.generation == app.generation)
            .collect();
        current.sort_by_key(|r| (r.created_at_ms, r.id.clone()));
        let Some(new) = current.first() else { continue };
        let old: Vec<String> = live
            .iter()
            .filter(|r| r.slot == slot && r.generation != app.generation)
            .map(|r| r.id.clone())
            .collect();
        let mut progress = rollout.slots.get(&slot).cloned().unwrap_or_default();
        if progress.container != new.id {
            progress = SlotProgress {
                container: new.id.clone(),
                replaces: old.clone(),
                ready: false,
            };
            let replacing = if old.is_empty() {
                String::new()
            } else {
                format!(" to replace {}", old.join(", "))
            };
            let until = if app.health.is_some() {
                "it is healthy"
            } else {
                "it has run a few seconds"
            };
            rollout.event(format!(
                "replica {slot}: started {}{replacing}; waiting until {until}",
                new.id
            ));
        }
        if !progress.ready {
            if is_ready(app, new, now_ms) {
                progress.ready = true;
                let what = if app.health.is_some() {
                    "healthy"
                } else {
                    "running"
                };
                let message = if progress.replaces.is_empty() {
                    format!("replica {slot}: {} is {what}", new.id)
                } else {
                    format!(
                        "replica {slot}: {} is {what}; stopping {}",
                        new.id,
                        progress.replaces.join(", ")
                    )
                };
                rollout.event(message);
            } else if let Some(reason) = failure(app, new, rollout.deadline_ms, now_ms) {
                rollout.fail(format!("replica {slot} ({}) {reason}", new.id));
                return;
            }
        }
        rollout.slots.insert(slot, progress);
    }
    let all_ready = (0..app.replicas).all(|slot| rollout.slots.get(&slot).is_some_and(|s| s.ready));
    let leftovers = records
        .iter()
        .any(|r| r.generation != app.generation || r.slot >= app.replicas);
    if all_ready && !leftovers {
        let replaced = rollout.slots.len();
        rollout.finish(
            Phase::Done,
            format!("rollout complete: {replaced} replicas replaced"),
        );
    }
}

/// Why a new replica that is not ready yet will not become ready, if it won't.
fn failure(
    app: &AppSpec,
    record: &ContainerRecord,
    deadline_ms: u64,
    now_ms: u64,
) -> Option<String> {
    let last = || {
        record
            .history
            .last()
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    match record.state {
        ContainerState::Failed => return Some(format!("could not start: {}", last())),
        ContainerState::Exited => {
            return Some(format!(
                "exited with code {}",
                record
                    .exit_code
                    .map_or_else(|| "?".to_owned(), |c| c.to_string())
            ));
        }
        _ => {}
    }
    if record.restart_count > 0 {
        return Some(format!("had to be restarted ({})", last()));
    }
    if record.health == Some(Health::Unhealthy) {
        let probe = app
            .health
            .as_ref()
            .map(|c| c.probe.to_string())
            .unwrap_or_default();
        return Some(format!(
            "failed its health check ({probe}): {}",
            record.health_detail
        ));
    }
    if now_ms >= record.created_at_ms + deadline_ms {
        let detail = if record.health_detail.is_empty() {
            String::new()
        } else {
            format!("; last check: {}", record.health_detail)
        };
        return Some(format!(
            "did not become ready within {}s{detail}",
            deadline_ms.div_ceil(1000)
        ));
    }
    None
}

/// Advances every active rollout; returns how many slots each app may replace at once. Run at
/// the start of a pass, so the plan sees a rolled-back spec in the same pass.
pub async fn advance(state: &State) -> Result<Parallelism, StoreError> {
    let rollouts = state.rollouts().await?;
    let mut parallelism = Parallelism::new();
    if !rollouts.iter().any(|(r, _)| r.phase.is_active()) {
        return Ok(parallelism);
    }
    let apps = state.apps().await?;
    let records = state.containers().await?;
    let now = now_ms();
    for (rollout, revision) in rollouts {
        if !rollout.phase.is_active() {
            continue;
        }
        let Some(app) = apps.iter().find(|a| a.name == rollout.app) else {
            // The app was removed mid-rollout: nothing left to roll.
            state.delete_rollout(&rollout.app).await?;
            continue;
        };
        let mine: Vec<&ContainerRecord> = records.iter().filter(|r| r.app == app.name).collect();
        let current = match step(&rollout, app, &mine, now) {
            Some(next) if state.update_rollout(&next, revision).await? => next,
            Some(_) => continue, // another node advanced it first; next pass sees theirs
            None => rollout,
        };
        match current.phase {
            Phase::Rolling => {
                parallelism.insert(app.name.clone(), current.parallel as usize);
            }
            // Also after a crash between writing the phase and the spec.
            Phase::RollingBack if app.generation == current.generation => {
                restore(state, &current).await?;
            }
            _ => {}
        }
    }
    Ok(parallelism)
}

/// Writes the previous spec back (unless the app changed since).
async fn restore(state: &State, rollout: &Rollout) -> Result<(), StoreError> {
    let Some((app, revision)) = state.app(&rollout.app).await? else {
        return Ok(());
    };
    if app.generation != rollout.generation {
        return Ok(());
    }
    let mut previous = rollout.previous.clone();
    previous.updated_at_ms = now_ms();
    if state.update_app(&previous, revision).await? {
        tracing::warn!(app = %app.name, generation = previous.generation, reason = %rollout.reason, "rollout failed; previous spec restored");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthCheck, Probe};

    fn app(generation: u64, replicas: u32, health: bool) -> AppSpec {
        AppSpec {
            name: "web".into(),
            image: "img:2".into(),
            service: None,
            replicas,
            env: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            labels: BTreeMap::new(),
            memory_bytes: None,
            cpu_millis: None,
            stop_timeout_secs: 10,
            health: health.then(|| HealthCheck {
                probe: Probe::Http {
                    port: 80,
                    path: "/".into(),
                },
                interval_ms: 1000,
                timeout_ms: 500,
                retries: 3,
                start_period_ms: 0,
            }),
            generation,
            created_at_ms: 0,
            updated_at_ms: 0,
            ..AppSpec::default()
        }
    }

    fn record(id: &str, slot: u32, generation: u64, health: Option<Health>) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            app: "web".into(),
            slot,
            node: "n".into(),
            generation,
            image: "img".into(),
            image_digest: String::new(),
            state: ContainerState::Running,
            exit_code: None,
            restart_count: 0,
            pid: 1,
            ip: None,
            created_at_ms: 1_000,
            started_at_ms: Some(1_000),
            history: Vec::new(),
            health,
            health_detail: String::new(),
            ..ContainerRecord::default()
        }
    }

    fn rollout(replicas: u32) -> Rollout {
        Rollout::new(
            RolloutKind::Restart,
            app(1, replicas, true),
            &app(2, replicas, true),
            1,
            None,
        )
    }

    fn refs(records: &[ContainerRecord]) -> Vec<&ContainerRecord> {
        records.iter().collect()
    }

    #[test]
    fn follows_replacements_to_the_end() {
        let web = app(2, 2, true);
        let mut records = vec![
            record("a", 0, 1, Some(Health::Healthy)),
            record("b", 1, 1, Some(Health::Healthy)),
            record("c", 0, 2, Some(Health::Starting)),
        ];
        let r = step(&rollout(2), &web, &refs(&records), 2_000).expect("saw c");
        assert_eq!(r.slots[&0].container, "c");
        assert_eq!(r.slots[&0].replaces, ["a"]);
        assert!(step(&r, &web, &refs(&records), 2_000).is_none(), "waiting");

        records[2].health = Some(Health::Healthy);
        let r = step(&r, &web, &refs(&records), 3_000).expect("c ready");
        assert!(r.slots[&0].ready);
        assert!(
            r.events
                .last()
                .is_some_and(|e| e.message.contains("stopping a"))
        );

        // a drained and gone, d replaces b and becomes healthy, b still there: not done yet.
        records.remove(0);
        records.push(record("d", 1, 2, Some(Health::Healthy)));
        let r = step(&r, &web, &refs(&records), 4_000).expect("saw d, ready");
        assert!(r.slots[&1].ready);
        assert_eq!(r.phase, Phase::Rolling);
        records.retain(|r| r.id != "b");
        let r = step(&r, &web, &refs(&records), 5_000).expect("done");
        assert_eq!(r.phase, Phase::Done);
        assert_eq!(r.replaced(), 2);
    }

    #[test]
    fn unhealthy_exited_or_late_replicas_fail_it() {
        let web = app(2, 1, true);
        let old = record("a", 0, 1, Some(Health::Healthy));
        let mut new = record("c", 0, 2, Some(Health::Starting));
        let r = step(&rollout(1), &web, &[&old, &new], 2_000).expect("saw c");

        new.health = Some(Health::Unhealthy);
        new.health_detail = "HTTP 500".into();
        let failed = step(&r, &web, &[&old, &new], 3_000).expect("failed");
        assert_eq!(failed.phase, Phase::RollingBack);
        assert!(
            failed
                .reason
                .contains("failed its health check (http 80/): HTTP 500")
        );

        new.health = Some(Health::Starting);
        new.state = ContainerState::Exited;
        new.exit_code = Some(3);
        let failed = step(&r, &web, &[&old, &new], 3_000).expect("failed");
        assert!(
            failed.reason.contains("exited with code 3"),
            "{}",
            failed.reason
        );

        new.state = ContainerState::Running;
        let late = 1_000 + r.deadline_ms;
        assert!(step(&r, &web, &[&old, &new], late - 1).is_none());
        let failed = step(&r, &web, &[&old, &new], late).expect("late");
        assert!(
            failed.reason.contains("did not become ready"),
            "{}",
            failed.reason
        );
    }

    #[test]
    fn rolling_back_ends_when_the_new_replicas_are_gone() {
        let mut r = rollout(1);
        r.fail("broken".into());
        let previous = app(1, 1, true);
        let old = record("a", 0, 1, Some(Health::Healthy));
        let new = record("c", 0, 2, Some(Health::Unhealthy));
        assert!(step(&r, &previous, &[&old, &new], 5_000).is_none());
        let done = step(&r, &previous, &[&old], 5_000).expect("rolled back");
        assert_eq!(done.phase, Phase::RolledBack);
        assert_eq!(done.reason, "broken");
    }

    #[test]
    fn without_a_check_ready_means_settled() {
        let web = app(2, 1, false);
        let new = record("c", 0, 2, None);
        assert!(!is_ready(&web, &new, 1_000 + SETTLE_MS - 1));
        assert!(is_ready(&web, &new, 1_000 + SETTLE_MS));
        assert_eq!(default_deadline_ms(&web), SETTLE_MS + DEADLINE_MARGIN_MS);
    }
}
