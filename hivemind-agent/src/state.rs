//! Typed access to Hivemind's records in the store: the only module that knows the key layout
//! and the JSON encoding. Writes that must not race use compare-and-swap transactions.

use crate::{
    model::{AppSpec, ContainerRecord, VolumeRecord, keys},
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
        let outcome = self
            .store
            .txn(Txn {
                compare: vec![Compare::ModRevision(key.clone(), revision)],
                success: vec![Op::Put {
                    key,
                    value: json(app),
                    lease: 0,
                }],
                failure: Vec::new(),
            })
            .await?;
        Ok(outcome.succeeded)
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

    pub async fn delete_container(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete(&keys::container(id)).await.map(|_| ())
    }

    // --- volumes ---

    pub async fn volumes(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        Ok(self
            .store
            .range_json::<VolumeRecord>(keys::VOLUMES)
            .await?
            .0
            .into_iter()
            .map(|entry| entry.value)
            .collect())
    }

    pub async fn volume(&self, name: &str) -> Result<Option<VolumeRecord>, StoreError> {
        Ok(self
            .store
            .get_json::<VolumeRecord>(&keys::volume(name))
            .await?
            .map(|entry| entry.value))
    }

    /// Stores a new volume; false if the name is taken.
    pub async fn create_volume(&self, volume: &VolumeRecord) -> Result<bool, StoreError> {
        self.create_if_absent(keys::volume(&volume.name), json(volume))
            .await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<bool, StoreError> {
        self.store.delete(&keys::volume(name)).await
    }

    async fn create_if_absent(&self, key: String, value: Vec<u8>) -> Result<bool, StoreError> {
        let outcome = self
            .store
            .txn(Txn {
                compare: vec![Compare::Absent(key.clone())],
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

/// Records are plain serde structs; encoding them cannot fail.
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
