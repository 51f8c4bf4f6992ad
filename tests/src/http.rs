//! HTTP requests to an agent's REST API with the real `curl`, run inside the agent's network
//! namespace (where the API listens, on 127.0.0.1:3000 by default).

use std::{fs, process::Command};

use serde_json::Value;

use crate::{Netns, util::run};

/// A response as curl saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Raw response headers (lower-cased names), one per line.
    pub headers: String,
    pub body: String,
}

impl Reply {
    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}), status {}: {}", self.status, self.body))
    }

    /// A response header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim().to_ascii_lowercase() == name).then(|| value.trim().to_owned())
        })
    }

    /// Asserts the status and the error document's shape; returns the error message.
    pub fn expect_error(&self, status: u16) -> String {
        assert_eq!(
            self.status, status,
            "expected {status}, got {}: {}",
            self.status, self.body
        );
        let json = self.json();
        assert_eq!(json["success"], false, "{json}");
        let error = json["error"].as_str().unwrap_or_default().to_owned();
        assert!(!error.is_empty(), "empty error: {json}");
        assert_eq!(
            json.as_object().map(serde_json::Map::len),
            Some(2),
            "only success and error: {json}"
        );
        error
    }
}

/// A client for one agent: `curl` inside `netns`, against `base` (e.g. `http://127.0.0.1:3000`).
#[derive(Debug, Clone)]
pub struct Client {
    netns: String,
    base: String,
    headers: Vec<String>,
}

impl Client {
    pub fn new(netns: &Netns, base: &str) -> Self {
        Self {
            netns: netns.path(),
            base: base.trim_end_matches('/').to_owned(),
            headers: Vec::new(),
        }
    }

    /// The agent of a [`crate::SingleNode`] on its default address.
    pub fn loopback(netns: &Netns) -> Self {
        Self::new(netns, "http://127.0.0.1:3000")
    }

    /// The same client sending `header` (e.g. `Authorization: Bearer ...`) on every request.
    #[must_use]
    pub fn with_header(mut self, header: &str) -> Self {
        self.headers.push(header.to_owned());
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `curl -X METHOD BASE+PATH EXTRA...`.
    pub fn request(&self, method: &str, path: &str, extra: &[&str]) -> Reply {
        let dir = tempfile::tempdir().expect("tempdir");
        let headers = dir.path().join("headers");
        let body = dir.path().join("body");
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns))
            .arg("--")
            .arg("curl")
            .args(["-sS", "--max-time", "180", "-X", method])
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"]);
        for header in &self.headers {
            command.args(["-H", header]);
        }
        command.args(extra).arg(format!("{}{path}", self.base));
        let out = run(&mut command);
        let status = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let body = fs::read(&body).unwrap_or_default();
        Reply {
            status,
            headers: fs::read_to_string(&headers).unwrap_or_default(),
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[])
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, &[])
    }

    /// POST with a JSON body.
    pub fn post_json(&self, path: &str, body: &str) -> Reply {
        self.request(
            "POST",
            path,
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ],
        )
    }

    /// GET that must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let reply = self.get(path);
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        reply.json()
    }
}
