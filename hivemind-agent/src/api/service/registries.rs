//! Registry logins: checked with the registry, then stored with the password sealed, for
//! every node's pulls.

use super::AgentService;
use crate::{
    api::error::{ApiError, ErrorKind},
    proto,
    runtime::image::{ImageError, credentials::Credential},
};

impl AgentService {
    pub async fn registry_login(
        &self,
        request: proto::RegistryLoginRequest,
    ) -> Result<proto::ActionReply, ApiError> {
        let host = registry_host(&request.host)?;
        if request.username.trim().is_empty() {
            return Err(ApiError::invalid("registry login: the username is empty"));
        }
        if request.password.is_empty() {
            return Err(ApiError::invalid("registry login: the password is empty"));
        }
        let parts = self.parts();
        let credential = Credential::basic(
            request.username.clone(),
            request.password.clone(),
            "hivemind registry login",
        );
        parts
            .runtime
            .images()
            .check_login(&host, credential)
            .await
            .map_err(|err| login_error(&host, &request.username, err))?;
        let login = parts
            .vault
            .seal_login(&host, &request.username, &request.password)
            .map_err(|err| ApiError::new(ErrorKind::Internal, err.to_string()))?;
        parts.state.put_registry_login(&login).await?;
        tracing::info!(registry = %host, user = %request.username, "registry login stored");
        Ok(proto::ActionReply {
            message: format!("Login Succeeded: {host} as {}", request.username),
        })
    }

    pub async fn registry_logout(&self, host: &str) -> Result<proto::ActionReply, ApiError> {
        let host = registry_host(host)?;
        if !self.parts().state.delete_registry_login(&host).await? {
            return Err(ApiError::not_found(format!("not logged in to {host}")));
        }
        Ok(proto::ActionReply {
            message: format!("Removed the login for {host}"),
        })
    }

    pub async fn registries(&self) -> Result<proto::ListRegistriesReply, ApiError> {
        Ok(proto::ListRegistriesReply {
            registries: self
                .parts()
                .state
                .registry_logins()
                .await?
                .into_iter()
                .map(|l| proto::RegistryInfo {
                    host: l.host,
                    username: l.username,
                    logged_in_at_ms: l.logged_in_at_ms,
                })
                .collect(),
        })
    }
}

/// `HOST[:PORT]` as image references spell it; Docker Hub's aliases become `docker.io`.
fn registry_host(input: &str) -> Result<String, ApiError> {
    let host = input.trim();
    let host = host
        .strip_prefix("https://")
        .or_else(|| host.strip_prefix("http://"))
        .unwrap_or(host)
        .trim_end_matches('/');
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" | "index.docker.io/v1" => "docker.io",
        other => other,
    };
    let valid = !host.is_empty()
        && !host.contains('/')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if valid {
        Ok(host.to_ascii_lowercase())
    } else {
        Err(ApiError::invalid(format!(
            "invalid registry {input:?}: expected HOST[:PORT], e.g. registry.example.com:5000"
        )))
    }
}

/// A failed check, worded for a login (not for a pull of the probe repository).
fn login_error(host: &str, user: &str, err: ImageError) -> ApiError {
    match err {
        ImageError::Refused { .. } | ImageError::Unauthorized { .. } => ApiError::invalid(format!(
            "registry {host} refused the credentials of user {user}; nothing was stored"
        )),
        other => {
            let mut api = ApiError::from(other);
            api.message = format!(
                "cannot log in to {host}: {}; nothing was stored",
                api.message
            );
            api
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_are_normalised() {
        assert_eq!(
            registry_host("Reg.Example:5000").expect("ok"),
            "reg.example:5000"
        );
        assert_eq!(
            registry_host("https://index.docker.io/v1/").expect("ok"),
            "docker.io"
        );
        assert!(registry_host("reg.example/repo").is_err());
        assert!(registry_host("").is_err());
    }
}
