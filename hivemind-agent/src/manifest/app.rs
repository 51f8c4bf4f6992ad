//! `kind: App`: every `app deploy` flag as a field, to a [`proto::DeployRequest`] (so a file
//! and the command line go through the same validation), and a stored [`AppSpec`] back to
//! the document `hivemind get` prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    model::{AppSpec, HealthCheck, Probe},
    proto,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: AppMetadata,
    pub spec: AppSpecDocument,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppMetadata {
    pub name: String,
    /// What policies select on (`app=<name>` is implied).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Scalar>,
}

/// The `app deploy` flags; absent fields take the same defaults as the flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppSpecDocument {
    pub image: String,
    #[serde(default = "one")]
    pub replicas: i64,
    /// `--service`: a domain service discovery answers for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Scalar>,
    /// `HOST:CONTAINER[/tcp|udp]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Scalar>,
    /// `VOLUME:/path[:ro]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `SECRET[:TARGET]`, mounted at `/run/secrets/TARGET`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Instead of the image's `ENTRYPOINT` (and then without its `CMD`); `[]` runs the
    /// command alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Instead of the image's `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<Scalar>,
    /// Time between the stop signal and SIGKILL, e.g. `30s` (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<String>,
    /// Absent: the image's `HEALTHCHECK`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthDocument>,
    /// How a change that needs new containers rolls out (not stored with the app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateDocument>,
}

fn one() -> i64 {
    1
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// e.g. `256m`, `1g`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Scalar>,
    /// e.g. `0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Scalar>,
}

/// At most one of `cmd`, `http` (`PORT/PATH`), `tcp` (port); or `disable: true`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    /// No check, not even the image's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateDocument {
    /// Replicas replaced at a time (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// How long each new replica may take to become healthy before the change is rolled
    /// back, e.g. `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A YAML scalar taken as text: `PORT: 8080` and `PORT: "8080"` mean the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a string, number or boolean")]
        enum Any {
            Text(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        Ok(Self(match Any::deserialize(deserializer)? {
            Any::Text(s) => s,
            Any::Int(i) => i.to_string(),
            Any::Float(f) => f.to_string(),
            Any::Bool(b) => b.to_string(),
        }))
    }
}

impl From<&str> for Scalar {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl AppDocument {
    /// The deploy request this document stands for; `Err` names the field that cannot be
    /// one (everything else is left to the deploy's validation).
    pub fn to_request(&self) -> Result<proto::DeployRequest, String> {
        let spec = &self.spec;
        let pairs = |map: &BTreeMap<String, Scalar>| -> Vec<String> {
            map.iter().map(|(k, v)| format!("{k}={}", v.0)).collect()
        };
        let text = |value: &Option<Scalar>| value.as_ref().map(|v| v.0.clone()).unwrap_or_default();
        let stop_timeout_secs = spec
            .stop_timeout
            .as_deref()
            .map(|value| {
                crate::validate::duration("stopTimeout", value)
                    .map(|ms| u32::try_from(ms / 1000).unwrap_or(u32::MAX))
                    .map_err(|err| err.to_string())
            })
            .transpose()?;
        let entrypoint = spec
            .entrypoint
            .as_ref()
            .map(|words| {
                shlex::try_join(words.iter().map(String::as_str))
                    .map_err(|err| format!("invalid entrypoint: {err}"))
            })
            .transpose()?;
        let health = spec.health_check.clone().unwrap_or_default();
        let update = spec.update.clone().unwrap_or_default();
        let resources = spec.resources.clone().unwrap_or_default();
        Ok(proto::DeployRequest {
            name: self.metadata.name.clone(),
            image: spec.image.clone(),
            service: spec.service.clone().unwrap_or_default(),
            replicas: Some(spec.replicas),
            env: pairs(&spec.env),
            ports: spec.ports.iter().map(|p| p.0.clone()).collect(),
            volumes: spec.volumes.clone(),
            labels: pairs(&self.metadata.labels),
            memory: text(&resources.memory),
            cpus: text(&resources.cpus),
            update: false,
            force_pull: false,
            stop_timeout_secs,
            health_cmd: health.cmd.unwrap_or_default(),
            health_http: health.http.unwrap_or_default(),
            health_tcp: health.tcp.map_or(0, u32::from),
            health_interval: health.interval.unwrap_or_default(),
            health_timeout: health.timeout.unwrap_or_default(),
            health_retries: health.retries,
            health_start_period: health.start_period.unwrap_or_default(),
            parallel: update.parallelism.unwrap_or(0),
            rollout_timeout: update.timeout.unwrap_or_default(),
            user: text(&spec.user),
            workdir: spec.workdir.clone().unwrap_or_default(),
            entrypoint,
            command: spec.command.clone().unwrap_or_default(),
            stop_signal: text(&spec.stop_signal),
            no_healthcheck: health.disable,
            secrets: spec.secrets.clone(),
        })
    }
}

/// The document for a stored app: what `apply` takes to make exactly this app again. What
/// came from the image (its `HEALTHCHECK`) is left out, as it was on the way in.
pub fn document(app: &AppSpec) -> AppDocument {
    let scalars = |map: &BTreeMap<String, String>| {
        map.iter()
            .map(|(k, v)| (k.clone(), Scalar(v.clone())))
            .collect()
    };
    let resources = (app.memory_bytes.is_some() || app.cpu_millis.is_some()).then(|| Resources {
        memory: app.memory_bytes.map(|b| Scalar(size(b))),
        cpus: app.cpu_millis.map(|m| Scalar(cpus(m))),
    });
    let health_check = if app.no_healthcheck {
        Some(HealthDocument {
            disable: true,
            ..HealthDocument::default()
        })
    } else if app.health_from_image {
        None
    } else {
        app.health.as_ref().map(health)
    };
    AppDocument {
        api_version: super::API_VERSION.to_owned(),
        kind: super::Kind::App.as_str().to_owned(),
        metadata: AppMetadata {
            name: app.name.clone(),
            labels: scalars(&app.labels),
        },
        spec: AppSpecDocument {
            image: app.image.clone(),
            replicas: i64::from(app.replicas),
            service: app.service.clone(),
            env: scalars(&app.env),
            ports: app.ports.iter().map(|p| Scalar(p.to_string())).collect(),
            volumes: app.volumes.iter().map(ToString::to_string).collect(),
            secrets: app.secrets.iter().map(ToString::to_string).collect(),
            resources,
            user: app.user.as_deref().map(Scalar::from),
            workdir: app.workdir.clone(),
            entrypoint: app.entrypoint.clone(),
            command: app.command.clone(),
            stop_signal: app.stop_signal.as_deref().map(Scalar::from),
            stop_timeout: (app.stop_timeout_secs != 10)
                .then(|| format!("{}s", app.stop_timeout_secs)),
            health_check,
            update: None,
        },
    }
}

fn health(check: &HealthCheck) -> HealthDocument {
    let mut doc = HealthDocument {
        interval: Some(duration(check.interval_ms)),
        timeout: Some(duration(check.timeout_ms)),
        retries: Some(check.retries),
        start_period: (check.start_period_ms > 0).then(|| duration(check.start_period_ms)),
        ..HealthDocument::default()
    };
    match &check.probe {
        Probe::Cmd { command } => doc.cmd = Some(command.clone()),
        // Only an image's HEALTHCHECK makes these; as a shell command it does the same.
        Probe::Exec { args } => {
            doc.cmd = Some(shlex::try_join(args.iter().map(String::as_str)).unwrap_or_default());
        }
        Probe::Http { port, path } => {
            doc.http = Some(format!("{port}/{}", path.trim_start_matches('/')));
        }
        Probe::Tcp { port } => doc.tcp = Some(*port),
    }
    doc
}

/// `10s`, `1500ms`: what `validate::duration` reads back.
fn duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `256m`, `1g`, or bytes: what `validate::memory` reads back.
fn size(bytes: u64) -> String {
    for (unit, shift) in [("g", 30), ("m", 20), ("k", 10)] {
        if bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `0.5`, `2`: what `validate::cpus` reads back.
fn cpus(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{}.{:03}", millis / 1000, millis % 1000)
            .trim_end_matches('0')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_cpus_read_back() {
        assert_eq!(size(256 << 20), "256m");
        assert_eq!(size(1 << 30), "1g");
        assert_eq!(size(7_000_001), "7000001");
        assert_eq!(cpus(500), "0.5");
        assert_eq!(cpus(2000), "2");
        assert_eq!(cpus(1250), "1.25");
        for value in ["256m", "1g", "7000001"] {
            let bytes = crate::validate::memory(value).expect("valid");
            assert_eq!(crate::validate::memory(&size(bytes)), Ok(bytes));
        }
        assert_eq!(crate::validate::cpus(&cpus(1250)), Ok(1250));
        assert_eq!(duration(1500), "1500ms");
        assert_eq!(duration(10_000), "10s");
    }
}
