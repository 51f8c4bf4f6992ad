//! The endpoints. Each is thin: read the request, call the service, answer its document.
//! `#[utoipa::path]` on each is what `/api/openapi.json` is generated from.

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{
    AppState,
    dto::{
        ActionReply, AppPatch, ContainersQuery, DeployBody, DeployReply, LogsQuery, RestartQuery,
        ScaleBody, VolumeBody, VolumeCreated,
    },
    error::{ErrorBody, RestError},
    extract::{JsonBody, Path, Query},
};
use crate::{
    api::{error::ApiError, service::LogQuery},
    proto,
    runtime::log_file::Render,
};

type Result<T> = std::result::Result<T, RestError>;

/// JSON for the big list answers, written into a buffer sized from the previous answer of the
/// same endpoint (`hint`), so a 50 KB list is not built by a dozen doublings and copies.
fn sized_json<T: serde::Serialize>(value: &T, hint: &AtomicUsize) -> Result<Response> {
    let guess = hint.load(Ordering::Relaxed);
    let mut body = Vec::with_capacity(guess + guess / 8 + 256);
    serde_json::to_writer(&mut body, value).map_err(|err| {
        RestError::Api(crate::api::error::ApiError::new(
            crate::api::error::ErrorKind::Internal,
            format!("encoding the answer: {err}"),
        ))
    })?;
    hint.store(body.len(), Ordering::Relaxed);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Health of the agent and its subsystems: 200 when healthy, 503 with the same document when
/// a subsystem (store, container runtime) is down.
#[utoipa::path(get, path = "/api/health", tag = "system",
    responses(
        (status = 200, description = "Healthy", body = proto::HealthReply),
        (status = 503, description = "A subsystem is down", body = proto::HealthReply),
    ))]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let reply = state.service.health().await;
    let status = if reply.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(reply))
}

/// The cluster's nodes (a single-node agent lists itself), as `hivemind node ls -o json`:
/// readiness, subnet, underlay address, containers, etcd role, and the answering node's
/// overlay tunnel to each.
#[utoipa::path(get, path = "/api/nodes", tag = "system",
    responses((status = 200, description = "Every node", body = Vec<proto::NodeInfo>)))]
pub async fn nodes(State(state): State<AppState>) -> Result<Json<Vec<proto::NodeInfo>>> {
    Ok(Json(state.service.list_nodes().await?.nodes))
}

/// Deploy an application: pull the image, store the app and start its replicas; answers when
/// they run. A deploy that fails leaves nothing behind. An update (`update`) rolls out: each
/// new replica healthy before an old one stops; one that does not become healthy rolls the
/// update back (409 saying why).
#[utoipa::path(post, path = "/api/deploy", tag = "apps",
    request_body(content = DeployBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Deployed (or updated with `update`) and running", body = DeployReply),
        (status = 409, description = "The app exists (deploy with `update`), a port or domain is taken, a rollout of the app is in progress, or the update was rolled back", body = ErrorBody),
    ))]
pub async fn deploy(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<DeployBody>,
) -> Result<Json<DeployReply>> {
    let result = Box::pin(state.service.deploy(body.into_request(), None)).await?;
    Ok(Json(result.into()))
}

/// Every app with its status, replica counts and containers.
#[utoipa::path(get, path = "/api/apps", tag = "apps",
    responses((status = 200, description = "Every app", body = Vec<proto::AppInfo>)))]
pub async fn list_apps(State(state): State<AppState>) -> Result<Response> {
    static HINT: AtomicUsize = AtomicUsize::new(0);
    sized_json(&state.service.apps().await?.apps, &HINT)
}

/// One app.
#[utoipa::path(get, path = "/api/apps/{name}", tag = "apps",
    params(("name" = String, Path, description = "App name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)),
    responses(
        (status = 200, description = "The app", body = proto::AppInfo),
        (status = 404, description = "No such app", body = ErrorBody),
    ))]
pub async fn get_app(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<proto::AppInfo>> {
    Ok(Json(state.service.app(&name).await?))
}

/// Change only what the body gives (a JSON merge patch; see `AppPatch`). A change that needs
/// new containers rolls out like a restart (each new replica healthy before an old one stops;
/// rolled back, 409, if one does not become healthy); replicas, labels, ports and the service
/// domain change in place. An invalid patch changes nothing.
#[utoipa::path(patch, path = "/api/apps/{name}", tag = "apps",
    params(("name" = String, Path, description = "App name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)),
    request_body(content = AppPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "Updated (or unchanged) and running", body = DeployReply),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "A rollout of the app is in progress, the app changed concurrently, or the update was rolled back", body = ErrorBody),
    ))]
pub async fn update_app(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<AppPatch>,
) -> Result<Json<DeployReply>> {
    let result = state.service.update(body.into_request(name), None).await?;
    Ok(Json(result.into()))
}

/// The app's whole spec as stored (credential-looking env values masked), as
/// `hivemind app inspect -o json` prints it.
#[utoipa::path(get, path = "/api/apps/{name}/spec", tag = "apps",
    params(("name" = String, Path, description = "App name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)),
    responses(
        (status = 200, description = "The spec", body = proto::AppSpecInfo),
        (status = 404, description = "No such app", body = ErrorBody),
    ))]
pub async fn app_spec(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<proto::AppSpecInfo>> {
    Ok(Json(state.service.inspect(&name).await?))
}

/// Stop and remove every container of the app, then forget it. Its volumes are kept.
#[utoipa::path(delete, path = "/api/apps/{name}", tag = "apps",
    params(("name" = String, Path, description = "App name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)),
    responses(
        (status = 200, description = "Removed", body = ActionReply),
        (status = 404, description = "No such app", body = ErrorBody),
    ))]
pub async fn remove_app(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ActionReply>> {
    Ok(Json(state.service.remove_app(&name).await?.into()))
}

/// Set the number of replicas; answers when they run.
#[utoipa::path(post, path = "/api/apps/{name}/scale", tag = "apps",
    params(("name" = String, Path, description = "App name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)),
    request_body(content = ScaleBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Scaled", body = ActionReply),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "The app changed concurrently, or a rollout of it is in progress", body = ErrorBody),
    ))]
pub async fn scale_app(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<ScaleBody>,
) -> Result<Json<ActionReply>> {
    Ok(Json(
        state.service.scale(&name, body.replicas).await?.into(),
    ))
}

/// Replace every replica with a fresh container, `parallel` at a time; each new one must be
/// healthy before the one it replaces stops. Answers when done; if a new replica does not
/// become healthy, the restart is rolled back (the old replicas keep serving) and the answer
/// is a 409 saying why.
#[utoipa::path(post, path = "/api/apps/{name}/restart", tag = "apps",
    params(("name" = String, Path, description = "App name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63), RestartQuery),
    responses(
        (status = 200, description = "Restarted", body = ActionReply),
        (status = 400, description = "Bad parallel or rollout_timeout", body = ErrorBody),
        (status = 404, description = "No such app", body = ErrorBody),
        (status = 409, description = "A rollout of the app is in progress, the app changed concurrently, or the restart was rolled back", body = ErrorBody),
    ))]
pub async fn restart_app(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<RestartQuery>,
) -> Result<Json<ActionReply>> {
    let request = proto::RestartRequest {
        name,
        parallel: query.parallel.unwrap_or(0),
        rollout_timeout: query.rollout_timeout.unwrap_or_default(),
    };
    let result = state.service.restart(&request, None).await?;
    Ok(Json(
        proto::ActionReply {
            message: result.message,
        }
        .into(),
    ))
}

/// Every container (or one app's), ordered by app and slot.
#[utoipa::path(get, path = "/api/containers", tag = "containers",
    params(ContainersQuery),
    responses(
        (status = 200, description = "The containers", body = Vec<proto::ContainerInfo>),
        (status = 404, description = "No such app", body = ErrorBody),
    ))]
pub async fn list_containers(
    State(state): State<AppState>,
    Query(query): Query<ContainersQuery>,
) -> Result<Response> {
    static HINT: AtomicUsize = AtomicUsize::new(0);
    let app = query.app.unwrap_or_default();
    sized_json(&state.service.containers(&app).await?.containers, &HINT)
}

/// One container, with its status history and CPU and memory usage.
#[utoipa::path(get, path = "/api/containers/{id}", tag = "containers",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "The container", body = proto::ContainerInfo),
        (status = 404, description = "No such container", body = ErrorBody),
    ))]
pub async fn get_container(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<proto::ContainerInfo>> {
    Ok(Json(state.service.container(&id).await?))
}

/// The container's output (stdout and stderr) as text; with `follow=true` the response stays
/// open and streams new output until the container is removed or the client goes away.
#[utoipa::path(get, path = "/api/containers/{id}/logs", tag = "containers",
    params(("id" = String, Path, description = "Container id"), LogsQuery),
    responses(
        (status = 200, description = "The log", body = String, content_type = "text/plain"),
        (status = 404, description = "No such container", body = ErrorBody),
    ))]
pub async fn container_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Result<Response> {
    let since_ms = match query.since.as_deref() {
        Some(since) => crate::validate::since("since", since).map_err(ApiError::from)?,
        None => 0,
    };
    let query = LogQuery {
        follow: query.follow.unwrap_or(false),
        tail: query.tail.unwrap_or(0),
        render: Render {
            since_ms,
            timestamps: query.timestamps.unwrap_or(false),
        },
    };
    let stream = state.service.logs(&id, query).await?;
    let body = Body::from_stream(stream.map(|chunk| chunk.map(axum::body::Bytes::from)));
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// Create a named volume (a directory on this node that survives its containers).
#[utoipa::path(post, path = "/api/volumes/create", tag = "volumes",
    request_body(content = VolumeBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Created", body = VolumeCreated),
        (status = 409, description = "A volume of that name exists", body = ErrorBody),
    ))]
pub async fn create_volume(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<VolumeBody>,
) -> Result<Json<VolumeCreated>> {
    let volume = state.service.create_volume(&body.name).await?;
    Ok(Json(VolumeCreated {
        success: true,
        message: format!("Created volume {}", volume.name),
        volume,
    }))
}

/// Every volume, with its size and the apps that mount it.
#[utoipa::path(get, path = "/api/volumes", tag = "volumes",
    responses((status = 200, description = "Every volume", body = Vec<proto::VolumeInfo>)))]
pub async fn list_volumes(State(state): State<AppState>) -> Result<Json<Vec<proto::VolumeInfo>>> {
    Ok(Json(state.service.volumes().await?.volumes))
}

/// Remove a volume and its data. Refused while an app mounts it.
#[utoipa::path(delete, path = "/api/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "Volume name", pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length = 63)),
    responses(
        (status = 200, description = "Removed", body = ActionReply),
        (status = 404, description = "No such volume", body = ErrorBody),
        (status = 409, description = "An app mounts it", body = ErrorBody),
    ))]
pub async fn remove_volume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ActionReply>> {
    Ok(Json(state.service.remove_volume(&name).await?.into()))
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI 3 document of this API", content_type = "application/json")))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.to_string(),
    )
        .into_response()
}
