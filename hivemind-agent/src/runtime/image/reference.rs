//! Image references: `[registry[:port]/]repository[:tag][@sha256:digest]`, parsed, validated
//! and normalised the way Docker does (`myapp` → `docker.io/library/myapp:latest`). Pure.

use std::fmt;

/// Where an unqualified reference (`myapp`, `someone/myapp`) comes from.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Docker Hub's official images live under this repository prefix.
const OFFICIAL_PREFIX: &str = "library/";
/// Docker's limit on the length of a full image name (registry and repository).
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid image reference: it is empty")]
    Empty,
    #[error("invalid image reference {reference:?}: it contains whitespace")]
    Whitespace { reference: String },
    #[error(
        "invalid image reference {reference:?}: repository {repository:?} must be lowercase (try {lowercase:?})"
    )]
    UppercaseRepository {
        reference: String,
        repository: String,
        lowercase: String,
    },
    #[error("invalid image reference {reference:?}: repository {repository:?} {reason}")]
    InvalidRepository {
        reference: String,
        repository: String,
        reason: &'static str,
    },
    #[error("invalid image reference {reference:?}: registry {registry:?} {reason}")]
    InvalidRegistry {
        reference: String,
        registry: String,
        reason: &'static str,
    },
    #[error(
        "invalid image reference {reference:?}: tag {tag:?} {reason} (a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-')"
    )]
    InvalidTag {
        reference: String,
        tag: String,
        reason: &'static str,
    },
    #[error(
        "invalid image reference {reference:?}: digest {digest:?} {reason} (expected sha256: and 64 lowercase hex digits)"
    )]
    InvalidDigest {
        reference: String,
        digest: String,
        reason: &'static str,
    },
    #[error(
        "invalid image reference {reference:?}: the name is {len} characters long (at most 255)"
    )]
    TooLong { reference: String, len: usize },
}

/// A validated, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalises `input`. Docker Hub is the default registry, `library/` the
    /// default namespace on it, and `latest` the default tag when there is no digest.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let reference = input.to_owned();
        if input.chars().any(char::is_whitespace) {
            return Err(ReferenceError::Whitespace { reference });
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(parse_digest(&reference, digest)?)),
            None => (input, None),
        };
        // A ':' after the last '/' starts the tag; one before it belongs to the registry port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                check_tag(&reference, tag)?;
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::InvalidRepository {
                reference,
                repository: String::new(),
                reason: "is empty",
            });
        }

        let (registry, repository) = split_registry(name);
        let registry = match registry {
            Some(registry) => {
                check_registry(&reference, registry)?;
                if registry == "index.docker.io" || registry == "registry-1.docker.io" {
                    DEFAULT_REGISTRY.to_owned()
                } else {
                    registry.to_owned()
                }
            }
            None => DEFAULT_REGISTRY.to_owned(),
        };
        check_repository(&reference, repository)?;
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("{OFFICIAL_PREFIX}{repository}")
        } else {
            repository.to_owned()
        };
        let len = registry.len() + 1 + repository.len();
        if len > MAX_NAME_LEN {
            return Err(ReferenceError::TooLong { reference, len });
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `HOST[:PORT]`, as `--insecure-registry` spells it; `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// `sha256:<hex>` when the reference pins a digest.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The normalised reference, as containerd's image record is named.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Docker's rule: the first path component is a registry if it has a '.' or a ':' or is
/// `localhost`; otherwise the whole name is a Docker Hub repository.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn check_registry(reference: &str, registry: &str) -> Result<(), ReferenceError> {
    let invalid = |reason| ReferenceError::InvalidRegistry {
        reference: reference.to_owned(),
        registry: registry.to_owned(),
        reason,
    };
    let (host, port) = if let Some(bracketed) = registry.strip_prefix('[') {
        // [IPv6]:port
        let (addr, rest) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("has an unclosed '['"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid("is not a valid IPv6 address"));
        }
        match rest {
            "" => (None, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(invalid("has text after the IPv6 address")),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err(invalid("has an empty host name"));
        }
        for component in host.split('.') {
            let ok = !component.is_empty()
                && component
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !component.starts_with('-')
                && !component.ends_with('-');
            if !ok {
                return Err(invalid(
                    "is not a host name (letters, digits and '-' between dots)",
                ));
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return Err(invalid("has an invalid port (expected 1-65535)"));
        }
        if port.parse::<u16>() == Ok(0) {
            return Err(invalid("has an invalid port (expected 1-65535)"));
        }
    }
    Ok(())
}

/// `path-component ('/' path-component)*`, each `[a-z0-9]+ (separator [a-z0-9]+)*` with
/// separators `.`, `_`, `__` or any number of `-`.
fn check_repository(reference: &str, repository: &str) -> Result<(), ReferenceError> {
    let invalid = |reason| ReferenceError::InvalidRepository {
        reference: reference.to_owned(),
        repository: repository.to_owned(),
        reason,
    };
    if repository.is_empty() {
        return Err(invalid("is empty"));
    }
    if repository.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::UppercaseRepository {
            reference: reference.to_owned(),
            repository: repository.to_owned(),
            lowercase: repository.to_ascii_lowercase(),
        });
    }
    for component in repository.split('/') {
        if component.is_empty() {
            return Err(invalid(
                "has an empty path component ('//' or a '/' at an end)",
            ));
        }
        check_path_component(component).map_err(invalid)?;
    }
    Ok(())
}

fn check_path_component(component: &str) -> Result<(), &'static str> {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes
        .iter()
        .all(|&b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may only contain lowercase letters, digits, '.', '_', '-' and '/'");
    }
    if !bytes.first().copied().is_some_and(alnum) || !bytes.last().copied().is_some_and(alnum) {
        return Err("must start and end each path component with a letter or digit");
    }
    // Separators between alphanumeric runs: '.', '_', '__' or a run of '-'.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return Err("has an invalid separator (use '.', '_', '__' or '-')");
        }
    }
    Ok(())
}

fn check_tag(reference: &str, tag: &str) -> Result<(), ReferenceError> {
    let invalid = |reason| ReferenceError::InvalidTag {
        reference: reference.to_owned(),
        tag: tag.to_owned(),
        reason,
    };
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if tag.is_empty() {
        return Err(invalid("is empty"));
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(invalid("is too long"));
    }
    if !tag.bytes().next().is_some_and(word) {
        return Err(invalid("must start with a letter, digit or '_'"));
    }
    if !tag.bytes().all(|b| word(b) || b == b'.' || b == b'-') {
        return Err(invalid("contains an invalid character"));
    }
    Ok(())
}

fn parse_digest(reference: &str, digest: &str) -> Result<String, ReferenceError> {
    let invalid = |reason| ReferenceError::InvalidDigest {
        reference: reference.to_owned(),
        digest: digest.to_owned(),
        reason,
    };
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(invalid("has no algorithm"));
    };
    if algorithm != "sha256" {
        return Err(invalid("uses an unsupported algorithm"));
    }
    if hex.len() != 64 {
        return Err(invalid("has the wrong length"));
    }
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid("is not lowercase hex"));
    }
    Ok(digest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:4c6d7e2bdde2a3c4b4ac4a1c7bd5f0bd2f6e3c3a1c0d3f1e6b8d7c6a5b4e3d2f";

    fn ok(input: &str) -> String {
        ImageRef::parse(input)
            .unwrap_or_else(|err| panic!("{input}: {err}"))
            .name()
    }

    fn err(input: &str) -> ReferenceError {
        match ImageRef::parse(input) {
            Ok(r) => panic!("{input} parsed as {r}"),
            Err(err) => err,
        }
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        assert_eq!(ok("myapp"), "docker.io/library/myapp:latest");
        assert_eq!(ok("myapp:latest"), "docker.io/library/myapp:latest");
        assert_eq!(ok("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(ok("someone/myapp"), "docker.io/someone/myapp:latest");
        assert_eq!(ok("docker.io/myapp"), "docker.io/library/myapp:latest");
        assert_eq!(ok("index.docker.io/myapp:1"), "docker.io/library/myapp:1");
        assert_eq!(ok("docker.io/library/myapp:2"), "docker.io/library/myapp:2");
    }

    #[test]
    fn registries_with_ports_and_paths() {
        let r = ImageRef::parse("127.0.0.1:5000/hivemind/test:1").expect("parses");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "hivemind/test");
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.digest(), None);
        assert_eq!(ok("localhost/app"), "localhost/app:latest");
        assert_eq!(ok("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(
            ok("registry.example.com/a/b/c:v1.2-rc_3"),
            "registry.example.com/a/b/c:v1.2-rc_3"
        );
        assert_eq!(ok("[::1]:5000/app"), "[::1]:5000/app:latest");
        // Uppercase is fine in a host name, not in a repository.
        assert_eq!(
            ok("Registry.Example.com/app"),
            "Registry.Example.com/app:latest"
        );
        assert_eq!(ok("my-app__x/y.z"), "docker.io/my-app__x/y.z:latest");
    }

    #[test]
    fn digests_pin_and_suppress_the_default_tag() {
        let r = ImageRef::parse(&format!("myapp@{D}")).expect("parses");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.name(), format!("docker.io/library/myapp@{D}"));
        assert_eq!(ok(&format!("h:1/app:v2@{D}")), format!("h:1/app:v2@{D}"));
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        assert_eq!(err(""), ReferenceError::Empty);
        assert!(matches!(err("my app"), ReferenceError::Whitespace { .. }));
        match err("MyApp:1") {
            ReferenceError::UppercaseRepository {
                repository,
                lowercase,
                ..
            } => {
                assert_eq!(repository, "MyApp");
                assert_eq!(lowercase, "myapp");
            }
            other => panic!("{other}"),
        }
        assert!(
            err("h:5000/Team/app")
                .to_string()
                .contains("must be lowercase")
        );
        assert!(matches!(err("app:"), ReferenceError::InvalidTag { .. }));
        assert!(matches!(err("app:-x"), ReferenceError::InvalidTag { .. }));
        assert!(ImageRef::parse("app:a/b").is_err());
        assert!(matches!(err("app:t!"), ReferenceError::InvalidTag { .. }));
        assert!(matches!(
            err(&format!("app:{}", "x".repeat(129))),
            ReferenceError::InvalidTag { .. }
        ));
        assert!(matches!(
            err("app@sha256:abc"),
            ReferenceError::InvalidDigest { .. }
        ));
        assert!(matches!(
            err("app@md5:0123"),
            ReferenceError::InvalidDigest { .. }
        ));
        assert!(matches!(err("app@"), ReferenceError::InvalidDigest { .. }));
        assert!(matches!(
            err(&format!(
                "app@{}",
                D.to_uppercase().replace("SHA256", "sha256")
            )),
            ReferenceError::InvalidDigest { .. }
        ));
        assert!(matches!(
            err("h:5000/"),
            ReferenceError::InvalidRepository { .. }
        ));
        assert!(matches!(
            err(":tag"),
            ReferenceError::InvalidRepository { .. }
        ));
        assert!(matches!(
            err("a//b"),
            ReferenceError::InvalidRepository { .. }
        ));
        assert!(matches!(
            err("-app"),
            ReferenceError::InvalidRepository { .. }
        ));
        assert!(matches!(
            err("a..b"),
            ReferenceError::InvalidRepository { .. }
        ));
        assert!(matches!(
            err("h:99999/app"),
            ReferenceError::InvalidRegistry { .. }
        ));
        assert!(matches!(
            err("h:0/app"),
            ReferenceError::InvalidRegistry { .. }
        ));
        assert!(matches!(
            err("h_x.com/app"),
            ReferenceError::InvalidRegistry { .. }
        ));
        assert!(matches!(
            err(".com/app"),
            ReferenceError::InvalidRegistry { .. }
        ));
        assert!(matches!(
            err("[zz]:1/app"),
            ReferenceError::InvalidRegistry { .. }
        ));
        assert!(matches!(
            err(&"a".repeat(300)),
            ReferenceError::TooLong { .. }
        ));
    }

    #[test]
    fn messages_name_the_reference_and_the_part() {
        let message = err("h:5000/app:bad!tag").to_string();
        assert!(message.contains("h:5000/app:bad!tag"), "{message}");
        assert!(message.contains("tag \"bad!tag\""), "{message}");
        let message = err("app@sha256:12").to_string();
        assert!(message.contains("digest \"sha256:12\""), "{message}");
    }
}
