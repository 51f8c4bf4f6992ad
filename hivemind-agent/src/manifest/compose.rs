//! `hivemind stack deploy -c docker-compose.yml NAME`: the part of the Compose Specification
//! that `docker stack deploy` honours, turned into the documents `apply` takes.
//!
//! - Each service becomes the app `NAME-SERVICE`, labelled `hivemind.stack=NAME` and
//!   `hivemind.stack.service=SERVICE`, which DNS answers as `SERVICE` to the stack's
//!   containers (as Swarm's stack network does).
//! - Named volumes and secrets become `NAME-KEY` (or keep their name when `external`);
//!   secret files are read here, relative to the Compose file.
//! - A key Hivemind cannot honour is an error naming it and its line; keys that only matter
//!   to Docker's own engine (`build`, `depends_on`, `restart`, ...) are listed as warnings,
//!   never dropped silently.
//!
//! Read with `serde_norway` like every YAML of ours: untyped first (merge keys `<<:` applied,
//! `x-` extension keys dropped as the specification says), then into the typed structs below,
//! whose `deny_unknown_fields` names any key outside the subset.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{
    API_VERSION, Kind, Metadata, SecretDocument, VolumeDocument,
    app::{
        AppDocument, AppMetadata, AppSpecDocument, HealthDocument, Resources, Scalar,
        UpdateDocument,
    },
};
use crate::service::records::{STACK_LABEL, STACK_SERVICE_LABEL};

/// A Compose file as documents, with what was read on the way.
#[derive(Debug)]
pub struct Stack {
    /// Multi-document YAML for `apply`.
    pub yaml: String,
    /// Secret values read from `secrets.*.file`, by the secret's Hivemind name.
    pub secret_values: HashMap<String, Vec<u8>>,
    /// Keys read and ignored, one line each.
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct ComposeError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ComposeError {}

/// Keys `docker stack deploy` ignores (Docker's engine uses them, a swarm does not), or that
/// mean nothing on Hivemind's one flat network.
const ENGINE_ONLY: &[&str] = &[
    "build",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "container_name",
    "depends_on",
    "devices",
    "dns",
    "dns_search",
    "domainname",
    "expose",
    "extra_hosts",
    "hostname",
    "init",
    "links",
    "logging",
    "network_mode",
    "networks",
    "platform",
    "privileged",
    "profiles",
    "pull_policy",
    "restart",
    "security_opt",
    "shm_size",
    "stdin_open",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
];

/// `deploy.*` keys that a swarm honours and Hivemind does its own way.
const DEPLOY_IGNORED: &[&str] = &[
    "endpoint_mode",
    "placement",
    "restart_policy",
    "rollback_config",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeFile {
    #[serde(default)]
    version: Option<serde_norway::Value>,
    #[serde(default)]
    name: Option<String>,
    services: BTreeMap<String, Service>,
    #[serde(default)]
    volumes: BTreeMap<String, Option<TopVolume>>,
    #[serde(default)]
    secrets: BTreeMap<String, TopSecret>,
    #[serde(default)]
    networks: Option<serde_norway::Value>,
}

// Not `deny_unknown_fields`: the flattened map takes the other keys, checked by hand.
#[derive(Debug, Deserialize)]
struct Service {
    image: Option<String>,
    #[serde(default)]
    command: Option<Words>,
    #[serde(default)]
    entrypoint: Option<Words>,
    #[serde(default)]
    environment: Option<Pairs>,
    #[serde(default)]
    env_file: Option<OneOrMany>,
    #[serde(default)]
    ports: Vec<Port>,
    #[serde(default)]
    volumes: Vec<ServiceVolume>,
    #[serde(default)]
    secrets: Vec<ServiceSecret>,
    #[serde(default)]
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    labels: Option<Pairs>,
    #[serde(default)]
    user: Option<Scalar>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    stop_grace_period: Option<String>,
    #[serde(default)]
    deploy: Option<Deploy>,
    /// [`ENGINE_ONLY`] keys: read to be warned about.
    #[serde(flatten)]
    engine_only: BTreeMap<String, serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Words {
    Line(String),
    List(Vec<Scalar>),
}

impl Words {
    fn words(&self) -> Result<Vec<String>, String> {
        match self {
            Self::Line(line) => {
                shlex::split(line).ok_or_else(|| format!("cannot split {line:?} into words"))
            }
            Self::List(list) => Ok(list.iter().map(|w| w.0.clone()).collect()),
        }
    }
}

/// `KEY: value` or `- KEY=value` (a bare `- KEY` takes the CLI's environment, as Compose).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Pairs {
    Map(BTreeMap<String, Option<Scalar>>),
    List(Vec<String>),
}

impl Pairs {
    fn map(&self) -> BTreeMap<String, Scalar> {
        let from_env = |key: &str| std::env::var(key).ok().map(Scalar);
        match self {
            Self::Map(map) => map
                .iter()
                .filter_map(|(k, v)| v.clone().or_else(|| from_env(k)).map(|v| (k.clone(), v)))
                .collect(),
            Self::List(list) => list
                .iter()
                .filter_map(|item| match item.split_once('=') {
                    Some((k, v)) => Some((k.to_owned(), Scalar(v.to_owned()))),
                    None => from_env(item).map(|v| (item.clone(), v)),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Port {
    Short(Scalar),
    Long(LongPort),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongPort {
    target: u16,
    published: Option<Scalar>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ServiceVolume {
    Short(String),
    Long(LongVolume),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongVolume {
    #[serde(rename = "type")]
    kind: String,
    source: Option<String>,
    target: String,
    #[serde(default)]
    read_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ServiceSecret {
    Short(String),
    Long(LongSecret),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongSecret {
    source: String,
    #[serde(default)]
    target: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    #[serde(default)]
    test: Option<Words>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    start_period: Option<String>,
    #[serde(default)]
    disable: bool,
}

// Not `deny_unknown_fields`: the flattened map takes the other keys, checked by hand.
#[derive(Debug, Deserialize)]
struct Deploy {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    replicas: Option<i64>,
    #[serde(default)]
    labels: Option<Pairs>,
    #[serde(default)]
    resources: Option<DeployResources>,
    #[serde(default)]
    update_config: Option<UpdateConfig>,
    #[serde(flatten)]
    ignored: BTreeMap<String, serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployResources {
    #[serde(default)]
    limits: Option<Limits>,
    #[serde(default)]
    reservations: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    #[serde(default)]
    cpus: Option<Scalar>,
    #[serde(default)]
    memory: Option<Scalar>,
    #[serde(default)]
    pids: Option<serde_norway::Value>,
}

// Not `deny_unknown_fields`: the flattened map takes the other keys, checked by hand.
#[derive(Debug, Deserialize)]
struct UpdateConfig {
    #[serde(default)]
    parallelism: Option<u32>,
    #[serde(flatten)]
    ignored: BTreeMap<String, serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopVolume {
    #[serde(default)]
    external: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    driver: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopSecret {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    external: bool,
    #[serde(default)]
    name: Option<String>,
}

/// Reads `path` as the Compose file of stack `stack`.
pub fn read(path: &Path, stack: &str) -> Result<Stack, ComposeError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| ComposeError {
        file: file.clone(),
        line: None,
        message: format!("cannot read: {err}"),
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    convert(&file, &text, base, stack)
}

/// The Compose text `text` (named `file`, relative paths under `base`) as stack `stack`.
pub fn convert(file: &str, text: &str, base: &Path, stack: &str) -> Result<Stack, ComposeError> {
    let fail = |line: Option<usize>, message: String| ComposeError {
        file: file.to_owned(),
        line,
        message,
    };
    crate::validate::name("stack name", stack).map_err(|e| fail(None, e.to_string()))?;
    let mut value: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
        fail(
            e.location().map(|l| l.line()),
            format!("malformed YAML: {}", crate::policy::bare_message(&e, "")),
        )
    })?;
    value
        .apply_merge()
        .map_err(|e| fail(None, format!("merge keys: {e}")))?;
    drop_extensions(&mut value);
    let compose: ComposeFile = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let (line, message) = match unknown_key(&message) {
            Some(key) => {
                let full = if path.ends_with(&key) {
                    path.clone()
                } else {
                    format!("{path}.{key}")
                };
                (key_line(text, &full), unsupported_message(&full))
            }
            None => (key_line(text, &path), format!("{path}: {message}")),
        };
        fail(line, message)
    })?;
    Converter {
        file,
        text,
        base,
        stack,
        compose: &compose,
        warnings: Vec::new(),
        secret_values: HashMap::new(),
    }
    .run()
}

struct Converter<'a> {
    file: &'a str,
    text: &'a str,
    base: &'a Path,
    stack: &'a str,
    compose: &'a ComposeFile,
    warnings: Vec<String>,
    secret_values: HashMap<String, Vec<u8>>,
}

impl Converter<'_> {
    fn fail(&self, path: &str, message: impl Into<String>) -> ComposeError {
        ComposeError {
            file: self.file.to_owned(),
            line: key_line(self.text, path),
            message: format!("{path}: {}", message.into()),
        }
    }

    fn unsupported(&self, path: &str) -> ComposeError {
        ComposeError {
            file: self.file.to_owned(),
            line: key_line(self.text, path),
            message: unsupported_message(path),
        }
    }

    fn warn(&mut self, path: &str, why: &str) {
        let at = key_line(self.text, path).map_or_else(String::new, |l| format!(":{l}"));
        self.warnings
            .push(format!("{}{at}: `{path}` ignored: {why}", self.file));
    }

    fn run(mut self) -> Result<Stack, ComposeError> {
        let compose = self.compose;
        if compose.version.is_some() {
            self.warn("version", "obsolete in the Compose Specification");
        }
        if compose.name.is_some() {
            self.warn(
                "name",
                "the stack's name is the one given on the command line",
            );
        }
        if compose.networks.is_some() {
            self.warn("networks", "every app is on the one cluster network");
        }
        let mut documents = Vec::new();
        let mut volume_names = BTreeMap::new();
        for (key, volume) in &compose.volumes {
            let volume = volume.as_ref();
            if let Some(driver) = volume.and_then(|v| v.driver.as_deref())
                && driver != "local"
            {
                return Err(self.fail(
                    &format!("volumes.{key}.driver"),
                    format!("only the local driver is available, not {driver:?}"),
                ));
            }
            let external = volume.is_some_and(|v| v.external);
            let name = match volume.and_then(|v| v.name.clone()) {
                Some(name) => name,
                None if external => key.clone(),
                None => self.scoped(key),
            };
            self.check_name(&format!("volumes.{key}"), &name)?;
            if !external {
                documents.push(to_yaml(&VolumeDocument {
                    api_version: API_VERSION.to_owned(),
                    kind: Kind::Volume.as_str().to_owned(),
                    metadata: Metadata { name: name.clone() },
                }));
            }
            volume_names.insert(key.clone(), name);
        }
        let mut secret_names = BTreeMap::new();
        for (key, secret) in &compose.secrets {
            let path = format!("secrets.{key}");
            let name = match (&secret.name, secret.external) {
                (Some(name), _) => name.clone(),
                (None, true) => key.clone(),
                (None, false) => self.scoped(key),
            };
            self.check_name(&path, &name)?;
            let value = match (&secret.file, &secret.environment, secret.external) {
                (_, _, true) => None,
                (Some(file), None, false) => {
                    let full = self.base.join(file);
                    Some(std::fs::read(&full).map_err(|err| {
                        self.fail(
                            &format!("{path}.file"),
                            format!("cannot read {}: {err}", full.display()),
                        )
                    })?)
                }
                (None, Some(var), false) => Some(
                    std::env::var(var)
                        .map_err(|_| {
                            self.fail(&format!("{path}.environment"), format!("{var} is not set"))
                        })?
                        .into_bytes(),
                ),
                _ => {
                    return Err(self.fail(
                        &path,
                        "give exactly one of file, environment or external: true",
                    ));
                }
            };
            if let Some(value) = value {
                self.secret_values.insert(name.clone(), value);
            }
            documents.push(to_yaml(&SecretDocument {
                api_version: API_VERSION.to_owned(),
                kind: Kind::Secret.as_str().to_owned(),
                metadata: Metadata { name: name.clone() },
                spec: None,
            }));
            secret_names.insert(key.clone(), name);
        }
        for (key, service) in &compose.services {
            let app = self.app(key, service, &volume_names, &secret_names)?;
            documents.push(to_yaml(&app));
        }
        Ok(Stack {
            yaml: documents.concat(),
            secret_values: self.secret_values,
            warnings: self.warnings,
        })
    }

    /// `STACK-KEY`, with `_` as `-` (names are DNS labels).
    fn scoped(&self, key: &str) -> String {
        format!(
            "{}-{}",
            self.stack,
            key.replace('_', "-").to_ascii_lowercase()
        )
    }

    fn check_name(&self, path: &str, name: &str) -> Result<(), ComposeError> {
        crate::validate::name("name", name).map_err(|err| self.fail(path, err.to_string()))
    }

    fn app(
        &mut self,
        key: &str,
        service: &Service,
        volume_names: &BTreeMap<String, String>,
        secret_names: &BTreeMap<String, String>,
    ) -> Result<AppDocument, ComposeError> {
        let at = format!("services.{key}");
        let name = self.scoped(key);
        self.check_name(&at, &name)?;
        let image = service.image.clone().ok_or_else(|| {
            self.fail(
                &at,
                "an image is required (stacks deploy images; build and push it first)",
            )
        })?;
        for engine_key in service.engine_only.keys() {
            if !ENGINE_ONLY.contains(&engine_key.as_str()) {
                return Err(self.unsupported(&format!("{at}.{engine_key}")));
            }
            let why = match engine_key.as_str() {
                "depends_on" => "apps start independently; use a health check and retries",
                "restart" => "replicas are always restarted",
                "networks" | "network_mode" | "links" => "every app is on the one cluster network",
                _ => "only Docker's own engine uses it",
            };
            self.warn(&format!("{at}.{engine_key}"), why);
        }
        let mut env = BTreeMap::new();
        if let Some(files) = &service.env_file {
            let files = match files {
                OneOrMany::One(f) => vec![f.clone()],
                OneOrMany::Many(f) => f.clone(),
            };
            for file in files {
                let full = self.base.join(&file);
                let text = std::fs::read_to_string(&full).map_err(|err| {
                    self.fail(
                        &format!("{at}.env_file"),
                        format!("cannot read {}: {err}", full.display()),
                    )
                })?;
                env.extend(env_file(&text));
            }
        }
        if let Some(environment) = &service.environment {
            env.extend(environment.map());
        }
        let mut labels = service.labels.as_ref().map(Pairs::map).unwrap_or_default();
        labels.insert(STACK_LABEL.to_owned(), Scalar(self.stack.to_owned()));
        labels.insert(STACK_SERVICE_LABEL.to_owned(), Scalar(key.to_owned()));
        let words =
            |what: &str, words: &Option<Words>| -> Result<Option<Vec<String>>, ComposeError> {
                words
                    .as_ref()
                    .map(|w| w.words().map_err(|e| self.fail(&format!("{at}.{what}"), e)))
                    .transpose()
            };
        let mut spec = AppSpecDocument {
            image,
            replicas: 1,
            command: words("command", &service.command)?,
            entrypoint: words("entrypoint", &service.entrypoint)?,
            ports: self.ports(&at, &service.ports)?,
            volumes: self.volumes(&at, &service.volumes, volume_names)?,
            secrets: self.secrets(&at, &service.secrets, secret_names)?,
            user: service.user.clone(),
            workdir: service.working_dir.clone(),
            stop_signal: service.stop_signal.as_deref().map(Scalar::from),
            stop_timeout: service
                .stop_grace_period
                .as_deref()
                .map(|d| duration(d).map_err(|e| self.fail(&format!("{at}.stop_grace_period"), e)))
                .transpose()?,
            health_check: service
                .healthcheck
                .as_ref()
                .map(|h| self.health(&at, h))
                .transpose()?,
            ..AppSpecDocument::default()
        };
        if let Some(deploy) = &service.deploy {
            self.deploy(&at, deploy, &mut spec, &mut labels)?;
        }
        spec.env = env;
        Ok(AppDocument {
            api_version: API_VERSION.to_owned(),
            kind: Kind::App.as_str().to_owned(),
            metadata: AppMetadata { name, labels },
            spec,
        })
    }

    fn deploy(
        &mut self,
        at: &str,
        deploy: &Deploy,
        spec: &mut AppSpecDocument,
        labels: &mut BTreeMap<String, Scalar>,
    ) -> Result<(), ComposeError> {
        let at = format!("{at}.deploy");
        if let Some(mode) = deploy.mode.as_deref()
            && mode != "replicated"
        {
            return Err(self.fail(
                &format!("{at}.mode"),
                format!("only replicated services are supported, not {mode:?}"),
            ));
        }
        spec.replicas = deploy.replicas.unwrap_or(1);
        if let Some(more) = &deploy.labels {
            labels.extend(more.map());
        }
        for key in deploy.ignored.keys() {
            if !DEPLOY_IGNORED.contains(&key.as_str()) {
                return Err(self.unsupported(&format!("{at}.{key}")));
            }
            let why = match key.as_str() {
                "placement" => "replicas are spread over the ready nodes",
                "restart_policy" => "replicas are always restarted, with a backoff",
                _ => "Hivemind's rollouts roll back on their own",
            };
            self.warn(&format!("{at}.{key}"), why);
        }
        if let Some(resources) = &deploy.resources {
            if resources.reservations.is_some() {
                self.warn(
                    &format!("{at}.resources.reservations"),
                    "only limits are enforced",
                );
            }
            if let Some(limits) = &resources.limits {
                if limits.pids.is_some() {
                    self.warn(&format!("{at}.resources.limits.pids"), "not enforced");
                }
                spec.resources = Some(Resources {
                    memory: limits.memory.clone(),
                    cpus: limits.cpus.clone(),
                });
            }
        }
        if let Some(update) = &deploy.update_config {
            for key in update.ignored.keys() {
                let why = "updates replace replicas one batch at a time, each healthy first";
                self.warn(&format!("{at}.update_config.{key}"), why);
            }
            spec.update = Some(UpdateDocument {
                parallelism: update.parallelism,
                timeout: None,
            });
        }
        Ok(())
    }

    fn ports(&self, at: &str, ports: &[Port]) -> Result<Vec<Scalar>, ComposeError> {
        let at = format!("{at}.ports");
        ports
            .iter()
            .map(|port| match port {
                Port::Short(short) => {
                    let parts: Vec<&str> = short.0.split(':').collect();
                    if parts.len() == 2 {
                        Ok(short.clone())
                    } else {
                        Err(self.fail(
                            &at,
                            format!("{:?}: publish a port as HOST:CONTAINER (no host address, no random port)", short.0),
                        ))
                    }
                }
                Port::Long(long) => {
                    if long.mode.as_deref().is_some_and(|m| m != "ingress" && m != "host") {
                        return Err(self.fail(&at, "mode must be ingress or host"));
                    }
                    let published = long.published.as_ref().ok_or_else(|| {
                        self.fail(&at, format!("target {}: `published` is required", long.target))
                    })?;
                    let protocol = long.protocol.as_deref().unwrap_or("tcp");
                    Ok(Scalar(format!("{}:{}/{protocol}", published.0, long.target)))
                }
            })
            .collect()
    }

    fn volumes(
        &self,
        at: &str,
        volumes: &[ServiceVolume],
        names: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, ComposeError> {
        let at = format!("{at}.volumes");
        let named = |source: &str, target: &str, read_only: bool| {
            if source.starts_with(['.', '/', '~']) {
                return Err(self.fail(
                    &at,
                    format!("{source}: bind mounts are not supported (a node's paths are not the cluster's); use a named volume"),
                ));
            }
            let name = names.get(source).ok_or_else(|| {
                self.fail(
                    &at,
                    format!("volume {source} is not declared under the top-level volumes"),
                )
            })?;
            Ok(format!(
                "{name}:{target}{}",
                if read_only { ":ro" } else { "" }
            ))
        };
        volumes
            .iter()
            .map(|volume| match volume {
                ServiceVolume::Short(short) => {
                    let parts: Vec<&str> = short.split(':').collect();
                    match parts.as_slice() {
                        [source, target] | [source, target, "rw"] => named(source, target, false),
                        [source, target, "ro"] => named(source, target, true),
                        _ => Err(self.fail(&at, format!("{short:?}: expected VOLUME:/path[:ro]"))),
                    }
                }
                ServiceVolume::Long(long) if long.kind == "volume" => {
                    let source = long.source.as_deref().ok_or_else(|| {
                        self.fail(&at, format!("{}: a volume needs a source", long.target))
                    })?;
                    named(source, &long.target, long.read_only)
                }
                ServiceVolume::Long(long) => Err(self.fail(
                    &at,
                    format!(
                        "type {:?} is not supported; only named volumes (type: volume)",
                        long.kind
                    ),
                )),
            })
            .collect()
    }

    fn secrets(
        &self,
        at: &str,
        secrets: &[ServiceSecret],
        names: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, ComposeError> {
        let at = format!("{at}.secrets");
        secrets
            .iter()
            .map(|secret| {
                let (source, target) = match secret {
                    ServiceSecret::Short(source) => (source.as_str(), None),
                    ServiceSecret::Long(long) => (long.source.as_str(), long.target.as_deref()),
                };
                let name = names.get(source).ok_or_else(|| {
                    self.fail(
                        &at,
                        format!("secret {source} is not declared under the top-level secrets"),
                    )
                })?;
                // Compose's default target is the key, under /run/secrets.
                let target =
                    target.map_or(source, |t| t.strip_prefix("/run/secrets/").unwrap_or(t));
                Ok(format!("{name}:{target}"))
            })
            .collect()
    }

    fn health(&self, at: &str, check: &Healthcheck) -> Result<HealthDocument, ComposeError> {
        let at = format!("{at}.healthcheck");
        if check.disable {
            return Ok(HealthDocument {
                disable: true,
                ..HealthDocument::default()
            });
        }
        let cmd = match &check.test {
            None => None,
            Some(Words::Line(line)) => Some(line.clone()),
            Some(Words::List(list)) => {
                let words: Vec<&str> = list.iter().map(|w| w.0.as_str()).collect();
                match words.split_first() {
                    Some((&"NONE", _)) => {
                        return Ok(HealthDocument {
                            disable: true,
                            ..HealthDocument::default()
                        });
                    }
                    Some((&"CMD-SHELL", rest)) if !rest.is_empty() => Some(rest.join(" ")),
                    Some((&"CMD", rest)) if !rest.is_empty() => Some(
                        shlex::try_join(rest.iter().copied())
                            .map_err(|e| self.fail(&format!("{at}.test"), e.to_string()))?,
                    ),
                    _ => {
                        return Err(self.fail(
                            &format!("{at}.test"),
                            "expected [CMD, ...], [CMD-SHELL, \"...\"], [NONE] or a command line",
                        ));
                    }
                }
            }
        };
        let time = |what: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| duration(v).map_err(|e| self.fail(&format!("{at}.{what}"), e)))
                .transpose()
        };
        if cmd.is_none() {
            return Err(self.fail(
                &format!("{at}.test"),
                "a test is required (or disable: true)",
            ));
        }
        Ok(HealthDocument {
            cmd,
            interval: time("interval", &check.interval)?,
            timeout: time("timeout", &check.timeout)?,
            retries: check.retries,
            start_period: time("start_period", &check.start_period)?,
            ..HealthDocument::default()
        })
    }
}

/// `x-` keys are the file's own (anchors and the like), at the top and in services.
fn drop_extensions(value: &mut serde_norway::Value) {
    let is_extension = |k: &serde_norway::Value| k.as_str().is_some_and(|k| k.starts_with("x-"));
    if let Some(map) = value.as_mapping_mut() {
        map.retain(|k, _| !is_extension(k));
        if let Some(services) = map.get_mut("services").and_then(|s| s.as_mapping_mut()) {
            for (_, service) in services.iter_mut() {
                if let Some(service) = service.as_mapping_mut() {
                    service.retain(|k, _| !is_extension(k));
                }
            }
        }
    }
}

/// Compose durations (`1m30s`, `10s`, `500ms`, `1h`) as milliseconds, written `Nms`.
fn duration(value: &str) -> Result<String, String> {
    let bad = || format!("{value:?} is not a duration such as 30s, 1m30s or 500ms");
    let mut total: u64 = 0;
    let mut rest = value.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..unit] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" | "" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            _ => return Err(bad()),
        };
        rest = &rest[unit..];
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // non-negative
        {
            total += (number * ms) as u64;
        }
    }
    Ok(format!("{total}ms"))
}

/// `KEY=VALUE` lines; blank lines and `#` comments skipped, surrounding quotes removed.
fn env_file(text: &str) -> BTreeMap<String, Scalar> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let unquoted = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_owned(), Scalar(unquoted.to_owned()))
        })
        .collect()
}

fn to_yaml<T: serde::Serialize>(document: &T) -> String {
    // Plain structs of strings, maps and lists: serialising them cannot fail.
    format!(
        "---\n{}",
        serde_norway::to_string(document).unwrap_or_default()
    )
}

fn unsupported_message(path: &str) -> String {
    format!("`{path}` is not supported by hivemind stack deploy (see docs/compose.md)")
}

/// serde's "unknown field `x`, expected ..." → `x`.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.split_once("unknown field `")?.1;
    Some(rest.split_once('`')?.0.to_owned())
}

/// The 1-based line of the key at `path` (`services.web.deploy.replicas`, indexes dropped)
/// in block-style YAML, following indentation; the deepest key found when the rest is not.
fn key_line(text: &str, path: &str) -> Option<usize> {
    let keys: Vec<&str> = path
        .split('.')
        .map(|k| k.split('[').next().unwrap_or(k))
        .filter(|k| !k.is_empty())
        .collect();
    let mut found = None;
    let mut depth = 0;
    let mut parent_indent: Option<usize> = None;
    for (number, line) in text.lines().enumerate() {
        let Some(want) = keys.get(depth) else { break };
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if parent_indent.is_some_and(|p| indent <= p) {
            break; // left the parent's block without finding the key
        }
        let key = trimmed
            .split_once(':')
            .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\''));
        if key == Some(*want) {
            found = Some(number + 1);
            parent_indent = Some(indent);
            depth += 1;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_key_lines() {
        assert_eq!(duration("1m30s").as_deref(), Ok("90000ms"));
        assert_eq!(duration("500ms").as_deref(), Ok("500ms"));
        assert_eq!(duration("10").as_deref(), Ok("10000ms"));
        assert!(duration("soon").is_err());
        let text = "services:\n  web:\n    image: x\n    deploy:\n      replicas: 2\n  db:\n    image: y\n";
        assert_eq!(key_line(text, "services.web.deploy.replicas"), Some(5));
        assert_eq!(key_line(text, "services.db.image"), Some(7));
        assert_eq!(key_line(text, "services.db.nope"), Some(6));
    }

    #[test]
    fn unsupported_keys_name_their_line_and_engine_keys_warn() {
        let text = "\
services:
  web:
    image: web:1
    build: .
    depends_on: [db]
  db:
    image: db:1
    devices_cgroup: x
";
        let err = convert("c.yml", text, Path::new("."), "shop").expect_err("unsupported");
        assert_eq!(err.line, Some(8), "{err}");
        assert!(
            err.to_string().contains("services.db.devices_cgroup"),
            "{err}"
        );
        let ok = convert(
            "c.yml",
            &text.replace("    devices_cgroup: x\n", ""),
            Path::new("."),
            "shop",
        )
        .expect("supported");
        assert_eq!(ok.warnings.len(), 2, "{:?}", ok.warnings);
        assert!(
            ok.warnings[0].starts_with("c.yml:4: `services.web.build` ignored"),
            "{:?}",
            ok.warnings
        );
    }

    /// dockersamples/example-voting-app's `docker-stack.yml`, as published.
    const VOTING_APP: &str = "\
version: \"3.9\"
services:
  redis:
    image: redis:alpine
    networks:
      - frontend
  db:
    image: postgres:15-alpine
    environment:
      POSTGRES_USER: \"postgres\"
      POSTGRES_PASSWORD: \"postgres\"
    volumes:
      - db-data:/var/lib/postgresql/data
    networks:
      - backend
  vote:
    image: dockersamples/examplevotingapp_vote
    ports:
      - 8080:80
    networks:
      - frontend
    deploy:
      replicas: 2
  result:
    image: dockersamples/examplevotingapp_result
    ports:
      - 8081:80
    networks:
      - backend
  worker:
    image: dockersamples/examplevotingapp_worker
    networks:
      - frontend
      - backend
    deploy:
      replicas: 2
networks:
  frontend:
  backend:
volumes:
  db-data:
";

    /// The `WordPress` sample of Docker's documentation.
    const WORDPRESS: &str = "\
services:
  db:
    image: mariadb:10.6.4-focal
    command: '--default-authentication-plugin=mysql_native_password'
    volumes:
      - db_data:/var/lib/mysql
    restart: always
    environment:
      - MYSQL_ROOT_PASSWORD=somewordpress
      - MYSQL_DATABASE=wordpress
      - MYSQL_USER=wordpress
      - MYSQL_PASSWORD=wordpress
    expose:
      - 3306
      - 33060
  wordpress:
    image: wordpress:latest
    volumes:
      - wp_data:/var/www/html
    ports:
      - 80:80
    restart: always
    environment:
      - WORDPRESS_DB_HOST=db
      - WORDPRESS_DB_USER=wordpress
      - WORDPRESS_DB_PASSWORD=wordpress
      - WORDPRESS_DB_NAME=wordpress
volumes:
  db_data:
  wp_data:
";

    fn documents(stack: &Stack) -> super::super::Manifest {
        super::super::parse_sources([("stack.yaml", stack.yaml.as_str())]).expect("valid documents")
    }

    #[test]
    fn the_voting_app_stack_converts_whole() {
        let stack =
            convert("docker-stack.yml", VOTING_APP, Path::new("."), "vote").expect("supported");
        let manifest = documents(&stack);
        let names: Vec<&str> = manifest
            .apps
            .iter()
            .map(|a| a.document.metadata.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "vote-db",
                "vote-redis",
                "vote-result",
                "vote-vote",
                "vote-worker"
            ]
        );
        let vote = &manifest.apps[3].document;
        assert_eq!(vote.spec.replicas, 2);
        assert_eq!(vote.spec.ports, [Scalar::from("8080:80")]);
        assert_eq!(
            manifest.apps[0].document.spec.volumes,
            ["vote-db-data:/var/lib/postgresql/data"]
        );
        assert_eq!(manifest.volumes[0].document.metadata.name, "vote-db-data");
        // Networks are read and named, never silently dropped.
        let networks = stack
            .warnings
            .iter()
            .filter(|w| w.contains("networks"))
            .count();
        assert_eq!(networks, 6, "{:?}", stack.warnings);
    }

    #[test]
    fn the_wordpress_sample_converts_with_its_engine_keys_listed() {
        let stack = convert("compose.yaml", WORDPRESS, Path::new("."), "blog").expect("supported");
        let manifest = documents(&stack);
        let db = &manifest.apps[0].document;
        assert_eq!(db.metadata.name, "blog-db");
        assert_eq!(
            db.spec.command.as_deref(),
            Some(&["--default-authentication-plugin=mysql_native_password".to_owned()][..])
        );
        assert_eq!(db.spec.env["MYSQL_DATABASE"], Scalar::from("wordpress"));
        assert_eq!(db.metadata.labels[STACK_SERVICE_LABEL], Scalar::from("db"));
        let wordpress = &manifest.apps[1].document;
        assert_eq!(wordpress.spec.env["WORDPRESS_DB_HOST"], Scalar::from("db"));
        assert_eq!(wordpress.spec.volumes, ["blog-wp-data:/var/www/html"]);
        for key in [
            "services.db.restart",
            "services.db.expose",
            "services.wordpress.restart",
        ] {
            assert!(
                stack.warnings.iter().any(|w| w.contains(key)),
                "{key}: {:?}",
                stack.warnings
            );
        }
    }
}
