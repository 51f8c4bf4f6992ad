//! Volumes: create, list, remove.

use super::AgentService;
use crate::{
    api::error::ApiError,
    model::{VolumeRecord, now_ms},
    proto, validate,
};

impl AgentService {
    pub async fn create_volume(&self, name: &str) -> Result<proto::VolumeInfo, ApiError> {
        validate::name("volume name", name)?;
        let parts = self.parts();
        if parts.state.volume(name).await?.is_some() {
            return Err(ApiError::conflict(format!("volume {name} already exists")));
        }
        let path = parts.volumes.create(name).map_err(|err| {
            ApiError::new(crate::api::error::ErrorKind::Internal, err.to_string())
        })?;
        let record = VolumeRecord {
            name: name.to_owned(),
            node: parts.node_name.clone(),
            created_at_ms: now_ms(),
        };
        match parts.state.create_volume(&record).await {
            Ok(true) => {}
            Ok(false) => return Err(ApiError::conflict(format!("volume {name} already exists"))),
            Err(err) => {
                let _ = parts.volumes.remove(name);
                return Err(err.into());
            }
        }
        Ok(proto::VolumeInfo {
            name: record.name,
            node: record.node,
            path: path.display().to_string(),
            size_bytes: 0,
            created_at_ms: record.created_at_ms,
            used_by: Vec::new(),
        })
    }

    pub async fn volumes(&self) -> Result<proto::ListVolumesReply, ApiError> {
        let parts = self.parts();
        let apps = parts.state.apps().await?;
        let volumes = parts.state.volumes().await?;
        Ok(proto::ListVolumesReply {
            volumes: volumes
                .into_iter()
                .map(|v| proto::VolumeInfo {
                    path: parts.volumes.data_path(&v.name).display().to_string(),
                    size_bytes: parts.volumes.size(&v.name),
                    used_by: apps
                        .iter()
                        .filter(|a| a.volumes.iter().any(|m| m.volume == v.name))
                        .map(|a| a.name.clone())
                        .collect(),
                    name: v.name,
                    node: v.node,
                    created_at_ms: v.created_at_ms,
                })
                .collect(),
        })
    }

    /// Refused while an app mounts it; the data is deleted.
    pub async fn remove_volume(&self, name: &str) -> Result<proto::ActionReply, ApiError> {
        validate::name("volume name", name)?;
        let parts = self.parts();
        let _change = self.inner.locks.node().await;
        if parts.state.volume(name).await?.is_none() {
            return Err(ApiError::not_found(format!("no volume named {name}")));
        }
        let users: Vec<String> = parts
            .state
            .apps()
            .await?
            .into_iter()
            .filter(|a| a.volumes.iter().any(|m| m.volume == name))
            .map(|a| a.name)
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "volume {name} is in use by app {}; remove the app first",
                users.join(", ")
            )));
        }
        parts.state.delete_volume(name).await?;
        parts.volumes.remove(name).map_err(|err| {
            ApiError::new(crate::api::error::ErrorKind::Internal, err.to_string())
        })?;
        Ok(proto::ActionReply {
            message: format!("Removed volume {name}"),
        })
    }
}
