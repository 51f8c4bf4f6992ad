//! Typed access to Hivemind's records in the store: the only module that knows the key layout
//! and the JSON encoding. Writes that must not race use compare-and-swap transactions.

use std::collections::BTreeMap;

use crate::{
    model::{
        AppSpec, AppliedSet, ContainerRecord, PolicyRecord, RegistryLogin, SecretRecord,
        VolumeRecord, keys,
    },
    reconcile::{rollout::Rollout, schedule::Assignments},
    store::{Compare, Op, Revision, Store, StoreError, Txn},
};

#[derive(Clone, Debug)]
pub struct State {
    store: Store,
}

impl State {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    // --- apps ---

    /// The app and the revision to pass to [`State::update_app`].
    pub async fn app(&self, name: &str) -> Result<Option<(AppSpec, Revision)>, StoreError> {
        Ok(self
            .store
            .get_json::<AppSpec>(&keys::app(name))
            .await?
            .map(|entry| (entry.value, entry.mod_revision)))
    }

    pub async fn apps(&self) -> Result<Vec<AppSpec>, StoreError> {
        Ok(self
            .store
            .range_json::<AppSpec>(keys::APPS)
            .await?
            .0
            .into_iter()
            .map(|entry| entry.value)
            .collect())
    }

    /// Stores a new app; false if the name is taken.
    pub async fn create_app(&self, app: &AppSpec) -> Result<bool, StoreError> {
        let key = keys::app(&app.name);
        self.create_if_absent(key, json(app)).await
    }

    /// Replaces the app if it is still at `revision`; false if someone changed it meanwhile.
    pub async fn update_app(&self, app: &AppSpec, revision: Revision) -> Result<bool, StoreError> {
        let key = keys::app(&app.name);
        self.put_if(Compare::ModRevision(key.clone(), revision), key, json(app))
            .await
    }

    pub async fn delete_app(&self, name: &str) -> Result<bool, StoreError> {
        self.store.delete(&keys::app(name)).await
    }

    // --- containers ---

    pub async fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        Ok(self
            .store
            .range_json::<ContainerRecord>(keys::CONTAINERS)
            .await?
            .0
            .into_iter()
            .map(|entry| entry.value)
            .collect())
    }

    pub async fn container(&self, id: &str) -> Result<Option<ContainerRecord>, StoreError> {
        Ok(self
            .store
            .get_json::<ContainerRecord>(&keys::container(id))
            .await?
            .map(|entry| entry.value))
    }

    pub async fn put_container(&self, record: &ContainerRecord) -> Result<(), StoreError> {
        self.store
            .put(&keys::container(&record.id), json(record))
            .await
            .map(|_| ())
    }

    /// Changes a record in place with compare-and-swap, retrying if it changed meanwhile, so
    /// a writer of one field (health) never reverts another's (state). No-op if it is gone.
    pub async fn update_container(
        &self,
        id: &str,
        change: impl Fn(&mut ContainerRecord),
    ) -> Result<(), StoreError> {
        let key = keys::container(id);
        loop {
            let Some(entry) = self.store.get_json::<ContainerRecord>(&key).await? else {
                return Ok(());
            };
            let mut record = entry.value;
            change(&mut record);
            let outcome = self
                .store
                .txn(Txn {
                    compare: vec![Compare::ModRevision(key.clone(), entry.mod_revision)],
                    success: vec![Op::Put {
                        key: key.clone(),
                        value: json(&record),
                        lease: 0,
                    }],
                    failure: Vec::new(),
                })
                .await?;
            if outcome.succeeded {
                return Ok(());
            }
        }
    }

    pub async fn delete_container(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete(&keys::container(id)).await.map(|_| ())
    }

    // --- volumes ---

    pub async fn volumes(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        self.list(keys::VOLUMES).await
    }

    pub async fn volume(&self, name: &str) -> Result<Option<VolumeRecord>, StoreError> {
        self.one(&keys::volume(name)).await
    }

    /// Stores a new volume; false if the name is taken.
    pub async fn create_volume(&self, volume: &VolumeRecord) -> Result<bool, StoreError> {
        self.create_if_absent(keys::volume(&volume.name), json(volume))
            .await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<bool, StoreError> {
        self.store.delete(&keys::volume(name)).await
    }

    // --- secrets ---

    pub async fn secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        self.list(keys::SECRETS).await
    }

    pub async fn secret(&self, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        self.one(&keys::secret(name)).await
    }

    /// Stores a new secret; false if the name is taken (secrets are not changed in place:
    /// remove and create again).
    pub async fn create_secret(&self, secret: &SecretRecord) -> Result<bool, StoreError> {
        self.create_if_absent(keys::secret(&secret.name), json(secret))
            .await
    }

    pub async fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        self.store.delete(&keys::secret(name)).await
    }

    // --- registry logins ---

    pub async fn registry_logins(&self) -> Result<Vec<RegistryLogin>, StoreError> {
        self.list(keys::REGISTRIES).await
    }

    pub async fn registry_login(&self, host: &str) -> Result<Option<RegistryLogin>, StoreError> {
        self.one(&keys::registry(host)).await
    }

    /// Stores (or replaces) the login for its host.
    pub async fn put_registry_login(&self, login: &RegistryLogin) -> Result<(), StoreError> {
        self.store
            .put(&keys::registry(&login.host), json(login))
            .await
            .map(drop)
    }

    pub async fn delete_registry_login(&self, host: &str) -> Result<bool, StoreError> {
        self.store.delete(&keys::registry(host)).await
    }

    // --- applied sets ---

    pub async fn applied_sets(&self) -> Result<Vec<AppliedSet>, StoreError> {
        self.list(keys::SETS).await
    }

    pub async fn applied_set(&self, name: &str) -> Result<Option<AppliedSet>, StoreError> {
        self.one(&keys::set(name)).await
    }

    /// Stores the set; an empty one is deleted.
    pub async fn put_applied_set(&self, set: &AppliedSet) -> Result<(), StoreError> {
        let key = keys::set(&set.name);
        let empty = set.apps.is_empty()
            && set.volumes.is_empty()
            && set.secrets.is_empty()
            && set.policies.is_empty();
        if empty {
            self.store.delete(&key).await.map(drop)
        } else {
            self.store.put(&key, json(set)).await.map(drop)
        }
    }

    /// Every record under `prefix`.
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, StoreError> {
        Ok(self
            .store
            .range_json::<T>(prefix)
            .await?
            .0
            .into_iter()
            .map(|entry| entry.value)
            .collect())
    }

    /// The record at `key`, if any.
    async fn one<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        Ok(self
            .store
            .get_json::<T>(key)
            .await?
            .map(|entry| entry.value))
    }

    // --- policies ---

    pub async fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        self.list(keys::POLICIES).await
    }

    pub async fn policy(&self, name: &str) -> Result<Option<PolicyRecord>, StoreError> {
        self.one(&keys::policy(name)).await
    }

    /// Writes a whole set of policies in one transaction: all of them or none.
    pub async fn put_policies(&self, records: &[PolicyRecord]) -> Result<(), StoreError> {
        let success = records
            .iter()
            .map(|r| Op::Put {
                key: keys::policy(&r.name),
                value: json(r),
                lease: 0,
            })
            .collect();
        self.store
            .txn(Txn {
                compare: Vec::new(),
                success,
                failure: Vec::new(),
            })
            .await
            .map(|_| ())
    }

    pub async fn delete_policy(&self, name: &str) -> Result<bool, StoreError> {
        self.store.delete(&keys::policy(name)).await
    }

    // --- replica placement ---

    /// Every app's slot → node assignments, with the revision to pass to
    /// [`State::set_assignments`] (0 when the app has none yet).
    pub async fn assignments(
        &self,
    ) -> Result<BTreeMap<String, (Assignments, Revision)>, StoreError> {
        Ok(self
            .store
            .range_json::<Assignments>(keys::ASSIGNMENTS)
            .await?
            .0
            .into_iter()
            .filter_map(|entry| {
                let app = entry.key.strip_prefix(keys::ASSIGNMENTS)?.to_owned();
                Some((app, (entry.value, entry.mod_revision)))
            })
            .collect())
    }

    /// Replaces an app's assignments if they are still at `revision` (0: absent).
    pub async fn set_assignments(
        &self,
        app: &str,
        assignments: &Assignments,
        revision: Revision,
    ) -> Result<bool, StoreError> {
        let key = keys::assignments(app);
        let compare = if revision == 0 {
            Compare::Absent(key.clone())
        } else {
            Compare::ModRevision(key.clone(), revision)
        };
        self.put_if(compare, key, json(assignments)).await
    }

    pub async fn delete_assignments(&self, app: &str) -> Result<(), StoreError> {
        self.store.delete(&keys::assignments(app)).await.map(|_| ())
    }

    // --- nodes ---

    /// Every node of the cluster and whether it is ready (its lease-backed liveness key is
    /// present). A node that has never joined a cluster is alone: itself, ready.
    pub async fn cluster_nodes(&self, this_node: &str) -> Result<Vec<(String, bool)>, StoreError> {
        let (registered, _) = self.store.range(keys::NODES).await?;
        if registered.is_empty() {
            return Ok(vec![(this_node.to_owned(), true)]);
        }
        let (alive, _) = self.store.range(keys::LIVENESS).await?;
        Ok(registered
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(keys::NODES))
            .map(|name| {
                let ready = alive
                    .iter()
                    .any(|kv| kv.key.strip_prefix(keys::LIVENESS) == Some(name));
                (name.to_owned(), ready)
            })
            .collect())
    }

    // --- identities (one per app, for policies) ---

    /// The app's security identity, allocated on first use: the lowest free number from
    /// `identity::FIRST_APP`.
    pub async fn app_identity(&self, app: &str) -> Result<u32, StoreError> {
        let key = keys::identity(app);
        loop {
            if let Some(entry) = self.store.get_json::<u32>(&key).await? {
                return Ok(entry.value);
            }
            let taken: std::collections::BTreeSet<u32> =
                self.identities().await?.into_values().collect();
            let next = (hivemind_common::identity::FIRST_APP
                ..hivemind_common::identity::FIRST_CIDR)
                .find(|id| !taken.contains(id))
                .unwrap_or(hivemind_common::identity::FIRST_APP);
            if self.create_if_absent(key.clone(), json(&next)).await? {
                return Ok(next);
            }
        }
    }

    /// Every app identity, by app name.
    pub async fn identities(&self) -> Result<BTreeMap<String, u32>, StoreError> {
        Ok(self
            .store
            .range_json::<u32>(keys::IDENTITIES)
            .await?
            .0
            .into_iter()
            .filter_map(|entry| {
                Some((
                    entry.key.strip_prefix(keys::IDENTITIES)?.to_owned(),
                    entry.value,
                ))
            })
            .collect())
    }

    pub async fn release_identity(&self, app: &str) -> Result<(), StoreError> {
        self.store.delete(&keys::identity(app)).await.map(|_| ())
    }

    async fn create_if_absent(&self, key: String, value: Vec<u8>) -> Result<bool, StoreError> {
        self.put_if(Compare::Absent(key.clone()), key, value).await
    }

    /// Writes `value` at `key` if `compare` holds: the compare-and-swap every update of shared
    /// state goes through, so concurrent writers on several nodes never lose an update.
    async fn put_if(
        &self,
        compare: Compare,
        key: String,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let outcome = self
            .store
            .txn(Txn {
                compare: vec![compare],
                success: vec![Op::Put {
                    key,
                    value,
                    lease: 0,
                }],
                failure: Vec::new(),
            })
            .await?;
        Ok(outcome.succeeded)
    }
}

// --- rollouts ---

impl State {
    /// Every app's current or last rollout, with the revision to pass to
    /// [`State::update_rollout`].
    pub async fn rollouts(&self) -> Result<Vec<(Rollout, Revision)>, StoreError> {
        Ok(self
            .store
            .range_json::<Rollout>(keys::ROLLOUTS)
            .await?
            .0
            .into_iter()
            .map(|entry| (entry.value, entry.mod_revision))
            .collect())
    }

    pub async fn rollout(&self, app: &str) -> Result<Option<(Rollout, Revision)>, StoreError> {
        Ok(self
            .store
            .get_json::<Rollout>(&keys::rollout(app))
            .await?
            .map(|entry| (entry.value, entry.mod_revision)))
    }

    /// Stores the app's new spec and its rollout in one transaction, if neither changed since
    /// they were read (`rollout_revision` 0: there was no rollout record).
    pub async fn begin_rollout(
        &self,
        app: &AppSpec,
        app_revision: Revision,
        rollout: &Rollout,
        rollout_revision: Revision,
    ) -> Result<bool, StoreError> {
        let (app_key, rollout_key) = (keys::app(&app.name), keys::rollout(&app.name));
        let outcome = self
            .store
            .txn(Txn {
                compare: vec![
                    Compare::ModRevision(app_key.clone(), app_revision),
                    Compare::ModRevision(rollout_key.clone(), rollout_revision),
                ],
                success: vec![
                    Op::Put {
                        key: app_key,
                        value: json(app),
                        lease: 0,
                    },
                    Op::Put {
                        key: rollout_key,
                        value: json(rollout),
                        lease: 0,
                    },
                ],
                failure: Vec::new(),
            })
            .await?;
        Ok(outcome.succeeded)
    }

    /// Replaces the rollout if it is still at `revision`.
    pub async fn update_rollout(
        &self,
        rollout: &Rollout,
        revision: Revision,
    ) -> Result<bool, StoreError> {
        let key = keys::rollout(&rollout.app);
        self.put_if(
            Compare::ModRevision(key.clone(), revision),
            key,
            json(rollout),
        )
        .await
    }

    pub async fn delete_rollout(&self, app: &str) -> Result<(), StoreError> {
        self.store.delete(&keys::rollout(app)).await.map(|_| ())
    }
}

/// Records are plain serde structs; encoding them cannot fail.
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
