//! Agent configuration: a TOML file, overridden by `HIVEMIND_*` environment variables, overridden
//! by flags; validated once at start. A bad configuration is reported in one line naming the
//! setting and the agent exits 64 (`EX_USAGE`) before touching anything.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use clap::Args;
use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::paths;

/// `hivemind agent` flags. Each is optional so a flag left out falls back to the environment
/// (clap reads `HIVEMIND_*`), then the config file, then the built-in default.
#[derive(Args, Debug, Default)]
pub struct AgentArgs {
    /// TOML config file; keys are the flag names with `_` for `-`.
    #[arg(long, env = "HIVEMIND_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the store, volumes, logs and keys [default: /var/lib/hivemind].
    #[arg(long, env = "HIVEMIND_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Unix socket the CLI talks gRPC to [default: /run/hivemind/hivemind.sock].
    #[arg(long, env = "HIVEMIND_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Address of the REST API and web UI [default: 127.0.0.1:3000].
    #[arg(long, env = "HIVEMIND_API_ADDR", value_name = "ADDR:PORT")]
    pub api_addr: Option<String>,
    /// containerd's gRPC socket [default: /run/containerd/containerd.sock].
    #[arg(long, env = "HIVEMIND_CONTAINERD_SOCKET", value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,
    /// containerd namespace that holds Hivemind's images and containers [default: hivemind].
    #[arg(long, env = "HIVEMIND_CONTAINERD_NAMESPACE", value_name = "NS")]
    pub containerd_namespace: Option<String>,
    /// This node's name in the cluster [default: the host name].
    #[arg(long, env = "HIVEMIND_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// This node's underlay address, used by peers for VXLAN [default: the underlay's address].
    #[arg(long, env = "HIVEMIND_NODE_IP", value_name = "IP")]
    pub node_ip: Option<String>,
    /// Interface that carries traffic between nodes.
    #[arg(long, env = "HIVEMIND_UNDERLAY_IFACE", value_name = "IF")]
    pub underlay_iface: Option<String>,
    /// Container address space; each node gets a /24 of it [default: 10.244.0.0/16].
    #[arg(long, env = "HIVEMIND_CLUSTER_CIDR", value_name = "CIDR")]
    pub cluster_cidr: Option<String>,
    /// UDP port of the VXLAN overlay [default: 4789].
    #[arg(long, env = "HIVEMIND_VXLAN_PORT", value_name = "N")]
    pub vxlan_port: Option<String>,
    /// Address space of the apps' virtual IPs; must not overlap the cluster CIDR and must be
    /// the same on every node [default: 10.96.0.0/16].
    #[arg(long, env = "HIVEMIND_SERVICE_CIDR", value_name = "CIDR")]
    pub service_cidr: Option<String>,
    /// cgroup v2 directory whose processes reach the VIPs; e.g. the cgroup root to let the
    /// node's own processes use them too [default: <cgroup2>/hivemind/<node>, the containers].
    #[arg(long, env = "HIVEMIND_VIP_CGROUP", value_name = "DIR")]
    pub vip_cgroup: Option<PathBuf>,
    /// A registry reachable only over plain HTTP; repeat for several.
    #[arg(
        long = "insecure-registry",
        env = "HIVEMIND_INSECURE_REGISTRIES",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Trust the CA certificates (PEM) in FILE for the registry HOST[:PORT], beside the
    /// system roots; repeat for several registries.
    #[arg(
        long = "registry-ca",
        env = "HIVEMIND_REGISTRY_CA",
        value_name = "HOST=FILE",
        value_delimiter = ','
    )]
    pub registry_ca: Vec<String>,
    /// A Docker config.json whose `auths`, `credHelpers` and `credsStore` give registry
    /// credentials (after those of `hivemind registry login`).
    #[arg(long, env = "HIVEMIND_REGISTRY_CONFIG", value_name = "FILE")]
    pub registry_config: Option<PathBuf>,
    /// Start a local etcd member and become the first node of a cluster.
    #[arg(long, env = "HIVEMIND_CLUSTER_INIT")]
    pub cluster_init: bool,
    /// TCP port of this node's cluster endpoint (node-to-node gRPC, mutual TLS) on its
    /// underlay address [default: 7443].
    #[arg(long, env = "HIVEMIND_CLUSTER_PORT", value_name = "N")]
    pub cluster_port: Option<String>,
    /// Use an existing etcd cluster instead of the embedded store.
    #[arg(
        long,
        env = "HIVEMIND_ETCD_ENDPOINTS",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// Log format on stderr: text or json [default: text].
    #[arg(long, env = "HIVEMIND_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// DNS suffix of app names: app `web` is `web.<suffix>` [default: hivemind].
    #[arg(long, env = "HIVEMIND_DNS_SUFFIX", value_name = "DOMAIN")]
    pub dns_suffix: Option<String>,
    /// Resolvers for names that are not services (IP or IP:PORT; "none" for none)
    /// [default: the non-loopback nameservers of /etc/resolv.conf].
    #[arg(
        long,
        env = "HIVEMIND_DNS_UPSTREAM",
        value_name = "IP[:PORT]",
        value_delimiter = ','
    )]
    pub dns_upstream: Vec<String>,
    /// Address of the public HTTP router ("off" disables it) [default: 0.0.0.0:80].
    #[arg(long, env = "HIVEMIND_HTTP_ADDR", value_name = "ADDR:PORT")]
    pub http_addr: Option<String>,
    /// Print the REST API's bearer token (made if there is none yet in the data dir) and exit.
    #[arg(long)]
    pub print_token: bool,
}

/// The config file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    api_addr: Option<String>,
    containerd_socket: Option<PathBuf>,
    containerd_namespace: Option<String>,
    node_name: Option<String>,
    node_ip: Option<String>,
    underlay_iface: Option<String>,
    cluster_cidr: Option<String>,
    vxlan_port: Option<u16>,
    cluster_port: Option<u16>,
    service_cidr: Option<String>,
    vip_cgroup: Option<PathBuf>,
    insecure_registries: Vec<String>,
    registry_ca: Vec<String>,
    registry_config: Option<PathBuf>,
    cluster_init: bool,
    etcd_endpoints: Vec<String>,
    log_format: Option<String>,
    dns_suffix: Option<String>,
    dns_upstream: Vec<String>,
    http_addr: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub data_dir: paths::DataDir,
    pub socket: PathBuf,
    pub api_addr: SocketAddr,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    pub underlay_iface: Option<String>,
    pub cluster_cidr: Ipv4Net,
    pub vxlan_port: u16,
    pub cluster_port: u16,
    pub service_cidr: Ipv4Net,
    /// `None`: the default, found at start (see `lb::default_cgroup`).
    pub vip_cgroup: Option<PathBuf>,
    pub insecure_registries: Vec<String>,
    /// `--registry-ca`: registry → the PEM certificates to trust for it.
    pub registry_ca: BTreeMap<String, Vec<u8>>,
    pub registry_config: Option<PathBuf>,
    pub cluster_init: bool,
    pub etcd_endpoints: Vec<String>,
    pub log_format: LogFormat,
    /// Lowercase, without dots at either end.
    pub dns_suffix: String,
    /// Where names that are not services are forwarded; empty: answered SERVFAIL.
    pub dns_upstreams: Vec<SocketAddr>,
    /// The public HTTP router's address; `None`: off.
    pub http_addr: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid {setting} {value:?}: {reason}")]
    Invalid {
        setting: &'static str,
        value: String,
        reason: String,
    },
    #[error("data dir {path} is not usable: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--cluster-init and --etcd-endpoints exclude each other: pick one store")]
    StoreConflict,
}

fn invalid(setting: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

impl AgentConfig {
    // One setting after another, each flag over env over file over default: long, not deep.
    #[allow(clippy::too_many_lines)]
    pub fn load(args: AgentArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| paths::DEFAULT_DATA_DIR.into());
        check_data_dir(&data_dir)?;

        let api_addr = args
            .api_addr
            .or(file.api_addr)
            .unwrap_or_else(|| "127.0.0.1:3000".into());
        let api_addr = api_addr.parse().map_err(|_| {
            invalid(
                "--api-addr",
                &api_addr,
                "expected ADDR:PORT, e.g. 127.0.0.1:3000",
            )
        })?;

        let node_name = match args.node_name.or(file.node_name) {
            Some(name) => name,
            None => host_name(),
        };
        check_dns_label("--node-name", &node_name)?;

        let node_ip = args
            .node_ip
            .or(file.node_ip)
            .map(|ip| {
                ip.parse()
                    .map_err(|_| invalid("--node-ip", &ip, "expected an IP address"))
            })
            .transpose()?;

        let cluster_cidr = args
            .cluster_cidr
            .or(file.cluster_cidr)
            .unwrap_or_else(|| "10.244.0.0/16".into());
        let cluster_cidr = parse_cluster_cidr(&cluster_cidr)?;

        let service_cidr = args
            .service_cidr
            .or(file.service_cidr)
            .unwrap_or_else(|| "10.96.0.0/16".into());
        let service_cidr = parse_service_cidr(&service_cidr, cluster_cidr)?;
        let vip_cgroup = args.vip_cgroup.or(file.vip_cgroup);

        let vxlan_port = match args.vxlan_port {
            Some(port) => parse_port("--vxlan-port", &port)?,
            None => file.vxlan_port.unwrap_or(4789),
        };

        let cluster_port = match args.cluster_port {
            Some(port) => parse_port("--cluster-port", &port)?,
            None => file
                .cluster_port
                .unwrap_or(crate::cluster::DEFAULT_CLUSTER_PORT),
        };

        let containerd_namespace = args
            .containerd_namespace
            .or(file.containerd_namespace)
            .unwrap_or_else(|| "hivemind".into());
        check_namespace(&containerd_namespace)?;

        let insecure_registries = merge(args.insecure_registries, file.insecure_registries);
        for registry in &insecure_registries {
            check_host_port("--insecure-registry", registry)?;
        }
        let registry_ca = parse_registry_ca(&merge(args.registry_ca, file.registry_ca))?;
        let registry_config = args.registry_config.or(file.registry_config);
        if let Some(path) = &registry_config {
            check_registry_config(path)?;
        }
        let etcd_endpoints = merge(args.etcd_endpoints, file.etcd_endpoints);
        check_etcd_endpoints(&etcd_endpoints)?;
        let cluster_init = args.cluster_init || file.cluster_init;
        if cluster_init && !etcd_endpoints.is_empty() {
            return Err(ConfigError::StoreConflict);
        }

        let log_format = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("--log-format", other, "expected text or json")),
        };

        let dns_suffix = args
            .dns_suffix
            .or(file.dns_suffix)
            .unwrap_or_else(|| crate::service::DEFAULT_SUFFIX.into());
        let dns_suffix = parse_dns_suffix(&dns_suffix)?;
        let dns_upstreams = parse_dns_upstreams(&merge(args.dns_upstream, file.dns_upstream))?;
        let http_addr = parse_http_addr(
            &args
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| "0.0.0.0:80".into()),
        )?;

        Ok(Self {
            data_dir: paths::DataDir::new(data_dir),
            socket: args
                .socket
                .or(file.socket)
                .unwrap_or_else(|| paths::DEFAULT_SOCKET.into()),
            api_addr,
            containerd_socket: args
                .containerd_socket
                .or(file.containerd_socket)
                .unwrap_or_else(|| paths::DEFAULT_CONTAINERD_SOCKET.into()),
            containerd_namespace,
            node_name,
            node_ip,
            underlay_iface: args.underlay_iface.or(file.underlay_iface),
            cluster_cidr,
            vxlan_port,
            cluster_port,
            service_cidr,
            vip_cgroup,
            insecure_registries,
            registry_ca,
            registry_config,
            cluster_init,
            etcd_endpoints,
            log_format,
            dns_suffix,
            dns_upstreams,
            http_addr,
        })
    }
}

fn parse_dns_suffix(value: &str) -> Result<String, ConfigError> {
    let suffix = value.trim_matches('.').to_ascii_lowercase();
    if !suffix.is_empty() && suffix.len() <= 200 && suffix.split('.').all(is_dns_label) {
        Ok(suffix)
    } else {
        Err(invalid(
            "--dns-suffix",
            value,
            "expected a DNS name such as hivemind or svc.example.com",
        ))
    }
}

/// No flag: the host's resolvers. `none` (or an empty value): no forwarding at all.
fn parse_dns_upstreams(values: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
    if values.is_empty() {
        let resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        return Ok(crate::service::dns::upstreams_from_resolv_conf(&resolv));
    }
    let mut upstreams = Vec::new();
    for value in values {
        let value = value.trim();
        if value.is_empty() || value == "none" {
            continue;
        }
        upstreams.push(
            crate::service::dns::parse_upstream(value).ok_or_else(|| {
                invalid("--dns-upstream", value, "expected IP or IP:PORT, or none")
            })?,
        );
    }
    Ok(upstreams)
}

fn parse_http_addr(value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    match value.trim() {
        "" | "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| {
            invalid(
                "--http-addr",
                value,
                "expected ADDR:PORT such as 0.0.0.0:80, or off",
            )
        }),
    }
}

fn parse_port(setting: &'static str, value: &str) -> Result<u16, ConfigError> {
    value
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(setting, value, "expected a port 1-65535"))
}

fn check_namespace(namespace: &str) -> Result<(), ConfigError> {
    let ok = !namespace.is_empty()
        && namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "--containerd-namespace",
            namespace,
            "use letters, digits, '-', '_' and '.'",
        ))
    }
}

fn check_etcd_endpoints(endpoints: &[String]) -> Result<(), ConfigError> {
    match endpoints
        .iter()
        .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
    {
        Some(bad) => Err(invalid(
            "--etcd-endpoints",
            bad,
            "expected http(s)://HOST:PORT",
        )),
        None => Ok(()),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|err| ConfigError::ParseFile {
        path: path.to_owned(),
        // toml's message names the key and line; keep it on one line.
        message: err.message().to_owned()
            + &err
                .span()
                .map(|span| format!(" (at byte {})", span.start))
                .unwrap_or_default(),
    })
}

/// Flags and env replace the file's list rather than appending to it, like every other setting.
fn merge(flags: Vec<String>, file: Vec<String>) -> Vec<String> {
    if flags.is_empty() { file } else { flags }
}

/// Creates the directory if needed and proves it is writable, so a read-only or foreign
/// directory fails the start instead of the first deploy.
fn check_data_dir(path: &Path) -> Result<(), ConfigError> {
    let fail = |source| ConfigError::DataDir {
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(path).map_err(fail)?;
    let probe = path.join(".hivemind-write-probe");
    fs::write(&probe, b"").map_err(fail)?;
    fs::remove_file(&probe).map_err(fail)
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "node".into(), |name| name.trim().to_ascii_lowercase())
}

/// RFC 1123 label: what node, app and volume names must be.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn check_dns_label(setting: &'static str, name: &str) -> Result<(), ConfigError> {
    if is_dns_label(name) {
        Ok(())
    } else {
        Err(invalid(
            setting,
            name,
            "use at most 63 lowercase letters, digits and '-', not starting or ending with '-'",
        ))
    }
}

/// `HOST[:PORT]=FILE`, each file read now and holding at least one PEM certificate.
fn parse_registry_ca(values: &[String]) -> Result<BTreeMap<String, Vec<u8>>, ConfigError> {
    let mut out = BTreeMap::new();
    for value in values {
        let Some((host, file)) = value
            .split_once('=')
            .filter(|(h, f)| !h.is_empty() && !f.is_empty())
        else {
            return Err(invalid("--registry-ca", value, "expected HOST[:PORT]=FILE"));
        };
        let pem = fs::read(file)
            .map_err(|err| invalid("--registry-ca", value, format!("cannot read {file}: {err}")))?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(invalid(
                "--registry-ca",
                value,
                format!("{file} holds no PEM certificate"),
            ));
        }
        out.insert(host.to_owned(), pem);
    }
    Ok(out)
}

/// The file must be JSON now, not at the first pull that needs it.
fn check_registry_config(path: &Path) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    let text = fs::read(path).map_err(|err| {
        invalid(
            "--registry-config",
            &shown,
            format!("cannot read it: {err}"),
        )
    })?;
    serde_json::from_slice::<serde_json::Value>(&text)
        .map(drop)
        .map_err(|err| invalid("--registry-config", &shown, format!("not JSON: {err}")))
}

fn check_host_port(setting: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(invalid(setting, value, "expected HOST:PORT"))
    }
}

fn parse_cluster_cidr(value: &str) -> Result<Ipv4Net, ConfigError> {
    let net: Ipv4Net = value.parse().map_err(|_| {
        invalid(
            "--cluster-cidr",
            value,
            "expected an IPv4 CIDR such as 10.244.0.0/16",
        )
    })?;
    if net.prefix_len() > 23 {
        return Err(invalid(
            "--cluster-cidr",
            value,
            "must be /23 or larger: each node takes a /24 of it",
        ));
    }
    if net.network() != net.addr() {
        return Err(invalid(
            "--cluster-cidr",
            value,
            format!("host bits are set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

fn parse_service_cidr(value: &str, cluster_cidr: Ipv4Net) -> Result<Ipv4Net, ConfigError> {
    let net: Ipv4Net = value.parse().map_err(|_| {
        invalid(
            "--service-cidr",
            value,
            "expected an IPv4 CIDR such as 10.96.0.0/16",
        )
    })?;
    if net.network() != net.addr() {
        return Err(invalid(
            "--service-cidr",
            value,
            format!("host bits are set; did you mean {}?", net.trunc()),
        ));
    }
    if net.prefix_len() > 28 {
        return Err(invalid(
            "--service-cidr",
            value,
            "must be /28 or larger: one address per app",
        ));
    }
    if net.contains(&cluster_cidr.network()) || cluster_cidr.contains(&net.network()) {
        return Err(invalid(
            "--service-cidr",
            value,
            format!(
                "overlaps the cluster CIDR {cluster_cidr}; VIPs must not be container addresses"
            ),
        ));
    }
    let first = net.network().octets()[0];
    if net.network().is_loopback() || net.network().is_multicast() || first == 0 || first >= 240 {
        return Err(invalid(
            "--service-cidr",
            value,
            "must be a unicast range (not 0/8, loopback, multicast or reserved)",
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_in(dir: &Path) -> AgentArgs {
        AgentArgs {
            data_dir: Some(dir.to_owned()),
            node_name: Some("n1".into()),
            ..AgentArgs::default()
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hivemind-config-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    #[test]
    fn defaults_are_valid() {
        let dir = temp_dir("defaults");
        let config = AgentConfig::load(args_in(&dir)).expect("defaults load");
        assert_eq!(config.api_addr.to_string(), "127.0.0.1:3000");
        assert_eq!(config.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(config.vxlan_port, 4789);
        assert_eq!(config.cluster_port, 7443);
        assert_eq!(config.service_cidr.to_string(), "10.96.0.0/16");
        assert_eq!(config.containerd_namespace, "hivemind");
        assert_eq!(config.dns_suffix, "hivemind");
        assert_eq!(config.http_addr, Some("0.0.0.0:80".parse().expect("addr")));
    }

    #[test]
    fn service_settings() {
        let dir = temp_dir("service");
        let mut args = args_in(&dir);
        args.dns_suffix = Some("Svc.Corp.".into());
        args.dns_upstream = vec!["none".into()];
        args.http_addr = Some("off".into());
        let config = AgentConfig::load(args).expect("load");
        assert_eq!(config.dns_suffix, "svc.corp");
        assert_eq!(config.dns_upstreams, [] as [SocketAddr; 0]);
        assert_eq!(config.http_addr, None);
        let mut args = args_in(&dir);
        args.dns_upstream = vec!["10.0.0.2".into(), "10.0.0.3:5353".into()];
        let config = AgentConfig::load(args).expect("load");
        assert_eq!(config.dns_upstreams.len(), 2);
        assert_eq!(config.dns_upstreams[1].port(), 5353);
    }

    #[test]
    fn flags_beat_file() {
        let dir = temp_dir("layering");
        let file = dir.join("agent.toml");
        fs::write(&file, "api_addr = \"127.0.0.1:4000\"\nvxlan_port = 5000\n").expect("write");
        let mut args = args_in(&dir);
        args.config = Some(file);
        args.vxlan_port = Some("6000".into());
        let config = AgentConfig::load(args).expect("load");
        assert_eq!(config.api_addr.port(), 4000, "file value used when no flag");
        assert_eq!(config.vxlan_port, 6000, "flag beats file");
    }

    #[test]
    fn unknown_file_key_is_named() {
        let dir = temp_dir("unknown");
        let file = dir.join("agent.toml");
        fs::write(&file, "api_adr = \"x\"\n").expect("write");
        let mut args = args_in(&dir);
        args.config = Some(file);
        let err = AgentConfig::load(args)
            .expect_err("unknown key must fail")
            .to_string();
        assert!(err.contains("api_adr"), "{err}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let dir = temp_dir("bad");
        for (mutate, setting) in [
            (
                Box::new(|a: &mut AgentArgs| a.api_addr = Some("nope".into()))
                    as Box<dyn Fn(&mut AgentArgs)>,
                "--api-addr",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.cluster_cidr = Some("10.0.0.0/25".into())),
                "--cluster-cidr",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.cluster_cidr = Some("10.0.0.1/16".into())),
                "--cluster-cidr",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.service_cidr = Some("10.244.0.0/20".into())),
                "--service-cidr",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.service_cidr = Some("10.96.0.1/16".into())),
                "--service-cidr",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.service_cidr = Some("nonsense".into())),
                "--service-cidr",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.vxlan_port = Some("0".into())),
                "--vxlan-port",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.cluster_port = Some("70000".into())),
                "--cluster-port",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.node_name = Some("Bad_Name".into())),
                "--node-name",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.insecure_registries = vec!["host".into()]),
                "--insecure-registry",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.dns_suffix = Some("bad_suffix".into())),
                "--dns-suffix",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.dns_upstream = vec!["dns.example".into()]),
                "--dns-upstream",
            ),
            (
                Box::new(|a: &mut AgentArgs| a.http_addr = Some("80".into())),
                "--http-addr",
            ),
        ] {
            let mut args = args_in(&dir);
            mutate(&mut args);
            let err = AgentConfig::load(args).expect_err(setting).to_string();
            assert!(err.contains(setting), "{err}");
        }
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("-web"));
        assert!(!is_dns_label("Web"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(!is_dns_label(""));
    }
}
