//! Request and response documents that exist only in the REST API. Everything else the API
//! returns is one of the API messages (`crate::proto`), exactly as the CLI's `-o json` prints it.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Deserializer, Serialize, de};
use utoipa::{IntoParams, ToSchema};

use crate::proto;

/// `POST /api/deploy`: the guide's `{image, name, service}` plus the CLI's deploy options.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
pub struct DeployBody {
    /// Image reference, `repository/image:tag` (e.g. `registry.example.com/team/web:1.2`).
    #[schema(example = "your-registry/your-image:tag")]
    pub image: String,
    /// App name: a DNS label (lowercase letters, digits, `-`; at most 63).
    #[schema(
        example = "your-app-name",
        pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        max_length = 63
    )]
    pub name: String,
    /// Service domain (optional): the app is registered under it for discovery and routing.
    #[serde(default)]
    #[schema(example = "optional-domain-name")]
    pub service: Option<String>,
    /// Number of containers (default 1; unchanged on update when absent).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000)]
    pub replicas: Option<i64>,
    /// Environment: `["KEY=VALUE", ...]` or `{"KEY": "VALUE", ...}`.
    #[serde(default)]
    #[schema(schema_with = key_values_schema)]
    pub env: KeyValues,
    /// Published ports, `HOST:CONTAINER[/tcp|udp]`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Volume mounts, `VOLUME:/path[:ro]`; the volumes must exist.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Secrets mounted as `/run/secrets/TARGET`, `SECRET[:TARGET]`; the secrets must exist.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Labels (used by network policies): `["KEY=VALUE", ...]` or `{"KEY": "VALUE", ...}`.
    #[serde(default)]
    #[schema(schema_with = key_values_schema)]
    pub labels: KeyValues,
    /// Memory limit, e.g. `"256m"`, `"1g"`, or a number of bytes.
    #[serde(default, deserialize_with = "string_or_number")]
    #[schema(value_type = Option<String>, example = "256m")]
    pub memory: Option<String>,
    /// CPU limit in cores, e.g. `0.5` or `"0.5"`.
    #[serde(default, deserialize_with = "string_or_number")]
    #[schema(value_type = Option<String>, example = "0.5")]
    pub cpus: Option<String>,
    /// Required to redeploy an existing app (new image or settings; replicas replaced one by one).
    #[serde(default)]
    pub update: bool,
    /// Pull the image even if it is present.
    #[serde(default)]
    pub force_pull: bool,
    /// Seconds between SIGTERM and SIGKILL when a container stops (default 10, at most 3600).
    #[serde(default)]
    pub stop_timeout_secs: Option<u32>,
    /// The health check (at most one kind): a command run in the container with `sh -c`...
    #[serde(default)]
    pub health_cmd: Option<String>,
    /// ... an HTTP GET on `PORT/PATH` (2xx or 3xx passes) ...
    #[serde(default)]
    #[schema(example = "80/healthz")]
    pub health_http: Option<String>,
    /// ... or a TCP connection to a port.
    #[serde(default)]
    pub health_tcp: Option<u16>,
    /// Time between checks, e.g. `"10s"` (default).
    #[serde(default)]
    pub health_interval: Option<String>,
    /// A check slower than this fails, e.g. `"5s"` (default).
    #[serde(default)]
    pub health_timeout: Option<String>,
    /// Consecutive failures that make a replica unhealthy (default 3).
    #[serde(default)]
    pub health_retries: Option<u32>,
    /// Failures this soon after a start do not count, e.g. `"30s"` (default `"0s"`).
    #[serde(default)]
    pub health_start_period: Option<String>,
    /// With `update`: replicas replaced at once (default 1).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1000)]
    pub parallel: Option<u32>,
    /// With `update`: how long each new replica may take to become healthy before the update
    /// is rolled back, e.g. `"2m"` (default: from the health check's timing, plus 30 s).
    #[serde(default)]
    pub rollout_timeout: Option<String>,
    /// Run as this user instead of the image's `USER`: `name`, `uid`, `name:group`, `uid:gid`.
    #[serde(default)]
    #[schema(example = "1000:1000")]
    pub user: Option<String>,
    /// Working directory instead of the image's `WORKDIR` (an absolute path).
    #[serde(default)]
    pub workdir: Option<String>,
    /// A command line instead of the image's `ENTRYPOINT` (its `CMD` is then dropped); `""`
    /// runs `command` alone.
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// The command and its arguments instead of the image's `CMD`.
    #[serde(default)]
    pub command: Vec<String>,
    /// The signal a stop sends first, e.g. `"SIGQUIT"` (default: the image's `STOPSIGNAL`,
    /// else `SIGTERM`).
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// No health check, not even the image's `HEALTHCHECK`.
    #[serde(default)]
    pub no_healthcheck: bool,
}

impl DeployBody {
    pub fn into_request(self) -> proto::DeployRequest {
        proto::DeployRequest {
            name: self.name,
            image: self.image,
            service: self.service.unwrap_or_default(),
            replicas: self.replicas,
            env: self.env.0,
            ports: self.ports,
            volumes: self.volumes,
            secrets: self.secrets,
            labels: self.labels.0,
            memory: self.memory.unwrap_or_default(),
            cpus: self.cpus.unwrap_or_default(),
            update: self.update,
            force_pull: self.force_pull,
            stop_timeout_secs: self.stop_timeout_secs,
            health_cmd: self.health_cmd.unwrap_or_default(),
            health_http: self.health_http.unwrap_or_default(),
            health_tcp: self.health_tcp.map_or(0, u32::from),
            health_interval: self.health_interval.unwrap_or_default(),
            health_timeout: self.health_timeout.unwrap_or_default(),
            health_retries: self.health_retries,
            health_start_period: self.health_start_period.unwrap_or_default(),
            parallel: self.parallel.unwrap_or(0),
            rollout_timeout: self.rollout_timeout.unwrap_or_default(),
            user: self.user.unwrap_or_default(),
            workdir: self.workdir.unwrap_or_default(),
            entrypoint: self.entrypoint,
            command: self.command,
            stop_signal: self.stop_signal.unwrap_or_default(),
            no_healthcheck: self.no_healthcheck,
        }
    }
}

/// `PATCH /api/apps/{name}`: a JSON merge patch of the app's spec. Only the fields present
/// change: `env` and `labels` merge key by key (`null` removes a key), `ports`, `volumes`,
/// `secrets` and `command` replace the whole list, `""` resets a value (no service domain, no limit,
/// the image's user, workdir or stop signal).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
pub struct AppPatch {
    pub image: Option<String>,
    #[schema(minimum = 0, maximum = 1000)]
    pub replicas: Option<i64>,
    pub service: Option<String>,
    /// `{"KEY": "VALUE"}` sets, `{"KEY": null}` removes.
    #[schema(value_type = Option<BTreeMap<String, Option<String>>>)]
    pub env: Option<BTreeMap<String, Option<String>>>,
    /// As `env`.
    #[schema(value_type = Option<BTreeMap<String, Option<String>>>)]
    pub labels: Option<BTreeMap<String, Option<String>>>,
    /// `HOST:CONTAINER[/tcp|udp]`, the whole list.
    pub ports: Option<Vec<String>>,
    /// `VOLUME:/path[:ro]`, the whole list.
    pub volumes: Option<Vec<String>>,
    /// `SECRET[:TARGET]`, the whole list.
    pub secrets: Option<Vec<String>>,
    #[serde(default, deserialize_with = "string_or_number")]
    #[schema(value_type = Option<String>, example = "256m")]
    pub memory: Option<String>,
    #[serde(default, deserialize_with = "string_or_number")]
    #[schema(value_type = Option<String>, example = "0.5")]
    pub cpus: Option<String>,
    pub stop_timeout_secs: Option<u32>,
    pub stop_signal: Option<String>,
    /// A new probe replaces the check's (its timing kept where not given).
    pub health_cmd: Option<String>,
    #[schema(example = "80/healthz")]
    pub health_http: Option<String>,
    pub health_tcp: Option<u16>,
    pub health_interval: Option<String>,
    pub health_timeout: Option<String>,
    pub health_retries: Option<u32>,
    pub health_start_period: Option<String>,
    /// `true`: no check at all; `false`: back to the image's `HEALTHCHECK`.
    pub no_healthcheck: Option<bool>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub entrypoint: Option<String>,
    /// The whole command (`[]`: the image's `CMD`).
    pub command: Option<Vec<String>>,
    /// Pull the image even if it is present.
    #[serde(default)]
    pub force_pull: bool,
    /// Replicas replaced at once (default 1).
    #[schema(minimum = 0, maximum = 1000)]
    pub parallel: Option<u32>,
    pub rollout_timeout: Option<String>,
}

impl AppPatch {
    pub fn into_request(self, name: String) -> proto::UpdateRequest {
        let split = |map: Option<BTreeMap<String, Option<String>>>| {
            let mut add = Vec::new();
            let mut remove = Vec::new();
            for (key, value) in map.unwrap_or_default() {
                match value {
                    Some(value) => add.push(format!("{key}={value}")),
                    None => remove.push(key),
                }
            }
            (add, remove)
        };
        let (env_add, env_rm) = split(self.env);
        let (label_add, label_rm) = split(self.labels);
        let list = |items: Option<Vec<String>>| items.map(|items| proto::StringList { items });
        proto::UpdateRequest {
            name,
            image: self.image,
            replicas: self.replicas,
            service: self.service,
            env_add,
            env_rm,
            label_add,
            label_rm,
            ports: list(self.ports),
            volumes: list(self.volumes),
            secrets: list(self.secrets),
            memory: self.memory,
            cpus: self.cpus,
            stop_timeout_secs: self.stop_timeout_secs,
            stop_signal: self.stop_signal,
            health_cmd: self.health_cmd.unwrap_or_default(),
            health_http: self.health_http.unwrap_or_default(),
            health_tcp: self.health_tcp.map_or(0, u32::from),
            health_interval: self.health_interval.unwrap_or_default(),
            health_timeout: self.health_timeout.unwrap_or_default(),
            health_retries: self.health_retries,
            health_start_period: self.health_start_period.unwrap_or_default(),
            no_healthcheck: self.no_healthcheck,
            user: self.user,
            workdir: self.workdir,
            entrypoint: self.entrypoint,
            command: list(self.command),
            force_pull: self.force_pull,
            parallel: self.parallel.unwrap_or(0),
            rollout_timeout: self.rollout_timeout.unwrap_or_default(),
            ..proto::UpdateRequest::default()
        }
    }
}

/// The guide's deploy answer, plus the app name and every container id.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeployReply {
    /// Always `true` (errors use the error document).
    pub success: bool,
    /// The first replica's container id.
    pub container_id: String,
    pub message: String,
    pub app: String,
    /// Every replica's container id, by slot.
    pub container_ids: Vec<String>,
}

impl From<proto::DeployResult> for DeployReply {
    fn from(result: proto::DeployResult) -> Self {
        Self {
            success: true,
            container_id: result.container_id,
            message: result.message,
            app: result.app,
            container_ids: result.container_ids,
        }
    }
}

/// The answer to an action (scale, restart, remove).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActionReply {
    /// Always `true` (errors use the error document).
    pub success: bool,
    pub message: String,
}

impl From<proto::ActionReply> for ActionReply {
    fn from(reply: proto::ActionReply) -> Self {
        Self {
            success: true,
            message: reply.message,
        }
    }
}

/// `POST /api/apps/{name}/scale`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
pub struct ScaleBody {
    /// The new number of containers (0 stops them all; the app stays).
    #[schema(minimum = 0, maximum = 1000, example = 3)]
    pub replicas: i64,
}

/// `POST /api/volumes/create`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
pub struct VolumeBody {
    /// Volume name: a DNS label.
    #[schema(
        example = "my-data-volume",
        pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        max_length = 63
    )]
    pub name: String,
}

/// The created volume, with `success` and a message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VolumeCreated {
    /// Always `true`.
    pub success: bool,
    pub message: String,
    #[serde(flatten)]
    pub volume: proto::VolumeInfo,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ContainersQuery {
    /// Only this app's containers.
    pub app: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RestartQuery {
    /// Replicas replaced at once (default 1).
    #[param(minimum = 0, maximum = 1000)]
    pub parallel: Option<u32>,
    /// How long each new replica may take to become healthy before the restart is rolled
    /// back, e.g. `2m` (default: from the health check's timing, plus 30 s).
    pub rollout_timeout: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only the last N lines (default: all).
    pub tail: Option<u32>,
    /// Keep the response open and stream new output as it is written.
    pub follow: Option<bool>,
    /// Only output written since: a duration back from now (`10m`) or an RFC 3339 time.
    pub since: Option<String>,
    /// Start each line with the RFC 3339 time it was written.
    pub timestamps: Option<bool>,
}

/// `KEY=VALUE` entries, from a JSON list of strings or an object of strings.
#[derive(Debug, Default)]
pub struct KeyValues(pub Vec<String>);

impl<'de> Deserialize<'de> for KeyValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = KeyValues;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a list of "KEY=VALUE" strings or an object of string values"#)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<KeyValues, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    out.push(item);
                }
                Ok(KeyValues(out))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<KeyValues, A::Error> {
                let mut out = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    out.push(format!("{key}={value}"));
                }
                Ok(KeyValues(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyValues, E> {
                Ok(KeyValues::default())
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn key_values_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::String)))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String))),
            )
            .build(),
    )
}

/// A string, or a number taken as its decimal text (`0.5` → `"0.5"`); `null` is absent.
fn string_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or a number")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// `POST /api/policies` as JSON (a YAML body with `Content-Type: application/yaml` works too).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = "a JSON object")]
pub struct ApplyPoliciesBody {
    /// A name for the input in error messages (usually its file name).
    #[serde(default)]
    pub source: Option<String>,
    /// One or more `NetworkPolicy` YAML documents.
    pub yaml: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApplyPoliciesQuery {
    /// A name for a YAML body in error messages (usually its file name; default `request.yaml`).
    pub source: Option<String>,
}

/// The policies applied, with `success`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PoliciesApplied {
    /// Always `true`.
    pub success: bool,
    #[serde(flatten)]
    pub reply: proto::ApplyPoliciesReply,
}
