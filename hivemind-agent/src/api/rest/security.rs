//! Who may call the API, and from where.
//!
//! - Bound to loopback (the default `127.0.0.1:3000`) the API needs no token: only local users
//!   reach it. Browsers are the remaining risk there, so requests must name a loopback `Host`
//!   (a DNS-rebinding page's host is refused).
//! - Bound to any other address, every `/api` route and `/metrics` need
//!   `Authorization: Bearer <token>`. The token is made at first start in the data dir (mode 0600)
//!   and printed by `hivemind agent --print-token`.
//! - Always: a mutating request (anything but GET, HEAD, OPTIONS) carrying an `Origin` other than
//!   the agent's own is refused, and its body, if typed, must be JSON (or YAML for policies) —
//!   types a cross-site HTML form cannot send. No cookies are ever used.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

use super::{error::RestError, extract::media_type};

/// Media types a mutating request may declare for its body.
const BODY_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
];

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the API token {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API token file {path} is empty; delete it and start the agent to make a new one")]
    Empty { path: PathBuf },
}

/// The API token in `path`, made (32 random bytes, hex, mode 0600) if there is none yet.
pub fn load_or_create_token(path: &Path) -> Result<String, TokenError> {
    let read = |path: &Path| -> Result<String, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(token)
    };
    if path.exists() {
        return read(path);
    }
    let create = |source| TokenError::Create {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(create)?;
    }
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(create)?;
    let token = hex::encode(random);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(create)?;
            Ok(token)
        }
        // Another process made it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(err) => Err(create(err)),
    }
}

/// The access rules for one listening address.
#[derive(Debug, Clone)]
pub struct Access {
    addr: SocketAddr,
    /// Required on every /api route and /metrics when set (non-loopback addresses).
    token: Option<Arc<str>>,
}

impl Access {
    /// `token` is required only when `addr` is not a loopback address.
    pub fn new(addr: SocketAddr, token: String) -> Self {
        let token = (!addr.ip().is_loopback()).then(|| Arc::from(token));
        Self { addr, token }
    }

    pub fn token_required(&self) -> bool {
        self.token.is_some()
    }

    fn check(&self, request: &Request) -> Result<(), RestError> {
        let headers = request.headers();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(ToString::to_string));
        if self.token.is_none()
            && let Some(host) = &host
            && !is_loopback_host(host)
        {
            return Err(RestError::ForeignHost { host: host.clone() });
        }
        let path = request.uri().path();
        if let Some(token) = &self.token
            && (path.starts_with("/api/") || path == "/api" || path == "/metrics")
            && !bearer_matches(headers, token)
        {
            return Err(RestError::Unauthorized {
                addr: self.addr.to_string(),
            });
        }
        if !matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::OPTIONS
        ) {
            check_origin(headers, host.as_deref())?;
            if let Some(media) = media_type(headers)
                && !BODY_TYPES.contains(&media.as_str())
            {
                return Err(RestError::UnsupportedMediaType {
                    got: media,
                    expected: "application/json",
                });
            }
        }
        Ok(())
    }
}

/// The middleware: refuses what [`Access`] does not allow before any handler runs.
pub async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    match access.check(&request) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

/// An `Origin` header, when present, must be `http://<Host>` (the page was served by this agent).
fn check_origin(headers: &HeaderMap, host: Option<&str>) -> Result<(), RestError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    let expected = host.map(|h| format!("http://{h}")).unwrap_or_default();
    if !expected.is_empty() && origin.eq_ignore_ascii_case(&expected) {
        return Ok(());
    }
    Err(RestError::ForeignOrigin { origin, expected })
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:3000",
            "127.0.0.1:3000",
            "127.1.2.3",
            "[::1]:3000",
            "LOCALHOST:1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:3000",
            "10.0.0.1:3000",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn token_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/api-token");
        let first = load_or_create_token(&path).expect("create");
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).expect("read"), first);
    }

    #[test]
    fn bearer() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "abc"));
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().expect("header"));
        assert!(bearer_matches(&headers, "abc"));
        assert!(!bearer_matches(&headers, "abd"));
        assert!(!bearer_matches(&headers, "abcd"));
    }
}
