//! What to do to bring this node's containers to the desired state: a pure function of the
//! apps, the container records and the clock, so every rule is unit-tested.
//!
//! Per app, each replica slot `0..replicas` (that this node owns) should have exactly one
//! container of the app's current generation, running. Rules:
//! - a slot with no current-generation container gets one (`Create`);
//! - an exited container, or a running one that fails its health check, is restarted in
//!   place once its backoff has passed (`Restart`);
//! - a failed container (could not be created or started) is removed after its backoff, and
//!   the slot refilled on a later pass;
//! - an older-generation container keeps serving its slot (restarted if it exits) until the
//!   slot's replacement is ready (healthy, or settled without a check; see
//!   [`super::rollout::is_ready`]); then it is drained (`Drain`: marked stopping, so it leaves
//!   service) and removed [`DRAIN_MS`] later;
//! - at most `parallel` slots (the app's rollout's, else 1) have a replacement that is not
//!   ready yet (a rolling replacement);
//! - containers of slots beyond `replicas`, of unknown apps, or duplicates are removed.

use std::collections::{BTreeMap, HashMap};

use super::rollout::{DRAIN_MS, Parallelism, is_ready};
use crate::model::{AppSpec, ContainerRecord, ContainerState, Health};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create {
        app: String,
        slot: u32,
    },
    Restart {
        id: String,
    },
    /// Take a replaced container out of service; it is removed once drained.
    Drain {
        id: String,
    },
    Remove {
        id: String,
        reason: &'static str,
    },
}

/// When each container may next be restarted or replaced (ms since the epoch); absent = now.
pub type Backoff = HashMap<String, u64>;

/// `slots` gives the replica slots this node owns for an app (all of them on a single node);
/// `parallel` how many slots an app under rollout may replace at once.
pub fn plan(
    apps: &[AppSpec],
    records: &[ContainerRecord],
    slots: impl Fn(&AppSpec) -> Vec<u32>,
    backoff: &Backoff,
    parallel: &Parallelism,
    now_ms: u64,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let apps_by_name: BTreeMap<&str, &AppSpec> =
        apps.iter().map(|a| (a.name.as_str(), a)).collect();
    let due = |id: &str| backoff.get(id).is_none_or(|at| *at <= now_ms);

    for record in records {
        if record.state == ContainerState::Stopping {
            // Drained, or an interrupted removal (agent restart): finish it.
            if stopping_since(record).is_none_or(|since| since + DRAIN_MS <= now_ms) {
                actions.push(remove(record, "finishing a stop"));
            }
        } else if !apps_by_name.contains_key(record.app.as_str()) {
            actions.push(remove(record, "its app was removed"));
        }
    }

    for app in apps {
        let owned = slots(app);
        let mine: Vec<&ContainerRecord> = records
            .iter()
            .filter(|r| r.app == app.name && r.state != ContainerState::Stopping)
            .collect();
        for record in &mine {
            if !owned.contains(&record.slot) {
                actions.push(remove(record, "scaled down"));
            }
        }
        // A rolling replacement touches `parallel` slots at a time: a slot is in flight while
        // it has both an old container and a current one that is not ready yet.
        let rolling = parallel.contains_key(&app.name);
        let parallel = parallel.get(&app.name).copied().unwrap_or(1).max(1);
        let mut in_flight = owned
            .iter()
            .filter(|slot| {
                let (current, old) = split(&mine, app, **slot);
                !old.is_empty()
                    && !current.is_empty()
                    && !current.iter().any(|c| is_ready(app, c, now_ms))
            })
            .count();
        for slot in owned {
            let (current, old) = split(&mine, app, slot);
            let ready = current.iter().any(|c| is_ready(app, c, now_ms));
            if !ready {
                // Old containers serve the slot until its replacement is ready.
                for record in &old {
                    if record.state == ContainerState::Exited && due(&record.id) {
                        actions.push(Action::Restart {
                            id: record.id.clone(),
                        });
                    }
                }
            }
            if current.is_empty() {
                if old.is_empty() || in_flight < parallel {
                    actions.push(Action::Create {
                        app: app.name.clone(),
                        slot,
                    });
                    in_flight += usize::from(!old.is_empty());
                }
                continue;
            }
            // Keep one current container per slot: the oldest running, else the oldest.
            let keep = current
                .iter()
                .find(|c| c.state == ContainerState::Running)
                .or_else(|| current.first())
                .map(|c| c.id.clone());
            // A rollout's replacement that fails is the rollout's to judge (it rolls back),
            // not restarted in place while the old container still serves.
            let judged_by_rollout = rolling && !old.is_empty();
            for record in &current {
                if Some(&record.id) != keep.as_ref() {
                    actions.push(remove(record, "duplicate in its slot"));
                    continue;
                }
                match record.state {
                    _ if judged_by_rollout => {}
                    ContainerState::Exited if due(&record.id) => {
                        actions.push(Action::Restart {
                            id: record.id.clone(),
                        });
                    }
                    // Failing its health check: restarted in place like an exited one.
                    ContainerState::Running
                        if record.health == Some(Health::Unhealthy) && due(&record.id) =>
                    {
                        actions.push(Action::Restart {
                            id: record.id.clone(),
                        });
                    }
                    ContainerState::Failed if due(&record.id) => {
                        actions.push(remove(record, "failed; replacing it"));
                    }
                    _ => {}
                }
            }
            if ready {
                for record in old {
                    actions.push(Action::Drain {
                        id: record.id.clone(),
                    });
                }
            }
        }
    }
    actions
}

/// Current-generation and older containers of one slot, oldest first.
fn split<'a>(
    records: &[&'a ContainerRecord],
    app: &AppSpec,
    slot: u32,
) -> (Vec<&'a ContainerRecord>, Vec<&'a ContainerRecord>) {
    let mut in_slot: Vec<&ContainerRecord> =
        records.iter().copied().filter(|r| r.slot == slot).collect();
    in_slot.sort_by_key(|r| (r.created_at_ms, r.id.clone()));
    in_slot
        .into_iter()
        .partition(|r| r.generation == app.generation)
}

/// When the container was marked stopping, if its history says.
fn stopping_since(record: &ContainerRecord) -> Option<u64> {
    record
        .history
        .iter()
        .rev()
        .find(|c| c.state == ContainerState::Stopping)
        .map(|c| c.at_ms)
}

fn remove(record: &ContainerRecord, reason: &'static str) -> Action {
    Action::Remove {
        id: record.id.clone(),
        reason,
    }
}

/// Restart delay after `failures` consecutive quick exits: 0.5 s doubling to 30 s.
pub fn backoff_delay_ms(failures: u32) -> u64 {
    (500u64 << failures.min(6)).min(30_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, replicas: u32, generation: u64) -> AppSpec {
        AppSpec {
            name: name.into(),
            image: "img".into(),
            service: None,
            replicas,
            env: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            labels: BTreeMap::new(),
            memory_bytes: None,
            cpu_millis: None,
            stop_timeout_secs: 10,
            health: None,
            generation,
            created_at_ms: 0,
            updated_at_ms: 0,
            ..AppSpec::default()
        }
    }

    fn record(
        id: &str,
        app: &str,
        slot: u32,
        generation: u64,
        state: ContainerState,
    ) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            app: app.into(),
            slot,
            node: "n".into(),
            generation,
            image: "img".into(),
            image_digest: String::new(),
            state,
            exit_code: None,
            restart_count: 0,
            pid: 0,
            ip: None,
            created_at_ms: id.bytes().map(u64::from).sum(),
            started_at_ms: None,
            history: Vec::new(),
            health: None,
            health_detail: String::new(),
            ..ContainerRecord::default()
        }
    }

    fn all_slots(app: &AppSpec) -> Vec<u32> {
        (0..app.replicas).collect()
    }

    fn run(apps: &[AppSpec], records: &[ContainerRecord]) -> Vec<Action> {
        plan(
            apps,
            records,
            all_slots,
            &Backoff::new(),
            &Parallelism::new(),
            1_000,
        )
    }

    #[test]
    fn creates_missing_replicas() {
        let actions = run(
            &[app("web", 3, 1)],
            &[record("a", "web", 1, 1, ContainerState::Running)],
        );
        assert_eq!(
            actions,
            vec![
                Action::Create {
                    app: "web".into(),
                    slot: 0
                },
                Action::Create {
                    app: "web".into(),
                    slot: 2
                },
            ]
        );
    }

    #[test]
    fn steady_state_does_nothing() {
        let records = [
            record("a", "web", 0, 1, ContainerState::Running),
            record("b", "web", 1, 1, ContainerState::Creating),
        ];
        assert_eq!(run(&[app("web", 2, 1)], &records), Vec::<Action>::new());
    }

    #[test]
    fn scales_down_and_removes_orphans() {
        let records = [
            record("a", "web", 0, 1, ContainerState::Running),
            record("b", "web", 1, 1, ContainerState::Running),
            record("c", "gone", 0, 1, ContainerState::Running),
        ];
        let actions = run(&[app("web", 1, 1)], &records);
        assert!(actions.contains(&Action::Remove {
            id: "b".into(),
            reason: "scaled down"
        }));
        assert!(actions.contains(&Action::Remove {
            id: "c".into(),
            reason: "its app was removed"
        }));
        assert_eq!(actions.len(), 2);
    }

    #[test]
    fn restarts_exited_after_backoff() {
        let records = [record("a", "web", 0, 1, ContainerState::Exited)];
        let mut backoff = Backoff::new();
        backoff.insert("a".into(), 5_000);
        assert_eq!(
            plan(
                &[app("web", 1, 1)],
                &records,
                all_slots,
                &backoff,
                &Parallelism::new(),
                1_000
            ),
            Vec::<Action>::new()
        );
        assert_eq!(
            plan(
                &[app("web", 1, 1)],
                &records,
                all_slots,
                &backoff,
                &Parallelism::new(),
                5_000
            ),
            vec![Action::Restart { id: "a".into() }]
        );
    }

    #[test]
    fn rolling_replacement_one_slot_at_a_time() {
        // Generation 2 wanted; both slots run generation 1.
        let mut records = vec![
            record("a", "web", 0, 1, ContainerState::Running),
            record("b", "web", 1, 1, ContainerState::Running),
        ];
        let web = app("web", 2, 2);
        assert_eq!(
            run(std::slice::from_ref(&web), &records),
            vec![Action::Create {
                app: "web".into(),
                slot: 0
            }]
        );

        // Slot 0's replacement is starting: nothing else happens yet.
        records.push(record("c", "web", 0, 2, ContainerState::Creating));
        assert_eq!(
            run(std::slice::from_ref(&web), &records),
            Vec::<Action>::new()
        );

        // It runs, but is not ready (no check: not settled yet): the old one stays.
        records[2].state = ContainerState::Running;
        records[2].started_at_ms = Some(900);
        assert_eq!(
            run(std::slice::from_ref(&web), &records),
            Vec::<Action>::new()
        );

        // Settled: the old one is drained and slot 1 is next.
        let later = 900 + crate::reconcile::rollout::SETTLE_MS;
        let actions = plan(
            &[web],
            &records,
            all_slots,
            &Backoff::new(),
            &Parallelism::new(),
            later,
        );
        assert!(actions.contains(&Action::Drain { id: "a".into() }));
        assert!(actions.contains(&Action::Create {
            app: "web".into(),
            slot: 1
        }));

        // Drained: removed once the drain period has passed.
        records[0].transition(ContainerState::Stopping, None, "replaced");
        let since = records[0].history[0].at_ms;
        let remove_a = Action::Remove {
            id: "a".into(),
            reason: "finishing a stop",
        };
        let at = |now| {
            plan(
                &[app("web", 2, 2)],
                &records,
                all_slots,
                &Backoff::new(),
                &Parallelism::new(),
                now,
            )
        };
        assert!(!at(since + DRAIN_MS - 1).contains(&remove_a));
        assert!(at(since + DRAIN_MS).contains(&remove_a));
    }

    #[test]
    fn parallel_replaces_several_slots_and_health_gates() {
        let mut web = app("web", 3, 2);
        web.health = Some(crate::model::HealthCheck {
            probe: crate::model::Probe::Tcp { port: 80 },
            interval_ms: 1000,
            timeout_ms: 500,
            retries: 3,
            start_period_ms: 0,
        });
        let mut records: Vec<ContainerRecord> = (0..3)
            .map(|slot| {
                record(
                    &format!("old{slot}"),
                    "web",
                    slot,
                    1,
                    ContainerState::Running,
                )
            })
            .collect();
        let parallel = Parallelism::from([("web".to_owned(), 2)]);
        let run = |records: &[ContainerRecord]| {
            plan(
                std::slice::from_ref(&web),
                records,
                all_slots,
                &Backoff::new(),
                &parallel,
                1_000,
            )
        };
        let creates = |actions: &[Action]| {
            actions
                .iter()
                .filter(|a| matches!(a, Action::Create { .. }))
                .count()
        };
        assert_eq!(creates(&run(&records)), 2);
        let mut new0 = record("new0", "web", 0, 2, ContainerState::Running);
        new0.health = Some(Health::Starting);
        records.push(new0);
        let mut new1 = record("new1", "web", 1, 2, ContainerState::Running);
        new1.health = Some(Health::Starting);
        records.push(new1);
        // Two in flight, none healthy: nothing more, nothing drained.
        assert_eq!(run(&records), Vec::<Action>::new());
        // An old replica that exits meanwhile is restarted: it still serves its slot.
        records[2].state = ContainerState::Exited;
        assert_eq!(run(&records), vec![Action::Restart { id: "old2".into() }]);
        records[2].state = ContainerState::Running;
        // One healthy: its old one drains and the third slot starts.
        records[3].health = Some(Health::Healthy);
        let actions = run(&records);
        assert!(actions.contains(&Action::Drain { id: "old0".into() }));
        assert!(!actions.contains(&Action::Drain { id: "old1".into() }));
        assert_eq!(creates(&actions), 1);
        // A replacement that turns unhealthy is left to the rollout (which rolls back)...
        records[4].health = Some(Health::Unhealthy);
        assert!(!run(&records).contains(&Action::Restart { id: "new1".into() }));
        // ... but restarted in place when no rollout is under way.
        let actions = plan(
            std::slice::from_ref(&web),
            &records,
            all_slots,
            &Backoff::new(),
            &Parallelism::new(),
            1_000,
        );
        assert!(actions.contains(&Action::Restart { id: "new1".into() }));
    }

    #[test]
    fn duplicates_and_interrupted_stops() {
        let records = [
            record("a", "web", 0, 1, ContainerState::Running),
            record("b", "web", 0, 1, ContainerState::Running),
            record("s", "web", 0, 1, ContainerState::Stopping),
        ];
        let actions = run(&[app("web", 1, 1)], &records);
        assert!(actions.contains(&Action::Remove {
            id: "s".into(),
            reason: "finishing a stop"
        }));
        assert!(actions.contains(&Action::Remove {
            id: "b".into(),
            reason: "duplicate in its slot"
        }));
        assert_eq!(actions.len(), 2);
    }

    #[test]
    fn failed_container_is_replaced() {
        let records = [record("a", "web", 0, 1, ContainerState::Failed)];
        assert_eq!(
            run(&[app("web", 1, 1)], &records),
            vec![Action::Remove {
                id: "a".into(),
                reason: "failed; replacing it"
            }]
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_delay_ms(0), 500);
        assert_eq!(backoff_delay_ms(1), 1000);
        assert_eq!(backoff_delay_ms(10), 30_000);
    }
}
