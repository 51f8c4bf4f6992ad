//! Who may change what at once. Changes of one app (deploy, update, scale, restart, removal)
//! run one at a time under that app's lock, so their results and errors do not depend on
//! timing; changes of different apps run side by side, so a slow pull or a long convergence
//! of one app delays no other. A decision that spans apps — host ports and service names
//! taken, a volume or secret in use, the policy set — takes the node's lock only for the
//! store reads and writes that make it, never across a pull, a container start or a rollout.
//! Joining a cluster swaps the store under everything, so it waits for every change in flight
//! and holds new ones back.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex as SyncMutex, PoisonError},
};

use tokio::sync::{Mutex, MutexGuard, OwnedMutexGuard, OwnedRwLockReadGuard, RwLock};

#[derive(Debug, Default)]
pub struct ChangeLocks {
    /// Shared by every change for as long as it runs; exclusive for a join.
    store: Arc<RwLock<()>>,
    /// Decisions that span apps.
    node: Mutex<()>,
    /// One lock per app name; an entry nobody holds is dropped by the next lookup.
    apps: SyncMutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// A change of one app in progress: no other change of it, and no join, until dropped.
#[derive(Debug)]
pub struct AppChange {
    _app: OwnedMutexGuard<()>,
    _store: OwnedRwLockReadGuard<()>,
}

impl ChangeLocks {
    /// Waits for the app's other changes (and a join) to finish.
    pub async fn app(&self, name: &str) -> AppChange {
        let store = Arc::clone(&self.store).read_owned().await;
        let lock = {
            let mut apps = self.apps.lock().unwrap_or_else(PoisonError::into_inner);
            // Only the map holds an idle lock; forget those before adding another.
            apps.retain(|_, lock| Arc::strong_count(lock) > 1);
            Arc::clone(apps.entry(name.to_owned()).or_default())
        };
        AppChange {
            _app: lock.lock_owned().await,
            _store: store,
        }
    }

    /// For a decision that spans apps; hold it for store reads and writes only.
    pub async fn node(&self) -> MutexGuard<'_, ()> {
        self.node.lock().await
    }

    /// For a join: waits for every change in flight and keeps new ones out.
    pub async fn everything(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.store.write().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_app_waits_for_itself_not_for_others() {
        let locks = Arc::new(ChangeLocks::default());
        let web = locks.app("web").await;
        // Another app goes ahead.
        let api = tokio::time::timeout(Duration::from_millis(100), locks.app("api")).await;
        assert!(api.is_ok(), "api waited for web");
        drop(api);
        // The same app waits.
        let again = tokio::time::timeout(Duration::from_millis(100), locks.app("web")).await;
        assert!(again.is_err(), "web did not wait for itself");
        drop(web);
        let again = tokio::time::timeout(Duration::from_millis(100), locks.app("web")).await;
        assert!(again.is_ok());
    }

    #[tokio::test]
    async fn a_join_waits_for_changes_and_holds_new_ones() {
        let locks = Arc::new(ChangeLocks::default());
        let web = locks.app("web").await;
        let join = tokio::time::timeout(Duration::from_millis(100), locks.everything()).await;
        assert!(join.is_err(), "the join did not wait for web's change");
        drop(web);
        let join = locks.everything().await;
        let api = tokio::time::timeout(Duration::from_millis(100), locks.app("api")).await;
        assert!(api.is_err(), "a change started during the join");
        drop(join);
    }

    #[tokio::test]
    async fn idle_locks_are_forgotten() {
        let locks = ChangeLocks::default();
        for name in ["a", "b", "c"] {
            drop(locks.app(name).await);
        }
        let held = locks.app("d").await;
        assert_eq!(locks.apps.lock().expect("map").len(), 1);
        drop(held);
    }
}
