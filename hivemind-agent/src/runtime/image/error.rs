//! What can go wrong with an image, worded for the person who asked for it: every variant
//! names the image and, for registry problems, the registry.

use std::{path::PathBuf, time::Duration};

use super::{manifest::ManifestError, reference::ReferenceError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),

    #[error(
        "image {image} not found on registry {registry} (manifest unknown): check the repository name and tag"
    )]
    NotFound { image: String, registry: String },

    #[error(
        "registry {registry} refused anonymous access to {image}: log in first with `hivemind registry login {registry}`"
    )]
    Unauthorized { image: String, registry: String },

    #[error(
        "registry {registry} refused the credentials of {who} for {image}: check them, then `hivemind registry login {registry}` again"
    )]
    Refused {
        image: String,
        registry: String,
        who: String,
    },

    #[error("cannot pull {image}: no credentials for registry {registry} ({reason})")]
    Credentials {
        image: String,
        registry: String,
        reason: String,
    },

    #[error("cannot pull {image}: registry {registry} is unreachable ({reason})")]
    Unreachable {
        image: String,
        registry: String,
        reason: String,
    },

    #[error("cannot pull {image}: registry {registry} did not answer within {timeout:?}")]
    Timeout {
        image: String,
        registry: String,
        timeout: Duration,
    },

    #[error(
        "cannot pull {image}: registry {registry} speaks plain HTTP, not HTTPS; if you trust it, start the agent with --insecure-registry {registry}"
    )]
    HttpsRequired { image: String, registry: String },

    #[error(
        "cannot pull {image}: TLS with registry {registry} failed ({reason}); if it uses a private CA, start the agent with --registry-ca {registry}=CA.pem"
    )]
    Tls {
        image: String,
        registry: String,
        reason: String,
    },

    #[error("cannot pull {image}: registry {registry} answered with an error ({message})")]
    Registry {
        image: String,
        registry: String,
        message: String,
    },

    #[error(
        "cannot pull {image}: {what} from registry {registry} does not match its digest (expected {expected}, got {actual})"
    )]
    DigestMismatch {
        image: String,
        registry: String,
        what: String,
        expected: String,
        actual: String,
    },

    #[error(
        "cannot pull {image}: {what} from registry {registry} is not the advertised size (expected {expected} bytes, got {actual})"
    )]
    SizeMismatch {
        image: String,
        registry: String,
        what: String,
        expected: u64,
        actual: u64,
    },

    #[error("cannot use image {image} from registry {registry}: {reason}")]
    Unusable {
        image: String,
        registry: String,
        reason: ManifestError,
    },

    #[error(
        "cannot unpack {image}: layer {layer} ({digest}) unpacked to {actual}, but the image config says {expected}"
    )]
    DiffIdMismatch {
        image: String,
        layer: usize,
        digest: String,
        expected: String,
        actual: String,
    },

    #[error("containerd at {socket} is unreachable ({message}); image {image} was not changed")]
    ContainerdUnreachable {
        image: String,
        socket: PathBuf,
        message: String,
    },

    #[error("image {image}: containerd {operation} failed ({code:?}: {message})")]
    Containerd {
        image: String,
        operation: &'static str,
        code: tonic::Code,
        message: String,
    },

    #[error("the pull of {image} was interrupted: the agent is shutting down")]
    Interrupted { image: String },

    #[error("image {image} is not pulled on this node")]
    NotPresent { image: String },

    #[error("image {image} is in containerd's image store but {missing}; pull it again")]
    Incomplete { image: String, missing: String },
}

impl ImageError {
    /// The registry or containerd could not be reached: worth retrying later, not the
    /// request's fault.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Timeout { .. } | Self::ContainerdUnreachable { .. }
        )
    }

    /// containerd refused an operation, or what it stores is damaged: the node's problem,
    /// not the request's.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Self::Containerd { .. } | Self::Incomplete { .. } | Self::Interrupted { .. }
        )
    }
}
