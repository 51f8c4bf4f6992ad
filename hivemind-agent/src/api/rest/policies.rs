//! Network policies and `/metrics`.

use axum::{
    Json,
    extract::{Request, State},
    http::header,
    response::{IntoResponse, Response},
};

use super::{
    AppState,
    dto::{ActionReply, ApplyPoliciesBody, ApplyPoliciesQuery, PoliciesApplied},
    error::{ErrorBody, RestError},
    extract::{JSON_LIMIT, Path, Query, YAML_LIMIT, parse_json, read_body, require_content_type},
};
use crate::proto;

type Result<T> = std::result::Result<T, RestError>;

/// Every network policy, with its rule counts, the apps it selects and its drop counters.
#[utoipa::path(get, path = "/api/policies", tag = "policies",
    responses((status = 200, description = "Every policy", body = Vec<proto::PolicyInfo>)))]
pub async fn list_policies(State(state): State<AppState>) -> Result<Json<Vec<proto::PolicyInfo>>> {
    Ok(Json(state.service.policies().await?.policies))
}

/// One policy, with its YAML.
#[utoipa::path(get, path = "/api/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "Policy name")),
    responses(
        (status = 200, description = "The policy", body = proto::PolicyInfo),
        (status = 404, description = "No such policy", body = ErrorBody),
    ))]
pub async fn get_policy(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<proto::PolicyInfo>> {
    Ok(Json(state.service.policy(&name).await?))
}

/// Apply one or more `NetworkPolicy` documents: all of them, or — if any is invalid — none, with
/// every problem named by document and field. The body is the YAML itself
/// (`Content-Type: application/yaml`, name it with `?source=`) or JSON `{"source", "yaml"}`.
#[utoipa::path(post, path = "/api/policies", tag = "policies",
    params(ApplyPoliciesQuery),
    request_body(content(
        (ApplyPoliciesBody = "application/json"),
        (String = "application/yaml"),
    )),
    responses(
        (status = 200, description = "Applied", body = PoliciesApplied),
    ))]
pub async fn apply_policies(
    State(state): State<AppState>,
    Query(query): Query<ApplyPoliciesQuery>,
    request: Request,
) -> Result<Json<PoliciesApplied>> {
    let media = require_content_type(
        request.headers(),
        &[
            "application/json",
            "application/yaml",
            "application/x-yaml",
            "text/yaml",
        ],
        "application/yaml or application/json",
    )?;
    let (source, yaml) = if media == "application/json" {
        let body: ApplyPoliciesBody =
            parse_json(&read_body(request, JSON_LIMIT + YAML_LIMIT).await?)?;
        (body.source.or(query.source), body.yaml)
    } else {
        let bytes = read_body(request, YAML_LIMIT).await?;
        let yaml = String::from_utf8(bytes)
            .map_err(|_| RestError::BadRequest("the YAML body is not UTF-8".into()))?;
        (query.source, yaml)
    };
    let source = source.unwrap_or_else(|| "request.yaml".into());
    let reply = state
        .service
        .apply_policies(&[proto::PolicySource { name: source, yaml }])
        .await?;
    Ok(Json(PoliciesApplied {
        success: true,
        reply,
    }))
}

/// Remove a policy; the apps it selected fall back to what the remaining policies say.
#[utoipa::path(delete, path = "/api/policies/{name}", tag = "policies",
    params(("name" = String, Path, description = "Policy name")),
    responses(
        (status = 200, description = "Removed", body = ActionReply),
        (status = 404, description = "No such policy", body = ErrorBody),
    ))]
pub async fn remove_policy(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ActionReply>> {
    Ok(Json(state.service.remove_policy(&name).await?.into()))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response> {
    let text = state.service.metrics_text().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
