//! Records → API messages.

use std::fmt::Write as _;

use crate::{
    model::{AppSpec, ContainerRecord, ContainerState, HealthCheck},
    proto,
    service::{Service, records},
};

/// Env values of keys that look secret are shown as this.
const MASK: &str = "******";

/// Keys whose values are masked in every output.
fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    [
        "PASS",
        "SECRET",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "PRIVATE",
        "AUTH",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// Prefixes of well-known credential formats (GitHub, GitLab, Slack, Stripe, AWS access keys,
/// JWTs) and of HTTP authorization values.
const SECRET_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghs_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "sk_live_",
    "sk_test_",
    "AKIA",
    "eyJ",
];
const AUTH_SCHEMES: &[&str] = &["bearer ", "basic ", "token ", "digest "];

/// The value as it may be shown: masked whole when its key or its form says it is a
/// credential; a URL keeps everything but the password in its user info
/// (`postgres://app:******@db/shop`).
fn shown_value(key: &str, value: &str) -> String {
    let lower = value.to_ascii_lowercase();
    if looks_secret(key)
        || SECRET_PREFIXES.iter().any(|p| value.starts_with(p))
        || AUTH_SCHEMES.iter().any(|s| lower.starts_with(s))
    {
        return MASK.to_owned();
    }
    mask_url_password(value).unwrap_or_else(|| value.to_owned())
}

/// `scheme://user:password@host...` with the password masked; `None` if there is none.
fn mask_url_password(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then(|| format!("{scheme}://{user}:{MASK}@{host}{path}"))
}

pub fn masked_env(app: &AppSpec) -> Vec<String> {
    app.env
        .iter()
        .map(|(k, v)| format!("{k}={}", shown_value(k, v)))
        .collect()
}

pub fn container(record: &ContainerRecord, app: Option<&AppSpec>) -> proto::ContainerInfo {
    proto::ContainerInfo {
        id: record.id.clone(),
        app: record.app.clone(),
        slot: record.slot,
        node: record.node.clone(),
        image: record.image.clone(),
        image_digest: record.image_digest.clone(),
        state: record.state.as_str().into(),
        exit_code: record.exit_code,
        restart_count: record.restart_count,
        pid: record.pid,
        ip: record.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        created_at_ms: record.created_at_ms,
        started_at_ms: record.started_at_ms.unwrap_or(0),
        history: record
            .history
            .iter()
            .map(|change| proto::StatusChange {
                at_ms: change.at_ms,
                state: change.state.as_str().into(),
                exit_code: change.exit_code,
                message: change.message.clone(),
            })
            .collect(),
        usage: None,
        volumes: app
            .map(|a| a.volumes.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        env: app.map(masked_env).unwrap_or_default(),
        ports: app
            .map(|a| a.ports.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        log_path: String::new(),
        health: record
            .health
            .map(|h| h.as_str().to_owned())
            .unwrap_or_default(),
        health_detail: record.health_detail.clone(),
        service_names: Vec::new(),
        serving: false,
        vip: String::new(),
        exposed_ports: record.exposed_ports.clone(),
        user: record.user.clone(),
    }
}

/// The app's spec as `app inspect` shows it: what the user set, with the image's share
/// (`""`, absent lists) where they set nothing.
pub fn spec_info(spec: &AppSpec) -> proto::AppSpecInfo {
    let list = |items: &Option<Vec<String>>| {
        items.as_ref().map(|items| proto::StringList {
            items: items.clone(),
        })
    };
    #[allow(clippy::cast_precision_loss)] // display only
    let cpus = spec
        .cpu_millis
        .map(|m| format!("{}", m as f64 / 1000.0))
        .unwrap_or_default();
    proto::AppSpecInfo {
        name: spec.name.clone(),
        image: spec.image.clone(),
        replicas: spec.replicas,
        service: spec.service.clone().unwrap_or_default(),
        env: masked_env(spec),
        ports: spec.ports.iter().map(ToString::to_string).collect(),
        volumes: spec.volumes.iter().map(ToString::to_string).collect(),
        secrets: spec.secrets.iter().map(ToString::to_string).collect(),
        labels: spec.labels.clone().into_iter().collect(),
        memory: spec.memory_bytes.map(memory_size).unwrap_or_default(),
        cpus,
        stop_timeout_secs: spec.stop_timeout_secs,
        stop_signal: spec.stop_signal.clone().unwrap_or_default(),
        health_check: spec
            .health
            .as_ref()
            .map(describe_health)
            .unwrap_or_default(),
        health_source: match (&spec.health, spec.health_from_image, spec.no_healthcheck) {
            (_, _, true) => "off",
            (Some(_), true, _) => "image",
            (Some(_), false, _) => "flags",
            (None, _, _) => "none",
        }
        .to_owned(),
        user: spec.user.clone().unwrap_or_default(),
        workdir: spec.workdir.clone().unwrap_or_default(),
        entrypoint: list(&spec.entrypoint),
        command: list(&spec.command),
        generation: spec.generation,
        created_at_ms: spec.created_at_ms,
        updated_at_ms: spec.updated_at_ms,
    }
}

/// Bytes as `--memory` takes them: `256m`, `1g`, or bytes when not a whole multiple.
fn memory_size(bytes: u64) -> String {
    for (suffix, unit) in [("g", 1u64 << 30), ("m", 1 << 20), ("k", 1 << 10)] {
        if bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

pub fn app(spec: &AppSpec, records: &[&ContainerRecord]) -> proto::AppInfo {
    let current: Vec<&&ContainerRecord> = records
        .iter()
        .filter(|r| r.generation == spec.generation)
        .collect();
    let running = u32::try_from(
        records
            .iter()
            .filter(|r| r.state == ContainerState::Running)
            .count(),
    )
    .unwrap_or(u32::MAX);
    let current_running = current
        .iter()
        .filter(|r| r.state == ContainerState::Running)
        .count();
    let status = if spec.replicas == 0 {
        "stopped"
    } else if current_running >= spec.replicas as usize {
        "running"
    } else if records
        .iter()
        .any(|r| matches!(r.state, ContainerState::Exited | ContainerState::Failed))
    {
        "degraded"
    } else {
        "starting"
    };
    proto::AppInfo {
        name: spec.name.clone(),
        image: spec.image.clone(),
        service: spec.service.clone().unwrap_or_default(),
        replicas: spec.replicas,
        running,
        status: status.into(),
        env: masked_env(spec),
        ports: spec.ports.iter().map(ToString::to_string).collect(),
        volumes: spec.volumes.iter().map(ToString::to_string).collect(),
        secrets: spec.secrets.iter().map(ToString::to_string).collect(),
        labels: spec.labels.clone().into_iter().collect(),
        memory_bytes: spec.memory_bytes.unwrap_or(0),
        cpu_millis: spec.cpu_millis.unwrap_or(0),
        generation: spec.generation,
        created_at_ms: spec.created_at_ms,
        updated_at_ms: spec.updated_at_ms,
        containers: records.iter().map(|r| container(r, Some(spec))).collect(),
        stop_timeout_secs: spec.stop_timeout_secs,
        health_check: spec
            .health
            .as_ref()
            .map(describe_health)
            .unwrap_or_default(),
        healthy: u32::try_from(records.iter().filter(|r| records::serves(r)).count())
            .unwrap_or(u32::MAX),
        service_names: Vec::new(),
        endpoints: Vec::new(),
        rollout: String::new(),
        vip: String::new(),
    }
}

/// Fills in what service discovery says about the app and its containers.
pub fn add_service(info: &mut proto::AppInfo, service: Option<&Service>) {
    let Some(service) = service else {
        return;
    };
    info.service_names.clone_from(&service.names);
    info.endpoints = service
        .endpoints
        .iter()
        .map(|ip| format!("{ip}:{}", service.port))
        .collect();
    for container in &mut info.containers {
        add_container_service(container, Some(service));
    }
}

pub fn add_container_service(info: &mut proto::ContainerInfo, service: Option<&Service>) {
    let Some(service) = service else {
        return;
    };
    info.service_names.clone_from(&service.names);
    info.serving = service.endpoints.iter().any(|ip| ip.to_string() == info.ip);
}

/// Fills in the app's VIP, on the app and on each of its containers.
pub fn set_vip(info: &mut proto::AppInfo, vip: Option<std::net::Ipv4Addr>) {
    let vip = vip.map(|ip| ip.to_string()).unwrap_or_default();
    for container in &mut info.containers {
        container.vip.clone_from(&vip);
    }
    info.vip = vip;
}

/// "http 80/healthz every 10s, timeout 5s, 3 retries, start period 30s".
pub fn describe_health(check: &HealthCheck) -> String {
    let secs = |ms: u64| {
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    };
    let mut text = format!(
        "{} every {}, timeout {}, {} retries",
        check.probe,
        secs(check.interval_ms),
        secs(check.timeout_ms),
        check.retries
    );
    if check.start_period_ms > 0 {
        let _ = write!(text, ", start period {}", secs(check.start_period_ms));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        for key in [
            "DB_PASSWORD",
            "api_key",
            "GITHUB_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "AUTH_HEADER",
        ] {
            assert!(looks_secret(key), "{key}");
        }
        for key in ["PATH", "PORT", "LOG_LEVEL"] {
            assert!(!looks_secret(key), "{key}");
        }
    }

    #[test]
    fn credential_looking_values_are_masked_whatever_their_key() {
        for (key, value, shown) in [
            (
                "DATABASE_URL",
                "postgres://u:pw@db/x",
                "postgres://u:******@db/x",
            ),
            (
                "REDIS",
                "redis://:s3cret@cache:6379/0?x=1",
                "redis://:******@cache:6379/0?x=1",
            ),
            (
                "UPSTREAM",
                "https://user@example.com/",
                "https://user@example.com/",
            ),
            (
                "UPSTREAM",
                "https://example.com/a:b@c",
                "https://example.com/a:b@c",
            ),
            ("HEADER", "Bearer abc.def", MASK),
            ("X", "Basic dXNlcjpwdw==", MASK),
            ("GH", "ghp_0123456789abcdef", MASK),
            ("AWS_ID", "AKIAABCDEFGHIJKLMNOP", MASK),
            ("JWT_VALUE", "eyJhbGciOiJIUzI1NiJ9.e30.x", MASK),
            ("DB_PASSWORD", "anything", MASK),
            ("LOG_LEVEL", "debug", "debug"),
        ] {
            assert_eq!(shown_value(key, value), shown, "{key}={value}");
        }
    }
}
