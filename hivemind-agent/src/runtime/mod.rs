//! The container runtime: containerd over its gRPC socket.
//!
//! The channel connects lazily and reconnects by itself, so the agent starts while containerd
//! is down, reports it as unreachable, and picks it up again when it returns.
//!
//! [`image`] pulls images into containerd and reads them back.

pub mod containers;
pub mod exec;
pub mod exec_attached;
mod fifo;
pub mod image;
pub mod log_file;
pub mod metrics;
pub mod netns;
pub mod rootfs;
mod seccomp;
pub mod spec;
pub mod user;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use containerd_client::services::v1::version_client::VersionClient;
use tonic::transport::Channel;

use crate::{proto, unix_channel};

use self::image::{ImageError, Images, PullProgress, PulledImage, RegistryOptions};

/// How long a health probe waits before calling containerd unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("containerd at {socket} is unreachable: {message}")]
    Unreachable { socket: PathBuf, message: String },
    #[error("containerd at {socket} did not answer within {timeout:?}")]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("containerd: cannot {op} {id}: {message}")]
    Call {
        op: &'static str,
        id: String,
        code: tonic::Code,
        message: String,
    },
    /// An exec the container cannot run as asked (not running, unknown user).
    #[error("cannot exec in {id}: {message}")]
    ExecRefused { id: String, message: String },
    /// The agent's own end of an exec's stdio failed.
    #[error("exec in {id}: cannot {what}: {source}")]
    ExecIo {
        id: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// True when containerd itself could not be reached (as opposed to refusing a request).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::Call { code, .. } => *code == tonic::Code::Unavailable,
            Self::ExecRefused { .. } | Self::ExecIo { .. } => false,
        }
    }

    /// True when the request itself was wrong for the container, not the runtime at fault.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::ExecRefused { .. })
    }
}

/// containerd's answer to a version probe.
#[derive(Debug, Clone)]
pub struct RuntimeVersion {
    pub version: String,
    pub revision: String,
}

#[derive(Clone, Debug)]
pub struct Runtime {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
    images: Images,
    /// Image accounts (`/etc/passwd`, `/etc/group`) read so far, by chain id.
    accounts: rootfs::AccountsCache,
    /// The `hivemind` binary the shim runs to write timestamped log records; without it
    /// containers' output goes to their log file as it is.
    log_writer: Option<Arc<Path>>,
}

/// containerd selects the namespace of every call from this gRPC header.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// ... and the lease that holds what the call creates.
const LEASE_HEADER: &str = "containerd-lease";

impl Runtime {
    /// containerd at `socket`, working in `namespace`; registries over HTTPS except the
    /// `insecure_registries` (`HOST:PORT`, from `--insecure-registry`).
    pub fn new(socket: PathBuf, namespace: String, insecure_registries: Vec<String>) -> Self {
        let registries = RegistryOptions {
            insecure: insecure_registries,
            ..RegistryOptions::default()
        };
        Self::with_registries(socket, namespace, registries)
    }

    /// As [`Runtime::new`], with every registry setting (timeouts too).
    pub fn with_registries(
        socket: PathBuf,
        namespace: String,
        registries: RegistryOptions,
    ) -> Self {
        let channel = unix_channel::lazy(socket.clone());
        let images = Images::new(
            channel.clone(),
            socket.clone(),
            namespace.clone(),
            registries,
        );
        Self {
            channel,
            socket,
            namespace,
            images,
            accounts: rootfs::AccountsCache::default(),
            log_writer: None,
        }
    }

    /// Containers' output is written as timestamped records by `binary`'s
    /// [`log_file::WRITER_SUBCOMMAND`] (the agent passes its own executable).
    #[must_use]
    pub fn with_log_writer(mut self, binary: PathBuf) -> Self {
        self.log_writer = Some(binary.into());
        self
    }

    /// Pulling, reading and removing images.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// [`Images::ensure_image`]: the image, pulled unless present (or with `force`).
    pub async fn ensure_image(
        &self,
        reference: &str,
        force: bool,
        progress: Option<tokio::sync::mpsc::Sender<PullProgress>>,
    ) -> Result<PulledImage, ImageError> {
        self.images.ensure_image(reference, force, progress).await
    }

    /// [`Images::local_image`]: the stored image, without the network.
    pub async fn local_image(&self, reference: &str) -> Result<PulledImage, ImageError> {
        self.images.local_image(reference).await
    }

    /// [`Images::remove_image`]: `Ok(false)` if there was no such image.
    pub async fn remove_image(&self, reference: &str) -> Result<bool, ImageError> {
        self.images.remove_image(reference).await
    }

    pub async fn version(&self) -> Result<RuntimeVersion, RuntimeError> {
        let mut client = VersionClient::new(self.channel.clone());
        let reply = tokio::time::timeout(PROBE_TIMEOUT, client.version(()))
            .await
            .map_err(|_| RuntimeError::Timeout {
                socket: self.socket.clone(),
                timeout: PROBE_TIMEOUT,
            })?
            .map_err(|status| RuntimeError::Unreachable {
                socket: self.socket.clone(),
                message: status_message(&status),
            })?
            .into_inner();
        Ok(RuntimeVersion {
            version: reply.version,
            revision: reply.revision,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A request in Hivemind's containerd namespace.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = self.namespace.parse() {
            request.metadata_mut().insert(NAMESPACE_HEADER, value);
        }
        request
    }

    /// A request in Hivemind's namespace whose new resources belong to `lease`.
    fn leased<T>(&self, lease: &str, message: T) -> tonic::Request<T> {
        let mut request = self.request(message);
        if let Ok(value) = lease.parse() {
            request.metadata_mut().insert(LEASE_HEADER, value);
        }
        request
    }

    fn call_error(&self, op: &'static str, id: &str, status: &tonic::Status) -> RuntimeError {
        if status.code() == tonic::Code::Unavailable {
            return RuntimeError::Unreachable {
                socket: self.socket.clone(),
                message: status_message(status),
            };
        }
        RuntimeError::Call {
            op,
            id: id.to_owned(),
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    pub async fn status(&self) -> proto::RuntimeStatus {
        let mut status = proto::RuntimeStatus {
            socket: self.socket.display().to_string(),
            namespace: self.namespace.clone(),
            ..Default::default()
        };
        match self.version().await {
            Ok(version) => {
                status.reachable = true;
                status.version = version.version;
                status.revision = version.revision;
            }
            Err(err) => status.error = err.to_string(),
        }
        status
    }
}

/// tonic's transport errors hide the OS error in the source chain; surface it.
pub(crate) fn status_message(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        message = err.to_string();
        source = err.source();
    }
    message
}
