//! The REST API and the web UI on `--api-addr` (default `127.0.0.1:3000`).
//!
//! - [`handlers`]: one function per endpoint over [`AgentService`]; their `#[utoipa::path]`
//!   attributes generate the `OpenAPI` document served at `/api/openapi.json`, and registering
//!   them through [`OpenApiRouter`] keeps the routes and the document the same list.
//! - [`error`]: every failure becomes `{"success": false, "error": "..."}` with its status, in
//!   one place.
//! - [`extract`]: strict JSON, query and path extractors whose rejections are that error.
//! - [`security`]: the bearer token off loopback, Host/Origin/content-type checks.
//! - [`ui`]: the web UI, embedded in the binary.

pub mod dto;
pub mod error;
pub mod extract;
mod handlers;
mod policies;
pub mod security;
mod ui;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    http::{HeaderValue, Method, Uri, header},
    middleware,
    response::Response,
};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        RefOr,
        response::ResponseBuilder,
        security::{Http, HttpAuthScheme, SecurityScheme},
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};

use self::{error::RestError, security::Access};
use super::service::AgentService;

/// What every handler gets.
#[derive(Clone, Debug)]
pub struct AppState {
    service: AgentService,
    /// The `OpenAPI` document, serialized once.
    openapi: Arc<str>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hivemind agent API",
        description = "The node agent's REST API: the same operations and documents as the `hivemind` CLI. Errors are `{\"success\": false, \"error\": \"...\"}`. Off loopback every request needs `Authorization: Bearer <token>` (`hivemind agent --print-token`)."
    ),
    tags(
        (name = "apps", description = "Deploy, list, scale, restart and remove apps"),
        (name = "containers", description = "Containers and their logs"),
        (name = "volumes", description = "Named volumes"),
        (name = "policies", description = "Network policies"),
        (name = "system", description = "Health, nodes, this document"),
    ),
    components(schemas(error::ErrorBody)),
)]
struct ApiDoc;

/// Adds what every operation can answer (bad input, auth, size and type limits, faults) and
/// the bearer scheme, so each handler lists only its own outcomes.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                (&mut item.get, false),
                (&mut item.post, true),
                (&mut item.delete, true),
                (&mut item.put, true),
                (&mut item.patch, true),
            ];
            for (operation, mutating) in operations {
                let Some(operation) = operation.as_mut() else {
                    continue;
                };
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description));
                };
                add("400", "Invalid input: the message names the field or value");
                add("401", "A bearer token is required (agent not on loopback)");
                add(
                    "403",
                    "Refused Host or Origin (cross-site or DNS-rebinding request)",
                );
                add("500", "An internal fault");
                add(
                    "503",
                    "A dependency (containerd, a registry, the store) is unavailable",
                );
                if mutating {
                    add(
                        "504",
                        "The store did not confirm the change in time: it may have been applied",
                    );
                    add("413", "Request body too large");
                    add("415", "Wrong content type (send application/json)");
                }
                operation.security = Some(vec![
                    utoipa::openapi::security::SecurityRequirement::new::<&str, [&str; 0], &str>(
                        "bearer",
                        [],
                    ),
                    utoipa::openapi::security::SecurityRequirement::default(),
                ]);
            }
        }
    }
}

/// The routes and the `OpenAPI` document generated from them.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::health))
        .routes(routes!(handlers::nodes))
        .routes(routes!(handlers::openapi))
        .routes(routes!(handlers::deploy))
        .routes(routes!(handlers::list_apps))
        .routes(routes!(
            handlers::get_app,
            handlers::remove_app,
            handlers::update_app
        ))
        .routes(routes!(handlers::app_spec))
        .routes(routes!(handlers::scale_app))
        .routes(routes!(handlers::restart_app))
        .routes(routes!(handlers::list_containers))
        .routes(routes!(handlers::get_container))
        .routes(routes!(handlers::container_logs))
        .routes(routes!(handlers::create_volume))
        .routes(routes!(handlers::list_volumes))
        .routes(routes!(handlers::remove_volume))
        .routes(routes!(policies::list_policies, policies::apply_policies))
        .routes(routes!(policies::get_policy, policies::remove_policy))
        .routes(routes!(policies::metrics))
        .split_for_parts();
    // After the routes are in: the modifier adds to each operation.
    CommonResponses.modify(&mut doc);
    (router, doc)
}

/// The `OpenAPI` document, as served.
pub fn openapi_json() -> String {
    api().1.to_pretty_json().unwrap_or_default()
}

/// The whole HTTP service: API, UI, access checks.
pub fn router(service: AgentService, api_addr: SocketAddr, token: String) -> Router {
    let (api, doc) = api();
    let state = AppState {
        service,
        openapi: Arc::from(doc.to_pretty_json().unwrap_or_default()),
    };
    let access = Access::new(api_addr, token);
    api.merge(ui::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn_with_state(access, security::guard))
        .layer(middleware::map_response(security_headers))
}

async fn no_route(method: Method, uri: Uri) -> RestError {
    RestError::NoRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> RestError {
    RestError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Headers on every response: no MIME sniffing, no framing, no referrer.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_endpoint_with_error_responses() {
        let doc: serde_json::Value =
            serde_json::from_str(&openapi_json()).expect("the document is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for path in [
            "/api/health",
            "/api/deploy",
            "/api/apps",
            "/api/apps/{name}",
            "/api/containers/{id}/logs",
            "/api/volumes/create",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["paths"]["/api/deploy"]["post"]["responses"]["415"].is_object());
        assert!(doc["components"]["schemas"]["AppInfo"].is_object());
        assert!(doc["components"]["schemas"]["DeployBody"].is_object());
    }

    /// Clients and fuzzers learn the input rules from the document: they must be the ones
    /// `validate` enforces.
    #[test]
    fn document_states_the_name_pattern_and_replica_bounds() {
        let doc: serde_json::Value =
            serde_json::from_str(&openapi_json()).expect("the document is JSON");
        let schemas = &doc["components"]["schemas"];
        let max = u64::from(crate::validate::MAX_REPLICAS);
        for (schema, field) in [("DeployBody", "replicas"), ("ScaleBody", "replicas")] {
            let property = &schemas[schema]["properties"][field];
            assert_eq!(property["maximum"].as_u64(), Some(max), "{schema}.{field}");
            assert_eq!(property["minimum"].as_u64(), Some(0), "{schema}.{field}");
        }
        let pattern = schemas["DeployBody"]["properties"]["name"]["pattern"]
            .as_str()
            .expect("DeployBody.name has a pattern");
        assert_eq!(pattern, "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$");
        assert_eq!(
            schemas["VolumeBody"]["properties"]["name"]["pattern"].as_str(),
            Some(pattern)
        );
        let scale = &doc["paths"]["/api/apps/{name}/scale"]["post"]["parameters"][0];
        assert_eq!(scale["schema"]["pattern"].as_str(), Some(pattern));
        // The pattern accepts exactly the names the validator accepts.
        let long = "a".repeat(63);
        for name in ["web", "a", "web-1", "1web", long.as_str()] {
            assert!(
                crate::config::is_dns_label(name) && matches_pattern(name),
                "{name}"
            );
        }
        let too_long = "a".repeat(64);
        for name in ["Web", "-web", "web-", "we_b", "", too_long.as_str()] {
            assert!(
                !crate::config::is_dns_label(name) && !matches_pattern(name),
                "{name}"
            );
        }
    }

    /// `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`, written out.
    fn matches_pattern(name: &str) -> bool {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let bytes: Vec<char> = name.chars().collect();
        match bytes.as_slice() {
            [] => false,
            [one] => alnum(*one),
            [first, middle @ .., last] => {
                alnum(*first)
                    && alnum(*last)
                    && middle.len() <= 61
                    && middle.iter().all(|c| alnum(*c) || *c == '-')
            }
        }
    }
}
