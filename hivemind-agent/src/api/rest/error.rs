//! The REST API's errors: every way a request can fail, and the one place where each becomes an
//! HTTP status and the `{"success": false, "error": "..."}` body.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use crate::api::error::{ApiError, ErrorKind};

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// What went wrong, for people; names the field, value or resource at fault.
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The operation itself failed (validation, unknown resource, conflict, a dependency).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The request body or query could not be read as the endpoint expects.
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large: the limit for this endpoint is {limit} bytes")]
    TooLarge { limit: usize },
    #[error("unsupported content type {got:?}: send {expected}")]
    UnsupportedMediaType { got: String, expected: &'static str },
    #[error(
        "missing or wrong bearer token: this agent listens on {addr}, so every /api request needs `Authorization: Bearer <token>` (print it on the agent's host with `hivemind agent --print-token`)"
    )]
    Unauthorized { addr: String },
    #[error(
        "cross-origin request refused: Origin {origin} is not this agent's origin ({expected})"
    )]
    ForeignOrigin { origin: String, expected: String },
    #[error(
        "Host {host:?} is not an address of this agent (it listens on loopback; use localhost or 127.0.0.1)"
    )]
    ForeignHost { host: String },
    #[error("no such endpoint: {method} {path} (the endpoints are listed in /api/openapi.json)")]
    NoRoute { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
}

impl RestError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Api(err) => match err.kind {
                ErrorKind::Invalid => StatusCode::BAD_REQUEST,
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Conflict | ErrorKind::Aborted => StatusCode::CONFLICT,
                ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Unconfirmed => StatusCode::GATEWAY_TIMEOUT,
                ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::ForeignOrigin { .. } | Self::ForeignHost { .. } => StatusCode::FORBIDDEN,
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, "REST request failed: {self}");
        } else {
            tracing::debug!(%status, "REST request refused: {self}");
        }
        let unauthorized = matches!(self, Self::Unauthorized { .. });
        let mut response = (
            status,
            Json(ErrorBody {
                success: false,
                error: self.to_string(),
            }),
        )
            .into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hivemind\""),
            );
        }
        response
    }
}
