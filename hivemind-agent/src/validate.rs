//! Parsing and validation of user input (CLI flags, REST bodies), shared by both front doors.
//! Every error names the offending value and says what is expected.

use std::collections::BTreeMap;

use crate::model::{HealthCheck, PortMapping, Probe, Protocol, SecretMount, VolumeMount};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {reason}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

fn invalid(field: &'static str, value: &str, reason: impl Into<String>) -> InvalidInput {
    InvalidInput {
        field,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A signal by name (`SIGUSR1`, `usr1`) or number (`10`), as `STOPSIGNAL` and
/// `--stop-signal` take it; returns its canonical name.
pub fn signal(value: &str) -> Result<String, InvalidInput> {
    use std::str::FromStr as _;
    let bad = || {
        invalid(
            "stop signal",
            value,
            "expected a signal name such as SIGTERM or SIGQUIT, or its number",
        )
    };
    let trimmed = value.trim();
    let signal = if let Ok(number) = trimmed.parse::<i32>() {
        nix::sys::signal::Signal::try_from(number).map_err(|_| bad())?
    } else {
        let upper = trimmed.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        nix::sys::signal::Signal::from_str(&name).map_err(|_| bad())?
    };
    Ok(signal.as_str().to_owned())
}

/// The number of a signal [`signal`] accepted.
pub fn signal_number(name: &str) -> Option<u32> {
    use std::str::FromStr as _;
    let signal = nix::sys::signal::Signal::from_str(name).ok()?;
    u32::try_from(signal as i32).ok()
}

/// `--user`: `user[:group]`, each a name or a numeric id (resolved against the image later).
pub fn user(value: &str) -> Result<String, InvalidInput> {
    let (user, group) = value.split_once(':').unwrap_or((value, "x"));
    let part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
    };
    if part(user) && part(group) {
        Ok(value.to_owned())
    } else {
        Err(invalid(
            "user",
            value,
            "expected USER or USER:GROUP, each a name or a numeric id",
        ))
    }
}

/// `--workdir`: an absolute path.
pub fn workdir(value: &str) -> Result<String, InvalidInput> {
    if value.starts_with('/') && !value.contains('\0') {
        Ok(value.to_owned())
    } else {
        Err(invalid("workdir", value, "expected an absolute path"))
    }
}

/// `--entrypoint`: a command line split as a shell would (`""` is no entrypoint).
pub fn entrypoint(value: &str) -> Result<Vec<String>, InvalidInput> {
    shlex::split(value).ok_or_else(|| {
        invalid(
            "entrypoint",
            value,
            "unbalanced quotes; quote it as you would in a shell",
        )
    })
}

/// Most replicas one app may ask for.
pub const MAX_REPLICAS: u32 = 1000;

/// App, volume and node names: RFC 1123 labels.
pub fn name(field: &'static str, value: &str) -> Result<(), InvalidInput> {
    if crate::config::is_dns_label(value) {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            "use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        ))
    }
}

pub fn replicas(value: i64) -> Result<u32, InvalidInput> {
    u32::try_from(value)
        .ok()
        .filter(|r| *r <= MAX_REPLICAS)
        .ok_or_else(|| {
            invalid(
                "replicas",
                &value.to_string(),
                format!("expected 0 to {MAX_REPLICAS}"),
            )
        })
}

/// A rollout's `--parallel`: 0 (the default, 1) to [`MAX_REPLICAS`].
pub fn parallel(value: u32) -> Result<u32, InvalidInput> {
    if value <= MAX_REPLICAS {
        Ok(value)
    } else {
        Err(invalid(
            "parallel",
            &value.to_string(),
            format!("expected 1 to {MAX_REPLICAS}"),
        ))
    }
}

/// `KEY=VALUE` pairs; later keys override earlier ones.
pub fn env(pairs: &[String]) -> Result<BTreeMap<String, String>, InvalidInput> {
    let mut env = BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| invalid("env", pair, "expected KEY=VALUE"))?;
        let valid_key = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(invalid(
                "env",
                pair,
                "the name must be letters, digits and '_', not starting with a digit",
            ));
        }
        env.insert(key.to_owned(), value.to_owned());
    }
    Ok(env)
}

/// `KEY=VALUE` labels; keys like Kubernetes' (`[prefix/]name`), `app` reserved.
pub fn labels(pairs: &[String]) -> Result<BTreeMap<String, String>, InvalidInput> {
    let mut labels = BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| invalid("label", pair, "expected KEY=VALUE"))?;
        let label_chars = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        };
        if key.is_empty() || key.len() > 253 || !label_chars(key) {
            return Err(invalid(
                "label",
                pair,
                "the key must be letters, digits, '-', '_', '.', '/'",
            ));
        }
        if value.len() > 63
            || !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "label",
                pair,
                "the value must be at most 63 letters, digits, '-', '_', '.'",
            ));
        }
        if key == "app" {
            return Err(invalid(
                "label",
                pair,
                "`app` is set to the app's name automatically",
            ));
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(labels)
}

/// `HOST:CONTAINER[/tcp|udp]`.
pub fn port(value: &str) -> Result<PortMapping, InvalidInput> {
    let (ports, protocol) = match value.rsplit_once('/') {
        Some((ports, "tcp")) => (ports, Protocol::Tcp),
        Some((ports, "udp")) => (ports, Protocol::Udp),
        Some(_) => return Err(invalid("port", value, "the protocol must be tcp or udp")),
        None => (value, Protocol::Tcp),
    };
    let parse = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    let (host, container) = ports
        .split_once(':')
        .and_then(|(h, c)| Some((parse(h)?, parse(c)?)))
        .ok_or_else(|| {
            invalid(
                "port",
                value,
                "expected HOST:CONTAINER[/tcp|udp] with ports 1-65535",
            )
        })?;
    Ok(PortMapping {
        host,
        container,
        protocol,
    })
}

/// Ports must not publish the same host port twice.
pub fn ports(values: &[String]) -> Result<Vec<PortMapping>, InvalidInput> {
    let mut ports: Vec<PortMapping> = Vec::new();
    for value in values {
        let mapping = port(value)?;
        if ports
            .iter()
            .any(|p| p.host == mapping.host && p.protocol == mapping.protocol)
        {
            return Err(invalid("port", value, "this host port is published twice"));
        }
        ports.push(mapping);
    }
    Ok(ports)
}

/// `NAME:/absolute/path[:ro|:rw]`.
pub fn volume(value: &str) -> Result<VolumeMount, InvalidInput> {
    let mut parts = value.split(':');
    let (Some(volume), Some(path)) = (parts.next(), parts.next()) else {
        return Err(invalid("volume", value, "expected NAME:/path[:ro]"));
    };
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return Err(invalid("volume", value, "the mode must be ro or rw")),
    };
    if parts.next().is_some() {
        return Err(invalid("volume", value, "expected NAME:/path[:ro]"));
    }
    name("volume", volume)?;
    if !path.starts_with('/') || path == "/" || path.split('/').any(|c| c == "..") {
        return Err(invalid(
            "volume",
            value,
            "the path must be absolute, not /, without '..'",
        ));
    }
    Ok(VolumeMount {
        volume: volume.to_owned(),
        path: path.to_owned(),
        read_only,
    })
}

/// Volumes must not mount twice at the same path.
pub fn volumes(values: &[String]) -> Result<Vec<VolumeMount>, InvalidInput> {
    let mut mounts: Vec<VolumeMount> = Vec::new();
    for value in values {
        let mount = volume(value)?;
        if mounts.iter().any(|m| m.path == mount.path) {
            return Err(invalid(
                "volume",
                value,
                "two volumes are mounted at this path",
            ));
        }
        mounts.push(mount);
    }
    Ok(mounts)
}

/// `NAME[:TARGET]`: TARGET a file name under `/run/secrets` (the name by default).
pub fn secret(value: &str) -> Result<SecretMount, InvalidInput> {
    let (secret, target) = value.split_once(':').unwrap_or((value, value));
    name("secret", secret)?;
    if target.is_empty()
        || target.len() > 255
        || target.starts_with('.')
        || !target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "secret",
            value,
            "the target must be a file name (letters, digits, '.', '_', '-') under /run/secrets",
        ));
    }
    Ok(SecretMount {
        secret: secret.to_owned(),
        target: target.to_owned(),
    })
}

/// Secrets must not land on the same file.
pub fn secrets(values: &[String]) -> Result<Vec<SecretMount>, InvalidInput> {
    let mut mounts: Vec<SecretMount> = Vec::new();
    for value in values {
        let mount = secret(value)?;
        if mounts.iter().any(|m| m.target == mount.target) {
            return Err(invalid(
                "secret",
                value,
                "two secrets are mounted at this file",
            ));
        }
        mounts.push(mount);
    }
    Ok(mounts)
}

/// `512m`, `1g`, `1.5g`, `65536k`, `1048576` (bytes); Docker's suffixes, binary multiples.
pub fn memory(value: &str) -> Result<u64, InvalidInput> {
    let lower = value.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (number, multiplier) = match lower.char_indices().last() {
        Some((i, 'k')) => (&lower[..i], 1u32 << 10),
        Some((i, 'm')) => (&lower[..i], 1 << 20),
        Some((i, 'g')) => (&lower[..i], 1 << 30),
        _ => (lower, 1),
    };
    let bytes = number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| n * f64::from(multiplier))
        .ok_or_else(|| invalid("memory", value, "expected a size such as 256m or 1g"))?;
    // 6 MiB is runc's minimum for a memory limit.
    if bytes < f64::from(6u32 << 20) {
        return Err(invalid("memory", value, "the minimum is 6m"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    // positive and finite, checked above
    Ok(bytes as u64)
}

/// `0.5`, `2`: CPUs, in thousandths.
pub fn cpus(value: &str) -> Result<u64, InvalidInput> {
    let cpus = value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|c| c.is_finite() && *c >= 0.01 && *c <= 1024.0)
        .ok_or_else(|| {
            invalid(
                "cpus",
                value,
                "expected a number of CPUs from 0.01, such as 0.5 or 2",
            )
        })?;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // bounded above
    Ok((cpus * 1000.0).round() as u64)
}

/// A service domain: lowercase DNS name with at least one dot-free label, each a DNS label.
pub fn domain(value: &str) -> Result<(), InvalidInput> {
    let value_trimmed = value.strip_suffix('.').unwrap_or(value);
    let ok = !value_trimmed.is_empty()
        && value_trimmed.len() <= 253
        && value_trimmed.split('.').all(crate::config::is_dns_label);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "service",
            value,
            "expected a DNS name such as app.example.com (lowercase)",
        ))
    }
}

/// `500ms`, `5s`, `2m`, `1h` (a bare number is seconds), in milliseconds.
pub fn duration(field: &'static str, value: &str) -> Result<u64, InvalidInput> {
    let value = value.trim();
    let (number, unit_ms) = if let Some(n) = value.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = value.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (value, 1000)
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or_else(|| invalid(field, value, "expected a duration such as 500ms, 5s or 1m"))
}

/// `--since`: a duration back from now (`10m`, `2h`) or an RFC 3339 time; milliseconds since
/// the epoch.
pub fn since(field: &'static str, value: &str) -> Result<u64, InvalidInput> {
    if let Ok(ms) = duration(field, value) {
        return Ok(crate::model::now_ms().saturating_sub(ms));
    }
    let time = chrono::DateTime::parse_from_rfc3339(value.trim()).map_err(|_| {
        invalid(
            field,
            value,
            "expected a duration (10m, 2h) or an RFC 3339 time (2026-12-07T10:00:00Z)",
        )
    })?;
    Ok(u64::try_from(time.timestamp_millis()).unwrap_or(0))
}

/// The raw `--health-*` settings.
#[derive(Debug, Default)]
pub struct HealthInput<'a> {
    pub cmd: &'a str,
    pub http: &'a str,
    pub tcp: u32,
    pub interval: &'a str,
    pub timeout: &'a str,
    pub retries: Option<u32>,
    pub start_period: &'a str,
}

/// The health check, if one of `--health-cmd`, `--health-http PORT/PATH`, `--health-tcp PORT`
/// is given, with sane bounds on its timing (a timeout shorter than the interval, at most 10
/// retries, a start period of at most 10 minutes).
pub fn health(input: &HealthInput<'_>) -> Result<Option<HealthCheck>, InvalidInput> {
    let given = [
        !input.cmd.is_empty(),
        !input.http.is_empty(),
        input.tcp != 0,
    ];
    let timing =
        !(input.interval.is_empty() && input.timeout.is_empty() && input.start_period.is_empty())
            || input.retries.is_some();
    let Some(probe) = probe(input, given, timing)? else {
        return Ok(None);
    };
    timing_of(input, probe).map(Some)
}

/// Which check, from `--health-cmd`, `--health-http` or `--health-tcp`.
fn probe(
    input: &HealthInput<'_>,
    given: [bool; 3],
    timing: bool,
) -> Result<Option<Probe>, InvalidInput> {
    let probe = match given {
        [false, false, false] if timing => {
            return Err(invalid(
                "health check",
                "",
                "timing given without a check: add --health-cmd, --health-http or --health-tcp",
            ));
        }
        [false, false, false] => return Ok(None),
        [true, false, false] => Probe::Cmd {
            command: input.cmd.to_owned(),
        },
        [false, true, false] => {
            let (port, path) = input.http.split_once('/').unwrap_or((input.http, ""));
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    invalid(
                        "health-http",
                        input.http,
                        "expected PORT/PATH, e.g. 80/healthz",
                    )
                })?;
            if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(
                    "health-http",
                    input.http,
                    "the path must not contain spaces",
                ));
            }
            Probe::Http {
                port,
                path: format!("/{path}"),
            }
        }
        [false, false, true] => Probe::Tcp {
            port: u16::try_from(input.tcp)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    invalid(
                        "health-tcp",
                        &input.tcp.to_string(),
                        "expected a port 1-65535",
                    )
                })?,
        },
        _ => {
            return Err(invalid(
                "health check",
                "",
                "give only one of --health-cmd, --health-http and --health-tcp",
            ));
        }
    };
    Ok(Some(probe))
}

/// The check's timing, with defaults and bounds.
/// A check of `probe` with the timing of `input` (its defaults where it gives none), bounded as
/// [`health`] bounds it.
pub fn timing_of(input: &HealthInput<'_>, probe: Probe) -> Result<HealthCheck, InvalidInput> {
    let or = |value: &str, default: &str| {
        if value.is_empty() {
            default.to_owned()
        } else {
            value.to_owned()
        }
    };
    let interval_ms = duration("health-interval", &or(input.interval, "10s"))?;
    let timeout_ms = duration("health-timeout", &or(input.timeout, "5s"))?;
    let start_period_ms = duration("health-start-period", &or(input.start_period, "0s"))?;
    let retries = input.retries.unwrap_or(3);
    if !(1000..=3_600_000).contains(&interval_ms) {
        return Err(invalid(
            "health-interval",
            input.interval,
            "must be between 1s and 1h",
        ));
    }
    if timeout_ms < 100 || timeout_ms >= interval_ms {
        return Err(invalid(
            "health-timeout",
            input.timeout,
            "must be at least 100ms and shorter than the interval",
        ));
    }
    if !(1..=10).contains(&retries) {
        return Err(invalid(
            "health-retries",
            &retries.to_string(),
            "expected 1 to 10",
        ));
    }
    if start_period_ms > 600_000 {
        return Err(invalid(
            "health-start-period",
            input.start_period,
            "at most 10m",
        ));
    }
    Ok(HealthCheck {
        probe,
        interval_ms,
        timeout_ms,
        retries,
        start_period_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse() {
        assert_eq!(port("8080:80").expect("valid").to_string(), "8080:80/tcp");
        assert_eq!(port("53:53/udp").expect("valid").protocol, Protocol::Udp);
        for bad in ["80", "0:80", "80:70000", "a:b", "80:80/sctp", ""] {
            assert!(port(bad).is_err(), "{bad}");
        }
        assert!(ports(&["80:80".into(), "80:81".into()]).is_err());
        assert!(ports(&["80:80".into(), "80:80/udp".into()]).is_ok());
    }

    #[test]
    fn secrets_parse_and_stay_under_run_secrets() {
        let mount = secret("db-pass").expect("valid");
        assert_eq!(
            (mount.secret.as_str(), mount.target.as_str()),
            ("db-pass", "db-pass")
        );
        let mount = secret("tls:key.pem").expect("valid");
        assert_eq!(mount.to_string(), "tls:key.pem");
        for bad in [
            "Bad",
            "db:../etc/passwd",
            "db:..",
            "db:.hidden",
            "db:a/b",
            "db:",
            ":x",
        ] {
            assert!(secret(bad).is_err(), "{bad} accepted");
        }
        let err = secrets(&["a:f".into(), "b:f".into()]).expect_err("same file");
        assert!(err.to_string().contains("two secrets"), "{err}");
    }

    #[test]
    fn volumes_parse() {
        let mount = volume("data:/var/data:ro").expect("valid");
        assert_eq!(
            (mount.volume.as_str(), mount.path.as_str(), mount.read_only),
            ("data", "/var/data", true)
        );
        for bad in [
            "data",
            "data:relative",
            "Data:/x",
            "data:/",
            "data:/x:rx",
            "data:/a/../b",
            "a:/b:ro:x",
        ] {
            assert!(volume(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_cpus() {
        assert_eq!(memory("256m").expect("valid"), 256 << 20);
        assert_eq!(memory("1G").expect("valid"), 1 << 30);
        assert_eq!(memory("1.5g").expect("valid"), 3 << 29);
        assert!(memory("1k").is_err(), "below minimum");
        assert!(memory("lots").is_err());
        assert_eq!(cpus("0.5").expect("valid"), 500);
        assert!(cpus("0").is_err());
        assert!(cpus("-1").is_err());
    }

    #[test]
    fn env_and_labels() {
        let env = env(&["A=1".into(), "B=x=y".into(), "A=2".into()]).expect("valid");
        assert_eq!(env["A"], "2");
        assert_eq!(env["B"], "x=y");
        assert!(super::env(&["1A=x".into()]).is_err());
        assert!(super::env(&["NOEQUALS".into()]).is_err());
        assert!(labels(&["tier=web".into()]).is_ok());
        assert!(labels(&["app=x".into()]).is_err());
        assert!(labels(&["k=has space".into()]).is_err());
    }

    #[test]
    fn names_replicas_domains() {
        assert!(name("name", "web-1").is_ok());
        assert!(name("name", "Web").is_err());
        assert_eq!(replicas(3).expect("valid"), 3);
        assert!(replicas(-1).is_err());
        assert!(replicas(1001).is_err());
        assert!(domain("app.example.com").is_ok());
        assert!(domain("App.example.com").is_err());
        assert!(domain("bad..com").is_err());
    }

    #[test]
    fn health_checks() {
        assert_eq!(health(&HealthInput::default()).expect("none"), None);
        let check = health(&HealthInput {
            http: "8080/healthz",
            interval: "2s",
            timeout: "500ms",
            ..HealthInput::default()
        })
        .expect("valid")
        .expect("some");
        assert_eq!(
            check.probe,
            Probe::Http {
                port: 8080,
                path: "/healthz".into()
            }
        );
        assert_eq!(
            (check.interval_ms, check.timeout_ms, check.retries),
            (2000, 500, 3)
        );
        for bad in [
            HealthInput {
                cmd: "true",
                tcp: 80,
                ..HealthInput::default()
            },
            HealthInput {
                http: "x/y",
                ..HealthInput::default()
            },
            HealthInput {
                tcp: 70_000,
                ..HealthInput::default()
            },
            HealthInput {
                tcp: 80,
                interval: "1s",
                timeout: "2s",
                ..HealthInput::default()
            },
            HealthInput {
                tcp: 80,
                retries: Some(0),
                ..HealthInput::default()
            },
            HealthInput {
                interval: "5s",
                ..HealthInput::default()
            },
            HealthInput {
                tcp: 80,
                interval: "soon",
                ..HealthInput::default()
            },
        ] {
            assert!(health(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(duration("d", "1m").expect("valid"), 60_000);
        assert_eq!(duration("d", "7").expect("valid"), 7000);
    }
}
