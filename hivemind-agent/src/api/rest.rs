//! The REST API (and, later, the web UI) on `--api-addr`.

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use super::service::AgentService;

pub fn router(service: AgentService) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(service)
}

/// `GET /api/health`: 200 when healthy, 503 with the same body when a subsystem is down.
async fn health(State(service): State<AgentService>) -> impl IntoResponse {
    let reply = service.health().await;
    let status = if reply.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(reply))
}

/// `GET /metrics`: Prometheus text exposition.
async fn metrics(State(service): State<AgentService>) -> impl IntoResponse {
    match service.metrics_text().await {
        Ok(text) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            text,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            err.message,
        ),
    }
}
