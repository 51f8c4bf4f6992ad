//! Named volumes: directories under `<data dir>/volumes/<name>/_data`, bind-mounted into
//! containers. The records (who created what, when) live in the store; this module owns the
//! directories.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
#[error("volume {name}: cannot {op} {path}")]
pub struct VolumeDirError {
    pub name: String,
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

#[derive(Clone, Debug)]
pub struct VolumeDirs {
    root: PathBuf,
}

impl VolumeDirs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory mounted into containers.
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.root.join(name).join("_data")
    }

    pub fn create(&self, name: &str) -> Result<PathBuf, VolumeDirError> {
        let path = self.data_path(name);
        fs::create_dir_all(&path).map_err(|source| VolumeDirError {
            name: name.to_owned(),
            op: "create",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    pub fn remove(&self, name: &str) -> Result<(), VolumeDirError> {
        let path = self.root.join(name);
        match fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(VolumeDirError {
                name: name.to_owned(),
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// Bytes used by the volume's files (apparent sizes; symlinks not followed).
    pub fn size(&self, name: &str) -> u64 {
        dir_size(&self.data_path(name))
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
