//! Health checks of this node's running containers (`--health-cmd`, `--health-http`,
//! `--health-tcp`). One task owns the schedule; checks run concurrently; a verdict that
//! changes is written to the container's record, where the reconciler (restart of unhealthy
//! replicas), the API and later service discovery read it.
//!
//! A replica starts `starting`; its first passing check makes it `healthy`; `retries`
//! consecutive failures make it `unhealthy` (failures during the start period don't count, so
//! a slow starter is not killed while it boots).

mod probe;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use tokio::{task::JoinSet, time::Instant};

use crate::{
    model::{AppSpec, ContainerRecord, ContainerState, Health, HealthCheck, now_ms},
    reconcile::rollout::Rollout,
    runtime::Runtime,
    state::State,
};

/// How often the schedule looks for due checks and new containers.
const TICK: Duration = Duration::from_millis(250);

/// What the monitor knows about one container run (a restart starts a new run).
#[derive(Debug)]
struct Run {
    started_at_ms: u64,
    next_due: Instant,
    in_flight: bool,
    failures: u32,
    health: Health,
    detail: String,
}

#[derive(Debug)]
pub struct HealthMonitor {
    state: State,
    runtime: Runtime,
    node: String,
    containers_dir: PathBuf,
    runs: HashMap<String, Run>,
}

impl HealthMonitor {
    pub fn new(state: State, runtime: Runtime, node: String, containers_dir: PathBuf) -> Self {
        Self {
            state,
            runtime,
            node,
            containers_dir,
            runs: HashMap::new(),
        }
    }

    pub fn spawn(self) {
        tokio::spawn(self.run());
    }

    async fn run(mut self) {
        let mut checks: JoinSet<(String, u64, probe::ProbeResult)> = JoinSet::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(err) = self.schedule(&mut checks).await {
                        tracing::debug!("health schedule: {}", crate::error_chain(&err));
                    }
                }
                Some(done) = checks.join_next() => {
                    if let Ok((id, started_at_ms, result)) = done {
                        self.record(&id, started_at_ms, result).await;
                    }
                }
            }
        }
    }

    /// Starts the checks that are due, and forgets containers that stopped running.
    async fn schedule(
        &mut self,
        checks: &mut JoinSet<(String, u64, probe::ProbeResult)>,
    ) -> Result<(), crate::store::StoreError> {
        let apps = self.state.apps().await?;
        let rollouts = self.state.rollouts().await?;
        let records: Vec<ContainerRecord> = self
            .state
            .containers()
            .await?
            .into_iter()
            .filter(|r| r.node == self.node && r.state == ContainerState::Running)
            .collect();
        self.runs.retain(|id, run| {
            records
                .iter()
                .any(|r| r.id == *id && r.started_at_ms.unwrap_or(0) == run.started_at_ms)
        });
        let now = Instant::now();
        for record in records {
            let Some(check) = check_of(&apps, &rollouts, &record) else {
                continue;
            };
            let started_at_ms = record.started_at_ms.unwrap_or(0);
            // As Docker does, the first check runs one interval after the start: a server
            // started in the background is not judged before it has had time to listen.
            let run = self.runs.entry(record.id.clone()).or_insert_with(|| Run {
                started_at_ms,
                next_due: first_due(now, started_at_ms, check.interval_ms),
                in_flight: false,
                failures: 0,
                health: Health::Starting,
                detail: String::new(),
            });
            if run.in_flight || run.next_due > now {
                continue;
            }
            run.in_flight = true;
            run.next_due = now + Duration::from_millis(check.interval_ms);
            let runtime = self.runtime.clone();
            let scratch = self.containers_dir.join(&record.id);
            let (id, ip) = (record.id.clone(), record.ip);
            checks.spawn(async move {
                let timeout = Duration::from_millis(check.timeout_ms);
                let result = probe::run(&runtime, &check.probe, &id, ip, timeout, &scratch).await;
                (id, started_at_ms, result)
            });
        }
        Ok(())
    }

    /// Folds a check's result into the run and writes the record when the verdict changes
    /// (or the record does not show it yet).
    async fn record(&mut self, id: &str, started_at_ms: u64, result: probe::ProbeResult) {
        let Some(run) = self
            .runs
            .get_mut(id)
            .filter(|r| r.started_at_ms == started_at_ms)
        else {
            return;
        };
        run.in_flight = false;
        let Ok(Some(record)) = self.state.container(id).await else {
            return;
        };
        let (Ok(apps), Ok(rollouts)) = (self.state.apps().await, self.state.rollouts().await)
        else {
            return;
        };
        let Some(check) = check_of(&apps, &rollouts, &record) else {
            return;
        };
        let check = &check;
        let in_start_period = now_ms().saturating_sub(started_at_ms) < check.start_period_ms;
        (run.health, run.failures, run.detail) =
            next_health(run.health, run.failures, check, in_start_period, result);
        if record.health != Some(run.health) || record.health_detail != run.detail {
            let (health, detail) = (run.health, run.detail.clone());
            if let Err(err) = self.state.update_container(id, |r| {
                if r.health != Some(health) {
                    tracing::info!(container = %r.id, health = health.as_str(), detail = %detail, "health changed");
                }
                r.health = Some(health);
                r.health_detail.clone_from(&detail);
            })
            .await
            {
                tracing::warn!(container = id, "recording health: {}", crate::error_chain(&err));
            }
        }
    }
}

/// The check a container is judged by: its own generation's. During a rollout the old
/// replicas keep the previous spec's check (a new check that they fail must not take them out
/// of service while they are all that serves).
fn check_of(
    apps: &[AppSpec],
    rollouts: &[(Rollout, crate::store::Revision)],
    record: &ContainerRecord,
) -> Option<HealthCheck> {
    let app = apps.iter().find(|a| a.name == record.app)?;
    if record.generation != app.generation
        && let Some((rollout, _)) = rollouts
            .iter()
            .find(|(r, _)| r.app == app.name && r.previous.generation == record.generation)
    {
        return rollout.previous.health.clone();
    }
    app.health.clone()
}

/// When a container's first check runs: one interval after it started (sooner when the agent
/// meets an already-running container, e.g. after a restart of the agent).
fn first_due(now: Instant, started_at_ms: u64, interval_ms: u64) -> Instant {
    let running_for = now_ms().saturating_sub(started_at_ms);
    now + Duration::from_millis(interval_ms.saturating_sub(running_for))
}

/// The verdict after one more check.
fn next_health(
    health: Health,
    failures: u32,
    check: &HealthCheck,
    in_start_period: bool,
    result: probe::ProbeResult,
) -> (Health, u32, String) {
    match result {
        Ok(()) => (Health::Healthy, 0, String::new()),
        Err(detail) if in_start_period && health == Health::Starting => {
            (Health::Starting, 0, detail)
        }
        Err(detail) => {
            let failures = failures + 1;
            let health = if failures >= check.retries {
                Health::Unhealthy
            } else {
                health
            };
            (health, failures, detail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Probe;

    fn check(retries: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp { port: 80 },
            interval_ms: 1000,
            timeout_ms: 500,
            retries,
            start_period_ms: 0,
        }
    }

    #[test]
    fn verdicts() {
        let c = check(3);
        assert_eq!(
            next_health(Health::Starting, 0, &c, false, Ok(())).0,
            Health::Healthy
        );
        // Failures during the start period do not count.
        assert_eq!(
            next_health(Health::Starting, 0, &c, true, Err("x".into())),
            (Health::Starting, 0, "x".into())
        );
        // Healthy stays healthy until `retries` failures in a row.
        let (h, f, _) = next_health(Health::Healthy, 0, &c, false, Err("x".into()));
        assert_eq!((h, f), (Health::Healthy, 1));
        let (h, f, _) = next_health(h, f, &c, false, Err("x".into()));
        assert_eq!((h, f), (Health::Healthy, 2));
        let (h, f, d) = next_health(h, f, &c, false, Err("refused".into()));
        assert_eq!((h, f, d.as_str()), (Health::Unhealthy, 3, "refused"));
        // One success resets.
        assert_eq!(
            next_health(h, f, &c, false, Ok(())),
            (Health::Healthy, 0, String::new())
        );
        // A starter that never passes goes unhealthy once the start period is over.
        let (h, _, _) = next_health(Health::Starting, 0, &check(1), false, Err("x".into()));
        assert_eq!(h, Health::Unhealthy);
    }
}
