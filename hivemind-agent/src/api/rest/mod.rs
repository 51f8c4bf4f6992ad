//! The REST API (and, later, the web UI) on `--api-addr`.

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use super::service::AgentService;

pub fn router(service: AgentService) -> Router {
    Router::new()
        .route("/api/health", get(health))
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
