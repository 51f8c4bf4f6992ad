//! Typed access: callers keep serde structs in the store as JSON.

use serde::{Serialize, de::DeserializeOwned};

use super::{KeyValue, LeaseId, Op, Revision, Store, StoreError};

/// A decoded value with its key's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<T> {
    pub key: String,
    pub value: T,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub lease: LeaseId,
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        key: key.to_owned(),
        source,
    })
}

impl KeyValue {
    /// Decodes the value as JSON.
    pub fn decode<T: DeserializeOwned>(self) -> Result<Entry<T>, StoreError> {
        let value = serde_json::from_slice(&self.value).map_err(|source| StoreError::Decode {
            key: self.key.clone(),
            source,
        })?;
        Ok(Entry {
            key: self.key,
            value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        })
    }
}

impl Op {
    /// A put of `value` as JSON, for a [`Txn`](super::Txn).
    pub fn put_json<T: Serialize + ?Sized>(
        key: impl Into<String>,
        value: &T,
        lease: LeaseId,
    ) -> Result<Self, StoreError> {
        let key = key.into();
        let value = encode(&key, value)?;
        Ok(Op::Put { key, value, lease })
    }
}

impl Store {
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Entry<T>>, StoreError> {
        self.get(key).await?.map(KeyValue::decode).transpose()
    }

    /// Writes `value` as JSON; returns the new revision.
    pub async fn put_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Revision, StoreError> {
        self.put(key, encode(key, value)?).await
    }

    /// Every entry under `prefix`, decoded, sorted by key, and the revision they were read at.
    /// One undecodable value fails the whole range, naming its key.
    pub async fn range_json<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<(Vec<Entry<T>>, Revision), StoreError> {
        let (kvs, revision) = self.range(prefix).await?;
        let entries = kvs
            .into_iter()
            .map(KeyValue::decode)
            .collect::<Result<_, _>>()?;
        Ok((entries, revision))
    }
}
