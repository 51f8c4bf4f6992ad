//! Connecting the CLI to an agent: its Unix socket on this machine, or a node's cluster
//! endpoint from anywhere (`--addr https://HOST:PORT`), TLS verified against the cluster CA
//! and every call carrying the agent's API token. Named contexts in the client config file
//! (`~/.config/hivemind/config.toml`) hold those three, as `docker context` does.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use super::GlobalArgs;
use crate::{paths, proto::agent_client::AgentClient, unix_channel};

/// What every client of the CLI talks through.
pub type Transport = InterceptedService<Channel, Auth>;

/// Adds `authorization: Bearer <token>` to every call (remote agents only).
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// `~/.config/hivemind/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    /// The context used when neither `--context` nor `--addr` says otherwise.
    context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, ContextConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextConfig {
    addr: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca: Option<PathBuf>,
}

/// Where to connect and with what, after flags, environment and the context are combined.
#[derive(Debug)]
struct Target {
    addr: String,
    token: Option<String>,
    ca: Option<PathBuf>,
}

pub async fn connect(global: &GlobalArgs) -> anyhow::Result<AgentClient<Transport>> {
    Ok(AgentClient::new(channel(global).await?))
}

/// A connected channel to the agent named by `--addr` (or the context).
pub async fn channel(global: &GlobalArgs) -> anyhow::Result<Transport> {
    let target = target(global)?;
    let addr = target.addr.as_str();
    let unix = addr
        .strip_prefix("unix://")
        .or_else(|| addr.strip_prefix("unix:"))
        .or_else(|| addr.starts_with('/').then_some(addr));
    if let Some(path) = unix {
        let channel = unix_channel::connect(path)
            .await
            .map_err(|err| unreachable_error(addr, &err))?;
        return Ok(InterceptedService::new(channel, Auth(None)));
    }
    if addr.starts_with("http://") {
        bail!(
            "invalid --addr {addr:?}: agents serve remote clients over TLS only: use https://HOST:PORT (a node's cluster port)"
        );
    }
    if !addr.starts_with("https://") {
        bail!("invalid --addr {addr:?}: expected unix:PATH or https://HOST:PORT");
    }
    let Some(ca) = &target.ca else {
        bail!(
            "{addr}: the cluster CA is needed to verify the agent: pass --ca FILE (a node's <data dir>/pki/ca.crt) or set `ca` in the context"
        );
    };
    let ca_pem = std::fs::read_to_string(ca)
        .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
    let Some(token) = &target.token else {
        bail!(
            "{addr}: remote agents need their API token: pass --token (the node's `hivemind agent --print-token`) or set `token` in the context"
        );
    };
    let bearer = MetadataValue::try_from(format!("Bearer {}", token.trim()))
        .context("the token has characters a header cannot carry")?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    let channel = Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("invalid --addr {addr:?}"))?
        .tls_config(tls)
        .with_context(|| format!("{addr}: cannot set up TLS"))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(|err| unreachable_error(addr, &err))?;
    Ok(InterceptedService::new(channel, Auth(Some(bearer))))
}

/// Flags and `HIVEMIND_*` variables first, then the selected context, then the local socket.
fn target(global: &GlobalArgs) -> anyhow::Result<Target> {
    let default_addr = format!("unix:{}", paths::DEFAULT_SOCKET);
    let explicit_addr = global.addr != default_addr;
    let config = client_config()?;
    let name = global
        .context
        .clone()
        .or_else(|| (!explicit_addr).then(|| config.context.clone()).flatten());
    let context = match &name {
        Some(name) => Some(config.contexts.get(name).with_context(|| {
            let known: Vec<&str> = config.contexts.keys().map(String::as_str).collect();
            format!(
                "no context named {name} in {} (known: {})",
                config_path()
                    .map_or_else(|| "the client config".into(), |p| p.display().to_string()),
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        })?),
        None => None,
    };
    let token = match (&global.token, context) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(context)) => match (&context.token, &context.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the token file {}", file.display()))?,
            ),
            (None, None) => None,
        },
        (None, None) => None,
    };
    Ok(Target {
        addr: match context {
            Some(context) if !explicit_addr => context.addr.clone(),
            _ => global.addr.clone(),
        },
        token,
        ca: global
            .ca
            .clone()
            .or_else(|| context.and_then(|c| c.ca.clone())),
    })
}

/// `$HIVEMIND_CONFIG`, else `$XDG_CONFIG_HOME/hivemind/config.toml`, else
/// `~/.config/hivemind/config.toml`.
fn config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HIVEMIND_CONFIG") {
        return Some(path.into());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("hivemind/config.toml"))
}

fn client_config() -> anyhow::Result<ClientConfig> {
    let Some(path) = config_path() else {
        return Ok(ClientConfig::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("invalid client config {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn unreachable_error(addr: &str, err: &dyn std::error::Error) -> anyhow::Error {
    let mut cause = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        cause = err.to_string();
        source = err.source();
    }
    if addr.starts_with("https://") {
        let hint = if cause.contains("certificate") || cause.contains("UnknownIssuer") {
            " (is --ca the CA of this cluster?)"
        } else {
            " (is the agent part of a cluster, and is this its cluster port?)"
        };
        return anyhow::anyhow!("cannot reach the Hivemind agent at {addr}: {cause}{hint}");
    }
    anyhow::anyhow!(
        "cannot reach the Hivemind agent at {addr}: {cause} (is `hivemind agent` running?)"
    )
}
