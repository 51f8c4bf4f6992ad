//! The store's sealed values — secrets and registry passwords — sealed and opened with the
//! node's key (the cluster's, on every node of a cluster). The only place that holds both the
//! store and the key: everyone else sees plaintext only where it is used (a pull, a
//! container's `/run/secrets`).

use futures_util::future::BoxFuture;

use crate::{
    model::{RegistryLogin, SecretRecord, keys, now_ms},
    runtime::image::credentials::{Credential, CredentialSource},
    sealed::{SealError, SealKey},
    state::State,
    store::StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("no secret named {0}")]
    NoSecret(String),
}

#[derive(Clone, Debug)]
pub struct Vault {
    state: State,
    key: SealKey,
}

impl Vault {
    pub fn new(state: State, key: SealKey) -> Self {
        Self { state, key }
    }

    /// A new secret record (not stored yet) holding `value` sealed.
    pub fn seal_secret(&self, name: &str, value: &[u8]) -> Result<SecretRecord, SealError> {
        Ok(SecretRecord {
            name: name.to_owned(),
            sealed_value: self.key.seal(&keys::secret(name), value)?,
            size_bytes: value.len() as u64,
            created_at_ms: now_ms(),
        })
    }

    /// The plaintext of secret `name`.
    pub async fn open_secret(&self, name: &str) -> Result<Vec<u8>, VaultError> {
        let record = self
            .state
            .secret(name)
            .await?
            .ok_or_else(|| VaultError::NoSecret(name.to_owned()))?;
        Ok(self.key.open(&keys::secret(name), &record.sealed_value)?)
    }

    /// A login record (not stored yet) with `password` sealed.
    pub fn seal_login(
        &self,
        host: &str,
        username: &str,
        password: &str,
    ) -> Result<RegistryLogin, SealError> {
        Ok(RegistryLogin {
            host: host.to_owned(),
            username: username.to_owned(),
            sealed_password: self.key.seal(&keys::registry(host), password.as_bytes())?,
            logged_in_at_ms: now_ms(),
        })
    }

    async fn login_for(&self, registry: &str) -> Result<Option<Credential>, VaultError> {
        let Some(login) = self.state.registry_login(registry).await? else {
            return Ok(None);
        };
        let password = self
            .key
            .open(&keys::registry(registry), &login.sealed_password)?;
        Ok(Some(Credential::basic(
            login.username,
            String::from_utf8_lossy(&password).into_owned(),
            "hivemind registry login",
        )))
    }
}

impl CredentialSource for Vault {
    fn credential<'a>(
        &'a self,
        registry: &'a str,
    ) -> BoxFuture<'a, Result<Option<Credential>, String>> {
        Box::pin(async move {
            self.login_for(registry)
                .await
                .map_err(|err| format!("reading the stored login: {err}"))
        })
    }
}
