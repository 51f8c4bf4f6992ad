//! Who a pull talks to a registry as.
//!
//! In this order, the first that has an answer for the registry's host wins:
//! 1. the logins of `hivemind registry login`, kept (sealed) in the store — a
//!    [`CredentialSource`] the agent plugs in, since this layer does not know the store;
//! 2. the Docker `config.json` given with `--registry-config`: `credHelpers`, `credsStore`
//!    (both run a `docker-credential-*` helper, e.g. ECR's) and `auths`, read by the
//!    `docker_credential` crate;
//! 3. anonymous.
//!
//! oci-client answers both kinds of challenge with what this returns: HTTP basic, and the
//! bearer-token flow of Docker Hub, GHCR, ECR and GitLab (the username and password sent to
//! the token realm).

use std::{fmt, path::PathBuf, sync::Arc};

use futures_util::future::BoxFuture;
use oci_client::secrets::RegistryAuth;

/// Credentials for one registry, and where they came from (for error messages and logs).
#[derive(Clone)]
pub struct Credential {
    pub username: String,
    secret: CredentialSecret,
    /// "registry login", "--registry-config", ...
    pub origin: &'static str,
}

#[derive(Clone)]
enum CredentialSecret {
    Password(String),
    /// A `config.json` identity token, sent as a bearer token.
    IdentityToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Credential {
    pub fn basic(username: String, password: String, origin: &'static str) -> Self {
        Self {
            username,
            secret: CredentialSecret::Password(password),
            origin,
        }
    }

    pub(super) fn auth(&self) -> RegistryAuth {
        match &self.secret {
            CredentialSecret::Password(password) => {
                RegistryAuth::Basic(self.username.clone(), password.clone())
            }
            CredentialSecret::IdentityToken(token) => RegistryAuth::Bearer(token.clone()),
        }
    }

    /// Who, as error messages name it.
    pub fn who(&self) -> String {
        if self.username.is_empty() {
            format!("the token from {}", self.origin)
        } else {
            format!("user {} (from {})", self.username, self.origin)
        }
    }
}

/// Credentials the agent keeps somewhere this layer does not know (the store).
pub trait CredentialSource: Send + Sync {
    /// The credentials for `registry` (`HOST[:PORT]`, `docker.io` for Docker Hub), if any.
    fn credential<'a>(
        &'a self,
        registry: &'a str,
    ) -> BoxFuture<'a, Result<Option<Credential>, String>>;
}

/// The credential sources of one agent, asked in order.
#[derive(Clone, Default)]
pub struct Credentials {
    pub stored: Option<Arc<dyn CredentialSource>>,
    /// `--registry-config`: a Docker `config.json`.
    pub docker_config: Option<PathBuf>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("stored", &self.stored.is_some())
            .field("docker_config", &self.docker_config)
            .finish()
    }
}

impl Credentials {
    /// The credentials to pull from `registry` with; `None` is anonymous.
    pub async fn lookup(&self, registry: &str) -> Result<Option<Credential>, String> {
        if let Some(stored) = &self.stored
            && let Some(found) = stored.credential(registry).await?
        {
            return Ok(Some(found));
        }
        let Some(path) = self.docker_config.clone() else {
            return Ok(None);
        };
        let registry = registry.to_owned();
        // Helpers are processes; the crate runs them synchronously.
        tokio::task::spawn_blocking(move || from_docker_config(&path, &registry))
            .await
            .map_err(|err| format!("reading --registry-config: {err}"))?
    }
}

/// What `config.json` at `path` says about `registry`, as Docker reads it.
fn from_docker_config(path: &PathBuf, registry: &str) -> Result<Option<Credential>, String> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    // Docker keys Docker Hub by its old index URL.
    let servers: &[&str] = if registry == "docker.io" {
        &[
            "https://index.docker.io/v1/",
            "docker.io",
            "index.docker.io",
        ]
    } else {
        &[registry]
    };
    for server in servers {
        let file = std::fs::File::open(path)
            .map_err(|err| format!("cannot read --registry-config {}: {err}", path.display()))?;
        match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), server) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                return Ok(Some(Credential::basic(
                    username,
                    password,
                    "--registry-config",
                )));
            }
            Ok(DockerCredential::IdentityToken(token)) => {
                return Ok(Some(Credential {
                    username: String::new(),
                    secret: CredentialSecret::IdentityToken(token),
                    origin: "--registry-config",
                }));
            }
            Err(E::NoCredentialConfigured) => {}
            Err(err @ (E::ConfigNotFound | E::ConfigReadError)) => {
                return Err(format!("--registry-config {}: {err}", path.display()));
            }
            Err(err) => {
                return Err(format!(
                    "the credential helper of --registry-config {} for {registry}: {err}",
                    path.display()
                ));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn docker_config_auths_and_missing_hosts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        // "alice:s3cret"
        std::fs::write(
            &path,
            r#"{"auths":{"reg.example:5000":{"auth":"YWxpY2U6czNjcmV0"}}}"#,
        )
        .expect("write");
        let credentials = Credentials {
            stored: None,
            docker_config: Some(path.clone()),
        };
        let found = credentials
            .lookup("reg.example:5000")
            .await
            .expect("lookup")
            .expect("found");
        assert_eq!(found.username, "alice");
        assert!(matches!(found.secret, CredentialSecret::Password(ref p) if p == "s3cret"));
        assert!(
            credentials
                .lookup("other.example")
                .await
                .expect("lookup")
                .is_none()
        );
        std::fs::write(&path, "not json").expect("write");
        let err = credentials
            .lookup("reg.example:5000")
            .await
            .expect_err("bad file");
        assert!(err.contains("--registry-config"), "{err}");
    }
}
