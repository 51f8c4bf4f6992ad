//! Desired state. Single node: redb in the data dir (the embedded default).

use std::path::{Path, PathBuf};

use redb::ReadableDatabase as _;

use crate::proto;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
}

/// The node's store. Owns the database file; every other module goes through it.
#[derive(Debug)]
pub struct Store {
    db: redb::Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the redb file. Fails if another agent holds it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = redb::Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    pub fn status(&self) -> proto::StoreStatus {
        // A read transaction proves the file is readable and not corrupt.
        let error = self.db.begin_read().err().map(|err| err.to_string());
        proto::StoreStatus {
            backend: "redb".into(),
            location: self.path.display().to_string(),
            ok: error.is_none(),
            error: error.unwrap_or_default(),
        }
    }
}
