//! The public HTTP router: the node serves HTTP on `--http-addr` and sends each request to a
//! serving replica of the app whose name (service domain or `<app>.<suffix>`) is the request's
//! Host, round-robin, over pooled keep-alive connections, with bodies streamed both ways.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use axum::{
    body::{Body, HttpBody as _},
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header},
    response::{Html, IntoResponse as _, Response},
    serve::ListenerExt as _,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::records::{Lookup, Service, Services, normalize};

/// How long a connection to a replica may take before the replica counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a replica may take to send its response headers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections to replicas are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr} (--http-addr; \"off\" disables the router)")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

#[derive(Debug)]
struct Router {
    services: Services,
    client: Client<HttpConnector, Body>,
    /// Next replica index per app.
    turns: Mutex<HashMap<String, usize>>,
}

/// Binds `addr` and serves until the process ends.
pub async fn start(addr: SocketAddr, services: Services) -> Result<(), BindError> {
    // Without TCP_NODELAY a response written as headers, then body, waits for the client's
    // delayed ACK (40 ms) before its second segment leaves.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?
        .tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(TokioTimer::new())
        .build(connector);
    let router = Arc::new(Router {
        services,
        client,
        turns: Mutex::new(HashMap::new()),
    });
    let app = axum::Router::new().fallback(handle).with_state(router);
    tracing::info!(%addr, "HTTP router serving");
    tokio::spawn(async move {
        if let Err(err) = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            tracing::error!("HTTP router: {err}");
        }
    });
    Ok(())
}

async fn handle(
    State(router): State<Arc<Router>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let response = route(&router, peer, request).await;
    let class = usize::from(response.status().as_u16() / 100).min(5);
    router.services.counters().http_responses[class].fetch_add(1, Ordering::Relaxed);
    response
}

async fn route(router: &Router, peer: SocketAddr, request: Request) -> Response {
    let Some(host) = request_host(request.headers(), request.uri()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "No host",
            "The request names no Host; the router picks the service by it.",
        );
    };
    let table = router.services.table();
    let service = match table.lookup(&host) {
        Lookup::Service(service) => service.clone(),
        Lookup::Unknown | Lookup::Outside => {
            return page(
                StatusCode::NOT_FOUND,
                "Unknown service",
                &format!("No service is named {host} here."),
            );
        }
    };
    drop(table);
    if service.endpoints.is_empty() {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            &format!(
                "{host} (app {}) has no healthy replica right now.",
                service.app
            ),
        );
    }

    let first = router.next_turn(&service);
    let (parts, body) = request.into_parts();
    // Retrying is safe only for a method without side effects of its own and a request
    // whose body is empty, so nothing was consumed by the failed attempt.
    let retryable = is_idempotent(&parts.method) && body.is_end_stream();
    let headers = forwarded_headers(&parts.headers, peer.ip(), &host);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", axum::http::uri::PathAndQuery::as_str)
        .to_owned();
    let build = |index: usize, body: Body| {
        let ip = service.endpoints[index % service.endpoints.len()];
        let mut upstream = axum::http::Request::new(body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = format!("http://{ip}:{}{path}", service.port)
            .parse()
            .unwrap_or_default();
        *upstream.headers_mut() = headers.clone();
        (ip, upstream)
    };

    let (ip, upstream) = build(first, body);
    let failure = match send(router, upstream).await {
        Ok(response) => return response,
        Err(err) => err,
    };
    if retryable && service.endpoints.len() > 1 {
        tracing::debug!(service = %service.app, replica = %ip, "retrying on another replica: {failure}");
        router
            .services
            .counters()
            .http_retries
            .fetch_add(1, Ordering::Relaxed);
        let (ip, upstream) = build(first + 1, Body::empty());
        match send(router, upstream).await {
            Ok(response) => return response,
            Err(err) => return bad_gateway(&host, &service, ip, &err),
        }
    }
    bad_gateway(&host, &service, ip, &failure)
}

impl Router {
    fn next_turn(&self, service: &Service) -> usize {
        let mut turns = self
            .turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let turn = turns.entry(service.app.clone()).or_insert(0);
        let current = *turn;
        *turn = turn.wrapping_add(1);
        current
    }
}

/// Sends one request to a replica; the response's body streams through as it arrives.
async fn send(router: &Router, request: axum::http::Request<Body>) -> Result<Response, String> {
    match tokio::time::timeout(RESPONSE_TIMEOUT, router.client.request(request)).await {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Body::new(body)))
        }
        Ok(Err(err)) => Err(crate::error_chain(&err)),
        Err(_) => Err(format!("no response within {RESPONSE_TIMEOUT:?}")),
    }
}

fn bad_gateway(host: &str, service: &Service, ip: std::net::Ipv4Addr, error: &str) -> Response {
    tracing::info!(service = %service.app, replica = %ip, "router: replica failed: {error}");
    page(
        StatusCode::BAD_GATEWAY,
        "Bad gateway",
        &format!(
            "The replica of {host} (app {}) at {ip}:{} failed to answer: {error}",
            service.app, service.port
        ),
    )
}

fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

/// The request's host, lowercase, without port and trailing dot.
fn request_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let raw = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())?
        .trim();
    Some(normalize(strip_port(raw))).filter(|h| !h.is_empty())
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Headers that describe one connection, not the request (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// The client's headers for the replica: hop-by-hop ones removed, `X-Forwarded-*` added.
fn forwarded_headers(original: &HeaderMap, client: IpAddr, host: &str) -> HeaderMap {
    let mut headers = original.clone();
    strip_hop_by_hop(&mut headers);
    let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {client}"),
        _ => client.to_string(),
    };
    if let Ok(value) = HeaderValue::try_from(chain) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Ok(value) = HeaderValue::try_from(host) {
        headers.insert("x-forwarded-host", value);
    }
    headers
}

/// A small HTML page for the router's own answers.
fn page(status: StatusCode, title: &str, detail: &str) -> Response {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {title}</title></head>\n<body><h1>{code} {title}</h1>\n<p>{detail}</p>\n<hr><p>hivemind router</p></body></html>\n",
        code = status.as_u16(),
        title = escape(title),
        detail = escape(detail),
    );
    (status, Html(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_str(value).expect("header"));
            request_host(&headers, &Uri::from_static("/"))
        };
        assert_eq!(
            host("Shop.Example.COM:8080").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(host("web.hivemind.").as_deref(), Some("web.hivemind"));
        assert_eq!(host("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(host("").as_deref(), None);
        assert_eq!(
            request_host(&HeaderMap::new(), &Uri::from_static("http://a.b:81/x")).as_deref(),
            Some("a.b")
        );
    }

    #[test]
    fn forwarding_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let out = forwarded_headers(&headers, "192.0.2.2".parse().expect("ip"), "web.hivemind");
        assert!(out.get(header::CONNECTION).is_none());
        assert!(out.get("x-secret").is_none(), "named in Connection");
        assert_eq!(out["x-forwarded-for"], "203.0.113.9, 192.0.2.2");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "web.hivemind");
        assert_eq!(out[header::ACCEPT], "*/*");
    }

    #[test]
    fn retry_only_idempotent() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
