//! Request extractors whose every rejection is a [`RestError`], so malformed input gets the
//! API's JSON error with a message that names the field or parameter at fault.

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderMap, header, request::Parts},
};
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;

use super::error::RestError;

/// Largest JSON body the API reads.
pub const JSON_LIMIT: usize = 1 << 20;
/// Largest policy file (YAML) the API reads.
pub const YAML_LIMIT: usize = crate::policy::MAX_YAML_BYTES;

/// A JSON request body: `Content-Type: application/json`, at most [`JSON_LIMIT`] bytes,
/// deserialized strictly (the DTOs reject unknown fields).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = RestError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        require_content_type(request.headers(), &["application/json"], "application/json")?;
        let bytes = read_body(request, JSON_LIMIT).await?;
        parse_json(&bytes).map(Self)
    }
}

/// The media type of a request (`application/json` for `application/json; charset=utf-8`).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers.get(header::CONTENT_TYPE).map(|value| {
        String::from_utf8_lossy(value.as_bytes())
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    })
}

/// Refuses (415) a body whose media type is not one of `accepted`.
pub fn require_content_type(
    headers: &HeaderMap,
    accepted: &[&str],
    expected: &'static str,
) -> Result<String, RestError> {
    match media_type(headers) {
        Some(media) if accepted.contains(&media.as_str()) => Ok(media),
        got => Err(RestError::UnsupportedMediaType {
            got: got.unwrap_or_else(|| "(none)".into()),
            expected,
        }),
    }
}

/// Reads the whole body, refusing (413) as soon as it passes `limit` bytes.
pub async fn read_body(request: Request, limit: usize) -> Result<Vec<u8>, RestError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(RestError::TooLarge { limit });
    }
    let mut stream = request.into_body().into_data_stream();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|err| RestError::BadRequest(format!("cannot read the request body: {err}")))?;
        if body.len() + chunk.len() > limit {
            return Err(RestError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Strict JSON: one object, no trailing data; errors name the field path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RestError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(RestError::BadRequest(
                "the request body is empty: expected a JSON object".into(),
            ));
        }
        // serde would read a struct from an array too; the API's bodies are objects.
        Some(b'[') => {
            return Err(RestError::BadRequest(
                "invalid request body: expected a JSON object, not an array".into(),
            ));
        }
        Some(_) => {}
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            RestError::BadRequest(format!("malformed JSON in the request body: {inner}"))
        } else if path == "." || path.is_empty() || inner.to_string().starts_with("unknown field") {
            RestError::BadRequest(format!("invalid request body: {inner}"))
        } else {
            RestError::BadRequest(format!("invalid request body: field `{path}`: {inner}"))
        }
    })?;
    deserializer.end().map_err(|err| {
        RestError::BadRequest(format!("malformed JSON in the request body: {err}"))
    })?;
    Ok(value)
}

/// Query parameters, strictly (unknown parameters are refused by the DTOs).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Query<T> {
    type Rejection = RestError;

    fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> impl Future<Output = Result<Self, Self::Rejection>> + Send {
        std::future::ready(
            axum::extract::Query::<T>::try_from_uri(&parts.uri)
                .map(|q| Self(q.0))
                .map_err(|rejection| {
                    let text = rejection.body_text();
                    let text = text
                        .strip_prefix("Failed to deserialize query string: ")
                        .unwrap_or(&text);
                    RestError::BadRequest(format!("invalid query parameter {text}"))
                }),
        )
    }
}

/// Path parameters.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = RestError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|rejection| {
                RestError::BadRequest(format!("invalid path: {}", rejection.body_text()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        replicas: Option<i64>,
    }

    fn message(input: &str) -> String {
        parse_json::<Body>(input.as_bytes()).map_or_else(|err| err.to_string(), |_| String::new())
    }

    #[test]
    fn json_errors_name_the_problem() {
        assert_eq!(message(r#"{"name": "a"}"#), "");
        assert!(message("").contains("empty"));
        assert!(message("{").contains("malformed JSON"));
        assert!(message(r#"{"name": "a"} x"#).contains("malformed JSON"));
        let m = message(r#"{"name": "a", "replicas": "three"}"#);
        assert!(
            m.contains("`replicas`") && m.contains("invalid type"),
            "{m}"
        );
        let m = message(r#"{"name": "a", "extra": 1}"#);
        assert!(m.contains("unknown field `extra`"), "{m}");
        let m = message(r#"{"replicas": 1}"#);
        assert!(m.contains("missing field `name`"), "{m}");
    }
}
