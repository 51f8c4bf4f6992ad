//! The API's error: a category (which maps to one gRPC code and one HTTP status, in exactly
//! one place each) and a message for people.

use crate::{
    cluster::{ClusterError, join::JoinError},
    reconcile::{LifecycleError, ReconcileError},
    runtime::{RuntimeError, image::ImageError},
    store::StoreError,
    validate::InvalidInput,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input: 400 / `InvalidArgument`.
    Invalid,
    /// No such app, container or volume: 404 / `NotFound`.
    NotFound,
    /// Name taken, resource in use, concurrent change: 409 / `AlreadyExists`.
    Conflict,
    /// The operation ran and failed, and what it changed was undone (a rolled-back rollout):
    /// 409 / `Aborted`.
    Aborted,
    /// A dependency (containerd, a registry, etcd) cannot be reached: 503 / `Unavailable`.
    Unavailable,
    /// The store did not confirm a change in time, so it may or may not have been applied:
    /// 504 / `DeadlineExceeded` (gRPC's code for exactly that).
    Unconfirmed,
    /// A real fault: 500 / `Internal`.
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
}

impl From<InvalidInput> for ApiError {
    fn from(err: InvalidInput) -> Self {
        Self::invalid(err.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        if err.is_unconfirmed() {
            Self::new(
                ErrorKind::Unconfirmed,
                format!(
                    "the store did not confirm the change in time; it may have been applied ({})",
                    crate::error_chain(&err)
                ),
            )
        } else if err.is_unavailable() {
            Self::new(
                ErrorKind::Unavailable,
                format!("the store is unavailable: {}", crate::error_chain(&err)),
            )
        } else {
            Self::new(ErrorKind::Internal, format!("store: {err}"))
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(err: RuntimeError) -> Self {
        let kind = if err.is_unreachable() {
            ErrorKind::Unavailable
        } else if err.is_refusal() {
            ErrorKind::Invalid
        } else {
            ErrorKind::Internal
        };
        Self::new(kind, err.to_string())
    }
}

impl From<ImageError> for ApiError {
    fn from(err: ImageError) -> Self {
        let kind = if err.is_unreachable() {
            ErrorKind::Unavailable
        } else if err.is_internal() {
            ErrorKind::Internal
        } else {
            ErrorKind::Invalid
        };
        Self::new(kind, err.to_string())
    }
}

impl From<ReconcileError> for ApiError {
    fn from(err: ReconcileError) -> Self {
        match err {
            ReconcileError::Store(e) => e.into(),
            ReconcileError::Runtime(e) => e.into(),
            ReconcileError::Lifecycle(e) => e.into(),
            ReconcileError::Stopped => Self::new(ErrorKind::Internal, err.to_string()),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(err: LifecycleError) -> Self {
        match err {
            LifecycleError::Image(e) => e.into(),
            LifecycleError::Runtime(e) if e.is_unreachable() => e.into(),
            LifecycleError::Store(e) => e.into(),
            LifecycleError::Netns(_)
            | LifecycleError::Files { .. }
            | LifecycleError::Secret { .. }
            | LifecycleError::Network(_) => Self::new(ErrorKind::Internal, err.to_string()),
            // The container could not be made or started from this image and these settings
            // (e.g. its command does not exist): the request's fault, said in the message.
            LifecycleError::Runtime(_) | LifecycleError::Process(_) => {
                Self::invalid(format!("the container could not start: {err}"))
            }
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(err: ClusterError) -> Self {
        match err {
            ClusterError::Store(e) => e.into(),
            ClusterError::NotClustered => Self::invalid(err.to_string()),
            ClusterError::Missing { .. } | ClusterError::Pki(_) => {
                Self::new(ErrorKind::Internal, err.to_string())
            }
        }
    }
}

impl From<JoinError> for ApiError {
    fn from(err: JoinError) -> Self {
        let kind = match &err {
            JoinError::AlreadyClustered { .. } | JoinError::NotEmpty { .. } | JoinError::Busy => {
                ErrorKind::Conflict
            }
            JoinError::Connect(crate::cluster::client::PinnedError::Unreachable { .. })
            | JoinError::NoAnswer { .. } => ErrorKind::Unavailable,
            JoinError::ExternalEtcd
            | JoinError::NoNodeIp
            | JoinError::Token(_)
            | JoinError::Refused { .. }
            | JoinError::Connect(_) => ErrorKind::Invalid,
            JoinError::Failed { .. } | JoinError::Store(_) => ErrorKind::Internal,
        };
        Self::new(kind, err.to_string())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        let code = match err.kind {
            ErrorKind::Invalid => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Conflict => tonic::Code::AlreadyExists,
            ErrorKind::Aborted => tonic::Code::Aborted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Unconfirmed => tonic::Code::DeadlineExceeded,
            ErrorKind::Internal => tonic::Code::Internal,
        };
        tonic::Status::new(code, err.message)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn timeout() -> StoreError {
        StoreError::EtcdTimeout {
            op: "txn",
            endpoints: "https://127.0.0.1:2379".into(),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_write_etcd_did_not_confirm_is_not_reported_as_failed() {
        let unconfirmed = StoreError::Unconfirmed {
            op: "transaction",
            endpoints: "https://127.0.0.1:2379".into(),
            waited: Duration::from_secs(15),
            source: Box::new(timeout()),
        };
        let status = tonic::Status::from(ApiError::from(unconfirmed));
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status.message().contains("may have been applied"),
            "{}",
            status.message()
        );
        let status = tonic::Status::from(ApiError::from(timeout()));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().starts_with("the store is unavailable"));
    }
}
