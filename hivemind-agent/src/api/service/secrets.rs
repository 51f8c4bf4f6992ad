//! Secrets: create (the value sealed before it is stored), list (names only), remove.

use super::AgentService;
use crate::{
    api::error::{ApiError, ErrorKind},
    proto,
    reconcile::MAX_SECRET_BYTES,
    validate,
};

impl AgentService {
    pub async fn create_secret(
        &self,
        name: &str,
        value: &[u8],
    ) -> Result<proto::SecretInfo, ApiError> {
        validate::name("secret name", name)?;
        if value.is_empty() {
            return Err(ApiError::invalid(format!(
                "secret {name}: the value is empty"
            )));
        }
        if value.len() > MAX_SECRET_BYTES {
            return Err(ApiError::invalid(format!(
                "secret {name}: the value is {} bytes; at most {MAX_SECRET_BYTES} are allowed",
                value.len()
            )));
        }
        let parts = self.parts();
        let record = parts
            .vault
            .seal_secret(name, value)
            .map_err(|err| ApiError::new(ErrorKind::Internal, err.to_string()))?;
        if !parts.state.create_secret(&record).await? {
            return Err(ApiError::conflict(format!(
                "secret {name} already exists; secrets do not change in place: remove it and create it again"
            )));
        }
        tracing::info!(secret = name, bytes = value.len(), "secret created");
        Ok(proto::SecretInfo {
            name: record.name,
            size_bytes: record.size_bytes,
            created_at_ms: record.created_at_ms,
            used_by: Vec::new(),
        })
    }

    pub async fn secrets(&self) -> Result<proto::ListSecretsReply, ApiError> {
        let state = &self.parts().state;
        let apps = state.apps().await?;
        Ok(proto::ListSecretsReply {
            secrets: state
                .secrets()
                .await?
                .into_iter()
                .map(|s| proto::SecretInfo {
                    used_by: apps
                        .iter()
                        .filter(|a| a.secrets.iter().any(|m| m.secret == s.name))
                        .map(|a| a.name.clone())
                        .collect(),
                    name: s.name,
                    size_bytes: s.size_bytes,
                    created_at_ms: s.created_at_ms,
                })
                .collect(),
        })
    }

    /// Refused while an app mounts it.
    pub async fn remove_secret(&self, name: &str) -> Result<proto::ActionReply, ApiError> {
        validate::name("secret name", name)?;
        let state = &self.parts().state;
        // Deploys and updates check the secret exists under the same lock.
        let _change = self.inner.locks.node().await;
        if state.secret(name).await?.is_none() {
            return Err(ApiError::not_found(format!("no secret named {name}")));
        }
        let users: Vec<String> = state
            .apps()
            .await?
            .into_iter()
            .filter(|a| a.secrets.iter().any(|m| m.secret == name))
            .map(|a| a.name)
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "secret {name} is in use by app {}; remove it from the app first (`hivemind app update {} --secret-rm {name}`)",
                users.join(", "),
                users[0]
            )));
        }
        state.delete_secret(name).await?;
        Ok(proto::ActionReply {
            message: format!("Removed secret {name}"),
        })
    }
}
