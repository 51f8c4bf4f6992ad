//! Where each replica runs: a pure function from the app, the current assignments and the
//! nodes' state to new assignments, so every rule is unit-tested.
//!
//! Rules:
//! - a slot keeps its node while that node is ready (no churn on scale-up, rescheduling or
//!   another app's changes);
//! - slots at or above the replica count are dropped;
//! - an unassigned slot, or one on a node that is not ready, goes to the eligible ready node
//!   with the fewest containers (counting the assignments made in this same call), ties
//!   broken by name, so replicas spread evenly;
//! - an app with volumes may only run where its volumes are (volumes are node-local): if its
//!   volumes live on different nodes, or that node is not ready, its slots stay unassigned;
//! - with no eligible node a slot stays unassigned (pending) rather than landing anywhere.

use std::collections::{BTreeMap, BTreeSet};

/// A node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLoad {
    pub name: String,
    pub ready: bool,
    /// Containers assigned to it now, all apps.
    pub containers: usize,
}

/// Slot → node.
pub type Assignments = BTreeMap<u32, String>;

/// New assignments for an app with `replicas` slots whose volumes live on `volume_nodes`.
pub fn schedule(
    replicas: u32,
    current: &Assignments,
    nodes: &[NodeLoad],
    volume_nodes: &BTreeSet<String>,
) -> Assignments {
    let ready: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| n.ready)
        .map(|n| n.name.as_str())
        .collect();
    let eligible: Vec<&NodeLoad> = nodes
        .iter()
        .filter(|n| n.ready)
        .filter(|n| {
            volume_nodes.is_empty() || (volume_nodes.len() == 1 && volume_nodes.contains(&n.name))
        })
        .collect();
    let mut load: BTreeMap<&str, usize> = eligible
        .iter()
        .map(|n| (n.name.as_str(), n.containers))
        .collect();
    let mut next = Assignments::new();
    // Keep what stays valid.
    for (slot, node) in current {
        if *slot < replicas && ready.contains(node.as_str()) && load.contains_key(node.as_str()) {
            next.insert(*slot, node.clone());
        }
    }
    // Place the rest, least loaded first. Slots that move off a node no longer count there.
    for (slot, node) in current {
        if !next.contains_key(slot)
            && let Some(count) = load.get_mut(node.as_str())
        {
            *count = count.saturating_sub(1);
        }
    }
    for slot in 0..replicas {
        if next.contains_key(&slot) {
            continue;
        }
        let Some((&node, _)) = load.iter().min_by_key(|(name, count)| (**count, **name)) else {
            break;
        };
        next.insert(slot, node.to_owned());
        if let Some(count) = load.get_mut(node) {
            *count += 1;
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(spec: &[(&str, bool, usize)]) -> Vec<NodeLoad> {
        spec.iter()
            .map(|(name, ready, containers)| NodeLoad {
                name: (*name).into(),
                ready: *ready,
                containers: *containers,
            })
            .collect()
    }

    fn assign(pairs: &[(u32, &str)]) -> Assignments {
        pairs.iter().map(|(s, n)| (*s, (*n).to_owned())).collect()
    }

    fn per_node(a: &Assignments) -> BTreeMap<String, usize> {
        let mut count = BTreeMap::new();
        for node in a.values() {
            *count.entry(node.clone()).or_insert(0) += 1;
        }
        count
    }

    #[test]
    fn spreads_evenly_over_ready_nodes() {
        let n = nodes(&[("a", true, 0), ("b", true, 0), ("c", true, 0)]);
        let a = schedule(6, &Assignments::new(), &n, &BTreeSet::new());
        assert_eq!(a.len(), 6);
        assert!(per_node(&a).values().all(|c| *c == 2), "{a:?}");
    }

    #[test]
    fn fills_the_least_loaded_first() {
        let n = nodes(&[("a", true, 5), ("b", true, 1), ("c", true, 0)]);
        let a = schedule(3, &Assignments::new(), &n, &BTreeSet::new());
        assert_eq!(
            per_node(&a),
            BTreeMap::from([("b".into(), 1), ("c".into(), 2)])
        );
    }

    #[test]
    fn keeps_placements_and_scales_down_from_the_top() {
        let n = nodes(&[("a", true, 2), ("b", true, 1)]);
        let current = assign(&[(0, "a"), (1, "b"), (2, "a")]);
        assert_eq!(
            schedule(3, &current, &n, &BTreeSet::new()),
            current,
            "stable"
        );
        assert_eq!(
            schedule(2, &current, &n, &BTreeSet::new()),
            assign(&[(0, "a"), (1, "b")])
        );
    }

    #[test]
    fn moves_slots_off_nodes_that_are_not_ready() {
        let n = nodes(&[("a", true, 1), ("b", false, 2), ("c", true, 1)]);
        let current = assign(&[(0, "a"), (1, "b"), (2, "b"), (3, "c")]);
        let next = schedule(4, &current, &n, &BTreeSet::new());
        assert_eq!(next[&0], "a");
        assert_eq!(next[&3], "c");
        assert!(next.values().all(|node| node != "b"), "{next:?}");
        assert_eq!(
            per_node(&next),
            BTreeMap::from([("a".into(), 2), ("c".into(), 2)])
        );
    }

    #[test]
    fn volumes_pin_an_app_to_their_node() {
        let n = nodes(&[("a", true, 0), ("b", true, 0)]);
        let volume_on_b = BTreeSet::from(["b".to_owned()]);
        let a = schedule(3, &Assignments::new(), &n, &volume_on_b);
        assert!(a.values().all(|node| node == "b"), "{a:?}");
        // The volume's node is down: the app waits rather than running without its data.
        let n = nodes(&[("a", true, 0), ("b", false, 0)]);
        assert!(schedule(3, &Assignments::new(), &n, &volume_on_b).is_empty());
        // Volumes on two nodes can never be mounted together.
        let split = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        let n = nodes(&[("a", true, 0), ("b", true, 0)]);
        assert!(schedule(1, &Assignments::new(), &n, &split).is_empty());
    }

    #[test]
    fn no_ready_node_leaves_slots_pending() {
        let n = nodes(&[("a", false, 0)]);
        assert!(schedule(2, &assign(&[(0, "a")]), &n, &BTreeSet::new()).is_empty());
    }
}
